"""Engines, sessions, migrations and the atomic claim of due work.

SQLite (the embedded default) and PostgreSQL run the same code. The only differences live
here: SQLite gets WAL, foreign keys and a busy timeout; PostgreSQL gets ``FOR UPDATE SKIP
LOCKED`` when the tick picks due rows.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    bindparam,
    create_engine,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from automation.models import Task, TaskState

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str, **kwargs: Any) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Python's sqlite3 opens transactions lazily; BEGIN IMMEDIATE on first write is
            # what makes the claim UPDATE below atomic across threads and processes.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


def alembic_config(url: str | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    from alembic import command

    cfg = alembic_config()
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()


@contextmanager
def exclusive(engine: Engine, name: str) -> Iterator[bool]:
    """A named lock held for the block by one process on any machine; yields False at once,
    without waiting, when another holds it (the caller then skips work someone else is doing).

    PostgreSQL: a session advisory lock on a connection of its own, released at the end of the
    block or when the process dies (its session ends). SQLite, one machine: ``flock`` on a
    file beside the database, which also excludes other threads of the same process.
    """
    if engine.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        with engine.connect() as conn:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield True  # a private in-memory database: nobody else can see it
        return
    path = Path(f"{database}.{hashlib.sha256(name.encode()).hexdigest()[:16]}.lock")
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def dialect_insert(session: Session, table: Any) -> Any:
    """An INSERT of the session's dialect (PostgreSQL or SQLite), which both have
    ``on_conflict_do_nothing`` and ``returning``."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql_insert(table)
    return sqlite_insert(table)


def insert_new_id(
    session: Session, model: Any, values: dict[str, Any], unique: tuple[str, ...]
) -> int | None:
    """``INSERT ... ON CONFLICT (unique) DO NOTHING RETURNING id``: the new row's id, or None
    when a row with the same ``unique`` key exists. The statement is built once per table and
    dialect and runs as Core (no ORM bulk-insert machinery, no autoflush): on the hot paths
    (every task and every outgoing email) building and executing it through the ORM cost more
    than the round trip."""
    stmt = _insert_ignoring(session.get_bind().dialect.name, model.__table__, unique)
    return session.execute(stmt, values).scalar()


@functools.cache
def _insert_ignoring(dialect: str, table: Any, unique: tuple[str, ...]) -> Any:
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    return insert(table).on_conflict_do_nothing(index_elements=list(unique)).returning(table.c.id)


def due_task_ids(session: Session, now: dt.datetime, limit: int = 500) -> list[int]:
    """Ids of tasks that are due, or whose lease ran out, oldest first.

    Served by the (state, due_at) index: the cost follows the number of due rows, not the size
    of the table. On PostgreSQL the rows are locked with SKIP LOCKED so ticks on several
    machines pick disjoint sets.
    """
    query = (
        select(Task.id)
        .where(
            or_(
                (Task.state == TaskState.PENDING) & (Task.due_at <= now),
                (Task.state == TaskState.LEASED) & (Task.lease_until < now),
            )
        )
        .order_by(Task.due_at)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query))


def due_tasks_fairly(session: Session, now: dt.datetime, limit: int = 500) -> list[tuple[int, int]]:
    """``(task id, organization id)`` of up to ``limit`` due tasks, shared between the
    organizations round-robin: every organization's oldest due task, then every one's second
    oldest, and so on (ties by due time). The tick's pick.

    Why round-robin and not oldest first: one organization's burst (a 5,000-person import, a
    backlog after an outage) is older than the work other organizations make due afterwards,
    so "oldest first" handed the whole limit to the burst, tick after tick, and the others
    waited until it was done. Round-robin gives each organization an equal share of the limit
    (what one does not use goes to the others), and the order is the order the tick sends
    in, so the others' tasks are near the front of the queue too.

    When no more than ``limit`` tasks are due (the usual case) the indexed "oldest first"
    query has them all and they are only reordered here. Only a backlog (``limit`` rows came
    back) costs the ranking query, which numbers each organization's due tasks (a window
    function over the due rows: its cost follows the backlog, not the table). PostgreSQL does
    not allow FOR UPDATE with a window function, so there the ranked rows are then locked with
    SKIP LOCKED (and checked to be still due) in a second statement: ticks on several machines
    still pick disjoint sets.
    """
    postgresql = session.get_bind().dialect.name == "postgresql"
    due = _due(now)
    oldest = select(Task.id, Task.organization_id, Task.due_at).where(due).order_by(Task.due_at)
    if postgresql:
        oldest = oldest.with_for_update(skip_locked=True)
    rows = [tuple(row) for row in session.execute(oldest.limit(limit))]
    if len(rows) >= limit:
        place = (
            func.row_number()
            .over(partition_by=Task.organization_id, order_by=(Task.due_at, Task.id))
            .label("place")
        )
        ranked = select(Task.id, Task.organization_id, Task.due_at, place).where(due).subquery()
        shared = (
            select(ranked.c.id, ranked.c.organization_id, ranked.c.due_at)
            .where(ranked.c.place <= limit)  # nobody can get more than the whole limit
            .order_by(ranked.c.place, ranked.c.due_at, ranked.c.id)
            .limit(limit)
        )
        rows = [tuple(row) for row in session.execute(shared)]
        if postgresql and rows:
            locked = set(
                session.scalars(
                    select(Task.id)
                    .where(Task.id.in_([task_id for task_id, _, _ in rows]), due)
                    .with_for_update(skip_locked=True)
                )
            )
            rows = [row for row in rows if row[0] in locked]
    return [(task_id, organization_id) for task_id, organization_id, _ in _round_robin(rows)]


def _due(now: dt.datetime) -> Any:
    """Pending and due, or leased with the lease run out (a worker died)."""
    return or_(
        (Task.state == TaskState.PENDING) & (Task.due_at <= now),
        (Task.state == TaskState.LEASED) & (Task.lease_until < now),
    )


def _round_robin(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``(id, organization id, due_at)`` rows in the round-robin order: by each row's place in
    its organization's queue (oldest first), then by due time."""
    places: dict[int, int] = {}
    ranked = []
    for row in sorted(rows, key=lambda row: (row[2], row[0])):
        places[row[1]] = places.get(row[1], 0) + 1
        ranked.append((places[row[1]], row[2], row[0], row))
    return [row for *_, row in sorted(ranked, key=lambda item: item[:3])]


def claim_task(session: Session, task_id: int, now: dt.datetime, lease_seconds: int) -> Task | None:
    """Take the lease on a task if it is still due; return it, or None if someone else has it.

    A conditional UPDATE is the whole protocol: the first worker to flip the row wins, and a
    worker that dies leaves a lease that expires and makes the task due again. One statement
    (UPDATE ... RETURNING the row). On PostgreSQL the claim's commit does not wait for its WAL
    to reach the disk (``synchronous_commit`` off for this transaction only): a claim lost in
    a server crash only makes the task due again, and the work's own commit, which does wait,
    flushes the claim before it (the WAL is written in order).
    """
    lease_until = now + dt.timedelta(seconds=lease_seconds)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
    return session.scalars(
        _claim_statement(), {"task_id": task_id, "now": now, "lease_until": lease_until}
    ).one_or_none()


@functools.cache
def _claim_statement() -> Any:
    # Built once: every task run claims, and building the statement cost as much as running it.
    now = bindparam("now")
    return (
        update(Task)
        .where(Task.id == bindparam("task_id"))
        .where(
            or_(
                (Task.state == TaskState.PENDING) & (Task.due_at <= now),
                (Task.state == TaskState.LEASED) & (Task.lease_until < now),
            )
        )
        .values(
            state=TaskState.LEASED,
            lease_until=bindparam("lease_until"),
            attempts=Task.attempts + 1,
            updated_at=now,
        )
        .returning(Task)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
