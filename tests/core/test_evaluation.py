"""BER sweep: reproducible, paired (seeds shared across models), exact at BER 0, model left untouched."""

from __future__ import annotations

import math

import pytest
import torch

from mcel_search.core.biterrors import derive_seed
from mcel_search.core.data import load_dataset
from mcel_search.core.evaluation import (
    ber_sweep,
    evaluate_accuracy,
    margin_statistics,
    realization_seed,
    summarize,
)
from mcel_search.core.experiment import TrialSpec, run_trial
from mcel_search.core.training import TrainConfig


def _model(spec_loss: str = "cel", seed: int = 0):
    from mcel_search.core.models import create_model
    from mcel_search.core.training import seed_everything

    seed_everything(seed)
    return create_model("small_cnn", bits=4, num_classes=10, in_channels=1, image_size=8).eval()


def test_ber_zero_equals_clean_accuracy_exactly_and_sweep_is_reproducible() -> None:
    data = load_dataset("digits")
    model = _model()
    clean = evaluate_accuracy(model, data.test)
    a = ber_sweep(model, data.test, [0.0, 0.01, 0.05], reps=4, seed=11)
    b = ber_sweep(model, data.test, [0.0, 0.01, 0.05], reps=4, seed=11)
    c = ber_sweep(model, data.test, [0.0, 0.01, 0.05], reps=4, seed=12)
    assert a.accuracies(0.0) == [clean] * 4
    assert a.at(0.0).std == 0.0 and a.at(0.0).mean == clean
    assert a.records == b.records
    assert a.accuracies(0.05) != c.accuracies(0.05)
    assert len(a.records) == 12


def test_realization_seeds_depend_on_seed_and_rep_only() -> None:
    data = load_dataset("digits")
    r1 = ber_sweep(_model(seed=0), data.test, [0.01, 0.02], reps=3, seed=7)
    r2 = ber_sweep(_model(seed=1), data.test, [0.02], reps=3, seed=7)
    seeds1 = {(r["ber"], r["rep"]): r["seed"] for r in r1.records}
    for r in r2.records:
        assert (
            r["seed"] == seeds1[(0.02, r["rep"])] == realization_seed(7, r["rep"]) == derive_seed(7, r["rep"])
        )
    assert seeds1[(0.01, 1)] == seeds1[(0.02, 1)]


def test_sweep_leaves_model_untouched_and_mode_restored() -> None:
    data = load_dataset("digits")
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ber_sweep(model, data.test, [0.1], reps=2, seed=0)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_errors_hurt_and_summary_statistics_match_definition() -> None:
    data = load_dataset("digits")
    result = run_trial(
        TrialSpec(arch="small_cnn", loss="cel", bits=4, train=TrainConfig(epochs=4, batch_size=64))
    )
    sweep = ber_sweep(result.model, data.test, [0.0, 0.2], reps=5, seed=3)
    accs = sweep.accuracies(0.2)
    s = sweep.at(0.2)
    mean = sum(accs) / 5
    assert s.mean == pytest.approx(mean)
    assert s.std == pytest.approx(math.sqrt(sum((a - mean) ** 2 for a in accs) / 4))
    assert s.min == min(accs) and s.max == max(accs)
    assert sweep.at(0.0).mean == pytest.approx(result.clean_acc)
    assert s.mean < sweep.at(0.0).mean - 0.2  # a 20% BER destroys a 4-bit network


def test_summarize_by_hand() -> None:
    s = summarize(0.01, [0.5, 0.7, 0.9])
    assert s.mean == pytest.approx(0.7) and s.std == pytest.approx(0.2) and s.min == 0.5 and s.max == 0.9
    assert summarize(0.0, [0.4]).std == 0.0


@pytest.mark.parametrize(
    ("bers", "reps", "p10", "needle"),
    [
        ([], 1, None, "empty"),
        ([-0.1], 1, None, "-0.1"),
        ([1.5], 1, None, "1.5"),
        ([0.1], 0, None, "reps=0"),
        ([0.1], 1, 2.0, "2.0"),
    ],
)
def test_sweep_argument_validation(bers, reps, p10, needle) -> None:
    data = load_dataset("synthetic", n_train=16, n_test=8, image_size=8, seed=0)
    with pytest.raises(ValueError, match=needle):
        ber_sweep(_model(), data.test, bers, reps, seed=0, p10=p10)


def test_margin_statistics_by_hand() -> None:
    class Fixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x

    x = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5], [5.0, 0.0, 4.0]])
    y = torch.tensor([0, 0, 0])
    stats = margin_statistics(Fixed(), [(x, y)])
    assert stats["margins"] == pytest.approx([2.0, 0.5, 1.0])
    assert stats["mean"] == pytest.approx(3.5 / 3)
    assert stats["mean_correct"] == pytest.approx(1.5) and stats["mean_wrong"] == pytest.approx(0.5)
    assert stats["median"] == pytest.approx(1.0)
