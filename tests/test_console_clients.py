"""The consultant's view (fractional HR, issue 10): one overdue queue across the client
organizations a consultant is granted, the cross-client summary and each client's report,
acting in a client's own organization, and nothing of one client shown to another; on SQLite
and PostgreSQL.

The world: ``acme`` is the deployment's own organization (the console signs in there) and
stands for the consulting firm, where the consultant's account lives; ``alpha`` and ``beta``
are two client organizations, each with its people, check-ins planned and held, gone overdue
and escalated (beta also has a PIP). Their people's names differ in every part, so a page
showing one of the other client's names is caught by a substring test. Beta's name carries
HTML, which every page must escape.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import email.utils
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from automation import audit
from automation.clock import SimulatedClock
from automation.config import load_goals, load_pip_templates
from automation.db import transaction
from automation.models import (
    Acknowledgement,
    AuditEntry,
    CheckinSeries,
    ConsoleAccount,
    ConsoleGrant,
    InboundMessage,
    Occurrence,
    OutboundMessage,
    Person,
    Reassignment,
)
from automation.people import ensure_organization, import_people_file
from automation.runtime import Runtime, build_runtime
from automation.services import accounts, escalation, pips
from automation.services.inbound import store_inbound
from automation.services.loop import bootstrap, run_due
from automation.services.report import consistency_report, format_number
from automation.services.tasks import create_task, run_task
from automation.web import create_app
from tests.conftest import START
from tests.console_support import Console, csrf_of
from tests.test_cli import cli_env, run, run_json

CONSULTANT = "pat@firm.test"


@dataclass(frozen=True)
class Client:
    slug: str
    name: str
    domain: str
    names: tuple[str, str, str, str]  # ceo, hr, boss, ana

    def people_csv(self) -> str:
        d = self.domain
        ceo, hr, boss, ana = self.names
        return (
            "email,name,timezone,manager_email,hr_partner_email\n"
            f"ceo@{d},{ceo},America/New_York,,hr@{d}\n"
            f"hr@{d},{hr},Europe/London,ceo@{d},hr@{d}\n"
            f"boss@{d},{boss},America/New_York,ceo@{d},hr@{d}\n"
            f"ana@{d},{ana},Europe/Berlin,boss@{d},hr@{d}\n"
        )

    @property
    def marks(self) -> tuple[str, ...]:
        """What must never appear on a page about another organization."""
        return (f"@{self.domain}", *self.names)


ALPHA = Client("alpha", "Alpha Corp", "alpha.test",
               ("Cora Anders", "Hana Aalto", "Bela Arkwright", "Ana Alpine"))  # fmt: skip
BETA = Client("beta", "Beta & <b>Sons</b>", "beta.test",
              ("Cyd Brennan", "Hugo Bramble", "Bram Bolt", "Otto Ostrom"))  # fmt: skip
ESCAPED_BETA = html.escape(BETA.name, quote=False)  # Beta &amp; &lt;b&gt;Sons&lt;/b&gt;

GOALS = """[[goal]]
goal = "Answer customer tickets on time"
success_criteria = "95% answered within 2 business days, four weeks running"
owner = "employee"
due = "2026-04-30"
"""


@dataclass
class World:
    rt: Runtime
    clock: SimulatedClock
    client: TestClient
    firm: int  # acme: the consultant's own organization
    ids: dict[str, int]  # client slug -> organization id

    def sign_in(self, email: str = CONSULTANT, role: str = "consultant") -> str:
        """An account in the firm, signed in; returns the session's CSRF token."""
        return Console(self.rt, self.client, self.firm).sign_in(email, role)

    def account(self, email: str = CONSULTANT) -> ConsoleAccount:
        with self.rt.factory() as session:
            found = session.scalars(
                select(ConsoleAccount).where(ConsoleAccount.email == email)
            ).one()
            session.expunge(found)
            return found

    def grant(self, *clients: Client, email: str = CONSULTANT) -> None:
        with transaction(self.rt.factory) as session:
            account = session.scalars(
                select(ConsoleAccount).where(ConsoleAccount.email == email)
            ).one()
            for c in clients:
                accounts.grant(session, account, self.ids[c.slug], self.rt.now(), "test")

    def revoke(self, c: Client, email: str = CONSULTANT) -> bool:
        with transaction(self.rt.factory) as session:
            account = session.scalars(
                select(ConsoleAccount).where(ConsoleAccount.email == email)
            ).one()
            return accounts.revoke(session, account, self.ids[c.slug], self.rt.now(), "test")

    def first_checkin(self, c: Client, employee: str = "ana") -> Occurrence:
        return first_checkin(self.rt, c, employee)

    def queue(self, c: Client) -> escalation.Queue:
        """The client's overdue queue as its own organization sees it (in its scope)."""
        org = self.ids[c.slug]
        scoped = self.rt.tenant(org)
        with transaction(scoped.factory) as session:
            return escalation.overdue_queue(session, org, scoped.now())

    def audits(self, org: int, action: str) -> list[AuditEntry]:
        with self.rt.factory() as session:
            return list(
                session.scalars(
                    select(AuditEntry)
                    .where(AuditEntry.organization_id == org, AuditEntry.action == action)
                    .order_by(AuditEntry.seq)
                )
            )


def first_checkin(rt: Runtime, c: Client, employee: str = "ana") -> Occurrence:
    with rt.factory() as session:
        found = session.scalars(
            select(Occurrence)
            .join(CheckinSeries, CheckinSeries.id == Occurrence.series_id)
            .join(Person, Person.id == CheckinSeries.employee_id)
            .where(Person.email == f"{employee}@{c.domain}")
            .order_by(Occurrence.start_at)
        ).first()
        assert found is not None
        return found


def _advance(rt: Runtime, clock: SimulatedClock, until: dt.datetime) -> None:
    while clock.now() < until:
        clock.advance(min(dt.timedelta(hours=12), until - clock.now()))
        run_due(rt)


def _document(rt: Runtime, org: int, occurrence: Occurrence, manager: str) -> None:
    """The manager answers the check-in's follow-up; the reply is stored as the client's own
    mail (in its scope) and ingested: the check-in is documented."""
    with rt.factory() as session:
        prompt = session.scalars(
            select(OutboundMessage).where(
                OutboundMessage.kind == "followup", OutboundMessage.occurrence_id == occurrence.id
            )
        ).one()
    original = email.message_from_bytes(prompt.raw, policy=email.policy.default)
    msg = EmailMessage()
    msg["From"] = manager
    msg["To"] = str(original["Reply-To"])
    msg["Subject"] = "Re: " + str(original["Subject"])
    msg["Date"] = email.utils.format_datetime(rt.now())
    msg["Message-ID"] = email.utils.make_msgid(domain="client.test")
    msg["In-Reply-To"] = prompt.message_id
    msg.set_content("1. Going well.\nRating: 4\n")
    stored = store_inbound(rt.tenant(org), msg.as_bytes(), "test")
    run_task(rt, stored.task_id)
    with rt.factory() as session:
        assert session.get(InboundMessage, stored.inbound_id).state == "recorded"  # type: ignore[union-attr]


@pytest.fixture
def world(rt: Runtime, clock: SimulatedClock, tmp_path: Path) -> Iterator[World]:
    firm = bootstrap(rt)  # acme, the configured organization: the consulting firm
    now = rt.now()
    ids: dict[str, int] = {}
    with transaction(rt.factory) as session:
        for c in (ALPHA, BETA):
            org = ensure_organization(session, c.slug, c.name, now).id
            ids[c.slug] = org
            create_task(session, org, "plan", f"plan:{now.date()}", org, now, now)
            csv = tmp_path / f"people-{c.slug}.csv"
            csv.write_text(c.people_csv())
            import_people_file(session, org, csv, now)
    run_due(rt)
    goals = tmp_path / "goals.toml"
    goals.write_text(GOALS)
    with transaction(rt.factory) as session:
        pips.start_pip_from_template(
            rt, session, ids["beta"], "ana@beta.test", load_pip_templates(rt.settings)["30-day"],
            load_goals(goals),
        )  # fmt: skip
    # Alpha's first check-in of Ana is documented (a documentation delay to report); the
    # others go past their ladders: reminders, escalations to the HR partners, open
    # acknowledgement requests, in both clients.
    documented = first_checkin(rt, ALPHA)
    _advance(rt, clock, documented.end_at + dt.timedelta(hours=2))
    _document(rt, ids["alpha"], documented, "Bela Arkwright <boss@alpha.test>")
    _advance(rt, clock, START + dt.timedelta(days=16))
    with TestClient(create_app(rt)) as client:
        yield World(rt, clock, client, firm, ids)


ROW = re.compile(
    r'<tr id="(?P<slug>[a-z0-9-]+)--(?P<kind>occurrence|pip_review|acknowledgement)-(?P<id>\d+)">'
    r"(?P<body>.*?)</tr>",
    re.S,
)


def queue_rows(page: str) -> list[re.Match[str]]:
    return list(ROW.finditer(page))


def cells(row: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)]


def test_a_consultant_sees_both_clients_in_one_queue_labelled_by_client(world: World) -> None:
    world.sign_in()
    world.grant(ALPHA, BETA)
    page = world.client.get("/console/clients/queue")
    assert page.status_code == 200
    rows = queue_rows(page.text)
    # Each client's part is exactly its own overdue queue, computed in its own scope.
    for c in (ALPHA, BETA):
        expected = {(item.kind, item.id) for item in world.queue(c).items}
        assert expected, c.slug
        assert {(r["kind"], int(r["id"])) for r in rows if r["slug"] == c.slug} == expected
    assert {r["slug"] for r in rows} == {"alpha", "beta"}
    # Labelled with the client (escaped), and a row names only its own client's people.
    for r in rows:
        mine, other = (ALPHA, BETA) if r["slug"] == "alpha" else (BETA, ALPHA)
        label = "Alpha Corp" if mine is ALPHA else ESCAPED_BETA
        link = f'<td class="client"><a href="/console/clients/{mine.slug}/report">{label}</a>'
        assert link in r["body"]
        assert not any(mark in r["body"] for mark in other.marks), r["body"]
        for form in re.findall(r'action="([^"]+)"', r["body"]):
            assert form.startswith(f"/console/clients/{mine.slug}/queue/")
        # The reassign picker offers only the row's own client's people.
        for option in re.findall(r'<option value="\d+">([^<]*)&lt;', r["body"]):
            assert option.strip() in mine.names
    # Most overdue first, across clients.
    days = [int(re.search(r"<strong>(\d+) days?</strong>", r["body"])[1]) for r in rows]  # type: ignore[index]
    assert days == sorted(days, reverse=True)
    assert "<b>Sons</b>" not in page.text and ESCAPED_BETA in page.text
    # One client's part of it.
    only = world.client.get("/console/clients/queue", params={"client": "alpha"})
    assert {r["slug"] for r in queue_rows(only.text)} == {"alpha"}
    assert not any(mark in only.text for mark in BETA.marks)
    # The consultant's navigation has Clients.
    assert '<a href="/console/clients"' in page.text


def test_the_summary_shows_each_clients_figures_from_its_own_report(world: World) -> None:
    world.sign_in()
    world.grant(ALPHA, BETA)
    page = world.client.get("/console/clients")
    assert page.status_code == 200
    assert "<b>Sons</b>" not in page.text and ESCAPED_BETA in page.text
    for c in (ALPHA, BETA):
        org = world.ids[c.slug]
        scoped = world.rt.tenant(org)
        with transaction(scoped.factory) as session:
            f = consistency_report(session, org, as_of=scoped.now()).org
        match = re.search(rf'<tr id="client-{c.slug}">(.*?)</tr>', page.text, re.S)
        assert match, page.text
        assert cells(match[1]) == [
            html.escape(c.name, quote=False), str(f.due),
            format_number(f.completion_pct, "%"), format_number(f.documented_pct, "%"),
            format_number(f.delay_median_hours, "h"), format_number(f.delay_p90_hours, "h"),
            str(f.overdue_checkins), str(f.overdue_pip_reviews),
            str(f.pip_states.get("active", 0)), "queue",
        ]  # fmt: skip
        assert f.due > 0 and f.overdue_checkins > 0
        assert (f.delay_median_hours is not None) is (c is ALPHA)  # alpha documented one
        assert f.pip_states.get("active", 0) == (1 if c is BETA else 0)
        # Figures only: none of the clients' people are named on the summary.
        assert not any(name in page.text for name in c.names)
    # A period that cannot be used says why.
    bad = world.client.get("/console/clients", params={"from": "2026-13-01"})
    assert bad.status_code == 400 and "is not a date" in bad.text


def test_a_clients_report_is_its_own(world: World) -> None:
    world.sign_in()
    world.grant(ALPHA, BETA)
    page = world.client.get("/console/clients/beta/report", params={"by": "team"})
    assert page.status_code == 200
    assert f"Consistency report: {ESCAPED_BETA}" in page.text and "<b>Sons</b>" not in page.text
    assert "Bram Bolt" in page.text  # beta's manager's row
    assert not any(mark in page.text for mark in ALPHA.marks)
    assert 'href="/console/clients/beta/report.csv?by=team"' in page.text
    csv = world.client.get("/console/clients/beta/report.csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert "Bram Bolt" in csv.text and not any(mark in csv.text for mark in ALPHA.marks)
    alpha = world.client.get("/console/clients/alpha/report")
    assert "Bela Arkwright" in alpha.text
    assert not any(mark in alpha.text for mark in BETA.marks)


def _acknowledgeable(world: World, page: str, c: Client) -> int:
    """The id of a check-in of ``c`` whose row offers Acknowledge."""
    for r in queue_rows(page):
        if r["slug"] == c.slug and r["kind"] == "occurrence" and "/queue/acknowledge" in r["body"]:
            return int(r["id"])
    raise AssertionError(f"no acknowledgeable check-in of {c.slug}")


def open_acks(world: World, org: int) -> int:
    with world.rt.factory() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(Acknowledgement)
                .where(
                    Acknowledgement.organization_id == org,
                    Acknowledgement.acknowledged_at.is_(None),
                )
            )
            or 0
        )


def test_acknowledging_a_client_b_item_writes_bs_audit_log_not_as(world: World) -> None:
    csrf = world.sign_in()
    world.grant(ALPHA, BETA)
    alpha, beta = world.ids["alpha"], world.ids["beta"]
    page = world.client.get("/console/clients/queue").text
    item = _acknowledgeable(world, page, BETA)
    before = {org: open_acks(world, org) for org in (alpha, beta)}
    # Beta's item under alpha's address: alpha's scope does not have it.
    wrong = world.client.post(
        "/console/clients/alpha/queue/acknowledge",
        data={"csrf": csrf, "kind": "occurrence", "id": str(item)},
    )
    assert wrong.status_code == 404
    done = world.client.post(
        "/console/clients/beta/queue/acknowledge",
        data={"csrf": csrf, "kind": "occurrence", "id": str(item), "note": "On it <today>"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/console/clients/queue?notice=clients-acknowledged"
    (entry,) = world.audits(beta, "escalation.acknowledged")
    assert entry.actor == f"console:{CONSULTANT}"
    assert (entry.subject_kind, entry.subject_id) == ("occurrence", item)
    for org in (alpha, world.firm):
        assert world.audits(org, "escalation.acknowledged") == []
    assert open_acks(world, alpha) == before[alpha]
    assert open_acks(world, beta) == before[beta] - len(entry.data["acknowledgement_ids"])
    with world.rt.factory() as session:
        closed = session.scalars(
            select(Acknowledgement).where(Acknowledgement.id.in_(entry.data["acknowledgement_ids"]))
        ).all()
    assert closed and all(a.comment == "On it <today>" for a in closed)
    after = world.client.get(done.headers["location"]).text
    assert "Acknowledged in the client&#39;s organization" in after
    for org in (alpha, beta, world.firm):
        with world.rt.factory() as session:
            assert audit.verify(session, org).intact


def test_reassigning_a_clients_check_in_stays_in_that_client(world: World) -> None:
    csrf = world.sign_in()
    world.grant(ALPHA, BETA)
    alpha, beta = world.ids["alpha"], world.ids["beta"]
    occurrence = world.first_checkin(ALPHA, "boss")  # Bela's, with Cora; undocumented
    with world.rt.factory() as session:
        hana = session.scalars(select(Person).where(Person.email == "hr@alpha.test")).one()
        cyd = session.scalars(select(Person).where(Person.email == "ceo@beta.test")).one()
    # Someone of the other client is not a person of alpha's.
    refused = world.client.post(
        "/console/clients/alpha/queue/reassign",
        data={"csrf": csrf, "kind": "occurrence", "id": str(occurrence.id), "person": str(cyd.id)},
    )
    assert refused.status_code == 400 and "active person of the organization" in refused.text
    moved = world.client.post(
        "/console/clients/alpha/queue/reassign",
        data={"csrf": csrf, "kind": "occurrence", "id": str(occurrence.id),
              "person": str(hana.id), "reason": "Cora is away", "client": "alpha"},
        follow_redirects=False,
    )  # fmt: skip
    assert moved.status_code == 303
    assert moved.headers["location"] == (
        "/console/clients/queue?notice=clients-reassigned&client=alpha"
    )
    with world.rt.factory() as session:
        (row,) = session.scalars(select(Reassignment)).all()
    assert (row.organization_id, row.person_id, row.by) == (alpha, hana.id, f"console:{CONSULTANT}")
    (entry,) = world.audits(alpha, "escalation.reassigned")
    assert entry.actor == f"console:{CONSULTANT}" and entry.data["to"] == "hr@alpha.test"
    assert world.audits(beta, "escalation.reassigned") == []


def test_a_consultant_granted_only_a_never_reaches_b(world: World) -> None:
    csrf = world.sign_in()
    world.grant(ALPHA)
    beta = world.ids["beta"]
    item = world.first_checkin(BETA)
    queue = world.client.get("/console/clients/queue")
    assert {r["slug"] for r in queue_rows(queue.text)} == {"alpha"}
    summary = world.client.get("/console/clients")
    for page in (queue.text, summary.text):
        assert "Sons" not in page and not any(mark in page for mark in BETA.marks)
    not_found = world.client.get("/console/clients/nowhere/report")
    assert not_found.status_code == 404
    for path in ("/console/clients/beta/report", "/console/clients/beta/report.csv"):
        answer = world.client.get(path)
        assert answer.status_code == 404 and answer.text == not_found.text  # nothing revealed
    assert world.client.get("/console/clients/queue", params={"client": "beta"}).status_code == 404
    before = open_acks(world, beta)
    for action, extra in (("acknowledge", {}), ("reassign", {"person": "1"})):
        answer = world.client.post(
            f"/console/clients/beta/queue/{action}",
            data={"csrf": csrf, "kind": "occurrence", "id": str(item.id), **extra},
        )
        assert answer.status_code == 404 and "Sons" not in answer.text
    assert open_acks(world, beta) == before
    assert world.audits(beta, "escalation.acknowledged") == []
    with world.rt.factory() as session:
        assert session.scalar(select(func.count()).select_from(Reassignment)) == 0
    # Their own organization's pages (an HR partner's) show the firm's rows, no client's.
    for path in ("/console/", "/console/people", "/console/queue", "/console/report"):
        own = world.client.get(path)
        assert own.status_code == 200, path
        assert not any(mark in own.text for mark in ALPHA.marks + BETA.marks), path


def test_revoking_a_grant_removes_access_at_once(world: World) -> None:
    world.sign_in()
    world.grant(ALPHA, BETA)
    assert world.client.get("/console/clients/beta/report").status_code == 200
    assert world.revoke(BETA) is True
    assert world.revoke(BETA) is False  # nothing left to revoke
    # The same session, the next request.
    assert world.client.get("/console/clients/beta/report").status_code == 404
    queue = world.client.get("/console/clients/queue").text
    assert {r["slug"] for r in queue_rows(queue)} == {"alpha"}
    assert not any(mark in queue for mark in BETA.marks)
    # Both organizations' logs say who was granted and revoked what.
    account = world.account()
    for action in ("console.access_granted", "console.access_revoked"):
        (own,) = [e for e in world.audits(world.firm, action) if e.data["organization"] == "beta"]
        assert (own.subject_kind, own.subject_id, own.actor) == (
            "console_account", account.id, "test",
        )  # fmt: skip
        (theirs,) = world.audits(world.ids["beta"], action)
        assert theirs.data == {"email": CONSULTANT, "account_organization": "acme"}
    assert world.audits(world.ids["alpha"], "console.access_revoked") == []


def test_an_hr_admin_of_a_client_gets_403_and_never_sees_the_other(world: World) -> None:
    alpha = world.ids["alpha"]
    world.sign_in()
    world.grant(ALPHA, BETA)  # the consultant's grants change nothing for alpha's own HR
    # Alpha's own console: the deployment configured for alpha.
    own = build_runtime(world.rt.settings.with_(organization="alpha"), world.clock)
    try:
        with TestClient(create_app(own)) as client:
            Console(own, client, alpha).sign_in("admin@alpha.test", role="hr_admin")
            clients_pages = (
                "/console/clients",
                "/console/clients/queue",
                "/console/clients/beta/report",
                "/console/clients/alpha/report",
            )
            for path in clients_pages:
                refused = client.get(path)
                assert refused.status_code == 403, path
                assert "fractional HR consultants" in refused.text
                assert "Sons" not in refused.text
            home = client.get("/console/")
            assert 'href="/console/clients"' not in home.text  # no Clients in their navigation
            for path in ("/console/", "/console/people", "/console/queue", "/console/report",
                         "/console/calendar", "/console/quarantine"):  # fmt: skip
                page = client.get(path)
                assert page.status_code == 200, path
                assert not any(mark in page.text for mark in BETA.marks), path
            assert "Bela Arkwright" in client.get("/console/queue").text  # alpha's own
            # A consultant's change cannot be posted here either.
            csrf = csrf_of(home.text)
            item = world.first_checkin(BETA)
            posted = client.post(
                "/console/clients/beta/queue/acknowledge",
                data={"csrf": csrf, "kind": "occurrence", "id": str(item.id)},
            )
            assert posted.status_code == 403
    finally:
        own.engine.dispose()
    assert world.audits(world.ids["beta"], "escalation.acknowledged") == []


def test_a_forged_or_missing_csrf_token_changes_nothing(world: World) -> None:
    world.sign_in()
    world.grant(ALPHA, BETA)
    beta = world.ids["beta"]
    item = _acknowledgeable(world, world.client.get("/console/clients/queue").text, BETA)
    before = open_acks(world, beta)
    other = world.first_checkin(ALPHA, "boss")
    for token in ({"csrf": "forged"}, {}):
        ack = world.client.post(
            "/console/clients/beta/queue/acknowledge",
            data={**token, "kind": "occurrence", "id": str(item)},
        )
        assert ack.status_code == 403 and "form expired" in ack.text
        moved = world.client.post(
            "/console/clients/alpha/queue/reassign",
            data={**token, "kind": "occurrence", "id": str(other.id), "person": "1"},
        )
        assert moved.status_code == 403
    assert open_acks(world, beta) == before
    assert world.audits(beta, "escalation.acknowledged") == []
    with world.rt.factory() as session:
        assert session.scalar(select(func.count()).select_from(Reassignment)) == 0


def test_only_consultants_are_granted_and_grants_are_their_organizations(world: World) -> None:
    world.sign_in("hr@firm.test", role="hr_partner")
    with (
        pytest.raises(accounts.AccountError, match="only a consultant"),
        transaction(world.rt.factory) as session,
    ):
        account = session.scalars(
            select(ConsoleAccount).where(ConsoleAccount.email == "hr@firm.test")
        ).one()
        accounts.grant(session, account, world.ids["beta"], world.rt.now(), "test")
    assert world.client.get("/console/clients").status_code == 403
    world.sign_in()
    world.grant(BETA)
    world.grant(BETA)  # again: nothing new
    with world.rt.factory() as session:
        assert session.scalar(select(func.count()).select_from(ConsoleGrant)) == 1
        account = session.scalars(
            select(ConsoleAccount).where(ConsoleAccount.email == CONSULTANT)
        ).one()
        assert [o.slug for o in accounts.granted_organizations(session, account)] == ["beta"]
    assert len(world.audits(world.firm, "console.access_granted")) == 1
    # The grant belongs to the firm: beta's scope does not see it, the firm's does.
    with transaction(world.rt.tenant(world.ids["beta"]).factory) as session:
        assert session.scalar(select(func.count()).select_from(ConsoleGrant)) == 0
        with pytest.raises(accounts.AccountError, match="system scope"):
            accounts.granted_organizations(session, account)
    with transaction(world.rt.tenant(world.firm).factory) as session:
        assert session.scalar(select(func.count()).select_from(ConsoleGrant)) == 1
    if world.rt.engine.dialect.name == "postgresql":
        with world.rt.engine.connect() as conn:
            enabled, forced, policies = conn.execute(
                text(
                    "SELECT c.relrowsecurity, c.relforcerowsecurity, "
                    "(SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) "
                    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relname = 'console_grants'"
                )
            ).one()
        assert enabled and forced and policies == 1


def test_grant_revoke_and_list_from_the_command_line(
    rt: Runtime,
    settings,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    firm = bootstrap(rt)
    with transaction(rt.factory) as session:
        beta = ensure_organization(session, "beta", "Beta", rt.now()).id
    cli_env(monkeypatch, settings)
    made = run_json(capsys, "console", "account", "add", CONSULTANT, "--role", "consultant",
                    "--no-password")  # fmt: skip
    assert made["role"] == "consultant"
    granted = run_json(capsys, "console", "account", "grant", CONSULTANT, "--org", "beta")
    assert granted == {"email": CONSULTANT, "organization": "beta", "granted": True,
                       "changed": True, "clients": ["beta"]}  # fmt: skip
    again = run_json(capsys, "console", "account", "grant", CONSULTANT.upper(), "--org", "beta")
    assert again["changed"] is False and again["clients"] == ["beta"]
    (listed,) = run_json(capsys, "console", "account", "list")
    assert listed["clients"] == ["beta"]
    code, out, _ = run(capsys, "console", "account", "list")
    header, line = out.splitlines()
    assert header.split()[-1] == "clients" and line.split()[-1] == "beta"
    code, _, err = run(capsys, "console", "account", "grant", CONSULTANT, "--org", "nowhere")
    assert code == 65 and "no organization 'nowhere'" in err and "beta" in err
    run_json(capsys, "console", "account", "add", "hr@firm.test", "--role", "hr_partner",
             "--no-password")  # fmt: skip
    code, _, err = run(capsys, "console", "account", "grant", "hr@firm.test", "--org", "beta")
    assert code == 65 and "only a consultant" in err
    code, out, _ = run(capsys, "console", "account", "revoke", CONSULTANT, "--org", "beta")
    assert code == 0 and out == f"revoked {CONSULTANT}'s access to beta\n"
    code, out, _ = run(capsys, "console", "account", "revoke", CONSULTANT, "--org", "beta")
    assert code == 0 and "nothing to revoke" in out
    assert run_json(capsys, "console", "account", "list")[1]["clients"] == []
    with rt.factory() as session:
        for org, subject in ((firm, "console_account"), (beta, "organization")):
            actions = session.scalars(
                select(AuditEntry.action)
                .where(
                    AuditEntry.organization_id == org,
                    AuditEntry.subject_kind == subject,
                    AuditEntry.action.like("console.access_%"),
                )
                .order_by(AuditEntry.seq)
            ).all()
            assert actions == ["console.access_granted", "console.access_revoked"], org
