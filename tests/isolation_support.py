"""The isolation suite's world (tests/test_isolation.py): two client organizations side by side
in one database, each with people, planned check-ins, a documented one (a record with an action
item), an overdue undocumented one with escalation steps and open acknowledgement requests, a
PIP with its reviews, prompts with signed reply addresses, a quarantined message, calendar
push channels and an HR admin's console account.

``acme`` is the deployment's own organization (``Settings.organization``: the console's sign-in
form, the inbox and the inbound webhooks serve it); ``beta`` is a second client organization,
added as ``automation org create`` would. Names and addresses differ in every visible part, so
a page or an export that shows one of the other organization's names or ``@beta.test`` /
``@acme.test`` addresses is caught by a plain substring test.

On PostgreSQL the world connects as an ordinary role (no superuser, no BYPASSRLS, owner of its
tables, as the service should run), so row-level security is in force under every test: a
superuser is never bound by policies, and would hide a hole the second wall should stop.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import email.utils
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Engine,
    Enum,
    Float,
    Integer,
    LargeBinary,
    Numeric,
    TypeDecorator,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url

from automation.clock import SimulatedClock
from automation.config import load_goals, load_pip_templates
from automation.db import transaction
from automation.models import (
    Acknowledgement,
    Base,
    CalendarSync,
    CheckinSeries,
    ConversationRecord,
    Escalation,
    InboundMessage,
    Occurrence,
    OrgScoped,
    OutboundMessage,
    Person,
    PipReview,
)
from automation.runtime import Runtime, build_runtime
from automation.services import accounts
from automation.settings import PROJECT_ROOT, Settings
from tests.conftest import POSTGRES_URL, START, require_service

PASSWORD = "correct horse battery staple"
APP_ROLE = "isolation_app"  # PostgreSQL: the ordinary role the world runs as


@dataclass(frozen=True)
class Cast:
    """Who is who in one organization (the same shape in both)."""

    slug: str
    name: str
    domain: str
    ceo: str
    hr: str
    boss: str
    documented: str  # their first check-in gets a record
    open: str  # their first check-in stays undocumented and escalates; they are on a PIP

    def email(self, who: str) -> str:
        return f"{who}@{self.domain}"

    def people_csv(self) -> str:
        e = self.email
        return (
            "email,name,timezone,manager_email,hr_partner_email\n"
            f"{e('ceo')},{self.ceo},America/New_York,,{e('hr')}\n"
            f"{e('hr')},{self.hr},Europe/London,{e('ceo')},{e('hr')}\n"
            f"{e('boss')},{self.boss},America/New_York,{e('ceo')},{e('hr')}\n"
            f"{e('doc')},{self.documented},Europe/Berlin,{e('boss')},{e('hr')}\n"
            f"{e('open')},{self.open},Asia/Tokyo,{e('boss')},{e('hr')}\n"
        )

    @property
    def names(self) -> tuple[str, ...]:
        return (self.ceo, self.hr, self.boss, self.documented, self.open)

    @property
    def marks(self) -> tuple[str, ...]:
        """What must never appear on the other organization's pages and exports."""
        return (f"@{self.domain}", *self.names)


ACME = Cast("acme", "Acme", "acme.test", "Cleo Chief", "Hal Hr", "Bea Boss", "Anita Acosta",
            "Kai Tanaka")  # fmt: skip
BETA = Cast("beta", "Beta Clinics", "beta.test", "Brita Birk", "Hugo Hartwig", "Bram Bolt",
            "Ada Alving", "Otto Ostrom")  # fmt: skip

GOALS = """[[goal]]
goal = "Answer customer tickets on time"
success_criteria = "95% answered within 2 business days, four weeks running"
owner = "employee"
due = "2026-04-30"
"""


@dataclass
class Org:
    """One organization's ids and identifiers, as the attacks use them."""

    cast: Cast
    id: int
    people: dict[str, int]  # local part (ceo, hr, boss, doc, open) -> person id
    documented_occurrence: int
    open_occurrence: int  # overdue, undocumented, with escalation steps and open acks
    future_occurrence: int  # not started yet (no follow-up, agenda maybe not sent)
    series: int  # the open check-in's series
    record: int  # the documented check-in's record
    followup_prompt: int  # outbound id of the documented check-in's follow-up
    open_prompt: int  # outbound id of the open check-in's follow-up
    pip: int
    review: int  # a PIP review (documentable by reply)
    quarantined: int  # inbound id
    google_sync: int
    google_channel: str
    google_secret: str
    graph_sync: int
    graph_subscription: str
    graph_secret: str
    admin: str  # the HR admin's console address
    pip_ack: int  # the PIP plan's acknowledgement request (the employee's)
    ackable: tuple[str, int]  # a queue subject with an escalation step awaiting acknowledgement

    def email(self, who: str) -> str:
        return self.cast.email(who)


@dataclass
class World:
    rt: Runtime
    clock: SimulatedClock
    settings: Settings
    folder: Path
    a: Org  # acme, the deployment's organization
    b: Org  # beta

    def org(self, slug: str) -> Org:
        return self.a if slug == self.a.cast.slug else self.b

    def other(self, org: Org) -> Org:
        return self.b if org is self.a else self.a


# --------------------------------------------------------------------------- databases


def postgres_url_as_app_role() -> Iterator[str]:
    """A fresh schema owned by nobody special, and a URL that connects as :data:`APP_ROLE`
    (an ordinary role: FORCE ROW LEVEL SECURITY binds it as the tables' owner)."""
    url = make_url(POSTGRES_URL)
    require_service("PostgreSQL", url.host or "localhost", url.port or 5432)
    schema = f"iso_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(
            text(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
                f"'{APP_ROLE}') THEN CREATE ROLE {APP_ROLE} NOLOGIN NOSUPERUSER NOBYPASSRLS; "
                "END IF; END $$"
            )
        )
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(text(f'GRANT USAGE, CREATE ON SCHEMA "{schema}" TO {APP_ROLE}'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}%20-crole%3D{APP_ROLE}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def make_settings(folder: Path, database_url: str) -> Settings:
    """The test settings, on copies of config/ and templates/ (the console may write them)."""
    shutil.copytree(PROJECT_ROOT / "config", folder / "config")
    shutil.copytree(PROJECT_ROOT / "templates", folder / "templates")
    return Settings(
        data_dir=folder / "data",
        database_url=database_url,
        organization=ACME.slug,
        organization_name=ACME.name,
        secret_key="test-secret",
        config_dir=folder / "config",
        templates_dir=folder / "templates",
        inbound_webhook_secret="inbound-webhook-secret",
    )


# --------------------------------------------------------------------------- mail


def reply(
    rt: Runtime,
    prompt: OutboundMessage,
    sender: str,
    body: str,
    *,
    to: str | None = None,
    in_reply_to: str | None = None,
) -> bytes:
    """A reply to ``prompt`` from ``sender``: to its Reply-To (the signed address) unless
    ``to`` says otherwise, threaded under it."""
    original = email.message_from_bytes(prompt.raw, policy=email.policy.default)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to or str(original["Reply-To"])
    msg["Subject"] = "Re: " + str(original["Subject"])
    msg["Date"] = email.utils.format_datetime(rt.now())
    msg["Message-ID"] = email.utils.make_msgid(domain="client.test")
    msg["In-Reply-To"] = in_reply_to or prompt.message_id
    msg.set_content(body)
    return msg.as_bytes()


def stranger_mail(rt: Runtime, to: str, subject: str, body: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Mallory <mallory@evil.test>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(rt.now())
    msg["Message-ID"] = email.utils.make_msgid(domain="evil.test")
    msg.set_content(body)
    return msg.as_bytes()


def reply_address(prompt: OutboundMessage) -> str:
    original = email.message_from_bytes(prompt.raw, policy=email.policy.default)
    return str(original["Reply-To"])


def ingest_into(rt: Runtime, organization_id: int, raw: bytes) -> InboundMessage:
    """Store ``raw`` as ``organization_id``'s mail (as its own inbox would: its tenant
    runtime) and run that one ingest task; the message as it ended."""
    from automation.services.inbound import store_inbound
    from automation.services.tasks import run_task

    stored = store_inbound(rt.tenant(organization_id), raw, "isolation-test")
    run_task(rt, stored.task_id)
    with rt.factory() as session:
        message = session.get(InboundMessage, stored.inbound_id)
        assert message is not None
        session.expunge(message)
        return message


# --------------------------------------------------------------------------- snapshots


def tenant_models() -> list[type]:
    """Every mapped class that belongs to an organization (from the registry: a model added
    later is in the list without anyone adding it here)."""
    return sorted(
        (m.class_ for m in Base.registry.mappers if issubclass(m.class_, OrgScoped)),
        key=lambda c: c.__name__,
    )


def snapshot(engine: Engine, organization_id: int) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of one organization, in every tenant table and its ``organizations`` row, as
    plain tuples (binary columns by length and hash): equal snapshots mean nothing of it was
    changed, added or removed. Read with plain SQL in the system scope."""
    import hashlib

    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            if table.name == "organizations":
                where = table.c.id == organization_id
            elif "organization_id" in table.c:
                where = table.c.organization_id == organization_id
            else:
                continue
            rows = []
            for row in conn.execute(select(table).where(where).order_by(*table.primary_key)):
                values = []
                for column, value in zip(table.columns, row, strict=True):
                    if isinstance(column.type, LargeBinary) and value is not None:
                        value = (len(value), hashlib.sha256(value).hexdigest())
                    values.append(repr(value))
                rows.append(tuple(values))
            out[table.name] = rows
    return out


def changes(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> dict[str, str]:
    """What differs between two snapshots, per table (empty: nothing)."""
    found = {}
    for name in sorted(set(before) | set(after)):
        old, new = set(before.get(name, [])), set(after.get(name, []))
        if old != new:
            found[name] = (
                f"{len(new - old)} row(s) new or changed, {len(old - new)} gone or changed"
            )
    return found


# --------------------------------------------------------------------------- building


def _advance(rt: Runtime, clock: SimulatedClock, until: dt.datetime) -> None:
    from automation.services.loop import run_due

    while clock.now() < until:
        clock.advance(min(dt.timedelta(hours=6), until - clock.now()))
        run_due(rt)


def _first_occurrence(rt: Runtime, org: int, employee: str) -> Occurrence:
    with rt.factory() as session:
        found = session.scalars(
            select(Occurrence)
            .join(CheckinSeries, CheckinSeries.id == Occurrence.series_id)
            .join(Person, Person.id == CheckinSeries.employee_id)
            .where(Occurrence.organization_id == org, Person.email == employee)
            .order_by(Occurrence.start_at)
        ).first()
        assert found is not None, employee
        return found


def _followup(rt: Runtime, occurrence_id: int) -> OutboundMessage:
    with rt.factory() as session:
        return session.scalars(
            select(OutboundMessage).where(
                OutboundMessage.kind == "followup", OutboundMessage.occurrence_id == occurrence_id
            )
        ).one()


def _start_pip(rt: Runtime, org: int, employee: str, folder: Path) -> int:
    from automation.services import pips

    goals = folder / f"goals-{org}.toml"
    goals.write_text(GOALS)
    with transaction(rt.factory) as session:
        pip = pips.start_pip_from_template(
            rt, session, org, employee, load_pip_templates(rt.settings)["30-day"],
            load_goals(goals),
        )  # fmt: skip
        return pip.id


def _add_sync(rt: Runtime, org: int, provider: str, calendar: str) -> tuple[int, str, str]:
    channel, secret = str(uuid.uuid4()), f"{provider}-secret-{uuid.uuid4().hex}"
    resource = f"res-{channel[:8]}" if provider == "google" else f"/users/{calendar}/events"
    now = rt.now()
    with transaction(rt.factory) as session:
        row = CalendarSync(
            organization_id=org, provider=provider, calendar=calendar, channel_id=channel,
            channel_secret=secret,
            channel_resource=resource,
            channel_expires_at=now + dt.timedelta(days=3), updated_at=now,
        )  # fmt: skip
        session.add(row)
        session.flush()
        return row.id, channel, secret


def build_world(folder: Path, database_url: str) -> World:
    from automation.people import ensure_organization, import_people_file
    from automation.services.loop import bootstrap, run_due
    from automation.services.tasks import create_task

    settings = make_settings(folder, database_url)
    clock = SimulatedClock(START)
    rt = build_runtime(settings, clock)
    ids: dict[str, int] = {}
    ids[ACME.slug] = bootstrap(rt)
    now = rt.now()
    with transaction(rt.factory) as session:
        ids[BETA.slug] = ensure_organization(session, BETA.slug, BETA.name, now).id
        create_task(session, ids[BETA.slug], "plan", f"plan:{now.date()}", ids[BETA.slug], now,
                    now)  # fmt: skip
        create_task(session, ids[BETA.slug], "retention", f"retention:{now.date()}",
                    ids[BETA.slug], now, now)  # fmt: skip
        for cast in (ACME, BETA):
            csv = folder / f"people-{cast.slug}.csv"
            csv.write_text(cast.people_csv())
            import_people_file(session, ids[cast.slug], csv, now)
    run_due(rt)
    pips_of = {c.slug: _start_pip(rt, ids[c.slug], c.email("open"), folder) for c in (ACME, BETA)}
    run_due(rt)

    # The documented check-in: its manager answers the follow-up by reply.
    firsts = {c.slug: _first_occurrence(rt, ids[c.slug], c.email("doc")) for c in (ACME, BETA)}
    _advance(rt, clock, max(o.end_at for o in firsts.values()) + dt.timedelta(hours=2))
    for cast in (ACME, BETA):
        prompt = _followup(rt, firsts[cast.slug].id)
        body = "1. Going well.\nRating: 4\nAction: the employee to send the plan by Friday\n"
        raw = reply(rt, prompt, cast.email("boss"), body)
        message = ingest_into(rt, ids[cast.slug], raw)
        assert message.state == "recorded", (cast.slug, message.quarantine_reason)
    # The open one goes overdue: reminders, escalations, acknowledgement requests.
    _advance(rt, clock, START + dt.timedelta(days=16))

    orgs = {}
    for cast in (ACME, BETA):
        org = ids[cast.slug]
        quarantined = ingest_into(
            rt, org, stranger_mail(rt, f"hr@{cast.domain}", f"Secret of {cast.name}",
                                   f"private words of {cast.slug}\n"),
        )  # fmt: skip
        assert quarantined.state == "quarantined"
        with rt.factory() as session:
            people = {
                p.email.split("@")[0]: p.id
                for p in session.scalars(select(Person).where(Person.organization_id == org))
            }
            record = session.scalars(
                select(ConversationRecord).where(
                    ConversationRecord.organization_id == org,
                    ConversationRecord.subject_id == firsts[cast.slug].id,
                )
            ).one()
            review = session.scalars(
                select(PipReview)
                .where(PipReview.pip_id == pips_of[cast.slug], PipReview.kind == "review")
                .order_by(PipReview.due_at)
            ).first()
            assert review is not None
            future = session.scalars(
                select(Occurrence)
                .where(Occurrence.organization_id == org, Occurrence.start_at > rt.now())
                .order_by(Occurrence.start_at)
            ).first()
            assert future is not None
            pip_ack = session.scalars(
                select(Acknowledgement.id).where(
                    Acknowledgement.subject_kind == "pip",
                    Acknowledgement.subject_id == pips_of[cast.slug],
                )
            ).one()
            ackable = session.execute(
                select(Escalation.subject_kind, Escalation.subject_id)
                .join(
                    Acknowledgement,
                    (Acknowledgement.organization_id == Escalation.organization_id)
                    & (Acknowledgement.subject_kind == "escalation")
                    & (Acknowledgement.subject_id == Escalation.id),
                )
                .where(
                    Escalation.organization_id == org,
                    Escalation.subject_kind.in_(["occurrence", "pip_review"]),
                    Acknowledgement.acknowledged_at.is_(None),
                )
                .order_by(Escalation.id)
            ).first()
            assert ackable is not None
        opened = _first_occurrence(rt, org, cast.email("open"))
        assert opened.documented_at is None and opened.end_at < rt.now()
        google = _add_sync(rt, org, "google", cast.email("boss"))
        graph = _add_sync(rt, org, "graph", cast.email("boss"))
        admin = cast.email("hr")
        with transaction(rt.factory) as session:
            accounts.create_account(
                session, org, email=admin, name=cast.hr, role="hr_admin", now=rt.now(),
                actor="test", password=PASSWORD,
            )  # fmt: skip
        orgs[cast.slug] = Org(
            cast=cast, id=org, people=people,
            documented_occurrence=firsts[cast.slug].id, open_occurrence=opened.id,
            future_occurrence=future.id, series=opened.series_id, record=record.id,
            followup_prompt=_followup(rt, firsts[cast.slug].id).id,
            open_prompt=_followup(rt, opened.id).id, pip=pips_of[cast.slug], review=review.id,
            quarantined=quarantined.id, google_sync=google[0], google_channel=google[1],
            google_secret=google[2], graph_sync=graph[0], graph_subscription=graph[1],
            graph_secret=graph[2], admin=admin, pip_ack=pip_ack,
            ackable=(ackable[0], ackable[1]),
        )  # fmt: skip
    return World(rt, clock, settings, folder, orgs[ACME.slug], orgs[BETA.slug])


def outbound(rt: Runtime, outbound_id: int) -> OutboundMessage:
    with rt.factory() as session:
        found = session.get(OutboundMessage, outbound_id)
        assert found is not None
        session.expunge(found)
        return found


def count(rt: Runtime, model: type, organization_id: int, *where: Any) -> int:
    with rt.factory() as session:
        query = (
            select(func.count())
            .select_from(model)
            .where(
                model.organization_id == organization_id,  # type: ignore[attr-defined]
                *where,
            )
        )
        return session.scalar(query) or 0


# --------------------------------------------------------------------------- every table


def sample_value(column: Any, organization_id: int, now: dt.datetime) -> Any:
    """A value a column accepts, for a row made only to be hidden (unique strings)."""
    kind = column.type
    if isinstance(kind, TypeDecorator):
        kind = kind.impl_instance
    if isinstance(kind, DateTime):
        return now
    if isinstance(kind, Date):
        return now.date()
    if isinstance(kind, Boolean):
        return False
    if isinstance(kind, Enum):
        return kind.enums[0]
    if isinstance(kind, Integer):
        return 1
    if isinstance(kind, Float | Numeric):
        return 0
    if isinstance(kind, LargeBinary):
        return b"isolation"
    if isinstance(kind, JSON):
        return {}
    value = f"{column.name}-{organization_id}-{uuid.uuid4().hex[:12]}"
    length = getattr(kind, "length", None)
    return value[:length] if length else value


def row_values(
    table: Any,
    organization_id: int,
    ids: dict[str, int],
    now: dt.datetime,
    *,
    other_organization: int | None = None,
) -> dict[str, Any]:
    """Values for a new row of ``organization_id`` in ``table``: references to its rows in
    ``ids`` (table name -> id), a sample value in every other column. A reference to an
    organization other than the row's own (a grant's client) names ``other_organization``."""
    references: dict[str, Any] = {}
    for fk in table.foreign_key_constraints:
        target = fk.referred_table.name
        for column in fk.columns:
            if column.name == "organization_id":
                continue
            if target == "organizations":
                references[column.name] = other_organization or organization_id
            elif target == table.name:
                references[column.name] = None
            else:
                references[column.name] = ids[target]
    values: dict[str, Any] = {"organization_id": organization_id}
    for column in table.columns:
        if column.primary_key or column.name == "organization_id":
            continue
        if column.name in references:
            values[column.name] = references[column.name]
        else:
            values[column.name] = sample_value(column, organization_id, now)
    return values


def fill_every_table(session: Any, organization_id: int, now: dt.datetime) -> dict[str, int]:
    """One row of ``organization_id`` in every tenant table that has none yet (parents first,
    references to its own rows), so that a scope test covers every model, the ones added
    later included. Returns table name -> the id of one row of the organization there."""
    by_table = {m.local_table.name: m.class_ for m in Base.registry.mappers}
    ids: dict[str, int] = {}
    for table in Base.metadata.sorted_tables:
        if "organization_id" not in table.c:
            continue
        existing = session.execute(
            select(table.c.id).where(table.c.organization_id == organization_id).limit(1)
        ).scalar()
        if existing is not None:
            ids[table.name] = existing
            continue
        row = by_table[table.name](**row_values(table, organization_id, ids, now))
        session.add(row)
        session.flush()
        ids[table.name] = row.id
    return ids
