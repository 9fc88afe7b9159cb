"""Signing in to the console with Google or Microsoft (Entra ID) through OpenID Connect.

The authorization code flow with PKCE (OpenID Connect Core 1.0 §3.1, RFC 7636):

1. ``/console/oidc/<provider>/start`` reads the provider's discovery document, makes a
   ``state``, a ``nonce`` and a PKCE verifier, keeps them in a short-lived cookie signed with
   a key derived from the service's ``secret_key`` and sends the browser to the provider.
2. The provider signs the person in and sends the browser back to
   ``/console/oidc/<provider>/callback`` with a one-time ``code`` and the ``state``.
3. The callback checks the state against the cookie, exchanges the code (with the client
   secret and the PKCE verifier) at the token endpoint, verifies the ID token (RS256 against
   the provider's published keys, issuer, audience, times, nonce) and signs in the console
   account with that address (:func:`automation.services.accounts.sign_in_oidc`), which
   binds the account to the provider's subject on first use.

The flow cookie is HttpOnly, SameSite=Lax (the provider's redirect back is a top-level GET
from another site, which Lax allows and Strict would not) and sent only to ``/console/oidc``.
Every refusal answers with the same message; the reason is logged (never a code or a token)
and audited when the account is known. The provider calls go through ``requests``.

**Client organizations** (fractional HR). A client's people sign in at
``/console/sign-in?org=<slug>``; with OpenID Connect, through the client's *own* providers
(:class:`Realm`): the ``oidc_*`` of its ``config/orgs/<slug>/settings.toml`` and the client
secrets it stored (``automation org secret set <slug> oidc_<provider>_client_secret``), never
the deployment's. ``/console/oidc/<provider>/start?org=<slug>`` starts the client's flow and
seals the slug into the flow cookie; the callback stays the one registered address and takes
the organization from the sealed cookie only (never from its query), verifies the ID token
against that client's configuration (its client id as the audience, its hosted domain or
tenant) and signs in an account of that organization only, in its scope. A ``?org=`` that is
not a slug, names no organization or names the deployment's own is the deployment's flow, as
the password form treats it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload
from urllib.parse import quote, urlencode

import jwt
import requests
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from automation.console.access import (
    ORGANIZATION_SLUG,
    organization_id,
    secure,
    sign_in_response,
    start_session,
)
from automation.console.base import HEADERS, NotFound, Rt, render, safe_next
from automation.db import transaction
from automation.errors import ConfigError
from automation.models import Organization
from automation.runtime import Runtime
from automation.services import accounts
from automation.settings import OIDC_PROVIDERS, Settings
from automation.tenancy import scoped_factory

log = logging.getLogger("automation.console")

router = APIRouter(prefix="/console", include_in_schema=False)

FLOW_COOKIE = "checkin_oidc"
FLOW_PATH = "/console/oidc"
FLOW_LIFETIME = dt.timedelta(minutes=10)
CLOCK_SKEW = dt.timedelta(minutes=2)  # between our clock and the provider's
HTTP_TIMEOUT = 10  # seconds: someone is waiting in front of a browser
CACHE_SECONDS = 3600  # discovery documents and signing keys (refetched on an unknown key id)
SCOPE = "openid email profile"
LABELS = {"google": "Google", "microsoft": "Microsoft"}
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")  # both, Google says
REFUSED = (
    "Signing in did not work. Try again; if it still does not, ask HR whether you have a "
    "console account."
)
NEXT_MAX = 1000  # a longer ?next= would not fit in the cookie; it becomes /console/


@dataclass(frozen=True)
class Provider:
    """A configured OpenID Connect provider; ``name`` and ``label`` are what the sign-in
    page shows."""

    name: str
    label: str
    client_id: str
    discovery_url: str
    tenant: str = ""  # Microsoft: the directory (tenant) id or domain
    hosted_domain: str = ""  # Google: only accounts of this Workspace domain

    def redirect_uri(self, settings: Settings) -> str:
        return f"{settings.base_url.rstrip('/')}/console/oidc/{self.name}/callback"


def enabled_providers(settings: Settings) -> list[Provider]:
    """The providers whose client id is set, in a fixed order."""
    found = []
    for name in OIDC_PROVIDERS:
        client_id = getattr(settings, f"oidc_{name}_client_id")
        if not client_id:
            continue
        tenant = settings.oidc_microsoft_tenant if name == "microsoft" else ""
        found.append(
            Provider(
                name=name,
                label=LABELS[name],
                client_id=client_id,
                discovery_url=getattr(settings, f"oidc_{name}_discovery_url").replace(
                    "{tenant}", tenant
                ),
                tenant=tenant,
                hosted_domain=(settings.oidc_google_hosted_domain if name == "google" else ""),
            )
        )
    return found


class EnabledProviders(Sequence[Provider]):
    """What ``app.state.console_oidc_providers`` holds: the enabled providers, read from the
    runtime's settings when asked (the runtime may be built only on the first request)."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def _all(self) -> list[Provider]:
        return enabled_providers(self._app.state.console_runtime().settings)

    @overload
    def __getitem__(self, index: int) -> Provider: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Provider]: ...
    def __getitem__(self, index: int | slice) -> Provider | Sequence[Provider]:
        return self._all()[index]

    def __len__(self) -> int:
        return len(self._all())


def install(app: FastAPI) -> None:
    app.state.console_oidc_providers = EnabledProviders(app)
    app.state.console_oidc_providers_of = sign_in_providers
    app.state.console_oidc_directory = Directory()


# --------------------------------------------------------------------------- whose sign-in


@dataclass(frozen=True)
class Realm:
    """Whose sign-in a flow is, and the configuration it runs with.

    The deployment's own organization (``slug`` empty): the deployment's settings, the
    secrets from the environment, as before client organizations existed. A client
    organization (``slug`` its slug): its own runtime's settings
    (:func:`automation.organizations.tenant_settings`: only the ``oidc_*`` its folder sets,
    the secrets it stored), sessions scoped to it, and never a fallback to the deployment's
    providers or secrets. ``unavailable`` says why a client's configuration did not load (it
    then offers no provider)."""

    slug: str
    organization_id: int | None
    settings: Settings
    factory: sessionmaker[Session]
    unavailable: str = ""

    @property
    def is_client(self) -> bool:
        return bool(self.slug)

    def providers(self) -> list[Provider]:
        return [] if self.unavailable else enabled_providers(self.settings)

    def provider(self, name: str) -> Provider:
        """The configured provider ``name``: 404 when this organization has not configured
        it (a client's missing provider is never served by the deployment's)."""
        for provider in self.providers():
            if provider.name == name:
                return provider
        raise NotFound("That sign-in provider is not configured.")

    def client_secret(self, provider: Provider) -> str:
        if self.is_client:
            return self.settings.organization_oidc_client_secret(provider.name)
        return self.settings.oidc_client_secret(provider.name)

    def missing_secret(self, provider: Provider) -> str:
        """Why there is no client secret, and the fix (for the log)."""
        if self.is_client:
            return (
                f"no client secret: organization {self.slug} has not stored "
                f"oidc_{provider.name}_client_secret (`automation org secret set {self.slug} "
                f"oidc_{provider.name}_client_secret`)"
            )
        variable = getattr(self.settings, f"oidc_{provider.name}_client_secret_env")
        return f"no client secret: {variable} is not set"

    def describe(self, provider_label: str) -> str:
        """The provider as the log names it (with the client organization's slug)."""
        return f"{provider_label} (organization {self.slug})" if self.is_client else provider_label


def deployment_realm(rt: Runtime) -> Realm:
    return Realm("", None, rt.settings, rt.factory)


def client_realm(rt: Runtime, slug: str) -> Realm | None:
    """The realm of client organization ``slug``; None when ``slug`` is not a slug, names no
    organization, or names the deployment's own (whose sign-in is the deployment's)."""
    if not slug or slug == rt.settings.organization or not ORGANIZATION_SLUG.fullmatch(slug):
        return None
    with rt.factory() as session:
        org = session.scalar(select(Organization.id).where(Organization.slug == slug))
    if org is None:
        return None
    try:
        tenant = rt.tenant(org)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the password form must work
        # Its folder, its secrets or its adapters do not load: no provider is offered, the
        # password form still works, and the log (never the page) says why.
        reason = str(exc) if isinstance(exc, ConfigError) else type(exc).__name__
        log.error("organization %s: console OpenID Connect sign-in unavailable:\n%s", slug, reason)
        factory = scoped_factory(rt.engine, org)
        return Realm(slug, org, rt.settings, factory, unavailable=reason)
    return Realm(slug, org, tenant.settings, tenant.factory)


def realm_of(rt: Runtime, org: str) -> Realm:
    """The realm a sign-in page or a start at ``?org=`` is for: the client's, else the
    deployment's (an unknown or odd ``org`` is ignored, as the password form does)."""
    return client_realm(rt, org) or deployment_realm(rt)


def sign_in_providers(rt: Runtime, org: str) -> tuple[str, list[Provider]]:
    """What the sign-in page at ``?org=`` offers: the organization the buttons carry (the
    client's slug, or empty for the deployment's) and its providers."""
    realm = realm_of(rt, org)
    return realm.slug, realm.providers()


class Refused(Exception):
    """A sign-in that must not go on. ``reason`` is for the log (never a code or a token);
    ``identity`` (issuer, subject, email) is set once a verified ID token said who it is, so
    that the refusal can be audited on the account."""

    def __init__(self, reason: str, identity: tuple[str, str, str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.identity = identity


# --------------------------------------------------------------------------- the provider


def _get_json(url: str) -> dict[str, Any]:
    try:
        response = requests.get(url, timeout=HTTP_TIMEOUT, headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        raise Refused(f"{url} did not answer ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise Refused(f"{url} answered HTTP {response.status_code}")
    try:
        document = response.json()
    except ValueError:
        raise Refused(f"{url} did not answer with JSON") from None
    if not isinstance(document, dict):
        raise Refused(f"{url} did not answer with a JSON object")
    return document


class Directory:
    """The providers' discovery documents and signing keys, cached for an hour (one per app,
    shared by the threads that serve it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._documents: dict[str, tuple[float, dict[str, Any]]] = {}
        self._keys: dict[str, dict[str, jwt.PyJWK]] = {}

    def _document(self, url: str, fresh: bool = False) -> dict[str, Any]:
        with self._lock:
            cached = self._documents.get(url)
        if cached and not fresh and cached[0] > time.monotonic():
            return cached[1]
        document = _get_json(url)
        with self._lock:
            self._documents[url] = (time.monotonic() + CACHE_SECONDS, document)
        return document

    def discovery(self, provider: Provider) -> dict[str, Any]:
        """The provider's discovery document, with the fields the flow needs checked."""
        config = self._document(provider.discovery_url)
        for name in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(config.get(name), str) or not config[name].startswith("https://"):
                raise Refused(f"the discovery document has no https {name}")
        if provider.name == "microsoft":
            # Discovery for one tenant names that tenant's issuer; the multi-tenant documents
            # say "{tenantid}" instead, which must never be accepted.
            tenant_id = microsoft_tenant_of(config["issuer"])
            if tenant_id is None:
                raise Refused(f"the discovery issuer {config['issuer']} is not one tenant's")
            if "." not in provider.tenant and provider.tenant.lower() != tenant_id:
                raise Refused(f"the discovery issuer {config['issuer']} is another tenant's")
        return config

    def key(self, jwks_uri: str, kid: str) -> jwt.PyJWK:
        """The signing key ``kid``; the key set is fetched again once when ``kid`` is not in
        it (providers rotate their keys and publish the new one first)."""
        with self._lock:
            keys = self._keys.get(jwks_uri)
        if keys is not None and kid in keys:
            return keys[kid]
        keys = _key_set(self._document(jwks_uri, fresh=True))
        with self._lock:
            self._keys[jwks_uri] = keys
        if kid in keys:
            return keys[kid]
        raise Refused(f"the ID token's key {_plain(kid)!r} is not in the provider's key set")


def _key_set(document: dict[str, Any]) -> dict[str, jwt.PyJWK]:
    keys = {}
    for item in document.get("keys") or []:
        if not isinstance(item, dict) or item.get("kty") != "RSA" or not item.get("kid"):
            continue
        if item.get("use", "sig") != "sig":
            continue
        try:
            keys[str(item["kid"])] = jwt.PyJWK(item, algorithm="RS256")
        except jwt.PyJWTError:
            continue  # a key we cannot use signs nothing we accept
    return keys


_MICROSOFT_ISSUER = re.compile(
    r"https://[^/]+/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/v2\.0"
)


def microsoft_tenant_of(issuer: str) -> str | None:
    """The tenant id in a Microsoft v2.0 issuer, or None."""
    match = _MICROSOFT_ISSUER.fullmatch(issuer)
    return match.group(1) if match else None


def exchange_code(
    provider: Provider,
    config: dict[str, Any],
    secret: str,
    code: str,
    verifier: str,
    redirect_uri: str,
) -> str:
    """The ID token the token endpoint gives for ``code`` (RFC 6749 §4.1.3)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": provider.client_id,
        "code_verifier": verifier,
    }
    # RFC 8414: without a list, client_secret_basic is the method every server supports.
    methods = config.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    auth = None
    if "client_secret_post" in methods:
        form["client_secret"] = secret
    else:  # RFC 6749 §2.3.1: both parts form-encoded before Basic encoding
        auth = (quote(provider.client_id, safe=""), quote(secret, safe=""))
    try:
        response = requests.post(
            config["token_endpoint"], data=form, auth=auth, timeout=HTTP_TIMEOUT,
            headers={"Accept": "application/json"},
        )  # fmt: skip
    except requests.RequestException as exc:
        raise Refused(f"the token endpoint did not answer ({type(exc).__name__})") from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code != 200:
        error = answer.get("error") if isinstance(answer, dict) else None
        raise Refused(
            f"the token endpoint answered HTTP {response.status_code} {_plain(error)}".strip()
        )
    id_token = answer.get("id_token") if isinstance(answer, dict) else None
    if not isinstance(id_token, str) or not id_token:
        raise Refused("the token endpoint's answer has no ID token")
    return id_token


def _plain(text: Any) -> str:
    """A provider's error code, safe to log whatever it sent."""
    return re.sub(r"[^a-z0-9_.-]", "", str(text or "").lower())[:60]


# --------------------------------------------------------------------------- the ID token


def verify_id_token(
    provider: Provider,
    config: dict[str, Any],
    directory: Directory,
    id_token: str,
    nonce: str,
    now: dt.datetime,
) -> dict[str, Any]:
    """The ID token's claims once it is shown to be the provider's, for us, current and the
    answer to our own request (OpenID Connect Core §3.1.3.7)."""
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.PyJWTError:
        raise Refused("the ID token is not a JWT") from None
    if header.get("alg") != "RS256":
        raise Refused(f"the ID token is signed with {_plain(header.get('alg'))!r}, not RS256")
    key = directory.key(config["jwks_uri"], str(header.get("kid") or ""))
    issuers = GOOGLE_ISSUERS if provider.name == "google" else (config["issuer"],)
    try:
        claims = jwt.decode(
            id_token,
            key,
            algorithms=["RS256"],
            audience=provider.client_id,
            issuer=issuers,
            # The times are checked below against the service's clock, not the machine's.
            options={
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "require": ["iss", "sub", "aud", "exp", "iat"],
            },
        )
    except jwt.InvalidSignatureError:
        raise Refused("the ID token's signature does not verify") from None
    except jwt.InvalidAudienceError:
        raise Refused("the ID token is for another client (aud)") from None
    except jwt.InvalidIssuerError:
        raise Refused(f"the ID token's issuer is not {issuers[0]}") from None
    except jwt.PyJWTError as exc:
        raise Refused(f"the ID token is not valid ({type(exc).__name__})") from None
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != provider.client_id:
        raise Refused("the ID token has several audiences and we are not its azp")
    moment = now.timestamp()
    skew = CLOCK_SKEW.total_seconds()
    try:
        expires, issued = float(claims["exp"]), float(claims["iat"])
        not_before = float(claims.get("nbf", issued))
    except (TypeError, ValueError):
        raise Refused("the ID token's times are not numbers") from None
    if expires <= moment - skew:
        raise Refused("the ID token has expired")
    if issued > moment + skew or not_before > moment + skew:
        raise Refused("the ID token is issued in the future")
    if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
        raise Refused("the ID token's nonce is not the one we sent")
    if provider.name == "microsoft":
        tenant_id = microsoft_tenant_of(config["issuer"])
        if claims.get("tid") != tenant_id:
            raise Refused("the ID token is from another tenant (tid)")
    return claims


def identity_of(
    provider: Provider, config: dict[str, Any], claims: dict[str, Any]
) -> tuple[str, str, str]:
    """(issuer, subject, email) from verified claims, or :class:`Refused` when the provider
    does not vouch for the address."""
    issuer = config["issuer"]
    if provider.name == "google":
        email = str(claims.get("email") or "").lower()
        subject = str(claims["sub"])
        if claims.get("email_verified") not in (True, "true"):
            raise Refused("Google has not verified the address", (issuer, subject, email))
        if provider.hosted_domain and claims.get("hd") != provider.hosted_domain:
            raise Refused(
                f"the account is not in the {provider.hosted_domain} Workspace domain",
                (issuer, subject, email),
            )
        return issuer, subject, email
    # Microsoft: ``sub`` differs per application, oid+tid is the person in the directory.
    # The address is ``email`` (an optional claim) or the sign-in name.
    if not claims.get("oid") or not claims.get("tid"):
        raise Refused("the ID token has no oid or tid")
    subject = f"{claims['tid']}/{claims['oid']}"
    email = ""
    for name in ("email", "preferred_username"):
        value = str(claims.get(name) or "").strip().lower()
        if "@" in value:
            email = value
            break
    return issuer, subject, email


# --------------------------------------------------------------------------- the flow cookie


@dataclass(frozen=True)
class Flow:
    """What the start of a sign-in keeps for its callback."""

    provider: str
    state: str
    nonce: str
    verifier: str
    next: str
    expires: int  # Unix seconds
    # The client organization's slug whose sign-in this is; empty: the deployment's own.
    # Sealed with the rest: the callback trusts it from here only, never from its query.
    organization: str = ""


def _flow_key(settings: Settings) -> bytes:
    # Derived, so that this cookie's signatures are never valid for anything else the
    # secret signs (reply addresses).
    return hmac.new(settings.signing_key(), b"console oidc flow cookie", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal(flow: Flow, key: bytes) -> str:
    payload = _b64(json.dumps(flow.__dict__, separators=(",", ":")).encode())
    mac = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{mac}"


def unseal(value: str | None, key: bytes, now: dt.datetime) -> Flow:
    if not value or value.count(".") != 1:
        raise Refused("no sign-in cookie (expired, or another browser)")
    payload, mac = value.split(".")
    expected = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")):
        raise Refused("the sign-in cookie's signature is wrong")
    try:
        flow = Flow(**json.loads(_unb64(payload)))
    except (ValueError, TypeError):
        raise Refused("the sign-in cookie is malformed") from None
    if flow.expires <= now.timestamp():
        raise Refused("the sign-in took longer than 10 minutes")
    return flow


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256: BASE64URL(SHA256(verifier)) without padding."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


# --------------------------------------------------------------------------- the pages


def _directory(request: Request) -> Directory:
    directory = getattr(request.app.state, "console_oidc_directory", None)
    if directory is None:
        directory = request.app.state.console_oidc_directory = Directory()
    return directory  # type: ignore[no-any-return]


def _unavailable(request: Request, label: str) -> Response:
    return render(
        request, "message.html", None, 503, title="Sign-in unavailable",
        message=f"{label} did not answer. Try again in a moment.",
    )  # fmt: skip


@router.get("/oidc/{name}/start")
def start(
    request: Request,
    rt: Rt,
    name: str,
    next: str = "/console/",  # noqa: A002
    org: str = "",
) -> Response:
    """Send the browser to the provider's sign-in page: the deployment's provider, or with
    ``?org=<slug>`` the client organization's own (404 when it has not configured it)."""
    realm = realm_of(rt, org)
    if realm.unavailable and name in LABELS:
        return _unavailable(request, LABELS[name])
    provider = realm.provider(name)
    try:
        config = _directory(request).discovery(provider)
    except Refused as exc:
        log.warning(
            "console sign-in with %s unavailable: %s", realm.describe(provider.label), exc.reason
        )
        return _unavailable(request, provider.label)
    target = safe_next(next)
    flow = Flow(
        provider=provider.name,
        state=secrets.token_urlsafe(32),
        nonce=secrets.token_urlsafe(32),
        verifier=secrets.token_urlsafe(64),  # 86 characters: RFC 7636 asks for 43 to 128
        next=target if len(target) <= NEXT_MAX else "/console/",
        expires=int((rt.now() + FLOW_LIFETIME).timestamp()),
        organization=realm.slug,
    )
    params = {
        "client_id": provider.client_id,
        "response_type": "code",
        "scope": SCOPE,
        # One address for every organization: the flow cookie says whose sign-in it is.
        "redirect_uri": provider.redirect_uri(rt.settings),
        "state": flow.state,
        "nonce": flow.nonce,
        "code_challenge": pkce_challenge(flow.verifier),
        "code_challenge_method": "S256",
        "prompt": "select_account",
    }
    if provider.hosted_domain:
        params["hd"] = provider.hosted_domain  # Google shows only that domain's accounts
    endpoint = config["authorization_endpoint"]
    response = RedirectResponse(
        endpoint + ("&" if "?" in endpoint else "?") + urlencode(params),
        status_code=303,
        headers={"Cache-Control": HEADERS["Cache-Control"]},
    )
    response.set_cookie(
        FLOW_COOKIE, seal(flow, _flow_key(rt.settings)), max_age=int(FLOW_LIFETIME.total_seconds()),
        httponly=True, samesite="lax", secure=secure(rt), path=FLOW_PATH,
    )  # fmt: skip
    return response


def _flow_realm(rt: Runtime, flow: Flow) -> Realm:
    """The realm the sealed flow was started for (its ``organization``, never the query)."""
    if not flow.organization:
        return deployment_realm(rt)
    realm = client_realm(rt, flow.organization)
    if realm is None:
        raise Refused(f"the sign-in was started for organization {flow.organization!r}, gone")
    if realm.unavailable:
        raise Refused(f"organization {flow.organization}'s configuration does not load")
    return realm


@router.get("/oidc/{name}/callback")
def callback(
    request: Request, rt: Rt, name: str, code: str = "", state: str = "", error: str = ""
) -> Response:
    """Where the provider sends the browser back: finish the flow and sign in, in the
    organization the sealed flow cookie names."""
    if name not in LABELS:
        raise NotFound("That sign-in provider is not configured.")
    target = "/console/"
    realm = deployment_realm(rt)
    provider: Provider | None = None
    try:
        flow = unseal(request.cookies.get(FLOW_COOKIE), _flow_key(rt.settings), rt.now())
    except Refused as exc:
        # Whose sign-in it was is unknown: answered as the deployment's (404 for a provider
        # it has not configured, as ever).
        realm.provider(name)
        flow, refusal = None, exc
    else:
        target, refusal = flow.next, None
        try:
            realm = _flow_realm(rt, flow)
        except Refused as exc:
            refusal = exc
        else:
            provider = realm.provider(name)  # 404 when that organization has not configured it
    signed = None
    try:
        if refusal is not None:
            raise refusal
        assert flow is not None and provider is not None
        signed = _finish(request, rt, realm, provider, flow, code, state, error)
    except Refused as exc:
        label = realm.describe(LABELS[name])
        if flow is not None and flow.organization and not realm.is_client:
            label = f"{LABELS[name]} (organization {flow.organization})"
        log.warning("console sign-in with %s refused: %s", label, exc.reason)
        if exc.identity is not None:
            org = realm.organization_id if realm.is_client else organization_id(rt)
            if org is not None:
                with transaction(realm.factory) as session:
                    accounts.oidc_refused(session, org, *exc.identity, exc.reason, rt.now())
    if signed is None:
        response = sign_in_response(
            request, rt, secrets.token_urlsafe(32), target, REFUSED, 401, realm.slug
        )
    else:
        response = start_session(rt, signed, target)
    response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
    return response


def _finish(
    request: Request,
    rt: Runtime,
    realm: Realm,
    provider: Provider,
    flow: Flow,
    code: str,
    state: str,
    error: str,
) -> accounts.SignedIn | None:
    if flow.provider != provider.name:
        raise Refused(f"the sign-in was started with {flow.provider}")
    if not hmac.compare_digest(flow.state.encode(), state.encode("utf-8", "replace")):
        raise Refused("the state is not the one we sent")
    if error:
        raise Refused(f"the provider answered error={_plain(error)}")
    if not code:
        raise Refused("the provider sent no code")
    secret = realm.client_secret(provider)
    if not secret:
        raise Refused(realm.missing_secret(provider))
    directory = _directory(request)
    config = directory.discovery(provider)
    id_token = exchange_code(
        provider, config, secret, code, flow.verifier, provider.redirect_uri(rt.settings)
    )
    # Against this organization's provider: its client id is the audience, its hosted
    # domain or tenant the only one accepted.
    claims = verify_id_token(provider, config, directory, id_token, flow.nonce, rt.now())
    issuer, subject, email = identity_of(provider, config, claims)
    org = realm.organization_id if realm.is_client else organization_id(rt)
    if org is None:
        raise Refused(f"organization {rt.settings.organization!r} is not set up")
    with transaction(realm.factory) as session:
        # Only an account of this organization (in its scope, for a client). A refusal
        # (the audit entry) commits with this transaction.
        return accounts.sign_in_oidc(session, org, issuer, subject, email, rt.now())
