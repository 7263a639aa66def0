"""Which codec for the patch store: encode and decode speed, ratio, and the training loader's reads.

Runs on real-looking data: patches cut by the block reader from a demo scene (default 2048 px,
24 dates, seed 0; generated when missing). For every codec of ``crop2seg_pipeline.store.CODECS``
it writes the same patches into a Zarr v3 array as a build's pass 2 does (one patch per chunk)
and reads them back one by one as ``PatchDataset`` does. Times are the process's CPU time
(``time.process_time``, one thread: blosc runs single-threaded inside Dask tasks), which is far
less sensitive to other load on a shared machine than wall time; MB/s are of raw uint16 bytes.

    python benchmarks/codecs.py [--size 2048] [--patches 64] [--out benchmarks/results/codecs.json]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from crop2seg_pipeline.blocks import cube_source, read_block  # noqa: E402
from crop2seg_pipeline.demo import make_demo_scene  # noqa: E402
from crop2seg_pipeline.grid import grid_of_items  # noqa: E402
from crop2seg_pipeline.items import normalize_items  # noqa: E402
from crop2seg_pipeline.kernels.patches import cut_patches  # noqa: E402
from crop2seg_pipeline.store import CODECS, DEFAULT_CODEC  # noqa: E402


def sample_patches(scene, n: int, patch: int = 128) -> np.ndarray:
    """``n`` patches (patch, time, band, y, x) uint16 from the scene's chunks, row by row."""
    items = normalize_items(scene.items)
    grid = grid_of_items(items, items[0]["properties"]["proj:epsg"])
    src = cube_source(items, grid)
    out, per = [], 4
    for r0 in range(0, grid.height - per * patch + 1, per * patch):
        for c0 in range(0, grid.width - per * patch + 1, per * patch):
            block = read_block(src, (r0, r0 + per * patch, c0, c0 + per * patch))
            rows = [i for i in range(per) for _ in range(per)]
            cols = [j for _ in range(per) for j in range(per)]
            out.append(cut_patches(block, rows, cols, patch))
            if sum(len(o) for o in out) >= n:
                return np.concatenate(out)[:n]
    return np.concatenate(out)[:n]


def measure(name: str, patches: np.ndarray, folder: Path) -> dict:
    codec = CODECS[name]
    path = folder / f"{name}.zarr"
    arr = zarr.create_array(str(path), shape=patches.shape, chunks=(1,) + patches.shape[1:], dtype="uint16",
                            compressors=[codec] if codec is not None else None, fill_value=None, zarr_format=3)
    raw = patches.nbytes / 1e6
    t0 = time.process_time()
    for k in range(len(patches)):  # one whole chunk per write, as pass 2
        arr[k] = patches[k]
    t_write = time.process_time() - t0
    stored = sum(f.stat().st_size for f in path.rglob("c/**/*") if f.is_file()) / 1e6
    t0 = time.process_time()
    for k in range(len(patches)):  # one patch per read, as PatchDataset
        np.asarray(arr[k])
    t_read = time.process_time() - t0
    enc = codec
    t_enc = t_dec = float("nan")
    if enc is not None:  # the codec alone, without zarr's per-chunk machinery
        import numcodecs

        nc = numcodecs.Blosc(cname=enc.cname.value, clevel=enc.clevel, shuffle=numcodecs.Blosc.BITSHUFFLE)
        numcodecs.blosc.use_threads = False
        t0 = time.process_time()
        blobs = [nc.encode(p) for p in patches]
        t_enc = time.process_time() - t0
        t0 = time.process_time()
        for b in blobs:
            nc.decode(b)
        t_dec = time.process_time() - t0
    return {
        "codec": name, "ratio": raw / stored, "stored_MB": stored,
        "write_MBps": raw / t_write, "read_MBps": raw / t_read,
        "encode_MBps": raw / t_enc if t_enc == t_enc else float("nan"),
        "decode_MBps": raw / t_dec if t_dec == t_dec else float("nan"),
        "write_ms_per_patch": 1e3 * t_write / len(patches), "read_ms_per_patch": 1e3 * t_read / len(patches),
        "default": "yes" if name == DEFAULT_CODEC else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--patches", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="runs per codec; the best (least disturbed) is kept")
    ap.add_argument("--scene-dir", default=os.path.join(tempfile.gettempdir(), "crop2seg-bench-scenes"))
    ap.add_argument("--out", default="benchmarks/results/codecs.json")
    a = ap.parse_args()
    scene = make_demo_scene(Path(a.scene_dir) / f"{a.size}px-{a.dates}d", size=a.size, n_dates=a.dates, seed=0)
    patches = sample_patches(scene, a.patches)
    print(f"{len(patches)} patches of {patches.shape[1:]} uint16 ({patches.nbytes / 1e6:.0f} MB raw) "
          f"from the {a.size} px, {a.dates}-date demo scene (seed 0)")
    folder = Path(tempfile.mkdtemp(prefix="codecs-"))
    rows = []
    try:
        for name in CODECS:
            runs = []
            for k in range(a.repeat):
                shutil.rmtree(folder / f"{name}.zarr", ignore_errors=True)
                runs.append(measure(name, patches, folder))
            best = max(runs, key=lambda r: r["write_MBps"])
            best["read_MBps"] = max(r["read_MBps"] for r in runs)
            rows.append(best)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print_table(rows, [("codec", "codec", ""), ("ratio", "ratio", ".2f"), ("encode_MBps", "encode MB/s", ".0f"),
                       ("decode_MBps", "decode MB/s", ".0f"), ("write_MBps", "zarr write MB/s", ".0f"),
                       ("read_MBps", "zarr read MB/s", ".0f"), ("write_ms_per_patch", "write ms/patch", ".1f"),
                       ("read_ms_per_patch", "read ms/patch", ".1f"), ("default", "default", "")])
    write_json(a.out, {"scene": {"size": a.size, "dates": a.dates, "seed": 0}, "n_patches": len(patches),
                       "clock": "process CPU time, one thread", "rows": rows})


if __name__ == "__main__":
    main()
