"""The Zarr (v3) patch store: layout, skeleton, whole-chunk region writes, resume markers.

Layout (``shared/DESIGN.md``): ``xarray.open_zarr(store)`` gives ``s2`` (patch, time, band, y, x)
uint16, ``dates`` (patch, time), ``label`` (patch, y, x) uint8, ``parcel_id`` (patch, y, x) int32,
``clear`` (patch, time) float32, per-patch coordinates ``tile``, ``row``, ``col``, ``split``,
``epsg``, ``x0``, ``y0``, and attributes. One patch per chunk, no sharding: every write task
writes whole chunks of the patches it owns, so no two tasks ever touch one chunk.

Resume: the skeleton (metadata, coordinates, dates, clear-sky fractions) is written first, with
a fingerprint of the build inputs. Each write task then writes its patches and, only after
they are all written, drops a marker ``.crop2seg/done/<key>.json`` (atomically) carrying its
partial statistics. A re-run with the same fingerprint skips tasks that have a marker. The
store counts as complete only when ``attrs["complete"]`` is true, set last.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from . import storage
from .errors import StoreError
from .locks import LOCK_DIR

STORE_FORMAT = "crop2seg-patch-store"
STORE_VERSION = 1
MARKER_DIR = f"{LOCK_DIR}/done"

#: Codecs a store's patch arrays can be written with (``--codec``), by name. Chosen by measurement
#: (``python benchmarks/codecs.py``: encode/decode speed, ratio and the training loader's read
#: speed on demo patches); the name is recorded in the store's ``codec`` attribute.
CODECS: dict[str, BloscCodec | None] = {
    "zstd-1": BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"),
    "zstd-3": BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
    "lz4": BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),
    "none": None,
}
#: The codec of new stores.
DEFAULT_CODEC = "zstd-1"


def codec(name: str) -> BloscCodec | None:
    """The codec of ``name`` (see :data:`CODECS`); a clear error for an unknown name."""
    if name not in CODECS:
        raise StoreError(f"unknown codec {name!r}: choose one of {', '.join(CODECS)}")
    return CODECS[name]


def store_state(path: str | os.PathLike) -> str:
    """``"absent"``, ``"empty"`` (an empty folder, or one holding only a writer lock),
    ``"ours"`` (a patch store) or ``"foreign"``. ``path`` may be an object-store URL
    (:mod:`crop2seg_pipeline.storage`); there, an absent prefix is ``"absent"``."""
    if not storage.exists(path):
        return "absent"
    entries = storage.listdir(path)
    if storage.isdir(path) and not any(n != LOCK_DIR for n in entries) and _only_lock(storage.join(path, LOCK_DIR)):
        return "empty"
    if "zarr.json" in entries:
        try:
            attrs = json.loads(storage.read_bytes(storage.join(path, "zarr.json")) or b"").get("attributes", {})
        except (OSError, json.JSONDecodeError):
            return "foreign"
        if attrs.get("format") == STORE_FORMAT:
            return "ours"
    return "foreign"


def prepare_target(path: str | os.PathLike, overwrite: bool) -> str:
    """Check the output path before anything is written; returns ``"new"`` or ``"existing"``.

    A path that holds anything other than a patch store is never touched, even with
    ``overwrite``: the user must choose another path or delete it themselves.
    """
    state = store_state(path)
    if state == "foreign":
        raise StoreError(
            f"{path} exists and is not a crop2seg patch store (it holds other files); "
            "choose another --out path or remove it yourself"
        )
    if state == "ours" and overwrite:
        return "overwrite"
    return "existing" if state == "ours" else "new"


def _only_lock(d: str) -> bool:
    """Whether the bookkeeping folder ``d`` is absent or holds nothing but lock files."""
    if not storage.isdir(d):
        return not storage.exists(d)
    return all(not is_dir and name.startswith(("lock.json", ".lock.json")) for name, is_dir in storage.listdir(d).items())


def clear_store(path: str | os.PathLike) -> None:
    """Delete a patch store's content (for ``overwrite``), keeping the writer lock that guards it."""
    if store_state(path) not in ("ours", "empty"):
        raise StoreError(f"{path} is not a crop2seg patch store: not deleting it")
    for name, is_dir in storage.listdir(path).items():
        if name == LOCK_DIR and is_dir:
            for sub in storage.listdir(storage.join(path, name)):
                if not sub.startswith(("lock.json", ".lock.json")):
                    storage.rmtree(storage.join(path, name, sub))
        else:
            storage.rmtree(storage.join(path, name))


def read_attrs(path: str | os.PathLike) -> dict:
    data = storage.read_bytes(storage.join(path, "zarr.json"))
    if data is None:
        raise StoreError(f"{path} has no zarr.json: not a patch store")
    return json.loads(data).get("attributes", {})


def create_skeleton(
    path: str | os.PathLike,
    patches: pd.DataFrame,
    dates: np.ndarray,
    clear: np.ndarray,
    bands: Sequence[str],
    patch_size: int,
    attrs: Mapping[str, Any],
    codec_name: str = DEFAULT_CODEC,
) -> None:
    """Write the store's metadata, coordinates, ``dates`` and ``clear``; data arrays stay empty.

    Parameters
    ----------
    patches
        One row per patch, in store order, with columns ``tile``, ``row``, ``col``, ``split``,
        ``epsg``, ``x0``, ``y0``.
    dates
        (patch, time) datetime64, NaT for padding.
    clear
        (patch, time) float32 clear-sky fractions (NaN for padding).
    codec_name
        Codec of ``s2``, ``label`` and ``parcel_id`` (see :data:`CODECS`), recorded as ``codec``.
    """
    if store_state(path) not in ("absent", "empty"):
        raise StoreError(f"{path} is not empty: a skeleton is only written into a new or emptied store")
    compressors = [c] if (c := codec(codec_name)) is not None else None
    n, t = dates.shape
    b, p = len(bands), patch_size
    coords = {
        "band": ("band", np.array(list(bands), dtype=object)),
        "tile": ("patch", patches["tile"].astype(str).to_numpy(dtype=object)),
        "row": ("patch", patches["row"].to_numpy("int32")),
        "col": ("patch", patches["col"].to_numpy("int32")),
        "split": ("patch", patches["split"].astype(str).to_numpy(dtype=object)),
        "epsg": ("patch", patches["epsg"].to_numpy("int32")),
        "x0": ("patch", patches["x0"].to_numpy("float64")),
        "y0": ("patch", patches["y0"].to_numpy("float64")),
    }
    ds = xr.Dataset(
        {
            "dates": (("patch", "time"), dates.astype("datetime64[ns]")),
            "clear": (("patch", "time"), clear.astype("float32")),
        },
        coords=coords,
        attrs={"format": STORE_FORMAT, "format_version": STORE_VERSION, "complete": False, "codec": codec_name,
               **attrs},
    )
    enc = {"dates": {"units": "days since 1970-01-01", "dtype": "int64"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        warnings.filterwarnings("ignore", message=".*not recognized as a component.*")
        # "a", not "w": the folder is new or emptied (prepare_target, clear_store) but holds the
        # writer lock, which "w" would delete with everything else
        ds.to_zarr(storage.zarr_store(path), mode="a", zarr_format=3, consolidated=False, encoding=enc)
    # the data arrays: metadata only (no chunk is written), as xarray would describe them (dimension
    # names, the patch coordinates) -- made by zarr directly: xarray's to_zarr(compute=False) of
    # lazy zeros built a graph of one task per chunk (2 s for the full tile's 7,225 patches)
    group = zarr.open_group(storage.zarr_store(path), mode="r+", zarr_format=3)
    coordinates = " ".join(sorted(k for k, (dim, _) in coords.items() if dim == "patch"))
    for name, shape, dtype, dims in (
        ("s2", (n, t, b, p, p), "uint16", ("patch", "time", "band", "y", "x")),
        ("label", (n, p, p), "uint8", ("patch", "y", "x")),
        ("parcel_id", (n, p, p), "int32", ("patch", "y", "x")),
    ):
        # 0 is a real value (nodata DN, Background, no parcel), not a mask: no _FillValue attribute
        group.create_array(name, shape=shape, chunks=(1,) + shape[1:], dtype=dtype, compressors=compressors,
                           fill_value=0, dimension_names=dims, attributes={"coordinates": coordinates})


def write_patches(
    path: str | os.PathLike,
    index: Sequence[int],
    s2: np.ndarray | Sequence[np.ndarray],
    label: np.ndarray | Sequence[np.ndarray],
    parcel_id: np.ndarray | Sequence[np.ndarray],
) -> None:
    """Write whole patches (whole chunks) at store positions ``index``.

    ``s2[k]`` is patch k's (T_tile, band, y, x) (a stacked array or a list of views); it is
    zero-padded to the store's time length so each write covers its chunk entirely.
    """
    g = zarr.open_group(storage.zarr_store(path), mode="r+", zarr_format=3)
    arr_s2, arr_label, arr_pid = g["s2"], g["label"], g["parcel_id"]
    t_store = arr_s2.shape[1]
    for k, i in enumerate(index):
        patch = s2[k]
        if patch.shape[0] < t_store:
            pad = np.zeros((t_store,) + patch.shape[1:], dtype=patch.dtype)
            pad[: patch.shape[0]] = patch
            patch = pad
        arr_s2[int(i)] = patch
        arr_label[int(i)] = label[k]
        arr_pid[int(i)] = parcel_id[k]


def write_marker(path: str | os.PathLike, key: str, info: Mapping[str, Any]) -> None:
    """Record that task ``key`` finished (atomic: a rename locally, one PUT on an object store,
    so a marker is never half-written)."""
    storage.write_bytes(storage.join(path, MARKER_DIR, f"{key}.json"), json.dumps(info).encode())


def write_json_atomic(path: str | os.PathLike, doc: Any) -> None:
    """Write ``doc`` as JSON at ``path`` (a path or URL) whole or not at all (never half-written)."""
    storage.write_bytes(path, json.dumps(doc, indent=2, default=str).encode())


def read_markers(path: str | os.PathLike) -> dict[str, dict]:
    d = storage.join(path, MARKER_DIR)
    out = {}
    for name, is_dir in sorted(storage.listdir(d).items()):
        if is_dir or not name.endswith(".json") or name.startswith("."):
            continue
        try:
            out[name[: -len(".json")]] = json.loads(storage.read_bytes(storage.join(d, name)) or b"")
        except (OSError, json.JSONDecodeError):
            continue  # a damaged marker is ignored: its task is simply redone
    return out


def finalize(path: str | os.PathLike, attrs: Mapping[str, Any]) -> None:
    """Set the final attributes (statistics, summary) and mark the store complete, last."""
    store = storage.zarr_store(path)
    g = zarr.open_group(store, mode="r+", zarr_format=3)
    g.attrs.update({**attrs, "complete": True})
    with warnings.catch_warnings():  # consolidated metadata is a zarr-python extension in v3
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(store, zarr_format=3)


def open_store(path: str | os.PathLike, require_complete: bool = True) -> xr.Dataset:
    """Open a patch store lazily with xarray, checking it is one of ours and complete."""
    state = store_state(path)
    if state != "ours":
        raise StoreError(f"{path} is not a crop2seg patch store ({state})")
    complete = bool(read_attrs(path).get("complete"))
    if require_complete and not complete:
        raise StoreError(
            f"{path} is an incomplete patch store (its build was interrupted or failed); "
            "re-run crop2seg-build-dataset with the same arguments to finish it"
        )
    with warnings.catch_warnings():  # markers and footprints live beside the arrays
        warnings.filterwarnings("ignore", message=".*not recognized as a component.*")
        # consolidated metadata is written last, with completion: an incomplete store has none
        ds = xr.open_zarr(storage.zarr_store(path, read_only=True), zarr_format=3, consolidated=True if complete else False)
    return ds
