"""Is the GPU really usable, and what device did a run use: the checks a GPU worker and a trial make.

``torch.cuda.is_available()`` is False, with only a warning, when the NVIDIA driver is missing or older
than the CUDA of the torch wheel (torch ``2.14.1+cu130`` needs driver >= 580). A trial with ``device:
auto`` would then train on the CPU without saying so. :func:`cuda_problem` says why CUDA cannot be used
(None when it can: a device is present and a tensor can be made on it), :func:`device_label` names the
device a run used (``"cuda:0 (NVIDIA A10G)"``, ``"cpu"``).

Run as ``python -m mcel_search.core.devices`` (a GPU worker's setup command, ``cluster.yaml``): prints
torch's and CUDA's versions and the devices, exits 1 with one ``FATAL:`` line when no GPU is usable, so
that Ray marks the node's setup failed instead of letting it run trials on the CPU.
"""

from __future__ import annotations

import sys

import torch


def cuda_problem() -> str | None:
    """Why this process cannot compute on a GPU, or None when it can.

    Checks, in order: the torch build has CUDA (``torch.version.cuda``), the driver and a device are
    usable (``torch.cuda.is_available()``, ``device_count() > 0``), and a tensor can be created on device 0
    (catches a driver that loads but cannot run this CUDA).
    """
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build (no CUDA)"
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return (
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU: no NVIDIA device, or "
            "its driver is missing or too old for this CUDA"
        )
    try:
        torch.zeros(1, device="cuda:0").add_(1).item()
    except Exception as exc:  # a driver/runtime mismatch surfaces here, as RuntimeError or AcceleratorError
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot run on cuda:0: {first}"
    return None


def device_label(device: str | torch.device) -> str:
    """``"cpu"``, or ``"cuda:<index> (<GPU name>)"`` for a CUDA device (index 0 when none is given)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return str(dev)
    index = 0 if dev.index is None else dev.index
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def main() -> int:
    """Print what torch sees; 1 with a ``FATAL:`` line when no GPU is usable."""
    problem = cuda_problem()
    names = [device_label(f"cuda:{i}") for i in range(torch.cuda.device_count())] if problem is None else []
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs: {', '.join(names) or 'none'}")
    if problem is not None:
        print(f"FATAL: {problem}; this node must not run GPU trials", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # python -m mcel_search.core.devices
    sys.exit(main())
