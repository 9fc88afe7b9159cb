"""Benchmarks. Each prints a value and a baseline measured in the same run, and their ratio.

    python bench/run.py                 # every benchmark, as a table
    python bench/run.py --json          # one JSON list of {name, value, unit, baseline, ratio}
    python bench/run.py --only planning # names starting with a prefix
    python bench/run.py --scale 0.1     # smaller sizes, for a quick look (and the smoke test)

Ratios, not absolute times, are the result: they compare two things measured on the same
machine in the same process, so they survive a slower or busier machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert  # noqa: E402

from automation.clock import SimulatedClock  # noqa: E402
from automation.db import due_task_ids, migrate, transaction  # noqa: E402
from automation.domain.cadence import expand  # noqa: E402
from automation.models import (  # noqa: E402
    CheckinSeries,
    Occurrence,
    Organization,
    Person,
    Task,
    TaskState,
)
from automation.runtime import build_runtime  # noqa: E402
from automation.settings import PROJECT_ROOT, Settings  # noqa: E402

START = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)
ZONES = (
    "America/New_York",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Tokyo",
    "Australia/Sydney",
)


@dataclass(frozen=True)
class Result:
    name: str
    value: float
    unit: str
    baseline: float
    ratio: float
    note: str = ""


BENCHMARKS: dict[str, Callable[[float, Path], list[Result]]] = {}


def benchmark(
    name: str,
) -> Callable[[Callable[[float, Path], list[Result]]], Callable[[float, Path], list[Result]]]:
    def register(
        fn: Callable[[float, Path], list[Result]],
    ) -> Callable[[float, Path], list[Result]]:
        BENCHMARKS[name] = fn
        return fn

    return register


def runtime(folder: Path, clock: SimulatedClock):  # type: ignore[no-untyped-def]
    settings = Settings(
        data_dir=folder,
        organization="bench",
        secret_key="bench",
        config_dir=PROJECT_ROOT / "config",
        templates_dir=PROJECT_ROOT / "templates",
    )
    rt = build_runtime(settings, clock)
    migrate(rt.engine)
    return rt


def make_org(rt, employees: int, reports_per_manager: int = 8) -> int:  # type: ignore[no-untyped-def]
    """An organisation of `employees` reports under managers, inserted in bulk."""
    now = rt.now()
    with transaction(rt.factory) as session:
        org = Organization(
            slug="bench", name="Bench", created_at=now, audit_seq=0, audit_head="0" * 64
        )
        session.add(org)
        session.flush()
        managers = max(employees // reports_per_manager, 1)
        base = {"organization_id": org.id, "active": True, "created_at": now, "updated_at": now}
        manager_ids = session.scalars(
            insert(Person).returning(Person.id),
            [
                {
                    **base,
                    "email": f"m{i}@bench.test",
                    "name": f"Manager {i}",
                    "timezone": ZONES[i % len(ZONES)],
                }
                for i in range(managers)
            ],
        ).all()
        session.execute(
            insert(Person),
            [
                {
                    **base,
                    "email": f"e{i}@bench.test",
                    "name": f"Employee {i}",
                    "timezone": ZONES[(i // reports_per_manager) % len(ZONES)],
                    "manager_id": manager_ids[(i // reports_per_manager) % managers],
                }
                for i in range(employees)
            ],
        )
        return org.id


@benchmark("planning.quarter")
def planning_quarter(scale: float, folder: Path) -> list[Result]:
    """Planning a quarter for N employees vs the bare recurrence expansion of the same rules."""
    from sqlalchemy import select

    from automation.services.planning import plan

    employees = max(int(10_000 * scale), 50)
    rt = runtime(folder / "planning", SimulatedClock(START))
    # A weekly cadence: the quarter then holds 13 meetings per employee.
    import dataclasses

    weekly = dataclasses.replace(
        next(iter(rt.cadences.values())), frequency="weekly", interval_weeks=1
    )
    rt.cadences = {weekly.name: weekly}
    org = make_org(rt, employees)
    t0 = time.perf_counter()
    with transaction(rt.factory) as session:
        result = plan(rt, session, org, horizon_days=91)
    planned = time.perf_counter() - t0
    with rt.factory() as session:
        rules = session.execute(
            select(CheckinSeries.rrule, CheckinSeries.dtstart_local, CheckinSeries.timezone)
        ).all()
    t0 = time.perf_counter()
    count = 0
    end = START + dt.timedelta(days=91)
    for rule, dtstart, tz in rules:
        count += len(expand(rule, dt.datetime.fromisoformat(dtstart), tz, 30, START, end))
    bare = time.perf_counter() - t0
    assert count == result.occurrences_created, (count, result)
    rt.engine.dispose()
    return [
        Result(
            f"planning.quarter.{employees}",
            planned,
            "s",
            bare,
            planned / bare,
            f"{result.series_created} series, {count} occurrences; baseline: expansion only",
        )
    ]


def _fill(rt, org: int, occurrences: int) -> None:  # type: ignore[no-untyped-def]
    """`occurrences` future occurrences with their two tasks each, inserted in bulk."""
    now = rt.now()
    with transaction(rt.factory) as session:
        people = session.scalars(
            insert(Person).returning(Person.id),
            [
                {
                    "organization_id": org,
                    "email": f"p{i}@t.test",
                    "name": "P",
                    "timezone": "UTC",
                    "active": True,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(2)
            ],
        ).all()
        series = CheckinSeries(
            organization_id=org,
            cadence_id=None,
            manager_id=people[0],
            employee_id=people[1],
            uid="bench",
            rrule="FREQ=DAILY",
            dtstart_local="2026-03-02T10:00:00",
            timezone="UTC",
            duration_minutes=30,
            sequence=0,
            active=True,
            created_at=now,
            updated_at=now,
        )
        from automation.models import Cadence

        cadence = Cadence(
            organization_id=org,
            name="c",
            source_file="-",
            digest="-",
            definition={},
            active=True,
            updated_at=now,
        )
        session.add(cadence)
        session.flush()
        series.cadence_id = cadence.id
        session.add(series)
        session.flush()
        batch = 20_000
        for lo in range(0, occurrences, batch):
            n = min(batch, occurrences - lo)
            starts = [now + dt.timedelta(days=1, minutes=lo + i) for i in range(n)]
            ids = session.scalars(
                insert(Occurrence).returning(Occurrence.id, sort_by_parameter_order=True),
                [
                    {
                        "organization_id": org,
                        "series_id": series.id,
                        "recurrence_id": s,
                        "start_at": s,
                        "end_at": s + dt.timedelta(minutes=30),
                        "state": "invited",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for s in starts
                ],
            ).all()
            session.execute(
                insert(Task),
                [
                    {
                        "organization_id": org,
                        "kind": kind,
                        "key": f"{kind}:occurrence:{i}",
                        "subject_id": i,
                        "due_at": s,
                        "state": TaskState.PENDING,
                        "attempts": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i, s in zip(ids, starts, strict=True)
                    for kind in ("agenda", "followup")
                ],
            )


def _tick_cost(rt, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with transaction(rt.factory) as session:
            ids = due_task_ids(session, rt.now())
        times.append(time.perf_counter() - t0)
        assert ids == []
    return statistics.median(times)


@benchmark("tick.scan")
def tick_scan(scale: float, folder: Path) -> list[Result]:
    """The tick with 10x more planned work: a ratio near 1 means it does not scan the table."""
    small_n, large_n = max(int(10_000 * scale), 1000), max(int(100_000 * scale), 10_000)
    costs = {}
    for n in (small_n, large_n):
        rt = runtime(folder / f"tick{n}", SimulatedClock(START))
        with transaction(rt.factory) as session:
            org = Organization(
                slug="t", name="t", created_at=rt.now(), audit_seq=0, audit_head="0" * 64
            )
            session.add(org)
            session.flush()
            org_id = org.id
        _fill(rt, org_id, n)
        costs[n] = _tick_cost(rt, 200)
        rt.engine.dispose()
    return [
        Result(
            f"tick.scan.{large_n}_vs_{small_n}",
            costs[large_n] * 1e3,
            "ms",
            costs[small_n] * 1e3,
            costs[large_n] / costs[small_n],
            f"median tick with {large_n} vs {small_n} planned occurrences",
        )
    ]


# replies.corpus and replies.fields: reply trimming vs the public peers, and field extraction.
from bench import replies as _replies  # noqa: E402

_replies.register(benchmark, Result)

# calendar.*: provider requests per series and sync costs against the local fakes.
from bench import calendar_google as _calendar_google  # noqa: E402
from bench import calendar_graph as _calendar_graph  # noqa: E402

_calendar_google.register(benchmark, Result)
_calendar_graph.register(benchmark, Result)

# mail.*: inbound volume, SMTP connection reuse, IMAP ingest.
from bench import mail_imap as _mail_imap  # noqa: E402
from bench import mail_smtp as _mail_smtp  # noqa: E402
from bench import mail_volume as _mail_volume  # noqa: E402

_mail_volume.register(benchmark, Result)
_mail_smtp.register(benchmark, Result)
_mail_imap.register(benchmark, Result)

# escalation.*: the escalation tick on PostgreSQL at 1M vs 10k occurrences.
from bench import escalation as _escalation  # noqa: E402

_escalation.register(benchmark, Result)

# ingest.overhead_vs_floor: raw reply to record on PostgreSQL vs parse + one INSERT.
from bench import ingest_overhead as _ingest_overhead  # noqa: E402

_ingest_overhead.register(benchmark, Result)

# ingest.huge_message_memory, ingest.huge_message_time: a 25 MB reply vs the stdlib's parse.
from bench import ingest_memory as _ingest_memory  # noqa: E402

_ingest_memory.register(benchmark, Result)

# faults.kill9: kill -9 the worker 20 times during a run of check-ins; everything once.
from bench import faults as _faults  # noqa: E402

_faults.register(benchmark, Result)

# scale.workers_2_vs_1, scale.workers_4_vs_1: a quarter's work with 1, 2 and 4 worker processes.
from bench import scale as _scale  # noqa: E402

_scale.register(benchmark, Result)

# tenants.isolation_overhead: the loop's throughput with 50 organizations vs one of the same size.
from bench import tenants as _tenants  # noqa: E402

_tenants.register(benchmark, Result)

# agenda.build_per_s: next week's agendas on PostgreSQL vs the bare queries of the same rows.
from bench import agenda as _agenda  # noqa: E402

_agenda.register(benchmark, Result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", default="", help="run benchmarks whose name starts with this")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="PREFIX",
        help="leave out benchmarks whose name starts with this (repeatable)",
    )
    args = parser.parse_args(argv)
    selected = [
        name
        for name in BENCHMARKS
        if name.startswith(args.only) and not any(name.startswith(s) for s in args.skip)
    ]
    if not selected:
        parser.error(f"no benchmark starts with {args.only!r}; known: {', '.join(BENCHMARKS)}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for name in selected:
            results += BENCHMARKS[name](args.scale, Path(tmp))
    if args.json:
        print(
            json.dumps(
                [
                    {k: v for k, v in asdict(r).items() if k != "note"}
                    | ({"note": r.note} if r.note else {})
                    for r in results
                ]
            )
        )
        return 0
    print(f"{'benchmark':<36} {'value':>12} {'baseline':>12} {'ratio':>8}  note")
    for r in results:
        print(
            f"{r.name:<36} {r.value:>10.3f}{r.unit:>2} {r.baseline:>10.3f}{r.unit:>2} "
            f"{r.ratio:>8.2f}  {r.note}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
