"""``synthetic``: a seeded, tiny, learnable image set for tests and smoke runs (no files).

Every class ``c`` has a prototype image ``P_c`` with entries ``+-1`` drawn from the seed; a sample of
class ``c`` is ``signal * P_c + noise * N(0, 1)``. Classes are balanced (``i % num_classes``, then shuffled).
The train and test splits share the prototypes and draw independent noise, so what a model learns on the
train split carries over to the test split.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import BadInputError
from .registry import DatasetBundle, make_bundle, register_dataset


def make_synthetic(
    n: int,
    *,
    num_classes: int,
    image_size: int,
    in_channels: int,
    signal: float,
    noise: float,
    rng,
    prototypes,
) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    shape = (n, in_channels, image_size, image_size)
    images = signal * prototypes[labels] + noise * rng.standard_normal(shape)
    return images.astype(np.float32), labels


@register_dataset("synthetic")
def load_synthetic(
    *,
    root: str | os.PathLike | None,
    split_seed: int,
    download: bool,
    limit_train: int | None,
    limit_test: int | None,
    n_train: int = 256,
    n_test: int = 128,
    num_classes: int = 10,
    image_size: int = 8,
    in_channels: int = 1,
    signal: float = 1.0,
    noise: float = 1.0,
    seed: int = 0,
) -> DatasetBundle:
    """Class prototypes plus Gaussian noise; everything is a function of ``seed`` (``split_seed`` only
    picks the ``limit_*`` subsets). Normalized like every other set (train statistics)."""
    for key, value in {
        "n_train": n_train,
        "n_test": n_test,
        "image_size": image_size,
        "in_channels": in_channels,
    }.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInputError(f"synthetic: {key}={value!r} must be an integer >= 1")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise BadInputError(f"synthetic: num_classes={num_classes!r} must be an integer >= 2")
    rng = np.random.default_rng(seed)
    prototypes = rng.choice([-1.0, 1.0], size=(num_classes, in_channels, image_size, image_size))
    common = dict(
        num_classes=num_classes, image_size=image_size, in_channels=in_channels, signal=signal, noise=noise
    )
    train = make_synthetic(n_train, rng=rng, prototypes=prototypes, **common)
    test = make_synthetic(n_test, rng=rng, prototypes=prototypes, **common)
    return make_bundle(
        "synthetic",
        train,
        test,
        num_classes=num_classes,
        scale=1.0,
        limit_train=limit_train,
        limit_test=limit_test,
        split_seed=split_seed,
        source=f"generated (seed={seed})",
    )
