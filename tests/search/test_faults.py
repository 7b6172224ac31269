"""Faults during a real search: a worker node lost mid-search, a trial whose loss becomes NaN."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from search.runner import run_search
from search.spec import parse_spec

pytestmark = pytest.mark.slow


def _runs(client: MlflowClient, name: str) -> list:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mcel.role") == "trial"]


def test_nan_trial_ends_errored_with_reason_and_search_goes_on(
    tmp_path, mlflow_server, local_ray, small_spec
) -> None:
    # logit_scale 1e39 overflows float32 to inf: the loss is NaN in the first epoch.
    spec = parse_spec(
        small_spec(
            "nan",
            space={"margin": 2.0, "b": 4.0, "logit_scale": {"choice": [1.0, 1e39]}},
            trials_per_arch=5,
        )
    )
    run_search(spec, verbose=0)
    client = MlflowClient(mlflow_server.uri)
    runs = _runs(client, "nan")
    assert len(runs) == 5
    bad = [r for r in runs if float(r.data.params["logit_scale"]) > 1e30]
    good = [r for r in runs if float(r.data.params["logit_scale"]) == 1.0]
    assert bad and good, "precondition: the sampler drew both scales"
    for r in bad:
        assert r.data.tags["mcel.state"] == "errored" and r.info.status == "FAILED"
        assert "nan" in r.data.tags["mcel.error"] and "epoch 1" in r.data.tags["mcel.error"]
    for r in good:
        assert r.data.tags["mcel.state"] == "completed"
    study = optuna.load_study(
        study_name="nan-small_cnn-4b", storage=f"sqlite:///{tmp_path / 'ray' / 'nan' / 'optuna.db'}"
    )
    states = {t.number: t.state for t in study.trials}
    for r in runs:
        expected = optuna.trial.TrialState.FAIL if r in bad else optuna.trial.TrialState.COMPLETE
        assert states[int(r.data.tags["mcel.optuna_number"])] == expected


def test_worker_node_lost_mid_search_trials_resume_on_the_other(tmp_path, mlflow_server, small_spec) -> None:
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    doomed = cluster.add_node(num_cpus=2, num_gpus=1)
    survivor = cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    epochs = 20
    spec = parse_spec(
        small_spec(
            "lostnode",
            train={"epochs": epochs, "batch_size": 16, "step_size": 10, "device": "auto"},
            resources={"cpu": 0.5, "gpu": 0.5},
            concurrency=4,
            failure={"max_retries": 3},
        )
    )
    client = MlflowClient(mlflow_server.uri)
    removed: dict = {}

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for r in _runs(client, "lostnode"):
                if (
                    r.data.tags.get("mcel.node_id") == doomed.node_id
                    and 2 <= r.data.metrics.get("epoch", 0) < epochs - 3
                ):
                    removed["run"] = r.info.run_id
                    removed["epoch"] = r.data.metrics["epoch"]
                    cluster.remove_node(doomed)
                    return
            time.sleep(0.2)

    ray.init(address=cluster.address)
    try:
        killer = threading.Thread(target=kill_when_busy, daemon=True)
        killer.start()
        run_search(spec, ray_address=cluster.address, verbose=0)
        killer.join(timeout=5)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert removed, "the worker was never seen busy: nothing was tested"
    runs = _runs(client, "lostnode")
    assert len(runs) == 4 and all(r.data.tags["mcel.state"] == "completed" for r in runs)
    victim = client.get_run(removed["run"])
    assert victim.data.tags["mcel.node_id"] == survivor.node_id  # finished on the other worker
    assert int(victim.data.tags["mcel.resumed_from_epoch"]) >= 1  # from its last checkpoint, not from scratch
    for r in runs:  # every epoch logged exactly once, in the same run
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "train_loss"))
        assert steps == list(range(1, epochs + 1)), steps
    study = optuna.load_study(
        study_name="lostnode-small_cnn-4b", storage=f"sqlite:///{tmp_path / 'ray' / 'lostnode' / 'optuna.db'}"
    )
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
