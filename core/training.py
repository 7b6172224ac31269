"""Quantization-aware training as in the paper (Sec. VIII-A): Adam, StepLR, any registered loss, seeded.

:class:`Trainer` runs one epoch at a time so a caller (the ``mcel train`` command, a Ray Tune trial) can
evaluate, report and checkpoint between epochs, and resume from :meth:`Trainer.state_dict`.

Per epoch it records the mean training loss, the training accuracy and the Mean Logit Margin (MLM, paper
Sec. VIII-C): the mean over the epoch's training samples of ``top1(z) - top2(z)`` of the model's logits
``z`` (after the logit scale, before any loss transform), taken from the forward passes of training itself
(train mode, weights changing during the epoch), exactly as the paper describes.

Reproducibility: the model's initial weights come from :func:`seed_everything` before the model is built;
the shuffling order of epoch ``e`` comes from a generator seeded with ``derive_seed(seed, e)``, so a run
resumed at epoch ``e`` sees the same batches as an uninterrupted one.

Batches: an in-memory ``TensorDataset`` (every registered data set) with ``num_workers = 0`` is served by
:class:`TensorBatches`, which indexes the tensors once per batch (``x[idx]``) instead of a ``DataLoader``
fetching and collating sample by sample: the same permutation drawn from the same generator in the same
way, so the batches are bit for bit the DataLoader's (``tests/core/test_training.py``) at a fraction of
the cost (``benchmarks/RESULTS.md``, ``loader``). Anything else goes through a ``DataLoader``. Statistics are accumulated on the
device and read once per epoch: no host synchronisation per step.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .biterrors import derive_seed, inject_bit_errors
from .errors import BadInputError, McelError


class TrainingDivergedError(McelError, RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch."""


class TrainingCancelledError(RuntimeError):
    """:meth:`Trainer.train_epoch` stopped between two steps because its ``should_stop`` said so (the
    caller no longer wants the epoch: a search stopped the trial). The trainer is left mid-epoch (some
    steps applied, ``epoch`` and ``history`` not advanced): discard it or restore it from a state dict."""


_DEVICE_RE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
_TRAIN_BER_KEY = 0xB17  # seed-derivation key of the per-step bit-error realizations of bit-error training


#: Upper bounds of the integer settings: generous for real training, far below what would hang a machine.
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 2**20
#: Seeds fit 32 bits (NumPy's generators take no more).
MAX_SEED = 2**32 - 1


def _int_in(low: int, high: int) -> tuple[Callable[[Any], bool], str]:
    """An integer in ``[low, high]`` (bools are not integers), and the words for it."""
    return (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high,
        f"an integer >= {low} and <= {high:_}",
    )


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


#: The one definition of every :class:`TrainConfig` bound: field -> (admits(value), what is allowed).
#: ``TrainConfig`` checks them itself; the search spec checks a spec's ``train`` section against the same
#: table (:func:`train_config_problems`), reporting every bad field instead of the first.
TRAIN_BOUNDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": _int_in(1, MAX_EPOCHS),
    "batch_size": _int_in(1, MAX_BATCH_SIZE),
    "lr": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
    "step_size": _int_in(1, MAX_EPOCHS),
    "gamma": (lambda v: _finite(v) and 0 < v <= 1, "a number in (0, 1]"),
    "weight_decay": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "seed": _int_in(0, MAX_SEED),
    "device": (
        lambda v: isinstance(v, str) and _DEVICE_RE.fullmatch(v) is not None,
        "auto, cpu, cuda or cuda:N",
    ),
    "num_workers": _int_in(0, 256),
    "progress": (lambda v: isinstance(v, bool), "true or false"),
    "train_ber": (
        lambda v: _finite(v) and 0 <= v <= 0.5,
        "a bit error rate in [0, 0.5] (0: no bit-error training)",
    ),
}


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (paper Table II: epochs EP, batch size BS, StepLR step size SS and gamma).

    Frozen: a search hands one instance to all its trials. Every bound is in :data:`TRAIN_BOUNDS`; a bad
    value raises :class:`~mcel_search.core.errors.BadInputError` naming every bad field.
    """

    epochs: int = 10  # number of passes over the training set
    batch_size: int = 256  # samples per optimizer step
    lr: float = 1e-3  # Adam learning rate
    step_size: int = 10  # StepLR: multiply the lr by `gamma` every `step_size` epochs
    gamma: float = 0.5  # StepLR decay factor
    weight_decay: float = 0.0  # Adam weight decay (the paper uses none)
    seed: int = 0  # seeds weight init (via seed_everything) and the per-epoch shuffling order
    device: str = "auto"  # "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...
    num_workers: int = 0  # DataLoader workers (0: in-process; our data sets are in-memory tensors)
    progress: bool = False  # print a progress bar to stderr
    # Bit-error training (the baseline the paper argues against): every step runs its forward pass with the
    # quantized weights' bits flipped at this rate, a fresh realization per step (seeded by seed, epoch,
    # step), gradients straight through to the float weights. 0 (default): clean training.
    train_ber: float = 0.0

    def __post_init__(self) -> None:
        problems = train_config_problems(asdict(self))
        if problems:
            raise BadInputError(
                "; ".join(
                    f"{name}={value!r} is not allowed: it must be {allowed}"
                    for name, value, allowed in problems
                )
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_config_problems(values: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """``[(field, value, what is allowed)]`` for every value of ``values`` that :data:`TRAIN_BOUNDS`
    refuses (keys that are not fields are ignored: the caller reports those)."""
    return [
        (k, v, TRAIN_BOUNDS[k][1])
        for k, v in values.items()
        if k in TRAIN_BOUNDS and not TRAIN_BOUNDS[k][0](v)
    ]


@dataclass
class EpochStats:
    """What one training epoch measured."""

    epoch: int  # 1-based epoch number
    train_loss: float  # mean loss over the epoch's samples
    train_acc: float  # fraction of the epoch's samples classified correctly (train mode)
    mlm: float  # Mean Logit Margin: mean of top1 - top2 logit over the epoch's samples
    lr: float  # learning rate used in this epoch
    seconds: float  # wall time of the epoch
    extra: dict[str, float] = field(default_factory=dict)  # room for callers' metrics

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so that model construction is reproducible."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def top2_margin(logits: Tensor) -> Tensor:
    """Per-sample ``top1 - top2`` of the logits (Eq. 1 of the paper); ``(N, C) -> (N,)``, ``C >= 2``."""
    top = torch.topk(logits, 2, dim=-1).values
    return top[..., 0] - top[..., 1]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA when available else CPU; an unavailable CUDA device raises ValueError."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"device={str(device)!r} is not available here: CUDA is not present; use 'cpu'")
    return dev


class Trainer:
    """Trains ``model`` on ``train_set`` with ``loss_fn`` one epoch at a time (Adam + StepLR)."""

    def __init__(self, model: nn.Module, train_set: Dataset, loss_fn: nn.Module, config: TrainConfig) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.train_set = train_set
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=config.step_size, gamma=config.gamma
        )
        self.epoch = 0  # epochs completed
        self.history: list[EpochStats] = []

    def _loader(self, epoch: int) -> DataLoader | TensorBatches:
        gen = torch.Generator().manual_seed(derive_seed(self.config.seed, epoch))
        if isinstance(self.train_set, TensorDataset) and self.config.num_workers == 0:
            return TensorBatches(self.train_set, self.config.batch_size, gen)
        return DataLoader(
            self.train_set,
            batch_size=self.config.batch_size,
            shuffle=True,
            generator=gen,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def train_epoch(self, should_stop: Callable[[], bool] | None = None) -> EpochStats:
        """Run the next epoch; raises :class:`TrainingDivergedError` if the loss became NaN/inf.

        ``should_stop``, when given, is asked before every step; once it returns True the epoch ends
        there with :class:`TrainingCancelledError` (at most one step after the request: the latency a
        search's stopped trial waits for an epoch it no longer wants). It never changes what an epoch
        that runs to its end computes.
        """
        start = time.perf_counter()
        epoch = self.epoch + 1
        model, dev = self.model, self.device
        model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
        correct = torch.zeros((), device=dev, dtype=torch.int64)
        margin_sum = torch.zeros((), device=dev, dtype=torch.float64)
        seen = 0
        loader = self._loader(epoch)
        batches = _progress(loader, f"epoch {epoch}/{self.config.epochs}") if self.config.progress else loader
        for step, (x, y) in enumerate(batches):
            if should_stop is not None and should_stop():
                raise TrainingCancelledError(f"epoch {epoch} cancelled before step {step}")
            x = x.to(dev, non_blocking=True)
            y = y.to(dev, non_blocking=True)
            if self.config.train_ber > 0:
                seed = derive_seed(self.config.seed, _TRAIN_BER_KEY, epoch, step)
                with inject_bit_errors(
                    model, self.config.train_ber, seed, straight_through=True, count=False
                ):
                    logits = model(x)
            else:
                logits = model(x)
            loss = self.loss_fn(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                n = y.shape[0]
                loss_sum += loss.detach().double() * n
                correct += (logits.argmax(dim=-1) == y).sum()
                margin_sum += top2_margin(logits.detach()).double().sum()
                seen += n
        self.scheduler.step()
        train_loss = float(loss_sum) / max(seen, 1)
        if not math.isfinite(train_loss):
            raise TrainingDivergedError(f"training loss became {train_loss} in epoch {epoch}")
        self.epoch = epoch
        stats = EpochStats(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=int(correct) / max(seen, 1),
            mlm=float(margin_sum) / max(seen, 1),
            lr=lr,
            seconds=time.perf_counter() - start,
        )
        self.history.append(stats)
        return stats

    def fit(self, on_epoch: Callable[[EpochStats], bool | None] | None = None) -> list[EpochStats]:
        """Train up to ``config.epochs``; ``on_epoch(stats)`` returning True stops early."""
        while self.epoch < self.config.epochs:
            stats = self.train_epoch()
            if on_epoch is not None and on_epoch(stats):
                break
        return self.history

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: model, optimizer, scheduler, epoch and history (tensors + primitives)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "history": [s.to_dict() for s in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.history = [
            EpochStats(**{k: h[k] for k in ("epoch", "train_loss", "train_acc", "mlm", "lr", "seconds")})
            for h in state["history"]
        ]


class TensorBatches:
    """Shuffled batches of a ``TensorDataset``, equal to ``DataLoader(ds, batch_size, shuffle=True,
    generator=gen)``'s with ``num_workers=0`` and the default collate, by tensor indexing.

    What the DataLoader does with ``gen`` (torch's ``_BaseDataLoaderIter`` and ``RandomSampler``): it first
    draws one int64 base seed for its workers (``torch.empty((), dtype=torch.int64).random_(generator=gen)``),
    then the sampler draws ``torch.randperm(n, generator=gen)``; the batches are consecutive chunks of
    ``batch_size`` indices, the last one shorter (``drop_last=False``). Collating stacks the samples, which
    equals indexing each tensor with the chunk. The permutation is drawn when iteration starts, as the
    DataLoader's is.
    """

    def __init__(self, dataset: TensorDataset, batch_size: int, generator: torch.Generator) -> None:
        if batch_size < 1:
            raise BadInputError(f"batch_size={batch_size!r}: must be >= 1")
        self.tensors = dataset.tensors
        self.batch_size = batch_size
        self.generator = generator
        self.n = len(dataset)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # the workers' base seed
        perm = torch.randperm(self.n, generator=self.generator)
        for start in range(0, self.n, self.batch_size):
            idx = perm[start : start + self.batch_size]
            yield tuple(t[idx] for t in self.tensors)


def _progress(iterable: DataLoader, label: str):
    """tqdm's bar on stderr over the epoch's batches (``label``: "epoch k/n"); it leaves the finished bar."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=label, total=len(iterable), unit="batch", leave=True, dynamic_ncols=True)
