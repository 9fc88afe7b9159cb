"""Planning: cadences into series, series into occurrences, occurrences into due work."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from automation import audit
from automation.adapters.calendars import connected
from automation.domain.cadence import Cadence, Interval, choose_slot, expand
from automation.emails import render_text
from automation.models import (
    Cadence as CadenceRow,
)
from automation.models import (
    CheckinSeries,
    Occurrence,
    OccurrenceState,
    Person,
    Task,
    TaskState,
)
from automation.ports import Attendee, OccurrenceOverride, SeriesEvent
from automation.runtime import Runtime, current_cadences
from automation.services.tasks import create_task, handles


@dataclass(frozen=True)
class PlanResult:
    series_created: int
    occurrences_created: int


def sync_cadences(
    session: Session, organization_id: int, cadences: dict[str, Cadence], now: dt.datetime
) -> dict[str, CadenceRow]:
    """Store the configured cadences; a changed file updates its row, a removed one retires it."""
    rows = {
        r.name: r
        for r in session.scalars(
            select(CadenceRow).where(CadenceRow.organization_id == organization_id)
        )
    }
    for name, cadence in cadences.items():
        definition = cadence.as_dict()
        digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()
        row = rows.get(name)
        if row is None:
            row = CadenceRow(
                organization_id=organization_id,
                name=name,
                source_file=cadence.source_file,
                digest=digest,
                definition=definition,
                active=True,
                updated_at=now,
            )
            session.add(row)
            rows[name] = row
        elif row.digest != digest or not row.active:
            row.definition, row.digest, row.active, row.updated_at = definition, digest, True, now
            row.source_file = cadence.source_file
        else:
            continue
        session.flush()
        audit.record(
            session,
            organization_id,
            actor="config",
            action="cadence.loaded",
            subject_kind="cadence",
            subject_id=row.id,
            at=now,
            data={"name": name, "digest": digest, "file": cadence.source_file},
        )
    for name, row in rows.items():
        if name not in cadences and row.active:
            row.active = False
            row.updated_at = now
    return rows


def _busy_by_person(
    session: Session, organization_id: int, start: dt.datetime, end: dt.datetime
) -> dict[int, list[Interval]]:
    busy: dict[int, list[Interval]] = defaultdict(list)
    rows = session.execute(
        select(
            CheckinSeries.manager_id,
            CheckinSeries.employee_id,
            Occurrence.start_at,
            Occurrence.end_at,
        )
        .join(
            Occurrence,
            (Occurrence.series_id == CheckinSeries.id)
            & (Occurrence.organization_id == CheckinSeries.organization_id),
        )
        .where(
            CheckinSeries.organization_id == organization_id,
            Occurrence.start_at < end,
            Occurrence.end_at > start,
            Occurrence.state.notin_([OccurrenceState.CANCELLED, OccurrenceState.SKIPPED]),
        )
    )
    for manager_id, employee_id, s, e in rows:
        busy[manager_id].append((s, e))
        busy[employee_id].append((s, e))
    return busy


def _provider_busy(
    rt: Runtime, manager: Person, employee: Person, now: dt.datetime
) -> list[Interval]:
    """Both people's busy times in their own calendars (all-day events, out of office, other
    meetings), so a new series lands in a slot free for both. The embedded calendar holds
    only our own series, which the database already knows."""
    if rt.calendar.name in ("local", "imip") or not connected(rt.settings, manager.email):
        return []
    horizon = now + dt.timedelta(days=rt.settings.planning_horizon_days)
    return list(rt.calendar.busy([manager.email, employee.email], now, horizon))


def plan(
    rt: Runtime, session: Session, organization_id: int, horizon_days: int | None = None
) -> PlanResult:
    """Make sure every report has a series per applicable cadence, planned to the horizon.

    Idempotent: a second call with the same clock creates nothing.
    """
    now = rt.now()
    horizon = now + dt.timedelta(days=horizon_days or rt.settings.planning_horizon_days)
    cadences = current_cadences(rt)  # read once: a save in the console swaps the dict
    cadence_rows = sync_cadences(session, organization_id, cadences, now)
    people = {
        p.id: p
        for p in session.scalars(
            select(Person).where(Person.organization_id == organization_id, Person.active)
        )
    }
    existing = {
        (s.cadence_id, s.employee_id): s
        for s in session.scalars(
            select(CheckinSeries).where(CheckinSeries.organization_id == organization_id)
        )
    }
    busy = _busy_by_person(session, organization_id, now, horizon)
    slot_horizon = now + dt.timedelta(days=rt.settings.planning_horizon_days)
    new_series: list[dict[str, Any]] = []
    for name, cadence in cadences.items():
        row = cadence_rows[name]
        for person in people.values():
            manager = people.get(person.manager_id) if person.manager_id else None
            if manager is None or not cadence.applies_to(person.email, manager.email):
                continue
            series = existing.get((row.id, person.id))
            if series is not None:
                if series.manager_id != manager.id and series.active:
                    series.manager_id = manager.id  # a new manager takes over the series
                    series_changed(session, series, now)
                continue
            slot, rule = choose_slot(
                cadence,
                person.timezone,
                now,
                busy[manager.id] + busy[person.id] + _provider_busy(rt, manager, person, now),
                rt.settings.planning_horizon_days,
            )
            for inst in expand(
                rule, slot, person.timezone, cadence.duration_minutes, now, slot_horizon
            ):
                busy[manager.id].append((inst.start, inst.end))
                busy[person.id].append((inst.start, inst.end))
            new_series.append(
                {
                    "organization_id": organization_id,
                    "cadence_id": row.id,
                    "manager_id": manager.id,
                    "employee_id": person.id,
                    # Derived from the series' natural key: stable, and unique per organization.
                    "uid": f"checkin-{organization_id}-{row.id}-{person.id}"
                    f"@{rt.settings.reply_domain}",
                    "rrule": rule,
                    "dtstart_local": slot.isoformat(timespec="seconds"),
                    "timezone": person.timezone,
                    "duration_minutes": cadence.duration_minutes,
                    "sequence": 0,
                    "active": True,
                    "planned_until": None,
                    "created_at": now,
                    "updated_at": now,
                    "_audit": {
                        "cadence": name,
                        "employee": person.email,
                        "manager": manager.email,
                        "rrule": rule,
                        "dtstart": slot.isoformat(timespec="seconds"),
                        "tz": person.timezone,
                    },
                }
            )
    if new_series:
        notes = [s.pop("_audit") for s in new_series]
        ids = session.scalars(
            insert(CheckinSeries).returning(CheckinSeries.id, sort_by_parameter_order=True),
            new_series,
        ).all()
        audit.record_many(
            session,
            organization_id,
            [
                {
                    "actor": "planner",
                    "action": "series.created",
                    "subject_kind": "series",
                    "subject_id": series_id,
                    "data": note,
                }
                for series_id, note in zip(ids, notes, strict=True)
            ],
            at=now,
        )
        session.execute(
            insert(Task),
            [
                _task_row(organization_id, "invite", f"invite:series:{i}:0", i, now, now)
                for i in ids
            ],
        )
        existing.update(
            {
                (s.cadence_id, s.employee_id): s
                for s in session.scalars(select(CheckinSeries).where(CheckinSeries.id.in_(ids)))
            }
        )
    wanted = {
        (cadence_rows[name].id, person.id)
        for name, cadence in cadences.items()
        for person in people.values()
        if person.manager_id in people
        and cadence.applies_to(person.email, people[person.manager_id].email)
    }
    for key, series in existing.items():
        if series.active and key not in wanted:
            retire_series(session, series, now)
    invited = set(
        session.scalars(
            select(Task.subject_id).where(
                Task.organization_id == organization_id,
                Task.kind == "invite",
                Task.state == TaskState.DONE,
            )
        )
    )
    cadence_by_id = {r.id: cadences[r.name] for r in cadence_rows.values() if r.name in cadences}
    occurrences = extend_series(
        session,
        [
            (s, cadence_by_id[s.cadence_id], s.id in invited)
            for s in existing.values()
            if s.active and s.cadence_id in cadence_by_id
        ],
        now,
        horizon,
    )
    return PlanResult(len(new_series), occurrences)


def retire_series(session: Session, series: CheckinSeries, now: dt.datetime) -> None:
    """End a series whose employee left, lost their manager, or whose cadence was removed.

    Future meetings are cancelled (their agenda and follow-up tasks then find nothing to do)
    and the calendar gets the series with STATUS:CANCELLED and a higher SEQUENCE.
    """
    series.active = False
    cancelled = 0
    for occ in session.scalars(
        select(Occurrence).where(
            Occurrence.organization_id == series.organization_id,
            Occurrence.series_id == series.id,
            Occurrence.start_at > now,
            Occurrence.state.in_((OccurrenceState.PLANNED, OccurrenceState.INVITED)),
        )
    ):
        occ.state = OccurrenceState.CANCELLED
        occ.updated_at = now
        cancelled += 1
    audit.record(
        session,
        series.organization_id,
        actor="planner",
        action="series.retired",
        subject_kind="series",
        subject_id=series.id,
        at=now,
        data={"cancelled_occurrences": cancelled},
    )
    series_changed(session, series, now)


def series_changed(session: Session, series: CheckinSeries, now: dt.datetime) -> None:
    """The series is different now (a meeting cancelled or moved, a new manager, retired):
    raise its SEQUENCE and schedule the invite task that sends the new version (RFC 5546:
    receivers apply an update only when SEQUENCE rises)."""
    series.sequence += 1
    series.updated_at = now
    create_task(
        session,
        series.organization_id,
        "invite",
        f"invite:series:{series.id}:{series.sequence}",
        series.id,
        now,
        now,
    )


def move_occurrence(
    session: Session, occ: Occurrence, start: dt.datetime, end: dt.datetime, now: dt.datetime
) -> None:
    """Move a meeting and the agenda and follow-up that hang on it."""
    shift = start - occ.start_at
    occ.start_at, occ.end_at, occ.updated_at = start, end, now
    for task in session.scalars(
        select(Task).where(
            Task.organization_id == occ.organization_id,
            Task.key.in_([f"agenda:occurrence:{occ.id}", f"followup:occurrence:{occ.id}"]),
            Task.state == TaskState.PENDING,
        )
    ):
        task.due_at = max(task.due_at + shift, now)
        task.updated_at = now


def next_open_occurrence(
    session: Session, series: CheckinSeries, after: dt.datetime
) -> Occurrence | None:
    """The series' next meeting after ``after`` that is still planned or invited."""
    return session.scalar(
        select(Occurrence)
        .where(
            Occurrence.organization_id == series.organization_id,
            Occurrence.series_id == series.id,
            Occurrence.start_at > after,
            Occurrence.state.in_((OccurrenceState.PLANNED, OccurrenceState.INVITED)),
        )
        .order_by(Occurrence.start_at)
        .limit(1)
    )


def _task_row(
    org: int, kind: str, key: str, subject_id: int, due: dt.datetime, now: dt.datetime
) -> dict[str, Any]:
    return {
        "organization_id": org,
        "kind": kind,
        "key": key,
        "subject_id": subject_id,
        "due_at": due,
        "state": TaskState.PENDING,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }


def extend_series(
    session: Session,
    todo: list[tuple[CheckinSeries, Cadence, bool]],
    now: dt.datetime,
    horizon: dt.datetime,
    chunk: int = 5000,
) -> int:
    """Add each series' occurrences between what is planned and the horizon, with their due
    work (agenda and follow-up tasks). ``todo`` holds (series, cadence, already invited?);
    occurrences added to a series already in people's calendars are covered by its RRULE.
    """
    rows: list[dict[str, Any]] = []
    timing: list[tuple[dt.timedelta, dt.timedelta]] = []
    for series, cadence, invited in todo:
        start = series.planned_until or now
        if start >= horizon:
            continue
        series.planned_until = horizon
        lead = dt.timedelta(hours=cadence.agenda_lead_hours)
        delay = dt.timedelta(hours=cadence.followup_delay_hours)
        for i in expand(
            series.rrule,
            dt.datetime.fromisoformat(series.dtstart_local),
            series.timezone,
            series.duration_minutes,
            start,
            horizon,
        ):
            rows.append(
                {
                    "organization_id": series.organization_id,
                    "series_id": series.id,
                    "recurrence_id": i.recurrence_id,
                    "start_at": i.start,
                    "end_at": i.end,
                    "state": OccurrenceState.INVITED if invited else OccurrenceState.PLANNED,
                    "created_at": now,
                    "updated_at": now,
                }
            )
            timing.append((lead, delay))
    for lo in range(0, len(rows), chunk):
        batch = rows[lo : lo + chunk]
        ids = session.scalars(
            insert(Occurrence).returning(Occurrence.id, sort_by_parameter_order=True), batch
        ).all()
        tasks = []
        for occ_id, occ, (lead, delay) in zip(ids, batch, timing[lo : lo + chunk], strict=True):
            org = occ["organization_id"]
            tasks.append(
                _task_row(
                    org,
                    "agenda",
                    f"agenda:occurrence:{occ_id}",
                    occ_id,
                    max(occ["start_at"] - lead, now),
                    now,
                )
            )
            tasks.append(
                _task_row(
                    org,
                    "followup",
                    f"followup:occurrence:{occ_id}",
                    occ_id,
                    max(occ["end_at"] + delay, now),
                    now,
                )
            )
        session.execute(insert(Task), tasks)
    return len(rows)


def series_event(rt: Runtime, session: Session, series: CheckinSeries) -> SeriesEvent:
    manager = session.get(Person, series.manager_id)
    employee = session.get(Person, series.employee_id)
    assert manager is not None and employee is not None
    cadence_row = session.get(CadenceRow, series.cadence_id)
    assert cadence_row is not None
    cadence = Cadence.from_dict(cadence_row.definition)
    overrides = [
        OccurrenceOverride(
            o.recurrence_id,
            o.start_at,
            o.end_at,
            cancelled=o.state in (OccurrenceState.CANCELLED, OccurrenceState.SKIPPED),
        )
        for o in session.scalars(
            select(Occurrence).where(
                Occurrence.organization_id == series.organization_id,
                Occurrence.series_id == series.id,
            )
        )
        if o.state in (OccurrenceState.CANCELLED, OccurrenceState.SKIPPED)
        or o.start_at != o.recurrence_id
    ]
    description = render_text(
        rt.settings.templates_dir,
        "invite/description.txt",
        {
            "manager": {"name": manager.name},
            "employee": {"name": employee.name},
            "questions": list(cadence.questions),
            "org": {"name": rt.settings.organization_name},
        },
    )
    return SeriesEvent(
        uid=series.uid,
        sequence=series.sequence,
        summary=cadence.title.format(manager=manager.name, employee=employee.name),
        description=description,
        organizer=Attendee(manager.email, manager.name),
        attendees=(Attendee(employee.email, employee.name), Attendee(manager.email, manager.name)),
        dtstart_local=dt.datetime.fromisoformat(series.dtstart_local),
        timezone=series.timezone,
        duration_minutes=series.duration_minutes,
        rrule=series.rrule,
        overrides=tuple(overrides),
        cancelled=not series.active,
    )


@handles("plan")
def run_planning(rt: Runtime, session: Session, task: Task) -> str:
    result = plan(rt, session, task.organization_id)
    # Plan again tomorrow; the key makes one planning task per organization per day.
    tomorrow = rt.now() + dt.timedelta(days=1)
    create_task(
        session,
        task.organization_id,
        "plan",
        f"plan:{tomorrow.date().isoformat()}",
        task.organization_id,
        tomorrow,
        rt.now(),
    )
    return f"series+{result.series_created} occurrences+{result.occurrences_created}"


def plan_after_import(session: Session, organization_id: int, now: dt.datetime) -> None:
    """Plan the organization's check-ins now, for people just imported or changed, rather
    than at its next daily planning (a client's first plan runs as soon as it is created,
    usually before its people are imported). Keyed by the moment: each import plans once."""
    create_task(
        session,
        organization_id,
        "plan",
        f"plan:import:{now.isoformat()}",
        organization_id,
        now,
        now,
    )
