"""Google Calendar (v3) through google-api-python-client: series, sync, free/busy, push.

Identity. An event's id is derived from our UID and can be turned back into it: base32hex
(RFC 4648 §7, alphabet ``0-9a-v``), lowercase, unpadded, of the UID's UTF-8 bytes. That is a
valid Google id (``[a-v0-9]{5,1024}``), so a retried insert answers 409 instead of making a
second event, and even a deleted item that carries nothing but its id maps to our series.
Only UIDs that start with ``checkin-`` are ours; a sync ignores everything else.

Calls. Each organizer gets its own discovery-built service (credentials: a service account
impersonating the organizer through domain-wide delegation, or an OAuth authorized-user
file). Every call goes through the shared :class:`~automation.adapters.http.Retry`: a whole
HTTP request that fails (connection, 5xx, 429) is retried there; calls inside a batch that
fail with 429, 503 or a rate-limit 403 are sent again in a later batch after the wait
``Retry.delay`` gives (never shorter than their Retry-After). The batch URI is built from the
configured endpoint: the library derives it from the discovery document's rootUrl and would
ignore ``api_endpoint``.

Writes. Creating a series is one call (insert with the derived id, ``sendUpdates=all``), and
``write_many`` packs up to ``batch_size`` calls into one HTTP batch request. A 409 on insert
means the event exists (an earlier attempt got through): it is replaced with PUT in a
follow-up batch. A series we wrote before (``provider_id`` set) starts with the PUT. Moved
or cancelled instances are patched by instance id ``{eventId}_{YYYYMMDDTHHMMSSZ}`` once the
series is written. A cancelled series is deleted; 404 and 410 count as done.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import google.auth.exceptions
import google_auth_httplib2
import httplib2
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
from googleapiclient.discovery import build
from googleapiclient.errors import BatchError, HttpError
from googleapiclient.http import BatchHttpRequest, HttpRequest

from automation.adapters.http import (
    Failure,
    ProviderCallFailed,
    Retry,
    chunks,
    retry_from_settings,
)
from automation.domain.cadence import localize, merge_intervals, zone
from automation.errors import (
    ConfigError,
    ConfigProblem,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
)
from automation.ports import (
    ACCEPTED,
    DECLINED,
    NEEDS_ACTION,
    TENTATIVE,
    Channel,
    EventState,
    OccurrenceOverride,
    SeriesEvent,
    SyncOutcome,
)

log = logging.getLogger("automation.google")

SCOPE = "https://www.googleapis.com/auth/calendar"
GOOGLE_BATCH_URI = "https://www.googleapis.com/batch/calendar/v3"
UID_PREFIX = "checkin-"
MAX_PAGE = 2500  # events.list maxResults ceiling
MAX_BATCH = 1000  # calls per batch request (the library refuses more)
FREEBUSY_CALENDARS = 50
FREEBUSY_WINDOW = dt.timedelta(days=90)
PARTSTAT = {
    "accepted": ACCEPTED,
    "declined": DECLINED,
    "tentative": TENTATIVE,
    "needsAction": NEEDS_ACTION,
}
SETUP_ERRORS = ("invalid_grant", "unauthorized_client", "access_denied")
SETUP_HINT = (
    "Google refused a token for {who} ({error}). With a service account, grant it domain-wide "
    f"delegation for the scope {SCOPE} in the Google Workspace Admin console (Security > API "
    "controls > Domain-wide delegation, using the service account's client id), and check "
    "that {who} is a user of that domain. With an OAuth authorized-user file, sign in again "
    "to make a new one."
)
# What a sync needs of each item; the rest is not downloaded.
LIST_FIELDS = (
    "nextPageToken,nextSyncToken,items(id,iCalUID,status,recurringEventId,originalStartTime,"
    "start,end,attendees(email,responseStatus),extendedProperties/private)"
)

Credentials = Any  # google.auth.credentials.Credentials
CredentialsFactory = Callable[[str], Credentials]


# --------------------------------------------------------------------------- ids


def event_id(uid: str) -> str:
    """Our UID as a Google event id (base32hex, lowercase, unpadded); reversible."""
    eid = base64.b32hexencode(uid.encode()).decode().rstrip("=").lower()
    if len(eid) > 1024:
        raise ValueError(f"UID too long for a Google event id: {uid[:40]}…")
    return eid


def uid_from_id(eid: str) -> str | None:
    """The UID an event id was derived from, or None when it was not derived by us."""
    text = eid.upper()
    try:
        raw = base64.b32hexdecode(text + "=" * (-len(text) % 8))
        return raw.decode()
    except (binascii.Error, ValueError):
        return None


def instance_id(eid: str, original_start: dt.datetime) -> str:
    return f"{eid}_{original_start.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}"


def endpoints(api_endpoint: str) -> tuple[str | None, str]:
    """(api_endpoint for the client, batch URI) from the configured endpoint, which may be a
    root (``http://host:port/``) or already end in ``calendar/v3/``."""
    if not api_endpoint:
        return None, GOOGLE_BATCH_URI
    root = api_endpoint.rstrip("/").removesuffix("/calendar/v3")
    return root + "/calendar/v3/", root + "/batch/calendar/v3"


# --------------------------------------------------------------------------- credentials


def credentials_from_file(path: str, token_uri: str = "", source: str = "settings") -> Any:
    """A factory organizer email -> credentials, from a service-account key (impersonating
    the organizer), an authorized-user file (one user for every organizer), or a folder of
    ``<email>.json`` files (per-user OAuth). ``token_uri`` overrides the file's."""
    if not path:
        raise ConfigError(
            ConfigProblem(
                source,
                "google_credentials_file",
                "empty while calendar_provider is google",
                "the path of a service-account key with domain-wide delegation, an OAuth "
                "authorized-user file, or a folder of <email>.json authorized-user files",
            )
        )
    where = Path(path)
    if where.is_dir():
        cache: dict[str, CredentialsFactory] = {}

        def per_user(email: str) -> Credentials:
            file = where / f"{email.lower()}.json"
            if not file.is_file():
                raise PermanentProviderError(
                    f"no Google credentials for {email}: expected {file} (authorized-user file)"
                )
            if email not in cache:
                cache[email] = _factory(_read_key(file, source), token_uri, str(file), source)
            return cache[email](email)

        return per_user
    return _factory(_read_key(where, source), token_uri, path, source)


def _read_key(path: Path, source: str) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            ConfigProblem(
                source,
                "google_credentials_file",
                f"cannot read {path}: {type(exc).__name__}",
                "a JSON key downloaded from Google Cloud",
            )
        ) from exc
    if not isinstance(info, dict):
        raise ConfigError(
            ConfigProblem(source, "google_credentials_file", f"{path} is not a JSON object")
        )
    return info


def _factory(info: dict[str, Any], token_uri: str, name: str, source: str) -> CredentialsFactory:
    if token_uri:
        info = {**info, "token_uri": token_uri}
    kind = info.get("type")
    if kind == "service_account":
        try:
            base = service_account.Credentials.from_service_account_info(info, scopes=[SCOPE])
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                ConfigProblem(source, "google_credentials_file", f"{name}: {exc}")
            ) from exc
        return lambda email: base.with_subject(email)
    if kind == "authorized_user":
        try:
            shared = user_credentials.Credentials.from_authorized_user_info(info, scopes=[SCOPE])
            if token_uri:  # from_authorized_user_info always sets Google's
                shared = shared.with_token_uri(token_uri)
        except ValueError as exc:
            raise ConfigError(
                ConfigProblem(source, "google_credentials_file", f"{name}: {exc}")
            ) from exc
        return lambda email: shared
    raise ConfigError(
        ConfigProblem(
            source,
            "google_credentials_file",
            f"{name}: type is {kind!r}",
            'a key of type "service_account" or "authorized_user"',
        )
    )


# --------------------------------------------------------------------------- errors


def failure_of(status: int, content: bytes | str | None, headers: Mapping[str, Any]) -> Failure:
    reason, message = "", ""
    try:
        body = json.loads(content or b"{}")
        err = body.get("error", {}) if isinstance(body, dict) else {}
        if isinstance(err, dict):
            errors = err.get("errors") or [{}]
            reason = str(errors[0].get("reason") or err.get("status") or "")
            message = str(err.get("message") or "")
    except (ValueError, AttributeError, TypeError):
        pass
    return Failure(status, reason, headers.get("retry-after"), message[:200])


def _auth_error(exc: google.auth.exceptions.RefreshError, who: str) -> Exception:
    """Token endpoint refusals: setup problems are permanent, the rest retried."""
    data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    code = str(data.get("error") or "")
    if not code:
        code = next((e for e in SETUP_ERRORS if e in str(exc.args[0] if exc.args else "")), "")
    if code in SETUP_ERRORS:
        return PermanentProviderError(SETUP_HINT.format(who=who, error=code))
    if exc.retryable:
        return ProviderCallFailed(Failure(0, "token endpoint unavailable"))
    return PermanentProviderError(f"Google token request for {who} failed ({code or 'error'})")


@dataclass
class _Op:
    """One call of a series write, and how often it was tried."""

    event: SeriesEvent
    kind: str  # insert | update | delete | override
    body: dict[str, Any] | None = None  # the event resource, for insert and update
    override: OccurrenceOverride | None = None
    attempt: int = 0
    switches: int = 0  # insert <-> update flips (409 / 404), bounded

    @property
    def organizer(self) -> str:
        return self.event.calendar


@dataclass
class _Result:
    ok: bool
    failure: Failure | None = None


@dataclass
class Counters:
    """What the adapter sent: HTTP requests (batch = 1) and API calls (batch = its calls)."""

    http_requests: int = 0
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, requests: int, calls: int) -> None:
        with self.lock:
            self.http_requests += requests
            self.calls += calls


class _SyncTokenGone(Exception):
    """410 on a syncToken: the caller starts a full sync."""


# --------------------------------------------------------------------------- the adapter


class GoogleCalendar:
    """CalendarProvider and PushChannels for Google Calendar."""

    name = "google"

    def __init__(
        self,
        credentials: CredentialsFactory,
        *,
        endpoint: str = "",
        batch_size: int = 50,
        page_size: int = MAX_PAGE,
        retry: Retry | None = None,
        timeout: float = 60.0,
    ):
        self._credentials = credentials
        self._api_endpoint, self._batch_uri = endpoints(endpoint)
        self.batch_size = max(1, min(batch_size, MAX_BATCH))
        self.page_size = max(1, min(page_size, MAX_PAGE))
        self.retry = retry or Retry()
        self.timeout = timeout
        self.counters = Counters()
        self._lock = threading.Lock()
        self._services: dict[str, Any] = {}
        self._resources: dict[tuple[str, str], Any] = {}
        self._creds: dict[str, Credentials] = {}
        self._refresh_locks: dict[str, threading.Lock] = {}
        self._local = threading.local()

    @classmethod
    def from_settings(cls, settings: Any) -> GoogleCalendar:
        return cls(
            credentials_from_file(
                settings.google_credentials_file,
                settings.google_token_uri,
                getattr(settings, "source", "settings"),
            ),
            endpoint=settings.google_api_endpoint,
            batch_size=settings.google_batch_size,
            retry=retry_from_settings(settings),
        )

    # ------------------------------------------------------------------ plumbing

    def _service(self, organizer: str) -> Any:
        """The discovery-built service of one organizer (built once, then cached)."""
        organizer = organizer.lower()
        with self._lock:
            service = self._services.get(organizer)
            if service is None:
                creds = self._credentials(organizer)
                options = {"api_endpoint": self._api_endpoint} if self._api_endpoint else None
                service = build(
                    "calendar",
                    "v3",
                    credentials=creds,
                    static_discovery=True,
                    cache_discovery=False,
                    client_options=options,
                )
                self._services[organizer] = service
                self._creds[organizer] = creds
                self._refresh_locks[organizer] = threading.Lock()
        return service

    def _resource(self, organizer: str, name: str) -> Any:
        """``service.events()`` and friends, made once: each call of those builds every
        method of the resource anew (docstrings included), which costs milliseconds."""
        key = (organizer.lower(), name)
        resource = self._resources.get(key)
        if resource is None:
            resource = getattr(self._service(organizer), name)()
            with self._lock:
                resource = self._resources.setdefault(key, resource)
        return resource

    def _http(self, organizer: str) -> google_auth_httplib2.AuthorizedHttp:
        """This thread's authorized transport for the organizer (httplib2 is not
        thread-safe, so each thread has its own connection, shared by its organizers)."""
        organizer = organizer.lower()
        self._service(organizer)
        https = getattr(self._local, "https", None)
        if https is None:
            https = self._local.https = {}
            self._local.raw = httplib2.Http(timeout=self.timeout)
        http = https.get(organizer)
        if http is None:
            http = https[organizer] = google_auth_httplib2.AuthorizedHttp(
                self._creds[organizer], http=self._local.raw
            )
        return http

    def _fresh_token(self, organizer: str) -> None:
        """Make sure the organizer's access token is valid before its calls go into a
        batch (a batch part carries the token it was serialized with)."""
        organizer = organizer.lower()
        http = self._http(organizer)
        creds = self._creds[organizer]
        with self._refresh_locks[organizer]:
            if not creds.valid:
                with self._translated(organizer):
                    creds.refresh(google_auth_httplib2.Request(http.http))

    @contextlib.contextmanager
    def _translated(self, who: str) -> Iterator[None]:
        """Library and transport exceptions as the retry rules see them."""
        try:
            yield
        except HttpError as exc:
            raise ProviderCallFailed(
                failure_of(int(exc.resp.status), exc.content, exc.resp), exc
            ) from exc
        except google.auth.exceptions.RefreshError as exc:
            raise _auth_error(exc, who) from exc
        except (
            google.auth.exceptions.TransportError,
            httplib2.HttpLib2Error,
            OSError,  # connection refused or reset, timeouts
            BatchError,
        ) as exc:
            raise ProviderCallFailed(Failure(0, type(exc).__name__)) from exc

    def _execute(
        self,
        organizer: str,
        request: HttpRequest,
        what: str,
        ok: Sequence[int] = (),
    ) -> Any:
        """One API call under the retry rules; a status in ``ok`` returns None."""
        http = self._http(organizer)

        def call() -> Any:
            self.counters.add(1, 1)
            try:
                with self._translated(organizer):
                    return request.execute(http=http)
            except ProviderCallFailed as exc:
                if exc.failure.status in ok:
                    return None
                raise

        return self.retry.run(call, what)

    # ------------------------------------------------------------------ writes

    def write_series(self, event: SeriesEvent) -> str:
        return self.write_many([event])[event.uid]

    def write_many(self, events: Sequence[SeriesEvent]) -> dict[str, str]:
        """Write every series: one call each to create, batched ``batch_size`` to an HTTP
        request. Raises after trying all of them when some could not be written (the
        exception's ``written`` holds the ids of the rest)."""
        latest = {e.uid: e for e in events}  # one write per series: the last one given
        written: dict[str, str] = {}
        failed: dict[str, tuple[bool, str]] = {}  # uid -> (permanent, why)
        pending = []
        for event in latest.values():
            try:
                body = None if event.cancelled else self._body(event)
                self._service(event.calendar)
            except (ValueError, PermanentProviderError) as exc:
                # An unknown zone, a UID too long, no credentials for this organizer: the
                # data or the set-up must change first. The other series go ahead.
                failed[event.uid] = (True, str(exc))
                continue
            pending.append(_Op(event, self._first_kind(event), body))
        while pending:
            results = self._send(pending)
            following: list[_Op] = []
            wait, waiting = 0.0, 0
            for op, result in zip(pending, results, strict=True):
                nxt = self._next(op, result, written, failed)
                following += nxt
                if nxt and nxt[0] is op and result.failure is not None:  # retried as is
                    delay = self.retry.delay(op.attempt - 1, result.failure.retry_after)
                    wait, waiting = max(wait, delay), waiting + 1
            if waiting:
                log.info("Google: %d calls asked to wait; again in %.1f s", waiting, wait)
                self.retry.retried(1, wait, "google")
                self.retry.sleep(wait)
            pending = following
        for uid in failed:
            written.pop(uid, None)
        if failed:
            permanent = any(p for p, _ in failed.values())
            shown = "; ".join(f"{uid}: {why}" for uid, (_, why) in list(failed.items())[:5])
            more = f" (+{len(failed) - 5} more)" if len(failed) > 5 else ""
            kind = PermanentProviderError if permanent else TransientProviderError
            exc = kind(f"Google: {len(failed)} of {len(latest)} series not written: {shown}{more}")
            exc.written = dict(written)  # type: ignore[attr-defined]
            raise exc
        return written

    @staticmethod
    def _first_kind(event: SeriesEvent) -> str:
        if event.cancelled:
            return "delete"
        return "update" if event.provider_id else "insert"

    def _next(
        self,
        op: _Op,
        result: _Result,
        written: dict[str, str],
        failed: dict[str, tuple[bool, str]],
    ) -> list[_Op]:
        """What to send after this call's answer (the op again, another op, or nothing)."""
        uid, eid = op.event.uid, event_id(op.event.uid)
        failure = result.failure
        status = failure.status if failure else 200
        if result.ok or (op.kind == "delete" and status in (404, 410)):
            if op.kind in ("insert", "update"):
                written[uid] = eid
                return [_Op(op.event, "override", override=o) for o in op.event.overrides]
            if op.kind == "delete":
                written[uid] = eid
            return []
        assert failure is not None
        if op.kind == "override" and status in (404, 410):
            log.warning("Google: %s has no instance at %s; skipped", uid, op.override)
            return []
        if (
            op.kind == "update"
            and status == 400
            and "sequence" in failure.message.lower()
            and op.body is not None
            and "sequence" in op.body
        ):
            # Google's sequence is ahead of ours (someone edited the event there): let it
            # keep its own rather than refuse our change.
            body = {k: v for k, v in op.body.items() if k != "sequence"}
            return [_Op(op.event, "update", body, switches=op.switches)]
        flips = {("insert", 409): "update", ("update", 404): "insert"}
        if (op.kind, status) in flips and op.switches < 3:
            body = self._body(op.event)  # from scratch: with our sequence again
            return [_Op(op.event, flips[op.kind, status], body, switches=op.switches + 1)]
        if failure.retryable and op.attempt + 1 < self.retry.max_attempts:
            op.attempt += 1
            return [op]
        permanent = not (failure.retryable or failure.quota)
        reason = f"{op.kind} HTTP {failure.status} {failure.reason}".strip()
        if failure.status == 401 and failure.message:
            reason = failure.message
        failed[uid] = (permanent or failed.get(uid, (False, ""))[0], reason)
        return []

    def _body(self, event: SeriesEvent) -> dict[str, Any]:
        tz = zone(event.timezone)
        start = localize(event.dtstart_local, tz)
        end = (start.astimezone(dt.UTC) + dt.timedelta(minutes=event.duration_minutes)).astimezone(
            tz
        )
        rule = event.rrule.removeprefix("RRULE:")
        return {
            "id": event_id(event.uid),
            "iCalUID": event.uid,
            "status": "confirmed",
            "summary": event.summary,
            "description": event.description,
            "start": {"dateTime": _wall(start), "timeZone": event.timezone},
            "end": {"dateTime": _wall(end), "timeZone": event.timezone},
            "recurrence": [f"RRULE:{rule}"],
            "attendees": [{"email": a.email, "displayName": a.name} for a in event.attendees],
            "sequence": event.sequence,
            "extendedProperties": {"private": {"checkinUid": event.uid}},
            "guestsCanModify": False,
        }

    def _request(self, op: _Op) -> HttpRequest:
        events = self._resource(op.organizer, "events")
        eid = event_id(op.event.uid)
        common = {"calendarId": "primary", "sendUpdates": "all"}
        if op.kind == "insert":
            return events.insert(body=op.body, **common)
        if op.kind == "update":
            return events.update(eventId=eid, body=op.body, **common)
        if op.kind == "delete":
            return events.delete(eventId=eid, **common)
        o = op.override
        assert o is not None
        if o.cancelled:
            body: dict[str, Any] = {"status": "cancelled"}
        else:
            tz = op.event.timezone
            body = {
                "status": "confirmed",
                "start": {"dateTime": _wall(o.start.astimezone(zone(tz))), "timeZone": tz},
                "end": {"dateTime": _wall(o.end.astimezone(zone(tz))), "timeZone": tz},
            }
        return events.patch(eventId=instance_id(eid, o.recurrence_id), body=body, **common)

    def _send(self, ops: Sequence[_Op]) -> list[_Result]:
        """Send the calls, ``batch_size`` per HTTP request (one call alone goes direct).
        An organizer Google gives no token (no delegation, deleted user) fails alone."""
        refused = self._authorize({op.organizer for op in ops})
        sendable = [op for op in ops if op.organizer not in refused]
        sent: list[_Result] = []
        for chunk in chunks(sendable, self.batch_size):
            sent += self._send_one(chunk[0]) if len(chunk) == 1 else self._batch(chunk)
        answers = iter(sent)
        return [
            _Result(False, refused[op.organizer]) if op.organizer in refused else next(answers)
            for op in ops
        ]

    def _authorize(self, organizers: set[str]) -> dict[str, Failure]:
        """A valid token for each organizer; the permanent refusals, by organizer."""
        refused = {}
        for organizer in sorted(organizers):
            self._service(organizer)
            if self._creds[organizer.lower()].valid:
                continue  # no request needed
            try:
                self.retry.run(lambda o=organizer: self._fresh_token(o), "Google token")
            except PermanentProviderError as exc:
                refused[organizer] = Failure(401, "token refused", message=str(exc))
        return refused

    def _send_one(self, op: _Op) -> list[_Result]:
        request = self._request(op)
        http = self._http(op.organizer)
        holder: list[_Result] = []

        def call() -> None:
            self.counters.add(1, 1)
            with self._translated(op.organizer):
                try:
                    request.execute(http=http)
                    holder[:] = [_Result(True)]
                except HttpError as exc:
                    failure = failure_of(int(exc.resp.status), exc.content, exc.resp)
                    holder[:] = [_Result(False, failure)]

        self.retry.run(call, f"Google events.{op.kind}")
        return holder

    def _batch(self, chunk: Sequence[_Op]) -> list[_Result]:
        outcome: dict[str, _Result] = {}

        def answered(request_id: str, response: Any, exception: Exception | None) -> None:
            if exception is None:
                outcome[request_id] = _Result(True)
            elif isinstance(exception, HttpError):
                failure = failure_of(int(exception.resp.status), exception.content, exception.resp)
                outcome[request_id] = _Result(False, failure)
            else:
                outcome[request_id] = _Result(False, Failure(0, type(exception).__name__))

        first = chunk[0].organizer
        organizers = sorted({op.organizer for op in chunk})

        def call() -> None:
            for organizer in organizers:  # each part carries its organizer's token
                self._fresh_token(organizer)
            outcome.clear()
            batch = BatchHttpRequest(callback=answered, batch_uri=self._batch_uri)
            for i, op in enumerate(chunk):
                batch.add(self._request(op), request_id=str(i))
            self.counters.add(1, len(chunk))
            with self._translated(first):
                batch.execute(http=self._http(first))

        self.retry.run(call, f"Google batch of {len(chunk)}")
        missing = _Result(False, Failure(0, "no answer in batch"))
        return [outcome.get(str(i), missing) for i in range(len(chunk))]

    # ------------------------------------------------------------------ sync

    def sync(
        self,
        calendar: str,
        cursor: str | None,
        apply: Callable[[Sequence[EventState]], None],
    ) -> SyncOutcome:
        """events.list on the organizer's primary calendar from ``cursor`` (a syncToken),
        page by page; ``nextSyncToken`` (on the last page) is the new cursor. A 410 on the
        token means one full sync from scratch."""
        http = self._http(calendar)
        requests = events = 0
        full_resync = False
        token, page = cursor, None
        while True:
            params: dict[str, Any] = {
                "calendarId": "primary",
                "showDeleted": True,
                "singleEvents": False,
                "maxResults": self.page_size,
                "fields": LIST_FIELDS,
            }
            if token:
                params["syncToken"] = token
            if page:
                params["pageToken"] = page
            request = self._resource(calendar, "events").list(**params)

            def call(request: HttpRequest = request, token: str | None = token) -> Any:
                nonlocal requests
                requests += 1
                self.counters.add(1, 1)
                with self._translated(calendar):
                    try:
                        return request.execute(http=http)
                    except HttpError as exc:
                        if int(exc.resp.status) == 410 and token:
                            raise _SyncTokenGone from exc
                        raise

            try:
                body = self.retry.run(call, "Google events.list")
            except _SyncTokenGone:
                if full_resync:
                    raise PermanentProviderError("Google answered 410 during a full sync") from None
                log.info("Google: sync token for %s expired; full sync", calendar)
                full_resync, token, page = True, None, None
                continue
            states = [s for s in map(_state, body.get("items", ())) if s is not None]
            apply(states)  # once per page, even empty: memory stays one page deep
            events += len(states)
            page = body.get("nextPageToken")
            if not page:
                new_cursor = body.get("nextSyncToken")
                if not new_cursor:
                    log.warning("Google: no nextSyncToken for %s; next sync is full", calendar)
                return SyncOutcome(new_cursor, full_resync, requests, events)

    # ------------------------------------------------------------------ free/busy

    def busy(
        self, emails: Sequence[str], start: dt.datetime, end: dt.datetime
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        """freebusy.query for at most 50 calendars and 90 days per call; merged UTC
        intervals. Asked as the first person (with delegation anyone in the domain can
        see a colleague's free/busy)."""
        people = list(dict.fromkeys(e.lower() for e in emails))
        start, end = start.astimezone(dt.UTC), end.astimezone(dt.UTC)
        if not people or end <= start:
            return []
        out: list[tuple[dt.datetime, dt.datetime]] = []
        for group in chunks(people, FREEBUSY_CALENDARS):
            for lo, hi in _windows(start, end, FREEBUSY_WINDOW):
                body = {
                    "timeMin": _rfc3339(lo),
                    "timeMax": _rfc3339(hi),
                    "timeZone": "UTC",
                    "items": [{"id": e} for e in group],
                }
                answer = self._execute(
                    people[0],
                    self._resource(people[0], "freebusy").query(body=body),
                    "Google freebusy.query",
                )
                for who, info in (answer.get("calendars") or {}).items():
                    if info.get("errors"):
                        reasons = ",".join(e.get("reason", "?") for e in info["errors"])
                        log.warning("Google: no free/busy for %s (%s)", who, reasons)
                    for item in info.get("busy", ()):
                        b_start, b_end = _aware(item["start"]), _aware(item["end"])
                        if b_start < hi and b_end > lo:
                            out.append((max(b_start, lo), min(b_end, hi)))
        return merge_intervals(out)

    # ------------------------------------------------------------------ push channels

    def watch(
        self, calendar: str, address: str, secret: str, ttl: dt.timedelta, channel_id: str
    ) -> Channel:
        body = {
            "id": channel_id,
            "type": "web_hook",
            "address": address,
            "token": secret,
            "params": {"ttl": str(int(ttl.total_seconds()))},
        }
        try:
            answer = self._execute(
                calendar,
                self._resource(calendar, "events").watch(calendarId="primary", body=body),
                "Google watch",
            )
        except PermanentProviderError as exc:
            if "channelIdNotUnique" not in str(exc):
                raise
            # The id is fresh, so an earlier attempt of this very call opened the channel and
            # its answer was lost (a retried 503): its resource id is unknown here. It is left
            # to expire (the web app stops a channel it does not know at its first notice);
            # open another under a new id.
            log.info("Google watch: channel %s exists (answer lost); opening another", channel_id)
            body = {**body, "id": str(uuid.uuid4())}
            answer = self._execute(
                calendar,
                self._resource(calendar, "events").watch(calendarId="primary", body=body),
                "Google watch",
            )
        expiration = answer.get("expiration")
        expires = (
            dt.datetime.fromtimestamp(int(expiration) / 1000, dt.UTC)
            if expiration
            else dt.datetime.now(dt.UTC) + ttl
        )
        return Channel(str(answer["id"]), str(answer["resourceId"]), secret, expires)

    def renew(self, calendar: str, channel: Channel, address: str, ttl: dt.timedelta) -> Channel:
        """A new channel first, then stop the old one (Google channels cannot be extended).
        If stopping fails, the old channel is left to expire: the new one is what counts."""
        fresh = self.watch(calendar, address, channel.secret, ttl, str(uuid.uuid4()))
        try:
            self.stop(calendar, channel)
        except ProviderError as exc:
            log.warning(
                "Google: old channel %s not stopped (%s); it expires at %s",
                channel.id,
                type(exc).__name__,
                channel.expires_at.isoformat(),
            )
        return fresh

    def stop(self, calendar: str, channel: Channel) -> None:
        body = {"id": channel.id, "resourceId": channel.resource}
        self._execute(
            calendar,
            self._resource(calendar, "channels").stop(body=body),
            "Google channels.stop",
            (404,),
        )


# --------------------------------------------------------------------------- mapping


def _state(item: Mapping[str, Any]) -> EventState | None:
    """An events.list item as an EventState, or None when it is not ours."""
    cancelled = item.get("status") == "cancelled"
    responses = {
        a["email"].lower(): PARTSTAT.get(a.get("responseStatus", ""), NEEDS_ACTION)
        for a in item.get("attendees", ())
        if a.get("email")
    }
    master = item.get("recurringEventId")
    if master:
        uid = _our_uid(item.get("iCalUID")) or _our_uid(uid_from_id(master))
        original = item.get("originalStartTime")
        if uid is None or not original:
            return None
        recurrence_id = _when(original)
        if recurrence_id is None:
            return None
        return EventState(
            uid=uid,
            series_provider_id=master,
            recurrence_id=recurrence_id,
            removed=cancelled,
            start=_when(item.get("start")),
            end=_when(item.get("end")),
            responses=responses,
        )
    private = (item.get("extendedProperties") or {}).get("private") or {}
    uid = (
        _our_uid(item.get("iCalUID"))
        or _our_uid(private.get("checkinUid"))
        or _our_uid(uid_from_id(str(item.get("id", ""))))
    )
    if uid is None:
        return None
    return EventState(
        uid=uid,
        series_provider_id=item.get("id"),
        removed=cancelled,
        responses=responses,
    )


def _our_uid(uid: str | None) -> str | None:
    return uid if uid and uid.startswith(UID_PREFIX) else None


def _when(value: Mapping[str, Any] | None) -> dt.datetime | None:
    """A Google start/end/originalStartTime in UTC (None for all-day or missing)."""
    if not value or "dateTime" not in value:
        return None
    when = dt.datetime.fromisoformat(value["dateTime"])
    if when.tzinfo is None:
        when = localize(when, zone(value.get("timeZone") or "UTC"))
    return when.astimezone(dt.UTC)


def _aware(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text)
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def _wall(when: dt.datetime) -> str:
    """Local wall time without offset: Google pairs it with timeZone, so the rule repeats
    at that wall time across DST."""
    return when.replace(tzinfo=None).isoformat(timespec="seconds")


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _windows(
    start: dt.datetime, end: dt.datetime, size: dt.timedelta
) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    lo = start
    while lo < end:
        hi = min(lo + size, end)
        yield lo, hi
        lo = hi
