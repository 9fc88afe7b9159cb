"""``ingest.overhead_vs_floor`` (PostgreSQL): a reply's whole way in, raw bytes to record,
against the bare floor of the same bytes: parse the MIME and insert one row.

value = milliseconds per message end to end: ``store_many`` (the raw rows and their ingest
tasks, a poll page of 100 per transaction, as ``poll_inbox`` stores them) then each ingest
task under its lease (decode, verify the reply token, check the sender, cut
quotes and signature, extract answers, rating and action items, write the record, its action
items and audit entry, queue the confirmation). Sending the confirmation is not counted: it is
outbound work. baseline = milliseconds per message for ``email.message_from_bytes`` with the
default policy, reading the text body, and one INSERT of the raw bytes with sender and subject
in a transaction of its own. ratio = value / baseline (goal under 3)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.escalation import POSTGRES_URL, _reachable

COUNT = 1_000
PAGE = 100  # poll_inbox's page


def _world(folder: Path, database_url: str) -> tuple[Any, ...]:
    """The test organisation on PostgreSQL, three weeks on, and one reply per message wanted,
    each to one of the real follow-up prompts (most become new versions of a record)."""
    from automation.clock import SimulatedClock
    from automation.runtime import build_runtime
    from automation.settings import PROJECT_ROOT, Settings
    from tests.conftest import START, start_organization
    from tests.test_loop import advance_until, occurrences
    from tests.volume import _reply, prompts_and_managers

    settings = Settings(
        data_dir=folder,
        database_url=database_url,
        organization="acme",
        organization_name="Acme",
        secret_key="bench",
        config_dir=PROJECT_ROOT / "config",
        templates_dir=PROJECT_ROOT / "templates",
    )
    rt = build_runtime(settings, SimulatedClock(START))
    org = start_organization(rt, folder)
    last = occurrences(rt, "kai@acme.test")[0]
    advance_until(rt, rt.clock, last.end_at + dt.timedelta(hours=2))
    prompts, managers = prompts_and_managers(rt)
    return rt, org, prompts, managers, _reply


def _replies(prompts: list[Any], managers: dict[str, str], reply: Any, count: int) -> list[bytes]:
    rng = random.Random(11)
    out = []
    for n in range(count):
        prompt = prompts[n % len(prompts)]
        raw = reply(prompt, managers[prompt.message_id], 10_000 + n, rng)
        # Only the bodies that become records (no #skip): the path measured is raw -> record.
        out.append(raw.replace(b"#skip\n", b"1. Fine, nothing new.\n"))
    return out


def _end_to_end(rt: Any, messages: list[bytes]) -> tuple[float, int]:
    from sqlalchemy import func, select

    from automation.models import ConversationRecord, Task, TaskState
    from automation.services import tasks
    from automation.services.inbound import store_many

    rt.enqueue = lambda task_id: None  # the ingest tasks are run below, one by one
    started = time.perf_counter()
    for first in range(0, len(messages), PAGE):
        # As `poll_inbox` takes them in: a page stored in one transaction, then each
        # message's ingest task run on its own, as a worker runs it.
        for stored in store_many(rt, messages[first : first + PAGE], "bench"):
            tasks.run_task(rt, stored.task_id)
    elapsed = time.perf_counter() - started
    with rt.factory() as session:
        records = session.scalar(select(func.count()).select_from(ConversationRecord))
        failed = session.scalar(
            select(func.count()).select_from(Task).where(Task.state == TaskState.FAILED)
        )
    assert not failed, f"{failed} ingest task(s) failed"
    return elapsed, records


def _floor(database_url: str, messages: list[bytes]) -> float:
    from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, create_engine

    engine = create_engine(database_url)
    table = Table(
        f"bench_floor_{uuid.uuid4().hex[:8]}",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("raw", LargeBinary),
        Column("from_address", String(320)),
        Column("subject", String(998)),
    )
    table.create(engine)
    try:
        started = time.perf_counter()
        for raw in messages:
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            body = msg.get_body(("plain",))
            text = body.get_content() if body is not None else ""
            assert text is not None
            with engine.begin() as conn:
                conn.execute(
                    table.insert().values(
                        raw=raw, from_address=str(msg["From"]), subject=str(msg["Subject"])
                    )
                )
        return time.perf_counter() - started
    finally:
        table.drop(engine)
        engine.dispose()


def rows(result_type: type, scale: float, folder: Path) -> list[Any]:
    from sqlalchemy import create_engine, text

    name = "ingest.overhead_vs_floor"
    why = _reachable(POSTGRES_URL)
    if why:
        return [result_type(name, 0.0, "ms", 0.0, 0.0, f"skipped: {why}")]
    count = max(int(COUNT * scale), 50)
    schema = f"bench_ingest_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    try:
        rt, _org, prompts, managers, reply = _world(folder / schema, url)
        messages = _replies(prompts, managers, reply, count)
        try:
            with rt.factory() as session:
                from sqlalchemy import func, select

                from automation.models import ConversationRecord

                before = session.scalar(select(func.count()).select_from(ConversationRecord))
            full, records = _end_to_end(rt, messages)
        finally:
            rt.engine.dispose()
        floor = _floor(url, messages)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    per, floor_per = full / count * 1e3, floor / count * 1e3
    return [
        result_type(
            name,
            per,
            "ms",
            floor_per,
            per / floor_per,
            f"{count} replies to {len(prompts)} prompts: {records - before} records written; "
            f"{full:.1f} s end to end vs {floor:.1f} s parsing and inserting one row each",
        )
    ]


def register(benchmark: Callable[[str], Callable[[Any], Any]], result_type: type) -> None:
    @benchmark("ingest.overhead_vs_floor")
    def ingest_overhead(scale: float, folder: Path) -> list[Any]:
        """Raw reply to record on PostgreSQL vs parsing the MIME and inserting one row."""
        return rows(result_type, scale, folder)
