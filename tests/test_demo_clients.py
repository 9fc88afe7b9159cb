"""`automation demo --clients`: two client organizations of a fractional-HR practice run beside
the sample organization, each on its own providers (Northwind on the Google Calendar and Gmail
fakes, Contoso on the Microsoft Graph fake), with its own cadence and templates, on one
simulated clock; a consultant sees both in one queue and neither client sees the other.

One demo run (two simulated weeks) serves every test here: what the demo left (its database,
what each fake held at the end, the sample organization's local files) is checked from the
outside, and the console is served on its database.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import email.utils
import hashlib
import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from automation.clock import SimulatedClock
from automation.db import make_engine, session_factory, transaction
from automation.demo import (
    DEMO_START,
    ClientSummary,
    ClientsUnavailable,
    DemoSummary,
    console_accounts,
    run_demo,
)
from automation.models import (
    CalendarLink,
    CheckinSeries,
    ConversationRecord,
    InboundMessage,
    Occurrence,
    Organization,
    OutboundMessage,
    OutboundState,
    Person,
)
from automation.organizations import ORGANIZATION_SECRETS
from automation.runtime import Runtime, build_runtime
from automation.services.escalation import overdue_queue
from automation.settings import Settings, load_settings
from automation.web import create_app
from tests.console_support import csrf_of

ROOT = Path(__file__).resolve().parents[1]
WEEKS = 2
SEED = 3
END = DEMO_START + dt.timedelta(weeks=WEEKS)
DOMAIN = {"example": "example.com", "northwind": "northwind.example", "contoso": "contoso.example"}
CLIENTS = ("contoso", "northwind")
GOOGLE_DOMAINS = ("google.com", "gserviceaccount.com")  # ids, the service account
OTHER = {"northwind": "contoso", "contoso": "northwind"}
PROVIDER = {"northwind": ("google", "gmail"), "contoso": ("graph", "graph")}
# Each client's template overrides (config/example-clients/<slug>/templates/).
AGENDA_SUBJECT = {
    "northwind": "[Northwind] Your weekly 1:1 agenda: ",
    "contoso": "Contoso check-in agenda · ",
}
FOLLOWUP_SUBJECT = {
    "northwind": "How did your check-in with ",  # the shared template
    "contoso": "Contoso: please document your check-in with ",
}


@dataclass
class Demo:
    out: Path
    summary: DemoSummary
    clients: dict[str, ClientSummary]
    ids: dict[str, int]  # slug -> organization id
    factory: Any  # unscoped sessions on the demo's database

    def session(self) -> Session:
        return self.factory()  # type: ignore[no-any-return]

    def folder(self, slug: str) -> Path:
        return Path(self.clients[slug].data)

    def calendars(self, slug: str) -> dict[str, list[dict[str, Any]]]:
        """Every live event in the client's calendar fake at the end, by calendar."""
        return json.loads((self.folder(slug) / "calendar.json").read_text())  # type: ignore[no-any-return]

    def mail(self, slug: str, folder: str) -> list[bytes]:
        return [p.read_bytes() for p in sorted((self.folder(slug) / "mail" / folder).iterdir())]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    from dramatiq.brokers.stub import StubBroker

    from workers.broker import broker

    if not isinstance(broker, StubBroker):
        pytest.skip("the demo runs its worker on the in-process (stub) broker")
    out = tmp_path_factory.mktemp("demo") / "out"
    base = Settings(
        config_dir=ROOT / "config",
        templates_dir=ROOT / "templates",
        organization_name="Example Corp",
        mail_from="Check-ins <checkins@example.com>",
        reply_domain="reply.example.com",
    )
    summary = run_demo(base, out, weeks=WEEKS, seed=SEED, clients=True)
    engine = make_engine(f"sqlite:///{out / 'automation.db'}")
    factory = session_factory(engine)
    with factory() as session:
        ids = {o.slug: o.id for o in session.scalars(select(Organization))}
    yield Demo(out, summary, {c.slug: c for c in summary.clients}, ids, factory)
    engine.dispose()


def addresses(msg: email.message.Message, *headers: str) -> list[str]:
    found = email.utils.getaddresses([str(v) for h in headers for v in msg.get_all(h, [])])
    return [address.lower() for _name, address in found]


def within(address: str, domain: str) -> bool:
    """The address is of the domain or one of its subdomains (reply.contoso.example)."""
    host = address.lower().rpartition("@")[2]
    return host == domain or host.endswith("." + domain)


def parsed(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def sent_rows(demo: Demo, slug: str) -> list[OutboundMessage]:
    with demo.session() as session:
        return list(
            session.scalars(
                select(OutboundMessage).where(
                    OutboundMessage.organization_id == demo.ids[slug],
                    OutboundMessage.state == OutboundState.SENT,
                )
            )
        )


# --------------------------------------------------------------------------- the run


def test_without_the_client_folders_it_refuses_and_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("an earlier run's")
    config = tmp_path / "config"
    config.mkdir()
    with pytest.raises(ClientsUnavailable, match="example-clients"):
        run_demo(Settings(config_dir=config), out, weeks=1, clients=True)
    assert [p.name for p in out.iterdir()] == ["report.html"]


def test_the_clients_ran_beside_the_sample_organization(demo: Demo) -> None:
    assert set(demo.ids) == {"example", *CLIENTS}
    assert sorted(demo.clients) == sorted(CLIENTS)
    for slug, c in demo.clients.items():
        assert (c.calendar, c.mail) == PROVIDER[slug]
        assert c.people == 7 and c.series == 6  # everyone but the head has a manager
        assert c.invites > 0 and c.emails_sent > 0 and c.records > 0, c
        assert c.audit_chain_intact
        assert Path(c.folder) == demo.out / "demo-config" / "orgs" / slug
        assert (Path(c.data) / "report.html").exists()
    assert demo.summary.people == 25 and demo.summary.records > 0
    # summary.json and report.html have a section per client; the report shows figures
    # only, each client's people are in its own report.
    written = json.loads((demo.out / "summary.json").read_text())
    assert [c["slug"] for c in written["clients"]] == [c.slug for c in demo.summary.clients]
    report = (demo.out / "report.html").read_text()
    for slug in CLIENTS:
        assert f'<tr id="client-{slug}">' in report
        assert f"@{DOMAIN[slug]}" not in report
        own = (demo.folder(slug) / "report.html").read_text()
        assert f"@{DOMAIN[OTHER[slug]]}" not in own and "@example.com" not in own
        assert demo.clients[slug].name in own
    # The credentials are organization secrets, encrypted: no value in the folders.
    with demo.session() as session:
        stored = session.execute(
            text("SELECT organization_id, name, ciphertext FROM organization_secrets")
        ).all()
    assert {(org, name) for org, name, _ in stored} == {
        (demo.ids["northwind"], "google_credentials_file"),
        (demo.ids["contoso"], "graph_client_secret"),
    }
    assert not any("PRIVATE KEY" in token for _, _, token in stored)
    for slug in CLIENTS:
        settings_file = (Path(demo.clients[slug].folder) / "settings.toml").read_text()
        values = tomllib.loads(settings_file)
        assert not set(values) & set(ORGANIZATION_SECRETS)
        assert "@" not in values.get("graph_base_url", "") + values.get("google_api_endpoint", "")
        assert "127.0.0.1" in settings_file  # its fakes' addresses, filled in


# --------------------------------------------------------------------------- calendars


def test_each_clients_series_are_in_its_own_calendar_fake_and_nowhere_else(demo: Demo) -> None:
    local = list((demo.out / "calendars").glob("*.ics"))
    assert local and all(f.stem.endswith("@example.com") for f in local)
    local_text = "\n".join(f.read_text() for f in local)
    for slug in CLIENTS:
        mine, other = demo.calendars(slug), demo.calendars(OTHER[slug])
        others_ids = {e["id"] for events in other.values() for e in events}
        domain = "@" + DOMAIN[slug]
        assert mine and all(owner.endswith(domain) for owner in mine)
        for events in mine.values():
            for e in events:
                found = re.findall(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", json.dumps(e))
                # Every address but Google's own ids (iCalUID …@google.com, the key's account).
                people = [a for a in found if not any(within(a, g) for g in GOOGLE_DOMAINS)]
                assert all(within(a, DOMAIN[slug]) for a in people), people
        with demo.session() as session:
            series = list(
                session.scalars(
                    select(CheckinSeries).where(CheckinSeries.organization_id == demo.ids[slug])
                )
            )
            links = {
                link.series_id: link
                for link in session.scalars(
                    select(CalendarLink).where(CalendarLink.organization_id == demo.ids[slug])
                )
            }
        assert len(series) == 6 and set(links) == {s.id for s in series}
        for s in series:
            link = links[s.id]
            assert link.provider == PROVIDER[slug][0]
            assert link.event_id in {e["id"] for e in mine[link.calendar]}
            assert link.event_id not in others_ids
            assert s.uid not in local_text  # not in the sample organization's files
        assert demo.clients[slug].events_in_fake >= len(series)


def test_each_client_runs_its_own_cadence(demo: Demo) -> None:
    """Northwind meets weekly (Mon/Tue mornings, 25 min), Contoso every other week (Thu/Fri
    afternoons, 45 min): in the database, and in each provider's own recurrence."""
    expected = {
        "northwind": (1, {0, 1}, 25, "Europe/London"),
        "contoso": (2, {3, 4}, 45, "America/Chicago"),
    }
    per_series: dict[str, list[int]] = {}
    for slug in CLIENTS:
        interval, weekdays, minutes, _ = expected[slug]
        calendars = demo.calendars(slug)
        with demo.session() as session:
            rows = session.execute(
                select(CheckinSeries, CalendarLink).join(
                    CalendarLink, CalendarLink.series_id == CheckinSeries.id
                )
                .where(CheckinSeries.organization_id == demo.ids[slug])
            ).all()  # fmt: skip
            per_series[slug] = []
            for s, link in rows:
                assert s.duration_minutes == minutes
                assert ("INTERVAL=2" in s.rrule) is (interval == 2), s.rrule
                event = next(e for e in calendars[link.calendar] if e["id"] == link.event_id)
                if slug == "northwind":  # Google: the RRULE itself
                    assert any("FREQ=WEEKLY" in r for r in event["recurrence"])
                    assert not any("INTERVAL=2" in r for r in event["recurrence"])
                else:  # Graph: its patternedRecurrence
                    pattern = event["recurrence"]["pattern"]
                    assert (pattern["type"], pattern["interval"]) == ("weekly", 2)
                held = list(
                    session.scalars(
                        select(Occurrence)
                        .where(Occurrence.series_id == s.id, Occurrence.start_at < END)
                        .order_by(Occurrence.start_at)
                    )
                )
                per_series[slug].append(len(held))
                # As planned (a manager's "#reschedule" moves one meeting, not the series).
                tz = ZoneInfo(s.timezone)
                planned = [o.recurrence_id.astimezone(tz) for o in held]
                assert {p.weekday() for p in planned} <= weekdays
                gaps = {(b - a).days for a, b in zip(planned, planned[1:], strict=False)}
                assert gaps <= {7 * interval - 1, 7 * interval, 7 * interval + 1}
    # Weekly: a meeting in each simulated week; fortnightly: at most one in two weeks.
    assert min(per_series["northwind"]) >= WEEKS - 1 and max(per_series["northwind"]) <= WEEKS
    assert max(per_series["contoso"]) <= 1
    assert sum(per_series["northwind"]) > sum(per_series["contoso"])
    assert demo.clients["northwind"].occurrences == sum(per_series["northwind"])


# --------------------------------------------------------------------------- mail


def test_each_clients_mail_went_through_its_own_fake_with_its_own_templates(demo: Demo) -> None:
    sample_ids = set()
    for path in (demo.out / "mail" / "outbox" / "new").iterdir():
        msg = parsed(path.read_bytes())
        sample_ids.add(str(msg["Message-ID"]))
        assert all(a.endswith("@example.com") for a in addresses(msg, "To", "Cc"))
        if str(msg["Subject"]).startswith("Agenda: "):
            continue
        assert not str(msg["Subject"]).startswith(tuple(AGENDA_SUBJECT.values()))
    for slug in CLIENTS:
        c, domain = demo.clients[slug], DOMAIN[slug]
        rows = sent_rows(demo, slug)
        sent = [parsed(raw) for raw in demo.mail(slug, "sent")]
        # Every email of the client went out through its own fake, once; nothing else did.
        assert len(sent) == len(rows) == c.emails_sent == c.sent_through_fake > 0
        assert {str(m["Message-ID"]) for m in sent} == {r.message_id for r in rows}
        assert not sample_ids & {r.message_id for r in rows}
        mailboxes = json.loads((demo.folder(slug) / "mailboxes.json").read_text())
        assert list(mailboxes) == [f"checkins@{domain}"]
        for msg, raw in zip(sent, demo.mail(slug, "sent"), strict=True):
            assert addresses(msg, "From") == [f"checkins@{domain}"]
            assert all(a.endswith("@" + domain) for a in addresses(msg, "To", "Cc")), msg["To"]
            assert str(msg["Reply-To"]).endswith(f"@reply.{domain}")
            for foreign in (DOMAIN[OTHER[slug]], "example.com"):
                assert foreign.encode() not in raw, (slug, foreign)
        # Its own templates: the agenda's subject (both), the follow-up's (Contoso).
        kinds = {r.kind for r in rows}
        assert {"agenda", "followup"} <= kinds
        for row in rows:
            subject = str(parsed(row.raw)["Subject"])
            if row.kind == "agenda":  # an update goes in the agenda's thread: "Re: "
                assert subject.removeprefix("Re: ").startswith(AGENDA_SUBJECT[slug]), subject
            elif row.kind == "followup":
                assert subject.startswith(FOLLOWUP_SUBJECT[slug]), subject
        assert c.agendas_sent and c.followups_sent


def test_replies_were_read_from_each_clients_own_mailbox_and_recorded_there(demo: Demo) -> None:
    with demo.session() as session:
        sample = list(
            session.scalars(
                select(InboundMessage).where(InboundMessage.organization_id == demo.ids["example"])
            )
        )
    assert sample and {m.source for m in sample} == {"maildir"}
    for slug in CLIENTS:
        c = demo.clients[slug]
        received = demo.mail(slug, "received")
        with demo.session() as session:
            inbound = list(
                session.scalars(
                    select(InboundMessage).where(InboundMessage.organization_id == demo.ids[slug])
                )
            )
            records = list(
                session.scalars(
                    select(ConversationRecord).where(
                        ConversationRecord.organization_id == demo.ids[slug]
                    )
                )
            )
        # Every reply the simulated people sent went into the client's own mailbox in its
        # fake, and its inbox poll took each in once, as the client's, and nothing else.
        assert received and len(received) == c.replies_delivered == c.replies_ingested
        assert {m.source for m in inbound} == {PROVIDER[slug][1]}
        assert sorted(m.sha256 for m in inbound) == sorted(
            hashlib.sha256(raw).hexdigest() for raw in received
        )
        assert not {m.sha256 for m in inbound} & {m.sha256 for m in sample}
        # ... and became the client's records, each from one of its own messages.
        assert records and {r.source_message_id for r in records} <= {m.id for m in inbound}
        assert len(records) == c.records
        others = demo.mail(OTHER[slug], "received")
        assert not {m.sha256 for m in inbound} & {hashlib.sha256(r).hexdigest() for r in others}


# --------------------------------------------------------------------------- isolation


def test_no_row_of_one_organization_references_anothers(demo: Demo) -> None:
    from bench.tenants import cross_references

    with demo.session() as session:
        checked, crossing = cross_references(session.connection(), None)
        for person, org in session.execute(select(Person.email, Person.organization_id)):
            slug = next(s for s, i in demo.ids.items() if i == org)
            if not person.endswith("@" + DOMAIN[slug]):
                crossing.append(f"{person} in {slug}")
    assert checked > 1000 and crossing == []


# --------------------------------------------------------------------------- the console


def sign_in(client: TestClient, account: dict[str, str]) -> None:
    client.cookies.clear()
    page = client.get(account["sign_in"].removeprefix("http://127.0.0.1:8080"))
    assert page.status_code == 200
    signed = client.post(
        "/console/sign-in",
        data={
            "email": account["address"],
            "password": account["password"],
            "csrf": csrf_of(page.text),
            "organization": "" if account["organization"] == "example" else account["organization"],
        },
        follow_redirects=False,
    )
    assert signed.status_code == 303, signed.text


QUEUE_ROW = re.compile(
    r'<tr id="(?P<slug>[a-z0-9-]+)--(?P<kind>occurrence|pip_review|acknowledgement)-(?P<id>\d+)">'
    r"(?P<body>.*?)</tr>",
    re.S,
)


@pytest.fixture
def console(demo: Demo, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Runtime, TestClient]]:
    """The console on the demo's data, as ``automation --config <out>/settings.toml web``
    serves it (with the key the clients' secrets are under), at the end of the demo."""
    for name in ("AUTOMATION_DATABASE_URL", "AUTOMATION_DATA_DIR", "AUTOMATION_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    if (demo.out / "secrets-keys").exists():
        monkeypatch.delenv("AUTOMATION_SECRETS_KEYS", raising=False)
        monkeypatch.setenv("AUTOMATION_SECRETS_KEYS_FILE", str(demo.out / "secrets-keys"))
    rt = build_runtime(load_settings(demo.out / "settings.toml"), SimulatedClock(END))
    with TestClient(create_app(rt)) as client:
        yield rt, client
    rt.engine.dispose()


def test_the_consultant_sees_both_clients_in_one_queue_and_each_client_only_its_own(
    demo: Demo, console: tuple[Runtime, TestClient]
) -> None:
    rt, client = console
    accounts = {a["organization"]: a for a in console_accounts(demo.out)}
    assert set(accounts) == {"example", *CLIENTS}
    assert accounts["example"]["role"] == "consultant"
    expected: dict[str, set[tuple[str, int]]] = {}
    for slug in CLIENTS:
        scoped = rt.tenant(demo.ids[slug])
        with transaction(scoped.factory) as session:
            queue = overdue_queue(session, demo.ids[slug], scoped.now())
        expected[slug] = {(item.kind, item.id) for item in queue.items}
        assert expected[slug], f"{slug} has nothing overdue at the end of the demo"

    sign_in(client, accounts["example"])
    summary = client.get("/console/clients")
    assert summary.status_code == 200
    for slug in CLIENTS:
        assert f'<tr id="client-{slug}">' in summary.text
    page = client.get("/console/clients/queue")
    assert page.status_code == 200
    rows = list(QUEUE_ROW.finditer(page.text))
    for slug in CLIENTS:
        got = {(r["kind"], int(r["id"])) for r in rows if r["slug"] == slug}
        assert got == expected[slug]
    assert {r["slug"] for r in rows} == set(CLIENTS)
    for r in rows:  # a row names only its own client's people
        assert f"@{DOMAIN[OTHER[r['slug']]]}" not in r["body"]

    for slug in CLIENTS:
        sign_in(client, accounts[slug])
        assert accounts[slug]["role"] == "hr_admin"
        for path in ("/console/", "/console/people", "/console/queue"):
            own = client.get(path)
            assert own.status_code == 200, (path, own.status_code)
            for foreign in (DOMAIN[OTHER[slug]], "example.com", demo.clients[OTHER[slug]].name):
                assert foreign not in own.text, (slug, path, foreign)
        people = client.get("/console/people").text
        assert f"@{DOMAIN[slug]}" in people
        # The consultant's pages are not a client's.
        assert client.get("/console/clients").status_code in (403, 404)
        other = client.get(f"/console/clients/{OTHER[slug]}/report")
        assert other.status_code in (403, 404)
