"""Training: reaches the accuracy the demo promises on digits, is seeded, resumable, and measures MLM."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mcel_search.core.data import load_dataset
from mcel_search.core.evaluation import evaluate_accuracy
from mcel_search.core.experiment import TrialSpec, run_trial
from mcel_search.core.layers import quantized_layers
from mcel_search.core.losses import create_loss
from mcel_search.core.models import create_model
from mcel_search.core.training import (
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    seed_everything,
    top2_margin,
)


def test_top2_margin_by_hand() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.5], [-1.0, -4.0, 0.0]])
    assert torch.allclose(top2_margin(logits), torch.tensor([0.5, 1.0]))


@pytest.mark.parametrize("loss", ["cel", "mcel"])
def test_digits_4bit_reaches_90_percent(loss: str) -> None:
    params = {"margin": 4.0, "b": 8.0} if loss == "mcel" else {}
    spec = TrialSpec(
        arch="small_cnn",
        dataset="digits",
        bits=4,
        loss=loss,
        loss_params=params,
        train=TrainConfig(epochs=8, batch_size=64),
    )
    result = run_trial(spec)
    assert result.clean_acc >= 0.90
    assert [h.epoch for h in result.history] == list(range(1, 9))
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_mlm_is_mean_top2_margin_of_the_training_forward_passes() -> None:
    # With lr tiny, the model hardly changes during the epoch, so the epoch's MLM must match an independent
    # computation of mean(top1 - top2) over the training set in train mode (BatchNorm batch statistics).
    data = load_dataset("synthetic", n_train=256, n_test=64, image_size=8, seed=0)
    seed_everything(0)
    model = create_model("small_cnn", bits=4, num_classes=data.num_classes, in_channels=1, image_size=8)
    cfg = TrainConfig(epochs=1, batch_size=256, lr=1e-12)
    trainer = Trainer(model, data.train, create_loss("cel"), cfg)
    x, y = data.train.tensors
    order = torch.randperm(
        len(y),
        generator=torch.Generator().manual_seed(
            __import__("mcel_search.core.biterrors").core.biterrors.derive_seed(0, 1)
        ),
    )
    model.train()
    with torch.no_grad():
        expected = top2_margin(model(x[order])).mean().item()
    stats = trainer.train_epoch()
    assert stats.mlm == pytest.approx(expected, rel=1e-4)
    assert 0.0 <= stats.train_acc <= 1.0


def test_same_seed_same_model_and_resume_equals_uninterrupted() -> None:
    data = load_dataset("digits")

    def fresh(epochs: int) -> Trainer:
        seed_everything(5)
        model = create_model("small_cnn", bits=4, num_classes=10, in_channels=1, image_size=8)
        return Trainer(
            model,
            data.train,
            create_loss("mcel", margin=2.0, b=4.0),
            TrainConfig(epochs=epochs, batch_size=128, seed=5, step_size=1),
        )

    full = fresh(3)
    full.fit()
    part = fresh(3)
    part.train_epoch()
    state = part.state_dict()
    resumed = fresh(3)
    resumed.load_state_dict(state)
    resumed.fit()
    for (k, a), (_, b) in zip(
        full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    assert [h.train_loss for h in full.history] == [h.train_loss for h in resumed.history]
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5**3)
    other = fresh(1)
    other.config = replace(other.config, seed=6)
    other.fit()
    assert other.history[0].train_loss != full.history[0].train_loss


def test_nan_loss_raises_training_diverged() -> None:
    data = load_dataset("synthetic", n_train=64, n_test=16, image_size=8, seed=1)
    model = create_model("small_cnn", bits=4, num_classes=data.num_classes, in_channels=1, image_size=8)

    class NanLoss(torch.nn.Module):
        def forward(self, logits, target):
            return logits.sum() * float("nan")

    trainer = Trainer(model, data.train, NanLoss(), TrainConfig(epochs=2, batch_size=32))
    with pytest.raises(TrainingDivergedError, match="epoch 1"):
        trainer.train_epoch()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"epochs": 0}, "epochs=0"),
        ({"batch_size": -1}, "batch_size=-1"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"gamma": 1.5}, "gamma=1.5"),
        ({"train_ber": 0.6}, "train_ber=0.6"),
        ({"train_ber": -0.1}, "train_ber=-0.1"),
        ({"train_ber": True}, "train_ber=True"),
    ],
)
def test_train_config_validation(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        TrainConfig(**kwargs)


def test_unavailable_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    with pytest.raises(ValueError, match="CUDA is not present"):
        Trainer(torch.nn.Linear(2, 2), [], create_loss("cel"), TrainConfig(device="cuda"))


def test_evaluate_accuracy_counts_by_hand() -> None:
    class Fixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.stack([x[:, 0], -x[:, 0]], dim=1)

    x = torch.tensor([[1.0], [-1.0], [2.0], [-3.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert evaluate_accuracy(Fixed(), [(x, y)]) == 0.5


# ------------------------------------------------------------------------------- bit-error training


def test_straight_through_substitute_forward_is_corrupted_gradient_is_by_hand() -> None:
    """y = x W_e^T with W_e the flipped weight; dL/dW for L = sum(c * y) is c^T x (as for any linear layer)."""
    from mcel_search.core.biterrors import flip_bits
    from mcel_search.core.layers import QuantLinear
    from mcel_search.core.quantization import dequantize

    torch.manual_seed(0)
    layer = QuantLinear(6, 3, bits=4, bias=False)
    x = torch.randn(5, 6)
    c = torch.randn(5, 3)
    qt = layer.quantized_weight()
    flipped = qt.with_codes(flip_bits(qt.codes, 4, 0.3, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(flipped.codes, qt.codes)
    layer.substitute_codes(flipped, straight_through=True)
    y = layer(x)
    torch.testing.assert_close(y, x @ dequantize(flipped).T)
    (c * y).sum().backward()
    torch.testing.assert_close(layer.weight.grad, c.T @ x)
    # evaluation mode of the hook: a constant weight, no gradient reaches the float weight
    layer.substitute_codes(flipped)
    assert not layer(x).requires_grad
    layer.clear_substitute()
    torch.testing.assert_close(layer(x), x @ dequantize(qt).T)


def _digits_trainer(train_ber: float, seed: int = 3, epochs: int = 2) -> Trainer:
    data = load_dataset("digits")
    seed_everything(seed)
    model = create_model("small_cnn", bits=4, num_classes=10, in_channels=1, image_size=8)
    config = TrainConfig(epochs=epochs, batch_size=128, seed=seed, train_ber=train_ber)
    return Trainer(model, data.train, create_loss("cel"), config)


def test_bit_error_training_is_seeded_fresh_per_step_and_restores_weights(monkeypatch) -> None:
    import mcel_search.core.training as training

    seeds: list[int] = []
    real = training.inject_bit_errors

    def spy(model, ber, seed, *args, **kwargs):
        assert ber == 0.01 and kwargs["straight_through"] is True
        seeds.append(seed)
        return real(model, ber, seed, *args, **kwargs)

    monkeypatch.setattr(training, "inject_bit_errors", spy)
    a = _digits_trainer(0.01)
    a.fit()
    steps_per_epoch = -(-len(load_dataset("digits").train) // 128)
    assert len(seeds) == 2 * steps_per_epoch and len(set(seeds)) == len(seeds)  # a new realization per step
    # no substitute is left behind: the trained model runs on its own weights
    assert all(layer._substitute is None for _, layer in quantized_layers(a.model))
    b = _digits_trainer(0.01)
    b.fit()
    for (k, va), (_, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(va, vb), k  # same seed, same flips, same model
    clean = _digits_trainer(0.0)
    clean.fit()
    assert clean.history[-1].train_loss != a.history[-1].train_loss


def test_bit_error_training_at_half_the_bits_learns_nothing() -> None:
    """At p = 0.5 every stored bit is a coin toss: the forward pass sees random weights, training accuracy
    stays near chance (0.1 for 10 classes), while clean training of the same model gets far above it."""
    noisy = _digits_trainer(0.5, epochs=3)
    noisy.fit()
    clean = _digits_trainer(0.0, epochs=3)
    clean.fit()
    assert noisy.history[-1].train_acc < 0.3
    assert clean.history[-1].train_acc > 0.6


def test_progress_bar_is_tqdms_and_yields_every_batch(capsys) -> None:
    """train.progress draws tqdm's bar on stderr and passes every batch through unchanged."""
    from mcel_search.core.training import _progress

    batches = list(range(7))
    assert list(_progress(batches, "epoch 1/2")) == batches
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "7/7" in err


@pytest.mark.parametrize(("n", "batch_size", "seed"), [(10, 3, 0), (64, 64, 1), (1000, 128, 7), (5, 8, 2)])
def test_tensor_batches_are_the_dataloaders_bit_for_bit(n: int, batch_size: int, seed: int) -> None:
    """The in-memory fast path yields exactly DataLoader(shuffle=True, generator=...)'s batches."""
    from torch.utils.data import DataLoader, TensorDataset

    from mcel_search.core.training import TensorBatches

    g = torch.Generator().manual_seed(123)
    ds = TensorDataset(torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 10, (n,), generator=g))
    ref = list(
        DataLoader(ds, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    )
    fast = TensorBatches(ds, batch_size, torch.Generator().manual_seed(seed))
    got = list(fast)
    assert len(fast) == len(ref) == len(got)
    for (xa, ya), (xb, yb) in zip(ref, got, strict=True):
        assert xa.dtype == xb.dtype and ya.dtype == yb.dtype
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_trainer_uses_the_fast_path_only_for_in_memory_tensors() -> None:
    from torch.utils.data import DataLoader, Subset, TensorDataset

    from mcel_search.core.training import TensorBatches, TrainConfig, Trainer

    ds = TensorDataset(torch.randn(8, 3), torch.randint(0, 2, (8,)))
    model = torch.nn.Linear(3, 2)
    fast = Trainer(model, ds, torch.nn.CrossEntropyLoss(), TrainConfig(epochs=1, device="cpu"))
    assert isinstance(fast._loader(1), TensorBatches)
    other = Trainer(
        model, Subset(ds, [0, 1, 2]), torch.nn.CrossEntropyLoss(), TrainConfig(epochs=1, device="cpu")
    )
    assert isinstance(other._loader(1), DataLoader)
