"""Model registry: architectures are picked by name, so a search space holds only strings.

Follows torchvision ``models/_api.py`` and timm ``models/_registry.py``: a decorator fills one dict, a
duplicate name raises, and :func:`create_model` drops ``None`` keyword arguments so that unset keys take
their defaults.

Example::

    model = create_model("vgg3", bits=4, num_classes=10, in_channels=1, image_size=28, logit_scale=0.5)
    model.mcel_config  # {"name": "vgg3", "bits": 4, ...}: enough to rebuild it (see create_model_from_config)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import BadInputError

#: Bit widths every architecture supports: 2-, 4-, 8-bit QNNs and 32-bit float.
QNN_BITS: tuple[int, ...] = (2, 4, 8, 32)
#: Bit widths of architectures that also have a binary (BNN) variant.
BNN_QNN_BITS: tuple[int, ...] = (1, *QNN_BITS)

ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one architecture."""

    name: str  # registry key, e.g. "vgg3"
    builder: ModelBuilder  # fn(*, bits, num_classes, in_channels, image_size, logit_scale) -> nn.Module
    bits: tuple[int, ...]  # supported bit widths (1 = BNN, 32 = float), ascending
    paper_dataset: str | None  # data set the paper pairs it with (Table I), None for helper models
    description: str  # one line, from the builder's docstring


_MODELS: dict[str, ModelSpec] = {}

#: Upper bounds of a model's shape arguments, checked before anything is built: a checkpoint or spec that
#: names ``num_classes: 10**9`` must not make the loader allocate gigabytes first.
SHAPE_LIMITS: dict[str, int] = {"num_classes": 100_000, "in_channels": 64, "image_size": 1024}
_DEFAULTS: dict[str, Any] = {"num_classes": 10, "in_channels": 1, "image_size": 28, "logit_scale": 1.0}
#: Structure keys (core.protocol's model switches) a model config may carry, with their defaults.
_STRUCTURE: dict[str, Any] = {
    "conv_bias": "absent",
    "linear_bias": "absent",
    "output_bias": "float",
    "arithmetic": "affine",
    "output_scale": "constant",
    "output_scale_init": None,
}


def register_model(
    name: str, *, bits: Iterable[int] = QNN_BITS, paper_dataset: str | None = None
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering ``fn(*, bits, num_classes, in_channels, image_size, logit_scale)`` as ``name``.

    ``bits`` lists the supported bit widths; a second registration of the same ``name`` raises ValueError.
    """
    bits = tuple(sorted(set(bits)))

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(
                f"model {name!r} is already registered (by {_MODELS[name].builder.__qualname__})"
            )
        doc = (fn.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelSpec(name, fn, bits, paper_dataset, doc[0] if doc else "")
        return fn

    return decorator


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_MODELS)


def get_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; an unknown name raises ValueError listing the known ones."""
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        raise BadInputError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def supported_bits(name: str) -> tuple[int, ...]:
    """Bit widths architecture ``name`` can be built with (1 = binary BNN, 32 = float), ascending."""
    return get_model_spec(name).bits


def check_model_bits(name: str, bits: int) -> None:
    """Raise ValueError, naming the architecture and what it supports, unless ``name`` takes ``bits``."""
    spec = get_model_spec(name)
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in spec.bits:
        hint = ""
        if bits == 1:
            binary = [n for n in list_models() if 1 in _MODELS[n].bits]
            hint = f"; binary (bits=1) networks exist only for {', '.join(binary)}"
        raise BadInputError(
            f"model {name!r} does not support bits={bits!r}: it supports bits in "
            f"{{{', '.join(map(str, spec.bits))}}}{hint}"
        )


def create_model(
    name: str,
    *,
    bits: int,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: int | None = None,
    logit_scale: float | None = None,
    **structure: Any,
) -> nn.Module:
    """Build architecture ``name`` with every conv/linear weight quantized to ``bits`` bits.

    Args:
        name: a name from :func:`list_models`.
        bits: one of :func:`supported_bits` ``(name)``; 32 builds a float model, 1 a binary BNN.
        num_classes: number of output logits (default 10).
        in_channels: channels of the input images (default 1).
        image_size: height = width of the input images (default 28).
        logit_scale: constant the raw logits are multiplied by (default 1.0; paper Sec. VIII-A).
        **structure: the protocol's model switches (:data:`core.protocol.MODEL_SWITCHES`: biases per layer
            kind, arithmetic, output scale and its init; :func:`core.models.base.apply_structure`); absent
            or None keys take our default protocol's values, which build exactly the plain model.

    ``None`` arguments take the defaults. The model carries ``model.mcel_config``, a plain dict of the
    resolved arguments (``name`` included) that :func:`create_model_from_config` rebuilds it from.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones), unsupported ``bits`` (the message
            names the architecture and its bit widths), or shapes the architecture cannot take.
    """
    spec = get_model_spec(name)
    if bits is None:
        raise BadInputError(f"create_model({name!r}) needs bits, one of {spec.bits}")
    check_model_bits(name, bits)
    given = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    given["logit_scale"] = logit_scale
    kwargs = {**_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    for key, high in SHAPE_LIMITS.items():
        value = kwargs[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise BadInputError(
                f"{key}={value!r} is not allowed for model {name!r}: it must be an integer >= 1 and <= {high:_}"
            )
    if kwargs["num_classes"] < 2:
        raise BadInputError(
            f"num_classes={kwargs['num_classes']} is not allowed: a classifier needs >= 2 classes"
        )
    from ..protocol import protocol_problems
    from .base import apply_structure

    unknown = sorted(set(structure) - set(_STRUCTURE))
    if unknown:
        raise BadInputError(f"create_model({name!r}) got unknown keywords {unknown}")
    struct = {**_STRUCTURE, **{k: v for k, v in structure.items() if v is not None}}
    problems = protocol_problems(struct)
    if problems:
        raise BadInputError(
            "; ".join(f"protocol.{k}={v!r} is not allowed: it must be {a}" for k, v, a in problems)
        )
    model = spec.builder(bits=bits, **kwargs)
    switches = {k: v for k, v in struct.items() if k != "output_scale_init"}
    apply_structure(
        model, logit_scale=kwargs["logit_scale"], scale_init=struct["output_scale_init"], **switches
    )
    config = {"name": name, "bits": bits, **kwargs}
    # structure keys only where they differ from the default: a default model's config is what it was
    config.update({k: v for k, v in struct.items() if v != _STRUCTURE[k]})
    model.mcel_config = config
    return model


def create_model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model from a ``model.mcel_config`` dict (e.g. stored in a checkpoint)."""
    config = dict(config)
    try:
        name = config.pop("name")
    except KeyError:
        raise BadInputError(f"model config {config!r} has no 'name'") from None
    unknown = set(config) - {"bits", *_DEFAULTS, *_STRUCTURE}
    if unknown:
        raise BadInputError(f"model config has unknown keys {sorted(unknown)}")
    return create_model(name, **config)
