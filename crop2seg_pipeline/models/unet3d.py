"""UNet3D: a 3D (time x y x x) convolutional U-Net, the PASTIS benchmark's baseline.

Rustowicz et al., "Semantic Segmentation of Crop Type in Africa" (CVPR-W 2019), as adapted by
utae-paps (VSainteuf/utae-paps ``src/backbones/unet3d.py``) to sequences of varying length:
two encoder stages of 3x3x3 convs with max pooling over time and space, a centre block, a
decoder of transposed 3D convs with skips, a 3x3x3 classifier, and a mean of the per-date logits
over time. Module and parameter names mirror the reference, so its ``state_dict`` loads with
``strict=True``: ``UNet3D(input_dim=10, n_classes=15)`` has 1,551,631 parameters.

Tensor conventions as every model of the package: ``x`` ``(batch, time, band, y, x)`` float,
normalised, padded dates entirely ``pad_value``; ``batch_positions`` is accepted and ignored (the
model knows dates only by their order); logits ``(batch, class, y, x)``; ``y``, ``x`` multiples
of 4. The two time poolings need 4 dates: shorter sequences are padded to 4 (see
:class:`UNet3D`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .base import ModelConfigError, SegmentationModel

__all__ = ["UNet3D"]

MIN_DATES = 4  # two max-poolings of stride 2 over time


def _conv_block(d_in: int, d_mid: int, d_out: int) -> nn.Sequential:
    """Two ``Conv3d(3) -> BatchNorm3d -> LeakyReLU``; ``(n, d_in, t, y, x) -> (n, d_out, t, y, x)``."""
    return nn.Sequential(
        nn.Conv3d(d_in, d_mid, kernel_size=3, stride=1, padding=1),
        nn.BatchNorm3d(d_mid),
        nn.LeakyReLU(),
        nn.Conv3d(d_mid, d_out, kernel_size=3, stride=1, padding=1),
        nn.BatchNorm3d(d_out),
        nn.LeakyReLU(),
    )


def _up_conv(d_in: int, d_out: int) -> nn.ConvTranspose3d:
    """Transposed 3D conv doubling time, y and x."""
    return nn.ConvTranspose3d(d_in, d_out, kernel_size=3, stride=2, padding=1, output_padding=1)


class UNet3D(SegmentationModel):
    """3D U-Net (utae-paps ``UNet3D``) for image time series segmentation.

    Args:
        input_dim: input bands (the reference's ``in_channel``).
        n_classes: output classes.
        feats: base width; stages have ``4, 8, 16`` times ``feats`` channels.
        pad_value: value of padded dates (``None``: no padding detection).
        zero_pad: as the reference, every input value equal to ``pad_value`` is set to 0 before
            the network (a no-op for the default ``pad_value=0``).
        trim_padding: run each sample on its valid dates only (samples of equal valid length
            batched together), so the output never depends on how much a sample was padded.
            ``False`` reproduces the reference, whose 3D convolutions mix padded (zero) dates
            into their neighbours; both agree when nothing is padded.

    Sequences of fewer than 4 valid dates, on which the reference fails, are padded to 4 with
    ``pad_value`` dates (masked out of the final mean), as the reference treats a padded batch.
    A sample whose dates are all padding gets zero logits.
    """

    architecture = "unet3d"
    display_name = "UNet3D"

    def __init__(self, input_dim: int = 10, n_classes: int = 20, feats: int = 8,
                 pad_value: float | None = 0, zero_pad: bool = True, trim_padding: bool = True):
        super().__init__()
        problems = [f"{name}={value} must be >= 1" for name, value in
                    (("input_dim", input_dim), ("n_classes", n_classes), ("feats", feats))
                    if int(value) < 1]
        if problems:
            raise ModelConfigError("invalid UNet3D configuration: " + "; ".join(problems))
        self._config: dict[str, Any] = dict(
            input_dim=int(input_dim), n_classes=int(n_classes), feats=int(feats),
            pad_value=pad_value, zero_pad=bool(zero_pad), trim_padding=bool(trim_padding),
        )
        self.pad_value = pad_value
        self.zero_pad = bool(zero_pad)
        self.trim_padding = bool(trim_padding)
        self.downscale = 4

        self.en3 = _conv_block(input_dim, feats * 4, feats * 4)
        self.pool_3 = nn.MaxPool3d(kernel_size=2, stride=2, padding=0)
        self.en4 = _conv_block(feats * 4, feats * 8, feats * 8)
        self.pool_4 = nn.MaxPool3d(kernel_size=2, stride=2, padding=0)
        self.center_in = nn.Sequential(
            nn.Conv3d(feats * 8, feats * 16, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm3d(feats * 16),
            nn.LeakyReLU(),
        )
        self.center_out = nn.Sequential(
            nn.Conv3d(feats * 16, feats * 16, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm3d(feats * 16),
            nn.LeakyReLU(),
            _up_conv(feats * 16, feats * 8),
        )
        self.dc4 = _conv_block(feats * 16, feats * 8, feats * 8)
        self.trans3 = nn.Sequential(_up_conv(feats * 8, feats * 4), nn.BatchNorm3d(feats * 4),
                                    nn.LeakyReLU())
        self.dc3 = _conv_block(feats * 8, feats * 4, feats * 2)
        self.final = nn.Conv3d(feats * 2, n_classes, kernel_size=3, stride=1, padding=1)

    @property
    def n_classes(self) -> int:
        """Number of output classes."""
        return self._config["n_classes"]

    def head_prefixes(self) -> list[str]:
        """The classifier: ``final`` (a Conv3d)."""
        return ["final."]

    # ------------------------------------------------------------------ forward
    def _per_date_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, band, time, y, x)`` -> ``(n, class, 4 * (time // 4), y, x)``."""
        en3 = self.en3(x)
        en4 = self.en4(self.pool_3(en3))
        center = self.center_out(self.center_in(self.pool_4(en4)))
        dc4 = self.dc4(torch.cat([center, en4[:, :, :center.shape[2]]], dim=1))
        trans3 = self.trans3(dc4)
        dc3 = self.dc3(torch.cat([trans3, en3[:, :, :trans3.shape[2]]], dim=1))
        return self.final(dc3)

    def _reference_forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        """The reference computation on ``x`` ``(n, time, band, y, x)`` with its pad mask."""
        n, t = x.shape[:2]
        if t < MIN_DATES:
            if self.pad_value is None:
                raise ValueError(f"UNet3D needs at least {MIN_DATES} dates, got {t} (or a "
                                 "pad_value to pad shorter sequences with)")
            fill = x.new_full((n, MIN_DATES - t, *x.shape[2:]), float(self.pad_value))
            x = torch.cat([x, fill], dim=1)
            extra = torch.ones(n, MIN_DATES - t, dtype=torch.bool, device=x.device)
            base = pad_mask if pad_mask is not None else torch.zeros(n, t, dtype=torch.bool,
                                                                     device=x.device)
            pad_mask = torch.cat([base, extra], dim=1)
        out = x.permute(0, 2, 1, 3, 4)  # (n, band, time, y, x)
        if self.pad_value is not None and self.zero_pad and self.pad_value != 0:
            out = out.masked_fill(out == self.pad_value, 0.0)
        logits = self._per_date_logits(out)  # (n, class, t', y, x)
        if pad_mask is None or not bool(pad_mask.any()):
            return logits.mean(dim=2)
        keep = (~pad_mask[:, :logits.shape[2]]).to(logits.dtype)  # (n, t')
        total = (logits * keep[:, None, :, None, None]).sum(dim=2)
        return total / keep.sum(dim=1).clamp_min(1.0)[:, None, None, None]

    def forward(self, x: torch.Tensor, batch_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Segment a batch of image time series.

        Args:
            x: ``(batch, time, band, y, x)`` float, normalised; padded dates all ``pad_value``.
            batch_positions: ``(batch, time)``, shape-checked and otherwise unused.

        Returns:
            logits ``(batch, n_classes, y, x)``.
        """
        self.check_input(x, batch_positions, need_positions=False)
        pad_mask = self.pad_mask(x) if self.pad_value is not None else None
        if pad_mask is None or not bool(pad_mask.any()) or not self.trim_padding:
            return self._reference_forward(x, pad_mask)
        # each sample on its valid dates only, in their order; equal lengths batched together
        lengths = (~pad_mask).sum(dim=1)
        order = torch.argsort(pad_mask.to(torch.int8), dim=1, stable=True)  # valid dates first
        out = x.new_zeros(x.shape[0], self.n_classes, *x.shape[3:])
        for length in torch.unique(lengths).tolist():
            rows = torch.nonzero(lengths == length).flatten()
            if length == 0:
                continue  # nothing observed: zero logits
            dates = order[rows, :length]  # (n, length)
            seq = x[rows[:, None], dates]  # (n, length, band, y, x)
            out = out.index_put((rows,), self._reference_forward(seq, None))
        return out

