"""Decoding inbound mail: any real-world MIME into headers and the best text body.

:func:`decode_message` never raises: inbound mail is stored raw before parsing (DESIGN.md,
"records are evidence"), so a damaged message must still yield whatever can be read, with the
damage listed in ``defects``. HTML bodies become text that keeps paragraphs, lists and
blockquote structure (quoted blocks come out as "> " lines).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
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
    auto_reply: bool  # vacation reply, Exchange automatic reply, bulk or list mail
    bounce: bool  # a delivery status report: the address is failing
    text: str  # the best text body
    defects: tuple[str, ...]  # human-readable reasons the MIME was damaged

    @property
    def auto_submitted(self) -> bool:
        """Sent by a machine: never a person's answer."""
        return self.auto_reply or self.bounce


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
        return ParsedEmail(None, "", (), "", None, (), None, False, False, "", (_defect(exc),))


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
    subject = " ".join(headers.get("subject", [])).strip()
    auto_reply, bounce = _automatic(msg, headers, address, subject)
    return ParsedEmail(
        from_address=address,
        from_name=name,
        to=tuple(to),
        subject=subject,
        message_id=ids[0] if ids else (_first(headers, "message-id") or None),
        in_reply_to=tuple(refs),
        date=_date(_first(headers, "date")),
        auto_reply=auto_reply,
        bounce=bounce,
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
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.line = ""
        self.bullet = ""
        self.quote = self.skip = self.pre = 0
        self.lists: list[list[int]] = []  # per open list: [ordered, counter]
        self.divs: list[bool] = []  # per open div: does it add a quote level?
        self.word_line = False  # inside a Word "MsoNormal"/"MsoListParagraph" paragraph
        self.spans: list[bool] = []  # per open span: is it Word's list-marker span?
        self.marker = ""  # the text of Word's list marker ("·", "1.") being read

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
        elif tag in self._PARAGRAPH:
            self._blank()
            self.pre += tag == "pre"
        elif tag == "div":
            self._flush()
            quoted = "yahoo_quoted" in _attr(attrs, "class")
            if _attr(attrs, "id") == "divRplyFwdMsg" or _outlook_header_div(attrs):
                self._blank()
                self.out.append(self._prefix() + self._OUTLOOK_SEPARATOR)
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
            self.lists = self.lists[:-1]
            if not self.lists:
                self._blank()
        elif tag == "span":
            if self.spans and self.spans.pop() and not any(self.spans):
                marker, self.marker = self.marker.strip(), ""
                if marker in _WORD_BULLETS:
                    self.bullet = "- "  # Word's symbol-font bullet
                elif marker:
                    self.line += marker + " "  # "1." of a numbered list stays as typed
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
        if any(self.spans):
            self.marker += data
            return
        if self.pre:
            *complete, self.line = (self.line + data).split("\n")
            for piece in complete:
                self.line = piece
                self._flush()
            return
        data = re.sub(r"\s+", " ", data)
        self.line += data.lstrip() if not self.line else data


_WORD_BULLETS = {"·", "•", "o", "§", "▪", "-", "–", "Ø", "ü", "*"}


def _attr(attrs: list[tuple[str, str | None]], name: str) -> str:
    return next((value or "" for key, value in attrs if key == name), "")


def _start(attrs: list[tuple[str, str | None]]) -> int:
    """An ordered list's first number (``<ol start=2>``, as Gmail splits inline replies)."""
    try:
        return int(_attr(attrs, "start") or 1)
    except ValueError:
        return 1


def _outlook_header_div(attrs: list[tuple[str, str | None]]) -> bool:
    """Outlook desktop's box around the header block of the original: a top border only."""
    style = _attr(attrs, "style").replace(" ", "").lower()
    return "border-top:solid" in style and "border:none" in style


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
