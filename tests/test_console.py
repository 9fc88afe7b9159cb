"""Signing in and out of the HR console over HTTP (automation/console.py), on both databases."""

from __future__ import annotations

import re

from automation.db import transaction
from automation.services import accounts
from tests.test_web import Web, web  # noqa: F401  (the app on a real database)

PASSWORD = "correct horse battery staple"


def add_admin(w: Web) -> None:
    with transaction(w.rt.factory) as session:
        accounts.create_account(
            session, w.org, email="hr@acme.test", name="Hal <HR>", role="hr_admin",
            now=w.rt.now(), actor="cli", password=PASSWORD,
        )  # fmt: skip


def form_csrf(page: str) -> str:
    match = re.search(r"name=\"csrf\" value=\"([^\"]+)\"", page)
    assert match, page
    return match.group(1)


def test_sign_in_sets_a_guarded_cookie_and_sign_out_ends_the_session(web: Web) -> None:  # noqa: F811
    add_admin(web)
    client = web.client
    assert client.get("/console/", follow_redirects=False).headers["location"] == (
        "/console/sign-in?next=/console/"
    )
    page = client.get("/console/sign-in")
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    csrf = form_csrf(page.text)
    signed = client.post(
        "/console/sign-in",
        data={"email": "HR@acme.test", "password": PASSWORD, "csrf": csrf},
        follow_redirects=False,
    )
    assert signed.status_code == 303 and signed.headers["location"] == "/console/"
    cookie = signed.headers["set-cookie"]
    assert "checkin_session=" in cookie and "HttpOnly" in cookie
    assert "SameSite=lax" in cookie and "Path=/console" in cookie
    home = client.get("/console/")
    assert home.status_code == 200
    assert "Hal &lt;HR&gt;" in home.text and "<HR>" not in home.text  # escaped
    session_csrf = form_csrf(home.text)
    # A sign-out without the session's token (a forged cross-site form) changes nothing.
    assert client.post("/console/sign-out", data={"csrf": csrf}).status_code == 403
    assert client.get("/console/").status_code == 200
    out = client.post("/console/sign-out", data={"csrf": session_csrf}, follow_redirects=False)
    assert out.status_code == 303
    client.cookies.clear()
    client.cookies.set("checkin_session", cookie.split("checkin_session=")[1].split(";")[0])
    assert client.get("/console/", follow_redirects=False).status_code == 303  # ended


def test_sign_in_needs_the_forms_token_and_refuses_without_saying_why(web: Web) -> None:  # noqa: F811
    add_admin(web)
    client = web.client
    csrf = form_csrf(client.get("/console/sign-in").text)
    forged = client.post(
        "/console/sign-in",
        data={"email": "hr@acme.test", "password": PASSWORD, "csrf": "not-the-cookie"},
    )
    assert forged.status_code == 403 and "checkin_session" not in forged.headers.get(
        "set-cookie", ""
    )
    texts = set()
    for email, password in (("hr@acme.test", "wrong password!!"), ("ghost@acme.test", PASSWORD)):
        refused = client.post(
            "/console/sign-in", data={"email": email, "password": password, "csrf": csrf}
        )
        assert refused.status_code == 401
        texts.add(re.search(r'<p role="alert" class="error">(.*?)</p>', refused.text).group(1))  # type: ignore[union-attr]
    assert len(texts) == 1
    # The refusal was committed: the failed attempt counts towards the lock.
    with web.rt.factory() as session:
        from sqlalchemy import select

        from automation.models import ConsoleAccount

        assert session.scalar(select(ConsoleAccount.failed_sign_ins)) == 1
