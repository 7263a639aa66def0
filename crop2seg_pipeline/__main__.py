"""``python -m crop2seg_pipeline COMMAND ...``: every command of the package in one group."""

from __future__ import annotations

import click

from .cli.app import app_cmd
from .cli.build import build_dataset_cmd
from .cli.cluster import cluster_cmd
from .cli.demo import demo_scene_cmd
from .cli.download import download_cmd
from .cli.evaluate import evaluate_cmd
from .cli.merge_scenes import merge_scenes_cmd
from .cli.export_pastis import export_pastis_cmd
from .cli.predict import predict_cmd
from .cli.report import report_cmd
from .cli.safe import index_safe_cmd
from .cli.search import search_cmd
from .cli.train import train_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """crop2seg-pipeline: Sentinel-2 time series + LPIS parcels -> crop-type maps, on Dask."""


main.add_command(demo_scene_cmd, "demo-scene")
main.add_command(build_dataset_cmd, "build-dataset")
main.add_command(train_cmd, "train")
main.add_command(evaluate_cmd, "evaluate")
main.add_command(predict_cmd, "predict")
main.add_command(cluster_cmd, "cluster")
main.add_command(search_cmd, "search")
main.add_command(download_cmd, "download")
main.add_command(index_safe_cmd, "index-safe")
main.add_command(app_cmd, "app")
main.add_command(report_cmd, "report")
main.add_command(export_pastis_cmd, "export-pastis")
main.add_command(merge_scenes_cmd, "merge-scenes")

if __name__ == "__main__":
    main()
