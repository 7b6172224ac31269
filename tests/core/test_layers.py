"""Quantized layers use the quantized weight everywhere; code substitution decodes with the clean scale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcel_search.core.layers import LogitScale, QuantConv2d, QuantLinear, SignActivation, quantized_layers
from mcel_search.core.quantization import dequantize, quantize_dequantize


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("train", [True, False])
def test_conv_uses_quantized_weight_in_train_and_eval(bits: int, train: bool) -> None:
    torch.manual_seed(0)
    layer = QuantConv2d(1, 8, 3, padding=1, bits=bits)
    layer.train(train)
    x = torch.randn(2, 1, 8, 8)
    expected = F.conv2d(x, quantize_dequantize(layer.weight.detach(), bits), layer.bias, padding=1)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    # and it is not the float result.
    assert not torch.allclose(layer(x), F.conv2d(x, layer.weight, layer.bias, padding=1), atol=1e-6)


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_linear_uses_quantized_weight_and_trains(bits: int) -> None:
    torch.manual_seed(1)
    layer = QuantLinear(6, 3, bits=bits)
    x = torch.randn(4, 6)
    out = layer(x)
    assert torch.allclose(
        out, F.linear(x, quantize_dequantize(layer.weight.detach(), bits), layer.bias), atol=1e-6
    )
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_float_bits_is_plain_layer_and_keeps_state_dict_keys() -> None:
    torch.manual_seed(2)
    q = QuantLinear(5, 2, bits=32)
    ref = nn.Linear(5, 2)
    ref.load_state_dict(q.state_dict())
    x = torch.randn(3, 5)
    assert torch.equal(q(x), ref(x))
    assert set(QuantConv2d(1, 2, 3, bits=4).state_dict()) == set(nn.Conv2d(1, 2, 3).state_dict())
    with pytest.raises(RuntimeError, match="float"):
        q.quantized_weight()


@pytest.mark.parametrize("bits", [0, 9, 16, 3.0])
def test_layer_bits_validation(bits) -> None:
    with pytest.raises(ValueError, match="1..8 \\(quantized\\) or 32"):
        QuantLinear(2, 2, bits=bits)


def test_substituted_codes_decode_with_clean_scale_and_clear_restores() -> None:
    torch.manual_seed(3)
    layer = QuantLinear(8, 4, bits=4).eval()
    x = torch.randn(5, 8)
    clean_out = layer(x)
    qt = layer.quantized_weight()
    corrupted = qt.codes ^ torch.full_like(qt.codes, 0b1000)
    layer.substitute_codes(qt.with_codes(corrupted))
    w_expected = corrupted.float() * qt.scale + qt.offset
    assert torch.allclose(layer(x), F.linear(x, w_expected, layer.bias), atol=1e-6)
    assert not torch.allclose(layer(x), clean_out)
    layer.clear_substitute()
    assert torch.equal(layer(x), clean_out)
    assert torch.equal(dequantize(qt), quantize_dequantize(layer.weight.detach(), 4))


def test_substitute_rejects_mismatched_codes() -> None:
    a, b = QuantLinear(8, 4, bits=4), QuantLinear(4, 8, bits=4)
    with pytest.raises(ValueError, match="do not fit"):
        a.substitute_codes(b.quantized_weight())
    with pytest.raises(ValueError, match="do not fit"):
        a.substitute_codes(QuantLinear(8, 4, bits=2).quantized_weight())


def test_sign_activation_forward_and_hardtanh_gradient() -> None:
    x = torch.tensor([-3.0, -1.0, -0.2, 0.0, 0.7, 2.0], requires_grad=True)
    y = SignActivation()(x)
    assert y.tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_logit_scale() -> None:
    x = torch.randn(3, 10)
    assert torch.equal(LogitScale(0.25)(x), x * 0.25)
    assert "scale" in LogitScale(2.0).state_dict()
    for bad in (0, -1.0, float("inf"), float("nan"), "1"):
        with pytest.raises(ValueError, match="logit_scale="):
            LogitScale(bad)


def test_quantized_layers_lists_only_quantized_in_order() -> None:
    model = nn.Sequential(
        QuantConv2d(1, 2, 3, bits=4),
        nn.ReLU(),
        nn.Flatten(),
        QuantLinear(2, 2, bits=32),
        QuantLinear(2, 3, bits=2),
    )
    names = [n for n, _ in quantized_layers(model)]
    assert names == ["0", "4"]
