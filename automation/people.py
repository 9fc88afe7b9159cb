"""The people directory: import a CSV of people, and make sure an organization exists.

``automation people import FILE.csv`` reads a file with the header
``email,name,timezone,manager_email,hr_partner_email`` and an optional ``active`` column
(true/false/yes/no/1/0; empty means true) and an optional ``role`` column (the name of a
``config/roles/*.toml``; empty means none; without the column, stored roles are kept). Column
names ignore case and surrounding spaces.

The import is all or nothing. :func:`parse_people_csv` is pure and checks the whole file
first; any problem (bad email, unknown time zone, unknown manager, duplicate row, reporting
cycle, ...) raises one :class:`ImportRejected` listing every problem with its line and column
and how to fix it. :func:`apply_people` then upserts by (organization, email) in the caller's
transaction, after checking once more against the people already stored: a reporting cycle can
close through somebody who is in the database but not in the file (the file makes ``a`` report
to ``b``, while ``b``, imported earlier, reports to ``a``), and that is refused before anything
is written.

People already stored but absent from the file are left as they are: a file may hold one
department. To take someone out of the cadences, keep their row and set ``active`` to false.
"""

from __future__ import annotations

import csv
import datetime as dt
import difflib
import io
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from automation import audit
from automation.errors import ImportRejected, RowProblem
from automation.models import Organization, Person

REQUIRED_COLUMNS = ("email", "name", "timezone", "manager_email", "hr_partner_email")
OPTIONAL_COLUMNS = ("active", "role")
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
HEADER = "email,name,timezone,manager_email,hr_partner_email[,active][,role]"
SAVE_AS = "save it as 'CSV UTF-8 (comma delimited)'"
LINKS = (("manager_email", "manager"), ("hr_partner_email", "HR partner"))

_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_EMAIL = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+$")
_MAX_EMAIL = 320
_MAX_NAME = 200
_ROLE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")  # as automation.config.ROLE_NAME


@dataclass(frozen=True)
class PersonRow:
    """One checked row of a people file."""

    row: int  # 1-based line number in the file (the header is line 1)
    email: str  # lower-cased, stripped
    name: str
    timezone: str  # a valid IANA name
    manager_email: str | None
    hr_partner_email: str | None
    active: bool
    role: str | None = None
    role_given: bool = False  # the file has a role column (else stored roles are kept)


@dataclass(frozen=True)
class ImportResult:
    created: int
    updated: int
    unchanged: int


class _Problems(list[RowProblem]):
    def add(self, row: int, field: str, problem: str) -> None:
        self.append(RowProblem(row, field, problem))

    def raise_if_any(self, file: str) -> None:
        if self:
            # By row, then in column order; whole-row problems first in their row.
            self.sort(key=lambda p: (p.row, COLUMNS.index(p.field) if p.field in COLUMNS else -1))
            raise ImportRejected(file, list(self))


# --------------------------------------------------------------------------------------------
# Messages (shared by the file checks and the database checks)


def _duplicate(email: str, first: int, again: int) -> str:
    return f"{email} appears on rows {first} and {again}; keep one row per person, delete the other"


def _unknown(what: str, email: str) -> str:
    return f"unknown {what} {email}: add them to the file or import them first"


def _cycle(cycle: Sequence[str], start: str, outside: Collection[str] = ()) -> str:
    i = cycle.index(start)
    path = [*cycle[i:], *cycle[:i], start]
    shown = " → ".join(
        f"{e} (already imported, not in this file)" if e in outside else e for e in path
    )
    return (
        f"reporting cycle {shown}; give one person in the cycle a manager outside it "
        "(or none, for the head of the organization)"
    )


# --------------------------------------------------------------------------------------------
# Pure checks


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def _is_zone(name: str) -> bool:
    if zones := _zone_names():
        return name in zones
    try:  # no zone database to list (unusual): fall back to loading the zone
        ZoneInfo(name)
    except Exception:
        return False
    return True


def _zone_problem(name: str) -> str:
    if not name:
        return "the time zone is empty; give an IANA time zone name such as 'Europe/Berlin'"
    zones = sorted(_zone_names())
    wanted = name.lower().replace(" ", "_")
    by_lower = {z.lower(): z for z in zones}
    by_city = {z.rsplit("/", 1)[-1].lower(): z for z in zones if "/" in z}
    close = difflib.get_close_matches(name, zones, n=1, cutoff=0.75)
    guess = by_lower.get(wanted) or by_city.get(wanted) or (close[0] if close else None)
    hint = f"did you mean '{guess}'?" if guess else "for example 'Europe/Berlin'"
    return f"unknown time zone '{name}'; use an IANA time zone name ({hint})"


def _email_problem(value: str, whose: str) -> str | None:
    if len(value) <= _MAX_EMAIL and _EMAIL.match(value):
        return None
    return f"'{value}' is not a valid email address; write {whose} email as name@example.com"


def _cycles(manager_of: Mapping[str, str | None]) -> list[list[str]]:
    """Every cycle of the "reports to" graph, each once (a self-loop is a cycle of one).

    Each person has at most one manager, so a walk from anyone either ends, reaches a person
    already settled, or closes a cycle on its own path. Linear time.
    """
    settled: set[str] = set()
    found: list[list[str]] = []
    for start in manager_of:
        path: list[str] = []
        position: dict[str, int] = {}
        node: str | None = start
        while node is not None and node in manager_of and node not in settled:
            if node in position:
                found.append(path[position[node] :])
                break
            position[node] = len(path)
            path.append(node)
            node = manager_of[node]
        settled.update(path)
    return found


def _records(text: str, file: str) -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, its cells) for each CSV record; blank lines are skipped."""
    reader = csv.reader(io.StringIO(text, newline=""))
    last_line = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problem = RowProblem(
                reader.line_num or 1, "file", f"not readable as CSV ({exc}); {SAVE_AS}"
            )
            raise ImportRejected(file, [problem]) from exc
        first_line, last_line = last_line + 1, reader.line_num
        if any(c.strip() for c in cells):
            yield first_line, cells


def _read_header(line: int, header: list[str], problems: _Problems) -> dict[str, int]:
    """Column name -> position, for the known columns; problems for the rest."""
    columns: dict[str, int] = {}
    for position, raw in enumerate(header):
        name = raw.strip().lower()
        if not name:
            problems.add(
                line,
                f"column {position + 1}",
                "this column has no name; remove it "
                f"(or the trailing comma), or name it as one of {', '.join(COLUMNS)}",
            )
        elif name in columns:
            problems.add(line, name, f"the column '{name}' appears twice; keep one")
        elif name not in COLUMNS:
            close = difflib.get_close_matches(name, COLUMNS, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems.add(
                line,
                raw.strip(),
                f"unknown column '{raw.strip()}'; {hint}the columns "
                f"are {', '.join(REQUIRED_COLUMNS)} and optionally active and role",
            )
        else:
            columns[name] = position
    for name in REQUIRED_COLUMNS:
        if name not in columns:
            problems.add(
                line, name, f"the required column '{name}' is missing; the header must be {HEADER}"
            )
    return columns


def _read_row(
    line: int, cells: list[str], width: int, columns: Mapping[str, int], problems: _Problems
) -> dict[str, Any]:
    """One data row's values, normalised; problems for each bad field. A column missing from
    the header skips the checks that need it (it is reported once, on the header)."""
    # A row may stop before the optional columns. A longer or otherwise shorter row has its
    # values in the wrong columns (usually an unquoted comma, or a missing one): only its email
    # is read, so that others may still name this person; its other fields would be noise.
    required_width = max((columns[c] for c in REQUIRED_COLUMNS if c in columns), default=-1) + 1
    misaligned = len(cells) > width or len(cells) < required_width
    if misaligned:
        problems.add(
            line,
            "columns",
            f"this row has {len(cells)} values but the header has "
            f"{width} columns; quote values that contain commas, and give every row "
            "every column (manager_email, hr_partner_email and active may be empty)",
        )

    def cell(name: str) -> str | None:
        if name not in columns:
            return None
        position = columns[name]
        return cells[position].strip() if position < len(cells) else ""

    row: dict[str, Any] = {"row": line, "email_ok": False}
    email = (cell("email") or "").lower()
    if "email" in columns:
        if not email:
            problems.add(line, "email", "the email is empty; give the person's work email")
        elif problem := _email_problem(email, "the person's"):
            problems.add(line, "email", problem)
        else:
            row["email_ok"] = True
    row["email"] = email
    if misaligned:
        row.update(
            name="", timezone="", manager_email=None, hr_partner_email=None, active=True, role=None
        )
        return row

    row["name"] = name = cell("name") or ""
    if "name" in columns and not name:
        problems.add(line, "name", "the name is empty; give the name to use in emails")
    elif len(name) > _MAX_NAME:
        problems.add(
            line, "name", f"the name has {len(name)} characters; shorten it to {_MAX_NAME} at most"
        )

    row["timezone"] = zone = cell("timezone") or ""
    if "timezone" in columns and not _is_zone(zone):
        problems.add(line, "timezone", _zone_problem(zone))

    for field, what in LINKS:
        value = (cell(field) or "").lower() or None
        if value is not None and (problem := _email_problem(value, f"the {what}'s")):
            problems.add(line, field, problem)
            value = None  # reported; not to be reported again as unknown
        row[field] = value

    active = (cell("active") or "").lower()
    row["active"] = active not in _FALSE
    if active and active not in _TRUE | _FALSE:
        problems.add(
            line,
            "active",
            f"'{cell('active')}' is not a yes/no value; write true, "
            "false, yes, no, 1 or 0 (or leave it empty, meaning true)",
        )

    role = (cell("role") or "").lower()
    row["role"] = role or None
    if role and not _ROLE.match(role):
        problems.add(
            line,
            "role",
            f"'{cell('role')}' is not a role name; write the name of a file in config/roles "
            "without .toml, e.g. 'engineer' (lower case, letters, digits, - or _), or leave it "
            "empty",
        )
    return row


def parse_people_csv(
    text: str, file: str, existing_emails: Collection[str] = ()
) -> list[PersonRow]:
    """Check a whole people file and return its rows, or raise ImportRejected listing every
    problem. Rows may name people of ``existing_emails`` (already imported) as manager or HR
    partner."""
    records = list(_records(text.removeprefix("\ufeff"), file))
    problems = _Problems()
    if not records:
        problems.add(
            1,
            "header",
            f"the file is empty; the first line must be the header "
            f"{HEADER}, then one row per person",
        )
        problems.raise_if_any(file)
    (header_line, header), data = records[0], records[1:]
    columns = _read_header(header_line, header, problems)
    if not data:
        problems.add(
            header_line + 1, "file", "there is nobody after the header; add one row per person"
        )
    rows = [_read_row(line, cells, len(header), columns, problems) for line, cells in data]

    # Duplicates. The first row of an email stands for that person in the checks below.
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not row["email_ok"]:
            continue
        if row["email"] in first:
            problems.add(
                row["row"],
                "email",
                _duplicate(row["email"], first[row["email"]]["row"], row["row"]),
            )
        else:
            first[row["email"]] = row

    # References: to people in the file or imported before.
    known = set(first) | {e.strip().lower() for e in existing_emails}
    for row in rows:
        for field, what in LINKS:
            if (value := row[field]) is None:
                continue
            if field == "manager_email" and value == row["email"]:
                problems.add(
                    row["row"],
                    field,
                    f"{value} is their own manager; name their real "
                    "manager, or leave manager_email empty for the head of the "
                    "organization",
                )
            elif value not in known:
                problems.add(row["row"], field, _unknown(what, value))

    # Reporting cycles inside the file (being one's own manager is reported above).
    manager_of = {
        email: m if (m := row["manager_email"]) in first and m != email else None
        for email, row in first.items()
    }
    for cycle in _cycles(manager_of):
        for email in cycle:
            problems.add(first[email]["row"], "manager_email", _cycle(cycle, email))

    problems.raise_if_any(file)
    return [
        PersonRow(
            row=r["row"],
            email=r["email"],
            name=r["name"],
            timezone=r["timezone"],
            manager_email=r["manager_email"],
            hr_partner_email=r["hr_partner_email"],
            active=r["active"],
            role=r["role"],
            role_given="role" in columns,
        )
        for r in rows
    ]


# --------------------------------------------------------------------------------------------
# The database


def _require_aware(now: dt.datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime (UTC)")


def _check_against_stored(
    rows: Sequence[PersonRow], stored: Mapping[str, Person], email_of_id: Mapping[int, str]
) -> _Problems:
    """What the file alone cannot show: the people already stored in the organization."""
    problems = _Problems()
    in_file: dict[str, PersonRow] = {}
    for r in rows:
        if r.email in in_file:
            problems.add(r.row, "email", _duplicate(r.email, in_file[r.email].row, r.row))
        else:
            in_file[r.email] = r
    known = in_file.keys() | stored.keys()
    for r in rows:
        for field, what in LINKS:
            if (value := getattr(r, field)) is not None and value not in known:
                problems.add(r.row, field, _unknown(what, value))

    # The reporting graph as it would be after the import: stored links, then the file's.
    manager_of: dict[str, str | None] = {
        email: email_of_id.get(p.manager_id) if p.manager_id is not None else None
        for email, p in stored.items()
    }
    manager_of.update({email: r.manager_email for email, r in in_file.items()})
    outside = stored.keys() - in_file.keys()
    for cycle in _cycles(manager_of):
        for email in cycle:  # a cycle of stored people only is not this file's doing
            if email in in_file:
                problems.add(in_file[email].row, "manager_email", _cycle(cycle, email, outside))
    return problems


def apply_people(
    session: Session,
    organization_id: int,
    rows: list[PersonRow],
    now: dt.datetime,
    actor: str = "import",
    *,
    file: str = "people import",
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Create or update the people of ``rows`` in one organization, in the caller's transaction.

    Raises ImportRejected, having written nothing, if the rows name an unknown manager or HR
    partner or would close a reporting cycle together with people already stored. Each created
    or changed person gets one audit entry; an unchanged one is not touched. ``progress`` is
    told ``(people done, rows)`` as each person's audit entry is written (the slow part).
    """
    _require_aware(now)
    # Locking the organization serialises imports into it, so the checks hold until commit.
    org = session.execute(
        select(Organization).where(Organization.id == organization_id).with_for_update()
    ).scalar_one_or_none()
    if org is None:
        raise LookupError(f"no organization with id {organization_id}")
    people = session.scalars(select(Person).where(Person.organization_id == organization_id))
    stored = {p.email.lower(): p for p in people}
    email_of_id = {p.id: email for email, p in stored.items()}
    _check_against_stored(rows, stored, email_of_id).raise_if_any(file)

    def email_of(person_id: int | None) -> str | None:
        return None if person_id is None else email_of_id.get(person_id)

    # Pass 1: the people themselves, without links. ``changes`` is None for a new person.
    written: list[tuple[PersonRow, Person, dict[str, Any] | None]] = []
    unchanged = 0
    for r in rows:
        person = stored.get(r.email)
        if person is None:
            person = Person(
                organization_id=organization_id,
                email=r.email,
                name=r.name,
                timezone=r.timezone,
                active=r.active,
                left_at=None if r.active else now,
                manager_id=None,
                hr_partner_id=None,
                role=r.role,
                created_at=now,
                updated_at=now,
            )
            session.add(person)
            written.append((r, person, None))
            continue
        before = {
            "name": person.name,
            "timezone": person.timezone,
            "active": person.active,
            "manager_email": email_of(person.manager_id),
            "hr_partner_email": email_of(person.hr_partner_id),
        }
        if r.role_given:
            before["role"] = person.role
        changes = {
            field: {"from": old, "to": getattr(r, field)}
            for field, old in before.items()
            if getattr(r, field) != old
        }
        if not changes:
            unchanged += 1
            continue
        if person.active != r.active:
            person.left_at = None if r.active else now  # retention counts from leaving
        person.name, person.timezone, person.active = r.name, r.timezone, r.active
        if r.role_given:
            person.role = r.role
        person.updated_at = now
        written.append((r, person, changes))
    session.flush()

    # Pass 2: manager and HR partner, looked up inside this organization only.
    id_of = {email: p.id for email, p in stored.items()}
    id_of.update({r.email: p.id for r, p, _ in written})
    for r, person, _ in written:
        person.manager_id = id_of[r.manager_email] if r.manager_email else None
        person.hr_partner_id = id_of[r.hr_partner_email] if r.hr_partner_email else None
    session.flush()

    data: dict[str, Any]
    if progress is not None:
        progress(unchanged, len(rows))  # unchanged people need no more work
    for done, (r, person, diff) in enumerate(written, start=unchanged + 1):
        if diff is None:
            action = "person.created"
            data = {
                "email": r.email,
                "name": r.name,
                "timezone": r.timezone,
                "active": r.active,
                "manager_email": r.manager_email,
                "hr_partner_email": r.hr_partner_email,
                **({"role": r.role} if r.role else {}),
            }
        else:
            action, data = "person.updated", {"email": r.email, "changed": diff}
        audit.record(
            session,
            organization_id,
            actor=actor,
            action=action,
            subject_kind="person",
            subject_id=person.id,
            at=now,
            data=data,
        )
        if progress is not None:
            progress(done, len(rows))
    session.flush()
    created = sum(1 for _, _, changes in written if changes is None)
    return ImportResult(created=created, updated=len(written) - created, unchanged=unchanged)


def import_people_file(
    session: Session,
    organization_id: int,
    path: Path,
    now: dt.datetime,
    progress: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Read, check and apply one people file (UTF-8, with or without a byte-order mark);
    ``progress`` as in :func:`apply_people`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        problem = RowProblem(
            1, "file", f"the file is not UTF-8 text ({exc.reason} at byte {exc.start}); {SAVE_AS}"
        )
        raise ImportRejected(str(path), [problem]) from exc
    existing = session.scalars(
        select(Person.email).where(Person.organization_id == organization_id)
    ).all()
    rows = parse_people_csv(text, str(path), existing)
    return apply_people(session, organization_id, rows, now, file=str(path), progress=progress)


def ensure_organization(session: Session, slug: str, name: str, now: dt.datetime) -> Organization:
    """The organization with ``slug``; created, and its creation audited, if absent. An existing
    organization is returned unchanged, whatever ``name`` says."""
    _require_aware(now)
    query = select(Organization).where(Organization.slug == slug)
    if (org := session.scalars(query).one_or_none()) is not None:
        return org
    try:
        with session.begin_nested():  # another process may be creating it at this moment
            org = Organization(
                slug=slug, name=name, audit_seq=0, audit_head="0" * 64, created_at=now
            )
            session.add(org)
    except IntegrityError:
        return session.scalars(query).one()
    audit.record(
        session,
        org.id,
        actor="system",
        action="organization.created",
        subject_kind="organization",
        subject_id=org.id,
        at=now,
        data={"slug": slug, "name": name},
    )
    return org
