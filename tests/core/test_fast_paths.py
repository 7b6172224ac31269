"""Every fast path gives what the straight path gives, bit for bit.

Fast paths under test (see ``benchmarks/RESULTS.md`` for what they save):

* ``fake_quantize``'s forward value computed in place, without the uint8 round trip (core.quantization);
* ``quantize`` / ``dequantize`` with one buffer instead of two or three;
* a layer's substituted (bit-flipped) weight decoded once per substitution, not per forward pass;
* ``cached_quantization``: clean codes and fake-quantized weights computed once while the weight is
  unchanged (core.layers), used by every evaluation in core.evaluation.

The straight paths are written out here from the formulas (paper eq. 11), independently of the code.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mcel_search.core.biterrors import derive_seed, flip_bits, inject_bit_errors
from mcel_search.core.evaluation import ber_sweep, evaluate_accuracy, margin_statistics, realization_seed
from mcel_search.core.layers import QuantConv2d, QuantLinear, cached_quantization, quantized_layers
from mcel_search.core.models import create_model
from mcel_search.core.quantization import dequantize, fake_quantize, quantize

FLOAT_DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def straight_quantize_dequantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Eq. 11 written out: per-tensor min/max, codes through uint8, decoded with the clean scale/offset."""
    if bits == 1:
        return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))
    lo, hi = w.min(), w.max()
    scale = (hi - lo) / float((1 << bits) - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((w - lo) / scale).clamp(0, (1 << bits) - 1).to(torch.uint8)
    return codes.to(w.dtype) * scale + lo


def _tensors(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ties = torch.arange(-8, 9, dtype=torch.float64).div(4)  # many values at exact half steps
    return [
        torch.randn(64, 33, generator=g).to(dtype),
        (torch.randn(1000, generator=g) * 1e-3 + 5).to(dtype),
        torch.full((7, 3), -0.25, dtype=dtype),  # constant: scale 0 -> 1
        ties.to(dtype),
        torch.tensor([0.0, 1.0], dtype=dtype),
    ]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_fake_quantize_value_equals_straight_path_bit_for_bit(bits: int, dtype: torch.dtype) -> None:
    for w in _tensors(dtype):
        expected = straight_quantize_dequantize(w, bits)
        got = fake_quantize(w, bits)
        assert got.dtype == w.dtype
        assert torch.equal(got, expected), (bits, dtype, w.flatten()[:5])
        assert torch.equal(dequantize(quantize(w, bits), dtype=dtype), expected)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quantize_gradient_still_straight_through_and_input_untouched(bits: int) -> None:
    w = torch.randn(5, 6, requires_grad=True)
    before = w.detach().clone()
    g = torch.randn(5, 6)
    fake_quantize(w, bits).backward(g)
    assert torch.equal(w.grad, g)
    assert torch.equal(w.detach(), before)


def test_fake_quantize_propagates_nan() -> None:
    # the straight path's uint8 conversion turned NaN into an arbitrary code; the fast path keeps NaN
    w = torch.tensor([0.5, float("nan"), -1.0])
    assert torch.isnan(fake_quantize(w, 4)).all()


def test_dequantize_leaves_codes_untouched_and_matches_formula() -> None:
    w = torch.randn(40)
    qt = quantize(w, 4)
    codes = qt.codes.clone()
    expected = codes.to(torch.float64) * qt.scale.double() + qt.offset.double()
    assert torch.equal(dequantize(qt, dtype=torch.float64), expected)
    assert torch.equal(qt.codes, codes)


# ------------------------------------------------------------------------------------------- layer caches


def _conv() -> QuantConv2d:
    torch.manual_seed(3)
    return QuantConv2d(2, 4, 3, padding=1, bits=4)


def test_cached_forward_equals_uncached_and_follows_in_place_updates() -> None:
    layer = _conv().eval()
    x = torch.randn(3, 2, 6, 6)
    with torch.no_grad():
        plain = layer(x)
        with cached_quantization(layer):
            assert torch.equal(layer(x), plain)
            first = layer.effective_weight()
            assert layer.effective_weight() is first  # computed once
            layer.weight.mul_(0.5)  # an in-place update bumps the version: the cache must follow
            changed = layer(x)
            assert layer.effective_weight() is not first
        assert layer._cache is None  # dropped on exit
        assert torch.equal(changed, layer(x))
        assert not torch.equal(changed, plain)


def test_cache_follows_optimizer_steps_and_load_state_dict() -> None:
    layer = _conv()
    x = torch.randn(2, 2, 5, 5)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    other = _conv()
    with torch.no_grad():
        other.weight.add_(1.0)
    with cached_quantization(layer):
        with torch.no_grad():
            a = layer(x)
        layer(x).sum().backward()  # grad enabled: the cache is not used, gradient reaches the weight
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
        opt.step()
        with torch.no_grad():
            b = layer(x)
            layer.load_state_dict(other.state_dict())
            c = layer(x)
    with torch.no_grad():
        assert not torch.equal(a, b)
        assert torch.equal(c, layer(x))
        assert torch.equal(c, other(x))


def test_cache_follows_a_replaced_weight() -> None:
    layer = QuantLinear(4, 3, bits=4)
    x = torch.randn(2, 4)
    with torch.no_grad(), cached_quantization(layer):
        layer(x)
        layer.weight = nn.Parameter(torch.randn(3, 4))  # new storage, version 0
        assert torch.equal(layer(x), nn.functional.linear(x, fake_quantize(layer.weight, 4), layer.bias))


def test_cached_quantized_weight_equals_plain_and_nesting_restores() -> None:
    layer = _conv()
    plain = layer.quantized_weight()
    with cached_quantization(layer):
        with cached_quantization(layer):
            qt = layer.quantized_weight()
            assert layer.quantized_weight() is qt
        assert layer._cache_enabled and layer._cache is not None  # the outer block still caches
    assert not layer._cache_enabled and layer._cache is None
    assert torch.equal(qt.codes, plain.codes)
    assert torch.equal(qt.scale, plain.scale) and torch.equal(qt.offset, plain.offset)


def test_substitute_is_decoded_once_and_renewed_per_substitution() -> None:
    layer = QuantLinear(8, 5, bits=4)
    qt = layer.quantized_weight()
    g = torch.Generator().manual_seed(1)
    flipped = qt.with_codes(flip_bits(qt.codes, 4, 0.2, generator=g))
    layer.substitute_codes(flipped)
    w1 = layer.effective_weight()
    assert layer.effective_weight() is w1
    assert torch.equal(w1, straight_decode(flipped.codes, qt))
    again = qt.with_codes(flip_bits(qt.codes, 4, 0.2, generator=g))
    layer.substitute_codes(again)
    assert torch.equal(layer.effective_weight(), straight_decode(again.codes, qt))
    # bit-error training: the forward value is the corrupted weight, the gradient reaches the float weight
    layer.substitute_codes(again, straight_through=True)
    x = torch.randn(3, 8)
    out = layer(x)
    assert torch.equal(out, nn.functional.linear(x, straight_decode(again.codes, qt), layer.bias))
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    layer.clear_substitute()
    assert torch.equal(layer.effective_weight(), fake_quantize(layer.weight, 4))


def straight_decode(codes: torch.Tensor, qt) -> torch.Tensor:
    return codes.to(torch.float32) * qt.scale + qt.offset


# ------------------------------------------------------------------------------------------ evaluation


def _model_and_data(bits: int = 4):
    torch.manual_seed(0)
    model = create_model("small_cnn", bits=bits, num_classes=10, in_channels=1, image_size=8).eval()
    x = torch.randn(300, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(-1)  # labels the clean model gets right: bit errors can only hurt
    y[::7] = (y[::7] + 1) % 10
    return model, [(x[:128], y[:128]), (x[128:], y[128:])]


def _float_copy(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose quantized layers are float layers holding ``weights`` (the straight path)."""
    twin = copy.deepcopy(model)
    for name, layer in quantized_layers(twin):
        layer.bits = 32
        with torch.no_grad():
            layer.weight.copy_(weights[name])
    return twin


def _accuracy(model: nn.Module, batches) -> float:
    with torch.no_grad():
        correct = sum(int((model(x).argmax(-1) == y).sum()) for x, y in batches)
    return correct / sum(y.shape[0] for _, y in batches)


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_ber_sweep_equals_straight_path(bits: int) -> None:
    model, batches = _model_and_data(bits)
    bers, reps, seed = [0.0, 0.01, 0.05], 3, 11
    result = ber_sweep(model, batches, bers, reps, seed)
    layers = list(quantized_layers(model))
    for rec in result.records:
        rseed = realization_seed(seed, rec["rep"])
        weights = {}
        for k, (name, layer) in enumerate(layers):
            qt = quantize(layer.weight.detach(), bits)
            g = torch.Generator().manual_seed(derive_seed(rseed, k))
            weights[name] = straight_decode(flip_bits(qt.codes, bits, rec["ber"], generator=g), qt)
        assert rec["accuracy"] == _accuracy(_float_copy(model, weights), batches), rec
    assert result.at(0.05).mean < result.at(0.0).mean  # the errors did something


def test_clean_evaluation_and_margins_equal_straight_path() -> None:
    model, batches = _model_and_data()
    weights = {n: straight_quantize_dequantize(m.weight.detach(), 4) for n, m in quantized_layers(model)}
    twin = _float_copy(model, weights)
    assert evaluate_accuracy(model, batches) == _accuracy(twin, batches)
    ours, straight = margin_statistics(model, batches), margin_statistics(twin, batches)
    assert ours["margins"] == straight["margins"]


def test_injection_inside_cache_flips_the_same_bits() -> None:
    model, _ = _model_and_data()
    with inject_bit_errors(model, 0.02, seed=5) as plain_counts:
        plain = {n: layer.effective_weight().clone() for n, layer in quantized_layers(model)}
    with cached_quantization(model), inject_bit_errors(model, 0.02, seed=5) as cached_counts:
        cached = {n: layer.effective_weight().clone() for n, layer in quantized_layers(model)}
    assert plain_counts == cached_counts and sum(plain_counts.values()) > 0
    for name in plain:
        assert torch.equal(plain[name], cached[name])
