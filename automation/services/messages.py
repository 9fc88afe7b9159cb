"""Outgoing mail: the outbox, exactly-once sending, agendas and follow-up prompts."""

from __future__ import annotations

import datetime as dt
import email
import email.utils
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from sqlalchemy import bindparam, or_, select
from sqlalchemy.orm import Session, aliased, make_transient_to_detached

from automation import audit
from automation.db import insert_new_id
from automation.domain.cadence import Cadence, zone
from automation.domain.tokens import ReplyToken, reply_address
from automation.emails import build_message, make_message_id, render
from automation.models import (
    ActionItem,
    CheckinSeries,
    ConversationRecord,
    Occurrence,
    OccurrenceState,
    OutboundMessage,
    OutboundState,
    Person,
    Task,
)
from automation.models import Cadence as CadenceRow
from automation.ports import OutgoingMail, SentMail
from automation.runtime import Runtime
from automation.services.tasks import Deferred, create_task, handles

REPLY_MAILBOX = "checkin"


def when(moment: dt.datetime, tz_name: str) -> str:
    local = moment.astimezone(zone(tz_name))
    return f"{local:%A %d %B %Y, %H:%M} ({tz_name})"


def person_ctx(p: Person) -> dict[str, Any]:
    return {"name": p.name, "email": p.email}


def sender_domain(rt: Runtime) -> str:
    return email.utils.parseaddr(rt.settings.mail_from)[1].rpartition("@")[2] or "localhost"


def reply_to_for(rt: Runtime, org_id: int, kind: str, subject_id: int) -> str:
    token = ReplyToken(org_id, kind, subject_id)
    return reply_address(rt.settings.signing_key(), token, REPLY_MAILBOX, rt.settings.reply_domain)


def queue_email(
    rt: Runtime,
    session: Session,
    *,
    organization_id: int,
    key: str,
    kind: str,
    template: str,
    context: dict[str, Any],
    to: list[Person],
    reply_to: str | None = None,
    in_reply_to: str | None = None,
    occurrence_id: int | None = None,
    pip_review_id: int | None = None,
    calendar: tuple[str, bytes] | None = None,
    subject: str | None = None,
) -> OutboundMessage:
    """Put one email in the outbox (once per key) and schedule its sending. ``calendar`` is
    an iMIP part, ``(METHOD, ics bytes)`` (see :func:`automation.emails.build_message`).
    ``subject`` replaces the template's (a reply in an existing thread keeps its subject)."""
    now = rt.now()
    recipient = to[0]
    context = {
        "org": {"name": rt.settings.organization_name},
        "recipient": person_ctx(recipient),
        "preferences_url": f"{rt.settings.base_url}/preferences",
        **context,
    }
    rendered = render(rt.settings.templates_dir, template, context)
    if subject is not None:
        rendered = replace(rendered, subject=subject)
    message_id = make_message_id(f"{organization_id}:{key}", sender_domain(rt))
    raw = build_message(
        rendered,
        sender=rt.settings.mail_from,
        to=[email.utils.formataddr((p.name, p.email)) for p in to],
        message_id=message_id,
        date=now,
        reply_to=reply_to,
        in_reply_to=in_reply_to,
        references=[in_reply_to] if in_reply_to else None,
        preferences_url=context["preferences_url"],
        calendar=calendar,
    )
    values = {
        "organization_id": organization_id,
        "idempotency_key": key,
        "kind": kind,
        "message_id": message_id,
        "recipients": [p.email for p in to],
        "subject": rendered.subject,
        "raw": raw,
        "occurrence_id": occurrence_id,
        "pip_review_id": pip_review_id,
        "state": OutboundState.QUEUED,
        "attempts": 0,
        "last_error": None,
        "created_at": now,
        "sent_at": None,
        "provider_id": None,
        "provider_thread": None,
        "sent_message_id": None,
        "transport": None,
    }
    # Once per key: an INSERT that does nothing when the key exists (then the existing row
    # is returned) costs one statement, where a SELECT first would cost two. The rendering
    # is wasted only when the key exists, which a task's re-run after a commit rarely meets.
    new_id = insert_new_id(session, OutboundMessage, values, ("organization_id", "idempotency_key"))
    if new_id is None:
        return session.scalars(
            select(OutboundMessage).where(
                OutboundMessage.organization_id == organization_id,
                OutboundMessage.idempotency_key == key,
            )
        ).one()
    message = OutboundMessage(id=new_id, **values)
    make_transient_to_detached(message)
    session.add(message)
    create_task(session, organization_id, "send", f"send:{message.id}", message.id, now, now)
    return message


def outgoing(rt: Runtime, session: Session, message: OutboundMessage) -> OutgoingMail:
    """The transport's view of an outbox row. A message that follows another (a reminder
    after the prompt) carries the provider thread of the one it replies to."""
    thread = None
    parent_id = email.message_from_bytes(message.raw[:8192]).get("In-Reply-To")
    if parent_id:
        cited = parent_id.strip()
        thread = session.scalar(
            select(OutboundMessage.provider_thread).where(
                OutboundMessage.organization_id == message.organization_id,
                or_(
                    OutboundMessage.message_id == cited,
                    OutboundMessage.sent_message_id == cited,
                ),
            )
        )
    return OutgoingMail(
        message_id=message.message_id,
        raw=message.raw,
        sender=email.utils.parseaddr(rt.settings.mail_from)[1],
        recipients=tuple(message.recipients),
        thread=thread,
    )


def _failing_recipients(session: Session, message: OutboundMessage) -> list[str]:
    return list(
        session.scalars(
            select(Person.email).where(
                Person.organization_id == message.organization_id,
                Person.email.in_(message.recipients),
                Person.mail_failing_since.is_not(None),
            )
        )
    )


def _check_sending_limits(rt: Runtime, session: Session, message: OutboundMessage) -> None:
    """Per-sender caps (Workspace's daily limit, Exchange's per-minute one): a message over
    the cap waits for the oldest send in the window to age out. Never dropped. The embedded
    Maildir has no caps."""
    if rt.sender.name == "maildir":
        return
    now = rt.now()
    for window, cap in (
        (dt.timedelta(days=1), rt.settings.mail_daily_limit),
        (dt.timedelta(minutes=1), rt.settings.mail_per_minute),
    ):
        recent = list(
            session.scalars(
                select(OutboundMessage.sent_at)
                .where(
                    OutboundMessage.organization_id == message.organization_id,
                    OutboundMessage.state == OutboundState.SENT,
                    OutboundMessage.sent_at > now - window,
                )
                .order_by(OutboundMessage.sent_at.desc())
                .limit(cap)
            )
        )
        if len(recent) >= cap:
            oldest = recent[-1]
            assert oldest is not None
            raise Deferred(oldest + window, f"{cap} messages per {window} reached")


def record_sent(rt: Runtime, message: OutboundMessage, sent: SentMail) -> None:
    message.state = OutboundState.SENT
    message.sent_at = rt.now()
    message.transport = rt.sender.name
    message.provider_id = sent.provider_id
    message.provider_thread = sent.thread
    if sent.message_id != message.message_id:
        message.sent_message_id = sent.message_id  # the provider rewrote it: replies cite this


@handles("send")
def send_message(rt: Runtime, session: Session, task: Task) -> str:
    message = session.get(OutboundMessage, task.subject_id)
    if message is None or message.organization_id != task.organization_id:
        return "no-message"
    if message.state == OutboundState.SENT:
        return "already-sent"
    failing = _failing_recipients(session, message)
    if failing:
        # HR was told when the address started failing; sending again only bounces again.
        message.state = OutboundState.HELD
        message.last_error = "held: failing address " + ", ".join(failing)
        return message.last_error
    _check_sending_limits(rt, session, message)
    message.attempts += 1
    mail = outgoing(rt, session, message)
    # A worker may have died after the provider accepted the message and before this row was
    # marked sent: look for the earlier attempt before sending again. Only a task claimed
    # before can have one (each claim is committed on its own), so first attempts skip the
    # lookup and its quota.
    sent = rt.sender.already_sent(mail) if task.attempts > 1 else None
    if sent is not None:
        result = "found-earlier-attempt"
    else:
        sent = rt.sender.send(mail)
        result = "sent"
    record_sent(rt, message, sent)
    audit.record(
        session,
        message.organization_id,
        actor="worker",
        action="email.sent",
        subject_kind="outbound_message",
        subject_id=message.id,
        at=rt.now(),
        data={"kind": message.kind, "to": message.recipients, "message_id": message.message_id},
    )
    return result


@dataclass
class CheckinContext:
    """An occurrence with the people and cadence around it."""

    occurrence: Occurrence
    series: CheckinSeries
    manager: Person
    employee: Person
    cadence: Cadence

    def occurrence_ctx(self, tz_name: str) -> dict[str, Any]:
        return {
            "title": self.cadence.title.format(
                manager=self.manager.name, employee=self.employee.name
            ),
            "when": when(self.occurrence.start_at, tz_name),
            "duration_minutes": self.series.duration_minutes,
        }

    @property
    def label(self) -> str:
        local = self.occurrence.start_at.astimezone(zone(self.manager.timezone))
        return f"your check-in with {self.employee.name} on {local:%A %d %B}"


@cache
def _checkin_query() -> Any:
    """Built once: constructing the statement (two aliases, four joins) cost more Python time
    than running it."""
    manager, employee = aliased(Person), aliased(Person)
    return (
        select(Occurrence, CheckinSeries, manager, employee, CadenceRow)
        .join(
            CheckinSeries,
            (CheckinSeries.organization_id == Occurrence.organization_id)
            & (CheckinSeries.id == Occurrence.series_id),
        )
        .join(
            manager,
            (manager.organization_id == CheckinSeries.organization_id)
            & (manager.id == CheckinSeries.manager_id),
        )
        .join(
            employee,
            (employee.organization_id == CheckinSeries.organization_id)
            & (employee.id == CheckinSeries.employee_id),
        )
        .join(
            CadenceRow,
            (CadenceRow.organization_id == CheckinSeries.organization_id)
            & (CadenceRow.id == CheckinSeries.cadence_id),
        )
        .where(
            Occurrence.organization_id == bindparam("organization_id"),
            Occurrence.id == bindparam("occurrence_id"),
        )
    )


def load_checkin(
    session: Session, organization_id: int, occurrence_id: int
) -> CheckinContext | None:
    """The occurrence with its series, both people and the cadence: one query, and none for
    the rest of the session (a reply's processing asks for it several times)."""
    known: dict[tuple[int, int], CheckinContext | None] = session.info.setdefault("checkins", {})
    key = (organization_id, occurrence_id)
    if key in known:
        return known[key]
    row = session.execute(
        _checkin_query(), {"organization_id": organization_id, "occurrence_id": occurrence_id}
    ).one_or_none()
    ctx = None
    if row is not None:
        occ, series, boss, report, cadence_row = row
        ctx = CheckinContext(occ, series, boss, report, Cadence.from_dict(cadence_row.definition))
    known[key] = ctx
    return ctx


def open_action_items(session: Session, series: CheckinSeries) -> list[dict[str, Any]]:
    rows = session.execute(
        select(ActionItem, Person.name)
        .join(
            ConversationRecord,
            (ConversationRecord.id == ActionItem.record_id)
            & (ConversationRecord.organization_id == ActionItem.organization_id),
        )
        .join(
            Occurrence,
            (Occurrence.id == ConversationRecord.subject_id)
            & (Occurrence.organization_id == ConversationRecord.organization_id),
        )
        .outerjoin(
            Person,
            (Person.id == ActionItem.owner_id)
            & (Person.organization_id == ActionItem.organization_id),
        )
        .where(
            ActionItem.organization_id == series.organization_id,
            ConversationRecord.subject_kind == "occurrence",
            Occurrence.series_id == series.id,
            ActionItem.done.is_(False),
        )
        .order_by(ActionItem.id)
    )
    return [
        {"text": item.text, "owner": owner, "due": item.due_on.isoformat() if item.due_on else None}
        for item, owner in rows
    ]


def _not_needed(occ: Occurrence) -> bool:
    return occ.state in (OccurrenceState.CANCELLED, OccurrenceState.SKIPPED)


@handles("agenda")
def send_agenda(rt: Runtime, session: Session, task: Task) -> str:
    """The agenda, to the employee and to the manager (whose copy alone carries coaching
    prompts), built from open action items, goals, the PIP, development items, the cadence's
    questions and the topics either person added (:mod:`automation.services.agendas`)."""
    return _agendas(rt, session, task.organization_id, task.subject_id, update=False)


@handles("agenda_update")
def send_agenda_update(rt: Runtime, session: Session, task: Task) -> str:
    """Topics added by reply after the agenda went out: the agenda again, in its thread,
    with the new topics marked. Several topics added before this runs make one update."""
    return _agendas(rt, session, task.organization_id, task.subject_id, update=True)


def _reply_subject(subject: str) -> str:
    return subject if subject.lower().startswith("re:") else f"Re: {subject}"


def agenda_update_key(occurrence_id: int, inbound_message_id: int) -> str:
    return f"agenda_update:occurrence:{occurrence_id}:{inbound_message_id}"


def _agendas(
    rt: Runtime, session: Session, organization_id: int, occurrence_id: int, *, update: bool
) -> str:
    from automation.domain.agenda import build_agenda
    from automation.services import agendas

    ctx = load_checkin(session, organization_id, occurrence_id)
    if ctx is None:
        return "no-occurrence"
    if _not_needed(ctx.occurrence):
        return f"not-needed ({ctx.occurrence.state})"
    now = rt.now()
    if update and ctx.occurrence.start_at <= now:
        return "meeting-started"  # topics added now belong to the next check-in
    inputs = agendas.agenda_inputs(session, organization_id, [occurrence_id], now, roles=rt.roles)
    if occurrence_id not in inputs:
        return "no-occurrence"
    queued = 0
    for role, person in (("employee", ctx.employee), ("manager", ctx.manager)):
        previous = agendas.latest_snapshot(session, organization_id, occurrence_id, role)
        if update and previous is None:
            continue  # the agenda itself is not out yet: it will carry the topics
        if not update and previous is not None:
            continue  # sent already (a re-run): updates carry what came later
        agenda = build_agenda(inputs[occurrence_id], role, now, rt.coaching)
        sequence = (
            agendas.next_sequence(session, organization_id, occurrence_id, role) if update else 1
        )
        parent = (
            session.get(OutboundMessage, previous.outbound_message_id)
            if previous is not None and previous.outbound_message_id
            else None
        )
        if (
            update
            and previous is not None
            and not (set(t.id for t in agenda.topics) - set(previous.topic_ids or ()))
        ):
            continue  # nothing new since the last one (an earlier update carried it)
        message = queue_email(
            rt,
            session,
            organization_id=organization_id,
            key=f"agenda:occurrence:{occurrence_id}:{role}"
            + (f":{sequence}" if sequence > 1 else ""),
            kind="agenda",
            template="agenda",
            to=[person],
            occurrence_id=occurrence_id,
            reply_to=reply_to_for(rt, organization_id, "agenda", occurrence_id),
            in_reply_to=parent.message_id if parent is not None else None,
            subject=_reply_subject(parent.subject) if parent is not None else None,
            context={
                "manager": person_ctx(ctx.manager),
                "employee": person_ctx(ctx.employee),
                "occurrence": ctx.occurrence_ctx(person.timezone),
                "questions": list(ctx.cadence.questions),
                **agendas.agenda_context(
                    agenda,
                    person.timezone,
                    update_since=previous.built_at if update and previous is not None else None,
                ),
            },
        )
        agendas.record_agenda(
            session,
            organization_id,
            agenda,
            person,
            now,
            sequence=sequence,
            outbound_message_id=message.id,
        )
        queued += 1
    return f"queued {queued}" if update else "queued"


def followup_key(occurrence_id: int) -> str:
    return f"followup:occurrence:{occurrence_id}"


@handles("followup")
def send_followup(rt: Runtime, session: Session, task: Task) -> str:
    from automation.services.escalation import schedule_step  # the ladder starts here

    ctx = load_checkin(session, task.organization_id, task.subject_id)
    if ctx is None:
        return "no-occurrence"
    occ = ctx.occurrence
    if _not_needed(occ):
        return f"not-needed ({occ.state})"
    now = rt.now()
    if occ.state in (OccurrenceState.PLANNED, OccurrenceState.INVITED):
        occ.state = OccurrenceState.HELD
        occ.updated_at = now
        audit.record(
            session,
            occ.organization_id,
            actor="worker",
            action="occurrence.held",
            subject_kind="occurrence",
            subject_id=occ.id,
            at=now,
        )
    if occ.documented_at is not None:
        return "already-documented"
    queue_email(
        rt,
        session,
        organization_id=occ.organization_id,
        key=followup_key(occ.id),
        kind="followup",
        template="followup",
        to=[ctx.manager],
        occurrence_id=occ.id,
        reply_to=reply_to_for(rt, occ.organization_id, "occurrence", occ.id),
        context={
            "manager": person_ctx(ctx.manager),
            "employee": person_ctx(ctx.employee),
            "occurrence": ctx.occurrence_ctx(ctx.manager.timezone),
            "questions": list(ctx.cadence.questions),
            "commands_help": True,
        },
    )
    schedule_step(rt, session, occ.organization_id, "occurrence", occ.id, 0)
    return "queued"
