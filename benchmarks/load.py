"""Driver load of a search with many concurrent trials: logical trials drive the driver's real callbacks.

What is real: the MLflow tracking server (a process on 127.0.0.1, the store ``cluster.yaml`` starts), the
MLflow logger (:class:`~mcel_search.search.tracking.MlflowTrialLogger`: its sender threads, buffers and HTTP
calls), the pruning scheduler (:class:`~mcel_search.search.pruning.OptunaPruningScheduler` with a percentile
pruner on a SQLite Optuna study) and their order of calls. What stands in: the trials. A Ray Tune trial is a
worker process (about 135 MB each here), so 1,000 of them do not fit a 24 GiB machine; a *logical trial*
is a schedule of results, and one loop plays Tune's controller: it takes the next due result, asks the
scheduler, hands the result to the logger, and schedules the trial's next result ``interval`` seconds after
it was processed (a Tune trial waits in ``tune.report`` until the driver took its result, so a slow driver
slows every trial). Tune's own per-result work is not in it (see ``bench_load.py`` for the real Tune run).

Figures: results per second the loop sustained, the driver lag (a result due -> its decision taken), the
MLflow lag (due -> its ``log_batch`` returned), results lost or duplicated (read back from the server's
database: every reported epoch of every trial must be there exactly once), driver CPU seconds and peak RSS.
"""

from __future__ import annotations

import heapq
import math
import os
import random
import resource
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from ray.tune.schedulers import TrialScheduler

from mcel_search.search.pruning import OptunaPruningScheduler
from mcel_search.search.searcher import NUMBER_KEY
from mcel_search.search.tracking import MlflowTrialLogger, get_or_create_experiment, nearest_rank

os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


@dataclass
class LogicalTrial:
    """What the driver's callbacks read of a Ray Tune trial."""

    trial_id: str
    config: dict[str, Any]
    last_result: dict[str, Any] = field(default_factory=dict)
    checkpoint: Any = None

    def __str__(self) -> str:
        return self.trial_id


@dataclass
class LoadResult:
    """The figures of one load run (see the module docstring)."""

    config: str
    trials_started: int
    concurrent: int
    wall_s: float
    results: int
    results_per_s: float
    driver_lag_p50_s: float
    driver_lag_p99_s: float
    mlflow_lag_p50_s: float
    mlflow_lag_p99_s: float
    mlflow_lag_max_s: float
    lost: int
    duplicated: int
    completed: int
    pruned: int
    driver_cpu_s: float
    driver_peak_rss_mb: float
    final_flush_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def stored_epochs(mlflow_db: Path, experiment_id: str) -> dict[str, list[int]]:
    """Per ``mcel.trial_key``, every step of metric ``epoch`` the server stored (read from its SQLite)."""
    with sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT t.value, m.step FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
            "JOIN tags t ON t.run_uuid = m.run_uuid AND t.key = 'mcel.trial_key' "
            "WHERE m.key = 'epoch' AND r.experiment_id = ?",
            (int(experiment_id),),
        ).fetchall()
    out: dict[str, list[int]] = {}
    for key, step in rows:
        out.setdefault(key, []).append(int(step))
    return out


def run_load(
    tracking_uri: str,
    mlflow_db: Path,
    optuna_url: str,
    *,
    trials: int = 1000,
    duration_s: float = 120.0,
    ramp_s: float = 20.0,
    interval_s: tuple[float, float] = (0.5, 5.0),
    max_epochs: int = 40,
    warmup_epochs: int = 10,
    senders: int = 2,
    coalesce: bool = True,
    write_behind: bool = True,
    seed: int = 0,
    name: str = "load",
) -> LoadResult:
    """Keep ``trials`` logical trials running for ``duration_s`` (their starts spread over ``ramp_s``, as
    workers come up), each reporting ``clean_acc`` every ``U(interval_s)`` seconds for up to ``max_epochs``
    epochs, pruned below the 25th percentile (Optuna: keep the top 75%) after ``warmup_epochs`` (a pruner that stops about a quarter
    of the trials, not every second one: a search that keeps half its trials); a finished trial's slot
    starts a new one. Then every trial still
    running is stopped, the logger and the scheduler are flushed, and the server's database is checked."""
    rng = random.Random(seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, name)
    parent = client.create_run(experiment_id, run_name=name, tags={"mcel.role": "parent"}).info.run_id
    logger = MlflowTrialLogger(
        tracking_uri,
        experiment_id,
        parent,
        name,
        {"arch": "load", "bits": "4"},
        {"bench": "load"},
        senders=senders,
        coalesce=coalesce,
    )
    scheduler = OptunaPruningScheduler(
        optuna.pruners.PercentilePruner(75.0, n_startup_trials=5, n_warmup_steps=warmup_epochs),
        metric="clean_acc",
        study_name=f"{name}-pruning",
        storage=optuna_url,
        write_behind=write_behind,
    )
    reported: dict[str, list[int]] = {}
    driver_lags: list[float] = []
    completed = pruned = 0
    numbers = iter(range(10**9))
    heap: list[tuple[float, int, LogicalTrial, dict[str, float]]] = []
    seq = iter(range(10**12))

    def start(at: float) -> None:
        number = next(numbers)
        trial = LogicalTrial(f"load_{number:05d}", {NUMBER_KEY: number, "loss": "mcel", "margin": 1.0})
        logger.on_trial_start(0, [], trial)
        plan = {"interval": rng.uniform(*interval_s), "quality": rng.gauss(0.8, 0.08), "epoch": 0}
        heapq.heappush(heap, (at + plan["interval"], next(seq), trial, plan))

    cpu0 = time.process_time()
    t0 = time.monotonic()
    end = t0 + duration_s
    for i in range(trials):
        start(t0 + ramp_s * i / trials)
    results = 0
    while heap:
        due, _, trial, plan = heapq.heappop(heap)
        now = time.monotonic()
        if due >= end or now >= end:  # (a driver that fell behind stops on time too)
            heapq.heappush(heap, (due, next(seq), trial, plan))
            break
        if due > now:
            time.sleep(due - now)
        plan["epoch"] += 1
        epoch = int(plan["epoch"])
        noise = rng.gauss(0, 0.01)
        acc = max(0.0, min(1.0, plan["quality"] * (1 - math.exp(-epoch / 6)) + noise))
        final = epoch >= max_epochs
        result = {
            "epoch": epoch,
            "training_iteration": epoch,
            "clean_acc": acc,
            "train_loss": 1.0 - acc,
            "train_acc": acc,
            "ber_acc": acc * 0.9,
            "mlm": 0.5 * acc,
            "lr": 0.001,
            "timestamp": time.time(),
            "node_id": f"node-{trial.config[NUMBER_KEY] % 8}",
            "device": "cuda:0 (logical)",
            "final": final,
        }
        decision = scheduler.on_trial_result(None, trial, result)
        trial.last_result = result
        logger.queue_result(trial, result, due)
        reported.setdefault(logger._key(trial), []).append(epoch)
        results += 1
        processed = time.monotonic()
        driver_lags.append(processed - due)
        if final or decision == TrialScheduler.STOP:
            if final:
                scheduler.on_trial_complete(None, trial, result)
                completed += 1
            else:
                pruned += 1
            logger.on_trial_complete(0, [], trial)
            start(processed)
        else:
            heapq.heappush(heap, (processed + plan["interval"], next(seq), trial, plan))
    wall = time.monotonic() - t0
    for _, _, trial, _plan in heap:  # the end of the run: Tune stops the trials still running
        if trial.last_result:
            scheduler.on_trial_remove(None, trial)
        logger.on_trial_complete(0, [], trial)
    flush0 = time.monotonic()
    logger.flush(final=True)
    logger.close()
    scheduler.flush(final=True)
    scheduler.close()
    flush_s = time.monotonic() - flush0
    cpu = time.process_time() - cpu0
    stored = stored_epochs(mlflow_db, experiment_id)
    lost = duplicated = 0
    for key, epochs in reported.items():
        have = Counter(stored.get(key, []))
        lost += sum(1 for e in epochs if have[e] == 0)
        duplicated += sum(n - 1 for n in have.values() if n > 1)
    lags = list(logger.lags)
    return LoadResult(
        config=f"senders={senders} coalesce={coalesce} pruning={'write-behind' if write_behind else 'sync'}",
        trials_started=next(numbers),
        concurrent=trials,
        wall_s=wall,
        results=results,
        results_per_s=results / wall,
        driver_lag_p50_s=nearest_rank(driver_lags, 0.5),
        driver_lag_p99_s=nearest_rank(driver_lags, 0.99),
        mlflow_lag_p50_s=nearest_rank(lags, 0.5),
        mlflow_lag_p99_s=nearest_rank(lags, 0.99),
        mlflow_lag_max_s=max(lags, default=math.nan),
        lost=lost,
        duplicated=duplicated,
        completed=completed,
        pruned=pruned,
        driver_cpu_s=cpu,
        driver_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        final_flush_s=flush_s,
        extra={
            "reported_trials": len(reported),
            "stored_trials": len(stored),
            "results_logged": logger.results_logged,
            "log_batches": logger.metric_batches,
        },
    )


#: Calls per trial's life besides its results: ``create_run``, the params' ``log_batch`` and ``set_terminated``
#: (the ending's tags and metrics ride with its last results).
LIFECYCLE_CALLS = 3


def server_capacity(
    tracking_uri: str,
    *,
    seconds: float = 10.0,
    warmup_s: float = 5.0,
    threads: int = 2,
    metrics: int = 9,
    runs: int = 100,
    name: str = "capacity",
) -> float:
    """``log_batch`` calls per second the tracking server at ``tracking_uri`` answers with nothing else
    running: ``threads`` client threads (the logger's default senders), each call ``metrics`` values (one
    result of the load's trials: 8 metrics and ``epoch``) into one of ``runs`` runs in turn, for
    ``seconds`` after ``warmup_s`` of the same calls (a fresh server answered its first seconds 20-40%
    slower). The ceiling of a load's MLflow writes: with ``n`` concurrent trials, each run is written at
    best once per ``n / calls_per_s`` seconds, so a lag of at most ``T`` needs ``n / T`` calls/s plus
    :data:`LIFECYCLE_CALLS` per trial started."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, name)
    run_ids = [client.create_run(experiment_id).info.run_id for _ in range(runs)]
    step = iter(range(10**12))  # every call at its own step (next() on a shared iterator: one at a time)

    def calls(span_s: float) -> float:
        counts = [0] * threads
        end = time.monotonic() + span_s

        def send(k: int) -> None:
            i = k
            while time.monotonic() < end:
                ts, at = int(time.time() * 1000), next(step)
                client.log_batch(run_ids[i % runs], [Metric(f"m{j}", 0.5, ts, at) for j in range(metrics)])
                counts[k] += 1
                i += threads

        start = time.monotonic()
        workers = [threading.Thread(target=send, args=(k,), name=f"capacity-{k}") for k in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return sum(counts) / (time.monotonic() - start)

    if warmup_s > 0:
        calls(warmup_s)
    return calls(seconds)


def calls_needed(result: LoadResult, lag_s: float) -> float:
    """MLflow calls per second that a lag of at most ``lag_s`` needs for ``result``'s load (see
    :func:`server_capacity`): each running trial written once per ``lag_s``, plus the trial starts'
    :data:`LIFECYCLE_CALLS` calls each."""
    return result.concurrent / lag_s + LIFECYCLE_CALLS * result.trials_started / result.wall_s
