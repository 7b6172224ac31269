"""The cheap robustness estimate (core.robustness_estimate): hand-worked cases, a brute-force twin of the
empirical estimate, and the properties a search relies on (seeded, disjoint seeds, model left as it was)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from mcel_search.core.biterrors import inject_bit_errors
from mcel_search.core.errors import BadInputError
from mcel_search.core.evaluation import cache_batches, realization_seed
from mcel_search.core.experiment import TrialSpec, build
from mcel_search.core.robustness_estimate import (
    ESTIMATES,
    MAX_ESTIMATE_REPS,
    empirical_pass_probability,
    estimate_seed,
    gauss_pass_probability,
    margin_shift_estimate,
    true_class_margin,
)
from mcel_search.core.training import TrainConfig, Trainer


def test_true_class_margin_by_hand() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.5, 2.0, -1.0], [1.0, 1.0, 0.0]])
    target = torch.tensor([0, 0, 1])
    # 3 - 2 = 1 (right); 0.5 - 2 = -1.5 (wrong); tie 1 - 1 = 0
    assert true_class_margin(logits, target).tolist() == [1.0, -1.5, 0.0]
    with pytest.raises(BadInputError, match="C >= 2"):
        true_class_margin(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))


def test_empirical_pass_probability_by_hand_and_by_brute_force() -> None:
    # m = 1: of d in {-2, 0.5} only 0.5 keeps it positive (1/2); m = -1: none (0); m = 3: both (1)
    assert empirical_pass_probability(torch.tensor([1.0, -1.0, 3.0]), torch.tensor([-2.0, 0.5])) == 0.5
    # a tie m + d = 0 counts as wrong
    assert empirical_pass_probability(torch.tensor([1.0]), torch.tensor([-1.0])) == 0.0
    g = torch.Generator().manual_seed(0)
    m, d = torch.randn(200, generator=g), torch.randn(70, generator=g).round(decimals=1)
    brute = ((m[:, None] + d[None, :]) > 0).double().mean()
    assert empirical_pass_probability(m, d) == pytest.approx(float(brute), abs=1e-12)
    # no changes: the fraction of positive margins
    assert empirical_pass_probability(torch.tensor([1.0, -1.0, 0.0, 2.0]), torch.tensor([])) == 0.5


def test_gauss_pass_probability_against_scipy() -> None:
    m = [0.3, -0.2, 1.5]
    want = sum(stats.norm.cdf((x + 0.1) / 0.4) for x in m) / 3
    assert gauss_pass_probability(torch.tensor(m, dtype=torch.float64), 0.1, 0.4) == pytest.approx(
        want, abs=1e-12
    )
    assert gauss_pass_probability(torch.tensor(m), -0.5, 0.0) == pytest.approx(1 / 3)  # only 1.5 - 0.5 > 0


@pytest.fixture(scope="module")
def trained():
    spec = TrialSpec(
        arch="small_cnn",
        dataset="digits",
        bits=4,
        loss="mcel",
        loss_params={"margin": 4.0, "b": 8.0},
        train=TrainConfig(epochs=2, batch_size=64, device="cpu"),
        limit_train=400,
        limit_test=200,
    )
    model, loss, data = build(spec)
    trainer = Trainer(model, data.train, loss, spec.train)
    for _ in range(2):
        trainer.train_epoch()
    return model, cache_batches(data.test, torch.device("cpu"))


def _accuracy(model, batches) -> float:
    with torch.no_grad():
        right = sum(int((model(x).argmax(-1) == y).sum()) for x, y in batches)
    return right / sum(y.numel() for _, y in batches)


def test_at_ber_zero_every_estimate_is_the_clean_accuracy(trained) -> None:
    model, batches = trained
    model.eval()
    clean = _accuracy(model, batches)
    e = margin_shift_estimate(model, batches, 0.0, reps=2, seed=3)
    for name in ("margin_shift", "gauss", "frac_above", "flip_acc"):
        assert getattr(e, name) == pytest.approx(clean), name
    assert e.logit_shift == 0.0 and e.margin_change_std == 0.0 and math.isinf(e.ratio)


def test_seeded_disjoint_from_the_full_measurement_and_the_model_restored(trained) -> None:
    model, batches = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    a = margin_shift_estimate(model, batches, 0.03, reps=2, seed=5)
    b = margin_shift_estimate(model, batches, 0.03, reps=2, seed=5)
    c = margin_shift_estimate(model, batches, 0.03, reps=2, seed=6)
    assert a == b and a != c
    assert model.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the estimate's realizations are not the full measurement's
    assert {estimate_seed(5, j) for j in range(8)}.isdisjoint({realization_seed(5, j) for j in range(100)})
    # flip_acc is the mean accuracy of exactly the estimate's own realizations (recomputed here)
    model.eval()
    accs = []
    for j in range(2):
        with inject_bit_errors(model, 0.03, estimate_seed(5, j)):
            accs.append(_accuracy(model, batches))
    model.train()
    assert a.flip_acc == pytest.approx(sum(accs) / 2, abs=1e-12)
    # flips lower the margins on average and move the logits
    assert a.margin_change_mean < 0 < a.logit_shift
    assert 0.0 <= a.margin_shift <= 1.0 and 0.0 <= a.gauss <= 1.0
    assert set(a.as_metrics()) == {
        "ber_acc_est",
        *(f"ber_acc_est_{n}" for n in ESTIMATES[1:]),
        "ber_acc_est_logit_shift",
    }
    assert a.as_metrics()["ber_acc_est"] == a.value == a.margin_shift


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ber": 1.5}, "bit error rate"),
        ({"ber": math.nan}, "bit error rate"),
        ({"reps": 0}, "1..16"),
        ({"reps": MAX_ESTIMATE_REPS + 1}, "1..16"),
        ({"reps": True}, "1..16"),
    ],
)
def test_bad_arguments_are_named(trained, kwargs, match) -> None:
    model, batches = trained
    args = {"ber": 0.01, "reps": 2, **kwargs}
    with pytest.raises(BadInputError, match=match):
        margin_shift_estimate(model, batches, args["ber"], args["reps"])
    with pytest.raises(BadInputError, match="no samples"):
        margin_shift_estimate(model, [], 0.01)
