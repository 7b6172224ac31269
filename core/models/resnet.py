"""Quantized ResNet18 of the paper (Table II, Imagenette at 64x64), CIFAR-style (He et al., 2016).

``In C64 SCB64 SCB128 SCB256 SCB512 AAP FC10``: a 3x3 stem conv with stride 1 and no max-pool, four stages
of two basic blocks each (stride 2 in the first block of stages 2-4, a 1x1 conv + BatchNorm shortcut where
the shape changes), adaptive average pooling, output layer. QNN and float only (no binary ResNet in the
paper).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..layers import QuantLinear
from .base import QuantClassifier, conv_bn
from .registry import register_model


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int, bits: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(in_ch, out_ch, stride=stride, bits=bits)
        self.conv2 = conv_bn(out_ch, out_ch, act=False, bits=bits)
        self.shortcut = (
            conv_bn(in_ch, out_ch, kernel_size=1, stride=stride, act=False, bits=bits)
            if stride != 1 or in_ch != out_ch
            else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


def _build_resnet(
    stem: int,
    widths: Sequence[int],
    depths: Sequence[int],
    *,
    bits: int,
    num_classes: int,
    in_channels: int,
    image_size: int,
    logit_scale: float,
) -> QuantClassifier:
    """Stem conv, then per stage ``i`` ``depths[i]`` basic blocks of width ``widths[i]`` (stride 2 at the
    start of every stage but the first), adaptive average pooling, output layer. Any ``image_size`` works."""
    features: list[nn.Module] = [conv_bn(in_channels, stem, bits=bits)]
    ch = stem
    for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
        for j in range(depth):
            stride = 2 if i > 0 and j == 0 else 1
            features.append(BasicBlock(ch, width, stride=stride, bits=bits))
            ch = width
    head = nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), QuantLinear(ch, num_classes, bias=True, bits=bits)
    )
    return QuantClassifier(nn.Sequential(*features), head, logit_scale)


@register_model("resnet18", paper_dataset="imagenette")
def resnet18(**kwargs) -> QuantClassifier:
    """ResNet18: C64, basic-block stages 64/128/256/512 x2, AAP, FC10 (paper Table II, Imagenette 64x64)."""
    return _build_resnet(64, [64, 128, 256, 512], [2, 2, 2, 2], **kwargs)
