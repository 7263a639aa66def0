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

import math

import torch
import torch.nn as nn

__all__ = ["PositionalEncoder", "MultiHeadAttention", "LTAE2d", "masked_group_norm"]


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

    The frequency table is a non-persistent buffer: it follows ``.to(device)`` and is not part
    of the ``state_dict``.
    """

    def __init__(self, d: int, T: float = 1000, repeat: int | None = None, offset: int = 0):
        super().__init__()
        self.d = d
        self.T = T
        self.repeat = repeat
        exponent = 2 * (torch.arange(offset, offset + d, dtype=torch.float32) // 2) / d
        self.register_buffer("denom", torch.pow(float(T), exponent), persistent=False)
        self.register_buffer("even", torch.arange(d) % 2 == 0, persistent=False)

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

    State: ``Q`` ``(n_head, d_k)`` and ``fc1_k`` (``d_in -> n_head * d_k``).
    """

    def __init__(self, n_head: int, d_k: int, d_in: int, attn_dropout: float = 0.1):
        super().__init__()
        if d_in % n_head:
            raise ValueError(f"d_in={d_in} must be divisible by n_head={n_head}")
        self.n_head = n_head
        self.d_k = d_k
        self.d_in = d_in
        self.Q = nn.Parameter(torch.zeros(n_head, d_k))
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
        scores = torch.einsum("hk,nthk->hnt", self.Q, keys) / self.temperature
        if pad_mask is not None:
            scores = scores.masked_fill(pad_mask[None], torch.finfo(scores.dtype).min)
        attn = self.dropout(torch.softmax(scores, dim=-1))
        values = v.view(n, seq_len, self.n_head, self.d_in // self.n_head)
        output = torch.einsum("hnt,nthc->hnc", attn, values)
        return output, attn


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
        out = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, t, c)
        pix_mask = None
        if pad_mask is not None:
            pix_mask = pad_mask[:, None, None, :].expand(b, h, w, t).reshape(b * h * w, t)
        if pix_mask is not None and self.mask_padded_norm and bool(pad_mask.any()):
            out = masked_group_norm(out, ~pix_mask, self.in_norm)
        else:
            out = self.in_norm(out.transpose(1, 2)).transpose(1, 2)
        if self.inconv is not None:
            out = self.inconv(out.transpose(1, 2)).transpose(1, 2)
        if self.positional_encoder is not None:
            if batch_positions is None:
                raise ValueError("batch_positions (batch, time) is required: the L-TAE encodes "
                                 "acquisition dates as days since the reference date")
            pe = self.positional_encoder(batch_positions)  # (b, t, d_model)
            out = out + pe[:, None, None].expand(b, h, w, t, self.d_model).reshape(b * h * w, t, -1)
        out, attn = self.attention_heads(out, pad_mask=pix_mask)
        out = out.permute(1, 0, 2).reshape(b * h * w, -1)  # concatenate heads
        out = self.out_norm(self.dropout(self.mlp(out)))
        out = out.view(b, h, w, -1).permute(0, 3, 1, 2)
        attn = attn.view(self.n_head, b, h, w, t).permute(0, 1, 4, 2, 3)
        if self.return_att:
            return out, attn
        return out
