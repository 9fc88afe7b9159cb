"""The audit chain appends at commit: what a transaction or savepoint keeps, it appends; what it
rolls back, it drops; and the organization row is locked only from the append to the commit."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import func, select, text

from automation import audit
from automation.db import transaction
from automation.models import AuditEntry, Organization
from automation.services.loop import bootstrap

AT = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def note(session, org_id: int, what: str) -> None:  # type: ignore[no-untyped-def]
    audit.record(
        session,
        org_id,
        actor="test",
        action=what,
        subject_kind="test",
        subject_id=None,
        at=AT,
        data={"what": what},
    )


def actions(rt, org_id: int) -> list[str]:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return list(
            session.scalars(
                select(AuditEntry.action)
                .where(AuditEntry.organization_id == org_id, AuditEntry.subject_kind == "test")
                .order_by(AuditEntry.seq)
            )
        )


def intact(rt, org_id: int) -> bool:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return audit.verify(session, org_id).intact


def test_entries_are_appended_at_commit_in_the_order_they_were_recorded(rt):
    org_id = bootstrap(rt)
    with transaction(rt.factory) as session:
        before = session.scalar(select(Organization.audit_seq).where(Organization.id == org_id))
        note(session, org_id, "one")
        audit.record_many(
            session,
            org_id,
            [
                {"actor": "t", "action": a, "subject_kind": "test", "subject_id": None}
                for a in ("two", "three")
            ],
            AT,
        )
        # Nothing written yet, not even in this transaction: the chain's head is where it was.
        head = session.execute(
            text("SELECT audit_seq FROM organizations WHERE id = :id"), {"id": org_id}
        ).scalar_one()
        assert head == before
    assert actions(rt, org_id) == ["one", "two", "three"]
    assert intact(rt, org_id)


def test_a_rolled_back_savepoint_or_transaction_appends_nothing_a_released_one_keeps_its_entries(
    rt,
):
    org_id = bootstrap(rt)
    with transaction(rt.factory) as session:
        note(session, org_id, "outer")
        with session.begin_nested():
            note(session, org_id, "released")
        with pytest.raises(RuntimeError), session.begin_nested():
            note(session, org_id, "rolled back")
            with session.begin_nested():
                note(session, org_id, "inside the rolled back one")
            raise RuntimeError("this message makes the savepoint fail")
        note(session, org_id, "after")
    with pytest.raises(RuntimeError), transaction(rt.factory) as session:
        note(session, org_id, "never")
        raise RuntimeError("the whole transaction fails")
    with rt.factory() as session:  # closed without commit
        note(session, org_id, "never either")
    assert actions(rt, org_id) == ["outer", "released", "after"]
    assert intact(rt, org_id)


def test_reading_the_log_in_the_same_session_sees_its_queued_entries(rt):
    org_id = bootstrap(rt)
    with transaction(rt.factory) as session:
        note(session, org_id, "queued")
        found = session.scalars(
            select(AuditEntry.action).where(AuditEntry.subject_kind == "test")
        ).all()
        assert found == ["queued"]
        entry = audit.record_now(
            session,
            org_id,
            actor="test",
            action="now",
            subject_kind="test",
            subject_id=None,
            at=AT,
        )
        assert entry.id is not None
        assert session.get(AuditEntry, entry.id).seq == entry.seq
        assert audit.verify(session, org_id).intact
    assert actions(rt, org_id) == ["queued", "now"]


@pytest.mark.postgres
def test_the_organization_row_is_free_until_the_commit_and_concurrent_commits_chain_in_order(rt):
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite has one writer")
    org_id = bootstrap(rt)
    lock = text("SELECT id FROM organizations WHERE id = :id FOR NO KEY UPDATE NOWAIT")
    with rt.factory() as a, rt.factory() as b:
        note(a, org_id, "a1")
        note(b, org_id, "b1")
        a.flush()
        b.flush()
        # Both transactions have audited; neither holds the chain's lock.
        with rt.engine.connect() as probe:
            assert probe.execute(lock, {"id": org_id}).scalar_one() == org_id
            probe.rollback()
        note(a, org_id, "a2")
        b.commit()
        a.commit()
    # b reads the head, then waits for the row a moved; a commits: b's append finds the head
    # moved and chains onto a's entry instead of forking the chain.
    with rt.factory() as a, rt.factory() as b:
        note(a, org_id, "a3")
        audit.flush_pending(a)  # a holds the organization row now
        note(b, org_id, "b2")
        b_done = threading.Event()
        waiter = threading.Thread(target=lambda: (b.commit(), b_done.set()))
        waiter.start()
        assert not b_done.wait(0.5)  # blocked behind a's row lock
        a.commit()
        waiter.join(10)
        assert b_done.is_set()
    # Many threads auditing at once: every entry once, the chain whole.
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                with transaction(rt.factory) as session:
                    note(session, org_id, f"w{n}.{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    done = actions(rt, org_id)
    assert done[:5] == ["b1", "a1", "a2", "a3", "b2"]
    assert sorted(done[5:]) == sorted(f"w{n}.{i}" for n in range(4) for i in range(5))
    with rt.factory() as session:
        seqs = session.scalars(
            select(AuditEntry.seq).where(AuditEntry.organization_id == org_id)
        ).all()
        assert sorted(seqs) == list(range(1, len(seqs) + 1))
        assert session.scalar(select(func.count()).select_from(AuditEntry)) == len(seqs)
    assert intact(rt, org_id)
