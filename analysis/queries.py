"""Reading what searches wrote to MLflow: runs as DataFrames, per-realization accuracies, best checkpoints,
and writing back the Pareto / selection tags and Model Registry entries.

The layout read here is the one ``search/tracking.py`` writes (README "MLflow layout"). Accuracies are
fractions in [0, 1]. The default tracking URI is ``$MLFLOW_TRACKING_URI``, else the demo's local store
``sqlite:///mlflow.db`` in the working directory.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow.tracking import MlflowClient

from ..core.errors import BadInputError
from ..core.losses import relative_separation
from ..core.redact import redact_credentials
from .stats import mean_ci_halfwidth
from .stores import open_store

if TYPE_CHECKING:
    from .selection import Selection

CHECKPOINT_ARTIFACT = "checkpoint/model.pt"
#: Run tag of a finished trial's MLflow Model (``models:/<id>``, logged by ``search.pyfunc``).
MODEL_ID_TAG = "mcel.model_id"
CURVE_ARTIFACT = "ber_curve.csv"
NUMERIC_PARAMS = ("margin", "b", "mhl_margin", "logit_scale", "relative_separation")
KEY_METRICS = ("clean_acc", "ber_acc", "ber_acc_std", "ber_acc_min", "mlm", "train_loss", "tolerable_ber")


class ExperimentNotFoundError(BadInputError):
    """No MLflow experiment of that name at that tracking URI."""


def _experiment_id(client: MlflowClient, experiment: str, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        known = sorted(e.name for e in client.search_experiments())
        raise ExperimentNotFoundError(
            f"experiment={experiment!r} does not exist at {tracking_uri}: known experiments are "
            f"{', '.join(known) or 'none'}"
        )
    return exp.experiment_id


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def runs_frame(
    experiment: str,
    *,
    tracking_uri: str | None = None,
    filters: Mapping[str, str] | None = None,
    filter_string: str | None = None,
    include_parents: bool = False,
) -> pd.DataFrame:
    """One row per run of ``experiment``: ``params.*``, ``metrics.*``, ``tags.*`` columns as MLflow gives
    them, plus the convenience columns the analysis uses: ``run_id``, ``run_name``, ``role``, ``state``,
    ``study``, ``dataset``, ``arch``, ``bits`` (int), ``loss``, ``margin``, ``b``, ``logit_scale``,
    ``relative_separation`` (floats, NaN where not applicable), ``clean_acc``, ``ber_acc``, ``ber_acc_std``...

    ``filters`` are tag equalities (e.g. ``{"arch": "vgg3", "bits": "4"}``); ``filter_string`` is any MLflow
    search filter, ANDed with them. Parent runs are left out unless ``include_parents``.
    """
    client, uri = open_store(tracking_uri)
    exp_id = _experiment_id(client, experiment, uri)
    clauses = [f"tags.`{k}` = '{v}'" for k, v in (filters or {}).items()]
    if filter_string:
        clauses.append(f"({filter_string})" if " or " in filter_string.lower() else filter_string)
    runs = []
    token = None
    while True:
        page = client.search_runs(
            [exp_id], filter_string=" and ".join(clauses), max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    rows = []
    for run in runs:
        tags = run.data.tags
        if tags.get("mcel.role") == "parent" and not include_parents:
            continue
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "role": tags.get("mcel.role"),
            "state": tags.get("mcel.state"),
            "study": tags.get("mcel.study"),
            "dataset": tags.get("dataset"),
            # the error model the run was trained and evaluated under (core.protocol); runs written before
            # protocols existed used ours
            "protocol": tags.get("mcel.protocol", "default"),
            "arch": tags.get("arch"),
            "bits": int(tags["bits"]) if tags.get("bits", "").isdigit() else None,
            "loss": tags.get("loss") or run.data.params.get("loss"),
            "optuna_number": int(tags["mcel.optuna_number"]) if "mcel.optuna_number" in tags else None,
        }
        for p in NUMERIC_PARAMS:
            row[p] = _float(run.data.params.get(p))
        for m in KEY_METRICS:
            row[m] = run.data.metrics.get(m, math.nan)
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in tags.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(
            columns=[
                "run_id",
                "role",
                "state",
                "dataset",
                "protocol",
                "arch",
                "bits",
                "loss",
                *NUMERIC_PARAMS,
                *KEY_METRICS,
                "ber_acc_ci",
            ]
        )
    # the 95% interval of the mean ber_acc over the objective's realizations: what tables and figures mark
    col = "params.objective.reps"
    reps = pd.to_numeric(df[col], errors="coerce") if col in df else pd.Series(math.nan, index=df.index)
    df["ber_acc_ci"] = [
        mean_ci_halfwidth(float(s), float(n)) for s, n in zip(df["ber_acc_std"], reps, strict=True)
    ]
    if df["relative_separation"].isna().any():
        derived = df.apply(lambda r: relative_separation({"margin": r["margin"], "b": r["b"]}), axis=1)
        df["relative_separation"] = df["relative_separation"].fillna(derived.astype(float))
    return df.sort_values(
        ["dataset", "arch", "bits", "role", "optuna_number"], na_position="first"
    ).reset_index(drop=True)


def ber_records(run_id: str, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """The run's ``ber_curve.csv``: one row per (ber, rep) with ``seed`` and ``accuracy``."""
    client, _ = open_store(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, CURVE_ARTIFACT, tmp)
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["run_id", "ber", "rep", "seed", "accuracy"])
    df = df.astype({"ber": float, "rep": int, "seed": int, "accuracy": float})
    df.insert(0, "run_id", run_id)
    return df


def realizations(run_id: str, ber: float, *, tracking_uri: str | None = None) -> list[float]:
    """Per-realization accuracies of ``run_id`` at ``ber``, ordered by repetition (for paired comparisons)."""
    df = ber_records(run_id, tracking_uri=tracking_uri)
    sel = df[(df["ber"] - ber).abs() <= 1e-12 * max(1.0, ber)].sort_values("rep")
    if sel.empty:
        raise BadInputError(
            f"run {run_id} has no BER curve point at {ber:g}: it has {sorted(df['ber'].unique())}"
        )
    return sel["accuracy"].tolist()


def metric_history(run_id: str, key: str, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """``step``, ``value`` of one metric of one run, ordered by step (last value per step)."""
    client, _ = open_store(tracking_uri)
    hist = client.get_metric_history(run_id, key)
    df = pd.DataFrame([{"step": m.step, "value": m.value, "timestamp": m.timestamp} for m in hist])
    if df.empty:
        return pd.DataFrame(columns=["step", "value"])
    return df.sort_values(["step", "timestamp"]).groupby("step", as_index=False).last()[["step", "value"]]


def checkpoint_uri(run_id: str) -> str:
    """The ``runs:/`` URI of a trial's model checkpoint (``mcel evaluate`` and ``mcel best`` take it)."""
    return f"runs:/{run_id}/{CHECKPOINT_ARTIFACT}"


def selections(
    experiment: str,
    *,
    tracking_uri: str | None = None,
    arch: str | None = None,
    bits: int | None = None,
    rule: str = "constraint",
    max_clean_drop: float = 1.0,
    weights: Mapping[str, float] | None = None,
    target_ber: float | None = None,
) -> tuple[pd.DataFrame, list[Selection], float]:
    """The runs table, one :class:`~analysis.selection.Selection` per (dataset, arch, bits) (paired gains
    from the runs' BER curves at the target BER), and the target BER used (default: the spec's)."""
    from .selection import select_all

    filters: dict[str, str] = {}
    if arch:
        filters["arch"] = arch
    if bits is not None:
        filters["bits"] = str(bits)
    df = runs_frame(experiment, tracking_uri=tracking_uri, filters=filters)
    if df.empty:
        raise BadInputError(f"experiment {experiment!r} has no trial runs matching {filters or 'any'}")
    ber = target_ber if target_ber is not None else _target_ber(df)
    sels = select_all(
        df,
        rule=rule,
        max_clean_drop=max_clean_drop,
        weights=weights,
        realizations=lambda rid: realizations(rid, ber, tracking_uri=tracking_uri),
        target_ber=ber,
    )
    return df, sels, ber


def best_checkpoints(experiment: str, *, tracking_uri: str | None = None, **kwargs: Any) -> pd.DataFrame:
    """Per (dataset, arch, bits) the selected trial (``analysis.selection`` rule; ``kwargs`` as
    :func:`selections`): run id, metrics, the paired gain over the CEL baseline and the checkpoint URI.
    Empty when no trial was selected."""
    _, sels, _ = selections(experiment, tracking_uri=tracking_uri, **kwargs)
    rows = [
        {**sel.summary(), "run_id": sel.row["run_id"], "checkpoint_uri": checkpoint_uri(sel.row["run_id"])}
        for sel in sels
        if sel.row is not None
    ]
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "arch", "bits", "checkpoint_uri"])


def _target_ber(df: pd.DataFrame) -> float:
    col = "params.objective.target_ber"
    if col in df and df[col].notna().any():
        return float(df[col].dropna().iloc[0])
    return 0.01


def tag_front_and_selection(
    client: MlflowClient, run_ids: Sequence[str], front_ids: Sequence[str], selected_id: str | None
) -> None:
    """Tag ``mcel.pareto`` (true/false) on every run of a group and ``mcel.selected`` on the chosen one (others
    false, so re-running with another rule moves the tag)."""
    front = set(front_ids)
    for rid in run_ids:
        client.set_tag(rid, "mcel.pareto", "true" if rid in front else "false")
        client.set_tag(rid, "mcel.selected", "true" if rid == selected_id else "false")


#: The Selection.summary() fields logged as metrics of a group's parent run (accuracies are fractions, the
#: gain in points), so that the parent shows the selected point and the baseline next to each other.
PARENT_SELECTION_METRICS = {
    "clean_acc": "selected_clean_acc",
    "ber_acc": "selected_ber_acc",
    "tolerable_ber": "selected_tolerable_ber",
    "baseline_clean_acc": "baseline_clean_acc",
    "baseline_ber_acc": "baseline_ber_acc",
    "baseline_tolerable_ber": "baseline_tolerable_ber",
    "gain_mean": "gain_points",
    "gain_low": "gain_points_ci_low",
    "gain_high": "gain_points_ci_high",
}


def record_selection_on_parent(client: MlflowClient, parent_run_id: str, summary: Mapping[str, Any]) -> None:
    """Log a group's selection (``Selection.summary()``) on its parent run: the metrics of
    :data:`PARENT_SELECTION_METRICS` (NaN ones left out) and tags ``mcel.selected_run_id``,
    ``mcel.selection_rule`` and ``mcel.verdict``."""
    from mlflow.entities import Metric, RunTag

    ts = int(time.time() * 1000)
    metrics = [
        Metric(name, float(summary[key]), ts, 0)
        for key, name in PARENT_SELECTION_METRICS.items()
        if isinstance(summary.get(key), int | float) and math.isfinite(float(summary[key]))
    ]
    tags = [
        RunTag("mcel.selected_run_id", str(summary.get("run_id") or "none")),
        RunTag("mcel.selection_rule", str(summary.get("rule"))),
        RunTag("mcel.verdict", str(summary.get("verdict", ""))[:5000]),
    ]
    client.log_batch(parent_run_id, metrics=metrics, tags=tags)


def register_checkpoint(client: MlflowClient, run_id: str, name: str, alias: str = "champion") -> Any:
    """Register the run's MLflow Model (``models:/<id>`` of its ``mcel.model_id`` tag: loads with
    ``mlflow.pyfunc.load_model``, holds the checkpoint) as a new version of registered model ``name`` and
    point ``alias`` at it; runs logged before trial models existed register ``runs:/<run_id>/checkpoint``.
    Returns the ModelVersion."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="MCEL model selected by mcel pareto")
    model_id = client.get_run(run_id).data.tags.get(MODEL_ID_TAG)
    if model_id:
        version = client.create_model_version(
            name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id
        )
    else:
        version = client.create_model_version(name, source=f"runs:/{run_id}/checkpoint", run_id=run_id)
    client.set_registered_model_alias(name, alias, version.version)
    return version


def download_checkpoint(uri: str, dst: str | os.PathLike, *, tracking_uri: str | None = None) -> Path:
    """Download a ``runs:/...`` or ``models:/...`` checkpoint URI into ``dst``; returns the ``model.pt`` path."""
    import mlflow
    from mlflow.exceptions import MlflowException

    _, store = open_store(tracking_uri)  # a store that exists and answers, or one line
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(store)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as exc:  # an unknown run id, model, version or alias
        first = " ".join(str(exc).split("\n")[0].split())[:300]
        raise BadInputError(
            f"checkpoint: {uri!r} — not found at {redact_credentials(store)!r} ({first}); allowed: "
            "runs:/<run id>/checkpoint/model.pt or models:/<name>@<alias> of that tracking store"
        ) from None
    if local.is_dir():
        found = sorted(local.rglob("model.pt"))
        if not found:
            raise FileNotFoundError(f"{uri} holds no model.pt (downloaded to {local})")
        return found[0]
    return local
