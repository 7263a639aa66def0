"""``crop2seg-build-dataset``: a thin click wrapper over :func:`crop2seg_pipeline.build.build_dataset`."""

from __future__ import annotations

import contextlib
import dataclasses

import click

from .. import storage
from ..errors import Crop2SegError
from ..workflow import workflow_option
from ..interrupts import pause_point
from . import check_cluster, cluster_options, command, demo_scene_for, fail, open_cluster, parse_floats, quiet_opt, setup_logging, verbose_opt


@command(interrupted="patches written so far are kept; run the same command again to resume.")
@workflow_option("build-dataset")
@click.option("--items", help="STAC ItemCollection JSON (path or URL: https://, s3://...). Default: the embedded demo scene.")
@click.option("--parcels", type=click.Path(dir_okay=False), help="LPIS parcels (GPKG, SHP, GeoJSON, FlatGeobuf, GeoParquet; any CRS): a path, or a URL of a single-file format (s3://...).")
@click.option("--out", type=click.Path(), help="Zarr patch store to write: a local path or an object-store URL (s3://bucket/store.zarr; written by the workers straight to the store). Default: crop2seg-demo/patches.zarr.")
@click.option("--mapping", type=click.Path(dir_okay=False, exists=True), help="Crop code -> class id CSV. Default: the shipped Czech table.")
@click.option("--id-column", default="ID_DPB", help="Parcel id attribute.")
@click.option("--crop-column", default="KOD_PLODINY", help="Crop code attribute.")
@click.option("--layer", default=None, help="Layer of a multi-layer parcel file.")
@click.option("--patch-size", default=128, type=int, help="Patch side in pixels (a multiple of 8, as the models need).")
@click.option("--bbox", default=None, help="Area of interest 'minx,miny,maxx,maxy' (in --bbox-crs).")
@click.option("--bbox-crs", default="EPSG:4326", help="CRS of --bbox.")
@click.option("--antimeridian", is_flag=True, help="--bbox (lon/lat) crosses the 180th meridian: minx is east of it, maxx west of it.")
@click.option("--epsg", default=None, help="CRS of the output grid (EPSG code of a projected CRS in metres, e.g. 32633) when a tile's items are in several CRSs. Default: the items' own CRS.")
@click.option("--start", default=None, help="First date (YYYY-MM-DD).")
@click.option("--end", default=None, help="Last date (YYYY-MM-DD).")
@click.option("--max-cloud", default=None, type=float, help="Drop items whose eo:cloud_cover (%) is above this (0..100).")
@click.option("--min-crop-cover", default=0.3, type=float, help="Keep patches with at least this share of crop pixels.")
@click.option("--min-date-clear", default=0.0, type=float, help="Drop a tile's dates whose clear-sky share is at most this.")
@click.option("--split", default="0.7,0.15,0.15", help="train,val,test shares, each 0..1, summing to 1, train above 0 (assigned by spatial blocks).")
@click.option("--split-block", default=2, type=int, help="Side of a split block, in patches.")
@click.option("--seed", default=0, type=int, help="Seed of the split assignment.")
@click.option("--chunksize", default=512, type=click.IntRange(min=1), help="Work chunk side in pixels, a multiple of --patch-size: the unit of work and of worker memory (one chunk with all its dates and bands).")
@click.option("--chunk-patches", default=None, type=click.IntRange(min=1), hidden=True, help="Deprecated: --chunksize in patches.")
@click.option("--resampling-20m", default="nearest", type=click.Choice(["nearest", "bilinear", "cubic", "average"]), help="How 20 m bands reach 10 m.")
@click.option("--codec", default="zstd-1", type=click.Choice(["zstd-1", "zstd-3", "lz4", "none"]), help="Compression of the patch arrays (recorded in the store): zstd-1 is the measured best trade-off (benchmarks/codecs.py).")
@cluster_options()
@click.option("--overwrite", is_flag=True, help="Rebuild an existing patch store from scratch.")
@click.option("--demo-size", default=1024, type=int, help="Size of the embedded demo scene when --items is not given.")
@verbose_opt
@quiet_opt
def build_dataset_cmd(items, parcels, out, mapping, id_column, crop_column, layer, patch_size, bbox, bbox_crs,
                      antimeridian, epsg, start, end, max_cloud, min_crop_cover, min_date_clear, split, split_block,
                      seed, chunksize, chunk_patches, resampling_20m, codec, cluster, workers, threads_per_worker,
                      memory_limit, overwrite, demo_size, verbose, quiet):
    """Build a Zarr patch dataset from Sentinel-2 STAC items and LPIS parcels, on a Dask cluster.

    With no arguments, generates the embedded demo scene under ./crop2seg-demo/ and builds
    ./crop2seg-demo/patches.zarr. Re-running the same command after an interruption finishes
    only the missing patches. Every argument is checked before anything starts; one build at a
    time writes a store (a second one is refused).
    """
    setup_logging(verbose, quiet)
    from ..build import LOCK_HOLDER, BuildConfig, build_dataset, default_demo_paths, plan_build
    from ..checks import check_target_crs
    from ..locks import writer_lock

    if (items is None) != (parcels is None):
        raise click.UsageError("give both --items and --parcels, or neither (to build the demo)")
    if items is not None and out is None:
        raise click.UsageError("--out is required with --items")
    if chunk_patches is not None:
        click.echo(f"--chunk-patches is deprecated: use --chunksize {chunk_patches * patch_size} (pixels)", err=True)
        chunksize = chunk_patches * patch_size
    try:
        cfg = BuildConfig(
            items=items or "<demo>", parcels=parcels or "<demo>", out=out or str(default_demo_paths()[1]),
            mapping=mapping, id_column=id_column, crop_column=crop_column,
            layer=layer, patch_size=patch_size, bbox=parse_floats(bbox, 4, "--bbox"), bbox_crs=bbox_crs, start=start,
            end=end, max_cloud=max_cloud, min_crop_cover=min_crop_cover, min_date_clear=min_date_clear,
            split=parse_floats(split, 3, "--split"), split_block=split_block, seed=seed, chunksize=chunksize,
            resampling_20m=resampling_20m, codec=codec, epsg=check_target_crs(epsg), antimeridian=antimeridian,
        )
        cfg.validate()
        storage.check_reachable(cfg.out, write=True)  # bucket, credentials, permission: before anything starts
        check_cluster(cluster, n_workers=workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit)
        pause_point("args")
        if items is None:
            scene = demo_scene_for(demo_size)
            cfg = dataclasses.replace(cfg, items=str(scene.items), parcels=str(scene.parcels),
                                      mapping=mapping or str(scene.mapping))
        with contextlib.ExitStack() as stack:
            stack.enter_context(writer_lock(cfg.out, LOCK_HOLDER, "patch store"))
            plan = plan_build(cfg, overwrite)  # inputs read and checked before the cluster starts
            client = open_cluster(stack, cluster, n_workers=workers, threads_per_worker=threads_per_worker,
                                  memory_limit=memory_limit)
            summary = build_dataset(plan=plan, client=client)
    except Crop2SegError as e:
        raise fail(e) from e
    click.echo(summary.format())
