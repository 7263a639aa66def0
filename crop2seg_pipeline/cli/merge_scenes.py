"""``crop2seg-merge-scenes``: several demo scenes as one build input (see :mod:`crop2seg_pipeline.scenes`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import Crop2SegError
from ..workflow import workflow_option
from . import command, fail, quiet_opt, setup_logging, verbose_opt


@command()
@workflow_option("merge-scenes")
@click.argument("outdir", type=click.Path(path_type=Path))
@click.argument("scenes", nargs=-1, required=True, type=click.Path(path_type=Path))
@verbose_opt
@quiet_opt
def merge_scenes_cmd(outdir, scenes, verbose, quiet):
    """Merge demo scene folders SCENES (crop2seg-demo-scene output, each on its own --tile) into
    OUTDIR/items.json + parcels.gpkg + crop_mapping.csv, the input of one multi-tile patch store.

    Asset hrefs become absolute; parcels are concatenated in the first scene's CRS. Nothing in
    OUTDIR is overwritten.

    Example:
      crop2seg-merge-scenes train-input scenes/s101 scenes/s102 scenes/s103 scenes/s104
      crop2seg-build-dataset --items train-input/items.json --parcels train-input/parcels.gpkg \\
          --mapping train-input/crop_mapping.csv --out train.zarr
    """
    setup_logging(verbose, quiet)
    from ..scenes import merge_scenes

    try:
        m = merge_scenes(scenes, outdir)
    except Crop2SegError as e:
        raise fail(e) from e
    click.echo(f"merged {len(scenes)} scenes (tiles {', '.join(m.tiles)}): {m.n_items} items, {m.n_parcels} parcels")
    click.echo(f"  items   : {m.items}")
    click.echo(f"  parcels : {m.parcels}")
    click.echo(f"  mapping : {m.mapping}")
