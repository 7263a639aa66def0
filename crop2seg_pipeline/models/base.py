"""What every segmentation network of the package shares: the model contract.

``model(x, batch_positions)`` takes ``x`` ``(batch, time, band, y, x)`` float, already normalised,
with padded dates set entirely to ``pad_value``, and ``batch_positions`` ``(batch, time)`` days
since the reference date; it returns logits ``(batch, class, y, x)``. Every model also exposes

- ``config``: JSON-serialisable constructor arguments, ``type(model)(**model.config)`` rebuilds it;
- ``architecture``: the name ``model.json`` records (``utae``, ``timeunet``, ``wtae``, ``unet3d``);
- ``n_classes``, ``input_dim``;
- ``downscale``: ``y`` and ``x`` must be multiples of it;
- ``head_prefixes()``: the ``state_dict`` prefixes of the classification layer, re-initialised
  when fine-tuning to another number of classes.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import torch
import torch.nn as nn

from crop2seg_pipeline.errors import Crop2SegError

__all__ = ["ModelConfigError", "SegmentationModel"]


class ModelConfigError(Crop2SegError, ValueError):
    """A model configuration (preset name, widths, heads...) is inconsistent or unknown."""


class SegmentationModel(nn.Module):
    """Base class of the package's networks (see the module docstring for the contract).

    Subclasses set ``architecture``, ``display_name``, ``self._config`` (the constructor
    arguments), ``self.downscale`` and ``self.pad_value``, and implement :meth:`forward` and
    :attr:`n_classes`.
    """

    architecture: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    _config: dict[str, Any]
    downscale: int
    pad_value: float | None

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments: ``type(model)(**model.config)`` rebuilds it."""
        return json.loads(json.dumps(self._config))

    @property
    def input_dim(self) -> int:
        """Number of input bands."""
        return int(self._config["input_dim"])

    @property
    def n_classes(self) -> int:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def pad_mask(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, time)`` bool: True for dates whose every value equals ``pad_value``."""
        if self.pad_value is None:
            return torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        return (x == self.pad_value).flatten(2).all(dim=-1)

    def check_input(self, x: torch.Tensor, batch_positions: torch.Tensor | None,
                    need_positions: bool = True) -> None:
        """Raise ``ValueError`` naming the fix when ``x``/``batch_positions`` break the contract."""
        if x.dim() != 5:
            raise ValueError(f"x must be (batch, time, band, y, x), got shape {tuple(x.shape)}")
        b, t, c, h, w = x.shape
        if c != self.input_dim:
            raise ValueError(f"x has {c} bands, the model expects {self.input_dim}")
        if h % self.downscale or w % self.downscale:
            raise ValueError(f"spatial size {h}x{w} must be a multiple of {self.downscale}; "
                             "pad the patch first")
        if batch_positions is None:
            if need_positions:
                raise ValueError("batch_positions (batch, time) in days since the reference date "
                                 "is required")
            return
        if tuple(batch_positions.shape) != (b, t):
            raise ValueError(f"batch_positions must be (batch, time) = {(b, t)}, got "
                             f"{tuple(batch_positions.shape)}")

    def head_prefixes(self) -> list[str]:
        """``state_dict`` prefixes of the final classification layer (its conv and norm).

        The default reads an ``out_conv`` :class:`~.utae.ConvBlock`: its last conv and the
        layers after it that hold state.
        """
        seq = self.out_conv.conv.conv  # type: ignore[attr-defined]
        last_conv = max(i for i, m in enumerate(seq) if isinstance(m, nn.Conv2d))
        return [f"out_conv.conv.conv.{i}." for i in range(last_conv, len(seq))
                if list(seq[i].parameters()) or list(seq[i].buffers())]

    def reset_head(self) -> None:
        """Re-initialise the modules named by :meth:`head_prefixes` (fresh random weights)."""
        for prefix in self.head_prefixes():
            module = self.get_submodule(prefix.rstrip("."))
            if hasattr(module, "reset_parameters"):  # BatchNorm: running statistics too
                module.reset_parameters()
