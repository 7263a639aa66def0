"""Tests of training and its CLI on small synthetic patch stores (``patchstores.py``)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from patchstores import KW, store, trained  # noqa: F401 (fixtures)

from crop2seg_pipeline.cli.evaluate import evaluate_cmd
from crop2seg_pipeline.cli.train import train_cmd
from crop2seg_pipeline.errors import Crop2SegError, StoreError
from crop2seg_pipeline.models import CheckpointError, build_model, load_model
from crop2seg_pipeline.nomenclature import BANDS, CLASS_NAMES
from crop2seg_pipeline.train import LAST_FILE, train

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
    model, meta = load_model(out, expect_bands=list(BANDS), expect_classes=15)
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
    model, _ = load_model(out)
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
