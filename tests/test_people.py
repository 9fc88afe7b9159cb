"""The people import: whole-file checks, all-or-nothing apply, upsert, tenant isolation."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest
from sqlalchemy import func, select

from automation.audit import verify_chain
from automation.db import make_engine, migrate, session_factory, transaction
from automation.errors import ImportRejected
from automation.models import AuditEntry, Organization, Person
from automation.people import (
    ImportResult,
    PersonRow,
    apply_people,
    ensure_organization,
    import_people_file,
    parse_people_csv,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "example"
HEADER = "email,name,timezone,manager_email,hr_partner_email"
NOW = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.UTC)

SMALL = f"""{HEADER}
boss@example.com,Bea Boss,Europe/Berlin,,hr@example.com
hr@example.com,Hal Resources,Europe/London,boss@example.com,
ann@example.com,Ann Report,Asia/Tokyo,boss@example.com,hr@example.com
"""


@pytest.fixture
def factory(database_url):
    """A migrated database: a SQLite file and a PostgreSQL schema (see conftest)."""
    engine = make_engine(database_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def org_id(factory, slug: str = "acme") -> int:
    with transaction(factory) as s:
        return ensure_organization(s, slug, slug.title(), NOW).id


def problems_of(exc: pytest.ExceptionInfo[ImportRejected]) -> list[tuple[int, str, str]]:
    return [(p.row, p.field, p.problem) for p in exc.value.problems]


def people(factory, organization_id: int) -> dict[str, Person]:
    with transaction(factory) as s:
        rows = s.scalars(select(Person).where(Person.organization_id == organization_id))
        return {p.email: p for p in rows}


# --- parsing --------------------------------------------------------------------------------


def test_parse_good_file_normalises_values():
    text = (
        "\ufeff Email , NAME,TimeZone,Manager_Email,hr_partner_email, Active \n"
        " Boss@Example.COM ,Bea Boss,Europe/Berlin,,,\n"
        "\n"
        "ann@example.com,Ann Report,Asia/Tokyo,BOSS@example.com,,no\n"
    )
    rows = parse_people_csv(text, "p.csv")
    assert rows == [
        PersonRow(2, "boss@example.com", "Bea Boss", "Europe/Berlin", None, None, True),
        PersonRow(
            4, "ann@example.com", "Ann Report", "Asia/Tokyo", "boss@example.com", None, False
        ),
    ]


def test_every_problem_is_reported_at_once_with_row_and_field():
    text = (
        f"{HEADER},active\n"
        "boss@example.com,Bea Boss,Europe/Berlin,,\n"  # fine
        "not-an-email,Nobody,Europe/Berlin,boss@example.com,\n"
        "ann@example.com,,Berlin,boss@example.com,\n"
        "bob@example.com,Bob,Mars/Olympus,ghost@example.com,spook@example.com,maybe\n"
        "ann@example.com,Ann Again,UTC,,\n"
    )
    with pytest.raises(ImportRejected) as exc:
        parse_people_csv(text, "p.csv")
    found = problems_of(exc)
    fields = [(row, field) for row, field, _ in found]
    assert fields == [
        (3, "email"),
        (4, "name"),
        (4, "timezone"),
        (5, "timezone"),
        (5, "manager_email"),
        (5, "hr_partner_email"),
        (5, "active"),
        (6, "email"),
    ]
    text_of = {(row, field): problem for row, field, problem in found}
    assert "not a valid email" in text_of[3, "email"]
    assert "Europe/Berlin" in text_of[4, "timezone"]  # "Berlin" suggests the IANA name
    assert "Europe/Berlin" in text_of[5, "timezone"] or "IANA" in text_of[5, "timezone"]
    assert text_of[5, "manager_email"] == (
        "unknown manager ghost@example.com: add them to the file or import them first"
    )
    assert "unknown HR partner spook@example.com" in text_of[5, "hr_partner_email"]
    assert "'maybe'" in text_of[5, "active"]
    assert "rows 4 and 6" in text_of[6, "email"]
    assert "p.csv" in str(exc.value) and "nothing was imported" in str(exc.value)


def test_header_problems_are_on_row_1():
    text = "email,name,time zone,manager_email,notes\nboss@example.com,Bea,Europe/Berlin,,x\n"
    with pytest.raises(ImportRejected) as exc:
        parse_people_csv(text, "p.csv")
    header = {(field, problem) for row, field, problem in problems_of(exc) if row == 1}
    assert {field for field, _ in header} == {"time zone", "notes", "timezone", "hr_partner_email"}
    assert any("did you mean 'timezone'" in problem for _, problem in header)


@pytest.mark.parametrize("text", ["", "\ufeff", "\n\n", f"{HEADER}\n", f"\ufeff{HEADER}\n\n"])
def test_empty_file_or_only_header_is_rejected(text):
    with pytest.raises(ImportRejected) as exc:
        parse_people_csv(text, "p.csv")
    assert len(exc.value.problems) == 1
    assert "header" in exc.value.problems[0].problem or "nobody" in exc.value.problems[0].problem


def test_wrong_number_of_values():
    text = f"{HEADER}\nboss@example.com,Boss, Jr.,Europe/Berlin,,\n"
    with pytest.raises(ImportRejected) as exc:
        parse_people_csv(text, "p.csv")
    # Only the column count: the shifted values would otherwise give misleading problems.
    [(row, field, problem)] = problems_of(exc)
    assert (row, field) == (2, "columns")
    assert "6 values but the header has 5 columns; quote values that contain commas" in problem


def test_duplicate_email_names_both_rows():
    text = f"{HEADER}\na@example.com,A,UTC,,\nb@example.com,B,UTC,,\nA@example.com,A2,UTC,,\n"
    with pytest.raises(ImportRejected) as exc:
        parse_people_csv(text, "p.csv")
    [(row, field, problem)] = problems_of(exc)
    assert (row, field) == (4, "email")
    assert "a@example.com appears on rows 2 and 4" in problem


def test_unknown_manager_but_known_from_earlier_import():
    text = f"{HEADER}\nann@example.com,Ann,UTC,boss@example.com,hr@example.com\n"
    with pytest.raises(ImportRejected) as exc:
        parse_people_csv(text, "p.csv")
    assert [(r, f) for r, f, _ in problems_of(exc)] == [
        (2, "manager_email"),
        (2, "hr_partner_email"),
    ]
    rows = parse_people_csv(text, "p.csv", existing_emails={"Boss@example.com", "hr@example.com"})
    assert rows[0].manager_email == "boss@example.com"


def test_own_manager():
    text = f"{HEADER}\nann@example.com,Ann,UTC,ann@example.com,\n"
    with pytest.raises(ImportRejected) as exc:
        parse_people_csv(text, "p.csv")
    [(row, field, problem)] = problems_of(exc)
    assert (row, field) == (2, "manager_email") and "their own manager" in problem


def test_two_cycle():
    text = (
        f"{HEADER}\n"
        "boss@example.com,Boss,UTC,,\n"
        "a@example.com,A,UTC,b@example.com,\n"
        "b@example.com,B,UTC,a@example.com,\n"
    )
    with pytest.raises(ImportRejected) as exc:
        parse_people_csv(text, "p.csv")
    found = problems_of(exc)
    assert [(row, field) for row, field, _ in found] == [(3, "manager_email"), (4, "manager_email")]
    first, second = (problem for _, _, problem in found)
    assert "a@example.com → b@example.com → a@example.com" in first
    assert "b@example.com → a@example.com → b@example.com" in second


def test_three_cycle_reports_each_member_once_and_not_the_people_below_it():
    text = (
        f"{HEADER}\n"
        "a@example.com,A,UTC,c@example.com,\n"
        "b@example.com,B,UTC,a@example.com,\n"
        "c@example.com,C,UTC,b@example.com,\n"
        "d@example.com,D,UTC,a@example.com,\n"  # reports into the cycle, is not part of it
    )
    with pytest.raises(ImportRejected) as exc:
        parse_people_csv(text, "p.csv")
    found = problems_of(exc)
    assert [(row, field) for row, field, _ in found] == [
        (2, "manager_email"),
        (3, "manager_email"),
        (4, "manager_email"),
    ]
    assert "a@example.com → c@example.com → b@example.com → a@example.com" in found[0][2]
    assert all("reporting cycle" in problem for _, _, problem in found)


# --- applying -------------------------------------------------------------------------------


def test_apply_creates_and_links(factory):
    oid = org_id(factory)
    with transaction(factory) as s:
        result = apply_people(s, oid, parse_people_csv(SMALL, "p.csv"), NOW)
    assert result == ImportResult(created=3, updated=0, unchanged=0)
    found = people(factory, oid)
    assert set(found) == {"boss@example.com", "hr@example.com", "ann@example.com"}
    assert found["ann@example.com"].manager_id == found["boss@example.com"].id
    assert found["ann@example.com"].hr_partner_id == found["hr@example.com"].id
    assert found["boss@example.com"].manager_id is None
    assert found["ann@example.com"].timezone == "Asia/Tokyo"
    assert found["ann@example.com"].created_at == NOW
    with transaction(factory) as s:
        actions = s.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.organization_id == oid)
            .order_by(AuditEntry.seq)
        ).all()
        assert actions == ["organization.created"] + ["person.created"] * 3
        assert verify_chain(s, oid) == (True, None)


def test_reimport_updates_and_never_duplicates(factory, tmp_path):
    oid = org_id(factory)
    path = tmp_path / "people.csv"
    path.write_text(SMALL, encoding="utf-8")
    with transaction(factory) as s:
        assert import_people_file(s, oid, path, NOW) == ImportResult(3, 0, 0)
    with transaction(factory) as s:
        assert import_people_file(s, oid, path, NOW) == ImportResult(0, 0, 3)

    later = NOW + dt.timedelta(days=1)
    changed = SMALL.replace(
        "Ann Report,Asia/Tokyo,boss@example.com", "Ann Report,Australia/Sydney,hr@example.com"
    )
    path.write_text(changed + "new@example.com,New Hire,UTC,ann@example.com,hr@example.com\n")
    with transaction(factory) as s:
        assert import_people_file(s, oid, path, later) == ImportResult(1, 1, 2)

    found = people(factory, oid)
    assert len(found) == 4
    ann = found["ann@example.com"]
    assert ann.timezone == "Australia/Sydney"
    assert ann.manager_id == found["hr@example.com"].id
    assert ann.updated_at == later and ann.created_at == NOW
    assert found["boss@example.com"].updated_at == NOW  # unchanged rows are not touched
    with transaction(factory) as s:
        entries = s.scalars(
            select(AuditEntry).where(AuditEntry.organization_id == oid).order_by(AuditEntry.seq)
        ).all()
        assert [e.action for e in entries].count("person.created") == 4
        [update] = [e for e in entries if e.action == "person.updated"]
        assert update.subject_id == ann.id
        assert update.data == {
            "email": "ann@example.com",
            "changed": {
                "timezone": {"from": "Asia/Tokyo", "to": "Australia/Sydney"},
                "manager_email": {"from": "boss@example.com", "to": "hr@example.com"},
            },
        }


def test_nothing_is_applied_when_any_row_is_bad(factory, tmp_path):
    oid = org_id(factory)
    path = tmp_path / "people.csv"
    path.write_text(SMALL + "bad@example.com,Bad Zone,Not/AZone,boss@example.com,\n")
    with transaction(factory) as s, pytest.raises(ImportRejected) as exc:
        import_people_file(s, oid, path, NOW)
    assert [(p.row, p.field) for p in exc.value.problems] == [(5, "timezone")]
    assert str(path) in str(exc.value)
    assert people(factory, oid) == {}
    with transaction(factory) as s:
        audit_count = s.scalar(select(func.count()).select_from(AuditEntry))
        assert audit_count == 1  # only the organization's creation


def test_cycle_through_people_already_stored_is_refused_before_writing(factory):
    oid = org_id(factory)
    first = f"{HEADER}\na@example.com,A,UTC,,\nb@example.com,B,UTC,a@example.com,\n"
    with transaction(factory) as s:
        apply_people(s, oid, parse_people_csv(first, "1.csv"), NOW)
    # The file alone is fine (a reports to b, who is only in the database) ...
    second = f"{HEADER}\na@example.com,A,UTC,b@example.com,\nc@example.com,C,UTC,,\n"
    rows = parse_people_csv(second, "2.csv", existing_emails=["a@example.com", "b@example.com"])
    # ... but b reports to a in the database.
    with transaction(factory) as s, pytest.raises(ImportRejected) as exc:
        apply_people(s, oid, rows, NOW, file="2.csv")
    [problem] = exc.value.problems
    assert (problem.row, problem.field) == (2, "manager_email")
    assert (
        "a@example.com → b@example.com (already imported, not in this file) → a@example.com"
        in problem.problem
    )
    assert set(people(factory, oid)) == {"a@example.com", "b@example.com"}
    assert people(factory, oid)["a@example.com"].manager_id is None


def test_apply_refuses_rows_naming_someone_unknown(factory):
    oid = org_id(factory)
    rows = [PersonRow(2, "a@example.com", "A", "UTC", "ghost@example.com", None, True)]
    with transaction(factory) as s, pytest.raises(ImportRejected) as exc:
        apply_people(s, oid, rows, NOW)
    assert "unknown manager ghost@example.com" in exc.value.problems[0].problem
    assert people(factory, oid) == {}


def test_organizations_are_isolated(factory):
    acme, globex = org_id(factory, "acme"), org_id(factory, "globex")
    with transaction(factory) as s:
        apply_people(s, acme, parse_people_csv(SMALL, "acme.csv"), NOW)
    # globex has its own boss@example.com; ann there must link to globex's boss, not acme's.
    globex_file = (
        f"{HEADER}\nboss@example.com,Other Boss,UTC,,\n"
        "ann@example.com,Globex Ann,UTC,boss@example.com,\n"
    )
    with transaction(factory) as s:
        result = apply_people(s, globex, parse_people_csv(globex_file, "g.csv"), NOW)
    assert result == ImportResult(created=2, updated=0, unchanged=0)
    a, g = people(factory, acme), people(factory, globex)
    assert a["boss@example.com"].id != g["boss@example.com"].id
    assert g["ann@example.com"].manager_id == g["boss@example.com"].id
    assert a["ann@example.com"].name == "Ann Report" and g["ann@example.com"].name == "Globex Ann"

    # A manager who exists only in another organization is unknown here.
    only_acme = f"{HEADER}\nzed@example.com,Zed,UTC,hr@example.com,\n"
    with transaction(factory) as s:
        existing = s.scalars(select(Person.email).where(Person.organization_id == globex)).all()
    with pytest.raises(ImportRejected) as exc:
        parse_people_csv(only_acme, "g.csv", existing)
    assert "unknown manager hr@example.com" in exc.value.problems[0].problem
    # apply_people checks again, inside the organization, whatever the caller parsed with.
    zed = PersonRow(2, "zed@example.com", "Zed", "UTC", "hr@example.com", None, True)
    with transaction(factory) as s, pytest.raises(ImportRejected):
        apply_people(s, globex, [zed], NOW)
    assert set(people(factory, globex)) == {"boss@example.com", "ann@example.com"}


def test_ensure_organization_is_idempotent(factory):
    with transaction(factory) as s:
        first = ensure_organization(s, "acme", "Acme", NOW)
    with transaction(factory) as s:
        again = ensure_organization(s, "acme", "Another name", NOW + dt.timedelta(days=1))
        assert again.id == first.id and again.name == "Acme"
        assert s.scalar(select(func.count()).select_from(Organization)) == 1


def test_non_utf8_file_is_rejected(factory, tmp_path):
    oid = org_id(factory)
    path = tmp_path / "people.csv"
    path.write_bytes((HEADER + "\nz@example.com,Zoë,UTC,,\n").encode("latin-1"))
    with transaction(factory) as s, pytest.raises(ImportRejected) as exc:
        import_people_file(s, oid, path, NOW)
    assert "UTF-8" in exc.value.problems[0].problem


# --- the sample organisation ----------------------------------------------------------------


def test_example_organisation_parses_and_imports(factory):
    path = EXAMPLE / "people.csv"
    rows = parse_people_csv(path.read_text(encoding="utf-8-sig"), str(path))
    assert 20 <= len(rows) <= 30
    heads = [r for r in rows if r.manager_email is None]
    assert len(heads) == 1
    reports: dict[str, int] = {}
    for r in rows:
        if r.manager_email:
            reports[r.manager_email] = reports.get(r.manager_email, 0) + 1
    line_managers = {m for m in reports if m != heads[0].email and reports[m] >= 3}
    assert 4 <= len(line_managers) <= 5
    assert all(3 <= reports[m] <= 5 for m in line_managers)
    partners = {r.hr_partner_email for r in rows if r.hr_partner_email}
    assert len(partners) == 2
    assert all(r.hr_partner_email for r in rows if r.email not in partners)
    assert len({r.timezone for r in rows}) >= 5

    oid = org_id(factory, "example")
    with transaction(factory) as s:
        assert import_people_file(s, oid, path, NOW) == ImportResult(len(rows), 0, 0)
    with transaction(factory) as s:
        assert import_people_file(s, oid, path, NOW) == ImportResult(0, 0, len(rows))


def test_example_pip_names_a_report_of_the_example_organisation():
    rows = parse_people_csv((EXAMPLE / "people.csv").read_text(encoding="utf-8-sig"), "p.csv")
    by_email = {r.email: r for r in rows}
    with (EXAMPLE / "pips.toml").open("rb") as f:
        [pip] = tomllib.load(f)["pip"]
    employee = by_email[pip["employee"]]
    assert employee.manager_email and employee.hr_partner_email
    assert not any(r.manager_email == employee.email for r in rows)  # a report, not a manager
    assert [step["notify"] for step in pip["escalation"]] == ["manager", "hr_partner"]


def test_rows_may_stop_before_the_optional_active_column():
    text = f"{HEADER},active\na@example.com,A,UTC,,\nb@example.com,B,UTC,a@example.com\n"
    with pytest.raises(ImportRejected) as exc:
        parse_people_csv(text, "p.csv")
    assert [(p.row, p.field) for p in exc.value.problems] == [(3, "columns")]
    rows = parse_people_csv(text.replace("a@example.com\n", "a@example.com,\n"), "p.csv")
    assert [r.active for r in rows] == [True, True]
