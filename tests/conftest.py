"""Shared fixtures: real databases, real brokers, a runtime on a simulated clock.

Tests that need a service (PostgreSQL, Redis, RabbitMQ) fail when ``CI=true`` and the service
is unreachable, and skip with the reason otherwise.

The suite runs in parallel (pytest-xdist, ``-n`` in pyproject.toml; ``-n 0`` runs it in one
process). On two cores it is bound by the CPU. What keeps the processes apart:

- most tests are handed out one at a time, to whichever process is free next;
- the files that use RabbitMQ are one unit of work and so run on one process, one test after
  the other: there is one queue on one node, and ``tests/faults.py`` stops the node's
  application for its outage runs (run beside the others, it refused their connections);
- a file whose module fixture is expensive (:data:`WHOLE_FILES`) is one unit too, so the
  fixture is built once, not once per process;
- each process has a Redis database of its own (:data:`REDIS_URL`), because the broker tests
  empty theirs; it is put in the environment so the ``bench/`` runs a test starts use it too;
- PostgreSQL tests each get a schema of their own already (:func:`postgres_schema_url`).

The units are made by :func:`pytest_xdist_make_scheduler` from the test ids, not with
``xdist_group`` marks: pytest-xdist 3.8 applies those by rewriting ``item._nodeid``, which
pytest 9.2 no longer reads, so under ``--dist loadgroup`` every test ran wherever it fell.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from automation.clock import SimulatedClock
from automation.settings import PROJECT_ROOT, Settings

POSTGRES_URL = os.environ.get(
    "AUTOMATION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/test"
)
# Redis databases for the xdist processes gw0, gw1, ...: 11 is bench/scale.py's own.
_REDIS_DATABASES = (15, 14, 13, 12, 10, 9, 8, 7, 6, 5, 4, 3)
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
if "AUTOMATION_TEST_REDIS_URL" not in os.environ:
    _database = _REDIS_DATABASES[int(_WORKER) % len(_REDIS_DATABASES)] if _WORKER.isdigit() else 15
    os.environ["AUTOMATION_TEST_REDIS_URL"] = f"redis://localhost:6379/{_database}"
REDIS_URL = os.environ["AUTOMATION_TEST_REDIS_URL"]
# bench/scale.py (and tenants, which builds on it) empties its queue at the start: the runs
# that tests start use the process's database, not the shared 11 that two of them would clear.
os.environ.setdefault("AUTOMATION_BENCH_SCALE_BROKER_URL", REDIS_URL)
RABBITMQ_URL = os.environ.get("AUTOMATION_TEST_RABBITMQ_URL", "amqp://guest:guest@localhost:5672/")
START = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)  # a Monday, a week before US DST


# Files that share one broker node; they run on one process, one after the other.
RABBITMQ_FILES = {"test_brokers.py", "test_faults.py", "test_observability.py"}
# Files whose module-scoped fixtures take long to build (a demo, a filled world of two
# organizations): each runs whole on one process.
WHOLE_FILES = {"test_demo_clients.py", "test_inbound_fuzz.py", "test_isolation.py"}
# The slowest files, handed out first so that no process starts one near the end.
SLOW_FILES = (
    "test_bench.py",
    "test_faults.py",
    "test_isolation.py",
    "test_demo_clients.py",
    "test_cli.py",
    "test_loop.py",
    "test_calendar_sync.py",
    "test_console_browser.py",
    "test_inbound_fuzz.py",
    "test_cli_org.py",
)


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: ``rabbitmq``, its file for :data:`WHOLE_FILES`,
    or itself."""
    name = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    if name in RABBITMQ_FILES:
        return "rabbitmq"
    return name if name in WHOLE_FILES else nodeid


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Hand out :func:`work_unit` units, each whole to one process, in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnits(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slowest files first."""
    first = {name: rank for rank, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: order kept


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or, in CI, fail) the calling test when the service does not answer."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        message = f"{name} is not reachable on {host}:{port} ({exc})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true requires it: start the service (see .ci/run)")
    pytest.skip(f"{message}; start it to run this test")


def postgres_schema_url() -> Iterator[str]:
    """A fresh schema in the `test` database, dropped afterwards; yields a URL bound to it."""
    url = make_url(POSTGRES_URL)
    require_service("PostgreSQL", url.host or "localhost", url.port or 5432)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that uses this runs twice: on a SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield from postgres_schema_url()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        organization="acme",
        organization_name="Acme",
        secret_key="test-secret",
        config_dir=PROJECT_ROOT / "config",
        templates_dir=PROJECT_ROOT / "templates",
    )


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(START)


@pytest.fixture
def rt(settings: Settings, clock: SimulatedClock):  # type: ignore[no-untyped-def]
    """A runtime on the test database whose tasks run synchronously when enqueued."""
    from automation.runtime import build_runtime

    runtime = build_runtime(settings, clock)
    yield runtime
    runtime.engine.dispose()


# The small organisation most loop tests use: a manager in New York with reports in London,
# Berlin and Tokyo (three zones, both 2026 DST changes inside the first weeks).
ACME_PEOPLE = """email,name,timezone,manager_email,hr_partner_email
boss@acme.test,Bea Boss,America/New_York,,hr@acme.test
hr@acme.test,Hal Hr,Europe/London,boss@acme.test,hr@acme.test
ana@acme.test,Ana Souza,Europe/Berlin,boss@acme.test,hr@acme.test
kai@acme.test,Kai Tanaka,Asia/Tokyo,boss@acme.test,hr@acme.test
"""


def start_organization(rt, folder: Path, people: str = ACME_PEOPLE) -> int:  # type: ignore[no-untyped-def]
    """Migrate, import ``people`` (CSV text) and run everything that falls due: the series
    are planned and invited. Returns the organization's id."""
    from automation.db import transaction
    from automation.people import import_people_file
    from automation.services.loop import bootstrap, run_due

    org_id = bootstrap(rt)
    csv = folder / "people.csv"
    csv.write_text(people)
    with transaction(rt.factory) as session:
        import_people_file(session, org_id, csv, rt.now())
    run_due(rt)
    return org_id


def advance_until(  # type: ignore[no-untyped-def]
    rt, clock: SimulatedClock, moment: dt.datetime, step: dt.timedelta = dt.timedelta(hours=1)
) -> None:
    """Move the clock in steps (an hour unless ``step``) to ``moment``, running due work at
    each, as the tick would.

    Steps at which nothing can happen are skipped: where only a task makes anything happen
    (one organization, the embedded calendar and inbox: no provider polled on a timer), the
    clock goes from the first step straight to the first step at or after the next task's
    due time (or lease expiry). The steps skipped would have found nothing due and an empty
    inbox (what was delivered before the call is taken in at the first step), so what runs,
    and at which clock time, is what every step gives; most of a loop test's weeks are such
    steps."""
    from automation.adapters.local import MaildirInbox
    from automation.runtime import NoInbox
    from automation.services.loop import organizations, run_due

    quiet = (
        rt.calendar.name in ("local", "imip")
        and isinstance(rt.inbox, MaildirInbox | NoInbox)
        and len(organizations(rt)) <= 1
    )
    first = True
    while clock.now() < moment:
        advance = min(step, moment - clock.now())
        if quiet and not first:
            wake = _next_wakeup(rt)
            if wake is None or wake > clock.now() + step:
                steps = -(-(min(wake or moment, moment) - clock.now()) // step)  # ceiling
                advance = min(steps * step, moment - clock.now())
        clock.advance(advance)
        run_due(rt)
        first = False


def _next_wakeup(rt) -> dt.datetime | None:  # type: ignore[no-untyped-def]
    """When a task next falls due (:func:`automation.services.loop.next_due`, the demo's) or a
    lease runs out: what the tick would next find."""
    from sqlalchemy import func, select

    from automation.models import Task, TaskState
    from automation.services.loop import next_due

    with rt.factory() as session:
        lease = session.scalar(
            select(func.min(Task.lease_until)).where(Task.state == TaskState.LEASED)
        )
    return min((t for t in (next_due(rt), lease) if t is not None), default=None)
