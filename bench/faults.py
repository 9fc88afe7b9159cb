"""Fault benchmark: kill -9 the worker 20 times during a run of check-ins; count what happened.

``faults.kill9``: the harness of ``tests/faults.py`` at full size (60 employees under 6
managers, the CEO and HR: 67 series, about 270 agendas and 130 prompts, a manager's reply to
every prompt, a confirmation for every reply, reminders and escalations), on a fresh
PostgreSQL schema, through Redis (``AUTOMATION_BENCH_BROKER_URL`` to use another broker), with
one `automation worker` process group killed with SIGKILL 20 times at seeded random moments
and restarted each time. ``--scale`` below 1 shrinks the organisation and the kills (at least
8 employees and 1 kill). Value: items that happened exactly once (sent emails on disk once,
series once in each participant's calendar, replies recorded once with one confirmation);
baseline: items checked; ratio 1.00 is the goal. The note has the counts: kills, leases the
kills orphaned, lost and duplicate emails, events and records, failed tasks, retries (the
deadlocks between worker threads among them) and the run time. Without PostgreSQL or the
broker the row says why, with zeros.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

POSTGRES_URL = os.environ.get(
    "AUTOMATION_BENCH_POSTGRES_URL",
    os.environ.get(
        "AUTOMATION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/test"
    ),
)
BROKER_URL = os.environ.get(
    "AUTOMATION_BENCH_BROKER_URL",
    os.environ.get("AUTOMATION_TEST_REDIS_URL", "redis://localhost:6379/15"),
)
EMPLOYEES, MANAGERS, KILLS = 60, 6, 20


def _unreachable() -> str | None:
    from sqlalchemy.engine import make_url

    pg = make_url(POSTGRES_URL)
    broker = urlparse(BROKER_URL)
    for name, host, port in (
        ("PostgreSQL", pg.host or "localhost", pg.port or 5432),
        (broker.scheme, broker.hostname or "localhost", broker.port or 0),
    ):
        try:
            with socket.create_connection((host, port), timeout=2):
                pass
        except OSError as exc:
            return f"{name} is not reachable on {host}:{port} ({exc})"
    return None


def rows(result_type: type, scale: float, folder: Path) -> list[Any]:
    from sqlalchemy import create_engine, text

    from tests.faults import FaultConfig, fault_run

    name = "faults.kill9"
    why = _unreachable()
    if why:
        return [result_type(name, 0.0, "items", 0.0, 0.0, f"skipped: {why}")]
    employees = max(int(EMPLOYEES * scale), 8)
    managers = max(int(MANAGERS * scale), 2)
    kills = max(int(KILLS * scale), 1)
    schema = f"bench_faults_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        data = Path(tempfile.mkdtemp(prefix="faults-", dir=folder))
        result = fault_run(
            f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}",
            BROKER_URL,
            data,
            FaultConfig(
                employees=employees,
                managers=managers,
                kills=kills,
                seed=20,
                drain_timeout=300,
            ),
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    good = result.items - result.bad
    retries = ", ".join(f"{n}x {e}" for e, n in result.retry_errors.most_common(3))
    note = (
        f"{urlparse(BROKER_URL).scheme}, {employees} employees: {result.row()}"
        + (f"; retried: {retries}" if retries else "")
        + (f"; {len(result.tracebacks)} worker traceback(s)" if result.tracebacks else "")
        + (f"; PROBLEMS: {'; '.join(result.problems[:5])}" if result.problems else "")
    )
    return [result_type(name, float(good), "items", float(result.items), good / result.items, note)]


def register(benchmark: Callable[[str], Callable[[Any], Any]], result_type: type) -> None:
    """Add the benchmark to bench/run.py's registry, building its Result row."""

    @benchmark("faults.kill9")
    def faults_kill9(scale: float, folder: Path) -> list[Any]:
        """kill -9 the worker 20 times during a run; everything exactly once."""
        return rows(result_type, scale, folder)
