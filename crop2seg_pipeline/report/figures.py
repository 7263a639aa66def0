"""Matplotlib figures of the reports, each returned as PNG bytes.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot state, no
backend switch, safe in threads). Class colours are those of the class map's colour table
(:func:`crop2seg_pipeline.outputs.class_colors`, or the colour table read from a ``classes.tif``);
a black outline keeps light colours (Not classified is white) visible on the white page.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from ..kernels.profiles import NDVI, moments_to_mean_std

__all__ = [
    "SPLIT_COLORS",
    "png_bytes",
    "class_distribution",
    "temporal_profiles",
    "clear_sky_share",
    "patch_map",
    "normalization_stats",
    "class_area",
    "agreement_by_class",
    "parcel_confusion",
    "parcel_thumbnail",
]

SPLIT_COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c"}
_OTHER_SPLIT = "#7f7f7f"
_DPI = 100


def _rgb(colors: Sequence[Sequence[int]]) -> np.ndarray:
    return np.asarray(colors, dtype=float)[:, :3] / 255.0


def _outline(width: float = 2.6):
    return [patheffects.withStroke(linewidth=width, foreground="0.15")]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (its layout already set)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, facecolor="white")
    return buf.getvalue()


def _swatches(ax, colors: np.ndarray, ys: Sequence[float]) -> None:
    """A class-colour square left of each y tick label (axes x coordinates, data y)."""
    trans = ax.get_yaxis_transform()
    ax.scatter(np.full(len(ys), -0.012), ys, s=60, marker="s", c=colors, edgecolors="0.2", linewidths=0.6,
               transform=trans, clip_on=False, zorder=5)
    ax.tick_params(axis="y", pad=14)


# ----------------------------------------------------------------------------- store figures


def class_distribution(class_names: Sequence[str], colors: Sequence[Sequence[int]], splits: Sequence[str],
                       pixels: np.ndarray, parcels: np.ndarray, resolution: float = 10.0) -> bytes:
    """Labelled pixels (log scale) and distinct parcels per class, one bar per split."""
    present = [k for k in range(len(class_names)) if pixels[:, k].sum() > 0 or parcels[:, k].sum() > 0]
    rgb = _rgb(colors)
    n, S = len(present), len(splits)
    fig = _figure(12, max(3.0, 0.42 * n + 1.4))
    axes = fig.subplots(1, 2, sharey=True)
    ys = np.arange(n)[::-1].astype(float)
    h = 0.8 / max(S, 1)
    for ax, values, title, log in ((axes[0], pixels, f"labelled pixels ({resolution:g} m)", True),
                                   (axes[1], parcels, "parcels (distinct ids)", False)):
        for s, split in enumerate(splits):
            v = values[s, present].astype(float)
            off = (S - 1) / 2 * h - s * h
            ax.barh(ys + off, np.where(v > 0, v, np.nan) if log else v, height=h * 0.95,
                    color=SPLIT_COLORS.get(split, _OTHER_SPLIT), label=f"{split}")
        if log:
            ax.set_xscale("log")
        ax.set_title(title, fontsize=11)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    axes[0].set_yticks(ys, [class_names[k] for k in present], fontsize=9)
    _swatches(axes[0], rgb[present], ys)
    axes[1].legend(title="split", fontsize=9, loc="lower right")
    axes[0].set_xlabel("pixels (log scale)")
    axes[1].set_xlabel("parcels")
    fig.tight_layout()
    return png_bytes(fig)


def temporal_profiles(feature: str, class_names: Sequence[str], colors: Sequence[Sequence[int]],
                      dates: np.ndarray, moments: np.ndarray, min_clear: float, ncols: int = 4) -> bytes:
    """Small multiples, one per class: the feature's mean +- 2 std by date over the usable pixels.

    ``moments`` is (class, date, 3) count / sum / sum of squares.
    """
    n, mean, std = moments_to_mean_std(moments)
    present = [k for k in range(len(class_names)) if n[k].sum() > 0]
    rgb = _rgb(colors)
    t = dates.astype("datetime64[D]").astype(np.int64).astype(float)  # days since 1970
    ticks, tick_labels = _month_ticks(dates)
    ncols = max(1, min(ncols, len(present)))
    nrows = max(1, math.ceil(len(present) / ncols))
    fig = _figure(3.2 * ncols + 0.6, 2.5 * nrows + 0.9)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    lo = np.nanmin(mean[present] - 2 * std[present]) if present else 0.0
    hi = np.nanmax(mean[present] + 2 * std[present]) if present else 1.0
    for ax, k in zip(axes, present):
        c = rgb[k]
        ax.fill_between(t, mean[k] - 2 * std[k], mean[k] + 2 * std[k], color=c, alpha=0.35, linewidth=0.8,
                        edgecolor="0.35")
        ax.errorbar(t, mean[k], yerr=2 * std[k], fmt="none", ecolor="0.35", elinewidth=0.8, capsize=2)
        ax.plot(t, mean[k], "-o", color=c, markersize=3.5, linewidth=1.8, path_effects=_outline(),
                markeredgecolor="0.15", markeredgewidth=0.6)
        ax.set_title(f"{class_names[k]}  (n = {int(n[k].sum()):,} px-dates)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_xticks(ticks, tick_labels)  # fixed ticks: date locators re-run at every draw (slow)
        ax.tick_params(labelsize=8)
    for ax in axes[len(present):]:
        ax.set_visible(False)
    if present and np.isfinite(lo) and np.isfinite(hi):
        pad = 0.05 * max(hi - lo, 1e-6)
        axes[0].set_ylim(lo - pad, hi + pad)
    ylabel = "NDVI" if feature == NDVI else f"{feature} reflectance"
    for r in range(nrows):
        axes[r * ncols].set_ylabel(ylabel, fontsize=9)
    what = "NDVI = (B08 - B04) / (B08 + B04)" if feature == NDVI else f"{feature} reflectance (DN / 10000)"
    fig.suptitle(f"{what}: mean \u00b1 2\u03c3 per class and date, pixels of patch-dates with clear-sky "
                 f"fraction \u2265 {100 * min_clear:.0f} %", fontsize=11)
    fig.tight_layout()
    return png_bytes(fig)


def _month_ticks(dates: np.ndarray, max_ticks: int = 5) -> tuple[list[float], list[str]]:
    """Month-start ticks over the span of ``dates`` (days since 1970), every 1, 2, 3, 4, 6 or 12 months."""
    d = np.asarray(dates).astype("datetime64[D]")
    if d.size == 0:
        return [], []
    first, last = d.min().astype("datetime64[M]"), (d.max().astype("datetime64[M]") + 1)
    months = np.arange(first, last + 1)
    step = next((k for k in (1, 2, 3, 4, 6, 12) if len(months[::k]) <= max_ticks), 12)
    picked = [m for m in months if (m.astype(int) % 12) % step == 0] or list(months[::step])
    lo, hi = d.min(), d.max()
    picked = [m for m in picked if lo - 20 <= m.astype("datetime64[D]") <= hi + 20] or [first]
    pos = [float(m.astype("datetime64[D]").astype(np.int64)) for m in picked]
    labels = [(m.astype(object).strftime("%b\n%Y") if (m.astype(int) % 12 == 0 or k == 0)
               else m.astype(object).strftime("%b")) for k, m in enumerate(picked)]
    return pos, labels


def clear_sky_share(dates: np.ndarray, clear_mean: np.ndarray, with_date: np.ndarray, usable: np.ndarray,
                    min_clear: float) -> bytes:
    """Mean clear-sky fraction per date (bars) and the share of patches usable for the profiles."""
    D = len(dates)
    labels = [str(d) for d in dates.astype("datetime64[D]")]
    fig = _figure(max(7.0, 0.32 * D + 2.0), 4.2)
    ax = fig.subplots()
    x = np.arange(D)
    ax.bar(x, clear_mean, color="#6baed6", edgecolor="#2171b5", label="mean clear-sky fraction of the patches")
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(with_date > 0, usable / np.maximum(with_date, 1), np.nan)
    ax.plot(x, share, "D", color="#d94801", markersize=5,
            label=f"share of patches with clear-sky fraction \u2265 {100 * min_clear:.0f} % (used in the profiles)")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=1, frameon=False)
    ax.set_title("clear sky per date", fontsize=11)
    fig.tight_layout()
    return png_bytes(fig)


def patch_map(patches: pd.DataFrame, patch_size: int, resolution: float, splits: Sequence[str]) -> bytes:
    """Patch footprints coloured by split; one panel per CRS (EPSG), axes in km of that CRS."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Patch, Rectangle

    epsgs = sorted(int(e) for e in pd.unique(patches["epsg"]))
    side = patch_size * resolution
    fig = _figure(6.5 * len(epsgs) + 2.0, 6.5)
    axes = np.atleast_1d(fig.subplots(1, len(epsgs), squeeze=False)).ravel()
    for ax, epsg in zip(axes, epsgs):
        sub = patches[patches["epsg"] == epsg]
        rects = [Rectangle((x / 1000, (y - side) / 1000), side / 1000, side / 1000)
                 for x, y in zip(sub["x0"], sub["y0"])]
        faces = [SPLIT_COLORS.get(s, _OTHER_SPLIT) for s in sub["split"]]
        ax.add_collection(PatchCollection(rects, facecolors=faces, edgecolors="white", linewidths=0.5))
        ax.set_xlim((sub["x0"].min()) / 1000 - side / 2000, (sub["x0"].max() + side) / 1000 + side / 2000)
        ax.set_ylim((sub["y0"].min() - side) / 1000 - side / 2000, sub["y0"].max() / 1000 + side / 2000)
        ax.set_aspect("equal")
        ax.set_xlabel(f"x (km, EPSG:{epsg})")
        ax.set_ylabel(f"y (km, EPSG:{epsg})")
        tiles = ", ".join(sorted(pd.unique(sub["tile"].astype(str)))) if "tile" in sub else ""
        ax.set_title(f"{len(sub)} patches" + (f", tile {tiles}" if tiles else ""), fontsize=10)
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.tick_params(labelsize=8)
    counts = patches["split"].value_counts()
    handles = [Patch(facecolor=SPLIT_COLORS.get(s, _OTHER_SPLIT), label=f"{s} ({int(counts.get(s, 0))})")
               for s in splits]
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="split", fontsize=9,
                    borderaxespad=0)
    fig.tight_layout()
    return png_bytes(fig)


def normalization_stats(bands: Sequence[str], mean: Sequence[float], std: Sequence[float], label: str) -> bytes:
    """Per-band normalization mean (bars) with +- 1 std (error bars), in DN."""
    fig = _figure(8, 4)
    ax = fig.subplots()
    x = np.arange(len(bands))
    ax.bar(x, mean, yerr=std, capsize=4, color="#9ecae1", edgecolor="#3182bd", error_kw={"ecolor": "0.2"})
    ax.set_xticks(x, list(bands))
    ax.set_ylabel("DN (reflectance x 10000)")
    ax.set_title(f"normalization: mean \u00b1 std per band ({label})", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return png_bytes(fig)


# ----------------------------------------------------------------------------- prediction figures


def class_area(class_names: Sequence[str], colors: Sequence[Sequence[int]], area_ha: Sequence[float]) -> bytes:
    """Predicted area per class (ha, with its share), bars in the class map's colours."""
    area = np.asarray(area_ha, dtype=float)
    present = [k for k in range(len(class_names)) if area[k] > 0]
    total = float(area.sum()) or 1.0
    rgb = _rgb(colors)
    fig = _figure(9, max(2.5, 0.4 * len(present) + 1.3))
    ax = fig.subplots()
    ys = np.arange(len(present))[::-1]
    ax.barh(ys, area[present], color=rgb[present], edgecolor="0.2", linewidth=0.7)
    for y, k in zip(ys, present):
        ax.annotate(f" {area[k]:,.1f} ha ({100 * area[k] / total:.1f} %)", (area[k], y), va="center", fontsize=8)
    ax.set_yticks(ys, [class_names[k] for k in present], fontsize=9)
    ax.set_xlabel("predicted area (ha)")
    ax.set_xlim(0, area.max() * 1.35 if area.max() > 0 else 1)
    ax.set_title(f"predicted area per class (total {total:,.1f} ha)", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return png_bytes(fig)


def agreement_by_class(table: pd.DataFrame, class_names: Sequence[str], colors: Sequence[Sequence[int]]) -> bytes:
    """Share of the compared parcels of each declared class whose prediction agrees."""
    rgb = _rgb(colors)
    rows = table[table["n_compared"] > 0]
    fig = _figure(9, max(2.5, 0.4 * len(rows) + 1.3))
    ax = fig.subplots()
    ys = np.arange(len(rows))[::-1]
    ks = rows["declared_class"].to_numpy().astype(int)
    ax.barh(ys, rows["agreement_share"], color=rgb[ks], edgecolor="0.2", linewidth=0.7)
    for y, (_, r) in zip(ys, rows.iterrows()):
        ax.annotate(f" {100 * r['agreement_share']:.0f} % ({int(r['n_agree'])}/{int(r['n_compared'])})",
                    (r["agreement_share"], y), va="center", fontsize=8)
    ax.set_yticks(ys, [class_names[k] for k in ks], fontsize=9)
    ax.set_xlim(0, 1.3)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25", "50", "75", "100"])
    ax.set_xlabel("parcels whose predicted class (area majority) is the declared one (%)")
    ax.set_title("agreement per declared class", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return png_bytes(fig)


def parcel_confusion(matrix: np.ndarray, class_names: Sequence[str]) -> bytes:
    """Declared (rows) vs predicted (columns) parcel counts; colour = share of the row."""
    present = [k for k in range(len(class_names)) if matrix[k].sum() > 0 or matrix[:, k].sum() > 0]
    m = matrix[np.ix_(present, present)].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(m.sum(1, keepdims=True) > 0, m / np.maximum(m.sum(1, keepdims=True), 1), 0.0)
    n = len(present)
    side = max(4.5, 0.5 * n + 3.0)
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if m[i, j] > 0:
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
    names = [class_names[k] for k in present]
    ax.set_xticks(range(n), names, rotation=50, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted class (area majority)")
    ax.set_ylabel("declared class")
    ax.set_title("parcels: declared vs predicted (counts; colour = share of the declared class)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    fig.tight_layout()
    return png_bytes(fig)


def parcel_thumbnail(classes: np.ndarray, confidence: np.ndarray, extent: tuple[float, float, float, float],
                     outline: Sequence[np.ndarray], class_names: Sequence[str], colors: Sequence[Sequence[int]],
                     title: str) -> bytes:
    """The class map and confidence around one parcel, its outline drawn on both.

    ``extent`` is (left, right, bottom, top) of the crops in map units; ``outline`` rings as
    (n, 2) arrays of map coordinates.
    """
    from matplotlib.patches import Patch

    K = len(class_names)
    rgb = _rgb(colors)
    fig = _figure(7.4, 3.6)
    axes = fig.subplots(1, 2)
    axes[0].imshow(classes, cmap=ListedColormap(rgb), norm=BoundaryNorm(np.arange(-0.5, K + 0.5), K),
                   interpolation="nearest", extent=extent)
    im = axes[1].imshow(confidence / 255.0, cmap="magma", vmin=0, vmax=1, interpolation="nearest", extent=extent)
    for ax in axes:
        for ring in outline:
            ax.plot(ring[:, 0], ring[:, 1], color="cyan", linewidth=1.6, path_effects=_outline(3.2))
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_title("predicted classes", fontsize=9)
    axes[1].set_title("confidence", fontsize=9)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    shown = [k for k in np.unique(classes) if 0 <= k < K]
    axes[0].legend(handles=[Patch(facecolor=rgb[k], edgecolor="0.3", label=class_names[k]) for k in shown],
                   fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.02), ncol=2, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)
