"""The people pages: the organisation's reporting lines, one employee's timeline, and the
calendar of upcoming check-ins.

Each page reads what it shows in a fixed number of queries (the people of the organization
once, then one query per kind of row), never one per person or per check-in, so a page costs
the same for a team of five and an organisation of thousands. What a viewer may see goes
through :func:`visible_people`/:func:`visible_person`: a manager sees their reporting chain
and nothing else, and a person outside it is answered with 404.

The timeline reads the rows itself rather than through :func:`automation.services.export.
timeline`: the export loads and hashes every raw message and the audit entries to cite them
as evidence, which a page that shows the records does not need, and it does not say which
rows an erasure emptied.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, aliased

from automation.console.base import (
    AnyViewer,
    TenantRt,
    Viewer,
    only_visible,
    render,
    visible_people,
    visible_person,
)
from automation.db import transaction
from automation.models import (
    Acknowledgement,
    ActionItem,
    Cadence,
    CheckinSeries,
    ConversationRecord,
    CorrectiveAction,
    Escalation,
    Goal,
    GoalVersion,
    Occurrence,
    Person,
    Pip,
    PipGoal,
    PipReview,
)
from automation.services import pips as pip_service

router = APIRouter(prefix="/console", include_in_schema=False)

CALENDAR_DAYS = 14
MAX_WEEKS = 520  # ten years either way: far enough, and no date arithmetic overflows
# RFC 5545 PARTSTAT values as the calendar page words them.
RESPONSES = {
    "ACCEPTED": "accepted",
    "DECLINED": "declined",
    "TENTATIVE": "tentative",
    "NEEDS-ACTION": "needs-action",
    "DELEGATED": "delegated",
}


# --------------------------------------------------------------------------- shared


def state_of(person: Person) -> str:
    """active, left (no longer active) or erased (their personal data removed)."""
    if person.erased_at is not None:
        return "erased"
    return "active" if person.active else "left"


def people_of(session: Session, organization_id: int) -> dict[int, Person]:
    """Every person of the organization by id: one query, for names and reporting lines."""
    rows = session.scalars(select(Person).where(Person.organization_id == organization_id))
    return {p.id: p for p in rows}


def by_name(people: Iterable[Person]) -> list[Person]:
    return sorted(people, key=lambda p: (p.name.casefold(), p.email, p.id))


def _in(column: Any, values: Iterable[int]) -> Any:
    """``column IN values``; a clause that matches nothing when there are none."""
    ordered = sorted(set(values))
    return column.in_(ordered) if ordered else column.in_([-1])


# --------------------------------------------------------------------------- organisation


@dataclass
class Node:
    """One person in the reporting tree, with what the organisation page says about them."""

    person: Person
    manager: Person | None
    hr_partner: Person | None
    direct_reports: int
    state: str
    match: bool = False
    children: list[Node] = field(default_factory=list)


@dataclass(frozen=True)
class Organisation:
    roots: list[Node]
    people: int
    managers: int
    without_manager: int
    matches: int | None  # how many matched the filter; None without one


def organisation(
    people: dict[int, Person], allowed: set[int] | None, query: str = ""
) -> Organisation:
    """The reporting tree of the people in ``allowed`` (None: everyone), from the top of each
    visible subtree: someone whose manager is not visible (or who has none) starts a tree.

    With a ``query`` only the people whose name or address contains it (ignoring case) are
    kept, with their managers up the chain so each match shows where it sits. The counts are
    about everyone visible, whatever the filter.
    """
    visible = {pid: p for pid, p in people.items() if allowed is None or pid in allowed}
    reports: dict[int, list[int]] = defaultdict(list)
    for person in people.values():
        if person.manager_id is not None and person.manager_id != person.id:
            reports[person.manager_id].append(person.id)

    keep = set(visible)
    matched: set[int] = set()
    needle = query.strip().casefold()
    if needle:
        matched = {
            pid
            for pid, p in visible.items()
            if needle in p.name.casefold() or needle in p.email.casefold()
        }
        keep = set()
        for pid in matched:
            current: int | None = pid
            while current is not None and current in visible and current not in keep:
                keep.add(current)
                current = visible[current].manager_id

    def node(pid: int) -> Node:
        person = people[pid]
        return Node(
            person,
            people.get(person.manager_id) if person.manager_id is not None else None,
            people.get(person.hr_partner_id) if person.hr_partner_id is not None else None,
            len(reports.get(pid, ())),
            state_of(person),
            match=pid in matched,
        )

    placed: set[int] = set()

    def grow(pid: int) -> Node:
        # Iterative, so a long chain cannot exhaust the stack; ``placed`` stops a cycle.
        top = node(pid)
        placed.add(pid)
        todo = [top]
        while todo:
            parent = todo.pop()
            below = [people[c] for c in reports.get(parent.person.id, ()) if c in keep]
            for child in by_name(below):
                if child.id in placed:
                    continue
                placed.add(child.id)
                grown = node(child.id)
                parent.children.append(grown)
                todo.append(grown)
        return top

    tops = [p for pid, p in visible.items() if pid in keep and (p.manager_id not in keep)]
    roots = [grow(p.id) for p in by_name(tops)]
    # People in a reporting cycle have no top; each still appears once.
    for person in by_name(visible[pid] for pid in keep if pid not in placed):
        if person.id not in placed:
            roots.append(grow(person.id))
    return Organisation(
        roots=roots,
        people=len(visible),
        managers=sum(1 for pid in visible if reports.get(pid)),
        without_manager=sum(1 for p in visible.values() if p.manager_id is None),
        matches=len(matched) if needle else None,
    )


@router.get("/people")
def people_page(request: Request, who: AnyViewer, rt: TenantRt, q: str = "") -> Response:
    with transaction(rt.factory) as session:
        people = people_of(session, who.organization_id)
        allowed = visible_people(session, who)
        org = organisation(people, allowed, q[:200])
    return render(request, "people.html", who, title="People", org=org, q=q[:200])


# --------------------------------------------------------------------------- the timeline


@dataclass(frozen=True)
class Version:
    """One version of a conversation record, as the timeline shows it."""

    record: ConversationRecord
    author: Person | None
    answers: list[tuple[str, str, str]]  # (number, question asked, answer)
    items: list[tuple[ActionItem, Person | None]]  # action items with their owner
    latest: int  # the newest version of the same subject

    @property
    def erased(self) -> bool:
        return self.record.erased_at is not None


@dataclass(frozen=True)
class History:
    """Every version of the record of one check-in or PIP review, newest first."""

    versions: list[Version]

    @property
    def current(self) -> Version:
        return self.versions[0]

    @property
    def older(self) -> list[Version]:
        return self.versions[1:]


@dataclass(frozen=True)
class Ack:
    """A request that someone acknowledge a PIP, a warning or an escalation step, with the
    steps its own ladder sent while it went unacknowledged."""

    ack: Acknowledgement
    person: Person | None
    escalations: list[Step]


@dataclass(frozen=True)
class Step:
    """An escalation step sent: a reminder or an escalation, to whom, and its acknowledgement
    when the recipient was asked to acknowledge it."""

    escalation: Escalation
    recipient: Person | None
    acks: list[Ack]


@dataclass(frozen=True)
class CheckinEntry:
    kind = "checkin"
    at: dt.datetime
    occurrence: Occurrence
    series: CheckinSeries
    cadence: str
    manager: Person | None
    responses: list[tuple[str, str]]
    history: History | None
    steps: list[Step]
    upcoming: bool


@dataclass(frozen=True)
class ReviewEntry:
    review: PipReview
    history: History | None
    steps: list[Step]


@dataclass(frozen=True)
class PipEntry:
    kind = "pip"
    at: dt.datetime
    pip: Pip
    manager: Person | None
    reviews: list[ReviewEntry]
    goals: list[PipGoal]
    acks: list[Ack]


@dataclass(frozen=True)
class WarningEntry:
    kind = "warning"
    at: dt.datetime
    warning: CorrectiveAction
    issued_by: Person | None
    acks: list[Ack]


@dataclass(frozen=True)
class GoalHistory:
    goal: Goal
    versions: list[GoalVersion]  # newest first

    @property
    def current(self) -> GoalVersion:
        return self.versions[0]

    @property
    def older(self) -> list[GoalVersion]:
        return self.versions[1:]


@dataclass(frozen=True)
class Timeline:
    entries: list[CheckinEntry | PipEntry | WarningEntry]  # newest first
    goals: list[GoalHistory]


def _responses(occurrence: Occurrence, *attendees: Person | None) -> list[tuple[str, str]]:
    """Each attendee's answer to the invitation (needs-action until the calendar says)."""
    given = {str(k).lower(): str(v).upper() for k, v in (occurrence.responses or {}).items()}
    out = []
    for person in attendees:
        if person is not None:
            status = given.pop(person.email.lower(), "NEEDS-ACTION")
            out.append((person.name, RESPONSES.get(status, status.lower())))
    out += [(email, RESPONSES.get(s, s.lower())) for email, s in sorted(given.items())]
    return out


def _answers(answers: dict[str, Any], questions: list[str]) -> list[tuple[str, str, str]]:
    def number(key: str) -> tuple[int, str]:
        return (int(key), key) if key.isdigit() else (10**9, key)

    out = []
    for key in sorted(answers, key=number):
        n = number(key)[0]
        question = questions[n - 1] if 0 < n <= len(questions) else ""
        out.append((key, question, str(answers[key])))
    return out


def load_timeline(
    session: Session, person: Person, people: dict[int, Person], now: dt.datetime
) -> Timeline:
    """Everything on record about ``person``, in about a dozen queries whatever its size."""
    org = person.organization_id

    def rows(model: Any, *where: Any) -> list[Any]:
        query = select(model).where(model.organization_id == org, *where).order_by(model.id)
        return list(session.scalars(query))

    series_rows = session.execute(
        select(CheckinSeries, Cadence)
        .join(
            Cadence,
            (Cadence.organization_id == CheckinSeries.organization_id)
            & (Cadence.id == CheckinSeries.cadence_id),
        )
        .where(CheckinSeries.organization_id == org, CheckinSeries.employee_id == person.id)
    ).all()
    series = {s.id: s for s, _ in series_rows}
    cadences = {s.id: c for s, c in series_rows}
    occurrences = rows(Occurrence, _in(Occurrence.series_id, series)) if series else []
    pips = rows(Pip, Pip.employee_id == person.id)
    reviews = rows(PipReview, _in(PipReview.pip_id, (p.id for p in pips))) if pips else []
    pip_goals = rows(PipGoal, _in(PipGoal.pip_id, (p.id for p in pips))) if pips else []
    warnings = rows(CorrectiveAction, CorrectiveAction.employee_id == person.id)
    occ_ids = [o.id for o in occurrences]
    review_ids = [r.id for r in reviews]

    def about(model: Any, pairs: list[tuple[str, list[int]]]) -> list[Any]:
        """Rows of a polymorphic ``subject_kind``/``subject_id`` table about these subjects."""
        clauses = [
            and_(model.subject_kind == kind, _in(model.subject_id, ids))
            for kind, ids in pairs
            if ids
        ]
        return rows(model, or_(*clauses)) if clauses else []

    records = about(ConversationRecord, [("occurrence", occ_ids), ("pip_review", review_ids)])
    items = rows(ActionItem, _in(ActionItem.record_id, (r.id for r in records))) if records else []
    acks = about(
        Acknowledgement,
        [("pip", [p.id for p in pips]), ("corrective_action", [w.id for w in warnings])],
    )
    escalations = about(
        Escalation,
        [
            ("occurrence", occ_ids),
            ("pip_review", review_ids),
            ("acknowledgement", [a.id for a in acks]),
        ],
    )
    # Those told of a step (an HR partner, the manager's manager) acknowledge it by reply.
    step_acks = about(Acknowledgement, [("escalation", [e.id for e in escalations])])
    goals = rows(Goal, Goal.person_id == person.id)
    goal_versions = (
        rows(GoalVersion, _in(GoalVersion.goal_id, (g.id for g in goals))) if goals else []
    )

    def who(person_id: int | None) -> Person | None:
        return people.get(person_id) if person_id is not None else None

    acks_of: dict[tuple[str, int], list[Acknowledgement]] = defaultdict(list)
    for ack in [*acks, *step_acks]:
        acks_of[(ack.subject_kind, ack.subject_id)].append(ack)
    steps_of: dict[tuple[str, int], list[Escalation]] = defaultdict(list)
    for step in escalations:
        steps_of[(step.subject_kind, step.subject_id)].append(step)

    def steps(kind: str, subject_id: int) -> list[Step]:
        found = sorted(steps_of.get((kind, subject_id), []), key=lambda e: e.step, reverse=True)
        return [
            Step(e, who(e.recipient_id), ack_rows("escalation", e.id, with_steps=False))
            for e in found
        ]

    def ack_rows(kind: str, subject_id: int, *, with_steps: bool = True) -> list[Ack]:
        return [
            Ack(a, who(a.person_id), steps("acknowledgement", a.id) if with_steps else [])
            for a in acks_of.get((kind, subject_id), [])
        ]

    items_of: dict[int, list[tuple[ActionItem, Person | None]]] = defaultdict(list)
    for item in items:
        items_of[item.record_id].append((item, who(item.owner_id)))
    records_of: dict[tuple[str, int], list[ConversationRecord]] = defaultdict(list)
    for record in records:
        records_of[(record.subject_kind, record.subject_id)].append(record)

    def history(kind: str, subject_id: int, questions: list[str]) -> History | None:
        found = sorted(records_of.get((kind, subject_id), []), key=lambda r: -r.version)
        if not found:
            return None
        latest = found[0].version
        return History(
            [
                Version(
                    r,
                    who(r.author_id),
                    _answers(r.answers or {}, questions),
                    items_of.get(r.id, []),
                    latest,
                )
                for r in found
            ]
        )

    entries: list[CheckinEntry | PipEntry | WarningEntry] = []
    for occ in occurrences:
        s = series[occ.series_id]
        cadence = cadences[s.id]
        manager = who(s.manager_id)
        entries.append(
            CheckinEntry(
                at=occ.start_at,
                occurrence=occ,
                series=s,
                cadence=cadence.name,
                manager=manager,
                responses=_responses(occ, manager, person),
                history=history(
                    "occurrence", occ.id, list((cadence.definition or {}).get("questions", []))
                ),
                steps=steps("occurrence", occ.id),
                upcoming=occ.start_at > now,
            )
        )
    reviews_of: dict[int, list[PipReview]] = defaultdict(list)
    for review in reviews:
        reviews_of[review.pip_id].append(review)
    goals_of: dict[int, list[PipGoal]] = defaultdict(list)
    for goal in pip_goals:
        goals_of[goal.pip_id].append(goal)
    for pip in pips:
        entries.append(
            PipEntry(
                at=pip.started_on,
                pip=pip,
                manager=who(pip.manager_id),
                reviews=[
                    ReviewEntry(
                        r,
                        history("pip_review", r.id, pip_service.review_questions(pip, r)),
                        steps("pip_review", r.id),
                    )
                    for r in sorted(reviews_of[pip.id], key=lambda r: r.due_at, reverse=True)
                ],
                goals=sorted(goals_of[pip.id], key=lambda g: g.position),
                acks=ack_rows("pip", pip.id),
            )
        )
    for warning in warnings:
        entries.append(
            WarningEntry(
                at=warning.created_at,
                warning=warning,
                issued_by=who(warning.issued_by_id),
                acks=ack_rows("corrective_action", warning.id),
            )
        )
    order = {"checkin": 0, "pip": 1, "warning": 2}
    entries.sort(key=lambda e: (e.at, order[e.kind]), reverse=True)

    versions_of: dict[int, list[GoalVersion]] = defaultdict(list)
    for version in goal_versions:
        versions_of[version.goal_id].append(version)
    goal_histories = [
        GoalHistory(g, sorted(versions_of[g.id], key=lambda v: -v.version))
        for g in goals
        if versions_of.get(g.id)
    ]
    goal_histories.sort(key=lambda h: h.current.created_at, reverse=True)
    return Timeline(entries, goal_histories)


@router.get("/people/{person_id}")
def person_page(request: Request, who: AnyViewer, rt: TenantRt, person_id: int) -> Response:
    with transaction(rt.factory) as session:
        person = visible_person(session, who, person_id)
        people = people_of(session, who.organization_id)
        allowed = visible_people(session, who)
        timeline = load_timeline(session, person, people, rt.now())
        manager = people.get(person.manager_id) if person.manager_id is not None else None
        reports = by_name(
            p for p in people.values() if p.manager_id == person.id and p.id != person.id
        )
    # Rendered after the transaction (rows stay loaded: sessions do not expire on commit).
    return render(
        request, "person.html", who, title=person.name, person=person, state=state_of(person),
        manager=manager,
        manager_visible=manager is not None and (allowed is None or manager.id in allowed),
        hr_partner=people.get(person.hr_partner_id) if person.hr_partner_id else None,
        reports=reports, timeline=timeline, now=rt.now(),
    )  # fmt: skip


# --------------------------------------------------------------------------- the calendar


@dataclass(frozen=True)
class Meeting:
    occurrence: Occurrence
    series: CheckinSeries
    cadence: str
    manager: Person
    employee: Person
    responses: list[tuple[str, str]]


@dataclass(frozen=True)
class Day:
    day: dt.date  # in UTC
    meetings: list[Meeting]


def _number(text: str | None) -> int | None:
    text = (text or "").strip()
    if text.lstrip("-").isdigit() and len(text) < 10:
        return int(text)
    return None


def upcoming(
    session: Session,
    who: Viewer,
    start: dt.datetime,
    end: dt.datetime,
    manager_id: int | None = None,
) -> list[Day]:
    """The check-ins starting in [start, end) that ``who`` may see, by day (UTC), in one
    query with their series, cadence and both people."""
    manager, employee = aliased(Person), aliased(Person)
    allowed = visible_people(session, who)
    query = (
        select(Occurrence, CheckinSeries, Cadence.name, manager, employee)
        .join(
            CheckinSeries,
            (CheckinSeries.organization_id == Occurrence.organization_id)
            & (CheckinSeries.id == Occurrence.series_id),
        )
        .join(
            Cadence,
            (Cadence.organization_id == CheckinSeries.organization_id)
            & (Cadence.id == CheckinSeries.cadence_id),
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
        .where(
            Occurrence.organization_id == who.organization_id,
            Occurrence.start_at >= start,
            Occurrence.start_at < end,
            only_visible(CheckinSeries.employee_id, allowed),
        )
        .order_by(Occurrence.start_at, Occurrence.id)
    )
    if manager_id is not None:
        query = query.where(CheckinSeries.manager_id == manager_id)
    days: dict[dt.date, list[Meeting]] = {}
    for occ, s, cadence, boss, report in session.execute(query).all():
        meeting = Meeting(occ, s, cadence, boss, report, _responses(occ, boss, report))
        days.setdefault(occ.start_at.astimezone(dt.UTC).date(), []).append(meeting)
    return [Day(day, meetings) for day, meetings in days.items()]


def managers_seen_by(session: Session, who: Viewer) -> list[Person]:
    """The managers of the check-in series ``who`` may see: the calendar's filter."""
    allowed = visible_people(session, who)
    ids = select(CheckinSeries.manager_id).where(
        CheckinSeries.organization_id == who.organization_id,
        only_visible(CheckinSeries.employee_id, allowed),
    )
    found = session.scalars(
        select(Person).where(Person.organization_id == who.organization_id, Person.id.in_(ids))
    )
    return by_name(found)


@router.get("/calendar")
def calendar_page(
    request: Request, who: AnyViewer, rt: TenantRt, week: str = "0", manager: str = ""
) -> Response:
    shift = max(-MAX_WEEKS, min(MAX_WEEKS, _number(week) or 0))
    start = rt.now() + dt.timedelta(weeks=shift)
    end = start + dt.timedelta(days=CALENDAR_DAYS)
    manager_id = _number(manager)
    with transaction(rt.factory) as session:
        managers = managers_seen_by(session, who)
        # A manager outside the viewer's chain filters to nothing: the employees are too.
        days = upcoming(session, who, start, end, manager_id)
    return render(
        request, "calendar.html", who, title="Calendar", days=days, start=start, end=end,
        week=shift, managers=managers, manager_id=manager_id,
        count=sum(len(d.meetings) for d in days),
    )  # fmt: skip
