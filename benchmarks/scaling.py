"""Scaling of crop2seg-build-dataset with workers, graph size, scheduler overhead; full-tile planning.

    python benchmarks/scaling.py                          # 1024 px, 24 dates, 1 and 2 workers
    python benchmarks/scaling.py --size 512 --dates 10 --workers 1 2 4

Not run in CI. For the demo scene (default patch 128, chunk 4 patches = 512 px), on a LocalCluster
of N workers x 1 thread (fresh store each run):

- wall time of the whole build and of each pass, speed-up against 1 worker;
- number of tasks of each pass, and the pass-2 graph actually sent: keys and pickled bytes;
- task compute time (task stream) and the cluster's use of its threads during pass 2;
- scheduler overhead per task: the same number of no-op tasks as pass 2, and 2000 no-op tasks;
- planning time (lazy cube + lazy labels + pass-2 task list, nothing read or computed).

Then a synthetic full Sentinel-2 tile (10980 x 10980 px, from the real STAC item in
/work/shared/fixtures/stac, ``--tile-dates`` dates, ~``--tile-parcels`` rectangular parcels) is
*planned only* the way ``build_dataset`` plans it (``check_files=False``, no pixel read), giving
the number of tasks, graph keys and bytes and planning time per tile; per-tile scheduler overhead
and single-thread compute are extrapolated from the demo's per-task figures.

Prints a summary and writes ``benchmarks/results/scaling.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cloudpickle
import dask
import geopandas as gpd
import numpy as np
import shapely
from distributed import Client, LocalCluster, get_task_stream

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import now, print_table, write_json  # noqa: E402

import crop2seg_pipeline.build as build_mod  # noqa: E402
from crop2seg_pipeline.blocks import cube_source  # noqa: E402
from crop2seg_pipeline.build import build_dataset  # noqa: E402
from crop2seg_pipeline.graph.build import chunk_windows, pass1_tasks, pass2_chunk, shared  # noqa: E402
from crop2seg_pipeline.demo import make_demo_scene  # noqa: E402
from crop2seg_pipeline.grid import grid_of_items  # noqa: E402
from crop2seg_pipeline.items import normalize_items  # noqa: E402
from crop2seg_pipeline.graph.labels import rasterize_labels  # noqa: E402
from crop2seg_pipeline.mapping import CropMapping  # noqa: E402
from crop2seg_pipeline.parcels import read_parcels  # noqa: E402
from crop2seg_pipeline.nomenclature import DEFAULT_UNCLEAR_SCL  # noqa: E402

FIXTURE = Path("/work/shared/fixtures/stac/earth-search-v0_S2A_28QCH_20200714_0_L2A.json")


def graph_stats(tasks: list) -> dict:
    """Keys and pickled bytes of the graph of a list of delayed tasks (what the client ships)."""
    t0 = now()
    dsk = dict(dask.base.collections_to_expr(tasks, optimize_graph=False).__dask_graph__())
    nbytes = len(cloudpickle.dumps(dsk, protocol=5))
    return {"keys": len(dsk), "pickled_bytes": nbytes, "pickle_s": now() - t0}


def plan(items, gdf: gpd.GeoDataFrame, patch: int, chunksize: int, check_files: bool) -> dict:
    """Plan one tile as build_dataset does, computing nothing: grid, labels, pass-1 and pass-2 tasks.

    Every patch is assumed kept (the largest pass-2 graph); pass 2 gets one task per chunk with the
    same arguments build_dataset gives it.
    """
    cp = chunksize // patch
    t0 = now()
    items = normalize_items(items, check_files=check_files)
    grid = grid_of_items(items, items[0]["properties"]["proj:epsg"])
    src = cube_source(items, grid)
    t_cube = now()
    labels = rasterize_labels(gdf, grid, chunks=chunksize)
    t_labels = now()
    windows = chunk_windows(grid.height, grid.width, chunksize)
    key = shared(src, "source")
    pass1 = list(pass1_tasks(key, labels["label"].data, windows, patch_size=patch, unclear=DEFAULT_UNCLEAR_SCL).values())
    t_pass1 = now()
    lab, pid = labels["label"].data.to_delayed(), labels["parcel_id"].data.to_delayed()
    dates = list(range(src.n_dates))
    n_rows, n_cols = grid.height // patch, grid.width // patch
    pass2, k = [], 0
    for (by, bx), w in windows.items():
        cells = [(i, j) for i in range(cp) if by * cp + i < n_rows for j in range(cp) if bx * cp + j < n_cols]
        if not cells:
            continue
        pass2.append(dask.delayed(pass2_chunk)(
            key, w, dates, lab[by, bx], pid[by, bx], store="plan.zarr", key=f"T_{by}_{bx}",
            index=list(range(k, k + len(cells))), rows=[c[0] for c in cells], cols=[c[1] for c in cells],
            train=[True] * len(cells), patch_size=patch, unclear=DEFAULT_UNCLEAR_SCL,
            dask_key_name=f"write-T_{by}_{bx}",
        ))
        k += len(cells)
    t_pass2 = now()
    return {
        "grid": [grid.height, grid.width], "dates": src.n_dates, "parcels": len(gdf), "patches": k,
        "cube_s": t_cube - t0, "labels_s": t_labels - t_cube, "pass1_tasks_s": t_pass1 - t_labels,
        "pass2_tasks_s": t_pass2 - t_pass1, "plan_s": t_pass2 - t0,
        "pass1_tasks": len(pass1), "pass2_tasks": len(pass2),
        "pass1_graph": graph_stats(pass1), "pass2_graph": graph_stats(pass2),
    }


def synthetic_tile(n_dates: int, n_parcels: int) -> tuple[list[dict], gpd.GeoDataFrame]:
    """A full 10980 px tile: the fixture item repeated over ``n_dates`` dates, rectangular parcels."""
    base = json.loads(FIXTURE.read_text())
    items = []
    for t in range(n_dates):
        it = copy.deepcopy(base)
        day = np.datetime64("2020-03-01") + np.timedelta64(5 * t, "D")
        it["id"] = f"{base['id']}-{t:03d}"
        it["properties"]["datetime"] = f"{day}T11:30:00Z"
        items.append(it)
    t = base["assets"]["B02"]["proj:transform"]
    x0, y0, extent = t[2], t[5], 10980 * 10.0
    side = int(math.sqrt(n_parcels))
    w = extent / side
    ix, iy = np.meshgrid(np.arange(side), np.arange(side))
    xmin, ymax = x0 + ix.ravel() * w, y0 - iy.ravel() * w
    geoms = shapely.box(xmin + 5, ymax - w + 5, xmin + w - 5, ymax - 5)
    gdf = gpd.GeoDataFrame({"parcel_id": np.arange(1, len(geoms) + 1, dtype="int32"),
                            "class_id": (np.arange(len(geoms)) % 13 + 1).astype("uint8")},
                           geometry=geoms, crs=f"EPSG:{base['properties']['proj:epsg']}")
    return items, gdf


def noop(x):
    return x


def noop_overhead(client: Client, n: int) -> float:
    """Seconds per task of ``n`` independent no-op tasks on ``client`` (submit -> all gathered)."""
    client.gather(client.map(noop, range(50), pure=False))  # warm
    t0 = now()
    client.gather(client.map(noop, range(n), pure=False))
    return (now() - t0) / n


def run_build(scene, n_workers: int, patch: int, chunksize: int, memory_limit: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix="scaling-")) / "patches.zarr"
    rec: dict = {"workers": n_workers}
    original = build_mod.run_tasks

    def spy(tasks, client, *, label, **kw):
        rec[f"{label}_tasks"] = len(tasks)
        if label == "pass 2":
            rec["pass2_graph"] = graph_stats(tasks)
        t0 = now()
        try:
            return original(tasks, client, label=label, **kw)
        finally:
            rec[f"{label}_s"] = now() - t0

    build_mod.run_tasks = spy
    try:
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                          dashboard_address=":0") as lc, Client(lc) as client:
            client.run(lambda: None)
            with get_task_stream(client) as ts:
                t0 = now()
                summary = build_dataset(scene.items, scene.parcels, out, mapping=scene.mapping, client=client,
                                        patch_size=patch, chunksize=chunksize, progress=lambda _: None)
                rec["wall_s"] = now() - t0
            writes = [t for t in ts.data if str(t["key"]).startswith("write-")]
            compute = [sum(s["stop"] - s["start"] for s in t["startstops"] if s["action"] == "compute") for t in writes]
            rec["pass2_task_compute_s_mean"] = float(np.mean(compute))
            rec["pass2_task_compute_s_sum"] = float(np.sum(compute))
            rec["pass2_thread_use"] = rec["pass2_task_compute_s_sum"] / (rec["pass 2_s"] * n_workers)
            rec["all_tasks"] = len(ts.data)
            rec["noop_same_n_s_per_task"] = noop_overhead(client, max(rec["pass 2_tasks"], 1))
            rec["noop_2000_s_per_task"] = noop_overhead(client, 2000)
    finally:
        build_mod.run_tasks = original
        shutil.rmtree(out.parent, ignore_errors=True)
    rec["patches"] = summary.n_patches
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--chunksize", type=int, default=512, help="work chunk side (px)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--memory-limit", default="4GB")
    ap.add_argument("--tile-dates", type=int, default=24)
    ap.add_argument("--tile-parcels", type=int, default=100_000)
    ap.add_argument("--scene-dir", default=str(Path(tempfile.gettempdir()) / "crop2seg-scaling-scene"))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "scaling.json"))
    a = ap.parse_args()

    scene_dir = Path(a.scene_dir) / f"{a.size}px-{a.dates}d"
    scene = make_demo_scene(scene_dir, size=a.size, n_dates=a.dates, seed=0)
    chunk = a.chunksize

    runs = []
    for n in a.workers:
        load_before = os.getloadavg()[0]
        r = run_build(scene, n, a.patch, a.chunksize, a.memory_limit)
        r["loadavg_1min"] = [load_before, os.getloadavg()[0]]  # other load on the machine skews speed-ups
        runs.append(r)
        print(f"{n} worker(s): {r['wall_s']:.1f} s (1-min load average {load_before:.1f} -> "
              f"{r['loadavg_1min'][1]:.1f} on {os.cpu_count()} cores)", flush=True)
    base = runs[0]["wall_s"] * runs[0]["workers"]
    for r in runs:
        r["speedup"] = runs[0]["wall_s"] / r["wall_s"]
        r["efficiency"] = base / (r["wall_s"] * r["workers"])
        r["pass2_graph_keys"] = r["pass2_graph"]["keys"]
        r["pass2_graph_kb"] = r["pass2_graph"]["pickled_bytes"] / 1e3
        r["noop_ms"] = 1e3 * r["noop_2000_s_per_task"]
        r["task_s"] = r["pass2_task_compute_s_mean"]
    print(f"\ndemo scene {a.size} x {a.size} px, {a.dates} dates, patch {a.patch}, chunk {chunk} px")
    print_table(runs, [("workers", "workers", ""), ("wall_s", "wall s", ".1f"), ("speedup", "speed-up", ".2f"),
                       ("pass 1_tasks", "pass-1 tasks", ""), ("pass 2_tasks", "pass-2 tasks", ""),
                       ("pass2_graph_keys", "pass-2 keys", ""), ("pass2_graph_kb", "pass-2 graph kB", ".1f"),
                       ("task_s", "s / pass-2 task", ".2f"), ("pass2_thread_use", "pass-2 thread use", ".0%"),
                       ("noop_ms", "no-op ms / task", ".2f")])

    # planning on the demo itself, with the same code as the tile
    norm = normalize_items(scene.items)
    grid = grid_of_items(norm, norm[0]["properties"]["proj:epsg"])
    gdf, _ = read_parcels(scene.parcels, mapping=CropMapping.read(scene.mapping), target_crs=grid.epsg, bbox=grid.bounds)
    demo_plan = plan(scene.items, gdf, a.patch, a.chunksize, check_files=True)

    items, gdf = synthetic_tile(a.tile_dates, a.tile_parcels)
    tile_plan = plan(items, gdf, a.patch, a.chunksize, check_files=False)
    per_task = runs[-1]["noop_2000_s_per_task"]
    task_s = runs[0]["pass2_task_compute_s_mean"] * a.tile_dates / a.dates  # one chunk scales with dates
    tile = {
        **tile_plan,
        "chunk_px": chunk,
        "scheduler_overhead_s_est": per_task * (tile_plan["pass1_graph"]["keys"] + tile_plan["pass2_graph"]["keys"]),
        "pass2_compute_one_thread_s_est": task_s * tile_plan["pass2_tasks"],
    }
    print(f"\nfull tile (planned only): {tile['grid'][0]} x {tile['grid'][1]} px, {tile['dates']} dates, "
          f"{tile['parcels']} parcels, {tile['patches']} patches of {a.patch} px, chunk {chunk} px")
    rows = [{"what": k, **v} for k, v in (("demo", demo_plan), ("tile", tile_plan))]
    for r in rows:
        r["p1"] = f"{r['pass1_tasks']} / {r['pass1_graph']['keys']} / {r['pass1_graph']['pickled_bytes'] / 1e6:.2f} MB"
        r["p2"] = f"{r['pass2_tasks']} / {r['pass2_graph']['keys']} / {r['pass2_graph']['pickled_bytes'] / 1e6:.2f} MB"
    print_table(rows, [("what", "", ""), ("plan_s", "plan s", ".2f"), ("cube_s", "cube s", ".2f"),
                       ("labels_s", "labels s", ".2f"), ("pass2_tasks_s", "pass-2 list s", ".3f"),
                       ("p1", "pass 1: tasks / keys / pickled", ""), ("p2", "pass 2: tasks / keys / pickled", "")])
    print(f"tile estimates: scheduler overhead ~{tile['scheduler_overhead_s_est']:.1f} s for "
          f"{tile_plan['pass1_graph']['keys'] + tile_plan['pass2_graph']['keys']} keys at "
          f"{1e3 * per_task:.2f} ms/task; pass-2 compute ~{tile['pass2_compute_one_thread_s_est'] / 60:.0f} "
          f"thread-minutes ({task_s:.1f} s per {chunk} px chunk at {a.tile_dates} dates)")

    write_json(a.out, {
        "scene": {"size": a.size, "dates": a.dates, "patch": a.patch, "chunksize": a.chunksize},
        "machine": {"cpus": os.cpu_count()},
        "runs": runs, "demo_plan": demo_plan, "tile": tile,
    })


if __name__ == "__main__":
    main()
