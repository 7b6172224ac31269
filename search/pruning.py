"""Optuna pruning inside Ray Tune: a ``TrialScheduler`` that asks an Optuna pruner.

Optuna's ``Trial.report``/``should_prune`` raise for multi-objective studies, and Ray's ``OptunaSearch``
hard-codes a ``NopPruner``; so pruning keeps its *own* single-objective study (``<study>-pruning`` in the
same RDB storage, so it survives a driver restart) on one metric the spec names (default ``clean_acc``,
maximized). Every epoch's value is reported at ``step = epoch``; when the pruner says so the scheduler
returns ``STOP``. Finished trials are told COMPLETE with their last value (the pruners compare against
those), stopped ones PRUNED, failed ones FAIL.

**Decisions in memory, records written behind.** A decision asks the pruner on an in-memory copy of the
study (``InMemoryStorage``): against SQLite every report was a write plus a read of every running trial,
0.04 ms in memory vs 124 ms on SQLite per decision at 1,000 running trials (``benchmarks/RESULTS.md``,
``load``), and every trial waits for the decision in ``tune.report``. One background thread
(``mcel-pruning-writer``) copies the records to the RDB study: a finished trial at once, its whole record
(intermediate values, state, value) in one transaction (``Study.add_trial``); a running one only with
``sync_period_s`` set (then at most that many seconds late, one write per new value: optuna-dashboard
shows running trials of this internal study only then). A trial that was running when the driver died
is refilled from its backfill instead. :meth:`~OptunaPruningScheduler.flush` writes everything now (the
runner calls it when a Tune run ends). A failed write (the database away) is retried with a doubling
backoff; ``flush(final=True)`` raises the last error if records are still unwritten at its deadline.

**After a driver restart** the in-memory study is rebuilt from the RDB study (finished trials as they were,
running ones with the values written so far), and a resumed trial's first result carries every earlier
epoch (``backfill``, kept in its checkpoint), which fills in what the write-behind had not yet written. A
record is never lost: a trial that finished after the last write is re-run from its checkpoint by Tune
and told again.

Trials are identified by the Optuna number of the search study (``_optuna_number`` in the trial config),
stored as the user attribute ``search_number``, so a trial re-run after a restart continues its record.
The study's CEL baseline (a trial of the same Tune run, :class:`~.searcher.BaselineAlongside`) is never
judged or recorded: it is the reference the trials are compared with, not a candidate. Results without the
metric (e.g. ``ber_acc`` measured every k epochs) are skipped. With a ``NopPruner``
(``pruner: none``) nothing is reported per epoch: no decision could come of it; finished trials are
still told COMPLETE / FAIL with their last value.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ..core.errors import BadInputError
from . import sender
from .searcher import NUMBER_KEY, is_baseline

logger = logging.getLogger(__name__)

#: ``mcel.role`` of the scheduler's own Optuna study (``<study>-pruning``), as optuna-dashboard shows it.
INTERNAL_ROLE = "internal: the pruning scheduler's per-epoch values, not a search (the search is <study>)"
KEY_ATTR = "search_number"


def _record(frozen: optuna.trial.FrozenTrial, key: str) -> optuna.trial.FrozenTrial:
    """A copy of ``frozen`` to add to another study: state, value (when complete), intermediate values, the
    system attributes (e.g. successive halving's rungs) and the trial's key."""
    return optuna.trial.create_trial(
        state=frozen.state,
        value=frozen.value if frozen.state == TrialState.COMPLETE else None,
        intermediate_values=dict(frozen.intermediate_values),
        user_attrs={KEY_ATTR: key},
        system_attrs=dict(frozen.system_attrs),
    )


def trial_key(trial: Trial) -> str:
    """The identity of a Tune trial across restarts: its search-study number, else its Tune id."""
    number = trial.config.get(NUMBER_KEY)
    return f"n{number}" if number is not None else f"t{trial.trial_id}"


class PruningStoreError(RuntimeError):
    """The pruning study's records could not be written to its RDB storage before the deadline."""


class OptunaPruningScheduler(FIFOScheduler):
    """Stops trials an Optuna pruner would prune, judged on ``metric`` reported at ``step = result[step_key]``.

    Args:
        pruner: the Optuna pruner that decides.
        metric, mode: the judged result key and its direction (``max`` or ``min``).
        study_name, storage: the persisted pruning study (``None``: memory only, nothing written).
        step_key: the result key of the step (the epoch).
        sync_period_s: at most this long between writes of a running trial's values (finished: at once).
        write_behind: decide in memory and write behind (the default); ``False`` decides on the RDB study
            itself, a write and a read per report (the design before; kept for the load benchmark).
    """

    #: Default seconds between two writes of a running trial's values to the RDB study (None: a record is
    #: written when its trial finishes; a restart refills running trials from their backfill).
    SYNC_PERIOD_S: float | None = None

    def __init__(
        self,
        pruner: optuna.pruners.BasePruner,
        metric: str = "clean_acc",
        mode: str = "max",
        study_name: str = "pruning",
        storage: str | None = None,
        step_key: str = "epoch",
        sync_period_s: float | None = SYNC_PERIOD_S,
        write_behind: bool = True,
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
        self.sync_period_s = sync_period_s
        self.write_behind = write_behind
        self.pruned: set[str] = set()
        self._init_runtime()

    def _init_runtime(self) -> None:
        """The state that lives in this process only (rebuilt from the RDB study after a restart)."""
        self._memory: optuna.Study | None = None  # where decisions are taken
        self._stored: optuna.Study | None = None  # the RDB study the writer copies records to
        self._trials: dict[str, optuna.Trial] = {}  # live in-memory handles of running trials
        self._mem_ids: dict[str, int] = {}  # key -> in-memory trial id
        self._numbers: dict[str, int] = {}  # key -> trial number in the RDB study
        self._written: dict[str, set[int]] = {}  # key -> steps already in the RDB study
        self._finished: set[str] = set()
        self._dirty: dict[str, float] = {}  # key -> when its record first differed from the RDB one
        self._writing = 0  # keys the writer holds (taken from _dirty, not yet written)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._flush_all = False
        self._closing = False
        self._error: BaseException | None = None
        self._retry_at = 0.0
        self._backoff = sender.BACKOFF_S[0]

    #: Attributes of this process only: not pickled (Tune snapshots its scheduler), rebuilt on first use.
    _RUNTIME = (
        "_memory", "_stored", "_trials", "_mem_ids", "_numbers", "_written", "_finished", "_dirty", "_cond",
        "_writing",
        "_thread", "_flush_all", "_closing", "_error", "_retry_at", "_backoff",
    )  # fmt: skip

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._RUNTIME}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # we judge our own metric, whatever the Tuner's

    # ------------------------------------------------------------------------------------ the studies

    @property
    def study(self) -> optuna.Study:
        """The in-memory study decisions are taken on (built from the RDB study on first use)."""
        if self._memory is None:
            direction = "maximize" if self._mode == "max" else "minimize"
            # the in-memory study has the stored one's name: pruners that hash it (Hyperband's brackets)
            # place a trial as they did before
            if self.storage is not None and not self.write_behind:
                self._memory = optuna.create_study(
                    study_name=self.study_name,
                    storage=self.storage,
                    direction=direction,
                    pruner=self.pruner,
                    load_if_exists=True,
                )
                for frozen in self._memory.get_trials(deepcopy=False):
                    key = frozen.user_attrs.get(KEY_ATTR)
                    if key is not None:
                        self._mem_ids[key] = frozen._trial_id
                        if frozen.state.is_finished():
                            self._finished.add(key)
                return self._memory
            memory = optuna.create_study(study_name=self.study_name, direction=direction, pruner=self.pruner)
            if self.storage is not None:
                stored = optuna.create_study(
                    study_name=self.study_name, storage=self.storage, direction=direction, load_if_exists=True
                )
                # optuna-dashboard lists this study next to the search's: say what it is
                if stored.user_attrs.get("mcel.role") != INTERNAL_ROLE:
                    stored.set_user_attr("mcel.role", INTERNAL_ROLE)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        stored.set_metric_names([self._metric])
                for frozen in stored.get_trials(deepcopy=False):
                    key = frozen.user_attrs.get(KEY_ATTR)
                    if key is None or key in self._numbers:
                        continue
                    number = len(self._mem_ids)  # the in-memory study holds only these, in this order
                    self._numbers[key] = frozen.number
                    self._written[key] = set(frozen.intermediate_values)
                    memory.add_trial(_record(frozen, key))
                    self._mem_ids[key] = memory._storage.get_trial_id_from_study_id_trial_number(
                        memory._study_id, number
                    )
                    if frozen.state.is_finished():
                        self._finished.add(key)
                self._stored = stored
            self._memory = memory
        return self._memory

    def _optuna_trial(self, key: str) -> optuna.Trial:
        """The in-memory trial of ``key``: the live handle, else one on the loaded record, else a new one."""
        ot = self._trials.get(key)
        if ot is not None:
            return ot
        study = self.study
        if key in self._mem_ids:
            ot = optuna.Trial(study, self._mem_ids[key])
        else:
            ot = study.ask()
            ot.set_user_attr(KEY_ATTR, key)
            self._mem_ids[key] = ot._trial_id
        self._trials[key] = ot
        return ot

    # ------------------------------------------------------------------------------------ Tune events

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        value = result.get(self._metric)
        step = result.get(self.step_key)
        if value is None or step is None or result.get("final") or is_baseline(trial.config):
            return TrialScheduler.CONTINUE
        _ = self.study  # loading the study (after a restart) marks the trials that finished before it
        key = trial_key(trial)
        if key in self._finished:
            return TrialScheduler.CONTINUE
        value = float(value)
        if not math.isfinite(value) or isinstance(self.pruner, optuna.pruners.NopPruner):
            return TrialScheduler.CONTINUE
        ot = self._optuna_trial(key)
        if result.get("backfill"):  # a resumed trial's earlier epochs: fill what the record lacks
            known = self.study._storage.get_trial(ot._trial_id).intermediate_values
            for entry in result["backfill"]:
                earlier, earlier_value = entry.get(self.step_key), entry.get(self._metric)
                if (
                    earlier is None
                    or earlier_value is None
                    or int(earlier) >= int(step)
                    or int(earlier) in known
                ):
                    continue
                if math.isfinite(float(earlier_value)):
                    ot.report(float(earlier_value), int(earlier))
        ot.report(value, int(step))
        self._mark_dirty(key)
        if ot.should_prune():
            logger.info(
                "pruning trial %s at %s=%s (%s=%.4f)", trial, self.step_key, step, self._metric, value
            )
            self.pruned.add(key)
            self._tell(key, TrialState.PRUNED)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _tell(self, key: str, state: TrialState, value: float | None = None) -> None:
        if key in self._finished:
            return
        if key not in self._mem_ids and state != TrialState.COMPLETE:
            return  # never reported: nothing to record
        ot = self._optuna_trial(key)
        try:
            if state == TrialState.COMPLETE:
                self.study.tell(ot, value, state=state)
            else:
                self.study.tell(ot, state=state)
        except Exception as exc:  # already finished
            logger.debug("pruning study tell %s: %s", key, exc)
        self._finished.add(key)
        self._trials.pop(key, None)
        self._mark_dirty(key)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        if is_baseline(trial.config):
            return
        _ = self.study
        key = trial_key(trial)
        if key in self._finished:
            return
        value = result.get(self._metric) if result else None
        if result and result.get("diverged"):
            self._tell(key, TrialState.FAIL)
        elif result and result.get("final") and value is not None and math.isfinite(float(value)):
            self._tell(key, TrialState.COMPLETE, float(value))
        else:
            self._tell(key, TrialState.PRUNED)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        if is_baseline(trial.config):
            return
        _ = self.study
        self._tell(trial_key(trial), TrialState.FAIL)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        if is_baseline(trial.config):
            return
        _ = self.study
        self._tell(trial_key(trial), TrialState.PRUNED)

    def debug_string(self) -> str:
        return f"OptunaPruningScheduler({type(self.pruner).__name__} on {self._metric}, pruned {len(self.pruned)})"

    # ------------------------------------------------------------------------------------ write-behind

    @property
    def unwritten(self) -> int:
        """Trials whose record in the RDB study is behind the in-memory one."""
        with self._cond:
            return len(self._dirty) + self._writing

    def _mark_dirty(self, key: str) -> None:
        if self._stored is None:
            return
        with self._cond:
            self._dirty.setdefault(key, time.monotonic())
            self._start_writer()
            if key in self._finished:
                self._cond.notify_all()

    def _start_writer(self) -> None:
        """Start the writer thread unless it runs (the caller holds ``_cond``)."""
        if self._thread is None or not self._thread.is_alive():
            self._closing = False
            self._thread = threading.Thread(target=self._writer, name="mcel-pruning-writer", daemon=True)
            self._thread.start()

    def _due(self, now: float) -> list[str]:
        """Keys to write now: all on a flush, else the finished and those dirty for ``sync_period_s``."""
        if self._flush_all or self._closing:
            return list(self._dirty)
        period = self.sync_period_s
        return [
            k
            for k, t in self._dirty.items()
            if k in self._finished or (period is not None and now - t >= period)
        ]

    def _writer(self) -> None:
        """The background thread: copy due records to the RDB study; back off while it fails; on close,
        write what is left and exit (at once while the database fails)."""
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if now >= self._retry_at:
                        due = self._due(now)
                        if due:
                            break
                        if self._closing:
                            return
                    elif self._closing:
                        return  # closing while the database fails: the records stay unwritten
                    self._cond.wait(timeout=max(0.05, min(1.0, self._retry_at - now)))
            try:
                for key in due:
                    with self._cond:
                        self._dirty.pop(key, None)
                        self._writing += 1
                    try:
                        self._write(key)
                    except Exception:
                        with self._cond:
                            self._dirty.setdefault(key, 0.0)
                        raise
                    finally:
                        with self._cond:
                            self._writing -= 1
            except Exception as exc:  # the database away (or locked): keep the records, retry later
                if self._error is None:
                    logger.warning("pruning study %s: write failed (%s); retrying", self.study_name, exc)
                with self._cond:
                    self._error = exc
                    self._retry_at = time.monotonic() + self._backoff
                    self._backoff = min(self._backoff * 2, sender.BACKOFF_S[1])
                    self._cond.notify_all()
                continue
            with self._cond:
                self._error = None
                self._backoff = sender.BACKOFF_S[0]
                self._retry_at = 0.0
                self._cond.notify_all()

    def _write(self, key: str) -> None:
        """Copy ``key``'s in-memory record (new intermediate values, then a final state) to the RDB study."""
        stored = self._stored
        frozen = self.study._storage.get_trial(self._mem_ids[key])
        if key not in self._numbers:  # a new record: all of it in one transaction
            stored.add_trial(_record(frozen, key))
            self._numbers[key] = stored._storage.get_n_trials(stored._study_id) - 1  # only we add trials
            self._written[key] = set(frozen.intermediate_values)
            return
        trial_id = stored._storage.get_trial_id_from_study_id_trial_number(
            stored._study_id, self._numbers[key]
        )
        handle = optuna.Trial(stored, trial_id)
        written = self._written[key]
        if stored._storage.get_trial(trial_id).state.is_finished():
            return  # finished in storage already (e.g. by an earlier driver)
        for step, value in sorted(frozen.intermediate_values.items()):
            if step not in written:
                handle.report(value, step)
                written.add(step)
        if frozen.state.is_finished():
            if frozen.state == TrialState.COMPLETE:
                stored.tell(self._numbers[key], frozen.value, state=frozen.state)
            else:
                stored.tell(self._numbers[key], state=frozen.state)

    def flush(self, final: bool = False) -> None:
        """Write every unwritten record now and wait for it; with ``final``, wait up to
        :data:`~.sender.FLUSH_TIMEOUT_S` (through outages) and then raise :class:`PruningStoreError`."""
        if self._stored is None or not self.unwritten:
            return
        deadline = time.monotonic() + (sender.FLUSH_TIMEOUT_S if final else 30.0)
        with self._cond:
            self._flush_all = True
            self._start_writer()
            self._cond.notify_all()
            try:
                while (self._dirty or self._writing) and time.monotonic() < deadline:
                    if not final and self._error is not None:
                        break
                    self._cond.notify_all()
                    self._cond.wait(timeout=0.2)
            finally:
                self._flush_all = False
            if (self._dirty or self._writing) and final:
                raise PruningStoreError(
                    f"pruning study {self.study_name!r}: {len(self._dirty) + self._writing} trial records not written to "
                    f"{self.storage!r} ({self._error}); the search's own study and MLflow are complete"
                )

    def close(self) -> None:
        """Write what is left (best effort) and stop the writer thread; idempotent."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread.join(timeout=30.0)
        self._thread = None
