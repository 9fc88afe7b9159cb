"""Picks the broker from the settings: in-process (stub), Redis or RabbitMQ.

Dramatiq binds actors to the global broker when they are declared, so this module must be
imported before ``workers.actors``; the actors module does that itself.

Every broker carries :class:`WorkerObservability`: in each ``automation worker`` process
(dramatiq's process manager) it applies ``log_format`` and, when ``metrics_port`` is set,
serves that process's metrics on the first free port from ``metrics_port`` on.

On Redis, ``AUTOMATION_BROKER_NAMESPACE`` (default ``dramatiq``, dramatiq's own) prefixes
every key of the queue: deployments, or benchmark runs, that share one Redis database keep
their queues apart with a namespace each.

Fair sharing between organizations. One queue serves every organization, first in, first out,
so whoever puts the most in it decides what the workers do next: one organization's burst (a
5,000-person import planned at once, a provider outage's backlog) would make every other
organization wait until it has gone through. Two measures keep the queue shared:

- the tick picks due tasks round-robin across organizations
  (:func:`automation.db.due_tasks_fairly`), so every organization's due work is in each
  tick's batch, near its front;
- a cap on each organization's messages *waiting* in the queue (``max_queued_per_organization``,
  :func:`make_enqueue`). A task over the cap is not sent: it stays due in the database, where
  the next tick finds it and admits it in its fair turn. The cap applies to every send, the
  tick's and the direct ones (``rt.enqueue`` after a webhook, or for the tasks a handler made
  due), because the direct ones are where a burst comes from (planning 5,000 people enqueues
  their invitations at once). Waiting, not running, is what is capped: the workers run
  whatever is at the front, and with the cap the front always has room for the others.

Where the count lives depends on the broker, because it must be seen by every process that
sends or takes a message:

- **Redis**: in Redis, next to :class:`EnqueueOnce`'s markers: a sorted set per organization
  of the task ids waiting (scored by when they were sent), changed together with the marker
  by one Lua script. A set rather than a counter, because a counter that missed a decrement
  (a worker killed with messages prefetched, a message lost in a Redis restart) would stay
  too high for as long as the organization keeps sending; each member of the set expires on
  its own, with the marker (the lease), so a lost message holds its place only that long.
- **stub** (in-process): a count in this process, where the worker also runs, so it is exact.
- **RabbitMQ**: no process can count what is waiting (the queue cannot be read by
  organization, and the workers that take messages are other processes). A process only
  limits the tasks it sends *directly* for one organization to the cap per ``tick_seconds``;
  the rest wait for the tick, whose sends are not capped there (its round-robin is the
  fairness). Use Redis where bursts must not delay other organizations.

A worker "takes" a message in :class:`QueueAccounting` (a dramatiq middleware, before the
actor runs), which gives the organization's place back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker

QUEUE = "automation"
log = logging.getLogger("automation.workers")

# What sending a task came to (``admit``); the tick counts the held-back ones.
SENT = "sent"
ALREADY_WAITING = "waiting"  # a message for the task waits in the queue already
HELD_BACK = "held"  # its organization has max_queued_per_organization waiting: not sent


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

    With ``max_queued_per_organization`` (and ``organization_of``, which finds a task's
    organization for a direct send) it also caps each organization's messages waiting, as
    the module's docstring explains: the marker then holds the task's organization, and
    a sorted set per organization (:meth:`waiting_key`) the task ids waiting, changed together
    with the marker by one Lua script so that concurrent senders cannot pass the cap. Without
    it (the default) it only sends each task once, as before.
    """

    # KEYS: the task's marker, its organization's waiting set. ARGV: time to live, cap, task
    # id, organization id, now (seconds). 1: sent; 0: a message waits already; -1: at the cap.
    ADMIT = """
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        local ttl = tonumber(ARGV[1])
        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[5]) - ttl)
        if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return -1 end
        redis.call('SET', KEYS[1], ARGV[4], 'EX', ttl)
        redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
        redis.call('EXPIRE', KEYS[2], ttl)
        return 1
    """
    # KEYS: the task's marker. ARGV: the waiting sets' prefix, task id, 1 to delete the marker.
    # The marker names the organization whose set the task leaves.
    RELEASE = """
        local organization = redis.call('GET', KEYS[1])
        if organization and organization ~= '' then
            redis.call('ZREM', ARGV[1] .. organization, ARGV[2])
        end
        if ARGV[3] == '1' then redis.call('DEL', KEYS[1]) end
        return 1
    """

    def __init__(
        self,
        client: Any,
        database_url: str,
        ttl: int,
        send: Callable[[int], object],
        namespace: str = "dramatiq",
        *,
        max_queued_per_organization: int | None = None,
        organization_of: Callable[[int], int | None] | None = None,
    ):
        self.client, self.ttl, self.send = client, max(int(ttl), 1), send
        self.database_url = database_url
        scope = task_scope(database_url)
        self.prefix = f"{namespace}:automation.queued:{scope}"
        self.waiting_prefix = f"{namespace}:automation.waiting:{scope}:"
        self.cap = max_queued_per_organization
        self.organization_of = organization_of
        if self.cap is not None:
            self._admit = client.register_script(self.ADMIT)
            self._release = client.register_script(self.RELEASE)

    def key(self, task_id: int) -> str:
        return f"{self.prefix}:{task_id}"

    def waiting_key(self, organization_id: int) -> str:
        return f"{self.waiting_prefix}{organization_id}"

    def __call__(self, task_id: int) -> object:
        """A direct send (``rt.enqueue``): the message, or None when none was sent."""
        counted = self.cap is not None and self.organization_of is not None
        return self.send_for(task_id, self.organization_of(task_id) if counted else None)

    def send_for(self, task_id: int, organization_id: int | None) -> object:
        """A direct send whose organization the caller knows (the tasks a task made): as a
        call, without the look-up, which cost a worker a query for every task it made."""
        if self.cap is None:
            return self._send_once(task_id, b"1")[1]
        return self._send(task_id, organization_id)[1]

    def admit(self, task_id: int, organization_id: int | None) -> str:
        """Send a task whose organization the caller knows (the tick): :data:`SENT`,
        :data:`ALREADY_WAITING` or :data:`HELD_BACK`."""
        if self.cap is None:
            return self._send_once(task_id, b"1")[0]
        return self._send(task_id, organization_id)[0]

    def _send_once(self, task_id: int, marker: bytes) -> tuple[str, object]:
        key = self.key(task_id)
        if not self.client.set(key, marker, nx=True, ex=self.ttl):
            return ALREADY_WAITING, None
        try:
            return SENT, self.send(task_id)
        except BaseException:
            self.client.delete(key)
            raise

    def _send(self, task_id: int, organization_id: int | None) -> tuple[str, object]:
        if organization_id is None:  # the task is gone (or no look-up): sent, not counted
            return self._send_once(task_id, b"")
        answer = self._admit(
            keys=[self.key(task_id), self.waiting_key(organization_id)],
            args=[self.ttl, self.cap, task_id, organization_id, repr(time.time())],
        )
        if int(answer) == 0:
            return ALREADY_WAITING, None
        if int(answer) < 0:
            _held_back(self.database_url, organization_id)
            return HELD_BACK, None
        try:
            return SENT, self.send(task_id)
        except BaseException:
            self._release(keys=[self.key(task_id)], args=[self.waiting_prefix, task_id, 1])
            raise

    def taken(self, task_id: int) -> None:
        """A worker took this task's message: it no longer waits, and its organization's
        place is free. The marker stays until :meth:`finished` (the task is running)."""
        if self.cap is None:
            return
        try:
            self._release(keys=[self.key(task_id)], args=[self.waiting_prefix, task_id, 0])
        except Exception as exc:  # noqa: BLE001 - the place expires with the marker
            log.warning("waiting place of task %d not given back (%s)", task_id, exc)

    def finished(self, task_id: int) -> None:
        """A message for this task was handled: the next send must go out again."""
        try:
            if self.cap is None:
                self.client.delete(self.key(task_id))
            else:
                self._release(keys=[self.key(task_id)], args=[self.waiting_prefix, task_id, 1])
        except Exception as exc:  # noqa: BLE001 - the marker expires on its own
            log.warning("queued marker of task %d not cleared (%s)", task_id, exc)

    def waiting_by_organization(self, organization_ids: Iterable[int]) -> dict[int, int]:
        """How many messages of each organization wait in the queue (for the metrics)."""
        ids = list(organization_ids)
        if self.cap is None or not ids:
            return {}
        oldest = time.time() - self.ttl
        pipeline = self.client.pipeline(transaction=False)
        for organization_id in ids:
            pipeline.zremrangebyscore(self.waiting_key(organization_id), "-inf", oldest)
            pipeline.zcard(self.waiting_key(organization_id))
        counts = pipeline.execute()[1::2]
        return {organization_id: int(n) for organization_id, n in zip(ids, counts, strict=True)}


class LocalAdmission:
    """``rt.enqueue`` on the stub broker and on RabbitMQ: the cap of each organization's
    waiting messages, counted in this process (see the module's docstring for why that is
    exact on the stub and only a limit on direct sends on RabbitMQ).

    A task counts from its send until a worker of this process takes it (:meth:`taken`) or
    ``forget_after`` seconds have passed, whichever comes first. ``in_process``: the workers
    run in this process (the stub), so the count is exact: the tick's sends (:meth:`admit`)
    are held back at the cap too, and the metrics report the count. Otherwise only direct
    sends are limited, and the count, which says nothing about the queue, is not reported."""

    def __init__(
        self,
        send: Callable[[int], object],
        max_queued_per_organization: int,
        organization_of: Callable[[int], int | None],
        *,
        forget_after: float,
        in_process: bool,
        database_url: str = "",
        clock: Callable[[], float] = time.monotonic,
    ):
        self.send, self.cap, self.organization_of = (
            send,
            max_queued_per_organization,
            organization_of,
        )
        self.forget_after, self.in_process = forget_after, in_process
        self.database_url, self.clock = database_url, clock
        self._lock = threading.Lock()
        self._waiting: dict[int, OrderedDict[int, float]] = {}  # organization -> task -> sent at
        self._organization: dict[int, int] = {}  # task -> organization, for taken()

    def __call__(self, task_id: int) -> object:
        return self.send_for(task_id, self.organization_of(task_id))

    def send_for(self, task_id: int, organization_id: int | None) -> object:
        """A direct send whose organization the caller knows: capped, as a call."""
        return self._send(task_id, organization_id, capped=True)[1]

    def admit(self, task_id: int, organization_id: int | None) -> str:
        return self._send(task_id, organization_id, capped=self.in_process)[0]

    def _send(self, task_id: int, organization_id: int | None, capped: bool) -> tuple[str, object]:
        if organization_id is None:
            return SENT, self.send(task_id)
        with self._lock:
            waiting = self._current(organization_id)
            if self.in_process and task_id in waiting:
                # Its message waits here, and taken() is sure to be told when it goes.
                return ALREADY_WAITING, None
            if capped and task_id not in waiting and len(waiting) >= self.cap:
                held = True
            else:
                held = False
                waiting[task_id] = self.clock()
                waiting.move_to_end(task_id)
                self._organization[task_id] = organization_id
        if held:
            _held_back(self.database_url, organization_id)
            return HELD_BACK, None
        try:
            return SENT, self.send(task_id)
        except BaseException:
            self.taken(task_id)
            raise

    def _current(self, organization_id: int) -> OrderedDict[int, float]:
        """The organization's waiting tasks, without those sent too long ago (oldest first:
        each send moves its task to the end)."""
        waiting = self._waiting.setdefault(organization_id, OrderedDict())
        oldest = self.clock() - self.forget_after
        while waiting and next(iter(waiting.values())) <= oldest:
            task_id, _ = waiting.popitem(last=False)
            self._organization.pop(task_id, None)
        return waiting

    def taken(self, task_id: int) -> None:
        with self._lock:
            organization_id = self._organization.pop(task_id, None)
            if organization_id is not None:
                self._waiting.get(organization_id, OrderedDict()).pop(task_id, None)

    finished = taken

    def waiting_by_organization(self, organization_ids: Iterable[int]) -> dict[int, int] | None:
        if not self.in_process:
            return None
        with self._lock:
            return {
                organization_id: len(self._current(organization_id))
                for organization_id in organization_ids
            }


class QueueAccounting(dramatiq.Middleware):
    """Tells the runtime's enqueue that a worker took a task's message, before the actor runs
    it: the task no longer waits in the queue, and its organization may send another
    (:meth:`EnqueueOnce.taken`, :meth:`LocalAdmission.taken`). A failure here is only logged:
    the place is given back when it expires."""

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if message.actor_name != "run_task" or not message.args:
            return
        try:
            from automation import runtime

            taken = getattr(runtime.current().enqueue, "taken", None)
            if taken is not None:
                taken(int(message.args[0]))
        except Exception as exc:  # noqa: BLE001 - the message runs all the same
            log.warning("queue place of task %s not given back (%s)", message.args[0], exc)


def make_enqueue(
    rt: Any, send: Callable[[int], object], on: dramatiq.Broker | None = None
) -> EnqueueOnce | LocalAdmission:
    """``rt.enqueue`` for the broker ``on`` (the configured one by default), with each
    organization's waiting messages capped at ``max_queued_per_organization``: a direct
    send finds its task's organization in the database (one read by primary key)."""
    from dramatiq.brokers.redis import RedisBroker

    from automation import observability

    target = on if on is not None else broker
    settings = rt.settings
    cap = settings.max_queued_per_organization
    organization_of = task_organization(rt.factory)
    observability.ORGANIZATIONS.watch(settings.database, rt.factory)
    if isinstance(target, RedisBroker):
        return EnqueueOnce(
            target.client,
            settings.database,
            settings.lease_seconds,
            send,
            namespace=target.namespace,
            max_queued_per_organization=cap,
            organization_of=organization_of,
        )
    in_process = isinstance(target, StubBroker)
    return LocalAdmission(
        send,
        cap,
        organization_of,
        # Stub: the worker here gives places back; the lease bounds a place a lost message
        # holds, as on Redis. RabbitMQ: nobody gives them back here; a direct send waits
        # at most one tick for its turn.
        forget_after=settings.lease_seconds if in_process else settings.tick_seconds,
        in_process=in_process,
        database_url=settings.database,
    )


def task_organization(factory: Any) -> Callable[[int], int | None]:
    """The organization of a task by its id (None when there is no such task), read in the
    system scope."""

    def organization_of(task_id: int) -> int | None:
        from sqlalchemy import select

        from automation.models import Task

        with factory() as session:
            return session.scalar(select(Task.organization_id).where(Task.id == task_id))

    return organization_of


def _held_back(database_url: str, organization_id: int) -> None:
    from automation import observability

    observability.task_held_back(database_url, organization_id)


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
broker.add_middleware(QueueAccounting())
dramatiq.set_broker(broker)
