#!/usr/bin/env bash
# Train the demo weights shipped in crop2seg_pipeline/data/demo_weights/ (issue 4).
#
# Builds the embedded demo scene's patch store, trains utae-small on its train split (best
# epoch picked on val), scores it on the test and val splits, and copies weights.pt +
# model.json into the package. Results: docs/demo-weights.md.
#
# Usage: workflows/train-demo-weights.sh [WORKDIR]   (default: a new temporary folder)
# Runs in a clean scratch folder, never inside the repository. CPU only is fine: about
# 50 min (about 90 s an epoch on 2 idle cores). Training is deterministic for a seed on CPU.
# The scene is the 2048 px demo (251 patches), not the 1024 px default that crop2seg-predict
# and the README's demo use, so those runs predict a landscape the weights never saw.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$(mktemp -d /tmp/crop2seg-demo-train.XXXXXX)}"
mkdir -p "$WORK"
cd "$WORK"
echo "working in $WORK"

# 1. demo scene (2048 px, 24 dates, seed 0) -> crop2seg-demo/patches.zarr
#    (251 patches of 128 px: train 176 / val 36 / test 39)
crop2seg-build-dataset --demo-size 2048

# 2. train on the train split; the val split picks the best epoch
crop2seg-train --dataset crop2seg-demo/patches.zarr --out runs/utae-small \
    --model utae-small --epochs 30 --batch-size 2 --lr 3e-3 --lr-schedule cosine --seed 0

# 3. score on test (the reported figures) and on val
crop2seg-evaluate --dataset crop2seg-demo/patches.zarr --weights runs/utae-small --split test --out eval/test
crop2seg-evaluate --dataset crop2seg-demo/patches.zarr --weights runs/utae-small --split val --out eval/val

# 4. ship weights.pt + model.json (not last.pt) inside the package
DEST="$REPO/crop2seg_pipeline/data/demo_weights"
mkdir -p "$DEST"
cp runs/utae-small/weights.pt runs/utae-small/model.json "$DEST/"
du -sh "$DEST"
python -c "from crop2seg_pipeline.models import load_model; m, meta = load_model('$DEST'); print(type(m).__name__, meta['preset'], meta['training']['best_epoch'])"
