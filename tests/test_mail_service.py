"""Mail around the transports: the signed inbound webhook, Gmail push, sending limits that
defer and never drop, held mail to failing addresses, soft bounces, and the operator
commands. The transports themselves are tested against their servers in their own files."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from collections.abc import Sequence

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from automation.models import InboundMessage, OutboundMessage, Person, Task
from automation.ports import OutgoingMail, SentMail
from automation.services.loop import run_due
from automation.services.mail import clear_failing, mail_status, send_test_message
from automation.web import create_app, sign_inbound
from tests.conftest import start_organization
from tests.test_inbound import dsn
from tests.test_loop import advance_until, occurrences

SECRET = "inbound-secret-for-tests"


class MemorySender:
    """A transport that is not the Maildir (so the sending limits apply), in memory."""

    name = "memory"

    def __init__(self) -> None:
        self.sent: list[OutgoingMail] = []
        self.at: list[dt.datetime] = []
        self.clock = None

    def already_sent(self, mail: OutgoingMail) -> SentMail | None:
        ids = [m.message_id for m in self.sent]
        return SentMail(mail.message_id, "m") if mail.message_id in ids else None

    def send(self, mail: OutgoingMail) -> SentMail:
        self.sent.append(mail)
        if self.clock is not None:
            self.at.append(self.clock.now())
        return SentMail(mail.message_id, f"id-{len(self.sent)}", thread=mail.thread or "t1")

    def send_many(self, mails: Sequence[OutgoingMail]) -> list[SentMail | Exception]:
        return [self.send(m) for m in mails]


@pytest.fixture
def settings(settings):  # type: ignore[no-untyped-def]
    return settings.with_(inbound_webhook_secret=SECRET)


@pytest.fixture
def org(rt, tmp_path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path)


def _message(n: int = 1) -> bytes:
    return (
        f"From: Someone <someone@elsewhere.test>\r\nTo: checkin@reply.example.com\r\n"
        f"Subject: hello {n}\r\nMessage-ID: <hook-{n}@elsewhere.test>\r\n"
        f"Date: Mon, 02 Mar 2026 09:00:00 +0000\r\n\r\nhello\r\n"
    ).encode()


def _stored(rt) -> list[InboundMessage]:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return list(session.scalars(select(InboundMessage).order_by(InboundMessage.id)))


def test_the_inbound_webhook_stores_signed_raw_messages_once(rt, org):
    client = TestClient(create_app(rt))
    raw = _message()
    now = int(rt.now().timestamp())
    headers = {"X-Signature": sign_inbound(SECRET, now, raw), "Content-Type": "message/rfc822"}
    first = client.post("/webhooks/mail/inbound", content=raw, headers=headers)
    assert first.status_code == 202 and first.json()["duplicate"] is False
    again = client.post("/webhooks/mail/inbound", content=raw, headers=headers)
    assert again.status_code == 202 and again.json()["duplicate"] is True
    (stored,) = _stored(rt)
    assert stored.raw == raw and stored.source == "webhook"
    run_due(rt)
    (stored,) = _stored(rt)
    assert stored.state == "quarantined"  # a stranger: kept with its reason, no record
    assert stored.quarantine_reason


def test_the_inbound_webhook_reads_sendgrid_and_mailgun_forms(rt, org):
    client = TestClient(create_app(rt))
    now = int(rt.now().timestamp())
    for n, field in ((2, "email"), (3, "body-mime")):
        raw = _message(n)
        body = (
            b'--XyZ\r\nContent-Disposition: form-data; name="to"\r\n\r\nx@y\r\n'
            b'--XyZ\r\nContent-Disposition: form-data; name="'
            + field.encode()
            + b'"\r\n\r\n'
            + raw
            + b"\r\n--XyZ--\r\n"
        )
        response = client.post(
            "/webhooks/mail/inbound",
            content=body,
            headers={
                "X-Signature": sign_inbound(SECRET, now, body),
                "Content-Type": "multipart/form-data; boundary=XyZ",
            },
        )
        assert response.status_code == 202, response.text
    subjects = [
        email.message_from_bytes(m.raw, policy=email.policy.default)["Subject"] for m in _stored(rt)
    ]
    assert subjects == ["hello 2", "hello 3"]


@pytest.mark.parametrize(
    ("signature", "reason"),
    [
        (None, "missing X-Signature"),
        ("t=1,v1=00", "5 minutes"),
        ("garbage", "must be t="),
        ("NOW,v1=" + "0" * 64, "does not match"),
    ],
)
def test_the_inbound_webhook_refuses_bad_signatures_and_stores_nothing(rt, org, signature, reason):
    client = TestClient(create_app(rt))
    if signature and signature.startswith("NOW"):
        signature = signature.replace("NOW", f"t={int(rt.now().timestamp())}")
    headers = {"X-Signature": signature} if signature else {}
    response = client.post("/webhooks/mail/inbound", content=_message(), headers=headers)
    assert response.status_code == 401 and reason in response.json()["detail"]
    assert _stored(rt) == []


def test_the_inbound_webhook_is_off_without_a_secret(rt, org):
    rt.settings = rt.settings.with_(inbound_webhook_secret="")
    client = TestClient(create_app(rt))
    assert client.post("/webhooks/mail/inbound", content=_message()).status_code == 404


def test_a_gmail_push_queues_one_poll_and_checks_its_token(rt, org):
    client = TestClient(create_app(rt))
    envelope = {"message": {"data": "e30=", "messageId": "1"}, "subscription": "s"}
    assert client.post("/webhooks/gmail?token=wrong", json=envelope).status_code == 401
    assert client.post(f"/webhooks/gmail?token={SECRET}", json=envelope).json() == {"queued": 1}
    assert client.post(f"/webhooks/gmail?token={SECRET}", json=envelope).json() == {"queued": 0}
    run_due(rt)
    with rt.factory() as session:
        (task,) = session.scalars(select(Task).where(Task.kind == "mail_poll"))
        assert task.state == "done" and "taken in" in (task.result or "")


def test_sending_limits_defer_and_never_drop(rt, org, clock, monkeypatch):
    from automation.services import messages
    from automation.services.tasks import Deferred

    deferrals = []
    check = messages._check_sending_limits

    def counting(*args):  # type: ignore[no-untyped-def]
        try:
            check(*args)
        except Deferred as exc:
            deferrals.append(exc.until)
            raise

    monkeypatch.setattr(messages, "_check_sending_limits", counting)
    from automation.db import transaction
    from automation.services.messages import person_ctx, queue_email

    sender = MemorySender()
    sender.clock = clock
    rt.sender = sender
    rt.settings = rt.settings.with_(mail_per_minute=2)
    with transaction(rt.factory) as session:  # a burst: five messages due at once
        hr = session.scalars(select(Person).where(Person.email == "hr@acme.test")).one()
        for n in range(5):
            queue_email(
                rt,
                session,
                organization_id=org,
                key=f"burst:{n}",
                kind="address_failing",
                template="address_failing",
                to=[hr],
                context={"person": person_ctx(hr), "reason": f"test {n}"},
            )
    for _ in range(5):  # a tick a minute
        clock.advance(dt.timedelta(minutes=1))
        run_due(rt)
    with rt.factory() as session:
        burst = list(
            session.scalars(
                select(OutboundMessage).where(OutboundMessage.idempotency_key.like("burst:%"))
            )
        )
    assert len(burst) == 5 and all(m.state == "sent" for m in burst)
    assert sorted(m.message_id for m in sender.sent) == sorted(m.message_id for m in burst)
    minute = dt.timedelta(minutes=1)
    for start in sender.at:  # never more than two in any minute
        assert len([t for t in sender.at if start <= t < start + minute]) <= 2
    assert deferrals  # some had to wait for the minute to pass
    for i in range(len(sender.at)):  # never more than two in any minute
        window = [
            t for t in sender.at if sender.at[i] <= t < sender.at[i] + dt.timedelta(minutes=1)
        ]
        assert len(window) <= 2


def test_mail_to_a_failing_address_is_held_until_hr_clears_it(rt, org, clock):
    from automation.db import transaction

    sender = MemorySender()
    rt.sender = sender
    with transaction(rt.factory) as session:
        ana = session.scalars(select(Person).where(Person.email == "ana@acme.test")).one()
        ana.mail_failing_since, ana.mail_failing_reason = rt.now(), "5.1.1 user unknown"
    first = occurrences(rt, "ana@acme.test")[0]
    advance_until(rt, clock, first.start_at - dt.timedelta(hours=20))
    with rt.factory() as session:
        held = list(session.scalars(select(OutboundMessage).where(OutboundMessage.state == "held")))
    assert held and all("ana@acme.test" in m.recipients for m in held)
    assert not any("ana@acme.test" in m.recipients for m in sender.sent)
    assert clear_failing(rt, org, "ANA@acme.test", "operator:hr", "new mailbox") == len(held)
    run_due(rt)
    assert sum("ana@acme.test" in m.recipients for m in sender.sent) == len(held)
    with pytest.raises(LookupError):
        clear_failing(rt, org, "nobody@acme.test", "operator:hr", "x")


def _soft_dsn(address: str, n: int) -> bytes:
    return (
        dsn(address, None, n=n)
        .replace(b"Status: 5.1.1", b"Status: 4.2.2")
        .replace(b"550 5.1.1", b"452 4.2.2")
    )


def test_soft_bounces_flag_an_address_only_after_a_run_of_them(rt, org):
    limit = rt.settings.mail_soft_bounce_limit
    for n in range(1, limit + 1):
        rt.inbox.deliver(_soft_dsn("kai@acme.test", n), f"soft-{n}")
        run_due(rt)
        with rt.factory() as session:
            kai = session.scalars(select(Person).where(Person.email == "kai@acme.test")).one()
        assert (kai.mail_failing_since is not None) == (n == limit), n
    assert "4.2.2" in kai.mail_failing_reason
    rt.inbox.deliver(dsn("hr@acme.test", None, n=99), "hard")
    run_due(rt)
    with rt.factory() as session:
        hr = session.scalars(select(Person).where(Person.email == "hr@acme.test")).one()
    assert hr.mail_failing_since is not None  # a hard bounce flags at once


def test_status_and_test_send_on_the_embedded_transport(rt, org):
    result = send_test_message(rt, "admin@acme.test")
    assert result.found_by_lookup and result.message_id.startswith("<")
    status = mail_status(rt, org)
    assert status.transport == "maildir" and status.inbox == "maildir"
    assert status.outbox.get("sent", 0) >= 0 and status.daily_limit == 2000


def test_a_reminder_carries_the_thread_of_its_prompt(rt, org, clock):
    sender = MemorySender()
    rt.sender = sender
    first = occurrences(rt, "ana@acme.test")[0]
    advance_until(rt, clock, first.end_at + dt.timedelta(days=6))
    by_id = {m.message_id: m for m in sender.sent}
    followers = [
        m
        for m in sender.sent
        if (parent := email.message_from_bytes(m.raw)["In-Reply-To"]) and parent in by_id
    ]
    assert followers, "no reminder followed a prompt"
    assert all(m.thread == "t1" for m in followers)  # the prompt's provider thread


def test_cli_mail_commands(rt, org, monkeypatch, settings, capsys):
    from automation.cli import main

    monkeypatch.setenv("AUTOMATION_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("AUTOMATION_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("AUTOMATION_ORGANIZATION", settings.organization)
    monkeypatch.setenv("AUTOMATION_SECRET_KEY", settings.secret_key)
    assert main(["mail", "test-send", "admin@acme.test"]) == 0
    assert "lookup by Message-ID finds it" in capsys.readouterr().out
    assert main(["mail", "status"]) == 0
    out = capsys.readouterr().out
    assert "outbound  maildir" in out and "limit 2000" in out
    assert main(["people", "mail-ok", "kai@acme.test", "--reason", "checked"]) == 0
    assert "0 held message(s)" in capsys.readouterr().out
