"""The analysis commands end to end: MLflow runs -> Pareto front and selection per (dataset, arch, bits)
-> tags, Model Registry, text tables and the Markdown report. ``mcel pareto``, ``mcel report`` and the end
of ``mcel search`` call these; they are plain functions so notebooks can too.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from ..core.paths import child_path
from .queries import (
    ber_records,
    metric_history,
    record_selection_on_parent,
    register_checkpoint,
    selections,
    tag_front_and_selection,
)
from .selection import Selection, format_selection
from .stores import open_store


def _group_name(experiment: str, sel: Selection) -> str:
    """``<experiment>-<arch>-<bits>b``, plus ``-<protocol>`` (characters other than [A-Za-z0-9_.-] as ``_``)
    when the group's protocol is not our default."""
    g = sel.group
    name = f"{experiment}-{g.get('arch')}-{g.get('bits')}b"
    protocol = g.get("protocol", "default")
    if protocol not in (None, "default"):
        name += "-" + re.sub(r"[^A-Za-z0-9_.-]", "_", str(protocol))
    return name


def _protocol_suffix(sel: Selection) -> str:
    """``, protocol <label>``: every printed result says which error model it used."""
    return f", protocol {sel.group.get('protocol', 'default')}"


def _group_runs(df: pd.DataFrame, sel: Selection) -> pd.DataFrame:
    mask = pd.Series(True, index=df.index)
    for k, v in sel.group.items():
        mask &= df[k] == v
    return df[mask]


def pareto_command(
    experiment: str,
    *,
    tracking_uri: str | None = None,
    register: bool = False,
    alias: str = "champion",
    tag: bool = True,
    **kwargs: Any,
) -> str:
    """Front and selected point per group as text; tags ``mcel.pareto``/``mcel.selected`` in MLflow and,
    with ``register``, registers each selected checkpoint as ``<experiment>-<arch>-<bits>b`` @ ``alias``."""
    client, uri = open_store(tracking_uri)
    df, sels, _ = selections(experiment, tracking_uri=uri, **kwargs)
    blocks = []
    for sel in sels:
        text = [
            f"== {sel.group.get('dataset')} {sel.group.get('arch')} {sel.group.get('bits')}-bit"
            f"{_protocol_suffix(sel)} ==",
            format_selection(sel),
        ]
        runs = _group_runs(df, sel)
        selected = sel.row["run_id"] if sel.row is not None else None
        if tag:
            tag_front_and_selection(client, runs["run_id"].tolist(), sel.front["run_id"].tolist(), selected)
            parent = _parent_run(client, runs)
            if parent:
                record_selection_on_parent(client, parent, sel.summary())
        if register and selected is not None:
            name = _group_name(experiment, sel)
            version = register_checkpoint(client, selected, name, alias)
            text.append(f"registered models:/{name}@{alias} (version {version.version}) -> run {selected}")
        blocks.append("\n".join(text))
    return "\n\n".join(blocks)


def pareto_summary(experiment: str, tracking_uri: str | None = None) -> str:
    """What ``mcel search`` prints at the end: the default selection per group, with tags written."""
    try:
        return pareto_command(experiment, tracking_uri=tracking_uri)
    except ValueError as exc:
        return f"no Pareto summary: {exc}"


def _summary_json(client: MlflowClient, run_id: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "summary.json", tmp)
        except Exception:
            return {}
        return json.loads(Path(path).read_text())


#: Summary keys that hold an accuracy (fractions in Selection.summary) and those that hold a BER.
_ACCURACY_KEYS = {
    "clean_acc",
    "clean_acc_std",
    "ber_acc",
    "ber_acc_std",
    "baseline_clean_acc",
    "baseline_clean_acc_std",
    "baseline_ber_acc",
    "baseline_ber_acc_std",
}
_BER_KEYS = {"tolerable_ber", "baseline_tolerable_ber", "target_ber"}


def human_summary(summary: dict) -> dict:
    """The report's copy of ``Selection.summary()``: accuracies and BERs in percent, gains in points, NaN
    left out (the summary itself, for MLflow and the API, stays in fractions)."""
    out: dict = {}
    for k, v in summary.items():
        if isinstance(v, float) and math.isnan(v):
            continue
        if k in _ACCURACY_KEYS and isinstance(v, int | float):
            out[k] = f"{100 * v:.2f}%"
        elif k in _BER_KEYS and isinstance(v, int | float):
            out[k] = f"{100 * v:.3g}%"
        elif k in ("gain_mean", "gain_low", "gain_high") and isinstance(v, int | float):
            out[k] = f"{v:+.2f} points"
        elif k == "confidence" and isinstance(v, int | float):
            out[k] = f"{100 * v:g}%"
        else:
            out[k] = v
    return out


def human_front(front: pd.DataFrame, ber: float) -> pd.DataFrame:
    """The report's Pareto-front table: accuracies and the tolerable BER in percent, headers with units."""
    out = front.copy()
    for c in ("clean_acc", "ber_acc", "ber_acc_std", "tolerable_ber"):
        if c in out:
            out[c] = 100 * out[c]
    return out.rename(
        columns={
            "clean_acc": "clean %",
            "ber_acc": f"acc at BER {100 * ber:g}% (%)",
            "ber_acc_std": "std (points)",
            "tolerable_ber": "tolerable BER %",
        }
    )


def report_command(
    experiment: str, out_dir: str | os.PathLike, *, tracking_uri: str | None = None, **kwargs: Any
) -> Path:
    """Write ``out_dir/report.md`` with, per group, the selection summary, the front table and four figures
    (accuracy vs BER of the CEL baseline and the selected point, the Pareto scatter, MLM per epoch, test-set
    margins); the figures are also logged to the group's parent run under ``figures/``."""
    from .plots import plot_ber_curves, plot_margins, plot_mlm, plot_pareto
    from .report import ReportSection, write_report

    client, uri = open_store(tracking_uri)
    df, sels, ber = selections(experiment, tracking_uri=uri, **kwargs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for sel in sels:
        name = _group_name(experiment, sel)
        fig_dir = child_path(out, name)  # names come from MLflow tags: never outside out_dir
        fig_dir.mkdir(parents=True, exist_ok=True)
        runs = _group_runs(df, sel)
        chosen = [r for r in (sel.baseline, sel.row) if r is not None]
        ids = [r["run_id"] for r in chosen]
        labels = {r["run_id"]: _label(r) for r in chosen}
        figures: dict[str, Path] = {}
        if ids:
            curves = pd.concat([ber_records(rid, tracking_uri=uri) for rid in ids], ignore_index=True)
            plot_ber_curves(
                curves, labels, fig_dir / "ber_curves.png", title=f"{name}: accuracy under bit errors"
            )
            figures["Accuracy vs BER (mean ± std over the shared realizations)"] = fig_dir / "ber_curves.png"
            hist = pd.concat(
                [
                    metric_history(rid, "mlm", tracking_uri=uri)
                    .rename(columns={"step": "epoch", "value": "mlm"})
                    .assign(run_id=rid)
                    for rid in ids
                ],
                ignore_index=True,
            )
            plot_mlm(hist, labels, fig_dir / "mlm.png", title=f"{name}: mean logit margin per epoch")
            figures["Mean logit margin per epoch"] = fig_dir / "mlm.png"
            margins = {rid: _summary_json(client, rid).get("margins", []) for rid in ids}
            plot_margins(margins, labels, fig_dir / "margins.png", title=f"{name}: test-set margins")
            figures["Test-set margins (top-1 minus top-2 logit)"] = fig_dir / "margins.png"
        plot_pareto(
            runs,
            sel.front["run_id"].tolist(),
            sel.baseline["run_id"] if sel.baseline is not None else None,
            sel.row["run_id"] if sel.row is not None else None,
            fig_dir / "pareto.png",
            title=f"{name}: clean accuracy vs accuracy at BER {100 * ber:g}%",
        )
        figures["Pareto front (clean accuracy vs accuracy under bit errors)"] = fig_dir / "pareto.png"
        parent = _parent_run(client, runs)
        if parent:
            for path in figures.values():
                client.log_artifact(parent, str(path), artifact_path="figures")
        front_cols = [
            c
            for c in (
                "run_id",
                "loss",
                "margin",
                "b",
                "logit_scale",
                "relative_separation",
                "clean_acc",
                "ber_acc",
                "ber_acc_std",
                "tolerable_ber",
            )
            if c in sel.front and not (c == "tolerable_ber" and sel.front[c].isna().all())
        ]
        sections.append(
            ReportSection(
                title=f"{sel.group.get('dataset')} / {sel.group.get('arch')} / {sel.group.get('bits')}-bit"
                f"{_protocol_suffix(sel)}",
                summary=human_summary(sel.summary()),
                front=human_front(sel.front[front_cols], ber),
                figures=figures,
                notes=[sel.verdict()],
            )
        )
    return write_report(out, sections, title=f"mcel report: {experiment}")


def _label(row: pd.Series) -> str:
    if row.get("role") == "baseline" or row.get("loss") == "cel":
        return "CEL baseline"
    return f"MCEL m={row.get('margin'):g} b={row.get('b'):g} s={row.get('logit_scale'):g}"


def _parent_run(client: MlflowClient, runs: pd.DataFrame) -> str | None:
    col = "tags.mlflow.parentRunId"
    if col in runs and runs[col].notna().any():
        return str(runs[col].dropna().iloc[0])
    return None
