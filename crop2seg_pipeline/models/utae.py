"""U-TAE: U-Net with Temporal Attention Encoder (Garnot & Landrieu, ICCV 2021).

A 2D convolutional U-Net encoder is shared by all dates; an :class:`~.ltae.LTAE2d` collapses the
time axis at the lowest resolution; its per-head attention masks, resized, collapse the skip
connections; a 2D decoder brings the map back to full resolution.

Module and parameter names mirror the reference implementation (VSainteuf/utae-paps,
``src/backbones/utae.py``), so ``UTAE(input_dim=10, out_conv=[32, 20]).load_state_dict(...)``
accepts a PASTIS checkpoint's ``state_dict`` as is (1,087,260 parameters).

Tensor conventions: ``x`` is ``(batch, time, band, y, x)`` float32, already normalised, with
padded dates set entirely to ``pad_value``; ``batch_positions`` is ``(batch, time)`` days since
the reference date; logits are ``(batch, class, y, x)``. ``y`` and ``x`` must be multiples of
``str_conv_s ** (len(encoder_widths) - 1)`` (8 with the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import ModelConfigError, SegmentationModel
from .ltae import LTAE2d
from .presets import MODELS

__all__ = [
    "UTAE",
    "UTAEOutput",
    "ModelConfigError",
    "PRESETS",
    "boundary_target",
    "ConvLayer",
    "ConvBlock",
    "DownConvBlock",
    "UpConvBlock",
    "TemporalAggregator",
    "encoder_blocks",
    "decoder_blocks",
    "unet_forward",
]


# --------------------------------------------------------------------------------------------
# Building blocks (attribute names chosen to reproduce the reference state_dict keys)
# --------------------------------------------------------------------------------------------

def _norm_factory(norm: str | None, n_groups: int = 4):
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "instance":
        return nn.InstanceNorm2d
    if norm == "group":
        return lambda c: nn.GroupNorm(num_groups=n_groups, num_channels=c)
    if norm in (None, "none"):
        return None
    raise ModelConfigError(f"unknown norm {norm!r}: use 'group', 'batch', 'instance' or 'none'")


class DepthwiseSeparableConv2d(nn.Module):
    """A depthwise ``k x k`` conv (one filter per channel) then a pointwise 1x1 conv, no biases.

    ``(n, d_in, y, x) -> (n, d_out, y', x')``; state ``depthwise.weight`` ``(d_in, 1, k, k)`` and
    ``pointwise.weight`` ``(d_out, d_in, 1, 1)``, as Crop2Seg's ``DepthwiseSeparableConv2D``.
    """

    def __init__(self, d_in: int, d_out: int, kernel_size: int = 3, padding: int = 1,
                 stride: int = 1, padding_mode: str = "zeros"):
        super().__init__()
        self.depthwise = nn.Conv2d(d_in, d_in, kernel_size=kernel_size, padding=padding,
                                   stride=stride, padding_mode=padding_mode, groups=d_in,
                                   bias=False)
        self.pointwise = nn.Conv2d(d_in, d_out, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


CONV_TYPES = ("2d", "depthwise_separable")


class ConvLayer(nn.Module):
    """A stack of ``conv -> norm -> ReLU`` for consecutive widths ``nkernels``.

    Input ``(n, nkernels[0], y, x)``; output ``(n, nkernels[-1], y', x')``. With
    ``last_relu=False`` the last ReLU is dropped (the last norm is kept). ``conv_type``:
    ``2d`` (``nn.Conv2d``) or ``depthwise_separable`` (:class:`DepthwiseSeparableConv2d`).
    """

    def __init__(self, nkernels: Sequence[int], norm: str | None = "batch", k: int = 3,
                 s: int = 1, p: int = 1, n_groups: int = 4, last_relu: bool = True,
                 padding_mode: str = "reflect", conv_type: str = "2d"):
        super().__init__()
        if conv_type not in CONV_TYPES:
            raise ModelConfigError(f"unknown conv_type {conv_type!r}: use one of {CONV_TYPES}")
        conv = nn.Conv2d if conv_type == "2d" else DepthwiseSeparableConv2d
        make_norm = _norm_factory(norm, n_groups)
        layers: list[nn.Module] = []
        n_conv = len(nkernels) - 1
        for i in range(n_conv):
            layers.append(conv(nkernels[i], nkernels[i + 1], kernel_size=k, padding=p,
                               stride=s, padding_mode=padding_mode))
            if make_norm is not None:
                layers.append(make_norm(nkernels[i + 1]))
            if last_relu or i < n_conv - 1:
                layers.append(nn.ReLU())
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvBlock(nn.Module):
    """:class:`ConvLayer` wrapper (3x3 convs), used for the input block and the output head."""

    def __init__(self, nkernels: Sequence[int], norm: str | None = "batch",
                 last_relu: bool = True, padding_mode: str = "reflect"):
        super().__init__()
        self.conv = ConvLayer(nkernels, norm=norm, last_relu=last_relu, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, nkernels[0], y, x) -> (n, nkernels[-1], y, x)``."""
        return self.conv(x)


class DownConvBlock(nn.Module):
    """Strided conv (downsampling by ``s``) then conv1 and a residual conv2.

    ``(n, d_in, y, x) -> (n, d_out, y / s, x / s)`` with the default k=4, s=2, p=1;
    ``conv_type`` as in :class:`ConvLayer`.
    """

    def __init__(self, d_in: int, d_out: int, k: int, s: int, p: int,
                 norm: str | None = "batch", padding_mode: str = "reflect",
                 conv_type: str = "2d"):
        super().__init__()
        self.down = ConvLayer([d_in, d_in], norm=norm, k=k, s=s, p=p, padding_mode=padding_mode,
                              conv_type=conv_type)
        self.conv1 = ConvLayer([d_in, d_out], norm=norm, padding_mode=padding_mode,
                               conv_type=conv_type)
        self.conv2 = ConvLayer([d_out, d_out], norm=norm, padding_mode=padding_mode,
                               conv_type=conv_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.down(x))
        return out + self.conv2(out)


class UpConvBlock(nn.Module):
    """Transposed conv (upsampling), concatenation with the 1x1-projected skip, two convs.

    ``input (n, d_in, y, x)`` and ``skip (n, d_skip, 2y, 2x)`` -> ``(n, d_out, 2y, 2x)``.
    """

    def __init__(self, d_in: int, d_out: int, k: int, s: int, p: int,
                 norm: str | None = "batch", d_skip: int | None = None,
                 padding_mode: str = "reflect"):
        super().__init__()
        d = d_out if d_skip is None else d_skip
        self.skip_conv = nn.Sequential(nn.Conv2d(d, d, kernel_size=1), nn.BatchNorm2d(d), nn.ReLU())
        self.up = nn.Sequential(
            nn.ConvTranspose2d(d_in, d_out, kernel_size=k, stride=s, padding=p),
            nn.BatchNorm2d(d_out),
            nn.ReLU(),
        )
        self.conv1 = ConvLayer([d_out + d, d_out], norm=norm, padding_mode=padding_mode)
        self.conv2 = ConvLayer([d_out, d_out], norm=norm, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.up(x), self.skip_conv(skip)], dim=1)
        out = self.conv1(out)
        return out + self.conv2(out)


class TemporalAggregator(nn.Module):
    """Collapse the time axis of a skip connection.

    Modes: ``att_group`` (each head's attention, resized to the map, weights its own channel
    group), ``att_mean`` (head-averaged attention weights all channels), ``mean`` (plain mean
    over the valid dates). Padded dates always get zero weight.
    """

    MODES = ("att_group", "att_mean", "mean")

    def __init__(self, mode: str = "mean"):
        super().__init__()
        if mode not in self.MODES:
            raise ModelConfigError(f"unknown agg_mode {mode!r}: use one of {self.MODES}")
        self.mode = mode

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Aggregate.

        Args:
            x: ``(batch, time, channels, y, x)`` skip features.
            pad_mask: ``(batch, time)`` bool, True on padded dates, or None.
            attn_mask: ``(n_head, batch, time, h, w)`` L-TAE attention (``att_*`` modes).

        Returns:
            ``(batch, channels, y, x)``.
        """
        b, t, c, hx, wx = x.shape
        keep = None if pad_mask is None or not bool(pad_mask.any()) else (~pad_mask).to(x.dtype)
        if self.mode == "mean":
            if keep is None:
                return x.mean(dim=1)
            total = (x * keep[:, :, None, None, None]).sum(dim=1)
            return total / keep.sum(dim=1)[:, None, None, None]
        n_head, _, _, h, w = attn_mask.shape
        if self.mode == "att_mean":
            attn = F.interpolate(attn_mask.mean(dim=0), size=(hx, wx), mode="bilinear",
                                 align_corners=False)
            if keep is not None:
                attn = attn * keep[:, :, None, None]
            return (x * attn[:, :, None]).sum(dim=1)
        # att_group
        attn = attn_mask.reshape(n_head * b, t, h, w)
        if hx > h:
            attn = F.interpolate(attn, size=(hx, wx), mode="bilinear", align_corners=False)
        else:
            attn = F.avg_pool2d(attn, kernel_size=h // hx)
        attn = attn.view(n_head, b, t, hx, wx)
        if keep is not None:
            attn = attn * keep[None, :, :, None, None]
        groups = x.view(b, t, n_head, c // n_head, hx, wx).permute(2, 0, 1, 3, 4, 5)
        out = (attn[:, :, :, None] * groups).sum(dim=2)  # (n_head, b, c/n_head, y, x)
        return out.permute(1, 0, 2, 3, 4).reshape(b, c, hx, wx)


def shared_forward(block: nn.Module, x: torch.Tensor, pad_mask: torch.Tensor | None,
                    pad_value: float) -> torch.Tensor:
    """Apply a 2D block to every (sample, date) image; padded dates are skipped.

    ``x (batch, time, c, y, x) -> (batch, time, c', y', x')``; padded dates come out filled with
    ``pad_value`` (they are not passed through the block, so they never touch norm statistics).
    """
    b, t = x.shape[:2]
    flat = x.reshape(b * t, *x.shape[2:])
    if pad_mask is None or not bool(pad_mask.any()):
        out = block(flat)
    else:
        valid = ~pad_mask.reshape(b * t)
        out_valid = block(flat[valid])
        out = out_valid.new_full((b * t, *out_valid.shape[1:]), float(pad_value))
        out = out.index_put((valid,), out_valid)
    return out.view(b, t, *out.shape[1:])


def encoder_blocks(widths: Sequence[int], k: int, s: int, p: int, norm: str | None,
                   padding_mode: str, conv_type: str = "2d") -> nn.ModuleList:
    """The ``len(widths) - 1`` :class:`DownConvBlock` of a U-Net encoder, ``widths[i] -> [i+1]``."""
    return nn.ModuleList(
        DownConvBlock(widths[i], widths[i + 1], k=k, s=s, p=p, norm=norm,
                      padding_mode=padding_mode, conv_type=conv_type)
        for i in range(len(widths) - 1)
    )


def decoder_blocks(encoder_widths: Sequence[int], decoder_widths: Sequence[int], k: int, s: int,
                   p: int, padding_mode: str) -> nn.ModuleList:
    """The :class:`UpConvBlock` of a U-Net decoder, lowest resolution first (BatchNorm)."""
    return nn.ModuleList(
        UpConvBlock(decoder_widths[i], decoder_widths[i - 1], d_skip=encoder_widths[i - 1],
                    k=k, s=s, p=p, norm="batch", padding_mode=padding_mode)
        for i in range(len(encoder_widths) - 1, 0, -1)
    )


def unet_forward(x: torch.Tensor, down_blocks: nn.ModuleList,
                 up_blocks: nn.ModuleList) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A plain 2D U-Net pass (skips concatenated as they are, no temporal aggregation).

    Args:
        x: ``(batch, encoder_widths[0], y, x)``.

    Returns:
        ``(out, maps)``: ``out`` ``(batch, decoder_widths[0], y, x)``; ``maps`` the decoder maps
        from the lowest resolution (the encoder's last output) to the highest.
    """
    feature_maps = [x]
    for block in down_blocks:
        feature_maps.append(block(feature_maps[-1]))
    out = feature_maps[-1]
    maps = [out]
    for i, block in enumerate(up_blocks):
        out = block(out, feature_maps[-(i + 2)])
        maps.append(out)
    return out, maps


def check_unet_widths(encoder_widths: Sequence[int], decoder_widths: Sequence[int],
                      out_conv: Sequence[int], encoder_norm: str | None) -> list[str]:
    """Problems (as sentences) of a U-Net width configuration; empty when it is consistent."""
    enc, dec = list(encoder_widths), list(decoder_widths)
    problems = []
    if len(enc) < 1 or len(enc) != len(dec):
        problems.append(f"encoder_widths {enc} and decoder_widths {dec} need the same "
                        "non-zero length")
    elif enc[-1] != dec[-1]:
        problems.append(f"encoder_widths[-1]={enc[-1]} must equal decoder_widths[-1]={dec[-1]}")
    if not out_conv:
        problems.append("out_conv needs at least one width (the number of classes)")
    if encoder_norm == "group" and any(w % 4 for w in enc):
        problems.append(f"with encoder_norm='group' every encoder width must be divisible "
                        f"by 4, got {enc}")
    return problems


# --------------------------------------------------------------------------------------------
# U-TAE
# --------------------------------------------------------------------------------------------

@dataclass
class UTAEOutput:
    """Everything :meth:`UTAE.forward_features` computes.

    Attributes:
        logits: ``(batch, n_classes, y, x)`` class scores.
        features: ``(batch, decoder_widths[0], y, x)`` last decoder feature map.
        attention: ``(n_head, batch, time, y / 2**(n_stages-1), x / ...)`` L-TAE attention.
        maps: decoder maps from lowest to highest resolution (L-TAE output first).
        boundary_logits: ``(batch, 1, y, x)`` when the model has a boundary head, else None.
    """

    logits: torch.Tensor
    features: torch.Tensor
    attention: torch.Tensor
    maps: list[torch.Tensor] = field(default_factory=list)
    boundary_logits: torch.Tensor | None = None


class UTAE(SegmentationModel):
    """U-TAE semantic segmentation network for image time series.

    Args:
        input_dim: input bands (10 for our Sentinel-2 cubes).
        encoder_widths: encoder channels per stage, full to lowest resolution; its length is the
            number of stages (downsamplings + 1). With ``encoder_norm='group'`` each width must be
            divisible by 4; with ``agg_mode='att_group'`` all but the last by ``n_head``.
        decoder_widths: decoder channels per stage (same length, same last width as the encoder);
            ``None``: equal to ``encoder_widths``.
        out_conv: widths of the output head after ``decoder_widths[0]``; the last one is the
            number of classes. As in the reference, every head conv is followed by BatchNorm and
            ReLU, the last one included (the logits are non-negative).
        str_conv_k, str_conv_s, str_conv_p: kernel, stride, padding of the strided down/up convs.
        agg_mode: skip-connection aggregation, ``att_group`` | ``att_mean`` | ``mean``.
        encoder_norm: encoder normalisation, ``group`` | ``batch`` | ``instance`` | ``none``.
        n_head, d_model, d_k: L-TAE heads, projection width, key width.
        return_maps: :meth:`forward` returns ``(logits, maps)`` instead of logits.
        pad_value: value of padded dates (a date whose every band and pixel equals it).
        padding_mode: spatial padding of the 3x3 convs (passed to ``nn.Conv2d``).
        T: period of the date encoding.
        boundary_head: add a separate 1-channel boundary head (``boundary_out``), read through
            :meth:`forward_features`; :meth:`forward` always returns the class logits alone.
        mask_padded_norm: padded dates are left out of the L-TAE input GroupNorm statistics, so
            padding never changes the result for real dates. ``False``: reference behaviour.

    ``model.config`` is a JSON-serialisable dict such that ``UTAE(**model.config)`` rebuilds the
    same architecture.
    """

    architecture = "utae"
    display_name = "U-TAE"

    def __init__(
        self,
        input_dim: int = 10,
        encoder_widths: Sequence[int] = (64, 64, 64, 128),
        decoder_widths: Sequence[int] | None = (32, 32, 64, 128),
        out_conv: Sequence[int] = (32, 20),
        str_conv_k: int = 4,
        str_conv_s: int = 2,
        str_conv_p: int = 1,
        agg_mode: str = "att_group",
        encoder_norm: str | None = "group",
        n_head: int = 16,
        d_model: int = 256,
        d_k: int = 4,
        return_maps: bool = False,
        pad_value: float = 0,
        padding_mode: str = "reflect",
        T: float = 1000,
        boundary_head: bool = False,
        mask_padded_norm: bool = True,
    ):
        super().__init__()
        encoder_widths = [int(v) for v in encoder_widths]
        decoder_widths = (list(encoder_widths) if decoder_widths is None
                          else [int(v) for v in decoder_widths])
        out_conv = [int(v) for v in out_conv]
        self._check(input_dim, encoder_widths, decoder_widths, out_conv, agg_mode, encoder_norm,
                    n_head, d_model)
        self._config: dict[str, Any] = dict(
            input_dim=int(input_dim), encoder_widths=encoder_widths,
            decoder_widths=decoder_widths, out_conv=out_conv, str_conv_k=int(str_conv_k),
            str_conv_s=int(str_conv_s), str_conv_p=int(str_conv_p), agg_mode=agg_mode,
            encoder_norm=encoder_norm, n_head=int(n_head), d_model=int(d_model), d_k=int(d_k),
            return_maps=bool(return_maps), pad_value=pad_value, padding_mode=padding_mode, T=T,
            boundary_head=bool(boundary_head), mask_padded_norm=bool(mask_padded_norm),
        )
        self.n_stages = len(encoder_widths)
        self.return_maps = return_maps
        self.pad_value = pad_value
        self.downscale = int(str_conv_s) ** (self.n_stages - 1)

        self.in_conv = ConvBlock([input_dim, encoder_widths[0], encoder_widths[0]],
                                 norm=encoder_norm, padding_mode=padding_mode)
        self.down_blocks = encoder_blocks(encoder_widths, str_conv_k, str_conv_s, str_conv_p,
                                          encoder_norm, padding_mode)
        self.up_blocks = decoder_blocks(encoder_widths, decoder_widths, str_conv_k, str_conv_s,
                                        str_conv_p, padding_mode)
        self.temporal_encoder = LTAE2d(
            in_channels=encoder_widths[-1], d_model=d_model, n_head=n_head,
            mlp=[d_model, encoder_widths[-1]], return_att=True, d_k=d_k, T=T,
            mask_padded_norm=mask_padded_norm,
        )
        self.temporal_aggregator = TemporalAggregator(mode=agg_mode)
        self.out_conv = ConvBlock([decoder_widths[0], *out_conv], padding_mode=padding_mode)
        self.boundary_out: nn.Module | None = None
        if boundary_head:
            hidden = out_conv[0] if len(out_conv) > 1 else decoder_widths[0]
            self.boundary_out = nn.Sequential(
                nn.Conv2d(decoder_widths[0], hidden, kernel_size=3, padding=1,
                          padding_mode=padding_mode),
                nn.BatchNorm2d(hidden),
                nn.ReLU(),
                nn.Conv2d(hidden, 1, kernel_size=1),
            )

    @staticmethod
    def _check(input_dim, enc, dec, out_conv, agg_mode, encoder_norm, n_head, d_model) -> None:
        problems = [] if input_dim >= 1 else [f"input_dim={input_dim} must be >= 1"]
        problems += check_unet_widths(enc, dec, out_conv, encoder_norm)
        if d_model % n_head or (enc and enc[-1] % n_head):
            problems.append(f"n_head={n_head} must divide d_model={d_model} and "
                            f"encoder_widths[-1]={enc[-1] if enc else None}")
        if agg_mode == "att_group" and any(w % n_head for w in enc[:-1]):
            problems.append(f"with agg_mode='att_group' n_head={n_head} must divide every "
                            f"encoder width, got {enc}")
        if problems:
            raise ModelConfigError("invalid U-TAE configuration: " + "; ".join(problems))

    @property
    def n_classes(self) -> int:
        """Number of output classes (``out_conv[-1]``)."""
        return self._config["out_conv"][-1]

    # ------------------------------------------------------------------ forward
    def _decode(self, x: torch.Tensor, batch_positions: torch.Tensor):
        self.check_input(x, batch_positions)
        pad_mask = self.pad_mask(x)
        out = shared_forward(self.in_conv, x, pad_mask, self.pad_value)
        feature_maps = [out]
        for block in self.down_blocks:
            out = shared_forward(block, out, pad_mask, self.pad_value)
            feature_maps.append(out)
        out, att = self.temporal_encoder(out, batch_positions=batch_positions, pad_mask=pad_mask)
        maps = [out]
        for i, block in enumerate(self.up_blocks):
            skip = self.temporal_aggregator(feature_maps[-(i + 2)], pad_mask=pad_mask,
                                            attn_mask=att)
            out = block(out, skip)
            maps.append(out)
        return out, att, maps

    def forward(self, x: torch.Tensor, batch_positions: torch.Tensor | None = None,
                return_att: bool = False):
        """Segment a batch of image time series.

        Args:
            x: ``(batch, time, band, y, x)`` float, normalised; padded dates all ``pad_value``.
            batch_positions: ``(batch, time)`` days since the reference date.
            return_att: also return the L-TAE attention ``(n_head, batch, time, y/8, x/8)``.

        Returns:
            logits ``(batch, n_classes, y, x)``; ``(logits, attention)`` with ``return_att``;
            ``(logits, maps)`` when built with ``return_maps``. Boundary logits are only
            available from :meth:`forward_features`.
        """
        out, att, maps = self._decode(x, batch_positions)
        logits = self.out_conv(out)
        if return_att:
            return logits, att
        if self.return_maps:
            return logits, maps
        return logits

    def forward_features(self, x: torch.Tensor,
                         batch_positions: torch.Tensor | None = None) -> UTAEOutput:
        """Run the network and return logits, boundary logits, features and attention.

        Same inputs as :meth:`forward`; see :class:`UTAEOutput` for the shapes.
        """
        out, att, maps = self._decode(x, batch_positions)
        boundary = self.boundary_out(out) if self.boundary_out is not None else None
        return UTAEOutput(logits=self.out_conv(out), features=out, attention=att, maps=maps,
                          boundary_logits=boundary)


# --------------------------------------------------------------------------------------------
# Presets and helpers
# --------------------------------------------------------------------------------------------

#: The U-TAE entries of :data:`~.presets.MODELS`: "utae" is the published PASTIS setup
#: (1,087,260 parameters with 20 classes, 1,085,805 with 15), "utae-small" (89,213) trains in
#: minutes on a laptop CPU.
PRESETS: dict[str, dict[str, Any]] = {
    name: dict(preset) for name, (arch, preset) in MODELS.items() if arch == "utae"
}


def boundary_target(label: torch.Tensor, ignore_index: int | None = 14) -> torch.Tensor:
    """Boundary pixels of a label map.

    A pixel is boundary when its 3x3 cross (itself and its 4 neighbours) holds more than one
    class -- the same as convolving the one-hot labels with a 3x3 cross and counting the classes
    present, as Crop2Seg does. Image edges use replicate padding (no boundary along the border).
    Pixels labelled ``ignore_index`` count as a class for their neighbours (a field next to an
    unclassified parcel has a boundary) but are never boundary themselves; mask them out of a
    boundary loss with ``label != ignore_index``.

    Args:
        label: ``(batch, y, x)`` integer class ids (``(y, x)`` is accepted too).
        ignore_index: the "not classified" id, or None.

    Returns:
        bool tensor shaped like ``label``.
    """
    if label.dtype.is_floating_point or label.dtype == torch.bool:
        raise TypeError(f"label must be an integer tensor, got {label.dtype}")
    squeeze = label.dim() == 2
    lab = label[None] if squeeze else label
    if lab.dim() != 3:
        raise ValueError(f"label must be (batch, y, x), got shape {tuple(label.shape)}")
    padded = F.pad(lab[:, None].to(torch.float64), (1, 1, 1, 1), mode="replicate")[:, 0]
    centre = padded[:, 1:-1, 1:-1]
    boundary = ((padded[:, :-2, 1:-1] != centre) | (padded[:, 2:, 1:-1] != centre)
                | (padded[:, 1:-1, :-2] != centre) | (padded[:, 1:-1, 2:] != centre))
    if ignore_index is not None:
        boundary &= lab != ignore_index
    return boundary[0] if squeeze else boundary
