"""The periodic tick and start-up: the only code that decides what is due."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from automation import services  # noqa: F401  (registers the task handlers)
from automation.db import due_task_ids, migrate, transaction
from automation.people import ensure_organization
from automation.runtime import Runtime
from automation.services.calendars import schedule_calendar_work
from automation.services.inbound import poll_inbox
from automation.services.tasks import create_task


def bootstrap(rt: Runtime) -> int:
    """Migrate the schema, make sure the organization exists and planning is scheduled."""
    migrate(rt.engine)
    now = rt.now()
    with transaction(rt.factory) as session:
        org = ensure_organization(
            session, rt.settings.organization, rt.settings.organization_name, now
        )
        today = now.date().isoformat()
        create_task(session, org.id, "plan", f"plan:{today}", org.id, now, now)
        create_task(session, org.id, "retention", f"retention:{today}", org.id, now, now)
        return org.id


@dataclass(frozen=True)
class TickResult:
    received: int
    enqueued: int


def tick(rt: Runtime, limit: int = 500) -> TickResult:
    """Take in new mail, then hand every due task to the workers. Cheap when nothing is due."""
    received = poll_inbox(rt)
    schedule_calendar_work(rt)
    with transaction(rt.factory) as session:
        ids = due_task_ids(session, rt.now(), limit)
    for task_id in ids:
        rt.enqueue(task_id)
    return TickResult(received, len(ids))


def next_due(rt: Runtime) -> dt.datetime | None:
    """When the next pending task falls due (the demo's clock jumps there)."""
    from sqlalchemy import func, select

    from automation.models import Task, TaskState

    with rt.factory() as session:
        return session.scalar(select(func.min(Task.due_at)).where(Task.state == TaskState.PENDING))


def run_due(rt: Runtime, limit: int = 10_000) -> int:
    """Run every due task in this process, without a broker, until nothing is due.

    The twin of tick + workers for tests, one-shot maintenance and `automation run --once`.
    Tasks created while running that are already due run in the same call.
    """
    from automation.services.tasks import run_task

    ran = 0
    previous = rt.enqueue
    rt.enqueue = lambda task_id: None  # due tasks are found by the loop below instead
    try:
        while ran < limit:
            poll_inbox(rt)
            schedule_calendar_work(rt)
            with transaction(rt.factory) as session:
                ids = due_task_ids(session, rt.now(), 500)
            if not ids:
                break
            for task_id in ids:
                run_task(rt, task_id)
                ran += 1
    finally:
        rt.enqueue = previous
    return ran
