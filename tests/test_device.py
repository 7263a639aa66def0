"""Tests of device resolution (shared by training, evaluation and benchmarks)."""

from __future__ import annotations

import pytest
import torch

from crop2seg_pipeline.device import resolve_device
from crop2seg_pipeline.errors import Crop2SegError


def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(Crop2SegError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(Crop2SegError, match="CUDA is not available"):
            resolve_device("cuda:0")
