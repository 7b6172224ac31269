"""Uniform per-tensor weight quantization (paper eq. 11) and its straight-through training form.

n-bit (``2 <= bits <= 8``), per tensor::

    scale  = (max(w) - min(w)) / (2**bits - 1)
    code   = round((w - min(w)) / scale)        in [0, 2**bits - 1]
    value  = code * scale + min(w)

Binary (``bits == 1``): ``code = 1`` where ``w >= 0`` and ``0`` elsewhere, decoded as ``2 * code - 1``, i.e.
``sign(w)`` with ``sign(0) = +1``. Binary therefore fits the same decode rule with ``scale = 2`` and
``offset = -1``, so every consumer of a :class:`QuantizedTensor` (the bit-error engine above all) treats
1..8 bits alike.

Edge cases:

* A constant tensor (``max == min``) has ``scale = 0``; we then use ``scale = 1`` so that every code is 0
  and decodes exactly to the constant, with no NaN and no host synchronisation.
* ``bits`` outside 1..8 raises :class:`ValueError`; 32-bit "float" models simply do not quantize and are
  handled by the layers, not here.
* NaN or infinite weights propagate (they are a training failure the caller must see), they are not hidden.

Integer arithmetic (``integer=True``, the paper's reference framework): the same codes, decoded as the
signed integer ``code - 2**(bits-1)`` (``scale = 1``, ``offset = -2**(bits-1)``); a layer then computes with
integer-valued weights. Binary codes decode as ``+-1`` either way.

The decode of corrupted codes must use the scale and offset of the *clean* weights (the hardware stores
them outside the error-prone memory); :func:`dequantize` does exactly that with whatever codes it is handed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import BadInputError

MIN_BITS = 1
MAX_BITS = 8


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is an int in 1..8, else raise ValueError naming the value and what is allowed."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise BadInputError(f"bits={bits!r} is not supported: allowed are integers {MIN_BITS}..{MAX_BITS}")
    return bits


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes plus the affine decode ``value = codes * scale + offset``.

    Attributes:
        codes: ``torch.uint8`` tensor with the weight's shape, every entry in ``[0, 2**bits - 1]``.
        scale: 0-d float tensor, the quantization step (``2`` for binary).
        offset: 0-d float tensor, the value of code 0 (``min(w)``; ``-1`` for binary).
        bits: bits per stored code, 1..8.
    """

    codes: Tensor
    scale: Tensor
    offset: Tensor
    bits: int

    @property
    def levels(self) -> int:
        """Number of representable values, ``2**bits``."""
        return 1 << self.bits

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def with_codes(self, codes: Tensor) -> QuantizedTensor:
        """The same decode (clean scale and offset) applied to other codes, e.g. bit-flipped ones."""
        if codes.shape != self.codes.shape:
            raise BadInputError(f"codes shape {tuple(codes.shape)} differs from {tuple(self.codes.shape)}")
        return QuantizedTensor(codes=codes, scale=self.scale, offset=self.offset, bits=self.bits)


def _integer_params(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """``(1, -2**(bits-1))``: the decode of integer arithmetic (binary: ``(2, -1)``, i.e. ``+-1``)."""
    if bits == 1:
        return w.new_tensor(2.0), w.new_tensor(-1.0)
    return w.new_tensor(1.0), w.new_tensor(-float(1 << (bits - 1)))


def _affine_params(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Per-tensor ``(scale, offset)`` for ``w`` at ``bits``; see the module docstring."""
    if bits == 1:
        return w.new_tensor(2.0), w.new_tensor(-1.0)
    lo, hi = torch.aminmax(w)  # one pass over w (min() then max() would read it twice)
    scale = (hi - lo) / float((1 << bits) - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, lo


def quantize(w: Tensor, bits: int, integer: bool = False) -> QuantizedTensor:
    """Quantize a float tensor to ``bits``-bit codes with per-tensor min/max (eq. 11).

    Round-half-to-even (``torch.round``) is used; the round-trip error of every element is at most
    ``scale / 2``. The input is not modified and no gradient flows through the codes. ``integer=True``:
    the same codes, decoded as ``code - 2**(bits-1)`` (module docstring).
    """
    check_bits(bits)
    if not w.is_floating_point():
        raise TypeError(f"quantize expects a floating point tensor, got dtype {w.dtype}")
    if w.numel() == 0:
        raise BadInputError("quantize got an empty tensor")
    with torch.no_grad():
        w = w.detach()
        scale, offset = _affine_params(w, bits)
        if bits == 1:
            codes = (w >= 0).to(torch.uint8)
        else:
            q = (w - offset).div_(scale).round_()  # = torch.round((w - offset) / scale), one buffer
            codes = q.clamp_(0, (1 << bits) - 1).to(torch.uint8)
        if integer:
            scale, offset = _integer_params(w, bits)
    return QuantizedTensor(codes=codes, scale=scale, offset=offset, bits=bits)


def reestimate(clean: QuantizedTensor, codes: Tensor) -> QuantizedTensor:
    """Decode ``codes`` (corrupted codes of ``clean``) with a range re-estimated from ``codes`` themselves.

    The corrupted codes' range ``[lo, hi] = [min(codes), max(codes)]`` is mapped onto the clean value range
    ``[offset, offset + scale * (2**bits - 1)]``: ``scale' = scale * (2**bits - 1) / (hi - lo)`` and
    ``offset' = offset - lo * scale'``, so ``value = offset + (code - lo) * scale'``. When the flips left the
    range ``[0, 2**bits - 1]`` as it was (the usual case for a large tensor), this is the clean decode
    exactly. A constant corrupted tensor (``hi == lo``) keeps the clean step: ``value = offset + (code - lo)
    * scale``. Binary codes always decode as ``+-1`` (there is no range to re-estimate).
    """
    if clean.bits == 1:
        return clean.with_codes(codes)
    lo, hi = torch.aminmax(codes)
    span = (hi - lo).to(clean.scale.dtype)
    levels = float((1 << clean.bits) - 1)
    scale = torch.where(span > 0, clean.scale * levels / span.clamp(min=1), clean.scale)
    offset = clean.offset - lo.to(clean.scale.dtype) * scale
    return QuantizedTensor(codes=codes, scale=scale, offset=offset, bits=clean.bits)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype | None = None) -> Tensor:
    """Decode ``qt.codes * qt.scale + qt.offset`` (binary: ``2 * code - 1``) in ``dtype`` (default: scale's)."""
    dtype = dtype or qt.scale.dtype
    # in place on the converted codes: the values of `codes * scale + offset`, one buffer instead of three
    return qt.codes.to(dtype, copy=True).mul_(qt.scale.to(dtype)).add_(qt.offset.to(dtype))


def quantize_dequantize(w: Tensor, bits: int, integer: bool = False) -> Tensor:
    """The value each element of ``w`` is stored as (no gradient), in ``w``'s dtype."""
    return dequantize(quantize(w, bits, integer), dtype=w.dtype)


def _fake_quantize_value(w: Tensor, bits: int, integer: bool = False) -> Tensor:
    """The forward value of :func:`fake_quantize`, ``dequantize(quantize(w, bits))``, in fewer passes.

    Fast path (n-bit): ``((w - lo) / scale).round().clamp(0, 2**bits - 1) * scale + lo`` evaluated in place
    in ``w``'s dtype: the same operations in the same order and dtype as :func:`quantize` followed by
    :func:`dequantize`, so the result is equal bit for bit (tested in ``tests/core/test_fast_paths.py``),
    without the round trip through ``uint8`` codes (two conversions) and with one ``aminmax`` pass
    instead of ``min`` and ``max``: 6 passes over the weight instead of 10, no host synchronisation. One
    difference: a NaN weight stays NaN here (as the module docstring promises), whereas the ``uint8``
    conversion of the straight path turns it into an arbitrary code. Binary weights take the straight path.
    """
    if bits == 1:
        return quantize_dequantize(w, bits)
    with torch.no_grad():
        scale, lo = _affine_params(w, bits)
        q = (w - lo).div_(scale).round_().clamp_(0, (1 << bits) - 1)
        if integer:  # signed integer code: q - 2**(bits-1), exact in float
            return q.sub_(float(1 << (bits - 1)))
        return q.mul_(scale).add_(lo)


class _FakeQuantSTE(torch.autograd.Function):
    """Forward: quantize-dequantize. Backward: identity (n-bit) or hardtanh gradient (binary)."""

    @staticmethod
    def forward(ctx, w: Tensor, bits: int, integer: bool) -> Tensor:  # type: ignore[override]
        ctx.bits = bits
        if bits == 1:
            ctx.save_for_backward(w)
        return _fake_quantize_value(w, bits, integer)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        if ctx.bits == 1:
            (w,) = ctx.saved_tensors
            return grad * (w.abs() <= 1).to(grad.dtype), None, None
        return grad, None, None


def fake_quantize(w: Tensor, bits: int, integer: bool = False) -> Tensor:
    """Straight-through quantization for quantization-aware training.

    The forward value equals ``dequantize(quantize(w, bits))``; the gradient is passed through unchanged
    for n-bit weights (the straight-through estimator), and through ``hardtanh`` for binary weights
    (``d/dw = 1`` where ``|w| <= 1``, else ``0``; Courbariaux et al.). Runs without host synchronisation.
    ``integer=True``: the forward value is the signed code ``q - 2**(bits-1)`` (the reference framework's
    integer arithmetic), the gradient the same identity.
    """
    check_bits(bits)
    return _FakeQuantSTE.apply(w, bits, bool(integer))
