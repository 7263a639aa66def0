"""Tests of evaluation (metrics.json, plot, checkpoint preprocessing) on a small trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from patchstores import store, trained  # noqa: F401 (fixtures)

from crop2seg_pipeline.cli.train import train_cmd
from crop2seg_pipeline.evaluate import evaluate
from crop2seg_pipeline.models import (
    CheckpointError,
    build_model,
    load_model,
    save_weights,
)
from crop2seg_pipeline.nomenclature import BANDS, CLASS_NAMES
from crop2seg_pipeline.store import open_store


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
