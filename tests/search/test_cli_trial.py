"""`mcel train` and `mcel evaluate` as a user runs them: real subprocesses, real files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

MCEL = [sys.executable, "-m", "mcel_search.search.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MCEL, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    proc = run(
        "train",
        "--arch",
        "small_cnn",
        "--dataset",
        "digits",
        "--bits",
        "4",
        "--loss",
        "mcel",
        "--margin",
        "2",
        "--b",
        "4",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch   3" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert {"train_loss", "train_acc", "mlm"} <= set(metrics["history"][0])
    return out / "checkpoint.pt"


def test_evaluate_prints_table_and_csv_is_reproducible(checkpoint: Path, tmp_path: Path) -> None:
    rows = []
    for name in ("a.csv", "b.csv"):
        proc = run(
            "evaluate",
            str(checkpoint),
            "--bers",
            "0,0.01,0.05",
            "--reps",
            "3",
            "--seed",
            "4",
            "--csv",
            str(tmp_path / name),
        )
        assert proc.returncode == 0, proc.stderr
        assert "mean %" in proc.stdout and "5%" in proc.stdout
        with (tmp_path / name).open() as fh:
            rows.append(list(csv.DictReader(fh)))
    assert rows[0] == rows[1]
    assert len(rows[0]) == 9 and set(rows[0][0]) == {"ber", "rep", "accuracy"}
    at_zero = {r["accuracy"] for r in rows[0] if float(r["ber"]) == 0.0}
    assert len(at_zero) == 1
    metrics = json.loads((checkpoint.parent / "metrics.json").read_text())
    assert float(at_zero.pop()) == pytest.approx(metrics["clean_acc"])


def test_evaluate_tolerable_agrees_with_the_library(checkpoint: Path) -> None:
    import re

    from mcel_search.core.checkpoint import load_checkpoint
    from mcel_search.core.data import load_dataset
    from mcel_search.core.evaluation import cache_batches
    from mcel_search.core.tolerance import format_tolerable, model_tolerable_ber

    args = ["evaluate", str(checkpoint), "--bers", "0,0.001,0.01,0.1", "--reps", "4", "--seed", "2"]
    proc = run(*args, "--tolerable", "--tolerance", "2", "--tolerable-iters", "5")
    assert proc.returncode == 0, proc.stderr
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("tolerable BER")]
    assert re.match(r"tolerable BER (>= )?[0-9.]+% \(within 2 points of clean [0-9.]+%; its CI crosses", line)
    model, _ = load_checkpoint(checkpoint)
    batches = cache_batches(load_dataset("digits").test, "cpu")
    expected = model_tolerable_ber(model, batches, [0.001, 0.01, 0.1], 4, 2, tolerance=2.0, iters=5)
    assert line == format_tolerable(expected)  # same seeds, same model: the same answer


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["evaluate", "CKPT", "--tolerable", "--tolerance", "0"], "tolerance=0.0"),
        (["evaluate", "CKPT", "--tolerable", "--tolerable-iters", "99"], "iters=99"),
        (["evaluate", "CKPT", "--tolerable", "--bers", "0"], "needs a BER > 0"),
        (["train", "--margin", "-1", "--b", "4", "--out", "OUT"], "margin=-1.0"),
        (["train", "--loss", "mcel", "--margin", "1", "--b", "0", "--out", "OUT"], "b=0.0"),
        (["train", "--bits", "3", "--loss", "cel", "--out", "OUT"], "bits"),
        (["train", "--arch", "vgg99", "--loss", "cel", "--out", "OUT"], "vgg99"),
        (["train", "--dataset", "mnist2", "--loss", "cel", "--out", "OUT"], "mnist2"),
        (["train", "--loss", "focal", "--out", "OUT"], "focal"),
        (["train", "--loss", "cel", "--epochs", "0", "--out", "OUT"], "epochs=0"),
        (["evaluate", "MISSING", "--reps", "1"], "does not exist"),
        (["evaluate", "CKPT", "--bers", "0,1.5"], "1.5"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], needle: str, tmp_path: Path, checkpoint: Path
) -> None:
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    args = [str(tmp_path / "nope.pt") if a == "MISSING" else a for a in args]
    args = [str(checkpoint) if a == "CKPT" else a for a in args]
    proc = run(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mcel: error:"), proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_train_runs_with_no_flags_at_all(tmp_path: Path) -> None:
    """`mcel train` as it is: small_cnn, digits, 4 bits, MCEL at its registered defaults (m = 8, b = 16),
    written under runs/ of the current directory."""
    proc = subprocess.run([*MCEL, "train"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "runs" / "small_cnn-digits-4b-mcel"
    payload = json.loads((out / "metrics.json").read_text())
    assert len(payload["history"]) == 10 and payload["clean_acc"] > 0.5, payload["clean_acc"]
    from mcel_search.core.checkpoint import load_checkpoint

    _, ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["loss"] == {"name": "mcel", "margin": 8.0, "b": 16.0}
    assert (
        ckpt["model"]["name"] == "small_cnn"
        and ckpt["model"]["bits"] == 4
        and ckpt["data"]["name"] == "digits"
    )


def test_train_prints_every_bad_flag_at_once(tmp_path: Path) -> None:
    proc = run(
        "train", "--bits", "3", "--margin", "-1", "--epochs", "0", "--lr", "-1", "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 4 and all(ln.startswith("mcel: error: ") for ln in lines), lines
    for needle in ("bits=3", "margin=-1.0", "epochs=0", "lr=-1.0"):
        assert sum(needle in ln for ln in lines) == 1, (needle, lines)
    assert not (tmp_path / "o").exists() and "protocol" not in proc.stdout  # nothing started


def test_train_has_one_flag_per_registered_loss_parameter() -> None:
    """`mcel train`'s loss flags are the registry's parameter names (MHL's margin is not MCEL's --b)."""
    from mcel_search.core.losses import all_loss_params
    from mcel_search.search.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {a.dest for a in train._actions} & {"margin", "b", "mhl_margin", *all_loss_params()}
    assert flags == set(all_loss_params()) == {"margin", "b", "mhl_margin"}


def test_train_mhl_takes_its_own_margin_and_refuses_mcels(tmp_path) -> None:
    ok = run(
        "train",
        "--loss",
        "mhl",
        "--mhl-margin",
        "4",
        "--epochs",
        "1",
        "--limit-train",
        "64",
        "--limit-test",
        "32",
        "--out",
        str(tmp_path / "mhl"),
    )
    assert ok.returncode == 0, ok.stderr
    payload = json.loads((tmp_path / "mhl" / "metrics.json").read_text())
    assert payload["spec"]["loss_params"] == {"mhl_margin": 4.0}
    bad = run("train", "--loss", "mhl", "--b", "4", "--epochs", "1", "--out", str(tmp_path / "bad"))
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "does not take b" in lines[0], bad.stderr
