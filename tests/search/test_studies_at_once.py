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

from mcel_search.search.runner import _run_studies, run_search, studies_at_once
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
