"""Pick one MCEL setting (margin ``m``, bound ``b``, logit scale ``s``) per group, and compare it to CEL.

Pure functions over the trials table (one row per trial, see ``pareto.py``); nothing here talks to MLflow.
Accuracies in the table are fractions in ``[0, 1]``; user-facing thresholds and reported gains are in
percentage *points* (1 point = 0.01).

Rules (:data:`RULES`), all over the *completed* rows with ``role == "trial"`` and no NaN in ``clean_acc`` /
``ber_acc``:

- ``constraint`` (default): let ``best`` be the highest clean accuracy of the group *including* the
  completed CEL baseline row(s); among trials with ``clean_acc >= best - max_clean_drop / 100`` pick the
  highest ``ber_acc``. "No more than X points of clean accuracy lost, then as robust as possible."
- ``knee``: on the Pareto front of (clean_acc max, ber_acc max), normalize both objectives to ``[0, 1]``
  over the front and pick the point farthest from the straight line through the two extreme points (front
  sorted by clean_acc), measured toward the ideal corner ``(1, 1)`` -- a point *below* that line (concave
  part of the front) has a negative distance, so it is never preferred over an extreme. With 1 or 2 front
  points, the one with the higher ``ber_acc``.
- ``weighted``: maximize ``w_clean * clean_acc + w_ber * ber_acc``.
- ``tolerable``: the clean-accuracy floor of ``constraint`` (``max_clean_drop`` points below the best clean
  accuracy, CEL baseline included), then the highest ``tolerable_ber`` (core.tolerance: the highest BER
  within the search's tolerance of the trial's own clean accuracy). For a designer who picks the memory's
  voltage from the error rate the model tolerates. Trials without a ``tolerable_ber`` (searches written
  before it existed) are not candidates.

Ties in every rule: higher ``ber_acc``, then higher ``clean_acc``, then lower ``margin`` (NaN last), then
the earlier row. With these tie-breaks the selected row is always on the Pareto front.

Comparison with CEL: given the per-realization accuracies (``realizations``), :func:`select` computes the
paired gain selected - baseline with :func:`~mcel_search.analysis.stats.paired_gain` (formulas, why
pairing, and edge cases in ``stats.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..core.errors import BadInputError
from ..core.losses import relative_separation
from .pareto import OBJECTIVES, pareto_front
from .stats import PairedGain, paired_gain

RULES = ("constraint", "knee", "weighted", "tolerable")
#: A Pareto front never mixes error models: ``protocol`` (core.protocol's label) is part of the group.
GROUP_COLS = ("dataset", "arch", "bits", "protocol")
DEFAULT_WEIGHTS = {"clean_acc": 0.5, "ber_acc": 0.5}

# Absolute tolerance (in accuracy fractions) for "within max_clean_drop points": 0.92 - 0.01 is not exactly
# 0.91 in binary floating point, and a trial at exactly the threshold must qualify.
_THRESHOLD_TOL = 1e-9
# Scores are rounded to this many decimals before the tie-breaks so that float noise in a weighted sum or
# a distance does not decide between mathematically equal scores.
_SCORE_DECIMALS = 12


# ----------------------------------------------------------------------------------------------- selection


def _num(row: pd.Series | None, key: str) -> float:
    """``row[key]`` as a float; NaN when the row or key is missing or the value is not numeric."""
    if row is None or key not in row.index:
        return math.nan
    try:
        value = row[key]
        return math.nan if value is None or pd.isna(value) else float(value)
    except (TypeError, ValueError):
        return math.nan


def _value(row: pd.Series | None, key: str) -> Any:
    if row is None or key not in row.index:
        return None
    value = row[key]
    if isinstance(value, np.generic):
        value = value.item()
    return value


def _separation(margin: float, b: float) -> float:
    """:func:`~mcel_search.core.losses.relative_separation` of a row's values; NaN where not defined."""
    value = relative_separation({"margin": margin, "b": b})
    return math.nan if value is None else value


def _fmt_ber(target_ber: float | None) -> str:
    return "the target BER" if target_ber is None else f"BER {target_ber * 100:g}%"


def _describe(row: pd.Series) -> str:
    """E.g. ``MCEL m=8 b=16 s=1`` (parts that are NaN are left out)."""
    loss = _value(row, "loss")
    name = str(loss).upper() if loss is not None and not pd.isna(loss) else "MCEL"
    parts = [name]
    for key, label in (("margin", "m"), ("b", "b"), ("mhl_margin", "mhl_margin"), ("logit_scale", "s")):
        v = _num(row, key)
        if not math.isnan(v):
            parts.append(f"{label}={v:g}")
    return " ".join(parts)


@dataclass
class Selection:
    """The outcome of one selection rule on one group (one dataset / arch / bits)."""

    rule: str  # the rule that picked the row, one of RULES
    row: pd.Series | None  # the selected trial; None if no trial qualified
    front: pd.DataFrame  # Pareto front (clean_acc, ber_acc) of the group's completed trials
    baseline: pd.Series | None  # the group's completed CEL baseline row, if any
    gain: PairedGain | None  # paired BER gain selected - baseline (fractions), if realizations were given
    message: str  # how the row was chosen, or why none was
    target_ber: float | None = None  # the BER the ber_acc columns refer to (for the text only)
    group: dict[str, Any] = field(default_factory=dict)  # the group's key, e.g. {"arch": "vgg3", ...}

    def verdict(self) -> str:
        """One line: does the selected setting beat CEL under bit errors?"""
        at = _fmt_ber(self.target_ber)
        if self.row is None:
            return f"no setting selected: {self.message}"
        desc = _describe(self.row)
        if self.baseline is None:
            return f"{desc} selected; no completed CEL baseline in this group to compare with at {at}"
        if self.gain is None:
            diff = (_num(self.row, "ber_acc") - _num(self.baseline, "ber_acc")) * 100.0
            return (
                f"{desc} vs CEL at {at}: {diff:+.2f} points in mean accuracy "
                "(no paired realizations given: significance not tested)"
            )
        g = self.gain
        ci = (
            f"{g.mean * 100:+.2f} points [{g.confidence * 100:g}% CI {g.low * 100:+.2f}, {g.high * 100:+.2f}]"
        )
        if g.significant and g.mean > 0:
            return f"{desc} beats CEL at {at}: {ci}"
        if g.significant:
            return f"the search found no gain over CEL at {at}; {desc} is significantly worse: {ci}"
        return f"the search found no significant gain over CEL at {at}: {ci}"

    def summary(self) -> dict[str, Any]:
        """Flat dict for a results table.

        Accuracies (``clean_acc``, ``ber_acc``, their ``_std`` and the ``baseline_*`` ones) are fractions as in
        the trials table; ``gain_mean``, ``gain_low`` and ``gain_high`` are in percentage points. Clean
        accuracy has no error realizations, so its std is 0 by construction. ``significant`` is None when no
        gain was computed.
        """
        row, base = self.row, self.baseline
        ident = row if row is not None else base

        def key(name: str) -> Any:
            v = _value(ident, name)
            return self.group.get(name) if v is None else v

        margin, b = _num(row, "margin"), _num(row, "b")
        g = self.gain
        return {
            "dataset": key("dataset"),
            "arch": key("arch"),
            "bits": key("bits"),
            "rule": self.rule,
            "run_id": _value(row, "run_id"),
            "loss": _value(row, "loss"),
            "margin": margin,
            "b": b,
            "logit_scale": _num(row, "logit_scale"),
            "mhl_margin": _num(row, "mhl_margin"),
            "relative_separation": _separation(margin, b),
            "clean_acc": _num(row, "clean_acc"),
            "clean_acc_std": 0.0 if row is not None else math.nan,
            "ber_acc": _num(row, "ber_acc"),
            "ber_acc_std": _num(row, "ber_acc_std"),
            "tolerable_ber": _num(row, "tolerable_ber"),
            "baseline_run_id": _value(base, "run_id"),
            "baseline_clean_acc": _num(base, "clean_acc"),
            "baseline_clean_acc_std": 0.0 if base is not None else math.nan,
            "baseline_ber_acc": _num(base, "ber_acc"),
            "baseline_ber_acc_std": _num(base, "ber_acc_std"),
            "baseline_tolerable_ber": _num(base, "tolerable_ber"),
            "target_ber": self.target_ber,
            "gain_mean": g.mean * 100.0 if g else math.nan,
            "gain_low": g.low * 100.0 if g else math.nan,
            "gain_high": g.high * 100.0 if g else math.nan,
            "gain_n": g.n if g else 0,
            "confidence": g.confidence if g else math.nan,
            "significant": g.significant if g else None,
            "verdict": self.verdict(),
        }


def _col(df: pd.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        return np.full(len(df), np.nan)
    return df[name].to_numpy(dtype=float, na_value=np.nan)


def _argbest(cands: pd.DataFrame, score: np.ndarray) -> pd.Series:
    """The row with the highest score; ties: higher ber, higher clean, lower margin, first."""
    score = np.round(np.asarray(score, dtype=float), _SCORE_DECIMALS)
    margin = _col(cands, "margin")
    margin = np.where(np.isnan(margin), np.inf, margin)
    # np.lexsort sorts by the LAST key first; all keys ascending, so negate the higher-is-better ones.
    order = np.lexsort(
        (np.arange(len(cands)), margin, -_col(cands, "clean_acc"), -_col(cands, "ber_acc"), -score)
    )
    return cands.iloc[int(order[0])]


def _knee_scores(front: pd.DataFrame) -> np.ndarray:
    """Signed distance of each front point to the line through the extreme points, toward (1, 1)."""
    x, y = _col(front, "clean_acc"), _col(front, "ber_acc")

    def norm(v: np.ndarray) -> np.ndarray:
        span = v.max() - v.min()
        return np.zeros_like(v) if span == 0 else (v - v.min()) / span

    x, y = norm(x), norm(y)
    order = np.lexsort((-y, x))  # by clean_acc ascending (ber descending inside equal clean)
    p1 = np.array([x[order[0]], y[order[0]]])
    p2 = np.array([x[order[-1]], y[order[-1]]])
    u = p2 - p1
    length = float(np.hypot(*u))
    if length == 0.0:
        return np.zeros(len(front))
    normal = np.array([-u[1], u[0]])  # u = (+dx, -dy) on a 2-D front, so this points toward (1, 1)
    return ((x - p1[0]) * normal[0] + (y - p1[1]) * normal[1]) / length


def _check_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    if weights is None:
        return dict(DEFAULT_WEIGHTS)
    unknown = [k for k in weights if k not in DEFAULT_WEIGHTS]
    if unknown:
        raise BadInputError(f"unknown weight key(s) {unknown}: expected {list(DEFAULT_WEIGHTS)}")
    w = {k: float(weights.get(k, 0.0)) for k in DEFAULT_WEIGHTS}
    if any(not math.isfinite(v) or v < 0 for v in w.values()):
        raise BadInputError(f"weights must be finite and >= 0, got {dict(weights)}")
    if all(v == 0 for v in w.values()):
        raise BadInputError("weights must not all be 0")
    return w


def select(
    df: pd.DataFrame,
    rule: str = "constraint",
    *,
    max_clean_drop: float = 1.0,
    weights: Mapping[str, float] | None = None,
    realizations: Callable[[str], Sequence[float]] | None = None,
    target_ber: float | None = None,
    confidence: float = 0.95,
    group_cols: Sequence[str] = GROUP_COLS,
) -> Selection:
    """Select one trial of ONE group (one dataset / arch / bits) with the named rule (see the module doc).

    Args:
        df: the group's rows of the trials table (trials and the CEL baseline).
        rule: one of :data:`RULES`.
        max_clean_drop: ``constraint`` only: allowed clean-accuracy loss in percentage points (>= 0) below
            the best clean accuracy of the group, CEL baseline included.
        weights: ``weighted`` only: ``{"clean_acc": w1, "ber_acc": w2}``, each >= 0, not both 0; a missing
            key counts as 0. Default 0.5 / 0.5.
        realizations: ``run_id -> per-realization accuracies at the target BER`` (same seed list for every
            run). Given, and with both a selected row and a baseline, ``gain`` is their paired gain.
        target_ber: the BER of the ``ber_acc`` column, used in the verdict text only.
        confidence: confidence level of the gain's interval.
        group_cols: columns that must hold a single value in ``df`` (NaN ignored); ``select_all`` splits by
            them.

    Raises:
        ValueError: unknown rule, missing required column, invalid ``max_clean_drop`` / ``weights``, or more
            than one group in ``df``.
    """
    if rule not in RULES:
        raise BadInputError(f"unknown selection rule {rule!r}: expected one of {RULES}")
    required = ("role", "state", "clean_acc", "ber_acc")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise BadInputError(f"trials table lacks column(s) {missing}")
    if not (max_clean_drop >= 0):  # also rejects NaN
        raise BadInputError(f"max_clean_drop must be >= 0 percentage points, got {max_clean_drop}")
    w = _check_weights(weights) if rule == "weighted" else None
    group: dict[str, Any] = {}
    for col in group_cols:
        if col in df.columns:
            vals = df[col].dropna().unique()
            if len(vals) > 1:
                raise BadInputError(
                    f"select() takes one group, but column {col!r} has values {sorted(map(str, vals))}; "
                    "use select_all()"
                )
            if len(vals) == 1:
                group[col] = vals[0].item() if isinstance(vals[0], np.generic) else vals[0]

    completed = df[df["state"] == "completed"]
    base_rows = completed[completed["role"] == "baseline"]
    baseline = base_rows.iloc[0] if len(base_rows) else None
    trials = completed[completed["role"] == "trial"]
    cands = trials[trials["clean_acc"].notna() & trials["ber_acc"].notna()]
    front = pareto_front(cands, OBJECTIVES, valid_states=None)

    def done(row: pd.Series | None, message: str) -> Selection:
        gain = None
        if realizations is not None and row is not None and baseline is not None:
            gain = paired_gain(
                realizations(str(row["run_id"])), realizations(str(baseline["run_id"])), confidence
            )
        return Selection(rule, row, front, baseline, gain, message, target_ber, group)

    if cands.empty:
        return done(None, f"no completed trial with clean and BER accuracy in this group ({len(df)} rows)")

    if rule in ("constraint", "tolerable"):
        ref_rows = pd.concat([cands["clean_acc"], base_rows["clean_acc"].dropna()])
        best = float(ref_rows.max())
        threshold = best - max_clean_drop / 100.0 - _THRESHOLD_TOL
        ok = cands[cands["clean_acc"].to_numpy(dtype=float) >= threshold]
        ref = (
            "CEL baseline and trials" if len(base_rows["clean_acc"].dropna()) else "trials only, no baseline"
        )
        if ok.empty:
            return done(
                None,
                f"no completed trial within {max_clean_drop:g} points of the best clean accuracy "
                f"{best * 100:.2f}% ({ref})",
            )
        if rule == "tolerable":
            tol = ok[ok["tolerable_ber"].notna()] if "tolerable_ber" in ok.columns else ok.iloc[:0]
            if tol.empty:
                return done(
                    None,
                    f"none of the {len(ok)} trials within {max_clean_drop:g} points of the best clean accuracy "
                    "has a tolerable_ber (recorded by searches since it exists)",
                )
            row = _argbest(tol, _col(tol, "tolerable_ber"))
            return done(
                row,
                f"highest tolerable BER among {len(tol)} of {len(cands)} trials within {max_clean_drop:g} "
                f"points of the best clean accuracy {best * 100:.2f}% ({ref})",
            )
        row = _argbest(ok, _col(ok, "ber_acc"))
        return done(
            row,
            f"highest BER accuracy among {len(ok)} of {len(cands)} trials within {max_clean_drop:g} points "
            f"of the best clean accuracy {best * 100:.2f}% ({ref})",
        )

    if rule == "knee":
        if len(front) <= 2:
            row = _argbest(front, _col(front, "ber_acc"))
            return done(row, f"front has {len(front)} point(s): took the higher BER accuracy")
        scores = _knee_scores(front)
        row = _argbest(front, scores)
        return done(row, f"knee of the {len(front)}-point front (largest normalized distance to its chord)")

    assert w is not None
    score = w["clean_acc"] * _col(cands, "clean_acc") + w["ber_acc"] * _col(cands, "ber_acc")
    row = _argbest(cands, score)
    return done(
        row,
        f"maximum of {w['clean_acc']:g} * clean_acc + {w['ber_acc']:g} * ber_acc over {len(cands)} trials",
    )


def select_all(df: pd.DataFrame, group_cols: Sequence[str] = GROUP_COLS, **kwargs: Any) -> list[Selection]:
    """:func:`select` on each group of ``df`` (split by ``group_cols``), in sorted group order."""
    group_cols = list(group_cols)
    if "protocol" in group_cols and "protocol" not in df.columns:
        df = df.assign(protocol="default")  # a table without the column: every run used our protocol
    missing = [c for c in group_cols if c not in df.columns]
    if missing:
        raise BadInputError(f"trials table lacks group column(s) {missing}")
    if df.empty:
        return []
    return [
        select(part, group_cols=group_cols, **kwargs)
        for _, part in df.groupby(group_cols, sort=True, dropna=False)
    ]


# ---------------------------------------------------------------------------------------------- formatting


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{v * 100:.2f}"


def _g(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:g}"


def format_selection(sel: Selection) -> str:
    """Plain-text table of the front (``*`` = selected, ``CEL`` row = baseline) and the verdict line."""
    rows: list[tuple[str, pd.Series]] = []
    selected_label = sel.row.name if sel.row is not None else None
    front = (
        sel.front.sort_values("clean_acc", ascending=False, kind="stable") if len(sel.front) else sel.front
    )
    for label, r in front.iterrows():
        rows.append(("*" if label == selected_label else "", r))
    if sel.row is not None and selected_label not in sel.front.index:
        rows.append(("*", sel.row))
    if sel.baseline is not None:
        rows.append(("CEL", sel.baseline))

    # one kind of uncertainty for every row: the 95% CI of the mean when every row has it, else the std
    use_ci = bool(rows) and all(not math.isnan(_num(r, "ber_acc_ci")) for _, r in rows)
    spread = "ber_acc_ci" if use_ci else "ber_acc_std"
    header: tuple[str, ...] = (
        "",
        "margin",
        "b",
        "s",
        "m/(2b)",
        "clean %",
        f"acc at {_fmt_ber(sel.target_ber)} % ± " + ("95% CI" if use_ci else "std"),
    )
    tolerable = any(not math.isnan(_num(r, "tolerable_ber")) for _, r in rows)
    if tolerable:
        header = (*header, "tolerable BER %")
    table = [header]
    for mark, r in rows:
        m, b = _num(r, "margin"), _num(r, "b")
        std = _num(r, spread)
        ber = _pct(_num(r, "ber_acc")) + ("" if math.isnan(std) else f" ± {std * 100:.2f}")
        line = (
            mark,
            _g(m),
            _g(b),
            _g(_num(r, "logit_scale")),
            _g(_separation(m, b)),
            _pct(_num(r, "clean_acc")),
            ber,
        )
        if tolerable:
            tol = _num(r, "tolerable_ber")
            line = (*line, "-" if math.isnan(tol) else f"{tol * 100:.3g}")
        table.append(line)
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    title = " ".join(f"{k}={v}" for k, v in sel.group.items())
    lines.append(
        f"{title + ': ' if title else ''}rule {sel.rule} ({_fmt_ber(sel.target_ber)}) - {sel.message}"
    )
    for line in table:
        lines.append("  ".join(cell.rjust(wd) for cell, wd in zip(line, widths, strict=True)).rstrip())
    if not rows:
        lines.append("(no completed trials)")
    lines.append(sel.verdict())
    return "\n".join(lines)
