"""Tests of crop2seg_pipeline.models: U-TAE / L-TAE, boundary targets, weights folders."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from crop2seg_pipeline.errors import Crop2SegError
from crop2seg_pipeline.models import (
    UTAE,
    CheckpointError,
    LTAE2d,
    ModelConfigError,
    boundary_target,
    build_model,
    load_model,
    load_reference_state_dict,
    save_weights,
)
from crop2seg_pipeline.models.ltae import PositionalEncoder
from crop2seg_pipeline.models.utae import PRESETS

# state_dict of the reference U-TAE (VSainteuf/utae-paps, src/backbones/utae.py + ltae.py) with
# input_dim=10 and out_conv=[32, 20], written down from the module tree of the reference code:
# UTAE.__init__ registers in_conv (ConvBlock -> ConvLayer -> Sequential: conv, GroupNorm, ReLU
# x2), down_blocks (down/conv1/conv2 ConvLayers, GroupNorm), up_blocks (skip_conv, up:
# ConvTranspose+BN, conv1/conv2 with BatchNorm), temporal_encoder (inconv Conv1d,
# attention_heads.Q / fc1_k, in_norm, out_norm, mlp Linear+BatchNorm1d) and out_conv
# (ConvBlock [32, 32, 20] with BatchNorm). Positional encoder and aggregator hold no state.
REFERENCE_STATE_DICT: list[tuple[str, tuple[int, ...]]] = [
    ("in_conv.conv.conv.0.weight", (64, 10, 3, 3)),
    ("in_conv.conv.conv.0.bias", (64,)),
    ("in_conv.conv.conv.1.weight", (64,)),
    ("in_conv.conv.conv.1.bias", (64,)),
    ("in_conv.conv.conv.3.weight", (64, 64, 3, 3)),
    ("in_conv.conv.conv.3.bias", (64,)),
    ("in_conv.conv.conv.4.weight", (64,)),
    ("in_conv.conv.conv.4.bias", (64,)),
    ("down_blocks.0.down.conv.0.weight", (64, 64, 4, 4)),
    ("down_blocks.0.down.conv.0.bias", (64,)),
    ("down_blocks.0.down.conv.1.weight", (64,)),
    ("down_blocks.0.down.conv.1.bias", (64,)),
    ("down_blocks.0.conv1.conv.0.weight", (64, 64, 3, 3)),
    ("down_blocks.0.conv1.conv.0.bias", (64,)),
    ("down_blocks.0.conv1.conv.1.weight", (64,)),
    ("down_blocks.0.conv1.conv.1.bias", (64,)),
    ("down_blocks.0.conv2.conv.0.weight", (64, 64, 3, 3)),
    ("down_blocks.0.conv2.conv.0.bias", (64,)),
    ("down_blocks.0.conv2.conv.1.weight", (64,)),
    ("down_blocks.0.conv2.conv.1.bias", (64,)),
    ("down_blocks.1.down.conv.0.weight", (64, 64, 4, 4)),
    ("down_blocks.1.down.conv.0.bias", (64,)),
    ("down_blocks.1.down.conv.1.weight", (64,)),
    ("down_blocks.1.down.conv.1.bias", (64,)),
    ("down_blocks.1.conv1.conv.0.weight", (64, 64, 3, 3)),
    ("down_blocks.1.conv1.conv.0.bias", (64,)),
    ("down_blocks.1.conv1.conv.1.weight", (64,)),
    ("down_blocks.1.conv1.conv.1.bias", (64,)),
    ("down_blocks.1.conv2.conv.0.weight", (64, 64, 3, 3)),
    ("down_blocks.1.conv2.conv.0.bias", (64,)),
    ("down_blocks.1.conv2.conv.1.weight", (64,)),
    ("down_blocks.1.conv2.conv.1.bias", (64,)),
    ("down_blocks.2.down.conv.0.weight", (64, 64, 4, 4)),
    ("down_blocks.2.down.conv.0.bias", (64,)),
    ("down_blocks.2.down.conv.1.weight", (64,)),
    ("down_blocks.2.down.conv.1.bias", (64,)),
    ("down_blocks.2.conv1.conv.0.weight", (128, 64, 3, 3)),
    ("down_blocks.2.conv1.conv.0.bias", (128,)),
    ("down_blocks.2.conv1.conv.1.weight", (128,)),
    ("down_blocks.2.conv1.conv.1.bias", (128,)),
    ("down_blocks.2.conv2.conv.0.weight", (128, 128, 3, 3)),
    ("down_blocks.2.conv2.conv.0.bias", (128,)),
    ("down_blocks.2.conv2.conv.1.weight", (128,)),
    ("down_blocks.2.conv2.conv.1.bias", (128,)),
    ("up_blocks.0.skip_conv.0.weight", (64, 64, 1, 1)),
    ("up_blocks.0.skip_conv.0.bias", (64,)),
    ("up_blocks.0.skip_conv.1.weight", (64,)),
    ("up_blocks.0.skip_conv.1.bias", (64,)),
    ("up_blocks.0.skip_conv.1.running_mean", (64,)),
    ("up_blocks.0.skip_conv.1.running_var", (64,)),
    ("up_blocks.0.skip_conv.1.num_batches_tracked", ()),
    ("up_blocks.0.up.0.weight", (128, 64, 4, 4)),
    ("up_blocks.0.up.0.bias", (64,)),
    ("up_blocks.0.up.1.weight", (64,)),
    ("up_blocks.0.up.1.bias", (64,)),
    ("up_blocks.0.up.1.running_mean", (64,)),
    ("up_blocks.0.up.1.running_var", (64,)),
    ("up_blocks.0.up.1.num_batches_tracked", ()),
    ("up_blocks.0.conv1.conv.0.weight", (64, 128, 3, 3)),
    ("up_blocks.0.conv1.conv.0.bias", (64,)),
    ("up_blocks.0.conv1.conv.1.weight", (64,)),
    ("up_blocks.0.conv1.conv.1.bias", (64,)),
    ("up_blocks.0.conv1.conv.1.running_mean", (64,)),
    ("up_blocks.0.conv1.conv.1.running_var", (64,)),
    ("up_blocks.0.conv1.conv.1.num_batches_tracked", ()),
    ("up_blocks.0.conv2.conv.0.weight", (64, 64, 3, 3)),
    ("up_blocks.0.conv2.conv.0.bias", (64,)),
    ("up_blocks.0.conv2.conv.1.weight", (64,)),
    ("up_blocks.0.conv2.conv.1.bias", (64,)),
    ("up_blocks.0.conv2.conv.1.running_mean", (64,)),
    ("up_blocks.0.conv2.conv.1.running_var", (64,)),
    ("up_blocks.0.conv2.conv.1.num_batches_tracked", ()),
    ("up_blocks.1.skip_conv.0.weight", (64, 64, 1, 1)),
    ("up_blocks.1.skip_conv.0.bias", (64,)),
    ("up_blocks.1.skip_conv.1.weight", (64,)),
    ("up_blocks.1.skip_conv.1.bias", (64,)),
    ("up_blocks.1.skip_conv.1.running_mean", (64,)),
    ("up_blocks.1.skip_conv.1.running_var", (64,)),
    ("up_blocks.1.skip_conv.1.num_batches_tracked", ()),
    ("up_blocks.1.up.0.weight", (64, 32, 4, 4)),
    ("up_blocks.1.up.0.bias", (32,)),
    ("up_blocks.1.up.1.weight", (32,)),
    ("up_blocks.1.up.1.bias", (32,)),
    ("up_blocks.1.up.1.running_mean", (32,)),
    ("up_blocks.1.up.1.running_var", (32,)),
    ("up_blocks.1.up.1.num_batches_tracked", ()),
    ("up_blocks.1.conv1.conv.0.weight", (32, 96, 3, 3)),
    ("up_blocks.1.conv1.conv.0.bias", (32,)),
    ("up_blocks.1.conv1.conv.1.weight", (32,)),
    ("up_blocks.1.conv1.conv.1.bias", (32,)),
    ("up_blocks.1.conv1.conv.1.running_mean", (32,)),
    ("up_blocks.1.conv1.conv.1.running_var", (32,)),
    ("up_blocks.1.conv1.conv.1.num_batches_tracked", ()),
    ("up_blocks.1.conv2.conv.0.weight", (32, 32, 3, 3)),
    ("up_blocks.1.conv2.conv.0.bias", (32,)),
    ("up_blocks.1.conv2.conv.1.weight", (32,)),
    ("up_blocks.1.conv2.conv.1.bias", (32,)),
    ("up_blocks.1.conv2.conv.1.running_mean", (32,)),
    ("up_blocks.1.conv2.conv.1.running_var", (32,)),
    ("up_blocks.1.conv2.conv.1.num_batches_tracked", ()),
    ("up_blocks.2.skip_conv.0.weight", (64, 64, 1, 1)),
    ("up_blocks.2.skip_conv.0.bias", (64,)),
    ("up_blocks.2.skip_conv.1.weight", (64,)),
    ("up_blocks.2.skip_conv.1.bias", (64,)),
    ("up_blocks.2.skip_conv.1.running_mean", (64,)),
    ("up_blocks.2.skip_conv.1.running_var", (64,)),
    ("up_blocks.2.skip_conv.1.num_batches_tracked", ()),
    ("up_blocks.2.up.0.weight", (32, 32, 4, 4)),
    ("up_blocks.2.up.0.bias", (32,)),
    ("up_blocks.2.up.1.weight", (32,)),
    ("up_blocks.2.up.1.bias", (32,)),
    ("up_blocks.2.up.1.running_mean", (32,)),
    ("up_blocks.2.up.1.running_var", (32,)),
    ("up_blocks.2.up.1.num_batches_tracked", ()),
    ("up_blocks.2.conv1.conv.0.weight", (32, 96, 3, 3)),
    ("up_blocks.2.conv1.conv.0.bias", (32,)),
    ("up_blocks.2.conv1.conv.1.weight", (32,)),
    ("up_blocks.2.conv1.conv.1.bias", (32,)),
    ("up_blocks.2.conv1.conv.1.running_mean", (32,)),
    ("up_blocks.2.conv1.conv.1.running_var", (32,)),
    ("up_blocks.2.conv1.conv.1.num_batches_tracked", ()),
    ("up_blocks.2.conv2.conv.0.weight", (32, 32, 3, 3)),
    ("up_blocks.2.conv2.conv.0.bias", (32,)),
    ("up_blocks.2.conv2.conv.1.weight", (32,)),
    ("up_blocks.2.conv2.conv.1.bias", (32,)),
    ("up_blocks.2.conv2.conv.1.running_mean", (32,)),
    ("up_blocks.2.conv2.conv.1.running_var", (32,)),
    ("up_blocks.2.conv2.conv.1.num_batches_tracked", ()),
    ("temporal_encoder.inconv.weight", (256, 128, 1)),
    ("temporal_encoder.inconv.bias", (256,)),
    ("temporal_encoder.attention_heads.Q", (16, 4)),
    ("temporal_encoder.attention_heads.fc1_k.weight", (64, 256)),
    ("temporal_encoder.attention_heads.fc1_k.bias", (64,)),
    ("temporal_encoder.in_norm.weight", (128,)),
    ("temporal_encoder.in_norm.bias", (128,)),
    ("temporal_encoder.out_norm.weight", (128,)),
    ("temporal_encoder.out_norm.bias", (128,)),
    ("temporal_encoder.mlp.0.weight", (128, 256)),
    ("temporal_encoder.mlp.0.bias", (128,)),
    ("temporal_encoder.mlp.1.weight", (128,)),
    ("temporal_encoder.mlp.1.bias", (128,)),
    ("temporal_encoder.mlp.1.running_mean", (128,)),
    ("temporal_encoder.mlp.1.running_var", (128,)),
    ("temporal_encoder.mlp.1.num_batches_tracked", ()),
    ("out_conv.conv.conv.0.weight", (32, 32, 3, 3)),
    ("out_conv.conv.conv.0.bias", (32,)),
    ("out_conv.conv.conv.1.weight", (32,)),
    ("out_conv.conv.conv.1.bias", (32,)),
    ("out_conv.conv.conv.1.running_mean", (32,)),
    ("out_conv.conv.conv.1.running_var", (32,)),
    ("out_conv.conv.conv.1.num_batches_tracked", ()),
    ("out_conv.conv.conv.3.weight", (20, 32, 3, 3)),
    ("out_conv.conv.conv.3.bias", (20,)),
    ("out_conv.conv.conv.4.weight", (20,)),
    ("out_conv.conv.conv.4.bias", (20,)),
    ("out_conv.conv.conv.4.running_mean", (20,)),
    ("out_conv.conv.conv.4.running_var", (20,)),
    ("out_conv.conv.conv.4.num_batches_tracked", ()),
]
PASTIS_N_PARAMS = 1_087_260


def _pastis_model(**kw) -> UTAE:
    return UTAE(input_dim=10, out_conv=[32, 20], **kw)


def _randomize_batchnorm(model: nn.Module) -> None:
    """Give BatchNorm layers non-trivial running statistics (as after training)."""
    g = torch.Generator().manual_seed(123)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _padded_batch(size: int = 32, t: int = 6, n_pad: int = 2, bands: int = 10):
    """B=2, T=6; the second sample's last ``n_pad`` dates are zero padding."""
    torch.manual_seed(0)
    x = torch.randn(2, t, bands, size, size)
    x[1, t - n_pad:] = 0
    pos = torch.tensor([[0, 20, 45, 80, 130, 200], [5, 35, 60, 110, 0, 0]], dtype=torch.float32)
    return x, pos


# ------------------------------------------------------------------------- architecture


def test_pastis_parameter_count():
    n = sum(p.numel() for p in _pastis_model().parameters())
    assert n == PASTIS_N_PARAMS
    assert sum(p.numel() for p in build_model("utae", n_classes=20).parameters()) == PASTIS_N_PARAMS


def test_state_dict_matches_reference():
    sd = _pastis_model().state_dict()
    got = [(k, tuple(v.shape)) for k, v in sd.items()]
    assert len(got) == len(REFERENCE_STATE_DICT) == 158
    assert dict(got) == dict(REFERENCE_STATE_DICT)
    assert [k for k, _ in got] == [k for k, _ in REFERENCE_STATE_DICT]  # same order too
    # the boundary head only adds keys, never renames the reference ones
    sd_b = _pastis_model(boundary_head=True).state_dict()
    assert set(sd) < set(sd_b)
    assert all(k.startswith("boundary_out.") for k in set(sd_b) - set(sd))


def test_published_defaults_and_config_round_trip():
    assert set(PRESETS) == {"utae", "utae-small"}
    m = build_model("utae", n_classes=15)
    cfg = m.config
    assert cfg["encoder_widths"] == [64, 64, 64, 128]
    assert cfg["decoder_widths"] == [32, 32, 64, 128]
    assert cfg["out_conv"] == [32, 15]
    assert (cfg["str_conv_k"], cfg["str_conv_s"], cfg["str_conv_p"]) == (4, 2, 1)
    assert (cfg["agg_mode"], cfg["encoder_norm"]) == ("att_group", "group")
    assert cfg["padding_mode"] == "reflect"
    assert (cfg["n_head"], cfg["d_model"], cfg["d_k"], cfg["pad_value"]) == (16, 256, 4, 0)
    assert json.loads(json.dumps(cfg)) == cfg
    rebuilt = UTAE(**cfg)
    assert rebuilt.config == cfg
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in m.state_dict().items()}
    small = build_model("utae-small", n_classes=15, input_dim=4, d_model=32)
    assert small.config["input_dim"] == 4 and small.config["d_model"] == 32
    assert small.config["out_conv"] == [16, 15]
    assert sum(p.numel() for p in small.parameters()) < 150_000


def test_bad_configs_raise_model_config_error():
    with pytest.raises(ModelConfigError, match="unknown model"):
        build_model("resnet", n_classes=15)
    with pytest.raises(ModelConfigError, match="n_head"):
        UTAE(n_head=5)
    with pytest.raises(ModelConfigError, match="decoder_widths"):
        UTAE(decoder_widths=[32, 32, 64, 64])
    assert issubclass(ModelConfigError, Crop2SegError)


def test_positional_encoding_formula():
    pe = PositionalEncoder(d=4, T=1000, repeat=3)
    days = torch.tensor([[0.0, 100.0, 365.0]])
    out = pe(days)
    assert out.shape == (1, 3, 12)
    t = 365.0
    expected = [math.sin(t), math.cos(t), math.sin(t / 1000 ** 0.5), math.cos(t / 1000 ** 0.5)]
    assert torch.allclose(out[0, 2, :4], torch.tensor(expected), atol=1e-6)
    assert torch.equal(out[..., :4], out[..., 8:])
    assert "denom" not in pe.state_dict()  # not persisted: keeps reference keys


# ------------------------------------------------------------------------- forward


def test_forward_shapes_with_padded_dates():
    x, pos = _padded_batch(size=32)
    torch.manual_seed(0)
    model = _pastis_model()
    logits = model(x, pos)
    assert logits.shape == (2, 20, 32, 32)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    model.eval()
    with torch.no_grad():
        logits, att = model(x, pos, return_att=True)
    assert att.shape == (16, 2, 6, 4, 4)
    # attention sums to one over the dates, padded dates get (numerically) no weight
    assert torch.allclose(att.sum(dim=2), torch.ones(16, 2, 4, 4), atol=1e-5)
    assert att[:, 1, 4:].abs().max() < 1e-6
    with torch.no_grad():
        out = model.forward_features(x, pos)
    assert out.features.shape == (2, 32, 32, 32) and out.boundary_logits is None
    assert [m.shape[1] for m in out.maps] == [128, 64, 32, 32]


def test_forward_rejects_bad_inputs():
    model = build_model("utae-small", n_classes=5)
    x, pos = _padded_batch(size=32)
    with pytest.raises(ValueError, match="bands"):
        model(x[:, :, :4], pos)
    with pytest.raises(ValueError, match="multiple of 8"):
        model(x[..., :30, :30], pos)
    with pytest.raises(ValueError, match="batch_positions"):
        model(x, pos[:, :3])
    with pytest.raises(ValueError, match="batch_positions"):
        model(x)


@pytest.mark.parametrize("preset", ["utae", "utae-small"])
def test_padded_dates_do_not_change_real_dates(preset):
    x, pos = _padded_batch(size=32)
    torch.manual_seed(1)
    model = build_model(preset, n_classes=15).eval()
    _randomize_batchnorm(model)
    with torch.no_grad():
        padded = model(x, pos)[1]
        trimmed = model(x[1:, :4], pos[1:, :4])[0]
        alone = model(x[:1], pos[:1])[0]
    assert torch.allclose(padded, trimmed, atol=1e-5), (padded - trimmed).abs().max()
    # the first sample is not affected by being batched with a padded one either
    with torch.no_grad():
        batched0 = model(x, pos)[0]
    assert torch.allclose(batched0, alone, atol=1e-5)


def test_reference_norm_is_not_pad_invariant_but_equal_without_padding():
    """mask_padded_norm=False reproduces the reference, where padding leaks into the L-TAE
    input GroupNorm; without padding both settings give the same numbers."""
    x, pos = _padded_batch(size=32)
    torch.manual_seed(2)
    ours = _pastis_model().eval()
    _randomize_batchnorm(ours)
    ref = _pastis_model(mask_padded_norm=False).eval()
    ref.load_state_dict(ours.state_dict())
    with torch.no_grad():
        assert torch.equal(ours(x[:1], pos[:1]), ref(x[:1], pos[:1]))
        leak = (ref(x, pos)[1] - ref(x[1:, :4], pos[1:, :4])[0]).abs().max()
    assert leak > 1e-4


@pytest.mark.parametrize("name", ["utae-small", "timeunet-small", "wtae-small", "unet3d-small"])
def test_few_adam_steps_reduce_loss(name):
    torch.manual_seed(0)
    b, t, c, s = 2, 5, 10, 32
    label = torch.zeros(b, s, s, dtype=torch.long)
    label[:, 4:20, 4:14] = 3
    label[:, 12:28, 18:30] = 5
    label[1, 20:28, 2:10] = 1
    label[:, 0, :] = 14  # an ignored row
    # each class has its own temporal profile in a couple of bands, plus noise
    profile = {0: (0.0, 0.0), 1: (1.0, -1.0), 3: (-1.0, 1.0), 5: (1.0, 1.0), 14: (0.0, 0.0)}
    ramp = torch.linspace(-1, 1, t)
    x = 0.3 * torch.randn(b, t, c, s, s)
    for k, (a0, a1) in profile.items():
        m = (label == k)[:, None]  # (b, 1, s, s)
        x[:, :, 0] += a0 * ramp[None, :, None, None] * m
        x[:, :, 1] += a1 * ramp.flip(0)[None, :, None, None] * m
    pos = torch.tensor([[0.0, 30, 60, 90, 120]] * b)
    model = build_model(name, n_classes=15)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    loss_fn = nn.CrossEntropyLoss(ignore_index=14)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(model(x, pos), label)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_boundary_head_forward_and_backward():
    torch.manual_seed(0)
    model = build_model("utae-small", n_classes=15, boundary_head=True)
    x, pos = _padded_batch(size=32)
    out = model.forward_features(x, pos)
    assert out.logits.shape == (2, 15, 32, 32)
    assert out.boundary_logits.shape == (2, 1, 32, 32)
    assert model(x, pos).shape == (2, 15, 32, 32)  # forward keeps the plain logits contract
    label = torch.zeros(2, 32, 32, dtype=torch.long)
    label[:, 8:24, 8:24] = 4
    target = boundary_target(label).float()[:, None]
    loss = nn.functional.binary_cross_entropy_with_logits(out.boundary_logits, target)
    loss.backward()
    assert model.boundary_out[0].weight.grad is not None
    assert model.boundary_out[0].weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------- boundary target


def test_boundary_target_hand_made():
    label = torch.tensor([[
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 3, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]])
    expected = torch.tensor([[
        [0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 0, 0],
    ]], dtype=torch.bool)
    got = boundary_target(label)
    assert got.dtype == torch.bool and got.shape == (1, 5, 5)
    assert torch.equal(got, expected)  # diagonal neighbours do not count (cross, not square)


def test_boundary_target_edges_use_replicate_padding():
    label = torch.tensor([[1, 1, 2, 2],
                          [1, 1, 2, 2],
                          [1, 1, 2, 2]])
    expected = torch.tensor([[0, 1, 1, 0]] * 3, dtype=torch.bool)
    assert torch.equal(boundary_target(label), expected)  # 2D input accepted too
    uniform = torch.full((2, 4, 4), 7)
    assert not boundary_target(uniform).any()  # the image border is not a boundary


def test_boundary_target_ignore_index():
    label = torch.tensor([[[2, 2, 14],
                           [2, 2, 14],
                           [2, 2, 14]]])
    got = boundary_target(label, ignore_index=14)
    assert torch.equal(got, torch.tensor([[[0, 1, 0]] * 3], dtype=torch.bool))
    got_none = boundary_target(label, ignore_index=None)
    assert torch.equal(got_none, torch.tensor([[[0, 1, 1]] * 3], dtype=torch.bool))
    with pytest.raises(TypeError):
        boundary_target(label.float())


def test_boundary_target_matches_one_hot_cross_convolution():
    torch.manual_seed(0)
    label = torch.randint(0, 4, (3, 9, 11))
    onehot = nn.functional.one_hot(label, 4).permute(0, 3, 1, 2).float()
    cross = torch.tensor([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]]).expand(4, 1, 3, 3)
    counts = nn.functional.conv2d(nn.functional.pad(onehot, (1, 1, 1, 1), mode="replicate"),
                                  cross, groups=4)
    expected = (counts > 0).sum(dim=1) > 1
    assert torch.equal(boundary_target(label, ignore_index=None), expected)


# ------------------------------------------------------------------------- checkpoints

META = {
    "bands": ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
    "normalization": {"mean": [0.1] * 10, "std": [1.0] * 10},
    "class_names": [f"c{i}" for i in range(15)],
    "reference_date": "2018-09-01",
    "training": {"epochs": 1, "patches": 2},
}


def _trained_small(seed: int = 0) -> UTAE:
    torch.manual_seed(seed)
    model = build_model("utae-small", n_classes=15)
    _randomize_batchnorm(model)
    return model.eval()


def test_checkpoint_round_trip(tmp_path):
    model = _trained_small()
    folder = save_weights(model, tmp_path / "w", META)
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "weights.pt"]
    doc = json.loads((folder / "model.json").read_text())
    assert doc["architecture"] == "utae" and doc["format_version"] == 1
    assert doc["config"] == model.config and doc["bands"] == META["bands"]
    # a plain state_dict that loads with weights_only=True
    raw = torch.load(folder / "weights.pt", weights_only=True)
    assert set(raw) == set(model.state_dict())

    loaded = load_model(folder, expect_bands=META["bands"], expect_classes=15)
    meta = loaded.meta
    assert not loaded.training
    assert meta["reference_date"] == "2018-09-01" and meta["config"] == model.config
    x, pos = _padded_batch(size=32)
    with torch.no_grad():
        assert torch.equal(model(x, pos), loaded(x, pos))


def test_save_weights_overwrites_atomically_and_validates_meta(tmp_path):
    model = _trained_small()
    save_weights(model, tmp_path, META)
    save_weights(_trained_small(seed=1), tmp_path, META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "weights.pt"]
    with pytest.raises(CheckpointError, match="reserved"):
        save_weights(model, tmp_path / "x", {"config": {}})
    with pytest.raises(CheckpointError, match="JSON"):
        save_weights(model, tmp_path / "y", {"obj": object()})
    assert not (tmp_path / "y" / "model.json").exists()


def test_wrong_bands_or_classes(tmp_path):
    save_weights(_trained_small(), tmp_path, META)
    with pytest.raises(CheckpointError, match=r"10 bands.*13 bands"):
        load_model(tmp_path, expect_bands=13)
    with pytest.raises(CheckpointError, match=r"15 classes.*20 classes"):
        load_model(tmp_path, expect_classes=20)
    with pytest.raises(CheckpointError, match="order"):
        load_model(tmp_path, expect_bands=list(reversed(META["bands"])))
    load_model(tmp_path, expect_bands=10, expect_classes=META["class_names"])


class _Payload:
    """An arbitrary class: unpickling it would mean running import-by-name code."""

    def __init__(self):
        self.note = "arbitrary object"


def test_pickled_object_is_refused(tmp_path):
    save_weights(_trained_small(), tmp_path, META)
    torch.save(_Payload(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="not a plain state_dict.*safety"):
        load_model(tmp_path)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="weights.pt.*model.json"):
        load_model(tmp_path / "nope")
    save_weights(_trained_small(), tmp_path, META)
    (tmp_path / "weights.pt").unlink()
    with pytest.raises(CheckpointError, match="lacks weights.pt"):
        load_model(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncate"])
def test_corrupt_weights(tmp_path, content):
    save_weights(_trained_small(), tmp_path, META)
    path = tmp_path / "weights.pt"
    if content == "truncate":
        data = path.read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path)


def test_invalid_model_json(tmp_path):
    save_weights(_trained_small(), tmp_path, META)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"architecture": "resnet", "config": {},
                                                     "format_version": 1}))
    with pytest.raises(CheckpointError, match="architecture"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"architecture": "utae",
                                                     "config": {"n_layers": 3},
                                                     "format_version": 1}))
    with pytest.raises(CheckpointError, match="valid U-TAE"):
        load_model(tmp_path)


def test_state_dict_not_fitting_config(tmp_path):
    save_weights(_trained_small(), tmp_path, META)
    doc = json.loads((tmp_path / "model.json").read_text())
    doc["config"]["decoder_widths"] = [16, 16, 24, 32]
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"shape mismatches.*up_blocks"):
        load_model(tmp_path)
    doc["config"]["decoder_widths"] = [16, 16, 16, 32]
    doc["config"]["boundary_head"] = True
    (tmp_path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"missing keys: boundary_out"):
        load_model(tmp_path)


def test_fine_tune_from_pastis_state_dict(tmp_path):
    torch.manual_seed(0)
    pastis = _pastis_model()
    _randomize_batchnorm(pastis)
    source = pastis.state_dict()
    torch.manual_seed(1)
    model = build_model("utae", n_classes=15)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    not_loaded = load_reference_state_dict(model, {"epoch": 3, "state_dict": source})
    head = [k for k in source if k.startswith(("out_conv.conv.conv.3.", "out_conv.conv.conv.4."))]
    assert sorted(not_loaded) == sorted(head) and len(head) == 7
    after = model.state_dict()
    for k, v in after.items():
        if k not in head:
            assert torch.equal(v, source[k]), k
    # the penultimate out_conv layer is loaded, the last one is freshly initialised
    assert torch.equal(after["out_conv.conv.conv.0.weight"], source["out_conv.conv.conv.0.weight"])
    last = "out_conv.conv.conv.3.weight"
    assert after[last].shape == (15, 32, 3, 3)
    assert not torch.equal(after[last], before[last])
    assert torch.equal(after["out_conv.conv.conv.4.running_var"], torch.ones(15))
    with pytest.raises(CheckpointError, match="head"):
        load_reference_state_dict(build_model("utae", n_classes=15), source, strict_head=True)
    # same class count: everything is loaded, from a file path too
    torch.save(source, tmp_path / "pastis.pt")
    same = _pastis_model()
    assert load_reference_state_dict(same, tmp_path / "pastis.pt") == []
    assert all(torch.equal(v, source[k]) for k, v in same.state_dict().items())


def test_ltae_standalone_shapes():
    torch.manual_seed(0)
    ltae = LTAE2d(in_channels=32, n_head=8, d_k=4, mlp=[64, 32], d_model=64, return_att=True)
    x = torch.randn(2, 5, 32, 4, 4)
    pos = torch.arange(5.0).repeat(2, 1) * 10
    out, att = ltae(x, batch_positions=pos, pad_mask=torch.zeros(2, 5, dtype=torch.bool))
    assert out.shape == (2, 32, 4, 4) and att.shape == (8, 2, 5, 4, 4)


# ------------------------------------------------------------------------- every architecture

ALL_SMALL = ["utae-small", "timeunet-small", "wtae-small", "unet3d-small"]


def test_one_load_model():
    import crop2seg_pipeline
    from crop2seg_pipeline.models import checkpoint

    assert crop2seg_pipeline.load_model is checkpoint.load_model is load_model


def test_shipped_demo_weights_still_load_as_utae():
    from pathlib import Path

    import crop2seg_pipeline

    folder = Path(crop2seg_pipeline.__file__).parent / "data" / "demo_weights"
    doc = json.loads((folder / "model.json").read_text())
    model = load_model(folder)
    assert isinstance(model, UTAE) and not model.training
    assert doc["architecture"] == model.architecture == "utae"
    assert model.meta == doc and model.config == doc["config"]
    assert model.downscale == 8 and model.n_classes == 15


@pytest.mark.parametrize("name", ALL_SMALL)
def test_weights_folder_round_trip_for_every_architecture(tmp_path, name):
    torch.manual_seed(0)
    model = build_model(name, n_classes=15)
    _randomize_batchnorm(model)
    model.eval()
    folder = save_weights(model, tmp_path / name, META)
    doc = json.loads((folder / "model.json").read_text())
    assert doc["architecture"] == model.architecture == name.split("-")[0]
    assert doc["config"] == model.config
    assert set(torch.load(folder / "weights.pt", weights_only=True)) == set(model.state_dict())
    loaded = load_model(folder, expect_bands=META["bands"], expect_classes=15)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.meta == doc and loaded.downscale == model.downscale
    x, pos = _padded_batch(size=32)
    with torch.no_grad():
        assert torch.equal(model(x, pos), loaded(x, pos))


def test_model_json_architecture_must_be_known_and_fit_the_config(tmp_path):
    save_weights(build_model("timeunet-small", n_classes=15), tmp_path, META)
    doc = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**doc, "architecture": "convlstm"}))
    with pytest.raises(CheckpointError, match=r"'convlstm' is not supported.*timeunet.*unet3d"):
        load_model(tmp_path)
    # weights of a Time-Unet declared as a W-TAE: the config is valid, the weights do not fit
    (tmp_path / "model.json").write_text(json.dumps({**doc, "architecture": "wtae"}))
    with pytest.raises(CheckpointError, match=r"missing keys: spatial_reduction"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({**doc, "architecture": "unet3d"}))
    with pytest.raises(CheckpointError, match="valid UNet3D"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="not one of the package's models"):
        save_weights(nn.Conv2d(1, 1, 1), tmp_path / "conv", META)


def test_day_of_year_models_must_agree_with_the_fed_reference_date(tmp_path):
    model = build_model("wtae-small", n_classes=15, use_doy=True, reference_date="2018-09-01")
    save_weights(model, tmp_path / "ok", META | {"reference_date": "2018-09-01"})
    assert load_model(tmp_path / "ok").config["reference_date"] == "2018-09-01"
    save_weights(model, tmp_path / "bad", META | {"reference_date": "2020-09-01"})
    with pytest.raises(CheckpointError, match="2018-09-01.*2020-09-01"):
        load_model(tmp_path / "bad")


def _reference_checkpoint(path, model: nn.Module, epoch: int = 7) -> dict:
    """A ``model.pth.tar`` as utae-paps' / Crop2Seg's training scripts write it."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, pos = _padded_batch(size=32)
    model.train()
    model(x, pos).mean().backward()
    opt.step()
    model.eval()
    state = {"epoch": epoch, "state_dict": model.state_dict(), "optimizer": opt.state_dict()}
    torch.save(state, path)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", ALL_SMALL)
def test_fine_tune_from_a_reference_format_checkpoint(tmp_path, name):
    torch.manual_seed(0)
    pastis = build_model(name, n_classes=20)  # PASTIS's 20 classes
    _randomize_batchnorm(pastis)
    source = _reference_checkpoint(tmp_path / "model.pth.tar", pastis)
    assert set(torch.load(tmp_path / "model.pth.tar", weights_only=True)) == {"epoch", "state_dict",
                                                                             "optimizer"}
    torch.manual_seed(1)
    model = build_model(name, n_classes=15)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    not_loaded = load_reference_state_dict(model, tmp_path / "model.pth.tar")
    heads = model.head_prefixes()
    head = [k for k in model.state_dict() if k.startswith(tuple(heads))]
    assert not_loaded == head and head
    after = model.state_dict()
    for k, v in after.items():
        if k in head:
            assert v.dim() == 0 or v.shape[0] == 15
        else:
            assert torch.equal(v, source[k]), k
    weight = next(k for k in head if k.endswith("weight"))
    assert not torch.equal(after[weight], before[weight])  # freshly initialised, not kept
    with pytest.raises(CheckpointError, match="head"):
        load_reference_state_dict(build_model(name, n_classes=15), tmp_path / "model.pth.tar",
                                  strict_head=True)
    # the same class count loads everything
    same = build_model(name, n_classes=20)
    assert load_reference_state_dict(same, tmp_path / "model.pth.tar") == []
    assert all(torch.equal(v, source[k]) for k, v in same.state_dict().items())


def test_reference_checkpoint_with_pickled_objects_is_refused(tmp_path):
    model = build_model("timeunet-small", n_classes=20)
    torch.save({"epoch": 1, "state_dict": model.state_dict(), "optimizer": _Payload()},
               tmp_path / "model.pth.tar")
    with pytest.raises(CheckpointError, match="pickled Python objects.*safety"):
        load_reference_state_dict(build_model("timeunet-small", n_classes=15),
                                  tmp_path / "model.pth.tar")
    torch.save(model, tmp_path / "whole_module.pth")  # a pickled nn.Module
    with pytest.raises(CheckpointError, match="not unpickled"):
        load_reference_state_dict(model, tmp_path / "whole_module.pth")


def test_checkpoint_of_another_architecture_is_refused():
    utae_state = build_model("utae-small", n_classes=15).state_dict()
    with pytest.raises(CheckpointError, match="shares no parameter.*UNet3D.*another architecture"):
        load_reference_state_dict(build_model("unet3d-small", n_classes=15), utae_state)
