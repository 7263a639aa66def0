"""The raw-I/O baseline of the build benchmarks: the same windows, the same bytes, nothing else.

One task per chunk reads the chunk's windows of every band and date (and SCL) straight from the
files with rasterio (10 m bands directly, 20 m bands at 20 m repeated 2 x 2, files kept open per
worker as the pipeline does), harmonizes the baseline offset and writes every patch of the chunk
into a Zarr v3 array with the store's codec, one patch per chunk. No parcels, labels, pass 1,
statistics, markers or metadata: what any build of these patches must at least do.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import dask
import numpy as np
import rasterio
import zarr

from crop2seg_pipeline.blocks import GDAL_OPTIONS
from crop2seg_pipeline.malloc import tune_malloc
from crop2seg_pipeline.nomenclature import BANDS
from crop2seg_pipeline.store import CODECS, DEFAULT_CODEC

_OPEN = threading.local()


def _ds(path: str):
    cache = _OPEN.__dict__.setdefault("files", {})
    if path not in cache:
        cache[path] = rasterio.open(path)
    return cache[path]


def raw_chunk(paths: list[dict], offsets: list[int], out: str, index0: int, r0: int, c0: int, n_rows: int,
              n_cols: int, p: int) -> int:
    """Read one chunk's windows straight from the files and write its patches."""
    tune_malloc()  # the pipeline's malloc and GDAL settings (block cache, no VSI cache)
    with rasterio.Env(**GDAL_OPTIONS):
        return _raw_chunk(paths, offsets, out, index0, r0, c0, n_rows, n_cols, p)


def _raw_chunk(paths: list[dict], offsets: list[int], out: str, index0: int, r0: int, c0: int, n_rows: int,
               n_cols: int, p: int) -> int:
    t = len(paths)
    h, w = n_rows * p, n_cols * p
    block = np.zeros((t, len(BANDS), h, w), np.uint16)
    for ti, item in enumerate(paths):
        for b, band in enumerate(BANDS):
            ds = _ds(item[band])
            if ds.res[0] == 10:
                block[ti, b] = ds.read(1, window=((r0, r0 + h), (c0, c0 + w)))
            else:
                a = ds.read(1, window=((r0 // 2, (r0 + h) // 2), (c0 // 2, (c0 + w) // 2)))
                block[ti, b] = np.repeat(np.repeat(a, 2, 0), 2, 1)
        _ds(item["SCL"]).read(1, window=((r0 // 2, (r0 + h) // 2), (c0 // 2, (c0 + w) // 2)))
        off = offsets[ti]
        if off:
            v = block[ti]
            nodata = v == 0
            np.maximum(v, np.uint16(-off + 1), out=v)
            v -= np.uint16(-off)
            v[nodata] = 0
    arr = zarr.open_array(out, mode="r+")
    k = index0
    for i in range(n_rows):
        for j in range(n_cols):
            arr[k] = block[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p]
            k += 1
    return block.nbytes


def raw_tasks(items_path: str | Path, out: str, patch: int, chunksize: int, height: int, width: int,
              codec: str = DEFAULT_CODEC) -> list:
    """The baseline's tasks over an items file whose assets are local files on one grid."""
    doc = json.loads(Path(items_path).read_text())
    items = sorted(doc["features"], key=lambda it: it["properties"]["datetime"])
    root = Path(items_path).parent
    paths = [{b: str(root / it["assets"][b]["href"]) for b in (*BANDS, "SCL")} for it in items]
    offsets = [int(round(it["assets"]["B02"].get("raster:offset", 0) / it["assets"]["B02"].get("raster:scale", 1e-4)))
               for it in items]
    n_r, n_c = height // patch, width // patch
    c = CODECS[codec]
    zarr.create_array(out, shape=(n_r * n_c, len(items), len(BANDS), patch, patch),
                      chunks=(1, len(items), len(BANDS), patch, patch), dtype="uint16",
                      compressors=[c] if c is not None else None, fill_value=None, zarr_format=3, overwrite=True)
    cp = chunksize // patch
    paths_key = dask.delayed(paths, traverse=False)
    tasks, k = [], 0
    for br in range(0, n_r, cp):
        for bc in range(0, n_c, cp):
            rows, cols = min(cp, n_r - br), min(cp, n_c - bc)
            tasks.append(dask.delayed(raw_chunk)(paths_key, offsets, out, k, br * patch, bc * patch, rows, cols, patch))
            k += rows * cols
    return tasks
