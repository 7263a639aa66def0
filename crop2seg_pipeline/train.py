"""Train a U-TAE on a Zarr patch store or a PASTIS folder: resumable, deterministic for a seed on CPU.

>>> from crop2seg_pipeline.train import train
>>> summary = train("patches.zarr", "runs/utae-small", model="utae-small", epochs=10)  # doctest: +SKIP
>>> summary["best_val_miou"], summary["weights_dir"]                                   # doctest: +SKIP

:func:`train` reads top to bottom: check the settings, open the data
(:mod:`crop2seg_pipeline.train_data`: training patches, validation patches of the store's ``val``
split or of held-out scenes, class weights), build the network and the optimizer, resume from
``last.pt``, run the epochs (train, validate, keep the best, save the state), summarize.
Training samples are augmented by :mod:`crop2seg_pipeline.augment` (flips/rotations and, by
default, temporal augmentation); the loss is :mod:`crop2seg_pipeline.loss`.

What a run writes into ``out_dir``:

``weights.pt`` + ``model.json``
    the best epoch so far (highest validation mIoU; the last epoch when there is no
    validation data), as a weights folder (:func:`crop2seg_pipeline.models.save_weights`):
    bands, normalization (the store's train statistics), class names, reference date, date
    encoding, patch size and a ``training`` summary (augmentation, validation, data).
    ``crop2seg_pipeline.models.load_model(out_dir)`` loads it.
``last.pt``
    the state after the last finished epoch, a plain dict (``model`` and ``optimizer`` state
    dicts, ``epoch``, ``best_score``, ``best_epoch``, ``history``, ``settings``) readable with
    ``torch.load(..., weights_only=True)``. Running the same command again continues from it;
    finished epochs are never redone. A run with other settings (model, lr, batch size, seed,
    augmentation, store...) into the same folder is refused.

Randomness (initialisation, sample order, augmentation, temporal dropout, dropout layers) is
drawn from generators seeded by ``(seed, epoch)`` and ``(seed, epoch, patch)``, independent of
the number of DataLoader workers; so an interrupted-and-resumed run ends with the same weights as
an uninterrupted one (bit-identical on CPU).

Data loading is the usual time sink: every epoch logs the share of step time spent waiting for
the next batch (``data wait``); raise ``num_workers`` when it is above ~10 %.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import storage
from . import __version__
from .augment import TemporalAugment, TrainTransform
from .dataset import collate_patches
from .device import resolve_device
from .errors import Crop2SegError, StoreError
from .evaluate import confusion_over
from .kernels.dates import DATE_ENCODINGS
from .kernels.metrics import metrics_from_confusion
from .loss import weighted_cross_entropy
from .malloc import tune_malloc
from .models import (
    CheckpointError,
    build_model,
    load_model,
    load_reference_state_dict,
    save_weights,
)
from .models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, _head_prefixes
from .nomenclature import NOT_CLASSIFIED
from .train_data import TrainingData, open_training_data

__all__ = [
    "LAST_FILE",
    "EpochStats",
    "RunState",
    "TrainingData",
    "default_workers",
    "intra_op_threads",
    "make_loader",
    "open_training_data",
    "run_epoch",
    "train",
]

log = logging.getLogger(__name__)

LAST_FILE = "last.pt"
LAST_FORMAT = 1
DEFAULT_EPOCHS = 25
DEFAULT_BATCH_SIZE = 4
#: Temporal augmentation of ``crop2seg-train`` unless told otherwise.
DEFAULT_TEMPORAL = TemporalAugment()


# ----------------------------------------------------------------------------- randomness


def _seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (``SeedSequence`` hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def default_workers(device: torch.device) -> int:
    """DataLoader workers when not given: 0 on CPU, ``min(4, CPUs - 1)`` with CUDA.

    On CPU the model's own step dominates (reading and decoding a patch is a few % of it) and
    worker processes compete with PyTorch's intra-op threads for the same cores; on a GPU the
    step is fast and loading must overlap with it.
    """
    return 0 if device.type == "cpu" else max(0, min(4, (os.cpu_count() or 1) - 1))


@contextlib.contextmanager
def intra_op_threads(device: torch.device, num_workers: int):
    """On CPU with workers, leave one core per worker: ``torch.set_num_threads(CPUs - workers)``
    for the duration, restored afterwards (oversubscribed OpenMP threads spin and can make a
    step several times slower)."""
    before = torch.get_num_threads()
    cores = os.cpu_count() or 1
    if device.type == "cpu" and num_workers > 0 and before + num_workers > cores:
        torch.set_num_threads(max(1, cores - num_workers))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one process per core: no intra-op oversubscription


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool, num_workers: int,
                seed: int = 0, epoch: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over patches, batches padded in time by :func:`collate_patches`.

    The sample order depends only on ``(seed, epoch)``.
    """
    gen = torch.Generator()
    gen.manual_seed(_seed(seed, epoch, 1))
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(worker_init_fn=_worker_init, prefetch_factor=4)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
        collate_fn=collate_patches, generator=gen, pin_memory=pin_memory, drop_last=False, **kwargs)


# ----------------------------------------------------------------------------- one epoch


@dataclass
class EpochStats:
    """Timing and loss of one pass over a loader."""

    loss: float | None
    n_patches: int
    n_steps: int
    seconds: float
    wait_seconds: float

    @property
    def patches_per_s(self) -> float:
        return self.n_patches / self.seconds if self.seconds > 0 else float("nan")

    @property
    def wait_share(self) -> float:
        """Share of the step time spent waiting for the next batch (data loading)."""
        return self.wait_seconds / self.seconds if self.seconds > 0 else float("nan")


def run_epoch(model: torch.nn.Module, loader: torch.utils.data.DataLoader, weight: torch.Tensor,
              optimizer: torch.optim.Optimizer, device: torch.device, max_steps: int | None = None,
              ignore_index: int = NOT_CLASSIFIED) -> EpochStats:
    """One training pass; returns the pixel-weighted mean loss and the time split.

    Batches without any weighted pixel (only ``Not classified``/absent classes) are skipped.
    """
    model.train()
    loss_sum, weight_sum, n_patches, steps, wait = 0.0, 0.0, 0, 0, 0.0
    sync = device.type == "cuda"
    t_start = time.perf_counter()
    it = iter(loader)
    while max_steps is None or steps < max_steps:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - t0
        x = batch["s2"].to(device, non_blocking=True)
        pos = batch["positions"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        logits = model(x, pos)
        s, w = weighted_cross_entropy(logits, y, weight, ignore_index)
        if float(w) > 0:
            optimizer.zero_grad(set_to_none=True)
            (s / w).backward()
            optimizer.step()
            loss_sum += float(s.detach())
            weight_sum += float(w)
        if sync:
            torch.cuda.synchronize(device)
        n_patches += x.shape[0]
        steps += 1
    return EpochStats(loss=loss_sum / weight_sum if weight_sum > 0 else None, n_patches=n_patches,
                      n_steps=steps, seconds=time.perf_counter() - t_start, wait_seconds=wait)


# ----------------------------------------------------------------------------- files


def _atomic_torch_save(obj: Any, path: Path) -> None:
    storage.write_local_atomic(path, lambda fh: torch.save(obj, fh), fsync=True)


def _load_last(path: Path) -> dict[str, Any]:
    try:
        last = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader error means an unusable file
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc}); delete it to "
                              "start the run over") from None
    if not isinstance(last, dict) or last.get("format") != LAST_FORMAT or "model" not in last:
        raise CheckpointError(f"{path} is not a crop2seg training state; delete it to start over")
    return last


def _settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _finetune_into(model: torch.nn.Module, source: str | os.PathLike, say: Callable[[str], Any]) -> None:
    """Initialise ``model`` from a weights folder or a (PASTIS) checkpoint file."""
    path = Path(source)
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            ref = load_model(path)
            state: Any = ref.state_dict()
        else:
            state = path / WEIGHTS_FILE
    else:
        state = path
    if not isinstance(state, dict) and not Path(state).is_file():
        raise CheckpointError(f"--finetune {source}: no such weights folder or checkpoint file")
    not_loaded = load_reference_state_dict(model, state)
    own = model.state_dict()
    prefixes = tuple(_head_prefixes(model))
    head = [k for k in not_loaded if k.startswith(prefixes)]
    body = [k for k in not_loaded if k not in head]
    if body:
        raise CheckpointError(
            f"--finetune {source} does not fit the chosen model: {len(body)} of {len(own)} "
            f"entries are missing or have another shape (e.g. {', '.join(body[:3])}); pick the "
            "--model preset the checkpoint was trained with")
    say(f"fine-tuning from {source}" + (f" (classification head re-initialised: {len(head)} "
                                        "entries)" if head else ""))


# ----------------------------------------------------------------------------- train


def _fmt_pct(v: float | None) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"


def epoch_lr(lr: float, epoch: int, epochs: int, schedule: str) -> float:
    """Learning rate of ``epoch`` (1-based) under ``schedule``."""
    if schedule == "cosine" and epochs > 1:
        floor = lr / 100
        return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * (epoch - 1) / (epochs - 1)))
    return lr


# ----------------------------------------------------------------------------- the run's pieces


@dataclass
class RunState:
    """Progress of a run, saved in ``last.pt`` after every epoch."""

    start_epoch: int = 0  # epochs finished before this call
    best_score: float = -math.inf
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any]:
        return self.history[self.best_epoch - 1] if self.best_epoch else {}


def _check_settings(epochs: int, batch_size: int, lr: float, lr_schedule: str, num_workers: int | None,
                    out_dir: str | os.PathLike, date_encoding: str) -> Path:
    if epochs < 1:
        raise Crop2SegError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise Crop2SegError(f"batch size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise Crop2SegError(f"learning rate must be > 0, got {lr}")
    if lr_schedule not in ("constant", "cosine"):
        raise Crop2SegError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    if num_workers is not None and num_workers < 0:
        raise Crop2SegError(f"workers must be >= 0, got {num_workers}")
    if date_encoding not in DATE_ENCODINGS:
        raise Crop2SegError(f"date encoding must be one of {', '.join(DATE_ENCODINGS)}, got {date_encoding!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise Crop2SegError(f"--out {out} exists and is not a folder")
    return out


def build_network(model: str, data: TrainingData, seed: int) -> torch.nn.Module:
    """The preset ``model`` for the data's bands and classes, initialised from the seed only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(seed, 0, 0))
        net = build_model(model, n_classes=data.n_classes, input_dim=len(data.bands))
    for what, (patch_h, patch_w) in [("patches of " + data.source, data.patch_size),
                                     *(("validation patches", s) for s in data.val_patch_sizes)]:
        if patch_h % net.downscale or patch_w % net.downscale:
            raise StoreError(f"{what} are {patch_h} x {patch_w} px; model {model!r} needs multiples of "
                             f"{net.downscale}")
    return net


def resume_state(out: Path, settings_json: str, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 epochs: int, say: Callable[[str], Any]) -> RunState:
    """Load ``out/last.pt`` into ``net``/``optimizer`` (a fresh state when there is none).

    Raises:
        Crop2SegError: ``last.pt`` was written with other settings.
    """
    last_path = out / LAST_FILE
    if not last_path.exists():
        return RunState()
    last = _load_last(last_path)
    diff = _settings_diff(json.loads(last.get("settings", "{}")), json.loads(settings_json))
    if diff:
        raise Crop2SegError(
            f"{out} holds a training run with other settings ({'; '.join(diff)}); re-run with "
            "the same settings to resume, or choose another --out")
    net.load_state_dict(last["model"])
    optimizer.load_state_dict(last["optimizer"])
    state = RunState(start_epoch=int(last["epoch"]), best_score=float(last["best_score"]),
                     best_epoch=int(last["best_epoch"]), history=list(last.get("history", [])))
    if state.start_epoch >= epochs:
        say(f"{out}: {state.start_epoch} epochs already done (asked {epochs}); nothing to train")
    else:
        say(f"resuming {out} after epoch {state.start_epoch}")
    return state


def model_meta(data: TrainingData, preset: str) -> dict[str, Any]:
    """``model.json`` content other than the architecture and the training summary."""
    return {
        "bands": data.bands,
        "normalization": {"mean": data.mean.tolist(), "std": data.std.tolist()},
        "class_names": data.class_names,
        "ignore_index": data.ignore_index,
        "reference_date": data.reference_date.isoformat(),
        "date_encoding": data.date_encoding,
        "patch_size": data.patch_size[0],
        "preset": preset,
        "software": f"crop2seg-pipeline {__version__}",
        # how the store's pixels were selected, so prediction applies the same rules
        "preprocessing": data.preprocessing,
    }


def training_summary(data: TrainingData, run: Mapping[str, Any], state: RunState, done: int,
                     epochs: int) -> dict[str, Any]:
    """``model.json["training"]`` after ``done`` epochs."""
    best = state.best
    return {
        "epochs": done,
        "epochs_planned": int(epochs),
        "best_epoch": state.best_epoch,
        "val_miou": best.get("val_miou"),
        "val_overall_accuracy": best.get("val_overall_accuracy"),
        "store": data.source,
        "store_fingerprint": data.fingerprint,
        "date_range": data.date_range,
        "n_train_patches": data.n_train,
        "n_val_patches": data.n_val,
        "seed": run["seed"],
        "lr": run["lr"],
        "batch_size": run["batch_size"],
        "temporal_dropout": run["temporal_dropout"],
        "augment": run["augment"],
        "temporal_augment": run["temporal_augment"],
        "date_encoding": data.date_encoding,
        "validation": {**data.validation, "n_patches": data.n_val},
        "lr_schedule": run["lr_schedule"],
        "finetune": None if run["finetune"] is None else str(run["finetune"]),
        "class_weights": [round(float(w), 6) for w in data.weight.cpu()],
        **({"source_kind": data.kind, **data.extra} if data.kind != "store" else {}),
    }


def run_settings(source: str | os.PathLike, preset: str, net: torch.nn.Module, data: TrainingData,
                 run: Mapping[str, Any]) -> str:
    """The settings a resumed run must share with the run in ``last.pt`` (sorted JSON).

    Options added after the first release only appear when they differ from what runs did
    before them (constant lr, no temporal augmentation, days, the store's val split), so a run
    started with those still resumes.
    """
    settings = {
        "store": storage.absolute(source),
        "store_fingerprint": data.fingerprint,  # a store rebuilt with other inputs differs
        "model": preset,
        "config": net.config,
        **{k: run[k] for k in ("batch_size", "lr", "seed", "temporal_dropout", "augment")},
        "finetune": None if run["finetune"] is None else str(Path(run["finetune"]).resolve()),
    }
    if run["lr_schedule"] != "constant":
        settings["lr_schedule"] = run["lr_schedule"]
    if run["temporal_augment"] is not None:
        settings["temporal_augment"] = run["temporal_augment"]
    if data.date_encoding != "days":
        settings["date_encoding"] = data.date_encoding
    if data.validation.get("kind") == "held-out":
        settings["validation"] = {"tiles": data.validation.get("tiles", []),
                                  "stores": [storage.absolute(p) for p in data.validation.get("stores", [])]}
    if data.kind != "store":
        settings["source"] = {"kind": data.kind, **data.extra}
    return json.dumps(settings, sort_keys=True)


def train_one_epoch(net: torch.nn.Module, optimizer: torch.optim.Optimizer, data: TrainingData,
                    weight: torch.Tensor, dev: torch.device, epoch: int, epochs: int, run: Mapping[str, Any],
                    num_workers: int) -> tuple[EpochStats, dict[str, Any]]:
    """One pass over the training data with this epoch's lr, sample order and augmentation draws."""
    data.transform.epoch = epoch
    for group in optimizer.param_groups:
        group["lr"] = epoch_lr(run["lr"], epoch, epochs, run["lr_schedule"])
    loader = make_loader(data.train, run["batch_size"], True, num_workers, seed=run["seed"], epoch=epoch,
                         pin_memory=dev.type == "cuda")
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(_seed(run["seed"], epoch, 2))
        stats = run_epoch(net, loader, weight, optimizer, dev, ignore_index=data.ignore_index)
    row: dict[str, Any] = {
        "epoch": epoch, "loss": stats.loss, "seconds": round(stats.seconds, 3),
        "patches_per_s": round(stats.patches_per_s, 3), "data_wait_share": round(stats.wait_share, 4),
        "val_loss": None, "val_overall_accuracy": None, "val_miou": None,
    }
    return stats, row


def validate(net: torch.nn.Module, data: TrainingData, weight: torch.Tensor, dev: torch.device,
             batch_size: int, num_workers: int, seed: int, epoch: int) -> tuple[dict[str, Any], float]:
    """Validation loss, OA and mIoU of ``net`` (``row`` entries) and the score picking the best epoch."""
    if data.val is None:
        return {}, float(epoch)  # no validation: the latest epoch is the best
    loader = make_loader(data.val, batch_size, False, num_workers, seed=seed, epoch=epoch,
                         pin_memory=dev.type == "cuda")
    res = confusion_over(net, loader, dev, data.n_classes, data.ignore_index, "all", loss_weight=weight)
    m = metrics_from_confusion(res["confusion"], data.class_names, data.ignore_index)
    row = {"val_loss": res["loss"], "val_overall_accuracy": m["overall_accuracy"], "val_miou": m["miou"],
           "val_seconds": round(res["seconds"], 3)}
    return row, (m["miou"] if m["miou"] is not None else -math.inf)


def _epoch_message(epoch: int, epochs: int, stats: EpochStats, row: Mapping[str, Any], improved: bool) -> str:
    return (f"epoch {epoch}/{epochs}  loss {stats.loss if stats.loss is not None else float('nan'):.4f}"
            + (f"  val loss {row['val_loss']:.4f}" if row["val_loss"] is not None else "")
            + f"  val OA {_fmt_pct(row['val_overall_accuracy'])}%  mIoU {_fmt_pct(row['val_miou'])}%"
            + f"  {stats.seconds:.1f} s  {stats.patches_per_s:.1f} patches/s"
            + f"  data wait {100 * stats.wait_share:.0f}%" + ("  *best*" if improved else ""))


def _save_last(path: Path, net: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int, state: RunState,
               settings_json: str) -> None:
    _atomic_torch_save({
        "format": LAST_FORMAT,
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "best_score": float(state.best_score),
        "best_epoch": state.best_epoch,
        "history": state.history,
        "settings": settings_json,
    }, path)


def _refresh_summary(out: Path, data: TrainingData, run: Mapping[str, Any], state: RunState, done: int,
                     epochs: int) -> None:
    """Rewrite ``model.json``'s training summary with the final epoch count (weights unchanged)."""
    if not state.best_epoch:
        return
    best_net = load_model(out)
    meta = best_net.meta
    if meta.get("training", {}).get("epochs") != done:
        save_weights(best_net, out, {**{k: v for k, v in meta.items()
                                        if k not in ("architecture", "config", "format_version")},
                                     "training": training_summary(data, run, state, done, epochs)})


# ----------------------------------------------------------------------------- train


def train(
    dataset_store: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: str = "utae-small",
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = 1e-3,
    device: str | torch.device = "auto",
    finetune: str | os.PathLike | None = None,
    seed: int = 0,
    num_workers: int | None = None,
    temporal_dropout: float = 0.0,
    augment: bool = True,
    progress: Callable[[str], Any] | None = None,
    lr_schedule: str = "constant",
    *,
    temporal_augment: TemporalAugment | None = DEFAULT_TEMPORAL,
    date_encoding: str = "days",
    val_datasets: Sequence[str | os.PathLike] = (),
    val_tiles: Sequence[str] | None = None,
    class_map: str | None = None,
    train_folds: Sequence[int] | None = None,
    val_folds: Sequence[int] | None = None,
    dataset_cache: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train (or resume training) a U-TAE on the ``train`` split of a patch store or a PASTIS folder.

    Args:
        dataset_store: a complete Zarr patch store (``crop2seg-build-dataset``), or a PASTIS
            folder (:mod:`crop2seg_pipeline.pastis`, detected by its layout).
        out_dir: run folder (created); receives ``weights.pt``/``model.json`` (best epoch) and
            ``last.pt`` (resume state).
        model: preset, ``"utae-small"`` (~90 k parameters, CPU friendly) or ``"utae"`` (the
            published 1.1 M parameter configuration).
        epochs: total number of epochs of the run (a re-run with a larger value continues).
        batch_size: patches per step; dates are zero-padded to the longest series of a batch.
        lr: Adam learning rate.
        lr_schedule: ``"constant"``, or ``"cosine"`` (from ``lr`` down to ``lr / 100`` at the last
            of ``epochs``; computed per epoch from the epoch number, so a resumed run follows
            the same curve).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        finetune: initial weights: a weights folder, or a reference (PASTIS) U-TAE checkpoint
            file; the classification head is re-initialised when its class count differs.
            Ignored when resuming from ``last.pt``.
        seed: seed of every random draw (same seed, same weights on CPU).
        num_workers: DataLoader worker processes (0: load in the main process; None:
            :func:`default_workers`, 0 on CPU and up to 4 with CUDA).
        temporal_dropout: probability of dropping each date of a training sample.
        augment: random flips / 90-degree rotations of training patches.
        progress: callable receiving one message per epoch (default: ``logging``).
        temporal_augment: random date subsets, day shifts/jitter and cloudy-date drops
            (:class:`~crop2seg_pipeline.augment.TemporalAugment`; on by default; None or
            :data:`~crop2seg_pipeline.augment.NO_TEMPORAL` turns it off).
        date_encoding: ``"days"`` since the reference date, or ``"doy"`` (day of the year).
        val_datasets: patch stores held out entirely for validation (other scenes/tiles/years).
        val_tiles: tiles of the training store held out for validation (never trained on).
            With either, the best epoch is picked on these held-out scenes instead of the
            store's ``val`` split.
        class_map, train_folds, val_folds: for a PASTIS folder: ``"pastis"`` (its 20 classes),
            ``"crop2seg"`` (the approximate built-in mapping to the 15 classes) or a CSV path;
            the folds trained on (default 1, 2, 3) and validated on (default 4).

    Returns:
        a summary dict: ``weights_dir``, ``epochs`` (completed), ``epochs_run`` (this call),
        ``resumed_from``, ``best_epoch``, ``best_val_miou``, ``best_val_overall_accuracy``,
        ``history`` (one dict per epoch: loss, val_loss, val_overall_accuracy, val_miou,
        seconds, patches_per_s, data_wait_share), ``device``, ``n_train``, ``n_val``,
        ``validation``, ``parameters``, ``seconds``.

    Raises:
        StoreError: not a complete store / PASTIS folder, no ``train`` patch, patch size unfit
            for the model, validation data that does not fit the training data.
        CheckpointError: unusable ``--finetune`` checkpoint or ``last.pt``.
        Crop2SegError: invalid settings, or ``out_dir`` holds a run with other settings.
    """
    say = progress or log.info
    t_call = time.perf_counter()
    out = _check_settings(epochs, batch_size, lr, lr_schedule, num_workers, out_dir, date_encoding)
    dev = resolve_device(device)
    if num_workers is None:
        num_workers = default_workers(dev)

    transform = TrainTransform(seed=seed, augment=augment, temporal_dropout=temporal_dropout,
                               temporal=temporal_augment)
    data = open_training_data(dataset_store, transform, date_encoding=date_encoding, val_datasets=val_datasets,
                              val_tiles=val_tiles, class_map=class_map, train_folds=train_folds,
                              val_folds=val_folds, say=say, cache=dataset_cache)

    tune_malloc()  # batch tensors from the heap, not fresh mmaps (values unchanged)
    net = build_network(model, data, seed)
    if finetune is not None and not (out / LAST_FILE).exists():
        _finetune_into(net, finetune, say)
    net.to(dev)
    weight = data.weight.to(dev)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    n_params = sum(p.numel() for p in net.parameters())

    run = {"seed": int(seed), "lr": float(lr), "batch_size": int(batch_size), "lr_schedule": lr_schedule,
           "temporal_dropout": float(temporal_dropout), "augment": bool(augment), "finetune": finetune,
           "temporal_augment": transform.temporal.to_json() if transform.temporal else None}
    settings_json = run_settings(dataset_store, model, net, data, run)
    state = resume_state(out, settings_json, net, optimizer, epochs, say)
    out.mkdir(parents=True, exist_ok=True)
    meta_base = model_meta(data, model)

    say(f"training {model} ({n_params:,} parameters) on {data.n_train} train / {data.n_val} val patches"
        f"{' (held-out scenes)' if data.validation.get('kind') == 'held-out' else ''}, device {dev}, "
        f"batch {batch_size}, {num_workers} data workers, temporal augmentation "
        f"{'on' if transform.temporal else 'off'}, dates as {data.date_encoding}")
    epochs_run = 0
    with intra_op_threads(dev, num_workers):
        for epoch in range(state.start_epoch + 1, epochs + 1):
            stats, row = train_one_epoch(net, optimizer, data, weight, dev, epoch, epochs, run, num_workers)
            val_row, score = validate(net, data, weight, dev, batch_size, num_workers, seed, epoch)
            row.update(val_row)
            state.history.append(row)
            improved = score > state.best_score or state.best_epoch == 0
            if improved:
                state.best_score, state.best_epoch = score, epoch
                save_weights(net, out, {**meta_base, "training": training_summary(data, run, state, epoch, epochs)})
            _save_last(out / LAST_FILE, net, optimizer, epoch, state, settings_json)
            epochs_run += 1
            say(_epoch_message(epoch, epochs, stats, row, improved))

    done = state.start_epoch + epochs_run
    _refresh_summary(out, data, run, state, done, epochs)
    best = state.best
    return {
        "weights_dir": str(out),
        "model": model,
        "epochs": done,
        "epochs_run": epochs_run,
        "resumed_from": state.start_epoch,
        "best_epoch": state.best_epoch,
        "best_val_miou": best.get("val_miou"),
        "best_val_overall_accuracy": best.get("val_overall_accuracy"),
        "history": state.history,
        "device": str(dev),
        "n_train": data.n_train,
        "n_val": data.n_val,
        "validation": data.validation,
        "parameters": n_params,
        "seconds": round(time.perf_counter() - t_call, 3),
    }
