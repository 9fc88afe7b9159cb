"""Google's and Microsoft's (Entra ID v2.0) OpenID Connect providers, faithful enough to sign
in against, served through ``responses`` so that the code under test makes its real
``requests`` calls to the real addresses.

What they follow (OpenID Connect Core 1.0 and Discovery 1.0, RFC 6749, RFC 7636, and each
provider's documentation):

* discovery documents with the providers' own field names and endpoints (Microsoft's for one
  tenant, reachable by tenant id and by a tenant domain, names the tenant id everywhere and,
  as the real one, lists no ``code_challenge_methods_supported``);
* a JWKS of RSA keys generated when the fake is made (Microsoft's with ``x5t`` and an
  ``x5c`` certificate, Google's with ``alg``); :meth:`OidcFake.rotate_key` publishes a new one;
* the authorization endpoint, which a test reaches by following the console's redirect
  (:meth:`OidcFake.authorize`): it checks the client, the registered redirect URI, the
  response type, the ``openid`` scope and the PKCE challenge, and sends the browser back with
  a code bound to that request's nonce and challenge for the configured :attr:`user` (or with
  ``error=access_denied`` when nobody signs in);
* the token endpoint: client authentication (``client_secret_post`` or ``client_secret_basic``),
  the redirect URI and client of the code, the PKCE verifier against the challenge, codes
  that expire after ten minutes and are single-use (``invalid_grant``), and an ID token with
  the claims each provider issues (Google: iss, azp, aud, sub, hd, email, email_verified,
  at_hash, nonce, name, iat, exp; Microsoft: aud, iss, iat, nbf, exp, email when configured,
  name, nonce, oid, preferred_username, rh, sub, tid, uti, ver).

Test hooks: :attr:`OidcFake.user`, :attr:`OidcFake.tamper` (claims to change or, as None,
remove in the next ID tokens), :meth:`OidcFake.forge` (sign with a key that is not
published), :meth:`OidcFake.rotate_key`, :attr:`OidcFake.calls` (requests per endpoint),
:attr:`OidcFake.last_token_error`, and :attr:`OidcFake.issued` (every code and token handed
out, to check that none of them is logged).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import jwt
import responses
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

CODE_LIFETIME = dt.timedelta(minutes=10)
TOKEN_LIFETIME = dt.timedelta(hours=1)
JSON = {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _int_b64(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


@dataclass
class User:
    """The person who signs in at the provider."""

    email: str
    name: str = "Test Person"
    sub: str = field(default_factory=lambda: str(secrets.randbelow(10**21) + 10**20))
    email_verified: bool = True  # Google
    hd: str | None = None  # Google: the Workspace domain; None for a consumer account
    oid: str = field(default_factory=lambda: str(uuid.uuid4()))  # Microsoft: the directory id
    email_claim: bool = True  # Microsoft: the optional ``email`` claim is configured


@dataclass
class Grant:
    """What one authorization request was for, kept against its code."""

    user: User
    client_id: str
    redirect_uri: str
    nonce: str | None
    challenge: str | None
    method: str
    scope: str
    expires: dt.datetime


class AuthorizeRefused(Exception):
    """The provider's own error page: a bad client or redirect URI is never redirected to."""


@dataclass
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey

    @classmethod
    def new(cls, kid: str | None = None) -> SigningKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(kid or secrets.token_hex(20), private)

    def pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_jwk(self) -> dict[str, Any]:
        numbers = self.private.public_key().public_numbers()
        return {"kty": "RSA", "kid": self.kid, "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}


class OidcFake:
    """What both providers share: keys, codes, the authorization and token endpoints."""

    name = ""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        now: Callable[[], dt.datetime],
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.now = now
        self.keys = [self._new_key()]
        self.user: User | None = None
        self.tamper: dict[str, Any] = {}
        self._forger: SigningKey | None = None
        self._grants: dict[str, Grant] = {}
        self._redeemed: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.issued: list[str] = []
        self.last_token_error: str | None = None
        self.last_authorize: dict[str, str] = {}

    # ----------------------------------------------------------------- what differs per provider

    discovery_urls: tuple[str, ...] = ()
    authorization_endpoint = ""
    token_endpoint = ""
    jwks_uri = ""
    issuer = ""

    def discovery(self) -> dict[str, Any]:
        raise NotImplementedError

    def claims(self, grant: Grant, access_token: str, now: dt.datetime) -> dict[str, Any]:
        raise NotImplementedError

    def token_answer(self, access_token: str, id_token: str) -> dict[str, Any]:
        raise NotImplementedError

    def error(self, status: int, code: str, description: str) -> tuple[int, dict[str, str], str]:
        return status, JSON, json.dumps({"error": code, "error_description": description})

    def _new_key(self) -> SigningKey:
        return SigningKey.new()

    def jwk(self, key: SigningKey) -> dict[str, Any]:
        return key.public_jwk()

    def new_code(self) -> str:
        return secrets.token_urlsafe(48)

    def extra_redirect_params(self, grant: Grant) -> dict[str, str]:
        return {}

    # ----------------------------------------------------------------- test hooks

    def rotate_key(self) -> None:
        """Sign with a new key from now on, published next to the old one (as providers do)."""
        self.keys.insert(0, self._new_key())

    def forge(self, same_kid: bool = True) -> None:
        """Sign the next ID tokens with a key that is not published, under the current key's
        id (``same_kid``) or an unknown one."""
        self._forger = SigningKey.new(self.keys[0].kid if same_kid else None)

    def register(self, mock: responses.RequestsMock) -> None:
        for url in self.discovery_urls:
            mock.add_callback(responses.GET, url, callback=self._discovery)
        mock.add_callback(responses.GET, self.jwks_uri, callback=self._jwks)
        mock.add_callback(responses.POST, self.token_endpoint, callback=self._token)

    # ----------------------------------------------------------------- the browser's side

    def authorize(self, url: str) -> str:
        """Follow the console's redirect to the authorization endpoint; returns the address
        the provider sends the browser back to."""
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == self.authorization_endpoint, url
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.last_authorize = query
        self.calls["authorize"] += 1
        if query.get("client_id") != self.client_id:
            raise AuthorizeRefused("invalid_client: the OAuth client was not found")
        if query.get("redirect_uri") != self.redirect_uri:
            raise AuthorizeRefused("redirect_uri_mismatch")
        state = query.get("state")
        back: dict[str, str] = {}
        if query.get("response_type") != "code":
            back = {"error": "unsupported_response_type"}
        elif "openid" not in query.get("scope", "").split():
            back = {"error": "invalid_scope"}
        elif query.get("code_challenge_method", "plain") not in ("plain", "S256"):
            back = {"error": "invalid_request"}
        elif self.user is None:
            back = {"error": "access_denied"}
        else:
            code = self.new_code()
            grant = Grant(
                user=self.user,
                client_id=query["client_id"],
                redirect_uri=query["redirect_uri"],
                nonce=query.get("nonce"),
                challenge=query.get("code_challenge"),
                method=query.get("code_challenge_method", "plain"),
                scope=query.get("scope", ""),
                expires=self.now() + CODE_LIFETIME,
            )
            self._grants[code] = grant
            self.issued.append(code)
            back = {"code": code, **self.extra_redirect_params(grant)}
        if state is not None:
            back = {"state": state, **back}
        return f"{self.redirect_uri}?{urlencode(back)}"

    # ----------------------------------------------------------------- the server's side

    def _discovery(self, request: Any) -> tuple[int, dict[str, str], str]:
        self.calls["discovery"] += 1
        return 200, JSON, json.dumps(self.discovery())

    def _jwks(self, request: Any) -> tuple[int, dict[str, str], str]:
        self.calls["jwks"] += 1
        return 200, JSON, json.dumps({"keys": [self.jwk(k) for k in self.keys]})

    def _client(self, request: Any, form: dict[str, str]) -> tuple[str | None, str | None]:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            decoded = base64.b64decode(header[6:]).decode()
            client_id, _, secret = decoded.partition(":")
            return unquote(client_id), unquote(secret)
        return form.get("client_id"), form.get("client_secret")

    def _token(self, request: Any) -> tuple[int, dict[str, str], str]:
        self.calls["token"] += 1
        answer = self._redeem(request)
        if answer[0] != 200:
            self.last_token_error = json.loads(answer[2])["error"]
        return answer

    def _redeem(self, request: Any) -> tuple[int, dict[str, str], str]:
        body = request.body.decode() if isinstance(request.body, bytes) else request.body or ""
        form = {k: v[0] for k, v in parse_qs(body).items()}
        client_id, secret = self._client(request, form)
        if client_id != self.client_id or secret != self.client_secret:
            return self.error(401, "invalid_client", "Unauthorized")
        if form.get("grant_type") != "authorization_code":
            return self.error(400, "unsupported_grant_type", "Invalid grant_type")
        code = form.get("code", "")
        grant = self._grants.get(code)
        if grant is None or code in self._redeemed:
            return self.error(400, "invalid_grant", "The code was already redeemed or is unknown")
        self._redeemed.add(code)  # single use, whatever happens next
        if grant.expires <= self.now():
            return self.error(400, "invalid_grant", "The code has expired")
        if grant.client_id != client_id:
            return self.error(400, "invalid_grant", "The code was issued to another client")
        if form.get("redirect_uri") != grant.redirect_uri:
            return self.error(400, "invalid_grant", "redirect_uri does not match")
        if grant.challenge is not None:
            verifier = form.get("code_verifier", "")
            expected = (
                _b64(hashlib.sha256(verifier.encode()).digest())
                if grant.method == "S256"
                else verifier
            )
            if not verifier or expected != grant.challenge:
                return self.error(400, "invalid_grant", "Invalid code verifier.")
        access_token = secrets.token_urlsafe(96)
        now = self.now()
        claims = self.claims(grant, access_token, now)
        for name, value in self.tamper.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        key = self._forger or self.keys[0]
        id_token = jwt.encode(
            claims, key.pem(), algorithm="RS256", headers={"kid": key.kid, "typ": "JWT"}
        )
        self.issued.extend([access_token, id_token])
        return 200, JSON, json.dumps(self.token_answer(access_token, id_token))


class GoogleFake(OidcFake):
    """accounts.google.com, as a web application client sees it."""

    name = "google"
    issuer = "https://accounts.google.com"
    discovery_urls = ("https://accounts.google.com/.well-known/openid-configuration",)
    authorization_endpoint = "https://accounts.google.com/o/oauth2/v2/auth"
    token_endpoint = "https://oauth2.googleapis.com/token"
    jwks_uri = "https://www.googleapis.com/oauth2/v3/certs"

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.authorization_endpoint,
            "device_authorization_endpoint": "https://oauth2.googleapis.com/device/code",
            "token_endpoint": self.token_endpoint,
            "userinfo_endpoint": "https://openidconnect.googleapis.com/v1/userinfo",
            "revocation_endpoint": "https://oauth2.googleapis.com/revoke",
            "jwks_uri": self.jwks_uri,
            "response_types_supported": [
                "code", "token", "id_token", "code token", "code id_token",
                "token id_token", "code token id_token", "none",
            ],
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "claims_supported": [
                "aud", "email", "email_verified", "exp", "family_name", "given_name", "iat",
                "iss", "name", "picture", "sub",
            ],
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": [
                "authorization_code", "refresh_token",
                "urn:ietf:params:oauth:grant-type:device_code",
                "urn:ietf:params:oauth:grant-type:jwt-bearer",
            ],
        }  # fmt: skip

    def jwk(self, key: SigningKey) -> dict[str, Any]:
        return {**key.public_jwk(), "alg": "RS256", "use": "sig"}

    def new_code(self) -> str:
        return "4/0A" + secrets.token_urlsafe(54)  # Google's codes start "4/0A"

    def extra_redirect_params(self, grant: Grant) -> dict[str, str]:
        scopes = ["email", "profile", "openid"] if "email" in grant.scope else ["openid"]
        extra = {
            "scope": " ".join(
                f"https://www.googleapis.com/auth/userinfo.{s}" if s != "openid" else s
                for s in scopes
            ),
            "authuser": "0",
            "prompt": "consent",
        }
        if grant.user.hd:
            extra["hd"] = grant.user.hd
        return extra

    def claims(self, grant: Grant, access_token: str, now: dt.datetime) -> dict[str, Any]:
        user = grant.user
        digest = hashlib.sha256(access_token.encode()).digest()
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "azp": grant.client_id,
            "aud": grant.client_id,
            "sub": user.sub,
        }
        if user.hd:
            claims["hd"] = user.hd
        claims.update(
            email=user.email,
            email_verified=user.email_verified,
            at_hash=_b64(digest[: len(digest) // 2]),
        )
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        given, _, family = user.name.partition(" ")
        claims.update(
            name=user.name,
            given_name=given,
            family_name=family,
            iat=int(now.timestamp()),
            exp=int((now + TOKEN_LIFETIME).timestamp()),
        )
        return claims

    def token_answer(self, access_token: str, id_token: str) -> dict[str, Any]:
        return {
            "access_token": "ya29." + access_token,
            "expires_in": 3599,
            "scope": "openid https://www.googleapis.com/auth/userinfo.email "
            "https://www.googleapis.com/auth/userinfo.profile",
            "token_type": "Bearer",
            "id_token": id_token,
        }


class MicrosoftFake(OidcFake):
    """login.microsoftonline.com's v2.0 endpoints for one tenant (a work or school account)."""

    name = "microsoft"

    def __init__(
        self, *, tenant_id: str | None = None, tenant_domain: str = "", **kwargs: Any
    ) -> None:
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.tenant_domain = tenant_domain
        base = f"https://login.microsoftonline.com/{self.tenant_id}"
        self.issuer = f"{base}/v2.0"
        self.authorization_endpoint = f"{base}/oauth2/v2.0/authorize"
        self.token_endpoint = f"{base}/oauth2/v2.0/token"
        self.jwks_uri = f"https://login.microsoftonline.com/{self.tenant_id}/discovery/v2.0/keys"
        path = "/v2.0/.well-known/openid-configuration"
        tenants = (self.tenant_id, tenant_domain) if tenant_domain else (self.tenant_id,)
        self.discovery_urls = tuple(f"https://login.microsoftonline.com/{t}{path}" for t in tenants)
        super().__init__(**kwargs)

    def _new_key(self) -> SigningKey:
        key = SigningKey.new()
        # Microsoft's key ids are the certificate's SHA-1 thumbprint, base64url (x5t).
        cert = self._certificate(key)
        key.kid = _b64(cert.fingerprint(hashes.SHA1()))  # x5t is a SHA-1 thumbprint
        return key

    @staticmethod
    def _certificate(key: SigningKey) -> x509.Certificate:
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "accounts.accesscontrol.windows.net")]
        )
        start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.private.public_key())
            .serial_number(int.from_bytes(hashlib.sha256(key.pem()).digest()[:8], "big"))
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=5 * 365))
            .sign(key.private, hashes.SHA256())
        )

    def jwk(self, key: SigningKey) -> dict[str, Any]:
        cert = self._certificate(key)
        der = cert.public_bytes(serialization.Encoding.DER)
        return {
            **key.public_jwk(),
            "use": "sig",
            "x5t": key.kid,
            "x5c": [base64.b64encode(der).decode()],
            "cloud_instance_name": "microsoftonline.com",
            "issuer": self.issuer,
        }

    def discovery(self) -> dict[str, Any]:
        base = f"https://login.microsoftonline.com/{self.tenant_id}"
        return {
            "token_endpoint": self.token_endpoint,
            "token_endpoint_auth_methods_supported": [
                "client_secret_post", "private_key_jwt", "client_secret_basic",
            ],
            "jwks_uri": self.jwks_uri,
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": self.issuer,
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": self.authorization_endpoint,
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time",
                "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash",
                "c_hash", "email",
            ],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net",
        }  # fmt: skip

    def new_code(self) -> str:
        return "1.A" + secrets.token_urlsafe(300)

    def extra_redirect_params(self, grant: Grant) -> dict[str, str]:
        return {"session_state": str(uuid.uuid4())}

    def claims(self, grant: Grant, access_token: str, now: dt.datetime) -> dict[str, Any]:
        user = grant.user
        claims: dict[str, Any] = {
            "aud": grant.client_id,
            "iss": self.issuer,
            "iat": int(now.timestamp()),
            "nbf": int(now.timestamp()),
            "exp": int((now + TOKEN_LIFETIME).timestamp()),
        }
        if user.email_claim:
            claims["email"] = user.email
        claims["name"] = user.name
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        claims.update(
            oid=user.oid,
            preferred_username=user.email,
            rh="0.A" + secrets.token_urlsafe(40) + ".",
            # Pairwise: the same person has another sub in another application.
            sub=_b64(hashlib.sha256(f"{grant.client_id}:{user.oid}".encode()).digest()),
            tid=self.tenant_id,
            uti=secrets.token_urlsafe(16),
            ver="2.0",
        )
        return claims

    def token_answer(self, access_token: str, id_token: str) -> dict[str, Any]:
        return {
            "token_type": "Bearer",
            "scope": "email openid profile https://graph.microsoft.com/User.Read",
            "expires_in": 4718,
            "ext_expires_in": 4718,
            "access_token": "eyJ0eXAiOi" + access_token,
            "id_token": id_token,
        }

    def error(self, status: int, code: str, description: str) -> tuple[int, dict[str, str], str]:
        aadsts = {
            "invalid_client": "AADSTS7000215: Invalid client secret provided.",
            "invalid_grant": "AADSTS54005: OAuth2 Authorization code was already redeemed, "
            "please retry with a new valid code or use an existing refresh token.",
        }.get(code, f"AADSTS900144: {description}")
        if "verifier" in description:
            aadsts = (
                "AADSTS501481: The Code_Verifier does not match the code_challenge supplied "
                "in the authorization request."
            )
        body = {
            "error": code,
            "error_description": aadsts,
            "error_codes": [int(aadsts[6:].split(":")[0])],
            "timestamp": self.now().strftime("%Y-%m-%d %H:%M:%SZ"),
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        }
        return status, JSON, json.dumps(body)
