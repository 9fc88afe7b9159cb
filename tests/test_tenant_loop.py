"""The loop serves every organization (issue 10): a client made by ``automation org create``
is planned by the tick with no further command, a client on calendars and an inbox of its
own (``config/orgs/<slug>/settings.toml`` and its encrypted secrets) has them polled by the
tick with its own runtime, so its invitations land in its calendars, its replies are stored
as its own and the deployment's provider never reads them; push notices for its calendars
reach it; and an organization created before any of this heals at the next tick.

The clients' providers are the Microsoft Graph fake (``tests/fakes/graph.py``) over real
HTTPS, one per organization, told apart by their tenant and credentials."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from automation.clock import SimulatedClock
from automation.db import transaction
from automation.models import (
    CalendarSync,
    CheckinSeries,
    ConversationRecord,
    InboundMessage,
    Occurrence,
    OutboundMessage,
    Task,
    TaskState,
)
from automation.organizations import (
    KEYS_VARIABLE,
    Keyring,
    create_organization,
    org_folder,
    put_secret,
)
from automation.people import ensure_organization, import_people_file
from automation.runtime import NoInbox, Runtime
from automation.services.inbound import inbox_lock_name
from automation.services.loop import bootstrap, organizations, run_due, take_in, tick
from automation.settings import PROJECT_ROOT, Settings
from automation.web import create_app
from tests.conftest import ACME_PEOPLE
from tests.fakes.graph import GraphFake
from tests.test_loop import reply_to

NORTH_PEOPLE = """email,name,timezone,manager_email,hr_partner_email
chief@north.test,Nora Chief,Europe/Oslo,,hr@north.test
hr@north.test,Hedda Hr,Europe/Oslo,chief@north.test,hr@north.test
ola@north.test,Ola Nord,Europe/Oslo,chief@north.test,hr@north.test
"""
CHIEF = "chief@north.test"
NORTH_BOX = "checkins@north.test"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """The test settings on copies of config/ and templates/: clients' folders are written
    under config/orgs/."""
    shutil.copytree(PROJECT_ROOT / "config", tmp_path / "config")
    shutil.copytree(PROJECT_ROOT / "templates", tmp_path / "templates")
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        organization="acme",
        organization_name="Acme",
        secret_key="test-secret",
        base_url="https://checkins.example",  # Graph subscribes only https addresses
        config_dir=tmp_path / "config",
        templates_dir=tmp_path / "templates",
    )


@pytest.fixture
def clock() -> SimulatedClock:
    """The simulated clock starts at the real time: the Graph fake checks a subscription's
    expiry against its own (real) clock."""
    return SimulatedClock(dt.datetime.now(dt.UTC).replace(second=0, microsecond=0))


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> Keyring:
    """The secrets key, in the environment as on every host of the deployment."""
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(KEYS_VARIABLE, key)
    return Keyring.from_keys([key])


@pytest.fixture
def north_graph(monkeypatch: pytest.MonkeyPatch) -> Iterator[GraphFake]:
    """The client's own Microsoft 365 tenant: its calendars and its inbox."""
    with GraphFake(
        tenant="north-tenant",
        client_id="north-client",
        client_secret="north-secret",
        validate_subscriptions=False,
    ) as server:
        # Adapters built from settings trust the environment's CA bundle, as in production
        # (both fakes serve the same certificate).
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_file))
        yield server


def graph_settings(fake: GraphFake, **extra: object) -> str:
    """A client's settings.toml for its own Graph tenant (calendar and inbox)."""
    lines = {
        "calendar_provider": "graph",
        "graph_tenant_id": fake.tenant,
        "graph_client_id": fake.client_id,
        "graph_base_url": fake.base_url,
        "graph_authority_host": fake.authority_host,
        "mail_inbox": "graph",
        "graph_mailbox": NORTH_BOX,
        **extra,
    }
    return "".join(
        f"{k} = {v}\n" if isinstance(v, int) else f'{k} = "{v}"\n' for k, v in lines.items()
    )


def add_client(
    rt: Runtime,
    tmp_path: Path,
    settings_text: str | None = None,
    secrets: dict[str, str] | None = None,
    keys: Keyring | None = None,
    slug: str = "north",
) -> int:
    """A client as the README's steps make it: ``org create`` (its function), its
    settings.toml edited, its secrets stored, its people imported. Nothing else."""
    now = rt.now()
    with transaction(rt.factory) as session:
        made = create_organization(session, rt.settings, slug, "North AS", now, "operator:test")
    if settings_text is not None:
        (org_folder(rt.settings, slug) / "settings.toml").write_text(settings_text)
    with transaction(rt.factory) as session:
        for name, value in (secrets or {}).items():
            assert keys is not None
            put_secret(session, made.id, name, value, keys, now, "operator:test")
        csv = tmp_path / f"people-{slug}.csv"
        csv.write_text(NORTH_PEOPLE)
        import_people_file(session, made.id, csv, now)
    return made.id


def start_acme(rt: Runtime, tmp_path: Path) -> int:
    """The deployment's own organization, as `automation run` starts it."""
    acme = bootstrap(rt)
    csv = tmp_path / "people-acme.csv"
    csv.write_text(ACME_PEOPLE)
    with transaction(rt.factory) as session:
        import_people_file(session, acme, csv, rt.now())
    return acme


def tasks_of(rt: Runtime, org: int, kind: str) -> list[Task]:
    with rt.factory() as session:
        return list(
            session.scalars(
                select(Task).where(Task.organization_id == org, Task.kind == kind).order_by(Task.id)
            )
        )


def series_of(rt: Runtime, org: int) -> list[CheckinSeries]:
    with rt.factory() as session:
        return list(
            session.scalars(select(CheckinSeries).where(CheckinSeries.organization_id == org))
        )


def occurrences_of(rt: Runtime, org: int) -> list[Occurrence]:
    with rt.factory() as session:
        return list(
            session.scalars(
                select(Occurrence)
                .where(Occurrence.organization_id == org)
                .order_by(Occurrence.start_at, Occurrence.id)
            )
        )


def syncs_of(rt: Runtime, org: int) -> list[CalendarSync]:
    with rt.factory() as session:
        return list(
            session.scalars(select(CalendarSync).where(CalendarSync.organization_id == org))
        )


def masters(fake: GraphFake, mailbox: str) -> list[dict[str, Any]]:
    return [e for e in fake.events(mailbox) if e.get("type") == "seriesMaster"]


# =========================================================================== planning


def test_a_client_made_with_org_create_is_planned_by_the_tick_without_any_command(
    rt: Runtime, tmp_path: Path
) -> None:
    acme = start_acme(rt, tmp_path)
    north = add_client(rt, tmp_path)
    today = rt.now().date().isoformat()
    # Creating it scheduled its first planning and retention, with the daily keys.
    assert [t.key for t in tasks_of(rt, north, "plan")] == [f"plan:{today}"]
    assert [t.key for t in tasks_of(rt, north, "retention")] == [f"retention:{today}"]
    # Created again (`org create` run twice): nothing doubles.
    with transaction(rt.factory) as session:
        again = create_organization(session, rt.settings, "north", "North AS", rt.now(), "t")
    assert not again.created and len(tasks_of(rt, north, "plan")) == 1

    # The tick hands both organizations' planning to the workers; they run it.
    enqueued: list[int] = []
    rt.enqueue = enqueued.append
    result = tick(rt)
    assert result.enqueued == len(enqueued) >= 4
    with rt.factory() as session:
        handed = session.execute(
            select(Task.organization_id, Task.kind).where(Task.id.in_(enqueued))
        ).all()
    assert {(north, "plan"), (north, "retention"), (acme, "plan")} <= set(handed)
    run_due(rt)
    assert len(series_of(rt, north)) == 2 and len(series_of(rt, acme)) == 3
    assert {o.state for o in occurrences_of(rt, north)} == {"invited"}
    # Each plan scheduled its organization's next one: the daily chain runs on its own.
    tomorrow = (rt.now() + dt.timedelta(days=1)).date().isoformat()
    for org in (acme, north):
        plans = {t.key: t.state for t in tasks_of(rt, org, "plan")}
        assert plans == {f"plan:{today}": TaskState.DONE, f"plan:{tomorrow}": TaskState.PENDING}


def test_an_organization_created_without_its_daily_tasks_heals_once_a_day(
    rt: Runtime, tmp_path: Path, clock: Any
) -> None:
    """Organizations made before `org create` scheduled planning, or by other code (an
    import's ensure_organization), have no plan task: the tick makes sure of them, at most
    once a day per organization and process, in one statement for all of them."""
    acme = start_acme(rt, tmp_path)
    now = rt.now()
    made = []
    with transaction(rt.factory) as session:
        for n in range(3):
            made.append(ensure_organization(session, f"old-{n}", f"Old {n}", now).id)
        csv = tmp_path / "old.csv"
        csv.write_text(NORTH_PEOPLE)
        import_people_file(session, made[0], csv, now)
    assert tasks_of(rt, made[0], "plan") == []

    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(rt.engine, "before_cursor_execute", record)
    try:
        run_due(rt)
        inserts = [s for s in statements if "INSERT INTO tasks" in s and "'plan'" not in s]
        assert len(series_of(rt, made[0])) == 2  # planned, by nobody's command
        for org in (acme, *made):
            assert len(tasks_of(rt, org, "plan")) == 2  # today's, run; tomorrow's, waiting
            assert len(tasks_of(rt, org, "retention")) == 2
        # Later ticks the same day check nothing.
        statements.clear()
        take_in(rt)
        take_in(rt)
        assert not [s for s in statements if "INSERT INTO tasks" in s]
        # The next day, one statement checks every organization; their chains are alive,
        # so it adds nothing.
        clock.advance(dt.timedelta(days=1))
        statements.clear()
        take_in(rt)
        inserts = [s for s in statements if "INSERT INTO tasks" in s]
        assert len(inserts) == 1
    finally:
        event.remove(rt.engine, "before_cursor_execute", record)
    for org in (acme, *made):
        assert len(tasks_of(rt, org, "plan")) == 2


def test_a_client_whose_configuration_is_broken_does_not_stop_the_tick(
    rt: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acme = start_acme(rt, tmp_path)
    add_client(rt, tmp_path, settings_text='calendar_provider = "carrier-pigeon"\n')
    caplog.set_level(logging.DEBUG, logger="automation.loop")
    enqueued: list[int] = []
    rt.enqueue = enqueued.append
    for _ in range(3):
        tick(rt)
    # The deployment's work goes out all the same (the client's tasks fail on its
    # configuration when they run, as every task of it does).
    with rt.factory() as session:
        handed = set(session.scalars(select(Task.organization_id).where(Task.id.in_(enqueued))))
    assert acme in handed
    said = [r for r in caplog.records if r.levelno >= logging.ERROR and "north" in r.message]
    assert len(said) == 1 and "configuration" in said[0].message  # once, not every tick


def test_run_due_runs_everyones_tasks_when_a_clients_configuration_is_broken(
    rt: Runtime, tmp_path: Path
) -> None:
    """The in-process loop (``automation run --once``, the demo, tests): the client's tasks
    fail on its configuration, each with the reason, and the deployment's all run."""
    acme = start_acme(rt, tmp_path)
    north = add_client(rt, tmp_path, settings_text='calendar_provider = "carrier-pigeon"\n')
    run_due(rt)
    assert series_of(rt, acme), "the deployment was planned"
    (plan,) = tasks_of(rt, north, "plan")
    assert plan.state == TaskState.PENDING and plan.attempts == 1  # to be retried, later
    assert plan.due_at > rt.now()
    assert "carrier-pigeon" in (plan.last_error or ""), plan.last_error
    assert not series_of(rt, north)


# =========================================================================== own providers


def test_a_client_on_its_own_graph_has_its_calendars_and_inbox_served_by_the_tick(
    rt: Runtime, tmp_path: Path, north_graph: GraphFake, keys: Keyring, clock: Any
) -> None:
    """The deployment runs on local calendar files and the Maildir; the client on its own
    Microsoft 365 tenant for both calendar and inbox."""
    acme = start_acme(rt, tmp_path)
    north = add_client(
        rt,
        tmp_path,
        graph_settings(north_graph),
        {"graph_client_secret": north_graph.client_secret},
        keys,
    )
    tenant = rt.tenant(north)
    assert tenant.calendar is not rt.calendar and tenant.calendar.name == "graph"
    assert not isinstance(tenant.inbox, NoInbox)
    assert inbox_lock_name(tenant) != inbox_lock_name(rt)  # its polls never skip for ours
    assert isinstance(rt.tenant(acme).inbox, type(rt.inbox))
    run_due(rt)

    # Its invitations are in its own calendars, and only there.
    assert len(masters(north_graph, CHIEF)) == 2
    assert {o.state for o in occurrences_of(rt, north)} == {"invited"}
    local = "".join(p.read_text() for p in rt.settings.calendars.rglob("*") if p.is_file())
    assert "north.test" not in local and "acme.test" in local
    # The tick gave its calendar its work: a first sync read and a push subscription opened,
    # in its tenant; no calendar of the deployment's was touched (it has none to sync).
    (sync,) = syncs_of(rt, north)
    assert (sync.provider, sync.calendar) == ("graph", CHIEF)
    assert sync.synced_at is not None and sync.channel_id is not None
    assert [t.state for t in tasks_of(rt, north, "calendar_sync")] == [TaskState.DONE]
    assert tasks_of(rt, north, "calendar_channel_renew")[0].state == TaskState.DONE
    assert north_graph.ops["calendarView.delta"] >= 1
    assert north_graph.ops["subscriptions.create"] == 1
    assert syncs_of(rt, acme) == []
    # Later ticks poll it every calendar_poll_minutes, as the deployment's own.
    clock.advance(dt.timedelta(minutes=16))
    take_in(rt)
    assert [t.state for t in tasks_of(rt, north, "calendar_sync")][-1] == TaskState.PENDING
    run_due(rt)

    # Its manager answers a follow-up: the reply reaches the client's own mailbox, the
    # tick reads it there and it is recorded as the client's.
    first = occurrences_of(rt, north)[0]
    clock.advance_to(first.end_at + dt.timedelta(hours=1, minutes=1))
    run_due(rt)
    with rt.factory() as session:
        prompt = session.scalars(
            select(OutboundMessage).where(
                OutboundMessage.organization_id == north,
                OutboundMessage.kind == "followup",
                OutboundMessage.occurrence_id == first.id,
            )
        ).one()
    raw = reply_to(rt, prompt, f"Nora Chief <{CHIEF}>", "1. Ola shipped the release.\nRating: 5\n")
    north_graph.deliver(NORTH_BOX, raw)
    before = north_graph.ops["messages.delta"]
    assert tick(rt).received == 1
    assert north_graph.ops["messages.delta"] > before
    run_due(rt)
    with rt.factory() as session:
        (message,) = session.scalars(select(InboundMessage).where(InboundMessage.raw == raw))
        assert (message.organization_id, message.source, message.state) == (
            north,
            "graph",
            "recorded",
        )
        (record,) = session.scalars(select(ConversationRecord))
        assert (record.organization_id, record.subject_id, record.rating) == (north, first.id, 5)
    assert len(north_graph.mail(NORTH_BOX, "Processed")) == 1
    # The deployment's own path is unchanged: its Maildir inbox is still read, as its own.
    acme_first = occurrences_of(rt, acme)[0]
    with rt.factory() as session:
        acme_prompt = session.scalars(
            select(OutboundMessage).where(
                OutboundMessage.organization_id == acme,
                OutboundMessage.kind == "followup",
                OutboundMessage.occurrence_id == acme_first.id,
            )
        ).one()
    rt.inbox.deliver(reply_to(rt, acme_prompt, "Bea Boss <boss@acme.test>", "Rating: 3\n"), "r1")
    assert tick(rt).received == 1
    run_due(rt)
    with rt.factory() as session:
        records = session.execute(
            select(ConversationRecord.organization_id, ConversationRecord.subject_id)
        ).all()
    assert sorted(records) == sorted([(north, first.id), (acme, acme_first.id)])


@pytest.fixture
def acme_graph(north_graph: GraphFake) -> Iterator[GraphFake]:
    """The deployment's own Microsoft 365 tenant (another fake: another tenant)."""
    with GraphFake(validate_subscriptions=False) as server:
        yield server


@pytest.fixture
def on_graph(rt: Runtime, acme_graph: GraphFake) -> Runtime:
    """The deployment on its Graph tenant; the runtime rebuilt from those settings."""
    from automation.runtime import build_runtime

    settings = rt.settings.with_(
        calendar_provider="graph",
        graph_tenant_id=acme_graph.tenant,
        graph_client_id=acme_graph.client_id,
        graph_client_secret=acme_graph.client_secret,
        graph_base_url=acme_graph.base_url,
        graph_authority_host=acme_graph.authority_host,
    )
    built = build_runtime(settings, rt.clock)
    yield built
    built.engine.dispose()


@pytest.fixture
def two_tenants(
    on_graph: Runtime,
    tmp_path: Path,
    north_graph: GraphFake,
    acme_graph: GraphFake,
    keys: Keyring,
) -> tuple[Runtime, int, int]:
    """Both organizations on Graph, each on its own tenant; the client polls hourly."""
    rt = on_graph
    acme = start_acme(rt, tmp_path)
    north = add_client(
        rt,
        tmp_path,
        graph_settings(north_graph, calendar_poll_minutes=60),
        {"graph_client_secret": north_graph.client_secret},
        keys,
    )
    run_due(rt)
    return rt, acme, north


def test_a_client_on_the_deployments_provider_but_its_own_tenant_is_served_with_its_own(
    two_tenants: tuple[Runtime, int, int], north_graph: GraphFake, acme_graph: GraphFake, clock: Any
) -> None:
    rt, acme, north = two_tenants
    assert rt.tenant(north).calendar is not rt.calendar
    assert rt.tenant(acme).calendar is rt.calendar
    # Each organization's series are in its own tenant's calendars only.
    assert len(masters(north_graph, CHIEF)) == 2 and masters(acme_graph, CHIEF) == []
    assert len(masters(acme_graph, "boss@acme.test")) == 3
    assert masters(north_graph, "boss@acme.test") == []
    ((north_sync,), (acme_sync,)) = syncs_of(rt, north), syncs_of(rt, acme)
    assert north_sync.provider == acme_sync.provider == "graph"
    assert north_graph.ops["subscriptions.create"] == 1 == acme_graph.ops["subscriptions.create"]

    # Twenty minutes on: the deployment's calendar is due its 15-minute poll; the client's
    # is not (it polls hourly). The deployment's round leaves the client's calendar alone.
    def waiting(org: int) -> int:
        return sum(t.state == TaskState.PENDING for t in tasks_of(rt, org, "calendar_sync"))

    clock.advance(dt.timedelta(minutes=20))
    take_in(rt)
    assert (waiting(acme), waiting(north)) == (1, 0)
    clock.advance(dt.timedelta(minutes=41))
    take_in(rt)
    assert waiting(north) == 1
    north_reads, acme_reads = (f.ops["calendarView.delta"] for f in (north_graph, acme_graph))
    run_due(rt)
    assert north_graph.ops["calendarView.delta"] > north_reads
    assert acme_graph.ops["calendarView.delta"] > acme_reads
    with rt.factory() as session:
        results = session.scalars(
            select(Task.result).where(Task.kind == "calendar_sync", Task.state == "done")
        ).all()
    assert results and not [r for r in results if "not configured" in (r or "")]


@pytest.mark.parametrize("whose", ["north", "acme"])
def test_a_push_notice_for_a_clients_subscription_is_routed_to_it_and_read_in_its_tenant(
    two_tenants: tuple[Runtime, int, int],
    north_graph: GraphFake,
    acme_graph: GraphFake,
    whose: str,
) -> None:
    rt, acme, north = two_tenants
    own, other = (north, acme) if whose == "north" else (acme, north)
    own_fake, other_fake = (
        (north_graph, acme_graph) if whose == "north" else (acme_graph, north_graph)
    )
    (sync,) = syncs_of(rt, own)
    (other_sync,) = syncs_of(rt, other)
    before = {t.id for t in tasks_of(rt, other, "calendar_sync")}
    enqueued: list[int] = []
    rt.enqueue = enqueued.append
    body = {
        "value": [
            {
                "subscriptionId": sync.channel_id,
                "clientState": sync.channel_secret,
                "changeType": "updated",
                "resource": f"Users/{sync.calendar}/Events/AAMkAGI2",
            }
        ]
    }
    with TestClient(create_app(rt)) as client:
        answer = client.post("/webhooks/graph/calendar", json=body)
        assert answer.status_code == 202 and answer.json() == {"accepted": 1, "rejected": 0}
        # The other's subscription id with this one's secret is refused.
        body["value"][0]["subscriptionId"] = other_sync.channel_id
        refused = client.post("/webhooks/graph/calendar", json=body)
        assert refused.status_code == 401
    (task_id,) = enqueued
    with rt.factory() as session:
        task = session.get(Task, task_id)
        assert (task.organization_id, task.kind, task.subject_id) == (own, "calendar_sync", sync.id)
    reads = own_fake.ops["calendarView.delta"], other_fake.ops["calendarView.delta"]
    rt.enqueue = lambda task_id: None
    from automation.services.tasks import run_task

    run_task(rt, task_id)
    with rt.factory() as session:
        task = session.get(Task, task_id)
        assert task.state == TaskState.DONE and "states" in (task.result or ""), task.result
    # Read in its own tenant, never in the other's.
    assert own_fake.ops["calendarView.delta"] > reads[0]
    assert other_fake.ops["calendarView.delta"] == reads[1]
    assert {t.id for t in tasks_of(rt, other, "calendar_sync")} == before


# =========================================================================== cost


def test_the_tick_lists_the_organizations_once_and_stays_cheap_with_fifty(
    rt: Runtime, tmp_path: Path
) -> None:
    """Fifty organizations without providers of their own: a tick reads the organizations
    once and nothing per organization; whether a client has a calendar or an inbox of its
    own is asked of its runtime once a minute (or when an organization is added), its daily
    tasks on the first tick of the day."""
    from automation.services import loop

    start_acme(rt, tmp_path)
    with transaction(rt.factory) as session:
        for n in range(49):
            ensure_organization(session, f"client-{n:02}", f"Client {n}", rt.now())
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    def per_tick(rounds: int = 20) -> tuple[float, float]:
        statements.clear()
        started = time.perf_counter()
        for _ in range(rounds):
            tick(rt)
        return (time.perf_counter() - started) / rounds * 1000, len(statements) / rounds

    run_due(rt)
    assert len(organizations(rt)) == 50
    event.listen(rt.engine, "before_cursor_execute", record)
    try:
        tick(rt)
        steady_ms, steady = per_tick()
        assert [s for s in statements if "FROM organizations ORDER BY" in s] == [
            s for s in statements if "FROM organizations" in s
        ]  # the one listing a tick, no organization read one by one
        assert steady <= 10, statements[:20]
        rt.cache.pop(loop._CLIENTS)  # as when a minute has passed: every client asked again
        statements.clear()
        tick(rt)
        rechecks = sum("FROM organizations \nWHERE" in s for s in statements)
        assert rechecks == 49  # each client's runtime stamp, once
        recheck = len(statements)
    finally:
        event.remove(rt.engine, "before_cursor_execute", record)
    print(
        f"\ntick with 50 organizations: {steady_ms:.2f} ms and {steady:.0f} statements; "
        f"with the minutely recheck {recheck} statements"
    )
    with rt.factory() as session:
        planned = session.scalar(
            select(func.count(func.distinct(Task.organization_id))).where(Task.kind == "plan")
        )
    assert planned == 50
