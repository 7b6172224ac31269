"""BER-sweep benchmarks: time overhead over clean passes, peak memory, throughput scaling.

* ``sweep``: :func:`core.evaluation.ber_sweep` of ``R`` realizations x ``K`` BERs on VGG3 (4-bit,
  FashionMNIST test subset) against ``R * K`` clean passes (:func:`core.evaluation.evaluate_accuracy`) of
  the same model over the same cached batches. Target: overhead <= 1.10x.
* ``memory``: peak memory of one sweep against one clean pass, each in a fresh subprocess. CPU: the
  process's resident-set high-water mark (``VmHWM``), reset to the current RSS right before the measured
  call by writing ``5`` to ``/proc/self/clear_refs`` after ``malloc_trim``, so setup (imports, data
  loading) does not mask the pass; the figure is the ratio of the *increments* over the RSS at the start
  of the call (the whole-process peak ratio is also reported; it is close to 1 because the torch library
  dominates it). Where the reset is not possible, ``resource.getrusage`` high-water marks are used and the
  row says so. CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. Target: <= 1.5x.
* ``scaling``: images/s of a one-realization sweep at batch sizes x thread counts, relative to the
  smallest setting (CPU) and absolute (every device).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import MIN_REPEATS, Row, interleaved, median, paired_ratio
from mcel_search.core.data import load_dataset
from mcel_search.core.evaluation import Batches, ber_sweep, cache_batches, evaluate_accuracy
from mcel_search.core.models import create_model

SWEEP_TARGET = 1.10
MEMORY_TARGET = 1.5
SWEEP_BERS = (1e-3, 1e-2, 2e-2)


def _vgg3(device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("vgg3", bits=4, num_classes=10, in_channels=1, image_size=28, logit_scale=0.25)
    return model.to(device).eval()


def _test_batches(n: int, batch_size: int, device: torch.device) -> Batches:
    data = load_dataset("fashionmnist", limit_test=n, limit_train=1)
    return cache_batches(data.test, device, batch_size)


def bench_sweep(quick: bool, device: torch.device) -> list[Row]:
    """``ber_sweep`` (R x K) vs R * K clean passes; see the module docstring."""
    n, reps, bers, repeats = (256, 2, SWEEP_BERS[1:2], MIN_REPEATS) if quick else (1024, 3, SWEEP_BERS[:2], 5)
    batches = _test_batches(n, 256, device)
    model = _vgg3(device)
    passes = reps * len(bers)

    def clean() -> None:
        for _ in range(passes):
            evaluate_accuracy(model, batches)

    def sweep() -> None:
        ber_sweep(model, batches, bers, reps, seed=0)

    t = interleaved({"clean": clean, "sweep": sweep}, repeats, device)
    ratio = paired_ratio(t["sweep"], t["clean"])
    return [
        Row(
            "sweep",
            "sweep.overhead",
            f"ber_sweep, VGG3 4-bit, {reps} realizations x {len(bers)} BERs {list(bers)}, {n} images",
            f"{passes} clean passes (evaluate_accuracy)",
            ratio,
            ("<=", SWEEP_TARGET),
            detail=(
                f"median sweep {median(t['sweep']):.2f} s, clean x{passes} {median(t['clean']):.2f} s "
                f"({repeats} rounds, batch 256, device {device.type})"
            ),
        )
    ]


# ------------------------------------------------------------------------------------------------- memory


def _reset_peak() -> bool:
    """Release freed heap to the OS and reset VmHWM to the current RSS; False where not possible."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def memory_child(kind: str, n: int, reps: int, device: str) -> dict[str, Any]:
    """Run in a fresh process: set up, then one clean pass (``kind="clean"``) or one sweep; peak memory."""
    import resource

    dev = torch.device(device)
    batches = _test_batches(n, 1024, dev)
    model = _vgg3(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        start = torch.cuda.memory_allocated(dev)
    else:
        exact = _reset_peak()
        start = _status_kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if kind == "clean":
        evaluate_accuracy(model, batches)
    else:
        ber_sweep(model, batches, [1e-2], reps, seed=0)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak, how = torch.cuda.max_memory_allocated(dev), "torch.cuda.max_memory_allocated (bytes)"
    else:
        hwm = _status_kib("VmHWM") if exact else None
        peak = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        how = "VmHWM after clear_refs reset (KiB)" if hwm is not None else "ru_maxrss (KiB, not reset)"
    return {"kind": kind, "start": start, "peak": peak, "how": how}


def bench_memory(quick: bool, device: torch.device) -> list[Row]:
    """Peak memory of a sweep vs one clean pass, each in a fresh subprocess (module docstring)."""
    n, reps, rounds = (256, 2, 1) if quick else (2048, 3, 3)
    results: dict[str, list[dict]] = {"clean": [], "sweep": []}
    root = Path(__file__).resolve().parent.parent
    for _ in range(rounds):
        for kind in ("clean", "sweep"):
            cmd = [sys.executable, "-m", "benchmarks.bench_eval", "--memory-child", kind]
            out = subprocess.run(
                [*cmd, str(n), str(reps), device.type],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
            )
            results[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    how = results["clean"][0]["how"]
    inc = {k: median([r["peak"] - r["start"] for r in v]) for k, v in results.items()}
    tot = {k: median([r["peak"] for r in v]) for k, v in results.items()}
    unit = 1024 * 1024 if device.type == "cuda" else 1024
    mib = {k: v / unit for k, v in inc.items()}
    ratio_inc = inc["sweep"] / max(inc["clean"], 1)
    ratio_tot = tot["sweep"] / max(tot["clean"], 1)
    what = f"peak memory of ber_sweep ({reps} realizations, {n} images, batch 1024)"
    detail = (
        f"{how}; increment over the memory at the start of the call: sweep {mib['sweep']:.0f} MiB, "
        f"clean {mib['clean']:.0f} MiB; whole process: sweep {tot['sweep'] / unit:.0f} MiB, clean "
        f"{tot['clean'] / unit:.0f} MiB; median of {rounds} fresh subprocesses each"
    )
    return [
        Row("memory", "memory.increment", what + ", increment", "one clean pass, increment", ratio_inc,
            ("<=", MEMORY_TARGET), detail=detail),
        Row("memory", "memory.process", what + ", whole process", "one clean pass, whole process", ratio_tot,
            ("<=", MEMORY_TARGET)),
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------ scaling


def bench_scaling(quick: bool, device: torch.device) -> list[Row]:
    """Images/s of a one-realization sweep per (batch size, threads), relative to the smallest setting."""
    if quick:
        n, sizes, repeats = 512, (128, 512), MIN_REPEATS
    else:
        n, sizes, repeats = 2048, (256, 1024, 2048), MIN_REPEATS
    threads = (1, 2) if device.type == "cpu" else (torch.get_num_threads(),)
    model = _vgg3(device)
    data = load_dataset("fashionmnist", limit_test=n, limit_train=1)
    cached = {bs: cache_batches(data.test, device, bs) for bs in sizes}
    saved = torch.get_num_threads()

    def run(bs: int, th: int):
        def fn() -> None:
            torch.set_num_threads(th)
            ber_sweep(model, cached[bs], [1e-2], 1, seed=0)

        return fn

    fns = {(bs, th): run(bs, th) for th in threads for bs in sizes}
    try:
        t = interleaved({f"{bs}/{th}": f for (bs, th), f in fns.items()}, repeats, device)
    finally:
        torch.set_num_threads(saved)
    base = f"{sizes[0]}/{threads[0]}"
    rows = []
    for (bs, th), _ in fns.items():
        key = f"{bs}/{th}"
        ips = n / median(t[key])
        rel = paired_ratio(t[base], t[key])  # speed relative to the baseline setting
        rows.append(
            Row(
                "scaling",
                f"scaling.bs{bs}.t{th}",
                f"BER sweep throughput, batch {bs}, {th} thread(s)",
                f"batch {sizes[0]}, {threads[0]} thread(s)" if device.type == "cpu" else "-",
                rel,
                None,
                detail=f"{ips:.0f} images/s ({n} images, VGG3 4-bit, 1 realization at BER 1e-2, {device.type})",
            )
        )
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--memory-child":
        kind, n, reps, dev = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        print(json.dumps(memory_child(kind, n, reps, dev)))
    else:
        raise SystemExit("usage: python -m benchmarks.bench_eval --memory-child clean|sweep N REPS DEVICE")
