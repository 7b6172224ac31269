"""Training-step benchmarks on VGG3 (one optimizer step: forward, loss, backward, Adam), same batch.

* ``train.mcel_vs_cel``: a 4-bit model's step with MCEL (m = 8, b = 16) against the same model's step with
  cross-entropy. MCEL adds ``b * tanh(z / b)`` and one subtraction on a (batch x 10) tensor. Target <= 1.03x.
* ``train.qat_vs_float``: a 4-bit (quantization-aware) model's CEL step against the float (``bits=32``)
  model's. The difference is fake quantization of every weight in the forward pass (its backward is the
  identity); it must not synchronize with the host. Target <= 1.30x.

Two model instances with identical initial weights are stepped alternately; each keeps its own Adam state.

* ``train.fake_quant_fast_path``: :func:`core.quantization.fake_quantize` (forward and backward) on VGG3's
  largest weight (2048 x 3136) against the straight path it replaced (``min``, ``max``, codes through
  ``uint8``, a three-buffer decode), written out here: the fast path's gain in the same process.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from benchmarks.common import MIN_REPEATS, Row, interleaved, median, paired_ratio
from mcel_search.core.data import load_dataset
from mcel_search.core.losses import create_loss
from mcel_search.core.models import create_model
from mcel_search.core.quantization import fake_quantize

MCEL_TARGET = 1.03
QAT_TARGET = 1.30


def _step(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _straight_quantize_dequantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Eq. 11 as first written: min and max, two temporaries, codes through uint8, three-buffer decode."""
    lo, hi = w.min(), w.max()
    scale = (hi - lo) / float((1 << bits) - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((w - lo) / scale).clamp_(0, (1 << bits) - 1).to(torch.uint8)
    return codes.to(w.dtype) * scale + lo


def _fake_quant_rows(quick: bool, device: torch.device) -> list[Row]:
    """The fast path of fake quantization against the straight one, in the same process (VGG3's FC weight)."""
    repeats = MIN_REPEATS if quick else 15
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2048, 3136, generator=g).to(device).requires_grad_()
    grad = torch.ones_like(w)

    def fast() -> None:
        fake_quantize(w, 4).backward(grad)

    def straight() -> None:
        with torch.no_grad():
            value = _straight_quantize_dequantize(w, 4)
        (w + (value - w).detach()).backward(grad)

    t = interleaved({"fast": fast, "straight": straight}, repeats, device)
    return [
        Row(
            "train",
            "train.fake_quant_fast_path",
            "fake_quantize fwd+bwd, 2048x3136 weight, 4-bit (fast path)",
            "the straight path (min, max, uint8 codes, decode; STE)",
            paired_ratio(t["fast"], t["straight"]),
            None,
            detail=f"median fast {1e3 * median(t['fast']):.1f} ms, straight {1e3 * median(t['straight']):.1f} ms "
            f"({repeats} rounds, {device.type}); equal values: tests/core/test_fast_paths.py",
        )
    ]


def bench_train(quick: bool, device: torch.device) -> list[Row]:
    batch, repeats = (32, MIN_REPEATS) if quick else (128, 21)
    data = load_dataset("fashionmnist", limit_train=batch, limit_test=1)
    x, y = next(iter(torch.utils.data.DataLoader(data.train, batch_size=batch)))
    x, y = x.to(device), y.to(device)

    def vgg3(bits: int) -> nn.Module:
        torch.manual_seed(0)
        m = create_model("vgg3", bits=bits, num_classes=10, in_channels=1, image_size=28, logit_scale=0.25)
        return m.to(device).train()

    fns = {
        "cel": _step(vgg3(4), create_loss("cel"), x, y),
        "mcel": _step(vgg3(4), create_loss("mcel", margin=8.0, b=16.0), x, y),
        "float": _step(vgg3(32), create_loss("cel"), x, y),
    }
    t = interleaved(fns, repeats, device, warmup=2)
    ms = {k: 1e3 * median(v) for k, v in t.items()}
    common = f"batch {batch}, {repeats} rounds, {device.type}"
    return [
        *_fake_quant_rows(quick, device),
        Row(
            "train",
            "train.mcel_vs_cel",
            "MCEL step, VGG3 4-bit",
            "CEL step, same model and batch",
            paired_ratio(t["mcel"], t["cel"]),
            ("<=", MCEL_TARGET),
            detail=f"median MCEL {ms['mcel']:.0f} ms, CEL {ms['cel']:.0f} ms ({common})",
        ),
        Row(
            "train",
            "train.qat_vs_float",
            "QAT step, VGG3 4-bit, CEL",
            "float (bits=32) VGG3 step, CEL",
            paired_ratio(t["cel"], t["float"]),
            ("<=", QAT_TARGET),
            detail=f"median QAT {ms['cel']:.0f} ms, float {ms['float']:.0f} ms ({common})",
        ),
    ]
