"""Isolation overhead: the loop's throughput with 50 organizations vs one of the same size.

``tenants.isolation_overhead`` and ``tenants.rls_overhead`` (issue 10; PostgreSQL and Redis
db 11, like ``bench/scale.py``, whose worlds it runs). Three worlds in one run, one after the
other, each a PostgreSQL schema of its own, a queue of its own in Redis, a data folder, the
tick (``automation run``) and ``automation worker`` processes sharing only the database and
the broker:

- **one organization** of N people (isolation_overhead's baseline), as an ordinary role;
- **50 organizations** of N/50 people each (isolation_overhead's value), as an ordinary role;
- **one organization as a superuser** (rls_overhead's baseline; its value is the first world).

The service runs as an ordinary PostgreSQL role (no superuser, no BYPASSRLS, owner of the
tables it migrates), as a production deployment should: row-level security binds it. A
superuser is never bound by it, so the third world shows what the policies cost.

N is 10,000 by default; ``--scale s`` runs N x s people (at least 100, a multiple of 50):
``--scale 0.1`` is 1,000 people, ``--scale 0.01`` (the test's) 100, two per organization.

Both worlds hold the same people: 50 management trees of N/50 people, each built as
``bench/scale.py`` builds its one (eight reports per manager, a team per time zone), with
addresses of their own domain (``p7@t03.scale.test``). The single organization has all 50
trees (so 50 people without a manager); in the other world each tree is an organization.
So both have the same N - 50 weekly 1:1 series under the same cadence files, and the same
check-ins, emails, calendar events, replies, records and check-in tasks: only who owns them
differs. What is per organization by nature differs too: one plan and one retention task
per organization (2 vs 100, beside about 6 tasks per series). Those run, and their time is
in the phases, but only the check-in tasks (invite, agenda, followup, send, ingest: the same
number in both worlds) are counted, so both throughputs divide the same work by its time.

The work is ``bench/scale.py``'s three phases, run by its code
(:func:`bench.scale.run_world` with :class:`TenantWorld`): (a) plan a quarter (the ``plan``
tasks, an ``invite`` per series, the retention sweeps), (b) a week's agendas and prompts,
(c) a week of replies, delivered to the deployment's one inbox (a Maildir) as an MTA does,
which the tick reads and stores under the organization each reply's signed address names.
Each phase is timed from the moment its work falls due to the moment its last task is done;
throughput is check-in tasks done per second over the three phases. Value: the 50
organizations' throughput; baseline: the one organization's; ratio: value / baseline (goal
at least 0.8). The worker processes run each task with its organization's scoped runtime
(``Runtime.tenant``: scoped sessions, row-level security's ``app.organization_id``), and the
tick shares each batch round-robin between organizations with a cap on each one's queued
tasks: what the ratio measures is what that costs, or gains (the audit chain's head is one
row per organization, so one organization serialises its audited writes on one row where 50
spread them).

Worker processes and threads: ``AUTOMATION_BENCH_TENANTS_PROCESSES`` (default 2) and
``AUTOMATION_BENCH_TENANTS_THREADS`` (default 4); ``AUTOMATION_BENCH_TENANTS_RLS=0`` leaves
the superuser world out (rls_overhead then says skipped), a third less time at full size.
Each world is then counted, per organization: every task of each kind done once (none failed
or left due), every email once (and on disk once), every series once in both people's
calendar files, one stored reply, one record and one confirmation per prompt; and no row of
one organization references another's: every foreign key between tenant tables, each task's
subject, each audit entry's subject, each email's recipients and each calendar file's events
are checked against the owner. The note says ``exactly once: yes`` or lists the PROBLEMS,
with the phases' times and the load average (other work on the machine moves every figure).
Where the time went is written to stderr for each world and phase, as ``bench/scale.py``
does."""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.scale import (
    APP,
    ORG,
    World,
    WorldResult,
    _terminate_cleanly,
    _unreachable,
    describe,
    ics_uids,
    log,
    people_csv,
    run_world,
)

NAME = "tenants.isolation_overhead"
PEOPLE = 10_000
ORGANIZATIONS = 50
PROCESSES = int(os.environ.get("AUTOMATION_BENCH_TENANTS_PROCESSES", "2"))
THREADS = int(os.environ.get("AUTOMATION_BENCH_TENANTS_THREADS", "4"))
# 0: leave out the superuser world (and rls_overhead): at full size each world takes about
# 45 minutes on two cores.
RLS_WORLD = os.environ.get("AUTOMATION_BENCH_TENANTS_RLS", "1") != "0"
PER_ORGANIZATION = ("plan", "retention")  # task kinds of which each organization has one
# The ordinary PostgreSQL role the service runs as (row-level security binds it); the
# rls_overhead row's baseline runs as the login role, a superuser, which it never binds.
APP_ROLE = "bench_tenants_app"
RLS_NAME = "tenants.rls_overhead"

# Each task's subject, by kind: the table its subject_id is a row of.
TASK_SUBJECTS = {
    "plan": "organizations",
    "retention": "organizations",
    "invite": "checkin_series",
    "agenda": "occurrences",
    "agenda_update": "occurrences",
    "followup": "occurrences",
    "send": "outbound_messages",
    "ingest": "inbound_messages",
    "calendar_sync": "calendar_syncs",
    "calendar_channel_renew": "calendar_syncs",
}
# Each audit entry's subject, by subject_kind.
AUDIT_SUBJECTS = {
    "organization": "organizations",
    "person": "people",
    "cadence": "cadences",
    "series": "checkin_series",
    "occurrence": "occurrences",
    "outbound_message": "outbound_messages",
    "inbound_message": "inbound_messages",
}


def tree_csv(tree: int, people: int) -> list[str]:
    """The rows (no header) of management tree ``tree``: ``bench/scale.py``'s tree of
    ``people``, in a mail domain of its own."""
    rows = people_csv(people).replace("@scale.test", f"@t{tree:02d}.scale.test")
    return rows.splitlines()[1:]


class TenantWorld(World):
    """A ``bench/scale.py`` world whose ``trees`` management trees belong to
    ``organizations`` organizations (``trees / organizations`` each). The first is the
    deployment's own (``bench.scale.ORG``, made by the service's bootstrap); the others are
    created by ``ensure_organization`` (as ``automation org create`` does, audited), with no
    folder of their own (so the same cadence files), and get their plan and retention tasks
    as the bootstrap gives the first. Each one's people are imported in its own scope."""

    def __init__(
        self,
        folder: Path,
        people: int,
        processes: int,
        threads: int,
        *,
        organizations: int,
        trees: int = ORGANIZATIONS,
        db_role: str | None = APP_ROLE,
    ):
        super().__init__(folder, people, processes, threads)
        self.db_role = db_role
        assert trees % organizations == 0 and people % trees == 0, (people, trees, organizations)
        self.organizations, self.trees = organizations, trees
        self.schema = f"bench_tenants_{uuid.uuid4().hex[:8]}"
        self.app = f"{APP}_{self.schema[-8:]}"  # bench/scale.py's prefix: its monitor's filter
        self.namespace = self.schema
        self.org_ids: list[int] = []

    def populate(self) -> None:
        from automation.db import transaction
        from automation.people import ensure_organization, import_people_file
        from automation.services.loop import bootstrap
        from automation.services.tasks import create_task

        rt = self.rt
        now = rt.now()
        self.org = bootstrap(rt)
        self.org_ids = [self.org]
        today = now.date().isoformat()
        with transaction(rt.factory) as session:
            for n in range(1, self.organizations):
                org = ensure_organization(session, f"{ORG}-{n:02d}", f"Client {n:02d}", now)
                create_task(session, org.id, "plan", f"plan:{today}", org.id, now, now)
                create_task(session, org.id, "retention", f"retention:{today}", org.id, now, now)
                self.org_ids.append(org.id)
        per_org = self.trees // self.organizations
        size = self.people // self.trees
        header = people_csv(0)
        for n, org_id in enumerate(self.org_ids):
            rows = [row for t in range(n * per_org, (n + 1) * per_org) for row in tree_csv(t, size)]
            csv = self.folder / f"people-{n:02d}.csv"
            csv.write_text(header + "\n".join(rows) + "\n")
            with transaction(rt.tenant(org_id).factory) as session:
                import_people_file(session, org_id, csv, now)

    def _settled(self) -> bool:
        """As bench/scale.py's, but a phase whose tick or worker process has exited stops at
        once, naming it, rather than waiting for its timeout (an hour and more at full size)."""
        for proc, name, output in (
            (self.worker, "worker", self.worker_log),
            (self.ticker, "tick", self.tick_log),
        ):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"the {name} process exited with {proc.returncode} during a phase; "
                    f"its output ends: {output.read_text(errors='replace')[-1000:]}"
                )
        return super()._settled()

    def verify(self, result: WorldResult, replies: int) -> None:
        super().verify(result, replies)  # the whole world: bench/scale.py's count
        verify_organizations(self, result)


def verify_organizations(world: TenantWorld, result: WorldResult) -> None:
    """Everything exactly once per organization, and nothing of one referencing another's."""
    from sqlalchemy import text

    problems = result.problems
    with world.rt.engine.connect() as conn:

        def grouped(sql: str) -> dict[Any, int]:
            return {tuple(row[:-1]): int(row[-1]) for row in conn.execute(text(sql))}

        orgs = [org for (org,) in conn.execute(text("SELECT id FROM organizations"))]
        if sorted(orgs) != sorted(world.org_ids):
            problems.append(f"{len(orgs)} organizations, expected {len(world.org_ids)}")
        series = grouped(
            "SELECT organization_id, count(*) FROM checkin_series WHERE active GROUP BY 1"
        )
        people = grouped("SELECT organization_id, count(*) FROM people GROUP BY 1")
        done = grouped(
            "SELECT organization_id, kind, count(*) FROM tasks WHERE state = 'done' GROUP BY 1, 2"
        )
        emails = grouped(
            "SELECT organization_id, kind, count(*) FROM outbound_messages GROUP BY 1, 2"
        )
        stored = grouped(
            "SELECT organization_id, state, count(*) FROM inbound_messages GROUP BY 1, 2"
        )
        records = grouped("SELECT organization_id, count(*) FROM conversation_records GROUP BY 1")
        size = world.people // len(world.org_ids)
        trees = world.trees // len(world.org_ids)
        for org in world.org_ids:
            s = series.get((org,), 0)
            expected = {
                **{("people", ""): size, ("series", ""): size - trees},
                **{("task", k): 1 for k in ("plan", "retention")},
                **{("task", k): s for k in ("invite", "agenda", "followup", "ingest")},
                ("task", "send"): 4 * s,  # two agenda emails, a prompt and a confirmation
                ("email", "agenda"): 2 * s,
                ("email", "followup"): s,
                ("email", "confirmation"): s,
                ("reply", "recorded"): s,  # one reply to each prompt
                ("record", ""): s,
            }
            found = {
                ("people", ""): people.get((org,), 0),
                ("series", ""): s,
                **{("task", k): n for (o, k), n in done.items() if o == org},
                **{("email", k): n for (o, k), n in emails.items() if o == org},
                **{("reply", k): n for (o, k), n in stored.items() if o == org},
                ("record", ""): records.get((org,), 0),
            }
            wrong = [
                f"{' '.join(k for k in key if k)} {found.get(key, 0)}, expected "
                f"{expected.get(key, 0)}"
                for key in sorted(set(expected) | set(found))
                if expected.get(key, 0) != found.get(key, 0)
            ]
            if wrong:
                problems.append(f"organization {org}: " + ", ".join(wrong[:6]))
        checked, crossing = cross_references(conn, world.rt.settings.calendars)
    result.counts["references_checked"] = checked
    if crossing:
        problems.append("rows referencing another organization's: " + "; ".join(crossing[:6]))


def cross_references(conn: Any, calendars: Path | None) -> tuple[int, list[str]]:
    """(references checked, those that cross organizations): every foreign key between two
    tenant tables, each task's and each audit entry's subject (of the kinds in
    :data:`TASK_SUBJECTS` and :data:`AUDIT_SUBJECTS`), each email's recipients and each event
    of the calendar files in ``calendars``. On PostgreSQL and SQLite (tests/test_demo_clients.py
    checks the demo's two clients with it)."""
    from sqlalchemy import text

    from automation.models import Base

    checked = 0
    crossing: list[str] = []

    def count(label: str, sql: str) -> None:
        nonlocal checked
        total, bad = conn.execute(text(sql)).one()
        checked += int(total or 0)
        if bad:
            crossing.append(f"{bad} {label}")

    for table in Base.metadata.sorted_tables:
        if "organization_id" not in table.c:
            continue
        for fk in table.foreign_key_constraints:
            target = fk.referred_table
            if target.name == "organizations" or "organization_id" not in target.c:
                continue  # the owner itself (or another deployment-wide table)
            on = " AND ".join(f"t.{e.parent.name} = r.{e.column.name}" for e in fk.elements)
            columns = ", ".join(e.parent.name for e in fk.elements)
            count(
                f"{table.name}({columns}) -> {target.name}",
                "SELECT count(*), count(*) FILTER (WHERE t.organization_id <> r.organization_id) "
                f"FROM {table.name} t JOIN {target.name} r ON {on}",
            )
    for column, subjects, kinds in (
        ("kind", TASK_SUBJECTS, "tasks"),
        ("subject_kind", AUDIT_SUBJECTS, "audit_log"),
    ):
        for kind, target in subjects.items():
            owner = "r.id" if target == "organizations" else "r.organization_id"
            # A subject that is gone (a retention sweep's) counts as crossing: it is checked.
            count(
                f"{kinds} of kind {kind} -> {target}",
                f"SELECT count(*), count(*) FILTER (WHERE {owner} IS DISTINCT FROM "
                f"t.organization_id) FROM {kinds} t LEFT JOIN {target} r ON r.id = t.subject_id "
                f"WHERE t.{column} = '{kind}' AND t.subject_id IS NOT NULL",
            )
    # Emails: each recipient a person of the email's organization.
    owner_of = {
        address.lower(): org
        for address, org in conn.execute(text("SELECT email, organization_id FROM people"))
    }
    bad = total = 0
    for org, recipients in conn.execute(
        text("SELECT organization_id, recipients FROM outbound_messages")
    ):
        if isinstance(recipients, str):  # SQLite hands a JSON column to plain SQL as text
            recipients = json.loads(recipients)
        for address in recipients or []:
            total += 1
            bad += owner_of.get(str(address).lower()) != org
    checked += total
    if bad:
        crossing.append(f"{bad} email recipient(s) outside the email's organization")
    # Calendar files: each event one of a series of the file's owner's organization.
    series_org = dict(conn.execute(text("SELECT uid, organization_id FROM checkin_series")).all())
    bad = total = 0
    for path in calendars.glob("*.ics") if calendars else ():
        org = owner_of.get(path.stem.lower())
        for uid, n in ics_uids(path.read_bytes()).items():
            total += n
            bad += n * (series_org.get(uid) != org)
    checked += total
    if bad:
        crossing.append(f"{bad} calendar event(s) in a file of another organization's person")
    return checked, crossing


def counted(result: WorldResult) -> int:
    """The tasks done for the check-ins (per series, email and reply): the same number in
    both worlds. The plan and retention tasks, one each per organization, run and take their
    time in the phases but are not counted."""
    return result.tasks - sum(result.counts.get(f"tasks.{k}", 0) for k in PER_ORGANIZATION)


def throughput(result: WorldResult) -> float:
    return counted(result) / result.seconds if result.seconds else 0.0


def _phase_line(multi: WorldResult, single: WorldResult) -> str:
    """Each phase's time in both worlds, and how much faster the organizations did it."""
    return ", ".join(
        f"{m.name} {m.seconds:.1f}/{s.seconds:.1f} s (x{s.seconds / m.seconds:.2f})"
        for m, s in zip(multi.phases, single.phases, strict=True)
    )


def rows(result_type: type, scale: float, folder: Path) -> list[Any]:
    why = _unreachable()
    if why:
        return [
            result_type(name, 0.0, "tasks/s", 0.0, 0.0, f"skipped: {why}")
            for name in (NAME, RLS_NAME)
        ]
    per_org = max(int(PEOPLE * scale) // ORGANIZATIONS, 2)
    people = per_org * ORGANIZATIONS
    load = os.getloadavg()
    log(f"tenants: load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    results: dict[str, WorldResult] = {}
    # The two worlds of the ratio first, back to back; the superuser world last.
    worlds = (
        ("one", 1, APP_ROLE),
        ("many", ORGANIZATIONS, APP_ROLE),
        ("superuser", 1, None),
    )[: 3 if RLS_WORLD else 2]
    with _terminate_cleanly():
        for key, organizations, role in worlds:
            sub = folder / f"tenants-{key}"
            sub.mkdir(parents=True, exist_ok=True)
            make: Callable[[Path, int, int, int], World] = functools.partial(
                TenantWorld, organizations=organizations, db_role=role
            )
            as_role = f"as {role}" if role else "as the login role (a superuser: no RLS)"
            log(f"tenants: {organizations} organization(s) of {people // organizations} {as_role}")
            results[key] = run_world(sub, people, PROCESSES, THREADS, make)
            log(describe(results[key]))
    single, multi = results["one"], results["many"]
    bare = results.get("superuser")
    problems = [f"{key}: {'; '.join(r.problems[:4])}" for key, r in results.items() if r.problems]
    if len({counted(r) for r in results.values()}) != 1:
        problems.append(
            "check-in tasks differ: " + ", ".join(f"{counted(r)}" for r in results.values())
        )
    references = sum(r.counts.get("references_checked", 0) for r in results.values())
    once = (
        f"exactly once: yes (every world: every task, email, calendar event, reply and record "
        f"once per organization; none of {references} references crosses organizations)"
        if not problems
        else f"exactly once: NO; PROBLEMS: {' | '.join(problems)}"
    )
    common = (
        f"{counted(single)} check-in tasks counted in each world; {PROCESSES} worker processes "
        f"x {THREADS} threads"
    )
    note = (
        f"{ORGANIZATIONS} organizations of {per_org} people vs one of {people} (the same "
        f"{ORGANIZATIONS} management trees, {multi.series}/{single.series} series), both as "
        f"an ordinary role under row-level security; {common} (plus "
        f"{multi.tasks - counted(multi)}/{single.tasks - counted(single)} plan and retention "
        f"tasks, run but not counted); phases {ORGANIZATIONS} orgs/1 org: "
        f"{_phase_line(multi, single)}; load average {multi.load[0]:.1f}/{single.load[0]:.1f} "
        f"at the start; goal ratio >= 0.8; {once}"
    )

    def row(name: str, value: WorldResult, baseline: WorldResult, text: str) -> Any:
        ours, base = throughput(value), throughput(baseline)
        return result_type(name, ours, "tasks/s", base, ours / base if base else 0.0, text)

    if bare is None:
        skipped = "skipped: AUTOMATION_BENCH_TENANTS_RLS=0"
        return [
            row(NAME, multi, single, note),
            result_type(RLS_NAME, 0.0, "tasks/s", 0.0, 0.0, skipped),
        ]
    rls_note = (
        f"one organization of {people} as an ordinary role (row-level security enforced) vs "
        f"the same as a superuser (never bound by it); {common}; phases RLS/superuser: "
        f"{_phase_line(single, bare)}; load average {single.load[0]:.1f}/{bare.load[0]:.1f} "
        f"at the start; {once}"
    )

    return [row(NAME, multi, single, note), row(RLS_NAME, single, bare, rls_note)]


def register(benchmark: Callable[[str], Callable[[Any], Any]], result_type: type) -> None:
    """Add the benchmark to bench/run.py's registry."""

    @benchmark(NAME)
    def isolation_overhead(scale: float, folder: Path) -> list[Any]:
        """The loop's throughput with 50 organizations vs one of the same people, and with
        row-level security enforced vs not (tenants.rls_overhead)."""
        return rows(result_type, scale, folder)
