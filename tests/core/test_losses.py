"""Losses against hand-worked values, an independent NumPy formula, gradcheck, reductions and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mcel_search.core.losses import (
    MCELoss,
    MHLoss,
    bounded_logits,
    create_loss,
    list_losses,
    loss_params,
    mcel_loss,
    mhl_loss,
    register_loss,
)


def _np_mcel(z: np.ndarray, y: np.ndarray, m: float, b: float) -> np.ndarray:
    """Independent per-sample MCEL in float64 NumPy: logsumexp(z') - z'_y."""
    zh = b * np.tanh(z / b)
    zp = zh.copy()
    zp[np.arange(len(y)), y] -= m
    mx = zp.max(axis=1, keepdims=True)
    lse = (mx + np.log(np.exp(zp - mx).sum(axis=1, keepdims=True)))[:, 0]
    return lse - zp[np.arange(len(y)), y]


def test_mcel_two_class_zero_logits_by_hand() -> None:
    # z = (0, 0), true class 0: z_hat = (0, 0), z' = (-m, 0), loss = log(1 + e^m).
    for m in (0.0, 1.0, 3.5):
        got = mcel_loss(torch.zeros(1, 2), torch.tensor([0]), margin=m, b=2.0)
        assert got.item() == pytest.approx(math.log1p(math.exp(m)), rel=1e-6)


def test_mcel_three_class_by_hand() -> None:
    z, b, m = [2.0, -1.0, 0.5], 4.0, 2.0
    zh = [b * math.tanh(v / b) for v in z]
    zp = [zh[0] - m, zh[1], zh[2]]
    expected = math.log(sum(math.exp(v) for v in zp)) - zp[0]
    got = mcel_loss(torch.tensor([z]), torch.tensor([0]), margin=m, b=b)
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("m", "b"), [(0.0, 1.0), (1.0, 2.0), (8.0, 16.0), (64.0, 16.0)])
def test_mcel_matches_independent_formula(m: float, b: float) -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 10, generator=g, dtype=torch.float64) * 5
    y = torch.randint(0, 10, (64,), generator=g)
    got = mcel_loss(z, y, margin=m, b=b, reduction="none").numpy()
    np.testing.assert_allclose(got, _np_mcel(z.numpy(), y.numpy(), m, b), rtol=1e-10, atol=1e-12)


def test_mcel_limits() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(32, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (32,), generator=g)
    ce = nn.functional.cross_entropy
    # margin 0: CE of the bounded logits exactly.
    assert torch.allclose(mcel_loss(z, y, 0.0, 3.0), ce(3.0 * torch.tanh(z / 3.0), y), atol=1e-12)
    # b -> inf: CE with an additive margin (eq. 5).
    shifted = z - 2.0 * nn.functional.one_hot(y, 10).double()
    assert torch.allclose(mcel_loss(z, y, 2.0, 1e7), ce(shifted, y), atol=1e-8)
    # and not for small b: the bound matters.
    big = z * 10
    assert not torch.allclose(mcel_loss(big, y, 2.0, 1.0), ce(big - 2.0 * nn.functional.one_hot(y, 10), y))


def test_mcel_margin_raises_loss_of_correct_prediction() -> None:
    z = torch.tensor([[3.0, 0.0, 0.0]])
    y = torch.tensor([0])
    losses = [mcel_loss(z, y, m, b=4.0).item() for m in (0.0, 1.0, 2.0, 4.0)]
    assert losses == sorted(losses) and losses[0] < losses[-1]


def test_mcel_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (5,), generator=g)
    assert torch.autograd.gradcheck(lambda t: mcel_loss(t, y, 1.5, 2.0), (z,))
    assert torch.autograd.gradcheck(lambda t: mhl_loss(t + 0.01, y, 1.0), (z,))


@pytest.mark.parametrize("name", ["mcel", "mhl", "cel"])
def test_reductions_are_consistent(name: str) -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(16, 10, generator=g)
    y = torch.randint(0, 10, (16,), generator=g)
    params = {"mcel": {"margin": 2.0, "b": 4.0}, "mhl": {"mhl_margin": 1.0}, "cel": {}}[name]
    none = create_loss(name, reduction="none", **params)(z, y)
    assert none.shape == (16,)
    assert torch.allclose(create_loss(name, reduction="sum", **params)(z, y), none.sum())
    assert torch.allclose(create_loss(name, **params)(z, y), none.mean())


def test_mceloss_is_a_drop_in_for_cross_entropy() -> None:
    g = torch.Generator().manual_seed(4)
    z = torch.randn(8, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (8,), generator=g)
    for red in ("mean", "sum", "none"):
        ours = MCELoss(margin=0.0, b=1e8, reduction=red)(z, y)
        ref = nn.CrossEntropyLoss(reduction=red)(z, y)
        assert torch.allclose(ours, ref, atol=1e-10)
    assert MCELoss(8.0, 16.0).relative_separation == pytest.approx(0.25)


def test_mhl_by_hand() -> None:
    # b=1, z=(2,-3,0), y=0: terms max(0,1-2)=0, max(0,1-3)=0, max(0,1-0)=1 -> 1/3.
    assert mhl_loss(torch.tensor([[2.0, -3.0, 0.0]]), torch.tensor([0]), b=1.0).item() == pytest.approx(1 / 3)
    # b=2, z=(1,1), y=1: terms (2+1)=3 for class 0 (y=-1), (2-1)=1 for class 1 -> mean 2 -> /2 = 1.
    assert mhl_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([1]), b=2.0).item() == pytest.approx(1.0)
    # zero when every logit is beyond the margin.
    assert mhl_loss(torch.tensor([[3.0, -3.0]]), torch.tensor([0]), b=2.0).item() == 0.0
    assert MHLoss(b=2.0)(torch.zeros(3, 4), torch.tensor([0, 1, 2])).item() == pytest.approx(1.0)


def test_bounded_logits_are_bounded_and_near_identity() -> None:
    z = torch.linspace(-100, 100, 1001, dtype=torch.float64)
    zh = bounded_logits(z, 4.0)
    assert zh.abs().max() <= 4.0
    small = torch.linspace(-0.1, 0.1, 11, dtype=torch.float64)
    assert torch.allclose(bounded_logits(small, 4.0), small, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"margin": -1.0, "b": 1.0}, "margin=-1.0"),
        ({"margin": float("nan"), "b": 1.0}, "margin=nan"),
        ({"margin": 1.0, "b": 0.0}, "b=0.0"),
        ({"margin": 1.0, "b": -2.0}, "b=-2.0"),
        ({"margin": 1.0, "b": float("inf")}, "b=inf"),
        ({"margin": 1.0, "b": "2"}, "b='2'"),
    ],
)
def test_mcel_rejects_bad_parameters(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        MCELoss(**kwargs)
    with pytest.raises(ValueError, match=needle):
        mcel_loss(torch.zeros(1, 2), torch.tensor([0]), **kwargs)


def test_reduction_and_registry_errors() -> None:
    with pytest.raises(ValueError, match="reduction='avg'"):
        MCELoss(1.0, 1.0, reduction="avg")
    with pytest.raises(ValueError, match="known losses are cel, mcel, mhl"):
        create_loss("focal")
    with pytest.raises(ValueError, match="does not take margin"):
        create_loss("cel", margin=1.0)
    with pytest.raises(ValueError, match="needs margin"):
        create_loss("mcel", b=1.0)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("mcel", ())(MCELoss)
    assert list_losses() == ["cel", "mcel", "mhl"]
    assert loss_params("mcel") == ("margin", "b")
    # None kwargs are dropped so unset keys take defaults / are not passed.
    assert isinstance(create_loss("cel", margin=None, b=None), nn.Module)
