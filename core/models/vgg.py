"""VGG-style quantized CNNs of the paper (Table II): ``vgg3`` (FashionMNIST) and ``vgg7`` (SVHN).

``C64`` = 3x3 conv with 64 channels (padding 1), ``MP2`` = 2x2 max-pooling, ``FCn`` = fully connected with
``n`` outputs. Binary (``bits=1``) variants exist for both, as in the reference BNN framework.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import BadInputError
from ..layers import QuantLinear
from .base import QuantClassifier, conv_bn, linear_bn
from .registry import BNN_QNN_BITS, register_model

#: Entries of a conv configuration: an int is a 3x3 conv with that many channels, "M" a 2x2 max-pool.
ConvCfg = Sequence[int | str]


def _build_vgg(
    arch: str,
    convs: ConvCfg,
    hidden: Sequence[int],
    *,
    bits: int,
    num_classes: int,
    in_channels: int,
    image_size: int,
    logit_scale: float,
) -> QuantClassifier:
    """Plain VGG: conv blocks per ``convs`` ("M" pools the preceding conv's output), flatten, FC blocks of
    widths ``hidden``, output layer. Each "M" halves the feature map (floor); the flatten size follows."""
    blocks: list[nn.Module] = []
    ch, size = in_channels, image_size
    for i, item in enumerate(convs):
        if item == "M":
            continue
        pool = i + 1 < len(convs) and convs[i + 1] == "M"
        blocks.append(conv_bn(ch, int(item), bits=bits, pool=pool))
        ch = int(item)
        if pool:
            size //= 2
            if size < 1:
                pools = sum(1 for c in convs if c == "M")
                raise BadInputError(
                    f"model {arch!r} cannot take image_size={image_size}: its {pools} max-pools of 2 need "
                    f"image_size >= {2**pools}"
                )
    head: list[nn.Module] = [nn.Flatten()]
    width = ch * size * size
    for h in hidden:
        head.append(linear_bn(width, h, bits=bits))
        width = h
    head.append(QuantLinear(width, num_classes, bias=True, bits=bits))
    return QuantClassifier(nn.Sequential(*blocks), nn.Sequential(*head), logit_scale)


@register_model("vgg3", bits=BNN_QNN_BITS, paper_dataset="fashionmnist")
def vgg3(**kwargs) -> QuantClassifier:
    """VGG3: C64 MP2 C64 MP2 FC2048 FC10 (paper Table II, FashionMNIST)."""
    return _build_vgg("vgg3", [64, "M", 64, "M"], [2048], **kwargs)


@register_model("vgg7", bits=BNN_QNN_BITS, paper_dataset="svhn")
def vgg7(**kwargs) -> QuantClassifier:
    """VGG7: C64 C64 MP2 C128 C128 MP2 C256 C256 MP2 FC512 FC10 (paper Table II, SVHN)."""
    return _build_vgg("vgg7", [64, 64, "M", 128, 128, "M", 256, 256, "M"], [512], **kwargs)
