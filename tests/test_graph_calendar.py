"""The Microsoft Graph calendar adapter against the local Graph fake (tests/fakes/graph.py).

Every test talks HTTPS to a real server: MSAL signs in against the fake's OIDC metadata and
token endpoint, and the fake counts what it receives, so the tests check both what happened
to the calendar and how many calls it took. Retry waits are recorded, never slept.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from zoneinfo import ZoneInfo

import pytest
import requests

from automation.adapters.graph import (
    UID_PROPERTY,
    GraphCalendar,
    MsalTokens,
    PinnedSession,
    parse_offset,
    recurrence_of,
    state_of,
    transaction_id,
    windows_zone,
)
from automation.adapters.http import Retry
from automation.errors import ConfigError, PermanentProviderError, TransientProviderError
from automation.ports import (
    ACCEPTED,
    DECLINED,
    NEEDS_ACTION,
    TENTATIVE,
    Attendee,
    EventState,
    OccurrenceOverride,
    SeriesEvent,
)
from automation.settings import PROJECT_ROOT, Settings
from tests.fakes import graph as fakes
from tests.fakes.graph import GraphFake, WebhookReceiver

UTC = dt.UTC
NOW = dt.datetime(2026, 1, 1, 8, 0, tzinfo=UTC)  # the adapter's clock for calendar tests
MANAGER = "manager@corp.example"
EMPLOYEE = "employee@corp.example"


@pytest.fixture
def fake() -> Iterator[GraphFake]:
    with GraphFake() as server:
        yield server


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def calendar(fake: GraphFake, sleeps: Sleeps | None = None, **kwargs) -> GraphCalendar:
    tokens = MsalTokens(
        fake.tenant,
        fake.client_id,
        kwargs.pop("secret", fake.client_secret),
        fake.authority_host,
        verify=fake.ca_file,
    )
    retry = Retry(
        max_attempts=kwargs.pop("max_attempts", 6), sleep=sleeps if sleeps is not None else Sleeps()
    )
    kwargs.setdefault("now", lambda: NOW)
    return GraphCalendar(fake.base_url, tokens, retry=retry, verify=fake.ca_file, **kwargs)


def series(
    n: int = 0,
    *,
    organizer: str = MANAGER,
    employee: str | None = None,
    zone: str = "Europe/Berlin",
    start: dt.datetime = dt.datetime(2026, 1, 6, 10, 0),  # a Tuesday
    rrule: str = "FREQ=WEEKLY;BYDAY=TU",
    **changes,
) -> SeriesEvent:
    event = SeriesEvent(
        uid=f"checkin-1-1-{n}@reply.example.com",
        sequence=0,
        summary=f"1:1 Manager / Employee {n}",
        description="Agenda: what went well?",
        organizer=Attendee(organizer, "Manager"),
        attendees=(
            Attendee(employee or f"e{n}@corp.example", f"Employee {n}"),
            Attendee(organizer, "Manager"),
        ),
        dtstart_local=start,
        timezone=zone,
        duration_minutes=30,
        rrule=rrule,
    )
    return replace(event, **changes)


def collect(cal: GraphCalendar, mailbox: str, cursor: str | None = None):
    pages: list[Sequence[EventState]] = []
    outcome = cal.sync(mailbox, cursor, pages.append)
    return outcome, [s for page in pages for s in page], pages


def instances_of(states: Sequence[EventState], event_id: str) -> dict[dt.datetime, EventState]:
    return {
        s.recurrence_id: s
        for s in states
        if s.series_provider_id == event_id and s.recurrence_id is not None
    }


# --------------------------------------------------------------------------- writes


def test_series_written_three_times_exists_once(fake, sleeps):
    cal = calendar(fake, sleeps)
    event = series()
    ids = {cal.write_series(event) for _ in range(3)}  # e.g. a crash before each commit

    assert len(ids) == 1
    stats = fake.stats()
    assert stats["ops"]["events.create"] == 3
    assert stats["events"] == {MANAGER: 1}
    (stored,) = fake.events(MANAGER)
    assert stored["id"] in ids
    assert stored["transactionId"] == transaction_id(event.uid)
    assert stored["singleValueExtendedProperties"] == [{"id": UID_PROPERTY, "value": event.uid}]
    assert stored["start"] == {"dateTime": "2026-01-06T09:00:00.0000000", "timeZone": "UTC"}
    # The organizer is not invited to their own meeting.
    assert [a["emailAddress"]["address"] for a in stored["attendees"]] == ["e0@corp.example"]

    (event_id,) = ids
    renamed = replace(event, summary="Renamed", sequence=1, provider_id=event_id)
    assert cal.write_series(renamed) == event_id
    assert fake.stats()["ops"]["events.update"] == 1
    assert [e["subject"] for e in fake.events(MANAGER)] == ["Renamed"]


def test_write_many_of_45_is_three_batches_and_one_call_per_series(fake):
    cal = calendar(fake)
    events = [series(i, organizer=f"m{i % 3}@corp.example") for i in range(45)]
    ids = cal.write_many(events)

    assert sorted(ids) == sorted(e.uid for e in events)
    assert len(set(ids.values())) == 45
    stats = fake.stats()
    assert stats["graph_requests"] == 3 == math.ceil(45 / 20)
    assert stats["batch_sizes"] == [20, 20, 5]
    assert stats["ops"] == {"$batch": 3, "openid-configuration": 1, "token": 1}
    assert stats["inner_ops"] == {"events.create": 45}  # no reads
    assert sum(stats["events"].values()) == 45


def test_a_batch_retries_only_the_inner_429_honouring_retry_after(fake, sleeps):
    cal = calendar(fake, sleeps)
    fake.fail_next(1, status=429, retry_after="7", inner=True)
    ids = cal.write_many([series(i) for i in range(5)])

    assert len(set(ids.values())) == 5
    stats = fake.stats()
    assert stats["batch_sizes"] == [5]
    assert stats["inner_ops"] == {"fault": 1, "events.create": 4}
    assert stats["ops"]["events.create"] == 1  # the one refused, sent again alone
    assert stats["events"] == {MANAGER: 5}
    assert sleeps and max(sleeps) >= 7


def test_inner_failures_go_again_together_in_a_later_batch(fake, sleeps):
    cal = calendar(fake, sleeps)
    fake.fail_next(2, status=503, retry_after=None, inner=True)
    cal.write_many([series(i) for i in range(6)])

    stats = fake.stats()
    assert stats["batch_sizes"] == [6, 2]
    assert stats["inner_ops"]["events.create"] == 6
    assert stats["events"] == {MANAGER: 6}
    assert len(sleeps) == 1


def test_a_failed_batch_goes_through_the_retry_rules(fake, sleeps):
    cal = calendar(fake, sleeps)
    fake.fail_next(1, status=429, retry_after="3")
    cal.write_many([series(i) for i in range(3)])

    stats = fake.stats()
    assert stats["ops"]["fault"] == 1 and stats["ops"]["$batch"] == 1
    assert stats["events"] == {MANAGER: 3}
    assert sleeps[0] >= 3


def test_200_series_under_30_percent_faults_are_created_exactly_once(fake, sleeps):
    # A seeded 30% of calls (top level and inside batches) get 429 or 503; half the 503s
    # come after the event was created (the answer was lost): only transactionId saves us.
    fake.inject_faults(0.3, seed=11, after_share=0.5)
    cal = calendar(fake, sleeps, max_attempts=12)
    events = [series(i, organizer=f"m{i % 10}@corp.example") for i in range(200)]
    ids = cal.write_many(events)

    stats = fake.stats()
    assert len(set(ids.values())) == 200
    assert sum(stats["events"].values()) == 200
    uids = [p["value"] for e in fake.events() for p in e.get("singleValueExtendedProperties", [])]
    assert sorted(uids) == sorted(e.uid for e in events)
    lost = stats["ops"].get("fault.after", 0) + stats["inner_ops"].get("fault.after", 0)
    refused = stats["ops"].get("fault", 0) + stats["inner_ops"].get("fault", 0)
    assert lost > 0 and refused > 0  # both kinds really happened
    creates = stats["inner_ops"].get("events.create", 0) + stats["ops"].get("events.create", 0)
    assert creates > 200  # some creates were sent again and answered with the first event
    assert sleeps


def test_moved_and_cancelled_instances_are_written_once(fake):
    cal = calendar(fake)
    second = dt.datetime(2026, 1, 13, 9, 0, tzinfo=UTC)
    third = dt.datetime(2026, 1, 20, 9, 0, tzinfo=UTC)
    moved_to = dt.datetime(2026, 1, 14, 13, 0, tzinfo=UTC)
    event = series(
        overrides=(
            OccurrenceOverride(second, moved_to, moved_to + dt.timedelta(minutes=30)),
            OccurrenceOverride(third, third, third + dt.timedelta(minutes=30), cancelled=True),
        )
    )
    event_id = cal.write_series(event)

    window = fake.instances(event_id, NOW, NOW + dt.timedelta(days=30))
    by_original = {parse_offset(i["originalStart"]): i for i in window}
    assert third not in by_original
    assert by_original[second]["type"] == "exception"
    assert by_original[second]["start"]["dateTime"] == "2026-01-14T13:00:00.0000000"
    assert fake.stats()["inner_ops"] == {
        "events.instances": 2,
        "events.update": 1,
        "events.delete": 1,
    }

    fake.reset_counters()
    cal.write_series(replace(event, provider_id=event_id, sequence=1))
    stats = fake.stats()
    assert stats["ops"] == {"events.update": 1, "$batch": 1}  # the master, then two lookups
    assert stats["inner_ops"] == {"events.instances": 2}  # nothing left to move or delete


def test_cancel_deletes_the_series_and_a_second_cancel_is_fine(fake):
    cal = calendar(fake)
    event = series()
    event_id = cal.write_series(event)
    cancelled = replace(event, cancelled=True, sequence=1, provider_id=event_id)

    assert cal.write_series(cancelled) == event_id
    assert fake.stats()["events"] == {}
    cal.write_series(cancelled)  # 404: already gone, which is what we wanted
    assert fake.stats()["ops"]["events.delete"] == 2


def test_cancel_without_a_recorded_id_finds_the_series_by_our_uid(fake):
    cal = calendar(fake)
    event = series()
    other = series(1)
    event_id = cal.write_series(event)
    cal.write_series(other)

    assert cal.write_series(replace(event, cancelled=True)) == event_id
    assert [e["id"] for e in fake.events(MANAGER)] != [] and all(
        e["id"] != event_id for e in fake.events(MANAGER)
    )
    assert fake.stats()["ops"]["events.list"] == 1


def test_an_update_of_a_series_deleted_in_outlook_creates_it_again(fake):
    cal = calendar(fake)
    event = series()
    event_id = cal.write_series(event)
    fake.delete_event(event_id)

    new_id = cal.write_series(replace(event, sequence=1, provider_id=event_id))
    assert new_id != event_id
    assert [e["id"] for e in fake.events(MANAGER)] == [new_id]


# --------------------------------------------------------------------------- time zones


@pytest.mark.parametrize(
    ("zone", "local", "offsets"),
    [
        ("Europe/Berlin", dt.time(10, 0), {dt.timedelta(hours=1), dt.timedelta(hours=2)}),
        ("America/New_York", dt.time(9, 0), {dt.timedelta(hours=-5), dt.timedelta(hours=-4)}),
    ],
)
def test_a_weekly_meeting_keeps_its_local_hour_across_both_dst_changes(fake, zone, local, offsets):
    cal = calendar(fake)
    event_id = cal.write_series(
        series(zone=zone, start=dt.datetime.combine(dt.date(2026, 1, 6), local))
    )
    outcome, states, _ = collect(cal, MANAGER)
    starts = [s.start for s in instances_of(states, event_id).values()]

    tz = ZoneInfo(zone)
    assert min(starts) < dt.datetime(2026, 3, 1, tzinfo=UTC)  # winter
    assert any(
        dt.datetime(2026, 6, 1, tzinfo=UTC) < s < dt.datetime(2026, 8, 1, tzinfo=UTC)
        for s in starts
    )
    assert max(starts) > dt.datetime(2026, 12, 1, tzinfo=UTC)  # winter again
    assert {s.astimezone(tz).time() for s in starts} == {local}
    assert {s.astimezone(tz).utcoffset() for s in starts} == offsets
    assert {s.astimezone(tz).weekday() for s in starts} == {1}  # Tuesdays, every week
    weeks = {(b - a) for a, b in zip(sorted(starts), sorted(starts)[1:], strict=False)}
    assert weeks <= {
        dt.timedelta(days=7),
        dt.timedelta(days=7, hours=1),
        dt.timedelta(days=6, hours=23),
    }


def test_every_zone_of_the_example_organisation_has_a_windows_name():
    zones = {
        line.split(",")[2]
        for line in (PROJECT_ROOT / "config/example/people.csv").read_text().splitlines()[1:]
        if line.strip()
    }
    for iana in zones:
        windows = windows_zone(iana)
        assert windows != iana and windows in fakes.IANA, iana
        same = ZoneInfo(fakes.IANA[windows])  # the fake's own table, written separately
        for month in range(1, 13):
            moment = dt.datetime(2026, month, 15, 12, tzinfo=UTC)
            assert (
                moment.astimezone(same).utcoffset() == moment.astimezone(ZoneInfo(iana)).utcoffset()
            )


def test_rrules_become_patterned_recurrence():
    tue = dt.datetime(2026, 3, 10, 10, 0)
    weekly = recurrence_of("FREQ=WEEKLY;BYDAY=TU", tue, "Europe/Berlin")
    assert weekly == {
        "pattern": {
            "interval": 1,
            "type": "weekly",
            "daysOfWeek": ["tuesday"],
            "firstDayOfWeek": "monday",
        },
        "range": {
            "type": "noEnd",
            "startDate": "2026-03-10",
            "recurrenceTimeZone": "W. Europe Standard Time",
        },
    }
    biweekly = recurrence_of("FREQ=WEEKLY;INTERVAL=2;BYDAY=TH", tue, "Asia/Tokyo")
    assert biweekly["pattern"]["interval"] == 2
    assert biweekly["pattern"]["daysOfWeek"] == ["thursday"]
    monthly = recurrence_of("FREQ=MONTHLY;BYDAY=2TU", tue, "America/New_York")["pattern"]
    assert monthly == {
        "interval": 1,
        "type": "relativeMonthly",
        "daysOfWeek": ["tuesday"],
        "index": "second",
    }
    assert recurrence_of("FREQ=MONTHLY;BYDAY=-1FR", tue, "UTC")["pattern"]["index"] == "last"
    counted = recurrence_of("FREQ=WEEKLY;BYDAY=TU;COUNT=6", tue, "UTC")["range"]
    assert counted["type"] == "numbered" and counted["numberOfOccurrences"] == 6
    with pytest.raises(ValueError):
        recurrence_of("FREQ=YEARLY;BYMONTH=3", tue, "UTC")


def test_biweekly_and_monthly_series_expand_as_our_rules_do(fake):
    from automation.domain.cadence import expand

    cal = calendar(fake)
    rules = {
        "FREQ=WEEKLY;INTERVAL=2;BYDAY=TU": dt.datetime(2026, 1, 6, 14, 30),
        "FREQ=MONTHLY;BYDAY=2TU": dt.datetime(2026, 1, 13, 9, 0),
    }
    ids = {
        rule: cal.write_series(series(i, zone="America/Los_Angeles", start=start, rrule=rule))
        for i, (rule, start) in enumerate(rules.items())
    }
    _, states, _ = collect(cal, MANAGER)
    lo, hi = NOW - dt.timedelta(days=30), NOW + dt.timedelta(days=400)
    for rule, start in rules.items():
        ours = [i.start for i in expand(rule, start, "America/Los_Angeles", 30, lo, hi)]
        assert sorted(instances_of(states, ids[rule])) == ours


# --------------------------------------------------------------------------- sync


def test_a_decline_and_a_moved_instance_arrive_in_one_delta_round(fake):
    cal = calendar(fake)
    event_id = cal.write_series(series(employee=EMPLOYEE))
    first, _, _ = collect(cal, MANAGER)
    declined = dt.datetime(2026, 1, 13, 9, 0, tzinfo=UTC)
    moved = dt.datetime(2026, 1, 20, 9, 0, tzinfo=UTC)
    fake.respond(event_id, EMPLOYEE, "declined", instance=declined)
    fake.move_instance(event_id, moved, moved + dt.timedelta(hours=2))

    outcome, states, _ = collect(cal, MANAGER, first.cursor)
    assert outcome.requests == 1 and not outcome.full_resync
    got = instances_of(states, event_id)
    assert got[declined].responses == {EMPLOYEE: DECLINED}
    assert got[declined].start == declined
    assert got[moved].start == moved + dt.timedelta(hours=2)
    assert got[moved].end == moved + dt.timedelta(hours=2, minutes=30)
    assert set(got) == {declined, moved}  # only what changed
    assert outcome.cursor != first.cursor


def test_series_responses_and_a_deleted_series_are_reported(fake):
    cal = calendar(fake)
    event_id = cal.write_series(series(employee=EMPLOYEE))
    first, _, _ = collect(cal, MANAGER)
    fake.respond(event_id, EMPLOYEE, "tentativelyAccepted")
    second, states, _ = collect(cal, MANAGER, first.cursor)
    master = [s for s in states if s.series_provider_id == event_id and s.recurrence_id is None]
    assert master and master[0].responses == {EMPLOYEE: TENTATIVE}
    assert {s.responses[EMPLOYEE] for s in instances_of(states, event_id).values()} == {TENTATIVE}

    fake.delete_event(event_id)
    _, states, _ = collect(cal, MANAGER, second.cursor)
    assert EventState(uid=None, series_provider_id=event_id, removed=True) in states
    assert all(s.removed for s in states)


def test_other_peoples_single_events_are_not_reported(fake):
    cal = calendar(fake)
    mine = cal.write_series(series())
    foreign = fake.seed_event(
        MANAGER,
        dt.datetime(2026, 1, 7, 12, tzinfo=UTC),
        dt.datetime(2026, 1, 7, 13, tzinfo=UTC),
        subject="Dentist",
    )
    _, states, _ = collect(cal, MANAGER)
    assert {s.series_provider_id for s in states} == {mine}
    assert foreign != mine


def test_an_incremental_sync_without_changes_is_one_request(fake):
    cal = calendar(fake, page_size=10)
    for i in range(3):
        cal.write_series(series(i))
    full, states, pages = collect(cal, MANAGER)
    assert full.requests == len(pages) > 1  # paged, applied page by page
    assert all(len(p) <= 10 for p in pages)
    assert full.events == len(states) == 3 * 57 + 3

    before = fake.stats()["ops"]["calendarView.delta"]
    calls = []
    again = cal.sync(MANAGER, full.cursor, calls.append)
    assert again.requests == 1 and again.events == 0 and calls == []
    assert fake.stats()["ops"]["calendarView.delta"] == before + 1
    assert not again.full_resync


@pytest.mark.parametrize("how", ["gone", "syncStateNotFound", "resyncRequired"])
def test_a_refused_delta_link_means_one_fresh_round(fake, how):
    cal = calendar(fake)
    event_id = cal.write_series(series())
    first, _, _ = collect(cal, MANAGER)
    fake.invalidate_delta(how)

    outcome, states, _ = collect(cal, MANAGER, first.cursor)
    assert outcome.full_resync
    assert outcome.requests == 2  # the refused link, then the fresh round's one page
    assert len(instances_of(states, event_id)) == 57  # everything again
    follow_up, _, _ = collect(cal, MANAGER, outcome.cursor)
    assert follow_up.requests == 1 and not follow_up.full_resync


def test_a_refused_fresh_round_raises_instead_of_looping(fake):
    cal = calendar(fake)
    cal.write_series(series())
    first, _, _ = collect(cal, MANAGER)
    fake.invalidate_delta("gone", fresh_rounds_too=True)

    with pytest.raises(TransientProviderError):
        cal.sync(MANAGER, first.cursor, lambda states: None)
    # 1 for the first round, then the refused link and the refused fresh round: no loop.
    assert fake.stats()["ops"]["calendarView.delta"] == 3


def test_delta_items_become_event_states():
    assert state_of({"id": "X", "@removed": {"reason": "deleted"}}) == EventState(
        uid=None, series_provider_id="X", removed=True
    )
    item = {
        "id": "I1",
        "type": "occurrence",
        "seriesMasterId": "M1",
        "originalStart": "2026-03-03T09:00:00Z",
        "start": {"dateTime": "2026-03-03T11:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2026-03-03T11:30:00.0000000", "timeZone": "UTC"},
        "isCancelled": True,
        "attendees": [
            {"emailAddress": {"address": "A@x.com"}, "status": {"response": "accepted"}},
            {"emailAddress": {"address": "b@x.com"}, "status": {"response": "notResponded"}},
            {"emailAddress": {"address": "c@x.com"}, "status": {"response": "none"}},
        ],
    }
    state = state_of(item)
    assert state == EventState(
        uid=None,
        series_provider_id="M1",
        recurrence_id=dt.datetime(2026, 3, 3, 9, tzinfo=UTC),
        removed=True,
        start=dt.datetime(2026, 3, 3, 11, tzinfo=UTC),
        end=dt.datetime(2026, 3, 3, 11, 30, tzinfo=UTC),
        responses={"a@x.com": ACCEPTED, "b@x.com": NEEDS_ACTION, "c@x.com": NEEDS_ACTION},
    )
    master = {
        "id": "M1",
        "type": "seriesMaster",
        "singleValueExtendedProperties": [{"id": UID_PROPERTY, "value": "u@x"}],
    }
    assert state_of(master) == EventState(uid="u@x", series_provider_id="M1")
    assert state_of({"id": "S", "type": "singleInstance"}) is None


# --------------------------------------------------------------------------- busy


def test_busy_splits_people_and_days_and_counts_oof_and_all_day(fake):
    cal = calendar(fake)
    people = [f"p{i}@corp.example" for i in range(45)]
    lo = dt.datetime(2026, 1, 5, tzinfo=UTC)
    hi = dt.datetime(2026, 4, 15, tzinfo=UTC)  # 100 days: 3 windows under 42 days
    berlin = ZoneInfo("Europe/Berlin")
    day_off = (
        dt.datetime(2026, 3, 20, tzinfo=berlin).astimezone(UTC),
        dt.datetime(2026, 3, 21, tzinfo=berlin).astimezone(UTC),
    )
    fake.seed_event(people[30], *day_off, show_as="oof", all_day=True, timezone="Europe/Berlin")
    meeting = (dt.datetime(2026, 1, 7, 10, tzinfo=UTC), dt.datetime(2026, 1, 7, 11, tzinfo=UTC))
    fake.seed_event(people[44], *meeting)
    elsewhere = (dt.datetime(2026, 2, 4, 8, tzinfo=UTC), dt.datetime(2026, 2, 4, 16, tzinfo=UTC))
    fake.seed_event(people[3], *elsewhere, show_as="workingElsewhere")
    free = (dt.datetime(2026, 2, 2, 8, tzinfo=UTC), dt.datetime(2026, 2, 2, 9, tzinfo=UTC))
    fake.seed_event(people[1], *free, show_as="free")
    # p5 is invited (not yet answered) to p6's weekly meeting: tentative, so busy.
    invite_id = cal.write_series(
        series(organizer=people[6], employee=people[5], start=dt.datetime(2026, 1, 6, 10, 0))
    )
    fake.reset_counters()

    busy = cal.busy(people, lo, hi)

    assert day_off in busy and meeting in busy and elsewhere in busy
    assert not any(s < free[1] and e > free[0] for s, e in busy)
    weekly = [s for s, e in busy if s.weekday() == 1 and s.astimezone(berlin).hour == 10]
    assert len(weekly) == 15  # Tuesdays 2026-01-06 .. 2026-04-14
    stats = fake.stats()
    calls = stats["inner_ops"].get("getSchedule", 0) + stats["ops"].get("getSchedule", 0)
    assert calls == 3 * 3  # 45 people = 20 + 20 + 5, times 3 windows
    assert stats["graph_requests"] == 1  # all nine in one $batch
    assert invite_id


def test_the_fake_refuses_oversized_schedules(fake):
    # The split above matters only if Graph (and so the fake) refuses the unsplit call.
    token = MsalTokens(
        fake.tenant, fake.client_id, fake.client_secret, fake.authority_host, verify=fake.ca_file
    )()
    session = PinnedSession(fake.ca_file)
    url = f"{fake.base_url}/users/p0@corp.example/calendar/getSchedule"

    def ask(people: int, days: int) -> int:
        body = {
            "schedules": [f"p{i}@corp.example" for i in range(people)],
            "startTime": {"dateTime": "2026-01-05T00:00:00", "timeZone": "UTC"},
            "endTime": {
                "dateTime": (dt.datetime(2026, 1, 5) + dt.timedelta(days=days)).isoformat(),
                "timeZone": "UTC",
            },
        }
        headers = {"Authorization": f"Bearer {token}"}
        return session.post(url, json=body, headers=headers).status_code

    assert ask(20, 41) == 200
    assert ask(21, 41) == 400
    assert ask(20, 42) == 400


# --------------------------------------------------------------------------- tokens


def graph_settings(fake: GraphFake, **changes) -> Settings:
    values = {
        "calendar_provider": "graph",
        "graph_tenant_id": fake.tenant,
        "graph_client_id": fake.client_id,
        "graph_client_secret": fake.client_secret,
        "graph_base_url": fake.base_url,
        "graph_authority_host": fake.authority_host,
    }
    return Settings(**(values | changes))


def test_many_calls_one_token_request(fake, monkeypatch):
    # from_settings as production builds it; only the fake's CA comes from the environment.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_file))
    first = GraphCalendar.from_settings(graph_settings(fake))
    second = GraphCalendar.from_settings(graph_settings(fake))  # another worker thread
    for i in range(5):
        first.write_series(series(i))
        second.write_series(series(100 + i))
    outcome = first.sync(MANAGER, None, lambda states: None)
    second.sync(MANAGER, outcome.cursor, lambda states: None)
    second.busy([MANAGER], NOW, NOW + dt.timedelta(days=7))

    stats = fake.stats()
    assert stats["graph_requests"] >= 13
    assert stats["token_calls"] == 1
    assert stats["discovery_calls"] == 1


def test_missing_graph_settings_name_the_fields(fake):
    with pytest.raises(ConfigError) as err:
        GraphCalendar.from_settings(graph_settings(fake, graph_client_secret=""))
    assert [p.field for p in err.value.problems] == ["graph_client_secret"]


def test_a_wrong_secret_is_permanent_and_never_logged(fake, caplog):
    secret = "not-the-secret-1234567890"
    cal = calendar(fake, secret=secret)
    with caplog.at_level(logging.DEBUG), pytest.raises(PermanentProviderError) as err:
        cal.write_series(series())
    assert "invalid_client" in str(err.value)
    assert secret not in caplog.text and secret not in str(err.value)
    assert fake.stats()["graph_requests"] == 0


def test_a_graph_call_without_a_token_is_refused(fake):
    response = requests.get(
        f"{fake.base_url}/users/{MANAGER}/events", verify=fake.ca_file, timeout=10
    )
    assert response.status_code == 401


# --------------------------------------------------------------------------- push


def test_subscribe_shakes_hands_renew_patches_stop_deletes():
    with GraphFake(subscription_grant_minutes=60) as fake, WebhookReceiver() as hooks:
        cal = calendar(fake, now=lambda: dt.datetime.now(UTC))
        address = hooks.url + "/webhooks/graph/calendar"
        channel = cal.watch(MANAGER, address, "s3cret", dt.timedelta(days=7), "ignored")

        assert [path for path, _ in hooks.validations] == [
            "/webhooks/graph/calendar",
            "/webhooks/graph/calendar/lifecycle",
        ]
        stored = fake.subscriptions()[channel.id]
        assert stored["clientState"] == "s3cret"
        assert stored["resource"] == f"/users/{MANAGER}/events"
        # Asked for 7 days (capped to 4230 minutes), granted 60: the expiry is read back.
        assert channel.expires_at == parse_offset(stored["expirationDateTime"])
        assert channel.expires_at < dt.datetime.now(UTC) + dt.timedelta(minutes=61)
        assert channel.secret == "s3cret" and channel.resource == stored["resource"]

        assert fake.notify(channel.id, "updated", "AAMkEvent1") == 202
        (notice,) = hooks.notifications
        assert notice["clientState"] == "s3cret" and notice["changeType"] == "updated"
        assert notice["resource"].endswith("/Events/AAMkEvent1")
        assert fake.lifecycle(channel.id, "reauthorizationRequired") == 202
        assert hooks.lifecycle[0]["lifecycleEvent"] == "reauthorizationRequired"
        assert cal.reauthorize(channel) is True

        renewed = cal.renew(MANAGER, channel, address, dt.timedelta(minutes=4230))
        assert renewed.id == channel.id and renewed.secret == "s3cret"
        assert renewed.expires_at == parse_offset(
            fake.subscriptions()[channel.id]["expirationDateTime"]
        )
        cal.stop(MANAGER, renewed)
        assert fake.subscriptions() == {}
        cal.stop(MANAGER, renewed)  # unknown now: counts as stopped
        assert cal.reauthorize(renewed) is False

        ops = fake.stats()["ops"]
        assert ops["subscriptions.create"] == 1
        assert ops["subscriptions.update"] == 1
        assert ops["subscriptions.delete"] == 2
        assert ops["subscriptions.reauthorize"] == 2
        assert len(hooks.validations) == 2  # renewing does not shake hands again


def test_renewing_a_removed_subscription_subscribes_again():
    with GraphFake() as fake, WebhookReceiver() as hooks:
        cal = calendar(fake, now=lambda: dt.datetime.now(UTC))
        address = hooks.url + "/graph"
        channel = cal.watch(MANAGER, address, "s3cret", dt.timedelta(hours=12), "x")
        fake.lifecycle(channel.id, "subscriptionRemoved")

        renewed = cal.renew(MANAGER, channel, address, dt.timedelta(hours=12))
        assert renewed.id != channel.id
        assert set(fake.subscriptions()) == {renewed.id}
        assert fake.subscriptions()[renewed.id]["clientState"] == "s3cret"
        assert len(hooks.validations) == 4


def test_a_subscription_whose_endpoint_does_not_echo_is_refused():
    with GraphFake() as fake, WebhookReceiver(echo=False) as hooks:
        cal = calendar(fake, now=lambda: dt.datetime.now(UTC))
        with pytest.raises(PermanentProviderError):
            cal.watch(MANAGER, hooks.url + "/graph", "s3cret", dt.timedelta(hours=1), "x")
        assert fake.subscriptions() == {}
        assert hooks.validations  # it was asked
