"""Search benchmarks: the cost of Ray Tune + Optuna + MLflow around the trials, and what pruning saves.

* ``search``: ``N`` trials through the real search (:func:`search.runner.run_search`: local Ray, Optuna
  study in SQLite, MLflow tracking into a SQLite store in a temporary directory, checkpoints every epoch)
  against the same ``N`` :class:`core.experiment.TrialSpec` s run back to back in this process by
  :func:`core.experiment.run_trial` with the trainable's per-epoch evaluation (clean accuracy and the
  objective's BER accuracy every epoch, the final BER curve and margins at the end). Both at parallelism 1
  (``concurrency: 1``, one CPU and one torch thread per trial, as the trainable sets it). Figure: wall
  time of ``run_search`` / wall time in-process; Ray's start-up (``ray.init``) is a fixed cost reported
  apart. Also: per-trial scheduling + logging overhead ``(search - in-process) / N`` in seconds. One
  search (minutes), then two in-process runs whose mean is the baseline. Full mode adds a second, short
  search (2 trials x 2 epochs) so that the overhead splits into a fixed part per trial and a part per
  reported epoch: ``overhead per trial = fixed + per_epoch * epochs``.
* ``pruning``: the quickstart search (``configs/quickstart.yaml``: 12 trials, NSGA-II seed 0, median
  pruner) against the same spec with ``pruner: none``: epochs trained by the study's trials (the CEL
  baseline, equal in both, left out) and the ``ber_acc`` of the point the search's own selection
  (:func:`analysis.queries.selections`, rule ``constraint``) picks. Targets: >= 40% fewer epochs
  (ratio <= 0.60); selected ``ber_acc`` no more than 1 point below the unpruned search's. One run each
  (minutes); with 2 concurrent trials the sampler's proposals depend on completion order, so a rerun can
  pick other points.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import Row

SEARCH_TARGET = 1.20
PRUNING_EPOCHS_TARGET = 0.60
PRUNING_ACC_TARGET = -1.0  # points: pruned selection's ber_acc minus the unpruned one's, at least this

_ROOT = Path(__file__).resolve().parent.parent


def _init_ray(num_cpus: int) -> float:
    """Start a local Ray (if none is up); returns the seconds it took."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    start = time.perf_counter()
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    return time.perf_counter() - start


def _overhead_spec(root: Path, trials: int, epochs: int) -> dict[str, Any]:
    return {
        "name": "bench-overhead",
        "dataset": "digits",
        "architectures": ["small_cnn"],
        "bits": [4],
        "losses": ["mcel"],
        "space": {"margin": {"choice": [2.0, 4.0, 8.0]}, "b": {"choice": [8.0, 16.0]}},
        "train": {"epochs": epochs, "batch_size": 64, "step_size": 10, "device": "cpu", "seed": 0},
        "objective": {"target_ber": 0.01, "reps": 10, "seed": 0},
        "sweep": {"bers": [0.0, 0.01, 0.02], "reps": 10},
        "trials_per_arch": trials,
        "concurrency": 1,
        "resources": {"cpu": 1, "gpu": 0},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "baseline": {"enabled": False},
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "bench-overhead"},
        "storage": {"path": str(root / "ray")},
    }


def _in_process(specs: list[Any], context: dict[str, Any], out: Path) -> float:
    """Run ``specs`` back to back with the trainable's evaluation; wall seconds."""
    from core.evaluation import ber_sweep, cache_batches, evaluate_accuracy
    from core.experiment import run_trial

    objective, sweep = context["objective"], context["sweep"]
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # what the trainable does with cpus_per_trial = 1
    start = time.perf_counter()
    try:
        for i, spec in enumerate(specs):
            cache: dict[str, Any] = {}

            def on_epoch(stats: Any, trainer: Any, cache: dict[str, Any] = cache, spec: Any = spec) -> None:
                if "test" not in cache:
                    from core.data import load_dataset

                    data = load_dataset(spec.dataset, **spec.data_kwargs())
                    cache["test"] = cache_batches(data.test, trainer.device)
                test = cache["test"]
                stats.extra["clean_acc"] = evaluate_accuracy(trainer.model, test)
                final = trainer.epoch >= spec.train.epochs
                bers = sweep["bers"] if final else [objective["target_ber"]]
                reps = sweep["reps"] if final else objective["reps"]
                ber_sweep(trainer.model, test, bers, reps, objective["seed"], p10=objective.get("p10"))

            run_trial(spec, out_dir=out / f"trial{i}", on_epoch=on_epoch)
    finally:
        torch.set_num_threads(saved)
    return time.perf_counter() - start


def _search_vs_in_process(root: Path, trials: int, epochs: int, inproc_runs: int) -> dict[str, Any]:
    """One search of ``trials`` x ``epochs`` and ``inproc_runs`` in-process runs of its TrialSpecs."""
    from search.runner import _context, run_search
    from search.spec import parse_spec
    from search.trainable import trial_spec

    spec = parse_spec(_overhead_spec(root, trials, epochs))
    t0 = time.perf_counter()
    outcome = run_search(spec, verbose=0)
    t_search = time.perf_counter() - t0
    (arch, bits), study = spec.studies()[0], outcome.studies[0]
    context = _context(spec, arch, bits, spec.study_name(arch, bits))
    configs = [
        {"loss": t["params"]["loss"], "margin": float(t["params"]["margin"]), "b": float(t["params"]["b"])}
        | {"logit_scale": float(t["params"].get("logit_scale", 1.0))}
        for t in study.trials
    ]
    specs = [trial_spec(c, context) for c in configs]
    runs = [_in_process(specs, context, root / f"inproc{i}") for i in range(inproc_runs)]
    t_in = sum(runs) / len(runs)
    return {"n": len(specs), "epochs": epochs, "search": t_search, "runs": runs, "in": t_in}


def bench_search(quick: bool, device: torch.device) -> list[Row]:
    logging.getLogger("ray").setLevel(logging.WARNING)
    ray_start = _init_ray(2)
    with tempfile.TemporaryDirectory(prefix="mcel-bench-search-") as tmp:
        root = Path(tmp)
        if quick:
            main, short = _search_vs_in_process(root / "a", 2, 3, 1), None
        else:
            main = _search_vs_in_process(root / "a", 4, 40, 2)
            short = _search_vs_in_process(root / "b", 2, 2, 1)  # separates per-trial from per-epoch costs
    n, epochs = main["n"], main["epochs"]
    per_trial = (main["search"] - main["in"]) / n
    detail = (
        f"{n} trials of small_cnn on digits, {epochs} epochs each, concurrency 1; search {main['search']:.1f} s, "
        f"in-process {' / '.join(f'{r:.1f}' for r in main['runs'])} s ({main['in'] / n:.1f} s per trial); "
        "one search run (not a median: a search takes minutes)"
    )
    rows = [
        Row("search", "search.overhead", f"run_search, {n} trials (Ray Tune + Optuna + MLflow)",
            f"the same {n} TrialSpecs in-process (run_trial + trainable's evaluation)",
            main["search"] / main["in"], ("<=", SEARCH_TARGET), detail=detail),
        Row("search", "search.per_trial", f"scheduling + logging overhead per trial ({epochs} epochs)", "-",
            per_trial, None, unit="s"),
    ]  # fmt: skip
    if short is not None:
        per_short = (short["search"] - short["in"]) / short["n"]
        per_epoch = (per_trial - per_short) / (epochs - short["epochs"])
        fixed = per_short - per_epoch * short["epochs"]
        rows += [
            Row("search", "search.per_trial_fixed", "overhead per trial, fixed part", "-", fixed, None,
                unit="s", detail=f"from a second search of {short['n']} trials x {short['epochs']} epochs "
                f"(overhead {per_short:.2f} s per trial) and the first: overhead = fixed + per-epoch x epochs"),
            Row("search", "search.per_epoch", "overhead per reported epoch (report, checkpoint, MLflow)", "-",
                per_epoch, None, unit="s"),
        ]  # fmt: skip
    rows.append(
        Row("search", "search.ray_init", "ray.init (local, once per search process)", "-", ray_start, None,
            unit="s")
    )  # fmt: skip
    return rows


def _quickstart(root: Path, name: str, pruner: dict | None) -> dict[str, Any]:
    spec = yaml.safe_load((_ROOT / "configs" / "quickstart.yaml").read_text())
    spec = copy.deepcopy(spec)
    spec["name"] = name
    spec["tracking"] = {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": name}
    spec["storage"] = {"path": str(root / "ray")}
    if pruner is not None:
        spec["pruner"] = pruner
    return spec


def bench_pruning(quick: bool, device: torch.device) -> list[Row]:
    if quick:
        skip = "--quick: two searches of minutes each"
        return [
            Row("pruning", "pruning.epochs", "epochs trained, quickstart with median pruner", "pruner none",
                None, ("<=", PRUNING_EPOCHS_TARGET), skipped=skip),
            Row("pruning", "pruning.ber_acc", "selected ber_acc, pruned - unpruned", "-", None,
                (">=", PRUNING_ACC_TARGET), unit="points", skipped=skip),
        ]  # fmt: skip
    from analysis.queries import selections
    from search.runner import run_search
    from search.spec import parse_spec

    logging.getLogger("ray").setLevel(logging.WARNING)
    _init_ray(2)
    res: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="mcel-bench-pruning-") as tmp:
        root = Path(tmp)
        for label, pruner in (("pruned", None), ("unpruned", {"name": "none"})):
            spec = parse_spec(_quickstart(root, f"bench-{label}", pruner))
            t0 = time.perf_counter()
            outcome = run_search(spec, verbose=0)
            seconds = time.perf_counter() - t0
            trials = outcome.studies[0].trials
            epochs = sum(int(t["metrics"].get("epoch", 0)) for t in trials)
            pruned = sum(t["state"] == "pruned" for t in trials)
            _, sels, _ = selections(spec.experiment_name(), tracking_uri=outcome.tracking_uri)
            row = sels[0].row
            res[label] = {
                "epochs": epochs,
                "pruned": pruned,
                "trials": len(trials),
                "ber_acc": float(row["ber_acc"]) if row is not None else float("nan"),
                "clean_acc": float(row["clean_acc"]) if row is not None else float("nan"),
                "seconds": seconds,
            }
    p, u = res["pruned"], res["unpruned"]
    detail = (
        f"pruned: {p['epochs']:.0f} epochs over {p['trials']:.0f} trials ({p['pruned']:.0f} pruned), "
        f"{p['seconds']:.0f} s, selected ber_acc {100 * p['ber_acc']:.2f}% (clean {100 * p['clean_acc']:.2f}%); "
        f"unpruned: {u['epochs']:.0f} epochs, {u['seconds']:.0f} s, selected ber_acc {100 * u['ber_acc']:.2f}% "
        f"(clean {100 * u['clean_acc']:.2f}%); one run each"
    )
    return [
        Row("pruning", "pruning.epochs", "epochs trained, quickstart (12 trials) with median pruner",
            "the same search with pruner none", p["epochs"] / max(u["epochs"], 1),
            ("<=", PRUNING_EPOCHS_TARGET), detail=detail),
        Row("pruning", "pruning.ber_acc", "selected point's ber_acc, pruned - unpruned search", "-",
            100 * (p["ber_acc"] - u["ber_acc"]), (">=", PRUNING_ACC_TARGET), unit="points"),
        Row("pruning", "pruning.wall", "wall time, pruned search", "unpruned search",
            p["seconds"] / u["seconds"], None),
    ]  # fmt: skip
