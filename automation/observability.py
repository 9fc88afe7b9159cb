"""Observability: Prometheus metrics, the one log line per job, secret scrubbing, health checks.

Metrics live in :data:`REGISTRY`, a registry of our own (not prometheus_client's global one),
so a test or an embedding application sees only these series. Two kinds:

* **Process metrics**, counted where things happen: jobs run (:func:`job_finished`, called by
  :func:`automation.services.tasks.run_task`), provider HTTP calls and retries (called by
  :class:`automation.adapters.http.Retry`). Each process counts its own; the web app serves
  them on ``/metrics`` and each ``automation worker`` process on its own port
  (:func:`start_metrics_server`, ``metrics_port``).
* **Database gauges**, computed when scraped (:class:`DatabaseCollector`): tasks by state and
  kind, due tasks, the age of the oldest due task and the messages kept without a record.
  Only the web app's ``/metrics`` serves them, so N worker processes do not run the same
  queries N times. Each is one ``COUNT ... GROUP BY`` that leaves out the ``done`` rows, served
  by the ``(state, due_at)`` index, under a 2 s statement timeout on PostgreSQL.

Per organization (fair sharing, ``workers/broker.py``): jobs by outcome and tasks held back
at the cap of waiting messages (process counters), tasks due (a database gauge) and tasks
waiting in the queue (read from the runtime's enqueue, which keeps that count). The label is
the organization's slug: a handful of values, not one per person or task. Counters know
only an organization's id where they count, so :data:`ORGANIZATIONS` keeps the slugs of
each database this process works on (:class:`OrganizationLabels`).

Logs: one line per job run on the ``automation.jobs`` logger, with its ids and outcome and,
for a failure, the exception type and a first-line message scrubbed of secrets
(:func:`scrub`). ``log_format = "json"`` (:func:`configure_logging`) turns every log line into
one JSON object; the default stays the CLI's text.

Settings read here with :func:`getattr` and a default (see ``docs/observability.md``):
``log_format``, ``metrics_token``, ``metrics_host``, ``metrics_port``.
"""

from __future__ import annotations

import datetime as dt
import errno
import hmac
import ipaddress
import json
import logging
import re
import socket
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, Metric

log = logging.getLogger("automation.observability")
jobs_log = logging.getLogger("automation.jobs")

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes …

JOB_OUTCOMES = ("done", "retry", "failed", "deferred", "not-claimed", "error")
PROVIDERS = ("google", "gmail", "graph", "caldav")
# Seconds: a send takes tens of ms, a full calendar sync minutes; the actor's limit is 10 min.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# Seconds from due to started: the tick runs every 30 s; hours mean the workers are behind.
LAG_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600, 86400)


class Metrics:
    """Every process metric, registered in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.jobs = Counter(
            "automation_jobs",
            "Task runs by kind and outcome (done, retry, failed, deferred, not-claimed, error).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.job_duration = Histogram(
            "automation_job_duration_seconds",
            "Wall time of one claimed task run, claim to outcome recorded, by kind.",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.job_lag = Histogram(
            "automation_job_lag_seconds",
            "From the task's due time to its claim (runtime clock), by kind.",
            ["kind"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.job_retries = Counter(
            "automation_job_retries",
            "Task runs that are a second or later attempt (after a failure or a lost lease).",
            ["kind"],
            registry=registry,
        )
        self.provider_calls = Counter(
            "automation_provider_calls",
            "Provider HTTP attempts by provider and status class (2xx, 3xx, 4xx, 5xx, network).",
            ["provider", "status_class"],
            registry=registry,
        )
        self.provider_rate_limited = Counter(
            "automation_provider_rate_limited",
            "Provider answers that asked us to slow down: 429, or 403 with a rate-limit reason.",
            ["provider"],
            registry=registry,
        )
        self.provider_retries = Counter(
            "automation_provider_retries",
            "Provider calls (or batch items) sent again under the shared retry policy.",
            ["provider"],
            registry=registry,
        )
        self.provider_retry_wait = Counter(
            "automation_provider_retry_wait_seconds",
            "Seconds spent waiting before provider retries (backoff and Retry-After).",
            ["provider"],
            registry=registry,
        )
        self.organization_jobs = Counter(
            "automation_organization_jobs",
            "Task runs by organization (slug) and outcome; runs of a task this process did "
            "not claim are not attributed.",
            ["organization", "outcome"],
            registry=registry,
        )
        self.organization_held_back = Counter(
            "automation_organization_tasks_held_back",
            "Tasks not sent because their organization had max_queued_per_organization "
            "waiting in the queue: they stay due and a later tick admits them.",
            ["organization"],
            registry=registry,
        )


METRICS = Metrics(REGISTRY)


# --------------------------------------------------------------------------- organizations


class OrganizationLabels:
    """The slug of each organization, by database, for metric labels.

    Where a job or a held-back task is counted only the organization's id is at hand, and a
    query per count would cost more than the count. So the slugs are read once, all of them
    (a small table), from the database of a session factory registered with :meth:`watch`
    (the tick, the workers' enqueue and the metrics scrape register theirs), and read again
    when an id shows up that is not known yet (a new organization), at most every
    ``RELOAD_SECONDS``. Keyed by database URL because a process can work on several (the
    tests do, with the same ids). Without a registered factory, the label is the id as text.
    """

    RELOAD_SECONDS = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slugs: dict[str, dict[int, str]] = {}
        self._factories: dict[str, weakref.ref[Any]] = {}
        self._loaded_at: dict[str, float] = {}

    def watch(self, database: str, factory: Any) -> None:
        """Read slugs of ``database`` through ``factory`` (a system-scope session factory),
        held weakly: a runtime that is gone does not stay alive for its labels."""
        with self._lock:
            known = self._factories.get(database)
            if known is None or known() is not factory:
                self._factories[database] = weakref.ref(factory)

    def remember(self, database: str, slugs: Mapping[int, str]) -> None:
        with self._lock:
            self._slugs.setdefault(database, {}).update(slugs)

    def label(self, database: str, organization_id: int) -> str:
        with self._lock:
            slug = self._slugs.get(database, {}).get(organization_id)
            if slug is not None:
                return slug
            reference = self._factories.get(database)
            factory = reference() if reference is not None else None
            recent = time.monotonic() - self._loaded_at.get(database, -1e9) < self.RELOAD_SECONDS
            if factory is None or recent:
                return str(organization_id)
            self._loaded_at[database] = time.monotonic()
        try:
            self.remember(database, load_organization_slugs(factory))
        except Exception as exc:  # noqa: BLE001 - a label is not worth failing a job for
            log.warning("metrics: organization names not read (%s)", describe_failure(exc))
        with self._lock:
            return self._slugs.get(database, {}).get(organization_id, str(organization_id))


def load_organization_slugs(factory: Any) -> dict[int, str]:
    from sqlalchemy import select

    from automation.models import Organization

    with factory() as session:
        return {
            id_: slug for id_, slug in session.execute(select(Organization.id, Organization.slug))
        }


ORGANIZATIONS = OrganizationLabels()


def task_held_back(database: str, organization_id: int) -> None:
    """Count a task not sent because its organization is at its cap of waiting messages."""
    METRICS.organization_held_back.labels(ORGANIZATIONS.label(database, organization_id)).inc()


# --------------------------------------------------------------------------- provider calls


def provider_of(what: str) -> str:
    """The provider label from a call's description ("Google events.list", "Graph $batch of
    20", "CalDAV PUT /x"): one of :data:`PROVIDERS`, else ``other`` (bounded cardinality)."""
    first = what.split(None, 1)[0].lower() if what.strip() else ""
    return first if first in PROVIDERS else "other"


def status_class(status: int) -> str:
    return "network" if status <= 0 else f"{min(status // 100, 5)}xx"


def provider_call(provider: str, status: int, *, rate_limited: bool = False) -> None:
    METRICS.provider_calls.labels(provider, status_class(status)).inc()
    if rate_limited:
        METRICS.provider_rate_limited.labels(provider).inc()


def provider_retries(provider: str, count: float, waited: float = 0.0) -> None:
    if count > 0:
        METRICS.provider_retries.labels(provider).inc(count)
    if waited > 0:
        METRICS.provider_retry_wait.labels(provider).inc(waited)


# --------------------------------------------------------------------------- scrubbing

_SECRET_WORDS = (
    r"password|passwd|pwd|secret|client_secret|access_token|refresh_token|id_token|"
    r"api[_-]?key|apikey|clientstate|channel[_-]?token|auth[_-]?token|private[_-]?key"
)
_SCRUBBERS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization / Proxy-Authorization / Cookie headers, in a header dump or a dict repr.
    (
        re.compile(
            r"(?i)\b((?:proxy-)?authorization|cookie|set-cookie|x-goog-channel-token|x-signature)"
            r"([\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|digest|token|negotiate)\s+)?"
            r"[^\s\"',;}]+"
        ),
        r"\1\2***",
    ),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer ***"),
    (re.compile(r"\bBasic\s+(?=\S*[0-9+/=])[A-Za-z0-9+/]{8,}={0,2}"), "Basic ***"),
    # Credentials in a URL: scheme://user:password@host, scheme://token@host.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@\"']+@"), r"\1***@"),
    # password=..., "client_secret": "...", token=... in a query string or a DSN.
    (re.compile(rf"(?i)\b({_SECRET_WORDS})([\"']?\s*[:=]\s*[\"']?)[^\s\"'&,;}}]+"), r"\1\2***"),
    (re.compile(r"(?i)([?&](?:token|code|sig|signature|key|auth)=)[^\s&\"']+"), r"\1***"),
    # Shapes that are secrets wherever they appear: JWTs, Google OAuth access tokens.
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "***"),
    (re.compile(r"\bya29\.[A-Za-z0-9_.-]+"), "***"),
)
MESSAGE_MAX = 300


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credentials replaced by ``***``: Authorization and cookie headers,
    bearer tokens, URL user info, ``password=``-style pairs, JWTs, and every literal value in
    ``secrets`` (the configured ones, :func:`known_secrets`)."""
    for value in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(value, "***")
    for pattern, replacement in _SCRUBBERS:
        text = pattern.sub(replacement, text)
    return text


def error_message(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """What a log line may say about an exception: its first line, scrubbed and cut to
    :data:`MESSAGE_MAX` characters. Only the first line, because later lines are where a
    quoted request, response or message body would be."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    cut = first[:MESSAGE_MAX] + ("…" if len(first) > MESSAGE_MAX or "\n" in text else "")
    return scrub(cut, secrets)


_SECRET_SETTINGS = (
    "secret_key",
    "graph_client_secret",
    "caldav_password",
    "smtp_password",
    "imap_password",
    "inbound_webhook_secret",
    "metrics_token",
)
_secrets_cache: tuple[Any, tuple[str, ...]] = (None, ())  # the last settings seen


def known_secrets(settings: Any) -> tuple[str, ...]:
    """The secret values in ``settings`` (and the passwords in its database and broker
    URLs), to be removed literally from anything logged."""
    if settings is None:
        return ()
    global _secrets_cache
    if _secrets_cache[0] is settings:
        return _secrets_cache[1]
    values = [str(getattr(settings, name, "") or "") for name in _SECRET_SETTINGS]
    for name in ("database_url", "broker_url"):
        try:
            password = urlsplit(str(getattr(settings, name, "") or "")).password
        except ValueError:
            password = None
        if password:
            values.append(password)
    found = tuple(v for v in values if len(v) >= 4)
    _secrets_cache = (settings, found)
    return found


# --------------------------------------------------------------------------- the job log line


def job_finished(
    *,
    task_id: int,
    kind: str | None,
    organization_id: int | None,
    attempt: int | None,
    outcome: str,
    seconds: float,
    lag_seconds: float | None = None,
    error: BaseException | None = None,
    details: dict[str, str] | None = None,
    settings: Any = None,
) -> dict[str, Any]:
    """Count one job run and write its log line; returns the line's fields. ``details`` are
    short texts of our own (a deferral's reason and time), scrubbed all the same."""
    label = kind or "unknown"
    METRICS.jobs.labels(label, outcome).inc()
    if organization_id is not None:
        database = str(getattr(settings, "database", "") or "")
        organization = ORGANIZATIONS.label(database, organization_id)
        METRICS.organization_jobs.labels(organization, outcome).inc()
    if outcome != "not-claimed":
        METRICS.job_duration.labels(label).observe(seconds)
        if attempt is not None and attempt > 1:
            METRICS.job_retries.labels(label).inc()
    if lag_seconds is not None:
        METRICS.job_lag.labels(label).observe(max(lag_seconds, 0.0))
    fields: dict[str, Any] = {
        "event": "job",
        "task_id": task_id,
        "kind": kind,
        "organization_id": organization_id,
        "attempt": attempt,
        "outcome": outcome,
        "duration_ms": round(seconds * 1000, 1),
    }
    secrets = known_secrets(settings)
    for name, value in (details or {}).items():
        fields[name] = scrub(str(value)[:MESSAGE_MAX], secrets)
    if error is not None:
        fields["error_type"] = type(error).__name__
        fields["error"] = error_message(error, secrets)
    level = {
        "retry": logging.WARNING,
        "failed": logging.ERROR,
        "error": logging.ERROR,
    }.get(outcome, logging.INFO)
    jobs_log.log(level, "%s", _job_text(fields), extra={"job": fields})
    return fields


def _job_text(fields: dict[str, Any]) -> str:
    parts = [
        f"job task={fields['task_id']}",
        f"kind={fields['kind']}",
        f"org={fields['organization_id']}",
        f"attempt={fields['attempt']}",
        f"outcome={fields['outcome']}",
        f"duration_ms={fields['duration_ms']}",
    ]
    if "deferred_until" in fields:
        parts.append(f"until={fields['deferred_until']} reason={fields.get('reason', '')}")
    if "error_type" in fields:
        parts.append(f"error={fields['error_type']}: {fields['error']}")
    return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message and, for a job line, its fields
    at the top level. Messages and tracebacks are scrubbed (:func:`scrub`)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(secrets)

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage(), self.secrets),
        }
        job = getattr(record, "job", None)
        if isinstance(job, dict):
            data.update(job)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            data.setdefault("error_type", type(exc).__name__)
            data["traceback"] = scrub(
                "".join(traceback.format_exception(*record.exc_info)), self.secrets
            )
        return json.dumps(data, default=str, ensure_ascii=False)


def configure_logging(settings: Any, logger: logging.Logger | None = None) -> str:
    """Apply ``log_format``: ``"json"`` puts :class:`JsonFormatter` on the root logger's
    handlers (adding one on stderr if there is none) and lets job lines (INFO) through;
    ``"text"`` (the default) leaves logging as the CLI set it. Returns the format applied."""
    fmt = str(getattr(settings, "log_format", "text") or "text").lower()
    if fmt != "json":
        return "text"
    target = logger or logging.getLogger()
    if not target.handlers:
        target.addHandler(logging.StreamHandler(sys.stderr))
    formatter = JsonFormatter(known_secrets(settings))
    for handler in target.handlers:
        handler.setFormatter(formatter)
    if jobs_log.getEffectiveLevel() > logging.INFO:
        jobs_log.setLevel(logging.INFO)
    return "json"


# --------------------------------------------------------------------------- database gauges


class DatabaseCollector:
    """Gauges read from the database at scrape time. ``runtime`` is a callable returning the
    runtime, so the web app can build it lazily."""

    STATEMENT_TIMEOUT_MS = 2000

    def __init__(self, runtime: Callable[[], Any]) -> None:
        self.runtime = runtime

    def describe(self) -> list[Metric]:  # no query at registration time
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "automation_metrics_database_up",
            "1 when the scrape-time database queries below succeeded, else 0.",
        )
        try:
            families = self._query()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail with the database
            log.warning("metrics: database gauges unavailable (%s)", describe_failure(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _query(self) -> list[Metric]:
        from sqlalchemy import func, or_, select, text

        from automation.models import NOT_RECORDED, InboundMessage, Organization, Task, TaskState
        from automation.services.tasks import HANDLERS

        rt = self.runtime()
        now = rt.now()
        states = (TaskState.PENDING, TaskState.LEASED, TaskState.FAILED)
        is_due = or_(
            (Task.state == TaskState.PENDING) & (Task.due_at <= now),
            (Task.state == TaskState.LEASED) & (Task.lease_until < now),
        )
        with rt.factory() as session, session.begin():
            if session.get_bind().dialect.name == "postgresql":
                session.execute(text(f"SET LOCAL statement_timeout = {self.STATEMENT_TIMEOUT_MS}"))
            by_state = session.execute(
                select(Task.state, Task.kind, func.count())
                .where(Task.state.in_(states))
                .group_by(Task.state, Task.kind)
            ).all()
            due = session.execute(
                select(Task.kind, func.count()).where(is_due).group_by(Task.kind)
            ).all()
            due_by_organization = dict(
                session.execute(
                    select(Task.organization_id, func.count())
                    .where(is_due)
                    .group_by(Task.organization_id)
                ).all()
            )
            slugs = dict(session.execute(select(Organization.id, Organization.slug)).all())
            oldest = session.scalar(
                select(func.min(Task.due_at)).where(
                    Task.state == TaskState.PENDING, Task.due_at <= now
                )
            )
            kept = session.execute(
                select(InboundMessage.state, func.count())
                .where(InboundMessage.state.in_(NOT_RECORDED))
                .group_by(InboundMessage.state)
            ).all()

        tasks = GaugeMetricFamily(
            "automation_tasks",
            "Tasks by state (pending, leased, failed; done is not counted) and kind.",
            labels=["state", "kind"],
        )
        counts = {(str(s), str(k)): n for s, k, n in by_state}
        kinds = sorted(set(HANDLERS) | {k for _, k in counts})
        for state in states:
            for kind in kinds:
                tasks.add_metric([str(state), kind], counts.get((str(state), kind), 0))
        due_family = GaugeMetricFamily(
            "automation_tasks_due",
            "Tasks a worker should be running now: pending and due, or leased with the lease "
            "expired. The queue depth in the database.",
            labels=["kind"],
        )
        due_counts = {str(k): n for k, n in due}
        for kind in sorted(set(HANDLERS) | set(due_counts)):
            due_family.add_metric([kind], due_counts.get(kind, 0))
        oldest_family = GaugeMetricFamily(
            "automation_tasks_oldest_due_seconds",
            "How long the oldest pending, due task has been due (0 when none is).",
        )
        oldest_family.add_metric([], max((now - oldest).total_seconds(), 0.0) if oldest else 0)
        kept_family = GaugeMetricFamily(
            "automation_inbound_not_recorded_messages",
            "Inbound messages kept without a record, by state; state=quarantined is the "
            "quarantine an operator reviews.",
            labels=["state"],
        )
        kept_counts = {str(s): n for s, n in kept}
        for state in NOT_RECORDED:
            kept_family.add_metric([str(state)], kept_counts.get(str(state), 0))

        database = str(rt.settings.database)
        ORGANIZATIONS.watch(database, rt.factory)
        ORGANIZATIONS.remember(database, slugs)
        due_organizations = GaugeMetricFamily(
            "automation_organization_tasks_due",
            "Tasks due now (as automation_tasks_due) by organization (slug).",
            labels=["organization"],
        )
        for organization_id, slug in sorted(slugs.items(), key=lambda item: item[1]):
            due_organizations.add_metric([slug], due_by_organization.get(organization_id, 0))
        families = [tasks, due_family, oldest_family, kept_family, due_organizations]
        queued = self._queued(rt, slugs)
        return families if queued is None else [*families, queued]

    @staticmethod
    def _queued(rt: Any, slugs: dict[int, str]) -> Metric | None:
        """Messages waiting in the broker's queue by organization, as the runtime's enqueue
        counts them (``workers/broker.py``); None when it keeps no count (no broker in this
        process) or the count cannot be read (then the database gauges are served alone)."""
        count = getattr(rt.enqueue, "waiting_by_organization", None)
        if count is None:
            return None
        try:
            waiting = count(list(slugs))
        except Exception as exc:  # noqa: BLE001 - the broker's trouble, not the scrape's
            log.warning("metrics: queue counts unavailable (%s)", describe_failure(exc))
            return None
        if waiting is None:  # a count that says nothing about the queue (RabbitMQ)
            return None
        family = GaugeMetricFamily(
            "automation_organization_tasks_queued",
            "Tasks waiting in the broker's queue for a worker, by organization (slug): at "
            "most max_queued_per_organization each. Redis and the in-process broker only.",
            labels=["organization"],
        )
        for organization_id, slug in sorted(slugs.items(), key=lambda item: item[1]):
            family.add_metric([slug], waiting.get(organization_id, 0))
        return family


class Scrape:
    """A registry-like view over several collectors, for ``generate_latest``."""

    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


# --------------------------------------------------------------------------- who may scrape


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def metrics_access(
    token: str, authorization: str | None, client_host: str | None
) -> tuple[int, str] | None:
    """None when the scrape may proceed; else (status, reason). With ``metrics_token`` set,
    ``Authorization: Bearer <token>`` is required from everyone (constant-time comparison);
    without it, only clients on this machine (loopback) are served."""
    if token:
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8"), token.encode("utf-8")
        ):
            return None
        return 401, "metrics need Authorization: Bearer <metrics_token>"
    if is_loopback(client_host):
        return None
    return 403, "metrics are served to this machine only; set metrics_token to scrape remotely"


# --------------------------------------------------------------------------- worker processes


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = False  # a port in use must fail, so the next process takes the next


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


def metrics_wsgi_app(token: str = "", registry: Any = REGISTRY) -> Callable[..., Any]:
    """``/metrics`` for a worker process: prometheus_client's WSGI app behind
    :func:`metrics_access`."""
    inner = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/metrics", "/metrics/"):
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: try /metrics\n"]
        problem = metrics_access(
            token, environ.get("HTTP_AUTHORIZATION"), environ.get("REMOTE_ADDR")
        )
        if problem:
            status, reason = problem
            headers = [("Content-Type", "text/plain; charset=utf-8")]
            if status == 401:
                headers.append(("WWW-Authenticate", "Bearer"))
            start_response(f"{status} {'Unauthorized' if status == 401 else 'Forbidden'}", headers)
            return [reason.encode() + b"\n"]
        return inner(environ, start_response)  # type: ignore[no-any-return]

    return app


PORT_SPAN = 64  # how many ports after metrics_port a worker process may try


def start_metrics_server(
    host: str, first_port: int, token: str = "", span: int = PORT_SPAN
) -> WSGIServer | None:
    """Serve :data:`REGISTRY` on the first free port in ``first_port … first_port+span-1``
    from a daemon thread; return the server (``server.server_port``), or None when every
    port is taken. ``automation worker --processes N`` thus uses N consecutive ports."""
    app = metrics_wsgi_app(token)
    for port in range(first_port, first_port + max(span, 1)):
        try:
            server = make_server(
                host, port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
            )
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        threading.Thread(
            target=server.serve_forever, name="automation-metrics", daemon=True
        ).start()
        log.info("metrics on http://%s:%d/metrics", host, server.server_port)
        return server
    log.warning("metrics: no free port in %d-%d", first_port, first_port + span - 1)
    return None


def serve_worker_metrics(settings: Any) -> WSGIServer | None:
    """In an ``automation worker`` process: serve metrics when ``metrics_port`` is set."""
    port = int(getattr(settings, "metrics_port", 0) or 0)
    if port <= 0:
        return None
    host = str(getattr(settings, "metrics_host", "127.0.0.1") or "127.0.0.1")
    return start_metrics_server(host, port, str(getattr(settings, "metrics_token", "") or ""))


# --------------------------------------------------------------------------- health checks

HEALTH_TIMEOUT = 3.0  # seconds, for each of the database and the broker


def describe_failure(exc: BaseException) -> str:
    """``Type: reason`` with the reason from a fixed vocabulary (connection refused, timed
    out, host name not resolved, authentication failed), never the exception's text, which
    can carry host names, URLs and passwords."""
    reason = ""
    seen: list[BaseException] = []
    pending: list[Any] = [exc]
    while pending and len(seen) < 8:
        item = pending.pop(0)
        if not isinstance(item, BaseException) or item in seen:
            continue
        seen.append(item)
        pending.extend([item.__cause__, item.__context__, *item.args])
        # pika keeps the socket error in .exception (and a workflow's in .exceptions).
        pending.append(getattr(item, "exception", None))
        pending.extend(getattr(item, "exceptions", None) or ())
    for item in seen:
        name = type(item).__name__.lower()
        text = str(item).lower()
        if isinstance(item, ConnectionRefusedError) or "refused" in text and "access" not in text:
            reason = "connection refused"
        elif isinstance(item, socket.gaierror) or any(
            s in text for s in ("name or service not known", "could not translate host", "nodename")
        ):
            reason = "host name not resolved"
        elif isinstance(item, TimeoutError) or "timed out" in text or "timeout" in name:
            reason = "timed out"
        elif (
            "auth" in name
            or "authentication" in text
            or "access_refused" in text
            or "wrongpass" in text
            or "noauth" in text
        ):
            reason = "authentication failed"
        if reason:
            break
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def check_broker(url: str, timeout: float = HEALTH_TIMEOUT) -> str:
    """``ok`` when the broker answers (Redis PING, a RabbitMQ connection opened and closed),
    else ``failed: <type>[: reason]``. The stub (in-process) broker is always ok."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else url.lower()
    try:
        if scheme.startswith("redis"):
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = redis.Redis.from_url(
                url,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
            try:
                if not client.ping():
                    return "failed: no PONG"
            finally:
                client.close()
        elif scheme.startswith("amqp"):
            import pika

            params = pika.URLParameters(url)
            params.socket_timeout = timeout
            params.stack_timeout = timeout
            params.blocked_connection_timeout = timeout
            params.connection_attempts = 1
            params.retry_delay = 0
            connection = pika.BlockingConnection(params)
            connection.close()
        elif not scheme.startswith("stub"):
            return "failed: unknown broker kind"
    except Exception as exc:  # noqa: BLE001 - reported as a failed check, without its text
        return f"failed: {describe_failure(exc)}"
    return "ok"


class BoundedChecks:
    """Runs each named check in a thread and waits at most ``timeout`` for it. A check still
    hanging from an earlier call is not started again (one stuck thread per check at most)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, Future[str]] = {}

    def run(self, name: str, check: Callable[[], str], timeout: float = HEALTH_TIMEOUT) -> str:
        with self._lock:
            earlier = self._running.get(name)
            if earlier is not None and not earlier.done():
                return "failed: timed out (an earlier check is still waiting)"
            future: Future[str] = Future()
            self._running[name] = future

        def target() -> None:
            try:
                future.set_result(check())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                future.set_exception(exc)

        threading.Thread(target=target, name=f"healthz-{name}", daemon=True).start()
        try:
            return future.result(timeout)
        except FutureTimeout:
            return f"failed: timed out after {timeout:g} s"
        except Exception as exc:  # noqa: BLE001
            return f"failed: {describe_failure(exc)}"
