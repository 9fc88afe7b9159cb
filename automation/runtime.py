"""Everything a service call needs, built once from the settings.

Actors run in worker processes that share nothing with the process that enqueued them, so
they find their runtime through :func:`current`, which builds it from the environment the
first time. Tests and the demo install their own (with a simulated clock) through
:func:`install`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from automation.adapters.calendars import build_calendar
from automation.adapters.mail import build_inbox, build_sender
from automation.clock import Clock, SystemClock
from automation.config import (
    Delegates,
    load_cadences,
    load_coaching,
    load_delegates,
    load_roles,
)
from automation.db import make_engine, session_factory
from automation.domain.agenda import RoleExpectations
from automation.domain.cadence import Cadence
from automation.domain.coaching import CoachingRules
from automation.ports import CalendarProvider, InboxReader, MailSender
from automation.settings import Settings, load_settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]
    clock: Clock
    calendar: CalendarProvider
    sender: MailSender
    inbox: InboxReader
    cadences: dict[str, Cadence]
    # Manager's address -> delegates who may document their check-ins (config/delegates.toml).
    delegates: Delegates = field(default_factory=dict)
    # Role expectations by name (config/roles/*.toml) and the coaching prompts' rules
    # (config/coaching.toml; None: no prompts), for the agendas.
    roles: dict[str, RoleExpectations] = field(default_factory=dict)
    coaching: CoachingRules | None = None
    # How a newly created task reaches a worker; the broker module sets the real one.
    enqueue: Callable[[int], object] = field(default=lambda task_id: None)
    # Facts that never change for a runtime's life (an organization's id by slug).
    cache: dict[object, Any] = field(default_factory=dict)

    def now(self):  # type: ignore[no-untyped-def]
        return self.clock.now()


def build_runtime(settings: Settings, clock: Clock | None = None) -> Runtime:
    engine = make_engine(settings.database)
    clock = clock or SystemClock()
    return Runtime(
        settings=settings,
        engine=engine,
        factory=session_factory(engine),
        clock=clock,
        calendar=build_calendar(settings, clock),
        sender=build_sender(settings),
        inbox=build_inbox(settings),
        cadences={c.name: c for c in load_cadences(settings)},
        delegates=load_delegates(settings),
        roles=load_roles(settings),
        coaching=load_coaching(settings),
    )


_lock = threading.Lock()
_current: Runtime | None = None
# Called on every runtime that current() builds; the workers package adds its enqueue hook.
on_build: list[Callable[[Runtime], object]] = []


def install(runtime: Runtime | None) -> None:
    global _current
    with _lock:
        _current = runtime


def current() -> Runtime:
    global _current
    with _lock:
        if _current is None:
            _current = build_runtime(load_settings())
            for hook in on_build:
                hook(_current)
        return _current
