"""The Python API (``mcel_search.run_search`` / ``load_results``): the README's example block runs as it is
written against a real small search (local Ray, SQLite MLflow store), and what it returns is checked
against MLflow, Optuna and Tune directly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import mcel_search
from mcel_search.search.spec import SpecError

ROOT = Path(__file__).resolve().parents[2]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API") :]
    (block,) = re.findall(r"```python\n(.*?)```", section[: section.index("\n## ", 5)], flags=re.S)
    return block


def test_overrides_are_merged_and_validated_before_anything_runs(tmp_path: Path) -> None:
    spec = mcel_search.load_search_spec(
        ROOT / "configs" / "quickstart.yaml", trials_per_arch=3, train={"epochs": 2}
    )
    assert spec.trials_per_arch == 3 and spec.train.epochs == 2
    assert spec.train.batch_size == 64  # merged key by key: the file's other train keys stay
    with pytest.raises(SpecError) as info:
        mcel_search.run_search(
            ROOT / "configs" / "quickstart.yaml",
            trials_per_arch=0,
            train={"epochs": -1, "lr": 0},
            concurrency=0,
            tracking_uri=f"sqlite:///{tmp_path / 'never.db'}",
        )
    assert len(info.value.errors) == 4, info.value.errors  # every bad field at once
    assert not (tmp_path / "never.db").exists()  # nothing started


def test_import_stays_light() -> None:
    code = "import sys, mcel_search; print(all(m not in sys.modules for m in ('ray', 'optuna', 'mlflow')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.slow
def test_readme_example_runs_against_a_real_search(tmp_path: Path) -> None:
    """The block runs in a fresh interpreter with the repository's configs/ beside it (it is written for the
    repository root); then its MLflow store and Optuna studies are read independently."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    script = tmp_path / "example.py"
    script.write_text(_readme_example())
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Optuna trials" in proc.stdout and "Tune results" in proc.stdout

    import optuna
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'api-demo.db'}"
    result = mcel_search.load_results("quickstart", tracking_uri=uri)
    trials = result.trials
    assert sorted(trials["role"]) == ["baseline"] + ["trial"] * 4
    assert (trials["checkpoint_uri"] == "runs:/" + trials["run_id"] + "/checkpoint/model.pt").all()
    client = MlflowClient(uri)
    for _, row in trials.iterrows():
        run = client.get_run(row["run_id"])
        assert run.data.tags["mcel.state"] == row["state"]
        if row["state"] == "completed":
            assert run.data.metrics["ber_acc"] == row["ber_acc"] and "tolerable_ber" in run.data.metrics
    (name,) = result.optuna_studies
    assert name == "quickstart-small_cnn-4b"
    study = optuna.load_study(study_name=name, storage=result.optuna_studies[name])
    assert len(study.trials) == 4
    (sel,) = result.selections
    assert sel.group["arch"] == "small_cnn" and sel.group["bits"] == 4
    if sel.row is not None:
        assert result.best["run_id"].tolist() == [sel.row["run_id"]]
        assert sel.row["run_id"] in set(trials["run_id"])
