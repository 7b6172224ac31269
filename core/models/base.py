"""Pieces shared by every architecture: the classifier shell and the conv/linear + BatchNorm blocks.

Conventions of all models in :mod:`core.models`:

* every conv and linear layer is a :class:`~core.layers.QuantConv2d` / :class:`~core.layers.QuantLinear` at
  the model's ``bits`` (first and last layer included; ``bits=32`` gives a float model);
* every conv and every hidden linear layer is followed by BatchNorm and has ``bias=False``; the output
  layer has a (float) bias and **no** BatchNorm, as in the VGG3/VGG7 of the reference BNN/QNN
  framework (github.com/myay/BNN-QNN-ErrorEvaluation). The constant :class:`~core.layers.LogitScale`
  takes the role a final BatchNorm would otherwise play: it keeps logits near unity;
* the activation is ReLU for QNNs and float models and :class:`~core.layers.SignActivation` for BNNs
  (``bits=1``), always after BatchNorm; the first layer sees real-valued images and the output layer
  produces real-valued logits;
* :class:`~core.layers.LogitScale` is the very last module.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..layers import LogitScale, QuantConv2d, QuantLinear, SignActivation

BINARY_BITS = 1


def make_activation(bits: int) -> nn.Module:
    """``SignActivation`` for binary networks (``bits == 1``), else ``ReLU``."""
    return SignActivation() if bits == BINARY_BITS else nn.ReLU(inplace=True)


def conv_bn(
    in_ch: int,
    out_ch: int,
    *,
    bits: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    pool: bool = False,
    act: bool = True,
) -> nn.Sequential:
    """Quantized conv (``padding = kernel_size // 2``, no bias) [-> MaxPool2d(2)] -> BatchNorm2d [-> act].

    Pooling comes before BatchNorm and the activation, as in the reference VGG3/VGG7 (cheaper, and for BNNs
    the sign is taken of the pooled, normalized pre-activation).
    """
    layers: list[nn.Module] = [
        QuantConv2d(
            in_ch,
            out_ch,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
            bits=bits,
        )
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers.append(nn.BatchNorm2d(out_ch))
    if act:
        layers.append(make_activation(bits))
    return nn.Sequential(*layers)


def linear_bn(in_features: int, out_features: int, *, bits: int) -> nn.Sequential:
    """Hidden fully connected block: quantized linear (no bias) -> BatchNorm1d -> activation."""
    return nn.Sequential(
        QuantLinear(in_features, out_features, bias=False, bits=bits),
        nn.BatchNorm1d(out_features),
        make_activation(bits),
    )


class QuantClassifier(nn.Module):
    """``logit_scale(head(features(x)))``: the shell every registered architecture returns.

    Attributes:
        features: the convolutional body.
        head: pooling/flatten, hidden FC blocks and the output layer (real-valued logits).
        logit_scale: :class:`~core.layers.LogitScale`, the last module.
        mcel_config: set by :func:`core.models.create_model`, the arguments that rebuild the model.
    """

    def __init__(self, features: nn.Module, head: nn.Module, logit_scale: float) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.logit_scale = LogitScale(logit_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.logit_scale(self.head(self.features(x)))
