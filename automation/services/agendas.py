"""Agendas around the pure core (:mod:`automation.domain.agenda`): what they are built from,
topics added by reply, items closed by their number, and what each agenda showed.

- :func:`agenda_inputs` fetches everything for many check-ins in a constant number of
  queries (eight per :data:`CHUNK` check-ins, however many there are in it).
- :func:`add_topics` records topics on a check-in (or on the next one, once it has begun).
- :func:`close_items` closes action items by the number they had on the manager's agenda
  (``#done 2``) or by their text.
- :func:`record_agenda` keeps what an agenda showed (the numbering above all);
  :func:`agenda_context` turns an :class:`Agenda` into the agenda template's variables.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased

from automation import audit
from automation.domain.agenda import (
    DEVELOPMENT_KIND_LABELS,
    GOAL_STATUS_LABELS,
    MANAGER,
    NOT_HELD,
    OPEN_GOAL_STATUSES,
    ActivePip,
    Agenda,
    AgendaInput,
    DevelopmentState,
    GoalState,
    PastCheckin,
    PipGoalState,
    RecordedItem,
    RoleExpectations,
    TopicState,
    build_agenda,
    fold,
    group_items,
)
from automation.domain.agenda_replies import Closures
from automation.domain.cadence import zone
from automation.models import (
    ActionItem,
    AgendaSnapshot,
    AgendaTopic,
    CheckinSeries,
    ConversationRecord,
    DevelopmentItem,
    Goal,
    GoalVersion,
    Occurrence,
    OccurrenceState,
    Person,
    Pip,
    PipGoal,
)
from automation.models import Cadence as CadenceRow

CHUNK = 500  # check-ins per round of queries (SQLite's bound parameters stay well in range)
HISTORY_DAYS = 182  # earlier check-ins looked at for the coaching prompts and carried topics


# --- inputs, in bulk -------------------------------------------------------------------------


def agenda_inputs(
    session: Session,
    organization_id: int,
    occurrence_ids: Sequence[int],
    now: dt.datetime,
    *,
    roles: Mapping[str, RoleExpectations] | None = None,
    history_days: int = HISTORY_DAYS,
) -> dict[int, AgendaInput]:
    """The :class:`AgendaInput` of each check-in (missing or foreign ids are left out).

    Eight queries per :data:`CHUNK` check-ins: the check-ins with their people and cadence;
    the earlier check-ins of their series (``history_days`` back) with their latest rating;
    the series' open action items; the employees' open goals (latest versions), active PIPs
    with their goals, open development items; the series' open topics; and the numbering of
    an agenda already sent. ``roles`` (``config/roles``) gives each employee's expectations.
    """
    ids = sorted(set(occurrence_ids))
    out: dict[int, AgendaInput] = {}
    for start in range(0, len(ids), CHUNK):
        out.update(
            _inputs(
                session, organization_id, ids[start : start + CHUNK], now, roles or {}, history_days
            )
        )
    return out


def _on(model: Any, other: Any, column: str) -> Any:
    """The composite join condition ``model.(organization_id, id) = other.(organization_id,
    column)``."""
    return (model.organization_id == other.organization_id) & (model.id == getattr(other, column))


def _inputs(
    session: Session,
    org: int,
    ids: list[int],
    now: dt.datetime,
    roles: Mapping[str, RoleExpectations],
    history_days: int,
) -> dict[int, AgendaInput]:
    manager, employee = aliased(Person), aliased(Person)
    targets = session.execute(
        select(
            Occurrence.id,
            Occurrence.series_id,
            Occurrence.start_at,
            CheckinSeries.manager_id,
            manager.name.label("manager_name"),
            CheckinSeries.employee_id,
            employee.name.label("employee_name"),
            employee.timezone,
            employee.role,
            CadenceRow.definition,
        )
        .select_from(Occurrence)
        .join(CheckinSeries, _on(CheckinSeries, Occurrence, "series_id"))
        .join(manager, _on(manager, CheckinSeries, "manager_id"))
        .join(employee, _on(employee, CheckinSeries, "employee_id"))
        .join(CadenceRow, _on(CadenceRow, CheckinSeries, "cadence_id"))
        .where(Occurrence.organization_id == org, Occurrence.id.in_(ids))
    ).all()
    if not targets:
        return {}
    series_ids = sorted({t.series_id for t in targets})
    employee_ids = sorted({t.employee_id for t in targets})
    history = dt.timedelta(days=history_days)
    earliest = min(t.start_at for t in targets) - history
    latest = max(t.start_at for t in targets)
    tz_of_series = {t.series_id: zone(t.timezone) for t in targets}

    # Earlier check-ins, each with its latest record version's rating. A correlated subquery
    # (one index probe per check-in), not a join of every version: joined, PostgreSQL hashes
    # all the organisation's records for every chunk.
    latest_rating = (
        select(ConversationRecord.rating)
        .where(
            ConversationRecord.organization_id == Occurrence.organization_id,
            ConversationRecord.subject_kind == "occurrence",
            ConversationRecord.subject_id == Occurrence.id,
        )
        .order_by(ConversationRecord.version.desc())
        .limit(1)
        .scalar_subquery()
    )
    past_rows = session.execute(
        select(
            Occurrence.id,
            Occurrence.series_id,
            Occurrence.start_at,
            Occurrence.state,
            Occurrence.documented_at,
            latest_rating.label("rating"),
        ).where(
            Occurrence.organization_id == org,
            Occurrence.series_id.in_(series_ids),
            Occurrence.start_at >= earliest,
            Occurrence.start_at < latest,
        )
    ).all()
    past_by_series: dict[int, list[PastCheckin]] = defaultdict(list)
    for row in past_rows:
        past_by_series[row.series_id].append(
            PastCheckin(
                occurrence_id=row.id,
                start_at=row.start_at,
                date=row.start_at.astimezone(tz_of_series[row.series_id]).date(),
                state=row.state,
                documented=row.documented_at is not None,
                rating=row.rating,
            )
        )
    for checkins in past_by_series.values():
        checkins.sort(key=lambda c: c.start_at)

    # Open action items of the series, with the start of the check-in that recorded them.
    owner = aliased(Person)
    items_by_series: dict[int, list[tuple[dt.datetime, RecordedItem]]] = defaultdict(list)
    for row in session.execute(
        select(
            ActionItem.id,
            ActionItem.text,
            ActionItem.due_on,
            ActionItem.created_at,
            Occurrence.id.label("occurrence_id"),
            Occurrence.series_id,
            Occurrence.start_at,
            owner.name.label("owner_name"),
        )
        .select_from(ActionItem)
        .join(ConversationRecord, _on(ConversationRecord, ActionItem, "record_id"))
        .join(
            Occurrence,
            (Occurrence.organization_id == ConversationRecord.organization_id)
            & (Occurrence.id == ConversationRecord.subject_id),
        )
        .outerjoin(owner, _on(owner, ActionItem, "owner_id"))
        .where(
            ActionItem.organization_id == org,
            ActionItem.done.is_(False),
            ConversationRecord.subject_kind == "occurrence",
            Occurrence.series_id.in_(series_ids),
        )
    ):
        items_by_series[row.series_id].append(
            (
                row.start_at,
                RecordedItem(
                    id=row.id,
                    occurrence_id=row.occurrence_id,
                    text=row.text,
                    owner=row.owner_name,
                    due=row.due_on,
                    created_at=row.created_at,
                ),
            )
        )

    # Open goals: each goal's latest version.
    goal_owner = aliased(Person)
    newer = aliased(GoalVersion)
    latest_version = (
        select(func.max(newer.version))
        .where(newer.organization_id == Goal.organization_id, newer.goal_id == Goal.id)
        .scalar_subquery()
    )
    goals_by_person: dict[int, list[GoalState]] = defaultdict(list)
    for row in session.execute(
        select(
            Goal.id,
            Goal.person_id,
            Goal.pip_goal_id,
            GoalVersion.title,
            GoalVersion.success_criteria,
            GoalVersion.owner,
            goal_owner.name.label("owner_name"),
            GoalVersion.due_on,
            GoalVersion.status,
            GoalVersion.version,
            GoalVersion.created_at,
        )
        .select_from(Goal)
        .join(
            GoalVersion,
            (GoalVersion.organization_id == Goal.organization_id)
            & (GoalVersion.goal_id == Goal.id)
            & (GoalVersion.version == latest_version),
        )
        .outerjoin(goal_owner, _on(goal_owner, GoalVersion, "owner_id"))
        .where(
            Goal.organization_id == org,
            Goal.person_id.in_(employee_ids),
            GoalVersion.status.in_(OPEN_GOAL_STATUSES),
            GoalVersion.erased_at.is_(None),
        )
    ):
        goals_by_person[row.person_id].append(
            GoalState(
                goal_id=row.id,
                title=row.title,
                success_criteria=row.success_criteria,
                owner=row.owner_name or row.owner,
                due=row.due_on,
                status=row.status,
                version=row.version,
                updated_at=row.created_at,
                pip_goal_id=row.pip_goal_id,
            )
        )

    # Active PIPs with their goals.
    pip_owner = aliased(Person)
    pips: dict[int, tuple[Any, list[PipGoalState]]] = {}
    for row in session.execute(
        select(
            Pip.id,
            Pip.employee_id,
            Pip.title,
            Pip.started_on,
            Pip.ends_on,
            PipGoal.id.label("goal_id"),
            PipGoal.position,
            PipGoal.goal,
            PipGoal.success_criteria,
            PipGoal.owner,
            pip_owner.name.label("owner_name"),
            PipGoal.due_on,
        )
        .select_from(Pip)
        .outerjoin(
            PipGoal,
            (PipGoal.organization_id == Pip.organization_id) & (PipGoal.pip_id == Pip.id),
        )
        .outerjoin(pip_owner, _on(pip_owner, PipGoal, "owner_id"))
        .where(Pip.organization_id == org, Pip.employee_id.in_(employee_ids), Pip.state == "active")
        .order_by(Pip.id, PipGoal.position)
    ):
        _, goals = pips.setdefault(row.employee_id, (row, []))
        if row.goal_id is not None and pips[row.employee_id][0].id == row.id:
            goals.append(
                PipGoalState(
                    pip_goal_id=row.goal_id,
                    position=row.position,
                    goal=row.goal,
                    success_criteria=row.success_criteria,
                    owner=row.owner_name or row.owner,
                    due=row.due_on,
                )
            )

    development_by_person: dict[int, list[DevelopmentState]] = defaultdict(list)
    for item in session.scalars(
        select(DevelopmentItem).where(
            DevelopmentItem.organization_id == org,
            DevelopmentItem.person_id.in_(employee_ids),
            DevelopmentItem.status == "open",
            DevelopmentItem.erased_at.is_(None),
        )
    ):
        development_by_person[item.person_id].append(
            DevelopmentState(item.id, item.kind, item.text, item.discuss_by, item.status)
        )

    # Open topics of the series' check-ins (this one, or earlier ones they carry over from).
    adder = aliased(Person)
    topics_by_series: dict[int, list[tuple[int, Any]]] = defaultdict(list)
    for row in session.execute(
        select(
            AgendaTopic.id,
            AgendaTopic.occurrence_id,
            AgendaTopic.text,
            AgendaTopic.added_by_id,
            AgendaTopic.added_at,
            adder.name.label("adder_name"),
            Occurrence.series_id,
            Occurrence.start_at,
            Occurrence.documented_at,
        )
        .select_from(AgendaTopic)
        .join(Occurrence, _on(Occurrence, AgendaTopic, "occurrence_id"))
        .join(adder, _on(adder, AgendaTopic, "added_by_id"))
        .where(
            AgendaTopic.organization_id == org,
            AgendaTopic.closed_at.is_(None),
            AgendaTopic.erased_at.is_(None),
            Occurrence.series_id.in_(series_ids),
            Occurrence.start_at >= earliest,
            Occurrence.start_at <= latest,
        )
    ):
        topics_by_series[row.series_id].append((row.added_by_id, row))

    numbering: dict[int, tuple[int, list[Any]]] = {}
    for occurrence_id, sequence, items in session.execute(
        select(AgendaSnapshot.occurrence_id, AgendaSnapshot.sequence, AgendaSnapshot.items).where(
            AgendaSnapshot.organization_id == org,
            AgendaSnapshot.occurrence_id.in_(ids),
            AgendaSnapshot.role == MANAGER,
        )
    ):
        if occurrence_id not in numbering or sequence > numbering[occurrence_id][0]:
            numbering[occurrence_id] = (sequence, items)

    out: dict[int, AgendaInput] = {}
    for t in targets:
        tz = tz_of_series[t.series_id]
        since = t.start_at - history
        pip = pips.get(t.employee_id)
        out[t.id] = AgendaInput(
            occurrence_id=t.id,
            start_at=t.start_at,
            meeting_date=t.start_at.astimezone(tz).date(),
            manager=t.manager_name,
            employee=t.employee_name,
            questions=tuple(t.definition.get("questions", ())),
            action_items=tuple(
                item for start, item in items_by_series[t.series_id] if start <= t.start_at
            ),
            past_checkins=tuple(
                c for c in past_by_series[t.series_id] if since <= c.start_at < t.start_at
            ),
            goals=tuple(goals_by_person[t.employee_id]),
            pip=(
                ActivePip(pip[0].id, pip[0].title, pip[0].started_on, pip[0].ends_on, tuple(pip[1]))
                if pip
                else None
            ),
            development=tuple(development_by_person[t.employee_id]),
            topics=tuple(
                TopicState(
                    id=row.id,
                    occurrence_id=row.occurrence_id,
                    occurrence_start=row.start_at,
                    occurrence_documented=row.documented_at is not None,
                    text=row.text,
                    added_by=row.adder_name,
                    added_by_role=(
                        "manager"
                        if by == t.manager_id
                        else "employee"
                        if by == t.employee_id
                        else "other"
                    ),
                    added_at=row.added_at,
                )
                for by, row in topics_by_series[t.series_id]
                if since <= row.start_at <= t.start_at
            ),
            role=roles.get(t.role) if t.role else None,
            numbering=tuple(
                (int(entry["number"]), tuple(int(i) for i in entry["ids"]))
                for entry in numbering.get(t.id, (0, []))[1]
            ),
        )
    return out


# --- topics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicsAdded:
    """Where the topics went. ``late`` means an agenda of that check-in was already sent:
    send an update in its thread. ``moved_from`` is set when the check-in named had begun (or
    did not take place) and the topics went to the next one."""

    occurrence_id: int
    topic_ids: tuple[int, ...]
    duplicates: tuple[str, ...]
    moved_from: int | None
    late: bool


def _occurrence(session: Session, organization_id: int, occurrence: Occurrence | int) -> Occurrence:
    found = session.get(Occurrence, occurrence) if isinstance(occurrence, int) else occurrence
    if found is None or found.organization_id != organization_id:
        raise LookupError(f"no check-in {occurrence}")
    return found


def add_topics(
    session: Session,
    organization_id: int,
    occurrence: Occurrence | int,
    author: Person,
    topics: Sequence[str],
    now: dt.datetime,
    source_message_id: int | None = None,
) -> TopicsAdded:
    """Record topics ``author`` adds to a check-in's agenda (the texts of
    :func:`automation.domain.agenda_replies.parse_topics`).

    Up to the meeting they go on the check-in named; from its start (or if it was skipped or
    cancelled) on the next planned check-in of the series, if there is one. A topic already
    open on that check-in (same text, folded) is not added twice, nor is a topic of a message
    that was processed before (same ``source_message_id`` and position). Audited.
    """
    named = _occurrence(session, organization_id, occurrence)
    target, moved_from = named, None
    if now >= named.start_at or named.state in NOT_HELD:
        following = session.scalar(
            select(Occurrence)
            .where(
                Occurrence.organization_id == organization_id,
                Occurrence.series_id == named.series_id,
                Occurrence.start_at > now,
                Occurrence.state.in_((OccurrenceState.PLANNED, OccurrenceState.INVITED)),
            )
            .order_by(Occurrence.start_at)
            .limit(1)
        )
        if following is not None:
            target, moved_from = following, named.id
    done_positions: set[int] = set()
    if source_message_id is not None:
        done_positions = set(
            session.scalars(
                select(AgendaTopic.position).where(
                    AgendaTopic.organization_id == organization_id,
                    AgendaTopic.source_message_id == source_message_id,
                )
            )
        )
    open_texts = {
        fold(text)
        for text in session.scalars(
            select(AgendaTopic.text).where(
                AgendaTopic.organization_id == organization_id,
                AgendaTopic.occurrence_id == target.id,
                AgendaTopic.closed_at.is_(None),
            )
        )
    }
    added: list[AgendaTopic] = []
    duplicates: list[str] = []
    for position, text in enumerate(topics):
        if position in done_positions:
            continue
        if not text.strip() or fold(text) in open_texts:
            duplicates.append(text)
            continue
        open_texts.add(fold(text))
        topic = AgendaTopic(
            organization_id=organization_id,
            occurrence_id=target.id,
            added_by_id=author.id,
            text=text.strip(),
            source_message_id=source_message_id,
            position=position,
            added_at=now,
        )
        session.add(topic)
        added.append(topic)
    late = False
    if added:
        session.flush()
        audit.record(
            session,
            organization_id,
            actor=author.email,
            action="agenda.topics_added",
            subject_kind="occurrence",
            subject_id=target.id,
            at=now,
            data={
                "topic_ids": [t.id for t in added],
                "source_message_id": source_message_id,
                **({"moved_from": moved_from} if moved_from else {}),
            },
        )
        late = (
            session.scalar(
                select(func.count(AgendaSnapshot.id)).where(
                    AgendaSnapshot.organization_id == organization_id,
                    AgendaSnapshot.occurrence_id == target.id,
                )
            )
            or 0
        ) > 0
    return TopicsAdded(
        occurrence_id=target.id,
        topic_ids=tuple(t.id for t in added),
        duplicates=tuple(duplicates),
        moved_from=moved_from,
        late=late,
    )


# --- closing action items --------------------------------------------------------------------


def _open_rows(session: Session, organization_id: int, series_id: int) -> list[RecordedItem]:
    return [
        RecordedItem(row.id, row.occurrence_id, row.text, None, row.due_on, row.created_at)
        for row in session.execute(
            select(
                ActionItem.id,
                ActionItem.text,
                ActionItem.due_on,
                ActionItem.created_at,
                Occurrence.id.label("occurrence_id"),
            )
            .select_from(ActionItem)
            .join(ConversationRecord, _on(ConversationRecord, ActionItem, "record_id"))
            .join(
                Occurrence,
                (Occurrence.organization_id == ConversationRecord.organization_id)
                & (Occurrence.id == ConversationRecord.subject_id),
            )
            .where(
                ActionItem.organization_id == organization_id,
                ActionItem.done.is_(False),
                ConversationRecord.subject_kind == "occurrence",
                Occurrence.series_id == series_id,
            )
        )
    ]


def latest_snapshot(
    session: Session, organization_id: int, occurrence_id: int, role: str = MANAGER
) -> AgendaSnapshot | None:
    """The last agenda (or update) of the check-in kept for ``role``; its ``built_at`` is what
    an update's ``update_since`` is, its ``outbound_message_id`` the email to reply to."""
    return session.scalar(
        select(AgendaSnapshot)
        .where(
            AgendaSnapshot.organization_id == organization_id,
            AgendaSnapshot.occurrence_id == occurrence_id,
            AgendaSnapshot.role == role,
        )
        .order_by(AgendaSnapshot.sequence.desc())
        .limit(1)
    )


def manager_numbering(
    session: Session, organization_id: int, occurrence_id: int, now: dt.datetime
) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """(number, action item ids) as the manager's latest agenda of the check-in showed them;
    for a check-in whose agenda was sent before agendas were kept, as it would show them now."""
    snapshot = latest_snapshot(session, organization_id, occurrence_id, MANAGER)
    if snapshot is not None:
        return tuple((int(e["number"]), tuple(int(i) for i in e["ids"])) for e in snapshot.items)
    inputs = agenda_inputs(session, organization_id, [occurrence_id], now)
    if occurrence_id not in inputs:
        return ()
    return build_agenda(inputs[occurrence_id], MANAGER, now).numbering


def close_items(
    session: Session,
    organization_id: int,
    occurrence_id: int,
    author: Person,
    closures: Closures,
    now: dt.datetime,
    *,
    source_message_id: int | None = None,
    record_id: int | None = None,
) -> list[str]:
    """Close the action items a reply about check-in ``occurrence_id`` names; return what was
    done, in words, one line per number or text.

    A number is the item's number on the manager's agenda of that check-in
    (:func:`manager_numbering`). A text closes the one open item of the series with that text
    (folded), else the only one whose text contains it. Closing an item closes every open row
    of it (the same text in another version of the same check-in's record). Each closed item
    is audited with the record and message that closed it.
    """
    occurrence = _occurrence(session, organization_id, occurrence_id)
    open_rows = _open_rows(session, organization_id, occurrence.series_id)
    open_ids = {r.id for r in open_rows}
    same_item: dict[tuple[int, str], set[int]] = defaultdict(set)
    for r in open_rows:
        same_item[r.occurrence_id, fold(r.text)].add(r.id)
    by_id = {r.id: r for r in open_rows}
    done: list[str] = []
    closing: list[tuple[str, set[int], str]] = []  # (label, ids, text)

    if closures.numbers:
        numbering = dict(manager_numbering(session, organization_id, occurrence_id, now))
        known = {
            row.id: row.text
            for row in session.execute(
                select(ActionItem.id, ActionItem.text).where(
                    ActionItem.organization_id == organization_id,
                    ActionItem.id.in_({i for ids in numbering.values() for i in ids}),
                )
            )
        }
        for number in closures.numbers:
            if number not in numbering:
                shown = ", ".join(str(n) for n in sorted(numbering)) or "none"
                done.append(
                    f"item {number}: not on the agenda (its items: {shown}); nothing closed"
                )
                continue
            ids = set(numbering[number])
            text = next((known[i] for i in sorted(ids) if i in known), "")
            still_open = ids & open_ids
            if not still_open:
                done.append(f"item {number} “{text}” was already closed")
                continue
            closing.append((f"item {number}", still_open, text))
    for wanted in closures.texts:
        key = fold(wanted)
        groups = group_items(open_rows)
        hits = [g for g in groups if fold(g.latest.text) == key] or [
            g for g in groups if key and key in fold(g.latest.text)
        ]
        if len(hits) != 1:
            done.append(
                f"“{wanted}”: "
                + ("no open item matches" if not hits else f"{len(hits)} open items match")
                + "; nothing closed (close it by its number: #done 2)"
            )
            continue
        closing.append(("item", set(hits[0].ids), hits[0].latest.text))
    for label, ids, text in closing:
        rows = [by_id[i] for i in ids if i in by_id]
        for row in rows:  # the same item in the other versions of its check-in's record
            ids |= same_item[row.occurrence_id, fold(row.text)]
        ids -= {i for i in ids if i not in open_ids}
        if not ids:
            continue
        session.execute(
            update(ActionItem)
            .where(ActionItem.organization_id == organization_id, ActionItem.id.in_(ids))
            .values(done=True)
        )
        open_ids -= ids
        audit.record(
            session,
            organization_id,
            actor=author.email,
            action="action_item.closed",
            subject_kind="occurrence",
            subject_id=occurrence_id,
            at=now,
            data={
                "action_item_ids": sorted(ids),
                "as": label,
                "record_id": record_id,
                "source_message_id": source_message_id,
            },
        )
        done.append(f"closed {label} “{text}”")
    return done


# --- what was sent, and the template's variables ---------------------------------------------


def record_agenda(
    session: Session,
    organization_id: int,
    agenda: Agenda,
    recipient: Person,
    now: dt.datetime,
    *,
    sequence: int = 1,
    outbound_message_id: int | None = None,
) -> AgendaSnapshot:
    """Keep what one agenda email shows (once per check-in, role and ``sequence``: a retried
    task finds the first one). Sequence 1 is the agenda, 2 and up its updates."""
    existing = session.scalar(
        select(AgendaSnapshot).where(
            AgendaSnapshot.organization_id == organization_id,
            AgendaSnapshot.occurrence_id == agenda.occurrence_id,
            AgendaSnapshot.role == agenda.recipient,
            AgendaSnapshot.sequence == sequence,
        )
    )
    if existing is not None:
        return existing
    snapshot = AgendaSnapshot(
        organization_id=organization_id,
        occurrence_id=agenda.occurrence_id,
        role=agenda.recipient,
        recipient_id=recipient.id,
        sequence=sequence,
        items=[{"number": n, "ids": list(ids)} for n, ids in agenda.numbering],
        topic_ids=[t.id for t in agenda.topics],
        coaching=[p.trigger for p in agenda.coaching],
        outbound_message_id=outbound_message_id,
        built_at=now,
    )
    session.add(snapshot)
    session.flush()
    return snapshot


def next_sequence(session: Session, organization_id: int, occurrence_id: int, role: str) -> int:
    """The sequence an update of this check-in's agenda for ``role`` gets (1 if none sent)."""
    last = session.scalar(
        select(func.max(AgendaSnapshot.sequence)).where(
            AgendaSnapshot.organization_id == organization_id,
            AgendaSnapshot.occurrence_id == occurrence_id,
            AgendaSnapshot.role == role,
        )
    )
    return (last or 0) + 1


def _day(day: dt.date) -> str:
    return f"{day.day} {day:%B %Y}"


def agenda_context(
    agenda: Agenda, tz_name: str, *, update_since: dt.datetime | None = None
) -> dict[str, Any]:
    """The agenda template's variables for ``agenda`` (merge them into the context the
    template already gets). ``update_since``: this email is an update of the agenda sent
    then; the topics added after it are marked new. The coaching prompts are passed only for
    the manager, whatever the agenda holds."""
    tz = zone(tz_name)
    coaching = agenda.coaching if agenda.recipient == MANAGER else ()
    return {
        "open_action_items": [
            {
                "number": item.number,
                "text": item.text,
                "owner": item.owner,
                "due": item.due.isoformat() if item.due else None,
                "age": item.age,
                "overdue": item.overdue,
            }
            for item in agenda.action_items
        ],
        "goals": [
            {
                "title": g.title,
                "success_criteria": g.success_criteria,
                "owner": g.owner,
                "due": g.due.isoformat() if g.due else None,
                "status": g.status,
                "status_label": GOAL_STATUS_LABELS[g.status],
                "updated": g.updated,
            }
            for g in agenda.goals
        ],
        "role": (
            {
                "title": agenda.role.title,
                "priorities": list(agenda.role.priorities),
                "success_criteria": list(agenda.role.success_criteria),
            }
            if agenda.role
            else None
        ),
        "pip": (
            {
                "title": agenda.pip.title,
                "ends_on": _day(agenda.pip.ends_at.astimezone(tz).date()),
                "goals": [
                    {
                        "position": g.position,
                        "goal": g.goal,
                        "success_criteria": g.success_criteria,
                        "owner": g.owner,
                        "due": g.due.isoformat() if g.due else None,
                    }
                    for g in agenda.pip.goals
                ],
            }
            if agenda.pip
            else None
        ),
        "development_items": [
            {
                "kind": d.kind,
                "kind_label": DEVELOPMENT_KIND_LABELS.get(d.kind, d.kind),
                "text": d.text,
                "discuss_by": d.discuss_by.isoformat() if d.discuss_by else None,
            }
            for d in agenda.development
        ],
        "topics": [
            {
                "text": t.text,
                "added_by": t.added_by,
                "added_on": _day(t.added_at.astimezone(tz).date()),
                "carried_over": t.carried_over,
                "new": update_since is not None and t.added_at > update_since,
            }
            for t in agenda.topics
        ],
        "coaching": [
            {
                "trigger": p.trigger,
                "title": p.title,
                "why": list(p.why),
                "suggestion": p.suggestion,
                "document": p.document,
            }
            for p in coaching
        ],
        "agenda_update": update_since is not None,
    }
