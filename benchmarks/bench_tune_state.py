"""Suite benchmark ``tune_state``: the bytes Ray Tune's experiment snapshot writes per second, by trials.

Tune's controller writes the state of *every* trial of the experiment created so far (pending, running and
ended: each
trial's config, last result and checkpoint bookkeeping) to ``experiment_state-*.json`` once per
``TUNE_GLOBAL_CHECKPOINT_S`` seconds, plus the searcher's and the callbacks' state; the product forces that
period to 1 s (``search.runner``: a killed driver loses at most a second). So the bytes per second grow with
the trials of the experiment, not with the running ones, and the snapshot's own time is driver time taken
from the results.

What runs: a real ``tune.Tuner`` on a local Ray (2 CPUs) with ``N`` trials, 2 at a time, each a function
trainable reporting ``REPORTS`` results shaped like the product's (``RESULT_KEYS`` numeric metrics, the
count of a final trial's result here) with a small directory checkpoint each, ``num_to_keep=2`` and
``reuse_actors=True`` as ``search.runner`` sets them. Tune's own
``TuneController.save_to_dir`` is wrapped (it still runs unchanged) to time each snapshot and to add up
the sizes of the files it wrote. What is not in it: the product's Optuna searcher state (a few hundred bytes:
its baseline trial and study name) and our callbacks' state (none).

Two runs of the same ``N`` trials in one process: *before*, the period forced to 1 s as every search had
it until 2026-12-02; *now*, the product's default for ``N`` trials (:func:`search.runner.snapshot_period`:
``auto`` above 150 trials, Tune's max(10 s, 19x the snapshot time),
``ray/tune/execution/experiment_state.py``).
Rows (whole-run figures; a snapshot holds every trial created so far, so it grows over the run to its
full size at the end): bytes per second the snapshots wrote, the share of the driver's wall time
spent in them, the seconds one snapshot takes, and the run's wall time now over before. One run each
(minutes), not a median.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Row

REPORTS = 1  # results per trial (2 or more: each trial would force a snapshot, see the module docstring)
RESULT_KEYS = 40  # numeric metrics per result (a final product result has ~40)
AT_ONCE = 2


def _trainable(config: dict[str, Any]) -> None:
    """A trial that reports ``REPORTS`` product-shaped results, each with a small checkpoint."""
    from ray import tune

    for epoch in range(1, REPORTS + 1):
        metrics = {f"metric_{i:02d}": config["x"] * i + epoch for i in range(RESULT_KEYS)}
        metrics["epoch"] = epoch
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "model.pt").write_bytes(b"\0" * 1024)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def measure(trials: int, period: str) -> dict[str, float]:
    """Run ``trials`` trials with ``TUNE_GLOBAL_CHECKPOINT_S=period``; returns the whole run's figures."""
    import ray
    from ray import tune
    from ray.tune.execution.tune_controller import TuneController

    saved_period = os.environ.get("TUNE_GLOBAL_CHECKPOINT_S")
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = period
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    snapshots: list[tuple[float, int]] = []  # (seconds, bytes written) per snapshot
    original = TuneController.save_to_dir

    def timed_save(self: TuneController) -> None:
        wall_start = time.time_ns()
        start = time.perf_counter()
        original(self)
        seconds = time.perf_counter() - start
        staging = Path(self._storage.experiment_driver_staging_path)
        # the files this call wrote: the experiment state, the searcher's and the callbacks' state
        stats = [p.stat() for p in staging.iterdir() if p.is_file()]
        snapshots.append(
            (seconds, sum(st.st_size for st in stats if st.st_mtime_ns >= wall_start - 1_000_000))
        )

    TuneController.save_to_dir = timed_save  # type: ignore[method-assign]
    started_ray = not ray.is_initialized()
    try:
        if started_ray:
            ray.init(num_cpus=AT_ONCE, include_dashboard=False, configure_logging=False, log_to_driver=False)
        with tempfile.TemporaryDirectory(prefix="mcel-tune-state-") as tmp:
            start = time.perf_counter()
            tuner = tune.Tuner(
                _trainable,
                param_space={"x": tune.uniform(0.0, 1.0)},
                tune_config=tune.TuneConfig(
                    num_samples=trials, max_concurrent_trials=AT_ONCE, reuse_actors=True
                ),
                run_config=tune.RunConfig(
                    name="tune-state",
                    storage_path=tmp,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    verbose=0,
                ),
            )
            grid = tuner.fit()
            wall = time.perf_counter() - start
            errors = sum(1 for r in grid if r.error is not None)
    finally:
        TuneController.save_to_dir = original  # type: ignore[method-assign]
        if saved_period is None:  # the suite's later benchmarks see the variable as it was
            os.environ.pop("TUNE_GLOBAL_CHECKPOINT_S", None)
        else:
            os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = saved_period
        if started_ray:
            ray.shutdown()
    if errors:
        raise RuntimeError(
            f"{errors} of {trials} trials failed; the snapshot figures would not be of {trials}"
        )
    if not snapshots:
        raise RuntimeError("Tune took no snapshot: TuneController.save_to_dir was not called (a Ray change?)")
    seconds = sum(s[0] for s in snapshots)
    written = sum(s[1] for s in snapshots)
    return {
        "trials": float(trials),
        "snapshots": float(len(snapshots)),
        "wall_s": wall,
        "bytes_per_snapshot": written / len(snapshots),
        "snapshot_s": seconds / len(snapshots),
        "snapshot_max_s": max(s[0] for s in snapshots),
        "bytes_per_s": written / wall,
        "driver_share": seconds / wall,
    }


def rows(now: dict[str, float], before: dict[str, float], period: str) -> list[Row]:
    n = int(now["trials"])
    setup = (
        f"{n:,} trials ({REPORTS} result of {RESULT_KEYS} metrics and a checkpoint each, {AT_ONCE} at once)"
    )

    def runs(key: str, scale: float, unit: str) -> str:
        now_s, before_s = f"{now[key] * scale:.3g} {unit}", f"{before[key] * scale:.3g} {unit}"
        label = period if period == "auto" else f"{period} s"
        return f"now (period {label}) {now_s}, before (period 1 s) {before_s}"

    return [
        Row(
            "tune_state",
            "tune_state.bytes_per_s",
            f"bytes/s Tune's experiment snapshots wrote, {n:,} trials in the experiment",
            "-",
            now["bytes_per_s"] / 1e6,
            unit="MB/s",
            detail=f"{setup}; {now['bytes_per_snapshot'] / 1e6:.1f} MB per snapshot "
            f"({now['bytes_per_snapshot'] / n:.0f} B per trial); snapshots: "
            f"{int(now['snapshots'])} in {now['wall_s']:.0f} s now, {int(before['snapshots'])} in "
            f"{before['wall_s']:.0f} s before",
            before=before["bytes_per_s"] / 1e6,
        ),
        Row(
            "tune_state",
            "tune_state.driver_share",
            f"share of the driver's wall time in Tune's snapshots, {n:,} trials",
            "-",
            100 * now["driver_share"],
            unit="%",
            detail=f"{setup}; one snapshot: "
            + runs("snapshot_s", 1.0, "s")
            + f" (max {now['snapshot_max_s']:.2f} s)",
            before=100 * before["driver_share"],
        ),
        Row(
            "tune_state",
            "tune_state.wall",
            f"wall time of the {n:,}-trial run, now over before",
            "the same run with the period forced to 1 s",
            now["wall_s"] / before["wall_s"],
            detail=f"{setup}; " + runs("wall_s", 1.0, "s"),
        ),
    ]


def compare(trials: int) -> tuple[dict[str, float], dict[str, float], str]:
    """(now, before, now's period) for ``trials`` trials: before first, then the product's default."""
    from mcel_search.search.runner import snapshot_period

    period = snapshot_period(trials)
    before = measure(trials, "1")
    return measure(trials, period), before, period


def bench_tune_state(quick: bool, device: torch.device) -> list[Row]:
    """Suite entry: 1,000 trials (``--quick``: 200), each period once."""
    return rows(*compare(200 if quick else 1000))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=1000, help="trials in the experiment (1 to 100,000)")
    args = p.parse_args(argv)
    if not 1 <= args.trials <= 100_000:
        p.error(f"--trials {args.trials} is not allowed: an integer from 1 to 100,000")
    now, before, period = compare(args.trials)
    print("now", {k: round(v, 4) for k, v in now.items()})
    print("before", {k: round(v, 4) for k, v in before.items()})
    for row in rows(now, before, period):
        print(f"{row.what}: {row.ratio:.3g} {row.unit} (before {row.before}); {row.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
