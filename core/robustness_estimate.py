"""A cheap robustness estimate: accuracy under bit errors predicted from clean margins and a few flips.

The full measurement of ``ber_acc`` runs ``R`` realizations (``objective.reps``, 10 by default) of random
bit flips at the target BER and averages the accuracies. The estimate here costs one clean pass and ``r``
flipped passes (``r`` = 1-3), and uses everything those passes see, not only the argmax.

Definitions, for test samples ``i = 1..N`` with label ``y_i`` and logits ``z_i`` (the model's output):

* signed true-class margin ``m_i = z_i[y_i] - max_{c != y_i} z_i[c]`` (``> 0``: correct; the clean pass);
* under realization ``j`` the flipped logits ``z'_ij`` give ``m'_ij``; the *margin change* is
  ``d_ij = m'_ij - m_i`` (the "shift" the flips cause, per sample);
* the *logit shift* ``s = sqrt(mean_{i,j,c} (z'_ijc - z_ic)^2)``, the RMS change of a logit.

Estimates (all in ``[0, 1]`` except the ratio):

``margin_shift`` (the estimate :func:`margin_shift_estimate` returns as ``value``)
    ``mean_i P_d(m_i + d > 0)``, with ``P_d`` the empirical distribution of *all* ``N * r`` margin changes:
    every clean margin is combined with the shift the flips cause to margins in general, not only with its
    own, which turns ``r`` noisy 0/1 outcomes per sample into a smooth probability. Computed exactly by
    sorting (``O(N r log(N r))``). With ``d = 0`` (BER 0) it is the clean accuracy.
``gauss``
    ``mean_i Phi((m_i + mu_d) / sigma_d)``, ``mu_d``, ``sigma_d`` the mean and std of the ``d_ij``; the
    parametric twin of ``margin_shift`` (``sigma_d = 0``: the fraction of ``m_i + mu_d > 0``).
``frac_above``
    the fraction of samples whose margin exceeds the RMS margin change: ``mean_i [m_i > rms(d)]``.
``ratio``
    ``mean_{i: m_i > 0} m_i / s``: the study's "test MLM / shift" (``docs/results.md``), unbounded.
``flip_acc``
    the mean accuracy of the ``r`` flipped passes: the plain cheap measurement every estimate must beat.

Realizations use their own seed stream, ``derive_seed(derive_seed(seed, ESTIMATE_STREAM), j)``, disjoint
from the full measurement's ``derive_seed(seed, j)``: an estimate validated against the full measurement
does not share its flips. Deterministic given ``seed``; the model is left exactly as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .biterrors import derive_seed, inject_bit_errors
from .errors import BadInputError
from .evaluation import Batches, _evaluating

#: Key of the estimate's realization seed stream (ASCII "est"), mixed into the sweep seed.
ESTIMATE_STREAM = 0x657374
#: Names of the estimates :func:`margin_shift_estimate` returns, in the order its table prints them.
ESTIMATES = ("margin_shift", "gauss", "frac_above", "ratio", "flip_acc")
MAX_ESTIMATE_REPS = 16


def estimate_seed(seed: int, rep: int) -> int:
    """Seed of realization ``rep`` of the estimate of a sweep with seed ``seed``."""
    return derive_seed(derive_seed(seed, ESTIMATE_STREAM), rep)


def true_class_margin(logits: Tensor, target: Tensor) -> Tensor:
    """``z[y] - max_{c != y} z[c]`` per row; ``(N, C), (N,) -> (N,)``, ``C >= 2``."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise BadInputError(f"logits of shape {tuple(logits.shape)}: need (N, C) with C >= 2")
    true = logits.gather(1, target.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, target.view(-1, 1), float("-inf"))
    return true - others.max(dim=1).values


@dataclass(frozen=True)
class RobustnessEstimate:
    """The estimates of one model at one BER from ``reps`` flipped passes (see module docstring)."""

    ber: float
    reps: int
    seed: int
    margin_shift: float
    gauss: float
    frac_above: float
    ratio: float
    flip_acc: float
    logit_shift: float  # s, the RMS logit change
    margin_change_mean: float  # mu_d
    margin_change_std: float  # sigma_d

    @property
    def value(self) -> float:
        """The estimate the product uses (``margin_shift``)."""
        return self.margin_shift

    def as_metrics(self, prefix: str = "ber_acc_est") -> dict[str, float]:
        """``{prefix: margin_shift, prefix_gauss: ..., ..., prefix_logit_shift: s}`` for tracking."""
        out = {prefix: self.margin_shift}
        for name in ESTIMATES[1:]:
            out[f"{prefix}_{name}"] = getattr(self, name)
        out[f"{prefix}_logit_shift"] = self.logit_shift
        return out


def empirical_pass_probability(margins: Tensor, changes: Tensor) -> float:
    """``mean_i P(m_i + d > 0)`` with ``d`` uniform over ``changes`` (ties ``m_i + d = 0`` count as wrong).

    For each ``m_i`` the count of ``d > -m_i`` is ``len(d) - searchsorted(sorted d, -m_i, right=True)``.
    """
    m = margins.double().flatten()
    d = torch.sort(changes.double().flatten()).values
    if m.numel() == 0:
        raise BadInputError("no samples: the estimate needs at least one test sample")
    if d.numel() == 0:
        return float((m > 0).double().mean())
    above = d.numel() - torch.searchsorted(d, -m, right=True)
    return float(above.double().mean() / d.numel())


def gauss_pass_probability(margins: Tensor, mu: float, sigma: float) -> float:
    """``mean_i Phi((m_i + mu) / sigma)``; ``sigma = 0``: ``mean_i [m_i + mu > 0]``."""
    m = margins.double().flatten()
    if sigma <= 0 or not math.isfinite(sigma):
        return float((m + mu > 0).double().mean())
    return float((0.5 * torch.erfc(-(m + mu) / (sigma * math.sqrt(2.0)))).mean())


@torch.no_grad()
def _logits(model: nn.Module, batches: Batches) -> tuple[Tensor, Tensor]:
    out = [model(x).double().cpu() for x, _ in batches]
    labels = [y.cpu() for _, y in batches]
    return torch.cat(out), torch.cat(labels)


def margin_shift_estimate(
    model: nn.Module,
    batches: Batches,
    ber: float,
    reps: int = 2,
    seed: int = 0,
    p10: float | None = None,
    *,
    decode: str = "clean",
) -> RobustnessEstimate:
    """Every estimate of the module docstring from one clean pass and ``reps`` flipped passes at ``ber``.

    ``batches`` is a cached test set (:func:`core.evaluation.cache_batches`); ``p10`` and ``decode`` as in
    :func:`core.evaluation.ber_sweep`. Raises :class:`BadInputError` for a BER outside ``[0, 1]``, ``reps``
    outside ``1..MAX_ESTIMATE_REPS`` or an empty test set.
    """
    if not (isinstance(ber, int | float) and math.isfinite(ber) and 0.0 <= ber <= 1.0):
        raise BadInputError(f"ber={ber!r} is not allowed: a bit error rate in [0, 1]")
    if isinstance(reps, bool) or not isinstance(reps, int) or not 1 <= reps <= MAX_ESTIMATE_REPS:
        raise BadInputError(f"reps={reps!r} is not allowed: an integer in 1..{MAX_ESTIMATE_REPS}")
    if not batches:
        raise BadInputError("no samples: the estimate needs at least one test sample")
    with _evaluating(model):
        clean, labels = _logits(model, batches)
        margins = true_class_margin(clean, labels)
        changes, accs, sq = [], [], 0.0
        for rep in range(reps):
            with inject_bit_errors(model, float(ber), estimate_seed(seed, rep), p10=p10, decode=decode):
                flipped, _ = _logits(model, batches)
            flipped_margins = true_class_margin(flipped, labels)
            changes.append(flipped_margins - margins)
            accs.append(float((flipped_margins > 0).double().mean()))
            sq += float(((flipped - clean) ** 2).mean())
    d = torch.cat(changes)
    mu = float(d.mean())
    sigma = float(d.std()) if d.numel() > 1 else 0.0
    rms_d = float(torch.sqrt((d**2).mean()))
    shift = math.sqrt(sq / reps)
    correct = margins[margins > 0]
    mlm = float(correct.mean()) if correct.numel() else 0.0
    return RobustnessEstimate(
        ber=float(ber),
        reps=reps,
        seed=seed,
        margin_shift=empirical_pass_probability(margins, d),
        gauss=gauss_pass_probability(margins, mu, sigma),
        frac_above=float((margins > rms_d).double().mean()),
        ratio=mlm / shift if shift > 0 else math.inf,
        flip_acc=sum(accs) / reps,
        logit_shift=shift,
        margin_change_mean=mu,
        margin_change_std=sigma,
    )
