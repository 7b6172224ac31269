"""Optuna samplers and pruners named in a spec: the names, the check of their YAML options against the
classes' own constructors (introspected, so a new Optuna option needs no change here), and the factories.

A spec's ``sampler.options`` / ``pruner.options`` are keyword arguments of the ``optuna.samplers`` /
``optuna.pruners`` class; :func:`check_options` refuses an unknown key (with a did-you-mean), a value
whose type does not fit the parameter's annotation, and a missing required argument, and
:func:`try_build` builds the object once to let Optuna's own checks speak (one line each).
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .validate import ABSENT, Errors, did_you_mean, is_int, join_path

if TYPE_CHECKING:
    from .spec import PrunerSpec, SamplerSpec

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
    if is_int(value):
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


def check_options(errs: Errors, path: str, value: Any, cls: type, exclude: Sequence[str] = ()) -> dict | None:
    """``options`` checked against ``cls``'s constructor; None when something is wrong."""
    if not isinstance(value, Mapping):
        errs.add(path, value, "a mapping of keyword arguments")
        return None
    params = _yaml_params(cls, exclude)
    allowed = list(params)
    ok = True
    options: dict[str, Any] = {}
    for key, item in value.items():
        kpath = join_path(path, key)
        if key in exclude:
            errs.add(kpath, item, f"not an option here: set it as {path.rsplit('.', 1)[0]}.{key}")
            ok = False
        elif key not in params:
            names = ", ".join(allowed) if allowed else "none"
            errs.add(
                kpath, item, f"not an option of {cls.__name__}; options: {names}{did_you_mean(key, allowed)}"
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
            errs.add(join_path(path, key), ABSENT, f"required by {cls.__name__}")
            ok = False
    return options if ok else None


def try_build(errs: Errors, path: str, options: Mapping, build: Callable[[], Any], what: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build()
    except (ValueError, TypeError) as exc:
        errs.add(path, dict(options), f"rejected by {what}: {' '.join(str(exc).split())}")


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
