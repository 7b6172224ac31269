"""``small_cnn``: a VGG-style toy for the embedded 8x8 ``digits`` set, so a demo trains in seconds on CPU."""

from __future__ import annotations

from .base import QuantClassifier
from .registry import BNN_QNN_BITS, register_model
from .vgg import _build_vgg


@register_model("small_cnn", bits=BNN_QNN_BITS, paper_dataset="digits")
def small_cnn(**kwargs) -> QuantClassifier:
    """Small CNN: C16 C32 MP2 FC64 FC10 (not in the paper; sized for 8x8 digits, ~38k parameters)."""
    return _build_vgg("small_cnn", [16, 32, "M"], [64], **kwargs)
