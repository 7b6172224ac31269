"""Figures of a search: BER curves, the clean-vs-BER Pareto scatter, MLM histories, test-set margins.

Every function takes plain tables / mappings, writes one PNG to ``path`` (parent folders are created; the
file is written to a temporary name and renamed, so a reader never sees half a file) and **returns the
data it drew**, in the units it drew them, so a caller or a test can check the figure against the inputs.

Conventions:

* accuracies come in as fractions in [0, 1] and are drawn **and returned in percent**; a value outside
  [0, 1] raises ``ValueError`` (it is most likely already a percentage);
* NaN accuracies / margins / MLM values are dropped (not drawn, not returned);
* ``labels`` maps ``run_id`` to a legend label; a run without a label is labelled by its ``run_id``;
* figures are built with :class:`matplotlib.figure.Figure` directly (Agg canvas, no ``pyplot``), so there
  is no global figure registry to leak into: a figure is freed as soon as the function returns.

This module works on tables and files only: it imports neither ray, optuna nor mlflow (the caller logs the
written files as MLflow artifacts).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from ..core.atomic import atomic_write
from ..core.errors import BadInputError

__all__ = ["DPI", "plot_ber_curves", "plot_margins", "plot_mlm", "plot_pareto"]

DPI = 120
FIGSIZE = (6.4, 4.4)
MLM_LOG_RATIO = 50.0
"""``plot_mlm`` uses a log y axis when all MLM values are positive and max / min exceeds this ratio."""


# --------------------------------------------------------------------------------------------- helpers


def _new_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="tight")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG to ``path`` through :func:`~mcel_search.core.atomic.atomic_write` (parent folders
    created, tmp file beside ``path`` renamed over it, removed on error), then free the figure."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise BadInputError(f"figure path {str(path)!r} must end in .png (the figures are written as PNG)")
    try:
        with atomic_write(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=DPI)
    finally:
        fig.clear()
    return path


def _require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BadInputError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}")


def _check_fraction(values: pd.Series, what: str) -> None:
    v = pd.to_numeric(values, errors="raise").to_numpy(dtype=float)
    bad = v[np.isfinite(v) & ((v < 0.0) | (v > 1.0))]
    if bad.size:
        raise BadInputError(
            f"{what} must be a fraction in [0, 1] (it is drawn in %), got e.g. {bad[0]!r}; "
            "pass fractions, not percentages"
        )


def _label(labels: Mapping[str, str] | None, run_id: str) -> str:
    if labels is not None and run_id in labels:
        return str(labels[run_id])
    return str(run_id)


def _run_order(run_ids: pd.Series) -> list[str]:
    """Run ids in order of first appearance."""
    return list(dict.fromkeys(run_ids.tolist()))


def _no_data(ax: Any, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")


# ------------------------------------------------------------------------------------------ BER curves


def plot_ber_curves(
    curves: pd.DataFrame,
    labels: Mapping[str, str] | None,
    path: str | os.PathLike,
    title: str | None = None,
) -> pd.DataFrame:
    """Accuracy (%) against BER per run: mean over the realizations, shaded ±1 std band, markers at the BERs.

    ``curves`` has one row per realization: ``run_id``, ``ber`` (fraction), ``rep``, ``accuracy``
    (fraction). The x axis shows the BER in percent on a symlog axis (linear below the smallest positive
    BER, logarithmic above), so BER 0 is drawn; it is linear when only BER 0 is present.

    Returns one row per (run_id, ber), runs in order of first appearance, BER ascending, with columns
    ``run_id``, ``ber`` (fraction, as given; drawn at ``100 * ber``), ``mean``, ``std`` (accuracy in %,
    sample std with ddof=1, 0 for a single realization, as in ``core.evaluation.summarize``) and ``n``
    (number of non-NaN realizations).
    """
    _require_columns(curves, ("run_id", "ber", "rep", "accuracy"), "curves")
    _check_fraction(curves["ber"], "curves.ber")
    _check_fraction(curves["accuracy"], "curves.accuracy")
    data = curves[["run_id", "ber", "accuracy"]].copy()
    data["ber"] = data["ber"].astype(float)
    data["accuracy"] = 100.0 * data["accuracy"].astype(float)
    data = data[np.isfinite(data["ber"]) & np.isfinite(data["accuracy"])]

    order = _run_order(data["run_id"])
    grouped = data.groupby(["run_id", "ber"], sort=False)["accuracy"]
    stats = grouped.agg(mean="mean", std=lambda a: float(np.std(a, ddof=1)) if len(a) > 1 else 0.0, n="size")
    stats = stats.reset_index()
    stats["run_id"] = pd.Categorical(stats["run_id"], categories=order, ordered=True)
    stats = stats.sort_values(["run_id", "ber"]).reset_index(drop=True)
    stats["run_id"] = stats["run_id"].astype(object)
    stats["n"] = stats["n"].astype(int)

    fig, ax = _new_figure()
    for run_id in order:
        s = stats[stats["run_id"] == run_id]
        x = 100.0 * s["ber"].to_numpy()
        mean, std = s["mean"].to_numpy(), s["std"].to_numpy()
        (line,) = ax.plot(x, mean, marker="o", markersize=4, label=_label(labels, run_id))
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    bers_pct = np.unique(100.0 * stats["ber"].to_numpy())
    positive = bers_pct[bers_pct > 0]
    if positive.size:
        ax.set_xscale("symlog", linthresh=float(positive.min()))
        if bers_pct.size <= 12:
            ax.xaxis.set_major_locator(FixedLocator(bers_pct))
            ax.set_xticklabels([f"{v:g}" for v in bers_pct])
            ax.xaxis.set_minor_locator(NullLocator())
    if stats.empty:
        _no_data(ax)
    ax.set_xlabel("bit error rate (%, symlog)")
    ax.set_ylabel("accuracy (%)  mean ± 1 std")
    ax.set_title(title or "Accuracy under random bit errors")
    ax.grid(True, alpha=0.3)
    _legend(ax)
    _save(fig, path)
    return stats[["run_id", "ber", "mean", "std", "n"]]


# --------------------------------------------------------------------------------------------- Pareto


def _points(rows: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "run_id": rows["run_id"].astype(object).to_numpy(),
            "clean_acc": 100.0 * rows["clean_acc"].to_numpy(dtype=float),
            "ber_acc": 100.0 * rows["ber_acc"].to_numpy(dtype=float),
        }
    )
    for col in extra:
        out[col] = 100.0 * rows[col].to_numpy(dtype=float)
    return out


def _finite_acc(rows: pd.DataFrame) -> pd.Series:
    return np.isfinite(rows["clean_acc"].astype(float)) & np.isfinite(rows["ber_acc"].astype(float))


def _lookup(trials: pd.DataFrame, run_id: str | None, what: str) -> pd.DataFrame:
    if run_id is None:
        return trials.iloc[0:0]
    rows = trials[trials["run_id"] == run_id]
    if rows.empty:
        raise BadInputError(f"{what} run {run_id!r} is not in the trials table")
    return rows[_finite_acc(rows)]


def plot_pareto(
    trials: pd.DataFrame,
    front_ids: Sequence[str],
    baseline_id: str | None,
    selected_id: str | None,
    path: str | os.PathLike,
    title: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Scatter of clean accuracy (x, %) against accuracy under bit errors (y, %).

    * grey dots: trials (``role == "trial"``) with ``state == "completed"`` and finite accuracies; pruned
      and errored trials are **not shown** (their number is given in the legend);
    * the Pareto front ``front_ids`` (any role; every id must be a completed row with finite accuracies,
      else ``ValueError``): highlighted, connected in ascending ``clean_acc`` order (ties: descending
      ``ber_acc``);
    * every drawn point (trials, front, baseline) has the same error bar: the 95% CI of its mean
      ``ber_acc`` over the realizations (``ber_acc_ci``, half-width, as ``analysis.queries.runs_frame``
      computes it), none where that column is absent or NaN;
    * the baseline (``baseline_id``, any state, drawn when its accuracies are finite): a star;
    * the selected run (``selected_id``): circled.

    An id that is not in ``trials`` raises ``ValueError``; ``None`` means "none".

    Returns ``{"trials", "front", "baseline", "selected"}``, each a DataFrame of the points drawn with
    columns ``run_id``, ``clean_acc``, ``ber_acc`` (in %); ``"front"`` is in the order of the connecting
    line and also has ``ber_acc_std`` (in %, NaN when absent). ``"baseline"`` / ``"selected"`` have 0 or 1
    row.
    """
    _require_columns(trials, ("run_id", "role", "state", "clean_acc", "ber_acc"), "trials")
    _check_fraction(trials["clean_acc"], "trials.clean_acc")
    _check_fraction(trials["ber_acc"], "trials.ber_acc")
    if trials["run_id"].duplicated().any():
        dups = sorted(set(trials.loc[trials["run_id"].duplicated(), "run_id"].astype(str)))
        raise BadInputError(f"trials has duplicated run_id(s) {dups[:5]}")
    if isinstance(front_ids, str):
        raise TypeError("front_ids must be a sequence of run ids, not a single string")
    trials = trials.copy()
    for col in ("ber_acc_std", "ber_acc_ci"):
        if col not in trials.columns:
            trials[col] = np.nan

    is_trial = trials["role"] == "trial"
    completed = is_trial & (trials["state"] == "completed") & _finite_acc(trials)
    hidden = int((is_trial & ~completed).sum())
    shown = _points(trials[completed], extra=("ber_acc_ci",))

    front_ids = list(dict.fromkeys(front_ids))
    unknown = [r for r in front_ids if r not in set(trials["run_id"])]
    if unknown:
        raise BadInputError(f"front run(s) {unknown} are not in the trials table")
    front_rows = trials[trials["run_id"].isin(front_ids)]
    invalid = front_rows[(front_rows["state"] != "completed") | ~_finite_acc(front_rows)]
    if not invalid.empty:
        raise BadInputError(
            f"front run(s) {invalid['run_id'].tolist()} are not completed with finite accuracies: "
            "the front must be computed over completed runs"
        )
    front = _points(front_rows, extra=("ber_acc_std", "ber_acc_ci"))
    front = front.sort_values(["clean_acc", "ber_acc"], ascending=[True, False], kind="stable")
    front = front.reset_index(drop=True)

    baseline = _points(_lookup(trials, baseline_id, "baseline"), extra=("ber_acc_ci",))
    selected = _points(_lookup(trials, selected_id, "selected"))

    fig, ax = _new_figure()
    label = f"completed trials ({len(shown)})"
    if hidden:
        label += f"; {hidden} pruned/errored not shown"

    def bars(points: pd.DataFrame) -> np.ndarray:
        ci = points["ber_acc_ci"].to_numpy(dtype=float)
        return np.where(np.isfinite(ci), ci, 0.0)

    ax.errorbar(
        shown["clean_acc"],
        shown["ber_acc"],
        yerr=bars(shown),
        fmt="o",
        markersize=4,
        color="0.6",
        alpha=0.8,
        elinewidth=0.6,
        capsize=1.5,
        label=label,
        zorder=2,
    )
    if not front.empty:
        ax.errorbar(
            front["clean_acc"],
            front["ber_acc"],
            yerr=bars(front),
            color="C3",
            marker="o",
            markersize=5,
            linewidth=1.5,
            elinewidth=0.8,
            capsize=2,
            label=f"Pareto front ({len(front)})",
            zorder=3,
        )
    if not baseline.empty:
        ax.errorbar(
            baseline["clean_acc"],
            baseline["ber_acc"],
            yerr=bars(baseline),
            fmt="none",
            ecolor="C0",
            elinewidth=0.8,
            capsize=2,
            zorder=4,
        )
        ax.scatter(
            baseline["clean_acc"],
            baseline["ber_acc"],
            marker="*",
            s=200,
            color="C0",
            edgecolors="black",
            linewidths=0.6,
            label="baseline",
            zorder=4,
        )
    if not selected.empty:
        ax.scatter(
            selected["clean_acc"],
            selected["ber_acc"],
            marker="o",
            s=320,
            facecolors="none",
            edgecolors="C2",
            linewidths=2.0,
            label="selected",
            zorder=5,
        )
    if shown.empty and front.empty and baseline.empty:
        _no_data(ax, "no completed trials")
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("accuracy under bit errors (%)")
    ax.set_title(title or "Clean accuracy vs. accuracy under bit errors")
    ax.grid(True, alpha=0.3)
    _legend(ax)
    _save(fig, path)
    return {"trials": shown, "front": front, "baseline": baseline, "selected": selected}


# ------------------------------------------------------------------------------------------------ MLM


def plot_mlm(
    histories: pd.DataFrame,
    labels: Mapping[str, str] | None,
    path: str | os.PathLike,
    title: str | None = None,
) -> pd.DataFrame:
    """Mean logit margin (MLM, logit units) per training epoch, one line per run.

    ``histories`` has columns ``run_id``, ``epoch``, ``mlm``. NaN values are dropped; when an epoch is
    logged twice for a run (a resumed trial) the last row wins. The y axis is logarithmic when every value
    is positive and max / min > ``MLM_LOG_RATIO``.

    Returns the plotted rows (``run_id``, ``epoch``, ``mlm``), runs in order of first appearance, epochs
    ascending; ``result.attrs["yscale"]`` is ``"log"`` or ``"linear"``.
    """
    _require_columns(histories, ("run_id", "epoch", "mlm"), "histories")
    data = histories[["run_id", "epoch", "mlm"]].copy()
    data["mlm"] = pd.to_numeric(data["mlm"], errors="raise").astype(float)
    data = data[np.isfinite(data["mlm"])]
    data = data.drop_duplicates(["run_id", "epoch"], keep="last")
    order = _run_order(data["run_id"])
    data["_order"] = data["run_id"].map({r: i for i, r in enumerate(order)})
    data = data.sort_values(["_order", "epoch"], kind="stable").drop(columns="_order").reset_index(drop=True)

    values = data["mlm"].to_numpy()
    log = bool(values.size) and values.min() > 0 and values.max() / values.min() > MLM_LOG_RATIO

    fig, ax = _new_figure()
    for run_id in order:
        s = data[data["run_id"] == run_id]
        ax.plot(s["epoch"], s["mlm"], marker="o", markersize=3, label=_label(labels, run_id))
    if log:
        ax.set_yscale("log")
    if data.empty:
        _no_data(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean logit margin (logit units)" + (", log scale" if log else ""))
    ax.set_title(title or "Mean logit margin (MLM) during training")
    ax.grid(True, alpha=0.3)
    _legend(ax)
    _save(fig, path)
    data.attrs["yscale"] = "log" if log else "linear"
    return data


# -------------------------------------------------------------------------------------------- margins


def plot_margins(
    margins: Mapping[str, Sequence[float]],
    labels: Mapping[str, str] | None,
    path: str | os.PathLike,
    title: str | None = None,
) -> pd.DataFrame:
    """Distribution of test-set margins (top-1 minus top-2 logit) per run, as an **ECDF** (step curve).

    An ECDF needs no bin choice and keeps runs with different spreads comparable on one axis; the median
    of each run is marked by a dotted vertical line. Non-finite margins are dropped; a run with no finite
    margin draws nothing.

    Returns one row per run (in the mapping's order): ``run_id``, ``n`` (finite margins drawn), ``mean``,
    ``median`` (logit units; NaN when ``n == 0``).
    """
    if not isinstance(margins, Mapping):
        raise TypeError(f"margins must be a mapping run_id -> margins, got {type(margins).__name__}")
    rows = []
    fig, ax = _new_figure()
    for run_id, values in margins.items():
        if isinstance(values, Mapping | str | bytes):
            raise TypeError(
                f"margins[{run_id!r}] must be a sequence of per-sample margins, got {type(values).__name__}"
            )
        v = np.asarray(values, dtype=float).ravel()
        v = np.sort(v[np.isfinite(v)])
        n = int(v.size)
        mean = float(v.mean()) if n else float("nan")
        median = float(np.median(v)) if n else float("nan")
        rows.append({"run_id": run_id, "n": n, "mean": mean, "median": median})
        if not n:
            continue
        y = np.arange(1, n + 1) / n
        (line,) = ax.step(
            np.concatenate([[v[0]], v]),
            np.concatenate([[0.0], y]),
            where="post",
            label=f"{_label(labels, run_id)} (median {median:.3g})",
        )
        ax.axvline(median, color=line.get_color(), linestyle=":", linewidth=1)
    summary = pd.DataFrame(rows, columns=["run_id", "n", "mean", "median"])
    summary["n"] = summary["n"].astype(int)
    if not (summary["n"] > 0).any():
        _no_data(ax)
    ax.set_xlabel("test-set margin: top-1 − top-2 logit (logit units)")
    ax.set_ylabel("fraction of test samples ≤ margin (ECDF)")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title or "Distribution of test-set margins")
    ax.grid(True, alpha=0.3)
    _legend(ax)
    _save(fig, path)
    return summary
