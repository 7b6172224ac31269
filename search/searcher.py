"""Ray Tune's ``OptunaSearch`` taught two things it does not do on its own.

1. **Pruned trials are PRUNED.** Ray's searcher tells Optuna ``COMPLETE`` with the last (partial) scores
   when a scheduler stops a trial early. Our trials put ``final: True`` into the result of their last epoch
   only, so a trial that ends without it and without an error was stopped by the pruner: it is told
   ``PRUNED`` (no values) and so never enters a Pareto front.
2. **Every Optuna trial is accounted for after a driver crash.** Each suggested configuration carries
   ``_optuna_number`` (the Optuna trial number), which the MLflow callback and the pruning scheduler use as
   the trial's identity. If the driver dies after asking Optuna for a trial but before saving Tune's
   experiment state, Optuna holds a RUNNING trial that the restored search does not know: the next trial
   Tune asks for *adopts* such an orphan (same number, same parameters) instead of asking a new one, so
   the study ends with exactly ``trials_per_arch`` trials.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from .spec import ParamSpace

logger = logging.getLogger(__name__)

TUNE_ID_ATTR = "tune_trial_id"
NUMBER_KEY = "_optuna_number"
#: Trial-config key of a trial that is not one of the study's Optuna trials (its value: the role).
ROLE_KEY = "_mcel_role"
BASELINE_ROLE = "baseline"


def is_baseline(config: Mapping[str, Any] | None) -> bool:
    """Whether a trial config is the study's CEL baseline (set by :class:`BaselineAlongside`)."""
    return bool(config) and config.get(ROLE_KEY) == BASELINE_ROLE


class PruningAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells pruned trials as PRUNED and adopts orphaned RUNNING trials."""

    def _orphan(self) -> optuna.trial.FrozenTrial | None:
        known = {t.number for t in self._ot_trials.values()}
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if frozen.number not in known:
                return frozen
        return None

    def suggest(self, trial_id: str) -> dict | None:
        if self._ot_study is not None and trial_id not in self._ot_trials:
            orphan = self._orphan()
            if orphan is not None:
                logger.info("adopting orphaned Optuna trial %d for Tune trial %s", orphan.number, trial_id)
                self._ot_trials[trial_id] = optuna.Trial(self._ot_study, orphan._trial_id)
        params = super().suggest(trial_id)
        if params is None:
            return None
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr(TUNE_ID_ATTR, trial_id)
        return {**params, NUMBER_KEY: ot_trial.number}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        values = None
        if result and not error and result.get("final"):
            values = [result.get(m) for m in self._metric]
            if any(v is None or not math.isfinite(float(v)) for v in values):
                values = None
        if error or (result and result.get("diverged")):
            state = TrialState.FAIL
        elif values is None:
            state = TrialState.PRUNED
        else:
            state = TrialState.COMPLETE
        try:
            if state == TrialState.COMPLETE:
                self._ot_study.tell(ot_trial, values, state=state)
            else:
                self._ot_study.tell(ot_trial, state=state)
        except Exception as exc:  # already told (e.g. after a driver restart): keep the first word
            logger.warning("Optuna tell for trial %d: %s", ot_trial.number, exc)
        self._completed_trials.add(trial_id)


class BaselineAlongside(ConcurrencyLimiter):
    """The study's searcher, limited to ``max_concurrent`` trials, with the CEL baseline as one more trial
    of the same Tune run, next to them instead of before them.

    The first trial Tune asks for is the baseline: ``baseline`` (its config: ``loss: cel``, its logit
    scale) plus ``ROLE_KEY: "baseline"``. It is never an Optuna trial (Optuna is not asked, told or sent
    its results), does not count against ``max_concurrent`` (it is one trial, not a search slot: where the
    cluster has room it runs in one slot more, else it waits for one as any trial) and the pruning
    scheduler and the tracker know it by its role. The Tune run therefore has ``num_samples = trials + 1``.

    Which Tune trial is the baseline is this wrapper's state (``baseline_trial``), saved with Tune's
    experiment snapshot (Tune saves a wrapper's ``get_state``) and so restored with it: a resumed run
    neither repeats nor loses the baseline. A driver killed after the baseline was asked for but before a
    snapshot held it asks again, as for an Optuna trial; the tracker finds its run by key
    (``<study>#baseline``).
    """

    def __init__(self, searcher: Any, max_concurrent: int, baseline: Mapping[str, Any]) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.baseline_config = {**baseline, ROLE_KEY: BASELINE_ROLE}
        self.baseline_trial: str | None = None

    def suggest(self, trial_id: str) -> dict | None:
        if self.baseline_trial is None:
            self.baseline_trial = trial_id
            return dict(self.baseline_config)
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id != self.baseline_trial:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id != self.baseline_trial:
            super().on_trial_complete(trial_id, result=result, error=error)


def close_orphans(study: optuna.Study, live_numbers: set[int], reason: str) -> int:
    """Tell FAIL to RUNNING trials of ``study`` whose number is not in ``live_numbers``; returns how many."""
    closed = 0
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen.number not in live_numbers:
            study._storage.set_trial_user_attr(frozen._trial_id, "closed_reason", reason)
            study.tell(frozen.number, state=TrialState.FAIL)
            closed += 1
    return closed


class SearchSpace:
    """The define-by-run space over the spec's parameters (a class, so Tune can pickle the searcher).

    The loss is suggested only when the spec lists several; then only the parameters that loss takes
    (``core.losses.loss_params``: ``margin`` and ``b`` for mcel, ``mhl_margin`` for mhl) plus
    ``logit_scale`` are suggested: a conditional space. ``space`` is the validated spec's
    (:attr:`~mcel_search.search.spec.SearchSpec.space`), read as it is; a choice of one value is fixed
    (returned, not suggested).
    """

    def __init__(self, losses: tuple[str, ...], space: Mapping[str, ParamSpace]) -> None:
        self.losses = tuple(losses)
        self.space = dict(space)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any] | None:
        from ..core.losses import loss_params

        several = len(self.losses) > 1
        loss = trial.suggest_categorical("loss", list(self.losses)) if several else self.losses[0]
        fixed: dict[str, Any] = {} if several else {"loss": loss}
        for name in (*loss_params(loss), "logit_scale"):
            p = self.space.get(name)
            if p is None:
                continue
            if p.fixed is not None:
                fixed[name] = p.fixed
            elif p.kind == "choice":
                trial.suggest_categorical(name, list(p.values or ()))
            else:
                trial.suggest_float(name, p.low, p.high, log=p.kind == "loguniform")
        return fixed or None
