"""Suite benchmark ``load``: the driver at 1,000 concurrent trials (:mod:`benchmarks.load`), now vs before.

Two configurations run one after the other in this process against one real MLflow server on 127.0.0.1
(SQLite, one worker, as ``cluster.yaml`` starts it) and SQLite Optuna studies:

* **now**: the product's defaults: two sender threads (a trial's calls always through the same one), a
  trial's results coalesced into one ``log_batch`` while its call waits, pruning decisions in memory with
  the records written behind;
* **before**: one sender thread, a ``log_batch`` per result, each decision on the SQLite study (a write and
  a read of every running trial per report).

Rows: results per second the driver loop sustained (target >= 200), MLflow lag p50 and p99 (a result due
-> its write returned; target p99 <= 5 s), the driver lag p99 (due -> decision), results lost (target 0,
read back from the server's database) and the driver's CPU seconds per 1,000 results. Each is one run
(minutes), not a median. Beside them, what the lag target asks of the tracking server: the ``log_batch``
calls/s this server answers with nothing else running (:func:`~benchmarks.load.server_capacity`, 10 s
after 5 s of warm-up, before the load) and the calls/s a 5 s lag needs at this load (:func:`~benchmarks.load.calls_needed`: every
running trial's run written once per 5 s, MLflow's REST API taking one run per call, plus three calls per
trial started). ``python -m benchmarks.bench_load --trials 1000 --duration 120`` prints them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import Row
from benchmarks.load import LIFECYCLE_CALLS, LoadResult, calls_needed, run_load, server_capacity
from benchmarks.mlflow_server import MlflowServer

RESULTS_TARGET = 200.0
LAG_P99_TARGET_S = 5.0

NOW = {"senders": 2, "coalesce": True, "write_behind": True}
BEFORE = {"senders": 1, "coalesce": False, "write_behind": False}


def measure(
    trials: int, duration_s: float, before_s: float, small: int = 0
) -> tuple[LoadResult, LoadResult, LoadResult | None, float]:
    """(now, before, now at ``small`` trials, the server's calls/s) at ``trials`` concurrent logical trials:
    ``duration_s`` for now, ``before_s`` before (``small`` = 0: no third run); the server's capacity
    (:func:`~benchmarks.load.server_capacity`) first, on the same server."""
    with tempfile.TemporaryDirectory(prefix="mcel-load-") as tmp:
        root = Path(tmp)
        server = MlflowServer(root)
        server.start()
        try:
            capacity = server_capacity(server.uri)
            out = []
            runs = [("now", NOW, duration_s, trials), ("before", BEFORE, before_s, trials)]
            if small:
                runs.append(("small", NOW, duration_s, small))
            for name, config, seconds, n in runs:
                out.append(
                    run_load(
                        server.uri,
                        root / "mlflow.db",
                        f"sqlite:///{root / f'optuna-{name}.db'}",
                        trials=n,
                        duration_s=seconds,
                        ramp_s=min(60.0, seconds / 3),
                        name=f"load-{name}",
                        **config,
                    )
                )
        finally:
            server.stop()
    return out[0], out[1], (out[2] if small else None), capacity


def rows(
    now: LoadResult, before: LoadResult, small: LoadResult | None = None, capacity: float | None = None
) -> list[Row]:
    """The suite rows of one measurement."""
    n = now.concurrent
    common = (
        f"{n:,} logical trials reporting every U(0.5, 5) s, 25th-percentile pruner, one MLflow server (SQLite, 1 worker); "
        f"now {now.wall_s:.0f} s, {now.results:,} results; before {before.wall_s:.0f} s, {before.results:,} results"
    )
    extra = []
    if small is not None:
        extra.append(
            Row(
                "load",
                "load.small_lag_p99",
                f"lag from a result to its MLflow write, p99, at {small.concurrent:,} concurrent trials",
                "-",
                small.mlflow_lag_p99_s,
                unit="s",
                detail=f"p50 {small.mlflow_lag_p50_s:.2f} s, {small.results_per_s:.0f} results/s, "
                f"{small.lost + small.duplicated} lost or twice; where one SQLite MLflow server on this machine "
                "still keeps up",
            )
        )
    return [
        Row(
            "load",
            "load.results_per_s",
            f"results/s the driver sustains at {n:,} concurrent trials",
            "-",
            now.results_per_s,
            (">=", RESULTS_TARGET),
            unit="results/s",
            detail=common,
            before=before.results_per_s,
        ),
        Row(
            "load",
            "load.mlflow_lag_p50",
            "lag from a result to its MLflow write, p50",
            "-",
            now.mlflow_lag_p50_s,
            unit="s",
            detail=f"max {now.mlflow_lag_max_s:.1f} s (before: {before.mlflow_lag_max_s:.1f} s)",
            before=before.mlflow_lag_p50_s,
        ),
        Row(
            "load",
            "load.mlflow_lag_p99",
            "lag from a result to its MLflow write, p99",
            "-",
            now.mlflow_lag_p99_s,
            ("<=", LAG_P99_TARGET_S),
            unit="s",
            before=before.mlflow_lag_p99_s,
        ),
        Row(
            "load",
            "load.driver_lag_p99",
            "lag from a result to its pruning decision (a trial waits this in tune.report), p99",
            "-",
            now.driver_lag_p99_s,
            unit="s",
            before=before.driver_lag_p99_s,
        ),
        Row(
            "load",
            "load.lost",
            "results lost or logged twice (read back from the server's database)",
            "-",
            float(now.lost + now.duplicated),
            ("<=", 0.0),
            unit="results",
            detail=f"before: {before.lost} lost, {before.duplicated} twice",
            before=float(before.lost + before.duplicated),
        ),
        Row(
            "load",
            "load.driver_cpu",
            "driver CPU per 1,000 results (loop, logger, scheduler)",
            "-",
            1000 * now.driver_cpu_s / max(1, now.results),
            unit="s",
            detail=f"peak RSS {now.driver_peak_rss_mb:.0f} MB; final flush {now.final_flush_s:.1f} s "
            f"(before {before.final_flush_s:.1f} s)",
            before=1000 * before.driver_cpu_s / max(1, before.results),
        ),
        *extra,
        *([] if capacity is None else _capacity_rows(now, capacity)),
    ]


def _capacity_rows(now: LoadResult, capacity: float) -> list[Row]:
    """What the lag target asks of the tracking server, beside what this machine's server answers."""
    needed = calls_needed(now, LAG_P99_TARGET_S)
    return [
        Row(
            "load",
            "load.server_capacity",
            "MLflow calls/s the server answers alone (log_batch of 9 metrics, 2 client threads, 10 s)",
            "-",
            capacity,
            unit="calls/s",
            detail="same server, before the load runs, after 5 s of the same calls; the ceiling of the load's writes",
        ),
        Row(
            "load",
            "load.calls_needed",
            f"MLflow calls/s a lag of {LAG_P99_TARGET_S:g} s needs at {now.concurrent:,} trials",
            "-",
            needed,
            unit="calls/s",
            detail=f"{now.concurrent:,} trials / {LAG_P99_TARGET_S:g} s + {LIFECYCLE_CALLS} calls per trial started "
            f"({now.trials_started:,} in {now.wall_s:.0f} s: create, params, end); "
            f"{needed / capacity:.1f}x what this server answers alone",
        ),
    ]


def bench_load(quick: bool, device: torch.device) -> list[Row]:
    """Suite entry: 1,000 trials for 120 s (before: 60 s), then 250 for 120 s; ``--quick``: 200 trials
    for 30 s (both)."""
    return rows(*(measure(200, 30.0, 30.0) if quick else measure(1000, 120.0, 60.0, small=250)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=1000, help="concurrent logical trials")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load, now")
    p.add_argument("--before-duration", type=float, default=60.0, help="seconds of load, before")
    p.add_argument("--small", type=int, default=0, help="also run now at this many trials (0: no)")
    args = p.parse_args(argv)
    now, before, small, capacity = measure(args.trials, args.duration, args.before_duration, args.small)
    for label, r in (("now", now), ("before", before), ("small", small)):
        if r is not None:
            print(label, json.dumps(dataclasses.asdict(r)))
    for row in rows(now, before, small, capacity):
        print(f"{row.what}: {row.ratio:.3g} {row.unit} (before {row.before}) {row.passed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
