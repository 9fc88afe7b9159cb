"""A mixed stream of inbound mail at volume: what the test suite and the benchmark pour in.

Replies to real prompts (some top-posted, some with commands), strangers, forged tokens,
auto-replies, bounces, byte garbage, truncated MIME, wrong charsets, the same Message-ID
with other bytes, and exact re-deliveries. Deterministic for a seed. The check that goes
with it: every distinct message is stored once and ends either as a record or kept with a
reason; nothing is left unprocessed.
"""

from __future__ import annotations

import email.utils
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from automation.models import NOT_RECORDED, InboundMessage, InboundState, OutboundMessage

KINDS = (
    "reply",
    "reply",
    "reply",
    "stranger",
    "forged",
    "auto_reply",
    "bounce",
    "garbage",
    "truncated",
    "charset",
    "same_id",
    "redelivery",
)


def _reply(prompt: OutboundMessage, sender: str, n: int, rng: random.Random) -> bytes:
    parsed = email.message_from_bytes(prompt.raw)
    body = rng.choice(
        [
            f"1. Good progress on item {n}.\n2. Nothing blocking.\n4. {rng.randint(1, 5)}\n",
            f"Quick one: went well, rating {rng.randint(1, 5)}/5.\n\nAction: send notes {n}\n",
            "#skip\n",
            f"Answers inline.\n\n> 1. What went well?\nShipped {n}.\n",
        ]
    )
    return (
        f"From: {sender}\r\nTo: {parsed['Reply-To']}\r\nSubject: Re: {parsed['Subject']}\r\n"
        f"Message-ID: <volume-{n}@client.test>\r\nIn-Reply-To: {prompt.message_id}\r\n"
        f"Date: {email.utils.format_datetime(email.utils.localtime())}\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


def stream(
    prompts: Sequence[OutboundMessage], managers: dict[str, str], count: int, seed: int = 7
) -> Iterator[tuple[str, bytes]]:
    """``count`` (kind, raw bytes). ``managers`` maps a prompt's Message-ID to the address
    allowed to answer it."""
    rng = random.Random(seed)
    earlier: list[bytes] = []
    for n in range(count):
        kind = KINDS[n % len(KINDS)]
        prompt = prompts[n % len(prompts)]
        if kind == "reply":
            raw = _reply(prompt, managers[prompt.message_id], n, rng)
        elif kind == "stranger":
            raw = _reply(prompt, f"stranger{n}@elsewhere.test", n, rng)
        elif kind == "forged":
            raw = _reply(prompt, managers[prompt.message_id], n, rng).replace(
                b"checkin+", b"checkin+9", 1
            )
        elif kind == "auto_reply":
            raw = _reply(prompt, managers[prompt.message_id], n, rng).replace(
                b"Subject: Re:", b"Auto-Submitted: auto-replied\r\nSubject: Out of Office: Re:", 1
            )
        elif kind == "bounce":
            raw = (
                f"From: MAILER-DAEMON@mx.test\r\nTo: checkins@example.com\r\n"
                f"Subject: Undelivered Mail\r\nMessage-ID: <dsn-{n}@mx.test>\r\n"
                'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
                "\r\n--B\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
                "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
                "Reporting-MTA: dns; mx.test\r\n\r\n"
                f"Final-Recipient: rfc822; nobody{n}@elsewhere.test\r\n"
                "Action: failed\r\nStatus: 5.1.1\r\n\r\n--B--\r\n"
            ).encode()
        elif kind == "garbage":
            raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 400)))
        elif kind == "truncated":
            whole = _reply(prompt, managers[prompt.message_id], n, rng)
            raw = whole[: rng.randint(10, max(11, len(whole) // 2))]
        elif kind == "charset":
            raw = _reply(prompt, managers[prompt.message_id], n, rng).replace(
                b"charset=utf-8", b"charset=x-no-such-charset", 1
            ) + "Grüße, ça va — 日本語\r\n".encode("iso-2022-jp", "replace")
        elif kind == "same_id" and earlier:
            raw = earlier[-1].replace(b"\r\n\r\n", b"\r\nX-Resent: yes\r\n\r\n", 1)
        elif kind == "redelivery" and earlier:
            raw = earlier[rng.randrange(len(earlier))]
        else:
            raw = _reply(prompt, managers[prompt.message_id], n, rng)
        earlier.append(raw)
        yield kind, raw


def prompts_and_managers(rt) -> tuple[list[OutboundMessage], dict[str, str]]:  # type: ignore[no-untyped-def]
    """The follow-up prompts sent so far, and who may answer each (its check-in's manager)."""
    from automation.models import CheckinSeries, Person

    with rt.factory() as session:
        prompts = list(
            session.scalars(select(OutboundMessage).where(OutboundMessage.kind == "followup"))
        )
        managers = {}
        for prompt in prompts:
            series = session.scalars(
                select(CheckinSeries)
                .join(Person, Person.id == CheckinSeries.employee_id)
                .where(Person.email == prompt.recipients[0])
            ).first()
            manager = session.get(Person, series.manager_id) if series else None
            managers[prompt.message_id] = manager.email if manager else prompt.recipients[0]
    return prompts, managers


@dataclass(frozen=True)
class Outcome:
    distinct: int
    stored: int
    states: dict[str, int]
    without_reason: int  # kept without a record, but with no reason: must be 0
    unprocessed: int  # still "received": must be 0


def outcome(session: Session, organization_id: int, distinct: int) -> Outcome:
    states = Counter(
        dict(
            session.execute(
                select(InboundMessage.state, func.count())
                .where(InboundMessage.organization_id == organization_id)
                .group_by(InboundMessage.state)
            ).all()
        )
    )
    without_reason = session.scalar(
        select(func.count())
        .select_from(InboundMessage)
        .where(
            InboundMessage.organization_id == organization_id,
            InboundMessage.state.in_(NOT_RECORDED),
            func.coalesce(InboundMessage.quarantine_reason, "") == "",
        )
    )
    return Outcome(
        distinct=distinct,
        stored=sum(states.values()),
        states={str(k): int(v) for k, v in states.items()},
        without_reason=int(without_reason or 0),
        unprocessed=states.get(InboundState.RECEIVED, 0),
    )
