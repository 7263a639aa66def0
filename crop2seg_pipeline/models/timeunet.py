"""Time-Unet: collapse time at full resolution with an L-TAE, then segment with a 2D U-Net.

Crop2Seg's best model (``TimeUNet_v1`` in Many98/Crop2Seg ``src/backbones/timeunet.py``; S2TSCzCrop
test: OA 91.2 %, macro IoU 73.5 %). Where U-TAE runs its temporal encoder at 1/8 resolution and
aggregates the skips with the resized attention masks, Time-Unet

1. applies a per-date conv stem (``in_conv``: ``input_dim -> w0 -> w0``, 3x3, group norm),
2. collapses the time axis of every full-resolution pixel with an L-TAE
   (:class:`~.ltae.Crop2SegLTAE`, ``w0 -> d_model``, ``n_head`` master queries, MLP back to
   ``w0``),
3. runs a plain 2D U-Net on the resulting ``(batch, w0, y, x)`` map (strided-conv encoder, the
   U-TAE decoder, skips concatenated as they are) and the U-TAE output head.

Module and parameter names mirror the reference, so a ``TimeUNet_v1`` ``state_dict`` loads with
``strict=True``: ``TimeUNet(input_dim=10, out_conv=[32, 15])`` has 1,052,589 parameters.

Tensor conventions as every model of the package: ``x`` ``(batch, time, band, y, x)`` float,
normalised, padded dates entirely ``pad_value``; ``batch_positions`` ``(batch, time)`` days since
the reference date; logits ``(batch, class, y, x)``; ``y``, ``x`` multiples of ``downscale``
(``str_conv_s ** (len(encoder_widths) - 1)``, 8 by default).
"""

from __future__ import annotations

import torch

from .collapse_unet import TimeCollapseUNet

__all__ = ["TimeUNet"]


class TimeUNet(TimeCollapseUNet):
    """Time-Unet (Crop2Seg ``TimeUNet_v1``) for image time series segmentation.

    Args:
        input_dim: input bands.
        encoder_widths: widths of the 2D U-Net encoder, full to lowest resolution (default
            ``(64, 64, 64, 128)``); ``encoder_widths[0]`` is also the width of the conv stem and
            of the L-TAE output.
        decoder_widths: decoder widths (same length and last width as the encoder); ``None``:
            the encoder widths.
        out_conv: widths of the output head after ``decoder_widths[0]``, the last one the number
            of classes (BatchNorm + ReLU after every conv, as in the reference).
        str_conv_k, str_conv_s, str_conv_p: kernel, stride, padding of the strided convs.
        encoder_norm: norm of the stem and encoder, ``group`` | ``batch`` | ``instance`` | ``none``.
        n_head, d_model, d_k: L-TAE heads (must divide ``encoder_widths[0]`` and ``d_model``),
            projection width, key width.
        pad_value: value of padded dates.
        padding_mode: spatial padding of the 3x3 convs.
        T: period of the sinusoidal date encoding (1000, fixed in the reference).
        use_doy, use_abs_rel_enc, add_linear, reference_date: date-encoding options of
            Crop2Seg, see :class:`~.ltae.Crop2SegLTAE`. ``use_doy`` encodes the day of year
            (the season) instead of days since the reference date: a model that has to work on
            other years than it was trained on. Both DOY options need ``reference_date`` (the
            ISO date of ``model.json["reference_date"]``).
        mask_padded_norm: padded dates are left out of the L-TAE input norm (default), so the
            output for a sample never depends on how much it was padded; ``False``: reference.

    Crop2Seg's ``conv_type``, ``add_squeeze_excit`` and ``num_queries`` options are not
    implemented. :meth:`forward` with ``return_att`` also returns the full-resolution attention
    ``(n_head, batch, time, y, x)``.
    """

    architecture = "timeunet"
    display_name = "Time-Unet"

    def _ltae_widths(self, enc: list[int]) -> dict[str, int | None]:
        return {"in_channels": enc[0], "out_channels": enc[0]}

    def collapse_time(self, stem: torch.Tensor, batch_positions: torch.Tensor,
                      pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every full-resolution pixel's sequence through the L-TAE: ``(batch, w0, y, x)``."""
        return self.temporal_encoder(stem, batch_positions=batch_positions, pad_mask=pad_mask)
