"""DESeq2 size factors (median-of-ratios), lazy.

``size_factors(counts, method)`` equals DESeq2 1.38 ``sizeFactors(estimateSizeFactors(dds,
type = method))`` (``estimateSizeFactorsForMatrix``; Anders & Huber 2010, Genome Biology
11:R106):

* ``"ratio"``: s_j = exp(median over genes g of log k_gj - m_g), m_g = mean_j log k_gj (the log
  geometric mean); genes with a zero count in any sample have m_g = -inf and are left out, and
  so are zero counts. Every gene with a zero: DESeq2 stops; here an ``InputError`` (at compute
  time) says to use ``poscounts``.
* ``"poscounts"``: m_g = sum over the positive counts of log k_gj / n (zeros count as log 1),
  genes that are all zero left out; the medians use the positive counts only, and the factors
  are then divided by their geometric mean (DESeq2 passes these ``geoMeans`` in, which makes it
  rescale).

Genes with a missing (NaN) count have no finite m_g and are left out. A sample without a usable
gene (all zero) has no factor: ``InputError`` naming it.

The graph: the log geometric means per gene chunk (one pass), the medians per sample on whole
columns (the matrix rechunked on purpose to all genes x blocks of samples, by
``transforms.per_sample_pass``, reading the counts again rather than holding the first pass's
chunks), and one small task for the rescaling and checks. The median of each column is over
all genes, in sorted order, so the factors do not depend on the gene chunks.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from engine.errors import InputError, preview
from engine.preprocess.transforms import (as_delayed, as_matrix, per_sample, per_sample_pass,
                                         second_pass)

__all__ = ["METHODS", "finish_size_factors", "log_geometric_means", "median_ratios",
           "size_factors", "size_factors_matrix"]

METHODS = ("ratio", "poscounts")


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"size factor method {method!r} is not one of {', '.join(METHODS)} "
                         "(DESeq2 estimateSizeFactors type)")
    return method


def log_geometric_means(block, method: str = "ratio") -> np.ndarray:
    """Per gene of a (genes x samples) block: the log geometric mean of ``method`` (module
    docstring); -inf where DESeq2 leaves the gene out, NaN for a gene with a missing count."""
    # C order: row means of a Fortran-ordered block add in another order (other bits)
    x = np.ascontiguousarray(block, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(x)
        if method == "ratio":
            return logs.mean(axis=1)
        positive = np.where(x > 0, logs, 0.0)
        out = positive.sum(axis=1) / x.shape[1]
    out[(x == 0).all(axis=1)] = -np.inf
    out[np.isnan(x).any(axis=1)] = np.nan
    return out


def median_ratios(block, log_geo) -> np.ndarray:
    """Per sample (column) of a (all genes x samples) block: exp(median of log k - m_g) over
    genes with a finite m_g and k > 0 (NaN when there is none)."""
    x = np.ascontiguousarray(block, dtype=np.float64)
    log_geo = np.asarray(log_geo, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.log(x) - log_geo[:, None]
    usable = np.isfinite(log_geo)[:, None] & (x > 0)
    ratios = np.where(usable, ratios, np.nan)
    out = np.full(x.shape[1], np.nan)
    has = usable.any(axis=0)
    if has.any():
        out[has] = np.exp(np.nanmedian(ratios[:, has], axis=0))
    return out


def finish_size_factors(raw, method: str, log_geo=None, samples=None) -> np.ndarray:
    """The checks and (poscounts) the rescaling to a geometric mean of 1."""
    raw = np.asarray(raw, dtype=np.float64).reshape(-1)
    if log_geo is not None and not np.isfinite(np.asarray(log_geo)).any():
        raise InputError("every gene has a zero (or missing) count in some sample, so DESeq2's "
                         "ratio size factors are undefined; use size factors 'poscounts'"
                         if method == "ratio" else
                         "no gene has a positive count: size factors are undefined")
    bad = ~np.isfinite(raw) | (raw <= 0)
    if bad.any():
        labels = np.arange(raw.size) if samples is None else np.asarray(samples)
        raise InputError(f"no size factor for samples {preview(list(labels[bad]))}: they have "
                         "no positive count in a gene usable for the median of ratios (a "
                         "sample of zeros); remove them")
    if method == "poscounts":
        raw = raw / np.exp(np.mean(np.log(raw)))
    return raw


def size_factors_matrix(counts, method: str = "ratio", samples=None) -> np.ndarray:
    """``size_factors`` of an in-memory (genes x samples) matrix (the kernels in one call)."""
    _check_method(method)
    log_geo = log_geometric_means(counts, method)
    return finish_size_factors(median_ratios(counts, log_geo), method, log_geo, samples)


def size_factors(counts: xr.DataArray, method: str = "ratio") -> xr.DataArray:
    """Lazy DESeq2 size factors of a (gene, sample) count DataArray: float64 along ``sample``
    (module docstring). Computes nothing when called."""
    _check_method(method)
    data = as_matrix(counts, "counts")
    samples = np.asarray(counts["sample"].values) if "sample" in counts.coords else None
    token = tokenize(data, method)
    log_geo = data.map_blocks(log_geometric_means, method=method, drop_axis=1,
                              dtype=np.float64, meta=np.empty((0,), np.float64),
                              name=f"deseq2-log-geometric-means-{token}")
    log_geo_d = as_delayed(log_geo)
    raw = per_sample_pass(second_pass(data, log_geo_d), _median_task, {},
                          "deseq2-median-ratios", log_geo_d)
    factors = dask.delayed(finish_size_factors, pure=True)(
        as_delayed(raw), method, log_geo_d, samples,
        dask_key_name=f"deseq2-size-factors-{token}")
    description = (f"DESeq2 size factor (estimateSizeFactors type={method!r}: median of "
                   "ratios to the geometric mean)")
    return per_sample(counts, da.from_delayed(factors, (data.shape[1],), dtype=np.float64),
                      description)


def _median_task(block, log_geo):
    return median_ratios(block, log_geo)[None, :]


# -- a second pass over the matrix ----------------------------------------------------------------

