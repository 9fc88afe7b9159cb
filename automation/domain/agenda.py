"""The agenda of one check-in, for one recipient: plain data in, plain data out.

:func:`build_agenda` turns an :class:`AgendaInput` (everything the database knows about the
check-in, fetched in bulk by :func:`automation.services.agendas.agenda_inputs`) into the
:class:`Agenda` one recipient gets. The sections, in order:

1. coaching prompts (the manager's copy only, see :mod:`automation.domain.coaching`);
2. open action items from earlier records, numbered, with their age;
3. goals and their latest status (and the role's priorities);
4. the PIP's goals, while a PIP is active;
5. development items due for discussion;
6. the cadence's standing questions;
7. topics either person added.

Carry-over rules:

- An action item stays on every agenda of its series until a record closes it (``done`` on
  the row; see :func:`automation.services.agendas.close_items`). The same item restated in a
  later version of the same check-in's record (same text, folded) is one item: it is
  numbered once, its owner and due date are the latest version's, its age counts from the
  first version.
- Numbers run 1..n, oldest first. An update of an agenda already sent (``numbering`` in the
  input) keeps every number it gave: a closed item leaves a gap, a new item comes after the
  highest number. ``#done 2`` therefore always means the item numbered 2 on the agenda the
  manager received.
- A topic appears on the agenda of the check-in it was added to, and carries over to later
  agendas while it is open and the check-in it was added to was not documented (skipped,
  cancelled, or held without a record).
- Goals are shown while their latest status is open, on track or at risk; PIP goals while the
  PIP is active; development items while open and once their ``discuss_by`` date is on or
  before the meeting's date.

Ages and staleness count to ``now`` (when the agenda is built); "overdue" compares a due date
with the meeting's date in the employee's zone (``meeting_date``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from automation.domain.coaching import CoachingRules

MANAGER, EMPLOYEE = "manager", "employee"
RECIPIENTS = (MANAGER, EMPLOYEE)

GOAL_STATUSES = ("open", "on_track", "at_risk", "done", "dropped")
OPEN_GOAL_STATUSES = ("open", "on_track", "at_risk")
GOAL_STATUS_LABELS = {
    "open": "open",
    "on_track": "on track",
    "at_risk": "at risk",
    "done": "done",
    "dropped": "dropped",
}
DEVELOPMENT_KINDS = ("skill", "support", "career_note")
DEVELOPMENT_KIND_LABELS = {
    "skill": "Skill to build",
    "support": "Agreed support",
    "career_note": "Career conversation",
}
DEVELOPMENT_STATUSES = ("open", "done", "dropped")
# Check-ins that did not take place: they neither count as a meeting where an item was
# overdue nor close a PIP's "first check-in", and they carry their topics over.
NOT_HELD = ("skipped", "cancelled")

SECTIONS = (
    "coaching",
    "action_items",
    "goals",
    "pip",
    "development",
    "questions",
    "topics",
)


# --- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedItem:
    """One open ``action_items`` row, from a record of a check-in of the same series."""

    id: int
    occurrence_id: int  # the check-in whose record lists it
    text: str
    owner: str | None  # a name, as shown
    due: dt.date | None
    created_at: dt.datetime


@dataclass(frozen=True)
class PastCheckin:
    """An earlier check-in of the same series (before this one), oldest first in the input."""

    occurrence_id: int
    start_at: dt.datetime
    date: dt.date  # the meeting's date in the employee's zone
    state: str  # planned | invited | held | skipped | cancelled
    documented: bool
    rating: int | None  # the latest record version's rating


@dataclass(frozen=True)
class GoalState:
    """A goal with its latest version."""

    goal_id: int
    title: str
    success_criteria: str
    owner: str | None
    due: dt.date | None
    status: str
    version: int
    updated_at: dt.datetime  # when the latest version was recorded
    pip_goal_id: int | None = None


@dataclass(frozen=True)
class PipGoalState:
    pip_goal_id: int
    position: int
    goal: str
    success_criteria: str
    owner: str | None
    due: dt.date | None


@dataclass(frozen=True)
class ActivePip:
    pip_id: int
    title: str
    started_at: dt.datetime
    ends_at: dt.datetime
    goals: tuple[PipGoalState, ...] = ()


@dataclass(frozen=True)
class DevelopmentState:
    id: int
    kind: str  # skill | support | career_note
    text: str
    discuss_by: dt.date | None
    status: str


@dataclass(frozen=True)
class TopicState:
    """An open topic of a check-in of this series (this one or an earlier one)."""

    id: int
    occurrence_id: int
    occurrence_start: dt.datetime
    occurrence_documented: bool
    text: str
    added_by: str  # a name
    added_by_role: str  # manager | employee | other
    added_at: dt.datetime


@dataclass(frozen=True)
class RoleExpectations:
    """A role's expectations, as ``config/roles/<name>.toml`` describes them."""

    name: str
    title: str
    success_criteria: tuple[str, ...] = ()
    priorities: tuple[str, ...] = ()
    description: str = ""
    source_file: str = ""


@dataclass(frozen=True)
class AgendaInput:
    """Everything one check-in's agenda is built from."""

    occurrence_id: int
    start_at: dt.datetime
    meeting_date: dt.date  # in the employee's zone
    manager: str
    employee: str
    questions: tuple[str, ...] = ()
    action_items: tuple[RecordedItem, ...] = ()
    past_checkins: tuple[PastCheckin, ...] = ()
    goals: tuple[GoalState, ...] = ()
    pip: ActivePip | None = None
    development: tuple[DevelopmentState, ...] = ()
    topics: tuple[TopicState, ...] = ()
    role: RoleExpectations | None = None
    # The numbering of an agenda of this check-in already sent to the manager: (number, the
    # row ids it stands for). An update keeps it.
    numbering: tuple[tuple[int, tuple[int, ...]], ...] = ()


# --- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgendaItem:
    number: int
    ids: tuple[int, ...]  # the action_items rows it stands for; closing it closes them all
    text: str
    owner: str | None
    due: dt.date | None
    created_at: dt.datetime
    age: str  # "open 3 weeks"
    overdue: bool  # past due on the meeting's date
    overdue_count: int  # check-ins (this one included) at which it was past due


@dataclass(frozen=True)
class AgendaGoal:
    goal_id: int
    title: str
    success_criteria: str
    owner: str | None
    due: dt.date | None
    status: str
    updated: str  # "updated 2 weeks ago"
    updated_at: dt.datetime


@dataclass(frozen=True)
class AgendaTopic:
    id: int
    text: str
    added_by: str
    added_by_role: str
    added_at: dt.datetime
    carried_over: bool  # added to an earlier check-in that did not take place or was not documented


@dataclass(frozen=True)
class CoachingPrompt:
    """Guidance for the manager: which trigger fired, why (from the data), and HR's words."""

    trigger: str
    title: str
    why: tuple[str, ...]
    suggestion: str
    document: str


@dataclass(frozen=True)
class Agenda:
    occurrence_id: int
    recipient: str  # manager | employee
    action_items: tuple[AgendaItem, ...] = ()
    goals: tuple[AgendaGoal, ...] = ()
    role: RoleExpectations | None = None
    pip: ActivePip | None = None
    development: tuple[DevelopmentState, ...] = ()
    questions: tuple[str, ...] = ()
    topics: tuple[AgendaTopic, ...] = ()
    coaching: tuple[CoachingPrompt, ...] = field(default=())

    @property
    def numbering(self) -> tuple[tuple[int, tuple[int, ...]], ...]:
        """(number, row ids) of the action items, as an :class:`AgendaInput` takes it back."""
        return tuple((item.number, item.ids) for item in self.action_items)

    def sections(self) -> list[str]:
        """The names of the sections that have something, in the order they are shown."""
        present = {
            "coaching": bool(self.coaching),
            "action_items": bool(self.action_items),
            "goals": bool(self.goals),
            "pip": self.pip is not None,
            "development": bool(self.development),
            "questions": bool(self.questions),
            "topics": bool(self.topics),
        }
        return [name for name in SECTIONS if present[name]]

    def topics_since(self, moment: dt.datetime) -> tuple[AgendaTopic, ...]:
        """Topics added after ``moment`` (the agenda's sending): what an update announces."""
        return tuple(t for t in self.topics if t.added_at > moment)


# --- helpers ---------------------------------------------------------------------------------


def fold(text: str) -> str:
    """The form two texts are compared in: case-folded, whitespace collapsed, no end dot."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".").casefold()


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def span(days: int) -> str:
    """A duration in words, coarse as people say it: 3 days, 2 weeks, 4 months."""
    if days < 14:
        return _plural(days, "day")
    if days < 63:  # up to 8 weeks
        return _plural(days // 7, "week")
    return _plural(days // 30, "month")


def age(since: dt.datetime, now: dt.datetime) -> str:
    """ "new" on the day it was recorded, then "open 3 days", "open 2 weeks", …"""
    days = max((now - since).days, 0)
    return "new" if days == 0 else f"open {span(days)}"


def ago(since: dt.datetime, now: dt.datetime) -> str:
    days = max((now - since).days, 0)
    return "updated today" if days == 0 else f"updated {span(days)} ago"


# --- building --------------------------------------------------------------------------------


@dataclass
class _Group:
    rows: list[RecordedItem]

    @property
    def first(self) -> RecordedItem:
        return min(self.rows, key=lambda r: (r.created_at, r.id))

    @property
    def latest(self) -> RecordedItem:
        return max(self.rows, key=lambda r: (r.created_at, r.id))

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(sorted(r.id for r in self.rows))


def group_items(rows: Sequence[RecordedItem]) -> list[_Group]:
    """One group per item: rows of the same check-in with the same folded text are one item
    (a record's correction restates its items), oldest first."""
    groups: dict[tuple[int, str], _Group] = {}
    for row in rows:
        if not row.text.strip():
            continue  # erased
        groups.setdefault((row.occurrence_id, fold(row.text)), _Group([])).rows.append(row)
    return sorted(groups.values(), key=lambda g: (g.first.created_at, g.first.id))


def _overdue_count(
    item: RecordedItem, due: dt.date, past: Sequence[PastCheckin], meeting_date: dt.date
) -> int:
    """Check-ins at which the item was open and past due: earlier ones that took place after
    it was recorded, and this one."""
    held_before = sum(
        1 for c in past if c.state not in NOT_HELD and c.date > due and c.start_at > item.created_at
    )
    return held_before + (1 if meeting_date > due else 0)


def number_items(
    groups: Sequence[_Group], numbering: Sequence[tuple[int, tuple[int, ...]]]
) -> list[tuple[int, _Group]]:
    """Numbers for the groups: an earlier agenda's numbers where a group shares a row with
    one of its items, then the next free numbers, oldest first."""
    number_of_row = {row_id: number for number, ids in numbering for row_id in ids}
    taken = {number for number, _ in numbering}
    numbered: list[tuple[int, _Group]] = []
    fresh: list[_Group] = []
    used: set[int] = set()
    for group in groups:
        known = sorted({number_of_row[i] for i in group.ids if i in number_of_row} - used)
        if known:
            used.add(known[0])
            numbered.append((known[0], group))
        else:
            fresh.append(group)
    following = max(taken | used, default=0)
    for group in fresh:
        following += 1
        numbered.append((following, group))
    return sorted(numbered, key=lambda pair: pair[0])


def _items(inp: AgendaInput, now: dt.datetime) -> tuple[AgendaItem, ...]:
    out = []
    for number, group in number_items(group_items(inp.action_items), inp.numbering):
        latest, first = group.latest, group.first
        overdue = latest.due is not None and latest.due < inp.meeting_date
        count = (
            _overdue_count(first, latest.due, inp.past_checkins, inp.meeting_date)
            if latest.due is not None
            else 0
        )
        out.append(
            AgendaItem(
                number=number,
                ids=group.ids,
                text=latest.text,
                owner=latest.owner,
                due=latest.due,
                created_at=first.created_at,
                age=age(first.created_at, now),
                overdue=overdue,
                overdue_count=count,
            )
        )
    return tuple(out)


def _goals(inp: AgendaInput, now: dt.datetime) -> tuple[AgendaGoal, ...]:
    shown = [g for g in inp.goals if g.status in OPEN_GOAL_STATUSES]
    shown.sort(key=lambda g: (g.due or dt.date.max, fold(g.title), g.goal_id))
    return tuple(
        AgendaGoal(
            goal_id=g.goal_id,
            title=g.title,
            success_criteria=g.success_criteria,
            owner=g.owner,
            due=g.due,
            status=g.status,
            updated=ago(g.updated_at, now),
            updated_at=g.updated_at,
        )
        for g in shown
    )


def _development(inp: AgendaInput) -> tuple[DevelopmentState, ...]:
    due = [
        d
        for d in inp.development
        if d.status == "open" and d.discuss_by is not None and d.discuss_by <= inp.meeting_date
    ]
    return tuple(sorted(due, key=lambda d: (d.discuss_by or dt.date.max, d.id)))


def _topics(inp: AgendaInput) -> tuple[AgendaTopic, ...]:
    shown = []
    for t in inp.topics:
        own = t.occurrence_id == inp.occurrence_id
        carried = t.occurrence_start < inp.start_at and not t.occurrence_documented
        if own or carried:
            shown.append(
                AgendaTopic(
                    id=t.id,
                    text=t.text,
                    added_by=t.added_by,
                    added_by_role=t.added_by_role,
                    added_at=t.added_at,
                    carried_over=not own,
                )
            )
    return tuple(sorted(shown, key=lambda t: (t.added_at, t.id)))


def build_agenda(
    inp: AgendaInput,
    recipient: str,
    now: dt.datetime,
    coaching: CoachingRules | None = None,
) -> Agenda:
    """The agenda ``recipient`` (``"manager"`` or ``"employee"``) gets for one check-in.

    ``coaching`` is a :class:`automation.domain.coaching.CoachingRules` (or None for no
    prompts); prompts go into the manager's agenda only, never the employee's.
    """
    from automation.domain.coaching import prompts  # it builds on this module's types

    if recipient not in RECIPIENTS:
        raise ValueError(f"recipient must be one of {RECIPIENTS}, got {recipient!r}")
    items = _items(inp, now)
    goals = _goals(inp, now)
    found: tuple[CoachingPrompt, ...] = ()
    if recipient == MANAGER and coaching is not None:
        found = prompts(inp, items, goals, now, coaching)
    return Agenda(
        occurrence_id=inp.occurrence_id,
        recipient=recipient,
        action_items=items,
        goals=goals,
        role=inp.role,
        pip=inp.pip,
        development=_development(inp),
        questions=inp.questions,
        topics=_topics(inp),
        coaching=found,
    )
