"""Signing in to the console with Google and Microsoft (OpenID Connect), against the fakes in
tests/fakes/oidc.py: the console makes its real HTTP calls, answered through ``responses``."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import responses
from fastapi.testclient import TestClient
from sqlalchemy import select

from automation.console.oidc import FLOW_COOKIE, REFUSED, pkce_challenge
from automation.db import transaction
from automation.errors import ConfigError
from automation.models import AuditEntry, ConsoleAccount
from automation.runtime import build_runtime
from automation.services import accounts
from automation.settings import Settings, load_settings
from automation.web import create_app
from tests import console_support
from tests.console_support import Console
from tests.fakes.oidc import GoogleFake, MicrosoftFake, OidcFake, User

GOOGLE_CLIENT = "1234567890-abcdefghijklmnop.apps.googleusercontent.com"
GOOGLE_SECRET = "GOCSPX-google-test-secret"
MICROSOFT_CLIENT = "6731de76-14a6-49ae-97bc-6eba6914391e"
MICROSOFT_SECRET = "Zx8Q~microsoft.test-secret"
TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"
TENANT_DOMAIN = "acme.onmicrosoft.com"
BASE_URL = "http://localhost:8080"
GOOGLE_ISSUER = "https://accounts.google.com"
MICROSOFT_ISSUER = f"https://login.microsoftonline.com/{TENANT_ID}/v2.0"
Refusal = Callable[[httpx.Response, str], bool]

console = console_support.console  # the fixture: an organization and the web app on it


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Both providers configured (the Microsoft tenant by its domain, as many people will)."""
    return settings.with_(
        oidc_google_client_id=GOOGLE_CLIENT,
        oidc_google_hosted_domain="acme.test",
        oidc_microsoft_client_id=MICROSOFT_CLIENT,
        oidc_microsoft_tenant=TENANT_DOMAIN,
    )


@pytest.fixture(autouse=True)
def client_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMATION_OIDC_GOOGLE_CLIENT_SECRET", GOOGLE_SECRET)
    monkeypatch.setenv("AUTOMATION_OIDC_MICROSOFT_CLIENT_SECRET", MICROSOFT_SECRET)


@pytest.fixture
def http() -> Iterator[responses.RequestsMock]:
    """Every ``requests`` call answered by the fakes registered on it; any other is an error."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def google(console: Console, http: responses.RequestsMock) -> GoogleFake:
    fake = GoogleFake(
        client_id=GOOGLE_CLIENT,
        client_secret=GOOGLE_SECRET,
        redirect_uri=f"{BASE_URL}/console/oidc/google/callback",
        now=console.rt.now,
    )
    fake.register(http)
    return fake


@pytest.fixture
def microsoft(console: Console, http: responses.RequestsMock) -> MicrosoftFake:
    fake = MicrosoftFake(
        tenant_id=TENANT_ID,
        tenant_domain=TENANT_DOMAIN,
        client_id=MICROSOFT_CLIENT,
        client_secret=MICROSOFT_SECRET,
        redirect_uri=f"{BASE_URL}/console/oidc/microsoft/callback",
        now=console.rt.now,
    )
    fake.register(http)
    return fake


def add_account(console: Console, email: str, role: str = "hr_admin") -> int:
    """What HR does with ``automation console account add --no-password``."""
    with transaction(console.rt.factory) as session:
        account = accounts.create_account(
            session, console.org, email=email, name=email.split("@")[0].title(), role=role,
            now=console.rt.now(), actor="test",
        )  # fmt: skip
        return account.id


def start(console: Console, fake: OidcFake, target: str = "/console/") -> httpx.Response:
    console.client.cookies.clear()
    answer = console.client.get(
        f"/console/oidc/{fake.name}/start", params={"next": target}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    return answer


def back(console: Console, location: str) -> httpx.Response:
    """The browser arriving at the callback the provider sent it to."""
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}" == BASE_URL, location
    return console.client.get(f"{parts.path}?{parts.query}", follow_redirects=False)


def sign_in_with(console: Console, fake: OidcFake, target: str = "/console/") -> httpx.Response:
    """The whole round: the console's start, the provider's sign-in page, the callback."""
    began = start(console, fake, target)
    return back(console, fake.authorize(began.headers["location"]))


def account(console: Console, account_id: int) -> ConsoleAccount:
    with console.rt.factory() as session:
        found = session.get(ConsoleAccount, account_id)
        assert found is not None
        session.expunge(found)
        return found


def audit_of(console: Console, account_id: int) -> list[tuple[str, dict]]:
    with console.rt.factory() as session:
        rows = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.subject_kind == "console_account")
            .where(AuditEntry.subject_id == account_id)
            .order_by(AuditEntry.id)
        ).all()
        return [(row.action, row.data or {}) for row in rows]


@pytest.fixture
def refused(caplog: pytest.LogCaptureFixture) -> Refusal:
    """A check of the one answer every refusal gets (401, the sign-in page with the generic
    message, no session) and of the reason logged for it since the last check."""
    caplog.set_level(logging.INFO, logger="automation.console")
    seen = 0

    def check(answer: httpx.Response, because: str) -> bool:
        nonlocal seen
        said = [r.getMessage() for r in caplog.records if r.name == "automation.console"]
        new, seen = said[seen:], len(said)
        assert answer.status_code == 401, answer.text
        assert REFUSED.split(".")[0] in answer.text and 'name="password"' in answer.text
        assert "checkin_session=" not in answer.headers.get("set-cookie", "")
        assert any(because in line for line in new), new
        return True

    return check


# --------------------------------------------------------------------------- signing in


def test_google_sign_in_binds_the_account_and_lands_where_the_person_was_going(
    console: Console,
    google: GoogleFake,
) -> None:
    hr = add_account(console, "hr@acme.test")
    google.user = User("hr@acme.test", name="Hal Hr", hd="acme.test")
    began = start(console, google, "/console/people?page=2")
    location = urlsplit(began.headers["location"])
    assert f"https://{location.netloc}{location.path}" == google.authorization_endpoint
    sent = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert sent["response_type"] == "code" and sent["client_id"] == GOOGLE_CLIENT
    assert sent["scope"] == "openid email profile" and sent["prompt"] == "select_account"
    assert sent["redirect_uri"] == f"{BASE_URL}/console/oidc/google/callback"
    assert sent["code_challenge_method"] == "S256" and sent["hd"] == "acme.test"
    assert len(sent["state"]) >= 32 and len(sent["nonce"]) >= 32
    cookie = began.headers["set-cookie"]
    assert cookie.startswith(f"{FLOW_COOKIE}=") and "HttpOnly" in cookie
    assert "Path=/console/oidc" in cookie and "SameSite=lax" in cookie and "Max-Age=600" in cookie
    assert began.headers["cache-control"] == "no-store"

    arrived = back(console, google.authorize(began.headers["location"]))
    assert arrived.status_code == 303, arrived.text
    assert arrived.headers["location"] == "/console/people?page=2"
    assert f"{FLOW_COOKIE}=" in arrived.headers["set-cookie"]  # deleted
    home = console.client.get("/console/")
    assert home.status_code == 200 and "hr@acme.test" in home.text
    bound = account(console, hr)
    assert (bound.oidc_issuer, bound.oidc_subject) == (GOOGLE_ISSUER, google.user.sub)
    assert bound.last_sign_in_at is not None
    assert [a for a, _ in audit_of(console, hr)][-2:] == ["console.oidc_bound", "console.signed_in"]
    assert audit_of(console, hr)[-1][1] == {"method": "oidc", "issuer": GOOGLE_ISSUER}
    assert google.calls["token"] == 1 and google.last_token_error is None


def test_microsoft_sign_in_uses_the_tenant_and_ties_the_account_to_oid_and_tid(
    console: Console,
    microsoft: MicrosoftFake,
) -> None:
    boss = add_account(console, "boss@acme.test", role="manager")
    # Without the optional email claim, the sign-in name is the address.
    microsoft.user = User("Boss@acme.test", name="Bea Boss", email_claim=False)
    arrived = sign_in_with(console, microsoft)
    assert arrived.status_code == 303 and arrived.headers["location"] == "/console/", arrived.text
    assert microsoft.last_authorize["prompt"] == "select_account"
    home = console.client.get("/console/")
    assert home.status_code == 200 and "boss@acme.test" in home.text
    bound = account(console, boss)
    assert bound.oidc_issuer == MICROSOFT_ISSUER
    assert bound.oidc_subject == f"{TENANT_ID}/{microsoft.user.oid}"
    # The discovery document was read by the tenant's domain and names the tenant id.
    assert microsoft.calls["discovery"] == 1 and microsoft.calls["jwks"] == 1

    # A second sign-in reuses the cached discovery document and keys.
    again = sign_in_with(console, microsoft)
    assert again.status_code == 303
    assert microsoft.calls["discovery"] == 1 and microsoft.calls["jwks"] == 1


def test_once_bound_another_subject_with_the_same_address_is_refused(
    console: Console,
    google: GoogleFake,
    refused: Refusal,
) -> None:
    hr = add_account(console, "hr@acme.test")
    google.user = User("hr@acme.test", hd="acme.test")
    assert sign_in_with(console, google).status_code == 303
    first = google.user.sub
    # The address is given to someone else (or another account claims it).
    google.user = User("hr@acme.test", hd="acme.test")
    assert refused(sign_in_with(console, google), "bound to another identity")
    assert account(console, hr).oidc_subject == first
    action, data = audit_of(console, hr)[-1]
    assert action == "console.sign_in_refused"
    assert data == {
        "reason": "bound to another identity",
        "method": "oidc",
        "issuer": GOOGLE_ISSUER,
    }
    # The person it is bound to still signs in, even after the address changed.
    google.user = User("hal.renamed@acme.test", sub=first, hd="acme.test")
    assert sign_in_with(console, google).status_code == 303


def test_a_password_lock_does_not_stop_the_providers_sign_in(
    console: Console,
    google: GoogleFake,
) -> None:
    console.sign_in("hr@acme.test")  # a local account with a password
    with transaction(console.rt.factory) as session:
        for _ in range(accounts.MAX_FAILED_SIGN_INS):
            accounts.sign_in(session, console.org, "hr@acme.test", "wrong", console.rt.now())
    google.user = User("hr@acme.test", hd="acme.test")
    assert sign_in_with(console, google).status_code == 303


# --------------------------------------------------------------------------- refusals


def test_a_state_that_is_not_the_cookies_is_refused_before_the_code_is_used(
    console: Console,
    google: GoogleFake,
    refused: Refusal,
) -> None:
    add_account(console, "hr@acme.test")
    google.user = User("hr@acme.test", hd="acme.test")
    began = start(console, google)
    location = google.authorize(began.headers["location"])
    forged = location.replace("state=", "state=x")
    assert refused(back(console, forged), "state is not the one we sent")
    # Another browser (no flow cookie) with the right state is refused too.
    other = start(console, google)
    location = google.authorize(other.headers["location"])
    console.client.cookies.clear()
    assert refused(back(console, location), "no sign-in cookie")
    assert google.calls["token"] == 0


def test_a_tampered_or_foreign_flow_cookie_is_refused(
    console: Console,
    google: GoogleFake,
    microsoft: MicrosoftFake,
    refused: Refusal,
) -> None:
    add_account(console, "hr@acme.test")
    google.user = User("hr@acme.test", hd="acme.test")
    began = start(console, google)
    location = google.authorize(began.headers["location"])
    # The browser's holder rewrites where the sign-in goes, keeping the signature.
    (cookie,) = [c for c in console.client.cookies.jar if c.name == FLOW_COOKIE]
    payload, mac = (cookie.value or "").split(".")
    flow = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    flow["next"] = "/console/templates"
    changed = base64.urlsafe_b64encode(json.dumps(flow).encode()).decode().rstrip("=")
    cookie.value = f"{changed}.{mac}"
    assert refused(back(console, location), "signature is wrong")
    # A flow started for Google cannot finish at Microsoft's callback.
    began = start(console, google)
    location = google.authorize(began.headers["location"])
    assert refused(
        back(console, location.replace("/google/", "/microsoft/")), "started with google"
    )
    assert google.calls["token"] == 0 and microsoft.calls["token"] == 0


def test_a_nonce_that_is_not_ours_is_refused(
    console: Console, google: GoogleFake, refused: Refusal
) -> None:
    add_account(console, "hr@acme.test")
    google.user = User("hr@acme.test", hd="acme.test")
    google.tamper = {"nonce": "replayed-from-another-sign-in"}
    assert refused(sign_in_with(console, google), "nonce is not the one we sent")
    google.tamper = {"nonce": None}
    assert refused(sign_in_with(console, google), "nonce is not the one we sent")


def test_a_token_for_another_client_is_refused(
    console: Console, google: GoogleFake, refused: Refusal
) -> None:
    add_account(console, "hr@acme.test")
    google.user = User("hr@acme.test", hd="acme.test")
    google.tamper = {"aud": "other-app.apps.googleusercontent.com"}
    assert refused(sign_in_with(console, google), "another client (aud)")
    # Several audiences are accepted only when we are the authorized party.
    google.tamper = {"aud": [GOOGLE_CLIENT, "other"], "azp": "other"}
    assert refused(sign_in_with(console, google), "several audiences")


def test_a_token_from_another_issuer_is_refused(
    console: Console, google: GoogleFake, refused: Refusal
) -> None:
    add_account(console, "hr@acme.test")
    google.user = User("hr@acme.test", hd="acme.test")
    google.tamper = {"iss": "https://accounts.evil.test"}
    assert refused(sign_in_with(console, google), "issuer is not")
    google.tamper = {"iss": "accounts.google.com"}  # Google's documented second form
    assert sign_in_with(console, google).status_code == 303


def test_a_token_from_another_microsoft_tenant_is_refused(
    console: Console,
    microsoft: MicrosoftFake,
    refused: Refusal,
) -> None:
    add_account(console, "boss@acme.test", role="manager")
    microsoft.user = User("boss@acme.test")
    other = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    microsoft.tamper = {"iss": f"https://login.microsoftonline.com/{other}/v2.0", "tid": other}
    assert refused(sign_in_with(console, microsoft), "issuer is not")
    microsoft.tamper = {"tid": other}  # our issuer, another tenant's user
    assert refused(sign_in_with(console, microsoft), "another tenant (tid)")
    microsoft.tamper = {}
    assert sign_in_with(console, microsoft).status_code == 303


def test_an_expired_token_is_refused(
    console: Console, google: GoogleFake, refused: Refusal
) -> None:
    add_account(console, "hr@acme.test")
    google.user = User("hr@acme.test", hd="acme.test")
    now = int(console.rt.now().timestamp())
    google.tamper = {"iat": now - 7200, "exp": now - 3600}
    assert refused(sign_in_with(console, google), "has expired")
    google.tamper = {"iat": now + 3600, "exp": now + 7200}  # issued in the future
    assert refused(sign_in_with(console, google), "issued in the future")


def test_an_address_google_has_not_verified_is_refused_and_audited(
    console: Console,
    google: GoogleFake,
    refused: Refusal,
) -> None:
    hr = add_account(console, "hr@acme.test")
    google.user = User("hr@acme.test", hd="acme.test", email_verified=False)
    assert refused(sign_in_with(console, google), "has not verified")
    assert account(console, hr).oidc_subject is None
    action, data = audit_of(console, hr)[-1]
    assert action == "console.sign_in_refused" and data["method"] == "oidc"
    assert data["reason"] == "Google has not verified the address"


def test_an_account_outside_the_workspace_domain_is_refused(
    console: Console,
    google: GoogleFake,
    refused: Refusal,
) -> None:
    add_account(console, "hr@acme.test")
    google.user = User("hr@acme.test")  # a consumer Google account with that address: no hd
    assert refused(sign_in_with(console, google), "Workspace domain")


def test_a_token_signed_by_another_key_is_refused(
    console: Console, google: GoogleFake, refused: Refusal
) -> None:
    add_account(console, "hr@acme.test")
    google.user = User("hr@acme.test", hd="acme.test")
    google.forge(same_kid=True)
    assert refused(sign_in_with(console, google), "signature does not verify")
    fetched = google.calls["jwks"]
    # An unknown key id makes the console fetch the keys once more, then refuse.
    google.forge(same_kid=False)
    assert refused(sign_in_with(console, google), "is not in the provider's key set")
    assert google.calls["jwks"] == fetched + 1


def test_a_rotated_key_is_fetched_once_and_accepted(console: Console, google: GoogleFake) -> None:
    add_account(console, "hr@acme.test")
    google.user = User("hr@acme.test", hd="acme.test")
    assert sign_in_with(console, google).status_code == 303
    google.rotate_key()
    assert sign_in_with(console, google).status_code == 303
    assert sign_in_with(console, google).status_code == 303
    assert google.calls["jwks"] == 2


def test_an_address_without_an_account_is_refused(
    console: Console,
    google: GoogleFake,
    caplog: pytest.LogCaptureFixture,
    refused: Refusal,
) -> None:
    google.user = User("ana@acme.test", hd="acme.test")
    assert refused(sign_in_with(console, google), "no account for ana@acme.test")
    with console.rt.factory() as session:
        assert (
            session.scalar(select(ConsoleAccount).where(ConsoleAccount.email == "ana@acme.test"))
            is None
        )


def test_a_disabled_account_is_refused_and_audited(
    console: Console, google: GoogleFake, refused: Refusal
) -> None:
    hr = add_account(console, "hr@acme.test")
    with transaction(console.rt.factory) as session:
        accounts.set_active(session, console.org, "hr@acme.test", False, console.rt.now(), "test")
    google.user = User("hr@acme.test", hd="acme.test")
    assert refused(sign_in_with(console, google), "refused: disabled")
    assert account(console, hr).oidc_subject is None  # not bound either
    assert audit_of(console, hr)[-1] == (
        "console.sign_in_refused",
        {"reason": "disabled", "method": "oidc", "issuer": GOOGLE_ISSUER},
    )


def test_a_code_used_twice_is_refused_by_the_provider(
    console: Console,
    microsoft: MicrosoftFake,
    refused: Refusal,
) -> None:
    add_account(console, "boss@acme.test", role="manager")
    microsoft.user = User("boss@acme.test")
    began = start(console, microsoft)
    location = microsoft.authorize(began.headers["location"])
    assert back(console, location).status_code == 303
    # Someone replays the code in a flow of their own: the state matches their cookie, but
    # the provider redeems a code once only.
    replay = start(console, microsoft)
    state = parse_qs(urlsplit(replay.headers["location"]).query)["state"][0]
    code = parse_qs(urlsplit(location).query)["code"][0]
    forged = f"{BASE_URL}/console/oidc/microsoft/callback?" + urlencode(
        {"code": code, "state": state}
    )
    assert refused(back(console, forged), "invalid_grant")
    assert microsoft.last_token_error == "invalid_grant"


def test_the_provider_refusing_is_our_refusal_too(
    console: Console, google: GoogleFake, refused: Refusal
) -> None:
    add_account(console, "hr@acme.test")
    google.user = None  # the person cancels at Google
    answer = sign_in_with(console, google)
    assert refused(answer, "error=access_denied")
    assert google.calls["token"] == 0


def test_the_pkce_challenge_is_s256_of_a_verifier_only_the_cookie_holds(
    console: Console,
    google: GoogleFake,
    refused: Refusal,
) -> None:
    # RFC 7636 appendix B's example.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    add_account(console, "hr@acme.test")
    google.user = User("hr@acme.test", hd="acme.test")
    began = start(console, google)
    location = google.authorize(began.headers["location"])
    # A browser that has the code but not this flow's cookie: a new flow's cookie carries
    # another verifier, so the provider refuses the exchange.
    replay = start(console, google)
    state = parse_qs(urlsplit(replay.headers["location"]).query)["state"][0]
    code = parse_qs(urlsplit(location).query)["code"][0]
    forged = f"{BASE_URL}/console/oidc/google/callback?" + urlencode({"code": code, "state": state})
    assert refused(back(console, forged), "invalid_grant")
    assert google.last_token_error == "invalid_grant"


def test_a_provider_that_does_not_answer_is_said_so_without_a_cookie(
    console: Console, http: responses.RequestsMock
) -> None:
    http.add(responses.GET, GoogleFake.discovery_urls[0], status=503)
    answer = console.client.get("/console/oidc/google/start", follow_redirects=False)
    assert answer.status_code == 503 and "Google did not answer" in answer.text
    assert FLOW_COOKIE not in answer.headers.get("set-cookie", "")


# --------------------------------------------------------------------------- the sign-in page


def test_the_buttons_appear_only_for_configured_providers(console: Console) -> None:
    page = console.client.get("/console/sign-in?next=/console/people")
    assert "Sign in with Google" in page.text and "Sign in with Microsoft" in page.text
    assert 'href="/console/oidc/google/start?next=/console/people"' in page.text
    plain = build_runtime(
        console.rt.settings.with_(oidc_google_client_id="", oidc_microsoft_client_id="")
    )
    try:
        with TestClient(create_app(plain)) as client:
            page = client.get("/console/sign-in")
            assert page.status_code == 200
            assert "Sign in with" not in page.text.replace("<button>Sign in</button>", "")
            assert "/console/oidc/" not in page.text
            assert (
                client.get("/console/oidc/google/start", follow_redirects=False).status_code == 404
            )
    finally:
        plain.engine.dispose()
    only_google = build_runtime(console.rt.settings.with_(oidc_microsoft_client_id=""))
    try:
        with TestClient(create_app(only_google)) as client:
            page = client.get("/console/sign-in")
            assert "Sign in with Google" in page.text and "Microsoft" not in page.text
    finally:
        only_google.engine.dispose()


def test_no_code_or_token_reaches_the_logs_or_the_audit_log(
    console: Console,
    google: GoogleFake,
    microsoft: MicrosoftFake,
    caplog: pytest.LogCaptureFixture,
    refused: Refusal,
) -> None:
    hr = add_account(console, "hr@acme.test")
    boss = add_account(console, "boss@acme.test", role="manager")
    google.user = User("hr@acme.test", hd="acme.test")
    microsoft.user = User("boss@acme.test")
    with caplog.at_level(logging.DEBUG):
        assert sign_in_with(console, google).status_code == 303
        assert sign_in_with(console, microsoft).status_code == 303
        google.tamper = {"nonce": "other"}
        assert refused(sign_in_with(console, google), "nonce is not")
        google.tamper = {}
        google.user = User("hr@acme.test", hd="acme.test", email_verified=False)
        assert refused(sign_in_with(console, google), "has not verified")
        microsoft.forge()
        assert refused(sign_in_with(console, microsoft), "signature does not verify")
    secrets = [*google.issued, *microsoft.issued, GOOGLE_SECRET, MICROSOFT_SECRET]
    assert len(secrets) > 10
    # The test client logs the URLs it requests, the callback's code among them: that is the
    # browser's side, not the service's.
    logged = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records if r.name != "httpx"
    )
    assert "refused" in logged
    recorded = json.dumps(audit_of(console, hr) + audit_of(console, boss))
    assert "sign_in_refused" in recorded
    for value in secrets:
        assert value not in logged
        assert value not in recorded


# --------------------------------------------------------------------------- settings


def write(tmp_path: Path, text: str) -> Path:
    file = tmp_path / "settings.toml"
    file.write_text(text)
    return file


def test_settings_name_the_file_the_field_and_the_fix(tmp_path: Path) -> None:
    file = write(tmp_path, 'oidc_microsoft_client_id = "abc"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(file, environ={})
    text = str(caught.value)
    assert f"{file}: oidc_microsoft_tenant: required" in text and "fix:" in text
    assert f"{file}: oidc_microsoft_client_secret_env:" in text
    assert "AUTOMATION_OIDC_MICROSOFT_CLIENT_SECRET is not set" in text

    file = write(tmp_path, 'oidc_microsoft_client_id = "abc"\noidc_microsoft_tenant = "common"\n')
    with pytest.raises(ConfigError, match="oidc_microsoft_tenant: expected one tenant"):
        load_settings(file, environ={"AUTOMATION_OIDC_MICROSOFT_CLIENT_SECRET": "s"})

    file = write(tmp_path, 'oidc_google_client_secret_env = "GOCSPX-the-secret-itself"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(file, environ={})
    assert "oidc_google_client_secret_env: expected the name of an environment variable" in str(
        caught.value
    )

    file = write(tmp_path, 'oidc_google_discovery_url = "http://accounts.google.com/x"\n')
    with pytest.raises(ConfigError, match="oidc_google_discovery_url: expected an https"):
        load_settings(file, environ={})


def test_settings_read_the_secret_from_the_named_variable_or_its_file(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        'oidc_google_client_id = "id"\noidc_google_client_secret_env = "GOOGLE_SECRET"\n'
        'oidc_microsoft_client_id = "id"\noidc_microsoft_tenant = "ACME.onmicrosoft.com"\n',
    )
    secret_file = tmp_path / "ms-secret"
    secret_file.write_text("from-a-file\n")
    environ = {
        "GOOGLE_SECRET": "from-the-environment",
        "AUTOMATION_OIDC_MICROSOFT_CLIENT_SECRET_FILE": str(secret_file),
    }
    loaded = load_settings(file, environ=environ)
    assert loaded.oidc_microsoft_tenant == "acme.onmicrosoft.com"
    assert loaded.oidc_client_secret("google", environ) == "from-the-environment"
    assert loaded.oidc_client_secret("microsoft", environ) == "from-a-file"
    assert "from-the-environment" not in repr(loaded)
