"""One mechanism scopes every query to one organization (automation/tenancy.py): reads,
updates, deletes and writes in a session scoped to an organization never touch another's
rows, whatever the code forgot to filter, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select, update

from automation.db import migrate, transaction
from automation.models import AuditEntry, Organization, Person
from automation.people import ensure_organization
from automation.tenancy import CrossTenantWrite, scope_of, scoped_factory


def add_person(session, org: int, email: str, now) -> int:  # type: ignore[no-untyped-def]
    person = Person(
        organization_id=org, email=email, name=email.split("@")[0], timezone="UTC",
        created_at=now, updated_at=now,
    )  # fmt: skip
    session.add(person)
    session.flush()
    return person.id


@pytest.fixture
def two(rt):  # type: ignore[no-untyped-def]
    """Two organizations with one person each: (rt, (a, a_person), (b, b_person))."""
    migrate(rt.engine)
    now = rt.now()
    with transaction(rt.factory) as session:
        a = ensure_organization(session, "alpha", "Alpha", now).id
        b = ensure_organization(session, "beta", "Beta", now).id
        a_person = add_person(session, a, "ann@alpha.test", now)
        b_person = add_person(session, b, "bob@beta.test", now)
    return rt, (a, a_person), (b, b_person)


def test_a_scoped_session_reads_only_its_organization(two) -> None:  # type: ignore[no-untyped-def]
    rt, (a, a_person), (b, b_person) = two
    with transaction(scoped_factory(rt.engine, a)) as session:
        assert scope_of(session) == a
        # No filter on organization_id anywhere here: the scope adds it.
        assert session.scalars(select(Person.email)).all() == ["ann@alpha.test"]
        assert session.scalar(select(func.count()).select_from(Person)) == 1
        assert session.get(Person, b_person) is None
        assert session.get(Person, a_person) is not None
        assert session.scalars(select(Organization.slug)).all() == ["alpha"]
        assert session.get(Organization, b) is None
        # Joins and aliases are scoped too.
        from sqlalchemy.orm import aliased

        other = aliased(Person)
        pairs = session.execute(
            select(Person.email, other.email).join(other, other.id != Person.id)
        ).all()
        assert pairs == []  # the only visible person has no visible partner
    with transaction(rt.factory) as session:  # the system scope sees both
        assert scope_of(session) is None
        assert session.scalar(select(func.count()).select_from(Person)) == 2


def test_bulk_updates_and_deletes_stay_in_the_organization(two) -> None:  # type: ignore[no-untyped-def]
    rt, (a, _), (b, b_person) = two
    with transaction(scoped_factory(rt.engine, a)) as session:
        changed = session.execute(update(Person).values(name="renamed"))
        assert changed.rowcount == 1  # type: ignore[attr-defined]
        gone = session.execute(delete(Person).where(Person.id == b_person))
        assert gone.rowcount == 0  # type: ignore[attr-defined]
    with transaction(rt.factory) as session:
        names = dict(session.execute(select(Person.organization_id, Person.name)).all())
    assert names[a] == "renamed" and names[b] == "bob"


def test_writing_another_organizations_row_is_refused_before_any_sql(two) -> None:  # type: ignore[no-untyped-def]
    rt, (a, _), (b, _) = two
    scoped = scoped_factory(rt.engine, a)
    with pytest.raises(CrossTenantWrite, match=f"organization {b}"), transaction(scoped) as session:
        add_person(session, b, "mallory@beta.test", rt.now())
    with transaction(rt.factory) as session:
        assert session.scalar(select(func.count()).select_from(Person)) == 2
    # An object of the other organization loaded in the system scope and merged into a
    # scoped session cannot be changed through it either.
    with transaction(rt.factory) as session:
        bob = session.scalars(select(Person).where(Person.organization_id == b)).one()
        session.expunge(bob)
    with pytest.raises(CrossTenantWrite), transaction(scoped) as session:
        bob = session.merge(bob, load=False)
        bob.name = "changed across tenants"


def test_the_audit_log_of_a_scoped_session_is_its_own(two) -> None:  # type: ignore[no-untyped-def]
    from automation import audit

    rt, (a, _), (b, _) = two
    for org in (a, b):
        with transaction(scoped_factory(rt.engine, org)) as session:
            audit.record(
                session, org, actor="test", action="test.entry", subject_kind="organization",
                subject_id=org, at=rt.now(),
            )  # fmt: skip
    with transaction(scoped_factory(rt.engine, b)) as session:
        entries = session.scalars(select(AuditEntry.organization_id)).all()
    assert set(entries) == {b}
    for org in (a, b):
        with transaction(rt.factory) as session:
            assert audit.verify(session, org).intact


def test_postgresql_row_level_security_is_a_second_wall_under_plain_sql(two) -> None:  # type: ignore[no-untyped-def]
    """Plain SQL bypasses the ORM listeners; the policies still show a scoped transaction only
    its organization. Checked as an ordinary role: a superuser is never bound by policies."""
    from sqlalchemy import text

    rt, (a, _), (b, _) = two
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("row-level security is PostgreSQL's; SQLite has the ORM wall only")
    with rt.engine.begin() as conn:
        conn.execute(text(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tenant_probe') "
            "THEN CREATE ROLE tenant_probe NOLOGIN NOSUPERUSER NOBYPASSRLS; END IF; END $$"
        ))  # fmt: skip
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO tenant_probe'))
        conn.execute(
            text(f'GRANT SELECT, UPDATE ON ALL TABLES IN SCHEMA "{schema}" TO tenant_probe')
        )
    with transaction(scoped_factory(rt.engine, a)) as session:
        session.execute(text("SET LOCAL ROLE tenant_probe"))
        emails = session.execute(text("SELECT email FROM people ORDER BY email")).scalars().all()
        slugs = session.execute(text("SELECT slug FROM organizations")).scalars().all()
        moved = session.execute(text("UPDATE people SET name = 'x'")).rowcount  # type: ignore[attr-defined]
    assert emails == ["ann@alpha.test"] and slugs == ["alpha"] and moved == 1
    with transaction(rt.factory) as session:  # the system scope (no setting) sees both
        session.execute(text("SET LOCAL ROLE tenant_probe"))
        assert session.execute(text("SELECT count(*) FROM people")).scalar_one() == 2
        names = dict(session.execute(text("SELECT organization_id, name FROM people")).all())
    assert names[a] == "x" and names[b] == "bob"


def test_every_tenant_table_has_its_row_level_security_policy(two) -> None:  # type: ignore[no-untyped-def]
    """A table added later without a policy in its migration fails here."""
    from sqlalchemy import text

    from automation.models import Base

    rt, _, _ = two
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("row-level security is PostgreSQL's")
    tenant_tables = {
        t.name for t in Base.metadata.tables.values() if "organization_id" in t.columns
    } | {"organizations"}
    with rt.engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
            "EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        )).all()  # fmt: skip
    protected = {name for name, enabled, forced, policy in rows if enabled and forced and policy}
    assert tenant_tables - protected == set()
