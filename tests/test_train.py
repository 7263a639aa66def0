"""Tests of training, evaluation and their CLI on small synthetic patch stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from crop2seg_pipeline.cli.evaluate import evaluate_cmd
from crop2seg_pipeline.cli.train import train_cmd
from crop2seg_pipeline.errors import Crop2SegError, StoreError
from crop2seg_pipeline.evaluate import evaluate
from crop2seg_pipeline.models import CheckpointError, build_model, load_model, save_weights
from crop2seg_pipeline.nomenclature import BANDS, CLASS_NAMES
from crop2seg_pipeline.store import create_skeleton, finalize, open_store, write_patches
from crop2seg_pipeline.train import LAST_FILE, TrainTransform, class_weights, train

# ----------------------------------------------------------------------------- synthetic store

#: classes used by the synthetic store and the day of year their vegetation peaks (None: bare)
PHENOLOGY = {0: None, 1: 160, 4: 140, 5: 110, 6: 225}


def _reflectance(cls: int, doy: np.ndarray) -> np.ndarray:
    """(T, 10) DN of a class on days of year ``doy``: NIR bands follow the class's greenness."""
    peak = PHENOLOGY[cls]
    green = np.zeros(len(doy)) if peak is None else np.exp(-0.5 * ((doy - peak) / 30.0) ** 2)
    if cls == 1:
        green = 0.5 + 0.3 * green  # grassland: green all season
    nir = np.array([0, 0, 0, 0.4, 0.8, 1, 1, 1, 0.2, 0.0])  # per band response to greenness
    red = np.array([0.3, 0.2, 0.6, 0.3, 0, 0, 0, 0, 0.3, 0.5])
    return 900 + 3000 * green[:, None] * nir[None] + 900 * (1 - green[:, None]) * red[None]


def make_store(path: Path, n: int = 12, size: int = 32, t_max: int = 8, seed: int = 0,
               splits: tuple[str, ...] | None = None) -> Path:
    """A complete patch store with learnable labels: 4 rectangular parcels per patch whose
    classes differ by their time series, an unclassified (14) strip in some patches, 5..8
    dates per patch (NaT-padded), splits 8 train / 2 val / 2 test by default."""
    rng = np.random.default_rng(seed)
    splits = splits or tuple(["train"] * 8 + ["val"] * 2 + ["test"] * 2)[:n]
    classes = np.array(list(PHENOLOGY))
    s2 = np.zeros((n, t_max, len(BANDS), size, size), np.uint16)
    label = np.zeros((n, size, size), np.uint8)
    pid = np.zeros((n, size, size), np.int32)
    dates = np.full((n, t_max), np.datetime64("NaT"), "datetime64[ns]")
    clear = np.full((n, t_max), np.nan, np.float32)
    pool = np.arange(np.datetime64("2021-03-01"), np.datetime64("2021-10-31"), np.timedelta64(6, "D"))
    for p in range(n):
        t = int(rng.integers(5, t_max + 1))
        d = np.sort(rng.choice(pool, t, replace=False))
        dates[p, :t] = d
        clear[p, :t] = rng.uniform(0.5, 1.0, t)
        doy = (d - d.astype("datetime64[Y]")).astype(int) + 1
        r, c = rng.integers(8, size - 8, 2)
        for k, (ys, xs) in enumerate([(slice(0, r), slice(0, c)), (slice(0, r), slice(c, None)),
                                      (slice(r, None), slice(0, c)), (slice(r, None), slice(c, None))]):
            cls = int(classes[(p + k) % len(classes)])
            label[p, ys, xs] = cls
            pid[p, ys, xs] = 0 if cls == 0 else 100 * p + k + 1
            block = _reflectance(cls, doy)[:, :, None, None]
            noise = rng.normal(0, 60, (t, len(BANDS)) + label[p, ys, xs].shape)
            s2[p, :t, :, ys, xs] = np.clip(block + noise, 1, 10000).astype(np.uint16)
        if p % 3 == 0:
            label[p, -3:, :] = 14  # an unclassified parcel strip
    patches = pd.DataFrame({
        "tile": ["33UWQ"] * n, "row": np.arange(n) // 4, "col": np.arange(n) % 4,
        "split": list(splits), "epsg": [32633] * n,
        "x0": 500000.0 + 320 * (np.arange(n) % 4), "y0": 5500000.0 - 320 * (np.arange(n) // 4),
    })
    create_skeleton(path, patches, dates, clear, BANDS, size,
                    {"class_names": list(CLASS_NAMES), "bands": list(BANDS), "patch_size": size})
    write_patches(path, list(range(n)), s2, label, pid)
    train_idx = [i for i, s in enumerate(splits) if s == "train"]
    valid = np.stack([(np.arange(t_max) < (~np.isnat(dates[i])).sum()) for i in train_idx])
    vals = s2[train_idx].transpose(0, 1, 3, 4, 2)[valid].reshape(-1, len(BANDS)).astype(np.float64)
    counts = {s: np.bincount(label[[i for i, x in enumerate(splits) if x == s]].ravel(),
                             minlength=15).tolist() for s in ("train", "val", "test")}
    finalize(path, {"normalization": {"train": {"mean": vals.mean(0).tolist(), "std": vals.std(0).tolist()}},
                    "class_pixel_counts": counts})
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "patches.zarr")


KW = dict(model="utae-small", batch_size=2, lr=5e-3, device="cpu", num_workers=0, seed=3)


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    """A 2-epoch utae-small run (shared by the training, resume and evaluation tests)."""
    out = tmp_path_factory.mktemp("run") / "run"
    summary = train(store, out, epochs=2, **KW)
    return out, summary


# ----------------------------------------------------------------------------- training


def test_training_writes_loadable_weights_and_loss_decreases(trained, store):
    out, summary = trained
    assert (out / "weights.pt").is_file() and (out / "model.json").is_file() and (out / LAST_FILE).is_file()
    assert summary["epochs"] == 2 and summary["epochs_run"] == 2 and summary["resumed_from"] == 0
    losses = [h["loss"] for h in summary["history"]]
    assert losses[1] < losses[0], losses
    for h in summary["history"]:
        assert 0 <= h["val_overall_accuracy"] <= 1 and 0 <= h["val_miou"] <= 1
        assert h["patches_per_s"] > 0 and 0 <= h["data_wait_share"] <= 1
    model = load_model(out, expect_bands=list(BANDS), expect_classes=15)
    meta = model.meta
    assert meta["bands"] == list(BANDS) and meta["class_names"] == list(CLASS_NAMES)
    assert meta["reference_date"] == "2020-09-01"  # September 1st before the first date (2021)
    assert meta["patch_size"] == 32 and len(meta["normalization"]["mean"]) == 10
    training = meta["training"]
    assert training["epochs"] == 2 and training["seed"] == 3 and training["store"] == str(store)
    assert training["best_epoch"] == summary["best_epoch"]
    assert training["val_miou"] == pytest.approx(summary["best_val_miou"])
    # the best epoch really is the one with the highest validation mIoU
    best = max(summary["history"], key=lambda h: h["val_miou"])
    assert summary["best_epoch"] == best["epoch"]
    # last.pt: plain containers, loadable without unpickling code
    last = torch.load(out / LAST_FILE, weights_only=True)
    assert last["epoch"] == 2 and set(last["model"]) == set(model.state_dict())
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 10, 32, 32) + 0.1, torch.tensor([[10.0, 50.0, 90.0]]))
    assert logits.shape == (1, 15, 32, 32)


def test_resume_continues_without_redoing_epochs_and_matches_uninterrupted_run(trained, store, tmp_path):
    out_full, full = trained
    out = tmp_path / "resumed"
    first = train(store, out, epochs=1, **KW)
    assert first["epochs_run"] == 1
    second = train(store, out, epochs=2, **KW)       # the same command with more epochs
    assert second["resumed_from"] == 1 and second["epochs_run"] == 1 and second["epochs"] == 2
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]
    # same seed -> the interrupted run ends exactly where the uninterrupted one did
    a = torch.load(out / LAST_FILE, weights_only=True)["model"]
    b = torch.load(out_full / LAST_FILE, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in second["history"]] == [h["loss"] for h in full["history"]]
    # re-running a finished run trains nothing and leaves the weights alone
    before = (out / "weights.pt").read_bytes(), (out / LAST_FILE).stat().st_mtime_ns
    again = train(store, out, epochs=2, **KW)
    assert again["epochs_run"] == 0 and again["epochs"] == 2
    assert (out / "weights.pt").read_bytes() == before[0]
    assert (out / LAST_FILE).stat().st_mtime_ns == before[1]
    # other settings into the same folder are refused, naming what differs
    with pytest.raises(Crop2SegError, match="lr"):
        train(store, out, epochs=3, **{**KW, "lr": 1e-4})


def test_worker_processes_give_bit_identical_training(store, tmp_path):
    """Augmentation draws depend on (seed, epoch, patch), not on the process that loads it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same intra-op thread count (reduction order) for both runs
    try:
        zero = train(store, tmp_path / "w0", epochs=1, **{**KW, "num_workers": 0})
        two = train(store, tmp_path / "w2", epochs=1, **{**KW, "num_workers": 2})
        assert torch.get_num_threads() == 1  # train's thread cap is scoped to the run
    finally:
        torch.set_num_threads(threads)
    assert two["history"][0]["loss"] == zero["history"][0]["loss"]
    a = torch.load(tmp_path / "w0" / LAST_FILE, weights_only=True)["model"]
    b = torch.load(tmp_path / "w2" / LAST_FILE, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_from_weights_folder_and_reference_checkpoint(trained, store, tmp_path):
    out, full = trained
    tuned = train(store, tmp_path / "ft", epochs=1, finetune=out, **KW)
    # starting from trained weights, the first epoch's loss is below a fresh start's
    assert tuned["history"][0]["loss"] < full["history"][0]["loss"]
    # a PASTIS-like checkpoint with 20 classes: body loaded, class head re-initialised
    model = load_model(out)
    ref = build_model("utae-small", n_classes=20)
    ref.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("out_conv.conv.conv.3")
                         and not k.startswith("out_conv.conv.conv.4")}, strict=False)
    torch.save({"epoch": 5, "state_dict": ref.state_dict()}, tmp_path / "model.pth.tar")
    messages = []
    train(store, tmp_path / "ft20", epochs=1, finetune=tmp_path / "model.pth.tar", progress=messages.append, **KW)
    assert any("head re-initialised" in m for m in messages)
    # weights of another architecture are refused
    big = build_model("utae", n_classes=15)
    torch.save(big.state_dict(), tmp_path / "big.pt")
    with pytest.raises(CheckpointError, match="--model preset"):
        train(store, tmp_path / "ftbig", epochs=1, finetune=tmp_path / "big.pt", **KW)


def test_train_rejects_bad_input(store, tmp_path):
    with pytest.raises(StoreError):
        train(tmp_path / "nothing.zarr", tmp_path / "r", epochs=1, **KW)
    with pytest.raises(Crop2SegError, match="epochs"):
        train(store, tmp_path / "r", epochs=0, **KW)
    with pytest.raises(Crop2SegError, match="temporal dropout"):
        train(store, tmp_path / "r", epochs=1, temporal_dropout=1.0, **KW)
    with pytest.raises(Crop2SegError, match="unknown model"):
        train(store, tmp_path / "r", epochs=1, **{**KW, "model": "resnet"})
    if not torch.cuda.is_available():
        with pytest.raises(Crop2SegError, match="CUDA is not available"):
            train(store, tmp_path / "r", epochs=1, **{**KW, "device": "cuda"})


def test_train_transform_is_consistent_and_seeded():
    t = torch.arange(4 * 2 * 8 * 8, dtype=torch.float32).reshape(4, 2, 8, 8)
    lab = torch.arange(64).reshape(8, 8)
    sample = lambda: {"s2": t.clone(), "positions": torch.arange(4.0), "clear": torch.ones(4),  # noqa: E731
                      "label": lab.clone(), "parcel_id": lab.clone() * 10, "index": 7}
    tr = TrainTransform(seed=1, augment=True, temporal_dropout=0.5)
    outs = []
    for epoch in range(6):
        tr.epoch = epoch
        s = tr(sample())
        outs.append(s)
        assert torch.equal(s["parcel_id"], s["label"] * 10)          # same transform on both
        # the label moved with the image: pixel (i, j) of band 0 at date 0 still matches
        k = int(s["positions"][0])
        assert torch.equal(s["s2"][0, 0], t[k, 0].flatten()[s["label"].flatten()].reshape(8, 8))
        assert 1 <= s["s2"].shape[0] == len(s["positions"]) == len(s["clear"]) <= 4
    assert len({tuple(o["label"].flatten()[:3].tolist()) for o in outs}) > 1   # it does vary
    tr.epoch = 3
    again = tr(sample())
    assert torch.equal(again["s2"], outs[3]["s2"])                   # and is reproducible
    assert torch.equal(TrainTransform(augment=False)(sample())["s2"], t)


def test_class_weights_inverse_sqrt_ignoring_class_14():
    counts = [400, 100, 0] + [0] * 11 + [1000]
    w = class_weights(counts)
    assert w[14] == 0 and w[2] == 0
    assert w[1] / w[0] == pytest.approx(2.0)                        # sqrt(400 / 100)
    n = torch.tensor(counts, dtype=torch.float32)
    n[14] = 0
    assert float((w * n).sum() / n.sum()) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_writes_metrics_and_plot(trained, store, tmp_path):
    out, _ = trained
    m = evaluate(store, out, split="test", region="all", out_dir=tmp_path / "eval", device="cpu")
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    png = (tmp_path / "eval" / "confusion_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    for key in ("overall_accuracy", "miou", "macro_f1", "per_class", "confusion_matrix"):
        assert key in doc
    assert doc == json.loads(json.dumps(m))
    cm = np.array(doc["confusion_matrix"])
    assert cm.shape == (15, 15) and cm[14].sum() == 0 and cm[:, 14].sum() == 0
    assert cm.sum() == doc["n_pixels"] == 2 * 32 * 32 - doc["ignored_pixels"]
    assert doc["overall_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert set(doc["per_class"]) == set(CLASS_NAMES[:14])
    assert {"iou", "f1", "support"} <= set(doc["per_class"]["Maize"])
    assert 0 <= doc["miou"] <= 1 and doc["split"] == "test" and doc["n_patches"] == 2
    # boundary + interior pixels partition all scored pixels
    b = evaluate(store, out, split="test", region="boundary", device="cpu")
    i = evaluate(store, out, split="test", region="interior", device="cpu")
    np.testing.assert_array_equal(np.array(b["confusion_matrix"]) + np.array(i["confusion_matrix"]), cm)
    assert 0 < b["n_pixels"] < i["n_pixels"]


def test_evaluate_uses_checkpoint_normalization_not_the_store(trained, store, tmp_path):
    out, _ = trained
    model = load_model(out)
    meta = model.meta
    base = evaluate(store, out, split="val", device="cpu")
    meta = {k: v for k, v in meta.items() if k not in ("architecture", "config", "format_version")}
    shifted = tmp_path / "shifted"
    save_weights(model, shifted, {**meta, "normalization": {"mean": [m + 5000 for m in meta["normalization"]["mean"]],
                                                            "std": meta["normalization"]["std"]}})
    assert evaluate(store, shifted, split="val", device="cpu")["confusion_matrix"] != base["confusion_matrix"]
    (shifted / "model.json").write_text(json.dumps({**json.loads((shifted / "model.json").read_text()),
                                                    "reference_date": None}))
    with pytest.raises(CheckpointError, match="reference_date"):
        evaluate(store, shifted, split="val", device="cpu")


def test_evaluate_refuses_weights_for_other_bands_or_classes(store, tmp_path):
    four = build_model("utae-small", n_classes=15, input_dim=4)
    save_weights(four, tmp_path / "four", {"bands": ["B02", "B03", "B04", "B08"]})
    with pytest.raises(CheckpointError, match="4 bands, but 10 bands were expected"):
        evaluate(store, tmp_path / "four", out_dir=tmp_path / "e1", device="cpu")
    twenty = build_model("utae-small", n_classes=20)
    save_weights(twenty, tmp_path / "twenty", {"bands": list(BANDS)})
    with pytest.raises(CheckpointError, match="20 classes, but 15 classes were expected"):
        evaluate(store, tmp_path / "twenty", out_dir=tmp_path / "e2", device="cpu")
    renamed = build_model("utae-small", n_classes=15)
    save_weights(renamed, tmp_path / "renamed", {"bands": list(BANDS[::-1])})
    with pytest.raises(CheckpointError, match="different names/order"):
        evaluate(store, tmp_path / "renamed", device="cpu")
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


# ----------------------------------------------------------------------------- CLI


def test_cli_train_and_evaluate(store, tmp_path):
    runner = CliRunner()
    res = runner.invoke(train_cmd, ["--help"])
    assert res.exit_code == 0 and "--temporal-dropout" in res.output and "resume" in res.output
    out = tmp_path / "cli-run"
    res = runner.invoke(train_cmd, ["--dataset", str(store), "--out", str(out), "--epochs", "1",
                                    "--batch-size", "4", "--workers", "0", "--device", "cpu",
                                    "--temporal-dropout", "0.2", "-q"])
    assert res.exit_code == 0, res.output
    assert "best epoch 1" in res.output and (out / "weights.pt").is_file()
    res = runner.invoke(evaluate_cmd, ["--dataset", str(store), "--weights", str(out), "--region",
                                       "interior", "--out", str(tmp_path / "ev"), "--device", "cpu", "-q"])
    assert res.exit_code == 0, res.output
    assert "overall accuracy" in res.output and "mIoU" in res.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["region"] == "interior"
    # library errors become clean click errors (exit 1, message, no traceback)
    res = runner.invoke(train_cmd, ["--dataset", str(tmp_path), "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert res.exit_code == 1 and "Error:" in res.output and "not a crop2seg patch store" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_cosine_schedule_endpoints_and_constant():
    from crop2seg_pipeline.train import epoch_lr

    assert epoch_lr(1e-3, 1, 10, "cosine") == pytest.approx(1e-3)
    assert epoch_lr(1e-3, 10, 10, "cosine") == pytest.approx(1e-5)
    lrs = [epoch_lr(1e-3, e, 10, "cosine") for e in range(1, 11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert {epoch_lr(1e-3, e, 10, "constant") for e in range(1, 11)} == {1e-3}


# ----------------------------------------------------------------------------- every architecture


@pytest.mark.parametrize("name,via_cli", [("timeunet-small", False), ("wtae-small", False),
                                          ("unet3d-small", True)])
def test_every_architecture_evaluates(store, tmp_path, name, via_cli):
    """Weights folders of every architecture (one trained by ``crop2seg-train --model``, the
    others untrained): evaluate, which batches patches of different date counts zero-padded,
    counts what the model predicts for each patch alone on its own dates."""
    from crop2seg_pipeline.dataset import PatchDataset

    out = tmp_path / "run"
    if via_cli:
        res = CliRunner().invoke(train_cmd, ["--dataset", str(store), "--out", str(out), "--model", name,
                                             "--epochs", "1", "--batch-size", "2", "--workers", "0",
                                             "--device", "cpu", "-q"])
        assert res.exit_code == 0, res.output
    else:
        norm = open_store(store).attrs["normalization"]["train"]
        torch.manual_seed(0)
        save_weights(build_model(name, n_classes=15), out, {
            "bands": list(BANDS), "class_names": list(CLASS_NAMES), "reference_date": "2020-09-01",
            "normalization": norm})
    model = load_model(out, expect_bands=list(BANDS), expect_classes=15)
    assert model.meta["architecture"] == model.architecture == name.split("-")[0]
    assert model.meta["config"] == build_model(name, n_classes=15).config
    got = evaluate(store, out, split="test", batch_size=2, device="cpu")
    meta = model.meta
    data = PatchDataset(store, split="test", mean=meta["normalization"]["mean"],
                        std=meta["normalization"]["std"], reference_date=meta["reference_date"])
    assert len({len(data.positions(int(i))) for i in data.indices}) > 1  # a padded batch
    cm = np.zeros((15, 15), np.int64)
    for k in range(len(data)):
        sample = data[k]
        with torch.no_grad():
            logits = model(sample["s2"][None], sample["positions"][None])[0]
        logits[14] = -float("inf")
        pred, lab = logits.argmax(dim=0).numpy(), sample["label"].numpy()
        keep = lab != 14
        np.add.at(cm, (lab[keep], pred[keep]), 1)
    assert np.array_equal(np.array(got["confusion_matrix"]), cm)
