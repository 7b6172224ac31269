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

Parameter names: each loss declares its hyperparameters as :class:`~mcel_search.core.params.Param` (name,
bound, constructor keyword) in :func:`register_loss`. The names are unique across losses: a search spec,
``mcel train``, checkpoints and MLflow call MCEL's ``margin`` and ``b`` and MHL's margin ``mhl_margin``
(the ``b`` of ``MHLoss``), so one searched distribution never mixes two quantities.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import BadInputError
from .params import Param

REDUCTIONS = ("mean", "sum", "none")


#: MCEL's margin m (eq. 9): subtracted from the bounded true-class logit; m = 0 is allowed.
MARGIN = Param(
    "margin", 0.0, True, "MCEL margin m, subtracted from the bounded true-class logit", default=8.0
)
#: MCEL's saturation bound b (eq. 7): logits are bounded to (-b, b).
BOUND = Param("b", 0.0, False, "MCEL saturation bound b: logits bounded to (-b, b)", default=16.0)
#: MHL's demanded margin (the b of Buschjaeger et al.): a different quantity from MCEL's bound.
MHL_MARGIN = Param("mhl_margin", 0.0, False, "MHL margin b: the demanded logit margin", arg="b")


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise BadInputError(f"reduction={reduction!r} is not allowed: choose one of {', '.join(REDUCTIONS)}")
    return reduction


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def bounded_logits(logits: Tensor, b: float) -> Tensor:
    """``b * tanh(logits / b)`` (eq. 7): smooth, odd, ~identity for ``|z| << b``, saturating at ``+-b``."""
    b = BOUND.check(b)
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
    return _mcel(logits, target, MARGIN.check(margin), BOUND.check(b), _check_reduction(reduction))


def _mcel(logits: Tensor, target: Tensor, margin: float, b: float, reduction: str) -> Tensor:
    """:func:`mcel_loss` on values already checked (by it, or once by :class:`MCELoss`)."""
    z_hat = b * torch.tanh(logits / b)
    shifted = z_hat - margin * F.one_hot(target, num_classes=logits.shape[-1]).to(z_hat.dtype)
    return F.cross_entropy(shifted, target, reduction=reduction)


def mhl_loss(logits: Tensor, target: Tensor, b: float, reduction: str = "mean") -> Tensor:
    """Modified hinge loss ``mean_c max(0, b - y_c z_c) / b`` (Buschjaeger et al., DATE 2021).

    ``y_c = +1`` for the true class and ``-1`` for the others; ``b > 0`` is the demanded margin. The loss is
    0 once the true logit is ``>= b`` and every other logit ``<= -b``; it is 1 at ``z = 0``.
    """
    return _mhl(logits, target, MHL_MARGIN.check(b), _check_reduction(reduction))


def _mhl(logits: Tensor, target: Tensor, b: float, reduction: str) -> Tensor:
    """:func:`mhl_loss` on values already checked (by it, or once by :class:`MHLoss`)."""
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
        self.margin, self.b = MARGIN.check(margin), BOUND.check(b)
        self.reduction = _check_reduction(reduction)

    @property
    def relative_separation(self) -> float:
        """``m / (2 b)`` (eq. 8); see :func:`relative_separation`."""
        return relative_separation({"margin": self.margin, "b": self.b})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return _mcel(logits, target, self.margin, self.b, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin:g}, b={self.b:g}, reduction={self.reduction!r}"


class MHLoss(nn.Module):
    """Module form of :func:`mhl_loss`."""

    def __init__(self, b: float, reduction: str = "mean") -> None:
        super().__init__()
        self.b = MHL_MARGIN.check(b)
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return _mhl(logits, target, self.b, self.reduction)

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
_LOSS_PARAMS: dict[str, tuple[Param, ...]] = {}


def all_loss_params() -> dict[str, Param]:
    """Every parameter name of every registered loss -> its :class:`Param`, in registration order."""
    return {p.name: p for params in _LOSS_PARAMS.values() for p in params}


def register_loss(name: str, params: tuple[Param, ...]) -> Callable[[LossFactory], LossFactory]:
    """Register a loss factory under ``name``; ``params`` are the hyperparameters it takes (besides
    ``reduction``). Raises ValueError on a duplicate loss name, or on a parameter name that another loss
    already uses for a different :class:`Param`."""

    def decorator(factory: LossFactory) -> LossFactory:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        known = all_loss_params()
        for p in params:
            if p.name in known and known[p.name] != p:
                raise ValueError(f"loss parameter {p.name!r} already names another quantity: {known[p.name]}")
        _LOSSES[name] = factory
        _LOSS_PARAMS[name] = tuple(params)
        return factory

    return decorator


register_loss("cel", ())(CELoss)
register_loss("mcel", (MARGIN, BOUND))(MCELoss)
register_loss("mhl", (MHL_MARGIN,))(MHLoss)


def list_losses() -> list[str]:
    """Registered loss names, sorted."""
    return sorted(_LOSSES)


def loss_param_specs(name: str) -> tuple[Param, ...]:
    """The :class:`Param` of every hyperparameter loss ``name`` takes, in the loss's order."""
    _check_loss_name(name)
    return _LOSS_PARAMS[name]


def loss_params(name: str) -> tuple[str, ...]:
    """The names of the hyperparameters loss ``name`` takes, e.g. ``("margin", "b")`` for ``mcel``."""
    return tuple(p.name for p in loss_param_specs(name))


def _check_loss_name(name: str) -> None:
    if name not in _LOSSES:
        raise BadInputError(f"unknown loss {name!r}: known losses are {', '.join(list_losses())}")


def create_loss(name: str, reduction: str = "mean", **params: Any) -> nn.Module:
    """Build the loss ``name`` from its parameters by their :class:`Param` names (``mhl_margin`` for
    MHL's margin); ``None`` values are dropped.

    A parameter the loss does not take (e.g. ``margin`` for ``cel``) raises :class:`BadInputError` naming it
    and the parameters allowed, so a search space cannot silently pass a value that has no effect; a missing
    one or a value out of its bound raises too.
    """
    specs = loss_param_specs(name)
    params = {k: v for k, v in params.items() if v is not None}
    allowed = [p.name for p in specs]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise BadInputError(
            f"loss {name!r} does not take {', '.join(unknown)}: its parameters are "
            f"{', '.join([*allowed, 'reduction'])}"
        )
    missing = [p for p in allowed if p not in params]
    if missing:
        raise BadInputError(f"loss {name!r} needs {', '.join(missing)}")
    return _LOSSES[name](reduction=reduction, **{p.keyword: params[p.name] for p in specs})  # checks them


def relative_separation(params: Mapping[str, Any]) -> float | None:
    """MCEL's relative logit separation ``m / (2 b)`` (eq. 8): the fraction of the logit range ``2b`` that
    the margin demands. ``params`` maps parameter names to values (a trial's config, a table row); None
    when ``margin`` or ``b`` is absent or None (CEL, MHL); NaN in, NaN out (tables of mixed losses). The
    one place the formula is written."""
    if params.get("margin") is None or params.get("b") is None:
        return None
    return float(params["margin"]) / (2.0 * float(params["b"]))
