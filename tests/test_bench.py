"""The benchmark runner keeps working: a tiny run prints well-formed, plausible results."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpora" / "replies"
PEERS = {  # name in the rows -> module to import
    "email-reply-parser": "email_reply_parser",
    "mail-parser-reply": "mailparser_reply",
    "talon": "talon",
    "quotequail": "quotequail",
}


# One test per part of the runner, so the parallel suite spreads them; the reply benchmark
# (replies_rows) and tenants have tests of their own below.
RUNS = (
    "planning",
    "tick",
    "calendar",
    "mail",
    "escalation",
    "ingest",
    "faults.kill9",
    "faults.providers",
    "faults.dbdrop",
    "scale",
    "agenda",
)
TESTED_APART = ("replies", "tenants")


def bench_run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "bench/run.py", *args], cwd=ROOT, capture_output=True, timeout=timeout
    )


@pytest.mark.parametrize("prefix", RUNS)
def test_bench_runner_prints_json_ratios(prefix):
    out = bench_run("--json", "--scale", "0.01", "--only", prefix)
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-3000:]
    results = json.loads(out.stdout)
    assert results and all(r["name"].startswith(prefix) for r in results)
    for r in results:
        assert set(r) >= {"name", "value", "unit", "baseline", "ratio"}
        assert r["value"] > 0 and r["baseline"] > 0, r
        assert abs(r["ratio"] - r["value"] / r["baseline"]) < 1e-9


def test_the_runner_tests_cover_every_benchmark_and_an_unknown_name_is_refused():
    bad = bench_run("--only", "nope", timeout=120)
    assert bad.returncode == 2
    known = bad.stderr.decode().rpartition("known: ")[2].strip().split(", ")
    assert "planning.quarter" in known
    untested = [n for n in known if not n.startswith(RUNS + TESTED_APART)]
    assert untested == [], "add them to RUNS"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@pytest.fixture(scope="module")
def replies_rows() -> dict[str, dict]:
    out = subprocess.run(
        [sys.executable, "bench/run.py", "--json", "--only", "replies", "--scale", "0.01"],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
        check=True,
    )
    return {r["name"]: r for r in json.loads(out.stdout)}


def _suites() -> list[str]:
    return sorted(p.name for p in CORPUS.iterdir() if p.is_dir()) + ["overall"]


def test_bench_replies_rows(replies_rows):
    """The reply benchmark: well-formed rows, ours always there, a row for each missing peer."""
    rows = replies_rows
    for r in rows.values():
        assert r["name"].startswith("replies.")
        assert set(r) >= {"name", "value", "unit", "baseline", "ratio"}
        for key in ("value", "baseline", "ratio"):
            assert isinstance(r[key], int | float) and not math.isnan(r[key]), r
            assert r[key] >= 0, r
        if r["baseline"] > 0:
            assert abs(r["ratio"] - r["value"] / r["baseline"]) < 1e-9, r
    assert any(n.startswith("replies.fields.") for n in rows)
    if not CORPUS.is_dir():
        assert "replies.corpus.missing" in rows
        return
    # Ours against the untrimmed input: present whatever is installed.
    for suite in _suites():
        for metric in ("exact", "f1"):
            r = rows[f"replies.{metric}.{suite}.untrimmed"]
            assert r["unit"] == "%" and 0 < r["value"] <= 100 and 0 <= r["baseline"] <= 100
    goal = rows["replies.goal"]
    assert goal["value"] in (0, 1) and goal["baseline"] == 1
    assert (goal["value"] == 1) == goal["note"].startswith("met"), goal
    for peer, module in PEERS.items():
        if not _installed(module):
            assert "not installed" in rows[f"replies.missing.{peer}"]["note"]
            assert goal["value"] == 0 and peer in goal["note"]
            assert not any(n.endswith(f".{peer}") for n in rows if "missing" not in n)


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(
            peer,
            marks=pytest.mark.skipif(
                not _installed(module), reason=f"{peer} not installed (pip install -e '.[bench]')"
            ),
        )
        for peer, module in PEERS.items()
    ],
)
def test_bench_replies_peer_rows(replies_rows, peer):
    """Each installed peer has its exact, F1 and speed rows, with the numbers in the notes."""
    if not CORPUS.is_dir():
        pytest.skip(f"reply corpus not found at {CORPUS}")
    rows = replies_rows
    assert f"replies.missing.{peer}" not in rows
    names = [f"replies.{m}.{s}.{peer}" for m in ("exact", "f1") for s in _suites()]
    for name in [*names, f"replies.speed.{peer}"]:
        r = rows[name]
        assert r["value"] > 0 and r["baseline"] >= 0, r
        assert peer in r["note"] and "ours" in r["note"], r
    assert rows[f"replies.speed.{peer}"]["unit"] == "/s"
    assert rows[f"replies.speed.{peer}"]["baseline"] > 0


def test_bench_replies_fields_scoring(tmp_path, monkeypatch):
    """replies.fields scores each given field of each fixture, and says when there are none."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.replies import fields_rows

    class Row:
        def __init__(self, name, value, unit, baseline, ratio, note=""):
            self.name, self.value, self.baseline, self.note = name, value, baseline, note

    (none,) = fields_rows(Row, 1.0, tmp_path / "absent")
    assert none.name == "replies.fields.none" and "no fixtures" in none.note
    raw = (
        b"From: Sam <sam@example.com>\r\nTo: c@example.com\r\nSubject: Re: check-in\r\n"
        b"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        b"1. Shipped the importer\r\n2. Nothing blocking\r\n\r\n"
        b"On Mon, 2 Mar 2026 at 09:00, Check-ins <c@example.com> wrote:\r\n> 1. Progress?\r\n"
    )
    (tmp_path / "good.eml").write_bytes(raw)
    (tmp_path / "good.expected.json").write_text(
        json.dumps(
            {
                "questions": ["Progress?", "Blockers?"],
                "reply_text": "1. Shipped the importer\n2. Nothing   blocking",
                "auto_reply": False,
                "bounce": False,
                "commands": [],
            }
        )
    )
    (tmp_path / "wrong.eml").write_bytes(raw)
    (tmp_path / "wrong.expected.json").write_text(json.dumps({"bounce": True}))
    (tmp_path / "orphan.eml").write_bytes(raw)
    rows = {r.name: r for r in fields_rows(Row, 1.0, tmp_path)}
    assert rows["replies.fields.reply_text"].value == 100
    assert rows["replies.fields.commands"].value == 100
    assert rows["replies.fields.bounce"].value == 50
    assert "wrong" in rows["replies.fields.bounce"].note
    assert "replies.fields.rating" not in rows  # no fixture gives it
    assert rows["replies.fields.all"].value == 50
    assert "orphan: no .expected.json" in rows["replies.fields.all"].note


def test_bench_replies_goal_rule(monkeypatch):
    """The goal needs ours strictly ahead on every suite, except where both sit at 100%."""
    monkeypatch.syspath_prepend(str(ROOT))
    from collections import Counter

    from bench.replies import Parser, Scores, _goal

    class Row:
        def __init__(self, name, value, unit, baseline, ratio, note=""):
            self.value, self.note = value, note

    def goal(ours_hits: int, peer_hits: int, total: int = 10) -> Row:
        ours = Scores(exact={"a": ["x"] * ours_hits, "overall": ["x"] * ours_hits}, speed=2.0)
        peer = Scores(exact={"a": ["x"] * peer_hits, "overall": ["x"] * peer_hits}, speed=1.0)
        parsers = [Parser("ours", str, is_peer=False), Parser("peer", str)]
        counts = Counter({"a": total, "overall": total})
        return _goal(Row, parsers, ours, {"peer": peer}, ["a", "overall"], counts)

    assert goal(10, 9).value == 1
    assert goal(10, 10).value == 1  # both perfect: the ceiling cannot be passed
    tie = goal(9, 9)
    assert tie.value == 0 and "not above peer" in tie.note
    assert goal(9, 10).value == 0


@pytest.mark.postgres
@pytest.mark.redis
def test_bench_tenants_isolation_overhead_row(monkeypatch):
    """bench/tenants.py runs its three worlds (one organization and 50 as an ordinary role, one
    as a superuser) on PostgreSQL and Redis and prints two rows (isolation_overhead,
    rls_overhead): every throughput measured, everything exactly once in every world. How the
    ratios compare with their goal is the benchmark's to say, not this test's."""
    monkeypatch.syspath_prepend(str(ROOT))
    from urllib.parse import urlparse

    from sqlalchemy.engine import make_url

    from bench.scale import BROKER_URL, POSTGRES_URL
    from tests.conftest import require_service

    pg, broker = make_url(POSTGRES_URL), urlparse(BROKER_URL)
    require_service("PostgreSQL", pg.host or "localhost", pg.port or 5432)
    require_service("Redis", broker.hostname or "localhost", broker.port or 6379)
    out = subprocess.run(
        [sys.executable, "bench/run.py", "--json", "--scale", "0.01", "--only", "tenants"],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-3000:]
    row, rls = json.loads(out.stdout)
    assert (row["name"], rls["name"]) == ("tenants.isolation_overhead", "tenants.rls_overhead")
    for r in (row, rls):
        assert r["unit"] == "tasks/s"
        assert r["value"] > 0 and r["baseline"] > 0, r
        assert abs(r["ratio"] - r["value"] / r["baseline"]) < 1e-9, r
        assert "exactly once: yes" in r["note"] and "PROBLEMS" not in r["note"], r["note"]
        for phase in ("plan", "agendas", "replies"):
            assert f"{phase} " in r["note"], r["note"]
    assert "50 organizations of 2 people vs one of 100" in row["note"], row["note"]
    # The value of rls_overhead is the baseline of isolation_overhead: the same world.
    assert rls["value"] == row["baseline"], (rls, row)
