"""Tasks: creating due work idempotently, and running one task under a lease.

A task is identified by a key that says what it is for ("agenda:occurrence:42:employee"), so
creating it twice is a no-op. Running it is: claim (commit the lease), do the work and mark it
done in one transaction. If the process dies in between, the lease expires and another worker
runs it again; each handler is written so that a second run finds the first run's effects and
does nothing twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, make_transient_to_detached

from automation import observability
from automation.db import claim_task, dialect_insert, insert_new_id, transaction
from automation.errors import PermanentProviderError, QuotaExhausted
from automation.models import Task, TaskState
from automation.runtime import Runtime

log = logging.getLogger("automation.tasks")

Handler = Callable[[Runtime, Session, Task], str]
HANDLERS: dict[str, Handler] = {}


def handles(kind: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn

    return register


def create_task(
    session: Session,
    organization_id: int,
    kind: str,
    key: str,
    subject_id: int,
    due_at: dt.datetime,
    now: dt.datetime,
) -> Task:
    """Return the task with this key, creating it if it does not exist yet.

    One ``INSERT ... ON CONFLICT DO NOTHING`` (PostgreSQL and SQLite): a task another worker
    created first is simply not inserted, and then read. The new row goes into the session as
    it was written, without reading it back.
    """
    values = {
        "organization_id": organization_id,
        "kind": kind,
        "key": key,
        "subject_id": subject_id,
        "due_at": due_at,
        "state": TaskState.PENDING,
        "lease_until": None,
        "attempts": 0,
        "result": None,
        "last_error": None,
        "created_at": now,
        "updated_at": now,
    }
    new_id = insert_new_id(session, Task, values, ("organization_id", "key"))
    if new_id is None:  # it exists (earlier, or another worker just now)
        return session.scalars(
            select(Task).where(Task.organization_id == organization_id, Task.key == key)
        ).one()
    task = Task(id=new_id, **values)
    make_transient_to_detached(task)
    session.add(task)
    session.info.setdefault("new_tasks", []).append(task)
    return task


def create_tasks(
    session: Session,
    organization_id: int,
    kind: str,
    keyed: list[tuple[str, int]],
    due_at: dt.datetime,
    now: dt.datetime,
) -> dict[str, int]:
    """Many tasks of one kind at once, ``(key, subject_id)`` each: one multi-row INSERT ...
    ON CONFLICT DO NOTHING, then one SELECT for the keys that existed. Returns key -> task id.
    The rows are not loaded into the session (the caller enqueues the ids it needs)."""
    if not keyed:
        return {}
    rows = [
        {
            "organization_id": organization_id,
            "kind": kind,
            "key": key,
            "subject_id": subject_id,
            "due_at": due_at,
            "state": TaskState.PENDING,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for key, subject_id in dict(keyed).items()
    ]
    ids: dict[str, int] = dict(
        session.execute(
            dialect_insert(session, Task)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["organization_id", "key"])
            .returning(Task.key, Task.id)
        ).all()
    )
    missing = [row["key"] for row in rows if row["key"] not in ids]
    if missing:
        ids.update(
            session.execute(
                select(Task.key, Task.id).where(
                    Task.organization_id == organization_id, Task.key.in_(missing)
                )
            ).all()
        )
    return ids


class Deferred(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a handler whose work may not happen yet (a sending limit reached): the task
    goes back to pending until ``until``, without counting as a failed attempt."""

    def __init__(self, until: dt.datetime, reason: str):
        super().__init__(reason)
        self.until, self.reason = until, reason


def backoff(attempts: int) -> dt.timedelta:
    """Jittered exponential backoff: about 30 s, 1 min, 2 min … capped at one hour."""
    base = min(30 * 2 ** max(attempts - 1, 0), 3600)
    return dt.timedelta(seconds=base * random.uniform(0.5, 1.0))


def run_task(rt: Runtime, task_id: int) -> str:
    """Claim the task, run its handler and record the outcome. Returns a short result.

    Every call writes one line on the ``automation.jobs`` logger and counts the run in the
    metrics (:func:`automation.observability.job_finished`): outcome ``done``, ``retry``,
    ``failed``, ``deferred``, ``not-claimed``, or ``error`` when the bookkeeping itself failed
    (the database went away): then the exception goes up, and the lease makes it run again.
    """
    started = time.perf_counter()
    run = _Run()
    try:
        result, new_tasks = _run(rt, task_id, run)
    except Exception as exc:
        run.outcome, run.error = "error", exc
        raise
    finally:
        observability.job_finished(
            task_id=task_id,
            kind=run.kind,
            organization_id=run.organization_id,
            attempt=run.attempt,
            outcome=run.outcome,
            seconds=time.perf_counter() - started,
            lag_seconds=run.lag_seconds,
            error=run.error,
            details=run.details,
            settings=rt.settings,
        )
    # The new rows carry their organization: an enqueue that caps organizations is told it
    # (send_for) rather than looking each one up.
    send_for = getattr(rt.enqueue, "send_for", None)
    for new in new_tasks:
        if new.due_at <= rt.now():
            if send_for is None:
                rt.enqueue(new.id)
            else:
                send_for(new.id, new.organization_id)
    return result


@dataclass
class _Run:
    """What one run learnt, for its log line and metrics."""

    kind: str | None = None
    organization_id: int | None = None
    attempt: int | None = None
    lag_seconds: float | None = None
    outcome: str = "error"
    error: BaseException | None = None
    details: dict[str, str] = field(default_factory=dict)


def _run(rt: Runtime, task_id: int, run: _Run) -> tuple[str, list[Task]]:
    now = rt.now()
    with transaction(rt.factory) as session:
        task = claim_task(session, task_id, now, rt.settings.lease_seconds)
        if task is None:
            run.kind = session.scalar(select(Task.kind).where(Task.id == task_id))
            run.outcome = "not-claimed"
            return "not-claimed", []
        kind, attempts = task.kind, task.attempts
        run.kind, run.organization_id, run.attempt = kind, task.organization_id, attempts
        run.lag_seconds = (now - task.due_at).total_seconds()
    claimed = task
    new_tasks: list[Task] = []
    # The handler works for the task's organization: its runtime and session are scoped to
    # it (automation.tenancy), so it cannot read or change another organization's rows.
    # Built inside the try: an organization whose configuration does not load (a bad
    # settings.toml, a secret that no key decrypts) fails its own task, with the reason in
    # last_error and a retry, and never the caller's loop over everyone's tasks.
    try:
        tenant = rt.tenant(claimed.organization_id)
        with transaction(tenant.factory) as session:
            # The row as the claim returned it (nobody else changes a leased task): no SELECT.
            task = session.merge(claimed, load=False)
            result = HANDLERS[kind](tenant, session, task)
            task.state = TaskState.DONE
            task.result = result[:200]
            task.lease_until = None
            task.updated_at = rt.now()
            new_tasks = session.info.pop("new_tasks", [])
    except (Deferred, QuotaExhausted) as waiting:
        deferred = (
            waiting
            if isinstance(waiting, Deferred)
            else Deferred(
                rt.now() + dt.timedelta(seconds=waiting.retry_after_seconds), str(waiting)
            )
        )
        with transaction(rt.factory) as session:
            task = session.get(Task, task_id)
            assert task is not None
            task.state, task.due_at = TaskState.PENDING, deferred.until
            task.attempts = max(task.attempts - 1, 0)  # waiting is not failing
            task.lease_until, task.result = None, f"deferred: {deferred.reason}"[:200]
            task.updated_at = rt.now()
        run.outcome = "deferred"
        run.details = {"deferred_until": deferred.until.isoformat(), "reason": deferred.reason}
        return "deferred", []
    except Exception as exc:
        permanent = isinstance(exc, PermanentProviderError) or attempts >= rt.settings.max_attempts
        with transaction(rt.factory) as session:
            task = session.get(Task, task_id)
            assert task is not None
            task.state = TaskState.FAILED if permanent else TaskState.PENDING
            task.due_at = rt.now() + backoff(attempts)
            task.lease_until = None
            # Scrubbed like the log line: `jobs failed` shows it, and it must not leak either.
            task.last_error = observability.scrub(
                f"{type(exc).__name__}: {exc}", observability.known_secrets(rt.settings)
            )[:2000]
            task.updated_at = rt.now()
        run.outcome, run.error = ("failed" if permanent else "retry"), exc
        return run.outcome, []
    run.outcome = "done"
    return result, new_tasks
