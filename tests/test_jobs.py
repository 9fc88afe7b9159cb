"""The work queue from outside (status, dead letters, retry) and the cross-process lock the
tick's singleton work runs under (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from automation.cli import main
from automation.db import exclusive, make_engine, transaction
from automation.models import AuditEntry, Task, TaskState
from automation.services import tasks
from automation.services.tasks import create_task
from tests.conftest import start_organization
from tests.test_export import _cli_env


@pytest.fixture
def org(rt, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path)


def test_a_named_lock_is_held_by_one_holder_at_a_time(rt, settings):
    other = make_engine(settings.database)  # another process's engine, on its own connections
    try:
        with exclusive(rt.engine, "poll_inbox:1") as first:
            assert first is True
            with exclusive(other, "poll_inbox:1") as second:
                assert second is False  # told at once, not kept waiting
            with exclusive(other, "poll_inbox:2") as unrelated:
                assert unrelated is True
            seen: list[bool] = []

            def from_a_thread() -> None:
                with exclusive(other, "poll_inbox:1") as got:
                    seen.append(got)

            thread = threading.Thread(target=from_a_thread)
            thread.start()
            thread.join()
            assert seen == [False]
        with exclusive(other, "poll_inbox:1") as after:
            assert after is True  # released at the end of the block
    finally:
        other.dispose()


def _failing(rt, session, task):  # type: ignore[no-untyped-def]
    raise RuntimeError("the provider said no")


def test_failed_jobs_are_kept_listed_and_retried(rt, org, clock, settings, monkeypatch, capsys):
    monkeypatch.setitem(tasks.HANDLERS, "test_fail", _failing)
    with transaction(rt.factory) as session:
        task = create_task(session, org, "test_fail", "test_fail:1", 1, rt.now(), rt.now())
        other = create_task(session, org, "test_fail", "test_fail:2", 2, rt.now(), rt.now())
    for _ in range(settings.max_attempts + 1):
        for task_id in (task.id, other.id):
            with transaction(rt.factory) as session:  # due now, whatever the backoff said
                row = session.get(Task, task_id)
                if row.state == TaskState.PENDING:
                    row.due_at = rt.now()
            tasks.run_task(rt, task_id)
    with rt.factory() as session:
        states = {t.id: (t.state, t.attempts) for t in session.scalars(select(Task))}
    assert states[task.id] == (TaskState.FAILED, settings.max_attempts)

    _cli_env(monkeypatch, settings)
    assert main(["jobs", "failed", "--json"]) == 0
    failed = json.loads(capsys.readouterr().out)
    assert {f["id"] for f in failed} == {task.id, other.id}
    assert failed[0]["error"] == "RuntimeError: the provider said no"
    assert main(["jobs", "status", "--json"]) == 0
    counts = {(c["kind"], c["state"]): c["count"] for c in json.loads(capsys.readouterr().out)}
    assert counts[("test_fail", "failed")] == 2

    assert main(["jobs", "retry"]) == 64
    pending = [t.id for t in _tasks(rt) if t.state == TaskState.PENDING][:1]
    if pending:  # a task that is not failed is refused, and nothing changes
        assert main(["jobs", "retry", str(task.id), str(pending[0])]) == 65
        assert _state(rt, task.id) == TaskState.FAILED
    assert main(["jobs", "retry", str(task.id)]) == 0
    with rt.factory() as session:
        row = session.get(Task, task.id)
        assert (row.state, row.attempts) == (TaskState.PENDING, 0)
        assert row.due_at <= dt.datetime.now(dt.UTC)  # the command runs on the real clock
        (entry,) = session.scalars(select(AuditEntry).where(AuditEntry.action == "jobs.retried"))
        assert entry.data == {"tasks": [task.id], "count": 1}
    assert main(["jobs", "retry", "--all", "--kind", "test_fail"]) == 0
    assert _state(rt, other.id) == TaskState.PENDING


def _tasks(rt) -> list[Task]:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return list(session.scalars(select(Task)))


def _state(rt, task_id: int) -> str:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return session.get(Task, task_id).state


def test_an_exhausted_quota_parks_the_job_without_spending_an_attempt(rt, org, monkeypatch):
    """403 dailyLimitExceeded is hours away: the job waits out the park time as often as it
    takes, and never reaches the failed jobs however long the outage lasts."""
    from automation.adapters.http import QUOTA_PARK_SECONDS, Failure, ProviderCallFailed, Retry
    from automation.errors import QuotaExhausted

    def over_quota(rt, session, task):  # type: ignore[no-untyped-def]
        def call() -> None:
            raise ProviderCallFailed(Failure(403, "dailyLimitExceeded"))

        Retry(sleep=lambda s: None).run(call, "Gmail send")
        return "sent"

    with pytest.raises(QuotaExhausted):
        over_quota(rt, None, None)
    monkeypatch.setitem(tasks.HANDLERS, "test_quota", over_quota)
    with transaction(rt.factory) as session:
        task = create_task(session, org, "test_quota", "test_quota:1", 1, rt.now(), rt.now())
    for _ in range(rt.settings.max_attempts + 2):
        assert tasks.run_task(rt, task.id) == "deferred"
        with transaction(rt.factory) as session:
            row = session.get(Task, task.id)
            assert row.state == TaskState.PENDING and row.attempts == 0
            assert row.due_at == rt.now() + dt.timedelta(seconds=QUOTA_PARK_SECONDS)
            assert "quota exhausted" in row.result
            row.due_at = rt.now()  # the park time passes


def test_one_poller_reads_an_inbox_at_a_time(rt, org, settings):
    """While another process polls (holds the inbox lock), a poll returns at once, leaving
    the message for the holder; once it is done, the next poll takes the message in."""
    from automation.models import InboundMessage
    from automation.services.inbound import inbox_lock_name, poll_inbox

    raw = b"From: stranger@else.test\r\nSubject: hi\r\nMessage-ID: <p1@else.test>\r\n\r\nhi\r\n"
    rt.inbox.deliver(raw, "p1")
    other = make_engine(settings.database)
    try:
        with exclusive(other, inbox_lock_name(rt)) as held:
            assert held
            assert poll_inbox(rt) == 0
        assert poll_inbox(rt) == 1
    finally:
        other.dispose()
    with rt.factory() as session:
        assert [m.raw for m in session.scalars(select(InboundMessage))] == [raw]
