"""Quantize/dequantize against eq. 11 computed independently, round-trip bounds, binary and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mcel_search.core.quantization import (
    QuantizedTensor,
    dequantize,
    fake_quantize,
    quantize,
    quantize_dequantize,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_codes_match_eq11_and_stay_in_range(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(64, 32, generator=g) * 0.3 + 0.05
    qt = quantize(w, bits)
    assert qt.codes.dtype == torch.uint8 and qt.codes.shape == w.shape
    assert int(qt.codes.min()) == 0 and int(qt.codes.max()) == 2**bits - 1
    # Independent eq. 11 in float64 NumPy.
    a = w.double().numpy()
    s = (a.max() - a.min()) / (2**bits - 1)
    expected = np.clip(np.rint((a - a.min()) / s), 0, 2**bits - 1)
    mismatch = np.abs(qt.codes.numpy().astype(np.int64) - expected)
    # float32 vs float64 may disagree only on exact .5 ties, and then by one level.
    assert mismatch.max() <= 1 and (mismatch > 0).mean() < 1e-3
    assert float(qt.scale) == pytest.approx(s, rel=1e-5)
    assert float(qt.offset) == pytest.approx(a.min(), rel=1e-6)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_round_trip_error_at_most_half_a_step(bits: int) -> None:
    w = torch.randn(10_000, generator=torch.Generator().manual_seed(7))
    qt = quantize(w, bits)
    err = (dequantize(qt) - w).abs().max()
    assert float(err) <= float(qt.scale) / 2 * (1 + 1e-5)
    assert torch.unique(dequantize(qt)).numel() <= 2**bits
    # extremes are represented exactly.
    assert float(dequantize(qt).min()) == pytest.approx(float(w.min()), abs=1e-6)
    assert float(dequantize(qt).max()) == pytest.approx(float(w.max()), abs=1e-5)


def test_binary_is_sign_with_sign_zero_plus_one() -> None:
    w = torch.tensor([-2.0, -0.1, 0.0, 0.3, 5.0])
    qt = quantize(w, 1)
    assert qt.codes.tolist() == [0, 0, 1, 1, 1]
    assert dequantize(qt).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    assert qt.with_codes(torch.tensor([1, 1, 0, 0, 0], dtype=torch.uint8)).codes.tolist() == [1, 1, 0, 0, 0]
    assert dequantize(qt.with_codes(1 - qt.codes)).tolist() == [1.0, 1.0, -1.0, -1.0, -1.0]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_constant_tensor_gives_no_nan(bits: int) -> None:
    w = torch.full((3, 3), 0.25)
    qt = quantize(w, bits)
    out = dequantize(qt)
    assert not torch.isnan(out).any()
    if bits > 1:
        assert torch.equal(out, w)
        assert qt.codes.max() == 0


@pytest.mark.parametrize("bits", [0, 9, 16, 32, -1, 2.5, True, "4"])
def test_bits_outside_one_to_eight_rejected(bits) -> None:
    with pytest.raises(ValueError, match=f"bits={bits!r}".replace("(", r"\(")):
        quantize(torch.randn(4), bits)
    with pytest.raises(ValueError, match="1..8"):
        fake_quantize(torch.randn(4), bits)


def test_bad_tensors_rejected() -> None:
    with pytest.raises(TypeError, match="floating point"):
        quantize(torch.arange(4), 4)
    with pytest.raises(ValueError, match="empty"):
        quantize(torch.empty(0), 4)
    qt = quantize(torch.randn(4), 4)
    with pytest.raises(ValueError, match="shape"):
        qt.with_codes(torch.zeros(5, dtype=torch.uint8))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quantize_forward_is_quantized_and_gradient_is_straight_through(bits: int) -> None:
    w = torch.randn(50, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out = fake_quantize(w, bits)
    assert torch.equal(out.detach(), quantize_dequantize(w.detach(), bits))
    upstream = torch.linspace(-1, 1, 50)
    out.backward(upstream)
    assert torch.equal(w.grad, upstream)


def test_binary_fake_quantize_gradient_is_hardtanh() -> None:
    w = torch.tensor([-2.0, -0.5, 0.0, 0.9, 1.5], requires_grad=True)
    out = fake_quantize(w, 1)
    assert out.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    out.sum().backward()
    assert w.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_quantized_tensor_properties() -> None:
    qt = quantize(torch.randn(2, 3), 4)
    assert isinstance(qt, QuantizedTensor)
    assert qt.levels == 16 and qt.shape == (2, 3) and qt.bits == 4
