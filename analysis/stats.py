"""Paired comparison of two models evaluated on the same error realizations: mean difference, Student-t
confidence interval, significance.

Pure numeric functions over sequences of numbers; nothing here knows about trials tables or MLflow
(``selection.py`` feeds them the per-realization accuracies of a selected trial and its CEL baseline).

Why paired: both models are evaluated on the same list of error seeds, so realization ``i`` of one model
and realization ``i`` of the other saw the same bit flips. The per-realization differences ``d_i`` remove
the realization-to-realization noise (4-6 points std on FashionMNIST at BER 1%) that an unpaired
comparison of the two means would carry.

Formulas (:func:`paired_gain`), for ``n`` pairs and confidence level ``c`` in (0, 1)::

    d_i  = candidate_i - baseline_i                              i = 1..n
    mean = (1/n) * sum_i d_i
    sd   = sqrt( sum_i (d_i - mean)^2 / (n - 1) )                (sample std, ddof = 1)
    half = t_{(1+c)/2, n-1} * sd / sqrt(n)                       (t: Student-t quantile, scipy.stats.t.ppf)
    CI   = [mean - half, mean + half]
    significant  <=>  low > 0  or  high < 0                      (the interval excludes 0)

This is the interval of ``scipy.stats.ttest_rel(candidate, baseline).confidence_interval(c)``, and
``significant`` agrees with its two-sided ``pvalue < 1 - c`` (up to float rounding at the boundary).

Edge cases:

- ``n = 1`` (or 0): ``sd`` has ``n - 1 = 0`` degrees of freedom, no interval exists: ``ValueError``
  (no silent "half width 0").
- zero variance, i.e. every ``d_i`` is *exactly* equal (``d_i == d_1`` in floating point): the interval
  is the point ``[d_1, d_1]`` (mean taken as ``d_1``, free of summation rounding), significant iff
  ``d_1 != 0``. ``ttest_rel`` would return NaN here; a deterministic difference is reported as such.
  Differences equal only up to float noise (``0.3 - 0.1`` vs ``0.5 - 0.3``) take the t branch and get a
  tiny but non-zero width.
- NaN or +-inf in either input: ``ValueError`` (a missing realization must not be dropped on one side
  only, which would break the pairing).
- inputs of different lengths, or ``c`` outside the open interval (0, 1): ``ValueError``.

Units are those of the inputs (accuracy fractions when fed accuracies); callers convert to points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..core.errors import BadInputError

__all__ = ["PairedGain", "paired_gain"]


@dataclass(frozen=True)
class PairedGain:
    """Paired mean difference ``candidate - baseline`` with a Student-t confidence interval.

    Units are those of the inputs (accuracy fractions when fed accuracies); ``Selection.summary`` reports
    them in points.
    """

    mean: float  # mean of d_i = candidate_i - baseline_i
    low: float  # lower end of the confidence interval
    high: float  # upper end of the confidence interval
    n: int  # number of paired realizations
    confidence: float  # e.g. 0.95
    significant: bool  # True iff the interval excludes 0 (low > 0 or high < 0)


def paired_gain(
    candidate: Sequence[float], baseline: Sequence[float], confidence: float = 0.95
) -> PairedGain:
    """Paired-t confidence interval of the mean per-realization difference.

    ``d_i = candidate_i - baseline_i``; interval ``mean(d) +- t_{(1+c)/2, n-1} * sd(d, ddof=1) / sqrt(n)``
    (the interval of ``scipy.stats.ttest_rel(candidate, baseline).confidence_interval(c)``). If every
    ``d_i`` is equal the interval is the point ``mean(d)`` (significant iff it is not 0). See the module
    docstring for the edge cases.

    Raises:
        ValueError: lengths differ, fewer than 2 pairs, a non-finite value, or ``confidence`` not in (0, 1).
    """
    cand = np.asarray(candidate, dtype=float).ravel()
    base = np.asarray(baseline, dtype=float).ravel()
    if len(cand) != len(base):
        raise BadInputError(f"paired realizations need equal lengths, got {len(cand)} and {len(base)}")
    n = len(cand)
    if n < 2:
        raise BadInputError(f"need at least 2 paired realizations for a confidence interval, got {n}")
    if not (np.isfinite(cand).all() and np.isfinite(base).all()):
        raise BadInputError("realizations must be finite numbers (got NaN or inf)")
    if not (0.0 < confidence < 1.0):
        raise BadInputError(f"confidence must be in (0, 1), got {confidence}")
    d = cand - base
    mean = float(d.mean())
    if np.all(d == d[0]):
        mean, half = float(d[0]), 0.0  # sd is exactly 0: the interval is the point
    else:
        tq = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1))
        half = tq * float(d.std(ddof=1)) / math.sqrt(n)
    low, high = mean - half, mean + half
    return PairedGain(
        mean=mean,
        low=low,
        high=high,
        n=n,
        confidence=float(confidence),
        significant=bool(low > 0.0 or high < 0.0),
    )


def mean_ci_halfwidth(std: float, n: float, confidence: float = 0.95) -> float:
    """Half-width of the Student-t interval of a mean of ``n`` values with sample std ``std``:
    ``t_{(1+c)/2, n-1} * std / sqrt(n)``; NaN when ``n < 2`` or ``std`` is not finite (no spread known)."""
    if not (math.isfinite(std) and math.isfinite(n)) or n < 2:
        return math.nan
    return float(stats.t.ppf((1.0 + confidence) / 2.0, int(n) - 1)) * std / math.sqrt(int(n))
