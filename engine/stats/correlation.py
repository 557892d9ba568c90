"""Per-feature correlation with one partner: Pearson r and Spearman rho, test and Fisher CI.

Kernels take a (features x samples) block ``x`` and the partner ``y`` (samples,), NaN meaning
missing, and return a float64 ``(features, 5)`` array whose columns are ``RESULT_FIELDS``:
``statistic`` (r or rho), ``p_value``, ``ci_low``, ``ci_high``, ``n``. Each feature uses its
pairwise-complete samples (the feature and ``y`` both present); Spearman ranks both on exactly
those samples (average ranks for ties), as R ``cor.test`` does after ``complete.cases``.
Inputs may be float32; everything is computed in float64.

Conventions (R ``cor.test``, scipy ``pearsonr`` / ``spearmanr``):

* p_value: two-sided, t = r sqrt((n - 2) / (1 - r^2)) with n - 2 df (R ``cor.test(method=
  "pearson")`` and ``cor.test(method="spearman", exact=FALSE)``). ``exact=True`` (Spearman
  only) gives R's exact-test p instead wherever R computes one, i.e. the feature's complete
  samples have no ties in the feature or in ``y`` and n <= 1290: Algorithm AS 89 (exact
  enumeration for n <= 9, Edgeworth series above), R ``cor.test(method="spearman",
  exact=TRUE)``; elsewhere the t approximation, as R falls back to it.
* ci_low, ci_high: Fisher z interval tanh(atanh(r) +- z_{(1 + confidence)/2} / sqrt(n - 3))
  (R ``cor.test(method="pearson")$conf.int``, scipy ``pearsonr(...).confidence_interval()``).
  For Spearman the same formula is applied to rho (as ``psych::corr.test`` does; R
  ``cor.test`` gives no interval for rho).
* Undefined results are NaN, never an error or a warning: the statistic needs n >= 2, the
  p-value n >= 3, the interval n >= 4, and all three a feature and a partner that are not
  constant on the complete samples. |r| = 1 gives p = 0 (t approximation) and the interval
  [r, r].
* Bootstrap (``correlation(..., bootstrap=...)``, ``engine.resample.statistic_bootstrap``):
  ci_low / ci_high become the bootstrap interval of r or rho and the Fisher interval moves to
  ci_low_fisher / ci_high_fisher. Samples (or clusters, ``by``) with a partner value are
  resampled, not stratified unless ``strata`` names an annotation; each replicate computes r
  or rho exactly as above on the resampled samples (Spearman re-ranks them: duplicated samples
  tie). The studentized interval uses the delta-method standard error of Fisher's z,
  (1 - r^2) / sqrt(n - 3).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import bottleneck as bn
import numpy as np
import xarray as xr
from scipy import special

from engine.errors import InputError
from engine.resample import statistic_bootstrap as sb
from engine.stats import multitest
from engine.stats.features import (
    feature_matrix,
    gene_row,
    map_features,
    numeric_annotation,
    sample_annotation,
    strata,
    stratified_result,
)
from engine.stats.features import adjust as adjust_p

__all__ = [
    "EXACT_MAX_N",
    "METHODS",
    "RESULT_FIELDS",
    "correlation",
    "pearson",
    "spearman",
    "spearman_exact_p",
]

RESULT_FIELDS = ("statistic", "p_value", "ci_low", "ci_high", "n")

#: Largest n for which R's ``cor.test(method="spearman", exact=TRUE)`` uses AS 89.
EXACT_MAX_N = 1290
#: AS 89 as in R enumerates all n! permutations up to this n (Edgeworth series above).
_ENUMERATE_MAX_N = 9


def _inputs(x, y):
    """float64 block and partner with the samples where ``y`` is missing dropped."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D (features x samples) array, got shape {x.shape}")
    if y.shape != (x.shape[1],):
        raise ValueError(f"y must be a vector of the block's {x.shape[1]} samples, "
                         f"got shape {y.shape}")
    present = ~np.isnan(y)
    return x[:, present], y[present]


def _pearson_r(x, y, masked: bool):
    """Pearson r and n of each row of ``x`` with ``y``.

    ``y`` is either one (1, m) row shared by every row of ``x`` (``x`` without NaN), or, when
    ``masked``, a (features, m) block with NaN exactly where ``x`` has NaN. Sums are centred
    (two passes) and the three sums use the same reduction, so a row equal to ``y`` gives
    r == 1 exactly.
    """
    count = (~np.isnan(x)).sum(axis=1) if masked else np.full(x.shape[0], x.shape[1])
    if x.shape[1] == 0:
        return np.full(x.shape[0], np.nan), count.astype(np.float64)
    mean, total, high, low = ((bn.nanmean, np.nansum, bn.nanmax, bn.nanmin) if masked
                              else (np.mean, np.sum, np.max, np.min))
    xc = x - mean(x, axis=1)[:, None]
    yc = y - mean(y, axis=1)[:, None]
    sxy = total(xc * yc, axis=1)
    sxx = total(xc * xc, axis=1)
    syy = total(yc * yc, axis=1)
    # Exactly constant data would give a rounding-noise r; R cor() says NA (zero sd).
    constant = (high(x, axis=1) == low(x, axis=1)) | (high(y, axis=1) == low(y, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0)
    r[constant | (count < 2)] = np.nan
    return r, count.astype(np.float64)


def _split_by_missing(x):
    """Rows with every sample present (one shared partner) and rows with missing values."""
    missing = np.isnan(x)
    incomplete = missing.any(axis=1)
    return np.flatnonzero(~incomplete), np.flatnonzero(incomplete), missing[incomplete]


def _correlate(x, y, rank: bool):
    """r (Spearman: of the average ranks on each row's complete samples) and n per row.

    Rows without missing values share one partner (and its ranks): block operations against
    one vector. Rows with missing values get the partner masked to their samples, ranked per
    row; still whole-block operations, so no loop over missing-value patterns is needed.
    """
    full, partial, missing = _split_by_missing(x)
    r = np.empty(x.shape[0])
    n = np.empty(x.shape[0])
    if full.size:
        xf, yf = x[full], y[None, :]
        if rank:
            xf, yf = bn.rankdata(xf, axis=1), bn.rankdata(yf, axis=1)
        r[full], n[full] = _pearson_r(xf, yf, masked=False)
    if partial.size:
        # y restricted to each row's complete samples; ranks are recomputed on those samples.
        xp, yp = x[partial], np.where(missing, np.nan, y)
        if rank:
            xp, yp = bn.nanrankdata(xp, axis=1), bn.nanrankdata(yp, axis=1)
        r[partial], n[partial] = _pearson_r(xp, yp, masked=True)
    return r, n


def _has_ties(a):
    """Per row: do two present (non-NaN) values tie? NaN never equals anything."""
    ordered = np.sort(a, axis=1)
    return (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)


def _t_p_value(r, n):
    """Two-sided p of t = r sqrt(df / (1 - r^2)), df = n - 2 (R ``cor.test``); |r| = 1 -> 0."""
    df = n - 2
    with np.errstate(invalid="ignore", divide="ignore"):
        t = r * np.sqrt(df / ((1.0 - r) * (1.0 + r)))
        p = 2.0 * special.stdtr(df, -np.abs(t))
    p[~(n >= 3) | np.isnan(r)] = np.nan
    return p


def _fisher_interval(r, n, confidence):
    """tanh(atanh(r) -+ z_{(1+confidence)/2} / sqrt(n - 3)); [r, r] when |r| = 1; NaN if n < 4."""
    half = special.ndtri((1.0 + confidence) / 2.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.arctanh(r)
        se = 1.0 / np.sqrt(n - 3)
        low, high = np.tanh(z - half * se), np.tanh(z + half * se)
    perfect = np.abs(r) == 1.0
    low[perfect] = high[perfect] = r[perfect]
    undefined = ~(n >= 4) | np.isnan(r)
    low[undefined] = high[undefined] = np.nan
    return low, high


def _check_confidence(confidence):
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise InputError(f"confidence must be a number between 0 and 1 (e.g. 0.95), "
                         f"got {confidence!r}")


def _result(r, n, p, confidence):
    low, high = _fisher_interval(r, n, confidence)
    return np.stack([r, p, low, high, n], axis=1)


def pearson(x, y, *, confidence: float = 0.95) -> np.ndarray:
    """Pearson correlation of each row of ``x`` with ``y``: (features, 5) ``RESULT_FIELDS``.

    Reference: R ``cor.test(x, y, method="pearson", conf.level=confidence)`` (estimate,
    p.value, conf.int); scipy ``pearsonr(x, y)`` and its ``confidence_interval()``.
    Pairwise-complete samples per feature; see the module docstring for the conventions.
    """
    _check_confidence(confidence)
    x, y = _inputs(x, y)
    r, n = _correlate(x, y, rank=False)
    return _result(r, n, _t_p_value(r, n), confidence)


def spearman(x, y, *, confidence: float = 0.95, exact: bool = False) -> np.ndarray:
    """Spearman rank correlation of each row of ``x`` with ``y``: (features, 5) ``RESULT_FIELDS``.

    Reference: R ``cor.test(x, y, method="spearman", exact=FALSE)`` (rho = Pearson r of the
    average ranks of the complete samples; t-approximation p), scipy ``spearmanr``. With
    ``exact=True``, p_value is R's ``cor.test(..., exact=TRUE)`` p (AS 89, see
    ``spearman_exact_p``) for features whose complete samples have no ties and n <= 1290, the
    t approximation otherwise. ci is the Fisher z interval applied to rho.
    """
    _check_confidence(confidence)
    x, y = _inputs(x, y)
    rho, n = _correlate(x, y, rank=True)
    p = _t_p_value(rho, n)
    if exact:
        ties = _has_ties(x) | _has_ties(np.where(np.isnan(x), np.nan, y))
        use = ~ties & (n >= 3) & (n <= EXACT_MAX_N) & ~np.isnan(rho)
        p[use] = spearman_exact_p(rho[use], n[use])
    return _result(rho, n, p, confidence)


@functools.lru_cache(maxsize=None)
def _null_s(n: int) -> np.ndarray:
    """Sorted S = sum_i (i - p_i)^2 over all n! permutations p (the exact null of AS 89)."""
    perms = np.fromiter(itertools.chain.from_iterable(itertools.permutations(range(n))),
                        dtype=np.int64, count=n * np.prod(np.arange(1, n + 1))).reshape(-1, n)
    s = ((perms - np.arange(n)) ** 2).sum(axis=1)
    s.sort()
    return s


_EDGEWORTH = (0.2274, 0.2531, 0.1745, 0.0758, 0.1033, 0.3932,
              0.0879, 0.0151, 0.0072, 0.0831, 0.0131, 4.6e-4)


def _prho(s, n, lower):
    """R's ``prho`` (Algorithm AS 89, Best & Roberts 1975, as in R's stats/src/prho.c).

    Pr[S >= s] (upper) or Pr[S < s] (``lower``) for S = (n^3 - n)(1 - rho) / 6 under
    independence: all permutations counted for n <= 9, the Edgeworth series above.
    """
    p = np.where(lower, 0.0, 1.0)
    n3 = n * (n * n - 1.0) / 3.0
    above = s > n3
    p[above] = 1.0 - p[above]
    todo = (s > 0) & ~above
    for size in np.unique(n[todo & (n <= _ENUMERATE_MAX_N)]):
        at = np.flatnonzero(todo & (n == size))
        null = _null_s(int(size))
        at_least = null.size - np.searchsorted(null, s[at], side="left")
        p[at] = np.where(lower[at], null.size - at_least, at_least) / null.size
    at = np.flatnonzero(todo & (n > _ENUMERATE_MAX_N))
    if at.size:
        c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12 = _EDGEWORTH
        m, si, lo = n[at], s[at], lower[at]
        b = 1.0 / m
        x = (6.0 * (si - 1) * b / (m * m - 1) - 1) * np.sqrt(m - 1)
        y = x * x
        u = x * b * (c1 + b * (c2 + c3 * b)
                     + y * (-c4 + b * (c5 + c6 * b)
                            - y * b * (c7 + c8 * b
                                       - y * (c9 - c10 * b + y * b * (c11 - c12 * y)))))
        with np.errstate(over="ignore"):
            y = u / np.exp(y / 2.0)
        normal = np.where(lo, special.ndtr(x), special.ndtr(-x))
        p[at] = np.clip(np.where(lo, -y, y) + normal, 0.0, 1.0)
    return p


def spearman_exact_p(rho, n) -> np.ndarray:
    """Two-sided p of R ``cor.test(method="spearman", exact=TRUE)`` for untied data.

    ``rho`` and ``n`` are arrays of the same shape (n >= 2 and <= 1290; the caller checks ties).
    S = (n^3 - n)(1 - rho) / 6; p = min(1, 2 Pr[S >= round(S)]) when S is above its null mean,
    else min(1, 2 Pr[S <= round(S)]) (R computes the latter as Pr[S < round(S) + 2]: S is
    even); probabilities from Algorithm AS 89 (``_prho``). As in R, the Edgeworth series is
    clipped to [0, 1], so strong correlations at moderate n get p = 0.
    """
    rho, n = np.broadcast_arrays(np.asarray(rho, dtype=np.float64),
                                 np.asarray(n, dtype=np.float64))
    shape = rho.shape
    rho, n = rho.ravel(), n.ravel()
    q = (n**3 - n) * (1.0 - rho) / 6.0
    lower = ~(q > (n**3 - n) / 6.0)
    p = _prho(np.round(q) + 2.0 * lower, n, lower)
    return np.minimum(2.0 * p, 1.0).reshape(shape)


KERNELS = {"pearson": pearson, "spearman": spearman}
METHODS = tuple(KERNELS)


def _sorted_ties(x):
    """Per row of ``x`` (no NaN): the sort order; the rows with tied values, and for each of
    their sorted positions the first and the last position of its tie group."""
    order = np.argsort(x, axis=1, kind="stable")
    ordered = np.take_along_axis(x, order, axis=1)
    new = np.ones(x.shape, bool)  # a sorted position starts a tie group
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    tied = np.flatnonzero(~new.all(axis=1))
    new = new[tied]
    last = np.ones(new.shape, bool)
    last[:, :-1] = new[:, 1:]
    positions = np.broadcast_to(np.arange(x.shape[1]), new.shape)
    first = np.maximum.accumulate(np.where(new, positions, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, positions, x.shape[1] - 1)[:, ::-1],
                                axis=1)[:, ::-1]
    return order, tied, first, end


def _centred_ranks(counts, total, order, tied, first, end):
    """Each row's average ranks among the resampled values minus their mean (total + 1) / 2,
    in the row's sort order, with the counts in that order (sample i drawn counts[i] times).
    The rank of a tie group is (count of smaller values) + (count of the group + 1) / 2, so the
    centred rank is (smaller + smaller-or-equal - total) / 2. Exact: multiples of 1/2."""
    c = counts[order]
    upto = np.cumsum(c, axis=1)  # values up to each sorted position
    below = upto - c
    if tied.size:  # a tie group: the count below its first value, up to its last
        below[tied] = np.take_along_axis(below[tied], first, axis=1)
        upto[tied] = np.take_along_axis(upto[tied], end, axis=1)
    below += upto
    below -= total
    below *= 0.5
    return c, below


class _Replicates:
    """r (or rho) of every row of a block with ``y`` on any replicate, from the replicate's
    counts of each sample: rows without missing values as count-weighted sums over the block's
    samples, ranks of a replicate from each row's sort order computed once (``_sorted_ties``:
    no sort per replicate); rows with missing values by ``_correlate`` on the resampled
    columns. The same r as ``_correlate`` on ``x[:, idx]`` (ranks exactly; sums to rounding).
    """

    def __init__(self, x, y, rank: bool, studentized: bool):
        self.x = np.ascontiguousarray(x, dtype=np.float64)
        self.y, self.rank, self.studentized = np.asarray(y, dtype=np.float64), rank, studentized
        self.full, self.partial, _ = _split_by_missing(self.x)
        self.xf = self.x[self.full]
        if rank:
            self.sorted_x = _sorted_ties(self.xf)
            self.sorted_y = _sorted_ties(self.y[None, :])

    def __call__(self, idx):
        idx = np.asarray(idx)
        r = np.empty(self.x.shape[0])
        n = np.full(self.x.shape[0], float(idx.size))
        if self.full.size:
            counts = np.bincount(idx, minlength=self.x.shape[1]).astype(np.float64)
            r[self.full] = (self._ranked if self.rank else self._pearson)(counts, idx.size)
        if self.partial.size:
            r[self.partial], n[self.partial] = _correlate(self.x[np.ix_(self.partial, idx)],
                                                          self.y[idx], self.rank)
        if not self.studentized:
            return r
        with np.errstate(invalid="ignore", divide="ignore"):
            se = np.where(n >= 4, (1.0 - r * r) / np.sqrt(n - 3), np.nan)
        return np.column_stack([r, se])

    def _ranked(self, counts, total):
        c, dx = _centred_ranks(counts, total, *self.sorted_x)
        y_order, dy = self.sorted_y[0][0], _centred_ranks(counts, total, *self.sorted_y)[1][0]
        dy_by_sample = np.empty_like(dy)
        dy_by_sample[y_order] = dy
        cdx = c * dx
        # sums of products of half-integers and counts: exact in any order
        sxx = np.einsum("ij,ij->i", cdx, dx)
        sxy = np.einsum("ij,ij->i", cdx, dy_by_sample[self.sorted_x[0]])
        syy = counts @ (dy_by_sample * dy_by_sample)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0)
        r[(sxx == 0) | (syy == 0) | (total < 2)] = np.nan  # constant resamples, exactly
        return r

    def _pearson(self, counts, total):
        drawn = np.flatnonzero(counts)
        x, y, c = self.xf[:, drawn], self.y[drawn], counts[drawn]
        xc = x - ((x * c).sum(axis=1) / total)[:, None]
        yc = y - (y * c).sum() / total
        cxc = c * xc
        sxy = (cxc * yc).sum(axis=1)
        sxx = (cxc * xc).sum(axis=1)
        syy = (c * yc * yc).sum()
        constant = (x.max(axis=1) == x.min(axis=1)) | (y.max() == y.min())
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0)
        r[constant | (total < 2)] = np.nan
        return r


def bootstrap_correlation(x, *, y, rank: bool, studentized: bool = False):
    """The bootstrap statistic of a block (``statistic_bootstrap`` protocol): a function of a
    replicate's sample positions ``idx`` giving r (or rho, ``rank``) of every row of ``x`` with
    ``y`` (no missing values) on those samples, as ``_correlate(x[:, idx], y[idx])``, and with
    ``studentized`` its standard error (1 - r^2) / sqrt(n - 3) (delta method of Fisher's z;
    NaN for n < 4). Per-block work (sort orders) is done once here."""
    return _Replicates(x, y, rank, studentized)


@dataclass(frozen=True)
class _StratumBootstrap:
    """One stratum's resampling: cluster and stratum codes of its samples, the kernel options."""

    clusters: np.ndarray | None
    strata: np.ndarray | None
    soft: bool
    stratified: bool
    options: dict


def _bootstrap_block(x, y, method, plan: _StratumBootstrap):
    """(features, 3) bootstrap fields of one stratum. Samples without a partner value are not
    resampled (they are in no feature's correlation); a stratum that cannot be resampled
    (fewer than 2 such samples, a named bootstrap stratum of one unit) gets NaN."""
    present = ~np.isnan(y)
    try:
        if present.sum() < 2:
            raise InputError("fewer than 2 samples")
        units = sb.units_of(int(present.sum()),
                            *(None if c is None else c[present]
                              for c in (plan.clusters, plan.strata)), soft=plan.soft)
    except InputError:
        if plan.stratified:
            return sb.empty_interval(x.shape[0])
        raise
    statistic = functools.partial(bootstrap_correlation, y=y[present],
                                  rank=method == "spearman",
                                  studentized=plan.options["method"] == "studentized")
    return sb.bootstrap_statistic(x[:, present], statistic, units, **plan.options)


def _stratified(block, *, method, y, samples, options, bootstrap=None):
    """One read of a chunk: the kernel on each stratum's samples, fields side by side (each
    stratum's bootstrap fields after its own)."""
    y = np.asarray(y, dtype=np.float64)
    parts = []
    for s, idx in enumerate(samples):
        parts.append(KERNELS[method](block[:, idx], y[idx], **options))
        if bootstrap is not None:
            parts.append(_bootstrap_block(np.asarray(block[:, idx], dtype=np.float64), y[idx],
                                          method, bootstrap[s]))
    return np.concatenate(parts, axis=1)


def _descriptions(method: str, partner: str, confidence: float, exact: bool, adjust: str):
    name = {"pearson": "Pearson correlation r", "spearman": "Spearman rank correlation rho"}
    if method == "spearman" and exact:
        p_rule = ("two-sided p-value: exact (Algorithm AS 89, R cor.test exact=TRUE) where the "
                  "complete samples have no ties and n <= 1290, else the t approximation "
                  "with n - 2 df")
    else:
        p_rule = "two-sided p-value, t approximation with n - 2 df"
    level = f"{confidence * 100:g}%"
    return {
        "statistic": f"{name[method]} of the feature with {partner} over the samples with both "
                     "values",
        "p_value": p_rule,
        "p_adj": f"{adjust} adjusted p-value over the features with a p-value"
                 " (separately per stratum)",
        "ci_low": f"lower bound of the {level} Fisher z confidence interval of the correlation",
        "ci_high": f"upper bound of the {level} Fisher z confidence interval of the correlation",
        "n": f"samples with a value of both the feature and {partner}",
    }


def _bootstrap_plans(ds, options, groups, y, covariate, stratified):
    """Per stratum, the resampling of its samples with a partner value (covariate) or of all
    its samples (gene partner: its missing values are only known when computed)."""
    positions = np.unique(np.concatenate([g.samples for g in groups]))
    if covariate is not None:
        positions = positions[~np.isnan(y[positions])]
    plan = sb.resampling(lambda name: sample_annotation(ds, name, "bootstrap annotation"),
                         positions, options)
    plans = []
    for g in groups:
        clusters, strata_codes = plan.codes(g.samples)  # -1: no covariate, never resampled
        plans.append(_StratumBootstrap(clusters, strata_codes, plan.soft, stratified,
                                       sb.kernel_options(options,
                                                         sb.key_for(options, g.label, stratified))))
        if covariate is not None:  # samples known now: refuse what cannot be resampled now
            sb.units_or_none(plan, g.samples[np.isin(g.samples, positions)],
                             stratified=stratified)
    return plan, plans


def correlation(ds: xr.Dataset, *, method: str, covariate: str | None = None,
                gene: str | None = None, stratify_by: str | None = None,
                variable: str = "expression", features: Sequence[str] | None = None,
                exact: bool = False, confidence: float = 0.95, adjust: str = "BH",
                bootstrap=None) -> xr.Dataset:
    """Correlation of every feature with a numeric sample annotation or with one gene, lazily.

    The partner is ``covariate`` (a numeric sample annotation; samples without a value are
    left out) or ``gene`` (that gene's values in ``variable``: a gene-vs-all screen, where the
    gene's own row has r = 1). Features are the genes of ``variable`` or, with ``features``,
    numeric sample annotations (dim ``feature``). ``method`` is ``pearson`` or ``spearman``;
    see the module docstring for conventions and references. With ``stratify_by``, every
    variable has dims (``stratum``, feature) and is computed from one read of each chunk;
    without, (feature,). Variables: statistic, p_value, p_adj (``adjust`` over the features of
    each stratum), ci_low, ci_high, n. ``bootstrap`` (``statistic_bootstrap.BootstrapOptions``
    or anything ``bootstrap_options`` accepts): ci_low / ci_high are then the bootstrap
    interval of the correlation, followed by n_boot, ci_low_fisher, ci_high_fisher (each
    stratum of ``stratify_by`` resampled on its own, with its own stream). Building the result
    computes nothing.
    """
    if method not in KERNELS:
        raise InputError(f"unknown correlation method {method!r} (choose from "
                         f"{', '.join(METHODS)})")
    if (covariate is None) == (gene is None):
        raise InputError("correlation needs exactly one partner: covariate (a numeric sample "
                         "annotation) or gene (a gene ID, for a gene-vs-all screen)")
    if exact and method != "spearman":
        raise InputError("exact p-values exist for method 'spearman' only; drop exact")
    _check_confidence(confidence)
    if adjust not in multitest.METHODS:
        raise InputError(f"unknown p-value adjustment {adjust!r} (choose from "
                         f"{', '.join(multitest.METHODS)})")
    options = sb.bootstrap_options(bootstrap)
    rows = feature_matrix(ds, variable=variable, features=features)
    if covariate is not None:
        y = numeric_annotation(ds, covariate, "covariate")
        if np.isnan(y).all():
            raise InputError(f"covariate {covariate!r} has no values")
        partner, attrs = f"covariate {covariate!r}", {"covariate": covariate}
    else:
        y = gene_row(ds, gene, variable)
        partner, attrs = f"gene {gene!r}", {"gene": str(gene)}
    groups = strata(ds, stratify_by)
    kernel_options = {"confidence": float(confidence)} | ({"exact": True} if exact else {})
    samples = [g.samples for g in groups]
    fields = list(RESULT_FIELDS)
    order = ["statistic", "p_value", "p_adj", "ci_low", "ci_high", "n"]
    descriptions = _descriptions(method, partner, confidence, exact, adjust)
    plans = None
    if options is not None:
        plan, plans = _bootstrap_plans(ds, options, groups, y, covariate,
                                       stratify_by is not None)
        # the kernel's Fisher interval keeps its values under new names
        fields = [f"{f}_fisher" if f in ("ci_low", "ci_high") else f for f in fields]
        fields += list(sb.BOOT_FIELDS)
        order[5:5] = ["n_boot", "ci_low_fisher", "ci_high_fisher"]
        effect = {"pearson": "the Pearson correlation r",
                  "spearman": "the Spearman correlation rho"}[method]
        descriptions |= {f"{bound}_fisher": descriptions[bound] for bound in ("ci_low", "ci_high")}
        descriptions |= sb.interval_descriptions(options, effect, plan)
        attrs |= sb.bootstrap_attrs(options, plan)
    width = len(fields)
    stacked = map_features(rows.data, _stratified, width * len(groups),
                           name=f"{method}-correlation", method=method, y=y,
                           samples=samples, options=kernel_options, bootstrap=plans)
    columns = {f: [stacked[:, s * width + i] for s in range(len(groups))]
               for i, f in enumerate(fields)}
    columns["p_adj"] = [adjust_p(p, adjust) for p in columns["p_value"]]
    attrs |= {"test": method, "confidence": float(confidence), "exact": bool(exact),
              "adjust": adjust, "variable": variable}
    return stratified_result({f: columns[f] for f in order}, rows, groups, stratify_by,
                             attrs=attrs, descriptions=descriptions)
