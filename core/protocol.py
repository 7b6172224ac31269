"""The experimental protocol: how inputs, biases, arithmetic, output scale and decoding are done.

Two deployments differ in what a bit error can hit, and the paper's reference framework
(github.com/myay/BNN-QNN-ErrorEvaluation, ``../shared/REFERENCE-PROTOCOL.md``) differs from our default in
several conventions. Each convention is one named switch of :class:`Protocol`; two presets name the
common combinations:

========================  ==========================  ===============================================
switch                    ``default`` (ours)          ``paper`` (the reference framework)
========================  ==========================  ===============================================
``inputs``                ``standardized``            ``raw``: pixels in [0, 1] (``ToTensor()`` only)
``conv_bias``             ``absent``                  ``faulty``
``linear_bias`` (hidden)  ``absent``                  ``faulty``
``output_bias``           ``float``                   ``faulty``
``arithmetic``            ``affine``                  ``integer``
``output_scale``          ``constant``                ``learnable``, initialised to 1e-5
``decode``                ``clean``                   ``reestimated``
train (preset defaults)   TrainConfig's (lr 1e-3)     lr 1e-4, batch 256, StepLR 5 / 0.5, 10 epochs
========================  ==========================  ===============================================

Meaning of each switch (the formulas the layers and the error engine implement):

* ``inputs``: ``standardized`` subtracts the full training split's per-channel mean and divides by its
  std; ``raw`` feeds ``pixel / max_pixel`` in [0, 1].
* ``<kind>_bias`` for conv layers, hidden fully connected layers and the output layer: ``absent`` (no
  bias), ``float`` (a float bias kept in protected memory, never flipped) or ``faulty`` (the bias is
  quantized per tensor at the layer's bits, exactly like the weight, stored in the same faulty memory and
  flipped at the same BER; its realization is seeded ``derive_seed(seed, k, BIAS_SEED_KEY)`` for layer
  ``k``, so adding biases does not change the weights' flips).
* ``arithmetic``: ``affine`` computes with ``q * step + min`` (eq. 11); ``integer`` computes with the signed
  integer code ``q - 2**(n-1)`` of each weight (and faulty bias) directly, as the reference does (its
  rescale lines are commented out); binary weights are ``+-1`` either way. Straight-through (identity)
  gradient in both.
* ``output_scale``: ``constant`` multiplies the logits by the trial's ``logit_scale``; ``learnable`` makes
  that factor an ``nn.Parameter`` trained with the weights (the reference's ``Scale`` module), initialised
  to ``output_scale_init`` (None: the trial's ``logit_scale``). Its sign ends wherever Adam takes it.
* ``decode``: how corrupted codes become values. ``clean`` uses the clean tensor's step and offset.
  ``reestimated`` is our reading of the reference's decoder, which recomputes min/max from the corrupted
  codes: the corrupted codes' range ``[min u', max u']`` is mapped onto the clean value range,
  ``value = offset + (u' - min u') * step * (2**n - 1) / (max u' - min u')`` (clean decode when the range
  is unchanged, the usual case; a constant corrupted tensor decodes with the clean step). Binary codes
  always decode as ``+-1``.

Everything stays exact and seeded: the switches change what is computed, never the random streams.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import BadInputError

#: Allowed values of every string switch (the first is our default).
CHOICES: dict[str, tuple[str, ...]] = {
    "inputs": ("standardized", "raw"),
    "conv_bias": ("absent", "float", "faulty"),
    "linear_bias": ("absent", "float", "faulty"),
    "output_bias": ("float", "absent", "faulty"),
    "arithmetic": ("affine", "integer"),
    "output_scale": ("constant", "learnable"),
    "decode": ("clean", "reestimated"),
}
#: The switches that decide a model's structure (a checkpoint cannot be evaluated under other values).
MODEL_SWITCHES: tuple[str, ...] = (
    "conv_bias",
    "linear_bias",
    "output_bias",
    "arithmetic",
    "output_scale",
    "output_scale_init",
)
#: Seed-derivation key of a faulty bias's realization (``derive_seed(seed, layer index, BIAS_SEED_KEY)``).
BIAS_SEED_KEY = 0xB1A5
#: Training settings of the reference's 4-bit FashionMNIST command, applied by the ``paper`` preset to every
#: training field a spec or command line does not set itself.
PAPER_TRAIN: dict[str, Any] = {"lr": 1e-4, "batch_size": 256, "step_size": 5, "gamma": 0.5, "epochs": 10}
#: Init of the reference's learnable ``Scale``.
PAPER_SCALE_INIT = 1e-5


@dataclass(frozen=True)
class Protocol:
    """One experimental protocol (module docstring); frozen and validated: a bad switch raises
    :class:`BadInputError` naming every bad field."""

    preset: str = "default"  # the preset the switches started from: default or paper
    inputs: str = "standardized"
    conv_bias: str = "absent"
    linear_bias: str = "absent"
    output_bias: str = "float"
    arithmetic: str = "affine"
    output_scale: str = "constant"
    output_scale_init: float | None = None  # learnable scale's init (None: the trial's logit_scale)
    decode: str = "clean"

    def __post_init__(self) -> None:
        problems = protocol_problems(asdict(self))
        if problems:
            raise BadInputError(
                "; ".join(f"protocol.{k}={v!r} is not allowed: it must be {a}" for k, v, a in problems)
            )

    @property
    def label(self) -> str:
        """The preset's name when every switch is the preset's, else ``preset+switch=value,...``."""
        base = PRESETS[self.preset]
        changed = [
            f"{f.name}={getattr(self, f.name)}"
            for f in fields(self)
            if f.name != "preset" and getattr(self, f.name) != getattr(base, f.name)
        ]
        return self.preset if not changed else f"{self.preset}+{','.join(changed)}"

    @property
    def faulty_biases(self) -> bool:
        """Whether any bias is stored in the faulty memory."""
        return "faulty" in (self.conv_bias, self.linear_bias, self.output_bias)

    def model_kwargs(self) -> dict[str, Any]:
        """The :func:`core.models.create_model` keywords of this protocol's structure switches."""
        return {
            "conv_bias": self.conv_bias,
            "linear_bias": self.linear_bias,
            "output_bias": self.output_bias,
            "arithmetic": self.arithmetic,
            "output_scale": self.output_scale,
        }

    def scale_init(self, logit_scale: float) -> float:
        """The output scale's (initial) value: ``output_scale_init`` if set, else ``logit_scale``."""
        return logit_scale if self.output_scale_init is None else self.output_scale_init

    def train_defaults(self) -> dict[str, Any]:
        """Training settings this protocol's preset applies where nothing else sets them."""
        return dict(PAPER_TRAIN) if self.preset == "paper" else {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_switches(self, **switches: Any) -> Protocol:
        return replace(self, **switches)


def protocol_problems(values: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """``[(field, value, what is allowed)]`` for every bad switch of ``values`` (unknown keys ignored:
    the caller reports those), including combinations that make no sense (both fields named)."""
    out: list[tuple[str, Any, str]] = []
    preset = values.get("preset", "default")
    if not isinstance(preset, str) or preset not in PRESET_NAMES:
        out.append(("preset", preset, f"one of {', '.join(PRESET_NAMES)}"))
    for key, options in CHOICES.items():
        if key in values and values[key] not in options:
            out.append((key, values[key], f"one of {', '.join(options)}"))
    init = values.get("output_scale_init")
    if init is not None:
        if (
            isinstance(init, bool)
            or not isinstance(init, int | float)
            or not math.isfinite(init)
            or init == 0
        ):
            out.append(("output_scale_init", init, "null (the trial's logit_scale) or a finite number != 0"))
        elif values.get("output_scale", "constant") == "constant":
            out.append(
                (
                    "output_scale_init",
                    init,
                    "null with output_scale: constant (an init is only for output_scale: learnable; "
                    "a constant scale is the trial's logit_scale)",
                )
            )
    return out


PRESET_NAMES: tuple[str, ...] = ("default", "paper")
PRESETS: dict[str, Protocol] = {"default": Protocol()}
PRESETS["paper"] = Protocol(
    preset="paper",
    inputs="raw",
    conv_bias="faulty",
    linear_bias="faulty",
    output_bias="faulty",
    arithmetic="integer",
    output_scale="learnable",
    output_scale_init=PAPER_SCALE_INIT,
    decode="reestimated",
)
DEFAULT = PRESETS["default"]
PAPER = PRESETS["paper"]


def merge_switches(preset: str, switches: Mapping[str, Any]) -> dict[str, Any]:
    """The preset's switches with ``switches`` changed, as a dict. A preset's ``output_scale_init`` belongs
    to its learnable scale: switching to a constant scale without naming an init drops it."""
    merged = {**PRESETS[preset].to_dict(), **switches}
    if merged["output_scale"] == "constant" and "output_scale_init" not in switches:
        merged["output_scale_init"] = None
    return merged


def make_protocol(preset: str = "default", **switches: Any) -> Protocol:
    """The preset ``preset`` with some switches changed, e.g. ``make_protocol("paper", decode="clean")``."""
    if preset not in PRESETS:
        raise BadInputError(f"protocol preset {preset!r} is not known: one of {', '.join(PRESET_NAMES)}")
    unknown = sorted(set(switches) - {f.name for f in fields(Protocol)} - {"preset"})
    if unknown:
        allowed = ", ".join(f.name for f in fields(Protocol) if f.name != "preset")
        raise BadInputError(f"unknown switch(es) {unknown}: allowed are {allowed}")
    return Protocol(**merge_switches(preset, switches))


def protocol_from_dict(values: Mapping[str, Any] | None) -> Protocol:
    """A :class:`Protocol` from its :meth:`Protocol.to_dict` (a checkpoint's ``protocol`` entry); None
    (a checkpoint written before protocols existed) is the default protocol."""
    if values is None:
        return DEFAULT
    if not isinstance(values, Mapping) or not all(isinstance(k, str) for k in values):
        raise BadInputError(f"protocol {str(values)[:80]!r} is not a mapping of protocol switches")
    values = dict(values)
    preset = values.pop("preset", "default")
    if not isinstance(preset, str):
        raise BadInputError(f"protocol preset {str(preset)[:80]!r} is not one of {', '.join(PRESET_NAMES)}")
    return make_protocol(preset, **values)


def evaluation_protocol(trained: Protocol, requested: Protocol | None, cross: bool) -> Protocol:
    """The protocol to evaluate a checkpoint trained under ``trained`` with.

    ``requested`` None: ``trained``. Another protocol than ``trained`` needs ``cross=True`` (a result under
    another error model than the one a model was trained for must be asked for); even then only the
    evaluation switches (``inputs``, ``decode``) can change: a structure switch (biases, arithmetic, output
    scale) that differs is refused, naming it, because the checkpoint's weights are that structure.
    """
    if requested is None or requested == trained:
        return trained
    if not cross:
        raise BadInputError(
            f"the checkpoint was trained under protocol {trained.label!r}; evaluating it under "
            f"{requested.label!r} needs --cross-protocol (allowed: omit --protocol to use the checkpoint's)"
        )
    fixed = [
        f"{k} ({getattr(trained, k)!r} in the checkpoint, {getattr(requested, k)!r} asked)"
        for k in MODEL_SWITCHES
        if getattr(trained, k) != getattr(requested, k)
    ]
    if fixed:
        raise BadInputError(
            "protocol switches that shape the model cannot change at evaluation: "
            + "; ".join(fixed)
            + "; allowed to change: inputs, decode"
        )
    return requested


def parse_protocol(text: str) -> Protocol:
    """A protocol from its :attr:`Protocol.label` form: a preset name (``paper``) optionally followed by
    ``+switch=value,...`` (``paper+decode=clean``, ``default+inputs=raw,conv_bias=faulty``). ``None`` and
    numbers are read for ``output_scale_init``. Bad text raises :class:`BadInputError` naming every bad part."""
    preset, _, rest = str(text).partition("+")
    switches: dict[str, Any] = {}
    bad: list[str] = []
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            bad.append(f"{part!r} (expected switch=value)")
            continue
        if key == "output_scale_init":
            try:
                switches[key] = None if value in ("None", "null") else float(value)
            except ValueError:
                bad.append(f"output_scale_init={value!r} (a number or None)")
            continue
        switches[key] = value
    if bad:
        raise BadInputError(f"protocol {text!r}: " + "; ".join(bad))
    try:
        return make_protocol(preset, **switches)
    except BadInputError as exc:
        raise BadInputError(f"protocol {text!r}: {exc}") from None
