"""Tolerable bit error rate: the highest BER at which a model's accuracy stays within ``d`` points of clean.

A hardware designer picks a memory's supply voltage or timing from the error rate the model tolerates.
For a tolerance ``d`` (accuracy points, default 1.0) and the clean accuracy ``a0``, the *line* is
``a0 - d/100``; the tolerable BER is the highest BER whose mean accuracy over the shared realizations is on
or above the line.

Search (:func:`find_tolerable_ber`):

1. The sweep's grid (BERs > 0, ascending) gives the bracket: ``lo`` = the last grid BER on or above the
   line before the first one below it, ``hi`` = that first one below. If already the smallest grid BER is
   below the line, ``lo`` = ``smallest / 2**iters`` (searched too); if no grid BER is below the line, the
   tolerable BER is at least the largest grid BER (``censored = True``), and no bisection is run.
2. Bisection on a log scale: ``mid = sqrt(lo * hi)``, measured with the same realization seeds as the grid
   (paired), ``lo = mid`` if its mean is on or above the line, else ``hi = mid``; ``iters`` times. The
   result is ``lo`` (the highest BER *measured* within tolerance, so never optimistic by the search). After
   ``k`` steps ``hi / lo = (hi0 / lo0) ** (1 / 2**k)``.
3. Uncertainty: every measured BER gets a Student-t interval of its mean (``confidence``, over the
   realizations). ``ci_low`` is the highest measured BER up to which every measured BER's interval lies on
   or above the line (surely within tolerance; 0 when none is), ``ci_high`` the lowest measured BER from
   which every interval lies below it (surely outside; ``inf`` when none is). The tolerable BER lies in
   ``[ci_low, ci_high]`` whatever the noise of the realizations; a wide interval says more realizations
   are needed.

The accuracy curve need not be monotone; the bracket is the *first* grid crossing, so a model that
recovers at a higher BER is not credited with it. ``measure(ber)`` must return the accuracies of the
realizations at ``ber`` in realization order (a list of R values in [0, 1]); ``clean`` is the accuracy at
BER 0. Everything is deterministic given ``measure`` (seeded sweeps give seeded results).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .errors import BadInputError

#: Default tolerance, accuracy points below clean.
DEFAULT_TOLERANCE = 1.0
#: Default bisection steps between grid points (each costs one measurement of R realizations).
DEFAULT_ITERS = 4


@dataclass(frozen=True)
class TolerableBer:
    """The tolerable BER of one model at one tolerance, with how it was found."""

    ber: float  # highest measured BER with mean accuracy >= line (0.0: not even the smallest one searched)
    tolerance: float  # points
    clean: float  # accuracy at BER 0, in [0, 1]
    line: float  # clean - tolerance / 100
    ci_low: float  # surely within tolerance up to here (0.0 when no measured BER is)
    ci_high: float  # surely outside from here (inf when no measured BER is)
    censored: bool  # True: no grid BER fell below the line; the tolerable BER is at least `ber`
    measured: dict[float, list[float]] = field(default_factory=dict)  # every BER measured -> accuracies

    def as_metrics(self) -> dict[str, float]:
        """MLflow metrics: ``tolerable_ber`` and its interval (``inf`` written as the largest BER measured)."""
        high = self.ci_high if math.isfinite(self.ci_high) else max(self.measured, default=self.ber)
        return {
            "tolerable_ber": self.ber,
            "tolerable_ber_ci_low": self.ci_low,
            "tolerable_ber_ci_high": high,
            "tolerable_ber_censored": float(self.censored),
        }


def mean_interval(accs: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t interval of the mean of ``accs`` (``low == high == mean`` for
    one value, which carries no spread)."""
    n = len(accs)
    mean = sum(accs) / n
    if n < 2:
        return mean, mean, mean
    from scipy.stats import t

    sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / (n - 1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def check_tolerance(tolerance: float, iters: int) -> None:
    """``tolerance`` in (0, 100] points, ``iters`` an integer in 0..30; BadInputError naming the value."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not (0 < tolerance <= 100):
        raise BadInputError(f"tolerance={tolerance!r} is not allowed: accuracy points in (0, 100]")
    if isinstance(iters, bool) or not isinstance(iters, int) or not (0 <= iters <= 30):
        raise BadInputError(f"tolerable iters={iters!r} is not allowed: an integer in 0..30")


def find_tolerable_ber(
    measure: Callable[[float], Sequence[float]],
    clean: float,
    grid: Sequence[float],
    tolerance: float = DEFAULT_TOLERANCE,
    iters: int = DEFAULT_ITERS,
    confidence: float = 0.95,
    known: dict[float, Sequence[float]] | None = None,
) -> TolerableBer:
    """The tolerable BER (module docstring). ``known`` holds accuracies already measured (e.g. the final
    sweep's curve), reused instead of measuring again; ``measure`` is called only for BERs not in it."""
    check_tolerance(tolerance, iters)
    bers = sorted({float(b) for b in grid if b > 0})
    if not bers:
        raise BadInputError("the tolerable BER needs a grid with at least one BER > 0")
    line = clean - tolerance / 100.0
    measured: dict[float, list[float]] = {float(b): list(a) for b, a in (known or {}).items() if b > 0}

    def mean_at(ber: float) -> float:
        if ber not in measured:
            accs = [float(a) for a in measure(ber)]
            if not accs:
                raise BadInputError(f"no accuracies measured at BER {100 * ber:.3g}%")
            measured[ber] = accs
        return sum(measured[ber]) / len(measured[ber])

    lo, hi, censored = 0.0, math.nan, False
    for ber in bers:
        if mean_at(ber) >= line:
            lo = ber
        else:
            hi = ber
            break
    if math.isnan(hi):
        censored = True
    else:
        if lo == 0.0:  # already the smallest grid BER fails: search below it, down to smallest / 2**iters
            floor = hi / 2.0**iters if iters else 0.0
            if floor > 0 and mean_at(floor) >= line:
                lo = floor
            else:
                iters = 0  # nothing measured within tolerance to bisect from
        for _ in range(iters):
            mid = math.sqrt(lo * hi)
            if mean_at(mid) >= line:
                lo = mid
            else:
                hi = mid
    ci_low, ci_high = 0.0, math.inf
    intervals = sorted((b, mean_interval(a, confidence)) for b, a in measured.items())
    for ber, (_, low, _high) in intervals:  # ascending: surely within while every interval is above
        if low < line:
            break
        ci_low = ber
    for ber, (_, _low, high) in reversed(intervals):  # descending: surely outside while every one is below
        if high >= line:
            break
        ci_high = ber
    return TolerableBer(
        ber=lo,
        tolerance=float(tolerance),
        clean=float(clean),
        line=line,
        ci_low=ci_low,
        ci_high=ci_high,
        censored=censored,
        measured=dict(sorted(measured.items())),
    )


def format_tolerable(result: TolerableBer) -> str:
    """One line: ``tolerable BER 0.42% (within 1 point of clean 97.50%; CI crosses at [0.31%, 0.63%])``."""
    pct = lambda b: f"{100 * b:.3g}%"  # noqa: E731
    high = pct(result.ci_high) if math.isfinite(result.ci_high) else "beyond the grid"
    value = f">= {pct(result.ber)}" if result.censored else pct(result.ber)
    return (
        f"tolerable BER {value} (within {result.tolerance:g} point{'s' if result.tolerance != 1 else ''} of "
        f"clean {100 * result.clean:.2f}%; its CI crosses the line in [{pct(result.ci_low)}, {high}]; "
        f"{len(result.measured)} BERs measured)"
    )


def model_tolerable_ber(
    model,
    batches,
    grid: Sequence[float],
    reps: int,
    seed: int,
    tolerance: float = DEFAULT_TOLERANCE,
    iters: int = DEFAULT_ITERS,
    *,
    p10: float | None = None,
    decode: str = "clean",
    curve=None,
    confidence: float = 0.95,
) -> TolerableBer:
    """:func:`find_tolerable_ber` of a model: every BER is measured with :func:`core.evaluation.ber_sweep`
    at ``reps`` realizations of ``seed`` (the same realization seeds at every BER: paired), ``p10`` and
    ``decode`` as the protocol says. ``curve`` (a :class:`~core.evaluation.BerSweepResult` of the same
    seed and reps, e.g. the trial's final sweep) supplies the clean accuracy and the grid's accuracies
    without measuring them again; its BERs are added to ``grid``."""
    from .evaluation import ber_sweep, evaluate_accuracy

    known: dict[float, list[float]] = {}
    clean: float | None = None
    if curve is not None:
        if curve.seed != seed:
            raise BadInputError(f"the given curve has seed {curve.seed}, not {seed}: its realizations differ")
        for s in curve.summary:
            accs = curve.accuracies(s.ber)
            if len(accs) != reps:
                raise BadInputError(
                    f"the given curve has {len(accs)} realizations at BER {100 * s.ber:g}%, not {reps}"
                )
            if s.ber == 0.0 and (p10 is None or p10 == 0.0):
                clean = accs[0]
            else:
                known[s.ber] = accs
        grid = [*grid, *known]
    if clean is None:
        clean = evaluate_accuracy(model, batches)

    def measure(ber: float) -> list[float]:
        return ber_sweep(model, batches, [ber], reps, seed, p10=p10, decode=decode).accuracies(ber)

    return find_tolerable_ber(measure, clean, grid, tolerance, iters, confidence, known=known)
