"""Tests of the bit-error engine: exact flip statistics, clean-scale decoding, seeding, exact restore."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mcel_search.core import biterrors
from mcel_search.core.biterrors import (
    SPARSE_MAX_P,
    _split_positions,
    derive_seed,
    flip_bits,
    inject_bit_errors,
)
from mcel_search.core.layers import QuantConv2d, QuantizedLayerMixin, QuantLinear, quantized_layers
from mcel_search.core.quantization import dequantize, quantize

METHODS = ("sparse", "dense")
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def popcount(x: torch.Tensor) -> torch.Tensor:
    """Number of set bits of every element of a tensor holding values in 0..255."""
    return _POPCOUNT[x.to(torch.int64).cpu()]


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def random_codes(numel: int, bits: int, seed: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    return torch.randint(0, 1 << bits, (numel,), generator=gen(seed)).to(dtype)


def assert_within(observed: float, n: float, p: float, what: str, sigmas: float = 4.0) -> None:
    """``observed`` successes of ``n`` trials lie within ``sigmas`` binomial sd of the mean ``n p``."""
    sigma = math.sqrt(n * p * (1.0 - p))
    assert abs(observed - n * p) <= sigmas * sigma + 1e-9, (
        f"{what}: observed {observed}, expected {n * p:.1f} +- {sigmas} x {sigma:.2f} (n={n}, p={p})"
    )


# ---------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bits", [1, 4, 8])
@pytest.mark.parametrize("p", [1e-4, 1e-3, 1e-2, 0.1, 0.5])
def test_overall_flip_rate(p: float, bits: int, method: str) -> None:
    numel = -(-1_000_000 // bits)
    codes = random_codes(numel, bits, seed=bits)
    out = flip_bits(codes, bits, p, generator=gen(17), method=method)
    flipped = int(popcount(out ^ codes).sum())
    assert_within(flipped, numel * bits, p, f"{method} bits={bits}")


@pytest.mark.parametrize(
    ("method", "p"), [("sparse", 1e-3), ("sparse", 0.2), ("dense", 1e-3), ("dense", 0.2)]
)
@pytest.mark.parametrize("bits", [3, 8])
def test_flip_rate_per_bit_position(bits: int, method: str, p: float) -> None:
    numel = 1_000_000
    codes = random_codes(numel, bits, seed=3)
    diff = (flip_bits(codes, bits, p, generator=gen(5), method=method) ^ codes).to(torch.int64)
    assert int((diff >> bits).count_nonzero()) == 0, "a bit above `bits` was flipped"
    for j in range(bits):
        assert_within(int(((diff >> j) & 1).sum()), numel, p, f"{method} bit {j}")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("p01", "p10"), [(0.01, 0.05), (0.2, 1e-3), (0.0, 0.3), (0.02, 0.0)])
def test_asymmetric_rates_per_bit_value(p01: float, p10: float, method: str) -> None:
    bits = 4
    codes = random_codes(500_000, bits, seed=11)
    out = flip_bits(codes, bits, p01, p10, generator=gen(23), method=method)
    before = torch.stack([(codes.to(torch.int64) >> j) & 1 for j in range(bits)])
    after = torch.stack([(out.to(torch.int64) >> j) & 1 for j in range(bits)])
    zeros, ones = before == 0, before == 1
    assert_within(int((after[zeros] == 1).sum()), int(zeros.sum()), p01, f"{method} 0->1")
    assert_within(int((after[ones] == 0).sum()), int(ones.sum()), p10, f"{method} 1->0")


def binomial_pmf(n: int, p: float, k: int) -> float:
    return math.comb(n, k) * p**k * (1.0 - p) ** (n - k)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", [0.01, 0.3])
def test_flips_per_code_are_binomial(p: float, method: str) -> None:
    bits, numel = 8, 1 << 17
    codes = random_codes(numel, bits, seed=29)
    per_code = popcount(flip_bits(codes, bits, p, generator=gen(31), method=method) ^ codes)
    histogram = torch.bincount(per_code, minlength=bits + 1)
    for k in range(bits + 1):
        pk = binomial_pmf(bits, p, k)
        if numel * pk < 5:
            continue
        assert_within(int(histogram[k]), numel, pk, f"{method}: codes with {k} flipped bits")


@pytest.mark.parametrize(("method", "p"), [("sparse", 0.01), ("dense", 0.2)])
def test_flip_count_varies_like_a_binomial(method: str, p: float) -> None:
    """No fixed flip count: across realizations the count has variance ``n p (1 - p)``."""
    bits, numel, realizations = 4, 4096, 400
    codes = random_codes(numel, bits, seed=37)
    g = gen(41)
    counts = torch.tensor(
        [
            float(popcount(flip_bits(codes, bits, p, generator=g, method=method) ^ codes).sum())
            for _ in range(realizations)
        ],
        dtype=torch.float64,
    )
    n = numel * bits
    var = n * p * (1 - p)
    assert abs(float(counts.mean()) - n * p) <= 4 * math.sqrt(var / realizations)
    # sample variance of normal-ish counts: sd of s^2 is about var * sqrt(2 / (R - 1))
    assert abs(float(counts.var()) - var) <= 4 * var * math.sqrt(2 / (realizations - 1))


@pytest.mark.parametrize("method", [*METHODS, "auto"])
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_p_zero_and_one(bits: int, method: str) -> None:
    codes = random_codes(10_000, bits, seed=43)
    full = (1 << bits) - 1
    same = flip_bits(codes, bits, 0.0, generator=gen(0), method=method)
    assert torch.equal(same, codes) and same.data_ptr() != codes.data_ptr()
    assert torch.equal(flip_bits(codes, bits, 1.0, generator=gen(0), method=method), codes ^ full)
    assert torch.equal(
        flip_bits(codes, bits, 1.0, 0.0, generator=gen(0), method=method), torch.full_like(codes, full)
    )
    assert torch.equal(
        flip_bits(codes, bits, 0.0, 1.0, generator=gen(0), method=method), torch.zeros_like(codes)
    )


def test_auto_uses_sparse_below_and_dense_at_the_crossover() -> None:
    codes = random_codes(50_000, 4, seed=47)
    below, at = SPARSE_MAX_P["cpu"] / 2, SPARSE_MAX_P["cpu"]
    for p, expected in ((below, "sparse"), (at, "dense")):
        auto = flip_bits(codes, 4, p, generator=gen(53))
        assert torch.equal(auto, flip_bits(codes, 4, p, generator=gen(53), method=expected))
        other = "dense" if expected == "sparse" else "sparse"
        assert not torch.equal(auto, flip_bits(codes, 4, p, generator=gen(53), method=other))


# ------------------------------------------------------------------------------------ contract of flip_bits


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("p01", "p10"), [(0.01, None), (0.3, None), (0.01, 0.2)])
def test_input_untouched_and_output_new(method: str, p01: float, p10: float | None) -> None:
    codes = random_codes(20_000, 4, seed=59).reshape(100, 200)
    before = codes.clone()
    out = flip_bits(codes, 4, p01, p10, generator=gen(61), method=method)
    assert torch.equal(codes, before)
    assert out.shape == codes.shape and out.dtype == codes.dtype and out.device == codes.device
    assert out.data_ptr() != codes.data_ptr() and not torch.equal(out, codes)


@pytest.mark.parametrize("method", METHODS)
def test_positions_follow_logical_order_for_non_contiguous_codes(method: str) -> None:
    codes = random_codes(20_000, 4, seed=67).reshape(100, 200).t()
    assert not codes.is_contiguous()
    out = flip_bits(codes, 4, 0.05, generator=gen(71), method=method)
    assert torch.equal(out, flip_bits(codes.contiguous(), 4, 0.05, generator=gen(71), method=method))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_integer_dtypes(dtype: torch.dtype, method: str) -> None:
    codes = random_codes(5_000, 8, seed=73).to(dtype)
    assert torch.equal(
        flip_bits(codes, 8, 1.0, generator=gen(0), method=method), codes ^ torch.tensor(255).to(dtype)
    )
    if dtype != torch.uint8 and dtype != torch.int8:
        # bits above `bits` hold data that must not change
        high = codes | (torch.randint(0, 64, codes.shape, generator=gen(79)).to(dtype) << 8)
        out = flip_bits(high, 4, 0.3, generator=gen(83), method=method)
        assert torch.equal(out >> 4, high >> 4) and not torch.equal(out, high)


@settings(max_examples=60, deadline=None)
@given(
    numel=st.integers(0, 300),
    bits=st.integers(1, 8),
    p01=st.floats(0.0, 1.0),
    p10=st.one_of(st.none(), st.floats(0.0, 1.0)),
    method=st.sampled_from(METHODS),
    seed=st.integers(0, 2**31),
)
def test_any_input_keeps_codes_in_range(
    numel: int, bits: int, p01: float, p10: float | None, method: str, seed: int
) -> None:
    codes = random_codes(numel, bits, seed=seed % 1000)
    out = flip_bits(codes, bits, p01, p10, generator=gen(seed), method=method)
    assert out.shape == codes.shape and int((out.to(torch.int64) >> bits).count_nonzero()) == 0


@pytest.mark.parametrize("p", [1e-3, 0.3])
def test_many_small_batches_keep_the_rate(monkeypatch: pytest.MonkeyPatch, p: float) -> None:
    """The rare path where one batch of geometric steps does not cover all positions, forced."""
    monkeypatch.setattr(biterrors, "_BATCH_SIGMAS", -3.0)
    monkeypatch.setattr(biterrors, "_BATCH_EXTRA", 1)
    n = 1_000_000
    pos = biterrors._bernoulli_positions(n, p, gen(7), torch.device("cpu"))
    assert bool((pos.diff() > 0).all()) and int(pos[0]) >= 0 and int(pos[-1]) < n
    assert_within(pos.numel(), n, p, "positions in small batches")
    codes = random_codes(n // 4, 4, seed=8)
    flipped = int(popcount(flip_bits(codes, 4, p, generator=gen(9), method="sparse") ^ codes).sum())
    assert_within(flipped, n, p, "sparse flips in small batches")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
@pytest.mark.parametrize("bits", [1, 3, 4, 8])
@pytest.mark.parametrize(("p01", "p10"), [(0.3, 0.3), (0.05, 0.4)])
def test_sparse_flips_exactly_the_drawn_positions(
    dtype: torch.dtype, bits: int, p01: float, p10: float
) -> None:
    """Reference in plain Python: XOR bit ``pos % bits`` of code ``pos // bits`` for every drawn position
    (thinned with the uniforms drawn next, on the clean bit values); several flips in one code included."""
    numel = 3000
    codes = random_codes(numel, bits, seed=151, dtype=dtype)
    pmax = max(p01, p10)
    g = gen(157)
    positions = biterrors._bernoulli_positions(numel * bits, pmax, g, torch.device("cpu")).tolist()
    u = torch.rand(len(positions), dtype=torch.float64, generator=g).tolist() if p01 != p10 else None
    clean = codes.to(torch.int64).tolist()
    expected = list(clean)
    for k, position in enumerate(positions):
        i, b = divmod(position, bits)
        if u is None or u[k] < (p10 if clean[i] >> b & 1 else p01) / pmax:
            expected[i] ^= 1 << b
    out = flip_bits(codes, bits, p01, p10, generator=gen(157), method="sparse")
    assert torch.equal(out, torch.tensor(expected).to(dtype))
    if bits > 1:
        assert int((popcount((out ^ codes).to(torch.int64) & 0xFF) >= 2).sum()) > 0, "no code with 2 flips"


def test_bernoulli_ends_are_the_bit_patterns_of_2_52_plus_positions() -> None:
    cpu = torch.device("cpu")
    ends = biterrors._bernoulli_ends(1_000_000, 1e-3, gen(163), cpu)
    positions = biterrors._bernoulli_positions(1_000_000, 1e-3, gen(163), cpu)
    assert ends.dtype == torch.int64 and positions.numel() > 0
    assert torch.equal(ends.view(torch.float64) - 2.0**52, positions.to(torch.float64))


def test_split_positions_matches_integer_division() -> None:
    pos = torch.cat([torch.arange(0, 10_000), torch.randint(0, 2**48, (100_000,), generator=gen(89))])
    for bits in range(1, 9):
        idx, bit = _split_positions(pos, bits)
        assert torch.equal(idx, pos // bits) and torch.equal(bit, pos % bits)


def test_same_generator_seed_same_flips_and_other_seed_other_flips() -> None:
    codes = random_codes(100_000, 4, seed=97)
    for p in (1e-3, 0.3):
        a = flip_bits(codes, 4, p, generator=gen(1))
        assert torch.equal(a, flip_bits(codes, 4, p, generator=gen(1)))
        assert not torch.equal(a, flip_bits(codes, 4, p, generator=gen(2)))
        torch.manual_seed(5)
        b = flip_bits(codes, 4, p)
        torch.manual_seed(5)
        assert torch.equal(b, flip_bits(codes, 4, p))


def test_symmetric_flips_do_not_depend_on_code_values() -> None:
    a, b = random_codes(100_000, 4, seed=101), random_codes(100_000, 4, seed=103)
    for p in (1e-3, 0.3):
        flips_a = flip_bits(a, 4, p, generator=gen(7)) ^ a
        assert torch.equal(flips_a, flip_bits(b, 4, p, generator=gen(7)) ^ b)


@pytest.mark.parametrize("method", METHODS)
def test_number_of_random_draws_does_not_depend_on_code_values(method: str) -> None:
    a, b = random_codes(100_000, 4, seed=107), random_codes(100_000, 4, seed=109)
    ga, gb = gen(11), gen(11)
    flip_bits(a, 4, 0.01, 0.05, generator=ga, method=method)
    flip_bits(b, 4, 0.01, 0.05, generator=gb, method=method)
    assert torch.equal(ga.get_state(), gb.get_state())
    assert torch.equal(flip_bits(a, 4, 0.1, generator=ga), flip_bits(a, 4, 0.1, generator=gb))


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), "0.1", None, True])
def test_probability_validation(bad: object) -> None:
    codes = random_codes(10, 4, seed=0)
    with pytest.raises(ValueError, match=r"p01=.*\[0, 1\]"):
        flip_bits(codes, 4, bad)  # type: ignore[arg-type]
    if bad is not None:  # p10=None means symmetric
        with pytest.raises(ValueError, match=r"p10=.*\[0, 1\]"):
            flip_bits(codes, 4, 0.1, bad)  # type: ignore[arg-type]
    model = small_model()
    with pytest.raises(ValueError, match=r"ber=.*\[0, 1\]"), inject_bit_errors(model, bad, 0):  # type: ignore[arg-type]
        pass
    assert all(torch.equal(codes_in_use(m), m.quantized_weight().codes) for _, m in quantized_layers(model))


@pytest.mark.parametrize("bits", [0, 9, 2.0, True])
def test_bits_validation(bits: object) -> None:
    with pytest.raises(ValueError, match="bits"):
        flip_bits(random_codes(10, 4, seed=0), bits, 0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool, torch.uint16])
def test_codes_dtype_validation(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match="integer dtype"):
        flip_bits(torch.zeros(10, dtype=dtype), 4, 0.1)
    with pytest.raises(TypeError):
        flip_bits([1, 2, 3], 4, 0.1)  # type: ignore[arg-type]


def test_method_validation() -> None:
    with pytest.raises(ValueError, match="method"):
        flip_bits(random_codes(10, 4, seed=0), 4, 0.1, method="fast")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- derive_seed


def test_derive_seed() -> None:
    seeds = {derive_seed(s, k) for s in range(20) for k in range(50)}
    assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(3, 1, 2) == derive_seed(3, 1, 2) != derive_seed(3, 2, 1)
    assert derive_seed(3) != derive_seed(4) and derive_seed(3, 0) != derive_seed(3)
    assert derive_seed(0, 1) != derive_seed(1, 0)
    with pytest.raises(TypeError):
        derive_seed(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        derive_seed(1, 2.0)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- decode with the clean scale


def test_corrupted_codes_decode_with_the_clean_scale() -> None:
    w = torch.randn(64, 32, generator=gen(107)).clamp(-2, 2)
    i = 100
    w.view(-1)[i] = 4.0  # the unique maximum
    qt = quantize(w, 4)
    assert int(qt.codes.view(-1)[i]) == 15
    codes = qt.codes.clone()
    codes.view(-1)[i] ^= 0b1000  # max code 15 -> 7: a re-estimated max would change the scale
    clean, corrupted = dequantize(qt).view(-1), dequantize(qt.with_codes(codes)).view(-1)
    others = torch.arange(w.numel()) != i
    assert torch.equal(corrupted[others], clean[others])
    assert torch.equal(corrupted[i], 7 * qt.scale + qt.offset)
    assert not torch.equal(quantize(corrupted.view_as(w), 4).scale, qt.scale)  # the trap we avoid


def small_model(seed: int = 0, bits: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        QuantConv2d(1, 4, 3, bits=bits),
        nn.Flatten(),
        QuantLinear(4 * 6 * 6, 16, bits=bits),
        nn.ReLU(),
        QuantLinear(16, 16, bits=bits),
        nn.ReLU(),
        QuantLinear(16, 10, bits=bits),
    )


def codes_in_use(layer: QuantizedLayerMixin) -> torch.Tensor:
    """Codes behind the layer's current effective weight, decoded with the clean weight's scale and offset."""
    qt = layer.quantized_weight()
    return torch.round((layer.effective_weight().detach() - qt.offset) / qt.scale).to(torch.uint8)


def test_substitute_codes_in_quant_linear_uses_the_clean_scale() -> None:
    layer = QuantLinear(32, 16, bits=4)
    qt = layer.quantized_weight()
    i = int(layer.weight.detach().argmax())
    codes = qt.codes.clone()
    codes.view(-1)[i] ^= 0b1000
    clean = layer.effective_weight().detach().view(-1).clone()
    layer.substitute_codes(qt.with_codes(codes))
    used = layer.effective_weight().detach().view(-1)
    others = torch.arange(used.numel()) != i
    assert torch.equal(used[others], clean[others]) and not torch.equal(used[i], clean[i])
    layer.clear_substitute()
    assert torch.equal(layer.effective_weight().detach().view(-1), clean)


def test_inject_decodes_flipped_codes_with_the_clean_scale() -> None:
    layer = QuantLinear(64, 64, bits=4)
    model = nn.Sequential(layer)
    qt = layer.quantized_weight()
    g = gen(derive_seed(9, 0))
    expected = dequantize(qt.with_codes(flip_bits(qt.codes, 4, 0.2, generator=g)), dtype=layer.weight.dtype)
    with inject_bit_errors(model, 0.2, seed=9):
        assert torch.equal(layer.effective_weight().detach(), expected)


# --------------------------------------------------------------------------------------- inject_bit_errors


def state_bytes(model: nn.Module) -> dict[str, bytes]:
    return {k: v.detach().cpu().contiguous().numpy().tobytes() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("ber", [1e-3, 0.2])
def test_inject_changes_outputs_and_restores_exactly(ber: float) -> None:
    model = small_model()
    x = torch.randn(8, 1, 8, 8, generator=gen(113))
    before, clean_out = state_bytes(model), model(x).detach()
    with inject_bit_errors(model, ber, seed=1) as flips:
        noisy_out = model(x).detach()
        for name, layer in quantized_layers(model):
            assert flips[name] == int(popcount(codes_in_use(layer) ^ layer.quantized_weight().codes).sum())
    assert list(flips) == ["0", "2", "4", "6"]
    assert sum(flips.values()) > 0 and not torch.equal(noisy_out, clean_out)
    assert state_bytes(model) == before
    assert torch.equal(model(x).detach(), clean_out)


def test_inject_restores_when_the_block_raises() -> None:
    model = small_model()
    x = torch.randn(4, 1, 8, 8, generator=gen(127))
    before, clean_out = state_bytes(model), model(x).detach()
    with pytest.raises(RuntimeError, match="boom"), inject_bit_errors(model, 0.3, seed=2):
        assert not torch.equal(model(x).detach(), clean_out)
        raise RuntimeError("boom")
    assert state_bytes(model) == before
    assert torch.equal(model(x).detach(), clean_out)


def flip_masks(model: nn.Module, ber: float, seed: int, p10: float | None = None) -> list[torch.Tensor]:
    layers = [m for _, m in quantized_layers(model)]
    with inject_bit_errors(model, ber, seed, p10):
        return [codes_in_use(m) ^ m.quantized_weight().codes for m in layers]


@pytest.mark.parametrize("ber", [1e-2, 0.2])
def test_inject_seeding(ber: float) -> None:
    a, b = small_model(seed=0), small_model(seed=1)
    assert not torch.equal(a[0].weight, b[0].weight)
    masks_a = flip_masks(a, ber, seed=3)
    # same seed: same flips, also in another model with the same layer shapes (paired comparisons)
    assert all(torch.equal(x, y) for x, y in zip(masks_a, flip_masks(a, ber, seed=3), strict=True))
    assert all(torch.equal(x, y) for x, y in zip(masks_a, flip_masks(b, ber, seed=3), strict=True))
    # another seed: other flips; two layers of equal shape within one realization: other flips
    assert not all(torch.equal(x, y) for x, y in zip(masks_a, flip_masks(a, ber, seed=4), strict=True))
    c = nn.Sequential(QuantLinear(32, 32, bits=4), QuantLinear(32, 32, bits=4))
    first, second = flip_masks(c, ber, seed=3)
    assert not torch.equal(first, second)


def test_inject_asymmetric_only_sets_bits() -> None:
    model = small_model()
    layers = [m for _, m in quantized_layers(model)]
    with inject_bit_errors(model, 0.3, seed=5, p10=0.0):
        for m in layers:
            clean = m.quantized_weight().codes
            assert torch.equal(codes_in_use(m) & clean, clean) and not torch.equal(codes_in_use(m), clean)


def test_inject_binary_layers() -> None:
    model = small_model(bits=1)
    x = torch.randn(4, 1, 8, 8, generator=gen(131))
    clean_out = model(x).detach()
    with inject_bit_errors(model, 0.1, seed=0) as flips:
        assert all(v > 0 for v in flips.values()) and not torch.equal(model(x).detach(), clean_out)
    assert torch.equal(model(x).detach(), clean_out)


def test_inject_rejects_float_models() -> None:
    for model in (nn.Sequential(nn.Linear(4, 4)), nn.Sequential(QuantLinear(4, 4, bits=32))):
        with pytest.raises(ValueError, match="no quantized layers"), inject_bit_errors(model, 0.1, seed=0):
            pass


# --------------------------------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("p", [1e-3, 0.1])
def test_cuda_flip_rate_and_determinism(method: str, p: float) -> None:
    bits, numel = 4, 1 << 20
    codes = random_codes(numel, bits, seed=137).cuda()
    out = flip_bits(codes, bits, p, generator=gen(139, "cuda"), method=method)
    assert out.device == codes.device and out.dtype == codes.dtype
    assert_within(int(popcount(out ^ codes).sum()), numel * bits, p, f"cuda {method}")
    assert torch.equal(out, flip_bits(codes, bits, p, generator=gen(139, "cuda"), method=method))
    assert not torch.equal(out, flip_bits(codes, bits, p, generator=gen(140, "cuda"), method=method))
    asym = flip_bits(codes, bits, p, p / 4, generator=gen(141, "cuda"), method=method)
    ones = torch.stack([(codes.to(torch.int64) >> j) & 1 for j in range(bits)]).cpu()
    after = torch.stack([(asym.to(torch.int64) >> j) & 1 for j in range(bits)]).cpu()
    assert_within(int((after[ones == 0] == 1).sum()), int((ones == 0).sum()), p, "cuda 0->1")
    assert_within(int((after[ones == 1] == 0).sum()), int((ones == 1).sum()), p / 4, "cuda 1->0")
    with pytest.raises(ValueError, match="device"):
        flip_bits(codes, bits, p, generator=gen(0, "cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_inject_restores_exactly() -> None:
    model = small_model().cuda()
    x = torch.randn(8, 1, 8, 8, device="cuda")
    before, clean_out = state_bytes(model), model(x).detach()
    with inject_bit_errors(model, 0.05, seed=1) as flips:
        assert sum(flips.values()) > 0 and not torch.equal(model(x).detach(), clean_out)
    assert state_bytes(model) == before and torch.equal(model(x).detach(), clean_out)
