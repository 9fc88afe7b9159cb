"""One escalation mechanism for everything that can become overdue, and PIP reviews.

A subject (an occurrence awaiting documentation, or a PIP review) has a base time and a
ladder. Step N is a task due N's business days after the base, in the manager's zone. Running
a step checks first whether the subject got documented meanwhile; if so, the ladder stops.
The unique (subject, step) key of the escalations table means a step is sent at most once,
however often the tick or the task runs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from automation import audit
from automation.config import PipPlan
from automation.domain.cadence import LadderStep, add_business_days, zone
from automation.models import (
    Escalation,
    OccurrenceState,
    OutboundMessage,
    Person,
    Pip,
    PipReview,
    Task,
)
from automation.runtime import Runtime
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
    review = session.get(PipReview, subject_id)
    if review is None or review.organization_id != organization_id:
        return None
    pip = session.get(Pip, review.pip_id)
    assert pip is not None
    manager, employee = session.get(Person, pip.manager_id), session.get(Person, pip.employee_id)
    assert manager and employee
    ladder = tuple(LadderStep(**s) for s in pip.ladder)
    return Subject(
        kind,
        review.id,
        organization_id,
        manager,
        employee,
        review.due_at,
        ladder,
        review.documented_at is not None,
        f"the PIP review \u201c{review.name}\u201d for {employee.name}",
        when(review.due_at, manager.timezone),
        f"pip_review:{review.id}",
    )


def step_due(rt: Runtime, subject: Subject, step: int) -> dt.datetime:
    return add_business_days(
        subject.base,
        subject.ladder[step].after_business_days,
        subject.manager.timezone,
        rt.settings.business_weekdays,
        rt.settings.holidays,
    )


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


def _recipient(session: Session, subject: Subject, notify: str) -> Person | None:
    target_id = {
        "manager": subject.manager.id,
        "employee": subject.employee.id,
        "hr_partner": subject.employee.hr_partner_id,
        "managers_manager": subject.manager.manager_id,
    }[notify]
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
    if recipient is None:
        audit.record(
            session,
            task.organization_id,
            actor="escalation",
            action="escalation.skipped",
            subject_kind=kind,
            subject_id=subject.id,
            at=now,
            data={"step": step, "reason": f"no {rung.notify} on record"},
        )
        schedule_step(rt, session, task.organization_id, kind, subject.id, step + 1)
        return f"no-recipient ({rung.notify})"
    to_manager = recipient.id == subject.manager.id
    prompt = session.scalar(
        select(OutboundMessage).where(
            OutboundMessage.organization_id == task.organization_id,
            OutboundMessage.idempotency_key == subject.prompt_key,
        )
    )
    threaded = to_manager and prompt is not None
    overdue = max((now - subject.base).days, 0)
    message = queue_email(
        rt,
        session,
        organization_id=task.organization_id,
        key=f"escalation:{kind}:{subject.id}:{step}",
        kind=rung.action,
        template=rung.template,
        to=[recipient],
        # The manager can document straight from a reminder, in the prompt's thread.
        reply_to=reply_to_for(rt, task.organization_id, kind, subject.id) if to_manager else None,
        # Cite the prompt by the Message-ID its recipient saw (a provider may have rewritten
        # ours), under its subject: Gmail threads a message only when the subjects match.
        in_reply_to=(prompt.sent_message_id or prompt.message_id) if threaded else None,
        subject=f"Re: {prompt.subject}" if threaded else None,
        occurrence_id=subject.id if kind == "occurrence" else None,
        pip_review_id=subject.id if kind == "pip_review" else None,
        context={
            "manager": person_ctx(subject.manager),
            "employee": person_ctx(subject.employee),
            "item": {"label": subject.label, "when": subject.when},
            "days_overdue": overdue,
            "step": step + 1,
        },
    )
    escalation = Escalation(
        organization_id=task.organization_id,
        subject_kind=kind,
        subject_id=subject.id,
        step=step,
        action=rung.action,
        recipient_id=recipient.id,
        outbound_message_id=message.id,
        created_at=now,
    )
    session.add(escalation)
    session.flush()
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


# --- PIPs ---------------------------------------------------------------------------------

PIP_QUESTIONS = (
    "Progress against each goal, with evidence",
    "Support provided since the last review",
    "Outcome of this review (on track / at risk / not met)",
)


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
    review = session.get(PipReview, subject.id)
    pip = session.get(Pip, review.pip_id) if review else None
    assert review and pip
    queue_email(
        rt,
        session,
        organization_id=task.organization_id,
        key=subject.prompt_key,
        kind="pip_review",
        template="pip_review",
        to=[subject.manager],
        pip_review_id=review.id,
        reply_to=reply_to_for(rt, task.organization_id, "pip_review", review.id),
        context={
            "manager": person_ctx(subject.manager),
            "employee": person_ctx(subject.employee),
            "pip": {
                "title": pip.title,
                "ends_on": f"{pip.ends_on.astimezone(zone(subject.manager.timezone)):%d %B %Y}",
            },
            "review": {"name": review.name, "when": subject.when},
            "questions": list(PIP_QUESTIONS),
        },
    )
    schedule_step(rt, session, task.organization_id, "pip_review", review.id, 0)
    return "queued"
