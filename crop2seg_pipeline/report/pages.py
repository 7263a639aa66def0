"""The two report pages: a patch store's and a prediction's (figures, captions, tables)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio

from ..kernels.profiles import NDVI
from ..outputs import class_colors
from . import figures
from .html import Page
from .prediction import (
    Prediction,
    agreement_table,
    parcel_confusion_matrix,
    parcel_window,
    read_window,
    top_disagreements,
)
from .store_stats import StoreStats

__all__ = ["store_page", "prediction_page"]


def _pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f} %"


# ----------------------------------------------------------------------------- store


def store_page(st: StoreStats) -> Page:
    """The page of a patch store from its :class:`StoreStats`."""
    colors = class_colors(st.class_names)
    name = Path(st.path).name
    dates = st.dates.astype("datetime64[D]")
    n_split = st.patches["split"].value_counts()
    page = Page(f"Patch store report: {name}", subtitle=str(Path(st.path).resolve()))
    tiles = sorted(pd.unique(st.patches["tile"].astype(str))) if "tile" in st.patches else []
    page.facts({
        "patches": f"{len(st.patches)} (" + ", ".join(f"{s} {int(n_split.get(s, 0))}" for s in st.splits) + ")",
        "patch size": f"{st.patch_size} x {st.patch_size} px at {st.resolution:g} m",
        "tiles": ", ".join(tiles) or "?",
        "dates": f"{len(dates)} ({dates.min()} .. {dates.max()})" if len(dates) else "none",
        "classes": ", ".join(f"{k} {n}" for k, n in enumerate(st.class_names)),
        "parcels": ", ".join(f"{s} {int(st.parcels_total[i])}" for i, s in enumerate(st.splits)),
        "software": st.attrs.get("software", "?"),
    })

    page.section("Class distribution")
    page.figure("class_distribution.png",
                figures.class_distribution(st.class_names, colors, st.splits, st.pixels, st.parcels, st.resolution),
                "Labelled pixels (log scale) and parcels per class and split. Parcels are distinct parcel ids "
                "with pixels of that class in the split's patches; a parcel cut by patch borders counts once, "
                "one straddling two splits counts in both. Class colours as in the class map (classes.tif).")
    page.table(st.class_table(), csv_name="class_distribution.csv")

    page.section(
        "Temporal profiles",
        "Mean \u00b1 2 standard deviations per class and date, over the valid pixels (every band read > 0) of "
        f"the (patch, date) pairs whose clear-sky fraction (the store's per-patch 'clear', from SCL) is at least "
        f"{100 * st.min_clear:.0f} %. The store keeps no per-pixel cloud mask, so a used date counts all its "
        f"pixels: up to {100 * (1 - st.min_clear):.0f} % of them may be cloud or shadow. Dates with no clear "
        "enough patch have no point. Values are not smoothed over time.",
    )
    for feature in st.features:
        f = st.features.index(feature)
        png = figures.temporal_profiles(feature, st.class_names, colors, st.dates, st.moments[:, :, f], st.min_clear)
        what = "NDVI = (B08 - B04) / (B08 + B04) on the stored DN" if feature == NDVI else \
            f"{feature} surface reflectance (DN / 10000)"
        page.figure(f"profile_{feature}.png", png,
                    f"{what}: mean \u00b1 2\u03c3 per class and date over pixels of patch-dates with clear-sky "
                    f"fraction \u2265 {100 * st.min_clear:.0f} % (numbers in profile_{feature}.csv).")
        page.files[f"profile_{feature}.csv"] = st.profile(feature).to_csv(index=False).encode("utf-8")

    page.section("Clear sky per date")
    page.figure("clear_sky.png",
                figures.clear_sky_share(st.dates, st.clear_mean, st.patches_with_date, st.patches_usable, st.min_clear),
                "Bars: mean clear-sky fraction of the patches having the date (the store's 'clear', from SCL). "
                f"Diamonds: share of those patches with a clear-sky fraction \u2265 {100 * st.min_clear:.0f} %, "
                "the ones the temporal profiles use.")
    page.table(pd.DataFrame({"date": dates.astype(str), "patches": st.patches_with_date,
                             "mean_clear": st.clear_mean, "patches_usable": st.patches_usable}),
               csv_name="clear_sky.csv")

    page.section("Patches")
    page.figure("patch_map.png", figures.patch_map(st.patches, st.patch_size, st.resolution, st.splits),
                "Patch footprints (x0, y0 of each patch, upper-left corner) coloured by split, in the tile's CRS. "
                "Splits are assigned by spatial blocks so neighbouring patches share a split.")

    page.section("Normalization statistics")
    norm = (st.attrs.get("normalization") or {}).get("train") or {}
    bands = list(st.attrs.get("bands") or [])
    if norm.get("mean") and norm.get("std") and len(norm["mean"]) == len(bands):
        page.figure("normalization.png", figures.normalization_stats(bands, norm["mean"], norm["std"], "train split"),
                    "Per-band mean \u00b1 std (DN) pooled over the clear, valid pixels of the train split, as "
                    "recorded by the build; training and inference normalize inputs with these.")
        page.table(pd.DataFrame({"band": bands, "mean": norm["mean"], "std": norm["std"]}), csv_name="normalization.csv",
                   floatfmt="{:.1f}")
    else:
        page.text("The store records no train-split normalization statistics (no train patch?).")
    return page


# ----------------------------------------------------------------------------- prediction


def prediction_page(pred: Prediction, top: int = 12, progress: Callable[[str], None] | None = None) -> Page:
    """The page of a prediction folder; ``top`` disagreeing parcels get thumbnails."""
    say = progress or (lambda m: None)
    s = pred.summary
    names = pred.class_names
    page = Page(f"Prediction report: {pred.folder.name}", subtitle=str(pred.folder.resolve()))
    page.facts({
        "area": f"{pred.shape[0]} x {pred.shape[1]} px at {pred.resolution:g} m, EPSG:{pred.epsg}",
        "dates": f"{s.get('n_dates', '?')}" + (f" ({len(s['dates_dropped'])} without clear sky dropped)"
                                               if s.get("dates_dropped") else ""),
        "weights": (s.get("settings") or {}).get("weights", "?"),
        "time": f"{s.get('seconds', '?')} s on {', '.join(s.get('device') or []) or '?'}",
        "parcels": "none given" if pred.parcels is None else f"{len(pred.parcels)}",
    })
    if pred.quicklook is not None:
        page.section("Quicklook")
        page.figure("quicklook.png", pred.quicklook.read_bytes(), "The quicklook written by crop2seg-predict.")

    page.section("Area per class")
    page.figure("class_area.png", figures.class_area(names, pred.colors, pred.area_ha),
                "Predicted area per class (pixel count x pixel area), colours from classes.tif's colour table.")
    total = float(pred.area_ha.sum()) or 1.0
    page.table(pd.DataFrame({"class_id": np.arange(len(names)), "class_name": list(names), "area_ha": pred.area_ha,
                             "share": pred.area_ha / total}), csv_name="class_area.csv")

    if pred.parcels is None:
        page.section("Parcels", "crop2seg-predict was run without --parcels: no declared classes to compare with.")
        return page
    table = pred.parcels
    agree = agreement_table(table, names)
    page.section("Agreement per declared class")
    page.figure("agreement.png", figures.agreement_by_class(agree, names, pred.colors),
                "Share of the parcels of each declared class whose predicted class (the area majority of their "
                "pixels) is the declared one. Parcels without pixels and Not-classified declarations are not "
                "compared. The table also gives the shares under Crop2Seg's homogenization and soft rules when "
                "the parcel table has them.")
    page.table(agree, csv_name="agreement.csv")

    page.section("Declared vs predicted")
    page.figure("parcel_confusion.png", figures.parcel_confusion(parcel_confusion_matrix(table, len(names)), names),
                "Compared parcels by declared class (rows) and predicted class (columns).")

    worst = top_disagreements(table, top)
    page.section(f"Top {len(worst)} disagreeing parcels",
                 "Parcels whose prediction disagrees with the declaration, the most confident first: these are "
                 "the ones an inspector checks first. Left: the class map around the parcel (its outline in cyan); "
                 "right: the confidence (max class probability).")
    if len(worst):
        thumbs = _thumbnails(pred, worst, say)
        page.thumbnails(thumbs)
        cols = [c for c in ("disagreement_rank", "parcel_id", "declared_name", "predicted_name", "predicted_share",
                            "mean_confidence", "n_pixels", "homogenized_name", "soft_name", "soft_probability")
                if c in worst.columns]
        shown = pd.DataFrame(worst[cols]).reset_index(drop=True)
        if "disagreement_rank" in shown:
            shown["disagreement_rank"] = shown["disagreement_rank"].astype("Int64")  # GPKG reads it as float
        page.table(shown, csv_name="top_disagreements.csv")
    else:
        page.text("No compared parcel disagrees with its declaration.")
    return page


def _rings(geom) -> list[np.ndarray]:
    polys = getattr(geom, "geoms", [geom])
    out = []
    for p in polys:
        if p.is_empty or not hasattr(p, "exterior"):
            continue
        out.append(np.asarray(p.exterior.coords))
        out.extend(np.asarray(r.coords) for r in p.interiors)
    return out


def _thumbnails(pred: Prediction, rows: pd.DataFrame, say: Callable[[str], None]) -> list[tuple[str, bytes, str]]:
    with rasterio.open(pred.classes_tif) as ds:
        transform, crs = ds.transform, ds.crs
    if rows.crs is not None and crs is not None and rows.crs != crs:
        rows = rows.to_crs(crs)
    out = []
    for rank, (_, r) in enumerate(rows.iterrows(), 1):
        win = parcel_window(r.geometry.bounds, transform, pred.shape)
        cls = read_window(pred.classes_tif, win)
        conf = read_window(pred.confidence_tif, win)
        left, top_ = transform * (win.col_off, win.row_off)
        right, bottom = transform * (win.col_off + win.width, win.row_off + win.height)
        shown_rank = int(r["disagreement_rank"]) if "disagreement_rank" in r and pd.notna(r["disagreement_rank"]) else rank
        head = f"#{shown_rank} parcel {r['parcel_id']}"
        what = (f"declared {r.get('declared_name')}, predicted {r.get('predicted_name')} "
                f"({_pct(r.get('predicted_share'))} of its pixels), confidence {r.get('mean_confidence', float('nan')):.2f}")
        title = f"{head}: {what}"
        png = figures.parcel_thumbnail(cls, conf, (left, right, bottom, top_), _rings(r.geometry), pred.class_names,
                                       pred.colors, f"{head}\n{what}")
        out.append((f"parcel_{shown_rank:03d}_{r['parcel_id']}.png", png, title))
    say(f"report: {len(out)} parcel thumbnails")
    return out
