"""Which torch device a command runs on (shared by training, evaluation and benchmarks)."""

from __future__ import annotations

import torch

from .errors import Crop2SegError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; ``"cuda"`` without CUDA is an error.

    Raises
    ------
    Crop2SegError
        CUDA asked but not available to this PyTorch, or a name torch does not know.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Crop2SegError(f"device {device!r} asked but CUDA is not available to this PyTorch "
                            f"({torch.__version__}); use --device cpu or --device auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise Crop2SegError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
