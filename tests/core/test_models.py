"""Every registered architecture builds at every supported bit width, runs, and trains (timm-style)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mcel_search.core.layers import LogitScale, QuantizedLayerMixin, SignActivation, quantized_layers
from mcel_search.core.models import (
    create_model,
    create_model_from_config,
    get_model_spec,
    list_models,
    register_model,
    supported_bits,
)
from mcel_search.core.models.mobilenetv2 import InvertedResidual

# (in_channels, image_size) small enough for CPU, as in the paper's data sets where cheap.
SHAPES = {"vgg3": (1, 28), "vgg7": (3, 32), "mobilenetv2": (3, 32), "resnet18": (3, 32), "small_cnn": (1, 8)}
# conv + linear layers counted by hand from paper Table II (small_cnn: C16 C32 FC64 FC10).
# mobilenetv2: stem 1 + IRB(t1) 2 + IRB(t6,s2) 3 + IRB(t6) 3 + C256 1 + FC 1;
# resnet18: stem 1 + 8 blocks * 2 + 3 shortcut convs + FC 1.
LAYER_COUNTS = {"vgg3": 4, "vgg7": 8, "mobilenetv2": 11, "resnet18": 21, "small_cnn": 4}
CASES = [(name, bits) for name in list_models() for bits in supported_bits(name)]


def _build(name: str, bits: int, **kw) -> nn.Module:
    in_channels, image_size = SHAPES[name]
    return create_model(name, bits=bits, num_classes=7, in_channels=in_channels, image_size=image_size, **kw)


def test_every_model_has_test_shapes() -> None:
    assert set(SHAPES) == set(list_models()) == set(LAYER_COUNTS)


@pytest.mark.parametrize(("name", "bits"), CASES, ids=[f"{n}-{b}b" for n, b in CASES])
def test_forward_backward(name: str, bits: int) -> None:
    torch.manual_seed(0)
    model = _build(name, bits).train()
    in_channels, image_size = SHAPES[name]
    x = torch.randn(4, in_channels, image_size, image_size)
    out = model(x)
    assert out.shape == (4, 7)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        # every parameter (BNN included: sign has a straight-through gradient) is actually trained
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"
    # structure: every conv/linear is quantized at `bits` (none for float), the scale is the last module
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(convs) == LAYER_COUNTS[name]
    assert all(isinstance(m, QuantizedLayerMixin) and m.bits == bits for m in convs)
    assert len(list(quantized_layers(model))) == (0 if bits == 32 else LAYER_COUNTS[name])
    assert isinstance(list(model.modules())[-1], LogitScale)
    signs = sum(isinstance(m, SignActivation) for m in model.modules())
    relus = sum(isinstance(m, nn.ReLU) for m in model.modules())
    assert (signs > 0, relus > 0) == ((True, False) if bits == 1 else (False, True))


@pytest.mark.parametrize("name", list_models())
def test_unsupported_bits_raise_with_the_arch_name(name: str) -> None:
    for bits in (0, 3, 16, 33, True, 4.0):
        with pytest.raises(ValueError, match=name):
            create_model(name, bits=bits)
    binary = 1 in supported_bits(name)
    assert binary == (name in {"vgg3", "vgg7", "small_cnn"})  # paper: BNNs only for the VGGs
    if not binary:
        with pytest.raises(ValueError, match=rf"{name}.*bits=1.*vgg3"):
            create_model(name, bits=1)


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("vgg3")(lambda **kw: nn.Identity())
    assert get_model_spec("vgg3").builder.__name__ == "vgg3"  # untouched
    with pytest.raises(ValueError, match="mobilenetv2, resnet18, small_cnn, vgg3, vgg7"):
        create_model("vgg5", bits=4)
    assert list_models() == sorted(list_models())
    with pytest.raises(ValueError, match="image_size >= 8"):
        create_model("vgg7", bits=4, image_size=4)  # three max-pools of 2
    with pytest.raises(ValueError, match="num_classes"):
        create_model("vgg3", bits=4, num_classes=1)


def test_logit_scale_multiplies_the_logits() -> None:
    torch.manual_seed(0)
    one = _build("small_cnn", 4, logit_scale=1.0)
    two = _build("small_cnn", 4, logit_scale=2.0)
    state = {k: v for k, v in one.state_dict().items() if not k.endswith("logit_scale.scale")}
    two.load_state_dict(state, strict=False)
    one.eval(), two.eval()
    x = torch.randn(3, 1, 8, 8)
    assert float(two.logit_scale.scale) == 2.0
    torch.testing.assert_close(two(x), 2 * one(x))


def test_config_round_trip_and_defaults() -> None:
    model = create_model("vgg3", bits=2, num_classes=None, logit_scale=None)
    assert model.mcel_config == {
        "name": "vgg3",
        "bits": 2,
        "num_classes": 10,
        "in_channels": 1,
        "image_size": 28,
        "logit_scale": 1.0,
    }
    clone = create_model_from_config(model.mcel_config)
    clone.load_state_dict(model.state_dict())  # strict: same architecture
    with pytest.raises(ValueError, match="unknown keys"):
        create_model_from_config({**model.mcel_config, "depth": 3})


def test_paper_architectures() -> None:
    # VGG3 at FashionMNIST (1x28x28): convs, BN (weight + bias), FC 7*7*64 -> 2048, FC 2048 -> 10 + bias.
    vgg3 = create_model("vgg3", bits=4)
    expected = 1 * 64 * 9 + 2 * 64 + 64 * 64 * 9 + 2 * 64 + 7 * 7 * 64 * 2048 + 2 * 2048 + 2048 * 10 + 10
    assert sum(p.numel() for p in vgg3.parameters()) == expected
    # VGG7 at SVHN (3x32x32): 32 / 2**3 = 4, so FC512 sees 256 * 4 * 4 inputs.
    vgg7 = create_model("vgg7", bits=4, in_channels=3, image_size=32)
    assert vgg7.head[1][0].in_features == 256 * 4 * 4
    # the digits toy (8x8) still builds for the paper VGGs
    assert create_model("vgg3", bits=8, image_size=8)(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    # MobileNetV2: residual only in IRB(t1,c32) (stride 1, 32 -> 32); IRB(t1) has no expand conv
    mnv2 = create_model("mobilenetv2", bits=4, in_channels=3, image_size=32)
    irbs = [m for m in mnv2.modules() if isinstance(m, InvertedResidual)]
    assert [b.use_residual for b in irbs] == [True, False, False]
    assert [len(b.block) for b in irbs] == [2, 3, 3]
    # ResNet18 on Imagenette 64x64: He et al.'s ResNet18 has 11.17M parameters at 10 classes (CIFAR stem)
    rn = create_model("resnet18", bits=4, in_channels=3, image_size=64)
    assert sum(p.numel() for p in rn.parameters()) == 11_173_962
