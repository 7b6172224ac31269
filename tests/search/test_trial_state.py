"""search/trial_state.py: a trial checkpoint's ``trainer.pt`` without the weights (``model.pt`` has them),
its lists as JSON text; what a resumed trial loads equals what was saved, bit for bit, and a format-1 file
(weights and lists inline, as written before 2026-12-02) still loads."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from mcel_search.core.checkpoint import save_checkpoint
from mcel_search.core.models import create_model
from mcel_search.core.training import EpochStats, TrainConfig, Trainer
from mcel_search.search.trial_state import (
    FORMAT,
    FORMAT_KEY,
    MODEL_FILE,
    REPORTED_KEY,
    TRAINER_FILE,
    read_reported,
    read_trainer_state,
    write_trainer_state,
)

META = {"model": {"name": "small_cnn", "bits": 4, "num_classes": 10, "in_channels": 1, "image_size": 8}}
#: floats JSON must not round (repr), a NaN, an int
REPORTED = [{"epoch": 1.0, "clean_acc": 0.1 + 0.2, "train_loss": 1 / 3, "mlm": float("nan")}, {"epoch": 2.0}]


def _trainer() -> Trainer:
    torch.manual_seed(0)
    model = create_model(**META["model"])
    x = torch.randn(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))
    data = torch.utils.data.TensorDataset(x, y)
    trainer = Trainer(model, data, torch.nn.CrossEntropyLoss(), TrainConfig(epochs=2, batch_size=16))
    trainer.train_epoch()  # Adam's moments, a scheduler step, one history entry
    trainer.history.append(
        EpochStats(epoch=2, train_loss=0.1 + 0.7, train_acc=0.5, mlm=-1e-300, lr=1e-3, seconds=0.25)
    )
    return trainer


def _same(a, b) -> bool:
    """Equal nested states: tensors bit for bit, floats exactly (NaN equal to NaN)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b and type(a) is type(b)


def _write_both(tmp_path: Path, trainer: Trainer) -> Path:
    write_trainer_state(tmp_path / TRAINER_FILE, trainer.state_dict(), REPORTED)
    save_checkpoint(tmp_path / MODEL_FILE, trainer.model, META, durable=False)
    return tmp_path


def test_what_a_resumed_trial_loads_is_what_was_saved_bit_for_bit(tmp_path) -> None:
    trainer = _trainer()
    saved = trainer.state_dict()
    state, reported = read_trainer_state(_write_both(tmp_path, trainer), "cpu")
    assert _same(state, saved)  # weights from model.pt, optimizer, scheduler, epoch, history
    assert _same(reported, REPORTED)
    again = _trainer()
    again.model.apply(lambda m: [p.data.zero_() for p in m.parameters(recurse=False)])
    again.load_state_dict(state)
    assert _same(again.state_dict(), saved)


def test_trainer_pt_holds_no_weights_and_no_list_objects(tmp_path) -> None:
    trainer = _trainer()
    _write_both(tmp_path, trainer)
    raw = torch.load(tmp_path / TRAINER_FILE, weights_only=True)
    assert "model" not in raw and raw[FORMAT_KEY] == FORMAT
    assert isinstance(raw["history"], str) and isinstance(raw[REPORTED_KEY], str)
    old = tmp_path / "format1.pt"
    torch.save({**trainer.state_dict(), REPORTED_KEY: REPORTED}, old)
    weights = sum(t.numel() * t.element_size() for t in trainer.model.state_dict().values())
    # smaller by at least the weights' bytes (the format-1 file's zip records add more)
    assert old.stat().st_size - (tmp_path / TRAINER_FILE).stat().st_size >= weights


def test_a_format_1_trainer_pt_still_loads(tmp_path) -> None:
    """Checkpoints written before format 2 (weights and lists inline) resume as they did; their weights come
    from trainer.pt itself, not model.pt (here a model.pt of other weights shows which file was read)."""
    trainer = _trainer()
    saved = trainer.state_dict()
    torch.save({**saved, REPORTED_KEY: REPORTED}, tmp_path / TRAINER_FILE)
    other = create_model(**META["model"])
    save_checkpoint(tmp_path / MODEL_FILE, other, META, durable=False)
    state, reported = read_trainer_state(tmp_path, "cpu")
    assert _same(state, saved) and _same(reported, REPORTED)
    assert _same(read_reported(tmp_path / TRAINER_FILE), REPORTED)


def test_read_reported_reads_either_format_and_tolerates_none(tmp_path) -> None:
    trainer = _trainer()
    write_trainer_state(tmp_path / "new.pt", trainer.state_dict(), REPORTED)
    torch.save({**trainer.state_dict(), REPORTED_KEY: REPORTED}, tmp_path / "old.pt")
    torch.save({"epoch": 1}, tmp_path / "none.pt")
    assert _same(read_reported(tmp_path / "new.pt"), REPORTED)
    assert _same(read_reported(tmp_path / "old.pt"), REPORTED)
    assert read_reported(tmp_path / "none.pt") == []
