"""scikit-learn's embedded 8x8 handwritten digits (1,797 images, 10 classes): needs no files at all."""

from __future__ import annotations

import os

import numpy as np

from .registry import DatasetBundle, make_bundle, register_dataset

#: Share of the 1,797 images held out as the test split (stratified).
DIGITS_TEST_FRACTION = 0.2


@register_dataset("digits")
def load_digits_dataset(
    *,
    root: str | os.PathLike | None,
    split_seed: int,
    download: bool,
    limit_train: int | None,
    limit_test: int | None,
    test_fraction: float = DIGITS_TEST_FRACTION,
) -> DatasetBundle:
    """Digits, 1x8x8: pixels 0..16 scaled to [0, 1], then normalized; stratified split by ``split_seed``.

    With the default ``test_fraction`` 0.2: 1,437 train / 360 test images. ``root`` and ``download`` are
    unused (the data ship inside scikit-learn). scikit-learn is imported here, not with the module: it
    pulls in pandas, which importing ``mcel_search.core`` must not (``tests/test_layering.py``).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    images = raw.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    labels = raw.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=split_seed
    )
    return make_bundle(
        "digits",
        (xtr, ytr),
        (xte, yte),
        num_classes=10,
        scale=16.0,
        limit_train=limit_train,
        limit_test=limit_test,
        split_seed=split_seed,
        source="sklearn.datasets.load_digits",
    )
