"""``agenda.build_per_s`` (PostgreSQL): agendas built per second for next week's check-ins of
10,000 people with a year of history each, against the bare queries that fetch the same rows.

Set-up, in a schema of its own (dropped afterwards), with server-side ``INSERT ... SELECT
generate_series`` (deterministic: every choice is a hash of the row's id), each table
``ANALYZE``d once filled:
``PEOPLE`` employees (``--scale`` multiplies them) under a manager for every eight, each with a
weekly check-in series holding a year of past check-ins (held, skipped or cancelled; a few
series end on a run of skips), next week's check-in and the one after; a record for most held
check-ins (some corrected: a second version that restates the items), with ratings (some
series falling); action items (most closed, the open ones often overdue); three goals per
person with one to four versions each (some not updated for weeks); development items; an
active PIP with its goals for ``PIP_PERCENT`` of the people; topics on next week's check-ins
and on earlier ones (carried over while undocumented), and an agenda already sent (its item
numbering) for a few.

value = agendas per second: :func:`automation.services.agendas.agenda_inputs` for all of next
week's check-ins, a chunk of :data:`~automation.services.agendas.CHUNK` at a time in a session
of its own (as a batch sending them would call it), then
:func:`automation.domain.agenda.build_agenda` for both recipients with the runtime's roles and
coaching rules (``config/roles``, ``config/coaching.toml``): two agendas per check-in.
baseline = the same number of agendas over the time of the bare queries: hand-written SQL
(``text()``) fetching the same rows (same tables, filters and columns) chunk by chunk, with no
Python assembly; the row counts of both are compared. ratio = value / baseline (as everywhere in
bench/run.py; the share of the bare rate the real build keeps), so the overhead, ours time over
bare time, is its inverse: the note gives it, with the sizes, the statements issued per
``CHUNK`` check-ins (counted with a ``before_cursor_execute`` listener: constant, not N+1) and
the coaching prompts found. Median of ``ROUNDS`` alternating rounds. Without PostgreSQL the
benchmark prints one row saying why, with zeros.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.escalation import POSTGRES_URL, _reachable

NAME = "agenda.build_per_s"
PEOPLE = 10_000  # employees at --scale 1, each with one weekly series
REPORTS = 8  # employees per manager
WEEKS = 52  # past weekly check-ins per series
PIP_PERCENT = 3
ROUNDS = 3
START = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)  # a Monday; next week's check-ins follow
ZONES = (
    "America/New_York",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Tokyo",
    "Australia/Sydney",
)


def _naive(moment: dt.datetime) -> dt.datetime:
    """UTCDateTime columns hold naive UTC timestamps."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def _array(values: Sequence[str]) -> str:
    """A SQL array literal of constant strings (ours: zones, goal statuses, kinds)."""
    quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"ARRAY[{quoted}]::text[]"


def _h(expr: str, salt: int, mod: int) -> str:
    """A deterministic pseudo-random number in [0, mod) from a bigint expression."""
    return f"CAST(abs(hashint8extended(CAST({expr} AS bigint), {salt})) % {mod} AS int)"


# --- set-up ----------------------------------------------------------------------------------

# The latest status of a goal, by weight: mostly open ones, a few closed.
GOAL_STATUSES = ("on_track",) * 3 + ("at_risk",) * 2 + ("open",) * 2 + ("done",) * 2 + ("dropped",)

# Employees: those with a manager. `:now` is naive UTC; week k of a series starts k weeks after
# next week's check-in (k = 0, in [now, now + 7 days)); k < 0 are the year behind.
SEED = [
    # Managers, then their reports.
    f"""INSERT INTO people (organization_id, email, name, timezone, active, created_at,
           updated_at)
       SELECT :org, 'm' || g || '@bench.test', 'Manager ' || g,
           ({_array(ZONES)})[1 + g % {len(ZONES)}], true, :now, :now
       FROM generate_series(0, :managers - 1) AS g""",
    """INSERT INTO people (organization_id, email, name, timezone, manager_id, active,
           created_at, updated_at, role)
       SELECT :org, 'e' || g || '@bench.test', 'Employee ' || g, m.timezone, m.id, true,
           :now, :now, (CAST(:roles AS text[]))[1 + g % :role_count]
       FROM generate_series(0, :people - 1) AS g
       JOIN (SELECT id, timezone, row_number() OVER (ORDER BY id) - 1 AS n FROM people
             WHERE organization_id = :org) m ON m.n = g / :reports""",
    """INSERT INTO checkin_series (organization_id, cadence_id, manager_id, employee_id, uid,
           rrule, dtstart_local, timezone, duration_minutes, sequence, active, created_at,
           updated_at)
       SELECT :org, :cadence, p.manager_id, p.id, 'bench-agenda-' || p.id, 'FREQ=WEEKLY',
           '2025-03-03T10:00:00', p.timezone, 30, 0, true, :now, :now
       FROM people p WHERE p.organization_id = :org AND p.manager_id IS NOT NULL""",
    # A year of weekly check-ins, next week's (invited) and the one after (planned). One series
    # in 40 ends on three skipped in a row; elsewhere 8% skipped, 5% cancelled, the rest held,
    # 92% of those documented.
    f"""INSERT INTO occurrences (organization_id, series_id, recurrence_id, start_at, end_at,
           state, documented_at, created_at, updated_at)
       SELECT :org, s.id, t.at, t.at, t.at + interval '30 minutes', t.state,
           CASE WHEN t.state = 'held' AND {_h("s.id * 100 + k", 3, 100)} < 92
                THEN t.at + interval '2 hours' END,
           :now, :now
       FROM (SELECT id, {_h("id", 1, 40)} = 0 AS skipper FROM checkin_series
             WHERE organization_id = :org) s
       CROSS JOIN generate_series(-:weeks, 1) AS k
       CROSS JOIN LATERAL (
           SELECT CAST(:now AS timestamp) + (s.id % 5) * interval '1 day'
                  + interval '4 hours' + k * interval '7 days' AS at,
               CASE WHEN k = 0 THEN 'invited' WHEN k > 0 THEN 'planned'
                    WHEN s.skipper AND k >= -3 THEN 'skipped'
                    WHEN {_h("s.id * 100 + k", 2, 100)} < 8 THEN 'skipped'
                    WHEN {_h("s.id * 100 + k", 2, 100)} < 13 THEN 'cancelled'
                    ELSE 'held' END AS state) t""",
    # The reply each record version came from: one per documented check-in, a correction
    # (a second version) for one in ten.
    f"""INSERT INTO inbound_messages (organization_id, raw, sha256, size, source, message_id,
           state, occurrence_id, received_at, processed_at)
       SELECT :org, convert_to('bench', 'UTF8'),
           encode(sha256(convert_to(o.id || ':' || v, 'UTF8')), 'hex'), 5, 'bench',
           '<' || o.id || '.' || v || '@bench.test>', 'recorded', o.id,
           o.documented_at + (v - 1) * interval '1 day', o.documented_at
       FROM occurrences o
       CROSS JOIN LATERAL generate_series(1, 1 + CAST({_h("o.id", 4, 10)} = 0 AS int)) AS v
       WHERE o.organization_id = :org AND o.documented_at IS NOT NULL""",
    # Ratings 2..5 (one in ten unrated); one series in 20 falls 5, 4, 3 over its last weeks.
    f"""INSERT INTO conversation_records (organization_id, subject_kind, subject_id, version,
           source_message_id, author_id, body, answers, rating, notes, commands, created_at)
       SELECT :org, 'occurrence', o.id,
           row_number() OVER (PARTITION BY im.occurrence_id ORDER BY im.id), im.id,
           s.manager_id, 'What went well, what did not, what comes next.',
           CAST('{{}}' AS json),
           CASE WHEN {_h("s.id", 5, 20)} = 0 AND o.start_at > CAST(:now AS timestamp)
                     - interval '21 days' THEN 3 + floor(extract(epoch FROM
                     CAST(:now AS timestamp) - o.start_at) / 604800)::int
                WHEN {_h("o.id", 6, 10)} = 0 THEN NULL
                ELSE 2 + {_h("o.id", 7, 4)} END,
           '', CAST('[]' AS json), im.received_at
       FROM inbound_messages im
       JOIN occurrences o ON o.organization_id = im.organization_id AND o.id = im.occurrence_id
       JOIN checkin_series s ON s.organization_id = o.organization_id AND s.id = o.series_id
       WHERE im.organization_id = :org""",
    # 0-2 items per check-in, restated by a correction; due one to five weeks after the
    # meeting; within the last eight weeks 30% are still open, before that 2%.
    f"""INSERT INTO action_items (organization_id, record_id, owner_id, text, due_on, done,
           created_at)
       SELECT :org, r.id,
           CASE WHEN {_h("o.id * 3 + i", 8, 10)} < 6 THEN s.employee_id
                WHEN {_h("o.id * 3 + i", 8, 10)} < 9 THEN s.manager_id END,
           'Follow up on point ' || i || ' of ' || to_char(o.start_at, 'YYYY-MM-DD'),
           CAST(o.start_at AS date) + 7 + {_h("o.id * 3 + i", 9, 28)},
           CASE WHEN o.start_at > CAST(:now AS timestamp) - interval '56 days'
                THEN {_h("o.id * 3 + i", 10, 100)} >= 30
                ELSE {_h("o.id * 3 + i", 10, 100)} >= 2 END,
           r.created_at
       FROM conversation_records r
       JOIN occurrences o ON o.organization_id = r.organization_id AND o.id = r.subject_id
       JOIN checkin_series s ON s.organization_id = o.organization_id AND s.id = o.series_id
       CROSS JOIN LATERAL generate_series(1, CASE WHEN {_h("o.id", 11, 100)} < 30 THEN 0
           WHEN {_h("o.id", 11, 100)} < 80 THEN 1 ELSE 2 END) AS i
       WHERE r.organization_id = :org AND r.subject_kind = 'occurrence'""",
    """INSERT INTO goals (organization_id, person_id, key, source, created_by, created_at)
       SELECT :org, p.id, 'goal ' || g, 'csv', 'import',
           CAST(:now AS timestamp) - interval '300 days'
       FROM people p CROSS JOIN generate_series(1, 3) AS g
       WHERE p.organization_id = :org AND p.manager_id IS NOT NULL""",
    # 1-4 versions three weeks apart; the latest 0-34 days old, its status any of the five.
    f"""INSERT INTO goal_versions (organization_id, goal_id, version, title, success_criteria,
           owner, owner_id, due_on, status, note, source, author, created_at)
       SELECT :org, g.id, v, 'Deliver ' || g.key || ' of ' || g.person_id,
           'Measured by the quarterly review', 'employee', g.person_id,
           CAST(:now AS date) + 30 + {_h("g.id", 12, 120)},
           CASE WHEN v < n THEN 'on_track'
                ELSE ({_array(GOAL_STATUSES)})[1 + {_h("g.id", 13, len(GOAL_STATUSES))}]
           END,
           '', 'csv', 'import',
           CAST(:now AS timestamp) - (n - v) * interval '21 days'
               - {_h("g.id", 14, 35)} * interval '1 day'
       FROM goals g
       CROSS JOIN LATERAL (SELECT 1 + {_h("g.id", 15, 4)} AS n) c
       CROSS JOIN LATERAL generate_series(1, c.n) AS v
       WHERE g.organization_id = :org""",
    f"""INSERT INTO development_items (organization_id, person_id, kind, text, discuss_by,
           status, created_by, created_at, updated_at)
       SELECT :org, p.id,
           ({_array(("skill", "support", "career_note"))})[1 + {_h("p.id * 2 + i", 16, 3)}],
           'Development step ' || i, CAST(:now AS date) + {_h("p.id * 2 + i", 17, 28)} - 7,
           CASE WHEN {_h("p.id * 2 + i", 18, 10)} < 8 THEN 'open' ELSE 'done' END,
           'import', :now, :now
       FROM people p CROSS JOIN generate_series(1, 2) AS i
       WHERE p.organization_id = :org AND p.manager_id IS NOT NULL""",
    # PIPs started 0-29 days ago (some after the last check-in held), with three goals each.
    f"""INSERT INTO pips (organization_id, employee_id, manager_id, title, started_on, ends_on,
           state, ladder, created_at)
       SELECT :org, p.id, p.manager_id, 'Improvement plan for ' || p.name,
           CAST(:now AS timestamp) - {_h("p.id", 19, 30)} * interval '1 day',
           CAST(:now AS timestamp) + interval '60 days', 'active', CAST('[]' AS json), :now
       FROM people p
       WHERE p.organization_id = :org AND p.manager_id IS NOT NULL
         AND {_h("p.id", 20, 100)} < :pip_percent""",
    """INSERT INTO pip_goals (organization_id, pip_id, position, goal, success_criteria, owner,
           owner_id, due_on, created_at)
       SELECT :org, pp.id, g, 'Plan goal ' || g, 'Evidence reviewed weekly', 'employee',
           pp.employee_id, CAST(pp.ends_on AS date), :now
       FROM pips pp CROSS JOIN generate_series(1, 3) AS g WHERE pp.organization_id = :org""",
    # Topics: on 40% of next week's check-ins (one in ten closed), on 30% of the undocumented
    # ones of the last six weeks (carried over) and on 10% of the rest of the half year.
    f"""INSERT INTO agenda_topics (organization_id, occurrence_id, added_by_id, text, position,
           added_at, closed_at)
       SELECT :org, o.id,
           CASE WHEN {_h("o.id * 2 + i", 21, 2)} = 0 THEN s.employee_id ELSE s.manager_id END,
           'Topic ' || i || ' for ' || to_char(o.start_at, 'YYYY-MM-DD'), i,
           LEAST(o.start_at, CAST(:now AS timestamp)) - interval '2 days',
           CASE WHEN {_h("o.id * 2 + i", 22, 10)} = 0 THEN CAST(:now AS timestamp) END
       FROM occurrences o
       JOIN checkin_series s ON s.organization_id = o.organization_id AND s.id = o.series_id
       CROSS JOIN LATERAL generate_series(1, 1 + {_h("o.id", 23, 2)}) AS i
       WHERE o.organization_id = :org AND o.start_at > CAST(:now AS timestamp) - interval '182 days'
         AND o.state <> 'planned'
         AND {_h("o.id", 24, 100)} < CASE WHEN o.state = 'invited' THEN 40
             WHEN o.documented_at IS NULL AND o.start_at > CAST(:now AS timestamp)
                  - interval '42 days' THEN 30 ELSE 10 END""",
    # An agenda already sent (the manager's, with its numbering) for 5% of next week's.
    f"""INSERT INTO agenda_snapshots (organization_id, occurrence_id, role, recipient_id,
           sequence, items, topic_ids, coaching, built_at)
       SELECT :org, o.id, 'manager', s.manager_id, 1,
           COALESCE((SELECT json_agg(json_build_object('number', q.n, 'ids',
                                                       json_build_array(q.id)) ORDER BY q.n)
                     FROM (SELECT ai.id, row_number() OVER (ORDER BY ai.id) AS n
                           FROM action_items ai
                           JOIN conversation_records r ON r.organization_id = ai.organization_id
                                AND r.id = ai.record_id
                           JOIN occurrences po ON po.organization_id = r.organization_id
                                AND po.id = r.subject_id
                           WHERE r.subject_kind = 'occurrence' AND po.series_id = s.id
                             AND NOT ai.done) q), CAST('[]' AS json)),
           CAST('[]' AS json), CAST('[]' AS json), :now
       FROM occurrences o
       JOIN checkin_series s ON s.organization_id = o.organization_id AND s.id = o.series_id
       WHERE o.organization_id = :org AND o.state = 'invited' AND {_h("o.id", 25, 100)} < 5""",
]
TABLES = (
    "people",
    "cadences",
    "checkin_series",
    "occurrences",
    "inbound_messages",
    "conversation_records",
    "action_items",
    "goals",
    "goal_versions",
    "development_items",
    "pips",
    "pip_goals",
    "agenda_topics",
    "agenda_snapshots",
)


def _fill(rt: Any, people: int) -> tuple[int, dict[str, int]]:
    """Seed the organisation; returns its id and the row count of every table."""
    from sqlalchemy import func, select, text

    from automation.db import transaction
    from automation.models import Cadence, Organization

    now = rt.now()
    cadence = next(iter(rt.cadences.values())).as_dict()
    roles = sorted(rt.roles) or [None]
    with transaction(rt.factory) as session:
        org = Organization(
            slug="bench", name="Bench", created_at=now, audit_seq=0, audit_head="0" * 64
        )
        session.add(org)
        session.flush()
        row = Cadence(
            organization_id=org.id,
            name=cadence["name"],
            source_file="bench",
            digest="-",
            definition=cadence,
            active=True,
            updated_at=now,
        )
        session.add(row)
        session.flush()
        params = {
            "org": org.id,
            "cadence": row.id,
            "now": _naive(now),
            "people": people,
            "managers": -(-people // REPORTS),
            "reports": REPORTS,
            "roles": roles,
            "role_count": len(roles),
            "weeks": WEEKS,
            "pip_percent": PIP_PERCENT,
        }
        # The row estimates of generate_series are guesses: no JIT compiling the inserts.
        session.execute(text("SET LOCAL jit = off"))
        session.execute(text("SET LOCAL work_mem = '64MB'"))
        if session.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")):
            # As a restore does (pg_restore --disable-triggers): the rows are consistent by
            # construction, so their foreign keys are not checked one row at a time (most of
            # the set-up's time). Needs a superuser; otherwise they are checked.
            session.execute(text("SET LOCAL session_replication_role = replica"))
        for statement in SEED:
            session.execute(text(statement), params)
            # Statistics of each table as soon as it is filled (only this schema's: the search
            # path), as autovacuum would have them: for the next inserts' joins and foreign-key
            # checks (without them a check may scan the table: the set-up turns quadratic),
            # and for the plans measured.
            session.execute(text(f"ANALYZE {statement.split()[2]}"))
        org_id = org.id
    counts = {}
    with rt.engine.connect() as conn:
        for table in TABLES:
            counts[table] = conn.execute(select(func.count()).select_from(text(table))).scalar_one()
    return org_id, counts


def _next_week(rt: Any, org: int) -> list[int]:
    from sqlalchemy import select

    from automation.models import Occurrence

    now = rt.now()
    with rt.factory() as session:
        return list(
            session.scalars(
                select(Occurrence.id)
                .where(
                    Occurrence.organization_id == org,
                    Occurrence.start_at >= now,
                    Occurrence.start_at < now + dt.timedelta(days=7),
                )
                .order_by(Occurrence.id)
            )
        )


# --- the two ways ----------------------------------------------------------------------------


@contextmanager
def _counting(engine: Any) -> Iterator[dict[str, int]]:
    """Statements issued and rows they returned, while inside."""
    from sqlalchemy import event

    seen = {"statements": 0, "rows": 0}

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen["statements"] += 1

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen["rows"] += max(cursor.rowcount, 0)

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


def _chunks(ids: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _ours(rt: Any, org: int, ids: Sequence[int]) -> tuple[float, int, int]:
    """Seconds to build both agendas of every check-in; agendas built, coaching prompts."""
    from automation.domain.agenda import RECIPIENTS, build_agenda
    from automation.services.agendas import CHUNK, agenda_inputs

    now = rt.now()
    built = prompts = 0
    started = time.perf_counter()
    for chunk in _chunks(ids, CHUNK):
        with rt.factory() as session:
            inputs = agenda_inputs(session, org, chunk, now, roles=rt.roles)
        for inp in inputs.values():
            for recipient in RECIPIENTS:
                agenda = build_agenda(inp, recipient, now, rt.coaching)
                built += 1
                prompts += len(agenda.coaching)
    return time.perf_counter() - started, built, prompts


# The statements agenda_inputs issues, written by hand: the same tables, joins, filters and
# columns; `= ANY` where it expands `IN`.
BARE = {
    "targets": """
        SELECT o.id, o.series_id, o.start_at, s.manager_id, m.name AS manager_name,
            s.employee_id, e.name AS employee_name, e.timezone, e.role, c.definition
        FROM occurrences o
        JOIN checkin_series s ON s.organization_id = o.organization_id AND s.id = o.series_id
        JOIN people m ON m.organization_id = s.organization_id AND m.id = s.manager_id
        JOIN people e ON e.organization_id = s.organization_id AND e.id = s.employee_id
        JOIN cadences c ON c.organization_id = s.organization_id AND c.id = s.cadence_id
        WHERE o.organization_id = :org AND o.id = ANY(:ids)""",
    "past": """
        SELECT o.id, o.series_id, o.start_at, o.state, o.documented_at,
            (SELECT r.rating FROM conversation_records r
             WHERE r.organization_id = o.organization_id AND r.subject_kind = 'occurrence'
                 AND r.subject_id = o.id
             ORDER BY r.version DESC LIMIT 1) AS rating
        FROM occurrences o
        WHERE o.organization_id = :org AND o.series_id = ANY(:series)
            AND o.start_at >= :earliest AND o.start_at < :latest""",
    "items": """
        SELECT a.id, a.text, a.due_on, a.created_at, o.id AS occurrence_id, o.series_id,
            o.start_at, p.name AS owner_name
        FROM action_items a
        JOIN conversation_records r ON r.organization_id = a.organization_id
            AND r.id = a.record_id
        JOIN occurrences o ON o.organization_id = r.organization_id AND o.id = r.subject_id
        LEFT JOIN people p ON p.organization_id = a.organization_id AND p.id = a.owner_id
        WHERE a.organization_id = :org AND a.done IS false AND r.subject_kind = 'occurrence'
            AND o.series_id = ANY(:series)""",
    "goals": """
        SELECT g.id, g.person_id, g.pip_goal_id, v.title, v.success_criteria, v.owner,
            p.name AS owner_name, v.due_on, v.status, v.version, v.created_at
        FROM goals g
        JOIN goal_versions v ON v.organization_id = g.organization_id AND v.goal_id = g.id
            AND v.version = (SELECT max(n.version) FROM goal_versions n
                             WHERE n.organization_id = g.organization_id AND n.goal_id = g.id)
        LEFT JOIN people p ON p.organization_id = v.organization_id AND p.id = v.owner_id
        WHERE g.organization_id = :org AND g.person_id = ANY(:employees)
            AND v.status IN ('open', 'on_track', 'at_risk') AND v.erased_at IS NULL""",
    "pips": """
        SELECT pp.id, pp.employee_id, pp.title, pp.started_on, pp.ends_on, pg.id AS goal_id,
            pg.position, pg.goal, pg.success_criteria, pg.owner, p.name AS owner_name,
            pg.due_on
        FROM pips pp
        LEFT JOIN pip_goals pg ON pg.organization_id = pp.organization_id AND pg.pip_id = pp.id
        LEFT JOIN people p ON p.organization_id = pg.organization_id AND p.id = pg.owner_id
        WHERE pp.organization_id = :org AND pp.employee_id = ANY(:employees)
            AND pp.state = 'active'
        ORDER BY pp.id, pg.position""",
    "development": """
        SELECT d.id, d.person_id, d.kind, d.text, d.discuss_by, d.status
        FROM development_items d
        WHERE d.organization_id = :org AND d.person_id = ANY(:employees)
            AND d.status = 'open' AND d.erased_at IS NULL""",
    "topics": """
        SELECT t.id, t.occurrence_id, t.text, t.added_by_id, t.added_at,
            p.name AS adder_name, o.series_id, o.start_at, o.documented_at
        FROM agenda_topics t
        JOIN occurrences o ON o.organization_id = t.organization_id AND o.id = t.occurrence_id
        JOIN people p ON p.organization_id = t.organization_id AND p.id = t.added_by_id
        WHERE t.organization_id = :org AND t.closed_at IS NULL AND t.erased_at IS NULL
            AND o.series_id = ANY(:series) AND o.start_at >= :earliest
            AND o.start_at <= :latest""",
    "numbering": """
        SELECT occurrence_id, sequence, items FROM agenda_snapshots
        WHERE organization_id = :org AND occurrence_id = ANY(:ids) AND role = 'manager'""",
}


def _bare(rt: Any, org: int, ids: Sequence[int]) -> float:
    """Seconds for the bare statements, chunk by chunk: only what the next statement needs
    (the series, the people and the time window of the chunk) is read from the first."""
    from sqlalchemy import text

    from automation.services.agendas import CHUNK, HISTORY_DAYS

    statements = {name: text(sql) for name, sql in BARE.items()}
    history = dt.timedelta(days=HISTORY_DAYS)
    started = time.perf_counter()
    for chunk in _chunks(ids, CHUNK):
        with rt.engine.connect() as conn:
            params: dict[str, Any] = {"org": org, "ids": list(chunk)}
            targets = conn.execute(statements["targets"], params).all()
            if not targets:
                continue
            params["series"] = sorted({t.series_id for t in targets})
            params["employees"] = sorted({t.employee_id for t in targets})
            params["earliest"] = min(t.start_at for t in targets) - history
            params["latest"] = max(t.start_at for t in targets)
            for name in ("past", "items", "goals", "pips", "development", "topics", "numbering"):
                conn.execute(statements[name], params).all()
            conn.rollback()
    return time.perf_counter() - started


# --- the row ---------------------------------------------------------------------------------


def _measure(rt: Any, org: int, ids: list[int]) -> dict[str, Any]:
    from automation.services.agendas import CHUNK

    # A warm-up of each (the first chunk: statement caches, the pool, the server's buffers).
    _ours(rt, org, ids[:CHUNK])
    _bare(rt, org, ids[:CHUNK])
    ours, bare = [], []
    for round_no in range(ROUNDS):
        with _counting(rt.engine) as counted:
            elapsed, built, prompts = _ours(rt, org, ids)
        ours.append(elapsed)
        with _counting(rt.engine) as bare_counted:
            bare.append(_bare(rt, org, ids))
        if round_no == 0:
            first = counted, bare_counted, built, prompts
    counted, bare_counted, built, prompts = first
    return {
        "ours": statistics.median(ours),
        "bare": statistics.median(bare),
        "built": built,
        "prompts": prompts,
        "statements": counted["statements"],
        "rows": counted["rows"],
        "bare_statements": bare_counted["statements"],
        "bare_rows": bare_counted["rows"],
    }


def rows(result_type: type, scale: float, folder: Path) -> list[Any]:
    from sqlalchemy import create_engine, text

    from automation.clock import SimulatedClock
    from automation.db import migrate
    from automation.runtime import build_runtime
    from automation.services.agendas import CHUNK
    from automation.settings import PROJECT_ROOT, Settings

    why = _reachable(POSTGRES_URL)
    if why:
        return [result_type(NAME, 0.0, "/s", 0.0, 0.0, f"skipped: {why}")]
    people = max(int(PEOPLE * scale), 40)
    schema = f"bench_agenda_{uuid.uuid4().hex[:10]}"
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
            org, counts = _fill(rt, people)
            setup = time.perf_counter() - t0
            ids = _next_week(rt, org)
            assert len(ids) == people, (len(ids), people)
            m = _measure(rt, org, ids)
        finally:
            rt.engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    problems = []
    if m["built"] != 2 * people:
        problems.append(f"MISMATCH: {m['built']} agendas built for {people} check-ins")
    if m["rows"] != m["bare_rows"]:
        problems.append(
            f"MISMATCH: ours fetched {m['rows']} rows, the bare queries {m['bare_rows']}"
        )
    chunks = -(-people // CHUNK)
    per_s, bare_per_s = m["built"] / m["ours"], m["built"] / m["bare"]
    note = (
        f"overhead x{m['ours'] / m['bare']:.2f} (ours {m['ours']:.2f} s / bare "
        f"{m['bare']:.2f} s, median of {ROUNDS}) for {people} check-ins next week, 2 agendas "
        f"each; {counts['people']} people, {counts['occurrences']} occurrences, "
        f"{counts['conversation_records']} records, {counts['action_items']} action items, "
        f"{counts['goal_versions']} goal versions, {counts['pips']} PIPs, "
        f"{counts['agenda_topics']} topics; {m['statements'] / chunks:.0f} statements per "
        f"{CHUNK} check-ins ({m['statements']} in all, bare {m['bare_statements']}), "
        f"{m['rows']} rows fetched (bare {m['bare_rows']}); {m['prompts']} coaching prompts; "
        f"set-up {setup:.0f} s"
    )
    return [
        result_type(NAME, per_s, "/s", bare_per_s, per_s / bare_per_s, "; ".join([note, *problems]))
    ]


def register(benchmark: Callable[[str], Callable[[Any], Any]], result_type: type) -> None:
    """Add ``agenda.build_per_s`` to bench/run.py's registry, building its Result rows."""

    @benchmark(NAME)
    def agenda_build(scale: float, folder: Path) -> list[Any]:
        """Next week's agendas on PostgreSQL vs the bare queries of the same rows."""
        return rows(result_type, scale, folder)
