"""Outlook / Microsoft 365 calendars through Microsoft Graph (requests), tokens from MSAL.

Every call goes through :func:`automation.adapters.http.send` (one retry policy for all
providers); a bearer token is attached to each attempt from the process-wide MSAL app, which
answers from its cache until the token nears expiry (one token request per hour, not per call).

Writes
    A series is created with ``POST /users/{organizer}/events`` carrying a ``transactionId``
    derived from our UID, so a create retried after a lost answer returns the first event
    instead of making a second one. The UID also goes into a single-value extended property
    (``checkinUid``), because ``iCalUId`` is assigned by Exchange. A known ``provider_id`` is
    PATCHed (404: the series was deleted in Outlook, so it is created again under a new
    transactionId); a cancelled series is DELETEd (404 counts as done). Up to ``batch_size``
    (20, Graph's limit) calls go in one ``POST /$batch``; an inner 429/5xx is sent again
    alone, in a later batch, after its ``Retry-After``; a failed ``$batch`` as a whole goes
    through the retry rules. Creating N series costs ceil(N / 20) requests and no reads.
    Moved or cancelled instances are found with ``/events/{id}/instances`` over a narrow window
    around the original start and PATCHed or DELETEd.

Sync
    ``GET /users/{calendar}/calendarView/delta?startDateTime&endDateTime`` over a fixed window
    (30 days back, 400 ahead), page by page (``@odata.nextLink``) until ``@odata.deltaLink``,
    which is the cursor. Every read asks ``Prefer: outlook.timezone="UTC"``. The rules for
    turning items into :class:`EventState` (delta supports neither ``$select`` nor
    ``$expand``, so items rarely carry our UID):

    * ``occurrence`` / ``exception``: ``series_provider_id`` = ``seriesMasterId``,
      ``recurrence_id`` = ``originalStart``, where it is now, ``removed`` = ``isCancelled``,
      and the attendees' responses;
    * ``seriesMaster``: ``series_provider_id`` = its id, our UID when the extended property is
      there, ``removed`` = ``isCancelled``, responses;
    * ``@removed``: only an id is known, so ``series_provider_id`` = that id, ``removed``. For a
      series master the service finds the series by its link; an instance id matches no link
      and is ignored (a single occurrence deleted in Outlook shows up as a removed instance
      only while its item still carries ``seriesMasterId``, e.g. ``isCancelled``);
    * a single event is reported only when it carries our UID (we never create one).

    Which series are ours is decided by the service through ``series_provider_id`` (the
    calendar link it stored); items of other series are reported and ignored there. A 410
    (its ``Location`` is not needed: our own first URL starts the new round) or a 400/404
    ``syncStateNotFound`` / ``resyncRequired`` starts one fresh round (``full_resync``); a
    second refusal raises instead of looping. The window is fixed when a round starts, so the
    service should start a full round (cursor None) from time to time to move it on.

Busy
    ``POST /users/{first}/calendar/getSchedule``, at most 20 people and under 42 days per
    call, the calls batched; ``busy``, ``oof``, ``tentative`` and ``workingElsewhere`` items
    are busy (all-day and out-of-office included), ``free`` is not.

Push
    ``/subscriptions`` with ``clientState`` = the channel secret and a lifecycle URL (the
    notification address + ``/lifecycle`` unless given), the expiry read back from the answer;
    renew PATCHes the expiry (404: subscribe again), stop DELETEs (404: already gone),
    :meth:`GraphCalendar.reauthorize` answers ``reauthorizationRequired``.

Tokens and secrets are never logged; error messages carry status and Graph error code only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote, urlparse
from zoneinfo import ZoneInfo

import requests

from automation.adapters.http import Failure, Retry, chunks, retry_from_settings, send
from automation.domain.cadence import merge_intervals
from automation.errors import (
    ConfigError,
    ConfigProblem,
    PermanentProviderError,
    TransientProviderError,
)
from automation.ports import (
    ACCEPTED,
    DECLINED,
    NEEDS_ACTION,
    TENTATIVE,
    Channel,
    EventState,
    SeriesEvent,
    SyncOutcome,
)

log = logging.getLogger("automation.graph")

SCOPE = "https://graph.microsoft.com/.default"
# Our UID on every series we create (iCalUId is Exchange's). The GUID is this project's own.
UID_PROPERTY = "String {4f3c1d9e-2b7a-4e61-9c85-0d6a7b2e13f4} Name checkinUid"
_TRANSACTION_NS = uuid.UUID("9b0f5a3c-61d2-4c7e-8f14-2a9d3e6b7c50")
UTC_PREFER = 'outlook.timezone="UTC"'
BATCH_LIMIT = 20  # Graph JSON batching
SCHEDULE_PEOPLE = 20  # getSchedule: at most 20 schedules per call
SCHEDULE_WINDOW = dt.timedelta(days=41)  # getSchedule: the window must be under 42 days
BUSY_STATUSES = frozenset({"busy", "oof", "tentative", "workingElsewhere"})
RESYNC_CODES = frozenset({"syncstatenotfound", "resyncrequired", "syncstateinvalid"})
RESPONSES = {
    "accepted": ACCEPTED,
    "organizer": ACCEPTED,
    "declined": DECLINED,
    "tentativelyAccepted": TENTATIVE,
    "none": NEEDS_ACTION,
    "notResponded": NEEDS_ACTION,
}
# Hosts where MSAL's own instance discovery applies; any other authority host (a sovereign
# cloud we do not list, or the test fake) is taken as given.
MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoft.com",
        "login.windows.net",
        "sts.windows.net",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
    }
)

# IANA -> Windows zone names (CLDR windowsZones, territory "001"), for the zones the example
# organisation uses and other common ones. Graph also accepts IANA names, so an unlisted zone
# is sent as it is.
WINDOWS_ZONES = {
    "UTC": "UTC",
    "Etc/UTC": "UTC",
    "Etc/GMT": "UTC",
    "America/New_York": "Eastern Standard Time",
    "America/Toronto": "Eastern Standard Time",
    "America/Detroit": "Eastern Standard Time",
    "America/Chicago": "Central Standard Time",
    "America/Winnipeg": "Central Standard Time",
    "America/Denver": "Mountain Standard Time",
    "America/Edmonton": "Mountain Standard Time",
    "America/Phoenix": "US Mountain Standard Time",
    "America/Los_Angeles": "Pacific Standard Time",
    "America/Vancouver": "Pacific Standard Time",
    "America/Anchorage": "Alaskan Standard Time",
    "Pacific/Honolulu": "Hawaiian Standard Time",
    "America/Halifax": "Atlantic Standard Time",
    "America/St_Johns": "Newfoundland Standard Time",
    "America/Mexico_City": "Central Standard Time (Mexico)",
    "America/Bogota": "SA Pacific Standard Time",
    "America/Lima": "SA Pacific Standard Time",
    "America/Santiago": "Pacific SA Standard Time",
    "America/Sao_Paulo": "E. South America Standard Time",
    "America/Argentina/Buenos_Aires": "Argentina Standard Time",
    "Europe/London": "GMT Standard Time",
    "Europe/Dublin": "GMT Standard Time",
    "Europe/Lisbon": "GMT Standard Time",
    "Europe/Berlin": "W. Europe Standard Time",
    "Europe/Amsterdam": "W. Europe Standard Time",
    "Europe/Rome": "W. Europe Standard Time",
    "Europe/Stockholm": "W. Europe Standard Time",
    "Europe/Vienna": "W. Europe Standard Time",
    "Europe/Zurich": "W. Europe Standard Time",
    "Europe/Oslo": "W. Europe Standard Time",
    "Europe/Paris": "Romance Standard Time",
    "Europe/Brussels": "Romance Standard Time",
    "Europe/Madrid": "Romance Standard Time",
    "Europe/Copenhagen": "Romance Standard Time",
    "Europe/Warsaw": "Central European Standard Time",
    "Europe/Prague": "Central Europe Standard Time",
    "Europe/Budapest": "Central Europe Standard Time",
    "Europe/Athens": "GTB Standard Time",
    "Europe/Bucharest": "GTB Standard Time",
    "Europe/Helsinki": "FLE Standard Time",
    "Europe/Kyiv": "FLE Standard Time",
    "Europe/Kiev": "FLE Standard Time",
    "Europe/Istanbul": "Turkey Standard Time",
    "Europe/Moscow": "Russian Standard Time",
    "Africa/Lagos": "W. Central Africa Standard Time",
    "Africa/Cairo": "Egypt Standard Time",
    "Africa/Johannesburg": "South Africa Standard Time",
    "Africa/Nairobi": "E. Africa Standard Time",
    "Asia/Jerusalem": "Israel Standard Time",
    "Asia/Dubai": "Arabian Standard Time",
    "Asia/Karachi": "Pakistan Standard Time",
    "Asia/Kolkata": "India Standard Time",
    "Asia/Calcutta": "India Standard Time",
    "Asia/Bangkok": "SE Asia Standard Time",
    "Asia/Jakarta": "SE Asia Standard Time",
    "Asia/Singapore": "Singapore Standard Time",
    "Asia/Manila": "Singapore Standard Time",
    "Asia/Shanghai": "China Standard Time",
    "Asia/Hong_Kong": "China Standard Time",
    "Asia/Taipei": "Taipei Standard Time",
    "Asia/Seoul": "Korea Standard Time",
    "Asia/Tokyo": "Tokyo Standard Time",
    "Australia/Perth": "W. Australia Standard Time",
    "Australia/Adelaide": "Cen. Australia Standard Time",
    "Australia/Brisbane": "E. Australia Standard Time",
    "Australia/Sydney": "AUS Eastern Standard Time",
    "Australia/Melbourne": "AUS Eastern Standard Time",
    "Pacific/Auckland": "New Zealand Standard Time",
}
_IANA_OF_WINDOWS = {}
for _iana, _windows in WINDOWS_ZONES.items():
    _IANA_OF_WINDOWS.setdefault(_windows, _iana)

_DAYS = {
    "MO": "monday",
    "TU": "tuesday",
    "WE": "wednesday",
    "TH": "thursday",
    "FR": "friday",
    "SA": "saturday",
    "SU": "sunday",
}
_INDEX = {1: "first", 2: "second", 3: "third", 4: "fourth", -1: "last"}
_BYDAY = re.compile(r"^([+-]?\d)?(MO|TU|WE|TH|FR|SA|SU)$")


# --------------------------------------------------------------------------- translation


def windows_zone(iana: str) -> str:
    """The Windows name Graph prefers for an IANA zone; the IANA name when we have none."""
    return WINDOWS_ZONES.get(iana, iana)


def zone_of(name: str) -> dt.tzinfo:
    """A zone Graph named (Windows or IANA) as tzinfo; UTC for "UTC" and anything unknown."""
    if name in ("UTC", "tzone://Microsoft/Utc", ""):
        return dt.UTC
    try:
        return ZoneInfo(_IANA_OF_WINDOWS.get(name, name))
    except (KeyError, ValueError):
        log.warning("unknown time zone %r from Graph; reading the time as UTC", name)
        return dt.UTC


def transaction_id(uid: str, generation: str = "") -> str:
    """The create's idempotency key: stable for a UID (a GUID, the form Graph's docs show)."""
    return str(uuid.uuid5(_TRANSACTION_NS, f"{uid}#{generation}" if generation else uid))


def recurrence_of(rrule: str, first_local: dt.datetime, tz_name: str) -> dict[str, Any]:
    """Our RFC 5545 RRULE as Graph's patternedRecurrence (weekly with an interval and days,
    monthly on the n-th weekday, or on a day of the month; daily); the range starts on the
    first meeting's date."""
    parts: dict[str, str] = {}
    for piece in rrule.removeprefix("RRULE:").split(";"):
        if piece:
            key, _, value = piece.partition("=")
            parts[key.upper()] = value.upper()
    freq = parts.pop("FREQ", "")
    interval = int(parts.pop("INTERVAL", "1"))
    days = [d for d in parts.pop("BYDAY", "").split(",") if d]
    wkst = _DAYS.get(parts.pop("WKST", "MO"), "monday")
    count, until = parts.pop("COUNT", None), parts.pop("UNTIL", None)
    month_day = parts.pop("BYMONTHDAY", None)
    if parts:
        raise ValueError(f"RRULE parts Graph cannot express here: {sorted(parts)} in {rrule!r}")
    pattern: dict[str, Any] = {"interval": interval}
    if freq == "DAILY" and not days:
        pattern["type"] = "daily"
    elif freq == "WEEKLY":
        names = []
        for d in days or [list(_DAYS)[first_local.weekday()]]:
            match = _BYDAY.match(d)
            if not match or match.group(1):
                raise ValueError(f"weekly BYDAY {d!r} in {rrule!r}")
            names.append(_DAYS[match.group(2)])
        pattern.update(type="weekly", daysOfWeek=names, firstDayOfWeek=wkst)
    elif freq == "MONTHLY" and days:
        match = _BYDAY.match(days[0]) if len(days) == 1 else None
        nth = int(match.group(1)) if match and match.group(1) else None
        if match is None or nth not in _INDEX:
            raise ValueError(f"monthly BYDAY {days} in {rrule!r}: need one n-th weekday")
        pattern.update(
            type="relativeMonthly", daysOfWeek=[_DAYS[match.group(2)]], index=_INDEX[nth]
        )
    elif freq == "MONTHLY":
        pattern.update(type="absoluteMonthly", dayOfMonth=int(month_day or first_local.day))
    else:
        raise ValueError(f"RRULE frequency {freq!r} not supported for Graph: {rrule!r}")
    range_: dict[str, Any] = {
        "type": "noEnd",
        "startDate": first_local.date().isoformat(),
        "recurrenceTimeZone": windows_zone(tz_name),
    }
    if count:
        range_.update(type="numbered", numberOfOccurrences=int(count))
    elif until:
        last = _parse_until(until, tz_name)
        range_.update(type="endDate", endDate=last.isoformat())
    return {"pattern": pattern, "range": range_}


def _parse_until(value: str, tz_name: str) -> dt.date:
    if "T" not in value:
        return dt.datetime.strptime(value, "%Y%m%d").date()
    stamp = dt.datetime.strptime(value.rstrip("Z"), "%Y%m%dT%H%M%S")
    if value.endswith("Z"):
        return stamp.replace(tzinfo=dt.UTC).astimezone(ZoneInfo(tz_name)).date()
    return stamp.date()


def event_body(event: SeriesEvent, *, create: bool, generation: str = "") -> dict[str, Any]:
    """The Graph event for a series (organizer implied by the mailbox it is written to)."""
    zone = windows_zone(event.timezone)
    end_local = event.dtstart_local + dt.timedelta(minutes=event.duration_minutes)
    organizer = event.organizer.email.lower()
    body: dict[str, Any] = {
        "subject": event.summary,
        "body": {"contentType": "text", "content": event.description},
        "start": {"dateTime": event.dtstart_local.isoformat(timespec="seconds"), "timeZone": zone},
        "end": {"dateTime": end_local.isoformat(timespec="seconds"), "timeZone": zone},
        "recurrence": recurrence_of(event.rrule, event.dtstart_local, event.timezone),
        "attendees": [
            {"emailAddress": {"address": a.email, "name": a.name}, "type": "required"}
            for a in event.attendees
            if a.email.lower() != organizer  # the organizer is not their own attendee
        ],
        "singleValueExtendedProperties": [{"id": UID_PROPERTY, "value": event.uid}],
    }
    if create:
        body["transactionId"] = transaction_id(event.uid, generation)
    return body


def utc_text(moment: dt.datetime) -> str:
    """A UTC instant as Graph's dateTimeTimeZone.dateTime (paired with timeZone "UTC")."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds")


def utc_param(moment: dt.datetime) -> str:
    """A UTC instant for a query parameter (startDateTime, endDateTime)."""
    return utc_text(moment) + "Z"


def _fromiso(text: str) -> dt.datetime:
    """ISO 8601 with Graph's seven fractional digits (Python reads at most six)."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)$", text)
    if match:
        text = f"{match.group(1)}.{match.group(2)[:6].ljust(6, '0')}{match.group(3)}"
    return dt.datetime.fromisoformat(text)


def parse_datetime_tz(value: dict[str, Any]) -> dt.datetime:
    """Graph's dateTimeTimeZone as an aware UTC datetime."""
    moment = _fromiso(value["dateTime"])
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone_of(value.get("timeZone", "UTC")))
    return moment.astimezone(dt.UTC)


def parse_offset(value: str) -> dt.datetime:
    """Graph's DateTimeOffset (e.g. originalStart, expirationDateTime) in UTC."""
    moment = _fromiso(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def uid_of(item: dict[str, Any]) -> str | None:
    """Our UID from the extended property, when the item carries it."""
    for prop in item.get("singleValueExtendedProperties") or ():
        if str(prop.get("id", "")).lower() == UID_PROPERTY.lower():
            return prop.get("value")
    return None


def responses_of(item: dict[str, Any]) -> dict[str, str]:
    out = {}
    for attendee in item.get("attendees") or ():
        address = (attendee.get("emailAddress") or {}).get("address")
        status = (attendee.get("status") or {}).get("response", "none")
        if address:
            out[address.lower()] = RESPONSES.get(status, NEEDS_ACTION)
    return out


def state_of(item: dict[str, Any]) -> EventState | None:
    """One delta item as an EventState, or None for a single event that is not ours."""
    if "@removed" in item:
        return EventState(uid=None, series_provider_id=item.get("id"), removed=True)
    kind = item.get("type", "singleInstance")
    uid = uid_of(item)
    cancelled = bool(item.get("isCancelled"))
    if kind in ("occurrence", "exception"):
        original = item.get("originalStart")
        start = parse_datetime_tz(item["start"]) if item.get("start") else None
        return EventState(
            uid=uid,
            series_provider_id=item.get("seriesMasterId"),
            recurrence_id=parse_offset(original) if original else start,
            removed=cancelled,
            start=start,
            end=parse_datetime_tz(item["end"]) if item.get("end") else None,
            responses=responses_of(item),
        )
    if kind == "seriesMaster":
        return EventState(
            uid=uid,
            series_provider_id=item.get("id"),
            removed=cancelled,
            responses=responses_of(item),
        )
    if uid is None:
        return None  # someone else's single meeting
    return EventState(
        uid=uid,
        series_provider_id=item.get("id"),
        removed=cancelled,
        start=parse_datetime_tz(item["start"]) if item.get("start") else None,
        end=parse_datetime_tz(item["end"]) if item.get("end") else None,
        responses=responses_of(item),
    )


def split_window(
    start: dt.datetime, end: dt.datetime, size: dt.timedelta = SCHEDULE_WINDOW
) -> list[tuple[dt.datetime, dt.datetime]]:
    out = []
    while start < end:
        out.append((start, min(start + size, end)))
        start += size
    return out


# --------------------------------------------------------------------------- tokens


class PinnedSession(requests.Session):
    """A session whose own ``verify`` (a CA bundle path) wins over ``REQUESTS_CA_BUNDLE``:
    plain requests lets the environment replace a session's bundle. Requests without a
    timeout get ``timeout``."""

    def __init__(self, verify: bool | str = True, timeout: float = 30.0):
        super().__init__()
        self.verify = verify
        self._timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, *args, **kwargs)

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        if verify is None and self.verify is not True:
            verify = self.verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)


class MsalTokens:
    """App-only tokens for Graph from one long-lived ``ConfidentialClientApplication`` per
    (authority, client, credential) in this process.

    Building the app costs an OIDC discovery call, so it is built once, lazily, and shared by
    every GraphCalendar of the process; ``acquire_token_for_client`` answers from the app's
    token cache until the token is about to expire (MSAL >= 1.23), so a process makes one token
    request per token lifetime. ``credential`` is a client secret, or MSAL's certificate dict
    (``{"private_key": ..., "thumbprint": ...}``).
    """

    _apps: ClassVar[dict[tuple[str, str, str], Any]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        tenant: str,
        client_id: str,
        credential: str | dict[str, Any],
        authority_host: str = "https://login.microsoftonline.com",
        *,
        verify: bool | str = True,
        token_cache: Any = None,
    ):
        self.authority = f"{authority_host.rstrip('/')}/{tenant}"
        self.client_id = client_id
        self._credential = credential
        self._verify = verify
        self._token_cache = token_cache

    def _key(self) -> tuple[str, str, str]:
        fingerprint = hashlib.sha256(repr(self._credential).encode()).hexdigest()[:16]
        return (self.authority, self.client_id, fingerprint)

    def app(self) -> Any:
        key = self._key()
        with self._lock:
            app = self._apps.get(key)
            if app is not None:
                return app
            import msal

            host = (urlparse(self.authority).hostname or "").lower()
            custom = host not in MICROSOFT_AUTHORITY_HOSTS
            try:
                app = msal.ConfidentialClientApplication(
                    self.client_id,
                    client_credential=self._credential,
                    authority=self.authority,
                    token_cache=self._token_cache,
                    http_client=PinnedSession(self._verify) if self._verify is not True else None,
                    # Another host (a sovereign cloud we do not list, the test fake): use its
                    # OIDC metadata as it is, without asking Microsoft's instance discovery.
                    instance_discovery=False if custom else None,
                    validate_authority=not custom,
                )
            except requests.RequestException as exc:
                raise TransientProviderError(
                    f"Graph sign-in: {self.authority} unreachable ({type(exc).__name__})"
                ) from exc
            except ValueError as exc:
                raise PermanentProviderError(
                    f"Graph sign-in: authority {self.authority} refused: check graph_tenant_id "
                    f"and graph_authority_host ({str(exc)[:160]})"
                ) from exc
            self._apps[key] = app
            return app

    def __call__(self) -> str:
        app = self.app()
        try:
            result = app.acquire_token_for_client(scopes=[SCOPE])
        except requests.RequestException as exc:
            raise TransientProviderError(
                f"Graph token request failed ({type(exc).__name__})"
            ) from exc
        token = result.get("access_token") if isinstance(result, dict) else None
        if token:
            return str(token)
        error = str((result or {}).get("error", "unknown_error"))
        codes = (result or {}).get("error_codes") or []
        message = f"Graph token refused: {error} {codes}".strip()
        if error in ("invalid_client", "unauthorized_client", "invalid_scope", "invalid_request"):
            raise PermanentProviderError(message + " (check client id, secret and consent)")
        raise TransientProviderError(message)


class _Bearer(requests.auth.AuthBase):
    """Sets the token on every attempt, so a retry after expiry carries a fresh one."""

    def __init__(self, tokens: Callable[[], str]):
        self.tokens = tokens

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.tokens()}"
        return request


# --------------------------------------------------------------------------- calls


@dataclass
class _Op:
    """One Graph call that may travel inside a $batch."""

    method: str
    url: str  # relative to the base URL, starting with "/"
    body: dict[str, Any] | None = None
    ok: tuple[int, ...] = ()  # statuses that are answers, not errors (404 on DELETE)
    read: bool = False  # ask for UTC times
    tag: Any = None
    status: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0

    @property
    def what(self) -> str:
        return f"{self.method} {self.url.split('?')[0]}"


class _Counter:
    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self.n += 1


def _json(response: requests.Response) -> dict[str, Any]:
    if not response.content:
        return {}
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _code(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code", "")) if isinstance(error, dict) else ""


class GraphCalendar:
    """CalendarProvider and PushChannels on Microsoft Graph (application permissions)."""

    name = "graph"

    def __init__(
        self,
        base_url: str,
        tokens: Callable[[], str],
        *,
        batch_size: int = BATCH_LIMIT,
        retry: Retry | None = None,
        session: requests.Session | None = None,
        subscription_minutes: int = 4230,
        page_size: int = 100,
        window_past: dt.timedelta = dt.timedelta(days=30),
        window_ahead: dt.timedelta = dt.timedelta(days=400),
        now: Callable[[], dt.datetime] | None = None,
        timeout: float = 30.0,
        verify: bool | str = True,
    ):
        if not 1 <= batch_size <= BATCH_LIMIT:
            raise ValueError(f"graph batch size must be 1..{BATCH_LIMIT}, got {batch_size}")
        self.base_url = base_url.rstrip("/")
        self.batch_size = batch_size
        self.retry = retry or Retry()
        self.session = session or PinnedSession(verify, timeout)
        self.subscription_minutes = subscription_minutes
        self.page_size = page_size
        self.window_past, self.window_ahead = window_past, window_ahead
        self.now = now or (lambda: dt.datetime.now(dt.UTC))
        self.timeout = timeout
        self._auth = _Bearer(tokens)
        self.requests = _Counter()  # every HTTP request this instance made (token calls apart)

    @classmethod
    def from_settings(
        cls, settings: Any, now: Callable[[], dt.datetime] | None = None
    ) -> GraphCalendar:
        missing = [
            name
            for name in ("graph_tenant_id", "graph_client_id", "graph_client_secret")
            if not getattr(settings, name)
        ]
        if missing:
            raise ConfigError(
                [
                    ConfigProblem(
                        settings.source,
                        name,
                        "missing: calendar_provider is graph",
                        "set it from the Entra ID app registration (see README, Microsoft 365)",
                    )
                    for name in missing
                ]
            )
        tokens = MsalTokens(
            settings.graph_tenant_id,
            settings.graph_client_id,
            settings.graph_client_secret,
            settings.graph_authority_host,
        )
        return cls(
            settings.graph_base_url,
            tokens,
            batch_size=max(1, min(settings.graph_batch_size, BATCH_LIMIT)),
            retry=retry_from_settings(settings),
            subscription_minutes=settings.graph_subscription_minutes,
            now=now,
        )

    # ------------------------------------------------------------------ plumbing

    def _request(
        self,
        method: str,
        url: str,
        *,
        ok: Sequence[int] = (),
        body: dict[str, Any] | None = None,
        read: bool = False,
        prefer: str | None = None,
        counter: _Counter | None = None,
        what: str = "",
    ) -> requests.Response:
        if not url.startswith(("http://", "https://")):
            url = self.base_url + url
        headers = {}
        if prefer or read:
            headers["Prefer"] = prefer or UTC_PREFER
        hooks = [self.requests] + ([counter] if counter else [])
        return send(
            self.session,
            self.retry,
            method,
            url,
            ok=ok,
            timeout=self.timeout,
            what=what or f"Graph {method} {urlparse(url).path}",
            auth=self._auth,
            headers=headers,
            json=body,
            hooks={"response": hooks},
        )

    def _execute(self, ops: Sequence[_Op], counter: _Counter | None = None) -> None:
        """Run the calls, ``batch_size`` per ``$batch``. An inner 429/5xx goes again, alone or
        with the other retried ones, after the longest wait they asked for; a lone call is
        sent directly. Other inner errors raise (the writes are idempotent, so the task can
        simply run again)."""
        pending = list(ops)
        while pending:
            later: list[_Op] = []
            waits: list[float] = []
            for group in chunks(pending, self.batch_size):
                if len(group) == 1:
                    self._single(group[0], counter)
                else:
                    self._batch(group, counter, later, waits)
            pending = later
            if pending:
                self.retry.sleep(max(waits))

    def _single(self, op: _Op, counter: _Counter | None) -> None:
        response = self._request(
            op.method, op.url, ok=op.ok, body=op.body, read=op.read, counter=counter, what=op.what
        )
        op.status, op.result = response.status_code, _json(response)

    def _batch(
        self, group: Sequence[_Op], counter: _Counter | None, later: list[_Op], waits: list[float]
    ) -> None:
        requests_ = []
        for i, op in enumerate(group):
            entry: dict[str, Any] = {"id": str(i), "method": op.method, "url": op.url}
            headers = {}
            if op.body is not None:
                entry["body"] = op.body
                headers["Content-Type"] = "application/json"
            if op.read:
                headers["Prefer"] = UTC_PREFER
            if headers:
                entry["headers"] = headers
            requests_.append(entry)
        response = self._request(
            "POST",
            "/$batch",
            body={"requests": requests_},
            counter=counter,
            what=f"Graph $batch of {len(group)}",
        )
        answers = {str(r.get("id")): r for r in _json(response).get("responses", [])}
        for i, op in enumerate(group):
            answer = answers.get(str(i), {"status": 0})
            status = int(answer.get("status", 0))
            body = answer.get("body")
            if 0 < status < 400 or status in op.ok:
                op.status, op.result = status, body if isinstance(body, dict) else {}
                continue
            headers = {k.lower(): v for k, v in (answer.get("headers") or {}).items()}
            failure = Failure(status, _code(body), headers.get("retry-after"))
            if failure.quota:
                raise TransientProviderError(f"{op.what}: quota exhausted ({failure.reason})")
            if not failure.retryable:
                raise PermanentProviderError(f"{op.what}: HTTP {status} {failure.reason}".strip())
            op.attempts += 1
            if op.attempts >= self.retry.max_attempts:
                raise TransientProviderError(
                    f"{op.what}: still failing after {op.attempts} attempts in $batch "
                    f"(HTTP {status} {failure.reason})".strip()
                )
            waits.append(self.retry.delay(op.attempts - 1, failure.retry_after))
            log.info("%s: HTTP %s inside $batch, sent again later", op.what, status)
            later.append(op)

    @staticmethod
    def _user(email: str) -> str:
        return "/users/" + quote(email.lower(), safe="@")

    def _event_url(self, calendar: str, event_id: str) -> str:
        return f"{self._user(calendar)}/events/{quote(event_id, safe='')}"

    # ------------------------------------------------------------------ writes

    def write_series(self, event: SeriesEvent) -> str:
        return self.write_many([event]).get(event.uid, event.provider_id or "")

    def write_many(self, events: Sequence[SeriesEvent]) -> dict[str, str]:
        latest = {e.uid: e for e in events}  # one write per UID: the last one given
        ids: dict[str, str] = {}
        # A cancel for a series whose id we never recorded: find it by our UID property.
        lookups = [
            _Op(
                "GET",
                f"{self._user(e.calendar)}/events?$filter="
                + quote(
                    "singleValueExtendedProperties/Any(ep: ep/id eq "
                    f"'{UID_PROPERTY}' and ep/value eq '{e.uid.replace(chr(39), chr(39) * 2)}')",
                    safe="",
                )
                + "&$select=id",
                tag=e,
            )
            for e in latest.values()
            if e.cancelled and not e.provider_id
        ]
        self._execute(lookups)
        found = {op.tag.uid: [v["id"] for v in op.result.get("value", [])] for op in lookups}
        primary: list[_Op] = []
        for e in latest.values():
            if e.cancelled:
                targets = [e.provider_id] if e.provider_id else found.get(e.uid, [])
                if targets:
                    ids[e.uid] = targets[0]
                primary += [
                    _Op("DELETE", self._event_url(e.calendar, t), ok=(404,), tag=e) for t in targets
                ]
            elif e.provider_id:
                primary.append(
                    _Op(
                        "PATCH",
                        self._event_url(e.calendar, e.provider_id),
                        body=event_body(e, create=False),
                        ok=(404,),
                        tag=e,
                    )
                )
            else:
                primary.append(
                    _Op(
                        "POST",
                        f"{self._user(e.calendar)}/events",
                        body=event_body(e, create=True),
                        tag=e,
                    )
                )
        self._execute(primary)
        recreate = []
        for op in primary:
            e = op.tag
            if op.method == "POST":
                ids[e.uid] = op.result["id"]
            elif op.method == "PATCH" and op.status == 404:
                # Deleted in Outlook: create it again, under a key of its own so Graph does
                # not hand back the deleted event for the original transactionId.
                log.info("series %s was gone from %s; creating it again", e.uid, e.calendar)
                recreate.append(
                    _Op(
                        "POST",
                        f"{self._user(e.calendar)}/events",
                        body=event_body(e, create=True, generation=f"{e.provider_id}"),
                        tag=e,
                    )
                )
            elif op.method == "PATCH":
                ids[e.uid] = op.result.get("id") or e.provider_id
        self._execute(recreate)
        for op in recreate:
            ids[op.tag.uid] = op.result["id"]
        self._write_overrides(
            [(e, ids[e.uid]) for e in latest.values() if not e.cancelled and e.overrides]
        )
        return ids

    def _write_overrides(self, items: Sequence[tuple[SeriesEvent, str]]) -> None:
        """Move or cancel single instances: find each by its original start, then PATCH or
        DELETE it; an instance already where it should be is left alone."""
        lookups = []
        for event, event_id in items:
            for o in event.overrides:
                lo = min(o.recurrence_id, o.start) - dt.timedelta(days=1)
                hi = max(o.recurrence_id, o.end) + dt.timedelta(days=1)
                lookups.append(
                    _Op(
                        "GET",
                        f"{self._event_url(event.calendar, event_id)}/instances"
                        f"?startDateTime={utc_param(lo)}&endDateTime={utc_param(hi)}",
                        read=True,
                        tag=(event, o),
                    )
                )
        self._execute(lookups)
        changes = []
        for op in lookups:
            event, o = op.tag
            instance = next(
                (
                    i
                    for i in op.result.get("value", [])
                    if i.get("originalStart")
                    and parse_offset(i["originalStart"]) == o.recurrence_id
                ),
                None,
            )
            if instance is None:
                log.info("instance %s of %s not found", o.recurrence_id.isoformat(), event.uid)
                continue
            url = self._event_url(event.calendar, instance["id"])
            if o.cancelled:
                changes.append(_Op("DELETE", url, ok=(404,)))
                continue
            where = (parse_datetime_tz(instance["start"]), parse_datetime_tz(instance["end"]))
            if where != (o.start, o.end):
                changes.append(
                    _Op(
                        "PATCH",
                        url,
                        body={
                            "start": {"dateTime": utc_text(o.start), "timeZone": "UTC"},
                            "end": {"dateTime": utc_text(o.end), "timeZone": "UTC"},
                        },
                    )
                )
        self._execute(changes)

    # ------------------------------------------------------------------ busy

    def busy(
        self, emails: Sequence[str], start: dt.datetime, end: dt.datetime
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        people = list(dict.fromkeys(e.lower() for e in emails))
        if not people or end <= start:
            return []
        url = f"{self._user(people[0])}/calendar/getSchedule"
        ops = [
            _Op(
                "POST",
                url,
                body={
                    "schedules": list(group),
                    "startTime": {"dateTime": utc_text(w0), "timeZone": "UTC"},
                    "endTime": {"dateTime": utc_text(w1), "timeZone": "UTC"},
                    "availabilityViewInterval": 30,
                },
                read=True,
            )
            for group in chunks(people, SCHEDULE_PEOPLE)
            for w0, w1 in split_window(start, end)
        ]
        self._execute(ops)
        out = []
        for op in ops:
            for schedule in op.result.get("value", []):
                if schedule.get("error"):
                    log.warning(
                        "getSchedule: no schedule for %s (%s)",
                        schedule.get("scheduleId"),
                        (schedule["error"] or {}).get("responseCode", "error"),
                    )
                    continue
                for item in schedule.get("scheduleItems") or ():
                    if item.get("status") not in BUSY_STATUSES:
                        continue
                    s, e = parse_datetime_tz(item["start"]), parse_datetime_tz(item["end"])
                    s, e = max(s, start), min(e, end)
                    if s < e:
                        out.append((s, e))
        return merge_intervals(out)

    # ------------------------------------------------------------------ sync

    def delta_url(self, calendar: str) -> str:
        now = self.now()
        return (
            f"{self.base_url}{self._user(calendar)}/calendarView/delta"
            f"?startDateTime={utc_param(now - self.window_past)}"
            f"&endDateTime={utc_param(now + self.window_ahead)}"
        )

    def sync(
        self,
        calendar: str,
        cursor: str | None,
        apply: Callable[[Sequence[EventState]], None],
    ) -> SyncOutcome:
        counter = _Counter()
        url = cursor or self.delta_url(calendar)
        resynced = False
        events = 0
        prefer = f"{UTC_PREFER}, odata.maxpagesize={self.page_size}"
        while True:
            response = self._request(
                "GET",
                url,
                ok=(400, 404, 410),
                prefer=prefer,
                counter=counter,
                what=f"Graph calendarView/delta of {calendar}",
            )
            if response.status_code >= 400:
                code = _code(_json(response))
                if response.status_code != 410 and code.lower() not in RESYNC_CODES:
                    raise PermanentProviderError(
                        f"Graph delta of {calendar}: HTTP {response.status_code} {code}".strip()
                    )
                if resynced:
                    raise TransientProviderError(
                        f"Graph delta of {calendar}: a fresh round was refused too "
                        f"(HTTP {response.status_code} {code})".strip()
                    )
                log.info("delta state of %s refused (%s); one fresh round", calendar, code or 410)
                resynced, url = True, self.delta_url(calendar)
                continue
            page = _json(response)
            states = [s for s in map(state_of, page.get("value", [])) if s is not None]
            if states:
                apply(states)
                events += len(states)
            if page.get("@odata.nextLink"):
                url = page["@odata.nextLink"]
                continue
            if not page.get("@odata.deltaLink"):
                raise PermanentProviderError(
                    f"Graph delta of {calendar}: a page with neither nextLink nor deltaLink"
                )
            return SyncOutcome(page["@odata.deltaLink"], resynced, counter.n, events)

    # ------------------------------------------------------------------ push

    def _expiry(self, ttl: dt.timedelta) -> str:
        ttl = min(ttl, dt.timedelta(minutes=self.subscription_minutes))
        return utc_param(self.now() + ttl)

    def watch(
        self,
        calendar: str,
        address: str,
        secret: str,
        ttl: dt.timedelta,
        channel_id: str,
        lifecycle_address: str | None = None,
    ) -> Channel:
        """Subscribe to the organizer's events. Graph calls ``address`` with a
        validationToken before it answers (the web app must echo it as text/plain); the
        ``channel_id`` hint is not used: Graph names subscriptions itself."""
        resource = f"/users/{calendar.lower()}/events"
        response = self._request(
            "POST",
            "/subscriptions",
            body={
                "changeType": "created,updated,deleted",
                "notificationUrl": address,
                "lifecycleNotificationUrl": lifecycle_address or address.rstrip("/") + "/lifecycle",
                "resource": resource,
                "expirationDateTime": self._expiry(ttl),
                "clientState": secret,
            },
            what=f"Graph subscribe to {calendar}",
        )
        data = _json(response)
        return Channel(
            id=data["id"],
            resource=data.get("resource", resource),
            secret=secret,
            expires_at=parse_offset(data["expirationDateTime"]),
        )

    def renew(self, calendar: str, channel: Channel, address: str, ttl: dt.timedelta) -> Channel:
        response = self._request(
            "PATCH",
            f"/subscriptions/{quote(channel.id, safe='')}",
            body={"expirationDateTime": self._expiry(ttl)},
            ok=(404,),
            what=f"Graph renew subscription of {calendar}",
        )
        if response.status_code == 404:
            log.info("subscription of %s was gone; subscribing again", calendar)
            return self.watch(calendar, address, channel.secret, ttl, channel.id)
        data = _json(response)
        return Channel(
            id=channel.id,
            resource=data.get("resource", channel.resource),
            secret=channel.secret,
            expires_at=parse_offset(data["expirationDateTime"]),
        )

    def stop(self, calendar: str, channel: Channel) -> None:
        self._request(
            "DELETE",
            f"/subscriptions/{quote(channel.id, safe='')}",
            ok=(404,),
            what=f"Graph delete subscription of {calendar}",
        )

    def reauthorize(self, channel: Channel) -> bool:
        """Answer a ``reauthorizationRequired`` lifecycle notice. False: the subscription is
        gone (subscribe again, then sync)."""
        response = self._request(
            "POST",
            f"/subscriptions/{quote(channel.id, safe='')}/reauthorize",
            ok=(404,),
            what="Graph reauthorize subscription",
        )
        return response.status_code != 404
