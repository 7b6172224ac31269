"""Quantized architectures of the paper (Table II), picked by name through a registry.

>>> from mcel_search.core.models import create_model, list_models, supported_bits
>>> list_models()
['mobilenetv2', 'resnet18', 'small_cnn', 'vgg3', 'vgg7']
>>> supported_bits("vgg3")
(1, 2, 4, 8, 32)
"""

from . import mobilenetv2 as _mobilenetv2  # noqa: F401  (registers "mobilenetv2")
from . import resnet as _resnet  # noqa: F401  (registers "resnet18")
from . import small_cnn as _small_cnn  # noqa: F401  (registers "small_cnn")
from . import vgg as _vgg  # noqa: F401  (registers "vgg3", "vgg7")
from .base import QuantClassifier
from .registry import (
    BNN_QNN_BITS,
    QNN_BITS,
    ModelSpec,
    check_model_bits,
    create_model,
    create_model_from_config,
    get_model_spec,
    list_models,
    register_model,
    supported_bits,
)

__all__ = [
    "BNN_QNN_BITS",
    "QNN_BITS",
    "ModelSpec",
    "QuantClassifier",
    "check_model_bits",
    "create_model",
    "create_model_from_config",
    "get_model_spec",
    "list_models",
    "register_model",
    "supported_bits",
]
