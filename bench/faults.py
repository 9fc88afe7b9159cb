"""Fault benchmarks: the runs of ``tests/faults.py`` at full size; count what happened.

Each builds an organisation on a fresh PostgreSQL schema (check-ins planned three weeks in the
past: invites, agendas, follow-up prompts, a manager's reply to every prompt, a confirmation
for every reply, reminders and escalations) and runs it through Redis
(``AUTOMATION_BENCH_BROKER_URL`` to use another broker) with one `automation worker` of 2
processes with 4 threads each, and counts at the fakes and in the database:

- ``faults.kill9``: the issue's full form, 456 employees under 45 managers (502 series, about
  1,000 check-ins with 1,000 replies), the worker's process group killed with SIGKILL 20 times
  at seeded random moments and restarted each time; local calendar files and the Maildir
  outbox. Measured on a 2-core machine: 1,004 check-ins and replies, 5,491 emails, 13,021
  tasks, 7,499 items exactly once in 112 s (901 s before the audit chain stopped
  serialising tasks and the Redis queue stopped filling with copies).
- ``faults.providers``: 60 employees, series to the Google Calendar fake behind a proxy that
  answers 30% of the API requests with 429/503 and loses the answer of 10% more after the
  write; email over SMTP to aiosmtpd answering 20% of the transactions with 421 or 451 and
  closing the connection before the 250 of 5% more (it files what it accepts in a Dovecot
  Sent folder, which retried sends search); and 5 kills. Needs Dovecot.
- ``faults.dbdrop``: 60 employees, every PostgreSQL backend of the workers and ticks
  terminated every 1 to 3 seconds for 60 seconds, and 3 kills.

``--scale`` multiplies the organisations (and below 1 the kills and durations; at least 4
employees and 1 kill): ``--only faults.kill9 --scale 0.15`` is a run of a few minutes (68
employees under 6 managers, about 140 check-ins, 3 kills). The other two take a few minutes
at 1.

Value: items that happened exactly once (sent emails at the fake once, series once in each
calendar they belong to, replies recorded once with one confirmation); baseline: items
checked; ratio 1.00 is the goal. The note has the counts: kills, leases the
kills orphaned, injected faults, dropped connections, lost and duplicate emails, events and
records, failed tasks, retries and the run time. Without PostgreSQL, the broker or Dovecot
the row says why, with zeros.
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
KILL9_EMPLOYEES, KILL9_MANAGERS = 456, 45  # 502 series: about 1,000 check-ins and replies
MANAGERS, KILLS = 6, 20
PROCESSES, THREADS = 2, 4  # one `automation worker` of 2 processes with 4 threads each
PROVIDER_EMPLOYEES, PROVIDER_KILLS = 60, 5
DBDROP_EMPLOYEES, DBDROP_KILLS, DROP_SECONDS = 60, 3, 60.0


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


def _size(full: int, scale: float, least: int) -> int:
    return max(int(full * scale), least)


def _drain_timeout(employees: int) -> float:
    """Seconds to wait for the last task: 300 for 60 employees, in proportion above."""
    return 300 * max(employees / 60, 1.0)


def run(result_type: type, name: str, folder: Path, config: Any, why: str | None = None) -> Any:
    """One fault run on a fresh schema, as one Result row."""
    from sqlalchemy import create_engine, text

    from tests.faults import DROPPED, fault_run

    why = why or _unreachable()
    if why:
        return result_type(name, 0.0, "items", 0.0, 0.0, f"skipped: {why}")
    schema = f"bench_faults_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        data = Path(tempfile.mkdtemp(prefix="faults-", dir=folder))
        result = fault_run(
            f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}", BROKER_URL, data, config
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    good = result.items - result.bad
    retries = ", ".join(f"{n}x {e}" for e, n in result.retry_errors.most_common(3))
    dropped = [tb for tb in result.tracebacks if any(d in tb for d in DROPPED)]
    others = len(result.tracebacks) - len(dropped)
    note = (
        f"{urlparse(BROKER_URL).scheme}, {config.employees} employees: {result.row()}"
        + (f"; retried: {retries}" if retries else "")
        + (f"; {len(dropped)} worker traceback(s) of a dropped connection" if dropped else "")
        + (f"; {others} other worker traceback(s)" if others else "")
        + (f"; PROBLEMS: {'; '.join(result.problems[:5])}" if result.problems else "")
    )
    return result_type(name, float(good), "items", float(result.items), good / result.items, note)


def kill9(result_type: type, scale: float, folder: Path) -> list[Any]:
    from tests.faults import FaultConfig

    config = FaultConfig(
        employees=_size(KILL9_EMPLOYEES, scale, 8),
        managers=_size(KILL9_MANAGERS, scale, 2),
        kills=min(_size(KILLS, scale, 1), KILLS),  # the 20, at any larger size
        seed=20,
        processes=PROCESSES,
        threads=THREADS,
        drain_timeout=_drain_timeout(_size(KILL9_EMPLOYEES, scale, 8)),
    )
    return [run(result_type, "faults.kill9", folder, config)]


def providers(result_type: type, scale: float, folder: Path) -> list[Any]:
    from tests.fakes.dovecot import dovecot_binary
    from tests.faults import FaultConfig

    config = FaultConfig(
        employees=_size(PROVIDER_EMPLOYEES, scale, 4),
        managers=_size(MANAGERS, scale, 1),
        kills=min(_size(PROVIDER_KILLS, scale, 1), PROVIDER_KILLS),
        seed=21,
        processes=PROCESSES,
        threads=THREADS,
        drain_timeout=_drain_timeout(_size(PROVIDER_EMPLOYEES, scale, 4)),
        calendar="google",
        mail="smtp",
        provider_fault_ratio=0.3,
        provider_lost_ratio=0.1,
        smtp_fault_ratio=0.2,
        smtp_lost_ratio=0.05,
        google_batch_size=5,
    )
    why = None if dovecot_binary() else "Dovecot is not installed (apt-get install dovecot-imapd)"
    return [run(result_type, "faults.providers", folder, config, why)]


def dbdrop(result_type: type, scale: float, folder: Path) -> list[Any]:
    from tests.faults import FaultConfig

    config = FaultConfig(
        employees=_size(DBDROP_EMPLOYEES, scale, 4),
        managers=_size(MANAGERS, scale, 1),
        kills=min(_size(DBDROP_KILLS, scale, 1), DBDROP_KILLS),
        seed=22,
        processes=PROCESSES,
        threads=THREADS,
        drain_timeout=_drain_timeout(_size(DBDROP_EMPLOYEES, scale, 4)),
        db_drop_every=(1.0, 3.0),
        run_seconds=max(min(DROP_SECONDS * scale, DROP_SECONDS), 3.0),
    )
    return [run(result_type, "faults.dbdrop", folder, config)]


def register(benchmark: Callable[[str], Callable[[Any], Any]], result_type: type) -> None:
    """Add the benchmarks to bench/run.py's registry, building their Result rows."""

    @benchmark("faults.kill9")
    def faults_kill9(scale: float, folder: Path) -> list[Any]:
        """kill -9 the worker 20 times during a run; everything exactly once."""
        return kill9(result_type, scale, folder)

    @benchmark("faults.providers")
    def faults_providers(scale: float, folder: Path) -> list[Any]:
        """30% 429/503 at Google, 421/451 at SMTP, lost answers, kills; everything once."""
        return providers(result_type, scale, folder)

    @benchmark("faults.dbdrop")
    def faults_dbdrop(scale: float, folder: Path) -> list[Any]:
        """The service's database connections terminated again and again; everything once."""
        return dbdrop(result_type, scale, folder)
