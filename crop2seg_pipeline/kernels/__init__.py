"""Pure array kernels: numpy in, numpy out, no dask, xarray or I/O."""
