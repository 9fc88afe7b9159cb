"""Google Calendar benchmarks: requests per batch bound, sync cost, memory of a full sync.

Everything runs against the local fake of Calendar v3 (``tests/fakes/google_calendar.py``),
started in ANOTHER process so its memory and CPU are not ours, through the real adapter
(google-api-python-client, real HTTP on loopback). One run measures:

* ``calendar.google.requests_per_bound``: HTTP requests to the Calendar API to create N=1000
  series (8 per organizer) against the bound ceil(N/50); goal <= 1.1. The note gives the
  provider calls per series (goal 1) and the OAuth token requests (one per organizer,
  cached for an hour), which are not Calendar API requests.
* ``calendar.sync.nochange_requests``: an incremental sync with nothing changed, requests per
  calendar; goal exactly 1.
* ``calendar.sync.k_changes_1k_vs_100k``: wall time of an incremental sync with k=100 changes
  on a 1k-event calendar (baseline) vs a 100k-event one (value), median of 15 rounds; the note
  gives the requests of each. A ratio near 1 means the work follows k, not the calendar.
* ``calendar.sync.full_100k_rss_mb``: peak RSS growth (VmHWM) of a fresh process of ours during
  a full sync of 100,000 events; baseline is the goal, 100 MB.

``--scale`` shrinks N and the calendar sizes (with floors that keep the rows meaningful).
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

K_CHANGES = 100
ROUNDS = 15
RSS_GOAL_MB = 100.0
REQUESTS_GOAL = 1.1


def _adapter(fake: Any, key_file: Path) -> Any:
    from automation.adapters.google import GoogleCalendar, credentials_from_file

    return GoogleCalendar(credentials_from_file(str(key_file), fake.token_uri), endpoint=fake.url)


def _series(i: int) -> Any:
    import datetime as dt

    from automation.ports import Attendee, SeriesEvent

    return SeriesEvent(
        uid=f"checkin-bench-{i}@reply.example.com",
        sequence=0,
        summary=f"1:1 Manager {i // 8} / Employee {i}",
        description="Weekly check-in",
        organizer=Attendee(f"m{i // 8}@bench.test", f"Manager {i // 8}"),
        attendees=(Attendee(f"e{i}@bench.test", f"Employee {i}"),),
        dtstart_local=dt.datetime(2026, 3, 3, 9, 0) + dt.timedelta(minutes=30 * (i % 8)),
        timezone=("Europe/Berlin", "America/New_York", "Asia/Tokyo")[i % 3],
        duration_minutes=30,
        rrule="FREQ=WEEKLY;INTERVAL=2;BYDAY=TU",
    )


def _api_requests(stats: dict[str, Any]) -> int:
    return int(stats["requests"]) - int(stats["counts"].get("token", 0))


def requests_rows(R: type, fake: Any, key_file: Path, n: int) -> list[Any]:
    cal = _adapter(fake, key_file)
    fake.control("reset_counts")
    written = cal.write_many([_series(i) for i in range(n)])
    stats = fake.stats()
    assert len(written) == n, (len(written), n)
    requests = _api_requests(stats)
    bound = math.ceil(n / 50)
    calls = int(stats["counts"].get("inner", 0)) + requests - int(stats["counts"].get("batch", 0))
    organizers = math.ceil(n / 8)
    ratio = requests / bound
    verdict = "met" if ratio <= REQUESTS_GOAL and calls == n else "FAILS"
    rows = [
        R(
            "calendar.google.requests_per_bound",
            float(requests),
            "req",
            float(bound),
            ratio,
            f"{verdict} (goal <= {REQUESTS_GOAL}): N={n} series over {organizers} organizers, "
            f"{requests} Calendar API requests for ceil(N/50)={bound}; {calls / n:.2f} provider "
            f"calls per series (goal 1); {stats['counts'].get('token', 0)} OAuth token requests "
            "(one per organizer, cached 1 h) not counted",
        )
    ]
    # No change since a full sync: one request per calendar.
    calendars = [f"m{i}@bench.test" for i in range(min(organizers, 10))]
    cursors = {c: cal.sync(c, None, lambda states: None).cursor for c in calendars}
    before = _api_requests(fake.stats())
    reported = sum(cal.sync(c, cursors[c], lambda states: None).requests for c in calendars)
    per_calendar = (_api_requests(fake.stats()) - before) / len(calendars)
    rows.append(
        R(
            "calendar.sync.nochange_requests",
            per_calendar,
            "req",
            1.0,
            per_calendar,
            f"{'met' if per_calendar == 1 else 'FAILS'} (goal exactly 1): incremental sync of "
            f"{len(calendars)} unchanged calendars, {reported} requests reported by the adapter",
        )
    )
    return rows


def k_changes_row(R: type, fake: Any, key_file: Path, small: int, large: int) -> Any:
    cal = _adapter(fake, key_file)
    cursors: dict[int, str] = {}
    times: dict[int, list[float]] = {small: [], large: []}
    requests: dict[int, list[int]] = {small: [], large: []}
    for size in (small, large):
        user = f"cal{size}@bench.test"
        fake.control("seed_many", user=user, count=size, prefix=f"checkin-k{size}")
        cursor = fake.control("current_sync_token", user=user)["token"]
        cal.sync(user, cursor, lambda states: None)  # warm: token, service, connection
        cursors[size] = fake.control("current_sync_token", user=user)["token"]
    for _ in range(ROUNDS):  # interleaved, so drift on the machine hits both alike
        for size in (small, large):
            user = f"cal{size}@bench.test"
            changed = fake.control("change_events", user=user, k=K_CHANGES)["changed"]
            seen: list[Any] = []
            t0 = time.perf_counter()
            outcome = cal.sync(user, cursors[size], seen.extend)
            times[size].append(time.perf_counter() - t0)
            assert len(seen) == changed == K_CHANGES, (len(seen), changed)
            requests[size].append(outcome.requests)
            cursors[size] = outcome.cursor
    t_small, t_large = statistics.median(times[small]), statistics.median(times[large])
    return R(
        "calendar.sync.k_changes_1k_vs_100k",
        t_large * 1e3,
        "ms",
        t_small * 1e3,
        t_large / t_small,
        f"k={K_CHANGES} changes, median of {ROUNDS} interleaved rounds: {large:,} events "
        f"{t_large * 1e3:.1f} ms / {max(requests[large])} req vs {small:,} events "
        f"{t_small * 1e3:.1f} ms / {max(requests[small])} req; ratio ~1: work follows k",
    )


def rss_row(R: type, fake: Any, key_file: Path, size: int) -> Any:
    user = f"full{size}@bench.test"
    fake.control("seed_many", user=user, count=size, prefix="checkin-full")
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", fake.url, user, str(key_file)],
        cwd=ROOT,
        capture_output=True,
        timeout=1800,
        check=True,
    )
    child = json.loads(out.stdout)
    growth = (child["after_kb"] - child["before_kb"]) / 1024
    assert child["states"] == size, (child, size)
    return R(
        "calendar.sync.full_100k_rss_mb",
        growth,
        "MB",
        RSS_GOAL_MB,
        growth / RSS_GOAL_MB,
        f"{'met' if growth < RSS_GOAL_MB else 'FAILS'} (goal < {RSS_GOAL_MB:.0f} MB): peak RSS "
        f"of a fresh process grew {growth:.1f} MB (from {child['before_kb'] / 1024:.0f} MB) "
        f"during a full sync of {size:,} events: {child['requests']} requests, "
        f"{child['states']:,} states in pages, {child['seconds']:.1f} s; the fake runs in "
        "another process",
    )


def peak_rss_kb() -> int:
    """Peak resident set size of this process (VmHWM), in kB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def rss_child(url: str, user: str, key_file: str) -> None:
    """Run in a fresh process: a full sync, peak RSS before and after."""
    from tests.fakes.google_calendar import RemoteFake

    cal = _adapter(RemoteFake(url), Path(key_file))
    cal._fresh_token(user)  # warm up: imports, discovery, token, connection
    before = peak_rss_kb()
    count = 0

    def apply(states: Any) -> None:
        nonlocal count
        count += len(states)

    t0 = time.perf_counter()
    outcome = cal.sync(user, None, apply)
    seconds = time.perf_counter() - t0
    after = peak_rss_kb()
    print(
        json.dumps(
            {
                "before_kb": before,
                "after_kb": after,
                "states": count,
                "requests": outcome.requests,
                "seconds": seconds,
            }
        )
    )


def rows(R: type, scale: float, folder: Path) -> list[Any]:
    from tests.fakes.google_calendar import RemoteFake, service_account_info

    n = max(int(1000 * scale), 100)
    small = 1000
    large = max(int(100_000 * scale), 10_000)
    full = max(int(100_000 * scale), 10_000)
    with RemoteFake.spawn() as fake:
        key_file = folder / "google-service-account.json"
        key_file.write_text(json.dumps(service_account_info(fake.token_uri)))
        os.chmod(key_file, 0o600)
        out = requests_rows(R, fake, key_file, n)
        out.append(k_changes_row(R, fake, key_file, small, large))
        out.append(rss_row(R, fake, key_file, full))
    return out


def register(benchmark: Callable[[str], Callable[[Any], Any]], result_type: type) -> None:
    """Add the Google Calendar benchmark to bench/run.py's registry."""

    @benchmark("calendar.google")
    def calendar_google(scale: float, folder: Path) -> list[Any]:
        """Requests per batch bound, no-change and k-change syncs, full-sync memory."""
        return rows(result_type, scale, folder)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--rss-child":
        rss_child(*sys.argv[2:5])
    else:
        import argparse
        import tempfile
        from dataclasses import dataclass

        parser = argparse.ArgumentParser(description="Google Calendar benchmarks alone")
        parser.add_argument("--scale", type=float, default=1.0)
        args = parser.parse_args()

        @dataclass(frozen=True)
        class Row:
            name: str
            value: float
            unit: str
            baseline: float
            ratio: float
            note: str = ""

        with tempfile.TemporaryDirectory() as tmp:
            for row in rows(Row, args.scale, Path(tmp)):
                print(
                    f"{row.name:40} {row.value:10.2f} {row.unit:4} {row.baseline:10.2f} "
                    f"{row.ratio:6.2f}  {row.note}"
                )
