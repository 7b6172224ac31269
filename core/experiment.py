"""One trial end to end from Python: build data, model and loss from plain values, train, evaluate, save.

This is what ``mcel train`` runs and what a search trial runs, so the two cannot drift apart::

    spec = TrialSpec(arch="small_cnn", dataset="digits", bits=4, loss="mcel", loss_params={"margin": 8.0, "b": 16.0})
    result = run_trial(spec, out_dir="runs/mcel-m8")
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .allocator import tune_cpu_allocator
from .atomic import atomic_write
from .checkpoint import save_checkpoint
from .data import load_dataset
from .evaluation import evaluate_accuracy, margin_statistics
from .losses import create_loss
from .models import create_model
from .protocol import DEFAULT, Protocol, protocol_from_dict
from .training import EpochStats, TrainConfig, Trainer, seed_everything


@dataclass(frozen=True)
class TrialSpec:
    """Everything that defines one training run, as plain values (flattened into tracking params)."""

    arch: str = "small_cnn"  # a registered model name (core.models.list_models())
    dataset: str = "digits"  # a registered data set name (core.data.list_datasets())
    bits: int = 4  # 1 (BNN), 2, 4, 8 (QAT) or 32 (float)
    loss: str = "mcel"  # cel, mcel or mhl
    # the loss's hyperparameters by their registered names (core.losses.loss_params): margin and b for
    # mcel, mhl_margin for mhl, none for cel; checked by create_loss
    loss_params: Mapping[str, float] = field(default_factory=dict)
    logit_scale: float = 1.0  # constant factor on the network's raw logits
    train: TrainConfig = field(default_factory=TrainConfig)
    data_root: str | None = None  # data set root; None: MCEL_DATA_ROOT or the data set's default places
    split_seed: int = 0  # deterministic train/test split where the data set needs one (digits)
    limit_train: int | None = None  # use only the first N training samples (deterministic subset)
    limit_test: int | None = None  # use only the first N test samples
    # inputs, biases, arithmetic, output scale and decode (core.protocol); the default is ours, "paper" the
    # reference framework's. Training settings are taken from `train` as given (the paper preset's train
    # defaults are applied by whoever builds `train`: the spec, the CLI, paper_train_config)
    protocol: Protocol = DEFAULT

    def data_kwargs(self) -> dict[str, Any]:
        return {
            "root": self.data_root,
            "split_seed": self.split_seed,
            "limit_train": self.limit_train,
            "limit_test": self.limit_test,
            "inputs": self.protocol.inputs,
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["loss_params"] = dict(self.loss_params)
        d["train"] = self.train.to_dict()
        d["protocol"] = self.protocol.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialSpec:
        """The inverse of :meth:`to_dict`."""
        d = dict(d)
        d["train"] = TrainConfig(**d.get("train", {}))
        d["protocol"] = protocol_from_dict(d.get("protocol"))
        return cls(**d)


@dataclass
class TrialResult:
    """What :func:`run_trial` measured."""

    model: nn.Module  # the trained model (eval mode)
    history: list[EpochStats]
    clean_acc: float
    margins: dict[str, Any]
    checkpoint: Path | None


def build(spec: TrialSpec) -> tuple[nn.Module, nn.Module, Any]:
    """Seed, then build ``(model, loss, data bundle)`` for ``spec``; any bad value raises ValueError.

    Also fixes glibc's malloc thresholds for this process (:func:`core.allocator.tune_cpu_allocator`; opt
    out with ``MCEL_TUNE_MALLOC=0``): freed tensor memory is kept for the next step instead of being
    returned and faulted in again (see :mod:`mcel_search.core.allocator`)."""
    tune_cpu_allocator()
    loss_fn = create_loss(spec.loss, **spec.loss_params)
    data = load_dataset(spec.dataset, **spec.data_kwargs())
    seed_everything(spec.train.seed)
    model = create_model(
        spec.arch,
        bits=spec.bits,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        image_size=data.image_size,
        logit_scale=spec.logit_scale,
        **spec.protocol.model_kwargs(),
        output_scale_init=spec.protocol.output_scale_init,
    )
    return model, loss_fn, data


def model_meta(spec: TrialSpec, data: Any) -> dict[str, Any]:
    """The checkpoint's ``model`` entry: the create_model arguments (structure switches only where they
    differ from our default protocol, so a default model's entry is what it always was)."""
    meta = {
        "name": spec.arch,
        "bits": spec.bits,
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "image_size": data.image_size,
        "logit_scale": spec.logit_scale,
    }
    structure = {**spec.protocol.model_kwargs(), "output_scale_init": spec.protocol.output_scale_init}
    default = {**DEFAULT.model_kwargs(), "output_scale_init": None}
    meta.update({k: v for k, v in structure.items() if v != default[k]})
    return meta


def checkpoint_meta(spec: TrialSpec, data: Any, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full checkpoint metadata for ``spec`` (model, data, loss, train, optional metrics)."""
    return {
        "model": model_meta(spec, data),
        "data": {"name": spec.dataset, **spec.data_kwargs()},
        "loss": {"name": spec.loss, **spec.loss_params},
        "train": spec.train.to_dict(),
        "protocol": spec.protocol.to_dict(),
        "metrics": metrics or {},
    }


def run_trial(
    spec: TrialSpec,
    out_dir: str | os.PathLike | None = None,
    on_epoch: Callable[[EpochStats, Trainer], bool | None] | None = None,
) -> TrialResult:
    """Train ``spec``, evaluate clean accuracy and test margins, and write ``checkpoint.pt`` and
    ``metrics.json`` into ``out_dir`` (if given). ``on_epoch(stats, trainer)`` returning True stops early."""
    model, loss_fn, data = build(spec)
    trainer = Trainer(model, data.train, loss_fn, spec.train)
    trainer.fit(None if on_epoch is None else (lambda s: on_epoch(s, trainer)))
    clean = evaluate_accuracy(trainer.model, data.test)
    margins = margin_statistics(trainer.model, data.test)
    ckpt = None
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        summary = {k: v for k, v in margins.items() if k != "margins"}
        metrics = {
            "spec": spec.to_dict(),
            "history": [h.to_dict() for h in trainer.history],
            "clean_acc": clean,
            "test_margins": summary,
        }
        ckpt = save_checkpoint(
            out / "checkpoint.pt", trainer.model, checkpoint_meta(spec, data, {"clean_acc": clean})
        )
        with atomic_write(out / "metrics.json", "w") as fh:
            fh.write(json.dumps(metrics, indent=2, default=_json_default))
    return TrialResult(
        model=trainer.model.eval(), history=trainer.history, clean_acc=clean, margins=margins, checkpoint=ckpt
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
