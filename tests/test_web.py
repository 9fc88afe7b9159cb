"""The web app: provider webhooks and /healthz, on SQLite and PostgreSQL, and served for real.

The webhooks must only record work: every test runs with a calendar provider that fails the
test if touched, and checks the task rows (kind, key, subject, organization) and what was
handed to the workers.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from automation import audit
from automation.db import claim_task, migrate, transaction
from automation.models import AuditEntry, CalendarSync, Task, TaskState
from automation.people import ensure_organization
from automation.runtime import Runtime, build_runtime
from automation.settings import PROJECT_ROOT, Settings
from automation.web import STOP_GRACE, create_app, google_notice

GOOGLE_SECRET = "GoogleChannelToken-7fQ2-never-in-logs"
GRAPH_SECRET = "GraphClientState-Kx91-never-in-logs"
WRONG_SECRET = "WrongGuess-0000-also-never-in-logs"
GOOGLE_CHANNEL, GOOGLE_RESOURCE = "0b6c1a5e-2f7d-4e0b-9d7e-4c3f2a1b0c9d", "res-abc123"
GRAPH_SUBSCRIPTION = "7f105c7d-2dc5-4530-97cd-4e7ae6534c07"


class NoProviderCalls:
    """Stands in for the calendar adapter: a webhook must never call the provider inline."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the webhook touched the calendar provider (.{name})")


@dataclass
class Web:
    rt: Runtime
    client: TestClient
    enqueued: list[int]
    org: int
    google: int  # calendar_syncs ids
    graph: int


def add_sync(session, org: int, provider: str, calendar: str, channel: str, secret: str, now):  # type: ignore[no-untyped-def]
    row = CalendarSync(
        organization_id=org,
        provider=provider,
        calendar=calendar,
        channel_id=channel,
        channel_secret=secret,
        channel_resource=GOOGLE_RESOURCE if provider == "google" else f"/users/{calendar}/events",
        channel_expires_at=now + dt.timedelta(days=3),
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return row.id


@pytest.fixture
def web(rt) -> Web:  # type: ignore[no-untyped-def]
    migrate(rt.engine)
    now = rt.now()
    with transaction(rt.factory) as session:
        org = ensure_organization(session, rt.settings.organization, "Acme", now).id
        google = add_sync(
            session, org, "google", "boss@acme.test", GOOGLE_CHANNEL, GOOGLE_SECRET, now
        )
        graph = add_sync(
            session, org, "graph", "boss@acme.test", GRAPH_SUBSCRIPTION, GRAPH_SECRET, now
        )
    enqueued: list[int] = []
    rt.enqueue = enqueued.append
    rt.calendar = NoProviderCalls()
    with TestClient(create_app(rt)) as client:
        yield Web(rt, client, enqueued, org, google, graph)


def tasks(rt: Runtime, kind: str | None = None) -> list[Task]:
    with rt.factory() as session:
        query = select(Task).order_by(Task.id)
        if kind:
            query = query.where(Task.kind == kind)
        return list(session.scalars(query))


def calendar_tasks(rt: Runtime) -> list[Task]:
    return [t for t in tasks(rt) if t.kind.startswith("calendar_")]


def sync_row(rt: Runtime, sync_id: int) -> CalendarSync:
    with rt.factory() as session:
        row = session.get(CalendarSync, sync_id)
        assert row is not None
        return row


def google_headers(
    state: str = "exists",
    number: int | str | None = 2,
    token: str | None = GOOGLE_SECRET,
    channel: str = GOOGLE_CHANNEL,
    resource: str = GOOGLE_RESOURCE,
) -> dict[str, str]:
    headers = {
        "X-Goog-Channel-ID": channel,
        "X-Goog-Resource-ID": resource,
        "X-Goog-Resource-State": state,
        "X-Goog-Resource-URI": "https://www.googleapis.com/calendar/v3/calendars/boss/events",
        "X-Goog-Channel-Expiration": "Fri, 06 Mar 2026 06:00:00 GMT",
    }
    if token is not None:
        headers["X-Goog-Channel-Token"] = token
    if number is not None:
        headers["X-Goog-Message-Number"] = str(number)
    return headers


def google(web: Web, **kwargs: object) -> httpx.Response:
    return web.client.post("/webhooks/google/calendar", headers=google_headers(**kwargs))  # type: ignore[arg-type]


def graph_item(
    subscription: str = GRAPH_SUBSCRIPTION, client_state: str | None = GRAPH_SECRET, **extra: str
) -> dict[str, object]:
    item: dict[str, object] = {
        "subscriptionId": subscription,
        "subscriptionExpirationDateTime": "2026-03-05T06:00:00.0000000Z",
        "changeType": "updated",
        "resource": "Users/boss/Events/AAMkAGI2",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Event", "id": "AAMkAGI2"},
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        **extra,
    }
    if client_state is not None:
        item["clientState"] = client_state
    return item


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in (GOOGLE_SECRET, GRAPH_SECRET, WRONG_SECRET):
            assert secret not in text


# --------------------------------------------------------------------------- /healthz


def test_healthz_reports_the_database_and_the_broker_kind(web):
    response = web.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}, "broker": "stub"}


def test_healthz_is_503_naming_the_database_when_it_is_unreachable(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    password = "Pa55word-in-the-url"
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"postgresql+psycopg://nobody:{password}@127.0.0.1:9/none?connect_timeout=2",
        broker_url="redis://:redispass@127.0.0.1:9/0",
        organization="acme",
        secret_key="test-secret",
        config_dir=PROJECT_ROOT / "config",
        templates_dir=PROJECT_ROOT / "templates",
    )
    rt = build_runtime(settings)
    try:
        response = TestClient(create_app(rt)).get("/healthz")
    finally:
        rt.engine.dispose()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["broker"] == "redis"
    assert body["checks"]["database"].startswith("failed: ")
    for leak in (password, "redispass", "127.0.0.1", "nobody"):
        assert leak not in response.text and leak not in caplog.text


# --------------------------------------------------------------------------- Google


def test_google_sync_handshake_enqueues_nothing(web):
    response = google(web, state="sync", number=1)
    assert response.status_code == 200 and response.json() == {"result": "handshake"}
    assert calendar_tasks(web.rt) == [] and web.enqueued == []
    assert sync_row(web.rt, web.google).last_message_number is None


def test_google_exists_queues_one_incremental_sync_of_that_calendar(web, caplog):
    caplog.set_level(logging.DEBUG)
    response = google(web, state="exists", number=2)
    assert response.status_code == 200 and response.json() == {"result": "queued"}
    [task] = calendar_tasks(web.rt)
    assert task.kind == "calendar_sync" and task.subject_id == web.google
    assert task.organization_id == web.org and task.state == TaskState.PENDING
    assert task.key.startswith(f"calendar-sync:{web.google}:google:")
    assert task.due_at == web.rt.now()
    assert web.enqueued == [task.id]
    assert sync_row(web.rt, web.google).last_message_number == 2
    assert f"calendar sync {web.google} -> task {task.id}" in caplog.text
    assert_no_secret(caplog.text)


def test_google_not_exists_also_queues_a_sync(web):
    assert google(web, state="not_exists", number=5).json() == {"result": "queued"}
    assert [t.kind for t in calendar_tasks(web.rt)] == ["calendar_sync"]


def test_google_repeated_or_older_message_numbers_enqueue_nothing(web):
    assert google(web, number=7).json() == {"result": "queued"}
    first = list(web.enqueued)
    for number in (7, 3):  # a redelivery, then a late older one
        response = google(web, number=number)
        assert response.status_code == 200 and response.json() == {"result": "duplicate"}
    assert len(calendar_tasks(web.rt)) == 1 and web.enqueued == first
    assert sync_row(web.rt, web.google).last_message_number == 7


def test_google_burst_coalesces_but_a_notice_during_a_running_sync_is_not_lost(web):
    assert google(web, number=2).json() == {"result": "queued"}
    [waiting] = calendar_tasks(web.rt)
    # The first sync has not started: later notices ride on it.
    assert google(web, number=3).json() == {"result": "coalesced"}
    assert google(web, number=4).json() == {"result": "coalesced"}
    assert [t.id for t in calendar_tasks(web.rt)] == [waiting.id] and web.enqueued == [waiting.id]
    # Once a worker has claimed it, a new notice needs a sync of its own.
    with transaction(web.rt.factory) as session:
        assert claim_task(session, waiting.id, web.rt.now(), 300) is not None
    assert google(web, number=5).json() == {"result": "queued"}
    first, second = calendar_tasks(web.rt)
    assert first.id == waiting.id and first.state == TaskState.LEASED
    assert second.state == TaskState.PENDING and second.key != first.key
    assert web.enqueued == [first.id, second.id]
    assert sync_row(web.rt, web.google).last_message_number == 5


def test_google_notice_does_not_wait_behind_a_sync_that_failed_and_backs_off(web):
    assert google(web, number=2).json() == {"result": "queued"}
    [failed] = calendar_tasks(web.rt)
    with transaction(web.rt.factory) as session:  # as run_task leaves a retryable failure
        task = session.get(Task, failed.id)
        assert task is not None
        task.attempts, task.due_at = 1, web.rt.now() + dt.timedelta(minutes=30)
    assert google(web, number=3).json() == {"result": "queued"}
    first, second = calendar_tasks(web.rt)
    assert second.due_at == web.rt.now() and web.enqueued == [first.id, second.id]


def test_google_concurrent_redeliveries_of_one_message_queue_one_sync(web):
    results: list[str] = []
    barrier = threading.Barrier(8)

    def deliver() -> None:
        barrier.wait()
        outcome = google_notice(web.rt, GOOGLE_CHANNEL, GOOGLE_SECRET, GOOGLE_RESOURCE, "exists", 9)
        results.append(outcome.result)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == ["duplicate"] * 7 + ["queued"]
    assert len(calendar_tasks(web.rt)) == 1


def test_google_tasks_belong_to_the_organization_of_the_calendar(web):
    now = web.rt.now()
    with transaction(web.rt.factory) as session:
        other = ensure_organization(session, "other", "Other", now).id
        theirs = add_sync(
            session, other, "google", "x@other.test", "chan-other", "other-token", now
        )
    response = google(web, channel="chan-other", token="other-token")
    assert response.json() == {"result": "queued"}
    [task] = calendar_tasks(web.rt)
    assert (task.organization_id, task.subject_id) == (other, theirs)


@pytest.mark.parametrize(
    "change",
    [
        {"token": WRONG_SECRET},
        {"token": None},
        {"token": GOOGLE_SECRET[:-1]},
        {"token": GRAPH_SECRET},  # another channel's secret
        {"resource": "res-someone-else"},
    ],
    ids=["wrong-token", "no-token", "prefix-of-token", "other-secret", "wrong-resource"],
)
def test_google_bad_token_or_resource_is_401_without_a_task_or_a_logged_secret(web, caplog, change):
    caplog.set_level(logging.DEBUG)
    for state in ("exists", "sync"):
        response = google(web, state=state, **change)
        assert response.status_code == 401
        assert_no_secret(response.text)
    assert calendar_tasks(web.rt) == [] and web.enqueued == []
    assert sync_row(web.rt, web.google).last_message_number is None
    assert "refused" in caplog.text  # it was logged, and without the secrets:
    assert_no_secret(caplog.text)


def test_google_unknown_channel_is_answered_200_and_stopped(web):
    response = google(web, channel="chan-forgotten", resource="res-forgotten", number=12)
    assert response.status_code == 200 and response.json() == {"result": "unknown-channel"}
    [stop] = calendar_tasks(web.rt)
    assert stop.kind == "calendar_channel_stop"
    assert stop.key == "calendar-channel-stop:chan-forgotten"
    assert stop.organization_id == web.org
    # Due after a grace period (a channel being opened may not be committed yet): the tick
    # sends it, not this request.
    assert stop.due_at == web.rt.now() + STOP_GRACE and web.enqueued == []
    with web.rt.factory() as session:
        entry = session.get(AuditEntry, stop.subject_id)
        assert entry is not None and entry.organization_id == web.org
        assert entry.action == "calendar.channel_unknown"
        assert entry.data["channel_id"] == "chan-forgotten"
        assert entry.data["resource_id"] == "res-forgotten"
        assert audit.verify_chain(session, web.org) == (True, None)
    # Google keeps notifying until it is stopped: still one task, one audit entry.
    assert google(web, channel="chan-forgotten", resource="res-forgotten", number=13).is_success
    assert len(calendar_tasks(web.rt)) == 1
    with web.rt.factory() as session:
        entries = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "calendar.channel_unknown")
        ).all()
    assert len(entries) == 1


def test_google_handshake_of_an_unknown_channel_stops_nothing(web):
    # A channel we are opening right now says "sync" before its row is committed.
    response = google(web, state="sync", number=1, channel="chan-being-opened")
    assert response.status_code == 200
    assert calendar_tasks(web.rt) == []


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X-Goog-Channel-ID": None}, "X-Goog-Channel-ID"),
        ({"X-Goog-Resource-ID": None}, "X-Goog-Resource-ID"),
        ({"X-Goog-Resource-State": "bogus"}, "X-Goog-Resource-State"),
        ({"X-Goog-Message-Number": None}, "X-Goog-Message-Number"),
        ({"X-Goog-Message-Number": "twelve"}, "X-Goog-Message-Number"),
        ({"X-Goog-Channel-ID": "c" * 65}, "X-Goog-Channel-ID"),
        ({"X-Goog-Channel-Token": WRONG_SECRET * 10}, "X-Goog-Channel-Token"),
    ],
    ids=[
        "no-channel",
        "no-resource",
        "bad-state",
        "no-number",
        "bad-number",
        "long-channel",
        "long-token",
    ],
)
def test_google_malformed_notice_is_400_with_a_clear_message(web, headers, message):
    sent = google_headers()
    for name, value in headers.items():
        if value is None:
            sent.pop(name)
        else:
            sent[name] = value
    response = web.client.post("/webhooks/google/calendar", headers=sent)
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert_no_secret(response.text)  # a refused token is never echoed
    assert calendar_tasks(web.rt) == []


# --------------------------------------------------------------------------- Graph

TOKENS = [
    "Validation: Testing client application reachability for subscription Request-Id: "
    "25b6b6d2-4e5b-4b1f-9a3c-1c2d3e4f5a6b",
    "a+b/c?d=e&f=g%h #é ü",  # '+', '&', '=', '%', '#' and non-ASCII must survive
]


GRAPH_PATHS = [
    "/webhooks/graph/calendar",
    "/webhooks/graph/lifecycle",
    "/webhooks/graph/calendar/lifecycle",  # the Graph adapter's default lifecycle URL
]
LIFECYCLE_PATHS = GRAPH_PATHS[1:]


@pytest.mark.parametrize("path", GRAPH_PATHS)
@pytest.mark.parametrize("token", TOKENS, ids=["graph-style", "awkward"])
@pytest.mark.parametrize("encode", [quote_plus, quote], ids=["plus", "percent"])
def test_graph_validation_echoes_the_decoded_token_as_text_plain(web, path, token, encode):
    response = web.client.post(
        f"{path}?validationToken={encode(token, safe='')}",
        content=b"",
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "text/plain"
    assert response.text == token
    assert calendar_tasks(web.rt) == []


def test_graph_notification_with_the_right_client_state_is_202_and_queued(web, caplog):
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    response = web.client.post("/webhooks/graph/calendar", json={"value": [graph_item()]})
    elapsed = time.monotonic() - started
    assert response.status_code == 202 and response.json() == {"accepted": 1, "rejected": 0}
    assert elapsed < 3.0  # Graph's documented deadline (it throttles slow endpoints)
    [task] = calendar_tasks(web.rt)
    assert (task.kind, task.subject_id, task.organization_id) == (
        "calendar_sync",
        web.graph,
        web.org,
    )
    assert task.key.startswith(f"calendar-sync:{web.graph}:graph:")
    assert web.enqueued == [task.id]
    assert_no_secret(caplog.text)


@pytest.mark.parametrize(
    "item",
    [
        graph_item(client_state=WRONG_SECRET),
        graph_item(client_state=None),
        graph_item(client_state=GOOGLE_SECRET),  # the other provider's secret
        graph_item(subscription="00000000-0000-0000-0000-000000000000"),
        graph_item(subscription=GOOGLE_CHANNEL, client_state=GOOGLE_SECRET),  # a Google row
    ],
    ids=["wrong", "missing", "other-secret", "unknown-subscription", "google-row"],
)
@pytest.mark.parametrize("path", GRAPH_PATHS)
def test_graph_bad_client_state_is_401_without_a_task_or_a_logged_secret(web, caplog, item, path):
    caplog.set_level(logging.DEBUG)
    if path.endswith("lifecycle"):
        item = {**item, "lifecycleEvent": "subscriptionRemoved"}
    response = web.client.post(path, json={"value": [item, item]})
    assert response.status_code == 401
    assert calendar_tasks(web.rt) == [] and web.enqueued == []
    assert "refused" in caplog.text
    assert_no_secret(response.text, caplog.text)


def test_graph_mixed_batch_processes_only_the_good_items(web, caplog):
    caplog.set_level(logging.DEBUG)
    now = web.rt.now()
    with transaction(web.rt.factory) as session:
        other = add_sync(session, web.org, "graph", "ana@acme.test", "sub-ana", "ana-state", now)
    body = {
        "value": [
            graph_item(client_state=WRONG_SECRET),
            graph_item(),
            graph_item(),  # the same calendar twice in one batch: one sync
            graph_item(subscription="sub-ana", client_state=GRAPH_SECRET),  # wrong calendar
        ]
    }
    response = web.client.post("/webhooks/graph/calendar", json=body)
    assert response.status_code == 202 and response.json() == {"accepted": 2, "rejected": 2}
    assert [(t.kind, t.subject_id) for t in calendar_tasks(web.rt)] == [
        ("calendar_sync", web.graph)
    ]
    assert other not in [t.subject_id for t in calendar_tasks(web.rt)]
    assert_no_secret(caplog.text)


def test_graph_notifications_coalesce_until_the_sync_starts(web):
    post = {"value": [graph_item()]}
    assert web.client.post("/webhooks/graph/calendar", json=post).status_code == 202
    assert web.client.post("/webhooks/graph/calendar", json=post).status_code == 202
    [waiting] = calendar_tasks(web.rt)
    with transaction(web.rt.factory) as session:
        claim_task(session, waiting.id, web.rt.now(), 300)
    assert web.client.post("/webhooks/graph/calendar", json=post).status_code == 202
    assert len(calendar_tasks(web.rt)) == 2 and len(web.enqueued) == 2


@pytest.mark.parametrize(
    ("event", "kinds"),
    [
        ("reauthorizationRequired", ["calendar_channel_renew"]),
        ("subscriptionRemoved", ["calendar_channel_renew", "calendar_sync"]),
        ("missed", ["calendar_sync"]),
        ("somethingNew", []),  # a future event: accepted, nothing to do
    ],
)
@pytest.mark.parametrize("path", LIFECYCLE_PATHS)
def test_graph_lifecycle_events_create_the_right_tasks(web, event, kinds, path):
    item = {
        "subscriptionId": GRAPH_SUBSCRIPTION,
        "subscriptionExpirationDateTime": "2026-03-05T06:00:00.0000000Z",
        "tenantId": "84bd8158-6d4d-4958-8b9f-9d6445542f95",
        "clientState": GRAPH_SECRET,
        "lifecycleEvent": event,
    }
    response = web.client.post(path, json={"value": [item]})
    assert response.status_code == 202 and response.json() == {"accepted": 1, "rejected": 0}
    created = calendar_tasks(web.rt)
    assert [t.kind for t in created] == kinds
    assert all(t.subject_id == web.graph and t.organization_id == web.org for t in created)
    prefixes = {
        "calendar_sync": "calendar-sync",
        "calendar_channel_renew": "calendar-channel-renew",
    }
    for t in created:
        assert t.key.startswith(f"{prefixes[t.kind]}:{web.graph}:lifecycle:")
    assert web.enqueued == [t.id for t in created]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty body"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", '"value"'),
        (b'{"values": []}', '"value"'),
        (b'{"value": []}', "value"),
        (b'{"value": ["x"]}', "value.0"),
        (b'{"value": [{"subscriptionId": 5}]}', "subscriptionId"),
        (b'{"value": {"subscriptionId": "a"}}', "value"),
    ],
)
@pytest.mark.parametrize("path", GRAPH_PATHS)
def test_graph_malformed_body_is_400_with_a_clear_message(web, path, body, message):
    response = web.client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert calendar_tasks(web.rt) == []


def test_graph_oversized_body_is_refused(web):
    huge = b'{"value": [' + b'{"subscriptionId": "x"},' * 60_000 + b'{"a": 1}]}'
    response = web.client.post(
        "/webhooks/graph/calendar", content=huge, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert calendar_tasks(web.rt) == []


def test_a_broker_failure_still_answers_success_and_keeps_the_task(web):
    def broken(task_id: int) -> None:
        raise ConnectionError("broker down")

    web.rt.enqueue = broken
    response = web.client.post("/webhooks/graph/calendar", json={"value": [graph_item()]})
    assert response.status_code == 202
    [task] = calendar_tasks(web.rt)
    assert task.state == TaskState.PENDING and task.due_at <= web.rt.now()  # the tick finds it


def test_the_openapi_description_lists_the_webhooks(web):
    spec = web.client.get("/openapi.json").json()
    assert {"/healthz", "/webhooks/google/calendar", "/webhooks/graph/calendar"} <= set(
        spec["paths"]
    )
    google_params = {
        p["name"] for p in spec["paths"]["/webhooks/google/calendar"]["post"]["parameters"]
    }
    assert {"X-Goog-Channel-ID", "X-Goog-Channel-Token", "X-Goog-Message-Number"} <= google_params
    body = spec["paths"]["/webhooks/graph/lifecycle"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert "lifecycleEvent" in schema["properties"]["value"]["items"]["properties"]


# --------------------------------------------------------------------------- real processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """`automation …` as a real process; its stderr is collected as it comes."""

    def __init__(self, *args: str, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATION_")}
        env.update({"AUTOMATION_DATA_DIR": str(tmp_path / "data"), "AUTOMATION_SECRET_KEY": "t"})
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "automation.cli", *args],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.lines.append(line.decode(errors="replace"))

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr:
                return
            if self.popen.poll() is not None:
                self.reader.join(5)
                raise AssertionError(f"exited with {self.popen.returncode}: {self.stderr}")
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} on stderr within {timeout:.0f} s: {self.stderr}")

    def healthz(self, port: int) -> httpx.Response:
        self.wait_for_line(f"web app on http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def wait(self, timeout: float = 120) -> int:
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        self.reader.join(5)
        return code

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.wait(60)


def test_automation_web_serves_healthz_and_the_webhooks_over_http(tmp_path):
    port = free_port()
    process = Process("web", "--port", str(port), tmp_path=tmp_path)
    try:
        health = process.healthz(port)
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "checks": {"database": "ok"}, "broker": "stub"}
        token = TOKENS[1]
        echo = httpx.post(
            f"http://127.0.0.1:{port}/webhooks/graph/calendar?validationToken={quote_plus(token)}",
            timeout=10,
        )
        assert echo.status_code == 200 and echo.text == token
        unknown = httpx.post(
            f"http://127.0.0.1:{port}/webhooks/graph/calendar",
            json={"value": [graph_item()]},
            timeout=10,
        )
        assert unknown.status_code == 401  # the migrated, empty database knows no subscription
    finally:
        code = process.stop()
    assert code == 0, process.stderr  # SIGTERM is a clean shutdown


def test_automation_run_serves_the_web_app_beside_the_tick(tmp_path):
    """On the embedded default, `automation run` serves the webhooks and the HR console: an
    account added with the CLI signs in over HTTP and opens the console's pages."""
    port = free_port()
    process = Process("run", "--port", str(port), tmp_path=tmp_path)
    try:
        assert process.healthz(port).status_code == 200
        assert "in-process worker" in process.stderr
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATION_")}
        env.update({"AUTOMATION_DATA_DIR": str(tmp_path / "data"), "AUTOMATION_SECRET_KEY": "t"})
        password = "a long enough password"
        added = subprocess.run(
            [sys.executable, "-m", "automation.cli", "console", "account", "add",
             "hr@acme.test", "--role", "hr_admin", "--password-stdin"],
            input=password.encode(), env=env, cwd=PROJECT_ROOT, capture_output=True, timeout=60,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as browser:
            form = browser.get("/console/sign-in")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
            signed = browser.post(
                "/console/sign-in",
                data={"email": "hr@acme.test", "password": password, "csrf": csrf},
            )
            assert signed.status_code == 303 and signed.headers["location"] == "/console/"
            for page in ("/console/", "/console/people", "/console/queue", "/console/templates"):
                answer = browser.get(page)
                assert answer.status_code == 200, (page, answer.text[:300])
                assert "Sign out" in answer.text
    finally:
        code = process.stop()
    assert code == 0, process.stderr


def test_automation_run_refuses_a_busy_port_and_runs_without_the_web_app_on_port_0(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = Process("run", "--port", str(taken.getsockname()[1]), tmp_path=tmp_path)
        assert busy.wait() == 78
    assert "--port 0" in busy.stderr
    quiet = Process("run", "--port", "0", tmp_path=tmp_path)
    try:
        quiet.wait_for_line("Ctrl-C stops")
        assert quiet.popen.poll() is None  # the tick keeps running
    finally:
        code = quiet.stop()
    assert code == 0, quiet.stderr
    assert "running on" in quiet.stderr and "web app" not in quiet.stderr
