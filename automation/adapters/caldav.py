"""CalDAV calendars (RFC 4791), synced with RFC 6578 and polled: CalDAV has no push.

Layout on the server: one calendar collection per organizer (the manager), at
``caldav_url + caldav_calendar_path.format(email=organizer)``, and one resource per series,
``<quoted uid>.ics``, holding the master VEVENT (RRULE, EXDATEs for cancelled instances) and
one VEVENT per moved instance (RECURRENCE-ID), as RFC 4791 §4.1 asks: one UID per resource.
The collection is created with MKCALENDAR the first time a write finds it missing (and its
parent with MKCOL where the server, like Radicale, has no such folder yet); nothing is
created by reads, so a person without a collection simply has no events and no busy time.

Every HTTP call goes through :func:`automation.adapters.http.send` and one
:class:`~automation.adapters.http.Retry`, so 429/5xx back off and honour Retry-After like
every other provider. The ``caldav`` package builds the XML request bodies; its DAVClient
is not used for the calls themselves because it has its own session and no retry hook, so
its requests could be neither retried by the shared rules nor counted.

Writes (idempotent, RFC 7232 preconditions):

* create: ``PUT`` with ``If-None-Match: *``. A retry after a crash (or after a lost
  response) gets 412 and goes the update path, so there is never a second resource, and a
  resource of the same name written by someone else is never overwritten blindly;
* update: ``GET`` (body and ETag), then ``PUT`` with ``If-Match: <etag>``; on 412 (someone
  wrote in between) refetch and re-apply once more, then give up with a transient error so
  the task retries later. When the stored SEQUENCE equals ours (a replay, or a change that
  is not significant) the attendees' PARTSTATs and instance components added by other
  clients (a declined or moved occurrence) are carried over, so our write does not erase
  answers. A higher SEQUENCE is a significant change (RFC 5546) and starts fresh;
* cancel (``event.cancelled``): with ``caldav_schedules = false`` the resource is DELETEd
  (404/410 count as done): nobody but us reads it, and a removed resource is what clients
  show for a withdrawn meeting. With ``caldav_schedules = true`` it is kept with
  ``STATUS:CANCELLED`` and the event's (raised) SEQUENCE, because that is the change a
  scheduling server (RFC 6638) turns into iTIP CANCEL messages for the attendees, and the
  series stays visible as cancelled in the organizer's calendar;
* ``caldav_schedules = false`` also marks every ATTENDEE ``SCHEDULE-AGENT=CLIENT`` (RFC 6638
  §7.1), so a scheduling server (iCloud, Fastmail, Nextcloud) does not send invitations of
  its own: the invitations are then the service's job (iMIP).

Stored resources never carry METHOD (RFC 4791 §4.1).

Sync: ``REPORT sync-collection`` with the stored token, asking for ``getetag`` and
``calendar-data`` in the same report, so one request brings the changes and their data (an
unchanged calendar costs one request). Responses are parsed as a stream and handed to
``apply`` in chunks; resources the server lists without data are fetched with
``calendar-multiget`` in chunks. A 507 on the collection means the server paged the answer:
the report is repeated from the token it returned. A 403/409 ``DAV:valid-sync-token`` means
one full resync (``full_resync=True``); a second refusal raises. Servers without
sync-collection fall back to comparing ETags: ``PROPFIND Depth: 1`` for ``getetag``, with
the cursor a compact JSON object ``{href: etag}`` of our resources. That cursor grows with
the calendar (about 100 bytes per series: some 1 MB for 10,000 series) and is held in memory
while syncing; sync tokens stay a few dozen bytes.

Free/busy: ``REPORT free-busy-query`` (RFC 4791 §7.10) where the server has it; otherwise an
event scan (``calendar-query`` with a time range) expanded on the client with
recurring_ical_events (RRULE, EXDATE, RECURRENCE-ID), because server-side expansion is
unreliable (python-caldav#157). All-day events are busy (their floating dates read as UTC
days), TRANSP:TRANSPARENT and STATUS:CANCELLED are not.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast
from urllib.parse import quote, unquote, urljoin, urlsplit

import icalendar
import recurring_ical_events
import requests
from caldav.elements import cdav, dav
from lxml import etree

from automation.adapters.http import Retry, retry_from_settings, send
from automation.domain.cadence import merge_intervals
from automation.domain.ical import series_components, with_timezones
from automation.errors import PermanentProviderError, TransientProviderError
from automation.ports import NEEDS_ACTION, EventState, SeriesEvent, SyncOutcome

log = logging.getLogger("automation.caldav")

PRODID = "-//checkin-automation//caldav//EN"
OUR_UID_PREFIX = "checkin-"
DAV_NS = "DAV:"
CALDAV_NS = "urn:ietf:params:xml:ns:caldav"
ICS = "text/calendar; charset=utf-8"
XML = "application/xml; charset=utf-8"
BUSY_TYPES = frozenset({"BUSY", "BUSY-TENTATIVE", "BUSY-UNAVAILABLE"})
# A report or query the server does not do: fall back (sync by ETags, free/busy by a scan).
UNSUPPORTED_STATUS = (400, 403, 405, 409, 415, 501)


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


class _InvalidSyncToken(Exception):
    """The server refused the stored sync token (DAV:valid-sync-token)."""


class _Unsupported(Exception):
    """The server does not do this REPORT."""


class _Counted:
    """A session wrapper counting the HTTP requests of one operation (retries included).

    Per operation rather than a shared counter, so concurrent syncs count their own calls."""

    def __init__(self, session: requests.Session):
        self._session = session
        self.n = 0

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        self.n += 1
        return self._session.request(*args, **kwargs)


# --------------------------------------------------------------------------- the resource


def _addresses(component: icalendar.cal.Component, name: str) -> list[icalendar.vCalAddress]:
    value = component.get(name)
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _email(address: Any) -> str:
    text = str(address)
    return (text[7:] if text.lower().startswith("mailto:") else text).strip().lower()


def _utc(value: dt.date | dt.datetime) -> dt.datetime:
    """UTC for an iCalendar time: a date is that day's UTC midnight, a floating time UTC."""
    if not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _recurrence_key(component: icalendar.cal.Component) -> dt.datetime | None:
    rid = component.get("recurrence-id")
    return None if rid is None else _utc(rid.dt)


def _exdates(component: icalendar.cal.Component) -> list[dt.datetime]:
    value = component.get("exdate")
    if value is None:
        return []
    out = []
    for item in value if isinstance(value, list) else [value]:
        out.extend(_utc(d.dt) for d in item.dts)
    return out


def _keep_theirs(
    ours: list[icalendar.Event], current: bytes, sequence: int
) -> list[icalendar.Event]:
    """Carry the stored copy's answers over to ours when the change is not significant.

    With the stored master's SEQUENCE equal to ours, other clients' PARTSTATs (on the master
    and on our instances) and their instance components (an occurrence declined or moved by
    an attendee's client) are kept, unless we cancelled that instance. A higher SEQUENCE
    (a new time or rule) resets answers, as RFC 5546 lets the organizer do."""
    try:
        stored = icalendar.Calendar.from_ical(current)
    except ValueError:
        return ours
    theirs = {_recurrence_key(c): c for c in stored.walk("VEVENT")}
    master = theirs.get(None)
    if master is None or int(master.get("sequence", 0)) != sequence:
        return ours
    for component in ours:
        stored_component = theirs.get(_recurrence_key(component))
        if stored_component is None:
            continue
        answers = {
            _email(a): a.params.get("PARTSTAT")
            for a in _addresses(stored_component, "attendee")
            if a.params.get("PARTSTAT")
        }
        attendees = []
        for address in _addresses(component, "attendee"):
            # A fresh vCalAddress: instances share the master's objects (series_components).
            copy = icalendar.vCalAddress(str(address))
            copy.params.update(address.params)
            if _email(address) in answers:
                copy.params["PARTSTAT"] = answers[_email(address)]
            attendees.append(copy)
        if attendees:
            del component["attendee"]
            for address in attendees:
                component.add("attendee", address)
    have = {_recurrence_key(c) for c in ours}
    cancelled = set(_exdates(ours[0]))
    extra = [
        c
        for key, c in theirs.items()
        if key is not None and key not in have and key not in cancelled
    ]
    return [*ours, *extra]


def _calendar_bytes(
    event: SeriesEvent,
    stamp: dt.datetime,
    *,
    schedules: bool = False,
    current: bytes | None = None,
) -> bytes:
    """The series as one stored CalDAV resource: VCALENDAR without METHOD, the master VEVENT,
    its RECURRENCE-ID instances and EXDATEs, and a VTIMEZONE for every TZID.

    The one place that builds the body and its VTIMEZONEs. ``current`` is the stored copy
    when updating (see :func:`_keep_theirs`); ``schedules`` False marks attendees
    SCHEDULE-AGENT=CLIENT so the server stays silent."""
    components = series_components(event, stamp)
    if current is not None:
        components = _keep_theirs(components, current, event.sequence)
    if not schedules:
        for component in components:
            for address in _addresses(component, "attendee"):
                address.params["SCHEDULE-AGENT"] = "CLIENT"
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    for component in components:
        cal.add_component(component)
    # RRULE-based STANDARD/DAYLIGHT rules, as Google and Outlook write them: RDATE-list zones
    # are misread by ical.js and lose their DST in vobject (and so in Radicale's copy).
    with_timezones(cal)
    return cal.to_ical()


_VOLATILE = frozenset({"DTSTAMP", "LAST-MODIFIED", "CREATED"})


def _normal(component: icalendar.cal.Component) -> tuple[Any, ...]:
    """A comparable form of a component: its properties (values and parameters, in any
    order and folding) and subcomponents, without the stamps that change on every write."""
    props = []
    for name, value in component.items():
        if name.upper() in _VOLATILE:
            continue
        for item in value if isinstance(value, list) else [value]:
            params = getattr(item, "params", {}) or {}
            props.append(
                (
                    name.upper(),
                    item.to_ical() if hasattr(item, "to_ical") else str(item),
                    tuple(sorted((k.upper(), str(v)) for k, v in params.items())),
                )
            )
    subs = sorted(_normal(sub) for sub in component.subcomponents)
    return (component.name, tuple(sorted(props)), tuple(subs))


def _same_content(ours: bytes, stored: bytes) -> bool:
    """True when the stored resource already says what we would write (stamps aside)."""
    try:
        mine = icalendar.Calendar.from_ical(ours)
        theirs = icalendar.Calendar.from_ical(stored)
    except ValueError:
        return False
    return sorted(_normal(c) for c in mine.subcomponents) == sorted(
        _normal(c) for c in theirs.subcomponents
    )


def _event_states(data: bytes | str) -> list[EventState]:
    """Our events in one resource: the master (with an EventState per EXDATE) first, then
    each RECURRENCE-ID instance. Components whose UID is not ours are skipped."""
    try:
        cal = icalendar.Calendar.from_ical(data)
    except ValueError as exc:
        log.warning("unreadable calendar data skipped: %s", exc)
        return []
    masters: list[EventState] = []
    instances: list[EventState] = []
    for component in cal.walk("VEVENT"):
        uid = str(component.get("uid", ""))
        if not uid.startswith(OUR_UID_PREFIX):
            continue
        removed = str(component.get("status", "")).upper() == "CANCELLED"
        responses = {
            _email(a): str(a.params.get("PARTSTAT", NEEDS_ACTION)).upper()
            for a in _addresses(component, "attendee")
        }
        rid = _recurrence_key(component)
        if rid is None:
            masters.append(EventState(uid=uid, removed=removed, responses=responses))
            masters.extend(
                EventState(uid=uid, recurrence_id=when, removed=True)
                for when in _exdates(component)
            )
            continue
        start = component.decoded("dtstart")
        if "dtend" in component:
            end = component.decoded("dtend")
        elif "duration" in component:
            end = start + component.decoded("duration")
        else:
            end = start
        instances.append(
            EventState(
                uid=uid,
                recurrence_id=rid,
                removed=removed,
                start=_utc(start),
                end=_utc(end),
                responses=responses,
            )
        )
    return [*masters, *instances]


def _uids(data: bytes) -> set[str]:
    """The UIDs of the VEVENTs in a stored resource (empty if unreadable)."""
    try:
        cal = icalendar.Calendar.from_ical(data)
    except ValueError:
        return set()
    return {str(c.get("uid", "")) for c in cal.walk("VEVENT")}


def _uid_of_href(href: str) -> str:
    name = unquote(href.rstrip("/").rpartition("/")[2])
    return name[:-4] if name.endswith(".ics") else name


def _path(url_or_href: str) -> str:
    return unquote(urlsplit(url_or_href).path)


def _xml(element: Any) -> bytes:
    return etree.tostring(element.xmlelement(), xml_declaration=True, encoding="utf-8")


def _multistatus(response: requests.Response) -> Iterator[etree._Element]:
    """``DAV:response`` and ``DAV:sync-token`` elements of a streamed multistatus, one at a
    time, each freed after the caller is done with it (memory stays flat)."""
    response.raw.decode_content = True
    try:
        for _, element in etree.iterparse(
            response.raw,
            events=("end",),
            tag=(_q(DAV_NS, "response"), _q(DAV_NS, "sync-token")),
            resolve_entities=False,
            no_network=True,
        ):
            parent = element.getparent()
            if element.tag == _q(DAV_NS, "sync-token") and (
                parent is None or parent.tag != _q(DAV_NS, "multistatus")
            ):
                continue
            yield element
            element.clear()
            if parent is not None:
                while element.getprevious() is not None:
                    del parent[0]
    except etree.XMLSyntaxError as exc:
        raise TransientProviderError(f"unreadable multistatus: {exc}") from exc
    finally:
        response.close()


def _status_code(text: str | None) -> int:
    parts = (text or "").split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _props(response: etree._Element) -> tuple[str, int, dict[str, str]]:
    """(href, response-level status or 0, {prop local name: text} of the 200 propstat)."""
    href = response.findtext(_q(DAV_NS, "href")) or ""
    status = _status_code(response.findtext(_q(DAV_NS, "status")))
    found: dict[str, str] = {}
    for propstat in response.iterfind(_q(DAV_NS, "propstat")):
        if _status_code(propstat.findtext(_q(DAV_NS, "status"))) != 200:
            continue
        prop = propstat.find(_q(DAV_NS, "prop"))
        if prop is None:
            continue
        for child in prop:
            name = etree.QName(child).localname
            if name == "resourcetype":
                found[name] = " ".join(etree.QName(c).localname for c in child)
            else:
                found[name] = child.text or ""
    return href, status, found


# --------------------------------------------------------------------------- the provider


class CalDavCalendar:
    """Series in CalDAV calendar collections, one per organizer (see the module docstring).

    The collection is ``url + calendar_path.format(email=organizer)``; it is created with
    MKCALENDAR when a write finds it missing."""

    name = "caldav"

    def __init__(
        self,
        url: str,
        *,
        username: str = "",
        password: str = "",
        calendar_path: str = "{email}/checkins/",
        schedules: bool = False,
        retry: Retry | None = None,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        multiget_size: int = 100,
        apply_size: int = 200,
    ):
        if not url:
            raise PermanentProviderError("caldav_url is not set")
        self.base_url = url if url.endswith("/") else url + "/"
        self.calendar_path = calendar_path
        self.schedules = schedules
        self.retry = retry or Retry()
        self.session = session or requests.Session()
        if username and self.session.auth is None:
            self.session.auth = (username, password)
        self.session.headers.setdefault("User-Agent", "checkin-automation (caldav)")
        self.timeout = timeout
        self.multiget_size = multiget_size
        self.apply_size = apply_size
        # None: not known yet; False: the server refused free-busy-query, scan instead.
        self._freebusy_report: bool | None = None

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> CalDavCalendar:
        kwargs.setdefault("retry", retry_from_settings(settings))
        return cls(
            settings.caldav_url,
            username=settings.caldav_username,
            password=settings.caldav_password,
            calendar_path=settings.caldav_calendar_path,
            schedules=settings.caldav_schedules,
            **kwargs,
        )

    # ----------------------------------------------------------------- addressing

    def collection_url(self, email: str) -> str:
        path = self.calendar_path.format(email=quote(email.strip().lower(), safe="@+"))
        url = urljoin(self.base_url, path.lstrip("/"))
        return url if url.endswith("/") else url + "/"

    def href_for(self, event: SeriesEvent) -> str:
        """The series' resource as an absolute path (what the server's hrefs look like)."""
        url = self.collection_url(event.calendar) + quote(event.uid, safe="") + ".ics"
        return urlsplit(url).path

    def _url(self, href: str) -> str:
        return urljoin(self.base_url, href)

    def _send(
        self,
        session: requests.Session | _Counted,
        method: str,
        url: str,
        *,
        ok: Sequence[int] = (),
        **kwargs: Any,
    ) -> requests.Response:
        return send(
            cast(requests.Session, session),
            self.retry,
            method,
            url,
            ok=ok,
            timeout=self.timeout,
            what=f"CalDAV {method} {_path(url)}",
            **kwargs,
        )

    # ----------------------------------------------------------------- writes

    def write_many(self, events: Sequence[SeriesEvent]) -> dict[str, str]:
        """CalDAV has no batch: one write per series."""
        return {event.uid: self.write_series(event) for event in events}

    def write_series(self, event: SeriesEvent, stamp: dt.datetime | None = None) -> str:
        stamp = stamp or dt.datetime.now(dt.UTC).replace(microsecond=0)
        session = self.session
        href = self.href_for(event)
        url = self._url(href)
        previous = event.provider_id
        if previous and previous.endswith(".ics") and _path(previous) != _path(href):
            # The organizer changed: the series moves to the new organizer's calendar.
            self._send(session, "DELETE", self._url(previous), ok=(404, 410))
        if event.cancelled and not self.schedules:
            self._send(session, "DELETE", url, ok=(404, 410))
            return href
        if event.cancelled and previous is None:
            # Never written as far as we know: cancel only what is there (a scheduling
            # server would otherwise send a CANCEL for an invitation nobody received).
            self._update(session, event, url, stamp, create_missing=False)
            return href
        if previous is None and self._create(session, event, url, stamp):
            return href
        self._update(session, event, url, stamp)
        return href

    def _create(
        self, session: requests.Session | _Counted, event: SeriesEvent, url: str, stamp: dt.datetime
    ) -> bool:
        """PUT with If-None-Match: *. False when the resource exists (412): update it."""
        body = _calendar_bytes(event, stamp, schedules=self.schedules)
        headers = {"If-None-Match": "*", "Content-Type": ICS}
        for _ in range(2):
            response = self._send(
                session, "PUT", url, ok=(404, 409, 412), headers=headers, data=body
            )
            if response.status_code == 412:
                return False
            if response.status_code not in (404, 409):
                return True
            self._make_collection(session, url.rpartition("/")[0] + "/", event.calendar)
        raise PermanentProviderError(f"CalDAV: cannot create {_path(url)}: no calendar there")

    def _update(
        self,
        session: requests.Session | _Counted,
        event: SeriesEvent,
        url: str,
        stamp: dt.datetime,
        create_missing: bool = True,
    ) -> None:
        """GET + PUT If-Match; on 412 refetch and re-apply once more."""
        for _ in range(2):
            got = self._send(session, "GET", url, ok=(404, 410))
            if got.status_code in (404, 410):
                if not create_missing:
                    return
                if self._create(session, event, url, stamp):
                    return
                continue  # created by someone else just now: read it and update
            stored_uids = _uids(got.content)
            if event.uid not in stored_uids:
                # Same name, someone else's event: never overwrite it.
                raise PermanentProviderError(
                    f"CalDAV: {_path(url)} holds another event "
                    f"({', '.join(sorted(stored_uids)) or 'unreadable'}); not overwritten"
                )
            etag = got.headers.get("ETag")
            body = _calendar_bytes(event, stamp, schedules=self.schedules, current=got.content)
            if _same_content(body, got.content):
                return  # a replay: writing again would only change the ETag and wake syncs
            headers = {"Content-Type": ICS}
            if etag:
                headers["If-Match"] = etag
            else:
                log.warning("CalDAV: %s has no ETag; writing without If-Match", _path(url))
            put = self._send(session, "PUT", url, ok=(412,), headers=headers, data=body)
            if put.status_code != 412:
                return
            log.info("CalDAV: %s changed while we wrote it; refetching", _path(url))
        raise TransientProviderError(f"CalDAV: {_path(url)} kept changing while we wrote it")

    def _make_collection(
        self, session: requests.Session | _Counted, collection: str, email: str
    ) -> None:
        """MKCALENDAR (after MKCOL of its parent if the server has no such folder)."""
        body = _xml(
            cdav.Mkcalendar()
            + [
                dav.Set()
                + [
                    dav.Prop()
                    + [
                        dav.DisplayName(value=f"Check-ins: {email}"),
                        cdav.SupportedCalendarComponentSet() + [cdav.Comp("VEVENT")],
                    ]
                ]
            ]
        )
        headers = {"Content-Type": XML}
        for _ in range(2):
            made = self._send(
                session, "MKCALENDAR", collection, ok=(405, 409), headers=headers, data=body
            )
            if made.status_code < 400 or made.status_code == 405:
                return  # created, or it exists (405: RFC 4918 for a mapped URL)
            if b"resource-must-be-null" in made.content:
                return  # it exists (Radicale's 409)
            parent = collection.rstrip("/").rpartition("/")[0] + "/"
            log.info("CalDAV: creating %s for %s", _path(parent), email)
            self._send(session, "MKCOL", parent, ok=(405,))
        raise PermanentProviderError(f"CalDAV: cannot create the calendar {_path(collection)}")

    # ----------------------------------------------------------------- sync

    def sync(
        self,
        calendar: str,
        cursor: str | None,
        apply: Callable[[Sequence[EventState]], None],
    ) -> SyncOutcome:
        session = _Counted(self.session)
        sink = _Sink(apply, self.apply_size)
        url = self.collection_url(calendar)
        full_resync = False
        if cursor is not None and cursor.startswith("{"):
            new_cursor = self._sync_by_etags(session, url, json.loads(cursor), sink)
        else:
            try:
                new_cursor = self._sync_collection(session, url, cursor, sink)
            except _InvalidSyncToken:
                if cursor is None:
                    raise PermanentProviderError(
                        f"CalDAV: {_path(url)} refused an initial sync-collection"
                    ) from None
                log.warning("CalDAV: sync token for %s refused; full resync", _path(url))
                full_resync = True
                sink.reset()
                try:
                    new_cursor = self._sync_collection(session, url, None, sink)
                except _InvalidSyncToken:
                    raise PermanentProviderError(
                        f"CalDAV: {_path(url)} refused a full sync-collection"
                    ) from None
            except _Unsupported:
                log.info("CalDAV: %s has no sync-collection; comparing ETags", _path(url))
                full_resync = cursor is not None
                new_cursor = self._sync_by_etags(session, url, {}, sink)
        sink.flush()
        return SyncOutcome(
            cursor=new_cursor, full_resync=full_resync, requests=session.n, events=sink.count
        )

    def _sync_collection(
        self, session: _Counted, url: str, token: str | None, sink: _Sink
    ) -> str | None:
        """RFC 6578, page by page (a 507 on the collection means: ask again from the new
        token). Returns the last token."""
        collection = _path(url).rstrip("/")
        while True:
            query = dav.SyncCollection() + [
                dav.SyncToken(value=token or ""),
                dav.SyncLevel(value="1"),
                dav.Prop() + [dav.GetEtag(), cdav.CalendarData()],
            ]
            response = self._send(
                session,
                "REPORT",
                url,
                ok=(*UNSUPPORTED_STATUS, 404),
                headers={"Depth": "0", "Content-Type": XML},
                data=_xml(query),
                stream=True,
            )
            if response.status_code == 404:
                response.close()
                return token  # no calendar (yet): nothing to report
            if response.status_code >= 400:
                text = response.content
                if b"valid-sync-token" in text and response.status_code in (403, 409):
                    raise _InvalidSyncToken()
                raise _Unsupported()
            truncated = False
            new_token = token
            fetch: list[str] = []
            for element in _multistatus(response):
                if element.tag == _q(DAV_NS, "sync-token"):
                    new_token = (element.text or "").strip() or new_token
                    continue
                href, status, props = _props(element)
                if _path(href).rstrip("/") == collection:
                    truncated = truncated or status == 507
                    continue
                if status in (404, 410):
                    uid = _uid_of_href(href)
                    if uid.startswith(OUR_UID_PREFIX):
                        sink.add([EventState(uid=uid, removed=True)])
                    continue
                if props.get("calendar-data"):
                    sink.add(_event_states(props["calendar-data"]))
                elif _uid_of_href(href).startswith(OUR_UID_PREFIX):
                    fetch.append(href)
                    if len(fetch) >= self.multiget_size:
                        self._multiget(session, url, fetch, sink)
                        fetch = []
            if fetch:
                self._multiget(session, url, fetch, sink)
            if not truncated or new_token == token:
                return new_token
            token = new_token

    def _multiget(self, session: _Counted, url: str, hrefs: Sequence[str], sink: _Sink) -> None:
        query = cdav.CalendarMultiGet() + [
            dav.Prop() + [dav.GetEtag(), cdav.CalendarData()],
            *(dav.Href(value=href) for href in hrefs),
        ]
        response = self._send(
            session,
            "REPORT",
            url,
            headers={"Depth": "1", "Content-Type": XML},
            data=_xml(query),
            stream=True,
        )
        for element in _multistatus(response):
            if element.tag != _q(DAV_NS, "response"):
                continue
            href, status, props = _props(element)
            if status in (404, 410):
                uid = _uid_of_href(href)
                if uid.startswith(OUR_UID_PREFIX):
                    sink.add([EventState(uid=uid, removed=True)])
            elif props.get("calendar-data"):
                sink.add(_event_states(props["calendar-data"]))

    def _sync_by_etags(
        self, session: _Counted, url: str, previous: Mapping[str, str], sink: _Sink
    ) -> str | None:
        """For servers without sync-collection: list ETags, fetch what changed, report
        what went. The cursor is the compact JSON of {href: etag} of our resources."""
        query = dav.Propfind() + [dav.Prop() + [dav.GetEtag(), dav.ResourceType()]]
        response = self._send(
            session,
            "PROPFIND",
            url,
            ok=(404,),
            headers={"Depth": "1", "Content-Type": XML},
            data=_xml(query),
            stream=True,
        )
        if response.status_code == 404:
            response.close()
            return json.dumps(dict(previous), separators=(",", ":")) if previous else None
        current: dict[str, str] = {}
        fetch: list[str] = []
        for element in _multistatus(response):
            if element.tag != _q(DAV_NS, "response"):
                continue
            href, _, props = _props(element)
            if "collection" in props.get("resourcetype", ""):
                continue
            if not _uid_of_href(href).startswith(OUR_UID_PREFIX):
                continue
            path = _path(href)
            etag = props.get("getetag", "")
            current[path] = etag
            if not etag or previous.get(path) != etag:
                fetch.append(path)
                if len(fetch) >= self.multiget_size:
                    self._multiget(session, url, fetch, sink)
                    fetch = []
        if fetch:
            self._multiget(session, url, fetch, sink)
        for path in previous:
            if path not in current:
                sink.add([EventState(uid=_uid_of_href(path), removed=True)])
        return json.dumps(current, separators=(",", ":"), sort_keys=True)

    # ----------------------------------------------------------------- free/busy

    def busy(
        self, emails: Sequence[str], start: dt.datetime, end: dt.datetime
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        """Busy UTC intervals (clipped to [start, end), merged, sorted) of these people."""
        start, end = _utc(start), _utc(end)
        out: list[tuple[dt.datetime, dt.datetime]] = []
        for email in dict.fromkeys(e.strip().lower() for e in emails):
            url = self.collection_url(email)
            found = (
                self._free_busy_report(url, start, end)
                if self._freebusy_report is not False
                else None
            )
            if found is None:
                found = self._scan(url, start, end)
            out.extend(found)
        return merge_intervals(out)

    def _free_busy_report(
        self, url: str, start: dt.datetime, end: dt.datetime
    ) -> list[tuple[dt.datetime, dt.datetime]] | None:
        """The server's own free/busy; None when it has none (then scan)."""
        query = cdav.FreeBusyQuery() + [cdav.TimeRange(start, end)]
        response = self._send(
            self.session,
            "REPORT",
            url,
            ok=(*UNSUPPORTED_STATUS, 404),
            headers={"Depth": "1", "Content-Type": XML},
            data=_xml(query),
        )
        if response.status_code == 404:
            return []  # no calendar: nothing busy
        if response.status_code >= 400 or b"VFREEBUSY" not in response.content.upper():
            if response.status_code in (403, 405, 501) or response.status_code < 400:
                self._freebusy_report = False  # the server does not do it: always scan
            return None
        self._freebusy_report = True
        out = []
        cal = icalendar.Calendar.from_ical(response.content)
        for component in cal.walk("VFREEBUSY"):
            for prop in _addresses(component, "freebusy"):
                if str(prop.params.get("FBTYPE", "BUSY")).upper() not in BUSY_TYPES:
                    continue
                raw = prop.to_ical()
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                for period in text.split(","):
                    first, second = icalendar.vPeriod.from_ical(period)
                    begin = _utc(first)
                    finish = begin + second if isinstance(second, dt.timedelta) else _utc(second)
                    if begin < end and finish > start:
                        out.append((max(begin, start), min(finish, end)))
        return out

    def _scan(
        self, url: str, start: dt.datetime, end: dt.datetime
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        """calendar-query for events touching the range, expanded here."""
        query = cdav.CalendarQuery() + [
            dav.Prop() + [cdav.CalendarData()],
            cdav.Filter()
            + [
                cdav.CompFilter("VCALENDAR")
                + [cdav.CompFilter("VEVENT") + [cdav.TimeRange(start, end)]]
            ],
        ]
        response = self._send(
            self.session,
            "REPORT",
            url,
            ok=(404,),
            headers={"Depth": "1", "Content-Type": XML},
            data=_xml(query),
            stream=True,
        )
        if response.status_code == 404:
            response.close()
            return []
        out: list[tuple[dt.datetime, dt.datetime]] = []
        for element in _multistatus(response):
            if element.tag != _q(DAV_NS, "response"):
                continue
            _, _, props = _props(element)
            data = props.get("calendar-data")
            if not data:
                continue
            try:
                cal = icalendar.Calendar.from_ical(data)
                occurrences = recurring_ical_events.of(cal).between(start, end)
            except ValueError as exc:
                log.warning("CalDAV: unreadable event skipped in free/busy: %s", exc)
                continue
            for occurrence in occurrences:
                if str(occurrence.get("transp", "OPAQUE")).upper() == "TRANSPARENT":
                    continue
                if str(occurrence.get("status", "")).upper() == "CANCELLED":
                    continue
                begin = _utc(occurrence.decoded("dtstart"))
                finish = _utc(occurrence.decoded("dtend")) if "dtend" in occurrence else begin
                if begin < end and finish > start:
                    out.append((max(begin, start), min(finish, end)))
        return out


class _Sink:
    """Collects EventStates and hands them to ``apply`` in chunks."""

    def __init__(self, apply: Callable[[Sequence[EventState]], None], size: int):
        self.apply, self.size = apply, max(size, 1)
        self.pending: list[EventState] = []
        self.count = 0

    def add(self, states: Sequence[EventState]) -> None:
        self.pending.extend(states)
        if len(self.pending) >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            chunk, self.pending = self.pending, []
            self.count += len(chunk)
            self.apply(chunk)

    def reset(self) -> None:
        """Forget what was not applied yet (a refused token: the full listing follows)."""
        self.pending = []
