"""Rank agreement (analysis.ranking) against scipy and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mcel_search.analysis.ranking import best_kept, spearman, spearman_ci, top_k, topk_overlap


def test_spearman_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 30).astype(float)  # many ties
    y = x + rng.normal(0, 2, 30)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_interval_by_hand() -> None:
    x = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    y = [2, 1, 4, 3, 6, 5, 8, 7, 10, 9]
    r = spearman_ci(x, y)
    rho = 1 - 6 * 10 / (10 * 99)  # sum d^2 = 10 (every pair swapped once): 1 - 6*sum/(n(n^2-1))
    assert r.rho == pytest.approx(rho)
    se = math.sqrt((1 + rho**2 / 2) / 7)
    assert r.low == pytest.approx(math.tanh(math.atanh(rho) - 1.959963984540054 * se))
    assert r.high == pytest.approx(math.tanh(math.atanh(rho) + 1.959963984540054 * se))
    assert r.low < r.rho < r.high <= 1 and r.n == 10
    assert str(r).startswith("+0.94 [")
    short = spearman_ci([1, 2, 3], [1, 2, 3])
    assert math.isnan(short.low) and short.rho == pytest.approx(1.0)
    perfect = spearman_ci([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert perfect.low == perfect.high == pytest.approx(1.0)
    with pytest.raises(ValueError, match="confidence"):
        spearman_ci(x, y, confidence=1.0)


def test_top_k_overlap_and_best_kept_by_hand() -> None:
    full = [0.9, 0.8, 0.7, 0.6, 0.5]
    est = [0.7, 0.9, 0.1, 0.8, 0.2]  # top 2 by est: trials 1, 3; by full: 0, 1
    assert top_k(est, 2) == [1, 3]
    assert topk_overlap(est, full, 2) == 0.5
    assert topk_overlap(est, full, 3) == pytest.approx(2 / 3)  # {1, 3, 0} vs {0, 1, 2}
    assert not best_kept(est, full, 2) and best_kept(est, full, 3)
    assert top_k([1, 1, 1], 2) == [0, 1]  # ties: earlier trial first
    assert topk_overlap(est, full, 99) == 1.0  # k capped at the trial count
    with pytest.raises(ValueError, match="equal length"):
        topk_overlap([1, 2], [1], 1)
    with pytest.raises(ValueError, match="finite"):
        spearman([1, math.nan], [1, 2])
