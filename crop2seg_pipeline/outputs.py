"""Inference outputs: Cloud-Optimized GeoTIFFs, probability Zarr, quicklook and parcel table.

Rasters are written chunk by chunk (as the cluster finishes them) into a temporary tiled GeoTIFF
through rasterio windows, then copied by GDAL's COG driver (which builds the overviews and puts
the IFDs before the data); no step holds the whole tile in memory.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.windows import Window

from .grid import Grid
from .nomenclature import CLASS_COLORS, CLASS_NAMES

__all__ = [
    "TiledRaster",
    "class_colors",
    "validate_cog",
    "read_category_names",
    "create_probability_store",
    "write_probability_block",
    "finalize_probability_store",
    "parcel_table",
    "write_quicklook",
    "quicklook_figure",
]

COG_BLOCKSIZE = 256


def class_colors(class_names: Sequence[str]) -> list[tuple[int, int, int]]:
    """The nomenclature's colours for its classes; a grey ramp for other class lists."""
    if tuple(class_names) == CLASS_NAMES[: len(class_names)]:
        return list(CLASS_COLORS[: len(class_names)])
    n = max(len(class_names) - 1, 1)
    return [(int(255 * k / n),) * 3 for k in range(len(class_names))]  # type: ignore[misc]


class TiledRaster:
    """A uint8 raster written window by window, finished as a COG on close.

    Parameters
    ----------
    path
        Final COG path; a temporary ``.<name>.tiles.tif`` is written beside it.
    grid
        The pixel grid (CRS, transform, shape) copied exactly.
    kind
        ``"classes"`` (palette colour table, class names as tags and GDAL category names,
        nearest overviews), ``"confidence"`` (greyscale, average overviews) or
        ``"probabilities"`` (one band per class, probability x 255, band descriptions = class
        names, average overviews).
    class_names
        Class names, for ``kind="classes"`` and ``"probabilities"``.
    """

    KINDS = ("classes", "confidence", "probabilities")

    def __init__(self, path: str | os.PathLike, grid: Grid, kind: str, class_names: Sequence[str] = CLASS_NAMES):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tiles.tif")
        self.grid = grid
        self.kind = kind
        self.class_names = list(class_names)
        self.count = len(self.class_names) if kind == "probabilities" else 1
        self._ds = None

    def __enter__(self) -> "TiledRaster":
        self._ds = rasterio.open(
            self.tmp, "w", driver="GTiff", width=self.grid.width, height=self.grid.height, count=self.count,
            dtype="uint8", crs=self.grid.crs, transform=self.grid.transform, tiled=True,
            blockxsize=256, blockysize=256, compress="NONE", BIGTIFF="IF_SAFER",
            **({"photometric": "PALETTE"} if self.kind == "classes" else {}),
        )
        if self.kind == "classes":  # before any pixel: libtiff cannot change the photometric later
            self._ds.write_colormap(1, {k: (*c, 255) for k, c in enumerate(class_colors(self.class_names))})
        return self

    def write(self, block: np.ndarray, row: int, col: int) -> None:
        """Write a (y, x) uint8 block (``(band, y, x)`` for probabilities) at pixel (row, col)."""
        h, w = block.shape[-2:]
        if self.count == 1:
            self._ds.write(np.asarray(block, np.uint8), 1, window=Window(col, row, w, h))
        else:
            self._ds.write(np.asarray(block, np.uint8), window=Window(col, row, w, h))

    def __exit__(self, exc_type, exc, tb) -> None:
        ds, self._ds = self._ds, None
        try:
            if exc_type is None:
                self._describe(ds)
        finally:
            ds.close()
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return
        try:
            self._to_cog()
        finally:
            self.tmp.unlink(missing_ok=True)

    def _describe(self, ds) -> None:
        if self.kind == "classes":
            ds.update_tags(1, class_names=json.dumps(self.class_names),
                           **{f"CLASS_{k}": n for k, n in enumerate(self.class_names)})
            ds.set_band_description(1, "crop class")
            ds.update_tags(DESCRIPTION="crop2seg-pipeline predicted crop classes")
        elif self.kind == "confidence":
            ds.set_band_description(1, "confidence")
            ds.update_tags(1, scale="1/255", meaning="max class probability x 255, rounded")
            ds.update_tags(DESCRIPTION="crop2seg-pipeline prediction confidence")
        else:
            for k, name in enumerate(self.class_names, 1):
                ds.set_band_description(k, name)
                ds.update_tags(k, class_id=str(k - 1), scale="1/255")
            ds.update_tags(DESCRIPTION="crop2seg-pipeline class probabilities x 255 (bands sum to 255)",
                           class_names=json.dumps(self.class_names))

    def _to_cog(self) -> None:
        for p in (self.path, self.path.with_name(self.path.name + ".aux.xml")):
            p.unlink(missing_ok=True)
        rasterio.shutil.copy(
            self.tmp, self.path, driver="COG", COMPRESS="DEFLATE", PREDICTOR="NO" if self.kind == "classes" else "2",
            BLOCKSIZE=str(COG_BLOCKSIZE), OVERVIEWS="IGNORE_EXISTING",
            OVERVIEW_RESAMPLING="NEAREST" if self.kind == "classes" else "AVERAGE", BIGTIFF="IF_SAFER",
        )
        if self.kind == "classes":
            write_category_names(self.path, self.class_names)


def write_category_names(path: str | os.PathLike, class_names: Sequence[str]) -> Path:
    """Class names as GDAL category names in the PAM sidecar ``PATH.aux.xml``.

    GeoTIFF has no tag for category names; GDAL keeps them in this sidecar (as ``SetCategoryNames``
    on a GeoTIFF would) and QGIS/GDAL readers show them beside the colour table.
    """
    cats = "".join(f"      <Category>{escape(n)}</Category>\n" for n in class_names)
    xml = (
        "<PAMDataset>\n"
        '  <PAMRasterBand band="1">\n'
        "    <CategoryNames>\n"
        f"{cats}"
        "    </CategoryNames>\n"
        "  </PAMRasterBand>\n"
        "</PAMDataset>\n"
    )
    target = Path(str(path) + ".aux.xml")
    target.write_text(xml, encoding="utf-8")
    return target


def read_category_names(path: str | os.PathLike) -> list[str]:
    """Category names from ``PATH.aux.xml`` (empty when absent)."""
    import xml.etree.ElementTree as ET

    aux = Path(str(path) + ".aux.xml")
    if not aux.exists():
        return []
    root = ET.parse(aux).getroot()
    return [c.text or "" for c in root.iter("Category")]


# ----------------------------------------------------------------------------- COG validation


def validate_cog(path: str | os.PathLike) -> list[str]:
    """Problems that keep ``path`` from being a Cloud-Optimized GeoTIFF (empty list: valid).

    Uses GDAL's ``validate_cloud_optimized_geotiff`` when the ``osgeo`` bindings are importable;
    otherwise checks what it checks that rasterio can see: GTiff, ``LAYOUT=COG``, tiles, overviews
    for rasters larger than a tile, GDAL's structural metadata, and that the IFDs precede the tile
    data and overview data precede full-resolution data.
    """
    try:
        from osgeo_utils.samples.validate_cloud_optimized_geotiff import validate as gdal_validate

        _warnings, errors, _details = gdal_validate(str(path), full_check=True)
        return list(errors)
    except ImportError:
        pass
    errors: list[str] = []
    with rasterio.open(path) as ds:
        if ds.driver != "GTiff":
            return [f"driver is {ds.driver}, not GTiff"]
        if ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
            errors.append("IMAGE_STRUCTURE LAYOUT is not COG")
        bh, bw = ds.block_shapes[0]
        if not ds.profile.get("tiled") and max(ds.width, ds.height) > 512:
            errors.append(f"not tiled (blocks {bw}x{bh} for {ds.width}x{ds.height})")
        ovr = ds.overviews(1)
        if max(ds.width, ds.height) > max(bw, bh) and not ovr:
            errors.append("no overviews although the raster is larger than a tile")
        offset_full = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1) or 0)
        offsets_ovr = []
        for k in range(len(ovr)):
            v = ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1, ovr=k)
            if v:
                offsets_ovr.append(int(v))
        if offsets_ovr and min(offsets_ovr) > offset_full:
            errors.append("full-resolution data precede overview data")
    with open(path, "rb") as fh:
        head = fh.read(16384)
    order = "<" if head[:2] == b"II" else ">"
    version = struct.unpack(order + "H", head[2:4])[0]
    first_ifd = struct.unpack(order + ("I" if version == 42 else "Q"), head[4:8] if version == 42 else head[8:16])[0]
    if b"GDAL_STRUCTURAL_METADATA" not in head or b"LAYOUT=IFDS_BEFORE_DATA" not in head:
        errors.append("no GDAL structural metadata with LAYOUT=IFDS_BEFORE_DATA after the header")
    if offset_full and first_ifd > offset_full:
        errors.append("the first IFD is after the tile data")
    return errors


# ----------------------------------------------------------------------------- probabilities (Zarr)


def create_probability_store(path: str, grid: Grid, class_names: Sequence[str], chunks_yx: tuple) -> None:
    """Create ``path`` (Zarr v3) with ``probabilities`` (class_id, y, x) float32, coordinates only.

    Zarr chunks are ``(class, first y chunk, first x chunk)``: every dask chunk boundary is a
    multiple of them (only the last chunks may be longer), so chunk tasks never share a Zarr chunk.
    """
    import dask.array as da
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    K = len(class_names)
    cy, cx = int(chunks_yx[0][0]), int(chunks_yx[1][0])
    lazy = da.zeros((K, grid.height, grid.width), dtype=np.float32, chunks=(K, cy, cx))
    ds = xr.Dataset(
        {"probabilities": (("class_id", "y", "x"), lazy, {"long_name": "blended softmax probability"})},
        coords={
            "class_id": np.arange(K), "class_name": ("class_id", np.array(list(class_names), dtype=object)),
            "y": grid.y_coords(), "x": grid.x_coords(),
        },
        attrs={"class_names": list(class_names), "epsg": grid.epsg, "transform": list(grid.transform)[:6], "resolution": grid.resolution,
               "pixel_convention": "x/y are pixel centers; transform is the upper-left corner"},
    )
    ds = ds.rio.write_crs(grid.crs)
    ds.to_zarr(path, mode="w", compute=False, zarr_format=3, consolidated=False,
               encoding={"probabilities": {"chunks": (K, cy, cx)}})


def write_probability_block(path: str, probs: np.ndarray, y0: int, x0: int) -> None:
    """Region write of one chunk's ``(class, y, x)`` probabilities (runs on a worker)."""
    import zarr

    arr = zarr.open_array(str(Path(path) / "probabilities"), mode="r+")
    arr[:, y0 : y0 + probs.shape[1], x0 : x0 + probs.shape[2]] = probs


def finalize_probability_store(path: str) -> None:
    """Consolidate the store's metadata (as the patch store does) once every chunk is written."""
    import warnings

    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(path, zarr_format=3)


# ----------------------------------------------------------------------------- parcels


def parcel_table(
    parcels: Any,
    hists: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    confs: Sequence[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    ignore_index: int | None = 14,
) -> Any:
    """Per-parcel result table from per-chunk histograms, summed here.

    Parameters
    ----------
    parcels
        GeoDataFrame from :func:`~crop2seg_pipeline.parcels.read_parcels` (``parcel_id``,
        ``crop_code``, ``class_id``, geometry).
    hists
        Per chunk: (parcel ids, class ids, pixel counts).
    confs
        Per chunk: (parcel ids, sum of the max probability over the parcel's pixels).

    Returns
    -------
    GeoDataFrame
        ``parcel_id``, ``crop_code``, ``declared_class``/``declared_name`` (the mapping),
        ``predicted_class``/``predicted_name`` (area majority, smallest id on ties; null without
        pixels), ``predicted_share`` (its share of the parcel's pixels), ``mean_confidence``
        (0..1), ``n_pixels`` and ``agreement`` (declared == predicted; null when declared is
        ``ignore_index`` or the parcel has no pixel), geometry. A pixel belongs to the parcel of
        the parcel-id raster (center inside; the largest id where parcels overlap).
    """
    cols = ["pid", "cls", "n"]
    if hists:
        h = pd.DataFrame({k: np.concatenate([x[i] for x in hists]) for i, k in enumerate(cols)})
        h = h.groupby(["pid", "cls"], sort=True)["n"].sum().reset_index()
    else:
        h = pd.DataFrame({k: np.empty(0, np.int64) for k in cols})
    total = h.groupby("pid")["n"].sum()
    # area majority: most pixels, then the smallest class id
    best = h.sort_values(["pid", "n", "cls"], ascending=[True, False, True]).drop_duplicates("pid")
    best = best.set_index("pid")
    if confs:
        c = pd.DataFrame({"pid": np.concatenate([x[0] for x in confs]), "s": np.concatenate([x[1] for x in confs])})
        conf = c.groupby("pid")["s"].sum()
    else:
        conf = pd.Series(dtype=float)

    out = parcels[[k for k in ("parcel_id", "source_id", "crop_code", "class_id") if k in parcels.columns]].copy()
    pid = out["parcel_id"].to_numpy().astype(np.int64)
    n = total.reindex(pid).fillna(0).to_numpy().astype(np.int64)
    pred = best["cls"].reindex(pid)
    out = out.rename(columns={"class_id": "declared_class"})
    names = np.asarray(class_names, dtype=object)
    out["declared_class"] = out["declared_class"].astype("int64")
    out["declared_name"] = [names[k] if 0 <= k < len(names) else None for k in out["declared_class"]]
    out["predicted_class"] = pd.array(pred.to_numpy(), dtype="Int64")
    out["predicted_name"] = [names[int(k)] if pd.notna(k) else None for k in pred.to_numpy()]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["predicted_share"] = np.where(n > 0, best["n"].reindex(pid).fillna(0).to_numpy() / np.maximum(n, 1), np.nan)
        out["mean_confidence"] = np.where(n > 0, conf.reindex(pid).fillna(0).to_numpy() / np.maximum(n, 1), np.nan)
    out["n_pixels"] = n
    agree = pd.array(out["declared_class"].to_numpy() == pred.fillna(-1).to_numpy(), dtype="boolean")
    no_flag = (n == 0) | (out["declared_class"].to_numpy() == (ignore_index if ignore_index is not None else -1))
    agree[no_flag] = pd.NA
    out["agreement"] = agree
    out["geometry"] = parcels.geometry.to_numpy()
    import geopandas as gpd

    return gpd.GeoDataFrame(out, geometry="geometry", crs=parcels.crs)


# ----------------------------------------------------------------------------- quicklook


def write_quicklook(
    classes_tif: str | os.PathLike,
    png: str | os.PathLike,
    class_names: Sequence[str],
    counts: Sequence[int] | None = None,
    title: str = "",
    max_side: int = 1024,
) -> Path:
    """A PNG of the class map (read decimated, from the COG overviews) with a legend of the
    classes present (``counts`` > 0; all classes when None); see :func:`quicklook_figure`."""
    with rasterio.open(classes_tif) as ds:
        f = max(1, int(np.ceil(max(ds.width, ds.height) / max_side)))
        img = ds.read(1, out_shape=(max(1, ds.height // f), max(1, ds.width // f)), resampling=Resampling.nearest)
    fig = quicklook_figure(img, class_names, counts, title)
    fig.savefig(png, facecolor="white")
    return Path(png)


def quicklook_figure(img: np.ndarray, class_names: Sequence[str], counts: Sequence[int] | None = None,
                     title: str = "", dpi: int = 110, max_width_in: float = 8.0, max_height_in: float = 6.0) -> Any:
    """The quicklook as a matplotlib ``Figure`` sized so the map, the legend and the title fit.

    The map keeps its aspect within ``max_width_in`` x ``max_height_in`` inches; the legend is
    measured first and the figure is made wide and tall enough for it beside the map (in more
    columns when it is taller than the map may be), and for the title: nothing is cut, whatever
    the area's shape (very wide, very tall, tiny).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    colors = np.asarray(class_colors(class_names), dtype=float) / 255.0
    K = len(class_names)
    present = [k for k in range(K) if counts is None or counts[k] > 0]
    total = float(sum(counts)) if counts is not None else 0.0
    handles = [
        Patch(facecolor=colors[k], edgecolor="0.3",
              label=class_names[k] + (f" ({100 * counts[k] / total:.1f}%)" if total else ""))
        for k in present
    ]
    fig = Figure(dpi=dpi)
    FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()

    def size_in(artist) -> tuple[float, float]:
        bb = artist.get_window_extent(renderer)
        return bb.width / dpi, bb.height / dpi

    h_px, w_px = img.shape[:2]
    scale = min(max_width_in / w_px, max_height_in / h_px)
    iw, ih = w_px * scale, h_px * scale
    ncol, leg = 1, None
    while True:  # more columns while the legend is taller than the map may be
        if leg is not None:
            leg.remove()
        leg = fig.legend(handles=handles, loc="center left", fontsize=8, frameon=False, ncol=ncol,
                         borderaxespad=0.0, borderpad=0.2)
        lw, lh = size_in(leg) if handles else (0.0, 0.0)
        if lh <= max(ih, max_height_in) or ncol >= max(1, len(handles)):
            break
        ncol += 1
    ttl = fig.text(0.5, 1.0, title, ha="center", va="top", fontsize=10) if title else None
    tw, th = size_in(ttl) if ttl is not None else (0.0, 0.0)
    pad, gap = 0.15, (0.25 if handles else 0.0)
    body_h = max(ih, lh)
    top_h = th + 0.15 if ttl is not None else 0.0
    W = max(pad + iw + gap + lw + pad, tw + 2 * pad)
    H = pad + body_h + top_h + pad
    fig.set_size_inches(W, H)
    x0 = (W - (iw + gap + lw)) / 2  # centre the map + legend block
    ax = fig.add_axes((x0 / W, (pad + (body_h - ih) / 2) / H, iw / W, ih / H))
    ax.imshow(img, cmap=ListedColormap(colors), norm=BoundaryNorm(np.arange(-0.5, K + 0.5), K),
              interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    if handles:
        leg.set_bbox_to_anchor(((x0 + iw + gap) / W, (pad + body_h / 2) / H), transform=fig.transFigure)
    if ttl is not None:
        ttl.set_position((0.5, 1 - pad / H))
    return fig
