"""Metrics, the job log line, /metrics and /healthz (issue 7, observability).

The counters live in one process-wide registry, so every test compares values before and
after what it does rather than absolute numbers.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import httpx
import pytest
import requests
import responses
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from automation import observability
from automation.adapters.http import Retry, send
from automation.db import transaction
from automation.errors import PermanentProviderError, TransientProviderError
from automation.models import InboundMessage, Task, TaskState
from automation.runtime import build_runtime
from automation.services import tasks
from automation.services.loop import run_due
from automation.settings import PROJECT_ROOT, Settings
from automation.web import create_app
from tests.conftest import RABBITMQ_URL, REDIS_URL, require_service, start_organization

LOCAL = ("127.0.0.1", 50000)  # a TestClient that looks like a scraper on this machine
SECRETS = ("abc123", "pw-s3cret", "hunter2", "eyJhbGciOiJIUzI1NiJ9")


def value(name: str, **labels: str) -> float:
    """A sample's current value in our registry (0 when it has not been created yet)."""
    found = observability.REGISTRY.get_sample_value(name, labels)
    return found or 0.0


def scrape(client: TestClient, **headers: str) -> dict[str, list]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f.samples for f in text_string_to_metric_families(response.text)}
    return families


def sample(families: dict[str, list], family: str, name: str | None = None, **labels: str):
    matches = [
        s.value
        for s in families[family]
        if s.name == (name or family) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (family, labels, families[family])
    return matches[0]


def jobs_done(families: dict[str, list], kind: str) -> float:
    return sample(families, "automation_jobs", "automation_jobs_total", kind=kind, outcome="done")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def org(rt, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path)


@pytest.fixture
def test_handlers() -> Iterator[dict[str, list[str]]]:
    """Task kinds whose handlers fail, defer or succeed on demand; removed afterwards."""
    calls: dict[str, list[str]] = {"obs_ok": [], "obs_fail": [], "obs_defer": [], "obs_perm": []}

    def ok(rt, session, task):  # type: ignore[no-untyped-def]
        calls["obs_ok"].append(task.key)
        return "fine"

    def fail(rt, session, task):  # type: ignore[no-untyped-def]
        calls["obs_fail"].append(task.key)
        raise RuntimeError(
            "POST failed: Authorization: Bearer abc123 via postgresql://u:pw-s3cret@h/db "
            "password=hunter2 token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig "
            f"key {rt.settings.secret_key}\nDear Ana, here is the whole email body"
        )

    def defer(rt, session, task):  # type: ignore[no-untyped-def]
        calls["obs_defer"].append(task.key)
        raise tasks.Deferred(rt.now() + dt.timedelta(minutes=5), "daily sending limit reached")

    def permanent(rt, session, task):  # type: ignore[no-untyped-def]
        calls["obs_perm"].append(task.key)
        raise PermanentProviderError("Graph POST /me/events: HTTP 400 invalidRequest")

    handlers = {"obs_ok": ok, "obs_fail": fail, "obs_defer": defer, "obs_perm": permanent}
    tasks.HANDLERS.update(handlers)
    try:
        yield calls
    finally:
        for kind in handlers:
            tasks.HANDLERS.pop(kind, None)


def new_task(rt, kind: str, key: str) -> int:  # type: ignore[no-untyped-def]
    from automation.services.loop import bootstrap

    org_id = bootstrap(rt)
    with transaction(rt.factory) as session:
        return tasks.create_task(session, org_id, kind, key, 0, rt.now(), rt.now()).id


def job_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "automation.jobs"]


# --------------------------------------------------------------------------- job metrics


def test_every_task_run_by_the_loop_is_counted_timed_and_logged(rt, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="automation.jobs")
    kinds = ("plan", "retention", "calendar_write", "agenda", "send")
    before_done = {k: value("automation_jobs_total", kind=k, outcome="done") for k in kinds}
    before_count = {k: value("automation_job_duration_seconds_count", kind=k) for k in kinds}
    start_organization(rt, tmp_path)
    with rt.factory() as session:
        done = dict(
            session.execute(
                select(Task.kind, func.count())
                .where(Task.state == TaskState.DONE)
                .group_by(Task.kind)
            ).all()
        )
    assert done.get("plan") == 1  # the loop really ran something
    for kind in kinds:
        ran = value("automation_jobs_total", kind=kind, outcome="done") - before_done[kind]
        timed = value("automation_job_duration_seconds_count", kind=kind) - before_count[kind]
        assert ran == done.get(kind, 0), kind
        assert timed == ran, kind
    assert value("automation_job_duration_seconds_sum", kind="plan") > 0
    lines = [r.job for r in job_lines(caplog)]  # type: ignore[attr-defined]
    assert sum(1 for f in lines if f["outcome"] == "done") == sum(done.values())
    plan_line = next(f for f in lines if f["kind"] == "plan")
    assert plan_line["organization_id"] and plan_line["attempt"] == 1
    assert plan_line["duration_ms"] >= 0 and "error" not in plan_line


def test_outcomes_retries_and_failures_are_counted(rt, clock, test_handlers, caplog):
    caplog.set_level(logging.INFO, logger="automation.jobs")
    ok = new_task(rt, "obs_ok", "obs:ok")
    fail = new_task(rt, "obs_fail", "obs:fail")
    defer = new_task(rt, "obs_defer", "obs:defer")
    perm = new_task(rt, "obs_perm", "obs:perm")

    def count(kind: str, outcome: str) -> float:
        return value("automation_jobs_total", kind=kind, outcome=outcome)

    before = {
        (k, o): count(k, o)
        for k in ("obs_ok", "obs_fail", "obs_defer", "obs_perm")
        for o in observability.JOB_OUTCOMES
    }
    retries_before = value("automation_job_retries_total", kind="obs_fail")
    lag_before = value("automation_job_lag_seconds_count", kind="obs_ok")

    assert tasks.run_task(rt, ok) == "fine"
    assert tasks.run_task(rt, ok) == "not-claimed"  # a second delivery of the same message
    assert tasks.run_task(rt, defer) == "deferred"
    assert tasks.run_task(rt, perm) == "failed"  # a 4xx is not retried
    assert tasks.run_task(rt, fail) == "retry"
    clock.advance(dt.timedelta(hours=2))  # past the backoff
    assert tasks.run_task(rt, fail) == "retry"

    def delta(kind: str, outcome: str) -> float:
        return count(kind, outcome) - before[(kind, outcome)]

    assert delta("obs_ok", "done") == 1 and delta("obs_ok", "not-claimed") == 1
    assert delta("obs_defer", "deferred") == 1 and delta("obs_defer", "done") == 0
    assert delta("obs_perm", "failed") == 1
    assert delta("obs_fail", "retry") == 2 and delta("obs_fail", "failed") == 0
    # The second attempt is a retry; the first is not.
    assert value("automation_job_retries_total", kind="obs_fail") - retries_before == 1
    assert value("automation_job_lag_seconds_count", kind="obs_ok") - lag_before == 1
    assert len(test_handlers["obs_fail"]) == 2

    outcomes = [(r.job["kind"], r.job["outcome"], r.levelname) for r in job_lines(caplog)]  # type: ignore[attr-defined]
    assert ("obs_ok", "not-claimed", "INFO") in outcomes
    assert ("obs_defer", "deferred", "INFO") in outcomes
    assert ("obs_perm", "failed", "ERROR") in outcomes
    assert outcomes.count(("obs_fail", "retry", "WARNING")) == 2
    deferred = next(r.job for r in job_lines(caplog) if r.job["outcome"] == "deferred")  # type: ignore[attr-defined]
    assert deferred["reason"] == "daily sending limit reached" and deferred["deferred_until"]

    # Once max_attempts is reached the task fails for good.
    while True:
        clock.advance(dt.timedelta(hours=2))
        result = tasks.run_task(rt, fail)
        if result != "retry":
            break
    assert result == "failed" and delta("obs_fail", "failed") == 1
    assert len(test_handlers["obs_fail"]) == rt.settings.max_attempts


def test_the_json_job_line_has_the_ids_and_outcome_and_no_secret(rt, test_handlers, caplog):
    caplog.set_level(logging.INFO, logger="automation.jobs")
    task_id = new_task(rt, "obs_fail", "obs:fail-json")
    assert tasks.run_task(rt, task_id) == "retry"
    [record] = [r for r in job_lines(caplog) if r.job["task_id"] == task_id]  # type: ignore[attr-defined]
    line = observability.JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    with rt.factory() as session:
        org_id = session.get(Task, task_id).organization_id  # type: ignore[union-attr]
    assert data["event"] == "job" and data["logger"] == "automation.jobs"
    assert data["task_id"] == task_id and data["kind"] == "obs_fail"
    assert data["organization_id"] == org_id and data["attempt"] == 1
    assert data["outcome"] == "retry" and data["level"] == "WARNING"
    assert isinstance(data["duration_ms"], int | float) and data["duration_ms"] >= 0
    assert data["error_type"] == "RuntimeError"
    assert data["error"].startswith("POST failed: Authorization: ***")
    assert "postgresql://***@h/db" in data["error"]
    # No secret and no body, in the JSON line, in the text line, or in the record's message.
    for text in (line, record.getMessage(), caplog.text):
        for secret in (*SECRETS, rt.settings.secret_key, "Dear Ana", "email body"):
            assert secret not in text, (secret, text)
    # The error stored on the task keeps its whole text for the operator (not a log).
    with rt.factory() as session:
        assert "Dear Ana" in (session.get(Task, task_id).last_error or "")  # type: ignore[union-attr]


def test_log_format_json_is_opt_in(tmp_path):
    logger = logging.getLogger("tests.observability.opt_in")
    logger.propagate = False
    handler = logging.StreamHandler(stream := io.StringIO())
    jobs_level = observability.jobs_log.level
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert observability.configure_logging(SimpleNamespace(), logger) == "text"
        assert observability.configure_logging(SimpleNamespace(log_format="text"), logger) == "text"
        logger.warning("plain password=hunter2")
        assert stream.getvalue() == "WARNING plain password=hunter2\n"  # untouched
        settings = SimpleNamespace(log_format="json", smtp_password="Sm7p-pass")
        assert observability.configure_logging(settings, logger) == "json"
        logger.warning("login with Sm7p-pass failed, password=hunter2")
        try:
            raise ValueError("connect to amqp://guest:pw-s3cret@mq/ failed")
        except ValueError:
            logger.exception("broker down")
        lines = stream.getvalue().splitlines()[1:]
        first, second = (json.loads(x) for x in lines[:1] + [lines[-1]])
        assert first["level"] == "WARNING" and first["logger"] == logger.name
        assert first["message"] == "login with *** failed, password=***"
        assert second["error_type"] == "ValueError" and "amqp://***@mq/" in second["traceback"]
        assert "Sm7p-pass" not in stream.getvalue() and "pw-s3cret" not in stream.getvalue()
    finally:
        logger.removeHandler(handler)
        observability.jobs_log.setLevel(jobs_level)


@pytest.mark.parametrize(
    ("text", "gone", "kept"),
    [
        ("Authorization: Bearer abc123", "abc123", "Authorization"),
        ("{'Authorization': 'Basic dXNlcjpwYXNz'}", "dXNlcjpwYXNz", "Authorization"),
        ("headers Proxy-Authorization=Token zz9top", "zz9top", "Proxy-Authorization"),
        ("sent with bearer abc123.def", "abc123", "sent with"),
        ("postgresql+psycopg://u:pw-s3cret@db.internal:5432/app", "pw-s3cret", "db.internal"),
        ("redis://:pw-s3cret@cache:6379/0", "pw-s3cret", "cache:6379"),
        ("https://ghp_T0kenValue@github.com/x", "ghp_T0kenValue", "github.com/x"),
        ('{"client_secret": "hunter2", "ok": 1}', "hunter2", '"ok": 1'),
        ("host=db password=hunter2 user=app", "hunter2", "user=app"),
        ("GET /cb?code=4/0Ab_xyz&state=1", "4/0Ab_xyz", "state=1"),
        ("id token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln here", "eyJhbGci", "here"),
        ("X-Goog-Channel-Token: hunter2", "hunter2", "X-Goog-Channel-Token"),
        ("Google token: still failing after 6 attempts (HTTP 503)", "", "still failing"),
    ],
)
def test_scrub_removes_credentials_and_keeps_the_rest(text: str, gone: str, kept: str):
    cleaned = observability.scrub(text)
    if gone:
        assert gone not in cleaned
    assert kept in cleaned


def test_error_message_is_the_first_line_cut_short():
    exc = RuntimeError("x" * 500 + "\nSubject: secret plan\n\nDear Ana, body")
    message = observability.error_message(exc)
    assert len(message) <= observability.MESSAGE_MAX + 1 and "Dear Ana" not in message
    assert observability.error_message(RuntimeError("")) == ""


# --------------------------------------------------------------------------- provider calls


@responses.activate
def test_provider_calls_retries_and_rate_limits_are_counted():
    url = "https://graph.microsoft.com/v1.0/me/events"
    responses.add(responses.GET, url, status=429, headers={"Retry-After": "0"})
    responses.add(
        responses.GET,
        url,
        status=403,
        json={"error": {"errors": [{"reason": "rateLimitExceeded"}]}},
    )
    responses.add(responses.GET, url, status=200, json={"value": []})
    waits: list[float] = []
    retry = Retry(sleep=waits.append, base_seconds=0.01)

    def counts() -> dict[str, float]:
        return {
            "2xx": value("automation_provider_calls_total", provider="graph", status_class="2xx"),
            "4xx": value("automation_provider_calls_total", provider="graph", status_class="4xx"),
            "5xx": value("automation_provider_calls_total", provider="graph", status_class="5xx"),
            "limited": value("automation_provider_rate_limited_total", provider="graph"),
            "retries": value("automation_provider_retries_total", provider="graph"),
            "waited": value("automation_provider_retry_wait_seconds_total", provider="graph"),
        }

    before = counts()
    response = send(requests.Session(), retry, "GET", url, what="Graph GET /me/events")
    assert response.status_code == 200
    after = counts()
    grew = {k: after[k] - before[k] for k in after}
    assert grew["2xx"] == 1 and grew["4xx"] == 2 and grew["5xx"] == 0
    assert grew["limited"] == 2 and grew["retries"] == 2 == retry.retries
    assert grew["waited"] == pytest.approx(sum(waits)) and grew["waited"] > 0
    # An adapter retrying batch items itself reports them: counted as well.
    retry.retried(3, 1.5)
    assert retry.retries == 5
    assert value("automation_provider_retries_total", provider="graph") - after["retries"] == 3
    assert (
        value("automation_provider_retry_wait_seconds_total", provider="graph") - after["waited"]
        == 1.5
    )


@responses.activate
def test_provider_failures_count_by_status_class_and_network_errors():
    url = "http://caldav.test/cal/x.ics"
    responses.add(responses.PUT, url, status=503)
    responses.add(responses.PUT, url, status=503)
    responses.add(responses.DELETE, url, body=requests.ConnectionError("boom"))
    retry = Retry(sleep=lambda s: None, max_attempts=2)
    five = value("automation_provider_calls_total", provider="caldav", status_class="5xx")
    net = value("automation_provider_calls_total", provider="caldav", status_class="network")
    with pytest.raises(TransientProviderError):
        send(requests.Session(), retry, "PUT", url, what="CalDAV PUT /cal/x.ics")
    with pytest.raises(TransientProviderError):
        send(requests.Session(), retry, "DELETE", url, what="CalDAV DELETE /cal/x.ics")
    calls = "automation_provider_calls_total"
    assert value(calls, provider="caldav", status_class="5xx") == five + 2
    assert value(calls, provider="caldav", status_class="network") == net + 2
    # An unknown description never makes a new label value.
    assert observability.provider_of("something https://x.test/") == "other"
    assert observability.provider_of("Gmail messages.send") == "gmail"


# --------------------------------------------------------------------------- /metrics


def test_metrics_endpoint_serves_jobs_and_database_gauges(rt, org, clock):
    client = TestClient(create_app(rt), client=LOCAL)
    families = scrape(client)
    assert sample(families, "automation_metrics_database_up") == 1
    assert jobs_done(families, "plan") >= 1
    duration = "automation_job_duration_seconds"
    assert sample(families, duration, f"{duration}_count", kind="plan") >= 1
    assert "process_cpu_seconds" in families  # the process collector is in our registry

    # The task gauges match the table, and nothing is due right after the loop ran.
    with rt.factory() as session:
        pending = dict(
            session.execute(
                select(Task.kind, func.count())
                .where(Task.state == TaskState.PENDING)
                .group_by(Task.kind)
            ).all()
        )
    assert pending  # agendas and follow-ups are planned ahead
    for kind, n in pending.items():
        assert sample(families, "automation_tasks", state="pending", kind=kind) == n
    assert sample(families, "automation_tasks", state="failed", kind="send") == 0
    assert sum(s.value for s in families["automation_tasks_due"]) == 0
    assert sample(families, "automation_tasks_oldest_due_seconds") == 0

    # A week later, without running anything, work is due and the oldest has waited.
    clock.advance(dt.timedelta(days=7))
    with rt.factory() as session:
        due = dict(
            session.execute(
                select(Task.kind, func.count())
                .where(Task.state == TaskState.PENDING, Task.due_at <= rt.now())
                .group_by(Task.kind)
            ).all()
        )
        oldest = session.scalar(
            select(func.min(Task.due_at)).where(
                Task.state == TaskState.PENDING, Task.due_at <= rt.now()
            )
        )
    assert due and oldest is not None
    families = scrape(client)
    for kind, n in due.items():
        assert sample(families, "automation_tasks_due", kind=kind) == n
    assert sample(families, "automation_tasks_oldest_due_seconds") == pytest.approx(
        (rt.now() - oldest).total_seconds()
    )

    # A message from nowhere is kept and quarantined: the gauge counts it.
    assert sample(families, "automation_inbound_not_recorded_messages", state="quarantined") == 0
    rt.inbox.deliver(b"\x00\xff garbage that is not an email at all", "garbage")
    run_due(rt)
    with rt.factory() as session:
        quarantined = session.scalar(
            select(func.count())
            .select_from(InboundMessage)
            .where(InboundMessage.state == "quarantined")
        )
    assert quarantined == 1
    families = scrape(client)
    assert sample(families, "automation_inbound_not_recorded_messages", state="quarantined") == 1
    assert sample(families, "automation_inbound_not_recorded_messages", state="bounced") == 0


def test_metrics_scrape_survives_a_database_that_is_down(tmp_path):
    rt = build_runtime(
        Settings(
            data_dir=tmp_path / "data",
            database_url="postgresql+psycopg://u:pw-s3cret@127.0.0.1:9/x?connect_timeout=2",
            organization="acme",
            secret_key="test-secret",
            config_dir=PROJECT_ROOT / "config",
            templates_dir=PROJECT_ROOT / "templates",
        )
    )
    try:
        response = TestClient(create_app(rt), client=LOCAL).get("/metrics")
    finally:
        rt.engine.dispose()
    assert response.status_code == 200 and "pw-s3cret" not in response.text
    families = {f.name: f.samples for f in text_string_to_metric_families(response.text)}
    assert sample(families, "automation_metrics_database_up") == 0
    assert "automation_tasks" not in families


def test_metrics_are_for_this_machine_only_unless_a_token_is_set(rt, org):
    app = create_app(rt)
    remote = TestClient(app, client=("203.0.113.9", 40000))
    refused = remote.get("/metrics")
    assert refused.status_code == 403 and "metrics_token" in refused.text
    assert TestClient(app, client=("::1", 40000)).get("/metrics").status_code == 200

    object.__setattr__(rt.settings, "metrics_token", "m3trics-t0ken")  # the proposed setting
    try:
        for client in (remote, TestClient(app, client=LOCAL)):
            missing = client.get("/metrics")
            assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
            wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and "m3trics-t0ken" not in wrong.text
            scrape(client, Authorization="Bearer m3trics-t0ken")
    finally:
        object.__delattr__(rt.settings, "metrics_token")


def test_metrics_speak_openmetrics_when_asked(rt, org):
    client = TestClient(create_app(rt), client=LOCAL)
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_a_worker_process_serves_its_metrics_on_the_next_free_port():
    port = free_port()
    first = observability.start_metrics_server("127.0.0.1", port)
    second = observability.serve_worker_metrics(
        SimpleNamespace(metrics_port=port, metrics_host="127.0.0.1", metrics_token="w0rker-tok")
    )
    assert first is not None and second is not None
    try:
        assert first.server_port == port and second.server_port > port
        observability.job_finished(
            task_id=1, kind="obs_worker", organization_id=1, attempt=1, outcome="done", seconds=0.1
        )
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert body.status_code == 200
        families = {f.name: f.samples for f in text_string_to_metric_families(body.text)}
        assert jobs_done(families, "obs_worker") >= 1
        assert "automation_tasks" not in families  # database gauges: the web app's only
        locked = httpx.get(f"http://127.0.0.1:{second.server_port}/metrics", timeout=5)
        assert locked.status_code == 401
        opened = httpx.get(
            f"http://127.0.0.1:{second.server_port}/metrics",
            headers={"Authorization": "Bearer w0rker-tok"},
            timeout=5,
        )
        assert opened.status_code == 200 and "automation_jobs_total" in opened.text
    finally:
        for server in (first, second):
            server.shutdown()
            server.server_close()
    assert observability.serve_worker_metrics(SimpleNamespace()) is None  # off by default


# --------------------------------------------------------------------------- /healthz


def health_runtime(tmp_path: Path, database_url: str, broker_url: str):  # type: ignore[no-untyped-def]
    return build_runtime(
        Settings(
            data_dir=tmp_path / "data",
            database_url=database_url,
            broker_url=broker_url,
            organization="acme",
            secret_key="test-secret",
            config_dir=PROJECT_ROOT / "config",
            templates_dir=PROJECT_ROOT / "templates",
        )
    )


def get_health(rt) -> httpx.Response:  # type: ignore[no-untyped-def]
    try:
        return TestClient(create_app(rt)).get("/healthz")
    finally:
        rt.engine.dispose()


def test_healthz_is_ok_on_the_test_database_with_the_stub_broker(rt):
    response = TestClient(create_app(rt)).get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}, "broker": "stub"}


@pytest.mark.parametrize(
    "broker_url",
    [
        pytest.param(REDIS_URL, marks=pytest.mark.redis, id="redis"),
        pytest.param(RABBITMQ_URL, marks=pytest.mark.rabbitmq, id="rabbitmq"),
    ],
)
def test_healthz_checks_a_real_broker(tmp_path, broker_url):
    parsed = urlparse(broker_url)
    require_service(parsed.scheme, parsed.hostname or "localhost", parsed.port or 0)
    rt = health_runtime(tmp_path, f"sqlite:///{tmp_path / 'h.db'}", broker_url)
    response = get_health(rt)
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_healthz_is_503_naming_the_database_at_a_closed_port(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"postgresql+psycopg://dbuser:pw-s3cret@127.0.0.1:{free_port()}/x?connect_timeout=2"
    response = get_health(health_runtime(tmp_path, url, "stub"))
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "failed: OperationalError: connection refused"
    for leak in ("pw-s3cret", "dbuser", "127.0.0.1"):
        assert leak not in response.text and leak not in caplog.text


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_healthz_is_503_naming_the_broker_at_a_closed_port(tmp_path, caplog, scheme):
    caplog.set_level(logging.DEBUG)
    port = free_port()
    broker_url = (
        f"redis://:pw-s3cret@127.0.0.1:{port}/0"
        if scheme == "redis"
        else f"amqp://mquser:pw-s3cret@127.0.0.1:{port}/"
    )
    response = get_health(health_runtime(tmp_path, f"sqlite:///{tmp_path / 'h.db'}", broker_url))
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("failed: ")
    assert body["checks"]["broker"].endswith("connection refused"), body
    assert body["broker"] == ("redis" if scheme == "redis" else "rabbitmq")
    for leak in ("pw-s3cret", "mquser", "127.0.0.1", str(port)):
        assert leak not in response.text
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("automation"))
    assert "health check: broker" in ours
    # pika's own DEBUG/ERROR lines name the address it dials, never the credentials.
    for leak in ("pw-s3cret", "mquser", "127.0.0.1"):
        assert leak not in ours and (leak in ("127.0.0.1",) or leak not in caplog.text)


def test_a_hanging_check_is_cut_short_and_not_piled_up():
    import threading

    release = threading.Event()
    checks = observability.BoundedChecks()
    started = dt.datetime.now()
    assert checks.run("db", lambda: "ok" if release.wait(10) else "late", timeout=0.2) == (
        "failed: timed out after 0.2 s"
    )
    assert checks.run("db", lambda: "ok", timeout=0.2).startswith("failed: timed out")
    release.set()
    assert (dt.datetime.now() - started).total_seconds() < 5
    for _ in range(50):  # the stuck one finishes; the next check runs again
        if checks.run("db", lambda: "ok", timeout=1) == "ok":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the check never ran again")
