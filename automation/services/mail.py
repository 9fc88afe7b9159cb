"""Operator views and actions on mail: status, a test send, clearing a failing address."""

from __future__ import annotations

import datetime as dt
import email.utils
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from automation import audit
from automation.db import transaction
from automation.emails import Rendered, build_message, make_message_id
from automation.models import MailboxState, OutboundMessage, OutboundState, Person
from automation.ports import OutgoingMail
from automation.runtime import Runtime
from automation.services.messages import sender_domain
from automation.services.tasks import create_task


@dataclass
class MailStatus:
    transport: str
    inbox: str
    sender: str
    outbox: dict[str, int]
    sent_last_24h: int
    daily_limit: int
    mailboxes: list[dict[str, Any]] = field(default_factory=list)
    failing_addresses: list[dict[str, Any]] = field(default_factory=list)


def mail_status(rt: Runtime, organization_id: int) -> MailStatus:
    now = rt.now()

    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat(timespec="seconds") if value else None

    with rt.factory() as session:
        counts = dict(
            session.execute(
                select(OutboundMessage.state, func.count())
                .where(OutboundMessage.organization_id == organization_id)
                .group_by(OutboundMessage.state)
            ).all()
        )
        sent_recently = session.scalar(
            select(func.count())
            .select_from(OutboundMessage)
            .where(
                OutboundMessage.organization_id == organization_id,
                OutboundMessage.state == OutboundState.SENT,
                OutboundMessage.sent_at > now - dt.timedelta(days=1),
            )
        )
        boxes = [
            {
                "provider": m.provider,
                "mailbox": m.mailbox,
                "has_cursor": bool(m.cursor),
                "polled_at": iso(m.polled_at),
                "full_synced_at": iso(m.full_synced_at),
                "error": m.error,
            }
            for m in session.scalars(
                select(MailboxState).where(MailboxState.organization_id == organization_id)
            )
        ]
        failing = [
            {
                "email": p.email,
                "since": iso(p.mail_failing_since),
                "reason": p.mail_failing_reason,
            }
            for p in session.scalars(
                select(Person)
                .where(
                    Person.organization_id == organization_id,
                    Person.mail_failing_since.is_not(None),
                )
                .order_by(Person.email)
            )
        ]
    return MailStatus(
        transport=rt.sender.name,
        inbox=rt.inbox.name,
        sender=rt.settings.mail_from,
        outbox={str(k): int(v) for k, v in counts.items()},
        sent_last_24h=int(sent_recently or 0),
        daily_limit=rt.settings.mail_daily_limit,
        mailboxes=boxes,
        failing_addresses=failing,
    )


@dataclass(frozen=True)
class TrialSend:
    message_id: str
    provider_id: str | None
    thread: str | None
    found_by_lookup: bool  # the exactly-once lookup sees it (what a retried send relies on)


def send_test_message(rt: Runtime, address: str) -> TrialSend:
    """Send one plain message through the configured transport, outside the outbox, and
    check that the transport's lookup by Message-ID finds it afterwards."""
    now = rt.now()
    message_id = make_message_id(f"test-send:{address}:{now.isoformat()}", sender_domain(rt))
    text = (
        f"This is a test message from {rt.settings.organization_name}'s check-in service, "
        f"sent through the {rt.sender.name} transport at {now:%Y-%m-%d %H:%M} UTC.\n\n"
        "Nothing needs to be done with it.\n"
    )
    rendered = Rendered(
        subject="Check-in service: test message",
        text=text,
        html=f"<p>{text.splitlines()[0]}</p><p>Nothing needs to be done with it.</p>",
    )
    raw = build_message(
        rendered, sender=rt.settings.mail_from, to=[address], message_id=message_id, date=now
    )
    mail = OutgoingMail(
        message_id=message_id,
        raw=raw,
        sender=email.utils.parseaddr(rt.settings.mail_from)[1],
        recipients=(address,),
    )
    sent = rt.sender.send(mail)
    found = rt.sender.already_sent(mail) is not None
    return TrialSend(sent.message_id, sent.provider_id, sent.thread, found)


def clear_failing(
    rt: Runtime, organization_id: int, address: str, operator: str, reason: str
) -> int:
    """HR says the address works again: clear the flag and send what was held for it.
    Returns how many held messages go out again."""
    now = rt.now()
    with transaction(rt.factory) as session:
        person = session.scalar(
            select(Person).where(
                Person.organization_id == organization_id,
                func.lower(Person.email) == address.strip().lower(),
            )
        )
        if person is None:
            raise LookupError(f"no person with the address {address} in this organization")
        was = person.mail_failing_reason
        person.mail_failing_since = None
        person.mail_failing_reason = None
        person.mail_soft_bounces = 0
        held = [
            m
            for m in session.scalars(
                select(OutboundMessage).where(
                    OutboundMessage.organization_id == organization_id,
                    OutboundMessage.state == OutboundState.HELD,
                )
            )
            if person.email in m.recipients
        ]
        for message in held:
            message.state, message.last_error = OutboundState.QUEUED, None
            create_task(
                session,
                organization_id,
                "send",
                f"send:{message.id}:released:{now.isoformat()}",
                message.id,
                now,
                now,
            )
        audit.record(
            session,
            organization_id,
            actor=operator,
            action="person.mail_ok",
            subject_kind="person",
            subject_id=person.id,
            at=now,
            data={"email": person.email, "was": was, "reason": reason, "released": len(held)},
        )
        return len(held)
