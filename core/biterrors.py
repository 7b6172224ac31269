"""Random bit errors in stored quantized weights (the bit-error model of the paper, Sec. III).

Error model: every one of the ``bits`` low bits of every stored code flips independently of all others; a
bit that holds 0 flips (``0 -> 1``) with probability ``p01``, a bit that holds 1 flips (``1 -> 0``) with
probability ``p10``. Symmetric errors (the usual "bit error rate", BER) have ``p01 == p10``. Flipped codes
are decoded with the scale and offset of the *clean* weights (:meth:`QuantizedTensor.with_codes`).

:func:`flip_bits` samples this distribution exactly (up to the 2**-53 resolution of float64 uniforms) at
every ``p`` in [0, 1], by one of two algorithms chosen by ``pmax = max(p01, p10)``:

* **sparse** (small ``pmax``): the codes are viewed as ``N = numel * bits`` bit positions
  (``position = code_index * bits + bit``, codes in row-major order). The positions of a
  Bernoulli(``pmax``) process are drawn directly: the steps between successive events,
  ``step = ceil(log(U) / log1p(-pmax))`` with ``U`` uniform in [0, 1), are geometric on {1, 2, ...}
  since ``P(step > k) = P(U < (1 - pmax)**k) = (1 - pmax)**k``, and ``positions = cumsum(steps) - 1``.
  Asymmetric errors thin these candidates: each is kept with probability ``p_v / pmax``, ``p_v`` being
  ``p01`` or ``p10`` for the bit's current value ``v``, so every bit flips with probability
  ``pmax * p_v / pmax = p_v``, independently of all others. A flip of bit ``b`` changes its code ``c`` by
  ``(c ^ 2**b) - c = +-2**b``; the bits flipped in one code are distinct, so adding these deltas (one
  ``scatter_add_``) XORs every code with the mask of all its flips. Work: one copy of the codes plus
  ``O(N * pmax)``, the expected number of candidates.
* **dense** (large ``pmax``): for every bit of every code one uniform integer ``r`` in [0, 2**63) is drawn
  and the bit flips iff ``r < round(p_v * 2**63)`` (the per-bit Bernoulli mask of the reference
  framework, with an integer threshold: exact up to 2**-64). Work: ``O(N)``.

``p = 0`` returns a copy; ``p = 1`` flips every bit (both algorithms handle it exactly).

The random draws never depend on the code values except through the thinning / the per-value threshold:
with symmetric errors the flip *pattern* depends only on the shape, ``bits``, ``p`` and the generator
state, so one realization seed gives the same flips to every model with the same layer shapes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Generator, Tensor, nn

from .errors import BadInputError
from .layers import QuantizedLayerMixin, quantized_layers
from .protocol import BIAS_SEED_KEY
from .quantization import QuantizedTensor, check_bits, reestimate

__all__ = ["SPARSE_MAX_P", "StoredTensor", "derive_seed", "flip_bits", "inject_bit_errors", "stored_tensors"]

SPARSE_MAX_P: dict[str, float] = {"cpu": 0.25, "cuda": 0.01}
"""Crossover per device type: the sparse algorithm is used when ``max(p01, p10) < SPARSE_MAX_P[type]``.

CPU: where ``benchmarks/bench_flips.py --crossover`` measured the two paths to cost the same for 4-bit
codes (``benchmarks/MEASUREMENTS.md``, "flip-engine crossover"). Above the crossover the sparse path also
needs more scratch memory (about 20 bytes per candidate flip, 40 with asymmetric errors, against 10 bytes
per code). CUDA: an estimate: a dense pass is bandwidth-bound and cheap there, while the sparse path pays
some 15 kernel launches and one host synchronisation; measure with ``--device cuda --crossover``. Devices not listed use the ``"cpu"`` value. Both algorithms are exact,
so this affects speed only, and which flips a given generator state maps to (a function of ``p`` and
the device type only).
"""

_SUPPORTED_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_MASK64 = (1 << 64) - 1
_TWO63 = float(1 << 63)
_BATCH_SIGMAS = 6.0  # a batch of geometric steps covers its range unless the count is 6 sigma low
_BATCH_EXTRA = 16
_TWO52 = float(1 << 52)
_TWO52_BITS = 0x433 << 52  # bit pattern of the float64 2**52
_MANTISSA = (1 << 52) - 1  # a float64 x in [2**52, 2**53) has mantissa bits x - 2**52
_BIT_TABLES: dict[tuple[torch.device, torch.dtype], Tensor] = {}  # see _bit_table
_SEED_MULTIPLIER = 0xD1B54A32D192ED03  # odd: h -> h * K is a bijection mod 2**64

Method = Literal["auto", "sparse", "dense"]


def _check_probability(name: str, p: float) -> float:
    """Return ``float(p)`` if it is a finite real number in [0, 1], else raise ValueError."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:  # NaN fails too
        raise BadInputError(f"{name}={p!r} is not allowed: it must be a finite number in [0, 1]")
    return float(p)


def _check_codes(codes: Tensor) -> None:
    if not isinstance(codes, Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype not in _SUPPORTED_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in _SUPPORTED_DTYPES)
        raise TypeError(f"codes must have an integer dtype ({names}), got {codes.dtype}")


def _check_generator(generator: Generator | None, device: torch.device) -> None:
    if generator is not None and generator.device.type != device.type:
        raise BadInputError(
            f"generator is on device {generator.device}, but the codes are on {device}: "
            "the random numbers are drawn on the codes' device"
        )


def flip_bits(
    codes: Tensor,
    bits: int,
    p01: float,
    p10: float | None = None,
    generator: Generator | None = None,
    *,
    method: Method = "auto",
) -> Tensor:
    """Return a copy of ``codes`` in which each of the ``bits`` low bits of every code flips independently.

    A bit holding 0 flips with probability ``p01``, a bit holding 1 with probability ``p10``
    (``p10=None``: symmetric, ``p10 = p01``). Bits above ``bits`` are never touched. The distribution is
    exact at every probability (see the module docstring): ``p = 0`` returns a plain copy, ``p = 1`` flips
    every bit holding the corresponding value.

    Args:
        codes: integer tensor (uint8, int8, int16, int32 or int64) on any device; not modified.
        bits: stored bits per code, 1..8.
        p01: probability that a 0 bit becomes 1, in [0, 1].
        p10: probability that a 1 bit becomes 0, in [0, 1]; ``None`` means ``p01``.
        generator: a ``torch.Generator`` on the codes' device type; ``None`` uses torch's global RNG.
        method: ``"auto"`` (sparse below :data:`SPARSE_MAX_P`, dense otherwise), ``"sparse"`` or
            ``"dense"``. Both are exact; they map a given generator state to different flips.

    Returns:
        A new contiguous tensor with the dtype, shape and device of ``codes``.

    Raises:
        TypeError: ``codes`` is not a tensor of a supported integer dtype.
        ValueError: ``bits`` is not in 1..8, a probability is not a finite number in [0, 1], ``method``
            is unknown, or ``generator`` is on another device type than ``codes``.
    """
    out, _ = _flip_bits_counted(codes, bits, p01, p10, generator, method, count=False)
    return out


def _flip_bits_counted(
    codes: Tensor,
    bits: int,
    p01: float,
    p10: float | None,
    generator: Generator | None,
    method: Method,
    count: bool,
) -> tuple[Tensor, int | Tensor | None]:
    """:func:`flip_bits` plus the number of flipped bits (an int or 0-d tensor; ``None`` unless ``count``)."""
    _check_codes(codes)
    check_bits(bits)
    p01 = _check_probability("p01", p01)
    p10 = p01 if p10 is None else _check_probability("p10", p10)
    if method not in ("auto", "sparse", "dense"):
        raise BadInputError(f"method={method!r} is not allowed: use 'auto', 'sparse' or 'dense'")
    _check_generator(generator, codes.device)
    pmax = max(p01, p10)
    # No torch.no_grad(): integer tensors never require grad, so autograd records nothing here anyway (the
    # context cost 25-35 us per call in a direct A/B on 4M codes at p = 1e-3, 0.95-1.00x in bench_flips).
    if pmax == 0.0 or codes.numel() == 0:
        return codes.clone(memory_format=torch.contiguous_format), 0
    if method == "auto":
        crossover = SPARSE_MAX_P.get(codes.device.type, SPARSE_MAX_P["cpu"])
        method = "sparse" if pmax < crossover else "dense"
    if method == "sparse":
        return _flip_sparse(codes, bits, p01, p10, generator)
    return _flip_dense(codes, bits, p01, p10, generator, count)


def _bernoulli_ends(n: int, p: float, generator: Generator | None, device: torch.device) -> Tensor:
    """Sorted positions in ``[0, n)`` of a Bernoulli(``p``) process (``0 < p < 1``, ``n <= 2**52``), each
    as the int64 bit pattern of the float64 ``2**52 + position``, i.e. ``0x433 << 52 | position``.

    Steps between successive events ``ceil(log(U) / log1p(-p))`` with ``U = rand`` (float64, 53 random
    bits, in [0, 1)) are geometric on {1, 2, ...}: ``P(step > k) = P(U < (1 - p)**k) = (1 - p)**k``
    (computed as ``log(U) * (1 / log1p(-p))``: a few ulp from the quotient, like the logarithm itself).
    ``U = 0`` (probability 2**-53) gives an infinite step, which just ends the range. The float64
    ``cumsum`` of the steps plus ``2**52 - 1`` is ``2**52 + position``, an exact integer below ``2**53``
    whose 52 mantissa bits are the position: the caller reads positions, code indices and bit indices
    from the bit pattern with integer masks and shifts (cheaper than a float-to-integer conversion).
    Sums ``<= 2**52 + n - 1`` are kept. Batches of ``m p + 6 sqrt(m p) + 16`` steps for ``m`` uncovered
    positions are drawn, so a second batch is needed only with probability of order 1e-9.
    """
    scale = 1.0 / math.log1p(-p)  # -inf for p below ~1e-308: every step is infinite (no event)
    last = _TWO52 + (n - 1)  # exact: n <= 2**52
    pieces: list[Tensor] = []
    start = _TWO52 - 1.0  # 2**52 + the last position so far (none yet: -1)
    while True:
        expected = (last - start) * p
        size = max(1, math.ceil(expected + _BATCH_SIGMAS * math.sqrt(expected) + _BATCH_EXTRA))
        steps = torch.rand(size, dtype=torch.float64, device=device, generator=generator)
        ends = torch.cumsum(steps.log_().mul_(scale).ceil_(), 0, out=steps).add_(start)
        inside = int(torch.searchsorted(ends, last, right=True))
        pieces.append(ends.narrow(0, 0, inside))
        if inside < size:
            break
        start = float(ends[-1])
    ends = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    return ends.view(torch.int64)


def _bernoulli_positions(n: int, p: float, generator: Generator | None, device: torch.device) -> Tensor:
    """Sorted positions in ``[0, n)`` of a Bernoulli(``p``) process, as int64 (:func:`_bernoulli_ends`)."""
    return _bernoulli_ends(n, p, generator, device) & _MANTISSA


def _bit_table(device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[1 << j for j in range(8)]`` in ``dtype`` on ``device``, cached (in int8 ``1 << 7`` is -128)."""
    table = _BIT_TABLES.get((device, dtype))
    if table is None:
        table = torch.tensor([1 << j for j in range(8)], dtype=torch.uint8)
        table = (table.view(torch.int8) if dtype == torch.int8 else table.to(dtype)).to(device)
        _BIT_TABLES[device, dtype] = table
    return table


def _split_positions(pos: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """``(pos // bits, pos % bits)`` for non-negative integer ``pos < 2**49``.

    Powers of two use shifts. Otherwise float64 division (int64 division is several times slower):
    ``pos / bits = q + r / bits`` is at least ``1 / bits`` away from ``q + 1`` while the rounding error is
    below ``(q + 1) * 2**-52``, so truncating the rounded quotient gives ``q`` exactly.
    """
    if bits & (bits - 1) == 0:
        shift = bits.bit_length() - 1
        return pos >> shift, pos & (bits - 1)
    idx = (pos.to(torch.float64) / bits).to(torch.int64)
    return idx, pos - idx * bits


def _flip_sparse(
    codes: Tensor, bits: int, p01: float, p10: float, generator: Generator | None
) -> tuple[Tensor, int | Tensor]:
    """Sparse exact sampler: geometric gaps at rate ``pmax``, then thinning (module docstring).

    A flip of bit ``b`` of a code holding ``c`` changes it by ``delta = (c ^ (1 << b)) - c``, that is
    ``+2**b`` or ``-2**b``. The bits flipped in one code are distinct, so the sum of their deltas is
    ``(c ^ mask) - c`` for the XOR ``mask`` of all of them (in the wrap-around arithmetic of the integer
    dtype): one ``scatter_add_`` of the deltas, computed from the clean codes, applies every flip, several
    in one code included, without sorting or deduplicating. A candidate dropped by the thinning adds 0.
    """
    n = codes.numel() * bits
    pmax = max(p01, p10)
    device = codes.device
    out = codes.clone(memory_format=torch.contiguous_format)
    if pmax == 1.0:
        # every position is a candidate; keep the sparse random stream layout (used by tests only)
        ends = torch.arange(n, device=device) | _TWO52_BITS
    else:
        ends = _bernoulli_ends(n, pmax, generator, device)
    count: int | Tensor = ends.numel()
    if count == 0:
        return out, 0
    # code index and bit index of every candidate, read from the bit patterns
    if bits == 1:
        idx, bit = ends & _MANTISSA, None
    elif bits & (bits - 1) == 0:
        shift = bits.bit_length() - 1
        idx, bit = (ends >> shift).bitwise_and_(_MANTISSA >> shift), ends & (bits - 1)
    else:
        idx, bit = _split_positions(ends & _MANTISSA, bits)
    flat = out.view(-1)
    value = flat.gather(0, idx)  # clean codes: nothing is written before the scatter
    mask = 1 if bit is None else _bit_table(device, out.dtype).gather(0, bit)
    delta = (value ^ mask).sub_(value)
    if p01 != p10:
        # one uniform per candidate, whatever the code values: keep with probability p_v / pmax
        u = torch.rand(count, dtype=torch.float64, device=device, generator=generator)
        keep = u < torch.where((value & mask) != 0, p10 / pmax, p01 / pmax)  # pmax / pmax is exactly 1
        delta.mul_(keep)
        count = keep.sum()
    flat.scatter_add_(0, idx, delta)
    return out, count


def _flip_dense(
    codes: Tensor, bits: int, p01: float, p10: float, generator: Generator | None, count: bool
) -> tuple[Tensor, Tensor | None]:
    """Dense exact sampler: per bit ``j`` one uniform integer ``r`` in ``[0, 2**63)`` per code.

    The bit flips iff ``r < t_v`` with ``t_v = round(p_v * 2**63)``, i.e. with probability ``p_v`` up to
    2**-64 (``p = 1``: ``t = 2**63``, always). Compared as ``r <= t_v - 1`` so every threshold fits int64.
    """
    src = codes.contiguous()
    mask = torch.zeros_like(src, memory_format=torch.contiguous_format)
    r = torch.empty(src.shape, dtype=torch.int64, device=src.device)
    total = torch.zeros((), dtype=torch.int64, device=src.device) if count else None
    t01 = round(p01 * _TWO63) - 1
    t10 = round(p10 * _TWO63) - 1
    for j in range(bits):
        r.random_(generator=generator)
        if t01 == t10:
            flip = r <= t01
        else:
            is_one = ((src >> j) & 1).bool()
            flip = r <= torch.where(is_one, t10, t01)
        if total is not None:
            total += flip.sum()
        mask |= flip.to(mask.dtype) << j
    return src ^ mask, total


def derive_seed(seed: int, *keys: int) -> int:
    """Deterministic 63-bit seed from ``seed`` and ``keys`` (e.g. a layer index), by splitmix64 mixing.

    ``h = splitmix64(seed)``; for each key ``h = splitmix64(h * K + key)`` (all mod 2**64, ``K`` an odd
    constant, so that seed and key play different roles); returns ``h >> 1`` (a non-negative int < 2**63,
    valid for ``torch.Generator.manual_seed``). Nearby inputs give unrelated outputs; the order of ``keys``
    matters. Negative ints are taken mod 2**64.
    """
    for name, value in (("seed", seed), *((f"keys[{i}]", k) for i, k in enumerate(keys))):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}={value!r} must be an int")
    h = _splitmix64(seed & _MASK64)
    for key in keys:
        h = _splitmix64((h * _SEED_MULTIPLIER + key) & _MASK64)
    return h >> 1


def _splitmix64(x: int) -> int:
    """One step of Steele, Lea & Flood's SplitMix64 finalizer on a 64-bit unsigned integer."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


@dataclass(frozen=True)
class StoredTensor:
    """One tensor a bit error can hit: a quantized layer's weight, or its bias in the faulty memory.

    ``name`` is the state-dict name (``"head.2.weight"``, ``"head.2.bias"``); ``layer_index`` the layer's
    position in :func:`core.layers.quantized_layers`; its realization seed is ``derive_seed(seed, k)`` for
    a weight and ``derive_seed(seed, k, BIAS_SEED_KEY)`` for a bias, whatever else is exposed."""

    name: str
    layer_name: str
    layer: QuantizedLayerMixin
    kind: str  # "weight" or "bias"
    layer_index: int

    def seed(self, seed: int) -> int:
        """This tensor's realization seed for the realization ``seed``."""
        if self.kind == "weight":
            return derive_seed(seed, self.layer_index)
        return derive_seed(seed, self.layer_index, BIAS_SEED_KEY)

    def clean(self) -> QuantizedTensor:
        return self.layer.quantized_weight() if self.kind == "weight" else self.layer.quantized_bias()

    @property
    def numel(self) -> int:
        return (self.layer.weight if self.kind == "weight" else self.layer.bias).numel()


def stored_tensors(model: nn.Module) -> list[StoredTensor]:
    """Every tensor of ``model`` in the faulty memory, in module order: each quantized layer's weight, then
    its bias if the layer stores it there (``bias_storage == "faulty"``, :mod:`core.protocol`)."""
    out: list[StoredTensor] = []
    for k, (name, layer) in enumerate(quantized_layers(model)):
        out.append(StoredTensor(f"{name}.weight", name, layer, "weight", k))
        if layer.has_faulty_bias:
            out.append(StoredTensor(f"{name}.bias", name, layer, "bias", k))
    return out


#: How corrupted codes are decoded (core.protocol's ``decode`` switch).
DECODES: tuple[str, ...] = ("clean", "reestimated")


@contextmanager
def inject_bit_errors(
    model: nn.Module,
    ber: float,
    seed: int,
    p10: float | None = None,
    *,
    straight_through: bool = False,
    count: bool = True,
    decode: str = "clean",
    only: Collection[str] | None = None,
) -> Iterator[dict[str, int]]:
    """Run ``model`` with bit-flipped codes inside the ``with`` block; restore exactly on exit.

    Every tensor of :func:`stored_tensors` (each quantized layer's weight codes ``qt =
    layer.quantized_weight()``, and its bias codes where the protocol stores the bias in the faulty memory)
    is flipped by :func:`flip_bits` (``p01 = ber``, ``p10``; ``None``: symmetric) with a generator on the
    tensor's device seeded by :meth:`StoredTensor.seed` (``derive_seed(seed, k)`` for the ``k``-th layer's
    weight), and the layer runs with the flipped codes, decoded with the clean scale and offset
    (``decode="clean"``) or with a range re-estimated from the corrupted codes (``"reestimated"``,
    :func:`core.quantization.reestimate`). On exit, also through an exception, every substitute is cleared.
    Float parameters are never written, so the state dict after the block equals the one before bit for bit.

    ``only``: names of the stored tensors to expose (e.g. ``{"features.0.0.weight"}``, for a sensitivity
    map); each gets exactly the flips it gets when everything is exposed. None: all.

    One ``seed`` is one error realization: with symmetric errors the same seed flips the same bits of
    every model whose quantized layers have the same shapes and bits, whatever their weights (paired
    comparisons); with asymmetric errors the flips depend on the weights only through the thinning.

    ``straight_through=True`` is for bit-error *training* (flips at ``p_train`` in every step, the baseline
    the MCEL paper argues against): gradients reach the float weights through the corrupted forward pass
    (:meth:`core.layers.QuantizedLayerMixin.substitute_codes`). ``count=False`` skips counting the flips
    (no host synchronisation; the yielded dict is then empty).

    Yields:
        ``{layer name: flipped weight bits}`` plus ``{layer name + ".bias": flipped bias bits}`` for
        exposed faulty biases (empty when ``count=False``).

    Raises:
        ValueError: ``ber`` or ``p10`` is not a finite number in [0, 1], ``decode`` is unknown, ``only``
            names a tensor the model does not store, or ``model`` has no quantized layer (a float model
            holds no codes to corrupt).
    """
    ber = _check_probability("ber", ber)
    if p10 is not None:
        p10 = _check_probability("p10", p10)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed={seed!r} must be an int")
    if decode not in DECODES:
        raise BadInputError(f"decode={decode!r} is not allowed: one of {', '.join(DECODES)}")
    tensors = stored_tensors(model)
    if not tensors:
        raise BadInputError(
            f"{type(model).__name__} has no quantized layers (bits 1..8): a float model cannot be "
            "evaluated under bit errors by this engine"
        )
    if only is not None:
        names = {t.name for t in tensors}
        unknown = sorted(set(only) - names)
        if unknown:
            raise BadInputError(
                f"only={unknown[:3]} names tensors this model does not store in faulty memory; it stores "
                f"{', '.join(t.name for t in tensors)}"
            )
        tensors = [t for t in tensors if t.name in only]
    counts: dict[str, int | Tensor | None] = {}
    try:
        for t in tensors:
            qt = t.clean()
            generator = torch.Generator(device=qt.codes.device)
            generator.manual_seed(t.seed(seed))
            flipped, n = _flip_bits_counted(qt.codes, qt.bits, ber, p10, generator, "auto", count=count)
            corrupted = reestimate(qt, flipped) if decode == "reestimated" else qt.with_codes(flipped)
            if t.kind == "weight":
                counts[t.layer_name] = n
                t.layer.substitute_codes(corrupted, straight_through=straight_through)
            else:
                counts[t.name] = n
                t.layer.substitute_bias_codes(corrupted, straight_through=straight_through)
        yield {name: int(c) for name, c in counts.items()} if count else {}
    finally:
        for t in stored_tensors(model):
            t.layer.clear_substitute()
