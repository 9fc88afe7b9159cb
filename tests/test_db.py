"""The schema itself: migrations match the models, tenants cannot be crossed, claims are atomic."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.exc import IntegrityError

from automation.db import claim_task, make_engine, migrate, session_factory, transaction
from automation.models import Base, Organization, Person, Task, TaskState

NOW = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def factory(database_url):
    engine = make_engine(database_url)
    migrate(engine)
    migrate(engine)  # idempotent
    yield session_factory(engine)
    engine.dispose()


def test_migrations_produce_exactly_the_models(factory):
    with factory() as session:
        context = MigrationContext.configure(session.connection())
        assert compare_metadata(context, Base.metadata) == []


def _org_with_person(session, slug: str) -> tuple[int, int]:
    org = Organization(slug=slug, name=slug, created_at=NOW, audit_seq=0, audit_head="0" * 64)
    session.add(org)
    session.flush()
    person = Person(
        organization_id=org.id,
        email=f"p@{slug}.test",
        name="P",
        timezone="UTC",
        active=True,
        created_at=NOW,
        updated_at=NOW,
    )
    session.add(person)
    session.flush()
    return org.id, person.id


def test_a_row_cannot_reference_another_organizations_row(factory):
    with transaction(factory) as session:
        _, alice = _org_with_person(session, "one")
        _, bob = _org_with_person(session, "two")
    with pytest.raises(IntegrityError), transaction(factory) as session:
        session.get(Person, alice).manager_id = bob  # bob is in another organization
    with transaction(factory) as session:
        assert session.get(Person, alice).manager_id is None


def test_the_same_email_may_exist_in_two_organizations_but_not_twice_in_one(factory):
    with transaction(factory) as session:
        org, _ = _org_with_person(session, "one")
        _org_with_person(session, "two")
    with pytest.raises(IntegrityError), transaction(factory) as session:
        session.add(
            Person(
                organization_id=org,
                email="p@one.test",
                name="Again",
                timezone="UTC",
                active=True,
                created_at=NOW,
                updated_at=NOW,
            )
        )


def test_only_one_of_many_concurrent_claims_wins(factory):
    with transaction(factory) as session:
        org, _ = _org_with_person(session, "one")
        task = Task(
            organization_id=org,
            kind="noop",
            key="k",
            subject_id=1,
            due_at=NOW,
            state=TaskState.PENDING,
            attempts=0,
            created_at=NOW,
            updated_at=NOW,
        )
        session.add(task)
        session.flush()
        task_id = task.id
    winners, barrier = [], threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        with transaction(factory) as session:
            if claim_task(session, task_id, NOW, 60) is not None:
                winners.append(threading.get_ident())

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    # While the lease holds nobody else gets it; once it expires the task is due again.
    with transaction(factory) as session:
        assert claim_task(session, task_id, NOW + dt.timedelta(seconds=59), 60) is None
        again = claim_task(session, task_id, NOW + dt.timedelta(seconds=61), 60)
        assert again is not None and again.attempts == 2


def test_finding_our_email_by_message_id_reads_indexes_not_the_outbox(factory):
    """``outgoing`` (the thread a reminder or confirmation joins) and the prompt lookup ask
    for ``message_id`` or ``sent_message_id``: both must be indexed, or every send reads the
    organization's whole outbox (found at 10,000 people by bench/scale.py)."""
    from sqlalchemy import event, insert, select, text

    from automation.models import OutboundMessage
    from automation.services.messages import outgoing

    engine = factory.kw["bind"]
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite without statistics plans by the organization index either way")
    with transaction(factory) as session:
        org_id, _person = _org_with_person(session, "acme")
    seen: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "provider_thread" in statement:
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with factory() as session:
            message = OutboundMessage(
                organization_id=org_id,
                idempotency_key="k",
                kind="confirmation",
                message_id="<c@x>",
                recipients=["p@acme.test"],
                subject="Re: x",
                raw=b"In-Reply-To: <r@x>\r\nSubject: Re: x\r\n\r\nbody\r\n",
                created_at=NOW,
            )
            session.add(message)
            session.execute(  # an outbox of some size, and its statistics, for the planner
                insert(OutboundMessage),
                [
                    {
                        "organization_id": org_id,
                        "idempotency_key": f"k{n}",
                        "kind": "agenda",
                        "message_id": f"<m{n}@x>",
                        "recipients": [],
                        "subject": "s",
                        "raw": b"",
                        "created_at": NOW,
                    }
                    for n in range(3000)
                ],
            )
            session.execute(text("ANALYZE outbound_messages"))

            class Rt:  # outgoing() reads only the sender address from the runtime
                class settings:
                    mail_from = "Check-ins <checkins@acme.test>"

            outgoing(Rt, session, message)  # type: ignore[arg-type]
            assert session.scalar(select(OutboundMessage.id)) == message.id
            statement, parameters = seen[-1]
            raw = session.connection().connection.driver_connection
            cursor = raw.cursor()
            cursor.execute("SET LOCAL enable_seqscan = off")  # an index if there is one
            cursor.execute("EXPLAIN " + statement, parameters)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Seq Scan" not in plan, plan
            assert "uq_outbound_messages_message_id" in plan, plan
            assert "ix_outbound_messages_sent_message_id" in plan, plan
            session.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
