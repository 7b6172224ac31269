"""Real searches: local Ray, a real MLflow tracking server process on 127.0.0.1, real Optuna studies.

Small model (small_cnn on digits), few epochs, so each search takes well under a minute on 2 cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from mcel_search.core.checkpoint import load_checkpoint
from mcel_search.search.runner import run_search
from mcel_search.search.spec import parse_spec

pytestmark = pytest.mark.slow


# Overrides of the shared small spec (tests/conftest.py) used by the searches in this file.
E2E = {
    "space": {"margin": {"choice": [1, 2, 4]}, "b": {"choice": [4.0, 8.0]}},
    "objective": {"target_ber": 0.01, "reps": 3},
    "sweep": {"bers": [0.0, 0.01, 0.05], "reps": 3},
    "trials_per_arch": 6,
    "sampler": {"name": "random", "seed": 1},
    "baseline": {"enabled": True},
}


def e2e_spec(small_spec, name: str, **over) -> dict:
    return small_spec(name, **{**E2E, **over})


_TUNE_FILES = {"result.json", "progress.csv"}


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def child_runs(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mcel.role") != "parent"]


def test_search_tracks_every_trial_in_mlflow_and_optuna(
    tmp_path, mlflow_server, local_ray, small_spec, tune_analysis_messages
) -> None:
    spec = parse_spec(e2e_spec(small_spec, "e2e"))
    outcome = run_search(spec, verbose=0)
    # Tune's per-trial result.json/progress.csv are off (MLflow holds the metrics): no files, no warning
    trial_dirs = [p for p in (tmp_path / "ray").rglob("trial_*") if p.is_dir()]
    assert trial_dirs and not [p for d in trial_dirs for p in d.glob("*") if p.name in _TUNE_FILES]
    assert not [m for m in tune_analysis_messages if "fetch metrics" in m], tune_analysis_messages
    client = MlflowClient(mlflow_server.uri)
    runs = child_runs(client, "e2e")
    trials = [r for r in runs if r.data.tags["mcel.role"] == "trial"]
    baselines = [r for r in runs if r.data.tags["mcel.role"] == "baseline"]
    assert len(trials) == 6 and len(baselines) == 1
    parent = client.search_runs([outcome.experiment_id], filter_string="tags.`mcel.role` = 'parent'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    # the MLflow UI opens the experiment on its runs (a model-training experiment, not GenAI traces)
    assert (
        client.get_experiment(outcome.experiment_id).tags["mlflow.experimentKind"]
        == "custom_model_development"
    )
    # the study's Optuna objectives are named, the pruner's own study says it is internal
    study_names = {s.study_name: s for s in optuna.get_all_study_summaries(outcome.studies[0].optuna_storage)}
    assert study_names["e2e-small_cnn-4b"].user_attrs.get("mcel.role") == "search"
    assert study_names["e2e-small_cnn-4b-pruning"].user_attrs.get("mcel.role", "").startswith("internal")
    study = optuna.load_study(
        study_name="e2e-small_cnn-4b",
        storage=spec.optuna_storage()
        if spec.storage.optuna
        else f"sqlite:///{tmp_path / 'ray' / 'e2e' / 'optuna.db'}",
    )
    by_number = {t.number: t for t in study.trials}
    assert sorted(by_number) == list(range(6))
    for run in runs:
        tags, params = run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert tags["arch"] == "small_cnn" and tags["bits"] == "4" and tags["dataset"] == "digits"
        assert tags["mcel.state"] == "completed"
        assert params["train.epochs"] == "3" and "loss" in params
        hist = client.get_metric_history(run.info.run_id, "clean_acc")
        assert sorted(m.step for m in hist) == [1, 2, 3]
        for name in ("train_loss", "mlm", "ber_acc", "ber_acc_std"):
            assert len(client.get_metric_history(run.info.run_id, name)) == 3, name
        # the search's cost inside the trial, cumulative up to the previous epoch: 0 at epoch 1, then growing
        wait = [
            m.value
            for m in sorted(client.get_metric_history(run.info.run_id, "search_wait_s"), key=lambda m: m.step)
        ]
        assert len(wait) == 3 and wait[0] == 0.0 and 0.0 < wait[1] <= wait[2] < 60.0, wait
        for ber in ("0", "0.01", "0.05"):
            assert f"ber_acc_at_{ber}" in run.data.metrics
        # the BER curve at 0 equals clean accuracy: same model, no flips.
        assert run.data.metrics["ber_acc_at_0"] == pytest.approx(run.data.metrics["clean_acc"])
        # the tolerable BER of every finished run (core.tolerance), consistent with its own curve: every grid
        # BER at or below it is within the tolerance (1 point) of clean, the first grid BER above it is not
        m = run.data.metrics
        tol, clean = m["tolerable_ber"], m["clean_acc"]
        assert m["tolerable_ber_ci_low"] <= tol <= m["tolerable_ber_ci_high"]
        grid = sorted(float(k.removeprefix("ber_acc_at_")) for k in m if k.startswith("ber_acc_at_"))
        within = [b for b in grid if 0 < b <= tol]
        assert all(m[f"ber_acc_at_{b:g}"] >= clean - 0.01 - 1e-12 for b in within), (tol, m)
        above = [b for b in grid if b > tol]
        if m["tolerable_ber_censored"] == 0.0:  # the first grid BER above it is the bracket's failing end
            assert above and m[f"ber_acc_at_{above[0]:g}"] < clean - 0.01, (tol, m)
        else:
            assert tol == max(grid)
        local = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id,
            artifact_path="checkpoint/model.pt",
            dst_path=str(tmp_path / run.info.run_id),
            tracking_uri=mlflow_server.uri,
        )
        model, payload = load_checkpoint(local)
        assert payload["model"]["name"] == "small_cnn" and payload["model"]["bits"] == 4
        assert isinstance(model(torch.zeros(1, 1, 8, 8)), torch.Tensor)
        if tags["mcel.role"] == "trial":
            t = by_number[int(tags["mcel.optuna_number"])]
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert t.values == pytest.approx([run.data.metrics["clean_acc"], run.data.metrics["ber_acc"]])
            assert float(params["margin"]) == t.params.get("margin", float(params["margin"]))
            assert float(params["relative_separation"]) == pytest.approx(
                float(params["margin"]) / (2 * float(params["b"]))
            )
        else:
            assert params["loss"] == "cel"
    # the parent run carries the selected point and the baseline (written by the summary mcel search prints)
    from mcel_search.analysis.workflow import pareto_summary

    pareto_summary("e2e", mlflow_server.uri)
    pm = client.get_run(parent[0].info.run_id).data
    selected = pm.tags["mcel.selected_run_id"]
    chosen = client.get_run(selected).data.metrics
    assert (
        pm.metrics["selected_ber_acc"] == chosen["ber_acc"]
        and pm.metrics["selected_clean_acc"] == chosen["clean_acc"]
    )
    assert pm.metrics["baseline_ber_acc"] == baselines[0].data.metrics["ber_acc"]
    assert pm.metrics["gain_points_ci_low"] <= pm.metrics["gain_points"] <= pm.metrics["gain_points_ci_high"]
    assert pm.tags["mcel.selection_rule"] == "constraint" and pm.tags["mcel.verdict"]
    # paired: the CEL baseline and every trial used the same error seeds (same seed list in the curve CSV).
    seeds = set()
    for run in runs:
        path = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id,
            artifact_path="ber_curve.csv",
            dst_path=str(tmp_path / ("c" + run.info.run_id)),
            tracking_uri=mlflow_server.uri,
        )
        rows = Path(path).read_text().splitlines()[1:]
        seeds.add(tuple(sorted({r.split(",")[2] for r in rows})))
        # the curve as the MLflow UI shows it: a figure and a table per finished trial
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"ber_curve.png", "ber_curve_table.json"} <= names, names
        assert client.get_logged_model(run.data.tags["mcel.model_id"]).source_run_id == run.info.run_id
        table = json.loads(
            Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run.info.run_id,
                    artifact_path="ber_curve_table.json",
                    dst_path=str(tmp_path / ("t" + run.info.run_id)),
                    tracking_uri=mlflow_server.uri,
                )
            ).read_text()
        )
        at = dict(zip(table["columns"], zip(*table["data"], strict=True), strict=True))
        for ber, mean in zip(at["ber"], at["mean_acc_pct"], strict=True):
            assert mean == pytest.approx(100 * run.data.metrics[f"ber_acc_at_{ber:g}"])
    assert len(seeds) == 1


def test_pruner_stops_trials_that_cannot_learn(tmp_path, mlflow_server, local_ray, small_spec) -> None:
    # b = 1e-6 saturates tanh for every logit the network produces: zero gradient, the model cannot learn,
    # and its clean accuracy stays at chance; the median pruner must stop those trials early. Every trial
    # that can learn has the same parameters and seeds, so the learners train identically: a learner is
    # never strictly below the median of the completed learners, and only the trials that cannot learn
    # are pruned (with two margins, a learner could fall below the other learners' median by noise).
    spec = parse_spec(
        e2e_spec(
            small_spec,
            "prune",
            space={"margin": 1.0, "b": {"choice": [1e-6, 4.0]}},
            train={"epochs": 5, "batch_size": 64, "step_size": 3, "device": "cpu"},
            trials_per_arch=8,
            concurrency=1,
            baseline={"enabled": False},
            # ber_acc every 2 epochs on the first 120 test images, the final epoch on all of them.
            objective={"target_ber": 0.01, "reps": 3, "every": 2, "subset": 120},
            # RandomSampler(seed=0) draws b = 4, 1e-6, 4, 4, 1e-6, 1e-6, ...: a learner completes first, so the
            # median pruner has a reference (checked below, so a changed sampler fails loudly, not silently).
            sampler={"name": "random", "seed": 0},
            pruner={"name": "median", "options": {"n_startup_trials": 1, "n_warmup_steps": 1}},
        )
    )
    run_search(spec, verbose=0)
    client = MlflowClient(mlflow_server.uri)
    runs = child_runs(client, "prune")
    assert len(runs) == 8
    study = optuna.load_study(
        study_name="prune-small_cnn-4b", storage=f"sqlite:///{tmp_path / 'ray' / 'prune' / 'optuna.db'}"
    )
    states = {t.number: t.state for t in study.trials}
    assert study.trials[0].params["b"] == 4.0, "precondition: the first trial must be one that can learn"
    pruned = [r for r in runs if r.data.tags["mcel.state"] == "pruned"]
    assert pruned, "no trial was pruned"
    for run in runs:
        number = int(run.data.tags["mcel.optuna_number"])
        epochs_run = max(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
        if run.data.tags["mcel.state"] == "pruned":
            assert states[number] == optuna.trial.TrialState.PRUNED
            assert epochs_run < 5
            assert float(run.data.params["b"]) == 1e-6  # only the trials that cannot learn
            assert "ber_acc_at_0.01" not in run.data.metrics
            assert run.info.status == "KILLED"  # stopped, not finished, in the MLflow UI
            assert "mcel.model_id" not in run.data.tags  # no MLflow Model for a trial that did not finish
        else:
            assert states[number] == optuna.trial.TrialState.COMPLETE and epochs_run == 5
            assert run.info.status == "FINISHED" and run.data.tags["mcel.model_id"].startswith("m-")
            rid = run.info.run_id
            assert _steps(client, rid, "ber_acc_sub120") == [2, 4] and _steps(client, rid, "ber_acc") == [5]
            assert _steps(client, rid, "clean_acc") == [1, 2, 3, 4, 5]
    # the learners were never pruned, and a pruned trial enters no Pareto front of the study.
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.best_trials)
    assert {r.data.params["b"] for r in runs if r.data.tags["mcel.state"] == "completed"} >= {"4.0"}


def test_driver_killed_then_resumed_counts_every_trial_once(tmp_path, mlflow_server, small_spec) -> None:
    spec = e2e_spec(small_spec, "resume", trials_per_arch=6, concurrency=1)
    spec["train"]["epochs"] = 4
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mcel_search.search.cli", "search", str(path), "--num-cpus", "2", "--quiet"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    client = MlflowClient(mlflow_server.uri)
    deadline = time.monotonic() + 240
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name("resume")
        if exp is not None:
            done = [
                r
                for r in child_runs(client, "resume")
                if r.data.tags.get("mcel.state") == "completed" and r.data.tags.get("mcel.role") == "trial"
            ]
            if len(done) >= 2:
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
                killed = True
                break
        time.sleep(0.5)
    proc.wait(timeout=60)
    assert killed, f"search ended before it could be killed: {proc.stdout.read().decode()[-3000:]}"
    before = child_runs(client, "resume")
    assert len([r for r in before if r.data.tags["mcel.role"] == "trial"]) < 7
    # without --resume the existing search is refused, nothing is touched
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    runs = child_runs(client, "resume")
    trials = [r for r in runs if r.data.tags["mcel.role"] == "trial"]
    keys = [r.data.tags["mcel.trial_key"] for r in trials]
    assert len(keys) == len(set(keys)) == 6, sorted(keys)
    assert len([r for r in runs if r.data.tags["mcel.role"] == "baseline"]) == 1
    assert all(r.data.tags["mcel.state"] == "completed" for r in runs)
    for r in runs:  # no epoch logged twice
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
        assert sorted(steps) == [1, 2, 3, 4], (r.data.tags["mcel.trial_key"], steps)
    study = optuna.load_study(
        study_name="resume-small_cnn-4b", storage=f"sqlite:///{tmp_path / 'ray' / 'resume' / 'optuna.db'}"
    )
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6
    assert sorted(int(r.data.tags["mcel.optuna_number"]) for r in trials) == sorted(
        t.number for t in complete
    )
    assert "resume-small_cnn-4b" in resumed.stdout and "6 completed" in resumed.stdout


def test_trials_run_on_both_worker_nodes_with_half_gpus(
    tmp_path, mlflow_server, small_spec, monkeypatch
) -> None:
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("MCEL_FAKE_GPUS", "1")  # the nodes' GPUs are labels (inherited by their raylets)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address)
        spec = parse_spec(
            e2e_spec(
                small_spec,
                "multinode",
                trials_per_arch=4,
                concurrency=4,
                resources={"cpu": 0.5, "gpu": 0.5},
                baseline={"enabled": False},
                train={"epochs": 4, "batch_size": 64, "step_size": 2, "device": "auto"},
            )
        )
        run_search(spec, ray_address=cluster.address, verbose=0)
        client = MlflowClient(mlflow_server.uri)
        runs = child_runs(client, "multinode")
        assert len(runs) == 4 and all(r.data.tags["mcel.state"] == "completed" for r in runs)
        used = {r.data.tags["mcel.node_id"] for r in runs}
        # what each trial trained on is recorded: the fake GPUs have no device, so the CPU
        assert {r.data.tags.get("mcel.device") for r in runs} == {"cpu"}
        worker_ids = {n.node_id for n in nodes}
        assert used == worker_ids, (used, worker_ids)  # both workers, never the head (0 CPUs)
        # ... and at once: some two trials on different workers overlapped in time.
        spans = [(r.data.tags["mcel.node_id"], r.info.start_time, r.info.end_time) for r in runs]
        assert any(a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for a in spans for b in spans), spans
    finally:
        ray.shutdown()
        cluster.shutdown()


def _mcel_search(
    spec: dict, tmp_path: Path, env: dict[str, str] | None = None, *extra: str
) -> subprocess.CompletedProcess:
    """``mcel search`` of ``spec`` (written to ``<tmp_path>/<name>.yaml``) as a user runs it."""
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cmd = [sys.executable, "-m", "mcel_search.search.cli", "search", str(path), "--num-cpus", "2", "--quiet"]
    cmd += extra
    return subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600)


def test_the_default_output_is_the_compact_view_without_noise(tmp_path, small_spec) -> None:
    """``mcel search`` as a user runs it (no --quiet), its output a log file (no terminal): one line per
    trial start and end and the study lines, never Ray's repeated status block, MLflow's per-model chatter
    or anything that looks like a traceback."""
    spec = small_spec("view", trials_per_arch=2, concurrency=2, train={"epochs": 2, "batch_size": 64})
    path = tmp_path / "view.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cmd = [sys.executable, "-m", "mcel_search.search.cli", "search", str(path), "--num-cpus", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for noise in (
        "== Status ==",
        "Downloading artifacts",
        "Validating input example",
        "type hints",
        "Traceback",
    ):
        assert noise not in out, (noise, out[-3000:])
    done = [line for line in proc.stderr.splitlines() if ": done after 2 epochs, clean " in line]
    assert len(done) == 2, proc.stderr[-3000:]  # the 2 trials (the small spec has no baseline)
    assert any(line.startswith("view-small_cnn-4b  2/2 done") for line in proc.stderr.splitlines())
    assert "\r" not in proc.stderr  # nothing redrawn in a log


def test_a_local_search_never_joins_another_ray_cluster(tmp_path, small_spec, unused_port) -> None:
    """A Ray cluster of another process runs on this machine and RAY_ADDRESS points at it (as on a login
    node): the local search starts a Ray of its own, so its trials run on a node of that one."""
    import psutil

    temp = Path(tempfile.mkdtemp(prefix="foreign-ray-", dir="/tmp"))
    port = unused_port()
    ray_bin = Path(sys.executable).with_name("ray")
    foreign = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            f"--temp-dir={temp}",
            "--include-dashboard=false",
        ],
        # token auth stated, not autodetected: a client connecting to an existing cluster enables it only
        # when it finds a token itself, which failed on this machine with ~/.ray/auth_token present
        env={**os.environ, "RAY_AUTH_MODE": "token"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        probe = "import ray; ray.init(address='auto'); print(ray.get_runtime_context().get_node_id())"
        deadline, node = time.monotonic() + 120, None
        while node is None and time.monotonic() < deadline:
            got = subprocess.run(
                [sys.executable, "-c", probe],
                env={**os.environ, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"},
                capture_output=True,
                text=True,
                timeout=120,
            )
            node = got.stdout.strip().splitlines()[-1] if got.returncode == 0 and got.stdout.strip() else None
            time.sleep(1 if node is None else 0)
        assert node, "the foreign Ray cluster did not start"
        spec = small_spec("foreign", trials_per_arch=2, concurrency=2, train={"epochs": 1, "batch_size": 64})
        proc = _mcel_search(spec, tmp_path, {"RAY_ADDRESS": address})
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        client = MlflowClient(spec["tracking"]["uri"])
        nodes = {r.data.tags.get("mcel.node_id") for r in child_runs(client, "foreign")}
        assert nodes and None not in nodes and node not in nodes, (node, nodes)
    finally:
        os.killpg(foreign.pid, signal.SIGTERM)
        foreign.wait(timeout=60)
        for p in psutil.process_iter(["cmdline"]):  # Ray's daemons of that cluster outlive `ray start`
            if str(temp) in " ".join(p.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    p.kill()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_search_where_every_trial_errored_exits_non_zero(tmp_path, small_spec) -> None:
    """Every trial raises at its first epoch and may not retry: the search ends, but with exit 4 and one
    line naming the study, its counts and the first error; never 0."""
    spec = small_spec(
        "allfail", trials_per_arch=2, train={"epochs": 2, "batch_size": 64}, failure={"max_retries": 0}
    )
    proc = _mcel_search(spec, tmp_path, {"MCEL_FAULT_INJECT": "raise_once:epoch=1"})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mcel: error:")]
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(errors) == 1 and "no trial completed" in errors[0], proc.stderr[-2000:]
    assert "allfail-small_cnn-4b (2 errored, 0 pruned)" in errors[0] and "InjectedFault" in errors[0], errors


def test_an_edited_search_under_the_same_name_but_new_storage_is_refused(tmp_path, small_spec) -> None:
    """The stale-results scenario: a search ran; the spec is edited and run again under the same name with a
    new storage.path. Its trials would get the old runs' trial keys and the old summary would be printed:
    it is refused in one line, before anything is created, and the old search resumes as it was."""
    first = small_spec("stale", trials_per_arch=2, train={"epochs": 1, "batch_size": 64})
    done = _mcel_search(first, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    client = MlflowClient(first["tracking"]["uri"])
    runs_before = sorted(r.info.run_id for r in child_runs(client, "stale"))

    edited = {
        **first,
        "space": {"margin": {"choice": [4.0, 8.0]}, "b": 16.0},
        "storage": {"path": str(tmp_path / "new")},
    }
    refused = _mcel_search(edited, tmp_path)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
    assert "tracking.experiment: 'stale'" in lines[0] and "already holds a search" in lines[0], lines
    assert not (tmp_path / "new").exists()  # nothing created for the refused search
    assert sorted(r.info.run_id for r in child_runs(client, "stale")) == runs_before

    again = _mcel_search(first, tmp_path, None, "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(r.info.run_id for r in child_runs(client, "stale")) == runs_before


def test_a_password_in_the_tracking_uri_is_in_no_output_and_no_file(tmp_path, small_spec) -> None:
    """The secret scan: a search tracked at http://alice:<password>@host prints the password nowhere and
    writes it into no file under the storage path (Tune pickles callbacks and searchers into tuner.pkl
    and its experiment state) and into no MLflow param or tag."""
    secret = "s3cr3t-pw-4711"
    spec = small_spec("secret", trials_per_arch=2, train={"epochs": 1, "batch_size": 64})
    clean_uri = spec["tracking"]["uri"]
    spec["tracking"]["uri"] = clean_uri.replace("http://", f"http://alice:{secret}@")
    proc = _mcel_search(spec, tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert secret not in proc.stdout + proc.stderr
    files = [p for p in (tmp_path / "ray").rglob("*") if p.is_file()]
    assert any(p.name == "tuner.pkl" for p in files), "the scan would see nothing"
    assert not [str(p) for p in files if secret.encode() in p.read_bytes()]
    client = MlflowClient(clean_uri)
    for run in child_runs(client, "secret") + client.search_runs(
        [client.get_experiment_by_name("secret").experiment_id]
    ):
        assert secret not in str(run.data.params) + str(run.data.tags)


class _Planted:
    """What an attacker with write access to the storage path would put in tuner.pkl."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_tuner_pkl_never_runs_on_resume(tmp_path, small_spec) -> None:
    """The storage path is not trusted: a tuner.pkl someone else wrote there is refused before Tune
    unpickles it, in one line, and its code does not run; the search's own state resumes."""
    import pickle

    spec = small_spec("planted", trials_per_arch=1, train={"epochs": 1, "batch_size": 64})
    done = _mcel_search(spec, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    again = _mcel_search(spec, tmp_path, None, "--resume")
    assert again.returncode == 0, again.stderr[-2000:]  # the driver's own state: resumes

    marker = tmp_path / "PWNED"
    tuner_pkl = tmp_path / "ray" / "planted-small_cnn-4b" / "tuner.pkl"
    tuner_pkl.write_bytes(pickle.dumps(_Planted(str(marker))))
    refused = _mcel_search(spec, tmp_path, None, "--resume")
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
    assert "tuner.pkl" in lines[0] and "MCEL_TRUST_STORAGE=1" in lines[0], lines
    assert not marker.exists(), "the planted pickle ran"
