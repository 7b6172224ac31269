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

These are our default protocol's conventions; :func:`apply_structure` gives a built model another
protocol's biases, arithmetic and output scale (:mod:`core.protocol`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import BadInputError
from ..layers import LogitScale, QuantConv2d, QuantizedLayerMixin, QuantLinear, SignActivation

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


#: Structure switches of :func:`apply_structure` and their defaults (our protocol, :mod:`core.protocol`).
STRUCTURE_DEFAULTS: dict[str, str] = {
    "conv_bias": "absent",
    "linear_bias": "absent",
    "output_bias": "float",
    "arithmetic": "affine",
    "output_scale": "constant",
}


def layer_kind(model: nn.Module, layer: nn.Module) -> str:
    """``"output"`` for the model's output layer (its last :class:`~core.layers.QuantLinear` in module
    order), else ``"conv"`` or ``"linear"`` (a hidden fully connected layer)."""
    linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
    if linears and layer is linears[-1]:
        return "output"
    return "conv" if isinstance(layer, QuantConv2d) else "linear"


def apply_structure(
    model: nn.Module, *, logit_scale: float, scale_init: float | None = None, **switches: str
) -> None:
    """Give a freshly built model the protocol's structure (in place; the defaults change nothing).

    * ``conv_bias`` / ``linear_bias`` / ``output_bias``: ``absent`` removes the layer kind's biases;
      ``float`` or ``faulty`` gives every layer of that kind a bias, initialised as PyTorch initialises
      ``nn.Conv2d``/``nn.Linear`` biases (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, drawn after all weights,
      in module order) and stored in float or quantized in the faulty memory.
    * ``arithmetic: integer``: every quantized layer computes with signed integer codes.
    * ``output_scale: learnable``: the logit scale becomes a trained parameter initialised to
      ``scale_init`` (None: ``logit_scale``).

    Raises BadInputError for integer arithmetic or faulty biases in a float (32-bit) model, which holds
    no codes.
    """
    opts = {**STRUCTURE_DEFAULTS, **switches}
    layers = [m for m in model.modules() if isinstance(m, QuantizedLayerMixin)]
    for layer in layers:
        mode = opts[f"{layer_kind(model, layer)}_bias"]
        if mode == "absent":
            if layer.bias is not None:
                layer.register_parameter("bias", None)
            continue
        if mode == "faulty" and not layer.is_quantized:
            raise BadInputError(
                "protocol: faulty biases need a quantized model (bits 1..8): a 32-bit model holds no codes"
            )
        if layer.bias is None:
            out_features = layer.weight.shape[0]
            fan_in = layer.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            bias = torch.empty(out_features, dtype=layer.weight.dtype, device=layer.weight.device)
            layer.bias = nn.Parameter(nn.init.uniform_(bias, -bound, bound))
        layer.bias_storage = mode
    if opts["arithmetic"] == "integer":
        if not any(layer.is_quantized for layer in layers):
            raise BadInputError("protocol.arithmetic: integer needs a quantized model (bits 1..8)")
        for layer in layers:
            layer.integer = layer.is_quantized
    if opts["output_scale"] == "learnable":
        init = logit_scale if scale_init is None else scale_init
        model.logit_scale = LogitScale(init, learnable=True)
