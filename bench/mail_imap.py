"""IMAP ingestion benchmark: poll_inbox from a real Dovecot into SQLite, in one run.

``mail.imap`` starts Dovecot (``tests/fakes/dovecot.py``, plain IMAP on loopback), seeds three
mailboxes straight into their Maildirs with the same kind of messages (replies of about 1.7 KB
with a quoted prompt, every one different; N = 10,000 at ``--scale 1``, at least 200), lets
Dovecot index each before anything is timed, and runs every measured part in a fresh Python
process (so its memory is its own):

* ``mail.imap.ingest_per_s``: messages per second through
  :func:`automation.services.inbound.poll_inbox` with :class:`automation.adapters.imap.ImapInbox`
  (called until it returns 0: fetch a page of 100, store each raw message in a SQLite runtime,
  move the page to the processed folder, save the cursor). Baseline: the raw IMAP fetch rate of
  the same number of messages by the same reader (``fetch`` page after page of 100, cursor
  only: nothing stored, nothing moved). ratio = ingest / fetch: the share of the fetch rate
  that survives our storing and acknowledging. The note gives both times and the checks
  (rows stored, messages left in the INBOX and moved to the processed folder).
* ``mail.imap.ingest_rss_mb``: how far the ingesting process's peak RSS rises above its RSS
  when the ingest starts (the peak is reset then, through ``/proc/self/clear_refs``; the
  runtime, the schema and the IMAP login come first) at N messages; baseline: the same at
  N / 10. Memory is bounded when they are about the same: ratio near 1, not near 10.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PAGE = 100
START = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)
QUOTED = "".join(
    f"> {line}\r\n"
    for line in (
        "Hi Bea, your 1:1 with Ana was on Tuesday. Please answer inline:",
        "1. What went well since the last check-in?",
        "2. What is blocking progress?",
        "3. What will you focus on next?",
        "4. Rating (1-5):",
        "Reply to this message; your answer becomes the conversation record.",
    )
)


def reply(i: int) -> bytes:
    """One manager's reply: distinct bytes per ``i`` (distinct hashes), about 1.7 KB."""
    return (
        f"Return-Path: <boss{i % 97}@acme.test>\r\n"
        f"Received: from mx{i % 7}.acme.test (mx{i % 7}.acme.test [192.0.2.{i % 250}])\r\n"
        f"\tby imap.bench.test with ESMTPS id {i:08x}; Mon, 2 Mar 2026 10:{i % 60:02d}:00 +0000\r\n"
        f"From: Manager {i % 97} <boss{i % 97}@acme.test>\r\n"
        f"To: checkins+t{i:06d}@reply.bench.test\r\n"
        f"Subject: Re: Your check-in with Employee {i}\r\n"
        f"Message-ID: <reply-{i}@acme.test>\r\n"
        f"In-Reply-To: <prompt-{i}@reply.bench.test>\r\n"
        f"References: <prompt-{i}@reply.bench.test>\r\n"
        f"Date: Mon, 2 Mar 2026 10:{i % 60:02d}:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        f"1. Shipped the billing migration (ticket {i}); the team is happy with it.\r\n"
        "2. Waiting on the security review, which is taking a while.\r\n"
        "3. Onboarding the new hire, and the Q2 plan. Caf\u00e9 on Friday!\r\n"
        f"4. {1 + i % 5}\r\n"
        "\r\n"
        "Action items:\r\n"
        f"- Ana: draft the design doc by Friday ({i})\r\n"
        "- Bea: ask the security team for a date\r\n"
        "\r\n"
        f"On Tue, 3 Mar 2026 at 11:00, Check-ins <checkins@bench.test> wrote:\r\n"
        f"{QUOTED * 3}"
        "--\r\nBea Boss, Engineering Manager\r\n"
    ).encode()


# ----------------------------------------------------------------------- child process


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> int:
    """Start measuring the peak RSS from now; returns the RSS (KB) it starts from.

    Linux resets the peak (VmHWM) when 5 is written to /proc/self/clear_refs; without that,
    ``ru_maxrss`` (the peak since the process started: imports and migrations included)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        rss = _status_kb("VmRSS")
        if rss is not None:
            return rss
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_kb() -> int:
    return _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child_fetch(args: dict[str, Any]) -> dict[str, Any]:
    """Fetch every message page by page (cursor only), as the baseline."""
    from automation.adapters.imap import ImapInbox

    inbox = ImapInbox(args["host"], args["port"], "none", args["user"], args["password"])
    inbox.fetch(None, limit=1)  # log in and select outside the timed part, as for ingest
    cursor, count, size = None, 0, 0
    t0 = time.perf_counter()
    while True:
        page = inbox.fetch(cursor, PAGE)
        count += len(page.messages)
        size += sum(len(raw) for _, raw in page.messages)
        cursor = page.cursor
        if not page.more:
            break
    elapsed = time.perf_counter() - t0
    inbox.close()
    return {"count": count, "bytes": size, "seconds": elapsed}


def _child_ingest(args: dict[str, Any]) -> dict[str, Any]:
    """poll_inbox until nothing is left, into a fresh SQLite runtime."""
    from sqlalchemy import func, select

    from automation.adapters.imap import ImapInbox
    from automation.clock import SimulatedClock
    from automation.models import InboundMessage, MailboxState
    from automation.runtime import build_runtime
    from automation.services.inbound import poll_inbox
    from automation.services.loop import bootstrap
    from automation.settings import PROJECT_ROOT, Settings

    settings = Settings(  # as bench/run.py's runtime(), without importing every benchmark
        data_dir=Path(args["folder"]),
        organization="bench",
        secret_key="bench",
        config_dir=PROJECT_ROOT / "config",
        templates_dir=PROJECT_ROOT / "templates",
    )
    rt = build_runtime(settings, SimulatedClock(START))
    bootstrap(rt)
    rt.inbox = ImapInbox(args["host"], args["port"], "none", args["user"], args["password"])
    rt.inbox.supports_idle  # noqa: B018 - log in before the measured part
    before_kb = _reset_peak()
    t0 = time.perf_counter()
    count = polls = 0
    while True:
        got = poll_inbox(rt)
        polls += 1
        count += got
        if got == 0:
            break
    elapsed = time.perf_counter() - t0
    after_kb = _peak_kb()
    with rt.factory() as session:
        rows = session.scalar(select(func.count()).select_from(InboundMessage))
        cursor = session.scalar(select(MailboxState.cursor))
    rt.inbox.close()  # type: ignore[attr-defined]
    rt.engine.dispose()
    return {
        "count": count,
        "rows": rows,
        "cursor": cursor,
        "polls": polls,
        "seconds": elapsed,
        "growth_mb": (after_kb - before_kb) / 1024,
        "peak_mb": after_kb / 1024,
    }


def _run_child(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "bench.mail_imap", kind, json.dumps(args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench child {kind} failed ({out.returncode}): {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ----------------------------------------------------------------------- rows


def rows(result_type: type, scale: float, folder: Path) -> list[Any]:
    from tests.fakes.dovecot import dovecot_binary, dovecot_version, running_dovecot

    if dovecot_binary() is None:
        note = "Dovecot is not installed: apt-get install dovecot-imapd"
        return [result_type("mail.imap.missing", 0.0, "", 0.0, 0.0, note)]
    n = max(int(10_000 * scale), 200)
    small = max(n // 10, 20)
    with running_dovecot() as server:
        accounts = {name: server.add_user(name) for name in ("fetch", "ingest", "small")}
        for name, count in (("fetch", n), ("ingest", n), ("small", small)):
            for i in range(count):
                server.deliver(accounts[name], reply(i))
            server.count(accounts[name])  # Dovecot scans the Maildir and assigns UIDs now

        def args(name: str) -> dict[str, Any]:
            account = accounts[name]
            return {
                "host": server.host,
                "port": server.port,
                "user": account.username,
                "password": account.password,
                "folder": str(folder / f"imap-{name}"),
            }

        fetched = _run_child("fetch", args("fetch"))
        ingested = _run_child("ingest", args("ingest"))
        smaller = _run_child("ingest", args("small"))
        left = server.count(accounts["ingest"])
        moved = server.count(accounts["ingest"], "Processed")
        version = dovecot_version().split(" ")[0]

    problems = []
    if fetched["count"] != n:
        problems.append(f"MISMATCH: the fetch read {fetched['count']} of {n}")
    if ingested["count"] != n or ingested["rows"] != n or left or moved != n:
        problems.append(
            f"MISMATCH: ingested {ingested['count']}, {ingested['rows']} rows, {left} left in "
            f"the INBOX, {moved} moved (expected {n})"
        )
    if smaller["rows"] != small:
        problems.append(f"MISMATCH: the small run stored {smaller['rows']} of {small}")
    ingest_rate = n / ingested["seconds"]
    fetch_rate = n / fetched["seconds"]
    note = (
        f"N={n} ({fetched['bytes'] / n / 1024:.1f} KB each), Dovecot {version}, SQLite: "
        f"poll_inbox {ingested['seconds']:.1f} s in {ingested['polls']} polls (store, move, "
        f"cursor {ingested['cursor']}); raw fetch of the same {fetched['seconds']:.1f} s"
    )
    growth, growth_small = ingested["growth_mb"], smaller["growth_mb"]
    rss_note = (
        f"peak RSS growth while ingesting {n} vs {small} messages (peak {ingested['peak_mb']:.0f}"
        f" vs {smaller['peak_mb']:.0f} MB); bounded: ratio near 1"
    )
    # A growth under a quarter MB is noise, not a baseline: both are floored the same way, so
    # the row keeps ratio == value / baseline.
    growth, growth_small = max(growth, 0.25), max(growth_small, 0.25)
    return [
        result_type(
            "mail.imap.ingest_per_s",
            ingest_rate,
            "/s",
            fetch_rate,
            ingest_rate / fetch_rate,
            "; ".join([note, *problems]),
        ),
        result_type(
            "mail.imap.ingest_rss_mb",
            growth,
            "MB",
            growth_small,
            growth / growth_small,
            "; ".join([rss_note, *problems]),
        ),
    ]


def register(benchmark: Callable[[str], Callable[[Any], Any]], result_type: type) -> None:
    """Add ``mail.imap`` to bench/run.py's registry, building its Result rows."""

    @benchmark("mail.imap")
    def mail_imap(scale: float, folder: Path) -> list[Any]:
        """IMAP ingestion through poll_inbox: messages/s vs raw fetch, and bounded memory."""
        return rows(result_type, scale, folder)


if __name__ == "__main__":
    kind, raw_args = sys.argv[1], json.loads(sys.argv[2])
    result = {"fetch": _child_fetch, "ingest": _child_ingest}[kind](raw_args)
    print(json.dumps(result))
