"""Making, scaling and closing the Dask cluster a run uses."""
