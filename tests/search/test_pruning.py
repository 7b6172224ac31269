"""The pruning scheduler against a real Optuna SQLite study, driven without Ray (Tune trials stood in for by
objects with the two attributes the scheduler reads: ``config`` and ``trial_id``)."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.schedulers import TrialScheduler

from mcel_search.search.pruning import OptunaPruningScheduler, PruningStoreError
from mcel_search.search.searcher import NUMBER_KEY, ROLE_KEY


@dataclass
class FakeTrial:
    """What the scheduler reads from a Tune trial."""

    number: int
    trial_id: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.trial_id = self.trial_id or f"t{self.number}"
        self.config = {NUMBER_KEY: self.number}


def _scheduler(url: str) -> OptunaPruningScheduler:
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    return OptunaPruningScheduler(pruner, metric="clean_acc", study_name="s-pruning", storage=url)


def _frozen(url: str) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="s-pruning", storage=url)
    return {t.user_attrs["search_number"]: t for t in study.get_trials()}


def test_median_pruning_records_every_report_and_stops_below_the_median(tmp_path, monkeypatch) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sched = _scheduler(url)
    a, b = FakeTrial(0), FakeTrial(1)
    for step, acc in ((1, 0.80), (2, 0.90), (3, 0.92)):
        assert sched.on_trial_result(None, a, {"epoch": step, "clean_acc": acc}) == TrialScheduler.CONTINUE
    sched.on_trial_complete(None, a, {"epoch": 4, "clean_acc": 0.93, "final": True})

    # From here on the scheduler keeps its handle on b's Optuna trial: no study-wide copy per epoch
    # (``study.trials`` deep-copies every trial: ~9 ms per report at 12 trials, more with more).
    def no_copies(self: optuna.Study) -> list:
        raise AssertionError("study.trials read per report")

    assert sched.on_trial_result(None, b, {"epoch": 1, "clean_acc": 0.85}) == TrialScheduler.CONTINUE
    monkeypatch.setattr(optuna.Study, "trials", property(no_copies))
    # median of the completed trial at step 2 is 0.90: 0.89 is below it
    assert sched.on_trial_result(None, b, {"epoch": 2, "clean_acc": 0.89}) == TrialScheduler.STOP
    assert sched.pruned == {"n1"}
    # a finished trial's later results (Tune may deliver one more) are ignored, nothing is written
    assert sched.on_trial_result(None, b, {"epoch": 3, "clean_acc": 0.1}) == TrialScheduler.CONTINUE
    monkeypatch.undo()

    sched.flush(final=True)  # the records are written behind the decisions
    frozen = _frozen(url)
    assert frozen["n0"].state == TrialState.COMPLETE and frozen["n0"].value == pytest.approx(0.93)
    assert frozen["n0"].intermediate_values == {1: 0.80, 2: 0.90, 3: 0.92}
    assert frozen["n1"].state == TrialState.PRUNED
    assert frozen["n1"].intermediate_values == {1: 0.85, 2: 0.89}


def test_a_restarted_scheduler_continues_running_trials_and_skips_finished_ones(tmp_path) -> None:
    """After a driver restart (the scheduler unpickled from Tune's state, or built afresh) a trial that was
    running continues its Optuna record by number, and a trial that finished meanwhile is left alone."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sched = _scheduler(url)
    a, b, c = FakeTrial(0), FakeTrial(1), FakeTrial(2)
    for step in (1, 2):
        sched.on_trial_result(None, a, {"epoch": step, "clean_acc": 0.9})
        sched.on_trial_result(None, b, {"epoch": step, "clean_acc": 0.9})
    sched.on_trial_complete(None, a, {"epoch": 3, "clean_acc": 0.9, "final": True})
    snapshot = pickle.dumps(sched)  # what Tune stores; the live handles are not in it
    # after the snapshot, before the "crash": b finishes
    sched.on_trial_complete(None, b, {"epoch": 3, "clean_acc": 0.95, "final": True})
    sched.flush(final=True)  # a finished trial is written at once (here: waited for)

    for restored in (pickle.loads(snapshot), _scheduler(url)):
        assert restored._trials == {}
        # b finished after the snapshot: storage says so, its replayed result changes nothing
        assert restored.on_trial_result(None, b, {"epoch": 2, "clean_acc": 0.1}) == TrialScheduler.CONTINUE
    restored = _scheduler(url)
    restored.on_trial_result(None, c, {"epoch": 1, "clean_acc": 0.91})
    # c was running at the "crash", its epoch 1 not yet written (a running trial is written every
    # sync_period_s): the resumed trial's first result carries its earlier epochs, as the trainable's does
    again = pickle.loads(pickle.dumps(restored))
    resumed = {"epoch": 2, "clean_acc": 0.92, "backfill": [{"epoch": 1, "clean_acc": 0.91}]}
    assert again.on_trial_result(None, c, resumed) == TrialScheduler.CONTINUE
    again.on_trial_complete(None, c, {"epoch": 3, "clean_acc": 0.93, "final": True})
    again.flush(final=True)

    frozen = _frozen(url)
    assert sorted(frozen) == ["n0", "n1", "n2"]  # no duplicate record for c
    assert frozen["n1"].intermediate_values == {1: 0.9, 2: 0.9} and frozen["n1"].value == pytest.approx(0.95)
    assert frozen["n2"].intermediate_values == {1: 0.91, 2: 0.92}
    assert frozen["n2"].state == TrialState.COMPLETE


def test_the_baseline_is_never_judged_nor_recorded(tmp_path) -> None:
    """The study's CEL baseline runs in the study's Tune run: a result far below every trial's median is
    still CONTINUE, and its end (complete, error, removal) leaves no record in the pruning study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sched = _scheduler(url)
    base = FakeTrial(0, trial_id="base")
    base.config = {"loss": "cel", "logit_scale": 1.0, ROLE_KEY: "baseline"}
    a, b = FakeTrial(0), FakeTrial(1)
    for step, acc in ((1, 0.80), (2, 0.90)):
        assert sched.on_trial_result(None, a, {"epoch": step, "clean_acc": acc}) == TrialScheduler.CONTINUE
    sched.on_trial_complete(None, a, {"epoch": 3, "clean_acc": 0.93, "final": True})
    for step in (1, 2):  # b at the baseline's values would be pruned at step 2
        assert sched.on_trial_result(None, base, {"epoch": step, "clean_acc": 0.1}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, b, {"epoch": 1, "clean_acc": 0.85}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, b, {"epoch": 2, "clean_acc": 0.1}) == TrialScheduler.STOP
    sched.on_trial_complete(None, base, {"epoch": 3, "clean_acc": 0.1, "final": True})
    sched.on_trial_error(None, base)
    sched.on_trial_remove(None, base)
    sched.flush(final=True)
    frozen = _frozen(url)
    assert set(frozen) == {"n0", "n1"} and sched.pruned == {"n1"}
    assert frozen["n1"].intermediate_values == {1: 0.85, 2: 0.1}  # b's own values only


def test_nop_pruner_writes_nothing_per_epoch_and_still_records_the_outcome(tmp_path, monkeypatch) -> None:
    """``pruner: none``: no per-epoch report (no decision could come of it; it cost the driver a SQLite write
    and read per result), but a finished trial is still COMPLETE with its last value, a failed one FAIL."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sched = OptunaPruningScheduler(
        optuna.pruners.NopPruner(), metric="clean_acc", study_name="s-pruning", storage=url
    )

    def no_reports(self: optuna.Trial, value: float, step: int) -> None:
        raise AssertionError("reported to a NopPruner")

    monkeypatch.setattr(optuna.Trial, "report", no_reports)
    a, b = FakeTrial(0), FakeTrial(1)
    for step, acc in ((1, 0.10), (2, 0.05), (3, 0.01)):  # falling: a median pruner would stop it
        assert sched.on_trial_result(None, a, {"epoch": step, "clean_acc": acc}) == TrialScheduler.CONTINUE
        assert sched.on_trial_result(None, b, {"epoch": step, "clean_acc": acc}) == TrialScheduler.CONTINUE
    sched.on_trial_complete(None, a, {"epoch": 4, "clean_acc": 0.5, "final": True})
    sched.on_trial_error(None, b)  # never reported: nothing to tell, and no error
    sched.flush(final=True)
    frozen = _frozen(url)
    assert set(frozen) == {"n0"}
    assert frozen["n0"].state == TrialState.COMPLETE and frozen["n0"].value == pytest.approx(0.5)
    assert frozen["n0"].intermediate_values == {}
    assert sched.pruned == set()


def test_decisions_never_wait_for_the_database_and_records_follow_behind(tmp_path, monkeypatch) -> None:
    """A decision is taken in memory: no RDB write or read per report (at 1,000 running trials one cost
    124 ms on SQLite). A running trial's values reach the RDB study after ``sync_period_s``, a finished
    trial's at once; a database that fails is retried and nothing is lost."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    sched = OptunaPruningScheduler(pruner, study_name="s-pruning", storage=url, sync_period_s=0.5)
    _ = sched.study  # created (and loaded) once, before any report
    calls: list[str] = []
    rdb = optuna.storages.RDBStorage
    for name in ("set_trial_intermediate_value", "get_all_trials", "get_trial"):
        original = getattr(rdb, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(rdb, name, counting)
    trials = [FakeTrial(i) for i in range(20)]
    sched.sync_period_s = 3600.0  # hold the running trials' writes back while the decisions are counted
    for step in (1, 2, 3):
        for t in trials:
            sched.on_trial_result(None, t, {"epoch": step, "clean_acc": 0.5 + 0.01 * t.number})
    assert calls == []  # 60 decisions, not one database call
    assert sched.unwritten == 20

    sched.sync_period_s = 0.5  # the running trials' records follow within the sync period
    deadline = time.monotonic() + 20
    while sched.unwritten and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sched.unwritten == 0
    frozen = _frozen(url)
    assert len(frozen) == 20 and all(f.state == TrialState.RUNNING for f in frozen.values())
    assert frozen["n7"].intermediate_values == pytest.approx({1: 0.57, 2: 0.57, 3: 0.57})

    # the database fails for a while: records wait and are written once it answers
    failing = {"on": True}
    original_tell = optuna.Study.tell

    def tell(self, *args, **kwargs):
        if failing["on"] and self._storage.__class__ is not optuna.storages.InMemoryStorage:
            raise optuna.exceptions.StorageInternalError("database is locked")
        return original_tell(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "tell", tell)
    monkeypatch.setattr("mcel_search.search.sender.BACKOFF_S", (0.05, 0.2))
    sched.on_trial_complete(None, trials[19], {"epoch": 4, "clean_acc": 0.8, "final": True})
    time.sleep(0.5)
    assert sched.unwritten == 1 and _frozen(url)["n19"].state == TrialState.RUNNING
    failing["on"] = False
    sched.flush(final=True)
    assert _frozen(url)["n19"].state == TrialState.COMPLETE and _frozen(url)["n19"].value == pytest.approx(
        0.8
    )
    sched.close()


def test_a_database_that_stays_away_fails_the_final_flush_with_one_line(tmp_path, monkeypatch) -> None:
    """``flush(final=True)`` waits up to the flush timeout and then names the study, the count and the cause."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sched = _scheduler(url)
    _ = sched.study
    original_add = optuna.Study.add_trial

    def add_trial(self, *args, **kwargs):
        if not isinstance(self._storage, optuna.storages.InMemoryStorage):
            raise optuna.exceptions.StorageInternalError("disk I/O error")
        return original_add(self, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "add_trial", add_trial)
    monkeypatch.setattr("mcel_search.search.sender.FLUSH_TIMEOUT_S", 1.0)
    monkeypatch.setattr("mcel_search.search.sender.BACKOFF_S", (0.05, 0.2))
    sched.on_trial_result(None, FakeTrial(0), {"epoch": 1, "clean_acc": 0.9})
    sched.on_trial_complete(None, FakeTrial(0), {"epoch": 2, "clean_acc": 0.9, "final": True})
    with pytest.raises(PruningStoreError, match=r"s-pruning.*1 trial records not written.*disk I/O error"):
        sched.flush(final=True)
    sched.close()
