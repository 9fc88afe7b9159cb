"""The Gmail adapter against the Gmail fake, over real HTTP, and the service on top of it.

Sending keeps the raw bytes (only Gmail's own Message-ID rewrite changes them), threads a
reply, and finds an earlier send with or without that rewrite. Through the real service,
workers killed right after Gmail accepted a message, and 30 % of answers failing (some of
them after the send went through), still give every outbox message exactly once. Reading
stores every delivered message byte for byte, once, through history and through the full
resync that an expired historyId costs.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from automation.adapters.gmail import (
    SCOPES,
    GmailApi,
    GmailInbox,
    GmailSender,
    gmail_credentials,
    normalized,
)
from automation.adapters.http import Retry
from automation.adapters.mail import build_inbox, build_sender
from automation.emails import Rendered, build_message, make_message_id
from automation.errors import ConfigError, PermanentProviderError, TransientProviderError
from automation.models import InboundMessage, MailboxState, OutboundMessage, OutboundState, Task
from automation.ports import OutgoingMail
from automation.services.inbound import poll_inbox
from automation.services.loop import bootstrap
from tests.conftest import START, start_organization
from tests.fakes.gmail import FakeGmail, header_fields, replace_header, service_account_info
from tests.test_loop import advance_until

USER = "checkins@example.com"  # the Settings default mail_from: the mailbox
T0 = START  # the simulated clock starts here


class Waits(list[float]):
    """Retry.sleep that records what it was asked to wait instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def key_file(fake: FakeGmail, folder: Path) -> Path:
    path = folder / "service-account.json"
    path.write_text(json.dumps(service_account_info(fake.token_uri)))
    return path


def api_for(fake: FakeGmail, folder: Path, waits: Waits | None = None, **kw) -> GmailApi:  # type: ignore[no-untyped-def]
    creds = gmail_credentials(str(key_file(fake, folder)), fake.token_uri)
    retry = Retry(sleep=waits if waits is not None else Waits(), rng=random.Random(1))
    return GmailApi(USER, creds, endpoint=fake.url, retry=retry, **kw)


def outgoing(
    key: str,
    subject: str,
    to: str = "ana@acme.test",
    *,
    when: dt.datetime = T0,
    in_reply_to: str | None = None,
    thread: str | None = None,
    reply_to: str | None = None,
) -> OutgoingMail:
    """A message as the outbox builds it (boundary from the Message-ID, CRLF, UTF-8)."""
    message_id = make_message_id(key, "example.com")
    raw = build_message(
        Rendered(subject, f"Hallo {to}, wie lief es? Grüße\n", f"<p>Hallo {to}, Grüße</p>"),
        sender=f"Check-ins <{USER}>",
        to=[f"Ana Souza <{to}>"],
        message_id=message_id,
        date=when,
        reply_to=reply_to,
        in_reply_to=in_reply_to,
        references=[in_reply_to] if in_reply_to else None,
    )
    return OutgoingMail(message_id, raw, USER, (to,), thread)


def inbound(n: int, *, reply_to_id: str | None = None) -> bytes:
    """A received message with bytes a re-encoder would change: LF and CRLF, 8-bit text."""
    head = (
        f"From: Bea Boss <boss@acme.test>\r\nTo: {USER}\r\nSubject: Re: check-in {n}\r\n"
        f"Date: Mon, 02 Mar 2026 10:{n % 60:02d}:00 +0100\r\n"
        f"Message-ID: <in-{n}@client.test>\r\n"
    )
    if reply_to_id:
        head += f"In-Reply-To: {reply_to_id}\r\n"
    head += "Content-Type: text/plain; charset=latin-1\r\nContent-Transfer-Encoding: 8bit\r\n"
    body = f"Gr\xfc\xdfe {n}\nline two  \r\n\r\n-- \nBea\n".encode("latin-1")
    return head.encode() + b"\r\n" + body


@pytest.fixture
def fake(clock) -> Iterator[FakeGmail]:  # type: ignore[no-untyped-def]
    with FakeGmail(clock=clock.now) as server:
        yield server


# --------------------------------------------------------------------------- sending


@pytest.mark.parametrize("rewrite", [False, True], ids=["kept", "rewritten"])
def test_raw_bytes_go_out_unchanged_except_what_gmail_changes(fake, tmp_path, rewrite):
    fake.rewrite_message_ids = rewrite
    sender = GmailSender(api_for(fake, tmp_path))
    mail = outgoing("agenda:1", "Agenda: 1:1 Ana, Dienstag 3. März — Überblick")
    sent = sender.send(mail)

    stored = fake.stored(USER, sent.provider_id)
    stored_id = dict((k.lower(), v) for k, v in header_fields(stored["raw"]))["message-id"]
    assert stored["submitted_message_id"] == mail.message_id
    assert sent.message_id == stored_id and sent.thread == stored["threadId"]
    assert stored["labels"] == ["SENT"]
    if rewrite:
        assert stored_id != mail.message_id
        # Everything but that one header is byte for byte what we built.
        assert stored["raw"] == replace_header(mail.raw, "Message-ID", stored_id)
        assert stored["raw"] != mail.raw
    else:
        assert stored_id == mail.message_id
        assert stored["raw"] == mail.raw
    assert fake.sends == Counter({mail.message_id.strip("<>").lower(): 1})


def test_a_reminder_with_the_prompts_thread_lands_in_it(fake, tmp_path):
    sender = GmailSender(api_for(fake, tmp_path))
    prompt = sender.send(outgoing("followup:7", "How did your check-in with Ana go?"))
    reminder = outgoing(
        "remind:7",
        "Re: How did your check-in with Ana go?",
        when=T0 + dt.timedelta(days=3),
        in_reply_to=prompt.message_id,
        thread=prompt.thread,
    )
    sent = sender.send(reminder)
    assert sent.thread == prompt.thread
    assert fake.stored(USER, sent.provider_id)["threadId"] == prompt.thread

    # Gmail adds a message to a thread only when the subjects match (threads guide); a
    # reminder with a subject of its own starts a new thread in the sender's mailbox.
    other = sender.send(
        outgoing(
            "remind:7:2",
            "Reminder: please document your check-in",
            in_reply_to=prompt.message_id,
            thread=prompt.thread,
        )
    )
    assert other.thread != prompt.thread

    # A thread Gmail does not know (deleted meanwhile) is a 404: the message still goes out,
    # once, in a thread of its own.
    lost = outgoing(
        "remind:7:3", "Re: How did your check-in with Ana go?", thread="ffff0000ffff0000"
    )
    gone = sender.send(lost)
    assert gone.thread == gone.provider_id
    assert fake.sends[lost.message_id.strip("<>").lower()] == 1


@pytest.mark.parametrize("rewrite", [False, True], ids=["kept", "rewritten"])
def test_already_sent_finds_the_earlier_copy_and_nothing_else(fake, tmp_path, rewrite):
    fake.rewrite_message_ids = rewrite
    sender = GmailSender(api_for(fake, tmp_path))
    mail = outgoing("followup:1", "How did your check-in with Ana go?", reply_to="r+1@x.test")
    assert sender.already_sent(mail) is None

    # Other messages to the same person, one even with the same subject and Date: not ours.
    twin = outgoing("followup:2", "How did your check-in with Ana go?", reply_to="r+2@x.test")
    sender.send(twin)
    sender.send(outgoing("agenda:1", "Agenda: 1:1 Ana", when=T0 + dt.timedelta(hours=1)))
    assert sender.already_sent(mail) is None

    sent = sender.send(mail)
    found = sender.already_sent(mail)
    assert found == sent
    assert (found.message_id == mail.message_id) is not rewrite

    # Deleted to the Trash it still counts (includeSpamTrash); a day later it is still found.
    messages = sender.api.resource("messages")
    sender.api.execute(
        messages.modify(userId=USER, id=sent.provider_id, body={"addLabelIds": ["TRASH"]}),
        "trash",
    )
    fake.clock = lambda: T0 + dt.timedelta(days=9)  # `after:` our Date, not `newer_than:`
    assert sender.already_sent(mail) == sent
    assert sum(fake.sends.values()) == 3


def test_a_send_whose_answer_is_lost_is_looked_up_not_sent_again(fake, tmp_path):
    """Gmail took the message and answered 503: the retry finds it instead of resending."""
    fake.rewrite_message_ids = True
    fake.fault_after_write = True
    fake.search_lag = dt.timedelta(seconds=30)  # the retry comes before search shows it
    fake.queue_failure(503, retry_after="2", operation="messages.send")
    waits = Waits()
    sender = GmailSender(api_for(fake, tmp_path, waits))
    mail = outgoing("agenda:9", "Agenda: 1:1 Ana")
    sent = sender.send(mail)
    assert fake.lost_answers["messages.send"] == 1
    assert fake.counts["messages.send"] == 1  # found, not sent again
    assert fake.sends[mail.message_id.strip("<>").lower()] == 1
    assert sent.provider_id in fake.messages(USER, "SENT")
    assert waits and waits[0] >= 2.0  # Retry-After honoured


def test_rate_limits_are_waited_out_and_a_daily_limit_parks_the_send(fake, tmp_path):
    waits = Waits()
    sender = GmailSender(api_for(fake, tmp_path, waits))
    fake.queue_failure(429, retry_after="7", operation="messages.send")
    fake.queue_failure(403, "userRateLimitExceeded", retry_after="3", operation="messages.send")
    mail = outgoing("agenda:10", "Agenda")
    sender.send(mail)
    assert fake.counts["messages.send"] == 3 and fake.lost_answers["messages.send"] == 0
    assert waits[0] >= 7.0 and waits[1] >= 3.0
    assert fake.sends[mail.message_id.strip("<>").lower()] == 1

    fake.queue_failure(403, "dailyLimitExceeded", operation="messages.send")
    with pytest.raises(TransientProviderError, match="quota"):
        sender.send(outgoing("agenda:11", "Agenda 2"))
    assert len(fake.sent_log) == 1


def test_send_many_goes_one_by_one_and_reports_each(fake, tmp_path):
    sender = GmailSender(api_for(fake, tmp_path))
    good = [outgoing(f"agenda:{i}", f"Agenda {i}") for i in range(3)]
    nobody = OutgoingMail("<x@example.com>", b"Subject: to nobody\r\n\r\nhi\r\n", USER, ())
    results = sender.send_many([good[0], nobody, good[1], good[2]])
    assert isinstance(results[1], PermanentProviderError)
    assert [r.provider_id for r in (results[0], *results[2:])] == fake.messages(USER, "SENT")
    assert fake.counts["batch"] == 0 and fake.counts["messages.send"] == 4


def test_a_mailbox_without_delegation_is_a_setup_error(fake, tmp_path):
    fake.deny(USER, "unauthorized_client")
    sender = GmailSender(api_for(fake, tmp_path))
    with pytest.raises(PermanentProviderError, match="domain-wide delegation") as info:
        sender.send(outgoing("agenda:1", "Agenda"))
    assert all(scope in str(info.value) for scope in SCOPES)
    assert not fake.sent_log


def test_settings_build_the_gmail_transport_and_inbox(settings, fake, tmp_path):
    with pytest.raises(ConfigError, match="google_credentials_file"):
        build_sender(settings.with_(mail_transport="gmail", google_credentials_file=""))
    configured = settings.with_(
        mail_transport="gmail",
        mail_inbox="gmail",
        google_credentials_file=str(key_file(fake, tmp_path)),
        google_token_uri=fake.token_uri,
        gmail_api_endpoint=fake.url,
        gmail_pubsub_topic="projects/acme/topics/gmail",
    )
    sender, inbox = build_sender(configured), build_inbox(configured)
    assert isinstance(sender, GmailSender) and isinstance(inbox, GmailInbox)
    assert sender.user == inbox.mailbox == USER
    assert GmailInbox.from_settings(configured.with_(gmail_user="Desk@Acme.test")).mailbox == (
        "desk@acme.test"
    )
    sent = sender.send(outgoing("agenda:1", "Agenda"))
    assert fake.stored(USER, sent.provider_id)["labels"] == ["SENT"]
    assert inbox.watch() == T0 + dt.timedelta(days=7)


def test_header_comparison_is_about_content_not_spelling():
    assert normalized("Subject", "=?utf-8?q?Gr=C3=BC=C3=9Fe?=") == normalized("subject", "Grüße")
    assert normalized("To", "Ana <ANA@acme.test>,\r\n b@x.test") == normalized(
        "to", "b@x.test, ana@acme.test"
    )
    assert normalized("Date", "Mon, 2 Mar 2026 10:00:00 +0100") == normalized(
        "date", "Mon, 02 Mar 2026 09:00:00 +0000"
    )
    assert normalized("Content-Type", 'multipart/alternative; boundary="=_a"') != normalized(
        "Content-Type", 'multipart/alternative; boundary="=_b"'
    )


# --------------------------------------------------------------------------- reading


def test_inbox_pages_history_and_acks(fake, tmp_path):
    inbox = GmailInbox(api_for(fake, tmp_path, batch_size=2))
    raws = [inbound(i) for i in range(5)]
    ids = [fake.deliver(USER, raw) for raw in raws]

    first = inbox.fetch(None, limit=3)  # full sync: the oldest three, more waiting
    assert [k for k, _ in first.messages] == ids[:3] and first.more and first.cursor is None
    assert [raw for _, raw in first.messages] == raws[:3]  # byte for byte
    assert fake.counts["batch"] == 1 and fake.counts["messages.get"] == 3  # 2 batched + 1
    inbox.ack([k for k, _ in first.messages])
    before = fake.history_id(USER)
    rest = inbox.fetch(None, limit=3)
    assert [raw for _, raw in rest.messages] == raws[3:] and not rest.more
    assert rest.cursor == str(before)  # the profile's historyId, taken before listing
    inbox.ack([k for k, _ in rest.messages])
    for gid in ids:
        assert fake.stored(USER, gid)["labels"] == ["Processed", "UNREAD"]  # INBOX removed
    assert fake.messages(USER, "INBOX") == []

    # New mail through history; limit 2 stops at a history record and resumes after it.
    later = [inbound(i) for i in range(5, 10)]
    for raw in later:
        fake.deliver(USER, raw)
    cursor, got = rest.cursor, []
    fake.reset_counts()
    while True:
        page = inbox.fetch(cursor, limit=2)
        assert not page.full_resync
        got += [raw for _, raw in page.messages]
        inbox.ack([k for k, _ in page.messages])
        assert int(page.cursor) > int(cursor)
        cursor = page.cursor
        if not page.more:
            break
    assert got == later
    assert fake.counts["users.getProfile"] == 0 and fake.counts["labels.create"] == 0

    # Nothing new: one request.
    fake.reset_counts()
    idle = inbox.fetch(cursor)
    assert idle.messages == [] and fake.requests == 1 and fake.counts["history.list"] == 1
    assert int(idle.cursor) >= int(cursor)


def test_an_expired_history_id_costs_one_full_sync_and_never_loops(fake, tmp_path):
    inbox = GmailInbox(api_for(fake, tmp_path))
    fake.deliver(USER, inbound(1))
    page = inbox.fetch(None)
    inbox.ack([k for k, _ in page.messages])
    fresh = [inbound(2), inbound(3)]
    for raw in fresh:
        fake.deliver(USER, raw)
    fake.expire_history(USER)
    fake.reset_counts()
    again = inbox.fetch(page.cursor)
    assert again.full_resync and [raw for _, raw in again.messages] == fresh
    assert fake.counts["history.list"] == 1 and fake.counts["users.getProfile"] == 1
    inbox.ack([k for k, _ in again.messages])
    assert inbox.fetch(again.cursor).messages == []

    # Retention: history kept for only 3 changes refuses an older cursor the same way.
    fake.history_retention = 3
    old = again.cursor
    for i in range(4, 7):
        fake.deliver(USER, inbound(i))
    fake.reset_counts()
    resync = inbox.fetch(old)
    assert resync.full_resync and len(resync.messages) == 3
    assert fake.counts["history.list"] == 1


def test_batched_gets_retry_only_the_parts_that_were_refused(fake, tmp_path):
    waits = Waits()
    inbox = GmailInbox(api_for(fake, tmp_path, waits))
    raws = [inbound(i) for i in range(120)]
    for raw in raws:
        fake.deliver(USER, raw)
    fake.queue_failure(429, retry_after="5", operation="messages.get")
    fake.queue_failure(503, retry_after="1", operation="messages.get")
    page = inbox.fetch(None, limit=200)
    assert [raw for _, raw in page.messages] == raws
    assert fake.counts["batch"] == 3 + 1  # 50 + 50 + 20, then the two refused parts
    assert fake.counts["messages.get"] == 120 + 2
    assert len(waits) == 1 and waits[0] >= 5.0  # one wait for the round, ≥ Retry-After


def test_ack_survives_a_message_deleted_meanwhile(fake, tmp_path):
    inbox = GmailInbox(api_for(fake, tmp_path))
    ids = [fake.deliver(USER, inbound(i)) for i in range(3)]
    inbox.ack([ids[0], "0000000000000bad", ids[2]])
    assert fake.messages(USER, "Processed") == [ids[0], ids[2]]
    assert fake.messages(USER, "INBOX") == [ids[1]]
    assert fake.counts["labels.create"] == 1
    fake.reset_counts()
    inbox.ack([ids[1]])  # the label is made once and remembered
    assert fake.requests == 1 and fake.counts["messages.batchModify"] == 1

    # Someone deletes the label in Gmail: the stale id is refused, the label made anew.
    fake.mailboxes[USER].labels.pop(inbox._label)
    later = fake.deliver(USER, inbound(3))
    inbox.ack([later])
    assert fake.messages(USER, "Processed") == [later] and fake.counts["labels.create"] == 1


def test_watch_and_stop(fake, tmp_path):
    inbox = GmailInbox(api_for(fake, tmp_path), topic="projects/acme/topics/gmail")
    assert inbox.watch() == T0 + dt.timedelta(days=7)
    box = fake.mailboxes[USER]
    assert box.watch["topicName"] == "projects/acme/topics/gmail"
    assert box.watch["labelIds"] == ["INBOX"]
    inbox.stop()
    assert box.watch is None
    with pytest.raises(PermanentProviderError, match="400"):
        inbox.watch("not-a-topic")
    with pytest.raises(ConfigError, match="gmail_pubsub_topic"):
        GmailInbox(api_for(fake, tmp_path)).watch()


# --------------------------------------------------------------------------- the service


@pytest.fixture
def settings(settings, fake, tmp_path: Path):  # type: ignore[no-untyped-def]
    return settings.with_(
        mail_transport="gmail",
        google_credentials_file=str(key_file(fake, tmp_path)),
        google_token_uri=fake.token_uri,
        gmail_api_endpoint=fake.url,
    )


def _sent_once(rt, fake: FakeGmail) -> list[OutboundMessage]:  # type: ignore[no-untyped-def]
    """Every outbox message went out exactly once, and the row says what Gmail stored."""
    with rt.factory() as session:
        rows = list(session.scalars(select(OutboundMessage).order_by(OutboundMessage.id)))
    assert rows
    assert [r.state for r in rows] == [OutboundState.SENT] * len(rows)  # 0 lost
    assert fake.sends == Counter({r.message_id.strip("<>").lower(): 1 for r in rows})
    for row in rows:
        stored = fake.stored(USER, row.provider_id)
        assert stored["submitted_message_id"] == row.message_id
        assert stored["threadId"] == row.provider_thread
        stored_id = dict((k.lower(), v) for k, v in header_fields(stored["raw"]))["message-id"]
        assert (row.sent_message_id or row.message_id) == stored_id
    return rows


def test_every_message_is_sent_exactly_once_though_workers_die_after_gmail_took_it(
    rt, fake, clock, tmp_path
):
    fake.rewrite_message_ids = True  # the hard case: our Message-ID is not searchable
    fake.search_lag = dt.timedelta(seconds=30)  # less than the lease
    waits = Waits()
    rt.sender.api.retry.sleep = waits
    start_organization(rt, tmp_path)
    submit = rt.sender._submit
    rng = random.Random(20260302)
    killed: list[str] = []

    def submit_then_die(mail):  # type: ignore[no-untyped-def]
        answer = submit(mail)  # Gmail has the message now
        if len(killed) < 20 and rng.random() < 0.6:
            killed.append(mail.message_id)
            raise SystemExit("worker killed")  # nothing records the send
        return answer

    rt.sender._submit = submit_then_die
    end = clock.now() + dt.timedelta(weeks=6)
    deaths = 0
    while clock.now() < end:
        try:
            advance_until(rt, clock, end)
        except SystemExit:
            deaths += 1
    # Leases run out, the killed sends are claimed again and find their earlier copies.
    advance_until(rt, clock, end + dt.timedelta(hours=2))

    assert deaths == len(killed) == 20
    rows = _sent_once(rt, fake)
    assert len(rows) > len(killed)
    assert all(r.sent_message_id for r in rows)  # every id was rewritten, and recorded
    with rt.factory() as session:
        tasks = {t.key: t.result for t in session.scalars(select(Task).where(Task.kind == "send"))}
    results = {r.message_id: tasks[f"send:{r.id}"] for r in rows}
    assert {results[m] for m in killed} == {"found-earlier-attempt"}
    assert Counter(results.values())["found-earlier-attempt"] == 20


def test_thirty_percent_faults_still_send_each_message_once(rt, fake, clock, tmp_path):
    fake.rewrite_message_ids = True
    fake.fault_after_write = True  # a faulted 503 send went through: the answer is lost
    fake.fail_ratio = 0.3
    fake.search_lag = dt.timedelta(seconds=30)  # a send in doubt is retried within seconds
    waits = Waits()
    rt.sender.api.retry.sleep = waits
    start_organization(rt, tmp_path)
    advance_until(rt, clock, clock.now() + dt.timedelta(weeks=4, days=1))
    _sent_once(rt, fake)
    assert fake.faults > 50 and fake.lost_answers["messages.send"] > 0
    assert waits and min(waits) >= 1.0  # never shorter than Retry-After


# --------------------------------------------------------------------------- poll_inbox


def _stored_raws(rt) -> list[bytes]:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return list(session.scalars(select(InboundMessage.raw).order_by(InboundMessage.id)))


def _state(rt) -> MailboxState:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return session.scalars(select(MailboxState)).one()


def test_poll_inbox_stores_each_gmail_message_once_through_history_and_resync(
    rt, fake, clock, tmp_path
):
    bootstrap(rt)
    rt.inbox = GmailInbox(api_for(fake, tmp_path))
    delivered = [inbound(i) for i in range(5)]
    for raw in delivered:
        fake.deliver(USER, raw)

    assert poll_inbox(rt, limit=2) == 5  # a full sync in pages of 2
    assert _stored_raws(rt) == delivered
    state = _state(rt)
    assert (state.provider, state.mailbox) == ("gmail", USER) and state.cursor
    assert state.full_synced_at == clock.now()
    assert fake.messages(USER, "INBOX") == [] and len(fake.messages(USER, "Processed")) == 5

    # Through history: the cursor moves on, nothing else is fetched.
    clock.advance(dt.timedelta(minutes=5))
    more = [inbound(i) for i in range(5, 8)]
    for raw in more:
        fake.deliver(USER, raw)
    fake.reset_counts()
    assert poll_inbox(rt) == 3
    assert _stored_raws(rt) == delivered + more
    assert fake.counts["users.getProfile"] == 0 and fake.counts["history.list"] == 1
    cursor = _state(rt).cursor
    assert int(cursor) > int(state.cursor) and _state(rt).full_synced_at == state.full_synced_at

    # Nothing new: one request.
    fake.reset_counts()
    assert poll_inbox(rt) == 0 and fake.requests == 1

    # A crash after storing, before the ack: read again, stored once.
    crash = inbound(8)
    fake.deliver(USER, crash)
    ack = rt.inbox.ack

    def die(keys):  # type: ignore[no-untyped-def]
        raise SystemExit("killed before the ack")

    rt.inbox.ack = die
    with pytest.raises(SystemExit):
        poll_inbox(rt)
    rt.inbox.ack = ack
    assert poll_inbox(rt) == 1  # fetched again (the cursor was not saved) …
    assert _stored_raws(rt) == delivered + more + [crash]  # … and stored once

    # The historyId expires: one full resync, nothing lost, nothing doubled.
    clock.advance(dt.timedelta(days=8))
    late = [inbound(i, reply_to_id="<x@example.com>") for i in range(9, 12)]
    for raw in late:
        fake.deliver(USER, raw)
    fake.expire_history(USER)
    fake.reset_counts()
    assert poll_inbox(rt) == 3
    assert fake.counts["history.list"] == 1 and fake.counts["users.getProfile"] == 1
    assert _stored_raws(rt) == delivered + more + [crash] + late
    assert _state(rt).full_synced_at == clock.now()
    assert poll_inbox(rt) == 0
    with rt.factory() as session:
        hashes = session.scalars(select(InboundMessage.sha256)).all()
    assert len(hashes) == len(set(hashes)) == 12
    assert fake.messages(USER, "INBOX") == []


def test_fake_stores_what_the_client_sent(fake, tmp_path):
    """The fake itself: base64url with or without padding, and only Message-ID rewritten."""
    api = api_for(fake, tmp_path)
    raw = b"To: a@b.test\nSubject: x\n\nbody\n"
    body = {"raw": base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    answer = api.execute(api.resource("messages").send(userId="me", body=body), "send")
    stored = fake.stored(USER, answer["id"])["raw"]
    assert stored.endswith(b"To: a@b.test\nSubject: x\n\nbody\n")
    assert stored.startswith(b"Message-ID: <CA+")  # Gmail adds one when there is none


def test_a_reminder_joins_the_prompts_thread_on_both_sides(rt, fake, clock, tmp_path):
    fake.rewrite_message_ids = True
    start_organization(rt, tmp_path)
    advance_until(rt, clock, clock.now() + dt.timedelta(weeks=2))
    rows = _sent_once(rt, fake)
    prompts = {r.occurrence_id: r for r in rows if r.kind == "followup"}
    reminders = [r for r in rows if r.kind == "remind"]
    assert reminders and all(r.occurrence_id in prompts for r in reminders)
    for reminder in reminders:
        prompt = prompts[reminder.occurrence_id]
        cites = email.message_from_bytes(reminder.raw)["In-Reply-To"]
        assert cites == prompt.sent_message_id  # what the manager's mailbox knows
        assert reminder.provider_thread == prompt.provider_thread  # Gmail's own thread
