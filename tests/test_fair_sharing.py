"""Fair sharing between organizations (issue 10, part 4): one organization's burst does not
starve the others.

The tick shares its batch round-robin (``automation.db.due_tasks_fairly``); the runtime's
enqueue caps each organization's messages waiting in the queue (``workers/broker.py``: in
Redis, or in this process on the stub broker); a provider outage's retries wait out their
backoff outside the share; and the metrics show each organization's due, queued, held-back
and run tasks. On SQLite and PostgreSQL, and on a real Redis for the shared count.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from dramatiq import Message
from dramatiq.brokers.stub import StubBroker
from prometheus_client.core import Metric
from sqlalchemy import func, select, update

from automation import observability
from automation.db import due_task_ids, due_tasks_fairly, migrate, transaction
from automation.errors import TransientProviderError
from automation.models import Task, TaskState
from automation.organizations import start_daily_tasks
from automation.people import ensure_organization
from automation.services import tasks
from automation.services.loop import tick
from tests.conftest import REDIS_URL, require_service
from workers.broker import (
    ALREADY_WAITING,
    HELD_BACK,
    SENT,
    EnqueueOnce,
    LocalAdmission,
    QueueAccounting,
    make_enqueue,
)

KIND = "fair_test"
CAP = 200


@dataclass
class Provider:
    """The test kind's provider: organizations in ``down`` get a provider error."""

    down: set[int] = field(default_factory=set)


@pytest.fixture
def handler() -> Iterator[Provider]:
    """A task kind whose handler calls a provider that is up, or down for some organizations
    (a transient error: the task retries after backoff); removed afterwards."""
    provider = Provider()

    @tasks.handles(KIND)
    def run(rt, session, task):  # type: ignore[no-untyped-def]
        if task.organization_id in provider.down:
            raise TransientProviderError("Graph POST /users/x/sendMail: HTTP 503 (outage)")
        return "ok"

    try:
        yield provider
    finally:
        tasks.HANDLERS.pop(KIND, None)


@pytest.fixture
def orgs(rt) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Two client organizations, alpha (the big one) and beta (the small one)."""
    migrate(rt.engine)
    with transaction(rt.factory) as session:
        alpha = ensure_organization(session, "alpha", "Alpha Corp", rt.now()).id
        beta = ensure_organization(session, "beta", "Beta GmbH", rt.now()).id
        # Their daily planning and retention tasks, as the tick would start them, not due
        # until tomorrow: the tests count only the tasks they make.
        start_daily_tasks(session, [alpha, beta], rt.now())
        session.execute(update(Task).values(due_at=rt.now() + dt.timedelta(days=1)))
    return alpha, beta


def make_due(  # type: ignore[no-untyped-def]
    rt, org: int, count: int, due_at: dt.datetime, tag: str = "", kind: str = KIND
) -> list[int]:
    """``count`` due tasks of ``kind`` for ``org`` (one multi-row INSERT per 500)."""
    ids: list[int] = []
    keys = [(f"{kind}:{tag}{org}:{n}", n) for n in range(count)]
    with transaction(rt.factory) as session:
        for start in range(0, count, 500):
            made = tasks.create_tasks(
                session, org, kind, keys[start : start + 500], due_at, rt.now()
            )
            ids.extend(made[key] for key, _ in keys[start : start + 500])
    return ids


def capped(rt, cap: int = CAP):  # type: ignore[no-untyped-def]
    """The runtime with the cap set."""
    rt.settings = rt.settings.with_(max_queued_per_organization=cap)
    return rt


def counter(name: str, **labels: str) -> float:
    return observability.REGISTRY.get_sample_value(name, labels) or 0.0


def gauges(rt) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    """The per-organization gauges of a metrics scrape: family -> organization -> value."""
    found: dict[str, dict[str, float]] = {}
    families: list[Metric] = list(observability.DatabaseCollector(lambda: rt).collect())
    for family in families:
        if family.name.startswith("automation_organization_"):
            found[family.name] = {s.labels["organization"]: s.value for s in family.samples}
    return found


def worker_takes(rt, admission, task_ids: list[int]) -> list[str]:  # type: ignore[no-untyped-def]
    """What a worker does with a message: take it (its organization's place is free), run
    the task, and mark the message handled."""
    results = []
    for task_id in task_ids:
        admission.taken(task_id)
        results.append(tasks.run_task(rt, task_id))
        admission.finished(task_id)
    return results


# --------------------------------------------------------------------------- the tick's pick


def test_the_first_tick_admits_all_of_the_small_organizations_tasks(rt, orgs, clock, handler):
    alpha, beta = orgs
    burst = make_due(rt, alpha, 2000, clock.now() - dt.timedelta(hours=1))  # older than B's
    small = make_due(rt, beta, 10, clock.now())
    with rt.factory() as session:  # what "oldest first" picked: the burst, and only it
        assert set(due_task_ids(session, rt.now(), 500)) <= set(burst)

    sent: list[int] = []
    rt.enqueue = sent.append
    result = tick(rt)
    assert result.enqueued == len(sent) == 500 and result.held_back == 0
    assert set(small) <= set(sent)  # all of B's, in the first tick
    assert set(sent[:20]) == set(small) | set(burst[:10])  # interleaved at the front
    assert sent[20:] == burst[10:490]  # and A's, oldest first, fill the rest


def test_each_organization_gets_an_equal_share_of_a_batch_and_unused_shares_go_to_others(
    rt, orgs, clock, handler
):
    alpha, beta = orgs
    with transaction(rt.factory) as session:
        gamma = ensure_organization(session, "gamma", "Gamma", rt.now()).id
    now = clock.now()
    made = {
        alpha: make_due(rt, alpha, 100, now - dt.timedelta(hours=3)),
        beta: make_due(rt, beta, 100, now - dt.timedelta(hours=2)),
        gamma: make_due(rt, gamma, 5, now - dt.timedelta(hours=1)),
    }
    # A lost lease (the worker died) is due as well, and takes its place in its turn.
    with transaction(rt.factory) as session:
        session.execute(
            update(Task)
            .where(Task.id == made[gamma][0])
            .values(state=TaskState.LEASED, lease_until=now - dt.timedelta(seconds=1))
        )
        picked = due_tasks_fairly(session, now, 45)
    by_org = {org: [t for t, o in picked if o == org] for org in made}
    assert len(picked) == 45
    assert by_org[gamma] == made[gamma]  # all 5: less than a third of 45
    assert by_org[alpha] == made[alpha][:20] and by_org[beta] == made[beta][:20]
    # Round-robin order: each organization's n-th task before anyone's (n+1)-th.
    assert [org for _, org in picked[:3]] == [alpha, beta, gamma]

    with transaction(rt.factory) as session:  # no backlog: everything, the same order
        everything = due_tasks_fairly(session, now, 500)
    assert len(everything) == 205 and everything[:3] == [
        (made[alpha][0], alpha),
        (made[beta][0], beta),
        (made[gamma][0], gamma),
    ]


# --------------------------------------------------------------------------- the cap


def test_the_cap_holds_a_burst_at_the_limit_while_the_others_flow_in_process(
    rt, orgs, clock, handler
):
    """The stub broker: the count is kept in this process, where the worker runs."""
    alpha, beta = orgs
    burst = make_due(rt, alpha, 2000, clock.now() - dt.timedelta(hours=1))
    small = make_due(rt, beta, 10, clock.now())
    sent: list[int] = []
    admission = make_enqueue(capped(rt), sent.append, on=StubBroker())
    assert isinstance(admission, LocalAdmission)
    rt.enqueue = admission
    held_alpha = counter("automation_organization_tasks_held_back_total", organization="alpha")
    done_beta = counter("automation_organization_jobs_total", organization="beta", outcome="done")

    result = tick(rt)
    assert result.enqueued == 500 and result.held_back == 490 - CAP
    assert set(small) <= set(sent) and len(sent) == CAP + 10
    metrics = gauges(rt)
    assert metrics["automation_organization_tasks_queued"] == {"alpha": CAP, "beta": 10}
    assert metrics["automation_organization_tasks_due"] == {"alpha": 2000, "beta": 10}
    assert (
        counter("automation_organization_tasks_held_back_total", organization="alpha")
        == held_alpha + 490 - CAP
    )

    # B's work flows: the worker runs it while A's burst stays at the cap.
    assert worker_takes(rt, admission, small) == ["ok"] * 10
    assert (
        counter("automation_organization_jobs_total", organization="beta", outcome="done")
        == done_beta + 10
    )
    # Direct sends (after a webhook, or tasks a handler made due) respect the cap too.
    later = make_due(rt, beta, 3, clock.now(), tag="later")
    more = make_due(rt, alpha, 3, clock.now(), tag="later")
    for task_id in [*more, *later]:
        rt.enqueue(task_id)
    assert sent[-3:] == later and not set(more) & set(sent)
    assert gauges(rt)["automation_organization_tasks_queued"] == {"alpha": CAP, "beta": 3}

    # The worker takes 50 of A's: the next tick admits 50 more of A, in turn.
    first_sent = [t for t in sent if t in set(burst)]
    worker_takes(rt, admission, first_sent[:50])
    before = len(sent)
    result = tick(rt)
    admitted = [t for t in sent[before:] if t in set(burst)]
    assert len(admitted) == 50
    assert gauges(rt)["automation_organization_tasks_queued"]["alpha"] == CAP


def test_on_rabbitmq_a_process_limits_only_its_direct_sends(rt, orgs, clock, handler):
    """No process can count RabbitMQ's queue by organization: direct sends are limited to
    the cap per tick_seconds, and the tick (whose round-robin is the fairness there) is not."""
    alpha, _ = orgs
    burst = make_due(rt, alpha, 30, clock.now())
    now = [0.0]
    sent: list[int] = []
    rabbit = LocalAdmission(
        sent.append,
        10,
        lambda task_id: alpha,
        forget_after=30,
        in_process=False,
        clock=lambda: now[0],
    )
    for task_id in burst[:15]:
        rabbit(task_id)
    assert sent == burst[:10]  # the other 5 wait for the tick
    assert rabbit.admit(burst[20], alpha) == SENT  # the tick is not held back
    assert rabbit.waiting_by_organization([alpha]) is None  # not the queue's depth: no gauge
    now[0] = 31.0
    rabbit(burst[11])
    assert sent[-1] == burst[11]


def test_the_stub_worker_gives_the_place_back_when_it_takes_the_message(rt, orgs, clock):
    from automation import runtime

    alpha, _ = orgs
    [task_id] = make_due(rt, alpha, 1, clock.now())
    admission = make_enqueue(capped(rt, 1), lambda task_id: None, on=StubBroker())
    rt.enqueue = admission
    assert admission.admit(task_id, alpha) == SENT
    assert admission.waiting_by_organization([alpha]) == {alpha: 1}
    previous = runtime._current
    runtime.install(rt)
    try:
        message = Message(
            queue_name="automation", actor_name="run_task", args=(task_id,), kwargs={}, options={}
        )
        QueueAccounting().before_process_message(StubBroker(), message)
    finally:
        runtime.install(previous)
    assert admission.waiting_by_organization([alpha]) == {alpha: 0}


# --------------------------------------------------------------------------- on Redis


@pytest.fixture
def redis_broker() -> Iterator[Any]:
    """A RedisBroker on the test database, in a namespace of its own (other tests flush the
    database; this one only deletes its own keys)."""
    from urllib.parse import urlparse

    from dramatiq.brokers.redis import RedisBroker

    parsed = urlparse(REDIS_URL)
    require_service("Redis", parsed.hostname or "localhost", parsed.port or 6379)
    broker = RedisBroker(url=REDIS_URL, namespace=f"fair-{uuid.uuid4().hex[:8]}")
    try:
        yield broker
    finally:
        keys = list(broker.client.scan_iter(match=f"{broker.namespace}:*"))
        if keys:
            broker.client.delete(*keys)
        broker.client.close()


@pytest.mark.redis
def test_on_redis_the_cap_holds_a_burst_while_the_others_flow(
    rt, orgs, clock, handler, redis_broker
):
    alpha, beta = orgs
    burst = make_due(rt, alpha, 2000, clock.now() - dt.timedelta(hours=1))
    small = make_due(rt, beta, 10, clock.now())
    sent: list[int] = []
    admission = make_enqueue(capped(rt), sent.append, on=redis_broker)
    assert isinstance(admission, EnqueueOnce)
    rt.enqueue = admission

    result = tick(rt)
    assert result.held_back == 490 - CAP and len(sent) == CAP + 10 and set(small) <= set(sent)
    assert gauges(rt)["automation_organization_tasks_queued"] == {"alpha": CAP, "beta": 10}
    # The next tick finds A's oldest waiting already and the rest over the cap: nothing new.
    assert tick(rt).held_back == 490 - CAP and len(sent) == CAP + 10

    # B's work runs; a direct send of B's goes out and A's does not.
    worker_takes(rt, admission, small)
    [b_new] = make_due(rt, beta, 1, clock.now(), tag="new")
    [a_new] = make_due(rt, alpha, 1, clock.now(), tag="new")
    rt.enqueue(b_new)
    rt.enqueue(a_new)
    assert sent[-1] == b_new and a_new not in sent
    assert admission.waiting_by_organization([alpha, beta]) == {alpha: CAP, beta: 1}

    # A worker takes 50 of A's: the places are free before the tasks have even finished.
    taken = [t for t in sent if t in set(burst)][:50]
    for task_id in taken:
        admission.taken(task_id)
    assert admission.waiting_by_organization([alpha]) == {alpha: CAP - 50}
    before = len(sent)
    tick(rt)
    assert len([t for t in sent[before:] if t in set(burst)]) == 50
    assert admission.admit(taken[0], alpha) == ALREADY_WAITING  # running: still not resent
    for task_id in taken:
        admission.finished(task_id)


@pytest.mark.redis
def test_on_redis_a_lost_message_holds_its_place_only_until_the_marker_expires(redis_broker):
    sent: list[int] = []
    enqueue = EnqueueOnce(
        redis_broker.client,
        "sqlite:////tmp/fair.db",
        1,
        sent.append,
        namespace=redis_broker.namespace,
        max_queued_per_organization=2,
        organization_of={1: 7, 2: 7, 3: 7, 4: 8}.get,
    )
    assert [enqueue.admit(n, 7) for n in (1, 2, 3)] == [SENT, SENT, HELD_BACK]
    enqueue(4)  # another organization: its own count
    assert sent == [1, 2, 4]
    assert enqueue.waiting_by_organization([7, 8]) == {7: 2, 8: 1}
    time.sleep(2.1)  # the messages were lost with their worker: nobody gives the places back
    assert enqueue.waiting_by_organization([7, 8]) == {7: 0, 8: 0}
    assert enqueue.admit(3, 7) == SENT

    def broken(task_id: int) -> None:
        raise ConnectionError("broker unreachable")

    enqueue.send = broken
    with pytest.raises(ConnectionError):
        enqueue(1)
    assert enqueue.waiting_by_organization([7]) == {7: 1}  # only task 3: 1's place given back


# --------------------------------------------------------------------------- provider outage


def test_a_provider_outage_in_one_organization_does_not_take_the_others_share(
    rt, orgs, clock, handler
):
    """A's provider fails every call: its tasks retry after backoff, and are not due (take no
    share) until it ends; B's run in the first ticks all the same."""
    alpha, beta = orgs
    handler.down.add(alpha)
    burst = set(make_due(rt, alpha, 60, clock.now() - dt.timedelta(minutes=10)))
    retries = counter("automation_organization_jobs_total", organization="alpha", outcome="retry")
    done_beta = counter("automation_organization_jobs_total", organization="beta", outcome="done")

    failed: set[int] = set()
    for round_ in range(3):
        ours = set(make_due(rt, beta, 5, clock.now(), tag=f"r{round_}-"))
        sent: list[int] = []
        rt.enqueue = sent.append
        tick(rt, limit=20)
        assert ours <= set(sent)  # all of B's new work, every tick
        assert not failed & set(sent)  # A's retrying tasks wait out their backoff
        for task_id in sent:
            tasks.run_task(rt, task_id)
        failed |= set(sent) & burst
        clock.advance(dt.timedelta(seconds=2))  # less than the first backoff (15 s at least)
    assert len(failed) == 45  # 15 of A's a tick: the rest of each batch
    with rt.factory() as session:
        states = dict(
            session.execute(
                select(Task.organization_id, func.count())
                .where(Task.state == TaskState.DONE)
                .group_by(Task.organization_id)
            ).all()
        )
    assert states == {beta: 15}
    assert (
        counter("automation_organization_jobs_total", organization="alpha", outcome="retry")
        == retries + 45
    )
    assert (
        counter("automation_organization_jobs_total", organization="beta", outcome="done")
        == done_beta + 15
    )
    # After the backoff (30 s at most after a first failure) A's retries are due again and
    # take their turn.
    clock.advance(dt.timedelta(minutes=1))
    sent = []
    rt.enqueue = sent.append
    tick(rt, limit=100)
    assert failed <= set(sent)


# --------------------------------------------------------------------------- tasks a task makes


@pytest.mark.parametrize("on", ["stub", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_task_a_task_made_is_counted_for_its_organization_without_a_look_up(
    rt, orgs, clock, handler, on, request
):
    """A worker sends the tasks its task made (due now) with the organization their rows
    carry: counted against that organization's cap, and no query for it."""
    _, beta = orgs
    spawn = "fair_spawn_test"

    @tasks.handles(spawn)
    def run(rt, session, task):  # type: ignore[no-untyped-def]
        tasks.create_task(
            session, task.organization_id, KIND, f"made-by:{task.id}", task.id, rt.now(), rt.now()
        )
        return "made one"

    try:
        [parent] = make_due(rt, beta, 1, clock.now(), kind=spawn)
        sent: list[int] = []
        looked_up: list[int] = []
        broker = StubBroker() if on == "stub" else request.getfixturevalue("redis_broker")
        admission = make_enqueue(capped(rt), sent.append, on=broker)
        real = admission.organization_of
        admission.organization_of = lambda task_id: looked_up.append(task_id) or real(task_id)
        rt.enqueue = admission
        assert tasks.run_task(rt, parent) == "made one"
        with rt.factory() as session:
            made = session.scalar(select(Task.id).where(Task.key == f"made-by:{parent}"))
        assert sent == [made] and looked_up == []
        assert admission.waiting_by_organization([beta]) == {beta: 1}
        admission.finished(made)
    finally:
        tasks.HANDLERS.pop(spawn, None)
