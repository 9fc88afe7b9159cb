"""IMAP: the inbox reader (``mail_inbox = "imap"``) and the Sent folder the SMTP sender checks.

:class:`ImapInbox` reads one folder (``imap_folder``, INBOX by default) with :mod:`imaplib`:

* **fetch(cursor, limit)**: SELECT the folder and read its UIDVALIDITY. The cursor is
  ``"UIDVALIDITY:LASTUID"``. Same UIDVALIDITY: ``UID SEARCH UID <last+1>:*`` (a server always
  answers ``n:*`` with the last message even when its UID is below n, so the result is
  filtered). No cursor, an unreadable one or another UIDVALIDITY (the folder was recreated or
  restored, and every UID changed meaning): ``UID SEARCH ALL`` and ``full_resync=True`` when
  there was a cursor. Everything still in the folder is then read again; storing identical
  bytes is a no-op, so a resync never doubles a message (PROVIDERS.md, scenario 32).
  The oldest ``limit`` messages are read with ``UID FETCH <set> (UID BODY.PEEK[])`` in chunks
  of :data:`FETCH_CHUNK` (PEEK: the ``\\Seen`` flag is left alone), stopping early past
  ``max_page_bytes``; only one page is ever held, so memory stays bounded for any folder
  size. Keys are the UIDs; the page's cursor is ``"UIDVALIDITY:<highest UID read>"``; ``more``
  says UIDs remain.
* **ack(keys)**: move the messages to ``imap_processed_folder`` (created, and subscribed, on
  first use) with ``UID MOVE`` when the server announces MOVE (RFC 6851), else ``UID COPY`` +
  ``UID STORE +FLAGS.SILENT (\\Deleted)`` + ``UID EXPUNGE`` (UIDPLUS, RFC 4315) or a plain
  ``EXPUNGE``. Keys of a page read under another UIDVALIDITY are not moved (they may name other
  messages now): the next fetch resyncs and acknowledges them then.
* **wait(timeout)**: block until something arrives in the folder or ``timeout`` seconds pass,
  with IDLE (RFC 2177) when the server announces it. It returns True at once when the folder
  already holds messages past what this reader has read, so calling it between polls never
  sleeps on waiting mail; True when something arrived (or the connection dropped: poll to
  find out), False at the timeout. Without IDLE it returns True immediately, and the caller
  paces its polls itself (``supports_idle`` tells which). A run loop does::

      while running:
          poll_inbox(rt)
          rt.inbox.wait(poll_interval) if rt.inbox.supports_idle else sleep(poll_interval)

  IDLE is re-issued every :data:`IDLE_MAX` seconds (servers drop idlers after 30 minutes).
  The connection's lock is held meanwhile: one reader serves one loop.

The raw bytes are what the server returns for ``BODY[]``: IMAP transfers messages with CRLF
line ends (RFC 3501), so a message a Maildir holds with bare LF comes back with CRLF; 8-bit
bytes and malformed structure come back unchanged.

:class:`ImapSentFolder` (``imap_sent_folder``): ``find(message_id)`` says whether a message
with that Message-ID is already there (``UID SEARCH HEADER Message-ID``, confirmed by reading
the header of the hits: the search matches substrings), ``keep(raw)`` APPENDs a copy with
``\\Seen`` (creating the folder when the server asks with TRYCREATE).

Connections: each object keeps one logged-in connection open across calls, TLS by default
(``imap_security``: ``tls`` is implicit TLS, port 993; ``starttls`` upgrades port 143 and
refuses a server that does not offer it; ``none`` is plain text, for tests on loopback).
Login uses ``AUTHENTICATE PLAIN`` when offered (UTF-8 passwords), else ``LOGIN``; OAuth
(XOAUTH2) is not supported. A call that fails because the connection broke (server restart,
idle logout, timeout) reconnects and runs once more; if that fails too it raises
:class:`TransientProviderError`. Refused credentials, a missing folder or a bad certificate
raise :class:`PermanentProviderError`.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import imaplib
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from automation.errors import (
    ConfigError,
    ConfigProblem,
    PermanentProviderError,
    TransientProviderError,
)
from automation.ports import InboxPage

log = logging.getLogger(__name__)

T = TypeVar("T")

FETCH_CHUNK = 25  # messages per UID FETCH command
MAX_PAGE_BYTES = 32 * 1024 * 1024  # a page stops growing past this (the chunk in hand ends it)
IDLE_MAX = 25 * 60.0  # seconds one IDLE command lasts at most (RFC 2177: re-issue < 29 min)
TIMEOUT = 60.0  # seconds a connect or a read may take
SECURITY = ("tls", "starttls", "none")
# Response codes and words that mean "later", not "never" (RFC 5530 and common servers).
_TRANSIENT = ("UNAVAILABLE", "INUSE", "LIMIT", "SERVERBUG", "TRY AGAIN", "TEMPORARY")
_UID = re.compile(rb"\bUID (\d+)")
_EXISTS = re.compile(rb"^\* \d+ EXISTS\b", re.IGNORECASE)


# ----------------------------------------------------------------------- wire helpers


def encode_mailbox(name: str) -> str:
    """A mailbox name as an IMAP quoted string in modified UTF-7 (RFC 3501 5.1.3)."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            utf16 = "".join(run).encode("utf-16-be")
            out.append("&" + base64.b64encode(utf16).decode().rstrip("=").replace("/", ",") + "-")
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return quote("".join(out))


def quote(text: str) -> str:
    """An IMAP quoted string (no CR, LF or NUL may appear in one)."""
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"cannot send {text!r} as an IMAP quoted string")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(uids: Iterable[int]) -> str:
    """A compact IMAP sequence set of UIDs: 1:3,7,9:12."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_cursor(cursor: str | None) -> tuple[int, int] | None:
    """``"UIDVALIDITY:LASTUID"`` as two numbers; None for no cursor or an unreadable one."""
    if not cursor:
        return None
    validity, sep, last = cursor.partition(":")
    if not sep or not validity.isdigit() or not last.isdigit():
        return None
    return int(validity), int(last)


def _text(data: Any) -> str:
    """A server's response lines as text, for errors and response-code checks."""
    if isinstance(data, list | tuple):
        return " ".join(_text(d) for d in data if d is not None)
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return str(data)


class _Refused(Exception):
    """The server answered NO or BAD."""


def _refusal(what: str, detail: str) -> PermanentProviderError | TransientProviderError:
    message = f"IMAP {what}: {detail}"
    if any(code in detail.upper() for code in _TRANSIENT):
        return TransientProviderError(message)
    return PermanentProviderError(message)


def _check(typ: str, data: Any, what: str) -> Any:
    if typ != "OK":
        raise _Refused(f"{what}: {typ} {_text(data)}")
    return data


# ----------------------------------------------------------------------- the connection


class _SocketReader:
    """What imaplib reads through (``readline``/``read``), with a visible buffer.

    imaplib's own ``sock.makefile()`` hides what it has buffered and cannot be read with a
    timeout without breaking, both of which IDLE needs; this reads the socket directly."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def fill(self, timeout: float | None = None) -> None:
        """Read what the socket has (wait at most ``timeout`` s: TimeoutError past it)."""
        if timeout is None:
            chunk = self.sock.recv(65536)
        else:
            previous = self.sock.gettimeout()
            self.sock.settimeout(max(timeout, 0.001))
            try:
                chunk = self.sock.recv(65536)
            finally:
                self.sock.settimeout(previous)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buf += chunk

    def has_line(self) -> bool:
        return b"\n" in self.buf

    def readline(self, limit: int = -1) -> bytes:
        start = 0
        while True:
            end = self.buf.find(b"\n", start)
            if end >= 0:
                end += 1
                break
            if 0 <= limit <= len(self.buf):
                end = limit
                break
            start = len(self.buf)
            try:
                self.fill()
            except EOFError:
                end = len(self.buf)
                break
        if 0 <= limit < end:
            end = limit
        line = bytes(self.buf[:end])
        del self.buf[:end]
        return line

    def read(self, size: int) -> bytes:
        while len(self.buf) < size:
            try:
                self.fill()
            except EOFError:
                raise imaplib.IMAP4.abort("socket error: EOF inside a literal") from None
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def close(self) -> None:
        self.buf.clear()


class _ReaderMixin:
    """imaplib with :class:`_SocketReader` in place of its file, also after STARTTLS."""

    sock: socket.socket
    file: Any

    def open(self, host: str = "", port: int = 143, timeout: float | None = None) -> None:
        super().open(host, port, timeout)  # type: ignore[misc]
        self.file.close()
        self.file = _SocketReader(self.sock)

    def starttls(self, ssl_context: ssl.SSLContext | None = None) -> Any:
        """imaplib's STARTTLS, refusing plain-text bytes queued behind the server's OK (a
        response injection, as in CVE-2011-0411) and reading through our reader after."""
        imap: Any = self
        typ, data = imap._simple_command("STARTTLS")
        if typ != "OK":
            raise imaplib.IMAP4.error(f"STARTTLS refused: {_text(data)}")
        if self.file.buf:
            raise imaplib.IMAP4.abort("data arrived in plain text after STARTTLS")
        context = ssl_context or ssl.create_default_context()
        self.sock = context.wrap_socket(self.sock, server_hostname=imap.host)
        self.file = _SocketReader(self.sock)
        imap._tls_established = True
        imap._get_capabilities()
        return imap._untagged_response(typ, data, "STARTTLS")


class _Imap(_ReaderMixin, imaplib.IMAP4):
    pass


class _ImapSsl(_ReaderMixin, imaplib.IMAP4_SSL):
    pass


_BROKEN = (OSError, EOFError, imaplib.IMAP4.abort)  # the connection is unusable


@dataclass
class _Link:
    """One logged-in connection and what is selected on it."""

    conn: imaplib.IMAP4
    capabilities: frozenset[str]
    selected: str | None = None
    validity: int | None = None
    uidnext: int | None = None
    exists: int = 0
    folders: set[str] = field(default_factory=set)  # known to exist

    @property
    def reader(self) -> _SocketReader:
        return self.conn.file  # type: ignore[no-any-return]


class _ImapClient:
    """Connection handling shared by the inbox and the Sent folder."""

    def __init__(
        self,
        host: str,
        port: int,
        security: str,
        username: str,
        password: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = TIMEOUT,
    ):
        if security not in SECURITY:
            raise ValueError(f"imap_security must be one of {', '.join(SECURITY)}: {security!r}")
        self.host, self.port, self.security = host, port, security
        self.username, self._password = username, password
        self._ssl_context = ssl_context
        self.timeout = timeout
        self._link: _Link | None = None
        self._lock = threading.RLock()
        self.connects = 0  # logins made (one per reconnection)

    @staticmethod
    def _settings_problems(settings: Any, what: str) -> None:
        missing = [
            name for name in ("imap_host", "imap_username") if not getattr(settings, name, "")
        ]
        if missing:
            raise ConfigError(
                [
                    ConfigProblem(
                        getattr(settings, "source", "settings"),
                        name,
                        f"missing: {what}",
                        "set the IMAP server and account (see notes on IMAP in the README)",
                    )
                    for name in missing
                ]
            )

    # ------------------------------------------------------------------ connecting

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    def _open(self) -> _Link:
        where = f"{self.host}:{self.port}"
        try:
            if self.security == "tls":
                conn: imaplib.IMAP4 = _ImapSsl(
                    self.host, self.port, ssl_context=self._context(), timeout=self.timeout
                )
            else:
                conn = _Imap(self.host, self.port, timeout=self.timeout)
        except ssl.SSLCertVerificationError as exc:
            raise PermanentProviderError(f"IMAP {where}: certificate refused: {exc}") from exc
        except (*_BROKEN, imaplib.IMAP4.error) as exc:
            raise TransientProviderError(f"IMAP {where}: cannot connect: {exc}") from exc
        try:
            if self.security == "starttls":
                if "STARTTLS" not in conn.capabilities:
                    raise PermanentProviderError(
                        f"IMAP {where} does not offer STARTTLS (imap_security = starttls)"
                    )
                conn.starttls(self._context())
            self._login(conn)
            typ, data = conn.capability()
            _check(typ, data, "CAPABILITY")
            capabilities = frozenset(_text(data).upper().split())
        except ssl.SSLCertVerificationError as exc:
            _close(conn)
            raise PermanentProviderError(f"IMAP {where}: certificate refused: {exc}") from exc
        except _BROKEN as exc:
            _close(conn)
            raise TransientProviderError(f"IMAP {where}: connection lost: {exc}") from exc
        except (imaplib.IMAP4.error, _Refused) as exc:
            _close(conn)
            raise _refusal(f"{where} as {self.username}", str(exc)) from exc
        except BaseException:
            _close(conn)
            raise
        self.connects += 1
        return _Link(conn, capabilities)

    def _login(self, conn: imaplib.IMAP4) -> None:
        user, password = self.username, self._password
        if "AUTH=PLAIN" in conn.capabilities:
            secret = f"\0{user}\0{password}".encode()
            conn.authenticate("PLAIN", lambda _challenge: secret)
        else:
            conn.login(user, password)

    def _drop(self) -> None:
        if self._link is not None:
            _close(self._link.conn, logout=False)
            self._link = None

    def close(self) -> None:
        """Log out and close the connection (the next call opens a new one)."""
        with self._lock:
            if self._link is not None:
                _close(self._link.conn)
                self._link = None

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ running a call

    def _call(
        self,
        what: str,
        op: Callable[[_Link], T],
        again: Callable[[_Link], T] | None = None,
    ) -> T:
        """Run ``op`` on the open connection; when the connection breaks, reconnect and run
        ``again`` (default: ``op``) once; a second break is a TransientProviderError."""
        with self._lock:
            for attempt in (1, 2):
                if self._link is None:
                    self._link = self._open()
                link = self._link
                try:
                    result = (op if attempt == 1 or again is None else again)(link)
                    link.conn.untagged_responses.clear()  # EXPUNGE and FETCH lists: bounded
                    return result
                except _BROKEN as exc:
                    self._drop()
                    if attempt == 2:
                        raise TransientProviderError(
                            f"IMAP {what} on {self.host}:{self.port}: connection lost twice: "
                            f"{type(exc).__name__}: {exc}"
                        ) from exc
                    log.info("IMAP %s: connection lost (%s); reconnecting", what, exc)
                except imaplib.IMAP4.error as exc:  # BAD, or a command in the wrong state
                    self._drop()
                    raise _refusal(what, str(exc)) from exc
                except _Refused as exc:
                    raise _refusal(what, str(exc)) from exc
            raise AssertionError("unreachable")

    # ------------------------------------------------------------------ folders

    def _select(self, link: _Link, folder: str, readonly: bool = False) -> _Link:
        """SELECT (or EXAMINE) ``folder`` and note its UIDVALIDITY, UIDNEXT and size."""
        link.selected = None
        try:
            typ, data = link.conn.select(encode_mailbox(folder), readonly=readonly)
        except imaplib.IMAP4.readonly as exc:  # a subclass of abort: not a broken link
            raise _Refused(f"SELECT {folder}: the folder is read-only ({exc})") from exc
        _check(typ, data, f"SELECT {folder}")
        responses = link.conn.untagged_responses
        validity = responses.get("UIDVALIDITY", [None])[-1]
        if validity is None:
            raise _Refused(f"SELECT {folder}: the server gave no UIDVALIDITY")
        uidnext = responses.get("UIDNEXT", [None])[-1]
        link.selected, link.validity = folder, int(validity)
        link.uidnext = int(uidnext) if uidnext is not None else None
        link.exists = int(data[-1] or 0)
        link.folders.add(folder)
        return link

    def _exists(self, link: _Link, folder: str) -> bool:
        if folder in link.folders:
            return True
        typ, data = link.conn.list('""', encode_mailbox(folder))
        _check(typ, data, f"LIST {folder}")
        found = any(item is not None for item in data)
        if found:
            link.folders.add(folder)
        return found

    def _create(self, link: _Link, folder: str) -> None:
        typ, data = link.conn.create(encode_mailbox(folder))
        if typ != "OK" and "ALREADYEXISTS" not in _text(data).upper():
            raise _Refused(f"CREATE {folder}: {typ} {_text(data)}")
        link.conn.subscribe(encode_mailbox(folder))  # so mail clients show it
        link.folders.add(folder)
        log.info("IMAP: created folder %s for %s", folder, self.username)

    def _ensure(self, link: _Link, folder: str) -> None:
        if not self._exists(link, folder):
            self._create(link, folder)


def _close(conn: imaplib.IMAP4, logout: bool = True) -> None:
    try:
        if logout:
            conn.logout()
        else:
            conn.shutdown()
    except Exception:  # noqa: BLE001 - closing a connection that may already be gone
        pass


def _fetched(data: list[Any]) -> dict[int, bytes]:
    """UID -> raw bytes from a ``UID FETCH (UID BODY[])`` answer (others are skipped)."""
    out: dict[int, bytes] = {}
    for i, item in enumerate(data):
        if not isinstance(item, tuple) or len(item) < 2:
            continue  # ")" closers, unsolicited FLAGS updates
        head, body = item[0], item[1]
        match = _UID.search(head)
        if match is None and i + 1 < len(data) and isinstance(data[i + 1], bytes):
            match = _UID.search(data[i + 1])  # UID sent after the literal
        if match is not None and b"BODY[]" in head.upper():
            out[int(match.group(1))] = body
    return out


# ----------------------------------------------------------------------- the inbox


class ImapInbox(_ImapClient):
    """An :class:`automation.ports.InboxReader` over one IMAP folder (see the module doc)."""

    name = "imap"

    def __init__(
        self,
        host: str,
        port: int,
        security: str,
        username: str,
        password: str,
        folder: str = "INBOX",
        processed_folder: str = "Processed",
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = TIMEOUT,
        max_page_bytes: int = MAX_PAGE_BYTES,
    ):
        super().__init__(
            host, port, security, username, password, ssl_context=ssl_context, timeout=timeout
        )
        if folder == processed_folder:
            raise ValueError("imap_folder and imap_processed_folder must differ")
        self.folder = folder
        self.processed_folder = processed_folder
        self.max_page_bytes = max_page_bytes
        self.mailbox = f"{username}/{folder}"  # names the mailbox_states row
        # (UIDVALIDITY, UID) of the last page: acks must be under the same UIDVALIDITY.
        self._page_validity: int | None = None
        # (UIDVALIDITY, highest UID this reader has seen all messages up to): for wait().
        self._horizon: tuple[int, int] | None = None

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> ImapInbox:
        cls._settings_problems(settings, "mail_inbox is imap")
        return cls(
            settings.imap_host,
            settings.imap_port,
            settings.imap_security,
            settings.imap_username,
            settings.imap_password,
            settings.imap_folder,
            settings.imap_processed_folder,
            **kwargs,
        )

    # ------------------------------------------------------------------ InboxReader

    def fetch(self, cursor: str | None = None, limit: int = 100) -> InboxPage:
        limit = max(int(limit), 1)
        stored = parse_cursor(cursor)

        def op(link: _Link) -> InboxPage:
            self._select(link, self.folder)
            validity = link.validity
            assert validity is not None
            same = stored is not None and stored[0] == validity
            last = stored[1] if stored is not None and same else 0
            if same:
                typ, data = link.conn.uid("SEARCH", "UID", f"{last + 1}:*")
            else:
                typ, data = link.conn.uid("SEARCH", "ALL")
            _check(typ, data, f"UID SEARCH in {self.folder}")
            # "n:*" always matches the highest UID, even below n: keep only the new ones.
            uids = sorted(u for u in (int(w) for w in _text(data).split()) if u > last)
            messages: list[tuple[str, bytes]] = []
            taken, size = 0, 0
            for start in range(0, min(len(uids), limit), FETCH_CHUNK):
                chunk = uids[start : min(start + FETCH_CHUNK, limit)]
                typ, data = link.conn.uid("FETCH", uid_set(chunk), "(UID BODY.PEEK[])")
                _check(typ, data, f"UID FETCH in {self.folder}")
                bodies = _fetched(data)
                del data
                # A UID searched but not fetched was expunged meanwhile by someone else.
                for uid in chunk:
                    if uid in bodies:
                        messages.append((str(uid), bodies[uid]))
                        size += len(bodies[uid])
                taken = start + len(chunk)
                if size >= self.max_page_bytes:
                    break
            high = uids[taken - 1] if taken else last
            more = taken < len(uids)
            self._page_validity = validity
            # Every UID below UIDNEXT (as of SELECT) was in the search: once the page holds
            # all of them, this reader has seen the folder up to there.
            seen = high if more or link.uidnext is None else max(high, link.uidnext - 1)
            self._horizon = (validity, seen)
            # A cursor of another UIDVALIDITY, or one we cannot read, is refused: resync.
            resync = bool(cursor) and not same
            return InboxPage(messages, f"{validity}:{high}", more=more, full_resync=resync)

        return self._call(f"fetch from {self.folder}", op)

    def ack(self, keys: Sequence[str]) -> None:
        uids = sorted({int(k) for k in keys})
        if not uids:
            return
        fetched_under = self._page_validity
        target = encode_mailbox(self.processed_folder)

        def op(link: _Link) -> None:
            if link.selected != self.folder:
                self._select(link, self.folder)
            if fetched_under is not None and link.validity != fetched_under:
                log.warning(
                    "IMAP %s: UIDVALIDITY changed from %s to %s since the fetch; not moving "
                    "%d message(s) (the next fetch resyncs)",
                    self.mailbox,
                    fetched_under,
                    link.validity,
                    len(uids),
                )
                return
            self._ensure(link, self.processed_folder)
            conn, members = link.conn, uid_set(uids)
            if "MOVE" in link.capabilities:
                typ, data = conn.uid("MOVE", members, target)
                if typ != "OK" and "TRYCREATE" in _text(data).upper():
                    self._create(link, self.processed_folder)
                    typ, data = conn.uid("MOVE", members, target)
                _check(typ, data, f"UID MOVE to {self.processed_folder}")
                return
            typ, data = conn.uid("COPY", members, target)
            if typ != "OK" and "TRYCREATE" in _text(data).upper():
                self._create(link, self.processed_folder)
                typ, data = conn.uid("COPY", members, target)
            _check(typ, data, f"UID COPY to {self.processed_folder}")
            typ, data = conn.uid("STORE", members, "+FLAGS.SILENT", r"(\Deleted)")
            _check(typ, data, "UID STORE \\Deleted")
            if "UIDPLUS" in link.capabilities:
                typ, data = conn.uid("EXPUNGE", members)
            else:  # also expunges other \Deleted messages of the folder: nothing else to do
                typ, data = conn.expunge()
            _check(typ, data, f"EXPUNGE in {self.folder}")

        # A retried MOVE of UIDs already moved matches nothing and succeeds: safe to repeat.
        self._call(f"ack in {self.folder}", op)

    # ------------------------------------------------------------------ waiting

    @property
    def supports_idle(self) -> bool:
        """Whether :meth:`wait` can really wait (the server announces IDLE). Connects."""
        return "IDLE" in self._call("CAPABILITY", lambda link: link.capabilities)

    def wait(self, timeout: float) -> bool:
        """Block until a message arrives in the folder or ``timeout`` seconds pass (IDLE).

        True: something arrived, was already waiting, or the connection dropped (poll to
        find out); False: the timeout passed quietly. Without IDLE: True at once."""
        deadline = time.monotonic() + max(timeout, 0.0)

        def ready(link: _Link) -> bool | None:
            if "IDLE" not in link.capabilities:
                return True
            self._select(link, self.folder)
            horizon = self._horizon
            if horizon is None:
                return True if link.exists else None
            if horizon[0] != link.validity:
                return True
            if link.uidnext is not None and link.uidnext - 1 > horizon[1]:
                return True
            return None

        with self._lock:
            now = self._call(f"wait on {self.folder}", ready)
            if now is not None:
                return now
            link = self._link
            assert link is not None
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    if self._idle(link, min(remaining, IDLE_MAX)):
                        return True
            except (*_BROKEN, imaplib.IMAP4.error, _Refused) as exc:
                log.info("IMAP IDLE on %s ended: %s", self.mailbox, exc)
                self._drop()
                return True

    def _idle(self, link: _Link, seconds: float) -> bool:
        """One IDLE command of at most ``seconds``; True when EXISTS was announced."""
        conn, reader = link.conn, link.reader
        tag = conn._new_tag()  # type: ignore[attr-defined]
        conn.tagged_commands.pop(tag, None)  # type: ignore[attr-defined]
        conn.send(tag + b" IDLE\r\n")
        arrived = False
        while True:  # until the continuation "+ idling"
            line = conn._get_line()  # type: ignore[attr-defined]
            if line.startswith(b"+"):
                break
            if line.startswith(tag + b" "):
                raise _Refused(f"IDLE: {_text(line)}")
            if line.startswith(b"* BYE"):
                raise imaplib.IMAP4.abort(_text(line))
            arrived = arrived or bool(_EXISTS.match(line))
        end = time.monotonic() + seconds
        while not arrived:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            if not reader.has_line():
                try:
                    reader.fill(remaining)
                except TimeoutError:
                    break
                continue
            line = conn._get_line()  # type: ignore[attr-defined]
            if line.startswith(b"* BYE"):
                raise imaplib.IMAP4.abort(_text(line))
            arrived = bool(_EXISTS.match(line))
        conn.send(b"DONE\r\n")
        while True:  # until our tagged answer; anything untagged meanwhile is fine
            line = conn._get_line()  # type: ignore[attr-defined]
            if line.startswith(tag + b" "):
                if not line[len(tag) + 1 :].upper().startswith(b"OK"):
                    raise _Refused(f"IDLE: {_text(line)}")
                return arrived
            arrived = arrived or bool(_EXISTS.match(line))


# ----------------------------------------------------------------------- the Sent folder


def normal_message_id(message_id: str) -> str:
    """``<local@domain>``: the bracketed id when there is one (comments and folding around
    it dropped), else the whole value with brackets added. Case is kept: it matters."""
    bracketed = re.search(r"<[^<>]*>", message_id)
    text = "".join((bracketed.group(0) if bracketed else message_id).split())
    if not text.startswith("<"):
        text = "<" + text
    if not text.endswith(">"):
        text += ">"
    if len(text) <= 2 or not text.isascii() or any(c in text for c in '"\\'):
        raise ValueError(f"not a Message-ID: {message_id!r}")
    return text


def _message_id_of(raw: bytes) -> str | None:
    header = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    value = header.get("Message-ID")
    if not value:
        return None
    try:
        return normal_message_id(str(value))
    except ValueError:
        return None


class ImapSentFolder(_ImapClient):
    """The Sent folder (``imap_sent_folder``): is a Message-ID there, and keep a copy."""

    def __init__(
        self,
        host: str,
        port: int,
        security: str,
        username: str,
        password: str,
        folder: str = "Sent",
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = TIMEOUT,
    ):
        super().__init__(
            host, port, security, username, password, ssl_context=ssl_context, timeout=timeout
        )
        self.folder = folder

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> ImapSentFolder:
        cls._settings_problems(settings, "the IMAP Sent folder is used")
        return cls(
            settings.imap_host,
            settings.imap_port,
            settings.imap_security,
            settings.imap_username,
            settings.imap_password,
            settings.imap_sent_folder,
            **kwargs,
        )

    def find(self, message_id: str) -> bool:
        """Whether a message with this Message-ID is in the Sent folder (exact match)."""
        wanted = normal_message_id(message_id)
        return self._call(f"find in {self.folder}", lambda link: self._find(link, wanted))

    def _find(self, link: _Link, wanted: str) -> bool:
        if not self._exists(link, self.folder):
            return False
        self._select(link, self.folder, readonly=True)
        typ, data = link.conn.uid("SEARCH", "HEADER", "Message-ID", quote(wanted))
        _check(typ, data, f"UID SEARCH in {self.folder}")
        hits = sorted(int(w) for w in _text(data).split())
        # HEADER matches substrings: read the hits' Message-ID to compare it exactly.
        for start in range(0, len(hits), FETCH_CHUNK):
            chunk = hits[start : start + FETCH_CHUNK]
            typ, data = link.conn.uid(
                "FETCH", uid_set(chunk), "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
            )
            _check(typ, data, f"UID FETCH in {self.folder}")
            for item in data:
                if isinstance(item, tuple) and _message_id_of(item[1]) == wanted:
                    return True
        return False

    def keep(self, raw: bytes) -> None:
        """APPEND a copy (flag ``\\Seen``). After a connection lost mid-APPEND, the retry
        first looks the Message-ID up, so a copy the server did take is not added twice."""
        message_id = _message_id_of(raw)

        def append(link: _Link) -> None:
            mailbox = encode_mailbox(self.folder)
            typ, data = link.conn.append(mailbox, r"(\Seen)", None, raw)
            if typ != "OK" and "TRYCREATE" in _text(data).upper():
                self._create(link, self.folder)
                typ, data = link.conn.append(mailbox, r"(\Seen)", None, raw)
            _check(typ, data, f"APPEND to {self.folder}")

        def again(link: _Link) -> None:  # on a new connection, after the first one broke
            if message_id is not None and self._find(link, message_id):
                return
            append(link)

        self._call(f"keep in {self.folder}", append, again)
