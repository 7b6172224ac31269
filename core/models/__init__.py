"""Quantized architectures of the paper (Table II), picked by name through a registry.

>>> from core.models import create_model, list_models, supported_bits
>>> list_models()
['mobilenetv2', 'resnet18', 'small_cnn', 'vgg3', 'vgg7']
>>> supported_bits("vgg3")
(1, 2, 4, 8, 32)
"""

from core.models import mobilenetv2 as _mobilenetv2  # noqa: F401  (registers "mobilenetv2")
from core.models import resnet as _resnet  # noqa: F401  (registers "resnet18")
from core.models import small_cnn as _small_cnn  # noqa: F401  (registers "small_cnn")
from core.models import vgg as _vgg  # noqa: F401  (registers "vgg3", "vgg7")
from core.models.base import QuantClassifier
from core.models.registry import (
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
