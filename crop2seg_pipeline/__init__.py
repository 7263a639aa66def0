"""crop2seg-pipeline: Sentinel-2 time series + LPIS parcels -> crop-type maps, on Dask."""

__version__ = "0.1.0"
