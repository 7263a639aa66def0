"""``crop2seg-app`` in a real headless browser (Debian chromium driven by Playwright).

The app runs as the real command (``python -m crop2seg_pipeline app``, a subprocess with its own
LocalCluster) on a 256 px, 8-date demo scene; the tests wait on what the page shows (ids and
``data-*`` attributes of the app's own elements), never on sleeps. Every request the browser
makes is recorded (and any request off loopback is aborted and fails the test).
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
import torch
from PIL import Image

from crop2seg_pipeline.app.results import confidence_rgba
from crop2seg_pipeline.models import build_model, save_weights
from crop2seg_pipeline.nomenclature import BANDS, CLASS_COLORS, CLASS_NAMES
from crop2seg_pipeline.outputs import validate_cog

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
TIMEOUT_MS = 240_000  # a prediction on a loaded 2-core machine


# ----------------------------------------------------------------------------- the app process


class RunningApp:
    def __init__(self, cmd: list[str], cwd: Path):
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self._wait_for("crop2seg app: ").split("crop2seg app: ", 1)[1].split()[0]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self._q.put(line)
        self._q.put(None)

    def _wait_for(self, marker: str) -> str:
        while True:
            line = self._q.get(timeout=300)
            if line is None:
                raise RuntimeError("the app exited before it was ready:\n" + "".join(self.lines))
            if marker in line:
                return line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # as Ctrl-C: the app closes its cluster
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        try:  # whatever is left of its process group (workers of a killed app)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reader.join(30)


@pytest.fixture(scope="module")
def scene(small_scene):
    return small_scene


@pytest.fixture(scope="module")
def app(scene, tmp_path_factory):
    work = tmp_path_factory.mktemp("app")
    cache = work / "cache"
    cmd = [sys.executable, "-m", "crop2seg_pipeline", "app", "--items", str(scene.items), "--parcels",
           str(scene.parcels), "--mapping", str(scene.mapping), "--cache-dir", str(cache), "--port", "0",
           "--workers", "1", "--threads-per-worker", "1", "--parallel", "2"]
    running = RunningApp(cmd, work)
    running.cache = cache
    try:
        yield running
    finally:
        running.stop()
    assert running.proc.returncode == 0, "".join(running.lines)
    assert not any("Traceback" in line for line in running.lines), "".join(running.lines)


# ----------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Recorder:
    """Every request of a browser context; requests that would leave loopback are aborted."""

    def __init__(self):
        self.urls: list[str] = []
        self.blocked: list[str] = []

    def route(self, route) -> None:
        url = route.request.url
        self.urls.append(url)
        host = urlparse(url).hostname
        if url.startswith(("data:", "blob:")) or host in LOOPBACK:
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def check(self, app_url: str) -> None:
        assert self.blocked == [], f"requests off loopback: {self.blocked}"
        origin = urlparse(app_url).netloc
        for url in self.urls:
            if url.startswith(("data:", "blob:")):
                continue
            assert urlparse(url).netloc == origin, f"a request to another server: {url}"


@pytest.fixture
def open_page(browser, app):
    contexts = []

    def make():
        ctx = browser.new_context(viewport={"width": 1500, "height": 1000}, device_scale_factor=1,
                                  accept_downloads=True)
        rec = Recorder()
        ctx.route("**/*", rec.route)
        page = ctx.new_page()
        page.rec = rec
        page.sockets = []
        page.on("websocket", lambda ws: page.sockets.append(ws.url))
        contexts.append((ctx, page))
        page.goto(app.url)
        page.wait_for_selector("#c2s-status[data-state=ready]", timeout=TIMEOUT_MS)
        return page

    yield make
    for ctx, page in contexts:
        page.rec.check(app.url)
        assert page.sockets and all(urlparse(u).hostname in LOOPBACK for u in page.sockets), page.sockets
        assert any("/static/js/bokeh" in u for u in page.rec.urls), "BokehJS was not served by the app"
        ctx.close()


# ----------------------------------------------------------------------------- page helpers


def map_geometry(page) -> dict:
    """Where the map's frame is on the page and which data range it shows (from BokehJS)."""
    return page.evaluate("""() => {
        const m = Bokeh.documents[0].get_model_by_name('map');
        const v = Bokeh.index.get_one(m);
        const r = v.el.getBoundingClientRect(), f = v.frame.bbox;
        return {left: r.x + f.x, top: r.y + f.y, width: f.width, height: f.height,
                x0: m.x_range.start, x1: m.x_range.end, y0: m.y_range.start, y1: m.y_range.end};
    }""")


def to_screen(g: dict, x: float, y: float) -> tuple[float, float]:
    return (g["left"] + (x - g["x0"]) / (g["x1"] - g["x0"]) * g["width"],
            g["top"] + (g["y1"] - y) / (g["y1"] - g["y0"]) * g["height"])


#: Map layers by the checkbox that shows them (renderer names in the page's Bokeh document).
LAYERS = {"class map": ["classes"], "confidence": ["confidence"], "parcels": ["parcels", "picked"],
          "cells and area": ["cells", "selection"]}


def wait_drawn(page, visible: dict[str, bool] | None = None, alpha: float | None = None) -> None:
    """Wait until BokehJS holds the layer state the server sent, then for two painted frames."""
    page.wait_for_function("""([vis, alpha]) => {
        const d = Bokeh.documents[0];
        for (const [name, v] of Object.entries(vis)) {
            const r = d.get_model_by_name(name);
            if (!r || r.visible !== v) return false;
        }
        if (alpha === null) return true;
        const a = d.get_model_by_name('classes').glyph.global_alpha;  // a number or {value: ...}
        return Math.abs((typeof a === 'number' ? a : a.value) - alpha) < 1e-9;
    }""", arg=[visible or {}, alpha])
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def screenshot(page) -> np.ndarray:
    wait_drawn(page)
    return np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)


def pick_cell(page, scene, row: int, col: int, cell_px: int = 128) -> str:
    g = map_geometry(page)
    res = scene.grid.resolution
    x = scene.grid.x0 + (col + 0.5) * cell_px * res
    y = scene.grid.y0 - (row + 0.5) * cell_px * res
    page.mouse.click(*to_screen(g, x, y))
    name = f"33UWQ r{row} c{col}"
    page.wait_for_selector(f'#c2s-area[data-cell="{name}"]', timeout=30_000)
    return name


def predict_and_wait(page) -> str:
    page.locator(".c2s-predict button").click()
    page.wait_for_selector("#c2s-status[data-state=done]", timeout=TIMEOUT_MS)
    page.wait_for_selector("#c2s-legend[data-n]", timeout=60_000)
    return page.get_attribute("#c2s-status", "data-key")


def set_layer(page, label: str, on: bool) -> None:
    box = page.locator(".c2s-layers label", has_text=label).locator("input")
    if box.is_checked() != on:
        box.click()
    assert box.is_checked() == on
    wait_drawn(page, {name: on for name in LAYERS[label]})


def set_opacity(page, value: float) -> None:
    """Click the opacity slider's track where ``value`` lies (its ends for 0 and 1), as a user would."""
    track = page.locator(".c2s-opacity .noUi-base").bounding_box()
    f = min(max(value, 0.002), 0.998)
    page.mouse.click(track["x"] + f * track["width"], track["y"] + track["height"] / 2)
    from playwright.sync_api import expect

    number = re.escape(f"{value:g}")
    expect(page.locator(".c2s-opacity .noUi-handle")).to_have_attribute("aria-valuenow", re.compile(rf"^{number}(\.0*)?$"))
    wait_drawn(page, alpha=value)


def opacity(page) -> float:
    return float(page.locator(".c2s-opacity .noUi-handle").get_attribute("aria-valuenow"))


def message(page) -> str:
    return page.locator("#c2s-message").inner_text()


def interior_pixels(classes: np.ndarray, n: int, background: bool = False, margin: int = 3) -> list[tuple[int, int]]:
    """Pixels whose (2 margin + 1)^2 neighbourhood holds one class (crop classes, or background)."""
    h, w = classes.shape
    out = []
    rng = np.random.default_rng(0)
    for r, c in zip(*np.nonzero(classes == 0 if background else classes > 0)):
        if margin <= r < h - margin and margin <= c < w - margin:
            win = classes[r - margin : r + margin + 1, c - margin : c + margin + 1]
            if (win == classes[r, c]).all():
                out.append((int(r), int(c)))
    rng.shuffle(out)
    by_class: dict[int, list] = {}
    for rc in out:
        by_class.setdefault(int(classes[rc]), []).append(rc)
    picked = []
    while len(picked) < n and any(by_class.values()):  # spread over the classes present
        for k in list(by_class):
            if by_class[k] and len(picked) < n:
                picked.append(by_class[k].pop())
    return picked


def declared_names(scene) -> dict[int, str]:
    """Parcel id -> declared class name, from the scene's own parcel file and mapping (not the app's output)."""
    parcels = gpd.read_file(scene.parcels)
    table = pd.read_csv(scene.mapping, dtype=str)
    code_to_class = dict(zip(table["crop_code"].str.strip(), table["class_id"].astype(int)))
    return {int(i): CLASS_NAMES[code_to_class.get(str(c).strip(), 14)]
            for i, c in zip(parcels["ID_DPB"], parcels["KOD_PLODINY"])}


# ----------------------------------------------------------------------------- tests


def test_predict_a_cell_and_inspect_it(open_page, app, scene, tmp_path):
    page = open_page()
    g = map_geometry(page)

    # the background is the scene's composite, as cached by the app
    bg_entries = [p for p in (app.cache / "backgrounds").iterdir() if p.is_dir()]
    assert len(bg_entries) == 1
    composite = np.asarray(Image.open(bg_entries[0] / "composite.png").convert("RGB")).astype(int)
    shot = screenshot(page)
    res = scene.grid.resolution
    for r, c in [(10, 10), (60, 200), (128, 128), (240, 30)]:
        sx, sy = to_screen(g, scene.grid.x0 + (c + 0.5) * res, scene.grid.y0 - (r + 0.5) * res)
        assert np.abs(shot[int(sy), int(sx)] - composite[r, c]).max() <= 2, (r, c)

    pick_cell(page, scene, 0, 1)
    key = predict_and_wait(page)
    folder = app.cache / "predictions" / key
    assert (folder / "classes.tif").exists()
    dash = page.get_attribute("#c2s-dashboard", "href")
    assert urlparse(dash).hostname in LOOPBACK

    # the legend: the classes of the COG, in the COG's colours, on screen too
    with rasterio.open(folder / "classes.tif") as ds:
        classes = ds.read(1)
        cmap = ds.colormap(1)
        cls_bounds = ds.bounds
    present = sorted(int(k) for k in np.unique(classes))
    items = page.locator("#c2s-legend .c2s-legend-item")
    assert [int(items.nth(i).get_attribute("data-class")) for i in range(items.count())] == present
    shot = screenshot(page)
    for i in range(items.count()):
        k = int(items.nth(i).get_attribute("data-class"))
        assert tuple(cmap[k][:3]) == CLASS_COLORS[k]
        box = items.nth(i).locator(".c2s-swatch").bounding_box()
        px = shot[int(box["y"] + box["height"] / 2), int(box["x"] + box["width"] / 2)]
        assert tuple(px) == CLASS_COLORS[k], (k, px)

    # the class map over the true colour image, blended at the chosen opacity
    set_layer(page, "parcels", False)
    set_layer(page, "cells and area", False)
    assert opacity(page) == 0.7
    wait_drawn(page, alpha=0.7)
    blend = screenshot(page)
    set_opacity(page, 1.0)
    full = screenshot(page)
    set_opacity(page, 0.0)
    none = screenshot(page)
    crop_px = interior_pixels(classes, 24)
    assert len({int(classes[rc]) for rc in crop_px}) >= 2
    for r, c in crop_px:
        sx, sy = to_screen(g, cls_bounds.left + (c + 0.5) * res, cls_bounds.top - (r + 0.5) * res)
        at = (int(sy), int(sx))
        colour = np.array(CLASS_COLORS[int(classes[r, c])])
        assert np.abs(full[at] - colour).max() <= 2, (r, c, full[at], colour)
        assert np.abs(blend[at] - (0.7 * colour + 0.3 * none[at])).max() <= 3, (r, c, blend[at], none[at], colour)
    for r, c in interior_pixels(classes, 8, background=True):  # background: not drawn
        sx, sy = to_screen(g, cls_bounds.left + (c + 0.5) * res, cls_bounds.top - (r + 0.5) * res)
        assert np.abs(full[int(sy), int(sx)] - none[int(sy), int(sx)]).max() <= 2

    # the confidence layer, in the app's confidence colours
    set_layer(page, "confidence", True)
    conf_shot = screenshot(page)
    with rasterio.open(folder / "confidence.tif") as ds:
        conf = ds.read(1)
    for r, c in crop_px:
        sx, sy = to_screen(g, cls_bounds.left + (c + 0.5) * res, cls_bounds.top - (r + 0.5) * res)
        want = confidence_rgba(conf[r : r + 1, c : c + 1])[0, 0, :3]
        assert np.abs(conf_shot[int(sy), int(sx)] - want).max() <= 2, (r, c)
    set_layer(page, "confidence", False)

    # a parcel click shows its declared (from the scene's own parcel file) and predicted classes
    set_layer(page, "parcels", True)
    parcels = gpd.read_file(folder / "parcels.gpkg")
    cell = scene.grid.x0 + 128 * res, scene.grid.y0 - 128 * res, scene.grid.x0 + 256 * res, scene.grid.y0
    overlap = parcels.geometry.intersection(shapely.geometry.box(*cell))
    differ = (parcels["declared_name"] != parcels["predicted_name"]).to_numpy()  # a click must tell them apart
    score = overlap.area.to_numpy() * np.where(differ, 10.0, 1.0)
    target = parcels.iloc[int(np.argmax(score))]
    others = parcels.drop(index=target.name).geometry
    spot = overlap.loc[target.name].difference(shapely.union_all(others.to_numpy()))  # no other parcel there
    pt = spot.representative_point()
    page.mouse.click(*to_screen(g, pt.x, pt.y))
    pid = int(target["parcel_id"])
    page.wait_for_selector(f'#c2s-parcel[data-parcel="{pid}"]', timeout=30_000)
    assert page.locator("#c2s-parcel td[data-field=declared_name]").inner_text() == declared_names(scene)[pid]
    assert page.locator("#c2s-parcel td[data-field=predicted_name]").inner_text() == target["predicted_name"]
    page.wait_for_selector("#c2s-ndvi-state[data-dates]", timeout=TIMEOUT_MS)
    assert int(page.get_attribute("#c2s-ndvi-state", "data-dates")) >= 1

    # the disagreeing parcels, the most confident first
    page.get_by_text("Disagreeing parcels", exact=True).click()
    wrong = parcels[parcels["agreement"].fillna(True).astype(int) == 0]
    assert int(page.get_attribute("#c2s-table-info", "data-n")) == len(wrong)
    if len(wrong):
        first = page.locator(".c2s-table .slick-row").first.locator(".slick-cell").first.inner_text()
        assert first == str(int(wrong.sort_values("mean_confidence", ascending=False).iloc[0]["parcel_id"]))

    # downloads: the COG and the GeoPackage as the app wrote them
    page.get_by_text("Downloads", exact=True).click()
    link = page.locator("#c2s-downloads a.c2s-download[data-name='classes.tif']")
    with page.expect_download() as dl:
        link.click()
    got = tmp_path / "classes.tif"
    dl.value.save_as(got)
    assert validate_cog(got) == []
    assert got.read_bytes() == (folder / "classes.tif").read_bytes()
    with page.expect_download() as dl:
        page.locator("#c2s-downloads a.c2s-download[data-name='parcels.gpkg']").click()
    dl.value.save_as(tmp_path / "parcels.gpkg")
    assert sorted(gpd.read_file(tmp_path / "parcels.gpkg")["parcel_id"]) == sorted(parcels["parcel_id"])


def _weights_other_bands(folder: Path) -> Path:
    torch.manual_seed(0)
    bands = ["B01", *BANDS[1:]]
    model = build_model("utae-small", 15, input_dim=len(bands))
    return save_weights(model, folder, {
        "bands": bands, "normalization": {"mean": [1000.0] * len(bands), "std": [500.0] * len(bands)},
        "class_names": list(CLASS_NAMES), "reference_date": "2021-09-01", "patch_size": 32, "ignore_index": 14})


def test_bad_inputs_show_a_message_not_a_traceback(open_page, app, scene, tmp_path):
    page = open_page()
    items = page.locator(".c2s-items input")
    load = page.locator(".c2s-load button")
    predict = page.locator(".c2s-predict button")

    def expect(text) -> None:
        page.locator("#c2s-message", has_text=text).wait_for(timeout=60_000)
        assert "Traceback" not in message(page)

    predict.click()
    expect("no area selected")

    items.fill("")
    load.click()
    expect("no items file given")
    items.fill(str(tmp_path / "missing.json"))
    load.click()
    expect("cannot read STAC items")
    (tmp_path / "broken.json").write_text("{ not json")
    items.fill(str(tmp_path / "broken.json"))
    load.click()
    expect("not valid JSON")
    items.fill(str(scene.items))
    load.click()
    page.wait_for_selector("#c2s-status[data-state=ready]", timeout=TIMEOUT_MS)

    # a box drawn with the box-select tool becomes the area
    g = map_geometry(page)
    page.locator(".bk-tool-icon-box-select").click()
    x0, y0 = scene.grid.x0, scene.grid.y0
    a, b = to_screen(g, x0 + 300, y0 - 300), to_screen(g, x0 + 1500, y0 - 1100)
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move(*b, steps=10)
    page.mouse.up()
    page.wait_for_selector("#c2s-area[data-cell='']", timeout=30_000)
    bbox = page.locator(".c2s-bbox input")
    drawn = [float(v) for v in bbox.input_value().split(",")]
    metres_per_px = (g["x1"] - g["x0"]) / g["width"]
    np.testing.assert_allclose(drawn, [x0 + 300, y0 - 1100, x0 + 1500, y0 - 300], atol=2 * metres_per_px)
    h, w = map(int, re.match(r"box: (\d+) x (\d+) px", page.locator("#c2s-area").inner_text()).groups())
    assert abs(h - 80) <= 1 and abs(w - 120) <= 1

    bbox.fill("0,0,1000,1000")
    bbox.press("Enter")
    page.wait_for_selector("#c2s-area[data-cell='']")
    predict.click()
    expect("no item intersects the bbox")  # far from the items

    pick_cell(page, scene, 1, 0)
    weights = page.locator(".c2s-weights input")
    good = weights.input_value()
    weights.fill(str(_weights_other_bands(tmp_path / "b01")))
    weights.press("Enter")
    expect("B01")
    predict.click()
    expect("cannot predict")
    assert "B01" in message(page)
    weights.fill(good)
    weights.press("Enter")
    expect("model: 10 bands")


def test_tabs_asking_for_the_same_cell_share_one_entry(open_page, app, scene):
    pages = [open_page() for _ in range(3)]
    pick_cell(pages[0], scene, 1, 1)
    pick_cell(pages[1], scene, 1, 1)
    pick_cell(pages[2], scene, 1, 0)
    for p in pages:  # the second joins the first one's job (or finds it in the cache when it was quicker)
        p.locator(".c2s-predict button").click()
    keys = []
    for p in pages:
        p.wait_for_selector("#c2s-status[data-state=done]", timeout=TIMEOUT_MS)
        keys.append(p.get_attribute("#c2s-status", "data-key"))
    assert keys[0] == keys[1] != keys[2]
    res = scene.grid.resolution
    for key, (row, col) in [(keys[0], (1, 1)), (keys[2], (1, 0))]:
        folder = app.cache / "predictions" / key
        marker = json.loads((folder / "crop2seg-app.json").read_text())
        assert marker["status"] == "complete"
        with rasterio.open(folder / "classes.tif") as ds:  # each folder holds its own cell
            assert ds.bounds.left == scene.grid.x0 + col * 128 * res
            assert ds.bounds.top == scene.grid.y0 - row * 128 * res
            assert ds.shape == (128, 128)
        assert validate_cog(folder / "classes.tif") == []


def test_cache_view_lists_and_deletes_only_app_entries(open_page, app, scene):
    foreign = app.cache / "predictions" / ("f" * 24)
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("not the app's")
    page = open_page()
    pick_cell(page, scene, 0, 0)
    key = predict_and_wait(page)
    page.get_by_text("Cache", exact=True).click()
    page.locator(".c2s-cache-refresh button").click()
    rows = page.locator(".c2s-cache-table .slick-row")
    rows.first.wait_for()
    listed = [rows.nth(i).locator(".slick-cell").nth(1).inner_text() for i in range(rows.count())]
    assert key in listed and foreign.name not in listed
    n_before = int(page.get_attribute("#c2s-cache-info", "data-n"))
    rows.nth(listed.index(key)).locator(".slick-cell").first.click()
    page.locator(".c2s-cache-delete button").click()
    page.wait_for_selector("#c2s-cache-info[data-deleted='1']", timeout=30_000)
    assert not (app.cache / "predictions" / key).exists()
    assert (foreign / "keep.txt").read_text() == "not the app's"
    page.locator(".c2s-cache-refresh button").click()
    page.wait_for_selector(f"#c2s-cache-info[data-n='{n_before - 1}']", timeout=30_000)
