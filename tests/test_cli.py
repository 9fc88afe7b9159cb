"""The `automation` command as a user (or an MTA) runs it: real processes, real files."""

from __future__ import annotations

import json
import os
import shutil
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
    assert missing.returncode == 64 and b"known: address_failing, agenda," in missing.stderr


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
