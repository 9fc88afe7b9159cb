"""``mail.ingest.volume``: 10,000 mixed inbound messages (at --scale 1) through the
production path on the embedded default (Maildir inbox, SQLite, the in-process loop).

value = messages per second end to end (stored, parsed, routed, recorded or kept with a
reason); baseline = messages per second only storing the same bytes (store_inbound without
processing), so the ratio is what the processing costs. The note says whether every distinct
message was stored once and settled (record or reason), which is the point."""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

COUNT = 10_000


def _world(folder: Path) -> tuple[Any, int, list[Any], dict[str, str]]:
    from automation.clock import SimulatedClock
    from automation.runtime import build_runtime
    from automation.settings import PROJECT_ROOT, Settings
    from tests.conftest import START, start_organization
    from tests.test_loop import advance_until, occurrences
    from tests.volume import prompts_and_managers

    clock = SimulatedClock(START)
    settings = Settings(
        data_dir=folder / "data",
        organization="acme",
        organization_name="Acme",
        secret_key="bench",
        config_dir=PROJECT_ROOT / "config",
        templates_dir=PROJECT_ROOT / "templates",
    )
    rt = build_runtime(settings, clock)
    org = start_organization(rt, folder)
    last = occurrences(rt, "kai@acme.test")[0]
    advance_until(rt, clock, last.end_at + dt.timedelta(hours=2))
    prompts, managers = prompts_and_managers(rt)
    return rt, org, prompts, managers


def volume(result_type: type, scale: float) -> list[Any]:
    from automation.services.inbound import store_inbound
    from automation.services.loop import run_due
    from tests.volume import outcome, stream

    count = max(int(COUNT * scale), 120)
    with tempfile.TemporaryDirectory() as tmp:
        rt, org, prompts, managers = _world(Path(tmp) / "full")
        messages = [raw for _, raw in stream(prompts, managers, count)]
        distinct = len(set(messages))
        for n, raw in enumerate(messages):
            rt.inbox.deliver(raw, f"v-{n:06d}")
        started = time.perf_counter()
        while run_due(rt):  # run_due stops after 10,000 tasks: go on until nothing is due
            pass
        full = time.perf_counter() - started
        with rt.factory() as session:
            settled = outcome(session, org, distinct)
        rt.engine.dispose()

        bare, org2, _, _ = _world(Path(tmp) / "bare")
        bare.enqueue = lambda task_id: None  # store only: nothing processes them
        started = time.perf_counter()
        for raw in messages:
            store_inbound(bare, raw, "bench")
        store_only = time.perf_counter() - started
        bare.engine.dispose()
    ok = (
        settled.stored == settled.distinct
        and settled.unprocessed == 0
        and settled.without_reason == 0
    )
    per_s, bare_per_s = count / full, count / store_only
    states = ", ".join(f"{k} {v}" for k, v in sorted(settled.states.items()))
    note = (
        f"{'all settled' if ok else 'NOT ALL SETTLED'}: {count} messages, {settled.distinct} "
        f"distinct, {settled.stored} stored; {states}; {settled.unprocessed} unprocessed, "
        f"{settled.without_reason} kept without a reason; {full:.1f} s end to end vs "
        f"{store_only:.1f} s storing only"
    )
    return [result_type("mail.ingest.volume", per_s, "/s", bare_per_s, per_s / bare_per_s, note)]


def register(benchmark: Callable[[str], Callable[[Any], Any]], result_type: type) -> None:
    @benchmark("mail.ingest")
    def mail_ingest(scale: float, folder: Path) -> list[Any]:
        return volume(result_type, scale)
