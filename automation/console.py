"""The HR console in the web app: signing in and out (the pages come next).

Sessions are :mod:`automation.services.accounts` sessions in an HttpOnly, SameSite=Lax cookie
(Secure when ``base_url`` is https) limited to ``/console``. Every POST carries a CSRF token:
the session's own once signed in; before that a double-submit token (a random value in a
cookie and in the form), so nobody can sign a browser in to an account of theirs. Pages are
plain server-rendered HTML with every value escaped; they are not part of the OpenAPI
description, which covers the JSON endpoints.
"""

from __future__ import annotations

import hmac
import html
import secrets
from collections.abc import Callable
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from automation.db import transaction
from automation.models import Organization
from automation.runtime import Runtime
from automation.services import accounts

SESSION_COOKIE = "checkin_session"
LOGIN_CSRF_COOKIE = "checkin_login_csrf"
MAX_FORM = 16 * 1024


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)} · Check-ins</title>"
        "<meta name=viewport content='width=device-width, initial-scale=1'></head>"
        f"<body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>",
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM:
        return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


def _secure(rt: Runtime) -> bool:
    return rt.settings.base_url.startswith("https://")


def _sign_in_form(csrf: str, message: str = "") -> str:
    note = f"<p role=alert>{html.escape(message)}</p>" if message else ""
    return (
        f"{note}<form method=post action=/console/sign-in>"
        f"<input type=hidden name=csrf value='{html.escape(csrf)}'>"
        "<label>Email <input name=email type=email autocomplete=username required></label>"
        "<label>Password <input name=password type=password "
        "autocomplete=current-password required></label>"
        "<button>Sign in</button></form>"
    )


def add_console(app: FastAPI, get_runtime: Callable[[], Runtime]) -> None:
    def signed_in(rt: Runtime, token: str | None):  # type: ignore[no-untyped-def]
        with transaction(rt.factory) as session:
            found = accounts.authenticate(session, token, rt.now())
            if found is None:
                return None
            account, row = found
            return account.email, account.name, account.role, row.csrf_token

    @app.get("/console/sign-in", include_in_schema=False)
    def sign_in_page() -> Response:
        rt = get_runtime()
        csrf = secrets.token_urlsafe(32)
        response = _page("Sign in", _sign_in_form(csrf))
        response.set_cookie(
            LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict",
            secure=_secure(rt), path="/console",
        )  # fmt: skip
        return response

    @app.post("/console/sign-in", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        rt = get_runtime()
        form = await _form(request)
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not hmac.compare_digest(expected, form.get("csrf", "")):
            return _page("Sign in", "<p role=alert>The form expired; reload the page.</p>", 403)

        def attempt() -> accounts.SignedIn | None:
            with transaction(rt.factory) as session:
                org = session.scalar(
                    select(Organization.id).where(Organization.slug == rt.settings.organization)
                )
                if org is None:
                    return None
                # The refusal (its count, a lock) commits with this transaction.
                return accounts.sign_in(
                    session, org, form.get("email", ""), form.get("password", ""), rt.now()
                )

        signed = await run_in_threadpool(attempt)
        if signed is None:
            return _page("Sign in", _sign_in_form(expected, str(accounts.SignInRefused())), 401)
        response = RedirectResponse("/console/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, signed.token, httponly=True, samesite="lax", secure=_secure(rt),
            path="/console", max_age=int(accounts.SESSION_LIFETIME.total_seconds()),
        )  # fmt: skip
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/console")
        return response

    @app.get("/console/", include_in_schema=False)
    def home(request: Request) -> Response:
        rt = get_runtime()
        who = signed_in(rt, request.cookies.get(SESSION_COOKIE))
        if who is None:
            return RedirectResponse("/console/sign-in", status_code=303)
        email, name, role, csrf = who
        return _page(
            "HR console",
            f"<p>Signed in as {html.escape(name)} &lt;{html.escape(email)}&gt;, "
            f"{html.escape(role.replace('_', ' '))}.</p>"
            "<form method=post action=/console/sign-out>"
            f"<input type=hidden name=csrf value='{html.escape(csrf)}'>"
            "<button>Sign out</button></form>",
        )

    @app.post("/console/sign-out", include_in_schema=False)
    async def sign_out(request: Request) -> Response:
        rt = get_runtime()
        token = request.cookies.get(SESSION_COOKIE)
        form = await _form(request)

        def leave() -> bool | None:
            with transaction(rt.factory) as session:
                found = accounts.authenticate(session, token, rt.now())
                if found is None:
                    return None
                if not accounts.csrf_ok(found[1], form.get("csrf")):
                    return False
                accounts.end_session(session, *found, rt.now())
                return True

        done = await run_in_threadpool(leave)
        if done is False:
            return _page("HR console", "<p role=alert>The form expired; reload the page.</p>", 403)
        response = RedirectResponse("/console/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/console")
        return response
