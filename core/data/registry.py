"""Data set registry, the :class:`DatasetBundle` every loader returns, and the helpers loaders share.

Every data set is held in memory as a :class:`torch.utils.data.TensorDataset` of ``float32`` images
``(N, C, H, W)``, normalized per channel with the mean and standard deviation of the *full* training split
(also when only a subset is loaded, so that a short run sees the same input distribution), and ``int64``
labels. ``DataLoader(bundle.train, batch_size=..., shuffle=True)`` then needs no workers.

Root directory of downloaded/cached files: the ``root`` argument, else the environment variable
``MCEL_DATA_ROOT``, else ``~/.cache/mcel-search/data``.

Example::

    bundle = load_dataset("digits")                      # embedded, no files needed
    bundle = load_dataset("fashionmnist", limit_train=5000)
    model = create_model("vgg3", bits=4, num_classes=bundle.num_classes,
                         in_channels=bundle.in_channels, image_size=bundle.image_size)
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import BadInputError

#: Environment variable naming the data root.
DATA_ROOT_ENV = "MCEL_DATA_ROOT"
#: Root used when neither an argument nor ``MCEL_DATA_ROOT`` gives one.
DEFAULT_DATA_ROOT = Path("~/.cache/mcel-search/data")


class DatasetNotFoundError(BadInputError, FileNotFoundError):
    """The files of a data set are missing and downloading was not allowed (or is impossible).

    The message says which files were looked for in which directories and how to get them.
    """


@dataclass(frozen=True, eq=False)
class DatasetBundle:
    """A loaded data set: train and test splits plus what a model needs to know about them."""

    name: str  # registry name, e.g. "fashionmnist"
    train: TensorDataset  # (images float32 (N, C, H, W), normalized; labels int64 in [0, num_classes))
    test: TensorDataset  # same layout as train
    num_classes: int  # number of classes (labels are 0..num_classes-1)
    in_channels: int  # C of the images
    image_size: int  # H = W of the images
    mean: tuple[float, ...] = ()  # per-channel mean subtracted (of the full raw training split, in [0, 1])
    std: tuple[float, ...] = ()  # per-channel std divided by
    source: str = ""  # where the data came from (directory, "sklearn", "generated")
    extra: dict = field(default_factory=dict)  # loader-specific details (e.g. split sizes before limits)


DatasetLoader = Callable[..., DatasetBundle]

_DATASETS: dict[str, DatasetLoader] = {}

#: Input conventions (core.protocol's ``inputs`` switch): standardized with the training split's per-channel
#: mean/std, or raw ``pixel / max_pixel`` in [0, 1] (the reference framework's ``ToTensor()`` only).
INPUTS: tuple[str, ...] = ("standardized", "raw")
# the convention of the load_dataset call in progress, read by make_bundle (every loader ends there, so
# no loader needs to know the switch)
_INPUTS: contextvars.ContextVar[str] = contextvars.ContextVar("mcel_inputs", default="standardized")


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator registering ``fn(*, root, split_seed, download, limit_train, limit_test, **kw)`` as ``name``.

    A second registration of the same ``name`` raises ValueError.
    """

    def decorator(fn: DatasetLoader) -> DatasetLoader:
        if name in _DATASETS:
            raise BadInputError(
                f"data set {name!r} is already registered (by {_DATASETS[name].__qualname__})"
            )
        _DATASETS[name] = fn
        return fn

    return decorator


def list_datasets() -> list[str]:
    """Names of all registered data sets, sorted."""
    return sorted(_DATASETS)


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$MCEL_DATA_ROOT`` if set and non-empty, else the default root."""
    if root is None:
        root = os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT
    return Path(root).expanduser()


def _check_limit(key: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInputError(f"{key}={value!r} is not allowed: it must be None (all) or an integer >= 1")
    return value


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    split_seed: int = 0,
    download: bool = False,
    limit_train: int | None = None,
    limit_test: int | None = None,
    inputs: str = "standardized",
    **kw,
) -> DatasetBundle:
    """Load data set ``name`` (see :func:`list_datasets`) into memory.

    Args:
        name: registered name.
        root: directory of the data files; default ``$MCEL_DATA_ROOT`` or ``~/.cache/mcel-search/data``.
        split_seed: seed of every random choice (the digits train/test split, the subsets below).
        download: allow downloading missing files (never done otherwise).
        limit_train: keep only this many training samples (a seeded random subset; ``None``: all).
        limit_test: the same for the test split.
        inputs: ``"standardized"`` (per-channel mean/std of the full training split) or ``"raw"``
            (``pixel / max_pixel`` in [0, 1]; the bundle's ``mean`` is then 0 and ``std`` 1 per channel).
        **kw: loader-specific options (e.g. ``n_train`` of ``synthetic``); ``None`` values are dropped.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones) or a bad argument.
        DatasetNotFoundError: files missing and ``download`` is False.
    """
    try:
        loader = _DATASETS[name]
    except (KeyError, TypeError):
        raise BadInputError(
            f"unknown data set {name!r}; known data sets: {', '.join(list_datasets())}"
        ) from None
    if inputs not in INPUTS:
        raise BadInputError(f"inputs={inputs!r} is not allowed: one of {', '.join(INPUTS)}")
    kw = {k: v for k, v in kw.items() if v is not None}
    token = _INPUTS.set(inputs)
    try:
        return loader(
            root=root,
            split_seed=int(split_seed),
            download=bool(download),
            limit_train=_check_limit("limit_train", limit_train),
            limit_test=_check_limit("limit_test", limit_test),
            **kw,
        )
    finally:
        _INPUTS.reset(token)


def subset_indices(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``range(n)``, ``min(limit, n)`` long (None: all)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def channel_stats(images: np.ndarray, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``images / scale``, ``images`` shaped ``(N, C, H, W)``.

    ``uint8`` images go through a 256-bin histogram per channel: exact and without a float copy of the data.
    """
    means, stds = [], []
    for c in range(images.shape[1]):
        channel = images[:, c]
        if images.dtype == np.uint8:
            counts = np.bincount(channel.reshape(-1), minlength=256).astype(np.float64)
            values = np.arange(256, dtype=np.float64) / scale
            total = counts.sum()
            mean = float((counts * values).sum() / total)
            var = float((counts * (values - mean) ** 2).sum() / total)
        else:
            x = channel.astype(np.float64) / scale
            mean, var = float(x.mean()), float(x.var())
        means.append(mean)
        stds.append(max(var, 1e-12) ** 0.5)
    return tuple(means), tuple(stds)


def to_tensor_dataset(
    images: np.ndarray, labels: np.ndarray, mean: Sequence[float], std: Sequence[float], scale: float
) -> TensorDataset:
    """``TensorDataset((images / scale - mean) / std as float32 (N, C, H, W), labels as int64)``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(scale)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x.sub_(m).div_(s)
    y = torch.from_numpy(np.ascontiguousarray(labels)).to(torch.int64)
    return TensorDataset(x, y)


def make_bundle(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    num_classes: int,
    scale: float,
    limit_train: int | None,
    limit_test: int | None,
    split_seed: int,
    source: str,
) -> DatasetBundle:
    """Normalize with the full training split's statistics (raw inputs, see :func:`load_dataset`: only
    ``/ scale``), apply the limits, make a :class:`DatasetBundle`.

    ``train`` and ``test`` are ``(images (N, C, H, W), labels (N,))`` numpy arrays; ``scale`` maps raw pixel
    values to [0, 1] (255 for ``uint8``, 16 for ``digits``).
    """
    (xtr, ytr), (xte, yte) = train, test
    if xtr.ndim != 4 or xtr.shape[2] != xtr.shape[3]:
        raise BadInputError(f"{name}: expected square images (N, C, H, W), got shape {xtr.shape}")
    if _INPUTS.get() == "raw":
        mean, std = (0.0,) * xtr.shape[1], (1.0,) * xtr.shape[1]
    else:
        mean, std = channel_stats(xtr, scale)
    itr = subset_indices(len(xtr), limit_train, split_seed)
    ite = subset_indices(len(xte), limit_test, split_seed + 1)
    return DatasetBundle(
        name=name,
        train=to_tensor_dataset(xtr[itr], ytr[itr], mean, std, scale),
        test=to_tensor_dataset(xte[ite], yte[ite], mean, std, scale),
        num_classes=num_classes,
        in_channels=int(xtr.shape[1]),
        image_size=int(xtr.shape[2]),
        mean=mean,
        std=std,
        source=source,
        extra={"full_train_size": len(xtr), "full_test_size": len(xte), "inputs": _INPUTS.get()},
    )


@contextlib.contextmanager
def file_lock(directory: Path, name: str) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``directory/.locks/name.lock`` (created if needed).

    Wraps every step that writes into the data root (downloads, caches), so several processes preparing the
    same data set on one node (e.g. parallel Ray trials) take turns; the second one then finds the files.
    """
    lock_dir = directory / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def missing_message(dataset: str, files: Sequence[str], dirs: Sequence[Path], how: str) -> str:
    """Text of a :class:`DatasetNotFoundError`: the files, the directories searched, and how to get them."""
    where = "\n".join(f"  - {d}" for d in dirs)
    return (
        f"data set {dataset!r} not found: looked for {', '.join(files)} in\n{where}\n"
        f"To get it: {how}\n"
        f"Or point {DATA_ROOT_ENV} (or root=) at a directory that holds the files, or allow downloading "
        f"(download=True / --download) on a machine with internet access."
    )
