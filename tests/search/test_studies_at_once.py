"""Several (architecture, bits) studies of one spec at once: how many (``runner.studies_at_once``, by
hand-worked cases), how they are run and fail (``runner._run_studies``, with plain functions), and a real
two-study search on a local Ray whose two slots hold both studies (MLflow server, SQLite Optuna): the
studies overlap in time and each keeps to its own runs and trials."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from mcel_search.core.checkpoint import load_checkpoint
from mcel_search.search.runner import (
    LEGACY_TRAINABLE_NAME,
    _legacy_names,
    _run_studies,
    run_search,
    saved_trainable_name,
    studies_at_once,
    trainable_name,
)
from mcel_search.search.spec import parse_spec


def _spec(base_spec: dict, **over) -> object:
    data = {**base_spec, "name": "n", **over}
    return parse_spec(data)


@pytest.mark.parametrize(
    ("over", "cluster", "expected"),
    [
        # 3 studies, 2 trials x 1 CPU each: 8 CPUs hold 4 studies, there are 3
        ({"bits": [2, 4, 8], "concurrency": 2}, {"CPU": 8.0}, 3),
        ({"bits": [2, 4, 8], "concurrency": 2}, {"CPU": 5.0}, 2),  # floor(5 / 2)
        ({"bits": [2, 4, 8], "concurrency": 2}, {"CPU": 3.0}, 1),
        ({"bits": [2, 4, 8], "concurrency": 2}, {}, 1),  # no node up yet (autoscaler): one by one
        # GPUs bind: 4 trials x 0.5 GPU = 2 GPUs per study, 4 GPUs hold 2 (the CPUs would hold 8)
        (
            {"bits": [2, 4, 8], "concurrency": 4, "resources": {"cpu": 1, "gpu": 0.5}},
            {"CPU": 32.0, "GPU": 4.0},
            2,
        ),
        ({"bits": [2, 4, 8], "studies_at_once": 2}, {"CPU": 100.0}, 2),  # an integer is taken as it is
        ({"bits": [2, 4], "studies_at_once": 9}, {}, 2),  # at most the studies there are
        ({"bits": [4], "concurrency": 1}, {"CPU": 64.0}, 1),
    ],
)
def test_studies_at_once_by_hand(base_spec, over, cluster, expected) -> None:
    assert studies_at_once(_spec(base_spec, **over), cluster) == expected


def test_studies_run_at_once_and_come_back_in_spec_order() -> None:
    barrier = threading.Barrier(3, timeout=10)  # passes only if three jobs run at the same time

    def job(i: int) -> int:
        barrier.wait()
        time.sleep(0.05 * (3 - i))  # finish in reverse order
        return i

    assert _run_studies(job, [(0,), (1,), (2,)], at_once=3) == [0, 1, 2]
    assert _run_studies(lambda i: i * 10, [(1,), (2,)], at_once=1) == [10, 20]


def test_a_failing_study_lets_the_running_ones_end_and_starts_no_more() -> None:
    started: list[int] = []
    ended: list[int] = []
    failed = threading.Event()

    def job(i: int) -> int:
        started.append(i)
        if i == 1:
            failed.set()
            raise RuntimeError("study 1 failed")
        if i == 0:
            assert failed.wait(10)  # still running when study 1 fails
            time.sleep(0.3)
        ended.append(i)
        return i

    with pytest.raises(RuntimeError, match="study 1 failed"):
        _run_studies(job, [(0,), (1,), (2,), (3,)], at_once=2)
    assert sorted(started) == [0, 1] and ended == [0]  # 0 ran to its end; 2 and 3 never started


def test_two_studies_of_one_spec_run_at_once(tmp_path, mlflow_server, local_ray, small_spec) -> None:
    """bits [2, 4], concurrency 1, one CPU per trial, a 2-CPU Ray: auto runs both studies at once. Each
    study's first trial is asked for before the other study's last trial ended; each study keeps its own
    Tune run, Optuna trials and MLflow runs (under its own parent)."""
    data = small_spec("two", bits=[2, 4], trials_per_arch=2, concurrency=1)
    data["train"]["epochs"] = 2
    spec = parse_spec(data)
    outcome = run_search(spec)
    assert [s.study for s in outcome.studies] == ["two-small_cnn-2b", "two-small_cnn-4b"]
    client = MlflowClient(mlflow_server.uri)
    spans = {}
    for s in outcome.studies:
        assert len(list(s.grid)) == 2 and all(r.error is None for r in s.grid)
        assert (tmp_path / "ray" / s.study).is_dir()
        study = optuna.load_study(study_name=s.study, storage=s.optuna_storage)
        assert sorted(t.number for t in study.trials) == [0, 1]
        runs = [r for r in s.trials]
        assert len(runs) == 2 and all(r["state"] == "completed" for r in runs)
        for r in runs:
            tags = client.get_run(r["run_id"]).data.tags
            assert tags["mlflow.parentRunId"] == s.parent_run_id and tags["bits"] == str(s.bits)
        infos = [client.get_run(r["run_id"]).info for r in runs]
        first_asked = min(t.datetime_start.timestamp() for t in study.trials) * 1000
        spans[s.bits] = (first_asked, max(i.end_time for i in infos))
    assert spans[2][0] < spans[4][1] and spans[4][0] < spans[2][1], spans
    # every trial trained with its own study's context: Tune looks trainables up by name in one registry
    # per process, and under one shared name a trial could start with the other study's (bits 2 in the
    # 4-bit study's checkpoints, seen before each study's trainable had a name of its own)
    names = set()
    for s in outcome.studies:
        run_dir = tmp_path / "ray" / s.study
        names.add(saved_trainable_name(str(run_dir)))
        checkpoints = sorted(run_dir.glob("trial_*/checkpoint_*/model.pt"))
        assert {p.parts[-3] for p in checkpoints} == {p.name for p in run_dir.glob("trial_*")}
        for path in checkpoints:
            meta = load_checkpoint(path)[1]
            assert (meta["model"]["bits"], meta["metrics"]["study"]) == (s.bits, s.study), path
    assert names == {trainable_name(s.study) for s in outcome.studies} and len(names) == 2


def test_saved_trainable_name_reads_the_pickle_without_running_it(tmp_path) -> None:
    """The name a Tune run began with, from ``tuner.pkl``'s opcodes; None without the file, without the
    key or for bytes that are no pickle; a pickle that would run code on loading is only read."""
    import pickle

    run = tmp_path / "run"
    run.mkdir()
    assert saved_trainable_name(str(run)) is None  # no tuner.pkl
    (run / "tuner.pkl").write_bytes(pickle.dumps({"a": "b", "__trainable_name": "mcel_trial-x", "c": 1}))
    assert saved_trainable_name(str(run)) == "mcel_trial-x"
    (run / "tuner.pkl").write_bytes(pickle.dumps({"a": "__trainable", "c": "mcel_trial"}))
    assert saved_trainable_name(str(run)) is None
    (run / "tuner.pkl").write_bytes(b"not a pickle at all")
    assert saved_trainable_name(str(run)) is None

    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    (run / "tuner.pkl").write_bytes(pickle.dumps({"__trainable_name": "n", "x": Boom()}))
    assert saved_trainable_name(str(run)) == "n" and not (tmp_path / "ran").exists()


def test_runs_begun_under_the_shared_name_are_found(tmp_path) -> None:
    """``_legacy_names``: True when a study's Tune run, or its separate baseline's, began under the name
    every study shared before the per-study names; False for runs begun under their own names."""
    import pickle

    def run(name: str, trainable: str) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "tuner.pkl").write_bytes(pickle.dumps({"__trainable_name": trainable}))

    run("s-a", trainable_name("s-a"))
    run("s-b", trainable_name("s-b"))
    assert not _legacy_names(str(tmp_path), ["s-a", "s-b", "s-c"])
    run("s-c-baseline", LEGACY_TRAINABLE_NAME)
    assert _legacy_names(str(tmp_path), ["s-a", "s-c"]) and not _legacy_names(str(tmp_path), ["s-a"])
    assert trainable_name("s-a") != trainable_name("s-b")


@pytest.mark.slow
def test_a_search_begun_under_the_shared_name_resumes_one_study_at_a_time(
    tmp_path, mlflow_server, local_ray, small_spec, monkeypatch
) -> None:
    """A two-study search whose Tune runs began under the name every study shared before the per-study
    names (made here by patching ``trainable_name``, one study at a time as such a search ran safely):
    resumed by the current code, each run is restored under its saved name (Tune refuses another), the
    studies run one at a time although auto would run both at once, and nothing is run or logged again."""
    from mcel_search.search import runner

    data = small_spec("old", bits=[2, 4], trials_per_arch=1, concurrency=1)
    data["train"]["epochs"] = 1
    spec = parse_spec(data)
    with monkeypatch.context() as m:
        m.setattr(runner, "trainable_name", lambda study: LEGACY_TRAINABLE_NAME)
        m.setattr(runner, "studies_at_once", lambda spec, cluster: 1)
        first = run_search(spec)
    run_dirs = [tmp_path / "ray" / s.study for s in first.studies]
    assert [saved_trainable_name(str(d)) for d in run_dirs] == [LEGACY_TRAINABLE_NAME] * 2
    assert runner.studies_at_once(spec, runner._cluster_resources()) == 2  # what a new search would run

    at_once: list[int] = []
    real = runner._run_studies

    def recording(run_study, jobs, n):
        at_once.append(n)
        return real(run_study, jobs, n)

    monkeypatch.setattr(runner, "_run_studies", recording)
    again = run_search(spec, resume=True)
    assert at_once == [1]
    assert [saved_trainable_name(str(d)) for d in run_dirs] == [LEGACY_TRAINABLE_NAME] * 2
    client = MlflowClient(mlflow_server.uri)
    for before, after in zip(first.studies, again.studies, strict=True):
        assert after.study == before.study and all(r.error is None for r in after.grid)
        assert sorted(r["run_id"] for r in after.trials) == sorted(r["run_id"] for r in before.trials)
        assert (
            len(
                client.search_runs(
                    [client.get_experiment_by_name("old").experiment_id],
                    f"tags.mlflow.parentRunId = '{before.parent_run_id}'",
                )
            )
            == 1
        )


def test_a_real_tune_trial_sees_its_own_run_name(tmp_path, local_ray) -> None:
    """The name ``mcel_trial`` checks its context against (``trainable._experiment_name``) is, inside a
    real Ray Tune trial, the Tune run's name (the study's): were it None there, ``check_own_study`` would
    pass every trial unchecked."""
    from ray import tune

    from mcel_search.search import trainable

    def probe(config: dict) -> None:
        tune.report({"seen": trainable._experiment_name()})

    run = tune.RunConfig(name="s-small_cnn-4b", storage_path=str(tmp_path), verbose=0)
    grid = tune.Tuner(probe, run_config=run).fit()
    assert grid[0].error is None and grid[0].metrics["seen"] == "s-small_cnn-4b"
