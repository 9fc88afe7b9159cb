"""Microsoft Graph calendar benchmarks: calls counted by the local Graph fake, in one run.

``calendar.graph`` starts ``tests/fakes/graph.py`` (HTTPS, MSAL sign-in against it) and
measures, through :class:`automation.adapters.graph.GraphCalendar`:

* ``calendar.graph.requests_per_bound``: HTTP requests to Graph to create N series
  (N = 1000 at scale 1, at least 40; 8 reports per manager, the example's six zones, weekly,
  every-other-week and monthly rules), over the fewest possible, ceil(N / 20) (Graph's
  ``$batch`` limit). Goal: <= 1.1. The note gives the provider calls per series (inner
  creates / N, goal 1), the series the fake holds afterwards (must be N: each exactly once),
  and the sign-in calls (one discovery and one token request per process, not per write).
* ``calendar.graph.sync_nochange_requests``: requests of an incremental delta sync of one
  manager's calendar when nothing changed. Baseline 1 (the goal).

Counts, not times: they do not depend on the machine.
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from automation.adapters.graph import BATCH_LIMIT, GraphCalendar, MsalTokens  # noqa: E402
from automation.adapters.http import Retry  # noqa: E402
from automation.ports import Attendee, SeriesEvent  # noqa: E402
from tests.fakes.graph import GraphFake  # noqa: E402

ZONES = (
    "America/New_York",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Tokyo",
    "Australia/Sydney",
)
RULES = (
    "FREQ=WEEKLY;BYDAY={day}",
    "FREQ=WEEKLY;INTERVAL=2;BYDAY={day}",
    "FREQ=MONTHLY;BYDAY=2{day}",
)
DAYS = ("MO", "TU", "WE", "TH", "FR")
NOW = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)
REPORTS = 8


def make_series(n: int) -> list[SeriesEvent]:
    out = []
    for i in range(n):
        manager = i // REPORTS
        weekday = i % len(DAYS)
        # Monday 2026-03-09 + weekday; monthly rules start on the 2nd such weekday of March.
        first = dt.datetime(2026, 3, 9 + weekday, 9 + i % 7, 30 * (i % 2))
        out.append(
            SeriesEvent(
                uid=f"checkin-bench-{i}@reply.example.com",
                sequence=0,
                summary=f"1:1 Manager {manager} / Employee {i}",
                description="Agenda: wins, blockers, growth.",
                organizer=Attendee(f"m{manager}@bench.example", f"Manager {manager}"),
                attendees=(
                    Attendee(f"e{i}@bench.example", f"Employee {i}"),
                    Attendee(f"m{manager}@bench.example", f"Manager {manager}"),
                ),
                dtstart_local=first,
                timezone=ZONES[manager % len(ZONES)],
                duration_minutes=30,
                rrule=RULES[i % len(RULES)].format(day=DAYS[weekday]),
            )
        )
    return out


def rows(result_type: type, scale: float) -> list[Any]:
    n = max(int(1000 * scale), 40)
    bound = math.ceil(n / BATCH_LIMIT)
    with GraphFake() as fake:
        tokens = MsalTokens(
            fake.tenant,
            fake.client_id,
            fake.client_secret,
            fake.authority_host,
            verify=fake.ca_file,
        )
        cal = GraphCalendar(
            fake.base_url, tokens, retry=Retry(), verify=fake.ca_file, now=lambda: NOW
        )
        events = make_series(n)
        ids = cal.write_many(events)
        stats = fake.stats()
        requests = stats["graph_requests"]
        creates = stats["inner_ops"].get("events.create", 0) + stats["ops"].get("events.create", 0)
        held = sum(stats["events"].values())
        problems = []
        if held != n or len(set(ids.values())) != n:
            problems.append(f"MISMATCH: the fake holds {held} series, {len(ids)} ids returned")
        note = (
            f"N={n}: {requests} requests for {bound} batches; provider calls per series "
            f"{creates / n:.2f} (goal 1); {held} series held; sign-in: "
            f"{stats['discovery_calls']} discovery + {stats['token_calls']} token call(s)"
        )
        out = [
            result_type(
                "calendar.graph.requests_per_bound",
                float(requests),
                "req",
                float(bound),
                requests / bound,
                "; ".join([note, *problems]),
            )
        ]

        mailbox = events[0].organizer.email
        full = cal.sync(mailbox, None, lambda states: None)
        before = fake.stats()["ops"].get("calendarView.delta", 0)
        again = cal.sync(mailbox, full.cursor, lambda states: None)
        seen = fake.stats()["ops"].get("calendarView.delta", 0) - before
        note = (
            f"{mailbox}: full round {full.requests} request(s), {full.events} states; "
            f"no-change round {again.requests} request(s) (the fake saw {seen}), "
            f"{again.events} states; goal 1"
        )
        out.append(
            result_type(
                "calendar.graph.sync_nochange_requests",
                float(again.requests),
                "req",
                1.0,
                float(again.requests),
                note,
            )
        )
    return out


def register(benchmark: Callable[[str], Callable[[Any], Any]], result_type: type) -> None:
    """Add ``calendar.graph`` to bench/run.py's registry, building its Result rows."""

    @benchmark("calendar.graph")
    def calendar_graph(scale: float, folder: Path) -> list[Any]:
        """Graph requests per series created in batches, and per no-change sync."""
        return rows(result_type, scale)


if __name__ == "__main__":  # python bench/calendar_graph.py [--scale S] [--json]
    from bench import run

    register(run.benchmark, run.Result)
    sys.exit(run.main(["--only", "calendar.graph", *sys.argv[1:]]))
