"""The consultant's view (fractional HR): the client organizations an account is granted.

A ``consultant`` account lives in one organization (the firm's own, or any), where it has an
HR partner's rights on the ordinary pages. The organizations it is granted
(``automation console account grant EMAIL --org SLUG``; :func:`automation.services.accounts.grant`)
it reaches only here:

- ``GET /console/clients``: the cross-client summary, one row of figures per client (check-in
  completion, documentation delay, overdue check-ins and PIP reviews, open PIPs), each taken
  from the consistency report (:mod:`automation.services.report`) computed in that client's
  own scope. Figures only: no client's records are shown beside another's.
- ``GET /console/clients/queue``: one overdue and escalation queue across the clients, each
  client's part built by :func:`automation.services.escalation.overdue_queue` in that client's
  scope, each row labelled with its client, the most overdue first. Acknowledging and
  reassigning post to ``/console/clients/{slug}/queue/acknowledge`` and ``/reassign``, which
  call the same service functions as the organization's own queue (:mod:`.queues`) with the
  client's runtime: the change and its audit entry (actor ``console:<address>``) are the
  client's.
- ``GET /console/clients/{slug}/report`` (and ``.csv``): one client's consistency report.

Every client is reached through ``rt.tenant(client_id)``: its sessions are scoped to it
(:mod:`automation.tenancy`), so nothing of one client is read while working for another. The
grants are read on every request (:attr:`.base.Viewer.granted`): a revoked grant is gone at
the next request. A slug that is not granted, whether it exists or not, answers 404.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from sqlalchemy import select

from automation.console.base import (
    CONSULTANT,
    HEADERS,
    NOTICES,
    Changed,
    ConsoleError,
    NotFound,
    Rt,
    Viewer,
    render,
    require,
)
from automation.console.reports import (
    GROUPINGS,
    BadPeriod,
    DateFrom,
    DateTo,
    _charts,
    _grouping,
    figure,
    period,
)
from automation.db import transaction
from automation.models import Organization, Person
from automation.runtime import Runtime
from automation.services import escalation
from automation.services.escalation import QUEUE_KINDS, QueueError, QueueItem
from automation.services.report import ConsistencyReport, Figures, consistency_report, render_csv

router = APIRouter(prefix="/console", include_in_schema=False)

ConsultantViewer = Annotated[Viewer, Depends(require(CONSULTANT))]
LIMIT = 500  # rows per client, as the organization's own queue; the rest are counted as "more"

NOTICES.update(
    {
        "clients-acknowledged": "Acknowledged in the client's organization. It is still "
        "undocumented: its remaining reminders and escalation steps go out until it is "
        "documented.",
        "clients-nothing-to-acknowledge": "Nothing to acknowledge: no escalation step of it "
        "awaits an acknowledgement.",
        "clients-reassigned": "Reassigned in the client's organization. The new person was "
        "sent the follow-up (or review) email and gets the next reminders; their reply "
        "documents it.",
    }
)


@dataclass(frozen=True)
class Client:
    """A granted organization, as the pages name it."""

    id: int
    slug: str
    name: str

    @property
    def path(self) -> str:
        return "/console/clients/" + quote(self.slug, safe="")


def clients_of(rt: Runtime, who: Viewer) -> list[Client]:
    """The organizations granted to ``who``, by name: their names and slugs only, read in the
    system scope (a client's own rows are read in its scope, by the pages)."""
    if not who.granted:
        return []
    with transaction(rt.factory) as session:
        rows = session.execute(
            select(Organization.id, Organization.slug, Organization.name)
            .where(Organization.id.in_(who.granted))
            .order_by(Organization.name, Organization.id)
        ).all()
    return [Client(*row) for row in rows]


def client_of(rt: Runtime, who: Viewer, slug: str) -> Client:
    """The granted client with ``slug``; 404 otherwise, whether or not it exists."""
    for client in clients_of(rt, who):
        if client.slug == slug:
            return client
    raise NotFound("No such client.")


def _report(
    rt: Runtime, client: Client, start: dt.datetime | None, end: dt.datetime | None
) -> ConsistencyReport:
    """The client's consistency report, computed in the client's scope with its settings."""
    scoped = rt.tenant(client.id)
    with transaction(scoped.factory) as session:
        return consistency_report(
            session, client.id, as_of=scoped.now(), period_from=start, period_to=end,
            business_weekdays=scoped.settings.business_weekdays,
            holidays=scoped.settings.holidays,
        )  # fmt: skip


# --------------------------------------------------------------------------- the summary


@dataclass(frozen=True)
class Summary:
    client: Client
    figures: Figures  # the report's organisation-wide row

    @property
    def open_pips(self) -> int:
        return self.figures.pip_states.get("active", 0)


@router.get("/clients")
def summary_page(
    request: Request,
    who: ConsultantViewer,
    rt: Rt,
    date_from: DateFrom = None,
    date_to: DateTo = None,
) -> Response:
    """One row of figures per client, each from its own consistency report."""
    form = {"from": (date_from or "").strip(), "to": (date_to or "").strip()}
    clients = clients_of(rt, who)
    try:
        start, end = period(date_from, date_to)
    except BadPeriod as exc:
        return render(
            request, "clients.html", who, 400, title="Clients", error=str(exc), form=form,
            rows=[], clients=clients, query="", fmt=figure,
        )  # fmt: skip
    rows = [Summary(client, _report(rt, client, start, end).org) for client in clients]
    query = urlencode({k: v for k, v in form.items() if v})
    return render(
        request, "clients.html", who, title="Clients", error="", form=form, rows=rows,
        clients=clients, query=query, fmt=figure,
    )  # fmt: skip


# --------------------------------------------------------------------------- the queue


@dataclass(frozen=True)
class Row:
    client: Client
    item: QueueItem


@router.get("/clients/queue")
def queue_page(request: Request, who: ConsultantViewer, rt: Rt, client: str = "") -> Response:
    """Every granted client's overdue queue in one list, labelled by client, the most overdue
    first; ``?client=SLUG`` keeps one client's rows."""
    clients = clients_of(rt, who)
    shown = [client_of(rt, who, client)] if client else clients
    rows: list[Row] = []
    people: dict[int, list[Person]] = {}
    more: list[Client] = []
    for c in shown:
        scoped = rt.tenant(c.id)
        with transaction(scoped.factory) as session:
            queue = escalation.overdue_queue(session, c.id, scoped.now(), None, LIMIT)
            if any(item.reassignable for item in queue.items):
                people[c.id] = escalation.reassignable_people(session, c.id)
        rows += [Row(c, item) for item in queue.items]
        if queue.more:
            more.append(c)
    rows.sort(
        key=lambda r: (
            -r.item.days_overdue, r.item.due_at, r.client.name, r.client.id,
            QUEUE_KINDS.index(r.item.kind), r.item.id,
        )
    )  # fmt: skip
    return render(
        request, "clients_queue.html", who, title="Overdue across clients", rows=rows,
        people=people, clients=clients, selected=client, more=more,
    )  # fmt: skip


def _subject(fields: Changed) -> tuple[str, int]:
    kind, subject_id = fields.get("kind", ""), fields.get("id", "")
    if kind not in QUEUE_KINDS or not subject_id.isdigit():
        raise NotFound("No such item.")
    return kind, int(subject_id)


def _back(notice: str, fields: Changed) -> RedirectResponse:
    """To the combined queue, or to one client's part of it when the form came from there."""
    query = {"notice": notice}
    if fields.get("client"):
        query["client"] = fields["client"]
    return RedirectResponse(f"/console/clients/queue?{urlencode(query)}", status_code=303)


@router.post("/clients/{slug}/queue/acknowledge")
def acknowledge(slug: str, who: ConsultantViewer, fields: Changed, rt: Rt) -> Response:
    """:func:`automation.services.escalation.acknowledge_escalation`, for the client."""
    client = client_of(rt, who, slug)
    kind, subject_id = _subject(fields)
    scoped = rt.tenant(client.id)
    with transaction(scoped.factory) as session:
        if escalation.load_subject(session, client.id, kind, subject_id) is None:
            raise NotFound("No such item.")
        closed = escalation.acknowledge_escalation(
            scoped, session, client.id, kind, subject_id,
            actor=who.actor, note=fields.get("note", "")[:2000],
        )  # fmt: skip
    return _back("clients-acknowledged" if closed else "clients-nothing-to-acknowledge", fields)


@router.post("/clients/{slug}/queue/reassign")
def reassign(slug: str, who: ConsultantViewer, fields: Changed, rt: Rt) -> Response:
    """:func:`automation.services.escalation.reassign`, for the client, to one of its people."""
    client = client_of(rt, who, slug)
    kind, subject_id = _subject(fields)
    person = fields.get("person", "")
    if not person.isdigit():
        raise ConsoleError("Choose the person who documents it.")
    scoped = rt.tenant(client.id)
    try:
        with transaction(scoped.factory) as session:
            if escalation.load_subject(session, client.id, kind, subject_id) is None:
                raise NotFound("No such item.")
            escalation.reassign(
                scoped, session, client.id, kind, subject_id, int(person),
                actor=who.actor, reason=fields.get("reason", "")[:2000],
            )  # fmt: skip
    except QueueError as exc:
        raise ConsoleError(str(exc)) from exc
    return _back("clients-reassigned", fields)


# --------------------------------------------------------------------------- one client's report


@router.get("/clients/{slug}/report")
def report_page(
    request: Request,
    slug: str,
    who: ConsultantViewer,
    rt: Rt,
    date_from: DateFrom = None,
    date_to: DateTo = None,
    by: str = "manager",
) -> Response:
    """The client's consistency report: the figures and charts of ``/console/report``."""
    client = client_of(rt, who, slug)
    by = _grouping(by)
    form = {"from": (date_from or "").strip(), "to": (date_to or "").strip(), "by": by}
    context: dict[str, Any] = {"client": client, "form": form, "groupings": GROUPINGS}
    try:
        start, end = period(date_from, date_to)
    except BadPeriod as exc:
        return render(
            request, "client_report.html", who, 400, title=f"Report: {client.name}",
            error=str(exc), report=None, **context,
        )  # fmt: skip
    report = _report(rt, client, start, end)
    attr, heading, explanation = GROUPINGS[by]
    rows = getattr(report, attr)
    org = report.org
    empty = org.due == 0 and org.pips == 0 and org.overdue_total == 0
    query = urlencode({k: v for k, v in form.items() if v and (k, v) != ("by", "manager")})
    return render(
        request, "client_report.html", who, title=f"Report: {client.name}", error="",
        report=report, rows=rows, heading=heading, explanation=explanation,
        charts=[] if empty else _charts(report, rows), empty=empty, query=query, fmt=figure,
        **context,
    )  # fmt: skip


@router.get("/clients/{slug}/report.csv")
def report_csv(
    slug: str,
    who: ConsultantViewer,
    rt: Rt,
    date_from: DateFrom = None,
    date_to: DateTo = None,
    by: str = "manager",
) -> Response:
    """The client's report as the file report's CSV (``by=team``: one row per team)."""
    client = client_of(rt, who, slug)
    try:
        start, end = period(date_from, date_to)
    except BadPeriod as exc:
        return PlainTextResponse(str(exc) + "\n", status_code=400, headers=HEADERS)
    report = _report(rt, client, start, end)
    by = _grouping(by)
    if by == "team":
        report = dataclasses.replace(report, managers=report.teams)
    days = "-".join(d.strip() for d in (date_from, date_to) if d and d.strip()) or "all"
    name = f"consistency-{client.id}-{by}s-{days}.csv"
    return Response(
        render_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={**HEADERS, "Content-Disposition": f'attachment; filename="{name}"'},
    )
