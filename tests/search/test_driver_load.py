"""The driver under many concurrent trials: 64 logical trials (``benchmarks/load.py``: the real MLflow logger
and pruning scheduler, a real MLflow server on 127.0.0.1 and a SQLite Optuna study; the trials are result
schedules, since 64 Ray workers would not fit this machine) report fast enough that the server falls behind;
every reported epoch must reach MLflow exactly once, and MLflow, the pruning study and the run's own counts
must agree."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.load import run_load


@pytest.mark.parametrize(
    "coalesce", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["coalesced", "per-result"]
)
def test_64_trials_lose_no_metric_and_every_count_agrees(mlflow_server, tmp_path, coalesce) -> None:
    from mlflow.tracking import MlflowClient

    optuna_url = f"sqlite:///{tmp_path / 'optuna.db'}"
    name = f"load64-{'c' if coalesce else 'p'}"
    r = run_load(
        mlflow_server.uri,
        mlflow_server.root / "mlflow.db",
        optuna_url,
        trials=64,
        duration_s=8.0,
        ramp_s=1.0,
        interval_s=(0.05, 0.5),
        max_epochs=20,
        warmup_epochs=3,
        senders=3,
        coalesce=coalesce,
        name=name,
    )
    assert r.results > 600  # enough load that the server is behind for a while (about 70 calls/s here)
    assert r.lost == 0 and r.duplicated == 0, r
    assert r.extra["stored_trials"] == r.extra["reported_trials"] > 64
    assert r.extra["results_logged"] == r.results
    assert r.completed > 0 and r.pruned > 0  # both endings happened
    if coalesce:  # a trial's results that piled up while the server was behind went out together
        assert r.extra["log_batches"] < r.results
    else:
        assert r.extra["log_batches"] == r.results

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`mcel.role` = 'trial'")
    states = Counter(run.data.tags["mcel.state"] for run in runs)
    running_at_end = r.trials_started - r.completed - r.pruned
    assert states == Counter({"completed": r.completed, "pruned": r.pruned + running_at_end})
    # the pruning study, written behind the decisions, has every trial with the same ending
    study = optuna.load_study(study_name=f"{name}-pruning", storage=optuna_url)
    endings = Counter(t.state.name for t in study.get_trials())
    assert endings["COMPLETE"] == r.completed
    assert endings["PRUNED"] >= r.pruned  # pruned by the pruner, plus those stopped at the end
    assert sum(endings.values()) <= r.trials_started and "RUNNING" not in endings


def test_calls_needed_is_the_hand_worked_sum() -> None:
    from benchmarks.load import LIFECYCLE_CALLS, LoadResult, calls_needed

    fields = dict.fromkeys(LoadResult.__dataclass_fields__, 0)
    r = LoadResult(
        **{**fields, "config": "", "extra": {}, "concurrent": 1000, "trials_started": 1748, "wall_s": 60.0}
    )
    # 1,000 runs each written once per 5 s, and 1,748 trials started in 60 s with 3 calls each
    assert LIFECYCLE_CALLS == 3
    assert calls_needed(r, 5.0) == pytest.approx(200.0 + 3 * 1748 / 60)


def test_server_capacity_counts_the_calls_the_server_stored(mlflow_server) -> None:
    from mlflow.tracking import MlflowClient

    from benchmarks.load import server_capacity

    rate = server_capacity(mlflow_server.uri, seconds=1.5, warmup_s=0.0, runs=4, name="capacity-test")
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("capacity-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4
    # every call 9 metrics at a step of its own, into the 4 runs in turn
    histories = [client.get_metric_history(run.info.run_id, "m0") for run in runs]
    stored = sum(len(h) for h in histories)
    assert stored >= 4 and all(len(h) > 0 for h in histories)
    assert sorted(m.step for h in histories for m in h) == list(range(stored))
    assert all(
        len(client.get_metric_history(run.info.run_id, "m8")) == len(h)
        for run, h in zip(runs, histories, strict=True)
    )
    # the rate is the stored calls over the timed span: 1.5 s, plus at most the calls still in flight then
    assert 1.5 * 0.95 <= stored / rate <= 1.5 + 2.0
