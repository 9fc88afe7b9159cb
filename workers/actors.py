"""Thin actors: take an id, claim the row, call one service, done. All state is in the database."""

from __future__ import annotations

import dramatiq

from automation import observability, runtime
from automation.services import tasks
from workers.broker import QUEUE, EnqueueOnce, make_enqueue  # (must come before the actors)


@dramatiq.actor(
    queue_name=QUEUE,
    max_retries=10,
    min_backoff=1000,
    max_backoff=300_000,
    time_limit=10 * 60 * 1000,
)
def run_task(task_id: int) -> None:
    """Run one due task. Safe to receive twice: the lease decides who runs it."""
    rt = runtime.current()
    try:
        tasks.run_task(rt, task_id)
    finally:
        if isinstance(rt.enqueue, EnqueueOnce):
            rt.enqueue.finished(task_id)


def attach(rt: runtime.Runtime) -> runtime.Runtime:
    """Make tasks created while running reach the broker straight away, and apply the
    runtime's ``log_format`` (``json``: one JSON object per log line). A task already
    waiting in the queue is not sent again, and each organization's waiting tasks are capped
    at ``max_queued_per_organization`` so one organization's burst cannot fill the queue
    ahead of the others (:func:`workers.broker.make_enqueue`)."""
    rt.enqueue = make_enqueue(rt, run_task.send)
    observability.configure_logging(rt.settings)
    return rt


runtime.on_build.append(attach)
