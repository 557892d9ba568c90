"""Transforms of a (gene, sample) matrix: log2, quantile normalisation, upper-quartile scaling
and per-gene z-scores.

Every public function takes a ``(gene, sample)`` DataArray backed by Dask (as
``engine.open_cohort(path)["expression"]`` gives it: float32, chunked along genes with all
samples in every chunk) and returns a lazy DataArray of the same shape, dims, coordinates and
gene chunks, float32 like the store, computed in float64. Calling them computes nothing.
NaN means missing and stays NaN.

Per-sample methods (quantile normalisation, upper-quartile scaling) need whole columns: they
rechunk on purpose, in one place (``engine.stats.features.by_sample``: all genes x blocks of
``SAMPLES_PER_BLOCK`` samples), take one small global step (the quantile target, the sample
quantiles), and map back to the input's gene chunks. The second pass over the matrix reads
the input again (``second_pass``) instead of holding the first pass's chunks, so memory stays
at a few chunks per task (plus what the rechunk itself stages). Results do not depend on the
input's gene chunks nor on the scheduler: every sum runs over whole columns or whole rows in
an order fixed by the algorithm.

The lazy helpers at the end (``as_matrix``, ``second_pass``, ``to_gene_chunks``, ...) are
shared with ``engine.preprocess.counts``.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import is_dask_collection, tokenize
from dask._task_spec import Task, TaskRef, convert_legacy_graph
from dask.core import flatten
from dask.highlevelgraph import HighLevelGraph

from engine.errors import InputError
from engine.stats import features
from engine.stats.features import (  # noqa: F401 (as_delayed, named_task: re-exported)
    as_delayed, by_sample, named_task)

__all__ = [
    "SAMPLES_PER_BLOCK",
    "column_quantiles",
    "log2",
    "log2_block",
    "normalize_quantiles",
    "quantile_distribute",
    "quantile_normalize",
    "quantile_target",
    "quantile_target_partial",
    "upper_quartile",
    "upper_quartile_block",
    "zscore",
    "zscore_block",
]

#: Samples per block of the per-sample pass: a constant of the algorithms (the quantile
#: target's partial sums run over these blocks in order), so results never depend on the
#: store's chunks or the workers. 20,000 genes x 128 samples is ~20 MB per float64 array.
SAMPLES_PER_BLOCK = 128

#: preprocessCore's tolerance for "an index that is an integer" (4 * DOUBLE_EPS, qnorm.c).
_INDEX_FUZZ = 4 * 2.220446e-16


# -- log2 --------------------------------------------------------------------------------------

def log2_block(x, offset: float = 1.0) -> np.ndarray:
    """log2(x + offset) in float64; NaN where x + offset <= 0 (never -inf) or x is NaN."""
    shifted = np.asarray(x, dtype=np.float64) + offset
    out = np.full(shifted.shape, np.nan)
    np.log2(shifted, out=out, where=shifted > 0)
    return out


def log2(x: xr.DataArray, offset: float = 1.0) -> xr.DataArray:
    """Lazy log2(x + offset) of a (gene, sample) matrix, float32; x + offset <= 0 gives NaN."""
    offset = _finite_number(offset, "log2 offset")
    data = as_matrix(x)
    out = data.map_blocks(_as_float32, fn=log2_block, kwargs={"offset": offset},
                          dtype=np.float32, name=f"log2-transform-{tokenize(data, offset)}")
    return like(x, out, f"log2(x + {offset:g}); NaN where x + offset <= 0")


# -- quantile normalisation (preprocessCore normalize.quantiles) --------------------------------

def quantile_target_partial(block) -> tuple[np.ndarray, int]:
    """One block's share of the quantile target: (sum over its columns of each column's sorted
    values, number of columns summed).

    As preprocessCore ``qnorm_c_determine_target`` (1.60, called by ``normalize.quantiles``):
    a column without missing values contributes its sorted values; a column with k < rows
    present values contributes its sorted present values linearly interpolated at the
    positions 1 + (k - 1) i / (rows - 1), i = 0..rows-1 (R ``quantile(type=7)`` of the present
    values at probabilities i / (rows - 1)). A column without any value contributes nothing
    (preprocessCore reads undefined memory there; here it is left out of the mean).
    """
    r = _columns_as_rows(block)
    n = r.shape[1]
    s = np.sort(r, axis=1).astype(np.float64)  # NaN last
    k = n - np.isnan(s).sum(axis=1)
    some = np.flatnonzero((k > 0) & (k < n))
    if some.size:
        pct = np.arange(n, dtype=np.float64) / (n - 1)
        position = 1.0 + (k[some].astype(np.float64)[:, None] - 1.0) * pct[None, :]  # 1-based
        s[some] = _interpolate(s[some], position, n, s[some, k[some] - 1])
    used = k > 0
    if not used.all():
        s = s[used]
    return s.sum(axis=0), int(used.sum())  # samples added one after another


def quantile_target(partials) -> np.ndarray:
    """The quantile target from the blocks' partials (in block order): the mean over columns
    of the sorted columns, NaN-free and sorted, as preprocessCore uses it."""
    partials = list(partials)
    sums = np.stack([p[0] for p in partials])  # (blocks, rows): added block by block
    total = np.add.reduce(sums, axis=0)
    count = sum(p[1] for p in partials)
    with np.errstate(invalid="ignore", divide="ignore"):
        target = total / count
    return np.sort(target[~np.isnan(target)])


def quantile_distribute(block, target) -> np.ndarray:
    """Each column of ``block`` mapped onto ``target`` (preprocessCore ``qnorm_c_using_target``,
    the second half of ``normalize.quantiles``), float64.

    Ranks are R's average ranks over the column's present values. A column without missing
    values (and a target as long as the column) takes target[r] at integer rank r and, at a
    tied half rank, the mean of the two target values around it (preprocessCore's "ties"
    rule: a run of tied values gets one value). A column with k present values puts rank r at
    position 1 + (len(target) - 1) (r - 1) / (k - 1) of the target, linearly interpolated; a
    single present value gets the largest target value (preprocessCore's position is then
    0/0, undefined in C; its 1.60.2 build on Debian x86-64 gives that value). Missing values
    stay NaN.
    """
    r = _columns_as_rows(block)
    target = np.asarray(target, dtype=np.float64)
    cols, rows = r.shape
    n_target = target.size
    if rows == 0 or cols == 0 or n_target == 0:
        return np.full((rows, cols), np.nan)
    # tied values get one value whatever their order, so the sort need not be stable
    order = np.argsort(r, axis=1)  # NaN last
    s = np.take_along_axis(r, order, axis=1)
    present = ~np.isnan(s)
    k = present.sum(axis=1)
    ranks = _sorted_average_ranks(s)
    values = np.full((cols, rows), np.nan)
    complete = (k == rows) & (n_target == rows)
    if complete.any():
        rank = ranks[complete]
        low = np.floor(rank)
        i0 = low.astype(np.intp) - 1
        upper = target[np.minimum(i0 + 1, n_target - 1)]
        values[complete] = np.where(rank - low > 0.4, 0.5 * (target[i0] + upper), target[i0])
    rest = np.flatnonzero(~complete & (k > 0))
    if rest.size:
        with np.errstate(invalid="ignore", divide="ignore"):
            pct = (ranks[rest] - 1.0) / (k[rest].astype(np.float64)[:, None] - 1.0)
        position = 1.0 + (n_target - 1.0) * pct
        v = _interpolate(target[None, :], position, n_target, np.full(rest.size, target[-1]))
        # one present value: preprocessCore's position is 0/0; its Debian x86-64 build
        # (1.60.2) gives the largest target value, and so does this
        v[k[rest] == 1] = target[-1]
        values[rest] = v
    values[~present] = np.nan
    out = np.empty((cols, rows))
    np.put_along_axis(out, order, values, axis=1)
    return out.T


def normalize_quantiles(x) -> np.ndarray:
    """In-memory preprocessCore ``normalize.quantiles(x)`` (columns = samples), float64: the
    same block kernels as ``quantile_normalize`` on one block of all samples."""
    x = _float64_block(x)
    blocks = [x[:, j:j + SAMPLES_PER_BLOCK] for j in range(0, x.shape[1], SAMPLES_PER_BLOCK)]
    target = quantile_target([quantile_target_partial(b) for b in blocks])
    return quantile_distribute(x, target)


def quantile_normalize(x: xr.DataArray) -> xr.DataArray:
    """Lazy quantile normalisation, exactly preprocessCore ``normalize.quantiles(x)`` (1.60,
    ``ties=TRUE``; Bolstad et al. 2003, Bioinformatics 19:185), with its tie and NA handling
    (see ``quantile_target_partial`` and ``quantile_distribute``).

    Columns are sorted whole: the matrix is rechunked on purpose to all genes x blocks of
    ``SAMPLES_PER_BLOCK`` samples (``by_sample``); the target (mean of the sorted columns) is
    one global reduction over the blocks in block order; a second pass re-reads the input,
    ranks every column against the target and maps the result back to the input's gene
    chunks. The result does not depend on the input's chunks.
    """
    data = as_matrix(x)
    rows, cols = data.shape
    if rows == 0 or cols == 0:
        return like(x, data.astype(np.float32), QUANTILE_DESCRIPTION)
    token = tokenize(data)
    first = by_sample(data, SAMPLES_PER_BLOCK)
    partials = [named_task("quantile-target-partial", quantile_target_partial, b)
                for b in first.to_delayed(optimize_graph=False).ravel()]
    target = dask.delayed(quantile_target, pure=True)(partials,
                                                       dask_key_name=f"quantile-target-{token}")
    second = by_sample(second_pass(data, target), SAMPLES_PER_BLOCK)
    normalised = second.map_blocks(_as_float32, target, fn=quantile_distribute, kwargs={},
                                   dtype=np.float32, name=f"quantile-distribute-{token}")
    return like(x, to_gene_chunks(normalised, data.chunks[0]), QUANTILE_DESCRIPTION)


QUANTILE_DESCRIPTION = "quantile normalised (preprocessCore normalize.quantiles, ties averaged)"


# -- upper-quartile scaling ---------------------------------------------------------------------

def column_quantiles(block, p: float, use=None) -> np.ndarray:
    """R ``quantile(x[use], p, type=7)`` of every column (NaN excluded; NaN if none is left).

    ``use``: None (all present values), a bool (rows,) mask or a bool block of the same shape.
    """
    x = _float64_block(block)
    rows, cols = x.shape
    if rows == 0:
        return np.full(cols, np.nan)
    if use is not None:
        use = np.asarray(use, dtype=bool)
        x = np.where(use if use.ndim == 2 else use[:, None], x, np.nan)
    s = np.sort(x, axis=0)  # NaN last
    n = rows - np.isnan(s).sum(axis=0)
    index = 1.0 + np.maximum(n - 1, 0) * float(p)
    lo = np.floor(index)
    hi = np.ceil(index)
    columns = np.arange(cols)
    x_lo = s[np.clip(lo.astype(np.intp) - 1, 0, rows - 1), columns]
    x_hi = s[np.clip(hi.astype(np.intp) - 1, 0, rows - 1), columns]
    h = index - lo
    q = np.where((index > lo) & (x_hi != x_lo), (1 - h) * x_lo + h * x_hi, x_lo)
    q[n == 0] = np.nan
    return q


def upper_quartile_block(x, quantiles) -> np.ndarray:
    """Each column j of ``x`` divided by its quantile q_j and multiplied by mean(q) (over the
    samples with a defined q_j), float64."""
    q = np.asarray(quantiles, dtype=np.float64)
    defined = np.isfinite(q) & (q > 0)
    scale = q[defined].mean() if defined.any() else np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        return _float64_block(x) / np.where(defined, q, np.nan) * scale


def upper_quartile(x: xr.DataArray, p: float = 0.75) -> xr.DataArray:
    """Lazy upper-quartile scaling of a linear-scale matrix (Bullard et al. 2010, BMC
    Bioinformatics 11:94, "upper-quartile": the total count replaced by the upper quartile of
    the counts different from 0; the normalisation of TCGA's RSEM "normalized" values).

    Sample j is divided by q_j, the ``p`` quantile (R ``quantile(type=7)``) of its values
    above 0 (zeros and missing values excluded), and multiplied by the mean of the q_j, so the
    matrix keeps its scale. A sample without a value above 0 is NaN. (edgeR's
    ``calcNormFactors(method="upperquartile")`` is a different thing: a factor from the
    quantile over genes that are not zero in every sample, ``counts.norm_factors``.)

    The quantiles need whole columns (the on-purpose rechunk, ``by_sample``); the scaling is a
    second pass over the input's own gene chunks.
    """
    p = _probability(p, "upper_quartile p")
    data = as_matrix(x)
    if 0 in data.shape:
        return like(x, data.astype(np.float32), "upper-quartile scaled (empty)")
    token = tokenize(data, p)
    quantiles = as_delayed(per_sample_pass(data, _positive_quantile_task, {"p": p},
                                           "upper-quartile-quantile"))
    scaled = second_pass(data, quantiles).map_blocks(
        _as_float32, quantiles, fn=upper_quartile_block, kwargs={}, dtype=np.float32,
        name=f"upper-quartile-scale-{token}")
    return like(x, scaled, f"upper-quartile scaled (each sample / its {p:g} quantile of values "
                           "above 0 x the mean of those quantiles)")


def _positive_quantile_task(block, *, p):
    x = _float64_block(block)
    return column_quantiles(x, p, use=x > 0)


# -- z-scores ----------------------------------------------------------------------------------

def zscore_block(x, ddof: int = 1) -> np.ndarray:
    """Per row: (x - mean) / sd over the present values, sd with denominator n - ddof.

    NaN for rows with fewer than ddof + 1 values and for constant rows (all present values
    equal: a float mean of equal values need not equal them, so this is tested directly).
    """
    x = _float64_block(x)
    out = np.full(x.shape, np.nan)
    if x.size == 0:
        return out
    present = ~np.isnan(x)
    n = present.sum(axis=1)
    filled = np.where(present, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=1) / n
        dev = np.where(present, x - mean[:, None], 0.0)
        sd = np.sqrt((dev * dev).sum(axis=1) / (n - ddof))
    low = np.where(present, x, np.inf).min(axis=1)
    high = np.where(present, x, -np.inf).max(axis=1)
    ok = (n > ddof) & (low != high) & np.isfinite(sd) & (sd > 0)
    out[ok] = dev[ok] / sd[ok, None]
    out[~present] = np.nan
    return out


def zscore(x: xr.DataArray, ddof: int = 1) -> xr.DataArray:
    """Lazy per-gene z-scores across samples (R ``t(scale(t(x)))`` with missing values left
    out per gene), float32; constant genes and genes with <= ddof values are NaN."""
    if ddof not in (0, 1) or isinstance(ddof, bool):
        raise InputError(f"zscore ddof must be 0 or 1, got {ddof!r}")
    data = as_matrix(x)
    out = data.map_blocks(_as_float32, fn=zscore_block, kwargs={"ddof": int(ddof)},
                          dtype=np.float32, name=f"zscore-genes-{tokenize(data, ddof)}")
    return like(x, out, f"z-score per gene across samples (sd with n - {int(ddof)})")


# -- kernels' helpers --------------------------------------------------------------------------

def _float64_block(x) -> np.ndarray:
    """A C-contiguous float64 copy or view: reductions then add in the same order whatever
    layout the block arrived in."""
    return np.ascontiguousarray(x, dtype=np.float64)


def _columns_as_rows(block) -> np.ndarray:
    """The block's columns (samples) as C-contiguous rows: sorting along rows is faster.
    float32 stays float32 (sorting and ranking need only order and equality, which the exact
    float32 -> float64 conversion keeps); anything else becomes float64."""
    b = np.asarray(block)
    return np.ascontiguousarray(b.T, dtype=np.float32 if b.dtype == np.float32 else np.float64)


def _sorted_average_ranks(s: np.ndarray) -> np.ndarray:
    """R's average ranks along each row of ``s``, rows sorted (NaN last; their ranks are
    meaningless): a run of ties at 0-based positions i..j gets (i + j + 2) / 2."""
    n = s.shape[1]
    idx = np.arange(n)[None, :]
    starts = np.ones(s.shape, dtype=bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    ends = np.ones(s.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, idx, n)[:, ::-1], axis=1)[:, ::-1]
    return (first + last + 2) / 2.0


def _interpolate(sorted_rows: np.ndarray, position: np.ndarray, bound: int,
                 last: np.ndarray) -> np.ndarray:
    """preprocessCore's linear interpolation of sorted rows at 1-based ``position``s (one row
    of positions per row; a single row serves all): a position within 4 eps of an integer is
    that integer; a fractional position outside (0, ``bound``) takes ``last`` (the row's last
    present value) beyond the end and the first value before the start."""
    m = sorted_rows.shape[1]
    with np.errstate(invalid="ignore"):
        low = np.floor(position + _INDEX_FUZZ)
        delta = position - low
        delta[np.abs(delta) <= _INDEX_FUZZ] = 0.0
        i0 = np.clip(np.nan_to_num(low, nan=1.0).astype(np.intp) - 1, 0, m - 1)
        a = np.take_along_axis(sorted_rows, i0, axis=1)
        b = np.take_along_axis(sorted_rows, np.minimum(i0 + 1, m - 1), axis=1)
        out = np.where(delta == 0.0, a, (1.0 - delta) * a + delta * b)
        beyond = (delta != 0.0) & ~((low < bound) & (low > 0))
        out = np.where(beyond & (low >= bound), np.asarray(last)[:, None], out)
        out = np.where(beyond & ~(low >= bound), sorted_rows[:, :1], out)
    return out


def _as_float32(block, *args, fn, kwargs):
    return fn(np.asarray(block), *args, **kwargs).astype(np.float32)


# -- lazy plumbing shared with engine.preprocess.counts -----------------------------------------

def as_matrix(x, what: str = "the matrix") -> da.Array:
    """The Dask array of a (gene, sample) DataArray, all samples in every chunk; one
    ``InputError`` naming the problem otherwise (nothing is computed)."""
    if not isinstance(x, xr.DataArray):
        raise InputError(f"{what} must be an xarray DataArray with dims ('gene', 'sample'), e.g. "
                         f"engine.open_cohort(path)['expression']; got {type(x).__name__}")
    if x.dims != ("gene", "sample"):
        raise InputError(f"{what} must have dims ('gene', 'sample'), got {x.dims} "
                         "(transpose it with .transpose('gene', 'sample'))")
    if x.dtype.kind not in "iuf":
        raise InputError(f"{what} must be numeric (integer or float), got dtype {x.dtype}")
    data = x.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(max(1, x.shape[0]), -1))
    # a no-op for stores that follow the contract (chunks along genes only)
    return data.rechunk({1: -1})


def like(x: xr.DataArray, data: da.Array, description: str) -> xr.DataArray:
    """A (gene, sample) result with ``x``'s coordinates and a description."""
    return xr.DataArray(data, dims=x.dims, coords=x.coords, name=x.name,
                        attrs={"description": description})


def per_sample(x: xr.DataArray, data, description: str) -> xr.DataArray:
    """A lazy 1-D result along ``sample`` with ``x``'s sample coordinates."""
    coords = {name: c for name, c in x.coords.items() if c.dims == ("sample",)}
    return xr.DataArray(data, dims=("sample",), coords=coords, attrs={"description": description})


def per_gene(x: xr.DataArray, data, description: str) -> xr.DataArray:
    """A lazy 1-D result along ``gene`` with ``x``'s gene coordinates."""
    coords = {name: c for name, c in x.coords.items() if c.dims == ("gene",)}
    return xr.DataArray(data, dims=("gene",), coords=coords, attrs={"description": description})


def second_pass(data: da.Array, *after) -> da.Array:
    """``data`` computed again (its chunks read again) once the lazy values among ``after``
    are computed: a copy of its graph under new keys whose first tasks wait for ``after``.

    A pass that needs a global step of an earlier pass (the size factors, the dispersion
    trend) would otherwise share the earlier pass's chunks, which the scheduler then holds
    until the global step is done: the whole matrix. This is what
    ``transforms.second_pass`` does with ``dask.graph_manipulation.bind``, which in dask
    2026.8 leaves the keys inside ``getitem`` tasks and aliases unrenamed (the graph of an
    array indexed along genes or samples, e.g. ``ds.isel(sample=...)``, then misses a
    dependency at compute time); here the graph is copied node by node with
    ``GraphNode.substitute``. Without a lazy value in ``after``, ``data`` itself.
    """
    lazy = [a for a in after if is_dask_collection(a)]
    if not lazy:
        return data
    token = tokenize(data, *lazy)

    def renamed(key):
        if isinstance(key, tuple):
            return (f"{key[0]}-again-{token}", *key[1:])
        return f"{key}-again-{token}"

    graph = convert_legacy_graph(dict(data.__dask_graph__()))
    subs = {key: renamed(key) for key in graph}
    waits = [TaskRef(key) for a in lazy for key in flatten(a.__dask_keys__())]
    copied = {}
    for key, node in graph.items():
        node = node.substitute(subs, key=subs[key])
        if not node.dependencies:  # a first task (a read, or the data it reads from)
            inner = node.substitute({}, key=renamed(subs[key]))
            node = Task(subs[key], _after, inner, *waits)
        copied[subs[key]] = node
    name = renamed(data.name)
    layers = HighLevelGraph.from_collections(name, copied, dependencies=lazy)
    return da.Array(layers, name, data.chunks, meta=data._meta)


def _after(value, *_):
    return value


def per_sample_pass(data: da.Array, fn, kwargs: dict, name: str, *args, fields: int = 1,
                    columns: bool = False) -> da.Array:
    """``fn(block, *args, **kwargs) -> (fields, block samples)`` on whole columns: the matrix
    rechunked on purpose to all genes x ``SAMPLES_PER_BLOCK`` samples (``by_sample``). With
    ``columns``, ``fn`` also gets ``columns=slice(...)``, the block's sample positions. A lazy
    float64 array in one chunk: (samples,) for one field, else (fields, samples); ``args``
    may be delayed values (``as_delayed``)."""
    blocks = by_sample(data, SAMPLES_PER_BLOCK)
    out = blocks.map_blocks(_per_column, *args, fn=fn, kwargs=kwargs, with_columns=columns,
                            fields=fields,
                            dtype=np.float64, meta=np.empty((0, 0), np.float64),
                            chunks=((fields,), blocks.chunks[1]),
                            name=f"{name}-{tokenize(data, fn, kwargs, args, fields)}")
    out = out.rechunk(-1)
    return out[0] if fields == 1 else out


def _per_column(block, *args, fn, kwargs, with_columns, fields, block_info=None):
    if with_columns:
        start, stop = block_info[0]["array-location"][1]
        kwargs = {**kwargs, "columns": slice(start, stop)}
    out = np.asarray(fn(np.asarray(block), *args, **kwargs), dtype=np.float64)
    return out.reshape(fields, np.asarray(block).shape[1])


def to_gene_chunks(x: da.Array, gene_chunks) -> da.Array:
    """The inverse of ``by_sample``: back to ``gene_chunks`` x all samples, peer-to-peer (on
    disk) above ``features.P2P_RECHUNK_BYTES`` when a distributed client is active, as
    ``by_sample``."""
    method = "tasks"
    if x.nbytes > features.P2P_RECHUNK_BYTES:
        try:
            from distributed import default_client

            default_client()
            method = "p2p"
        except (ImportError, ValueError):  # no distributed client
            pass
    return x.rechunk((tuple(gene_chunks), (x.shape[1],)), method=method)


def _finite_number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _probability(value, what: str) -> float:
    value = _finite_number(value, what)
    if not 0.0 < value < 1.0:
        raise InputError(f"{what} must be between 0 and 1 (exclusive), got {value!r}")
    return value
