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
repeats). Fully discrete spaces are steered, with one loss or several: with several, ``loss`` is a
parameter too and each loss brings its own (CEL with a fixed logit scale is one combination, MCEL's
margins times bounds are others), so a study of CEL and MCEL does not train the same CEL network twice.
With a continuous parameter, or a space of more than :data:`MAX_COMBINATIONS`, the wrapper is not used
(:func:`distinct`).
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
    """``base`` with repeats of earlier trials' parameters steered away (module docstring).

    ``choices`` is one product of choices (``{"margin": (...), "b": (...)}``) or several, one per branch
    of a conditional space (``[{"loss": ("cel",)}, {"loss": ("mcel",), "margin": (...), "b": (...)}]``):
    the combinations are the union of the branches' products, each a set of (name, value) pairs.
    """

    def __init__(
        self,
        base: BaseSampler,
        choices: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]],
        seed: int | None = None,
    ) -> None:
        self.base = base
        branches = [choices] if isinstance(choices, Mapping) else list(choices)
        self.combos: list[dict[str, Any]] = []
        for branch in branches:
            names = list(branch)
            for values in itertools.product(*(tuple(branch[n]) for n in names)):
                self.combos.append(dict(zip(names, values, strict=True)))
        self.names = tuple(dict.fromkeys(n for branch in branches for n in branch))
        self._values = {n: tuple(dict.fromkeys(c[n] for c in self.combos if n in c)) for n in self.names}
        self._rng = np.random.RandomState(seed)
        self._relative: dict[int, dict[str, Any]] = {}  # trial number -> the relative values it will use

    # ---------------------------------------------------------------------------- what the study holds

    @staticmethod
    def _key(params: Mapping[str, Any]) -> frozenset:
        return frozenset(params.items())

    def _tried(self, study: Any, trial: Any) -> set[frozenset]:
        tried = set()
        for t in study.get_trials(deepcopy=False):
            if t.number == trial.number or t.state == TrialState.FAIL:
                continue
            tried.add(self._key({n: v for n, v in t.params.items() if n in self.names}))
        return tried

    def _untried(self, fixed: Mapping[str, Any], tried: set[frozenset]) -> list[dict[str, Any]]:
        """Untried full combinations agreeing with ``fixed`` (a combination without one of ``fixed``'s
        names, e.g. CEL's for a fixed margin, does not agree)."""
        return [
            c
            for c in self.combos
            if all(n in c and c[n] == v for n, v in fixed.items()) and self._key(c) not in tried
        ]

    # ------------------------------------------------------------------------------------ the sampler

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        params = dict(self.base.sample_relative(study, trial, search_space))
        ours = {n: v for n, v in params.items() if n in self.names}
        if ours:
            tried = self._tried(study, trial)
            if not self._untried(ours, tried):  # these values complete nothing new: replace them
                fitting = [c for c in self._untried({}, tried) if set(ours) <= set(c)]
                if fitting:
                    combo = fitting[self._rng.randint(len(fitting))]
                    params.update({n: combo[n] for n in ours})
        self._relative[trial.number] = {n: v for n, v in params.items() if n in self.names}
        return params

    def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
        value = self.base.sample_independent(study, trial, param_name, param_distribution)
        if param_name not in self.names:
            return value
        later = self._relative.get(trial.number, {})  # relative values not suggested yet
        known = {**later, **trial.params}
        fixed = {n: known[n] for n in self.names if n in known and n != param_name}
        tried = self._tried(study, trial)
        if not self._untried(fixed, tried):
            return value  # everything tried already: repeats are unavoidable
        if self._untried({**fixed, param_name: value}, tried):
            return value
        feasible = [v for v in self._values[param_name] if self._untried({**fixed, param_name: v}, tried)]
        return feasible[self._rng.randint(len(feasible))] if feasible else value

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
    """``base`` wrapped in :class:`DistinctSampler` when the spec's space is fully discrete (its searched
    parameters: choices of more than one value; with several losses, ``loss`` is searched too and each
    loss has its own parameters) and small enough; else ``base`` itself."""
    from ..core.losses import loss_params

    branches: list[dict[str, tuple]] = []
    for loss in losses:
        branch: dict[str, tuple] = {"loss": (loss,)} if len(losses) > 1 else {}
        for name in (*loss_params(loss), "logit_scale"):
            p = space.get(name)
            if p is None or p.fixed is not None:
                continue
            if p.kind != "choice":
                return base
            branch[name] = tuple(p.values)
        branches.append(branch)
    sizes = [int(np.prod([len(v) for v in b.values()])) if b else 1 for b in branches]
    if not any(branches) or sum(sizes) > MAX_COMBINATIONS:
        return base
    return DistinctSampler(base, branches if len(branches) > 1 else branches[0], seed)
