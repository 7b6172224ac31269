"""The per-tensor sensitivity map as a table, a figure and MLflow metrics.

Input: :func:`mcel_search.core.sensitivity.sensitivity_map`'s rows (per-realization accuracies with one
tensor exposed). Per tensor, the drop ``d_r = clean - acc_r`` is summarized as its mean with the Student-t
interval of :func:`mcel_search.analysis.stats.paired_gain` (clean vs. exposed, paired by realization; no
interval for a single realization) and its worst case ``max_r d_r``. Units: accuracy points.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.sensitivity import TensorSensitivity
from .stats import paired_gain

#: MLflow metric names allow [A-Za-z0-9_./ -]; a tensor name is mapped onto that set.
_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_./-]")


@dataclass(frozen=True)
class SensitivityRow:
    """One tensor's drop, in accuracy points."""

    name: str
    kind: str  # weight or bias
    numel: int
    bits: int
    clean: float  # clean accuracy (points)
    drop: float  # mean drop (points)
    low: float  # 95% CI of the mean drop (NaN with one realization)
    high: float
    worst: float  # largest drop over the realizations
    reps: int


def summarize(rows: Sequence[TensorSensitivity], confidence: float = 0.95) -> list[SensitivityRow]:
    """Mean drop, its interval and the worst drop per tensor (module docstring)."""
    out = []
    for r in rows:
        drops = r.drops
        mean = sum(drops) / len(drops)
        if len(drops) > 1:
            g = paired_gain([r.clean_acc] * len(r.accs), list(r.accs), confidence)
            low, high = g.low, g.high
        else:
            low = high = math.nan
        out.append(
            SensitivityRow(
                r.name,
                r.kind,
                r.numel,
                r.bits,
                100 * r.clean_acc,
                100 * mean,
                100 * low,
                100 * high,
                100 * max(drops),
                len(drops),
            )
        )
    return out


def format_table(rows: Sequence[SensitivityRow], ber: float) -> str:
    """One line per exposed tensor: name, kind, values, bits, mean drop [95% CI], worst drop."""
    lines = [
        f"accuracy drop (points) at BER {100 * ber:g}% with only one tensor exposed "
        f"(clean {rows[0].clean:.2f}%, {rows[0].reps} realizations)"
        if rows
        else "no stored tensors",
        f"{'tensor':<28} {'kind':<6} {'values':>10} {'bits':>4} {'drop':>7} {'95% CI':>18} {'worst':>7}",
    ]
    for r in rows:
        ci = "n=1, no CI" if math.isnan(r.low) else f"[{r.low:+.2f}, {r.high:+.2f}]"
        lines.append(
            f"{r.name:<28} {r.kind:<6} {r.numel:>10,} {r.bits:>4} {r.drop:>+7.2f} {ci:>18} {r.worst:>+7.2f}"
        )
    return "\n".join(lines)


def metric_name(row: SensitivityRow, what: str = "drop") -> str:
    """``sensitivity.<tensor>.<what>`` with characters MLflow refuses replaced by ``_``."""
    return f"sensitivity.{_METRIC_UNSAFE.sub('_', row.name)}.{what}"


def metrics(rows: Sequence[SensitivityRow]) -> dict[str, float]:
    """MLflow metrics: per tensor the mean drop, the interval ends (when defined) and the worst drop, as
    fractions of accuracy like every stored metric (the rows, the table and the figure are in points)."""
    out: dict[str, float] = {}
    for r in rows:
        out[metric_name(r)] = r.drop / 100
        out[metric_name(r, "worst")] = r.worst / 100
        if not math.isnan(r.low):
            out[metric_name(r, "ci_low")] = r.low / 100
            out[metric_name(r, "ci_high")] = r.high / 100
    return out


def plot(rows: Sequence[SensitivityRow], ber: float, path: str | Path) -> Path:
    """A horizontal bar chart of the mean drop per tensor with its interval, weights and biases coloured
    apart; written as PNG (atomically)."""
    from .plots import _new_figure, _save

    fig, ax = _new_figure()
    ys = list(range(len(rows)))[::-1]
    colors = ["tab:blue" if r.kind == "weight" else "tab:orange" for r in rows]
    err: Any = None
    if rows and not any(math.isnan(r.low) for r in rows):
        err = [[r.drop - r.low for r in rows], [r.high - r.drop for r in rows]]
    ax.barh(ys, [r.drop for r in rows], xerr=err, color=colors, capsize=3)
    ax.set_yticks(ys, [f"{r.name} ({r.numel:,})" for r in rows], fontsize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"accuracy drop (points) at BER {100 * ber:g}%, one tensor exposed (mean, 95% CI)")
    ax.set_title("sensitivity map (blue: weights, orange: biases)")
    return _save(fig, path)
