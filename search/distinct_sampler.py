"""No repeated trial in a discrete space: a sampler wrapper that steers away from parameters already tried.

Optuna's samplers may propose a combination a study already has (2 of the 12 demo trials were repeats: on
``margin`` x ``b`` choices, TPE and NSGA-II re-propose good points). A repeat costs a full trial and adds no
information, because trials are seeded: the same parameters train the same network.

:class:`DistinctSampler` wraps the configured sampler. It changes nothing while the proposal is new; when
the proposal would complete a combination some trial of the study already has (any state but FAIL), it
takes, with its own seeded random generator, a value that still leaves an untried completion:

* ``sample_independent`` (parameters sampled one at a time, e.g. TPE, random, NSGA-II's first generation):
  each value must leave at least one untried completion of the parameters not sampled yet; the base
  sampler's value is kept whenever it does;
* ``sample_relative`` (several at once, e.g. NSGA-II's crossover): values that leave no untried completion
  are replaced by the matching part of an untried combination; the values returned are remembered, so the
  parameters sampled one at a time afterwards (before those are suggested) complete them to an untried
  combination.

Once every combination has been tried, proposals pass through unchanged (a study larger than its space
repeats). Only fully discrete spaces with one loss are steered (``names`` are its parameters in suggestion
order); with a continuous parameter, or a space of more than :data:`MAX_COMBINATIONS`, the wrapper is not
used (:func:`distinct`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

#: Above this many combinations the space is not steered (enumerating it would cost more than it saves).
MAX_COMBINATIONS = 10_000


class DistinctSampler(BaseSampler):
    """``base`` with repeats of earlier trials' parameters steered away (module docstring)."""

    def __init__(
        self, base: BaseSampler, choices: Mapping[str, Sequence[Any]], seed: int | None = None
    ) -> None:
        self.base = base
        self.choices = {k: tuple(v) for k, v in choices.items()}
        self._rng = np.random.RandomState(seed)
        self._relative: dict[int, dict[str, Any]] = {}  # trial number -> the relative values it will use

    # ---------------------------------------------------------------------------- what the study holds

    def _tried(self, study: Any, trial: Any) -> set[tuple]:
        names = tuple(self.choices)
        tried = set()
        for t in study.get_trials(deepcopy=False):
            if t.number == trial.number or t.state == TrialState.FAIL:
                continue
            if all(n in t.params for n in names):
                tried.add(tuple(t.params[n] for n in names))
        return tried

    def _untried(self, fixed: Mapping[str, Any], tried: set[tuple]) -> list[tuple]:
        """Untried full combinations agreeing with ``fixed``."""
        pools = [(fixed[n],) if n in fixed else self.choices[n] for n in self.choices]
        return [combo for combo in itertools.product(*pools) if combo not in tried]

    # ------------------------------------------------------------------------------------ the sampler

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        params = dict(self.base.sample_relative(study, trial, search_space))
        ours = {n: v for n, v in params.items() if n in self.choices}
        if ours:
            tried = self._tried(study, trial)
            untried = self._untried({}, tried)
            if untried and not self._untried(ours, tried):  # these values complete nothing new: replace them
                combo = dict(zip(self.choices, untried[self._rng.randint(len(untried))], strict=True))
                params.update({n: combo[n] for n in ours})
        self._relative[trial.number] = {n: v for n, v in params.items() if n in self.choices}
        return params

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        value = self.base.sample_independent(study, trial, param_name, param_distribution)
        if param_name not in self.choices:
            return value
        later = self._relative.get(trial.number, {})  # relative values not suggested yet
        known = {**later, **trial.params}
        fixed = {n: known[n] for n in self.choices if n in known and n != param_name}
        tried = self._tried(study, trial)
        if not self._untried(fixed, tried):
            return value  # everything tried already: repeats are unavoidable
        if self._untried({**fixed, param_name: value}, tried):
            return value
        feasible = [v for v in self.choices[param_name] if self._untried({**fixed, param_name: v}, tried)]
        return feasible[self._rng.randint(len(feasible))]

    def before_trial(self, study: Any, trial: Any) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Sequence[float] | None) -> None:
        self._relative.pop(trial.number, None)
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng.seed()


def distinct(
    base: BaseSampler, losses: Sequence[str], space: Mapping[str, Any], seed: int | None
) -> BaseSampler:
    """``base`` wrapped in :class:`DistinctSampler` when the spec's space is fully discrete with one loss
    (its searched parameters: choices of more than one value) and small enough; else ``base`` itself."""
    from ..core.losses import loss_params

    if len(losses) != 1:
        return base
    choices: dict[str, tuple] = {}
    for name in (*loss_params(losses[0]), "logit_scale"):
        p = space.get(name)
        if p is None or p.fixed is not None:
            continue
        if p.kind != "choice":
            return base
        choices[name] = tuple(p.values)
    if not choices or int(np.prod([len(v) for v in choices.values()])) > MAX_COMBINATIONS:
        return base
    return DistinctSampler(base, choices, seed)
