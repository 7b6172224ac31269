"""The search spec: one YAML file describes a whole search, validated in full before anything starts.

:func:`~.spec_file.load_spec` reads the file, :func:`parse_spec` checks every field against the
registries of ``core`` (models, data sets, losses and the bounds they declare), the training settings
(``core.training.TRAIN_BOUNDS``) and Optuna's samplers and pruners (:mod:`.optuna_options`), collects *every*
problem (with the kit of :mod:`.validate`) and raises one :class:`SpecError` that lists them, one line
per bad field::

    space.margin.uniform: [8, 2] — low must be < high
    train.epochs: 0 — an integer >= 1 and <= 100_000
    sampler.name: 'nsga3' — one of nsga2, tpe, random; did you mean 'nsga2'?

Nothing is launched, downloaded or written while a spec is parsed. A valid spec is a frozen
:class:`SearchSpec`; :func:`spec_to_dict` turns it back into a plain dict that :func:`parse_spec` reads
into the same spec, and :func:`flatten` gives ``{"train.epochs": 10, ...}`` for tracking parameters.

A complete spec, every key shown (only ``name``, ``dataset``, ``architectures``, ``bits``, ``losses``,
``train.epochs`` and ``trials_per_arch`` are required; every other key has the default shown)::

    name: quickstart               # [A-Za-z0-9_.-], starts alphanumeric: used in file and MLflow names
    dataset:                       # or just the name: `dataset: digits`
      name: digits                 # core.data registry: cifar10, digits, fashionmnist, imagenette, svhn, ...
      root: null                   # data directory (null: $MCEL_DATA_ROOT or ~/.cache/mcel-search/data)
      split_seed: 0                # seed of the digits split and of the subsets below
      limit_train: null            # use only this many training samples (null: all)
      limit_test: null             # the same for the test split
    architectures: [small_cnn]     # core.models registry; one Optuna study per (architecture, bits)
    bits: [4]                      # 1 (binary), 2, 4, 8 (QAT) or 32 (float); every pair must be supported
    losses: [mcel]                 # core.losses registry: cel, mcel, mhl
    space:                         # what Optuna searches; a plain number fixes a parameter
      # names and bounds come from the thing that uses them (core.losses.loss_params, core.layers):
      margin: {choice: [1, 2, 4, 8, 16, 32]}   # MCEL margin m >= 0 (needed by mcel)
      b: {choice: [4, 8, 16]}                  # MCEL saturation bound b > 0 (needed by mcel)
      # mhl_margin: {choice: [16, 32]}         # MHL margin > 0 (needed by mhl): not MCEL's b
      logit_scale: 1.0                         # s > 0 on the raw logits; optional, default 1.0
      # other forms: {uniform: [low, high]}, {loguniform: [low, high]} (low > 0)
    train:                         # core.training.TrainConfig: its keys, defaults and bounds (Table II)
      epochs: 10                   # required, >= 1
      batch_size: 256
      lr: 0.001                    # Adam learning rate, > 0 (1e-3 is read as a number here)
      step_size: 10                # StepLR: lr *= gamma every step_size epochs
      gamma: 0.5                   # in (0, 1]
      weight_decay: 0.0
      seed: 0                      # weight init and shuffling; the same for every trial
      device: auto                 # auto, cpu, cuda or cuda:N
      train_ber: 0.0               # bit-error training baseline: flip weight bits at this rate in every
                                   # training step (the method MCEL avoids); 0: off
      num_workers: 0               # DataLoader workers (in-memory data: 0)
      progress: false              # a progress bar per epoch on stderr
    objective:                     # the two objectives: clean accuracy and accuracy at target_ber
      target_ber: 0.01             # bit error rate of the second objective, in [0, 1]
      reps: 10                     # error realizations averaged per measurement
      seed: 0                      # first seed of the shared realization seed list
      p10: null                    # 1->0 flip rate if asymmetric (null: = target_ber)
      every: 1                     # measure ber_acc every k epochs (the final epoch always)
      subset: null                 # intermediate epochs use the first `subset` test samples (final: all)
      estimate: null               # margin_shift: also log the cheap estimate ber_acc_est (clean margins +
                                   # estimate_reps flipped passes, core.robustness_estimate) next to the full
                                   # ber_acc at every measured epoch: a diagnostic to validate it on your
                                   # models; it never replaces ber_acc and no pruner reads it (docs/results.md)
      estimate_reps: 2             # flipped passes of the estimate, 1..16 (seeds disjoint from reps')
    sweep:                         # BER curve of every completed trial (seed = objective.seed)
      bers: [0.0, 0.001, 0.005, 0.01, 0.02, 0.05]   # target_ber is added if absent; sorted ascending
      reps: 10
      tolerance: 1.0               # tolerable BER: highest BER within this many points of clean (metric tolerable_ber)
      tolerable_iters: 4           # bisection steps between grid BERs, each `reps` passes; 0: grid only
    trials_per_arch: 12            # trials of each study, i.e. of each (architecture, bits) pair; >= 1
    concurrency: 1                 # trials running at once; >= 1
    studies_at_once: auto          # (architecture, bits) studies running at once: auto (as many as the
                                   # cluster's resources hold, each at full concurrency) or 1..1000
    resources: {cpu: 1.0, gpu: 0.0}    # per trial; fractional GPUs (<= 1) allowed
    sampler:                       # or just the name: `sampler: tpe`
      name: nsga2                  # nsga2, tpe or random (optuna.samplers)
      seed: 0
      options: {}                  # keyword arguments of the sampler, e.g. {population_size: 8}
    pruner:                        # or just the name: `pruner: none`
      name: median                 # none, median, percentile, successive_halving (alias sha)
      metric: clean_acc            # clean_acc, ber_acc, mlm (higher is better) or train_loss (lower)
      mode: max                    # max or min; must match the metric's direction
      options: {}                  # keyword arguments of the optuna pruner, e.g. {n_startup_trials: 4}
      patience: null               # >= 0: wrap the pruner in optuna's PatientPruner
    baseline:                      # one cross-entropy (CEL) run per study, for comparison
      enabled: true
      logit_scale: null            # null: 1.0
    tracking:
      uri: sqlite:///mlflow.db     # MLflow tracking URI (sqlite:///, file:, http(s)://, postgresql://,
                                   # mysql:// or a bare directory)
      experiment: null             # null: the spec's name
    storage:
      path: ./ray_results          # Ray Tune storage: a directory, or s3:// / gs:// for a cluster
      optuna: null                 # Optuna RDB URL; null: sqlite:///<path>/<name>/optuna.db (a local
                                   # path only: with s3:// / gs:// give a URL, e.g. a sqlite file on the
                                   # head node or postgresql://...)
    failure:
      max_retries: 2               # retries of a failed trial (Ray Tune FailureConfig)
      checkpoint_every: 1          # a trial's checkpoint (what a retry or --resume continues from) every
                                   # k epochs and at its last; a skipped one saves its wait (~26 ms an
                                   # epoch here, small_cnn), a failure retrains up to k - 1 epochs
    protocol: default              # the error model (core.protocol): default (ours: standardized inputs,
                                   # biases protected) or paper (the reference framework's: raw inputs,
                                   # every bias quantized in the faulty memory, integer codes, learnable
                                   # scale from 1e-5, re-estimated decode; its lr 1e-4, StepLR 5 / 0.5 and
                                   # 10 epochs fill train fields the spec does not set); or a mapping
                                   # {preset: paper, decode: clean, ...} changing single switches

YAML notes: ``1e-3`` is read as a number (plain PyYAML reads it as a string); a key given twice in one
mapping is an error (PyYAML silently keeps the last).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..core.errors import BadInputError
from ..core.params import Param
from ..core.protocol import CHOICES as PROTOCOL_CHOICES
from ..core.protocol import DEFAULT, PRESET_NAMES, PRESETS, Protocol, merge_switches, protocol_problems
from ..core.robustness_estimate import MAX_ESTIMATE_REPS
from ..core.training import MAX_EPOCHS, MAX_SEED, TrainConfig
from .optuna_options import (
    PRUNER_ALIASES,
    PRUNERS,
    SAMPLERS,
    check_options,
    create_pruner,
    create_sampler,
    try_build,
)
from .validate import (
    ABSENT,
    Errors,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_list,
    check_mapping,
    check_section,
    check_str,
    check_uri,
    did_you_mean,
    is_int,
    is_num,
    join_path,
    uri_scheme,
)

#: Upper bounds of the spec's sizes (every integer has one; the training fields' are in
#: core.training.TRAIN_BOUNDS): generous for real searches, far below what would hang or exhaust a machine.
MAX_TRIALS = 100_000  # trials_per_arch, concurrency
MAX_REPS = 10_000  # error realizations per measurement
MAX_SAMPLES = 10**9  # limit_train, limit_test, objective.subset
MAX_RETRIES = 1_000  # failure.max_retries
MAX_STUDIES = 1_000  # studies_at_once
#: Bit widths a spec may name (1 = binary, 32 = float); each architecture supports a subset.
BITS: tuple[int, ...] = (1, 2, 4, 8, 32)
#: Forms of a searched parameter.
SPACE_KINDS: tuple[str, ...] = ("choice", "uniform", "loguniform")
#: Metrics a pruner can watch -> their direction.
PRUNER_METRICS: dict[str, str] = {"clean_acc": "max", "ber_acc": "max", "mlm": "max", "train_loss": "min"}
#: ``objective.estimate`` methods (core.robustness_estimate).
ESTIMATE_METHODS = ("margin_shift",)
#: Why the cheap estimate is logged but offered to no pruner (the validation in docs/results.md).
NOT_A_PRUNER_METRIC = (
    "the cheap estimate (objective.estimate) is a logged diagnostic, not a pruner metric: it ranked the "
    "trials of our searches no better than the accuracy of its own flipped passes, and not at all where "
    "trials are close (docs/results.md); one of clean_acc, ber_acc, mlm, train_loss"
)
#: Default BER sweep.
DEFAULT_BERS: tuple[float, ...] = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05)
#: Schemes of an MLflow tracking URI (``+driver`` suffixes allowed for the databases).
TRACKING_SCHEMES: tuple[str, ...] = ("sqlite", "file", "http", "https", "postgresql", "mysql")
#: Schemes of a Ray Tune storage path besides a plain directory.
STORAGE_SCHEMES: tuple[str, ...] = ("s3", "gs", "gcs", "file", "hdfs", "abfs", "abfss")
#: Schemes of an Optuna RDB storage URL.
OPTUNA_SCHEMES: tuple[str, ...] = ("sqlite", "postgresql", "mysql")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# --------------------------------------------------------------------------------------------- the spec


class SpecError(BadInputError):
    """A spec is invalid. ``errors`` holds one line per bad field; ``str(exc)`` is all lines joined."""

    def __init__(self, errors: str | Sequence[str], source: str = "<dict>") -> None:
        self.errors: list[str] = errors.splitlines() if isinstance(errors, str) else list(errors)
        self.source = source  # the file (or "<dict>") the spec came from
        super().__init__("\n".join(self.errors))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errors, self.source))


@dataclass(frozen=True)
class ParamSpace:
    """One searched parameter: a choice of values, or a (log-)uniform range ``[low, high]``."""

    kind: str  # "choice" | "uniform" | "loguniform"
    values: tuple[float, ...] | None = None  # the choices (kind "choice"); one value = fixed
    low: float | None = None  # lower bound (uniform/loguniform)
    high: float | None = None  # upper bound, > low

    @property
    def fixed(self) -> float | None:
        """The value if this is a choice of exactly one, else None."""
        if self.kind == "choice" and self.values is not None and len(self.values) == 1:
            return self.values[0]
        return None


@dataclass(frozen=True)
class DataSpec:
    """Which data set and how much of it (arguments of ``core.data.load_dataset``)."""

    name: str  # registry name, e.g. "fashionmnist"
    root: str | None = None  # data directory (None: $MCEL_DATA_ROOT or the default cache)
    split_seed: int = 0  # seed of splits and subsets
    limit_train: int | None = None  # keep this many training samples (None: all)
    limit_test: int | None = None  # keep this many test samples (None: all)


@dataclass(frozen=True)
class ObjectiveSpec:
    """How a trial's second objective, accuracy at ``target_ber``, is measured during training."""

    target_ber: float = 0.01  # bit error rate (0->1, and 1->0 unless p10 is set), in [0, 1]
    reps: int = 10  # error realizations per measurement, >= 1
    seed: int = 0  # seed of the shared realization seed list, >= 0
    p10: float | None = None  # 1->0 flip rate if asymmetric, in [0, 1]; None: = target_ber
    every: int = 1  # measure ber_acc every k epochs (the final epoch always), >= 1
    subset: int | None = None  # intermediate epochs use the first `subset` test samples; final: all
    estimate: str | None = None  # "margin_shift": log ber_acc_est next to ber_acc (a diagnostic only)
    estimate_reps: int = 2  # flipped passes of the estimate, 1..MAX_ESTIMATE_REPS


@dataclass(frozen=True)
class SweepSpec:
    """The final BER curve of every completed trial (realization seeds from ``objective.seed``)."""

    bers: tuple[float, ...] = DEFAULT_BERS  # ascending, each in [0, 1]; contains objective.target_ber
    reps: int = 10  # realizations per BER, >= 1
    tolerance: float = 1.0  # tolerable BER: accuracy points below clean allowed, in (0, 100] (core.tolerance)
    tolerable_iters: int = 4  # bisection steps between grid BERs (each: reps evaluation passes); 0..30


@dataclass(frozen=True)
class ResourceSpec:
    """Resources of one trial (Ray Tune)."""

    cpu: float = 1.0  # CPUs, > 0
    gpu: float = 0.0  # GPUs, >= 0; fractions <= 1 share a GPU, above 1 whole numbers only


@dataclass(frozen=True)
class SamplerSpec:
    """The Optuna sampler of every study."""

    name: str = "nsga2"  # nsga2, tpe or random
    seed: int = 0  # sampler seed, >= 0 (given to every study's sampler)
    options: Mapping[str, Any] = field(default_factory=dict)  # keyword arguments of the sampler class


@dataclass(frozen=True)
class PrunerSpec:
    """The Optuna pruner that stops weak trials, watching one single-objective metric."""

    name: str = "median"  # none, median, percentile, successive_halving
    metric: str = "clean_acc"  # clean_acc, ber_acc, train_loss, mlm
    mode: str = "max"  # max or min, the metric's direction
    options: Mapping[str, Any] = field(default_factory=dict)  # keyword arguments of the pruner class
    patience: int | None = None  # >= 0: wrap the pruner in optuna.pruners.PatientPruner


@dataclass(frozen=True)
class BaselineSpec:
    """One cross-entropy (CEL) run per study, trained with the same settings, for comparison."""

    enabled: bool = True  # run it
    logit_scale: float | None = None  # logit scale of the baseline; None means 1.0


@dataclass(frozen=True)
class TrackingSpec:
    """MLflow tracking."""

    uri: str = "sqlite:///mlflow.db"  # tracking URI
    experiment: str | None = None  # experiment name; None: the spec's name


@dataclass(frozen=True)
class StorageSpec:
    """Where results live."""

    path: str = "./ray_results"  # Ray Tune storage_path: a directory or s3:// / gs:// URI
    optuna: str | None = None  # Optuna RDB URL; None: sqlite:///<path>/<name>/optuna.db (local path only)


@dataclass(frozen=True)
class FailureSpec:
    """What happens when a trial fails."""

    max_retries: int = 2  # retries of a failed trial, >= 0
    checkpoint_every: int = 1  # a checkpoint every k epochs and at the last, 1..MAX_EPOCHS (search.trainable)


def baseline_run_name(study: str) -> str:
    """``<study>-baseline``: the Tune run of its own in which a study's CEL baseline ran before the study
    (searches begun before 2026-12-02, or ``baseline_alongside=False``); now it is a trial of the study's run."""
    return f"{study}-baseline"


def tune_run_names(study: str) -> tuple[str, str]:
    """The Tune runs that can hold ``study``'s trials: its own, then its separate baseline run."""
    return study, baseline_run_name(study)


@dataclass(frozen=True)
class SearchSpec:
    """A validated search: one Optuna study per (architecture, bits), each with ``trials_per_arch`` trials."""

    name: str  # spec name: [A-Za-z0-9_.-]
    data: DataSpec  # the data set (YAML key `dataset`)
    architectures: tuple[str, ...]  # model registry names
    bits: tuple[int, ...]  # bit widths
    losses: tuple[str, ...]  # loss registry names
    space: Mapping[str, ParamSpace]  # margin / b / logit_scale -> their space; logit_scale always present
    train: TrainConfig  # training settings (core.training.TrainConfig: bounds and defaults live there)
    objective: ObjectiveSpec  # the second objective
    sweep: SweepSpec  # the final BER curve
    trials_per_arch: int  # trials per study (architecture, bits)
    concurrency: int  # trials at once
    resources: ResourceSpec  # per trial
    sampler: SamplerSpec  # Optuna sampler
    pruner: PrunerSpec  # Optuna pruner
    baseline: BaselineSpec  # CEL baseline
    tracking: TrackingSpec  # MLflow
    storage: StorageSpec  # results and Optuna storage
    failure: FailureSpec  # retries
    # inputs, biases, arithmetic, output scale, decode (core.protocol): YAML `protocol: paper`, or a mapping
    # {preset: paper, decode: clean, ...}; default: ours
    protocol: Protocol = DEFAULT
    studies_at_once: int | str = "auto"  # "auto" or an integer >= 1 (search.runner.studies_at_once)

    def experiment_name(self) -> str:
        """The MLflow experiment: ``tracking.experiment`` or the spec's name."""
        return self.tracking.experiment or self.name

    def studies(self) -> list[tuple[str, int]]:
        """``[(architecture, bits)]``, architectures first, in spec order (all supported: validated)."""
        return [(arch, bits) for arch in self.architectures for bits in self.bits]

    def study_name(self, arch: str, bits: int) -> str:
        """``"<name>-<arch>-<bits>b"``, e.g. ``"quickstart-small_cnn-4b"``."""
        return f"{self.name}-{arch}-{bits}b"

    def optuna_db_path(self, storage_path: str | None = None) -> Path | None:
        """The SQLite file of the default Optuna storage, ``<storage path>/<name>/optuna.db`` (its directory
        may not exist yet), or None when ``storage.optuna`` names a storage (always so with a remote
        ``storage.path``: validation demands it). ``storage_path`` overrides ``storage.path`` (``--storage``).
        The one place the default Optuna location is derived."""
        if self.storage.optuna is not None:
            return None
        path = storage_path if storage_path is not None else self.storage.path
        if uri_scheme(path) not in (None, "file"):
            raise SpecError(
                [
                    f"storage.optuna: None — an Optuna RDB URL is required with the remote storage path "
                    f"{path!r}: e.g. sqlite:///<file> on the head node or postgresql://..."
                ]
            )
        return Path(re.sub(r"^file:(//)?", "", path)).expanduser() / self.name / "optuna.db"

    def optuna_storage(self, storage_path: str | None = None) -> str:
        """The Optuna storage URL: ``storage.optuna``, else ``sqlite:///<path>/<name>/optuna.db``
        (see :meth:`optuna_db_path`)."""
        if self.storage.optuna is not None:
            return self.storage.optuna
        return f"sqlite:///{self.optuna_db_path(storage_path)}"


# ----------------------------------------------------------------------------------------- the sections


def _data(errs: Errors, value: Any) -> DataSpec | None:
    from ..core.data.registry import list_datasets

    path = "dataset"
    if isinstance(value, str):
        value = {"name": value}
    if value is ABSENT:
        errs.add(path, value, "required: a data set name or a mapping with keys name, root, split_seed, ...")
        return None
    raw = check_section(errs, path, value, DataSpec, required=("name",))
    names = list_datasets()
    out = {
        "name": check_choice(errs, f"{path}.name", raw["name"], names) if "name" in raw else None,
        "root": check_str(errs, f"{path}.root", raw["root"], optional=True),
        "split_seed": check_int(errs, f"{path}.split_seed", raw["split_seed"], ge=0, le=MAX_SEED),
        "limit_train": check_int(
            errs, f"{path}.limit_train", raw["limit_train"], ge=1, le=MAX_SAMPLES, optional=True
        ),
        "limit_test": check_int(
            errs, f"{path}.limit_test", raw["limit_test"], ge=1, le=MAX_SAMPLES, optional=True
        ),
    }
    return DataSpec(**out)


def _param(errs: Errors, path: str, value: Any, param: Param) -> ParamSpace | None:
    """One ``space`` entry, within the bound that ``param`` (owned by the loss or the model) declares."""
    bound = f"{param.name} must be {param.allowed.removeprefix('a finite number ')}"
    form = "a number, or one of {choice: [..]}, {uniform: [low, high]}, {loguniform: [low, high]}"

    if is_num(value):
        if param.admits(float(value)):
            return ParamSpace("choice", values=(float(value),))
        errs.add(path, value, bound)
        return None
    if not isinstance(value, Mapping) or len(value) != 1:
        errs.add(path, value, form)
        return None
    ((kind, arg),) = value.items()
    kpath = join_path(path, kind)
    if kind not in SPACE_KINDS:
        errs.add(
            kpath, arg, f"unknown form; allowed: {', '.join(SPACE_KINDS)}{did_you_mean(kind, SPACE_KINDS)}"
        )
        return None
    if kind == "choice":
        items = check_list(errs, kpath, arg, "numbers")
        values = []
        for ipath, item in items:
            if not is_num(item):
                errs.add(ipath, item, "a finite number")
            elif not param.admits(float(item)):
                errs.add(ipath, item, bound)
            else:
                values.append(float(item))
        if len(values) != len(items) or not items:
            return None
        return ParamSpace("choice", values=tuple(values))
    if not (isinstance(arg, list | tuple) and len(arg) == 2 and all(is_num(v) for v in arg)):
        errs.add(kpath, arg, "[low, high]: two finite numbers")
        return None
    low, high = float(arg[0]), float(arg[1])
    if not low < high:
        errs.add(kpath, arg, "low must be < high")
        return None
    if kind == "loguniform" and low <= 0:
        errs.add(kpath, arg, "low must be > 0 for loguniform")
        return None
    if not param.admits(low):
        errs.add(kpath, arg, f"low: {bound}")
        return None
    return ParamSpace(kind, low=low, high=high)


def space_params() -> dict[str, Param]:
    """What a spec's ``space`` may name -> its :class:`~mcel_search.core.params.Param`: every registered
    loss's parameters (``margin``, ``b``, ``mhl_margin``) and the model's ``logit_scale``."""
    from ..core.layers import LOGIT_SCALE
    from ..core.losses import all_loss_params

    return {**all_loss_params(), LOGIT_SCALE.name: LOGIT_SCALE}


def _space(errs: Errors, value: Any, losses: Sequence[str]) -> dict[str, ParamSpace]:
    from ..core.layers import LOGIT_SCALE
    from ..core.losses import loss_params

    if value is ABSENT:
        value = {}
    params = space_params()
    raw = check_mapping(errs, "space", value, list(params))
    needed: dict[str, list[str]] = {}
    for loss in losses:
        for param in loss_params(loss):
            needed.setdefault(param, []).append(loss)
    out: dict[str, ParamSpace] = {}
    for name, param in params.items():
        path = f"space.{name}"
        if name not in raw:
            if name == LOGIT_SCALE.name:
                out[name] = ParamSpace("choice", values=(1.0,))
            elif name in needed:
                errs.add(path, ABSENT, f"required by loss {', '.join(needed[name])}")
            continue
        if name != LOGIT_SCALE.name and losses and name not in needed:
            errs.add(path, raw[name], f"not used by any searched loss ({', '.join(losses)}): remove it")
            continue
        searched = _param(errs, path, raw[name], param)
        if searched is not None:
            out[name] = searched
    return out


def _train(errs: Errors, value: Any, preset: Mapping[str, Any] | None = None) -> TrainConfig | None:
    """The ``train`` section as a :class:`~mcel_search.core.training.TrainConfig`: its keys, defaults and
    bounds are TrainConfig's own (:data:`~mcel_search.core.training.TRAIN_BOUNDS`); every bad field is
    reported. ``epochs`` is required here unless the protocol preset sets it. ``preset``: the protocol
    preset's training settings, which fill the fields the section does not give (before TrainConfig's
    defaults)."""
    from ..core.training import train_config_problems

    preset = dict(preset or {})
    given = set(value) if isinstance(value, Mapping) else set()
    if isinstance(value, Mapping):
        value = {**{k: v for k, v in preset.items() if k not in given}, **value}
    required = () if "epochs" in preset else ("epochs",)
    raw = check_section(errs, "train", value, TrainConfig, required=required)
    problems = train_config_problems(raw)
    for name, bad, allowed in problems:
        errs.add(f"train.{name}", bad, allowed)
    if problems or "epochs" not in raw:
        return None
    return TrainConfig(**raw)


#: Keys of the spec's ``protocol`` mapping.
PROTOCOL_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Protocol))


def _protocol(
    errs: Errors, value: Any, bits: Sequence[int], space: Mapping[str, ParamSpace] | None
) -> Protocol | None:
    """The ``protocol`` section: a preset name (``paper``), or a mapping ``{preset: <name>, <switch>:
    <value>, ...}`` whose switches change the preset's (:mod:`mcel_search.core.protocol`). Every bad switch
    is reported, and combinations that make no sense name both fields: faulty biases or integer arithmetic
    with 32-bit models (no codes), an ``output_scale_init`` with a constant scale, or a learnable scale's
    fixed init next to a searched ``space.logit_scale`` (one of the two would be ignored)."""
    if value is ABSENT or value is None:
        return DEFAULT
    if isinstance(value, str):
        value = {"preset": value}
    raw = check_mapping(errs, "protocol", value, PROTOCOL_KEYS)
    preset = raw.get("preset", "default")
    before = len(errs.lines)
    for name, bad, allowed in protocol_problems(raw):
        errs.add(
            f"protocol.{name}",
            bad,
            allowed
            + (
                did_you_mean(bad, PRESET_NAMES)
                if name == "preset"
                else did_you_mean(bad, PROTOCOL_CHOICES.get(name, ()))
            ),
        )
    if len(errs.lines) > before or preset not in PRESETS:
        return None
    merged = merge_switches(preset, {k: v for k, v in raw.items() if k != "preset"})
    for name, bad, allowed in protocol_problems(merged):
        errs.add(
            f"protocol.{name}", bad, allowed + f" (with protocol.output_scale: {merged['output_scale']})"
        )
    if 32 in bits:
        faulty = [k for k in ("conv_bias", "linear_bias", "output_bias") if merged[k] == "faulty"]
        integer = ["arithmetic"] if merged["arithmetic"] == "integer" else []
        for k in (*faulty, *integer):
            errs.add(
                f"protocol.{k}",
                merged[k],
                "not with bits: 32 (a float model stores no codes: no faulty biases, no integer "
                "arithmetic); drop 32 from bits or choose "
                + ("float or absent" if k != "arithmetic" else "affine"),
            )
    scale = (space or {}).get("logit_scale")
    if (
        merged["output_scale"] == "learnable"
        and merged["output_scale_init"] is not None
        and scale is not None
        and scale.fixed is None
    ):
        errs.add(
            "protocol.output_scale_init",
            merged["output_scale_init"],
            "null when space.logit_scale is searched (the learnable scale starts at the searched "
            "logit_scale), or fix space.logit_scale",
        )
    if len(errs.lines) > before:
        return None
    return Protocol(**merged)


def _ber(errs: Errors, path: str, value: Any, optional: bool = False) -> Any:
    return check_float(errs, path, value, ge=0, le=1, optional=optional, what="a bit error rate in [0, 1]")


def _objective(errs: Errors, value: Any) -> ObjectiveSpec:
    raw = check_section(errs, "objective", value, ObjectiveSpec)
    return ObjectiveSpec(
        target_ber=_ber(errs, "objective.target_ber", raw["target_ber"]),
        reps=check_int(errs, "objective.reps", raw["reps"], ge=1, le=MAX_REPS),
        seed=check_int(errs, "objective.seed", raw["seed"], ge=0, le=MAX_SEED),
        p10=_ber(errs, "objective.p10", raw["p10"], optional=True),
        every=check_int(errs, "objective.every", raw["every"], ge=1, le=MAX_EPOCHS),
        subset=check_int(errs, "objective.subset", raw["subset"], ge=1, le=MAX_SAMPLES, optional=True),
        estimate=None
        if raw["estimate"] is None
        else check_choice(errs, "objective.estimate", raw["estimate"], list(ESTIMATE_METHODS)),
        estimate_reps=check_int(
            errs, "objective.estimate_reps", raw["estimate_reps"], ge=1, le=MAX_ESTIMATE_REPS
        ),
    )


def _sweep(errs: Errors, value: Any, target_ber: float | None) -> SweepSpec:
    """The sweep; ``target_ber`` is added to the BERs if absent and the BERs are sorted ascending."""
    raw = check_section(errs, "sweep", value, SweepSpec)
    bers = [_ber(errs, p, v) for p, v in check_list(errs, "sweep.bers", raw["bers"], "BERs")]
    bers = [b for b in bers if b is not None]
    if target_ber is not None and target_ber not in bers:
        bers.append(target_ber)
    return SweepSpec(
        bers=tuple(sorted(bers)),
        reps=check_int(errs, "sweep.reps", raw["reps"], ge=1, le=MAX_REPS),
        tolerance=check_float(errs, "sweep.tolerance", raw["tolerance"], gt=0, le=100),
        tolerable_iters=check_int(errs, "sweep.tolerable_iters", raw["tolerable_iters"], ge=0, le=30),
    )


def _resources(errs: Errors, value: Any) -> ResourceSpec:
    raw = check_section(errs, "resources", value, ResourceSpec)
    gpu = check_float(errs, "resources.gpu", raw["gpu"], ge=0)
    if gpu is not None and gpu > 1 and not gpu.is_integer():
        errs.add("resources.gpu", raw["gpu"], "fractions only up to 1; above 1 a whole number of GPUs")
        gpu = None
    return ResourceSpec(cpu=check_float(errs, "resources.cpu", raw["cpu"], gt=0), gpu=gpu)


def _sampler(errs: Errors, value: Any) -> SamplerSpec:
    import optuna

    if isinstance(value, str):
        value = {"name": value}
    raw = check_section(errs, "sampler", value, SamplerSpec)
    name = check_choice(errs, "sampler.name", raw["name"], list(SAMPLERS))
    seed = check_int(errs, "sampler.seed", raw["seed"], ge=0, le=MAX_SEED)
    options = raw["options"]
    if name is not None:
        cls = getattr(optuna.samplers, SAMPLERS[name])
        checked = check_options(errs, "sampler.options", options, cls, exclude=("seed",))
        if checked is not None:
            spec = SamplerSpec(name, 0, checked)
            try_build(
                errs,
                "sampler.options",
                checked,
                lambda: create_sampler(spec),
                f"optuna.samplers.{cls.__name__}",
            )
        options = checked
    return SamplerSpec(name=name, seed=seed, options=dict(options or {}))


def _pruner(errs: Errors, value: Any) -> PrunerSpec:
    import optuna

    if isinstance(value, str):
        value = {"name": value}
    raw = check_section(errs, "pruner", value, PrunerSpec)
    name = raw["name"]
    name = PRUNER_ALIASES.get(name, name) if isinstance(name, str) else name
    name = check_choice(errs, "pruner.name", name, [*PRUNERS, *PRUNER_ALIASES])
    if raw["metric"] == "ber_acc_est":
        errs.add("pruner.metric", raw["metric"], NOT_A_PRUNER_METRIC)
        metric = None
    else:
        metric = check_choice(errs, "pruner.metric", raw["metric"], list(PRUNER_METRICS))
    mode = check_choice(errs, "pruner.mode", raw["mode"], ["max", "min"])
    if metric is not None and mode is not None and PRUNER_METRICS[metric] != mode:
        errs.add(
            "pruner.mode",
            mode,
            f"{metric} is {PRUNER_METRICS[metric]}imized: set mode: {PRUNER_METRICS[metric]}",
        )
    patience = check_int(errs, "pruner.patience", raw["patience"], ge=0, le=MAX_EPOCHS, optional=True)
    options = raw["options"]
    if name is not None:
        cls = getattr(optuna.pruners, PRUNERS[name])
        checked = check_options(errs, "pruner.options", options, cls)
        if checked is not None:
            spec = PrunerSpec(name=name, options=checked, patience=patience)
            try_build(
                errs, "pruner.options", checked, lambda: create_pruner(spec), f"optuna.pruners.{cls.__name__}"
            )
        options = checked
    return PrunerSpec(name=name, metric=metric, mode=mode, options=dict(options or {}), patience=patience)


def _baseline(errs: Errors, value: Any) -> BaselineSpec:
    raw = check_section(errs, "baseline", value, BaselineSpec)
    return BaselineSpec(
        enabled=check_bool(errs, "baseline.enabled", raw["enabled"]),
        logit_scale=check_float(errs, "baseline.logit_scale", raw["logit_scale"], gt=0, optional=True),
    )


#: What a tracking URI may be (spec field and ``--tracking-uri`` alike).
TRACKING_WHAT = (
    "an MLflow tracking URI: sqlite:///<file>, file:<dir>, http(s)://<host>[:<port>], "
    "postgresql://..., mysql://... or a bare directory path"
)
#: What a storage path may be (spec field and ``--storage`` alike).
STORAGE_WHAT = f"a directory or a URI with scheme {', '.join(s + '://' for s in STORAGE_SCHEMES)}"
#: MLflow keeps experiment names in a 256-character column.
MAX_EXPERIMENT_NAME = 256


def check_overrides(tracking_uri: str | None, storage_path: str | None) -> None:
    """The command line's ``--tracking-uri`` and ``--storage`` checked exactly as the spec's fields are;
    one :class:`SpecError` line per bad one."""
    errs = Errors()
    if tracking_uri is not None:
        check_uri(errs, "--tracking-uri", tracking_uri, TRACKING_SCHEMES, TRACKING_WHAT, bare_path=True)
    if storage_path is not None:
        check_uri(errs, "--storage", storage_path, STORAGE_SCHEMES, STORAGE_WHAT, bare_path=True)
    if errs.lines:
        raise SpecError(errs.lines, "<command line>")


def _tracking(errs: Errors, value: Any) -> TrackingSpec:
    raw = check_section(errs, "tracking", value, TrackingSpec)
    uri = check_uri(errs, "tracking.uri", raw["uri"], TRACKING_SCHEMES, TRACKING_WHAT, bare_path=True)
    experiment = check_str(errs, "tracking.experiment", raw["experiment"], optional=True)
    if experiment is not None and (len(experiment) > MAX_EXPERIMENT_NAME or not experiment.isprintable()):
        errs.add(
            "tracking.experiment",
            experiment,
            f"at most {MAX_EXPERIMENT_NAME} printable characters (MLflow's limit)",
        )
        experiment = None
    return TrackingSpec(uri=uri, experiment=experiment)


def _storage(errs: Errors, value: Any) -> StorageSpec:
    raw = check_section(errs, "storage", value, StorageSpec)
    path = check_uri(errs, "storage.path", raw["path"], STORAGE_SCHEMES, STORAGE_WHAT, bare_path=True)
    optuna = raw["optuna"]
    if optuna is not None:
        what = "null or an Optuna RDB URL: sqlite:///<file>, postgresql://..., mysql://..."
        optuna = check_uri(errs, "storage.optuna", optuna, OPTUNA_SCHEMES, what, bare_path=False)
    elif path is not None and uri_scheme(path) not in (None, "file"):
        errs.add(
            "storage.optuna",
            None,
            f"an Optuna RDB URL is required with the remote storage.path {path!r}: e.g. "
            "sqlite:///<file> on the head node or postgresql://...",
        )
    return StorageSpec(path=path, optuna=optuna)


def _failure(errs: Errors, value: Any) -> FailureSpec:
    raw = check_section(errs, "failure", value, FailureSpec)
    return FailureSpec(
        max_retries=check_int(errs, "failure.max_retries", raw["max_retries"], ge=0, le=MAX_RETRIES),
        checkpoint_every=check_int(
            errs, "failure.checkpoint_every", raw["checkpoint_every"], ge=1, le=MAX_EPOCHS
        ),
    )


# ------------------------------------------------------------------------------------------- public API

#: Top-level keys of a spec, in YAML order (``dataset`` holds :attr:`SearchSpec.data`).
TOP_LEVEL_KEYS: tuple[str, ...] = tuple("dataset" if f.name == "data" else f.name for f in fields(SearchSpec))
#: Top-level keys without a default.
REQUIRED_KEYS: tuple[str, ...] = (
    "name",
    "dataset",
    "architectures",
    "bits",
    "losses",
    "train",
    "trials_per_arch",
)


def parse_spec(data: Any, *, source: str = "<dict>", early: Sequence[str] = ()) -> SearchSpec:
    """Validate ``data`` (a spec as a dict, e.g. from YAML) and return the :class:`SearchSpec`.

    Every problem is collected first; then one :class:`SpecError` lists them all, one line per bad field.
    ``source`` names where ``data`` came from (kept as ``SpecError.source``); ``early`` are problem lines
    found before parsing (the YAML reader's duplicate keys), reported first.
    """
    from ..core import data as _registers_datasets  # noqa: F401
    from ..core import models as _registers_models  # noqa: F401
    from ..core.losses import list_losses
    from ..core.models.registry import get_model_spec, list_models

    errs = Errors()
    errs.lines.extend(early)
    if not isinstance(data, Mapping):
        extra = " (the file is empty)" if data is None else ""
        errs.add("spec", data, f"a mapping with keys {', '.join(TOP_LEVEL_KEYS)}{extra}")
        raise SpecError(errs.lines, source)
    raw = check_mapping(
        errs, "", data, TOP_LEVEL_KEYS, [k for k in REQUIRED_KEYS if k not in ("dataset", "train")]
    )

    def get(key: str) -> Any:
        return raw.get(key, ABSENT)

    name = check_str(errs, "name", raw["name"]) if "name" in raw else None
    if name is not None and not _NAME_RE.fullmatch(name):
        errs.add("name", name, "1-100 characters [A-Za-z0-9_.-], starting with a letter or digit")
        name = None

    data_spec = _data(errs, get("dataset"))

    arch_names = list_models()
    archs = [
        check_choice(errs, p, v, arch_names)
        for p, v in check_list(errs, "architectures", get("architectures"), "architectures")
    ]
    bits = []
    for p, v in check_list(errs, "bits", get("bits"), "bit widths"):
        if is_int(v) and int(v) in BITS:
            bits.append((p, int(v)))
        else:
            errs.add(p, v, f"one of {', '.join(map(str, BITS))}")
    for arch in (a for a in archs if a is not None):
        supported = get_model_spec(arch).bits
        for p, b in bits:
            if b not in supported:
                binary = [m for m in arch_names if 1 in get_model_spec(m).bits]
                hint = f"; binary networks exist for {', '.join(binary)}" if b == 1 else ""
                errs.add(
                    p,
                    b,
                    f"({arch}, {b}-bit) is not supported: {arch} takes bits {', '.join(map(str, supported))}{hint}",
                )

    loss_names = list_losses()
    losses = [
        check_choice(errs, p, v, loss_names) for p, v in check_list(errs, "losses", get("losses"), "losses")
    ]
    valid_losses = [loss for loss in losses if loss is not None]
    space = _space(errs, get("space"), valid_losses)

    protocol = _protocol(errs, get("protocol"), [b for _, b in bits], space)
    preset_train = protocol.train_defaults() if protocol is not None else {}
    if "train" not in raw and "epochs" not in preset_train:
        errs.add("train.epochs", ABSENT, "required (train: {epochs: N})")
        train = None
    else:
        train = _train(errs, raw.get("train", {}), preset_train)
    objective = _objective(errs, get("objective"))
    sweep = _sweep(errs, get("sweep"), objective.target_ber)
    pruner = _pruner(errs, get("pruner"))
    trials = (
        check_int(errs, "trials_per_arch", raw["trials_per_arch"], ge=1, le=MAX_TRIALS)
        if "trials_per_arch" in raw
        else None
    )
    concurrency = check_int(errs, "concurrency", raw.get("concurrency", 1), ge=1, le=MAX_TRIALS)
    at_once = raw.get("studies_at_once", "auto")
    if at_once != "auto" and not (is_int(at_once) and 1 <= at_once <= MAX_STUDIES):
        errs.add("studies_at_once", at_once, f"auto, or an integer >= 1 and <= {MAX_STUDIES:_}")
    elif at_once != "auto":
        at_once = int(at_once)
    spec_kwargs = {
        "resources": _resources(errs, get("resources")),
        "sampler": _sampler(errs, get("sampler")),
        "pruner": pruner,
        "baseline": _baseline(errs, get("baseline")),
        "tracking": _tracking(errs, get("tracking")),
        "storage": _storage(errs, get("storage")),
        "failure": _failure(errs, get("failure")),
        "protocol": protocol,
        "studies_at_once": at_once,
    }
    if errs.lines:
        raise SpecError(errs.lines, source)
    return SearchSpec(
        name=name,
        data=data_spec,
        architectures=tuple(archs),
        bits=tuple(b for _, b in bits),
        losses=tuple(losses),
        space=space,
        train=train,
        objective=objective,
        sweep=sweep,
        trials_per_arch=trials,
        concurrency=concurrency,
        **spec_kwargs,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _param_to_plain(param: ParamSpace) -> Any:
    if param.fixed is not None:
        return param.fixed
    if param.kind == "choice":
        return {"choice": list(param.values or ())}
    return {param.kind: [param.low, param.high]}


def spec_to_dict(spec: SearchSpec) -> dict:
    """A plain dict (YAML layout: ``dataset`` key, lists, mappings) that :func:`parse_spec` reads back into
    an equal spec."""
    out: dict[str, Any] = {}
    for f in fields(spec):
        value = getattr(spec, f.name)
        if f.name == "space":
            out["space"] = {k: _param_to_plain(v) for k, v in value.items()}
        elif is_dataclass(value):
            out["dataset" if f.name == "data" else f.name] = {
                g.name: _plain(getattr(value, g.name)) for g in fields(value)
            }
        else:
            out[f.name] = _plain(value)
    return out


def flatten(d: Mapping | SearchSpec, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys: ``{"train": {"epochs": 10}} -> {"train.epochs": 10}``.

    Lists stay values; empty mappings are left out. A :class:`SearchSpec` is flattened via
    :func:`spec_to_dict`. Meant for tracking parameters (``mlflow.log_params(flatten(spec))``).
    """
    if isinstance(d, SearchSpec):
        d = spec_to_dict(d)
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out
