"""Checkpoints that load without unpickling code: ``torch.load(..., weights_only=True)`` only.

A checkpoint is a dict of tensors and plain values::

    {"format": "mcel-checkpoint", "version": 1,
     "model": {name, bits, num_classes, in_channels, image_size, logit_scale},   # create_model kwargs
     "data": {...}, "train": {...}, "loss": {...},   # how it was made (plain values)
     "protocol": {...},                             # core.protocol.Protocol.to_dict(); absent: default
     "metrics": {...},                              # optional
     "state_dict": {...}}                           # model weights

Written atomically (temporary file + rename) so a crash never leaves a half-written checkpoint under the
final name. Loading refuses anything that is not such a dict (a truncated file, another format, a pickle
carrying code) with :class:`CheckpointError`, and a checkpoint whose weights do not fit the architecture
it names with a message naming both.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write
from .errors import BadInputError

FORMAT = "mcel-checkpoint"
VERSION = 1


#: What every CheckpointError line says is allowed.
ALLOWED = "allowed: an mcel-checkpoint file (checkpoint.pt of `mcel train`, model.pt of a search)"


class CheckpointError(BadInputError):
    """A checkpoint that cannot be loaded safely or does not fit; the one-line message names the file, the
    problem and what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}; {ALLOWED}")


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, meta: dict[str, Any], *, durable: bool = True
) -> Path:
    """Write ``model``'s weights and ``meta`` (must contain ``"model"``: the create_model kwargs) atomically.

    ``durable=False``: no fsync (:func:`core.atomic.atomic_write`), for a file staged to be copied.
    """
    if "model" not in meta:
        raise BadInputError("checkpoint meta needs a 'model' entry with the create_model arguments")
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **meta, "state_dict": model.state_dict()}
    with atomic_write(path, "wb", durable=durable) as fh:
        torch.save(payload, fh)
    return path


#: Keys a checkpoint may hold (anything else is refused: the file is untrusted input).
KEYS = frozenset({"format", "version", "model", "data", "loss", "train", "protocol", "metrics", "state_dict"})
#: Largest checkpoint file read: the file never decides how much memory loading it takes.
MAX_BYTES = 2 << 30


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load the checkpoint dict with ``weights_only=True``; raise :class:`CheckpointError` on anything else
    (a file over :data:`MAX_BYTES`, keys outside :data:`KEYS`, ...)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.stat().st_size > MAX_BYTES:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has {path.stat().st_size:_} bytes, more than {MAX_BYTES:_}"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused by the safe loader (weights_only=True): it holds objects "
            f"other than tensors and plain values, e.g. pickled code ({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is unreadable (truncated or not a torch file): {type(exc).__name__}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} is not an {FORMAT} file (format field missing)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has version {payload.get('version')!r}; this reads {VERSION}"
        )
    if not isinstance(payload.get("model"), dict) or not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {str(path)!r} lacks its 'model' or 'state_dict' entry")
    unknown = sorted(str(k) for k in set(payload) - KEYS)
    if unknown:
        raise CheckpointError(f"checkpoint {str(path)!r} has unknown keys {unknown[:5]}")
    return payload


def _check_dtypes(path: Path, model: nn.Module, state: dict[str, Any]) -> None:
    """Every tensor of ``state`` has the kind of dtype (floating or not) of the model's own: integer
    "weights" would otherwise be cast silently into a model that then computes nonsense."""
    for key, mine in model.state_dict().items():
        theirs = state.get(key)
        if (
            isinstance(theirs, torch.Tensor)
            and theirs.dtype.is_floating_point != mine.dtype.is_floating_point
        ):
            raise CheckpointError(
                f"checkpoint {str(path)!r} stores {key!r} as {theirs.dtype}, the model holds {mine.dtype}"
            )


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint names and load its weights; returns ``(model in eval mode, payload)``."""
    from .models import create_model
    from .protocol import protocol_from_dict

    payload = read_checkpoint(path)
    try:
        protocol_from_dict(payload.get("protocol"))
    except BadInputError as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} records a protocol that is not valid: {exc}"
        ) from None
    spec = dict(payload["model"])
    try:
        model = create_model(spec.pop("name"), **spec)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} names a model that cannot be built: {exc}") from None
    _check_dtypes(path, model, payload["state_dict"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__)[:200]
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit architecture {payload['model'].get('name')!r} "
            f"at {payload['model'].get('bits')} bits: {detail}"
        ) from None
    return model.to(device).eval(), payload
