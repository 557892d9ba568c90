"""DESeq2's variance-stabilising transformation of counts, lazy.

``vst(counts)`` equals DESeq2 1.38 ``varianceStabilizingTransformation(dds, blind = TRUE,
fitType)`` (``getVarianceStabilizedData``; Anders & Huber 2010, Genome Biology 11:R106):

* size factors (``engine.preprocess.size_factors``, "ratio" unless given), the gene-wise
  dispersions under the design ``~ 1`` (``blind``; with ``blind=False`` the given design matrix)
  and the dispersion trend, as ``engine.stats.deseq2`` computes them (all-zero genes left out);
* for the parametric trend alpha(q) = a + b / q, with q the normalised count,
  log2((1 + b + 2 a q + 2 sqrt(a q (1 + b + a q))) / (4 a)); for ``fit_type="mean"`` (alpha
  constant) (2 asinh(sqrt(alpha q)) - log(alpha) - log 4) / log 2. DESeq2's "local" trend needs
  locfit and is not implemented.

The graph: size factors, a pass for the gene-wise dispersions (gene chunks), one task for the
trend, and a second pass over the counts (read again, ``transforms.second_pass``) for the
transformed values: float32 like the store, computed in float64, with the counts' dims,
coordinates and gene chunks. Missing counts give NaN there (and leave their genes out of the
dispersions).
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from engine.errors import InputError
from engine.preprocess.transforms import second_pass
from engine.preprocess.size_factors import size_factors as lazy_size_factors
from engine.preprocess.transforms import as_delayed, as_matrix, like
from engine.stats.deseq2 import FIT_TYPES, gene_stage, trend_stage

__all__ = ["vst", "vst_block"]


def vst_block(block, sf, trend, fit_type: str = "parametric") -> np.ndarray:
    """The transformed values of a (genes x samples) count block, given the size factors and
    the trend (a, b, ...) of ``engine.stats.deseq2.trend_stage``; float64."""
    q = np.asarray(block, dtype=np.float64) / np.asarray(sf, dtype=np.float64)
    a, b = float(trend[0]), float(trend[1])
    if fit_type == "mean":
        return (2.0 * np.arcsinh(np.sqrt(a * q)) - np.log(a) - np.log(4.0)) / np.log(2.0)
    return np.log((1.0 + b + 2.0 * a * q + 2.0 * np.sqrt(a * q * (1.0 + b + a * q)))
                  / (4.0 * a)) / np.log(2.0)


def vst(counts: xr.DataArray, *, size_factors=None, fit_type: str = "parametric",
        blind: bool = True, design=None) -> xr.DataArray:
    """Lazy DESeq2 variance-stabilised counts (log2 scale), float32 (module docstring).

    ``size_factors``: None (DESeq2 "ratio"), "ratio", "poscounts", or one factor per sample (a
    DataArray along ``sample``, e.g. from ``size_factors()``, or an array). ``blind=False``
    estimates the dispersions under ``design``, a (samples x p) model matrix (DESeq2 uses the
    dataset's design); with ``blind=True`` the design is ``~ 1``.
    """
    if fit_type not in FIT_TYPES:
        raise InputError(f"fit_type {fit_type!r} is not one of {', '.join(FIT_TYPES)} (DESeq2's "
                         "'local' fit needs locfit and is not implemented)")
    data = as_matrix(counts, "counts")
    n = data.shape[1]
    if blind:
        x = np.ones((n, 1))
    else:
        if design is None:
            raise InputError("vst(blind=False) needs the design: a (samples x columns) model "
                             "matrix, e.g. engine.stats.design.design_matrix(ds, '~ group')"
                             ".matrix; or use blind=True")
        x = np.asarray(design, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] != n or x.shape[0] <= x.shape[1]:
            raise InputError(f"design must be a (samples x columns) matrix with {n} rows and "
                             f"fewer columns than rows, got shape {x.shape}")
    if size_factors is None or isinstance(size_factors, str):
        sf = lazy_size_factors(counts, size_factors or "ratio").data
    elif isinstance(size_factors, xr.DataArray):
        if size_factors.dims != ("sample",) or size_factors.size != n:
            raise InputError(f"size_factors must be one value per sample (dims ('sample',), {n} "
                             f"values), got dims {size_factors.dims} with {size_factors.size}")
        sf = size_factors.data
    else:
        sf = np.asarray(size_factors, dtype=np.float64)
        if sf.shape != (n,) or not (np.isfinite(sf) & (sf > 0)).all():
            raise InputError(f"size_factors must be {n} finite positive numbers (one per sample)")
    sf_d = as_delayed(sf) if isinstance(sf, da.Array) else sf
    token = tokenize(data, sf, x, fit_type)
    genes = second_pass(data, sf_d).map_blocks(
        gene_stage, sf_d, x=x, dtype=np.float64, meta=np.empty((0, 0), np.float64),
        chunks=(data.chunks[0], (2,)), name=f"vst-gene-wise-{token}")
    trend = dask.delayed(trend_stage, pure=True)(
        as_delayed(genes), fit_type=fit_type, m=x.shape[0], p=x.shape[1], prior=False,
        dask_key_name=f"vst-trend-{token}")
    values = second_pass(data, trend).map_blocks(
        _vst_task, sf_d, trend, fit_type=fit_type, dtype=np.float32,
        meta=np.empty((0, 0), np.float32), name=f"vst-transform-{token}")
    return like(counts, values, f"DESeq2 variance-stabilising transformation (log2 scale; "
                                f"fit_type {fit_type!r}, {'blind' if blind else 'design'})")


def _vst_task(block, sf, trend, *, fit_type):
    return vst_block(block, sf, trend, fit_type).astype(np.float32)
