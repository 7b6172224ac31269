"""The benchmark suite: every performance target of the project, measured as ratios; writes RESULTS.md.

Usage (from the repository root; ``make bench`` runs the first line)::

    .venv/bin/python -m benchmarks.suite                       # everything, ~20 min on 2 CPU cores
    .venv/bin/python -m benchmarks.suite --quick               # small sizes, no pruning searches (~1-2 min)
    .venv/bin/python -m benchmarks.suite --only flips,train    # some benchmarks (names below)
    .venv/bin/python -m benchmarks.suite --device cuda         # on a GPU (default: cuda when present)

Benchmarks (``--only`` names), each described in its module:

* ``flips`` (:mod:`benchmarks.bench_flips`): the bit-error engine vs a dense per-bit Bernoulli mask and
  vs a copy, 4M 4-bit codes, p in {1e-4, 1e-3, 1e-2, 1e-1}.
* ``sweep``, ``memory``, ``scaling`` (:mod:`benchmarks.bench_eval`): BER sweep time overhead and peak
  memory over clean passes; sweep throughput by batch size and threads.
* ``train`` (:mod:`benchmarks.bench_train`): MCEL vs CEL step, QAT vs float step.
* ``loader`` (:mod:`benchmarks.bench_loader`): an epoch's batches of in-memory data, fast path vs DataLoader.
* ``search``, ``pruning`` (:mod:`benchmarks.bench_search`): Ray Tune + Optuna + MLflow overhead over
  in-process trials; epochs saved by pruning on the quickstart search.
* ``load`` (:mod:`benchmarks.bench_load`): the driver at 1,000 concurrent (logical) trials against a real
  MLflow server: results/s, MLflow lag p50/p99, results lost; now vs the design before, in one process.
* ``baselines`` (:mod:`benchmarks.bench_baselines`): wall time of a study with its CEL baseline alongside
  (and before, as until 2026-12-02) vs the same study alone, at concurrency 2.
* ``tune_state`` (:mod:`benchmarks.bench_tune_state`): bytes/s and driver time of Ray Tune's experiment
  snapshot with 1,000 trials in the experiment.

``--out`` (default ``benchmarks/RESULTS.md``) is rewritten with the rows that ran, and the rows are also
stored beside it (``RESULTS.json``); ``--merge`` keeps the rows of benchmarks not run now from that
file (e.g. ``--only flips --merge`` after changing the engine). ``--save-json FILE`` stores the rows
elsewhere too; ``--before FILE`` (default ``benchmarks/before.json`` when it exists) adds a "before"
column from such a file, e.g. one recorded on the tree before a fast path.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import bench_flips
from benchmarks.common import Machine, Row, load_before, render, write_json

_HERE = Path(__file__).resolve().parent

FLIPS_TARGET_P = 1e-3


def bench_flips_rows(quick: bool, device: torch.device) -> list[Row]:
    """Rows of :func:`benchmarks.bench_flips.run` (dense timed first, then copy and ours round-robin), at
    torch's thread count and, on CPU with more than one thread, also at one thread (the sparse path is
    serial while the copy it is compared with runs on every thread)."""
    numel, ps, repeats = (1 << 20, (1e-3, 1e-2), 5) if quick else (1 << 22, bench_flips.DEFAULT_PS, 21)
    saved = torch.get_num_threads()
    settings = [saved] + ([1] if device.type == "cpu" and saved > 1 and not quick else [])
    rows = []
    for threads in settings:
        torch.set_num_threads(threads)
        try:
            results = bench_flips.run(numel=numel, bits=4, ps=ps, repeats=repeats, device=device.type)
        finally:
            torch.set_num_threads(saved)
        tag = "" if threads == saved else f"t{threads}."
        where = f"{threads} thread(s)" if device.type == "cpu" else device.type
        for r in results:
            p, at = r["p"], r["p"] <= FLIPS_TARGET_P
            detail = (
                f"{r['method']} path; ours {r['ours_ms']:.3f} ms, copy {r['copy_ms']:.3f} ms, dense "
                f"{r['dense_ms']:.2f} ms ({numel} 4-bit codes, {where}, medians of {repeats})"
            )
            what = f"flip_bits, p={p:g}, {where}"
            rows.append(
                Row("flips", f"flips.{tag}dense.p{p:g}", what, "dense per-bit mask (figure: its time / ours)",
                    r["dense_over_ours"], (">=", bench_flips.TARGET_VS_DENSE) if at else None, detail=detail)
            )  # fmt: skip
            rows.append(
                Row("flips", f"flips.{tag}copy.p{p:g}", what, "codes.clone()", r["ours_over_copy_paired"],
                    ("<=", bench_flips.TARGET_VS_COPY) if at else None)
            )  # fmt: skip
    return rows


def _benches() -> dict[str, Callable[[bool, torch.device], list[Row]]]:
    from benchmarks import (
        bench_baselines,
        bench_eval,
        bench_load,
        bench_loader,
        bench_search,
        bench_train,
        bench_tune_state,
    )

    return {
        "flips": bench_flips_rows,
        "sweep": bench_eval.bench_sweep,
        "memory": bench_eval.bench_memory,
        "train": bench_train.bench_train,
        "loader": bench_loader.bench_loader,
        "scaling": bench_eval.bench_scaling,
        "search": bench_search.bench_search,
        "pruning": bench_search.bench_pruning,
        "load": bench_load.bench_load,
        "baselines": bench_baselines.bench_baselines,
        "tune_state": bench_tune_state.bench_tune_state,
    }


NAMES = (
    "flips",
    "sweep",
    "memory",
    "train",
    "loader",
    "scaling",
    "search",
    "pruning",
    "load",
    "baselines",
    "tune_state",
)

NOTES = [
    "- Memory (CPU): resident-set high-water mark `VmHWM`, reset right before the measured call "
    "(`malloc_trim`, then `5 > /proc/self/clear_refs`), in a fresh subprocess per measurement; the target "
    "is judged on the increment over the RSS at the start of the call (the whole-process ratio is shown "
    "too). On CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`. tracemalloc does "
    "not see torch's allocations.",
    "- Search and pruning rows are single runs (a search takes minutes), not medians; their detail says so.",
    "- A failing row is a finding, not a crash: the suite always writes the table; the report says why.",
    "- One-off dated measurements behind design choices (allocator, flip-engine crossover, pruning, MLflow "
    "sender, atomic writes) are in [MEASUREMENTS.md](MEASUREMENTS.md); the code's docstrings link there.",
    "- Load: the header gives the load average. Above the core count (other jobs on the machine), every "
    "parallel region of a multi-thread run can stall for a scheduler time slice, which swamps sub-ms "
    "operations (the 0.2 ms copy of 4M codes showed 5-11 ms medians at load 10): trust the 1-thread "
    "flips rows there, or rerun `make bench` on a quiet machine.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; skip the pruning searches")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(NAMES)}")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=str(_HERE / "RESULTS.md"), help="the Markdown file to write")
    parser.add_argument("--save-json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--before", default=str(_HERE / "before.json"), help="rows to show as 'before'")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of benchmarks not run now from the previous run (<out>.json)",
    )
    args = parser.parse_args(argv)
    names = list(NAMES) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {', '.join(NAMES)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(args.device)
    command = "python -m benchmarks.suite " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    machine = Machine()
    benches = _benches()
    rows: list[Row] = []
    start = time.perf_counter()
    failures = 0
    for name in names:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            new = benches[name](args.quick, dev)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failures += 1
            traceback.print_exc()
            new = [Row(name, f"{name}.error", f"{name} benchmark", "-", None, None, skipped=f"error: {exc}")]
        for r in new:
            shown = "-" if r.ratio is None else f"{r.ratio:.3g}"
            print(f"[bench]   {r.key}: {shown} {r.unit} {r.detail}", file=sys.stderr, flush=True)
        print(f"[bench] {name} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for r in new:
            r.run = machine.date
        rows.extend(new)
    seconds = time.perf_counter() - start
    machine.load_end = os.getloadavg()[0]
    before = load_before(Path(args.before)) if args.before else {}
    out = Path(args.out)
    notes = list(NOTES)
    previous_json = out.with_suffix(".json")
    if args.merge and previous_json.is_file():
        previous = json.loads(previous_json.read_text())
        kept = [Row.from_dict(r) for r in previous["rows"] if r["bench"] not in names]
        if kept:
            runs: dict[str, list[str]] = {}
            for r in kept:
                runs.setdefault(r.run or previous["machine"]["date"], [])
                if r.bench not in runs[r.run or previous["machine"]["date"]]:
                    runs[r.run or previous["machine"]["date"]].append(r.bench)
            notes.append(
                "- Kept from earlier runs (--merge): "
                + "; ".join(f"{', '.join(b)} measured {d}" for d, b in runs.items())
                + ". The header describes the latest run."
            )
            order = {n: i for i, n in enumerate(NAMES)}
            rows = sorted([*rows, *kept], key=lambda r: order.get(r.bench, len(order)))
    for r in rows:
        r.before = before.get(r.key, r.before)  # a row measured against its own before keeps it
    out.write_text(render(rows, machine, command, seconds, notes))
    write_json(previous_json, rows, machine, command)
    if args.save_json:
        write_json(Path(args.save_json), rows, machine, command)
    print(f"[bench] wrote {out} ({seconds / 60:.1f} min)", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
