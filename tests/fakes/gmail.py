"""A small, stateful fake of the Gmail v1 API, served over real HTTP on loopback.

It follows the documented behaviour of the calls the Gmail adapter makes, so tests can
assert what ends up in the mailbox and how many requests it took:

* ``POST /token``: the OAuth token endpoint, the Calendar fake's own handling (JWT bearer
  grant of a service account with domain-wide delegation; the user is the JWT's ``sub``).
  A token opens only its own user's mailbox (``userId`` is ``me`` or that address), as
  delegation does; another mailbox is 403.
* ``messages.send``: ``{"raw": base64url, "threadId"?}``. The raw bytes are stored as given,
  except the Message-ID: added when missing, and replaced by one of Gmail's when
  ``rewrite_message_ids`` is on (the Gmail API does that, gauteh/lieer#198). A ``threadId``
  must exist (404); the message joins it only when its Subject matches the thread's, as
  the threads guide requires, and starts a thread of its own otherwise. Labels: SENT (and
  INBOX when the mailbox sent to itself).
* ``messages.get`` (``raw``, ``metadata`` with ``metadataHeaders``, ``full``, ``minimal``),
  ``messages.list`` (newest first, paging, ``labelIds``, ``includeSpamTrash`` and a ``q``
  with the operators below; anything else is 400, so a client cannot lean on search
  syntax the fake does not model), ``messages.modify``, ``messages.batchModify`` (≤ 1000
  ids; 404 when one does not exist), ``labels.list``/``labels.create`` (409 on a name that
  exists), ``history.list`` (``startHistoryId``, ``historyTypes``, ``labelId``, paging;
  404 for a start older than the history kept), ``users.getProfile``, ``users.watch``
  (the topic must be ``projects/*/topics/*``) and ``users.stop``.
* ``POST /batch/gmail/v1`` (and ``/batch``): multipart/mixed of ``application/http`` calls,
  at most 100, answered part by part (``response-<Content-ID>``).

Search operators in ``q``: ``rfc822msgid:``, ``in:inbox|sent|trash|spam|anywhere``,
``label:``, ``to:``, ``from:`` (``me`` too), ``cc:``, ``deliveredto:``, ``subject:``,
``after:``/``before:`` (epoch seconds or ``YYYY/MM/DD``), ``newer_than:``/``older_than:``
(``h``, ``d``, ``m``, ``y``), each negatable with ``-``; values may be quoted.

History ids grow on every change (with gaps, as Gmail's do): a message added, labels added
or removed. ``history_retention`` keeps only that many records; :meth:`expire_history`
drops them all, so every start before now gets 404.

Search lags: with ``search_lag`` a ``q`` does not see messages younger than that (Gmail's
search index trails the mailbox by seconds); listing by ``labelIds`` alone sees everything.

Hooks: :meth:`deliver` (mail arrives in INBOX), :meth:`stored` (what the mailbox holds),
:meth:`messages` (ids by label), ``sends`` (a Counter of sends per Message-ID *as
submitted*, so a rewrite does not hide a duplicate), ``requests`` and ``counts`` (per
operation, batch parts included), faults (``fail_ratio`` answers 429 ``rateLimitExceeded``
or 503 ``backendError`` with a ``Retry-After``, from a seeded RNG; with
``fault_after_write`` a faulted 503 write is applied first, so the answer is lost and not
the write, counted in ``lost_answers``; ``queue_failure`` scripts the next answers), and
:meth:`push_notice`, which posts a Pub/Sub push message to a URL as a subscription for
``users.watch`` would. The clock (``clock``) stamps ``internalDate``; tests pass the
runtime's simulated one.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.parser
import email.policy
import email.utils
import json
import random
import re
import shlex
import threading
import urllib.parse
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from http.server import ThreadingHTTPServer
from typing import Any

from tests.fakes import LoopbackServer
from tests.fakes.google_calendar import (
    FakeGoogleCalendar,
    Response,
    _bearer,
    _Handler,
    _ok,
    batch_response,
    error,
    service_account_info,
)

__all__ = ["FakeGmail", "service_account_info"]

UTC = dt.UTC
MAX_LIST = 500
DEFAULT_LIST = 100
MAX_HISTORY = 500
DEFAULT_HISTORY = 100
MAX_BATCH = 100
MAX_MODIFY = 1000
SYSTEM_LABELS = (
    "INBOX",
    "SENT",
    "TRASH",
    "SPAM",
    "UNREAD",
    "DRAFT",
    "STARRED",
    "IMPORTANT",
    "CHAT",
)
WRITES = {"messages.send", "messages.batchModify", "messages.modify", "labels.create"}
SUBJECT_PREFIX = re.compile(r"^\s*((re|fwd?|aw|wg)\s*:\s*)+", re.IGNORECASE)
HISTORY_TYPES = {
    "messageAdded": "messagesAdded",
    "messageDeleted": "messagesDeleted",
    "labelAdded": "labelsAdded",
    "labelRemoved": "labelsRemoved",
}
TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")


def now_utc() -> dt.datetime:
    return dt.datetime.now(UTC)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def unb64url(text: str) -> bytes:
    """base64url with or without padding (Gmail accepts both); ValueError if invalid."""
    text = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9_\-]*={0,2}", text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError(str(exc)) from exc


def split_raw(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block, separator, body) of an RFC 5322 message."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        at = raw.find(sep)
        if at >= 0:
            return raw[:at], sep, raw[at + len(sep) :]
    return raw, b"", b""


def header_fields(raw: bytes) -> list[tuple[str, str]]:
    """The top-level header fields, in order, unfolded (as Gmail's ``payload.headers``)."""
    head, _, _ = split_raw(raw)
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        head + b"\r\n\r\n"
    )
    out = []
    for name, value in parsed.items():
        text = str(value) if not isinstance(value, str) else value
        out.append((name, re.sub(r"\r?\n(?=[ \t])", "", text).strip()))
    return out


def replace_header(raw: bytes, name: str, value: str) -> bytes:
    """``raw`` with the field ``name`` (folded lines included) replaced, or added first;
    every other byte unchanged."""
    head, sep, body = split_raw(raw)
    newline = b"\r\n" if b"\r\n" in head or sep == b"\r\n\r\n" else b"\n"
    lines = head.split(newline)
    out: list[bytes] = []
    skipping = replaced = False
    for line in lines:
        if skipping and line[:1] in (b" ", b"\t"):
            continue
        skipping = False
        if line.lower().startswith(name.lower().encode() + b":"):
            skipping = True
            if not replaced:
                out.append(f"{name}: {value}".encode())
                replaced = True
            continue
        out.append(line)
    if not replaced:
        out.insert(0, f"{name}: {value}".encode())
    return newline.join(out) + (sep or newline + newline) + body


def decoded(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def addresses(value: str) -> list[str]:
    return [a.lower() for _, a in email.utils.getaddresses([value]) if a]


def base_subject(value: str) -> str:
    return " ".join(SUBJECT_PREFIX.sub("", decoded(value)).split()).lower()


def bare_id(value: str) -> str:
    return value.strip().strip("<>").strip().lower()


@dataclass
class _Message:
    id: str
    thread_id: str
    raw: bytes
    labels: set[str]
    internal_date: dt.datetime
    history_id: int
    submitted_message_id: str | None = None  # the Message-ID as the client sent it

    def header(self, name: str) -> str | None:
        for key, value in header_fields(self.raw):
            if key.lower() == name.lower():
                return value
        return None

    def headers(self, name: str) -> list[str]:
        return [v for k, v in header_fields(self.raw) if k.lower() == name.lower()]


@dataclass
class _Mailbox:
    user: str
    messages: dict[str, _Message] = field(default_factory=dict)
    threads: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> label resource
    history: list[dict[str, Any]] = field(default_factory=list)  # records, ascending ids
    history_id: int = 0
    floor: int = 0  # starts below this were expired: 404
    watch: dict[str, Any] | None = None
    label_seq: int = 0


class _ApiError(Exception):
    def __init__(self, response: Response):
        self.response = response


class FakeGmail(LoopbackServer):
    """The fake's state and logic; :meth:`start` serves it on ``127.0.0.1``."""

    handler = _Handler

    def __init__(
        self,
        *,
        seed: int = 0,
        fail_ratio: float = 0.0,
        retry_after: str = "1",
        fault_after_write: bool = False,
        rewrite_message_ids: bool = False,
        history_retention: int | None = None,
        search_lag: dt.timedelta = dt.timedelta(0),
        clock: Callable[[], dt.datetime] = now_utc,
    ):
        self.lock = threading.RLock()
        self.mailboxes: dict[str, _Mailbox] = {}
        self.tokens: dict[str, str] = {}  # access token -> user
        self.refresh_tokens: dict[str, str] = {}
        self.denied: dict[str, str] = {}
        self.rng = random.Random(seed)
        self._ids = random.Random(seed + 1)  # ids and history gaps: apart from the faults
        self.fail_ratio = fail_ratio
        self.retry_after = retry_after
        self.fault_after_write = fault_after_write
        self.rewrite_message_ids = rewrite_message_ids
        self.history_retention = history_retention
        self.search_lag = search_lag
        self.clock = clock
        self.failures: deque[tuple[str | None, int, str, str | None]] = deque()
        self.requests = 0  # every HTTP request (token, API, batch)
        self.counts: Counter[str] = Counter()  # per operation; batch parts included
        self.faults = 0
        self.lost_answers: Counter[str] = Counter()  # writes applied, then answered 5xx
        self.sends: Counter[str] = Counter()  # Message-ID as submitted -> times sent
        self.sent_log: list[tuple[str, str]] = []  # (gmail id, submitted Message-ID)
        self._next_id = 0x18E0000000000000 + self._ids.randrange(1 << 40)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ serving

    # ------------------------------------------------------------------ test hooks

    def reset_counts(self) -> None:
        with self.lock:
            self.requests = 0
            self.faults = 0
            self.counts.clear()
            self.lost_answers.clear()

    def queue_failure(
        self,
        status: int,
        reason: str = "",
        retry_after: str | None = None,
        operation: str | None = None,
    ) -> None:
        """The next API call (of ``operation`` when given: "batch", "messages.send", …; batch
        parts included) gets this error instead of its answer."""
        default = {
            429: "rateLimitExceeded",
            503: "backendError",
            500: "backendError",
            403: "dailyLimitExceeded",
        }
        with self.lock:
            self.failures.append(
                (operation, status, reason or default.get(status, "error"), retry_after)
            )

    def deny(self, user: str, oauth_error: str = "unauthorized_client") -> None:
        with self.lock:
            self.denied[user.lower()] = oauth_error

    def deliver(self, user: str, raw: bytes, labels: Iterable[str] = ("INBOX", "UNREAD")) -> str:
        """Mail arrives for ``user`` (as if received over SMTP); returns its Gmail id. It
        joins the thread of a message it answers (In-Reply-To/References) with the same
        subject, like Gmail's own threading."""
        with self.lock:
            box = self._mailbox(user)
            thread = None
            fields = header_fields(raw)
            refs: list[str] = []
            subject = ""
            for name, value in fields:
                if name.lower() in ("in-reply-to", "references"):
                    refs += [bare_id(r) for r in re.findall(r"<[^>]+>", value)]
                if name.lower() == "subject":
                    subject = value
            for message in box.messages.values():
                mid = message.header("Message-ID")
                if (
                    mid
                    and bare_id(mid) in refs
                    and base_subject(message.header("Subject") or "") == base_subject(subject)
                ):
                    thread = message.thread_id
                    break
            return self._add(box, raw, set(labels), thread).id

    def stored(self, user: str, gmail_id: str) -> dict[str, Any]:
        """One message as the mailbox holds it: raw, labels (names), thread."""
        with self.lock:
            box = self._mailbox(user)
            message = box.messages[gmail_id]
            return {
                "id": message.id,
                "threadId": message.thread_id,
                "raw": message.raw,
                "labels": sorted(self._label_name(box, i) for i in message.labels),
                "internalDate": message.internal_date,
                "submitted_message_id": message.submitted_message_id,
            }

    def messages(self, user: str, label: str | None = None) -> list[str]:
        """Gmail ids in the mailbox (with the label, by name or id, when given), oldest
        first."""
        with self.lock:
            box = self._mailbox(user)
            wanted = self._label_id(box, label) if label else None
            return [
                m.id
                for m in sorted(box.messages.values(), key=lambda m: (m.internal_date, m.id))
                if wanted is None or wanted in m.labels
            ]

    def history_id(self, user: str) -> int:
        with self.lock:
            return self._mailbox(user).history_id

    def expire_history(self, user: str) -> None:
        """Gmail forgets the history so far: every startHistoryId before now gets 404."""
        with self.lock:
            box = self._mailbox(user)
            box.history.clear()
            box.floor = box.history_id

    def push_notice(self, address: str, user: str, subscription: str = "") -> int:
        """POST the Pub/Sub push message a ``users.watch`` subscription would send (the
        data is ``{"emailAddress", "historyId"}``); returns the receiver's status."""
        with self.lock:
            box = self._mailbox(user)
            payload = {"emailAddress": box.user, "historyId": box.history_id}
            topic = (box.watch or {}).get("topicName", "projects/fake/topics/gmail")
        body = {
            "message": {
                "data": base64.b64encode(json.dumps(payload).encode()).decode(),
                "messageId": str(self._ids.randrange(10**15)),
                "publishTime": self.clock().isoformat().replace("+00:00", "Z"),
                "attributes": {},
            },
            "subscription": subscription or topic.replace("/topics/", "/subscriptions/"),
        }
        request = urllib.request.Request(
            address,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    # ------------------------------------------------------------------ dispatch

    def serve(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        """One top-level HTTP request (headers with lower-case names)."""
        path, _, query = target.partition("?")
        with self.lock:
            self.requests += 1
        if path == "/token" and method == "POST":
            with self.lock:
                return self._token(body)
        if path in ("/batch/gmail/v1", "/batch") and method == "POST":
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
        params = urllib.parse.parse_qs(query)
        with self.lock:
            route = self._route(method, path)
            if route is None:
                return error(404, "notFound", f"fake: no route for {method} {path}")
            operation, user_id, args = route
            self.counts[operation] += 1
            user = self.tokens.get(_bearer(headers.get("authorization") or outer_auth))
            if user is None:
                return error(401, "authError", "Invalid Credentials")
            if user_id not in ("me", user):
                return error(403, "forbidden", "Delegation denied for " + user)
            fault = self._fault(operation)
            applied_first = (
                fault is not None
                and operation in WRITES
                and self.fault_after_write
                and fault[0] >= 500
            )
            if fault and not applied_first:
                return fault
            try:
                data = json.loads(body) if body.strip() else {}
            except ValueError:
                return error(400, "parseError", "Parse Error")
            try:
                response = self._dispatch(operation, self._mailbox(user), args, params, data)
            except _ApiError as exc:
                response = exc.response
            if applied_first and response[0] < 300:
                self.lost_answers[operation] += 1
            return fault or response

    def _route(self, method: str, path: str) -> tuple[str, str, list[str]] | None:
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts[:3] != ["gmail", "v1", "users"] or len(parts) < 5:
            return None
        user_id, rest = parts[3].lower(), parts[4:]
        table: dict[tuple[str, ...], dict[str, str]] = {
            ("profile",): {"GET": "users.getProfile"},
            ("watch",): {"POST": "users.watch"},
            ("stop",): {"POST": "users.stop"},
            ("history",): {"GET": "history.list"},
            ("labels",): {"GET": "labels.list", "POST": "labels.create"},
            ("messages",): {"GET": "messages.list"},
            ("messages", "send"): {"POST": "messages.send"},
            ("messages", "batchModify"): {"POST": "messages.batchModify"},
        }
        operation = table.get(tuple(rest), {}).get(method)
        if operation:
            return operation, user_id, []
        if rest[0] == "messages" and len(rest) == 2 and method == "GET":
            return "messages.get", user_id, [rest[1]]
        if rest[0] == "messages" and len(rest) == 3 and rest[2] == "modify" and method == "POST":
            return "messages.modify", user_id, [rest[1]]
        return None

    def _dispatch(
        self,
        operation: str,
        box: _Mailbox,
        args: list[str],
        params: dict[str, list[str]],
        data: dict[str, Any],
    ) -> Response:
        one = {k: v[-1] for k, v in params.items()}
        if operation == "users.getProfile":
            return _ok(
                {
                    "emailAddress": box.user,
                    "messagesTotal": len(box.messages),
                    "threadsTotal": len(box.threads),
                    "historyId": str(box.history_id),
                }
            )
        if operation == "users.watch":
            return self._watch(box, data)
        if operation == "users.stop":
            box.watch = None
            return 204, {}, b""
        if operation == "history.list":
            return self._history(box, params)
        if operation == "labels.list":
            return _ok({"labels": list(box.labels.values())})
        if operation == "labels.create":
            return self._create_label(box, data)
        if operation == "messages.list":
            return self._list(box, params)
        if operation == "messages.send":
            return self._send(box, data)
        if operation == "messages.batchModify":
            return self._batch_modify(box, data)
        if operation == "messages.modify":
            message = box.messages.get(args[0])
            if message is None:
                return error(404, "notFound", "Requested entity was not found.")
            self._modify(box, message, data.get("addLabelIds", []), data.get("removeLabelIds", []))
            return _ok(self._resource(box, message, "minimal", ()))
        if operation == "messages.get":
            message = box.messages.get(args[0])
            if message is None:
                return error(404, "notFound", "Requested entity was not found.")
            fmt = one.get("format", "full").lower()
            if fmt not in ("full", "metadata", "minimal", "raw"):
                return error(400, "invalidArgument", f"Invalid format: {fmt}")
            return _ok(self._resource(box, message, fmt, params.get("metadataHeaders", [])))
        return error(404, "notFound", operation)

    def _fault(self, operation: str) -> Response | None:
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

    # ------------------------------------------------------------------ token endpoint

    def _token(self, body: bytes) -> Response:
        # The Calendar fake's grant handling, shared: it needs tokens, refresh_tokens,
        # denied, counts and _cal (here: the user's mailbox).
        return FakeGoogleCalendar._token(self, body)  # type: ignore[arg-type]

    def _cal(self, user: str) -> _Mailbox:
        return self._mailbox(user)

    # ------------------------------------------------------------------ store

    def _mailbox(self, user: str) -> _Mailbox:
        user = user.lower()
        box = self.mailboxes.get(user)
        if box is None:
            box = self.mailboxes[user] = _Mailbox(user)
            box.history_id = 1000 + self._ids.randrange(1000)
            box.floor = box.history_id
            for name in SYSTEM_LABELS:
                box.labels[name] = {
                    "id": name,
                    "name": name,
                    "type": "system",
                    "messageListVisibility": "hide",
                    "labelListVisibility": "labelHide",
                }
        return box

    def _record(self, box: _Mailbox, kind: str, message: _Message, labels: Iterable[str]) -> None:
        box.history_id += 1 + self._ids.randrange(5)  # increasing, with gaps
        message.history_id = box.history_id
        entry = {"id": message.id, "threadId": message.thread_id}
        record: dict[str, Any] = {"id": box.history_id, "messages": [entry]}
        snapshot = {**entry, "labelIds": sorted(message.labels)}
        if kind == "messagesAdded":
            record[kind] = [{"message": snapshot}]
        else:
            record[kind] = [{"message": snapshot, "labelIds": sorted(labels)}]
        box.history.append(record)
        if self.history_retention is not None and len(box.history) > self.history_retention:
            dropped = box.history[: len(box.history) - self.history_retention]
            del box.history[: len(dropped)]
            box.floor = max(box.floor, dropped[-1]["id"])

    def _add(
        self,
        box: _Mailbox,
        raw: bytes,
        labels: set[str],
        thread: str | None,
        submitted: str | None = None,
    ) -> _Message:
        self._next_id += 1 + self._ids.randrange(1 << 12)
        gid = f"{self._next_id:016x}"
        if not any(k.lower() == "message-id" for k, _ in header_fields(raw)):
            raw = replace_header(raw, "Message-ID", self._gmail_message_id())
        message = _Message(
            id=gid,
            thread_id=thread or gid,
            raw=raw,
            labels=labels,
            internal_date=self.clock(),
            history_id=0,
            submitted_message_id=submitted,
        )
        box.messages[gid] = message
        box.threads.setdefault(message.thread_id, []).append(gid)
        self._record(box, "messagesAdded", message, ())
        return message

    def _gmail_message_id(self) -> str:
        token = base64.urlsafe_b64encode(self._ids.randbytes(24)).decode().rstrip("=")
        return f"<CA+{token}@mail.gmail.com>"

    def _label_id(self, box: _Mailbox, name_or_id: str | None) -> str | None:
        if not name_or_id:
            return None
        if name_or_id in box.labels:
            return name_or_id
        wanted = _label_key(name_or_id)
        for lid, label in box.labels.items():
            if _label_key(label["name"]) == wanted:
                return lid
        return None

    def _label_name(self, box: _Mailbox, lid: str) -> str:
        return str(box.labels.get(lid, {}).get("name", lid))

    def _modify(
        self, box: _Mailbox, message: _Message, add: Sequence[str], remove: Sequence[str]
    ) -> None:
        added = [lid for lid in add if lid not in message.labels]
        removed = [lid for lid in remove if lid in message.labels and lid not in added]
        message.labels |= set(added)
        message.labels -= set(removed)
        if added:
            self._record(box, "labelsAdded", message, added)
        if removed:
            self._record(box, "labelsRemoved", message, removed)

    # ------------------------------------------------------------------ operations

    def _send(self, box: _Mailbox, data: dict[str, Any]) -> Response:
        if not isinstance(data.get("raw"), str) or not data["raw"]:
            return error(400, "invalidArgument", "'raw' RFC822 payload message string required")
        try:
            raw = unb64url(data["raw"])
        except ValueError:
            return error(400, "invalidArgument", "Invalid raw: not base64url")
        fields = header_fields(raw)
        recipients = [
            a
            for name, value in fields
            if name.lower() in ("to", "cc", "bcc")
            for a in addresses(value)
        ]
        if not recipients:
            return error(400, "invalidArgument", "Recipient address required")
        submitted = next((v for k, v in fields if k.lower() == "message-id"), None)
        subject = next((v for k, v in fields if k.lower() == "subject"), "")
        thread = None
        wanted = data.get("threadId")
        if wanted:
            if wanted not in box.threads:
                return error(404, "notFound", "Requested entity was not found.")
            first = box.messages[box.threads[wanted][0]]
            if base_subject(first.header("Subject") or "") == base_subject(subject):
                thread = str(wanted)
        if self.rewrite_message_ids or submitted is None:
            raw = replace_header(raw, "Message-ID", self._gmail_message_id())
        labels = {"SENT"}
        if box.user in recipients:
            labels |= {"INBOX", "UNREAD"}
        message = self._add(box, raw, labels, thread, submitted)
        key = bare_id(submitted) if submitted else ""
        self.sends[key] += 1
        self.sent_log.append((message.id, key))
        return _ok({"id": message.id, "threadId": message.thread_id, "labelIds": ["SENT"]})

    def _resource(
        self, box: _Mailbox, message: _Message, fmt: str, wanted: Sequence[str]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": message.id,
            "threadId": message.thread_id,
            "labelIds": sorted(message.labels),
            "historyId": str(message.history_id),
            "internalDate": str(int(message.internal_date.timestamp() * 1000)),
            "sizeEstimate": len(message.raw),
        }
        if fmt == "raw":
            out["raw"] = b64url(message.raw)
            return out
        if fmt == "minimal":
            return out
        fields = header_fields(message.raw)
        if fmt == "metadata" and wanted:
            names = {w.lower() for w in wanted}
            fields = [(k, v) for k, v in fields if k.lower() in names]
        ctype = next((v for k, v in header_fields(message.raw) if k.lower() == "content-type"), "")
        payload: dict[str, Any] = {
            "partId": "",
            "mimeType": (ctype.split(";")[0].strip().lower() or "text/plain"),
            "filename": "",
            "headers": [{"name": k, "value": v} for k, v in fields],
        }
        if fmt == "full":
            _, _, body = split_raw(message.raw)
            payload["body"] = {"size": len(body), "data": b64url(body)}
        out["payload"] = payload
        out["snippet"] = ""
        return out

    def _list(self, box: _Mailbox, params: dict[str, list[str]]) -> Response:
        one = {k: v[-1] for k, v in params.items()}
        try:
            size = int(one.get("maxResults", DEFAULT_LIST))
            offset = int(one.get("pageToken") or 0)
        except ValueError:
            return error(400, "invalidArgument", "Invalid maxResults or pageToken")
        size = max(1, min(size, MAX_LIST))
        include_spam_trash = one.get("includeSpamTrash", "false").lower() == "true"
        label_ids = params.get("labelIds", [])
        try:
            match = _query(one.get("q", ""), box, self)
        except ValueError as exc:
            return error(400, "invalidArgument", f"Invalid query: {exc}")
        everywhere = include_spam_trash or match.anywhere
        # Search (q) answers from an index that lags behind; a label listing does not.
        indexed = self.clock() - self.search_lag if one.get("q") and self.search_lag else None
        found = [
            m
            for m in box.messages.values()
            if (everywhere or not (m.labels & {"SPAM", "TRASH"}))
            and (indexed is None or m.internal_date <= indexed)
            and all(lid in m.labels for lid in label_ids)
            and match(m)
        ]
        found.sort(key=lambda m: (m.internal_date, m.id), reverse=True)
        page = found[offset : offset + size]
        body: dict[str, Any] = {"resultSizeEstimate": len(found)}
        if page:
            body["messages"] = [{"id": m.id, "threadId": m.thread_id} for m in page]
        if offset + size < len(found):
            body["nextPageToken"] = str(offset + size)
        return _ok(body)

    def _history(self, box: _Mailbox, params: dict[str, list[str]]) -> Response:
        one = {k: v[-1] for k, v in params.items()}
        try:
            start = int(one["startHistoryId"])
        except (KeyError, ValueError):
            return error(400, "invalidArgument", "startHistoryId is required")
        if start < box.floor:
            return error(404, "notFound", "Requested entity was not found.")
        try:
            size = int(one.get("maxResults", DEFAULT_HISTORY))
            offset = int(one.get("pageToken") or 0)
        except ValueError:
            return error(400, "invalidArgument", "Invalid maxResults or pageToken")
        size = max(1, min(size, MAX_HISTORY))
        kinds = {HISTORY_TYPES.get(k, k) for k in params.get("historyTypes", [])}
        label = one.get("labelId")
        records = []
        for record in box.history:
            if record["id"] <= start:
                continue
            out = {"id": str(record["id"]), "messages": record["messages"]}
            keep = False
            for kind in ("messagesAdded", "messagesDeleted", "labelsAdded", "labelsRemoved"):
                if kind not in record or (kinds and kind not in kinds):
                    continue
                items = [
                    i for i in record[kind] if label is None or label in i["message"]["labelIds"]
                ]
                if items:
                    out[kind] = [{**i, "message": {**i["message"]}} for i in items]
                    for i in out[kind]:
                        i["message"]["labelIds"] = list(i["message"]["labelIds"])
                    keep = True
            if keep:
                records.append(out)
        page = records[offset : offset + size]
        body: dict[str, Any] = {"historyId": str(box.history_id)}
        if page:
            body["history"] = page
        if offset + size < len(records):
            body["nextPageToken"] = str(offset + size)
        return _ok(body)

    def _create_label(self, box: _Mailbox, data: dict[str, Any]) -> Response:
        name = str(data.get("name") or "").strip()
        if not name:
            return error(400, "invalidArgument", "Invalid label name")
        if self._label_id(box, name) is not None:
            return error(409, "failedPrecondition", "Label name exists or conflicts")
        box.label_seq += 1
        label = {
            "id": f"Label_{box.label_seq}",
            "name": name,
            "type": "user",
            "messageListVisibility": data.get("messageListVisibility", "show"),
            "labelListVisibility": data.get("labelListVisibility", "labelShow"),
        }
        box.labels[label["id"]] = label
        return _ok(label)

    def _batch_modify(self, box: _Mailbox, data: dict[str, Any]) -> Response:
        ids = data.get("ids") or []
        if not ids or len(ids) > MAX_MODIFY:
            return error(400, "invalidArgument", f"ids must hold 1 to {MAX_MODIFY} message ids")
        add, remove = data.get("addLabelIds", []), data.get("removeLabelIds", [])
        unknown = [lid for lid in [*add, *remove] if lid not in box.labels]
        if unknown:
            return error(400, "invalidArgument", f"Invalid label: {unknown[0]}")
        if any(i not in box.messages for i in ids):
            return error(404, "notFound", "Requested entity was not found.")
        for i in ids:
            self._modify(box, box.messages[i], add, remove)
        return 204, {}, b""

    def _watch(self, box: _Mailbox, data: dict[str, Any]) -> Response:
        topic = str(data.get("topicName") or "")
        if not TOPIC.match(topic):
            return error(400, "invalidArgument", "topicName must be projects/*/topics/*")
        expiration = self.clock() + dt.timedelta(days=7)
        box.watch = {
            "topicName": topic,
            "labelIds": list(data.get("labelIds") or []),
            "labelFilterBehavior": data.get("labelFilterBehavior") or data.get("labelFilterAction"),
            "expiration": str(int(expiration.timestamp() * 1000)),
        }
        return _ok({"historyId": str(box.history_id), "expiration": box.watch["expiration"]})

    # ------------------------------------------------------------------ batch

    def _batch(self, headers: Mapping[str, str], body: bytes) -> Response:
        return batch_response(self, headers, body, MAX_BATCH)


# ---------------------------------------------------------------------- search


def _label_key(name: str) -> str:
    """How search names a label: lower case, spaces and slashes as dashes."""
    return re.sub(r"[\s/]+", "-", name.strip().lower())


def _when(value: str) -> dt.datetime:
    if value.isdigit():
        return dt.datetime.fromtimestamp(int(value), UTC)
    return dt.datetime.strptime(value, "%Y/%m/%d").replace(tzinfo=UTC)


def _age(value: str) -> dt.timedelta:
    m = re.fullmatch(r"(\d+)([hdmy])", value)
    if not m:
        raise ValueError(f"bad age {value!r}")
    n, unit = int(m.group(1)), m.group(2)
    return dt.timedelta(hours=n) * {"h": 1, "d": 24, "m": 24 * 30, "y": 24 * 365}[unit]


class _Query:
    """A conjunction of (negated) ``key:value`` terms, as a predicate over messages."""

    def __init__(self, terms: list[tuple[bool, str, str]], box: _Mailbox, fake: FakeGmail):
        self.terms, self.box, self.fake = terms, box, fake
        self.anywhere = any(
            not neg and key == "in" and value in ("anywhere", "trash", "spam")
            for neg, key, value in terms
        )

    def __call__(self, m: _Message) -> bool:
        return all(self._term(key, value, m) != neg for neg, key, value in self.terms)

    def _term(self, key: str, value: str, m: _Message) -> bool:
        v = value.lower()
        if key == "rfc822msgid":
            return any(bare_id(x) == bare_id(v) for x in m.headers("Message-ID"))
        if key in ("in", "label"):
            if key == "in" and v == "anywhere":
                return True
            lid = self.fake._label_id(self.box, {"inbox": "INBOX"}.get(v, v))
            return lid is not None and lid in m.labels
        if key in ("to", "from", "cc", "deliveredto"):
            names = {
                "to": ("to", "cc", "bcc"),
                "from": ("from",),
                "cc": ("cc",),
                "deliveredto": ("delivered-to",),
            }[key]
            if key == "from" and v == "me":
                v = self.box.user
            found = [a for n in names for h in m.headers(n) for a in addresses(h)]
            return any(v in a for a in found)
        if key == "subject":
            return v in decoded(m.header("Subject") or "").lower()
        if key == "after":
            return m.internal_date >= _when(v)
        if key == "before":
            return m.internal_date < _when(v)
        if key == "newer_than":
            return m.internal_date >= self.fake.clock() - _age(v)
        if key == "older_than":
            return m.internal_date < self.fake.clock() - _age(v)
        raise ValueError(f"unsupported operator {key}")


KEYS = {
    "rfc822msgid",
    "in",
    "label",
    "to",
    "from",
    "cc",
    "deliveredto",
    "subject",
    "after",
    "before",
    "newer_than",
    "older_than",
}


def _query(q: str, box: _Mailbox, fake: FakeGmail) -> _Query:
    try:
        words = shlex.split(q)
    except ValueError as exc:
        raise ValueError(str(exc)) from exc
    terms = []
    for word in words:
        neg = word.startswith("-")
        key, colon, value = word.lstrip("-").partition(":")
        key = key.lower()
        if not colon or key not in KEYS or not value:
            raise ValueError(f"the fake does not model {word!r}")
        if key in ("after", "before"):
            _when(value)  # raises on a bad date
        if key in ("newer_than", "older_than"):
            _age(value.lower())
        terms.append((neg, key, value))
    return _Query(terms, box, fake)
