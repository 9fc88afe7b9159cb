"""Console accounts and sessions (automation/services/accounts.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import select, text

from automation import audit
from automation.db import transaction
from automation.models import AuditEntry, ConsoleSession
from automation.services import accounts
from automation.services.accounts import AccountError, SignInRefused
from tests.conftest import start_organization

PASSWORD = "correct horse battery staple"
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def org(rt, tmp_path) -> int:  # type: ignore[no-untyped-def]
    org_id = start_organization(rt, tmp_path)
    with transaction(rt.factory) as session:
        accounts.create_account(
            session, org_id, email="HR@acme.test", name="Hal", role="hr_admin",
            now=T0, actor="cli", password=PASSWORD,
        )  # fmt: skip
        accounts.create_account(
            session, org_id, email="boss@acme.test", name="Bea", role="manager",
            now=T0, actor="cli", password=PASSWORD,
        )  # fmt: skip
    return org_id


def sign_in(rt, org: int, email: str, password: str, now: dt.datetime):  # type: ignore[no-untyped-def]
    """As the console does: the refusal is committed, then answered."""
    with transaction(rt.factory) as session:
        signed = accounts.sign_in(session, org, email, password, now)
    if signed is None:
        raise SignInRefused()
    return signed


def who(rt, token: str | None, now: dt.datetime) -> str | None:  # type: ignore[no-untyped-def]
    with transaction(rt.factory) as session:
        found = accounts.authenticate(session, token, now)
        return found[0].email if found else None


def test_passwords_are_salted_scrypt_hashes_checked_in_constant_time():
    one, two = accounts.hash_password(PASSWORD), accounts.hash_password(PASSWORD)
    assert one != two and one.startswith("scrypt$16384$8$1$")
    assert accounts.verify_password(PASSWORD, one)
    assert not accounts.verify_password(PASSWORD + "!", one)
    for broken in (None, "", "md5$x", "scrypt$1$2$3", one.replace("scrypt", "bcrypt")):
        assert not accounts.verify_password(PASSWORD, broken)


def test_accounts_are_checked_when_created(rt, org):
    cases = {
        "role 'owner' is not one of": dict(email="x@acme.test", role="owner"),
        "is not an email address": dict(email="nobody", role="hr_admin"),
        "at least 12 characters": dict(email="ana@acme.test", role="hr_partner", password="short"),
        "already has an account": dict(email="hr@ACME.test", role="hr_admin"),
        "not a person on record": dict(email="stranger@acme.test", role="manager"),
    }
    for message, kwargs in cases.items():
        with pytest.raises(AccountError, match=message), transaction(rt.factory) as session:
            accounts.create_account(
                session, org, name="X", now=T0, actor="cli",
                **{"password": PASSWORD, **kwargs},
            )  # fmt: skip
    with rt.factory() as session:
        created = session.scalars(
            select(AuditEntry.data).where(AuditEntry.action == "console.account_created")
        ).all()
    assert [d["email"] for d in created] == ["hr@acme.test", "boss@acme.test"]


def test_a_session_is_a_token_the_database_only_knows_the_hash_of(rt, org):
    signed = sign_in(rt, org, " HR@Acme.test ", PASSWORD, T0)
    assert signed.account.role == "hr_admin"
    assert who(rt, signed.token, T0 + dt.timedelta(minutes=5)) == "hr@acme.test"
    assert who(rt, signed.token + "x", T0) is None and who(rt, None, T0) is None
    with rt.factory() as session:
        row = session.scalars(select(ConsoleSession)).one()
        dump = " ".join(
            str(v)
            for table in ("console_sessions", "console_accounts", "audit_log")
            for r in session.execute(text(f"SELECT * FROM {table}"))
            for v in r
        )
    assert signed.token not in dump and PASSWORD not in dump
    assert accounts.csrf_ok(row, signed.csrf_token)
    assert not accounts.csrf_ok(row, None) and not accounts.csrf_ok(row, "forged")


def test_sessions_end_when_expired_idle_signed_out_or_the_account_disabled(rt, org):
    first = sign_in(rt, org, "hr@acme.test", PASSWORD, T0)
    # Seen every hour: still signed in at 11 h; gone at 12 h however active.
    for hours in range(1, 12):
        assert who(rt, first.token, T0 + dt.timedelta(hours=hours)) == "hr@acme.test"
    assert who(rt, first.token, T0 + dt.timedelta(hours=12)) is None
    idle = sign_in(rt, org, "hr@acme.test", PASSWORD, T0)
    assert who(rt, idle.token, T0 + dt.timedelta(hours=2)) is None  # two hours untouched
    out = sign_in(rt, org, "hr@acme.test", PASSWORD, T0)
    with transaction(rt.factory) as session:
        assert accounts.sign_out(session, out.token, T0)
    assert who(rt, out.token, T0) is None
    kept = sign_in(rt, org, "boss@acme.test", PASSWORD, T0)
    with transaction(rt.factory) as session:
        accounts.set_active(session, org, "boss@acme.test", False, T0, actor="hr@acme.test")
    assert who(rt, kept.token, T0) is None
    with pytest.raises(SignInRefused):
        sign_in(rt, org, "boss@acme.test", PASSWORD, T0)


def test_five_wrong_passwords_lock_the_account_and_refusals_all_read_the_same(rt, org):
    refusals = set()
    for _ in range(accounts.MAX_FAILED_SIGN_INS):
        with pytest.raises(SignInRefused) as refused:
            sign_in(rt, org, "hr@acme.test", "wrong password!!", T0)
        refusals.add(str(refused.value))
    with pytest.raises(SignInRefused) as refused:  # locked: the right password is refused
        sign_in(rt, org, "hr@acme.test", PASSWORD, T0 + dt.timedelta(minutes=14))
    refusals.add(str(refused.value))
    with pytest.raises(SignInRefused) as refused:  # no such account
        sign_in(rt, org, "ghost@acme.test", PASSWORD, T0)
    refusals.add(str(refused.value))
    assert len(refusals) == 1
    assert sign_in(rt, org, "hr@acme.test", PASSWORD, T0 + dt.timedelta(minutes=15)).token
    with rt.factory() as session:
        reasons = [
            d["reason"]
            for d in session.scalars(
                select(AuditEntry.data)
                .where(AuditEntry.action == "console.sign_in_refused")
                .order_by(AuditEntry.seq)
            )
        ]
        assert audit.verify(session, org).intact
    assert reasons == ["wrong password"] * 4 + ["wrong password; locked", "locked"]


def test_a_deletion_request_erases_the_persons_console_account_and_ends_its_sessions(rt, org):
    from automation.services.privacy import erase_person, find_person

    signed = sign_in(rt, org, "boss@acme.test", PASSWORD, T0)
    with transaction(rt.factory) as session:
        boss = find_person(session, org, "boss@acme.test")
        removed = erase_person(session, boss, T0, actor="hr@acme.test", request_id=None)
    assert removed["console_accounts"] == 1
    assert who(rt, signed.token, T0) is None
    with pytest.raises(SignInRefused):
        sign_in(rt, org, "boss@acme.test", PASSWORD, T0)
    with rt.factory() as session:
        dump = " ".join(
            str(v)
            for table in ("console_accounts", "audit_log")
            for r in session.execute(text(f"SELECT * FROM {table}"))
            for v in r
        ).lower()
        assert audit.verify(session, org).intact
    assert re.findall(r"boss@acme\.test|\bbea\b", dump) == []
