"""The benchmark runner keeps working: a tiny run prints well-formed, plausible results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runner_prints_json_ratios():
    out = subprocess.run(
        [sys.executable, "bench/run.py", "--json", "--scale", "0.01"],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
        check=True,
    )
    results = json.loads(out.stdout)
    names = [r["name"] for r in results]
    assert any(n.startswith("planning.quarter.") for n in names)
    assert any(n.startswith("tick.scan.") for n in names)
    for r in results:
        assert set(r) >= {"name", "value", "unit", "baseline", "ratio"}
        assert r["value"] > 0 and r["baseline"] > 0
        assert abs(r["ratio"] - r["value"] / r["baseline"]) < 1e-9


def test_bench_only_selects_by_prefix():
    out = subprocess.run(
        [sys.executable, "bench/run.py", "--json", "--scale", "0.01", "--only", "tick"],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
        check=True,
    )
    assert [r["name"].split(".")[0] for r in json.loads(out.stdout)] == ["tick"]
    bad = subprocess.run(
        [sys.executable, "bench/run.py", "--only", "nope"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert bad.returncode == 2 and b"known: planning.quarter" in bad.stderr
