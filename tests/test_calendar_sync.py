"""The calendar service both ways, on a real database, with an in-memory provider.

The provider here records what it is asked and replays states it is told to; the real
providers are tested against their fakes and Radicale in their own files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import pytest
from sqlalchemy import func, select

from automation.db import transaction
from automation.models import (
    AuditEntry,
    CalendarLink,
    CalendarSync,
    CheckinSeries,
    Occurrence,
    Task,
    TaskState,
)
from automation.ports import (
    ACCEPTED,
    DECLINED,
    Channel,
    EventState,
    SeriesEvent,
    SyncOutcome,
)
from automation.services.calendars import schedule_calendar_work, sync_now
from automation.services.loop import run_due
from tests.conftest import start_organization
from tests.test_loop import occurrences


class MemoryCalendar:
    """A provider that batches like Google and pushes like Google, in memory."""

    name = "google"
    batch_size = 50

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.events: dict[str, SeriesEvent] = {}
        self.pending: list[EventState] = []
        self.cursors: list[str | None] = []
        self.channels: list[Channel] = []
        self.stopped: list[str] = []

    def write_series(self, event: SeriesEvent) -> str:
        return self.write_many([event])[event.uid]

    def write_many(self, events: Sequence[SeriesEvent]) -> dict[str, str]:
        self.batches.append([e.uid for e in events])
        for e in events:
            self.events[e.uid] = e
        return {e.uid: f"id-{e.uid}" for e in events}

    def busy(self, emails, start, end):  # type: ignore[no-untyped-def]
        return []

    def sync(
        self, calendar: str, cursor: str | None, apply: Callable[[Sequence[EventState]], None]
    ) -> SyncOutcome:
        self.cursors.append(cursor)
        states, self.pending = self.pending, []
        apply(states)
        return SyncOutcome(f"c{len(self.cursors)}", False, 1, len(states))

    def watch(self, calendar, address, secret, ttl, channel_id):  # type: ignore[no-untyped-def]
        channel = Channel(channel_id, f"res-{calendar}", secret, dt.datetime.now(dt.UTC) + ttl)
        self.channels.append(channel)
        return channel

    def stop(self, calendar, channel):  # type: ignore[no-untyped-def]
        self.stopped.append(channel.id)

    def renew(self, calendar, channel, address, ttl):  # type: ignore[no-untyped-def]
        new = self.watch(calendar, address, channel.secret, ttl, channel.id + "-next")
        self.stopped.append(channel.id)
        return new


@pytest.fixture
def settings(settings):  # type: ignore[no-untyped-def]
    return settings.with_(planning_horizon_days=70)  # enough meetings of a fortnightly series


@pytest.fixture
def cal(rt, tmp_path) -> MemoryCalendar:  # type: ignore[no-untyped-def]
    memory = MemoryCalendar()
    rt.calendar = memory
    start_organization(rt, tmp_path)
    return memory


def _series(rt, employee: str) -> CheckinSeries:  # type: ignore[no-untyped-def]
    from automation.models import Person

    with rt.factory() as session:
        return session.scalars(
            select(CheckinSeries)
            .join(Person, Person.id == CheckinSeries.employee_id)
            .where(Person.email == employee)
        ).one()


def _audit_count(rt) -> int:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return session.scalar(select(func.count()).select_from(AuditEntry)) or 0


def test_invites_go_out_in_one_batch_and_are_linked(rt, cal):
    assert len(cal.batches) == 1 and len(cal.batches[0]) == 3  # three reports, one request
    with rt.factory() as session:
        links = list(session.scalars(select(CalendarLink)))
        assert {link.event_id for link in links} == {f"id-{uid}" for uid in cal.events}
        assert {link.written_sequence for link in links} == {0}
        invites = list(session.scalars(select(Task).where(Task.kind == "invite")))
        assert [t.state for t in invites] == [TaskState.DONE] * 3
        assert sum("written with task" in (t.result or "") for t in invites) == 2
        (sync,) = session.scalars(select(CalendarSync))
        assert sync.calendar == "boss@acme.test" and sync.provider == "google"
    assert {o.state for o in occurrences(rt, "ana@acme.test")} == {"invited"}


def test_a_retried_invite_whose_write_was_recorded_writes_nothing(rt, cal):
    with transaction(rt.factory) as session:
        task = session.scalars(select(Task).where(Task.kind == "invite")).first()
        assert task is not None
        task.state, task.due_at = TaskState.PENDING, rt.now()
        task_id = task.id
    run_due(rt)
    assert len(cal.batches) == 1  # no second provider call
    with rt.factory() as session:
        task = session.get(Task, task_id)
        assert task.state == TaskState.DONE and task.result.startswith("written 0 series")


def test_moves_declines_and_deletions_come_back_as_occurrence_changes(rt, cal):
    ana = _series(rt, "ana@acme.test")
    first, second, third = occurrences(rt, "ana@acme.test")[:3]
    with rt.factory() as session:
        agenda = session.scalars(
            select(Task).where(Task.key == f"agenda:occurrence:{first.id}")
        ).one()
        agenda_due = agenda.due_at
    moved_to = first.start_at + dt.timedelta(hours=2)
    cal.pending = [
        EventState(
            ana.uid,
            recurrence_id=first.recurrence_id,
            start=moved_to,
            end=moved_to + (first.end_at - first.start_at),
            responses={"ana@acme.test": ACCEPTED},
        ),
        EventState(
            ana.uid, recurrence_id=second.recurrence_id, responses={"ana@acme.test": DECLINED}
        ),
        EventState(ana.uid, recurrence_id=third.recurrence_id, removed=True),
        EventState("checkin-other@elsewhere", recurrence_id=first.recurrence_id, removed=True),
        EventState(
            None, series_provider_id=f"id-{ana.uid}", responses={"boss@acme.test": ACCEPTED}
        ),
    ]
    replay = list(cal.pending)
    syncs_before = len(cal.cursors)  # the tick's first poll may have synced already
    (status,) = sync_now(rt, ana.organization_id)
    assert "moved 1" in status.result and "cancelled 2" in status.result
    assert "not ours 1" in status.result
    after = {o.id: o for o in occurrences(rt, "ana@acme.test")}
    assert after[first.id].start_at == moved_to and after[first.id].state == "invited"
    assert after[first.id].responses["ana@acme.test"] == ACCEPTED
    assert after[second.id].state == "cancelled"
    assert after[second.id].responses["ana@acme.test"] == DECLINED
    assert after[third.id].state == "cancelled"
    # The series-level answer reached the meetings that had no answer of their own.
    later = [o for o in after.values() if o.id not in (first.id, second.id, third.id)]
    assert later and all(o.responses["boss@acme.test"] == ACCEPTED for o in later)
    with rt.factory() as session:
        agenda = session.scalars(
            select(Task).where(Task.key == f"agenda:occurrence:{first.id}")
        ).one()
        assert agenda.due_at == agenda_due + dt.timedelta(hours=2)
        sync = session.scalars(select(CalendarSync)).one()
        assert sync.cursor == f"c{syncs_before + 1}" and sync.synced_at is not None
    # Replayed states (Graph delta replays, a re-run after a crash) change nothing.
    entries = _audit_count(rt)
    cal.pending = replay
    (again,) = sync_now(rt, ana.organization_id)
    assert "moved 0, cancelled 0, responses 0" in again.result
    assert _audit_count(rt) == entries
    # Each sync started from the cursor the one before stored.
    assert cal.cursors[syncs_before + 1] == f"c{syncs_before + 1}"


def test_a_series_deleted_in_the_calendar_cancels_what_is_left(rt, cal):
    kai = _series(rt, "kai@acme.test")
    cal.pending = [EventState(kai.uid, removed=True)]
    sync_now(rt, kai.organization_id)
    with rt.factory() as session:
        series = session.get(CheckinSeries, kai.id)
        assert series is not None and not series.active
        states = set(
            session.scalars(select(Occurrence.state).where(Occurrence.series_id == kai.id))
        )
    assert states == {"cancelled"}


def test_the_tick_opens_renews_and_polls_once_per_window(rt, cal, clock):
    # The run that planned and invited also opened the organizer's channel and synced once.
    assert len(cal.channels) == 1 and len(cal.cursors) == 1
    with rt.factory() as session:
        sync = session.scalars(select(CalendarSync)).one()
        assert sync.channel_id == cal.channels[0].id and sync.channel_secret
        assert sync.synced_at is not None
    assert schedule_calendar_work(rt) == 0  # nothing due: channel fresh, synced just now
    clock.advance(dt.timedelta(minutes=rt.settings.calendar_poll_minutes))
    assert schedule_calendar_work(rt) == 1  # the safety-net poll
    assert schedule_calendar_work(rt) == 0  # same window: the task key already exists
    run_due(rt)
    assert len(cal.cursors) == 2
    # In the last quarter of the channel's life it is renewed: the new one opens first.
    with transaction(rt.factory) as session:
        sync = session.scalars(select(CalendarSync)).one()
        sync.channel_expires_at = clock.now() + dt.timedelta(hours=20)
    run_due(rt)
    assert len(cal.channels) == 2 and cal.stopped == [cal.channels[0].id]
    with rt.factory() as session:
        assert session.scalars(select(CalendarSync)).one().channel_id == cal.channels[1].id


def test_a_channel_nobody_holds_is_stopped_after_a_grace_period(rt, cal, clock):
    from fastapi.testclient import TestClient

    from automation.web import create_app

    client = TestClient(create_app(rt))
    headers = {
        "X-Goog-Channel-ID": "stale-channel",
        "X-Goog-Channel-Token": "whatever",
        "X-Goog-Resource-ID": "res-stale",
        "X-Goog-Resource-State": "exists",
        "X-Goog-Message-Number": "7",
    }
    assert client.post("/webhooks/google/calendar", headers=headers).status_code == 200
    run_due(rt)
    assert "stale-channel" not in cal.stopped  # not yet: it may be one we are opening
    clock.advance(dt.timedelta(minutes=2))
    run_due(rt)
    assert cal.stopped == ["stale-channel"]
    # Our own channel is never stopped this way.
    ours = cal.channels[0].id
    headers |= {"X-Goog-Channel-ID": ours, "X-Goog-Channel-Token": "wrong"}
    assert client.post("/webhooks/google/calendar", headers=headers).status_code == 401
    clock.advance(dt.timedelta(minutes=2))
    run_due(rt)
    assert cal.stopped == ["stale-channel"]
