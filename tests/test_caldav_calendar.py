"""The CalDAV calendar adapter against a real Radicale server (started by the tests).

Faults come from a small proxy in front of Radicale (tests/fakes/faulty_proxy.py), which
also counts the requests it sees, so request counts are checked twice: by the adapter's
SyncOutcome.requests and by what actually arrived. The retry waits are a no-op sleep.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import replace
from urllib.parse import unquote
from zoneinfo import ZoneInfo

import icalendar
import pytest
import recurring_ical_events
import requests
import vobject

from automation.adapters.caldav import CalDavCalendar
from automation.adapters.http import Retry
from automation.errors import PermanentProviderError
from automation.ports import DECLINED, NEEDS_ACTION, Attendee, EventState, SeriesEvent
from tests.fakes.faulty_proxy import FaultyProxy
from tests.fakes.radicale_server import RadicaleServer, radicale_fixture

radicale = radicale_fixture()

BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.UTC
EMPLOYEE = "ben@example.com"
_numbers = itertools.count(1)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def no_sleep(_seconds: float) -> None:
    return None


def provider(url: str, server: RadicaleServer, **kwargs: object) -> CalDavCalendar:
    attempts = int(kwargs.pop("max_attempts", 6))  # type: ignore[call-overload]
    return CalDavCalendar(
        url,
        username=server.username,
        password=server.password,
        retry=Retry(max_attempts=attempts, sleep=no_sleep),
        **kwargs,  # type: ignore[arg-type]
    )


def series(organizer: str, **changes: object) -> SeriesEvent:
    event = SeriesEvent(
        uid=f"checkin-1-{next(_numbers)}-7",
        sequence=0,
        summary="1:1 Mia / Ben",
        description="Weekly check-in",
        organizer=Attendee(organizer, "Mia Manager"),
        attendees=(Attendee(EMPLOYEE, "Ben Employee"),),
        dtstart_local=dt.datetime(2026, 1, 6, 10, 0),  # a Tuesday
        timezone="Europe/Berlin",
        duration_minutes=30,
        rrule="FREQ=WEEKLY;BYDAY=TU;COUNT=52",
    )
    return replace(event, **changes)  # type: ignore[arg-type]


@pytest.fixture
def organizer() -> str:
    return f"mgr-{uuid.uuid4().hex[:10]}@example.com"


@pytest.fixture
def caldav(radicale: RadicaleServer) -> CalDavCalendar:
    return provider(radicale.url, radicale)


@pytest.fixture
def proxy(radicale: RadicaleServer) -> Iterator[FaultyProxy]:
    with FaultyProxy(radicale.url) as running:
        yield running


class OtherClient:
    """Another CalDAV client (a person's calendar app), talking to Radicale directly."""

    def __init__(self, server: RadicaleServer):
        self.base = server.url
        self.session = requests.Session()
        self.session.auth = (server.username, server.password)

    def url(self, href: str) -> str:
        return self.base.rstrip("/") + href

    def get(self, href: str) -> tuple[bytes, str]:
        response = self.session.get(self.url(href))
        assert response.status_code == 200, response.status_code
        return response.content, response.headers["ETag"]

    def put(self, href: str, body: bytes, **headers: str) -> int:
        headers = {"Content-Type": "text/calendar; charset=utf-8", **headers}
        return self.session.put(self.url(href), data=body, headers=headers).status_code

    def make_calendar(self, email: str) -> None:
        self.session.request("MKCOL", self.url(f"/{email}/"))
        made = self.session.request("MKCALENDAR", self.url(f"/{email}/checkins/"))
        assert made.status_code == 201, made.status_code

    def hrefs(self, email: str) -> list[str]:
        """The resources in the person's check-in calendar."""
        response = self.session.request(
            "PROPFIND",
            self.url(f"/{email}/checkins/"),
            headers={"Depth": "1"},
            data=b'<propfind xmlns="DAV:"><prop><getetag/></prop></propfind>',
        )
        assert response.status_code == 207, response.status_code
        from lxml import etree

        root = etree.fromstring(response.content)
        found = [h.text for h in root.iter("{DAV:}href")]
        return sorted(unquote(h) for h in found if h and not h.endswith("/"))


@pytest.fixture
def other(radicale: RadicaleServer) -> OtherClient:
    return OtherClient(radicale)


def collect(caldav: CalDavCalendar, email: str, cursor: str | None):
    states: list[EventState] = []
    chunks: list[int] = []

    def apply(chunk):
        chunks.append(len(chunk))
        states.extend(chunk)

    outcome = caldav.sync(email, cursor, apply)
    return outcome, states, chunks


def vevents(body: bytes) -> list[icalendar.Event]:
    return list(icalendar.Calendar.from_ical(body).walk("VEVENT"))


# --------------------------------------------------------------------------- writes


def test_a_series_written_three_times_by_the_same_job_is_one_resource(
    radicale: RadicaleServer, proxy: FaultyProxy, other: OtherClient, organizer: str
) -> None:
    caldav = provider(proxy.url, radicale)
    event = series(organizer)
    href = caldav.write_series(event)
    _, etag = other.get(href)
    assert caldav.write_series(event) == caldav.write_series(event) == href

    assert href == f"/{organizer}/checkins/{event.uid}.ics"
    assert other.hrefs(organizer) == [href]
    assert [(method, status) for method, _, status in proxy.log] == [
        ("PUT", 409),  # no calendar yet:
        ("MKCALENDAR", 409),  # no parent folder either (Radicale)
        ("MKCOL", 201),
        ("MKCALENDAR", 201),
        ("PUT", 201),  # created (If-None-Match: *)
        ("PUT", 412),  # the second write is refused as a create,
        ("GET", 200),  # reads the resource: it already says the same, so no PUT
        ("PUT", 412),
        ("GET", 200),
    ]
    body, etag_after = other.get(href)
    assert etag_after == etag  # untouched: a replay does not wake other clients' syncs
    assert [str(c["uid"]) for c in vevents(body)] == [event.uid]


def test_a_series_with_a_provider_id_goes_straight_to_the_update_path(
    radicale: RadicaleServer, proxy: FaultyProxy, caldav: CalDavCalendar, organizer: str
) -> None:
    event = series(organizer)
    href = caldav.write_series(event)
    later = provider(proxy.url, radicale)
    assert later.write_series(replace(event, provider_id=href, summary="Renamed")) == href
    assert [(m, s in (200, 201, 204)) for m, _, s in proxy.log] == [("GET", True), ("PUT", True)]
    outcome, states, _ = collect(caldav, organizer, None)
    assert [s.uid for s in states] == [event.uid]


def test_a_create_never_overwrites_a_resource_of_the_same_name_written_by_someone_else(
    caldav: CalDavCalendar, other: OtherClient, organizer: str
) -> None:
    event = series(organizer)
    caldav.write_series(series(organizer))  # the calendar exists
    href = caldav.href_for(event)
    theirs = (
        b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//someone//EN\r\nBEGIN:VEVENT\r\n"
        b"UID:someone-elses-event\r\nDTSTAMP:20260101T000000Z\r\n"
        b"DTSTART:20260107T090000Z\r\nDTEND:20260107T100000Z\r\nSUMMARY:Dentist\r\n"
        b"END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    assert other.put(href, theirs, **{"If-None-Match": "*"}) == 201

    with pytest.raises(PermanentProviderError, match="another event"):
        caldav.write_series(event)

    body, _ = other.get(href)
    assert [(str(c["uid"]), str(c["summary"])) for c in vevents(body)] == [
        ("someone-elses-event", "Dentist")
    ]


def test_the_stored_resource_has_no_method_and_keeps_the_server_quiet_unless_it_schedules(
    radicale: RadicaleServer, other: OtherClient, organizer: str
) -> None:
    quiet = provider(radicale.url, radicale)
    loud = provider(radicale.url, radicale, schedules=True)
    a, b = series(organizer), series(organizer)
    quiet_body, _ = other.get(quiet.write_series(a))
    loud_body, _ = other.get(loud.write_series(b))
    for body in (quiet_body, loud_body):
        cal = icalendar.Calendar.from_ical(body)
        assert "METHOD" not in cal
        assert [c["tzid"] for c in cal.walk("VTIMEZONE")] == ["Europe/Berlin"]
    (quiet_attendee,) = [vevents(quiet_body)[0]["attendee"]]
    assert quiet_attendee.params["SCHEDULE-AGENT"] == "CLIENT"
    assert "SCHEDULE-AGENT" not in vevents(loud_body)[0]["attendee"].params


def test_a_weekly_10_00_berlin_series_stays_10_00_across_both_2026_dst_changes(
    caldav: CalDavCalendar, other: OtherClient, organizer: str
) -> None:
    body, _ = other.get(caldav.write_series(series(organizer)))
    expected_utc_hour = {
        dt.date(2026, 3, 24): 9,  # CET, the last Tuesday before 29 March
        dt.date(2026, 3, 31): 8,  # CEST
        dt.date(2026, 10, 20): 8,  # CEST, the last Tuesday before 25 October
        dt.date(2026, 10, 27): 9,  # CET again
    }

    cal = icalendar.Calendar.from_ical(body)
    found = recurring_ical_events.of(cal).between(utc(2026, 1, 1), utc(2027, 1, 1))
    starts = [o.decoded("dtstart") for o in found]
    assert len(starts) == 52
    assert {(s.astimezone(BERLIN).hour, s.astimezone(BERLIN).minute) for s in starts} == {(10, 0)}
    by_day = {s.date(): s.astimezone(UTC).hour for s in starts}
    assert {day: by_day[day] for day in expected_utc_hour} == expected_utc_hour

    # The VTIMEZONE itself (not the TZID name) carries both offsets.
    (vtimezone,) = cal.walk("VTIMEZONE")
    own = vtimezone.to_tz(lookup_tzid=False)
    assert own.utcoffset(dt.datetime(2026, 1, 15, 12)) == dt.timedelta(hours=1)
    assert own.utcoffset(dt.datetime(2026, 7, 15, 12)) == dt.timedelta(hours=2)

    # A second, independent reader.
    vcal = vobject.readOne(body.decode())
    occurrences = list(vcal.vevent.getrruleset(addRDate=True))
    assert len(occurrences) == 52
    assert {o.astimezone(BERLIN).time() for o in occurrences} == {dt.time(10, 0)}
    vobject_hours = {o.date(): o.astimezone(UTC).hour for o in occurrences}
    assert {day: vobject_hours[day] for day in expected_utc_hour} == expected_utc_hour


def test_cancel_deletes_the_resource_and_a_sync_reports_it_removed(
    caldav: CalDavCalendar, other: OtherClient, organizer: str
) -> None:
    event = series(organizer)
    href = caldav.write_series(event)
    cursor = collect(caldav, organizer, None)[0].cursor
    assert caldav.write_series(replace(event, cancelled=True, sequence=1)) == href
    assert caldav.write_series(replace(event, cancelled=True, sequence=1)) == href  # 404: done
    assert other.hrefs(organizer) == []
    outcome, states, _ = collect(caldav, organizer, cursor)
    assert states == [EventState(uid=event.uid, removed=True)]
    assert outcome.requests == 1


def test_with_server_scheduling_a_cancel_keeps_the_resource_as_cancelled(
    radicale: RadicaleServer, other: OtherClient, organizer: str
) -> None:
    caldav = provider(radicale.url, radicale, schedules=True)
    event = series(organizer)
    href = caldav.write_series(event)
    cursor = collect(caldav, organizer, None)[0].cursor
    caldav.write_series(replace(event, cancelled=True, sequence=1, provider_id=href))
    body, _ = other.get(href)
    (master,) = vevents(body)
    assert (str(master["status"]), int(master["sequence"])) == ("CANCELLED", 1)
    _, states, _ = collect(caldav, organizer, cursor)
    assert [(s.uid, s.recurrence_id, s.removed) for s in states] == [(event.uid, None, True)]


def test_a_new_organizer_moves_the_series_to_their_calendar(
    caldav: CalDavCalendar, other: OtherClient, organizer: str
) -> None:
    event = series(organizer)
    old_href = caldav.write_series(event)
    successor = f"next-{organizer}"
    moved = replace(event, organizer=Attendee(successor, "Next Manager"), provider_id=old_href)
    new_href = caldav.write_series(moved)
    assert new_href != old_href
    assert other.hrefs(organizer) == []
    assert other.hrefs(successor) == [new_href]


def test_a_412_on_if_match_refetches_and_keeps_both_changes(
    radicale: RadicaleServer, other: OtherClient, organizer: str
) -> None:
    """Someone edits the resource between our GET and our PUT: we re-read and re-apply."""
    event = series(organizer)
    href = provider(radicale.url, radicale).write_series(event)
    interfered: list[str] = []

    def decline_in_between(method: str, path: str, headers: Mapping[str, str]) -> None:
        if method == "PUT" and "If-Match" in headers and not interfered:
            body, etag = other.get(href)
            cal = icalendar.Calendar.from_ical(body)
            for component in cal.walk("VEVENT"):
                component["attendee"].params["PARTSTAT"] = DECLINED
            assert other.put(href, cal.to_ical(), **{"If-Match": etag}) in (200, 201, 204)
            interfered.append(path)

    with FaultyProxy(radicale.url, before_forward=decline_in_between) as proxy:
        caldav = provider(proxy.url, radicale)
        caldav.write_series(replace(event, provider_id=href, summary="1:1 (new room)"))
    assert interfered == [href]
    assert [(m, s) for m, _, s in proxy.log if m == "PUT"][0] == ("PUT", 412)
    assert Counter(m for m, _, _ in proxy.log) == Counter({"GET": 2, "PUT": 2})
    body, _ = other.get(href)
    (master,) = vevents(body)
    assert str(master["summary"]) == "1:1 (new room)"  # ours
    assert master["attendee"].params["PARTSTAT"] == DECLINED  # theirs, same SEQUENCE


# --------------------------------------------------------------------------- sync


def _edit_as_attendee_client(other: OtherClient, href: str) -> None:
    """Move the 13 January meeting to Wednesday 11:00 and decline the 20 January one."""
    body, etag = other.get(href)
    cal = icalendar.Calendar.from_ical(body)
    (master,) = cal.walk("VEVENT")
    for original, start, partstat in (
        (dt.datetime(2026, 1, 13, 10, 0), dt.datetime(2026, 1, 14, 11, 0), "ACCEPTED"),
        (dt.datetime(2026, 1, 20, 10, 0), dt.datetime(2026, 1, 20, 10, 0), DECLINED),
    ):
        instance = icalendar.Event()
        for key in ("uid", "sequence", "summary", "organizer"):
            instance[key] = master[key]
        attendee = icalendar.vCalAddress(f"mailto:{EMPLOYEE}")
        attendee.params.update({"CN": "Ben Employee", "PARTSTAT": partstat})
        instance.add("attendee", attendee)
        instance.add("dtstamp", utc(2026, 1, 2, 8, 0))
        instance.add("recurrence-id", original.replace(tzinfo=BERLIN))
        instance.add("dtstart", start.replace(tzinfo=BERLIN))
        instance.add("dtend", start.replace(tzinfo=BERLIN) + dt.timedelta(minutes=30))
        cal.add_component(instance)
    assert other.put(href, cal.to_ical(), **{"If-Match": etag}) in (200, 201, 204)


def test_an_occurrence_moved_and_another_declined_elsewhere_arrive_in_one_sync(
    caldav: CalDavCalendar, other: OtherClient, organizer: str
) -> None:
    event = series(organizer)
    href = caldav.write_series(event)
    first, states, _ = collect(caldav, organizer, None)
    assert states == [EventState(uid=event.uid, responses={EMPLOYEE: NEEDS_ACTION})]

    _edit_as_attendee_client(other, href)
    outcome, states, _ = collect(caldav, organizer, first.cursor)

    assert outcome.requests == 1 and not outcome.full_resync and outcome.events == 3
    assert states == [
        EventState(uid=event.uid, responses={EMPLOYEE: NEEDS_ACTION}),
        EventState(
            uid=event.uid,
            recurrence_id=utc(2026, 1, 13, 9, 0),
            start=utc(2026, 1, 14, 10, 0),
            end=utc(2026, 1, 14, 10, 30),
            responses={EMPLOYEE: "ACCEPTED"},
        ),
        EventState(
            uid=event.uid,
            recurrence_id=utc(2026, 1, 20, 9, 0),
            start=utc(2026, 1, 20, 9, 0),
            end=utc(2026, 1, 20, 9, 30),
            responses={EMPLOYEE: DECLINED},
        ),
    ]

    # Replaying our write (same SEQUENCE) keeps their changes; a new SEQUENCE starts afresh.
    caldav.write_series(replace(event, provider_id=href))
    _, replayed, _ = collect(caldav, organizer, None)
    assert replayed == states
    caldav.write_series(replace(event, provider_id=href, sequence=1, duration_minutes=45))
    _, rescheduled, _ = collect(caldav, organizer, None)
    assert rescheduled == [EventState(uid=event.uid, responses={EMPLOYEE: NEEDS_ACTION})]


def test_overrides_and_exdates_written_by_us_come_back_as_instance_states(
    caldav: CalDavCalendar, organizer: str
) -> None:
    from automation.ports import OccurrenceOverride

    event = series(
        organizer,
        overrides=(
            OccurrenceOverride(
                utc(2026, 2, 3, 9, 0), utc(2026, 2, 4, 13, 0), utc(2026, 2, 4, 13, 30)
            ),
            OccurrenceOverride(
                utc(2026, 2, 10, 9, 0), utc(2026, 2, 10, 9, 0), utc(2026, 2, 10, 9, 30), True
            ),
        ),
    )
    caldav.write_series(event)
    _, states, _ = collect(caldav, organizer, None)
    assert [(s.recurrence_id, s.removed, s.start) for s in states] == [
        (None, False, None),
        (utc(2026, 2, 10, 9, 0), True, None),
        (utc(2026, 2, 3, 9, 0), False, utc(2026, 2, 4, 13, 0)),
    ]


def test_an_invalid_sync_token_forces_exactly_one_full_resync(
    radicale: RadicaleServer, proxy: FaultyProxy, caldav: CalDavCalendar, organizer: str
) -> None:
    events = [series(organizer) for _ in range(3)]
    caldav.write_many(events)
    through_proxy = provider(proxy.url, radicale)
    forgotten = "http://radicale.org/ns/sync/" + "0" * 64  # well formed, unknown to the server
    outcome, states, _ = collect(through_proxy, organizer, forgotten)

    assert outcome.full_resync is True
    assert sorted(s.uid for s in states) == sorted(e.uid for e in events)
    assert outcome.requests == 2 and proxy.received == Counter({"REPORT": 2})
    assert [s for _, _, s in proxy.log] == [403, 207]
    again, states, _ = collect(through_proxy, organizer, outcome.cursor)
    assert (again.full_resync, again.events, states) == (False, 0, [])


def test_an_incremental_sync_without_changes_costs_one_request(
    radicale: RadicaleServer, proxy: FaultyProxy, caldav: CalDavCalendar, organizer: str
) -> None:
    caldav.write_many([series(organizer) for _ in range(5)])
    through_proxy = provider(proxy.url, radicale)
    first, states, _ = collect(through_proxy, organizer, None)
    assert (first.requests, len(states)) == (1, 5)  # the data came with the report
    proxy.reset_counts()

    outcome, states, chunks = collect(through_proxy, organizer, first.cursor)

    assert outcome == type(outcome)(cursor=first.cursor, full_resync=False, requests=1, events=0)
    assert states == [] and chunks == []
    assert proxy.received == Counter({"REPORT": 1})


def test_sync_hands_states_over_in_chunks(
    radicale: RadicaleServer, caldav: CalDavCalendar, organizer: str
) -> None:
    caldav.write_many([series(organizer) for _ in range(7)])
    small = provider(radicale.url, radicale, apply_size=3)
    outcome, states, chunks = collect(small, organizer, None)
    assert outcome.events == len(states) == 7
    assert chunks == [3, 3, 1]


def test_a_calendar_that_does_not_exist_syncs_to_nothing(caldav: CalDavCalendar) -> None:
    outcome, states, _ = collect(caldav, "nobody-here@example.com", None)
    assert (outcome.cursor, outcome.events, states) == (None, 0, [])


def test_without_sync_collection_sync_compares_etags(
    radicale: RadicaleServer, caldav: CalDavCalendar, other: OtherClient, organizer: str
) -> None:
    events = [series(organizer) for _ in range(3)]
    hrefs = [caldav.write_series(e) for e in events]
    with FaultyProxy(radicale.url, unsupported_reports={"sync-collection"}) as proxy:
        poller = provider(proxy.url, radicale, multiget_size=2)
        first, states, _ = collect(poller, organizer, None)
        assert first.cursor is not None and first.cursor.startswith("{")
        assert sorted(s.uid for s in states) == sorted(e.uid for e in events)
        # REPORT sync-collection (refused), PROPFIND, and two multigets of at most 2.
        assert first.requests == 4 and not first.full_resync

        quiet, states, _ = collect(poller, organizer, first.cursor)
        assert (quiet.requests, quiet.events, quiet.cursor) == (1, 0, first.cursor)

        _edit_as_attendee_client(other, hrefs[0])
        caldav.write_series(replace(events[1], cancelled=True, provider_id=hrefs[1]))
        changed, states, _ = collect(poller, organizer, first.cursor)
        assert changed.requests == 2  # PROPFIND + one multiget
        assert {(s.uid, s.recurrence_id, s.removed) for s in states} == {
            (events[0].uid, None, False),
            (events[0].uid, utc(2026, 1, 13, 9, 0), False),
            (events[0].uid, utc(2026, 1, 20, 9, 0), False),
            (events[1].uid, None, True),
        }


# --------------------------------------------------------------------------- faults


def test_under_30_percent_429_and_503_fifty_series_are_each_created_once(
    radicale: RadicaleServer, other: OtherClient, organizer: str
) -> None:
    events = [series(organizer) for _ in range(50)]
    with FaultyProxy(radicale.url, fault_ratio=0.3, seed=20260329) as proxy:
        caldav = provider(proxy.url, radicale, max_attempts=12)
        written = caldav.write_many(events)
        caldav.write_many(events[:10])  # part of the batch replayed by a retried job

    assert sorted(written) == sorted(e.uid for e in events)
    assert other.hrefs(organizer) == sorted(written.values())
    total = sum(proxy.received.values())
    assert sum(proxy.faults.values()) >= 0.2 * total  # faults really happened
    assert caldav.retry.retries == sum(proxy.faults.values())
    assert {s for m, _, s in proxy.log} <= {200, 201, 204, 207, 409, 412, 429, 503}
    _, states, _ = collect(provider(radicale.url, radicale), organizer, None)
    assert Counter(s.uid for s in states) == Counter({e.uid: 1 for e in events})


def test_responses_lost_after_the_server_wrote_never_make_a_second_event(
    radicale: RadicaleServer, other: OtherClient, organizer: str
) -> None:
    """The server creates the resource, the answer is lost, the retry must not duplicate."""
    events = [series(organizer) for _ in range(20)]
    with FaultyProxy(radicale.url, lost_ratio=0.3, seed=11) as proxy:
        caldav = provider(proxy.url, radicale, max_attempts=12)
        written = caldav.write_many(events)

    assert proxy.faults["PUT"] > 0
    assert other.hrefs(organizer) == sorted(written.values())
    # A lost create shows up as a retried create refused with 412 and taking the update path.
    assert any(m == "PUT" and s == 412 for m, _, s in proxy.log)
    for event in events:
        body, _ = other.get(written[event.uid])
        assert [str(c["uid"]) for c in vevents(body)] == [event.uid]


# --------------------------------------------------------------------------- free/busy


def _put_foreign(other: OtherClient, email: str, name: str, lines: list[str]) -> None:
    body = "\r\n".join(
        ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//another client//EN", *lines, "END:VCALENDAR"]
    )
    assert other.put(f"/{email}/checkins/{name}.ics", body.encode() + b"\r\n") == 201


@pytest.mark.parametrize("mode", ["free-busy-query", "event scan"])
def test_free_busy_sees_all_day_and_recurring_events_and_ignores_transparent_ones(
    radicale: RadicaleServer, other: OtherClient, organizer: str, mode: str
) -> None:
    person = organizer
    other.make_calendar(person)
    stamp = "DTSTAMP:20260101T000000Z"
    _put_foreign(other, person, "holiday", [
        "BEGIN:VEVENT", "UID:holiday", stamp, "DTSTART;VALUE=DATE:20260310",
        "DTEND;VALUE=DATE:20260311", "SUMMARY:Day off", "END:VEVENT",
    ])  # fmt: skip
    _put_foreign(other, person, "fyi", [
        "BEGIN:VEVENT", "UID:fyi", stamp, "DTSTART:20260311T100000Z",
        "DTEND:20260311T110000Z", "TRANSP:TRANSPARENT", "SUMMARY:FYI", "END:VEVENT",
    ])  # fmt: skip
    _put_foreign(other, person, "called-off", [
        "BEGIN:VEVENT", "UID:called-off", stamp, "DTSTART:20260317T100000Z",
        "DTEND:20260317T110000Z", "STATUS:CANCELLED", "SUMMARY:Off", "END:VEVENT",
    ])  # fmt: skip
    _put_foreign(other, person, "weekly", [
        "BEGIN:VEVENT", "UID:weekly", stamp,
        "DTSTART;TZID=Europe/Berlin:20260305T140000",
        "DTEND;TZID=Europe/Berlin:20260305T150000",
        "RRULE:FREQ=WEEKLY", "EXDATE;TZID=Europe/Berlin:20260312T140000",
        "SUMMARY:Team", "END:VEVENT",
        "BEGIN:VEVENT", "UID:weekly", stamp,
        "RECURRENCE-ID;TZID=Europe/Berlin:20260319T140000",
        "DTSTART;TZID=Europe/Berlin:20260320T150000",
        "DTEND;TZID=Europe/Berlin:20260320T160000",
        "SUMMARY:Team (moved)", "END:VEVENT",
    ])  # fmt: skip
    refused = {"free-busy-query"} if mode == "event scan" else set()
    with FaultyProxy(radicale.url, unsupported_reports=refused) as proxy:
        caldav = provider(proxy.url, radicale)
        busy = caldav.busy(
            [person.upper(), "no-calendar@example.com"], utc(2026, 3, 9), utc(2026, 3, 23)
        )
        statuses = [s for _, _, s in proxy.log]

    assert busy == [
        (utc(2026, 3, 10), utc(2026, 3, 11)),  # the all-day event
        (utc(2026, 3, 20, 14, 0), utc(2026, 3, 20, 15, 0)),  # the moved instance
    ]
    if mode == "free-busy-query":
        assert statuses == [200, 404]  # the server's own free/busy; no collection: nothing
    else:
        assert statuses == [403, 207, 404]  # refused once, then scans only


# --------------------------------------------------------------------------- configuration


def test_build_calendar_makes_a_caldav_calendar_from_the_settings(
    radicale: RadicaleServer, other: OtherClient, organizer: str
) -> None:
    from automation.adapters.calendars import build_calendar
    from automation.settings import Settings

    settings = Settings(
        calendar_provider="caldav",
        caldav_url=radicale.url,
        caldav_username=radicale.username,
        caldav_password=radicale.password,
        caldav_calendar_path="{email}/checkins/",
    )
    caldav = build_calendar(settings)
    assert isinstance(caldav, CalDavCalendar) and caldav.name == "caldav"
    assert caldav.retry.max_attempts == settings.http_max_attempts
    href = caldav.write_series(series(organizer))
    assert other.hrefs(organizer) == [href]


def test_a_cancel_of_a_series_never_written_creates_nothing(
    radicale: RadicaleServer, other: OtherClient, organizer: str
) -> None:
    other.make_calendar(organizer)
    scheduling = provider(radicale.url, radicale, schedules=True)
    scheduling.write_series(series(organizer, cancelled=True, sequence=1))
    assert other.hrefs(organizer) == []


# --------------------------------------------------------------------------- paging (no server)


class ScriptedSession:
    """Answers requests from a script of (status, body), recording what was sent."""

    def __init__(self, answers: list[tuple[int, bytes]]):
        self.answers = list(answers)
        self.sent: list[tuple[str, bytes]] = []
        self.headers: dict[str, str] = {}
        self.auth = None

    def request(self, method: str, url: str, **kwargs: object) -> requests.Response:
        import io

        import urllib3

        self.sent.append((method, kwargs.get("data") or b""))  # type: ignore[arg-type]
        status, body = self.answers.pop(0)
        response = requests.Response()
        response.status_code = status
        response.url = url
        response.headers["Content-Type"] = "application/xml; charset=utf-8"
        response.raw = urllib3.HTTPResponse(body=io.BytesIO(body), preload_content=False)
        return response


def _multistatus(*responses: str, token: str) -> bytes:
    inner = "".join(responses)
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<D:multistatus xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">'
        f"{inner}<D:sync-token>{token}</D:sync-token></D:multistatus>"
    ).encode()


CHANGED = (
    "<D:response><D:href>/mgr%40example.com/checkins/checkin-1-1-1.ics</D:href><D:propstat>"
    '<D:prop><D:getetag>"1"</D:getetag><C:calendar-data>BEGIN:VCALENDAR&#13;\nVERSION:2.0'
    "&#13;\nPRODID:x&#13;\nBEGIN:VEVENT&#13;\nUID:checkin-1-1-1&#13;\n"
    "DTSTAMP:20260101T000000Z&#13;\nDTSTART:20260106T090000Z&#13;\n"
    "ATTENDEE;PARTSTAT=ACCEPTED:mailto:Ben@Example.com&#13;\nEND:VEVENT&#13;\n"
    "END:VCALENDAR&#13;\n</C:calendar-data></D:prop>"
    "<D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
)
TRUNCATED = (
    "<D:response><D:href>/mgr%40example.com/checkins/</D:href>"
    "<D:status>HTTP/1.1 507 Insufficient Storage</D:status>"
    "<D:error><D:number-of-matches-within-limits/></D:error></D:response>"
)
GONE = (
    "<D:response><D:href>/mgr%40example.com/checkins/checkin-1-2-1.ics</D:href>"
    "<D:status>HTTP/1.1 404 Not Found</D:status></D:response>"
)


def test_a_paged_sync_collection_follows_the_pages_and_returns_the_last_token() -> None:
    session = ScriptedSession(
        [
            (207, _multistatus(CHANGED, TRUNCATED, token="urn:page:1")),
            (207, _multistatus(GONE, token="urn:page:2")),
        ]
    )
    caldav = CalDavCalendar(
        "http://caldav.invalid/",
        session=session,  # type: ignore[arg-type]
        retry=Retry(sleep=no_sleep),
    )
    outcome, states, _ = collect(caldav, "mgr@example.com", "urn:page:0")

    assert outcome == type(outcome)(cursor="urn:page:2", full_resync=False, requests=2, events=2)
    assert states == [
        EventState(uid="checkin-1-1-1", responses={"ben@example.com": "ACCEPTED"}),
        EventState(uid="checkin-1-2-1", removed=True),
    ]
    assert [b"urn:page:0" in body for _, body in session.sent] == [True, False]
    assert [b"urn:page:1" in body for _, body in session.sent] == [False, True]


def test_a_token_refused_again_on_the_full_resync_raises_instead_of_looping() -> None:
    refused = b'<D:error xmlns:D="DAV:"><D:valid-sync-token/></D:error>'
    session = ScriptedSession([(403, refused), (403, refused), (403, refused)])
    caldav = CalDavCalendar(
        "http://caldav.invalid/",
        session=session,  # type: ignore[arg-type]
        retry=Retry(sleep=no_sleep),
    )
    with pytest.raises(PermanentProviderError, match="refused a full sync"):
        caldav.sync("mgr@example.com", "urn:stale", lambda states: None)
    assert len(session.sent) == 2
