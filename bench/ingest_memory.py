"""``ingest.huge_message_memory`` and ``ingest.huge_message_time`` (SQLite): one 25 MB reply
(a short answer and a 25 MB PDF, base64 in 76-character lines, as mail clients send it)
through the inbound path, against the standard library parsing the same bytes.

* ``ingest.huge_message_memory``: value = the tracemalloc peak of the whole ingest task
  (loading the raw row, decoding, routing by the reply token, extracting, writing the record
  and queueing the confirmation), in multiples of the message's size; baseline = the peak of
  ``email.message_from_bytes`` alone on the same bytes. ratio = value / baseline (under 1:
  the inbound path holds less than a bare parse; attachments are never kept as lines).
* ``ingest.huge_message_time``: value = seconds for the same ingest (without tracemalloc);
  baseline = seconds for ``email.message_from_bytes``. ratio = value / baseline.

``--scale`` multiplies the 25 MB (at least 256 KB).
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import gc
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

SIZE = 25_000_000


def _world(folder: Path) -> tuple[Any, str, str]:
    """The test organisation on SQLite, just after the first check-in's follow-up prompt:
    the runtime, the prompt's signed reply address and its Message-ID."""
    from automation.clock import SimulatedClock
    from automation.runtime import build_runtime
    from automation.settings import PROJECT_ROOT, Settings
    from tests.conftest import START, start_organization
    from tests.test_inbound import first_occurrence, outbox

    settings = Settings(
        data_dir=folder / "data",
        database_url=f"sqlite:///{folder / 'ingest-memory.db'}",
        organization="acme",
        organization_name="Acme",
        secret_key="bench",
        config_dir=PROJECT_ROOT / "config",
        templates_dir=PROJECT_ROOT / "templates",
    )
    rt = build_runtime(settings, SimulatedClock(START))
    start_organization(rt, folder)
    occurrence = first_occurrence(rt)
    rt.clock.advance(occurrence.end_at + dt.timedelta(hours=2) - rt.now())
    from automation.services.loop import run_due

    run_due(rt)
    (prompt,) = [m for m in outbox(rt, "followup") if m.occurrence_id == occurrence.id]
    rt.enqueue = lambda task_id: None  # the ingest task is run below, by the task runner
    return rt, str(email.message_from_bytes(prompt.raw)["Reply-To"]), prompt.message_id


def huge_reply(reply_to: str, prompt_id: str, size: int, n: int) -> bytes:
    """A reply of ``size`` bytes: two answers and a PDF attachment."""
    pdf = (b"%PDF-1.7\n" + bytes(range(256)) * 64) * (size // 16_000 + 1)
    encoded = base64.encodebytes(pdf[: size * 3 // 4]).replace(b"\n", b"\r\n")
    return (
        (
            f"From: Bea Boss <boss@acme.test>\r\nTo: {reply_to}\r\nSubject: Re: check-in\r\n"
            f"Message-ID: <huge-{n}@client.test>\r\nIn-Reply-To: {prompt_id}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
            "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "1. Good week, the plan is on track.\r\nRating: 4\r\n"
            "--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            "Content-Disposition: attachment; filename=plan.pdf\r\n\r\n"
        ).encode()
        + encoded
        + b"--b--\r\n"
    )


def _measure(fn: Callable[[], object], traced: bool) -> tuple[float, int]:
    """(seconds, tracemalloc peak in bytes, 0 when not traced)."""
    gc.collect()
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        fn()
        return time.perf_counter() - started, tracemalloc.get_traced_memory()[1] if traced else 0
    finally:
        if traced:
            tracemalloc.stop()


def rows(result_type: type, scale: float, folder: Path) -> list[Any]:
    from automation.models import InboundMessage
    from automation.services import tasks
    from automation.services.inbound import store_inbound

    size = max(int(SIZE * scale), 256 * 1024)
    rt, reply_to, prompt_id = _world(folder)
    try:
        results: dict[bool, tuple[float, int, int]] = {}
        states = []
        for n, traced in enumerate((False, True)):
            raw = huge_reply(reply_to, prompt_id, size, n)
            stored = store_inbound(rt, raw, "bench")
            seconds, peak = _measure(lambda s=stored: tasks.run_task(rt, s.task_id), traced)
            results[traced] = seconds, peak, len(raw)
            with rt.factory() as session:
                states.append(session.get(InboundMessage, stored.inbound_id).state)
        # The baseline, on the same bytes: the standard library's parse alone.
        std_seconds, _ = _measure(lambda: email.message_from_bytes(raw), False)
        _, std_peak = _measure(lambda: email.message_from_bytes(raw), True)
    finally:
        rt.engine.dispose()
    seconds = results[False][0]
    _, peak, length = results[True]
    ours, theirs = peak / length, std_peak / length
    mb = length / 1e6
    return [
        result_type(
            "ingest.huge_message_memory",
            ours,
            "x",
            theirs,
            ours / theirs,
            f"peak of ingesting a {mb:.1f} MB reply ({states[1]}) in multiples of its size: "
            f"{peak / 1e6:.1f} MB vs {std_peak / 1e6:.1f} MB for email.message_from_bytes",
        ),
        result_type(
            "ingest.huge_message_time",
            seconds,
            "s",
            std_seconds,
            seconds / std_seconds,
            f"ingest task of a {mb:.1f} MB reply ({states[0]}) vs email.message_from_bytes",
        ),
    ]


def register(benchmark: Callable[[str], Callable[[Any], Any]], result_type: type) -> None:
    @benchmark("ingest.huge_message")
    def huge_message(scale: float, folder: Path) -> list[Any]:
        """A 25 MB reply's ingest: peak memory and time vs the stdlib's parse of it."""
        return rows(result_type, scale, folder)
