"""Count normalisation with edgeR 3.40 semantics: library sizes, ``calcNormFactors`` (TMM,
TMMwsp, RLE, upperquartile, none), ``cpm`` (raw and log2 with the prior count) and
``filterByExpr``.

Counts come as a ``(gene, sample)`` DataArray backed by Dask (integer or float, e.g.
``ds["counts"]`` or ``ds["expression"]`` of a store ingested with ``--scale counts``), chunked
along genes with all samples in every chunk. Every public function is lazy: it returns a
DataArray whose computation has not started (per-sample results are 1-D along ``sample``,
float64; matrices are float32 like the store, computed in float64).

Global steps are explicit: the library sizes (column sums), the all-zero genes edgeR leaves
out, TMM's reference sample and its column, the final rescaling to a geometric mean of 1.
Per-sample statistics over all genes (quantiles, medians, the trimmed means) need whole
columns: the matrix is rechunked on purpose to all genes x blocks of
``transforms.SAMPLES_PER_BLOCK`` samples (``by_sample``) for them, and every later pass reads
the counts again (``transforms.second_pass``) rather than holding them. Factors do not
depend on the chunking of genes; library sizes of integer counts are exact sums (float64 holds
integers below 2^53 exactly), so they do not either.

Missing counts: edgeR refuses NA counts; a lazy graph cannot refuse them before computing.
Here a NaN count makes its sample's library size NaN, hence every normalisation factor NaN
(the rescaling involves every sample), that sample's CPM NaN, every log CPM NaN (the prior
count is scaled by the mean library size), and its gene not kept by ``filter_by_expr``.
Counts are assumed non-negative (``cohort ingest --scale counts`` refuses negative values).
"""

from __future__ import annotations

import bottleneck as bn
import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import is_dask_collection, tokenize

from engine.errors import InputError, preview
from engine.preprocess.transforms import (
    as_delayed,
    as_matrix,
    column_quantiles,
    like,
    named_task,
    per_gene,
    per_sample,
    per_sample_pass,
    second_pass,
)

__all__ = [
    "METHODS",
    "calc_factor_quantile",
    "calc_factor_rle",
    "calc_factor_tmm",
    "calc_factor_tmmwsp",
    "calc_norm_factors",
    "count_variable",
    "cpm",
    "cpm_block",
    "filter_by_expr",
    "filter_by_expr_block",
    "library_sizes",
    "min_sample_size",
    "norm_factors",
    "rescale_factors",
    "tmm_reference",
]

METHODS = ("TMM", "TMMwsp", "RLE", "upperquartile", "none")

_LN2 = np.log(2.0)
_LN_MILLION = np.log(1e6)
_MISSING_LABELS = ("", "nan", "NA", "None")


# -- kernels (numpy blocks; edgeR's R code vectorised over samples) -----------------------------

def _f64(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float64)


def all_zero_genes(block) -> np.ndarray:
    """Genes without a count above 0 in any sample (edgeR drops them before the factors)."""
    return ~(_f64(block) > 0).any(axis=1)


def log_geometric_means(block) -> np.ndarray:
    """exp(rowMeans(log(x))) per gene: 0 when a count is 0 (edgeR ``.calcFactorRLE``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(np.log(_f64(block)).mean(axis=1))


def calc_factor_quantile(block, lib_size, p: float = 0.75, use=None) -> np.ndarray:
    """edgeR ``.calcFactorQuantile``: the ``p`` quantile (``quantile(type=7)``) of each column
    over the genes ``use`` (default all), divided by the library size."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return column_quantiles(block, p, use) / np.asarray(lib_size, dtype=np.float64)


def calc_factor_rle(block, geometric_means) -> np.ndarray:
    """edgeR ``.calcFactorRLE`` (before the division by the library size): each column's
    median of counts / geometric mean over genes with a geometric mean above 0."""
    gm = np.asarray(geometric_means, dtype=np.float64)
    use = gm > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return column_quantiles(_f64(block) / gm[:, None], 0.5, use)


def calc_factor_tmm(obs, ref, lib_obs, lib_ref: float, *, logratio_trim: float = 0.3,
                    sum_trim: float = 0.05, do_weighting: bool = True,
                    a_cutoff: float = -1e10) -> np.ndarray:
    """edgeR ``.calcFactorTMM`` of every column of ``obs`` against the column ``ref``.

    M = log2((obs/nO)/(ref/nR)) and A = (log2(obs/nO) + log2(ref/nR))/2 over genes where both
    are finite and A > ``a_cutoff``; genes whose rank of M (average ranks, R ``rank``) lies in
    [floor(n logratio_trim) + 1, n + 1 - that] and rank of A in the same range for
    ``sum_trim`` are kept; the factor is 2^(weighted mean of M), weights 1/v with the delta
    variance v = (nO - obs)/nO/obs + (nR - ref)/nR/ref. 1 when no gene is usable or every
    |M| < 1e-6 (Robinson & Oshlack 2010, Genome Biology 11:R25).
    """
    obs = _f64(obs)
    ref = np.asarray(ref, dtype=np.float64)[:, None]
    n_obs = np.asarray(lib_obs, dtype=np.float64)
    n_ref = float(lib_ref)
    with np.errstate(invalid="ignore", divide="ignore"):
        obs_p = obs / n_obs
        ref_p = ref / n_ref
        log_r = np.log2(obs_p / ref_p)
        abs_e = (np.log2(obs_p) + np.log2(ref_p)) / 2
        v = (n_obs - obs) / n_obs / obs + (n_ref - ref) / n_ref / ref
    usable = np.isfinite(log_r) & np.isfinite(abs_e) & (abs_e > a_cutoff)
    n = usable.sum(axis=0)
    log_r = np.where(usable, log_r, np.nan)
    abs_e = np.where(usable, abs_e, np.nan)
    lo_l = np.floor(n * logratio_trim) + 1
    hi_l = n + 1 - lo_l
    lo_s = np.floor(n * sum_trim) + 1
    hi_s = n + 1 - lo_s
    rank_l = bn.nanrankdata(log_r, axis=0)
    rank_e = bn.nanrankdata(abs_e, axis=0)
    keep = usable & (rank_l >= lo_l) & (rank_l <= hi_l) & (rank_e >= lo_s) & (rank_e <= hi_s)
    with np.errstate(invalid="ignore", divide="ignore"):
        if do_weighting:
            # sum(logR[keep]/v[keep], na.rm=TRUE) / sum(1/v[keep], na.rm=TRUE)
            f = (np.nansum(np.where(keep, log_r / v, np.nan), axis=0)
                 / np.nansum(np.where(keep, 1.0 / v, np.nan), axis=0))
        else:
            f = np.where(keep, log_r, 0.0).sum(axis=0) / keep.sum(axis=0)
    f[np.isnan(f)] = 0.0
    max_abs = np.max(np.where(usable, np.abs(log_r), -np.inf), axis=0, initial=-np.inf)
    f[max_abs < 1e-6] = 0.0  # also n == 0: R's max() of nothing is -Inf
    return 2.0 ** f


def calc_factor_tmmwsp(obs, ref, lib_obs, lib_ref: float, *, logratio_trim: float = 0.3,
                       sum_trim: float = 0.05, do_weighting: bool = True) -> np.ndarray:
    """edgeR ``.calcFactorTMMwsp`` ("TMM with singleton pairing") of every column of ``obs``
    against ``ref``.

    Genes zero in both are dropped; genes zero (<= 1e-14) in exactly one of the two are paired
    up: the largest obs-only counts with the largest ref-only counts, as many pairs as the
    smaller of the two sets, appended after the genes positive in both. M and A as in TMM;
    the M-trim keeps positions of ``order(M, M.shrunk)`` (ties broken by M with 0.5 added to
    the counts, then by position), the A-trim those of ``order(A)``; weights
    (1 + 1e-6)/(v + 1e-6) with v from the proportions. 1 without pairs or when every
    |M| < 1e-6.
    """
    obs = _f64(obs)
    rows, cols = obs.shape
    ref = np.asarray(ref, dtype=np.float64)
    n_obs = np.asarray(lib_obs, dtype=np.float64)
    n_ref = float(lib_ref)
    eps = 1e-14
    pos_obs = obs > eps
    pos_ref = (ref > eps)[:, None]
    zero_obs = ~pos_obs & pos_ref
    zero_ref = pos_obs & ~pos_ref
    both = pos_obs & pos_ref
    singles = np.minimum(zero_obs.sum(axis=0), zero_ref.sum(axis=0))
    m = int(singles.max()) if cols else 0
    # the largest counts first: obs of the ref-only genes, ref of the obs-only genes
    obs_k = -np.sort(-np.where(zero_ref, obs, -np.inf), axis=0)[:m]
    ref_k = -np.sort(-np.where(zero_obs, ref[:, None], -np.inf), axis=0)[:m]
    paired = np.arange(m)[:, None] < singles[None, :]
    o = np.vstack([np.where(both, obs, np.nan), np.where(paired, obs_k, np.nan)])
    r = np.vstack([np.where(both, ref[:, None], np.nan), np.where(paired, ref_k, np.nan)])
    valid = ~np.isnan(o)
    n = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        obs_p = o / n_obs
        ref_p = r / n_ref
        big_m = np.log2(obs_p / ref_p)
        big_a = 0.5 * np.log2(obs_p * ref_p)
        m_shrunk = np.log2(((o + 0.5) / (n_obs + 0.5)) / ((r + 0.5) / (n_ref + 0.5)))
    position = np.arange(rows + m)[:, None]
    keep = valid.copy()
    for order, trim in ((np.lexsort((m_shrunk, big_m), axis=0), logratio_trim),
                        (np.argsort(big_a, axis=0, kind="stable"), sum_trim)):
        lo = (n * trim).astype(np.int64) + 1  # as.integer(n * trim) + 1
        hi = n + 1 - lo
        kept_rank = (position >= lo - 1) & (position <= hi - 1)
        kept = np.empty_like(kept_rank)
        np.put_along_axis(kept, order, kept_rank, axis=0)
        keep &= kept
    with np.errstate(invalid="ignore", divide="ignore"):
        if do_weighting:
            v = (1 - obs_p) / obs_p / n_obs + (1 - ref_p) / ref_p / n_ref
            w = (1 + 1e-6) / (v + 1e-6)
            tmm = (np.where(keep, w * big_m, 0.0).sum(axis=0)
                   / np.where(keep, w, 0.0).sum(axis=0))
        else:
            tmm = np.where(keep, big_m, 0.0).sum(axis=0) / keep.sum(axis=0)
    max_abs = np.max(np.where(valid, np.abs(big_m), -np.inf), axis=0, initial=-np.inf)
    tmm[(n == 0) | (max_abs < 1e-6)] = 0.0
    return 2.0 ** tmm


def tmm_reference(f75, sqrt_sums) -> int:
    """edgeR's TMM reference column (0-based): the sample whose upper-quartile factor ``f75``
    (``.calcFactorQuantile(p=0.75)``) is closest to their mean, or, when the median factor is
    below 1e-20, the sample with the largest sum of square-root counts. -1 when a factor is
    NaN (edgeR stops there with an error)."""
    f75 = np.asarray(f75, dtype=np.float64)
    if f75.size == 0 or np.isnan(f75).any():
        return -1
    if np.median(f75) < 1e-20:
        return int(np.argmax(np.asarray(sqrt_sums, dtype=np.float64)))
    return int(np.argmin(np.abs(f75 - f75.mean())))


def rescale_factors(f) -> np.ndarray:
    """f / exp(mean(log(f))): factors with a geometric mean of 1 (edgeR's last step)."""
    f = np.asarray(f, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return f / np.exp(np.mean(np.log(f)))


def calc_norm_factors(counts, method: str = "TMM", *, lib_size=None, ref_column=None,
                      logratio_trim: float = 0.3, sum_trim: float = 0.05,
                      do_weighting: bool = True, a_cutoff: float = -1e10,
                      p: float = 0.75) -> np.ndarray:
    """In-memory edgeR ``calcNormFactors(counts, method, ...)`` (genes x samples): the same
    kernels as ``norm_factors`` on one block. ``ref_column`` is 0-based."""
    x = _f64(counts)
    n_genes, n_samples = x.shape
    lib = x.sum(axis=0) if lib_size is None else np.asarray(lib_size, dtype=np.float64)
    mask = all_zero_genes(x)
    if method == "none" or n_samples == 1 or mask.all():
        return np.ones(n_samples)
    options = _trim_options(logratio_trim, sum_trim, do_weighting)
    x = x[~mask]
    if method == "RLE":
        return rescale_factors(calc_factor_rle(x, log_geometric_means(x)) / lib)
    if method == "upperquartile":
        return rescale_factors(calc_factor_quantile(x, lib, p))
    if ref_column is None:
        if method == "TMM":
            ref_column = tmm_reference(calc_factor_quantile(x, lib, 0.75),
                                       np.sqrt(x).sum(axis=0))
        else:
            ref_column = int(np.argmax(np.sqrt(x).sum(axis=0)))
    if ref_column < 0:
        return np.full(n_samples, np.nan)
    if method == "TMM":
        f = calc_factor_tmm(x, x[:, ref_column], lib, lib[ref_column], a_cutoff=a_cutoff,
                            **options)
    else:
        f = calc_factor_tmmwsp(x, x[:, ref_column], lib, lib[ref_column], **options)
    return rescale_factors(f)


def cpm_block(y, lib_size, *, log: bool = False, prior_count: float = 2.0) -> np.ndarray:
    """edgeR ``cpm.default(y, lib.size)``, float64 (its C++ ``calculate_cpm_raw`` /
    ``calculate_cpm_log``, in their order of operations).

    Raw: y * (1e6 / L), NaN where L <= 0. Log: the prior count is scaled by each library's
    size relative to the mean, p_j = prior_count L_j / mean(L), and the library is augmented
    by 2 p_j: (log(y + p_j) - log(L_j + 2 p_j) + log(1e6)) / log(2); NaN where y + p_j <= 0.
    """
    y = _f64(y)
    lib = np.asarray(lib_size, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if not log:
            return np.where(lib > 0, y * (1e6 / lib), np.nan)
        mean_lib = np.cumsum(lib)[-1] / lib.size if lib.size else np.nan  # std::accumulate
        prior = prior_count * lib / mean_lib
        offset = np.log(lib + 2 * prior)
        value = y + prior
        out = (np.log(value) - offset + _LN_MILLION) / _LN2
    out[~(value > 0)] = np.nan
    return out


def min_sample_size(group, n_samples: int, *, large_n: int = 10,
                    min_prop: float = 0.7) -> float:
    """filterByExpr's minimum group size: the smallest group (all samples without ``group``),
    reduced to large_n + (size - large_n) min_prop above ``large_n``."""
    if group is None:
        size = float(n_samples)
    else:
        labels = _group_labels(group, n_samples)
        present = [v for v in labels if v is not None]
        size = float(min(present.count(v) for v in set(present)))
    if size > large_n:
        size = large_n + (size - large_n) * min_prop
    return size


def filter_by_expr_block(y, lib_size, *, min_size: float, min_count: float = 10,
                         min_total_count: float = 15) -> np.ndarray:
    """edgeR ``filterByExpr.default`` for a block of genes: CPM >= min_count / median(L) 1e6
    in at least ``min_size`` samples (tolerance 1e-14) and a total count >= min_total_count
    (tolerance 1e-14). NaN counts are never kept."""
    y = _f64(y)
    lib = np.asarray(lib_size, dtype=np.float64)
    cutoff = min_count / np.median(lib) * 1e6
    with np.errstate(invalid="ignore", divide="ignore"):
        expressed = (y * (1e6 / lib) >= cutoff).sum(axis=1)
        total = y.sum(axis=1)
    return (expressed >= min_size - 1e-14) & (total >= min_total_count - 1e-14)


# -- lazy API ----------------------------------------------------------------------------------

def count_variable(ds: xr.Dataset, variable: str = "counts", what: str = "this step"
                   ) -> xr.DataArray:
    """The (gene, sample) count variable of a cohort; ``expression`` stands in for a missing
    ``counts`` when the store was ingested with ``--scale counts``. ``what`` (the step or the
    test) names the reader in the one error raised otherwise."""
    if variable not in ds and variable == "counts" and "expression" in ds \
            and ds["expression"].attrs.get("scale") == "counts":
        variable = "expression"
    if variable not in ds or ds[variable].dims != ("gene", "sample"):
        names = sorted(n for n, v in ds.data_vars.items() if v.dims == ("gene", "sample"))
        scale = ds["expression"].attrs.get("scale") if "expression" in ds else None
        raise InputError(f"{what} needs counts: {variable!r} is not a (gene, sample) count "
                         f"variable of the cohort (available: {preview(names, 10)}; expression "
                         f"scale {scale!r}); ingest the counts with `cohort ingest ... --scale "
                         "counts`, which stores them in 'counts'")
    counts = ds[variable]
    scale = counts.attrs.get("scale")
    if scale is not None and scale != "counts":
        raise InputError(f"{what} models counts, but {variable!r} has scale {scale!r}; give the "
                         "raw count variable (ingest with --scale counts)")
    if counts.dtype.kind not in "iuf":
        raise InputError(f"{what}: {variable!r} is not numeric (dtype {counts.dtype})")
    return counts


def library_sizes(counts: xr.DataArray) -> xr.DataArray:
    """Lazy column sums of the counts (edgeR ``colSums``, the default ``lib.size``), float64
    along ``sample``; exact for integer counts."""
    data = as_matrix(counts, "counts")
    sums = data.sum(axis=0, dtype=np.float64).rechunk(-1)
    return per_sample(counts, sums, "library size: column sum of the counts")


def norm_factors(counts: xr.DataArray, method: str = "TMM", *, lib_size=None,
                 ref_column=None, logratio_trim: float = 0.3, sum_trim: float = 0.05,
                 do_weighting: bool = True, a_cutoff: float = -1e10,
                 p: float = 0.75) -> xr.DataArray:
    """Lazy normalisation factors, edgeR 3.40 ``calcNormFactors(counts, method, ...)``.

    ``method``: "TMM" (Robinson & Oshlack 2010), "TMMwsp", "RLE" (Anders & Huber 2010),
    "upperquartile" (Bullard et al. 2010) or "none". ``lib_size``: per-sample library sizes
    (array or DataArray along ``sample``; default the column sums). ``ref_column``: TMM's
    reference sample as a 0-based position or a sample ID (default edgeR's choice: for TMM the
    sample whose upper-quartile factor is closest to the mean one, for TMMwsp the one with the
    largest sum of square-root counts). ``logratio_trim``, ``sum_trim``, ``do_weighting``,
    ``a_cutoff``: TMM's options (``a_cutoff`` is unused by TMMwsp, as in edgeR); ``p``: the
    quantile of "upperquartile". Genes zero in every sample are left out; factors are rescaled
    to a geometric mean of 1. All ones for "none", one sample, or no gene with a count.

    The passes: library sizes and all-zero genes (gene chunks); per-sample quantiles (whole
    columns); the reference column (gene chunks); the TMM factors (whole columns, every block
    given the reference column); the rescaling (one task). Float64 along ``sample``.
    """
    if method not in METHODS:
        raise InputError(f"normalisation method {method!r} is not one of {', '.join(METHODS)}")
    options = _trim_options(logratio_trim, sum_trim, do_weighting)
    a_cutoff = _number(a_cutoff, "a_cutoff")
    p = _number(p, "p")
    if not 0 < p < 1:
        raise InputError(f"p must be between 0 and 1 (exclusive), got {p!r}")
    data = as_matrix(counts, "counts")
    n_genes, n_samples = data.shape
    ref_index = _reference_index(counts, ref_column, method)
    lib = _sample_vector(lib_size, counts, "lib_size")
    description = (f"edgeR calcNormFactors(method={method!r}) normalisation factor "
                   "(geometric mean 1)")
    if method == "none" or n_samples <= 1 or n_genes == 0:
        return per_sample(counts, da.ones(n_samples, chunks=-1), description)
    token = tokenize(data, method, ref_index, lib, options, a_cutoff, p)
    if lib is None:
        lib = data.sum(axis=0, dtype=np.float64)
    lib_d = _delayed_vector(lib)
    mask_d = _delayed_vector(data.map_blocks(all_zero_genes, drop_axis=1, dtype=bool,
                                             meta=np.empty((0,), bool),
                                             token="norm-factors-all-zero-genes"))
    if method == "RLE":
        gm_d = _delayed_vector(data.map_blocks(log_geometric_means, drop_axis=1,
                                               dtype=np.float64, meta=np.empty((0,)),
                                               token="rle-log-geometric-means"))
        raw = per_sample_pass(second_pass(data, gm_d, lib_d), _rle_task, {}, "rle-factor",
                              gm_d, lib_d, columns=True)
    elif method == "upperquartile":
        raw = per_sample_pass(second_pass(data, mask_d, lib_d), _quantile_task, {"p": p},
                              "upper-quartile-factor", mask_d, lib_d,
                              columns=True)
    else:
        if ref_index is None:
            stats = per_sample_pass(second_pass(data, mask_d), _reference_stats_task,
                                    {"method": method}, f"{method.lower()}-reference-stats",
                                    mask_d, fields=2)
            ref_d = named_task(f"{method.lower()}-choose-reference", _choose_reference,
                               as_delayed(stats), lib_d, method)
        else:
            ref_d = ref_index
        column = second_pass(data, ref_d).map_blocks(
            _take_column, ref_d, drop_axis=1, dtype=np.float64, meta=np.empty((0,)),
            name=f"{method.lower()}-reference-column-{token}")
        column_d = _delayed_vector(column)
        kernel = "tmm" if method == "TMM" else "tmmwsp"
        kwargs = {**options, **({"a_cutoff": a_cutoff} if method == "TMM" else {}),
                  "kernel": kernel}
        raw = per_sample_pass(second_pass(data, column_d, ref_d, lib_d), _tmm_task, kwargs,
                              f"{kernel}-factor", column_d, ref_d, lib_d, columns=True)
    factors = dask.delayed(_finish_factors, pure=True)(as_delayed(raw), mask_d,
                                                       dask_key_name=f"norm-factors-{token}")
    return per_sample(counts, da.from_delayed(factors, (n_samples,), dtype=np.float64),
                      description)


def cpm(counts: xr.DataArray, *, lib_size=None, norm_factors=None, log: bool = False,
        prior_count: float = 2.0) -> xr.DataArray:
    """Lazy counts per million, edgeR ``cpm(y, log=, prior.count=)`` with the effective
    library sizes ``lib_size * norm_factors`` (``cpm.DGEList``; default the column sums and
    factors of 1), float32. ``log=True``: log2 CPM with edgeR's prior count scaled by library
    size and the library augmented by twice that prior (``cpm_block``)."""
    prior_count = _number(prior_count, "prior_count")
    if prior_count < 0:
        raise InputError(f"prior_count must be >= 0, got {prior_count!r}")
    data = as_matrix(counts, "counts")
    lib = _sample_vector(lib_size, counts, "lib_size", positive=True)
    factors = _sample_vector(norm_factors, counts, "norm_factors", positive=True)
    if lib is None:
        lib = data.sum(axis=0, dtype=np.float64)
    effective = lib if factors is None else lib * factors
    eff_d = _delayed_vector(effective)
    token = tokenize(data, effective, log, prior_count)
    out = second_pass(data, eff_d).map_blocks(
        _cpm_task, eff_d, log=bool(log), prior_count=prior_count, dtype=np.float32,
        name=f"cpm-transform-{token}")
    what = (f"edgeR cpm(log=TRUE, prior.count={prior_count:g}): log2 counts per million"
            if log else "edgeR cpm: counts per million")
    return like(counts, out, what + " of the effective library sizes (lib_size x norm_factors)")


def filter_by_expr(counts: xr.DataArray, *, group=None, lib_size=None, min_count: float = 10,
                   min_total_count: float = 15, large_n: int = 10,
                   min_prop: float = 0.7) -> xr.DataArray:
    """Lazy edgeR ``filterByExpr.default(y, group=, lib.size=, min.count=, min.total.count=,
    large.n=, min.prop=)``: True for the genes to keep.

    ``group``: one label per sample (missing labels, None/NaN/"", are in no group) or None
    (one group of all samples); the smallest group sets how many samples need a CPM of at
    least ``min_count`` / median library size (x 1e6), reduced above ``large_n`` as edgeR
    does. ``lib_size``: default the column sums (pass ``lib_size * norm_factors`` for the
    ``DGEList`` method's behaviour). (edgeR's ``design=`` form is not provided.)
    """
    min_count = _number(min_count, "min_count")
    min_total_count = _number(min_total_count, "min_total_count")
    min_prop = _number(min_prop, "min_prop")
    if isinstance(large_n, bool) or not isinstance(large_n, (int, np.integer)) or large_n < 0:
        raise InputError(f"large_n must be a non-negative integer, got {large_n!r}")
    data = as_matrix(counts, "counts")
    size = min_sample_size(group, data.shape[1], large_n=int(large_n), min_prop=min_prop)
    lib = _sample_vector(lib_size, counts, "lib_size", positive=True)
    if lib is None:
        lib = data.sum(axis=0, dtype=np.float64)
    lib_d = _delayed_vector(lib)
    options = {"min_size": size, "min_count": min_count, "min_total_count": min_total_count}
    keep = second_pass(data, lib_d).map_blocks(
        filter_by_expr_block, lib_d, drop_axis=1, dtype=bool, meta=np.empty((0,), bool),
        name=f"filter-by-expr-{tokenize(data, lib, options)}", **options)
    return per_gene(counts, keep, f"edgeR filterByExpr: keep (min.count={min_count:g}, "
                                  f"min.total.count={min_total_count:g}, smallest group "
                                  f"{size:g} samples)")


# -- tasks and helpers -------------------------------------------------------------------------

def _quantile_task(block, mask, lib, *, p, columns):
    return calc_factor_quantile(block, np.asarray(lib)[columns], p, ~np.asarray(mask))


def _rle_task(block, gm, lib, *, columns):
    with np.errstate(invalid="ignore", divide="ignore"):
        return calc_factor_rle(block, gm) / np.asarray(lib)[columns]


def _reference_stats_task(block, mask, *, method):
    """What edgeR's reference choice needs of each column: the upper quartile over the genes
    with a count (TMM only) and the sum of square-root counts."""
    x = _f64(block)
    with np.errstate(invalid="ignore"):
        roots = np.sqrt(x).sum(axis=0)
    if method != "TMM":
        return np.stack([np.full(x.shape[1], np.nan), roots])
    return np.stack([column_quantiles(x, 0.75, ~np.asarray(mask)), roots])


def _choose_reference(stats, lib, method: str) -> int:
    """edgeR's reference column for ``method`` from the (2, samples) statistics."""
    q, roots = np.asarray(stats, dtype=np.float64)
    if method == "TMMwsp":
        return int(np.argmax(roots)) if not np.isnan(roots).any() else -1
    with np.errstate(invalid="ignore", divide="ignore"):
        return tmm_reference(q / np.asarray(lib, dtype=np.float64), roots)


def _take_column(block, ref):
    if ref < 0:
        return np.full(block.shape[0], np.nan)
    return _f64(np.asarray(block)[:, ref])


def _tmm_task(block, column, ref, lib, *, kernel, columns, **options):
    if ref < 0:
        return np.full(block.shape[1], np.nan)
    lib = np.asarray(lib, dtype=np.float64)
    fn = calc_factor_tmm if kernel == "tmm" else calc_factor_tmmwsp
    return fn(block, column, lib[columns], lib[ref], **options)


def _finish_factors(raw, mask) -> np.ndarray:
    raw = np.asarray(raw, dtype=np.float64).ravel()
    if np.asarray(mask).all():  # no gene with a count: edgeR uses method "none"
        return np.ones(raw.size)
    return rescale_factors(raw)


def _cpm_task(block, lib, *, log, prior_count):
    return cpm_block(block, lib, log=log, prior_count=prior_count).astype(np.float32)


def _delayed_vector(values):
    """A value tasks can take whole: numpy as is, a Dask array as one delayed numpy array."""
    if is_dask_collection(values):
        return as_delayed(values)
    return values


def _sample_vector(value, counts: xr.DataArray, what: str, positive: bool = False):
    """A per-sample vector argument as float64 numpy or a lazy Dask array (a DataArray along
    ``sample``); checks what can be checked without computing."""
    if value is None:
        return None
    n = counts.sizes["sample"]
    if isinstance(value, xr.DataArray):
        if value.dims != ("sample",) or value.size != n:
            raise InputError(f"{what} must be one value per sample (dims ('sample',), {n} "
                             f"values), got dims {value.dims} with {value.size} values")
        if isinstance(value.data, da.Array):
            return value.data.astype(np.float64).rechunk(-1)
        value = value.values
    if is_dask_collection(value):
        value = da.asarray(value)
        if value.shape != (n,):
            raise InputError(f"{what} must have {n} values (one per sample), got {value.shape}")
        return value.astype(np.float64).rechunk(-1)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be numbers, one per sample") from None
    if arr.shape != (n,):
        raise InputError(f"{what} must have {n} values (one per sample), got shape {arr.shape}")
    bad = ~np.isfinite(arr) | ((arr <= 0) if positive else False)
    if np.any(bad):
        labels = np.asarray(counts["sample"].values) if "sample" in counts.coords \
            else np.arange(n)
        rule = "finite and > 0" if positive else "finite"
        raise InputError(f"{what} must be {rule}; not so for samples "
                         f"{preview(list(labels[bad]))}")
    return arr


def _reference_index(counts: xr.DataArray, ref_column, method: str):
    if ref_column is None:
        return None
    if method not in ("TMM", "TMMwsp"):
        raise InputError(f"ref_column is a TMM option; method {method!r} has no reference")
    n = counts.sizes["sample"]
    if isinstance(ref_column, str):
        ids = [str(s) for s in counts["sample"].values] if "sample" in counts.coords else []
        if ref_column not in ids:
            raise InputError(f"ref_column {ref_column!r} is not a sample of the counts "
                             f"(samples look like: {preview(ids[:5])})")
        return ids.index(ref_column)
    if isinstance(ref_column, bool) or not isinstance(ref_column, (int, np.integer)) \
            or not 0 <= ref_column < n:
        raise InputError(f"ref_column must be a sample ID or a 0-based position below {n}, "
                         f"got {ref_column!r}")
    return int(ref_column)


def _trim_options(logratio_trim, sum_trim, do_weighting) -> dict:
    for name, value in (("logratio_trim", logratio_trim), ("sum_trim", sum_trim)):
        value = _number(value, name)
        if not 0 <= value < 0.5:
            raise InputError(f"{name} must be in [0, 0.5) (the fraction trimmed at each end), "
                             f"got {value!r}")
    return {"logratio_trim": float(logratio_trim), "sum_trim": float(sum_trim),
            "do_weighting": bool(do_weighting)}


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or np.isnan(value):
        raise InputError(f"{what} must be a number, got {value!r}")
    return float(value)


def _group_labels(group, n_samples: int) -> list:
    if isinstance(group, str) or np.ndim(group) != 1 or len(group) != n_samples:
        raise InputError(f"group must be one label per sample ({n_samples} labels), e.g. the "
                         f"values of a sample annotation; got {group!r:.80}")
    labels = [None if v is None or (isinstance(v, float) and np.isnan(v))
              or str(v) in _MISSING_LABELS else str(v) for v in np.asarray(group, dtype=object)]
    if all(v is None for v in labels):
        raise InputError("group has no labels (every sample's label is missing)")
    return labels
