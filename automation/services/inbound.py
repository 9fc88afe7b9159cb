"""Inbound mail: store raw first, then turn a reply into a conversation record.

Whatever arrives is stored unchanged with its SHA-256 before anything parses it, so a parser
bug can never lose a manager's words. A message that cannot become a record (no reply token,
a forged one, a sender who is not on the check-in, an auto-reply) stays stored, quarantined
with the reason, and creates nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from automation import audit
from automation.db import transaction
from automation.domain.commands import parse_when
from automation.domain.tokens import ForgedToken, ReplyToken, find_token
from automation.models import (
    ActionItem,
    CheckinSeries,
    ConversationRecord,
    InboundMessage,
    InboundState,
    Occurrence,
    OccurrenceState,
    Organization,
    OutboundMessage,
    Person,
    PipReview,
    Task,
    TaskState,
)
from automation.replies import Extraction, ParsedEmail, decode_message, extract
from automation.runtime import Runtime
from automation.services.escalation import PIP_QUESTIONS, load_subject
from automation.services.messages import (
    load_checkin,
    person_ctx,
    queue_email,
    reply_to_for,
    when,
)
from automation.services.tasks import create_task, handles


@dataclass(frozen=True)
class Stored:
    inbound_id: int
    task_id: int
    duplicate: bool


def organization_id(session: Session, slug: str) -> int:
    org_id = session.scalar(select(Organization.id).where(Organization.slug == slug))
    if org_id is None:
        raise LookupError(
            f"organization {slug!r} does not exist: run `automation people import` "
            "or `automation run` once to create it"
        )
    return org_id


def store_inbound(rt: Runtime, raw: bytes, source: str) -> Stored:
    """Store one raw message and schedule its processing. The same bytes are stored once."""
    digest = hashlib.sha256(raw).hexdigest()
    now = rt.now()
    with transaction(rt.factory) as session:
        org = organization_id(session, rt.settings.organization)
        existing = session.scalar(
            select(InboundMessage).where(
                InboundMessage.organization_id == org, InboundMessage.sha256 == digest
            )
        )
        duplicate = existing is not None
        if existing is None:
            existing = InboundMessage(
                organization_id=org,
                raw=raw,
                sha256=digest,
                size=len(raw),
                source=source,
                state=InboundState.RECEIVED,
                received_at=now,
            )
            try:
                with session.begin_nested():
                    session.add(existing)
            except IntegrityError:  # the same message stored concurrently by another path
                existing = session.scalars(
                    select(InboundMessage).where(
                        InboundMessage.organization_id == org, InboundMessage.sha256 == digest
                    )
                ).one()
                duplicate = True
        task = create_task(session, org, "ingest", f"ingest:{existing.id}", existing.id, now, now)
        stored = Stored(existing.id, task.id, duplicate)
    if not duplicate:
        rt.enqueue(stored.task_id)
    return stored


def poll_inbox(rt: Runtime, limit: int = 100) -> int:
    """Move new messages from the inbox into the database; acknowledge only once stored."""
    count = 0
    for key, raw in rt.inbox.fetch(limit):
        store_inbound(rt, raw, source="maildir")
        rt.inbox.ack(key)
        count += 1
    return count


def _quarantine(session: Session, rt: Runtime, message: InboundMessage, reason: str) -> str:
    message.state = InboundState.QUARANTINED
    message.quarantine_reason = reason
    message.processed_at = rt.now()
    audit.record(
        session,
        message.organization_id,
        actor="ingest",
        action="inbound.quarantined",
        subject_kind="inbound_message",
        subject_id=message.id,
        at=rt.now(),
        data={"reason": reason, "sha256": message.sha256},
    )
    return f"quarantined: {reason}"


def _resolve(
    rt: Runtime, session: Session, message: InboundMessage, parsed: ParsedEmail
) -> ReplyToken | str:
    """The check-in a reply belongs to, or the reason it belongs to none."""
    try:
        token = find_token(rt.settings.signing_key(), list(parsed.to))
    except ForgedToken:
        return "forged reply token: the reply address's signature does not match"
    if token is None and parsed.in_reply_to:
        # Some clients reply to From instead of Reply-To: fall back to threading headers.
        prompt = session.scalar(
            select(OutboundMessage).where(
                OutboundMessage.organization_id == message.organization_id,
                OutboundMessage.message_id.in_(parsed.in_reply_to),
                OutboundMessage.kind.in_(("followup", "pip_review", "remind", "confirmation")),
            )
        )
        if prompt is not None and prompt.occurrence_id:
            token = ReplyToken(message.organization_id, "occurrence", prompt.occurrence_id)
        elif prompt is not None and prompt.pip_review_id:
            token = ReplyToken(message.organization_id, "pip_review", prompt.pip_review_id)
    if token is None:
        return "no check-in reference: not a reply to a check-in prompt"
    if token.organization_id != message.organization_id:
        return "reply token belongs to another organization"
    return token


@handles("ingest")
def ingest(rt: Runtime, session: Session, task: Task) -> str:
    message = session.get(InboundMessage, task.subject_id)
    if message is None or message.organization_id != task.organization_id:
        return "no-message"
    if message.state != InboundState.RECEIVED:
        return f"already-{message.state}"
    parsed = decode_message(message.raw)
    message.message_id = (parsed.message_id or "")[:998] or None
    message.from_address = (parsed.from_address or "")[:320] or None
    message.subject = parsed.subject
    if parsed.from_address is None:
        return _quarantine(session, rt, message, "no usable From address")
    if parsed.auto_submitted:
        return _quarantine(
            session,
            rt,
            message,
            "automatic message (auto-reply, bounce or bulk), not a person's reply",
        )
    token = _resolve(rt, session, message, parsed)
    if isinstance(token, str):
        return _quarantine(session, rt, message, token)
    subject = load_subject(session, message.organization_id, token.kind, token.subject_id)
    if subject is None:
        return _quarantine(session, rt, message, f"the {token.kind} this reply names is gone")
    participants = {
        subject.manager.email.lower(): subject.manager,
        subject.employee.email.lower(): subject.employee,
    }
    author = participants.get(parsed.from_address)
    if author is None:
        return _quarantine(
            session,
            rt,
            message,
            f"sender {parsed.from_address} is not a participant of this "
            f"{'check-in' if token.kind == 'occurrence' else 'PIP review'}",
        )
    if token.kind == "occurrence":
        ctx = load_checkin(session, message.organization_id, token.subject_id)
        assert ctx is not None
        questions = list(ctx.cadence.questions)
    else:
        questions = list(PIP_QUESTIONS)
    extraction = extract(parsed.text, questions, parsed.date or rt.now())
    record = _record(
        rt, session, message, token, author, subject.manager, subject.employee, extraction
    )
    applied = _apply_commands(rt, session, token, extraction, author)
    message.state = InboundState.RECORDED
    message.processed_at = rt.now()
    if token.kind == "occurrence":
        message.occurrence_id = token.subject_id
    else:
        message.pip_review_id = token.subject_id
    _confirm(
        rt,
        session,
        record,
        message,
        parsed,
        author,
        subject.manager,
        subject.employee,
        questions,
        extraction,
        applied,
        token,
    )
    return f"recorded v{record.version}"


def _record(
    rt: Runtime,
    session: Session,
    message: InboundMessage,
    token: ReplyToken,
    author: Person,
    manager: Person,
    employee: Person,
    extraction: Extraction,
) -> ConversationRecord:
    now = rt.now()
    version = (
        session.scalar(
            select(func.max(ConversationRecord.version)).where(
                ConversationRecord.organization_id == message.organization_id,
                ConversationRecord.subject_kind == token.kind,
                ConversationRecord.subject_id == token.subject_id,
            )
        )
        or 0
    ) + 1
    record = ConversationRecord(
        organization_id=message.organization_id,
        subject_kind=token.kind,
        subject_id=token.subject_id,
        version=version,
        source_message_id=message.id,
        author_id=author.id,
        body=extraction.body,
        answers={str(k): v for k, v in sorted(extraction.answers.items())},
        rating=extraction.rating,
        notes=extraction.notes,
        commands=[{"name": c.name, "argument": c.argument} for c in extraction.commands],
        created_at=now,
    )
    session.add(record)
    session.flush()
    first_names = {
        manager.name.split()[0].lower(): manager.id,
        employee.name.split()[0].lower(): employee.id,
    }
    for item in extraction.action_items:
        owner = (item.owner or "").lower()
        owner_id = {
            "manager": manager.id,
            "employee": employee.id,
            "i": author.id,
            "me": author.id,
        }.get(owner) or first_names.get(owner.split(" ")[0] if owner else "")
        session.add(
            ActionItem(
                organization_id=message.organization_id,
                record_id=record.id,
                owner_id=owner_id,
                text=item.text,
                due_on=item.due,
                done=False,
                created_at=now,
            )
        )
    if token.kind == "occurrence":
        occ = session.get(Occurrence, token.subject_id)
        assert occ is not None
        if occ.documented_at is None:
            occ.documented_at = now
            occ.updated_at = now
    else:
        review = session.get(PipReview, token.subject_id)
        assert review is not None
        if review.documented_at is None:
            review.documented_at = now
    audit.record(
        session,
        message.organization_id,
        actor=author.email,
        action="record.created",
        subject_kind=token.kind,
        subject_id=token.subject_id,
        at=now,
        data={
            "record_id": record.id,
            "version": version,
            "source_sha256": message.sha256,
            "action_items": len(extraction.action_items),
            "rating": extraction.rating,
        },
    )
    return record


def _apply_commands(
    rt: Runtime, session: Session, token: ReplyToken, extraction: Extraction, author: Person
) -> list[str]:
    """Carry out #skip, #cancel, #done and #reschedule; return what was done, in words."""
    if token.kind != "occurrence" or not extraction.commands:
        return [f"#{c.name} ignored (not a check-in)" for c in extraction.commands]
    ctx = load_checkin(session, author.organization_id, token.subject_id)
    assert ctx is not None
    occ, now, done = ctx.occurrence, rt.now(), []
    for command in extraction.commands:
        if command.name in ("skip", "cancel"):
            occ.state = (
                OccurrenceState.SKIPPED if command.name == "skip" else OccurrenceState.CANCELLED
            )
            occ.updated_at = now
            _series_changed(rt, session, ctx.series)
            done.append(f"marked {occ.state}")
        elif command.name == "done":
            done.append("marked documented")
        elif command.name == "reschedule":
            done.append(_reschedule(rt, session, ctx.series, ctx.employee, command.argument))
        audit.record(
            session,
            author.organization_id,
            actor=author.email,
            action=f"command.{command.name}",
            subject_kind="occurrence",
            subject_id=occ.id,
            at=now,
            data={"argument": command.argument, "result": done[-1]},
        )
    return done


def _series_changed(rt: Runtime, session: Session, series: CheckinSeries) -> None:
    series.sequence += 1
    series.updated_at = rt.now()
    create_task(
        session,
        series.organization_id,
        "invite",
        f"invite:series:{series.id}:{series.sequence}",
        series.id,
        rt.now(),
        rt.now(),
    )


def _reschedule(
    rt: Runtime, session: Session, series: CheckinSeries, employee: Person, argument: str
) -> str:
    from automation.domain.cadence import localize, zone

    now = rt.now()
    upcoming = session.scalar(
        select(Occurrence)
        .where(
            Occurrence.organization_id == series.organization_id,
            Occurrence.series_id == series.id,
            Occurrence.start_at > now,
            Occurrence.state.in_((OccurrenceState.PLANNED, OccurrenceState.INVITED)),
        )
        .order_by(Occurrence.start_at)
        .limit(1)
    )
    if upcoming is None:
        return "reschedule not applied: no upcoming meeting in this series"
    tz = zone(employee.timezone)
    start_local = upcoming.start_at.astimezone(tz)
    target = parse_when(argument, now.astimezone(tz).replace(tzinfo=None), start_local.time())
    if target is None:
        return f"reschedule not applied: could not read a date or time in {argument!r}"
    length = upcoming.end_at - upcoming.start_at
    new_start = localize(target, tz).astimezone(dt.UTC)
    shift = new_start - upcoming.start_at
    upcoming.start_at, upcoming.end_at = new_start, new_start + length
    upcoming.updated_at = now
    for task in session.scalars(
        select(Task).where(
            Task.organization_id == series.organization_id,
            Task.key.in_(
                [f"agenda:occurrence:{upcoming.id}", f"followup:occurrence:{upcoming.id}"]
            ),
            Task.state == TaskState.PENDING,
        )
    ):
        task.due_at = max(task.due_at + shift, now)
    _series_changed(rt, session, series)
    return f"moved the next meeting to {when(new_start, employee.timezone)}"


def _confirm(
    rt: Runtime,
    session: Session,
    record: ConversationRecord,
    message: InboundMessage,
    parsed: ParsedEmail,
    author: Person,
    manager: Person,
    employee: Person,
    questions: list[str],
    extraction: Extraction,
    applied: list[str],
    token: ReplyToken,
) -> None:
    occ_ctx: dict[str, object]
    if token.kind == "occurrence":
        ctx = load_checkin(session, record.organization_id, token.subject_id)
        assert ctx is not None
        occ_ctx = ctx.occurrence_ctx(author.timezone)
    else:
        review = session.get(PipReview, token.subject_id)
        assert review is not None
        occ_ctx = {
            "title": f"PIP review: {review.name}",
            "when": when(review.due_at, author.timezone),
            "duration_minutes": 0,
        }
    answers = [
        {
            "number": n,
            "question": questions[n - 1] if 0 < n <= len(questions) else "",
            "answer": text,
        }
        for n, text in sorted(extraction.answers.items())
    ]
    queue_email(
        rt,
        session,
        organization_id=record.organization_id,
        key=f"confirmation:record:{record.id}",
        kind="confirmation",
        template="confirmation",
        to=[author],
        in_reply_to=parsed.message_id,
        occurrence_id=token.subject_id if token.kind == "occurrence" else None,
        pip_review_id=token.subject_id if token.kind == "pip_review" else None,
        reply_to=reply_to_for(rt, record.organization_id, token.kind, token.subject_id),
        context={
            "manager": person_ctx(manager),
            "employee": person_ctx(employee),
            "occurrence": occ_ctx,
            "record": {
                "version": record.version,
                "answers": answers,
                "rating": record.rating,
                "action_items": [
                    {"text": a.text, "owner": a.owner, "due": a.due.isoformat() if a.due else None}
                    for a in extraction.action_items
                ],
                "commands": applied,
                "notes": record.notes,
            },
        },
    )
