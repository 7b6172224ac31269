"""Analysis against a real MLflow tracking server filled by a real short search (local Ray, Optuna)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from mcel_search.analysis.pareto import pareto_front
from mcel_search.analysis.queries import best_checkpoints, realizations, register_checkpoint, runs_frame
from mcel_search.analysis.workflow import pareto_command, report_command, selections
from mcel_search.core.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
EXPERIMENT = "analysis"


@pytest.fixture(scope="module")
def searched(tmp_path_factory, mlflow_server):
    import ray

    from mcel_search.search.runner import run_search
    from mcel_search.search.spec import parse_spec

    tmp = tmp_path_factory.mktemp("analysis-search")
    spec = parse_spec(
        {
            "name": EXPERIMENT,
            "dataset": "digits",
            "architectures": ["small_cnn"],
            "bits": [4],
            "losses": ["mcel"],
            "space": {"margin": {"choice": [0.5, 2.0, 8.0]}, "b": {"choice": [4.0, 16.0]}},
            "train": {"epochs": 3, "batch_size": 64, "step_size": 2, "device": "cpu"},
            "objective": {"target_ber": 0.02, "reps": 4, "seed": 3},
            "sweep": {"bers": [0.0, 0.01, 0.02], "reps": 4},
            "trials_per_arch": 5,
            "concurrency": 2,
            "sampler": {"name": "random", "seed": 2},
            "pruner": {"name": "none"},
            "tracking": {"uri": mlflow_server.uri},
            "storage": {"path": str(tmp / "ray")},
        }
    )
    if ray.is_initialized():
        ray.shutdown()
    from mcel_search.search.runner import _init_ray

    _init_ray(None, 2)  # the product's start of a local Ray: retried once on a slow machine
    try:
        run_search(spec, verbose=0)
    finally:
        ray.shutdown()
    return mlflow_server.uri, tmp


def test_runs_frame_returns_exactly_the_search_runs(searched) -> None:
    uri, _ = searched
    df = runs_frame(EXPERIMENT, tracking_uri=uri)
    assert len(df) == 6
    assert sorted(df["role"]) == ["baseline"] + ["trial"] * 5
    assert set(df["state"]) == {"completed"} and set(df["arch"]) == {"small_cnn"} and set(df["bits"]) == {4}
    assert sorted(df.loc[df.role == "trial", "optuna_number"]) == [0, 1, 2, 3, 4]
    trials = df[df.role == "trial"]
    assert np.allclose(trials["relative_separation"], trials["margin"] / (2 * trials["b"]))
    assert len(runs_frame(EXPERIMENT, tracking_uri=uri, filters={"mcel.role": "baseline"})) == 1
    assert runs_frame(EXPERIMENT, tracking_uri=uri, filters={"arch": "vgg3"}).empty
    parents = runs_frame(EXPERIMENT, tracking_uri=uri, include_parents=True)
    assert len(parents) == 7
    with pytest.raises(ValueError, match="experiment='nope' does not exist"):
        runs_frame("nope", tracking_uri=uri)


def test_realizations_are_paired_and_match_logged_mean(searched) -> None:
    uri, _ = searched
    df = runs_frame(EXPERIMENT, tracking_uri=uri)
    for _, row in df.iterrows():
        accs = realizations(row["run_id"], 0.02, tracking_uri=uri)
        assert len(accs) == 4
        assert np.mean(accs) == pytest.approx(row["ber_acc"])  # objective and curve use the same seeds
        assert np.mean(realizations(row["run_id"], 0.0, tracking_uri=uri)) == pytest.approx(row["clean_acc"])


def test_pareto_tags_and_registry(searched) -> None:
    uri, _ = searched
    text = pareto_command(EXPERIMENT, tracking_uri=uri, register=True, alias="champion")
    df, sels, ber = selections(EXPERIMENT, tracking_uri=uri)
    assert ber == 0.02 and len(sels) == 1
    sel = sels[0]
    expected_front = pareto_front(df[df.role == "trial"])
    assert set(sel.front["run_id"]) == set(expected_front["run_id"])
    client = MlflowClient(uri)
    tagged = runs_frame(EXPERIMENT, tracking_uri=uri)
    on_front = set(tagged.loc[tagged["tags.mcel.pareto"] == "true", "run_id"])
    assert on_front == set(sel.front["run_id"])
    selected = tagged.loc[tagged["tags.mcel.selected"] == "true", "run_id"].tolist()
    assert selected == [sel.row["run_id"]]
    version = client.get_model_version_by_alias(f"{EXPERIMENT}-small_cnn-4b", "champion")
    assert version.run_id == sel.row["run_id"]
    assert "registered models:/analysis-small_cnn-4b@champion" in text
    assert sel.gain is not None and sel.gain.n == 4
    base = realizations(sel.baseline["run_id"], 0.02, tracking_uri=uri)
    cand = realizations(sel.row["run_id"], 0.02, tracking_uri=uri)
    assert sel.gain.mean == pytest.approx(np.mean(np.array(cand) - np.array(base)))


def test_best_download_and_evaluate_from_uri(searched, tmp_path) -> None:
    uri, _ = searched
    best = best_checkpoints(EXPERIMENT, tracking_uri=uri, arch="small_cnn")
    assert (
        len(best) == 1
        and best.loc[0, "checkpoint_uri"] == f"runs:/{best.loc[0, 'run_id']}/checkpoint/model.pt"
    )
    cli = [sys.executable, "-m", "mcel_search.search.cli"]
    proc = subprocess.run(
        [*cli, "best", EXPERIMENT, "--arch", "small_cnn", "--tracking-uri", uri, "--download", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    files = list(tmp_path.rglob("model.pt"))
    assert len(files) == 1
    model, payload = load_checkpoint(files[0])
    assert payload["model"]["name"] == "small_cnn" and isinstance(
        model(torch.zeros(1, 1, 8, 8)), torch.Tensor
    )
    ev = subprocess.run(
        [*cli, "evaluate", str(files[0]), "--bers", "0", "--reps", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ev.returncode == 0, ev.stderr
    register_checkpoint(MlflowClient(uri), best.loc[0, "run_id"], "analysis-best", alias="pick")
    scratch = tmp_path / "scratch"  # the temporary directory of the evaluate below: empty afterwards
    scratch.mkdir()
    ev_uri = subprocess.run(
        [
            *cli,
            "evaluate",
            "models:/analysis-best@pick",
            "--bers",
            "0,0.02",
            "--reps",
            "4",
            "--seed",
            "3",
            "--tracking-uri",
            uri,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert ev_uri.returncode == 0, ev_uri.stderr
    assert not list(scratch.iterdir()), "evaluate models:/ left temporary files behind"
    # evaluating the checkpoint with the search's error seeds reproduces the logged accuracy at BER 2%.
    line = next(ln for ln in ev_uri.stdout.splitlines() if ln.strip().startswith("2%"))
    assert float(line.split()[1]) == pytest.approx(100 * best.loc[0, "ber_acc"], abs=0.006)


def test_report_figures_and_data(searched, tmp_path) -> None:
    uri, _ = searched
    path = report_command(EXPERIMENT, tmp_path / "report", tracking_uri=uri)
    text = path.read_text()
    assert "## digits / small_cnn / 4-bit" in text and "verdict" in text
    figs = sorted((tmp_path / "report").rglob("*.png"))
    assert {f.name for f in figs} == {"ber_curves.png", "pareto.png", "mlm.png", "margins.png"}
    for f in figs:
        assert f.stat().st_size > 1000 and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({f.parent.name}/{f.name})" in text
    client = MlflowClient(uri)
    df = runs_frame(EXPERIMENT, tracking_uri=uri)
    parent = df["tags.mlflow.parentRunId"].iloc[0]
    logged = {a.path for a in client.list_artifacts(parent, "figures")}
    assert logged == {f"figures/{f.name}" for f in figs}


def test_plotted_front_equals_computed_front(searched, tmp_path) -> None:
    from mcel_search.analysis.plots import plot_pareto

    uri, _ = searched
    df, sels, _ = selections(EXPERIMENT, tracking_uri=uri)
    sel = sels[0]
    data = plot_pareto(
        df, sel.front["run_id"].tolist(), sel.baseline["run_id"], sel.row["run_id"], tmp_path / "p.png"
    )
    front = data["front"]
    computed = pareto_front(df[df.role == "trial"]).sort_values(
        ["clean_acc", "ber_acc"], ascending=[True, False]
    )
    assert front["run_id"].tolist() == computed["run_id"].tolist()
    assert np.allclose(front["clean_acc"], 100 * computed["clean_acc"])
    assert np.allclose(front["ber_acc"], 100 * computed["ber_acc"])
    assert data["selected"]["run_id"].tolist() == [sel.row["run_id"]]
    assert data["baseline"]["run_id"].tolist() == [sel.baseline["run_id"]]


@pytest.mark.parametrize(
    "uri", ["runs:/0123456789abcdef0123456789abcdef/checkpoint/model.pt", "models:/no-such-model@champion"]
)
def test_an_unknown_run_or_alias_is_one_line(searched, tmp_path, uri: str) -> None:
    tracking, _ = searched
    cli = [sys.executable, "-m", "mcel_search.search.cli"]
    proc = subprocess.run(
        [*cli, "evaluate", uri, "--tracking-uri", tracking],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert uri in lines[0] and "not found" in lines[0] and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_every_finished_trial_is_an_mlflow_model_that_predicts_like_evaluate(searched, tmp_path) -> None:
    """A registered version loads with ``mlflow.pyfunc.load_model("models:/<name>@<alias>")`` (no pickled
    code: the model is logged from code, the weights are the checkpoint), predicts logits with the logged
    signature, and its accuracy on the test set is what ``mcel evaluate`` of the same URI prints."""
    import mlflow
    from mlflow.pyfunc import load_model

    from mcel_search.core.data import load_dataset

    uri, _ = searched
    client = MlflowClient(uri)
    df = runs_frame(EXPERIMENT, tracking_uri=uri)
    completed = df[df["state"] == "completed"]
    assert len(completed) >= 2
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    logged = client.search_logged_models([exp_id])
    assert {m.source_run_id for m in logged} == set(completed["run_id"])  # one model per finished run
    assert set(completed["tags.mcel.model_id"]) == {m.model_id for m in logged}
    best = best_checkpoints(EXPERIMENT, tracking_uri=uri, arch="small_cnn")
    run_id = best.loc[0, "run_id"]
    version = register_checkpoint(client, run_id, "analysis-pyfunc", alias="served")
    assert version.source.startswith("models:/m-")
    mlflow.set_tracking_uri(uri)
    model = load_model("models:/analysis-pyfunc@served")
    sig = model.metadata.signature
    assert list(sig.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 1, 8, 8]
    assert list(sig.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 10]
    test = load_dataset("digits").test
    images = torch.stack([test[i][0] for i in range(len(test))]).numpy()
    labels = np.array([int(test[i][1]) for i in range(len(test))])
    logits = model.predict(images)
    assert logits.shape == (len(test), 10) and logits.dtype == np.float32
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    ev = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcel_search.search.cli",
            "evaluate",
            "models:/analysis-pyfunc@served",
            "--bers",
            "0",
            "--reps",
            "1",
            "--tracking-uri",
            uri,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ev.returncode == 0, ev.stderr
    line = next(ln for ln in ev.stdout.splitlines() if ln.strip().startswith("0%"))
    assert float(line.split()[1]) == pytest.approx(100 * accuracy, abs=0.006)
    assert accuracy == pytest.approx(best.loc[0, "clean_acc"], abs=1e-9)  # and what the search logged


def test_names_from_mlflow_never_leave_the_target_directory(searched, tmp_path) -> None:
    """An ``arch`` tag of ``../../x`` (anyone who can write to the tracking server can set one) must not make
    ``mcel best --download`` or ``mcel report --out`` write outside their directories. Last in this file:
    it retags the shared search's runs."""
    uri, _ = searched
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    for run in client.search_runs([exp.experiment_id]):
        client.set_tag(run.info.run_id, "arch", "../../evil")
    cli = [sys.executable, "-m", "mcel_search.search.cli"]
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    for argv in (
        ["best", EXPERIMENT, "--download", str(inner / "dl")],
        ["report", EXPERIMENT, "--out", str(inner / "rep")],
    ):
        proc = subprocess.run(
            [*cli, *argv, "--tracking-uri", uri], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    outside = [
        p for p in tmp_path.rglob("*") if inner not in p.parents and p != inner and p not in inner.parents
    ]
    assert outside == [], outside
    assert list((inner / "dl").rglob("model.pt")) and (inner / "rep" / "report.md").is_file()
