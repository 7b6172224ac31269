"""Rank agreement of two measurements of the same trials: Spearman's rho with a confidence interval, top-k
overlap. Used to validate a cheap robustness estimate against the full measurement (``docs/results.md``).

Pure functions over two equal-length sequences ``x`` (the estimate) and ``y`` (the reference), one value
per trial, higher is better.

Formulas:

* ``rho`` = Pearson correlation of the ranks (ties get their average rank), as
  ``scipy.stats.spearmanr``. Undefined (NaN) when either sequence is constant.
* Confidence interval (:func:`spearman_ci`): Fisher's ``z = atanh(rho)`` with the Bonett-Wright standard
  error for Spearman's rho, ``se = sqrt((1 + rho^2 / 2) / (n - 3))``; the interval is
  ``tanh(z -/+ q * se)``, ``q`` the normal quantile of ``(1 + confidence) / 2``. Needs ``n >= 4``;
  ``|rho| = 1`` (within 1e-12) gives the point ``[rho, rho]``.
* ``top-k overlap`` (:func:`topk_overlap`): ``|top_k(x) & top_k(y)| / k``, ``top_k`` the indices of the
  ``k`` largest values, ties broken by trial order (the earlier trial first), so the result is
  deterministic; 1 means the estimate keeps exactly the trials the full measurement would.
* :func:`best_kept`: whether the single best trial by ``y`` is among the top ``k`` by ``x`` -- what a
  pruner that keeps ``k`` trials by the estimate needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


def _pair(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"x and y must be 1-d of equal length, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("x and y must be finite (drop trials without both measurements first)")
    return a, b


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    a, b = _pair(x, y)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's rho of ``n`` pairs with its ``confidence`` interval."""

    rho: float
    low: float
    high: float
    n: int
    confidence: float

    def __str__(self) -> str:
        if math.isnan(self.rho):
            return f"n/a (n = {self.n})"
        return f"{self.rho:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def spearman_ci(x: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> RankCorrelation:
    """``rho`` and its Fisher-z / Bonett-Wright interval (module docstring); NaN bounds when ``n < 4``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r}: must be in (0, 1)")
    rho = spearman(x, y)
    n = len(x)
    if math.isnan(rho) or n < 4:
        return RankCorrelation(rho, math.nan, math.nan, n, confidence)
    if abs(rho) >= 1.0 - 1e-12:  # perfect agreement (up to the rounding of the rank correlation)
        rho = math.copysign(1.0, rho)
        return RankCorrelation(rho, rho, rho, n, confidence)
    z = math.atanh(rho)
    se = math.sqrt((1 + rho**2 / 2) / (n - 3))
    q = float(stats.norm.ppf((1 + confidence) / 2))
    return RankCorrelation(rho, math.tanh(z - q * se), math.tanh(z + q * se), n, confidence)


def top_k(values: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` largest values, ties broken by index (earlier first)."""
    if k < 1:
        raise ValueError(f"k={k!r}: must be >= 1")
    order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))
    return order[:k]


def topk_overlap(x: Sequence[float], y: Sequence[float], k: int) -> float:
    """``|top_k(x) & top_k(y)| / k`` (``k`` capped at the number of trials)."""
    a, b = _pair(x, y)
    k = min(k, a.size)
    return len(set(top_k(list(a), k)) & set(top_k(list(b), k))) / k


def best_kept(x: Sequence[float], y: Sequence[float], k: int) -> bool:
    """Whether the best trial by ``y`` is among the top ``k`` by ``x``."""
    a, b = _pair(x, y)
    return top_k(list(b), 1)[0] in top_k(list(a), min(k, a.size))
