"""Data sets picked by name: every loader returns an in-memory, normalized :class:`DatasetBundle`.

>>> from mcel_search.core.data import list_datasets, load_dataset
>>> list_datasets()
['cifar10', 'digits', 'fashionmnist', 'imagenette', 'svhn', 'synthetic']
>>> bundle = load_dataset("digits")
>>> len(bundle.train), len(bundle.test), bundle.image_size
(1437, 360, 8)
"""

from . import digits as _digits  # noqa: F401  (registers "digits")
from . import fashionmnist as _fashionmnist  # noqa: F401  (registers "fashionmnist")
from . import synthetic as _synthetic  # noqa: F401  (registers "synthetic")
from . import torchvision_sets as _torchvision_sets  # noqa: F401  (registers svhn, cifar10, imagenette)
from .fashionmnist import read_idx
from .registry import (
    DATA_ROOT_ENV,
    DatasetBundle,
    DatasetNotFoundError,
    list_datasets,
    load_dataset,
    register_dataset,
    resolve_data_root,
)

__all__ = [
    "DATA_ROOT_ENV",
    "DatasetBundle",
    "DatasetNotFoundError",
    "list_datasets",
    "load_dataset",
    "read_idx",
    "register_dataset",
    "resolve_data_root",
]
