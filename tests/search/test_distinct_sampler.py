"""``search.distinct_sampler``: no trial of a study repeats another's parameters in a discrete space while an
untried combination remains, for each sampler the product offers; real Optuna studies."""

from __future__ import annotations

import warnings

import optuna
import pytest

from mcel_search.search.distinct_sampler import DistinctSampler, distinct
from mcel_search.search.spec import ParamSpace

CHOICES = {"margin": (1.0, 2.0, 4.0, 8.0, 16.0, 32.0), "b": (4.0, 8.0, 16.0)}  # 18 combinations
SAMPLERS = {
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=4),
}


def _combos(sampler: optuna.samplers.BaseSampler, n: int) -> list[tuple[float, float]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)

        def objective(trial: optuna.Trial) -> tuple[float, float]:
            m = trial.suggest_categorical("margin", list(CHOICES["margin"]))
            b = trial.suggest_categorical("b", list(CHOICES["b"]))
            return -abs(m - 8) - abs(b - 8), m / b  # two objectives, a front TPE and NSGA-II revisit

        study.optimize(objective, n_trials=n)
    return [(t.params["margin"], t.params["b"]) for t in study.trials]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_no_repeats_until_the_space_is_exhausted(name: str) -> None:
    repeats_without = sum(len(c) - len(set(c)) for c in (_combos(SAMPLERS[name](s), 12) for s in range(3)))
    assert repeats_without > 0, "precondition: the bare sampler repeats on this space (else vacuous)"
    for seed in range(3):
        twelve = _combos(DistinctSampler(SAMPLERS[name](seed), CHOICES, seed), 12)
        assert len(set(twelve)) == 12, twelve
        every = _combos(DistinctSampler(SAMPLERS[name](seed), CHOICES, seed), 18)
        assert sorted(set(every)) == sorted((m, b) for m in CHOICES["margin"] for b in CHOICES["b"])
        more = _combos(DistinctSampler(SAMPLERS[name](seed), CHOICES, seed), 20)
        assert len(set(more)) == 18  # then repeats are unavoidable, and nothing fails


def test_same_seed_same_trials_and_new_proposals_pass_through() -> None:
    a = _combos(DistinctSampler(SAMPLERS["tpe"](5), CHOICES, 5), 10)
    assert a == _combos(DistinctSampler(SAMPLERS["tpe"](5), CHOICES, 5), 10)
    bare = _combos(SAMPLERS["tpe"](5), 10)
    first_repeat = next(i for i, c in enumerate(bare) if c in bare[:i])
    assert a[:first_repeat] == bare[:first_repeat]  # unchanged until the bare sampler would repeat


def test_distinct_wraps_only_small_discrete_spaces() -> None:
    base = optuna.samplers.TPESampler(seed=0)
    choice = {"margin": ParamSpace("choice", (1.0, 2.0)), "b": ParamSpace("choice", (4.0, 8.0))}
    wrapped = distinct(base, ("mcel",), {**choice, "logit_scale": ParamSpace("choice", (1.0,))}, 0)
    assert isinstance(wrapped, DistinctSampler)
    assert sorted((c["margin"], c["b"]) for c in wrapped.combos) == [
        (1.0, 4.0),
        (1.0, 8.0),
        (2.0, 4.0),
        (2.0, 8.0),
    ]
    ranged = {**choice, "b": ParamSpace("uniform", low=1.0, high=8.0)}
    assert distinct(base, ("mcel",), ranged, 0) is base  # a continuous parameter: never repeats exactly
    # several losses: a conditional space, CEL (nothing searched) is one combination, MCEL's are 4
    both = distinct(base, ("mcel", "cel"), choice, 0)
    assert isinstance(both, DistinctSampler) and len(both.combos) == 5
    assert {"loss": "cel"} in both.combos and {"loss": "mcel", "margin": 2.0, "b": 8.0} in both.combos
    huge = {
        "margin": ParamSpace("choice", tuple(range(200))),
        "b": ParamSpace("choice", tuple(range(1, 200))),
    }
    assert distinct(base, ("mcel",), huge, 0) is base


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_no_repeats_across_losses_of_a_conditional_space(name: str) -> None:
    """CEL (no parameter searched) and MCEL (margin x b): the search's own define-by-run space; without the
    wrapper CEL is proposed again and again (each time the same network), with it once."""
    from mcel_search.search.searcher import SearchSpace

    space = {
        "margin": ParamSpace("choice", (1.0, 2.0, 4.0)),
        "b": ParamSpace("choice", (4.0, 8.0)),
        "logit_scale": ParamSpace("choice", (1.0,)),
    }
    define = SearchSpace(("cel", "mcel"), space)

    def run(sampler: optuna.samplers.BaseSampler, n: int) -> list[frozenset]:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)

            def objective(trial: optuna.Trial) -> tuple[float, float]:
                define(trial)
                return (1.0 if trial.params["loss"] == "cel" else 0.5), trial.params.get("margin", 0.0)

            study.optimize(objective, n_trials=n)
        return [frozenset(t.params.items()) for t in study.trials]

    bare = [run(SAMPLERS[name](seed), 7) for seed in range(3)]
    assert any(len(c) > len(set(c)) for c in bare), "precondition: the bare sampler repeats here"
    for seed in range(3):
        seven = run(distinct(SAMPLERS[name](seed), ("cel", "mcel"), space, seed), 7)
        assert len(set(seven)) == 7, seven  # the whole space: 1 CEL + 6 MCEL, each once
        assert sum(1 for c in seven if ("loss", "cel") in c) == 1
