"""glibc malloc thresholds (core.allocator): fewer page faults for a training-like allocation pattern.

Each case runs in a fresh interpreter, since the thresholds are per process and glibc's dynamic rule
depends on everything the process allocated before."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mcel_search.core.allocator import tune_cpu_allocator

# The child first puts glibc back to its initial thresholds (128 KiB each, as in a fresh process before its
# dynamic rule raised them: how far a process has raised them depends on everything it allocated before,
# even on hash randomization, so it is pinned here), then tunes unless MCEL_TUNE_MALLOC=0. Every round
# allocates 24 tensors of 600 KiB (touching every page) and frees them all, the pattern of a training
# step's activations and gradients. Prints whether tuning applied and the minor page faults of rounds 2..40.
_PATTERN = """
import ctypes, resource, torch
from mcel_search.core.allocator import tune_cpu_allocator
libc = ctypes.CDLL("libc.so.6")
assert libc.mallopt(-3, 128 * 1024) == 1 and libc.mallopt(-1, 128 * 1024) == 1  # M_MMAP_, M_TRIM_THRESHOLD
applied = tune_cpu_allocator()
def rounds(n):
    for _ in range(n):
        held = [torch.ones(150 * 1024, dtype=torch.float32) for _ in range(24)]
        del held
rounds(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(39)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_value: str) -> tuple[bool, int]:
    env = {"MCEL_TUNE_MALLOC": env_value, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _PATTERN], env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")
def test_tuned_thresholds_keep_freed_tensor_memory_instead_of_faulting_it_in_again() -> None:
    tuned_applied, tuned = _faults("1")
    plain_applied, plain = _faults("0")
    assert tuned_applied and not plain_applied
    # initial thresholds: every 600 KiB block is mapped and unmapped, its 150 pages fresh zero pages each
    # round (39 x 24 x 150 = 140k faults); tuned: the blocks are reused (a few hundred faults in all)
    assert plain > 39 * 24 * 100, plain
    assert tuned < plain / 10, (tuned, plain)


def test_tuning_is_idempotent_and_reports_its_first_outcome() -> None:
    first = tune_cpu_allocator()
    assert tune_cpu_allocator() is first
    assert first is sys.platform.startswith("linux")  # glibc here; False elsewhere
