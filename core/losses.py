"""Training losses: standard cross-entropy (CEL), the Margin Cross-Entropy Loss (MCEL) and the modified
hinge loss (MHL), with a registry so a search space can name them by string.

MCEL (paper Sec. V, eqs. 7-10), for logits ``z`` of shape ``(N, C)`` and true classes ``y``::

    z_hat_c = b * tanh(z_c / b)                      (eq. 7, bounded to (-b, b))
    z'_c    = z_hat_c - m * [c == y]                 (eq. 9, margin on the true class only)
    loss    = cross_entropy(z', y)                   (eq. 10)

The margin lives in the loss only: the network's outputs (and thus inference) are untouched. The relative
logit separation the margin demands is ``m / (2 b)`` (eq. 8): the fraction of the logit range ``2b``.

Limits:

* ``m = 0``: cross-entropy of the bounded logits ``b * tanh(z / b)`` (not plain CE unless ``b`` is large).
* ``b -> inf``: ``b * tanh(z / b) -> z``, so MCEL tends to cross-entropy with an additive margin
  ``cross_entropy(z - m * onehot(y), y)`` (eq. 5), which the network could satisfy by shifting all logits
  were it not for the bound; ``b = inf`` itself is rejected.
* ``m >= 2b``: the demanded separation exceeds the whole range; the loss stays finite but can never reach 0.

MHL (Buschjaeger et al., "Margin-maximization in binarized neural networks for optimizing bit error
tolerance", DATE 2021), per sample::

    loss = mean_c max(0, b - y_c * z_c) / b,   y_c = +1 for the true class, -1 otherwise
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum", "none")


def _check_positive(name: str, value: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name}={value!r} is not allowed: it must be a finite number > 0")
    return float(value)


def _check_non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r} is not allowed: it must be a finite number >= 0")
    return float(value)


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not allowed: choose one of {', '.join(REDUCTIONS)}")
    return reduction


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def bounded_logits(logits: Tensor, b: float) -> Tensor:
    """``b * tanh(logits / b)`` (eq. 7): smooth, odd, ~identity for ``|z| << b``, saturating at ``+-b``."""
    b = _check_positive("b", b)
    return b * torch.tanh(logits / b)


def mcel_loss(logits: Tensor, target: Tensor, margin: float, b: float, reduction: str = "mean") -> Tensor:
    """Margin Cross-Entropy Loss (eqs. 7-10); see the module docstring for the formula and limits.

    Args:
        logits: ``(N, C)`` raw network outputs (after the model's logit scale).
        target: ``(N,)`` int64 class indices.
        margin: ``m >= 0``, subtracted from the bounded true-class logit inside the loss only.
        b: saturation bound ``b > 0``; logits are bounded to ``(-b, b)``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``, as in ``nn.CrossEntropyLoss``.
    """
    margin = _check_non_negative("margin", margin)
    b = _check_positive("b", b)
    _check_reduction(reduction)
    z_hat = b * torch.tanh(logits / b)
    shifted = z_hat - margin * F.one_hot(target, num_classes=logits.shape[-1]).to(z_hat.dtype)
    return F.cross_entropy(shifted, target, reduction=reduction)


def mhl_loss(logits: Tensor, target: Tensor, b: float, reduction: str = "mean") -> Tensor:
    """Modified hinge loss ``mean_c max(0, b - y_c z_c) / b`` (Buschjaeger et al., DATE 2021).

    ``y_c = +1`` for the true class and ``-1`` for the others; ``b > 0`` is the demanded margin. The loss is
    0 once the true logit is ``>= b`` and every other logit ``<= -b``; it is 1 at ``z = 0``.
    """
    b = _check_positive("b", b)
    _check_reduction(reduction)
    signs = 2.0 * F.one_hot(target, num_classes=logits.shape[-1]).to(logits.dtype) - 1.0
    per_sample = torch.clamp(b - signs * logits, min=0).mean(dim=-1) / b
    return _reduce(per_sample, reduction)


def cel_loss(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Standard cross-entropy ``-log softmax(z)_y`` (PyTorch's ``F.cross_entropy``): the CEL baseline."""
    _check_reduction(reduction)
    return F.cross_entropy(logits, target, reduction=reduction)


class MCELoss(nn.Module):
    """Module form of :func:`mcel_loss`; a drop-in replacement for ``nn.CrossEntropyLoss``.

    ``MCELoss(margin=8.0, b=16.0)(logits, target)``; ``margin=0`` and large ``b`` approach CE.
    """

    def __init__(self, margin: float, b: float, reduction: str = "mean") -> None:
        super().__init__()
        self.margin = _check_non_negative("margin", margin)
        self.b = _check_positive("b", b)
        self.reduction = _check_reduction(reduction)

    @property
    def relative_separation(self) -> float:
        """``m / (2 b)`` (eq. 8)."""
        return self.margin / (2.0 * self.b)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return mcel_loss(logits, target, self.margin, self.b, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin:g}, b={self.b:g}, reduction={self.reduction!r}"


class MHLoss(nn.Module):
    """Module form of :func:`mhl_loss`."""

    def __init__(self, b: float, reduction: str = "mean") -> None:
        super().__init__()
        self.b = _check_positive("b", b)
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return mhl_loss(logits, target, self.b, self.reduction)

    def extra_repr(self) -> str:
        return f"b={self.b:g}, reduction={self.reduction!r}"


class CELoss(nn.Module):
    """Cross-entropy baseline with the same constructor style as the others (no parameters)."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return cel_loss(logits, target, self.reduction)


LossFactory = Callable[..., nn.Module]

_LOSSES: dict[str, LossFactory] = {}
_LOSS_PARAMS: dict[str, tuple[str, ...]] = {}


def register_loss(name: str, params: tuple[str, ...]) -> Callable[[LossFactory], LossFactory]:
    """Register a loss factory under ``name``; ``params`` are the hyperparameters it takes (besides
    ``reduction``). Raises ValueError on a duplicate name."""

    def decorator(factory: LossFactory) -> LossFactory:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        _LOSSES[name] = factory
        _LOSS_PARAMS[name] = params
        return factory

    return decorator


register_loss("cel", ())(CELoss)
register_loss("mcel", ("margin", "b"))(MCELoss)
register_loss("mhl", ("b",))(MHLoss)


def list_losses() -> list[str]:
    """Registered loss names, sorted."""
    return sorted(_LOSSES)


def loss_params(name: str) -> tuple[str, ...]:
    """The hyperparameters loss ``name`` takes, e.g. ``("margin", "b")`` for ``mcel``."""
    _check_loss_name(name)
    return _LOSS_PARAMS[name]


def _check_loss_name(name: str) -> None:
    if name not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}: known losses are {', '.join(list_losses())}")


def create_loss(name: str, **params: Any) -> nn.Module:
    """Build the loss ``name`` with ``params``; ``None`` values are dropped so defaults apply.

    A parameter the loss does not take (e.g. ``margin`` for ``cel``) raises ValueError naming it and the
    parameters allowed, so a search space cannot silently pass a value that has no effect.
    """
    _check_loss_name(name)
    params = {k: v for k, v in params.items() if v is not None}
    allowed = (*_LOSS_PARAMS[name], "reduction")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"loss {name!r} does not take {', '.join(unknown)}: its parameters are {', '.join(allowed)}"
        )
    missing = [p for p in _LOSS_PARAMS[name] if p not in params]
    if missing:
        raise ValueError(f"loss {name!r} needs {', '.join(missing)}")
    return _LOSSES[name](**params)
