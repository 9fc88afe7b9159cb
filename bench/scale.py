"""Scaling benchmark: the same quarter's work with 1, 2 and 4 ``automation worker`` processes.

``scale.workers_2_vs_1`` and ``scale.workers_4_vs_1`` (PostgreSQL and Redis db 11). For each
process count a fresh world: a PostgreSQL schema of its own (dropped afterwards), a queue of
its own in Redis db 11 (``AUTOMATION_BROKER_NAMESPACE``, so runs sharing the database stay
apart; ``AUTOMATION_BENCH_SCALE_BROKER_URL`` names another Redis database), a data
folder with the embedded calendar files and Maildir folders (as ``tests/faults.py`` uses
them, so the run measures our service, not fakes), and an organisation of 10,000 people in a
management tree of eight reports per manager in six time zones: every person but the head
has a manager, so 9,999 weekly 1:1 series. ``--scale s`` runs 10,000 x s x s people (at
least 24): the work grows with the square, so ``--scale 0.1`` (100 people) stays a smoke run
of a minute or two and ``--scale 0.3`` is 900 people.

The service runs as separate processes that share only the database and the broker: the
tick is ``automation run --port 0`` with ``tick_seconds = 1`` (it reads the Maildir inbox and
enqueues up to 500 due task ids a tick; at the default 30 s the tick would be the limit, 500
tasks per 30 s), and ``automation -v worker --processes N --threads M``
(``AUTOMATION_BENCH_SCALE_THREADS``, default 4 as the command's own default; ``-v`` for the
job lines counted below) claims and runs them. ``lease_seconds = 900``: the one planning task
of 10,000 people runs for minutes on a busy machine, and must not be taken over mid-run.
Three phases, each timed from the moment its work becomes due to the moment the last task
of it is done (the task's own ``updated_at``):

a. **plan a quarter**: the ``plan`` task (every series, 13 weekly meetings each with their
   agenda and follow-up tasks, ``planning_horizon_days = 91``; one task, so one process) and
   one ``invite`` task per series (both people's calendar files), and the retention sweep;
b. **a week's agendas and prompts**: the first meeting of every series is moved into the two
   days before now (the clock advanced a week, on the data: agendas and follow-ups fall due
   on the real clock as ``tests/faults.py`` does with ``days_back``; escalation steps stay in
   the future), so one ``agenda`` (two emails) and one ``followup`` (one prompt) per series
   run, with a ``send`` task per email;
c. **a week of replies**: a reply from the manager to every prompt (prepared beforehand,
   then moved into the Maildir inbox's ``new/`` at once, as an MTA delivers), stored by the
   tick, recorded by ``ingest`` tasks, each with a confirmation email and its ``send``.

Throughput: tasks done per second over the three phases. Value: throughput with N processes;
baseline: with one; ratio: the scaling (goal at least 1.7 at two processes on a 2-core
machine). Every world is then counted: every task of each kind done once (none failed or
left due; tasks that needed a second attempt are counted in the detail), every email sent
once (one outbox file per Message-ID, none unknown), every series once in both people's
calendar files, one record and one confirmation per reply. A world that is not exactly-once
puts PROBLEMS in the note.

Where the time goes is written to stderr for each world and phase: CPU used (in cores, and
in ms per task) by the worker processes (each), their PostgreSQL backends, the tick and its
backends, Redis, the rest of PostgreSQL and the other load on the machine (from ``/proc``);
what this world's backends were doing (``pg_stat_activity`` every 50 ms: running, waiting
for a row lock and on which statement, I/O, idle in transaction while Python works); the
Redis queue depth; due-to-done times by kind; and the workers' job lines (runs and mean
duration by kind, messages that found their task taken). The note names the bottleneck at
two processes with that evidence, and the CPU ceiling for the ratio (the cores over the
cores the service used at one process), with the load average, as other work on the machine
moves every figure. Without PostgreSQL or Redis the rows say why, with zeros.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from tests.faults import ZONES  # the fault runs' six zones (both hemispheres' DST changes)

POSTGRES_URL = os.environ.get(
    "AUTOMATION_BENCH_POSTGRES_URL",
    os.environ.get(
        "AUTOMATION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/test"
    ),
)
BROKER_URL = os.environ.get("AUTOMATION_BENCH_SCALE_BROKER_URL", "redis://localhost:6379/11")
THREADS = int(os.environ.get("AUTOMATION_BENCH_SCALE_THREADS", "4"))
PROCESSES = tuple(
    int(n) for n in os.environ.get("AUTOMATION_BENCH_SCALE_PROCESSES", "1,2,4").split(",")
)
EMPLOYEES = 10_000
FANOUT = 8  # reports per manager
LEASE_SECONDS = 900
ORG = "scale"
SECRET = "scale-secret"
PHASES = ("plan", "agendas", "replies")
APP = "bench_scale"  # application_name prefix of every connection of a world
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def log(text: str) -> None:
    print(f"[scale] {text}", file=sys.stderr, flush=True)


def _unreachable() -> str | None:
    from sqlalchemy.engine import make_url

    pg = make_url(POSTGRES_URL)
    broker = urlparse(BROKER_URL)
    if broker.scheme not in ("redis", "rediss"):
        return f"the scale bench needs a Redis broker, not {broker.scheme}"
    for name, host, port in (
        ("PostgreSQL", pg.host or "localhost", pg.port or 5432),
        ("Redis", broker.hostname or "localhost", broker.port or 6379),
    ):
        try:
            with socket.create_connection((host, port), timeout=2):
                pass
        except OSError as exc:
            return f"{name} is not reachable on {host}:{port} ({exc})"
    if not Path("/proc/stat").exists():
        return "no /proc to measure CPU with"
    return None


def people_csv(people: int) -> str:
    """``people`` people in a tree of FANOUT reports per manager; p0 heads it. A team (the
    reports of one manager) shares a time zone."""
    rows = ["email,name,timezone,manager_email,hr_partner_email"]
    for i in range(people):
        team = (i - 1) // FANOUT if i else 0
        manager = f"p{team}@scale.test" if i else ""
        rows.append(f"p{i}@scale.test,Person {i},{ZONES[team % len(ZONES)]},{manager},")
    return "\n".join(rows) + "\n"


def weekly_config(folder: Path) -> Path:
    """The project's config with the one-on-one cadence made weekly."""
    from automation.settings import PROJECT_ROOT

    config = folder / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    cadence = config / "cadences" / "one-on-one.toml"
    text = cadence.read_text()
    assert 'frequency = "every 2 weeks"' in text, "config/cadences/one-on-one.toml changed"
    cadence.write_text(text.replace('frequency = "every 2 weeks"', 'frequency = "weekly"'))
    return config


def with_params(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())


# --------------------------------------------------------------------------- measuring


def _proc_stat(pid: str) -> tuple[str, int, int] | None:
    """(comm, process group, CPU ticks) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read().decode(errors="replace")
    except OSError:
        return None
    comm = data[data.index("(") + 1 : data.rindex(")")]
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); pgrp is field 5, utime 14, stime 15.
    return comm, int(fields[2]), int(fields[11]) + int(fields[12])


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


@dataclass
class Sample:
    """What one phase used and waited on."""

    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # category -> CPU seconds
    per_worker: dict[int, float] = field(default_factory=dict)  # worker pid -> CPU seconds
    machine_busy: float = 0.0  # CPU seconds, all processes
    cores: int = os.cpu_count() or 1
    waits: Counter[str] = field(default_factory=Counter)  # backend activity samples
    waits_by_role: dict[str, Counter[str]] = field(default_factory=dict)
    lock_queries: Counter[str] = field(default_factory=Counter)
    activity_samples: int = 0
    queue_depth: list[int] = field(default_factory=list)


class Monitor(threading.Thread):
    """Samples CPU (``/proc``), backend activity (``pg_stat_activity``) and the Redis queue
    while a phase runs. Categories: ``workers`` (the worker process group), ``tick`` (the tick
    process group), ``pg:workers`` / ``pg:tick`` / ``pg:bench`` (PostgreSQL backends serving
    them, by application_name), ``postgres other`` (every other postgres process: background
    writers, and other users of the server), ``redis``, ``bench`` (this process)."""

    def __init__(self, world: World):
        super().__init__(daemon=True)
        self.world = world
        self.stopping = threading.Event()
        self.result = Sample()
        self.first: dict[str, int] = {}  # pid -> ticks at first sight
        self.last: dict[str, tuple[str, int]] = {}  # pid -> (category, ticks)
        self.baseline: dict[str, int] = {}  # pids alive at the start -> ticks then
        self.started = 0.0

    def _categorise(self) -> dict[str, str]:
        backends = self.world.backends()
        groups = {
            self.world.worker.pid if self.world.worker else -1: "workers",
            self.world.ticker.pid if self.world.ticker else -1: "tick",
        }
        out: dict[str, str] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            stat = _proc_stat(entry.name)
            if stat is None:
                continue
            comm, pgrp, _ = stat
            pid = int(entry.name)
            if pgrp in groups:
                out[entry.name] = groups[pgrp]
            elif pid in backends:
                out[entry.name] = f"pg:{backends[pid]}"
            elif comm.startswith("postgres"):
                out[entry.name] = "postgres other"
            elif comm.startswith("redis-server"):
                out[entry.name] = "redis"
            elif pid == os.getpid():
                out[entry.name] = "bench"
        return out

    def _cpu(self, categories: dict[str, str]) -> None:
        for pid, category in categories.items():
            stat = _proc_stat(pid)
            if stat is None:
                continue
            ticks = stat[2]
            if pid not in self.first:
                self.first[pid] = self.baseline.get(pid, 0)
            self.last[pid] = (category, ticks)

    def start_measuring(self) -> None:
        categories = self._categorise()
        for pid in categories:
            stat = _proc_stat(pid)
            if stat is not None:
                self.baseline[pid] = stat[2]
        # Processes that existed before but were not ours stay out (their pid is not seen
        # again as new): only pids categorised now or later are counted.
        self.machine0 = _machine_ticks()
        self.started = time.monotonic()
        self._cpu(categories)
        self.start()

    def run(self) -> None:
        from sqlalchemy import text

        categories = self._categorise()
        next_cpu = time.monotonic() + 0.5
        engine = self.world.monitor_engine
        redis_client = self.world.redis
        query = text(
            "SELECT application_name, state, wait_event_type, wait_event, "
            "left(regexp_replace(query, '\\s+', ' ', 'g'), 2000) "
            "FROM pg_stat_activity WHERE application_name LIKE :app AND pid <> pg_backend_pid()"
        )
        app = f"{self.world.app}%"
        with engine.connect() as conn:
            while not self.stopping.wait(0.05):
                rows = conn.execute(query, {"app": app}).all()
                conn.commit()
                self.result.activity_samples += 1
                for name, state, wtype, wevent, sql in rows:
                    role = name.rsplit("_", 1)[-1]
                    if state == "active":
                        what = f"{wtype}:{wevent}" if wtype else "CPU (running a statement)"
                        if wtype == "Lock":
                            self.result.lock_queries[statement_label(sql)] += 1
                    elif state == "idle in transaction":
                        what = "idle in transaction (waiting on Python)"
                    else:
                        continue  # idle connections in the pools
                    self.result.waits[what] += 1
                    self.result.waits_by_role.setdefault(role, Counter())[what] += 1
                with contextlib.suppress(Exception):  # a depth sample is optional
                    depth = redis_client.llen(f"{self.world.namespace}:automation")
                    self.result.queue_depth.append(int(depth))
                if time.monotonic() >= next_cpu:
                    categories = self._categorise()
                    self._cpu(categories)
                    next_cpu = time.monotonic() + 0.5
        self._cpu(self._categorise())

    def stop(self) -> Sample:
        self.stopping.set()
        self.join(30)
        busy0, _ = self.machine0
        busy1, _ = _machine_ticks()
        r = self.result
        r.seconds = time.monotonic() - self.started
        r.machine_busy = (busy1 - busy0) / CLK_TCK
        worker_pgid = self.world.worker.pid if self.world.worker else -1
        for pid, (category, ticks) in self.last.items():
            used = (ticks - self.first[pid]) / CLK_TCK
            r.cpu[category] = r.cpu.get(category, 0.0) + used
            if category == "workers":
                stat = _proc_stat(pid)
                if int(pid) != worker_pgid or stat is None or used > 0.05:
                    r.per_worker[int(pid)] = used
        return r


# --------------------------------------------------------------------------- one world


@dataclass
class PhaseResult:
    name: str
    seconds: float
    tasks: int
    sample: Sample
    jobs: dict[str, list[float]]  # kind -> durations (ms) of the jobs run
    not_claimed: Counter[str]
    not_claimed_ms: float = 0.0  # their mean duration
    # kind -> (tasks, median, 90th percentile) seconds from due (or the phase start) to done
    latency: dict[str, tuple[int, float, float]] = field(default_factory=dict)


@dataclass
class WorldResult:
    processes: int
    threads: int
    people: int
    series: int
    phases: list[PhaseResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)  # load average at the start
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def tasks(self) -> int:
        return sum(p.tasks for p in self.phases)

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.phases)

    @property
    def throughput(self) -> float:
        return self.tasks / self.seconds if self.seconds else 0.0


JOB_LINE = re.compile(r"job task=(\d+) kind=(\S+) .*?outcome=(\S+) duration_ms=([\d.]+)")


class World:
    """A schema, a data folder, the tick and the worker processes of one process count."""

    def __init__(self, folder: Path, people: int, processes: int, threads: int):
        self.folder, self.people, self.processes, self.threads = folder, people, processes, threads
        self.schema = f"bench_scale_{uuid.uuid4().hex[:8]}"
        self.app = f"{APP}_{self.schema[-8:]}"
        self.namespace = self.schema  # the Redis keys' prefix
        self.worker: subprocess.Popen[bytes] | None = None
        self.ticker: subprocess.Popen[bytes] | None = None
        self.worker_log = folder / "worker.log"
        self.tick_log = folder / "tick.log"
        self.log_offset = 0
        self.rt: Any = None
        self.org = 0
        self.env: dict[str, str] = {}
        self.redis: Any = None
        self.monitor_engine: Any = None
        self._backends: dict[int, str] = {}
        self.worker_command = [sys.executable, "-m", "automation.cli"]
        # Organizations in the world: verify expects one plan and one retention task of each.
        self.organizations = 1
        # The PostgreSQL role the service runs as (None: the URL's own, a superuser here, which
        # row-level security never binds). bench/tenants.py runs as an ordinary role.
        self.db_role: str | None = None

    def url(self, role: str) -> str:
        """This world's connection URL for one of its parts (workers, tick, bench, monitor).
        With ``db_role`` the service's parts switch to that role on connecting; the monitor
        keeps the login role, which sees every backend's wait events."""
        options = f"-csearch_path={self.schema}"
        if self.db_role is not None and role != "monitor":
            options += f" -crole={self.db_role}"
        return with_params(POSTGRES_URL, options=options, application_name=f"{self.app}_{role}")

    def backends(self) -> dict[int, str]:
        """PostgreSQL backend pid -> role (workers, tick, bench) of this world's connections."""
        from sqlalchemy import text

        with self.monitor_engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT pid, application_name FROM pg_stat_activity "
                    "WHERE application_name LIKE :a"
                ),
                {"a": f"{self.app}%"},
            ).all()
        self._backends = {pid: name.rsplit("_", 1)[-1] for pid, name in rows}
        return self._backends

    # -- set-up -----------------------------------------------------------------------------

    def setup(self) -> None:
        import redis
        from sqlalchemy import create_engine, text

        from automation.runtime import build_runtime
        from automation.settings import PROJECT_ROOT, Settings

        admin = create_engine(POSTGRES_URL)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            if self.db_role is not None:
                # An ordinary role (no superuser, no BYPASSRLS) owning the tables it creates:
                # FORCE ROW LEVEL SECURITY binds it, as it binds a production deployment's.
                conn.execute(
                    text(
                        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
                        f"'{self.db_role}') THEN CREATE ROLE {self.db_role} NOLOGIN NOSUPERUSER "
                        "NOBYPASSRLS; END IF; END $$"
                    )
                )
                conn.execute(
                    text(f'GRANT USAGE, CREATE ON SCHEMA "{self.schema}" TO {self.db_role}')
                )
        admin.dispose()
        self.monitor_engine = create_engine(self.url("monitor"), pool_size=2)
        self.redis = redis.Redis.from_url(BROKER_URL)
        self.clear_queue()
        config = weekly_config(self.folder)
        settings = Settings(
            data_dir=self.folder / "data",
            database_url=self.url("bench"),
            broker_url=BROKER_URL,
            organization=ORG,
            secret_key=SECRET,
            config_dir=config,
            templates_dir=PROJECT_ROOT / "templates",
            planning_horizon_days=91,
            tick_seconds=1,
            lease_seconds=LEASE_SECONDS,
        )
        self.rt = rt = build_runtime(settings)
        self.populate()
        # Planning and the retention sweep wait for phase (a).
        self._sql(
            "UPDATE tasks SET due_at = :later WHERE state = 'pending'",
            later=_db(rt.now() + dt.timedelta(days=1)),
        )
        base = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATION_")}
        base.update(
            {
                "AUTOMATION_BROKER_URL": BROKER_URL,
                "AUTOMATION_BROKER_NAMESPACE": self.namespace,
                "AUTOMATION_DATA_DIR": str(settings.data_dir),
                "AUTOMATION_ORGANIZATION": ORG,
                "AUTOMATION_SECRET_KEY": SECRET,
                "AUTOMATION_CONFIG_DIR": str(config),
                "AUTOMATION_PLANNING_HORIZON_DAYS": "91",
                "AUTOMATION_TICK_SECONDS": "1",
                # The one planning task of 10,000 people runs for minutes on a busy machine:
                # a lease that outlives it, so no second worker takes it over mid-run.
                "AUTOMATION_LEASE_SECONDS": str(LEASE_SECONDS),
            }
        )
        self.env = base
        self.start_processes()

    def populate(self) -> None:
        """Migrate the schema, create the organization (with its plan and retention tasks)
        and import its people. bench/tenants.py makes several organizations here."""
        from automation.db import transaction
        from automation.people import import_people_file
        from automation.services.loop import bootstrap

        rt = self.rt
        self.org = bootstrap(rt)
        csv = self.folder / "people.csv"
        csv.write_text(people_csv(self.people))
        with transaction(rt.factory) as session:
            import_people_file(session, self.org, csv, rt.now())

    def clear_queue(self) -> None:
        """Delete this world's keys (queue, acks, heartbeats, markers): other runs of this
        benchmark may share the Redis database, each in a namespace of its own."""
        keys = list(self.redis.scan_iter(f"{self.namespace}:*", count=1000))
        for lo in range(0, len(keys), 1000):
            self.redis.delete(*keys[lo : lo + 1000])

    def _sql(self, statement: str, **params: Any) -> Any:
        from sqlalchemy import text

        with self.rt.engine.begin() as conn:
            return conn.execute(text(statement), params)

    def _scalar(self, statement: str, **params: Any) -> Any:
        from sqlalchemy import text

        with self.rt.engine.connect() as conn:
            return conn.execute(text(statement), params).scalar()

    def start_processes(self) -> None:
        from automation.settings import PROJECT_ROOT

        with self.worker_log.open("wb") as out:
            self.worker = subprocess.Popen(
                [*self.worker_command, "-v", "worker"]
                + ["--processes", str(self.processes), "--threads", str(self.threads)],
                env={**self.env, "AUTOMATION_DATABASE_URL": self.url("workers")},
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with self.tick_log.open("wb") as out:
            self.ticker = subprocess.Popen(
                [sys.executable, "-m", "automation.cli", "run", "--port", "0"],
                env={**self.env, "AUTOMATION_DATABASE_URL": self.url("tick")},
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while True:
            ready = self.worker_log.read_text(errors="replace").count("is ready for action")
            ticking = b"automation: running on" in self.tick_log.read_bytes()
            if ready >= self.processes and ticking:
                break
            for proc, name in ((self.worker, self.worker_log), (self.ticker, self.tick_log)):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name.name} exited: {name.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("worker processes did not start in 120 s")
            time.sleep(0.1)
        self.log_offset = self.worker_log.stat().st_size

    def stop_processes(self) -> None:
        for proc in (self.ticker, self.worker):
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        self.ticker = self.worker = None

    def close(self) -> None:
        from sqlalchemy import create_engine, text

        self.stop_processes()
        if self.rt is not None:
            self.rt.engine.dispose()
        if self.monitor_engine is not None:
            self.monitor_engine.dispose()
        if self.redis is not None:
            self.clear_queue()
            self.redis.close()
        admin = create_engine(POSTGRES_URL)
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        admin.dispose()

    # -- phases -----------------------------------------------------------------------------

    def _settled(self) -> bool:
        """Nothing due or leased, no email waiting, no reply waiting in the inbox."""
        now = _db(dt.datetime.now(dt.UTC))
        busy = self._scalar(
            "SELECT count(*) FROM tasks WHERE state = 'leased' "
            "OR (state = 'pending' AND due_at <= :now)",
            now=now,
        )
        unsent = self._scalar("SELECT count(*) FROM outbound_messages WHERE state <> 'sent'")
        unread = self._scalar("SELECT count(*) FROM inbound_messages WHERE state = 'received'")
        inbox = self.rt.settings.inbox / "new"
        waiting = any(os.scandir(inbox)) if inbox.is_dir() else False
        return busy == 0 and unsent == 0 and unread == 0 and not waiting

    def _done(self) -> int:
        return int(self._scalar("SELECT count(*) FROM tasks WHERE state = 'done'") or 0)

    def phase(self, name: str, make_due: Callable[[], dt.datetime], timeout: float) -> PhaseResult:
        before = self._done()
        monitor = Monitor(self)
        monitor.start_measuring()
        started = make_due()
        deadline = time.monotonic() + timeout
        quiet = 0
        while True:
            time.sleep(0.5)
            if self._settled():
                quiet += 1
                if quiet >= 2:
                    break
            else:
                quiet = 0
            if time.monotonic() > deadline:
                monitor.stop()
                raise RuntimeError(f"phase {name} not done after {timeout:.0f} s")
        sample = monitor.stop()
        last = self._scalar(
            "SELECT max(updated_at) FROM tasks WHERE state = 'done' AND updated_at >= :t",
            t=_db(started),
        )
        finished = last.replace(tzinfo=dt.UTC) if last else dt.datetime.now(dt.UTC)
        seconds = max((finished - started).total_seconds(), 1e-3)
        tasks = self._done() - before
        jobs, not_claimed, wasted = self._jobs()
        mean = wasted / sum(not_claimed.values()) if not_claimed else 0.0
        latency = self._latency(started)
        return PhaseResult(name, seconds, tasks, sample, jobs, not_claimed, mean, latency)

    def _latency(self, started: dt.datetime) -> dict[str, tuple[int, float, float]]:
        from sqlalchemy import text

        with self.rt.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT kind, count(*), percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP "
                    "(ORDER BY extract(epoch FROM updated_at - greatest(due_at, :t))) "
                    "FROM tasks WHERE state = 'done' AND updated_at >= :t GROUP BY kind"
                ),
                {"t": _db(started)},
            ).all()
        return {kind: (n, float(q[0]), float(q[1])) for kind, n, q in rows}

    def _jobs(self) -> tuple[dict[str, list[float]], Counter[str], float]:
        with self.worker_log.open("rb") as handle:
            handle.seek(self.log_offset)
            data = handle.read().decode(errors="replace")
        self.log_offset += len(data.encode())
        jobs: dict[str, list[float]] = defaultdict(list)
        not_claimed: Counter[str] = Counter()
        wasted = 0.0
        for m in JOB_LINE.finditer(data):
            kind, outcome, ms = m.group(2), m.group(3), float(m.group(4))
            if outcome == "not-claimed":
                not_claimed[kind] += 1
                wasted += ms
            else:
                jobs[kind].append(ms)
        return jobs, not_claimed, wasted

    def start_planning(self) -> dt.datetime:
        now = dt.datetime.now(dt.UTC)
        self._sql(
            "UPDATE tasks SET due_at = :now "
            "WHERE state = 'pending' AND kind IN ('plan', 'retention')",
            now=_db(now),
        )
        return now

    def start_week(self) -> dt.datetime:
        """Move each series' first meeting into the two days before now, in order, with its
        agenda and follow-up due as the cadence says: the clock advanced a week."""
        cadence = next(iter(self.rt.cadences.values()))
        lead = dt.timedelta(hours=cadence.agenda_lead_hours)
        delay = dt.timedelta(hours=cadence.followup_delay_hours)
        now = dt.datetime.now(dt.UTC)
        with self.rt.engine.begin() as conn:
            from sqlalchemy import text

            conn.execute(
                text(
                    "CREATE TEMP TABLE week ON COMMIT DROP AS "
                    "SELECT DISTINCT ON (series_id) id, start_at FROM occurrences "
                    "ORDER BY series_id, start_at"
                )
            )
            first, last = conn.execute(text("SELECT min(start_at), max(start_at) FROM week")).one()
            span = (last - first).total_seconds() or 1.0
            window = (dt.timedelta(days=2) - dt.timedelta(hours=3)).total_seconds()
            conn.execute(
                text(
                    "UPDATE occurrences o SET "
                    "start_at = :base + (o.start_at - :first) * :k, "
                    "end_at = :base + (o.start_at - :first) * :k + (o.end_at - o.start_at) "
                    "FROM week w WHERE o.id = w.id"
                ),
                {"base": _db(now - dt.timedelta(days=2)), "first": first, "k": window / span},
            )
            conn.execute(
                text(
                    "UPDATE tasks t SET due_at = CASE t.kind "
                    "WHEN 'agenda' THEN o.start_at - :lead ELSE o.end_at + :delay END "
                    "FROM week w JOIN occurrences o ON o.id = w.id "
                    "WHERE t.subject_id = w.id AND t.kind IN ('agenda', 'followup') "
                    "AND t.state = 'pending'"
                ),
                {"lead": lead, "delay": delay},
            )
        return dt.datetime.now(dt.UTC)

    def prepare_replies(self) -> list[Path]:
        """One reply from the manager to every prompt sent, in the inbox's tmp/."""
        from sqlalchemy import select

        from automation.models import OutboundMessage

        tmp = self.rt.settings.inbox / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        out = []
        with self.rt.factory() as session:
            prompts = session.execute(
                select(OutboundMessage.id, OutboundMessage.raw, OutboundMessage.recipients)
                .where(OutboundMessage.kind == "followup", OutboundMessage.state == "sent")
                .order_by(OutboundMessage.id)
            ).all()
        for prompt_id, raw, recipients in prompts:
            original = email.message_from_bytes(raw, policy=email.policy.default)
            reply = EmailMessage()
            reply["From"] = recipients[0]
            reply["To"] = original["Reply-To"]
            reply["Subject"] = "Re: " + original["Subject"]
            reply["Message-ID"] = f"<scale-reply-{prompt_id}@client.test>"
            reply["In-Reply-To"] = original["Message-ID"]
            reply.set_content(
                "1. Went well.\n2. Nothing in the way.\n3. On track.\nRating: 4\n"
                f"Action: send the notes by Friday (prompt {prompt_id})\n"
            )
            path = tmp / f"scale-reply-{prompt_id}"
            path.write_bytes(reply.as_bytes())
            out.append(path)
        return out

    def deliver(self, files: list[Path]) -> dt.datetime:
        started = dt.datetime.now(dt.UTC)
        new = self.rt.settings.inbox / "new"
        for path in files:
            os.replace(path, new / path.name)
        return started

    # -- counting ---------------------------------------------------------------------------

    def verify(self, result: WorldResult, replies: int) -> None:
        """Everything exactly once: tasks, emails on disk, calendar events, records."""
        from sqlalchemy import func, select

        from automation.models import (
            CheckinSeries,
            ConversationRecord,
            InboundMessage,
            OutboundMessage,
            Person,
            Task,
        )

        problems = result.problems
        series_n = result.series
        with self.rt.factory() as session:
            by_state = dict(
                session.execute(select(Task.state, func.count()).group_by(Task.state)).all()
            )
            due = self._scalar(
                "SELECT count(*) FROM tasks WHERE state = 'pending' AND due_at <= :now",
                now=_db(dt.datetime.now(dt.UTC)),
            )
            for state in ("failed", "leased"):
                if by_state.get(state):
                    problems.append(f"{by_state[state]} task(s) {state}")
                    for key, error in session.execute(
                        select(Task.key, Task.last_error).where(Task.state == state).limit(3)
                    ):
                        problems.append(f"  {key}: {str(error)[:200]}")
            if due:
                problems.append(f"{due} task(s) still due")
            result.retries = int(
                session.scalar(select(func.count()).select_from(Task).where(Task.attempts > 1)) or 0
            )
            done = dict(
                session.execute(
                    select(Task.kind, func.count()).where(Task.state == "done").group_by(Task.kind)
                ).all()
            )
            expected = {
                "plan": self.organizations,
                "retention": self.organizations,
                "invite": series_n,
                "agenda": series_n,
                "followup": series_n,
                "send": 3 * series_n + replies,
                "ingest": replies,
            }
            for kind, n in expected.items():
                if done.get(kind, 0) != n:
                    problems.append(f"{done.get(kind, 0)} {kind} task(s) done, expected {n}")
            for kind in set(done) - set(expected):
                problems.append(f"{done[kind]} unexpected {kind} task(s) done")
            result.counts.update({f"tasks.{k}": v for k, v in done.items()})

            # Emails: every one sent, one outbox file per Message-ID, nothing else on disk.
            messages = session.execute(
                select(OutboundMessage.kind, OutboundMessage.state, OutboundMessage.message_id)
            ).all()
            kinds = Counter(kind for kind, _, _ in messages)
            for kind, n in (
                ("agenda", 2 * series_n),
                ("followup", series_n),
                ("confirmation", replies),
            ):
                if kinds.get(kind, 0) != n:
                    problems.append(f"{kinds.get(kind, 0)} {kind} email(s), expected {n}")
            unsent = [mid for _, state, mid in messages if state != "sent"]
            if unsent:
                problems.append(f"{len(unsent)} email(s) not sent")
            outbox = self.rt.settings.outbox
            on_disk = {p.name for p in (outbox / "new").iterdir()} | {
                p.name.split(":")[0] for p in (outbox / "cur").iterdir()
            }
            names = [
                hashlib.sha256(mid.encode()).hexdigest()[:32] + ".eml" for _, _, mid in messages
            ]
            missing = set(names) - on_disk
            if missing:
                problems.append(f"{len(missing)} sent email(s) not in the outbox")
            unknown = on_disk - set(names)
            if unknown:
                problems.append(f"{len(unknown)} outbox file(s) the database does not know")
            if len(set(names)) != len(names):
                problems.append(f"{len(names) - len(set(names))} Message-ID(s) used twice")
            result.counts["emails"] = len(messages)

            # Calendars: each active series once in its manager's and its employee's file.
            emails = dict(session.execute(select(Person.id, Person.email)).all())
            series = session.execute(
                select(
                    CheckinSeries.uid, CheckinSeries.manager_id, CheckinSeries.employee_id
                ).where(CheckinSeries.active)
            ).all()
            files: dict[str, Counter[str]] = {}
            for path in self.rt.settings.calendars.glob("*.ics"):
                files[path.stem] = ics_uids(path.read_bytes())
            lost = doubled = 0
            for uid, manager_id, employee_id in series:
                for pid in (manager_id, employee_id):
                    n = files.get(emails[pid].lower(), Counter())[uid]
                    lost += n == 0
                    doubled += max(n - 1, 0)
            if lost or doubled:
                problems.append(f"calendar events: {lost} missing, {doubled} duplicated")
            result.counts["events"] = sum(sum(c.values()) for c in files.values())

            # Replies: each stored once, recorded once, confirmed once.
            inbound = Counter(
                session.scalars(
                    select(InboundMessage.state).where(
                        InboundMessage.message_id.like("<scale-reply-%")
                    )
                )
            )
            if inbound.get("recorded", 0) != replies or sum(inbound.values()) != replies:
                problems.append(f"replies stored {dict(inbound)}, expected {replies} recorded")
            records = session.execute(
                select(ConversationRecord.source_message_id, ConversationRecord.subject_id)
            ).all()
            if len(records) != replies:
                problems.append(f"{len(records)} record(s), expected {replies}")
            if len({r[0] for r in records}) != len(records) or len({r[1] for r in records}) != len(
                records
            ):
                problems.append("a reply or a check-in has more than one record")
            result.counts["records"] = len(records)


def ics_uids(data: bytes) -> Counter[str]:
    """Master VEVENTs per UID in a calendar file (unfolded lines; overrides not counted)."""
    text = data.decode(errors="replace").replace("\r\n ", "").replace("\r\n\t", "")
    out: Counter[str] = Counter()
    for block in text.split("BEGIN:VEVENT")[1:]:
        body = block.split("END:VEVENT")[0]
        if "\nRECURRENCE-ID" in body or "\nSTATUS:CANCELLED" in body:
            continue
        m = re.search(r"\nUID:([^\r\n]+)", body)
        if m:
            out[m.group(1)] += 1
    return out


def _db(moment: dt.datetime) -> dt.datetime:
    """Naive UTC, as the UTCDateTime columns store it."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def run_world(
    folder: Path,
    people: int,
    processes: int,
    threads: int,
    make_world: Callable[[Path, int, int, int], World] | None = None,
) -> WorldResult:
    """One world's three phases, then its count. ``make_world`` builds the world (default
    :class:`World`; bench/tenants.py passes one of several organizations)."""
    world = (make_world or World)(folder, people, processes, threads)
    result = WorldResult(processes, threads, people, 0)
    # Generous: the 1-process world at full size takes a few minutes per phase.
    timeout = max(120.0, people * 0.6)
    try:
        world.setup()
        result.load = os.getloadavg()
        log(f"{processes} process(es) x {threads} threads: {people} people, schema {world.schema}")
        result.phases.append(world.phase("plan", world.start_planning, timeout))
        log(describe_phase(result.phases[-1]))
        result.series = int(world._scalar("SELECT count(*) FROM checkin_series") or 0)
        result.phases.append(world.phase("agendas", world.start_week, timeout))
        log(describe_phase(result.phases[-1]))
        files = world.prepare_replies()
        result.phases.append(world.phase("replies", lambda: world.deliver(files), timeout))
        log(describe_phase(result.phases[-1]))
        result.load_after = os.getloadavg()
        world.stop_processes()
        world.verify(result, len(files))
    finally:
        world.close()
    return result


# --------------------------------------------------------------------------- reporting


def _cores(sample: Sample, category: str) -> float:
    return sample.cpu.get(category, 0.0) / sample.seconds if sample.seconds else 0.0


def describe_phase(p: PhaseResult) -> str:
    lines: list[str] = []
    s = p.sample
    cpu = ", ".join(
        f"{name} {_cores(s, name):.2f}"
        for name in (
            "workers",
            "pg:workers",
            "tick",
            "pg:tick",
            "redis",
            "postgres other",
            "bench",
            "pg:bench",
        )
        if s.cpu.get(name)
    )
    ours = sum(s.cpu.values())
    other = max(s.machine_busy - ours, 0.0) / s.seconds if s.seconds else 0.0
    per = sorted(
        (v / s.seconds for v in s.per_worker.values() if v > 0.01 * s.seconds), reverse=True
    )
    lines.append(
        f"  {p.name}: {p.seconds:.1f} s, {p.tasks} tasks, {p.tasks / p.seconds:.1f}/s; "
        f"CPU in cores (of {s.cores}): machine {s.machine_busy / s.seconds:.2f}, {cpu}, "
        f"not ours {other:.2f}; per worker process " + "/".join(f"{v:.2f}" for v in per)
    )
    if p.tasks:
        per_task = {
            "worker": s.cpu.get("workers", 0.0),
            "their PostgreSQL": s.cpu.get("pg:workers", 0.0),
            "tick and its PostgreSQL": s.cpu.get("tick", 0.0) + s.cpu.get("pg:tick", 0.0),
        }
        lines.append(
            "    CPU ms per task: "
            + ", ".join(f"{k} {1000 * v / p.tasks:.1f}" for k, v in per_task.items())
        )
    total = sum(s.waits.values()) or 1
    waits = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in s.waits.most_common(6))
    busy = total / max(s.activity_samples, 1)
    lines.append(f"    backends busy on average {busy:.1f}: {waits}")
    for role, c in sorted(s.waits_by_role.items()):
        t = sum(c.values()) or 1
        lines.append(
            f"      {role}: " + ", ".join(f"{k} {100 * v / t:.0f}%" for k, v in c.most_common(4))
        )
    if s.lock_queries:
        lines.append(
            "    lock waits on: " + "; ".join(f"{n}x {q}" for q, n in s.lock_queries.most_common(3))
        )
    depth = s.queue_depth
    if depth:
        empty = sum(1 for d in depth if d == 0) / len(depth)
        lines.append(
            f"    Redis queue depth mean {sum(depth) / len(depth):.0f}, max {max(depth)}, "
            f"empty {100 * empty:.0f}% of samples"
        )
    jobs = ", ".join(
        f"{k} {len(v)} x {sum(v) / len(v):.1f} ms" for k, v in sorted(p.jobs.items()) if v
    )
    lines.append(f"    jobs: {jobs}")
    if p.latency:
        lines.append(
            "    due to done (median/90th percentile, s): "
            + ", ".join(f"{k} {m:.1f}/{q:.1f}" for k, (_, m, q) in sorted(p.latency.items()))
        )
    if p.not_claimed:
        lines.append(
            f"    messages that found their task taken: {dict(p.not_claimed)}, "
            f"{p.not_claimed_ms:.1f} ms each"
        )
    return "\n".join(lines)


def describe(result: WorldResult) -> str:
    lines = [
        f"{result.processes} worker process(es) x {result.threads} threads, "
        f"{result.people} people, {result.series} series: {result.tasks} tasks in "
        f"{result.seconds:.1f} s = {result.throughput:.1f} tasks/s; retried {result.retries}; "
        f"load average {result.load[0]:.1f} at the start, {result.load_after[0]:.1f} at the end"
    ]
    lines += [describe_phase(p) for p in result.phases]
    if result.problems:
        lines.append("  PROBLEMS: " + "; ".join(result.problems[:10]))
    return "\n".join(lines)


def statement_label(sql: str) -> str:
    """``SELECT organizations FOR NO KEY UPDATE``: verb, table and row-lock clause."""
    verb = (sql.split() or ["?"])[0].upper()
    table = re.search(r"\b(?:FROM|UPDATE|INTO)\s+\"?(\w+)", sql, re.IGNORECASE)
    upper = sql.upper()
    lock = next(
        (f" {c}" for c in ("FOR NO KEY UPDATE", "FOR UPDATE", "FOR SHARE") if c in upper), ""
    )
    return f"{verb} {table.group(1) if table else '?'}{lock}"


# The audit chain's append (automation/audit.py): the UPDATE of the organization's head in
# the statement that inserts the entries, labelled by its first table.
AUDIT_LOCK = "WITH organizations"


def _lock_share(result: WorldResult) -> tuple[float, Counter[str]]:
    waits: Counter[str] = Counter()
    queries: Counter[str] = Counter()
    for p in result.phases:
        waits.update(p.sample.waits)
        queries.update(p.sample.lock_queries)
    lock = sum(v for k, v in waits.items() if k.startswith("Lock:"))
    return lock / (sum(waits.values()) or 1), queries


def bottleneck(results: dict[int, WorldResult]) -> str:
    """Name what limits the scaling at two processes, with the evidence from the samples."""
    one, two = results.get(1), results.get(2)
    if one is None or two is None:
        return ""

    def cores_used(r: WorldResult, fn: Callable[[Sample], float]) -> float:
        return sum(fn(p.sample) for p in r.phases) / (sum(p.sample.seconds for p in r.phases) or 1)

    cores = one.phases[0].sample.cores
    machine2 = cores_used(two, lambda s: s.machine_busy)
    ours1 = cores_used(one, lambda s: sum(s.cpu.values()))
    ours2 = cores_used(two, lambda s: sum(s.cpu.values()))
    workers1 = cores_used(one, lambda s: s.cpu.get("workers", 0.0))
    workers2 = cores_used(two, lambda s: s.cpu.get("workers", 0.0))
    pg1 = cores_used(one, lambda s: s.cpu.get("pg:workers", 0.0))
    pg2 = cores_used(two, lambda s: s.cpu.get("pg:workers", 0.0))
    service = ("workers", "pg:workers", "tick", "pg:tick", "redis")
    service1 = cores_used(one, lambda s: sum(s.cpu.get(k, 0.0) for k in service))
    share1, _ = _lock_share(one)
    share2, queries = _lock_share(two)
    top, top_n = (queries.most_common(1) or [("?", 0)])[0]
    of_locks = top_n / (sum(queries.values()) or 1)
    depth = [d for p in two.phases for d in p.sample.queue_depth]
    empty = sum(1 for d in depth if d == 0) / (len(depth) or 1)
    evidence = (
        f"row-lock waits {100 * share2:.0f}% of busy backend samples at 2 processes "
        f"({100 * share1:.0f}% at 1), {100 * of_locks:.0f}% of them on {top}; "
        f"CPU in cores at 1 process: ours {ours1:.2f} (workers {workers1:.2f}, their "
        f"PostgreSQL {pg1:.2f}), at 2: ours {ours2:.2f} (workers {workers2:.2f}, PostgreSQL "
        f"{pg2:.2f}), machine {machine2:.2f} of {cores} (other load {machine2 - ours2:.2f}); "
        f"Redis queue empty in {100 * empty:.0f}% of samples at 2; the CPU ceiling for the "
        f"ratio, {cores} cores / the service's {service1:.2f} at 1 process, is "
        f"{cores / service1 if service1 else 0.0:.2f}"
    )
    if share2 >= 0.25:
        name = f"row lock: {top}"
        if top == AUDIT_LOCK:
            name += " (the audit chain's head, an organization row locked from append to commit)"
    elif machine2 >= 0.9 * cores:
        name = f"CPU: the {cores} cores are busy" + (
            " (other load too)" if machine2 - ours2 > 0.2 * cores else ""
        )
    elif empty >= 0.5:
        name = "the tick: the workers' queue was empty most of the time"
    else:
        name = "the worker processes (waiting on Python, not on CPU or locks)"
    return f"bottleneck: {name}; {evidence}"


@contextlib.contextmanager
def _terminate_cleanly() -> Any:
    """SIGTERM unwinds like Ctrl-C, so a stopped run still stops its worker processes and
    drops its schema."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def rows(result_type: type, scale: float, folder: Path) -> list[Any]:
    names = [f"scale.workers_{n}_vs_1" for n in PROCESSES[1:]]
    why = _unreachable()
    if why:
        return [result_type(n, 0.0, "tasks/s", 0.0, 0.0, f"skipped: {why}") for n in names]
    people = max(int(EMPLOYEES * scale**2), 24)
    load = os.getloadavg()
    log(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    results: dict[int, WorldResult] = {}
    with _terminate_cleanly():
        for n in PROCESSES:
            sub = folder / f"scale-{n}"
            sub.mkdir(parents=True, exist_ok=True)
            results[n] = run_world(sub, people, n, THREADS)
            log(describe(results[n]))
    named = bottleneck(results)
    log(named)
    one = results[1]
    out = []
    for n, name in zip(PROCESSES[1:], names, strict=True):
        r = results[n]
        phases = ", ".join(
            f"{p.name} {p.seconds:.1f}/{b.seconds:.1f} s"
            for p, b in zip(r.phases, one.phases, strict=True)
        )
        problems = [f"{k}p: {'; '.join(v.problems[:3])}" for k, v in results.items() if v.problems]
        note = (
            f"{people} people, {r.series} series, {r.tasks} tasks, {THREADS} threads/process; "
            f"phases {n}p/1p: {phases}; load average {r.load[0]:.1f}/{one.load[0]:.1f} at the "
            f"start; {named}" + (f"; PROBLEMS: {' | '.join(problems)}" if problems else "")
        )
        out.append(
            result_type(
                name,
                r.throughput,
                "tasks/s",
                one.throughput,
                r.throughput / one.throughput if one.throughput else 0.0,
                note,
            )
        )
    return out


def register(benchmark: Callable[[str], Callable[[Any], Any]], result_type: type) -> None:
    """Add the benchmarks to bench/run.py's registry (one run measures both rows)."""

    @benchmark("scale.workers")
    def scale_workers(scale: float, folder: Path) -> list[Any]:
        """Throughput with 2 and 4 worker processes vs 1, on PostgreSQL and Redis."""
        return rows(result_type, scale, folder)
