"""A small stateful Microsoft Graph (calendar and mail) and Entra ID token endpoint, over
real HTTPS.

What it follows, from Microsoft's documentation (learn.microsoft.com/graph):

* sign-in: OIDC metadata at ``/{tenant}/v2.0/.well-known/openid-configuration`` and a
  ``client_credentials`` token endpoint (``expires_in`` 3599); every ``/v1.0`` call needs a
  token it issued. MSAL only accepts an https authority, so the server speaks TLS with a
  self-signed certificate (``ca_file``); point ``verify`` or ``REQUESTS_CA_BUNDLE`` at it.
* events: create (a ``transactionId`` seen before in the mailbox returns the first event),
  GET/PATCH/DELETE of a series or one instance, ``/instances`` (patternedRecurrence expanded
  in the event's zone, Windows or IANA name; moved and deleted instances kept per instance),
  a ``$filter`` on a single-value extended property, ``$expand`` of them on GET;
* ``calendarView/delta``: pages of ``Prefer: odata.maxpagesize``, ``@odata.nextLink`` then
  ``@odata.deltaLink``; a later round returns what changed since (changed instances, and
  ``@removed`` for deleted ones). Items are occurrences, exceptions and single events, and
  (``delta_masters``, on by default) the series masters. :meth:`GraphFake.invalidate_delta`
  makes stored links fail with 410 + ``Location`` or a 400 ``syncStateNotFound``;
* ``getSchedule``: at most 20 schedules and a window under 42 days, else 400; items of the
  person's own events (``showAs``) and of events they attend (tentative until accepted);
* ``$batch``: at most 20 requests, answered 200 with each inner status (in shuffled order);
* mail (:class:`MailboxFake`): MIME drafts, send (202), lookups by internetMessageId,
  ``$value``, folders, move, and ``messages/delta`` of a folder;
* subscriptions: create performs the validation handshake (POST ``?validationToken=`` to the
  notification and lifecycle URLs, expecting the token back as 200 text/plain within 10 s),
  PATCH, DELETE, ``/reauthorize``; :meth:`notify` and :meth:`lifecycle` post real notices.

Test hooks: :meth:`respond`, :meth:`move_instance`, :meth:`cancel_instance`,
:meth:`delete_event`, :meth:`seed_event`, :meth:`invalidate_delta`, :meth:`inject_faults`
(a seeded share of 429 with Retry-After / 503, top level and inside batches, optionally after
the change was made), :meth:`fail_next`, :meth:`lose_next` (one operation's answer lost after
it took effect), and :meth:`stats` (requests in total, Graph requests,
per operation, inside batches, token calls, events per mailbox).

Run it on its own for a benchmark in another process: ``python -m tests.fakes.graph`` prints
its addresses as JSON; ``GET /_fake/stats`` returns the counters.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import random
import re
import secrets
import ssl
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit
from zoneinfo import ZoneInfo

import requests
from dateutil import rrule as du

# Windows zone -> IANA (CLDR windowsZones, territory "001"), written out here on purpose
# rather than imported from the adapter, so a wrong entry there is caught here.
IANA = {
    "UTC": "UTC",
    "Eastern Standard Time": "America/New_York",
    "Central Standard Time": "America/Chicago",
    "Mountain Standard Time": "America/Denver",
    "US Mountain Standard Time": "America/Phoenix",
    "Pacific Standard Time": "America/Los_Angeles",
    "Alaskan Standard Time": "America/Anchorage",
    "Hawaiian Standard Time": "Pacific/Honolulu",
    "Atlantic Standard Time": "America/Halifax",
    "Newfoundland Standard Time": "America/St_Johns",
    "Central Standard Time (Mexico)": "America/Mexico_City",
    "SA Pacific Standard Time": "America/Bogota",
    "Pacific SA Standard Time": "America/Santiago",
    "E. South America Standard Time": "America/Sao_Paulo",
    "Argentina Standard Time": "America/Argentina/Buenos_Aires",
    "GMT Standard Time": "Europe/London",
    "W. Europe Standard Time": "Europe/Berlin",
    "Romance Standard Time": "Europe/Paris",
    "Central European Standard Time": "Europe/Warsaw",
    "Central Europe Standard Time": "Europe/Budapest",
    "GTB Standard Time": "Europe/Bucharest",
    "FLE Standard Time": "Europe/Kiev",
    "Turkey Standard Time": "Europe/Istanbul",
    "Russian Standard Time": "Europe/Moscow",
    "W. Central Africa Standard Time": "Africa/Lagos",
    "Egypt Standard Time": "Africa/Cairo",
    "South Africa Standard Time": "Africa/Johannesburg",
    "E. Africa Standard Time": "Africa/Nairobi",
    "Israel Standard Time": "Asia/Jerusalem",
    "Arabian Standard Time": "Asia/Dubai",
    "Pakistan Standard Time": "Asia/Karachi",
    "India Standard Time": "Asia/Calcutta",
    "SE Asia Standard Time": "Asia/Bangkok",
    "Singapore Standard Time": "Asia/Singapore",
    "China Standard Time": "Asia/Shanghai",
    "Taipei Standard Time": "Asia/Taipei",
    "Korea Standard Time": "Asia/Seoul",
    "Tokyo Standard Time": "Asia/Tokyo",
    "W. Australia Standard Time": "Australia/Perth",
    "Cen. Australia Standard Time": "Australia/Adelaide",
    "E. Australia Standard Time": "Australia/Brisbane",
    "AUS Eastern Standard Time": "Australia/Sydney",
    "New Zealand Standard Time": "Pacific/Auckland",
}
WEEKDAYS = {
    "monday": du.MO,
    "tuesday": du.TU,
    "wednesday": du.WE,
    "thursday": du.TH,
    "friday": du.FR,
    "saturday": du.SA,
    "sunday": du.SU,
}
INDEX = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
BATCH_LIMIT = 20
SCHEDULE_LIMIT = 20
SCHEDULE_DAYS = 42
SCOPE = "https://graph.microsoft.com/.default"
VALIDATION_SECONDS = 10.0
TOKEN_SECONDS = 3599


class GraphError(Exception):
    def __init__(self, status: int, code: str, message: str = ""):
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message = status, code, message or code


def zone(name: str) -> dt.tzinfo:
    if name == "UTC":
        return dt.UTC
    try:
        return ZoneInfo(IANA.get(name, name))
    except (KeyError, ValueError) as exc:
        raise GraphError(400, "TimeZoneNotSupportedException", f"time zone {name!r}") from exc


def fromiso(text: str) -> dt.datetime:
    text = text.strip().replace("Z", "+00:00")
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)$", text)
    if match:
        text = f"{match.group(1)}.{match.group(2)[:6].ljust(6, '0')}{match.group(3)}"
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise GraphError(400, "InvalidRequest", f"bad date {text!r}") from exc


def localize(naive: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """A wall time in ``tz``; one inside a spring-forward gap moves past it (as Exchange)."""
    aware = naive.replace(tzinfo=tz)
    back = aware.astimezone(dt.UTC).astimezone(tz)
    return back if back.replace(tzinfo=None) != naive else aware


def parse_dttz(value: Any) -> dt.datetime:
    """dateTimeTimeZone -> aware UTC."""
    if not isinstance(value, dict) or "dateTime" not in value or "timeZone" not in value:
        raise GraphError(400, "InvalidRequest", "start/end need dateTime and timeZone")
    moment = fromiso(value["dateTime"])
    if moment.tzinfo is None:
        moment = localize(moment, zone(value["timeZone"]))
    return moment.astimezone(dt.UTC)


def out_dttz(moment: dt.datetime, tz_name: str) -> dict[str, str]:
    local = moment.astimezone(zone(tz_name)).replace(tzinfo=None)
    return {"dateTime": local.strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": tz_name}


def offset_text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def graph_stamp(moment: dt.datetime) -> str:
    """Graph's DateTimeOffset with seven fractional digits."""
    moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


# --------------------------------------------------------------------------- TLS


_CERT: tuple[str, str] | None = None
_CERT_LOCK = threading.Lock()


def certificate() -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost (cert file, key file), made once
    per process; the certificate file doubles as the CA bundle clients trust."""
    global _CERT
    with _CERT_LOCK:
        if _CERT is not None:
            return _CERT
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "graph-fake.localhost")])
        now = dt.datetime.now(dt.UTC)
        import ipaddress

        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=True,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        folder = Path(tempfile.mkdtemp(prefix="graph-fake-tls-"))
        cert_file, key_file = folder / "cert.pem", folder / "key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        _CERT = (str(cert_file), str(key_file))
        return _CERT


# --------------------------------------------------------------------------- state


@dataclass
class Event:
    """A series master or a single event in one mailbox, with its per-instance changes."""

    id: str
    mailbox: str
    data: dict[str, Any]
    created: int
    exceptions: dict[dt.datetime, dict[str, Any]] = field(default_factory=dict)
    cancelled: set[dt.datetime] = field(default_factory=set)
    deleted: bool = False

    @property
    def recurring(self) -> bool:
        return bool(self.data.get("recurrence"))

    @property
    def start(self) -> dt.datetime:
        return parse_dttz(self.data["start"])

    @property
    def length(self) -> dt.timedelta:
        return parse_dttz(self.data["end"]) - self.start

    def rule(self) -> du.rrule:
        rec = self.data["recurrence"]
        pattern, range_ = rec["pattern"], rec["range"]
        tz = zone(self.data["start"]["timeZone"])
        local_start = self.start.astimezone(tz)
        first = dt.datetime.combine(
            dt.date.fromisoformat(range_["startDate"]), local_start.time().replace(tzinfo=None)
        )
        kwargs: dict[str, Any] = {"dtstart": first, "interval": int(pattern.get("interval", 1))}
        kind = pattern["type"]
        days = [WEEKDAYS[d.lower()] for d in pattern.get("daysOfWeek", [])]
        if kind == "daily":
            freq = du.DAILY
        elif kind == "weekly":
            freq = du.WEEKLY
            kwargs["byweekday"] = days
            kwargs["wkst"] = WEEKDAYS[pattern.get("firstDayOfWeek", "sunday").lower()]
        elif kind == "relativeMonthly":
            freq = du.MONTHLY
            kwargs["byweekday"] = [d(INDEX[pattern.get("index", "first")]) for d in days]
        elif kind == "absoluteMonthly":
            freq = du.MONTHLY
            kwargs["bymonthday"] = int(pattern["dayOfMonth"])
        else:
            raise GraphError(400, "InvalidRequest", f"pattern type {kind!r} not supported here")
        if range_.get("type") == "endDate":
            kwargs["until"] = dt.datetime.combine(
                dt.date.fromisoformat(range_["endDate"]), dt.time(23, 59, 59)
            )
        elif range_.get("type") == "numbered":
            kwargs["count"] = int(range_["numberOfOccurrences"])
        return du.rrule(freq, **kwargs)

    def originals(self, lo: dt.datetime, hi: dt.datetime) -> list[dt.datetime]:
        """Original starts (UTC) of occurrences that could touch [lo, hi)."""
        tz = zone(self.data["start"]["timeZone"])
        pad = self.length + dt.timedelta(days=1)
        local_lo = (lo - pad).astimezone(tz).replace(tzinfo=None)
        local_hi = (hi + pad).astimezone(tz).replace(tzinfo=None)
        return [
            localize(s, tz).astimezone(dt.UTC)
            for s in self.rule().between(local_lo, local_hi, inc=True)
        ]

    def is_occurrence(self, original: dt.datetime) -> bool:
        return original in self.originals(original, original + dt.timedelta(seconds=1))

    def instances(self, lo: dt.datetime, hi: dt.datetime) -> list[tuple[dt.datetime, dict]]:
        """(original start, {start, end, exception}) of the live instances touching [lo, hi),
        wherever they are now."""
        found = set(self.originals(lo, hi)) | set(self.exceptions)
        out = []
        for original in sorted(found):
            if original in self.cancelled:
                continue
            exc = self.exceptions.get(original)
            start = exc["start"] if exc else original
            end = exc["end"] if exc else original + self.length
            if start < hi and end > lo:
                out.append((original, {"start": start, "end": end, "exception": exc}))
        return out


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


def error(status: int, code: str, message: str = "", **headers: str) -> Response:
    return Response(status, {"error": {"code": code, "message": message or code}}, headers)


def instance_id(master: str, original: dt.datetime) -> str:
    raw = f"{master}|{original.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}".encode()
    return "AQMk" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def split_instance_id(value: str) -> tuple[str, dt.datetime] | None:
    if not value.startswith("AQMk"):
        return None
    raw = value[4:]
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        master, _, stamp = text.partition("|")
        when = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return master, when


def prefer(headers: dict[str, str]) -> tuple[str, int | None]:
    """(outlook.timezone, odata.maxpagesize) from the Prefer header(s)."""
    text = headers.get("prefer", "")
    tz = re.search(r'outlook\.timezone\s*=\s*"([^"]+)"', text)
    size = re.search(r"odata\.maxpagesize\s*=\s*(\d+)", text)
    return (tz.group(1) if tz else "UTC"), (int(size.group(1)) if size else None)


# --------------------------------------------------------------------------- mail


MAIL_REQUEST_LIMIT = 4 * 1024 * 1024  # Graph: a request over ~4 MB gets 413
MAIL_DEFAULT_TOP = 10  # Graph's default page size for message lists
WELL_KNOWN_FOLDERS = {
    "msgfolderroot": "Top of Information Store",
    "inbox": "Inbox",
    "drafts": "Drafts",
    "sentitems": "Sent Items",
    "outbox": "Outbox",
    "deleteditems": "Deleted Items",
}
IMMUTABLE_PREFER = re.compile(r'IdType\s*=\s*"?ImmutableId"?', re.IGNORECASE)
MIME_PROPERTY_FILTER = re.compile(
    r"^singleValueExtendedProperties/any\(\s*(\w+)\s*:\s*\1/id eq '(.+?)' and "
    r"\1/value eq '((?:[^']|'')*)'\s*\)$",
    re.IGNORECASE,
)
MESSAGE_ID_FILTER = re.compile(r"^internetMessageId eq '((?:[^']|'')*)'$", re.IGNORECASE)
FOLDER_NAME_FILTER = re.compile(r"^displayName eq '((?:[^']|'')*)'$", re.IGNORECASE)


@dataclass
class MailFolder:
    id: str
    mailbox: str
    name: str  # displayName
    parent: str | None  # the parent folder's id; None for the root
    well_known: str | None = None


@dataclass
class MailItem:
    """One message in one mailbox. ``immutable_id`` never changes; ``rest_id`` (the default
    id format) changes whenever the message moves to another folder, as Exchange's does."""

    immutable_id: str
    rest_id: str
    mailbox: str
    folder: str  # folder id
    raw: bytes
    internet_message_id: str
    conversation_id: str
    is_draft: bool
    created: int
    received: dt.datetime
    modified: dt.datetime
    properties: dict[str, dict[str, str]] = field(default_factory=dict)  # id lower -> {id, value}
    gone: bool = False  # permanently deleted


def _header_block(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """(headers, separator, body) of a raw message, whatever its line ends."""
    match = re.search(rb"\r?\n\r?\n", raw)
    if not match:
        return raw, b"", b""
    return raw[: match.start()], raw[match.start() : match.end()], raw[match.end() :]


def _replace_message_id(raw: bytes, new_id: str) -> bytes:
    """The raw message with its Message-ID header replaced (or added), nothing else touched."""
    head, sep, body = _header_block(raw)
    line_end = b"\r\n" if b"\r\n" in head else b"\n"
    pattern = re.compile(rb"(?im)^message-id:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*")
    header = b"Message-ID: " + new_id.encode()
    if pattern.search(head):
        head = pattern.sub(lambda m: header, head, count=1)
    else:
        head = head + line_end + header
    return head + sep + body


def _addresses(msg: Any, *names: str) -> list[dict[str, Any]]:
    import email.utils

    values = [str(v) for name in names for v in (msg.get_all(name) or [])]
    return [
        {"emailAddress": {"name": name or address, "address": address}}
        for name, address in email.utils.getaddresses(values)
        if address
    ]


class MailboxFake:
    """Mail in Exchange mailboxes, as Microsoft Graph serves it (mixed into GraphFake).

    * ``POST /users/{m}/messages`` with ``Content-Type: text/plain`` and a base64 MIME body
      creates a draft in Drafts (the "create message in MIME format" call); a bad base64 body is
      400 ``ErrorMimeContentInvalidBase64String``, a body over ``mail_request_limit`` 413. The
      MIME Message-ID becomes ``internetMessageId`` unless ``rewrite_internet_message_ids``
      (then Graph's own id replaces it, in the MIME too); In-Reply-To/References put the
      message in the conversation of the message they name.
    * ``POST …/messages/{id}/send``: 202, no body; the draft leaves Drafts for Sent Items (or
      sits in Outbox for ``outbox_requests`` further requests first, as Exchange submits
      asynchronously); sending a message that is no longer a draft is 400. Sends are counted
      per internetMessageId (:meth:`sent_counts`).
    * ``GET …/messages`` and ``…/mailFolders/{f}/messages`` with ``$filter`` on
      ``internetMessageId eq '…'`` or on a single-value extended property, ``$select`` and
      ``$top`` (default 10); ``GET/PATCH/DELETE …/messages/{id}`` (DELETE moves the message to
      Deleted Items, and from there deletes it), ``…/$value`` (the MIME, byte for byte),
      ``POST …/move`` (201 with the message, which has a new id unless immutable ids were asked
      for with ``Prefer: IdType="ImmutableId"``).
    * folders: ``…/mailFolders`` and ``…/mailFolders/{f}/childFolders`` listed (``$filter`` on
      displayName) and created (409 ``ErrorFolderExists`` for a sibling of the same name);
      well-known names (inbox, drafts, sentitems, outbox, deleteditems, msgfolderroot) work
      wherever an id does.
    * ``GET …/mailFolders/{f}/messages/delta``: pages of ``Prefer: odata.maxpagesize`` with
      ``@odata.nextLink`` then ``@odata.deltaLink``; a later round returns the messages that
      arrived in the folder since and ``@removed`` for those that left it (moved or deleted).
      :meth:`invalidate_delta` refuses stored links for mail as for calendars.

    Test hooks: :meth:`deliver`, :meth:`mail`, :meth:`sent_counts`, :attr:`outgoing`,
    :meth:`delete_message`.
    """

    # Provided by GraphFake.
    _lock: threading.RLock
    _delta_generation: int
    _refusal: tuple[str, bool] | None
    page_size: int

    @property
    def base_url(self) -> str:  # pragma: no cover - GraphFake's wins
        raise NotImplementedError

    def _mail_init(
        self, *, rewrite_internet_message_ids: bool, outbox_requests: int, mail_request_limit: int
    ) -> None:
        self.rewrite_internet_message_ids = rewrite_internet_message_ids
        self.outbox_requests = outbox_requests
        self.mail_request_limit = mail_request_limit
        self._folders: dict[str, MailFolder] = {}
        self._mail_items: dict[str, MailItem] = {}
        self._rest_ids: dict[str, str] = {}  # current rest id -> immutable id
        self._mail_seq = 0
        self._mail_created = itertools.count(1)
        # (seq, "added" | "removed", immutable id, folder id) per mailbox
        self._mail_changes: dict[str, list[tuple[int, str, str, str]]] = {}
        self._mail_delta: dict[str, dict[str, Any]] = {}
        self._outbox: list[tuple[int, str]] = []  # (requests left, immutable id)
        self._sends: Counter[str] = Counter()
        self.outgoing: list[dict[str, Any]] = []  # what went out: mailbox, id, recipients, raw

    # ------------------------------------------------------------------ test hooks

    def deliver(self, mailbox: str, raw: bytes, received: dt.datetime | None = None) -> str:
        """A message arrives in ``mailbox``'s Inbox, exactly these bytes; returns its
        (immutable) id."""
        with self._lock:
            item = self._new_item(mailbox.lower(), raw, draft=False, folder="inbox")
            if received is not None:
                item.received = received
            return item.immutable_id

    def mail(self, mailbox: str, folder: str | None = None) -> list[dict[str, Any]]:
        """Messages of a mailbox (of one folder: a display name or a well-known name), oldest
        first, for assertions."""
        with self._lock:
            box = mailbox.lower()
            out = []
            for item in sorted(self._mail_items.values(), key=lambda i: i.created):
                if item.gone or item.mailbox != box:
                    continue
                where = self._folders[item.folder]
                if folder is not None and folder.lower() not in (
                    where.name.lower(),
                    (where.well_known or "").lower(),
                ):
                    continue
                out.append(
                    {
                        "id": item.immutable_id,
                        "folder": where.name,
                        "internetMessageId": item.internet_message_id,
                        "conversationId": item.conversation_id,
                        "isDraft": item.is_draft,
                        "raw": item.raw,
                    }
                )
            return out

    def sent_counts(self) -> Counter[str]:
        """How often each internetMessageId was sent (accepted with 202)."""
        with self._lock:
            return Counter(self._sends)

    def delete_message(self, message_id: str) -> None:
        """Someone deletes the message for good (e.g. a draft, in Outlook)."""
        with self._lock:
            item = self._mail_items[message_id]
            self._mail_move(item, None)

    # ------------------------------------------------------------------ state

    def _mailbox_folders(self, mailbox: str) -> dict[str, MailFolder]:
        """The mailbox's well-known folders (created on first use) by well-known name."""
        known = {
            f.well_known: f for f in self._folders.values() if f.mailbox == mailbox and f.well_known
        }
        if known:
            return known  # type: ignore[return-value]
        root = MailFolder(
            "AQMkFolder" + secrets.token_urlsafe(12),
            mailbox,
            WELL_KNOWN_FOLDERS["msgfolderroot"],
            None,
            "msgfolderroot",
        )
        self._folders[root.id] = root
        known = {"msgfolderroot": root}
        for key, name in WELL_KNOWN_FOLDERS.items():
            if key != "msgfolderroot":
                folder = MailFolder(
                    "AQMkFolder" + secrets.token_urlsafe(12), mailbox, name, root.id, key
                )
                self._folders[folder.id] = folder
                known[key] = folder
        return known  # type: ignore[return-value]

    def _folder(self, mailbox: str, ref: str) -> MailFolder:
        known = self._mailbox_folders(mailbox)
        if ref.lower() in known:
            return known[ref.lower()]
        folder = self._folders.get(ref)
        if folder is None or folder.mailbox != mailbox:
            raise GraphError(404, "ErrorItemNotFound", "The specified folder could not be found")
        return folder

    def _mail_change(self, item: MailItem, kind: str, folder: str) -> None:
        self._mail_seq += 1
        self._mail_changes.setdefault(item.mailbox, []).append(
            (self._mail_seq, kind, item.immutable_id, folder)
        )

    def _new_item(self, mailbox: str, raw: bytes, *, draft: bool, folder: str) -> MailItem:
        import email
        import email.policy

        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        message_id = (msg.get("Message-ID") or "").strip()
        if draft and (self.rewrite_internet_message_ids or not message_id):
            message_id = (
                f"<{secrets.token_hex(10).upper()}@{secrets.token_hex(6).upper()}"
                ".namprd00.prod.outlook.com>"
            )
            raw = _replace_message_id(raw, message_id)
        cited = set((msg.get("References") or "").split()) | {
            (msg.get("In-Reply-To") or "").strip()
        }
        conversation = next(
            (
                other.conversation_id
                for other in self._mail_items.values()
                if other.mailbox == mailbox
                and not other.gone
                and other.internet_message_id in cited
            ),
            "AAQkConv" + secrets.token_urlsafe(12),
        )
        now = self.clock()
        item = MailItem(
            immutable_id="AAkALgImm" + secrets.token_urlsafe(18),
            rest_id="AAMkADRest" + secrets.token_urlsafe(18),
            mailbox=mailbox,
            folder=self._folder(mailbox, folder).id,
            raw=raw,
            internet_message_id=message_id,
            conversation_id=conversation,
            is_draft=draft,
            created=next(self._mail_created),
            received=now,
            modified=now,
        )
        self._mail_items[item.immutable_id] = item
        self._rest_ids[item.rest_id] = item.immutable_id
        self._mail_change(item, "added", item.folder)
        return item

    def _mail_item(self, mailbox: str, ref: str) -> MailItem:
        item = self._mail_items.get(ref) or self._mail_items.get(self._rest_ids.get(ref, ""))
        if item is None or item.gone or item.mailbox != mailbox:
            raise GraphError(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        return item

    def _mail_move(self, item: MailItem, folder: MailFolder | None) -> None:
        """Move (a new rest id, as Exchange gives a moved item) or, with None, delete."""
        self._mail_change(item, "removed", item.folder)
        self._rest_ids.pop(item.rest_id, None)
        item.modified = self.clock()
        if folder is None:
            item.gone = True
            return
        item.rest_id = "AAMkADRest" + secrets.token_urlsafe(18)
        self._rest_ids[item.rest_id] = item.immutable_id
        item.folder = folder.id
        self._mail_change(item, "added", item.folder)

    def _mail_tick(self) -> None:
        """Exchange's asynchronous submission: sent messages leave Outbox for Sent Items."""
        if not self._outbox:
            return
        still = []
        for left, immutable_id in self._outbox:
            item = self._mail_items[immutable_id]
            if left > 1:
                still.append((left - 1, immutable_id))
            elif not item.gone:
                self._mail_move(item, self._folder(item.mailbox, "sentitems"))
        self._outbox = still

    # ------------------------------------------------------------------ JSON

    def _mail_json(
        self, item: MailItem, immutable: bool, select: str | None = None
    ) -> dict[str, Any]:
        import email
        import email.policy

        msg = email.message_from_bytes(item.raw, policy=email.policy.compat32)
        body = msg.get_payload() if not msg.is_multipart() else ""
        stamp = graph_stamp(item.received)
        full: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.message",
            "@odata.etag": f'W/"CQAAABYAAA{item.created:08d}"',
            "id": item.immutable_id if immutable else item.rest_id,
            "createdDateTime": stamp,
            "lastModifiedDateTime": graph_stamp(item.modified),
            "receivedDateTime": stamp,
            "sentDateTime": stamp,
            "hasAttachments": False,
            "internetMessageId": item.internet_message_id,
            "subject": str(msg.get("Subject") or ""),
            "bodyPreview": str(body)[:255] if isinstance(body, str) else "",
            "importance": "normal",
            "parentFolderId": item.folder,
            "conversationId": item.conversation_id,
            "isRead": item.is_draft,
            "isDraft": item.is_draft,
            "from": (_addresses(msg, "From") or [None])[0],
            "toRecipients": _addresses(msg, "To"),
            "ccRecipients": _addresses(msg, "Cc"),
            "bccRecipients": _addresses(msg, "Bcc"),
            "replyTo": _addresses(msg, "Reply-To"),
        }
        if select:
            wanted = {s.strip().lower() for s in select.split(",")}
            full = {
                k: v
                for k, v in full.items()
                if k in ("@odata.type", "@odata.etag", "id") or k.lower() in wanted
            }
        return full

    @staticmethod
    def _folder_json(folder: MailFolder, items: list[MailItem]) -> dict[str, Any]:
        return {
            "id": folder.id,
            "displayName": folder.name,
            "parentFolderId": folder.parent,
            "childFolderCount": 0,
            "unreadItemCount": 0,
            "totalItemCount": sum(1 for i in items if i.folder == folder.id and not i.gone),
            "isHidden": False,
        }

    # ------------------------------------------------------------------ routing

    def _mail_route(
        self,
        method: str,
        mailbox: str,
        rest: list[str],
        query: dict[str, str],
        headers: dict[str, str],
    ) -> tuple[str, Callable[[Any], Response]]:
        immutable = bool(IMMUTABLE_PREFER.search(headers.get("prefer", "")))
        size = prefer(headers)[1]
        if rest == ["messages"] and method == "POST":
            kind = headers.get("content-type", "")
            return "messages.create", lambda data: self._mail_create(mailbox, data, kind, immutable)
        if rest == ["messages"] and method == "GET":
            return "messages.list", lambda data: self._mail_list(mailbox, None, query, immutable)
        if len(rest) == 2 and rest[0] == "messages":
            name = {"GET": "get", "PATCH": "update", "DELETE": "delete"}.get(method)
            if name is None:
                raise GraphError(405, "MethodNotAllowed")
            return f"messages.{name}", lambda data: self._mail_one(
                method, mailbox, rest[1], data, query, immutable
            )
        if len(rest) == 3 and rest[0] == "messages" and rest[2] == "$value" and method == "GET":
            return "messages.value", lambda data: self._mail_value(mailbox, rest[1])
        if len(rest) == 3 and rest[0] == "messages" and rest[2] == "send" and method == "POST":
            return "messages.send", lambda data: self._mail_send(mailbox, rest[1])
        if len(rest) == 3 and rest[0] == "messages" and rest[2] == "move" and method == "POST":
            return "messages.move", lambda data: self._mail_move_call(
                mailbox, rest[1], data, immutable
            )
        if rest == ["mailFolders"]:
            return self._folder_route(method, mailbox, "msgfolderroot", query)
        if len(rest) == 2 and rest[0] == "mailFolders" and method == "GET":
            return "mailFolders.get", lambda data: Response(
                200,
                self._folder_json(self._folder(mailbox, rest[1]), list(self._mail_items.values())),
            )
        if len(rest) == 3 and rest[0] == "mailFolders" and rest[2] == "childFolders":
            return self._folder_route(method, mailbox, rest[1], query)
        if len(rest) == 3 and rest[0] == "mailFolders" and rest[2] == "messages":
            return "messages.list", lambda data: self._mail_list(mailbox, rest[1], query, immutable)
        if rest[:1] == ["mailFolders"] and rest[2:] == ["messages", "delta"] and method == "GET":
            return "messages.delta", lambda data: self._mail_delta_page(
                mailbox, rest[1], query, size, immutable
            )
        raise GraphError(400, "BadRequest", f"{method} {'/'.join(rest)} is not served here")

    def _folder_route(
        self, method: str, mailbox: str, parent_ref: str, query: dict[str, str]
    ) -> tuple[str, Callable[[Any], Response]]:
        if method == "GET":
            return "mailFolders.list", lambda data: self._folder_list(mailbox, parent_ref, query)
        if method == "POST":
            return "mailFolders.create", lambda data: self._folder_create(mailbox, parent_ref, data)
        raise GraphError(405, "MethodNotAllowed")

    # ------------------------------------------------------------------ folders

    def _folder_list(self, mailbox: str, parent_ref: str, query: dict[str, str]) -> Response:
        parent = self._folder(mailbox, parent_ref)
        wanted = None
        text = query.get("$filter", "").strip()
        if text:
            match = FOLDER_NAME_FILTER.match(text)
            if not match:
                raise GraphError(400, "ErrorInvalidUrlQueryFilter", "filter not served here")
            wanted = match.group(1).replace("''", "'").lower()
        items = list(self._mail_items.values())
        value = [
            self._folder_json(f, items)
            for f in self._folders.values()
            if f.parent == parent.id and (wanted is None or f.name.lower() == wanted)
        ]
        return Response(200, {"value": value})

    def _folder_create(self, mailbox: str, parent_ref: str, data: Any) -> Response:
        parent = self._folder(mailbox, parent_ref)
        name = data.get("displayName") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise GraphError(400, "ErrorInvalidRequest", "displayName is required")
        if any(
            f.parent == parent.id and f.name.lower() == name.lower() for f in self._folders.values()
        ):
            raise GraphError(
                409, "ErrorFolderExists", "A folder with the specified name already exists."
            )
        folder = MailFolder("AQMkFolder" + secrets.token_urlsafe(12), mailbox, name, parent.id)
        self._folders[folder.id] = folder
        return Response(201, self._folder_json(folder, []))

    # ------------------------------------------------------------------ messages

    def _mail_create(self, mailbox: str, data: Any, kind: str, immutable: bool) -> Response:
        if not kind.lower().startswith("text/plain"):
            raise GraphError(
                400, "BadRequest", "only MIME drafts (Content-Type: text/plain) are served here"
            )
        body = data if isinstance(data, bytes) else b""
        if len(body) > self.mail_request_limit:
            raise GraphError(
                413,
                "ErrorRequestEntityTooLarge",
                f"The request is larger than {self.mail_request_limit} bytes.",
            )
        try:
            raw = base64.b64decode(b"".join(body.split()), validate=True)
        except ValueError as exc:
            raise GraphError(
                400,
                "ErrorMimeContentInvalidBase64String",
                "Invalid base64 string for MIME content.",
            ) from exc
        head, sep, _ = _header_block(raw)
        if not raw or not sep or b":" not in head.split(b"\n", 1)[0]:
            raise GraphError(
                400,
                "ErrorMimeContentInvalid",
                "MIME content does not contain all required information.",
            )
        item = self._new_item(mailbox, raw, draft=True, folder="drafts")
        return Response(201, self._mail_json(item, immutable))

    def _mail_send(self, mailbox: str, ref: str) -> Response:
        import email
        import email.policy

        item = self._mail_item(mailbox, ref)
        if not item.is_draft:
            raise GraphError(400, "ErrorInvalidRequest", "The message has already been sent.")
        msg = email.message_from_bytes(item.raw, policy=email.policy.compat32)
        recipients = [
            a["emailAddress"]["address"].lower() for a in _addresses(msg, "To", "Cc", "Bcc")
        ]
        if not recipients:
            raise GraphError(400, "ErrorInvalidRecipients", "At least one recipient is not valid.")
        item.is_draft = False
        self._sends[item.internet_message_id] += 1
        self.outgoing.append(
            {
                "mailbox": mailbox,
                "internetMessageId": item.internet_message_id,
                "recipients": recipients,
                "raw": item.raw,
            }
        )
        if self.outbox_requests > 0:
            self._mail_move(item, self._folder(mailbox, "outbox"))
            self._outbox.append((self.outbox_requests, item.immutable_id))
        else:
            self._mail_move(item, self._folder(mailbox, "sentitems"))
        return Response(202)

    def _mail_value(self, mailbox: str, ref: str) -> Response:
        item = self._mail_item(mailbox, ref)
        return Response(200, item.raw, {"Content-Type": "text/plain"})

    def _mail_one(
        self,
        method: str,
        mailbox: str,
        ref: str,
        data: Any,
        query: dict[str, str],
        immutable: bool,
    ) -> Response:
        item = self._mail_item(mailbox, ref)
        if method == "DELETE":
            deleted = self._folder(mailbox, "deleteditems")
            self._mail_move(item, None if item.folder == deleted.id else deleted)
            return Response(204)
        if method == "PATCH":
            if not isinstance(data, dict):
                raise GraphError(400, "BadRequest", "a message object is expected")
            if not item.is_draft and set(data) - {"singleValueExtendedProperties", "isRead"}:
                raise GraphError(400, "ErrorInvalidRequest", "only drafts can be changed")
            for prop in data.get("singleValueExtendedProperties") or ():
                item.properties[str(prop["id"]).lower()] = {
                    "id": str(prop["id"]),
                    "value": str(prop.get("value", "")),
                }
            item.modified = self.clock()
        return Response(200, self._mail_json(item, immutable, query.get("$select")))

    def _mail_move_call(self, mailbox: str, ref: str, data: Any, immutable: bool) -> Response:
        item = self._mail_item(mailbox, ref)
        target = data.get("destinationId") if isinstance(data, dict) else None
        if not isinstance(target, str) or not target:
            raise GraphError(400, "ErrorInvalidRequest", "destinationId is required")
        folder = self._folder(mailbox, target)
        if folder.id != item.folder:
            self._mail_move(item, folder)
        return Response(201, self._mail_json(item, immutable))

    def _mail_list(
        self, mailbox: str, folder_ref: str | None, query: dict[str, str], immutable: bool
    ) -> Response:
        folder = self._folder(mailbox, folder_ref) if folder_ref else None
        test: Callable[[MailItem], bool] = lambda item: True  # noqa: E731
        text = query.get("$filter", "").strip()
        if text:
            by_id = MESSAGE_ID_FILTER.match(text)
            by_prop = MIME_PROPERTY_FILTER.match(text)
            if by_id:
                wanted = by_id.group(1).replace("''", "'")
                test = lambda item: item.internet_message_id == wanted  # noqa: E731
            elif by_prop:
                key, value = by_prop.group(2).lower(), by_prop.group(3).replace("''", "'")
                test = lambda item: (item.properties.get(key) or {}).get("value") == value  # noqa: E731
            else:
                raise GraphError(400, "ErrorInvalidUrlQueryFilter", "filter not served here")
        try:
            top = int(query.get("$top", MAIL_DEFAULT_TOP))
        except ValueError as exc:
            raise GraphError(400, "BadRequest", "$top must be a number") from exc
        found = [
            item
            for item in sorted(self._mail_items.values(), key=lambda i: i.created)
            if item.mailbox == mailbox
            and not item.gone
            and (folder is None or item.folder == folder.id)
            and test(item)
        ]
        select = query.get("$select")
        return Response(
            200, {"value": [self._mail_json(i, immutable, select) for i in found[:top]]}
        )

    # ------------------------------------------------------------------ delta

    def _mail_delta_url(self, mailbox: str, folder_ref: str) -> str:
        return (
            f"{self.base_url}/users/{quote(mailbox, safe='@')}/mailFolders/"
            f"{quote(folder_ref, safe='')}/messages/delta"
        )

    def _mail_refuse(self, mailbox: str, folder_ref: str, select: str | None) -> Response:
        how = self._refusal[0] if self._refusal else "gone"
        if how == "gone":
            location = self._mail_delta_url(mailbox, folder_ref)
            if select:
                location += "?$select=" + quote(select, safe=",")
            return error(410, "resyncRequired", "Resync required", Location=location)
        return error(400, how, "The sync state is no longer valid")

    def _mail_delta_page(
        self,
        mailbox: str,
        folder_ref: str,
        query: dict[str, str],
        size: int | None,
        immutable: bool,
    ) -> Response:
        size = size or self.page_size
        token = query.get("$skiptoken") or query.get("$deltatoken")
        folder = self._folder(mailbox, folder_ref)
        if token is None:
            select = query.get("$select")
            if self._refusal and self._refusal[1]:
                return self._mail_refuse(mailbox, folder_ref, select)
            present = sorted(
                (i for i in self._mail_items.values() if i.folder == folder.id and not i.gone),
                key=lambda i: (i.received, i.created),
            )
            entries = [("item", i.immutable_id) for i in present]
            state = {
                "mailbox": mailbox,
                "folder": folder.id,
                "ref": folder_ref,
                "seq": self._mail_seq,
                "select": select,
                "generation": self._delta_generation,
            }
            return self._mail_round(state, entries, size, immutable)
        state = self._mail_delta.get(token)
        if state is None or state["mailbox"] != mailbox or state["folder"] != folder.id:
            return error(400, "syncStateNotFound", "The sync state was not found")
        if state["generation"] != self._delta_generation and self._refusal:
            return self._mail_refuse(mailbox, folder_ref, state["select"])
        if "entries" in state:  # a nextLink inside a round
            return self._mail_round(state, state["entries"], size, immutable, start=state["pos"])
        entries = []
        for seq, kind, immutable_id, where in self._mail_changes.get(mailbox, []):
            if seq <= state["seq"] or where != folder.id:
                continue
            item = self._mail_items[immutable_id]
            if kind == "removed":
                entries.append(("removed", immutable_id))
            elif item.folder == folder.id and not item.gone:
                entries.append(("item", immutable_id))
        fresh = {**state, "seq": self._mail_seq, "generation": self._delta_generation}
        fresh.pop("entries", None)
        fresh.pop("pos", None)
        return self._mail_round(fresh, entries, size, immutable)

    def _mail_round(
        self,
        state: dict[str, Any],
        entries: list[tuple[str, str]],
        size: int,
        immutable: bool,
        start: int = 0,
    ) -> Response:
        value = []
        for kind, immutable_id in entries[start : start + size]:
            item = self._mail_items[immutable_id]
            shown = item.immutable_id if immutable else item.rest_id
            if kind == "removed":
                value.append(
                    {
                        "@odata.type": "#microsoft.graph.message",
                        "id": shown,
                        "@removed": {"reason": "deleted"},
                    }
                )
            elif item.folder == state["folder"] and not item.gone:
                value.append(self._mail_json(item, immutable, state["select"]))
        token = secrets.token_urlsafe(12)
        base = self._mail_delta_url(state["mailbox"], state["ref"])
        common = {k: v for k, v in state.items() if k not in ("entries", "pos")}
        if start + size < len(entries):
            self._mail_delta[token] = {**common, "entries": entries, "pos": start + size}
            return Response(200, {"@odata.nextLink": f"{base}?$skiptoken={token}", "value": value})
        self._mail_delta[token] = common
        return Response(200, {"@odata.deltaLink": f"{base}?$deltatoken={token}", "value": value})


# --------------------------------------------------------------------------- the fake


class GraphFake(MailboxFake):
    """The fake. ``with GraphFake() as fake:`` or ``start()`` / ``stop()``."""

    def __init__(
        self,
        *,
        tenant: str = "fake-tenant",
        client_id: str = "fake-client-id",
        client_secret: str = "fake-client-secret",
        tls: bool = True,
        page_size: int = 50,
        delta_masters: bool = True,
        validate_subscriptions: bool = True,
        subscription_max_minutes: int = 4230,
        subscription_grant_minutes: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        rewrite_internet_message_ids: bool = False,
        outbox_requests: int = 0,
        mail_request_limit: int = MAIL_REQUEST_LIMIT,
        clock: Callable[[], dt.datetime] | None = None,
    ):
        self.tenant, self.client_id, self.client_secret = tenant, client_id, client_secret
        # What "now" is for mail stamps, event stamps and subscription expiry: a simulated
        # clock's (the demo's weeks) or the wall clock. Access tokens keep the wall clock.
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.tls = tls
        self.page_size = page_size
        self.delta_masters = delta_masters
        self.validate_subscriptions = validate_subscriptions
        self.subscription_max_minutes = subscription_max_minutes
        self.subscription_grant_minutes = subscription_grant_minutes
        self._host, self._port = host, port
        self._lock = threading.RLock()
        self._events: dict[str, Event] = {}
        self._created = itertools.count(1)
        self._seq = 0
        self._changes: dict[str, list[tuple[int, str, str, dt.datetime | None]]] = {}
        self._delta: dict[str, dict[str, Any]] = {}
        self._delta_generation = 0
        self._refusal: tuple[str, bool] | None = None  # (how, refuse fresh rounds too)
        self._subscriptions: dict[str, dict[str, Any]] = {}
        self._tokens: dict[str, float] = {}
        self._faults: dict[str, Any] | None = None
        self._next_faults: dict[bool, list[tuple[int, str | None]]] = {False: [], True: []}
        self._lost: dict[str, list[int]] = {}  # operation -> statuses of answers to lose
        self.counts: Counter[str] = Counter()
        self.ops: Counter[str] = Counter()
        self.inner_ops: Counter[str] = Counter()
        self.batch_sizes: list[int] = []  # requests per $batch, in arrival order
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._mail_init(
            rewrite_internet_message_ids=rewrite_internet_message_ids,
            outbox_requests=outbox_requests,
            mail_request_limit=mail_request_limit,
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> GraphFake:
        self._server = _Server((self._host, self._port), _Handler, self)
        if self.tls:
            cert_file, key_file = certificate()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert_file, key_file)
            self._server.ssl_context = context
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="graph-fake", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GraphFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1.0"

    @property
    def authority_host(self) -> str:
        return self.url

    @property
    def ca_file(self) -> str | bool:
        return certificate()[0] if self.tls else True

    def config(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "authority_host": self.authority_host,
            "ca_file": self.ca_file,
            "tenant": self.tenant,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }

    # ------------------------------------------------------------------ counters

    def stats(self) -> dict[str, Any]:
        with self._lock:
            events: Counter[str] = Counter()
            for ev in self._events.values():
                if not ev.deleted:
                    events[ev.mailbox] += 1
            return {
                "requests": self.counts["requests"],
                "graph_requests": self.counts["graph"],
                "token_calls": self.ops["token"],
                "discovery_calls": self.ops["openid-configuration"],
                "ops": dict(self.ops),
                "inner_ops": dict(self.inner_ops),
                "batch_sizes": list(self.batch_sizes),
                "events": dict(events),
                "mail_sent": sum(self._sends.values()),
                "mail_messages": sum(1 for i in self._mail_items.values() if not i.gone),
            }

    def reset_counters(self) -> None:
        with self._lock:
            self.counts.clear()
            self.ops.clear()
            self.inner_ops.clear()
            self.batch_sizes.clear()

    # ------------------------------------------------------------------ test hooks

    def events(self, mailbox: str | None = None) -> list[dict[str, Any]]:
        """Live series and single events (with extended properties), for assertions."""
        with self._lock:
            return [
                self._event_json(ev, "UTC", expand=True)
                for ev in self._events.values()
                if not ev.deleted and (mailbox is None or ev.mailbox == mailbox.lower())
            ]

    def instances(self, event_id: str, lo: dt.datetime, hi: dt.datetime) -> list[dict[str, Any]]:
        with self._lock:
            ev = self._live(event_id)
            return [self._instance_json(ev, o, i, "UTC") for o, i in ev.instances(lo, hi)]

    def seed_event(
        self,
        mailbox: str,
        start: dt.datetime,
        end: dt.datetime,
        *,
        subject: str = "Busy",
        show_as: str = "busy",
        all_day: bool = False,
        timezone: str = "UTC",
    ) -> str:
        """Someone's own single event (a meeting, a day off, out of office)."""
        with self._lock:
            data = {
                "subject": subject,
                "start": out_dttz(start, timezone),
                "end": out_dttz(end, timezone),
                "showAs": show_as,
                "isAllDay": all_day,
                "attendees": [],
            }
            return self._store(mailbox, data).id

    def respond(
        self,
        event_id: str,
        attendee: str,
        response: str,
        instance: dt.datetime | None = None,
    ) -> None:
        """An attendee answers the series, or one instance (by its original start)."""
        status = {"response": response, "time": graph_stamp(self.clock())}
        with self._lock:
            ev = self._live(event_id)
            if instance is None:
                for attendees in [ev.data["attendees"]] + [
                    e["attendees"] for e in ev.exceptions.values()
                ]:
                    self._set_status(attendees, attendee, status)
                self._changed(ev, "series")
                return
            exc = self._exception(ev, instance)
            self._set_status(exc["attendees"], attendee, status)
            self._changed(ev, "instance", instance)

    def move_instance(
        self,
        event_id: str,
        original: dt.datetime,
        start: dt.datetime,
        end: dt.datetime | None = None,
    ) -> None:
        with self._lock:
            ev = self._live(event_id)
            exc = self._exception(ev, original)
            exc["start"], exc["end"] = start, end or start + (exc["end"] - exc["start"])
            self._changed(ev, "instance", original)

    def cancel_instance(self, event_id: str, original: dt.datetime) -> None:
        """The organizer deletes one occurrence in Outlook."""
        with self._lock:
            ev = self._live(event_id)
            ev.cancelled.add(original)
            self._changed(ev, "instance", original)

    def delete_event(self, event_id: str) -> None:
        """The organizer deletes the whole series (or event) in Outlook."""
        with self._lock:
            ev = self._live(event_id)
            ev.deleted = True
            self._changed(ev, "deleted")

    def invalidate_delta(self, how: str = "gone", *, fresh_rounds_too: bool = False) -> None:
        """Make every stored delta/next link fail: ``gone`` (410 with Location) or a code
        (``syncStateNotFound``, ``resyncRequired``: 400). ``fresh_rounds_too`` refuses new
        rounds as well, until :meth:`restore_delta`."""
        with self._lock:
            self._delta_generation += 1
            self._refusal = (how, fresh_rounds_too)

    def restore_delta(self) -> None:
        with self._lock:
            self._refusal = None

    def inject_faults(
        self,
        ratio: float,
        *,
        seed: int = 0,
        statuses: tuple[int, ...] = (429, 503),
        retry_after: str | None = "1",
        top_level: bool = True,
        inner: bool = True,
        after_share: float = 0.0,
    ) -> None:
        """Answer a seeded share of Graph calls with 429 (Retry-After) or 503. With
        ``after_share``, that share of the 503s comes after the call took effect (the answer
        was lost), which only an idempotent client survives. ``ratio=0`` turns them off."""
        with self._lock:
            self._faults = (
                {
                    "ratio": ratio,
                    "rng": random.Random(seed),
                    "statuses": statuses,
                    "retry_after": retry_after,
                    "top_level": top_level,
                    "inner": inner,
                    "after_share": after_share,
                }
                if ratio > 0
                else None
            )

    def fail_next(
        self, count: int = 1, status: int = 429, retry_after: str | None = "1", inner: bool = False
    ) -> None:
        """The next ``count`` Graph calls (top level, or inside a $batch) get ``status``."""
        with self._lock:
            self._next_faults[inner] += [(status, retry_after)] * count

    def lose_next(self, op: str, count: int = 1, status: int = 503) -> None:
        """The next ``count`` calls of operation ``op`` (e.g. ``messages.create``) take
        effect, and then their answer is lost: the client gets ``status`` instead."""
        with self._lock:
            self._lost.setdefault(op, []).extend([status] * count)

    def _lose(self, op: str) -> Response | None:
        with self._lock:
            statuses = self._lost.get(op)
            if not statuses:
                return None
            self.ops["lost"] += 1
            return self._fault_response((statuses.pop(0), None, True))

    def remove_subscription(self, subscription_id: str) -> None:
        with self._lock:
            self._subscriptions.pop(subscription_id, None)

    def subscriptions(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._subscriptions.items()}

    def notify(
        self, subscription_id: str, change_type: str = "updated", resource_id: str | None = None
    ) -> int:
        """Post a change notification to the subscription's URL; returns the HTTP status."""
        with self._lock:
            sub = dict(self._subscriptions[subscription_id])
        resource_id = resource_id or "AAMkAGI2THVSAAA="
        resource = f"Users/{sub['mailbox']}/Events/{resource_id}"
        body = {
            "value": [
                {
                    "subscriptionId": subscription_id,
                    "subscriptionExpirationDateTime": sub["expirationDateTime"],
                    "changeType": change_type,
                    "resource": resource,
                    "resourceData": {
                        "@odata.type": "#Microsoft.Graph.Event",
                        "@odata.id": resource,
                        "@odata.etag": 'W/"DwAAABYAAAA="',
                        "id": resource_id,
                    },
                    "clientState": sub.get("clientState"),
                    "tenantId": self.tenant,
                }
            ]
        }
        return requests.post(sub["notificationUrl"], json=body, timeout=10).status_code

    def lifecycle(self, subscription_id: str, event: str = "reauthorizationRequired") -> int:
        """Post a lifecycle notice (``reauthorizationRequired``, ``subscriptionRemoved``,
        ``missed``); a removed subscription is gone afterwards."""
        with self._lock:
            sub = dict(self._subscriptions[subscription_id])
            if event == "subscriptionRemoved":
                del self._subscriptions[subscription_id]
        body = {
            "value": [
                {
                    "subscriptionId": subscription_id,
                    "subscriptionExpirationDateTime": sub["expirationDateTime"],
                    "lifecycleEvent": event,
                    "resource": sub["resource"],
                    "clientState": sub.get("clientState"),
                    "tenantId": self.tenant,
                    "organizationId": self.tenant,
                }
            ]
        }
        url = sub.get("lifecycleNotificationUrl") or sub["notificationUrl"]
        return requests.post(url, json=body, timeout=10).status_code

    # ------------------------------------------------------------------ HTTP entry

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query, keep_blank_values=True)
        query = {k.lower(): v[-1] for k, v in query.items()}
        if path.startswith("/_fake/"):
            if path == "/_fake/stats":
                return Response(200, self.stats())
            if path == "/_fake/reset":
                self.reset_counters()
                return Response(204)
            return error(404, "NotFound")
        with self._lock:
            self.counts["requests"] += 1
        segments = [unquote(s) for s in path.strip("/").split("/")]
        try:
            if len(segments) >= 2 and segments[0] != "v1.0":
                return self._identity(method, segments, body)
            if not segments or segments[0] != "v1.0":
                return error(404, "NotFound", path)
            with self._lock:
                self.counts["graph"] += 1
                self._mail_tick()
            if not self._authorized(headers):
                with self._lock:
                    self.ops["unauthorized"] += 1
                return error(401, "InvalidAuthenticationToken", "Access token is empty or invalid")
            fault = self._fault(inner=False)
            if fault and not fault[2]:
                with self._lock:
                    self.ops["fault"] += 1
                return self._fault_response(fault)
            op, response = self._dispatch(method, segments[1:], query, headers, body)
            with self._lock:
                self.ops[op] += 1
            lost = self._lose(op) if response.status < 400 else None
            if lost is not None:
                return lost
            if fault:  # the call took effect; its answer is lost
                with self._lock:
                    self.ops["fault.after"] += 1
                return self._fault_response(fault)
            return response
        except GraphError as exc:
            return error(exc.status, exc.code, exc.message)

    def _fault(self, inner: bool) -> tuple[int, str | None, bool] | None:
        """(status, Retry-After, after the change) for this call, or None."""
        with self._lock:
            if self._next_faults[inner]:
                status, retry_after = self._next_faults[inner].pop(0)
                return status, retry_after, False
            f = self._faults
            if f is None or not f["inner" if inner else "top_level"]:
                return None
            rng = f["rng"]
            if rng.random() >= f["ratio"]:
                return None
            status = rng.choice(f["statuses"])
            after = status >= 500 and rng.random() < f["after_share"]
            return status, (f["retry_after"] if status == 429 else None), after

    @staticmethod
    def _fault_response(fault: tuple[int, str | None, bool]) -> Response:
        status, retry_after, _ = fault
        headers = {"Retry-After": retry_after} if retry_after else {}
        code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
        return error(status, code, "injected fault", **headers)

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return False
        with self._lock:
            expiry = self._tokens.get(auth[7:])
        return expiry is not None and expiry > time.monotonic()

    # ------------------------------------------------------------------ identity

    def _identity(self, method: str, segments: list[str], body: bytes) -> Response:
        tenant, rest = segments[0], "/".join(segments[1:])
        if tenant != self.tenant:
            return Response(400, {"error": "invalid_tenant", "error_description": "AADSTS90002"})
        if rest == "v2.0/.well-known/openid-configuration" and method == "GET":
            with self._lock:
                self.ops["openid-configuration"] += 1
            base = f"{self.url}/{tenant}"
            return Response(
                200,
                {
                    "issuer": f"{base}/v2.0",
                    "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{base}/oauth2/v2.0/token",
                    "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                    "jwks_uri": f"{base}/discovery/v2.0/keys",
                    "response_types_supported": ["code", "id_token", "code id_token"],
                    "token_endpoint_auth_methods_supported": [
                        "client_secret_post",
                        "private_key_jwt",
                        "client_secret_basic",
                    ],
                    "tenant_region_scope": "EU",
                },
            )
        if rest == "oauth2/v2.0/token" and method == "POST":
            with self._lock:
                self.ops["token"] += 1
            form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
            if form.get("grant_type") != "client_credentials":
                return Response(400, {"error": "unsupported_grant_type"})
            if form.get("client_id") != self.client_id:
                return Response(
                    400, {"error": "unauthorized_client", "error_description": "AADSTS700016"}
                )
            if form.get("client_secret") != self.client_secret and not form.get("client_assertion"):
                return Response(
                    401,
                    {
                        "error": "invalid_client",
                        "error_description": "AADSTS7000215: Invalid client secret provided.",
                        "error_codes": [7000215],
                    },
                )
            if SCOPE not in form.get("scope", "").split():
                return Response(400, {"error": "invalid_scope", "error_codes": [1002012]})
            token = "eyJ0eXAiOiJKV1QifQ." + secrets.token_urlsafe(32)
            with self._lock:
                self._tokens[token] = time.monotonic() + TOKEN_SECONDS
            return Response(
                200,
                {
                    "token_type": "Bearer",
                    "expires_in": TOKEN_SECONDS,
                    "ext_expires_in": TOKEN_SECONDS,
                    "access_token": token,
                },
            )
        return Response(404, {"error": "not_found"})

    # ------------------------------------------------------------------ Graph routing

    def _dispatch(
        self,
        method: str,
        seg: list[str],
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
    ) -> tuple[str, Response]:
        """(operation name, answer); a refused call is answered and counted like any other."""
        op, call = self._route(method, seg, query, headers)
        try:
            data = body if op == "messages.create" else self._json(body)
            if op in ("subscriptions.create", "$batch"):  # they lock for themselves
                return op, call(data)
            with self._lock:
                return op, call(data)
        except GraphError as exc:
            return op, error(exc.status, exc.code, exc.message)

    def _route(
        self, method: str, seg: list[str], query: dict[str, str], headers: dict[str, str]
    ) -> tuple[str, Callable[[Any], Response]]:
        if seg == ["$batch"] and method == "POST":
            return "$batch", self._batch
        if seg and seg[0] == "subscriptions":
            return self._subscription_route(method, seg[1:])
        if len(seg) < 3 or seg[0] != "users":
            raise GraphError(400, "BadRequest", "only /users/{id}/… is served here")
        mailbox, rest = seg[1].lower(), seg[2:]
        if rest[0] in ("messages", "mailFolders"):
            return self._mail_route(method, mailbox, rest, query, headers)
        if rest and rest[0] == "calendar" and rest[1:2] != ["getSchedule"]:
            rest = rest[1:]  # /users/x/calendar/events == /users/x/events (default calendar)
        tz, page = prefer(headers)
        if rest == ["events"] and method == "POST":
            return "events.create", lambda data: self._create(mailbox, data, tz)
        if rest == ["events"] and method == "GET":
            return "events.list", lambda data: self._list(mailbox, query, tz)
        if len(rest) == 2 and rest[0] == "events":
            name = {"GET": "get", "PATCH": "update", "DELETE": "delete"}.get(method)
            if name is None:
                raise GraphError(405, "MethodNotAllowed")
            handler = getattr(self, f"_event_{name}")
            return f"events.{name}", lambda data: handler(mailbox, rest[1], data, query, tz)
        if len(rest) == 3 and rest[0] == "events" and rest[2] == "instances":
            return "events.instances", lambda data: self._instances(mailbox, rest[1], query, tz)
        if rest == ["calendarView", "delta"] and method == "GET":
            return "calendarView.delta", lambda data: self._delta_page(mailbox, query, tz, page)
        if rest == ["calendar", "getSchedule"] and method == "POST":
            return "getSchedule", lambda data: self._schedule(data, tz)
        raise GraphError(400, "BadRequest", f"{method} /{'/'.join(seg)} is not served here")

    @staticmethod
    def _json(body: bytes) -> Any:
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError as exc:
            raise GraphError(400, "BadRequest", "body is not JSON") from exc

    # ------------------------------------------------------------------ events

    def _store(self, mailbox: str, data: dict[str, Any]) -> Event:
        ev = Event(
            id="AAMk" + secrets.token_urlsafe(18),
            mailbox=mailbox.lower(),
            data=data,
            created=next(self._created),
        )
        data.setdefault("iCalUId", "040000008200E00074C5B7101A82E008" + secrets.token_hex(24))
        data.setdefault("showAs", "busy")
        data.setdefault("isAllDay", False)
        data["createdDateTime"] = graph_stamp(self.clock())
        data["organizer"] = {"emailAddress": {"address": mailbox.lower(), "name": mailbox}}
        self._events[ev.id] = ev
        self._changed(ev, "series")
        return ev

    def _changed(self, ev: Event, kind: str, original: dt.datetime | None = None) -> None:
        self._seq += 1
        ev.data["lastModifiedDateTime"] = graph_stamp(self.clock())
        self._changes.setdefault(ev.mailbox, []).append((self._seq, kind, ev.id, original))

    def _live(self, event_id: str) -> Event:
        ev = self._events.get(event_id)
        if ev is None or ev.deleted:
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found")
        return ev

    def _exception(self, ev: Event, original: dt.datetime) -> dict[str, Any]:
        if not ev.recurring or original in ev.cancelled or not ev.is_occurrence(original):
            raise GraphError(404, "ErrorItemNotFound", "no such instance")
        if original not in ev.exceptions:
            ev.exceptions[original] = {
                "start": original,
                "end": original + ev.length,
                "attendees": json.loads(json.dumps(ev.data["attendees"])),
            }
        return ev.exceptions[original]

    @staticmethod
    def _set_status(attendees: list[dict[str, Any]], who: str, status: dict[str, str]) -> None:
        for a in attendees:
            if a["emailAddress"]["address"].lower() == who.lower():
                a["status"] = dict(status)
                return
        raise GraphError(404, "ErrorItemNotFound", f"{who} is not an attendee")

    @staticmethod
    def _validate(data: Any, create: bool) -> None:
        if not isinstance(data, dict):
            raise GraphError(400, "BadRequest", "an event object is expected")
        if create and ("start" not in data or "end" not in data):
            raise GraphError(400, "ErrorInvalidRequest", "start and end are required")
        for key in ("start", "end"):
            if key in data:
                parse_dttz(data[key])
        rec = data.get("recurrence")
        if rec:
            pattern, range_ = rec.get("pattern") or {}, rec.get("range") or {}
            if pattern.get("type") not in ("daily", "weekly", "relativeMonthly", "absoluteMonthly"):
                raise GraphError(400, "ErrorInvalidRequest", "bad recurrence pattern")
            if pattern.get("type") in ("weekly", "relativeMonthly") and not pattern.get(
                "daysOfWeek"
            ):
                raise GraphError(400, "ErrorInvalidRequest", "daysOfWeek is required")
            if range_.get("type") not in ("noEnd", "endDate", "numbered") or not range_.get(
                "startDate"
            ):
                raise GraphError(400, "ErrorInvalidRequest", "bad recurrence range")
            zone(range_.get("recurrenceTimeZone") or "UTC")

    def _create(self, mailbox: str, data: Any, tz: str) -> Response:
        self._validate(data, create=True)
        txn = data.get("transactionId")
        if txn:
            for ev in self._events.values():
                if ev.mailbox == mailbox and not ev.deleted and ev.data.get("transactionId") == txn:
                    return Response(201, self._event_json(ev, tz))  # the first one, again
        stored = json.loads(json.dumps(data))
        for a in stored.setdefault("attendees", []):
            a.setdefault("type", "required")
            a["status"] = {"response": "none", "time": "0001-01-01T00:00:00Z"}
        ev = self._store(mailbox, stored)
        return Response(201, self._event_json(ev, tz))

    def _find(self, mailbox: str, event_id: str) -> tuple[Event, dt.datetime | None]:
        split = split_instance_id(event_id)
        ev = self._live(split[0] if split else event_id)
        if ev.mailbox != mailbox:
            raise GraphError(404, "ErrorItemNotFound", "not in this mailbox")
        if split is None:
            return ev, None
        original = split[1]
        if not ev.recurring or original in ev.cancelled or not ev.is_occurrence(original):
            raise GraphError(404, "ErrorItemNotFound", "no such instance")
        return ev, original

    def _event_get(
        self, mailbox: str, event_id: str, data: Any, query: dict[str, str], tz: str
    ) -> Response:
        ev, original = self._find(mailbox, event_id)
        expand = "singlevalueextendedproperties" in query.get("$expand", "").lower()
        if original is None:
            return Response(200, self._event_json(ev, tz, expand=expand))
        exc = ev.exceptions.get(original)
        inst = {
            "start": exc["start"] if exc else original,
            "end": exc["end"] if exc else original + ev.length,
            "exception": exc,
        }
        return Response(200, self._instance_json(ev, original, inst, tz))

    def _event_update(
        self, mailbox: str, event_id: str, data: Any, query: dict[str, str], tz: str
    ) -> Response:
        ev, original = self._find(mailbox, event_id)
        self._validate(data, create=False)
        if original is not None:
            exc = self._exception(ev, original)
            if "start" in data:
                exc["start"] = parse_dttz(data["start"])
            if "end" in data:
                exc["end"] = parse_dttz(data["end"])
            if exc["end"] <= exc["start"]:
                raise GraphError(400, "ErrorInvalidRequest", "end before start")
            self._changed(ev, "instance", original)
            inst = {"start": exc["start"], "end": exc["end"], "exception": exc}
            return Response(200, self._instance_json(ev, original, inst, tz))
        if "transactionId" in data and data["transactionId"] != ev.data.get("transactionId"):
            raise GraphError(400, "ErrorInvalidRequest", "transactionId cannot be changed")
        for key in ("subject", "body", "start", "end", "recurrence", "showAs", "isAllDay"):
            if key in data:
                ev.data[key] = json.loads(json.dumps(data[key]))
        if "attendees" in data:
            before = {
                a["emailAddress"]["address"].lower(): a.get("status")
                for a in ev.data.get("attendees", [])
            }
            attendees = json.loads(json.dumps(data["attendees"]))
            for a in attendees:
                a.setdefault("type", "required")
                a["status"] = before.get(a["emailAddress"]["address"].lower()) or {
                    "response": "none",
                    "time": "0001-01-01T00:00:00Z",
                }
            ev.data["attendees"] = attendees
        if "singleValueExtendedProperties" in data:
            props = {p["id"].lower(): p for p in ev.data.get("singleValueExtendedProperties", [])}
            for p in data["singleValueExtendedProperties"]:
                props[p["id"].lower()] = dict(p)
            ev.data["singleValueExtendedProperties"] = list(props.values())
        self._changed(ev, "series")
        return Response(200, self._event_json(ev, tz))

    def _event_delete(
        self, mailbox: str, event_id: str, data: Any, query: dict[str, str], tz: str
    ) -> Response:
        ev, original = self._find(mailbox, event_id)
        if original is None:
            ev.deleted = True
            self._changed(ev, "deleted")
        else:
            ev.cancelled.add(original)
            self._changed(ev, "instance", original)
        return Response(204)

    def _list(self, mailbox: str, query: dict[str, str], tz: str) -> Response:
        wanted = None
        text = query.get("$filter", "")
        if text:
            match = re.match(
                r"singleValueExtendedProperties/any\(\s*(\w+)\s*:\s*\1/id eq '(.+?)' and "
                r"\1/value eq '((?:[^']|'')*)'\s*\)$",
                text.strip(),
                re.IGNORECASE,
            )
            if not match:
                raise GraphError(400, "ErrorInvalidUrlQueryFilter", "filter not served here")
            wanted = (match.group(2).lower(), match.group(3).replace("''", "'"))
        out = []
        for ev in sorted(self._events.values(), key=lambda e: e.created):
            if ev.mailbox != mailbox or ev.deleted:
                continue
            if wanted and not any(
                p["id"].lower() == wanted[0] and p.get("value") == wanted[1]
                for p in ev.data.get("singleValueExtendedProperties", [])
            ):
                continue
            item = self._event_json(ev, tz)
            if query.get("$select") == "id":
                item = {"id": ev.id}
            out.append(item)
        return Response(200, {"value": out})

    def _window(self, query: dict[str, str]) -> tuple[dt.datetime, dt.datetime]:
        if "startdatetime" not in query or "enddatetime" not in query:
            raise GraphError(
                400, "ErrorInvalidParameter", "startDateTime and endDateTime are required"
            )
        lo, hi = fromiso(query["startdatetime"]), fromiso(query["enddatetime"])
        lo = lo if lo.tzinfo else lo.replace(tzinfo=dt.UTC)
        hi = hi if hi.tzinfo else hi.replace(tzinfo=dt.UTC)
        return lo.astimezone(dt.UTC), hi.astimezone(dt.UTC)

    def _instances(self, mailbox: str, event_id: str, query: dict[str, str], tz: str) -> Response:
        ev, original = self._find(mailbox, event_id)
        if original is not None or not ev.recurring:
            raise GraphError(400, "ErrorInvalidRequest", "not a series master")
        lo, hi = self._window(query)
        return Response(
            200, {"value": [self._instance_json(ev, o, i, tz) for o, i in ev.instances(lo, hi)]}
        )

    def _event_json(self, ev: Event, tz: str, expand: bool = False) -> dict[str, Any]:
        data = {k: v for k, v in ev.data.items() if k != "singleValueExtendedProperties"}
        out = {
            "@odata.type": "#microsoft.graph.event",
            "id": ev.id,
            **json.loads(json.dumps(data)),
            "type": "seriesMaster" if ev.recurring else "singleInstance",
            "seriesMasterId": None,
            "isCancelled": False,
            "originalStartTimeZone": ev.data["start"]["timeZone"],
            "originalEndTimeZone": ev.data["end"]["timeZone"],
            "start": out_dttz(ev.start, tz),
            "end": out_dttz(parse_dttz(ev.data["end"]), tz),
        }
        out.setdefault("transactionId", None)
        if expand and ev.data.get("singleValueExtendedProperties"):
            out["singleValueExtendedProperties"] = json.loads(
                json.dumps(ev.data["singleValueExtendedProperties"])
            )
        return out

    def _instance_json(
        self, ev: Event, original: dt.datetime, inst: dict[str, Any], tz: str
    ) -> dict[str, Any]:
        exc = inst["exception"]
        attendees = exc["attendees"] if exc else ev.data.get("attendees", [])
        return {
            "@odata.type": "#microsoft.graph.event",
            "id": instance_id(ev.id, original),
            "type": "exception" if exc else "occurrence",
            "seriesMasterId": ev.id,
            "originalStart": offset_text(original),
            "originalStartTimeZone": ev.data["start"]["timeZone"],
            "originalEndTimeZone": ev.data["end"]["timeZone"],
            "subject": ev.data.get("subject"),
            "body": ev.data.get("body"),
            "start": out_dttz(inst["start"], tz),
            "end": out_dttz(inst["end"], tz),
            "attendees": json.loads(json.dumps(attendees)),
            "organizer": ev.data["organizer"],
            "showAs": ev.data.get("showAs", "busy"),
            "isAllDay": ev.data.get("isAllDay", False),
            "isCancelled": False,
            "iCalUId": ev.data.get("iCalUId"),
        }

    # ------------------------------------------------------------------ delta

    def _delta_page(
        self, mailbox: str, query: dict[str, str], tz: str, page: int | None
    ) -> Response:
        size = page or self.page_size
        token = query.get("$skiptoken") or query.get("$deltatoken")
        if token is None:
            if self._refusal and self._refusal[1]:
                return self._refuse(mailbox, self._window(query))
            lo, hi = self._window(query)
            items = self._full_items(mailbox, lo, hi)
            state = {"mailbox": mailbox, "lo": lo, "hi": hi, "seq": self._seq}
            return self._serve_round(state, items, size, tz)
        state = self._delta.get(token)
        if state is None or state["mailbox"] != mailbox:
            return error(400, "syncStateNotFound", "The sync state was not found")
        if state["generation"] != self._delta_generation and self._refusal:
            return self._refuse(mailbox, (state["lo"], state["hi"]))
        if "items" in state:  # a nextLink inside a round
            return self._serve_round(state, state["items"], size, tz, start=state["pos"])
        items = self._changed_items(mailbox, state["lo"], state["hi"], state["seq"])
        fresh = {"mailbox": mailbox, "lo": state["lo"], "hi": state["hi"], "seq": self._seq}
        return self._serve_round(fresh, items, size, tz)

    def _refuse(self, mailbox: str, window: tuple[dt.datetime, dt.datetime]) -> Response:
        how = self._refusal[0] if self._refusal else "gone"
        if how == "gone":
            lo, hi = window
            location = (
                f"{self.base_url}/users/{quote(mailbox, safe='@')}/calendarView/delta"
                f"?startDateTime={offset_text(lo)}&endDateTime={offset_text(hi)}"
            )
            return error(410, "resyncRequired", "Resync required", Location=location)
        return error(400, how, "The sync state is no longer valid")

    def _serve_round(
        self,
        state: dict[str, Any],
        items: list[tuple[Event | None, Callable[[str], dict[str, Any]]]],
        size: int,
        tz: str,
        start: int = 0,
    ) -> Response:
        chunk = items[start : start + size]
        value = [render(tz) for _, render in chunk]
        token = secrets.token_urlsafe(12)
        base = f"{self.base_url}/users/{quote(state['mailbox'], safe='@')}/calendarView/delta"
        common = {k: state[k] for k in ("mailbox", "lo", "hi", "seq")}
        common["generation"] = self._delta_generation
        if start + size < len(items):
            self._delta[token] = {**common, "items": items, "pos": start + size}
            return Response(200, {"@odata.nextLink": f"{base}?$skiptoken={token}", "value": value})
        self._delta[token] = common
        return Response(200, {"@odata.deltaLink": f"{base}?$deltatoken={token}", "value": value})

    def _items_of(
        self, ev: Event, lo: dt.datetime, hi: dt.datetime
    ) -> list[tuple[Event | None, Callable[[str], dict[str, Any]]]]:
        if not ev.recurring:
            if ev.start < hi and parse_dttz(ev.data["end"]) > lo:
                return [(ev, lambda tz, ev=ev: self._event_json(ev, tz))]
            return []
        out: list[tuple[Event | None, Callable[[str], dict[str, Any]]]] = []
        instances = ev.instances(lo, hi)
        if self.delta_masters and instances:
            out.append((ev, lambda tz, ev=ev: self._event_json(ev, tz)))
        for original, inst in instances:
            out.append(
                (ev, lambda tz, o=original, i=inst, ev=ev: self._instance_json(ev, o, i, tz))
            )
        return out

    def _full_items(
        self, mailbox: str, lo: dt.datetime, hi: dt.datetime
    ) -> list[tuple[Event | None, Callable[[str], dict[str, Any]]]]:
        out = []
        for ev in sorted(self._events.values(), key=lambda e: e.created):
            if ev.mailbox == mailbox and not ev.deleted:
                out += self._items_of(ev, lo, hi)
        return out

    @staticmethod
    def _removed(item_id: str) -> Callable[[str], dict[str, Any]]:
        return lambda tz: {
            "@odata.type": "#microsoft.graph.event",
            "id": item_id,
            "@removed": {"reason": "deleted"},
        }

    def _changed_items(
        self, mailbox: str, lo: dt.datetime, hi: dt.datetime, since: int
    ) -> list[tuple[Event | None, Callable[[str], dict[str, Any]]]]:
        """What changed after ``since``, in change order; a series changed twice appears
        twice (Graph does not promise to collapse replays either)."""
        out: list[tuple[Event | None, Callable[[str], dict[str, Any]]]] = []
        for seq, kind, event_id, original in self._changes.get(mailbox, []):
            if seq <= since:
                continue
            ev = self._events[event_id]
            if kind == "deleted":
                if ev.recurring:
                    out += [
                        (None, self._removed(instance_id(ev.id, o)))
                        for o, _ in ev.instances(lo, hi)
                    ]
                if self.delta_masters or not ev.recurring:
                    out.append((None, self._removed(ev.id)))
            elif ev.deleted:
                continue  # reported as deleted by its own change
            elif kind == "series":
                out += self._items_of(ev, lo, hi)
            else:
                assert original is not None
                here = {o: i for o, i in ev.instances(lo, hi)}
                if original in here:
                    inst = here[original]
                    out.append(
                        (
                            ev,
                            lambda tz, o=original, i=inst, ev=ev: self._instance_json(ev, o, i, tz),
                        )
                    )
                else:  # cancelled, or moved out of the window
                    out.append((None, self._removed(instance_id(ev.id, original))))
        return out

    # ------------------------------------------------------------------ getSchedule

    def _schedule(self, data: Any, tz: str) -> Response:
        if not isinstance(data, dict) or not isinstance(data.get("schedules"), list):
            raise GraphError(400, "ErrorInvalidRequest", "schedules is required")
        people = [s.lower() for s in data["schedules"]]
        if not people or len(people) > SCHEDULE_LIMIT:
            raise GraphError(
                400, "ErrorInvalidRequest", f"between 1 and {SCHEDULE_LIMIT} schedules"
            )
        lo, hi = parse_dttz(data.get("startTime")), parse_dttz(data.get("endTime"))
        if hi <= lo or hi - lo >= dt.timedelta(days=SCHEDULE_DAYS):
            raise GraphError(
                400,
                "ErrorInvalidTimeInterval",
                f"the time window must be positive and under {SCHEDULE_DAYS} days",
            )
        step = dt.timedelta(minutes=int(data.get("availabilityViewInterval", 30)))
        codes = {"free": 0, "tentative": 1, "busy": 2, "oof": 3, "workingElsewhere": 4}
        rank = {"free": 0, "tentative": 1, "workingElsewhere": 2, "busy": 3, "oof": 4}
        value = []
        for person in people:
            items = []
            for ev in self._events.values():
                if ev.deleted:
                    continue
                if ev.mailbox == person:
                    status = ev.data.get("showAs", "busy")
                else:
                    answer = next(
                        (
                            (a.get("status") or {}).get("response", "none")
                            for a in ev.data.get("attendees", [])
                            if a["emailAddress"]["address"].lower() == person
                        ),
                        None,
                    )
                    if answer is None or answer == "declined":
                        continue
                    status = "busy" if answer == "accepted" else "tentative"
                spans = (
                    [(i["start"], i["end"]) for _, i in ev.instances(lo, hi)]
                    if ev.recurring
                    else [(ev.start, parse_dttz(ev.data["end"]))]
                )
                for s, e in spans:
                    if s < hi and e > lo:
                        items.append(
                            {
                                "isPrivate": False,
                                "status": status,
                                "subject": ev.data.get("subject", ""),
                                "location": "",
                                "isMeeting": bool(ev.data.get("attendees")),
                                "start": out_dttz(s, tz),
                                "end": out_dttz(e, tz),
                            }
                        )
            view, slot = [], lo
            while slot < hi:
                best = "free"
                for item in items:
                    s, e = parse_dttz(item["start"]), parse_dttz(item["end"])
                    if s < slot + step and e > slot and rank[item["status"]] > rank[best]:
                        best = item["status"]
                view.append(str(codes[best]))
                slot += step
            value.append(
                {
                    "scheduleId": person,
                    "availabilityView": "".join(view),
                    "scheduleItems": sorted(items, key=lambda i: i["start"]["dateTime"]),
                    "workingHours": {
                        "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                        "startTime": "08:00:00.0000000",
                        "endTime": "17:00:00.0000000",
                        "timeZone": {"name": "UTC"},
                    },
                }
            )
        return Response(200, {"value": value})

    # ------------------------------------------------------------------ $batch

    def _batch(self, data: Any) -> Response:
        if not isinstance(data, dict) or not isinstance(data.get("requests"), list):
            raise GraphError(400, "BadRequest", "requests is required")
        reqs = data["requests"]
        if not reqs or len(reqs) > BATCH_LIMIT:
            raise GraphError(
                400, "BadRequest", f"a batch holds 1 to {BATCH_LIMIT} requests, got {len(reqs)}"
            )
        if len({r.get("id") for r in reqs}) != len(reqs):
            raise GraphError(400, "BadRequest", "request ids must be unique")
        with self._lock:
            self.batch_sizes.append(len(reqs))
        answers = []
        for r in reqs:
            headers = {k.lower(): v for k, v in (r.get("headers") or {}).items()}
            url = str(r.get("url", ""))
            if url.startswith("http"):
                answers.append(self._answer(r, error(400, "BadRequest", "relative URLs only")))
                continue
            parts = urlsplit("/" + url.lstrip("/"))
            query = {k.lower(): v[-1] for k, v in parse_qs(parts.query).items()}
            seg = [unquote(s) for s in parts.path.strip("/").split("/")]
            body = json.dumps(r["body"]).encode() if r.get("body") is not None else b""
            kind = headers.get("content-type", "application/json").lower()
            if isinstance(r.get("body"), str) and not kind.startswith("application/json"):
                # JSON batching: a body that is not JSON travels base64-encoded.
                try:
                    body = base64.b64decode(r["body"])
                except ValueError:
                    answers.append(self._answer(r, error(400, "BadRequest", "body not base64")))
                    continue
            fault = self._fault(inner=True)
            if fault and not fault[2]:
                with self._lock:
                    self.inner_ops["fault"] += 1
                answers.append(self._answer(r, self._fault_response(fault)))
                continue
            try:
                op, response = self._dispatch(
                    str(r.get("method", "GET")), seg, query, headers, body
                )
                with self._lock:
                    self.inner_ops[op] += 1
                if response.status < 400:
                    response = self._lose(op) or response
            except GraphError as exc:
                response = error(exc.status, exc.code, exc.message)
            if fault:  # the call took effect; its answer is lost
                with self._lock:
                    self.inner_ops["fault.after"] += 1
                response = self._fault_response(fault)
            answers.append(self._answer(r, response))
        with self._lock:
            random.Random(len(answers)).shuffle(answers)  # order is not promised
        return Response(200, {"responses": answers})

    @staticmethod
    def _answer(request: dict[str, Any], response: Response) -> dict[str, Any]:
        headers = dict(response.headers)
        if response.body is not None:
            headers.setdefault("Content-Type", "application/json")
        return {
            "id": request.get("id"),
            "status": response.status,
            "headers": headers,
            "body": response.body,
        }

    # ------------------------------------------------------------------ subscriptions

    def _subscription_route(
        self, method: str, rest: list[str]
    ) -> tuple[str, Callable[[Any], Response]]:
        if not rest and method == "POST":
            return "subscriptions.create", self._subscribe
        if len(rest) == 2 and rest[1] == "reauthorize" and method == "POST":
            return "subscriptions.reauthorize", lambda data: self._reauthorize(rest[0])
        if len(rest) == 1 and method in ("GET", "PATCH", "DELETE"):
            op = {"GET": "get", "PATCH": "update", "DELETE": "delete"}[method]
            return f"subscriptions.{op}", lambda data: self._subscription(method, rest[0], data)
        raise GraphError(400, "BadRequest", "subscription call not served here")

    def _subscription(self, method: str, sub_id: str, data: Any) -> Response:
        sub = self._subscriptions.get(sub_id)
        if sub is None:
            raise GraphError(404, "ResourceNotFound", "subscription not found")
        if method == "DELETE":
            del self._subscriptions[sub_id]
            return Response(204)
        if method == "PATCH":
            if not isinstance(data, dict) or "expirationDateTime" not in data:
                raise GraphError(400, "InvalidRequest", "expirationDateTime is required")
            sub["expirationDateTime"] = self._expiry(data["expirationDateTime"])
        return Response(200, self._sub_json(sub))

    def _reauthorize(self, sub_id: str) -> Response:
        if sub_id not in self._subscriptions:
            raise GraphError(404, "ResourceNotFound", "subscription not found")
        return Response(204)

    def _expiry(self, text: str) -> str:
        when = fromiso(text)
        when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
        now = self.clock()
        if when <= now:
            raise GraphError(400, "InvalidRequest", "expirationDateTime is in the past")
        if when > now + dt.timedelta(minutes=self.subscription_max_minutes + 1):
            raise GraphError(
                400,
                "InvalidRequest",
                f"Subscription expiration can only be {self.subscription_max_minutes} minutes "
                "in the future.",
            )
        if self.subscription_grant_minutes is not None:
            when = min(when, now + dt.timedelta(minutes=self.subscription_grant_minutes))
        return graph_stamp(when)

    def _sub_json(self, sub: dict[str, Any]) -> dict[str, Any]:
        return {
            "@odata.context": f"{self.base_url}/$metadata#subscriptions/$entity",
            **{k: v for k, v in sub.items() if k != "mailbox"},
            "applicationId": self.client_id,
            "creatorId": self.client_id,
            "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2",
            "notificationUrlAppId": None,
        }

    def _subscribe(self, data: Any) -> Response:
        """Validate, shake hands with the endpoints (outside the lock), then store."""
        if not isinstance(data, dict):
            raise GraphError(400, "InvalidRequest", "a subscription object is expected")
        for key in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if not data.get(key):
                raise GraphError(400, "InvalidRequest", f"{key} is required")
        kinds = set(data["changeType"].split(","))
        if not kinds <= {"created", "updated", "deleted"}:
            raise GraphError(400, "InvalidRequest", f"changeType {data['changeType']!r}")
        match = re.match(r"^/?users/([^/]+)/events$", data["resource"], re.IGNORECASE)
        if not match:
            raise GraphError(400, "InvalidRequest", "resource /users/{id}/events expected")
        if len(data.get("clientState") or "") > 128:
            raise GraphError(400, "InvalidRequest", "clientState is limited to 128 characters")
        with self._lock:
            expiry = self._expiry(data["expirationDateTime"])
        if self.validate_subscriptions:
            for url in filter(
                None, (data["notificationUrl"], data.get("lifecycleNotificationUrl"))
            ):
                self._handshake(url)
        sub = {
            "id": str(uuid.uuid4()),
            "resource": data["resource"],
            "changeType": data["changeType"],
            "clientState": data.get("clientState"),
            "notificationUrl": data["notificationUrl"],
            "lifecycleNotificationUrl": data.get("lifecycleNotificationUrl"),
            "expirationDateTime": expiry,
            "mailbox": unquote(match.group(1)).lower(),
        }
        with self._lock:
            self._subscriptions[sub["id"]] = sub
        return Response(201, self._sub_json(sub))

    @staticmethod
    def _handshake(url: str) -> None:
        token = (
            "Validation: Testing client application reachability for subscription "
            f"Request-Id: {uuid.uuid4()}"
        )
        try:
            answer = requests.post(
                url,
                params={"validationToken": token},
                headers={"Content-Type": "text/plain; charset=utf-8"},
                timeout=VALIDATION_SECONDS,
            )
        except requests.RequestException as exc:
            raise GraphError(
                400,
                "InvalidRequest",
                f"Subscription validation request failed: {type(exc).__name__}",
            ) from exc
        kind = answer.headers.get("Content-Type", "")
        if answer.status_code != 200 or not kind.startswith("text/plain") or answer.text != token:
            raise GraphError(
                400,
                "InvalidRequest",
                "Subscription validation request failed. Notification endpoint must respond "
                "with 200 OK to validation request.",
            )


# --------------------------------------------------------------------------- HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, fake: GraphFake):
        super().__init__(address, handler)
        self.fake = fake
        self.ssl_context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            # The handshake runs in the request's thread (see _Handler.setup), so one slow
            # client cannot hold up the accept loop.
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-request is not the test's business


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    server: _Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
        super().setup()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            response = self.server.fake.handle(self.command, self.path, headers, body)
        except Exception as exc:  # a bug in the fake: say so instead of hanging up
            response = error(500, "FakeError", f"{type(exc).__name__}: {exc}")
        data = response.payload()
        self.send_response(response.status)
        if response.body is not None and not isinstance(response.body, (bytes, str)):
            self.send_header("Content-Type", "application/json")
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


# --------------------------------------------------------------------------- webhook receiver


class WebhookReceiver:
    """The service's side of a subscription, for tests: echoes Graph's ``validationToken``
    (200 text/plain, unless ``echo`` is False) and keeps every notice it is sent (202)."""

    def __init__(self, echo: bool = True):
        self.echo = echo
        self.validations: list[tuple[str, str]] = []  # (path, token)
        self.notifications: list[dict[str, Any]] = []
        self.lifecycle: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                token = parse_qs(parts.query).get("validationToken")
                if token:
                    receiver.validations.append((parts.path, token[0]))
                    data = token[0].encode() if receiver.echo else b"no"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                else:
                    notice = json.loads(body or b"{}")
                    target = (
                        receiver.lifecycle
                        if parts.path.endswith("/lifecycle")
                        else receiver.notifications
                    )
                    target.extend(notice.get("value", []))
                    data = b""
                    self.send_response(202)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def main() -> None:  # pragma: no cover - a helper for benchmarks in another process
    import argparse

    parser = argparse.ArgumentParser(description="Run the Graph fake until interrupted.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-tls", action="store_true")
    args = parser.parse_args()
    fake = GraphFake(port=args.port, tls=not args.no_tls).start()
    print(json.dumps(fake.config()), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
