"""Escalation benchmark: the tick's escalation work on a large database vs a small one.

``escalation.tick_1m_vs_10k`` (PostgreSQL): two organisations, each in its own schema (dropped
afterwards). The large one holds 1,000,000 occurrences and 100,000 PIP reviews (``--scale``
multiplies both), each with its pending escalation task (``escalate:<kind>:<id>:0``), almost
all due in the future; the small one 10,000 and 1,000 (a tenth of the large one at small
scales). In both, exactly ``DUE`` = 100 tasks are due (half check-ins, half PIP reviews,
undocumented, ended an hour ago). One round is the escalation tick: ``due_task_ids`` and then
``run_task`` on every id it returns (claim, load the subject, check the escalations table,
queue the reminder email, write the escalation row and the audit entry, schedule the next
step). Each round gets 100 fresh due items (their tasks are made due just before it, outside
the timing), and the emails it queued are marked sent outside the timing, so every round
finds exactly 100 due escalation steps. Value: median round at the large size; baseline: the
same at the small size; ratio: large / small (goal < 2: the work follows the due items, not
the tables). A second row, ``...find``, times ``due_task_ids`` alone.

Set-up is server-side ``INSERT ... SELECT generate_series`` (a million rows in seconds), then
``ANALYZE`` of its tables (as autovacuum would on a live database). Without PostgreSQL the
benchmark prints one row saying why, with zeros.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

POSTGRES_URL = os.environ.get(
    "AUTOMATION_BENCH_POSTGRES_URL",
    os.environ.get(
        "AUTOMATION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/test"
    ),
)
START = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)
DUE = 100  # due escalation steps per round, half check-ins and half PIP reviews
ROUNDS = 5
SERIES = 1_000  # check-in series the occurrences are spread over (one per employee)
REVIEWS_PER_PIP = 10


def _reachable(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    host, port = parsed.host or "localhost", parsed.port or 5432
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"PostgreSQL is not reachable on {host}:{port} ({exc})"


def _naive(moment: dt.datetime) -> dt.datetime:
    """UTCDateTime columns hold naive UTC timestamps."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def _fill(rt: Any, occurrences: int, reviews: int) -> int:
    """The organisation, its people, one cadence, the series, then the bulk rows. Returns the
    organization id. Every occurrence and review gets a pending step-0 task; the last
    ``ROUNDS * DUE / 2`` of each ended an hour ago (the candidates of the timed rounds, their
    tasks still in the future until a round makes them due), the rest are in the future."""
    from sqlalchemy import insert, text

    from automation.db import transaction
    from automation.models import Cadence, Organization, Person

    now = rt.now()
    cadence_def = next(iter(rt.cadences.values())).as_dict()
    pip_ladder = [
        {"after_business_days": s.after_business_days, "notify": s.notify, "template": s.template}
        for s in next(iter(rt.cadences.values())).ladder
    ]
    per_round = DUE // 2
    with transaction(rt.factory) as session:
        org = Organization(
            slug="bench", name="Bench", created_at=now, audit_seq=0, audit_head="0" * 64
        )
        session.add(org)
        session.flush()
        stamp = {"organization_id": org.id, "active": True, "created_at": now, "updated_at": now}
        hr = session.scalars(
            insert(Person).returning(Person.id),
            [{**stamp, "email": "hr@bench.test", "name": "HR", "timezone": "Europe/London"}],
        ).one()
        managers = session.scalars(
            insert(Person).returning(Person.id, sort_by_parameter_order=True),
            [
                {
                    **stamp,
                    "email": f"m{i}@bench.test",
                    "name": f"Manager {i}",
                    "timezone": "America/New_York",
                    "hr_partner_id": hr,
                }
                for i in range(SERIES // 8)
            ],
        ).all()
        session.execute(
            insert(Person),
            [
                {
                    **stamp,
                    "email": f"e{i}@bench.test",
                    "name": f"Employee {i}",
                    "timezone": "Europe/Berlin",
                    "manager_id": managers[i // 8],
                    "hr_partner_id": hr,
                }
                for i in range(SERIES)
            ],
        )
        cadence = Cadence(
            organization_id=org.id,
            name=cadence_def["name"],
            source_file="bench",
            digest="-",
            definition=cadence_def,
            active=True,
            updated_at=now,
        )
        session.add(cadence)
        session.flush()
        org_id, cadence_id = org.id, cadence.id
        params = {
            "org": org_id,
            "cadence": cadence_id,
            "now": _naive(now),
            "past": _naive(now - dt.timedelta(hours=1)),
            "future": _naive(now + dt.timedelta(days=30)),
            "series": SERIES,
            "occurrences": occurrences,
            "reviews": reviews,
            "pips": max(reviews // REVIEWS_PER_PIP, 1),
            "candidates": ROUNDS * per_round,
            "per_pip": REVIEWS_PER_PIP,
            "ladder": __import__("json").dumps(pip_ladder),
        }
        statements = [
            # One series per employee, each with its manager.
            """INSERT INTO checkin_series (organization_id, cadence_id, manager_id, employee_id,
                   uid, rrule, dtstart_local, timezone, duration_minutes, sequence, active,
                   created_at, updated_at)
               SELECT :org, :cadence, p.manager_id, p.id, 'bench-' || p.id,
                   'FREQ=WEEKLY;INTERVAL=2', '2026-03-03T10:00:00', p.timezone, 30, 0, true,
                   :now, :now
               FROM people p WHERE p.organization_id = :org AND p.manager_id IS NOT NULL""",
            # Occurrences: the last `candidates` ended an hour ago, the rest are in the future.
            """INSERT INTO occurrences (organization_id, series_id, recurrence_id, start_at,
                   end_at, state, created_at, updated_at)
               SELECT :org, s.id, t.start_at, t.start_at, t.start_at + interval '30 minutes',
                   'held', :now, :now
               FROM generate_series(0, :occurrences - 1) AS g
               JOIN LATERAL (SELECT CASE WHEN g >= :occurrences - :candidates
                       THEN CAST(:past AS timestamp) - interval '30 minutes'
                            - (:occurrences - 1 - g) * interval '1 second'
                       ELSE CAST(:future AS timestamp) + g * interval '1 minute' END
                   AS start_at) t ON true
               JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM checkin_series
                     WHERE organization_id = :org) s ON s.n = g % :series""",
            """INSERT INTO pips (organization_id, employee_id, manager_id, title, started_on,
                   ends_on, state, ladder, created_at)
               SELECT :org, e.id, e.manager_id, 'Plan ' || g, :now, :future, 'active',
                   CAST(:ladder AS json), :now
               FROM generate_series(0, :pips - 1) AS g
               JOIN (SELECT id, manager_id, row_number() OVER (ORDER BY id) - 1 AS n
                     FROM people WHERE organization_id = :org AND manager_id IS NOT NULL) e
                 ON e.n = g % :series""",
            """INSERT INTO pip_reviews (organization_id, pip_id, name, due_at, created_at)
               SELECT :org, p.id, 'Review ' || g,
                   CASE WHEN g >= :reviews - :candidates THEN CAST(:past AS timestamp)
                        ELSE CAST(:future AS timestamp) + g * interval '1 minute' END, :now
               FROM generate_series(0, :reviews - 1) AS g
               JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM pips
                     WHERE organization_id = :org) p ON p.n = g / :per_pip""",
            # Every subject's first ladder step is pending; all in the future for now.
            """INSERT INTO tasks (organization_id, kind, key, subject_id, due_at, state,
                   attempts, created_at, updated_at)
               SELECT :org, 'escalate', 'escalate:occurrence:' || o.id || ':' || '0', o.id,
                   GREATEST(o.end_at, CAST(:future AS timestamp)) + interval '3 days',
                   'pending', 0, :now, :now
               FROM occurrences o WHERE o.organization_id = :org""",
            """INSERT INTO tasks (organization_id, kind, key, subject_id, due_at, state,
                   attempts, created_at, updated_at)
               SELECT :org, 'escalate', 'escalate:pip_review:' || r.id || ':' || '0', r.id,
                   GREATEST(r.due_at, CAST(:future AS timestamp)) + interval '3 days',
                   'pending', 0, :now, :now
               FROM pip_reviews r WHERE r.organization_id = :org""",
        ]
        for statement in statements:
            session.execute(text(statement), params)
    with rt.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # Only this schema's tables (the search path): not every schema in the database.
        for table in ("people", "checkin_series", "occurrences", "pips", "pip_reviews", "tasks"):
            conn.execute(text(f"ANALYZE {table}"))
    return org_id


def _round_tasks(rt: Any, org_id: int, round_no: int) -> list[int]:
    """The task ids of round ``round_no``'s candidates: DUE/2 check-ins, DUE/2 reviews."""
    from sqlalchemy import text

    per_round = DUE // 2
    with rt.engine.connect() as conn:
        ids = []
        for table, kind in (("occurrences", "occurrence"), ("pip_reviews", "pip_review")):
            column = "end_at" if table == "occurrences" else "due_at"
            subjects = conn.execute(
                text(
                    f"SELECT id FROM {table} WHERE organization_id = :org AND {column} < :now "
                    f"ORDER BY id LIMIT :n OFFSET :skip"
                ),
                {
                    "org": org_id,
                    "now": _naive(rt.now()),
                    "n": per_round,
                    "skip": round_no * per_round,
                },
            ).scalars()
            keys = [f"escalate:{kind}:{s}:0" for s in subjects]
            ids += conn.execute(
                text("SELECT id FROM tasks WHERE organization_id = :org AND key = ANY(:keys)"),
                {"org": org_id, "keys": keys},
            ).scalars()
    return ids


def _measure(rt: Any, org_id: int) -> tuple[float, float, list[str]]:
    """Median (find + run) and median find-only, over ROUNDS rounds of DUE due steps."""
    from sqlalchemy import text

    from automation.db import due_task_ids, transaction
    from automation.services.tasks import run_task

    rt.enqueue = lambda task_id: None  # the queued emails are sent by other tasks, not timed
    totals, finds, results = [], [], []
    for round_no in range(ROUNDS):
        ids = _round_tasks(rt, org_id, round_no)
        assert len(ids) == DUE, (round_no, len(ids))
        with rt.engine.begin() as conn:
            # Outside the timing: make this round's steps due; count the sends the last round
            # queued as done, so the tick sees exactly the DUE escalation steps.
            conn.execute(
                text("UPDATE tasks SET due_at = :due WHERE id = ANY(:ids)"),
                {"due": _naive(rt.now() - dt.timedelta(minutes=1)), "ids": ids},
            )
            conn.execute(
                text(
                    "UPDATE tasks SET state = 'done' WHERE state = 'pending' AND due_at <= :now "
                    "AND kind <> 'escalate'"
                ),
                {"now": _naive(rt.now())},
            )
        t0 = time.perf_counter()
        with transaction(rt.factory) as session:
            due = due_task_ids(session, rt.now(), 500)
        t1 = time.perf_counter()
        for task_id in due:
            results.append(run_task(rt, task_id))
        t2 = time.perf_counter()
        assert sorted(due) == sorted(ids), (len(due), len(ids))
        totals.append(t2 - t0)
        finds.append(t1 - t0)
    return statistics.median(totals), statistics.median(finds), results


def _explain(rt: Any) -> str:
    from sqlalchemy import text

    now = _naive(rt.now())
    with rt.engine.connect() as conn:
        plan = conn.execute(
            text(
                "EXPLAIN SELECT id FROM tasks WHERE (state = 'pending' AND due_at <= :now) "
                "OR (state = 'leased' AND lease_until < :now) ORDER BY due_at LIMIT 500 "
                "FOR UPDATE SKIP LOCKED"
            ),
            {"now": now},
        ).scalars()
        return " | ".join(line.strip() for line in plan)


def _one_size(folder: Path, occurrences: int, reviews: int) -> tuple[float, float, str, str]:
    from sqlalchemy import create_engine, text

    from automation.clock import SimulatedClock
    from automation.db import migrate
    from automation.runtime import build_runtime
    from automation.settings import PROJECT_ROOT, Settings

    schema = f"bench_esc_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        settings = Settings(
            data_dir=folder / schema,
            database_url=f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}",
            organization="bench",
            secret_key="bench",
            config_dir=PROJECT_ROOT / "config",
            templates_dir=PROJECT_ROOT / "templates",
        )
        rt = build_runtime(settings, SimulatedClock(START))
        try:
            migrate(rt.engine)
            t0 = time.perf_counter()
            org_id = _fill(rt, occurrences, reviews)
            setup = time.perf_counter() - t0
            total, find, results = _measure(rt, org_id)
            outcomes = sorted(set(results))
            plan = _explain(rt)
        finally:
            rt.engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    return total, find, f"set-up {setup:.0f} s, steps: {', '.join(outcomes)}", plan


def rows(result_type: type, scale: float, folder: Path) -> list[Any]:
    large = max(int(1_000_000 * scale), 10_000)
    small = min(10_000, large // 10)
    name = "escalation.tick_1m_vs_10k"
    why = _reachable(POSTGRES_URL)
    if why:
        return [result_type(name, 0.0, "ms", 0.0, 0.0, f"skipped: {why}")]
    measured = {}
    for n in (small, large):
        measured[n] = _one_size(folder, n, max(n // 10, DUE * ROUNDS))
    (big_total, big_find, big_note, big_plan) = measured[large]
    (small_total, small_find, small_note, _) = measured[small]
    return [
        result_type(
            name,
            big_total * 1e3,
            "ms",
            small_total * 1e3,
            big_total / small_total,
            f"median of {ROUNDS} ticks finding and running {DUE} due steps; "
            f"{large} occurrences + {large // 10} reviews vs {small} + {small // 10}; "
            f"large {big_note}",
        ),
        result_type(
            f"{name}.find",
            big_find * 1e3,
            "ms",
            small_find * 1e3,
            big_find / small_find,
            f"due_task_ids alone; plan: {big_plan}",
        ),
    ]


def register(benchmark: Callable[[str], Callable[[Any], Any]], result_type: type) -> None:
    """Add the benchmark to bench/run.py's registry, building its Result rows."""

    @benchmark("escalation.tick_1m_vs_10k")
    def escalation_tick(scale: float, folder: Path) -> list[Any]:
        """The escalation tick with 100 due steps among 1M occurrences vs among 10k."""
        return rows(result_type, scale, folder)
