"""An organization's runtime (``Runtime.tenant``) runs with the organization's own
configuration: its ``config/orgs/<slug>/settings.toml``, cadences and templates and its secrets,
while an organization with nothing of its own keeps the deployment's adapters and files; and
the console's editors write into the organization's own folder when the deployment serves
several organizations."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import select

from automation.adapters.smtp import SmtpSender
from automation.db import transaction
from automation.models import AuditEntry, Cadence, CheckinSeries, Person
from automation.organizations import KEYS_VARIABLE, Keyring, org_folder, put_secret
from automation.people import ensure_organization, import_people_file
from automation.runtime import NoInbox, Runtime
from automation.services import accounts
from automation.services.loop import bootstrap, run_due
from automation.services.tasks import create_task
from automation.settings import PROJECT_ROOT, Settings
from automation.web import create_app
from tests.conftest import ACME_PEOPLE

PASSWORD = "correct horse battery staple"
NORTH_PEOPLE = """email,name,timezone,manager_email,hr_partner_email
chief@north.test,Nora Chief,Europe/Oslo,,hr@north.test
hr@north.test,Hedda Hr,Europe/Oslo,chief@north.test,hr@north.test
ola@north.test,Ola Nord,Europe/Oslo,chief@north.test,hr@north.test
"""


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """The test settings on copies of config/ and templates/: organizations' folders are
    written under config/orgs/."""
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
    )


def add_client(rt: Runtime, tmp_path: Path, slug: str = "north", name: str = "North AS") -> int:
    """A second organization, with people, and its planning due (as `org create` and an
    import would leave it)."""
    now = rt.now()
    with transaction(rt.factory) as session:
        org = ensure_organization(session, slug, name, now).id
        create_task(session, org, "plan", f"plan:{now.date()}", org, now, now)
        csv = tmp_path / f"people-{slug}.csv"
        csv.write_text(NORTH_PEOPLE)
        import_people_file(session, org, csv, now)
    return org


def write_org_settings(rt: Runtime, slug: str, text: str) -> Path:
    folder = org_folder(rt.settings, slug)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "settings.toml"
    path.write_text(text)
    return path


def test_an_organizations_settings_file_reaches_its_runtime_and_the_deployments_keeps_the_base(
    rt: Runtime, tmp_path: Path
) -> None:
    acme = bootstrap(rt)
    north = add_client(rt, tmp_path)
    text = 'mail_from = "North <checkins@north.test>"\nreply_domain = "reply.north.test"\n'
    write_org_settings(rt, "north", text + 'holidays = ["2026-05-17"]\n')
    mine = rt.tenant(north)
    assert mine.settings.mail_from == "North <checkins@north.test>"
    assert mine.settings.reply_domain == "reply.north.test"
    assert mine.settings.holidays == (dt.date(2026, 5, 17),)
    assert mine.settings.organization == "north"
    assert mine.settings.organization_name == "North AS"  # the row's name
    ours = rt.tenant(acme)
    assert ours.settings.mail_from == rt.settings.mail_from
    assert ours.settings.reply_domain == rt.settings.reply_domain
    assert ours.settings.holidays == ()
    # The embedded providers read only the deployment's folders: still the parent's objects.
    assert mine.sender is rt.sender and mine.calendar is rt.calendar
    # Asked again with nothing changed: the same runtime.
    assert rt.tenant(north) is mine


def test_a_client_with_no_folder_keeps_the_parents_adapters_and_configuration(
    rt: Runtime, tmp_path: Path
) -> None:
    acme = bootstrap(rt)
    north = add_client(rt, tmp_path)
    for org in (acme, north):
        tenant = rt.tenant(org)
        assert tenant.calendar is rt.calendar
        assert tenant.sender is rt.sender
        assert tenant.cadences is rt.cadences
        assert tenant.delegates is rt.delegates and tenant.roles is rt.roles
        assert tenant.coaching is rt.coaching
        assert tenant.settings.config_dir == rt.settings.config_dir
        assert tenant.settings.templates_dir == rt.settings.templates_dir
    # The configured inbox is the deployment's organization's: the client reads none.
    assert rt.tenant(acme).inbox is rt.inbox
    client_inbox = rt.tenant(north).inbox
    assert isinstance(client_inbox, NoInbox) and client_inbox.fetch(None).messages == []
    # Tests replace the parent's adapters with fakes: the tenants follow.
    fake = object()
    rt.sender = fake  # type: ignore[assignment]
    assert rt.tenant(north).sender is fake and rt.tenant(acme).sender is fake


def test_an_adapter_the_organization_configures_is_its_own_and_the_others_stay_shared(
    rt: Runtime, tmp_path: Path
) -> None:
    bootstrap(rt)
    north = add_client(rt, tmp_path)
    write_org_settings(rt, "north", 'mail_transport = "smtp"\nsmtp_host = "smtp.north.test"\n'
                       'smtp_username = "checkins@north.test"\n')  # fmt: skip
    tenant = rt.tenant(north)
    assert isinstance(tenant.sender, SmtpSender) and tenant.sender is not rt.sender
    assert tenant.settings.smtp_host == "smtp.north.test"
    assert tenant.calendar is rt.calendar  # mail settings are not the calendar's


def test_a_change_to_the_settings_file_or_the_secrets_is_picked_up_by_the_next_call(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bootstrap(rt)
    north = add_client(rt, tmp_path)
    before = rt.tenant(north)
    assert before.settings.mail_from == rt.settings.mail_from
    path = write_org_settings(rt, "north", 'mail_from = "a@north.test"\n')
    first = rt.tenant(north)
    assert first is not before and first.settings.mail_from == "a@north.test"
    path.write_text('mail_from = "second@north.test"\n')
    second = rt.tenant(north)
    assert second.settings.mail_from == "second@north.test"
    assert rt.tenant(north) is second
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(KEYS_VARIABLE, key)
    with transaction(rt.factory) as session:
        put_secret(session, north, "smtp_password", "north-pass", Keyring.from_keys([key]),
                   rt.now(), "test")  # fmt: skip
    third = rt.tenant(north)
    assert third is not second and third.settings.smtp_password == "north-pass"
    assert rt.tenant(north) is third


def _series_minutes(rt: Runtime, org: int) -> set[int]:
    with rt.factory() as session:
        return set(
            session.scalars(
                select(CheckinSeries.duration_minutes)
                .join(Person, Person.id == CheckinSeries.employee_id)
                .where(CheckinSeries.organization_id == org)
            )
        )


def _stored_cadences(rt: Runtime, org: int) -> dict[str, int]:
    with rt.factory() as session:
        return {
            row.name: row.definition["duration_minutes"]
            for row in session.scalars(
                select(Cadence).where(Cadence.organization_id == org, Cadence.active.is_(True))
            )
        }


def test_an_organization_with_its_own_cadences_plans_with_them_and_the_other_keeps_theirs(
    rt: Runtime, tmp_path: Path
) -> None:
    acme = bootstrap(rt)
    with transaction(rt.factory) as session:
        csv = tmp_path / "people.csv"
        csv.write_text(ACME_PEOPLE)
        import_people_file(session, acme, csv, rt.now())
    north = add_client(rt, tmp_path)
    own = org_folder(rt.settings, "north") / "cadences"
    own.mkdir(parents=True)
    shared = (rt.settings.config_dir / "cadences" / "one-on-one.toml").read_text()
    assert "duration_minutes = 30" in shared
    (own / "north-weekly.toml").write_text(
        shared.replace('name = "one-on-one"', 'name = "north-weekly"').replace(
            "duration_minutes = 30", "duration_minutes = 45"
        )
    )
    run_due(rt)
    assert _stored_cadences(rt, north) == {"north-weekly": 45}
    assert _series_minutes(rt, north) == {45}
    assert _stored_cadences(rt, acme) == {"one-on-one": 30}
    assert _series_minutes(rt, acme) == {30}
    assert set(rt.tenant(north).cadences) == {"north-weekly"}
    assert rt.tenant(acme).cadences is rt.cadences


def _signed_in(rt: Runtime, org: int, email: str, client: TestClient) -> str:
    with transaction(rt.factory) as session:
        accounts.create_account(
            session, org, email=email, name="Hr", role="hr_admin", now=rt.now(), actor="test",
            password=PASSWORD,
        )  # fmt: skip
        signed = accounts.sign_in(session, org, email, PASSWORD, rt.now())
        assert signed is not None
    client.cookies.set("checkin_session", signed.token, path="/console")
    return signed.csrf_token


def test_with_several_organizations_the_editors_write_the_organizations_own_folder(
    rt: Runtime, tmp_path: Path
) -> None:
    acme = bootstrap(rt)
    north = add_client(rt, tmp_path)
    run_due(rt)
    shared_cadence = rt.settings.config_dir / "cadences" / "one-on-one.toml"
    shared_subject = rt.settings.templates_dir / "email" / "reminder" / "subject.txt"
    shared_before = {p.name: p.read_bytes() for p in shared_cadence.parent.iterdir()}
    subject_before = shared_subject.read_bytes()
    subject = "North: " + subject_before.decode()
    with TestClient(create_app(rt)) as client:
        csrf = _signed_in(rt, north, "hr@north.test", client)
        old = client.get("/console/cadences/one-on-one")
        assert old.status_code == 200
        new = shared_cadence.read_text().replace("duration_minutes = 30", "duration_minutes = 50")
        saved = client.post("/console/cadences/one-on-one", data={"csrf": csrf, "text": new},
                            follow_redirects=False)  # fmt: skip
        assert saved.headers["location"].endswith("notice=cadence-saved"), saved.text
        # Copy-on-write: every shared cadence, with the saved one changed; the shared untouched.
        own = org_folder(rt.settings, "north") / "cadences"
        assert sorted(p.name for p in own.iterdir()) == sorted(shared_before)
        assert (own / "one-on-one.toml").read_text() == new
        assert {p.name: p.read_bytes() for p in shared_cadence.parent.iterdir()} == shared_before
        assert "50 minutes" in client.get("/console/cadences/one-on-one").text
        # A template: file by file into the organization's templates.
        saved = client.post(
            "/console/templates/reminder",
            data={"csrf": csrf, "action": "save", "part:subject.txt": subject},
            follow_redirects=False,
        )
        assert saved.status_code == 303, saved.text
        own_template = org_folder(rt.settings, "north") / "templates" / "email" / "reminder"
        assert [p.name for p in own_template.iterdir()] == ["subject.txt"]
        assert shared_subject.read_bytes() == subject_before
        page = client.get("/console/templates/reminder")
        assert "North: " in page.text
    # Applied for north only; audited in north's log, naming its folder.
    assert _stored_cadences(rt, north)["one-on-one"] == 50
    assert rt.tenant(north).cadences["one-on-one"].duration_minutes == 50
    assert rt.tenant(north).settings.templates_dir != rt.settings.templates_dir
    assert _stored_cadences(rt, acme)["one-on-one"] == 30
    assert rt.tenant(acme).cadences["one-on-one"].duration_minutes == 30
    with rt.factory() as session:
        entries = session.scalars(
            select(AuditEntry).where(
                AuditEntry.action.in_(["config.cadence_saved", "template.saved"])
            )
        ).all()
    assert {e.organization_id for e in entries} == {north}
    assert {e.data["folder"] for e in entries} == {"orgs/north"}
