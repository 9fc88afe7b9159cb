"""The periodic tick and start-up: the only code that decides what is due.

The tick shares each batch between organizations (:func:`automation.db.due_tasks_fairly`,
round-robin) and sends it through the runtime's enqueue, which holds back an organization's
tasks once it has ``max_queued_per_organization`` waiting (``workers/broker.py``): one
organization's burst then neither fills the tick's batch nor the queue in front of the
others. A task held back, or left out of a batch, stays due in the database: the next tick
picks it again, in its turn. Retrying and deferred tasks are not due until their backoff
ends, so a provider outage's retries take no share until then.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from automation import (
    observability,
    services,  # noqa: F401  (registers the task handlers)
)
from automation.db import due_task_ids, due_tasks_fairly, migrate, transaction
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


# What the runtime's enqueue answers when an organization is at its cap (workers.broker).
HELD_BACK = "held"


@dataclass(frozen=True)
class TickResult:
    received: int
    enqueued: int  # due tasks handed to the enqueue, held back or not
    held_back: int = 0  # of those, not sent: their organization had its cap waiting


def tick(rt: Runtime, limit: int = 500) -> TickResult:
    """Take in new mail, then hand up to ``limit`` due tasks to the workers, shared fairly
    between organizations. Cheap when nothing is due."""
    received = poll_inbox(rt)
    schedule_calendar_work(rt)
    observability.ORGANIZATIONS.watch(rt.settings.database, rt.factory)
    with transaction(rt.factory) as session:
        picked = due_tasks_fairly(session, rt.now(), limit)
    held_back = sum(
        enqueue_with_organization(rt, task_id, org) == HELD_BACK for task_id, org in picked
    )
    return TickResult(received, len(picked), held_back)


def enqueue_with_organization(rt: Runtime, task_id: int, organization_id: int) -> object:
    """Send a task whose organization is known: through the enqueue's ``admit`` when it has
    one (it counts the task against its organization's cap without looking the
    organization up), else as any ``rt.enqueue``. Returns what ``admit`` answered."""
    admit = getattr(rt.enqueue, "admit", None)
    if admit is None:
        return rt.enqueue(task_id)
    return admit(task_id, organization_id)


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
    observability.ORGANIZATIONS.watch(rt.settings.database, rt.factory)
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
