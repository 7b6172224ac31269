"""Training data loading: one epoch's batches of an in-memory data set, fast path vs ``DataLoader``.

* ``loader.epoch``: iterating every shuffled batch of a FashionMNIST-sized ``TensorDataset`` (60,000 x
  1 x 28 x 28 float32, batch 256) through :class:`core.training.TensorBatches` (one tensor index per
  batch), against the ``DataLoader(shuffle=True, generator=...)`` it replaced (a fetch and a collate per
  sample), the same seed: the batches are bit for bit equal (``tests/core/test_training.py``). Only the
  loader is timed (no model), so the figure is the loader overhead a trial no longer pays per epoch.
  Target <= 0.5x.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import MIN_REPEATS, Row, interleaved, median, paired_ratio
from mcel_search.core.training import TensorBatches

LOADER_TARGET = 0.5


def bench_loader(quick: bool, device: torch.device) -> list[Row]:
    n, repeats = (10_000, MIN_REPEATS) if quick else (60_000, 7)
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))

    def consume(batches) -> None:
        for x, y in batches:
            x.sum(), y.sum()  # touch the batch (as the model would)

    def old() -> None:
        consume(DataLoader(ds, batch_size=256, shuffle=True, generator=torch.Generator().manual_seed(1)))

    def fast() -> None:
        consume(TensorBatches(ds, 256, torch.Generator().manual_seed(1)))

    t = interleaved({"fast": fast, "old": old}, repeats, torch.device("cpu"), warmup=1)
    return [
        Row(
            "loader",
            "loader.epoch",
            f"one epoch of batches, TensorBatches ({n:,} x 1x28x28, batch 256)",
            "DataLoader(shuffle=True) of the same tensors, same seed",
            paired_ratio(t["fast"], t["old"]),
            ("<=", LOADER_TARGET),
            detail=f"median {median(t['fast']):.2f} s vs {median(t['old']):.2f} s per epoch, {repeats} rounds, cpu",
        )
    ]
