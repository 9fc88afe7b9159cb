"""Performance improvement plans from templates, written warnings, acknowledgements.

A PIP started from a template (``config/pips/*.toml``) gets its goals, weekly check-ins and
review milestones. Check-ins and reviews are both ``pip_reviews`` rows (``kind`` says which),
so each is prompted, documented by its reviewer's reply and escalated by the one ladder in
:mod:`automation.services.escalation`. The template's required documentation is kept on the
PIP (``pips.documentation``): a review is documented once its reviewer (the manager, or the
employee's HR partner when the template says ``reviewer = "hr_partner"``) has answered every
item; the weekly check-ins are the manager's and documented by any reply of theirs. The
console's overdue queue can reassign either to someone else, who is then the reviewer
(:func:`reviewer_of` reads the reassignment first).
The weekly check-ins are also one calendar series, written through the calendar adapter. The
employee gets the plan by email from a signed reply address; their reply is the
acknowledgement (an ``acknowledgements`` row pointing at the plan and at the inbound message),
confirmed to them once by email, and an unanswered request escalates along the template's
acknowledgement ladder. Written warnings and corrective actions (``corrective_actions``) are
acknowledged the same way. Every change is in the audit log.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from automation import audit
from automation.config import GoalSpec, PipTemplate
from automation.domain.cadence import (
    Cadence,
    LadderStep,
    add_business_days,
    choose_slot,
    expand,
    zone,
)
from automation.domain.commands import WarningDraft
from automation.models import (
    Acknowledgement,
    ConversationRecord,
    CorrectiveAction,
    Escalation,
    InboundMessage,
    Occurrence,
    OutboundMessage,
    Person,
    Pip,
    PipGoal,
    PipReview,
    Reassignment,
    Task,
    TaskState,
)
from automation.ports import Attendee, SeriesEvent
from automation.runtime import Runtime
from automation.services.messages import person_ctx, queue_email, reply_to_for, when
from automation.services.tasks import create_task, handles

OUTCOMES = ("successful", "extended", "ended")
WARNING_KINDS = ("written_warning", "corrective_action")

# Asked by the weekly PIP check-ins, and by the reviews of PIPs kept from before their required
# documentation was stored on the row (``pips.documentation`` null).
PIP_QUESTIONS = (
    "Progress against each goal, with evidence",
    "Support provided since the last review",
    "Outcome of this review (on track / at risk / not met)",
)


class PipError(ValueError):
    """A PIP operation refused; the text says why and what to do."""


def _ladder_json(ladder: tuple[LadderStep, ...]) -> list[dict[str, Any]]:
    return [
        {"after_business_days": s.after_business_days, "notify": s.notify, "template": s.template}
        for s in ladder
    ]


def _person(session: Session, organization_id: int, email: str) -> Person:
    person = session.scalar(
        select(Person).where(
            Person.organization_id == organization_id, Person.email == email.strip().lower()
        )
    )
    if person is None:
        raise PipError(f"nobody with the address {email} is on record: import them first")
    return person


def _checkin_cadence(template: PipTemplate) -> Cadence:
    return Cadence(
        name=f"pip:{template.name}",
        frequency="weekly",
        interval_weeks=1,
        duration_minutes=template.checkin_minutes,
        weekdays=template.checkin_weekdays or (1, 2, 3),
        window_start=dt.time.fromisoformat(template.checkin_window[0]),
        window_end=dt.time.fromisoformat(template.checkin_window[1]),
        agenda_lead_hours=24,
        followup_delay_hours=1,
        questions=template.documentation,
        ladder=template.ladder,
        title="PIP check-in {manager} / {employee}",
    )


# --- starting a PIP --------------------------------------------------------------------------


def start_pip_from_template(
    rt: Runtime,
    session: Session,
    organization_id: int,
    employee_email: str,
    template: PipTemplate,
    goals: list[GoalSpec],
    *,
    actor: str = "hr",
    start: dt.datetime | None = None,
) -> Pip:
    """Create the PIP, its goals, weekly check-ins and reviews, the calendar series and the
    plan email to the employee, with its acknowledgement request."""
    from automation.services.escalation import schedule_step
    from automation.services.planning import _busy_by_person

    employee = _person(session, organization_id, employee_email)
    if employee.manager_id is None:
        raise PipError(f"{employee.email} has no manager on record: import them with one")
    manager = session.get(Person, employee.manager_id)
    assert manager is not None
    if template.reviewer == "hr_partner" and employee.hr_partner_id is None:
        raise PipError(
            f"{employee.email} has no HR partner on record, and the {template.name} template's "
            "reviews are documented by the HR partner: import them with one"
        )
    active = session.scalar(
        select(Pip.id).where(
            Pip.organization_id == organization_id,
            Pip.employee_id == employee.id,
            Pip.state == "active",
        )
    )
    if active is not None:
        raise PipError(f"{employee.email} already has an active PIP ({active})")
    now = rt.now()
    start = start or now
    ends = start + dt.timedelta(days=template.duration_days)
    pip = Pip(
        organization_id=organization_id,
        employee_id=employee.id,
        manager_id=manager.id,
        title=template.title,
        started_on=start,
        ends_on=ends,
        state="active",
        ladder=_ladder_json(template.ladder),
        created_at=now,
        template=template.name,
        reviewer=template.reviewer,
        calendar_sequence=0,
        checkin_timezone=employee.timezone,
        checkin_duration_minutes=template.checkin_minutes,
        extended_days=0,
        # Kept with the PIP: a later edit of the template changes nothing for this one.
        documentation=list(template.documentation),
    )
    session.add(pip)
    session.flush()
    pip.calendar_uid = f"pip-{organization_id}-{pip.id}@{rt.settings.reply_domain}"
    for position, spec in enumerate(goals, start=1):
        owner_id = {"employee": employee.id, "manager": manager.id}.get(spec.owner)
        if owner_id is None and "@" in spec.owner:
            owner_id = session.scalar(
                select(Person.id).where(
                    Person.organization_id == organization_id, Person.email == spec.owner
                )
            )
        session.add(
            PipGoal(
                organization_id=organization_id,
                pip_id=pip.id,
                position=position,
                goal=spec.goal,
                success_criteria=spec.success_criteria,
                owner=spec.owner,
                owner_id=owner_id,
                due_on=spec.due,
                created_at=now,
            )
        )
    # The weekly check-ins: a slot free for both people, as planning chooses one.
    cadence = _checkin_cadence(template)
    busy = _busy_by_person(session, organization_id, start, ends)
    slot, rule = choose_slot(
        cadence,
        employee.timezone,
        start,
        busy[manager.id] + busy[employee.id],
        min(template.duration_days, rt.settings.planning_horizon_days),
    )
    pip.checkin_dtstart_local = slot.isoformat(timespec="seconds")
    pip.checkin_rrule = rule
    instances = expand(rule, slot, employee.timezone, template.checkin_minutes, start, ends)
    pip.checkin_rrule = f"{rule};COUNT={len(instances)}"
    milestones: list[PipReview] = []
    for week, inst in enumerate(instances, start=1):
        milestones.append(_milestone(pip, f"Week {week} check-in", "checkin", inst.end, now))
    # Each review is a meeting of its own, right after the weekly check-in's slot on the
    # review day (so it never overlaps it), and is due when that meeting ends.
    meeting = (
        dt.datetime.combine(dt.date(2000, 1, 3), slot.time())
        + dt.timedelta(minutes=template.checkin_minutes)
    ).time()
    for name, days in template.reviews:
        due = review_due(rt, start + dt.timedelta(days=days), meeting, employee.timezone,
                         template.checkin_minutes)  # fmt: skip
        milestones.append(_milestone(pip, name, "review", due, now))
    session.add_all(milestones)
    session.flush()
    for review in milestones:
        _schedule_milestone(session, review, now)
        schedule_step(rt, session, organization_id, "pip_review", review.id, 0)
    audit.record(
        session,
        organization_id,
        actor=actor,
        action="pip.started",
        subject_kind="pip",
        subject_id=pip.id,
        at=now,
        data={
            "employee": employee.email,
            "manager": manager.email,
            "template": template.name,
            "title": template.title,
            "ends_on": ends.isoformat(),
            "goals": len(goals),
            "checkins": len(instances),
            "reviews": [n for n, _ in template.reviews],
            "reviewer": template.reviewer,
            "documentation": list(template.documentation),
            "rrule": pip.checkin_rrule,
        },
    )
    create_task(session, organization_id, "pip_invite", f"pip_invite:{pip.id}:0", pip.id, now, now)
    _send_plan(rt, session, pip, employee, manager, template, milestones)
    return pip


def review_due(
    rt: Runtime, day_of: dt.datetime, at: dt.time, tz_name: str, minutes: int
) -> dt.datetime:
    """When a review meeting held on ``day_of``'s local date at ``at`` ends; a weekend or
    holiday moves it to the business day before (reviews are not pushed past their day)."""
    tz = zone(tz_name)
    day = day_of.astimezone(tz).date()
    closed = set(rt.settings.holidays)
    while day.weekday() not in rt.settings.business_weekdays or day in closed:
        day -= dt.timedelta(days=1)
    start = dt.datetime.combine(day, at, tzinfo=tz)
    return (start + dt.timedelta(minutes=minutes)).astimezone(dt.UTC)


def review_uid(pip: Pip, review: PipReview) -> str:
    """The calendar UID of a review meeting: beside the PIP's series UID."""
    assert pip.calendar_uid
    local, _, domain = pip.calendar_uid.partition("@")
    return f"{local}-review-{review.id}@{domain}"


def _milestone(pip: Pip, name: str, kind: str, due: dt.datetime, now: dt.datetime) -> PipReview:
    return PipReview(
        organization_id=pip.organization_id,
        pip_id=pip.id,
        name=name,
        kind=kind,
        due_at=due,
        original_due_at=due,
        created_at=now,
    )


def _schedule_milestone(session: Session, review: PipReview, now: dt.datetime) -> None:
    """The prompt to the manager at the milestone's due time (the PIP review task)."""
    create_task(
        session,
        review.organization_id,
        "pip_review",
        f"pip_review:{review.id}",
        review.id,
        review.due_at,
        now,
    )


def _send_plan(
    rt: Runtime,
    session: Session,
    pip: Pip,
    employee: Person,
    manager: Person,
    template: PipTemplate,
    milestones: list[PipReview],
) -> None:
    tz = employee.timezone
    goals = session.scalars(
        select(PipGoal).where(PipGoal.pip_id == pip.id).order_by(PipGoal.position)
    ).all()
    names = {employee.id: employee.name, manager.id: manager.name}
    ack = request_acknowledgement(
        rt,
        session,
        subject_kind="pip",
        subject_id=pip.id,
        person=employee,
        within_business_days=template.acknowledgement_days,
        ladder=template.acknowledgement_ladder,
    )
    checkins = [m for m in milestones if m.kind == "checkin"]
    first = (
        checkins[0].due_at - dt.timedelta(minutes=template.checkin_minutes) if checkins else None
    )
    message = queue_email(
        rt,
        session,
        organization_id=pip.organization_id,
        key=f"pip_plan:{pip.id}",
        kind="pip_plan",
        template="pip_plan",
        to=[employee],
        reply_to=reply_to_for(rt, pip.organization_id, "acknowledgement", ack.id),
        context={
            "manager": person_ctx(manager),
            "employee": person_ctx(employee),
            "pip": {
                "title": pip.title,
                "starts_on": f"{pip.started_on.astimezone(zone(tz)):%d %B %Y}",
                "ends_on": f"{pip.ends_on.astimezone(zone(tz)):%d %B %Y}",
                "duration_days": template.duration_days,
            },
            "goals": [
                {
                    "goal": g.goal,
                    "success_criteria": g.success_criteria,
                    "owner": names.get(g.owner_id or 0, g.owner),
                    "due": g.due_on.isoformat() if g.due_on else None,
                }
                for g in goals
            ],
            "checkins": {"first": when(first, tz) if first else "to be arranged"},
            "reviews": [
                {"name": m.name, "when": when(m.due_at, tz)}
                for m in milestones
                if m.kind == "review"
            ],
            "acknowledge_by": when(ack.due_at, tz),
        },
    )
    ack.outbound_message_id = message.id


@handles("pip_invite")
def write_pip_invite(rt: Runtime, session: Session, task: Task) -> str:
    """Write (or rewrite, after an extension or closing) the PIP's weekly check-in series and
    one meeting per review. The provider's ids are kept on the PIP, so a rewrite updates the
    events it made (Graph needs its own id for that) instead of making new ones."""
    pip = session.get(Pip, task.subject_id)
    if pip is None or pip.organization_id != task.organization_id or not pip.calendar_uid:
        return "no-pip"
    manager, employee = session.get(Person, pip.manager_id), session.get(Person, pip.employee_id)
    assert manager and employee and pip.checkin_rrule and pip.checkin_dtstart_local
    tz = pip.checkin_timezone or employee.timezone
    minutes = pip.checkin_duration_minutes or 30
    ids: dict[str, str] = dict(pip.calendar_ids or {})
    people = (Attendee(employee.email, employee.name), Attendee(manager.email, manager.name))
    events = [
        SeriesEvent(
            uid=pip.calendar_uid,
            sequence=pip.calendar_sequence or 0,
            summary=f"PIP check-in {manager.name} / {employee.name}",
            description=f"Weekly check-in of the {pip.title}. The manager documents it by reply.",
            organizer=Attendee(manager.email, manager.name),
            attendees=people,
            dtstart_local=dt.datetime.fromisoformat(pip.checkin_dtstart_local),
            timezone=tz,
            duration_minutes=minutes,
            rrule=pip.checkin_rrule,
            overrides=(),
            cancelled=pip.state != "active",
            provider_id=ids.get(pip.calendar_uid),
        )
    ]
    for review in session.scalars(
        select(PipReview)
        .where(PipReview.pip_id == pip.id, PipReview.kind == "review")
        .order_by(PipReview.due_at)
    ):
        uid = review_uid(pip, review)
        reviewer = reviewer_of(session, pip, review)
        attendees = people + (
            (Attendee(reviewer.email, reviewer.name),) if reviewer.id != manager.id else ()
        )
        start = (review.due_at - dt.timedelta(minutes=minutes)).astimezone(zone(tz))
        # A closed PIP cancels the review meetings still ahead; those held stay on record.
        ahead = pip.closed_at is None or review.due_at > pip.closed_at
        events.append(
            SeriesEvent(
                uid=uid,
                sequence=pip.calendar_sequence or 0,
                summary=f"PIP {review.name}: {employee.name}",
                description=(
                    f"{review.name} of the {pip.title}. {reviewer.name} documents it by "
                    "replying to the review email, which asks the required documentation."
                ),
                organizer=Attendee(manager.email, manager.name),
                attendees=attendees,
                dtstart_local=start.replace(tzinfo=None),
                timezone=tz,
                duration_minutes=minutes,
                rrule="FREQ=DAILY;COUNT=1",
                overrides=(),
                cancelled=pip.state != "active" and ahead and review.documented_at is None,
                provider_id=ids.get(uid),
            )
        )
    for event in events:
        ids[event.uid] = rt.calendar.write_series(event) or ids.get(event.uid, "")
    pip.calendar_ids = ids
    audit.record(
        session,
        pip.organization_id,
        actor="worker",
        action="pip.invited",
        subject_kind="pip",
        subject_id=pip.id,
        at=rt.now(),
        data={
            "uid": pip.calendar_uid,
            "sequence": pip.calendar_sequence or 0,
            "provider_id": ids.get(pip.calendar_uid),
            "review_meetings": len(events) - 1,
        },
    )
    return f"written {pip.calendar_uid} and {len(events) - 1} review(s) seq {pip.calendar_sequence}"


def _rewrite_calendar(session: Session, pip: Pip, now: dt.datetime) -> None:
    pip.calendar_sequence = (pip.calendar_sequence or 0) + 1
    create_task(
        session,
        pip.organization_id,
        "pip_invite",
        f"pip_invite:{pip.id}:{pip.calendar_sequence}",
        pip.id,
        now,
        now,
    )


# --- what a milestone asks, who documents it, and when it counts as documented ---------------


def review_questions(pip: Pip, review: PipReview) -> list[str]:
    """The numbered questions a milestone's prompt asks and its replies are read against.

    A review asks the documentation its PIP requires (the template's, kept on the PIP when
    it started), so the record's numbered answers are the template's items. A weekly check-in
    keeps the short :data:`PIP_QUESTIONS`: it is a half-hour status conversation held every
    week, where the whole review documentation would be mostly repetition and so get
    skipped; the reviews are where the plan is formally documented. A review of a PIP from
    before the documentation was kept (``documentation`` null) asks the short set too.
    """
    if review.kind != "checkin" and pip.documentation:
        return [str(q) for q in pip.documentation]
    return list(PIP_QUESTIONS)


def required_items(pip: Pip, review: PipReview) -> list[str]:
    """What the reviewer's record must answer before the milestone counts as documented: for
    a review, every item of the PIP's documentation. A check-in, or a review of a PIP from
    before the documentation was kept, requires nothing: any record of its reviewer
    documents it, as it always did."""
    if review.kind == "checkin" or not pip.documentation:
        return []
    return [str(q) for q in pip.documentation]


def reviewer_of(session: Session, pip: Pip, review: PipReview) -> Person:
    """Who documents the milestone. First whoever it was reassigned to in the console's
    overdue queue (:func:`automation.services.escalation.reassign`; the latest reassignment
    wins), while that person is active. Otherwise the weekly check-ins are the manager's (they
    hold them); a review is the manager's, or the employee's HR partner's when the template
    says ``reviewer = "hr_partner"``. If the employee has no (active) HR partner any more, it
    falls back to the manager rather than to nobody."""
    from automation.services.escalation import latest_reassignment

    moved = latest_reassignment(session, review.organization_id, "pip_review", review.id)
    return reviewer_given(session, pip, review, moved)


def reviewer_given(
    session: Session, pip: Pip, review: PipReview, moved: Reassignment | None
) -> Person:
    """:func:`reviewer_of` with the review's latest reassignment already read (None: never
    reassigned, or to ask who the plan itself names), so that a list of reviews reads the
    reassignments of all of them in one query."""
    if moved is not None:
        person = session.get(Person, moved.person_id)
        if person is not None and person.active:
            return person
    manager = session.get(Person, pip.manager_id)
    assert manager is not None
    if review.kind == "checkin" or pip.reviewer != "hr_partner":
        return manager
    employee = session.get(Person, pip.employee_id)
    hr_id = employee.hr_partner_id if employee else None
    hr = session.get(Person, hr_id) if hr_id else None
    return hr if hr is not None and hr.active else manager


def missing_items(
    session: Session, pip: Pip, review: PipReview, reviewer: Person
) -> list[tuple[int, str]]:
    """The required items, as (number, question), that no record of the reviewer's on this
    milestone answers yet. Every version is kept, so together they are the reviewer's record:
    a later reply answering only what was missing completes it."""
    required = required_items(pip, review)
    if not required:
        return []
    answered: set[str] = set()
    for answers in session.scalars(
        select(ConversationRecord.answers).where(
            ConversationRecord.organization_id == review.organization_id,
            ConversationRecord.subject_kind == "pip_review",
            ConversationRecord.subject_id == review.id,
            ConversationRecord.author_id == reviewer.id,
        )
    ):
        answered |= {str(k) for k, v in (answers or {}).items() if str(v or "").strip()}
    return [(n, q) for n, q in enumerate(required, start=1) if str(n) not in answered]


@dataclass(frozen=True)
class ReviewDocumentation:
    """What one stored record did to its milestone."""

    by_reviewer: bool  # the record is the reviewer's (anyone else's only adds to the file)
    documented: bool  # the milestone is documented (by this record or an earlier one)
    missing: list[tuple[int, str]]  # required items the reviewer has not answered yet


def document_review(
    session: Session, review: PipReview, author: Person, now: dt.datetime
) -> ReviewDocumentation:
    """Called once a record of ``author`` on ``review`` is stored (flushed). The milestone
    becomes documented when the author is its reviewer and their records answer every required
    item; otherwise the record is kept and the ladder runs on. A record of someone else (the
    manager adding to an HR partner's review, the employee) documents nothing."""
    pip = session.get(Pip, review.pip_id)
    assert pip is not None
    reviewer = reviewer_of(session, pip, review)
    if author.id != reviewer.id:
        return ReviewDocumentation(False, review.documented_at is not None, [])
    missing = missing_items(session, pip, review, reviewer)
    if not missing and review.documented_at is None:
        review.documented_at = now
    return ReviewDocumentation(True, review.documented_at is not None, missing)


# --- acknowledgements --------------------------------------------------------------------------


def request_acknowledgement(
    rt: Runtime,
    session: Session,
    *,
    subject_kind: str,
    subject_id: int,
    person: Person,
    within_business_days: int,
    ladder: tuple[LadderStep, ...],
) -> Acknowledgement:
    """Ask ``person`` to acknowledge a thing by reply; the ladder runs from the due time."""
    from automation.services.escalation import schedule_step

    existing = session.scalar(
        select(Acknowledgement).where(
            Acknowledgement.organization_id == person.organization_id,
            Acknowledgement.subject_kind == subject_kind,
            Acknowledgement.subject_id == subject_id,
            Acknowledgement.person_id == person.id,
        )
    )
    if existing is not None:
        return existing
    now = rt.now()
    ack = Acknowledgement(
        organization_id=person.organization_id,
        subject_kind=subject_kind,
        subject_id=subject_id,
        person_id=person.id,
        requested_at=now,
        due_at=add_business_days(
            now,
            within_business_days,
            person.timezone,
            rt.settings.business_weekdays,
            rt.settings.holidays,
        ),
        ladder=_ladder_json(ladder),
        created_at=now,
    )
    session.add(ack)
    session.flush()
    audit.record(
        session,
        person.organization_id,
        actor="service",
        action="acknowledgement.requested",
        subject_kind=subject_kind,
        subject_id=subject_id,
        at=now,
        data={"acknowledgement_id": ack.id, "person": person.email, "due": ack.due_at.isoformat()},
    )
    if ladder:
        schedule_step(rt, session, person.organization_id, "acknowledgement", ack.id, 0)
    return ack


def acknowledge(
    rt: Runtime,
    session: Session,
    ack: Acknowledgement,
    message: InboundMessage,
    comment: str,
) -> str:
    """Record the person's reply as the acknowledgement; a second reply changes nothing."""
    now = rt.now()
    if ack.acknowledged_at is not None:
        audit.record(
            session,
            ack.organization_id,
            actor=message.from_address or "ingest",
            action="acknowledgement.repeated",
            subject_kind=ack.subject_kind,
            subject_id=ack.subject_id,
            at=now,
            data={"acknowledgement_id": ack.id, "inbound_message_id": message.id},
        )
        return f"already acknowledged {ack.subject_kind} {ack.subject_id}"
    ack.acknowledged_at = now
    ack.source_message_id = message.id
    ack.comment = comment.strip() or None
    audit.record(
        session,
        ack.organization_id,
        actor=message.from_address or "ingest",
        action="acknowledgement.recorded",
        subject_kind=ack.subject_kind,
        subject_id=ack.subject_id,
        at=now,
        data={
            "acknowledgement_id": ack.id,
            "inbound_message_id": message.id,
            "source_sha256": message.sha256,
            "comment": bool(ack.comment),
        },
    )
    _confirm_acknowledgement(rt, session, ack, message)
    return f"acknowledged {ack.subject_kind} {ack.subject_id}"


def acknowledgement_label(session: Session, ack: Acknowledgement, person: Person) -> str:
    """What ``person`` acknowledged, in words for them (dates in their zone)."""
    tz = zone(person.timezone)
    if ack.subject_kind == "pip" and (pip := session.get(Pip, ack.subject_id)) is not None:
        return f"the {pip.title} starting {pip.started_on.astimezone(tz):%d %B %Y}"
    if ack.subject_kind == "corrective_action" and (
        action := session.get(CorrectiveAction, ack.subject_id)
    ):
        kind = action.kind.replace("_", " ")
        return f"the {kind} of {action.created_at.astimezone(tz):%d %B %Y}"
    if ack.subject_kind == "escalation" and (step := session.get(Escalation, ack.subject_id)):
        from automation.services.escalation import load_subject

        subject = load_subject(session, step.organization_id, step.subject_kind, step.subject_id)
        if subject is not None:
            label = subject.label
            if label.startswith("your "):  # worded for the manager: reword for a third party
                label = f"{subject.manager.name}'s {label[5:]}"
            done = "acknowledged" if step.subject_kind == "acknowledgement" else "documented"
            return f"the notice that {label} was not {done} yet (step {step.step + 1})"
    return f"the {ack.subject_kind.replace('_', ' ')} {ack.subject_id}"


def _confirm_acknowledgement(
    rt: Runtime, session: Session, ack: Acknowledgement, message: InboundMessage
) -> None:
    """One short confirmation to the person who acknowledged (once per acknowledgement: a
    second reply returns before this), in the thread of their reply."""
    person = session.get(Person, ack.person_id)
    assert person is not None and ack.acknowledged_at is not None
    request = (
        session.get(OutboundMessage, ack.outbound_message_id) if ack.outbound_message_id else None
    )
    subject = None
    if request is not None and message.message_id:
        # Gmail threads a message only under the subject of the one it answers.
        subject = request.subject
        if not subject.lower().startswith("re:"):
            subject = f"Re: {subject}"
    queue_email(
        rt,
        session,
        organization_id=ack.organization_id,
        key=f"acknowledged:{ack.id}",
        kind="acknowledged",
        template="confirmation_acknowledgement",
        to=[person],
        # A reply to the confirmation is kept (and changes nothing), like any second reply.
        reply_to=reply_to_for(rt, ack.organization_id, "acknowledgement", ack.id),
        in_reply_to=message.message_id,
        subject=subject,
        context={
            "acknowledgement": {
                "what": acknowledgement_label(session, ack, person),
                "when": when(ack.acknowledged_at, person.timezone),
                "comment": ack.comment or "",
            },
        },
    )


def acknowledgement_subject(
    session: Session, ack: Acknowledgement
) -> tuple[Person, Person, str, str] | None:
    """(responsible manager, person acknowledging, label, prompt key) for the ladder."""
    person = session.get(Person, ack.person_id)
    if person is None:
        return None
    manager = session.get(Person, person.manager_id) if person.manager_id else None
    if ack.subject_kind == "pip":
        pip = session.get(Pip, ack.subject_id)
        if pip is None:
            return None
        manager = session.get(Person, pip.manager_id)
        label = f"the {pip.title} for {person.name}"
        key = f"pip_plan:{pip.id}"
    elif ack.subject_kind == "corrective_action":
        action = session.get(CorrectiveAction, ack.subject_id)
        if action is None:
            return None
        label = f"the {action.kind.replace('_', ' ')} for {person.name}"
        key = f"corrective_action:{action.id}"
    else:
        label = f"escalation {ack.subject_id}"
        key = f"acknowledgement:{ack.id}"
    return manager or person, person, label, key


# --- extending, closing, listing -----------------------------------------------------------------


def _active_pip(session: Session, organization_id: int, employee_email: str) -> Pip:
    employee = _person(session, organization_id, employee_email)
    pip = session.scalar(
        select(Pip).where(
            Pip.organization_id == organization_id,
            Pip.employee_id == employee.id,
            Pip.state == "active",
        )
    )
    if pip is None:
        raise PipError(f"{employee.email} has no active PIP")
    return pip


def extend_pip(
    rt: Runtime,
    session: Session,
    organization_id: int,
    employee_email: str,
    days: int,
    *,
    actor: str = "hr",
    reason: str = "",
) -> Pip:
    """Move the end by ``days``: reviews not yet documented and not yet due shift by as much
    (with their prompt and escalation tasks), and weekly check-ins continue to the new end."""
    if days <= 0:
        raise PipError("extend by a positive number of days")
    pip = _active_pip(session, organization_id, employee_email)
    now = rt.now()
    shift = dt.timedelta(days=days)
    old_end = pip.ends_on
    pip.ends_on = old_end + shift
    pip.extended_days = (pip.extended_days or 0) + days
    moved: list[str] = []
    reviews = session.scalars(
        select(PipReview).where(PipReview.pip_id == pip.id).order_by(PipReview.due_at)
    ).all()
    employee = session.get(Person, pip.employee_id)
    assert employee is not None
    minutes = pip.checkin_duration_minutes or 30
    for review in reviews:
        if review.kind == "checkin" or review.documented_at is not None or review.due_at <= now:
            continue
        old_due = review.due_at
        if pip.calendar_uid:  # a review meeting: same time of day, on a business day
            tz = zone(pip.checkin_timezone or employee.timezone)
            at = (old_due - dt.timedelta(minutes=minutes)).astimezone(tz).time()
            review.due_at = review_due(rt, old_due + shift, at, tz.key, minutes)
        else:
            review.due_at = old_due + shift
        moved.append(review.name)
        for task in session.scalars(
            select(Task).where(
                Task.organization_id == organization_id,
                Task.state == TaskState.PENDING,
                (Task.key == f"pip_review:{review.id}")
                | Task.key.like(f"escalate:pip_review:{review.id}:%"),
            )
        ):
            task.due_at = task.due_at + (review.due_at - old_due)
            task.updated_at = now
    # More weekly check-ins, on the same weekday and time, up to the new end.
    assert pip.checkin_rrule and pip.checkin_dtstart_local
    base_rule = pip.checkin_rrule.split(";COUNT=")[0]
    slot = dt.datetime.fromisoformat(pip.checkin_dtstart_local)
    tz_name = pip.checkin_timezone or employee.timezone
    instances = expand(base_rule, slot, tz_name, minutes, pip.started_on, pip.ends_on)
    existing = [r for r in reviews if r.kind == "checkin"]
    added = []
    for week, inst in enumerate(instances, start=1):
        if week <= len(existing):
            continue
        added.append(_milestone(pip, f"Week {week} check-in", "checkin", inst.end, now))
    session.add_all(added)
    session.flush()
    from automation.services.escalation import schedule_step

    for review in added:
        _schedule_milestone(session, review, now)
        schedule_step(rt, session, organization_id, "pip_review", review.id, 0)
    pip.checkin_rrule = f"{base_rule};COUNT={len(instances)}"
    _rewrite_calendar(session, pip, now)
    audit.record(
        session,
        organization_id,
        actor=actor,
        action="pip.extended",
        subject_kind="pip",
        subject_id=pip.id,
        at=now,
        data={
            "days": days,
            "ends_on": pip.ends_on.isoformat(),
            "previous_ends_on": old_end.isoformat(),
            "moved_reviews": moved,
            "added_checkins": len(added),
            "reason": reason,
        },
    )
    return pip


def close_pip(
    rt: Runtime,
    session: Session,
    organization_id: int,
    employee_email: str,
    outcome: str,
    *,
    actor: str = "hr",
    note: str = "",
) -> Pip:
    """Record the outcome; milestones not yet due are cancelled (their tasks find the PIP
    closed) and the calendar series is cancelled."""
    if outcome not in OUTCOMES:
        raise PipError(f"unknown outcome {outcome!r}: use " + ", ".join(OUTCOMES))
    pip = _active_pip(session, organization_id, employee_email)
    now = rt.now()
    pip.state = "closed"
    pip.outcome = outcome
    pip.closed_at = now
    pip.closing_note = note or None
    cancelled = 0
    for task in session.scalars(
        select(Task)
        .join(PipReview, PipReview.id == Task.subject_id)
        .where(
            Task.organization_id == organization_id,
            Task.state == TaskState.PENDING,
            Task.kind.in_(("pip_review", "escalate")),
            PipReview.pip_id == pip.id,
            (Task.kind == "pip_review") | Task.key.like("escalate:pip_review:%"),
        )
    ):
        task.state = TaskState.DONE
        task.result = "pip closed"
        task.updated_at = now
        cancelled += 1
    _rewrite_calendar(session, pip, now)
    audit.record(
        session,
        organization_id,
        actor=actor,
        action="pip.closed",
        subject_kind="pip",
        subject_id=pip.id,
        at=now,
        data={"outcome": outcome, "note": note, "cancelled_tasks": cancelled},
    )
    return pip


@dataclass(frozen=True)
class PipSummary:
    id: int
    employee: str
    title: str
    state: str
    outcome: str | None
    started_on: str
    ends_on: str
    documented: int
    milestones: int
    acknowledged: bool


def list_pips(session: Session, organization_id: int) -> list[PipSummary]:
    out = []
    for pip, email in session.execute(
        select(Pip, Person.email)
        .join(Person, Person.id == Pip.employee_id)
        .where(Pip.organization_id == organization_id)
        .order_by(Pip.id)
    ):
        reviews = session.scalars(select(PipReview).where(PipReview.pip_id == pip.id)).all()
        ack = session.scalar(
            select(Acknowledgement).where(
                Acknowledgement.organization_id == organization_id,
                Acknowledgement.subject_kind == "pip",
                Acknowledgement.subject_id == pip.id,
            )
        )
        out.append(
            PipSummary(
                pip.id,
                email,
                pip.title,
                pip.state,
                pip.outcome,
                pip.started_on.date().isoformat(),
                pip.ends_on.date().isoformat(),
                sum(1 for r in reviews if r.documented_at is not None),
                len(reviews),
                bool(ack and ack.acknowledged_at),
            )
        )
    return out


# --- written warnings and corrective actions -------------------------------------------------

WARNING_ACK_DAYS = 3
WARNING_ACK_LADDER = (
    LadderStep(0, "employee", "unacknowledged"),
    LadderStep(2, "hr_partner", "escalation"),
)


def create_warning(
    rt: Runtime,
    session: Session,
    organization_id: int,
    employee: Person,
    *,
    reason: str,
    expectation: str = "",
    consequence: str = "",
    kind: str = "written_warning",
    actor: str,
    issued_by: Person | None = None,
    occurrence_id: int | None = None,
    source_message_id: int | None = None,
) -> CorrectiveAction:
    """Record a written warning (or corrective action), linked to the employee's active PIP
    and to the check-in it came from, and send it to the employee for acknowledgement."""
    if kind not in WARNING_KINDS:
        raise PipError(f"unknown kind {kind!r}: use " + ", ".join(WARNING_KINDS))
    if not reason.strip():
        raise PipError("a warning needs a reason")
    now = rt.now()
    pip_id = session.scalar(
        select(Pip.id).where(
            Pip.organization_id == organization_id,
            Pip.employee_id == employee.id,
            Pip.state == "active",
        )
    )
    action = CorrectiveAction(
        organization_id=organization_id,
        kind=kind,
        employee_id=employee.id,
        issued_by_id=issued_by.id if issued_by else None,
        issued_by=actor,
        reason=reason.strip(),
        expectation=expectation.strip(),
        consequence=consequence.strip(),
        pip_id=pip_id,
        occurrence_id=occurrence_id,
        source_message_id=source_message_id,
        created_at=now,
    )
    session.add(action)
    session.flush()
    audit.record(
        session,
        organization_id,
        actor=actor,
        action="corrective_action.created",
        subject_kind="corrective_action",
        subject_id=action.id,
        at=now,
        data={
            "kind": kind,
            "employee": employee.email,
            "pip_id": pip_id,
            "occurrence_id": occurrence_id,
            "inbound_message_id": source_message_id,
        },
    )
    ack = request_acknowledgement(
        rt,
        session,
        subject_kind="corrective_action",
        subject_id=action.id,
        person=employee,
        within_business_days=WARNING_ACK_DAYS,
        ladder=WARNING_ACK_LADDER,
    )
    manager = session.get(Person, employee.manager_id) if employee.manager_id else None
    tz = employee.timezone
    message = queue_email(
        rt,
        session,
        organization_id=organization_id,
        key=f"corrective_action:{action.id}",
        kind="warning",
        template="warning",
        to=[employee],
        reply_to=reply_to_for(rt, organization_id, "acknowledgement", ack.id),
        context={
            "manager": person_ctx(manager or employee),
            "employee": person_ctx(employee),
            "warning": {
                "title": kind.replace("_", " ").capitalize(),
                "issued_on": f"{now.astimezone(zone(tz)):%d %B %Y}",
                "issued_by": issued_by.name if issued_by else actor,
                "reason": action.reason,
                "expectation": action.expectation,
                "consequence": action.consequence,
            },
            "acknowledge_by": when(ack.due_at, tz),
        },
    )
    ack.outbound_message_id = message.id
    return action


def warnings_from_reply(
    rt: Runtime,
    session: Session,
    drafts: list[WarningDraft],
    *,
    occurrence: Occurrence,
    employee: Person,
    manager: Person,
    message: InboundMessage,
) -> list[str]:
    """The manager's ``#warning`` lines in a reply to a check-in prompt, as records."""
    done = []
    for draft in drafts:
        action = create_warning(
            rt,
            session,
            occurrence.organization_id,
            employee,
            reason=draft.reason,
            expectation=draft.expectation,
            consequence=draft.consequence,
            actor=manager.email,
            issued_by=manager,
            occurrence_id=occurrence.id,
            source_message_id=message.id,
        )
        done.append(f"written warning {action.id} recorded and sent to {employee.name}")
    return done
