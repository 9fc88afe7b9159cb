"""A small, stateful fake of the Google Calendar v3 API, served over real HTTP on loopback.

It follows the documented behaviour of the calls the adapter makes, so tests and benchmarks can
assert both what ends up in the calendar and how many requests it took:

* ``POST /token``: the OAuth token endpoint. The JWT-bearer grant (service account with
  domain-wide delegation) is accepted without checking the signature; the user is the JWT's
  ``sub``. The refresh-token grant maps ``refresh_tokens[token]`` to a user. A user in
  ``denied`` gets that OAuth error (``invalid_grant``, ``unauthorized_client``).
* ``/calendar/v3/calendars/{id}/events``: insert (409 on a duplicate id), get, update (PUT),
  patch, delete (410 when already deleted), list (paging with ``maxResults``/``pageToken``;
  ``nextSyncToken`` on the last page only; a ``syncToken`` lists what changed since, deletions
  included; a token from before :meth:`expire_sync_tokens` gets 410 ``fullSyncRequired``),
  instances, watch. Exceptions of a recurring event (moved or cancelled instances) are items
  of their own, with ``recurringEventId`` and ``originalStartTime``; instance ids are
  ``{eventId}_{YYYYMMDDTHHMMSSZ}`` (original start in UTC), expanded in the event's zone.
  A deleted event keeps only its id and status; a cancelled instance also its
  ``recurringEventId`` and ``originalStartTime`` (as the Events reference documents).
* ``POST /calendar/v3/channels/stop`` (404 for an unknown channel), ``POST
  /calendar/v3/freeBusy`` (at most 50 calendars; all-day and out-of-office events are busy,
  transparent ones are not; declined invitations are free).
* ``POST /batch/calendar/v3``: multipart/mixed, each part an ``application/http`` call; each
  response part echoes the call's Content-ID as ``response-…``. Inner calls count as calls.

Faults: ``fail_ratio`` (a seeded RNG) answers API requests, top-level or inside a batch, with
429 ``rateLimitExceeded`` or 503 ``backendError`` and a ``Retry-After``; with
``fault_after_write`` half of the faulted writes are applied first (the answer is lost, not
the write). ``queue_failure`` scripts the next answers. The token endpoint never faults.

Run it in another process with ``python -m tests.fakes.google_calendar`` (prints ``READY
<url>``) and drive it through :class:`RemoteFake` (the ``/_fake/…`` control endpoints).
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import datetime as dt
import email.parser
import email.utils
import json
import random
import re
import secrets
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

from dateutil.rrule import rruleset, rrulestr

from tests.fakes import LoopbackServer

UTC = dt.UTC
ID_PATTERN = re.compile(r"^[a-v0-9]{5,1024}$")
MAX_PAGE = 2500
DEFAULT_PAGE = 250
MAX_BATCH = 1000
MAX_FREEBUSY_CALENDARS = 50
# Not a documented number: cal.com splits free/busy ranges into 90-day windows, and so must
# every client of this fake.
MAX_FREEBUSY_RANGE = dt.timedelta(days=90)
WRITES = {"events.insert", "events.update", "events.patch", "events.delete"}
REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized"}
REASONS.update({403: "Forbidden", 404: "Not Found", 409: "Conflict", 410: "Gone"})
REASONS.update({429: "Too Many Requests", 500: "Internal Server Error"})
REASONS.update({503: "Service Unavailable"})

Response = tuple[int, dict[str, str], bytes]


def now_utc() -> dt.datetime:
    return dt.datetime.now(UTC)


def rfc3339(value: dt.datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stamp(value: dt.datetime) -> str:
    """The instance-id suffix: the original start in UTC, basic format."""
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def localize(naive: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """Wall time in ``tz``; a time in a spring-forward gap moves past the gap."""
    aware = naive.replace(tzinfo=tz)
    back = aware.astimezone(UTC).astimezone(tz)
    return back if back.replace(tzinfo=None) != naive else aware


def encode_id(uid: str) -> str:
    """base32hex of the UID, lowercase, unpadded: how the adapter names its events."""
    return base64.b32hexencode(uid.encode()).decode().rstrip("=").lower()


def error(status: int, reason: str, message: str, domain: str = "global") -> Response:
    body = {
        "error": {
            "errors": [{"domain": domain, "reason": reason, "message": message}],
            "code": status,
            "message": message,
        }
    }
    return status, {"Content-Type": "application/json; charset=UTF-8"}, _dump(body)


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _ok(value: Any) -> Response:
    return 200, {"Content-Type": "application/json; charset=UTF-8"}, _dump(value)


@dataclass
class _Calendar:
    owner: str
    timezone: str = "UTC"
    events: dict[str, bytes] = field(default_factory=dict)  # id -> the stored JSON
    cancelled: dict[str, bool] = field(default_factory=dict)
    seq_of: dict[str, int] = field(default_factory=dict)  # id -> change number
    order: list[str] = field(default_factory=list)  # ids, first written first
    log_seqs: list[int] = field(default_factory=list)  # the change log, ascending
    log_ids: list[str] = field(default_factory=list)
    generation: int = 0  # bumped by expire_sync_tokens: older tokens get 410


class _ApiError(Exception):
    def __init__(self, response: Response):
        self.response = response


class FakeGoogleCalendar(LoopbackServer):
    """The fake's state and logic; :meth:`start` serves it on ``127.0.0.1``."""

    def __init__(
        self,
        *,
        seed: int = 0,
        fail_ratio: float = 0.0,
        retry_after: str = "1",
        fault_after_write: bool = False,
        send_sync_notice: bool = False,
    ):
        self.lock = threading.RLock()
        self.calendars: dict[str, _Calendar] = {}
        self.seq = 0
        self.tokens: dict[str, str] = {}  # access token -> user
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> user (authorized_user)
        self.denied: dict[str, str] = {}  # user -> OAuth error the token endpoint returns
        self.channels: dict[str, dict[str, Any]] = {}
        self.rng = random.Random(seed)
        self.fail_ratio = fail_ratio
        self.retry_after = retry_after
        self.fault_after_write = fault_after_write
        self.send_sync_notice = send_sync_notice
        self.failures: deque[tuple[str | None, int, str, str | None]] = deque()
        self.requests = 0  # every HTTP request (token, API, batch), not /_fake control calls
        self.counts: Counter[str] = Counter()  # per operation; inner batch calls included
        self.faults = 0
        self.log: list[tuple[str, str]] = []  # (operation, key), in order: watch/stop/…
        self.issued_sync_tokens: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ serving

    @property
    def api_endpoint(self) -> str:
        return self.url + "/calendar/v3/"

    # ------------------------------------------------------------------ counters

    def reset_counts(self) -> None:
        with self.lock:
            self.requests = 0
            self.faults = 0
            self.counts.clear()

    def events_per_calendar(self, include_deleted: bool = False) -> dict[str, int]:
        """Stored items per calendar (masters and exceptions)."""
        with self.lock:
            return {
                owner: sum(1 for c in cal.cancelled.values() if include_deleted or not c)
                for owner, cal in self.calendars.items()
            }

    def event(self, user: str, event_id: str) -> dict[str, Any] | None:
        with self.lock:
            raw = self._cal(user).events.get(event_id)
            return json.loads(raw) if raw else None

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "counts": dict(self.counts),
                "faults": self.faults,
                "events": self.events_per_calendar(),
            }

    # ------------------------------------------------------------------ test hooks

    def queue_failure(
        self,
        status: int,
        reason: str = "",
        retry_after: str | None = None,
        operation: str | None = None,
    ) -> None:
        """The next API call (of ``operation`` when given: "batch", "events.insert", …; a
        batch's inner calls included) gets this error instead of its answer."""
        default = {429: "rateLimitExceeded", 503: "backendError", 500: "backendError"}
        with self.lock:
            self.failures.append(
                (operation, status, reason or default.get(status, "error"), retry_after)
            )

    def deny(self, user: str, oauth_error: str = "unauthorized_client") -> None:
        """The token endpoint refuses this user (no domain-wide delegation, deleted user)."""
        with self.lock:
            self.denied[user.lower()] = oauth_error

    def expire_sync_tokens(self, user: str | None = None) -> None:
        """Every sync and page token issued so far (for one user or all) now gets 410."""
        with self.lock:
            for owner, cal in self.calendars.items():
                if user is None or owner == user.lower():
                    cal.generation += 1

    def set_timezone(self, user: str, zone_name: str) -> None:
        """The calendar's own zone (all-day events are days in it)."""
        with self.lock:
            self._cal(user).timezone = zone_name

    def expire_access_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def seed_event(
        self,
        user: str,
        *,
        start: dt.datetime | dt.date,
        end: dt.datetime | dt.date,
        summary: str = "busy",
        timezone: str = "UTC",
        recurrence: Sequence[str] = (),
        attendees: Iterable[str] = (),
        event_type: str = "default",
        transparency: str = "opaque",
        event_id: str | None = None,
        ical_uid: str | None = None,
    ) -> str:
        """Put an event straight into ``user``'s primary calendar; returns its id."""

        def when(value: dt.datetime | dt.date) -> dict[str, str]:
            if isinstance(value, dt.datetime):
                return {"dateTime": value.isoformat(), "timeZone": timezone}
            return {"date": value.isoformat()}

        body: dict[str, Any] = {
            "summary": summary,
            "start": when(start),
            "end": when(end),
            "eventType": event_type,
            "transparency": transparency,
            "attendees": [{"email": a} for a in attendees],
        }
        if recurrence:
            body["recurrence"] = list(recurrence)
        if event_id:
            body["id"] = event_id
        if ical_uid:
            body["iCalUID"] = ical_uid
        with self.lock:
            status, _, raw = self._insert(user.lower(), body)
        if status != 200:
            raise ValueError(raw.decode())
        return str(json.loads(raw)["id"])

    def seed_many(self, user: str, count: int, prefix: str = "checkin-seed") -> list[str]:
        """``count`` weekly series of ours, written straight into the store (benchmarks)."""
        user = user.lower()
        ids = []
        with self.lock:
            cal = self._cal(user)
            created = rfc3339(now_utc())
            for i in range(count):
                uid = f"{prefix}-{i}@bench.test"
                eid = encode_id(uid)
                start = dt.datetime(2026, 3, 3, 9, 0) + dt.timedelta(minutes=30 * (i % 16))
                event = {
                    "kind": "calendar#event",
                    "id": eid,
                    "status": "confirmed",
                    "created": created,
                    "summary": f"1:1 {i}",
                    "description": "Weekly check-in",
                    "creator": {"email": user},
                    "organizer": {"email": user, "self": True},
                    "start": self._when({"dateTime": start.isoformat(), "timeZone": "UTC"}),
                    "end": self._when(
                        {
                            "dateTime": (start + dt.timedelta(minutes=30)).isoformat(),
                            "timeZone": "UTC",
                        }
                    ),
                    "recurrence": ["RRULE:FREQ=WEEKLY;BYDAY=TU"],
                    "iCalUID": uid,
                    "sequence": 0,
                    "attendees": [
                        {"email": f"e{i}@bench.test", "responseStatus": "needsAction"},
                    ],
                    "extendedProperties": {"private": {"checkinUid": uid}},
                    "eventType": "default",
                }
                self._put(cal, event)
                ids.append(eid)
        return ids

    def respond(
        self,
        user: str,
        event_id: str,
        attendee: str,
        status: str,
        instance_start: dt.datetime | None = None,
    ) -> None:
        """An attendee answers (``accepted``, ``declined``, ``tentative``, ``needsAction``),
        for the whole series or, with ``instance_start`` (original start), one instance."""
        with self.lock:
            cal = self._cal(user)
            if instance_start is None:
                event = self._load(cal, event_id)
            else:
                event = self._instance(cal, event_id, instance_start)
            if event is None:
                raise KeyError(event_id)
            people = event.setdefault("attendees", [])
            for person in people:
                if person["email"].lower() == attendee.lower():
                    person["responseStatus"] = status
                    break
            else:
                people.append({"email": attendee, "responseStatus": status})
            self._put(cal, event)

    def move_instance(
        self,
        user: str,
        event_id: str,
        original_start: dt.datetime,
        new_start: dt.datetime,
        new_end: dt.datetime | None = None,
    ) -> str:
        """Someone drags one instance elsewhere: an exception. Returns the instance id."""
        with self.lock:
            cal = self._cal(user)
            event = self._instance(cal, event_id, original_start)
            if event is None:
                raise KeyError(f"{event_id} has no instance at {original_start}")
            length = _parse(event["end"], cal.timezone) - _parse(event["start"], cal.timezone)
            tz = event["start"].get("timeZone", cal.timezone)
            event["start"] = self._when({"dateTime": new_start.isoformat(), "timeZone": tz})
            end = new_end or new_start + length
            event["end"] = self._when({"dateTime": end.isoformat(), "timeZone": tz})
            self._put(cal, event)
            return str(event["id"])

    def edit_event(self, user: str, event_id: str, **fields: Any) -> dict[str, Any]:
        """The owner edits the event in Google's own UI (a PATCH of these fields)."""
        with self.lock:
            status, _, body = self._write(self._cal(user), event_id, fields, replace=False)
        if status != 200:
            raise KeyError(body.decode())
        return dict(json.loads(body))

    def cancel_instance(self, user: str, event_id: str, original_start: dt.datetime) -> str:
        with self.lock:
            cal = self._cal(user)
            event = self._instance(cal, event_id, original_start)
            if event is None:
                raise KeyError(f"{event_id} has no instance at {original_start}")
            self._put(cal, self._cancelled(event))
            return str(event["id"])

    def delete_event(self, user: str, event_id: str) -> None:
        with self.lock:
            status, _, body = self._delete(self._cal(user), event_id)
        if status != 204:
            raise KeyError(body.decode())

    def current_sync_token(self, user: str) -> str:
        """A sync token as of now, as if a full sync had just ended (benchmark set-up)."""
        with self.lock:
            return self._token_for(self._cal(user), self.seq)

    def change_events(self, user: str, k: int) -> int:
        """Benchmarks: the first attendee of ``k`` events (spread over the calendar) accepts."""
        with self.lock:
            cal = self._cal(user)
            if not cal.order or k <= 0:
                return 0
            step = max(len(cal.order) // k, 1)  # O(k): the fake's own cost must not follow n
            spread = cal.order[::step]
            chosen = [i for i in spread if "_" not in i and not cal.cancelled[i]][:k]
            for eid in chosen:
                event = self._load(cal, eid)
                assert event is not None
                if event.get("attendees"):
                    event["attendees"][0]["responseStatus"] = "accepted"
                self._put(cal, event)
            return len(chosen)

    def notify(self, channel_id: str, state: str = "exists") -> int:
        """POST a push notice for the channel to its address, as Google does; returns the
        receiver's HTTP status."""
        with self.lock:
            channel = self.channels[channel_id]
            channel["number"] += 1
            headers = {
                "X-Goog-Channel-ID": channel["id"],
                "X-Goog-Channel-Expiration": email.utils.formatdate(
                    int(channel["expiration"]) / 1000, usegmt=True
                ),
                "X-Goog-Resource-ID": channel["resourceId"],
                "X-Goog-Resource-URI": channel["resourceUri"],
                "X-Goog-Resource-State": state,
                "X-Goog-Message-Number": str(channel["number"]),
                "Content-Length": "0",
            }
            if channel.get("token"):
                headers["X-Goog-Channel-Token"] = channel["token"]
            address = channel["address"]
        request = urllib.request.Request(address, data=b"", headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    # ------------------------------------------------------------------ dispatch

    def serve(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        """One top-level HTTP request (headers with lower-case names)."""
        path, _, query = target.partition("?")
        if path.startswith("/_fake/"):
            return self._control(path, body)
        with self.lock:
            self.requests += 1
        if path == "/token" and method == "POST":
            with self.lock:
                return self._token(body)
        if path in ("/batch/calendar/v3", "/batch") and method == "POST":
            with self.lock:
                self.counts["batch"] += 1
                fault = self._fault("batch")
            if fault:
                return fault
            return self._batch(headers, body)
        return self.call(method, path, query, headers, body)

    def call(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        outer_auth: str | None = None,
    ) -> Response:
        """One API call, top-level or from a batch."""
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
        with self.lock:
            route = self._route(method, path)
            if route is None:
                return error(404, "notFound", f"fake: no route for {method} {path}")
            operation, args = route
            self.counts[operation] += 1
            user = self.tokens.get(_bearer(headers.get("authorization") or outer_auth))
            if user is None:
                return error(401, "authError", "Invalid Credentials")
            fault = self._fault(operation)
            if fault and not (operation in WRITES and self.fault_after_write and self._coin()):
                return fault
            try:
                data = json.loads(body) if body.strip() else {}
            except ValueError:
                return error(400, "parseError", "Parse Error")
            try:
                response = self._dispatch(operation, user, args, params, data)
            except _ApiError as exc:
                response = exc.response
            return fault or response

    def _route(self, method: str, path: str) -> tuple[str, list[str]] | None:
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] != ["calendar", "v3"]:
            return None
        rest = parts[2:]
        if rest == ["freeBusy"] and method == "POST":
            return "freebusy.query", []
        if rest == ["channels", "stop"] and method == "POST":
            return "channels.stop", []
        if len(rest) < 3 or rest[0] != "calendars" or rest[2] != "events":
            return None
        cal, tail = rest[1], rest[3:]
        if not tail:
            operation = {"GET": "events.list", "POST": "events.insert"}.get(method)
            return (operation, [cal]) if operation else None
        if tail == ["watch"] and method == "POST":
            return "events.watch", [cal]
        if len(tail) == 2 and tail[1] == "instances" and method == "GET":
            return "events.instances", [cal, tail[0]]
        if len(tail) == 1:
            by_method = {
                "GET": "events.get",
                "PUT": "events.update",
                "PATCH": "events.patch",
                "DELETE": "events.delete",
            }
            if method in by_method:
                return by_method[method], [cal, tail[0]]
        return None

    def _dispatch(
        self,
        operation: str,
        user: str,
        args: list[str],
        params: dict[str, str],
        data: dict[str, Any],
    ) -> Response:
        if operation == "freebusy.query":
            return self._freebusy(data)
        if operation == "channels.stop":
            return self._stop(data)
        cal = self._calendar_for(user, args[0])
        if operation == "events.list":
            return self._list(cal, params)
        if operation == "events.insert":
            return self._insert(cal.owner, data)
        if operation == "events.watch":
            return self._watch(cal, data)
        if operation == "events.instances":
            return self._instances(cal, args[1], params)
        event_id = args[1]
        if operation == "events.get":
            event = self._instance_or_event(cal, event_id)
            return _ok(event) if event else error(404, "notFound", "Not Found")
        if operation == "events.delete":
            return self._delete(cal, event_id)
        return self._write(cal, event_id, data, replace=operation == "events.update")

    def _fault(self, operation: str) -> Response | None:
        if operation == "token":
            return None
        queued = next((f for f in self.failures if f[0] in (None, operation)), None)
        if queued is not None:
            self.failures.remove(queued)
            _, status, reason, retry_after = queued
        elif self.fail_ratio and self.rng.random() < self.fail_ratio:
            status = self.rng.choice((429, 503))
            reason = "rateLimitExceeded" if status == 429 else "backendError"
            retry_after = self.retry_after
        else:
            return None
        self.faults += 1
        domain = "usageLimits" if status in (403, 429) else "global"
        message = {429: "Rate Limit Exceeded", 503: "Backend Error"}.get(status, reason)
        code, headers, body = error(status, reason, message, domain)
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        return code, headers, body

    def _coin(self) -> bool:
        return self.rng.random() < 0.5

    # ------------------------------------------------------------------ token endpoint

    def _token(self, body: bytes) -> Response:
        self.counts["token"] += 1
        form = {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode()).items()}
        grant = form.get("grant_type", "")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            try:
                payload = form["assertion"].split(".")[1]
                claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            except (KeyError, IndexError, ValueError):
                return 400, {}, _dump({"error": "invalid_grant", "error_description": "bad JWT"})
            user = str(claims.get("sub") or claims.get("iss") or "").lower()
        elif grant == "refresh_token":
            user = self.refresh_tokens.get(form.get("refresh_token", ""), "")
            if not user:
                return (
                    400,
                    {},
                    _dump(
                        {"error": "invalid_grant", "error_description": "Token has been revoked."}
                    ),
                )
        else:
            return 400, {}, _dump({"error": "unsupported_grant_type"})
        refused = self.denied.get(user)
        if refused:
            description = {
                "unauthorized_client": "Client is unauthorized to retrieve access tokens "
                "using this method, or client not authorized for any of the scopes requested.",
                "invalid_grant": "Invalid email or User ID",
            }.get(refused, refused)
            status = 401 if refused == "unauthorized_client" else 400
            return status, {}, _dump({"error": refused, "error_description": description})
        token = "fake-" + secrets.token_urlsafe(24)
        self.tokens[token] = user
        self._cal(user)
        body_out = {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}
        return 200, {"Content-Type": "application/json"}, _dump(body_out)

    # ------------------------------------------------------------------ store

    def _cal(self, user: str) -> _Calendar:
        user = user.lower()
        cal = self.calendars.get(user)
        if cal is None:
            cal = self.calendars[user] = _Calendar(user)
        return cal

    def _calendar_for(self, user: str, calendar_id: str) -> _Calendar:
        wanted = user if calendar_id == "primary" else calendar_id.lower()
        if wanted != user:
            raise _ApiError(error(404, "notFound", "Not Found"))
        return self._cal(user)

    def _put(self, cal: _Calendar, event: dict[str, Any]) -> None:
        self.seq += 1
        event["updated"] = rfc3339(now_utc())
        event["etag"] = f'"{self.seq}"'
        eid = event["id"]
        if eid not in cal.events:
            cal.order.append(eid)
        cal.events[eid] = _dump(event)
        cal.cancelled[eid] = event.get("status") == "cancelled"
        cal.seq_of[eid] = self.seq
        cal.log_seqs.append(self.seq)
        cal.log_ids.append(eid)

    @staticmethod
    def _load(cal: _Calendar, eid: str) -> dict[str, Any] | None:
        raw = cal.events.get(eid)
        return json.loads(raw) if raw is not None else None

    def _when(self, value: Mapping[str, Any], fallback_zone: str = "UTC") -> dict[str, str]:
        """A start/end as Google returns it: dateTime with its offset, plus timeZone."""
        if "date" in value and "dateTime" not in value:
            return {"date": str(value["date"])}
        if "dateTime" not in value:
            raise _ApiError(error(400, "required", "Missing time."))
        zone_name = value.get("timeZone")
        when = dt.datetime.fromisoformat(str(value["dateTime"]))
        if when.tzinfo is None:
            if not zone_name:
                raise _ApiError(
                    error(400, "timeRangeEmpty", "Missing time zone definition for start time.")
                )
            when = localize(when, ZoneInfo(zone_name))
        out = {"dateTime": when.astimezone(ZoneInfo(zone_name or fallback_zone)).isoformat()}
        if zone_name:
            out["timeZone"] = zone_name
        return out

    @staticmethod
    def _merge_attendees(
        new: list[dict[str, Any]], old: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """An update that leaves responseStatus out keeps each guest's answer."""
        known = {a["email"].lower(): a.get("responseStatus", "needsAction") for a in old}
        out = []
        for a in new:
            person = {k: v for k, v in a.items() if k in ("email", "displayName", "optional")}
            person["responseStatus"] = a.get("responseStatus") or known.get(
                a["email"].lower(), "needsAction"
            )
            out.append(person)
        return out

    def _insert(self, user: str, data: dict[str, Any]) -> Response:
        cal = self._cal(user)
        eid = str(data.get("id") or encode_id(secrets.token_hex(10)))
        if not ID_PATTERN.match(eid):
            return error(400, "invalid", "Invalid resource id value.")
        if eid in cal.events:
            return error(409, "duplicate", "The requested identifier already exists.")
        if data.get("recurrence") and "timeZone" not in data.get("start", {}):
            return error(400, "required", "Missing time zone definition for start time.")
        try:
            start = self._when(data.get("start", {}), cal.timezone)
            end = self._when(data.get("end", {}), cal.timezone)
        except _ApiError as exc:
            return exc.response
        now = rfc3339(now_utc())
        event = {
            "kind": "calendar#event",
            "id": eid,
            "status": data.get("status", "confirmed"),
            "created": now,
            "summary": data.get("summary", ""),
            "description": data.get("description", ""),
            "creator": {"email": user},
            "organizer": {"email": user, "self": True},
            "start": start,
            "end": end,
            "iCalUID": data.get("iCalUID") or f"{eid}@google.com",
            "sequence": int(data.get("sequence", 0)),
            "attendees": self._merge_attendees(data.get("attendees", []), []),
            "eventType": data.get("eventType", "default"),
            "transparency": data.get("transparency", "opaque"),
        }
        for key in ("recurrence", "extendedProperties", "reminders"):
            if key in data:
                event[key] = data[key]
        for person in event["attendees"]:
            self._cal(person["email"])
        self._put(cal, event)
        return _ok(event)

    def _write(self, cal: _Calendar, eid: str, data: dict[str, Any], replace: bool) -> Response:
        """PUT (``replace``) or PATCH of an event or of one instance (an exception)."""
        current = self._instance_or_event(cal, eid)
        if current is None:
            return error(404, "notFound", "Not Found")
        if current.get("status") == "cancelled" and "recurringEventId" in current:
            # Writing a cancelled instance again starts from what the rule makes there.
            original = _parse(current["originalStartTime"], cal.timezone)
            current = self._synthesized(cal, current["recurringEventId"], original) or current
        if replace and "recurringEventId" not in current:
            if "start" not in data or "end" not in data:
                return error(400, "required", "Missing end time.")
            base = {
                "kind": "calendar#event",
                "id": eid,
                "created": current.get("created", rfc3339(now_utc())),
                "creator": current.get("creator", {"email": cal.owner}),
                "organizer": {"email": cal.owner, "self": True},
                "iCalUID": current.get("iCalUID") or data.get("iCalUID") or f"{eid}@google.com",
                "sequence": current.get("sequence", 0),
                "status": "confirmed",
                "attendees": current.get("attendees", []),
                "eventType": current.get("eventType", "default"),
            }
        else:
            base = dict(current)
        if "sequence" in data and int(data["sequence"]) < int(current.get("sequence", 0)):
            return error(
                400,
                "invalid",
                "Invalid sequence value. The specified sequence number is below the current "
                "sequence number of the resource.",
            )
        event = dict(base)
        for key, value in data.items():
            if key in ("id", "iCalUID", "recurringEventId", "originalStartTime", "kind"):
                continue
            event[key] = value
        if "attendees" in data:
            event["attendees"] = self._merge_attendees(
                data["attendees"], current.get("attendees", [])
            )
        try:
            for key in ("start", "end"):
                if key in data:
                    event[key] = self._when(data[key], cal.timezone)
        except _ApiError as exc:
            return exc.response
        moved = any(event.get(k) != current.get(k) for k in ("start", "end", "recurrence"))
        if "sequence" not in data and moved:
            event["sequence"] = int(current.get("sequence", 0)) + 1
        if event.get("status") == "cancelled" and "recurringEventId" in event:
            event = self._cancelled(event)
        self._put(cal, event)
        return _ok(event)

    def _delete(self, cal: _Calendar, eid: str) -> Response:
        if "_" in eid and eid not in cal.events:
            current = self._instance_or_event(cal, eid)
            if current is None:
                return error(404, "notFound", "Not Found")
            self._put(cal, self._cancelled(current))
            return 204, {}, b""
        if eid not in cal.events:
            return error(404, "notFound", "Not Found")
        if cal.cancelled[eid]:
            return error(410, "deleted", "Resource has been deleted")
        event = self._load(cal, eid)
        assert event is not None
        self._put(cal, self._cancelled(event))
        prefix = eid + "_"
        for other in [i for i in cal.order if i.startswith(prefix) and not cal.cancelled[i]]:
            exception = self._load(cal, other)
            assert exception is not None
            self._put(cal, self._cancelled(exception))
        return 204, {}, b""

    @staticmethod
    def _cancelled(event: dict[str, Any]) -> dict[str, Any]:
        """What is left of a deleted event (id) or a cancelled instance (+ its origin)."""
        keep = ("kind", "id", "recurringEventId", "originalStartTime")
        out = {k: event[k] for k in keep if k in event}
        out["status"] = "cancelled"
        return out

    # ------------------------------------------------------------------ recurrence

    def _originals(
        self, cal: _Calendar, master: dict[str, Any], lo: dt.datetime, hi: dt.datetime
    ) -> Iterator[dt.datetime]:
        """Original starts (aware, in the event's zone) of a recurring event in [lo, hi)."""
        zone_name = master["start"].get("timeZone") or cal.timezone
        tz = ZoneInfo(zone_name)
        first = dt.datetime.fromisoformat(master["start"]["dateTime"]).astimezone(tz)
        naive_first = first.replace(tzinfo=None)
        rules = rruleset()
        for line in master.get("recurrence", []):
            name, _, value = line.partition(":")
            kind = name.split(";")[0].upper()
            if kind == "RRULE":
                rules.rrule(rrulestr(value, dtstart=naive_first))
            elif kind in ("EXDATE", "RDATE"):
                for item in value.split(","):
                    when = dt.datetime.strptime(item.rstrip("Z"), "%Y%m%dT%H%M%S")
                    if item.endswith("Z"):
                        when = when.replace(tzinfo=UTC).astimezone(tz).replace(tzinfo=None)
                    (rules.exdate if kind == "EXDATE" else rules.rdate)(when)
        if not master.get("recurrence"):
            rules.rdate(naive_first)
        pad = dt.timedelta(days=1)
        lo_local = lo.astimezone(tz).replace(tzinfo=None) - pad
        hi_local = hi.astimezone(tz).replace(tzinfo=None) + pad
        for naive in rules.between(lo_local, hi_local, inc=True):
            aware = localize(naive, tz)
            if lo <= aware < hi:
                yield aware

    def _instance(
        self, cal: _Calendar, master_id: str, original: dt.datetime
    ) -> dict[str, Any] | None:
        """The instance of ``master_id`` originally at ``original``: its exception, or the
        instance the rule makes. None when the rule has no instance there."""
        stored = self._load(cal, f"{master_id}_{stamp(original)}")
        return stored if stored is not None else self._synthesized(cal, master_id, original)

    def _synthesized(
        self, cal: _Calendar, master_id: str, original: dt.datetime
    ) -> dict[str, Any] | None:
        """The instance the rule makes at ``original``, ignoring any exception."""
        eid = f"{master_id}_{stamp(original)}"
        master = self._load(cal, master_id)
        if master is None or master.get("status") == "cancelled" or "recurrence" not in master:
            return None
        original = original.astimezone(UTC)
        hits = list(self._originals(cal, master, original, original + dt.timedelta(seconds=1)))
        if not hits:
            return None
        start = hits[0]
        length = _parse(master["end"], cal.timezone) - _parse(master["start"], cal.timezone)
        tz_name = master["start"].get("timeZone") or cal.timezone
        instance = {k: v for k, v in master.items() if k not in ("recurrence", "etag")}
        instance["id"] = eid
        instance["recurringEventId"] = master_id
        instance["originalStartTime"] = {"dateTime": start.isoformat(), "timeZone": tz_name}
        instance["start"] = {"dateTime": start.isoformat(), "timeZone": tz_name}
        end = (start.astimezone(UTC) + length).astimezone(start.tzinfo)
        instance["end"] = {"dateTime": end.isoformat(), "timeZone": tz_name}
        return instance

    def _instance_or_event(self, cal: _Calendar, eid: str) -> dict[str, Any] | None:
        stored = self._load(cal, eid)
        if stored is not None or "_" not in eid:
            return stored
        master_id, _, suffix = eid.rpartition("_")
        try:
            original = dt.datetime.strptime(suffix, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return None
        return self._instance(cal, master_id, original)

    def expand(
        self, user: str, event_id: str, lo: dt.datetime, hi: dt.datetime
    ) -> list[dict[str, Any]]:
        """The instances of a recurring event whose original start is in [lo, hi), as
        events.instances lists them (cancelled ones included)."""
        with self.lock:
            cal = self._cal(user)
            master = self._load(cal, event_id)
            if master is None or master.get("status") == "cancelled":
                return []
            out = []
            for original in self._originals(cal, master, lo, hi):
                instance = self._instance(cal, event_id, original)
                if instance is not None:
                    out.append(instance)
            return out

    def _instances(self, cal: _Calendar, eid: str, params: dict[str, str]) -> Response:
        master = self._load(cal, eid)
        if master is None:
            return error(404, "notFound", "Not Found")
        if master.get("status") == "cancelled":
            return error(410, "deleted", "Resource has been deleted")
        first = _parse(master["start"], cal.timezone)
        lo = _rfc(params["timeMin"]) if "timeMin" in params else first
        hi = _rfc(params["timeMax"]) if "timeMax" in params else lo + dt.timedelta(days=730)
        items = [
            i
            for i in self.expand(cal.owner, eid, lo, hi)
            if i.get("status") != "cancelled" or params.get("showDeleted") == "true"
        ]
        size = min(int(params.get("maxResults", DEFAULT_PAGE)), MAX_PAGE)
        offset = int(params.get("pageToken", "0") or 0)
        page = items[offset : offset + size]
        body: dict[str, Any] = {"kind": "calendar#events", "items": page}
        if offset + size < len(items):
            body["nextPageToken"] = str(offset + size)
        return _ok(body)

    # ------------------------------------------------------------------ list and sync tokens

    def _token_for(self, cal: _Calendar, seq: int) -> str:
        raw = f"s|{cal.owner}|{cal.generation}|{seq}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def _read_token(self, cal: _Calendar, token: str, kind: str) -> list[str]:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        except ValueError as exc:
            raise _ApiError(error(400, "invalid", f"Invalid {kind} token value.")) from exc
        parts = raw.split("|")
        if parts[0] != kind[0] or parts[1] != cal.owner:
            raise _ApiError(error(400, "invalid", f"Invalid {kind} token value."))
        if int(parts[2]) != cal.generation:
            raise _ApiError(
                error(
                    410,
                    "fullSyncRequired",
                    "Sync token is no longer valid, a full sync is required.",
                    "calendar",
                )
            )
        return parts[3:]

    def _list(self, cal: _Calendar, params: dict[str, str]) -> Response:
        if params.get("singleEvents") == "true":
            return error(400, "invalid", "fake: singleEvents=true is not implemented")
        sync_token = params.get("syncToken")
        if sync_token:
            banned = {"timeMin", "timeMax", "updatedMin", "q", "orderBy", "iCalUID"}
            if banned & params.keys():
                return error(400, "invalid", "Sync token cannot be combined with filters.")
            if params.get("showDeleted") == "false":
                return error(400, "invalid", "showDeleted cannot be false with a sync token.")
        show_deleted = bool(sync_token) or params.get("showDeleted") == "true"
        size = max(min(int(params.get("maxResults", DEFAULT_PAGE)), MAX_PAGE), 1)
        page_token = params.get("pageToken")
        if page_token:
            mode, pos_s, upto_s, since_s = self._read_token(cal, page_token, "page")
            pos, upto, since = int(pos_s), int(upto_s), int(since_s)
        elif sync_token:
            mode, upto = "i", self.seq
            (since_s,) = self._read_token(cal, sync_token, "sync")
            since = int(since_s)
            pos = bisect.bisect_right(cal.log_seqs, since)
        else:
            mode, pos, upto, since = "f", 0, self.seq, 0
        items: list[bytes] = []
        if mode == "f":
            while pos < len(cal.order) and len(items) < size:
                eid = cal.order[pos]
                pos += 1
                # Cancelled instances of a live series are listed even without showDeleted.
                if cal.cancelled[eid] and not show_deleted and "_" not in eid:
                    continue
                items.append(cal.events[eid])
            more = pos < len(cal.order)
        else:
            while pos < len(cal.log_seqs) and cal.log_seqs[pos] <= upto and len(items) < size:
                seq, eid = cal.log_seqs[pos], cal.log_ids[pos]
                pos += 1
                if cal.seq_of[eid] == seq:  # the latest change of this event
                    items.append(cal.events[eid])
            more = pos < len(cal.log_seqs) and cal.log_seqs[pos] <= upto
        head = {
            "kind": "calendar#events",
            "summary": cal.owner,
            "updated": rfc3339(now_utc()),
            "timeZone": cal.timezone,
            "accessRole": "owner",
        }
        if more:
            raw = f"p|{cal.owner}|{cal.generation}|{mode}|{pos}|{upto}|{since}"
            head["nextPageToken"] = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        else:
            head["nextSyncToken"] = self._token_for(cal, upto)
            self.issued_sync_tokens.append(head["nextSyncToken"])
        body = _dump(head)[:-1] + b',"items":[' + b",".join(items) + b"]}"
        return 200, {"Content-Type": "application/json; charset=UTF-8"}, body

    # ------------------------------------------------------------------ channels

    def _watch(self, cal: _Calendar, data: dict[str, Any]) -> Response:
        cid = str(data.get("id", ""))
        if not cid or data.get("type") not in ("web_hook", "webhook") or not data.get("address"):
            return error(400, "required", "id, type=web_hook and address are required")
        if cid in self.channels:
            return error(400, "channelIdNotUnique", f"Channel id {cid} not unique")
        ttl = int((data.get("params") or {}).get("ttl", 604800))
        expiration = now_utc() + dt.timedelta(seconds=min(ttl, 30 * 86400))
        resource = "res-" + encode_id(cal.owner)[:20]
        channel = {
            "kind": "api#channel",
            "id": cid,
            "resourceId": resource,
            "resourceUri": f"{self.url}/calendar/v3/calendars/{cal.owner}/events?alt=json",
            "expiration": str(int(expiration.timestamp() * 1000)),
        }
        if data.get("token"):
            channel["token"] = data["token"]
        self.channels[cid] = {**channel, "address": data["address"], "number": 0}
        self.log.append(("watch", cid))
        if self.send_sync_notice:
            threading.Thread(target=self.notify, args=(cid, "sync"), daemon=True).start()
        return _ok(channel)

    def _stop(self, data: dict[str, Any]) -> Response:
        cid = str(data.get("id", ""))
        channel = self.channels.get(cid)
        if channel is None or channel["resourceId"] != data.get("resourceId"):
            return error(404, "notFound", f"Channel '{cid}' not found for project")
        del self.channels[cid]
        self.log.append(("stop", cid))
        return 204, {}, b""

    # ------------------------------------------------------------------ free/busy

    def _freebusy(self, data: dict[str, Any]) -> Response:
        try:
            lo, hi = _rfc(data["timeMin"]), _rfc(data["timeMax"])
        except (KeyError, ValueError):
            return error(400, "required", "timeMin and timeMax are required")
        if hi <= lo:
            return error(400, "timeRangeEmpty", "The specified time range is empty.")
        if hi - lo > MAX_FREEBUSY_RANGE:
            return error(400, "timeRangeTooLong", "The requested time range is too long.")
        items = data.get("items", [])
        if len(items) > MAX_FREEBUSY_CALENDARS:
            return error(400, "tooManyCalendarsRequested", "Too many calendars requested.")
        calendars: dict[str, Any] = {}
        for item in items:
            who = str(item.get("id", "")).lower()
            if who not in self.calendars:
                calendars[who] = {"errors": [{"domain": "global", "reason": "notFound"}]}
                calendars[who]["busy"] = []
                continue
            busy = _merged(self._busy(who, lo, hi))
            calendars[who] = {
                "busy": [{"start": rfc3339(s), "end": rfc3339(e)} for s, e in busy],
            }
        body = {
            "kind": "calendar#freeBusy",
            "timeMin": rfc3339(lo),
            "timeMax": rfc3339(hi),
            "calendars": calendars,
        }
        return _ok(body)

    def _busy(self, who: str, lo: dt.datetime, hi: dt.datetime) -> Iterator[tuple[Any, Any]]:
        for cal in self.calendars.values():
            for eid, raw in cal.events.items():
                if cal.cancelled[eid] or "_" in eid:
                    continue
                event = json.loads(raw)
                if event.get("transparency") == "transparent":
                    continue
                if "recurrence" not in event:
                    if not _attends(event, who, cal.owner):
                        continue
                    start = _parse(event["start"], cal.timezone)
                    end = _parse(event["end"], cal.timezone)
                    if start < hi and end > lo:
                        yield max(start, lo), min(end, hi)
                    continue
                length = _parse(event["end"], cal.timezone) - _parse(event["start"], cal.timezone)
                for original in self._originals(cal, event, lo - length, hi):
                    instance = self._instance(cal, eid, original)
                    if instance is None or instance.get("status") == "cancelled":
                        continue
                    if not _attends(instance, who, cal.owner):
                        continue
                    start = _parse(instance["start"], cal.timezone)
                    end = _parse(instance["end"], cal.timezone)
                    if start < hi and end > lo:
                        yield max(start, lo), min(end, hi)

    # ------------------------------------------------------------------ batch

    def _batch(self, headers: Mapping[str, str], body: bytes) -> Response:
        return batch_response(self, headers, body, MAX_BATCH)

    # ------------------------------------------------------------------ control (other process)

    def _control(self, path: str, body: bytes) -> Response:
        data = json.loads(body) if body.strip() else {}
        name = path.removeprefix("/_fake/")
        if name == "stats":
            return _ok(self.stats())
        if name == "reset_counts":
            self.reset_counts()
        elif name == "seed_many":
            self.seed_many(data["user"], int(data["count"]), data.get("prefix", "checkin-seed"))
        elif name == "change_events":
            return _ok({"changed": self.change_events(data["user"], int(data["k"]))})
        elif name == "current_sync_token":
            return _ok({"token": self.current_sync_token(data["user"])})
        elif name == "expire_sync_tokens":
            self.expire_sync_tokens(data.get("user"))
        elif name == "configure":
            with self.lock:
                self.fail_ratio = float(data.get("fail_ratio", self.fail_ratio))
        else:
            return error(404, "notFound", f"no control {name}")
        return _ok({"ok": True})


# ---------------------------------------------------------------------- helpers


def batch_response(fake: Any, headers: Mapping[str, str], body: bytes, limit: int) -> Response:
    """A Google batch request (multipart/mixed of application/http parts), each inner call
    served by ``fake.call`` and counted; the Calendar and Gmail fakes share it."""
    content_type = headers.get("content-type", "")
    if not content_type.startswith("multipart/mixed"):
        return error(400, "invalid", "batch requests must be multipart/mixed")
    message = email.parser.BytesParser().parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = message.get_payload()
    if not isinstance(parts, list) or not parts or len(parts) > limit:
        return error(400, "invalid", f"a batch holds 1 to {limit} calls")
    outer_auth = headers.get("authorization")
    boundary = "batch_" + secrets.token_hex(12)
    out = []
    for part in parts:
        content_id = str(part.get("Content-ID", "")).strip().strip("<>")
        payload = part.get_payload()
        raw = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
        method, target, inner_headers, inner_body = _parse_http(raw)
        path, _, query = target.partition("?")
        with fake.lock:
            fake.counts["inner"] += 1
        status, resp_headers, resp_body = fake.call(
            method, path, query, inner_headers, inner_body, outer_auth
        )
        lines = [
            f"--{boundary}",
            "Content-Type: application/http",
            f"Content-ID: <response-{content_id}>",
            "",
            f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}",
        ]
        lines += [f"{k}: {v}" for k, v in resp_headers.items()]
        lines += [f"Content-Length: {len(resp_body)}", "", ""]
        out.append("\r\n".join(lines).encode() + resp_body + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return 200, {"Content-Type": f"multipart/mixed; boundary={boundary}"}, b"".join(out)


def _bearer(value: str | None) -> str:
    if not value or not value.lower().startswith("bearer "):
        return ""
    return value[7:].strip()


def _rfc(value: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(value)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _parse(value: Mapping[str, Any], zone_name: str) -> dt.datetime:
    """An event's start or end as an aware datetime (all-day: local midnight)."""
    if "dateTime" in value:
        return dt.datetime.fromisoformat(value["dateTime"])
    day = dt.date.fromisoformat(value["date"])
    tz = ZoneInfo(value.get("timeZone") or zone_name)
    return dt.datetime.combine(day, dt.time(), tz)


def _attends(event: Mapping[str, Any], who: str, owner: str) -> bool:
    """Busy for ``who``: the owner's own event, or an invitation not declined."""
    for person in event.get("attendees", []):
        if person.get("email", "").lower() == who:
            return person.get("responseStatus") != "declined"
    return owner == who


def _merged(intervals: Iterable[tuple[dt.datetime, dt.datetime]]) -> list[tuple[Any, Any]]:
    out: list[list[dt.datetime]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def _parse_http(raw: bytes) -> tuple[str, str, dict[str, str], bytes]:
    """An ``application/http`` request part: request line, headers, body."""
    cut = min((i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0), default=len(raw))
    sep = 4 if raw[cut : cut + 4] == b"\r\n\r\n" else 2
    head, body = raw[:cut].decode("latin-1"), raw[cut + sep :]
    lines = head.replace("\r\n", "\n").split("\n")
    method, target = lines[0].split(" ")[:2]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return method, target, headers, body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once, no delayed-ACK stalls
    fake: FakeGoogleCalendar

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out_headers, out = self.fake.serve(self.command, self.path, headers, body)
        self.send_response(status)
        for name, value in out_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


# ---------------------------------------------------------------------- another process


FakeGoogleCalendar.handler = _Handler  # defined below the fake, so set here


class RemoteFake:
    """The fake running in another process (``python -m tests.fakes.google_calendar``)."""

    def __init__(self, url: str, process: subprocess.Popen[bytes] | None = None):
        self.url = url
        self.process = process

    @property
    def api_endpoint(self) -> str:
        return self.url + "/calendar/v3/"

    @property
    def token_uri(self) -> str:
        return self.url + "/token"

    @classmethod
    @contextlib.contextmanager
    def spawn(cls, *args: str) -> Iterator[RemoteFake]:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.google_calendar", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(_ROOT),
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline().decode().strip()
            if not line.startswith("READY "):
                raise RuntimeError(f"the fake did not start: {line!r}")
            yield cls(line.split(" ", 1)[1], process)
        finally:
            if process.stdin:
                process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def control(self, name: str, **data: Any) -> Any:
        request = urllib.request.Request(
            f"{self.url}/_fake/{name}",
            data=json.dumps(data).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return dict(self.control("stats"))

    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until stdin closes; print ``READY <url>`` once listening."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fail-ratio", type=float, default=0.0)
    args = parser.parse_args(argv)
    fake = FakeGoogleCalendar(seed=args.seed, fail_ratio=args.fail_ratio)
    fake.start()
    print(f"READY {fake.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()
    fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


_KEY_PEM: str | None = None


def service_account_info(token_uri: str, email: str = "checkins@fake-project.iam") -> dict:
    """A service-account key (a fresh RSA key, made once per process) whose token endpoint is
    ``token_uri``: what ``google_credentials_file`` holds, for tests and benchmarks."""
    global _KEY_PEM
    if _KEY_PEM is None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _KEY_PEM = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    return {
        "type": "service_account",
        "project_id": "fake-project",
        "private_key_id": "fake-key-1",
        "private_key": _KEY_PEM,
        "client_email": email,
        "client_id": "100000000000000000001",
        "token_uri": token_uri,
    }
