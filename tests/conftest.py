"""Shared fixtures: a real MLflow tracking server process on 127.0.0.1 and a small local Ray instance."""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package (its server helper)
from benchmarks.mlflow_server import MlflowServer, free_port


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def local_ray() -> Iterator[None]:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    from mcel_search.search.runner import _init_ray

    _init_ray(None, 2)  # the product's start of a local Ray: retried once on a slow machine
    yield
    ray.shutdown()


SMALL_SPEC = {
    "dataset": "digits",
    "architectures": ["small_cnn"],
    "bits": [4],
    "losses": ["mcel"],
    "space": {"margin": {"choice": [1.0, 2.0]}, "b": {"choice": [4.0, 8.0]}},
    "train": {"epochs": 3, "batch_size": 64, "step_size": 2, "device": "cpu"},
    "objective": {"target_ber": 0.01, "reps": 2},
    "sweep": {"bers": [0.0, 0.01], "reps": 2},
    "trials_per_arch": 4,
    "concurrency": 2,
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "none"},
    "baseline": {"enabled": False},
}


@pytest.fixture()
def small_spec(tmp_path, mlflow_server):
    """A factory of small search-spec dicts (small_cnn on digits, a few epochs) tracked by the test server:
    ``small_spec(name, **top_level_overrides)``; every call returns a fresh deep copy."""

    def make(name: str, **over) -> dict:
        spec = copy.deepcopy(SMALL_SPEC)
        spec.update(
            name=name,
            tracking={"uri": mlflow_server.uri, "experiment": name},
            storage={"path": str(tmp_path / "ray")},
        )
        spec.update(copy.deepcopy(over))
        return spec

    return make


@pytest.fixture()
def base_spec() -> dict:
    """A deep copy of the small spec dict, with no name, tracking or storage (tests that start nothing)."""
    return copy.deepcopy(SMALL_SPEC)


@pytest.fixture()
def own_mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    """A tracking server of this test alone (not started): the test may stop and restart it on the same port
    with the same backend store (``stop()`` then ``start()``)."""
    server = MlflowServer(tmp_path_factory.mktemp("own-mlflow-server"))
    yield server
    if server.proc is not None:
        server.stop()


class _Records(logging.Handler):
    """Keeps the messages of the records it is handed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def tune_analysis_messages() -> Iterator[list[str]]:
    """The messages Ray Tune's experiment-analysis logger emits during the test (after its filters)."""
    log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    seen = _Records()
    log.addHandler(seen)
    yield seen.messages
    log.removeHandler(seen)


@pytest.fixture()
def unused_port() -> Callable[[], int]:
    """A function giving a TCP port on 127.0.0.1 that nothing listens on now."""
    return free_port
