"""search/epoch_ahead.py: the next epoch in a thread, its stats or its exception handed back, cancelled
before a step, with the creator's torch thread count, the idle time it reports by hand-worked cases, and
one long-lived thread for the epochs of a process (a second thread only while that one is busy)."""

from __future__ import annotations

import threading

import pytest
import torch

from mcel_search.core.data import load_dataset
from mcel_search.core.losses import create_loss
from mcel_search.core.models import create_model
from mcel_search.core.training import TrainConfig, Trainer, TrainingCancelledError, seed_everything
from mcel_search.search.epoch_ahead import THREAD_NAME, EpochAhead, running_epochs


def make_trainer(batch_size: int = 32) -> Trainer:
    data = load_dataset("synthetic", n_train=128, n_test=16, image_size=8, seed=0)
    seed_everything(0)
    model = create_model("small_cnn", bits=4, num_classes=data.num_classes, in_channels=1, image_size=8)
    return Trainer(model, data.train, create_loss("cel"), TrainConfig(epochs=3, batch_size=batch_size))


def weights(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_the_epoch_ahead_is_the_epoch_the_trainer_would_have_run() -> None:
    seen: list[int] = []
    ahead_trainer, plain = make_trainer(), make_trainer()
    stats = EpochAhead(ahead_trainer, seen.append).result()
    expected = plain.train_epoch()
    assert seen == [1]  # before_epoch(k) with k the epoch about to run, in the thread
    assert ahead_trainer.epoch == 1 and stats.epoch == 1 and stats.train_loss == expected.train_loss
    for a, b in zip(weights(ahead_trainer), weights(plain), strict=True):
        assert torch.equal(a, b)


def test_an_exception_of_the_epoch_is_raised_by_result_and_nothing_trained() -> None:
    trainer = make_trainer()
    before = weights(trainer)

    def fault(k: int) -> None:
        raise ValueError(f"injected at {k}")

    ahead = EpochAhead(trainer, fault)
    with pytest.raises(ValueError, match="injected at 1"):
        ahead.result()
    assert trainer.epoch == 0 and not trainer.history
    assert all(torch.equal(a, b) for a, b in zip(before, weights(trainer), strict=True))


def test_cancel_stops_before_the_next_step_and_joins() -> None:
    """Cancelled while held before its first step: no optimizer step taken, no epoch counted, thread gone.
    A trainer of 64 two-sample steps, so an epoch run to its end would have moved the weights."""
    trainer = make_trainer(batch_size=2)
    before = weights(trainer)
    go = threading.Event()
    ahead = EpochAhead(trainer, lambda k: go.wait(30))
    assert ahead.alive()
    stop_then_go = threading.Timer(0.2, go.set)  # cancel() sets the stop flag, then the hold is released
    stop_then_go.start()
    ahead.cancel()
    assert not ahead.alive()
    assert trainer.epoch == 0 and not trainer.history
    assert all(torch.equal(a, b) for a, b in zip(before, weights(trainer), strict=True))
    assert isinstance(ahead._error, TrainingCancelledError)
    # the same trainer, not cancelled, does move them (so the check above can fail)
    EpochAhead(trainer, lambda k: None).result()
    assert not all(torch.equal(a, b) for a, b in zip(before, weights(trainer), strict=True))


def test_the_thread_trains_with_the_creators_torch_thread_count() -> None:
    fresh: list[int] = []
    probe = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    probe.start()
    probe.join()
    saved = torch.get_num_threads()
    wanted = 1 if fresh[0] != 1 else 2  # a count a new thread would not have by itself
    inside: list[int] = []
    try:
        torch.set_num_threads(wanted)
        EpochAhead(make_trainer(), lambda k: inside.append(torch.get_num_threads())).result()
    finally:
        torch.set_num_threads(saved)
    assert inside == [wanted]


def test_idle_time_by_hand() -> None:
    """``idle_until(now)`` is ``now - done_at`` once the epoch has ended, 0 before it ends or for a
    ``now`` before its end."""
    hold = threading.Event()
    ahead = EpochAhead(make_trainer(), lambda k: hold.wait(30))
    assert ahead.done_at is None and ahead.idle_until(1e9) == 0.0  # still running: the compute never idled
    hold.set()
    ahead.result()
    done = ahead.done_at
    assert done is not None
    assert ahead.idle_until(done + 2.5) == pytest.approx(2.5)
    assert ahead.idle_until(done - 1.0) == 0.0


def test_consecutive_epochs_run_on_one_long_lived_thread() -> None:
    """Three epochs ahead one after the other: the same thread (the process's epoch thread, alive and
    idle between them), not the caller's; the weights are those of three plain epochs."""
    idents: list[int] = []
    trainer, plain = make_trainer(), make_trainer()
    for _ in range(3):
        EpochAhead(trainer, lambda k: idents.append(threading.get_ident())).result()
        plain.train_epoch()
    assert len(idents) == 3 and len(set(idents)) == 1 and idents[0] != threading.get_ident()
    [thread] = [t for t in threading.enumerate() if t.ident == idents[0]]
    assert thread.name == THREAD_NAME and thread.daemon and thread.is_alive()
    assert running_epochs() == 0
    assert trainer.epoch == plain.epoch == 3
    assert all(torch.equal(a, b) for a, b in zip(weights(trainer), weights(plain), strict=True))


def test_a_second_epoch_while_the_thread_is_busy_gets_its_own_thread() -> None:
    """Two trainers' epochs ahead at once (two trials in one process): the second does not wait for the
    first (it runs while the first is held), runs on another thread, and both hand back their epoch."""
    hold = threading.Event()
    first_thread: list[int] = []
    second_thread: list[int] = []

    def held(k: int) -> None:
        first_thread.append(threading.get_ident())
        hold.wait(30)

    a, b = make_trainer(), make_trainer()
    first = EpochAhead(a, held)
    second = EpochAhead(b, lambda k: second_thread.append(threading.get_ident()))
    second_stats = second.result()  # returns while the first is still held
    assert first.alive() and running_epochs() == 1
    hold.set()
    first_stats = first.result()
    assert running_epochs() == 0
    assert first_thread != second_thread and len(first_thread) == len(second_thread) == 1
    assert first_stats.epoch == second_stats.epoch == 1
    assert first_stats.train_loss == second_stats.train_loss  # same seed, same data: the same epoch


def test_the_long_lived_thread_takes_each_epochs_creator_thread_count() -> None:
    """The reused thread does not keep the previous epoch's torch thread count: each epoch trains with
    the count its creator had when it was started."""
    saved = torch.get_num_threads()
    inside: list[int] = []
    trainer = make_trainer()
    try:
        for wanted in (2, 1, 2):
            torch.set_num_threads(wanted)
            EpochAhead(trainer, lambda k: inside.append(torch.get_num_threads())).result()
    finally:
        torch.set_num_threads(saved)
    assert inside == [2, 1, 2]
