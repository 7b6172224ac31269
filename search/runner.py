"""Run a validated search spec: per (architecture, bits) a CEL baseline trial and an Optuna-driven Ray Tune
search, tracked in MLflow, resumable.

For each study ``<spec>-<arch>-<bits>b`` (``studies_at_once`` of them at the same time, each in a thread of
the driver with its own Tune run: :func:`studies_at_once`, :func:`_run_studies`):

1. a **parent MLflow run** (found again on resume);
2. the **search**: ``PruningAwareOptunaSearch`` over a persisted Optuna study (RDB storage, two objectives
   ``clean_acc`` and ``ber_acc``, both maximized), ``OptunaPruningScheduler`` asking the spec's pruner,
   ``trials_per_arch`` trials, at most ``concurrency`` at a time, each with ``resources`` (``tune.with_resources``),
   retried ``failure.max_retries`` times from its last checkpoint;
3. if ``baseline.enabled``: one CEL trial with the same training and error seeds, so every MCEL point has a
   paired baseline. It is one more trial of the study's Tune run, started first, next to the study's trials
   (in a slot of its own where the cluster has room): not an Optuna trial, never pruned, ``mcel.role =
   baseline`` in MLflow. A search begun before 2026-12-02 ran it as its own Tune run ``<study>-baseline``
   before the study, with most slots idle meanwhile; resuming such a search continues it that way.

Before anything starts, :func:`~.preflight.preflight` checks what the spec cannot check on its own (the storage path is
writable, the tracking server answers, the data files are there, no search of the same name is in the way);
a problem is one :class:`PreflightError` line naming the field, the value and what is allowed.

A storage fault in a trial (``ENOSPC``, ``EDQUOT``, ``EROFS``: a full or read-only disk) stops the whole
search at once with a :class:`StorageFaultError` that names the path and the errno: retries would fail the
same way while the disk is full. Nothing is marked errored; the trials' checkpoints and MLflow runs stay as
they were, and ``--resume`` after freeing space continues every unfinished trial from its last checkpoint
(each trial counted once in Tune, Optuna and MLflow, as after a killed driver).

``resume=True`` restores every Tune run that exists under the storage path (``Tuner.restore``; finished
trials are kept, unfinished ones continue from their checkpoints) and starts the ones that do not exist;
without it an existing run is an error (so a second search cannot silently mix with the first).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analysis.pareto import OBJECTIVES
from ..analysis.stores import absolute_sqlite_uri, local_store_path
from ..core.errors import ResumableError
from ..core.redact import credentials_to_env, redact_credentials
from .optuna_options import create_pruner, create_sampler
from .preflight import (
    SEARCH_ID_KEY,
    SearchStateError,
    check_local_resources,
    check_ray_address,
    check_search_identity,
    preflight,
    resolve_storage_path,
)
from .spec import SearchSpec, baseline_run_name, flatten, spec_to_dict, tune_run_names

if TYPE_CHECKING:
    from .trainable import TrialContext

logger = logging.getLogger(__name__)


class StorageFaultError(ResumableError):
    """A trial hit a full or read-only disk; the search was stopped and can be resumed after freeing space."""


#: Parent-run tag: the Optuna storage URL of the study (passwords masked).
OPTUNA_STORAGE_TAG = "mcel.optuna_storage"


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
    grid: Any = None  # the study's Tune ResultGrid (with the CEL baseline's result, config ``_mcel_role``)
    baseline_grid: Any = None  # a baseline's own Tune ResultGrid (searches before 2026-12-02), else None
    optuna_storage: str = ""  # where optuna.load_study(study_name=study, storage=...) finds the study


@dataclass
class SearchOutcome:
    """What :func:`run_search` ended with."""

    experiment_id: str
    tracking_uri: str
    storage_path: str
    studies: list[StudyOutcome]


def _make_parent_dir(url: str) -> None:
    """Create the directory of a ``sqlite:///`` database (SQLite creates the file, not its folder)."""
    if url.startswith("sqlite:"):
        local_store_path(url).parent.mkdir(parents=True, exist_ok=True)


def _context(spec: SearchSpec, arch: str, bits: int) -> TrialContext:
    """The study's :class:`~mcel_search.search.trainable.TrialContext`: the spec's own sections."""
    from .trainable import TrialContext

    return TrialContext(
        study=spec.study_name(arch, bits),
        arch=arch,
        bits=bits,
        data=spec.data,
        train=spec.train,
        objective=spec.objective,
        sweep=spec.sweep,
        cpus=spec.resources.cpu,
        protocol=spec.protocol,
        gpus=spec.resources.gpu,
        checkpoint_every=spec.failure.checkpoint_every,
    )


def plan(spec: SearchSpec, tracking_uri: str, storage_path: str) -> str:
    """The human-readable plan ``--dry-run`` prints."""
    lines = [
        f"search {spec.name!r} on {spec.data.name}: {len(spec.studies())} studies, "
        f"{spec.trials_per_arch} trials each"
        + (" + 1 CEL baseline trial next to them" if spec.baseline.enabled else ""),
        f"  objectives: clean_acc, ber_acc at BER {100 * spec.objective.target_ber:g}% "
        f"({spec.objective.reps} shared realizations, seed {spec.objective.seed}), both maximized",
        f"  sampler {spec.sampler.name} (seed {spec.sampler.seed}); pruner {spec.pruner.name} on {spec.pruner.metric}",
        f"  protocol {spec.protocol.label}: "
        + ", ".join(f"{k} {v}" for k, v in spec.protocol.to_dict().items() if k != "preset"),
        f"  per trial: {spec.train.epochs} epochs, {spec.resources.cpu:g} CPU, {spec.resources.gpu:g} GPU; "
        f"at most {spec.concurrency} at once; {spec.failure.max_retries} retries",
        "  studies at once: "
        + (
            "as many as the cluster holds at full concurrency (auto)"
            if spec.studies_at_once == "auto"
            else str(spec.studies_at_once)
        ),
        f"  final curve: BERs {', '.join(f'{100 * b:g}%' for b in spec.sweep.bers)} x {spec.sweep.reps} realizations; "
        f"tolerable BER within {spec.sweep.tolerance:g} points of clean "
        f"({spec.sweep.tolerable_iters} bisection steps, each {spec.sweep.reps} passes)",
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
        f"  MLflow: {redact_credentials(tracking_uri)} experiment {spec.experiment_name()!r}",
        f"  Ray Tune storage: {storage_path}/<study>; Optuna: {spec.optuna_storage(storage_path)}",
    ]
    return redact_credentials("\n".join(lines))


def _init_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "configure_logging": False}
    from .faults import FAULT_ENV

    if os.environ.get(FAULT_ENV):  # fault injection (tests): reach the trial processes on every node
        kwargs["runtime_env"] = {"env_vars": {FAULT_ENV: os.environ[FAULT_ENV]}}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # A new local instance of its own: address="local" never attaches to a Ray cluster that another
        # process runs on this machine (a plain ray.init() would: it reads the last session's address).
        # The dashboard is off; if a user turns it on, it stays on the loopback interface. Ray's gRPC
        # ports listen on every interface whatever address it is given; Ray (2.60) starts a new local
        # instance with token authentication (its token ~/.ray/auth_token, created if missing) unless
        # RAY_AUTH_MODE says otherwise. Setting the variable here would not do: Ray reads its cached
        # config in this process and the variable in its daemons, and a mismatch locks the driver out.
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            logger.warning(
                "RAY_AUTH_MODE=disabled: the local Ray's ports accept work from anyone on the network"
            )
        for attempt in range(LOCAL_RAY_ATTEMPTS):
            try:
                ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", **kwargs)
                return
            except Exception as exc:  # Ray waits a fixed 30 s for its node; a loaded machine can need more
                if attempt + 1 == LOCAL_RAY_ATTEMPTS or not _is_startup_timeout(exc):
                    raise
                logger.warning("local Ray did not start in time (%s): trying once more", exc)
                ray.shutdown()


#: Tries to start the local Ray instance (Ray's own start-up wait is a fixed 30 s).
LOCAL_RAY_ATTEMPTS = 2


def _is_startup_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is Ray's "node timed out during startup" (a loaded machine), not a real failure."""
    text = str(exc)
    return "timed out during startup" in text or "waiting for node to startup" in text


def experiment_dir(storage_path: str, name: str) -> str:
    """Where Ray Tune keeps the Tune run ``name``: a local directory or a URI under the storage path."""
    return (
        os.path.join(storage_path, name)
        if "://" not in storage_path
        else f"{storage_path.rstrip('/')}/{name}"
    )


LEGACY_TRAINABLE_NAME = "mcel_trial"  # every study's trainable was so named until f260926 (2026-12-04)


def trainable_name(study: str) -> str:
    """The name of ``study``'s trainable in Ray Tune: ``mcel_trial-<study>``.

    Tune keeps trainables in one process-wide registry, keyed by name, and looks a trial's trainable up
    by that name when it starts the trial's actor. Every study's trainable carries its own context (bits,
    architecture, data) through ``tune.with_parameters``; under one shared name the studies that run at
    once (``studies_at_once``) would overwrite each other's entry, and a trial could start with another
    study's context. A name per study keeps them apart. Searches begun before this name was introduced
    resume under :data:`LEGACY_TRAINABLE_NAME` (Tune requires the name a run began with), one study at a
    time (:func:`saved_trainable_name`)."""
    return f"{LEGACY_TRAINABLE_NAME}-{study}"


def saved_trainable_name(path: str) -> str | None:
    """The trainable name the Tune run at ``path`` was begun with (``tuner.pkl``'s ``__trainable_name``),
    or None when there is no such file or no name in it. Read from the pickle's opcodes
    (:mod:`pickletools`): nothing in the file is unpickled or run."""
    import pickletools

    try:
        if "://" in path:
            import pyarrow.fs

            fs, fs_path = pyarrow.fs.FileSystem.from_uri(path)
            with fs.open_input_file(f"{fs_path.rstrip('/')}/tuner.pkl") as f:
                data = f.readall()
        else:
            data = Path(path, "tuner.pkl").read_bytes()
    except (OSError, ValueError):
        return None
    strings = (
        arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str) and "UNICODE" in op.name
    )
    try:
        for value in strings:
            if value == "__trainable_name":
                return next(strings, None)
    except Exception:  # a truncated or foreign file: Tune's own restore reports it
        return None
    return None


def _legacy_names(storage_path: str, studies: list[str]) -> bool:
    """Whether a Tune run of these studies (or of their separate baselines) was begun under
    :data:`LEGACY_TRAINABLE_NAME`."""
    return any(
        saved_trainable_name(experiment_dir(storage_path, name)) == LEGACY_TRAINABLE_NAME
        for study in studies
        for name in tune_run_names(study)
    )


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
    from ray.tune.experiment import Experiment

    from . import state_seal

    path = experiment_dir(storage_path, name)
    exists = tune.Tuner.can_restore(path)
    if exists and resume:
        logger.info("resuming %s", path)
        state_seal.verify(path)  # right before unpickling: nothing someone else put there runs
        saved = saved_trainable_name(path)
        if saved is not None and saved != Experiment.get_trainable_name(trainable):
            trainable.__name__ = saved  # the study's own object: Tune restores a run under its first name
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
        callbacks=[*callbacks, state_seal.SealCallback(path)],
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        verbose=verbose,
    )
    tuner = tune.Tuner(
        trainable, tune_config=tune_config, run_config=run_config, param_space=param_space or {}
    )
    state_seal.seal(path)  # tuner.pkl is written by the constructor
    return tuner


def run_search(
    spec: SearchSpec,
    *,
    resume: bool = False,
    tracking_uri: str | None = None,
    storage_path: str | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    verbose: int = 0,
    progress: bool = False,
    baseline_alongside: bool = True,
) -> SearchOutcome:
    """Run (or resume) every study of ``spec``; see the module docstring.

    ``verbose`` is Ray Tune's own (1: its status block every few seconds); ``progress`` draws the compact
    view of :mod:`.progress` on stderr instead (``mcel search`` does, unless ``--quiet`` or
    ``--ray-status``).

    ``baseline_alongside`` (default): a study's CEL baseline is one more trial of the study's own Tune run,
    next to its first trials (:class:`~.searcher.BaselineAlongside`). False: its own one-trial Tune run
    ``<study>-baseline`` before the study, as searches before 2026-12-02 ran it (the ``baselines``
    benchmark's "before"); a resumed search that has such a run continues it that way either way."""
    import optuna
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune import TuneConfig

    from .distinct_sampler import distinct
    from .pruning import OptunaPruningScheduler
    from .searcher import BaselineAlongside, PruningAwareOptunaSearch, SearchSpace
    from .storage_guard import StorageFaultGuard
    from .tracking import MlflowTrialLogger, get_or_create_experiment, parent_run, prewarm_trial_end
    from .trainable import mcel_trial

    tracking_uri = absolute_sqlite_uri(tracking_uri or spec.tracking.uri)
    storage_path = resolve_storage_path(storage_path or spec.storage.path)
    from .tracking import default_senders

    default_senders()  # a bad MCEL_MLFLOW_SENDERS is refused before anything is created
    preflight(spec, tracking_uri, storage_path, resume=resume, check_data=not ray_address)
    import ray

    if ray_address:
        check_ray_address(ray_address)
    elif not ray.is_initialized():  # a new local Ray will be started: can it run this?
        check_local_resources(spec, num_cpus)
    optuna_url = absolute_sqlite_uri(spec.optuna_storage(storage_path))
    check_search_identity(spec, tracking_uri, optuna_url)  # read-only: nothing exists yet if refused
    if resume:  # a state someone else wrote is refused before Ray or anything else starts
        _verify_stored_state(spec, storage_path)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # its links carry the URI
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per logged model
    _quiet_mlflow_info()
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # No result.json / progress.csv / TensorBoard files per trial: MLflow holds the metrics, and writing
    # them cost the driver ~5 ms per result, which a trial waits out in tune.report every epoch
    # (set TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0 to have them)
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    _quiet_missing_trial_files()
    _make_parent_dir(optuna_url)
    # nothing pickled, logged or stored holds a password: it moves into the clients' own variables
    tracking_uri, optuna_url = credentials_to_env(tracking_uri), credentials_to_env(optuna_url)
    client = MlflowClient(tracking_uri)
    experiment_id = get_or_create_experiment(client, spec.experiment_name())
    _init_ray(ray_address, num_cpus)
    prewarm_trial_end()  # the first trial's end needs ~3 s of imports: now, while its worker starts
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    flat = {
        k: redact_credentials(v) if isinstance(v, str) else v for k, v in flatten(spec_to_dict(spec)).items()
    }
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    # one at a time in this thread: each study's parent run and Optuna study (a new store's tables once)
    jobs = []
    for arch, bits in spec.studies():
        study = spec.study_name(arch, bits)
        search_id = _search_id(optuna_url, study)
        tags = {
            "arch": arch,
            "bits": str(bits),
            "dataset": spec.data.name,
            "mcel.spec": spec.name,
            "mcel.protocol": spec.protocol.label,
            SEARCH_ID_KEY: search_id,
        }
        parent = parent_run(client, experiment_id, study, tags, flat)
        # where optuna.load_study finds this study (mcel_search.load_results reads it back)
        client.set_tag(parent, OPTUNA_STORAGE_TAG, redact_credentials(optuna_url))
        jobs.append((arch, bits, study, tags, parent))
    at_once = studies_at_once(spec, _cluster_resources())
    if at_once > 1 and resume and _legacy_names(storage_path, [j[2] for j in jobs]):
        # begun before the per-study names: they resume under one shared name, so one study at a time
        logger.info("studies begun under one trainable name resume one at a time")
        at_once = 1
    # snapshot every second while that is cheap (a killed driver loses little), self-limiting above
    _set_snapshot_period((spec.trials_per_arch + 1) * at_once)
    if at_once > 1:
        logger.info("%d of the %d studies run at once (studies_at_once)", at_once, len(jobs))
    live = None if at_once == 1 else False  # several studies' bars would draw over each other: lines

    def run_study(arch: str, bits: int, study: str, tags: dict[str, str], parent: str) -> StudyOutcome:
        client = MlflowClient(tracking_uri)  # one per thread
        context = _context(spec, arch, bits)
        baseline_grid = None
        trainable = tune.with_resources(tune.with_parameters(mcel_trial, context=context), resources)
        trainable.__name__ = trainable_name(study)  # its own entry in Tune's registry (trainable_name)
        fixed_params = {
            k: v
            for k, v in flat.items()
            if k.startswith(("train.", "objective.", "sweep.", "dataset", "data.", "protocol."))
        }
        baseline_config = {"loss": "cel", "logit_scale": spec.baseline.logit_scale or 1.0}
        # The baseline runs as one more trial of the study's own Tune run (BaselineAlongside), unless this
        # search began with a baseline run of its own (searches before 2026-12-02, or alongside=False):
        # that run is continued as it was, before the study.
        separate = spec.baseline.enabled and (
            not baseline_alongside
            or tune.Tuner.can_restore(experiment_dir(storage_path, baseline_run_name(study)))
        )
        alongside = spec.baseline.enabled and not separate
        if separate:
            logger_cb = MlflowTrialLogger(
                tracking_uri, experiment_id, parent, study, tags, fixed_params, role="baseline"
            )
            guard = StorageFaultGuard()
            tuner = _tuner(
                name=baseline_run_name(study),
                storage_path=storage_path,
                trainable=trainable,
                resume=resume,
                tune_config=TuneConfig(num_samples=1, trial_dirname_creator=trial_dirname),
                callbacks=[logger_cb, guard, *_progress(progress, spec, baseline_run_name(study), 1, live)],
                max_failures=spec.failure.max_retries,
                param_space=baseline_config,
                verbose=verbose,
            )
            baseline_grid = _fit(
                tuner,
                guard,
                logger_cb,
                baseline_run_name(study),
                experiment_dir(storage_path, baseline_run_name(study)),
            )
        # no trial repeats another's parameters in a discrete space (search.distinct_sampler)
        sampler = distinct(create_sampler(spec.sampler), spec.losses, spec.space, spec.sampler.seed)
        rdb = optuna.storages.RDBStorage(optuna_url)
        searcher = PruningAwareOptunaSearch(
            space=SearchSpace(spec.losses, spec.space),
            metric=list(OBJECTIVES),
            mode=list(OBJECTIVES.values()),
            sampler=sampler,
            storage=rdb,
            study_name=study,
        )
        logger_cb = MlflowTrialLogger(tracking_uri, experiment_id, parent, study, tags, fixed_params)
        guard = StorageFaultGuard()
        scheduler = OptunaPruningScheduler(
            create_pruner(spec.pruner),
            metric=spec.pruner.metric,
            mode=spec.pruner.mode,
            study_name=f"{study}-pruning",
            storage=optuna_url,
        )
        runs = spec.trials_per_arch + (1 if alongside else 0)
        tuner = _tuner(
            name=study,
            storage_path=storage_path,
            trainable=trainable,
            resume=resume,
            tune_config=TuneConfig(
                search_alg=BaselineAlongside(searcher, spec.concurrency, baseline_config)
                if alongside
                else searcher,
                scheduler=scheduler,
                num_samples=runs,
                max_concurrent_trials=None if alongside else spec.concurrency,
                trial_dirname_creator=trial_dirname,
                # One worker process serves trial after trial (Ray's default starts a fresh one per trial:
                # process start + imports each time, benchmarks/RESULTS.md `search`). Safe here: a trial
                # seeds everything it uses and keeps no state in the process between trials.
                reuse_actors=True,
            ),
            callbacks=[logger_cb, guard, *_progress(progress, spec, study, runs, live)],
            max_failures=spec.failure.max_retries,
            param_space=None,
            verbose=verbose,
        )
        try:
            grid = _fit(tuner, guard, logger_cb, study, experiment_dir(storage_path, study))
        finally:
            _flush_pruning(scheduler)
        _reconcile_optuna(optuna_url, study, grid)
        client.set_tag(parent, "mcel.state", "finished")
        client.set_terminated(parent, "FINISHED")
        outcome = _study_outcome(client, experiment_id, study, arch, bits, parent)
        outcome.grid, outcome.baseline_grid = grid, baseline_grid
        outcome.optuna_storage = redact_credentials(optuna_url)
        return outcome

    outcomes = _run_studies(run_study, jobs, at_once)
    return SearchOutcome(
        experiment_id=experiment_id, tracking_uri=tracking_uri, storage_path=storage_path, studies=outcomes
    )


def _cluster_resources() -> dict[str, float]:
    """The Ray cluster's resources now (``ray.cluster_resources()``: the nodes that are up)."""
    import ray

    return dict(ray.cluster_resources())


SNAPSHOT_AUTO_ABOVE = 150
"""Trials in the driver's Tune experiments at once above which :func:`snapshot_period` is ``"auto"``."""


def snapshot_period(trials: int) -> str:
    """The default of ``TUNE_GLOBAL_CHECKPOINT_S`` for a driver whose Tune experiments (the studies that run
    at once) hold ``trials`` trials together: ``"1"`` up to :data:`SNAPSHOT_AUTO_ABOVE`, else ``"auto"``.

    Tune's experiment snapshot writes the state of every trial of the experiment created so far, ended
    and pending ones too (config, last result, Tune's per-metric statistics, checkpoint bookkeeping), and
    the driver's controller does nothing else meanwhile. Measured (``benchmarks/bench_tune_state.py``,
    1,000 trials of 40 metrics, 2026-12-02): once all have results, 40 KB and 0.34 ms of driver time per
    trial and snapshot (40 MB and 0.34 s), so a 1 s period costs about ``trials`` x 0.034% of the driver:
    5% (the share Tune's ``auto`` aims at) at ~150 trials, 34% at 1,000. Over a whole 1,000-trial run:
    19% of the driver's time at 1 s, 8.4% with ``auto``, whose run took 0.74x the wall time.

    ``"1"``: a killed driver loses at most a second of trial state. ``"auto"``: Tune's period
    max(10 s, 19 x the last snapshot's time); a trial that checkpoints ``num_to_keep`` times within it
    forces a snapshot anyway (Tune's rule), so a resumed trial never names a checkpoint Tune deleted. A
    user's own ``TUNE_GLOBAL_CHECKPOINT_S`` wins over this default. Edge case: ``trials`` <= 0 (nothing
    to snapshot) gives ``"1"``."""
    return "auto" if trials > SNAPSHOT_AUTO_ABOVE else "1"


_SNAPSHOT_ENV = "TUNE_GLOBAL_CHECKPOINT_S"
_snapshot_period_set: str | None = None  # the value _set_snapshot_period put there (not the user)


def _set_snapshot_period(trials: int) -> str:
    """Set ``TUNE_GLOBAL_CHECKPOINT_S`` to :func:`snapshot_period` of this search's ``trials`` unless the user
    set it (a value this function did not put there); returns the value in force. Not ``setdefault``: a
    later search in the same process gets its own default, not the first search's."""
    global _snapshot_period_set
    current = os.environ.get(_SNAPSHOT_ENV)
    if current is not None and current != _snapshot_period_set:
        return current
    period = snapshot_period(trials)
    os.environ[_SNAPSHOT_ENV] = _snapshot_period_set = period
    if period == "auto":
        logger.info(
            "Tune's experiment snapshot: period 'auto' for %d trials in the studies at once (above %d; "
            "set %s to choose)",
            trials,
            SNAPSHOT_AUTO_ABOVE,
            _SNAPSHOT_ENV,
        )
    return period


def studies_at_once(spec: SearchSpec, cluster: Mapping[str, float]) -> int:
    """How many of ``spec``'s (architecture, bits) studies run at the same time.

    An integer ``studies_at_once`` is taken as it is (at most the number of studies). ``auto``: as many as
    the cluster's resources now hold with every study at its full ``concurrency``::

        n = min(studies, floor(CPU / (concurrency * resources.cpu)),
                         floor(GPU / (concurrency * resources.gpu)) if resources.gpu > 0)

    and at least 1 (a cluster too small for even one study at full concurrency runs them one by one, as
    an autoscaling cluster whose nodes are not up yet does). The CEL baseline trial is not counted: it takes
    one slot for one trial's time."""
    studies = len(spec.studies())
    if spec.studies_at_once != "auto":
        return max(1, min(studies, int(spec.studies_at_once)))
    fits = []
    for key, per_trial in (("CPU", spec.resources.cpu), ("GPU", spec.resources.gpu)):
        if per_trial > 0:
            fits.append(math.floor(float(cluster.get(key, 0.0)) / (spec.concurrency * per_trial) + 1e-9))
    return max(1, min([studies, *fits]))


def _run_studies(run_study: Any, jobs: list[tuple], at_once: int) -> list[StudyOutcome]:
    """``run_study(*job)`` for every job, ``at_once`` at a time (threads: each study's Tune run has its own
    controller; Tune catches Ctrl+C only in the main thread), outcomes in the jobs' order.

    A study that raises does not stop the others that run (their Tune runs end on their own, their state
    saved as always); the studies not started yet are not started, and the first error in spec order is
    raised once all have ended (the others are logged). Ctrl+C while several run ends the driver as a kill
    would (Tune's state is snapshotted every second, or at Tune's ``auto`` period in large searches:
    :func:`snapshot_period`; ``--resume`` continues every study from its trials' last checkpoints, no
    metric lost): Tune's own graceful stop answers Ctrl+C in the main thread only."""
    if at_once <= 1:
        return [run_study(*job) for job in jobs]
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    _lock_tune_registry()
    pool = ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="mcel-study")
    futures: dict[int, Future] = {}  # job index -> its future, for the jobs started
    waiting = list(range(len(jobs)))
    running: set[Future] = set()
    failed = False
    try:
        while waiting or running:
            while not failed and waiting and len(running) < at_once:  # a study starts only in a free slot
                i = waiting.pop(0)
                futures[i] = pool.submit(run_study, *jobs[i])
                running.add(futures[i])
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            failed = failed or any(f.exception() is not None for f in done)
    except KeyboardInterrupt:
        logger.error(
            "interrupted while %d studies ran: the driver stops as if killed; rerun with --resume to "
            "continue every study from its trials' last checkpoints",
            len(running),
        )
        logging.shutdown()
        os._exit(130)
    pool.shutdown(wait=True)
    errors = [futures[i].exception() for i in sorted(futures) if futures[i].exception() is not None]
    for extra in errors[1:]:
        logger.error("another study failed too: %s", extra)
    if errors:
        raise errors[0]
    return [futures[i].result() for i in range(len(jobs))]


#: Methods of Tune's process-wide trainable registry that read or change its dicts.
_REGISTRY_METHODS = ("register", "flush_values", "unregister", "unregister_all", "contains", "get")


def _lock_tune_registry() -> None:
    """Serialize Tune's process-wide trainable registry (``ray.tune.registry._global_registry``, Ray 2.60)
    for Tune runs in several threads: every ``Tuner.fit`` registers its trainable there, and two at once
    iterate and change the same dict ("dictionary changed size during iteration", seen on the first
    two-study run here). Installed once per process; the registry's behaviour is otherwise unchanged."""
    from ray.tune import registry

    reg = registry._global_registry
    if getattr(reg, "_mcel_lock", None) is not None:
        return
    lock = threading.RLock()
    for name in _REGISTRY_METHODS:
        method = getattr(reg, name)

        def locked(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            with lock:
                return _method(*args, **kwargs)

        setattr(reg, name, locked)
    reg._mcel_lock = lock


def _flush_pruning(scheduler: Any) -> None:
    """Write the pruning study's last records (they follow the decisions behind); a database that stays
    away costs only those records (a resumed search refills them from its trials' backfill): a warning."""
    from .pruning import PruningStoreError

    try:
        scheduler.flush(final=True)
    except PruningStoreError as exc:
        logger.warning("%s", exc)
    finally:
        scheduler.close()


def _progress(on: bool, spec: SearchSpec, name: str, total: int, live: bool | None = None) -> list:
    """``[SearchProgress]`` for the Tune run ``name`` when ``on``, else ``[]``; ``live=False``: plain lines
    even on a terminal (several studies at once)."""
    if not on:
        return []
    from .progress import SearchProgress

    return [
        SearchProgress(
            study=name,
            total=total,
            epochs=spec.train.epochs,
            concurrency=min(spec.concurrency, total),
            target_ber=spec.objective.target_ber,
            live=live,
        )
    ]


def _verify_stored_state(spec: SearchSpec, storage_path: str) -> None:
    """Check the seal of every Tune run of ``spec`` that exists under ``storage_path`` (see
    :mod:`.state_seal`); ``_tuner`` checks again right before it unpickles (the files could change)."""
    from ray import tune

    from . import state_seal

    for arch, bits in spec.studies():
        study = spec.study_name(arch, bits)
        for name in reversed(tune_run_names(study)):
            path = experiment_dir(storage_path, name)
            if tune.Tuner.can_restore(path):
                state_seal.verify(path)


def _search_id(optuna_url: str, study: str) -> str:
    """The identity of this search's ``study``: a random id kept as the Optuna study's user attribute
    (created with the study, or given to a study from before search ids) and tagged on the parent run."""
    import uuid

    import optuna

    s = optuna.create_study(
        study_name=study,
        storage=optuna_url,
        directions=["maximize" if d == "max" else "minimize" for d in OBJECTIVES.values()],
        load_if_exists=True,
    )
    if SEARCH_ID_KEY not in s.user_attrs:
        s.set_user_attr(SEARCH_ID_KEY, uuid.uuid4().hex)
    if s.metric_names != list(OBJECTIVES):  # optuna-dashboard names the objectives, not "0" and "1"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            s.set_metric_names(list(OBJECTIVES))
        s.set_user_attr("mcel.role", "search")
    return s.user_attrs[SEARCH_ID_KEY]


class _MissingTrialFilesFilter(logging.Filter):
    """Drops Tune's "Failed to fetch metrics for N trial(s): ... result.json and progress.csv were not
    found" warning, logged when ``tuner.fit()`` builds its result grid, while those files are off
    (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1``, the default here): their absence is intended, and MLflow and
    the checkpoints hold every metric. Any other record passes, and the warning too if the files are on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS") != "1":
            return True
        return not record.getMessage().startswith("Failed to fetch metrics for ")


#: MLflow loggers whose INFO lines a search prints per finished trial or once per store ("Validating input
#: example against model signature", "Creating initial MLflow database tables"): warnings still pass.
MLFLOW_CHATTY_LOGGERS = ("mlflow.pyfunc", "mlflow.models", "mlflow.store.db.utils", "alembic")


def _quiet_mlflow_info() -> None:
    for name in MLFLOW_CHATTY_LOGGERS:
        log = logging.getLogger(name)
        if log.getEffectiveLevel() < logging.WARNING:
            log.setLevel(logging.WARNING)


def _quiet_missing_trial_files() -> None:
    """Install :class:`_MissingTrialFilesFilter` on Tune's experiment-analysis logger (once)."""
    log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    if not any(isinstance(f, _MissingTrialFilesFilter) for f in log.filters):
        log.addFilter(_MissingTrialFilesFilter())


def _fit(tuner: Any, guard: Any, tracker: Any, name: str, state_dir: str) -> Any:
    """``tuner.fit()``; buffered MLflow calls are flushed (waiting for the server) when it returns, and a
    storage fault (seen by ``guard``, or by the guard a restored Tune run unpickled) becomes a one-line
    :class:`StorageFaultError`. The tracker's sender thread is stopped and the state sealed in any case."""
    from . import state_seal

    try:
        return _fit_and_flush(tuner, guard, tracker, name)
    finally:
        tracker.close()
        state_seal.seal(state_dir)  # Tune's last snapshot, written as fit returned


def _fit_and_flush(tuner: Any, guard: Any, tracker: Any, name: str) -> Any:
    from .storage_guard import StorageFaultStop, storage_fault

    fault: tuple[str, str] | None = None
    try:
        grid = tuner.fit()
    except Exception as exc:
        stop = _in_chain(exc, StorageFaultStop)
        if guard.fault is not None:
            fault = (guard.fault, guard.trial)
        elif stop is not None:
            fault = (str(stop.args[0]), str(stop.args[1]) if len(stop.args) > 1 else "?")
        else:
            text = storage_fault("".join(traceback.format_exception(exc)))
            if text is None:
                tracker.flush()  # one attempt: do not hide the error behind a wait for the server
                raise
            fault = (text, "?")
        grid = None
    if fault is None and guard.fault is not None:
        fault = (guard.fault, guard.trial)
    tracker.flush(final=True)
    if fault is not None:
        raise StorageFaultError(
            f"storage: {fault[0]} — trial {fault[1]} of {name!r} could not write its checkpoint and the "
            "search was stopped; free space (or make the storage writable), then rerun with --resume: "
            "finished trials are kept, unfinished ones continue from their last checkpoint"
        )
    return grid


def _in_chain(exc: BaseException | None, cls: type) -> BaseException | None:
    """The first exception of type ``cls`` in ``exc``'s cause/context chain, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, cls):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (Tune's default embeds every parameter)."""
    from .searcher import is_baseline

    number = trial.config.get("_optuna_number")
    if number is not None:
        return f"trial_{number:03d}_{trial.trial_id}"
    return f"baseline_{trial.trial_id}" if is_baseline(trial.config) else f"trial_{trial.trial_id}"


def _reconcile_optuna(url: str, study: str, grid: Any) -> None:
    """Close RUNNING Optuna trials that no Tune trial owns (left by a driver killed mid-ask)."""
    import optuna

    from .searcher import NUMBER_KEY, close_orphans

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
            "error": run.data.tags.get("mcel.error"),
        }
        if row["role"] == "baseline":
            outcome.baseline = row
        else:
            outcome.trials.append(row)
    return outcome
