"""The periodic tick and start-up: the only code that decides what is due.

The tick shares each batch between organizations (:func:`automation.db.due_tasks_fairly`,
round-robin) and sends it through the runtime's enqueue, which holds back an organization's
tasks once it has ``max_queued_per_organization`` waiting (``workers/broker.py``): one
organization's burst then neither fills the tick's batch nor the queue in front of the
others. A task held back, or left out of a batch, stays due in the database: the next tick
picks it again, in its turn. Retrying and deferred tasks are not due until their backoff
ends, so a provider outage's retries take no share until then.

Before that, the tick takes in what came from outside, for every organization
(:func:`take_in`): it lists the organizations (one small query), makes sure each has its
daily planning and retention (once a day per organization and process), reads the
deployment's inbox and schedules the work of the deployment's calendars, then does the same
for each client organization that has an inbox or a calendar of its own
(``config/orgs/<slug>/settings.toml`` and its secrets: :meth:`Runtime.tenant`), with that
organization's runtime, so its mail is stored as its own and its calendars are read with
its credentials. One client's broken provider is logged and skipped; it never stops the
tick for the others.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from automation import (
    observability,
    services,  # noqa: F401  (registers the task handlers)
)
from automation.db import due_task_ids, due_tasks_fairly, migrate, transaction
from automation.models import Organization
from automation.organizations import start_daily_tasks
from automation.people import ensure_organization
from automation.runtime import NoInbox, Runtime
from automation.services.calendars import schedule_calendar_work
from automation.services.inbound import poll_inbox

log = logging.getLogger("automation.loop")


def bootstrap(rt: Runtime) -> int:
    """Migrate the schema, make sure the organization exists and planning is scheduled."""
    migrate(rt.engine)
    now = rt.now()
    with transaction(rt.factory) as session:
        org = ensure_organization(
            session, rt.settings.organization, rt.settings.organization_name, now
        )
        start_daily_tasks(session, [org.id], now)
        return org.id


# --------------------------------------------------------------------------- every organization

# What the tick reads of the organizations, each time (built once).
_ORGANIZATIONS = select(Organization.id, Organization.slug).order_by(Organization.id)
# rt.cache: (the UTC date, the organizations whose daily tasks were made sure of that day).
_DAILY_CHECKED = "loop:daily-tasks-checked"
# rt.cache: (organization id, what) -> the last failure logged for it (logged once, not per tick).
_FAILING = "loop:failing"


def organizations(rt: Runtime) -> list[tuple[int, str]]:
    """Every organization's id and slug: one small system-scope read, outside any
    transaction (the caller builds tenant runtimes after it, which read the database too)."""
    with rt.engine.connect() as connection:
        rows = [(int(row[0]), str(row[1])) for row in connection.execute(_ORGANIZATIONS)]
    observability.ORGANIZATIONS.remember(rt.settings.database, dict(rows))
    return rows


def ensure_daily_tasks(rt: Runtime, organization_ids: Sequence[int]) -> int:
    """Make sure every organization has its daily plan and retention tasks
    (:func:`automation.organizations.start_daily_tasks`), whatever created it (``org create``
    before it scheduled them, an import, a test, other code). Each organization is checked
    once a day per process (remembered in ``rt.cache``), so the ticks in between cost a set
    lookup; the check itself is one INSERT ... ON CONFLICT DO NOTHING for all that are due a
    check. Returns how many organizations were checked."""
    today = rt.now().date()
    checked = rt.cache.get(_DAILY_CHECKED)
    if checked is None or checked[0] != today:
        checked = rt.cache[_DAILY_CHECKED] = (today, set())
    todo = [org for org in organization_ids if org not in checked[1]]
    if not todo:
        return 0
    with transaction(rt.factory) as session:
        start_daily_tasks(session, todo, rt.now())
    checked[1].update(todo)
    return len(todo)


def take_in(rt: Runtime) -> int:
    """What the tick does before it hands out due tasks, for every organization: their daily
    tasks made sure of, new mail stored, calendar work scheduled. Returns the messages taken
    in.

    The deployment's inbox and calendars are read as before, with ``rt``: its inbox takes in
    mail for any organization (a signed reply address says whose), and its calendar work
    covers every organization that uses the deployment's calendar. A client organization
    whose runtime has a calendar of its own (another provider, or other credentials of the
    same one) has its calendars scheduled with its runtime instead, and left out of the
    deployment's round, which would read them with the wrong credentials; one with an inbox
    of its own (not :class:`NoInbox`) has it read with its runtime, so what comes in is
    stored as its own. Which clients have their own is rechecked every
    :data:`RECHECK_SECONDS` and whenever an organization is added (:func:`_clients`).
    Tenant runtimes are built outside any transaction (on SQLite every transaction takes
    the write lock)."""
    if rt.organization_id is not None:  # a tenant's own tick: only its own
        received = poll_inbox(rt) if not isinstance(rt.inbox, NoInbox) else 0
        schedule_calendar_work(rt)
        return received
    listed = organizations(rt)
    ensure_daily_tasks(rt, [org for org, _slug in listed])
    clients = _clients(rt, listed)
    # Calendars the deployment's round must leave alone: the clients' own, and those of a
    # client whose configuration does not load (which calendar it uses is not known).
    not_deployments = [org for org, kind in clients.items() if kind.calendar or kind.broken]
    tenants = []
    for org, kind in clients.items():
        if kind.calendar or kind.inbox:
            try:
                tenants.append(rt.tenant(org))  # as its files are now (cheap when unchanged)
            except Exception as exc:  # noqa: BLE001 - its configuration; the others go on
                _failed(rt, org, kind.slug, "configuration", exc)
    received = poll_inbox(rt)
    schedule_calendar_work(rt, skip_organizations=not_deployments)
    for tenant in tenants:
        received += _take_in_client(rt, tenant)
    return received


# How often the tick asks each client's runtime again whether it has a calendar or an inbox
# of its own: a settings.toml edited to give it one is served within this time.
RECHECK_SECONDS = 60.0
# rt.cache: (when checked, on time.monotonic(); organization id -> _Client).
_CLIENTS = "loop:clients"


@dataclass(frozen=True)
class _Client:
    slug: str
    calendar: bool = False  # its runtime has a calendar of its own
    inbox: bool = False  # and an inbox of its own
    broken: bool = False  # its configuration did not load


def _clients(rt: Runtime, listed: Sequence[tuple[int, str]]) -> dict[int, _Client]:
    """The client organizations (all but the deployment's own) and what each has of its own.

    Building a tenant runtime reads the database (a short transaction: on SQLite, the write
    lock) and stats the organization's folder; doing it for every organization on every
    tick would cost fifty of those a tick with fifty clients that have nothing of their own.
    So it is asked once per :data:`RECHECK_SECONDS`, or at once when the list of
    organizations changed; between, only clients with something of their own are built, on
    every tick, since they are served then."""
    current = {org: slug for org, slug in listed if slug != rt.settings.organization}
    cached = rt.cache.get(_CLIENTS)
    if (
        cached is not None
        and time.monotonic() - cached[0] < RECHECK_SECONDS
        and {org: c.slug for org, c in cached[1].items()} == current
    ):
        return cached[1]  # type: ignore[no-any-return]
    clients: dict[int, _Client] = {}
    for org, slug in current.items():
        try:
            tenant = rt.tenant(org)
        except Exception as exc:  # noqa: BLE001 - its configuration; the others go on
            _failed(rt, org, slug, "configuration", exc)
            clients[org] = _Client(slug, broken=True)
            continue
        _recovered(rt, org, slug, "configuration")
        clients[org] = _Client(
            slug,
            calendar=tenant.calendar is not rt.calendar,
            inbox=not isinstance(tenant.inbox, NoInbox) and tenant.inbox is not rt.inbox,
        )
    rt.cache[_CLIENTS] = (time.monotonic(), clients)
    return clients


def _take_in_client(rt: Runtime, tenant: Runtime) -> int:
    org, slug = int(tenant.organization_id or 0), tenant.settings.organization
    received = 0
    if not isinstance(tenant.inbox, NoInbox) and tenant.inbox is not rt.inbox:
        try:
            received = poll_inbox(tenant)
            _recovered(rt, org, slug, "inbox")
        except Exception as exc:  # noqa: BLE001 - its provider; the others go on
            _failed(rt, org, slug, "inbox", exc)
    if tenant.calendar is not rt.calendar:
        try:
            schedule_calendar_work(tenant)
            _recovered(rt, org, slug, "calendars")
        except Exception as exc:  # noqa: BLE001 - its provider; the others go on
            _failed(rt, org, slug, "calendars", exc)
    return received


def _failed(rt: Runtime, org: int, slug: str, what: str, exc: Exception) -> None:
    """Log a client's failure once, and again only when it changes: the tick runs every few
    seconds, and a client whose server is down for an hour should not fill the log."""
    failing = rt.cache.setdefault(_FAILING, {})
    described = f"{type(exc).__name__}: {exc}"
    if failing.get((org, what)) == described:
        log.debug("organization %s: %s still failing", slug, what)
        return
    failing[(org, what)] = described
    log.error(
        "organization %s: its %s failed in the tick (%s); the other organizations go on, "
        "and the next tick tries again",
        slug,
        what,
        described,
        exc_info=exc,
    )


def _recovered(rt: Runtime, org: int, slug: str, what: str) -> None:
    failing = rt.cache.get(_FAILING)
    if failing and failing.pop((org, what), None) is not None:
        log.info("organization %s: %s recovered", slug, what)


# What the runtime's enqueue answers when an organization is at its cap (workers.broker).
HELD_BACK = "held"


@dataclass(frozen=True)
class TickResult:
    received: int
    enqueued: int  # due tasks handed to the enqueue, held back or not
    held_back: int = 0  # of those, not sent: their organization had its cap waiting


def tick(rt: Runtime, limit: int = 500) -> TickResult:
    """Take in new mail and calendar work for every organization (:func:`take_in`), then hand
    up to ``limit`` due tasks to the workers, shared fairly between organizations. Cheap
    when nothing is due."""
    received = take_in(rt)
    observability.ORGANIZATIONS.watch(rt.settings.database, rt.factory)
    with transaction(rt.factory) as session:
        picked = due_tasks_fairly(session, rt.now(), limit)
    held_back = sum(
        enqueue_with_organization(rt, task_id, org) == HELD_BACK for task_id, org in picked
    )
    return TickResult(received, len(picked), held_back)


def enqueue_with_organization(rt: Runtime, task_id: int, organization_id: int) -> object:
    """Send a task whose organization is known: through the enqueue's ``admit`` when it has
    one (it counts the task against its organization's cap without looking the
    organization up), else as any ``rt.enqueue``. Returns what ``admit`` answered."""
    admit = getattr(rt.enqueue, "admit", None)
    if admit is None:
        return rt.enqueue(task_id)
    return admit(task_id, organization_id)


def next_due(rt: Runtime) -> dt.datetime | None:
    """When the next pending task falls due (the demo's clock jumps there)."""
    from sqlalchemy import func, select

    from automation.models import Task, TaskState

    with rt.factory() as session:
        return session.scalar(select(func.min(Task.due_at)).where(Task.state == TaskState.PENDING))


def run_due(rt: Runtime, limit: int = 10_000) -> int:
    """Run every due task in this process, without a broker, until nothing is due.

    The twin of tick + workers for tests, one-shot maintenance and `automation run --once`.
    Tasks created while running that are already due run in the same call.
    """
    from automation.services.tasks import run_task

    ran = 0
    observability.ORGANIZATIONS.watch(rt.settings.database, rt.factory)
    previous = rt.enqueue
    rt.enqueue = lambda task_id: None  # due tasks are found by the loop below instead
    try:
        while ran < limit:
            take_in(rt)
            with transaction(rt.factory) as session:
                ids = due_task_ids(session, rt.now(), 500)
            if not ids:
                break
            for task_id in ids:
                run_task(rt, task_id)
                ran += 1
    finally:
        rt.enqueue = previous
    return ran
