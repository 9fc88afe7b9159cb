"""Bad input at volume: mutated, huge and hostile messages through the real inbound path.

Property tests (hypothesis, derandomized) pour mutated real messages (the fixtures of
``tests/fixtures/replies``: byte flips, truncation, headers duplicated, dropped or made
hostile) and random MIME trees through ``store_inbound`` and the ``ingest`` task on SQLite and
PostgreSQL. For every message: nothing escapes, the raw bytes are stored unchanged, and it
ends in a terminal state; a quarantined one with a specific reason (never the guard's
"could not be processed", which would mean a parser bug). Then one test per problem the
fuzzing found, and a 25 MB message within a stated memory budget.
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.utils
import hashlib
import re
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.exc import DataError, OperationalError

from automation.clock import SimulatedClock
from automation.domain import mime
from automation.domain.extract import extract
from automation.domain.mime import (
    MAX_HEADER_CHARS,
    MAX_HEADER_LINES,
    MAX_MIME_DEPTH,
    MAX_MIME_PARTS,
    MAX_REFERENCES,
    MAX_REPLY_CHARS,
    _html_to_text,
    decode_message,
)
from automation.domain.tokens import ForgedToken, find_token
from automation.models import (
    NOT_RECORDED,
    AuditEntry,
    CheckinSeries,
    ConversationRecord,
    InboundMessage,
    InboundState,
    Occurrence,
    OutboundMessage,
    Person,
    Task,
)
from automation.runtime import build_runtime
from automation.services import inbound, tasks
from automation.services.imip import organizer_for
from automation.services.inbound import store_inbound
from automation.settings import PROJECT_ROOT, Settings
from tests.conftest import START, postgres_schema_url, start_organization
from tests.test_inbound import PEOPLE, prompted

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "replies").glob("*.eml"))
TERMINAL = {InboundState.RECORDED, *NOT_RECORDED}
# Placeholders the strategies write and each world fills in: the prompt's signed reply
# address and its Message-ID (so that many mutated messages get far: to a record).
TO, IRT = b"@@TO@@", b"@@IRT@@"
FUZZ = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    """An organisation whose first check-in has had its follow-up prompt."""

    rt: object
    reply_to: str  # the prompt's signed reply address
    prompt_id: str  # the prompt's Message-ID

    def fill(self, raw: bytes) -> bytes:
        return raw.replace(TO, self.reply_to.encode()).replace(IRT, self.prompt_id.encode())

    def head(self, to: str | None = None) -> bytes:
        """The headers of a reply from the manager to the prompt, as a client writes them."""
        return (
            f"From: Bea Boss <boss@acme.test>\r\nTo: {to or self.reply_to}\r\n"
            f"Subject: Re: check-in\r\nDate: {email.utils.format_datetime(self.rt.now())}\r\n"
            f"Message-ID: {email.utils.make_msgid(domain='client.test')}\r\n"
            f"In-Reply-To: {self.prompt_id}\r\nMIME-Version: 1.0\r\n"
        ).encode()

    def reply(
        self, body: bytes | str, *, headers: bytes | str = b"", to: str | None = None
    ) -> bytes:
        """A whole reply: :meth:`head`, ``headers``, a text/plain Content-Type (unless
        ``headers`` has one) and ``body``."""
        body = body.encode() if isinstance(body, str) else body
        headers = headers.encode() if isinstance(headers, str) else headers
        if b"content-type:" not in headers.lower():
            headers += b"Content-Type: text/plain\r\n"
        return self.head(to) + headers + b"\r\n" + body


# One world per database for the whole module (building one takes seconds): the fixtures of
# tests/conftest.py at module scope. Every test adds its own messages, with their own
# Message-IDs, and looks only at those.
@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def database_url(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'test.db'}"
    else:
        yield from postgres_schema_url()


@pytest.fixture(scope="module")
def world(database_url: str, tmp_path_factory) -> Iterator[World]:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("world")
    settings = Settings(
        data_dir=folder / "data",
        database_url=database_url,
        organization="acme",
        organization_name="Acme",
        secret_key="test-secret",
        config_dir=PROJECT_ROOT / "config",
        templates_dir=PROJECT_ROOT / "templates",
    )
    clock = SimulatedClock(START)
    rt = build_runtime(settings, clock)
    start_organization(rt, folder, PEOPLE)
    _occ, prompt = prompted(rt, clock)
    original = email.message_from_bytes(prompt.raw)
    rt.enqueue = lambda task_id: None  # each ingest is run below, by the task runner
    yield World(rt, str(original["Reply-To"]), prompt.message_id)
    rt.engine.dispose()


@dataclass(frozen=True)
class Outcome:
    id: int
    task_id: int
    state: str
    reason: str
    from_address: str | None
    task_state: str
    task_error: str | None
    seconds: float


def ingest(world: World, raw: bytes) -> Outcome:
    """Store ``raw`` and run its ingest task as a worker does; what became of it."""
    rt = world.rt
    stored = store_inbound(rt, raw, "fuzz")
    started = time.perf_counter()
    if not stored.duplicate:
        tasks.run_task(rt, stored.task_id)  # returns "retry"/"failed" rather than raising
    seconds = time.perf_counter() - started
    with rt.factory() as session:
        message = session.get(InboundMessage, stored.inbound_id)
        task = session.get(Task, stored.task_id)
        assert message is not None and task is not None
        # Byte for byte, with its hash: the evidence, whatever became of it.
        assert message.raw == raw and message.sha256 == hashlib.sha256(raw).hexdigest()
        assert message.size == len(raw)
        return Outcome(
            message.id,
            task.id,
            message.state,
            message.quarantine_reason or "",
            message.from_address,
            task.state,
            task.last_error,
            seconds,
        )


def assert_settled(outcome: Outcome) -> None:
    """A terminal state, the task done at its first attempt, a specific reason if kept."""
    assert outcome.task_state == "done", outcome
    assert outcome.task_error is None, outcome
    assert outcome.state in TERMINAL, outcome
    if outcome.state != InboundState.RECORDED:
        assert outcome.reason.strip(), outcome
        assert not outcome.reason.startswith("could not be processed"), outcome


# --------------------------------------------------------------------------- strategies


def _head_body(raw: bytes) -> tuple[list[bytes], bytes, bytes]:
    """Header lines (each with its line end), the separator and the body."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        at = raw.find(sep)
        if at >= 0:
            return (
                raw[: at + len(sep) // 2].splitlines(keepends=True),
                sep[len(sep) // 2 :],
                raw[at + len(sep) :],
            )
    return raw.splitlines(keepends=True), b"", b""


def _join(lines: list[bytes], sep: bytes, body: bytes) -> bytes:
    return b"".join(lines) + sep + body


def _fields(lines: list[bytes]) -> list[list[bytes]]:
    """Header lines grouped into fields (a field with its continuation lines)."""
    fields: list[list[bytes]] = []
    for line in lines:
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1].append(line)
        else:
            fields.append([line])
    return fields


def _reroute(raw: bytes) -> bytes:
    """The fixture as the manager's reply to the prompt: From, To and In-Reply-To ours."""
    lines, sep, body = _head_body(raw)
    keep = [
        b"".join(f)
        for f in _fields(lines)
        if f[0].split(b":", 1)[0].strip().lower() not in (b"from", b"to", b"in-reply-to")
    ]
    ours = [b"From: Bea Boss <boss@acme.test>\r\n", b"To: " + TO + b"\r\n"]
    return _join(ours + [b"In-Reply-To: " + IRT + b"\r\n"] + keep, sep or b"\r\n", body)


# Header values that broke something once, or could: very long parameter lists, nested
# comments, encoded words (bogus charsets, an address inside), NUL, raw 8-bit bytes, reply
# tokens forged, oversized or hidden in a comment, thousands of Message-IDs.
_UNITS = [
    b"a",
    b"=",
    b"@",
    b";",
    b"; a=b",
    b'"',
    b';"',
    b"(",
    b")",
    b"\\",
    b"<",
    b"=?utf-8?q?a?= ",
    b"=?x-bogus?b?QUJD?= ",
    b"a@b.test, ",
    b"<id@x.test> ",
    b"\t",
    b"\r\n ",
    b"\x00",
    b"\xff\xfe",
    b"\xed\xa0\x80",
]
_FIXED = [
    b"",
    b"text/plain; charset=x-bogus",
    b"text/plain; charset=base64",
    b"text/plain; charset*=bogus''utf-8",
    b'text/plain; charset="utf-8\x00"',
    b"text/html; charset=utf-7",
    b"multipart/mixed",
    b"multipart/mixed; boundary=",
    b'multipart/alternative; boundary="=?utf-8?q?b?="',
    b"message/rfc822",
    b"application/ics; method=REPLY",
    b"attachment; filename*0*=utf-8''a; filename*=b; filename*1=c",
    b"inline; filename*" + b"9" * 5000 + b"=x",
    b"=?utf-8?b?PGJvc3NAYWNtZS50ZXN0Pg==?= <evil@x.test>",
    b"boss@acme.test (checkin+1-o1-aaaaaaaaaaaaaaaaaaaa@reply.example.com)",
    b'"checkin+1-o1-aaaaaaaaaaaaaaaaaaaa@reply.example.com" <x@y.test>',
    b"checkin+1-o" + b"9" * 5000 + b"-aaaaaaaaaaaaaaaaaaaa@reply.example.com",
    b"<checkin+99999999999999999999-o1-aaaaaaaaaaaaaaaaaaaa@reply.example.com>",
    b"auto-replied",
    b"base64",
    b"quoted-printable",
    b"x-uuencode",
    b"Thu, 31 Feb 2026 25:61:61 +9999",
    b"=?utf-8?q?=00=FF?=",
    b"(" * 2000 + b"boss@acme.test",
    TO,
    IRT,
]
HEADER_NAMES = [
    b"From",
    b"To",
    b"Cc",
    b"Subject",
    b"Content-Type",
    b"Content-Transfer-Encoding",
    b"Content-Disposition",
    b"References",
    b"In-Reply-To",
    b"Message-ID",
    b"Date",
    b"Auto-Submitted",
    b"Reply-To",
    b"X-Original-To",
]
hostile_values = st.one_of(
    st.sampled_from(_FIXED),
    st.builds(lambda unit, n: unit * n, st.sampled_from(_UNITS), st.integers(1, 6000)),
    st.binary(max_size=120),
    st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with one to four mutations."""
    raw = draw(base)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "dup", "drop", "hostile", "splice"]))
        lines, sep, body = _head_body(raw)
        # Positions past the first line: hypothesis favours small numbers, and a message
        # whose "From" is mangled or cut to nothing stops early on every path.
        inside = st.integers(min(len(raw) - 1, 40), len(raw) - 1) if raw else st.just(0)
        if kind == "flip" and raw:
            data = bytearray(raw)
            for _ in range(draw(st.integers(1, 12))):
                at = draw(inside)
                data[at] = draw(st.sampled_from([0, 0x0A, 0x0D, 0x3A, 0x3B, 0x22, 0x80, 0xFF]))
            raw = bytes(data)
        elif kind == "cut" and raw:
            raw = raw[: draw(inside)]
        elif kind == "dup" and lines:
            at = draw(st.integers(0, len(lines) - 1))
            lines[at:at] = [lines[at]] * draw(st.integers(1, 30))
            raw = _join(lines, sep, body)
        elif kind == "drop" and lines:
            del lines[draw(st.integers(0, len(lines) - 1))]
            raw = _join(lines, sep, body)
        elif kind == "hostile":
            name = draw(st.sampled_from(HEADER_NAMES))
            value = draw(hostile_values)
            fields = [
                f for f in _fields(lines) if f[0].split(b":", 1)[0].strip().lower() != name.lower()
            ]
            if draw(st.booleans()):  # replace, else add a second one
                lines = [line for f in fields for line in f]
            lines.insert(draw(st.integers(0, len(lines))), name + b": " + value + b"\r\n")
            raw = _join(lines, sep or b"\r\n", body)
        elif kind == "splice":
            at = draw(st.integers(0, len(raw)))
            raw = raw[:at] + draw(st.binary(min_size=1, max_size=64)) + raw[at:]
    return raw


_fixture_bytes = st.sampled_from([p.read_bytes() for p in FIXTURES])
fixture_messages = st.one_of(_fixture_bytes, _fixture_bytes.map(_reroute))

_CHARSETS = ["utf-8", "iso-8859-1", "us-ascii", "x-bogus", "utf-7", "utf-16", "base64", ""]
_ENCODINGS = ["7bit", "8bit", "base64", "quoted-printable", "x-uuencode", "bogus"]
_LEAF_TYPES = [
    "text/plain",
    "text/plain",
    "text/html",
    "text/calendar",
    "application/octet-stream",
    "message/delivery-status",
    "text/rfc822-headers",
]
_BODIES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [
            b"1. Fine.\r\nRating: 4\r\nAction: Ana to send the plan by Friday\r\n",
            b"<div><blockquote><ul><li>1. Fine</li></ul></blockquote></div>",
            b"BEGIN:VCALENDAR\r\nMETHOD:REPLY\r\nBEGIN:VEVENT\r\nUID:checkin-1\r\n"
            b"DTSTAMP:notadate\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
            b"Final-Recipient: rfc822; ana@acme.test\r\nAction: failed\r\nStatus: 5.1.1\r\n",
            b"=\r\n=3D=ZZ=\r\n",
        ]
    ),
)


@st.composite
def _leaf(draw: st.DrawFn) -> bytes:
    ctype = draw(st.sampled_from(_LEAF_TYPES))
    charset = draw(st.sampled_from(_CHARSETS))
    cte = draw(st.sampled_from(_ENCODINGS))
    body = draw(_BODIES)
    if cte == "base64" and draw(st.booleans()):
        body = base64.encodebytes(body)
    head = f"Content-Type: {ctype}" + (f"; charset={charset}" if charset else "") + "\r\n"
    head += f"Content-Transfer-Encoding: {cte}\r\n"
    if draw(st.booleans()):
        head += "Content-Disposition: " + draw(st.sampled_from(["inline", "attachment"])) + "\r\n"
    return head.encode() + b"\r\n" + body


def _multipart(subtype: str, parts: list[bytes], boundary: str, closed: bool) -> bytes:
    out = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\npreamble\r\n'
    data = out.encode()
    for part in parts:
        data += b"--" + boundary.encode() + b"\r\n" + part + b"\r\n"
    return data + (b"--" + boundary.encode() + b"--\r\n" if closed else b"")


def _embedded(part: bytes) -> bytes:
    return b"Content-Type: message/rfc822\r\n\r\nFrom: x@y.test\r\nSubject: fwd\r\n" + part


mime_trees = st.recursive(
    _leaf(),
    lambda children: st.one_of(
        st.builds(
            _multipart,
            st.sampled_from(["mixed", "alternative", "related", "report", "digest"]),
            st.lists(children, max_size=4),
            st.sampled_from(["b1", "b2", "==b", "a;b", " x"]),
            st.booleans(),
        ),
        children.map(_embedded),
    ),
    max_leaves=10,
)


@st.composite
def random_mime(draw: st.DrawFn) -> bytes:
    """A random MIME tree under the headers of a reply (to the prompt, or not)."""
    sender = draw(st.sampled_from([b"Bea Boss <boss@acme.test>", b"x@y.test", b"MAILER-DAEMON@m"]))
    to = draw(st.sampled_from([TO, b"someone@acme.test", b"checkin+1-o1-abc@reply.example.com"]))
    head = b"From: " + sender + b"\r\nTo: " + to + b"\r\nSubject: Re: x\r\n"
    if draw(st.booleans()):
        head += b"In-Reply-To: " + IRT + b"\r\n"
    head += b"Message-ID: <" + str(draw(st.integers(0, 10**9))).encode() + b"@fuzz.test>\r\n"
    return head + b"MIME-Version: 1.0\r\n" + draw(mime_trees)


any_message = st.one_of(
    fixture_messages, mutated(fixture_messages), random_mime(), mutated(random_mime())
)


# --------------------------------------------------------------------------- properties


@settings(max_examples=150, **FUZZ)
@given(raw=any_message)
def test_decode_never_raises_and_every_field_is_storable(raw):
    """The parser alone, at more examples than the database tests can afford."""
    started = time.perf_counter()
    parsed = decode_message(raw.replace(TO, b"checkin+1-o1-x@r.test").replace(IRT, b"<p@x>"))
    assert time.perf_counter() - started < 10
    texts = [parsed.from_name, parsed.subject, parsed.text, parsed.over_limit, *parsed.to]
    texts += [*parsed.in_reply_to, *parsed.defects, parsed.from_address or ""]
    texts += [parsed.message_id or ""]
    for text in texts:
        assert text == mime.storable(text)
    assert len(parsed.in_reply_to) <= MAX_REFERENCES
    assert len(parsed.text) <= MAX_REPLY_CHARS
    assert len((parsed.message_id or "").encode()) <= 998


def test_any_message_is_stored_raw_and_settled_with_a_reason(world):
    """Mutated and random messages through store_inbound and the ingest task."""
    states: Counter[str] = Counter()

    @settings(max_examples=45, **FUZZ)
    @given(raw=any_message, fresh=st.booleans())
    def check(raw: bytes, fresh: bool) -> None:
        if fresh:  # a Message-ID of its own: past the duplicate check (mutants share theirs)
            raw = b"Message-ID: <%s@fuzz.test>\r\n" % hashlib.sha256(raw).hexdigest().encode() + raw
        outcome = ingest(world, world.fill(raw))
        assert_settled(outcome)
        states[outcome.state] += 1

    check()
    # The stream went everywhere: to records as well as to the quarantine.
    assert states[InboundState.RECORDED] and states[InboundState.QUARANTINED], states


# --------------------------------------------------------------------------- 1. NUL, surrogates


def test_nul_and_lone_surrogates_never_reach_the_database(world):
    """PostgreSQL refuses NUL in text: the task was retried into the failed jobs and the
    message stuck in `received`. Now NUL is dropped and lone surrogates replaced."""
    # UTF-7 decodes "+2AA-" to a lone surrogate, in an encoded word and in a body.
    raw = world.reply(
        b"1. All\x00 fine\r\nRating: 4\r\n",
        headers=b"Subject: Re: a\x00b =?utf-7?q?+2AA-?=\r\nX-Note: =?utf-8?q?nul=00?=\r\n",
    )
    raw = raw.replace(b"Bea Boss", b"Bea\x00 Boss").replace(b"Subject: Re: check-in\r\n", b"")
    parsed = decode_message(raw)
    assert (parsed.from_name, parsed.subject) == ("Bea Boss", "Re: ab \ufffd")
    outcome = ingest(world, raw)
    assert_settled(outcome)
    assert outcome.state == InboundState.RECORDED
    utf7 = world.reply(
        b"1. Fine +2AA- there\r\n", headers="Content-Type: text/plain; charset=utf-7\r\n"
    )
    second = ingest(world, utf7)
    assert second.state == InboundState.RECORDED
    with world.rt.factory() as session:
        assert session.get(InboundMessage, outcome.id).subject == "Re: ab \ufffd"
        bodies = session.scalars(
            select(ConversationRecord.body)
            .where(ConversationRecord.source_message_id.in_([outcome.id, second.id]))
            .order_by(ConversationRecord.id)
        )
        assert [b.split("\n")[0] for b in bodies] == ["1. All fine", "1. Fine \ufffd there"]


# --------------------------------------------------------------------------- 2. spoofed From


def test_an_encoded_word_in_from_is_a_name_never_the_address(world):
    """``=?utf-8?b?<boss@acme.test>?= <evil@x.test>`` was read as boss (the header was
    decoded before its addresses were parsed) and recorded as the manager's answer."""
    spoof = "=?utf-8?b?" + base64.b64encode(b"<boss@acme.test>").decode() + "?="
    raw = world.reply("1. Fine\r\nRating: 5\r\n").replace(
        b"From: Bea Boss <boss@acme.test>", f"From: {spoof} <evil@x.test>".encode()
    )
    parsed = decode_message(raw)
    assert (parsed.from_address, parsed.from_name) == ("evil@x.test", "<boss@acme.test>")
    outcome = ingest(world, raw)
    assert outcome.state == InboundState.QUARANTINED and outcome.from_address == "evil@x.test"
    assert outcome.reason == "sender evil@x.test is not a participant of this check-in"
    # The same for the recipients: an encoded word never becomes a (token) address.
    token = world.reply_to.encode()
    hidden = f"To: =?utf-8?b?{base64.b64encode(token).decode()}?= <someone@acme.test>"
    assert decode_message(raw.replace(b"To: " + token, hidden.encode())).to == (
        "someone@acme.test",
    )


# --------------------------------------------------------------------------- 3. broken To


@pytest.mark.parametrize(
    "to",
    [
        "boss@acme.test ({forged})",  # in a comment
        '"{forged}" <someone@acme.test>',  # as a display name
        "(((((((( {forged}",  # in an unclosed comment: getaddresses drops it
        "(" * 3000 + "{forged}",  # nested so deep that getaddresses raises RecursionError
        "{valid}, <{forged}",  # the signed address counts; the broken one is still seen
    ],
)
def test_a_broken_to_header_cannot_hide_a_forged_token(world, to):
    """A forged reply token the address parser did not see (comment, broken syntax) let the
    reply fall back to threading and be recorded; and nested comments lost the whole
    message's headers. Every token-shaped text of a recipient header is checked now."""
    forged = world.reply_to.split("@")[0][:-4] + "aaaa@" + world.reply_to.split("@")[1]
    raw = world.reply("1. Fine\r\n", to=to.format(forged=forged, valid=world.reply_to))
    parsed = decode_message(raw)
    assert parsed.from_address == "boss@acme.test"  # the rest of the headers survive
    assert forged.lower() in parsed.to
    outcome = ingest(world, raw)
    if to.startswith("{valid}"):
        assert outcome.state == InboundState.RECORDED  # the signed one counts
    else:
        assert outcome.state == InboundState.QUARANTINED
        assert outcome.reason.startswith("forged reply token")


# --------------------------------------------------------------------------- 4. header parsing


LONG_HEADERS = {
    "semicolons": "text/plain" + ";" * 36_000,
    "parameters": "text/plain" + "; a=b" * 7_000,
    "quoted semicolons": 'text/plain; a="' + ";" * 36_000 + '"',
    "multipart semicolons": "multipart/mixed; boundary=b" + ";" * 36_000,
    "multipart quoted": 'multipart/mixed; a="' + ";" * 36_000 + '"; boundary=b',
    "comments": "text/plain" + "(" * 36_000,
    "encoded words": "text/plain; name=" + "=?utf-8?q?a?=" * 2_700,
}


@pytest.mark.parametrize("name", LONG_HEADERS)
def test_a_36_kb_content_type_parses_in_linear_time(name):
    """policy.default's header parser took 8 s (and up to 100 s) on one 36 KB Content-Type
    (CPython gh-136063); compat32 and our one-pass parameter split take milliseconds."""
    value = LONG_HEADERS[name]
    raw = (
        b"From: boss@acme.test\r\nTo: x@y.test\r\nSubject: s\r\nContent-Type: "
        + value.encode()
        + b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n"
    )
    started = time.perf_counter()
    parsed = decode_message(raw)
    assert time.perf_counter() - started < 2  # about 0.05 s here; the old path took 5-150 s
    assert parsed.from_address == "boss@acme.test" and not parsed.over_limit
    if value.startswith("multipart"):
        assert parsed.text == "hello"


def test_a_long_run_of_any_character_in_a_header_parses_in_linear_time():
    """Our own header regular expressions must not be quadratic either: 32 KB of "a" in To
    took over 5 s while the reply-token pattern could start anywhere in a run of letters."""
    for name in ("From", "To", "Subject", "Content-Type", "References"):
        for unit in ("a", "=", "@", "(", "<", '"', ";", "\\", "=?utf-8?q?a?= "):
            value = (unit * (32_000 // len(unit))).encode()
            raw = b"From: boss@acme.test\r\n" + name.encode() + b": " + value + b"\r\n\r\nhi"
            started = time.perf_counter()
            decode_message(raw)
            assert time.perf_counter() - started < 2, (name, unit)  # 0.2 s at most here


def test_a_header_over_the_limit_is_quarantined_with_its_name(world):
    raw = world.reply("1. Fine\r\n", headers=f"X-Junk: {'a; ' * (MAX_HEADER_CHARS // 3 + 1)}\r\n")
    outcome = ingest(world, raw)
    assert outcome.state == InboundState.QUARANTINED
    assert outcome.reason.startswith("over the parsing limits (the X-Junk header is 65,5")
    assert outcome.from_address == "boss@acme.test"  # read before the limit was reached


# --------------------------------------------------------------------------- 5. depth, parts


def _nested(levels: int) -> bytes:
    opening = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (n, n)
        for n in range(levels)
    )
    closing = b"".join(b"\r\n--b%d--" % n for n in reversed(range(levels)))
    return opening + b"Content-Type: text/plain\r\n\r\n1. Fine" + closing + b"\r\n"


@pytest.mark.parametrize(
    "body, reason",
    [
        (_nested(1_000), f"MIME parts nested more than {MAX_MIME_DEPTH} deep"),
        (
            b"Content-Type: message/rfc822\r\n\r\n" * 1_000 + b"\r\nhi\r\n",
            f"MIME parts nested more than {MAX_MIME_DEPTH} deep",
        ),
        (
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            + b"--b\r\n\r\nx\r\n" * (MAX_MIME_PARTS + 5),
            f"more than {MAX_MIME_PARTS:,} MIME parts",
        ),
        (
            b"X-Flood: 1\r\n" * (MAX_HEADER_LINES + 5) + b"\r\nhi\r\n",
            f"more than {MAX_HEADER_LINES:,} header lines",
        ),
    ],
    ids=["multipart-1000-deep", "rfc822-1000-deep", "parts", "header-lines"],
)
def test_a_message_over_the_mime_limits_is_kept_raw_and_quarantined(world, body, reason):
    """1,000 nested parts raised RecursionError and lost the message (its From too); 25 MB of
    tiny parts took about 30 times its size in memory. Parsing stops at the limit."""
    raw = world.head() + body
    outcome = ingest(world, raw)
    assert_settled(outcome)
    assert outcome.state == InboundState.QUARANTINED
    assert outcome.reason == f"over the parsing limits ({reason}): kept raw, unread"
    assert outcome.from_address == "boss@acme.test"


def test_a_message_over_the_size_limit_is_stored_but_not_parsed(world, monkeypatch):
    """Over MAX_MESSAGE_BYTES (50 MiB; 2,000 bytes here) nothing is parsed but the first
    64 KiB of headers, for the sender an operator sees."""
    monkeypatch.setattr(mime, "MAX_MESSAGE_BYTES", 2_000)
    raw = world.reply("1. Fine\r\n" * 300)
    outcome = ingest(world, raw)
    assert outcome.state == InboundState.QUARANTINED and outcome.from_address == "boss@acme.test"
    assert outcome.reason == (
        f"over the parsing limits (the message is {len(raw):,} bytes, over the 2,000 limit): "
        "kept raw, unread"
    )


def test_25_mb_of_tiny_parts_stops_at_the_part_limit_in_bounded_memory():
    """2.5 million parts of one line: parsing stops at MAX_MIME_PARTS, a few KB in."""
    raw = (
        b"From: boss@acme.test\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        + b"--b\r\n\r\nx\r\n" * 2_500_000
    )
    peak, parsed = _peak(lambda: decode_message(raw))
    assert parsed.over_limit == f"more than {MAX_MIME_PARTS:,} MIME parts"
    assert peak < 0.5 * len(raw)  # it stops early: the stdlib's tree of 2.5M parts is ~30x


# --------------------------------------------------------------------------- 6. charsets


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain; charset=x-bogus",
        "text/plain; charset=base64",  # a codec, but no text encoding
        "text/plain; charset=rot13",
        'text/plain; charset="utf-8\x00"',
        "text/plain; charset=" + "a" * 5_000,
        "text/plain; charset*=bogus''utf-8",
        "text/plain; charset*0*=utf-8''x; charset*=y",  # the stdlib's sort of None and int
        "text/plain; charset*" + "9" * 5_000 + "=x",  # int() over 4,300 digits
    ],
)
def test_a_bogus_charset_label_falls_back_and_never_raises(world, content_type):
    """A NUL in the label and a 5,000-digit RFC 2231 continuation lost the whole message
    (From included: "no usable From address"); compat32 raised TypeError on an RFC 2231
    charset (a tuple). Each falls back to UTF-8, then windows-1252."""
    raw = world.reply(
        "1. Très bien\r\nRating: 4\r\n".encode("latin-1"),
        headers=f"Content-Type: {content_type}\r\nSubject: =?x-bogus?q?Re=3A_hi?=\r\n",
    )
    parsed = decode_message(raw)
    assert parsed.text.startswith("1. Tr") and "Rating: 4" in parsed.text
    outcome = ingest(world, raw)
    assert_settled(outcome)
    assert outcome.state == InboundState.RECORDED


# --------------------------------------------------------------------------- 7. references, ids


def test_a_huge_references_header_is_cut_and_still_threads(world):
    """Every Message-ID of References went into one IN (...) lookup (40,000 of them passed,
    slowly, on both databases); now the thread's root and its latest ones, MAX_REFERENCES in
    all, are looked up. The prompt is the latest here, without a token or In-Reply-To:
    threading still finds the check-in."""
    refs = " ".join(f"<old-{n}@client.test>" for n in range(2_500)) + " " + world.prompt_id
    raw = world.reply("1. Fine\r\n", to="boss@acme.test", headers=f"References: {refs}\r\n")
    raw = raw.replace(b"In-Reply-To: " + world.prompt_id.encode() + b"\r\n", b"")
    parsed = decode_message(raw)
    assert len(parsed.in_reply_to) == MAX_REFERENCES and parsed.in_reply_to[-1] == world.prompt_id
    assert ingest(world, raw).state == InboundState.RECORDED


@pytest.mark.parametrize("digits", [19, 5_000])
def test_a_token_with_an_overlong_id_is_forged_not_a_crash(world, digits):
    """A 5,000-digit id raised ValueError (int() refuses over 4,300 digits): retried forever."""
    local, domain = world.reply_to.split("@")
    mailbox, rest = local.split("+")
    org, kind_id, sig = rest.split("-")
    long_to = f"{mailbox}+{org}-{kind_id[0]}{'9' * digits}-{sig}@{domain}"
    with pytest.raises(ForgedToken):
        find_token(b"k", [long_to])
    outcome = ingest(world, world.reply("1. Fine\r\n", to=long_to))
    assert outcome.state == InboundState.QUARANTINED
    assert outcome.reason.startswith("forged reply token")


def test_a_long_multibyte_message_id_fits_the_postgresql_index(world):
    """998 characters of CJK (the column's length) are 2,994 bytes: over the 2,704 bytes of
    a PostgreSQL index entry (ProgramLimitExceeded, an OperationalError: retried forever).
    A Message-ID is kept to 998 bytes."""
    cjk = "".join(chr(0x4E00 + (n * 7919) % 20_000) for n in range(1_200))  # no compression
    raw = world.reply("1. Fine\r\n").replace(b"Message-ID: <", f"Message-ID: <{cjk}".encode(), 1)
    outcome = ingest(world, raw)
    assert_settled(outcome)
    assert outcome.state == InboundState.RECORDED
    with world.rt.factory() as session:
        message_id = session.get(InboundMessage, outcome.id).message_id
    assert message_id.startswith("<" + cjk[:300]) and len(message_id.encode()) <= 998


# --------------------------------------------------------------------------- 8. HTML bombs


# With the html.parser-based converter, blockquotes, lists, unclosed tags and unclosed
# comments took over a minute each and spans 15 s (a quadratic step per element: a list's
# indent, a line's quote prefix, any() over the open spans, html.parser rescanning an
# unclosed construct); the rest stand guard over the linear tokenizer.
HTML_BOMBS = {
    "divs": "<div>" * 40_000 + "x" + "</div>" * 40_000,
    "blockquotes": "<blockquote><p>x</p>" * 40_000,
    "lists": "<ul><li>x" * 40_000,
    "list-marker spans": "<span style='mso-list:Ignore'>" * 40_000 + "x" + "</span>" * 40_000,
    "spans": "<span>x" * 40_000 + "</span>" * 40_000,
    "unclosed tags": "<a" * 100_000,
    "unclosed comments": "<!--x" * 100_000,
    "tiny elements": "<b>x</b>" * 40_000,
    "tiny elements in pre": "<pre>" + "<b>x</b>" * 40_000,
}


@pytest.mark.parametrize("name", HTML_BOMBS)
def test_html_nesting_bombs_convert_in_bounded_time_and_size(name):
    started = time.perf_counter()
    text = _html_to_text(HTML_BOMBS[name])
    assert time.perf_counter() - started < 3  # each under 0.5 s here
    assert len(text) <= MAX_REPLY_CHARS
    # Quote prefixes and list indents stop growing at 32 levels.
    assert all(len(line) - len(line.lstrip("> -")) <= 3 * 32 for line in text.split("\n"))


# --------------------------------------------------------------------------- 9. iMIP


@pytest.mark.parametrize(
    "line",
    [
        "DTSTAMP:notadate",
        "DTSTAMP:20260230T250000Z",
        "RECURRENCE-ID:yesterday",
        "SEQUENCE:" + "9" * 5_000,
    ],
)
def test_a_damaged_calendar_reply_is_quarantined_with_the_reason(world, line):
    """icalendar reads values lazily: a bad DTSTAMP raised BrokenCalendarProperty from
    find_reply's caller, and the task was retried forever."""
    from tests.test_imip import reply_email

    rt = world.rt
    with rt.factory() as session:
        series = session.scalars(select(CheckinSeries)).first()
        organizer = organizer_for(rt, session.get(Person, series.manager_id), series).email
        employee = session.get(Person, series.employee_id).email
    raw = reply_email(employee, employee, "ACCEPTED", series.uid, dtstamp=rt.now())
    raw = raw.replace(b"To: calendar@reply.example.com", f"To: {organizer}".encode())
    raw = raw.replace(b"<reply-1-", f"<reply-{hashlib.sha256(line.encode()).hexdigest()}-".encode())
    name = line.split(":")[0].encode()
    if name + b":" in raw:
        raw = re.sub(rb"(?m)^" + name + rb":[^\r\n]*", line.encode(), raw)
    else:
        raw = raw.replace(b"SUMMARY:", line.encode() + b"\r\nSUMMARY:")
    assert line.encode() in raw
    outcome = ingest(world, raw)
    assert_settled(outcome)
    assert outcome.state == InboundState.QUARANTINED
    assert outcome.reason.startswith("invalid calendar reply: ")


# --------------------------------------------------------------------------- 10. the guard


def _raising(exc: BaseException) -> Callable[..., object]:
    def fail(*args: object, **kwargs: object) -> object:
        raise exc

    return fail


def test_any_processing_error_quarantines_that_message_without_its_text(world, monkeypatch):
    monkeypatch.setattr(inbound, "extract", _raising(KeyError("the manager's secret words")))
    outcome = ingest(world, world.reply("1. The manager's secret words\r\n"))
    assert_state = (outcome.state, outcome.reason, outcome.task_state)
    assert assert_state == ("quarantined", "could not be processed: KeyError", "done")
    with world.rt.factory() as session:
        entry = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.action == "inbound.quarantined")
            .order_by(AuditEntry.seq.desc())
        ).first()
    assert entry.data["reason"] == "could not be processed: KeyError"


def _counts(world: World) -> tuple[int, ...]:
    with world.rt.factory() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(table))
            for table in (ConversationRecord, OutboundMessage, Task)
        ) + tuple(session.scalars(select(Occurrence.state).order_by(Occurrence.id)))


def test_what_was_written_before_the_error_is_rolled_back_with_it(world, monkeypatch):
    """When _confirm failed, the record, the #skip and the tasks they made were written:
    all of it goes with the savepoint; only the quarantine (and the message's task) stays."""
    before = _counts(world)
    monkeypatch.setattr(inbound, "_confirm", _raising(RecursionError()))
    outcome = ingest(world, world.reply("1. Fine\r\n#skip\r\n"))
    assert (outcome.state, outcome.reason) == (
        "quarantined",
        "could not be processed: RecursionError",
    )
    after = _counts(world)
    assert after[:2] == before[:2] and after[2] == before[2] + 1 and after[3:] == before[3:]


class _ProgramLimitExceeded(Exception):
    sqlstate = "54000"  # PostgreSQL: an index row too large (psycopg: an OperationalError)


@pytest.mark.parametrize(
    "error, name",
    [
        (DataError("INSERT …", {}, Exception("text fields cannot contain NUL")), "DataError"),
        (OperationalError("UPDATE …", {}, _ProgramLimitExceeded()), "OperationalError"),
    ],
)
def test_data_the_database_refuses_is_quarantined(world, monkeypatch, error, name):
    monkeypatch.setattr(inbound, "extract", _raising(error))
    outcome = ingest(world, world.reply("1. Fine\r\n"))
    assert (outcome.state, outcome.reason) == ("quarantined", f"could not be processed: {name}")


def test_the_database_failing_is_retried_not_quarantined(world, monkeypatch):
    error = OperationalError("SELECT …", {}, Exception("server closed the connection"))
    monkeypatch.setattr(inbound, "extract", _raising(error))
    outcome = ingest(world, world.reply("1. Fine\r\n"))
    assert (outcome.state, outcome.task_state) == ("received", "pending")
    assert outcome.task_error.startswith("OperationalError")
    monkeypatch.undo()  # the database is back: the retry records it
    with world.rt.factory() as session:
        task = session.get(Task, outcome.task_id)
        task.due_at = world.rt.now() - dt.timedelta(seconds=1)
        session.commit()
    tasks.run_task(world.rt, outcome.task_id)
    with world.rt.factory() as session:
        assert session.get(InboundMessage, outcome.id).state == "recorded"


# --------------------------------------------------------------------------- 11. huge messages


def _peak(fn: Callable[[], object]) -> tuple[int, object]:
    tracemalloc.start()
    try:
        result = fn()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


MEMORY_BUDGET = 2.0  # the peak of one ingest, in multiples of the message's size


def test_a_25_mb_reply_is_ingested_in_bounded_memory(world):
    """A reply with a 25 MB attachment: the peak of the whole ingest, loading the raw row and
    writing the record included, stays under MEMORY_BUDGET times the message (measured: 1.1
    times; the standard library's parse alone takes about 8 times: bench/ingest_memory.py).
    An attachment is never held as lines (the parser's list of lines is 2.5 times the text).
    Lines of 998 characters, the longest allowed, keep tracemalloc's own cost down."""
    blob = base64.b64encode(b"\x89PNG\r\n" * 3_125_000)  # 25 MB encoded
    raw = world.reply(
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n1. Fine\r\nRating: 4\r\n"
        b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=plan.pdf\r\n\r\n"
        + b"\r\n".join(blob[i : i + 996] for i in range(0, len(blob), 996))
        + b"\r\n--b--\r\n",
        headers="Content-Type: multipart/mixed; boundary=b\r\n",
    )
    assert len(raw) >= 25_000_000
    stored = store_inbound(world.rt, raw, "fuzz")
    peak, _ = _peak(lambda: tasks.run_task(world.rt, stored.task_id))
    with world.rt.factory() as session:
        message = session.get(InboundMessage, stored.inbound_id)
        assert message.state == InboundState.RECORDED, message.quarantine_reason
        record = session.scalars(
            select(ConversationRecord).where(ConversationRecord.source_message_id == message.id)
        ).one()
    assert peak < MEMORY_BUDGET * len(raw), f"{peak / len(raw):.2f} times the message"
    assert record.answers == {"1": "Fine"} and record.rating == 4


def test_a_25_mb_text_body_is_read_up_to_max_reply_chars():
    """A 25 MB text body went whole through quotes and extract (7 s here) into a record of
    25 MB and a confirmation email quoting it: its first MAX_REPLY_CHARS are read, and the
    cut is a defect."""
    line = b"All good here, nothing to add today. " * 26 + b"\r\n"
    raw = b"From: boss@acme.test\r\nContent-Type: text/plain\r\n\r\n1. Fine\r\n" + line * 26_000
    assert len(raw) >= 25_000_000
    started = time.perf_counter()
    peak, parsed = _peak(lambda: decode_message(raw))
    assert time.perf_counter() - started < 30  # about 2 s here, under tracemalloc
    assert MAX_REPLY_CHARS - 30_000 < len(parsed.text) <= MAX_REPLY_CHARS  # CRLF become LF
    assert parsed.text.startswith("1. Fine\nAll good")
    assert "text over the reading limit: cut at 1,000,000 characters" in parsed.defects
    assert any(d.startswith("part cut: kept the first 6,000,000") for d in parsed.defects)
    assert peak < 1.5 * len(raw)
    started = time.perf_counter()
    extraction = extract(parsed.text + "x" * 10, ["How did it go?"])
    assert extraction.answers[1].startswith("Fine") and len(extraction.body) <= MAX_REPLY_CHARS
    assert time.perf_counter() - started < 30
