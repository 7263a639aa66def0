"""One browser tab of the app: a Bokeh document with the map, the controls and the result views.

Slow work (reading items, the background, validation, loading results, NDVI series) runs on the
app's background threads; its results come back to the document through ``add_next_tick_callback``, the
only way Bokeh lets other threads touch a document. Errors a user can cause become a message in
the page (``#c2s-message``); anything else is logged with its traceback and shown as one line.
"""

from __future__ import annotations

import html
import logging
import math
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Crop2SegError
from .area import Area, Cell, cell_grid, check_area, default_cell_size, iso_date, open_area, parse_bbox
from .composite import true_colour
from .jobs import Job, PredictRequest
from .ndvi import parcel_ndvi
from .results import AGREEMENT_COLORS, PARCEL_BASE_COLUMNS, Result, agreement_label, disagreeing, load_result
from .server import AppState

log = logging.getLogger(__name__)

__all__ = ["make_document", "Page"]

#: Row order of the parcel details panel: predict()'s columns first, then any the table adds.
_DETAIL_ORDER = ("parcel_id", "crop_code", "declared_name", "predicted_name", "predicted_share", "mean_confidence",
                 "n_pixels", "agreement")


def make_document(state: AppState, doc: Any) -> None:
    """Bokeh's document factory: one :class:`Page` per browser tab."""
    Page(state, doc)


def _rgba_image(rgba: np.ndarray) -> np.ndarray:
    """(y, x, 4) uint8 with rows from the north -> Bokeh's uint32 image (rows from the south)."""
    flipped = np.ascontiguousarray(rgba[::-1])
    return flipped.view(np.uint32).reshape(flipped.shape[:2])


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.3f}"
    return str(v)


def _error_text(e: BaseException) -> str:
    if isinstance(e, Crop2SegError):
        return str(e)
    if isinstance(e, (ValueError, FileNotFoundError, PermissionError)):
        return str(e)
    return f"unexpected error ({type(e).__name__}: {e}); the app's log has the details"


class Page:
    """The widgets and callbacks of one tab (all state here is this tab's own)."""

    def __init__(self, state: AppState, doc: Any):
        self.state = state
        self.doc = doc
        cfg = state.config
        self.area: Area | None = None
        self.cells: list[Cell] = []
        self.cell: Cell | None = None
        self.bbox: tuple[float, float, float, float] | None = None
        self.job: Job | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.result: Result | None = None
        self._parcel_tree: Any = None
        self._parcel_key: str | None = None
        self._build(cfg)
        doc.on_session_destroyed(self._closed)
        self.load_items()

    # ------------------------------------------------------------------ layout

    def _build(self, cfg: Any) -> None:
        from bokeh.layouts import column, row
        from bokeh.models import (
            BoxSelectTool, Button, CheckboxGroup, ColumnDataSource, DataTable, DatePicker, DatetimeTickFormatter, Div,
            HoverTool,
            NumberFormatter, PanTool, RadioButtonGroup, Range1d, ResetTool, Slider, Spinner, TableColumn,
            TabPanel, Tabs, TextInput, WheelZoomTool,
        )
        from bokeh.plotting import figure

        self.title = Div(text="<h2 style='margin:4px 0'>crop2seg: crop-type map</h2>")
        self.items_in = TextInput(title="Items (STAC ItemCollection JSON, path or URL)", value=cfg.items or "",
                                  css_classes=["c2s-items"], width=320)
        self.load_btn = Button(label="Load items", css_classes=["c2s-load"], width=320)
        self.parcels_in = TextInput(title="Parcels (LPIS file, optional)", value=cfg.parcels or "",
                                    css_classes=["c2s-parcels"], width=320)
        self.weights_in = TextInput(title="Weights folder (weights.pt + model.json)", value=cfg.weights,
                                    css_classes=["c2s-weights"], width=320)
        self.cell_size = Spinner(title="Cell size (px of 10 m)", value=cfg.cell_size or 128, low=16, step=16,
                                 width=150, css_classes=["c2s-cellsize"])
        self.bbox_in = TextInput(title="Area: minx,miny,maxx,maxy (map CRS)", value="", css_classes=["c2s-bbox"],
                                 width=320)
        self.area_div = Div(text=self._html("c2s-area", "no area selected: pick a cell or draw a box"), width=320)
        self.start_in = DatePicker(title="Season start", width=150, css_classes=["c2s-start"])
        self.end_in = DatePicker(title="Season end", width=150, css_classes=["c2s-end"])
        self.dates_div = Div(text="", width=320)
        self.overlap_in = Spinner(title="Overlap (px)", value=cfg.overlap, low=0, step=8, width=150,
                                  css_classes=["c2s-overlap"])
        self.batch_in = Spinner(title="Batch size", value=cfg.batch_size, low=1, step=1, width=150,
                                css_classes=["c2s-batch"])
        self.predict_btn = Button(label="Predict", button_type="success", css_classes=["c2s-predict"], width=320)
        self.status = Div(text=self._html("c2s-status", "", state="idle"), width=320)
        self.message = Div(text=self._html("c2s-message", ""), width=320)

        fw = self.state.config.map_width
        self.bg_src = ColumnDataSource(dict(image=[], x=[], y=[], dw=[], dh=[]))
        self.cls_src = ColumnDataSource(dict(image=[], x=[], y=[], dw=[], dh=[]))
        self.conf_src = ColumnDataSource(dict(image=[], x=[], y=[], dw=[], dh=[]))
        self.cells_src = ColumnDataSource(dict(left=[], right=[], top=[], bottom=[], name=[]))
        self.sel_src = ColumnDataSource(dict(left=[], right=[], top=[], bottom=[]))
        self.parcel_src = ColumnDataSource(dict(xs=[], ys=[], color=[], parcel_id=[], declared=[], predicted=[],
                                                confidence=[]))
        self.pick_src = ColumnDataSource(dict(xs=[], ys=[]))
        self.box_select = BoxSelectTool(continuous=False, persistent=False)
        self.map = figure(frame_width=fw, frame_height=fw, x_range=Range1d(0, 1), y_range=Range1d(0, 1),
                          tools=[PanTool(), WheelZoomTool(), self.box_select, ResetTool()],
                          toolbar_location="right", min_border=0, name="map", css_classes=["c2s-map"],
                          output_backend="canvas")
        self.map.toolbar.active_drag = None
        self.map.axis.visible = False
        self.map.grid.visible = False
        self.map.outline_line_color = None
        self.map.background_fill_color = "#202020"
        self.map.image_rgba(source=self.bg_src, image="image", x="x", y="y", dw="dw", dh="dh", name="background")
        self.opacity = Slider(title="Class map opacity", start=0, end=1, step=0.05, value=0.7, width=300,
                              css_classes=["c2s-opacity"])
        self.cls_r = self.map.image_rgba(source=self.cls_src, image="image", x="x", y="y", dw="dw", dh="dh",
                                         global_alpha=self.opacity.value, name="classes")
        self.opacity.js_link("value", self.cls_r.glyph, "global_alpha")
        self.conf_r = self.map.image_rgba(source=self.conf_src, image="image", x="x", y="y", dw="dw", dh="dh",
                                          visible=False, name="confidence")
        self.cells_r = self.map.quad(source=self.cells_src, left="left", right="right", top="top", bottom="bottom",
                                     fill_alpha=0, line_color="white", line_alpha=0.6, line_width=1,
                                     selection_fill_alpha=0, nonselection_fill_alpha=0, nonselection_line_alpha=0.6,
                                     name="cells")
        self.box_select.renderers = [self.cells_r]
        self.parcels_r = self.map.multi_polygons(xs="xs", ys="ys", source=self.parcel_src, fill_color="color",
                                                 fill_alpha=0.3, line_color="color", line_width=1.5, name="parcels")
        self.pick_r = self.map.multi_polygons(xs="xs", ys="ys", source=self.pick_src, fill_alpha=0,
                                              line_color="#00e5ff", line_width=3, name="picked")
        self.sel_r = self.map.quad(source=self.sel_src, left="left", right="right", top="top", bottom="bottom",
                                   fill_alpha=0, line_color="yellow", line_width=3, name="selection")
        self.map.add_tools(HoverTool(renderers=[self.parcels_r], tooltips=[
            ("parcel", "@parcel_id"), ("declared", "@declared"), ("predicted", "@predicted"),
            ("confidence", "@confidence{0.00}")]))
        self.map.on_event("tap", self._tap)
        self.map.on_event("selectiongeometry", self._box)

        self.layers = CheckboxGroup(labels=["class map", "confidence", "parcels", "cells and area"],
                                    active=[0, 2, 3], css_classes=["c2s-layers"])
        self.layers.on_change("active", lambda attr, old, new: self._show_layers())
        self.click_mode = RadioButtonGroup(labels=["click picks a cell", "click inspects a parcel"], active=0,
                                           css_classes=["c2s-clickmode"])
        self.legend = Div(text=self._html("c2s-legend", "no prediction shown yet"), width=300)
        self.parcel_div = Div(text=self._html("c2s-parcel", "click a parcel (after a prediction) to see it here"),
                              width=300)
        self.ndvi_src = ColumnDataSource(dict(date=[], ndvi=[], clear=[]))
        self.ndvi_fig = figure(width=300, height=200, x_axis_type="datetime", y_range=Range1d(-0.2, 1.0),
                               title="NDVI of the parcel (clear dates)", tools="", toolbar_location=None,
                               name="ndvi", css_classes=["c2s-ndvi"])
        self.ndvi_fig.xaxis.formatter = DatetimeTickFormatter(months="%b %Y", days="%d %b")
        self.ndvi_fig.xaxis.ticker.desired_num_ticks = 4
        self.ndvi_fig.line("date", "ndvi", source=self.ndvi_src, line_width=2, color="#1a9850")
        self.ndvi_fig.scatter("date", "ndvi", source=self.ndvi_src, size=6, color="#1a9850")

        self.table_src = ColumnDataSource(dict(parcel_id=[], declared=[], predicted=[], share=[], confidence=[]))
        self.table = DataTable(source=self.table_src, width=900, height=420, index_position=None,
                               css_classes=["c2s-table"], columns=self._table_columns([]))
        self.table_src.selected.on_change("indices", self._table_pick)
        self.table_div = Div(text=self._html("c2s-table-info", "no prediction yet"), width=900)
        self.downloads = Div(text=self._html("c2s-downloads", "no prediction yet"), width=900)
        self.cache_src = ColumnDataSource(dict(kind=[], key=[], size=[], files=[], status=[], created=[],
                                               description=[]))
        self.cache_table = DataTable(source=self.cache_src, width=900, height=300, index_position=None,
                                     css_classes=["c2s-cache-table"], columns=[
                                         TableColumn(field="kind", title="kind", width=90),
                                         TableColumn(field="key", title="key", width=190),
                                         TableColumn(field="size", title="size (MB)", width=80,
                                                     formatter=NumberFormatter(format="0.00")),
                                         TableColumn(field="files", title="files", width=50),
                                         TableColumn(field="status", title="status", width=70),
                                         TableColumn(field="created", title="created", width=140),
                                         TableColumn(field="description", title="what", width=380)])
        self.cache_refresh = Button(label="Refresh", width=120, css_classes=["c2s-cache-refresh"])
        self.cache_delete = Button(label="Delete selected", button_type="danger", width=160,
                                   css_classes=["c2s-cache-delete"])
        self.cache_div = Div(text=self._html("c2s-cache-info", ""), width=900)

        self.load_btn.on_click(lambda: self.load_items())
        self.cell_size.on_change("value", lambda attr, old, new: self._draw_cells())
        self.bbox_in.on_change("value", self._bbox_typed)
        self.start_in.on_change("value", lambda attr, old, new: self._dates_changed())
        self.end_in.on_change("value", lambda attr, old, new: self._dates_changed())
        self.weights_in.on_change("value", lambda attr, old, new: self._check_weights())
        self.predict_btn.on_click(self.predict)
        self.cache_refresh.on_click(self.refresh_cache)
        self.cache_delete.on_click(self.delete_selected)

        controls = column(self.title, self.items_in, self.load_btn, self.parcels_in, self.weights_in,
                          row(self.cell_size), self.bbox_in, self.area_div, row(self.start_in, self.end_in),
                          self.dates_div, row(self.overlap_in, self.batch_in), self.predict_btn, self.status,
                          self.message, width=340)
        side = column(self.legend, self.opacity, self.layers, self.parcel_div, self.ndvi_fig, width=320)
        tabs = Tabs(tabs=[
            TabPanel(title="Map", child=column(self.click_mode, row(self.map, side))),
            TabPanel(title="Disagreeing parcels", child=column(self.table_div, self.table)),
            TabPanel(title="Downloads", child=self.downloads),
            TabPanel(title="Cache", child=column(row(self.cache_refresh, self.cache_delete), self.cache_div,
                                                 self.cache_table)),
        ], css_classes=["c2s-tabs"])
        self.tabs = tabs
        self.doc.add_root(row(controls, tabs))
        self.doc.title = "crop2seg app"
        self.refresh_cache()

    @staticmethod
    def _html(dom_id: str, body: str, **data: str) -> str:
        attrs = "".join(f' data-{k}="{html.escape(str(v))}"' for k, v in data.items())
        return f'<div id="{dom_id}"{attrs}>{body}</div>'

    def _table_columns(self, extra: list[str]) -> list:
        from bokeh.models import NumberFormatter, TableColumn

        cols = [TableColumn(field="parcel_id", title="parcel", width=90),
                TableColumn(field="declared", title="declared", width=160),
                TableColumn(field="predicted", title="predicted", width=160),
                TableColumn(field="share", title="share", width=70, formatter=NumberFormatter(format="0.00")),
                TableColumn(field="confidence", title="confidence", width=80, formatter=NumberFormatter(format="0.000"))]
        cols += [TableColumn(field=c, title=c, width=110) for c in extra]
        return cols

    # ------------------------------------------------------------------ threads -> document

    def _later(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the document's thread (safe from any thread)."""
        try:
            self.doc.add_next_tick_callback(lambda: fn(*args))
        except Exception:  # noqa: BLE001 - the tab was closed
            log.debug("document gone", exc_info=True)

    def _background(self, work: Callable[[], Any], then: Callable[[Any], None], what: str) -> None:
        """``work()`` on a background thread, then ``then(result)`` on the document."""

        def run() -> None:
            try:
                out = work()
            except Exception as e:  # noqa: BLE001 - becomes a message in the page
                if not isinstance(e, (Crop2SegError, ValueError, FileNotFoundError, PermissionError)):
                    log.error("%s failed:\n%s", what, traceback.format_exc())
                self._later(self.show_message, f"{what}: {_error_text(e)}")
                return
            self._later(then, out)

        self.state.submit(run)

    def show_message(self, text: str, kind: str = "error") -> None:
        color = {"error": "#b00020", "info": "#1b5e20"}.get(kind, "#333")
        self.message.text = self._html("c2s-message", f"<span style='color:{color}'>{html.escape(text)}</span>",
                                       kind=kind)

    def clear_message(self) -> None:
        self.message.text = self._html("c2s-message", "")

    # ------------------------------------------------------------------ items, area, background

    def load_items(self) -> None:
        source = (self.items_in.value or "").strip()
        self.clear_message()
        self.area_div.text = self._html("c2s-area", "reading the items ...")

        def work() -> Area:
            return open_area(source)

        self._background(work, self._area_loaded, "cannot use the items")

    def _area_loaded(self, area: Area) -> None:
        self.area = area
        x0, y0, x1, y1 = area.bounds
        fw = self.state.config.map_width
        w, h = x1 - x0, y1 - y0
        if h > w:
            self.map.frame_height, self.map.frame_width = fw, max(64, round(fw * w / h))
        else:
            self.map.frame_width, self.map.frame_height = fw, max(64, round(fw * h / w))
        self.map.x_range.update(start=x0, end=x1, reset_start=x0, reset_end=x1)
        self.map.y_range.update(start=y0, end=y1, reset_start=y0, reset_end=y1)
        self.cell_size.value = self.state.config.cell_size or default_cell_size(area)
        self.bbox_in.title = f"Area: minx,miny,maxx,maxy (EPSG:{area.epsg})"
        first, last = area.dates[0], area.dates[-1]
        for w_ in (self.start_in, self.end_in):
            w_.min_date, w_.max_date = first, last
        self.start_in.value, self.end_in.value = first, last
        self._set_area(None, None)
        self._clear_result()
        self._draw_cells()
        self._dates_changed()
        self.bg_src.data = dict(image=[], x=[], y=[], dw=[], dh=[])
        self.status.text = self._html("c2s-status", "computing the true-colour background ...", state="background")
        state = self.state

        def work() -> Any:
            return true_colour(area, state.cache, state.client, state.config.max_side)

        self._background(work, self._background_ready, "cannot compute the true-colour background")

    def _background_ready(self, comp: Any) -> None:
        if self.area is None or comp.grid.epsg != self.area.epsg:
            return
        g = comp.grid
        x0, y0, x1, y1 = g.bounds
        self.bg_src.data = dict(image=[_rgba_image(comp.rgba)], x=[x0], y=[y0], dw=[x1 - x0], dh=[y1 - y0])
        if self.job is None:
            self.status.text = self._html(
                "c2s-status", f"background: median of clear dates ({comp.n_dates} dates, {g.resolution:g} m)",
                state="ready")
        self.refresh_cache()

    def _draw_cells(self) -> None:
        if self.area is None:
            return
        try:
            self.cells = cell_grid(self.area, int(self.cell_size.value or 16))
        except ValueError as e:
            self.show_message(str(e))
            return
        self.cells_src.data = dict(left=[c.bounds[0] for c in self.cells], right=[c.bounds[2] for c in self.cells],
                                   top=[c.bounds[3] for c in self.cells], bottom=[c.bounds[1] for c in self.cells],
                                   name=[c.name for c in self.cells])

    def _set_area(self, bbox: tuple[float, float, float, float] | None, cell: Cell | None) -> None:
        self.bbox, self.cell = bbox, cell
        if bbox is None:
            self.sel_src.data = dict(left=[], right=[], top=[], bottom=[])
            self.area_div.text = self._html("c2s-area", "no area selected: pick a cell or draw a box")
            return
        self.sel_src.data = dict(left=[bbox[0]], right=[bbox[2]], top=[bbox[3]], bottom=[bbox[1]])
        res = self.area.grid.resolution if self.area else 10.0
        px = f"{round((bbox[3] - bbox[1]) / res)} x {round((bbox[2] - bbox[0]) / res)} px"
        what = f"cell {cell.name}" if cell else "box"
        self.area_div.text = self._html("c2s-area", f"{html.escape(what)}: {px}", cell=cell.name if cell else "")
        text = ",".join(f"{v:.0f}" for v in bbox)
        if self.bbox_in.value != text:
            self._bbox_from_code = True
            self.bbox_in.value = text

    def _bbox_typed(self, attr: str, old: str, new: str) -> None:
        if getattr(self, "_bbox_from_code", False):
            self._bbox_from_code = False
            return
        if not new.strip():
            self._set_area(None, None)
            return
        try:
            bbox = parse_bbox(new)
        except ValueError as e:
            self.show_message(str(e))
            return
        self.clear_message()
        self._set_area(bbox, None)

    def _tap(self, event: Any) -> None:
        x, y = event.x, event.y
        if x is None or y is None:
            return
        if self.click_mode.active == 1:
            self._inspect_at(x, y)
            return
        for c in self.cells:
            b = c.bounds
            if b[0] <= x < b[2] and b[1] < y <= b[3]:
                self.clear_message()
                self._set_area(b, c)
                return

    def _box(self, event: Any) -> None:
        if not getattr(event, "final", True):
            return
        g = event.geometry
        if g.get("type") != "rect":
            return
        bbox = (min(g["x0"], g["x1"]), min(g["y0"], g["y1"]), max(g["x0"], g["x1"]), max(g["y0"], g["y1"]))
        self.cells_src.selected.indices = []
        if bbox[2] - bbox[0] <= 0 or bbox[3] - bbox[1] <= 0:
            return
        self.clear_message()
        self._set_area(bbox, None)

    def _dates_changed(self) -> None:
        if self.area is None:
            return
        start, end = iso_date(self.start_in.value), iso_date(self.end_in.value)
        n = len(self.area.dates_between(start, end))
        self.dates_div.text = self._html(
            "c2s-dates", f"{n} of {len(self.area.dates)} dates in the season window", n=str(n))

    def _check_weights(self) -> None:
        path = (self.weights_in.value or "").strip()

        def work() -> str:
            from ..predict import read_model_spec

            spec = read_model_spec(path)
            return f"model: {len(spec.bands)} bands, {spec.n_classes} classes, {spec.patch_size} px windows"

        self._background(work, lambda text: self.show_message(text, "info"), "these weights cannot be used")

    # ------------------------------------------------------------------ predict

    def _controls(self) -> dict:
        """The controls' values, read on the document's thread."""
        return dict(area=self.area, items=(self.items_in.value or "").strip(), bbox=self.bbox, cell=self.cell,
                    weights=(self.weights_in.value or "").strip(), start=iso_date(self.start_in.value),
                    end=iso_date(self.end_in.value), parcels=(self.parcels_in.value or "").strip() or None,
                    overlap=self.overlap_in.value, batch=self.batch_in.value)

    def _request(self, c: dict) -> PredictRequest:
        """The request the controls describe, validated (raises Crop2SegError/ValueError with the fix)."""
        from ..items import normalize_items
        from ..predict import read_model_spec

        area = c["area"]
        if area is None or not c["items"]:
            raise Crop2SegError("no items loaded: enter an items file and press 'Load items'")
        if c["items"] != area.source:
            raise Crop2SegError("the items field was changed: press 'Load items' first")
        if c["bbox"] is None:
            raise Crop2SegError("no area selected: pick a cell on the map, draw a box or type a bbox")
        if not c["weights"]:
            raise Crop2SegError("no weights folder given")
        spec = read_model_spec(c["weights"])
        normalize_items(area.source, bands=spec.bands)  # the items have the model's bands
        start, end = c["start"], c["end"]
        if start and end and start > end:
            raise Crop2SegError(f"the season starts ({start}) after it ends ({end})")
        check_area(area, c["bbox"], start, end)
        parcels = c["parcels"]
        if parcels is not None and not Path(parcels).exists():
            raise Crop2SegError(f"parcels file {parcels} does not exist; fix the path or leave it empty")
        cfg = self.state.config
        mapping = cfg.mapping if parcels is not None and parcels == (cfg.parcels or "") else None
        overlap, batch = int(c["overlap"] or 0), int(c["batch"] or 1)
        if not 0 <= overlap < spec.patch_size:
            raise Crop2SegError(f"overlap must be between 0 and {spec.patch_size - 1} px (the model's windows are "
                                f"{spec.patch_size} px)")
        if batch < 1:
            raise Crop2SegError("batch size must be at least 1")
        return PredictRequest(
            items=area.source, items_digest=area.digest, weights=spec.weights_dir, bbox=tuple(c["bbox"]),
            epsg=area.epsg, start=start, end=end, parcels=parcels, mapping=mapping, id_column=cfg.id_column,
            crop_column=cfg.crop_column, layer=cfg.layer, overlap=overlap, batch_size=batch, chunksize=cfg.chunksize,
            device=cfg.device, label=c["cell"].name if c["cell"] else "box",
        )

    def predict(self) -> None:
        self.clear_message()
        self.predict_btn.disabled = True
        self.status.text = self._html("c2s-status", "checking the request ...", state="checking")

        def failed_check(text: str) -> None:
            self.predict_btn.disabled = False
            self.status.text = self._html("c2s-status", "", state="idle")
            self.show_message(text)

        controls = self._controls()

        def run() -> None:
            try:
                job = self.state.runner.submit(self._request(controls))
            except Exception as e:  # noqa: BLE001 - a message in the page
                if not isinstance(e, (Crop2SegError, ValueError, FileNotFoundError, PermissionError)):
                    log.error("predict request failed:\n%s", traceback.format_exc())
                self._later(failed_check, f"cannot predict: {_error_text(e)}")
                return
            self._later(self._follow, job)

        self.state.submit(run)

    def _follow(self, job: Job) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.job = job
        self._unsubscribe = job.subscribe(lambda j: self._later(self._progress, j))

    def _progress(self, job: Job) -> None:
        if job is not self.job:
            return
        dash = self.state.dashboard_link
        link = (f" <a href='{html.escape(dash)}' target='_blank' rel='noopener' id='c2s-dashboard'>Dask dashboard</a>"
                if dash else "")
        last = html.escape(job.lines[-1]) if job.lines else ""
        if job.state == "failed":
            self.predict_btn.disabled = False
            self.status.text = self._html("c2s-status", f"prediction failed.{link}", state="failed", key=job.key)
            self.show_message(f"prediction failed: {job.error}")
            return
        if job.state == "done":
            self.predict_btn.disabled = False
            origin = "from the cache" if job.from_cache else "done"
            self.status.text = self._html(
                "c2s-status", f"<progress max='100' value='100'></progress> {origin}: {html.escape(job.request.describe())}"
                f"{link}", state="done", key=job.key)
            self._load_result(job)
            return
        self.status.text = self._html(
            "c2s-status", f"<progress max='100' value='{job.percent:.0f}'></progress> {job.percent:.0f}% {last}{link}",
            state=job.state, key=job.key)

    # ------------------------------------------------------------------ results

    def _load_result(self, job: Job) -> None:
        folder, max_side = job.folder, self.state.config.max_side

        def work() -> Result:
            res = load_result(folder, max_side)
            tree = None
            if res.parcels is not None and len(res.parcels):
                import shapely

                tree = shapely.STRtree(res.parcels.geometry.values)
            return res, tree

        def then(out: Any) -> None:
            res, tree = out
            if job is not self.job:
                return
            self._show_result(res, tree, job.key)

        self._background(work, then, "cannot show the result")

    def _show_result(self, res: Result, tree: Any, key: str) -> None:
        self.result, self._parcel_tree, self._parcel_key = res, tree, key
        x0, y0, x1, y1 = res.bounds
        geo = dict(x=[x0], y=[y0], dw=[x1 - x0], dh=[y1 - y0])
        self.cls_src.data = dict(image=[_rgba_image(res.class_image)], **geo)
        self.conf_src.data = dict(image=[_rgba_image(res.confidence_image)], **geo)
        present = [e for e in res.legend if e.area_ha > 0]
        rows = "".join(
            f"<div class='c2s-legend-item' data-class='{e.class_id}' style='display:flex;align-items:center;margin:2px 0'>"
            f"<span class='c2s-swatch' data-rgb='{e.rgb[0]},{e.rgb[1]},{e.rgb[2]}' style='display:inline-block;"
            f"width:22px;height:14px;background:{e.hex};border:1px solid #555;margin-right:6px'></span>"
            f"{html.escape(e.name)} ({e.area_ha:.1f} ha)"
            + ("&nbsp;<i>(not drawn)</i>" if e.class_id == 0 else "") + "</div>"
            for e in present)
        self.legend.text = self._html("c2s-legend", f"<b>Predicted classes</b>{rows}", n=str(len(present)))
        self._show_parcels(res)
        self._show_table(res)
        self._show_downloads(res, key)
        self.click_mode.active = 1 if res.parcels is not None and len(res.parcels) else 0
        self._show_layers()
        self.refresh_cache()

    def _clear_result(self) -> None:
        """Forget the shown prediction (another area was loaded)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.job, self.result, self._parcel_tree, self._parcel_key = None, None, None, None
        empty = dict(image=[], x=[], y=[], dw=[], dh=[])
        self.cls_src.data, self.conf_src.data = dict(empty), dict(empty)
        self.parcel_src.data = {k: [] for k in self.parcel_src.data}
        self.pick_src.data = dict(xs=[], ys=[])
        self.ndvi_src.data = dict(date=[], ndvi=[], clear=[])
        self.table_src.data = {k: [] for k in self.table_src.data}
        self.legend.text = self._html("c2s-legend", "no prediction shown yet")
        self.parcel_div.text = self._html("c2s-parcel", "click a parcel (after a prediction) to see it here")
        self.table_div.text = self._html("c2s-table-info", "no prediction yet")
        self.downloads.text = self._html("c2s-downloads", "no prediction yet")
        self.click_mode.active = 0

    def _show_parcels(self, res: Result) -> None:
        gdf = res.parcels
        if gdf is None or not len(gdf):
            self.parcel_src.data = dict(xs=[], ys=[], color=[], parcel_id=[], declared=[], predicted=[], confidence=[])
            self.parcel_div.text = self._html("c2s-parcel", "no parcels with this prediction (give a parcels file)")
            return
        xs, ys = [], []
        for geom in gdf.geometry.values:
            parts = list(getattr(geom, "geoms", [geom]))
            xs.append([[list(p.exterior.xy[0])] + [list(r.xy[0]) for r in p.interiors] for p in parts])
            ys.append([[list(p.exterior.xy[1])] + [list(r.xy[1]) for r in p.interiors] for p in parts])
        self.parcel_src.data = dict(
            xs=xs, ys=ys, color=[AGREEMENT_COLORS[agreement_label(v)] for v in gdf["agreement"]],
            parcel_id=[str(v) for v in gdf["parcel_id"]], declared=[str(v) for v in gdf["declared_name"]],
            predicted=[str(v) for v in gdf["predicted_name"]],
            confidence=[float(v) if v == v else float("nan") for v in gdf["mean_confidence"]],
        )
        n = {k: 0 for k in AGREEMENT_COLORS}
        for v in gdf["agreement"]:
            n[agreement_label(v)] += 1
        key = " ".join(f"<span style='color:{c}'>&#9632;</span> {k} {n[k]}" for k, c in AGREEMENT_COLORS.items())
        self.parcel_div.text = self._html("c2s-parcel", f"parcels: {key}<br>click a parcel to see it here")

    def _show_table(self, res: Result) -> None:
        table = disagreeing(res.parcels)
        if table is None:
            self.table_div.text = self._html("c2s-table-info", "no parcels with this prediction", n="0")
            self.table_src.data = {k: [] for k in self.table_src.data}
            return
        extra = [c for c in table.columns if c not in PARCEL_BASE_COLUMNS]
        data = dict(parcel_id=[str(v) for v in table["parcel_id"]], declared=list(table["declared_name"].astype(str)),
                    predicted=list(table["predicted_name"].astype(str)),
                    share=[float(v) for v in table["predicted_share"]],
                    confidence=[float(v) for v in table["mean_confidence"]])
        for c in extra:
            data[c] = [_fmt(v) for v in table[c]]
        self.table_src.selected.indices = []
        self.table_src.data = data
        self.table.columns = self._table_columns(extra)
        order = "rank" if any("rank" in c.lower() for c in table.columns) else "confidence, most confident first"
        self.table_div.text = self._html(
            "c2s-table-info", f"{len(table)} of {len(res.parcels)} parcels disagree with their declaration "
            f"(sorted by {order}); select a row to inspect the parcel", n=str(len(table)))

    def _show_downloads(self, res: Result, key: str) -> None:
        rows = []
        for p in res.files:
            size = p.stat().st_size / 1e6
            url = f"/download/predictions/{key}/{p.name}"
            rows.append(f"<li><a class='c2s-download' href='{url}' download data-name='{html.escape(p.name)}'>"
                        f"{html.escape(p.name)}</a> ({size:.2f} MB)</li>")
        extra = [p.name for p in res.folder.iterdir() if p.is_dir()]
        note = (f"<p>Folders not offered for download (copy them from {html.escape(str(res.folder))}): "
                f"{html.escape(', '.join(extra))}</p>" if extra else "")
        self.downloads.text = self._html(
            "c2s-downloads", f"<p>Outputs of this prediction (folder {html.escape(str(res.folder))}):</p>"
            f"<ul>{''.join(rows)}</ul>{note}")

    def _show_layers(self) -> None:
        on = set(self.layers.active)
        self.cls_r.visible = 0 in on
        self.conf_r.visible = 1 in on
        self.parcels_r.visible = 2 in on
        self.pick_r.visible = 2 in on
        self.cells_r.visible = 3 in on
        self.sel_r.visible = 3 in on

    # ------------------------------------------------------------------ parcels

    def _inspect_at(self, x: float, y: float) -> None:
        if self._parcel_tree is None or self.result is None:
            self.show_message("no parcels to inspect: run a prediction with a parcels file", "info")
            return
        import shapely

        hits = self._parcel_tree.query(shapely.Point(x, y), predicate="intersects")
        if len(hits) == 0:
            return
        # the smallest parcel under the click (a parcel inside another one stays clickable)
        geoms = self.result.parcels.geometry.values
        self._inspect(int(min(hits, key=lambda i: geoms[i].area)))

    def _table_pick(self, attr: str, old: list, new: list) -> None:
        if not new or self.result is None:
            return
        pid = self.table_src.data["parcel_id"][new[0]]
        match = [i for i, v in enumerate(self.result.parcels["parcel_id"]) if str(v) == pid]
        if match:
            self._inspect(match[0])

    def _inspect(self, i: int) -> None:
        res = self.result
        row = res.parcels.iloc[i]
        geom = row.geometry
        parts = list(getattr(geom, "geoms", [geom]))
        self.pick_src.data = dict(xs=[[[list(p.exterior.xy[0])] for p in parts]],
                                  ys=[[[list(p.exterior.xy[1])] for p in parts]])
        cols = [c for c in _DETAIL_ORDER if c in row.index]
        cols += [c for c in row.index if c not in PARCEL_BASE_COLUMNS and c != "geometry"]
        label = agreement_label(row.get("agreement"))
        rows = "".join(f"<tr><td>{html.escape(c)}</td><td data-field='{html.escape(c)}'>"
                       f"{html.escape(label if c == 'agreement' else _fmt(row[c]))}</td></tr>" for c in cols)
        self.parcel_div.text = self._html(
            "c2s-parcel", f"<b>Parcel {html.escape(str(row['parcel_id']))}</b>"
            f"<table style='font-size:90%'>{rows}</table><i id='c2s-ndvi-state'>reading its NDVI series ...</i>",
            parcel=str(row["parcel_id"]), agreement=label)
        self.ndvi_src.data = dict(date=[], ndvi=[], clear=[])
        area, cache, client = self.area, self.state.cache, self.state.client
        req = self.job.request if self.job else None
        pid = row["parcel_id"]
        pid = pid.item() if hasattr(pid, "item") else pid

        def work() -> dict:
            return parcel_ndvi(area, cache, geom, pid, req.start if req else None, req.end if req else None, client)

        def then(doc: dict) -> None:
            if self.result is not res:
                return
            import pandas as pd

            keep = [k for k, v in enumerate(doc["ndvi"]) if v is not None]
            self.ndvi_src.data = dict(date=list(pd.to_datetime([doc["dates"][k] for k in keep])),
                                      ndvi=[doc["ndvi"][k] for k in keep],
                                      clear=[doc["clear_pixels"][k] for k in keep])
            state_html = (f"<i id='c2s-ndvi-state' data-dates='{len(keep)}' data-pixels='{doc['n_pixels']}'>NDVI on "
                          f"{len(keep)} of {len(doc['dates'])} dates with clear pixels ({doc['n_pixels']} px"
                          f"{', cached' if doc.get('cached') else ''})</i>")
            text = self.parcel_div.text
            start = text.find("<i id='c2s-ndvi-state'")
            if start >= 0:
                self.parcel_div.text = text[:start] + state_html + text[text.find("</i>", start) + 4:]

        self._background(work, then, "cannot read the parcel's NDVI series")

    # ------------------------------------------------------------------ cache view

    def refresh_cache(self) -> None:
        entries = self.state.cache.entries()
        self.cache_src.selected.indices = []
        self.cache_src.data = dict(kind=[e.kind for e in entries], key=[e.key for e in entries],
                                   size=[e.size_bytes / 1e6 for e in entries], files=[e.n_files for e in entries],
                                   status=[e.status for e in entries], created=[e.created for e in entries],
                                   description=[e.description for e in entries])
        total = sum(e.size_bytes for e in entries) / 1e6
        self.cache_div.text = self._html(
            "c2s-cache-info", f"{len(entries)} entries, {total:.2f} MB in {html.escape(str(self.state.cache.root))}",
            n=str(len(entries)))

    def delete_selected(self) -> None:
        idx = list(self.cache_src.selected.indices)
        if not idx:
            self.cache_div.text = self._html("c2s-cache-info", "select entries in the table first")
            return
        freed, errors = 0, []
        for i in idx:
            kind, key = self.cache_src.data["kind"][i], self.cache_src.data["key"][i]
            try:
                freed += self.state.cache.delete(kind, key)
            except Crop2SegError as e:
                errors.append(str(e))
            if self.job is not None and self.job.key == key:
                self.job = None
        self.refresh_cache()
        msg = f"deleted {len(idx) - len(errors)} entries ({freed / 1e6:.2f} MB)"
        if errors:
            msg += "; " + "; ".join(errors)
        self.cache_div.text = self._html("c2s-cache-info", html.escape(msg), deleted=str(len(idx) - len(errors)))

    def _closed(self, session_context: Any) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
