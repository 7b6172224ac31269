"""Benchmark of :func:`core.biterrors.flip_bits` against a dense per-bit mask and a plain copy.

Part of the suite (``make bench``, ``python -m benchmarks.suite --only flips``: :func:`run` at torch's
thread count and at one thread, rows in ``benchmarks/RESULTS.md``); this script is the standalone form
with the crossover and reference options.

Usage::

    .venv/bin/python benchmarks/bench_flips.py [--numel 4194304] [--bits 4] [--repeats 7] [--device cpu]
    .venv/bin/python benchmarks/bench_flips.py --crossover      # sparse vs dense path, to set SPARSE_MAX_P
    git show 2ed1984:core/biterrors.py > /tmp/old_biterrors.py  # an earlier engine, timed alongside
    .venv/bin/python benchmarks/bench_flips.py --reference /tmp/old_biterrors.py

Baselines, on the same tensor and in the same process:

* ``dense``: the algorithm of the reference framework's CUDA kernels written in torch: for every code and
  every bit draw a uniform and flip the bit if it is ``< p`` (one full-size random tensor per bit).
* ``copy``: ``codes.clone()``, the floor for any out-of-place flip.

For each ``p`` the dense baseline is timed first, then copy and ``flip_bits`` round-robin in every repeat
so that allocator and page-fault effects hit both alike; each group gets a warm-up call and the median of
the repeats is reported. Targets (printed, never asserted): at ``p <= 1e-3``
``flip_bits`` is at least 10x faster than ``dense`` and within 3x of ``copy``. ``--reference FILE`` also
times the ``flip_bits`` of another copy of the engine (e.g. an earlier commit) in the same round-robin,
so that the two are compared under the same load.

Ratios are the figures to compare: other processes on the machine inflate and scatter the times, most
of all with 2 threads, where a busy second core stalls every parallel region (the copy, the dense
baseline) by a scheduler time slice. The copy uses all threads, while the sparse path is a chain of
small serial operations (random numbers, gather, scatter on ~N p elements), so ``ours/copy`` is higher
with 2 threads than with 1.

Recorded 2026-11-28 (2-core VM, torch 2.14, 4M 4-bit codes; ``ours/copy``, medians of 3 rounds of 9
repeats, the earlier engine of commit 2ed1984 timed alongside with ``--reference``, load average < 1 for
2 threads, 2.5-3 for 1 thread; other processes moved single runs by about +-10%)::

    threads    p     copy ms   before: ours/copy   after: ours/copy   after/before   dense/after
       2     1e-4     0.16           2.44               2.28             0.95           204
       2     1e-3     0.18           4.32               3.78             0.86           121
       2     1e-2     0.21          22.0               17.1              0.79            23
       2     1e-1     0.30         118                 68                0.54             3.4
       1     1e-4     0.37           1.94               1.82             0.91           140
       1     1e-3     0.34           2.78               2.40             0.88           110
       1     1e-2     0.36          10.1                8.09             0.79            29
       1     1e-1     0.66          70                 43                0.67             3.8

The 3x-of-copy target at ``p = 1e-3`` holds with 1 thread but not with 2: the sparse work does not shrink
with threads, while the copy halves. Where the time goes (torch profiler, 2 threads, 200 calls, p = 1e-3,
~17.5k candidates; 2026-11-28): the copy 0.22-0.30 ms; the float64 uniforms 0.16-0.20 ms (torch's CPU
generator is a serial Mersenne Twister: two 32-bit draws and ~11 ns per double, 8.5 ns of it the
generator); the gather of the clean codes 0.05-0.09 ms and the scatter 0.06-0.10 ms (random access into
4 MB the copy has just streamed through); ~10 small element-wise operations 0.15-0.2 ms. The floor of
this design (copy, uniforms, gather, scatter) is ~0.6 ms, 2.6-2.8x the copy; the small operations take it
to ~4x. Tried and not kept: reading the clean codes before the copy (1.00-1.02x, no gain), NumPy for the
chain after the uniforms (slower: ``bitwise_xor.at`` 0.34 ms, ``log`` slower than torch's), fewer random
bits per candidate (float32 uniforms, log and steps, measured 2026-11-29: 0.01-0.02 ms or 2-3% faster
in the same round-robin, for a sampler inexact at 2**-32 whose realization seeds would all give other
flips), the copy in a background thread overlapped with the chain (slower: 0.78-1.26 ms vs 0.66-1.0 ms,
torch's OpenMP threads oversubscribed), and the chain split over two Python threads with one generator
each (slower: 1.04-1.15 ms vs 0.84-1.06 ms; every small op hands the GIL over between the threads).
Gather and scatter cost more inside the chain than alone (0.05-0.07 ms each with fresh random indices,
~0.02 ms when the same indices repeat): ~17.5k random reads and read-modify-writes into 4 MB. The
2-thread figure scattered over 3.4-4.5x between runs of the suite and of this script on 2026-11-28/29;
with 1 thread it stayed at 2.3-2.5x. What would reach 3x with 2 threads is one compiled loop (geometric
steps, XOR in place) instead of ~15 torch operations: a C++/CUDA extension or Numba, a build dependency
the project does not have.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from mcel_search.core.biterrors import SPARSE_MAX_P, flip_bits

DEFAULT_PS = (1e-4, 1e-3, 1e-2, 1e-1)
CROSSOVER_PS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
TARGET_P = 1e-3
TARGET_VS_DENSE = 10.0
TARGET_VS_COPY = 3.0


def dense_reference(codes: Tensor, bits: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Per-bit Bernoulli mask: for every code and bit ``j`` draw ``u ~ U[0, 1)``; flip if ``u < p``."""
    mask = torch.zeros_like(codes)
    for j in range(bits):
        u = torch.rand(codes.shape, device=codes.device, generator=generator)
        mask |= (u < p).to(codes.dtype) << j
    return codes ^ mask


def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def measure(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return measure


def _make_codes(numel: int, bits: int, device: torch.device, seed: int) -> Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(0, 1 << bits, (numel,), dtype=torch.uint8, generator=g).to(device)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def run(
    numel: int = 1 << 22,
    bits: int = 4,
    ps: tuple[float, ...] = DEFAULT_PS,
    repeats: int = 7,
    device: str = "cpu",
    seed: int = 0,
    reference: Callable[..., Tensor] | None = None,
) -> list[dict]:
    """Time copy, dense reference and ``flip_bits`` for each ``p``; one row (dict) per ``p``.

    Row keys: ``p``, ``method`` (the path ``flip_bits`` takes), ``copy_ms``, ``dense_ms``, ``ours_ms``
    (medians), ``dense_over_ours``, ``ours_over_copy`` (ratios of medians), ``ours_over_copy_paired``
    (median of the per-repeat ratios), and for ``p <= 1e-3`` the booleans
    ``target_vs_dense`` and ``target_vs_copy`` (``None`` above 1e-3). With ``reference`` (another
    ``flip_bits(codes, bits, p, generator=...)``, timed in the same round-robin) also ``ref_ms`` and
    ``ref_over_copy`` (and ``ref_over_copy_paired``, each ``ref`` against the copy just before it).
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be >= 1")
    dev = torch.device(device)
    measure = _timer(dev)
    codes = _make_codes(numel, bits, dev, seed)
    g_ours = _generator(dev, seed + 1)
    g_dense = _generator(dev, seed + 2)
    g_ref = _generator(dev, seed + 1)
    rows = []
    for p in ps:
        fns = {
            "copy": lambda: codes.clone(),
            "dense": lambda p=p: dense_reference(codes, bits, p, g_dense),
            "ours": lambda p=p: flip_bits(codes, bits, p, generator=g_ours),
        }
        if reference is not None:
            fns["ref"] = lambda p=p: reference(codes, bits, p, generator=g_ref)
        times: dict[str, list[float]] = {k: [] for k in fns}
        # the dense baseline frees large buffers, which makes the allocator return memory to the OS; run it
        # first, then copy and ours round-robin, each group after a warm-up (fresh pages fault slowly in VMs);
        # a reference also runs right after a copy, like ours (a copy leaves the caches cold)
        flips = ("copy", "ours") if reference is None else ("copy", "ours", "copy", "ref")
        for group in (("dense",), flips):
            for name in dict.fromkeys(group):
                fns[name]()
            for _ in range(repeats):
                for name in group:
                    times[name].append(measure(fns[name]))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        copies, step = times["copy"], len(flips) // 2  # with a reference: copy, ours, copy, ref
        at_target = p <= TARGET_P
        crossover = SPARSE_MAX_P.get(dev.type, SPARSE_MAX_P["cpu"])
        rows.append(
            {
                "p": p,
                "method": "sparse" if p < crossover else "dense",
                "copy_ms": med["copy"],
                "dense_ms": med["dense"],
                "ours_ms": med["ours"],
                "dense_over_ours": med["dense"] / med["ours"],
                "ours_over_copy": med["ours"] / med["copy"],
                # median of the per-repeat ratios (ours right after its copy): robust to load that stalls
                # whole rounds, the figure the suite reports
                "ours_over_copy_paired": statistics.median(
                    o / c for o, c in zip(times["ours"], copies[0::step], strict=True)
                ),
                "target_vs_dense": (med["dense"] / med["ours"] >= TARGET_VS_DENSE) if at_target else None,
                "target_vs_copy": (med["ours"] / med["copy"] <= TARGET_VS_COPY) if at_target else None,
            }
        )
        if reference is not None:
            rows[-1].update(
                ref_ms=med["ref"],
                ref_over_copy=med["ref"] / med["copy"],
                ref_over_copy_paired=statistics.median(
                    r / c for r, c in zip(times["ref"], copies[1::2], strict=True)
                ),
            )
    return rows


def crossover(
    numel: int = 1 << 22,
    bits: int = 4,
    ps: tuple[float, ...] = CROSSOVER_PS,
    repeats: int = 5,
    device: str = "cpu",
    seed: int = 0,
) -> list[dict]:
    """Median times of the forced sparse and dense paths of ``flip_bits`` per ``p`` (to set the crossover)."""
    dev = torch.device(device)
    measure = _timer(dev)
    codes = _make_codes(numel, bits, dev, seed)
    g = _generator(dev, seed + 1)
    rows = []
    for p in ps:
        fns = {
            m: (lambda m=m, p=p: flip_bits(codes, bits, p, generator=g, method=m))
            for m in ("sparse", "dense")
        }
        for fn in fns.values():
            fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                times[name].append(measure(fn))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        rows.append({"p": p, "sparse_ms": med["sparse"], "dense_ms": med["dense"]})
    return rows


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=1 << 22, help="number of codes (default 4M)")
    parser.add_argument("--bits", type=int, default=4, help="bits per code (default 4)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per case (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--ps", type=float, nargs="+", default=None, help="bit error rates")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--crossover", action="store_true", help="time the sparse and dense paths instead")
    parser.add_argument(
        "--reference",
        default=None,
        help="Python file with another flip_bits to time alongside (e.g. from git)",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"{args.numel} codes x {args.bits} bits, median of {args.repeats}, "
        f"load average {os.getloadavg()[0]:.2f} (other processes inflate and scatter the times)"
    )
    if args.crossover:
        rows = crossover(args.numel, args.bits, tuple(args.ps or CROSSOVER_PS), args.repeats, args.device)
        print(f"{'p':>8} {'sparse ms':>10} {'dense ms':>10} {'dense/sparse':>13}")
        for r in rows:
            ratio = r["dense_ms"] / r["sparse_ms"]
            print(f"{r['p']:>8.3g} {r['sparse_ms']:>10.3f} {r['dense_ms']:>10.3f} {ratio:>13.2f}")
        dense_wins = [r["p"] for r in rows if r["dense_ms"] <= r["sparse_ms"]]
        print(f"dense path at least as fast from p = {min(dense_wins) if dense_wins else 'never'}")
        return
    reference = _load_flip_bits(args.reference) if args.reference else None
    rows = run(
        args.numel, args.bits, tuple(args.ps or DEFAULT_PS), args.repeats, args.device, reference=reference
    )
    header = (
        f"{'p':>8} {'path':>6} {'copy ms':>9} {'dense ms':>9} {'ours ms':>9} {'dense/ours':>11} "
        f"{'ours/copy':>10} {'>=10x dense':>12} {'<=3x copy':>10}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['p']:>8.0e} {r['method']:>6} {r['copy_ms']:>9.3f} {r['dense_ms']:>9.3f} "
            f"{r['ours_ms']:>9.3f} "
            f"{r['dense_over_ours']:>11.1f} {r['ours_over_copy']:>10.2f} "
            f"{_yes_no(r['target_vs_dense']):>12} {_yes_no(r['target_vs_copy']):>10}"
        )
    checked = [r for r in rows if r["target_vs_dense"] is not None]
    for key, label in (
        ("target_vs_dense", f">= {TARGET_VS_DENSE:g}x faster than dense"),
        ("target_vs_copy", f"within {TARGET_VS_COPY:g}x of copy"),
    ):
        met = sum(bool(r[key]) for r in checked)
        verdict = "holds" if met == len(checked) else "NOT met"
        print(f"target at p <= {TARGET_P:g}, {label}: {verdict} ({met}/{len(checked)} cases)")
    if reference is not None:
        print(f"reference {args.reference}:")
        print(f"{'p':>8} {'ref ms':>9} {'ref/copy':>9} {'ours/ref':>9}")
        for r in rows:
            print(
                f"{r['p']:>8.0e} {r['ref_ms']:>9.3f} {r['ref_over_copy']:>9.2f} {r['ours_ms'] / r['ref_ms']:>9.2f}"
            )


def _load_flip_bits(path: str) -> Callable[..., Tensor]:
    """``flip_bits`` of the module in the Python file ``path`` (imported under a private name)."""
    spec = importlib.util.spec_from_file_location("_reference_biterrors", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.flip_bits


if __name__ == "__main__":
    main()
