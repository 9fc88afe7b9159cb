"""The Google Calendar adapter against the local stateful fake of Calendar v3 (real HTTP)."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from automation.adapters.google import (
    GoogleCalendar,
    credentials_from_file,
    event_id,
    instance_id,
    uid_from_id,
)
from automation.adapters.http import Retry
from automation.errors import ConfigError, PermanentProviderError, TransientProviderError
from automation.ports import (
    DECLINED,
    NEEDS_ACTION,
    Attendee,
    EventState,
    OccurrenceOverride,
    SeriesEvent,
)
from automation.settings import Settings
from tests.fakes.google_calendar import FakeGoogleCalendar, service_account_info

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
BOSS = "boss@acme.test"
EMPLOYEE = "emp@acme.test"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("google") / "service-account.json"
    # The token_uri in the file is Google's; every test overrides it with the fake's.
    path.write_text(json.dumps(service_account_info("https://oauth2.googleapis.com/token")))
    return path


@pytest.fixture
def fake() -> Iterator[FakeGoogleCalendar]:
    with FakeGoogleCalendar() as server:
        yield server


class Sleeps(list[float]):
    """A Retry sleep that waits for nothing and remembers what it was asked."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def adapter(
    fake: FakeGoogleCalendar, key_file: Path, sleeps: Sleeps | None = None, **kwargs: Any
) -> GoogleCalendar:
    retry = Retry(sleep=sleeps if sleeps is not None else Sleeps(), **kwargs.pop("retry", {}))
    return GoogleCalendar(
        credentials_from_file(str(key_file), fake.token_uri),
        endpoint=fake.url,
        retry=retry,
        **kwargs,
    )


def series(n: int = 0, organizer: str = BOSS, **changes: Any) -> SeriesEvent:
    event = SeriesEvent(
        uid=f"checkin-1-{n}-{n + 100}@reply.example.com",
        sequence=0,
        summary=f"1:1 Boss / Employee {n}",
        description="Weekly check-in",
        organizer=Attendee(organizer, "Boss"),
        attendees=(Attendee(EMPLOYEE, "Emp Loyee"),),
        dtstart_local=dt.datetime(2026, 1, 6, 10, 0),  # a Tuesday
        timezone="Europe/Berlin",
        duration_minutes=30,
        rrule="FREQ=WEEKLY;BYDAY=TU",
    )
    return replace(event, **changes)


def collect(pages: list[list[EventState]]) -> Any:
    def apply(states: Any) -> None:
        pages.append(list(states))

    return apply


def api_requests(fake: FakeGoogleCalendar) -> int:
    """HTTP requests to the Calendar API (the OAuth token endpoint left out)."""
    return fake.requests - fake.counts["token"]


# --------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    "uid",
    ["checkin-1-2-3@reply.example.com", "checkin-é-ü-日本@x", "checkin-" + "x" * 600],
)
def test_event_id_is_a_valid_google_id_and_gives_back_the_uid(uid: str) -> None:
    eid = event_id(uid)
    assert re.fullmatch(r"[a-v0-9]{5,1024}", eid)
    assert uid_from_id(eid) == uid


def test_ids_not_made_by_us_do_not_decode_to_a_uid_of_ours() -> None:
    assert uid_from_id("abc") is None  # not a base32hex length
    assert not (uid_from_id("7kq2hpbbdmsn8c8f4imljggqm0") or "").startswith("checkin-")


# --------------------------------------------------------------------------- writes


def test_a_series_written_three_times_exists_once(fake, key_file) -> None:
    cal = adapter(fake, key_file)
    ids = {cal.write_series(series()) for _ in range(3)}
    assert ids == {event_id(series().uid)}
    assert fake.events_per_calendar()[BOSS] == 1
    assert fake.counts["events.insert"] == 3  # each run tried to create it...
    assert fake.counts["events.update"] == 2  # ...and the 409s became updates
    stored = fake.event(BOSS, event_id(series().uid))
    assert stored is not None
    assert stored["iCalUID"] == series().uid
    assert stored["extendedProperties"]["private"]["checkinUid"] == series().uid
    assert stored["attendees"] == [
        {"email": EMPLOYEE, "displayName": "Emp Loyee", "responseStatus": "needsAction"}
    ]


def test_write_many_of_120_costs_three_batch_requests_and_one_call_each(fake, key_file) -> None:
    cal = adapter(fake, key_file)
    events = [series(i, organizer=f"m{i % 4}@acme.test") for i in range(120)]
    written = cal.write_many(events)
    assert written == {e.uid: event_id(e.uid) for e in events}
    assert fake.counts["batch"] == math.ceil(120 / 50)
    assert api_requests(fake) == math.ceil(120 / 50)
    assert fake.counts["events.insert"] == 120
    assert fake.counts["inner"] == 120
    for read in ("events.get", "events.list", "events.instances"):
        assert fake.counts[read] == 0
    assert sum(fake.events_per_calendar().values()) == 120
    assert cal.counters.http_requests == 3 and cal.counters.calls == 120


def test_a_weekly_10_00_berlin_series_stays_at_10_00_across_both_dst_changes(
    fake, key_file
) -> None:
    cal = adapter(fake, key_file)
    eid = cal.write_series(series())
    # events.instances over HTTP, as a Google client would list them (two pages).
    events = cal._resource(BOSS, "events")
    instances: list[dict[str, Any]] = []
    page = None
    while True:
        answer = events.instances(
            calendarId="primary",
            eventId=eid,
            timeMin="2026-01-01T00:00:00Z",
            timeMax="2027-01-01T00:00:00Z",
            maxResults=30,
            pageToken=page,
        ).execute(http=cal._http(BOSS))
        instances += answer["items"]
        page = answer.get("nextPageToken")
        if not page:
            break
    assert len(instances) == 52
    one = events.get(calendarId="primary", eventId=instances[20]["id"]).execute(
        http=cal._http(BOSS)
    )
    assert one["recurringEventId"] == eid and one["start"] == instances[20]["start"]
    starts = [dt.datetime.fromisoformat(i["start"]["dateTime"]) for i in instances]
    assert {s.astimezone(BERLIN).time() for s in starts} == {dt.time(10, 0)}
    assert {s.astimezone(BERLIN).weekday() for s in starts} == {1}
    # Both offsets occur: the instances really straddle 29 March and 25 October.
    assert {s.astimezone(UTC).hour for s in starts} == {8, 9}
    march_31 = dt.datetime(2026, 3, 31, 8, 0, tzinfo=UTC)
    assert instance_id(eid, march_31) in {i["id"] for i in instances}


def test_overrides_patch_the_instances_by_id(fake, key_file) -> None:
    cal = adapter(fake, key_file)
    cal.write_series(series())
    moved_from = dt.datetime(2026, 4, 7, 8, 0, tzinfo=UTC)
    moved_to = dt.datetime(2026, 4, 9, 12, 0, tzinfo=UTC)
    dropped = dt.datetime(2026, 4, 14, 8, 0, tzinfo=UTC)
    event = series(
        sequence=1,
        provider_id=event_id(series().uid),
        overrides=(
            OccurrenceOverride(moved_from, moved_to, moved_to + dt.timedelta(minutes=30)),
            OccurrenceOverride(dropped, dropped, dropped, cancelled=True),
        ),
    )
    fake.reset_counts()
    cal.write_series(event)
    assert fake.counts["events.update"] == 1 and fake.counts["events.insert"] == 0
    assert fake.counts["events.patch"] == 2
    eid = event_id(series().uid)
    got = {
        i["originalStartTime"]["dateTime"]: i
        for i in fake.expand(BOSS, eid, moved_from, dropped + dt.timedelta(hours=1))
    }
    moved = got[moved_from.astimezone(BERLIN).isoformat()]
    assert dt.datetime.fromisoformat(moved["start"]["dateTime"]) == moved_to
    assert got[dropped.astimezone(BERLIN).isoformat()]["status"] == "cancelled"


def test_an_update_survives_a_sequence_google_moved_ahead(fake, key_file) -> None:
    cal = adapter(fake, key_file)
    eid = cal.write_series(series())
    fake.edit_event(BOSS, eid, summary="renamed in Google", sequence=4)
    cal.write_series(series(sequence=1, provider_id=eid, summary="1:1 moved to 11:00"))
    stored = fake.event(BOSS, eid)
    assert stored is not None
    assert stored["summary"] == "1:1 moved to 11:00" and stored["sequence"] >= 4
    assert fake.counts["events.update"] == 2  # refused with our sequence, then without it


def test_thirty_percent_429_and_503_still_create_200_series_exactly_once(key_file) -> None:
    with FakeGoogleCalendar(
        seed=7, fail_ratio=0.3, retry_after="2", fault_after_write=True
    ) as fake:
        sleeps = Sleeps()
        cal = adapter(fake, key_file, sleeps, retry={"max_attempts": 12})
        events = [series(i, organizer=f"m{i % 4}@acme.test") for i in range(200)]
        written = cal.write_many(events)
        assert len(written) == 200
        stored = fake.events_per_calendar()
        assert sum(n for who, n in stored.items() if who.startswith("m")) == 200
        assert fake.faults > 20  # the faults really happened...
        assert fake.counts["events.update"] > 0  # ...including writes whose answer was lost
        assert sleeps and min(sleeps) >= 2.0  # every wait honoured Retry-After: 2
        for e in events:
            item = fake.event(e.calendar, event_id(e.uid))
            assert item is not None and item["iCalUID"] == e.uid


def test_an_inner_rate_limit_403_is_retried_after_its_retry_after(fake, key_file) -> None:
    fake.queue_failure(403, "rateLimitExceeded", "7", operation="events.insert")
    sleeps = Sleeps()
    cal = adapter(fake, key_file, sleeps)
    assert len(cal.write_many([series(1), series(2)])) == 2
    assert fake.counts["events.insert"] == 3
    assert len(sleeps) == 1 and sleeps[0] >= 7.0
    assert fake.counts["batch"] == 1  # the retry of one call alone goes direct


def test_a_whole_batch_503_is_retried_as_a_whole(fake, key_file) -> None:
    fake.queue_failure(503, operation="batch", retry_after="3")
    sleeps = Sleeps()
    cal = adapter(fake, key_file, sleeps)
    assert len(cal.write_many([series(i) for i in range(3)])) == 3
    assert fake.counts["batch"] == 2 and fake.counts["events.insert"] == 3
    assert sleeps and sleeps[0] >= 3.0


def test_a_daily_quota_is_not_retried_here(fake, key_file) -> None:
    fake.queue_failure(403, "quotaExceeded", operation="events.insert")
    sleeps = Sleeps()
    with pytest.raises(TransientProviderError):
        adapter(fake, key_file, sleeps).write_series(series())
    assert sleeps == [] and fake.counts["events.insert"] == 1


def test_a_refused_call_is_permanent_and_not_retried(fake, key_file) -> None:
    fake.queue_failure(400, "invalid", operation="events.insert")
    sleeps = Sleeps()
    with pytest.raises(PermanentProviderError) as caught:
        adapter(fake, key_file, sleeps).write_series(series())
    assert series().uid in str(caught.value) and "400" in str(caught.value)
    assert sleeps == [] and fake.counts["events.insert"] == 1


def test_a_series_with_bad_data_fails_alone(fake, key_file) -> None:
    cal = adapter(fake, key_file)
    bad = series(1, timezone="Europe/Atlantis")
    with pytest.raises(PermanentProviderError) as caught:
        cal.write_many([bad, series(2), series(3)])
    assert "Europe/Atlantis" in str(caught.value)
    assert caught.value.written == {  # type: ignore[attr-defined]
        series(i).uid: event_id(series(i).uid) for i in (2, 3)
    }
    assert fake.events_per_calendar()[BOSS] == 2


def test_deleting_a_missing_or_deleted_series_is_success(fake, key_file) -> None:
    cal = adapter(fake, key_file)
    gone = series(5, cancelled=True)
    assert cal.write_series(gone) == event_id(gone.uid)  # never existed: 404
    cal.write_series(series(6))
    assert cal.write_series(series(6, cancelled=True)) == event_id(series(6).uid)
    assert cal.write_series(series(6, cancelled=True)) == event_id(series(6).uid)  # 410
    assert fake.counts["events.delete"] == 3
    stored = fake.event(BOSS, event_id(series(6).uid))
    assert stored is not None and stored["status"] == "cancelled"


# --------------------------------------------------------------------------- sync


def test_a_declined_and_a_moved_instance_come_back_after_one_incremental_sync(
    fake, key_file
) -> None:
    cal = adapter(fake, key_file)
    cal.write_series(series())
    first = cal.sync(BOSS, None, collect([]))
    eid = event_id(series().uid)
    declined = dt.datetime(2026, 3, 31, 8, 0, tzinfo=UTC)  # just after the change to CEST
    moved_from = dt.datetime(2026, 4, 7, 8, 0, tzinfo=UTC)
    moved_to = dt.datetime(2026, 4, 8, 13, 0, tzinfo=UTC)
    fake.respond(BOSS, eid, EMPLOYEE, "declined", instance_start=declined)
    fake.move_instance(BOSS, eid, moved_from, moved_to)
    pages: list[list[EventState]] = []
    outcome = cal.sync(BOSS, first.cursor, collect(pages))
    assert outcome.requests == 1 and not outcome.full_resync and outcome.events == 2
    states = {s.recurrence_id: s for page in pages for s in page}
    assert states[declined].uid == series().uid
    assert states[declined].responses[EMPLOYEE] == DECLINED
    assert not states[declined].removed
    assert states[moved_from].start == moved_to
    assert states[moved_from].end == moved_to + dt.timedelta(minutes=30)
    assert states[moved_from].responses[EMPLOYEE] == NEEDS_ACTION
    assert states[moved_from].series_provider_id == eid


def test_a_deleted_series_maps_back_by_its_id_alone(fake, key_file) -> None:
    cal = adapter(fake, key_file)
    cal.write_series(series())
    first = cal.sync(BOSS, None, collect([]))
    fake.delete_event(BOSS, event_id(series().uid))
    assert set(fake.event(BOSS, event_id(series().uid)) or {}) <= {"kind", "id", "status"} | {
        "etag",
        "updated",
    }
    pages: list[list[EventState]] = []
    cal.sync(BOSS, first.cursor, collect(pages))
    (state,) = [s for page in pages for s in page]
    assert state.uid == series().uid and state.removed and state.recurrence_id is None


def test_a_three_page_sync_returns_only_the_last_pages_token(fake, key_file) -> None:
    cal = adapter(fake, key_file, page_size=2)
    cal.write_many([series(i) for i in range(5)])
    fake.seed_event(  # not ours: listed by Google, ignored by us
        BOSS,
        start=dt.datetime(2026, 3, 2, 9, tzinfo=UTC),
        end=dt.datetime(2026, 3, 2, 10, tzinfo=UTC),
    )
    pages: list[list[EventState]] = []
    outcome = cal.sync(BOSS, None, collect(pages))
    assert fake.counts["events.list"] == 3 and outcome.requests == 3
    assert len(pages) == 3  # apply once per page, never the whole listing at once
    assert [len(p) for p in pages] == [2, 2, 1]
    assert fake.issued_sync_tokens == [outcome.cursor]  # pages 1 and 2 carried none
    assert outcome.events == 5 and not outcome.full_resync
    assert {s.uid for p in pages for s in p} == {series(i).uid for i in range(5)}


def test_an_expired_token_means_exactly_one_full_resync(fake, key_file) -> None:
    cal = adapter(fake, key_file)
    cal.write_many([series(i) for i in range(3)])
    first = cal.sync(BOSS, None, collect([]))
    fake.respond(BOSS, event_id(series(0).uid), EMPLOYEE, "accepted")
    fake.expire_sync_tokens()
    fake.reset_counts()
    pages: list[list[EventState]] = []
    outcome = cal.sync(BOSS, first.cursor, collect(pages))
    assert outcome.full_resync
    assert fake.counts["events.list"] == 2 and outcome.requests == 2  # the 410, one listing
    uids = [s.uid for p in pages for s in p]
    assert sorted(uids) == sorted(series(i).uid for i in range(3))  # each once
    again = cal.sync(BOSS, outcome.cursor, collect([]))
    assert not again.full_resync and again.requests == 1


def test_an_incremental_sync_without_changes_is_one_request(fake, key_file) -> None:
    cal = adapter(fake, key_file)
    cal.write_many([series(i) for i in range(3)])
    first = cal.sync(BOSS, None, collect([]))
    before = fake.requests
    pages: list[list[EventState]] = []
    outcome = cal.sync(BOSS, first.cursor, collect(pages))
    assert fake.requests - before == 1
    assert outcome.requests == 1 and outcome.events == 0 and pages == [[]]
    assert outcome.cursor


def test_a_refused_full_sync_does_not_loop(fake, key_file) -> None:
    cal = adapter(fake, key_file, page_size=1)
    cal.write_many([series(i) for i in range(3)])
    calls = []

    def expire_after_first_page(states: Any) -> None:
        calls.append(states)
        fake.expire_sync_tokens()  # the next page token is refused too

    with pytest.raises(PermanentProviderError):
        cal.sync(BOSS, None, expire_after_first_page)
    assert fake.counts["events.list"] == 2


# --------------------------------------------------------------------------- free/busy


def test_busy_counts_all_day_and_out_of_office_but_not_free_time(fake, key_file) -> None:
    fake.set_timezone(EMPLOYEE, "Europe/Berlin")
    fake.seed_event(EMPLOYEE, start=dt.date(2026, 3, 5), end=dt.date(2026, 3, 6))
    ooo_start = dt.datetime(2026, 3, 6, 9, 0, tzinfo=BERLIN)
    fake.seed_event(
        EMPLOYEE,
        start=ooo_start,
        end=ooo_start + dt.timedelta(hours=8),
        event_type="outOfOffice",
        timezone="Europe/Berlin",
    )
    fake.seed_event(
        EMPLOYEE,
        start=dt.datetime(2026, 3, 4, 12, tzinfo=UTC),
        end=dt.datetime(2026, 3, 4, 13, tzinfo=UTC),
        transparency="transparent",
    )
    fake.seed_event(
        BOSS,
        start=dt.datetime(2026, 3, 6, 15, tzinfo=UTC),
        end=dt.datetime(2026, 3, 6, 17, tzinfo=UTC),
    )
    cal = adapter(fake, key_file)
    busy = cal.busy(
        [EMPLOYEE, BOSS], dt.datetime(2026, 3, 4, tzinfo=UTC), dt.datetime(2026, 3, 8, tzinfo=UTC)
    )
    assert busy == [
        (dt.datetime(2026, 3, 4, 23, tzinfo=UTC), dt.datetime(2026, 3, 5, 23, tzinfo=UTC)),
        (dt.datetime(2026, 3, 6, 8, tzinfo=UTC), dt.datetime(2026, 3, 6, 17, tzinfo=UTC)),
    ]
    assert fake.counts["freebusy.query"] == 1


def test_busy_asks_50_calendars_and_90_days_at_a_time(fake, key_file) -> None:
    people = [f"p{i}@acme.test" for i in range(60)]
    for who in people:
        fake.seed_event(
            who,
            start=dt.datetime(2026, 6, 1, 9, tzinfo=UTC),
            end=dt.datetime(2026, 6, 1, 10, tzinfo=UTC),
        )
    cal = adapter(fake, key_file)
    start = dt.datetime(2026, 1, 1, tzinfo=UTC)
    busy = cal.busy(people, start, start + dt.timedelta(days=200))
    assert fake.counts["freebusy.query"] == 2 * 3  # 50 + 10 people, 90 + 90 + 20 days
    assert busy == [
        (dt.datetime(2026, 6, 1, 9, tzinfo=UTC), dt.datetime(2026, 6, 1, 10, tzinfo=UTC))
    ]


def test_busy_sees_the_check_ins_we_wrote(fake, key_file) -> None:
    cal = adapter(fake, key_file)
    cal.write_series(series())
    tuesday = dt.datetime(2026, 7, 7, tzinfo=UTC)
    assert cal.busy([EMPLOYEE], tuesday, tuesday + dt.timedelta(days=1)) == [
        (dt.datetime(2026, 7, 7, 8, tzinfo=UTC), dt.datetime(2026, 7, 7, 8, 30, tzinfo=UTC))
    ]


# --------------------------------------------------------------------------- push


def test_renew_opens_the_new_channel_before_stopping_the_old(fake, key_file) -> None:
    cal = adapter(fake, key_file)
    ttl = dt.timedelta(hours=1)
    old = cal.watch(BOSS, "https://hooks.example/google", "s3cret", ttl, "chan-1")
    assert old.id == "chan-1" and old.resource and old.secret == "s3cret"
    assert old.expires_at > dt.datetime.now(UTC) + dt.timedelta(minutes=59)
    new = cal.renew(BOSS, old, "https://hooks.example/google", ttl)
    assert new.id != old.id and new.secret == old.secret
    assert fake.log == [("watch", old.id), ("watch", new.id), ("stop", old.id)]
    assert set(fake.channels) == {new.id}
    cal.stop(BOSS, old)  # unknown now: 404 counts as stopped
    cal.stop(BOSS, new)
    assert fake.channels == {}


def test_a_watch_whose_answer_was_lost_opens_another_channel(fake, key_file) -> None:
    """The first watch reaches Google but its answer is lost (503): the retry of the same id
    gets 400 channelIdNotUnique, which is not a refusal but our own earlier attempt. The
    adapter opens the channel under a new id instead of failing the renewal for good."""
    from tests.fakes.faulty_proxy import FaultyProxy

    def first_only(method: str, path: str, headers: object) -> None:
        proxy.lost_ratio = 0.0  # the first forwarded call loses its answer, no other

    with FaultyProxy(fake.url, lost_ratio=1.0, before_forward=first_only) as proxy:
        cal = GoogleCalendar(
            credentials_from_file(str(key_file), fake.token_uri),
            endpoint=proxy.url,
            retry=Retry(sleep=Sleeps()),
        )
        ttl = dt.timedelta(hours=1)
        channel = cal.watch(BOSS, "https://hooks.example/google", "s3cret", ttl, "chan-1")
    assert channel.id != "chan-1" and channel.resource and channel.secret == "s3cret"
    assert sum(proxy.lost.values()) == 1
    # The lost one exists too; it expires, or is stopped at its first notice.
    assert set(fake.channels) == {"chan-1", channel.id}
    assert [op for op, _ in fake.log] == ["watch", "watch"]


def test_a_push_notice_from_the_fake_reaches_a_receiver(fake, key_file) -> None:
    received: list[dict[str, str]] = []

    class Receiver(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True

        def do_POST(self) -> None:  # noqa: N802
            received.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        address = f"http://127.0.0.1:{server.server_address[1]}/webhooks/google/calendar"
        cal = adapter(fake, key_file)
        channel = cal.watch(BOSS, address, "tok-123", dt.timedelta(hours=1), "chan-9")
        assert fake.notify(channel.id, "sync") == 200
        assert fake.notify(channel.id, "exists") == 200
    finally:
        server.shutdown()
        server.server_close()
    assert [h["x-goog-resource-state"] for h in received] == ["sync", "exists"]
    assert [h["x-goog-message-number"] for h in received] == ["1", "2"]
    for headers in received:
        assert headers["x-goog-channel-id"] == "chan-9"
        assert headers["x-goog-channel-token"] == "tok-123"
        assert headers["x-goog-resource-id"] == channel.resource


# --------------------------------------------------------------------------- credentials


def test_missing_delegation_is_permanent_and_says_how_to_fix_it(fake, key_file) -> None:
    fake.deny(BOSS, "unauthorized_client")
    with pytest.raises(PermanentProviderError) as caught:
        adapter(fake, key_file).write_series(series())
    message = str(caught.value)
    assert "domain-wide delegation" in message and BOSS in message
    assert "PRIVATE KEY" not in message and "fake-" not in message
    assert fake.counts["events.insert"] == 0


def test_one_refused_organizer_does_not_hold_up_the_others(fake, key_file) -> None:
    fake.deny("gone@acme.test", "invalid_grant")
    cal = adapter(fake, key_file)
    events = [series(i, organizer="gone@acme.test" if i == 0 else BOSS) for i in range(4)]
    with pytest.raises(PermanentProviderError, match="invalid_grant") as caught:
        cal.write_many(events)
    assert set(caught.value.written) == {series(i).uid for i in (1, 2, 3)}  # type: ignore[attr-defined]
    assert fake.events_per_calendar()[BOSS] == 3 and fake.counts["batch"] == 1


def test_an_authorized_user_file_works_for_its_user(fake, tmp_path) -> None:
    fake.refresh_tokens["refresh-1"] = "solo@acme.test"
    path = tmp_path / "user.json"
    path.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "cid.apps.googleusercontent.com",
                "client_secret": "cs",
                "refresh_token": "refresh-1",
            }
        )
    )
    settings = Settings(
        calendar_provider="google",
        google_credentials_file=str(path),
        google_api_endpoint=fake.api_endpoint,
        google_token_uri=fake.token_uri,
    )
    cal = GoogleCalendar.from_settings(settings)
    cal.retry.sleep = Sleeps()
    cal.write_series(series(organizer="solo@acme.test"))
    assert fake.events_per_calendar()["solo@acme.test"] == 1
    assert cal.batch_size == 50 and cal.retry.max_attempts == settings.http_max_attempts


def test_a_revoked_access_token_is_refreshed_once(fake, key_file) -> None:
    cal = adapter(fake, key_file)
    cal.write_many([series(i) for i in range(2)])
    first = cal.sync(BOSS, None, collect([]))
    fake.expire_access_tokens()
    fake.reset_counts()
    assert cal.sync(BOSS, first.cursor, collect([])).cursor
    assert fake.counts["token"] == 1 and fake.counts["events.list"] == 2  # 401, then again
    fake.expire_access_tokens()
    fake.reset_counts()
    again = [series(i, sequence=1, provider_id=event_id(series(i).uid)) for i in range(2)]
    assert len(cal.write_many(again)) == 2
    assert fake.counts["token"] == 1
    assert fake.counts["batch"] == 2 and fake.counts["events.update"] == 4  # 401s redone


def test_a_folder_of_user_files_is_per_user_oauth(fake, tmp_path) -> None:
    fake.refresh_tokens["refresh-a"] = "ann@acme.test"
    user_file = {"type": "authorized_user", "client_id": "c", "client_secret": "s"}
    (tmp_path / "ann@acme.test.json").write_text(
        json.dumps({**user_file, "refresh_token": "refresh-a"})
    )
    factory = credentials_from_file(str(tmp_path), fake.token_uri)
    cal = GoogleCalendar(factory, endpoint=fake.url, retry=Retry(sleep=Sleeps()))
    cal.write_series(series(organizer="Ann@acme.test"))
    assert fake.events_per_calendar()["ann@acme.test"] == 1
    with pytest.raises(PermanentProviderError, match="bob@acme.test.json"):
        cal.write_series(series(organizer="bob@acme.test"))


def test_settings_without_a_credentials_file_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="google_credentials_file"):
        GoogleCalendar.from_settings(Settings(calendar_provider="google"))
