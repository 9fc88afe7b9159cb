"""Everything a service call needs, built once from the settings.

Actors run in worker processes that share nothing with the process that enqueued them, so
they find their runtime through :func:`current`, which builds it from the environment the
first time. Tests and the demo install their own (with a simulated clock) through
:func:`install`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
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
from automation.errors import ConfigError
from automation.ports import CalendarProvider, InboxReader, MailSender
from automation.settings import Settings, load_settings
from automation.tenancy import scoped_factory

log = logging.getLogger("automation.runtime")


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
    # The organization this runtime works for (see tenant()); None: the system scope.
    organization_id: int | None = None

    def now(self):  # type: ignore[no-untyped-def]
        return self.clock.now()

    def tenant(self, organization_id: int) -> Runtime:
        """This runtime for one organization: its sessions are scoped to it
        (:mod:`automation.tenancy`), so whatever runs with it reads and writes only that
        organization's rows. Built once per organization and kept."""
        if self.organization_id == organization_id:
            return self
        if self.organization_id is not None:
            raise ValueError(
                f"a runtime for organization {self.organization_id} cannot act for "
                f"organization {organization_id}"
            )
        # Rebuilt when the parent changed since (tests and the console replace settings,
        # adapters or cadences on the runtime they hold): a tenant never acts on a stale copy.
        key, shared = ("tenant", organization_id), self._shared()
        built = self.cache.get(key)
        if built is not None and built[0] == shared:
            return built[1]  # type: ignore[no-any-return]
        tenant = replace(
            self,
            factory=scoped_factory(self.engine, organization_id),
            organization_id=organization_id,
            # Whatever the workers attach later is what the tenant uses.
            enqueue=lambda task_id: self.enqueue(task_id),
            # Its own facts; the cadence files' stamp as the parent loaded them, so a
            # tenant re-reads the files only when they change (current_cadences).
            cache={CADENCE_STAMP: self.cache.get(CADENCE_STAMP)},
        )
        self.cache[key] = (shared, tenant)
        return tenant

    def _shared(self) -> tuple[int, ...]:
        """Which objects a tenant of this runtime shares with it (by identity)."""
        return tuple(id(getattr(self, name)) for name in _SHARED)


# What a tenant takes from its parent as it is; the rest (factory, cache, the organization,
# enqueue, which defers to the parent) is its own.
_SHARED = tuple(
    f.name
    for f in fields(Runtime)
    if f.name not in ("factory", "cache", "organization_id", "enqueue")
)


def build_runtime(settings: Settings, clock: Clock | None = None) -> Runtime:
    engine = make_engine(settings.database)
    clock = clock or SystemClock()
    stamp = cadence_files_stamp(settings)
    runtime = Runtime(
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
    runtime.cache[CADENCE_STAMP] = stamp
    return runtime


CADENCE_STAMP = "cadence-files"


def cadence_files_stamp(settings: Settings) -> tuple[tuple[str, int, int], ...]:
    """Name, modification time and size of each cadence file: changes when one is saved."""
    found = []
    for path in sorted((settings.config_dir / "cadences").glob("*.toml")):
        try:
            info = path.stat()
        except FileNotFoundError:  # removed while listing
            continue
        found.append((path.name, info.st_mtime_ns, info.st_size))
    return tuple(found)


def current_cadences(rt: Runtime) -> dict[str, Cadence]:
    """The cadences as the files are now. A long-running worker loaded them at start; when
    HR saves one (in the console, or by hand) the next plan reads the folder again, rather
    than writing its old copy back to the database. A folder that no longer loads keeps the
    last good cadences, and says why in the log."""
    stamp = cadence_files_stamp(rt.settings)
    if rt.cache.get(CADENCE_STAMP) != stamp:
        try:
            rt.cadences = {c.name: c for c in load_cadences(rt.settings)}
        except ConfigError as exc:
            log.error(
                "cadence files changed but do not load; planning keeps the last good "
                "ones until they are fixed:\n%s",
                exc,
            )
        rt.cache[CADENCE_STAMP] = stamp
    return rt.cadences


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
