"""Run a validated search spec: per (architecture, bits) a CEL baseline trial and an Optuna-driven Ray Tune
search, tracked in MLflow, resumable.

For each study ``<spec>-<arch>-<bits>b``:

1. a **parent MLflow run** (found again on resume);
2. if ``baseline.enabled``: one CEL trial with the same training and error seeds (its own small Tune run
   ``<study>-baseline``), so every MCEL point has a paired baseline;
3. the **search**: ``PruningAwareOptunaSearch`` over a persisted Optuna study (RDB storage, two objectives
   ``clean_acc`` and ``ber_acc``, both maximized), ``OptunaPruningScheduler`` asking the spec's pruner,
   ``trials_per_arch`` trials, at most ``concurrency`` at a time, each with ``resources`` (``tune.with_resources``),
   retried ``failure.max_retries`` times from its last checkpoint.

``resume=True`` restores every Tune run that exists under the storage path (``Tuner.restore``; finished
trials are kept, unfinished ones continue from their checkpoints) and starts the ones that do not exist;
without it an existing run is an error (so a second search cannot silently mix with the first).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.spec import SearchSpec, create_pruner, create_sampler, flatten, spec_to_dict

logger = logging.getLogger(__name__)

OBJECTIVES = ("clean_acc", "ber_acc")


class SearchStateError(ValueError):
    """An existing run in the way (without --resume), or nothing to resume."""


@dataclass
class StudyOutcome:
    """What one (architecture, bits) study ended with."""

    study: str
    arch: str
    bits: int
    parent_run_id: str
    trials: list[dict[str, Any]] = field(
        default_factory=list
    )  # one per trial: state, params, metrics, run id
    baseline: dict[str, Any] | None = None


@dataclass
class SearchOutcome:
    """What :func:`run_search` ended with."""

    experiment_id: str
    tracking_uri: str
    storage_path: str
    studies: list[StudyOutcome]


def _space_tuples(spec: SearchSpec) -> dict[str, tuple]:
    return {name: (p.kind, p.values, p.low, p.high) for name, p in spec.space.items()}


def resolve_storage_path(path: str) -> str:
    """Absolute local path, or the URI unchanged for remote storage (``s3://``, ``gs://``...)."""
    if "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def _resolve_tracking_uri(uri: str) -> str:
    """Make ``sqlite:///relative.db`` absolute so Ray workers and later commands find the same store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


def _optuna_storage(spec: SearchSpec, storage_path: str) -> str:
    if spec.storage.optuna:
        url = _resolve_tracking_uri(spec.storage.optuna)
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        return url
    if "://" in storage_path:
        raise SearchStateError(
            "storage.optuna: null — with a remote storage.path an Optuna RDB URL must be given "
            "(e.g. the cluster's postgresql:// or a sqlite:/// file on the head node)"
        )
    db = Path(storage_path) / spec.name / "optuna.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def _context(spec: SearchSpec, arch: str, bits: int, study: str) -> dict[str, Any]:
    d = spec_to_dict(spec)
    data = {
        "name": spec.data.name,
        "root": spec.data.root,
        "split_seed": spec.data.split_seed,
        "limit_train": spec.data.limit_train,
        "limit_test": spec.data.limit_test,
    }
    sweep_bers = sorted({*spec.sweep.bers, spec.objective.target_ber})
    return {
        "arch": arch,
        "bits": bits,
        "study": study,
        "data": data,
        "train": dict(d["train"]),
        "objective": dict(d["objective"]),
        "sweep": {"bers": sweep_bers, "reps": spec.sweep.reps},
        "cpus_per_trial": spec.resources.cpu,
    }


def plan(spec: SearchSpec, tracking_uri: str, storage_path: str) -> str:
    """The human-readable plan ``--dry-run`` prints."""
    lines = [
        f"search {spec.name!r} on {spec.data.name}: {len(spec.studies())} studies, "
        f"{spec.trials_per_arch} trials each" + (" + 1 CEL baseline" if spec.baseline.enabled else ""),
        f"  objectives: clean_acc, ber_acc at BER {spec.objective.target_ber:g} "
        f"({spec.objective.reps} shared realizations, seed {spec.objective.seed}), both maximized",
        f"  sampler {spec.sampler.name} (seed {spec.sampler.seed}); pruner {spec.pruner.name} on {spec.pruner.metric}",
        f"  per trial: {spec.train.epochs} epochs, {spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU; "
        f"at most {spec.concurrency} at once; {spec.failure.max_retries} retries",
        "  space: "
        + ", ".join(
            f"{k}={v.kind}{list(v.values) if v.values else [v.low, v.high]}" for k, v in spec.space.items()
        ),
    ]
    for arch, bits in spec.studies():
        lines.append(
            f"  study {spec.study_name(arch, bits)}: {arch} {bits}-bit, losses {', '.join(spec.losses)}"
        )
    lines += [
        f"  MLflow: {tracking_uri} experiment {spec.experiment_name()!r}",
        f"  Ray Tune storage: {storage_path}/<study>; Optuna: {spec.storage.optuna or storage_path + '/' + spec.name + '/optuna.db'}",
    ]
    return "\n".join(lines)


def _init_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


def _tuner(
    *,
    name: str,
    storage_path: str,
    trainable: Any,
    resume: bool,
    tune_config: Any,
    callbacks: list,
    max_failures: int,
    param_space: dict | None,
    verbose: int,
) -> Any:
    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig

    path = (
        os.path.join(storage_path, name)
        if "://" not in storage_path
        else f"{storage_path.rstrip('/')}/{name}"
    )
    exists = tune.Tuner.can_restore(path)
    if exists and resume:
        logger.info("resuming %s", path)
        return tune.Tuner.restore(
            path, trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
        )
    if exists:
        raise SearchStateError(
            f"storage.path: {path!r} — a search named {name!r} already exists there; pass --resume to continue it, "
            "or change the spec's name or storage path"
        )
    run_config = RunConfig(
        name=name,
        storage_path=storage_path,
        callbacks=callbacks,
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        verbose=verbose,
    )
    return tune.Tuner(
        trainable, tune_config=tune_config, run_config=run_config, param_space=param_space or {}
    )


def run_search(
    spec: SearchSpec,
    *,
    resume: bool = False,
    tracking_uri: str | None = None,
    storage_path: str | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    verbose: int = 1,
) -> SearchOutcome:
    """Run (or resume) every study of ``spec``; see the module docstring."""
    import optuna
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune import TuneConfig

    from search.pruning import OptunaPruningScheduler
    from search.searcher import PruningAwareOptunaSearch, SearchSpace
    from search.tracking import MlflowTrialLogger, get_or_create_experiment, parent_run
    from search.trainable import mcel_trial

    tracking_uri = _resolve_tracking_uri(tracking_uri or spec.tracking.uri)
    storage_path = resolve_storage_path(storage_path or spec.storage.path)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # snapshot often: a killed driver loses little
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    optuna_url = _optuna_storage(spec, storage_path)
    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, spec.experiment_name())
    _init_ray(ray_address, num_cpus)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    flat = flatten(spec_to_dict(spec))
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    outcomes = []
    for arch, bits in spec.studies():
        study = spec.study_name(arch, bits)
        tags = {"arch": arch, "bits": str(bits), "dataset": spec.data.name, "mcel.spec": spec.name}
        parent = parent_run(client, experiment_id, study, tags, flat)
        context = _context(spec, arch, bits, study)
        trainable = tune.with_resources(tune.with_parameters(mcel_trial, context=context), resources)
        fixed_params = {
            k: v
            for k, v in flat.items()
            if k.startswith(("train.", "objective.", "sweep.", "dataset", "data."))
        }
        if spec.baseline.enabled:
            logger_cb = MlflowTrialLogger(
                tracking_uri, experiment_id, parent, study, tags, fixed_params, role="baseline"
            )
            tuner = _tuner(
                name=f"{study}-baseline",
                storage_path=storage_path,
                trainable=trainable,
                resume=resume,
                tune_config=TuneConfig(num_samples=1, trial_dirname_creator=trial_dirname),
                callbacks=[logger_cb],
                max_failures=spec.failure.max_retries,
                param_space={"loss": "cel", "logit_scale": spec.baseline.logit_scale or 1.0},
                verbose=verbose,
            )
            tuner.fit()
        sampler = create_sampler(spec.sampler)
        rdb = optuna.storages.RDBStorage(optuna_url)
        searcher = PruningAwareOptunaSearch(
            space=SearchSpace(spec.losses, _space_tuples(spec)),
            metric=list(OBJECTIVES),
            mode=["max", "max"],
            sampler=sampler,
            storage=rdb,
            study_name=study,
        )
        scheduler = OptunaPruningScheduler(
            create_pruner(spec.pruner),
            metric=spec.pruner.metric,
            mode=spec.pruner.mode,
            study_name=f"{study}-pruning",
            storage=optuna_url,
        )
        tuner = _tuner(
            name=study,
            storage_path=storage_path,
            trainable=trainable,
            resume=resume,
            tune_config=TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=spec.trials_per_arch,
                max_concurrent_trials=spec.concurrency,
                trial_dirname_creator=trial_dirname,
            ),
            callbacks=[MlflowTrialLogger(tracking_uri, experiment_id, parent, study, tags, fixed_params)],
            max_failures=spec.failure.max_retries,
            param_space=None,
            verbose=verbose,
        )
        grid = tuner.fit()
        _reconcile_optuna(optuna_url, study, grid)
        client.set_tag(parent, "mcel.state", "finished")
        client.set_terminated(parent, "FINISHED")
        outcomes.append(_study_outcome(client, experiment_id, study, arch, bits, parent))
    return SearchOutcome(
        experiment_id=experiment_id, tracking_uri=tracking_uri, storage_path=storage_path, studies=outcomes
    )


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (Tune's default embeds every parameter)."""
    number = trial.config.get("_optuna_number")
    return f"trial_{number:03d}_{trial.trial_id}" if number is not None else f"trial_{trial.trial_id}"


def _reconcile_optuna(url: str, study: str, grid: Any) -> None:
    """Close RUNNING Optuna trials that no Tune trial owns (left by a driver killed mid-ask)."""
    import optuna

    from search.searcher import NUMBER_KEY, close_orphans

    live = set()
    for result in grid:
        number = (result.config or {}).get(NUMBER_KEY)
        if number is not None:
            live.add(int(number))
    s = optuna.load_study(study_name=study, storage=url)
    closed = close_orphans(s, live, "no Tune trial owns it (driver restarted)")
    if closed:
        logger.warning("closed %d orphaned Optuna trials in %s", closed, study)


def _study_outcome(
    client: Any, experiment_id: str, study: str, arch: str, bits: int, parent: str
) -> StudyOutcome:
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`mcel.study` = '{study}' and tags.`mcel.role` != 'parent'"
    )
    outcome = StudyOutcome(study=study, arch=arch, bits=bits, parent_run_id=parent)
    for run in runs:
        row = {
            "run_id": run.info.run_id,
            "role": run.data.tags.get("mcel.role"),
            "state": run.data.tags.get("mcel.state"),
            "number": run.data.tags.get("mcel.optuna_number"),
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
        }
        if row["role"] == "baseline":
            outcome.baseline = row
        else:
            outcome.trials.append(row)
    return outcome
