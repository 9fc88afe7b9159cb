"""End to end through a real broker (Redis, RabbitMQ) and a real `automation worker` process.

The test plans check-ins in the recent past on PostgreSQL. Then `automation run --once`
processes play the tick (they enqueue due task ids on the broker) and a separate
`automation worker` process (dramatiq's own process manager) claims them, writes calendars,
sends mail and turns a reply into a record. The processes share nothing but the database and
the broker.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import os
import signal
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlparse

import pytest
from sqlalchemy import func, select, update

from automation.clock import SimulatedClock, SystemClock
from automation.db import transaction
from automation.models import ConversationRecord, OutboundMessage, Task, TaskState
from automation.people import import_people_file
from automation.runtime import build_runtime
from automation.services.loop import bootstrap
from automation.services.planning import plan
from automation.settings import PROJECT_ROOT, Settings
from tests.conftest import RABBITMQ_URL, REDIS_URL, postgres_schema_url, require_service

PEOPLE = """email,name,timezone,manager_email,hr_partner_email
lead@acme.test,Lee Lead,Europe/London,,hr@acme.test
hr@acme.test,Hana Hr,Europe/London,lead@acme.test,
dev@acme.test,Dev One,America/New_York,lead@acme.test,hr@acme.test
"""


def broker_for(url: str):  # type: ignore[no-untyped-def]
    if url.startswith("redis"):
        from dramatiq.brokers.redis import RedisBroker

        broker = RedisBroker(url=url)
        broker.client.flushdb()
        return broker
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=url)
    broker.declare_queue("automation")
    broker.flush("automation")
    return broker


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


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
def test_loop_through_a_real_broker_and_worker_process(
    broker_url: str, pg_url: str, tmp_path: Path
):
    parsed = urlparse(broker_url)
    require_service(parsed.scheme, parsed.hostname or "localhost", parsed.port or 0)
    broker_for(broker_url)  # a clean queue
    settings = Settings(
        data_dir=tmp_path,
        database_url=pg_url,
        broker_url=broker_url,
        organization="acme",
        secret_key="e2e-secret",
        config_dir=PROJECT_ROOT / "config",
        templates_dir=PROJECT_ROOT / "templates",
    )
    # Plan three weeks ago, so agendas and follow-ups are already due on the real clock.
    rt = build_runtime(settings, SimulatedClock(dt.datetime.now(dt.UTC) - dt.timedelta(days=21)))
    org = bootstrap(rt)
    people = tmp_path / "people.csv"
    people.write_text(PEOPLE)
    with transaction(rt.factory) as session:
        import_people_file(session, org, people, rt.now())
        plan(rt, session, org)
    rt.clock = SystemClock()

    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATION_")}
    env.update(
        {
            "AUTOMATION_DATABASE_URL": pg_url,
            "AUTOMATION_BROKER_URL": broker_url,
            "AUTOMATION_DATA_DIR": str(tmp_path),
            "AUTOMATION_ORGANIZATION": "acme",
            "AUTOMATION_SECRET_KEY": "e2e-secret",
        }
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "automation.cli", "worker", "--processes", "1", "--threads", "2"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def tick() -> bool:
        """One tick of the service as its own process: it enqueues what is due on the broker."""
        result = subprocess.run(
            [sys.executable, "-m", "automation.cli", "run", "--once"],
            env=env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr.decode()
        assert b"in-process worker" not in result.stderr  # the real broker, not the stub
        return False

    try:

        def pending_due() -> int:
            tick()
            with rt.factory() as session:
                return session.scalar(
                    select(func.count())
                    .select_from(Task)
                    .where(
                        Task.state.in_((TaskState.PENDING, TaskState.LEASED)),
                        Task.due_at <= dt.datetime.now(dt.UTC),
                    )
                )

        wait_for(lambda: pending_due() == 0, what="the worker to drain the due tasks")
        with rt.factory() as session:
            prompts = list(
                session.scalars(
                    select(OutboundMessage)
                    .where(OutboundMessage.kind == "followup")
                    .order_by(OutboundMessage.id)
                )
            )
            failed = session.scalar(
                select(func.count()).select_from(Task).where(Task.state == TaskState.FAILED)
            )
        assert failed == 0
        assert len(prompts) >= 2 and all(p.state == "sent" for p in prompts)
        assert (tmp_path / "calendars" / "dev@acme.test.ics").exists()

        original = email.message_from_bytes(prompts[0].raw, policy=email.policy.default)
        reply = EmailMessage()
        reply["From"] = "lead@acme.test"
        reply["To"] = original["Reply-To"]
        reply["Subject"] = "Re: " + original["Subject"]
        reply["Message-ID"] = "<e2e-reply@client.test>"
        reply.set_content("1. Went well.\nRating: 4\nAction: Dev to share the notes by Friday\n")
        rt.inbox.deliver(reply.as_bytes(), "e2e-reply")
        wait_for(lambda: tick() or _records(rt) == 1, what="the reply's record")
        wait_for(lambda: tick() or _sent(rt, "confirmation") == 1, what="the confirmation")
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        output = worker.communicate(timeout=30)[0].decode(errors="replace")
    assert "Traceback" not in output, output
    # Every email exactly once on disk: one file per Message-ID, none written twice. The
    # worker's child processes finish the message in hand after SIGTERM, so wait until the
    # last one is recorded before comparing.
    outbox_dir = tmp_path / "mail" / "outbox" / "new"

    def on_disk() -> list[str]:
        return [
            str(email.message_from_bytes(f.read_bytes())["Message-ID"])
            for f in outbox_dir.iterdir()
        ]

    def sent_ids() -> list[str]:
        with rt.factory() as session:
            return list(
                session.scalars(
                    select(OutboundMessage.message_id).where(OutboundMessage.state == "sent")
                )
            )

    # A send the SIGTERM interrupted keeps its lease, and one that hit a transient error
    # (a PostgreSQL deadlock with another worker, say) waits for its retry. Let both come due
    # and finish them here, as the next worker would: each finds its earlier attempt.
    from automation.services.loop import run_due

    with rt.factory() as session, session.begin():
        long_ago = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        session.execute(
            update(Task).where(Task.state == TaskState.LEASED).values(lease_until=long_ago)
        )
        session.execute(
            update(Task)
            .where(Task.kind == "send", Task.state == TaskState.PENDING)
            .values(due_at=long_ago)
        )
    run_due(rt)
    wait_for(lambda: sorted(on_disk()) == sorted(sent_ids()), 30, "every sent message on disk")
    assert len(on_disk()) == len(set(on_disk()))
    rt.engine.dispose()


def _records(rt) -> int:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return session.scalar(select(func.count()).select_from(ConversationRecord))


def _sent(rt, kind: str) -> int:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return session.scalar(
            select(func.count())
            .select_from(OutboundMessage)
            .where(OutboundMessage.kind == kind, OutboundMessage.state == "sent")
        )
