"""A real SMTP server (aiosmtpd) on loopback, for the SMTP sender's tests and benchmark.

    with running_smtp() as server:                       # plain SMTP, no AUTH
        sender = SmtpSender(server.host, server.port, security="none")
        ...
        server.messages[0].raw, server.connections, server.transactions

Options: ``auth={"user": "password"}`` requires AUTH (PLAIN and LOGIN) before MAIL;
``tls=self_signed_certificate(folder)`` offers STARTTLS with that certificate (and then AUTH
only over TLS, as real servers do), ``implicit_tls=True`` with it wraps every connection in
TLS from the first byte (SMTP_SSL, port 465 style).

Behaviours a test switches on through :class:`SmtpHandler` (``server.handler``) at any time:

* ``refuse`` (a set of addresses): RCPT TO one of them gets ``550 5.1.1``.
* ``fail_data(n, reply)``: the next n DATA commands get ``reply`` (451 by default), nothing
  is stored.
* ``drop_at_mail`` (a set of transaction numbers, 1-based over the server's life): the server
  closes the connection without answering when that MAIL FROM arrives (a mid-batch drop).
* ``drop_after_accept`` (a set of message numbers, 1-based): the server stores that message
  (and files its Sent copy), then closes the connection instead of answering 250: the client
  cannot know it got through (SMTP's lost-reply ambiguity, RFC 1047).
* ``sent_folder``: every accepted message is also filed in this in-memory Sent folder before
  the 250 goes out (what Gmail and Exchange Online do for SMTP submissions). It is a
  ``SentCopies`` (``find`` / ``keep``) the tests pass to the sender.
* ``on_accept``: called with every accepted message, in the server's thread, before the 250.
* ``random_faults(ratio, lost_ratio, seed)``: from then on, each transaction draws from a
  seeded generator: with ``ratio`` a temporary failure (half ``421`` at MAIL FROM, after
  which the client closes the connection; half ``451`` at DATA, nothing stored), with
  ``lost_ratio`` the message is stored and the connection closed before the 250 (as
  ``drop_after_accept``). ``injected`` counts them by kind ("421", "451", "lost").

:func:`kill_after_accept` makes a sender die (``SystemExit``) right after the server accepted
chosen messages: the worker crash between the provider's answer and our commit.

Counters: ``connections`` (TCP connections opened by clients; the controller's own start-up
probe is not counted), ``sessions`` (EHLO/HELO greetings: a STARTTLS connection says EHLO
twice), ``transactions`` (MAIL FROM commands), ``messages`` (accepted).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import ipaddress
import logging
import random
import socket
import ssl
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"


class _QuietDeprecations(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_QuietDeprecations())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Received:
    """One accepted message, exactly as it came over the wire (dot-unstuffed)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    connection: int  # which connection (1-based) carried it
    authenticated_as: str | None

    @property
    def message_id(self) -> str:
        msg = email.message_from_bytes(self.raw, policy=email.policy.compat32)
        return str(msg.get("Message-ID", "")).strip()


class MemorySentFolder:
    """An in-memory Sent folder: a ``SentCopies`` (find by Message-ID, keep raw)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.raw: list[bytes] = []
        self.ids: list[str] = []
        self.finds = 0
        self.fail_finds = 0  # the next n find() calls raise (an IMAP outage)

    def find(self, message_id: str) -> bool:
        with self._lock:
            self.finds += 1
            if self.fail_finds > 0:
                self.fail_finds -= 1
                raise ConnectionError("Sent folder unreachable (test)")
            return message_id.strip() in self.ids

    def keep(self, raw: bytes) -> None:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        with self._lock:
            self.raw.append(raw)
            self.ids.append(str(msg.get("Message-ID", "")).strip())


class SmtpHandler:
    """aiosmtpd handler: stores, counts and misbehaves on request."""

    def __init__(self, sent_folder: MemorySentFolder | None = None):
        self._lock = threading.Lock()
        self.messages: list[Received] = []
        self.connections = 0
        self.sessions = 0
        self.transactions = 0
        self.refuse: set[str] = set()
        self.drop_at_mail: set[int] = set()
        self.drop_after_accept: set[int] = set()
        self._data_failures: list[str] = []
        self.sent_folder = sent_folder
        self.on_accept: Callable[[Received], None] | None = None
        self.auth_failures = 0
        self._connection_of: dict[int, int] = {}  # id(SMTP protocol) -> connection number
        self.fault_ratio = 0.0
        self.lost_ratio = 0.0
        self._rng = random.Random(0)
        self._planned: dict[int, str] = {}  # id(SMTP protocol) -> "451" | "lost" for this DATA
        self.injected: Counter[str] = Counter()

    def random_faults(self, ratio: float, lost_ratio: float = 0.0, seed: int = 0) -> None:
        """Temporary failures (421 at MAIL FROM, 451 at DATA) on ``ratio`` of the
        transactions from now on, lost 250s on ``lost_ratio``; seeded."""
        with self._lock:
            self.fault_ratio, self.lost_ratio = ratio, lost_ratio
            self._rng = random.Random(seed)

    def fail_data(self, n: int, reply: str = "451 4.3.0 Temporary failure, try again") -> None:
        with self._lock:
            self._data_failures.extend([reply] * n)

    def connected(self, protocol: SMTP) -> None:
        with self._lock:
            self.connections += 1
            self._connection_of[id(protocol)] = self.connections

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook names
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        with self._lock:
            self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_HELO(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        with self._lock:
            self.sessions += 1
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self._lock:
            self.transactions += 1
            drop = self.transactions in self.drop_at_mail
            roll = self._rng.random() if self.fault_ratio or self.lost_ratio else 1.0
            self._planned.pop(id(server), None)
            if roll < self.fault_ratio / 2:
                self.injected["421"] += 1
                return "421 4.3.2 Service shutting down, try again later (test)"
            if roll < self.fault_ratio:
                self._planned[id(server)] = "451"
            elif roll < self.fault_ratio + self.lost_ratio:
                self._planned[id(server)] = "lost"
        if drop:
            assert server.transport is not None
            server.transport.close()  # no answer: the client sees the connection vanish
            return "421 4.4.2 connection dropped (test)"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.lower() in {a.lower() for a in self.refuse}:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        with self._lock:
            if self._data_failures:
                return self._data_failures.pop(0)
            planned = self._planned.pop(id(server), None)
            if planned == "451":
                self.injected["451"] += 1
                return "451 4.3.0 Temporary failure, try again (test)"
        raw = envelope.original_content
        assert isinstance(raw, bytes)
        user = (
            session.auth_data.login.decode()
            if isinstance(session.auth_data, LoginPassword)
            else None
        )
        received = Received(
            mail_from=str(envelope.mail_from),
            rcpt_tos=tuple(envelope.rcpt_tos),
            raw=raw,
            connection=self._connection_of.get(id(server), 0),
            authenticated_as=user,
        )
        with self._lock:
            self.messages.append(received)
            number = len(self.messages)
        if self.sent_folder is not None:
            self.sent_folder.keep(raw)
        if self.on_accept is not None:
            self.on_accept(received)
        if planned == "lost":
            with self._lock:
                self.injected["lost"] += 1
        if number in self.drop_after_accept or planned == "lost":
            assert server.transport is not None
            server.transport.close()  # accepted and stored, but the 250 never goes out
        return f"250 2.0.0 OK queued as {number}"


class _CountingController(Controller):
    """A Controller that tells the handler about every connection (factory is per
    connection) and hands out a server that can require AUTH."""

    def __init__(self, handler: SmtpHandler, users: dict[str, str] | None, **kwargs: Any):
        self._users = users
        self._counting = False
        if users is not None:
            kwargs.setdefault("authenticator", self._authenticate)
            kwargs.setdefault("auth_required", True)
        super().__init__(handler, **kwargs)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self._users is not None
        ok = (
            isinstance(auth_data, LoginPassword)
            and self._users.get(auth_data.login.decode()) == auth_data.password.decode()
        )
        if not ok:
            with self.handler._lock:
                self.handler.auth_failures += 1
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def factory(self) -> SMTP:
        protocol = super().factory()
        if self._counting:
            self.handler.connected(protocol)
        return protocol

    def start(self) -> None:
        super().start()
        self._counting = True  # from here on, connections are the clients'


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: SmtpHandler
    sent_folder: MemorySentFolder
    certificate: Path | None = None  # PEM, for the client's trust store
    controller: Any = field(default=None, repr=False)

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    @property
    def connections(self) -> int:
        return self.handler.connections

    @property
    def sessions(self) -> int:
        return self.handler.sessions

    @property
    def transactions(self) -> int:
        return self.handler.transactions

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that trusts this server's self-signed certificate (and verifies it)."""
        assert self.certificate is not None, "start the server with tls=…"
        return ssl.create_default_context(cafile=str(self.certificate))

    def by_message_id(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.messages:
            counts[m.message_id] = counts.get(m.message_id, 0) + 1
        return counts


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def self_signed_certificate(folder: Path, name: str = "localhost") -> Certificate:
    """A throw-away certificate for 127.0.0.1 and localhost (cryptography), written as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_path, key_path)


@contextlib.contextmanager
def running_smtp(
    *,
    auth: dict[str, str] | None = None,
    tls: Certificate | None = None,
    implicit_tls: bool = False,
    file_sent_copies: bool = False,
) -> Iterator[SmtpServer]:
    """Start an aiosmtpd server on 127.0.0.1 (a free port); stop it on exit.

    ``file_sent_copies``: the server files every accepted message in ``server.sent_folder``
    (the ``"server"`` sent-copy mode). The folder exists either way, for tests that APPEND.
    """
    # aiosmtpd warns on every connection of an AUTH-without-TLS server and logs a deprecation
    # notice on every login; neither says anything about the code under test. (Set here, not
    # at import: pytest restores the warning filters after collection and after each test.)
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    sent_folder = MemorySentFolder()
    handler = SmtpHandler(sent_folder if file_sent_copies else None)
    kwargs: dict[str, Any] = {"hostname": HOST, "port": free_port(), "server_hostname": "smtp.test"}
    if tls is not None:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(str(tls.cert), str(tls.key))
        if implicit_tls:
            kwargs["ssl_context"] = server_ctx
            kwargs["auth_require_tls"] = False  # the whole connection is TLS already
        else:
            kwargs["tls_context"] = server_ctx
            kwargs["require_starttls"] = True
    else:
        assert not implicit_tls, "implicit_tls needs tls=self_signed_certificate(…)"
        # With users, tests without TLS still exercise AUTH; without, AUTH is not offered.
        kwargs["auth_require_tls"] = auth is None
    controller = _CountingController(handler, auth, **kwargs)
    controller.start()
    try:
        yield SmtpServer(
            HOST,
            controller.port,
            handler,
            sent_folder,
            certificate=tls.cert if tls else None,
            controller=controller,
        )
    finally:
        controller.stop()


def kill_after_accept(sender: Any, choose: Callable[[Any], bool]) -> list[str]:
    """Wrap ``sender.send`` so that, for every message ``choose(mail)`` picks, the worker
    dies (``SystemExit``, which no handler catches) right after the server accepted it and
    before the service could record it. Returns the list of Message-IDs it killed after."""
    original = sender.send
    killed: list[str] = []

    def send_then_maybe_die(mail: Any) -> Any:
        sent = original(mail)  # the server answered 250: the message is out
        if choose(mail):
            killed.append(mail.message_id)
            raise SystemExit(f"worker killed after the server accepted {mail.message_id}")
        return sent

    sender.send = send_then_maybe_die
    return killed
