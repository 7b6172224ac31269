"""Tolerable BER (``core.tolerance``): bisection against curves whose crossing is known by hand, and a real
tiny model whose curve is measured densely with the same seeds."""

from __future__ import annotations

import math

import pytest

from mcel_search.core.errors import BadInputError
from mcel_search.core.tolerance import (
    find_tolerable_ber,
    format_tolerable,
    mean_interval,
    model_tolerable_ber,
)

GRID = [0.001, 0.01, 0.1]


def linear(clean: float, slope: float, reps: int = 4, calls: list | None = None):
    """acc(ber) = clean - slope * ber, the same value in every realization (no noise)."""

    def measure(ber: float) -> list[float]:
        if calls is not None:
            calls.append(ber)
        return [clean - slope * ber] * reps

    return measure


def test_bisection_brackets_the_known_crossing_and_shrinks_as_stated() -> None:
    # line = 0.95 - 0.01; acc = 0.95 - 0.5 * ber crosses it at ber* = 0.02 exactly, between grid 0.01 and 0.1
    for iters in (0, 1, 4, 10):
        r = find_tolerable_ber(linear(0.95, 0.5), clean=0.95, grid=GRID, tolerance=1.0, iters=iters)
        assert not r.censored and r.line == pytest.approx(0.94)
        assert r.ber <= 0.02 + 1e-12  # never optimistic
        hi = min(b for b, a in r.measured.items() if sum(a) / len(a) < r.line and b > r.ber)
        assert hi >= 0.02
        assert hi / r.ber == pytest.approx((0.1 / 0.01) ** (1 / 2**iters), rel=1e-9)
        # noise-free: every interval is a point, so the CI crossing is the same bracket
        assert r.ci_low == r.ber and r.ci_high == hi


def test_hand_worked_two_steps() -> None:
    # grid bracket [0.01, 0.1]; mid1 = sqrt(0.001) = 0.0316 (acc 0.9342 < 0.94: hi), mid2 = sqrt(0.01 * 0.0316)
    # = 0.01778 (acc 0.9411 >= 0.94: lo)
    r = find_tolerable_ber(linear(0.95, 0.5), clean=0.95, grid=GRID, iters=2)
    assert r.ber == pytest.approx(math.sqrt(0.01 * math.sqrt(0.01 * 0.1)))
    assert sorted(r.measured) == pytest.approx(sorted([0.001, 0.01, 0.1, math.sqrt(0.001), r.ber]))


def test_censored_when_no_grid_ber_fails_and_below_grid_when_the_first_fails() -> None:
    r = find_tolerable_ber(linear(0.95, 0.01), clean=0.95, grid=GRID, iters=4)
    assert r.censored and r.ber == 0.1 and r.ci_high == math.inf and ">= 10%" in format_tolerable(r)
    assert r.as_metrics()["tolerable_ber_ci_high"] == 0.1 and r.as_metrics()["tolerable_ber_censored"] == 1.0
    # slope 50: crossing at 2e-4, below the smallest grid BER 1e-3: searched down to 1e-3 / 2**4
    r = find_tolerable_ber(linear(0.95, 50.0), clean=0.95, grid=GRID, iters=4)
    assert not r.censored and 0 < r.ber <= 2e-4 and min(r.measured) == pytest.approx(1e-3 / 16)
    # slope 1e4: even 1e-3/16 fails: 0.0 (tolerates less than anything searched)
    r = find_tolerable_ber(linear(0.95, 1e4), clean=0.95, grid=GRID, iters=4)
    assert r.ber == 0.0 and r.ci_low == 0.0


def test_first_crossing_counts_not_a_later_recovery() -> None:
    def measure(ber: float) -> list[float]:
        return [0.5 if 0.005 < ber < 0.05 else 0.95] * 3  # fails in a band, recovers at 0.1

    r = find_tolerable_ber(measure, clean=0.95, grid=GRID, iters=3)
    assert 0.001 <= r.ber <= 0.005 and not r.censored


def test_known_accuracies_are_not_measured_again() -> None:
    calls: list[float] = []
    known = {b: [0.95 - 0.5 * b] * 4 for b in GRID}
    r = find_tolerable_ber(linear(0.95, 0.5, calls=calls), clean=0.95, grid=GRID, iters=3, known=known)
    assert len(calls) == 3 and not set(calls) & set(GRID)
    assert r.ber <= 0.02


def test_noisy_interval_contains_the_true_crossing() -> None:
    """Realization noise of known size around a linear curve: the CI crossing brackets ber* = 0.02."""
    offsets = [-0.004, 0.002, 0.004, -0.002, 0.0, 0.001, -0.001, 0.0]  # mean 0, spread ~0.003

    def measure(ber: float) -> list[float]:
        return [0.95 - 0.5 * ber + o for o in offsets]

    r = find_tolerable_ber(measure, clean=0.95, grid=[0.001, 0.003, 0.01, 0.03, 0.1], iters=6)
    assert r.ci_low <= 0.02 <= r.ci_high
    assert r.ci_low < r.ber < r.ci_high  # noise widens the interval around the point estimate
    mean, low, high = mean_interval(offsets)
    assert mean == pytest.approx(0.0, abs=1e-15) and low < 0 < high


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"tolerance": 0}, "tolerance=0"),
        ({"tolerance": 101}, "tolerance=101"),
        ({"iters": -1}, "iters=-1"),
        ({"iters": 2.5}, "iters=2.5"),
        ({"grid": [0.0]}, "at least one BER > 0"),
    ],
)
def test_bad_arguments(kwargs: dict, needle: str) -> None:
    args = {"measure": linear(0.9, 1.0), "clean": 0.9, "grid": GRID, **kwargs}
    with pytest.raises(BadInputError, match=needle.replace(".", r"\.")):
        find_tolerable_ber(**args)


def test_real_tiny_model_against_a_dense_grid() -> None:
    """small_cnn, 4 bits, digits: the bisection result agrees with the curve measured on 25 log-spaced
    BERs with the same realization seeds (a finer grid than the search ever measures)."""
    from mcel_search.core.data import load_dataset
    from mcel_search.core.evaluation import ber_sweep, cache_batches
    from mcel_search.core.experiment import TrialSpec, run_trial
    from mcel_search.core.training import TrainConfig

    trained = run_trial(
        TrialSpec(arch="small_cnn", loss="cel", bits=4, train=TrainConfig(epochs=3, batch_size=64))
    )
    batches = cache_batches(load_dataset("digits").test, "cpu")
    reps, seed = 6, 11
    grid = [0.001, 0.01, 0.1]
    curve = ber_sweep(trained.model, batches, [0.0, *grid], reps, seed)
    r = model_tolerable_ber(trained.model, batches, grid, reps, seed, tolerance=2.0, iters=6, curve=curve)
    assert r.clean == curve.at(0.0).mean and not r.censored
    dense = [10 ** (-3.5 + 2.5 * i / 24) for i in range(25)]
    means = {b: ber_sweep(trained.model, batches, [b], reps, seed).at(b).mean for b in dense}
    first_fail = min(b for b, m in means.items() if m < r.line)
    # the search measured the same curve: its lower end is within tolerance, the dense crossing is after it
    # (up to the dense grid's spacing, a factor 10**(2.5/24) = 1.27) and inside the CI crossing
    assert sum(r.measured[r.ber]) / reps >= r.line
    assert r.ber <= first_fail * 1.27 + 1e-12
    assert r.ci_low <= first_fail <= r.ci_high * 1.27
    # measured points agree with independent sweeps at the same BER and seed (paired, reproducible)
    mid = next(b for b in r.measured if b not in grid)
    assert r.measured[mid] == ber_sweep(trained.model, batches, [mid], reps, seed).accuracies(mid)
