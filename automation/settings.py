"""The one typed settings object.

Loaded once from a TOML file (``config/settings.toml`` unless ``AUTOMATION_CONFIG`` or
``--config`` names another) and then from ``AUTOMATION_<NAME>`` environment variables, which
win. A secret may also come from ``AUTOMATION_<NAME>_FILE``. Every value is checked before
anything runs; a bad one raises :class:`ConfigError` naming the file, the field and the fix.

The defaults are the embedded set-up: a SQLite file, an in-process worker, calendar files and
Maildir folders, all under ``data_dir``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from automation.errors import ConfigError, ConfigProblem

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "AUTOMATION_"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("var")
    database_url: str = ""  # empty: sqlite:///<data_dir>/automation.db
    broker_url: str = "stub"  # stub (in-process), redis://…, amqp://…
    config_dir: Path = PROJECT_ROOT / "config"
    templates_dir: Path = PROJECT_ROOT / "templates"
    calendar_dir: Path | None = None  # default <data_dir>/calendars
    outbox_dir: Path | None = None  # default <data_dir>/mail/outbox (a Maildir)
    inbox_dir: Path | None = None  # default <data_dir>/mail/inbox (a Maildir)
    organization: str = "default"
    organization_name: str = "Example Corp"
    secret_key: str = field(default="", repr=False)
    mail_from: str = "Check-ins <checkins@example.com>"
    reply_domain: str = "reply.example.com"
    base_url: str = "http://localhost:8080"  # the public address: links, webhooks
    default_timezone: str = "UTC"
    business_days: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri")
    holidays: tuple[dt.date, ...] = ()
    planning_horizon_days: int = 28
    lease_seconds: int = 300
    tick_seconds: int = 30
    max_attempts: int = 8
    # Fair sharing (workers/broker.py): messages one organization may have waiting in the
    # broker's queue; more stay due in the database and the tick admits them in turn.
    max_queued_per_organization: int = 200
    # Observability (docs/observability.md).
    log_format: str = "text"  # text | json: one JSON object per line (job ids, outcome; scrubbed)
    # Empty: /metrics answers loopback clients only; set: a Bearer token is required.
    metrics_token: str = dataclasses.field(default="", repr=False)
    metrics_host: str = "127.0.0.1"  # where `automation worker` processes serve /metrics
    metrics_port: int = 0  # 0: off; else each worker process takes the first free port from here
    # Calendars. "local" writes .ics files; "google", "graph" and "caldav" write to the
    # organisation's calendars; an organizer whose address is outside calendar_domains (when
    # set) gets iMIP invites by email instead, as do people with "imip".
    calendar_provider: str = "local"
    calendar_domains: tuple[str, ...] = ()
    google_credentials_file: str = ""  # service-account key (domain-wide delegation) or OAuth
    google_api_endpoint: str = ""  # empty: Google's; tests point it at the local fake
    google_token_uri: str = ""  # empty: the one in the credentials file
    google_batch_size: int = 50
    google_channel_ttl_seconds: int = 604800  # watch channels live 7 days at most
    graph_tenant_id: str = ""
    graph_client_id: str = ""
    graph_client_secret: str = field(default="", repr=False)
    graph_base_url: str = "https://graph.microsoft.com/v1.0"
    graph_authority_host: str = "https://login.microsoftonline.com"
    graph_batch_size: int = 20
    graph_subscription_minutes: int = 4230  # Outlook events: under 3 days; read back expiry
    caldav_url: str = ""
    caldav_username: str = ""
    caldav_password: str = field(default="", repr=False)
    caldav_calendar_path: str = "{email}/checkins/"  # under caldav_url, per organizer
    caldav_schedules: bool = False  # True: the server sends invites itself (RFC 6638)
    calendar_poll_minutes: int = 15  # a sync per calendar at least this often (push or not)
    # Mail. "maildir" is the embedded default (outbox/inbox folders under data_dir).
    mail_transport: str = "maildir"  # maildir | smtp | gmail | graph
    mail_inbox: str = "maildir"  # maildir | imap | gmail | graph (the MTA pipe works with any)
    mail_daily_limit: int = 2000  # per sender per rolling 24 h (Google Workspace: 2,000)
    mail_per_minute: int = 30  # per sender (Exchange Online: 30); deferred, never dropped
    mail_soft_bounce_limit: int = 3  # soft bounces (4.x.x) in a row that flag an address
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_security: str = "starttls"  # starttls | tls (implicit, port 465) | none (tests only)
    smtp_username: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_sent_copy: str = ""  # server | append | none; empty: append when imap_host is set
    smtp_timeout_seconds: int = 30
    imap_host: str = ""
    imap_port: int = 993
    imap_security: str = "tls"  # tls | starttls | none (tests only)
    imap_username: str = ""
    imap_password: str = field(default="", repr=False)
    imap_folder: str = "INBOX"
    imap_processed_folder: str = "Processed"  # stored messages are moved here
    imap_sent_folder: str = "Sent"  # searched by Message-ID before a retried SMTP send
    gmail_api_endpoint: str = ""  # empty: Google's; tests point it at the local fake
    gmail_user: str = ""  # the mailbox sent from and read; empty: the mail_from address
    gmail_pubsub_topic: str = ""  # projects/<p>/topics/<t> for users.watch; empty: poll only
    graph_mailbox: str = ""  # the mailbox sent from and read; empty: the mail_from address
    inbound_webhook_secret: str = field(default="", repr=False)  # HMAC key, POST /webhooks/mail
    http_max_attempts: int = 6  # provider calls: retries on 429, 5xx and rate-limit 403
    http_max_backoff_seconds: int = 60
    # Console sign-in with OpenID Connect: a provider is offered once its client id is set.
    # The client secret is never in this file: it is read from the environment variable named
    # here (or from a file named by that variable with _FILE appended). A client
    # organization's own providers (its config/orgs/<slug>/settings.toml) take theirs from its
    # stored secrets instead: oidc_<provider>_client_secret, filled by tenant_settings only.
    oidc_google_client_id: str = ""
    oidc_google_client_secret: str = field(default="", repr=False)
    oidc_google_client_secret_env: str = "AUTOMATION_OIDC_GOOGLE_CLIENT_SECRET"
    oidc_google_hosted_domain: str = ""  # set: only accounts of this Workspace domain (hd)
    oidc_google_discovery_url: str = "https://accounts.google.com/.well-known/openid-configuration"
    oidc_microsoft_client_id: str = ""
    oidc_microsoft_client_secret: str = field(default="", repr=False)
    oidc_microsoft_client_secret_env: str = "AUTOMATION_OIDC_MICROSOFT_CLIENT_SECRET"
    oidc_microsoft_tenant: str = ""  # the directory (tenant) id, or one of its verified domains
    oidc_microsoft_discovery_url: str = (
        "https://login.microsoftonline.com/{tenant}/v2.0/.well-known/openid-configuration"
    )
    source: str = "(defaults)"

    # Derived locations: one place decides where the embedded files go.
    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'automation.db'}"

    @property
    def calendars(self) -> Path:
        return self.calendar_dir or self.data_dir / "calendars"

    @property
    def outbox(self) -> Path:
        return self.outbox_dir or self.data_dir / "mail" / "outbox"

    @property
    def inbox(self) -> Path:
        return self.inbox_dir or self.data_dir / "mail" / "inbox"

    @property
    def business_weekdays(self) -> frozenset[int]:
        return frozenset(WEEKDAYS.index(d) for d in self.business_days)

    def with_(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def oidc_client_secret(self, provider: str, environ: dict[str, str] | None = None) -> str:
        """The deployment's OpenID Connect client secret of ``provider`` ("google",
        "microsoft") from the environment variable its ``oidc_<provider>_client_secret_env``
        names, or from the file that variable with ``_FILE`` appended names; empty when
        neither is set.

        A client organization's secret is not this: it is its stored
        ``oidc_<provider>_client_secret`` (:meth:`organization_oidc_client_secret`), and a
        client never falls back to the environment (the deployment's)."""
        environ = os.environ if environ is None else environ
        var = getattr(self, f"oidc_{provider}_client_secret_env")
        if value := environ.get(var, "").strip():
            return value
        if path := environ.get(var + "_FILE"):
            try:
                return Path(path).read_text().strip()
            except OSError:
                return ""
        return ""

    def organization_oidc_client_secret(self, provider: str) -> str:
        """A client organization's OpenID Connect client secret of ``provider``: the one it
        stored (``automation org secret set SLUG oidc_<provider>_client_secret``), which
        :func:`automation.organizations.tenant_settings` puts here; empty when it has none."""
        return str(getattr(self, f"oidc_{provider}_client_secret"))

    def signing_key(self) -> bytes:
        """The key that signs reply addresses; created once under data_dir when unset."""
        if self.secret_key:
            return self.secret_key.encode()
        path = self.data_dir / "secret.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
        return path.read_text().strip().encode()


_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name != "source"}
_SECRET_FIELDS = {
    "secret_key",
    "database_url",
    "broker_url",
    "graph_client_secret",
    "caldav_password",
    "smtp_password",
    "imap_password",
    "inbound_webhook_secret",
    "metrics_token",
    "oidc_google_client_secret",
    "oidc_microsoft_client_secret",
}
# Filled only from an organization's stored secrets (tenant_settings): never from a settings
# file, and not from the environment, whose AUTOMATION_OIDC_<PROVIDER>_CLIENT_SECRET is the
# deployment's secret, read through oidc_<provider>_client_secret_env as it always was.
_ORGANIZATION_SECRET_ONLY = frozenset({"oidc_google_client_secret", "oidc_microsoft_client_secret"})
MAIL_TRANSPORTS = ("maildir", "smtp", "gmail", "graph")
OIDC_PROVIDERS = ("google", "microsoft")
# Tenants that stand for "any organization": the console must accept only its own tenant.
_MULTI_TENANT = ("common", "organizations", "consumers")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOMAIN = re.compile(r"(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_TENANT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
MAIL_INBOXES = ("maildir", "imap", "gmail", "graph")
CALENDAR_PROVIDERS = ("local", "google", "graph", "caldav", "imip")


def _convert(name: str, raw: Any, origin: str) -> Any:
    """Turn a TOML or environment value into the field's type, or raise a ConfigProblem."""
    default = _FIELDS[name].default

    def problem(expected: str, fix: str = "") -> ConfigError:
        shown = "(hidden)" if name in _SECRET_FIELDS else repr(raw)
        return ConfigError(ConfigProblem(origin, name, f"expected {expected}, got {shown}", fix))

    from_env = isinstance(raw, str) and origin.startswith("environment")
    if name in {
        "data_dir",
        "config_dir",
        "templates_dir",
        "calendar_dir",
        "outbox_dir",
        "inbox_dir",
    }:
        if not isinstance(raw, str) or not raw:
            raise problem("a directory path as a string")
        return Path(raw)
    if isinstance(default, bool):
        if from_env:
            if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise problem("true or false")
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if not isinstance(raw, bool):
            raise problem("true or false")
        return raw
    if name == "calendar_domains":
        items = [d for d in raw.split(",") if d.strip()] if from_env else raw
        if not isinstance(items, list | tuple) or not all(isinstance(d, str) for d in items):
            raise problem("a list of mail domains", 'e.g. ["example.com"]')
        return tuple(d.strip().lower().lstrip("@") for d in items)
    if name == "log_format":
        if raw not in ("text", "json"):
            raise problem('"text" or "json"')
        return raw
    if name == "metrics_port":
        try:
            port = int(raw) if from_env else raw
        except ValueError:
            raise problem("a port number") from None
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise problem("a port number from 0 (off) to 65535")
        return port
    if isinstance(default, int):
        if from_env:
            try:
                raw = int(raw)
            except ValueError:
                raise problem("a whole number") from None
        if not isinstance(raw, int) or raw <= 0:
            raise problem("a positive whole number")
        return raw
    if name == "business_days":
        items = raw.split(",") if from_env else raw
        if not isinstance(items, list | tuple) or not items:
            raise problem("a list of weekdays", 'e.g. ["mon", "tue", "wed", "thu", "fri"]')
        days = tuple(str(d).strip().lower()[:3] for d in items)
        if any(d not in WEEKDAYS for d in days):
            raise problem("weekday names", "use mon, tue, wed, thu, fri, sat, sun")
        return days
    if name == "holidays":
        items = [s for s in raw.split(",") if s.strip()] if from_env else raw
        if not isinstance(items, list | tuple):
            raise problem("a list of dates", 'e.g. ["2026-12-25", "2027-01-01"]')
        out = []
        for item in items:
            if isinstance(item, dt.date):
                out.append(item)
                continue
            try:
                out.append(dt.date.fromisoformat(str(item).strip()))
            except ValueError:
                raise problem("ISO dates (YYYY-MM-DD)") from None
        return tuple(sorted(out))
    if not isinstance(raw, str):
        raise problem("a string")
    if name == "default_timezone":
        try:
            ZoneInfo(raw)
        except (ZoneInfoNotFoundError, ValueError):
            raise problem("an IANA time zone", 'e.g. "Europe/Berlin"') from None
    if name == "broker_url" and not raw.startswith(
        ("stub", "redis://", "rediss://", "amqp://", "amqps://")
    ):
        raise problem("stub, redis://… or amqp://…")
    if name == "mail_transport" and raw not in MAIL_TRANSPORTS:
        raise problem("one of " + ", ".join(MAIL_TRANSPORTS))
    if name == "mail_inbox" and raw not in MAIL_INBOXES:
        raise problem("one of " + ", ".join(MAIL_INBOXES))
    if name == "smtp_sent_copy" and raw not in ("", "server", "append", "none"):
        raise problem(
            "server, append or none",
            "server: the SMTP server files a Sent copy itself (Gmail, Exchange Online); "
            "append: we APPEND one over IMAP after sending",
        )
    if name in ("smtp_security", "imap_security") and raw not in ("tls", "starttls", "none"):
        raise problem("tls, starttls or none")
    if name == "calendar_provider" and raw not in CALENDAR_PROVIDERS:
        raise problem("one of " + ", ".join(CALENDAR_PROVIDERS))
    web_address = name.endswith(("_endpoint", "_url", "_uri")) or name == "graph_authority_host"
    if (
        web_address
        and name not in ("database_url", "broker_url")
        and raw
        and not raw.startswith(("http://", "https://"))
    ):
        raise problem("an http:// or https:// URL")
    if name == "database_url" and raw and not raw.startswith(("sqlite", "postgresql")):
        raise problem("sqlite:///PATH or postgresql+psycopg://…")
    if name.endswith("_client_secret_env") and not _ENV_NAME.fullmatch(raw):
        raise problem(
            "the name of an environment variable",
            "the secret itself belongs in that variable, never in the settings file",
        )
    if name == "oidc_google_hosted_domain" and raw and not _DOMAIN.fullmatch(raw.lower()):
        raise problem("a domain name", 'your Google Workspace domain, e.g. "example.com"')
    if name == "oidc_microsoft_tenant" and raw:
        if raw.lower() in _MULTI_TENANT:
            raise problem(
                "one tenant",
                f"{raw} would let accounts of any organization sign in; use your directory "
                "(tenant) id from the Entra admin center (Overview) or one of its domains",
            )
        if not (_TENANT_ID.fullmatch(raw.lower()) or _DOMAIN.fullmatch(raw.lower())):
            raise problem(
                "a directory (tenant) id or a domain",
                'e.g. "72f988bf-86f1-41af-91ab-2d7cd011db47" or "example.onmicrosoft.com"',
            )
        return raw.lower()
    if name.endswith("_discovery_url") and not raw.startswith("https://"):
        raise problem("an https:// URL", "OpenID Connect discovery is served over HTTPS")
    return raw


def _check_oidc(
    values: dict[str, Any], origins: dict[str, str], environ: dict[str, str]
) -> list[ConfigProblem]:
    """What the OpenID Connect settings need together: a Microsoft tenant, and each enabled
    provider's client secret in the environment (checked here so that a missing secret stops
    the service at start-up rather than failing the first person who signs in)."""
    problems = []
    for provider in OIDC_PROVIDERS:
        client_id = f"oidc_{provider}_client_id"
        if not values.get(client_id):
            continue
        origin = origins.get(client_id, "(settings)")
        if provider == "microsoft" and not values.get("oidc_microsoft_tenant"):
            problems.append(missing_microsoft_tenant(origin))
        secret_env = f"oidc_{provider}_client_secret_env"
        var = values.get(secret_env, _FIELDS[secret_env].default)
        if not (environ.get(var, "").strip() or environ.get(var + "_FILE")):
            problems.append(
                ConfigProblem(
                    origins.get(secret_env, origin),
                    secret_env,
                    f"the environment variable {var} is not set, and {provider} sign-in "
                    f"is enabled ({client_id} is set)",
                    f"put the client secret in {var} (or a file named by {var}_FILE), or "
                    f"remove {client_id} to turn {provider} sign-in off",
                )
            )
    return problems


def default_config_file() -> Path:
    if env := os.environ.get(ENV_PREFIX + "CONFIG"):
        return Path(env)
    local = Path("config/settings.toml")
    return local if local.exists() else PROJECT_ROOT / "config" / "settings.toml"


def load_settings(
    path: Path | str | None = None, environ: dict[str, str] | None = None, **overrides: Any
) -> Settings:
    """Read the settings file and the environment into one checked Settings.

    A missing default file is fine (defaults apply); a missing file that was named is an error.
    """
    environ = dict(os.environ if environ is None else environ)
    explicit = path is not None or ENV_PREFIX + "CONFIG" in environ
    file = Path(path) if path is not None else default_config_file()
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}  # where each value came from, for problems found across fields
    problems: list[ConfigProblem] = []
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                ConfigProblem(
                    str(file), "(file)", f"not valid TOML: {exc}", "correct the syntax at that line"
                )
            ) from None
        data = data.get("automation", data)
        for key, raw in data.items():
            if key not in _FIELDS:
                problems.append(
                    ConfigProblem(
                        str(file),
                        key,
                        "unknown setting",
                        "known settings: "
                        + ", ".join(sorted(set(_FIELDS) - _ORGANIZATION_SECRET_ONLY)),
                    )
                )
                continue
            if key in _ORGANIZATION_SECRET_ONLY:
                variable = _FIELDS[key + "_env"].default
                problems.append(
                    ConfigProblem(
                        str(file),
                        key,
                        "a client secret: it never goes in a settings file",
                        f"remove the line and put the secret in the environment variable "
                        f"{key}_env names ({variable} unless set), or in a file named by that "
                        "variable with _FILE appended",
                    )
                )
                continue
            try:
                values[key] = _convert(key, raw, str(file))
                origins[key] = str(file)
            except ConfigError as exc:
                problems.extend(exc.problems)
    elif explicit:
        raise ConfigError(
            ConfigProblem(
                str(file),
                "(file)",
                "file not found",
                "create it or point AUTOMATION_CONFIG at a settings file",
            )
        )
    for name in _FIELDS:
        if name in _ORGANIZATION_SECRET_ONLY:
            continue  # its variable is the deployment's secret (oidc_client_secret reads it)
        var = ENV_PREFIX + name.upper()
        raw = environ.get(var)
        origin = f"environment {var}"
        if raw is None and (file_var := environ.get(var + "_FILE")):
            origin = f"environment {var}_FILE"
            try:
                raw = Path(file_var).read_text().strip()
            except OSError as exc:
                problems.append(
                    ConfigProblem(
                        origin,
                        name,
                        f"cannot read {file_var}: {exc}",
                        "point it at a readable file",
                    )
                )
                continue
        if raw is None:
            continue
        try:
            values[name] = _convert(name, raw, origin)
            origins[name] = origin
        except ConfigError as exc:
            problems.extend(exc.problems)
    for name, raw in overrides.items():
        if raw is not None:
            values[name] = raw
    if not problems:
        problems.extend(_check_oidc(values, origins, environ))
    if problems:
        raise ConfigError(problems)
    return Settings(**values, source=str(file) if file.exists() else "(defaults)")


def missing_microsoft_tenant(origin: str) -> ConfigProblem:
    """The problem of a Microsoft sign-in without its tenant (the main file's and an
    organization's read the same)."""
    return ConfigProblem(
        origin,
        "oidc_microsoft_tenant",
        "required when oidc_microsoft_client_id is set",
        "set it to the directory (tenant) id shown on the app registration's "
        "Overview page in the Entra admin center",
    )
