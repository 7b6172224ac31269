"""The Ray Tune trial: train one (arch, bits, loss, margin, b, logit scale) configuration, report every epoch.

Every epoch it reports ``epoch``, ``train_loss``, ``train_acc``, ``mlm``, ``lr``, ``clean_acc``,
``search_wait_s`` (seconds this attempt of the trial's compute has waited so far, up to the previous epoch,
on its checkpoint writes and on ``tune.report``, whose round trip through the driver includes the pruner's
decision: the search machinery's cost inside the trial; the next epoch trains while a report is in flight,
:mod:`.epoch_ahead`, so a report counts only for what it takes beyond that epoch) and, every
``objective.every`` epochs and always at the last, the accuracy under bit errors at the target BER over
``objective.reps`` shared realizations: ``ber_acc`` / ``ber_acc_std`` when measured on the full test set,
``ber_acc_sub<N>`` / ``ber_acc_sub<N>_std`` when measured on the first N test samples (``objective.subset``,
intermediate epochs only). With ``objective.estimate: margin_shift`` every measured epoch also reports the
cheap estimate ``ber_acc_est`` (``core.robustness_estimate``: clean margins and
``objective.estimate_reps`` flipped passes; also ``ber_acc_est_gauss``, ``_frac_above``, ``_ratio``,
``_flip_acc``, ``_logit_shift``), a diagnostic next to the full measurement that no pruner reads.
``ber_passes`` counts the flipped passes the objective has cost this attempt so far (the final sweep not
counted). The last epoch also computes the BER curve (``sweep.bers`` x ``sweep.reps``) and
the test-set margins, and carries ``final: True``; a trial without a final result was pruned.

The report of every ``failure.checkpoint_every``-th epoch (default 1: every epoch) and of the last carries a
checkpoint directory: ``model.pt`` (the model in the safe mcel checkpoint format), ``trainer.pt``
(optimizer, scheduler and history, to resume: :mod:`.trial_state`; the weights are model.pt's), and at
the end ``ber_curve.csv`` (one row per BER and repetition) and ``summary.json``. A trial restarted after a failure resumes from its last one.

Fault injection (tests only; inert unless the environment variable ``MCEL_FAULT_INJECT`` is set, see
:mod:`mcel_search.search.faults`): ``raise_once:epoch=k`` raises at the start of epoch k on the first attempt only;
``enospc:epoch=k`` makes epoch k's checkpoint write fail with ``OSError(ENOSPC)``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune

from ..core.checkpoint import save_checkpoint
from ..core.devices import cuda_problem, device_label
from ..core.evaluation import ber_sweep, cache_batches, evaluate_accuracy, margin_statistics
from ..core.experiment import TrialSpec, build, checkpoint_meta
from ..core.losses import loss_params
from ..core.protocol import DEFAULT, Protocol
from ..core.robustness_estimate import margin_shift_estimate
from ..core.tolerance import model_tolerable_ber
from ..core.training import TrainConfig, Trainer, TrainingDivergedError
from . import faults
from .epoch_ahead import EpochAhead
from .searcher import NUMBER_KEY
from .spec import DataSpec, ObjectiveSpec, SweepSpec, tune_run_names
from .trial_state import MODEL_FILE, TRAINER_FILE, read_trainer_state, write_trainer_state
from .trial_state import REPORTED_KEY as REPORTED_KEY  # re-exported: where callers have found it

#: One batch of input images a finished trial leaves in its last checkpoint: the logged MLflow Model's
#: signature and input example (``search.pyfunc``; the tracker logs it).
INPUT_EXAMPLE_FILE = "input_example.npy"
CURVE_FILE = "ber_curve.csv"
SUMMARY_FILE = "summary.json"


class ForeignContextError(RuntimeError):
    """A trial started with another study's context: it would train and log that study's model (its
    architecture, bits, data) as a trial of its own study."""


def check_own_study(experiment: str | None, study: str) -> None:
    """Raise :class:`ForeignContextError` unless ``experiment``, the Tune run the trial belongs to, is
    ``study`` (the context's) or that study's separate baseline run ``<study>-baseline``; None (outside
    Ray Tune) passes.

    Why: Ray Tune keeps trainables in one process-wide registry keyed by name and looks a trial's up by
    that name; studies run at once (``studies_at_once``) each bind their own context to their trainable.
    Each has a name of its own (``runner.trainable_name``); this check is what holds if two ever share one
    again (until f260926 of 2026-12-04 they did; a 4-bit study's checkpoint held a 2-bit model): the trial errors
    with both names instead of training a foreign model, and the search goes on without it."""
    if experiment is None or experiment in tune_run_names(study):
        return
    raise ForeignContextError(
        f"trial of the Tune run {experiment!r} started with the context of study {study!r}: "
        "Ray Tune's trainable registry handed it another study's trainable; the trial is not run"
    )


def _experiment_name() -> str | None:
    """The Tune run this trial belongs to (its experiment's name), None outside Ray Tune."""
    try:
        return tune.get_context().get_experiment_name()
    except Exception:
        return None


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one study shares: the validated spec's sections, handed to each trial unchanged
    (``tune.with_parameters``). The searched values (loss, its parameters, logit scale) come in the
    trial's ``config``."""

    study: str  # "<spec>-<arch>-<bits>b"
    arch: str  # model registry name
    bits: int  # bit width
    data: DataSpec  # the data set
    train: TrainConfig  # training settings (device may be "auto": resolved in the trial)
    objective: ObjectiveSpec  # how ber_acc is measured
    sweep: SweepSpec  # the final BER curve (holds objective.target_ber: the spec validated it)
    cpus: float  # CPUs per trial: torch's thread count
    protocol: Protocol = DEFAULT  # inputs, biases, arithmetic, output scale, decode (core.protocol)
    gpus: float = 0.0  # GPUs per trial (resources.gpu): > 0 means the trial must get a usable GPU
    checkpoint_every: int = 1  # failure.checkpoint_every: a checkpoint every k epochs and at the last
    overlap_report: bool = True  # train epoch k+1 while epoch k's report is in flight (.epoch_ahead)


class GpuUnavailableError(RuntimeError):
    """A trial that asked for a GPU landed where torch cannot use one (no device, or a driver too old
    for torch's CUDA). Not bad input: the node is wrong, so Tune's retry may place it on a good one."""


#: ``MCEL_FAKE_GPUS=1``: the cluster's GPUs are Ray resource labels without devices (Ray's fake multi-node
#: provider, ``ray.cluster_utils`` test clusters); a trial that asks for a GPU then trains on the CPU instead
#: of failing. Set it in the environment the nodes start from (cluster-fake.yaml, the tests); never on a
#: real cluster.
FAKE_GPUS_ENV = "MCEL_FAKE_GPUS"


def _require_gpu(gpus: float, requested: str) -> None:
    """Raise :class:`GpuUnavailableError` (one line: what was asked, why CUDA is unusable, which node)
    when ``gpus > 0`` and the trial would not compute on a GPU; ``device: cpu`` is the user's explicit
    choice and is left alone, and so are fake GPUs (:data:`FAKE_GPUS_ENV`)."""
    if gpus <= 0 or requested == "cpu" or os.environ.get(FAKE_GPUS_ENV) == "1":
        return
    problem = cuda_problem()
    if problem is not None:
        raise GpuUnavailableError(
            f"trial asked for {gpus:g} GPU (resources.gpu) but on node {_node_id()} {problem}; "
            "it would train on the CPU: fix the node's NVIDIA driver (python -m mcel_search.core.devices)"
        )


def _device(requested: str) -> str:
    """``requested``, or for ``"auto"``: CUDA when this trial was given a GPU (in a Ray worker: Ray's GPU
    ids, and ``CUDA_VISIBLE_DEVICES``, which Ray empties for a trial without GPUs) or, outside Ray, when
    torch sees one; else the CPU. Never starts Ray (``ray.get_gpu_ids()`` would, outside a worker)."""
    if requested != "auto":
        return requested
    if not torch.cuda.is_available():
        return "cpu"
    import ray

    if not ray.is_initialized():
        return "cuda"
    if ray.get_gpu_ids():
        return "cuda"
    return "cuda" if os.environ.get("CUDA_VISIBLE_DEVICES", "") != "" else "cpu"


def trial_spec(config: dict[str, Any], context: TrialContext) -> TrialSpec:
    """The :class:`TrialSpec` of a trial: the study's ``context`` + the searched ``config`` (``loss``, the
    parameters that loss takes, ``logit_scale``)."""
    loss = config["loss"]
    data = context.data
    return TrialSpec(
        arch=context.arch,
        dataset=data.name,
        bits=context.bits,
        loss=loss,
        loss_params={name: config[name] for name in loss_params(loss)},
        logit_scale=config["logit_scale"],
        train=replace(context.train, device=_device(context.train.device)),
        data_root=data.root,
        split_seed=data.split_seed,
        limit_train=data.limit_train,
        limit_test=data.limit_test,
        protocol=context.protocol,
    )


def quiet_sigterm_exit() -> None:
    """Drop Python's "Exception ignored" report of a ``SystemExit`` raised in a place that cannot raise.

    At the end of a search Ray stops its worker processes with SIGTERM; Ray's handler raises ``SystemExit``
    wherever the process is, and inside a weakref callback Python prints that as an "Exception ignored ...
    Traceback" on stderr, which Ray forwards to the driver's terminal: noise that reads like a failure after
    a search that succeeded. A ``SystemExit`` is the exit that was asked for, so ``sys.unraisablehook``
    skips it; every other unraisable exception goes to the previous hook as before. Idempotent.
    """
    import sys

    previous = sys.unraisablehook
    if getattr(previous, "_mcel_quiet_exit", False):
        return

    def hook(unraisable: Any) -> None:
        if isinstance(getattr(unraisable, "exc_value", None), SystemExit):
            return
        previous(unraisable)

    hook._mcel_quiet_exit = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def mcel_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Ray Tune function trainable; ``context`` is bound with ``tune.with_parameters``."""
    quiet_sigterm_exit()
    check_own_study(_experiment_name(), context.study)
    logging.getLogger("ray").setLevel(logging.WARNING)  # no "Checkpoint successfully created" per epoch
    torch.set_num_threads(max(1, int(context.cpus)))
    _require_gpu(context.gpus, context.train.device)
    spec = trial_spec(config, context)
    objective, sweep = context.objective, context.sweep
    model, loss_fn, data = build(spec)
    trainer = Trainer(model, data.train, loss_fn, spec.train)
    device = device_label(trainer.device)  # reported with every result: MLflow tag mcel.device
    checkpoint = tune.get_checkpoint()
    reported: list[dict[str, float]] = []  # every epoch's scalar results so far (kept in trainer.pt)
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state, reported = read_trainer_state(d, trainer.device)
            trainer.load_state_dict(state)
    test = cache_batches(data.test, trainer.device)
    subset_n = objective.subset
    subset = _first_samples(test, subset_n) if subset_n else None
    epochs = spec.train.epochs
    meta_base = {"search_number": config.get(NUMBER_KEY), "study": context.study}

    # A trial restored after its last epoch (the driver died before recording it) reports its final result
    # again from the trained weights instead of training further.
    start_epoch = trainer.epoch  # > 0: resumed from a checkpoint (a retry, a lost node, a driver restart)
    replay_final = trainer.epoch >= epochs and bool(trainer.history)
    trial_dir = _trial_dir()
    wait_s = 0.0  # seconds in checkpoint writes and tune.report so far (reported as search_wait_s)
    passes = 0  # flipped passes of this attempt's objective measurements (reported as ber_passes)
    backfilled = False  # whether this attempt's first report carried the earlier epochs (backfill)
    ahead: EpochAhead | None = None  # the next epoch, training while the last report was in flight
    # An epoch ahead is always taken, even where trainer.epoch already says the training is over: the last
    # epoch, trained ahead, can end before the report before it returns (a slow driver), and it still has
    # to be evaluated and reported as the final result.
    while replay_final or ahead is not None or trainer.epoch < epochs:
        try:
            if replay_final:
                stats = trainer.history[-1]
            elif ahead is not None:
                pending, ahead = ahead, None
                stats = pending.result()
            else:
                faults.before_epoch(trainer.epoch + 1, trial_dir)
                stats = trainer.train_epoch()
        except TrainingDivergedError as exc:
            # Deterministic: a retry would diverge again. End the trial with the reason instead of raising, so
            # Tune does not retry it; the searcher and scheduler tell it FAIL, MLflow marks it errored.
            nan = float("nan")  # every key a searcher or scheduler watches must be present (Tune checks)
            tune.report(
                {
                    "epoch": trainer.epoch + 1,
                    "diverged": True,
                    "error": str(exc),
                    "start_epoch": start_epoch,
                    **dict.fromkeys(
                        ("train_loss", "train_acc", "mlm", "clean_acc", "ber_acc", "ber_acc_std"), nan
                    ),
                }
            )
            return
        replay_final = False
        final = trainer.epoch >= epochs
        metrics: dict[str, Any] = {
            "node_id": _node_id(),
            "device": device,
            "start_epoch": start_epoch,
            "epoch": trainer.epoch,
            "train_loss": stats.train_loss,
            "train_acc": stats.train_acc,
            "mlm": stats.mlm,
            "lr": stats.lr,
            "clean_acc": evaluate_accuracy(trainer.model, test),
            "search_wait_s": wait_s,
        }
        if spec.protocol.output_scale == "learnable":  # where Adam took the reference's Scale
            metrics["output_scale"] = float(trainer.model.logit_scale.scale.detach())
        # ber_acc is NaN where not measured with the full protocol (the key must be in every result: Tune
        # checks that the searcher's metrics are; NaN is never logged, never reported to a pruner).
        metrics["ber_acc"] = metrics["ber_acc_std"] = float("nan")
        target, p10, decode = objective.target_ber, objective.p10, spec.protocol.decode
        curve = (
            ber_sweep(trainer.model, test, sweep.bers, sweep.reps, objective.seed, p10=p10, decode=decode)
            if final
            else None
        )
        if final or trainer.epoch % objective.every == 0:
            use_subset = subset is not None and not final
            batches = subset if use_subset else test
            if objective.estimate is not None:
                estimate = margin_shift_estimate(
                    trainer.model,
                    batches,
                    target,
                    objective.estimate_reps,
                    objective.seed,
                    p10,
                    decode=decode,
                )
                metrics.update({k: v for k, v in estimate.as_metrics().items() if np.isfinite(v)})
                passes += objective.estimate_reps
            # the full measurement, always (the estimate is logged next to it, never instead)
            if curve is not None and sweep.reps == objective.reps:
                result = curve  # the final curve holds target_ber (validated) with the objective's seeds
            else:
                result = ber_sweep(
                    trainer.model,
                    batches,
                    [target],
                    objective.reps,
                    objective.seed,
                    p10=p10,
                    decode=decode,
                )
                passes += objective.reps
            name = f"ber_acc_sub{subset_n}" if use_subset else "ber_acc"
            s = result.at(target)
            metrics[name] = s.mean
            metrics[f"{name}_std"] = s.std
            metrics[f"{name}_min"] = s.min
        # flipped evaluation passes spent on the objective so far (the final sweep not counted)
        metrics["ber_passes"] = passes
        if start_epoch and not backfilled:
            # a resumed attempt's first report carries the epochs before it: a driver that died may have
            # received them without delivering them to MLflow (the tracker logs those it lacks)
            metrics["backfill"] = [r for r in reported if r["epoch"] < trainer.epoch]
            backfilled = True
        reported = [r for r in reported if r["epoch"] < trainer.epoch] + [_scalars(metrics)]
        if not (final or trainer.epoch % context.checkpoint_every == 0):
            # no checkpoint this epoch (failure.checkpoint_every): the report alone, files not written
            ahead, waited = _report(metrics, None, trainer, trial_dir, context.overlap_report)
            wait_s += waited
            continue
        with tempfile.TemporaryDirectory() as tmp:
            tmpdir = Path(tmp)
            start = time.perf_counter()
            write_trainer_state(tmpdir / TRAINER_FILE, trainer.state_dict(), reported)
            wait_s += time.perf_counter() - start
            if final:
                margins = margin_statistics(trainer.model, test)
                _write_curve(tmpdir / CURVE_FILE, curve.records)
                # one test image as the logged MLflow Model's input example (search.pyfunc)
                np.save(tmpdir / INPUT_EXAMPLE_FILE, test[0][0][:1].detach().cpu().numpy().astype(np.float32))
                tolerable = trial_tolerable(trainer.model, test, curve, context)
                if tolerable is not None:
                    metrics.update(tolerable.as_metrics())
                margin_summary = {k: v for k, v in margins.items() if k != "margins"}
                metrics.update(
                    {f"test_margin_{k}": v for k, v in margin_summary.items() if isinstance(v, float)}
                )
                summary = {
                    "metrics": metrics,
                    "ber_curve": [vars(s) for s in curve.summary],
                    "objective_records": [
                        {"rep": r["rep"], "seed": r["seed"], "accuracy": r["accuracy"]}
                        for r in result.records
                        if r["ber"] == target
                    ],
                    "test_margins": margin_summary,
                    "tolerable": None
                    if tolerable is None
                    else {
                        **tolerable.as_metrics(),
                        "tolerance": tolerable.tolerance,
                        "measured": {str(b): a for b, a in tolerable.measured.items()},
                    },
                    "margins": margins["margins"],
                    "history": [h.to_dict() for h in trainer.history],
                }
                (tmpdir / SUMMARY_FILE).write_text(json.dumps(summary, default=str))
                metrics["final"] = True
            if faults.checkpoint_write_fails(trainer.epoch):
                faults.fail_write_enospc(tmpdir / MODEL_FILE)
            meta = checkpoint_meta(
                spec, data, {**meta_base, **{k: v for k, v in metrics.items() if isinstance(v, int | float)}}
            )
            start = time.perf_counter()
            # staged for tune.report, which copies it to the storage path: an fsync here would be wasted
            save_checkpoint(tmpdir / MODEL_FILE, trainer.model, meta, durable=False)
            wait_s += time.perf_counter() - start
            overlap = context.overlap_report and not final
            ahead, waited = _report(metrics, tune.Checkpoint.from_directory(tmp), trainer, trial_dir, overlap)
            wait_s += waited


def _report(
    metrics: dict[str, Any], checkpoint: Any, trainer: Trainer, trial_dir: str | None, overlap: bool
) -> tuple[EpochAhead | None, float]:
    """``tune.report(metrics[, checkpoint])``; with ``overlap`` the next epoch trains meanwhile
    (:class:`.epoch_ahead.EpochAhead`, its ``faults.before_epoch`` first). Returns that running epoch (None
    without overlap) and the seconds the trial's compute waited on the report: the report's whole time
    without overlap; with it, only what the report took beyond the next epoch. When the report raises
    (Ray Tune stops a trial with ``SystemExit`` there) the next epoch is cancelled and joined first."""
    ahead = EpochAhead(trainer, lambda k: faults.before_epoch(k, trial_dir)) if overlap else None
    start = time.perf_counter()
    try:
        tune.report(metrics, checkpoint=checkpoint)  # Ray Tune's default is None: no checkpoint
    except BaseException:
        if ahead is not None:
            ahead.cancel()
        raise
    end = time.perf_counter()
    return ahead, (end - start if ahead is None else ahead.idle_until(end))


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of one epoch's result (bools and NaN left out), ``epoch`` included."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
            out[k] = float(v)
    return out


def trial_tolerable(model, test: list, curve, context: TrialContext):
    """The trial's tolerable BER (core.tolerance) from its final curve plus ``sweep.tolerable_iters``
    bisection steps with the same realization seeds; None when the grid has no BER > 0."""
    sweep, objective = context.sweep, context.objective
    if not any(b > 0 for b in sweep.bers):
        return None
    return model_tolerable_ber(
        model,
        test,
        sweep.bers,
        sweep.reps,
        objective.seed,
        sweep.tolerance,
        sweep.tolerable_iters,
        p10=objective.p10,
        decode=context.protocol.decode,
        curve=curve,
    )


def _trial_dir() -> str | None:
    """This trial's directory (where a fault-injection marker lives), None outside Ray Tune."""
    try:
        return tune.get_context().get_trial_dir()
    except Exception:
        return None


def _node_id() -> str:
    """The Ray node this trial runs on (reported so users and tests can see placement); ``"local"``
    outside Ray (asking Ray's runtime context there would start a Ray instance)."""
    import ray

    if not ray.is_initialized():
        return "local"
    return ray.get_runtime_context().get_node_id()


def _first_samples(batches: list, n: int) -> list:
    out, left = [], n
    for x, y in batches:
        if left <= 0:
            break
        out.append((x[:left], y[:left]))
        left -= y.shape[0]
    return out


def _write_curve(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["ber", "rep", "seed", "accuracy"])
        writer.writeheader()
        for r in records:
            writer.writerow({k: r[k] for k in ("ber", "rep", "seed", "accuracy")})
