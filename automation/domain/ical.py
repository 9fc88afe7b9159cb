"""iCalendar (RFC 5545) and iMIP (RFC 5546, RFC 6047) for check-in series. Pure: no I/O, no clock.

Every .ics the product writes goes through :func:`series_calendar`: the calendar files of the
embedded provider (no METHOD) and the invites sent by email (:func:`imip_request`,
:func:`imip_cancel`). Inbound answers come back through :func:`parse_imip_replies`.

Time zones. Each TZID used gets a VTIMEZONE built by :func:`vtimezone` from the IANA database
(``zoneinfo``) as yearly RRULE-based STANDARD/DAYLIGHT observances, the form Google and
Outlook emit: the rules are *derived* from the zone's real transitions in the years around the
series (month, n-th or last weekday, local time), not hard-coded. A long list of RDATEs (what
``icalendar``'s ``add_missing_timezones()`` writes) is misread by Outlook desktop and by ical.js
2.2.1, which then applies no DST at all.

Identity and ordering (RFC 5546): the UID never changes for the life of a series; SEQUENCE is
the caller's (it rises on every change of time, rule or status) and is mirrored in
``X-MICROSOFT-CDO-APPT-SEQUENCE``; DTSTAMP is the caller's ``stamp`` (UTC, fresh per send).
``icalendar`` writes CRLF line ends and folds lines at 75 octets.
"""

from __future__ import annotations

import calendar as stdcal
import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo

import icalendar
from dateutil.rrule import rrulestr

from automation.domain.cadence import localize, zone
from automation.ports import (
    ACCEPTED,
    DECLINED,
    NEEDS_ACTION,
    TENTATIVE,
    Attendee,
    SeriesEvent,
)

PRODID = "-//checkin-automation//checkin-automation//EN"
REQUEST, CANCEL, REPLY = "REQUEST", "CANCEL", "REPLY"
# PARTSTAT values a REPLY may carry for a VEVENT (RFC 5545 §3.2.12).
PARTSTATS = frozenset({ACCEPTED, DECLINED, TENTATIVE, NEEDS_ACTION, "DELEGATED"})
_WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
# Properties whose values may carry a TZID parameter.
_TIME_PROPERTIES = ("dtstart", "dtend", "due", "recurrence-id", "exdate", "rdate")


class ImipError(ValueError):
    """A calendar message that is not what it claims to be; the text says why."""


# --- VTIMEZONE -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """One change of a zone's UTC offset."""

    at: dt.datetime  # the UTC instant
    offset_from: dt.timedelta
    offset_to: dt.timedelta
    name: str  # the abbreviation after the change (TZNAME)
    daylight: bool  # the offset after the change is daylight-saving time

    @property
    def onset(self) -> dt.datetime:
        """The observance's DTSTART: local wall time in the offset before the change."""
        return (self.at + self.offset_from).replace(tzinfo=None)


def transitions(tz: ZoneInfo, start: dt.datetime, end: dt.datetime) -> list[Transition]:
    """Every offset change of ``tz`` between two UTC instants, to the second."""
    out: list[Transition] = []
    step = dt.timedelta(days=1)
    t = start.astimezone(dt.UTC)
    before = t.astimezone(tz).utcoffset()
    while t < end:
        nxt = min(t + step, end)
        after = nxt.astimezone(tz).utcoffset()
        if after != before:
            lo, hi = t, nxt  # the change lies in (lo, hi]: bisect to the second
            while hi - lo > dt.timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                mid = mid.replace(microsecond=0)
                if mid <= lo:
                    break
                if mid.astimezone(tz).utcoffset() == before:
                    lo = mid
                else:
                    hi = mid
            local, previous = hi.astimezone(tz), lo.astimezone(tz)
            assert before is not None and after is not None
            zero = dt.timedelta(0)
            # Daylight: into summer time, or out of a "negative DST" winter (Europe/Dublin),
            # so that the larger offset is the DAYLIGHT one, as Outlook and Google write it.
            daylight = (local.dst() or zero) > zero or (previous.dst() or zero) < zero
            out.append(Transition(hi, before, after, local.tzname() or "", daylight))
            before = after
        t = nxt
    return out


def _rule_candidates(onset: dt.datetime) -> set[tuple[str, int, str]]:
    """Yearly rule parts that would produce this onset's day of its month."""
    day, weekday = onset.day, _WEEKDAYS[onset.weekday()]
    length = stdcal.monthrange(onset.year, onset.month)[1]
    out = {
        ("nth", (day - 1) // 7 + 1, weekday),  # 2SU: the second Sunday
        ("nth", -((length - day) // 7 + 1), weekday),  # -1SU: the last Sunday
        ("day", day, ""),  # a fixed date
    }
    # "The first <weekday> on or after the s-th" (BYDAY + seven BYMONTHDAYs).
    out |= {("window", s, weekday) for s in range(max(1, day - 6), day + 1) if s + 6 <= length}
    return out


def _preference(candidate: tuple[str, int, str]) -> tuple[int, int]:
    kind, n, _ = candidate
    if kind == "nth" and n == -1:
        return (0, 0)
    if kind == "nth" and 1 <= n <= 4:
        return (1, n)
    if kind == "window":
        return (2, n)
    if kind == "day":
        return (3, n)
    return (4, abs(n))


def _rrule_part(candidate: tuple[str, int, str]) -> dict[str, object]:
    kind, n, weekday = candidate
    if kind == "nth":
        return {"BYDAY": f"{n}{weekday}"}
    if kind == "window":
        return {"BYDAY": weekday, "BYMONTHDAY": list(range(n, n + 7))}
    return {"BYMONTHDAY": n}


@dataclass
class _Run:
    """Yearly transitions of one kind that one RRULE describes."""

    first: Transition
    last: Transition
    rules: set[tuple[str, int, str]]
    count: int = 1

    @property
    def key(self) -> tuple[object, ...]:
        t = self.first
        return (t.daylight, t.offset_from, t.offset_to, t.name, t.onset.month, t.onset.time())


def _observance(
    daylight: bool,
    onset: dt.datetime,
    offset_from: dt.timedelta,
    offset_to: dt.timedelta,
    name: str,
) -> icalendar.Component:
    comp: icalendar.Component = (
        icalendar.TimezoneDaylight() if daylight else icalendar.TimezoneStandard()
    )
    comp.add("dtstart", onset)
    comp.add("tzoffsetfrom", offset_from)
    comp.add("tzoffsetto", offset_to)
    if name:
        comp.add("tzname", name)
    return comp


@lru_cache(maxsize=256)
def _vtimezone(tzid: str, first_year: int, last_year: int) -> bytes:
    tz = zone(tzid)
    start = dt.datetime(first_year, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(last_year + 1, 1, 1, tzinfo=dt.UTC)
    changes = transitions(tz, start, end)
    timezone = icalendar.Timezone()
    timezone.add("tzid", tzid)
    if not changes:
        # No change in the window (no DST, or none any more): one STANDARD observance.
        local = start.astimezone(tz)
        offset = local.utcoffset() or dt.timedelta(0)
        timezone.add_component(
            _observance(False, dt.datetime(1970, 1, 1), offset, offset, local.tzname() or "")
        )
        return timezone.to_ical()
    runs: list[_Run] = []
    open_runs: dict[tuple[object, ...], _Run] = {}
    for change in changes:
        run = _Run(change, change, _rule_candidates(change.onset))
        current = open_runs.get(run.key)
        if (
            current is not None
            and current.last.onset.year == change.onset.year - 1
            and current.rules & run.rules
        ):
            current.rules &= run.rules
            current.last = change
            current.count += 1
            continue
        runs.append(run)
        open_runs[run.key] = run
    # The offset in force before the first change of the window (the window starts a year
    # before the series, so this matters only for zones that changed rarely).
    local = start.astimezone(tz)
    offset = local.utcoffset() or dt.timedelta(0)
    prefix = changes[0].onset > dt.datetime(first_year + 1, 1, 1)
    if prefix:
        daylight = bool(local.dst() and local.dst() > dt.timedelta(0))  # type: ignore[operator]
        timezone.add_component(
            _observance(daylight, start.replace(tzinfo=None), offset, offset, local.tzname() or "")
        )
    # Rules that held over the whole window are written as Google and Outlook write them: in
    # force since 1970. A reader looking at earlier dates then still sees the rule; vobject
    # (and so Radicale) takes a zone for UTC when its offsets in 2000-2020 match UTC's.
    steady = not prefix and all(r.count > 1 and r.last.onset.year == last_year for r in runs)
    for run in runs:
        t = run.first
        onset = t.onset
        rule: dict[str, object] = {}
        if run.count > 1:
            rule = {"FREQ": "YEARLY", "BYMONTH": t.onset.month}
            rule.update(_rrule_part(min(run.rules, key=_preference)))
            if run.last.onset.year < last_year:
                # A rule no longer in force: UNTIL is UTC in a VTIMEZONE (RFC 5545 §3.6.5).
                # A day after the last onset, a year before the next: the same onsets
                # whether a reader compares UNTIL with UTC or (wrongly) with local time.
                rule["UNTIL"] = run.last.at + dt.timedelta(days=1)
            if steady:
                text = icalendar.vRecur(rule).to_ical().decode()
                since = dt.datetime.combine(dt.date(1970, 1, 1), onset.time())
                onset = rrulestr(text, dtstart=since)[0]
        comp = _observance(t.daylight, onset, t.offset_from, t.offset_to, t.name)
        if rule:
            comp.add("rrule", rule)
        timezone.add_component(comp)
    return timezone.to_ical()


def vtimezone(tzid: str, around: tuple[dt.datetime, dt.datetime]) -> icalendar.Timezone:
    """The VTIMEZONE of an IANA zone as RRULE-based STANDARD/DAYLIGHT observances.

    The rules are read from the zone's transitions from the year before ``around[0]`` to two
    years after ``around[1]`` (twelve years at least, so that a rule such as "the last
    Sunday" is told apart from "the fourth Sunday"). A rule still in force at the end has no
    UNTIL (it runs on for the rest of the series), one that stopped gets UNTIL, and a one-off
    change its own observance. Rules unchanged over the whole window start in 1970, as
    Google's and Outlook's do. Zones without DST get one STANDARD observance.
    """
    first = min(around[0].year, around[1].year) - 1
    # A dozen years at least: enough to tell "the last Sunday" from "the 4th Sunday".
    last = max(around[0].year + 2, around[1].year + 2, first + 12)
    return icalendar.Timezone.from_ical(_vtimezone(tzid, first, last))  # type: ignore[return-value]


def _tzid_of(value: object) -> tuple[str | None, list[dt.datetime]]:
    """The TZID and the datetimes of one property value (a vDDDTypes or a vDDDLists)."""
    params = getattr(value, "params", {}) or {}
    dts = getattr(value, "dts", None)
    times = [d.dt for d in dts] if dts is not None else [getattr(value, "dt", None)]
    tzid = params.get("TZID")
    found = [t for t in times if isinstance(t, dt.datetime)]
    if tzid is None:
        zoned = [t for t in found if isinstance(t.tzinfo, ZoneInfo) and t.tzinfo.key != "UTC"]
        if zoned:
            tzid = zoned[0].tzinfo.key  # type: ignore[union-attr]
    return (str(tzid) if tzid else None), found


def timezones_for(
    components: Iterable[icalendar.Component],
    known: dict[str, icalendar.Timezone] | None = None,
) -> list[icalendar.Timezone]:
    """A VTIMEZONE for every TZID the components use, sorted by TZID. A TZID that is not an
    IANA zone keeps its VTIMEZONE from ``known`` (the calendar's own), if it has one."""
    spans: dict[str, list[dt.datetime]] = {}
    for comp in components:
        for name in _TIME_PROPERTIES:
            values = comp.get(name)
            if values is None:
                continue
            for value in values if isinstance(values, list) else [values]:
                tzid, times = _tzid_of(value)
                if tzid and times:
                    spans.setdefault(tzid, []).extend(t.replace(tzinfo=None) for t in times)
    out = []
    for tzid, times in sorted(spans.items()):
        try:
            out.append(vtimezone(tzid, (min(times), max(times))))
        except ValueError:  # not an IANA name (e.g. "W. Europe Standard Time")
            if known and tzid in known:
                out.append(known[tzid])
    return out


def with_timezones(cal: icalendar.Calendar) -> icalendar.Calendar:
    """Replace the calendar's VTIMEZONEs by RRULE-based ones for every TZID it uses."""
    known = {str(c.get("tzid")): c for c in cal.subcomponents if c.name == "VTIMEZONE"}
    others = [c for c in cal.subcomponents if c.name != "VTIMEZONE"]
    cal.subcomponents = [*timezones_for(others, known), *others]
    return cal


# --- series ----------------------------------------------------------------------------------


def _address(person: Attendee, **params: str) -> icalendar.vCalAddress:
    address = icalendar.vCalAddress(f"mailto:{person.email}")
    address.params.update({"cn": person.name, **params})
    return address


def _common(
    comp: icalendar.Event, event: SeriesEvent, stamp: dt.datetime, organizer: Attendee
) -> None:
    comp.add("uid", event.uid)
    comp.add("sequence", event.sequence)
    comp.add("x-microsoft-cdo-appt-sequence", str(event.sequence))
    comp.add("dtstamp", stamp.astimezone(dt.UTC))
    comp.add("summary", event.summary)
    comp.add("description", event.description)
    comp.add("organizer", _address(organizer))
    for person in event.attendees:
        comp.add(
            "attendee",
            _address(person, role="REQ-PARTICIPANT", partstat=NEEDS_ACTION, rsvp="TRUE"),
        )


def series_components(
    event: SeriesEvent, stamp: dt.datetime, organizer: Attendee | None = None
) -> list[icalendar.Event]:
    """The master VEVENT (RRULE, an EXDATE per cancelled instance) plus one VEVENT with
    RECURRENCE-ID per moved instance, per RFC 5545. ``organizer`` replaces the event's own
    (iMIP: a mailbox of ours that receives the replies)."""
    tz = zone(event.timezone)
    start = localize(event.dtstart_local, tz)
    organizer = organizer or event.organizer
    master = icalendar.Event()
    _common(master, event, stamp, organizer)
    master.add("dtstart", start)
    master.add("dtend", start + dt.timedelta(minutes=event.duration_minutes))
    master.add("rrule", icalendar.vRecur.from_ical(event.rrule))
    master.add("status", "CANCELLED" if event.cancelled else "CONFIRMED")
    moved = []
    for o in sorted(event.overrides, key=lambda o: o.recurrence_id):
        original = o.recurrence_id.astimezone(tz)
        if o.cancelled:
            master.add("exdate", original)
            continue
        instance = icalendar.Event()
        _common(instance, event, stamp, organizer)
        instance.add("recurrence-id", original)
        instance.add("dtstart", o.start.astimezone(tz))
        instance.add("dtend", o.end.astimezone(tz))
        instance.add("status", "CANCELLED" if event.cancelled else "CONFIRMED")
        moved.append(instance)
    return [master, *moved]


def _calendar(method: str | None, components: Sequence[icalendar.Component]) -> icalendar.Calendar:
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    if method:
        cal.add("method", method)
    for comp in [*timezones_for(components), *components]:
        cal.add_component(comp)
    return cal


def series_calendar(
    event: SeriesEvent,
    stamp: dt.datetime,
    method: str | None = None,
    *,
    organizer: Attendee | None = None,
) -> icalendar.Calendar:
    """The whole series as one calendar: PRODID, VERSION, METHOD when given (iMIP), the
    VTIMEZONE of its zone and the VEVENTs of :func:`series_components`."""
    return _calendar(method, series_components(event, stamp, organizer))


def imip_request(event: SeriesEvent, stamp: dt.datetime, organizer: Attendee) -> bytes:
    """A METHOD:REQUEST invite for the whole series, with its moved and cancelled instances."""
    return series_calendar(event, stamp, REQUEST, organizer=organizer).to_ical()


def _is_instance(event: SeriesEvent, original: dt.datetime) -> bool:
    tz = zone(event.timezone)
    local = original.astimezone(tz).replace(tzinfo=None)
    rule = rrulestr(event.rrule, dtstart=event.dtstart_local)
    return any(localize(s, tz) == original for s in rule.between(local, local, inc=True))


def imip_cancel(
    event: SeriesEvent,
    stamp: dt.datetime,
    organizer: Attendee,
    recurrence_id: dt.datetime | None = None,
) -> bytes:
    """A METHOD:CANCEL for the whole series, or with ``recurrence_id`` (the UTC original
    start) for one occurrence. Same UID, STATUS:CANCELLED, the attendees, and the SEQUENCE
    of ``event``: the caller raises it before cancelling (RFC 5546 §3.2.5)."""
    tz = zone(event.timezone)
    comp = icalendar.Event()
    _common(comp, event, stamp, organizer)
    if recurrence_id is None:
        start = localize(event.dtstart_local, tz)
        comp.add("dtstart", start)
        comp.add("dtend", start + dt.timedelta(minutes=event.duration_minutes))
        comp.add("rrule", icalendar.vRecur.from_ical(event.rrule))
    else:
        if recurrence_id.tzinfo is None:
            raise ValueError("recurrence_id must be an aware (UTC) datetime")
        original = recurrence_id.astimezone(tz)
        moved = {o.recurrence_id: o for o in event.overrides}.get(recurrence_id)
        if moved is None and not _is_instance(event, recurrence_id):
            raise ValueError(f"{recurrence_id.isoformat()} is not an occurrence of {event.uid}")
        start = moved.start.astimezone(tz) if moved else original
        end = (
            moved.end.astimezone(tz)
            if moved
            else original + dt.timedelta(minutes=event.duration_minutes)
        )
        comp.add("recurrence-id", original)
        comp.add("dtstart", start)
        comp.add("dtend", end)
    comp.add("status", "CANCELLED")
    return _calendar(CANCEL, [comp]).to_ical()


# --- replies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImipReply:
    """One attendee's answer to one of our invites (RFC 5546 §3.2.3)."""

    uid: str
    recurrence_id: dt.datetime | None  # UTC original start of one occurrence; None: the series
    attendee: str  # the answering attendee's address, lower-cased
    partstat: str  # ACCEPTED, DECLINED, TENTATIVE, DELEGATED or NEEDS-ACTION
    sequence: int  # the SEQUENCE of the invite answered (0 when missing)
    dtstamp: dt.datetime | None  # UTC; None when the client left it out


def _mailto(value: object) -> str:
    text = str(value).strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    return text.strip().lower()


def _utc(
    comp: icalendar.Component, name: str, zones: dict[str, icalendar.Timezone]
) -> dt.datetime | None:
    """A date-time property in UTC. A TZID is resolved with this calendar's own VTIMEZONE,
    else as an IANA name: ``icalendar`` keeps the first definition it ever saw of a zone
    name for the whole process, so one message could otherwise shift another's times."""
    prop = comp.get(name)
    if prop is None:
        return None
    label = name.upper()
    if isinstance(prop, list):
        raise ImipError(f"more than one {label}")
    value = getattr(prop, "dt", None)
    if not isinstance(value, dt.datetime):
        raise ImipError(f"{label} is a date, not a date-time")
    tzid = prop.params.get("TZID")
    if tzid:
        tzid = str(tzid).strip('"')
        if tzid in zones:
            try:
                tz: dt.tzinfo = zones[tzid].to_tz(lookup_tzid=False)
            except Exception as exc:
                raise ImipError(f"the VTIMEZONE {tzid!r} is unreadable: {exc}") from exc
        else:
            try:
                tz = ZoneInfo(tzid)
            except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
                raise ImipError(f"{label} has TZID {tzid!r} and no VTIMEZONE for it") from exc
        return value.replace(tzinfo=tz).astimezone(dt.UTC)
    if value.tzinfo is None:
        raise ImipError(f"{label} has no UTC time and no TZID (a floating time)")
    return value.astimezone(dt.UTC)


def _reply_of(comp: icalendar.Component, zones: dict[str, icalendar.Timezone]) -> ImipReply:
    uid = str(comp.get("uid", "")).strip()
    if not uid:
        raise ImipError("the VEVENT has no UID")
    attendees = comp.get("attendee")
    attendees = [] if attendees is None else attendees
    attendees = attendees if isinstance(attendees, list) else [attendees]
    if len(attendees) != 1:
        raise ImipError(f"a REPLY names exactly one ATTENDEE; this one names {len(attendees)}")
    (attendee,) = attendees
    address = _mailto(attendee)
    if "@" not in address:
        raise ImipError(f"the ATTENDEE {str(attendee)!r} is not a mailto: address")
    partstat = str(attendee.params.get("PARTSTAT", "")).upper()
    if partstat not in PARTSTATS:
        raise ImipError(f"the ATTENDEE has no valid PARTSTAT ({partstat or 'none'})")
    recurrence = comp.get("recurrence-id")
    if recurrence is not None and str(recurrence.params.get("RANGE", "")).upper():
        raise ImipError("RECURRENCE-ID with RANGE is not supported")
    try:
        sequence = int(str(comp.get("sequence", 0)))
    except ValueError as exc:
        raise ImipError(f"SEQUENCE is not a number: {exc}") from exc
    return ImipReply(
        uid=uid,
        recurrence_id=_utc(comp, "recurrence-id", zones),
        attendee=address,
        partstat=partstat,
        sequence=sequence,
        dtstamp=_utc(comp, "dtstamp", zones),
    )


def parse_imip_replies(data: bytes | str) -> tuple[ImipReply, ...]:
    """Every answer in a METHOD:REPLY calendar: one per VEVENT (a series, or a series with
    its instances), all for one UID and one attendee. ORGANIZER is not required (Outlook.com
    leaves it out). Raises :class:`ImipError` for anything else."""
    try:
        cal = icalendar.Calendar.from_ical(data)
    except Exception as exc:
        raise ImipError(f"not an iCalendar object: {exc}") from exc
    if not isinstance(cal, icalendar.Calendar):
        raise ImipError("not a VCALENDAR")
    try:
        method = str(cal.get("method", "")).strip().upper()
        if method != REPLY:
            raise ImipError(f"METHOD is {method or 'missing'}, not REPLY")
        events = list(cal.walk("VEVENT"))
        if not events:
            raise ImipError("the REPLY holds no VEVENT")
        zones = {str(tz.get("tzid", "")): tz for tz in cal.walk("VTIMEZONE")}
        replies = tuple(_reply_of(e, zones) for e in events)
    except ImipError:
        raise
    except Exception as exc:  # icalendar reads values lazily: a bad DTSTAMP raises here
        raise ImipError(f"unreadable calendar data ({type(exc).__name__}: {exc})"[:300]) from exc
    if len({(r.uid, r.attendee) for r in replies}) != 1:
        raise ImipError("a REPLY answers for one UID and one attendee")
    if len({r.recurrence_id for r in replies}) != len(replies):
        raise ImipError("a REPLY answers each occurrence once")
    return replies


def parse_imip_reply(data: bytes | str) -> ImipReply:
    """The answer of a METHOD:REPLY with one VEVENT and exactly one ATTENDEE."""
    replies = parse_imip_replies(data)
    if len(replies) != 1:
        raise ImipError(f"expected one VEVENT in the REPLY, found {len(replies)}")
    return replies[0]


_METHOD = re.compile(rb"^METHOD:(.*?)\r?$", re.MULTILINE | re.IGNORECASE)


def method_of(data: bytes) -> str | None:
    """The METHOD of a calendar object (top-level, unfolded lines suffice for METHOD)."""
    unfolded = re.sub(rb"\r?\n[ \t]", b"", data)
    found = _METHOD.search(unfolded)
    return found.group(1).strip().decode("ascii", "replace").upper() if found else None
