"""``failure.checkpoint_every`` in a real search (local Ray, the MLflow server process): a trial reports every
epoch but leaves a checkpoint only every k epochs and at its last, and MLflow still has every epoch."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from mcel_search.core.checkpoint import read_checkpoint
from mcel_search.search.runner import run_search
from mcel_search.search.spec import parse_spec


def test_a_trial_checkpoints_every_k_epochs_and_logs_every_epoch(
    tmp_path, mlflow_server, local_ray, small_spec
) -> None:
    train = {**small_spec("x")["train"], "epochs": 4}
    spec = parse_spec(
        small_spec(
            "ckevery",
            trials_per_arch=1,
            concurrency=1,
            baseline={"enabled": False},
            train=train,
            failure={"checkpoint_every": 2},
        )
    )
    (study,) = run_search(spec).studies
    (result,) = list(study.grid)
    assert result.error is None and result.metrics["final"] is True
    # Tune keeps a trial's two newest checkpoints (num_to_keep=2): epochs 2 and 4 (every epoch: 3 and 4)
    trial_dir = result.path
    epochs = sorted(
        read_checkpoint(p)["metrics"]["epoch"]
        for p in (tmp_path / "ray").rglob("checkpoint_*/model.pt")
        if str(p).startswith(str(trial_dir))
    )
    assert epochs == [2, 4], epochs
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("ckevery")
    (run,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags["mcel.role"] == "trial"]
    assert run.data.tags["mcel.state"] == "completed"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "clean_acc")) == [1, 2, 3, 4]
    assert "model.pt" in {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "checkpoint")}
