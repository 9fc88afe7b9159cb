"""HR's reports: the consistency report (charts, tables, CSV and JSON) and the quarantine of
inbound mail (the list, one message, releasing it). HR admins and partners only.

The report is :mod:`automation.services.report`, the one ``automation report consistency``
writes to files, over the same period (whole UTC days). Its SVG charts use presentation
attributes only, no ``style``, so the console's CSP (``default-src 'self'``) lets them draw.

A release goes through :func:`automation.services.inbound.release`, the function behind
``automation inbox quarantine release``: it writes the audit entry (with the actor
``console:<address>``) and schedules the message's ingest, which the page then runs at once,
as the command does, to show what became of it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from markupsafe import Markup
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from automation.console.base import (
    HEADERS,
    NOTICES,
    Changed,
    HrViewer,
    NotFound,
    TenantRt,
    Viewer,
    render,
)
from automation.db import transaction
from automation.models import NOT_RECORDED, InboundMessage, InboundState
from automation.replies import decode_message
from automation.runtime import Runtime
from automation.services import inbound
from automation.services.report import (
    CHARTS,
    ConsistencyReport,
    Figures,
    as_json,
    bar_chart,
    consistency_report,
    render_csv,
)
from automation.services.report import format_number as figure  # as the file report shows them
from automation.services.tasks import run_task

router = APIRouter(prefix="/console", include_in_schema=False)
# The report's JSON is an API: described in /openapi.json, unlike the pages.
api = APIRouter(prefix="/console", tags=["console"])


def install(app: FastAPI) -> None:
    app.include_router(api)


NOTICES.update(
    {
        "quarantine-recorded": "Released: the message was processed again and recorded.",
        "quarantine-kept": "Released: the message was processed again and kept without a "
        "record; the new reason is below.",
        "quarantine-pending": "Released: the message is waiting to be processed again.",
    }
)

# --------------------------------------------------------------------------- the report

# How the figures can be grouped: the report's own two groupings.
GROUPINGS = {
    "manager": ("managers", "Per manager", "who ran the check-in or owns the PIP"),
    "team": ("teams", "Per team", "the employee's current manager: a manager's direct reports"),
}
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class BadPeriod(ValueError):
    """The period's dates cannot be used; the text says why, for the person who typed them."""


def _day(value: str | None, which: str) -> dt.date | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        if not _DAY.fullmatch(value):
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise BadPeriod(f"The {which} date “{shown}” is not a date: use YYYY-MM-DD.") from None


def period(
    date_from: str | None, date_to: str | None
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The report's period as ``automation report consistency --from --to`` takes it: whole UTC
    days, from ``date_from``'s midnight up to the midnight after ``date_to``; either open."""
    first, last = _day(date_from, "start"), _day(date_to, "end")
    if first and last and last < first:
        raise BadPeriod("The end date is before the start date.")
    start = dt.datetime.combine(first, dt.time(), dt.UTC) if first else None
    try:
        end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), dt.UTC) if last else None
    except OverflowError:
        raise BadPeriod("The end date is too far in the future.") from None
    return start, end


def _report(
    rt: Runtime, who: Viewer, start: dt.datetime | None, end: dt.datetime | None
) -> ConsistencyReport:
    with transaction(rt.factory) as session:
        return consistency_report(
            session, who.organization_id, as_of=rt.now(), period_from=start, period_to=end,
            business_weekdays=rt.settings.business_weekdays, holidays=rt.settings.holidays,
        )  # fmt: skip


def _grouping(by: str) -> str:
    return by if by in GROUPINGS else "manager"


def _charts(report: ConsistencyReport, rows: tuple[Any, ...]) -> list[Markup]:
    """The file report's charts (:data:`CHARTS`), over the chosen grouping's rows."""
    return [
        bar_chart(
            title,
            [(f.name, getattr(f, attr)) for f in rows],
            reference=getattr(report.org, attr),
            unit=unit,
        )
        for attr, title, unit in CHARTS
    ]


DateFrom = Annotated[str | None, Query(alias="from", description="first day (UTC), YYYY-MM-DD")]
DateTo = Annotated[str | None, Query(alias="to", description="last day (UTC), inclusive")]


@router.get("/report")
def report_page(
    request: Request,
    who: HrViewer,
    rt: TenantRt,
    date_from: DateFrom = None,
    date_to: DateTo = None,
    by: str = "manager",
) -> Response:
    by = _grouping(by)
    form = {"from": (date_from or "").strip(), "to": (date_to or "").strip(), "by": by}
    try:
        start, end = period(date_from, date_to)
    except BadPeriod as exc:
        return render(
            request, "report.html", who, 400, title="Consistency report", error=str(exc),
            form=form, groupings=GROUPINGS, report=None,
        )  # fmt: skip
    report = _report(rt, who, start, end)
    attr, heading, explanation = GROUPINGS[by]
    rows = getattr(report, attr)
    org = report.org
    empty = org.due == 0 and org.pips == 0 and org.overdue_total == 0
    # The downloads' links: this period and grouping, the default left out.
    query = urlencode({k: v for k, v in form.items() if v and (k, v) != ("by", "manager")})
    return render(
        request, "report.html", who, title="Consistency report", error="", form=form,
        groupings=GROUPINGS, report=report, rows=rows, heading=heading,
        explanation=explanation, charts=[] if empty else _charts(report, rows), empty=empty,
        query=query, fmt=figure,
    )  # fmt: skip


@router.get("/report.csv")
def report_csv(
    who: HrViewer,
    rt: TenantRt,
    date_from: DateFrom = None,
    date_to: DateTo = None,
    by: str = "manager",
) -> Response:
    """The file report's CSV (one row per manager, or per team with ``by=team``)."""
    try:
        start, end = period(date_from, date_to)
    except BadPeriod as exc:
        return PlainTextResponse(str(exc) + "\n", status_code=400, headers=HEADERS)
    report = _report(rt, who, start, end)
    by = _grouping(by)
    if by == "team":  # the same columns; the manager named is the team's manager
        report = dataclasses.replace(report, managers=report.teams)
    days = "-".join(d.strip() for d in (date_from, date_to) if d and d.strip()) or "all"
    name = f"consistency-{by}s-{days}.csv"
    return Response(
        render_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={**HEADERS, "Content-Disposition": f'attachment; filename="{name}"'},
    )


class ReportOut(BaseModel):
    """The consistency report, as ``automation report consistency --json`` prints it."""

    organization: str
    as_of: str
    period_from: str | None
    period_to: str | None
    org: Figures  # the report's own dataclass: one description of the figures
    managers: list[Figures]
    teams: list[Figures]


class ProblemOut(BaseModel):
    detail: str


@api.get(
    "/report.json",
    response_model=ReportOut,
    responses={400: {"model": ProblemOut, "description": "The dates cannot be used"}},
    summary="The consistency report's figures (HR admins and partners; console session)",
)
def report_json(
    response: Response,
    who: HrViewer,
    rt: TenantRt,
    date_from: DateFrom = None,
    date_to: DateTo = None,
) -> Any:
    try:
        start, end = period(date_from, date_to)
    except BadPeriod as exc:
        return JSONResponse({"detail": str(exc)}, status_code=400, headers=HEADERS)
    response.headers.update(HEADERS)
    # Validated against ReportOut on the way out: the description cannot drift from as_json.
    return as_json(_report(rt, who, start, end))


# --------------------------------------------------------------------------- the quarantine

PAGE_SIZE = 100
STATE_NAMES = {
    InboundState.QUARANTINED: "Quarantined",
    InboundState.AUTO_REPLY: "Auto-replies",
    InboundState.BOUNCED: "Bounces",
    InboundState.DUPLICATE: "Duplicates",
}
MAX_HEADERS = 64 * 1024  # of the header block shown; the raw message can be far larger


def _message(session: Session, who: Viewer, message_id: int) -> InboundMessage:
    """The organization's message; another organization's is as absent as a missing one."""
    message = session.get(InboundMessage, message_id)
    if message is None or message.organization_id != who.organization_id:
        raise NotFound("No such message.")
    return message


@router.get("/quarantine")
def quarantine(
    request: Request, who: HrViewer, rt: TenantRt, state: str = "quarantined", page: str = "1"
) -> Response:
    """Messages kept without a record, newest first, with their reason."""
    states = [state] if state in STATE_NAMES else list(NOT_RECORDED)
    number = max(int(page), 1) if page.isascii() and page.isdigit() and len(page) < 7 else 1
    with transaction(rt.factory) as session:
        where = (
            InboundMessage.organization_id == who.organization_id,
            InboundMessage.state.in_(states),
        )
        total = session.scalar(select(func.count()).select_from(InboundMessage).where(*where))
        rows = session.execute(
            select(
                InboundMessage.id,
                InboundMessage.received_at,
                InboundMessage.from_address,
                InboundMessage.subject,
                InboundMessage.state,
                InboundMessage.quarantine_reason,
            )
            .where(*where)
            .order_by(InboundMessage.received_at.desc(), InboundMessage.id.desc())
            .offset((number - 1) * PAGE_SIZE)
            .limit(PAGE_SIZE)
        ).all()
    return render(
        request, "quarantine.html", who, title="Quarantine", rows=rows, total=total or 0,
        state=state if state in STATE_NAMES else "all", states=STATE_NAMES, page=number,
        more=number * PAGE_SIZE < (total or 0),
    )  # fmt: skip


def _header_block(raw: bytes) -> str:
    """The message's own header lines, as received (folded lines and all)."""
    end = min((i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0), default=-1)
    block = raw[:end] if end >= 0 else raw
    text = block[:MAX_HEADERS].decode("utf-8", "replace")
    return text + ("\n…" if len(block) > MAX_HEADERS else "")


def _message_page(
    request: Request, who: Viewer, rt: Runtime, message_id: int, error: str = "", status: int = 200
) -> Response:
    with transaction(rt.factory) as session:
        message = _message(session, who, message_id)
        session.expunge(message)
    parsed = decode_message(message.raw)
    automatic = "bounce" if parsed.bounce else "auto-reply" if parsed.auto_reply else "no"
    return render(
        request, "quarantine_message.html", who, status, title=f"Inbound message {message.id}",
        message=message, parsed=parsed, automatic=automatic, headers=_header_block(message.raw),
        releasable=message.state in inbound.RELEASABLE, error=error,
    )  # fmt: skip


@router.get("/quarantine/{message_id}")
def quarantined_message(request: Request, message_id: int, who: HrViewer, rt: TenantRt) -> Response:
    """Headers, reason, SHA-256 and the decoded text, shown as text: never rendered as HTML."""
    return _message_page(request, who, rt, message_id)


@router.post("/quarantine/{message_id}/release")
def release_message(
    request: Request, message_id: int, who: HrViewer, fields: Changed, rt: TenantRt
) -> Response:
    """Process the message again, optionally as a person on record's (with the reason why)."""
    with transaction(rt.factory) as session:
        _message(session, who, message_id)
    attribute_to = fields.get("as", "").strip() or None
    reason = fields.get("reason", "").strip() or None
    if attribute_to and not reason:
        error = "Say why this message is attributed to someone other than its sender."
        return _message_page(request, who, rt, message_id, error, 400)
    try:
        # The service writes the audit entry (inbound.released), with our actor.
        task_id = inbound.release(
            rt, message_id, operator=who.actor, attribute_to=attribute_to, reason=reason
        )
    except inbound.ReleaseRefused as exc:
        return _message_page(request, who, rt, message_id, str(exc), 409)
    # At once, as the command does, so the page can show the outcome; should a worker have
    # claimed the task first, the page says it is waiting.
    run_task(rt, task_id)
    with transaction(rt.factory) as session:
        state = _message(session, who, message_id).state
    notice = {
        InboundState.RECORDED: "quarantine-recorded",
        InboundState.RECEIVED: "quarantine-pending",
    }.get(state, "quarantine-kept")
    return RedirectResponse(f"/console/quarantine/{message_id}?notice={notice}", status_code=303)
