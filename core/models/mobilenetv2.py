"""Quantized MobileNetV2 of the paper (Table II, CIFAR10): a shortened MobileNetV2 (Sandler et al., 2018).

``In C32 IRB(t1,c32) IRB(t6,c64,s2) IRB(t6,c96) C256 AAP FC10``, where ``IRB(t, c, s)`` is an inverted
residual block with expansion ``t``, ``c`` output channels and stride ``s`` (default 1), ``C256`` a 1x1 conv
and ``AAP`` adaptive average pooling to 1x1. Activations are ReLU (the paper's QNNs), not ReLU6. QNN and
float only: the paper builds no binary MobileNetV2.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..layers import QuantLinear
from .base import QuantClassifier, conv_bn
from .registry import register_model


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when ``t == 1``) -> 3x3 depthwise (stride ``s``) -> 1x1 linear projection.

    Each conv is followed by BatchNorm; expand and depthwise by ReLU too, the projection by nothing (linear
    bottleneck). The input is added back when ``stride == 1`` and the channel count is unchanged.
    """

    def __init__(self, in_ch: int, out_ch: int, *, expand: int, stride: int, bits: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(in_ch, hidden, kernel_size=1, bits=bits))
        layers.append(conv_bn(hidden, hidden, stride=stride, groups=hidden, bits=bits))
        layers.append(conv_bn(hidden, out_ch, kernel_size=1, act=False, bits=bits))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


def _build_mobilenetv2(
    stem: int,
    blocks: Sequence[tuple[int, int, int]],
    last: int,
    *,
    bits: int,
    num_classes: int,
    in_channels: int,
    image_size: int,
    logit_scale: float,
) -> QuantClassifier:
    """Stem 3x3 conv with ``stem`` channels, inverted residual blocks ``(t, c, s)``, 1x1 conv to ``last``
    channels, adaptive average pooling, output layer. Any ``image_size`` works (pooling is adaptive)."""
    features: list[nn.Module] = [conv_bn(in_channels, stem, bits=bits)]
    ch = stem
    for expand, out_ch, stride in blocks:
        features.append(InvertedResidual(ch, out_ch, expand=expand, stride=stride, bits=bits))
        ch = out_ch
    features.append(conv_bn(ch, last, kernel_size=1, bits=bits))
    head = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), QuantLinear(last, num_classes, bias=True, bits=bits)
    )
    return QuantClassifier(nn.Sequential(*features), head, logit_scale)


@register_model("mobilenetv2", paper_dataset="cifar10")
def mobilenetv2(**kwargs) -> QuantClassifier:
    """MobileNetV2: C32 IRB(t1,c32) IRB(t6,c64,s2) IRB(t6,c96) C256 AAP FC10 (paper Table II, CIFAR10)."""
    return _build_mobilenetv2(32, [(1, 32, 1), (6, 64, 2), (6, 96, 1)], 256, **kwargs)
