"""``core.devices``: whether torch can really use a GPU, and the label of the device a run used.

This machine has no GPU in CI: the CPU branch is what runs there; the CUDA branch runs where a GPU is
present (the same assertions, the other way round), so both are checked somewhere and neither can pass
vacuously.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mcel_search.core.devices import cuda_problem, device_label


def test_cuda_problem_matches_what_torch_can_do() -> None:
    problem = cuda_problem()
    if torch.cuda.is_available():
        assert problem is None
        assert torch.zeros(1, device="cuda").item() == 0.0
    else:
        assert problem is not None and torch.__version__ in problem
        assert "no usable GPU" in problem or "CPU-only" in problem


def test_a_cpu_only_build_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in cuda_problem()


def test_a_device_that_cannot_run_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver that loads but cannot run this CUDA: is_available says yes, the first kernel fails."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    real_zeros = torch.zeros

    def zeros(*args, **kwargs):
        if str(kwargs.get("device", "")).startswith("cuda"):
            raise RuntimeError(
                "CUDA error: the provided PTX was compiled with an unsupported toolchain.\nmore"
            )
        return real_zeros(*args, **kwargs)

    monkeypatch.setattr(torch, "zeros", zeros)
    problem = cuda_problem()
    assert problem.endswith(
        "cannot run on cuda:0: CUDA error: the provided PTX was compiled with an unsupported toolchain."
    )


def test_device_label() -> None:
    assert device_label("cpu") == "cpu"
    assert device_label(torch.device("cpu")) == "cpu"
    if torch.cuda.is_available():
        assert device_label("cuda") == f"cuda:0 ({torch.cuda.get_device_name(0)})"


def test_module_exits_1_with_one_fatal_line_without_a_gpu() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mcel_search.core.devices"], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.startswith(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs: ")
    if torch.cuda.is_available():
        assert result.returncode == 0 and "GPUs: none" not in result.stdout
    else:
        assert result.returncode == 1
        fatal = [ln for ln in result.stderr.splitlines() if ln.startswith("FATAL:")]
        assert len(fatal) == 1 and "must not run GPU trials" in fatal[0], result.stderr
