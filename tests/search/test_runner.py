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
