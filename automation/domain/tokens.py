"""Signed reply addresses.

A follow-up prompt is sent from ``checkin+<org>-<kind><id>-<sig>@<reply domain>``. The
signature is an HMAC of the organization, the kind and the id, so a reply can be tied to its
check-in without trusting the subject line, and a guessed or edited address is refused. The
signature is base32 in lower case because some mail systems lower-case local parts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

KINDS = {
    "o": "occurrence",
    "r": "pip_review",
    "s": "series",
    "a": "acknowledgement",
    "g": "agenda",  # a reply to an agenda adds topics to the check-in
}
_SIG_LEN = 20  # 100 bits of base32
_MAX_DIGITS = 18  # ids are 64-bit integers: a longer number is no id of ours
_TOKEN = re.compile(rf"\+(\d+)-([a-z])(\d+)-([a-z2-7]{{{_SIG_LEN}}})@", re.IGNORECASE)


@dataclass(frozen=True)
class ReplyToken:
    organization_id: int
    kind: str  # "occurrence" | "pip_review" | "series" (the ORGANIZER of an iMIP invite)
    subject_id: int


class ForgedToken(ValueError):
    """An address looked like a reply address but its signature does not match."""


def _signature(key: bytes, org: int, kind_code: str, subject_id: int) -> str:
    mac = hmac.new(key, f"{org}:{kind_code}:{subject_id}".encode(), hashlib.sha256).digest()
    return base64.b32encode(mac).decode().lower()[:_SIG_LEN]


def reply_address(key: bytes, token: ReplyToken, mailbox: str, domain: str) -> str:
    code = next(c for c, k in KINDS.items() if k == token.kind)
    sig = _signature(key, token.organization_id, code, token.subject_id)
    return f"{mailbox}+{token.organization_id}-{code}{token.subject_id}-{sig}@{domain}"


def find_token(key: bytes, addresses: list[str]) -> ReplyToken | None:
    """The first validly signed token among ``addresses``.

    Returns None when no address carries a token at all; raises ForgedToken when one does but
    none verifies.
    """
    forged = False
    for address in addresses:
        for org, code, subject, sig in _TOKEN.findall(address):
            code = code.lower()
            if code not in KINDS or len(org) > _MAX_DIGITS or len(subject) > _MAX_DIGITS:
                forged = True  # we never sign such ids (nor could a database hold them)
                continue
            expected = _signature(key, int(org), code, int(subject))
            if hmac.compare_digest(expected, sig.lower()):
                return ReplyToken(int(org), KINDS[code], int(subject))
            forged = True
    if forged:
        raise ForgedToken("the reply address's signature does not match")
    return None
