"""Lightweight Temporal Attention Encoder (L-TAE) applied independently to every pixel.

The L-TAE (Garnot & Landrieu, 2020) collapses the time axis of a feature-map sequence with a
multi-head attention whose query is a learnt "master query" per head (no query projection).
U-TAE runs it at the lowest resolution of its encoder and reuses its attention masks to
collapse the skip connections.

Parameter names, shapes and initialisation follow the reference implementation
(VSainteuf/utae-paps, ``src/backbones/ltae.py``) so its checkpoints load unchanged. One
behaviour differs on purpose, and can be switched back: the input ``GroupNorm`` (which normalises
over channels *and* dates) ignores padded dates, so padding a sequence never changes the output
computed for its real dates (see :class:`LTAE2d`).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable

import torch
import torch.nn as nn

__all__ = [
    "PositionalEncoder",
    "DayOfYearEncoder",
    "MultiHeadAttention",
    "LTAE2d",
    "Crop2SegLTAE",
    "masked_group_norm",
    "day_of_year",
]


class PositionalEncoder(nn.Module):
    """Sinusoidal encoding of acquisition dates (days since a reference date).

    Channel ``i`` of a ``d``-wide encoding is ``sin(t / T**(2*(i//2)/d))`` for even ``i`` and the
    matching ``cos`` for odd ``i``; the ``d`` channels are tiled ``repeat`` times so that each
    attention head receives the same encoding (``d = d_model // n_head``).

    Args:
        d: width of one copy of the encoding.
        T: period parameter (1000 in U-TAE).
        repeat: number of tiled copies (``None`` or 1: no tiling).
        offset: index of the first channel (kept for parity with the reference).
        add_linear: follow the (tiled) encoding by a learnt ``Linear`` of the same width
            (``fc``; Crop2Seg's ``add_linear`` option).

    The frequency table is a non-persistent buffer: it follows ``.to(device)`` and is not part
    of the ``state_dict``.
    """

    def __init__(self, d: int, T: float = 1000, repeat: int | None = None, offset: int = 0,
                 add_linear: bool = False):
        super().__init__()
        self.d = d
        self.T = T
        self.repeat = repeat
        exponent = 2 * (torch.arange(offset, offset + d, dtype=torch.float32) // 2) / d
        self.register_buffer("denom", torch.pow(float(T), exponent), persistent=False)
        self.register_buffer("even", torch.arange(d) % 2 == 0, persistent=False)
        width = d * (repeat if repeat is not None and repeat > 1 else 1)
        self.fc = nn.Linear(width, width) if add_linear else None

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Encode positions.

        Args:
            positions: ``(batch, time)`` days since the reference date (any real dtype).

        Returns:
            ``(batch, time, d * repeat)`` float tensor.
        """
        table = positions.to(self.denom.dtype)[..., None] / self.denom
        table = torch.where(self.even, torch.sin(table), torch.cos(table))
        if self.repeat is not None and self.repeat > 1:
            table = table.repeat(*([1] * (table.dim() - 1)), self.repeat)
        return table if self.fc is None else self.fc(table)


def day_of_year(batch_positions: torch.Tensor, reference_date: str | _dt.date) -> torch.Tensor:
    """Day of year (1 = January 1st .. 366) of ``reference_date + batch_positions`` days.

    Pure integer torch arithmetic (the proleptic Gregorian calendar), so it runs on any device
    and inside a graph. Fractional positions are floored to whole days.

    Args:
        batch_positions: ``(batch, time)`` days since ``reference_date``.
        reference_date: ISO date string or ``datetime.date``.

    Returns:
        ``(batch, time)`` int64.
    """
    ref = _dt.date.fromisoformat(str(reference_date)[:10]) if not isinstance(
        reference_date, _dt.date) else reference_date
    # H. Hinnant's civil_from_days on years that start on March 1st (leap day last)
    z = torch.floor(batch_positions.to(torch.float64)).to(torch.int64) + (ref.toordinal() + 305)
    era = torch.div(z, 146097, rounding_mode="floor")
    doe = z - era * 146097  # day of the 400-year era, 0..146096
    yoe = torch.div(doe - doe // 1460 + doe // 36524 - doe // 146096, 365, rounding_mode="floor")
    doy_march = doe - (365 * yoe + yoe // 4 - yoe // 100)  # 0 = March 1st .. 365
    # March..December: after January (31 days) and February (28 or 29) of the same year;
    # January/February (doy_march >= 306) belong to the next calendar year
    leap = ((yoe % 4 == 0) & ((yoe % 100 != 0) | (yoe == 0))).to(torch.int64)
    doy = torch.where(doy_march >= 306, doy_march - 306, doy_march + 59 + leap)
    return doy + 1


class DayOfYearEncoder(nn.Module):
    """A learnt embedding of the day of year (Crop2Seg's ``AbsolutePositionalEncoder``).

    The reference one-hot encodes ``dayofyear`` (1..366) over 365 classes and applies
    ``fc = Linear(365, d)``: the embedding of day ``j`` is ``fc.weight[:, j] + fc.bias``. Days 365
    and 366, which make the reference fail, share the embedding of day 364 here.

    Args:
        d: embedding width (``d_model // n_head``).
        repeat: number of tiled copies (one per head).
    """

    N_DAYS = 365

    def __init__(self, d: int, repeat: int | None = None):
        super().__init__()
        self.d = d
        self.repeat = repeat
        self.fc = nn.Linear(self.N_DAYS, d)

    def forward(self, doy: torch.Tensor) -> torch.Tensor:
        """``(batch, time)`` day of year -> ``(batch, time, d * repeat)``."""
        index = doy.to(torch.int64).clamp(0, self.N_DAYS - 1)
        table = self.fc.weight.t()[index] + self.fc.bias
        if self.repeat is not None and self.repeat > 1:
            table = table.repeat(*([1] * (table.dim() - 1)), self.repeat)
        return table


class MultiHeadAttention(nn.Module):
    """Multi-head attention with one learnt master query per head.

    Keys are a linear projection of the input; values are the input itself, split channel-wise
    into ``n_head`` groups of ``d_in // n_head`` channels (head ``h`` attends over group ``h``).

    Args:
        n_head: number of heads.
        d_k: key/query width per head.
        d_in: input width (must be divisible by ``n_head``).
        attn_dropout: dropout on the attention weights (training only).

        query_axis: store ``Q`` as ``(n_head, 1, d_k)`` (Crop2Seg's layout, one query per head)
            instead of U-TAE's ``(n_head, d_k)``; the computation is the same.

    State: ``Q`` ``(n_head, d_k)`` and ``fc1_k`` (``d_in -> n_head * d_k``).
    """

    def __init__(self, n_head: int, d_k: int, d_in: int, attn_dropout: float = 0.1,
                 query_axis: bool = False):
        super().__init__()
        if d_in % n_head:
            raise ValueError(f"d_in={d_in} must be divisible by n_head={n_head}")
        self.n_head = n_head
        self.d_k = d_k
        self.d_in = d_in
        self.Q = nn.Parameter(torch.zeros((n_head, 1, d_k) if query_axis else (n_head, d_k)))
        nn.init.normal_(self.Q, mean=0.0, std=math.sqrt(2.0 / d_k))
        self.fc1_k = nn.Linear(d_in, n_head * d_k)
        nn.init.normal_(self.fc1_k.weight, mean=0.0, std=math.sqrt(2.0 / d_k))
        self.temperature = math.sqrt(d_k)
        self.dropout = nn.Dropout(attn_dropout)

    def forward(
        self, v: torch.Tensor, pad_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend over the sequence axis.

        Args:
            v: ``(n, time, d_in)`` sequences (``n`` = batch x pixels).
            pad_mask: optional ``(n, time)`` bool, True on padded dates (they get zero weight).

        Returns:
            ``(output, attn)``: output ``(n_head, n, d_in // n_head)`` and attention weights
            ``(n_head, n, time)`` (summing to 1 over time).
        """
        n, seq_len, _ = v.shape
        keys = self.fc1_k(v).view(n, seq_len, self.n_head, self.d_k)
        query = self.Q.reshape(self.n_head, self.d_k)
        scores = torch.einsum("hk,nthk->hnt", query, keys) / self.temperature
        if pad_mask is not None:
            scores = scores.masked_fill(pad_mask[None], torch.finfo(scores.dtype).min)
        attn = self.dropout(torch.softmax(scores, dim=-1))
        values = v.view(n, seq_len, self.n_head, self.d_in // self.n_head)
        output = torch.einsum("hnt,nthc->hnc", attn, values)
        return output, attn


def pixel_attention(x: torch.Tensor, batch_positions: torch.Tensor | None,
                    encode_dates: Callable[[torch.Tensor], torch.Tensor] | None,
                    pad_mask: torch.Tensor | None, in_norm: nn.GroupNorm, inconv: nn.Module | None,
                    attention: MultiHeadAttention,
                    mask_padded_norm: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-pixel core of an L-TAE: input norm, projection, date encoding, attention.

    Args:
        x: ``(batch, time, channels, h, w)`` feature maps.
        batch_positions: ``(batch, time)`` days since the reference date.
        encode_dates: ``batch_positions`` -> ``(batch, time, d_model)`` encoding added after the
            projection, or None (no date encoding; ``batch_positions`` may then be None).
        pad_mask: ``(batch, time)`` bool, True on padded dates, or None.
        in_norm: the input GroupNorm (statistics over valid dates only with
            ``mask_padded_norm``).
        inconv: the 1x1 ``Conv1d`` projection to ``d_model``, or None.
        attention: the master-query attention.

    Returns:
        ``(heads, attn)``: per-head outputs ``(n_head, batch*h*w, d_model // n_head)`` and
        attention ``(n_head, batch*h*w, time)``, pixels in ``(batch, h, w)`` order.
    """
    b, t, c, h, w = x.shape
    pe = None
    if encode_dates is not None:
        if batch_positions is None:
            raise ValueError("batch_positions (batch, time) is required: the L-TAE encodes "
                             "acquisition dates as days since the reference date")
        pe = encode_dates(batch_positions)
    out = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, c)
    pix_mask = None
    if pad_mask is not None:
        pix_mask = pad_mask[:, None, None, :].expand(b, h, w, t).reshape(b * h * w, t)
    if pix_mask is not None and mask_padded_norm and bool(pad_mask.any()):
        out = masked_group_norm(out, ~pix_mask, in_norm)
    else:
        out = in_norm(out.transpose(1, 2)).transpose(1, 2)
    if inconv is not None:
        out = inconv(out.transpose(1, 2)).transpose(1, 2)
    if pe is not None:
        out = out + pe[:, None, None].expand(b, h, w, t, pe.shape[-1]).reshape(b * h * w, t, -1)
    return attention(out, pad_mask=pix_mask)


def masked_group_norm(x: torch.Tensor, valid: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """Group-normalise sequences over (channels of a group) x (valid dates) only.

    Equals ``norm(x.transpose(1, 2)).transpose(1, 2)`` when every date is valid.

    Args:
        x: ``(n, time, channels)``.
        valid: ``(n, time)`` bool, False on padded dates (excluded from the statistics).
        norm: the ``nn.GroupNorm`` whose groups, eps and affine parameters are used.

    Returns:
        ``(n, time, channels)``; padded dates are normalised with the valid dates' statistics.
    """
    n, t, c = x.shape
    g = norm.num_groups
    xg = x.view(n, t, g, c // g)
    w = valid.to(x.dtype)[:, :, None, None]
    count = (w.sum(dim=1, keepdim=True) * (c // g)).clamp_min(1.0)  # (n, 1, 1, 1)
    mean = (xg * w).sum(dim=(1, 3), keepdim=True) / count
    var = (((xg - mean) ** 2) * w).sum(dim=(1, 3), keepdim=True) / count
    out = ((xg - mean) / torch.sqrt(var + norm.eps)).view(n, t, c)
    if norm.affine:
        out = out * norm.weight + norm.bias
    return out


class LTAE2d(nn.Module):
    """L-TAE shared across the pixels of a feature-map sequence.

    Per pixel: GroupNorm -> 1x1 projection to ``d_model`` -> + positional encoding -> master-query
    multi-head attention -> concatenated heads -> MLP (Linear + BatchNorm1d + ReLU per layer) ->
    dropout -> GroupNorm.

    Args:
        in_channels: channels of the input feature maps.
        n_head: attention heads (must divide ``in_channels``, ``d_model`` and ``mlp[-1]``).
        d_k: key/query width per head.
        mlp: widths of the output MLP; ``mlp[0]`` must equal ``d_model``.
        dropout: dropout after the MLP.
        d_model: width after the input projection (``None``: no projection, ``in_channels``).
        T: period of the positional encoding.
        return_att: also return the attention masks.
        positional_encoding: add the date encoding (then ``batch_positions`` is required).
        mask_padded_norm: exclude padded dates from the input GroupNorm statistics (default).
            ``False`` reproduces the reference exactly, where padded dates (zeros) enter the
            statistics, so the result for a sequence depends on how much it was padded.

    State dict keys: ``inconv``, ``attention_heads.{Q,fc1_k}``, ``in_norm``, ``out_norm``,
    ``mlp.{0,1}`` -- as in the reference.
    """

    def __init__(
        self,
        in_channels: int = 128,
        n_head: int = 16,
        d_k: int = 4,
        mlp: list[int] | tuple[int, ...] = (256, 128),
        dropout: float = 0.2,
        d_model: int | None = 256,
        T: float = 1000,
        return_att: bool = False,
        positional_encoding: bool = True,
        mask_padded_norm: bool = True,
    ):
        super().__init__()
        mlp = list(mlp)
        self.in_channels = in_channels
        self.n_head = n_head
        self.return_att = return_att
        self.mask_padded_norm = mask_padded_norm
        if d_model is not None:
            self.d_model = d_model
            self.inconv = nn.Conv1d(in_channels, d_model, 1)
        else:
            self.d_model = in_channels
            self.inconv = None
        if mlp[0] != self.d_model:
            raise ValueError(f"mlp[0]={mlp[0]} must equal d_model={self.d_model}")
        for name, width in (("in_channels", in_channels), ("d_model", self.d_model),
                            ("mlp[-1]", mlp[-1])):
            if width % n_head:
                raise ValueError(f"{name}={width} must be divisible by n_head={n_head}")
        self.positional_encoder = (
            PositionalEncoder(self.d_model // n_head, T=T, repeat=n_head)
            if positional_encoding else None
        )
        self.attention_heads = MultiHeadAttention(n_head=n_head, d_k=d_k, d_in=self.d_model)
        self.in_norm = nn.GroupNorm(num_groups=n_head, num_channels=in_channels)
        self.out_norm = nn.GroupNorm(num_groups=n_head, num_channels=mlp[-1])
        layers: list[nn.Module] = []
        for a, b in zip(mlp[:-1], mlp[1:]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        batch_positions: torch.Tensor | None = None,
        pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Collapse the time axis.

        Args:
            x: ``(batch, time, in_channels, h, w)`` feature maps.
            batch_positions: ``(batch, time)`` days since the reference date.
            pad_mask: optional ``(batch, time)`` bool, True on padded dates.

        Returns:
            ``(batch, mlp[-1], h, w)`` embeddings, and with ``return_att`` also the attention
            ``(n_head, batch, time, h, w)``.
        """
        b, t, c, h, w = x.shape
        out, attn = pixel_attention(x, batch_positions, self.positional_encoder, pad_mask,
                                    self.in_norm, self.inconv, self.attention_heads,
                                    self.mask_padded_norm)
        out = out.permute(1, 0, 2).reshape(b * h * w, -1)  # concatenate heads
        out = self.out_norm(self.dropout(self.mlp(out)))
        out = out.view(b, h, w, -1).permute(0, 3, 1, 2)
        attn = attn.view(self.n_head, b, h, w, t).permute(0, 1, 4, 2, 3)
        if self.return_att:
            return out, attn
        return out


class Crop2SegLTAE(nn.Module):
    """Crop2Seg's L-TAE variant (``LTAE`` / ``LTAE4WTAE`` of its ``src/backbones/tae.py``).

    The same per-pixel computation as :class:`LTAE2d`, with Crop2Seg's parameter layout and its
    date-encoding options. Used at full resolution by Time-Unet and, attention only, on the
    reduced branch of W-TAE.

    Args:
        in_channels: channels of the input feature maps (divisible by ``n_head``).
        n_head: attention heads (divides ``in_channels``, ``d_model`` and ``out_channels``).
        d_k: key/query width per head.
        d_model: width after the input 1x1 projection (``None``: no projection).
        out_channels: width of the output embedding (one ``Linear + BatchNorm1d + ReLU``, then
            GroupNorm). ``None``: attention only -- :meth:`forward` returns the masks alone and
            the module holds no MLP / output norm (``LTAE4WTAE``).
        dropout: dropout after the MLP (training only).
        T: period of the sinusoidal date encoding (fixed to 1000 in the reference).
        use_doy: encode dates by their day of year with a learnt embedding
            (:class:`DayOfYearEncoder`) instead of the sinusoid of days since the reference
            date, so a model does not tie a season to one year. With ``add_linear`` the
            reference instead applies the sinusoid (+ linear) to the day of year; so does this.
        use_abs_rel_enc: add both encodings, the sinusoid of days since the reference date and
            the day-of-year embedding (``positional_encoder_abs``); takes precedence over
            ``use_doy``.
        add_linear: a learnt ``Linear`` after the sinusoid (``positional_encoder.fc``).
        reference_date: ISO date the positions count from; required by ``use_doy`` and
            ``use_abs_rel_enc`` (the reference fed days of year from its dataset; here they are
            derived from ``batch_positions``, so the model keeps the package's input contract).
        positional_encoding: add a date encoding at all.
        mask_padded_norm: padded dates are left out of the input GroupNorm statistics (default),
            so padding never changes the result; ``False`` reproduces the reference.

    State dict keys (as the reference): ``inconv``, ``attention_head.{Q (n_head, 1, d_k),
    fc1_k}``, ``in_norm``, ``positional_encoder.fc`` / ``positional_encoder_abs.fc`` when the
    options ask for them, and unless attention only ``mlp.0`` (Linear), ``mlp.2``
    (BatchNorm1d), ``out_norm``.
    """

    def __init__(
        self,
        in_channels: int = 128,
        n_head: int = 16,
        d_k: int = 4,
        d_model: int | None = 256,
        out_channels: int | None = 128,
        dropout: float = 0.2,
        T: float = 1000,
        use_doy: bool = False,
        use_abs_rel_enc: bool = False,
        add_linear: bool = False,
        reference_date: str | None = None,
        positional_encoding: bool = True,
        mask_padded_norm: bool = True,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.n_head = n_head
        self.d_model = d_model if d_model is not None else in_channels
        self.mask_padded_norm = mask_padded_norm
        self.use_abs_rel_enc = bool(use_abs_rel_enc)
        self.use_doy = bool(use_doy) and not self.use_abs_rel_enc
        self.add_linear = bool(add_linear)
        widths = [("in_channels", in_channels), ("d_model", self.d_model)]
        if out_channels is not None:
            widths.append(("out_channels", out_channels))
        for name, width in widths:
            if width % n_head:
                raise ValueError(f"{name}={width} must be divisible by n_head={n_head}")
        needs_date = positional_encoding and (self.use_doy or self.use_abs_rel_enc)
        self.reference_date: _dt.date | None = None
        if reference_date is not None:
            try:
                self.reference_date = _dt.date.fromisoformat(str(reference_date)[:10])
            except ValueError:
                raise ValueError(f"reference_date {reference_date!r} is not an ISO date "
                                 "(YYYY-MM-DD)") from None
        if needs_date and self.reference_date is None:
            raise ValueError("use_doy / use_abs_rel_enc need reference_date (the ISO date "
                             "batch_positions count days from) to derive the day of year")

        self.inconv = nn.Conv1d(in_channels, d_model, 1) if d_model is not None else None
        d_head = self.d_model // n_head
        self.positional_encoder: nn.Module | None = None
        self.positional_encoder_abs: nn.Module | None = None
        if positional_encoding:
            if self.use_doy and not self.add_linear:
                self.positional_encoder = DayOfYearEncoder(d_head, repeat=n_head)
            else:
                self.positional_encoder = PositionalEncoder(d_head, T=T, repeat=n_head,
                                                            add_linear=self.add_linear)
            if self.use_abs_rel_enc:
                self.positional_encoder_abs = DayOfYearEncoder(d_head, repeat=n_head)
        self.attention_head = MultiHeadAttention(n_head=n_head, d_k=d_k, d_in=self.d_model,
                                                 query_axis=True)
        self.in_norm = nn.GroupNorm(num_groups=n_head, num_channels=in_channels)
        self.attention_only = out_channels is None
        if not self.attention_only:
            self.out_norm = nn.GroupNorm(num_groups=n_head, num_channels=out_channels)
            # Identity placeholders keep the reference's indices (its Rearranges): Linear at
            # mlp.0, BatchNorm1d at mlp.2
            self.mlp = nn.Sequential(nn.Linear(self.d_model, out_channels), nn.Identity(),
                                     nn.BatchNorm1d(out_channels), nn.Identity(), nn.ReLU(),
                                     nn.Dropout(dropout))

    def encode_dates(self, batch_positions: torch.Tensor) -> torch.Tensor:
        """``(batch, time)`` days since the reference date -> ``(batch, time, d_model)``."""
        if self.use_abs_rel_enc:
            doy = day_of_year(batch_positions, self.reference_date)
            return self.positional_encoder(batch_positions) + self.positional_encoder_abs(doy)
        if self.use_doy:  # the embedding, or with add_linear the sinusoid, of the day of year
            return self.positional_encoder(day_of_year(batch_positions, self.reference_date))
        return self.positional_encoder(batch_positions)

    def forward(self, x: torch.Tensor, batch_positions: torch.Tensor | None = None,
                pad_mask: torch.Tensor | None = None):
        """Collapse the time axis (or only compute the attention masks).

        Args:
            x: ``(batch, time, in_channels, h, w)`` feature maps.
            batch_positions: ``(batch, time)`` days since the reference date.
            pad_mask: optional ``(batch, time)`` bool, True on padded dates.

        Returns:
            ``(out, attn)``: embedding ``(batch, out_channels, h, w)`` and attention
            ``(n_head, batch, time, h, w)``; attention only: ``attn`` alone.
        """
        b, t, c, h, w = x.shape
        encode = self.encode_dates if self.positional_encoder is not None else None
        heads, attn = pixel_attention(x, batch_positions, encode, pad_mask, self.in_norm,
                                      self.inconv, self.attention_head, self.mask_padded_norm)
        attn = attn.view(self.n_head, b, h, w, t).permute(0, 1, 4, 2, 3)
        if self.attention_only:
            return attn
        out = heads.permute(1, 0, 2).reshape(b * h * w, -1)  # concatenate heads
        out = self.out_norm(self.mlp(out))
        return out.view(b, h, w, -1).permute(0, 3, 1, 2), attn
