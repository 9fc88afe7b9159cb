"""Mail through Microsoft Graph against the Graph fake: MIME drafts that keep our headers,
exactly-once sending across crashes at every step and lost answers, batched send_many, and
the inbox read through messages/delta, acknowledged by moving to Processed.

The fake speaks HTTPS with tokens from its own Entra ID endpoint, so MSAL, the session and
the shared retry rules all run for real."""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.policy
import random
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests
from sqlalchemy import select

from automation.adapters.graph import MsalTokens
from automation.adapters.graph_mail import (
    GraphMailInbox,
    GraphMailSender,
    filter_param,
    odata_string,
)
from automation.adapters.http import Retry
from automation.emails import Rendered, build_message
from automation.errors import ConfigError, PermanentProviderError, TransientProviderError
from automation.models import InboundMessage, MailboxState, OutboundMessage, Task
from automation.ports import OutgoingMail, SentMail
from automation.services.inbound import poll_inbox
from automation.settings import Settings
from tests.conftest import start_organization
from tests.fakes.graph import GraphFake
from tests.test_loop import advance_until

BOX = "checkins@acme.test"
START = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)
REPLIES = Path(__file__).parent / "fixtures" / "replies"


@pytest.fixture
def fake(monkeypatch) -> Iterator[GraphFake]:  # type: ignore[no-untyped-def]
    with GraphFake(validate_subscriptions=False) as server:
        # Adapters built from settings trust the environment's CA bundle, as in production.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_file))
        yield server


def _tokens(fake: GraphFake) -> MsalTokens:
    return MsalTokens(
        fake.tenant, fake.client_id, fake.client_secret, fake.authority_host, verify=fake.ca_file
    )


def make_sender(fake: GraphFake, waits: list[float] | None = None) -> GraphMailSender:
    """A sender as a new process would have it (nothing learned yet)."""
    sleep = waits.append if waits is not None else (lambda seconds: None)
    return GraphMailSender(
        fake.base_url,
        _tokens(fake),
        BOX,
        retry=Retry(sleep=sleep, rng=random.Random(0)),
        verify=fake.ca_file,
    )


def make_inbox(fake: GraphFake) -> GraphMailInbox:
    return GraphMailInbox(
        fake.base_url,
        _tokens(fake),
        BOX,
        retry=Retry(sleep=lambda seconds: None, rng=random.Random(0)),
        verify=fake.ca_file,
    )


def outgoing(
    n: int,
    *,
    message_id: str | None = None,
    in_reply_to: str | None = None,
    to: tuple[str, ...] = ("ana@acme.test",),
    text: str = "",
) -> OutgoingMail:
    message_id = message_id or f"<msg-{n}@acme.test>"
    raw = build_message(
        Rendered(f"Check-in {n}", text or f"Hello {n}.\n", f"<p>Hello {n}.</p>"),
        sender=f"Check-ins <{BOX}>",
        to=list(to),
        message_id=message_id,
        date=dt.datetime(2026, 3, 2, 9, n % 60, tzinfo=dt.UTC),
        in_reply_to=in_reply_to,
        references=[in_reply_to] if in_reply_to else None,
    )
    return OutgoingMail(message_id, raw, BOX, to)


def kill_after(session: Any, when: Callable[[str, str, Any], bool]) -> None:
    """The worker dies right after an answer that ``when`` picks: the call took effect, the
    process never saw the answer (SystemExit is not an Exception: nothing handles it)."""
    original = session.request

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        response = original(method, url, *args, **kwargs)
        if when(method, urlsplit(url).path, response):
            raise SystemExit("worker killed")
        return response

    session.request = request


def created(method: str, path: str, response: Any) -> bool:
    return method == "POST" and path.endswith("/messages") and response.status_code == 201


def accepted(method: str, path: str, response: Any) -> bool:
    return method == "POST" and path.endswith("/send") and response.status_code == 202


def headers_of(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


# --------------------------------------------------------------------------- sending


def test_the_mime_goes_out_as_written_with_our_message_id_and_threading(fake):
    sender = make_sender(fake)
    first = outgoing(1)
    reminder = outgoing(2, in_reply_to=first.message_id)
    sent = [sender.send(first), sender.send(reminder)]
    out = fake.outgoing
    assert [o["raw"] for o in out] == [first.raw, reminder.raw]  # byte for byte
    head = headers_of(out[1]["raw"])
    assert head["Message-ID"] == reminder.message_id
    assert head["In-Reply-To"] == first.message_id
    assert head["References"] == first.message_id
    assert head["Auto-Submitted"] == "auto-generated"
    assert out[1]["recipients"] == ["ana@acme.test"]
    # SentMail: our id (Graph kept it), the message's immutable id, its conversation, which
    # the reminder shares with the message it answers.
    (copy1, copy2) = fake.mail(BOX, "sentitems")
    assert sent[0] == SentMail(first.message_id, copy1["id"], copy1["conversationId"])
    assert sent[1] == SentMail(reminder.message_id, copy2["id"], copy2["conversationId"])
    assert sent[0].thread == sent[1].thread
    assert sender.keeps_message_ids is True
    assert fake.ops["messages.create"] == 2 and fake.ops["messages.send"] == 2
    assert fake.mail(BOX, "drafts") == []


def test_envelope_recipients_missing_from_the_headers_are_added_as_bcc(fake):
    mail = outgoing(3)
    mail = OutgoingMail(mail.message_id, mail.raw, BOX, ("ana@acme.test", "audit@acme.test"))
    make_sender(fake).send(mail)
    (out,) = fake.outgoing
    assert out["recipients"] == ["ana@acme.test", "audit@acme.test"]
    assert out["raw"].endswith(mail.raw) and out["raw"].startswith(b"Bcc: audit@acme.test\r\n")


def test_already_sent_finds_a_sent_message_by_an_awkward_message_id(fake):
    # Characters a query string mangles unless encoded (+, =, /, &, #) and a quote that
    # OData needs doubled.
    mail = outgoing(4, message_id="<o'brien+x=1/2&y#z@acme.test>")
    before = make_sender(fake)
    assert before.already_sent(mail) is None
    sent = before.send(mail)
    fresh = make_sender(fake)  # another process, after the first died before recording
    assert fresh.already_sent(mail) == sent
    assert fake.sent_counts() == Counter({mail.message_id: 1})
    assert odata_string("a'b") == "'a''b'"
    assert filter_param("internetMessageId eq '<a+b@c>'") == (
        "$filter=internetMessageId%20eq%20%27%3Ca%2Bb%40c%3E%27"
    )


def test_a_crash_between_create_and_send_leaves_a_draft_that_the_retry_sends(fake):
    mail = outgoing(5)
    dying = make_sender(fake)
    kill_after(dying.session, created)
    with pytest.raises(SystemExit):
        dying.send(mail)
    (draft,) = fake.mail(BOX, "drafts")
    assert draft["internetMessageId"] == mail.message_id and fake.sent_counts() == Counter()

    retry = make_sender(fake)  # what send_message does: look, then send
    assert retry.already_sent(mail) is None
    sent = retry.send(mail)
    assert sent.provider_id == draft["id"]  # that draft went out, no second one was made
    assert fake.ops["messages.create"] == 1
    assert fake.sent_counts() == Counter({mail.message_id: 1})
    assert fake.mail(BOX, "drafts") == []


def test_a_crash_after_graph_accepted_the_send_is_found_not_sent_again(fake):
    mail = outgoing(6)
    dying = make_sender(fake)
    kill_after(dying.session, accepted)
    with pytest.raises(SystemExit):
        dying.send(mail)
    retry = make_sender(fake)
    found = retry.already_sent(mail)
    assert found is not None and found.message_id == mail.message_id
    assert fake.sent_counts() == Counter({mail.message_id: 1})


def test_submission_still_in_the_outbox_counts_as_sent():
    with GraphFake(outbox_requests=50) as fake:
        mail = outgoing(7)
        make_sender(fake).send(mail)
        assert [m["folder"] for m in fake.mail(BOX)] == ["Outbox"]
        assert make_sender(fake).already_sent(mail) is not None


@pytest.mark.parametrize("op", ["messages.create", "messages.send"])
def test_lost_answers_are_looked_up_not_repeated(fake, op):
    """Graph did the work but the answer was lost (a 503): the create is not posted again
    (the retry finds the draft), and a send retried on a message that already went out
    (400) is recognised as sent."""
    fake.lose_next(op)
    mail = outgoing(8)
    sent = make_sender(fake).send(mail)
    assert fake.ops["lost"] == 1
    assert fake.ops["messages.create"] == 1
    assert fake.sent_counts() == Counter({mail.message_id: 1})
    assert sent.message_id == mail.message_id and fake.mail(BOX, "drafts") == []


def test_a_draft_deleted_in_outlook_before_its_send_is_made_again(fake):
    mail = outgoing(9)
    dying = make_sender(fake)
    kill_after(dying.session, created)
    with pytest.raises(SystemExit):
        dying.send(mail)
    (draft,) = fake.mail(BOX, "drafts")
    retry = make_sender(fake)
    assert retry.already_sent(mail) is None  # the hint names the draft …
    fake.delete_message(draft["id"])  # … which someone deletes right then
    retry.send(mail)
    assert fake.ops["messages.create"] == 2
    assert fake.sent_counts() == Counter({mail.message_id: 1})


def test_a_message_id_replaced_by_graph_is_returned_and_still_found():
    with GraphFake(rewrite_internet_message_ids=True) as fake:
        mail = outgoing(10)
        sender = make_sender(fake)
        sent = sender.send(mail)
        (copy,) = fake.mail(BOX, "sentitems")
        assert sent.message_id == copy["internetMessageId"] != mail.message_id
        assert headers_of(fake.outgoing[0]["raw"])["Message-ID"] == sent.message_id
        assert sender.keeps_message_ids is False
        # A new process finds it by the property the draft was tagged with.
        assert make_sender(fake).already_sent(mail) == sent

        # Killed after the draft was tagged: the retry sends that draft.
        other = outgoing(11)
        dying = make_sender(fake)
        kill_after(dying.session, lambda method, path, response: method == "PATCH")
        with pytest.raises(SystemExit):
            dying.send(other)
        retry = make_sender(fake)
        assert retry.already_sent(other) is None
        retry.send(other)
        assert fake.ops["messages.create"] == 2  # one per message
        assert sorted(fake.sent_counts().values()) == [1, 1]
        assert fake.mail(BOX, "drafts") == []


def test_too_large_is_permanent_and_says_how_large():
    with GraphFake(mail_request_limit=4000) as fake:
        mail = outgoing(12, text="x" * 5000)
        sender = make_sender(fake)
        with pytest.raises(PermanentProviderError, match=r"413.*\d+ bytes of MIME") as caught:
            sender.send(mail)
        assert str(len(mail.raw)) in str(caught.value)
        assert fake.ops["messages.create"] == 1 and sender.retry.retries == 0
        assert fake.sent_counts() == Counter()


def test_a_429_waits_at_least_its_retry_after(fake):
    waits: list[float] = []
    fake.fail_next(1, 429, retry_after="7")
    make_sender(fake, waits).send(outgoing(13))
    assert len(waits) == 1 and waits[0] >= 7
    assert fake.ops["fault"] == 1 and sum(fake.sent_counts().values()) == 1


def test_send_many_looks_up_creates_and_sends_in_batches(fake):
    mails = [outgoing(n) for n in range(20, 45)]  # 25 messages
    earlier = make_sender(fake)
    earlier.send(mails[0])  # sent by an earlier attempt
    dying = make_sender(fake)
    kill_after(dying.session, created)
    with pytest.raises(SystemExit):
        dying.send(mails[1])  # left as a draft
    fake.reset_counters()

    sender = make_sender(fake)
    results = sender.send_many([*mails, mails[5]])  # and one twice
    assert all(isinstance(r, SentMail) for r in results), results
    assert [r.message_id for r in results] == [m.message_id for m in mails] + [mails[5].message_id]
    assert results[-1] == results[5]
    assert fake.sent_counts() == Counter({m.message_id: 1 for m in mails})
    assert fake.ops["messages.create"] == 23  # not for the sent one nor the draft
    assert fake.inner_ops["messages.send"] == 24
    # 2 batches of lookups by internetMessageId, 2 by our tag (this process has not seen
    # Graph keep an id yet), 1 read of the Drafts folder's id, 23 creates, 2 batches of sends.
    assert fake.batch_sizes == [20, 5, 20, 3, 20, 4]
    assert fake.counts["graph"] == 2 + 2 + 1 + 23 + 2


def test_send_many_reports_each_failure_and_sends_the_rest():
    with GraphFake(mail_request_limit=6000) as fake:
        mails = [outgoing(50), outgoing(51, text="y" * 8000), outgoing(52)]
        fake.inject_faults(0.3, seed=3, top_level=False)  # inner 429/503s, retried alone
        results = make_sender(fake).send_many(mails)
        assert isinstance(results[0], SentMail) and isinstance(results[2], SentMail)
        assert isinstance(results[1], PermanentProviderError) and "413" in str(results[1])
        assert fake.sent_counts() == Counter({mails[0].message_id: 1, mails[2].message_id: 1})


def test_settings_name_what_is_missing():
    with pytest.raises(ConfigError) as caught:
        GraphMailSender.from_settings(Settings(mail_transport="graph", mail_from="nobody"))
    text = str(caught.value)
    for name in ("graph_tenant_id", "graph_client_id", "graph_client_secret", "graph_mailbox"):
        assert name in text


# --------------------------------------------------------------------------- reading


def inbound(n: int) -> bytes:
    return (
        f"From: Ana <ana@acme.test>\r\nTo: {BOX}\r\nSubject: re {n}\r\n"
        f"Message-ID: <in-{n}@acme.test>\r\n\r\nreply {n}  \r\n\xe4\r\n"
    ).encode("latin-1")


def test_the_inbox_pages_to_a_delta_link_and_then_costs_one_request(fake):
    inbox = make_inbox(fake)
    raws = [inbound(n) for n in range(5)]
    ids = [
        fake.deliver(BOX, raw, received=START + dt.timedelta(minutes=n))
        for n, raw in enumerate(raws)
    ]
    pages = [inbox.fetch(None, limit=2)]
    while pages[-1].more:
        pages.append(inbox.fetch(pages[-1].cursor, limit=2))
    assert [len(p.messages) for p in pages] == [2, 2, 1]
    assert all("$skiptoken=" in (p.cursor or "") for p in pages[:2])
    assert "$deltatoken=" in (pages[-1].cursor or "")
    assert [k for p in pages for k, _ in p.messages] == ids  # oldest first
    assert [raw for p in pages for _, raw in p.messages] == raws  # byte for byte

    inbox.ack([k for p in pages for k, _ in p.messages])
    assert [m["folder"] for m in fake.mail(BOX)] == ["Processed"] * 5
    assert fake.batch_sizes == [5] and fake.ops["mailFolders.create"] == 1
    fake.reset_counters()
    after = inbox.fetch(pages[-1].cursor)  # five @removed (moved out): nothing to take in
    assert after.messages == [] and not after.more and fake.counts["graph"] == 1
    quiet = inbox.fetch(after.cursor)
    assert quiet.messages == [] and fake.counts["graph"] == 2 and quiet.cursor != after.cursor

    # Another process finds the folder by its name instead of creating a second one.
    fake.deliver(BOX, inbound(9))
    other = make_inbox(fake)
    page = other.fetch(quiet.cursor)
    other.ack([k for k, _ in page.messages])
    assert fake.ops["mailFolders.create"] == 0 and fake.ops["mailFolders.list"] == 1


@pytest.mark.parametrize("how", ["gone", "syncStateNotFound"])
def test_a_refused_delta_link_means_one_fresh_round_never_a_loop(fake, how):
    inbox = make_inbox(fake)
    first, second = fake.deliver(BOX, inbound(1)), fake.deliver(BOX, inbound(2))
    page = inbox.fetch(None)
    inbox.ack([first])  # the second was not acknowledged (a crash, say)
    fake.invalidate_delta(how)
    third = fake.deliver(BOX, inbound(3))
    fake.reset_counters()
    again = inbox.fetch(page.cursor)
    assert again.full_resync and not again.more
    assert sorted(k for k, _ in again.messages) == sorted([second, third])
    assert fake.counts["graph"] == 1 + 1 + 2  # refused, the fresh round, two $value

    fake.invalidate_delta(how, fresh_rounds_too=True)
    fake.reset_counters()
    with pytest.raises(TransientProviderError, match="refused too"):
        inbox.fetch(again.cursor)
    assert fake.counts["graph"] == 2


# --------------------------------------------------------------------------- the service


@pytest.fixture
def settings(settings, fake):  # type: ignore[no-untyped-def]
    return settings.with_(
        mail_transport="graph",
        graph_tenant_id=fake.tenant,
        graph_client_id=fake.client_id,
        graph_client_secret=fake.client_secret,
        graph_base_url=fake.base_url,
        graph_authority_host=fake.authority_host,
    )


@pytest.fixture
def org(rt, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path)


def _outbox(rt) -> list[OutboundMessage]:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return list(session.scalars(select(OutboundMessage).order_by(OutboundMessage.id)))


@pytest.mark.parametrize("faults", [0.0, 0.3], ids=["clean", "faults-30pct"])
def test_every_outbox_message_is_sent_exactly_once_through_worker_kills(
    rt, org, fake, clock, faults
):
    sender = rt.sender
    assert isinstance(sender, GraphMailSender) and sender.mailbox == "checkins@example.com"
    waits: list[float] = []
    sender.retry.sleep = waits.append
    if faults:
        # 429 (Retry-After) and 503, half of the 503s after the call took effect.
        fake.inject_faults(faults, seed=11, after_share=0.5)
    rng = random.Random(2026)
    killed: dict[str, str] = {}  # internetMessageId -> the step it was killed after
    message_of: dict[str, str] = {}  # Graph id -> internetMessageId

    def learn(data: Any) -> None:
        for item in [data, *data.get("value", [])] if isinstance(data, dict) else []:
            if isinstance(item, dict) and item.get("id") and item.get("internetMessageId"):
                message_of[item["id"]] = item["internetMessageId"]

    def when(method: str, path: str, response: Any) -> bool:
        """Kill the worker after 10 creates and 10 accepted sends of 20 messages, picked at
        random (seeded) as they happen."""
        if response.headers.get("Content-Type", "").startswith("application/json"):
            learn(response.json())
        if created(method, path, response):
            mid, step = response.json()["internetMessageId"], "create"
        elif accepted(method, path, response):
            mid, step = message_of.get(unquote(path.split("/")[-2]), ""), "send"
        else:
            return False
        if not mid or mid in killed or Counter(killed.values())[step] >= 10:
            return False
        if rng.random() >= 0.5:
            return False
        killed[mid] = step
        return True

    kill_after(sender.session, when)
    end = clock.now() + dt.timedelta(weeks=8)
    while clock.now() < end:
        try:
            advance_until(rt, clock, end)
        except SystemExit:
            continue  # the worker died; the next tick runs after its lease ran out
    advance_until(rt, clock, end + dt.timedelta(days=2))

    outbox = _outbox(rt)
    assert len(outbox) >= 40  # enough for 20 random victims
    assert Counter(killed.values()) == {"create": 10, "send": 10}, (len(outbox), killed)
    assert [m.state for m in outbox] == ["sent"] * len(outbox)  # nothing lost
    assert fake.sent_counts() == Counter({m.message_id: 1 for m in outbox})  # nothing twice
    assert fake.mail("checkins@example.com", "drafts") == []
    assert fake.ops["messages.create"] == len(outbox)  # one draft each, kills and all
    sent_raw = {o["internetMessageId"]: o["raw"] for o in fake.outgoing}
    assert all(sent_raw[m.message_id] == m.raw for m in outbox)
    copies = {c["internetMessageId"]: c for c in fake.mail("checkins@example.com", "sentitems")}
    assert all(m.provider_id == copies[m.message_id]["id"] for m in outbox)
    assert all(m.provider_thread == copies[m.message_id]["conversationId"] for m in outbox)
    with rt.factory() as session:
        results = Counter(
            t.result for t in session.scalars(select(Task).where(Task.kind == "send"))
        )
    # Each message killed after Graph accepted it was found by the retry, not sent again.
    assert results["found-earlier-attempt"] >= 10
    if faults:
        assert fake.ops["fault"] > 0 and fake.ops["fault.after"] > 0 and waits


def _stored(rt) -> list[InboundMessage]:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return list(session.scalars(select(InboundMessage).order_by(InboundMessage.id)))


def _cursor(rt) -> MailboxState:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return session.scalars(select(MailboxState).where(MailboxState.provider == "graph")).one()


def test_inbound_mail_comes_in_raw_once_and_is_moved_to_processed(rt, org, fake, monkeypatch):
    inbox = GraphMailInbox.from_settings(rt.settings.with_(mail_inbox="graph"))
    rt.inbox = inbox
    box = inbox.mailbox
    corpus = [p.read_bytes() for p in sorted(REPLIES.glob("*.eml"))[:8]]
    for raw in corpus[:5]:
        fake.deliver(box, raw)
    assert poll_inbox(rt) == 5
    assert sorted(m.raw for m in _stored(rt)) == sorted(corpus[:5])  # byte-identical
    assert len(fake.mail(box, "Processed")) == 5 and fake.mail(box, "inbox") == []
    first = _cursor(rt)
    assert "$deltatoken=" in (first.cursor or "") and first.full_synced_at is not None

    fake.reset_counters()
    assert poll_inbox(rt) == 0
    assert fake.counts["graph"] == 1  # nothing new: one delta request
    assert _cursor(rt).cursor != first.cursor  # the deltaLink moves on

    # The worker dies after storing, before acknowledging: read again, stored once.
    for raw in corpus[5:7]:
        fake.deliver(box, raw)
    ack = inbox.ack

    def die(keys: Any) -> None:
        raise SystemExit("worker killed")

    monkeypatch.setattr(inbox, "ack", die)
    with pytest.raises(SystemExit):
        poll_inbox(rt)
    assert len(_stored(rt)) == 7
    monkeypatch.setattr(inbox, "ack", ack)
    assert poll_inbox(rt) == 2
    assert len(_stored(rt)) == 7
    assert len(fake.mail(box, "Processed")) == 7 and fake.mail(box, "inbox") == []

    # The same bytes arriving again as another message are stored once too.
    fake.deliver(box, corpus[0])
    assert poll_inbox(rt) == 1 and len(_stored(rt)) == 7

    # Graph drops the delta state: one fresh round, which sees only what is new.
    fake.invalidate_delta("syncStateNotFound")
    fake.deliver(box, corpus[7])
    fake.reset_counters()
    assert poll_inbox(rt) == 1
    assert fake.ops["messages.value"] == 1  # the processed ones were not read again
    stored = _stored(rt)
    assert len(stored) == 8 and stored[-1].raw == corpus[7]
    assert len({m.sha256 for m in stored}) == 8
    assert len(fake.mail(box, "Processed")) == 9 and fake.mail(box, "inbox") == []


def test_the_fake_takes_a_mime_create_inside_a_batch_as_json_batching_says(fake):
    """A non-JSON body inside $batch travels base64-encoded (so MIME, itself base64, is
    encoded twice); the adapter does not batch creates, but the fake must not mislead."""
    mail = outgoing(60)
    body = base64.b64encode(base64.b64encode(mail.raw)).decode()
    entry = {
        "id": "1",
        "method": "POST",
        "url": f"/users/{BOX}/messages",
        "headers": {"Content-Type": "text/plain", "Prefer": 'IdType="ImmutableId"'},
        "body": body,
    }
    answer = requests.post(
        fake.base_url + "/$batch",
        json={"requests": [entry, {"id": "2", "method": "GET", "url": f"/users/{BOX}/messages"}]},
        headers={"Authorization": f"Bearer {_tokens(fake)()}"},
        verify=fake.ca_file,
        timeout=10,
    ).json()
    statuses = {r["id"]: r["status"] for r in answer["responses"]}
    assert statuses["1"] == 201
    (draft,) = fake.mail(BOX, "drafts")
    assert draft["raw"] == mail.raw and draft["internetMessageId"] == mail.message_id
