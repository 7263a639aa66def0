"""``crop2seg-predict``: a thin click wrapper over :func:`crop2seg_pipeline.predict.predict`."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import click

from .. import storage
from ..errors import Crop2SegError
from ..interrupts import pause_point
from ..workflow import workflow_option
from . import check_cluster, cluster_options, command, demo_scene_for, fail, open_cluster, parse_floats, quiet_opt, setup_logging, verbose_opt

log = logging.getLogger("crop2seg_pipeline")

DEMO_OUT = "prediction"


@command(interrupted="nothing final was written (outputs appear when every chunk is done); run the same command again.")
@workflow_option("predict")
@click.option("--items", help="STAC ItemCollection JSON (path or URL: https://, s3://...). Default: the embedded demo scene.")
@click.option("--weights", type=click.Path(), help="Weights folder (weights.pt + model.json), or its URL (s3://bucket/weights: downloaded once into ~/.cache/crop2seg). Default: the shipped demo weights.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder: a local path, or an object-store URL (s3://bucket/prediction: assembled in a local staging folder, uploaded when complete). Default with the demo: crop2seg-demo/prediction.")
@click.option("--parcels", type=click.Path(dir_okay=False), help="LPIS parcels to score (GPKG, SHP, GeoJSON, FlatGeobuf, GeoParquet; any CRS): a path, or a URL of a single-file format (s3://...).")
@click.option("--mapping", type=click.Path(dir_okay=False, exists=True), help="Crop code -> class id CSV. Default: the shipped Czech table.")
@click.option("--id-column", default="ID_DPB", help="Parcel id attribute.")
@click.option("--crop-column", default="KOD_PLODINY", help="Crop code attribute.")
@click.option("--layer", default=None, help="Layer of a multi-layer parcel file.")
@click.option("--bbox", default=None, help="Area of interest 'minx,miny,maxx,maxy' (in --bbox-crs).")
@click.option("--bbox-crs", default="EPSG:4326", help="CRS of --bbox.")
@click.option("--antimeridian", is_flag=True, help="--bbox (lon/lat) crosses the 180th meridian: minx is east of it, maxx west of it.")
@click.option("--epsg", default=None, help="CRS of the output grid (EPSG code of a projected CRS in metres, e.g. 32633) when the items are in several CRSs. Default: the items' own CRS.")
@click.option("--start", default=None, help="First date (YYYY-MM-DD).")
@click.option("--end", default=None, help="Last date (YYYY-MM-DD).")
@click.option("--overlap", default=32, type=click.IntRange(min=0), help="Overlap of neighbouring windows (px); stride = patch size - overlap.")
@click.option("--batch-size", default=8, type=click.IntRange(min=1), help="Windows per forward pass.")
@click.option("--device", default="auto", help="auto (CUDA where a worker has it), cpu, cuda or cuda:N.")
@click.option("--chunksize", default=512, type=click.IntRange(min=16), help="Largest spatial chunk (px): the unit of work and of worker memory (a small area is cut finer, so that the cluster's threads get equal shares of its windows).")
@click.option("--probabilities", is_flag=True, help="Also write per-class probabilities: OUT/probabilities.zarr (float32) and OUT/probabilities.tif (uint8 COG, probability x 255, one band per class, bands summing to 255).")
@click.option("--polygons", is_flag=True, help="Also write the class map as polygons (class, area, mean confidence; Background dropped) to OUT/polygons.gpkg, polygonized chunk by chunk on the workers.")
@click.option("--min-polygon-area", default=5000.0, type=click.FloatRange(min=0), help="With --polygons: keep polygons larger than this (m2; Crop2Seg: 5000).")
@cluster_options()
@click.option("--demo-size", default=1024, type=int, help="Size of the embedded demo scene when --items is not given.")
@verbose_opt
@quiet_opt
def predict_cmd(items, weights, out, parcels, mapping, id_column, crop_column, layer, bbox, bbox_crs, antimeridian,
                epsg, start, end, overlap, batch_size, device, chunksize, probabilities, polygons, min_polygon_area,
                cluster, workers, threads_per_worker, memory_limit, demo_size, verbose, quiet):
    """Map crop types over whole tiles: a U-TAE on overlapping windows of the lazy Sentinel-2 cube, on Dask.

    Writes OUT/classes.tif and OUT/confidence.tif (Cloud-Optimized GeoTIFFs on the cube's grid),
    OUT/quicklook.png, OUT/summary.json; with --parcels OUT/parcels.gpkg (declared vs predicted
    class per parcel: area majority, Crop2Seg's homogenization and soft rule, disagreements ranked
    by confidence); with --probabilities OUT/probabilities.zarr and OUT/probabilities.tif; with
    --polygons OUT/polygons.gpkg; OUT/manifest.json lists them. Nothing else in OUT is touched: a
    file under one of these names that a prediction did not write refuses the run, and outputs of
    an earlier prediction that this one does not write are removed. With no arguments, predicts
    the embedded demo scene with the shipped demo weights.
    """
    setup_logging(verbose, quiet)
    from ..build import default_demo_paths
    from ..locks import writer_lock
    from ..predict import COMMAND, check_arguments, default_demo_weights, plan_prediction, predict

    if weights is None:
        weights = default_demo_weights()
        if not (Path(weights) / "model.json").is_file():
            raise click.ClickException(
                f"no --weights given and the demo weights are not there: {weights} holds no model.json. "
                "Train them with `python -m crop2seg_pipeline build-dataset` then "
                f"`python -m crop2seg_pipeline train --dataset crop2seg-demo/patches.zarr --out {weights}` "
                "(or pass --weights DIR)"
            )
    if items is not None and out is None:
        raise click.UsageError("--out is required with --items")
    box = parse_floats(bbox, 4, "--bbox")
    try:
        check_arguments(bbox=box, bbox_crs=bbox_crs, start=start, end=end, epsg=epsg, antimeridian=antimeridian,
                        overlap=overlap, batch_size=batch_size, chunksize=chunksize, out_dir=out,
                        min_polygon_area=min_polygon_area)
        storage.check_reachable(out, write=True)  # bucket, credentials, permission: before anything starts
        check_cluster(cluster, n_workers=workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit)
        pause_point("args")
        if items is None:
            scene = demo_scene_for(demo_size)
            items = str(scene.items)
            if parcels is None:
                parcels, mapping = str(scene.parcels), mapping or str(scene.mapping)
            out = out or str(default_demo_paths()[0].parent / DEMO_OUT)
        with contextlib.ExitStack() as stack:
            stack.enter_context(writer_lock(out, COMMAND, "prediction folder"))
            plan = plan_prediction(  # model, inputs and the output folder checked before the cluster starts
                items, weights, out, parcels=parcels, mapping=mapping, id_column=id_column, crop_column=crop_column,
                layer=layer, bbox=box, bbox_crs=bbox_crs, start=start, end=end, epsg=epsg,
                antimeridian=antimeridian, overlap=overlap, batch_size=batch_size, device=device,
                chunksize=chunksize, probabilities=probabilities, polygons=polygons,
                min_polygon_area=min_polygon_area,
            )
            client = open_cluster(stack, cluster, n_workers=workers, threads_per_worker=threads_per_worker,
                                  memory_limit=memory_limit)
            summary = predict(plan=plan, client=client)
    except Crop2SegError as e:
        raise fail(e) from e
    click.echo(summary.format())
