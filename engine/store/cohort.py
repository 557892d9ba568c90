"""Open a cohort store lazily and describe it."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import dask
import numpy as np
import xarray as xr
from dask.base import tokenize

from engine.errors import InputError
from engine.store.contract import check_cohort
from engine.store.fingerprint import recorded_fingerprint


def _plain(var: xr.Variable) -> xr.Variable:
    if isinstance(var.dtype, np.dtypes.StringDType):
        return var.copy(data=np.asarray(var.values).astype(object))
    return var


#: Dask configuration key: the largest (gene, sample) block a task may read, in bytes as
#: float64. The runner sets it from the workers' memory limit (``engine.jobs.monitor.
#: blocks_for``); unset, tasks read the store's own chunks.
MAX_BLOCK_BYTES = "cohort-engine.max-block-bytes"


def task_memory(default: int) -> int:
    """Bytes a kernel may use for its temporaries in one task (resampling tiles, batches):
    ``default``, or less where the workers' block budget (``MAX_BLOCK_BYTES``) is smaller."""
    budget = dask.config.get(MAX_BLOCK_BYTES, None)
    return int(min(default, budget)) if budget else int(default)


def gene_chunks(stored: tuple[int, ...], n_samples: int, max_bytes: int | None) -> tuple[int, ...]:
    """Rows of each Dask block along genes: the store's chunks, each split evenly into as few
    parts as keep a block of all samples in float64 under ``max_bytes``. A block never spans
    two stored chunks, so each read decodes one chunk."""
    if not max_bytes:
        return stored
    rows = max(1, int(max_bytes) // (8 * max(n_samples, 1)))
    out = []
    for size in stored:
        parts = math.ceil(size / rows)
        out += [size // parts + (i < size % parts) for i in range(parts)]
    return tuple(out)


def _stored_chunks(size: int, chunk: int) -> tuple[int, ...]:
    return (chunk,) * (size // chunk) + ((size % chunk,) if size % chunk or not size else ())


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
    max_bytes = dask.config.get(MAX_BLOCK_BYTES, None)
    for name, var in ds.data_vars.items():
        if var.ndim == 2:
            chunks = dict(zip(var.dims, var.encoding["chunks"]))
            token = f"{content}-{name}" if content else None
            if max_bytes and var.dims == ("gene", "sample"):
                stored = _stored_chunks(var.sizes["gene"], chunks["gene"])
                chunks["gene"] = gene_chunks(stored, var.sizes["sample"], max_bytes)
                if chunks["gene"] != stored and token:
                    token += f"-{tokenize(chunks['gene'])}"
            with warnings.catch_warnings():  # blocks split stored chunks on purpose
                warnings.filterwarnings("ignore", message=".*separate the stored chunks")
                ds[name] = var.chunk(chunks, token=token)
    ds.encoding["source"] = str(path.absolute())
    check_cohort(ds)
    return ds
