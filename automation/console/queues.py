"""The overdue and escalation queue: what is overdue, who is on it, and acting on it.

``GET /console/queue`` lists every overdue check-in, PIP review and acknowledgement request the
viewer may see (a manager: their reporting chain), most overdue first, with the ladder steps
sent and the next one due (:func:`automation.services.escalation.overdue_queue`). Each row can
be acknowledged ("I have seen this and I am on it": the open acknowledgement requests of its
escalation steps are closed; the subject stays undocumented and its ladder runs on) and a
check-in or PIP review reassigned to someone else, who is sent its prompt and documents it
by reply. A manager acting on a subject outside their chain gets 404, and may hand a check-in
only to someone they can see, themselves, their own managers or those people's HR partners
(HR: any active person but the employee).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from automation.console.base import (
    NOTICES,
    AnyViewer,
    Changed,
    ConsoleError,
    NotFound,
    TenantRt,
    Viewer,
    render,
    visible_people,
)
from automation.db import transaction
from automation.models import Person
from automation.services import escalation
from automation.services.escalation import QUEUE_KINDS, QueueError

router = APIRouter(prefix="/console", include_in_schema=False)

LIMIT = 500  # rows on the page; the rest are counted as "more", most overdue listed first

NOTICES.update(
    {
        "queue-acknowledged": "Acknowledged. It is still undocumented: its remaining reminders "
        "and escalation steps go out until it is documented.",
        "queue-nothing-to-acknowledge": "Nothing to acknowledge: no escalation step of it "
        "awaits an acknowledgement.",
        "queue-reassigned": "Reassigned. The new person was sent the follow-up (or review) "
        "email and gets the next reminders; their reply documents it.",
    }
)


@router.get("/queue")
def queue_page(request: Request, who: AnyViewer, rt: TenantRt) -> Response:
    with transaction(rt.factory) as session:
        allowed = visible_people(session, who)
        queue = escalation.overdue_queue(session, who.organization_id, rt.now(), allowed, LIMIT)
        people = (
            _choices(session, who, allowed)
            if any(item.reassignable for item in queue.items)
            else []
        )
        return render(request, "queue.html", who, queue=queue, people=people)


def _subject(fields: Changed) -> tuple[str, int]:
    kind, subject_id = fields.get("kind", ""), fields.get("id", "")
    if kind not in QUEUE_KINDS or not subject_id.isdigit():
        raise NotFound("No such item.")
    return kind, int(subject_id)


def _check_visible(session: Session, who: Viewer, kind: str, subject_id: int) -> set[int] | None:
    """404 unless the subject exists in the viewer's organization and, for a manager, is about
    someone in their chain; returns who the viewer may see (None: everyone)."""
    subject = escalation.load_subject(session, who.organization_id, kind, subject_id)
    if subject is None:
        raise NotFound("No such item.")
    allowed = visible_people(session, who)
    if allowed is not None and subject.employee.id not in allowed:
        raise NotFound("No such item.")
    return allowed


def _choices(session: Session, who: Viewer, allowed: set[int] | None) -> list[Person]:
    """Who the viewer may hand a check-in to: for HR, any active person; for a manager, the
    people they can already see, themselves, their own managers up the line and those
    people's HR partners (so the picker names nobody else in the organization)."""
    people = escalation.reassignable_people(session, who.organization_id)
    if allowed is None:
        return people
    chosen = set(allowed)
    # Up the line from the viewer (people are loaded: these reads hit the identity map).
    above = session.get(Person, who.person_id) if who.person_id is not None else None
    while above is not None and above.id not in chosen:
        chosen.add(above.id)
        above = session.get(Person, above.manager_id) if above.manager_id else None
    chosen |= {p.hr_partner_id for p in people if p.id in chosen and p.hr_partner_id}
    return [p for p in people if p.id in chosen]


def _back(notice: str) -> RedirectResponse:
    return RedirectResponse(f"/console/queue?notice={notice}", status_code=303)


@router.post("/queue/acknowledge")
def acknowledge(who: AnyViewer, fields: Changed, rt: TenantRt) -> Response:
    kind, subject_id = _subject(fields)
    with transaction(rt.factory) as session:
        _check_visible(session, who, kind, subject_id)
        closed = escalation.acknowledge_escalation(
            rt, session, who.organization_id, kind, subject_id,
            actor=who.actor, note=fields.get("note", "")[:2000],
        )  # fmt: skip
    return _back("queue-acknowledged" if closed else "queue-nothing-to-acknowledge")


@router.post("/queue/reassign")
def reassign(who: AnyViewer, fields: Changed, rt: TenantRt) -> Response:
    kind, subject_id = _subject(fields)
    person = fields.get("person", "")
    if not person.isdigit():
        raise ConsoleError("Choose the person who documents it.")
    try:
        with transaction(rt.factory) as session:
            allowed = _check_visible(session, who, kind, subject_id)
            if allowed is not None and int(person) not in {
                p.id for p in _choices(session, who, allowed)
            }:
                raise NotFound("No such person.")
            escalation.reassign(
                rt, session, who.organization_id, kind, subject_id, int(person),
                actor=who.actor, reason=fields.get("reason", "")[:2000],
            )  # fmt: skip
    except QueueError as exc:
        raise ConsoleError(str(exc)) from exc
    return _back("queue-reassigned")
