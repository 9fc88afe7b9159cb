"""OpenID Connect sign-in for client organizations (fractional HR, issue 10), against the fakes
in tests/fakes/oidc.py: a client's people sign in at ``/console/sign-in?org=<slug>`` through the
client's own Google and Microsoft configuration (its ``config/orgs/<slug>/settings.toml`` and
its stored secrets), never the deployment's, and only ever into an account of that client.

The world: ``acme`` is the deployment's own organization, with its own Google client and
Microsoft tenant; ``beta`` is a client with its own Google client (Workspace domain beta.test)
and its own Microsoft tenant; ``gamma`` is a client that configured no provider. Google is one
provider for everyone: :class:`SharedGoogle` serves the deployment's and beta's OAuth clients
at once, with one key set, as the real one does.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import responses
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import select

from automation.console.oidc import FLOW_COOKIE, REFUSED
from automation.db import migrate, transaction
from automation.errors import ConfigError
from automation.models import AuditEntry, ConsoleAccount, ConsoleSession
from automation.organizations import (
    KEYS_VARIABLE,
    Keyring,
    org_folder,
    put_secret,
    tenant_settings,
)
from automation.people import ensure_organization
from automation.runtime import Runtime
from automation.services import accounts
from automation.settings import PROJECT_ROOT, Settings, load_settings
from automation.web import create_app
from tests.fakes.oidc import GoogleFake, MicrosoftFake, OidcFake, User

BASE_URL = "http://localhost:8080"
GOOGLE_CALLBACK = f"{BASE_URL}/console/oidc/google/callback"
MICROSOFT_CALLBACK = f"{BASE_URL}/console/oidc/microsoft/callback"
GOOGLE_ISSUER = "https://accounts.google.com"
# The deployment's (acme's) own providers: secrets in the environment.
ACME_GOOGLE = "1111111111-acmeacmeacme.apps.googleusercontent.com"
ACME_GOOGLE_SECRET = "GOCSPX-acme-deployment-secret"
ACME_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
ACME_MICROSOFT = "6731de76-14a6-49ae-97bc-6eba6914391e"
ACME_MICROSOFT_SECRET = "Zx8Q~acme.deployment-secret"
# Beta's: in its folder and its stored (encrypted) secrets.
BETA_GOOGLE = "2222222222-betabetabeta.apps.googleusercontent.com"
BETA_GOOGLE_SECRET = "GOCSPX-beta-client-secret"
BETA_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
BETA_MICROSOFT = "0b7c1f3e-5a2d-4e8f-9c61-3d2e7a9b8c40"
BETA_MICROSOFT_SECRET = "Qq7~beta.microsoft-client-secret"
BETA_SETTINGS = f"""organization_name = "Beta GmbH"
oidc_google_client_id = "{BETA_GOOGLE}"
oidc_google_hosted_domain = "beta.test"
oidc_microsoft_client_id = "{BETA_MICROSOFT}"
oidc_microsoft_tenant = "{BETA_TENANT}"
"""
Refusal = Callable[[httpx.Response, str], bool]


class SharedGoogle(GoogleFake):
    """accounts.google.com with several OAuth clients (client id -> secret), all with the one
    registered redirect URI: the authorization and token endpoints answer as the client the
    request names, and a code stays bound to the client it was issued to."""

    def __init__(self, clients: dict[str, str], **kwargs: Any) -> None:
        self.clients = clients
        first = next(iter(clients))
        super().__init__(client_id=first, client_secret=clients[first], **kwargs)

    def _as(self, client_id: str | None) -> None:
        if client_id in self.clients:
            self.client_id, self.client_secret = client_id, self.clients[client_id]

    def authorize(self, url: str) -> str:
        self._as(parse_qs(urlsplit(url).query).get("client_id", [""])[0])
        return super().authorize(url)

    def _redeem(self, request: Any) -> tuple[int, dict[str, str], str]:
        body = request.body.decode() if isinstance(request.body, bytes) else request.body or ""
        client_id, _ = self._client(request, {k: v[0] for k, v in parse_qs(body).items()})
        self._as(client_id)
        return super()._redeem(request)


@dataclass
class World:
    rt: Runtime
    client: TestClient
    acme: int
    beta: int
    gamma: int
    google: SharedGoogle
    acme_microsoft: MicrosoftFake
    beta_microsoft: MicrosoftFake

    def add_account(self, org: int, email: str, role: str = "hr_admin") -> int:
        """What HR does with ``console account add --no-password`` in that organization."""
        with transaction(self.rt.factory) as session:
            return accounts.create_account(
                session, org, email=email, name=email.split("@")[0].title(), role=role,
                now=self.rt.now(), actor="test",
            ).id  # fmt: skip

    def account(self, account_id: int) -> ConsoleAccount:
        with self.rt.factory() as session:
            found = session.get(ConsoleAccount, account_id)
            assert found is not None
            session.expunge(found)
            return found

    def sessions_of(self, account_id: int) -> int:
        with self.rt.factory() as session:
            return len(
                session.scalars(
                    select(ConsoleSession).where(ConsoleSession.account_id == account_id)
                ).all()
            )

    def audit(self, org: int) -> list[AuditEntry]:
        with self.rt.factory() as session:
            rows = session.scalars(
                select(AuditEntry)
                .where(AuditEntry.organization_id == org)
                .where(AuditEntry.subject_kind == "console_account")
                .order_by(AuditEntry.id)
            ).all()
            for row in rows:
                session.expunge(row)
            return list(rows)

    def start(self, fake: OidcFake, org: str | None = None, target: str = "/console/") -> str:
        """The console's start (with ``?org=`` when given); returns where it sends the
        browser."""
        self.client.cookies.clear()
        params = {"next": target} | ({"org": org} if org is not None else {})
        answer = self.client.get(
            f"/console/oidc/{fake.name}/start", params=params, follow_redirects=False
        )
        assert answer.status_code == 303, answer.text
        return answer.headers["location"]

    def back(self, location: str, extra: str = "") -> httpx.Response:
        """The browser arriving at the callback the provider sent it to."""
        parts = urlsplit(location)
        assert f"{parts.scheme}://{parts.netloc}" == BASE_URL, location
        return self.client.get(f"{parts.path}?{parts.query}{extra}", follow_redirects=False)

    def sign_in(self, fake: OidcFake, org: str | None = None, extra: str = "") -> httpx.Response:
        return self.back(fake.authorize(self.start(fake, org)), extra)

    def signed_in_as(self) -> str:
        """The address on the home page of the session the browser holds."""
        home = self.client.get("/console/", follow_redirects=False)
        assert home.status_code == 200, home.text
        return home.text


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """The deployment (acme) with its own Google and Microsoft sign-in, on copies of config/
    and templates/ (the clients' folders are written under config/orgs/)."""
    shutil.copytree(PROJECT_ROOT / "config", tmp_path / "config")
    shutil.copytree(PROJECT_ROOT / "templates", tmp_path / "templates")
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        organization="acme",
        organization_name="Acme",
        secret_key="test-secret",
        config_dir=tmp_path / "config",
        templates_dir=tmp_path / "templates",
        oidc_google_client_id=ACME_GOOGLE,
        oidc_google_hosted_domain="acme.test",
        oidc_microsoft_client_id=ACME_MICROSOFT,
        oidc_microsoft_tenant=ACME_TENANT,
    )


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> str:
    """The deployment's secrets in its environment, and the key the organizations' secrets
    are encrypted with."""
    monkeypatch.setenv("AUTOMATION_OIDC_GOOGLE_CLIENT_SECRET", ACME_GOOGLE_SECRET)
    monkeypatch.setenv("AUTOMATION_OIDC_MICROSOFT_CLIENT_SECRET", ACME_MICROSOFT_SECRET)
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(KEYS_VARIABLE, key)
    return key


def store_secret(rt: Runtime, org: int, name: str, value: str) -> None:
    """What ``automation org secret set`` does."""
    with transaction(rt.factory) as session:
        put_secret(session, org, name, value, Keyring.from_env(), rt.now(), "test")


def write_org_settings(rt: Runtime, slug: str, text: str) -> Path:
    folder = org_folder(rt.settings, slug)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.toml").write_text(text)
    return folder / "settings.toml"


@pytest.fixture
def world(rt: Runtime) -> Iterator[World]:
    migrate(rt.engine)
    now = rt.now()
    with transaction(rt.factory) as session:
        acme = ensure_organization(session, "acme", "Acme", now).id
        beta = ensure_organization(session, "beta", "Beta GmbH", now).id
        gamma = ensure_organization(session, "gamma", "Gamma Ltd", now).id
    write_org_settings(rt, "beta", BETA_SETTINGS)
    store_secret(rt, beta, "oidc_google_client_secret", BETA_GOOGLE_SECRET)
    store_secret(rt, beta, "oidc_microsoft_client_secret", BETA_MICROSOFT_SECRET)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as http:
        google = SharedGoogle(
            {ACME_GOOGLE: ACME_GOOGLE_SECRET, BETA_GOOGLE: BETA_GOOGLE_SECRET},
            redirect_uri=GOOGLE_CALLBACK,
            now=rt.now,
        )
        fakes = [
            MicrosoftFake(
                tenant_id=tenant, client_id=client_id, client_secret=secret,
                redirect_uri=MICROSOFT_CALLBACK, now=rt.now,
            )
            for tenant, client_id, secret in (
                (ACME_TENANT, ACME_MICROSOFT, ACME_MICROSOFT_SECRET),
                (BETA_TENANT, BETA_MICROSOFT, BETA_MICROSOFT_SECRET),
            )
        ]  # fmt: skip
        for fake in (google, *fakes):
            fake.register(http)
        with TestClient(create_app(rt)) as client:
            yield World(rt, client, acme, beta, gamma, google, *fakes)


@pytest.fixture
def refused(caplog: pytest.LogCaptureFixture) -> Refusal:
    """The one answer every refusal gets (401, the sign-in page with the generic message, no
    session), and the reason logged for it since the last check."""
    caplog.set_level(logging.INFO, logger="automation.console")
    seen = 0

    def check(answer: httpx.Response, because: str) -> bool:
        nonlocal seen
        said = [r.getMessage() for r in caplog.records if r.name == "automation.console"]
        new, seen = said[seen:], len(said)
        assert answer.status_code == 401, answer.text
        assert REFUSED.split(".")[0] in answer.text
        assert "checkin_session=" not in answer.headers.get("set-cookie", "")
        assert any(because in line for line in new), new
        return True

    return check


def buttons(page: str) -> list[str]:
    """The OpenID Connect buttons' addresses on a sign-in page."""
    return [h.replace("&amp;", "&") for h in re.findall(r'href="(/console/oidc/[^"]*)"', page)]


# --------------------------------------------------------------------------- the sign-in page


def test_the_sign_in_page_at_org_offers_the_clients_providers_never_the_deployments(
    world: World,
) -> None:
    client = world.client
    own = client.get("/console/sign-in", params={"next": "/console/people"})
    assert buttons(own.text) == [
        "/console/oidc/google/start?next=/console/people",
        "/console/oidc/microsoft/start?next=/console/people",
    ]
    beta = client.get("/console/sign-in", params={"org": "beta", "next": "/console/people"})
    assert buttons(beta.text) == [
        "/console/oidc/google/start?org=beta&next=/console/people",
        "/console/oidc/microsoft/start?org=beta&next=/console/people",
    ]
    assert 'name="organization" value="beta"' in beta.text  # the password form too
    # A client without providers of its own is offered none: not the deployment's.
    gamma = client.get("/console/sign-in", params={"org": "gamma"})
    assert gamma.status_code == 200 and buttons(gamma.text) == []
    assert "Sign in with Google" not in gamma.text and 'name="password"' in gamma.text
    for name in ("google", "microsoft"):
        start = client.get(
            f"/console/oidc/{name}/start", params={"org": "gamma"}, follow_redirects=False
        )
        assert start.status_code == 404
    # An organization that does not exist, one that is not a slug, or the deployment's own
    # slug: the deployment's buttons, the odd value never echoed.
    for odd in ("nobody", "<b>x", "Beta", "acme", "../beta"):
        page = client.get("/console/sign-in", params={"org": odd})
        assert buttons(page.text) == [
            "/console/oidc/google/start?next=/console/",
            "/console/oidc/microsoft/start?next=/console/",
        ], odd
        assert "&lt;b&gt;" not in page.text and "../beta" not in page.text
    location = world.start(world.google, org="nobody")
    assert parse_qs(urlsplit(location).query)["client_id"] == [ACME_GOOGLE]


# --------------------------------------------------------------------------- signing in


def test_a_clients_google_sign_in_uses_its_client_and_signs_in_its_account(world: World) -> None:
    hr = world.add_account(world.beta, "hr@beta.test")
    world.google.user = User("hr@beta.test", name="Hedda Beta", hd="beta.test")
    location = world.start(world.google, org="beta", target="/console/people")
    sent = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert sent["client_id"] == BETA_GOOGLE and sent["hd"] == "beta.test"
    # One registered redirect URI for every organization: the flow cookie says whose it is.
    assert sent["redirect_uri"] == GOOGLE_CALLBACK and "org" not in sent
    (cookie,) = [c for c in world.client.cookies.jar if c.name == FLOW_COOKIE]
    payload = (cookie.value or "").split(".")[0]
    sealed = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert sealed["organization"] == "beta"

    # An ?org= on the callback is not believed: the sealed cookie decides.
    arrived = world.back(world.google.authorize(location), "&org=acme")
    assert arrived.status_code == 303, arrived.text
    assert arrived.headers["location"] == "/console/people"
    assert "hr@beta.test" in world.signed_in_as()
    bound = world.account(hr)
    assert bound.organization_id == world.beta
    assert (bound.oidc_issuer, bound.oidc_subject) == (GOOGLE_ISSUER, world.google.user.sub)
    # Redeemed with beta's own secret (the fake checks it), audited in beta's log.
    assert world.google.last_token_error is None and world.google.client_id == BETA_GOOGLE
    actions = [(e.action, e.data) for e in world.audit(world.beta)]
    assert actions[-2:] == [
        ("console.oidc_bound", {"issuer": GOOGLE_ISSUER, "subject": world.google.user.sub}),
        ("console.signed_in", {"method": "oidc", "issuer": GOOGLE_ISSUER}),
    ]
    assert world.audit(world.acme) == []


def test_a_clients_microsoft_sign_in_uses_its_own_tenant(world: World) -> None:
    boss = world.add_account(world.beta, "boss@beta.test", role="hr_partner")
    world.beta_microsoft.user = User("boss@beta.test", email_claim=False)
    arrived = world.sign_in(world.beta_microsoft, org="beta")
    assert arrived.status_code == 303, arrived.text
    assert "boss@beta.test" in world.signed_in_as()
    bound = world.account(boss)
    assert bound.oidc_issuer == f"https://login.microsoftonline.com/{BETA_TENANT}/v2.0"
    assert bound.oidc_subject == f"{BETA_TENANT}/{world.beta_microsoft.user.oid}"
    assert world.beta_microsoft.calls["token"] == 1
    assert world.acme_microsoft.calls["discovery"] == 0  # the deployment's tenant untouched


def test_the_deployments_own_sign_in_is_unchanged(world: World) -> None:
    hr = world.add_account(world.acme, "hr@acme.test")
    world.google.user = User("hr@acme.test", hd="acme.test")
    for org in (None, "acme", "nobody"):  # none, its own slug, an unknown one
        location = world.start(world.google, org=org)
        assert parse_qs(urlsplit(location).query)["client_id"] == [ACME_GOOGLE]
        arrived = world.back(world.google.authorize(location))
        assert arrived.status_code == 303, arrived.text
        assert "hr@acme.test" in world.signed_in_as()
    assert world.account(hr).organization_id == world.acme and world.sessions_of(hr) == 3
    boss = world.add_account(world.acme, "boss@acme.test", role="hr_partner")
    world.acme_microsoft.user = User("boss@acme.test")
    assert world.sign_in(world.acme_microsoft).status_code == 303
    assert world.sessions_of(boss) == 1 and world.beta_microsoft.calls["discovery"] == 0


# --------------------------------------------------------------------------- refusals


def test_a_token_for_the_deployments_client_is_refused_in_a_clients_flow(
    world: World, refused: Refusal
) -> None:
    world.add_account(world.beta, "hr@beta.test")
    world.google.user = User("hr@beta.test", hd="beta.test")
    world.google.tamper = {"aud": ACME_GOOGLE, "azp": ACME_GOOGLE}
    assert refused(world.sign_in(world.google, org="beta"), "another client (aud)")
    # Both audiences, but we (beta) are not the authorized party.
    world.google.tamper = {"aud": [BETA_GOOGLE, ACME_GOOGLE], "azp": ACME_GOOGLE}
    assert refused(world.sign_in(world.google, org="beta"), "several audiences")
    world.google.tamper = {}
    # A code issued to the deployment's client, carried into beta's flow (its state and
    # cookie): beta's client cannot redeem it.
    acme_code = parse_qs(urlsplit(world.google.authorize(world.start(world.google))).query)["code"][
        0
    ]
    beta_state = parse_qs(urlsplit(world.start(world.google, org="beta")).query)["state"][0]
    forged = f"{GOOGLE_CALLBACK}?" + urlencode({"code": acme_code, "state": beta_state})
    assert refused(world.back(forged), "invalid_grant")
    assert world.google.last_token_error == "invalid_grant"


def test_the_clients_hosted_domain_and_tenant_are_enforced(world: World, refused: Refusal) -> None:
    hr = world.add_account(world.beta, "hr@beta.test")
    # A Google account of the deployment's Workspace domain (or none) is not beta's.
    world.google.user = User("hr@beta.test", hd="acme.test")
    assert refused(world.sign_in(world.google, org="beta"), "beta.test Workspace domain")
    world.google.user = User("hr@beta.test")
    assert refused(world.sign_in(world.google, org="beta"), "beta.test Workspace domain")
    # Audited on beta's account, in beta's log.
    last = world.audit(world.beta)[-1]
    assert (last.action, last.subject_id) == ("console.sign_in_refused", hr)
    assert last.data["reason"] == "the account is not in the beta.test Workspace domain"
    # A token naming the deployment's tenant, in beta's Microsoft flow.
    world.beta_microsoft.user = User("hr@beta.test")
    world.beta_microsoft.tamper = {"tid": ACME_TENANT}
    assert refused(world.sign_in(world.beta_microsoft, org="beta"), "another tenant (tid)")
    world.beta_microsoft.tamper = {
        "iss": f"https://login.microsoftonline.com/{ACME_TENANT}/v2.0",
        "tid": ACME_TENANT,
    }
    assert refused(world.sign_in(world.beta_microsoft, org="beta"), "issuer is not")
    assert world.account(hr).oidc_subject is None and world.sessions_of(hr) == 0


def test_an_account_is_signed_in_only_through_its_own_organizations_flow(
    world: World, refused: Refusal
) -> None:
    acme_hr = world.add_account(world.acme, "hr@acme.test")
    # Bound at the deployment's flow first.
    world.google.user = User("hr@acme.test", hd="acme.test")
    assert world.sign_in(world.google).status_code == 303
    person = world.google.user
    # The same Google identity (Google's subject is the same for every client) through
    # beta's flow: beta has no such account, and acme's is never reached from there.
    world.google.user = User("hr@acme.test", sub=person.sub, hd="beta.test")
    assert refused(world.sign_in(world.google, org="beta"), "no account for hr@acme.test")
    world.beta_microsoft.user = User("hr@acme.test")
    assert refused(world.sign_in(world.beta_microsoft, org="beta"), "no account for")
    assert world.sessions_of(acme_hr) == 1
    # A beta account the deployment's flow cannot reach either.
    beta_hr = world.add_account(world.beta, "hr@beta.test")
    world.google.user = User("hr@beta.test", hd="acme.test")
    assert refused(world.sign_in(world.google), "no account for hr@beta.test")
    assert world.sessions_of(beta_hr) == 0
    # One address with an account in both: each flow signs in its own organization's.
    twin_acme = world.add_account(world.acme, "pat@firm.test")
    twin_beta = world.add_account(world.beta, "pat@firm.test")
    world.acme_microsoft.user = User("pat@firm.test")
    world.beta_microsoft.user = User("pat@firm.test")
    assert world.sign_in(world.beta_microsoft, org="beta").status_code == 303
    assert (world.sessions_of(twin_beta), world.sessions_of(twin_acme)) == (1, 0)
    assert world.sign_in(world.acme_microsoft).status_code == 303
    assert (world.sessions_of(twin_beta), world.sessions_of(twin_acme)) == (1, 1)
    assert world.account(twin_beta).oidc_subject.startswith(BETA_TENANT)  # type: ignore[union-attr]
    assert world.account(twin_acme).oidc_subject.startswith(ACME_TENANT)  # type: ignore[union-attr]


def test_a_flow_cookie_rewritten_to_another_organization_is_refused(
    world: World, refused: Refusal
) -> None:
    world.add_account(world.acme, "hr@acme.test")
    world.beta_microsoft.user = User("hr@acme.test")
    location = world.beta_microsoft.authorize(world.start(world.beta_microsoft, org="beta"))
    (cookie,) = [c for c in world.client.cookies.jar if c.name == FLOW_COOKIE]
    payload, mac = (cookie.value or "").split(".")
    flow = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert flow["organization"] == "beta"
    flow["organization"] = ""  # the deployment's own, where hr@acme.test has an account
    changed = base64.urlsafe_b64encode(json.dumps(flow).encode()).decode().rstrip("=")
    cookie.value = f"{changed}.{mac}"
    assert refused(world.back(location), "signature is wrong")
    assert world.beta_microsoft.calls["token"] == 0


def test_a_client_without_its_secret_never_gets_the_deployments(
    world: World, refused: Refusal
) -> None:
    # Gamma turns Google on (with the deployment's client id, even) but stores no secret.
    write_org_settings(world.rt, "gamma", f'oidc_google_client_id = "{ACME_GOOGLE}"\n')
    world.add_account(world.gamma, "hr@gamma.test")
    page = world.client.get("/console/sign-in", params={"org": "gamma"})
    assert buttons(page.text) == ["/console/oidc/google/start?org=gamma&next=/console/"]
    world.google.user = User("hr@gamma.test")
    tokens = world.google.calls["token"]
    assert refused(
        world.sign_in(world.google, org="gamma"),
        "organization gamma has not stored oidc_google_client_secret",
    )
    assert world.google.calls["token"] == tokens  # the environment's secret was not sent
    assert tenant_settings(world.rt.settings, "gamma", {}).oidc_google_client_secret == ""


def test_no_client_secret_code_or_token_reaches_a_page_or_the_logs(
    world: World, caplog: pytest.LogCaptureFixture, refused: Refusal
) -> None:
    hr = world.add_account(world.beta, "hr@beta.test")
    world.add_account(world.beta, "boss@beta.test", role="hr_partner")
    world.google.user = User("hr@beta.test", hd="beta.test")
    world.beta_microsoft.user = User("boss@beta.test")
    pages: list[str] = []
    with caplog.at_level(logging.DEBUG):
        pages.append(world.client.get("/console/sign-in", params={"org": "beta"}).text)
        assert world.sign_in(world.google, org="beta").status_code == 303
        pages.append(world.signed_in_as())
        assert world.sign_in(world.beta_microsoft, org="beta").status_code == 303
        world.google.tamper = {"nonce": "other"}
        answer = world.sign_in(world.google, org="beta")
        assert refused(answer, "nonce is not")
        pages.append(answer.text)
        world.beta_microsoft.forge()
        answer = world.sign_in(world.beta_microsoft, org="beta")
        assert refused(answer, "signature does not verify")
        pages.append(answer.text)
    secrets = [
        *world.google.issued, *world.beta_microsoft.issued, BETA_GOOGLE_SECRET,
        BETA_MICROSOFT_SECRET, ACME_GOOGLE_SECRET, ACME_MICROSOFT_SECRET,
    ]  # fmt: skip
    logged = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records if r.name != "httpx"
    )
    assert "organization beta" in logged
    recorded = json.dumps([(e.action, e.data) for e in world.audit(world.beta)])
    assert "sign_in_refused" in recorded or "signed_in" in recorded
    tenant = world.rt.tenant(world.beta).settings
    assert tenant.oidc_google_client_secret == BETA_GOOGLE_SECRET  # stored, decrypted
    for value in secrets:
        assert value not in logged and value not in recorded
        assert all(value not in page for page in pages)
        assert value not in repr(tenant)
    assert world.account(hr).oidc_subject is not None


# --------------------------------------------------------------------------- configuration


def test_an_organizations_oidc_settings_are_checked_and_its_own_only(
    world: World, tmp_path: Path
) -> None:
    base = world.rt.settings
    beta = tenant_settings(base, "beta", {"oidc_google_client_secret": "s"})
    assert (beta.oidc_google_client_id, beta.oidc_microsoft_tenant) == (BETA_GOOGLE, BETA_TENANT)
    assert beta.oidc_google_client_secret == "s"
    # A client without them has none, not the deployment's; the deployment's organization
    # keeps the deployment's.
    gamma = tenant_settings(base, "gamma", {})
    assert (gamma.oidc_google_client_id, gamma.oidc_microsoft_client_id) == ("", "")
    assert tenant_settings(base, "acme", {}).oidc_google_client_id == ACME_GOOGLE
    problems = {
        'oidc_microsoft_client_id = "x"\n': "oidc_microsoft_tenant: required",
        'oidc_microsoft_client_id = "x"\noidc_microsoft_tenant = "common"\n': "one tenant",
        'oidc_google_hosted_domain = "not a domain"\n': "a domain name",
        'oidc_google_discovery_url = "http://a.test/x"\n': "an https:// URL",
        'oidc_google_client_secret = "GOCSPX-x"\n': "a secret: it never goes",
        'oidc_google_client_secret_env = "X"\n': "a setting of the deployment",
    }
    for text, expected in problems.items():
        write_org_settings(world.rt, "gamma", text)
        with pytest.raises(ConfigError, match=expected) as caught:
            tenant_settings(base, "gamma", {})
        assert "GOCSPX-x" not in str(caught.value)
    write_org_settings(world.rt, "acme", f'oidc_google_client_id = "{BETA_GOOGLE}"\n')
    with pytest.raises(ConfigError, match="deployment's own organization signs in"):
        tenant_settings(base, "acme", {})
    # The deployment's own settings never hold one, and its environment variable stays the
    # deployment's secret, read as before.
    file = tmp_path / "main.toml"
    file.write_text('oidc_google_client_secret = "GOCSPX-x"\n')
    with pytest.raises(ConfigError, match="a client secret: it never goes") as caught:
        load_settings(file, environ={})
    assert "GOCSPX-x" not in str(caught.value)
    file.write_text(f'oidc_google_client_id = "{ACME_GOOGLE}"\n')
    environ = {"AUTOMATION_OIDC_GOOGLE_CLIENT_SECRET": "from-env"}
    loaded = load_settings(file, environ=environ)
    assert loaded.oidc_google_client_secret == ""
    assert loaded.oidc_client_secret("google", environ) == "from-env"
