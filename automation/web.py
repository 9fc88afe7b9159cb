"""The web app: provider webhooks, health, metrics and the HR console (automation.console).

Why FastAPI (on Starlette), chosen once for both:

- **Typed request handling.** Headers, query parameters and JSON bodies are declared with
  their types (``X-Goog-Message-Number`` is an ``int``, a Graph notice is a pydantic model), so
  a malformed request is refused with a precise 400 before any of our code runs, and the code
  that does run works on checked values.
- **Dependency injection.** The runtime (and, for the console, a database session and the
  signed-in person) is provided per request through one function, which tests replace by
  passing their own runtime to :func:`create_app`.
- **An OpenAPI description for free.** Every endpoint, parameter and body schema is published
  at ``/openapi.json``; the console's tests will fuzz it with schemathesis, and operators can
  read what each webhook expects.
- It is plain ASGI on uvicorn: one process serves it (``automation web``), or a thread of
  ``automation run`` does, and ``fastapi.testclient`` drives it in tests without a socket.

The webhooks only *record that something changed*: they check the notice, write a task row in
the same transaction as the deduplication state, commit, and then hand the task id to a worker.
No provider is called while the provider waits for our answer (Graph allows 3 s, and Google
wants a fast 2xx), so every accepted notice is answered in a few milliseconds of database work.

Secrets (the Google channel token, the Graph clientState) are compared with
:func:`hmac.compare_digest` and never logged, echoed, or stored anywhere new.

Tasks created here (handlers live in :mod:`automation.services.calendars`):

- ``calendar_sync`` (subject: the ``calendar_syncs`` row): read the calendar's changes.
- ``calendar_channel_renew`` (subject: the ``calendar_syncs`` row): renew or recreate the
  Graph subscription (lifecycle events).
- ``calendar_channel_stop`` (subject: an ``audit_log`` entry, action
  ``calendar.channel_unknown``, whose data holds ``channel_id`` and ``resource_id``): stop a
  Google channel we do not know. It falls due after :data:`STOP_GRACE`, so a channel whose
  creation is still being committed is not stopped by mistake; the handler should check again
  that no ``calendar_syncs`` row holds the id before stopping it.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from automation import audit, observability
from automation.db import transaction
from automation.models import CalendarSync, Organization, Task, TaskState
from automation.runtime import Runtime
from automation.services.tasks import create_task

log = logging.getLogger("automation.web")

SYNC, RENEW, STOP = "calendar_sync", "calendar_channel_renew", "calendar_channel_stop"
GOOGLE_STATES = ("sync", "exists", "not_exists")
# Graph lifecycle event -> the tasks it needs, in order.
LIFECYCLE_TASKS: dict[str, tuple[str, ...]] = {
    "reauthorizationRequired": (RENEW,),
    "subscriptionRemoved": (RENEW, SYNC),  # the renew handler recreates it; then a delta sync
    "missed": (SYNC,),
}
# An unknown Google channel is stopped this long after its first notice: a channel we have
# just opened can notify before its row is committed, and must not be stopped.
STOP_GRACE = dt.timedelta(seconds=60)
MAX_BODY = 1024 * 1024  # Graph notices are a few kB; refuse anything absurd
GOOGLE_CHANNEL_ID_MAX = 64  # Google's documented limit on a channel id


# --------------------------------------------------------------------------- request models


class GraphNotice(BaseModel):
    """One item of a Graph change or lifecycle notification (other fields are ignored)."""

    model_config = ConfigDict(extra="allow")

    subscriptionId: str | None = None  # Graph's field names (camelCase)
    clientState: str | None = None
    changeType: str | None = None
    resource: str | None = None
    lifecycleEvent: str | None = None


class GraphNotices(BaseModel):
    value: list[GraphNotice] = Field(min_length=1)


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` inlined, to embed in the OpenAPI document."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


GRAPH_BODY = {
    "requestBody": {
        "required": False,
        "description": "Absent when the query carries validationToken (the handshake).",
        "content": {"application/json": {"schema": _inline_schema(GraphNotices)}},
    }
}


# --------------------------------------------------------------------------- helpers


class Refused(Exception):
    """A request we answer with an error status and a short, secret-free message."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class Accepted:
    """What a notice became: new task ids (to enqueue after commit) and counts."""

    result: str
    new_tasks: list[int] = field(default_factory=list)
    accepted: int = 0
    rejected: int = 0


def same_secret(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; a missing value on either side never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def broker_kind(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else url.lower()
    if scheme.startswith("redis"):
        return "redis"
    if scheme.startswith("amqp"):
        return "rabbitmq"
    return "stub" if scheme.startswith("stub") else "unknown"


def _stamp(now: dt.datetime) -> str:
    """A key part unique to this notice: its arrival time plus a little randomness."""
    return f"{now.astimezone(dt.UTC):%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(4)}"


def coalesced_task(
    session: Session, sync: CalendarSync, kind: str, origin: str, now: dt.datetime
) -> tuple[Task, bool]:
    """The task that will do ``kind`` for this calendar: a waiting one, or a new one.

    A burst of notices coalesces onto the task that is still waiting (due, pending and never
    started): it has not read the calendar yet, so it will see every change announced so far.
    Once that task has started, the next notice creates a new task, so a change made while a
    sync runs is never lost. This gives at most one running and one waiting task per calendar
    and kind. The key only has to be unique, hence the arrival time and a random part; a
    fixed time bucket would instead map a notice arriving after its bucket's sync began onto
    that finished task and lose the change until the next poll.
    """
    waiting = session.scalar(
        select(Task)
        .where(
            Task.organization_id == sync.organization_id,
            Task.kind == kind,
            Task.subject_id == sync.id,
            Task.state == TaskState.PENDING,
            Task.attempts == 0,
            Task.due_at <= now,
        )
        .order_by(Task.id)
        .limit(1)
    )
    if waiting is not None:
        return waiting, False
    prefix = "calendar-sync" if kind == SYNC else "calendar-channel-renew"
    key = f"{prefix}:{sync.id}:{origin}:{_stamp(now)}"
    task = create_task(session, sync.organization_id, kind, key, sync.id, now, now)
    return task, True


def _enqueue(rt: Runtime, task_ids: Iterable[int]) -> None:
    """Hand committed tasks to the workers. A broker hiccup only delays them: the tick finds
    due rows in the database, so the notice is still answered with success."""
    for task_id in task_ids:
        try:
            rt.enqueue(task_id)
        except Exception as exc:  # noqa: BLE001 - the row is committed; the tick will send it
            log.warning(
                "task %d committed but not enqueued (%s); the tick will pick it up",
                task_id,
                type(exc).__name__,
            )


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise Refused(413, f"body larger than {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Refused(413, f"body larger than {MAX_BODY} bytes")
    return bytes(body)


def _validation_echo(token: str) -> PlainTextResponse:
    """Graph's handshake: the decoded token, as text/plain, with status 200."""
    return PlainTextResponse(
        token,
        status_code=200,
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
    )


def _parse_graph(body: bytes) -> GraphNotices:
    if not body.strip():
        raise Refused(400, 'empty body: expected JSON {"value": [...]} or ?validationToken=')
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Refused(400, "body is not JSON") from None
    if not isinstance(data, dict) or "value" not in data:
        raise Refused(400, 'expected a JSON object with a "value" list of notifications')
    try:
        return GraphNotices.model_validate(data)
    except ValidationError as exc:
        raise Refused(400, "malformed notification: " + _describe(exc.errors())) from None


def _describe(errors: Iterable[Any]) -> str:
    """Where and what, never the offending value (it may be a token)."""
    parts = []
    for error in errors:
        loc = ".".join(str(p) for p in error.get("loc", ()) if p not in ("header", "query"))
        parts.append(f"{loc or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# --------------------------------------------------------------------------- Google


def google_notice(
    rt: Runtime,
    channel_id: str,
    token: str | None,
    resource_id: str,
    state: str,
    number: int | None,
) -> Accepted:
    """Check and record one Google push notice; raises :class:`Refused` (401) when it fails
    authentication. Runs in one transaction; the caller enqueues the new tasks after it."""
    now = rt.now()
    with transaction(rt.factory) as session:
        rows = list(
            session.scalars(
                select(CalendarSync).where(
                    CalendarSync.provider == "google", CalendarSync.channel_id == channel_id
                )
            )
        )
        if not rows:
            return _unknown_google_channel(rt, session, channel_id, resource_id, state, number)
        matches = [row for row in rows if same_secret(token, row.channel_secret)]
        if not matches:
            log.warning("google notice refused: wrong channel token (channel %r)", channel_id)
            raise Refused(401, "notice refused")
        sync = matches[0]
        if sync.channel_resource and not same_secret(resource_id, sync.channel_resource):
            log.warning("google notice refused: wrong resource id (channel %r)", channel_id)
            raise Refused(401, "notice refused")
        if state == "sync":
            log.info("google channel handshake for calendar sync %d", sync.id)
            return Accepted("handshake")
        assert number is not None
        moved = session.execute(
            update(CalendarSync)
            .where(
                CalendarSync.id == sync.id,
                or_(
                    CalendarSync.last_message_number.is_(None),
                    CalendarSync.last_message_number < number,
                ),
            )
            .values(last_message_number=number, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            log.info("google notice %d for calendar sync %d: already seen", number, sync.id)
            return Accepted("duplicate")
        task, new = coalesced_task(session, sync, SYNC, "google", now)
        log.info(
            "google notice %d (%s) for calendar sync %d -> task %d%s",
            number,
            state,
            sync.id,
            task.id,
            "" if new else " (coalesced)",
        )
        return Accepted("queued" if new else "coalesced", [task.id] if new else [])


def _unknown_google_channel(
    rt: Runtime,
    session: Session,
    channel_id: str,
    resource_id: str,
    state: str,
    number: int | None,
) -> Accepted:
    """Google keeps notifying a channel until it is stopped, so an unknown one is stopped.

    Not on the ``sync`` handshake: that arrives while a channel we are opening may not be
    committed yet. The channel id and resource id go to the audit log, and the stop task's
    subject is that entry, so its handler has what ``channels.stop`` needs.
    """
    if state == "sync":
        log.info("google handshake for unknown channel %r: ignored", channel_id)
        return Accepted("unknown-channel")
    org_id = session.scalar(
        select(Organization.id).where(Organization.slug == rt.settings.organization)
    )
    if org_id is None:
        log.warning("google notice for unknown channel %r and no organization yet", channel_id)
        return Accepted("unknown-channel")
    key = f"calendar-channel-stop:{channel_id}"
    if session.scalar(select(Task.id).where(Task.organization_id == org_id, Task.key == key)):
        return Accepted("unknown-channel")
    now = rt.now()
    entry = audit.record_now(
        session,
        org_id,
        actor="webhook:google",
        action="calendar.channel_unknown",
        subject_kind="calendar_channel",
        subject_id=None,
        at=now,
        data={
            "channel_id": channel_id,
            "resource_id": resource_id,
            "resource_state": state,
            "message_number": number,
        },
    )
    session.flush()
    task = create_task(session, org_id, STOP, key, entry.id, now + STOP_GRACE, now)
    log.warning("google notice for unknown channel %r: stop task %d", channel_id, task.id)
    return Accepted("unknown-channel")  # due after the grace period: the tick sends it


# --------------------------------------------------------------------------- Graph


def graph_notices(rt: Runtime, notices: GraphNotices) -> Accepted:
    """Check every notification's clientState; turn the good ones into tasks (one per
    calendar and kind). Raises :class:`Refused` (401) when none is good."""
    now = rt.now()
    outcome = Accepted("accepted")
    with transaction(rt.factory) as session:
        good: list[tuple[CalendarSync, GraphNotice]] = []
        for notice in notices.value:
            sync = _graph_subscription(session, notice)
            if sync is None:
                outcome.rejected += 1
            else:
                good.append((sync, notice))
        if not good:
            log.warning("graph notification refused: %d item(s), none valid", outcome.rejected)
            raise Refused(401, "notification refused")
        done: set[tuple[int, str]] = set()
        for sync, notice in good:
            outcome.accepted += 1
            if notice.lifecycleEvent:
                kinds = LIFECYCLE_TASKS.get(notice.lifecycleEvent, ())
                if not kinds:
                    log.info(
                        "graph lifecycle event %r for calendar sync %d: nothing to do",
                        notice.lifecycleEvent,
                        sync.id,
                    )
                origin = "lifecycle"
            else:
                kinds, origin = (SYNC,), "graph"
            for kind in kinds:
                if (sync.id, kind) in done:
                    continue
                done.add((sync.id, kind))
                task, new = coalesced_task(session, sync, kind, origin, now)
                if new:
                    outcome.new_tasks.append(task.id)
                log.info(
                    "graph %s for calendar sync %d -> %s task %d%s",
                    notice.lifecycleEvent or "change",
                    sync.id,
                    kind,
                    task.id,
                    "" if new else " (coalesced)",
                )
        if outcome.rejected:
            log.warning("graph notification: %d invalid item(s) ignored", outcome.rejected)
    return outcome


def _graph_subscription(session: Session, notice: GraphNotice) -> CalendarSync | None:
    if not notice.subscriptionId:
        return None
    rows = session.scalars(
        select(CalendarSync).where(
            CalendarSync.provider == "graph", CalendarSync.channel_id == notice.subscriptionId
        )
    )
    for row in rows:
        if same_secret(notice.clientState, row.channel_secret):
            return row
    log.warning(
        "graph item refused: unknown subscription or wrong clientState (subscription %r)",
        notice.subscriptionId,
    )
    return None


# --------------------------------------------------------------------------- inbound mail

MAIL_MAX_BODY = 40 * 1024 * 1024  # a 25 MB message, base64-encoded in a form, with room
SIGNATURE_TOLERANCE = dt.timedelta(minutes=5)


def sign_inbound(secret: str, timestamp: int, body: bytes) -> str:
    """``X-Signature`` for the inbound mail webhook: ``t=<unix time>,v1=<hex HMAC-SHA256 of
    "<t>." + body>``. The relay (or a small forwarder in front of SendGrid/Mailgun) signs
    each request with the shared secret; the timestamp keeps a captured request from being
    replayed later."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, "sha256").hexdigest()
    return f"t={timestamp},v1={mac}"


def check_inbound_signature(
    secret: str, header: str | None, body: bytes, now: dt.datetime
) -> str | None:
    """None when the signature is good; otherwise why it is refused."""
    if not header:
        return "missing X-Signature"
    fields = dict(part.strip().split("=", 1) for part in header.split(",") if "=" in part)
    stamp, given = fields.get("t", ""), fields.get("v1", "")
    if not stamp.isdigit() or not given:
        return "X-Signature must be t=<unix time>,v1=<hex HMAC-SHA256>"
    sent = dt.datetime.fromtimestamp(int(stamp), dt.UTC)
    if abs(now - sent) > SIGNATURE_TOLERANCE:
        return "X-Signature timestamp is more than 5 minutes away from now"
    expected = sign_inbound(secret, int(stamp), body).split("v1=", 1)[1]
    if not hmac.compare_digest(expected.encode(), given.encode()):
        return "X-Signature does not match"
    return None


def raw_message_of(content_type: str, body: bytes) -> bytes:
    """The RFC 5322 message in a webhook body: the body itself (message/rfc822,
    application/octet-stream), or the ``email`` (SendGrid, raw mode) or ``body-mime``
    (Mailgun MIME routes) field of a multipart/form-data body."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind != "multipart/form-data":
        return body
    import email.parser
    import email.policy

    form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    for part in form.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name in ("email", "body-mime"):
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes) and payload:
                return payload
    raise Refused(400, "multipart body without an 'email' or 'body-mime' field")


def mail_poll_task(rt: Runtime, origin: str) -> list[int]:
    """A push notice (Gmail via Pub/Sub) asks for the inbox to be read now: one waiting
    poll task at a time, as calendar notices do."""
    from automation.services.inbound import organization_id

    now = rt.now()
    with transaction(rt.factory) as session:
        org = organization_id(session, rt.settings.organization)
        waiting = session.scalar(
            select(Task.id).where(
                Task.organization_id == org,
                Task.kind == "mail_poll",
                Task.state == TaskState.PENDING,
                Task.attempts == 0,
            )
        )
        if waiting is not None:
            return []
        task = create_task(
            session, org, "mail_poll", f"mail-poll:{origin}:{_stamp(now)}", 0, now, now
        )
        return [task.id]


# --------------------------------------------------------------------------- the app


def create_app(runtime: Runtime | None = None) -> FastAPI:
    """The ASGI app. Without a runtime it uses :func:`automation.runtime.current`, built from
    the settings on the first request (``uvicorn --factory automation.web:create_app``)."""
    app = FastAPI(
        title="Check-in automation",
        summary="Calendar and mail provider webhooks, health, metrics, and the HR console's JSON "
        "endpoints (the console's pages are HTML under /console/ and not described here).",
        version="0.1.0",
    )

    def get_runtime() -> Runtime:
        if runtime is not None:
            return runtime
        from automation.runtime import current

        return current()

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith("/webhooks/"):
            return JSONResponse({"detail": _describe(exc.errors())}, status_code=400)
        return await request_validation_exception_handler(request, exc)

    checks_runner = observability.BoundedChecks()
    database_gauges = observability.DatabaseCollector(get_runtime)

    @app.get("/healthz", tags=["operations"])
    def healthz() -> JSONResponse:
        """200 when the database answers ``SELECT 1`` and the broker answers (Redis ``PING``,
        a RabbitMQ connection opened); 503 naming the failed check. Each check waits at most
        a few seconds. The in-process (stub) broker needs no check and is not listed.

        Failures are reported by exception type and a fixed reason ("connection refused",
        "timed out", …) only: messages can carry host names, URLs and passwords."""
        checks: dict[str, str] = {}
        broker = "unknown"
        try:
            rt = get_runtime()
        except Exception as exc:  # noqa: BLE001 - reported as a failed check
            checks["runtime"] = f"failed: {type(exc).__name__}"
            log.warning("health check: runtime could not be built (%s)", type(exc).__name__)
        else:
            broker = broker_kind(rt.settings.broker_url)
            checks["database"] = checks_runner.run("database", lambda: _check_database(rt))
            if broker != "stub":
                url = rt.settings.broker_url
                checks["broker"] = checks_runner.run(
                    "broker", lambda: observability.check_broker(url)
                )
                if checks["broker"] != "ok":
                    log.warning("health check: broker %s %s", broker, checks["broker"])
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks, "broker": broker},
            status_code=200 if ok else 503,
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=PlainTextResponse,
        responses={
            200: {
                "description": "Prometheus text exposition (OpenMetrics when asked for)",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            401: {"description": "metrics_token is set and the bearer token is missing or wrong"},
            403: {"description": "No metrics_token, and the client is not on this machine"},
        },
    )
    def metrics(
        request: Request,
        authorization: Annotated[str | None, Header(max_length=1000)] = None,
    ) -> Response:
        """Prometheus metrics: this process's jobs and provider calls, and the task and
        inbound gauges read from the database now. Without ``metrics_token`` only clients on
        this machine are served; with it, ``Authorization: Bearer <metrics_token>`` is needed."""
        from prometheus_client.exposition import choose_encoder

        try:
            rt = get_runtime()
        except Exception as exc:  # noqa: BLE001 - no settings, so no token to check against
            log.warning("metrics: runtime could not be built (%s)", type(exc).__name__)
            return PlainTextResponse("runtime unavailable\n", status_code=503)
        token = str(getattr(rt.settings, "metrics_token", "") or "")
        client = request.client.host if request.client else None
        problem = observability.metrics_access(token, authorization, client)
        if problem:
            status, reason = problem
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return PlainTextResponse(reason + "\n", status_code=status, headers=headers)
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = encoder(observability.Scrape(observability.REGISTRY, database_gauges))
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    @app.post(
        "/webhooks/google/calendar",
        tags=["webhooks"],
        responses={
            200: {"description": "Accepted (or a handshake, a duplicate, an unknown channel)"},
            400: {"description": "Missing or malformed X-Goog-* headers"},
            401: {"description": "Wrong channel token or resource id"},
        },
    )
    def google_calendar(
        channel_id: Annotated[
            str | None, Header(alias="X-Goog-Channel-ID", max_length=GOOGLE_CHANNEL_ID_MAX)
        ] = None,
        token: Annotated[str | None, Header(alias="X-Goog-Channel-Token", max_length=256)] = None,
        resource_id: Annotated[
            str | None, Header(alias="X-Goog-Resource-ID", max_length=500)
        ] = None,
        state: Annotated[str | None, Header(alias="X-Goog-Resource-State", max_length=40)] = None,
        number: Annotated[int | None, Header(alias="X-Goog-Message-Number", ge=0)] = None,
    ) -> JSONResponse:
        """A Google Calendar push notice (``events.watch``). ``sync`` is the handshake;
        ``exists``/``not_exists`` queue one incremental sync, deduplicated on the message
        number. Answered at once: the sync runs on a worker."""
        missing = [
            name
            for name, value in (
                ("X-Goog-Channel-ID", channel_id),
                ("X-Goog-Resource-ID", resource_id),
                ("X-Goog-Resource-State", state),
            )
            if not value
        ]
        if missing:
            raise Refused(400, f"missing header(s): {', '.join(missing)}")
        assert channel_id and resource_id and state
        if state not in GOOGLE_STATES:
            raise Refused(400, f"X-Goog-Resource-State must be one of {', '.join(GOOGLE_STATES)}")
        if state != "sync" and number is None:
            raise Refused(400, "missing header: X-Goog-Message-Number")
        rt = get_runtime()
        outcome = google_notice(rt, channel_id, token, resource_id, state, number)
        _enqueue(rt, outcome.new_tasks)
        return JSONResponse({"result": outcome.result}, status_code=200)

    graph_responses: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "The validation handshake: the decoded token as text/plain",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        202: {"description": "Accepted: the valid items are queued"},
        400: {"description": "Malformed body"},
        401: {"description": "No item had a known subscription with the right clientState"},
        413: {"description": "Body too large"},
    }

    async def graph_endpoint(request: Request, validation_token: str | None) -> Response:
        if validation_token is not None:
            return _validation_echo(validation_token)
        notices = _parse_graph(await _read_body(request))
        rt = get_runtime()
        outcome = await run_in_threadpool(graph_notices, rt, notices)
        await run_in_threadpool(_enqueue, rt, outcome.new_tasks)
        return JSONResponse(
            {"accepted": outcome.accepted, "rejected": outcome.rejected}, status_code=202
        )

    @app.post(
        "/webhooks/graph/calendar",
        tags=["webhooks"],
        status_code=202,
        responses=graph_responses,
        openapi_extra=GRAPH_BODY,
    )
    async def graph_calendar(
        request: Request,
        validation_token: Annotated[str | None, Query(alias="validationToken")] = None,
    ) -> Response:
        """Microsoft Graph change notifications (the subscription's notificationUrl): each
        valid item queues one delta sync of its calendar; answered 202 at once."""
        return await graph_endpoint(request, validation_token)

    @app.post(
        "/webhooks/graph/lifecycle",
        tags=["webhooks"],
        status_code=202,
        responses=graph_responses,
        openapi_extra=GRAPH_BODY,
    )
    @app.post(  # what the Graph adapter derives by default: notificationUrl + "/lifecycle"
        "/webhooks/graph/calendar/lifecycle",
        tags=["webhooks"],
        status_code=202,
        responses=graph_responses,
        openapi_extra=GRAPH_BODY,
    )
    async def graph_lifecycle(
        request: Request,
        validation_token: Annotated[str | None, Query(alias="validationToken")] = None,
    ) -> Response:
        """Microsoft Graph lifecycle notifications (lifecycleNotificationUrl; both paths
        accept them): reauthorizationRequired renews the subscription, subscriptionRemoved
        recreates it and resyncs, missed resyncs."""
        return await graph_endpoint(request, validation_token)

    @app.post(
        "/webhooks/mail/inbound",
        tags=["webhooks"],
        status_code=202,
        responses={
            202: {"description": "Stored (or already stored: the same bytes are kept once)"},
            400: {"description": "No message in the body"},
            401: {"description": "Missing, stale or wrong X-Signature"},
            404: {"description": "The inbound webhook is not configured"},
            413: {"description": "Body too large"},
        },
    )
    async def inbound_mail(
        request: Request,
        signature: Annotated[str | None, Header(alias="X-Signature", max_length=300)] = None,
    ) -> JSONResponse:
        """One raw RFC 5322 message from an inbound-mail relay (SendGrid Inbound Parse in raw
        mode, Mailgun MIME routes, or your own forwarder), signed with
        ``inbound_webhook_secret``. Stored before anything reads it, then processed on a
        worker like every other inbound message."""
        rt = get_runtime()
        secret = rt.settings.inbound_webhook_secret
        if not secret:
            raise Refused(404, "the inbound mail webhook is off: set inbound_webhook_secret")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAIL_MAX_BODY:
            raise Refused(413, f"body larger than {MAIL_MAX_BODY} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAIL_MAX_BODY:
                raise Refused(413, f"body larger than {MAIL_MAX_BODY} bytes")
        problem = check_inbound_signature(secret, signature, bytes(body), rt.now())
        if problem:
            log.warning("inbound mail webhook refused: %s", problem)
            raise Refused(401, problem)
        raw = raw_message_of(request.headers.get("content-type", ""), bytes(body))
        if not raw.strip():
            raise Refused(400, "empty message")
        from automation.services.inbound import store_inbound

        stored = await run_in_threadpool(store_inbound, rt, raw, "webhook")
        return JSONResponse(
            {"stored": stored.inbound_id, "duplicate": stored.duplicate}, status_code=202
        )

    @app.post(
        "/webhooks/gmail",
        tags=["webhooks"],
        responses={
            200: {"description": "Accepted: the inbox is read on a worker"},
            401: {"description": "Wrong token"},
            404: {"description": "Not configured"},
        },
    )
    async def gmail_push(
        request: Request,
        token: Annotated[str | None, Query(max_length=300)] = None,
    ) -> JSONResponse:
        """A Gmail ``users.watch`` notice through a Pub/Sub push subscription whose endpoint
        is ``<base_url>/webhooks/gmail?token=<inbound_webhook_secret>``. The notice only
        says "something changed": the inbox is read from the stored historyId, so a lost or
        repeated notice costs nothing."""
        rt = get_runtime()
        secret = rt.settings.inbound_webhook_secret
        if not secret:
            raise Refused(404, "Gmail push is off: set inbound_webhook_secret")
        if not same_secret(token, secret):
            log.warning("gmail push refused: wrong token")
            raise Refused(401, "wrong token")
        await _read_body(request)  # the Pub/Sub envelope; nothing in it is needed
        ids = await run_in_threadpool(mail_poll_task, rt, "gmail")
        await run_in_threadpool(_enqueue, rt, ids)
        return JSONResponse({"queued": len(ids)}, status_code=200)

    from automation.console import add_console

    add_console(app, get_runtime)
    return app


def _check_database(rt: Runtime) -> str:
    """``SELECT 1`` on a raw pooled connection: no transaction, so no SQLite write lock."""
    try:
        conn = rt.engine.raw_connection()
        try:
            cursor = conn.cursor()
            cursor.execute("SELECT 1")
            cursor.fetchone()
            cursor.close()
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - reported as a failed check, type and reason only
        reason = observability.describe_failure(exc)
        log.warning("health check: database unreachable (%s)", reason)
        return f"failed: {reason}"
    return "ok"
