"""The console's shared rules: roles, CSRF on every change, managers' reporting chain."""

from __future__ import annotations

from automation.console.base import reports_of
from tests.console_support import Console, console  # noqa: F401


def test_a_browser_without_a_session_is_sent_to_sign_in_and_comes_back(console: Console) -> None:  # noqa: F811
    away = console.client.get("/console/?week=2", follow_redirects=False)
    assert away.status_code == 303
    assert away.headers["location"] == "/console/sign-in?next=/console/%3Fweek%3D2"
    page = console.client.get(away.headers["location"])
    assert 'name="next" value="/console/?week=2"' in page.text


def test_sign_in_never_sends_the_browser_to_another_site(console: Console) -> None:  # noqa: F811
    console.sign_in("hr@acme.test")
    console.client.cookies.clear()
    for target in ("https://evil.test/", "//evil.test/x", "/console/\\\\evil.test", "/other"):
        page = console.client.get("/console/sign-in", params={"next": target})
        assert 'name="next" value="/console/"' in page.text, target


def test_a_manager_sees_only_their_reporting_chain(console: Console) -> None:  # noqa: F811
    with console.rt.factory() as session:
        boss, ceo = console.person("boss@acme.test"), console.person("ceo@acme.test")
        below_boss = reports_of(session, console.org, boss.id)
        below_ceo = reports_of(session, console.org, ceo.id)
    emails = {p: console.person(p).id for p in ("ana@acme.test", "kai@acme.test", "zoe@acme.test")}
    assert below_boss == {emails["ana@acme.test"], emails["kai@acme.test"]}
    assert emails["zoe@acme.test"] in below_ceo and boss.id in below_ceo
    assert ceo.id not in below_ceo


def test_home_counts_only_what_the_viewer_may_see(console: Console) -> None:  # noqa: F811
    console.sign_in("hr@acme.test")
    hr_home = console.client.get("/console/").text
    assert "messages in quarantine" in hr_home
    console.sign_in("boss@acme.test", role="manager")
    boss_home = console.client.get("/console/")
    assert boss_home.status_code == 200
    assert "messages in quarantine" not in boss_home.text  # HR only


def test_pages_answer_with_the_shared_security_headers(console: Console) -> None:  # noqa: F811
    console.sign_in("hr@acme.test")
    page = console.client.get("/console/")
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    css = console.client.get("/console/static/console.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]


def test_cookies_are_secure_when_the_console_is_served_over_https(console: Console) -> None:  # noqa: F811
    from fastapi.testclient import TestClient

    from automation.runtime import build_runtime
    from automation.web import create_app
    from tests.console_support import PASSWORD, csrf_of

    console.sign_in("hr@acme.test")  # creates the account
    https = build_runtime(console.rt.settings.with_(base_url="https://hr.acme.test"))
    try:
        with TestClient(create_app(https), base_url="https://testserver") as client:
            page = client.get("/console/sign-in")
            assert "Secure" in page.headers["set-cookie"]
            signed = client.post(
                "/console/sign-in",
                data={"email": "hr@acme.test", "password": PASSWORD, "csrf": csrf_of(page.text)},
                follow_redirects=False,
            )
            session_cookie = [
                c for c in signed.headers.get_list("set-cookie") if "checkin_session=" in c
            ]
            assert len(session_cookie) == 1 and "Secure" in session_cookie[0]
    finally:
        https.engine.dispose()
    # Served over plain http (the embedded default on loopback), the flag would stop the
    # browser from sending the cookie back at all.
    plain = console.client.get("/console/sign-in").headers["set-cookie"]
    assert "Secure" not in plain


def test_a_client_organizations_hr_signs_in_at_its_own_address_and_sees_only_it(
    console: Console,  # noqa: F811
) -> None:
    from automation.db import transaction
    from automation.models import Person
    from automation.people import ensure_organization
    from automation.services import accounts
    from tests.console_support import PASSWORD, csrf_of

    now = console.rt.now()
    with transaction(console.rt.factory) as session:
        beta = ensure_organization(session, "beta", "Beta", now).id
        session.add(Person(organization_id=beta, email="bo@beta.test", name="Bo Beta",
                           timezone="UTC", created_at=now, updated_at=now))  # fmt: skip
        accounts.create_account(
            session, beta, email="hr@beta.test", name="Beta HR", role="hr_admin", now=now,
            actor="test", password=PASSWORD,
        )  # fmt: skip
    client = console.client
    client.cookies.clear()
    # At the deployment's sign-in, the client's account is unknown (same refusal as ever).
    page = client.get("/console/sign-in")
    refused = client.post("/console/sign-in", data={
        "email": "hr@beta.test", "password": PASSWORD, "csrf": csrf_of(page.text)})  # fmt: skip
    assert refused.status_code == 401
    page = client.get("/console/sign-in", params={"org": "beta"})
    assert 'name="organization" value="beta"' in page.text
    signed = client.post(
        "/console/sign-in",
        data={"email": "hr@beta.test", "password": PASSWORD, "csrf": csrf_of(page.text),
              "organization": "beta"},
        follow_redirects=False,
    )  # fmt: skip
    assert signed.status_code == 303
    people = client.get("/console/people").text
    assert "Bo Beta" in people and "Ana Souza" not in people and "ana@acme.test" not in people
    # A slug that is not one is ignored, never reflected.
    odd = client.get("/console/sign-in", params={"org": "<b>x"})
    assert "&lt;b&gt;" not in odd.text and 'name="organization"' not in odd.text
