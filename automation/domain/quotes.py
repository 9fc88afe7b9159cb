"""Trimming a reply: keep exactly what the person wrote, drop quoted history and signatures.

Line-based rules that follow mail-client conventions and languages (attribution lines,
Outlook header blocks, separators, signatures, mobile footers), never a single test fixture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
