"""Settings: defaults, file, environment, and errors that name file, field and fix."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from automation.config import check_all
from automation.errors import ConfigError
from automation.settings import load_settings


def test_defaults_are_the_embedded_set_up(tmp_path: Path):
    s = load_settings(environ={"AUTOMATION_DATA_DIR": str(tmp_path)})
    assert s.database == f"sqlite:///{tmp_path / 'automation.db'}"
    assert s.broker_url == "stub"
    assert s.outbox == tmp_path / "mail" / "outbox" and s.inbox == tmp_path / "mail" / "inbox"
    assert s.calendars == tmp_path / "calendars"


def test_environment_wins_over_the_file(tmp_path: Path):
    file = tmp_path / "settings.toml"
    file.write_text('broker_url = "redis://file:6379/0"\nholidays = ["2026-12-25"]\n')
    s = load_settings(
        file,
        environ={
            "AUTOMATION_BROKER_URL": "amqp://guest:guest@localhost:5672/",
            "AUTOMATION_DATABASE_URL": "postgresql+psycopg://u@localhost/db",
            "AUTOMATION_LEASE_SECONDS": "60",
        },
    )
    assert s.broker_url.startswith("amqp://") and s.database.startswith("postgresql")
    assert s.lease_seconds == 60 and s.holidays == (dt.date(2026, 12, 25),)


def test_secret_from_a_file_and_never_echoed(tmp_path: Path):
    secret = tmp_path / "key"
    secret.write_text("s3cret-value\n")
    s = load_settings(environ={"AUTOMATION_SECRET_KEY_FILE": str(secret)})
    assert s.secret_key == "s3cret-value" and "s3cret" not in repr(s)


def test_bad_values_name_file_field_and_fix(tmp_path: Path):
    file = tmp_path / "settings.toml"
    file.write_text(
        'default_timezone = "Mars/Olympus"\nbusiness_days = ["mon", "funday"]\n'
        'lease_secs = 5\ndatabase_url = "mysql://secret@db"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_settings(file, environ={"AUTOMATION_TICK_SECONDS": "soon"})
    text = str(err.value)
    assert f"{file}: default_timezone: expected an IANA time zone" in text
    assert "Europe/Berlin" in text
    assert f"{file}: business_days" in text
    assert f"{file}: lease_secs: unknown setting" in text and "lease_seconds" in text
    assert "environment AUTOMATION_TICK_SECONDS: tick_seconds: expected a whole number" in text
    assert "secret@db" not in text  # connection strings may hold passwords


def test_a_named_missing_file_is_an_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_broken_toml_names_the_line(tmp_path: Path):
    file = tmp_path / "settings.toml"
    file.write_text("data_dir = \n")
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 1"):
        load_settings(file, environ={})


def test_config_check_passes_on_the_shipped_configuration():
    settings, problems = check_all()
    assert settings is not None and problems == []
