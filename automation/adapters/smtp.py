"""Outgoing mail over SMTP (smtplib): STARTTLS, implicit TLS, AUTH, one connection per batch.

The message goes out as the bytes the outbox holds (``sendmail(sender, recipients, raw)``),
never re-serialised, so our Message-ID, MIME boundaries and headers arrive unchanged.

Security (``smtp_security``):

* ``starttls``: a plain connection (port 587), ``STARTTLS`` with a verifying SSL context, then
  ``EHLO`` again. A server that does not offer STARTTLS is a configuration error.
* ``tls``: implicit TLS from the first byte (``SMTP_SSL``, port 465).
* ``none``: no encryption (tests and a relay on localhost only).

AUTH happens when a username is set. The password is never logged, and error texts name the
setting to fix, never its value.

Connections: :meth:`SmtpSender.send` opens a connection, sends one message and closes it (it
holds no connection between calls, so worker threads can share one sender);
:meth:`SmtpSender.send_many` sends the whole batch over one connection. When the server drops
that connection mid-batch, the sender reconnects once and carries on with the message that was
in flight; a second drop fails the rest of the batch as transient (the service retries them).

Results and errors:

* 2xx: sent. When the server refused some recipients but accepted others (smtplib's
  ``sendmail`` returns the refusals), the message *was* delivered to the accepted ones and
  counts as sent: retrying would send it a second time to everyone who already has it. The
  refusals are logged as a warning; the bounce handling flags a failing address.
* 4xx, a dropped connection, a timeout: :class:`TransientProviderError` (retry later).
* 5xx: :class:`PermanentProviderError`. Every recipient refused with 5xx is permanent too.
* A refused login, a server without AUTH or STARTTLS, a certificate that does not verify:
  :class:`PermanentProviderError` naming the setting to fix.

Exactly once (``sent_copy``), through a :class:`SentCopies` lookup of the Sent folder:

* ``"server"``: the SMTP server files a copy of every accepted message in the Sent folder
  itself (Gmail and Exchange Online do). :meth:`already_sent` searches it by Message-ID, so a
  worker that died after the server's 250 and before our commit finds its earlier attempt.
* ``"append"``: after the server's 250 the sender APPENDs the raw message to the Sent folder
  (IMAP), and :meth:`already_sent` searches it. A worker that dies between the 250 and the
  APPEND leaves no copy: the retry sends the message a second time. The window is one IMAP
  round trip, but it exists. A failed APPEND is logged and the message still counts as sent
  (it was), with the same consequence if that worker then dies before the commit.
* ``"none"``: no lookup; :meth:`already_sent` returns None. A crash between the server's 250
  and our commit sends the message again on retry.

When the lookup itself fails, :meth:`already_sent` raises :class:`TransientProviderError`:
sending without knowing could send twice, so the message waits for the folder to answer.

A drop after the final ``.`` of DATA and before the server's reply is SMTP's own ambiguity
(RFC 1047): the server may have accepted the message. In ``"server"`` mode the batch looks the
message up before sending it again over the new connection (a failing lookup leaves that
message to a later retry); in the other modes it cannot know and sends it again.
"""

from __future__ import annotations

import contextlib
import logging
import smtplib
import socket
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol

from automation.errors import (
    ConfigError,
    ConfigProblem,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
)
from automation.ports import OutgoingMail, SentMail

if TYPE_CHECKING:
    from automation.settings import Settings

log = logging.getLogger("automation.smtp")

Security = Literal["starttls", "tls", "none"]
SentCopyMode = Literal["server", "append", "none"]
SECURITIES = ("starttls", "tls", "none")
SENT_COPY_MODES = ("server", "append", "none")
DEFAULT_TIMEOUT = 30.0

# What a dropped or unusable connection looks like through smtplib. ssl.SSLError is an
# OSError too; _connection_error tells the configuration problems apart.
_DROPPED = (smtplib.SMTPServerDisconnected, OSError)


class SentCopies(Protocol):
    """The Sent folder as the exactly-once check needs it (IMAP in production)."""

    def find(self, message_id: str) -> bool:
        """Whether a message with this Message-ID (``<…>`` as in the header) is filed."""
        ...

    def keep(self, raw: bytes) -> None:
        """File this raw message (an IMAP APPEND to the Sent folder)."""
        ...


class _Lost(Exception):  # noqa: N818 - internal signal: the connection is gone
    """The connection dropped; ``error`` is what the message's slot gets if it stays lost."""

    def __init__(self, error: TransientProviderError):
        super().__init__(str(error))
        self.error = error


def _text(resp: bytes | str) -> str:
    if isinstance(resp, bytes):
        resp = resp.decode("utf-8", "replace")
    return " ".join(resp.split())


class SmtpSender:
    """A :class:`~automation.ports.MailSender` over SMTP."""

    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int = 587,
        *,
        security: Security = "starttls",
        username: str = "",
        password: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        sent_copy: SentCopyMode = "none",
        sent_copies: SentCopies | None = None,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ):
        if security not in SECURITIES:
            raise ValueError(f"security must be one of {', '.join(SECURITIES)}, not {security!r}")
        if sent_copy not in SENT_COPY_MODES:
            raise ValueError(
                f"sent_copy must be one of {', '.join(SENT_COPY_MODES)}, not {sent_copy!r}"
            )
        if sent_copy != "none" and sent_copies is None:
            raise ValueError(f"sent_copy={sent_copy!r} needs a SentCopies (the Sent folder)")
        self.host = host
        self.port = port
        self.security = security
        self.username = username
        self._password = password
        self.timeout = timeout
        self.sent_copy = sent_copy
        self.sent_copies = sent_copies
        self._ssl_context = ssl_context
        # smtplib asks socket.getfqdn() on every connection when not told (a DNS lookup).
        self._local_hostname = local_hostname

    def __repr__(self) -> str:  # never the password
        return (
            f"SmtpSender({self.host}:{self.port}, security={self.security}, "
            f"username={self.username!r}, sent_copy={self.sent_copy})"
        )

    @classmethod
    def from_settings(cls, settings: Settings, sent_copies: SentCopies | None = None) -> SmtpSender:
        """The sender the settings describe. ``smtp_sent_copy`` (when the settings have it)
        picks the exactly-once mode; without it: ``append`` when ``imap_host`` is set, else
        ``none``. The Sent folder is :class:`automation.adapters.imap.ImapSentFolder`."""
        source = getattr(settings, "source", "(settings)")
        if not settings.smtp_host:
            raise ConfigError(
                ConfigProblem(
                    source,
                    "smtp_host",
                    "required when mail_transport is smtp",
                    'e.g. smtp_host = "smtp.gmail.com"',
                )
            )
        security = settings.smtp_security
        if security not in SECURITIES:
            raise ConfigError(
                ConfigProblem(
                    source, "smtp_security", f"expected tls, starttls or none, got {security!r}"
                )
            )
        chosen = getattr(settings, "smtp_sent_copy", "") or ""
        mode = chosen or ("append" if settings.imap_host else "none")
        if mode not in SENT_COPY_MODES:
            raise ConfigError(
                ConfigProblem(
                    source, "smtp_sent_copy", f"expected server, append or none, got {mode!r}"
                )
            )
        if mode != "none" and sent_copies is None:
            sent_copies = _imap_sent_folder(settings)
            if sent_copies is None:
                if chosen:
                    raise ConfigError(
                        ConfigProblem(
                            source,
                            "smtp_sent_copy",
                            f"{mode} needs the IMAP Sent folder, which is not available here",
                            "set the imap_* settings, or smtp_sent_copy = none",
                        )
                    )
                log.warning(
                    "SMTP: no IMAP Sent folder available; sending without the exactly-once "
                    "lookup (a worker dying after the server accepted a message can send it twice)"
                )
                mode = "none"
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            security=security,  # type: ignore[arg-type]
            username=settings.smtp_username,
            password=settings.smtp_password,
            timeout=float(getattr(settings, "smtp_timeout_seconds", DEFAULT_TIMEOUT)),
            sent_copy=mode,  # type: ignore[arg-type]
            sent_copies=sent_copies,
        )

    # ------------------------------------------------------------------ MailSender

    def already_sent(self, mail: OutgoingMail) -> SentMail | None:
        if self.sent_copy == "none" or self.sent_copies is None:
            return None
        if self._find(mail.message_id):
            return SentMail(mail.message_id)
        return None

    def send(self, mail: OutgoingMail) -> SentMail:
        (result,) = self.send_many([mail])
        if isinstance(result, Exception):
            raise result
        return result

    def send_many(self, mails: Sequence[OutgoingMail]) -> list[SentMail | Exception]:
        """Every message over one connection, one result per message, in order."""
        results: list[SentMail | Exception] = []
        conn: smtplib.SMTP | None = None
        reconnects = 1
        broken: ProviderError | None = None  # no connection to be had: the rest fail with it
        try:
            for mail in mails:
                if broken is not None:
                    results.append(_not_attempted(broken, mail))
                    continue
                after_drop = False
                while True:
                    try:
                        if conn is None:
                            conn = self._open()
                            if after_drop and self._got_through(mail):
                                results.append(SentMail(mail.message_id))
                                break
                        results.append(self._deliver(conn, mail))
                    except ProviderError as exc:
                        # From _open: nothing more can go out. From _deliver (or the lookup
                        # after a drop): this message failed; the connection is still good.
                        results.append(exc)
                        if conn is None:
                            broken = exc
                    except _Lost as lost:
                        _close(conn)
                        conn = None
                        if reconnects > 0:
                            reconnects -= 1
                            after_drop = True
                            log.info("%s dropped the connection; reconnecting", self._where())
                            continue
                        results.append(lost.error)
                        broken = lost.error
                    break
        finally:
            if conn is not None:
                _quit(conn)
        return results

    def _got_through(self, mail: OutgoingMail) -> bool:
        """After a drop: did the message in flight reach the server anyway? Only the
        ``"server"`` mode can tell (the server filed it); otherwise it is sent again. A lookup
        that fails raises TransientProviderError: that message waits, the batch goes on."""
        return self.sent_copy == "server" and self._find(mail.message_id)

    # ------------------------------------------------------------------ internals

    def _where(self) -> str:
        return f"SMTP server {self.host}:{self.port}"

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _hostname(self) -> str:
        if self._local_hostname is None:
            self._local_hostname = socket.getfqdn()
        return self._local_hostname

    def _open(self) -> smtplib.SMTP:
        """A connection ready for MAIL FROM: TLS and AUTH done. Raises ProviderError."""
        conn: smtplib.SMTP | None = None
        try:
            if self.security == "tls":
                conn = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    local_hostname=self._hostname(),
                    timeout=self.timeout,
                    context=self._context(),
                )
            else:
                conn = smtplib.SMTP(
                    self.host, self.port, local_hostname=self._hostname(), timeout=self.timeout
                )
            conn.ehlo()
            if self.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise PermanentProviderError(
                        f"{self._where()} does not offer STARTTLS: check smtp_port (587 for "
                        "STARTTLS, 465 for smtp_security = tls) and smtp_security"
                    )
                code, resp = conn.starttls(context=self._context())
                if code != 220:
                    raise _response_error(self._where(), "STARTTLS", code, resp)
                conn.ehlo()
            if self.username:
                self._login(conn)
            log.debug("SMTP connected to %s:%s (%s)", self.host, self.port, self.security)
            return conn
        except ProviderError:
            _close(conn)
            raise
        except smtplib.SMTPConnectError as exc:  # the greeting was not 220
            _close(conn)
            raise _response_error(self._where(), "connect", exc.smtp_code, exc.smtp_error) from exc
        except smtplib.SMTPNotSupportedError as exc:
            _close(conn)
            raise PermanentProviderError(
                f"{self._where()}: {exc}: check smtp_security and smtp_port"
            ) from exc
        except smtplib.SMTPResponseException as exc:
            _close(conn)
            raise _response_error(
                self._where(), "EHLO/STARTTLS", exc.smtp_code, exc.smtp_error
            ) from exc
        except _DROPPED as exc:
            _close(conn)
            raise _connection_error(self._where(), exc) from exc

    def _login(self, conn: smtplib.SMTP) -> None:
        if not conn.has_extn("auth"):
            hint = (
                " (many servers offer AUTH only after STARTTLS: smtp_security = starttls)"
                if self.security == "none"
                else ""
            )
            raise PermanentProviderError(
                f"{self._where()} does not offer AUTH: check smtp_username (leave it empty "
                f"for a relay that needs no login) and smtp_security{hint}"
            )
        try:
            conn.login(self.username, self._password)
        except smtplib.SMTPAuthenticationError as exc:
            reply = self._scrub(_text(exc.smtp_error))
            if 400 <= exc.smtp_code < 500:  # 454: temporary authentication failure
                raise TransientProviderError(
                    f"{self._where()}: login as {self.username!r} failed for now "
                    f"({exc.smtp_code} {reply})"
                ) from None
            raise PermanentProviderError(
                f"{self._where()} refused the login as {self.username!r} ({exc.smtp_code} "
                f"{reply}): check smtp_username and smtp_password (Google Workspace: an app "
                "password; Microsoft 365: SMTP AUTH enabled for the mailbox)"
            ) from None  # the chained smtplib error is dropped: nothing there to leak later
        except smtplib.SMTPException as exc:
            if isinstance(exc, smtplib.SMTPServerDisconnected):
                raise
            raise PermanentProviderError(
                f"{self._where()}: no AUTH mechanism both sides support for {self.username!r}: "
                "check smtp_username and smtp_security"
            ) from None

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "(hidden)") if self._password else text

    def _deliver(self, conn: smtplib.SMTP, mail: OutgoingMail) -> SentMail:
        """One transaction on an open connection. Raises ProviderError for a refusal of this
        message (the connection stays usable), _Lost when the connection is gone."""
        what = f"message {mail.message_id}"
        try:
            refused = conn.sendmail(mail.sender, list(mail.recipients), mail.raw)
        except smtplib.SMTPRecipientsRefused as exc:
            if any(code == 421 for code, _ in exc.recipients.values()):
                raise _Lost(
                    TransientProviderError(f"{self._where()} closed the connection at RCPT")
                ) from exc
            raise _refusal(self._where(), what, exc.recipients) from exc
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            step = "MAIL FROM" if isinstance(exc, smtplib.SMTPSenderRefused) else "DATA"
            if exc.smtp_code == 421:  # the server is closing the connection
                text = f"{self._where()}: {step}: 421 {_text(exc.smtp_error)}"
                raise _Lost(TransientProviderError(text)) from exc
            error = _response_error(
                self._where(), f"{step} for {what}", exc.smtp_code, exc.smtp_error
            )
            if exc.smtp_code == 530:  # 5.7.0 Authentication required
                error = PermanentProviderError(
                    f"{error}: the server wants a login: set smtp_username and smtp_password"
                )
            elif step == "MAIL FROM" and isinstance(error, PermanentProviderError):
                error = PermanentProviderError(f"{error}: check mail_from ({mail.sender})")
            raise error from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentProviderError(f"{self._where()}: {what}: {exc}") from exc
        except smtplib.SMTPResponseException as exc:
            raise _response_error(self._where(), what, exc.smtp_code, exc.smtp_error) from exc
        except _DROPPED as exc:
            error = _connection_error(self._where(), exc)
            if isinstance(error, PermanentProviderError):
                raise error from exc
            raise _Lost(error) from exc
        if refused:
            log.warning(
                "SMTP: %s accepted for %d of %d recipients; refused: %s",
                what,
                len(mail.recipients) - len(refused),
                len(mail.recipients),
                ", ".join(
                    f"{rcpt} ({code} {_text(resp)})" for rcpt, (code, resp) in refused.items()
                ),
            )
        if self.sent_copy == "append":
            assert self.sent_copies is not None
            try:
                self.sent_copies.keep(mail.raw)
            except Exception as exc:  # the message is out: it counts as sent regardless
                log.warning(
                    "SMTP: %s sent, but filing its copy in the Sent folder failed (%s: %s); a "
                    "retry of this message would not find it",
                    what,
                    type(exc).__name__,
                    exc,
                )
        return SentMail(mail.message_id)

    def _find(self, message_id: str) -> bool:
        assert self.sent_copies is not None
        try:
            return bool(self.sent_copies.find(message_id))
        except ProviderError:
            raise
        except Exception as exc:
            raise TransientProviderError(
                f"Sent folder lookup of {message_id} failed ({type(exc).__name__}: {exc}); not "
                "sending until it answers"
            ) from exc


def _imap_sent_folder(settings: Settings) -> SentCopies | None:
    """The production Sent folder, when the IMAP adapter is there (it is imported lazily)."""
    try:
        from automation.adapters import imap  # type: ignore[attr-defined]
    except ImportError:
        return None
    folder_type = getattr(imap, "ImapSentFolder", None)
    if folder_type is None:
        return None
    return folder_type.from_settings(settings)  # type: ignore[no-any-return]


def _response_error(where: str, step: str, code: int, resp: bytes | str) -> ProviderError:
    text = f"{where}: {step}: {code} {_text(resp)}"
    if 400 <= code < 500 or code < 200:
        return TransientProviderError(text)
    return PermanentProviderError(text)


def _refusal(where: str, what: str, refused: dict[str, tuple[int, bytes]]) -> ProviderError:
    """Every recipient refused: permanent only when every refusal was."""
    listed = ", ".join(f"{rcpt} ({code} {_text(resp)})" for rcpt, (code, resp) in refused.items())
    text = f"{where} refused every recipient of {what}: {listed}"
    if any(not 500 <= code < 600 for code, _ in refused.values()):
        return TransientProviderError(text)
    return PermanentProviderError(text)


def _connection_error(where: str, exc: BaseException) -> ProviderError:
    detail = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentProviderError(
            f"{where}: its TLS certificate does not verify ({exc.verify_message}): check "
            "smtp_host (the name on the certificate)"
        )
    if isinstance(exc, ssl.SSLError) and not isinstance(
        exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError
    ):
        return PermanentProviderError(
            f"{where}: TLS failed ({detail}): check smtp_security and smtp_port (465 is "
            "implicit TLS: tls; 587 is starttls)"
        )
    if isinstance(exc, socket.gaierror):
        return TransientProviderError(
            f"{where}: cannot resolve the name ({detail}): check smtp_host"
        )
    return TransientProviderError(f"{where}: connection failed ({detail})")


def _not_attempted(error: ProviderError, mail: OutgoingMail) -> ProviderError:
    """The error that stopped the batch, for a message that was not attempted."""
    copy = type(error)(f"{error} (not attempted: {mail.message_id})")
    copy.__cause__ = error
    return copy


def _quit(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (smtplib.SMTPException, OSError):
        conn.close()


def _close(conn: smtplib.SMTP | None) -> None:
    if conn is not None:
        with contextlib.suppress(OSError):
            conn.close()
