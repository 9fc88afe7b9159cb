"""The IMAP inbox and Sent folder against a real Dovecot (tests/fakes/dovecot.py).

One Dovecot serves the module; every test has its own user, so its own empty mailbox. Tests
that need another server (no MOVE, no IDLE, TLS, one to stop) start their own. Under CI=true
a missing Dovecot fails these tests; elsewhere they skip.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from automation.adapters.imap import (
    ImapInbox,
    ImapSentFolder,
    encode_mailbox,
    normal_message_id,
    parse_cursor,
    uid_set,
)
from automation.adapters.mail import build_inbox
from automation.errors import ConfigError, PermanentProviderError, TransientProviderError
from automation.models import InboundMessage, InboundState, MailboxState
from automation.services.inbound import poll_inbox
from automation.settings import Settings
from tests.conftest import start_organization
from tests.fakes.dovecot import Account, DovecotServer, dovecot_fixture, running_dovecot

dovecot = dovecot_fixture()
dovecot_tls = dovecot_fixture(tls=True)


def message(n: int, body: str = "", subject: str = "") -> bytes:
    """A small CRLF message with a unique Message-ID (distinct bytes: distinct hashes)."""
    return (
        f"From: Bea Boss <boss@acme.test>\r\n"
        f"To: checkins@acme.test\r\n"
        f"Subject: {subject or f'Re: check-in {n}'}\r\n"
        f"Message-ID: <m{n}@acme.test>\r\n"
        f"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
        f"\r\n"
        f"{body or f'Reply number {n}.'}\r\n"
    ).encode()


@pytest.fixture
def account(dovecot: DovecotServer) -> Account:
    return dovecot.add_user()


def inbox_for(server: DovecotServer, account: Account, **kwargs) -> ImapInbox:  # type: ignore[no-untyped-def]
    return ImapInbox(server.host, server.port, "none", account.username, account.password, **kwargs)


@pytest.fixture
def inbox(dovecot: DovecotServer, account: Account) -> Iterator[ImapInbox]:
    reader = inbox_for(dovecot, account)
    yield reader
    reader.close()


def keys(page) -> list[str]:  # type: ignore[no-untyped-def]
    return [key for key, _ in page.messages]


# --------------------------------------------------------------------------- pure helpers


def test_wire_helpers() -> None:
    assert uid_set([7, 1, 2, 3, 9, 10, 12, 2]) == "1:3,7,9:10,12"
    assert uid_set([5]) == "5"
    assert encode_mailbox("INBOX") == '"INBOX"'
    assert encode_mailbox("[Gmail]/Sent Mail") == '"[Gmail]/Sent Mail"'
    # RFC 3501 5.1.3's own example, and a literal "&".
    assert encode_mailbox("~peter/mail/台北/日本語") == '"~peter/mail/&U,BTFw-/&ZeVnLIqe-"'
    assert encode_mailbox('A&B "q"') == '"A&-B \\"q\\""'
    assert parse_cursor("123:45") == (123, 45)
    assert parse_cursor(None) is None
    assert parse_cursor("garbage") is None
    assert parse_cursor("1:x") is None
    assert normal_message_id("abc@x") == "<abc@x>"
    assert normal_message_id("  <abc@x> (a comment)") == "<abc@x>"
    assert normal_message_id("\r\n <Abc@X>") == "<Abc@X>"
    with pytest.raises(ValueError):
        normal_message_id('<"a"@x>')


def test_from_settings_and_build_inbox(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        mail_inbox="imap",
        imap_host="imap.example.com",
        imap_username="checkins@example.com",
        imap_password="app-password",
        imap_folder="Replies",
    )
    inbox = build_inbox(settings)
    assert isinstance(inbox, ImapInbox)
    assert inbox.name == "imap"
    assert inbox.mailbox == "checkins@example.com/Replies"
    assert (inbox.host, inbox.port, inbox.security) == ("imap.example.com", 993, "tls")
    assert inbox.processed_folder == "Processed"
    sent = ImapSentFolder.from_settings(settings)
    assert sent.folder == "Sent"
    with pytest.raises(ConfigError) as refused:
        ImapInbox.from_settings(Settings(data_dir=tmp_path, mail_inbox="imap"))
    assert "imap_host" in str(refused.value) and "imap_username" in str(refused.value)


# --------------------------------------------------------------------------- fetch and ack


def test_fetch_then_ack_moves_to_processed_and_never_again(
    dovecot: DovecotServer, account: Account, inbox: ImapInbox
) -> None:
    raws = [message(i) for i in range(3)]
    for raw in raws:
        dovecot.deliver(account, raw)
    assert dovecot.count(account, "Processed") == 0  # not there yet: ack creates it

    page = inbox.fetch(None)
    assert keys(page) == ["1", "2", "3"]
    assert [raw for _, raw in page.messages] == raws
    assert page.more is False and page.full_resync is False
    validity = dovecot.uidvalidity(account)
    assert page.cursor == f"{validity}:3"

    inbox.ack(keys(page))
    assert dovecot.count(account) == 0
    assert dovecot.count(account, "Processed") == 3
    # Not fetched again: neither after the cursor nor by a reader starting from scratch.
    assert inbox.fetch(page.cursor).messages == []
    assert inbox_for(dovecot, account).fetch(None).messages == []
    # PEEK: the processed copies were not marked \Seen by reading them.
    conn = dovecot.connect(account)
    conn.select('"Processed"')
    typ, data = conn.uid("SEARCH", "UNSEEN")
    conn.logout()
    assert data[0].split() == [b"1", b"2", b"3"]


def test_cursor_advances_and_only_new_messages_come_after_it(
    dovecot: DovecotServer, account: Account, inbox: ImapInbox
) -> None:
    dovecot.deliver(account, message(1))
    dovecot.deliver(account, message(2))
    first = inbox.fetch(None)
    assert keys(first) == ["1", "2"]
    # Not acknowledged: still in the folder, yet the cursor keeps them out. "3:*" matches the
    # last message (UID 2) on the server; the reader must filter it.
    again = inbox.fetch(first.cursor)
    assert again.messages == [] and again.cursor == first.cursor and not again.full_resync

    dovecot.deliver(account, message(3))
    dovecot.append(account, message(4))  # may get its UID before Dovecot notices message 3
    second = inbox.fetch(first.cursor)
    assert keys(second) == ["3", "4"]
    assert {raw for _, raw in second.messages} == {message(3), message(4)}
    assert parse_cursor(second.cursor) == (parse_cursor(first.cursor)[0], 4)  # type: ignore[index]


def test_raw_bytes_come_back_unchanged(
    dovecot: DovecotServer, account: Account, inbox: ImapInbox
) -> None:
    cases = {
        "plain": message(1),
        "eight_bit": (
            b"From: J\xc3\xbcrgen <j@acme.test>\r\nSubject: caf\xc3\xa9 \xe9t\xe9\r\n"
            b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n"
            b"\r\n\xe9t\xe9 \xff\xfe raw latin-1 and \xe2\x82\xac UTF-8\r\n"
        ),
        "malformed": (
            b'A header line without a colon\r\nContent-Type: multipart/mixed; boundary="b"\r\n'
            b"Subject: =?utf-8?B?broken base64?=\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
            b"never closed, no final newline"
        ),
        "long_line": b"Subject: long\r\n\r\n" + b"x" * 20_000 + b"\r\n",
        "empty": b"",
    }
    for raw in cases.values():
        dovecot.deliver(account, raw)
    # A Maildir file with bare LF (what most MTAs write): IMAP sends lines with CRLF
    # (RFC 3501), so that is the message as any IMAP client receives it.
    lf = b"Subject: bare LF\n\nline one\nline two\n"
    dovecot.deliver(account, lf)

    page = inbox.fetch(None)
    got = [raw for _, raw in page.messages]
    assert got[: len(cases)] == list(cases.values())
    assert got[len(cases)] == lf.replace(b"\n", b"\r\n")
    # The same 8-bit bytes through APPEND come back unchanged too.
    dovecot.append(account, cases["eight_bit"])
    assert [raw for _, raw in inbox.fetch(page.cursor).messages] == [cases["eight_bit"]]


def test_paging_with_limit_oldest_first(
    dovecot: DovecotServer, account: Account, inbox: ImapInbox
) -> None:
    for i in range(7):
        dovecot.deliver(account, message(i))
    pages, cursor = [], None
    while True:
        page = inbox.fetch(cursor, limit=3)
        pages.append(page)
        cursor = page.cursor
        if not page.more:
            break
    assert [keys(p) for p in pages] == [["1", "2", "3"], ["4", "5", "6"], ["7"]]
    assert [p.more for p in pages] == [True, True, False]
    assert [raw for p in pages for _, raw in p.messages] == [message(i) for i in range(7)]
    assert cursor is not None and cursor.endswith(":7")


def test_a_page_stops_growing_past_its_byte_budget(
    dovecot: DovecotServer, account: Account
) -> None:
    big = b"x" * 4000
    for i in range(60):
        dovecot.deliver(account, message(i, body=big.decode()))
    reader = inbox_for(dovecot, account, max_page_bytes=10_000)
    page = reader.fetch(None, limit=100)
    # The first chunk of 25 already passes 10 kB: the page ends there, and says more.
    assert len(page.messages) == 25 and page.more
    rest = reader.fetch(page.cursor, limit=100)
    rest2 = reader.fetch(rest.cursor, limit=100)
    assert len(rest.messages) == 25 and len(rest2.messages) == 10 and not rest2.more
    got = [k for p in (page, rest, rest2) for k in keys(p)]
    assert got == [str(i) for i in range(1, 61)]


def test_uidvalidity_change_resyncs_the_folder_and_loses_nothing(
    dovecot: DovecotServer, account: Account, inbox: ImapInbox
) -> None:
    for i in range(3):
        dovecot.deliver(account, message(i))
    first = inbox.fetch(None, limit=2)
    inbox.ack(keys(first))  # message 0 and 1 processed; message 2 is still waiting
    dovecot.deliver(account, message(3))
    old = dovecot.uidvalidity(account)
    dovecot.set_uidvalidity(account, old + 1000)  # a restore or a server migration

    page = inbox.fetch(first.cursor)
    assert page.full_resync is True
    assert page.cursor is not None and page.cursor.startswith(f"{old + 1000}:")
    assert sorted(raw for _, raw in page.messages) == sorted([message(2), message(3)])
    assert not page.more
    inbox.ack(keys(page))
    assert dovecot.count(account) == 0 and dovecot.count(account, "Processed") == 4
    # The new cursor is good: nothing more, no second resync.
    after = inbox.fetch(page.cursor)
    assert after.messages == [] and after.full_resync is False


def test_a_recreated_folder_is_read_again_from_the_start(dovecot: DovecotServer) -> None:
    account = dovecot.add_user()
    dovecot.append(account, message(1), "Replies")
    reader = inbox_for(dovecot, account, folder="Replies")
    first = reader.fetch(None)
    assert keys(first) == ["1"]
    reader.ack(keys(first))
    other = dovecot.connect(account)
    assert other.delete('"Replies"')[0] == "OK"
    other.logout()
    dovecot.append(account, message(2), "Replies")  # recreated: UIDs start over at 1
    dovecot.append(account, message(3), "Replies")
    page = reader.fetch(first.cursor)
    assert page.full_resync and [raw for _, raw in page.messages] == [message(2), message(3)]
    assert keys(page) == ["1", "2"]


def test_an_unreadable_cursor_is_a_full_resync(
    dovecot: DovecotServer, account: Account, inbox: ImapInbox
) -> None:
    dovecot.deliver(account, message(1))
    page = inbox.fetch("not-a-cursor")
    assert page.full_resync and keys(page) == ["1"]


def test_ack_under_another_uidvalidity_moves_nothing(
    dovecot: DovecotServer, account: Account, inbox: ImapInbox
) -> None:
    dovecot.deliver(account, message(1))
    page = inbox.fetch(None)
    dovecot.set_uidvalidity(account, dovecot.uidvalidity(account) + 7)
    inbox.close()  # the next call opens a new connection and SELECTs again
    inbox.ack(keys(page))  # UID 1 may name another message now: left alone
    assert dovecot.count(account) == 1 and dovecot.count(account, "Processed") == 0
    again = inbox.fetch(page.cursor)
    assert again.full_resync and [raw for _, raw in again.messages] == [message(1)]


@pytest.mark.parametrize(
    "capabilities",
    ["IMAP4rev1 IDLE UIDPLUS", "IMAP4rev1 IDLE"],
    ids=["copy-uid-expunge", "copy-expunge"],
)
def test_ack_without_move(capabilities: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No MOVE: COPY, flag \\Deleted, then UID EXPUNGE (UIDPLUS) or EXPUNGE."""
    with running_dovecot(capabilities=capabilities) as server:
        account = server.add_user()
        for i in range(4):
            server.deliver(account, message(i))
        with inbox_for(server, account) as reader:
            page = reader.fetch(None, limit=3)
            link = reader._link
            assert link is not None and "MOVE" not in link.capabilities
            # Dovecot still obeys an unannounced MOVE: record the commands to see the fallback.
            sent: list[str] = []
            uid, expunge = link.conn.uid, link.conn.expunge

            def spy_uid(command: str, *args: str):  # type: ignore[no-untyped-def]
                sent.append(f"UID {command}")
                return uid(command, *args)

            def spy_expunge():  # type: ignore[no-untyped-def]
                sent.append("EXPUNGE")
                return expunge()

            monkeypatch.setattr(link.conn, "uid", spy_uid)
            monkeypatch.setattr(link.conn, "expunge", spy_expunge)
            reader.ack(keys(page))
            uidplus = "UIDPLUS" in capabilities
            assert sent == ["UID COPY", "UID STORE", "UID EXPUNGE" if uidplus else "EXPUNGE"]
            assert server.count(account) == 1  # the fourth, not yet fetched, stays
            assert server.count(account, "Processed") == 3
            rest = reader.fetch(page.cursor)
            assert [raw for _, raw in rest.messages] == [message(3)]


# --------------------------------------------------------------------------- connections


def test_tls_and_starttls(dovecot_tls: DovecotServer) -> None:
    account = dovecot_tls.add_user()
    dovecot_tls.deliver(account, message(1))
    trust = ssl.create_default_context(cafile=dovecot_tls.ca_file)
    for security, port in (("tls", dovecot_tls.tls_port), ("starttls", dovecot_tls.port)):
        assert port is not None
        with ImapInbox(
            dovecot_tls.host, port, security, account.username, account.password, ssl_context=trust
        ) as reader:
            assert [raw for _, raw in reader.fetch(None).messages] == [message(1)]
            assert reader._link is not None
            assert isinstance(reader._link.conn.sock, ssl.SSLSocket)
    # The system trust store does not know the self-signed certificate: refused for good.
    untrusted = ImapInbox(
        dovecot_tls.host, dovecot_tls.tls_port or 0, "tls", account.username, account.password
    )
    with pytest.raises(PermanentProviderError, match="certificate"):
        untrusted.fetch(None)


def test_starttls_required_but_not_offered(dovecot: DovecotServer, account: Account) -> None:
    reader = ImapInbox(dovecot.host, dovecot.port, "starttls", account.username, "x")
    with pytest.raises(PermanentProviderError, match="STARTTLS"):
        reader.fetch(None)


def test_wrong_password_is_permanent() -> None:
    # A server of its own: Dovecot slows later logins from an address that failed one.
    with running_dovecot() as server:
        account = server.add_user()
        reader = ImapInbox(server.host, server.port, "none", account.username, "wrong")
        with pytest.raises(PermanentProviderError, match="AUTHENTICATIONFAILED"):
            reader.fetch(None)


def test_missing_folder_is_permanent(dovecot: DovecotServer, account: Account) -> None:
    reader = inbox_for(dovecot, account, folder="Nowhere")
    with pytest.raises(PermanentProviderError, match="Nowhere"):
        reader.fetch(None)


def test_one_connection_reused_and_reopened_after_a_drop(
    dovecot: DovecotServer, account: Account, inbox: ImapInbox
) -> None:
    dovecot.deliver(account, message(1))
    page = inbox.fetch(None)
    inbox.fetch(page.cursor)
    inbox.ack(keys(page))
    assert inbox.connects == 1
    dovecot.kick(account)  # the server drops every session of the user
    dovecot.deliver(account, message(2))
    after = inbox.fetch(page.cursor)
    assert [raw for _, raw in after.messages] == [message(2)]
    assert inbox.connects == 2


def test_a_server_that_is_gone_is_a_transient_error() -> None:
    with running_dovecot() as server:
        account = server.add_user()
        server.deliver(account, message(1))
        reader = inbox_for(server, account, timeout=5)
        page = reader.fetch(None)
    # Stopped: the open connection is dead and reconnecting is refused.
    with pytest.raises(TransientProviderError):
        reader.fetch(page.cursor)
    with pytest.raises(TransientProviderError):
        reader.ack(keys(page))


# --------------------------------------------------------------------------- the service


def imap_runtime(rt, tmp_path: Path, server: DovecotServer, account: Account) -> ImapInbox:  # type: ignore[no-untyped-def]
    start_organization(rt, tmp_path)
    rt.inbox = inbox_for(server, account)
    return rt.inbox


def stored(rt) -> int:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return session.scalar(select(func.count()).select_from(InboundMessage))


def cursor_row(rt) -> MailboxState:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        row = session.scalars(select(MailboxState).where(MailboxState.provider == "imap")).one()
        session.expunge(row)
        return row


def test_poll_inbox_stores_acks_and_keeps_the_cursor(
    rt, tmp_path: Path, dovecot: DovecotServer, account: Account
) -> None:
    inbox = imap_runtime(rt, tmp_path, dovecot, account)
    before = stored(rt)
    for i in range(130):  # more than one page of poll_inbox's 100
        dovecot.deliver(account, message(i))

    assert poll_inbox(rt) == 130
    assert stored(rt) == before + 130
    assert dovecot.count(account) == 0 and dovecot.count(account, "Processed") == 130
    row = cursor_row(rt)
    assert row.mailbox == f"{account.username}/INBOX"
    assert row.cursor == f"{dovecot.uidvalidity(account)}:130"
    assert row.full_synced_at is not None
    with rt.factory() as session:
        raws = set(
            session.scalars(select(InboundMessage.raw).where(InboundMessage.source == "imap"))
        )
    assert raws == {message(i) for i in range(130)}

    assert poll_inbox(rt) == 0  # nothing new: nothing stored, the cursor stays
    assert stored(rt) == before + 130
    assert cursor_row(rt).cursor == row.cursor
    dovecot.deliver(account, message(500))
    assert poll_inbox(rt) == 1 and stored(rt) == before + 131
    assert inbox.connects == 1


def test_a_crash_between_store_and_ack_stores_nothing_twice(
    rt, tmp_path: Path, dovecot: DovecotServer, account: Account, monkeypatch
) -> None:
    inbox = imap_runtime(rt, tmp_path, dovecot, account)
    before = stored(rt)
    for i in range(5):
        dovecot.deliver(account, message(i))
    real_ack, crashed = inbox.ack, []

    def ack_crashing_once(keys):  # type: ignore[no-untyped-def]
        if not crashed:
            crashed.append(list(keys))
            raise SystemExit("worker killed after storing, before acknowledging")
        real_ack(keys)

    monkeypatch.setattr(inbox, "ack", ack_crashing_once)
    with pytest.raises(SystemExit):
        poll_inbox(rt)
    assert crashed == [["1", "2", "3", "4", "5"]]
    assert stored(rt) == before + 5  # stored, but neither acknowledged nor the cursor saved
    assert dovecot.count(account) == 5
    assert cursor_row(rt).cursor is None

    assert poll_inbox(rt) == 5  # the same page read again ...
    assert stored(rt) == before + 5  # ... and not stored twice
    assert dovecot.count(account) == 0 and dovecot.count(account, "Processed") == 5
    assert cursor_row(rt).cursor == f"{dovecot.uidvalidity(account)}:5"
    assert poll_inbox(rt) == 0


def test_poll_after_a_uidvalidity_change_stores_no_duplicates(
    rt, tmp_path: Path, dovecot: DovecotServer, account: Account
) -> None:
    inbox = imap_runtime(rt, tmp_path, dovecot, account)
    for i in range(3):
        dovecot.deliver(account, message(i))
    assert poll_inbox(rt, limit=2, pages=1) == 2  # the third waits for the next poll
    # The processed ones come back: someone moved them back into the INBOX.
    back = dovecot.connect(account)
    back.select('"Processed"')
    assert back.uid("MOVE", "1:*", '"INBOX"')[0] == "OK"
    back.logout()
    dovecot.set_uidvalidity(account, dovecot.uidvalidity(account) + 1)
    before, synced = stored(rt), cursor_row(rt).full_synced_at
    rt.clock.advance(dt.timedelta(minutes=5))

    assert poll_inbox(rt) == 3  # everything in the folder is read again
    assert stored(rt) == before + 1  # only the one never stored before is new
    row = cursor_row(rt)
    assert row.full_synced_at is not None and synced is not None and row.full_synced_at > synced
    assert dovecot.count(account) == 0
    assert inbox.fetch(row.cursor).full_resync is False


def test_run_due_ingests_through_imap(
    rt, tmp_path: Path, dovecot: DovecotServer, account: Account
) -> None:
    """The whole loop: run_due polls the IMAP inbox and the ingest task routes the message."""
    from automation.services.loop import run_due

    imap_runtime(rt, tmp_path, dovecot, account)
    dovecot.deliver(account, message(1, body="Not a reply to anything."))
    run_due(rt)
    with rt.factory() as session:
        row = session.scalars(select(InboundMessage).where(InboundMessage.source == "imap")).one()
    assert row.raw == message(1, body="Not a reply to anything.")
    assert row.state != InboundState.RECEIVED  # the ingest task ran on it


# --------------------------------------------------------------------------- IDLE


def test_wait_returns_when_another_connection_appends(
    dovecot: DovecotServer, account: Account, inbox: ImapInbox
) -> None:
    assert inbox.supports_idle
    page = inbox.fetch(None)
    assert inbox.wait(0.2) is False  # nothing arrives: the timeout passes quietly
    timer = threading.Timer(0.3, dovecot.append, (account, message(9)))
    timer.start()
    try:
        assert inbox.wait(60) is True
    finally:
        timer.join()
    assert [raw for _, raw in inbox.fetch(page.cursor).messages] == [message(9)]
    assert inbox.connects == 1  # IDLE ended cleanly: the connection is still good


def test_wait_does_not_sleep_on_mail_already_waiting(
    dovecot: DovecotServer, account: Account, inbox: ImapInbox
) -> None:
    dovecot.deliver(account, message(1))
    dovecot.deliver(account, message(2))
    page = inbox.fetch(None, limit=1)  # a page left behind: more is waiting
    assert page.more
    assert inbox.wait(30) is True
    rest = inbox.fetch(page.cursor)
    dovecot.deliver(account, message(3))  # arrived after the last fetch, before the wait
    assert inbox.wait(30) is True
    assert [raw for _, raw in inbox.fetch(rest.cursor).messages] == [message(3)]


def test_wait_returns_when_the_connection_drops(
    dovecot: DovecotServer, account: Account, inbox: ImapInbox
) -> None:
    inbox.fetch(None)
    timer = threading.Timer(0.3, dovecot.kick, (account,))
    timer.start()
    try:
        assert inbox.wait(60) is True  # poll now; the poll reconnects
    finally:
        timer.join()
    assert inbox.fetch(None).messages == [] and inbox.connects == 2


def test_wait_without_idle_returns_at_once() -> None:
    with running_dovecot(capabilities="IMAP4rev1 UIDPLUS MOVE") as server:
        account = server.add_user()
        with inbox_for(server, account) as reader:
            reader.fetch(None)
            assert reader.supports_idle is False
            assert reader.wait(3600) is True  # cannot wait: poll (the caller paces itself)


# --------------------------------------------------------------------------- Sent folder


def test_sent_folder_keep_and_find(dovecot: DovecotServer, account: Account) -> None:
    sent = ImapSentFolder(dovecot.host, dovecot.port, "none", account.username, account.password)
    msgid = email.utils.make_msgid(domain="acme.test")  # "<…@acme.test>"
    assert sent.find(msgid) is False  # no Sent folder yet: not there, no error

    raw = message(1).replace(b"<m1@acme.test>", msgid.encode())
    sent.keep(raw)  # creates the folder (TRYCREATE)
    assert dovecot.count(account, "Sent") == 1
    assert sent.find(msgid) is True
    assert sent.find(msgid.strip("<>")) is True  # brackets optional
    assert sent.find(msgid[:-3] + ">") is False  # a substring of it is another id
    assert sent.find("<other@acme.test>") is False
    # Message-IDs are case-sensitive; IMAP SEARCH is not: the exact check tells them apart.
    assert sent.find(msgid.upper()) is False

    folded = b"Subject: folded\r\nMessage-ID:\r\n <Folded.Id@acme.test> (a comment)\r\n\r\nx\r\n"
    sent.keep(folded)
    assert sent.find("<Folded.Id@acme.test>") is True
    # The copies are marked \Seen, and the bytes are ours.
    conn = dovecot.connect(account)
    conn.select('"Sent"')
    _, unseen = conn.uid("SEARCH", "UNSEEN")
    _, data = conn.uid("FETCH", "1", "(BODY.PEEK[])")
    conn.logout()
    assert unseen[0] == b""
    assert data[0][1] == raw
    assert sent.connects == 1
    sent.close()


def test_sent_folder_keep_after_a_dropped_connection(
    dovecot: DovecotServer, account: Account
) -> None:
    sent = ImapSentFolder(dovecot.host, dovecot.port, "none", account.username, account.password)
    sent.keep(message(1))
    dovecot.kick(account)
    sent.keep(message(2))  # reconnects
    assert sent.find("<m2@acme.test>") and sent.connects == 2
    assert dovecot.count(account, "Sent") == 2


def test_keep_whose_answer_was_lost_is_not_filed_twice(
    dovecot: DovecotServer, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = ImapSentFolder(dovecot.host, dovecot.port, "none", account.username, account.password)
    sent.keep(message(1))  # the folder exists and the connection is open
    link = sent._link
    assert link is not None
    real_append = link.conn.append

    def append_then_drop(*args):  # type: ignore[no-untyped-def]
        real_append(*args)  # the server files it ...
        raise ConnectionResetError("connection lost before the answer")  # ... we never hear

    monkeypatch.setattr(link.conn, "append", append_then_drop)
    sent.keep(message(2))  # reconnects, finds <m2@acme.test> there, and does not append again
    assert sent.connects == 2
    assert dovecot.count(account, "Sent") == 2


def test_ack_whose_answer_was_lost_is_repeated_safely(
    dovecot: DovecotServer, account: Account, inbox: ImapInbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        dovecot.deliver(account, message(i))
    page = inbox.fetch(None)
    link = inbox._link
    assert link is not None
    real_uid = link.conn.uid

    def uid_then_drop(command: str, *args: str):  # type: ignore[no-untyped-def]
        result = real_uid(command, *args)
        if command == "MOVE":
            raise ConnectionResetError("connection lost before the answer")
        return result

    monkeypatch.setattr(link.conn, "uid", uid_then_drop)
    inbox.ack(keys(page))  # the retry's MOVE matches nothing any more, and succeeds
    assert inbox.connects == 2
    assert dovecot.count(account) == 0 and dovecot.count(account, "Processed") == 3
