"""One escalation mechanism for everything that can become overdue, and PIP reviews.

A subject (an occurrence awaiting documentation, or a PIP review) has a base time and a
ladder. Step N is a task due N's business days after the base, in the manager's zone. Running
a step checks first whether the subject got documented meanwhile; if so, the ladder stops.
The unique (subject, step) key of the escalations table means a step is sent at most once,
however often the tick or the task runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from automation import audit
from automation.config import PipPlan
from automation.domain.cadence import LadderStep, add_business_days, localize, zone
from automation.models import (
    Acknowledgement,
    Escalation,
    OccurrenceState,
    OutboundMessage,
    Person,
    Pip,
    PipGoal,
    PipReview,
    Task,
)
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
    # reviewer = "hr_partner" the employee's HR partner. Delays count in their time zone, and
    # the ladder's "manager" steps go to them.
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
    reviewer = pips.reviewer_of(session, pip, review)
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
        f"pip_review:{review.id}",
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


def _recipient(session: Session, subject: Subject, notify: str) -> Person | None:
    target_id = {
        # A PIP review's "manager" steps remind whoever documents it (its reviewer).
        "manager": subject.responsible.id
        if subject.kind == "pip_review"
        else subject.manager.id
        if subject.kind != "acknowledgement"
        else (subject.manager.id if subject.manager.id != subject.employee.id else None),
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
    skipped = f"no {rung.notify} on record" if recipient is None else None
    if (
        recipient is not None
        and kind == "pip_review"
        and subject.documenter is not None
        and rung.notify != "manager"
        and recipient.id == subject.documenter.id
    ):
        # An HR partner who is the review's reviewer is reminded by the "manager" steps;
        # escalating to them about their own review would tell nobody new.
        skipped = f"the {rung.notify} is the reviewer, reminded by the other steps"
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
        return f"no-recipient ({rung.notify})" if recipient is None else "skipped (reviewer)"
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
    review = session.get(PipReview, subject.id)
    pip = session.get(Pip, review.pip_id) if review else None
    assert review and pip
    reviewer = subject.responsible  # the manager, or the HR partner the template names
    goals = session.scalars(
        select(PipGoal)
        .where(PipGoal.organization_id == pip.organization_id, PipGoal.pip_id == pip.id)
        .order_by(PipGoal.position)
    ).all()
    queue_email(
        rt,
        session,
        organization_id=task.organization_id,
        key=subject.prompt_key,
        kind="pip_review",
        template="pip_review",
        to=[reviewer],
        pip_review_id=review.id,
        reply_to=reply_to_for(rt, task.organization_id, "pip_review", review.id),
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
    schedule_step(rt, session, task.organization_id, "pip_review", review.id, 0)
    return "queued"
