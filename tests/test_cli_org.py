"""`automation --org SLUG …` (issue 10): a command of one organization runs with that
organization's tenant runtime: its rows only, its folder's cadences and templates, its
settings. Two organizations on one database: the deployment's own (acme, with its people
planned) and a client made with `automation org create`, with a folder of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from automation.cli import main
from automation.models import Organization, Person
from automation.settings import PROJECT_ROOT, Settings
from tests.conftest import start_organization

CLIENT = "client"
CLIENT_PEOPLE = """email,name,timezone,manager_email,hr_partner_email
chief@client.test,Cleo Chief,Europe/Paris,,hr@client.test
hr@client.test,Hugo Hr,Europe/Paris,chief@client.test,hr@client.test
dev@client.test,Dana Dev,Europe/Paris,chief@client.test,hr@client.test
"""
CLIENT_QUESTIONS = ["What did the client team ship?", "What blocks you?"]
CLIENT_CADENCE = f"""name = "client-weekly"
description = "Weekly check-in of the client only"
title = "Weekly {{manager}} / {{employee}}"

[applies_to]
reports_of = []
exclude = []

[schedule]
frequency = "weekly"
duration_minutes = 30
weekdays = ["mon", "tue"]
window_start = "10:00"
window_end = "15:00"

[agenda]
lead_hours = 24

[followup]
delay_hours = 1
questions = {json.dumps(CLIENT_QUESTIONS)}

[[escalation]]
after_business_days = 3
notify = "manager"
template = "reminder"
"""
CLIENT_SUBJECT = "Client Co follow-up: tell us how it went\n"
REPLY = b"""From: chief@client.test
To: checkin@example.test
Subject: Re: follow-up
Message-ID: <r1@client.test>

1. Shipped the thing.
2. Nothing.
"""


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """The test's settings on a copy of the shared configuration: config/orgs/ is written to."""
    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        organization="acme",
        organization_name="Acme",
        secret_key="test-secret",
        config_dir=config,
        templates_dir=PROJECT_ROOT / "templates",
    )


def settings_file(settings: Settings, path: Path, organization: str) -> Path:
    path.write_text(
        "\n".join(
            f"{key} = {json.dumps(str(value))}"
            for key, value in {
                "organization": organization,
                "organization_name": "Acme",
                "database_url": settings.database_url,
                "data_dir": settings.data_dir,
                "secret_key": settings.secret_key,
                "config_dir": settings.config_dir,
                "templates_dir": settings.templates_dir,
            }.items()
        )
        + "\n"
    )
    return path


def point_cli_at(monkeypatch, file: Path) -> None:  # type: ignore[no-untyped-def]
    """Only the settings file: no AUTOMATION_* variable from the test's environment."""
    for key in list(os.environ):
        if key.startswith("AUTOMATION_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AUTOMATION_CONFIG", str(file))
    monkeypatch.chdir(PROJECT_ROOT)


def run(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv: str) -> Any:  # type: ignore[no-untyped-def]
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def two(rt, settings, tmp_path, monkeypatch, capsys) -> Path:  # type: ignore[no-untyped-def]
    """acme (the deployment's own, named in the settings file) with its people planned, and
    the client created by `org create`, with its own cadence and follow-up subject; the
    command line pointed at the settings file. Returns the client's people file."""
    start_organization(rt, tmp_path)
    point_cli_at(monkeypatch, settings_file(settings, tmp_path / "settings.toml", "acme"))
    code, _, err = run(capsys, "org", "create", CLIENT, "--name", "Client Co")
    assert code == 0, err
    folder = settings.config_dir / "orgs" / CLIENT
    (folder / "cadences").mkdir()
    (folder / "cadences" / "client-weekly.toml").write_text(CLIENT_CADENCE)
    subject = folder / "templates" / "email" / "followup" / "subject.txt"
    subject.parent.mkdir(parents=True)
    subject.write_text(CLIENT_SUBJECT)
    people = tmp_path / "client.csv"
    people.write_text(CLIENT_PEOPLE)
    return people


def people_of(rt, slug: str) -> set[str]:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return set(
            session.scalars(
                select(Person.email).join(Organization).where(Organization.slug == slug)
            )
        )


ACME = {"boss@acme.test", "hr@acme.test", "ana@acme.test", "kai@acme.test"}
CLIENTS = {"chief@client.test", "hr@client.test", "dev@client.test"}


def test_people_import_and_list_act_for_the_client_only(two, rt, capsys):
    imported = run_json(capsys, "--org", CLIENT, "people", "import", str(two))
    assert imported["organization"] == CLIENT and imported["created"] == 3
    assert people_of(rt, CLIENT) == CLIENTS
    assert people_of(rt, "acme") == ACME  # untouched

    listed = run_json(capsys, "--org", CLIENT, "people", "list")
    assert {p["email"] for p in listed} == CLIENTS
    after = run_json(capsys, "people", "list", "--org", CLIENT)  # after the command too
    assert after == listed
    assert {p["email"] for p in run_json(capsys, "people", "list")} == ACME  # the default

    again = run_json(capsys, "--org", CLIENT, "people", "import", str(two))
    assert (again["created"], again["unchanged"]) == (0, 3)
    assert people_of(rt, "acme") == ACME


def test_a_clients_people_are_planned_at_import_not_a_day_later(two, rt, clock, capsys):
    """org create starts the client's daily planning at once, before it has anyone; the
    import then plans its people now rather than at tomorrow's run."""
    import datetime as dt

    from automation.models import CheckinSeries, Task, TaskState
    from automation.services.loop import run_due

    # The commands run on the real clock: the service's is moved to it.
    clock.advance_to(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    run_due(rt)  # the client's first plan runs with nobody to plan
    with rt.factory() as session:
        client = session.scalar(select(Organization.id).where(Organization.slug == CLIENT))
        done = session.scalars(
            select(Task.key).where(
                Task.organization_id == client, Task.kind == "plan", Task.state == TaskState.DONE
            )
        ).all()
    assert done, "the client's daily planning started on its own"
    run_json(capsys, "--org", CLIENT, "people", "import", str(two))
    clock.advance_to(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    run_due(rt)
    with rt.factory() as session:
        series = session.scalars(
            select(CheckinSeries).where(CheckinSeries.organization_id == client)
        ).all()
    assert len(series) == 2, "the chief's two reports have their series today"
    # Unchanged people plan nothing more.
    run_json(capsys, "--org", CLIENT, "people", "import", str(two))
    with rt.factory() as session:
        pending = session.scalars(
            select(Task.key).where(
                Task.organization_id == client,
                Task.kind == "plan",
                Task.state == TaskState.PENDING,
                Task.due_at <= rt.now(),
            )
        ).all()
    assert pending == []


def test_the_report_shows_only_the_client(two, tmp_path, capsys):
    run_json(capsys, "--org", CLIENT, "people", "import", str(two))
    out = tmp_path / "report"
    client = run_json(capsys, "--org", CLIENT, "report", "consistency", "--out", str(out))
    assert client["organization_slug"] == CLIENT and client["organization"] == "Client Co"
    emails = {m["email"] for m in client["managers"]}
    assert emails == {"chief@client.test"}
    assert client["org"]["due"] == 0  # nothing planned for the client yet

    acme = run_json(capsys, "report", "consistency", "--out", str(tmp_path / "acme"))
    assert acme["organization_slug"] == "acme"
    assert {m["email"] for m in acme["managers"]} == {"boss@acme.test"}
    assert acme["org"]["due"] > 0


def test_the_clients_own_cadence_and_template_are_used_only_for_it(two, tmp_path, capsys):
    reply = tmp_path / "reply.eml"
    reply.write_bytes(REPLY)
    parsed = run_json(capsys, "--org", CLIENT, "parse-reply", str(reply))
    assert parsed["questions"] == CLIENT_QUESTIONS and parsed["organization"] == CLIENT
    shared = run_json(capsys, "parse-reply", str(reply))
    assert shared["questions"][0] == "What went well since your last check-in?"
    assert shared["organization"] == "acme"

    preview = run_json(capsys, "--org", CLIENT, "templates", "preview", "followup")
    assert preview["subject"].strip() == CLIENT_SUBJECT.strip()
    assert preview["organization"] == CLIENT
    assert "<" in preview["html"]  # the shared body, under the client's subject
    own = run_json(capsys, "templates", "preview", "followup")
    assert own["subject"].strip() != CLIENT_SUBJECT.strip()


def test_config_check_validates_the_clients_folder_view(two, settings, capsys):
    checked = run_json(capsys, "--org", CLIENT, "config", "check")
    assert checked["ok"] is True and checked["organization"] == CLIENT
    view = settings.data_dir / "orgs" / CLIENT
    assert checked["config_dir"] == str(view / "config")
    assert checked["templates_dir"] == str(view / "templates")
    code, out, _ = run(capsys, "--org", CLIENT, "config", "check")
    assert code == 0 and out.startswith(f"organization {CLIENT}: configuration OK")

    # A broken file in the client's folder: its check fails naming the real file; the
    # deployment's does not see it.
    bad = settings.config_dir / "orgs" / CLIENT / "cadences" / "broken.toml"
    bad.write_text('name = "broken"\n[schedule]\nfrequency = "fortnightly"\n')
    code, out, _ = run(capsys, "--org", CLIENT, "config", "check", "--json")
    report = json.loads(out)
    assert code == 78 and report["ok"] is False
    assert str(bad) in {p["file"] for p in report["problems"]}
    deployment = run_json(capsys, "config", "check")
    assert deployment["ok"] is True and deployment["organization"] == "acme"
    assert deployment["config_dir"] == str(settings.config_dir)


def test_an_unknown_organization_is_refused_with_exit_2(two, rt, monkeypatch, capsys):
    before = people_of(rt, "acme")
    for argv in (
        ["--org", "nosuch", "people", "import", str(two)],
        ["--org", "nosuch", "config", "check"],
        ["people", "list", "--org", "nosuch"],
    ):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "", err
        assert "no organization 'nosuch'" in err and "automation org list" in err
        assert "known: acme, client" in err
    monkeypatch.setenv("AUTOMATION_ORGANIZATION", "nosuch")
    code, _, err = run(capsys, "people", "list")
    assert code == 2
    assert "no organization 'nosuch' (named by AUTOMATION_ORGANIZATION" in err
    assert people_of(rt, "acme") == before
    assert not (rt.settings.config_dir / "orgs" / "nosuch").exists()


def test_automation_organization_acts_as_org(two, rt, monkeypatch, capsys):
    monkeypatch.setenv("AUTOMATION_ORGANIZATION", CLIENT)
    imported = run_json(capsys, "people", "import", str(two))
    assert imported["organization"] == CLIENT
    assert people_of(rt, CLIENT) == CLIENTS and people_of(rt, "acme") == ACME
    assert {p["email"] for p in run_json(capsys, "people", "list")} == CLIENTS
    preview = run_json(capsys, "templates", "preview", "followup")
    assert preview["subject"].strip() == CLIENT_SUBJECT.strip()
    checked = run_json(capsys, "config", "check")
    assert checked["organization"] == CLIENT
    # --org wins over the variable; the deployment's own is reachable by its slug.
    assert {p["email"] for p in run_json(capsys, "--org", "acme", "people", "list")} == ACME
    # Commands of the deployment take the deployment's own organization, not the variable.
    shown = run_json(capsys, "org", "config", CLIENT)
    assert shown["organization"] == CLIENT


def test_the_deployments_default_is_unchanged(two, rt, settings, tmp_path, monkeypatch, capsys):
    assert {p["email"] for p in run_json(capsys, "people", "list")} == ACME
    assert run_json(capsys, "mail", "status")["organization"] == "acme"
    # A deployment that names its organization only in AUTOMATION_ORGANIZATION (the settings
    # file's, "default", is nobody on record): the variable is the deployment's own slug.
    point_cli_at(monkeypatch, settings_file(settings, tmp_path / "legacy.toml", "default"))
    monkeypatch.setenv("AUTOMATION_ORGANIZATION", "acme")
    assert {p["email"] for p in run_json(capsys, "people", "list")} == ACME
    assert run_json(capsys, "--org", CLIENT, "people", "list") == []  # nobody imported yet
    with rt.factory() as session:
        assert session.scalar(select(Organization).where(Organization.slug == "default")) is None


def test_commands_of_the_deployment_refuse_org(two, capsys):
    for argv, words in (
        (["--org", CLIENT, "db", "upgrade"], "db upgrade"),
        (["--org", CLIENT, "org", "list"], "org list"),
        (["--org", CLIENT, "run", "--once"], "run"),
        (["--org", CLIENT, "audit", "verify"], "audit verify"),
    ):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "", err
        assert f"--org does not apply to `automation {words}`" in err
    code, _, err = run(capsys, "--org", CLIENT, "console", "account", "grant", "x@y", "--org", "a")
    assert code == 2 and "grant EMAIL --org SLUG" in err
    # grant's own --org names the client; the account is in the deployment's organization.
    run(capsys, "console", "account", "add", "you@acme.test", "--role", "consultant",
        "--no-password")  # fmt: skip
    granted = run_json(capsys, "console", "account", "grant", "you@acme.test", "--org", CLIENT)
    assert granted["organization"] == CLIENT and granted["changed"] is True


def test_the_service_refuses_automation_organization_naming_a_client(two, rt, monkeypatch, capsys):
    # It would make the client the deployment's own organization: its tasks, its inbox.
    monkeypatch.setenv("AUTOMATION_ORGANIZATION", CLIENT)
    for argv, words in (
        (["run", "--once"], "run"),
        (["ingest-mail"], "ingest-mail"),
        (["web"], "web"),
        (["worker"], "worker"),
    ):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "", err
        assert f"AUTOMATION_ORGANIZATION names the client organization '{CLIENT}'" in err
        assert f"`automation {words}`" in err and "as the deployment's own ('acme')" in err
    monkeypatch.setenv("AUTOMATION_ORGANIZATION", "nosuch")
    code, _, err = run(capsys, "run", "--once")
    assert code == 2 and "no organization 'nosuch'" in err
    # Naming the deployment's own is what it always meant: the tick runs.
    monkeypatch.setenv("AUTOMATION_ORGANIZATION", "acme")
    code, _, err = run(capsys, "run", "--once")
    assert code == 0, err


def test_console_accounts_are_made_in_the_organization_acted_for(two, capsys):
    run_json(capsys, "--org", CLIENT, "people", "import", str(two))
    made = run_json(
        capsys, "--org", CLIENT, "console", "account", "add", "hr@client.test",
        "--role", "hr_admin", "--no-password",
    )  # fmt: skip
    assert made["organization"] == CLIENT
    assert [
        a["email"] for a in run_json(capsys, "--org", CLIENT, "console", "account", "list")
    ] == ["hr@client.test"]
    assert run_json(capsys, "console", "account", "list") == []


def test_the_shell_completes_org_with_the_organizations(two, settings, tmp_path):
    out = tmp_path / "completions"
    line = "automation --org "
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATION_")}
    env.update(
        {
            "AUTOMATION_CONFIG": os.environ["AUTOMATION_CONFIG"],
            "_ARGCOMPLETE": "1",
            "_ARGCOMPLETE_IFS": "\n",
            "COMP_LINE": line,
            "COMP_POINT": str(len(line)),
            "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "automation.cli"], env=env, capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()
    assert set(out.read_text().split()) == {"acme", CLIENT}
