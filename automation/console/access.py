"""Signing in and out, and the home page.

Before signing in, the form carries a double-submit token (a random value in a SameSite=Strict
cookie and in the form), so no other site can sign a browser in to an account of its choosing.
Once signed in, the session cookie is HttpOnly, SameSite=Lax, limited to ``/console`` and
Secure when ``base_url`` is https; every change carries the session's own CSRF token.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from automation.console.base import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    AnyViewer,
    FormExpired,
    Rt,
    TenantRt,
    form,
    only_visible,
    render,
    safe_next,
    visible_people,
)
from automation.db import transaction
from automation.models import (
    CheckinSeries,
    InboundMessage,
    InboundState,
    Occurrence,
    OccurrenceState,
    Organization,
)
from automation.runtime import Runtime
from automation.services import accounts

router = APIRouter(prefix="/console", include_in_schema=False)


def secure(rt: Runtime) -> bool:
    return rt.settings.base_url.startswith("https://")


def start_session(rt: Runtime, signed: accounts.SignedIn, target: str) -> Response:
    """Redirect to ``target`` with the new session's cookie (used by every sign-in method)."""
    response = RedirectResponse(safe_next(target), status_code=303)
    response.set_cookie(
        SESSION_COOKIE, signed.token, httponly=True, samesite="lax", secure=secure(rt),
        path="/console", max_age=int(accounts.SESSION_LIFETIME.total_seconds()),
    )  # fmt: skip
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/console")
    return response


def organization_id(rt: Runtime) -> int | None:
    with transaction(rt.factory) as session:
        return session.scalar(
            select(Organization.id).where(Organization.slug == rt.settings.organization)
        )


def sign_in_response(
    request: Request,
    rt: Runtime,
    csrf: str,
    target: str,
    message: str = "",
    status: int = 200,
    organization: str = "",
) -> Response:
    # The OpenID Connect buttons: a client organization's own providers at ?org=<slug> (the
    # buttons then carry its slug), else the deployment's (automation.console.oidc).
    providers_of = getattr(request.app.state, "console_oidc_providers_of", None)
    oidc_org, providers = providers_of(rt, organization) if providers_of else ("", [])
    response = render(
        request, "sign_in.html", None, status, csrf=csrf, next=safe_next(target),
        message=message, providers=providers, oidc_org=oidc_org,
        organization=organization if ORGANIZATION_SLUG.fullmatch(organization) else "",
    )  # fmt: skip
    response.set_cookie(
        LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict", secure=secure(rt),
        path="/console",
    )  # fmt: skip
    return response


# A client organization's people sign in at /console/sign-in?org=<slug>; without it, the
# deployment's own organization (settings.organization).
ORGANIZATION_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,99}")


@router.get("/sign-in")
def sign_in_page(
    request: Request,
    rt: Rt,
    next: str = "/console/",  # noqa: A002
    org: str = "",
) -> Response:
    return sign_in_response(request, rt, secrets.token_urlsafe(32), next, organization=org)


@router.post("/sign-in")
async def sign_in(request: Request, rt: Rt) -> Response:
    fields = await form(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not accounts.csrf_token_ok(expected, fields.get("csrf")):
        raise FormExpired()
    target = fields.get("next", "/console/")
    slug = fields.get("organization", "")
    if not ORGANIZATION_SLUG.fullmatch(slug):
        slug = rt.settings.organization

    def attempt() -> accounts.SignedIn | None:
        with transaction(rt.factory) as session:
            org = session.scalar(select(Organization.id).where(Organization.slug == slug))
            if org is None:
                return None
            # The refusal (its count, a lock) commits with this transaction.
            return accounts.sign_in(
                session, org, fields.get("email", ""), fields.get("password", ""), rt.now()
            )

    signed = await run_in_threadpool(attempt)
    if signed is None:
        message = str(accounts.SignInRefused())
        return await run_in_threadpool(
            sign_in_response, request, rt, expected, target, message, 401,
            fields.get("organization", ""),
        )  # fmt: skip
    return start_session(rt, signed, target)


@router.post("/sign-out")
async def sign_out(request: Request, rt: Rt) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    fields = await form(request)

    def leave() -> bool | None:
        with transaction(rt.factory) as session:
            found = accounts.authenticate(session, token, rt.now())
            if found is None:
                return None
            if not accounts.csrf_ok(found[1], fields.get("csrf")):
                return False
            accounts.end_session(session, *found, rt.now())
            return True

    if await run_in_threadpool(leave) is False:
        raise FormExpired()
    response = RedirectResponse("/console/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/console")
    return response


@router.get("/")
def home(request: Request, who: AnyViewer, rt: TenantRt) -> Response:
    """What needs attention: check-ins this week, those awaiting documentation, quarantine."""
    now = rt.now()
    with transaction(rt.factory) as session:
        allowed = visible_people(session, who)
        occurrences = (
            select(func.count())
            .select_from(Occurrence)
            .join(CheckinSeries, CheckinSeries.id == Occurrence.series_id)
            .where(
                Occurrence.organization_id == who.organization_id,
                only_visible(CheckinSeries.employee_id, allowed),
            )
        )
        upcoming = session.scalar(
            occurrences.where(
                Occurrence.start_at >= now,
                Occurrence.start_at < now + dt.timedelta(days=7),
                Occurrence.state != OccurrenceState.CANCELLED,
            )
        )
        undocumented = session.scalar(
            occurrences.where(
                Occurrence.end_at < now,
                Occurrence.documented_at.is_(None),
                Occurrence.state.in_(
                    [OccurrenceState.PLANNED, OccurrenceState.INVITED, OccurrenceState.HELD]
                ),
            )
        )
        quarantined = (
            session.scalar(
                select(func.count()).where(
                    InboundMessage.organization_id == who.organization_id,
                    InboundMessage.state == InboundState.QUARANTINED,
                )
            )
            if who.is_hr
            else None
        )
    return render(
        request, "home.html", who, upcoming=upcoming, undocumented=undocumented,
        quarantined=quarantined,
    )  # fmt: skip
