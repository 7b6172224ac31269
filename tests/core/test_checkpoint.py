"""Checkpoints round-trip exactly and load only through the safe (weights_only) path."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from mcel_search.core.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from mcel_search.core.data import load_dataset
from mcel_search.core.experiment import TrialSpec, run_trial
from mcel_search.core.training import TrainConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    spec = TrialSpec(
        arch="small_cnn",
        loss="mcel",
        loss_params={"margin": 2.0, "b": 4.0},
        bits=4,
        train=TrainConfig(epochs=2, batch_size=64),
    )
    return run_trial(spec, out_dir=out), out


def test_round_trip_gives_identical_predictions(trained) -> None:
    result, out = trained
    model, payload = load_checkpoint(out / "checkpoint.pt")
    x, _ = load_dataset("digits").test.tensors
    with torch.no_grad():
        assert torch.equal(model(x), result.model.eval()(x))
    assert payload["model"]["name"] == "small_cnn" and payload["loss"] == {
        "name": "mcel",
        "margin": 2.0,
        "b": 4.0,
    }
    assert payload["metrics"]["clean_acc"] == result.clean_acc
    assert (out / "metrics.json").is_file()
    # the file really loads with the safe loader.
    assert isinstance(torch.load(out / "checkpoint.pt", weights_only=True), dict)


def test_pickle_carrying_code_is_refused(tmp_path, trained) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "mcel-checkpoint", "version": 1, "model": {}, "state_dict": {}, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused by the safe loader"):
        read_checkpoint(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        read_checkpoint(raw)
    assert not marker.exists()


def test_truncated_and_foreign_files_are_refused(tmp_path, trained) -> None:
    _, out = trained
    data = (out / "checkpoint.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint(cut)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not an mcel-checkpoint"):
        read_checkpoint(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_of_another_architecture_is_refused(tmp_path, trained) -> None:
    _, out = trained
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    payload["model"]["name"] = "vgg3"
    bad = tmp_path / "swapped.pt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="does not fit architecture 'vgg3'"):
        load_checkpoint(bad)


def test_save_is_atomic_and_needs_model_meta(tmp_path) -> None:
    with pytest.raises(ValueError, match="'model' entry"):
        save_checkpoint(tmp_path / "x.pt", torch.nn.Linear(1, 1), {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("durable, syncs", [(True, 1), (False, 0)])
def test_durable_decides_the_fsync_and_either_file_loads(tmp_path, monkeypatch, durable, syncs) -> None:
    """The default write is fsynced once; ``durable=False`` (a file staged for Ray Tune to copy) is not,
    and is still written whole under its final name, with no temporary file left beside it."""
    import mcel_search.core.atomic

    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(mcel_search.core.atomic.os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    model = torch.nn.Linear(3, 2)
    meta = {"model": {"name": "linear"}}
    path = save_checkpoint(tmp_path / "m.pt", model, meta, durable=durable)
    assert len(calls) == syncs
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    state = read_checkpoint(path)["state_dict"]
    assert torch.equal(state["weight"], model.weight.detach())
