"""SVHN, CIFAR10 and Imagenette through torchvision, in torchvision's folder layouts under the data root.

Nothing is downloaded unless ``download=True``; downloads run under a file lock on the root so that
parallel trials on one node do not fetch the same archive twice. Without the files and without
``download`` a :class:`~core.data.registry.DatasetNotFoundError` names the files and the directory.

Layouts (``<root>`` from the argument, ``MCEL_DATA_ROOT`` or ``~/.cache/mcel-search/data``):

* SVHN: ``<root>/train_32x32.mat``, ``<root>/test_32x32.mat`` (the ``extra`` split is not used);
* CIFAR10: ``<root>/cifar-10-batches-py/``;
* Imagenette: ``<root>/imagenette2-160/{train,val}/`` (size ``160px``; ``320px`` and ``full`` also work).
  Images are resized (shorter side) and center-cropped to ``image_size`` (64, paper Table I) once; the
  result is cached as ``<root>/mcel-cache/imagenette-<size>-<image_size>.npz``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .registry import (
    DatasetBundle,
    DatasetNotFoundError,
    file_lock,
    make_bundle,
    missing_message,
    register_dataset,
    resolve_data_root,
)

log = logging.getLogger(__name__)


def _require(name: str, base: Path, paths: list[Path], download: bool, fetch) -> None:
    """Make sure every path exists: download under the lock when allowed, else raise DatasetNotFoundError."""
    if all(p.exists() for p in paths):
        return
    if download:
        with file_lock(base, name):
            if not all(p.exists() for p in paths):
                fetch()
        if all(p.exists() for p in paths):
            return
    rel = [str(p.relative_to(base)) for p in paths]
    how = f"fetch them with torchvision on a machine with internet access and copy them into {base}."
    raise DatasetNotFoundError(missing_message(name, rel, [base], how))


@register_dataset("svhn")
def load_svhn(
    *,
    root: str | os.PathLike | None,
    split_seed: int,
    download: bool,
    limit_train: int | None,
    limit_test: int | None,
) -> DatasetBundle:
    """SVHN, 3x32x32, 73,257 train / 26,032 test (paper Table I, with VGG7). Label 0 is digit 0."""
    from torchvision.datasets import SVHN

    base = resolve_data_root(root)
    files = [base / "train_32x32.mat", base / "test_32x32.mat"]

    def fetch() -> None:
        for split in ("train", "test"):
            SVHN(str(base), split=split, download=True)

    _require("svhn", base, files, download, fetch)
    train, test = (SVHN(str(base), split=s) for s in ("train", "test"))
    return make_bundle(
        "svhn",
        (np.asarray(train.data), np.asarray(train.labels)),
        (np.asarray(test.data), np.asarray(test.labels)),
        num_classes=10,
        scale=255.0,
        limit_train=limit_train,
        limit_test=limit_test,
        split_seed=split_seed,
        source=str(base),
    )


@register_dataset("cifar10")
def load_cifar10(
    *,
    root: str | os.PathLike | None,
    split_seed: int,
    download: bool,
    limit_train: int | None,
    limit_test: int | None,
) -> DatasetBundle:
    """CIFAR10, 3x32x32, 50,000 train / 10,000 test (paper Table I, with MobileNetV2)."""
    from torchvision.datasets import CIFAR10

    base = resolve_data_root(root)
    folder = base / "cifar-10-batches-py"
    files = [folder / f"data_batch_{i}" for i in range(1, 6)] + [folder / "test_batch"]

    def fetch() -> None:
        CIFAR10(str(base), train=True, download=True)

    _require("cifar10", base, files, download, fetch)
    train, test = (CIFAR10(str(base), train=t) for t in (True, False))
    return make_bundle(
        "cifar10",
        (np.asarray(train.data).transpose(0, 3, 1, 2), np.asarray(train.targets)),
        (np.asarray(test.data).transpose(0, 3, 1, 2), np.asarray(test.targets)),
        num_classes=10,
        scale=255.0,
        limit_train=limit_train,
        limit_test=limit_test,
        split_seed=split_seed,
        source=str(folder),
    )


def _decode_resized(samples: list[tuple[str, int]], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode images, resize the shorter side to ``image_size`` and center-crop: uint8 (N, 3, S, S)."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    images = np.empty((len(samples), 3, image_size, image_size), dtype=np.uint8)
    labels = np.empty(len(samples), dtype=np.int64)
    for i, (path, label) in enumerate(samples):
        with Image.open(path) as img:
            img = TF.center_crop(TF.resize(img.convert("RGB"), image_size), [image_size, image_size])
            images[i] = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
        labels[i] = label
    return images, labels


@register_dataset("imagenette")
def load_imagenette(
    *,
    root: str | os.PathLike | None,
    split_seed: int,
    download: bool,
    limit_train: int | None,
    limit_test: int | None,
    size: str = "160px",
    image_size: int = 64,
) -> DatasetBundle:
    """Imagenette (10 ImageNet classes), resized to 3x64x64: 9,469 train / 3,925 val as test (paper Table I,
    with ResNet18). ``size`` picks the torchvision archive ("160px", "320px" or "full")."""
    from torchvision.datasets import Imagenette

    base = resolve_data_root(root)
    stem = {"160px": "imagenette2-160", "320px": "imagenette2-320", "full": "imagenette2"}
    if size not in stem:
        raise BadInputError(f"imagenette: size={size!r} is not one of {sorted(stem)}")
    folders = [base / stem[size] / "train", base / stem[size] / "val"]

    def fetch() -> None:
        Imagenette(str(base), split="train", size=size, download=True)

    _require("imagenette", base, folders, download, fetch)
    cache = base / "mcel-cache" / f"imagenette-{size}-{image_size}.npz"

    def decode() -> dict[str, np.ndarray]:
        arrays = {}
        for split, key in (("train", "train"), ("val", "test")):
            ds = Imagenette(str(base), split=split, size=size)
            arrays[f"{key}_x"], arrays[f"{key}_y"] = _decode_resized(list(ds._samples), image_size)
        return arrays

    arrays: dict[str, np.ndarray] | None = None
    if not cache.is_file():
        try:  # one process decodes and writes the cache (atomically); the others wait, then read it
            with file_lock(base, "imagenette-cache"):
                if not cache.is_file():
                    arrays = decode()
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
                    np.savez(tmp, **arrays)
                    os.replace(tmp, cache)
        except OSError as exc:  # read-only root: work without the cache
            log.warning("could not write the Imagenette cache %s: %s", cache, exc)
            arrays = arrays or decode()
    if arrays is None:
        with np.load(cache) as npz:
            arrays = {k: npz[k] for k in npz.files}
    return make_bundle(
        "imagenette",
        (arrays["train_x"], arrays["train_y"]),
        (arrays["test_x"], arrays["test_y"]),
        num_classes=10,
        scale=255.0,
        limit_train=limit_train,
        limit_test=limit_test,
        split_seed=split_seed,
        source=str(base / stem[size]),
    )
