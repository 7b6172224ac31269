"""A real search under `protocol: paper`: every run says which protocol it used (MLflow params and tag),
its checkpoint records it, the Pareto output names it, and `mcel sensitivity` logs a map into a trial run."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mcel_search.analysis.workflow import pareto_command
from mcel_search.core.checkpoint import read_checkpoint
from mcel_search.core.protocol import PAPER
from mcel_search.search.runner import run_search
from mcel_search.search.spec import parse_spec

pytestmark = pytest.mark.slow


def test_a_paper_protocol_search_records_its_protocol_everywhere(
    tmp_path, mlflow_server, local_ray, small_spec
):
    spec = parse_spec(
        small_spec("paper-search", protocol="paper", trials_per_arch=2, baseline={"enabled": True})
    )
    assert spec.train.lr == 1e-4 and spec.train.step_size == 2  # the preset's lr, the spec's step size
    run_search(spec, verbose=0)
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("paper-search")
    runs = client.search_runs([exp.experiment_id])
    roles = sorted(r.data.tags["mcel.role"] for r in runs)
    assert roles == ["baseline", "parent", "trial", "trial"]
    for r in runs:
        assert r.data.tags["mcel.protocol"] == "paper"
        if r.data.tags["mcel.role"] == "parent":
            continue
        params = r.data.params
        assert params["protocol.preset"] == "paper" and params["protocol.output_bias"] == "faulty"
        assert params["protocol.decode"] == "reestimated" and params["train.lr"] == "0.0001"
        assert r.data.tags["mcel.state"] == "completed"
    trial = next(r for r in runs if r.data.tags["mcel.role"] == "trial")
    local = mlflow.artifacts.download_artifacts(
        run_id=trial.info.run_id,
        artifact_path="checkpoint/model.pt",
        dst_path=str(tmp_path / "ckpt"),
        tracking_uri=mlflow_server.uri,
    )
    payload = read_checkpoint(local)
    assert payload["protocol"] == PAPER.to_dict() and payload["model"]["conv_bias"] == "faulty"
    text = pareto_command("paper-search", tracking_uri=mlflow_server.uri, tag=False)
    assert "== digits small_cnn 4-bit, protocol paper ==" in text
    # the selected model's sensitivity map into its own run
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcel_search.search.cli",
            "sensitivity",
            f"runs:/{trial.info.run_id}/checkpoint/model.pt",
            "--ber",
            "0.05",
            "--reps",
            "2",
            "--tracking-uri",
            mlflow_server.uri,
            "--log-to",
            trial.info.run_id,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    metrics = client.get_run(trial.info.run_id).data.metrics
    assert "sensitivity.features.0.0.bias.drop" in metrics and "sensitivity.head.2.weight.ci_low" in metrics
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcel_search.search.cli",
            "sensitivity",
            local,
            "--ber",
            "0.05",
            "--tracking-uri",
            mlflow_server.uri,
            "--log-to",
            "0" * 32,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode == 2 and "--log-to" in missing.stderr
    # the same as a search option: the selected model's map, logged into the selected run
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcel_search.search.cli",
            "pareto",
            "paper-search",
            "--tracking-uri",
            mlflow_server.uri,
            "--sensitivity",
            "0.05",
            "--sensitivity-reps",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "== sensitivity of the selected digits small_cnn 4-bit model ==" in proc.stdout
    logged = [ln.split()[-1] for ln in proc.stdout.splitlines() if ln.startswith("logged 8 tensors")]
    assert len(logged) == 1
    assert "sensitivity.head.1.0.bias.worst" in client.get_run(logged[0]).data.metrics
