"""Paired comparison (``analysis.stats``): the paired-t interval against hand computations and scipy, its
edge cases (n = 1, zero variance, NaN)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mcel_search.analysis.stats import PairedGain, paired_gain

NAN = float("nan")


def t_quantile_df2(p: float) -> float:
    """Closed form of Student's t quantile for 2 degrees of freedom: (2p - 1) / sqrt(2 p (1 - p))."""
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


# ------------------------------------------------------------------------------------------ paired_gain


def test_paired_gain_hand_computation():
    # d = [1, 2, 3]: mean 2, sd(ddof=1) = sqrt(((-1)^2 + 0 + 1^2) / 2) = 1,
    # t_{0.975, 2} = 0.95 / sqrt(2 * 0.975 * 0.025) = 4.3026527297..., half width = t / sqrt(3).
    t = t_quantile_df2(0.975)
    assert t == pytest.approx(4.302652729911275, rel=1e-9)  # the printed table value
    half = t / math.sqrt(3)
    g = paired_gain([11.0, 22.0, 33.0], [10.0, 20.0, 30.0])
    assert (g.mean, g.n, g.confidence) == (2.0, 3, 0.95)
    assert g.low == pytest.approx(2.0 - half, rel=1e-12)
    assert g.high == pytest.approx(2.0 + half, rel=1e-12)
    assert g.low < 0 < g.high and not g.significant  # half = 2.484 > 2: positive mean, not significant


def test_paired_gain_other_confidence_hand_computation():
    # same d, 90 %: t_{0.95, 2} = 0.9 / sqrt(2 * 0.95 * 0.05) = 2.9199855...
    g = paired_gain([11.0, 22.0, 33.0], [10.0, 20.0, 30.0], confidence=0.90)
    half = t_quantile_df2(0.95) / math.sqrt(3)
    assert (g.low, g.high) == pytest.approx((2.0 - half, 2.0 + half), rel=1e-12)
    assert g.confidence == 0.90


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_paired_gain_matches_scipy_ttest_rel(confidence):
    rng = np.random.default_rng(7)
    base = rng.normal(0.6, 0.05, size=12)
    cand = base + rng.normal(0.01, 0.02, size=12)
    g = paired_gain(cand, base, confidence)
    res = stats.ttest_rel(cand, base)
    if not hasattr(res, "confidence_interval"):  # pragma: no cover - scipy < 1.10
        pytest.skip("scipy lacks TtestResult.confidence_interval")
    ci = res.confidence_interval(confidence_level=confidence)
    assert (g.low, g.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert g.mean == pytest.approx(float(np.mean(cand - base)), rel=1e-12)
    assert g.significant == (res.pvalue < 1 - confidence)


def test_paired_gain_significant_both_ways():
    base = [0.50, 0.70, 0.55, 0.65, 0.60]
    d = [0.04, 0.045, 0.035, 0.042, 0.038]  # mean .04, sd sqrt(58e-6 / 4), all d > 0
    cand = [x + y for x, y in zip(base, d, strict=True)]
    up = paired_gain(cand, base)
    assert up.significant and up.low > 0 and up.mean == pytest.approx(0.04)
    down = paired_gain(base, cand)
    assert down.significant and down.high < 0 and down.mean == pytest.approx(-0.04)
    assert (down.low, down.high) == pytest.approx((-up.high, -up.low))


def test_pairing_reveals_gain_that_unpaired_comparison_misses():
    # each model swings by +-10 points from seed to seed, but the candidate is 2 points better on EVERY seed
    # (plus +-0.1 point noise): the paired interval is far from 0 while an unpaired t-test sees nothing.
    base = np.array([0.50, 0.70, 0.55, 0.65, 0.60, 0.45, 0.75, 0.60])
    noise = 0.001 * np.array([1, -1, 0, 1, -1, 0, 1, -1])
    cand = base + 0.02 + noise
    g = paired_gain(cand, base)
    assert g.significant and g.low > 0.015 and g.high < 0.025
    assert stats.ttest_ind(cand, base).pvalue > 0.5


def test_paired_gain_zero_sd_is_a_point_interval():
    # every d is exactly 0.5 (binary-exact numbers): the interval is the point, significant since != 0.
    g = paired_gain([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])
    assert (g.mean, g.low, g.high, g.significant) == (0.5, 0.5, 0.5, True)
    same = paired_gain([0.3, 0.1, 0.7], [0.3, 0.1, 0.7])
    assert (same.mean, same.low, same.high, same.significant) == (0.0, 0.0, 0.0, False)


@pytest.mark.parametrize(
    ("cand", "base", "kwargs", "match"),
    [
        ([0.1, 0.2, 0.3], [0.1, 0.2], {}, "equal lengths"),
        ([0.1], [0.2], {}, "at least 2"),
        ([], [], {}, "at least 2"),
        ([0.1, NAN], [0.1, 0.2], {}, "finite"),
        ([0.1, 0.2], [0.1, 0.3], {"confidence": 1.0}, "confidence"),
        ([0.1, 0.2], [0.1, 0.3], {"confidence": 0.0}, "confidence"),
    ],
)
def test_paired_gain_errors(cand, base, kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_gain(cand, base, **kwargs)


# ------------------------------------------------------------------------------------- more edge cases


@pytest.mark.parametrize(
    ("cand", "base", "kwargs", "match"),
    [
        ([0.1, 0.2], [0.1, NAN], {}, "finite"),  # NaN on the baseline side too
        ([0.1, math.inf], [0.1, 0.2], {}, "finite"),
        ([0.1, 0.2], [0.1, 0.3], {"confidence": NAN}, "confidence"),
        ([0.1, 0.2], [0.1, 0.3], {"confidence": -0.5}, "confidence"),
    ],
)
def test_paired_gain_more_errors(cand, base, kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_gain(cand, base, **kwargs)


def test_paired_gain_two_pairs_is_the_smallest_interval():
    # n = 2: d = [0, 1], mean .5, sd = sqrt(.5), 1 df: t_{0.975, 1} = tan(pi * (0.975 - 0.5)) = 12.7062...
    g = paired_gain([1.0, 2.0], [1.0, 1.0])
    half = math.tan(math.pi * 0.475) * math.sqrt(0.5) / math.sqrt(2)
    assert (g.mean, g.n) == (0.5, 2)
    assert (g.low, g.high) == pytest.approx((0.5 - half, 0.5 + half), rel=1e-12)
    assert not g.significant


def test_paired_gain_differences_equal_only_up_to_float_noise_take_the_t_branch():
    # 0.3 - 0.1 != 0.5 - 0.3 in binary floating point: not the exact zero-variance case.
    g = paired_gain([0.3, 0.5, 0.7], [0.1, 0.3, 0.5])
    assert g.low < g.high
    assert g.high - g.low < 1e-14
    assert g.significant and g.mean == pytest.approx(0.2)


def test_paired_gain_flattens_and_is_frozen():
    g = paired_gain(np.array([[0.6, 0.7], [0.8, 0.9]]), [0.5, 0.6, 0.7, 0.8])
    assert isinstance(g, PairedGain) and g.n == 4 and (g.mean, g.low, g.high) == pytest.approx((0.1,) * 3)
    with pytest.raises(AttributeError):
        g.mean = 0.0  # type: ignore[misc]


def test_selection_uses_the_same_objects():
    from mcel_search.analysis import selection

    assert selection.paired_gain is paired_gain and selection.PairedGain is PairedGain


def test_mean_ci_halfwidth_matches_scipy_interval():
    import math

    from scipy import stats as sps

    from mcel_search.analysis.stats import mean_ci_halfwidth

    values = [0.81, 0.84, 0.79, 0.88, 0.83, 0.80]
    sd = float(np.std(values, ddof=1))
    low, high = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert mean_ci_halfwidth(sd, len(values)) == pytest.approx((high - low) / 2)
    assert math.isnan(mean_ci_halfwidth(sd, 1)) and math.isnan(mean_ci_halfwidth(float("nan"), 6))
