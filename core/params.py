"""A scalar hyperparameter with its bound, owned by the thing that uses it.

A loss declares its parameters (:data:`mcel_search.core.losses.MARGIN`, ...), the model its logit scale
(:data:`mcel_search.core.layers.LOGIT_SCALE`); the search spec reads the bounds from them instead of
restating them, so a bound is written once and every layer that checks it says the same thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import BadInputError


@dataclass(frozen=True)
class Param:
    """A real-valued hyperparameter: ``value > low`` (``inclusive=False``) or ``value >= low``, finite.

    ``name`` is what a search spec's ``space``, the ``mcel train`` flags, checkpoints and MLflow params call
    it, unique across everything a search can vary (MCEL's bound ``b`` and MHL's margin are two names, so
    one Optuna distribution never pools two quantities); ``arg`` is the keyword of the constructor that
    takes it (None: the same as ``name``). Infinity is never admitted (``b = inf`` would turn MCEL into
    cross-entropy with an additive margin, eq. 5), nor are bools.
    """

    name: str  # name in specs, CLI flags, checkpoints and MLflow params
    low: float  # lower bound
    inclusive: bool  # True: value >= low; False: value > low
    doc: str  # one line: what it is (help texts)
    arg: str | None = None  # constructor keyword; None: name
    default: float | None = None  # what `mcel train` uses when its flag is not given; None: required

    @property
    def keyword(self) -> str:
        """The constructor keyword (``arg``, else ``name``)."""
        return self.arg or self.name

    @property
    def allowed(self) -> str:
        """What an error line says is allowed, e.g. ``"a finite number >= 0"``."""
        return f"a finite number {'>=' if self.inclusive else '>'} {self.low:g}"

    def admits(self, value: Any) -> bool:
        """Whether ``value`` is a finite real number (not a bool) within the bound."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        return value >= self.low if self.inclusive else value > self.low

    def check(self, value: Any) -> float:
        """``float(value)``, or :class:`BadInputError` naming the parameter, the value and the bound."""
        if not self.admits(value):
            raise BadInputError(f"{self.name}={value!r} is not allowed: it must be {self.allowed}")
        return float(value)
