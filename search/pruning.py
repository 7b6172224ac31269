"""Optuna pruning inside Ray Tune: a ``TrialScheduler`` that asks an Optuna pruner.

Optuna's ``Trial.report``/``should_prune`` raise for multi-objective studies, and Ray's ``OptunaSearch``
hard-codes a ``NopPruner``; so pruning keeps its *own* single-objective study (``<study>-pruning`` in the
same RDB storage, so it survives a driver restart) on one metric the spec names (default ``clean_acc``,
maximized). Every epoch's value is reported at ``step = epoch``; when the pruner says so the scheduler
returns ``STOP``. Finished trials are told COMPLETE with their last value (the pruners compare against
those), stopped ones PRUNED, failed ones FAIL.

Trials are identified by the Optuna number of the search study (``_optuna_number`` in the trial config),
stored as the user attribute ``search_number``, so a trial re-run after a restart continues its record.
Results without the metric (e.g. ``ber_acc`` measured every k epochs) are skipped. With a ``NopPruner``
(``pruner: none``) nothing is reported per epoch: no decision could come of it, and the SQLite write and
read it costs (about half the driver's time per result: ``benchmarks/MEASUREMENTS.md``, "pruning
scheduler") is time every trial waits in ``tune.report``; finished trials are still told COMPLETE / FAIL with their last value.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ..core.errors import BadInputError
from .searcher import NUMBER_KEY

logger = logging.getLogger(__name__)

#: ``mcel.role`` of the scheduler's own Optuna study (``<study>-pruning``), as optuna-dashboard shows it.
INTERNAL_ROLE = "internal: the pruning scheduler's per-epoch values, not a search (the search is <study>)"
KEY_ATTR = "search_number"


def trial_key(trial: Trial) -> str:
    """The identity of a Tune trial across restarts: its search-study number, else its Tune id."""
    number = trial.config.get(NUMBER_KEY)
    return f"n{number}" if number is not None else f"t{trial.trial_id}"


class OptunaPruningScheduler(FIFOScheduler):
    """Stops trials an Optuna pruner would prune, judged on ``metric`` reported at ``step = result[step_key]``."""

    def __init__(
        self,
        pruner: optuna.pruners.BasePruner,
        metric: str = "clean_acc",
        mode: str = "max",
        study_name: str = "pruning",
        storage: str | None = None,
        step_key: str = "epoch",
    ) -> None:
        super().__init__()
        if mode not in ("max", "min"):
            raise BadInputError(f"mode={mode!r} is not allowed: max or min")
        self.pruner = pruner
        self._metric = metric
        self._mode = mode
        self.study_name = study_name
        self.storage = storage
        self.step_key = step_key
        self._study: optuna.Study | None = None
        self._numbers: dict[str, int] = {}
        self._trials: dict[str, optuna.Trial] = {}  # live handles, one per running trial (not pickled)
        self._finished: set[str] = set()
        self.pruned: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_study"] = None
        state["_trials"] = {}
        return state

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # we judge our own metric, whatever the Tuner's

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = optuna.create_study(
                study_name=self.study_name,
                storage=self.storage,
                direction="maximize" if self._mode == "max" else "minimize",
                pruner=self.pruner,
                load_if_exists=True,
            )
            # optuna-dashboard lists this study next to the search's: say what it is
            if self._study.user_attrs.get("mcel.role") != INTERNAL_ROLE:
                self._study.set_user_attr("mcel.role", INTERNAL_ROLE)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self._study.set_metric_names([self._metric])
            for frozen in self._study.get_trials(deepcopy=False):
                key = frozen.user_attrs.get(KEY_ATTR)
                if key is not None:
                    self._numbers[key] = frozen.number
                    if frozen.state.is_finished():
                        self._finished.add(key)
        return self._study

    def _optuna_trial(self, trial: Trial) -> tuple[str, optuna.Trial]:
        """The pruning study's trial of ``trial``: the live handle, else found by number, else a new one.

        The handle is kept for the trial's lifetime: looking a trial up (``study.trials`` copies every
        trial) and wrapping it again cost more than the decision itself; the handle costs nothing.
        """
        key = trial_key(trial)
        ot = self._trials.get(key)
        if ot is not None:
            return key, ot
        study = self.study
        if key not in self._numbers:
            ot = study.ask()
            ot.set_user_attr(KEY_ATTR, key)
            self._numbers[key] = ot.number
        else:
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(
                study._study_id, self._numbers[key]
            )
            ot = optuna.Trial(study, trial_id)
        self._trials[key] = ot
        return key, ot

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        value = result.get(self._metric)
        step = result.get(self.step_key)
        if value is None or step is None or result.get("final"):
            return TrialScheduler.CONTINUE
        _ = self.study  # loading the study (after a restart) marks the trials that finished before it
        if trial_key(trial) in self._finished:
            return TrialScheduler.CONTINUE
        value = float(value)
        if not math.isfinite(value) or isinstance(self.pruner, optuna.pruners.NopPruner):
            return TrialScheduler.CONTINUE
        key, ot = self._optuna_trial(trial)
        ot.report(value, int(step))
        if ot.should_prune():
            logger.info(
                "pruning trial %s at %s=%s (%s=%.4f)", trial, self.step_key, step, self._metric, value
            )
            self.pruned.add(key)
            self._tell(key, TrialState.PRUNED)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _tell(self, key: str, state: TrialState, value: float | None = None) -> None:
        if key in self._finished or key not in self._numbers:
            return
        try:
            if state == TrialState.COMPLETE:
                self.study.tell(self._numbers[key], value, state=state)
            else:
                self.study.tell(self._numbers[key], state=state)
        except Exception as exc:  # already finished in storage
            logger.debug("pruning study tell %s: %s", key, exc)
        self._finished.add(key)
        self._trials.pop(key, None)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        key = trial_key(trial)
        if key in self._finished:
            return
        value = result.get(self._metric) if result else None
        if result and result.get("diverged"):
            self._tell(key, TrialState.FAIL)
        elif result and result.get("final") and value is not None and math.isfinite(float(value)):
            if key not in self._numbers:
                self._optuna_trial(trial)
            self._tell(key, TrialState.COMPLETE, float(value))
        else:
            self._tell(key, TrialState.PRUNED)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._tell(trial_key(trial), TrialState.FAIL)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._tell(trial_key(trial), TrialState.PRUNED)

    def debug_string(self) -> str:
        return f"OptunaPruningScheduler({type(self.pruner).__name__} on {self._metric}, pruned {len(self.pruned)})"
