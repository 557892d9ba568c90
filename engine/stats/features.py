"""What every per-feature analysis shares: sample annotations, the feature matrix, strata,
mapping a numpy kernel over feature chunks, and the result Dataset.

A *feature* is a row the analysis runs over: a gene of a (gene, sample) variable such as
``expression``, a gene set of a score matrix made earlier in the job (dimension ``gene_set``),
or a numeric sample annotation such as an immune-cell fraction (then the result's dimension is
``feature``). Kernels are numpy
functions of a (features x samples) float block; the wrappers here keep them chunk-local.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dask
import dask.array as da
from dask.base import tokenize
import numpy as np
import pandas as pd
import xarray as xr

from engine.errors import InputError, preview
from engine.stats import multitest

MISSING_LABELS = ("", "nan", "NA")


def sample_annotation(ds: xr.Dataset, name: str, what: str = "annotation") -> np.ndarray:
    """The values of the sample annotation ``name``; one clear error when there is none."""
    if name not in ds or ds[name].dims != ("sample",):
        names = sorted(n for n, v in ds.data_vars.items() if v.dims == ("sample",))
        raise InputError(f"{what} {name!r} is not a sample annotation of the cohort "
                         f"(available: {preview(names, 30)})")
    return np.asarray(ds[name].values)


def numeric_annotation(ds: xr.Dataset, name: str, what: str = "annotation") -> np.ndarray:
    """A numeric sample annotation as float64, NaN where missing; refuses text annotations."""
    values = sample_annotation(ds, name, what)
    if values.dtype.kind in "fiu":
        return values.astype(np.float64)
    text = sorted({str(v) for v in values if str(v) not in MISSING_LABELS})
    raise InputError(f"{what} {name!r} is not numeric (values: {preview(text, 8)}); "
                     "choose a numeric annotation")


def sample_frame(ds: xr.Dataset, names: Sequence[str]) -> pd.DataFrame:
    """Sample annotations as a DataFrame indexed by sample position; missing text is NaN."""
    columns = {}
    for name in names:
        values = sample_annotation(ds, name)
        if values.dtype.kind not in "fiu":
            values = pd.array([None if str(v) in MISSING_LABELS else str(v) for v in values],
                              dtype=object)
        columns[name] = values
    return pd.DataFrame(columns, index=pd.RangeIndex(ds.sizes["sample"]))


@dataclass(frozen=True)
class Stratum:
    label: str
    samples: np.ndarray  # positions along ``sample``


def strata(ds: xr.Dataset, stratify_by: str | None) -> list[Stratum]:
    """One stratum of all samples, or one per value of ``stratify_by`` (missing values left out)."""
    if stratify_by is None:
        return [Stratum("all", np.arange(ds.sizes["sample"]))]
    values = sample_annotation(ds, stratify_by, "stratify_by")
    labels = np.array([str(v) for v in values], dtype=object)
    present = sorted(set(labels) - set(MISSING_LABELS))
    if not present:
        raise InputError(f"stratify_by {stratify_by!r} has no values")
    return [Stratum(level, np.flatnonzero(labels == level)) for level in present]


@dataclass(frozen=True)
class Features:
    """The rows an analysis runs over: ``data`` is a dask (features x samples) float array."""

    data: da.Array
    dim: str  # "gene", "gene_set" or "feature"
    labels: np.ndarray


def feature_matrix(ds: xr.Dataset, *, variable: str = "expression",
                   features: Sequence[str] | None = None) -> Features:
    """Genes of the (gene, sample) ``variable``, or, with ``features``, numeric annotations."""
    if features:
        rows = np.stack([numeric_annotation(ds, f, "feature") for f in features])
        return Features(da.from_array(rows, chunks=rows.shape), "feature",
                        np.array(list(features), dtype=object))
    row_dim = _row_dim(ds, variable)
    x = ds[variable].data
    if not isinstance(x, da.Array):
        x = da.from_array(np.asarray(x), chunks=x.shape)
    # A no-op for stores that follow the contract (chunks along genes only).
    return Features(x.rechunk({1: -1}), row_dim, np.asarray(ds[row_dim].values).astype(object))


ROW_DIMS = ("gene", "gene_set")


def _row_dim(ds: xr.Dataset, variable: str) -> str:
    """``gene`` for the cohort's matrices, ``gene_set`` for a score matrix of an earlier
    analysis of the job (a score matrix is just another (feature, sample) variable)."""
    if variable not in ds or len(ds[variable].dims) != 2 or ds[variable].dims[1] != "sample" \
            or ds[variable].dims[0] not in ROW_DIMS:
        names = sorted(n for n, v in ds.data_vars.items()
                       if len(v.dims) == 2 and v.dims[1] == "sample" and v.dims[0] in ROW_DIMS)
        raise InputError(f"variable {variable!r} is not a (gene, sample) variable of the cohort "
                         f"nor the score matrix of an earlier analysis (available: "
                         f"{preview(names, 10)})")
    return ds[variable].dims[0]


def gene_row(ds: xr.Dataset, gene: str, variable: str = "expression"):
    """One gene's values across samples (float64), e.g. the partner of a correlation screen;
    lazy (a ``dask.delayed``) when the variable is a Dask array, so building reads nothing."""
    row_dim = _row_dim(ds, variable)
    ids = np.asarray(ds[row_dim].values).astype(str)
    hit = np.flatnonzero(ids == str(gene))
    if hit.size == 0:
        raise InputError(f"gene {gene!r} is not in the cohort (genes look like: "
                         f"{preview(list(ids[:5]))})")
    row = ds[variable].data[hit[0]]
    if isinstance(row, da.Array):
        return named_task("gene-row", np.asarray, as_delayed(row), dtype=np.float64)
    return np.asarray(row, dtype=np.float64)


def as_delayed(x: da.Array):
    """A lazy array as one ``Delayed`` numpy array that tasks can take whole. Built from its
    blocks without graph optimisation, so the tasks keep the array's own keys: the same keys
    every time the same inputs are planned (a sweep's units share them), and a peer-to-peer
    rechunk in the graph keeps its keys. Never pass a Dask array to ``dask.delayed(f)``
    itself: Dask then gives the array's whole graph fresh random keys (``ProhibitReuse``), so
    its work is neither shared nor deterministic."""
    return x.rechunk(-1).to_delayed(optimize_graph=False).ravel()[0]


def named_task(name: str, fn: Callable, /, *args, nout: int | None = None, **kwargs):
    """``dask.delayed(fn, pure=True)(*args, **kwargs)`` as one task keyed ``<name>-<token>``.

    ``name`` (kebab case, e.g. ``gsea-phenotype-null``) is what the Dask dashboard shows for
    the task; Dask itself would show the function's name. The token is ``tokenize`` of ``fn``
    and every argument (a ``Delayed`` argument by its key), so the key is the same whenever
    the same inputs are planned and differs when any input differs, as Dask's own key would.
    Arguments follow ``dask.delayed``'s rules: pass Dask arrays through :func:`as_delayed`.
    """
    token = tokenize(fn, args, kwargs, nout)
    return dask.delayed(fn, pure=True, nout=nout)(*args, dask_key_name=f"{name}-{token}",
                                                  **kwargs)


def map_features(x: da.Array, fn: Callable[..., np.ndarray], n_fields: int, /, *,
                 name: str, **kwargs) -> da.Array:
    """``fn(block, **kwargs)`` on every feature chunk -> a (features, n_fields) float64 array.

    ``fn`` takes a (features x samples) numpy block and returns (features, n_fields) float64.
    Samples must be one chunk (``feature_matrix`` ensures it). ``name`` labels the tasks; a
    token of the inputs makes the keys unique, so two analyses in one graph never share keys.
    """
    return x.map_blocks(
        _call, fn=fn, kwargs=kwargs, dtype=np.float64,
        meta=np.empty((0, 0), np.float64),  # no kernel call to infer the output type
        chunks=(x.chunks[0], (n_fields,)), name=f"{name}-{tokenize(x, fn, kwargs)}")


def _call(block, *, fn, kwargs):
    return fn(np.asarray(block), **kwargs)


def adjust(p: da.Array, method: str = "BH") -> da.Array:
    """Adjusted p-values of a lazy 1-D array: the one global step (a single 1-D task, shown
    as ``p-adjust-<method>`` on the dashboard)."""
    fn = multitest.METHODS[method]
    return p.rechunk(-1).map_blocks(fn, dtype=np.float64, meta=np.empty((0,), np.float64),
                                    token=f"p-adjust-{method.lower()}").rechunk(p.chunks)


def stratified_result(columns: dict[str, list[da.Array]], features: Features,
                      groups: list[Stratum], stratify_by: str | None, *, descriptions: dict,
                      attrs: dict) -> xr.Dataset:
    """A result from per-stratum columns (one array per stratum, in the order of ``groups``):
    dims ("stratum", feature) with ``stratify_by``, else (feature,) from the single stratum."""
    if stratify_by is None:
        return result_dataset({c: arrays[0] for c, arrays in columns.items()}, features,
                              descriptions=descriptions, attrs=attrs)
    return result_dataset({c: da.stack(arrays) for c, arrays in columns.items()}, features,
                          descriptions=descriptions, attrs={**attrs, "stratify_by": stratify_by},
                          extra_dims={"stratum": [g.label for g in groups]})


def result_dataset(columns: dict[str, da.Array], features: Features, *, descriptions: dict,
                   attrs: dict, extra_dims: dict[str, Sequence] | None = None) -> xr.Dataset:
    """A lazy result Dataset whose variables are the table's columns.

    Each array has the feature axis last, after ``extra_dims`` (e.g. ``{"stratum": [...]}``).
    The attribute ``columns`` keeps the column order (a Zarr store lists variables by name).
    """
    extra_dims = extra_dims or {}
    dims = (*extra_dims, features.dim)
    coords = {features.dim: features.labels,
              **{d: np.array([str(v) for v in vals], dtype=object)
                 for d, vals in extra_dims.items()}}
    return xr.Dataset(
        {col: xr.DataArray(arr, dims=dims, attrs={"description": descriptions[col]})
         for col, arr in columns.items()},
        coords=coords, attrs={**attrs, "columns": list(columns)})


def by_sample(x: da.Array, samples_per_chunk: int = 256) -> da.Array:
    """The one deliberate rechunk of the engine: all features in every chunk, samples in blocks.

    Per-sample methods (ssGSEA and GSVA ranks, quantile normalisation) need whole columns while
    the store is chunked along genes (README: cohort store). Matrices above
    ``P2P_RECHUNK_BYTES`` use Dask's peer-to-peer rechunk when a distributed client is active
    as the graph is built (``cohort run`` always has one): it stages the pieces on the workers'
    disks, so memory stays flat when the matrix is larger than the workers' memory (ssGSEA of
    20,000 x 50,000 float32, 4 GB, on 2 workers of 1.5 GB: peak under 1.1 GB per worker, as at
    1.6 GB; ``benchmarks/bench_ssgsea_memory.py``). Smaller matrices, and any matrix without a
    distributed client (p2p cannot run on the threaded scheduler; Dask's own rechunk makes the
    same check), use the in-memory task rechunk. Both give the same blocks. The output is named
    ``by-sample`` so it shows as such on the dashboard.
    """
    samples_per_chunk = max(1, min(int(samples_per_chunk), x.shape[1]))
    method = "tasks"
    if x.nbytes > P2P_RECHUNK_BYTES:
        try:
            from distributed import default_client

            default_client()
            method = "p2p"
        except (ImportError, ValueError):  # no distributed client
            pass
    out = x.rechunk({0: -1, 1: samples_per_chunk}, method=method)
    return out.map_blocks(np.asarray, dtype=x.dtype,
                          name=f"by-sample-{tokenize(x, samples_per_chunk)}")


#: Matrices larger than this are rechunked peer-to-peer (on disk) by ``by_sample``.
P2P_RECHUNK_BYTES = 2 * 2**30
