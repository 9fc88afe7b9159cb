"""The .ics we write: RRULE-based time zones, valid iCalendar, and three independent readers.

Oracles: ``icalendar`` (+ ``recurring_ical_events``), ``vobject`` and ``ical.js`` 2.2.1
(Thunderbird's parser, run with node from tests/js). Beware: ``icalendar`` resolves an IANA
TZID such as "Europe/Berlin" through zoneinfo and never reads our VTIMEZONE, so the Python
checks also run on a copy whose TZIDs are renamed ("X-Test …"), which makes it use ours.
ical.js has no zone database at all: it only ever uses the VTIMEZONEs in the file.

The node tests need node and npm (``npm ci --prefix tests/js`` runs when node_modules is
missing). Without them they skip with the reason, and fail when ``CI=true``.
"""

from __future__ import annotations

import csv
import datetime as dt
import email
import email.policy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import icalendar
import pytest
import recurring_ical_events
import vobject

from automation.adapters.local import LocalCalendar
from automation.domain.ical import (
    ImipError,
    imip_cancel,
    imip_request,
    parse_imip_replies,
    parse_imip_reply,
    series_calendar,
    transitions,
    vtimezone,
    with_timezones,
)
from automation.emails import Rendered, build_message
from automation.ports import Attendee, OccurrenceOverride, SeriesEvent
from automation.settings import PROJECT_ROOT

JS = Path(__file__).resolve().parent / "js"
with open(PROJECT_ROOT / "config" / "example" / "people.csv", newline="") as f:
    PEOPLE_ZONES = {row["timezone"] for row in csv.DictReader(f)}
ZONES = sorted(PEOPLE_ZONES | {"Europe/Berlin", "America/New_York"})
STAMP = dt.datetime(2026, 1, 2, 9, 30, tzinfo=dt.UTC)
ORGANIZER = Attendee("calendar@reply.example.com", "Bea Boss")
YEAR_FROM = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
YEAR_TO = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
UTC = dt.UTC


def weekly(
    zone: str,
    *,
    sequence: int = 0,
    overrides: tuple[OccurrenceOverride, ...] = (),
    start: dt.datetime = dt.datetime(2026, 1, 5, 10, 0),  # a Monday, 10:00 local
    cancelled: bool = False,
    uid: str = "checkin-1-2-3",
) -> SeriesEvent:
    return SeriesEvent(
        uid=uid,
        sequence=sequence,
        summary="1:1 Bea Boss / Ana Souza",
        description="A regular check-in.\nWhat we'll cover: everything.",
        organizer=Attendee("boss@acme.test", "Bea Boss"),
        attendees=(Attendee("ana@acme.test", "Ana Souza"), Attendee("boss@acme.test", "Bea Boss")),
        dtstart_local=start,
        timezone=zone,
        duration_minutes=30,
        rrule="FREQ=WEEKLY;BYDAY=MO",
        overrides=overrides,
        cancelled=cancelled,
    )


def local_mondays_at_10(zone: str) -> list[dt.datetime]:
    """The truth: every Monday of 2026 at 10:00 in ``zone``, as UTC instants (zoneinfo)."""
    tz, day, out = ZoneInfo(zone), dt.date(2026, 1, 5), []
    while day.year == 2026:
        out.append(dt.datetime.combine(day, dt.time(10), tz).astimezone(UTC))
        day += dt.timedelta(days=7)
    return out


def renamed(data: bytes) -> bytes:
    """The same calendar with every TZID renamed, so that icalendar must read our VTIMEZONE."""
    return re.sub(rb"(TZID[:=])([A-Za-z_/+-]+)", rb"\1X-Test \2", data)


def python_starts(data: bytes) -> list[tuple[dt.datetime, dt.datetime]]:
    """(recurrence id, start) in UTC of every occurrence in 2026, by recurring_ical_events."""
    cal = icalendar.Calendar.from_ical(data)
    out = []
    for e in recurring_ical_events.of(cal).between(YEAR_FROM, YEAR_TO):
        start = e.decoded("dtstart")
        assert start.tzinfo is not None, "floating time"
        rid = e.decoded("recurrence-id") if "recurrence-id" in e else start
        out.append((rid.astimezone(UTC), start.astimezone(UTC)))
    return sorted(out, key=lambda p: p[1])


# --- the time zones --------------------------------------------------------------------------


def observances(zone: str, year: int = 2026) -> list[dict[str, object]]:
    tz = vtimezone(zone, (dt.datetime(year, 1, 1), dt.datetime(year, 12, 31)))
    assert str(tz["tzid"]) == zone
    out = []
    for sub in tz.subcomponents:
        assert "rdate" not in sub, "RDATE-list zones are what ical.js and Outlook misread"
        rule = sub.get("rrule")
        out.append(
            {
                "kind": sub.name,
                "start": sub.decoded("dtstart"),
                "from": sub.decoded("tzoffsetfrom"),
                "to": sub.decoded("tzoffsetto"),
                "rule": rule.to_ical().decode() if rule is not None else None,
            }
        )
    return out


H = dt.timedelta(hours=1)


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        (
            "Europe/Berlin",
            [
                ("DAYLIGHT", "BYDAY=-1SU;BYMONTH=3", dt.time(2), 1 * H, 2 * H),
                ("STANDARD", "BYDAY=-1SU;BYMONTH=10", dt.time(3), 2 * H, 1 * H),
            ],
        ),
        (
            "Europe/London",
            [
                ("DAYLIGHT", "BYDAY=-1SU;BYMONTH=3", dt.time(1), 0 * H, 1 * H),
                ("STANDARD", "BYDAY=-1SU;BYMONTH=10", dt.time(2), 1 * H, 0 * H),
            ],
        ),
        (
            "America/New_York",
            [
                ("DAYLIGHT", "BYDAY=2SU;BYMONTH=3", dt.time(2), -5 * H, -4 * H),
                ("STANDARD", "BYDAY=1SU;BYMONTH=11", dt.time(2), -4 * H, -5 * H),
            ],
        ),
        (
            "America/Los_Angeles",
            [
                ("DAYLIGHT", "BYDAY=2SU;BYMONTH=3", dt.time(2), -8 * H, -7 * H),
                ("STANDARD", "BYDAY=1SU;BYMONTH=11", dt.time(2), -7 * H, -8 * H),
            ],
        ),
        (
            "Australia/Sydney",
            [
                ("STANDARD", "BYDAY=1SU;BYMONTH=4", dt.time(3), 11 * H, 10 * H),
                ("DAYLIGHT", "BYDAY=1SU;BYMONTH=10", dt.time(2), 10 * H, 11 * H),
            ],
        ),
    ],
)
def test_dst_zones_get_the_yearly_rules_google_and_outlook_write(zone, expected):
    got = observances(zone)
    assert [
        (
            o["kind"],
            str(o["rule"]).removeprefix("FREQ=YEARLY;"),
            o["start"].time(),
            o["from"],
            o["to"],
        )
        for o in got
    ] == expected
    for o in got:
        # Derived from the transitions around the series; a rule that held all along is
        # written from 1970, as Google and Outlook write theirs.
        assert o["start"].year == 1970


def test_a_zone_without_dst_gets_one_standard_observance():
    assert observances("Asia/Tokyo") == [
        {
            "kind": "STANDARD",
            "start": dt.datetime(1970, 1, 1),
            "from": 9 * H,
            "to": 9 * H,
            "rule": None,
        }
    ]


def test_a_zone_whose_rules_changed_keeps_the_old_rule_with_until():
    # Mexico abolished DST in October 2022: the old rule ends (UNTIL), standard time stays.
    got = observances("America/Mexico_City", 2022)
    daylight = [o for o in got if o["kind"] == "DAYLIGHT"]
    assert daylight and all("UNTIL=" in str(o["rule"]) for o in daylight)
    last = max(got, key=lambda o: o["start"])
    assert last["kind"] == "STANDARD" and last["to"] == -6 * H


# Zones with unusual rules: negative DST (Dublin), 30-minute DST (Lord Howe), +12:45
# (Chatham), rules changed or abolished recently (Mexico City 2022, Nuuk 2023, Tehran 2022,
# Cairo 2023), Ramadan suspensions without any yearly rule (Casablanca), Gaza's predictions.
TRICKY = [
    ("Europe/Dublin", 2026),
    ("Australia/Lord_Howe", 2026),
    ("Pacific/Chatham", 2026),
    ("America/Mexico_City", 2022),
    ("America/Nuuk", 2023),
    ("Asia/Tehran", 2022),
    ("Africa/Cairo", 2023),
    ("Africa/Casablanca", 2026),
    ("Asia/Gaza", 2026),
    ("America/Santiago", 2026),
    ("America/Sao_Paulo", 2019),
]


@pytest.mark.parametrize(("zone", "year"), [(z, 2026) for z in ZONES] + TRICKY)
def test_vtimezone_gives_the_real_offset_at_every_moment(zone, year):
    """Read back by icalendar's own VTIMEZONE reader (not its zoneinfo shortcut), our zone
    agrees with zoneinfo twice a day and at every transition for ten years."""
    component = vtimezone(zone, (dt.datetime(year, 1, 1), dt.datetime(year, 12, 31)))
    ours = component.to_tz(lookup_tzid=False)
    real = ZoneInfo(zone)
    start = dt.datetime(year, 1, 1, tzinfo=UTC)
    end = dt.datetime(year + 10, 1, 1, tzinfo=UTC)
    moments = [start + dt.timedelta(hours=13 * i) for i in range(int((end - start) / (13 * H)))]
    for t in transitions(real, start, end):
        before = dt.timedelta(seconds=1)
        if not t.daylight and not (t.at - before).astimezone(real).dst():
            # A change of the standard offset itself (Nuuk 2023): dateutil's reader converts
            # from UTC with the default tzinfo.fromutc, which is off within one jump of such
            # a change, so the moment before it is checked one jump earlier.
            before += abs(t.offset_to - t.offset_from)
        moments += [t.at - before, t.at, t.at + dt.timedelta(minutes=1)]
    wrong = [
        (m, m.astimezone(real).utcoffset(), m.astimezone(ours).utcoffset())
        for m in moments
        if m.astimezone(real).utcoffset() != m.astimezone(ours).utcoffset()
    ]
    assert wrong == []
    assert "RDATE" not in component.to_ical().decode()


# --- every .ics we write ---------------------------------------------------------------------


def moved_and_cancelled(zone: str) -> tuple[OccurrenceOverride, ...]:
    tz = ZoneInfo(zone)
    original = dt.datetime(2026, 4, 13, 10, tzinfo=tz).astimezone(UTC)
    new = dt.datetime(2026, 4, 15, 15, tzinfo=tz).astimezone(UTC)
    dropped = dt.datetime(2026, 7, 6, 10, tzinfo=tz).astimezone(UTC)
    return (
        OccurrenceOverride(original, new, new + dt.timedelta(minutes=30)),
        OccurrenceOverride(dropped, dropped, dropped + dt.timedelta(minutes=30), cancelled=True),
    )


def written(tmp_path: Path, zone: str = "Europe/Berlin") -> dict[str, bytes]:
    event = weekly(zone, sequence=2, overrides=moved_and_cancelled(zone))
    calendar = LocalCalendar(tmp_path / "calendars")
    calendar.write_series(event, stamp=STAMP)
    tokyo = weekly("Asia/Tokyo", start=dt.datetime(2026, 1, 6, 9), uid="checkin-1-4-5")
    calendar.write_series(tokyo, stamp=STAMP)
    rid = dt.datetime(2026, 3, 2, 10, tzinfo=ZoneInfo(zone)).astimezone(UTC)
    return {
        "local file": calendar.path_for("boss@acme.test").read_bytes(),
        "REQUEST": imip_request(event, STAMP, ORGANIZER),
        "CANCEL series": imip_cancel(weekly(zone, sequence=3, cancelled=True), STAMP, ORGANIZER),
        "CANCEL occurrence": imip_cancel(weekly(zone, sequence=3), STAMP, ORGANIZER, rid),
    }


TIME_LINE = re.compile(r"^(DTSTART|DTEND|RECURRENCE-ID|EXDATE)([;:][^\r\n]*)$", re.MULTILINE)


def test_every_ics_we_write_is_valid_and_self_contained(tmp_path):
    for name, data in written(tmp_path).items():
        text = data.decode("utf-8")
        # CRLF line ends, folded at 75 octets.
        assert data.count(b"\n") == data.count(b"\r\n"), name
        assert max(len(line) for line in data.split(b"\r\n")) <= 75, name
        cal = icalendar.Calendar.from_ical(data)
        assert str(cal["version"]) == "2.0" and "prodid" in cal
        assert vobject.readOne(text).validate(raiseException=True), name
        unfolded = re.sub(r"\r\n[ \t]", "", text)
        # Every TZID has its VTIMEZONE, and no VTIMEZONE is an RDATE list.
        used = set(re.findall(r";TZID=([^;:]+)", unfolded))
        zones = {str(tz["tzid"]) for tz in cal.walk("VTIMEZONE")}
        assert used and used <= zones, name
        assert "RDATE" not in unfolded, name
        # No floating times: a TZID or UTC ("Z") on every date-time of a VEVENT.
        for prop, rest in TIME_LINE.findall(unfolded):
            assert ";TZID=" in rest or rest.endswith("Z"), (name, prop, rest)
        for event in cal.walk("VEVENT"):
            assert str(event["uid"]) in ("checkin-1-2-3", "checkin-1-4-5")
            assert event.decoded("dtstamp") == STAMP
            assert event["x-microsoft-cdo-appt-sequence"] == str(event["sequence"])
            for attendee in event["attendee"]:
                assert {"CN", "ROLE", "PARTSTAT", "RSVP"} <= set(attendee.params)
                assert attendee.params["PARTSTAT"] == "NEEDS-ACTION"
        if name == "local file":
            assert "method" not in cal
            assert zones == {"Europe/Berlin", "Asia/Tokyo"}  # the manager's two series
        else:
            assert str(cal["method"]) == name.split()[0]
            (organizer,) = {str(e["organizer"]) for e in cal.walk("VEVENT")}
            assert organizer == "mailto:calendar@reply.example.com"


def test_the_local_file_replaces_old_rdate_zones(tmp_path):
    """Files written before (icalendar's add_missing_timezones) get RRULE zones on rewrite."""
    calendar = LocalCalendar(tmp_path)
    old = icalendar.Calendar()
    old.add("prodid", "-//old//EN")
    old.add("version", "2.0")
    other = icalendar.Event()
    other.add("uid", "other@example.com")
    other.add("dtstamp", STAMP)
    other.add("dtstart", dt.datetime(2026, 2, 3, 9, tzinfo=ZoneInfo("America/New_York")))
    old.add_component(other)
    old.add_missing_timezones()
    assert b"RDATE" in old.to_ical()
    calendar.path_for("ana@acme.test").write_bytes(old.to_ical())
    calendar.write_series(weekly("Europe/Berlin"), stamp=STAMP)
    data = calendar.path_for("ana@acme.test").read_bytes()
    cal = icalendar.Calendar.from_ical(data)
    assert b"RDATE" not in data
    assert sorted(str(tz["tzid"]) for tz in cal.walk("VTIMEZONE")) == [
        "America/New_York",
        "Europe/Berlin",
    ]
    assert sorted(str(e["uid"]) for e in cal.walk("VEVENT")) == [
        "checkin-1-2-3",
        "other@example.com",
    ]


def test_a_zone_that_is_not_iana_keeps_its_own_vtimezone():
    """A foreign event in a calendar file (an Outlook zone name) keeps the VTIMEZONE it came
    with; ours are added beside it."""
    data = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//x//EN\r\nBEGIN:VTIMEZONE\r\n"
        "TZID:W. Europe Standard Time\r\nBEGIN:STANDARD\r\nDTSTART:16010101T030000\r\n"
        "TZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n"
        "BEGIN:VEVENT\r\nUID:x@example.com\r\nDTSTAMP:20260101T000000Z\r\n"
        "DTSTART;TZID=W. Europe Standard Time:20260301T100000\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    cal = icalendar.Calendar.from_ical(data)
    for comp in series_calendar(weekly("Asia/Tokyo"), STAMP).walk("VEVENT"):
        cal.add_component(comp)
    with_timezones(cal)
    assert sorted(str(tz["tzid"]) for tz in cal.walk("VTIMEZONE")) == [
        "Asia/Tokyo",
        "W. Europe Standard Time",
    ]


def test_the_mime_method_equals_the_method_inside(tmp_path):
    for name, data in written(tmp_path).items():
        if name == "local file":
            continue
        method = name.split()[0]
        raw = build_message(
            Rendered("Invitation", "Hi\n", "<p>Hi</p>\n"),
            sender="Check-ins <checkins@example.com>",
            to=["Ana Souza <ana@acme.test>"],
            message_id="<abc@example.com>",
            date=STAMP,
            calendar=(method, data),
        )
        assert raw == build_message(  # byte-deterministic, like every other message
            Rendered("Invitation", "Hi\n", "<p>Hi</p>\n"),
            sender="Check-ins <checkins@example.com>",
            to=["Ana Souza <ana@acme.test>"],
            message_id="<abc@example.com>",
            date=STAMP,
            calendar=(method, data),
        )
        assert f"Content-Type: text/calendar; method={method}; charset=UTF-8".encode() in raw
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert msg.get_content_type() == "multipart/alternative"
        parts = list(msg.iter_parts())
        assert [p.get_content_type() for p in parts] == ["text/plain", "text/html", "text/calendar"]
        part = parts[2]
        assert part.get_param("method") == method
        assert part.get_content_charset() == "utf-8"
        assert part.get_payload(decode=True) == data  # the .ics bytes, CRLF and folding intact
        inside = icalendar.Calendar.from_ical(part.get_payload(decode=True))
        assert str(inside["method"]) == method
    with pytest.raises(ValueError, match="METHOD"):
        build_message(
            Rendered("s", "t", "h"),
            sender="a@example.com",
            to=["b@example.com"],
            message_id="<x@example.com>",
            date=STAMP,
            calendar=("CANCEL", written(tmp_path / "again")["REQUEST"]),
        )


def test_a_reschedule_keeps_the_uid_bumps_sequence_and_refreshes_dtstamp():
    first = icalendar.Calendar.from_ical(imip_request(weekly("Europe/Berlin"), STAMP, ORGANIZER))
    later = STAMP + dt.timedelta(days=9)
    moved = weekly("Europe/Berlin", sequence=1, start=dt.datetime(2026, 1, 6, 14, 0))
    second = icalendar.Calendar.from_ical(imip_request(moved, later, ORGANIZER))
    (a,), (b,) = list(first.walk("VEVENT")), list(second.walk("VEVENT"))
    assert str(a["uid"]) == str(b["uid"])
    assert (a["sequence"], b["sequence"]) == (0, 1)
    assert str(b["x-microsoft-cdo-appt-sequence"]) == "1"
    assert a.decoded("dtstamp") == STAMP and b.decoded("dtstamp") == later
    assert b.decoded("dtstamp").tzinfo is not None and b["dtstamp"].to_ical().endswith(b"Z")
    assert b.decoded("dtstart") == dt.datetime(2026, 1, 6, 14, tzinfo=ZoneInfo("Europe/Berlin"))


def test_a_one_occurrence_cancel_carries_its_recurrence_id():
    berlin = ZoneInfo("Europe/Berlin")
    rid = dt.datetime(2026, 4, 6, 10, tzinfo=berlin).astimezone(UTC)  # after the DST change
    cal = icalendar.Calendar.from_ical(
        imip_cancel(weekly("Europe/Berlin", sequence=4), STAMP, ORGANIZER, rid)
    )
    assert str(cal["method"]) == "CANCEL"
    (event,) = list(cal.walk("VEVENT"))
    assert event.decoded("recurrence-id") == rid
    assert event.decoded("recurrence-id").tzinfo.key == "Europe/Berlin"
    assert event.decoded("dtstart") == rid
    assert str(event["status"]) == "CANCELLED" and event["sequence"] == 4
    assert "rrule" not in event
    assert {str(a) for a in event["attendee"]} == {"mailto:ana@acme.test", "mailto:boss@acme.test"}
    # A moved occurrence is cancelled where it is now.
    overrides = moved_and_cancelled("Europe/Berlin")
    moved = weekly("Europe/Berlin", sequence=5, overrides=overrides)
    cal = icalendar.Calendar.from_ical(
        imip_cancel(moved, STAMP, ORGANIZER, overrides[0].recurrence_id)
    )
    (event,) = list(cal.walk("VEVENT"))
    assert event.decoded("dtstart") == overrides[0].start
    with pytest.raises(ValueError, match="not an occurrence"):
        imip_cancel(weekly("Europe/Berlin"), STAMP, ORGANIZER, rid + dt.timedelta(hours=1))


def test_the_whole_series_cancel():
    data = imip_cancel(weekly("Europe/Berlin", sequence=3, cancelled=True), STAMP, ORGANIZER)
    cal = icalendar.Calendar.from_ical(data)
    (event,) = list(cal.walk("VEVENT"))
    assert str(cal["method"]) == "CANCEL" and str(event["status"]) == "CANCELLED"
    assert event["sequence"] == 3 and "recurrence-id" not in event
    assert str(event["uid"]) == "checkin-1-2-3"


# --- replies -------------------------------------------------------------------------------


def reply_ics(*vevents: str, method: str = "REPLY") -> bytes:
    body = "".join(f"BEGIN:VEVENT\r\n{v.strip()}\r\nEND:VEVENT\r\n" for v in vevents)
    return (
        f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Test//EN\r\nMETHOD:{method}\r\n{body}"
        "END:VCALENDAR\r\n"
    ).encode()


ANA_ACCEPTS = (
    "UID:checkin-1-2-3\r\nDTSTAMP:20260105T080000Z\r\nSEQUENCE:2\r\n"
    "ATTENDEE;PARTSTAT=ACCEPTED;CN=Ana Souza:MAILTO:Ana@Acme.test"
)


def test_a_reply_without_organizer_is_read():
    reply = parse_imip_reply(reply_ics(ANA_ACCEPTS))
    assert reply.uid == "checkin-1-2-3"
    assert reply.attendee == "ana@acme.test" and reply.partstat == "ACCEPTED"
    assert reply.sequence == 2 and reply.recurrence_id is None
    assert reply.dtstamp == dt.datetime(2026, 1, 5, 8, tzinfo=UTC)


def test_an_outlook_reply_for_one_occurrence_with_a_windows_zone():
    vtimezone_text = (
        "BEGIN:VTIMEZONE\r\nTZID:W. Europe Standard Time\r\nBEGIN:STANDARD\r\n"
        "DTSTART:16010101T030000\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\n"
        "RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=10\r\nEND:STANDARD\r\n"
        "BEGIN:DAYLIGHT\r\nDTSTART:16010101T020000\r\nTZOFFSETFROM:+0100\r\n"
        "TZOFFSETTO:+0200\r\nRRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=3\r\n"
        "END:DAYLIGHT\r\nEND:VTIMEZONE\r\n"
    )
    data = reply_ics(
        ANA_ACCEPTS.replace("ACCEPTED", "DECLINED")
        + "\r\nRECURRENCE-ID;TZID=W. Europe Standard Time:20260413T100000"
        + "\r\nORGANIZER;CN=Bea Boss:mailto:calendar@reply.example.com"
    ).replace(b"METHOD:REPLY\r\n", b"METHOD:REPLY\r\n" + vtimezone_text.encode())
    reply = parse_imip_reply(data)
    assert reply.partstat == "DECLINED"
    assert reply.recurrence_id == dt.datetime(2026, 4, 13, 8, tzinfo=UTC)


def test_one_messages_zone_never_shifts_anothers_times():
    """icalendar keeps the first definition of a zone name it sees for the whole process;
    each REPLY is read with its own VTIMEZONE instead."""

    def with_zone(offset: str) -> bytes:
        zone = (
            "BEGIN:VTIMEZONE\r\nTZID:Custom Zone\r\nBEGIN:STANDARD\r\n"
            f"DTSTART:19700101T000000\r\nTZOFFSETFROM:{offset}\r\nTZOFFSETTO:{offset}\r\n"
            "END:STANDARD\r\nEND:VTIMEZONE\r\n"
        )
        return reply_ics(
            ANA_ACCEPTS + "\r\nRECURRENCE-ID;TZID=Custom Zone:20260413T100000"
        ).replace(b"METHOD:REPLY\r\n", b"METHOD:REPLY\r\n" + zone.encode())

    icalendar.Calendar.from_ical(with_zone("+0500"))  # the process has now seen the name
    assert parse_imip_reply(with_zone("+0500")).recurrence_id == dt.datetime(
        2026, 4, 13, 5, tzinfo=UTC
    )
    assert parse_imip_reply(with_zone("-0300")).recurrence_id == dt.datetime(
        2026, 4, 13, 13, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (reply_ics(ANA_ACCEPTS, method="REQUEST"), "METHOD is REQUEST"),
        (reply_ics(ANA_ACCEPTS).replace(b"METHOD:REPLY\r\n", b""), "METHOD is missing"),
        (
            reply_ics(ANA_ACCEPTS + "\r\nATTENDEE;PARTSTAT=ACCEPTED:mailto:boss@acme.test"),
            "exactly one ATTENDEE",
        ),
        (reply_ics("UID:checkin-1-2-3\r\nDTSTAMP:20260105T080000Z"), "exactly one ATTENDEE"),
        (reply_ics(ANA_ACCEPTS.replace("PARTSTAT=ACCEPTED;", "")), "PARTSTAT"),
        (reply_ics(ANA_ACCEPTS + "\r\nRECURRENCE-ID:20260413T100000"), "floating time"),
        (b"not a calendar", "not an iCalendar"),
        (
            reply_ics(ANA_ACCEPTS, ANA_ACCEPTS.replace("Ana@Acme.test", "boss@acme.test")),
            "one UID and one attendee",
        ),
    ],
)
def test_anything_but_a_reply_with_one_attendee_is_refused(data, reason):
    with pytest.raises(ImipError, match=reason):
        parse_imip_reply(data)


def test_a_reply_for_the_series_and_an_occurrence_gives_two_answers():
    data = reply_ics(
        ANA_ACCEPTS,
        ANA_ACCEPTS.replace("ACCEPTED", "DECLINED") + "\r\nRECURRENCE-ID:20260413T080000Z",
    )
    series, occurrence = parse_imip_replies(data)
    assert (series.partstat, series.recurrence_id) == ("ACCEPTED", None)
    assert occurrence.recurrence_id == dt.datetime(2026, 4, 13, 8, tzinfo=UTC)
    with pytest.raises(ImipError, match="one VEVENT"):
        parse_imip_reply(data)


# --- wall-clock time across DST, read by three independent parsers --------------------------


@pytest.mark.parametrize("zone", ZONES)
def test_python_readers_keep_10am_across_dst(zone):
    truth = local_mondays_at_10(zone)
    offsets = {t.astimezone(ZoneInfo(zone)).utcoffset() for t in truth}
    assert len(offsets) == (1 if zone == "Asia/Tokyo" else 2)  # the year does cross DST
    data = series_calendar(weekly(zone), STAMP).to_ical()
    for variant in (data, renamed(data)):  # zoneinfo's view, then our VTIMEZONE's
        assert [start for _, start in python_starts(variant)] == truth
    # vobject reads the VTIMEZONE itself too.
    vevent = vobject.readOne(data.decode()).vevent
    assert [
        t.astimezone(UTC)
        for t in vevent.getrruleset(addRDate=True).between(YEAR_FROM, YEAR_TO, inc=True)
    ] == truth


def test_python_readers_see_a_moved_and_a_cancelled_occurrence():
    zone = "Europe/Berlin"
    moved, dropped = moved_and_cancelled(zone)
    data = series_calendar(weekly(zone, overrides=(moved, dropped)), STAMP).to_ical()
    for variant in (data, renamed(data)):
        starts = dict(python_starts(variant))
        assert starts[moved.recurrence_id] == moved.start
        assert moved.recurrence_id not in starts.values()
        assert dropped.recurrence_id not in starts
        assert len(starts) == len(local_mondays_at_10(zone)) - 1


def node_oracle() -> list[str]:
    """The command that runs tests/js/expand.mjs, installing ical.js first if needed."""

    def unavailable(reason: str) -> None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true requires the ical.js oracle")
        pytest.skip(f"{reason}; install node 20+ and npm to run the ical.js checks")

    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node or npm is not on PATH")
    assert node is not None and npm is not None
    installed = JS / "node_modules" / "ical.js" / "package.json"
    if not installed.exists():
        done = subprocess.run(
            [npm, "ci", "--prefix", str(JS), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            unavailable(f"npm ci --prefix tests/js failed: {done.stderr.strip()[-400:]}")
    assert json.loads(installed.read_text())["version"] == "2.2.1"
    return [node, str(JS / "expand.mjs")]


def icaljs(tmp_path: Path, data: bytes, zone: str) -> list[dict[str, str]]:
    path = tmp_path / f"{zone.replace('/', '_')}.ics"
    path.write_bytes(data)
    done = subprocess.run(
        [*node_oracle(), str(path), zone, "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("zone", ZONES)
def test_icaljs_keeps_10am_across_dst(tmp_path, zone):
    truth = local_mondays_at_10(zone)
    out = icaljs(tmp_path, imip_request(weekly(zone), STAMP, ORGANIZER), zone)
    # ical.js's own UTC arithmetic must land on the real instants (checked with zoneinfo).
    assert [instant(o["start_utc"]) for o in out] == truth
    assert {o["start_local"][11:] for o in out} == {"10:00:00"}


def test_icaljs_sees_a_moved_and_a_cancelled_occurrence(tmp_path):
    zone = "Europe/Berlin"
    moved, dropped = moved_and_cancelled(zone)
    data = imip_request(weekly(zone, sequence=1, overrides=(moved, dropped)), STAMP, ORGANIZER)
    out = icaljs(tmp_path, data, zone)
    by_rid = {instant(o["recurrence_id"]): o for o in out}
    assert instant(by_rid[moved.recurrence_id]["start_utc"]) == moved.start
    assert by_rid[moved.recurrence_id]["start_local"] == "2026-04-15T15:00:00"
    assert dropped.recurrence_id not in by_rid
    assert len(out) == len(local_mondays_at_10(zone)) - 1


def test_icaljs_oracle_catches_an_rdate_zone(tmp_path):
    """The control: the RDATE-list zone icalendar's add_missing_timezones() writes is misread
    by ical.js 2.2.1 (no DST), so the oracle above would catch such a regression."""
    zone = "Europe/Berlin"
    cal = series_calendar(weekly(zone), STAMP, "REQUEST")
    cal.subcomponents = [c for c in cal.subcomponents if c.name != "VTIMEZONE"]
    cal.add_missing_timezones()
    assert b"RDATE" in cal.to_ical()
    out = icaljs(tmp_path, cal.to_ical(), zone)
    wrong = [
        o
        for o, t in zip(out, local_mondays_at_10(zone), strict=True)
        if instant(o["start_utc"]) != t
    ]
    assert wrong, "ical.js read the RDATE zone right: the control no longer shows the bug"
    assert all(instant(o["start_utc"]).month in range(3, 11) for o in wrong)  # the summer


WRITER = """
import sys, time
from pathlib import Path
from automation.adapters.local import LocalCalendar
from tests.test_ical import weekly
folder, who, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
Path(sys.argv[4]).touch()
while not Path(sys.argv[5]).exists():
    time.sleep(0.001)
calendar = LocalCalendar(folder)
for i in range(n):
    calendar.write_series(weekly("Europe/Berlin", uid=f"checkin-{who}-{i}"))
"""


def test_writers_in_two_processes_keep_every_series_in_a_shared_file(tmp_path):
    """Two worker processes write series with the same organizer at the same moment: each
    read-modify-write of boss@acme.test.ics holds the file's lock, so none of them is lost
    (with only a lock per process, some went missing: the tasks were done, nothing retried)."""
    folder, go = tmp_path / "calendars", tmp_path / "go"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder), who, "40", str(tmp_path / who), str(go)],
            cwd=PROJECT_ROOT,
        )
        for who in ("a", "b")
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / who).exists() for who in ("a", "b")):
        assert time.monotonic() < deadline, "the writers did not start"
        time.sleep(0.05)
    go.touch()  # both start writing at once
    assert [w.wait(120) for w in writers] == [0, 0]
    cal = icalendar.Calendar.from_ical(
        LocalCalendar(folder).path_for("boss@acme.test").read_bytes()
    )
    uids = sorted(str(c.get("uid")) for c in cal.walk("VEVENT"))
    assert uids == sorted(f"checkin-{who}-{i}" for who in ("a", "b") for i in range(40))
