"""Decoding inbound mail: any real-world MIME into headers and the best text body.

:func:`decode_message` never raises: inbound mail is stored raw before parsing (DESIGN.md,
"records are evidence"), so a damaged message must still yield whatever can be read, with the
damage listed in ``defects``. HTML bodies become text that keeps paragraphs, lists and
blockquote structure (quoted blocks come out as "> " lines).

Hostile input is bounded, so that one message can cost neither unbounded time nor memory:

* The MIME is parsed by :func:`parse_bytes`: the standard library's feed parser with the
  ``compat32`` policy (the ``policy.default`` header parser is quadratic on long headers,
  CPython gh-136063), our own one-pass split of header parameters, and the limits below. A
  message over a limit is not parsed further: :attr:`ParsedEmail.over_limit` says which,
  and the inbound path keeps it raw and quarantines it with that reason.
* Addresses are read from the raw header; only display names are decoded (an encoded word
  can never become an address).
* Every text field is storable: NUL characters are dropped and lone surrogates replaced.
* The body text is cut at :data:`MAX_REPLY_CHARS`; HTML is converted by a linear tokenizer
  with bounded nesting, not by ``html.parser`` (quadratic on some malformed input).
"""

from __future__ import annotations

import email.utils
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import MessageDefect
from email.feedparser import BufferedSubFile, FeedParser, NeedMoreData
from email.header import decode_header, make_header
from email.message import Message
from email.policy import Compat32

from automation.domain.quotes import MAX_REPLY_CHARS

# --------------------------------------------------------------------------- limits

MAX_MESSAGE_BYTES = 50 * 1024 * 1024  # a larger message is stored but not parsed
MAX_MIME_DEPTH = 64  # nested multiparts and embedded messages
MAX_MIME_PARTS = 1_000  # every part and embedded message counts
MAX_HEADER_CHARS = 64 * 1024  # one header field, unfolded
MAX_HEADER_LINES = 20_000  # header lines in the whole message, every part's included
MAX_REFERENCES = 50  # Message-IDs of In-Reply-To and References looked up
MAX_ADDRESSES = 1_000  # addresses read from one header
MAX_HTML_CHARS = 2 * MAX_REPLY_CHARS  # HTML read for the text of an HTML-only message
MAX_PART_CHARS = 6 * MAX_REPLY_CHARS  # kept of one text part (encoded): enough for the reply
_MAX_SHORT_TEXT = 2_000  # subject and display name
_FEED_CHUNK = 64 * 1024
_FIRST_HEADERS_BYTES = 64 * 1024  # read for the sender of a message over the header limits


class OverLimits(ValueError):  # noqa: N818 - reads as a reason: "over limits: ..."
    """The message is over one of the parsing limits above; the text says which."""

    partial: Message | None = None  # what was parsed before the limit was reached


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class ParsedEmail:
    """What the services need from an inbound message; the raw bytes stay the evidence."""

    from_address: str | None  # lower-cased addr-spec of From; None if unparseable
    from_name: str
    to: tuple[str, ...]  # lower-cased addr-specs of every recipient-ish header
    subject: str
    message_id: str | None  # with angle brackets, as in the header
    in_reply_to: tuple[str, ...]  # In-Reply-To then References, with angle brackets
    date: datetime | None  # aware; None if missing or unparseable
    auto_reply: bool  # vacation reply, Exchange automatic reply, bulk or list mail
    bounce: bool  # a delivery status report: the address is failing
    text: str  # the best text body
    defects: tuple[str, ...]  # human-readable reasons the MIME was damaged
    # Why the message was not parsed in full ("" if it was): over one of the limits above.
    over_limit: str = ""

    @property
    def auto_submitted(self) -> bool:
        """Sent by a machine: never a person's answer."""
        return self.auto_reply or self.bounce


_RECIPIENT_HEADERS = ("to", "cc", "delivered-to", "x-original-to", "envelope-to")
_ADDRESS_HEADERS = frozenset(
    (*_RECIPIENT_HEADERS, "from", "sender", "reply-to", "bcc", "return-path")
    + ("resent-from", "resent-sender", "resent-to", "resent-cc", "resent-bcc")
)
_MSG_ID = re.compile(r"<[^<>\s]+>")
# A reply token (automation.domain.tokens) anywhere in a recipient header, even where a
# broken header keeps it from parsing as an address: a forged one must not go unseen.
# Both start only where a run of their characters starts, and never backtrack into it:
# linear on any header (a run tried from each of its positions is quadratic).
_TOKEN_TEXT = re.compile(
    r"(?<![\w.!#$%&'*/=?^`{|}~-])[\w.!#$%&'*/=?^`{|}~-]*+"
    r"\+\d++-[a-z]\d++-[a-z2-7]{20}@[\w-]++(?:\.[\w-]++)*+",
    re.I | re.A,
)
_BARE_ADDRESS = re.compile(r"(?<![^\s<>()\[\],;:\"@])[^\s<>()\[\],;:\"@]++@[^\s<>()\[\],;:\"@]++")
# Single-byte labels that are often wrong: if such a body is valid UTF-8 it *is* UTF-8.
_SINGLE_BYTE = {"us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1", "windows-1252", "cp1252"}
# WHATWG: a latin-1 label means windows-1252 (curly quotes in 0x80-0x9f).
_CHARSET_ALIASES = {"iso-8859-1": "cp1252", "latin-1": "cp1252", "latin1": "cp1252"}
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def decode_message(raw: bytes) -> ParsedEmail:
    """Parse ``raw`` into a :class:`ParsedEmail`; never raises, whatever the bytes."""
    try:
        return _decode(raw)
    except Exception as exc:  # a parser bug must not lose the message: it is stored raw anyway
        defects = (storable(_defect(exc)),)
        return ParsedEmail(None, "", (), "", None, (), None, False, False, "", defects)


def storable(text: str) -> str:
    """``text`` as every database stores it: NUL dropped (PostgreSQL refuses it in text),
    lone surrogates (raw 8-bit bytes, UTF-7, broken UTF-16) replaced with U+FFFD."""
    if text.isascii() and "\x00" not in text:
        return text
    return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", text)


# --------------------------------------------------------------------------- parsing


def parse_bytes(raw: bytes, *, headers_only: bool = False) -> Message:
    """The MIME tree of ``raw``: ``compat32`` messages whose parameters are split in one
    pass and whose header values come as storable text (encoded words decoded; addresses
    re-rendered from the raw header; ``Content-*`` as they are). What no reader of ours opens
    is not kept: the payload of a binary part, a text part after :data:`MAX_PART_CHARS`.
    Raises :class:`OverLimits`."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise OverLimits(f"the message is {len(raw):,} bytes, over the {MAX_MESSAGE_BYTES:,} limit")
    return _parse(raw, headers_only)


def _parse(raw: bytes, headers_only: bool) -> Message:
    parser = _BoundedParser()
    if headers_only:
        parser._set_headersonly()
    view = memoryview(raw)
    try:
        for start in range(0, len(raw), _FEED_CHUNK):
            # In slices: never the whole message as one str (and one line list) at once.
            chunk = bytes(view[start : start + _FEED_CHUNK])
            parser.feed(chunk.decode("ascii", "surrogateescape"))
        return parser.close()
    except OverLimits as exc:
        exc.partial = parser.root  # the top-level headers, if they were within the limits
        raise


def parse_message(raw: bytes) -> Message | None:
    """:func:`parse_bytes`, or None when the message cannot be parsed (or is over limits)."""
    try:
        return parse_bytes(bytes(raw))
    except Exception:
        return None


def _split_params(value: str) -> list[str]:
    """``a; b="x;y"; c`` -> ``["a", 'b="x;y"', "c"]`` in one pass (``email.message``'s own
    split rescans the value for every ``;``: quadratic on a long header)."""
    parts, start, quoted, skip = [], 0, False, -1
    for found in _PARAM_SPECIAL.finditer(value):
        pos = found.start()
        if pos == skip:
            continue
        char = found.group()
        if char == "\\":
            skip = pos + 1
        elif char == '"':
            quoted = not quoted
        elif not quoted:
            parts.append(value[start:pos])
            start = pos + 1
    parts.append(value[start:])
    out = []
    for part in parts:
        if "=" in part:
            name, _, val = part.partition("=")
            part = name.strip().lower() + "=" + val.strip()
        out.append(part.strip())
    return out


_PARAM_SPECIAL = re.compile(r'[;"\\]')


class _Message(Message):
    """A ``compat32`` message whose parameters are split in one pass; RFC 2231 decoding
    that fails (a stdlib bug on mixed or huge continuation numbers) keeps the raw values."""

    def _get_params_preserve(self, failobj, header):  # type: ignore[no-untyped-def]
        missing = object()
        value = self.get(header, missing)
        if value is missing:
            return failobj
        params = []
        for item in _split_params(str(value)):
            name, sep, val = item.partition("=")
            params.append((name.strip(), val.strip()) if sep else (item.strip(), ""))
        try:
            return email.utils.decode_params(params)
        except Exception:
            return params

    def get_payload(self, i=None, decode=False):  # type: ignore[no-untyped-def]
        try:
            return super().get_payload(i, decode)
        except TypeError:  # an RFC 2231 charset (a tuple) where the stdlib expects a str
            if decode or i is not None:
                raise
            return self._payload


class _Policy(Compat32):
    """``compat32`` with a length limit per header and header values as text: unfolded,
    encoded words decoded (addresses re-rendered from the raw header), storable."""

    def header_source_parse(self, sourcelines):  # type: ignore[no-untyped-def]
        name, value = super().header_source_parse(sourcelines)
        if len(value) > MAX_HEADER_CHARS:
            raise OverLimits(
                f"the {_header_name(name)} header is {len(value):,} characters long, "
                f"over the {MAX_HEADER_CHARS:,} limit"
            )
        return name, value

    def header_fetch_parse(self, name, value):  # type: ignore[no-untyped-def]
        key = name.lower()
        if key.startswith("content-"):  # structure: never decoded (a boundary stays as is)
            return storable(_raw_text(value))
        if key in _ADDRESS_HEADERS:
            return ", ".join(_render(pair) for pair in _address_pairs(value))
        return storable(_header_text(value))


_POLICY = _Policy()


class PartCutDefect(MessageDefect):
    """A text part longer than :data:`MAX_PART_CHARS`: only its beginning was kept."""


class _BoundedInput(BufferedSubFile):
    """The parser's line source, which keeps memory bounded by what is read later.

    It counts the header lines the parser reads (between a part's start and the end of its
    headers), so a flood of header lines is refused before it is held in memory. And it
    does not hand the parser what nobody reads (the parser keeps every line of a part in a
    list, about 2.5 times the text): the lines of binary attachments, of a text part after
    its first :data:`MAX_PART_CHARS` and of a preamble or epilogue after its first 64 KiB
    come as bare line ends. Boundaries, headers and nested parts are never touched."""

    def __init__(self, parser: _BoundedParser):
        super().__init__()
        self.parser = parser
        self.after_dashes = False  # the last line read in a multipart started with "--"

    def readline(self):  # type: ignore[no-untyped-def]
        line = super().readline()
        if line is NeedMoreData or not line:
            return line
        parser = self.parser
        if parser.in_headers:
            parser.header_lines += 1
            if parser.header_lines > MAX_HEADER_LINES:
                raise OverLimits(f"more than {MAX_HEADER_LINES:,} header lines")
            return line
        part = parser._cur
        budget = getattr(part, "_budget", None)  # None: every line is kept
        if budget is None:
            return line
        if budget == _IN_MULTIPART:
            # A boundary, or the line after one (it may be unread as a part's first header).
            after_dashes, self.after_dashes = self.after_dashes, line.startswith("--")
            if self.after_dashes or after_dashes:
                return line
            budget = _PREAMBLE_CHARS
        part._kept += len(line)
        if part._kept <= budget:
            return line
        if budget and not part._cut:
            part._cut = True
            part.defects.append(PartCutDefect(f"kept the first {budget:,} characters"))
        return _LINE_END.get(line[-2:]) or _LINE_END.get(line[-1:], " ")


_PREAMBLE_CHARS = 64 * 1024
_IN_MULTIPART = -1
_LINE_END = {"\r\n": "\r\n", "\n": "\n", "\r": "\r"}


class _BoundedParser(FeedParser):
    """The standard feed parser with a limit on depth, parts and header lines."""

    def __init__(self) -> None:
        super().__init__(_factory=_Message, policy=_POLICY)
        self._input = _BoundedInput(self)
        self.in_headers = False
        self.header_lines = 0
        self.parts = 0
        self.root: Message | None = None

    def _new_message(self) -> None:
        if len(self._msgstack) >= MAX_MIME_DEPTH:
            raise OverLimits(f"MIME parts nested more than {MAX_MIME_DEPTH} deep")
        self.parts += 1
        if self.parts > MAX_MIME_PARTS:
            raise OverLimits(f"more than {MAX_MIME_PARTS:,} MIME parts")
        super()._new_message()  # type: ignore[misc]
        if self.root is None:
            self.root = self._cur
        self.in_headers = True

    def _parse_headers(self, lines):  # type: ignore[no-untyped-def]
        self.in_headers = False
        super()._parse_headers(lines)  # type: ignore[misc]
        if self._headersonly:
            return
        part = self._cur
        ctype = part.get_content_type()
        maintype = ctype.partition("/")[0]
        if maintype == "multipart":
            part._budget = _IN_MULTIPART
        elif maintype == "text" or ctype in _CALENDAR_TYPES:
            part._budget = MAX_PART_CHARS
        elif maintype != "message":  # images, PDFs, archives: no reader of ours opens them
            part._budget = 0
        part._kept, part._cut = 0, False


_CALENDAR_TYPES = ("application/ics",)


def _header_name(name: str) -> str:
    name = storable(name.strip())
    return name if len(name) <= 40 and name.isprintable() else repr(name[:40])


# --------------------------------------------------------------------------- headers


def _decode(raw: bytes) -> ParsedEmail:
    defects: list[str] = []
    over_limit = ""
    try:
        msg = parse_bytes(bytes(raw))
    except OverLimits as exc:
        over_limit = str(exc)
        defects.append(f"over limits: {exc}")
        msg = exc.partial
        if msg is None or not msg.keys():  # over limits in the top-level headers
            msg = _first_headers(raw)
    headers = _headers(msg)
    name, address = _from(headers.get("from", []))
    to: dict[str, None] = {}  # in order, once each
    for header in _RECIPIENT_HEADERS:
        for value in headers.get(header, []):
            for _, addr in _address_pairs(value):
                addr = addr.strip().lower()
                if "@" in addr:
                    to[addr] = None
            for token in _TOKEN_TEXT.findall(value):
                to[token.lower()] = None
    ids = _MSG_ID.findall(" ".join(headers.get("message-id", [])))
    refs: list[str] = []
    for header in ("in-reply-to", "references"):
        found = _MSG_ID.findall(" ".join(headers.get(header, [])))
        if len(found) > MAX_REFERENCES:  # the thread's root and its latest messages
            found = found[:1] + found[-(MAX_REFERENCES - 1) :]
        refs += [r for r in found if r not in refs]
    refs = refs[:MAX_REFERENCES]
    text = ""
    if not over_limit:
        try:
            text = _body_text(msg, defects)
        except Exception as exc:  # keep the headers: the reply can still be matched and stored
            defects.append(_defect(exc))
    for part in walk(msg):
        defects += [_defect(d) for d in getattr(part, "defects", ())]
    subject = " ".join(_header_text(v) for v in headers.get("subject", [])).strip()
    subject = subject[:_MAX_SHORT_TEXT]
    auto_reply, bounce = _automatic(msg, headers, address, subject)
    return ParsedEmail(
        from_address=storable(address) if address else None,
        from_name=storable(name),
        to=tuple(storable(a) for a in to),
        subject=storable(subject),
        message_id=_message_id(ids[0] if ids else _first(headers, "message-id")),
        in_reply_to=tuple(storable(r) for r in refs),
        date=_date(_first(headers, "date")),
        auto_reply=auto_reply,
        bounce=bounce,
        text=storable(text),
        defects=tuple(storable(d) for d in dict.fromkeys(defects)),
        over_limit=storable(over_limit),
    )


def _first_headers(raw: bytes) -> Message:
    """The headers in the first 64 KiB of a message whose header section is over the
    limits, parsed alone: the sender and subject an operator sees in the quarantine."""
    try:
        return _parse(bytes(raw[:_FIRST_HEADERS_BYTES]), headers_only=True)
    except Exception:
        return _Message(policy=_POLICY)


def _message_id(value: str) -> str | None:
    """At most 998 bytes in UTF-8 (the header line limit): a longer value is no Message-ID,
    and PostgreSQL refuses an index entry over 2,704 bytes."""
    value = storable(value)
    if len(value) > 998 // 4:
        value = value.encode()[:998].decode("utf-8", "ignore")
    return value or None


def _headers(msg: Message) -> dict[str, list[str]]:
    """Raw header values (unfolded, 8-bit bytes as text; encoded words not decoded)."""
    out: dict[str, list[str]] = {}
    for key, value in msg.raw_items():
        out.setdefault(key.lower(), []).append(_raw_text(str(value)))
    return out


def _raw_text(value: str) -> str:
    """A raw header value unfolded, its 8-bit bytes read as UTF-8 (else windows-1252)."""
    value = re.sub(r"\r?\n[ \t]+", " ", value).strip("\r\n")
    if any("\udc80" <= ch <= "\udcff" for ch in value):  # raw 8-bit header bytes
        value = _decode_bytes(value.encode("ascii", "surrogateescape"), None, [])
    return value


def _header_text(value: str) -> str:
    value = _raw_text(value)
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # unknown charset or broken encoded-word: keep the raw text
        return value


def _address_pairs(value: str) -> list[tuple[str, str]]:
    """(display name, address) of a raw header value. The address is read before anything
    is decoded, so an encoded word can only ever be a name: ``=?utf-8?b?PGJvc3NAYWNtZS50ZXN0Pg==?=
    <evil@x.test>`` is evil@x.test, named "<boss@acme.test>"."""
    value = _raw_text(value)
    try:
        pairs = email.utils.getaddresses([value])
    except Exception:  # nested comments (RecursionError), or worse: just the addresses
        pairs = [("", a) for a in _BARE_ADDRESS.findall(value)]
    out = []
    for name, addr in pairs[:MAX_ADDRESSES]:
        addr = storable(addr.strip())
        if addr:
            out.append((storable(_header_text(name)).strip()[:_MAX_SHORT_TEXT], addr))
    return out


def _render(pair: tuple[str, str]) -> str:
    name, addr = pair
    if not name:
        return addr
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + f'" <{addr}>'


def _first(headers: dict[str, list[str]], name: str) -> str:
    values = headers.get(name)
    return values[0].strip() if values else ""


def _from(values: list[str]) -> tuple[str, str | None]:
    pairs = _address_pairs(values[0]) if values else []
    name, addr = pairs[0] if pairs else ("", "")
    addr = addr.strip().lower()
    return name.strip(), addr if "@" in addr else None


def _date(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except Exception:  # the email package raises several types on malformed dates
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # "-0000": UTC, zone unknown


# Subjects that clients and servers put on automatic replies, in the languages we support.
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:automatic reply|auto(?:matic)?[- ]?reply|out of (?:the )?office|autoreply"
    r"|automatische antwort|abwesenheitsnotiz|abwesend|réponse automatique|absence du bureau"
    r"|respuesta automática|fuera de la oficina|automatisch antwoord|afwezig"
    r"|resposta automática|ausente do escritório|risposta automatica|fuori sede|fuori ufficio"
    r"|automatiskt svar|frånvaro|odpowiedź automatyczna|poza biurem|автоматический ответ"
    r"|нет на месте|вне офиса|自動応答|自動返信|不在|自动答复|自动回复|不在办公室)\b",
    re.IGNORECASE,
)


def _automatic(
    msg: Message, headers: dict[str, list[str]], sender: str | None, subject: str
) -> tuple[bool, bool]:
    """(auto_reply, bounce), by RFC 3834 and the older conventions.

    A bounce is a delivery status report (RFC 3464 multipart/report) or mail from the mailer
    daemon; an auto-reply is anything else a machine sent in answer: vacation replies,
    Exchange automatic replies, bulk and list mail. Neither is ever a person's answer.
    """
    auto = _first(headers, "auto-submitted").split(";")[0].strip().lower()
    precedence = _first(headers, "precedence").lower()
    local = (sender or "").split("@")[0]
    try:
        report = msg.get_content_type() == "multipart/report"
    except Exception:
        report = False
    bounce = report or local in ("mailer-daemon", "postmaster")
    auto_reply = not bounce and bool(
        (auto and auto != "no")
        or precedence in ("bulk", "junk", "list", "auto_reply")
        or "x-autoreply" in headers
        or "x-autorespond" in headers
        or "x-autoresponder" in headers
        # Exchange marks its automatic replies with this header and a localized subject.
        or ("x-auto-response-suppress" in headers and _AUTO_SUBJECT.match(subject))
        or _AUTO_SUBJECT.match(subject)
    )
    return auto_reply, bounce


def walk(part: Message, depth: int = 0) -> Iterator[Message]:
    """Every part of a parsed message, at most :data:`MAX_MIME_DEPTH` deep."""
    yield part
    payload = part.get_payload() if part.is_multipart() and depth < MAX_MIME_DEPTH else None
    if isinstance(payload, list):
        for sub in payload:
            if isinstance(sub, Message):
                yield from walk(sub, depth + 1)


def _body_text(msg: Message, defects: list[str]) -> str:
    """The text/plain parts, else the first HTML part as text; attachments and embedded
    messages (forwards, bounced originals) are not the person's reply and are skipped.
    At most :data:`MAX_REPLY_CHARS` of text (and :data:`MAX_HTML_CHARS` of HTML) are read."""
    plain: list[str] = []
    html: list[Message] = []
    size = 0
    stack = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        maintype = part.get_content_maintype()
        if part.is_multipart():
            if maintype != "message" and depth < MAX_MIME_DEPTH:
                subs = [p for p in part.get_payload() if isinstance(p, Message)]
                stack += [(p, depth + 1) for p in reversed(subs)]
            continue
        if part.get_content_disposition() == "attachment":
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain" and size < MAX_REPLY_CHARS:
            plain.append(_part_text(part, defects, MAX_REPLY_CHARS - size))
            size += len(plain[-1])
        elif ctype == "text/html":
            html.append(part)
    text = "\n".join(t for t in plain if t.strip())
    if not text and html:
        text = _html_to_text(_part_text(html[0], defects, MAX_HTML_CHARS))
        if len(text) > MAX_REPLY_CHARS:
            text = text[:MAX_REPLY_CHARS]
            defects.append(f"text cut at {MAX_REPLY_CHARS:,} characters")
    return text.strip("\n")


def _part_text(part: Message, defects: list[str], limit: int) -> str:
    """The decoded text of one part, at most ``limit`` characters."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        payload = str(payload or "").encode("utf-8", "surrogateescape")
    if len(payload) > 4 * limit:  # no charset takes more than 4 bytes a character
        payload = payload[: 4 * limit]
    text = _decode_bytes(payload, part.get_content_charset(), defects)
    if len(text) > limit:
        text = text[:limit]
        defects.append(f"text over the reading limit: cut at {limit:,} characters")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if str(part.get_param("format", "")).lower() == "flowed":
        text = _unflow(text, str(part.get_param("delsp", "")).lower() == "yes")
    return text


def _decode_bytes(data: bytes, charset: str | None, defects: list[str]) -> str:
    """Declared charset, then UTF-8, then windows-1252 with replacement: always a string.
    A label Python does not know, or one that is no text encoding, is only a defect."""
    label = (charset or "").strip().strip('"').lower()
    if label in _SINGLE_BYTE and not data.isascii():
        try:
            text = data.decode("utf-8")
        except UnicodeError:
            pass
        else:
            defects.append(f"body declared as {label} is UTF-8")
            return text
    if label:
        for codec in (_CHARSET_ALIASES.get(label, label), label):
            try:
                return data.decode(codec)
            except UnicodeError:
                continue
            except (LookupError, ValueError, TypeError):  # unknown, "base64", a NUL in it
                defects.append(f"unknown charset {label[:60]!r}")
                break
        else:
            defects.append(f"body is not valid {label}")
    try:
        return data.decode("utf-8")
    except UnicodeError:
        return data.decode("cp1252", errors="replace")


def _unflow(text: str, delsp: bool) -> str:
    """RFC 3676: a line ending in a space continues on the next line of the same quote depth."""
    out: list[str] = []
    pending: list[str] | None = None  # the pieces of the paragraph being joined
    pending_depth = 0
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        content = content[1:] if content.startswith(" ") else content  # space-stuffing
        flowed = content.endswith(" ") and content != "-- "
        if flowed and delsp:
            content = content[:-1]
        if pending is not None and depth != pending_depth:
            out.append(">" * pending_depth + (" " if pending_depth else "") + "".join(pending))
            pending = None
        if pending is None:
            pending, pending_depth = [], depth
        pending.append(content)
        if not flowed:
            out.append(">" * depth + (" " if depth else "") + "".join(pending))
            pending = None
    if pending is not None:
        out.append(">" * pending_depth + (" " if pending_depth else "") + "".join(pending))
    return "\n".join(out)


def _defect(item: object) -> str:
    """``MissingHeaderBodySeparatorDefect`` -> ``missing header body separator``."""
    name = type(item).__name__.removesuffix("Defect")
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()
    detail = str(item)
    return f"{words}: {detail}" if detail and detail != name else words


# An HTML tag: every alternative stops at the next "<", so a scan never goes past it and
# the tokenizer stays linear whatever the markup (html.parser is quadratic on some of it).
_TAG = re.compile(r"""<(/?)([a-zA-Z][^\t\n\r\f />\x00<]*+)((?:[^<>"']++|"[^"<]*+"|'[^'<]*+')*+)>""")
_DECLARATION = re.compile(r"<[!?/][^>]*+(?:>|\Z)")  # <!DOCTYPE>, <![if …]>, <?xml?>, </ x>
_COMMENT_END = re.compile(r"--!?\s*>")
_ATTRIBUTE = re.compile(r"""([^\s/>"'=][^\s/>=]*)(?:\s*=+\s*("[^"]*"|'[^']*'|[^\s>]*))?""")
_RAW_TEXT = {"script", "style"}  # their content is not markup
_MAX_NESTING = 32  # quote prefixes and list indents stop growing here


class _Full(Exception):  # noqa: N818 - a signal: the text reached MAX_REPLY_CHARS
    pass


def _html_tokens(
    html_text: str,
) -> Iterator[tuple[str, str, list[tuple[str, str | None]]]]:
    """("data", text, []), ("start", tag, attrs), ("end", tag, []) of an HTML document, in
    one pass: comments, declarations and processing instructions are dropped, the content
    of ``script`` and ``style`` is skipped, character references are resolved."""
    pos, size, data = 0, len(html_text), []
    while pos < size:
        lt = html_text.find("<", pos)
        if lt < 0:
            data.append(html_text[pos:])
            break
        data.append(html_text[pos:lt])
        tag = _TAG.match(html_text, lt)
        if tag is None:
            if html_text.startswith("<!--", lt):
                end = _COMMENT_END.search(html_text, lt + 4)
                pos = end.end() if end else size
            elif (bogus := _DECLARATION.match(html_text, lt)) is not None:
                pos = bogus.end()
            else:  # a "<" that starts nothing: text
                data.append("<")
                pos = lt + 1
            continue
        if data:
            if text := html.unescape("".join(data)):
                yield "data", text, []
            data = []
        pos = tag.end()
        name, rest = tag.group(2).lower(), tag.group(3)
        if tag.group(1):
            yield "end", name, []
            continue
        attrs = [
            (key.lower(), html.unescape(value.strip("\"'")) if value else None)
            for key, value in _ATTRIBUTE.findall(rest)
        ]
        yield "start", name, attrs
        if rest.rstrip().endswith("/"):
            yield "end", name, []
        elif name in _RAW_TEXT:
            end = re.compile(rf"</\s*{name}\s*>", re.I).search(html_text, pos)
            pos = end.start() if end else size
    if data and (text := html.unescape("".join(data))):
        yield "data", text, []


class _HtmlToText:
    """Just enough HTML layout for reply parsing: paragraphs, breaks, lists, quotes.

    Mail clients mark the quoted original in their own ways; each comes out as text the
    trimmer recognises. ``<blockquote>`` (Gmail ``gmail_quote``, Apple Mail and Thunderbird
    ``type=cite``, Proton) gives "> " lines, and so does Yahoo's ``yahoo_quoted`` container,
    which holds the original without a blockquote. Gmail's ``gmail_quote`` *div* is not
    quoted as a whole: inline answers sit in it, between the blockquotes. Outlook (desktop:
    the ``border-top`` div around the header block; on the web: ``#divRplyFwdMsg``) leaves
    the original unquoted after a "From:/Sent:/To:" block; a separator line goes before that
    block, as Outlook's own plain-text part has, and the original stays unquoted so answers
    typed into it can still be found. Word's ``MsoNormal`` paragraphs are lines (they have
    no margins); an empty one is a blank line.
    """

    _SKIP = {"script", "style", "head", "title", "template"}
    _PARAGRAPH = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table"}
    _LINE = {"div", "tr", "section", "article", "header", "footer", "dt", "dd", "center", "hr"}
    _OUTLOOK_SEPARATOR = "_" * 32

    def __init__(self) -> None:
        self.out: list[str] = []
        self.size = 0  # characters in out
        self.chunks: list[str] = []  # the line being read, in pieces (joined when read)
        self.bullet = ""
        self.quote = self.skip = self.pre = 0
        self.lists: list[list[int]] = []  # per open list: [ordered, counter]
        self.divs: list[bool] = []  # per open div: does it add a quote level?
        self.word_line = False  # inside a Word "MsoNormal"/"MsoListParagraph" paragraph
        self.spans: list[bool] = []  # per open span: is it Word's list-marker span?
        self.marker_spans = 0  # how many of them are Word's list-marker spans
        self.marker = ""  # the text of Word's list marker ("·", "1.") being read

    def feed_all(self, html_text: str) -> None:
        for kind, value, attrs in _html_tokens(html_text):
            if kind == "data":
                self.handle_data(value)
            elif kind == "start":
                self.handle_starttag(value, attrs)
            else:
                self.handle_endtag(value)

    @property
    def line(self) -> str:
        if len(self.chunks) > 1:
            self.chunks[:] = ["".join(self.chunks)]
        return self.chunks[0] if self.chunks else ""

    @line.setter
    def line(self, value: str) -> None:
        self.chunks[:] = [value] if value else []

    def _emit(self, line: str) -> None:
        self.out.append(line)
        self.size += len(line) + 1
        if self.size > MAX_REPLY_CHARS:
            raise _Full

    def _prefix(self) -> str:
        return "> " * min(self.quote, _MAX_NESTING)

    def _flush(self) -> None:
        text = self.line.rstrip() if self.pre else self.line.strip()
        self.line = ""
        if text or self.bullet:
            depth = min(max(len(self.lists) - 1, 0), _MAX_NESTING)
            indent = "  " * depth if self.bullet else ""
            bullet, self.bullet = self.bullet, ""
            self._emit(self._prefix() + indent + bullet + text)

    def _blank(self) -> None:
        self._flush()
        blank = self._prefix().rstrip()
        if self.out and not self.out[-1].strip(" >"):
            if len(blank) < len(self.out[-1]):  # one separator, at the shallower depth
                self.out[-1] = blank
        elif self.out:
            self._emit(blank)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skip += 1
        elif tag == "br":
            if not self.line.strip() and not self.bullet:
                self._emit(self._prefix().rstrip())
            self._flush()
        elif tag == "blockquote":
            self._blank()
            self.quote += 1
        elif tag in ("ul", "ol"):
            self._blank() if not self.lists else self._flush()
            self.lists.append([tag == "ol", _start(attrs) - 1 if tag == "ol" else 0])
        elif tag == "li":
            self._flush()
            if self.lists:
                self.lists[-1][1] += 1
            ordered, n = self.lists[-1] if self.lists else (False, 0)
            self.bullet = f"{n}. " if ordered else "- "
        elif tag == "p" and _attr(attrs, "class").lower().startswith("mso"):
            self._flush()
            self.word_line = True
        elif tag == "span":
            style = _attr(attrs, "style").replace(" ", "").lower()
            self.spans.append("mso-list:ignore" in style)
            self.marker_spans += self.spans[-1]
        elif tag in self._PARAGRAPH:
            self._blank()
            self.pre += tag == "pre"
        elif tag == "div":
            self._flush()
            quoted = "yahoo_quoted" in _attr(attrs, "class")
            if _attr(attrs, "id") == "divRplyFwdMsg" or _outlook_header_div(attrs):
                self._blank()
                self._emit(self._prefix() + self._OUTLOOK_SEPARATOR)
            elif quoted:
                self._blank()
                self.quote += 1
            self.divs.append(quoted)
        elif tag in self._LINE:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self.skip = max(self.skip - 1, 0)
        elif tag == "blockquote":
            self._flush()
            self.quote = max(self.quote - 1, 0)
            self._blank()
        elif tag in ("ul", "ol"):
            self._flush()
            if self.lists:
                self.lists.pop()
            if not self.lists:
                self._blank()
        elif tag == "span":
            if self.spans and self.spans.pop():
                self.marker_spans -= 1
                if not self.marker_spans:
                    marker, self.marker = self.marker.strip(), ""
                    if marker in _WORD_BULLETS:
                        self.bullet = "- "  # Word's symbol-font bullet
                    elif marker:
                        self.chunks.append(marker + " ")  # "1." of a numbered list stays
        elif tag == "p" and self.word_line:
            self.word_line = False
            if not self.line.strip() and not self.bullet:
                self._blank()  # Word's empty paragraph: the blank line the person typed
            else:
                self._flush()
        elif tag in self._PARAGRAPH:
            self.pre = max(self.pre - (tag == "pre"), 0)
            self._blank()
        elif tag == "div":
            self._flush()
            if self.divs and self.divs.pop():
                self.quote = max(self.quote - 1, 0)
                self._blank()
        elif tag in self._LINE or tag == "li":
            self._flush()

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.marker_spans:
            if len(self.marker) < 100:  # a list marker is a few characters
                self.marker += data
            return
        if self.pre:
            if "\n" not in data:
                self.chunks.append(data)
                return
            *complete, last = (self.line + data).split("\n")
            for piece in complete:
                self.line = piece
                self._flush()
            self.line = last
            return
        data = re.sub(r"\s+", " ", data)
        if not self.chunks:
            data = data.lstrip()
        if data:
            self.chunks.append(data)


_WORD_BULLETS = {"·", "•", "o", "§", "▪", "-", "–", "Ø", "ü", "*"}


def _attr(attrs: list[tuple[str, str | None]], name: str) -> str:
    return next((value or "" for key, value in attrs if key == name), "")


def _start(attrs: list[tuple[str, str | None]]) -> int:
    """An ordered list's first number (``<ol start=2>``, as Gmail splits inline replies)."""
    try:
        return max(min(int(_attr(attrs, "start")[:12] or 1), 10**9), -(10**9))
    except ValueError:
        return 1


def _outlook_header_div(attrs: list[tuple[str, str | None]]) -> bool:
    """Outlook desktop's box around the header block of the original: a top border only."""
    style = _attr(attrs, "style").replace(" ", "").lower()
    return "border-top:solid" in style and "border:none" in style


def _html_to_text(html_text: str) -> str:
    """Readable text from an HTML body: ``<blockquote>`` lines get ``> ``, list items ``- ``
    (or ``1. `` in an ordered list), paragraphs are separated by a blank line."""
    parser = _HtmlToText()
    try:
        parser.feed_all(html_text)
        parser._flush()
    except _Full:  # MAX_REPLY_CHARS of text: the rest is not read
        pass
    lines: list[str] = []
    for line in parser.out:
        if line.strip(" >") or (lines and lines[-1].strip(" >")):
            lines.append(line)
    while lines and not lines[-1].strip(" >"):
        lines.pop()
    return "\n".join(lines)[:MAX_REPLY_CHARS]
