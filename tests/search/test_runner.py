"""Pieces of the runner that need no search: the filter on Tune's missing-files warning, Ray's start retry,
the default period of Tune's experiment snapshot."""

from __future__ import annotations

import logging
import os


def test_tunes_missing_files_warning_is_dropped_only_while_the_files_are_off(
    monkeypatch, tune_analysis_messages
) -> None:
    from mcel_search.search.runner import _quiet_missing_trial_files

    log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    _quiet_missing_trial_files()
    _quiet_missing_trial_files()  # idempotent
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    log.warning("Failed to fetch metrics for 2 trial(s):\n- t1: FileNotFoundError(...)")
    log.warning("another warning")
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")  # the user turned the files on
    log.warning("Failed to fetch metrics for 1 trial(s):\n- t2: FileNotFoundError(...)")
    assert tune_analysis_messages == [
        "another warning",
        "Failed to fetch metrics for 1 trial(s):\n- t2: FileNotFoundError(...)",
    ]
    assert sum(type(f).__name__ == "_MissingTrialFilesFilter" for f in log.filters) == 1


def test_local_ray_start_is_retried_once_after_rays_startup_timeout(monkeypatch) -> None:
    """Ray waits a fixed 30 s for its node; on a loaded machine that can pass. A loaded machine cannot be
    made on demand, so ray.init is replaced here (the only stand-in of this file) by one that times out as
    Ray does, to check the retry: once after a start-up timeout, never after another error."""
    import pytest
    import ray

    from mcel_search.search import runner

    calls: list[dict] = []
    outcomes = [Exception("The current node timed out during startup. This could happen because ..."), None]

    def fake_init(**kwargs):
        calls.append(kwargs)
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray, "init", fake_init)
    runner._init_ray(None, 1)
    assert len(calls) == 2 and all(c["address"] == "local" for c in calls)  # never another process's Ray

    calls.clear()
    outcomes[:] = [RuntimeError("port in use"), None]
    with pytest.raises(RuntimeError, match="port in use"):
        runner._init_ray(None, 1)
    assert len(calls) == 1


def test_snapshot_period_is_one_second_up_to_the_bound_and_auto_above() -> None:
    """The bound follows the measured cost (bench_tune_state: 0.34 ms of driver per trial and snapshot):
    at a 1 s period that is 5% of the driver, Tune's own auto target, at ~150 trials."""
    from mcel_search.search.runner import SNAPSHOT_AUTO_ABOVE, snapshot_period

    per_trial_s = 0.34e-3
    assert 0.045 <= SNAPSHOT_AUTO_ABOVE * per_trial_s / 1.0 <= 0.055
    assert snapshot_period(0) == "1"
    assert snapshot_period(13) == "1"
    assert snapshot_period(SNAPSHOT_AUTO_ABOVE) == "1"
    assert snapshot_period(SNAPSHOT_AUTO_ABOVE + 1) == "auto"
    assert snapshot_period(1000) == "auto"


def test_snapshot_period_is_each_searchs_own_and_a_users_value_wins(monkeypatch, caplog) -> None:
    """Not setdefault: a small search after a large one in the same process snapshots every second again;
    a value the user put in the environment is never replaced, whatever the search's size."""
    from mcel_search.search import runner

    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S", raising=False)
    monkeypatch.setattr(runner, "_snapshot_period_set", None)
    with caplog.at_level(logging.INFO, logger="mcel_search.search.runner"):
        assert runner._set_snapshot_period(1001) == "auto"
    assert "period 'auto' for 1001 trials" in caplog.text
    assert runner._set_snapshot_period(13) == "1"
    assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "1"
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "30")  # the user's
    assert runner._set_snapshot_period(1001) == "30"
    assert runner._set_snapshot_period(13) == "30"
    assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "30"
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "auto")  # the user's, equal to a value the rule gives
    assert runner._set_snapshot_period(13) == "auto"
