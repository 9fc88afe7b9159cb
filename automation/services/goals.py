"""Goals and development plans: imported from CSV, set by the CLI or by a ``#goal`` reply.

A goal is a ``goals`` row (who it belongs to, the ``key`` it is found by) and its versions
(``goal_versions``): every change appends a version and the latest is the current state, as
with conversation records. An import or a CLI call that changes nothing appends nothing; a
``#goal`` reply always appends one (it is a statement of the goal's status on a date, with
its source message, and it counts as an update for the staleness prompt), except that the
same message processed again adds nothing.

Goals file (``automation goals import FILE.csv``), UTF-8, one row per goal, header names in
any order and case:

====================  ========  =====================================================
column                required  meaning
====================  ========  =====================================================
``employee_email``    yes       whose goal; a person already imported
``title``             yes       what is to be achieved
``success_criteria``  yes       how it is measured
``owner``             no        ``employee`` (default), ``manager`` or an address on record
``due``               no        ISO date (YYYY-MM-DD)
``status``            no        open (default), on_track, at_risk, done, dropped
``key``               no        a stable name, so a later file may reword the title
``note``              no        kept with the version
====================  ========  =====================================================

The whole file is checked first: any problem raises one :class:`ImportRejected` naming the
file, the line and the field of each, and nothing is applied.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from automation import audit
from automation.domain.agenda import (
    DEVELOPMENT_KINDS,
    DEVELOPMENT_STATUSES,
    GOAL_STATUS_LABELS,
    GOAL_STATUSES,
    OPEN_GOAL_STATUSES,
    fold,
)
from automation.domain.agenda_replies import goal_lines, parse_goal_command
from automation.domain.cadence import zone
from automation.errors import ImportRejected, RowProblem
from automation.models import DevelopmentItem, Goal, GoalVersion, Person

GOAL_COLUMNS = (
    "employee_email",
    "title",
    "success_criteria",
    "owner",
    "due",
    "status",
    "key",
    "note",
)
REQUIRED_GOAL_COLUMNS = ("employee_email", "title", "success_criteria")
SOURCES = ("csv", "reply", "cli")
# The fields whose change makes a new version (a note alone does too, when one is given).
_COMPARED = ("title", "success_criteria", "owner", "owner_id", "due_on", "status")


class GoalError(ValueError):
    """A goal operation refused; the text says why and what to do."""


def goal_key(text: str) -> str:
    return fold(text)[:200]


def normalize_status(value: str) -> str | None:
    """``on track``, ``On-Track``, ``on_track`` -> ``on_track``; None if not a status."""
    cleaned = "_".join(value.strip().lower().replace("-", " ").replace("_", " ").split())
    return cleaned if cleaned in GOAL_STATUSES else None


@dataclass(frozen=True)
class GoalImportResult:
    created: int
    updated: int
    unchanged: int


@dataclass(frozen=True)
class GoalRow:
    """A goal as listed: its latest version."""

    id: int
    employee: str
    key: str
    version: int
    title: str
    success_criteria: str
    owner: str
    due: str | None
    status: str
    note: str
    source: str
    author: str
    updated_at: str


@dataclass(frozen=True)
class _Spec:
    """One goal as a file or a command describes it, checked."""

    line: int
    person: Person
    key: str
    title: str
    success_criteria: str
    owner: str
    owner_id: int | None
    due_on: dt.date | None
    status: str
    note: str


# --- reading -------------------------------------------------------------------------------


def _people_by_email(session: Session, organization_id: int) -> dict[str, Person]:
    people = session.scalars(select(Person).where(Person.organization_id == organization_id))
    return {p.email.lower(): p for p in people}


def _owner(written: str, person: Person, people: dict[str, Person]) -> tuple[str, int | None] | str:
    """(owner as written, its person id) or the problem."""
    owner = (written or "employee").strip().lower()
    if owner == "employee":
        return owner, person.id
    if owner == "manager":
        if person.manager_id is None:
            return f"{person.email} has no manager on record; name the owner's address"
        return owner, person.manager_id
    if owner in people:
        return owner, people[owner].id
    return (
        f"'{written}' is neither employee, manager nor the address of someone on record; "
        "use one of those"
    )


def parse_goals_csv(text: str, file: str, people: dict[str, Person]) -> list[_Spec]:
    """Check a whole goals file against the people on record; every problem at once."""
    problems: list[RowProblem] = []
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    try:
        records = [(reader.line_num, cells) for cells in reader]
    except csv.Error as exc:
        raise ImportRejected(
            file,
            [RowProblem(reader.line_num or 1, "file", f"not readable as CSV ({exc})")],
        ) from exc
    records = [(line, cells) for line, cells in records if any(c.strip() for c in cells)]
    if not records:
        raise ImportRejected(
            file,
            [RowProblem(1, "header", "the file is empty; the first line must be the header")],
        )
    header_line, header = records[0]
    columns: dict[str, int] = {}
    for position, raw in enumerate(header):
        name = raw.strip().lower()
        if name in columns:
            problems.append(RowProblem(header_line, name, "the column appears twice; keep one"))
        elif name not in GOAL_COLUMNS:
            problems.append(
                RowProblem(
                    header_line,
                    raw.strip() or f"column {position + 1}",
                    f"unknown column; the columns are {', '.join(GOAL_COLUMNS)}",
                )
            )
        else:
            columns[name] = position
    for name in REQUIRED_GOAL_COLUMNS:
        if name not in columns:
            problems.append(
                RowProblem(
                    header_line,
                    name,
                    "the required column is missing; the header needs "
                    + ",".join(REQUIRED_GOAL_COLUMNS),
                )
            )
    if problems:
        raise ImportRejected(file, problems)
    if len(records) == 1:
        raise ImportRejected(
            file, [RowProblem(header_line + 1, "file", "no goals after the header")]
        )
    specs: list[_Spec] = []
    seen: dict[tuple[int, str], int] = {}
    for line, cells in records[1:]:

        def cell(name: str, cells: list[str] = cells) -> str:
            position = columns.get(name)
            return cells[position].strip() if position is not None and position < len(cells) else ""

        if len(cells) > len(header):
            problems.append(
                RowProblem(
                    line,
                    "columns",
                    f"{len(cells)} values but {len(header)} columns; quote values with commas",
                )
            )
            continue
        email = cell("employee_email").lower()
        person = people.get(email)
        if not email:
            problems.append(RowProblem(line, "employee_email", "empty; whose goal is it?"))
        elif person is None:
            problems.append(
                RowProblem(line, "employee_email", f"nobody with the address {email} is on record")
            )
        title, criteria = cell("title"), cell("success_criteria")
        if not title:
            problems.append(RowProblem(line, "title", "empty; say what is to be achieved"))
        if not criteria:
            problems.append(
                RowProblem(
                    line,
                    "success_criteria",
                    "empty; give a measurable criterion, e.g. 'p95 latency under 300 ms for "
                    "four weeks running'",
                )
            )
        due: dt.date | None = None
        if raw_due := cell("due"):
            try:
                due = dt.date.fromisoformat(raw_due)
            except ValueError:
                problems.append(RowProblem(line, "due", f"'{raw_due}' is not a date; YYYY-MM-DD"))
        status = normalize_status(cell("status") or "open")
        if status is None:
            problems.append(
                RowProblem(
                    line,
                    "status",
                    f"'{cell('status')}' is not a status; use {', '.join(GOAL_STATUSES)}",
                )
            )
        if person is None or not title:
            continue
        owner = _owner(cell("owner"), person, people)
        if isinstance(owner, str):
            problems.append(RowProblem(line, "owner", owner))
            continue
        key = goal_key(cell("key") or title)
        if (person.id, key) in seen:
            problems.append(
                RowProblem(
                    line,
                    "key" if cell("key") else "title",
                    f"the same goal of {email} is already on line {seen[person.id, key]}; "
                    "keep one row per goal",
                )
            )
            continue
        seen[person.id, key] = line
        specs.append(
            _Spec(
                line=line,
                person=person,
                key=key,
                title=title,
                success_criteria=criteria,
                owner=owner[0],
                owner_id=owner[1],
                due_on=due,
                status=status or "open",
                note=cell("note"),
            )
        )
    if problems:
        raise ImportRejected(file, problems)
    return specs


# --- writing -------------------------------------------------------------------------------


def _latest_versions(
    session: Session, organization_id: int, goal_ids: Sequence[int]
) -> dict[int, GoalVersion]:
    if not goal_ids:
        return {}
    newest = (
        select(GoalVersion.goal_id, func.max(GoalVersion.version).label("version"))
        .where(GoalVersion.organization_id == organization_id, GoalVersion.goal_id.in_(goal_ids))
        .group_by(GoalVersion.goal_id)
        .subquery()
    )
    rows = session.scalars(
        select(GoalVersion)
        .join(
            newest,
            (GoalVersion.goal_id == newest.c.goal_id) & (GoalVersion.version == newest.c.version),
        )
        .where(GoalVersion.organization_id == organization_id)
    )
    return {v.goal_id: v for v in rows}


def _append(
    session: Session,
    goal: Goal,
    previous: GoalVersion | None,
    values: dict[str, Any],
    *,
    source: str,
    author: str,
    now: dt.datetime,
    source_detail: str | None = None,
    source_message_id: int | None = None,
) -> GoalVersion:
    version = GoalVersion(
        organization_id=goal.organization_id,
        goal_id=goal.id,
        version=(previous.version if previous else 0) + 1,
        source=source,
        source_detail=source_detail,
        source_message_id=source_message_id,
        author=author,
        created_at=now,
        **values,
    )
    session.add(version)
    return version


def _changes(previous: GoalVersion, values: dict[str, Any]) -> dict[str, Any]:
    changed = {
        field: {"from": _plain(getattr(previous, field)), "to": _plain(values[field])}
        for field in _COMPARED
        if field in values and getattr(previous, field) != values[field]
    }
    if values.get("note") and values["note"] != previous.note:
        changed["note"] = {"from": previous.note, "to": values["note"]}
    return changed


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date) else value


def import_goals_file(
    session: Session, organization_id: int, path: Path, now: dt.datetime, actor: str = "import"
) -> GoalImportResult:
    """Read, check and apply a goals CSV in the caller's transaction (see the module doc)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportRejected(
            str(path), [RowProblem(1, "file", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]
        ) from exc
    except OSError as exc:
        raise ImportRejected(str(path), [RowProblem(1, "file", f"cannot read: {exc}")]) from exc
    people = _people_by_email(session, organization_id)
    specs = parse_goals_csv(text, str(path), people)
    person_ids = sorted({s.person.id for s in specs})
    goals = {
        (g.person_id, g.key): g
        for g in session.scalars(
            select(Goal).where(
                Goal.organization_id == organization_id, Goal.person_id.in_(person_ids)
            )
        )
    }
    latest = _latest_versions(session, organization_id, [g.id for g in goals.values()])
    created = updated = unchanged = 0
    entries: list[dict[str, Any]] = []
    for spec in specs:
        values = {
            "title": spec.title,
            "success_criteria": spec.success_criteria,
            "owner": spec.owner,
            "owner_id": spec.owner_id,
            "due_on": spec.due_on,
            "status": spec.status,
            "note": spec.note,
        }
        goal = goals.get((spec.person.id, spec.key))
        detail = f"{path.name}:{spec.line}"
        if goal is None:
            goal = Goal(
                organization_id=organization_id,
                person_id=spec.person.id,
                key=spec.key,
                source="csv",
                created_by=actor,
                created_at=now,
            )
            session.add(goal)
            session.flush()
            version = _append(
                session, goal, None, values, source="csv", author=actor, now=now,
                source_detail=detail,
            )  # fmt: skip
            created += 1
            action, data = "goal.created", {"title": spec.title, "status": spec.status}
        else:
            previous = latest[goal.id]
            changes = _changes(previous, values)
            if not changes:
                unchanged += 1
                continue
            version = _append(
                session, goal, previous, values, source="csv", author=actor, now=now,
                source_detail=detail,
            )  # fmt: skip
            updated += 1
            action, data = "goal.updated", {"changed": changes}
        entries.append(
            {
                "actor": actor,
                "action": action,
                "subject_kind": "goal",
                "subject_id": goal.id,
                "data": {
                    "employee": spec.person.email,
                    "key": spec.key,
                    "version": version.version,
                    "source": detail,
                    **data,
                },
            }
        )
    session.flush()
    audit.record_many(session, organization_id, entries, now)
    return GoalImportResult(created, updated, unchanged)


def _person(session: Session, organization_id: int, email: str) -> Person:
    person = session.scalar(
        select(Person).where(
            Person.organization_id == organization_id, Person.email == email.strip().lower()
        )
    )
    if person is None:
        raise GoalError(f"nobody with the address {email} is on record: import them first")
    return person


@dataclass(frozen=True)
class GoalChange:
    goal_id: int
    version: int
    created: bool
    changed: bool
    title: str
    status: str


def set_goal(
    session: Session,
    organization_id: int,
    employee_email: str,
    title: str | None,
    now: dt.datetime,
    *,
    actor: str,
    goal_id: int | None = None,
    key: str | None = None,
    success_criteria: str | None = None,
    owner: str | None = None,
    due: dt.date | None = None,
    status: str | None = None,
    note: str | None = None,
) -> GoalChange:
    """Create a goal or append a version with what is given (the CLI). Found by ``goal_id``,
    else by ``key`` or the title's key; only the given fields change (a title rewords the goal
    only when it was found by id or key and the title differs); a call that changes nothing
    appends nothing."""
    person = _person(session, organization_id, employee_email)
    if goal_id is not None:
        goal = session.get(Goal, goal_id)
        if goal is None or goal.organization_id != organization_id or goal.person_id != person.id:
            raise GoalError(f"{employee_email} has no goal {goal_id}")
    else:
        if not (key or title):
            raise GoalError("name the goal: a title, --key or --id")
        goal = session.scalar(
            select(Goal).where(
                Goal.organization_id == organization_id,
                Goal.person_id == person.id,
                Goal.key == goal_key(key or title or ""),
            )
        )
    if status is not None and normalize_status(status) is None:
        raise GoalError(f"{status!r} is not a status; use {', '.join(GOAL_STATUSES)}")
    people = _people_by_email(session, organization_id)
    previous = _latest_versions(session, organization_id, [goal.id]).get(goal.id) if goal else None
    if previous is not None and (not title or goal_key(title) == goal_key(previous.title)):
        title = previous.title  # the title named the goal (found by its key): no rewording
    values: dict[str, Any] = {
        "title": title or "",
        "success_criteria": (
            success_criteria
            if success_criteria is not None
            else (previous.success_criteria if previous else "")
        ),
        "due_on": due if due is not None else (previous.due_on if previous else None),
        "status": normalize_status(status) if status else (previous.status if previous else "open"),
        "note": note or "",
    }
    if owner is not None or previous is None:
        found = _owner(owner or "employee", person, people)
        if isinstance(found, str):
            raise GoalError(found)
        values["owner"], values["owner_id"] = found
    else:
        values["owner"], values["owner_id"] = previous.owner, previous.owner_id
    if not values["title"]:
        raise GoalError("a new goal needs a title")
    created = goal is None
    if goal is None:
        goal = Goal(
            organization_id=organization_id,
            person_id=person.id,
            key=goal_key(key or values["title"]),
            source="cli",
            created_by=actor,
            created_at=now,
        )
        session.add(goal)
        session.flush()
    elif previous is not None and not _changes(previous, values):
        return GoalChange(goal.id, previous.version, False, False, previous.title, previous.status)
    version = _append(session, goal, previous, values, source="cli", author=actor, now=now)
    session.flush()
    audit.record(
        session,
        organization_id,
        actor=actor,
        action="goal.created" if created else "goal.updated",
        subject_kind="goal",
        subject_id=goal.id,
        at=now,
        data={
            "employee": person.email,
            "key": goal.key,
            "version": version.version,
            **(
                {"changed": _changes(previous, values)}
                if previous is not None
                else {"title": version.title, "status": version.status}
            ),
        },
    )
    return GoalChange(goal.id, version.version, created, True, version.title, version.status)


def _match(goals: list[tuple[Goal, GoalVersion]], title: str) -> list[tuple[Goal, GoalVersion]]:
    """The goals a ``#goal`` title means: the one with its key, else every open goal whose
    title contains it (a manager may write the first words only)."""
    key = goal_key(title)
    exact = [pair for pair in goals if pair[0].key == key or goal_key(pair[1].title) == key]
    if exact:
        return exact[:1]
    found = [
        pair
        for pair in goals
        if pair[1].status in OPEN_GOAL_STATUSES and key in fold(pair[1].title)
    ]
    return sorted(found, key=lambda pair: pair[0].id)


def _when(day: dt.date | None) -> str:
    return f"{day.day} {day:%B %Y}" if day else ""


def apply_goal_command(
    session: Session,
    organization_id: int,
    author: Person,
    employee: Person,
    text: str,
    now: dt.datetime,
    source_message_id: int | None = None,
) -> list[str]:
    """Carry out every ``#goal <title> [by DATE] [status]`` line of ``text`` (the reply's own
    text) for ``employee``'s goals; return what was done, in words, one line per command.

    An existing goal is found by its key, or by the only open goal whose title contains the
    words given; it gets a new version (its title kept) with the date and status given. A
    title matching no goal creates one (status open unless given; success criteria to be
    filled in by an import or ``automation goals set``). Several matches change nothing and
    say so. Dates without a year count from ``now`` in the author's zone.
    """
    lines = goal_lines(text)
    if not lines:
        return []
    today = now.astimezone(zone(author.timezone)).date()
    goals = list(
        session.scalars(
            select(Goal).where(
                Goal.organization_id == organization_id, Goal.person_id == employee.id
            )
        )
    )
    latest = _latest_versions(session, organization_id, [g.id for g in goals])
    pairs = [(g, latest[g.id]) for g in goals if g.id in latest]
    done: list[str] = []
    for line in lines:
        command = parse_goal_command(line, today)
        if command is None:
            done.append("#goal ignored: no title (write #goal <title> [by DATE] [status])")
            continue
        found = _match(pairs, command.title)
        if len(found) > 1:
            names = "; ".join(f"“{v.title}”" for _, v in found[:5])
            done.append(
                f"#goal “{command.title}” matches several goals ({names}): nothing changed; "
                "write more of the title"
            )
            continue
        if found:
            goal, previous = found[0]
            if source_message_id is not None and previous.source_message_id == source_message_id:
                done.append(f"goal “{previous.title}”: already recorded from this message")
                continue
            values = {
                "title": previous.title,
                "success_criteria": previous.success_criteria,
                "owner": previous.owner,
                "owner_id": previous.owner_id,
                "due_on": command.due or previous.due_on,
                "status": command.status or previous.status,
                "note": "",
            }
            changes = _changes(previous, values)
            action = "goal.updated"
        else:
            goal = Goal(
                organization_id=organization_id,
                person_id=employee.id,
                key=goal_key(command.title),
                source="reply",
                created_by=author.email,
                created_at=now,
            )
            session.add(goal)
            session.flush()
            previous = None
            values = {
                "title": command.title,
                "success_criteria": "",
                "owner": "employee",
                "owner_id": employee.id,
                "due_on": command.due,
                "status": command.status or "open",
                "note": "",
            }
            changes = {}
            action = "goal.created"
        version = _append(
            session, goal, previous, values, source="reply", author=author.email, now=now,
            source_message_id=source_message_id,
        )  # fmt: skip
        session.flush()
        latest[goal.id] = version
        pairs = [(g, v) for g, v in pairs if g.id != goal.id] + [(goal, version)]
        audit.record(
            session,
            organization_id,
            actor=author.email,
            action=action,
            subject_kind="goal",
            subject_id=goal.id,
            at=now,
            data={
                "employee": employee.email,
                "key": goal.key,
                "version": version.version,
                "source_message_id": source_message_id,
                **({"changed": changes} if previous is not None else {"title": version.title}),
            },
        )
        status = GOAL_STATUS_LABELS[version.status]
        due_text = f", due {_when(version.due_on)}" if version.due_on else ""
        if previous is None:
            done.append(f"goal “{version.title}” added ({status}{due_text})")
        elif changes:
            was = (
                f" (was {GOAL_STATUS_LABELS[previous.status]})"
                if previous.status != version.status
                else ""
            )
            done.append(f"goal “{version.title}”: {status}{was}{due_text}")
        else:
            done.append(f"goal “{version.title}”: still {status}{due_text}")
    return done


def list_goals(
    session: Session,
    organization_id: int,
    employee_email: str | None = None,
    *,
    include_closed: bool = False,
) -> list[GoalRow]:
    """Every goal with its latest version (open, on track and at risk only, unless
    ``include_closed``), by person then due date."""
    query = (
        select(Goal, Person.email)
        .join(
            Person, (Person.organization_id == Goal.organization_id) & (Person.id == Goal.person_id)
        )
        .where(Goal.organization_id == organization_id)
    )
    if employee_email is not None:
        query = query.where(Person.email == employee_email.strip().lower())
    found = session.execute(query).all()
    latest = _latest_versions(session, organization_id, [g.id for g, _ in found])
    rows = [
        _row(goal, email, latest[goal.id])
        for goal, email in found
        if goal.id in latest and (include_closed or latest[goal.id].status in OPEN_GOAL_STATUSES)
    ]
    return sorted(rows, key=lambda r: (r.employee, r.due or "9999", r.title.lower(), r.id))


def goal_history(session: Session, organization_id: int, goal_id: int) -> list[GoalRow]:
    """Every version of one goal, oldest first."""
    found = session.execute(
        select(Goal, Person.email)
        .join(
            Person, (Person.organization_id == Goal.organization_id) & (Person.id == Goal.person_id)
        )
        .where(Goal.organization_id == organization_id, Goal.id == goal_id)
    ).one_or_none()
    if found is None:
        raise GoalError(f"no goal {goal_id}")
    goal, email = found
    versions = session.scalars(
        select(GoalVersion)
        .where(GoalVersion.organization_id == organization_id, GoalVersion.goal_id == goal_id)
        .order_by(GoalVersion.version)
    )
    return [_row(goal, email, v) for v in versions]


def _row(goal: Goal, email: str, v: GoalVersion) -> GoalRow:
    return GoalRow(
        id=goal.id,
        employee=email,
        key=goal.key,
        version=v.version,
        title=v.title,
        success_criteria=v.success_criteria,
        owner=v.owner,
        due=v.due_on.isoformat() if v.due_on else None,
        status=v.status,
        note=v.note,
        source=v.source_detail or v.source,
        author=v.author,
        updated_at=v.created_at.isoformat(),
    )


# --- development plans -----------------------------------------------------------------------


@dataclass(frozen=True)
class DevelopmentRow:
    id: int
    employee: str
    kind: str
    text: str
    discuss_by: str | None
    status: str
    goal_id: int | None
    pip_goal_id: int | None
    record_id: int | None


def add_development_item(
    session: Session,
    organization_id: int,
    employee_email: str,
    kind: str,
    text: str,
    now: dt.datetime,
    *,
    actor: str,
    discuss_by: dt.date | None = None,
    record_id: int | None = None,
    goal_id: int | None = None,
    pip_goal_id: int | None = None,
) -> DevelopmentItem:
    """Add a skill to build, support agreed or a career conversation note to a person's plan;
    linked to the record it was agreed in and to a goal or PIP goal when given."""
    person = _person(session, organization_id, employee_email)
    if kind not in DEVELOPMENT_KINDS:
        raise GoalError(f"{kind!r} is not a kind; use {', '.join(DEVELOPMENT_KINDS)}")
    if not text.strip():
        raise GoalError("the item needs a text")
    item = DevelopmentItem(
        organization_id=organization_id,
        person_id=person.id,
        kind=kind,
        text=text.strip(),
        discuss_by=discuss_by,
        status="open",
        record_id=record_id,
        goal_id=goal_id,
        pip_goal_id=pip_goal_id,
        created_by=actor,
        created_at=now,
        updated_at=now,
    )
    session.add(item)
    session.flush()
    audit.record(
        session,
        organization_id,
        actor=actor,
        action="development.added",
        subject_kind="development_item",
        subject_id=item.id,
        at=now,
        data={
            "employee": person.email,
            "kind": kind,
            "discuss_by": discuss_by.isoformat() if discuss_by else None,
            "record_id": record_id,
            "goal_id": goal_id,
            "pip_goal_id": pip_goal_id,
        },
    )
    return item


def set_development_status(
    session: Session,
    organization_id: int,
    item_id: int,
    status: str,
    now: dt.datetime,
    *,
    actor: str,
) -> DevelopmentItem:
    """Close (``done``, ``dropped``) or reopen one development item; audited."""
    if status not in DEVELOPMENT_STATUSES:
        raise GoalError(f"{status!r} is not a status; use {', '.join(DEVELOPMENT_STATUSES)}")
    item = session.get(DevelopmentItem, item_id)
    if item is None or item.organization_id != organization_id:
        raise GoalError(f"no development item {item_id}")
    if item.status != status:
        audit.record(
            session,
            organization_id,
            actor=actor,
            action="development.status",
            subject_kind="development_item",
            subject_id=item.id,
            at=now,
            data={"from": item.status, "to": status},
        )
        item.status, item.updated_at = status, now
    return item


def list_development(
    session: Session,
    organization_id: int,
    employee_email: str | None = None,
    *,
    include_closed: bool = False,
) -> list[DevelopmentRow]:
    query = (
        select(DevelopmentItem, Person.email)
        .join(
            Person,
            (Person.organization_id == DevelopmentItem.organization_id)
            & (Person.id == DevelopmentItem.person_id),
        )
        .where(DevelopmentItem.organization_id == organization_id)
        # Dated items first on every backend (SQLite sorts NULL first, PostgreSQL last).
        .order_by(
            Person.email,
            DevelopmentItem.discuss_by.is_(None),
            DevelopmentItem.discuss_by,
            DevelopmentItem.id,
        )
    )
    if employee_email is not None:
        query = query.where(Person.email == employee_email.strip().lower())
    if not include_closed:
        query = query.where(DevelopmentItem.status == "open")
    return [
        DevelopmentRow(
            id=item.id,
            employee=email,
            kind=item.kind,
            text=item.text,
            discuss_by=item.discuss_by.isoformat() if item.discuss_by else None,
            status=item.status,
            goal_id=item.goal_id,
            pip_goal_id=item.pip_goal_id,
            record_id=item.record_id,
        )
        for item, email in session.execute(query)
    ]
