"""Picks the broker from the settings: in-process (stub), Redis or RabbitMQ.

Dramatiq binds actors to the global broker when they are declared, so this module must be
imported before ``workers.actors``; the actors module does that itself.

Every broker carries :class:`WorkerObservability`: in each ``automation worker`` process
(dramatiq's process manager) it applies ``log_format`` and, when ``metrics_port`` is set,
serves that process's metrics on the first free port from ``metrics_port`` on.

On Redis, ``AUTOMATION_BROKER_NAMESPACE`` (default ``dramatiq``, dramatiq's own) prefixes
every key of the queue: deployments, or benchmark runs, that share one Redis database keep
their queues apart with a namespace each.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker

QUEUE = "automation"
log = logging.getLogger("automation.workers")


class WorkerObservability(dramatiq.Middleware):
    """Logging format and a metrics endpoint for each worker process.

    ``after_process_boot`` is emitted only by dramatiq's worker processes (not by the
    in-process worker of ``automation run``, whose metrics the web app serves). The settings
    are read here, at process start, not at import, for the reason given below."""

    def __init__(self) -> None:
        self.server: Any = None

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        from automation import observability
        from automation.settings import load_settings

        try:
            settings = load_settings()
        except Exception as exc:  # noqa: BLE001 - the actor reports the same error on use
            log.warning("worker observability off: settings not loaded (%s)", type(exc).__name__)
            return
        observability.configure_logging(settings)
        try:
            self.server = observability.serve_worker_metrics(settings)
        except OSError as exc:
            log.warning("worker metrics not served (%s)", observability.describe_failure(exc))

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class EnqueueOnce:
    """``rt.enqueue`` on Redis: at most one message per task waiting in the queue.

    The tick hands out the oldest due tasks every ``tick_seconds`` without knowing which ones
    are already queued; with a backlog it sent the same ids again each tick (and again the ids
    workers had just enqueued themselves), so the queue filled with copies that each cost a
    worker a claim that finds the task taken. A marker key ``SET NX`` with a time to live now
    guards each send: a second send of the same task while the first message waits is
    dropped. The worker deletes the marker when it has run the task (claimed or not: the task
    is leased, done, or waiting for a later due time then, none of which the tick hands out
    now), so a task deferred, retried or made due again later is sent again. A message lost
    with its marker set (a worker killed with messages prefetched) waits for the marker to
    expire, ``ttl`` seconds (the lease), as a lost lease does; a Redis restart loses both.

    Markers live beside the queue's keys (the broker's namespace) and are named after the
    database (:func:`task_scope` of its URL): deployments sharing one Redis database have task
    ids of their own. Processes that name the same database by
    different URLs (another host name) do not see each other's markers; they only send
    copies, as before.
    """

    def __init__(
        self,
        client: Any,
        database_url: str,
        ttl: int,
        send: Callable[[int], object],
        namespace: str = "dramatiq",
    ):
        self.client, self.ttl, self.send = client, max(int(ttl), 1), send
        self.prefix = f"{namespace}:automation.queued:{task_scope(database_url)}"

    def key(self, task_id: int) -> str:
        return f"{self.prefix}:{task_id}"

    def __call__(self, task_id: int) -> object:
        key = self.key(task_id)
        if not self.client.set(key, b"1", nx=True, ex=self.ttl):
            return None  # a message for this task is waiting already
        try:
            return self.send(task_id)
        except BaseException:
            self.client.delete(key)
            raise

    def finished(self, task_id: int) -> None:
        """A message for this task was handled: the next send must go out again."""
        try:
            self.client.delete(self.key(task_id))
        except Exception as exc:  # noqa: BLE001 - the marker expires on its own
            log.warning("queued marker of task %d not cleared (%s)", task_id, exc)


def task_scope(database_url: str) -> str:
    """A short name for the tasks table a URL leads to: driver, host, port, database and the
    ``options`` parameter (a schema's search_path), not the user, password or other
    connection parameters (such as ``application_name``)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    options = url.query.get("options", "")
    name = f"{url.get_backend_name()}://{url.host or ''}:{url.port or ''}/{url.database or ''}"
    return hashlib.sha256(f"{name}?{options}".encode()).hexdigest()[:16]


def make_broker(url: str, namespace: str | None = None) -> dramatiq.Broker:
    if url.startswith(("redis://", "rediss://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url, namespace=namespace or redis_namespace())
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url)
    return StubBroker()


def redis_namespace() -> str:
    """The prefix of the queue's keys on Redis (read from the environment, as the URL is)."""
    return os.environ.get("AUTOMATION_BROKER_NAMESPACE", "") or "dramatiq"


def _configured_url() -> str:
    # Read the environment directly: loading the whole settings file here would make a bad
    # cadence file break `import workers`; the settings are checked when the runtime is built.
    return os.environ.get("AUTOMATION_BROKER_URL", "stub")


broker = make_broker(_configured_url())
broker.add_middleware(WorkerObservability())
dramatiq.set_broker(broker)
