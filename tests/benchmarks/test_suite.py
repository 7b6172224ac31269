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


def test_a_figure_shows_the_digits_that_tell_it_from_its_target() -> None:
    """``_figure``: 3 significant digits, more (up to 6) only where 3 would show the target itself for a
    figure that is not it: 1.1038 against <= 1.1 reads 1.104x (FAIL), not 1.1x."""
    from benchmarks.common import Row, _figure

    def row(ratio: float | None, target: float | None, unit: str = "x") -> Row:
        return Row("b", "k", "w", "-", ratio, None if target is None else ("<=", target), unit=unit)

    assert _figure(row(1.1037591505385678, 1.1)) == "1.104x"
    assert _figure(row(1.0996, 1.1)) == "1.0996x"  # 1.10 and 1.100 both read as the target
    assert _figure(row(1.1, 1.1)) == "1.1x"  # the target itself: nothing to tell apart
    assert _figure(row(1.17, 1.1)) == "1.17x" and _figure(row(0.16341, 0.5)) == "0.163x"
    assert _figure(row(1.1037, None)) == "1.1x"  # no target: 3 digits
    assert _figure(row(5.0000001, 5.0, "s")) == "5 s"  # the same to 6 digits: 6 is the limit
    assert _figure(row(None, 1.1)) == "-"
