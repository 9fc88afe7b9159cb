"""Inbound replies: decode the MIME, trim the quoted history, extract what the person said.

Three pure steps, each usable on its own (no I/O, no database, no clock):

* :func:`decode_message` turns raw bytes into a :class:`ParsedEmail`. It never raises: inbound
  mail is stored raw before parsing (DESIGN.md, "records are evidence"), so a damaged message
  must still yield whatever can be read, with the damage listed in ``defects``.
* :func:`trim_reply` keeps what the person wrote above the quoted history of a top-posted reply.
* :func:`extract` finds answers to the prompt's numbered questions (inline under the quoted
  questions, or numbered and top-posted), a rating, action items and ``#commands``; whatever
  fits no field goes to ``notes`` so nothing the person wrote is silently dropped.

This is the simple, line-based parser of the foundation. Each rule is a named pattern or a
small function so the fuller parser can replace them one at a time. The rules follow mail
client conventions and languages, never a single test fixture.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.header import decode_header, make_header
from email.message import Message
from html.parser import HTMLParser

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
    auto_submitted: bool  # auto-reply, bounce, bulk or list mail: never a person's answer
    text: str  # the best text body
    defects: tuple[str, ...]  # human-readable reasons the MIME was damaged


_RECIPIENT_HEADERS = ("to", "cc", "delivered-to", "x-original-to", "envelope-to")
_MSG_ID = re.compile(r"<[^<>\s]+>")
# Single-byte labels that are often wrong: if such a body is valid UTF-8 it *is* UTF-8.
_SINGLE_BYTE = {"us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1", "windows-1252", "cp1252"}
# WHATWG: a latin-1 label means windows-1252 (curly quotes in 0x80-0x9f).
_CHARSET_ALIASES = {"iso-8859-1": "cp1252", "latin-1": "cp1252", "latin1": "cp1252"}


def decode_message(raw: bytes) -> ParsedEmail:
    """Parse ``raw`` into a :class:`ParsedEmail`; never raises, whatever the bytes."""
    try:
        return _decode(raw)
    except Exception as exc:  # a parser bug must not lose the message: it is stored raw anyway
        return ParsedEmail(None, "", (), "", None, (), None, False, "", (_defect(exc),))


def _decode(raw: bytes) -> ParsedEmail:
    defects: list[str] = []
    msg = email.message_from_bytes(bytes(raw), policy=email.policy.default)
    headers = _headers(msg)
    name, address = _from(headers.get("from", []))
    to: list[str] = []
    for header in _RECIPIENT_HEADERS:
        for _, addr in email.utils.getaddresses(headers.get(header, [])):
            addr = addr.strip().lower()
            if "@" in addr and addr not in to:
                to.append(addr)
    ids = _MSG_ID.findall(" ".join(headers.get("message-id", [])))
    refs: list[str] = []
    for header in ("in-reply-to", "references"):
        refs += [r for r in _MSG_ID.findall(" ".join(headers.get(header, []))) if r not in refs]
    try:
        text = _body_text(msg, defects)
    except Exception as exc:  # keep the headers: the reply can still be matched and stored
        text = ""
        defects.append(_defect(exc))
    for part in _walk(msg):
        defects += [_defect(d) for d in getattr(part, "defects", ())]
    return ParsedEmail(
        from_address=address,
        from_name=name,
        to=tuple(to),
        subject=" ".join(headers.get("subject", [])).strip(),
        message_id=ids[0] if ids else (_first(headers, "message-id") or None),
        in_reply_to=tuple(refs),
        date=_date(_first(headers, "date")),
        auto_submitted=_is_automatic(msg, headers, address),
        text=text,
        defects=tuple(dict.fromkeys(defects)),
    )


def _headers(msg: Message) -> dict[str, list[str]]:
    """Raw headers, decoded by hand, so a malformed header cannot make the parser raise."""
    out: dict[str, list[str]] = {}
    for key, value in msg.raw_items():
        out.setdefault(key.lower(), []).append(_header_text(str(value)))
    return out


def _header_text(value: str) -> str:
    value = re.sub(r"\r?\n[ \t]+", " ", value)
    if any("\udc80" <= ch <= "\udcff" for ch in value):  # raw 8-bit header bytes
        value = _decode_bytes(value.encode("ascii", "surrogateescape"), None, [])
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # unknown charset or broken encoded-word: keep the raw text
        return value


def _first(headers: dict[str, list[str]], name: str) -> str:
    values = headers.get(name)
    return values[0].strip() if values else ""


def _from(values: list[str]) -> tuple[str, str | None]:
    pairs = email.utils.getaddresses(values[:1])
    name, addr = pairs[0] if pairs else ("", "")
    addr = addr.strip().lower()
    return name.strip(), addr if "@" in addr else None


def _date(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except Exception:  # the email package raises several types on malformed dates
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # "-0000": UTC, zone unknown


def _is_automatic(msg: Message, headers: dict[str, list[str]], sender: str | None) -> bool:
    """RFC 3834 and the older conventions: such mail must never count as an answer."""
    auto = _first(headers, "auto-submitted").split(";")[0].strip().lower()
    precedence = _first(headers, "precedence").lower()
    local = (sender or "").split("@")[0]
    try:
        report = msg.get_content_type() == "multipart/report"
    except Exception:
        report = False
    return bool(
        (auto and auto != "no")
        or precedence in ("bulk", "junk", "list")
        or "x-autoreply" in headers
        or "x-autorespond" in headers
        or local in ("mailer-daemon", "postmaster")
        or report
    )


def _walk(part: Message, depth: int = 0) -> Iterator[Message]:
    yield part
    payload = part.get_payload() if depth < 64 else None
    if isinstance(payload, list):
        for sub in payload:
            if isinstance(sub, Message):
                yield from _walk(sub, depth + 1)


def _body_text(msg: Message, defects: list[str]) -> str:
    """The text/plain parts, else the first HTML part as text; attachments and embedded
    messages (forwards, bounced originals) are not the person's reply and are skipped."""
    plain: list[str] = []
    html: list[str] = []
    stack = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        maintype = part.get_content_maintype()
        if part.is_multipart():
            if maintype != "message" and depth < 64:
                subs = [p for p in part.get_payload() if isinstance(p, Message)]
                stack += [(p, depth + 1) for p in reversed(subs)]
            continue
        if part.get_content_disposition() == "attachment":
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain":
            plain.append(_part_text(part, defects))
        elif ctype == "text/html":
            html.append(_part_text(part, defects))
    text = "\n".join(t for t in plain if t.strip())
    if not text and html:
        text = _html_to_text(html[0])
    return text.strip("\n")


def _part_text(part: Message, defects: list[str]) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        payload = str(payload or "").encode("utf-8", "surrogateescape")
    text = _decode_bytes(payload, part.get_content_charset(), defects)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if str(part.get_param("format", "")).lower() == "flowed":
        text = _unflow(text, str(part.get_param("delsp", "")).lower() == "yes")
    return text


def _decode_bytes(data: bytes, charset: str | None, defects: list[str]) -> str:
    """Declared charset, then UTF-8, then windows-1252 with replacement: always a string."""
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
            except LookupError:  # unknown, or not a text encoding ("base64")
                defects.append(f"unknown charset {label!r}")
                break
            except UnicodeError:
                continue
        else:
            defects.append(f"body is not valid {label}")
    try:
        return data.decode("utf-8")
    except UnicodeError:
        return data.decode("cp1252", errors="replace")


def _unflow(text: str, delsp: bool) -> str:
    """RFC 3676: a line ending in a space continues on the next line of the same quote depth."""
    out: list[str] = []
    pending: str | None = None
    pending_depth = 0
    for line in text.split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        content = line[depth:]
        content = content[1:] if content.startswith(" ") else content  # space-stuffing
        flowed = content.endswith(" ") and content != "-- "
        if flowed and delsp:
            content = content[:-1]
        if pending is not None and depth != pending_depth:
            out.append(">" * pending_depth + (" " if pending_depth else "") + pending)
            pending = None
        pending, pending_depth = (pending or "") + content, depth
        if not flowed:
            out.append(">" * depth + (" " if depth else "") + pending)
            pending = None
    if pending is not None:
        out.append(">" * pending_depth + (" " if pending_depth else "") + pending)
    return "\n".join(out)


def _defect(item: object) -> str:
    """``MissingHeaderBodySeparatorDefect`` -> ``missing header body separator``."""
    name = type(item).__name__.removesuffix("Defect")
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()
    detail = str(item)
    return f"{words}: {detail}" if detail and detail != name else words


class _HtmlToText(HTMLParser):
    """Just enough HTML layout for reply parsing: paragraphs, breaks, lists, quotes."""

    _SKIP = {"script", "style", "head", "title", "template"}
    _PARAGRAPH = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table"}
    _LINE = {"div", "tr", "section", "article", "header", "footer", "dt", "dd", "center", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.line = ""
        self.bullet = ""
        self.quote = self.skip = self.pre = 0
        self.lists: list[list[int]] = []  # per open list: [ordered, counter]

    def _prefix(self) -> str:
        return "> " * self.quote

    def _flush(self) -> None:
        text = self.line.rstrip() if self.pre else self.line.strip()
        if text or self.bullet:
            indent = "  " * max(len(self.lists) - 1, 0) if self.bullet else ""
            self.out.append(self._prefix() + indent + self.bullet + text)
        self.line = self.bullet = ""

    def _blank(self) -> None:
        self._flush()
        blank = self._prefix().rstrip()
        if self.out and not self.out[-1].strip(" >"):
            if len(blank) < len(self.out[-1]):  # one separator, at the shallower depth
                self.out[-1] = blank
        elif self.out:
            self.out.append(blank)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self.skip += 1
        elif tag == "br":
            if not self.line.strip() and not self.bullet:
                self.out.append(self._prefix().rstrip())
            self._flush()
        elif tag == "blockquote":
            self._blank()
            self.quote += 1
        elif tag in ("ul", "ol"):
            self._blank() if not self.lists else self._flush()
            self.lists.append([tag == "ol", 0])
        elif tag == "li":
            self._flush()
            if self.lists:
                self.lists[-1][1] += 1
            ordered, n = self.lists[-1] if self.lists else (False, 0)
            self.bullet = f"{n}. " if ordered else "- "
        elif tag in self._PARAGRAPH:
            self._blank()
            self.pre += tag == "pre"
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
            self.lists = self.lists[:-1]
            if not self.lists:
                self._blank()
        elif tag in self._PARAGRAPH:
            self.pre = max(self.pre - (tag == "pre"), 0)
            self._blank()
        elif tag in self._LINE or tag == "li":
            self._flush()

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.pre:
            *complete, self.line = (self.line + data).split("\n")
            for piece in complete:
                self.line = piece
                self._flush()
            return
        data = re.sub(r"\s+", " ", data)
        self.line += data.lstrip() if not self.line else data


def _html_to_text(html: str) -> str:
    """Readable text from an HTML body: ``<blockquote>`` lines get ``> ``, list items ``- ``
    (or ``1. `` in an ordered list), paragraphs are separated by a blank line."""
    parser = _HtmlToText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # a broken document still gives what was read so far
        pass
    parser._flush()
    lines: list[str] = []
    for line in parser.out:
        if line.strip(" >") or (lines and lines[-1].strip(" >")):
            lines.append(line)
    while lines and not lines[-1].strip(" >"):
        lines.pop()
    return "\n".join(lines)


# --------------------------------------------------------------------------- trimming

_QUOTE_VERBS = (
    r"wrote|writes|schrieb|a écrit|escribió|schreef|geschreven|ha scritto|skrev|"
    r"napisał(?:\(a\))?|kirjoitti|escreveu|написала?|пише|写道"
)
_WROTE = re.compile(rf"(?:{_QUOTE_VERBS})\s*[:：]\s*$|^on\b.*\bwrote\s*$", re.IGNORECASE)
# "<date>, "Name" <addr>:" in any language: an address in angle brackets, a time, a colon.
_DATED_FROM = re.compile(r"<\s*[^<>\s]+@[^<>\s]+\s*>.*[:：]\s*$")
_TIME = re.compile(r"\d{1,2}[:.]\d{2}")
_GMAIL_DATE_FIRST = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b.*(?:<\S+@\S+>|\bGMT[+-]\d)")
_ZOHO = re.compile(r"^-{2,}\s*on\b.*\bwrote\s*-{2,}\s*$", re.IGNORECASE)
_ATTRIBUTION_START = re.compile(
    r"^(?:-+\s*)?(?:on|am|le|el|op|il|in data|em|den|dnia|w dniu|at)\b|^\d|^\w{1,12}\.?,?\s+\d",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[^\W\d]{4,}[.!?]$|[!?]$")
_ORIGINAL = re.compile(
    r"^\s*\*?\s*-{2,}\s*(?:original message|ursprüngliche nachricht|mensaje original|"
    r"message d'origine|oprindelig besked|oorspronkelijk bericht|messaggio originale|"
    r"mensagem original|originalmeddelande|opprinnelig melding)\s*-{2,}\s*\*?\s*$",
    re.IGNORECASE,
)
_FORWARDED = re.compile(
    r"^\s*(?:-{2,}\s*(?:forwarded message|weitergeleitete nachricht|message transféré|"
    r"mensaje reenviado)\s*-{2,}|begin forwarded message:?)\s*$",
    re.IGNORECASE,
)
_UNDERSCORES = re.compile(r"^\s*_{2,}\s*$")  # Outlook's separator and mailing-list footers
_SIG_DELIMITER = re.compile(r"^--\s*$")  # "-- "; clients and corpora often lose the space
_MOBILE = re.compile(
    r"^(?:sent from|sent with|sent via|get outlook for|envoyé depuis|envoyé de mon|"
    r"envoyé à partir de|gesendet von|von meinem .+ gesendet|sendt fra|skickat från|"
    r"verzonden met|verzonden vanaf|enviado desde|enviado do meu|inviato da)\b",
    re.IGNORECASE,
)
_DECORATION = re.compile(r"^[\s\-=_*~#+\u1427]*$")  # U+1427: a mail-tracking placeholder
_HEADER_FIELD = re.compile(r"^\s*\*?\s*([^\W\d_][^:：*]{0,20}?)\s*\*?\s*[:：]\*?")
_FROM_FIELDS = {"from", "de", "van", "von", "da", "från", "fra", "od", "от"}
_DATE_FIELDS = {
    "sent", "date", "envoyé", "envoyé le", "verzonden", "datum", "gesendet", "inviato",
    "data", "skickat", "sendt", "dato", "enviado", "enviada", "wysłane", "отправлено",
}  # fmt: skip
_RCPT_FIELDS = {
    "to", "subject", "cc", "à", "a", "objet", "aan", "onderwerp", "an", "betreff", "oggetto",
    "till", "ämne", "til", "emne", "para", "asunto", "assunto", "do", "temat", "кому", "тема",
}  # fmt: skip


@dataclass(frozen=True)
class _Marker:
    """Where the quoted history (or a signature) begins; ``end`` is just after its header."""

    start: int
    end: int
    kind: str  # "attribution" | "header" | "separator" | "signature"


def trim_reply(text: str) -> str:
    """What the person wrote in a top-posted reply: everything above the first attribution,
    original-message separator, Outlook header block or forward; without the signature, the
    quoted tail and trailing blank lines. Leading blank lines go too; the rest is kept as is.

    A reply that *starts* with an attribution or header was written below it (bottom-posted,
    or a bare forward): then the header and the quote right under it are skipped instead.
    """
    lines = _split_lines(text)
    while True:
        lines = _strip_blank(lines)
        marker = _first_marker(lines)
        if marker is None or marker.start > 0 or marker.kind == "signature":
            break
        lines = lines[marker.end :]
        while lines and (not lines[0].strip() or _is_quoted(lines[0])):
            lines = lines[1:]
    if marker is not None:
        lines = lines[: marker.start]
    tail = len(lines)
    while tail and (not lines[tail - 1].strip() or _is_quoted(lines[tail - 1])):
        tail -= 1
    if any(line.strip() for line in lines[:tail]):  # a message that is only a quote stays
        lines = lines[:tail]
    while lines and _DECORATION.match(lines[-1]):
        lines = lines[:-1]
    return "\n".join(_strip_blank(lines))


def _split_lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _strip_blank(lines: list[str]) -> list[str]:
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


def _is_quoted(line: str) -> bool:
    return line.startswith(">")


def _is_signature(line: str) -> bool:
    """A signature delimiter or a short "Sent from my iPhone"-style line (not a sentence)."""
    if _SIG_DELIMITER.match(line):
        return True
    plain = re.sub(r"<[^>]*>|\[([^\]]*)\]\([^)]*\)", r"\1", line).strip()
    return bool(_MOBILE.match(plain)) and "," not in plain and len(plain.split()) <= 10


def _first_marker(lines: list[str]) -> _Marker | None:
    """The earliest marker. Only unquoted lines count, except on the first line, where a
    quoted attribution means the message holds nothing but history."""
    for i, line in enumerate(lines):
        if _is_quoted(line) and i > 0:
            continue
        bare = line.lstrip("> ") if i == 0 else line
        if _is_signature(bare):
            return _Marker(i, i + 1, "signature")
        if _ORIGINAL.match(bare) or _FORWARDED.match(bare) or _UNDERSCORES.match(bare):
            return _Marker(i, _skip_header_block(lines, i + 1), "separator")
        if _is_header_block(lines, i):
            return _Marker(i, _skip_header_block(lines, i), "header")
        if _ZOHO.match(bare.strip()) or _GMAIL_DATE_FIRST.match(bare.strip()):
            return _Marker(i, i + 1, "attribution")
        for end in range(i, min(i + 5, len(lines))):
            if _attribution_start(lines, end) == i:
                return _Marker(i, end + 1, "attribution")
    return None


def _attribution_start(lines: list[str], end: int) -> int | None:
    """The first line of an "On <date>, <name> wrote:" attribution ending on line ``end``,
    wrapped over up to five lines. The shortest window that matches wins, unless it starts
    like a continuation ("<addr>", "a écrit :"), then the nearest earlier line that starts
    like an attribution ("On", "Le", a date) does."""
    last = lines[end].rstrip()
    if not (last.endswith((":", "：")) or last.lower().endswith("wrote")):
        return None
    found: list[int] = []
    for start in range(end, max(end - 5, -1), -1):
        first = lines[start].strip()
        if not first or (_is_quoted(lines[start]) and start > 0):
            continue
        if start < end and not _is_quoted(lines[start]):
            # only a bare wrapped tail ("> wrote:", ">:") may look quoted, not a quote's text
            inner = any(_is_quoted(line) for line in lines[start + 1 : end])
            if inner or (_is_quoted(last) and any(c.isdigit() or c == "@" for c in last)):
                break
        window = " ".join(line.strip() for line in lines[start : end + 1]).lstrip("> ")
        if len(window) > 400:
            break
        if start < end and _SENTENCE_END.search(first):
            continue  # a window never begins with the end of the person's sentence
        dated = any(ch.isdigit() for ch in window) or "@" in window
        anchored = "@" in window or _ATTRIBUTION_START.match(window)
        if (_WROTE.search(window) and dated and anchored) or (
            _DATED_FROM.search(window) and _TIME.search(window)
        ):
            found.append(start)
    if not found:
        return None
    head = lines[found[0]].strip()
    if head[:1] in "<(>[" or head[:1].islower() or head.lower().startswith("mailto:"):
        for start in found[1:]:
            if _ATTRIBUTION_START.match(lines[start].strip()):
                return start
    return found[0]


def _is_header_block(lines: list[str], i: int) -> bool:
    """Outlook's "From:" followed within five lines by a date field and a recipient field."""
    if _header_name(lines[i]) not in _FROM_FIELDS:
        return False
    names = {_header_name(line) for line in lines[i + 1 : i + 6]}
    return bool(names & _DATE_FIELDS) and bool(names & _RCPT_FIELDS)


def _header_name(line: str) -> str | None:
    m = _HEADER_FIELD.match(line)
    return m.group(1).strip().lower() if m else None


def _skip_header_block(lines: list[str], i: int) -> int:
    """Past a header block starting at ``i`` (or after blank lines), to the blank line."""
    j = i
    while j < len(lines) and not lines[j].strip():
        j += 1
    if j >= len(lines) or _header_name(lines[j]) is None:
        return i
    while j < len(lines) and lines[j].strip():
        j += 1
    return j


# --------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class ActionItem:
    """A follow-up the person listed; owner and due date only when they were written."""

    text: str  # as written, without the "Action:" keyword
    owner: str | None  # "manager", "employee", a name or address as written, or None
    due: date | None


@dataclass(frozen=True)
class Command:
    """A ``#command`` line: acted on by the services, never recorded as an answer."""

    name: str  # "skip" | "done" | "cancel" | "reschedule"
    argument: str  # the text after the command, stripped


@dataclass(frozen=True)
class Extraction:
    """Everything found in a reply; ``body`` keeps all the person wrote, as evidence."""

    answers: dict[int, str]  # 1-based question number -> answer text
    rating: int | None  # 1..5
    action_items: tuple[ActionItem, ...]
    commands: tuple[Command, ...]
    notes: str  # every line of the person's text that went into no other field
    body: str  # all the person's own text


_COMMAND = re.compile(r"^#(skip|done|cancel|reschedule)\b(.*)$", re.IGNORECASE)
_NUMBERED = re.compile(r"^(?:q\s*(\d{1,2})\s*[.):]?|(\d{1,2})\s*[.):])(?:\s+|$)(.*)$", re.I)
_ACTION = re.compile(
    r"^(?:[-*•]\s*)?(?:action items?|action|ai|todo|to-do)\s*(?:\((?P<owner>[^)]*)\))?\s*:\s*"
    r"(?P<text>.+)$|^(?:[-*•]\s*)?\[ ?\]\s*(?P<box>.+)$",
    re.IGNORECASE,
)
_OWNER = re.compile(
    r"^(?P<who>I|me|[\w.+-]+@[\w-]+(?:\.[\w-]+)+|[A-Z][\w'.-]*(?:\s+[A-Z][\w'.-]*){0,2})"
    r"\s+(?:will\s|to\s+(?=[a-z]))"
)
_OUT_OF_5 = r"\s*(?:/\s*5|out of 5)"
_BARE_RATING = re.compile(
    rf"^(?:(?:overall\s+)?(?:rating|score|rated?)\s*[:=-]?\s*(\d+)(?:{_OUT_OF_5})?"
    rf"|(\d+){_OUT_OF_5})\s*[.!]?$",
    re.IGNORECASE,
)
_RATING = re.compile(
    r"\b(?:rating|score|rated)\s*[:=-]?\s*(\d+)\b|(?<![\d/])(\d+)\s*(?:/\s*5|out of 5)(?![\d/])",
    re.IGNORECASE,
)
_RATING_QUESTION = re.compile(r"\brat(?:e|ed|ing)\b|\b1\s*[-–]\s*5\b", re.IGNORECASE)
_WEEKDAYS = {
    "mon": 0, "monday": 0, "tue": 1, "tues": 1, "tuesday": 1, "wed": 2, "wednesday": 2,
    "thu": 3, "thur": 3, "thurs": 3, "thursday": 3, "fri": 4, "friday": 4, "sat": 5,
    "saturday": 5, "sun": 6, "sunday": 6,
}  # fmt: skip
_MONTH_NAMES = (
    "jan january,feb february,mar march,apr april,may,jun june,jul july,aug august,"
    "sep sept september,oct october,nov november,dec december"
)
_MONTHS = {
    name: number
    for number, names in enumerate(_MONTH_NAMES.split(","), start=1)
    for name in names.split()
}


@dataclass
class _Draft:
    answers: dict[int, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    actions: list[ActionItem] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    ratings: list[int] = field(default_factory=list)


def extract(text: str, questions: Sequence[str], sent_at: datetime | None = None) -> Extraction:
    """What the person said, from the full decoded body of their reply.

    Inline style (non-quoted text under quoted questions "> 1. ...") is tried first; otherwise
    the reply is top-posted: :func:`trim_reply`, then "1. ", "1) ", "Q1: ", "1: " start an
    answer that continues on the following lines up to a blank line or the next number (a
    later paragraph goes to notes). Every line is, in this order of precedence, a command, an
    action item, a bare rating ("Rating: 4", "4/5"), part of an answer, or a note.
    """
    draft = _Draft()
    slots = _inline_slots(_split_lines(text), questions)
    if slots is not None:
        for line, slot in slots:
            if not line.strip():
                if slot is not None and slot in draft.answers:
                    draft.answers[slot].append("")
            elif not _take(line, draft, sent_at):
                target = draft.answers.setdefault(slot, []) if slot else draft.notes
                target.append(line.strip())
        body = _join([line for line, _ in slots])
    else:
        body = trim_reply(text)
        current, gap = None, False
        for line in body.split("\n"):
            stripped = line.strip()
            numbered = _NUMBERED.match(stripped)
            number = int(numbered[1] or numbered[2]) if numbered else 0
            if not stripped:
                gap = True
            elif _take(stripped, draft, sent_at):
                current = None
            elif numbered and 1 <= number <= len(questions):
                current, gap = number, False
                answer = _without_question(numbered[3], questions[number - 1])
                draft.answers.setdefault(number, []).append(answer)
            elif current is not None and not gap:
                draft.answers[current].append(stripped)
            else:
                current = None
                draft.notes.append(stripped)
    answers = {n: _join(lines) for n, lines in sorted(draft.answers.items()) if _join(lines)}
    rating = draft.ratings[0] if draft.ratings else None
    for n, question in enumerate(questions, start=1):
        m = re.match(r"\s*([1-5])(?!\d)", answers.get(n, ""))
        if rating is None and m and _RATING_QUESTION.search(question):
            rating = int(m[1])
    return Extraction(
        answers=answers,
        rating=rating,
        action_items=tuple(draft.actions),
        commands=tuple(draft.commands),
        notes="\n".join(draft.notes),
        body=body,
    )


def _inline_slots(
    lines: list[str], questions: Sequence[str]
) -> list[tuple[str, int | None]] | None:
    """The person's own lines, each with the question it answers (None: not an answer), or
    None if this is not an inline reply. Quoted lines right under a quoted question continue
    the question; a quoted line after the answer has begun ends it. Attribution lines are
    dropped; a signature ends the person's text (above the first question it is skipped)."""
    marks = {}
    for i, line in enumerate(lines):
        if _is_quoted(line) and (n := _question_number(line.lstrip("> \t"), questions)):
            marks[i] = n
    if not marks:
        return None
    first = min(marks)
    if not any(line.strip() and not _is_quoted(line) for line in lines[first + 1 :]):
        return None
    skip: set[int] = set()
    marker = _first_marker(lines[:first])
    if marker is not None and marker.kind != "signature":
        skip = set(range(marker.start, marker.end))
    own: list[tuple[str, int | None]] = []
    slot, answered, in_signature = None, False, False
    for i, line in enumerate(lines):
        if i in marks:
            slot, answered, in_signature = marks[i], False, False
        elif _is_quoted(line):
            slot = None if answered else slot
        elif _is_signature(line):
            if i > first:
                break
            in_signature = True
        elif i not in skip and not in_signature:
            answered = answered or bool(line.strip())
            own.append((line, slot))
    return own


def _question_number(content: str, questions: Sequence[str]) -> int | None:
    """The question a quoted line asks: by its text first, then by its number."""
    numbered = _NUMBERED.match(content.strip())
    said = _normal(numbered[3] if numbered else content)
    for n, question in enumerate(questions, start=1):
        asked = _normal(question)
        if (
            asked
            and said
            and (said.startswith(asked) or (len(said) >= 12 and asked.startswith(said)))
        ):
            return n
    number = int(numbered[1] or numbered[2]) if numbered else 0
    return number if 1 <= number <= len(questions) else None


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _without_question(answer: str, question: str) -> str:
    """People often repeat the question before answering it ("1. What went well? The demo")."""
    asked = question.strip()
    if asked and answer.lower().startswith(asked.lower()):
        return answer[len(asked) :].strip()
    return answer


def _join(lines: list[str]) -> str:
    """Lines joined, blank runs collapsed to one blank line, blank ends stripped."""
    out: list[str] = []
    for line in lines:
        if line.strip() or (out and out[-1].strip()):
            out.append(line.rstrip())
    return "\n".join(_strip_blank(out))


def _take(line: str, draft: _Draft, sent_at: datetime | None) -> bool:
    """Record a command, action item or rating on ``line``; True if that consumed the line
    (a line that merely mentions a rating, "overall 4/5, good sprint", stays text)."""
    stripped = line.strip()
    if m := _COMMAND.match(stripped):
        draft.commands.append(Command(m[1].lower(), m[2].strip()))
        return True
    if item := _action_item(stripped, sent_at):
        draft.actions.append(item)
        return True
    if m := _BARE_RATING.match(stripped):
        value = int(m[1] or m[2])
        if 1 <= value <= 5:
            draft.ratings.append(value)
            return True
        return False  # out of range: not a rating, the line stays text
    for m in _RATING.finditer(stripped):
        value = int(m[1] or m[2])
        if 1 <= value <= 5:
            draft.ratings.append(value)
            break
    return False


def _action_item(line: str, sent_at: datetime | None) -> ActionItem | None:
    m = _ACTION.match(line)
    if m is None:
        return None
    text = (m["text"] or m["box"]).strip()
    owner = m["owner"].strip() if m["owner"] else None
    if owner is None and (who := _OWNER.match(text)):
        owner = who["who"]
    if owner is not None:
        lowered = owner.lower()
        owner = "manager" if lowered in ("i", "me", "myself") else owner
        owner = lowered if lowered in ("manager", "employee") else owner
    return ActionItem(text=text, owner=owner or None, due=_due(text, sent_at))


def _due(text: str, sent_at: datetime | None) -> date | None:
    """The date in "by <when>": an ISO date; with ``sent_at``, also "tomorrow", "today", a
    weekday (the next one strictly after the sending day) or "14 March"/"March 14" (the next
    such day on or after the sending day)."""
    for m in re.finditer(r"\bby\s+(?:(?:next|this)\s+)?", text, re.IGNORECASE):
        rest = text[m.end() :].lower()
        if iso := re.match(r"(\d{4})-(\d{2})-(\d{2})\b", rest):
            try:
                return date(int(iso[1]), int(iso[2]), int(iso[3]))
            except ValueError:
                continue
        if sent_at is None:
            continue
        sent = sent_at.date()
        word = re.match(r"[a-z]+", rest)
        if word and word[0] in ("today", "eod"):
            return sent
        if word and word[0] == "tomorrow":
            return sent + timedelta(days=1)
        if word and word[0] in _WEEKDAYS:
            return sent + timedelta(days=(_WEEKDAYS[word[0]] - sent.weekday() - 1) % 7 + 1)
        day_month = re.match(r"(\d{1,2})(?:st|nd|rd|th)?\s+([a-z]+)\b", rest)
        month_day = re.match(r"([a-z]+)\.?\s+(\d{1,2})(?:st|nd|rd|th)?\b", rest)
        if day_month and day_month[2] in _MONTHS:
            month, day = _MONTHS[day_month[2]], int(day_month[1])
        elif month_day and month_day[1] in _MONTHS:
            month, day = _MONTHS[month_day[1]], int(month_day[2])
        else:
            continue
        try:
            due = date(sent.year, month, day)
            return due if due >= sent else date(sent.year + 1, month, day)
        except ValueError:
            continue
    return None
