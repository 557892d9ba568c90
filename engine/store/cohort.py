"""Open a cohort store lazily and describe it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from engine.errors import InputError
from engine.store.contract import check_cohort
from engine.store.fingerprint import recorded_fingerprint


def _plain(var: xr.Variable) -> xr.Variable:
    if isinstance(var.dtype, np.dtypes.StringDType):
        return var.copy(data=np.asarray(var.values).astype(object))
    return var


def open_cohort(path: str | Path) -> xr.Dataset:
    """The cohort at ``path`` as a lazy ``xarray.Dataset``.

    ``expression`` (gene, sample) stays a Dask array chunked along genes; the 1-D gene and
    sample annotations are small and are loaded into memory, so they can be used for
    grouping at once. The store is checked against the cohort-store contract.
    """
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise InputError(f"{path} is not a cohort store (create one with `cohort ingest`)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        # a store without consolidated metadata still opens; check_cohort judges its contents
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated",
                                category=RuntimeWarning)
        ds = xr.open_zarr(path, consolidated=None, zarr_format=3, chunks=None)
    # The 1-D annotations are small: read them now, without Dask, so they can be used for
    # grouping at once (Zarr 3 returns strings as StringDType; object arrays are what pandas and
    # the engine expect). The (gene, sample) arrays become Dask arrays with the on-disk chunks.
    loaded = {name: _plain(var.load()) for name, var in ds.variables.items() if var.ndim == 1}
    ds = ds.assign_coords({n: v for n, v in loaded.items() if n in ds.dims})
    ds = ds.assign({n: v for n, v in loaded.items() if n not in ds.dims})
    # Task keys of the reads name the store's content (content_sha256, recorded at ingest), not
    # only its path and shape: a store rewritten in place never shares keys with its old data.
    # Derived stores keep xarray's own keys (their path is named by a digest of their steps).
    content = recorded_fingerprint(ds.attrs)
    for name, var in ds.data_vars.items():
        if var.ndim == 2:
            token = f"{content}-{name}" if content else None
            ds[name] = var.chunk(dict(zip(var.dims, var.encoding["chunks"])), token=token)
    ds.encoding["source"] = str(path.absolute())
    check_cohort(ds)
    return ds
