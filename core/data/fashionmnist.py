"""FashionMNIST (60,000 / 10,000 grey 28x28 images, 10 classes), read from IDX files with numpy.

Looked for, in this order (each file plain or ``.gz``):

1. ``<root>/FashionMNIST/raw/`` (torchvision's layout; ``root`` from the argument or ``MCEL_DATA_ROOT``),
2. ``/usr/share/datasets/fashion-mnist/`` (Debian/Ubuntu package ``dataset-fashion-mnist``).

With ``download=True`` and nothing found, torchvision downloads into ``<root>/FashionMNIST/raw/`` under a
file lock.
"""

from __future__ import annotations

import gzip
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

#: Where Debian's ``dataset-fashion-mnist`` installs the files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (plain, or gzip when the name ends in ``.gz``) into a numpy array.

    Format (LeCun's MNIST page): two zero bytes, a type byte (0x08 = uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), a byte with the number of dimensions ``d``, ``d`` big-endian
    uint32 sizes, then the data in C order, big-endian. Raises ValueError on a malformed file.
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise BadInputError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise BadInputError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise BadInputError(
            f"{path}: IDX header announces shape {shape} ({expected} bytes), got {len(data) - header}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def find_fashion_mnist(candidates: list[Path]) -> dict[str, Path] | None:
    """The four IDX files from the first directory of ``candidates`` that holds all of them, else None."""
    for directory in candidates:
        found = {key: _find(directory, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


@register_dataset("fashionmnist")
def load_fashionmnist(
    *,
    root: str | os.PathLike | None,
    split_seed: int,
    download: bool,
    limit_train: int | None,
    limit_test: int | None,
) -> DatasetBundle:
    """FashionMNIST, 1x28x28, 60k train / 10k test (paper Table I, with VGG3)."""
    base = resolve_data_root(root)
    raw = base / "FashionMNIST" / "raw"
    candidates = [raw, DEBIAN_FASHION_MNIST_DIR]
    files = find_fashion_mnist(candidates)
    if files is None and download:
        from torchvision.datasets import FashionMNIST

        with file_lock(base, "fashionmnist"):
            if find_fashion_mnist([raw]) is None:
                for train in (True, False):
                    FashionMNIST(str(base), train=train, download=True)
        files = find_fashion_mnist([raw])
    if files is None:
        raise DatasetNotFoundError(
            missing_message(
                "fashionmnist",
                [f"{stem}[.gz]" for stem in FILES.values()],
                candidates,
                "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs them in "
                f"{DEBIAN_FASHION_MNIST_DIR}), or copy torchvision's FashionMNIST/raw folder under the root.",
            )
        )
    arrays = {key: read_idx(path) for key, path in files.items()}
    return make_bundle(
        "fashionmnist",
        (arrays["train_images"][:, None], arrays["train_labels"]),
        (arrays["test_images"][:, None], arrays["test_labels"]),
        num_classes=10,
        scale=255.0,
        limit_train=limit_train,
        limit_test=limit_test,
        split_seed=split_seed,
        source=str(files["train_images"].parent),
    )
