"""The service end to end against the Google Calendar fake, over real HTTP both ways.

Planning writes the series through the production adapter (batched, linked); a person
declines or moves a meeting in "Google"; the fake pushes a notice to our web app served by
uvicorn; the notice becomes a sync task; the occurrence changes. Then the sync token expires
and the next notice costs one full resync and changes nothing twice.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import uvicorn
from sqlalchemy import func, select

from automation.adapters.google import event_id
from automation.db import transaction
from automation.models import AuditEntry, CalendarSync, CheckinSeries, Person, Task, TaskState
from automation.services.loop import run_due
from tests.conftest import ACME_PEOPLE, start_organization
from tests.fakes.google_calendar import FakeGoogleCalendar, service_account_info
from tests.test_loop import occurrences

PEOPLE = ACME_PEOPLE
BOSS = "boss@acme.test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fake() -> Iterator[FakeGoogleCalendar]:
    with FakeGoogleCalendar() as server:
        yield server


@pytest.fixture
def port() -> int:
    return _free_port()


@pytest.fixture
def settings(settings, fake, port, tmp_path: Path):  # type: ignore[no-untyped-def]
    key = tmp_path / "service-account.json"
    key.write_text(json.dumps(service_account_info(fake.token_uri)))
    return settings.with_(
        calendar_provider="google",
        google_credentials_file=str(key),
        google_api_endpoint=fake.url,
        google_token_uri=fake.token_uri,
        base_url=f"http://127.0.0.1:{port}",
        planning_horizon_days=70,
    )


@pytest.fixture
def web(rt, port) -> Iterator[None]:  # type: ignore[no-untyped-def]
    from automation.web import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the web app did not start"
    yield
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def org(rt, web, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path, PEOPLE)


def _series(rt, email: str) -> CheckinSeries:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return session.scalars(
            select(CheckinSeries)
            .join(Person, Person.id == CheckinSeries.employee_id)
            .where(Person.email == email)
        ).one()


def stored(fake: FakeGoogleCalendar) -> dict[str, int]:
    return {owner: n for owner, n in fake.events_per_calendar().items() if n}


def _sync(rt) -> CalendarSync:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return session.scalars(select(CalendarSync)).one()


def test_series_go_out_once_in_one_batch_and_keep_their_wall_clock_time(rt, org, fake):
    assert stored(fake) == {BOSS: 3}
    assert fake.counts["events.insert"] == 3 and fake.counts["batch"] == 1
    # The invite job run twice more: nothing new reaches Google.
    with transaction(rt.factory) as session:
        for task in session.scalars(select(Task).where(Task.kind == "invite")):
            task.state, task.due_at = TaskState.PENDING, rt.now()
    calls = fake.requests
    run_due(rt)
    run_due(rt)
    assert stored(fake) == {BOSS: 3} and fake.requests == calls
    # Ana's meetings, as Google expands them, stay at their Berlin wall-clock time across
    # the end of March (CET -> CEST).
    ana = _series(rt, "ana@acme.test")
    # With an empty calendar Ana's first meeting is in the first week (see the next test).
    assert occurrences(rt, "ana@acme.test")[0].start_at < dt.datetime(2026, 3, 7, tzinfo=dt.UTC)
    wall = dt.datetime.fromisoformat(ana.dtstart_local).time()
    instances = fake.expand(BOSS, event_id(ana.uid), rt.now(), rt.now() + dt.timedelta(days=70))
    berlin = ZoneInfo("Europe/Berlin")
    starts = [dt.datetime.fromisoformat(i["start"]["dateTime"]) for i in instances]
    assert len(starts) >= 3
    assert {s.astimezone(berlin).time() for s in starts} == {wall}
    assert len({s.astimezone(berlin).utcoffset() for s in starts}) == 2  # DST was crossed


def test_a_decline_and_a_move_in_google_reach_the_occurrences_after_one_notice(
    rt, org, fake, clock
):
    ana = _series(rt, "ana@acme.test")
    first, second = occurrences(rt, "ana@acme.test")[:2]
    moved_to = first.start_at + dt.timedelta(hours=3)
    fake.move_instance(BOSS, event_id(ana.uid), first.recurrence_id, moved_to)
    fake.respond(BOSS, event_id(ana.uid), "ana@acme.test", "declined", second.recurrence_id)
    sync = _sync(rt)
    assert sync.channel_id in fake.channels  # the tick opened a channel on our web app
    list_calls = fake.counts["events.list"]
    assert fake.notify(sync.channel_id) == 200
    with rt.factory() as session:
        pending = session.scalars(
            select(Task).where(Task.kind == "calendar_sync", Task.state == TaskState.PENDING)
        ).all()
        assert len(pending) == 1  # the notice became one sync task
    run_due(rt)
    assert fake.counts["events.list"] == list_calls + 1  # one incremental page
    after = {o.id: o for o in occurrences(rt, "ana@acme.test")}
    assert after[first.id].start_at == moved_to
    assert after[second.id].state == "cancelled"
    assert after[second.id].responses["ana@acme.test"] == "DECLINED"

    # The token expires: the next notice costs one full resync and repeats nothing.
    with rt.factory() as session:
        entries = session.scalar(select(func.count()).select_from(AuditEntry))
    fake.expire_sync_tokens()
    clock.advance(dt.timedelta(minutes=1))
    list_calls = fake.counts["events.list"]
    assert fake.notify(sync.channel_id) == 200
    run_due(rt)
    assert _sync(rt).full_synced_at == clock.now()
    assert fake.counts["events.list"] == list_calls + 2  # the refused token, one full listing
    with rt.factory() as session:
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == entries
    again = {o.id: (o.start_at, o.state) for o in occurrences(rt, "ana@acme.test")}
    assert again[first.id] == (moved_to, "invited") and again[second.id][1] == "cancelled"
    assert stored(fake) == {BOSS: 3 + 1 + 1}  # masters + two exceptions


def test_calendars_status_and_sync_commands(rt, org, fake, capsys):
    from automation.services.calendars import calendar_status, sync_now

    (row,) = calendar_status(rt, org)
    assert row.provider == "google" and row.calendar == BOSS and row.has_cursor
    assert row.channel_expires_at is not None and row.error is None
    (synced,) = sync_now(rt, org, full=True)
    assert "requests" in synced.result and synced.full_synced_at is not None


def test_a_new_series_avoids_the_peoples_all_day_events_and_out_of_office(rt, web, fake, tmp_path):
    """Planning asks Google for both people's busy times: Ana is on an all-day offsite on
    Monday and Tuesday and out of office for the rest of the first week, and Bea is busy
    every morning, so no meeting lands there."""
    start = rt.now().date()  # Monday 2 March 2026
    fake.seed_event("ana@acme.test", start=start, end=start + dt.timedelta(days=2))
    fake.seed_event(
        "ana@acme.test",
        start=dt.datetime(2026, 3, 4, 0, 0, tzinfo=dt.UTC),
        end=dt.datetime(2026, 3, 7, 0, 0, tzinfo=dt.UTC),
        event_type="outOfOffice",
    )
    start_organization(rt, tmp_path, PEOPLE)
    first = occurrences(rt, "ana@acme.test")[0]
    assert first.start_at >= dt.datetime(2026, 3, 7, tzinfo=dt.UTC), first.start_at
    # Without those events the first meeting is in the first week (as for Kai, whose
    # calendar is empty).
    assert occurrences(rt, "kai@acme.test")[0].start_at < dt.datetime(2026, 3, 7, tzinfo=dt.UTC)
