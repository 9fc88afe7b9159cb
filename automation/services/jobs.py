"""The work queue seen from outside: counts by state, the dead letters, and sending them back.

A task that fails ``max_attempts`` times, or fails permanently (a provider refused the data),
stays in the table as ``failed`` with its last error: that is the dead-letter queue. Nothing
is dropped; ``automation jobs failed`` lists them and ``automation jobs retry`` makes them due
again, once the cause is fixed. Retrying is audited.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from automation import audit
from automation.models import Task, TaskState


@dataclass(frozen=True)
class QueueCount:
    kind: str
    state: str
    count: int
    oldest_due: dt.datetime | None


def queue_counts(session: Session, organization_id: int) -> list[QueueCount]:
    """Tasks by kind and state (done tasks excluded: they only grow)."""
    rows = session.execute(
        select(Task.kind, Task.state, func.count(), func.min(Task.due_at))
        .where(Task.organization_id == organization_id, Task.state != TaskState.DONE)
        .group_by(Task.kind, Task.state)
        .order_by(Task.kind, Task.state)
    )
    return [QueueCount(kind, state, count, oldest) for kind, state, count, oldest in rows]


@dataclass(frozen=True)
class FailedJob:
    id: int
    kind: str
    key: str
    attempts: int
    failed_at: dt.datetime
    error: str


def failed_jobs(
    session: Session, organization_id: int, kind: str | None = None, limit: int = 200
) -> list[FailedJob]:
    query = (
        select(Task)
        .where(Task.organization_id == organization_id, Task.state == TaskState.FAILED)
        .order_by(Task.updated_at.desc(), Task.id.desc())
        .limit(limit)
    )
    if kind:
        query = query.where(Task.kind == kind)
    return [
        FailedJob(t.id, t.kind, t.key, t.attempts, t.updated_at, t.last_error or "")
        for t in session.scalars(query)
    ]


class NotFailed(LookupError):
    pass


def retry_jobs(
    session: Session,
    organization_id: int,
    ids: list[int] | None,
    *,
    kind: str | None = None,
    by: str,
    now: dt.datetime,
) -> list[int]:
    """Make failed tasks due now with a fresh attempt count; ``ids=None`` means every failed
    task (of ``kind``, if given). Returns the ids made due; asking for a task that is not
    failed raises :class:`NotFailed` naming it, and changes nothing."""
    query = select(Task).where(
        Task.organization_id == organization_id, Task.state == TaskState.FAILED
    )
    if ids is not None:
        query = query.where(Task.id.in_(ids))
    if kind:
        query = query.where(Task.kind == kind)
    tasks = list(session.scalars(query.with_for_update()))
    if ids is not None:
        missing = sorted(set(ids) - {t.id for t in tasks})
        if missing:
            raise NotFailed(
                f"job(s) {', '.join(map(str, missing))} are not failed jobs of this organization"
            )
    for task in tasks:
        task.state, task.due_at, task.attempts = TaskState.PENDING, now, 0
        task.lease_until, task.updated_at = None, now
    if tasks:
        audit.record(
            session,
            organization_id,
            actor=by,
            action="jobs.retried",
            subject_kind="organization",
            subject_id=organization_id,
            at=now,
            data={"tasks": [t.id for t in tasks][:1000], "count": len(tasks)},
        )
    return [t.id for t in tasks]
