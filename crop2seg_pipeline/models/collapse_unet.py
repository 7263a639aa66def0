"""The frame Time-Unet and W-TAE share: collapse time first, then segment with a 2D U-Net.

``x (batch, time, band, y, x)`` -> per-date conv stem ``in_conv`` (``(batch, time, w0, y, x)``)
-> :meth:`TimeCollapseUNet.collapse_time` (each architecture's own way, with a
:class:`~.ltae.Crop2SegLTAE`) -> ``(batch, w0, y, x)`` -> a plain 2D U-Net (``down_blocks``,
``up_blocks``) -> the U-TAE output head ``out_conv`` -> logits ``(batch, class, y, x)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import torch

from .base import ModelConfigError, SegmentationModel
from .ltae import Crop2SegLTAE
from .utae import ConvBlock, check_unet_widths, decoder_blocks, encoder_blocks, shared_forward, \
    unet_forward

__all__ = ["TimeCollapseUNet"]


class TimeCollapseUNet(SegmentationModel):
    """Base of :class:`~.timeunet.TimeUNet` and :class:`~.wtae.WTAE` (arguments: see those).

    Subclasses say where the L-TAE reads (:meth:`_ltae_widths`), add their own checks
    (:meth:`_problems`), modules (:meth:`_add_branch` before the U-Net encoder,
    :meth:`_add_aggregation` after the L-TAE: the reference's state_dict order) and implement
    :meth:`collapse_time`. ``_options`` are architecture-specific constructor arguments, recorded
    in ``config`` as they are.
    """

    def __init__(
        self,
        input_dim: int = 10,
        encoder_widths: Sequence[int] = (64, 64, 64, 128),
        decoder_widths: Sequence[int] | None = (32, 32, 64, 128),
        out_conv: Sequence[int] = (32, 20),
        str_conv_k: int = 4,
        str_conv_s: int = 2,
        str_conv_p: int = 1,
        encoder_norm: str | None = "group",
        n_head: int = 16,
        d_model: int = 256,
        d_k: int = 4,
        pad_value: float = 0,
        padding_mode: str = "reflect",
        T: float = 1000,
        use_doy: bool = False,
        use_abs_rel_enc: bool = False,
        add_linear: bool = False,
        reference_date: str | None = None,
        mask_padded_norm: bool = True,
        _options: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        options = dict(_options or {})
        enc = [int(v) for v in encoder_widths]
        dec = list(enc) if decoder_widths is None else [int(v) for v in decoder_widths]
        out_conv = [int(v) for v in out_conv]
        problems = [] if input_dim >= 1 else [f"input_dim={input_dim} must be >= 1"]
        problems += check_unet_widths(enc, dec, out_conv, encoder_norm)
        if enc:
            widths = self._ltae_widths(enc)
            if d_model % n_head or widths["in_channels"] % n_head:
                problems.append(f"n_head={n_head} must divide d_model={d_model} and the L-TAE "
                                f"width {widths['in_channels']} (encoder_widths)")
            problems += self._problems(enc, n_head, options)
        if problems:
            raise ModelConfigError(f"invalid {self.display_name} configuration: "
                                   + "; ".join(problems))
        self._config: dict[str, Any] = dict(
            input_dim=int(input_dim), encoder_widths=enc, decoder_widths=dec, out_conv=out_conv,
            str_conv_k=int(str_conv_k), str_conv_s=int(str_conv_s), str_conv_p=int(str_conv_p),
            **options, encoder_norm=encoder_norm, n_head=int(n_head), d_model=int(d_model),
            d_k=int(d_k), pad_value=pad_value, padding_mode=padding_mode, T=T,
            use_doy=bool(use_doy), use_abs_rel_enc=bool(use_abs_rel_enc),
            add_linear=bool(add_linear),
            reference_date=None if reference_date is None else str(reference_date),
            mask_padded_norm=bool(mask_padded_norm),
        )
        self.pad_value = pad_value
        self.downscale = int(str_conv_s) ** (len(enc) - 1)
        conv = dict(k=str_conv_k, s=str_conv_s, p=str_conv_p)

        # registration order = the reference's state_dict order
        self.in_conv = ConvBlock([input_dim, enc[0], enc[0]], norm=encoder_norm,
                                 padding_mode=padding_mode)
        self._add_branch(enc, encoder_norm=encoder_norm, padding_mode=padding_mode, **conv)
        self.down_blocks = encoder_blocks(enc, conv["k"], conv["s"], conv["p"], encoder_norm,
                                          padding_mode)
        self.up_blocks = decoder_blocks(enc, dec, conv["k"], conv["s"], conv["p"], padding_mode)
        try:
            self.temporal_encoder = Crop2SegLTAE(
                **self._ltae_widths(enc), n_head=n_head, d_k=d_k, d_model=d_model, T=T,
                use_doy=use_doy, use_abs_rel_enc=use_abs_rel_enc, add_linear=add_linear,
                reference_date=reference_date, mask_padded_norm=mask_padded_norm)
        except ValueError as exc:
            raise ModelConfigError(f"invalid {self.display_name} configuration: {exc}") from None
        self._add_aggregation(options)
        self.out_conv = ConvBlock([dec[0], *out_conv], padding_mode=padding_mode)

    # ------------------------------------------------------------------ what subclasses change
    def _ltae_widths(self, enc: list[int]) -> dict[str, int | None]:
        """``in_channels`` / ``out_channels`` of the :class:`~.ltae.Crop2SegLTAE`."""
        raise NotImplementedError

    def _problems(self, enc: list[int], n_head: int, options: dict[str, Any]) -> list[str]:
        return []

    def _add_branch(self, enc: list[int], **conv: Any) -> None:
        """Modules registered between the stem and the U-Net encoder (none by default)."""

    def _add_aggregation(self, options: dict[str, Any]) -> None:
        """Modules registered after the L-TAE (none by default)."""

    def collapse_time(self, stem: torch.Tensor, batch_positions: torch.Tensor,
                      pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``stem (batch, time, w0, y, x)`` -> ``(map (batch, w0, y, x), attention)``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    @property
    def n_classes(self) -> int:
        """Number of output classes (``out_conv[-1]``)."""
        return self._config["out_conv"][-1]

    def forward(self, x: torch.Tensor, batch_positions: torch.Tensor | None = None,
                return_att: bool = False):
        """Segment a batch of image time series.

        Args:
            x: ``(batch, time, band, y, x)`` float, normalised; padded dates all ``pad_value``.
            batch_positions: ``(batch, time)`` days since the reference date.
            return_att: also return the L-TAE attention ``(n_head, batch, time, y', x')``.

        Returns:
            logits ``(batch, n_classes, y, x)``, or ``(logits, attention)``.
        """
        self.check_input(x, batch_positions)
        pad_mask = self.pad_mask(x)
        stem = shared_forward(self.in_conv, x, pad_mask, self.pad_value)
        collapsed, att = self.collapse_time(stem, batch_positions, pad_mask)
        out, _ = unet_forward(collapsed, self.down_blocks, self.up_blocks)
        logits = self.out_conv(out)
        return (logits, att) if return_att else logits
