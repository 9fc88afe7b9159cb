"""Client organizations: their own settings folder, their encrypted secrets, `automation org`."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from automation import audit
from automation.cli import main
from automation.db import make_engine, migrate, session_factory, transaction
from automation.emails import render
from automation.errors import ConfigError
from automation.models import AuditEntry, Organization, OrganizationSecret
from automation.organizations import (
    GENERATE_KEY,
    KEYS_VARIABLE,
    ORGANIZATION_FIELDS,
    ORGANIZATION_SECRETS,
    Keyring,
    SecretRefused,
    check_organization,
    key_fingerprint,
    load_secrets,
    org_folder,
    put_secret,
    rotate,
    starter_settings,
    tenant_settings,
)
from automation.people import ensure_organization
from automation.settings import _FIELDS, PROJECT_ROOT, Settings, load_settings
from automation.template_samples import sample_context

NOW = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
PASSWORD = "correct horse battery staple"
GOOGLE_KEY = json.dumps({"type": "service_account", "client_email": "svc@north.test"})


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A copy of the shared configuration: the tests write organizations' folders into it."""
    folder = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", folder, ignore=shutil.ignore_patterns("orgs"))
    return folder


@pytest.fixture
def base(tmp_path: Path, shared: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        organization="acme",
        organization_name="Acme",
        secret_key="test-secret",
        config_dir=shared,
        templates_dir=PROJECT_ROOT / "templates",
        source=str(tmp_path / "settings.toml"),
    )


def org_file(base: Settings, slug: str, text: str) -> Path:
    folder = org_folder(base, slug)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.toml").write_text(text)
    return folder / "settings.toml"


def new_key() -> str:
    return Fernet.generate_key().decode()


# --------------------------------------------------------------------------- settings


def test_an_organization_file_overrides_its_settings_and_another_keeps_the_base(base):
    org_file(
        base,
        "north",
        'mail_from = "Check-ins <hr@north.test>"\nreply_domain = "reply.north.test"\n'
        'holidays = ["2026-12-24", "2026-05-01"]\ndefault_timezone = "Europe/Oslo"\n',
    )
    north = tenant_settings(base, "north", {}, name="North AS")
    assert north.organization == "north" and north.organization_name == "North AS"
    assert north.mail_from == "Check-ins <hr@north.test>"
    assert north.reply_domain == "reply.north.test"
    assert north.holidays == (dt.date(2026, 5, 1), dt.date(2026, 12, 24))  # sorted, as dates
    assert north.default_timezone == "Europe/Oslo"
    assert north.database == base.database and north.secret_key == base.secret_key
    assert "north/settings.toml" in north.source

    south = tenant_settings(base, "south", {})  # no folder at all: the deployment's values
    assert (south.mail_from, south.reply_domain, south.holidays) == (
        base.mail_from, base.reply_domain, base.holidays,
    )  # fmt: skip
    assert south.organization == "south"
    assert south.organization_name == "south"  # never the deployment's organization's name
    assert (south.config_dir, south.templates_dir) == (base.config_dir, base.templates_dir)
    assert tenant_settings(base, "acme", {}).organization_name == "Acme"


def test_a_deployment_setting_in_an_organization_file_names_file_field_and_fix(base):
    file = org_file(
        base,
        "north",
        'database_url = "postgresql+psycopg://u:hunter2@db/x"\nlease_seconds = 10\n'
        'base_url = "https://north.test"\norganization = "south"\nmail_from = "a@north.test"\n',
    )
    with pytest.raises(ConfigError) as caught:
        tenant_settings(base, "north", {})
    problems = {p.field: p for p in caught.value.problems}
    assert set(problems) == {"database_url", "lease_seconds", "base_url", "organization"}
    assert all(p.file == str(file) for p in problems.values())
    assert "deployment" in problems["database_url"].problem
    assert base.source in problems["database_url"].fix
    assert "AUTOMATION_DATABASE_URL" in problems["database_url"].fix
    assert "slug" in problems["organization"].fix
    assert "hunter2" not in str(caught.value)  # a refused value is never repeated


def test_a_secret_in_the_settings_file_is_refused_with_the_command_that_stores_it(base):
    file = org_file(base, "north", 'smtp_password = "hunter2"\n')
    with pytest.raises(ConfigError) as caught:
        tenant_settings(base, "north", {})
    (problem,) = caught.value.problems
    assert (problem.file, problem.field) == (str(file), "smtp_password")
    assert "automation org secret set north smtp_password" in problem.fix
    assert "hunter2" not in str(caught.value)


def test_a_bad_value_reads_exactly_as_in_the_main_settings_file(base, tmp_path):
    text = 'holidays = ["2026-13-01"]\nsmtp_port = 0\ncalendar_provider = "exchange"\n'
    file = org_file(base, "north", text)
    with pytest.raises(ConfigError) as in_org:
        tenant_settings(base, "north", {})
    main_file = tmp_path / "main.toml"
    main_file.write_text(text)
    with pytest.raises(ConfigError) as in_main:
        load_settings(main_file, environ={})
    assert [(p.field, p.problem, p.fix) for p in in_org.value.problems] == [
        (p.field, p.problem, p.fix) for p in in_main.value.problems
    ]
    assert {p.file for p in in_org.value.problems} == {str(file)}
    assert any("ISO dates" in p.problem for p in in_org.value.problems)


def test_unknown_keys_and_bad_toml_name_the_fix(base):
    org_file(base, "north", 'mail_form = "typo@north.test"\n')
    with pytest.raises(ConfigError) as caught:
        tenant_settings(base, "north", {})
    (problem,) = caught.value.problems
    assert problem.field == "mail_form" and "mail_from" in problem.fix
    org_file(base, "north", "mail_from = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        tenant_settings(base, "north", {})


def test_every_organization_setting_and_secret_is_a_settings_field():
    assert set(_FIELDS) >= ORGANIZATION_FIELDS
    assert set(ORGANIZATION_SECRETS) <= set(_FIELDS)
    assert not ORGANIZATION_FIELDS & set(ORGANIZATION_SECRETS)
    deployment = {"database_url", "broker_url", "data_dir", "secret_key", "base_url"}
    assert not deployment & (ORGANIZATION_FIELDS | set(ORGANIZATION_SECRETS))


def test_the_starter_file_loads_and_uncommented_examples_are_valid(base):
    text = starter_settings("north", 'North "Wind" & Co', base)
    org_file(base, "north", text)
    assert tenant_settings(base, "north", {}).organization_name == 'North "Wind" & Co'
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line.split("#")[1] else line
        for line in text.splitlines()
    )
    org_file(base, "north", uncommented)
    loaded = tenant_settings(base, "north", {})
    assert loaded.mail_transport == "smtp" and loaded.calendar_provider == "graph"


def test_a_slug_that_is_not_a_folder_name_is_refused(base):
    for slug in ("../acme", "Acme Corp", ".hidden", "a/b", ""):
        with pytest.raises(ConfigError, match="cannot name a folder"):
            org_folder(base, slug)
    # An old deployment's odd slug still runs, with the shared configuration.
    assert tenant_settings(base, "Acme Corp", {}).config_dir == base.config_dir


def test_an_organizations_folders_replace_the_shared_ones_and_templates_go_file_by_file(base):
    from automation.config import load_cadences, load_pip_templates, load_privacy

    folder = org_folder(base, "north")
    (folder / "cadences").mkdir(parents=True)
    (folder / "cadences" / "weekly.toml").write_text(
        (base.config_dir / "cadences" / "one-on-one.toml")
        .read_text()
        .replace('name = "one-on-one"', 'name = "north-weekly"')
    )
    (folder / "privacy.toml").write_text("[retention]\nyears_after_leaving = 2\n")
    subject = folder / "templates" / "email" / "invite" / "subject.txt"
    subject.parent.mkdir(parents=True)
    subject.write_text("North: {{ invite.title }}\n")

    north = tenant_settings(base, "north", {})
    assert [c.name for c in load_cadences(north)] == ["north-weekly"]  # replaced, not merged
    assert load_pip_templates(north).keys() == load_pip_templates(base).keys()  # shared
    assert load_privacy(north).years_after_leaving == 2
    assert load_privacy(base).years_after_leaving != 2
    invite = render(north.templates_dir, "invite", sample_context("invite"))
    shared = render(base.templates_dir, "invite", sample_context("invite"))
    assert invite.subject.startswith("North: ") and not shared.subject.startswith("North")
    assert invite.text == shared.text  # the body is still the shared one
    south = tenant_settings(base, "south", {})
    assert [c.name for c in load_cadences(south)] == ["one-on-one"]
    assert org_folder(north, "south") == org_folder(base, "south")  # also through a view

    # An override removed: the view follows at the next load.
    subject.unlink()
    again = tenant_settings(base, "north", {})
    assert not render(again.templates_dir, "invite", sample_context("invite")).subject.startswith(
        "North"
    )
    assert check_organization(base, "north")[1] == []


def test_check_names_the_organizations_own_file_not_the_view(base):
    folder = org_folder(base, "north")
    (folder / "cadences").mkdir(parents=True)
    bad = folder / "cadences" / "bad.toml"
    bad.write_text('name = "bad"\n[schedule]\nfrequency = "fortnightly"\n')
    broken = folder / "templates" / "email" / "invite" / "body.txt"
    broken.parent.mkdir(parents=True)
    broken.write_text("{% if %}\n")
    _, problems = check_organization(base, "north")
    files = {p.file for p in problems}
    assert str(bad) in files and str(broken) in files
    assert not any(str(base.data_dir) in p.file for p in problems)


# --------------------------------------------------------------------------- keys


def test_a_missing_or_malformed_key_says_which_variable_and_how_to_make_one():
    with pytest.raises(ConfigError) as missing:
        Keyring.from_env({})
    assert KEYS_VARIABLE in str(missing.value) and GENERATE_KEY in str(missing.value)
    good = new_key()
    almost = good[:-4] + "!!!="
    with pytest.raises(ConfigError) as malformed:
        Keyring.from_env({KEYS_VARIABLE: f"{good}, {almost}"})
    (problem,) = malformed.value.problems
    assert "key 2 of 2" in problem.problem and GENERATE_KEY in problem.fix
    assert almost not in str(malformed.value) and good not in str(malformed.value)
    assert Keyring.from_env_if_set({}) is None
    ring = Keyring.from_env({KEYS_VARIABLE: f" {good} ,,"})
    assert ring.key_ids == (key_fingerprint(good),) and len(ring.current_key_id) == 8
    assert good not in repr(ring)


def test_keys_may_come_from_a_file(tmp_path):
    first, second = new_key(), new_key()
    keys = tmp_path / "keys"
    keys.write_text(f"{first}\n{second}\n")
    ring = Keyring.from_env({KEYS_VARIABLE + "_FILE": str(keys)})
    assert ring.key_ids == (key_fingerprint(first), key_fingerprint(second))


# --------------------------------------------------------------------------- secrets


@pytest.fixture
def factory(database_url):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def test_the_migration_makes_exactly_the_model(factory):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from automation.models import Base

    with factory() as session:
        context = MigrationContext.configure(session.connection())
        differences = compare_metadata(context, Base.metadata)
    assert [d for d in differences if "organization_secrets" in repr(d)] == []


def two_organizations(factory) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with transaction(factory) as session:
        north = ensure_organization(session, "north", "North", NOW).id
        south = ensure_organization(session, "south", "South", NOW).id
    return north, south


def test_secrets_round_trip_encrypted_and_audited_without_their_value(factory, caplog):
    caplog.set_level(logging.DEBUG)
    north, south = two_organizations(factory)
    ring = Keyring.from_keys([new_key()])
    with transaction(factory) as session:
        put_secret(session, north, "smtp_password", PASSWORD, ring, NOW, "operator:test")
        put_secret(session, north, "google_credentials_file", GOOGLE_KEY, ring, NOW, "op")
        put_secret(session, south, "smtp_password", "south's own", ring, NOW, "op")
    with factory() as session:
        assert load_secrets(session, north, ring) == {
            "smtp_password": PASSWORD,
            "google_credentials_file": GOOGLE_KEY,
        }
        assert load_secrets(session, south, ring) == {"smtp_password": "south's own"}
        rows = session.scalars(select(OrganizationSecret)).all()
        assert {row.key_id for row in rows} == {ring.current_key_id}
        for row in rows:
            assert PASSWORD not in row.ciphertext and "svc@north.test" not in row.ciphertext
            assert row.ciphertext.startswith("gAAAAA")  # a Fernet token
        entries = session.scalars(select(AuditEntry).where(AuditEntry.action == "secret.set")).all()
        assert {(e.organization_id, e.data["name"]) for e in entries} == {
            (north, "smtp_password"), (north, "google_credentials_file"), (south, "smtp_password"),
        }  # fmt: skip
        assert all(e.data["key_id"] == ring.current_key_id for e in entries)
        assert PASSWORD not in json.dumps([e.data for e in entries])
        assert audit.verify(session, north).intact
    assert PASSWORD not in caplog.text and "svc@north.test" not in caplog.text

    with transaction(factory) as session:  # replacing keeps one row
        put_secret(session, north, "smtp_password", "new one", ring, NOW, "op")
    with factory() as session:
        assert load_secrets(session, north, ring)["smtp_password"] == "new one"
        assert session.query(OrganizationSecret).filter_by(organization_id=north).count() == 2


def test_a_session_scoped_to_one_organization_reads_only_its_secrets(factory):
    from automation.tenancy import scoped_factory

    north, south = two_organizations(factory)
    ring = Keyring.from_keys([new_key()])
    engine = factory.kw["bind"]
    with transaction(scoped_factory(engine, north)) as session:
        put_secret(session, north, "smtp_password", PASSWORD, ring, NOW, "op")
    with scoped_factory(engine, south)() as session:
        assert load_secrets(session, north, ring) == {}  # as if north had none
        assert session.scalars(select(OrganizationSecret)).all() == []
    with scoped_factory(engine, north)() as session:
        assert load_secrets(session, north, ring) == {"smtp_password": PASSWORD}


def test_only_the_secrets_settings_knows_may_be_stored(factory):
    north, _ = two_organizations(factory)
    ring = Keyring.from_keys([new_key()])
    with transaction(factory) as session:
        for name, value in (
            ("database_url", "sqlite://"),
            ("secret_key", "x"),
            ("mail_from", "a@b.c"),
            ("smtp_password", "   "),
            ("google_credentials_file", "not json"),
        ):
            with pytest.raises(SecretRefused) as refused:
                put_secret(session, north, name, value, ring, NOW, "op")
            if name not in ORGANIZATION_SECRETS:
                assert all(allowed in str(refused.value) for allowed in ORGANIZATION_SECRETS)
        assert "not json" not in str(refused.value)  # a refused value is never repeated
        assert session.scalars(select(OrganizationSecret)).all() == []


def test_a_wrong_key_fails_naming_the_key_and_the_fix(factory):
    north, _ = two_organizations(factory)
    right, wrong = Keyring.from_keys([new_key()]), Keyring.from_keys([new_key()])
    with transaction(factory) as session:
        put_secret(session, north, "imap_password", PASSWORD, right, NOW, "op")
    with factory() as session:
        with pytest.raises(ConfigError) as caught:
            load_secrets(session, north, wrong)
        (problem,) = caught.value.problems
        assert problem.field == "north/imap_password"
        assert right.current_key_id in problem.problem and KEYS_VARIABLE in problem.fix
        with pytest.raises(ConfigError, match=f"{KEYS_VARIABLE}.*not set"):
            load_secrets(session, north, None)
        assert load_secrets(session, north + 1000, None) == {}  # nothing stored: no key needed
    with transaction(factory) as session:  # a changed token is told apart from a missing key
        row = session.scalars(select(OrganizationSecret)).one()
        row.ciphertext = row.ciphertext[:-8] + "AAAAAAA="
    with factory() as session, pytest.raises(ConfigError, match="changed or damaged"):
        load_secrets(session, north, right)


def test_rotation_re_encrypts_everything_under_the_first_key(factory):
    north, south = two_organizations(factory)
    old, new = new_key(), new_key()
    old_ring = Keyring.from_keys([old])
    with transaction(factory) as session:
        put_secret(session, north, "smtp_password", PASSWORD, old_ring, NOW, "op")
        put_secret(session, north, "imap_password", "imap pw", old_ring, NOW, "op")
        put_secret(session, south, "graph_client_secret", "graph pw", old_ring, NOW, "op")
    both = Keyring.from_keys([new, old])
    later = NOW + dt.timedelta(days=1)
    with transaction(factory) as session:
        counts = rotate(session, both, later, "operator:test")
    assert (counts.rotated, counts.unchanged, counts.key_id) == (3, 0, key_fingerprint(new))
    assert counts.by_organization == {"north": 2, "south": 1}
    assert counts.from_key_ids == {key_fingerprint(old): 3}
    new_only, old_only = Keyring.from_keys([new]), Keyring.from_keys([old])
    with factory() as session:
        assert load_secrets(session, north, new_only) == {
            "smtp_password": PASSWORD, "imap_password": "imap pw",
        }  # fmt: skip
        assert load_secrets(session, south, new_only) == {"graph_client_secret": "graph pw"}
        with pytest.raises(ConfigError, match=key_fingerprint(new)):
            load_secrets(session, north, old_only)  # the old key alone no longer reads them
        rows = session.scalars(select(OrganizationSecret)).all()
        assert {(r.key_id, r.updated_at) for r in rows} == {(key_fingerprint(new), later)}
        rotated = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "secret.rotated")
        ).all()
        assert {e.organization_id: sorted(e.data["names"]) for e in rotated} == {
            north: ["imap_password", "smtp_password"], south: ["graph_client_secret"],
        }  # fmt: skip
        assert "graph pw" not in json.dumps([e.data for e in rotated])
    with transaction(factory) as session:  # again: nothing left to do
        assert rotate(session, both, later, "op").unchanged == 3
    with transaction(factory) as session, pytest.raises(ConfigError, match="north"):
        rotate(session, Keyring.from_keys([new_key()]), later, "op")  # stops, changes nothing
    with factory() as session:
        assert load_secrets(session, north, new_only)["smtp_password"] == PASSWORD


def test_tenant_settings_fill_secrets_and_never_lend_the_deployments(base, factory):
    north_id, _ = two_organizations(factory)
    ring = Keyring.from_keys([new_key()])
    with transaction(factory) as session:
        put_secret(session, north_id, "smtp_password", PASSWORD, ring, NOW, "op")
        put_secret(session, north_id, "google_credentials_file", GOOGLE_KEY, ring, NOW, "op")
    deployment = base.with_(smtp_password="deployment pw", imap_password="deployment imap")
    with factory() as session:
        north = tenant_settings(deployment, "north", load_secrets(session, north_id, ring))
        south = tenant_settings(deployment, "south", {})
    assert north.smtp_password == PASSWORD and north.imap_password == ""
    key_file = Path(north.google_credentials_file)
    assert key_file.read_text() == GOOGLE_KEY and key_file.is_relative_to(base.data_dir)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert (south.smtp_password, south.imap_password, south.google_credentials_file) == ("", "", "")
    acme = tenant_settings(deployment, "acme", {"smtp_password": "own"})  # the deployment's org
    assert (acme.smtp_password, acme.imap_password) == ("own", "deployment imap")
    assert "(set)" not in repr(north) and PASSWORD not in repr(north)
    with pytest.raises(ConfigError, match="secret unset north"):
        tenant_settings(base, "north", {"database_url": "sqlite://"})


# --------------------------------------------------------------------------- the command


@pytest.fixture
def cli(tmp_path, shared, database_url, monkeypatch):  # type: ignore[no-untyped-def]
    """`automation` pointed at a settings file on the test database and shared config copy."""
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(
        f"database_url = {json.dumps(database_url)}\n"
        f"data_dir = {json.dumps(str(tmp_path / 'data'))}\n"
        f"config_dir = {json.dumps(str(shared))}\n"
        'secret_key = "t"\norganization = "acme"\n'
    )
    for name in list(os.environ):
        if name.startswith("AUTOMATION_") and not name.startswith("AUTOMATION_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AUTOMATION_CONFIG", str(settings_file))
    return settings_file


def run(capsys, *argv: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv: str, **kwargs: Any) -> Any:  # type: ignore[no-untyped-def]
    code, out, err = run(capsys, *argv, "--json", **kwargs)
    assert code == 0, err
    assert out.count("\n") == 1
    return json.loads(out)


def test_org_commands_through_main(cli, shared, capsys, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    old, new = new_key(), new_key()
    monkeypatch.setenv(KEYS_VARIABLE, old)

    made = run_json(capsys, "org", "create", "north", "--name", "North & Co")
    assert made["slug"] == "north" and made["created"] is True and made["folder_created"]
    starter = shared / "orgs" / "north" / "settings.toml"
    assert made["folder"] == str(starter.parent) and "North & Co" in starter.read_text()
    again = run_json(capsys, "org", "create", "north", "--name", "Other")
    assert (again["created"], again["folder_created"], again["name"]) == (
        False,
        False,
        "North & Co",
    )
    code, _, err = run(capsys, "org", "create", "../evil", "--name", "E")
    assert code == 78 and "cannot name a folder" in err
    run_json(capsys, "org", "create", "south", "--name", "South")

    stored = run_json(
        capsys, "org", "secret", "set", "north", "smtp_password",
        stdin=PASSWORD + "\n", monkeypatch=monkeypatch,
    )  # fmt: skip
    assert stored == {
        "organization": "north", "name": "smtp_password", "key_id": key_fingerprint(old),
    }  # fmt: skip
    code, _, err = run(
        capsys, "org", "secret", "set", "north", "database_url", stdin="x", monkeypatch=monkeypatch
    )
    assert code == 64 and "smtp_password" in err and "caldav_password" in err
    code, _, err = run(
        capsys, "org", "secret", "set", "nowhere", "smtp_password", stdin="x",
        monkeypatch=monkeypatch,
    )  # fmt: skip
    assert code == 1 and "automation org create nowhere" in err

    listing = {row["slug"]: row for row in run_json(capsys, "org", "list")}
    assert listing["north"] == {
        "slug": "north", "name": "North & Co", "people": 0, "config_folder": True,
        "secrets": 1, "key_ids": [key_fingerprint(old)],
    }  # fmt: skip
    assert listing["south"]["secrets"] == 0
    code, out, _ = run(capsys, "org", "list")
    assert code == 0 and out.splitlines()[0].split() == [
        "slug", "name", "people", "config_folder", "secrets", "keys",
    ]  # fmt: skip

    (secret,) = run_json(capsys, "org", "secret", "list", "north")
    assert (secret["name"], secret["key_id"], secret["current_key"]) == (
        "smtp_password", key_fingerprint(old), True,
    )  # fmt: skip

    starter.write_text(starter.read_text() + 'reply_domain = "reply.north.test"\n')
    shown = run_json(capsys, "org", "config", "north")
    assert shown["settings"]["reply_domain"] == "reply.north.test"
    assert shown["settings"]["organization_name"] == "North & Co"
    assert shown["settings"]["smtp_password"] == "(set)"
    assert shown["settings"]["imap_password"] == "(not set)"
    assert shown["set_by_organization"] == ["organization_name", "reply_domain"]
    checked = run_json(capsys, "org", "config", "north", "--check")
    assert checked["ok"] is True and checked["problems"] == []

    starter.write_text(starter.read_text() + 'broker_url = "redis://x"\n')
    code, out, _ = run(capsys, "org", "config", "north", "--check", "--json")
    report = json.loads(out)
    assert code == 78 and report["ok"] is False
    (problem,) = report["problems"]
    assert (problem["file"], problem["field"]) == (str(starter), "broker_url")
    code, _, err = run(capsys, "org", "config", "north")
    assert code == 78 and "broker_url" in err

    starter.write_text(starter.read_text().replace('broker_url = "redis://x"\n', ""))
    monkeypatch.setenv(KEYS_VARIABLE, new)  # the old key dropped before the rotation
    code, out, _ = run(capsys, "org", "config", "north", "--check", "--json")
    report = json.loads(out)
    assert code == 78 and [p["field"] for p in report["problems"]] == ["north/smtp_password"]
    assert key_fingerprint(old) in report["problems"][0]["problem"]
    assert run_json(capsys, "org", "config", "south", "--check")["ok"] is True
    monkeypatch.setenv(KEYS_VARIABLE, f"{new},{old}")
    rotated = run_json(capsys, "org", "secret", "rotate")
    assert (rotated["rotated"], rotated["key_id"]) == (1, key_fingerprint(new))
    assert rotated["by_organization"] == {"north": 1}
    (secret,) = run_json(capsys, "org", "secret", "list", "north")
    assert secret["key_id"] == key_fingerprint(new)

    removed = run_json(capsys, "org", "secret", "unset", "north", "smtp_password")
    assert removed["removed"] is True

    monkeypatch.delenv(KEYS_VARIABLE)
    code, _, err = run(
        capsys, "org", "secret", "set", "north", "smtp_password", stdin="x", monkeypatch=monkeypatch
    )
    assert code == 78 and KEYS_VARIABLE in err and "generate_key" in err

    assert PASSWORD not in caplog.text
    engine = make_engine(load_settings(cli).database)
    try:
        with session_factory(engine)() as session:
            north_id = session.scalars(
                select(Organization.id).where(Organization.slug == "north")
            ).one()
            entries = session.scalars(
                select(AuditEntry)
                .where(AuditEntry.organization_id == north_id)
                .order_by(AuditEntry.seq)
            ).all()
            actions = [e.action for e in entries]
            assert actions == [
                "organization.created", "organization.folder_created", "secret.set",
                "secret.rotated", "secret.removed",
            ]  # fmt: skip
            assert PASSWORD not in json.dumps([e.data for e in entries])
            assert audit.verify(session, north_id).intact
    finally:
        engine.dispose()
