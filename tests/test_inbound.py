"""Routing and trust for inbound mail, on SQLite and PostgreSQL: spoofed and forged replies,
auto-replies, bounces, repeated Message-IDs, delegates, and the operator's quarantine tools.

Every outcome is checked where HR sees it too: in `automation inbox quarantine list`.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import email.utils
import shutil
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import func, select

from automation import audit
from automation.cli import main as cli
from automation.db import transaction
from automation.models import (
    AuditEntry,
    CheckinSeries,
    ConversationRecord,
    Escalation,
    InboundMessage,
    Occurrence,
    OutboundMessage,
    Person,
)
from automation.people import import_people_file
from automation.runtime import build_runtime
from automation.services.inbound import delivery_report
from automation.services.loop import bootstrap, run_due
from automation.settings import PROJECT_ROOT
from tests.conftest import advance_until, start_organization

PEOPLE = """email,name,timezone,manager_email,hr_partner_email
boss@acme.test,Bea Boss,America/New_York,,hr@acme.test
hr@acme.test,Hal Hr,Europe/London,boss@acme.test,hr@acme.test
ana@acme.test,Ana Souza,Europe/Berlin,boss@acme.test,hr@acme.test
asa@acme.test,Asa Assistant,America/New_York,hr@acme.test,hr@acme.test
"""


@pytest.fixture
def org(rt, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path, PEOPLE)


@pytest.fixture
def operator_env(monkeypatch, settings):
    """The environment `automation …` runs in, on the test's database and data folder."""
    monkeypatch.setenv("AUTOMATION_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("AUTOMATION_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("AUTOMATION_ORGANIZATION", settings.organization)
    monkeypatch.setenv("AUTOMATION_SECRET_KEY", settings.secret_key)
    monkeypatch.setenv("AUTOMATION_CONFIG_DIR", str(settings.config_dir))
    monkeypatch.delenv("AUTOMATION_CONFIG", raising=False)
    monkeypatch.chdir(PROJECT_ROOT)


def automation(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def listing(capsys) -> dict[int, str]:
    """`automation inbox quarantine list`, one line per message id."""
    code, out, err = automation(capsys, "inbox", "quarantine", "list")
    assert code == 0, err
    if out == "no messages kept without a record\n":
        return {}
    lines = out.splitlines()
    assert lines[0].split() == ["id", "received_at", "from", "state", "reason"]
    return {int(line.split()[0]): line for line in lines[1:]}


def first_occurrence(rt, employee: str = "ana@acme.test") -> Occurrence:
    with rt.factory() as session:
        return session.scalars(
            select(Occurrence)
            .join(CheckinSeries, CheckinSeries.id == Occurrence.series_id)
            .join(Person, Person.id == CheckinSeries.employee_id)
            .where(Person.email == employee)
            .order_by(Occurrence.start_at)
        ).first()


def outbox(rt, kind: str) -> list[OutboundMessage]:
    with rt.factory() as session:
        return list(
            session.scalars(
                select(OutboundMessage)
                .where(OutboundMessage.kind == kind)
                .order_by(OutboundMessage.id)
            )
        )


def prompted(rt, clock) -> tuple[Occurrence, OutboundMessage]:
    """Run until Ana's first check-in has had its follow-up prompt; return both."""
    occ = first_occurrence(rt)
    advance_until(rt, clock, occ.end_at + dt.timedelta(hours=2))
    (prompt,) = [m for m in outbox(rt, "followup") if m.occurrence_id == occ.id]
    return occ, prompt


def reply(
    rt,
    prompt: OutboundMessage,
    sender: str,
    body: str,
    *,
    to: str | None = None,
    subject: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    original = email.message_from_bytes(prompt.raw, policy=email.policy.default)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to or str(original["Reply-To"])
    msg["Subject"] = subject or "Re: " + str(original["Subject"])
    msg["Date"] = email.utils.format_datetime(rt.now())
    msg["Message-ID"] = email.utils.make_msgid(domain="client.test")
    msg["In-Reply-To"] = prompt.message_id
    for key, value in (headers or {}).items():
        msg[key] = value
    msg.set_content(body)
    return msg.as_bytes()


def deliver(rt, raw: bytes, name: str) -> InboundMessage:
    rt.inbox.deliver(raw, name)
    run_due(rt)
    with rt.factory() as session:
        return session.scalars(select(InboundMessage).where(InboundMessage.raw == raw)).one()


def records(rt) -> list[ConversationRecord]:
    with rt.factory() as session:
        return list(session.scalars(select(ConversationRecord).order_by(ConversationRecord.id)))


def dsn(failing: str, original: OutboundMessage | None, *, n: int = 1) -> bytes:
    """A Postfix-style RFC 3464 bounce: multipart/report with a delivery-status part."""
    status = (
        "Reporting-MTA: dns; mx.acme.test\n"
        "Arrival-Date: Mon,  2 Mar 2026 09:00:00 +0000\n"
        "\n"
        f"Final-Recipient: rfc822; {failing}\n"
        f"Original-Recipient: rfc822;{failing}\n"
        "Action: failed\n"
        "Status: 5.1.1\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{failing}>: Recipient address rejected: "
        "User unknown in virtual mailbox table\n"
    )
    original_part = (
        original.raw.decode("utf-8", "replace")
        if original
        else f"From: checkins@example.com\nTo: {failing}\nSubject: hi\n\nhi\n"
    )
    return (
        "From: MAILER-DAEMON@mx.acme.test (Mail Delivery System)\n"
        "To: checkins@example.com\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        "Date: Mon, 02 Mar 2026 09:00:00 +0000\n"
        f"Message-ID: <bounce-{n}@mx.acme.test>\n"
        "Auto-Submitted: auto-replied\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n'
        "\n"
        "--B\n"
        "Content-Type: text/plain\n"
        "\n"
        "I'm sorry to have to inform you that your message could not be delivered.\n"
        "\n"
        "--B\n"
        "Content-Type: message/delivery-status\n"
        "\n"
        f"{status}"
        "\n"
        "--B\n"
        "Content-Type: message/rfc822\n"
        "\n"
        f"{original_part}\n"
        "--B--\n"
    ).encode()


# --- spoofed and forged -------------------------------------------------------------------


def test_a_stranger_with_a_valid_token_is_quarantined(rt, org, clock, operator_env, capsys):
    occ, prompt = prompted(rt, clock)
    message = deliver(
        rt, reply(rt, prompt, "Mallory <mallory@evil.test>", "1. Ana is doing badly.\n"), "s"
    )
    assert message.state == "quarantined"
    assert "mallory@evil.test is not a participant" in message.quarantine_reason
    assert records(rt) == []
    with rt.factory() as session:
        assert session.get(Occurrence, occ.id).documented_at is None
    line = listing(capsys)[message.id]
    assert "mallory@evil.test" in line and "quarantined" in line and "not a participant" in line


def test_a_spoofed_from_needs_the_token_it_cannot_forge(rt, org, clock, operator_env, capsys):
    occ, prompt = prompted(rt, clock)
    reply_address = str(
        email.message_from_bytes(prompt.raw, policy=email.policy.default)["Reply-To"]
    )
    forged = reply_address.replace(f"-o{occ.id}-", f"-o{occ.id + 1}-")
    message = deliver(rt, reply(rt, prompt, "boss@acme.test", "1. Forged.\n", to=forged), "f")
    assert message.state == "quarantined" and message.quarantine_reason.startswith("forged")
    assert records(rt) == []
    assert "forged reply token" in listing(capsys)[message.id]


# --- machines -------------------------------------------------------------------------------


def test_an_exchange_auto_reply_is_kept_as_such_and_the_ladder_runs_on(
    rt, org, clock, operator_env, capsys
):
    occ, prompt = prompted(rt, clock)
    raw = reply(
        rt,
        prompt,
        "Bea Boss <boss@acme.test>",
        "I am out of the office until 16 March with limited access to email.\n",
        subject="Automatic reply: " + prompt.subject,
        headers={
            "X-Auto-Response-Suppress": "All",
            "X-MS-Exchange-Inbox-Rules-Loop": "boss@acme.test",
            "Thread-Topic": prompt.subject,
        },
    )
    message = deliver(rt, raw, "ooo")
    assert message.state == "auto_reply"
    assert message.occurrence_id == occ.id  # linked to the check-in it answers
    assert "X-Auto-Response-Suppress" in message.quarantine_reason
    assert records(rt) == []
    line = listing(capsys)[message.id]
    assert "auto_reply" in line and "automatic reply" in line
    # It documents nothing: the reminder and the escalation still come.
    advance_until(rt, clock, occ.end_at + dt.timedelta(days=16))
    with rt.factory() as session:
        assert session.get(Occurrence, occ.id).documented_at is None
        steps = session.scalars(
            select(Escalation.action)
            .where(Escalation.subject_kind == "occurrence", Escalation.subject_id == occ.id)
            .order_by(Escalation.step)
        ).all()
    assert steps == ["remind", "escalate"]


def test_a_bounce_flags_the_address_and_tells_hr_once(rt, org, clock, operator_env, capsys):
    occ, prompt = prompted(rt, clock)
    message = deliver(rt, dsn("boss@acme.test", prompt), "bounce-1")
    assert message.state == "bounced"
    assert message.occurrence_id == occ.id  # the bounced email was this check-in's prompt
    assert "address failing for boss@acme.test" in message.quarantine_reason
    assert "5.1.1" in message.quarantine_reason
    with rt.factory() as session:
        boss = session.scalars(select(Person).where(Person.email == "boss@acme.test")).one()
        assert boss.mail_failing_since == clock.now()
        assert "User unknown" in boss.mail_failing_reason
    # The same report again (a retry: same bytes), and another one the same day: one email.
    deliver(rt, dsn("boss@acme.test", prompt), "bounce-1-again")
    second = deliver(rt, dsn("boss@acme.test", prompt, n=2), "bounce-2")
    assert second.state == "bounced"
    (notice,) = outbox(rt, "address_failing")
    assert notice.recipients == ["hr@acme.test"]
    assert notice.idempotency_key == f"bounce:person:{boss.id}:{clock.now().date().isoformat()}"
    text = email.message_from_bytes(notice.raw, policy=email.policy.default)
    assert "Bea Boss" in text["Subject"]
    assert "boss@acme.test" in text.get_body(("plain",)).get_content()
    assert records(rt) == []
    with rt.factory() as session:
        assert session.scalar(select(func.count()).select_from(InboundMessage)) == 2
        assert (
            session.scalars(
                select(AuditEntry.action).where(AuditEntry.action == "person.mail_failing")
            ).all()
            == ["person.mail_failing"] * 2
        )
        assert audit.verify_chain(session, org) == (True, None)
    lines = listing(capsys)
    assert (
        "bounced" in lines[message.id]
        and "address failing for boss@acme.test" in (lines[message.id])
    )


def test_a_read_receipt_is_an_automatic_message_not_a_bounce(rt, org, clock):
    _, prompt = prompted(rt, clock)
    raw = (
        "From: Bea Boss <boss@acme.test>\nTo: checkins@example.com\nSubject: Read: check-in\n"
        "Message-ID: <mdn-1@client.test>\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=disposition-notification; boundary="B"\n\n'
        "--B\nContent-Type: text/plain\n\nYour message was read.\n\n"
        "--B\nContent-Type: message/disposition-notification\n\n"
        "Final-Recipient: rfc822; boss@acme.test\n"
        "Disposition: manual-action/MDN-sent-manually; displayed\n\n"
        f"--B\nContent-Type: text/rfc822-headers\n\nTo: boss@acme.test\n"
        f"Message-ID: {prompt.message_id}\n\n--B--\n"
    ).encode()
    message = deliver(rt, raw, "mdn")
    assert message.state == "auto_reply" and "disposition-notification" in (
        message.quarantine_reason
    )
    with rt.factory() as session:
        boss = session.scalars(select(Person).where(Person.email == "boss@acme.test")).one()
    assert boss.mail_failing_since is None and outbox(rt, "address_failing") == []


# --- duplicates -----------------------------------------------------------------------------


def test_a_repeated_message_id_is_a_duplicate(rt, org, clock, operator_env, capsys):
    _, prompt = prompted(rt, clock)
    raw = reply(rt, prompt, "boss@acme.test", "1. Good week.\nRating: 4\n")
    first = deliver(rt, raw, "a")
    assert first.state == "recorded"
    relayed = b"Received: from relay.acme.test by mx.acme.test; Mon, 9 Mar 2026\r\n" + raw
    again = deliver(rt, relayed, "b")
    assert again.state == "duplicate"
    assert f"duplicate of inbound message {first.id}" in again.quarantine_reason
    assert again.message_id == first.message_id and again.raw == relayed
    assert [r.version for r in records(rt)] == [1]
    assert len(outbox(rt, "confirmation")) == 1
    lines = listing(capsys)
    assert first.id not in lines  # recorded messages are not in the quarantine listing
    assert "duplicate" in lines[again.id] and f"inbound message {first.id}" in lines[again.id]


# --- delegates ------------------------------------------------------------------------------


@pytest.fixture
def delegated_rt(settings, clock, tmp_path):
    """A runtime whose config names Asa as the boss's delegate."""
    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    (config / "delegates.toml").write_text(
        '[[delegate]]\nfor = "Boss@acme.test"\ndelegate = "asa@acme.test"\n'
    )
    runtime = build_runtime(settings.with_(config_dir=config), clock)
    yield runtime
    runtime.engine.dispose()


def test_a_delegates_reply_is_recorded_with_the_delegate_as_author(delegated_rt, clock, tmp_path):
    rt = delegated_rt
    assert rt.delegates == {"boss@acme.test": frozenset({"asa@acme.test"})}
    org_id = bootstrap(rt)
    csv = tmp_path / "people.csv"
    csv.write_text(PEOPLE)
    with transaction(rt.factory) as session:
        import_people_file(session, org_id, csv, rt.now())
    run_due(rt)
    occ, prompt = prompted(rt, clock)
    message = deliver(
        rt, reply(rt, prompt, "Asa Assistant <asa@acme.test>", "1. Notes from Bea.\n#done\n"), "d"
    )
    assert message.state == "recorded"
    (record,) = records(rt)
    with rt.factory() as session:
        asa = session.scalars(select(Person).where(Person.email == "asa@acme.test")).one()
        created = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "record.created")
        ).one()
        occurrence = session.get(Occurrence, occ.id)
    assert record.author_id == asa.id and record.answers["1"] == "Notes from Bea."
    assert created.actor == "asa@acme.test"
    assert created.data["on_behalf_of"] == "boss@acme.test"
    # #done documents and closes; the confirmation says so, to the delegate and the manager.
    assert occurrence.documented_at is not None and occurrence.state == "held"
    (confirmation,) = outbox(rt, "confirmation")
    assert confirmation.recipients == ["asa@acme.test", "boss@acme.test"]
    body = email.message_from_bytes(confirmation.raw, policy=email.policy.default)
    assert "marked documented and closed" in body.get_body(("plain",)).get_content()


def test_a_delegate_of_another_manager_is_quarantined(delegated_rt, clock, tmp_path):
    rt = delegated_rt
    rt.delegates = {"hr@acme.test": frozenset({"asa@acme.test"})}
    org_id = bootstrap(rt)
    csv = tmp_path / "people.csv"
    csv.write_text(PEOPLE)
    with transaction(rt.factory) as session:
        import_people_file(session, org_id, csv, rt.now())
    run_due(rt)
    _, prompt = prompted(rt, clock)
    message = deliver(rt, reply(rt, prompt, "asa@acme.test", "1. Notes.\n"), "x")
    assert message.state == "quarantined" and "not a participant" in message.quarantine_reason
    assert records(rt) == []


# --- the operator's release -------------------------------------------------------------------


def test_release_as_attributes_to_a_participant_and_keeps_the_raw_bytes(
    rt, org, clock, operator_env, capsys
):
    occ, prompt = prompted(rt, clock)
    raw = reply(rt, prompt, "Bea <bea.private@mail.test>", "1. Sent from my phone.\nRating: 3\n")
    message = deliver(rt, raw, "private")
    assert message.state == "quarantined"
    assert "bea.private@mail.test is not a participant" in listing(capsys)[message.id]

    code, _, err = automation(
        capsys, "inbox", "quarantine", "release", str(message.id), "--as", "boss@acme.test"
    )
    assert code == 64 and "--reason" in err
    code, out, err = automation(
        capsys,
        "inbox",
        "quarantine",
        "release",
        str(message.id),
        "--as",
        "boss@acme.test",
        "--reason",
        "Bea confirmed by phone that she sent it from her private mailbox",
        "--by",
        "hal",
    )
    assert code == 0, err
    assert f"released inbound message {message.id}: recorded v1" in out
    (record,) = records(rt)
    with rt.factory() as session:
        stored = session.get(InboundMessage, message.id)
        boss = session.scalars(select(Person).where(Person.email == "boss@acme.test")).one()
        released = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "inbound.released")
        ).one()
        created = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "record.created")
        ).one()
        assert audit.verify_chain(session, org) == (True, None)
        assert session.get(Occurrence, occ.id).documented_at is not None
    assert record.author_id == boss.id and record.source_message_id == message.id
    assert record.rating == 3
    assert stored.state == "recorded" and stored.attributed_to == "boss@acme.test"
    assert stored.raw == raw and stored.sha256 == message.sha256 and stored.size == len(raw)
    assert stored.from_address == "bea.private@mail.test"  # From is kept as it was
    assert released.actor == "operator:hal"
    assert released.data["attributed_to"] == "boss@acme.test"
    assert released.data["reason"].startswith("Bea confirmed by phone")
    assert released.data["previous_state"] == "quarantined"
    assert "not a participant" in released.data["previous_reason"]
    assert created.data["attributed_by_operator"] is True
    assert created.data["from"] == "bea.private@mail.test"
    assert message.id not in listing(capsys)  # recorded now
    code, out, _ = automation(capsys, "inbox", "quarantine", "show", str(message.id))
    assert code == 0
    assert "attributed to boss@acme.test" in out and message.sha256 in out
    assert "Sent from my phone." in out and f"Size:         {len(raw)} bytes" in out
    # A recorded message cannot be released again.
    code, _, err = automation(capsys, "inbox", "quarantine", "release", str(message.id))
    assert code == 65 and "only quarantined or auto_reply" in err


def test_show_raw_writes_the_stored_bytes(rt, org, clock, operator_env, capsysbinary):
    _, prompt = prompted(rt, clock)
    raw = reply(rt, prompt, "mallory@evil.test", "1. Hello \u00e9\n")
    message = deliver(rt, raw, "m")
    capsysbinary.readouterr()
    assert cli(["inbox", "quarantine", "show", str(message.id), "--raw"]) == 0
    assert capsysbinary.readouterr().out == raw


def test_release_without_as_reprocesses_after_the_config_is_fixed(
    rt, org, clock, operator_env, capsys, monkeypatch
):
    """A reply quarantined before its delegate was configured is recorded once released."""
    _, prompt = prompted(rt, clock)
    message = deliver(rt, reply(rt, prompt, "asa@acme.test", "1. For Bea.\n"), "early")
    assert message.state == "quarantined"
    config = Path(rt.settings.data_dir) / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    (config / "delegates.toml").write_text(
        '[[delegate]]\nfor = "boss@acme.test"\ndelegate = "asa@acme.test"\n'
    )
    monkeypatch.setenv("AUTOMATION_CONFIG_DIR", str(config))
    code, out, err = automation(capsys, "inbox", "quarantine", "release", str(message.id))
    assert code == 0, err
    assert "recorded v1 by asa@acme.test on behalf of boss@acme.test" in out


# --- the pure report reader --------------------------------------------------------------------


def test_delivery_report_reads_recipients_and_falls_back_to_the_original():
    report = delivery_report(dsn("Boss@Acme.test", None))
    (failure,) = report.failures
    assert failure.addresses == ("boss@acme.test",)
    assert failure.reason.startswith("5.1.1 smtp; 550 5.1.1")
    no_status = (
        b"From: MAILER-DAEMON@mx.test\r\nSubject: Mail delivery failed\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n'
        b"\r\nfailed\r\n--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        b"To: Kai <kai@acme.test>\r\nMessage-ID: <x@acme.test>\r\n\r\n--B--\r\n"
    )
    report = delivery_report(no_status)
    assert [f.addresses for f in report.failures] == [("kai@acme.test",)]
    assert report.original_message_id == "<x@acme.test>"
    exim = b"From: Mail Delivery System <Mailer-Daemon@mx.test>\r\n"
    exim += b"X-Failed-Recipients: ana@acme.test\r\nSubject: failed\r\n\r\nNo.\r\n"
    assert [f.addresses for f in delivery_report(exim).failures] == [("ana@acme.test",)]
    delayed = dsn("boss@acme.test", None).replace(b"Action: failed", b"Action: delayed")
    report = delivery_report(delayed)
    assert report.failures == () and report.delayed == ("boss@acme.test",)
    assert delivery_report(b"\x00\xff not mail").failures == ()
