"""A trial checkpoint's ``trainer.pt``: what a retried or resumed trial continues from, besides its weights.

Since 2026-12-02 (format 2) it holds the optimizer's and the scheduler's state, the epoch, and two JSON
texts: ``history`` (:meth:`core.training.Trainer.state_dict`'s per-epoch statistics) and ``reported``
(every epoch's scalar results so far, ``search.trainable``'s backfill). The model's weights are not in
it: they are the checkpoint's ``model.pt`` (the safe mcel format, :mod:`core.checkpoint`), which the same
report always carries. Before, ``trainer.pt`` held the weights a second time and the two lists as Python
objects; ``torch.save`` calls its ``persistent_id`` hook once per object, so the lists cost ~3 ms an epoch
at 40 epochs and grew with every epoch, and the weights ~2 ms (small_cnn; a VGG's weights are a quarter of
its checkpoint with Adam's two moments). Floats round-trip exactly through JSON (``repr``; NaN as ``NaN``).

Format-1 files (the weights and both lists inline) still load: :func:`read_trainer_state` takes the
weights from ``trainer.pt`` when it has them, else from ``model.pt``.

Both files come from the search's own storage, never from a user; they are still loaded with
``weights_only=True``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..core.checkpoint import read_checkpoint

TRAINER_FILE = "trainer.pt"
MODEL_FILE = "model.pt"
#: Key in trainer.pt of the scalar results of every epoch so far (a resumed trial's ``backfill``).
REPORTED_KEY = "reported"
HISTORY_KEY = "history"
#: ``trainer.pt``'s layout: 2 = no weights, ``history`` and ``reported`` as JSON text.
FORMAT_KEY = "mcel_trainer_format"
FORMAT = 2


def write_trainer_state(path: str | Path, trainer_state: dict[str, Any], reported: list[dict]) -> None:
    """Write ``trainer_state`` (:meth:`~core.training.Trainer.state_dict`) less its ``model`` weights, with
    ``history`` and ``reported`` as JSON text, to ``path`` (format 2; see the module docstring)."""
    state = {k: v for k, v in trainer_state.items() if k not in ("model", HISTORY_KEY)}
    state[HISTORY_KEY] = json.dumps(trainer_state.get(HISTORY_KEY, []))
    state[REPORTED_KEY] = json.dumps(reported)
    state[FORMAT_KEY] = FORMAT
    torch.save(state, path)


def _as_list(value: Any) -> list:
    """A list stored as JSON text (format 2) or inline (format 1)."""
    if isinstance(value, str):
        value = json.loads(value)
    return list(value or [])


def _reported(value: Any) -> list[dict]:
    """The ``reported`` entry of a ``trainer.pt`` (either format) as a list of dicts."""
    return [dict(r) for r in _as_list(value) if isinstance(r, dict)]


def read_reported(path: str | Path) -> list[dict]:
    """The ``reported`` epochs of a ``trainer.pt`` (either format), each a dict; [] if it holds none."""
    return _reported(torch.load(path, map_location="cpu", weights_only=True).get(REPORTED_KEY))


def read_trainer_state(
    directory: str | Path, device: str | torch.device
) -> tuple[dict[str, Any], list[dict]]:
    """``(state for Trainer.load_state_dict, reported epochs)`` of the checkpoint in ``directory``: its
    ``trainer.pt`` with the weights of its ``model.pt`` when ``trainer.pt`` has none (format 2)."""
    directory = Path(directory)
    state = torch.load(directory / TRAINER_FILE, map_location=device, weights_only=True)
    reported = _reported(state.pop(REPORTED_KEY, None))
    state[HISTORY_KEY] = _as_list(state.get(HISTORY_KEY))
    state.pop(FORMAT_KEY, None)
    if "model" not in state:
        state["model"] = read_checkpoint(directory / MODEL_FILE)["state_dict"]
    return state, reported
