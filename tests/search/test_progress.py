"""The compact progress view (search.progress) fed by hand-made Tune events; the ETA by its formula."""

from __future__ import annotations

import io
import pickle
from types import SimpleNamespace

import pytest

from mcel_search.search import progress as progress_mod
from mcel_search.search.progress import SearchProgress, trial_label
from mcel_search.search.searcher import NUMBER_KEY


def trial(tid: str, number: int, **config) -> SimpleNamespace:
    return SimpleNamespace(
        trial_id=tid, config={NUMBER_KEY: number, "loss": "mcel", **config}, last_result={}
    )


def test_trial_label() -> None:
    assert trial_label({NUMBER_KEY: 3, "loss": "mcel", "margin": 8.0, "b": 16, "logit_scale": 1.0}) == (
        "#3 mcel m=8 b=16 s=1"
    )
    assert trial_label({"loss": "cel", "logit_scale": 0.5}) == "baseline cel s=0.5"


@pytest.fixture()
def clock(monkeypatch):
    """A controllable time.monotonic for the view."""
    now = [1000.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: now[0])
    return now


def test_log_mode_lines_counts_and_eta(clock) -> None:
    out = io.StringIO()
    view = SearchProgress(
        "s", total=4, epochs=10, concurrency=2, target_ber=0.01, stream=out, log_every_s=1e9
    )
    assert view.live is False  # a StringIO is no terminal
    a, b = trial("a", 0, margin=8.0, b=16.0), trial("b", 1, margin=2.0, b=4.0)
    view.on_trial_start(0, [], a)
    view.on_trial_start(0, [], b)
    assert view.eta_seconds() is None  # nothing measured yet
    clock[0] += 4.0
    view.on_trial_result(0, [], a, {"epoch": 2, "clean_acc": 0.9, "ber_acc": 0.8})  # 2 s per epoch
    clock[0] += 3.0
    view.on_trial_result(0, [], b, {"epoch": 1, "clean_acc": 0.5, "ber_acc": float("nan")})  # 7 s per epoch
    # mean over the two measurements (2 s and 7 s) = 4.5 s per epoch; epochs left: 8 + 9 + 2 trials x 10
    assert view.eta_seconds() == pytest.approx(4.5 * (8 + 9 + 20) / 2)
    a.last_result = {"final": True}
    view.on_trial_complete(0, [], a)
    view.on_trial_complete(0, [], b)  # no final result: pruned
    lines = out.getvalue().splitlines()
    assert "#0 mcel m=8 b=16: started" in lines
    assert "#0 mcel m=8 b=16: done after 2 epochs, clean 90.00%, ber@1% 80.00%" in lines
    assert "#1 mcel m=2 b=4: pruned at epoch 1, clean 50.00%" in lines
    status = view.status_line()
    assert status.startswith("s  2/4 done (1 pruned) · 0 running · best ber@1% 80.00% (#0) · ETA ")
    c = trial("c", 2)
    view.on_trial_start(0, [], c)
    view.on_trial_error(0, [], c)
    assert "(1 pruned, 1 errored)" in view.status_line()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()  # a log holds no control characters


def test_live_mode_draws_bars_and_survives_pickling(clock) -> None:
    out = io.StringIO()
    view = SearchProgress("s", total=2, epochs=3, concurrency=2, target_ber=0.02, stream=out, live=True)
    a = trial("a", 0, margin=1.0, b=4.0)
    view.on_trial_start(0, [], a)
    clock[0] += 1.0
    view.on_trial_result(0, [], a, {"epoch": 1, "clean_acc": 0.75, "ber_acc": 0.5})
    state = pickle.loads(pickle.dumps(view))  # Tune pickles callbacks with the experiment state
    assert state.total == 2 and state._running == {}
    a.last_result = {"final": True}
    view.on_trial_result(0, [], a, {"epoch": 3, "clean_acc": 0.8, "ber_acc": 0.6, "final": True})
    view.on_trial_complete(0, [], a)
    view.on_experiment_end([])
    text = out.getvalue()
    assert "#0 mcel m=1 b=4: done after 3 epochs, clean 80.00%, ber@2% 60.00%" in text
    assert "s  1/2 done · 0 running · best ber@2% 60.00% (#0)" in text
