"""GSVA proper (Hänzelmann, Castelo & Guinney 2013), exactly as R GSVA 1.46 computes it.

``gsva(expr, sets, method="gsva")`` of the classic 1.46 API runs in two steps; both are
reproduced here from its R and C code (``compute.gene.density``, ``matrix_density_R`` in
``kernel_estimation.c``; ``compute.geneset.es``, ``ks_test_m``, ``ks_matrix_R`` in
``ks_test.c``):

1. **Gene density** (:func:`gene_density_block`), per gene over all samples. Each value y_j of
   the gene is compared with every value x_i of the same gene (i = all samples, itself
   included)::

       left_tail_j = (1/n) sum_i K(y_j, x_i)            density_j = -log((1 - lt_j) / lt_j)

   * ``kcdf="gaussian"``: K = Phi((y_j - x_i) / h) with h = sd(x) / 4 (GSVA's own ``sd``: mean
     refined once, sums in long double, n - 1). Phi is not evaluated directly: 1.46 reads it
     from a table precomputed at 10,001 points, ``cdf[t] = pnorm(10 t / 10000)``; with
     v = (y - x) / h the lookup is ``cdf[(int)(|v| / 10 * 10000)]`` (index truncated toward
     zero), ``1 - cdf[...]`` when v < 0, 0 below v = -10 and 1 above 10. Every floating-point
     step of that index is reproduced, and the table is built with a port of R's ``pnorm``
     (Cody's algorithm) so that it equals R's table bit for bit (``scipy.special.ndtr``
     differs from it in the last bit at 393 of the 10,001 points).
   * ``kcdf="poisson"`` (counts): K = ``ppois(y_j, x_i + 0.5)`` = P(X <= floor(y_j + 1e-7)),
     X ~ Poisson(x_i + 0.5) (R's ``ppois`` floors a non-integer quantile that way and GSVA
     does not round its input); evaluated with ``scipy.special.pdtr``, which agrees with R's
     ``ppois`` to about 1e-15 relative (not bit for bit).
   * ``kcdf="none"``: the empirical CDF, F_j = #{i: x_i <= y_j} / n and density_j =
     log(F_j / (1 - F_j)) (+inf at the gene's maximum), as ``ecdf(x)(x)`` in R.

2. **Random walk** (:func:`gsva_walk_block`), per sample. Genes are ordered by decreasing
   density (ties in gene order: R's stable ``order(decreasing=TRUE)``); the gene at position
   p (1 = highest) gets the symmetric rank score r = |n - p + 1 - n/2|. For a set of k members
   the walk steps up by r^tau / sum_members(r^tau) at a member and down by 1 / (n - k) at
   any other gene. With P+ = max(0, highest point of the walk) and P- = min(0, lowest)::

       mx_diff=True:   score = P+ + P-     (abs_ranking=True: P+ - P-, the Kuiper statistic)
       mx_diff=False:  score = P+ if P+ > |P-| else P-      (abs_ranking is ignored, as in 1.46)

   The walk only rises at members, so its maximum is reached right after a member and its
   minimum right before one (or at the start). With members sorted by position
   p_1 < ... < p_k, W_m the cumulative member weight and S = W_k, the walk after member m is
   W_m / S - (p_m - m) / (n - k) and just before it W_{m-1} / S - (p_m - m) / (n - k): a
   closed form over members, vectorised over sets of equal size and samples.

Conventions and deviations (documented choices where GSVA has no rule or would fail):

* GSVA drops genes with a missing value or a standard deviation below 1e-10 before anything
  else (``.filterFeatures``); so does this module: such genes get an all-NaN density row and
  are left out of the ranking (n counts the usable genes) and of the sets. ``size`` reports
  the members actually used. With ``kcdf="poisson"`` genes with a negative value are dropped
  too (GSVA would give them NaN densities, i.e. ppois of a negative mean).
* A set with no usable member scores NaN (GSVA drops it from its output); a set made of every
  usable gene scores 1 (GSVA's walk never steps down). A single-member set whose member sits
  exactly at rank score 0 has a 0/0 step in GSVA: its walk stops counting there, and so here.
* In ``gsva_walk_block`` a NaN density leaves that gene out of that sample only (the density
  step never produces partial rows, so within ``gsva_scores`` this is the per-gene rule).
* Agreement with R: for the Gaussian kernel and the ecdf the densities are R's doubles bit for
  bit (table, index, bandwidth with long double sums, R's summation order and the C library's
  ``log``; checked on x86-64 Linux, where long double has 64 mantissa bits). This matters:
  densities of different genes often differ only in their last bits (a sample far above
  the rest of a gene sums to (n - 0.5) / n up to rounding), and GSVA ranks them by those bits.
  Poisson terms come from scipy's ``pdtr``, within ~1e-15 of R's ``ppois``. The walk extremes
  in closed form differ from R's step-by-step sums by rounding only (~1e-13). Where
  ``mx_diff=False`` meets max(walk) == -min(walk) exactly, R and this module both pick the
  sign by rounding, so they may disagree there.
"""

from __future__ import annotations

import functools
import math

import dask.array as da
from dask.base import tokenize
import numpy as np
import xarray as xr
from scipy import special

from engine.errors import InputError
from engine.stats.features import by_sample, feature_matrix, map_features
from engine.stats.scores import CONSTANT_SD, as_membership, membership_of

__all__ = [
    "KCDFS",
    "gaussian_cdf_table",
    "gene_density_block",
    "gsva_scores",
    "gsva_walk_block",
]

KCDFS = ("gaussian", "poisson", "none")

#: GSVA 1.46 ``kernel_estimation.c``: bandwidth = sd / SIGMA_FACTOR; the normal CDF table has
#: PRECOMPUTE_RESOLUTION + 1 points on [0, MAX_PRECOMPUTE].
SIGMA_FACTOR = 4.0
PRECOMPUTE_RESOLUTION = 10000
MAX_PRECOMPUTE = 10.0
#: Poisson kernel: the mean is the density sample's value plus this (``bw`` in the C code).
POISSON_OFFSET = 0.5

#: Elements per temporary array of the O(n^2) kernel sums (float64: 1 MB, cache-sized).
DENSITY_BLOCK_ELEMENTS = 2**17
#: The Gaussian pair terms (samples x samples per gene) of a group of genes are held whole, up
#: to this many elements per group (float64: 8 MB; one gene at a time above that) and up to
#: PAIR_MATRIX_MAX_SAMPLES samples (one gene: 32 MB). With more samples each pair is
#: evaluated twice, in blocks of test samples.
PAIR_MATRIX_ELEMENTS = 2**20
PAIR_MATRIX_MAX_SAMPLES = 2048
#: The Poisson kernel is tabulated over pairs of distinct values up to this many (float64:
#: 128 MB) when that is fewer evaluations than the pairs of samples.
POISSON_TABLE_ELEMENTS = 2**24
#: Rows of one panel of the Gaussian pair terms (samples i of the panel x every later sample j).
GAUSSIAN_PANEL_ROWS = 64
#: Pair evaluations per density task (about a second of work): larger gene chunks are split.
DENSITY_PAIRS_PER_TASK = 2**28
#: At most this many density tasks (genes per task grow above the second of work instead), so
#: the graph stays small enough for the dashboard: 20,000 genes x 50,000 samples would be
#: one gene per task, and with the tasks that follow (usable rows, the by-sample rechunk)
#: over 10^5 tasks.
MAX_DENSITY_TASKS = 4096
#: Elements per temporary array of the walk (members x samples of one batch of sets).
WALK_BLOCK_ELEMENTS = 2**20


# -- step 1: gene density ------------------------------------------------------------------------

def _check_kcdf(kcdf: str) -> str:
    name = str(kcdf).lower()
    if name not in KCDFS:
        raise InputError(f"kcdf {kcdf!r} is not one of {', '.join(KCDFS)} "
                         "(gaussian for continuous data such as log2 expression, "
                         "poisson for integer counts)")
    return name


def _r_pnorm(x: float) -> float:
    """R's ``pnorm(x)`` (lower tail, not log) for x >= 0, as nmath ``pnorm_both`` computes it.

    Cody (1993) rational Chebyshev approximations in R's evaluation order, with glibc's
    ``exp`` (Python's ``math.exp``), so the results equal R's bit for bit on the same platform.
    Only used to build the 10,001-point table of :func:`gaussian_cdf_table`.
    """
    a = (2.2352520354606839287, 161.02823106855587881, 1067.6894854603709582,
         18154.981253343561249, 0.065682337918207449113)
    b = (47.20258190468824187, 976.09855173777669322, 10260.932208618978205,
         45507.789335026729956)
    c = (0.39894151208813466764, 8.8831497943883759412, 93.506656132177855979,
         597.27027639480026226, 2494.5375852903726711, 6848.1904505362823326,
         11602.651437647350124, 9842.7148383839780218, 1.0765576773720192317e-8)
    d = (22.266688044328115691, 235.38790178262499861, 1519.377599407554805,
         6485.558298266760755, 18615.571640885098091, 34900.952721145977266,
         38912.003286093271411, 19685.429676859990727)
    p = (0.21589853405795699, 0.1274011611602473639, 0.022235277870649807,
         0.001421619193227893466, 2.9112874951168792e-5, 0.02307344176494017303)
    q = (1.28426009614491121, 0.468238212480865118, 0.0659881378689285515,
         0.00378239633202758244, 7.29751555083966205e-5)
    if not x >= 0.0:
        raise ValueError("_r_pnorm is only needed (and only checked) for x >= 0")
    y = x
    if y <= 0.67448975:
        if y > np.finfo(np.float64).eps * 0.5:
            xsq = x * x
            xnum = a[4] * xsq
            xden = xsq
            for i in range(3):
                xnum = (xnum + a[i]) * xsq
                xden = (xden + b[i]) * xsq
        else:
            xnum = xden = 0.0
        temp = x * (xnum + a[3]) / (xden + b[3])
        return 0.5 + temp
    if y <= 5.656854249492380195206754896838:  # sqrt(32)
        xnum = c[8] * y
        xden = y
        for i in range(7):
            xnum = (xnum + c[i]) * y
            xden = (xden + d[i]) * y
        temp = (xnum + c[7]) / (xden + d[7])
    elif y < 8.2924:
        xsq = 1.0 / (x * x)
        xnum = p[5] * xsq
        xden = xsq
        for i in range(4):
            xnum = (xnum + p[i]) * xsq
            xden = (xden + q[i]) * xsq
        temp = xsq * (xnum + p[4]) / (xden + q[4])
        temp = (0.398942280401432677939946059934 - temp) / y  # 1/sqrt(2 pi)
    else:
        return 1.0
    # R's do_del: split x^2/2 so that exp() of the large part is exact, then 1 - upper tail.
    xsq = math.ldexp(math.trunc(math.ldexp(y, 4)), -4)
    delta = (y - xsq) * (y + xsq)
    upper = math.exp(-xsq * math.ldexp(xsq, -1)) * math.exp(-math.ldexp(delta, -1)) * temp
    return 1.0 - upper


@functools.cache
def gaussian_cdf_table() -> np.ndarray:
    """GSVA 1.46's normal CDF table: ``pnorm(10 t / 10000)`` for t = 0..10000 (``initCdfs``).

    Read-only float64 array of 10,001 values, equal to R's bit for bit (x86-64 Linux).
    """
    points = [MAX_PRECOMPUTE * float(t) / float(PRECOMPUTE_RESOLUTION)
              for t in range(PRECOMPUTE_RESOLUTION + 1)]
    table = np.array([_r_pnorm(v) for v in points], dtype=np.float64)
    table.setflags(write=False)
    return table


def _gsva_sd(x: np.ndarray) -> np.ndarray:
    """Row standard deviations exactly as GSVA's C ``sd()`` (borrowed from R's cov.c).

    The mean is accumulated in long double in sample order and refined once by the mean
    residual; squared deviations (in double) are summed in long double; divided by n - 1.
    ``cumsum`` keeps the sample-order accumulation whatever the shape of the block.
    """
    n = x.shape[1]
    lx = np.ascontiguousarray(x.T, dtype=np.longdouble)            # (samples, genes)
    mean = np.cumsum(lx, axis=0)[-1] / n
    finite = np.isfinite(mean)
    refine = np.cumsum(lx - mean, axis=0)[-1] / n
    mean = np.where(finite, mean + refine, mean).astype(np.float64)
    dev = x - mean[:, None]
    ss = np.cumsum(np.ascontiguousarray((dev * dev).T, dtype=np.longdouble), axis=0)[-1]
    return np.sqrt((ss / np.longdouble(n - 1)).astype(np.float64))


def _usable_genes(x: np.ndarray, kcdf: str) -> np.ndarray:
    """GSVA's ``.filterFeatures``: no missing value and sd >= 1e-10 (plus no negative count)."""
    if x.shape[1] < 2:
        return np.zeros(x.shape[0], dtype=bool)
    complete = ~np.isnan(x).any(axis=1)
    usable = complete.copy()
    rows = np.flatnonzero(complete)
    sd = np.std(x[rows], axis=1, ddof=1)
    usable[rows] = np.isfinite(sd) & (sd >= CONSTANT_SD)
    if kcdf == "poisson":
        usable &= ~(x < 0).any(axis=1)
    return usable


def gene_density_block(x, kcdf: str = "gaussian") -> np.ndarray:
    """GSVA's per-gene kernel CDF transform of a (genes x all samples) block: float64 (genes x
    samples), the matrix R GSVA 1.46 ``compute.gene.density`` returns (module docstring).

    Needs all samples of each gene (the store's gene chunks have them). Rows of genes GSVA
    would drop (any NaN, sd < 1e-10, negative values under ``poisson``) are all NaN. Gaussian
    and Poisson are O(samples^2) per gene, computed in blocks of bounded memory.
    """
    kcdf = _check_kcdf(kcdf)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D (genes x samples) array, got shape {x.shape}")
    out = np.full(x.shape, np.nan)
    rows = np.flatnonzero(_usable_genes(x, kcdf))
    if rows.size:
        kernel = {"gaussian": _gaussian_density, "poisson": _poisson_density,
                  "none": _ecdf_density}[kcdf]
        out[rows] = kernel(x[rows])
    return out


def _logit_density(left_tail: np.ndarray) -> np.ndarray:
    """``-1.0 * log((1.0 - left_tail) / left_tail)`` as ``row_d`` computes it.

    The log is the C library's (``math.log``, as R's C code calls it): numpy's vectorised log
    differs from it in the last bit for about 1 value in 3,000 on AVX-512 machines, and
    densities of different genes that are equal to the last bit decide GSVA's ranks.
    """
    with np.errstate(divide="ignore"):
        ratio = (1.0 - left_tail) / left_tail
    return -_c_log(ratio)


def _c_log(values: np.ndarray) -> np.ndarray:
    """Natural log with the C library's ``log`` (0 -> -inf, inf -> inf)."""
    flat = np.ascontiguousarray(values, dtype=np.float64).ravel()
    out = np.empty_like(flat)
    positive = flat > 0
    finite = positive & np.isfinite(flat)
    out[finite] = np.fromiter(map(math.log, flat[finite].tolist()), dtype=np.float64,
                              count=int(finite.sum()))
    out[positive & ~finite] = np.inf
    out[flat == 0] = -np.inf
    out[~positive & (flat != 0)] = np.nan
    return out.reshape(values.shape)


@functools.cache
def _signed_cdf_table() -> np.ndarray:
    """``precomputedCdf`` for a signed index: entry 10000 + t is cdf[t], entry 10000 - t is
    1 - cdf[t] (t = 0..10000); indices beyond either end clip to 0 or 1 exactly, as the C
    code's ``v < -10`` and ``v > 10`` branches (cdf[10000] = pnorm(10) is 1.0 in double)."""
    cdf = gaussian_cdf_table()
    table = np.concatenate([1.0 - cdf[:0:-1], cdf])
    table.setflags(write=False)
    return table


def _gaussian_terms(diff: np.ndarray, h: np.ndarray, index: np.ndarray,
                    out: np.ndarray) -> np.ndarray:
    """``precomputedCdf(y - x, h)`` for an array of differences y - x (overwritten).

    v = diff / h, then the index (int)(|v| / 10 * 10000) with the C code's steps: the same
    double operations on the signed value give -index for v < 0, since negation commutes
    with each rounding and truncation goes toward zero. ``index`` (int64) and ``out`` are
    contiguous buffers of diff's shape.
    """
    np.divide(diff, h, out=diff)
    np.divide(diff, MAX_PRECOMPUTE, out=diff)
    np.multiply(diff, float(PRECOMPUTE_RESOLUTION), out=diff)
    np.copyto(index, diff, casting="unsafe")                         # truncation toward 0
    np.add(index, PRECOMPUTE_RESOLUTION, out=index)
    return np.take(_signed_cdf_table(), index, mode="clip", out=out)


def _buffers(size: int):
    """Contiguous float64 / int64 / float64 scratch arrays, reshaped per panel by ``_view``."""
    return np.empty(size), np.empty(size, dtype=np.int64), np.empty(size)


def _view(buffers, shape):
    size = math.prod(shape)
    return [b[:size].reshape(shape) for b in buffers]


def _gaussian_density(x: np.ndarray) -> np.ndarray:
    """Gaussian-kernel densities of complete, non-constant rows (module docstring, step 1).

    left_tail_j sums its n terms in sample order i = 1..n, exactly as ``row_d`` does: the
    densities of different genes are compared by their last bits when GSVA ranks them (genes
    whose sample j is far above every other sample all reach (n - 0.5) / n up to rounding),
    so the order of the additions matters. The term of a pair is computed once: with
    M[i, j] the term of test value x_j against x_i, M[j, i] = 1 - M[i, j] exactly (the index
    of -v is minus the index of v, and 1 - t is exact for t in [0.5, 1]).
    """
    g, n = x.shape
    h = _gsva_sd(x)[:, None, None] / SIGMA_FACTOR
    total = np.empty((g, n))
    if n <= PAIR_MATRIX_MAX_SAMPLES:
        rows = min(n, GAUSSIAN_PANEL_ROWS)
        genes_per_block = max(1, min(DENSITY_BLOCK_ELEMENTS // (rows * n),
                                     PAIR_MATRIX_ELEMENTS // (n * n)))
        terms = np.empty((min(g, genes_per_block), n, n))
        buffers = _buffers(min(g, genes_per_block) * rows * n)
        for g0 in range(0, g, genes_per_block):
            xb, hb = x[g0:g0 + genes_per_block], h[g0:g0 + genes_per_block]
            m = terms[:xb.shape[0]]                       # m[:, i, j]: x_j against x_i
            for i0 in range(0, n, rows):
                i1 = min(n, i0 + rows)
                diff, index, panel = _view(buffers, (xb.shape[0], i1 - i0, n - i0))
                np.subtract(xb[:, None, i0:], xb[:, i0:i1, None], out=diff)
                _gaussian_terms(diff, hb, index, panel)
                m[:, i0:i1, i0:] = panel
                np.subtract(1.0, panel[:, :, i1 - i0:].transpose(0, 2, 1),
                            out=m[:, i1:, i0:i1])
            # reducing axis 1 adds the rows i one after the other: R's order
            total[g0:g0 + genes_per_block] = np.add.reduce(m, axis=1)
    else:                       # many samples: every pair twice, test samples in blocks
        x_t = np.ascontiguousarray(x.T)
        h_t = h[:, :, 0][None, :, :]
        cols = min(n, max(1, DENSITY_BLOCK_ELEMENTS // n))
        genes_per_block = max(1, DENSITY_BLOCK_ELEMENTS // (n * cols))
        buffers = _buffers(n * min(g, genes_per_block) * cols)
        for g0 in range(0, g, genes_per_block):
            gs = slice(g0, g0 + genes_per_block)
            for j0 in range(0, n, cols):
                j1 = min(n, j0 + cols)
                diff, index, terms = _view(buffers, (n, x_t[:, gs].shape[1], j1 - j0))
                np.subtract(x[None, gs, j0:j1], x_t[:, gs, None], out=diff)
                _gaussian_terms(diff, h_t[:, gs], index, terms)
                total[gs, j0:j1] = np.add.reduce(terms, axis=0)
    return _logit_density(total / n)


def _poisson_density(x: np.ndarray) -> np.ndarray:
    """Poisson-kernel densities: lt_j = mean_i ppois(y_j, x_i + 0.5), summed in sample order.

    R's ``ppois(q, lambda)`` is P(X <= floor(q + 1e-7)) (0 for q < 0); ``pdtr`` floors its
    own argument, so the 1e-7 is added here first. Counts repeat: when the block has few
    distinct values the kernel is evaluated once per pair of distinct values (a table read
    per pair of samples, the same doubles as evaluating each pair), else per pair.
    """
    g, n = x.shape
    values, inverse = np.unique(x.ravel(), return_inverse=True)
    inverse = inverse.reshape(g, n)
    u = values.size
    tabulate = u * u <= min(POISSON_TABLE_ELEMENTS, g * n * n // 4)
    if tabulate:                                 # table[a, b]: quantile values[a], mean values[b]
        table = _ppois(values[:, None], values[None, :] + POISSON_OFFSET).ravel()
        row_t = np.ascontiguousarray(inverse.T)                     # (i, gene)
        col = inverse * u
    else:
        quantile, mean_t = x, np.ascontiguousarray((x + POISSON_OFFSET).T)
    total = np.empty((g, n))
    cols = min(n, max(1, DENSITY_BLOCK_ELEMENTS // n))
    genes_per_block = max(1, DENSITY_BLOCK_ELEMENTS // (n * cols))
    for g0 in range(0, g, genes_per_block):
        gs = slice(g0, g0 + genes_per_block)
        for j0 in range(0, n, cols):
            j1 = min(n, j0 + cols)
            if tabulate:
                terms = np.take(table, col[None, gs, j0:j1] + row_t[:, gs, None])
            else:
                terms = _ppois(quantile[None, gs, j0:j1], mean_t[:, gs, None])   # (i, gene, j)
            # reducing the leading axis adds the i-slices one after the other: R's order
            total[gs, j0:j1] = np.add.reduce(terms, axis=0)
    return _logit_density(total / n)


def _ppois(q, mean):
    """R's ``ppois(q, mean)``: P(X <= floor(q + 1e-7)), 0 for q < 0 (``pdtr``, ~1e-15)."""
    return np.where(q < 0, 0.0, special.pdtr(np.floor(q + 1e-7), mean))


def _ecdf_density(x: np.ndarray) -> np.ndarray:
    """``kcdf="none"``: log(F / (1 - F)) with F = ecdf(x)(x) = #{x_i <= x_j} / n."""
    g, n = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    s = np.take_along_axis(x, order, axis=1)
    last = np.ones((g, n), dtype=bool)                 # last position of each group of ties
    last[:, :-1] = s[:, 1:] != s[:, :-1]
    end = np.where(last, np.arange(n), n)
    count = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1] + 1
    f = count / n
    density = np.empty((g, n))
    with np.errstate(divide="ignore"):
        np.put_along_axis(density, order, _c_log(f / (1.0 - f)), axis=1)
    return density


# -- step 2: the random walk ---------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _weights_table(n_half_steps: int, tau: float) -> np.ndarray:
    """pow(r, tau) for r = 0, 1/2, 1, ..., n_half_steps / 2 with C's ``pow`` (``math.pow``), so
    each weight is one fixed number whatever the block (numpy's vectorised power may differ
    in the last bit between its SIMD and scalar paths)."""
    table = np.array([math.pow(m / 2.0, tau) for m in range(n_half_steps + 1)])
    table.setflags(write=False)
    return table


def _check_tau(tau) -> float:
    tau = float(tau)
    if not (np.isfinite(tau) and tau >= 0):
        raise InputError(f"tau must be a finite number >= 0 (GSVA's default is 1), got {tau!r}")
    return tau


def gsva_walk_block(d, membership, *, tau: float = 1.0, mx_diff: bool = True,
                    abs_ranking: bool = False) -> np.ndarray:
    """GSVA enrichment scores (sets x samples) from the densities ``d`` (all genes x a block of
    samples) and a (sets x genes) 0/1 ``membership`` (scipy.sparse): R GSVA 1.46
    ``compute.geneset.es`` + ``ks_matrix_R`` (module docstring, step 2).

    Each sample is ranked once; every set's walk extremes are read at its members' positions
    (closed form), vectorised over the sets of equal size and the samples of the block. A gene
    whose density is NaN in a sample is left out of that sample (n and k count the others).
    Each score depends only on its own sample's column, so the sample chunking does not change
    any value.
    """
    tau = _check_tau(tau)
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"d must be a 2-D (genes x samples) array, got shape {d.shape}")
    n_genes, n_samples = d.shape
    m = as_membership(membership, n_genes)
    m.eliminate_zeros()
    scores = np.full((m.shape[0], n_samples), np.nan)
    if n_samples == 0 or m.shape[0] == 0:
        return scores
    valid = ~np.isnan(d)
    n = valid.sum(axis=0)                                           # usable genes per sample
    index_type = np.int32 if n_genes < 2**30 else np.int64
    order = np.argsort(-d, axis=0, kind="stable")                   # NaN last
    position = np.empty((n_genes, n_samples), dtype=index_type)     # 0 = highest density
    np.put_along_axis(position, order, np.broadcast_to(
        np.arange(n_genes, dtype=index_type)[:, None], d.shape), axis=0)
    del order
    # twice the rank score |n - p + 1 - n/2| (p 1-based, p0 = p - 1): |2 (n - p0) - n|
    n_row = n.astype(index_type)[None, :]
    twice_r = np.abs(2 * (n_row - position) - n_row)
    twice_r[~valid] = 0
    weight = twice_r / 2.0 if tau == 1.0 else _weights_table(n_genes, tau)[twice_r]
    weight[~valid] = 0.0
    del twice_r
    sizes = np.diff(m.indptr)
    for size in np.unique(sizes[sizes > 0]):
        sets = np.flatnonzero(sizes == size)
        per_batch = max(1, WALK_BLOCK_ELEMENTS // int(size * n_samples))
        for b0 in range(0, sets.size, per_batch):
            batch = sets[b0:b0 + per_batch]
            members = m.indices[m.indptr[batch][:, None] + np.arange(size)]  # (sets, size)
            scores[batch] = _walk_extremes(members, position, weight, valid, n, n_genes,
                                           mx_diff=mx_diff, abs_ranking=abs_ranking)
    scores[:, n < 2] = np.nan                                       # GSVA needs >= 2 genes
    return scores


def _walk_extremes(members, position, weight, valid, n, n_genes, *, mx_diff, abs_ranking):
    """Scores of sets of equal size from their members' positions (module docstring)."""
    pos = position[members]                                         # (sets, k, samples)
    ok = valid[members]
    pos = np.where(ok, pos, n_genes)                                # unusable members last
    walk_order = np.argsort(pos, axis=1, kind="stable")
    pos = np.take_along_axis(pos, walk_order, axis=1)
    ok = np.take_along_axis(ok, walk_order, axis=1)
    w = np.take_along_axis(weight[members], walk_order, axis=1)
    k = ok.sum(axis=1)                                              # members used, per sample
    cum = np.cumsum(w, axis=1)
    total = cum[:, -1:, :]
    before = np.zeros_like(cum)
    before[:, 1:] = cum[:, :-1]
    # non-members above the m-th member (0-based m): its 0-based position minus m
    skipped = pos - np.arange(pos.shape[1])[None, :, None]
    outside = (n[None, :] - k)[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        down = np.where(skipped == 0, 0.0, skipped / outside)
        rise_before = np.where(before == 0, 0.0, before / total)
        after = cum / total - down
    low = rise_before - down
    after = np.where(ok & ~np.isnan(after), after, -np.inf)
    low = np.where(ok, low, np.inf)
    top = np.maximum(after.max(axis=1), 0.0)
    bottom = np.minimum(low.min(axis=1), 0.0)
    if mx_diff:
        score = top - bottom if abs_ranking else top + bottom
    else:
        score = np.where(top > np.abs(bottom), top, bottom)
    return np.where(k > 0, score, np.nan)


# -- the lazy wrapper ----------------------------------------------------------------------------

DESCRIPTIONS = {
    "score": ("GSVA enrichment score (Hänzelmann et al. 2013; R GSVA 1.46 gsva(method='gsva', "
              "kcdf={kcdf}, tau={tau}, mx.diff={mx_diff}, abs.ranking={abs_ranking}))"),
    "size": "members used: no missing value, not constant (sd >= 1e-10){extra}",
}


def gsva_scores(ds: xr.Dataset, membership, *, variable: str = "expression",
                kcdf: str = "gaussian", tau: float = 1.0, mx_diff: bool = True,
                abs_ranking: bool = False, samples_per_chunk: int = 256) -> xr.Dataset:
    """Lazy GSVA scores of a cohort: ``score`` (gene_set, sample) and ``size`` (gene_set,).

    ``membership``: an object with ``.names`` and ``.matrix`` (sets x genes sparse 0/1, columns
    = the rows of ``variable``), e.g. ``engine.genesets.map_gene_sets``'s result. The density
    runs on the store's gene chunks (every chunk holds all samples), then the densities are
    rechunked to all genes x blocks of ``samples_per_chunk`` samples (``by_sample``, the
    engine's one deliberate rechunk) for the walk; gene chunks holding more than about a second
    of density work are split first (into at most ``MAX_DENSITY_TASKS`` tasks, the dashboard's
    ``gsva-density``). Building the result computes nothing;
    values do not depend on the chunking of genes or samples nor on the scheduler.
    """
    kcdf = _check_kcdf(kcdf)
    tau = _check_tau(tau)
    features = feature_matrix(ds, variable=variable)
    x = features.data
    names, m = membership_of(membership, x.shape[0], features.dim)
    m.eliminate_zeros()
    options = {"tau": tau, "mx_diff": bool(mx_diff), "abs_ranking": bool(abs_ranking)}
    token = tokenize(x, m, kcdf, options, samples_per_chunk)
    n_sets, n_samples = m.shape[0], x.shape[1]
    # The density is O(samples^2) per gene: store chunks sized for reading (~100 MB) would be
    # minutes of work in one task at 1,000 samples, so they are split along genes (a split
    # moves no data and does not change any value).
    genes_per_task = max(1, DENSITY_PAIRS_PER_TASK // max(1, n_samples * n_samples),
                         -(-x.shape[0] // MAX_DENSITY_TASKS))
    if x.shape[0] and max(x.chunks[0]) > genes_per_task:
        x = x.rechunk({0: genes_per_task})
    density = map_features(x, gene_density_block, n_samples, name="gsva-density", kcdf=kcdf)
    if n_samples:
        per_sample = by_sample(density, samples_per_chunk)
        score = per_sample.map_blocks(
            _walk_task, membership=m, options=options, dtype=np.float64,
            meta=np.empty((0, 0), np.float64), chunks=((n_sets,), per_sample.chunks[1]),
            name=f"gsva-walk-{token}")
    else:
        score = da.zeros((n_sets, 0), chunks=(n_sets, 0))
    usable = density[:, :1].map_blocks(_usable_task, drop_axis=1, dtype=bool,
                                       meta=np.empty((0,), bool), token="gsva-usable-genes")
    size = usable.rechunk(-1).map_blocks(
        _members_used, membership=m, chunks=((n_sets,),), dtype=np.int64,
        meta=np.empty((0,), np.int64), name=f"gsva-size-{token}")
    names_r = {"gaussian": "Gaussian", "poisson": "Poisson", "none": "none"}[kcdf]
    description = DESCRIPTIONS["score"].format(
        kcdf=names_r, tau=tau, mx_diff=str(bool(mx_diff)).upper(),
        abs_ranking=str(bool(abs_ranking)).upper())
    extra = ", no negative value" if kcdf == "poisson" else ""
    return xr.Dataset(
        {"score": xr.DataArray(score, dims=("gene_set", "sample"),
                               attrs={"description": description}),
         "size": xr.DataArray(size, dims=("gene_set",),
                              attrs={"description": DESCRIPTIONS["size"].format(extra=extra)})},
        coords={"gene_set": names, "sample": ds["sample"].values},
        attrs={"test": "gsva", "kcdf": kcdf, "tau": tau, "mx_diff": int(bool(mx_diff)),
               "abs_ranking": int(bool(abs_ranking))})


def _walk_task(block, *, membership, options):
    return gsva_walk_block(np.asarray(block), membership, **options)


def _usable_task(block):
    return ~np.isnan(np.asarray(block)[:, 0])


def _members_used(usable, *, membership):
    return np.asarray(membership @ np.asarray(usable, dtype=np.float64)).round().astype(np.int64)
