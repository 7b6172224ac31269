"""Clean accuracy, test-set margin statistics and the BER sweep (the paper's evaluation protocol).

Protocol (DESIGN.md, paper Sec. VIII-A): for each bit error rate ``p`` in ``bers`` and each repetition
``r < reps``, draw one error realization with seed ``derive_seed(seed, r)`` -- a function of the sweep seed
and the repetition index only, so every model evaluated with the same ``seed`` sees the same error seeds
(paired comparisons) -- inject it into every quantized layer's weight codes, and run one full pass over the
test set. Per BER we report the mean, the sample standard deviation (``ddof=1``; 0 for one repetition), the
minimum and the maximum of the ``reps`` accuracies.

At ``p = 0`` no bit flips, so every repetition equals the clean accuracy exactly; the sweep runs that pass
once (through the same injection path) and reuses it.

Every pass runs inside :func:`core.layers.cached_quantization`: the clean codes are computed once per
sweep (not once per realization) and the clean fake-quantized weights once per evaluation (not once per
batch); the results are bit for bit those of the straight path (``tests/core/test_fast_paths.py``).
Batching several realizations into one forward pass was measured and not adopted (``benchmarks/``): the
passes are compute-bound, so R realizations cost R passes either way.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .biterrors import derive_seed, inject_bit_errors
from .errors import BadInputError
from .layers import cached_quantization
from .training import resolve_device, top2_margin

Batches = list[tuple[Tensor, Tensor]]


def cache_batches(
    data: DataLoader | Dataset | Batches, device: torch.device, batch_size: int = 1024
) -> Batches:
    """Materialize the test set once on ``device`` so repeated passes cost no data loading."""
    if isinstance(data, list):
        return [(x.to(device), y.to(device)) for x, y in data]
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, shuffle=False)
    return [(x.to(device), y.to(device)) for x, y in loader]


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and :func:`core.layers.cached_quantization` inside; the previous train/eval mode after."""
    was_training = model.training
    model.eval()
    try:
        with cached_quantization(model):
            yield
    finally:
        model.train(was_training)


@torch.no_grad()
def _count_correct(model: nn.Module, batches: Batches) -> tuple[int, int]:
    correct = torch.zeros((), dtype=torch.int64, device=batches[0][0].device if batches else "cpu")
    total = 0
    for x, y in batches:
        correct += (model(x).argmax(dim=-1) == y).sum()
        total += y.shape[0]
    return int(correct), total


def evaluate_accuracy(
    model: nn.Module, data: DataLoader | Dataset | Batches, device: str | None = None
) -> float:
    """Fraction of correctly classified samples, the model in eval mode, without any bit errors."""
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    batches = cache_batches(data, dev)
    with _evaluating(model):
        correct, total = _count_correct(model, batches)
    return correct / max(total, 1)


@torch.no_grad()
def margin_statistics(
    model: nn.Module, data: DataLoader | Dataset | Batches, device: str | None = None
) -> dict:
    """Test-set logit margins ``top1 - top2`` (eval mode): mean, std, quantiles, and the mean over correctly
    and wrongly classified samples. Also returns the raw per-sample margins under ``"margins"``."""
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    batches = cache_batches(data, dev)
    margins, right = [], []
    with _evaluating(model):
        for x, y in batches:
            logits = model(x)
            margins.append(top2_margin(logits).float().cpu())
            right.append((logits.argmax(dim=-1) == y).cpu())
    m = torch.cat(margins)
    ok = torch.cat(right)
    q = torch.quantile(m, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]))
    return {
        "mean": float(m.mean()),
        "std": float(m.std()) if m.numel() > 1 else 0.0,
        "p05": float(q[0]),
        "p25": float(q[1]),
        "median": float(q[2]),
        "p75": float(q[3]),
        "p95": float(q[4]),
        "mean_correct": float(m[ok].mean()) if ok.any() else math.nan,
        "mean_wrong": float(m[~ok].mean()) if (~ok).any() else math.nan,
        "margins": m.tolist(),
    }


def realization_seed(seed: int, rep: int) -> int:
    """Seed of repetition ``rep`` of a sweep with seed ``seed`` (independent of the BER and the model)."""
    return derive_seed(seed, rep)


@dataclass
class BerSummary:
    """Accuracy at one BER over the repetitions."""

    ber: float
    mean: float
    std: float  # sample std (ddof=1); 0 with one repetition
    min: float
    max: float
    reps: int


@dataclass
class BerSweepResult:
    """Per-realization records and per-BER summaries of a sweep."""

    records: list[dict[str, Any]]  # one per (ber, rep): ber, rep, seed, accuracy
    summary: list[BerSummary]
    seed: int
    p10: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def at(self, ber: float) -> BerSummary:
        """The summary at ``ber`` (exact match)."""
        for s in self.summary:
            if s.ber == ber:
                return s
        raise KeyError(f"BER {ber} was not part of this sweep: {[s.ber for s in self.summary]}")

    def accuracies(self, ber: float) -> list[float]:
        """Per-repetition accuracies at ``ber``, ordered by repetition (for paired comparisons)."""
        return [r["accuracy"] for r in sorted(self.records, key=lambda r: r["rep"]) if r["ber"] == ber]


def summarize(ber: float, accs: Sequence[float]) -> BerSummary:
    """Mean, sample std (ddof=1), min and max of ``accs``."""
    n = len(accs)
    mean = sum(accs) / n
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (n - 1)) if n > 1 else 0.0
    return BerSummary(ber=ber, mean=mean, std=std, min=min(accs), max=max(accs), reps=n)


def _check_sweep_args(bers: Iterable[float], reps: int, p10: float | None) -> list[float]:
    bers = [float(b) for b in bers]
    if not bers:
        raise BadInputError("bers is empty: give at least one bit error rate in [0, 1]")
    for b in [*bers, *([p10] if p10 is not None else [])]:
        if not (math.isfinite(b) and 0.0 <= b <= 1.0):
            raise BadInputError(f"bit error rate {b!r} is not allowed: it must be in [0, 1]")
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise BadInputError(f"reps={reps!r} is not allowed: it must be an integer >= 1")
    return bers


def ber_sweep(
    model: nn.Module,
    data: DataLoader | Dataset | Batches,
    bers: Iterable[float],
    reps: int,
    seed: int,
    p10: float | None = None,
    device: str | None = None,
    *,
    decode: str = "clean",
    only: Collection[str] | None = None,
) -> BerSweepResult:
    """Accuracy under random bit flips in the stored tensors, ``reps`` realizations per BER (see module
    docstring).

    ``bers`` are the ``0 -> 1`` flip probabilities; ``p10`` the ``1 -> 0`` probability (None: symmetric).
    Every tensor in the faulty memory is exposed (each quantized layer's weight, and its bias where the
    protocol stores it there) unless ``only`` names some (:func:`core.biterrors.inject_bit_errors`);
    ``decode`` is the protocol's decode switch (``clean`` or ``reestimated``).
    The model is left exactly as it was (state dict and train/eval mode).
    """
    bers = _check_sweep_args(bers, reps, p10)
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    batches = cache_batches(data, dev)
    records: list[dict[str, Any]] = []
    with _evaluating(model):
        for ber in bers:
            symmetric_zero = ber == 0.0 and (p10 is None or p10 == 0.0)
            clean_acc: float | None = None
            for rep in range(reps):
                rseed = realization_seed(seed, rep)
                if symmetric_zero and clean_acc is not None:
                    acc = clean_acc
                else:
                    with inject_bit_errors(model, ber, rseed, p10=p10, decode=decode, only=only):
                        correct, total = _count_correct(model, batches)
                    acc = correct / max(total, 1)
                    if symmetric_zero:
                        clean_acc = acc
                records.append({"ber": ber, "rep": rep, "seed": rseed, "accuracy": acc})
    summary = [summarize(b, [r["accuracy"] for r in records if r["ber"] == b]) for b in bers]
    return BerSweepResult(records=records, summary=summary, seed=seed, p10=p10, extra={"decode": decode})


def format_sweep_table(result: BerSweepResult) -> str:
    """A plain-text table: BER, mean, std, min (accuracies in percent)."""
    lines = [f"{'BER':>10}  {'mean %':>8}  {'std %':>7}  {'min %':>7}  {'reps':>4}"]
    for s in result.summary:
        lines.append(
            f"{f'{100 * s.ber:.4g}%':>10}  {100 * s.mean:>8.2f}  {100 * s.std:>7.2f}  {100 * s.min:>7.2f}  {s.reps:>4}"
        )
    return "\n".join(lines)
