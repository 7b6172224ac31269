"""The protocol in the spec and on the command line: `protocol: paper`, one-line errors naming both fields,
`mcel train --protocol paper`, evaluation under another protocol only on request, `mcel sensitivity`."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from mcel_search.core.checkpoint import read_checkpoint
from mcel_search.core.protocol import PAPER, PAPER_TRAIN, make_protocol
from mcel_search.search.spec import SpecError, flatten, parse_spec, spec_to_dict

MCEL = [sys.executable, "-m", "mcel_search.search.cli"]

BASE = {
    "name": "p",
    "dataset": "digits",
    "architectures": ["small_cnn"],
    "bits": [4],
    "losses": ["mcel"],
    "space": {"margin": {"choice": [1, 2]}, "b": 4},
    "train": {"epochs": 2},
    "trials_per_arch": 2,
}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MCEL, *args], capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------------------------ spec


def test_protocol_paper_sets_the_switches_and_the_references_training_where_the_spec_is_silent() -> None:
    spec = parse_spec({**BASE, "protocol": "paper", "train": {"epochs": 2, "step_size": 3}})
    assert spec.protocol == PAPER
    assert spec.train.lr == PAPER_TRAIN["lr"] and spec.train.gamma == PAPER_TRAIN["gamma"]
    assert spec.train.epochs == 2 and spec.train.step_size == 3  # the spec's own values win
    assert parse_spec(spec_to_dict(spec)) == spec
    flat = flatten(spec)
    assert flat["protocol.preset"] == "paper" and flat["protocol.conv_bias"] == "faulty"
    # no train section at all: the preset's epochs apply
    no_train = {k: v for k, v in BASE.items() if k != "train"}
    assert parse_spec({**no_train, "protocol": "paper"}).train.epochs == PAPER_TRAIN["epochs"]
    # a mapping changes single switches of a preset; the default stays ours
    changed = parse_spec({**BASE, "protocol": {"preset": "paper", "decode": "clean"}})
    assert changed.protocol == make_protocol("paper", decode="clean")
    assert parse_spec(BASE).protocol.label == "default" and parse_spec(BASE).train.lr == 1e-3


def test_four_bad_protocol_fields_give_four_lines_and_combinations_name_both_fields() -> None:
    with pytest.raises(SpecError) as exc:
        parse_spec(
            {
                **BASE,
                "protocol": {
                    "preset": "paper",
                    "inputs": "scaled",
                    "decode": "fresh",
                    "arithmetic": "fixed",
                    "conv_bias": "yes",
                },
            }
        )
    assert len(exc.value.errors) == 4, exc.value.errors
    assert exc.value.errors[0].startswith("protocol.inputs: 'scaled' — one of standardized, raw")
    with pytest.raises(SpecError) as exc:
        parse_spec({**BASE, "bits": [4, 32], "protocol": {"conv_bias": "faulty"}})
    (line,) = exc.value.errors
    assert line.startswith("protocol.conv_bias: 'faulty'") and "bits: 32" in line
    with pytest.raises(SpecError) as exc:
        parse_spec({**BASE, "protocol": {"output_scale_init": 0.1}})
    assert "output_scale: constant" in exc.value.errors[0]
    searched = {**BASE, "space": {**BASE["space"], "logit_scale": {"choice": [0.5, 1]}}}
    with pytest.raises(SpecError) as exc:
        parse_spec({**searched, "protocol": "paper"})
    assert (
        exc.value.errors[0].startswith("protocol.output_scale_init: 1e-05")
        and "space.logit_scale" in exc.value.errors[0]
    )
    with pytest.raises(SpecError) as exc:
        parse_spec({**BASE, "protocol": {"preset": "papr", "bias": "faulty"}})
    assert any("did you mean 'paper'" in e for e in exc.value.errors)
    assert any(e.startswith("protocol.bias") for e in exc.value.errors)


# ------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def paper_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("paper")
    proc = run(
        "train",
        "--protocol",
        "paper",
        "--loss",
        "mcel",
        "--margin",
        "2",
        "--b",
        "4",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "protocol paper: inputs raw, conv_bias faulty" in proc.stdout
    return out / "checkpoint.pt"


def test_mcel_train_protocol_paper_records_the_protocol_and_the_presets_training(paper_checkpoint) -> None:
    payload = read_checkpoint(paper_checkpoint)
    assert payload["protocol"] == PAPER.to_dict()
    assert payload["train"]["lr"] == 1e-4 and payload["train"]["step_size"] == 5
    assert payload["train"]["batch_size"] == 64 and payload["train"]["epochs"] == 2  # given on the line
    assert payload["data"]["inputs"] == "raw"
    assert payload["model"]["arithmetic"] == "integer" and payload["model"]["output_scale"] == "learnable"


def test_evaluate_uses_the_recorded_protocol_and_another_needs_the_flag(paper_checkpoint) -> None:
    proc = run("evaluate", str(paper_checkpoint), "--bers", "0,0.01", "--reps", "2")
    assert proc.returncode == 0, proc.stderr
    assert "protocol paper:" in proc.stdout
    refused = run("evaluate", str(paper_checkpoint), "--protocol", "paper+decode=clean")
    assert refused.returncode == 2 and "needs --cross-protocol" in refused.stderr
    allowed = run(
        "evaluate",
        str(paper_checkpoint),
        "--protocol",
        "paper+decode=clean",
        "--cross-protocol",
        "--bers",
        "0",
        "--reps",
        "1",
    )
    assert allowed.returncode == 0 and "protocol paper+decode=clean:" in allowed.stdout
    structural = run("evaluate", str(paper_checkpoint), "--protocol", "default", "--cross-protocol")
    assert structural.returncode == 2 and "cannot change at evaluation" in structural.stderr
    bad = run("evaluate", str(paper_checkpoint), "--protocol", "paper+decode=fresh")
    assert bad.returncode == 2 and "decode='fresh'" in bad.stderr


def test_sensitivity_prints_one_row_per_exposed_tensor_with_the_drop_and_its_ci(
    paper_checkpoint, tmp_path
) -> None:
    csv_path, fig = tmp_path / "s.csv", tmp_path / "s.png"
    proc = run(
        "sensitivity",
        str(paper_checkpoint),
        "--ber",
        "0.05",
        "--reps",
        "3",
        "--csv",
        str(csv_path),
        "--figure",
        str(fig),
    )
    assert proc.returncode == 0, proc.stderr
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith(("features.", "head."))]
    names = [ln.split()[0] for ln in rows]
    assert names == [
        "features.0.0.weight",
        "features.0.0.bias",
        "features.1.0.weight",
        "features.1.0.bias",
        "head.1.0.weight",
        "head.1.0.bias",
        "head.2.weight",
        "head.2.bias",
    ]
    # each row's mean drop and CI agree with the per-realization accuracies in the CSV (independent
    # t interval from scipy)
    from scipy import stats

    with csv_path.open() as fh:
        records = list(csv.DictReader(fh))
    for line in rows:
        name = line.split()[0]
        drops = [100 * (float(r["clean_acc"]) - float(r["accuracy"])) for r in records if r["tensor"] == name]
        assert len(drops) == 3
        mean = sum(drops) / 3
        assert f"{mean:+.2f}" in line
        sd = stats.tstd(drops)
        if sd > 0:
            half = stats.t.ppf(0.975, 2) * sd / 3**0.5
            assert f"[{mean - half:+.2f}, {mean + half:+.2f}]" in line
    assert fig.stat().st_size > 1000
    bad = run("sensitivity", str(paper_checkpoint), "--ber", "1.5", "--reps", "0")
    assert (
        bad.returncode == 2
        and len([ln for ln in bad.stderr.splitlines() if ln.startswith("mcel: error")]) == 2
    )
