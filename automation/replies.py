"""The reply parser's public face: decode, trim, extract.

Stable entry points for the service, the operator tools, the benchmark and anyone embedding
the parser:

* :func:`extract_reply_text` trims a decoded message body to what the person wrote.
* :func:`parse_reply` turns raw RFC 5322 bytes into everything that would be recorded.

The work is done by three pure modules: ``domain.mime`` (decoding), ``domain.quotes``
(trimming) and ``domain.extract`` (fields). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from automation.domain.extract import ActionItem, Command, Extraction, extract
from automation.domain.mime import ParsedEmail, decode_message
from automation.domain.quotes import trim_reply

__all__ = [
    "ActionItem",
    "Command",
    "Extraction",
    "ParsedEmail",
    "ReplyParse",
    "decode_message",
    "extract",
    "extract_reply_text",
    "parse_reply",
    "trim_reply",
]


def extract_reply_text(text: str) -> str:
    """The text the person wrote, from a decoded message body (quotes, signatures removed)."""
    return trim_reply(text)


@dataclass(frozen=True)
class ReplyParse:
    """What a raw message would become: the decoded email and the extracted fields."""

    email: ParsedEmail
    extraction: Extraction
    reply_text: str
    auto_reply: bool
    bounce: bool


def parse_reply(
    raw: bytes, questions: Sequence[str] = (), sent_at: datetime | None = None
) -> ReplyParse:
    """Decode and extract; never raises. ``sent_at`` defaults to the message's Date header."""
    parsed = decode_message(raw)
    extraction = extract(parsed.text, questions, sent_at or parsed.date, parsed.from_name)
    return ReplyParse(parsed, extraction, extraction.body, parsed.auto_reply, parsed.bounce)
