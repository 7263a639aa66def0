"""W-TAE: attention masks from a cheap reduced branch collapse time at full resolution.

Crop2Seg's ``WTAE`` (Many98/Crop2Seg ``src/backbones/wtae.py``):

1. a per-date conv stem (``in_conv``: ``input_dim -> w0 -> w0``, 3x3, group norm) at full
   resolution;
2. a strided branch of depthwise-separable down blocks (``spatial_reduction``) brings every date
   to ``1 / downscale`` resolution and ``encoder_widths[-1]`` channels, where an L-TAE computes
   only its attention masks (:class:`~.ltae.Crop2SegLTAE` with ``out_channels=None``);
3. the masks, upsampled bilinearly, collapse the full-resolution stem sequence (``att_group``:
   head ``h`` weights channel group ``h``; or ``att_mean`` / ``mean``);
4. a plain 2D U-Net and the U-TAE output head segment the ``(batch, w0, y, x)`` map.

Module and parameter names mirror the reference, so a ``WTAE`` ``state_dict`` loads with
``strict=True``: ``WTAE(input_dim=10, out_conv=[32, 15])`` has 1,114,157 parameters.

Tensor conventions as every model of the package: ``x`` ``(batch, time, band, y, x)`` float,
normalised, padded dates entirely ``pad_value``; ``batch_positions`` ``(batch, time)`` days since
the reference date; logits ``(batch, class, y, x)``; ``y``, ``x`` multiples of ``downscale``
(``str_conv_s ** (len(encoder_widths) - 1)``, 8 by default).
"""

from __future__ import annotations

from typing import Any

import torch

from .collapse_unet import TimeCollapseUNet
from .utae import TemporalAggregator, encoder_blocks, shared_forward

__all__ = ["WTAE"]


class WTAE(TimeCollapseUNet):
    """W-TAE (Crop2Seg ``WTAE``) for image time series segmentation.

    Args:
        input_dim: input bands.
        encoder_widths: widths of the reduction branch and of the 2D U-Net encoder, full to
            lowest resolution (``encoder_widths[-1]`` is the L-TAE input width).
        decoder_widths: decoder widths (same length and last width as the encoder); ``None``:
            the encoder widths.
        out_conv: widths of the output head after ``decoder_widths[0]``, the last one the number
            of classes.
        str_conv_k, str_conv_s, str_conv_p: kernel, stride, padding of the strided convs.
        agg_mode: how the masks collapse the full-resolution sequence: ``att_group`` (default;
            ``n_head`` must divide ``encoder_widths[0]``), ``att_mean`` or ``mean``.
        encoder_norm: norm of the stem, branch and encoder.
        n_head, d_model, d_k: L-TAE heads (must divide ``encoder_widths[-1]`` and ``d_model``),
            projection width, key width.
        pad_value: value of padded dates.
        padding_mode: spatial padding of the convs.
        T: period of the sinusoidal date encoding (1000, fixed in the reference).
        use_doy, use_abs_rel_enc, add_linear, reference_date: date-encoding options of
            Crop2Seg, see :class:`~.ltae.Crop2SegLTAE` (``use_doy``: encode the season, not the
            date; needs ``reference_date``).
        mask_padded_norm: padded dates are left out of the L-TAE input norm (default), so the
            output never depends on how much a sample was padded; ``False``: reference.

    ``agg_mode`` is keyword-only (the other arguments keep the reference's order). Crop2Seg's
    ``use_mbconv``, ``add_squeeze_excit``, ``conv_type``, ``num_queries`` and boundary head
    (``add_boundary_loss``) options are not implemented. :meth:`forward` with ``return_att`` also
    returns the reduced branch's attention ``(n_head, batch, time, y / downscale, x / downscale)``.
    """

    architecture = "wtae"
    display_name = "W-TAE"

    def __init__(self, *args: Any, agg_mode: str = "att_group", **kwargs: Any):
        super().__init__(*args, _options={"agg_mode": agg_mode}, **kwargs)

    def _ltae_widths(self, enc: list[int]) -> dict[str, int | None]:
        return {"in_channels": enc[-1], "out_channels": None}  # attention only

    def _problems(self, enc: list[int], n_head: int, options: dict[str, Any]) -> list[str]:
        if options["agg_mode"] == "att_group" and enc[0] % n_head:
            return [f"with agg_mode='att_group' n_head={n_head} must divide "
                    f"encoder_widths[0]={enc[0]}"]
        return []

    def _add_branch(self, enc: list[int], **conv: Any) -> None:
        self.spatial_reduction = encoder_blocks(enc, conv["k"], conv["s"], conv["p"],
                                                conv["encoder_norm"], conv["padding_mode"],
                                                conv_type="depthwise_separable")

    def _add_aggregation(self, options: dict[str, Any]) -> None:
        self.temporal_aggregator = TemporalAggregator(mode=options["agg_mode"])

    def collapse_time(self, stem: torch.Tensor, batch_positions: torch.Tensor,
                      pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention from the reduced branch, resized, collapses the full-resolution stem."""
        reduced = stem
        for block in self.spatial_reduction:  # -> (b, t, w[-1], y / ds, x / ds)
            reduced = shared_forward(block, reduced, pad_mask, self.pad_value)
        att = self.temporal_encoder(reduced, batch_positions=batch_positions, pad_mask=pad_mask)
        return self.temporal_aggregator(stem, pad_mask=pad_mask, attn_mask=att), att
