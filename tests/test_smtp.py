"""The SMTP sender against a real SMTP server (aiosmtpd) on loopback.

What arrives is compared byte for byte with what the outbox holds; connections, sessions and
transactions are counted by the server; the exactly-once story runs through the real service
loop with workers dying right after the server accepted.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import logging
import random
import sys
import traceback
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from automation.adapters.smtp import SmtpSender
from automation.emails import Rendered, build_message, make_message_id
from automation.errors import ConfigError, PermanentProviderError, TransientProviderError
from automation.ports import OutgoingMail, SentMail
from automation.settings import Settings, load_settings
from tests.fakes.smtp_server import (
    Certificate,
    MemorySentFolder,
    SmtpServer,
    free_port,
    kill_after_accept,
    running_smtp,
    self_signed_certificate,
)

SENDER = "checkins@acme.test"
USER, PASSWORD = "checkins@acme.test", "s3cret-Hunter2-pw"


def make_mail(n: int, to: tuple[str, ...] = ("ana@acme.test",), **extra: object) -> OutgoingMail:
    """A real outbox message (build_message), with a line that needs SMTP dot-stuffing."""
    message_id = make_message_id(f"test:{n}", "acme.test")
    rendered = Rendered(
        subject=f"Agenda {n}: your check-in",
        text=f"Hello,\n.a line that starts with a dot\n..and two\nGrüße, message {n}\n",
        html=f"<p>Hello, message {n}</p>",
    )
    raw = build_message(
        rendered,
        sender=f"Check-ins <{SENDER}>",
        to=list(to),
        message_id=message_id,
        date=dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC),
        **extra,  # type: ignore[arg-type]
    )
    return OutgoingMail(message_id=message_id, raw=raw, sender=SENDER, recipients=to)


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with running_smtp() as srv:
        yield srv


def plain_sender(srv: SmtpServer, **kwargs: object) -> SmtpSender:
    return SmtpSender(srv.host, srv.port, security="none", local_hostname="worker.test", **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return self_signed_certificate(tmp_path_factory.mktemp("smtp-tls"))


# --------------------------------------------------------------------------- what arrives


def test_the_raw_bytes_arrive_unchanged(server: SmtpServer) -> None:
    parent = make_message_id("test:parent", "acme.test")
    mail = make_mail(
        1, to=("ana@acme.test", "boss@acme.test"), in_reply_to=parent, references=[parent]
    )
    sent = plain_sender(server).send(mail)
    assert sent == SentMail(mail.message_id)
    (got,) = server.messages
    assert got.raw == mail.raw  # byte for byte: no re-serialisation, dots unstuffed again
    assert got.mail_from == SENDER and got.rcpt_tos == ("ana@acme.test", "boss@acme.test")
    parsed = email.message_from_bytes(got.raw, policy=email.policy.default)
    assert parsed["Message-ID"] == mail.message_id
    assert parsed["In-Reply-To"] == parent and parsed["References"] == parent
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed.get_content_type() == "multipart/alternative"
    original = email.message_from_bytes(mail.raw, policy=email.policy.default)
    assert parsed.get_boundary() == original.get_boundary() is not None
    assert "Content-Transfer-Encoding: 8bit" in got.raw.decode()  # 8-bit body, unencoded
    text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert ".a line that starts with a dot\r\n..and two\r\nGrüße" in text


def test_send_many_of_50_uses_one_connection(server: SmtpServer) -> None:
    mails = [make_mail(n) for n in range(50)]
    results = plain_sender(server).send_many(mails)
    assert results == [SentMail(m.message_id) for m in mails]
    assert server.connections == 1 and server.sessions == 1
    assert server.transactions == 50
    assert [m.message_id for m in server.messages] == [m.message_id for m in mails]
    assert {m.connection for m in server.messages} == {1}


def test_send_opens_one_connection_per_call(server: SmtpServer) -> None:
    sender = plain_sender(server)
    for n in range(3):
        sender.send(make_mail(n))
    assert server.connections == 3 and len(server.messages) == 3


def test_an_empty_batch_opens_no_connection(server: SmtpServer) -> None:
    assert plain_sender(server).send_many([]) == []
    assert server.connections == 0


# --------------------------------------------------------------------------- refusals


def test_a_refused_recipient_fails_only_that_message(server: SmtpServer) -> None:
    server.handler.refuse.add("gone@acme.test")
    mails = [make_mail(n) for n in range(5)]
    mails[2] = make_mail(2, to=("gone@acme.test",))
    results = plain_sender(server).send_many(mails)
    assert isinstance(results[2], PermanentProviderError)
    assert "gone@acme.test" in str(results[2]) and "550" in str(results[2])
    assert [r for i, r in enumerate(results) if i != 2] == [
        SentMail(m.message_id) for i, m in enumerate(mails) if i != 2
    ]
    assert [m.message_id for m in server.messages] == [
        m.message_id for i, m in enumerate(mails) if i != 2
    ]
    assert server.connections == 1


def test_partial_acceptance_counts_as_sent_for_the_accepted(
    server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.handler.refuse.add("gone@acme.test")
    mail = make_mail(1, to=("ana@acme.test", "gone@acme.test"))
    with caplog.at_level(logging.WARNING, logger="automation.smtp"):
        assert plain_sender(server).send(mail) == SentMail(mail.message_id)
    (got,) = server.messages
    assert got.rcpt_tos == ("ana@acme.test",)
    assert "gone@acme.test (550" in caplog.text and "1 of 2 recipients" in caplog.text


def test_451_on_data_is_transient_and_the_next_attempt_goes_through(server: SmtpServer) -> None:
    server.handler.fail_data(1)
    sender = plain_sender(server)
    mail = make_mail(1)
    with pytest.raises(TransientProviderError, match="451"):
        sender.send(mail)
    assert server.messages == []
    assert sender.send(mail) == SentMail(mail.message_id)
    assert len(server.messages) == 1


def test_451_in_a_batch_fails_that_slot_only(server: SmtpServer) -> None:
    server.handler.fail_data(1)
    mails = [make_mail(n) for n in range(4)]
    results = plain_sender(server).send_many(mails)
    assert isinstance(results[0], TransientProviderError)
    assert results[1:] == [SentMail(m.message_id) for m in mails[1:]]
    assert server.connections == 1 and len(server.messages) == 3


def test_5xx_on_data_is_permanent(server: SmtpServer) -> None:
    server.handler.fail_data(1, "554 5.6.0 Message content rejected")
    with pytest.raises(PermanentProviderError, match="554"):
        plain_sender(server).send(make_mail(1))
    assert server.messages == []


def test_every_recipient_refused_is_permanent(server: SmtpServer) -> None:
    server.handler.refuse.add("gone@acme.test")
    with pytest.raises(PermanentProviderError, match="refused every recipient"):
        plain_sender(server).send(make_mail(1, to=("gone@acme.test",)))


def test_nobody_listening_is_transient() -> None:
    sender = SmtpSender("127.0.0.1", free_port(), security="none", timeout=5)
    with pytest.raises(TransientProviderError, match="connection failed"):
        sender.send(make_mail(1))
    results = sender.send_many([make_mail(1), make_mail(2)])
    assert all(isinstance(r, TransientProviderError) for r in results)


# --------------------------------------------------------------------------- dropped connections


def test_a_mid_batch_drop_reconnects_once_and_sends_everything(server: SmtpServer) -> None:
    server.handler.drop_at_mail = {3}  # the third MAIL FROM: the connection vanishes
    mails = [make_mail(n) for n in range(6)]
    results = plain_sender(server).send_many(mails)
    assert results == [SentMail(m.message_id) for m in mails]
    assert server.connections == 2
    assert [m.message_id for m in server.messages] == [m.message_id for m in mails]
    assert [m.connection for m in server.messages] == [1, 1, 2, 2, 2, 2]


def test_a_second_drop_fails_the_rest_of_the_batch_as_transient(server: SmtpServer) -> None:
    server.handler.drop_at_mail = {3, 5}  # message 3 is retried as transaction 4; 5 drops again
    mails = [make_mail(n) for n in range(6)]
    results = plain_sender(server).send_many(mails)
    assert results[:3] == [SentMail(m.message_id) for m in mails[:3]]
    assert all(isinstance(r, TransientProviderError) for r in results[3:])
    assert "not attempted" in str(results[5])
    assert [m.message_id for m in server.messages] == [m.message_id for m in mails[:3]]
    assert server.connections == 2


def test_a_lost_250_is_not_sent_again_when_the_server_files_sent_copies() -> None:
    with running_smtp(file_sent_copies=True) as srv:
        srv.handler.drop_after_accept = {2}  # stored, then the connection closes: no 250
        sender = plain_sender(srv, sent_copy="server", sent_copies=srv.sent_folder)
        mails = [make_mail(n) for n in range(4)]
        results = sender.send_many(mails)
        assert results == [SentMail(m.message_id) for m in mails]
        assert [m.message_id for m in srv.messages] == [m.message_id for m in mails]
        assert srv.connections == 2


def test_after_a_drop_a_failing_lookup_holds_that_message_back() -> None:
    with running_smtp(file_sent_copies=True) as srv:
        srv.handler.drop_after_accept = {2}
        srv.sent_folder.fail_finds = 1  # the lookup after the drop cannot answer
        sender = plain_sender(srv, sent_copy="server", sent_copies=srv.sent_folder)
        mails = [make_mail(n) for n in range(4)]
        results = sender.send_many(mails)
        assert isinstance(results[1], TransientProviderError)
        assert "Sent folder lookup" in str(results[1])
        assert [results[0], *results[2:]] == [
            SentMail(m.message_id) for m in (mails[0], *mails[2:])
        ]
        assert srv.by_message_id() == {m.message_id: 1 for m in mails}  # not sent blind


# --------------------------------------------------------------------------- AUTH and TLS


def test_auth_logs_in_with_the_configured_user() -> None:
    with running_smtp(auth={USER: PASSWORD}) as srv:
        plain_sender(srv, username=USER, password=PASSWORD).send(make_mail(1))
        assert srv.messages[0].authenticated_as == USER


def test_a_refused_login_is_permanent_and_never_shows_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with running_smtp(auth={USER: "the-right-one"}) as srv:
        sender = plain_sender(srv, username=USER, password=PASSWORD)
        with pytest.raises(PermanentProviderError) as info:
            sender.send(make_mail(1))
        (slot,) = sender.send_many([make_mail(2)])
        # Two connections; smtplib tries each mechanism both sides have (PLAIN, LOGIN).
        assert srv.connections == 2 and srv.handler.auth_failures == 4
        assert srv.messages == []
    text = str(info.value)
    assert "smtp_username" in text and "smtp_password" in text and "535" in text
    assert isinstance(slot, PermanentProviderError) and "smtp_password" in str(slot)
    shown = "".join(traceback.format_exception(info.value)) + caplog.text + repr(sender)
    assert PASSWORD not in shown and PASSWORD not in str(slot)
    ours = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("automation"))
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    assert encoded not in ours and encoded not in shown


def test_a_username_for_a_server_without_auth_names_the_settings(server: SmtpServer) -> None:
    with pytest.raises(PermanentProviderError, match="does not offer AUTH.*smtp_username"):
        plain_sender(server, username=USER, password=PASSWORD).send(make_mail(1))


def test_no_username_for_a_server_that_requires_a_login_names_the_settings() -> None:
    with running_smtp(auth={USER: PASSWORD}) as srv:
        with pytest.raises(PermanentProviderError, match="530.*smtp_username and smtp_password"):
            plain_sender(srv).send(make_mail(1))
        assert srv.messages == []


def test_starttls_with_a_self_signed_certificate(certificate: Certificate) -> None:
    with running_smtp(auth={USER: PASSWORD}, tls=certificate) as srv:
        sender = SmtpSender(
            srv.host,
            srv.port,
            security="starttls",
            username=USER,
            password=PASSWORD,
            ssl_context=srv.client_context(),
            local_hostname="worker.test",
        )
        mails = [make_mail(n) for n in range(3)]
        assert sender.send_many(mails) == [SentMail(m.message_id) for m in mails]
        assert srv.connections == 1 and srv.sessions == 2  # EHLO, STARTTLS, EHLO again
        assert all(m.raw == mail.raw for m, mail in zip(srv.messages, mails, strict=True))
        assert {m.authenticated_as for m in srv.messages} == {USER}


def test_starttls_refuses_a_certificate_it_does_not_trust(certificate: Certificate) -> None:
    with running_smtp(tls=certificate) as srv:
        sender = SmtpSender(srv.host, srv.port, security="starttls")  # the system's trust store
        with pytest.raises(PermanentProviderError, match="certificate does not verify"):
            sender.send(make_mail(1))
        assert srv.messages == []


def test_no_tls_against_a_server_that_offers_auth_only_after_starttls(
    certificate: Certificate,
) -> None:
    with running_smtp(auth={USER: PASSWORD}, tls=certificate) as srv:
        sender = plain_sender(srv, username=USER, password=PASSWORD)
        with pytest.raises(PermanentProviderError, match="smtp_security = starttls"):
            sender.send(make_mail(1))


def test_implicit_tls(certificate: Certificate) -> None:
    with running_smtp(auth={USER: PASSWORD}, tls=certificate, implicit_tls=True) as srv:
        sender = SmtpSender(
            srv.host,
            srv.port,
            security="tls",
            username=USER,
            password=PASSWORD,
            ssl_context=srv.client_context(),
        )
        mail = make_mail(1)
        assert sender.send(mail) == SentMail(mail.message_id)
        assert srv.messages[0].raw == mail.raw and srv.messages[0].authenticated_as == USER


def test_starttls_against_an_implicit_tls_port_is_a_configuration_error(
    certificate: Certificate,
) -> None:
    with running_smtp(tls=certificate, implicit_tls=True) as srv:
        sender = SmtpSender(srv.host, srv.port, security="starttls", timeout=5)
        with pytest.raises(TransientProviderError):  # the TLS server never sends a greeting
            sender.send(make_mail(1))


# --------------------------------------------------------------------------- exactly once


def test_server_mode_finds_the_copy_the_server_filed() -> None:
    with running_smtp(file_sent_copies=True) as srv:
        sender = plain_sender(srv, sent_copy="server", sent_copies=srv.sent_folder)
        mail, other = make_mail(1), make_mail(2)
        assert sender.already_sent(mail) is None
        sender.send(mail)
        assert sender.already_sent(mail) == SentMail(mail.message_id)
        assert sender.already_sent(other) is None
        assert srv.sent_folder.ids == [mail.message_id]  # filed by the server, not by us


def test_append_mode_files_a_copy_after_each_accepted_message(server: SmtpServer) -> None:
    folder = MemorySentFolder()
    sender = plain_sender(server, sent_copy="append", sent_copies=folder)
    mails = [make_mail(n) for n in range(3)]
    server.handler.fail_data(1)  # the first is refused: no copy for it
    results = sender.send_many(mails)
    assert isinstance(results[0], TransientProviderError)
    assert folder.raw == [m.raw for m in mails[1:]]
    assert sender.already_sent(mails[0]) is None
    assert sender.already_sent(mails[1]) == SentMail(mails[1].message_id)


def test_append_mode_can_send_twice_when_the_worker_dies_before_the_append(
    server: SmtpServer,
) -> None:
    """The documented limit of "append": the 250 came, the APPEND did not happen."""
    folder = MemorySentFolder()

    def die(raw: bytes) -> None:
        raise SystemExit("worker killed between the 250 and the APPEND")

    folder.keep = die  # type: ignore[method-assign]
    sender = plain_sender(server, sent_copy="append", sent_copies=folder)
    mail = make_mail(1)
    with pytest.raises(SystemExit):
        sender.send(mail)
    assert sender.already_sent(mail) is None  # nothing filed: the retry cannot know
    del folder.keep
    sender.send(mail)
    assert server.by_message_id() == {mail.message_id: 2}


def test_a_failed_append_still_counts_as_sent(
    server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    folder = MemorySentFolder()

    def fail(raw: bytes) -> None:
        raise ConnectionError("IMAP down")

    folder.keep = fail  # type: ignore[method-assign]
    mail = make_mail(1)
    with caplog.at_level(logging.WARNING, logger="automation.smtp"):
        result = plain_sender(server, sent_copy="append", sent_copies=folder).send(mail)
    assert result == SentMail(mail.message_id) and len(server.messages) == 1
    assert "filing its copy in the Sent folder failed" in caplog.text


def test_none_mode_never_looks(server: SmtpServer) -> None:
    folder = MemorySentFolder()
    sender = plain_sender(server, sent_copy="none", sent_copies=folder)
    mail = make_mail(1)
    sender.send(mail)
    assert sender.already_sent(mail) is None
    assert folder.finds == 0 and folder.raw == []


def test_a_failing_lookup_is_transient_rather_than_a_blind_send() -> None:
    folder = MemorySentFolder()
    folder.fail_finds = 1
    sender = SmtpSender("127.0.0.1", 25, sent_copy="server", sent_copies=folder)
    with pytest.raises(TransientProviderError, match="Sent folder lookup"):
        sender.already_sent(make_mail(1))


def test_a_lookup_mode_needs_a_sent_folder() -> None:
    with pytest.raises(ValueError, match="SentCopies"):
        SmtpSender("127.0.0.1", 25, sent_copy="server")
    with pytest.raises(ValueError, match="sent_copy"):
        SmtpSender("127.0.0.1", 25, sent_copy="always")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- from settings


def smtp_settings(**changes: object) -> Settings:
    return Settings(
        mail_transport="smtp",
        smtp_host="smtp.example.com",
        smtp_port=587,
        smtp_username=USER,
        smtp_password=PASSWORD,
    ).with_(**changes)


def test_from_settings_without_imap_has_no_lookup() -> None:
    sender = SmtpSender.from_settings(smtp_settings())
    assert (sender.host, sender.port, sender.security) == ("smtp.example.com", 587, "starttls")
    assert sender.sent_copy == "none" and sender.username == USER
    assert PASSWORD not in repr(sender)


def test_from_settings_appends_through_the_imap_sent_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[Settings] = []

    class FakeImapSentFolder(MemorySentFolder):
        @classmethod
        def from_settings(cls, settings: Settings) -> FakeImapSentFolder:
            made.append(settings)
            return cls()

    module = types.ModuleType("automation.adapters.imap")
    module.ImapSentFolder = FakeImapSentFolder  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "automation.adapters.imap", module)
    import automation.adapters

    monkeypatch.setattr(automation.adapters, "imap", module, raising=False)
    settings = smtp_settings(imap_host="imap.example.com")
    sender = SmtpSender.from_settings(settings)
    assert sender.sent_copy == "append" and isinstance(sender.sent_copies, FakeImapSentFolder)
    assert made == [settings]


def test_from_settings_without_the_imap_adapter_falls_back_to_no_lookup(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import automation.adapters

    monkeypatch.setitem(sys.modules, "automation.adapters.imap", None)  # import fails
    monkeypatch.delattr(automation.adapters, "imap", raising=False)
    with caplog.at_level(logging.WARNING, logger="automation.smtp"):
        sender = SmtpSender.from_settings(smtp_settings(imap_host="imap.example.com"))
    assert sender.sent_copy == "none" and "can send it twice" in caplog.text


def test_from_settings_honours_the_smtp_sent_copy_setting() -> None:
    folder = MemorySentFolder()
    sender = SmtpSender.from_settings(smtp_settings(smtp_sent_copy="server"), sent_copies=folder)
    assert sender.sent_copy == "server" and sender.sent_copies is folder
    with pytest.raises(ConfigError, match="smtp_sent_copy"):
        load_settings(environ={"AUTOMATION_SMTP_SENT_COPY": "sometimes"})
    assert load_settings(environ={"AUTOMATION_SMTP_HOST": "smtp.gmail.com"}).smtp_host == (
        "smtp.gmail.com"
    )


def test_from_settings_needs_a_host() -> None:
    with pytest.raises(ConfigError, match="smtp_host"):
        SmtpSender.from_settings(smtp_settings(smtp_host=""))


def test_build_sender_picks_smtp() -> None:
    from automation.adapters.mail import build_sender

    sender = build_sender(smtp_settings(smtp_security="tls", smtp_port=465))
    assert isinstance(sender, SmtpSender) and (sender.security, sender.port) == ("tls", 465)


def test_append_mode_with_the_real_imap_sent_folder() -> None:
    """The production wiring: from_settings, SMTP to aiosmtpd, APPEND to and search in a real
    Dovecot (tests/fakes/dovecot.py; skipped where Dovecot is not installed)."""
    pytest.importorskip("automation.adapters.imap")
    dovecot_fake = pytest.importorskip("tests.fakes.dovecot")
    with dovecot_fake.running_dovecot() as dovecot, running_smtp() as srv:
        account = dovecot.add_user()
        settings = smtp_settings(
            smtp_host=srv.host,
            smtp_port=srv.port,
            smtp_security="none",
            smtp_username="",
            imap_host=dovecot.host,
            imap_port=dovecot.port,
            imap_security="none",
            imap_username=account.username,
            imap_password=account.password,
        )
        sender = SmtpSender.from_settings(settings)
        assert sender.sent_copy == "append"
        mail, other = make_mail(1), make_mail(2)
        assert sender.already_sent(mail) is None
        sender.send(mail)
        # Another worker, with its own connections, finds the copy by Message-ID.
        again = SmtpSender.from_settings(settings)
        assert again.already_sent(mail) == SentMail(mail.message_id)
        assert again.already_sent(other) is None
        assert dovecot.count(account, "Sent") == 1 and len(srv.messages) == 1
        for folder in (sender.sent_copies, again.sent_copies):
            folder.close()  # type: ignore[union-attr]


# --------------------------------------------------------------------------- through the service

# Two managers with six reports each: enough agendas, prompts and reminders in three weeks
# for 20 deaths to be a minority of the sends.
TEAM = "email,name,timezone,manager_email,hr_partner_email\n" + "".join(
    [
        "boss@acme.test,Bea Boss,America/New_York,,hr@acme.test\n",
        "lead@acme.test,Lee Lead,Europe/Berlin,boss@acme.test,hr@acme.test\n",
        "hr@acme.test,Hal Hr,Europe/London,boss@acme.test,hr@acme.test\n",
    ]
    + [
        f"e{i}@acme.test,Employee {i},{zone},{manager},hr@acme.test\n"
        for i, (zone, manager) in enumerate(
            [("Europe/Berlin", "boss@acme.test")] * 4
            + [("Asia/Tokyo", "lead@acme.test"), ("America/New_York", "lead@acme.test")] * 3
        )
    ]
)
KILLS = 20


def test_workers_dying_after_the_server_accepted_send_each_message_exactly_once(
    rt, clock, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from automation.models import OutboundMessage, OutboundState, Task
    from automation.services.loop import run_due
    from tests.conftest import start_organization

    with running_smtp(file_sent_copies=True) as srv:
        sender = SmtpSender(
            srv.host,
            srv.port,
            security="none",
            local_hostname="worker.test",
            sent_copy="server",
            sent_copies=srv.sent_folder,
        )
        rt.sender = sender
        rng = random.Random(20260302)
        dying = [False]

        def choose(mail: OutgoingMail) -> bool:
            return dying[0] and len(killed) < KILLS and rng.random() < 0.3

        killed = kill_after_accept(sender, choose)
        start_organization(rt, tmp_path, TEAM)
        dying[0] = True
        deaths = 0
        end = clock.now() + dt.timedelta(weeks=3)
        while clock.now() < end:
            clock.advance(dt.timedelta(hours=1))
            while True:  # a new worker takes over after each death; leased tasks wait
                try:
                    run_due(rt)
                    break
                except SystemExit:
                    deaths += 1
        dying[0] = False
        # The leases of the last deaths expire; the tasks run again and find the copies.
        clock.advance(dt.timedelta(seconds=rt.settings.lease_seconds + 60))
        run_due(rt)

        with rt.factory() as session:
            rows = list(session.scalars(select(OutboundMessage)))
            results = {
                t.subject_id: t.result
                for t in session.scalars(select(Task).where(Task.kind == "send"))
            }
        counts = srv.by_message_id()

    assert deaths == len(killed) == KILLS
    assert len(rows) >= 3 * KILLS
    assert [r.message_id for r in rows if r.state != OutboundState.SENT] == []  # 0 lost
    assert {r.message_id for r in rows} == set(counts)  # nothing else went out
    assert [mid for mid, n in counts.items() if n != 1] == []  # 0 duplicates
    assert len(srv.messages) == len(rows)
    by_id = {r.message_id: r.id for r in rows}
    assert {results[by_id[mid]] for mid in killed} == {"found-earlier-attempt"}
    assert sum(1 for r in results.values() if r == "sent") == len(rows) - KILLS
