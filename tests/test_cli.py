"""The `automation` command as a user (or an MTA) runs it: real processes, real files."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

KEYS = (
    "people",
    "series",
    "occurrences",
    "invites",
    "agendas_sent",
    "followups_sent",
    "replies_ingested",
    "records",
    "reminders",
    "escalations",
    "quarantined",
)


def automation(
    *args: str, env: dict[str, str], stdin: bytes = b"", cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATION_")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "automation.cli", *args],
        input=stdin,
        capture_output=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"AUTOMATION_DATA_DIR": str(tmp_path / "data"), "AUTOMATION_SECRET_KEY": "t"}


def test_ingest_mail_quarantines_garbage_and_exits_0(env, tmp_path):
    garbage = b"\x00\x01\xfe this is not\r\n an email \xff" * 10
    result = automation("ingest-mail", env=env, stdin=garbage)
    assert result.returncode == 0, result.stderr
    assert b"quarantined" in result.stdout
    with sqlite3.connect(tmp_path / "data" / "automation.db") as db:
        rows = db.execute("SELECT raw, state, quarantine_reason FROM inbound_messages").fetchall()
    assert rows == [(garbage, "quarantined", rows[0][2])] and rows[0][2]
    again = automation("ingest-mail", env=env, stdin=garbage)  # an MTA retry: stored once
    assert again.returncode == 0 and b"duplicate" in again.stdout


def test_ingest_mail_exits_75_when_it_cannot_store(env):
    env = {
        **env,
        "AUTOMATION_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2",
    }
    result = automation("ingest-mail", env=env, stdin=b"Subject: hi\r\n\r\nhello\r\n")
    assert result.returncode == 75
    assert b"could not store" in result.stderr and b"retries" in result.stderr


def test_config_check_names_file_field_and_fix(env, tmp_path):
    config = tmp_path / "config"
    (config / "cadences").mkdir(parents=True)
    (config / "cadences" / "bad.toml").write_text(
        'name = "bad"\n[schedule]\nfrequency = "fortnightly"\nweekdays = ["tue", "someday"]\n'
        '[followup]\nquestions = ["ok?"]\n'
    )
    result = automation("config", "check", env={**env, "AUTOMATION_CONFIG_DIR": str(config)})
    assert result.returncode == 78
    err = result.stderr.decode()
    assert f"{config / 'cadences' / 'bad.toml'}: schedule.frequency: expected" in err
    assert "schedule.weekdays: 'someday' is not a weekday" in err
    ok = automation("config", "check", env=env)
    assert ok.returncode == 0, ok.stderr


def test_people_import_reports_every_bad_row_and_applies_nothing(env, tmp_path):
    bad = tmp_path / "people.csv"
    bad.write_text(
        "email,name,timezone,manager_email,hr_partner_email\n"
        "a@x.test,A,Europe/Berlin,b@x.test,\n"
        "b@x.test,B,Mars/Base,a@x.test,\n"
        "c@x.test,C,UTC,nobody@x.test,\n"
    )
    result = automation("people", "import", str(bad), env=env)
    assert result.returncode == 65
    err = result.stderr.decode()
    for expected in ("row 3", "Mars/Base", "row 4", "nobody@x.test", "cycle"):
        assert expected in err
    good = automation(
        "people",
        "import",
        "config/example/people.csv",
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert good.returncode == 0 and b"25 created" in good.stdout
    again = automation(
        "people",
        "import",
        "config/example/people.csv",
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert b"0 created, 0 updated, 25 unchanged" in again.stdout


def test_templates_preview_renders_sample_data(env):
    result = automation("templates", "preview", "followup", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"Subject: ") and b"\n1. " in result.stdout
    html = automation("templates", "preview", "agenda", "--html", env=env)
    body = html.stdout.split(b"\n\n", 1)[1]  # after the (plain-text) subject line
    assert b"&lt;script&gt;" in body and b"<script>" not in body
    missing = automation("templates", "preview", "nope", env=env)
    assert missing.returncode == 64 and b"known: agenda" in missing.stderr


def test_demo_runs_the_whole_loop_deterministically(env, tmp_path):
    first = automation("demo", "--json", "--out", str(tmp_path / "one"), env=env)
    assert first.returncode == 0, first.stderr
    counts = json.loads(first.stdout)
    assert {k: counts[k] for k in KEYS if counts[k] <= 0} == {}
    assert counts["audit_chain_intact"] is True
    assert (tmp_path / "one" / "report.html").stat().st_size > 1000
    # Everyone is in at least one 1:1 (the head as the managers' manager).
    assert len(list((tmp_path / "one" / "calendars").glob("*.ics"))) == counts["people"]
    second = automation("demo", "--json", "--out", str(tmp_path / "two"), env=env)
    again = json.loads(second.stdout)
    assert {k: again[k] for k in KEYS} == {k: counts[k] for k in KEYS}
    mail_one = sorted(p.read_bytes() for p in (tmp_path / "one/mail/outbox/new").iterdir())
    mail_two = sorted(p.read_bytes() for p in (tmp_path / "two/mail/outbox/new").iterdir())
    assert mail_one == mail_two  # same seed, byte-identical mail


def test_run_once_plans_and_writes_calendars_on_the_embedded_default(env, tmp_path):
    root = Path(__file__).resolve().parents[1]
    assert (
        automation("people", "import", "config/example/people.csv", env=env, cwd=root).returncode
        == 0
    )
    first = automation("run", "--once", env=env, cwd=root)
    assert first.returncode == 0, first.stderr
    assert b"in-process worker" in first.stderr
    calendars = list((tmp_path / "data" / "calendars").glob("*.ics"))
    assert len(calendars) == 25
    with sqlite3.connect(tmp_path / "data" / "automation.db") as db:
        failed = db.execute("SELECT count(*) FROM tasks WHERE state = 'failed'").fetchone()
        series = db.execute("SELECT count(*) FROM checkin_series").fetchone()
    assert failed == (0,) and series == (24,)


def test_worker_refuses_the_stub_broker_with_a_fix(env):
    result = automation("worker", env=env)
    assert result.returncode == 78 and b"AUTOMATION_BROKER_URL" in result.stderr
