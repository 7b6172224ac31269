"""Shared pieces of the benchmark suite: interleaved timing, result rows, machine facts, RESULTS.md.

Every figure of the suite is a *ratio* against a baseline measured in the same process (or, for memory,
in sibling processes started the same way), so that the load of other processes on a shared machine
cancels as far as possible: candidate and baseline run round-robin (``A B A B ...``), each after a
warm-up call, and the figure is the median over rounds of the per-round ratio ``A_i / B_i`` (a slow
round slows both members of its pair alike, which the ratio cancels; the median drops outlier rounds).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

MIN_REPEATS = 5


@dataclass
class Row:
    """One line of RESULTS.md: a figure, how it was obtained, and whether it meets its target.

    ``ratio`` is the figure (``what`` / ``baseline``, or another quantity named in ``unit``); ``target`` is
    ``(op, value)`` with ``op`` one of ``"<="`` or ``">="`` (``None``: reported only). ``passed`` is ``None``
    when there is no target or the row was skipped.
    """

    bench: str  # suite benchmark name (``--only``)
    key: str  # unique id of the row (before/after matching)
    what: str  # the measured thing
    baseline: str  # what it is divided by
    ratio: float | None  # the figure; None when skipped
    target: tuple[str, float] | None = None
    unit: str = "x"  # "x" for ratios, else the unit of ``ratio`` (e.g. "s", "points", "img/s")
    detail: str = ""  # absolute numbers, repeats, caveats
    skipped: str = ""  # why the row was not measured (e.g. "--quick")
    before: float | None = None  # the figure before the fast paths (from a saved run), if known
    run: str = ""  # date of the run that measured the row (rows kept by --merge keep theirs)

    @property
    def passed(self) -> bool | None:
        if self.ratio is None or self.target is None:
            return None
        op, value = self.target
        return self.ratio <= value if op == "<=" else self.ratio >= value

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Row:
        """Inverse of :meth:`to_dict` (``passed`` is recomputed)."""
        kw = {k: v for k, v in d.items() if k != "passed"}
        if kw.get("target") is not None:
            kw["target"] = tuple(kw["target"])
        return cls(**kw)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    device: torch.device | None = None,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Wall seconds of each function over ``repeats`` rounds, round-robin in ``fns`` order within a round.

    Each function runs ``warmup`` times first (untimed). With a CUDA ``device`` the queue is drained before
    and after each call, so a time covers the work, not the launch.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be >= 1")
    dev = device or torch.device("cpu")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(dev)
            start = time.perf_counter()
            fn()
            sync(dev)
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of ``num[i] / den[i]`` (see the module docstring)."""
    if len(num) != len(den) or not num:
        raise ValueError("paired_ratio needs two equally long, non-empty sequences")
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class Machine:
    """Facts that the figures depend on, printed above the table."""

    cpu: str = field(default_factory=cpu_model)
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    threads: int = field(default_factory=torch.get_num_threads)
    torch: str = torch.__version__
    python: str = platform.python_version()
    gpu: str = field(
        default_factory=lambda: torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    )
    date: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    load_start: float = field(default_factory=lambda: os.getloadavg()[0])
    load_end: float | None = None


def _fmt(value: float | None, unit: str, digits: int = 3) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.{digits}g}x" if value < 100 else f"{value:.0f}x"
    return f"{value:.{digits}g} {unit}"


def _figure(row: Row) -> str:
    """The row's figure to 3 significant digits, or as many more (up to 6) as it takes to tell it from the
    target it is judged against: 1.1038x against ``<= 1.1x`` shows as 1.104x, not as a FAIL of 1.1x."""
    value, target = row.ratio, None if row.target is None else row.target[1]
    digits = 3
    if value is not None and target is not None and value != target:
        while digits < 6 and float(f"{value:.{digits}g}") == float(f"{target:.{digits}g}"):
            digits += 1
    return _fmt(value, row.unit, digits)


def _target(row: Row) -> str:
    if row.target is None:
        return "-"
    op, value = row.target
    return f"{'≤' if op == '<=' else '≥'} {_fmt(value, row.unit)}"


def _verdict(row: Row) -> str:
    if row.skipped:
        return f"skipped ({row.skipped})"
    p = row.passed
    return "-" if p is None else ("pass" if p else "**FAIL**")


def load_before(path: Path) -> dict[str, float]:
    """``{row key: figure}`` of a saved run (``--save-json``), for the "before" column; {} if absent."""
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {r["key"]: r["ratio"] for r in rows if r.get("ratio") is not None}


def write_json(path: Path, rows: Sequence[Row], machine: Machine, command: str) -> None:
    path.write_text(
        json.dumps(
            {"machine": asdict(machine), "command": command, "rows": [r.to_dict() for r in rows]}, indent=2
        )
        + "\n"
    )


def render(
    rows: Sequence[Row], machine: Machine, command: str, seconds: float, notes: Sequence[str] = ()
) -> str:
    """RESULTS.md: machine, command, one table of every row, the targets' verdicts, then ``notes``."""
    has_before = any(r.before is not None for r in rows)
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`benchmarks/suite.py`); do not edit by hand, rerun instead. Every figure is",
        "a ratio against a baseline measured in the same run: candidate and baseline run round-robin, each",
        "after a warm-up, and the figure is the median over >= 5 rounds of the per-round ratio (exceptions",
        "are named in the row). Absolute times on a shared machine scatter; the ratios are the figures.",
        "",
        f"- machine: {machine.cpu}, {machine.cores} cores, torch threads {machine.threads}, GPU {machine.gpu}",
        f"- software: torch {machine.torch}, Python {machine.python}",
        f"- date: {machine.date}; load average {machine.load_start:.2f} at the start, "
        + (f"{machine.load_end:.2f} at the end" if machine.load_end is not None else "?"),
        f"- command: `{command}` ({seconds / 60:.1f} min)",
        "",
    ]
    head = ["bench", "what", "baseline", *(["before"] if has_before else []), "figure", "target", "result"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        cells = [r.bench, r.what, r.baseline]
        if has_before:
            cells.append(_fmt(r.before, r.unit))
        cells += [_figure(r), _target(r), _verdict(r)]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines.append("")
    judged = [r for r in rows if r.passed is not None]
    failed = [r for r in judged if not r.passed]
    lines.append(
        f"Targets: {len(judged) - len(failed)} of {len(judged)} met"
        + (f"; missed: {', '.join(r.key for r in failed)}." if failed else ".")
    )
    lines += ["", "## Details", ""]
    for r in rows:
        if r.detail:
            lines.append(f"- `{r.key}`: {r.detail}")
    if has_before:
        lines += [
            "",
            '"before": the same row measured on the tree before the fast paths (`benchmarks/before.json`, '
            "recorded there with `--save-json`, in another run: compare ratios, not absolute times). Rows "
            "without a fast path have none.",
        ]
    if notes:
        lines += ["", "## Notes", "", *notes]
    return "\n".join(lines) + "\n"
