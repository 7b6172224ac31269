"""glibc malloc settings for CPU training: keep freed tensor memory in the process for the next step.

Torch's CPU tensors come from ``malloc``. glibc serves blocks of at least ``M_MMAP_THRESHOLD`` bytes with a
fresh ``mmap`` and gives them back with ``munmap`` when freed, and it returns the free top of a heap to the
kernel once it exceeds ``M_TRIM_THRESHOLD``. Both thresholds start at 128 KiB and only grow as large blocks
are freed ("dynamic" thresholds), so how a process behaves depends on what it allocated before. A training
loop of small models frees and reallocates blocks of hundreds of KiB (activations, gradients) every step:
when they are unmapped or trimmed, every page of the next allocation is a minor page fault, zeroed by the
kernel.

For a small CNN's training loop that costs about a tenth of its CPU time in page faults, in a fresh
process and in a Ray Tune trial worker alike (figures: ``benchmarks/MEASUREMENTS.md``, "allocator").

:func:`tune_cpu_allocator` fixes both thresholds (which also turns the dynamic rule off):
``M_MMAP_THRESHOLD`` = 32 MiB (glibc's largest value on 64-bit: blocks below it come from the heap and are
reused), ``M_TRIM_THRESHOLD`` = 256 MiB (a heap keeps up to that much free memory at its top: above the 64
MiB glibc's dynamic rule can reach, so that a step that frees more than that at once, e.g. a larger model's
activations, does not hand it back either). The cost is memory a process keeps after a peak instead of
returning it: at most 256 MiB per malloc arena above what it uses. Blocks of 32 MiB and more are still
mapped and unmapped per allocation; their compute dwarfs the faults.

It is applied by :func:`mcel_search.core.experiment.build` (so by every search trial, and by the in-process runs
the search benchmark compares them with) and by the ``mcel`` command for all its subcommands. It does
nothing, and returns False, off Linux, on a C library without ``mallopt`` (e.g. musl), or when the
environment variable ``MCEL_TUNE_MALLOC`` is ``0``. Results do not change: only where memory comes from.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "tune_cpu_allocator"]

MMAP_THRESHOLD = 32 << 20  # bytes; glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit (4 MiB * sizeof(long))
TRIM_THRESHOLD = 256 << 20  # bytes; above glibc's dynamic maximum (2 * MMAP_THRESHOLD)
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, <malloc.h>
_M_MMAP_THRESHOLD = -3
_applied: bool | None = None  # the outcome of the first call in this process


def tune_cpu_allocator() -> bool:
    """Fix glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` for this process (module docstring).

    Idempotent: the first call decides and later calls return its outcome. Returns True if both were set,
    False if skipped (not Linux, no glibc ``mallopt``, ``MCEL_TUNE_MALLOC=0``) or refused by ``mallopt``.
    """
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get("MCEL_TUNE_MALLOC", "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl has no mallopt semantics to rely on
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
