"""The search spec: one YAML file describes a whole search, validated in full before anything starts.

:func:`load_spec` reads the file, :func:`parse_spec` checks every field against the registries of
``core`` (models, data sets, losses), the training settings and Optuna's samplers and pruners, collects
*every* problem and raises one :class:`SpecError` that lists them, one line per bad field::

    space.margin.uniform: [8, 2] — low must be < high
    train.epochs: 0 — an integer >= 1
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
      margin: {choice: [1, 2, 4, 8, 16, 32]}   # MCEL margin m >= 0 (needed by mcel)
      b: {choice: [4, 8, 16]}                  # saturation bound b > 0 (needed by mcel and mhl)
      logit_scale: 1.0                         # s > 0 on the raw logits; optional, default 1.0
      # other forms: {uniform: [low, high]}, {loguniform: [low, high]} (low > 0)
    train:                         # as core.training.TrainConfig (paper Table II)
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
    objective:                     # the two objectives: clean accuracy and accuracy at target_ber
      target_ber: 0.01             # bit error rate of the second objective, in [0, 1]
      reps: 10                     # error realizations averaged per measurement
      seed: 0                      # first seed of the shared realization seed list
      p10: null                    # 1->0 flip rate if asymmetric (null: = target_ber)
      every: 1                     # measure ber_acc every k epochs (the final epoch always)
      subset: null                 # intermediate epochs use the first `subset` test samples (final: all)
    sweep:                         # BER curve of every completed trial (seed = objective.seed)
      bers: [0.0, 0.001, 0.005, 0.01, 0.02, 0.05]   # target_ber is added if absent; sorted ascending
      reps: 10
    trials_per_arch: 12            # trials of each study, i.e. of each (architecture, bits) pair; >= 1
    concurrency: 1                 # trials running at once; >= 1
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

YAML notes: ``1e-3`` is read as a number (plain PyYAML reads it as a string); a key given twice in one
mapping is an error (PyYAML silently keeps the last).
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

#: Bit widths a spec may name (1 = binary, 32 = float); each architecture supports a subset.
BITS: tuple[int, ...] = (1, 2, 4, 8, 32)
#: Searchable parameters, in canonical order; ``logit_scale`` is optional (default fixed 1.0).
SPACE_PARAMS: tuple[str, ...] = ("margin", "b", "logit_scale")
#: Forms of a searched parameter.
SPACE_KINDS: tuple[str, ...] = ("choice", "uniform", "loguniform")
#: Sampler names -> ``optuna.samplers`` class names.
SAMPLERS: dict[str, str] = {"nsga2": "NSGAIISampler", "tpe": "TPESampler", "random": "RandomSampler"}
#: Pruner names -> ``optuna.pruners`` class names.
PRUNERS: dict[str, str] = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "successive_halving": "SuccessiveHalvingPruner",
}
#: Other accepted pruner names -> canonical name.
PRUNER_ALIASES: dict[str, str] = {"sha": "successive_halving"}
#: Metrics a pruner can watch -> their direction.
PRUNER_METRICS: dict[str, str] = {"clean_acc": "max", "ber_acc": "max", "mlm": "max", "train_loss": "min"}
#: Default BER sweep.
DEFAULT_BERS: tuple[float, ...] = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05)
#: Schemes of an MLflow tracking URI (``+driver`` suffixes allowed for the databases).
TRACKING_SCHEMES: tuple[str, ...] = ("sqlite", "file", "http", "https", "postgresql", "mysql")
#: Schemes of a Ray Tune storage path besides a plain directory.
STORAGE_SCHEMES: tuple[str, ...] = ("s3", "gs", "gcs", "file", "hdfs", "abfs", "abfss")
#: Schemes of an Optuna RDB storage URL.
OPTUNA_SCHEMES: tuple[str, ...] = ("sqlite", "postgresql", "mysql")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_USERINFO_RE = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*):(?P<secret>[^/@\s]*)@")
_SECRET_QUERY_RE = re.compile(
    r"(?P<head>[?&](?:password|passwd|pwd|token|secret|access_key|secret_key)=)[^&\s]*", re.I
)

#: What replaces a password or token in anything logged or printed.
REDACTED = "***"


def redact_credentials(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URI and every ``password=`` /
    ``token=`` query value replaced by ``***``; used for everything logged to MLflow or printed."""
    text = _USERINFO_RE.sub(lambda m: f"{m.group('head')}:{REDACTED}@", text)
    return _SECRET_QUERY_RE.sub(lambda m: f"{m.group('head')}{REDACTED}", text)


# --------------------------------------------------------------------------------------------- the spec


class SpecError(ValueError):
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
class TrainSpec:
    """Training settings, as ``core.training.TrainConfig`` (paper Table II)."""

    epochs: int  # passes over the training set, >= 1
    batch_size: int = 256  # samples per step, >= 1
    lr: float = 1e-3  # Adam learning rate, > 0
    step_size: int = 10  # StepLR step size (epochs), >= 1
    gamma: float = 0.5  # StepLR decay, in (0, 1]
    weight_decay: float = 0.0  # Adam weight decay, >= 0
    seed: int = 0  # weight init and shuffling seed, >= 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    train_ber: float = 0.0  # bit-error training: flip rate in every training step, in [0, 0.5] (0: off)


@dataclass(frozen=True)
class ObjectiveSpec:
    """How a trial's second objective, accuracy at ``target_ber``, is measured during training."""

    target_ber: float = 0.01  # bit error rate (0->1, and 1->0 unless p10 is set), in [0, 1]
    reps: int = 10  # error realizations per measurement, >= 1
    seed: int = 0  # seed of the shared realization seed list, >= 0
    p10: float | None = None  # 1->0 flip rate if asymmetric, in [0, 1]; None: = target_ber
    every: int = 1  # measure ber_acc every k epochs (the final epoch always), >= 1
    subset: int | None = None  # intermediate epochs use the first `subset` test samples; final: all


@dataclass(frozen=True)
class SweepSpec:
    """The final BER curve of every completed trial (realization seeds from ``objective.seed``)."""

    bers: tuple[float, ...] = DEFAULT_BERS  # ascending, each in [0, 1]; contains objective.target_ber
    reps: int = 10  # realizations per BER, >= 1


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


@dataclass(frozen=True)
class SearchSpec:
    """A validated search: one Optuna study per (architecture, bits), each with ``trials_per_arch`` trials."""

    name: str  # spec name: [A-Za-z0-9_.-]
    data: DataSpec  # the data set (YAML key `dataset`)
    architectures: tuple[str, ...]  # model registry names
    bits: tuple[int, ...]  # bit widths
    losses: tuple[str, ...]  # loss registry names
    space: Mapping[str, ParamSpace]  # margin / b / logit_scale -> their space; logit_scale always present
    train: TrainSpec  # training settings
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

    def experiment_name(self) -> str:
        """The MLflow experiment: ``tracking.experiment`` or the spec's name."""
        return self.tracking.experiment or self.name

    def studies(self) -> list[tuple[str, int]]:
        """``[(architecture, bits)]``, architectures first, in spec order (all supported: validated)."""
        return [(arch, bits) for arch in self.architectures for bits in self.bits]

    def study_name(self, arch: str, bits: int) -> str:
        """``"<name>-<arch>-<bits>b"``, e.g. ``"quickstart-small_cnn-4b"``."""
        return f"{self.name}-{arch}-{bits}b"

    def optuna_db_path(self) -> Path | None:
        """The SQLite file of the default Optuna storage, ``<storage.path>/<name>/optuna.db`` (its directory
        may not exist yet), or None when ``storage.optuna`` names a storage (always so with a remote
        ``storage.path``: validation demands it)."""
        if self.storage.optuna is not None:
            return None
        return Path(re.sub(r"^file:(//)?", "", self.storage.path)).expanduser() / self.name / "optuna.db"

    def optuna_storage(self) -> str:
        """The Optuna storage URL: ``storage.optuna``, else ``sqlite:///<path>/<name>/optuna.db``
        (see :meth:`optuna_db_path`)."""
        if self.storage.optuna is not None:
            return self.storage.optuna
        return f"sqlite:///{self.optuna_db_path()}"


# ------------------------------------------------------------------------------------- error collection


_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "missing"})()


def _show(value: Any) -> str:
    """The bad value as it appears in an error line: its repr, on one line, at most 80 characters."""
    text = "missing" if value is _MISSING else repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= 80 else text[:77] + "..."


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _suggest(value: Any, options: Sequence[str]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Errors:
    """Collects one line per problem: ``<path>: <value> — <what is allowed>``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, value: Any, allowed: str) -> None:
        self.lines.append(f"{path or 'spec'}: {_show(value)} — {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


# ------------------------------------------------------------------------------------------ field checks


def _int(errs: _Errors, path: str, value: Any, *, ge: int, optional: bool = False) -> Any:
    if optional and value is None:
        return None
    if _is_int(value) and value >= ge:
        return int(value)
    errs.add(path, value, f"an integer >= {ge}" + (" or null" if optional else ""))
    return None


def _float(
    errs: _Errors,
    path: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    optional: bool = False,
    what: str | None = None,
) -> Any:
    if optional and value is None:
        return None
    if _is_num(value):
        v = float(value)
        if (gt is None or v > gt) and (ge is None or v >= ge) and (le is None or v <= le):
            return v
    if what is None:
        parts = [f"> {gt:g}" if gt is not None else "", f">= {ge:g}" if ge is not None else ""]
        parts.append(f"<= {le:g}" if le is not None else "")
        what = "a finite number " + " and ".join(p for p in parts if p)
    errs.add(path, value, what + (" or null" if optional else ""))
    return None


def _str(errs: _Errors, path: str, value: Any, *, optional: bool = False) -> Any:
    if optional and value is None:
        return None
    if isinstance(value, str) and value.strip():
        return value
    errs.add(path, value, "a non-empty string" + (" or null" if optional else ""))
    return None


def _bool(errs: _Errors, path: str, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    errs.add(path, value, "true or false")
    return None


def _choice(errs: _Errors, path: str, value: Any, options: Sequence[str]) -> Any:
    if isinstance(value, str) and value in options:
        return value
    errs.add(path, value, f"one of {', '.join(options)}{_suggest(value, options)}")
    return None


def _mapping(
    errs: _Errors, path: str, value: Any, allowed: Sequence[str], required: Sequence[str] = ()
) -> dict:
    """The mapping at ``path`` with unknown keys reported (with a did-you-mean) and dropped; missing
    ``required`` keys reported. A non-mapping is reported and read as ``{}``."""
    if not isinstance(value, Mapping):
        errs.add(path, value, f"a mapping with keys {', '.join(allowed)}")
        return {}
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in allowed:
            out[key] = item
        else:
            hint = _suggest(key, allowed)
            errs.add(_join(path, key), item, f"unknown key; allowed keys: {', '.join(allowed)}{hint}")
    for key in required:
        if key not in out:
            errs.add(_join(path, key), _MISSING, "required")
    return out


def _section(errs: _Errors, path: str, value: Any, cls: type, required: Sequence[str] = ()) -> dict:
    """The keys of ``value`` (a mapping of ``cls`` fields, or absent) checked for unknown/missing keys."""
    if value is _MISSING:
        value = {}
    return _mapping(errs, path, value, [f.name for f in fields(cls)], required)


def _list(errs: _Errors, path: str, value: Any, what: str) -> list[tuple[str, Any]]:
    """``[(item path, item)]`` of a non-empty list without duplicates; problems reported."""
    if value is _MISSING:  # reported by the caller as a missing required key
        return []
    if not isinstance(value, list | tuple) or not value:
        errs.add(path, value, f"a non-empty list of {what}")
        return []
    seen: list[Any] = []
    items = []
    for i, item in enumerate(value):
        if item in seen:
            errs.add(f"{path}[{i}]", item, "a duplicate: each entry may appear once")
            continue
        seen.append(item)
        items.append((f"{path}[{i}]", item))
    return items


def _uri(value: str) -> tuple[str | None, str]:
    """``(base scheme, rest after ':')``; base scheme lower-cased without a ``+driver`` suffix."""
    m = _SCHEME_RE.match(value)
    if not m or len(m.group(1)) == 1:  # no scheme, or a Windows drive letter
        return None, value
    return m.group(1).split("+")[0].lower(), value[m.end() :]


def _scheme(value: str) -> str | None:
    return _uri(value)[0]


def _check_uri(
    errs: _Errors, path: str, value: Any, schemes: Sequence[str], what: str, *, bare_path: bool
) -> Any:
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        errs.add(path, value, what)
        return None
    scheme, rest = _uri(value)
    if scheme is None:
        ok = bare_path
    elif scheme not in schemes:
        ok = False
    elif scheme == "file":
        ok = bool(rest.strip("/"))
    elif scheme == "sqlite":
        ok = rest.startswith("///") and len(rest) > 3
    else:
        ok = rest.startswith("//") and bool(rest[2:].split("/")[0])
    if ok:
        return value
    errs.add(path, value, what)
    return None


# ----------------------------------------------------------------------------------------- the sections


def _data(errs: _Errors, value: Any) -> DataSpec | None:
    from ..core.data.registry import list_datasets

    path = "dataset"
    if isinstance(value, str):
        value = {"name": value}
    if value is _MISSING:
        errs.add(path, value, "required: a data set name or a mapping with keys name, root, split_seed, ...")
        return None
    raw = _section(errs, path, value, DataSpec, required=("name",))
    names = list_datasets()
    out = {
        "name": _choice(errs, f"{path}.name", raw["name"], names) if "name" in raw else None,
        "root": _str(errs, f"{path}.root", raw.get("root"), optional=True),
        "split_seed": _int(errs, f"{path}.split_seed", raw.get("split_seed", 0), ge=0),
        "limit_train": _int(errs, f"{path}.limit_train", raw.get("limit_train"), ge=1, optional=True),
        "limit_test": _int(errs, f"{path}.limit_test", raw.get("limit_test"), ge=1, optional=True),
    }
    return DataSpec(**out)


def _param(errs: _Errors, path: str, value: Any, name: str) -> ParamSpace | None:
    """One ``space`` entry; ``margin`` must be >= 0, ``b`` and ``logit_scale`` > 0."""
    strict = name != "margin"
    bound = f"{name} must be {'>' if strict else '>='} 0"
    form = "a number, or one of {choice: [..]}, {uniform: [low, high]}, {loguniform: [low, high]}"

    def in_bounds(v: float) -> bool:
        return v > 0 if strict else v >= 0

    if _is_num(value):
        if in_bounds(float(value)):
            return ParamSpace("choice", values=(float(value),))
        errs.add(path, value, bound)
        return None
    if not isinstance(value, Mapping) or len(value) != 1:
        errs.add(path, value, form)
        return None
    ((kind, arg),) = value.items()
    kpath = _join(path, kind)
    if kind not in SPACE_KINDS:
        errs.add(kpath, arg, f"unknown form; allowed: {', '.join(SPACE_KINDS)}{_suggest(kind, SPACE_KINDS)}")
        return None
    if kind == "choice":
        items = _list(errs, kpath, arg, "numbers")
        values = []
        for ipath, item in items:
            if not _is_num(item):
                errs.add(ipath, item, "a finite number")
            elif not in_bounds(float(item)):
                errs.add(ipath, item, bound)
            else:
                values.append(float(item))
        if len(values) != len(items) or not items:
            return None
        return ParamSpace("choice", values=tuple(values))
    if not (isinstance(arg, list | tuple) and len(arg) == 2 and all(_is_num(v) for v in arg)):
        errs.add(kpath, arg, "[low, high]: two finite numbers")
        return None
    low, high = float(arg[0]), float(arg[1])
    if not low < high:
        errs.add(kpath, arg, "low must be < high")
        return None
    if kind == "loguniform" and low <= 0:
        errs.add(kpath, arg, "low must be > 0 for loguniform")
        return None
    if not in_bounds(low):
        errs.add(kpath, arg, f"low: {bound}")
        return None
    return ParamSpace(kind, low=low, high=high)


def _space(errs: _Errors, value: Any, losses: Sequence[str]) -> dict[str, ParamSpace]:
    from ..core.losses import loss_params

    if value is _MISSING:
        value = {}
    raw = _mapping(errs, "space", value, SPACE_PARAMS)
    needed: dict[str, list[str]] = {}
    for loss in losses:
        for param in loss_params(loss):
            needed.setdefault(param, []).append(loss)
    out: dict[str, ParamSpace] = {}
    for name in SPACE_PARAMS:
        path = f"space.{name}"
        if name not in raw:
            if name == "logit_scale":
                out[name] = ParamSpace("choice", values=(1.0,))
            elif name in needed:
                errs.add(path, _MISSING, f"required by loss {', '.join(needed[name])}")
            continue
        if name != "logit_scale" and losses and name not in needed:
            errs.add(path, raw[name], f"not used by any searched loss ({', '.join(losses)}): remove it")
            continue
        param = _param(errs, path, raw[name], name)
        if param is not None:
            out[name] = param
    return out


def _train(errs: _Errors, value: Any) -> TrainSpec | None:
    raw = _section(errs, "train", value, TrainSpec, required=("epochs",))
    d = TrainSpec(epochs=1)
    device = raw.get("device", d.device)
    if not (isinstance(device, str) and _DEVICE_RE.fullmatch(device)):
        errs.add("train.device", device, "auto, cpu, cuda or cuda:N")
    return TrainSpec(
        epochs=_int(errs, "train.epochs", raw["epochs"], ge=1) if "epochs" in raw else None,
        batch_size=_int(errs, "train.batch_size", raw.get("batch_size", d.batch_size), ge=1),
        lr=_float(errs, "train.lr", raw.get("lr", d.lr), gt=0),
        step_size=_int(errs, "train.step_size", raw.get("step_size", d.step_size), ge=1),
        gamma=_float(errs, "train.gamma", raw.get("gamma", d.gamma), gt=0, le=1, what="a number in (0, 1]"),
        weight_decay=_float(errs, "train.weight_decay", raw.get("weight_decay", d.weight_decay), ge=0),
        seed=_int(errs, "train.seed", raw.get("seed", d.seed), ge=0),
        device=device,
        train_ber=_float(
            errs,
            "train.train_ber",
            raw.get("train_ber", d.train_ber),
            ge=0,
            le=0.5,
            what="a bit error rate in [0, 0.5] (0: no bit-error training)",
        ),
    )


def _ber(errs: _Errors, path: str, value: Any, optional: bool = False) -> Any:
    return _float(errs, path, value, ge=0, le=1, optional=optional, what="a bit error rate in [0, 1]")


def _objective(errs: _Errors, value: Any) -> ObjectiveSpec:
    raw = _section(errs, "objective", value, ObjectiveSpec)
    d = ObjectiveSpec()
    return ObjectiveSpec(
        target_ber=_ber(errs, "objective.target_ber", raw.get("target_ber", d.target_ber)),
        reps=_int(errs, "objective.reps", raw.get("reps", d.reps), ge=1),
        seed=_int(errs, "objective.seed", raw.get("seed", d.seed), ge=0),
        p10=_ber(errs, "objective.p10", raw.get("p10"), optional=True),
        every=_int(errs, "objective.every", raw.get("every", d.every), ge=1),
        subset=_int(errs, "objective.subset", raw.get("subset"), ge=1, optional=True),
    )


def _sweep(errs: _Errors, value: Any, target_ber: float | None) -> SweepSpec:
    """The sweep; ``target_ber`` is added to the BERs if absent and the BERs are sorted ascending."""
    raw = _section(errs, "sweep", value, SweepSpec)
    bers = [
        _ber(errs, p, v) for p, v in _list(errs, "sweep.bers", raw.get("bers", list(DEFAULT_BERS)), "BERs")
    ]
    bers = [b for b in bers if b is not None]
    if target_ber is not None and target_ber not in bers:
        bers.append(target_ber)
    return SweepSpec(bers=tuple(sorted(bers)), reps=_int(errs, "sweep.reps", raw.get("reps", 10), ge=1))


def _resources(errs: _Errors, value: Any) -> ResourceSpec:
    raw = _section(errs, "resources", value, ResourceSpec)
    gpu = _float(errs, "resources.gpu", raw.get("gpu", 0.0), ge=0)
    if gpu is not None and gpu > 1 and not gpu.is_integer():
        errs.add("resources.gpu", raw["gpu"], "fractions only up to 1; above 1 a whole number of GPUs")
        gpu = None
    return ResourceSpec(cpu=_float(errs, "resources.cpu", raw.get("cpu", 1.0), gt=0), gpu=gpu)


def _annotation_ok(annotation: Any, value: Any) -> bool:
    """Whether ``value`` fits a constructor parameter's annotation (checked by its type names)."""
    if annotation is inspect.Parameter.empty:
        return value is None or isinstance(value, bool | int | float | str)
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    names = set(re.findall(r"[A-Za-z_]+", text))
    if value is None:
        return "None" in names
    if isinstance(value, bool):
        return "bool" in names
    if _is_int(value):
        return bool({"int", "float"} & names)
    if isinstance(value, float):
        return "float" in names
    if isinstance(value, str):
        return "str" in names
    return False


def _yaml_params(cls: type, exclude: Sequence[str] = ()) -> dict[str, inspect.Parameter]:
    """Constructor parameters of an optuna class that a YAML value can fill (no callables, no objects)."""
    out = {}
    for name, p in inspect.signature(cls).parameters.items():
        text = p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation)
        if (
            name in exclude
            or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            or "Callable" in text
            or "Base" in text
        ):
            continue
        out[name] = p
    return out


def _options(errs: _Errors, path: str, value: Any, cls: type, exclude: Sequence[str] = ()) -> dict | None:
    """``options`` checked against ``cls``'s constructor; None when something is wrong."""
    if not isinstance(value, Mapping):
        errs.add(path, value, "a mapping of keyword arguments")
        return None
    params = _yaml_params(cls, exclude)
    allowed = list(params)
    ok = True
    options: dict[str, Any] = {}
    for key, item in value.items():
        kpath = _join(path, key)
        if key in exclude:
            errs.add(kpath, item, f"not an option here: set it as {path.rsplit('.', 1)[0]}.{key}")
            ok = False
        elif key not in params:
            names = ", ".join(allowed) if allowed else "none"
            errs.add(
                kpath, item, f"not an option of {cls.__name__}; options: {names}{_suggest(key, allowed)}"
            )
            ok = False
        elif not _annotation_ok(params[key].annotation, item):
            annotation = params[key].annotation
            text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
            errs.add(kpath, item, f"{cls.__name__}({key}=...) takes {text}")
            ok = False
        else:
            options[key] = item
    for key, p in params.items():
        if p.default is p.empty and key not in options and ok:
            errs.add(_join(path, key), _MISSING, f"required by {cls.__name__}")
            ok = False
    return options if ok else None


def _try_build(errs: _Errors, path: str, options: Mapping, build: Callable[[], Any], what: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build()
    except (ValueError, TypeError) as exc:
        errs.add(path, dict(options), f"rejected by {what}: {' '.join(str(exc).split())}")


def _sampler(errs: _Errors, value: Any) -> SamplerSpec:
    import optuna

    if isinstance(value, str):
        value = {"name": value}
    raw = _section(errs, "sampler", value, SamplerSpec)
    name = _choice(errs, "sampler.name", raw.get("name", "nsga2"), list(SAMPLERS))
    seed = _int(errs, "sampler.seed", raw.get("seed", 0), ge=0)
    options = raw.get("options", {})
    if name is not None:
        cls = getattr(optuna.samplers, SAMPLERS[name])
        checked = _options(errs, "sampler.options", options, cls, exclude=("seed",))
        if checked is not None:
            spec = SamplerSpec(name, 0, checked)
            _try_build(
                errs,
                "sampler.options",
                checked,
                lambda: create_sampler(spec),
                f"optuna.samplers.{cls.__name__}",
            )
        options = checked
    return SamplerSpec(name=name, seed=seed, options=dict(options or {}))


def _pruner(errs: _Errors, value: Any) -> PrunerSpec:
    import optuna

    if isinstance(value, str):
        value = {"name": value}
    raw = _section(errs, "pruner", value, PrunerSpec)
    name = raw.get("name", "median")
    name = PRUNER_ALIASES.get(name, name) if isinstance(name, str) else name
    name = _choice(errs, "pruner.name", name, [*PRUNERS, *PRUNER_ALIASES])
    metric = _choice(errs, "pruner.metric", raw.get("metric", "clean_acc"), list(PRUNER_METRICS))
    mode = _choice(errs, "pruner.mode", raw.get("mode", "max"), ["max", "min"])
    if metric is not None and mode is not None and PRUNER_METRICS[metric] != mode:
        errs.add(
            "pruner.mode",
            mode,
            f"{metric} is {PRUNER_METRICS[metric]}imized: set mode: {PRUNER_METRICS[metric]}",
        )
    patience = _int(errs, "pruner.patience", raw.get("patience"), ge=0, optional=True)
    options = raw.get("options", {})
    if name is not None:
        cls = getattr(optuna.pruners, PRUNERS[name])
        checked = _options(errs, "pruner.options", options, cls)
        if checked is not None:
            spec = PrunerSpec(name=name, options=checked, patience=patience)
            _try_build(
                errs, "pruner.options", checked, lambda: create_pruner(spec), f"optuna.pruners.{cls.__name__}"
            )
        options = checked
    return PrunerSpec(name=name, metric=metric, mode=mode, options=dict(options or {}), patience=patience)


def _baseline(errs: _Errors, value: Any) -> BaselineSpec:
    raw = _section(errs, "baseline", value, BaselineSpec)
    return BaselineSpec(
        enabled=_bool(errs, "baseline.enabled", raw.get("enabled", True)),
        logit_scale=_float(errs, "baseline.logit_scale", raw.get("logit_scale"), gt=0, optional=True),
    )


def _tracking(errs: _Errors, value: Any) -> TrackingSpec:
    raw = _section(errs, "tracking", value, TrackingSpec)
    what = (
        "an MLflow tracking URI: sqlite:///<file>, file:<dir>, http(s)://<host>[:<port>], "
        "postgresql://..., mysql://... or a bare directory path"
    )
    uri = _check_uri(
        errs, "tracking.uri", raw.get("uri", TrackingSpec.uri), TRACKING_SCHEMES, what, bare_path=True
    )
    return TrackingSpec(
        uri=uri, experiment=_str(errs, "tracking.experiment", raw.get("experiment"), optional=True)
    )


def _storage(errs: _Errors, value: Any) -> StorageSpec:
    raw = _section(errs, "storage", value, StorageSpec)
    what = f"a directory or a URI with scheme {', '.join(s + '://' for s in STORAGE_SCHEMES)}"
    path = _check_uri(
        errs, "storage.path", raw.get("path", StorageSpec.path), STORAGE_SCHEMES, what, bare_path=True
    )
    optuna = raw.get("optuna")
    if optuna is not None:
        what = "null or an Optuna RDB URL: sqlite:///<file>, postgresql://..., mysql://..."
        optuna = _check_uri(errs, "storage.optuna", optuna, OPTUNA_SCHEMES, what, bare_path=False)
    elif path is not None and _scheme(path) not in (None, "file"):
        errs.add(
            "storage.optuna",
            None,
            f"an Optuna RDB URL is required with the remote storage.path {path!r}: e.g. "
            "sqlite:///<file> on the head node or postgresql://...",
        )
    return StorageSpec(path=path, optuna=optuna)


def _failure(errs: _Errors, value: Any) -> FailureSpec:
    raw = _section(errs, "failure", value, FailureSpec)
    return FailureSpec(max_retries=_int(errs, "failure.max_retries", raw.get("max_retries", 2), ge=0))


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


def parse_spec(data: Mapping, *, source: str = "<dict>") -> SearchSpec:
    """Validate ``data`` (a spec as a dict, e.g. from YAML) and return the :class:`SearchSpec`.

    Every problem is collected first; then one :class:`SpecError` lists them all, one line per bad field.
    ``source`` names where ``data`` came from (kept as ``SpecError.source``).
    """
    return _parse(data, source, [])


def _parse(data: Any, source: str, early: list[str]) -> SearchSpec:
    from ..core import data as _registers_datasets  # noqa: F401
    from ..core import models as _registers_models  # noqa: F401
    from ..core.losses import list_losses
    from ..core.models.registry import get_model_spec, list_models

    errs = _Errors()
    errs.lines.extend(early)
    if not isinstance(data, Mapping):
        extra = " (the file is empty)" if data is None else ""
        errs.add("spec", data, f"a mapping with keys {', '.join(TOP_LEVEL_KEYS)}{extra}")
        raise SpecError(errs.lines, source)
    raw = _mapping(
        errs, "", data, TOP_LEVEL_KEYS, [k for k in REQUIRED_KEYS if k not in ("dataset", "train")]
    )

    def get(key: str) -> Any:
        return raw.get(key, _MISSING)

    name = _str(errs, "name", raw["name"]) if "name" in raw else None
    if name is not None and not _NAME_RE.fullmatch(name):
        errs.add("name", name, "1-100 characters [A-Za-z0-9_.-], starting with a letter or digit")
        name = None

    data_spec = _data(errs, get("dataset"))

    arch_names = list_models()
    archs = [
        _choice(errs, p, v, arch_names)
        for p, v in _list(errs, "architectures", get("architectures"), "architectures")
    ]
    bits = []
    for p, v in _list(errs, "bits", get("bits"), "bit widths"):
        if _is_int(v) and int(v) in BITS:
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
    losses = [_choice(errs, p, v, loss_names) for p, v in _list(errs, "losses", get("losses"), "losses")]
    valid_losses = [loss for loss in losses if loss is not None]
    space = _space(errs, get("space"), valid_losses)

    if "train" not in raw:
        errs.add("train.epochs", _MISSING, "required (train: {epochs: N})")
        train = None
    else:
        train = _train(errs, raw["train"])
    objective = _objective(errs, get("objective"))
    sweep = _sweep(errs, get("sweep"), objective.target_ber)
    trials = _int(errs, "trials_per_arch", raw["trials_per_arch"], ge=1) if "trials_per_arch" in raw else None
    concurrency = _int(errs, "concurrency", raw.get("concurrency", 1), ge=1)
    spec_kwargs = {
        "resources": _resources(errs, get("resources")),
        "sampler": _sampler(errs, get("sampler")),
        "pruner": _pruner(errs, get("pruner")),
        "baseline": _baseline(errs, get("baseline")),
        "tracking": _tracking(errs, get("tracking")),
        "storage": _storage(errs, get("storage")),
        "failure": _failure(errs, get("failure")),
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


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float and records keys given twice in one mapping."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                if key_node.value in seen:
                    mark = key_node.start_mark
                    self.duplicates.append(
                        f"spec: {key_node.value!r} — key given twice in one mapping (line {mark.line + 1}, "
                        f"column {mark.column + 1}); give each key once"
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_spec(path: str | os.PathLike) -> SearchSpec:
    """Read the YAML spec at ``path`` and validate it (see :func:`parse_spec`).

    Raises:
        SpecError: the file is missing or unreadable, is not valid YAML (the line names line and column),
            or holds an invalid spec (one line per bad field).
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise SpecError([f"spec: file {source!r} does not exist"], source)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"spec: file {source!r} — cannot be read: {exc}"], source) from None
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(
            [f"spec: file {source!r} — invalid YAML{where}: {' '.join(problem.split())}"], source
        ) from None
    finally:
        loader.dispose()
    return _parse(data, source, loader.duplicates)


def create_sampler(spec: SamplerSpec, seed: int | None = None) -> Any:
    """The ``optuna.samplers`` instance of ``spec`` (``seed`` overrides ``spec.seed``)."""
    import optuna

    cls = getattr(optuna.samplers, SAMPLERS[spec.name])
    return cls(seed=spec.seed if seed is None else seed, **dict(spec.options))


def create_pruner(spec: PrunerSpec) -> Any:
    """The ``optuna.pruners`` instance of ``spec``, wrapped in ``PatientPruner`` when ``patience`` is set."""
    import optuna

    pruner = getattr(optuna.pruners, PRUNERS[spec.name])(**dict(spec.options))
    if spec.patience is not None:
        wrapped = None if spec.name == "none" else pruner
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            pruner = optuna.pruners.PatientPruner(wrapped, patience=spec.patience)
    return pruner


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
