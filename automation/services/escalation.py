"""One escalation mechanism for everything that can become overdue, and PIP reviews.

A subject (an occurrence awaiting documentation, or a PIP review) has a base time and a
ladder. Step N is a task due N's business days after the base, in the manager's zone. Running
a step checks first whether the subject got documented meanwhile; if so, the ladder stops.
The unique (subject, step) key of the escalations table means a step is sent at most once,
however often the tick or the task runs.

The console works the same subjects as a queue (:func:`overdue_queue`): an escalation can be
acknowledged there (:func:`acknowledge_escalation`), and the documenting of a check-in or a PIP
review moved to someone else (:func:`reassign`), who then gets its next reminders and may
document it by reply.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select, true
from sqlalchemy.orm import Session

from automation import audit
from automation.config import PipPlan
from automation.domain.cadence import LadderStep, add_business_days, localize, zone
from automation.models import (
    Acknowledgement,
    CheckinSeries,
    CorrectiveAction,
    Escalation,
    Occurrence,
    OccurrenceState,
    OutboundMessage,
    Person,
    Pip,
    PipGoal,
    PipReview,
    Reassignment,
    Task,
    TaskState,
)
from automation.models import Cadence as CadenceRow
from automation.runtime import Runtime
from automation.services import pips
from automation.services.messages import (
    followup_key,
    load_checkin,
    person_ctx,
    queue_email,
    reply_to_for,
    when,
)
from automation.services.tasks import create_task, handles


@dataclass
class Subject:
    kind: str  # occurrence | pip_review
    id: int
    organization_id: int
    manager: Person
    employee: Person
    base: dt.datetime
    ladder: tuple[LadderStep, ...]
    documented: bool
    label: str
    when: str
    prompt_key: str  # outbox key of the prompt that reminders thread under
    # Who documents it (a reply from them stops the ladder), when not the manager: for an
    # acknowledgement the person asked, for a PIP review whose template says
    # reviewer = "hr_partner" the employee's HR partner, for a check-in or PIP review
    # reassigned in the console the person it was reassigned to. Delays count in their time
    # zone, and the ladder's "manager" steps go to them.
    documenter: Person | None = None

    @property
    def responsible(self) -> Person:
        return self.documenter or self.manager


def load_subject(
    session: Session, organization_id: int, kind: str, subject_id: int
) -> Subject | None:
    if kind == "occurrence":
        ctx = load_checkin(session, organization_id, subject_id)
        if ctx is None:
            return None
        occ = ctx.occurrence
        done = occ.documented_at is not None or occ.state in (
            OccurrenceState.SKIPPED,
            OccurrenceState.CANCELLED,
        )
        moved = latest_reassignment(session, organization_id, kind, occ.id)
        documenter = session.get(Person, moved.person_id) if moved is not None else None
        if documenter is None or documenter.id == ctx.manager.id:
            return Subject(
                kind,
                occ.id,
                organization_id,
                ctx.manager,
                ctx.employee,
                occ.end_at,
                ctx.cadence.ladder,
                done,
                ctx.label,
                when(occ.start_at, ctx.manager.timezone),
                followup_key(occ.id),
            )
        # Reassigned: worded for the new documenter (it is not "your" check-in), and the
        # reminders thread under the prompt they were sent when it was reassigned to them.
        local = occ.start_at.astimezone(zone(documenter.timezone))
        assert moved is not None
        return Subject(
            kind,
            occ.id,
            organization_id,
            ctx.manager,
            ctx.employee,
            occ.end_at,
            ctx.cadence.ladder,
            done,
            f"{ctx.manager.name}'s check-in with {ctx.employee.name} on {local:%A %d %B}",
            when(occ.start_at, documenter.timezone),
            reassigned_prompt_key(kind, occ.id, moved.id),
            documenter=documenter,
        )
    if kind == "acknowledgement":
        return _acknowledgement_subject(session, organization_id, subject_id)
    review = session.get(PipReview, subject_id)
    if review is None or review.organization_id != organization_id:
        return None
    pip = session.get(Pip, review.pip_id)
    assert pip is not None
    manager, employee = session.get(Person, pip.manager_id), session.get(Person, pip.employee_id)
    assert manager and employee
    ladder = tuple(LadderStep(**s) for s in pip.ladder)
    moved = latest_reassignment(session, organization_id, kind, review.id)
    reviewer = pips.reviewer_given(session, pip, review, moved)
    # Reassigned (and the person still active): the reminders thread under the prompt they
    # were sent when it was reassigned to them.
    prompt_key = (
        reassigned_prompt_key(kind, review.id, moved.id)
        if moved is not None and moved.person_id == reviewer.id
        else f"pip_review:{review.id}"
    )
    return Subject(
        kind,
        review.id,
        organization_id,
        manager,
        employee,
        review.due_at,
        ladder,
        # A closed PIP's milestones are no longer owed.
        review.documented_at is not None or pip.state != "active",
        f"the PIP {'check-in' if review.kind == 'checkin' else 'review'} "
        f"\u201c{review.name}\u201d for {employee.name}",
        when(review.due_at, reviewer.timezone),
        prompt_key,
        documenter=reviewer if reviewer.id != manager.id else None,
    )


def _acknowledgement_subject(session: Session, organization_id: int, ack_id: int) -> Subject | None:
    from automation.services.pips import acknowledgement_subject

    ack = session.get(Acknowledgement, ack_id)
    if ack is None or ack.organization_id != organization_id:
        return None
    found = acknowledgement_subject(session, ack)
    if found is None:
        return None
    manager, person, label, prompt_key = found
    return Subject(
        "acknowledgement",
        ack.id,
        organization_id,
        manager,
        person,
        ack.due_at,
        tuple(LadderStep(**s) for s in ack.ladder),
        ack.acknowledged_at is not None,
        label,
        when(ack.due_at, person.timezone),
        prompt_key,
        documenter=person,
    )


def subtract_business_days(
    moment: dt.datetime,
    days: int,
    tz_name: str,
    business_weekdays: frozenset[int],
    holidays: Iterable[dt.date],
) -> dt.datetime:
    """``moment`` moved back by ``days`` business days in ``tz_name``, same wall time."""
    tz = zone(tz_name)
    closed = set(holidays)
    local = moment.astimezone(tz).replace(tzinfo=None)
    day, remaining = local.date(), days
    while remaining > 0:
        day -= dt.timedelta(days=1)
        if day.weekday() in business_weekdays and day not in closed:
            remaining -= 1
    return localize(dt.datetime.combine(day, local.time()), tz).astimezone(dt.UTC)


def step_due(rt: Runtime, subject: Subject, step: int) -> dt.datetime:
    """When a step falls due: business days after the base (before it, when negative), in the
    responsible person's zone, skipping weekends and configured holidays."""
    offset = subject.ladder[step].after_business_days
    args = (subject.responsible.timezone, rt.settings.business_weekdays, rt.settings.holidays)
    if offset < 0:
        return subtract_business_days(subject.base, -offset, *args)
    return add_business_days(subject.base, offset, *args)


def schedule_step(
    rt: Runtime, session: Session, organization_id: int, kind: str, subject_id: int, step: int
) -> Task | None:
    subject = load_subject(session, organization_id, kind, subject_id)
    if subject is None or step >= len(subject.ladder) or subject.documented:
        return None
    return create_task(
        session,
        organization_id,
        "escalate",
        f"escalate:{kind}:{subject_id}:{step}",
        subject_id,
        step_due(rt, subject, step),
        rt.now(),
    )


def recipient_id(
    kind: str, notify: str, manager: Person, employee: Person, responsible: Person
) -> int | None:
    """Whom a ladder step of ``notify`` goes to (None: nobody on record)."""
    if notify == "manager":
        if kind == "acknowledgement":
            return manager.id if manager.id != employee.id else None
        # Whoever documents it: the manager, a PIP review's reviewer, or the person a
        # check-in was reassigned to.
        return responsible.id
    return {
        "employee": employee.id,
        "hr_partner": employee.hr_partner_id,
        "managers_manager": manager.manager_id,
    }[notify]


def _recipient(session: Session, subject: Subject, notify: str) -> Person | None:
    target_id = recipient_id(
        subject.kind, notify, subject.manager, subject.employee, subject.responsible
    )
    return session.get(Person, target_id) if target_id else None


@handles("escalate")
def run_step(rt: Runtime, session: Session, task: Task) -> str:
    _, kind, subject_id, step_text = task.key.split(":")
    step = int(step_text)
    subject = load_subject(session, task.organization_id, kind, int(subject_id))
    if subject is None:
        return "no-subject"
    if subject.documented:
        return "documented"  # the ladder stops here
    already = session.scalar(
        select(Escalation).where(
            Escalation.organization_id == task.organization_id,
            Escalation.subject_kind == kind,
            Escalation.subject_id == subject.id,
            Escalation.step == step,
        )
    )
    if already is not None:
        return "already-sent"
    rung = subject.ladder[step]
    now = rt.now()
    recipient = _recipient(session, subject, rung.notify)
    skipped = f"no {rung.notify} on record" if recipient is None else None
    role = "reviewer" if kind == "pip_review" else "documenter"
    if (
        recipient is not None
        and kind != "acknowledgement"
        and subject.documenter is not None
        and rung.notify != "manager"
        and recipient.id == subject.documenter.id
    ):
        # An HR partner who is the review's reviewer (or someone a check-in was reassigned
        # to) is reminded by the "manager" steps; escalating to them about what they document
        # themselves would tell nobody new.
        skipped = f"the {rung.notify} is the {role}, reminded by the other steps"
    if skipped is not None:
        audit.record(
            session,
            task.organization_id,
            actor="escalation",
            action="escalation.skipped",
            subject_kind=kind,
            subject_id=subject.id,
            at=now,
            data={"step": step, "reason": skipped},
        )
        schedule_step(rt, session, task.organization_id, kind, subject.id, step + 1)
        return f"no-recipient ({rung.notify})" if recipient is None else f"skipped ({role})"
    assert recipient is not None
    # The one who can document gets the reply address that documents it.
    to_manager = recipient.id == subject.responsible.id
    prompt = session.scalar(
        select(OutboundMessage).where(
            OutboundMessage.organization_id == task.organization_id,
            OutboundMessage.idempotency_key == subject.prompt_key,
        )
    )
    threaded = to_manager and prompt is not None
    overdue = max((now - subject.base).days, 0)
    escalation = Escalation(
        organization_id=task.organization_id,
        subject_kind=kind,
        subject_id=subject.id,
        step=step,
        action=rung.action,
        recipient_id=recipient.id,
        created_at=now,
    )
    session.add(escalation)
    session.flush()
    ack = None
    if not to_manager:
        # Someone told of it (HR, the manager's manager) acknowledges by replying.
        ack = _acknowledgement_of_step(rt, session, escalation, recipient)
    message = queue_email(
        rt,
        session,
        organization_id=task.organization_id,
        key=f"escalation:{kind}:{subject.id}:{step}",
        kind=rung.action,
        template=rung.template,
        to=[recipient],
        # The manager can document straight from a reminder, in the prompt's thread.
        reply_to=reply_to_for(rt, task.organization_id, kind, subject.id)
        if to_manager
        else reply_to_for(rt, task.organization_id, "acknowledgement", ack.id),
        # Cite the prompt by the Message-ID its recipient saw (a provider may have rewritten
        # ours), under its subject: Gmail threads a message only when the subjects match.
        in_reply_to=(prompt.sent_message_id or prompt.message_id) if threaded else None,
        subject=f"Re: {prompt.subject}" if threaded else None,
        occurrence_id=subject.id if kind == "occurrence" else None,
        pip_review_id=subject.id if kind == "pip_review" else None,
        context={
            "manager": person_ctx(subject.manager),
            "employee": person_ctx(subject.employee),
            "item": {
                "label": subject.label,
                "when": subject.when,
                # The due time (a check-in's end, a review's or acknowledgement's due time),
                # and whether this step comes before it (a negative offset in the ladder):
                # then it is "due on", not "overdue since".
                "due": when(subject.base, subject.responsible.timezone),
                "upcoming": now < subject.base,
                "documenter": subject.responsible.name,
            },
            "days_overdue": overdue,
            "step": step + 1,
        },
    )
    escalation.outbound_message_id = message.id
    if ack is not None:
        ack.outbound_message_id = message.id
    audit.record(
        session,
        task.organization_id,
        actor="escalation",
        action=f"escalation.{rung.action}",
        subject_kind=kind,
        subject_id=subject.id,
        at=now,
        data={"step": step, "to": recipient.email, "days_overdue": overdue},
    )
    schedule_step(rt, session, task.organization_id, kind, subject.id, step + 1)
    return f"{rung.action} -> {rung.notify}"


def _acknowledgement_of_step(
    rt: Runtime, session: Session, escalation: Escalation, recipient: Person
) -> Acknowledgement:
    """A request, without a ladder of its own, that the recipient of a step acknowledge it."""
    now = rt.now()
    ack = Acknowledgement(
        organization_id=escalation.organization_id,
        subject_kind="escalation",
        subject_id=escalation.id,
        person_id=recipient.id,
        requested_at=now,
        due_at=now,
        ladder=[],
        created_at=now,
    )
    session.add(ack)
    session.flush()
    return ack


# --- PIPs ---------------------------------------------------------------------------------

PIP_QUESTIONS = pips.PIP_QUESTIONS  # the short set; defined with the PIPs, kept here by name


def start_pip(
    rt: Runtime, session: Session, organization_id: int, plan: PipPlan, start: dt.datetime
) -> Pip:
    """Create a PIP with its review milestones, each a task due at the review time."""
    employee = session.scalars(
        select(Person).where(
            Person.organization_id == organization_id, Person.email == plan.employee
        )
    ).one_or_none()
    if employee is None or employee.manager_id is None:
        raise ValueError(
            f"PIP employee {plan.employee} is unknown or has no manager: "
            "import them with a manager first"
        )
    now = rt.now()
    pip = Pip(
        organization_id=organization_id,
        employee_id=employee.id,
        manager_id=employee.manager_id,
        title=plan.title,
        started_on=start,
        ends_on=start + dt.timedelta(days=plan.duration_days),
        state="active",
        ladder=[
            {
                "after_business_days": s.after_business_days,
                "notify": s.notify,
                "template": s.template,
            }
            for s in plan.ladder
        ],
        created_at=now,
    )
    session.add(pip)
    session.flush()
    audit.record(
        session,
        organization_id,
        actor="hr",
        action="pip.started",
        subject_kind="pip",
        subject_id=pip.id,
        at=now,
        data={"employee": employee.email, "title": plan.title, "ends_on": pip.ends_on.isoformat()},
    )
    for name, days in plan.reviews:
        review = PipReview(
            organization_id=organization_id,
            pip_id=pip.id,
            name=name,
            due_at=start + dt.timedelta(days=days),
            created_at=now,
        )
        session.add(review)
        session.flush()
        create_task(
            session,
            organization_id,
            "pip_review",
            f"pip_review:{review.id}",
            review.id,
            review.due_at,
            now,
        )
    return pip


@handles("pip_review")
def prompt_pip_review(rt: Runtime, session: Session, task: Task) -> str:
    subject = load_subject(session, task.organization_id, "pip_review", task.subject_id)
    if subject is None:
        return "no-review"
    if subject.documented:
        return "already-documented"
    review = _queue_pip_review_prompt(rt, session, subject, subject.prompt_key)
    schedule_step(rt, session, task.organization_id, "pip_review", review.id, 0)
    return "queued"


def _queue_pip_review_prompt(
    rt: Runtime, session: Session, subject: Subject, key: str
) -> PipReview:
    """The review's prompt (its questions and goals, the reply address that documents it) to
    whoever documents it: the manager, the HR partner the template names, or the person it
    was reassigned to."""
    review = session.get(PipReview, subject.id)
    pip = session.get(Pip, review.pip_id) if review else None
    assert review and pip
    reviewer = subject.responsible
    goals = session.scalars(
        select(PipGoal)
        .where(PipGoal.organization_id == pip.organization_id, PipGoal.pip_id == pip.id)
        .order_by(PipGoal.position)
    ).all()
    queue_email(
        rt,
        session,
        organization_id=subject.organization_id,
        key=key,
        kind="pip_review",
        template="pip_review",
        to=[reviewer],
        pip_review_id=review.id,
        reply_to=reply_to_for(rt, subject.organization_id, "pip_review", review.id),
        context={
            "manager": person_ctx(subject.manager),
            "employee": person_ctx(subject.employee),
            "pip": {
                "title": pip.title,
                "ends_on": f"{pip.ends_on.astimezone(zone(reviewer.timezone)):%d %B %Y}",
            },
            "review": {
                "name": review.name,
                "when": subject.when,
                # Someone other than the manager (the HR partner, or whoever it was reassigned
                # to) is asked to share the agreed actions with the manager too.
                "reviewer": "hr_partner" if subject.documenter is not None else "manager",
                # Documented only once every question is answered (pips.required_items).
                "requires_all": bool(pips.required_items(pip, review)),
            },
            # So that "progress against each goal" can be answered goal by goal.
            "goals": [
                {
                    "position": g.position,
                    "goal": g.goal,
                    "success_criteria": g.success_criteria,
                    "due": g.due_on.isoformat() if g.due_on else None,
                }
                for g in goals
            ],
            # A review asks the documentation its PIP requires; a weekly check-in the short
            # set (see pips.review_questions). The reply is read against the same list.
            "questions": pips.review_questions(pip, review),
        },
    )
    return review


# --- the console's overdue queue: reassign, acknowledge, list ------------------------------

# What may be reassigned: check-ins, and PIP reviews and check-ins (pips.reviewer_of, which
# decides whose record documents a review, reads latest_reassignment first). An
# acknowledgement request never is: only the person asked can acknowledge what they were given.
REASSIGNABLE = ("occurrence", "pip_review")
_NOUN = {"occurrence": "check-in", "pip_review": "PIP review"}
QUEUE_KINDS = ("occurrence", "pip_review", "acknowledgement")
_OPEN_OCCURRENCE = (OccurrenceState.PLANNED, OccurrenceState.INVITED, OccurrenceState.HELD)


class QueueError(ValueError):
    """A queue action that cannot be done, in words for the person who asked."""


def reassigned_prompt_key(kind: str, subject_id: int, reassignment_id: int) -> str:
    return f"reassigned:{kind}:{subject_id}:{reassignment_id}"


def latest_reassignment(
    session: Session, organization_id: int, kind: str, subject_id: int
) -> Reassignment | None:
    """The reassignment in force for a subject: the latest row wins (none: the manager)."""
    if kind not in REASSIGNABLE:
        return None
    return session.scalar(
        select(Reassignment)
        .where(
            Reassignment.organization_id == organization_id,
            Reassignment.subject_kind == kind,
            Reassignment.subject_id == subject_id,
        )
        .order_by(Reassignment.id.desc())
        .limit(1)
    )


def reassignable_people(session: Session, organization_id: int) -> list[Person]:
    """Who a subject can be reassigned to: active people (the subject's employee aside)."""
    return list(
        session.scalars(
            select(Person)
            .where(
                Person.organization_id == organization_id,
                Person.active.is_(True),
                Person.erased_at.is_(None),
            )
            .order_by(Person.name, Person.id)
        )
    )


def reassign(
    rt: Runtime,
    session: Session,
    organization_id: int,
    kind: str,
    subject_id: int,
    person_id: int,
    *,
    actor: str,
    reason: str = "",
) -> Reassignment:
    """Move the documenting of a check-in or a PIP review to ``person_id`` (the manager, or
    the HR partner reviewing a PIP, is on leave: someone else documents it).

    A row is added (the latest wins, see :func:`latest_reassignment`), so that from now on
    :func:`load_subject` names them as the documenter (for a PIP review through
    :func:`automation.services.pips.reviewer_of`, while they are active): the ladder's next
    "manager" steps remind them (with the reply address that documents it), an escalation
    names them, and a reply from them is accepted and documents the subject (the inbound path
    accepts the documenter as a participant; a PIP review still needs every required item
    answered). The manager and the employee can still reply, and their replies are kept; for a
    PIP review they no longer document it unless it is theirs again. The new documenter is
    sent the subject's prompt at once (a check-in's follow-up, a PIP review's review email).
    Audited as ``escalation.reassigned``.
    """
    if kind not in REASSIGNABLE:
        raise QueueError("Only check-ins and PIP reviews can be reassigned.")
    noun = _NOUN[kind]
    subject = load_subject(session, organization_id, kind, subject_id)
    if subject is None:
        raise QueueError(f"No such {noun}.")
    if subject.documented:
        if kind == "pip_review":
            raise QueueError("This PIP review is documented already, or its PIP is closed.")
        raise QueueError(f"This {noun} is documented already.")
    person = session.get(Person, person_id)
    if (
        person is None
        or person.organization_id != organization_id
        or not person.active
        or person.erased_at is not None
    ):
        raise QueueError("Choose an active person of the organization.")
    if person.id == subject.employee.id:
        raise QueueError(f"The employee cannot document their own {noun}.")
    previous = subject.responsible
    if person.id == previous.id:
        raise QueueError(f"{person.name} documents it already.")
    now = rt.now()
    row = Reassignment(
        organization_id=organization_id,
        subject_kind=kind,
        subject_id=subject.id,
        person_id=person.id,
        by=actor,
        reason=reason.strip(),
        created_at=now,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        organization_id,
        actor=actor,
        action="escalation.reassigned",
        subject_kind=kind,
        subject_id=subject.id,
        at=now,
        data={
            "reassignment_id": row.id,
            "from": previous.email,
            "to": person.email,
            "reason": row.reason,
        },
    )
    _prompt_new_documenter(rt, session, organization_id, kind, subject.id, row, person)
    return row


def _prompt_new_documenter(
    rt: Runtime,
    session: Session,
    organization_id: int,
    kind: str,
    subject_id: int,
    row: Reassignment,
    person: Person,
) -> None:
    """The subject's prompt (its questions, the reply address that documents it), to the
    person it was reassigned to; later reminders thread under it. For a check-in its
    follow-up, for a PIP review the email :func:`prompt_pip_review` sends."""
    key = reassigned_prompt_key(kind, subject_id, row.id)
    if kind == "pip_review":
        # Read again with the new row in force: worded for them, in their time zone.
        subject = load_subject(session, organization_id, kind, subject_id)
        assert subject is not None and subject.responsible.id == person.id
        _queue_pip_review_prompt(rt, session, subject, key)
        return
    occurrence_id = subject_id
    ctx = load_checkin(session, organization_id, occurrence_id)
    assert ctx is not None
    queue_email(
        rt,
        session,
        organization_id=organization_id,
        key=key,
        kind="followup",
        template="followup",
        to=[person],
        occurrence_id=occurrence_id,
        reply_to=reply_to_for(rt, organization_id, "occurrence", occurrence_id),
        context={
            "manager": person_ctx(ctx.manager),
            "employee": person_ctx(ctx.employee),
            "occurrence": ctx.occurrence_ctx(person.timezone),
            "questions": list(ctx.cadence.questions),
            "commands_help": True,
        },
    )


def acknowledge_escalation(
    rt: Runtime,
    session: Session,
    organization_id: int,
    kind: str,
    subject_id: int,
    *,
    actor: str,
    note: str = "",
) -> list[Acknowledgement]:
    """Acknowledge, from the console, the escalation of a subject: "I have seen this and I am
    on it". Returns the acknowledgements it closed (none: nothing was open).

    Every open acknowledgement request of the subject's escalation steps (those sent to the
    HR partner or the manager's manager, see :func:`_acknowledgement_of_step`) is set
    acknowledged, with ``note`` as its comment, as a reply to the step's email would set it
    (no source message: the audit entry ``escalation.acknowledged`` says who, and no
    confirmation email, since the person acknowledging sees it on the page). A step's request
    has no ladder of its own, so nothing else changes: acknowledging does **not** document
    the check-in or review, and the subject's ladder runs on. Its later steps still go out
    until it is documented (:func:`run_step` stops only at documentation).
    """
    rows = session.execute(
        select(Acknowledgement, Escalation)
        .join(
            Escalation,
            (Escalation.organization_id == Acknowledgement.organization_id)
            & (Escalation.id == Acknowledgement.subject_id),
        )
        .where(
            Acknowledgement.organization_id == organization_id,
            Acknowledgement.subject_kind == "escalation",
            Acknowledgement.acknowledged_at.is_(None),
            Escalation.subject_kind == kind,
            Escalation.subject_id == subject_id,
        )
        .order_by(Escalation.step, Acknowledgement.id)
    ).all()
    if not rows:
        return []
    now = rt.now()
    comment = note.strip() or None
    for ack, _ in rows:
        ack.acknowledged_at = now
        ack.comment = comment
    audit.record(
        session,
        organization_id,
        actor=actor,
        action="escalation.acknowledged",
        subject_kind=kind,
        subject_id=subject_id,
        at=now,
        data={
            "acknowledgement_ids": [ack.id for ack, _ in rows],
            "steps": [step.step for _, step in rows],
            # Whose requests these were; the note itself stays on the rows (erasable).
            "people": sorted({ack.person_id for ack, _ in rows}),
            "note": comment is not None,
        },
    )
    return [ack for ack, _ in rows]


@dataclass(frozen=True)
class SentStep:
    step: int  # 0-based, as stored
    action: str  # remind | escalate
    to: Person
    at: dt.datetime


@dataclass(frozen=True)
class NextStep:
    step: int
    action: str
    notify: str  # manager | employee | hr_partner | managers_manager
    to: Person | None  # None: nobody on record (the step will be skipped)
    due_at: dt.datetime


@dataclass(frozen=True)
class OpenAcknowledgement:
    id: int
    step: int
    person: Person
    requested_at: dt.datetime


@dataclass
class QueueItem:
    """One overdue subject as the console lists it."""

    kind: str  # occurrence | pip_review | acknowledgement
    id: int
    what: str
    employee: Person
    manager: Person
    responsible: Person  # who documents (or, for an acknowledgement, acknowledges) it
    reassigned: bool
    due_at: dt.datetime
    days_overdue: int
    starts_at: dt.datetime | None = None  # a check-in's start
    sent: list[SentStep] = field(default_factory=list)
    next_step: NextStep | None = None
    open_acknowledgements: list[OpenAcknowledgement] = field(default_factory=list)

    @property
    def reassignable(self) -> bool:
        return self.kind in REASSIGNABLE


@dataclass
class Queue:
    items: list[QueueItem]
    more: bool  # there are more than the items listed


def _visible(column: Any, visible: set[int] | None) -> Any:
    return true() if visible is None else column.in_(sorted(visible) or [-1])


def _per_kind(kind_column: Any, id_column: Any, subjects: dict[str, list[int]]) -> Any:
    """WHERE (kind, id) is one of ``subjects``, one IN list per kind."""
    return or_(*(and_(kind_column == k, id_column.in_(ids)) for k, ids in subjects.items()))


def overdue_queue(
    session: Session,
    organization_id: int,
    now: dt.datetime,
    visible: set[int] | None = None,
    limit: int = 500,
) -> Queue:
    """Everything overdue, most overdue first: check-ins that ended and are not documented,
    PIP reviews and check-ins past due and not documented (of active PIPs), acknowledgement
    requests past due and not acknowledged. Each with its employee, who is responsible, the
    due time, days overdue, the ladder steps sent, the next step due and the open
    acknowledgements of its steps.

    ``visible`` keeps the subjects about those people (a manager's chain; None: everyone).
    A fixed number of queries whatever the length (each kind's candidates, then the details
    of the ``limit`` most overdue in one query per table); people and PIPs are loaded first,
    so the shared helpers' ``session.get`` calls read the identity map.
    """
    cut = limit + 1
    occurrences = session.execute(
        select(Occurrence, CheckinSeries)
        .join(
            CheckinSeries,
            (CheckinSeries.organization_id == Occurrence.organization_id)
            & (CheckinSeries.id == Occurrence.series_id),
        )
        .where(
            Occurrence.organization_id == organization_id,
            Occurrence.end_at < now,
            Occurrence.documented_at.is_(None),
            Occurrence.state.in_(list(_OPEN_OCCURRENCE)),
            _visible(CheckinSeries.employee_id, visible),
        )
        .order_by(Occurrence.end_at, Occurrence.id)
        .limit(cut)
    ).all()
    reviews = session.execute(
        select(PipReview, Pip)
        .join(
            Pip, (Pip.organization_id == PipReview.organization_id) & (Pip.id == PipReview.pip_id)
        )
        .where(
            PipReview.organization_id == organization_id,
            PipReview.due_at < now,
            PipReview.documented_at.is_(None),
            Pip.state == "active",
            _visible(Pip.employee_id, visible),
        )
        .order_by(PipReview.due_at, PipReview.id)
        .limit(cut)
    ).all()
    requests = session.scalars(
        select(Acknowledgement)
        .where(
            Acknowledgement.organization_id == organization_id,
            # A step's own request is shown with the subject it is about.
            Acknowledgement.subject_kind != "escalation",
            Acknowledgement.acknowledged_at.is_(None),
            Acknowledgement.due_at < now,
            _visible(Acknowledgement.person_id, visible),
        )
        .order_by(Acknowledgement.due_at, Acknowledgement.id)
        .limit(cut)
    ).all()
    candidates: list[tuple[dt.datetime, str, int, Any]] = [
        (occ.end_at, "occurrence", occ.id, (occ, series)) for occ, series in occurrences
    ]
    candidates += [(r.due_at, "pip_review", r.id, (r, pip)) for r, pip in reviews]
    candidates += [(a.due_at, "acknowledgement", a.id, a) for a in requests]
    candidates.sort(key=lambda c: (c[0], QUEUE_KINDS.index(c[1]), c[2]))
    more = len(candidates) > limit
    candidates = candidates[:limit]
    subjects: dict[str, list[int]] = {}
    for _, kind, subject_id, _ in candidates:
        subjects.setdefault(kind, []).append(subject_id)
    if not candidates:
        return Queue([], more)

    # What the acknowledgement requests are about (their manager and label come from them).
    ack_rows = [c[3] for c in candidates if c[1] == "acknowledgement"]
    about: dict[str, set[int]] = {}
    for a in ack_rows:
        about.setdefault(a.subject_kind, set()).add(a.subject_id)
    pips_of_acks = (
        session.scalars(
            select(Pip).where(Pip.organization_id == organization_id, Pip.id.in_(about["pip"]))
        ).all()
        if "pip" in about
        else []
    )
    if "corrective_action" in about:
        session.scalars(
            select(CorrectiveAction).where(
                CorrectiveAction.organization_id == organization_id,
                CorrectiveAction.id.in_(about["corrective_action"]),
            )
        ).all()

    reassigned: dict[tuple[str, int], Reassignment] = {}
    movable = {k: v for k, v in subjects.items() if k in REASSIGNABLE}
    if movable:
        for row in session.scalars(
            select(Reassignment)
            .where(
                Reassignment.organization_id == organization_id,
                _per_kind(Reassignment.subject_kind, Reassignment.subject_id, movable),
            )
            .order_by(Reassignment.id)
        ):
            reassigned[(row.subject_kind, row.subject_id)] = row  # the latest wins
    steps: dict[tuple[str, int], list[Escalation]] = {}
    for esc in session.scalars(
        select(Escalation)
        .where(
            Escalation.organization_id == organization_id,
            _per_kind(Escalation.subject_kind, Escalation.subject_id, subjects),
        )
        .order_by(Escalation.step)
    ):
        steps.setdefault((esc.subject_kind, esc.subject_id), []).append(esc)
    by_escalation = {esc.id: esc for found in steps.values() for esc in found}
    open_acks = (
        session.scalars(
            select(Acknowledgement)
            .where(
                Acknowledgement.organization_id == organization_id,
                Acknowledgement.subject_kind == "escalation",
                Acknowledgement.subject_id.in_(list(by_escalation)),
                Acknowledgement.acknowledged_at.is_(None),
            )
            .order_by(Acknowledgement.id)
        ).all()
        if by_escalation
        else []
    )
    pending: dict[tuple[str, int], Task] = {}
    for task in session.scalars(
        select(Task).where(
            Task.organization_id == organization_id,
            Task.kind == "escalate",
            Task.state.in_([TaskState.PENDING, TaskState.LEASED]),
            Task.subject_id.in_(sorted({i for ids in subjects.values() for i in ids})),
        )
    ):
        _, kind, subject_id, step = task.key.split(":")
        key = (kind, int(subject_id))
        if kind in subjects and (key not in pending or task.due_at < pending[key].due_at):
            pending[key] = task
    cadence_ids = {row[1].cadence_id for _, kind, _, row in candidates if kind == "occurrence"}
    ladders = {
        cadence_id: tuple(LadderStep(**s) for s in definition["ladder"])
        for cadence_id, definition in session.execute(
            select(CadenceRow.id, CadenceRow.definition).where(
                CadenceRow.organization_id == organization_id,
                CadenceRow.id.in_(sorted(cadence_ids) or [-1]),
            )
        )
    }

    # Everyone named, in two rounds: the people of the subjects, then their managers and HR
    # partners (the next steps' recipients, an HR partner reviewer).
    wanted: set[int] = set()
    for _, kind, _, row in candidates:
        if kind in ("occurrence", "pip_review"):  # (occurrence, series) or (review, pip)
            wanted |= {row[1].employee_id, row[1].manager_id}
        else:
            wanted.add(row.person_id)
    wanted |= {pip.manager_id for pip in pips_of_acks}
    wanted |= {row.person_id for row in reassigned.values()}
    wanted |= {esc.recipient_id for esc in by_escalation.values()}
    wanted |= {ack.person_id for ack in open_acks}
    people = _people(session, organization_id, wanted)
    people |= _people(
        session,
        organization_id,
        {
            other
            for p in people.values()
            for other in (p.manager_id, p.hr_partner_id)
            if other is not None and other not in people
        },
    )
    acks_of_step: dict[int, list[Acknowledgement]] = {}
    for ack in open_acks:
        acks_of_step.setdefault(ack.subject_id, []).append(ack)

    items = []
    for due, kind, subject_id, row in candidates:
        if kind == "occurrence":
            occ, series = row
            employee, manager = people[series.employee_id], people[series.manager_id]
            moved = reassigned.get((kind, subject_id))
            responsible = people[moved.person_id] if moved is not None else manager
            ladder = ladders.get(series.cadence_id, ())
            item = QueueItem(
                kind, subject_id, "Check-in", employee, manager, responsible,
                moved is not None and moved.person_id != manager.id, due, 0,
                starts_at=occ.start_at,
            )  # fmt: skip
        elif kind == "pip_review":
            review, pip = row
            employee, manager = people[pip.employee_id], people[pip.manager_id]
            # The reassignments were read above (the people are loaded): no query per row.
            moved = reassigned.get((kind, subject_id))
            responsible = pips.reviewer_given(session, pip, review, moved)
            planned = pips.reviewer_given(session, pip, review, None)
            ladder = tuple(LadderStep(**s) for s in pip.ladder)
            what = "PIP check-in" if review.kind == "checkin" else "PIP review"
            item = QueueItem(
                kind, subject_id, f"{what} \u201c{review.name}\u201d ({pip.title})",
                employee, manager, responsible, responsible.id != planned.id, due, 0,
            )  # fmt: skip
        else:
            found = pips.acknowledgement_subject(session, row)
            employee = people[row.person_id]
            manager = found[0] if found is not None else employee
            label = found[2] if found is not None else row.subject_kind.replace("_", " ")
            ladder = tuple(LadderStep(**s) for s in row.ladder)
            item = QueueItem(
                kind, subject_id, f"Acknowledgement of {label}", employee, manager, employee,
                False, due, 0,
            )  # fmt: skip
        item.days_overdue = max((now - due).days, 0)
        for esc in steps.get((kind, subject_id), []):
            item.sent.append(
                SentStep(esc.step, esc.action, people[esc.recipient_id], esc.created_at)
            )
            for ack in acks_of_step.get(esc.id, []):
                item.open_acknowledgements.append(
                    OpenAcknowledgement(ack.id, esc.step, people[ack.person_id], ack.requested_at)
                )
        task = pending.get((kind, subject_id))
        if task is not None:
            step = int(task.key.rsplit(":", 1)[1])
            if step < len(ladder):
                rung = ladder[step]
                to = recipient_id(kind, rung.notify, manager, employee, item.responsible)
                item.next_step = NextStep(
                    step, rung.action, rung.notify, people.get(to) if to else None, task.due_at
                )
        items.append(item)
    return Queue(items, more)


def _people(session: Session, organization_id: int, ids: set[int]) -> dict[int, Person]:
    if not ids:
        return {}
    return {
        p.id: p
        for p in session.scalars(
            select(Person).where(Person.organization_id == organization_id, Person.id.in_(ids))
        )
    }
