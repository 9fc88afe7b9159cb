"""Calendars, both ways: series go out to the provider, and what people do there comes back.

Out: the ``invite`` task writes a series (create, update, cancel, with its moved or cancelled
instances) to the organizer's calendar. Where the provider batches (Google, Graph), the
worker that runs one invite takes up to a batch's worth of other due invites of the same
organisation with it, claimed in the same transaction, so planning a thousand series costs
a thousand divided by the batch size requests. A ``calendar_links`` row remembers the
provider's id and the sequence written, so a retried task that finds its write done does
nothing. Organizers outside the connected domains get iMIP invites by email instead.

Back: the ``calendar_sync`` task reads what changed since the stored cursor and turns it into
occurrence changes: a moved instance moves the occurrence (and its agenda and follow-up);
an instance deleted in the calendar, or declined by a participant, cancels it; responses are
kept on the occurrence. The cursor is committed with the changes it covers, so a worker
killed mid-sync starts again from the last committed cursor and re-applies idempotent
states. Push notices (see automation.web) and a periodic poll both create sync tasks;
channels are renewed before they expire.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from automation import audit
from automation.adapters.calendars import connected
from automation.db import dialect_insert, transaction
from automation.models import (
    CalendarLink,
    CalendarSync,
    CheckinSeries,
    Occurrence,
    OccurrenceState,
    Person,
    Task,
    TaskState,
)
from automation.ports import DECLINED, Channel, EventState, SeriesEvent
from automation.runtime import Runtime
from automation.services.planning import move_occurrence, series_event
from automation.services.tasks import create_task, handles

log = logging.getLogger("automation.calendars")

PUSH_PATHS = {"google": "/webhooks/google/calendar", "graph": "/webhooks/graph/calendar"}
OPEN_STATES = (OccurrenceState.PLANNED, OccurrenceState.INVITED)
FULL_SYNC_EVERY = dt.timedelta(days=7)


def batch_size(rt: Runtime) -> int:
    """How many series one invite task writes at once (1: the provider has no batching)."""
    explicit = getattr(rt.calendar, "batch_size", None)
    if isinstance(explicit, int) and explicit > 0:
        return explicit
    return {
        "google": rt.settings.google_batch_size,
        "graph": rt.settings.graph_batch_size,
    }.get(rt.calendar.name, 1)


def has_push(rt: Runtime) -> bool:
    return rt.calendar.name in PUSH_PATHS and hasattr(rt.calendar, "watch")


# --------------------------------------------------------------------------- out


def _claim_more_invites(rt: Runtime, session: Session, task: Task, limit: int) -> list[Task]:
    """Take other due invite tasks of this organisation into this batch.

    Each is flipped pending -> done by a conditional UPDATE in our transaction: if we roll
    back they are pending again; a worker that tries one of them meanwhile waits for our
    commit and then finds it done.
    """
    if limit <= 0:
        return []
    now = rt.now()
    candidates = list(
        session.scalars(
            select(Task.id)
            .where(
                Task.organization_id == task.organization_id,
                Task.kind == "invite",
                Task.state == TaskState.PENDING,
                Task.due_at <= now,
                Task.id != task.id,
            )
            .order_by(Task.due_at, Task.id)
            .limit(limit)
        )
    )
    taken = []
    for task_id in candidates:
        result = session.execute(
            update(Task)
            .where(Task.id == task_id, Task.state == TaskState.PENDING)
            .values(
                state=TaskState.DONE,
                result=f"written with task {task.id}",
                lease_until=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            other = session.get(Task, task_id)
            assert other is not None
            taken.append(other)
    return taken


def _link(session: Session, series: CheckinSeries, provider: str) -> CalendarLink | None:
    return session.scalar(
        select(CalendarLink).where(
            CalendarLink.organization_id == series.organization_id,
            CalendarLink.series_id == series.id,
            CalendarLink.provider == provider,
        )
    )


def ensure_sync(
    session: Session, organization_id: int, provider: str, calendar: str, now: dt.datetime
) -> CalendarSync:
    """The sync-state row of one provider calendar, created on first use. Two workers
    inviting series of the same organizer at once both find none: the INSERT ... ON CONFLICT
    DO NOTHING lets the second read the first's row instead of failing its whole task on the
    unique key (which made it write its series to the provider a second time)."""
    where = (
        CalendarSync.organization_id == organization_id,
        CalendarSync.provider == provider,
        CalendarSync.calendar == calendar,
    )
    row = session.scalar(select(CalendarSync).where(*where))
    if row is None:
        session.execute(
            dialect_insert(session, CalendarSync)
            .values(
                organization_id=organization_id,
                provider=provider,
                calendar=calendar,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["organization_id", "provider", "calendar"])
        )
        row = session.scalars(select(CalendarSync).where(*where)).one()
    return row


def _mark_invited(session: Session, series: CheckinSeries, now: dt.datetime) -> None:
    for occ in session.scalars(
        select(Occurrence).where(
            Occurrence.organization_id == series.organization_id,
            Occurrence.series_id == series.id,
            Occurrence.state == OccurrenceState.PLANNED,
        )
    ):
        occ.state = OccurrenceState.INVITED
        occ.updated_at = now


@handles("invite")
def write_invites(rt: Runtime, session: Session, task: Task) -> str:
    """Write this task's series, and a batch of other due ones, to the calendar."""
    tasks = [task, *_claim_more_invites(rt, session, task, batch_size(rt) - 1)]
    provider = rt.calendar.name
    now = rt.now()
    todo: dict[int, tuple[CheckinSeries, SeriesEvent]] = {}
    by_email: list[CheckinSeries] = []
    for t in tasks:
        series = session.get(CheckinSeries, t.subject_id)
        if series is None or series.organization_id != task.organization_id:
            continue
        if series.id in todo or series in by_email:
            continue  # two sequences of one series in one batch: the newest is written once
        event = series_event(rt, session, series)
        if not connected(rt.settings, event.organizer.email):
            by_email.append(series)
            continue
        link = _link(session, series, provider)
        if link is not None and link.written_sequence >= series.sequence and provider != "local":
            continue  # written by an earlier run of this task that could not record its end
        if link is not None:
            event = _with_provider_id(event, link.event_id)
        todo[series.id] = (series, event)
    written = rt.calendar.write_many([event for _, event in todo.values()]) if todo else {}
    for series, event in todo.values():
        event_id = written.get(event.uid, event.uid)
        link = _link(session, series, provider)
        if link is None:
            link = CalendarLink(
                organization_id=series.organization_id,
                series_id=series.id,
                provider=provider,
                calendar=event.calendar,
                event_id=event_id,
                written_sequence=series.sequence,
                updated_at=now,
            )
            session.add(link)
        else:
            link.event_id, link.calendar = event_id, event.calendar
            link.written_sequence, link.updated_at = series.sequence, now
        if provider != "local":
            ensure_sync(session, series.organization_id, provider, event.calendar, now)
        _mark_invited(session, series, now)
        _audit_invite(session, series, now, provider)
    emailed = 0
    if provider == "caldav" and not rt.settings.caldav_schedules and todo:
        # The series is in the organizer's CalDAV calendar, but this server does not send
        # invitations (RFC 6638 scheduling is off): the other attendees get iMIP email.
        from automation.services.imip import queue_invites

        for series, event in todo.values():
            emailed += len(queue_invites(rt, session, series, event, skip=[event.calendar]))
    for series in by_email:
        from automation.services.imip import queue_invites

        event = series_event(rt, session, series)
        if provider in ("local", "imip"):
            rt.calendar.write_series(event)  # the service's own copy, as a feed
        emailed += len(queue_invites(rt, session, series, event))
        _mark_invited(session, series, now)
        _audit_invite(session, series, now, "imip")
    return f"written {len(todo)} series ({len(tasks)} tasks), {emailed} iMIP emails"


def _with_provider_id(event: SeriesEvent, provider_id: str) -> SeriesEvent:
    from dataclasses import replace

    return replace(event, provider_id=provider_id)


def _audit_invite(session: Session, series: CheckinSeries, now: dt.datetime, via: str) -> None:
    audit.record(
        session,
        series.organization_id,
        actor="worker",
        action="series.invited",
        subject_kind="series",
        subject_id=series.id,
        at=now,
        data={"uid": series.uid, "sequence": series.sequence, "via": via},
    )


# --------------------------------------------------------------------------- back


@dataclass
class Applied:
    moved: int = 0
    cancelled: int = 0
    responses: int = 0
    series_removed: int = 0
    unknown: int = 0

    def __str__(self) -> str:
        return (
            f"moved {self.moved}, cancelled {self.cancelled}, responses {self.responses}, "
            f"series removed {self.series_removed}, not ours {self.unknown}"
        )


class StateApplier:
    """Turns provider EventStates into occurrence changes, inside one session."""

    def __init__(self, rt: Runtime, session: Session, sync: CalendarSync):
        self.rt, self.session, self.sync = rt, session, sync
        self.now = rt.now()
        self.result = Applied()
        self._series: dict[str, CheckinSeries | None] = {}
        self._people: dict[int, Person | None] = {}

    def __call__(self, states: Sequence[EventState]) -> None:
        for state in states:
            series = self._find(state)
            if series is None:
                self.result.unknown += 1
                continue
            if state.recurrence_id is None:
                self._series_state(series, state)
            else:
                self._instance_state(series, state)
        self.session.flush()

    def _find(self, state: EventState) -> CheckinSeries | None:
        key = state.uid or f"id:{state.series_provider_id}"
        if key in self._series:
            return self._series[key]
        org = self.sync.organization_id
        series = None
        if state.uid:
            series = self.session.scalar(
                select(CheckinSeries).where(
                    CheckinSeries.organization_id == org, CheckinSeries.uid == state.uid
                )
            )
        elif state.series_provider_id:
            series = self.session.scalar(
                select(CheckinSeries)
                .join(
                    CalendarLink,
                    (CalendarLink.series_id == CheckinSeries.id)
                    & (CalendarLink.organization_id == CheckinSeries.organization_id),
                )
                .where(
                    CalendarLink.organization_id == org,
                    CalendarLink.provider == self.sync.provider,
                    CalendarLink.event_id == state.series_provider_id,
                )
            )
        self._series[key] = series
        return series

    def _participants(self, series: CheckinSeries) -> dict[str, str]:
        """Address (lower) -> role, for the people on the check-in."""
        out = {}
        for person_id, role in ((series.manager_id, "manager"), (series.employee_id, "employee")):
            if person_id not in self._people:
                self._people[person_id] = self.session.get(Person, person_id)
            person = self._people[person_id]
            if person is not None:
                out[person.email.lower()] = role
        return out

    def _open_future(self, series: CheckinSeries) -> list[Occurrence]:
        return list(
            self.session.scalars(
                select(Occurrence).where(
                    Occurrence.organization_id == series.organization_id,
                    Occurrence.series_id == series.id,
                    Occurrence.start_at > self.now,
                    Occurrence.state.in_(OPEN_STATES),
                )
            )
        )

    def _series_state(self, series: CheckinSeries, state: EventState) -> None:
        if state.removed:
            if not series.active:
                return  # our own cancellation, read back
            cancelled = 0
            for occ in self._open_future(series):
                occ.state, occ.updated_at = OccurrenceState.CANCELLED, self.now
                cancelled += 1
            series.active, series.updated_at = False, self.now
            self.result.series_removed += 1
            self._audit("series.removed_in_calendar", "series", series.id, {"cancelled": cancelled})
            return
        if state.responses:
            for occ in self._open_future(series):
                self._respond(series, occ, state.responses, series_level=True)

    def _instance_state(self, series: CheckinSeries, state: EventState) -> None:
        occ = self.session.scalar(
            select(Occurrence).where(
                Occurrence.organization_id == series.organization_id,
                Occurrence.series_id == series.id,
                Occurrence.recurrence_id == state.recurrence_id,
            )
        )
        if occ is None:
            return  # beyond our planning horizon: planning will create it from the rule
        if state.removed:
            if occ.state in OPEN_STATES:
                occ.state, occ.updated_at = OccurrenceState.CANCELLED, self.now
                self.result.cancelled += 1
                self._audit(
                    "occurrence.cancelled_in_calendar", "occurrence", occ.id, {"by": "calendar"}
                )
            return
        if (
            state.start is not None
            and state.end is not None
            and (state.start != occ.start_at or state.end != occ.end_at)
            and occ.state in OPEN_STATES
        ):
            before = occ.start_at
            move_occurrence(self.session, occ, state.start, state.end, self.now)
            self.result.moved += 1
            self._audit(
                "occurrence.moved_in_calendar",
                "occurrence",
                occ.id,
                {"from": before.isoformat(), "to": state.start.isoformat()},
            )
        if state.responses:
            self._respond(series, occ, state.responses, series_level=False)

    def _respond(
        self,
        series: CheckinSeries,
        occ: Occurrence,
        responses: Mapping[str, str],
        series_level: bool,
    ) -> None:
        participants = self._participants(series)
        current = dict(occ.responses or {})
        changed = {}
        for email, partstat in responses.items():
            email = email.lower()
            if email not in participants:
                continue  # someone else on the event: not part of the record
            if series_level and current.get(f"{email}#instance"):
                continue  # an answer to this one meeting wins over the series answer
            if current.get(email) != partstat:
                changed[email] = partstat
        if not changed:
            return
        current.update(changed)
        if not series_level:
            current.update({f"{e}#instance": "1" for e in changed})
        occ.responses, occ.updated_at = current, self.now
        self.result.responses += len(changed)
        self._audit("occurrence.responses", "occurrence", occ.id, {"responses": changed})
        decliner = next((e for e, p in changed.items() if p == DECLINED), None)
        if decliner and occ.state in OPEN_STATES:
            occ.state = OccurrenceState.CANCELLED
            self.result.cancelled += 1
            self._audit(
                "occurrence.declined",
                "occurrence",
                occ.id,
                {"by": decliner, "role": participants[decliner]},
            )

    def _audit(self, action: str, kind: str, subject_id: int, data: dict[str, object]) -> None:
        audit.record(
            self.session,
            self.sync.organization_id,
            actor=f"calendar:{self.sync.provider}",
            action=action,
            subject_kind=kind,
            subject_id=subject_id,
            at=self.now,
            data=data,
        )


def sync_calendar(rt: Runtime, session: Session, sync: CalendarSync, full: bool = False) -> str:
    """Read the calendar's changes since the stored cursor and apply them."""
    applier = StateApplier(rt, session, sync)
    outcome = rt.calendar.sync(sync.calendar, None if full else sync.cursor, applier)
    now = rt.now()
    sync.cursor = outcome.cursor
    sync.synced_at = now
    if outcome.full_resync or full or sync.full_synced_at is None:
        sync.full_synced_at = now
    sync.error = None
    sync.updated_at = now
    return f"{outcome.events} states, {outcome.requests} requests: {applier.result}"


@handles("calendar_sync")
def run_calendar_sync(rt: Runtime, session: Session, task: Task) -> str:
    sync = session.get(CalendarSync, task.subject_id)
    if sync is None or sync.organization_id != task.organization_id:
        return "no-sync-state"
    if sync.provider != rt.calendar.name:
        return f"provider {sync.provider} is not configured (now {rt.calendar.name})"
    return sync_calendar(rt, session, sync, full=task.key.endswith(":full"))


# --------------------------------------------------------------------------- push channels


def push_address(rt: Runtime) -> str:
    return rt.settings.base_url.rstrip("/") + PUSH_PATHS[rt.calendar.name]


def channel_ttl(rt: Runtime) -> dt.timedelta:
    if rt.calendar.name == "graph":
        return dt.timedelta(minutes=rt.settings.graph_subscription_minutes)
    return dt.timedelta(seconds=rt.settings.google_channel_ttl_seconds)


def _store_channel(sync: CalendarSync, channel: Channel, now: dt.datetime) -> None:
    sync.channel_id, sync.channel_resource = channel.id, channel.resource
    sync.channel_secret, sync.channel_expires_at = channel.secret, channel.expires_at
    sync.last_message_number = None
    sync.updated_at = now


def open_channel(rt: Runtime, sync: CalendarSync) -> str:
    """Open a push channel for a calendar that has none."""
    channel = rt.calendar.watch(  # type: ignore[attr-defined]
        sync.calendar,
        push_address(rt),
        secrets.token_urlsafe(32),
        channel_ttl(rt),
        str(uuid.uuid4()),
    )
    _store_channel(sync, channel, rt.now())
    return f"opened channel until {channel.expires_at.isoformat()}"


@handles("calendar_channel_renew")
def renew_channel(rt: Runtime, session: Session, task: Task) -> str:
    sync = session.get(CalendarSync, task.subject_id)
    if sync is None or sync.organization_id != task.organization_id:
        return "no-sync-state"
    if not has_push(rt) or sync.provider != rt.calendar.name:
        return "no push for this provider"
    if sync.channel_id is None:
        return open_channel(rt, sync)
    old = Channel(
        sync.channel_id,
        sync.channel_resource or "",
        sync.channel_secret or "",
        sync.channel_expires_at or rt.now(),
    )
    channel = rt.calendar.renew(  # type: ignore[attr-defined]
        sync.calendar, old, push_address(rt), channel_ttl(rt)
    )
    _store_channel(sync, channel, rt.now())
    return f"renewed until {channel.expires_at.isoformat()}"


def schedule_calendar_work(rt: Runtime, skip_organizations: Collection[int] = ()) -> int:
    """From the tick: renew channels in the last quarter of their life, open missing ones,
    and poll every calendar every ``calendar_poll_minutes`` as a safety net for lost notices.
    Task keys make a second tick in the same window create nothing.

    With the deployment's runtime it covers the calendars of the runtime's provider of every
    organization but ``skip_organizations``: those whose runtime has a calendar of its own
    (:func:`automation.services.loop.take_in`), even of the same provider (say, their own
    Graph tenant), whose calendars the tick schedules with their runtime; the deployment's
    settings (its poll interval, its channel lifetime) are not theirs. With an
    organization's runtime (:meth:`Runtime.tenant`) it covers that organization's
    calendars only."""
    if rt.calendar.name in ("local", "imip"):
        return 0
    now = rt.now()
    poll = dt.timedelta(minutes=rt.settings.calendar_poll_minutes)
    created = 0
    query = select(CalendarSync).where(CalendarSync.provider == rt.calendar.name)
    if rt.organization_id is not None:
        # Its session is scoped already (automation.tenancy); said here too, so the query
        # is the organization's whatever session it runs in.
        query = query.where(CalendarSync.organization_id == rt.organization_id)
    elif skip_organizations:
        query = query.where(CalendarSync.organization_id.not_in(sorted(set(skip_organizations))))
    with transaction(rt.factory) as session:
        for sync in session.scalars(query):
            if has_push(rt):
                ttl = channel_ttl(rt)
                expires = sync.channel_expires_at
                if expires is None or expires - now < ttl / 4:
                    # Keyed by the expiry it renews, and by day when there is no channel,
                    # so a refused subscription (say, base_url not public yet) is tried
                    # again tomorrow rather than never.
                    stamp = expires.isoformat() if expires else f"none:{now.date()}"
                    create_task(
                        session,
                        sync.organization_id,
                        "calendar_channel_renew",
                        f"calendar-channel-renew:{sync.id}:{stamp}",
                        sync.id,
                        now,
                        now,
                    )
            # A weekly full round reconciles what incremental rounds cannot say (a Graph
            # delta window that has to move forward, removals a provider did not report).
            if sync.full_synced_at is not None and now - sync.full_synced_at >= FULL_SYNC_EVERY:
                week = int(now.timestamp() // FULL_SYNC_EVERY.total_seconds())
                create_task(
                    session,
                    sync.organization_id,
                    "calendar_sync",
                    f"calendar-sync:{sync.id}:week:{week}:full",
                    sync.id,
                    now,
                    now,
                )
            elif sync.synced_at is None or now - sync.synced_at >= poll:
                bucket = int(now.timestamp() // poll.total_seconds())
                create_task(
                    session,
                    sync.organization_id,
                    "calendar_sync",
                    f"calendar-sync:{sync.id}:poll:{bucket}",
                    sync.id,
                    now,
                    now,
                )
        created = len(session.info.get("new_tasks", []))
    return created


# --------------------------------------------------------------------------- operator commands


@dataclass(frozen=True)
class CalendarStatus:
    provider: str
    calendar: str
    synced_at: str | None
    full_synced_at: str | None
    has_cursor: bool
    channel_expires_at: str | None
    error: str | None
    result: str = ""


def _status(sync: CalendarSync, result: str = "") -> CalendarStatus:
    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat(timespec="seconds") if value else None

    return CalendarStatus(
        provider=sync.provider,
        calendar=sync.calendar,
        synced_at=iso(sync.synced_at),
        full_synced_at=iso(sync.full_synced_at),
        has_cursor=bool(sync.cursor),
        channel_expires_at=iso(sync.channel_expires_at),
        error=sync.error,
        result=result,
    )


def organizers(session: Session, organization_id: int) -> list[str]:
    """Managers with an active series: the calendars the service writes to."""
    return sorted(
        {
            email.lower()
            for email in session.scalars(
                select(Person.email)
                .join(
                    CheckinSeries,
                    (CheckinSeries.manager_id == Person.id)
                    & (CheckinSeries.organization_id == Person.organization_id),
                )
                .where(CheckinSeries.organization_id == organization_id, CheckinSeries.active)
            )
        }
    )


def calendar_status(rt: Runtime, organization_id: int) -> list[CalendarStatus]:
    with rt.factory() as session:
        return [
            _status(s)
            for s in session.scalars(
                select(CalendarSync)
                .where(CalendarSync.organization_id == organization_id)
                .order_by(CalendarSync.provider, CalendarSync.calendar)
            )
        ]


def connect_calendars(
    rt: Runtime,
    organization_id: int,
    calendars: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> list[CalendarStatus]:
    """Check the provider credentials on each organizer's calendar by a full sync, and open
    push channels where the provider has them. Each calendar in its own transaction, so one
    broken mailbox is reported and does not stop the others. ``progress`` is told
    ``(calendars done, calendars)`` after each."""
    if rt.calendar.name in ("local", "imip"):
        raise ValueError(
            f"calendar_provider is {rt.calendar.name!r}: set it to google, graph or caldav "
            "(config/settings.toml or AUTOMATION_CALENDAR_PROVIDER) to connect calendars"
        )
    with rt.factory() as session:
        targets = [c.lower() for c in calendars] or organizers(session, organization_id)
    targets = [c for c in targets if connected(rt.settings, c)]
    out = []
    for calendar in targets:
        out.append(_connect_one(rt, organization_id, calendar))
        if progress is not None:
            progress(len(out), len(targets))
    return out


def _connect_one(rt: Runtime, organization_id: int, calendar: str) -> CalendarStatus:
    from automation.errors import ProviderError

    now = rt.now()
    try:
        with transaction(rt.factory) as session:
            sync = ensure_sync(session, organization_id, rt.calendar.name, calendar, now)
            result = sync_calendar(rt, session, sync, full=sync.cursor is None)
            if has_push(rt) and sync.channel_id is None:
                result += "; " + open_channel(rt, sync)
            return _status(sync, result)
    except ProviderError as exc:
        with transaction(rt.factory) as session:
            sync = ensure_sync(session, organization_id, rt.calendar.name, calendar, now)
            sync.error, sync.updated_at = str(exc)[:2000], now
            return _status(sync, f"failed: {exc}")


def sync_now(
    rt: Runtime,
    organization_id: int,
    calendars: Sequence[str] = (),
    full: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[CalendarStatus]:
    """Sync the given (default: every known) calendar right away, in this process;
    ``progress`` is told ``(calendars done, calendars)`` after each."""
    with rt.factory() as session:
        rows = list(
            session.scalars(
                select(CalendarSync.calendar).where(
                    CalendarSync.organization_id == organization_id,
                    CalendarSync.provider == rt.calendar.name,
                )
            )
        )
    wanted = [c.lower() for c in calendars] or rows
    out = []
    for calendar in wanted:
        with transaction(rt.factory) as session:
            sync = ensure_sync(session, organization_id, rt.calendar.name, calendar, rt.now())
            out.append(_status(sync, sync_calendar(rt, session, sync, full=full)))
        if progress is not None:
            progress(len(out), len(wanted))
    return out


def held_by_anyone(rt: Runtime, channel_id: str) -> bool:
    """Whether a calendar of any organization holds the channel: a question about the whole
    deployment, so asked outside the task's scope (automation.tenancy), on a connection of
    its own with no transaction (the task's own holds SQLite's write lock, which a second
    transaction would wait for)."""
    mark = "?" if rt.engine.dialect.paramstyle == "qmark" else "%s"
    conn = rt.engine.raw_connection()
    try:
        cursor = conn.cursor()
        cursor.execute(
            f"SELECT 1 FROM calendar_syncs WHERE channel_id = {mark} LIMIT 1", (channel_id,)
        )
        found = cursor.fetchone() is not None
        cursor.close()
        conn.rollback()  # PostgreSQL opened a transaction for the read: end it
    finally:
        conn.close()
    return found


@handles("calendar_channel_stop")
def stop_unknown_channel(rt: Runtime, session: Session, task: Task) -> str:
    """Stop a Google channel that notifies us but that no calendar of ours holds (left over
    from a crash between opening a new channel and recording it, or from an old install).
    The webhook recorded its ids in the audit entry that is this task's subject."""
    from automation.errors import PermanentProviderError
    from automation.models import AuditEntry

    entry = session.get(AuditEntry, task.subject_id)
    if entry is None or entry.organization_id != task.organization_id:
        return "no-audit-entry"
    channel_id = str(entry.data.get("channel_id") or "")
    resource = str(entry.data.get("resource_id") or "")
    if not channel_id or not has_push(rt):
        return "nothing to stop"
    # Any organization's: a channel the webhook could not place is filed under the
    # deployment's organization, and may belong to another one by now. Keep it if so.
    if held_by_anyone(rt, channel_id):
        return "channel is ours after all: kept"
    calendars = list(
        session.scalars(
            select(CalendarSync.calendar).where(
                CalendarSync.organization_id == task.organization_id,
                CalendarSync.provider == rt.calendar.name,
            )
        )
    )
    # The channel's owner is not known; channels.stop works with the credentials of the
    # calendar it watches, so try ours until one is accepted.
    channel = Channel(channel_id, resource, "", rt.now())
    for calendar in calendars:
        try:
            rt.calendar.stop(calendar, channel)  # type: ignore[attr-defined]
        except PermanentProviderError:
            continue
        return f"stopped with {calendar}'s credentials"
    return "could not stop: no calendar's credentials were accepted"
