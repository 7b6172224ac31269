"""Faults during a real search: a worker node lost mid-search, a trial whose loss becomes NaN, a trial that
raises once, the MLflow server restarted mid-search, a full disk.

Faults are injected through ``MCEL_FAULT_INJECT`` (``search.faults``), real product code that is inert
unless the variable is set; the searches are real (local Ray, Optuna RDB, a real MLflow server).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from mcel_search.core.checkpoint import read_checkpoint
from mcel_search.search.runner import StorageFaultError, run_search
from mcel_search.search.spec import parse_spec

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


def test_worker_node_lost_mid_search_trials_resume_on_the_other(
    tmp_path, mlflow_server, small_spec, monkeypatch
) -> None:
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("MCEL_FAKE_GPUS", "1")  # the nodes' GPUs are labels (inherited by their raylets)
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


def _assert_counted_once(client: MlflowClient, name: str, storage: Path, trials: int, epochs: int) -> list:
    """Every trial once in MLflow (completed, every epoch exactly once, final BER curve) and in Optuna."""
    runs = _runs(client, name)
    keys = [r.data.tags["mcel.trial_key"] for r in runs]
    assert len(keys) == len(set(keys)) == trials, sorted(keys)
    for r in runs:
        assert r.data.tags["mcel.state"] == "completed" and r.info.status == "FINISHED", r.data.tags
        for key in ("train_loss", "clean_acc", "epoch"):
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, key))
            assert steps == list(range(1, epochs + 1)), (key, steps)  # no gap, no duplicate
        assert "ber_acc_at_0.01" in r.data.metrics  # the final BER curve reached MLflow
    study = optuna.load_study(
        study_name=f"{name}-small_cnn-4b", storage=f"sqlite:///{storage / name / 'optuna.db'}"
    )
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * trials
    assert sorted(int(r.data.tags["mcel.optuna_number"]) for r in runs) == list(range(trials))
    return runs


def test_trial_raising_once_is_retried_from_its_checkpoint_in_the_same_run(
    tmp_path, mlflow_server, small_spec, monkeypatch
) -> None:
    """``raise_once:epoch=3``: each trial raises at the start of epoch 3 on its first attempt; Tune retries it
    (failure.max_retries) from its epoch-2 checkpoint and it completes in the same MLflow run."""
    import ray

    epochs = 3
    monkeypatch.setenv("MCEL_FAULT_INJECT", "raise_once:epoch=3")
    spec = parse_spec(
        small_spec(
            "raiseonce",
            train={"epochs": epochs, "batch_size": 64, "step_size": 2, "device": "cpu"},
            trials_per_arch=2,
            failure={"max_retries": 2},
        )
    )
    if ray.is_initialized():
        ray.shutdown()
    try:
        run_search(spec, num_cpus=2, verbose=0)
    finally:
        ray.shutdown()
    client = MlflowClient(mlflow_server.uri)
    runs = _assert_counted_once(client, "raiseonce", tmp_path / "ray", trials=2, epochs=epochs)
    for r in runs:  # the retry started from the checkpoint of epoch 2, not from scratch
        assert r.data.tags["mcel.resumed_from_epoch"] == "2", r.data.tags
    markers = list(
        (tmp_path / "ray" / "raiseonce-small_cnn-4b").glob("trial_*/.mcel-fault-raise_once-epoch3")
    )
    assert len(markers) == 2  # the fault really fired once in each trial


def test_mlflow_server_restarted_mid_search_loses_nothing(
    tmp_path, own_mlflow_server, local_ray, small_spec, caplog
) -> None:
    """Chosen behaviour: **buffer and retry**. The tracking server is stopped after the first epochs are
    logged, kept down while trials report, and restarted on the same port with the same backend store;
    the driver buffers the MLflow calls meanwhile and flushes them in order when the server is back.
    Every epoch of every trial is in MLflow exactly once and the final tags are set."""
    server = own_mlflow_server
    server.start()
    epochs = 6  # the outage starts after epoch 1: five epochs of room on a slow or loaded machine
    spec_dict = small_spec(
        "blink",
        train={"epochs": epochs, "batch_size": 64, "step_size": 2, "device": "cpu"},
        trials_per_arch=2,
    )
    spec_dict["tracking"] = {"uri": server.uri, "experiment": "blink"}
    spec = parse_spec(spec_dict)
    outage: dict = {}

    def blink() -> None:
        client = MlflowClient(server.uri)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                epochs_seen = [r.data.metrics.get("epoch", 0) for r in _runs(client, "blink")]
            except Exception:
                epochs_seen = []
            if epochs_seen and max(epochs_seen) >= 1:
                outage["at_epoch"] = max(epochs_seen)
                server.stop()
                outage["down"] = time.monotonic()
                time.sleep(5)  # trials go on reporting while the server is down
                server.start()
                outage["up"] = time.monotonic()
                return
            time.sleep(0.3)

    caplog.set_level(logging.WARNING, logger="mcel_search.search.sender")
    thread = threading.Thread(target=blink, daemon=True)
    thread.start()
    run_search(spec, verbose=0)
    thread.join(timeout=120)
    assert "up" in outage, f"the server was never restarted: {outage}"
    assert outage["at_epoch"] < epochs, "the search ended before the outage: nothing was tested"
    messages = [r.getMessage() for r in caplog.records if r.name == "mcel_search.search.sender"]
    assert any("unreachable" in m and "buffering" in m for m in messages), messages
    assert any("back after" in m for m in messages), messages
    client = MlflowClient(server.uri)
    _assert_counted_once(client, "blink", tmp_path / "ray", trials=2, epochs=epochs)


def test_disk_full_stops_the_search_and_resume_finishes_it(
    tmp_path, mlflow_server, small_spec, monkeypatch
) -> None:
    """``enospc:epoch=2``: every checkpoint write of epoch 2 fails with ENOSPC (through atomic_write) while
    the "disk is full". Chosen behaviour: the driver stops the whole search at the first such failure with
    one line naming the errno and the path and telling the user to free space and rerun with --resume (no
    retries: they would fail the same); nothing is half-written; ``--resume`` with space back finishes
    every trial, each counted once in Tune, Optuna and MLflow."""
    import ray

    epochs = 3
    storage = tmp_path / "ray"
    spec = parse_spec(
        small_spec(
            "diskfull",
            train={"epochs": epochs, "batch_size": 64, "step_size": 2, "device": "cpu"},
            trials_per_arch=2,
            failure={"max_retries": 2},
        )
    )
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("MCEL_FAULT_INJECT", "enospc:epoch=2")
    try:
        with pytest.raises(StorageFaultError) as info:
            run_search(spec, num_cpus=2, verbose=0)
    finally:
        ray.shutdown()
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "[Errno 28] No space left on device" in message and "model.pt" in message, message
    assert "free space" in message and "--resume" in message
    assert not list(storage.rglob(".model.pt.*.tmp")), "a temporary checkpoint file was left behind"
    checkpoints = list(storage.rglob("model.pt"))
    assert checkpoints, "no epoch-1 checkpoint: the fault fired too early to test resuming"
    for path in checkpoints:  # every checkpoint that exists is whole, and none is of the failed epoch
        assert read_checkpoint(path)["metrics"]["epoch"] == 1
    client = MlflowClient(mlflow_server.uri)
    before = _runs(client, "diskfull")
    assert before and all(r.data.tags["mcel.state"] == "running" for r in before)  # not errored: resumable

    try:  # --resume while the disk is still full: stopped the same way (the restored run's guard)
        with pytest.raises(StorageFaultError, match=r"\[Errno 28\].*--resume"):
            run_search(spec, resume=True, num_cpus=2, verbose=0)
    finally:
        ray.shutdown()
    monkeypatch.delenv("MCEL_FAULT_INJECT")  # space freed
    try:
        outcome = run_search(spec, resume=True, num_cpus=2, verbose=0)
    finally:
        ray.shutdown()
    runs = _assert_counted_once(client, "diskfull", storage, trials=2, epochs=epochs)
    assert {r.info.run_id for r in before} <= {r.info.run_id for r in runs}  # the same runs, continued
    states = [t["state"] for s in outcome.studies for t in s.trials]
    assert states == ["completed", "completed"]
