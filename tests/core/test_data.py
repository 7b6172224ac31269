"""Data sets load offline, deterministically, normalized; missing files fail with a helpful message."""

from __future__ import annotations

import gzip
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from mcel_search.core.data import (
    DatasetNotFoundError,
    list_datasets,
    load_dataset,
    read_idx,
    register_dataset,
    resolve_data_root,
)
from mcel_search.core.data import fashionmnist as fashion_module
from mcel_search.core.data.registry import file_lock

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def _raw(bundle, split: str = "train") -> np.ndarray:
    """Undo the normalization: images back in [0, 1]."""
    x = getattr(bundle, split).tensors[0]
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    return (x * std + mean).numpy()


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Independent IDX writer (uint8): magic 0 0 8 ndim, big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def _tiny_fashion(directory: Path, n_train: int = 5, n_test: int = 3, size: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    directory.mkdir(parents=True)
    for i, (stem, array) in enumerate(arrays.items()):
        _write_idx(directory / (stem + (".gz" if i % 2 else "")), array)  # mix plain and gzip
    return arrays


def test_registry() -> None:
    assert list_datasets() == ["cifar10", "digits", "fashionmnist", "imagenette", "svhn", "synthetic"]
    with pytest.raises(ValueError, match="cifar10, digits, fashionmnist"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("digits")(lambda **kw: None)
    with pytest.raises(ValueError, match="limit_train"):
        load_dataset("digits", limit_train=0)


def test_digits_split_is_stratified_deterministic_and_complete() -> None:
    a = load_dataset("digits", split_seed=0)
    b = load_dataset("digits", split_seed=0)
    c = load_dataset("digits", split_seed=1)
    assert (a.num_classes, a.in_channels, a.image_size) == (10, 1, 8)
    assert (len(a.train), len(a.test)) == (1437, 360)  # 1797 * 0.2 rounded up is held out
    assert a.train.tensors[0].shape == (1437, 1, 8, 8) and a.train.tensors[0].dtype == torch.float32
    assert a.train.tensors[1].dtype == torch.int64
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and torch.equal(
        a.test.tensors[1], b.test.tensors[1]
    )
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    # stratified: each class's test share is 20% of its 174-183 images, give or take one
    totals = np.bincount(load_digits().target, minlength=10)
    test_counts = a.test.tensors[1].bincount(minlength=10).numpy()
    assert np.all(np.abs(test_counts - 0.2 * totals) <= 1)
    # train + test is exactly the 1797 images, pixel values 0..16 scaled to [0, 1]
    pixels = np.concatenate([_raw(a, "train"), _raw(a, "test")]).reshape(1797, 64) * 16
    assert np.allclose(pixels, np.round(pixels), atol=1e-4)
    expected = load_digits().data
    assert np.array_equal(np.unique(np.round(pixels), axis=0), np.unique(expected, axis=0))
    # normalized with the training split's statistics
    x = a.train.tensors[0]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    assert abs(float(a.test.tensors[0].mean())) < 0.1


def test_limits_are_seeded_subsets_keeping_the_full_normalization() -> None:
    full = load_dataset("digits")
    small = load_dataset("digits", limit_train=100, limit_test=50)
    again = load_dataset("digits", limit_train=100, limit_test=50)
    assert (len(small.train), len(small.test)) == (100, 50)
    assert torch.equal(small.train.tensors[0], again.train.tensors[0])
    assert small.mean == full.mean and small.std == full.std
    rows = {tuple(r) for r in full.train.tensors[0].reshape(len(full.train), -1).numpy().tolist()}
    assert all(tuple(r) in rows for r in small.train.tensors[0].reshape(100, -1).numpy().tolist())
    assert len(load_dataset("digits", limit_train=10_000).train) == 1437


def test_read_idx_parses_an_independently_written_file(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    for name in ("a-idx3-ubyte", "b-idx3-ubyte.gz"):
        _write_idx(tmp_path / name, array)
        parsed = read_idx(tmp_path / name)
        assert parsed.shape == (2, 3, 5) and parsed.dtype == np.uint8
        assert np.array_equal(parsed, array)
    (tmp_path / "short").write_bytes((tmp_path / "a-idx3-ubyte").read_bytes()[:-1])
    with pytest.raises(ValueError, match="announces shape"):
        read_idx(tmp_path / "short")
    (tmp_path / "junk").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_fashionmnist_from_root_honors_env_and_beats_system_dir(tmp_path: Path, monkeypatch) -> None:
    arrays = _tiny_fashion(tmp_path / "FashionMNIST" / "raw")
    monkeypatch.setenv("MCEL_DATA_ROOT", str(tmp_path))
    assert resolve_data_root() == tmp_path
    bundle = load_dataset("fashionmnist")
    assert (len(bundle.train), len(bundle.test), bundle.image_size, bundle.in_channels) == (5, 3, 4, 1)
    assert np.allclose(_raw(bundle)[:, 0] * 255, arrays["train-images-idx3-ubyte"], atol=1e-3)
    assert np.array_equal(bundle.test.tensors[1].numpy(), arrays["t10k-labels-idx1-ubyte"])
    # root argument wins over the environment variable
    other = tmp_path / "other"
    _tiny_fashion(other / "FashionMNIST" / "raw", n_train=2)
    assert len(load_dataset("fashionmnist", root=other).train) == 2


def test_missing_files_say_what_where_and_how(tmp_path: Path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    monkeypatch.setenv("MCEL_DATA_ROOT", str(empty))
    monkeypatch.setattr(fashion_module, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashionmnist")
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    for needle in (
        "train-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        str(empty / "FashionMNIST" / "raw"),
        str(tmp_path / "no-debian"),
        "apt-get install dataset-fashion-mnist",
        "MCEL_DATA_ROOT",
        "download",
    ):
        assert needle in message
    for name, needle in (
        ("svhn", "train_32x32.mat"),
        ("cifar10", "data_batch_1"),
        ("imagenette", "imagenette2"),
    ):
        with pytest.raises(DatasetNotFoundError, match=needle) as info:
            load_dataset(name)
        assert str(empty) in str(info.value)
    assert not empty.exists()  # nothing was created, let alone downloaded


@pytest.mark.skipif(
    not DEBIAN_DIR.is_dir(), reason=f"{DEBIAN_DIR} absent (apt-get install dataset-fashion-mnist)"
)
def test_fashionmnist_debian_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MCEL_DATA_ROOT", str(tmp_path))  # empty: falls back to the Debian files
    bundle = load_dataset("fashionmnist")
    assert bundle.source == str(DEBIAN_DIR)
    assert (len(bundle.train), len(bundle.test)) == (60000, 10000)
    assert bundle.train.tensors[0].shape == (60000, 1, 28, 28)
    for split, per_class in (("train", 6000), ("test", 1000)):  # FashionMNIST is balanced
        labels = getattr(bundle, split).tensors[1]
        assert int(labels.min()) == 0 and int(labels.max()) == 9
        assert labels.bincount().tolist() == [per_class] * 10
    raw = _raw(bundle, "test")[:100] * 255
    assert np.allclose(raw, np.round(raw), atol=1e-2) and raw.min() > -0.01 and raw.max() < 255.01
    assert 0.27 < bundle.mean[0] < 0.30 and 0.34 < bundle.std[0] < 0.37  # the well-known 0.286 / 0.353


def test_synthetic_is_seeded_and_learnable() -> None:
    kw = dict(n_train=200, n_test=100, num_classes=4, image_size=6, in_channels=2)
    a, b = load_dataset("synthetic", seed=3, **kw), load_dataset("synthetic", seed=3, **kw)
    c = load_dataset("synthetic", seed=4, **kw)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and torch.equal(
        a.test.tensors[1], b.test.tensors[1]
    )
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert a.train.tensors[0].shape == (200, 2, 6, 6) and (a.num_classes, a.in_channels, a.image_size) == (
        4,
        2,
        6,
    )
    assert a.train.tensors[1].bincount().tolist() == [50] * 4
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(72, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = a.train.tensors
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(), loss.backward(), opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    xt, yt = a.test.tensors
    assert (model(xt).argmax(1) == yt).float().mean() > 0.8  # chance is 0.25


def test_file_lock_serializes(tmp_path: Path) -> None:
    entered = threading.Event()

    def other() -> None:
        with file_lock(tmp_path, "x"):
            entered.set()

    with file_lock(tmp_path, "x"):
        thread = threading.Thread(target=other)
        thread.start()
        assert not entered.wait(0.3)  # blocked while we hold the lock
    assert entered.wait(5)
    thread.join()


def test_imagenette_resizes_and_caches(tmp_path: Path) -> None:
    from PIL import Image

    colours = {"n01440764": (200, 10, 10), "n02102040": (10, 10, 200)}  # two real wnids, solid colours
    for split, n in (("train", 3), ("val", 1)):
        for wnid, colour in colours.items():
            folder = tmp_path / "imagenette2-160" / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (100, 80), colour).save(folder / f"{i}.JPEG", quality=100)
    bundle = load_dataset("imagenette", root=tmp_path, image_size=8)
    assert (len(bundle.train), len(bundle.test), bundle.in_channels, bundle.image_size) == (6, 2, 3, 8)
    raw = _raw(bundle) * 255
    for label, colour in enumerate(colours.values()):  # wnids sort to labels 0, 1
        mask = bundle.train.tensors[1].numpy() == label
        assert mask.sum() == 3
        assert np.allclose(raw[mask].mean(axis=(0, 2, 3)), colour, atol=3)
    cache = tmp_path / "mcel-cache" / "imagenette-160px-8.npz"
    assert cache.is_file()
    # the second load reads the cache, not the images
    Image.new("RGB", (100, 80), (0, 255, 0)).save(tmp_path / "imagenette2-160/train/n01440764/0.JPEG")
    again = load_dataset("imagenette", root=tmp_path, image_size=8)
    assert torch.equal(again.train.tensors[0], bundle.train.tensors[0])
