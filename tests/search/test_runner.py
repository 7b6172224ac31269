"""Pieces of the runner that need no search: the filter on Tune's missing-files warning."""

from __future__ import annotations

import logging


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
