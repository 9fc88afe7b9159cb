"""Client organizations (issue 10): each one's own configuration folder and encrypted secrets.

One deployment serves many organizations. What belongs to one of them lives in two places:

- **Its folder** ``config/orgs/<slug>/`` under the deployment's ``config_dir``
  (:func:`org_folder`; the layout is documented in ``config/orgs/README.md``):

  - ``settings.toml`` with the settings an organization may choose for itself
    (:data:`ORGANIZATION_FIELDS`: its providers and their non-secret ids, its mail addresses,
    name, time zone, business days and holidays, a client's console sign-in providers).
    Settings of the deployment (database, broker, data folder, signing key, worker timing,
    public address, metrics, the deployment's own console sign-in) are refused there, naming
    the file, the field and the fix; values are checked by the very function that checks the
    main settings file, so a bad value reads the same.
  - optional ``cadences/``, ``pips/``, ``roles/``, ``example/``, ``privacy.toml`` (its
    retention), ``delegates.toml``, ``coaching.toml``: each *replaces* the shared one of the
    same name for this organization; what it does not have it shares.
  - optional ``templates/``: file by file over the shared templates (Jinja's search order with
    the organization first): ``templates/email/invite/subject.txt`` alone changes one subject.

  The loaders (``automation.config``) and the template renderer (``automation.emails``) read
  one folder each, so :func:`tenant_settings` points ``config_dir`` and ``templates_dir`` at a
  generated *view* under ``<data_dir>/orgs/<slug>/``: a folder of symbolic links to the
  organization's entries where it has them and to the shared ones otherwise, rebuilt on each
  call (cheap: a few links). It is only ever read through; anything that *writes*
  configuration for an organization (the console's editors) must write into
  :func:`org_folder`, never through the view, or it would change the shared files.

- **Its secrets** in the ``organization_secrets`` table (:data:`ORGANIZATION_SECRETS`: the
  passwords, client secrets and Google key its providers need), encrypted with Fernet under
  keys from the environment (:class:`Keyring`, ``AUTOMATION_SECRETS_KEYS``: comma-separated,
  the first encrypts, all decrypt). Why Fernet: authenticated encryption (AES-CBC with an
  HMAC-SHA256 over the whole token) in a fixed, versioned format, and ``MultiFernet`` makes
  rotation a loop over the rows; the ``cryptography`` package is already installed through
  ``pyjwt[crypto]``, so this adds no dependency, and nothing here assembles cipher modes by
  hand. A value is never logged or audited: the audit log records a secret's name and the
  fingerprint of its key (``key_id``) only.

Rotation: put a new key first in ``AUTOMATION_SECRETS_KEYS`` (keeping the old one after it),
run ``automation org secret rotate``, then drop the old key.

An organization other than the deployment's own (``Settings.organization``) never inherits
the deployment's secrets: its providers get its own credentials or none, so a provider it
points elsewhere can never receive another organization's password.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import secrets as random
import shutil
import tempfile
import tomllib
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select
from sqlalchemy.orm import Session

from automation import audit
from automation.db import dialect_insert
from automation.errors import AutomationError, ConfigError, ConfigProblem
from automation.models import Organization, OrganizationSecret, Task, TaskState
from automation.settings import (  # the main file's own checks
    _FIELDS,
    Settings,
    _convert,
    missing_microsoft_tenant,
)

ORGS_FOLDER = "orgs"  # under the deployment's config_dir, and under its data_dir (the views)
SETTINGS_FILE = "settings.toml"
TEMPLATES_FOLDER = "templates"
# A slug names a folder: one path segment, never "." or "..", never hidden.
SLUG = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
# In a view of the configuration: a link to the shared config_dir (see org_folder).
_SHARED_LINK = ".shared"

# A client organization's own OpenID Connect providers for the console (its people sign in at
# /console/sign-in?org=<slug>); their client secrets are its secrets (ORGANIZATION_SECRETS).
# The deployment's own organization signs in with the deployment's (refused in its file).
OIDC_FIELDS = (
    "oidc_google_client_id",
    "oidc_google_hosted_domain",
    "oidc_google_discovery_url",
    "oidc_microsoft_client_id",
    "oidc_microsoft_tenant",
    "oidc_microsoft_discovery_url",
)
# What an organization may set in its own settings.toml. Everything else in Settings belongs
# to the deployment (or is a secret, below); a Settings field added later is the deployment's
# until it is listed here, which is the safe default.
ORGANIZATION_FIELDS = frozenset(
    {
        "organization_name",
        "mail_from",
        "reply_domain",
        "default_timezone",
        "business_days",
        "holidays",
        # calendars
        "calendar_provider",
        "calendar_domains",
        "calendar_poll_minutes",
        "google_api_endpoint",
        "google_token_uri",
        "google_batch_size",
        "google_channel_ttl_seconds",
        "graph_tenant_id",
        "graph_client_id",
        "graph_base_url",
        "graph_authority_host",
        "graph_batch_size",
        "graph_subscription_minutes",
        "caldav_url",
        "caldav_username",
        "caldav_calendar_path",
        "caldav_schedules",
        # mail
        "mail_transport",
        "mail_inbox",
        "mail_daily_limit",
        "mail_per_minute",
        "mail_soft_bounce_limit",
        "smtp_host",
        "smtp_port",
        "smtp_security",
        "smtp_username",
        "smtp_sent_copy",
        "smtp_timeout_seconds",
        "imap_host",
        "imap_port",
        "imap_security",
        "imap_username",
        "imap_folder",
        "imap_processed_folder",
        "imap_sent_folder",
        "gmail_api_endpoint",
        "gmail_user",
        "gmail_pubsub_topic",
        "graph_mailbox",
        *OIDC_FIELDS,
    }
)
# The secrets an organization stores (`automation org secret set`), each named after the
# Settings field it fills. google_credentials_file holds the key file's content (JSON): the
# Google adapters read a file, so tenant_settings writes it to a private one (mode 0600) under
# <data_dir>/orgs/<slug>/secrets/ and fills the field with its path.
ORGANIZATION_SECRETS = (
    "caldav_password",
    "google_credentials_file",
    "graph_client_secret",
    "imap_password",
    "oidc_google_client_secret",
    "oidc_microsoft_client_secret",
    "smtp_password",
)
GOOGLE_KEY_SECRET = "google_credentials_file"
_REFUSED_FIXES = {
    "organization": "the folder's name is the organization's slug; remove the line",
    "config_dir": "put the organization's cadences/, pips/, roles/ and the other files in "
    "this folder instead; remove the line",
    "templates_dir": "put the organization's templates in templates/ beside this file; remove "
    "the line",
}

KEYS_VARIABLE = "AUTOMATION_SECRETS_KEYS"
GENERATE_KEY = (
    'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
)


class OrganizationRefused(AutomationError):
    """A change to an organization that cannot be made as asked; nothing was changed."""


class SecretRefused(OrganizationRefused):
    """A secret that cannot be stored (an unknown name, an empty value); nothing was stored."""


# --------------------------------------------------------------------------- folders


def valid_slug(slug: str) -> bool:
    return bool(SLUG.fullmatch(slug))


def _shared_config_dir(settings: Settings) -> Path:
    """The deployment's config_dir, also when ``settings`` are an organization's (whose
    config_dir is a view that links back to it)."""
    link = settings.config_dir / _SHARED_LINK
    return Path(os.readlink(link)) if link.is_symlink() else settings.config_dir


def org_folder(settings: Settings, slug: str) -> Path:
    """``config/orgs/<slug>/`` under the deployment's config_dir (it may not exist). Raises
    :class:`ConfigError` for a slug that cannot name a folder."""
    if not valid_slug(slug):
        raise ConfigError(
            ConfigProblem(
                "(organization)",
                "slug",
                f"{slug!r} cannot name a folder",
                "a slug is lower-case letters, digits, '-', '_' and '.', starting with a "
                "letter or digit, at most 100 characters (e.g. acme or north-wind)",
            )
        )
    return _shared_config_dir(settings) / ORGS_FOLDER / slug


def _private_folder(base: Settings, slug: str) -> Path:
    """Where the generated views and the Google key file of ``slug`` go, under data_dir. A
    slug that cannot name a folder (an old deployment's) gets a digest instead."""
    segment = slug if valid_slug(slug) else "org-" + hashlib.sha256(slug.encode()).hexdigest()[:16]
    return base.data_dir / ORGS_FOLDER / segment


def read_organization_settings(base: Settings, slug: str) -> dict[str, Any]:
    """The checked values of ``config/orgs/<slug>/settings.toml`` (empty without the file).

    Raises :class:`ConfigError` with every problem of the file at once: a setting of the
    deployment, a secret, an unknown key or a bad value, each naming the file, the field and
    the fix. Values are converted by the main settings file's own checks.
    """
    if not valid_slug(slug):
        return {}  # an old slug that cannot name a folder has no file
    file = org_folder(base, slug) / SETTINGS_FILE
    if not file.is_file():
        return {}
    origin = str(file)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            ConfigProblem(
                origin, "(file)", f"not valid TOML: {exc}", "correct the syntax at that line"
            )
        ) from None
    except OSError as exc:
        raise ConfigError(ConfigProblem(origin, "(file)", f"cannot read: {exc}")) from None
    data = data.get("automation", data)
    values: dict[str, Any] = {}
    problems: list[ConfigProblem] = []
    for key, raw in data.items():
        if key in ORGANIZATION_SECRETS:
            problems.append(
                ConfigProblem(
                    origin,
                    key,
                    "a secret: it never goes in a settings file",
                    f"remove the line and run `automation org secret set {slug} {key}` (the "
                    "value is read from standard input and stored encrypted)",
                )
            )
        elif key in _FIELDS and key not in ORGANIZATION_FIELDS:
            deployment_file = base.source if base.source != "(defaults)" else "settings.toml"
            problems.append(
                ConfigProblem(
                    origin,
                    key,
                    "a setting of the deployment, not of one organization",
                    _REFUSED_FIXES.get(
                        key,
                        f"set it in the deployment's settings ({deployment_file} or "
                        f"AUTOMATION_{key.upper()}) and remove the line from this file",
                    ),
                )
            )
        elif key not in _FIELDS:
            problems.append(
                ConfigProblem(
                    origin,
                    key,
                    "unknown setting",
                    "settings an organization may set: " + ", ".join(sorted(ORGANIZATION_FIELDS)),
                )
            )
        else:
            try:
                values[key] = _convert(key, raw, origin)
            except ConfigError as exc:
                problems.extend(exc.problems)
    if slug == base.organization:
        # The deployment's own organization signs in with the deployment's providers.
        problems.extend(
            ConfigProblem(
                origin,
                key,
                "the deployment's own organization signs in with the deployment's providers",
                "set it in the deployment's settings "
                f"({base.source if base.source != '(defaults)' else 'settings.toml'}) and "
                "remove the line from this file",
            )
            for key in OIDC_FIELDS
            if key in values
        )
    elif values.get("oidc_microsoft_client_id") and not values.get("oidc_microsoft_tenant"):
        problems.append(missing_microsoft_tenant(origin))
    if problems:
        raise ConfigError(problems)
    return values


def tenant_settings(
    base: Settings, slug: str, secrets: Mapping[str, str], *, name: str | None = None
) -> Settings:
    """The settings of organization ``slug``: ``base`` (the deployment's) with the
    organization's ``settings.toml`` applied, ``organization=slug``, ``config_dir`` and
    ``templates_dir`` pointing at views with the organization's folders first (when it has
    any), and its secret fields filled from ``secrets`` (see :func:`load_secrets`).

    ``name`` (the organizations row's) is the ``organization_name`` when the file sets none;
    without either, the deployment's own organization keeps the deployment's name and any
    other takes its slug, never another organization's name. Only the deployment's own
    organization falls back to the deployment's secrets. Raises :class:`ConfigError` for a
    problem of the file or an unknown secret name.
    """
    values = read_organization_settings(base, slug)
    own = slug == base.organization
    unknown = sorted(set(secrets) - set(ORGANIZATION_SECRETS))
    if unknown:
        raise ConfigError(
            [
                ConfigProblem(
                    f"organization {slug}: secrets",
                    secret,
                    "not a secret an organization may have",
                    f"remove it: `automation org secret unset {slug} {secret}`",
                )
                for secret in unknown
            ]
        )
    filled: dict[str, Any] = {} if own else {field: "" for field in ORGANIZATION_SECRETS}
    for secret, value in secrets.items():
        if secret == GOOGLE_KEY_SECRET:
            filled[secret] = str(_write_google_key(base, slug, value))
        else:
            filled[secret] = value
    if not own:
        # A client signs in with its own OpenID Connect providers or none, never the
        # deployment's (the deployment's own organization keeps the deployment's).
        for oidc_field in OIDC_FIELDS:
            values.setdefault(oidc_field, _FIELDS[oidc_field].default)
    if "organization_name" not in values and not own:
        values["organization_name"] = name or slug
    elif "organization_name" not in values and name:
        values["organization_name"] = name
    config_dir, templates_dir = _views(base, slug)
    file = org_folder(base, slug) / SETTINGS_FILE if valid_slug(slug) else None
    source = f"{base.source} + {file}" if file is not None and file.is_file() else base.source
    return base.with_(
        **values,
        **filled,
        organization=slug,
        config_dir=config_dir,
        templates_dir=templates_dir,
        source=source,
    )


# --- the views: one folder the loaders read, the organization's entries first ---------------


def _entries(folder: Path, skip: Collection[str]) -> list[Path]:
    if not folder.is_dir():
        return []
    return [
        p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and p.name not in skip
    ]


def _views(base: Settings, slug: str) -> tuple[Path, Path]:
    """config_dir and templates_dir for ``slug``: the deployment's own when the organization
    has nothing of its own, else a view under data_dir rebuilt now."""
    if not valid_slug(slug):
        return base.config_dir, base.templates_dir
    folder = org_folder(base, slug)
    own_config = _entries(folder, {SETTINGS_FILE, TEMPLATES_FOLDER})
    config_dir, templates_dir = base.config_dir, base.templates_dir
    if own_config:
        config_dir = _private_folder(base, slug) / "config"
        _build_view(
            config_dir,
            [folder, base.config_dir],
            skip={SETTINGS_FILE, TEMPLATES_FOLDER, ORGS_FOLDER},
            merge_folders=False,  # an organization's cadences/ replaces the shared cadences/
        )
        _link(config_dir / _SHARED_LINK, base.config_dir)
    if (folder / TEMPLATES_FOLDER).is_dir():
        templates_dir = _private_folder(base, slug) / TEMPLATES_FOLDER
        # File by file: the organization's subject.txt over the shared body.txt and layout.
        _build_view(
            templates_dir,
            [folder / TEMPLATES_FOLDER, base.templates_dir],
            skip=(),
            merge_folders=True,
        )
    return config_dir, templates_dir


def _build_view(
    target: Path, sources: Sequence[Path], *, skip: Collection[str], merge_folders: bool
) -> None:
    """Make ``target`` the union of ``sources`` (the first that has an entry wins) as symbolic
    links; with ``merge_folders``, a folder that several sources have becomes a real folder
    merged the same way. Entries no source has any more are removed."""
    target.mkdir(parents=True, exist_ok=True)
    found: dict[str, list[Path]] = defaultdict(list)
    for source in sources:
        for entry in _entries(source, skip):
            found[entry.name].append(entry)
    for name, candidates in found.items():
        place = target / name
        if merge_folders and len(candidates) > 1 and all(c.is_dir() for c in candidates):
            if place.is_symlink():
                place.unlink()
            _build_view(place, candidates, skip=(), merge_folders=True)
        else:
            _link(place, candidates[0])
    for entry in list(target.iterdir()):
        if entry.name not in found and not entry.name.startswith("."):
            _remove(entry)


def _link(place: Path, source: Path) -> None:
    """``place`` becomes a link to ``source``, atomically (another process may be reading or
    rebuilding the same view)."""
    source = source.absolute()
    if place.is_symlink() and os.readlink(place) == str(source):
        return
    temporary = place.with_name(f".{place.name}.{random.token_hex(6)}.link")
    os.symlink(source, temporary)
    if place.is_dir() and not place.is_symlink():
        _remove(place)
    os.replace(temporary, place)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)


def real_location(file: str, settings: Settings) -> str:
    """The file a problem found through an organization's view really is (the organization's
    or the shared one), so that a message names a file a person can open."""
    path = Path(file)
    for root in (settings.config_dir, settings.templates_dir):
        try:
            rest = path.relative_to(root).parts
        except ValueError:
            continue
        current = root
        for index, part in enumerate(rest):
            current = current / part
            if current.is_symlink():
                return str(Path(os.readlink(current)).joinpath(*rest[index + 1 :]))
    return file


def _write_google_key(base: Settings, slug: str, content: str) -> Path:
    """The organization's Google key in a file only this user may read, rewritten only when
    it changed (the adapters read a path)."""
    folder = _private_folder(base, slug) / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / "google_credentials.json"
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == content:
            return path
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".google_credentials.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:  # mkstemp: mode 0600
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


# --- checking an organization's folder -------------------------------------------------------


def check_organization(
    base: Settings, slug: str, *, name: str | None = None
) -> tuple[Settings | None, list[ConfigProblem]]:
    """Validate what ``slug`` would run with: its settings file, then its (or the shared)
    cadences, templates, PIP templates, roles, delegates, privacy and coaching files, by the
    loaders the service itself uses. Never stops at the first problem; each problem names the
    real file (the organization's or the shared one), not the generated view."""
    from automation.config import (
        load_cadences,
        load_coaching,
        load_delegates,
        load_pip_templates,
        load_privacy,
        load_roles,
    )
    from automation.emails import check_templates

    try:
        settings = tenant_settings(base, slug, {}, name=name)
    except ConfigError as exc:
        return None, exc.problems
    problems: list[ConfigProblem] = []
    cadences = settings.config_dir / "cadences"
    if not cadences.is_dir():
        problems.append(
            ConfigProblem(
                str(org_folder(base, slug) / "cadences"),
                "(folder)",
                "missing, and there is no shared one",
                "create it with at least one cadence .toml",
            )
        )
    else:
        try:
            load_cadences(settings)
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.extend(check_templates(settings.templates_dir))
    for loader in (load_pip_templates, load_delegates, load_privacy, load_roles, load_coaching):
        try:
            loader(settings)  # type: ignore[operator]
        except ConfigError as exc:
            problems.extend(exc.problems)
    return settings, [
        dataclasses.replace(p, file=real_location(p.file, settings)) for p in problems
    ]


# --------------------------------------------------------------------------- secrets


def key_fingerprint(key: str | bytes) -> str:
    """The first 8 hex digits of the SHA-256 of a Fernet key's bytes: names the key in the
    table, the audit log and messages without revealing anything usable about it."""
    raw = base64.urlsafe_b64decode(key.encode() if isinstance(key, str) else key)
    return hashlib.sha256(raw).hexdigest()[:8]


@dataclass(frozen=True)
class Keyring:
    """The Fernet keys secrets are encrypted under: the first encrypts, every one decrypts."""

    key_ids: tuple[str, ...]
    _fernet: MultiFernet = dataclasses.field(repr=False, compare=False)

    @property
    def current_key_id(self) -> str:
        return self.key_ids[0]

    @classmethod
    def from_keys(cls, keys: Sequence[str | bytes], origin: str = KEYS_VARIABLE) -> Keyring:
        """A keyring from Fernet keys (url-safe base64 of 32 bytes), newest first."""
        where = f"environment {origin}"
        if not keys:
            raise ConfigError(
                ConfigProblem(
                    where,
                    KEYS_VARIABLE,
                    "not set: per-organization secrets are encrypted under it",
                    f"generate a key with {GENERATE_KEY} and set {KEYS_VARIABLE}=<that key> "
                    "(several keys: comma-separated, the first encrypts, all decrypt)",
                )
            )
        fernets, ids = [], []
        problems = []
        for index, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key))
                ids.append(key_fingerprint(key))
            except (ValueError, TypeError, binascii.Error):
                # The key itself is never repeated in the message: it may be nearly right.
                problems.append(
                    ConfigProblem(
                        where,
                        KEYS_VARIABLE,
                        f"key {index} of {len(keys)} is not a Fernet key (32 bytes in url-safe "
                        "base64, 44 characters)",
                        f"generate one with {GENERATE_KEY}",
                    )
                )
        if problems:
            raise ConfigError(problems)
        return cls(key_ids=tuple(ids), _fernet=MultiFernet(fernets))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring:
        """From ``AUTOMATION_SECRETS_KEYS`` (or a file named by ``AUTOMATION_SECRETS_KEYS_FILE``,
        keys separated by commas or lines); a clear :class:`ConfigError` when it is missing or
        a key is malformed."""
        environ = os.environ if environ is None else environ
        text, origin = environ.get(KEYS_VARIABLE), KEYS_VARIABLE
        if text is None and (path := environ.get(KEYS_VARIABLE + "_FILE")):
            origin = KEYS_VARIABLE + "_FILE"
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    ConfigProblem(
                        f"environment {origin}",
                        KEYS_VARIABLE,
                        f"cannot read {path}: {exc.strerror}",
                        "point it at a readable file",
                    )
                ) from None
        keys = [k.strip() for k in re.split(r"[,\n]", text or "") if k.strip()]
        return cls.from_keys(keys, origin)

    @classmethod
    def from_env_if_set(cls, environ: Mapping[str, str] | None = None) -> Keyring | None:
        """Like :meth:`from_env`, but None when the variable is not set at all (a deployment
        whose organizations store no secrets needs no key)."""
        environ = os.environ if environ is None else environ
        if KEYS_VARIABLE not in environ and KEYS_VARIABLE + "_FILE" not in environ:
            return None
        return cls.from_env(environ)

    def encrypt(self, value: str) -> str:
        return self._fernet.encrypt(value.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """Raises ``cryptography.fernet.InvalidToken`` when no key decrypts it."""
        return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")

    def rotate(self, token: str) -> str:
        """The same value under the first key; raises ``InvalidToken`` like :meth:`decrypt`."""
        return self._fernet.rotate(token.encode("ascii")).decode("ascii")


def check_secret_name(name: str) -> None:
    if name not in ORGANIZATION_SECRETS:
        raise SecretRefused(
            f"{name!r} is not a secret an organization may store; secrets: "
            + ", ".join(ORGANIZATION_SECRETS)
            + " (other settings go in the organization's settings.toml, or are the "
            "deployment's)"
        )


def _check_value(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise SecretRefused(f"{name}: the value is empty; nothing was stored")
    if name == GOOGLE_KEY_SECRET:
        try:
            info = json.loads(value)
        except ValueError:
            info = None
        if not isinstance(info, dict) or info.get("type") not in (
            "service_account",
            "authorized_user",
        ):
            raise SecretRefused(
                f"{name}: expected the content of a Google key file (JSON of type "
                '"service_account" or "authorized_user"), e.g. '
                f"`automation org secret set SLUG {name} < key.json`; nothing was stored"
            )


def _slug(session: Session, organization_id: int) -> str:
    org = session.get(Organization, organization_id)
    return org.slug if org is not None else str(organization_id)


def put_secret(
    session: Session,
    organization_id: int,
    name: str,
    value: str,
    keyring: Keyring,
    now: dt.datetime,
    actor: str,
) -> OrganizationSecret:
    """Store (or replace) one secret of an organization, encrypted under the keyring's first
    key; audited with its name and key id, never its value."""
    check_secret_name(name)
    _check_value(name, value)
    row = session.scalars(
        select(OrganizationSecret).where(
            OrganizationSecret.organization_id == organization_id,
            OrganizationSecret.name == name,
        )
    ).one_or_none()
    replaced = row is not None
    if row is None:
        row = OrganizationSecret(organization_id=organization_id, name=name, created_at=now)
        session.add(row)
    row.ciphertext = keyring.encrypt(value)
    row.key_id = keyring.current_key_id
    row.updated_at = now
    session.flush()
    audit.record(
        session,
        organization_id,
        actor=actor,
        action="secret.set",
        subject_kind="organization_secret",
        subject_id=row.id,
        at=now,
        data={"name": name, "key_id": row.key_id, "replaced": replaced},
    )
    return row


def remove_secret(
    session: Session, organization_id: int, name: str, now: dt.datetime, actor: str
) -> bool:
    """Delete one secret; False when there was none. Audited with its name."""
    row = session.scalars(
        select(OrganizationSecret).where(
            OrganizationSecret.organization_id == organization_id,
            OrganizationSecret.name == name,
        )
    ).one_or_none()
    if row is None:
        return False
    audit.record(
        session,
        organization_id,
        actor=actor,
        action="secret.removed",
        subject_kind="organization_secret",
        subject_id=row.id,
        at=now,
        data={"name": name, "key_id": row.key_id},
    )
    session.delete(row)
    session.flush()
    return True


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown of a stored secret: never its value."""

    name: str
    key_id: str
    created_at: dt.datetime
    updated_at: dt.datetime


def list_secrets(session: Session, organization_id: int) -> list[SecretInfo]:
    return [
        SecretInfo(row.name, row.key_id, row.created_at, row.updated_at)
        for row in session.scalars(
            select(OrganizationSecret)
            .where(OrganizationSecret.organization_id == organization_id)
            .order_by(OrganizationSecret.name)
        )
    ]


def _unreadable(slug: str, row: OrganizationSecret, keyring: Keyring) -> ConfigProblem:
    if row.key_id not in keyring.key_ids:
        return ConfigProblem(
            f"environment {KEYS_VARIABLE}",
            f"{slug}/{row.name}",
            f"encrypted under key {row.key_id}, which is not among the keys given "
            f"({', '.join(keyring.key_ids)})",
            f"add that key back to {KEYS_VARIABLE} (after the first: the first encrypts, all "
            f"decrypt), or store the secret again: `automation org secret set {slug} {row.name}`",
        )
    return ConfigProblem(
        f"organization_secrets of {slug}",
        f"{slug}/{row.name}",
        f"does not decrypt under key {row.key_id}: the stored value was changed or damaged",
        f"store it again: `automation org secret set {slug} {row.name}`",
    )


def load_secrets(session: Session, organization_id: int, keyring: Keyring | None) -> dict[str, str]:
    """Every secret of an organization, decrypted, by name (for :func:`tenant_settings`).

    ``keyring`` may be None when the deployment has no key: fine for an organization without
    secrets. Raises :class:`ConfigError` naming each secret that cannot be read and why (no
    key at all, a key that is no longer given, a damaged value) and the fix.
    """
    rows = session.scalars(
        select(OrganizationSecret)
        .where(OrganizationSecret.organization_id == organization_id)
        .order_by(OrganizationSecret.name)
    ).all()
    if not rows:
        return {}
    slug = _slug(session, organization_id)
    if keyring is None:
        raise ConfigError(
            ConfigProblem(
                f"environment {KEYS_VARIABLE}",
                KEYS_VARIABLE,
                f"not set, and organization {slug} has {len(rows)} encrypted secret(s) "
                f"({', '.join(r.name for r in rows)})",
                f"set {KEYS_VARIABLE} to the key(s) they were stored under",
            )
        )
    found: dict[str, str] = {}
    problems = []
    for row in rows:
        try:
            found[row.name] = keyring.decrypt(row.ciphertext)
        except InvalidToken:
            problems.append(_unreadable(slug, row, keyring))
    if problems:
        raise ConfigError(problems)
    return found


@dataclass(frozen=True)
class RotationCounts:
    """What :func:`rotate` did: secrets re-encrypted under ``key_id`` (by organization slug
    and by the key they were under) and those already under it."""

    key_id: str
    rotated: int
    unchanged: int
    by_organization: dict[str, int]
    from_key_ids: dict[str, int]


def rotate(session: Session, keyring: Keyring, now: dt.datetime, actor: str) -> RotationCounts:
    """Re-encrypt every organization's secrets that are not under the keyring's first key.

    Runs in the system scope (all organizations). Every token is re-encrypted before any row
    changes, so a secret no key decrypts stops the rotation with nothing changed, naming it.
    Each organization's audit log records the names and key ids, never a value.
    """
    rows = session.scalars(
        select(OrganizationSecret).order_by(
            OrganizationSecret.organization_id, OrganizationSecret.name
        )
    ).all()
    current = keyring.current_key_id
    stale = [row for row in rows if row.key_id != current]
    tokens: dict[int, str] = {}
    problems = []
    for row in stale:
        try:
            tokens[row.id] = keyring.rotate(row.ciphertext)
        except InvalidToken:
            problems.append(_unreadable(_slug(session, row.organization_id), row, keyring))
    if problems:
        raise ConfigError(problems)
    by_organization: dict[int, list[OrganizationSecret]] = defaultdict(list)
    previous: Counter[str] = Counter()
    for row in stale:
        previous[row.key_id] += 1
        by_organization[row.organization_id].append(row)
    slugs: dict[str, int] = {}
    for organization_id, changed in by_organization.items():
        old_keys = sorted({row.key_id for row in changed})
        for row in changed:
            row.ciphertext, row.key_id, row.updated_at = tokens[row.id], current, now
        audit.record(
            session,
            organization_id,
            actor=actor,
            action="secret.rotated",
            subject_kind="organization",
            subject_id=organization_id,
            at=now,
            data={
                "names": [row.name for row in changed],
                "from_key_ids": old_keys,
                "key_id": current,
            },
        )
        slugs[_slug(session, organization_id)] = len(changed)
    session.flush()
    return RotationCounts(
        key_id=current,
        rotated=len(stale),
        unchanged=len(rows) - len(stale),
        by_organization=slugs,
        from_key_ids=dict(previous),
    )


# --------------------------------------------------------------------------- creating one


@dataclass(frozen=True)
class CreatedOrganization:
    id: int
    slug: str
    name: str
    created: bool  # False: it existed (its name unchanged)
    folder: Path
    folder_created: bool


def starter_settings(slug: str, name: str, base: Settings) -> str:
    """A commented settings.toml for a new organization: its name set, the rest to choose."""
    quoted = json.dumps(name, ensure_ascii=False)  # a JSON string is a TOML basic string
    deployment_file = base.source if base.source != "(defaults)" else "config/settings.toml"
    return f"""\
# Settings of the organization {quoted} (slug {slug}). What is set here replaces the
# deployment's value ({deployment_file}) for this organization only; see ../README.md.
# The deployment's own settings (database, broker, data_dir, secret_key, base_url, worker
# timing, metrics) cannot be set here.
#
# Secrets never go in this file; each is read from standard input and stored encrypted:
#   automation org secret set {slug} smtp_password
#   automation org secret set {slug} google_credentials_file < service-account.json
# Check this folder with: automation org config {slug} --check

organization_name = {quoted}
# mail_from = "Check-ins <checkins@client.example>"
# reply_domain = "reply.client.example"
# default_timezone = "Europe/Berlin"
# business_days = ["mon", "tue", "wed", "thu", "fri"]
# holidays = ["2026-12-25", "2027-01-01"]

# Calendars: local | google | graph | caldav | imip
# calendar_provider = "graph"
# calendar_domains = ["client.example"]
# graph_tenant_id = "00000000-0000-0000-0000-000000000000"
# graph_client_id = "00000000-0000-0000-0000-000000000000"  # secret: graph_client_secret
# caldav_url = "https://caldav.client.example/"
# caldav_username = "checkins"  # secret: caldav_password

# Mail out: maildir | smtp | gmail | graph; mail in: maildir | imap | gmail | graph
# mail_transport = "smtp"
# mail_inbox = "imap"
# smtp_host = "smtp.client.example"
# smtp_username = "checkins@client.example"  # secret: smtp_password
# imap_host = "imap.client.example"
# imap_username = "checkins@client.example"  # secret: imap_password
# gmail_user = "checkins@client.example"
# graph_mailbox = "checkins@client.example"

# Its people's console sign-in at /console/sign-in?org={slug} (none set: passwords only);
# the client secrets are secrets: oidc_google_client_secret, oidc_microsoft_client_secret
# oidc_google_client_id = "1234-abc.apps.googleusercontent.com"
# oidc_google_hosted_domain = "client.example"
# oidc_microsoft_client_id = "00000000-0000-0000-0000-000000000000"
# oidc_microsoft_tenant = "00000000-0000-0000-0000-000000000000"

# Beside this file, these replace the shared ones for this organization when present:
# cadences/, pips/, roles/, privacy.toml (retention), delegates.toml, coaching.toml, and
# templates/ (file by file: templates/email/invite/subject.txt changes one subject).
"""


# The daily tasks of every organization: each run schedules the next day's (planning's
# run_planning, privacy's run_retention), so an organization only ever needs its first.
DAILY_TASKS = ("plan", "retention")


def start_daily_tasks(
    session: Session, organization_ids: Collection[int], now: dt.datetime
) -> None:
    """Schedule the first ``plan`` and ``retention`` tasks of each organization, due now.

    Keyed ``plan:<date>`` and ``retention:<date>`` (UTC), the keys the daily tasks give
    their successors, so an organization whose chain already runs gets nothing new: today's
    key is then taken (by yesterday's run), and the INSERT ... ON CONFLICT DO NOTHING skips
    it. Safe to call at any time and from any process: it is how a new organization gets
    planned (:func:`create_organization`, :func:`automation.services.loop.bootstrap`) and how
    the tick heals one that never got them. One statement for all of them."""
    if not organization_ids:
        return
    today = now.date().isoformat()
    rows = [
        {
            "organization_id": org,
            "kind": kind,
            "key": f"{kind}:{today}",
            "subject_id": org,
            "due_at": now,
            "state": TaskState.PENDING,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for org in sorted(set(organization_ids))
        for kind in DAILY_TASKS
    ]
    session.execute(
        dialect_insert(session, Task)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["organization_id", "key"])
    )


def create_organization(
    session: Session, base: Settings, slug: str, name: str, now: dt.datetime, actor: str
) -> CreatedOrganization:
    """The organizations row (through :func:`automation.people.ensure_organization`) and its
    folder with a commented ``settings.toml``; an existing file is never overwritten. The
    folder's creation is audited in the organization's log.

    Its first planning and retention are scheduled (:func:`start_daily_tasks`): the
    service's tick runs them, and they repeat daily, so a client is planned without any
    further command. People imported after today's plan ran are planned by tomorrow's."""
    from automation.people import ensure_organization

    folder = org_folder(base, slug)  # refuses a slug that cannot name a folder
    if not name.strip():
        raise OrganizationRefused("--name is empty: the organization's name is shown in its emails")
    existed = session.scalars(select(Organization.id).where(Organization.slug == slug)).first()
    org = ensure_organization(session, slug, name.strip(), now)
    start_daily_tasks(session, [org.id], now)
    settings_file = folder / SETTINGS_FILE
    folder_created = not settings_file.exists()
    if folder_created:
        folder.mkdir(parents=True, exist_ok=True)
        settings_file.write_text(starter_settings(slug, org.name, base), encoding="utf-8")
        audit.record(
            session,
            org.id,
            actor=actor,
            action="organization.folder_created",
            subject_kind="organization",
            subject_id=org.id,
            at=now,
            data={"folder": str(folder)},
        )
    return CreatedOrganization(
        id=org.id,
        slug=org.slug,
        name=org.name,
        created=existed is None,
        folder=folder,
        folder_created=folder_created,
    )
