"""What a failure says: a cluster-side failure names the node and the cause (exit 5), never "bad input";
a trial that asked for a GPU and got none fails with one line.

The Ray errors here are Ray's own classes, built the way Ray builds them when a remote task raises
(``RayTaskError(...).as_instanceof_cause()``: a class that is both a ``RayTaskError`` and the cause's
class, so a remote ``FileNotFoundError`` *is* a ``FileNotFoundError`` to ``except``). No cluster is
started: the classification depends only on the exception.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from ray.exceptions import NodeDiedError, RayTaskError

from mcel_search.core.errors import BadInputError
from mcel_search.search import cli
from mcel_search.search.trainable import FAKE_GPUS_ENV, GpuUnavailableError, _require_gpu


def _remote(cause: BaseException) -> BaseException:
    err = RayTaskError(
        "ImplicitFunc.train",
        "Traceback ...",
        cause,
        proctitle="ray::ImplicitFunc.train",
        pid=4121,
        ip="10.0.1.57",
    )
    return err.as_instanceof_cause()


def test_a_remote_missing_file_is_a_cluster_failure_not_bad_input() -> None:
    exc = _remote(FileNotFoundError(2, "No such file or directory", "/home/ubuntu/mcel-data/x"))
    assert isinstance(exc, FileNotFoundError)  # what made it exit 2 before
    line = cli.cluster_failure(exc)
    assert line == (
        "cluster-side failure on node 10.0.1.57 (pid 4121, ImplicitFunc.train): FileNotFoundError: "
        "[Errno 2] No such file or directory: '/home/ubuntu/mcel-data/x'"
    )


def test_a_remote_bad_input_error_names_the_node() -> None:
    line = cli.cluster_failure(
        _remote(BadInputError("dataset 'svhn' is not under MCEL_DATA_ROOT\nsecond line"))
    )
    assert line.startswith(
        "cluster-side failure on node 10.0.1.57 (pid 4121, ImplicitFunc.train): BadInputError: "
    )
    assert line.endswith("not under MCEL_DATA_ROOT")


def test_other_ray_errors_and_local_errors() -> None:
    line = cli.cluster_failure(NodeDiedError("The node with node id: abc123 has been marked dead"))
    assert line.startswith("cluster-side failure") and "NodeDiedError" in line and "abc123" in line
    assert cli.cluster_failure(FileNotFoundError(2, "No such file", "spec.yaml")) is None
    assert cli.cluster_failure(BadInputError("x")) is None


@pytest.mark.parametrize(
    "exc,status,needle",
    [
        (
            _remote(FileNotFoundError(2, "No such file or directory", "/d")),
            cli.EXIT_CLUSTER,
            "node 10.0.1.57",
        ),
        (FileNotFoundError(2, "No such file or directory", "mine.yaml"), cli.EXIT_BAD_INPUT, "mine.yaml"),
        (BadInputError("epochs: -1 — must be >= 1"), cli.EXIT_BAD_INPUT, "epochs: -1"),
        (KeyError("boom"), cli.EXIT_BUG, "a bug in mcel-search"),
    ],
)
def test_main_exit_status(monkeypatch, capsys, exc: BaseException, status: int, needle: str) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise exc

    monkeypatch.setattr(cli, "cmd_list", fail)  # `mcel list` raises it (the parser is built from cmd_list)
    assert cli.main(["list"]) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mcel: error: ") and needle in err[0], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no GPU")
def test_a_gpu_trial_without_a_usable_gpu_fails_with_one_line(monkeypatch) -> None:
    monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)
    with pytest.raises(GpuUnavailableError) as info:
        _require_gpu(0.5, "auto")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("trial asked for 0.5 GPU (resources.gpu) but on node local torch ")
    assert "mcel_search.core.devices" in message
    _require_gpu(0.0, "auto")  # no GPU asked: the CPU is fine
    _require_gpu(0.5, "cpu")  # the user chose the CPU
    monkeypatch.setenv(FAKE_GPUS_ENV, "1")
    _require_gpu(0.5, "auto")  # fake GPUs (resource labels): allowed


def test_a_gpu_trial_with_a_usable_gpu_passes(monkeypatch) -> None:
    import mcel_search.search.trainable as trainable

    monkeypatch.delenv(FAKE_GPUS_ENV, raising=False)
    monkeypatch.setattr(trainable, "cuda_problem", lambda: None)
    _require_gpu(1.0, "auto")
    monkeypatch.setattr(trainable, "cuda_problem", lambda: "torch sees no usable GPU")
    with pytest.raises(GpuUnavailableError, match="sees no usable GPU"):
        _require_gpu(1.0, "cuda")
