"""The per-worker model cache: each process loads a weights folder at most once per device.

Model tasks name the weights by their :class:`~crop2seg_pipeline.models.spec.ModelSpec` (path +
file fingerprint), never by a pickled model; the first task on a worker loads it (with as many
torch threads as the worker has task threads, and glibc tuned for large tensors), later tasks
reuse it, and replaced weights (another fingerprint) are loaded afresh.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from ..malloc import tune_malloc
from ..models.spec import ModelSpec

__all__ = ["cached_model", "model_loads", "resolve_device"]

_CACHE_LOCK = threading.Lock()
_MODELS: dict[tuple, Any] = {}
_LOADS: Counter = Counter()


def model_loads() -> dict[str, int]:
    """How many times this process loaded each model (weights folder, device): a diagnostic."""
    return {f"{k[0]}|{k[1]}": v for k, v in _LOADS.items()}


def resolve_device(device: str):
    """:func:`crop2seg_pipeline.device.resolve_device`, imported when a task runs (torch is heavy)."""
    from ..device import resolve_device as resolve

    return resolve(device)


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def cached_model(spec: ModelSpec, device: str):
    """The model of ``spec`` on this process, loaded at most once per (folder, device)."""
    import torch

    from ..models import load_model

    dev = resolve_device(device)
    key = (spec.weights_dir, str(dev), spec.fingerprint)
    model = _MODELS.get(key)
    if model is not None:
        return model, dev
    with _CACHE_LOCK:
        model = _MODELS.get(key)
        if model is None:
            threads = _worker_threads()
            if threads and torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            tune_malloc()  # large tensors from the heap, not fresh mmaps (see .malloc)
            model = load_model(spec.weights_dir, dev)
            for old in [k for k in _MODELS if k[:2] == key[:2]]:  # weights replaced since
                del _MODELS[old]
            _MODELS[key] = model
            _LOADS[key] += 1
    return model, dev
