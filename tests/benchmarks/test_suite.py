"""Smoke test of the benchmark suite (``make bench``): a quick run of one benchmark writes the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _suite(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.suite", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_quick_flips_writes_results_table(tmp_path: Path) -> None:
    out, js = tmp_path / "RESULTS.md", tmp_path / "rows.json"
    proc = _suite("--quick", "--only", "flips", "--out", str(out), "--save-json", str(js), "--before", "")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "| bench | what | baseline | figure | target | result |" in text
    assert "torch " in text and "cores" in text and "--quick --only flips" in text
    rows = json.loads(js.read_text())["rows"]
    keys = {r["key"] for r in rows}
    assert {"flips.dense.p0.001", "flips.copy.p0.001", "flips.dense.p0.01", "flips.copy.p0.01"} <= keys
    for r in rows:
        assert r["ratio"] > 0
        # targets apply at p <= 1e-3 only; every judged row says pass or FAIL in the table
        assert (r["target"] is not None) == r["key"].endswith("p0.001")
        assert (r["passed"] is None) == (r["target"] is None)
    judged = [r for r in rows if r["passed"] is not None]
    assert text.count("| pass |") + text.count("| **FAIL** |") == len(judged)


def test_unknown_benchmark_name_is_refused(tmp_path: Path) -> None:
    proc = _suite("--only", "nope", "--out", str(tmp_path / "R.md"), timeout=60)
    assert proc.returncode == 2
    assert "unknown benchmark" in proc.stderr and "flips" in proc.stderr
    assert not (tmp_path / "R.md").exists()
