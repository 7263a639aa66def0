"""Tests of Crop2Seg's Time-Unet and W-TAE, utae-paps' UNet3D, and the model registry.

Two data files pin the reference implementations (Crop2Seg ``TimeUNet_v1`` / ``WTAE``,
utae-paps ``UNet3D``; their code is not vendored), both written by running the reference classes
themselves:

- ``tests/data/reference_state_dicts.json``: ``state_dict`` keys, shapes and parameter counts
  with 10 bands and 15 classes;
- ``tests/data/reference_outputs.json``: logits (summarised by :func:`golden_summary`) of the
  reference classes in eval mode, with the weights of :func:`deterministic_fill` and the input
  of :func:`deterministic_batch`, for small and default configurations and the date options.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import click
import pytest
import torch
import torch.nn as nn

from crop2seg_pipeline.cli.train import train_cmd
from crop2seg_pipeline.errors import Crop2SegError
from crop2seg_pipeline.models import (
    MODEL_NAMES,
    TimeUNet,
    UNet3D,
    WTAE,
    ModelConfigError,
    build_model,
)
from crop2seg_pipeline.models.ltae import day_of_year
from crop2seg_pipeline.models.registry import ARCHITECTURES

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "reference_state_dicts.json").read_text())
GOLDEN = json.loads((DATA / "reference_outputs.json").read_text())
NEW = {"timeunet": TimeUNet, "wtae": WTAE, "unet3d": UNet3D}

#: parameters with 10 bands and 15 classes (the README's table)
PARAMETERS = {
    "utae": 1_085_805, "utae-small": 89_213,
    "timeunet": 1_052_589, "timeunet-small": 87_053,
    "wtae": 1_114_157, "wtae-small": 92_461,
    "unet3d": 1_551_631, "unet3d-small": 100_207,
}
SMALL = ["timeunet-small", "wtae-small", "unet3d-small"]


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomize_batchnorm(model: nn.Module, seed: int = 123) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _batch(size: int = 32, t: int = 6, n_pad: int = 2, bands: int = 10):
    """B=2; the second sample's last ``n_pad`` dates are zero padding."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, t, bands, size, size, generator=g)
    pos = torch.sort(torch.randint(0, 300, (2, t), generator=g), dim=1).values.float()
    if n_pad:
        x[1, t - n_pad:] = 0
        pos[1, t - n_pad:] = 0
    return x, pos


def _model(name: str, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, n_classes=15, **kw).eval()
    _randomize_batchnorm(model)
    return model


# ------------------------------------------------------------------------- reference facts


@pytest.mark.parametrize("arch", sorted(NEW))
def test_state_dict_keys_and_shapes_equal_the_reference_class(arch):
    model = build_model(arch, n_classes=15)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    expected = REFERENCE[arch]["state_dict"]
    assert {k: tuple(s) for k, s in got} == {k: tuple(s) for k, s in expected}
    assert got == expected  # the same order too
    assert _n_params(model) == REFERENCE[arch]["parameters"] == PARAMETERS[arch]
    # a reference-shaped state_dict loads strictly into a freshly built model
    fresh = NEW[arch](input_dim=10, **({"n_classes": 15} if arch == "unet3d" else {"out_conv": [32, 15]}))
    fresh.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("arch,option,key", [("timeunet-use_doy", {"use_doy": True}, "timeunet"),
                                             ("wtae-use_abs_rel_enc", {"use_abs_rel_enc": True}, "wtae")])
def test_date_encoding_options_add_the_reference_keys(arch, option, key):
    model = build_model(key, n_classes=15, reference_date="2018-09-01", **option)
    extra = [[k, list(v.shape)] for k, v in model.state_dict().items() if "positional" in k]
    assert extra == REFERENCE[arch]["state_dict"]
    assert _n_params(model) == REFERENCE[arch]["parameters"]


def test_every_name_and_its_parameter_count():
    assert MODEL_NAMES == tuple(PARAMETERS)
    for name in MODEL_NAMES:
        model = build_model(name, n_classes=15)
        assert _n_params(model) == PARAMETERS[name], name
        assert type(model) is ARCHITECTURES[model.architecture]
        assert (model.n_classes, model.input_dim) == (15, 10)
    assert {build_model(n, 15).architecture for n in MODEL_NAMES} == {"utae", "timeunet", "wtae", "unet3d"}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_round_trip_and_contract_attributes(name):
    model = build_model(name, n_classes=7, input_dim=4)
    cfg = model.config
    assert json.loads(json.dumps(cfg)) == cfg
    rebuilt = type(model)(**cfg)
    assert rebuilt.config == cfg
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert (model.n_classes, model.input_dim) == (7, 4)
    assert model.downscale == (4 if model.architecture == "unet3d" else 8)
    assert model.head_prefixes() and all(any(k.startswith(p) for k in model.state_dict())
                                         for p in model.head_prefixes())


def test_cli_train_offers_every_model_name():
    choice = next(p for p in train_cmd.params if p.name == "model").type
    assert isinstance(choice, click.Choice) and tuple(choice.choices) == MODEL_NAMES


def test_bad_names_and_configs():
    with pytest.raises(ModelConfigError, match="unknown model 'resnet'.*timeunet"):
        build_model("resnet", n_classes=15)
    with pytest.raises(ModelConfigError, match="wtae.*unexpected keyword"):
        build_model("wtae", n_classes=15, feats=3)
    with pytest.raises(ModelConfigError, match="n_head=5 must divide"):
        TimeUNet(n_head=5)
    with pytest.raises(ModelConfigError, match="att_group.*encoder_widths\\[0\\]=24"):
        WTAE(encoder_widths=[24, 64, 64, 128], n_head=16)
    with pytest.raises(ModelConfigError, match="reference_date"):
        build_model("timeunet", n_classes=15, use_doy=True)
    with pytest.raises(ModelConfigError, match="not an ISO date"):
        build_model("wtae", n_classes=15, use_doy=True, reference_date="September")
    with pytest.raises(ModelConfigError, match="feats=0"):
        UNet3D(feats=0)
    assert issubclass(ModelConfigError, Crop2SegError)


def deterministic_fill(model: nn.Module) -> None:
    """Set every parameter and BatchNorm statistic from a closed formula (no RNG): entry ``i`` of
    the state_dict follows ``w = sin(0.37 k + 1.3 i)``, scaled like a He initialisation for
    weight tensors (``w * sqrt(2 / fan_in)``), ``1 + 0.2 w`` for norm scales, ``0.1 w`` for biases
    and running means, ``0.75 + 0.25 w`` for running variances; the one-hot day-of-year
    embeddings get ``w``."""
    with torch.no_grad():
        for i, (key, value) in enumerate(model.state_dict().items()):
            if not value.is_floating_point():
                continue
            wave = torch.sin(0.37 * torch.arange(value.numel(), dtype=torch.float64) + 1.3 * i)
            wave = wave.reshape(value.shape)
            if key.endswith("running_var"):
                wave = 0.75 + 0.25 * wave
            elif key.endswith(("bias", "running_mean")):
                wave = 0.1 * wave
            elif value.dim() == 1:
                wave = 1 + 0.2 * wave
            elif not ("positional" in key and value.shape[-1] == 365):
                wave = wave * math.sqrt(2.0 / (value.numel() // value.shape[0]))
            value.copy_(wave.to(value.dtype))


def deterministic_batch(t: int, size: int, n_pad: int):
    """``(2, t, 10, size, size)`` input from a formula; the second sample's last ``n_pad`` dates
    are zero padding; positions are days since 2018-09-01."""
    k = torch.arange(2 * t * 10 * size * size, dtype=torch.float64)
    x = torch.sin(0.013 * k + 0.5 * torch.cos(0.0007 * k)).reshape(2, t, 10, size, size).float()
    pos = torch.tensor([[17.0 + 29 * j for j in range(t)], [40.0 + 33 * j for j in range(t)]])
    if n_pad:
        x[1, t - n_pad:] = 0
        pos[1, t - n_pad:] = 0
    return x, pos


def golden_summary(logits: torch.Tensor) -> list[float]:
    """Per-sample per-class spatial means, then the logits at four pixels."""
    means = logits.mean(dim=(2, 3)).flatten()
    h, w = logits.shape[2:]
    pixels = logits[:, :, [0, h // 3, h // 2, h - 1], [0, w - 1, w // 2, w // 5]].flatten()
    return [float(v) for v in torch.cat([means, pixels])]


@pytest.mark.parametrize("case", sorted(k for k in GOLDEN if not k.startswith("_")))
def test_outputs_equal_the_reference_implementation(case):
    """Logits of the reference classes (with the deterministic weights above) were written to
    tests/data/reference_outputs.json; ours, loading that state_dict, give the same."""
    spec = GOLDEN[case]
    model = ARCHITECTURES[spec["architecture"]](**spec["config"]).eval()
    deterministic_fill(model)
    x, pos = deterministic_batch(**spec["batch"])
    with torch.no_grad():
        got = golden_summary(model(x, pos))
    # float32 rounding grows with the logits' magnitude and depends on how BLAS splits the sums
    # (OMP_NUM_THREADS=1, as under a Dask nanny or in a SLURM job, differs from the multi-threaded
    # run that wrote the file by up to 1.2e-5 on wtae-small, whose logits reach 2.4): the absolute
    # tolerance is 1e-5 of the largest expected logit (at least 1e-5). A real difference of
    # implementation moves logits by 1e-2 and more.
    scale = max(1.0, max(abs(v) for v in spec["summary"]))
    assert got == pytest.approx(spec["summary"], rel=1e-4, abs=1e-5 * scale)


def test_day_of_year_embedding_is_the_reference_one_hot_linear():
    from crop2seg_pipeline.models.ltae import DayOfYearEncoder

    torch.manual_seed(0)
    enc = DayOfYearEncoder(4, repeat=3)
    doy = torch.arange(1, 365)[None]
    onehot = nn.functional.one_hot(doy, 365).float() @ enc.fc.weight.t() + enc.fc.bias
    assert torch.allclose(enc(doy), onehot.repeat(1, 1, 3), atol=1e-6)
    # days 365 and 366 (where the reference fails) share day 364's embedding
    assert torch.equal(enc(torch.tensor([[365, 366]])), enc(torch.tensor([[364, 364]])))


# ------------------------------------------------------------------------- forward


@pytest.mark.parametrize("name", SMALL + ["timeunet", "wtae"])
def test_forward_shapes_and_attention(name):
    model = _model(name)
    x, pos = _batch()
    with torch.no_grad():
        logits = model(x, pos)
    assert logits.shape == (2, 15, 32, 32) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    if model.architecture == "unet3d":
        return
    with torch.no_grad():
        _, att = model(x, pos, return_att=True)
    n_head = model.config["n_head"]
    side = 32 if model.architecture == "timeunet" else 32 // model.downscale
    assert att.shape == (n_head, 2, 6, side, side)
    assert torch.allclose(att.sum(dim=2), torch.ones(n_head, 2, side, side), atol=1e-5)
    assert att[:, 1, 4:].abs().max() < 1e-6  # padded dates get no weight


@pytest.mark.parametrize("name", SMALL)
def test_any_number_of_dates(name):
    model = _model(name)
    for t in (1, 3, 4, 7, 12):
        x, pos = _batch(t=t, n_pad=0)
        with torch.no_grad():
            out = model(x, pos)
        assert out.shape == (2, 15, 32, 32) and torch.isfinite(out).all(), t


@pytest.mark.parametrize("name,n_pad", [(n, p) for n in SMALL for p in (2, 4)]
                         + [("timeunet", 2), ("wtae", 2), ("unet3d", 4)])
def test_padded_dates_do_not_change_the_output(name, n_pad):
    """A padded sample gives what its unpadded sequence gives, alone or batched (also when
    fewer than 4 dates remain, UNet3D's minimum)."""
    model = _model(name, seed=1)
    x, pos = _batch(t=6, n_pad=n_pad)
    with torch.no_grad():
        padded = model(x, pos)
        trimmed = model(x[1:, :6 - n_pad], pos[1:, :6 - n_pad])[0]
        alone = model(x[:1], pos[:1])[0]
    assert torch.allclose(padded[1], trimmed, atol=1e-5), (padded[1] - trimmed).abs().max()
    assert torch.allclose(padded[0], alone, atol=1e-5), (padded[0] - alone).abs().max()


@pytest.mark.parametrize("name,reference_mode", [("timeunet-small", {"mask_padded_norm": False}),
                                                 ("wtae-small", {"mask_padded_norm": False}),
                                                 ("unet3d-small", {"trim_padding": False})])
def test_reference_mode_depends_on_padding_but_equals_ours_without_it(name, reference_mode):
    """The reference behaviour (kept as an option) lets padding leak into real dates; without
    padding it computes exactly what the pad-invariant default computes."""
    ours = _model(name, seed=2)
    ref = _model(name, seed=2, **reference_mode)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x, pos = _batch(t=8, n_pad=3)
    with torch.no_grad():
        assert torch.equal(ours(x[:1], pos[:1]), ref(x[:1], pos[:1]))
        leak = (ref(x, pos)[1] - ref(x[1:, :5], pos[1:, :5])[0]).abs().max()
    assert leak > 1e-4


def test_all_dates_padded_gives_finite_logits():
    for name in SMALL:
        model = _model(name)
        x, pos = _batch(t=5, n_pad=0)
        x[1] = 0
        with torch.no_grad():
            out = model(x, pos)
        assert torch.isfinite(out).all(), name
    with torch.no_grad():
        assert torch.equal(_model("unet3d-small")(x, pos)[1], torch.zeros(15, 32, 32))


@pytest.mark.parametrize("name", SMALL)
def test_forward_rejects_bad_inputs(name):
    model = _model(name)
    x, pos = _batch(size=32)
    with pytest.raises(ValueError, match="bands"):
        model(x[:, :, :4], pos)
    with pytest.raises(ValueError, match=f"multiple of {model.downscale}"):
        model(x[..., :30, :30], pos)
    with pytest.raises(ValueError, match="batch_positions"):
        model(x, pos[:, :3])
    with pytest.raises(ValueError, match="x must be"):
        model(x[0], pos)
    if model.architecture == "unet3d":
        with torch.no_grad():
            assert torch.equal(model(x), model(x, pos))  # dates only by their order
    else:
        with pytest.raises(ValueError, match="batch_positions"):
            model(x)


# ------------------------------------------------------------------------- dates


def test_day_of_year_equals_the_calendar():
    ref = dt.date(2018, 9, 1)
    days = torch.arange(-40000, 40000, 3, dtype=torch.float32)[None]
    expected = [(ref + dt.timedelta(days=int(d))).timetuple().tm_yday for d in days[0].tolist()]
    assert day_of_year(days, "2018-09-01")[0].tolist() == expected
    # leap years (2000 yes, 1900 and 2100 no) around February 29th and December 31st
    for start in ("2000-02-27", "1900-02-27", "2100-02-27", "2024-12-30"):
        d0 = dt.date.fromisoformat(start)
        got = day_of_year(torch.arange(0.0, 5.0)[None], start)[0].tolist()
        assert got == [(d0 + dt.timedelta(days=k)).timetuple().tm_yday for k in range(5)], start
    assert day_of_year(torch.tensor([[0.4, 0.99, -0.5]]), "2021-01-01")[0].tolist() == [1, 1, 366]


@pytest.mark.parametrize("name", ["timeunet-small", "wtae-small"])
def test_use_doy_depends_on_the_season_not_the_year(name):
    """With ``use_doy`` the same dates one (non-leap) year later give the same output; with the
    default encoding of days since the reference date they do not."""
    x, pos = _batch(t=6, n_pad=0)
    doy = _model(name, use_doy=True, reference_date="2021-09-01")
    rel = _model(name)
    with torch.no_grad():
        assert torch.equal(doy(x, pos), doy(x, pos + 365))  # 2021-09 .. 2022-06 vs a year later
        assert (doy(x, pos) - doy(x, pos + 30)).abs().max() > 1e-4
        assert (rel(x, pos) - rel(x, pos + 365)).abs().max() > 1e-4
    both = _model(name, use_abs_rel_enc=True, reference_date="2021-09-01")
    with torch.no_grad():
        assert (both(x, pos) - both(x, pos + 365)).abs().max() > 1e-4
