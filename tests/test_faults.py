"""Fault tests: kill -9 the worker at random moments of a run; everything happens once.

A run of check-ins on PostgreSQL through a real broker (invites, agendas, follow-up prompts,
managers' replies, confirmations, reminders) while the `automation worker` process group is
killed with SIGKILL five times at seeded random moments and restarted (see tests/faults.py).
At the end every email is on disk exactly once, every series exactly once in each calendar,
every reply has exactly one record and one confirmation: 0 lost, 0 duplicates.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.conftest import RABBITMQ_URL, REDIS_URL, postgres_schema_url, require_service
from tests.faults import FaultConfig, FaultRun, fault_run, start_redis


@pytest.fixture
def pg_url():  # type: ignore[no-untyped-def]
    yield from postgres_schema_url()


@pytest.mark.parametrize(
    "broker_url",
    [
        pytest.param(REDIS_URL, marks=pytest.mark.redis, id="redis"),
        pytest.param(RABBITMQ_URL, marks=pytest.mark.rabbitmq, id="rabbitmq"),
    ],
)
def test_kill_9_the_worker_five_times_and_everything_happens_once(
    broker_url: str, pg_url: str, tmp_path: Path
):
    parsed = urlparse(broker_url)
    require_service(parsed.scheme, parsed.hostname or "localhost", parsed.port or 0)
    result = fault_run(pg_url, broker_url, tmp_path, FaultConfig(employees=20, managers=3))
    print(result.row())
    print(dict(result.retry_errors))
    assert result.problems == [], "\n".join([result.row(), *result.problems[:50]])
    assert result.bad == 0
    assert result.kills == 5 and result.worker_starts == 6
    # The run did what it is about: prompts went out and every one was answered.
    assert result.prompts >= 20 and result.replies == result.prompts == result.records
    assert result.confirmations == result.records
    assert result.emails_on_disk == result.emails_sent
    assert result.events_lost == result.events_duplicate == 0
    # A SIGKILL leaves no traceback; any in the workers' output is a real error.
    assert result.tracebacks == [], "\n\n".join(result.tracebacks)


@pytest.mark.redis
def test_redis_stopped_mid_run_loses_nothing(pg_url: str, tmp_path: Path):
    """Redis stopped without saving while the queue is full, ticks failing against it for a few
    seconds, then started again empty. Dramatiq keeps messages only in Redis, so every task
    id queued at that moment is gone from the broker; the task rows are not: they stay
    pending (or leased, and the lease runs out), the next tick finds them due and enqueues
    them again. Nothing is lost and nothing happens twice."""
    parsed = urlparse(REDIS_URL)
    if parsed.hostname not in ("localhost", "127.0.0.1"):
        pytest.skip("stops and restarts Redis: only a loopback Redis on this machine")
    require_service("redis", parsed.hostname, parsed.port or 6379)
    port = str(parsed.port or 6379)
    run = FaultRun(pg_url, REDIS_URL, tmp_path, FaultConfig(employees=12, managers=2, kills=0))
    try:
        run.setup()
        run.start_worker()
        run.tick()  # a queue full of due tasks (invites, agendas, prompts, escalations)
        time.sleep(1.0)
        run.redis_outage(down_seconds=4.0)
        run.drain()
        result = run.result()
    finally:
        start_redis(port)  # whatever happened above, Redis is up again for everyone else
        run.close()
    print(result.row(), f"broker messages lost {result.broker_messages_lost}")
    assert result.broker_messages_lost > 0  # the outage did drop queued messages
    assert result.ticks_failed >= 1
    assert result.problems == [], "\n".join([result.row(), *result.problems[:50]])
    assert result.bad == 0
    assert result.replies == result.prompts == result.records == result.confirmations > 0
    # The worker's consumer logs the lost connection (with its traceback) and reconnects;
    # any other traceback is a real error.
    for tb in result.tracebacks:
        assert "ConnectionError" in tb or "redis" in tb.lower(), tb
