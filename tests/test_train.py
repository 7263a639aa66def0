"""Tests of training and its CLI on small synthetic patch stores (``patchstores.py``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from patchstores import KW, make_store, store, trained  # noqa: F401 (fixtures)

from crop2seg_pipeline.augment import NO_TEMPORAL, TemporalAugment, TrainTransform
from crop2seg_pipeline.cli.evaluate import evaluate_cmd
from crop2seg_pipeline.cli.train import train_cmd
from crop2seg_pipeline.errors import Crop2SegError, StoreError
from crop2seg_pipeline.evaluate import evaluate
from crop2seg_pipeline.loss import class_weights
from crop2seg_pipeline.models import CheckpointError, build_model, load_model
from crop2seg_pipeline.nomenclature import BANDS, CLASS_NAMES
from crop2seg_pipeline.train import LAST_FILE, train
from crop2seg_pipeline.train_data import open_training_data

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
    # temporal augmentation is on by default, dates are days since the reference date
    assert training["temporal_augment"] == TemporalAugment().to_json() and meta["date_encoding"] == "days"
    assert training["validation"] == {"kind": "split", "split": "val", "n_patches": 2}
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


# ----------------------------------------------------------------------------- held-out validation

TILES = ("33UVR",) * 4 + ("33UWQ",) * 8  # patches 0-3 on 33UVR (splits train), 4-11 on 33UWQ


@pytest.fixture(scope="module")
def two_tiles(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("tiles") / "tiles.zarr", tiles=TILES)


def test_val_tiles_are_never_trained_on_and_pick_the_best_epoch(two_tiles, tmp_path):
    data = open_training_data(two_tiles, TrainTransform(augment=False), val_tiles=["33UVR"], say=lambda m: None)
    assert data.train.indices.tolist() == [4, 5, 6, 7]           # train split of the other tile only
    assert sorted(data.val.indices.tolist()) == [0, 1, 2, 3]     # every patch of the held-out tile
    labels = np.stack([np.asarray(data.train[i]["label"]) for i in range(4)])
    expected = class_weights(np.bincount(labels.ravel(), minlength=15))  # weights of what is trained on
    assert torch.allclose(data.weight, expected)
    summary = train(two_tiles, tmp_path / "run", epochs=2, val_tiles=["33UVR"], **KW)
    assert summary["n_train"] == 4 and summary["n_val"] == 4
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["training"]["validation"] == {"kind": "held-out", "tiles": ["33UVR"], "stores": [], "n_patches": 4}
    assert summary["best_epoch"] == max(summary["history"], key=lambda h: h["val_miou"])["epoch"]
    with pytest.raises(StoreError, match="no tile 33XXX"):
        train(two_tiles, tmp_path / "bad", epochs=1, val_tiles=["33XXX"], **KW)
    assert not (tmp_path / "bad").exists()


def test_val_dataset_scores_a_held_out_store_and_the_best_epoch_on_it(store, tmp_path):
    held = make_store(tmp_path / "held.zarr", n=6, seed=7, t_max=7, splits=("test",) * 6)
    summary = train(store, tmp_path / "run", epochs=2, val_datasets=[held], **{**KW, "lr": 2e-2})
    assert summary["n_val"] == 6 and summary["validation"]["kind"] == "held-out"
    best = max(summary["history"], key=lambda h: h["val_miou"])
    assert summary["best_epoch"] == best["epoch"]
    # the validation figures are those of the best weights, fed as trained, on the held-out store
    m = evaluate(held, tmp_path / "run", split="test", device="cpu")
    assert m["miou"] == pytest.approx(best["val_miou"]) and m["overall_accuracy"] == pytest.approx(best["val_overall_accuracy"])
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["training"]["validation"]["stores"] == [str(held)]
    # a different held-out store into the same run folder is another run
    other = make_store(tmp_path / "other.zarr", n=4, seed=8, splits=("test",) * 4)
    with pytest.raises(Crop2SegError, match="validation"):
        train(store, tmp_path / "run", epochs=3, val_datasets=[other], **{**KW, "lr": 2e-2})
    with pytest.raises(StoreError, match="training store itself"):
        train(store, tmp_path / "self", epochs=1, val_datasets=[store], **KW)


def test_day_of_year_models_are_fed_day_of_year_by_evaluate_and_predict(store, tmp_path):
    from crop2seg_pipeline.predict import _check_dates, read_model_spec

    out = tmp_path / "doy"
    train(store, out, epochs=1, date_encoding="doy", **KW)
    meta = json.loads((out / "model.json").read_text())
    assert meta["date_encoding"] == "doy" and meta["training"]["date_encoding"] == "doy"
    spec = read_model_spec(out)
    times = np.array(["2021-05-10T10:00", "2022-05-10T10:00"], dtype="datetime64[ns]")
    assert spec.date_encoding == "doy" and _check_dates(times, spec).tolist() == [130.0, 130.0]
    base = evaluate(store, out, split="val", device="cpu")
    (out / "model.json").write_text(json.dumps({**meta, "date_encoding": "days"}))  # fed otherwise
    assert evaluate(store, out, split="val", device="cpu")["confusion_matrix"] != base["confusion_matrix"]
    assert read_model_spec(out).date_encoding == "days"
    (out / "model.json").write_text(json.dumps({**meta, "date_encoding": "weeks"}))
    with pytest.raises(CheckpointError, match="date_encoding 'weeks'"):
        evaluate(store, out, split="val", device="cpu")
    with pytest.raises(Crop2SegError, match="date encoding must be one of days, doy"):
        train(store, tmp_path / "bad", epochs=1, date_encoding="weeks", **KW)


def test_temporal_augmentation_settings_are_part_of_the_run(store, tmp_path):
    out = tmp_path / "run"
    plain = train(store, out, epochs=1, temporal_augment=NO_TEMPORAL, **KW)
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["temporal_augment"] is None
    augmented = train(store, tmp_path / "aug", epochs=1, **KW)
    assert augmented["history"][0]["loss"] != plain["history"][0]["loss"]  # the samples differ
    with pytest.raises(Crop2SegError, match="temporal_augment"):
        train(store, tmp_path / "aug", epochs=2, temporal_augment=TemporalAugment(shift_days=40), **KW)


def test_cli_temporal_validation_and_encoding_options(two_tiles, tmp_path):
    runner = CliRunner()
    base = ["--dataset", str(two_tiles), "--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu", "-q"]
    res = runner.invoke(train_cmd, base + ["--out", str(tmp_path / "a"), "--val-tiles", "33UVR", "--date-encoding",
                                           "doy", "--date-keep", "0.5,0.9", "--min-dates", "3", "--date-shift", "10",
                                           "--date-jitter", "1", "--cloudy-below", "0.6", "--cloudy-drop", "0.3"])
    assert res.exit_code == 0, res.output
    assert "on held-out tiles 33UVR" in res.output
    training = json.loads((tmp_path / "a" / "model.json").read_text())["training"]
    assert training["temporal_augment"] == {"keep": [0.5, 0.9], "min_dates": 3, "shift_days": 10, "jitter_days": 1,
                                            "cloudy_below": 0.6, "cloudy_drop": 0.3}
    assert training["date_encoding"] == "doy" and training["validation"]["tiles"] == ["33UVR"]
    res = runner.invoke(train_cmd, base + ["--out", str(tmp_path / "b"), "--no-temporal-augment"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "b" / "model.json").read_text())["training"]["temporal_augment"] is None
    for args, msg in [(["--date-keep", "0.9,0.5"], "keep share"), (["--date-keep", "0.5"], "expected 2"),
                      (["--val-tiles", "33XXX"], "no tile 33XXX"), (["--date-encoding", "weeks"], "weeks"),
                      (["--train-folds", "1,2"], "apply to a PASTIS folder")]:
        res = runner.invoke(train_cmd, base + ["--out", str(tmp_path / "c")] + args)
        assert res.exit_code in (1, 2) and msg in res.output, (args, res.output)
        assert not (tmp_path / "c").exists()
