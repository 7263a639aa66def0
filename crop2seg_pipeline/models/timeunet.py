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

from typing import Any, Sequence

import torch

from .base import ModelConfigError, SegmentationModel
from .ltae import Crop2SegLTAE
from .utae import ConvBlock, check_unet_widths, decoder_blocks, encoder_blocks, shared_forward, \
    unet_forward

__all__ = ["TimeUNet"]


class TimeUNet(SegmentationModel):
    """Time-Unet (Crop2Seg ``TimeUNet_v1``) for image time series segmentation.

    Args:
        input_dim: input bands.
        encoder_widths: widths of the 2D U-Net encoder, full to lowest resolution;
            ``encoder_widths[0]`` is also the width of the conv stem and of the L-TAE output.
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
    """

    architecture = "timeunet"
    display_name = "Time-Unet"

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
    ):
        super().__init__()
        enc = [int(v) for v in encoder_widths]
        dec = list(enc) if decoder_widths is None else [int(v) for v in decoder_widths]
        out_conv = [int(v) for v in out_conv]
        problems = [] if input_dim >= 1 else [f"input_dim={input_dim} must be >= 1"]
        problems += check_unet_widths(enc, dec, out_conv, encoder_norm)
        if enc and (d_model % n_head or enc[0] % n_head):
            problems.append(f"n_head={n_head} must divide d_model={d_model} and "
                            f"encoder_widths[0]={enc[0]} (the L-TAE width)")
        if problems:
            raise ModelConfigError("invalid Time-Unet configuration: " + "; ".join(problems))
        self._config: dict[str, Any] = dict(
            input_dim=int(input_dim), encoder_widths=enc, decoder_widths=dec, out_conv=out_conv,
            str_conv_k=int(str_conv_k), str_conv_s=int(str_conv_s), str_conv_p=int(str_conv_p),
            encoder_norm=encoder_norm, n_head=int(n_head), d_model=int(d_model), d_k=int(d_k),
            pad_value=pad_value, padding_mode=padding_mode, T=T, use_doy=bool(use_doy),
            use_abs_rel_enc=bool(use_abs_rel_enc), add_linear=bool(add_linear),
            reference_date=None if reference_date is None else str(reference_date),
            mask_padded_norm=bool(mask_padded_norm),
        )
        self.pad_value = pad_value
        self.downscale = int(str_conv_s) ** (len(enc) - 1)

        # registration order = the reference's state_dict order
        self.in_conv = ConvBlock([input_dim, enc[0], enc[0]], norm=encoder_norm,
                                 padding_mode=padding_mode)
        self.down_blocks = encoder_blocks(enc, str_conv_k, str_conv_s, str_conv_p, encoder_norm,
                                          padding_mode)
        self.up_blocks = decoder_blocks(enc, dec, str_conv_k, str_conv_s, str_conv_p,
                                        padding_mode)
        try:
            self.temporal_encoder = Crop2SegLTAE(
                in_channels=enc[0], n_head=n_head, d_k=d_k, d_model=d_model, out_channels=enc[0],
                T=T, use_doy=use_doy, use_abs_rel_enc=use_abs_rel_enc, add_linear=add_linear,
                reference_date=reference_date, mask_padded_norm=mask_padded_norm)
        except ValueError as exc:
            raise ModelConfigError(f"invalid Time-Unet configuration: {exc}") from None
        self.out_conv = ConvBlock([dec[0], *out_conv], padding_mode=padding_mode)

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
            return_att: also return the L-TAE attention ``(n_head, batch, time, y, x)``.

        Returns:
            logits ``(batch, n_classes, y, x)``, or ``(logits, attention)``.
        """
        self.check_input(x, batch_positions)
        pad_mask = self.pad_mask(x)
        stem = shared_forward(self.in_conv, x, pad_mask, self.pad_value)  # (b, t, w0, y, x)
        collapsed, att = self.temporal_encoder(stem, batch_positions=batch_positions,
                                               pad_mask=pad_mask)         # (b, w0, y, x)
        out, _ = unet_forward(collapsed, self.down_blocks, self.up_blocks)
        logits = self.out_conv(out)
        return (logits, att) if return_att else logits

