"""Per-tensor sensitivity: the accuracy a model loses when bit errors hit one stored tensor only.

For every tensor in the faulty memory (:func:`core.biterrors.stored_tensors`: each quantized layer's
weight, and its bias where the protocol stores it there) and every realization ``r < reps``, the tensor
alone is flipped at ``ber`` with exactly the flips it gets in realization ``r`` of a full sweep (seed
``realization_seed(seed, r)``, then the tensor's own derived seed), and the test set is evaluated::

    drop_r(t) = clean_acc - acc_r(t)

The per-realization drops are returned; :func:`mcel_search.analysis.stats.paired_gain` turns them into a
mean with a Student-t interval. Hardware designers read the map to decide which tensors to protect; a
drop that is large for a tensor of a few dozen values (a bias) is the signature of an error model in
which a few flipped bits shift a whole channel.

Cost: ``1 + len(stored tensors) * reps`` passes over the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .biterrors import inject_bit_errors, stored_tensors
from .evaluation import Batches, _count_correct, _evaluating, cache_batches, realization_seed
from .training import resolve_device


@dataclass(frozen=True)
class TensorSensitivity:
    """The accuracies of one tensor's realizations."""

    name: str  # state-dict name, e.g. "features.0.0.bias"
    kind: str  # "weight" or "bias"
    numel: int  # values stored
    bits: int  # bits per value
    clean_acc: float  # accuracy without errors
    accs: tuple[float, ...]  # accuracy with only this tensor flipped, per realization (r = 0..reps-1)

    @property
    def drops(self) -> list[float]:
        """``clean_acc - acc_r`` per realization (fractions)."""
        return [self.clean_acc - a for a in self.accs]


@torch.no_grad()
def sensitivity_map(
    model: nn.Module,
    data: DataLoader | Dataset | Batches,
    ber: float,
    reps: int,
    seed: int,
    *,
    p10: float | None = None,
    decode: str = "clean",
    device: str | None = None,
) -> list[TensorSensitivity]:
    """One :class:`TensorSensitivity` per stored tensor, in module order (module docstring).

    The model is left exactly as it was. Raises BadInputError for a bad ``ber``/``p10``/``decode``, ``reps``
    below 1, or a float model (nothing stored in faulty memory)."""
    from .evaluation import _check_sweep_args

    _check_sweep_args([ber], reps, p10)
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    batches = cache_batches(data, dev)
    out: list[TensorSensitivity] = []
    with _evaluating(model):
        correct, total = _count_correct(model, batches)
        clean = correct / max(total, 1)
        tensors = stored_tensors(model)
        if not tensors:  # the engine's own message
            with inject_bit_errors(model, ber, seed):
                pass
        for t in tensors:
            accs = []
            for rep in range(reps):
                with inject_bit_errors(
                    model,
                    ber,
                    realization_seed(seed, rep),
                    p10=p10,
                    decode=decode,
                    only={t.name},
                    count=False,
                ):
                    correct, total = _count_correct(model, batches)
                accs.append(correct / max(total, 1))
            out.append(TensorSensitivity(t.name, t.kind, t.numel, t.layer.bits, clean, tuple(accs)))
    return out
