"""Privacy: who may read records, legal holds, deletion requests, retention, and an audit
chain that survives the erasure of its content (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from automation import audit
from automation.cli import main
from automation.config import PrivacyPolicy, load_privacy
from automation.db import make_engine, migrate, transaction
from automation.errors import ConfigError
from automation.models import (
    AuditEntry,
    Base,
    ConversationRecord,
    ErasureRequest,
    InboundMessage,
    InboundState,
    OutboundMessage,
    Person,
    PipReview,
    Reassignment,
)
from automation.people import import_people_file
from automation.services import escalation, export, privacy
from automation.services.pips import close_pip
from automation.settings import Settings
from tests.conftest import ACME_PEOPLE, start_organization
from tests.test_export import ANA, _cli_env
from tests.test_export import weeks as weeks  # a fixture
from tests.test_loop import advance_until, occurrences

POLICY = PrivacyPolicy(hr_admins=frozenset({"people-ops@acme.test"}))
DEEP_PEOPLE = ACME_PEOPLE.replace(
    "boss@acme.test,Bea Boss,America/New_York,,hr@acme.test",
    "vp@acme.test,Vic Vp,America/New_York,,hr@acme.test\n"
    "boss@acme.test,Bea Boss,America/New_York,vp@acme.test,hr@acme.test",
)


@pytest.fixture
def org(rt, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path, DEEP_PEOPLE)


def _person(session, org: int, email: str) -> Person:  # type: ignore[no-untyped-def]
    return session.scalar(
        select(Person).where(Person.organization_id == org, Person.email == email)
    )


def _leave(rt, tmp_path: Path, org: int, email: str = ANA) -> None:  # type: ignore[no-untyped-def]
    """Ana leaves: the people file marks her inactive (her check-ins end)."""
    rows = DEEP_PEOPLE.splitlines()
    rows[0] += ",active"
    rows[1:] = [r + (",false" if r.startswith(email) else ",true") for r in rows[1:]]
    csv = tmp_path / "leavers.csv"
    csv.write_text("\n".join(rows) + "\n")
    with transaction(rt.factory) as session:
        import_people_file(session, org, csv, rt.now())


def _reassign(rt, org: int, kind: str, subject_id: int, to: str, reason: str) -> int:  # type: ignore[no-untyped-def]
    """Reassign a subject in the console's overdue queue; the row's id."""
    with transaction(rt.factory) as session:
        row = escalation.reassign(
            rt, session, org, kind, subject_id, _person(session, org, to).id,
            actor="console:hr@acme.test", reason=reason,
        )  # fmt: skip
        return row.id


def _all_text(rt) -> str:  # type: ignore[no-untyped-def]
    """Every text, JSON and binary value in every table, as one lower-case string."""
    chunks: list[str] = []
    with rt.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for value in row:
                    if isinstance(value, bytes):
                        chunks.append(value.decode("utf-8", "replace"))
                    elif isinstance(value, str | dict | list):
                        chunks.append(json.dumps(value) if not isinstance(value, str) else value)
    return "\n".join(chunks).lower()


def test_records_are_visible_to_the_manager_chain_and_hr_only(rt, org):
    with rt.factory() as session:
        ana = _person(session, org, ANA)
        assert privacy.check_reader(session, POLICY, ana, "boss@acme.test") == "manager"
        assert (
            privacy.check_reader(session, POLICY, ana, "VP@acme.test") == "manager chain (level 2)"
        )
        assert privacy.check_reader(session, POLICY, ana, "hr@acme.test") == "HR partner"
        assert privacy.check_reader(session, POLICY, ana, "people-ops@acme.test") == "HR admin"
        for outsider in ("kai@acme.test", ANA, "boss@elsewhere.test"):
            with pytest.raises(privacy.AccessDenied, match="manager chain, their HR partner"):
                privacy.check_reader(session, POLICY, ana, outsider)
        # Chains do not run downwards: Ana may not read her manager's records.
        boss = _person(session, org, "boss@acme.test")
        with pytest.raises(privacy.AccessDenied):
            privacy.check_reader(session, POLICY, boss, ANA)


def test_a_deletion_request_removes_personal_data_keeps_the_skeleton_and_the_chain_verifies(
    rt,
    org,
    weeks,
    tmp_path,  # noqa: F811
):
    first, second = weeks
    with rt.factory() as session:
        kai_created = session.scalar(
            select(AuditEntry).where(
                AuditEntry.action == "person.created",
                AuditEntry.data["email"].as_string() == "kai@acme.test",
            )
        )
        review_id = session.scalars(select(PipReview.id)).one()
    # Her overdue check-in and PIP review were reassigned, with reasons that are personal data;
    # a reassignment of Kai's check-in is not about her.
    moved = [
        _reassign(rt, org, "occurrence", second.id, "vp@acme.test", "Bea is on sick leave"),
        _reassign(rt, org, "pip_review", review_id, "hr@acme.test", "Bea: sick leave, again"),
    ]
    kai_moved = _reassign(
        rt, org, "occurrence", occurrences(rt, "kai@acme.test")[0].id, "vp@acme.test", "Busy"
    )
    with rt.factory() as session:
        kept = {
            r.id: (r.person_id, r.by, r.created_at) for r in session.scalars(select(Reassignment))
        }
    with (
        transaction(rt.factory) as session,
        pytest.raises(privacy.PrivacyError, match="still active"),
    ):
        privacy.request_erasure(session, org, ANA, "REQ-1", "hr@acme.test", rt.now())
    _leave(rt, tmp_path, org)
    with (
        transaction(rt.factory) as session,
        pytest.raises(privacy.PrivacyError, match="active PIP"),
    ):
        privacy.request_erasure(session, org, ANA, "REQ-1", "hr@acme.test", rt.now())
    with transaction(rt.factory) as session:
        close_pip(rt, session, org, ANA, "ended", note="Ana Souza did not meet goal 2")
    assert "ana souza" in _all_text(rt) and ANA in _all_text(rt)
    with rt.factory() as session:
        records_before = session.scalar(select(func.count()).select_from(ConversationRecord))
        ana_id = _person(session, org, ANA).id

    with transaction(rt.factory) as session:
        request = privacy.request_erasure(session, org, ANA, "REQ-1", "hr@acme.test", rt.now())
    assert request.state == "done" and request.removed["records"] == 2
    assert request.removed["received_mail"] >= 2 and request.removed["sent_mail"] >= 3
    assert request.removed["reassignments"] == 2

    # Nothing that names her is left anywhere in the database, audit log included, nor why
    # her check-in and review were reassigned.
    text = _all_text(rt)
    assert "ana souza" not in text and ANA not in text and "souza" not in text
    assert "sick leave" not in text
    with rt.factory() as session:
        rows = {r.id: r for r in session.scalars(select(Reassignment))}
        # The rows stay (who took it over, who moved it, when); only the reasons go.
        assert {i: (r.person_id, r.by, r.created_at) for i, r in rows.items()} == kept
        assert [rows[i].reason for i in moved] == ["", ""]
        assert rows[kai_moved].reason == "Busy"
        # Her export still shows the reassignments, without a reason.
        data = export.to_data(export.timeline(session, org, f"erased-{ana_id}@invalid", "UTC"))
    events = [e for e in data["events"] if e["kind"] == "reassignment"]
    assert [e["ref"] for e in events] == [f"reassignment:{i}" for i in moved]
    assert all(e["details"]["reason"] is None for e in events)
    assert events[0]["details"]["to"] == "Vic Vp <vp@acme.test>"
    with rt.factory() as session:
        # The skeleton stays: her records (now empty), their times and versions, her row.
        records = session.scalars(
            select(ConversationRecord).where(ConversationRecord.subject_id == first.id)
        ).all()
        assert [r.version for r in records] == [1, 2]
        assert all(r.erased_at and r.body == "" and r.answers == {} for r in records)
        assert (
            session.scalar(select(func.count()).select_from(ConversationRecord)) == records_before
        )
        ana = session.get(Person, ana_id)
        assert ana.email == f"erased-{ana_id}@invalid" and ana.erased_at is not None
        # Other people's history is untouched.
        kai_now = session.get(AuditEntry, kai_created.id)
        assert kai_now.data == kai_created.data and kai_now.redacted_by is None
        # The audit log says what was done, by whom and for which request, without content.
        (erased,) = session.scalars(select(AuditEntry).where(AuditEntry.action == "privacy.erased"))
        assert erased.actor == "hr@acme.test" and erased.subject_id == ana_id
        assert erased.data["request_id"] == request.id
        assert erased.data["removed"] == request.removed
        marked = session.scalar(select(func.count()).where(AuditEntry.redacted_by == erased.seq))
        assert marked == erased.data["audit_entries_erased"] > 5
        check = audit.verify(session, org)
        assert check.intact, check
    # Asking twice is refused, and names why.
    with transaction(rt.factory) as session, pytest.raises(privacy.PrivacyError, match="already"):
        privacy.request_erasure(session, org, f"erased-{ana_id}@invalid", "REQ-2", "hr", rt.now())


def test_marking_an_entry_erased_without_an_erasure_that_counts_it_breaks_the_chain(
    rt, org, tmp_path
):
    _leave(rt, tmp_path, org, "kai@acme.test")
    with transaction(rt.factory) as session:
        privacy.request_erasure(session, org, "kai@acme.test", "REQ-9", "hr@acme.test", rt.now())
    with rt.factory() as session:
        erasure = session.scalar(select(AuditEntry).where(AuditEntry.action == "privacy.erased"))
        assert audit.verify(session, org).intact
        victim = session.scalar(
            select(AuditEntry.seq)
            .where(AuditEntry.redacted_by.is_(None), AuditEntry.seq < erasure.seq)
            .order_by(AuditEntry.seq)
        )
    # The database itself allows an erasure-shaped UPDATE (that is how erasure works) ...
    with rt.engine.begin() as conn:
        conn.execute(
            sa.update(AuditEntry.__table__)
            .where(AuditEntry.__table__.c.seq == victim)
            .values(actor="[erased]", data={"erased": True}, redacted_by=erasure.seq)
        )
    # ... but the erasure entry does not count it, so verify names it.
    with rt.factory() as session:
        check = audit.verify(session, org)
        counted = erasure.data["audit_entries_erased"]
        first = session.scalar(
            select(func.min(AuditEntry.seq)).where(AuditEntry.redacted_by == erasure.seq)
        )
    assert (check.problem, check.seq) == ("altered", first)
    assert check.detail == (
        f"{counted + 1} entries are marked as erased by entry {erasure.seq}, "
        f"which accounts for {counted}"
    )


def test_the_database_refuses_every_change_to_the_audit_log_but_an_erasure(rt, org):
    table = AuditEntry.__table__
    for statement in (
        sa.update(table).where(table.c.seq == 2).values(actor="mallory"),
        sa.update(table).where(table.c.seq == 2).values(data={}, redacted_by=5, hash="0" * 64),
        sa.delete(table).where(table.c.seq == 2),
    ):
        with pytest.raises(sa.exc.DatabaseError, match="append-only"), rt.engine.begin() as conn:
            conn.execute(statement)
    with rt.engine.begin() as conn:  # the erasure shape passes once ...
        conn.execute(sa.update(table).where(table.c.seq == 2).values(data={}, redacted_by=9))
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), rt.engine.begin() as conn:
        conn.execute(sa.update(table).where(table.c.seq == 2).values(redacted_by=None))


def test_a_legal_hold_stops_a_deletion_request_until_it_is_released(rt, org, weeks, tmp_path):  # noqa: F811
    _leave(rt, tmp_path, org)
    with transaction(rt.factory) as session:
        close_pip(rt, session, org, ANA, "ended")
        hold = privacy.place_hold(
            session, org, ANA, "Case 2026-114 (tribunal)", "counsel", rt.now()
        )
    with transaction(rt.factory) as session:
        request = privacy.request_erasure(session, org, ANA, "REQ-7", "hr@acme.test", rt.now())
    assert request.state == "held" and request.removed is None
    with rt.factory() as session:
        assert session.scalar(select(func.count()).where(ConversationRecord.body != "")) == 2
        (held,) = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "privacy.erasure_held")
        )
        assert held.data == {"request_id": request.id, "hold_id": hold.id}
        assert "tribunal" not in json.dumps(held.data)
    # The retention sweep keeps the request waiting while the hold lasts ...
    with transaction(rt.factory) as session:
        result = privacy.sweep(session, org, POLICY, rt.now())
    assert result.held_requests_done == 0 and result.skipped_for_holds >= 1
    with transaction(rt.factory) as session:
        with pytest.raises(privacy.PrivacyError, match="no active legal hold"):
            privacy.release_hold(session, org, "kai@acme.test", "counsel", rt.now())
        privacy.release_hold(session, org, ANA, "counsel", rt.now())
    # ... and carries it out at the first sweep after its release.
    with transaction(rt.factory) as session:
        result = privacy.sweep(session, org, POLICY, rt.now())
    assert result.held_requests_done == 1
    with rt.factory() as session:
        request = session.get(ErasureRequest, request.id)
        assert request.state == "done" and request.removed["records"] == 2
        assert session.scalar(select(func.count()).where(ConversationRecord.body != "")) == 0
        assert audit.verify(session, org).intact


def test_retention_erases_leavers_and_expires_mail_except_under_a_hold(rt, org, clock, tmp_path):
    kai_checkin = occurrences(rt, "kai@acme.test")[0]
    moved = _reassign(rt, org, "occurrence", kai_checkin.id, "vp@acme.test", "Bea on sick leave")
    _leave(rt, tmp_path, org, "kai@acme.test")
    advance_until(rt, clock, rt.now() + dt.timedelta(days=8))  # agendas and prompts go out
    now = rt.now()
    with transaction(rt.factory) as session:
        # A quarantined message from Kai, one from a stranger, and one from Ana (held).
        for sender in ("kai@acme.test", "stranger@else.test", ANA):
            raw = f"From: {sender}\r\nSubject: hello\r\n\r\nbody of {sender}\r\n".encode()
            session.add(
                InboundMessage(
                    organization_id=org, raw=raw, sha256=hashlib.sha256(raw).hexdigest(),
                    size=len(raw), source="test", from_address=sender, subject="hello",
                    state=InboundState.QUARANTINED, quarantine_reason="unknown sender",
                    received_at=now - dt.timedelta(days=30),
                )
            )  # fmt: skip
        privacy.place_hold(session, org, ANA, "Case 7", "counsel", now)
    policy = PrivacyPolicy(years_after_leaving=6, unrecorded_mail_days=10, sent_mail_days=365)
    with transaction(rt.factory) as session:
        first = privacy.sweep(session, org, policy, now)
    # Kai left today: six years are not up, so only the mail expires (not Ana's: held).
    assert (first.people_erased, first.unrecorded_mail_erased) == (0, 2)
    with rt.factory() as session:
        kept = session.scalars(select(InboundMessage).where(InboundMessage.erased_at.is_(None)))
        assert [m.from_address for m in kept if m.source == "test"] == [ANA]
    clock.advance(dt.timedelta(days=round(365.25 * 6) + 1))
    with transaction(rt.factory) as session:
        later = privacy.sweep(session, org, policy, rt.now())
        again = privacy.sweep(session, org, policy, rt.now())
    assert later.people_erased == 1 and later.sent_mail_erased > 0
    with rt.factory() as session:
        row = session.get(Reassignment, moved)
        assert row is not None and row.reason == "" and row.subject_id == kai_checkin.id
        (erased,) = session.scalars(select(AuditEntry).where(AuditEntry.action == "privacy.erased"))
        assert erased.data["removed"]["reassignments"] == 1
    assert (again.people_erased, again.unrecorded_mail_erased, again.sent_mail_erased) == (0, 0, 0)
    ana_occurrences = {o.id for o in occurrences(rt, ANA)}
    with rt.factory() as session:
        kai = session.scalar(select(Person).where(Person.name == privacy.ERASED_NAME))
        assert kai.email.startswith("erased-") and kai.erased_at is not None
        assert _person(session, org, ANA) is not None  # held, and active anyway
        kept_sent = [m for m in session.scalars(select(OutboundMessage)) if m.raw]
        assert kept_sent  # Ana's, under the hold
        assert all(ANA in m.recipients or m.occurrence_id in ana_occurrences for m in kept_sent)
        assert audit.verify(session, org).intact


def test_the_retention_task_runs_daily_from_the_loop(rt, org, clock):
    from automation.models import Task
    from automation.services.loop import run_due

    clock.advance(dt.timedelta(days=2))
    run_due(rt)
    with rt.factory() as session:
        done = session.scalars(
            select(Task.key).where(Task.kind == "retention", Task.state == "done")
        ).all()
        pending = session.scalars(
            select(Task.key).where(Task.kind == "retention", Task.state == "pending")
        ).all()
    assert len(done) >= 2 and len(pending) == 1


def test_privacy_config_errors_name_the_file_the_field_and_the_fix(tmp_path: Path):
    (tmp_path / "privacy.toml").write_text(
        'hr_admins = ["hr@example.com", "not an address"]\n'
        "[retention]\nyears_after_leaving = 0\nsent_mail_days = 'long'\nkeep_forever = true\n"
    )
    settings = Settings(config_dir=tmp_path, data_dir=tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_privacy(settings)
    text = str(caught.value)
    assert "privacy.toml" in text
    for field in ("hr_admins[1]", "retention.years_after_leaving", "retention.sent_mail_days",
                  "retention.keep_forever"):  # fmt: skip
        assert field in text
    assert "from 1 to 100" in text
    (tmp_path / "privacy.toml").write_text(
        'hr_admins = ["HR@Example.com"]\n[retention]\nsent_mail_days = 30\n'
    )
    policy = load_privacy(settings)
    assert policy.hr_admins == {"hr@example.com"} and policy.sent_mail_days == 30
    assert policy.years_after_leaving == 6


def test_privacy_commands(rt, org, settings, monkeypatch, tmp_path, capsys):
    _cli_env(monkeypatch, settings)
    _leave(rt, tmp_path, org, "kai@acme.test")
    assert main(["privacy", "hold", "place", "kai@acme.test"]) == 64
    assert main(["privacy", "hold", "place", "kai@acme.test", "--reason", "Case 9"]) == 0
    assert main(["privacy", "hold", "list", "--json"]) == 0
    out = capsys.readouterr().out
    (row,) = json.loads(out[out.index("[") :])
    assert (row["person"], row["reason"], row["released_at"]) == ("kai@acme.test", "Case 9", None)
    assert main(["privacy", "erase", "kai@acme.test", "--reference", "T-1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["state"] == "held"
    assert main(["privacy", "erase", ANA, "--reference", "T-2"]) == 65
    assert "still active" in capsys.readouterr().err
    assert main(["privacy", "hold", "release", "kai@acme.test"]) == 0
    assert main(["privacy", "sweep", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["held_requests_done"] == 1
    assert main(["audit", "verify"]) == 0


OLD_CHAIN_DB = "0006"


def _old_hash(prev: str, seq: int, at: dt.datetime, actor: str, action: str, data: dict) -> str:
    body = json.dumps([seq, at.isoformat(), actor, action, "person", seq, data],
                      sort_keys=True, separators=(",", ":"), default=str)  # fmt: skip
    return hashlib.sha256((prev + body).encode()).hexdigest()


@pytest.mark.parametrize("tampered", [False, True])
def test_the_upgrade_rechains_the_old_audit_log_and_carries_a_break_forward(settings, tampered):
    engine = make_engine(settings.database)
    migrate(engine, OLD_CHAIN_DB)
    at = dt.datetime(2026, 1, 5, 9, 30, tzinfo=dt.UTC)
    prev, rows = "0" * 64, []
    for seq in (1, 2, 3):
        data = {"email": f"p{seq}@acme.test"}
        digest = _old_hash(prev, seq, at, "hr", "person.created", data)
        rows.append({"organization_id": 1, "seq": seq, "at": at.replace(tzinfo=None),
                     "actor": "hr", "action": "person.created", "subject_kind": "person",
                     "subject_id": seq, "data": data, "prev_hash": prev,
                     "hash": digest})  # fmt: skip
        prev = digest
    if tampered:
        rows[1]["data"] = {"email": "someone-else@acme.test"}
    meta = sa.MetaData()
    meta.reflect(engine, only=["organizations", "audit_log"])
    with engine.begin() as conn:
        conn.execute(meta.tables["organizations"].insert().values(
            id=1, slug="acme", name="Acme", audit_seq=3, audit_head=prev,
            created_at=at.replace(tzinfo=None)))  # fmt: skip
        conn.execute(meta.tables["audit_log"].insert(), rows)
    migrate(engine)
    factory = sa.orm.sessionmaker(engine)
    with factory() as session:
        check = audit.verify(session, 1)
        assert check.intact and check.entries == 4
        last = session.scalar(select(AuditEntry).where(AuditEntry.seq == 4))
        assert last.action == "audit.rechained"
        assert last.data["previous_head"] == prev and last.data["entries"] == 3
        assert last.data["previous_chain_intact"] is (not tampered)
        assert last.data["first_bad_entry"] == (2 if tampered else None)
    engine.dispose()
