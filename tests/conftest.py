"""Shared fixtures: real databases, real brokers, a runtime on a simulated clock.

Tests that need a service (PostgreSQL, Redis, RabbitMQ) fail when ``CI=true`` and the service
is unreachable, and skip with the reason otherwise.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from automation.clock import SimulatedClock
from automation.settings import PROJECT_ROOT, Settings

POSTGRES_URL = os.environ.get(
    "AUTOMATION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/test"
)
REDIS_URL = os.environ.get("AUTOMATION_TEST_REDIS_URL", "redis://localhost:6379/15")
RABBITMQ_URL = os.environ.get("AUTOMATION_TEST_RABBITMQ_URL", "amqp://guest:guest@localhost:5672/")
START = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)  # a Monday, a week before US DST


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
