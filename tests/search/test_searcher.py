"""search/searcher.py on real in-memory Optuna studies, no Ray cluster: the conditional define-by-run space
built from a parsed spec, and ``PruningAwareOptunaSearch`` driven directly the way Tune drives it (suggest,
on_trial_complete): COMPLETE / PRUNED / FAIL, orphan adoption after a driver restart, ``close_orphans``; ``BaselineAlongside``
around it as Tune's search generator drives it."""

from __future__ import annotations

import copy
import math
import pickle
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from mcel_search.search.searcher import (
    NUMBER_KEY,
    ROLE_KEY,
    TUNE_ID_ATTR,
    BaselineAlongside,
    PruningAwareOptunaSearch,
    SearchSpace,
    close_orphans,
)
from mcel_search.search.spec import ParamSpace, SearchSpec, parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: A minimal valid spec (as in tests/search/test_spec.py), searched over MCEL and MHL.
BASE: dict[str, Any] = {
    "name": "t",
    "dataset": "digits",
    "architectures": ["small_cnn"],
    "bits": [4],
    "losses": ["mcel", "mhl"],
    "space": {
        "margin": {"uniform": [0.5, 8]},
        "b": {"choice": [4, 8, 16]},
        "mhl_margin": {"loguniform": [1, 64]},
        "logit_scale": {"loguniform": [0.05, 2]},
    },
    "train": {"epochs": 2},
    "trials_per_arch": 3,
}
STUDY = "t-small_cnn-4b"
METRICS = ["clean_acc", "ber_acc"]
#: Parameters each loss takes (core.losses.loss_params), as the searcher must suggest them.
LOSS_PARAMS = {"cel": set(), "mcel": {"margin", "b"}, "mhl": {"mhl_margin"}}


def spec_with(losses: list[str] | None = None, **space: Any) -> SearchSpec:
    """``BASE`` parsed, with ``losses`` and ``space`` entries replaced (a value ``None`` drops the entry)."""
    data = copy.deepcopy(BASE)
    if losses is not None:
        data["losses"] = losses
    for name, value in space.items():
        if value is None:
            data["space"].pop(name, None)
        else:
            data["space"][name] = value
    return parse_spec(data)


def space_of(spec: SearchSpec) -> SearchSpace:
    return SearchSpace(spec.losses, spec.space)


def ask_many(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[optuna.Trial, dict | None]]:
    study = optuna.create_study(
        directions=["maximize", "maximize"],
        storage=optuna.storages.InMemoryStorage(),
        sampler=optuna.samplers.RandomSampler(seed=seed),
    )
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, space(trial)))
    return out


# ----------------------------------------------------------------------------------- the define-by-run space


def test_spec_space_is_read_as_parsed() -> None:
    spec = spec_with()
    assert spec.space["margin"] == ParamSpace("uniform", low=0.5, high=8.0)
    assert spec.space["mhl_margin"] == ParamSpace("loguniform", low=1.0, high=64.0)
    assert spec.space["b"].values == (4.0, 8.0, 16.0)
    assert spec.losses == ("mcel", "mhl")


def test_conditional_space_suggests_only_the_parameters_of_the_suggested_loss() -> None:
    spec = spec_with(losses=["cel", "mcel", "mhl"])
    asked = ask_many(space_of(spec), 90)
    seen = {"cel": 0, "mcel": 0, "mhl": 0}
    for trial, fixed in asked:
        params = trial.params
        loss = params["loss"]
        seen[loss] += 1
        assert fixed is None  # nothing is fixed in this spec: everything is in trial.params
        assert set(params) == {"loss", "logit_scale", *LOSS_PARAMS[loss]}, params
        if loss == "mcel":
            assert 0.5 <= params["margin"] <= 8.0
            assert params["b"] in (4.0, 8.0, 16.0)
            assert "mhl_margin" not in params
        elif loss == "mhl":
            assert 1.0 <= params["mhl_margin"] <= 64.0
            assert not {"margin", "b"} & set(params)
        assert 0.05 <= params["logit_scale"] <= 2.0
    assert min(seen.values()) >= 10, (
        seen
    )  # every loss was drawn often enough for the checks to mean something


def test_distributions_follow_the_spec_kinds() -> None:
    asked = ask_many(space_of(spec_with()), 40)
    dists: dict[str, Any] = {}
    for trial, _ in asked:
        dists.update(trial.distributions)
    assert dists["loss"] == CategoricalDistribution(("mcel", "mhl"))
    assert dists["margin"] == FloatDistribution(0.5, 8.0, log=False)
    assert dists["b"] == CategoricalDistribution((4.0, 8.0, 16.0))
    assert dists["mhl_margin"] == FloatDistribution(1.0, 64.0, log=True)
    assert dists["logit_scale"] == FloatDistribution(0.05, 2.0, log=True)
    # log-uniform sampling puts about half the draws below the geometric mean sqrt(1 * 64) = 8 (uniform
    # sampling would put ~11%); the bound is loose, the difference is large
    mhl = [
        t.params["mhl_margin"]
        for t, _ in ask_many(space_of(spec_with()), 200, seed=1)
        if "mhl_margin" in t.params
    ]
    assert len(mhl) >= 60
    assert sum(v < 8.0 for v in mhl) / len(mhl) > 0.3


def test_fixed_values_are_returned_not_suggested() -> None:
    # b: a plain number; logit_scale left out: the spec fixes it to 1.0; mhl_margin: a choice of one
    spec = spec_with(b=8, logit_scale=None, mhl_margin={"choice": [16]}, margin={"choice": [1, 2, 4]})
    assert spec.space["b"].fixed == 8.0 and spec.space["logit_scale"].fixed == 1.0
    asked = ask_many(space_of(spec), 40)
    losses = set()
    for trial, fixed in asked:
        loss = trial.params["loss"]
        losses.add(loss)
        if loss == "mcel":
            assert set(trial.params) == {"loss", "margin"}
            assert trial.params["margin"] in (1.0, 2.0, 4.0)
            assert fixed == {"b": 8.0, "logit_scale": 1.0}
        else:
            assert set(trial.params) == {"loss"}
            assert fixed == {"mhl_margin": 16.0, "logit_scale": 1.0}
    assert losses == {"mcel", "mhl"}


def test_a_single_loss_is_fixed_not_suggested() -> None:
    spec = spec_with(losses=["mcel"], mhl_margin=None, logit_scale=2.0)
    for trial, fixed in ask_many(space_of(spec), 10):
        assert set(trial.params) == {"margin", "b"}
        assert fixed == {"loss": "mcel", "logit_scale": 2.0}


def test_search_space_pickles() -> None:
    space = space_of(spec_with())
    clone = pickle.loads(pickle.dumps(space))
    assert clone.losses == space.losses and clone.space == space.space
    a, b = ask_many(space, 5, seed=3), ask_many(clone, 5, seed=3)
    assert [t.params for t, _ in a] == [t.params for t, _ in b]


# ------------------------------------------------------------------------------ PruningAwareOptunaSearch


def make_searcher(
    storage: optuna.storages.BaseStorage | None = None, spec: SearchSpec | None = None, seed: int = 0
) -> PruningAwareOptunaSearch:
    spec = spec or spec_with()
    return PruningAwareOptunaSearch(
        space=space_of(spec),
        metric=list(METRICS),
        mode=["max", "max"],
        sampler=optuna.samplers.RandomSampler(seed=seed),
        storage=storage if storage is not None else optuna.storages.InMemoryStorage(),
        study_name=STUDY,
    )


def frozen(searcher: PruningAwareOptunaSearch, number: int) -> optuna.trial.FrozenTrial:
    return searcher._ot_study.get_trials(deepcopy=False)[number]


def test_study_is_created_with_the_searcher() -> None:
    # a define-by-run space given to __init__: Ray sets the study up at once (no set_search_properties)
    searcher = make_searcher()
    study = searcher._ot_study
    assert study is not None and study.study_name == STUDY
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE] * 2
    assert searcher.set_search_properties(None, None, {}) is False  # the space is kept
    assert study.trials == []


def test_suggest_numbers_configs_and_tags_trials() -> None:
    searcher = make_searcher()
    configs = [searcher.suggest(f"tune-{i}") for i in range(6)]
    assert [c[NUMBER_KEY] for c in configs] == list(range(6))
    for i, config in enumerate(configs):
        trial = frozen(searcher, i)
        assert trial.state == TrialState.RUNNING
        assert trial.user_attrs[TUNE_ID_ATTR] == f"tune-{i}"
        # nothing is fixed in this spec: the config is the trial's parameters and the number
        assert {k: v for k, v in config.items() if k != NUMBER_KEY} == trial.params
        assert set(trial.params) == {"loss", "logit_scale", *LOSS_PARAMS[config["loss"]]}
    # asking again for a known Tune trial gives the same Optuna trial, not a new one
    assert searcher.suggest("tune-0") == configs[0]
    assert len(searcher._ot_study.trials) == 6


def test_suggest_merges_fixed_values_into_the_config() -> None:
    spec = spec_with(losses=["mcel"], mhl_margin=None, b=8, logit_scale=None)
    searcher = make_searcher(spec=spec)
    config = searcher.suggest("a")
    assert config["loss"] == "mcel" and config["b"] == 8.0 and config["logit_scale"] == 1.0
    assert 0.5 <= config["margin"] <= 8.0 and config[NUMBER_KEY] == 0
    assert set(frozen(searcher, 0).params) == {"margin"}


def test_final_result_completes_with_both_values() -> None:
    searcher = make_searcher()
    searcher.suggest("a")
    searcher.on_trial_complete("a", result={"final": True, "clean_acc": 0.9, "ber_acc": 0.8, "epoch": 2})
    trial = frozen(searcher, 0)
    assert trial.state == TrialState.COMPLETE
    assert trial.values == [0.9, 0.8]
    assert searcher._ot_study.best_trials[0].number == 0


def test_result_without_final_is_pruned_without_values() -> None:
    searcher = make_searcher()
    for tid in ("done", "pruned"):
        searcher.suggest(tid)
    searcher.on_trial_complete("done", result={"final": True, "clean_acc": 0.5, "ber_acc": 0.4})
    # stopped by the pruner at epoch 1 with better partial scores: must not enter the Pareto front
    searcher.on_trial_complete("pruned", result={"clean_acc": 0.99, "ber_acc": 0.98, "epoch": 1})
    trial = frozen(searcher, 1)
    assert trial.state == TrialState.PRUNED
    assert trial.values is None
    assert [t.number for t in searcher._ot_study.best_trials] == [0]


def test_final_result_with_a_missing_objective_is_not_completed() -> None:
    searcher = make_searcher()
    for tid in ("nan", "missing"):
        searcher.suggest(tid)
    searcher.on_trial_complete("nan", result={"final": True, "clean_acc": 0.9, "ber_acc": float("nan")})
    searcher.on_trial_complete("missing", result={"final": True, "clean_acc": 0.9})
    for number in (0, 1):
        assert frozen(searcher, number).state == TrialState.PRUNED
        assert frozen(searcher, number).values is None


@pytest.mark.parametrize(
    "result, error",
    [
        (None, True),
        ({"final": True, "clean_acc": 0.9, "ber_acc": 0.8}, True),  # an error wins over a final result
        ({"epoch": 1, "diverged": True, "clean_acc": math.nan, "ber_acc": math.nan}, False),
        ({"diverged": True, "final": True, "clean_acc": 0.9, "ber_acc": 0.8}, False),
    ],
    ids=["error", "error-after-final", "diverged", "diverged-final"],
)
def test_errors_and_divergence_fail(result: dict | None, error: bool) -> None:
    searcher = make_searcher()
    searcher.suggest("a")
    searcher.on_trial_complete("a", result=result, error=error)
    trial = frozen(searcher, 0)
    assert trial.state == TrialState.FAIL
    assert trial.values is None


def test_the_first_word_on_a_trial_is_kept() -> None:
    searcher = make_searcher()
    searcher.suggest("a")
    searcher.on_trial_complete("a", result={"final": True, "clean_acc": 0.7, "ber_acc": 0.6})
    searcher.on_trial_complete("a", error=True)
    assert frozen(searcher, 0).state == TrialState.COMPLETE
    assert frozen(searcher, 0).values == [0.7, 0.6]
    # a trial that the searcher never suggested is ignored (no exception, nothing told)
    searcher.on_trial_complete("unknown", result={"final": True, "clean_acc": 0.1, "ber_acc": 0.1})
    assert len(searcher._ot_study.trials) == 1


def test_orphaned_running_trial_is_adopted_by_the_next_suggest() -> None:
    searcher = make_searcher()
    searcher.suggest("a")
    orphan = searcher._ot_study.ask()  # asked, but no Tune trial knows it (the driver died here)
    assert orphan.number == 1
    config = searcher.suggest("b")
    assert config[NUMBER_KEY] == 1
    assert len(searcher._ot_study.trials) == 2  # adopted, not asked anew
    adopted = frozen(searcher, 1)
    assert adopted.user_attrs[TUNE_ID_ATTR] == "b"
    assert {k: v for k, v in config.items() if k != NUMBER_KEY} == adopted.params
    # with no orphan left, the next trial is a new one
    assert searcher.suggest("c")[NUMBER_KEY] == 2
    searcher.on_trial_complete("b", result={"final": True, "clean_acc": 0.6, "ber_acc": 0.5})
    assert frozen(searcher, 1).state == TrialState.COMPLETE and frozen(searcher, 1).values == [0.6, 0.5]


def test_restarted_driver_adopts_the_lost_trial_with_its_parameters() -> None:
    storage = optuna.storages.InMemoryStorage()
    first = make_searcher(storage)
    lost = first.suggest("lost")  # suggested, then the driver died before Tune saved its state
    first.suggest("done")
    first.on_trial_complete("done", result={"final": True, "clean_acc": 0.8, "ber_acc": 0.7})

    restarted = make_searcher(storage, seed=123)  # same study (load_if_exists), empty Tune-side state
    assert len(restarted._ot_study.trials) == 2
    again = restarted.suggest("lost-again")
    assert again == lost  # same number and the same parameters, not a fresh sample
    assert frozen(restarted, lost[NUMBER_KEY]).user_attrs[TUNE_ID_ATTR] == "lost-again"
    assert restarted.suggest("next")[NUMBER_KEY] == 2
    assert len(restarted._ot_study.trials) == 3


def test_close_orphans_fails_running_trials_outside_the_live_set() -> None:
    searcher = make_searcher()
    for i in range(4):
        searcher.suggest(f"t{i}")
    searcher.on_trial_complete("t0", result={"final": True, "clean_acc": 0.9, "ber_acc": 0.8})
    study = searcher._ot_study
    assert close_orphans(study, {2}, "driver restarted") == 2  # trials 1 and 3
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING, TrialState.FAIL]
    for number in (1, 3):
        assert study.trials[number].user_attrs["closed_reason"] == "driver restarted"
    assert "closed_reason" not in study.trials[2].user_attrs
    assert close_orphans(study, {2}, "again") == 0  # nothing left to close
    assert close_orphans(study, set(), "end") == 1
    assert study.trials[2].state == TrialState.FAIL


# ------------------------------------------------------------------------------------ BaselineAlongside

BASELINE = {"loss": "cel", "logit_scale": 1.0}


def test_the_baseline_is_the_first_trial_and_takes_no_search_slot() -> None:
    searcher = make_searcher()
    alg = BaselineAlongside(searcher, max_concurrent=2, baseline=BASELINE)
    first = alg.suggest("base")
    assert first == {**BASELINE, ROLE_KEY: "baseline"} and NUMBER_KEY not in first
    assert searcher._ot_study.trials == []  # Optuna was not asked
    a, b = alg.suggest("a"), alg.suggest("b")
    assert (a[NUMBER_KEY], b[NUMBER_KEY]) == (0, 1)
    assert alg.suggest("c") is None  # two search trials run: the limit counts them, not the baseline
    alg.on_trial_complete("base", result={"final": True, "clean_acc": 0.9, "ber_acc": 0.5})
    assert alg.suggest("c") is None  # the baseline ending frees no search slot
    assert len(searcher._ot_study.trials) == 2  # and told Optuna nothing
    alg.on_trial_result("base", {"clean_acc": 0.9})  # a late result of the baseline: ignored
    alg.on_trial_complete("a", result={"final": True, "clean_acc": 0.8, "ber_acc": 0.7})
    assert frozen(searcher, 0).state == TrialState.COMPLETE and frozen(searcher, 0).values == [0.8, 0.7]
    c = alg.suggest("c")
    assert c[NUMBER_KEY] == 2 and ROLE_KEY not in c  # only one baseline, ever


def test_which_trial_is_the_baseline_survives_tunes_saved_state() -> None:
    """Tune saves a search wrapper's ``get_state`` with its experiment snapshot and sets it on the restored
    wrapper: the restored one does not hand out a second baseline."""
    alg = BaselineAlongside(make_searcher(), max_concurrent=2, baseline=BASELINE)
    alg.suggest("base")
    alg.suggest("a")
    state = pickle.loads(pickle.dumps(alg.get_state()))
    restored = BaselineAlongside(make_searcher(), max_concurrent=2, baseline=BASELINE)
    restored.set_state(state)
    assert restored.baseline_trial == "base" and restored.live_trials == {"a"}
    config = restored.suggest("b")
    assert ROLE_KEY not in config and NUMBER_KEY in config
