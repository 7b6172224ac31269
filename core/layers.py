"""Quantization-aware layers, binary activations and the logit scale.

``QuantConv2d`` and ``QuantLinear`` take the arguments of ``nn.Conv2d`` / ``nn.Linear`` plus a keyword
``bits``. ``bits`` in 1..8 stores the weight as ``bits``-bit codes (:mod:`core.quantization`): the weight used
in every forward pass, in training and in evaluation, is ``fake_quantize(weight, bits)``. ``bits=32`` means
a float layer (no quantization; such a layer holds no codes and is not touched by bit-error injection).
A bias is stored as the protocol says (:mod:`core.protocol`): ``bias_storage = "float"`` (default: a
float bias in protected memory, never flipped) or ``"faulty"`` (quantized per tensor at the layer's bits
exactly like the weight, stored in the same faulty memory: :meth:`QuantizedLayerMixin.quantized_bias`,
:meth:`QuantizedLayerMixin.substitute_bias_codes`). ``integer=True`` makes the layer compute with the signed
integer codes ``q - 2**(bits-1)`` of its weight (and faulty bias) instead of ``q * step + min``.

Bit-error hook: :meth:`QuantizedLayerMixin.quantized_weight` hands out the clean :class:`QuantizedTensor`;
:meth:`QuantizedLayerMixin.substitute_codes` makes the layer run with other codes (e.g. flipped ones),
decoded with the clean weight's scale and offset; :meth:`QuantizedLayerMixin.clear_substitute` goes back.
The float parameter itself is never modified, so restoring is exact by construction.

Fast paths (equivalence tests in ``tests/core/test_fast_paths.py``):

* A substituted weight is decoded once, at its first use, not in every forward pass (it is a constant).
* Inside :func:`cached_quantization` (used by :mod:`core.evaluation`) a layer computes its clean codes and
  fake-quantized weight once and reuses them while its weight is unchanged. The cache is keyed on the
  weight's version counter (bumped by every in-place update: optimizer steps, ``copy_``,
  ``load_state_dict``) and storage, and used only where autograd does not record (``torch.no_grad`` or a
  weight without ``requires_grad``), so it can never cut a gradient. Writes through ``weight.data`` do not
  bump the version counter: do not make them inside the ``with`` block.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import BadInputError
from .params import Param
from .quantization import QuantizedTensor, check_bits, dequantize, fake_quantize, quantize

FLOAT_BITS = 32
#: Where a layer's bias lives: protected float memory or the faulty memory of its weight.
BIAS_STORAGES: tuple[str, ...] = ("float", "faulty")


def check_layer_bits(bits: int) -> int:
    """``bits`` must be 1..8 (quantized) or 32 (float); anything else raises ValueError."""
    if bits == FLOAT_BITS and not isinstance(bits, bool):
        return bits
    try:
        return check_bits(bits)
    except ValueError:
        raise BadInputError(
            f"bits={bits!r} is not supported: allowed are 1..8 (quantized) or 32 (float)"
        ) from None


class QuantizedLayerMixin:
    """Shared logic of the quantized layers: which weight the forward pass uses."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    bits: int
    integer: bool  # compute with signed integer codes (the reference's arithmetic)
    bias_storage: str  # "float" or "faulty" (meaningless without a bias)
    _bias_substitute: QuantizedTensor | None
    _substitute: QuantizedTensor | None
    _straight_through: bool
    _substitute_value: Tensor | None  # the decoded substitute, computed at its first use
    _cache_enabled: bool  # inside cached_quantization
    _cache: list | None  # [key, weight view, clean codes, fake-quantized weight or None until first asked]

    def _init_quant(self, bits: int, integer: bool = False, bias_storage: str = "float") -> None:
        self.bits = check_layer_bits(bits)
        self.integer = bool(integer)
        if bias_storage not in BIAS_STORAGES:
            raise BadInputError(
                f"bias_storage={bias_storage!r} is not allowed: one of {', '.join(BIAS_STORAGES)}"
            )
        if (integer or bias_storage == "faulty") and self.bits == FLOAT_BITS:
            raise BadInputError(
                "a 32-bit (float) layer holds no codes: integer arithmetic and faulty biases need bits 1..8"
            )
        self.bias_storage = bias_storage
        self._bias_substitute = None
        self._bias_straight_through = False
        self._substitute = None
        self._straight_through = False
        self._substitute_value = None
        self._cache_enabled = False
        self._cache = None

    @property
    def is_quantized(self) -> bool:
        """True when the weight is stored as codes (bits 1..8)."""
        return self.bits != FLOAT_BITS

    def quantized_weight(self) -> QuantizedTensor:
        """The clean weight's codes, scale and offset (no gradient)."""
        if not self.is_quantized:
            raise RuntimeError("a 32-bit (float) layer holds no quantized codes")
        if self._cache_enabled:
            return self._cached(value=False)[0]
        return quantize(self.weight.detach(), self.bits, self.integer)

    @property
    def has_faulty_bias(self) -> bool:
        """True when the layer has a bias stored (quantized) in the faulty memory."""
        return self.bias is not None and self.bias_storage == "faulty"

    def quantized_bias(self) -> QuantizedTensor:
        """The clean faulty bias's codes, scale and offset (per tensor, at the weight's bits; no gradient)."""
        if not self.has_faulty_bias:
            raise RuntimeError("this layer has no bias in the faulty memory")
        return quantize(self.bias.detach(), self.bits, self.integer)

    def substitute_bias_codes(self, qt: QuantizedTensor, straight_through: bool = False) -> None:
        """Run with ``qt`` as the bias's codes (e.g. flipped ones) until :meth:`clear_substitute`; like
        :meth:`substitute_codes` for the weight (``straight_through`` alike)."""
        if not self.has_faulty_bias:
            raise RuntimeError("this layer has no bias in the faulty memory")
        if qt.shape != self.bias.shape or qt.bits != self.bits:
            raise BadInputError(
                f"substitute bias codes of shape {tuple(qt.shape)} at {qt.bits} bits do not fit a bias of "
                f"shape {tuple(self.bias.shape)} at {self.bits} bits"
            )
        self._bias_substitute = qt
        self._bias_straight_through = bool(straight_through)

    def effective_bias(self) -> Tensor | None:
        """The bias the forward pass uses: None, the float bias, its fake-quantized value (faulty storage),
        or the substituted (corrupted) codes decoded."""
        if self.bias is None or self.bias_storage == "float":
            return self.bias
        if self._bias_substitute is not None:
            corrupted = dequantize(self._bias_substitute, dtype=self.bias.dtype)
            if self._bias_straight_through:
                clean = fake_quantize(self.bias, self.bits, self.integer)
                return clean + (corrupted - clean).detach()
            return corrupted
        return fake_quantize(self.bias, self.bits, self.integer)

    def _cached(self, value: bool) -> tuple[QuantizedTensor, Tensor | None]:
        """The clean codes and (if ``value``) the fake-quantized weight, recomputed when the weight's
        version or storage changed since the last call; the weight is decoded only when first asked for
        (a BER sweep needs only the codes). The cache holds a view of the weight, so that a replaced
        weight's storage cannot be freed and reused at the same address while its entry exists."""
        w = self.weight
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        if self._cache is None or self._cache[0] != key:
            self._cache = [key, w.detach(), quantize(w.detach(), self.bits, self.integer), None]
        if value and self._cache[3] is None:
            self._cache[3] = dequantize(self._cache[2], dtype=w.dtype)
        return self._cache[2], self._cache[3]

    def substitute_codes(self, qt: QuantizedTensor, straight_through: bool = False) -> None:
        """Run with ``qt``'s codes from now on, until :meth:`clear_substitute`.

        ``qt`` must come from :meth:`quantized_weight` (possibly via ``with_codes``) so that corrupted codes are
        decoded with the clean weight's scale and offset, never re-estimated.

        ``straight_through=False`` (evaluation): the substituted weight is a constant, no gradient reaches
        the float weight. ``straight_through=True`` (bit-error training): the forward value is the
        substituted weight ``w_e`` but the gradient flows to the float weight as if the clean fake-quantized
        weight ``w_q`` had been used: ``w_q + (w_e - w_q).detach()`` (the error is treated as additive noise).
        """
        if not self.is_quantized:
            raise RuntimeError("a 32-bit (float) layer cannot run with substituted codes")
        if qt.shape != self.weight.shape or qt.bits != self.bits:
            raise BadInputError(
                f"substitute codes of shape {tuple(qt.shape)} at {qt.bits} bits do not fit a weight of shape "
                f"{tuple(self.weight.shape)} at {self.bits} bits"
            )
        self._substitute = qt
        self._substitute_value = None
        self._straight_through = bool(straight_through)

    def clear_substitute(self) -> None:
        """Go back to the layer's own (clean) weight and bias."""
        self._bias_substitute = None
        self._bias_straight_through = False
        self._substitute = None
        self._substitute_value = None
        self._straight_through = False

    def effective_weight(self) -> Tensor:
        """The weight the forward pass uses: substituted codes, fake-quantized weight, or the float weight."""
        if self._substitute is not None:
            corrupted = self._substitute_value
            if corrupted is None or corrupted.dtype != self.weight.dtype:
                corrupted = self._substitute_value = dequantize(self._substitute, dtype=self.weight.dtype)
            if self._straight_through:
                clean = fake_quantize(self.weight, self.bits, self.integer)
                return clean + (corrupted - clean).detach()
            return corrupted
        if not self.is_quantized:
            return self.weight
        if self._cache_enabled and not (torch.is_grad_enabled() and self.weight.requires_grad):
            return self._cached(value=True)[1]
        return fake_quantize(self.weight, self.bits, self.integer)


class QuantConv2d(QuantizedLayerMixin, nn.Conv2d):
    """``nn.Conv2d`` whose weight is quantized to ``bits`` bits in every forward pass.

    Example: ``QuantConv2d(1, 8, 3, bits=4)``.
    """

    def __init__(
        self, *args, bits: int = 8, integer: bool = False, bias_storage: str = "float", **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self._init_quant(bits, integer, bias_storage)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.effective_weight(), self.effective_bias())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {_quant_repr(self)}"


class QuantLinear(QuantizedLayerMixin, nn.Linear):
    """``nn.Linear`` whose weight is quantized to ``bits`` bits in every forward pass.

    Example: ``QuantLinear(2048, 10, bits=4)``.
    """

    def __init__(
        self, *args, bits: int = 8, integer: bool = False, bias_storage: str = "float", **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self._init_quant(bits, integer, bias_storage)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.effective_bias())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {_quant_repr(self)}"


def _quant_repr(layer: QuantizedLayerMixin) -> str:
    extra = ", integer=True" if layer.integer else ""
    if layer.bias is not None and layer.bias_storage == "faulty":
        extra += ", bias_storage='faulty'"
    return f"bits={layer.bits}{extra}"


class _SignSTE(torch.autograd.Function):
    """``sign`` with ``sign(0) = +1`` forward; hardtanh gradient (``1`` where ``|x| <= 1``) backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_ste(x: Tensor) -> Tensor:
    """Binary activation: ``+1`` where ``x >= 0``, else ``-1``; straight-through hardtanh gradient."""
    return _SignSTE.apply(x)


class SignActivation(nn.Module):
    """Binary activation of BNNs (module form of :func:`sign_ste`)."""

    def forward(self, x: Tensor) -> Tensor:
        return sign_ste(x)


#: The constant factor on a network's raw logits (searched as ``logit_scale``): finite and > 0.
LOGIT_SCALE = Param("logit_scale", 0.0, False, "constant factor on the network's raw logits")


class LogitScale(nn.Module):
    """Multiply the network's raw logits by ``scale`` (paper Sec. VIII-A).

    Keeps the logits in the near-linear range of ``b * tanh(z / b)`` so that margins keep their meaning.
    Constant (default): ``scale`` must be finite and > 0, stored as a buffer so it travels with the state
    dict. ``learnable=True`` (the reference framework's ``Scale``): an ``nn.Parameter`` initialised to
    ``scale`` (finite, != 0) and trained with the weights; the state dict key is ``scale`` either way.
    """

    def __init__(self, scale: float = 1.0, learnable: bool = False) -> None:
        super().__init__()
        self.learnable = bool(learnable)
        if learnable:
            if (
                isinstance(scale, bool)
                or not isinstance(scale, int | float)
                or not math.isfinite(scale)
                or scale == 0
            ):
                raise BadInputError(
                    f"learnable output scale init {scale!r} is not allowed: a finite number != 0"
                )
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(LOGIT_SCALE.check(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={float(self.scale.detach()):g}" + (", learnable" if self.learnable else "")


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, QuantizedLayerMixin]]:
    """``(name, layer)`` for every layer of ``model`` that stores quantized codes, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLayerMixin) and module.is_quantized:
            yield name, module


@contextmanager
def cached_quantization(model: nn.Module) -> Iterator[None]:
    """Inside the block every quantized layer of ``model`` quantizes its clean weight once and reuses the
    codes (:meth:`QuantizedLayerMixin.quantized_weight`, hence every bit-error realization) and the
    fake-quantized weight (forward passes without autograd) until the weight changes (module docstring).

    Results are bit for bit those without the block. On exit the layers' previous setting is restored and
    caches of layers that were not caching before are dropped (nesting is allowed).
    """
    layers = [layer for _, layer in quantized_layers(model)]
    previous = [layer._cache_enabled for layer in layers]
    for layer in layers:
        layer._cache_enabled = True
    try:
        yield
    finally:
        for layer, prev in zip(layers, previous, strict=True):
            layer._cache_enabled = prev
            if not prev:
                layer._cache = None
