"""The MLflow logger's buffer and sender thread, without a search: calls queue while the server is down,
go out in order, the driver never waits for them, and a final flush gives up with one line."""

from __future__ import annotations

import threading
import time

import pytest

from mcel_search.search.tracking import MlflowTrialLogger


class _FlakyClient:
    """An MLflow client stand-in whose server is down while ``down`` is set."""

    def __init__(self) -> None:
        self.down = True
        self.tags: list[str] = []

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        from mlflow.exceptions import MlflowException

        if self.down:
            raise MlflowException(
                "API request to http://127.0.0.1:1/api/2.0/mlflow/runs/set-tag failed with exception "
                "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded ([Errno 111] Connection refused)"
            )
        if value == "bad":
            raise MlflowException("INVALID_PARAMETER_VALUE: bad tag", error_code="INVALID_PARAMETER_VALUE")
        self.tags.append(value)


def test_mlflow_buffer_keeps_order_never_blocks_and_gives_up_clearly(monkeypatch) -> None:
    """The buffer behind the server-restart test: calls queue while the server is down without blocking the
    driver, go out in order once it is back, a final flush gives up after the timeout with one line, and a
    real error (not an outage) is raised at once."""
    from mcel_search.search import sender, tracking

    class Logger(tracking.MlflowTrialLogger):
        def _tag(self, value: str) -> None:
            self.client.set_tag("run", "k", value)

    log = Logger("http://alice:pw@127.0.0.1:1", "0", "parent", "study", {}, {}, background=False)
    client = _FlakyClient()
    log._client = client
    start = time.monotonic()
    for i in range(50):
        log._enqueue("_tag", str(i))
    assert time.monotonic() - start < 1.0  # one refused attempt, then the backoff: the driver goes on
    assert log.pending == 50 and client.tags == []
    client.down = False
    log.sender._retry_at = 0.0  # the backoff has passed
    log._enqueue("_tag", "50")
    assert client.tags == [str(i) for i in range(51)] and log.pending == 0  # in order, nothing lost
    client.down = True
    log._enqueue("_tag", "51")
    monkeypatch.setattr(sender, "FLUSH_TIMEOUT_S", 0.5)
    with pytest.raises(tracking.TrackingUnavailableError) as info:
        log.flush(final=True)
    text = str(info.value)
    assert len(text.splitlines()) == 1 and "1 MLflow calls unsent" in text and "pw" not in text
    client.down = False
    log.sender._retry_at = 0.0
    with pytest.raises(Exception, match="INVALID_PARAMETER_VALUE"):
        log._enqueue("_tag", "bad")
    assert client.tags[-1] == "51" and log.pending == 0


class _TagLogger(MlflowTrialLogger):
    """A logger with one extra call, ``_tag``: sets tag ``k`` of run ``run`` to the value (module level:
    the background test pickles it, as Tune does with its callbacks)."""

    def _tag(self, value: str) -> None:
        self.client.set_tag("run", "k", value)


def test_mlflow_background_sender_keeps_order_and_surfaces_errors_in_the_driver(monkeypatch) -> None:
    """The default mode: one sender thread sends the calls while the driver thread only appends. Events
    return at once even while every call is slow or the server is down; the calls arrive in order; a final
    flush waits for them (or gives up after the timeout with the one-line error); a real error raised in
    the thread comes out of the driver's next event; close() stops the thread; the logger still pickles
    (Tune snapshots its callbacks) and works again after unpickling."""
    import pickle

    from mcel_search.search import sender, tracking

    class SlowClient(_FlakyClient):
        def set_tag(self, run_id: str, key: str, value: str) -> None:
            assert threading.current_thread().name == "mcel-mlflow-sender"  # never the driver thread
            time.sleep(0.02)
            super().set_tag(run_id, key, value)

    log = _TagLogger("http://alice:pw@127.0.0.1:1", "0", "parent", "study", {}, {})
    assert log.background
    client = SlowClient()
    client.down = False
    log._client = client
    start = time.monotonic()
    for i in range(20):
        log._enqueue("_tag", str(i))
    assert time.monotonic() - start < 0.2  # 20 calls of 20 ms each: the driver did not wait for them
    log.flush(final=True)
    assert client.tags == [str(i) for i in range(20)] and log.pending == 0

    client.down = True  # an outage: the sender backs off, the driver goes on
    for i in range(20, 25):
        log._enqueue("_tag", str(i))
    log.flush()  # without final: returns once the sender backs off
    assert log.pending == 5 and client.tags[-1] == "19"
    monkeypatch.setattr(sender, "FLUSH_TIMEOUT_S", 0.3)
    with pytest.raises(tracking.TrackingUnavailableError) as info:
        log.flush(final=True)
    assert "5 MLflow calls unsent" in str(info.value) and "pw" not in str(info.value)
    client.down = False
    log.sender._retry_at = 0.0
    monkeypatch.setattr(sender, "FLUSH_TIMEOUT_S", 30.0)
    log.flush(final=True)
    assert client.tags == [str(i) for i in range(25)] and log.pending == 0  # nothing lost, in order

    log._enqueue("_tag", "bad")  # fails in the thread ...
    deadline = time.monotonic() + 10
    while (log.pending or log.sender._busy) and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(Exception, match="INVALID_PARAMETER_VALUE"):
        log._enqueue("_tag", "26")  # ... and is raised in the driver at its next event, which is kept
    log.flush(final=True)
    assert client.tags[-1] == "26"
    log._enqueue("_tag", "bad")
    with pytest.raises(Exception, match="INVALID_PARAMETER_VALUE"):
        log.flush(final=True)  # or at a flush
    thread = log.sender._thread
    log.close()
    assert thread is not None and not thread.is_alive()

    clone = pickle.loads(pickle.dumps(log))
    assert clone.sender._thread is None and clone.pending == 0 and clone.background
    clone._client = client
    clone._enqueue("_tag", "27")
    clone.flush(final=True)
    clone.close()
    assert client.tags[-1] == "27"


def test_a_resumed_trial_backfills_epochs_a_dead_driver_never_delivered(tmp_path) -> None:
    """The driver received epochs 1-2 of a trial but died having delivered only epoch 1 to MLflow; the
    resumed trial's first result (epoch 3) carries epochs 1-2 as ``backfill``: the new driver's logger
    logs epoch 2 from it, skips epoch 1 (already there) and logs epoch 3, each exactly once."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from mcel_search.search.searcher import NUMBER_KEY

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("backfill")
    parent = client.create_run(exp, run_name="parent").info.run_id
    trial = SimpleNamespace(trial_id="t0", config={NUMBER_KEY: 0, "loss": "cel", "logit_scale": 1.0})

    def logger() -> MlflowTrialLogger:
        return MlflowTrialLogger(uri, exp, parent, "study", {"arch": "a", "bits": "4"}, {}, background=False)

    epochs = {e: {"epoch": e, "train_loss": 1.0 / e, "clean_acc": 0.5 + e / 10} for e in (1, 2, 3)}
    first = logger()
    first._trial_result(trial, epochs[1])  # delivered; epoch 2 was received but never delivered
    second = logger()  # the resumed search's driver: no state, the run found by its key
    second._trial_result(trial, {**epochs[3], "start_epoch": 2, "backfill": [epochs[1], epochs[2]]})
    run_id = first.run_id(trial)
    assert second.run_id(trial) == run_id
    for key in ("train_loss", "clean_acc", "epoch"):
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3], (key, history)
    got = {m.step: m.value for m in client.get_metric_history(run_id, "clean_acc")}
    assert got == pytest.approx({e: 0.5 + e / 10 for e in (1, 2, 3)})


def test_the_baseline_trial_of_a_study_run_is_tracked_as_the_baseline(tmp_path) -> None:
    """One logger serves a study's Tune run, its CEL baseline included: that trial (known by its config) is
    ``mcel.role=baseline`` with the key ``<study>#baseline``, the one a baseline run of its own had, so a
    search begun that way finds its run again; the study's trials stay ``trial``."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from mcel_search.search.searcher import NUMBER_KEY, ROLE_KEY

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("roles")
    parent = client.create_run(exp, run_name="parent").info.run_id
    tags = {"arch": "a", "bits": "4"}
    base = SimpleNamespace(trial_id="b0", config={"loss": "cel", "logit_scale": 1.0, ROLE_KEY: "baseline"})
    trial = SimpleNamespace(trial_id="t0", config={NUMBER_KEY: 0, "loss": "mcel", "margin": 2.0, "b": 4.0})
    study_logger = MlflowTrialLogger(uri, exp, parent, "study", tags, {}, background=False)
    base_run, trial_run = study_logger.run_id(base), study_logger.run_id(trial)
    got = {r: client.get_run(r).data.tags for r in (base_run, trial_run)}
    assert got[base_run]["mcel.role"] == "baseline" and got[base_run]["mcel.trial_key"] == "study#baseline"
    assert "mcel.optuna_number" not in got[base_run]
    assert client.get_run(base_run).info.run_name == "a-4b-cel-baseline"
    assert got[trial_run]["mcel.role"] == "trial" and got[trial_run]["mcel.trial_key"] == "study#n0"
    old_style = SimpleNamespace(trial_id="b1", config={"loss": "cel", "logit_scale": 1.0})
    separate = MlflowTrialLogger(uri, exp, parent, "study", tags, {}, role="baseline", background=False)
    assert separate.run_id(old_style) == base_run


def test_a_runs_start_and_end_are_the_trials_not_when_the_calls_were_sent(tmp_path, monkeypatch) -> None:
    """MLflow's start and end time of a trial's run are taken at Tune's start and end events in the
    driver; the calls that carry them may reach the server much later (the sender queue)."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from mcel_search.search import tracking
    from mcel_search.search.searcher import NUMBER_KEY

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("times")
    parent = client.create_run(exp, run_name="parent").info.run_id
    trial = SimpleNamespace(
        trial_id="t0",
        config={NUMBER_KEY: 0, "loss": "cel", "logit_scale": 1.0},
        last_result={"epoch": 1, "clean_acc": 0.5},
        checkpoint=None,
    )
    lg = MlflowTrialLogger(uri, exp, parent, "study", {"arch": "a", "bits": "4"}, {}, background=False)
    clock = iter([1_000_000, 2_000_000])
    monkeypatch.setattr(tracking, "_now_ms", lambda: next(clock))
    lg.on_trial_start(0, [], trial)  # sent at once here (no sender thread), long after the stubbed clock
    lg.on_trial_result(0, [], trial, {"epoch": 1, "clean_acc": 0.5})
    lg.on_trial_complete(0, [], trial)
    lg.flush(final=True)
    info = client.get_run(lg.run_id(trial)).info
    assert (info.start_time, info.end_time) == (1_000_000, 2_000_000)
    assert info.status == "KILLED"  # no final result: a pruned trial


def test_a_trial_that_ended_before_a_restart_gets_its_lost_epochs_and_end(tmp_path) -> None:
    """The dead driver delivered epoch 1 of trial 0 only; Tune's snapshot holds it TERMINATED (final), so
    the resumed run never trains it again. At the end of the resumed run the logger (unpickled, as Tune
    restores it) logs epochs 2-3 from the trial's checkpoint (``trainer.pt``) and ends the run completed.
    Trial 1, errored, is ended errored; trial 2, whose run was completed before, is not touched."""
    import pickle
    from types import SimpleNamespace

    import torch
    from mlflow.tracking import MlflowClient
    from ray.tune import Checkpoint

    from mcel_search.search.searcher import NUMBER_KEY
    from mcel_search.search.trainable import REPORTED_KEY, TRAINER_FILE

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("restored")
    parent = client.create_run(exp, run_name="parent").info.run_id
    epochs = [{"epoch": e, "train_loss": 1.0 / e, "clean_acc": 0.5 + e / 10} for e in (1, 2, 3)]
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    torch.save({"model": {}, REPORTED_KEY: epochs}, ckpt_dir / TRAINER_FILE)

    def trial(n: int, status: str, final: bool) -> SimpleNamespace:
        return SimpleNamespace(
            trial_id=f"t{n}",
            config={NUMBER_KEY: n, "loss": "cel", "logit_scale": 1.0},
            status=status,
            last_result={**epochs[2], "final": final, "timestamp": 1_700_000_000},
            checkpoint=Checkpoint.from_directory(str(ckpt_dir)),
            error_file=None,
            error_msg="RuntimeError: boom",
        )

    def new_logger() -> MlflowTrialLogger:
        return MlflowTrialLogger(uri, exp, parent, "study", {"arch": "a", "bits": "4"}, {}, background=False)

    done, failed, old = trial(0, "TERMINATED", True), trial(1, "ERROR", False), trial(2, "TERMINATED", True)
    dead = new_logger()
    dead._trial_result(done, epochs[0])  # delivered; epochs 2-3 and the end were still queued
    dead._trial_result(failed, epochs[0])
    dead._trial_result(old, epochs[0])
    dead._trial_complete(old, old.last_result, None)  # this one's end did arrive
    old_steps = sorted(m.step for m in client.get_metric_history(dead.run_id(old), "clean_acc"))
    restored = pickle.loads(pickle.dumps(new_logger()))
    later = trial(3, "RUNNING", False)
    restored.on_step_begin(0, [done, failed, old, later])  # the trials the restored run began with
    later.status = "ERROR"  # ended in this run (e.g. stopped by a full disk): not this path's to end
    restored.on_experiment_end([done, failed, old, later])
    run = client.get_run(dead.run_id(done))
    assert run.data.tags["mcel.state"] == "completed" and run.info.status == "FINISHED"
    assert run.info.end_time == 1_700_000_000_000  # the trial's last result, not the resumed driver's clock
    for key in ("train_loss", "clean_acc"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2, 3], key
    errored = client.get_run(dead.run_id(failed))
    assert errored.data.tags["mcel.state"] == "errored" and errored.info.status == "FAILED"
    assert "boom" in errored.data.tags["mcel.error"]
    assert (
        sorted(m.step for m in client.get_metric_history(dead.run_id(old), "clean_acc")) == old_steps == [1]
    )


def test_one_attempt_is_shared_by_sender_threads_and_restores_the_environment_once(monkeypatch) -> None:
    """Several sender threads make their MLflow calls inside ``_one_attempt`` at once: the variables stay
    set until the last one leaves (a thread leaving first must not restore them under another's call), and
    then they are what they were before."""
    import os

    from mcel_search.search import tracking

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    inside, release = threading.Barrier(3), threading.Event()
    seen: list[tuple[str | None, str | None]] = []

    def call(hold: bool) -> None:
        with tracking._one_attempt():
            inside.wait(timeout=5)
            if hold:
                release.wait(timeout=5)
            seen.append(
                (
                    os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES"),
                    os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT"),
                )
            )

    threads = [threading.Thread(target=call, args=(hold,)) for hold in (False, True)]
    for t in threads:
        t.start()
    inside.wait(timeout=5)
    threads[0].join(timeout=5)  # the first thread has left ...
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") == "0"  # ... the second is still inside
    release.set()
    threads[1].join(timeout=5)
    assert seen == [("0", "30"), ("0", "30")]
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") == "7"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_lag_summary_is_the_nearest_rank_quantile_of_the_recorded_lags() -> None:
    """p50 and p99 by nearest rank (ceil(p * n)-th smallest): for lags 1..200 s that is 100 s and 198 s."""
    log = MlflowTrialLogger("http://127.0.0.1:1", "0", "parent", "study", {}, {}, background=False)
    assert log.lag_summary() == {}
    log.lags.extend(float(v) for v in range(200, 0, -1))
    assert log.lag_summary() == {"p50": 100.0, "p99": 198.0, "max": 200.0, "n": 200.0}


class _KeyedLogger(MlflowTrialLogger):
    """A logger with one extra call, ``_keyed``: records (thread, key, value) as the server saw it."""

    def _keyed(self, key: str, value: int) -> None:
        time.sleep(0.002)
        self.seen.append((threading.current_thread().name, key, value))


def test_several_senders_keep_each_trials_calls_in_order() -> None:
    """With three sender threads a trial's calls (one shard key) all go through one thread, in the order
    they were queued, while different trials are sent in parallel; nothing is lost."""
    log = _KeyedLogger("http://127.0.0.1:1", "0", "parent", "study", {}, {}, senders=3)
    log.seen = []
    for value in range(20):
        for key in (f"study#n{i}" for i in range(12)):
            log._enqueue("_keyed", key, value, shard=key)
    log.flush(final=True)
    log.close()
    assert len(log.seen) == 240
    by_key: dict[str, list[tuple[str, int]]] = {}
    for thread, key, value in log.seen:
        by_key.setdefault(key, []).append((thread, value))
    for key, calls in by_key.items():
        assert [v for _, v in calls] == list(range(20)), key  # in order
        assert len({t for t, _ in calls}) == 1, key  # one thread per trial
    assert len({t for t, _, _ in log.seen}) == 3  # the trials were spread over the three
    with pytest.raises(ValueError, match="senders=0"):
        MlflowTrialLogger("http://127.0.0.1:1", "0", "parent", "study", {}, {}, senders=0)


@pytest.mark.parametrize("value", ["0", "abc", "-1", "65", "2.5"])
def test_a_bad_sender_count_from_the_environment_is_one_clear_line(monkeypatch, value) -> None:
    from mcel_search.core.errors import BadInputError

    monkeypatch.setenv("MCEL_MLFLOW_SENDERS", value)
    with pytest.raises(BadInputError) as info:
        MlflowTrialLogger("http://127.0.0.1:1", "0", "parent", "study", {}, {})
    text = str(info.value)
    assert f"MCEL_MLFLOW_SENDERS={value!r}" in text and "from 1 to 64" in text and len(text.splitlines()) == 1
    monkeypatch.setenv("MCEL_MLFLOW_SENDERS", "5")
    assert len(MlflowTrialLogger("http://127.0.0.1:1", "0", "parent", "study", {}, {}).senders) == 5


def test_prewarm_imports_what_a_trials_end_needs_once_per_process() -> None:
    """``prewarm_trial_end`` (started by ``run_search``) leaves matplotlib's figures, MLflow's pyfunc and
    MLflow's installed-package map loaded, which the first trial's end would otherwise spend ~3 s on in the
    sender thread; a second call returns the same thread. A fresh interpreter: this one may hold them."""
    import subprocess
    import sys

    code = """
import sys
from mcel_search.search.tracking import prewarm_trial_end
from mlflow.utils import requirements_utils as req
before = ("matplotlib.figure" in sys.modules, "mlflow.pyfunc" in sys.modules, req._MODULES_TO_PACKAGES)
thread = prewarm_trial_end()
same = prewarm_trial_end() is thread
thread.join(120)
print(before, same, thread.is_alive(), "matplotlib.figure" in sys.modules, "mlflow.pyfunc" in sys.modules,
      req._MODULES_TO_PACKAGES is not None and "torch" in req._MODULES_TO_PACKAGES)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(False,", "False,", "None)", "True", "False", "True", "True", "True"], (
        out.stdout
    )
