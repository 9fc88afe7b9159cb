"""The `automation` command as a user (or an MTA) runs it: real processes, real files."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from automation.cli import main
from tests.conftest import start_organization

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
    "not_recorded",
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
        timeout=600,  # the demo's runs share two cores with three other test processes
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
    assert missing.returncode == 64 and b"known: address_failing, agenda," in missing.stderr


def test_demo_runs_the_whole_loop_deterministically(env, tmp_path):
    # Two simulated weeks have one of everything counted (a longer run only repeats them).
    first = automation("demo", "--weeks", "2", "--json", "--out", str(tmp_path / "one"), env=env)
    assert first.returncode == 0, first.stderr
    counts = json.loads(first.stdout)
    assert {k: counts[k] for k in KEYS if counts[k] <= 0} == {}
    assert counts["audit_chain_intact"] is True
    assert (tmp_path / "one" / "report.html").stat().st_size > 1000
    # Its settings file opens the demo's data from anywhere (the console, every command).
    listed = automation(
        "--config", str(tmp_path / "one" / "settings.toml"), "people", "list", "--json",
        env={k: v for k, v in env.items() if k != "AUTOMATION_DATA_DIR"}, cwd=tmp_path,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == counts["people"]
    # Everyone is in at least one 1:1 (the head as the managers' manager).
    assert len(list((tmp_path / "one" / "calendars").glob("*.ics"))) == counts["people"]
    second = automation("demo", "--weeks", "2", "--json", "--out", str(tmp_path / "two"), env=env)
    again = json.loads(second.stdout)
    assert {k: again[k] for k in KEYS} == {k: counts[k] for k in KEYS}
    mail_one = sorted(p.read_bytes() for p in (tmp_path / "one/mail/outbox/new").iterdir())
    mail_two = sorted(p.read_bytes() for p in (tmp_path / "two/mail/outbox/new").iterdir())
    assert mail_one == mail_two  # same seed, byte-identical mail
    for feed in (tmp_path / "one" / "calendars").glob("*.ics"):  # and calendars (DTSTAMP too)
        assert feed.read_bytes() == (tmp_path / "two" / "calendars" / feed.name).read_bytes()


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


SAMPLE_REPLY = b"""From: Bea Boss <boss@acme.test>
To: checkin+1-o5-abc@reply.example.com
Subject: Re: How did your check-in with Ana go?
Date: Tue, 03 Mar 2026 10:00:00 +0000
Message-ID: <r1@client.test>
Content-Type: text/plain; charset=utf-8

1. Shipped the onboarding docs.
2. Waiting on legal.
Rating: 4
Action: Ana to draft the plan by Friday
#reschedule Thu 14:00

-- \nBea
"""


def test_parse_reply_json_prints_what_would_be_recorded(env, tmp_path):
    message = tmp_path / "reply.eml"
    message.write_bytes(SAMPLE_REPLY)
    result = automation("parse-reply", "--json", str(message), env=env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["answers"] == {"1": "Shipped the onboarding docs.", "2": "Waiting on legal."}
    assert out["rating"] == 4
    assert out["action_items"] == [
        {"text": "Ana to draft the plan by Friday", "owner": "Ana", "due": "2026-03-06"}
    ]
    assert out["commands"] == [{"name": "reschedule", "argument": "Thu 14:00"}]
    assert out["reply_text"].startswith("1. Shipped the onboarding docs.")
    assert out["auto_reply"] is False and out["bounce"] is False
    # The default questions are the first cadence's.
    assert out["questions"][0].startswith("What went well")
    # From stdin, with the questions from a file, in words.
    questions = tmp_path / "questions.txt"
    questions.write_text("1. First thing?\n2. Second thing?\n")
    text = automation(
        "parse-reply", "-", "--questions", str(questions), env=env, stdin=message.read_bytes()
    )
    assert text.returncode == 0, text.stderr
    out_text = text.stdout.decode()
    assert "  1. First thing?\n     Shipped the onboarding docs." in out_text
    assert "Rating:       4" in out_text and "#reschedule Thu 14:00" in out_text
    assert not (tmp_path / "data" / "automation.db").exists()  # pure: no database


def test_parse_reply_recognises_automatic_messages(env, tmp_path):
    ooo = SAMPLE_REPLY.replace(b"Subject: Re:", b"Auto-Submitted: auto-replied\nSubject: Re:")
    out = json.loads(automation("parse-reply", "--json", "-", env=env, stdin=ooo).stdout)
    assert out["auto_reply"] is True and out["would_record"] is False
    bounce = (
        b"From: MAILER-DAEMON@mx.test\nSubject: Undelivered Mail\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
        b"--B\nContent-Type: text/plain\n\nfailed\n\n--B\nContent-Type: message/delivery-status\n"
        b"\nReporting-MTA: dns; mx.test\n\nFinal-Recipient: rfc822; boss@acme.test\n"
        b"Action: failed\nStatus: 5.1.1\n\n--B--\n"
    )
    result = automation("parse-reply", "-", env=env, stdin=bounce)
    assert result.returncode == 0, result.stderr
    assert b"bounce: never recorded; failing: boss@acme.test" in result.stdout
    missing = automation("parse-reply", str(tmp_path / "nope.eml"), env=env)
    assert missing.returncode == 66 and b"cannot read" in missing.stderr


def test_config_check_reports_bad_delegates(env, tmp_path):
    root = Path(__file__).resolve().parents[1]
    config = tmp_path / "config"
    shutil.copytree(root / "config", config)
    (config / "delegates.toml").write_text(
        '[[delegate]]\nfor = "boss@acme.test"\n'
        '[[delegate]]\nfor = "boss@acme.test"\ndelegate = "not an address"\nteam = "x"\n'
        '[[delegate]]\nfor = "a@acme.test"\ndelegate = "A@acme.test"\n'
    )
    result = automation("config", "check", env={**env, "AUTOMATION_CONFIG_DIR": str(config)})
    assert result.returncode == 78
    err = result.stderr.decode()
    path = config / "delegates.toml"
    assert f"{path}: delegate[0].delegate: missing (fix: add delegate = " in err
    assert f"{path}: delegate[1].delegate: expected an email address, got 'not an address'" in err
    assert f"{path}: delegate[1].team: unknown key" in err
    assert f"{path}: delegate[2].delegate: a@acme.test cannot be their own delegate" in err
    # The runtime refuses to start on it too, naming the same problems.
    run = automation("ingest-mail", env={**env, "AUTOMATION_CONFIG_DIR": str(config)}, stdin=b"x")
    assert run.returncode == 75 and b"delegate[1].delegate" in run.stderr


def test_inbox_quarantine_list_and_show_in_a_real_process(env):
    garbage = b"Subject: not for us\r\nFrom: someone@else.test\r\n\r\nhello\r\n"
    assert automation("ingest-mail", env=env, stdin=garbage).returncode == 0
    listed = automation("inbox", "quarantine", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    header, line = listed.stdout.decode().splitlines()
    assert header.split() == ["id", "received_at", "from", "state", "reason"]
    assert "someone@else.test" in line and "quarantined" in line
    assert "no check-in reference" in line
    shown = automation("inbox", "quarantine", "show", line.split()[0], env=env)
    assert b"no check-in reference" in shown.stdout and b"--- decoded text ---\nhello" in (
        shown.stdout
    )
    raw = automation("inbox", "quarantine", "show", line.split()[0], "--raw", env=env)
    assert raw.stdout == garbage
    nothing = automation("inbox", "quarantine", "show", "999", env=env)
    assert nothing.returncode == 65 and b"no inbound message 999" in nothing.stderr


def completions(line: str, env: dict[str, str], tmp_path: Path) -> list[str]:
    """What the shell would offer after ``line`` (argcomplete's protocol, as its shell code
    calls it: the line and cursor in the environment, the answer in a file)."""
    out = tmp_path / "completions"
    ask = {
        **env,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
    }
    result = automation(env=ask)
    assert result.returncode == 0, result.stderr.decode()
    return out.read_text().split()


def test_the_shell_completes_commands_subcommands_and_options(env, tmp_path):
    assert completions("automation pe", env, tmp_path) == ["people"]
    assert set(completions("automation people ", env, tmp_path)) >= {"import", "mail-ok"}
    assert "--weeks" in completions("automation demo --w", env, tmp_path)
    assert completions("automation completion z", env, tmp_path) == ["zsh"]
    script = automation("completion", "bash", env=env)
    assert script.returncode == 0
    assert b"complete " in script.stdout and b"automation" in script.stdout


def test_console_accounts_from_the_command_line(env, tmp_path):
    people = tmp_path / "people.csv"
    people.write_text(
        "email,name,timezone,manager_email,hr_partner_email\n"
        "boss@x.test,Bea,UTC,,\nana@x.test,Ana,UTC,boss@x.test,\n"
    )
    assert automation("people", "import", str(people), env=env).returncode == 0
    add = automation(
        "console", "account", "add", "Boss@x.test", "--role", "manager", "--password-stdin",
        "--json", env=env, stdin=b"a long enough password\n",
    )  # fmt: skip
    assert add.returncode == 0, add.stderr.decode()
    assert json.loads(add.stdout)["email"] == "boss@x.test"
    short = automation(
        "console", "account", "add", "hr@x.test", "--role", "hr_admin", "--password-stdin",
        env=env, stdin=b"short\n",
    )  # fmt: skip
    assert short.returncode == 65 and b"at least 12 characters" in short.stderr
    assert automation("console", "account", "disable", "boss@x.test", env=env).returncode == 0
    listed = json.loads(automation("console", "account", "list", "--json", env=env).stdout)
    assert [(a["email"], a["role"], a["active"], a["sign_in"]) for a in listed] == [
        ("boss@x.test", "manager", False, "password")
    ]


# --- progress bars, tables and --json ---------------------------------------------------------
# In-process runs of main() on the test database (SQLite and PostgreSQL), and real processes
# on a pseudo-terminal where what matters is what a terminal shows.

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal, as stderr does when a person runs the command."""

    def isatty(self) -> bool:
        return True


def cli_env(monkeypatch, settings) -> None:  # type: ignore[no-untyped-def]
    """The command line on the test's database and organization."""
    for key, value in {
        "AUTOMATION_DATABASE_URL": settings.database_url,
        "AUTOMATION_DATA_DIR": str(settings.data_dir),
        "AUTOMATION_ORGANIZATION": settings.organization,
        "AUTOMATION_SECRET_KEY": settings.secret_key,
        "AUTOMATION_CONFIG_DIR": str(settings.config_dir),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AUTOMATION_CONFIG", raising=False)
    monkeypatch.chdir(PROJECT_ROOT)


@pytest.fixture
def acme(rt, settings, tmp_path, monkeypatch) -> int:  # type: ignore[no-untyped-def]
    """Bea Boss and her reports, planned; the command line pointed at them."""
    org = start_organization(rt, tmp_path)
    cli_env(monkeypatch, settings)
    return org


def run(capsys, *argv: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv: str) -> Any:  # type: ignore[no-untyped-def]
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    assert out.count("\n") == 1  # one document on one line: `| jq`, `| tail -n 1`
    return json.loads(out)


def iso(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    assert moment.utcoffset() == dt.timedelta(0), text  # ISO 8601, in UTC
    return moment


def test_people_import_list_and_mail_ok_print_json(acme, capsys, tmp_path):
    people = tmp_path / "more.csv"
    people.write_text(
        "email,name,timezone,manager_email,hr_partner_email,active\n"
        "boss@acme.test,Bea Boss,America/New_York,,hr@acme.test,\n"
        "hr@acme.test,Hal Hr,Europe/London,boss@acme.test,hr@acme.test,\n"
        "ana@acme.test,Ana Souza,Europe/Berlin,boss@acme.test,hr@acme.test,\n"
        "kai@acme.test,Kai Tanaka,Asia/Tokyo,boss@acme.test,hr@acme.test,false\n"
        "zoe@acme.test,Zoë Zed,Asia/Tokyo,ana@acme.test,hr@acme.test,\n"
    )
    imported = run_json(capsys, "people", "import", str(people))
    assert imported == {
        "organization": "acme", "file": str(people), "created": 1, "updated": 1,
        "unchanged": 3,
    }  # fmt: skip

    active = run_json(capsys, "people", "list")
    assert [p["email"] for p in active] == [
        "ana@acme.test", "boss@acme.test", "hr@acme.test", "zoe@acme.test",
    ]  # fmt: skip
    assert active[3] == {
        "email": "zoe@acme.test",
        "name": "Zoë Zed",
        "timezone": "Asia/Tokyo",
        "manager_email": "ana@acme.test",
        "hr_partner_email": "hr@acme.test",
        "role": None,
        "active": True,
        "left_at": None,
        "mail_failing_since": None,
    }
    assert active[1]["manager_email"] is None
    everyone = {p["email"]: p for p in run_json(capsys, "people", "list", "--all")}
    kai = everyone["kai@acme.test"]
    assert kai["active"] is False and iso(kai["left_at"]) <= dt.datetime.now(dt.UTC)

    code, out, _ = run(capsys, "people", "list", "--all")
    header, *lines = out.splitlines()
    assert code == 0 and header.split() == [
        "email", "name", "timezone", "manager", "hr_partner", "role", "active",
    ]  # fmt: skip
    assert lines[3].split() == [
        "kai@acme.test", "Kai", "Tanaka", "Asia/Tokyo", "boss@acme.test", "hr@acme.test", "-",
        "no",
    ]  # fmt: skip

    cleared = run_json(capsys, "people", "mail-ok", "Ana@acme.test", "--reason", "checked")
    assert cleared == {"organization": "acme", "email": "ana@acme.test", "released": 0}


def test_inbox_commands_print_json_and_cut_the_table_to_the_terminal(acme, capsys, monkeypatch):
    raw = (
        b"Subject: not for us\r\nFrom: someone.with.a.long.address@else.test\r\n"
        b"Message-ID: <x1@else.test>\r\n\r\nhello\r\n"
    )
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    stored = run_json(capsys, "ingest-mail")
    assert stored["duplicate"] is False and stored["result"].startswith("quarantined")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    again = run_json(capsys, "ingest-mail")
    assert again == {"inbound_id": again["inbound_id"], "duplicate": True, "result": "duplicate"}

    (row,) = run_json(capsys, "inbox", "quarantine", "list")
    assert row["id"] == stored["inbound_id"]
    assert (row["from"], row["subject"], row["state"], row["source"]) == (
        "someone.with.a.long.address@else.test", "not for us", "quarantined", "pipe",
    )  # fmt: skip
    assert "no check-in reference" in row["reason"]
    assert (row["sha256"], row["size"]) == (hashlib.sha256(raw).hexdigest(), len(raw))
    assert iso(row["received_at"]) <= dt.datetime.now(dt.UTC)

    shown = run_json(capsys, "inbox", "quarantine", "show", str(row["id"]))
    assert shown["id"] == row["id"] and shown["reason"] == row["reason"]
    assert (shown["from"], shown["subject"], shown["text"].strip()) == (
        "someone.with.a.long.address@else.test", "not for us", "hello",
    )  # fmt: skip
    assert shown["message_id"] == "<x1@else.test>" and shown["auto_reply"] is False
    with pytest.raises(SystemExit):  # the raw bytes or JSON, not both
        main(["inbox", "quarantine", "show", str(row["id"]), "--raw", "--json"])

    released = run_json(capsys, "inbox", "quarantine", "release", str(row["id"]))
    assert released["id"] == row["id"] and released["state"] == "quarantined"
    assert released["result"].startswith("quarantined")  # still nobody's reply

    # On a 40-column terminal the listing fits, the long cells cut with "…".
    monkeypatch.setenv("COLUMNS", "40")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(["inbox", "quarantine", "list"]) == 0
    header, line = terminal.getvalue().splitlines()
    assert header.split() == ["id", "received_at", "from", "state", "reason"]
    assert len(header) <= 40 and len(line) <= 40 and "…" in line
    assert line.split()[0] == str(row["id"])


def test_operator_commands_print_their_result_as_json(rt, acme, capsys, tmp_path):
    from automation.db import transaction
    from automation.models import Task, TaskState
    from automation.services.tasks import create_task

    goals = tmp_path / "goals.csv"
    goals.write_text("goal,success_criteria,owner,due\nShip X,Deployed to prod,employee,\n")
    started = run_json(
        capsys, "pip", "start", "ana@acme.test", "--template", "60-day", "--goals", str(goals)
    )
    assert (started["employee"], started["template"]) == ("ana@acme.test", "60-day")
    ends = dt.date.fromisoformat(started["ends_on"])
    extended = run_json(capsys, "pip", "extend", "ana@acme.test", "--days", "30")
    assert extended == {
        "organization": "acme",
        "id": started["id"],
        "employee": "ana@acme.test",
        "days": 30,
        "ends_on": (ends + dt.timedelta(days=30)).isoformat(),
    }
    warned = run_json(capsys, "warning", "create", "ana@acme.test", "--reason", "Late")
    assert warned["employee"] == "ana@acme.test" and warned["kind"] == "written_warning"
    assert isinstance(warned["id"], int)
    closed = run_json(capsys, "pip", "close", "ana@acme.test", "--outcome", "ended")
    assert closed == {
        "organization": "acme", "id": started["id"], "employee": "ana@acme.test",
        "outcome": "ended",
    }  # fmt: skip
    (pip,) = run_json(capsys, "pip", "list")
    assert (pip["id"], pip["state"], pip["outcome"]) == (started["id"], "closed", "ended")
    assert pip["ends_on"] == extended["ends_on"]
    code, out, _ = run(capsys, "pip", "list")
    header, line = out.splitlines()
    assert header.split()[:4] == ["id", "employee", "state", "outcome"]
    assert line.split()[:4] == [str(started["id"]), "ana@acme.test", "closed", "ended"]

    item = run_json(capsys, "development", "add", "kai@acme.test", "--kind", "skill",
                    "--text", "Public speaking")  # fmt: skip
    assert item["employee"] == "kai@acme.test" and item["kind"] == "skill"
    done = run_json(capsys, "development", "close", str(item["id"]))
    assert done == {"organization": "acme", "id": item["id"], "status": "done"}
    assert run_json(capsys, "development", "list") == []  # closed: only with --all
    (listed,) = run_json(capsys, "development", "list", "--all")
    assert (listed["id"], listed["status"], listed["text"]) == (
        item["id"],
        "done",
        "Public speaking",
    )

    with transaction(rt.factory) as session:
        task = create_task(session, acme, "send", "send:cli-test", 1, rt.now(), rt.now())
        task.state, task.attempts, task.last_error = TaskState.FAILED, 5, "SMTP 550\nmore"
        task_id = task.id
    (failed,) = run_json(capsys, "jobs", "failed")
    assert (failed["id"], failed["kind"], failed["attempts"]) == (task_id, "send", 5)
    iso(failed["failed_at"])
    counts = {(c["kind"], c["state"]): c for c in run_json(capsys, "jobs", "status")}
    assert counts[("send", "failed")]["count"] == 1
    assert iso(counts[("send", "failed")]["oldest_due"]) == rt.now()
    code, out, _ = run(capsys, "jobs", "failed")
    assert out.splitlines()[0].split()[:3] == ["id", "kind", "attempts"]
    assert f"{task_id}  send" in out and "SMTP 550" in out and "more" not in out
    assert run_json(capsys, "jobs", "retry", str(task_id)) == {
        "organization": "acme", "retried": [task_id], "count": 1,
    }  # fmt: skip
    with rt.factory() as session:
        assert session.get(Task, task_id).state == TaskState.PENDING

    hold = run_json(capsys, "privacy", "hold", "place", "kai@acme.test", "--reason", "Case 9")
    assert hold == {
        "organization": "acme", "id": hold["id"], "employee": "kai@acme.test", "state": "active",
    }  # fmt: skip
    (row,) = run_json(capsys, "privacy", "hold", "list")
    assert (row["id"], row["person"], row["reason"], row["released_at"]) == (
        hold["id"], "kai@acme.test", "Case 9", None,
    )  # fmt: skip
    iso(row["placed_at"])
    code, out, _ = run(capsys, "privacy", "hold", "list")
    assert "kai@acme.test" in out and "ACTIVE" in out and out.split()[0] == "id"
    released = run_json(capsys, "privacy", "hold", "release", "kai@acme.test")
    assert released == {
        "organization": "acme",
        "employee": "kai@acme.test",
        "released": [hold["id"]],
    }
    assert run_json(capsys, "privacy", "hold", "list") == []


def test_console_account_commands_print_json_and_a_table(acme, capsys):
    created = run_json(capsys, "console", "account", "add", "hr@acme.test", "--role",
                       "hr_partner", "--no-password")  # fmt: skip
    assert (created["email"], created["role"]) == ("hr@acme.test", "hr_partner")
    disabled = run_json(capsys, "console", "account", "disable", "HR@acme.test")
    assert disabled == {"organization": "acme", "email": "hr@acme.test", "active": False}
    (account,) = run_json(capsys, "console", "account", "list")
    assert (account["email"], account["active"], account["last_sign_in_at"]) == (
        "hr@acme.test", False, None,
    )  # fmt: skip
    assert run_json(capsys, "console", "account", "enable", "hr@acme.test")["active"] is True
    code, out, _ = run(capsys, "console", "account", "list")
    header, line = out.splitlines()
    assert header.split()[:4] == ["email", "name", "role", "state"]
    assert "hr_partner" in line and "active" in line and "never" in line


def test_config_check_and_templates_print_json(env, tmp_path, monkeypatch, capsys):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(PROJECT_ROOT)
    ok = run_json(capsys, "config", "check")
    assert ok["ok"] is True and ok["problems"] == []
    assert ok["config_dir"] == str(PROJECT_ROOT / "config")
    config = tmp_path / "config"
    (config / "cadences").mkdir(parents=True)
    (config / "cadences" / "bad.toml").write_text(
        'name = "bad"\n[schedule]\nfrequency = "fortnightly"\n[followup]\nquestions = ["ok?"]\n'
    )
    monkeypatch.setenv("AUTOMATION_CONFIG_DIR", str(config))
    code, out, _ = run(capsys, "config", "check", "--json")
    report = json.loads(out)
    assert code == 78 and report["ok"] is False
    assert {
        "file": str(config / "cadences" / "bad.toml"),
        "field": "schedule.frequency",
    }.items() <= report["problems"][0].items()
    assert set(report["problems"][0]) == {"file", "field", "problem", "fix"}
    monkeypatch.delenv("AUTOMATION_CONFIG_DIR")

    names = run_json(capsys, "templates", "list")
    assert {"agenda", "followup", "reminder"} <= set(names) and names == sorted(names)
    preview = run_json(capsys, "templates", "preview", "followup")
    assert preview["name"] == "followup" and preview["subject"]
    assert "\n1. " in preview["text"] and "<" in preview["html"]


def use_calendar(monkeypatch, calendar) -> None:  # type: ignore[no-untyped-def]
    """The commands' runtime talks to ``calendar`` (an in-memory provider)."""
    from automation import cli

    built = cli._inbox_runtime

    def with_calendar(args):  # type: ignore[no-untyped-def]
        rt = built(args)
        rt.calendar = calendar
        return rt

    monkeypatch.setattr(cli, "_inbox_runtime", with_calendar)


def test_calendars_sync_shows_a_bar_on_a_terminal_and_prints_json(
    rt, settings, tmp_path, monkeypatch, capsys
):
    from tests.test_calendar_sync import MemoryCalendar

    memory = MemoryCalendar()
    rt.calendar = memory
    start_organization(rt, tmp_path)
    cli_env(monkeypatch, settings)
    use_calendar(monkeypatch, memory)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)

    (synced,) = run_json(capsys, "calendars", "sync", "--full")
    assert (synced["provider"], synced["calendar"]) == ("google", "boss@acme.test")
    assert synced["has_cursor"] is True and synced["error"] is None
    assert iso(synced["synced_at"]) == iso(synced["full_synced_at"])
    bar = terminal.getvalue()
    assert "syncing" in bar and "1/1 [" in bar and "calendar/s" in bar
    assert "syncing" not in capsys.readouterr().out  # never on stdout

    for quiet in (["--no-progress"], ["-q"]):
        terminal.truncate(0), terminal.seek(0)
        assert main([*quiet, "calendars", "sync"]) == 0 and terminal.getvalue() == ""
    assert main(["calendars", "sync", "--quiet"]) == 0 and terminal.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe: no bar either
    assert main(["calendars", "sync"]) == 0 and "\r" not in sys.stderr.getvalue()

    monkeypatch.setattr(sys, "stderr", terminal)
    terminal.truncate(0), terminal.seek(0)
    (connected,) = run_json(capsys, "calendars", "connect")
    assert (connected["calendar"], connected["error"]) == ("boss@acme.test", None)
    assert iso(connected["channel_expires_at"]) > dt.datetime.now(dt.UTC)  # push channel open
    assert "connecting" in terminal.getvalue() and "1/1 [" in terminal.getvalue()

    (status,) = run_json(capsys, "calendars", "status")
    assert status["calendar"] == "boss@acme.test" and status["has_cursor"] is True
    assert status["channel_expires_at"] == connected["channel_expires_at"]
    code, out, _ = run(capsys, "calendars", "status")
    header, line = out.splitlines()
    assert header.split() == [
        "provider", "calendar", "synced_at", "full_synced_at", "channel_until", "result",
    ]  # fmt: skip
    assert line.split()[:2] == ["google", "boss@acme.test"]


def test_export_bundle_shows_a_bar_on_a_terminal_and_quiet_keeps_stderr_clean(
    acme, tmp_path, monkeypatch, capsys
):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    zipped, out = tmp_path / "ana.zip", tmp_path / "ana.json"
    export = ["export", "ana@acme.test", "--as", "boss@acme.test", "--out", str(out)]
    assert main([*export, "--bundle", str(zipped)]) == 0
    with zipfile.ZipFile(zipped) as archive:
        files = len(archive.namelist())
    shown = terminal.getvalue()
    assert "bundling: 100%" in shown and f"{files}/{files} [" in shown and "file/s" in shown
    assert "exported " in shown  # the remark after the bar
    terminal.truncate(0), terminal.seek(0)
    assert main([*export, "--bundle", str(zipped), "--quiet"]) == 0
    assert terminal.getvalue() == "" and json.loads(out.read_bytes())["employee"]


def in_terminal(*args: str, env: dict[str, str], cwd: Path = PROJECT_ROOT) -> tuple[int, str, str]:
    """Run `automation` with stderr on a 100-column pseudo-terminal, as in a person's shell, and
    stdout on a pipe, as when its result goes to a file; (exit code, stdout, stderr)."""
    import fcntl
    import pty
    import struct
    import termios

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATION_")}
    full_env.update(env)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "automation.cli", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=full_env, cwd=cwd,
    )  # fmt: skip
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert process.stdout is not None
    out = process.stdout.read()
    return process.wait(timeout=300), out.decode(), shown.decode()


def test_people_import_draws_a_bar_only_when_stderr_is_a_terminal(env):
    code, out, shown = in_terminal("people", "import", "config/example/people.csv", env=env)
    assert code == 0  # stdout: the result only
    assert out == "imported config/example/people.csv: 25 created, 0 updated, 0 unchanged\n"
    assert "importing: 100%" in shown and "25/25 [" in shown and "person/s]" in shown
    assert max(len(line) for line in shown.replace("\r", "\n").splitlines()) <= 100
    piped = automation("people", "import", "config/example/people.csv", env=env, cwd=PROJECT_ROOT)
    assert piped.returncode == 0 and piped.stderr == b""  # a pipe or a log: nothing
    for quiet in ("--no-progress", "-q"):
        code, out, shown = in_terminal("people", "import", "config/example/people.csv", quiet,
                                       "--json", env=env)  # fmt: skip
        assert code == 0 and shown == "" and json.loads(out)["unchanged"] == 25


def test_demo_draws_a_bar_of_simulated_days(env, tmp_path):
    code, out, shown = in_terminal("demo", "--weeks", "1", "--out", str(tmp_path / "d"), "--json",
                                   env=env)  # fmt: skip
    assert code == 0 and json.loads(out)["weeks"] == 1
    assert "simulating: 100%" in shown and "7/7 [" in shown and "day" in shown
