"""Everything a service call needs, built once from the settings.

Actors run in worker processes that share nothing with the process that enqueued them, so
they find their runtime through :func:`current`, which builds it from the environment the
first time. Tests and the demo install their own (with a simulated clock) through
:func:`install`.

One runtime serves the deployment; :meth:`Runtime.tenant` derives from it the runtime of one
organization (scoped sessions, the organization's own settings, adapters and configuration).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, func, select
from sqlalchemy.orm import Session, sessionmaker

from automation import organizations
from automation.adapters.calendars import build_calendar
from automation.adapters.mail import build_inbox, build_sender
from automation.clock import Clock, SystemClock
from automation.config import (
    Delegates,
    load_cadences,
    load_coaching,
    load_delegates,
    load_roles,
)
from automation.db import make_engine, session_factory
from automation.domain.agenda import RoleExpectations
from automation.domain.cadence import Cadence
from automation.domain.coaching import CoachingRules
from automation.errors import ConfigError
from automation.models import Organization, OrganizationSecret
from automation.ports import CalendarProvider, InboxPage, InboxReader, MailSender
from automation.settings import Settings, load_settings
from automation.tenancy import scoped_factory

log = logging.getLogger("automation.runtime")


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]
    clock: Clock
    calendar: CalendarProvider
    sender: MailSender
    inbox: InboxReader
    cadences: dict[str, Cadence]
    # Manager's address -> delegates who may document their check-ins (config/delegates.toml).
    delegates: Delegates = field(default_factory=dict)
    # Role expectations by name (config/roles/*.toml) and the coaching prompts' rules
    # (config/coaching.toml; None: no prompts), for the agendas.
    roles: dict[str, RoleExpectations] = field(default_factory=dict)
    coaching: CoachingRules | None = None
    # How a newly created task reaches a worker; the broker module sets the real one.
    enqueue: Callable[[int], object] = field(default=lambda task_id: None)
    # Facts that never change for a runtime's life (an organization's id by slug).
    cache: dict[object, Any] = field(default_factory=dict)
    # The organization this runtime works for (see tenant()); None: the system scope.
    organization_id: int | None = None
    # The runtime a tenant was made from (see tenant() and reloaded()); None for a parent.
    parent: Runtime | None = field(default=None, repr=False, compare=False)

    def now(self):  # type: ignore[no-untyped-def]
        return self.clock.now()

    def tenant(self, organization_id: int) -> Runtime:
        """This runtime for one organization: its sessions are scoped to it
        (:mod:`automation.tenancy`), so whatever runs with it reads and writes only that
        organization's rows, and it runs with the organization's own configuration
        (:func:`automation.organizations.tenant_settings`: its ``config/orgs/<slug>/``
        folder and its secrets).

        What the tenant takes from this (parent) runtime, and what it builds:

        - **settings**: always the organization's (``organization`` is its slug, its name,
          what its ``settings.toml`` sets, its secrets; a client never gets the deployment's
          secrets).
        - **calendar and sender**: the parent's object itself when the organization's
          settings for that adapter are the parent's: every setting the adapter may read is
          equal (:func:`_same_inputs`; a setting not classified counts for every adapter, the
          safe default), or both use the embedded provider (local calendar files, the Maildir
          outbox) on the same folder. So an organization with no folder and no secrets (the
          single-organization case, and the tests, whose fakes replace the parent's adapters)
          keeps them. Otherwise built from the organization's settings.
        - **inbox**: the same rule for the deployment's own organization
          (``Settings.organization``). A client organization reads only an inbox of its own:
          where its inbox would be the deployment's (the same settings, or the Maildir) it
          gets :class:`NoInbox`, which takes nothing in.
        - **cadences, delegates, roles, coaching**: the parent's when the organization reads
          the parent's folders (nothing of its own in its folder but ``settings.toml``), else
          loaded from the organization's view of them.

        Built once per organization and kept. Rebuilt when the parent changed since (tests
        and the console replace settings, adapters or cadences on the runtime they hold: a
        tenant never acts on a stale copy), when the organization's folder changed (a stamp
        of its files' and folders' modification times: a console save, a hand edit of its
        ``settings.toml``), or when its row or its secrets changed (one small system-scope
        query per call: slug, name, and the number and latest ``updated_at`` of its
        secrets). Secrets are decrypted, in the organization's scope, only on a rebuild.

        It reads the database: on SQLite, call it before opening a transaction, not inside
        one (every transaction there takes the write lock).
        """
        if self.organization_id == organization_id:
            return self
        if self.organization_id is not None:
            raise ValueError(
                f"a runtime for organization {self.organization_id} cannot act for "
                f"organization {organization_id}"
            )
        key, shared = ("tenant", organization_id), self._shared()
        found = self._organization(organization_id)
        # Taken before the build: a change made while it builds is seen by the next call.
        folder = _folder_stamp(self.settings, found.slug) if found is not None else ()
        stamp = (shared, found, folder)
        built = self.cache.get(key)
        if built is not None and built[0] == stamp:
            return built[1]  # type: ignore[no-any-return]
        tenant = self._build_tenant(organization_id, found, built[1] if built else None)
        self.cache[key] = (stamp, tenant)
        return tenant

    def reloaded(self) -> Runtime:
        """This organization's runtime as its configuration is now: what :meth:`tenant`
        gives after a save into the organization's folder (the same object when nothing
        changed). A runtime that is not an organization's is itself."""
        if self.parent is None or self.organization_id is None:
            return self
        return self.parent.tenant(self.organization_id)

    def _shared(self) -> tuple[int, ...]:
        """The objects a tenant of this runtime derives from (by identity)."""
        return tuple(id(getattr(self, name)) for name in _SHARED)

    def _organization(self, organization_id: int) -> _Organization | None:
        """The organization's slug and name and a stamp of its secrets, in one system-scope
        read (this runtime is the parent: unscoped). None when there is no such row."""
        with self.engine.connect() as connection:
            row = connection.execute(_ORGANIZATION, {"organization_id": organization_id}).first()
        if row is None:
            return None
        return _Organization(row[0], row[1], int(row[2] or 0), row[3])

    def _build_tenant(
        self, organization_id: int, found: _Organization | None, previous: Runtime | None
    ) -> Runtime:
        base = self.settings
        factory = scoped_factory(self.engine, organization_id)
        settings = base
        if found is not None:
            secrets: dict[str, str] = {}
            if found.secrets:
                with factory() as session:
                    secrets = organizations.load_secrets(
                        session, organization_id, organizations.Keyring.from_env_if_set()
                    )
            settings = organizations.tenant_settings(base, found.slug, secrets, name=found.name)
        calendar = (
            self.calendar
            if _same_inputs("calendar", settings, base)
            else build_calendar(settings, self.clock)
        )
        sender = self.sender if _same_inputs("sender", settings, base) else build_sender(settings)
        if found is None or found.slug == base.organization:
            inbox = self.inbox if _same_inputs("inbox", settings, base) else build_inbox(settings)
        elif settings.mail_inbox == "maildir" or _same_inputs("inbox", settings, base):
            inbox = NoInbox()  # the deployment's inbox (or its Maildir): not this client's
        else:
            inbox = build_inbox(settings)
        if (settings.config_dir, settings.templates_dir) == (base.config_dir, base.templates_dir):
            cadences, cadence_stamp = self.cadences, self.cache.get(CADENCE_STAMP)
            delegates, roles, coaching = self.delegates, self.roles, self.coaching
        else:
            cadence_stamp = cadence_files_stamp(settings)
            try:
                cadences = {c.name: c for c in load_cadences(settings)}
            except ConfigError as exc:
                if previous is None:
                    raise
                # As current_cadences does: planning keeps the last good ones, and the next
                # plan reads the folder again (and says why it still does not load).
                log.error(
                    "cadence files of organization %s do not load; planning keeps the last "
                    "good ones until they are fixed:\n%s",
                    settings.organization,
                    exc,
                )
                cadences, cadence_stamp = previous.cadences, None
            delegates = load_delegates(settings)
            roles = load_roles(settings)
            coaching = load_coaching(settings)
        return replace(
            self,
            settings=settings,
            factory=factory,
            calendar=calendar,
            sender=sender,
            inbox=inbox,
            cadences=cadences,
            delegates=delegates,
            roles=roles,
            coaching=coaching,
            organization_id=organization_id,
            # Whatever the workers attach later is what the tenant uses.
            enqueue=lambda task_id: self.enqueue(task_id),
            # Its own facts; the stamp of the cadence files its cadences were loaded from,
            # so a tenant re-reads the files only when they change (current_cadences).
            cache={CADENCE_STAMP: cadence_stamp},
            parent=self,
        )


# What a tenant derives from its parent (a change to any of them rebuilds it); the rest
# (factory, cache, the organization, enqueue, which defers to the parent, and the parent
# itself) is its own.
_SHARED = tuple(
    f.name
    for f in fields(Runtime)
    if f.name not in ("factory", "cache", "organization_id", "enqueue", "parent")
)


_THEIRS = OrganizationSecret.organization_id == Organization.id
# What tenant() reads on each call (built once: building a statement costs more than running it).
_ORGANIZATION = select(
    Organization.slug,
    Organization.name,
    select(func.count(OrganizationSecret.id)).where(_THEIRS).scalar_subquery(),
    select(func.max(OrganizationSecret.updated_at)).where(_THEIRS).scalar_subquery(),
).where(Organization.id == bindparam("organization_id"))


@dataclass(frozen=True)
class _Organization:
    """What a tenant is built from, as read from the database (compared, to reuse it)."""

    slug: str
    name: str
    secrets: int  # how many it has
    secrets_updated_at: object  # the latest change among them; None without any


class NoInbox:
    """The inbox of a client organization that has none of its own. The configured inbox
    (and the Maildir) is the deployment's organization's: another organization must never
    take that mail in as its own. Mail for a client reaches it through the deployment's
    inbound path, whose signed reply addresses name it.

    Named as a Maildir is: a reader that keeps no cursor, so a poll with it stores nothing
    about it either (no mailbox state row) and ends at once."""

    name = "maildir"
    supports_idle = False

    def fetch(self, cursor: str | None, limit: int = 100) -> InboxPage:
        return InboxPage(messages=[], cursor=cursor)

    def ack(self, keys: Sequence[str]) -> None:
        return None


# --- which settings each adapter reads (Runtime.tenant keeps the parent's when they are equal)

# Read by no adapter: they shape planning, messages and branding, and the services read them
# from the runtime's settings at each use.
_NOT_ADAPTER_SETTINGS = frozenset(
    {
        "organization",
        "organization_name",
        "source",
        "config_dir",
        "templates_dir",
        "reply_domain",
        "default_timezone",
        "business_days",
        "holidays",
    }
)
_CALENDAR_ONLY = frozenset(
    {
        "calendar_provider",
        "calendar_domains",
        "calendar_poll_minutes",
        "google_api_endpoint",
        "google_batch_size",
        "google_channel_ttl_seconds",
        "graph_subscription_minutes",
    }
)
# The embedded providers read only the deployment's folders: the setting choosing the
# provider, its embedded values, and the folder (a Settings property) it reads.
_EMBEDDED = {
    "calendar": ("calendar_provider", ("local", "imip"), "calendars"),
    "sender": ("mail_transport", ("maildir",), "outbox"),
    "inbox": ("mail_inbox", ("maildir",), "inbox"),
}


def _mail_only(name: str) -> bool:
    return name.startswith(("mail_", "smtp_", "imap_", "gmail_")) or name == "graph_mailbox"


def _calendar_only(name: str) -> bool:
    return name in _CALENDAR_ONLY or name.startswith("caldav_")


def _reads(adapter: str, name: str) -> bool:
    """Whether ``adapter`` ("calendar", "sender", "inbox") may read setting ``name``. Only
    what is known not to be read is left out: a setting added later counts."""
    if name in _NOT_ADAPTER_SETTINGS:
        return False
    if adapter == "calendar":
        return not _mail_only(name)
    return not _calendar_only(name)


def _same_inputs(adapter: str, tenant: Settings, parent: Settings) -> bool:
    """Whether ``adapter`` built from ``tenant`` would be the one built from ``parent``:
    both use the embedded provider on the same folder, or every setting it reads is equal."""
    selector, embedded, folder = _EMBEDDED[adapter]
    chosen = getattr(tenant, selector)
    if (
        chosen in embedded
        and chosen == getattr(parent, selector)
        and getattr(tenant, folder) == getattr(parent, folder)
    ):
        return True
    return all(
        getattr(tenant, f.name) == getattr(parent, f.name)
        for f in fields(Settings)
        if _reads(adapter, f.name)
    )


def _folder_stamp(settings: Settings, slug: str) -> tuple[object, ...]:
    """A cheap stamp of organization ``slug``'s folder: each file's and folder's path,
    modification time and size (a save replaces a file, a hand edit changes its time), and
    when it has views, the times of the shared folders they merge (an entry added there
    appears in a view only when it is rebuilt). Empty when the slug cannot name a folder."""
    if not organizations.valid_slug(slug):
        return ()
    root = organizations.org_folder(settings, slug)
    found: list[tuple[str, int, int]] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in (".", *sorted(files)):
            path = os.path.join(folder, name)
            try:
                info = os.stat(path)
            except OSError:  # removed while listing
                continue
            found.append((path, info.st_mtime_ns, info.st_size))
    if not found:
        return ("absent",)
    top = {Path(os.path.relpath(path, root)).parts[:1] for path, _, _ in found}
    names = {parts[0] for parts in top if parts}
    if names - {organizations.SETTINGS_FILE, organizations.TEMPLATES_FOLDER}:
        found.append(_mtime(settings.config_dir))
    # Its templates are merged folder by folder with the shared ones (the view): a shared
    # folder it also has is watched too.
    own_templates = root / organizations.TEMPLATES_FOLDER
    for folder, dirs, _files in os.walk(own_templates):
        dirs.sort()
        found.append(_mtime(settings.templates_dir / os.path.relpath(folder, own_templates)))
    return tuple(found)


def _mtime(path: Path) -> tuple[str, int, int]:
    try:
        return (str(path), os.stat(path).st_mtime_ns, 0)
    except OSError:
        return (str(path), 0, 0)


def build_runtime(settings: Settings, clock: Clock | None = None) -> Runtime:
    engine = make_engine(settings.database)
    clock = clock or SystemClock()
    stamp = cadence_files_stamp(settings)
    runtime = Runtime(
        settings=settings,
        engine=engine,
        factory=session_factory(engine),
        clock=clock,
        calendar=build_calendar(settings, clock),
        sender=build_sender(settings),
        inbox=build_inbox(settings),
        cadences={c.name: c for c in load_cadences(settings)},
        delegates=load_delegates(settings),
        roles=load_roles(settings),
        coaching=load_coaching(settings),
    )
    runtime.cache[CADENCE_STAMP] = stamp
    return runtime


CADENCE_STAMP = "cadence-files"


def cadence_files_stamp(settings: Settings) -> tuple[tuple[str, int, int], ...]:
    """Name, modification time and size of each cadence file: changes when one is saved."""
    found = []
    for path in sorted((settings.config_dir / "cadences").glob("*.toml")):
        try:
            info = path.stat()
        except FileNotFoundError:  # removed while listing
            continue
        found.append((path.name, info.st_mtime_ns, info.st_size))
    return tuple(found)


def current_cadences(rt: Runtime) -> dict[str, Cadence]:
    """The cadences as the files are now. A long-running worker loaded them at start; when
    HR saves one (in the console, or by hand) the next plan reads the folder again, rather
    than writing its old copy back to the database. A folder that no longer loads keeps the
    last good cadences, and says why in the log."""
    stamp = cadence_files_stamp(rt.settings)
    if rt.cache.get(CADENCE_STAMP) != stamp:
        try:
            rt.cadences = {c.name: c for c in load_cadences(rt.settings)}
        except ConfigError as exc:
            log.error(
                "cadence files changed but do not load; planning keeps the last good "
                "ones until they are fixed:\n%s",
                exc,
            )
        rt.cache[CADENCE_STAMP] = stamp
    return rt.cadences


_lock = threading.Lock()
_current: Runtime | None = None
# Called on every runtime that current() builds; the workers package adds its enqueue hook.
on_build: list[Callable[[Runtime], object]] = []


def install(runtime: Runtime | None) -> None:
    global _current
    with _lock:
        _current = runtime


def current() -> Runtime:
    global _current
    with _lock:
        if _current is None:
            _current = build_runtime(load_settings())
            for hook in on_build:
                hook(_current)
        return _current
