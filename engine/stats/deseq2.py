"""DESeq2 differential expression of counts as one lazy Dask graph: ``deseq2(ds, ...)``.

DESeq2 1.38 ``DESeq()`` with its defaults (size factors "ratio", gene-wise Cox-Reid
dispersions, parametric trend, MAP shrinkage, Wald test without a beta prior, Cook's outlier
replacement and refit with >= 7 replicates) and ``results(contrast = c(group, case,
control))`` (Cook's cutoff qf(0.99, p, m - p), independent filtering at ``alpha`` on the mean
of normalised counts, BH); Love, Huber & Anders 2014, Genome Biology 15:550. The kernels are in
``engine.stats.nbinom`` (what each transcribes, and where the engine's numbers can differ from
R's, is said there).

The model: the two-group form is ``~ group`` on the case and control samples (cohort order,
as ``oracle/deseq2.R``); ``design="~ patient + condition"`` evaluates a formula over the
annotations of those samples (``engine.stats.design``) with ``control`` as the reference level
of ``group``, and tests the column ``group[T.case]``. ``effect`` is the log2 fold change case
vs control.

The graph, with the matrix read in passes and only 1-D arrays (or a handful of numbers)
between them:

1. size factors (``engine.preprocess.size_factors``: log geometric means per gene chunk, then
   medians on whole columns), unless given;
2. per gene chunk: mean of normalised counts and the gene-wise dispersion;
3. one global task: the dispersion trend (a + b / mean, or the mean), the variance of the log
   dispersions around it and the prior variance;
4. per gene chunk (the counts read again, ``transforms.second_pass``): the fitted means of
   step 2 (recomputed: cheaper than holding a matrix), the MAP dispersion, the Wald test, Cook's
   distances, and for genes with an outlier among samples of a design cell with >= 7 samples
   the replaced counts and a refit of dispersion and test (with the same trend and prior);
5. one global task on (mean, p-value, Cook's) vectors: which maximum Cook's distance counts
   (DESeq2 drops it for every gene once any gene was refitted and every sample is replaceable,
   and zeroes the replaceable samples' distances otherwise), the Cook's filter, the
   independent filtering threshold and the adjusted p-values.

Every row is computed on its own (``nbinom``'s row-wise sums), so the results are the same
bits for any gene chunking; each chunk is processed in batches of rows of about
``BATCH_CELLS`` cells to bound the temporaries.

Undefined results: genes with all counts zero (or a missing count) get NaN statistics and no
adjusted p-value, with base_mean 0 (NaN for a missing count); genes whose counts are all zero after outlier
replacement get log2 fold change 0, se 0, statistic 0 and p-value 1, as DESeq2 reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from scipy import stats

from engine.errors import InputError, preview
from engine.preprocess.size_factors import METHODS as SIZE_FACTOR_METHODS
from engine.preprocess.counts import count_variable
from engine.preprocess.size_factors import size_factors_matrix
from engine.preprocess.transforms import second_pass
from engine.preprocess.size_factors import size_factors as lazy_size_factors
from engine.preprocess.transforms import as_delayed, as_matrix
from engine.stats import multitest
from engine.stats import nbinom as nb
from engine.stats.design import design_matrix
from engine.stats.features import Features, result_dataset
from engine.stats.per_gene import two_group_design

__all__ = ["COLUMNS", "DESCRIPTIONS", "FIT_TYPES", "Model", "deseq2", "deseq2_arrays",
           "deseq2_model", "filtering_curve", "independent_filtering"]

FIT_TYPES = ("parametric", "mean")
MIN_REPLICATES_FOR_REPLACE = 7
#: Rows of a chunk processed together: about this many (genes x samples) float64 cells per
#: working array (8 MB), so a chunk of 10,000 samples needs a few hundred MB at most.
BATCH_CELLS = 2**20
_LOG2E = 1.0 / np.log(2.0)

COLUMNS = ["effect", "lfc_se", "statistic", "p_value", "p_adj", "base_mean", "disp_gene_est",
           "disp_fit", "dispersion", "max_cooks", "cooks_outlier", "refitted", "converged"]
DESCRIPTIONS = {
    "effect": "log2 fold change case vs control (DESeq2 log2FoldChange, MLE, no shrinkage)",
    "lfc_se": "standard error of the log2 fold change (DESeq2 lfcSE)",
    "statistic": "Wald statistic effect / lfc_se (DESeq2 stat)",
    "p_value": "two-sided Wald p-value; NaN for Cook's distance outliers (DESeq2 pvalue)",
    "p_adj": "adjusted p-value after independent filtering on base_mean (DESeq2 padj; NaN for "
             "filtered genes); method in the attribute adjust",
    "base_mean": "mean of the normalised counts over the samples of the model (DESeq2 "
                 "baseMean; after outlier replacement for refitted genes)",
    "disp_gene_est": "gene-wise (Cox-Reid) dispersion estimate (DESeq2 dispGeneEst)",
    "disp_fit": "dispersion trend at base_mean (DESeq2 dispFit)",
    "dispersion": "final dispersion: MAP estimate, or the gene-wise one for dispersion "
                  "outliers (DESeq2 dispersion)",
    "max_cooks": "largest Cook's distance over samples of design cells with >= 3 samples, "
                 "as results() uses it (DESeq2 maxCooks)",
    "cooks_outlier": "1 if max_cooks is above the Cook's cutoff and the p-value was removed",
    "refitted": "1 if counts with a Cook's distance above the cutoff were replaced (samples of "
                "design cells with >= 7 samples) and the gene refitted (DESeq2 replace)",
    "converged": "1 if the GLM fit (IRLS, or its fallback optimiser) converged (DESeq2 "
                 "betaConv)",
}
#: The per-gene fields of step 4 (then step 5 adds p_adj, cooks_outlier and the final
#: p_value and max_cooks).
_TEST_FIELDS = ("effect", "lfc_se", "statistic", "p_value", "base_mean", "disp_gene_est",
                "disp_fit", "dispersion", "max_cooks_original", "max_cooks_zeroed", "replace",
                "new_all_zero", "dont_filter", "converged", "refitted", "now_zero")
_GENE_FIELDS = ("base_mean", "disp_gene_est")
_TREND_FIELDS = ("asymptotic_dispersion", "extra_poisson", "log_dispersion_variance",
                 "dispersion_prior_variance")
_RESULT_FIELDS = ("p_value", "p_adj", "max_cooks", "cooks_outlier")


# -- the model ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Model:
    """The design on the samples used (positions along ``sample``), the tested column and
    what DESeq2's rules need to know about it."""

    matrix: np.ndarray
    samples: np.ndarray
    coef: int
    columns: list[str]
    attrs: dict
    single_factor: bool  # design ~ group: results()' rule for Cook's outliers with many counts

    @property
    def cooks_cutoff(self) -> float:
        m, p = self.matrix.shape
        return float(stats.f.ppf(0.99, p, m - p))

    @property
    def replaceable(self) -> np.ndarray:
        return nb.n_or_more_in_cell(self.matrix, MIN_REPLICATES_FOR_REPLACE)


def deseq2_model(ds: xr.Dataset, *, group: str, case, control, design: str | None = None
                 ) -> Model:
    """The design of ``deseq2`` (module docstring); ``InputError`` for a design DESeq2 refuses."""
    tg = two_group_design(ds, group=group, case=case, control=control)
    samples = np.sort(np.concatenate([tg.case, tg.control]))
    attrs = {"group": group, "case": str(case), "control": str(control)}
    if design is None:
        is_case = np.isin(samples, tg.case).astype(float)
        matrix = np.column_stack([np.ones(samples.size), is_case])
        columns = ["Intercept", f"{group}[T.{case}]"]
        model = Model(matrix, samples, 1, columns, attrs | {"design": f"~ {group}"}, True)
    else:
        sub = ds.isel(sample=samples)
        d = design_matrix(sub, design, reference={group: str(control)})
        name = f"{group}[T.{case}]"
        if name not in d.columns:
            raise InputError(f"design {design!r} has no column {name!r} for {group} {case!r} vs "
                             f"{control!r} (columns: {', '.join(d.columns)}); the design needs "
                             f"{group} as a main effect with an intercept, e.g. '~ patient + "
                             f"{group}'")
        others = [t for t in d.terms if t not in ("1", "Intercept", group)]
        model = Model(d.matrix, samples[d.samples], d.columns.index(name), list(d.columns),
                      attrs | {"design": design}, not others)
    m, p = model.matrix.shape
    if m <= p:
        raise InputError(f"the design has {p} columns for {m} samples: no replicates to "
                         "estimate the dispersion (DESeq2 refuses it); use a design with fewer "
                         "terms")
    return model


# -- numpy stages (one chunk of genes, or the 1-D vectors of all genes) ---------------------------

def _batches(n_rows: int, n_samples: int):
    step = max(1, BATCH_CELLS // max(n_samples, 1))
    return [slice(s, min(s + step, n_rows)) for s in range(0, n_rows, step)] or [slice(0, 0)]


def _usable(y: np.ndarray) -> np.ndarray:
    """Rows DESeq2 fits: not all zero and without missing counts."""
    return ~np.isnan(y).any(axis=1) & (y > 0).any(axis=1)


def gene_stage(block, sf, *, x) -> np.ndarray:
    """Step 2 for a (genes x samples) block: (genes, 2) base_mean, disp_gene_est (NaN where
    the gene is not fitted)."""
    y_all = np.ascontiguousarray(block, dtype=np.float64)
    sf = np.asarray(sf, dtype=np.float64).reshape(-1)
    out = np.full((y_all.shape[0], len(_GENE_FIELDS)), np.nan)
    for rows in _batches(*y_all.shape):
        y = y_all[rows]
        part = out[rows]
        part[:, 0] = (y / sf).mean(axis=1)
        fit = _usable(y)
        if fit.any():
            part[fit, 1] = nb.gene_wise_dispersion(y[fit], x, sf)[0]
    return out


def trend_stage(genes, *, fit_type: str, m: int, p: int, prior: bool = True) -> np.ndarray:
    """Step 3 on all genes' (base_mean, disp_gene_est): the trend coefficients (a, b; for
    "mean" the mean and 0), the variance of log dispersions around the trend and the prior
    variance (NaN without ``prior``). ``InputError`` where DESeq2 stops."""
    genes = np.asarray(genes, dtype=np.float64)
    fitted = genes[~np.isnan(genes[:, 1])]
    # in a fixed order (by mean, then dispersion), so the trend does not depend on the genes'
    # order in the cohort either
    fitted = fitted[np.lexsort((fitted[:, 1], fitted[:, 0]))]
    base_mean, disp = fitted[:, 0], fitted[:, 1]
    use = disp > 100 * nb.MIN_DISP
    if not use.any():
        raise InputError("every gene-wise dispersion estimate is within 2 orders of magnitude of "
                         "the minimum (1e-8), so DESeq2 cannot fit a dispersion trend (the "
                         "counts look Poisson or there are too few genes)")
    if fit_type == "parametric":
        try:
            a, b = nb.parametric_trend(base_mean[use], disp[use])
        except nb.TrendFitError as e:
            raise InputError(f"the parametric dispersion trend a + b / mean does not fit these "
                             f"counts ({e}); DESeq2 would switch to a local fit, which the engine "
                             "does not implement: use fit_type 'mean'") from None
    else:
        a, b = nb.mean_trend(disp), 0.0
    disp_fit = a + b / base_mean
    var_log = nb.log_dispersion_variance(disp, disp_fit)
    prior_var = nb.dispersion_prior_variance(disp, disp_fit, var_log, m, p) if prior else np.nan
    return np.array([a, b, var_log, prior_var])


def _wald(y, x, sf, dispersion, coef):
    fit = nb.fit_glm(y, x, sf, dispersion)
    lfc = fit.beta[:, coef] * _LOG2E
    se = np.sqrt(np.maximum(fit.beta_var[:, coef], 0.0)) * _LOG2E
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = lfc / se
    p = 2.0 * stats.norm.sf(np.abs(stat))
    return fit, np.column_stack([lfc, se, stat, p])


def _fit_rows(y, sf, x, coef, disp_gene, trend, mu=None):
    """MAP dispersion and Wald test of the rows of ``y`` with the given gene-wise dispersions
    (and fitted means of the gene-wise step, recomputed when not given)."""
    a, b, var_log, prior = trend
    base_mean = (y / sf).mean(axis=1)
    disp_fit = a + b / base_mean
    if mu is None:
        mu = _gene_wise_mu(y, x, sf)
    final, _, _ = nb.map_dispersion(y, x, mu, disp_gene, disp_fit, prior_var=prior,
                                    var_log_disp=var_log)
    fit, wald = _wald(y, x, sf, final, coef)
    return fit, wald, base_mean, disp_fit, final


def _gene_wise_mu(y, x, sf):
    """The fitted means of the gene-wise step (``nbinom.gene_wise_dispersion``'s ``mu``),
    without its line search: the same bits, since the same functions see the same rows."""
    return nb.gene_wise_mu(y, x, sf, nb.dispersion_start(y, x, sf))


def test_stage(block, genes, sf, trend, *, x, coef: int, cutoff: float,
               replace_outliers: bool, replaceable) -> np.ndarray:
    """Step 4 for a (genes x samples) block and its step-2 rows: (genes, len(_TEST_FIELDS))."""
    y_all = np.ascontiguousarray(block, dtype=np.float64)
    genes = np.asarray(genes, dtype=np.float64)
    sf = np.asarray(sf, dtype=np.float64).reshape(-1)
    trend = np.asarray(trend, dtype=np.float64)
    p = x.shape[1]
    f = {name: i for i, name in enumerate(_TEST_FIELDS)}
    out = np.full((y_all.shape[0], len(_TEST_FIELDS)), np.nan)
    out[:, f["base_mean"]] = genes[:, 0]
    for rows in _batches(*y_all.shape):
        sub_out = out[rows]
        ok = np.flatnonzero(_usable(y_all[rows]))
        if ok.size == 0:
            continue
        y = y_all[rows][ok]
        res = np.full((ok.size, len(_TEST_FIELDS)), np.nan)
        disp_gene = genes[rows][ok, 1]
        fit, wald, base_mean, disp_fit, final = _fit_rows(y, sf, x, coef, disp_gene, trend)
        res[:, :4] = wald
        res[:, f["base_mean"]] = base_mean
        res[:, f["disp_gene_est"]] = disp_gene
        res[:, f["disp_fit"]] = disp_fit
        res[:, f["dispersion"]] = final
        res[:, f["converged"]] = fit.converged
        robust = nb.robust_moments_dispersion(y / sf, x)
        cooks = nb.cooks_distance(y, fit.mu, fit.hat, robust, p)
        res[:, f["max_cooks_original"]] = nb.max_cooks(cooks, x)
        res[:, f["max_cooks_zeroed"]] = res[:, f["max_cooks_original"]]
        res[:, f["dont_filter"]] = _many_above_outlier(y, cooks)
        res[:, f["replace"]] = res[:, f["new_all_zero"]] = res[:, f["refitted"]] = 0.0
        res[:, f["now_zero"]] = 0.0
        if replace_outliers:
            new_y, replace = nb.replacement_counts(y, sf, cooks, cutoff, replaceable)
            new_zero = replace & ~(new_y > 0).any(axis=1)
            refit = np.flatnonzero(replace & ~new_zero)
            if refit.size:
                yr = new_y[refit]
                disp_r, mu_r, _ = nb.gene_wise_dispersion(yr, x, sf)
                fit_r, wald_r, bm_r, fit_disp_r, final_r = _fit_rows(yr, sf, x, coef, disp_r,
                                                                     trend, mu_r)
                res[refit, :4] = wald_r
                res[refit, f["base_mean"]] = bm_r
                res[refit, f["disp_gene_est"]] = disp_r
                res[refit, f["disp_fit"]] = fit_disp_r
                res[refit, f["dispersion"]] = final_r
                res[refit, f["converged"]] = fit_r.converged
            res[new_zero, f["base_mean"]] = 0.0
            res[new_zero, f["converged"]] = np.nan  # DESeq2 clears these genes' fit columns
            zeroed = np.where(np.asarray(replaceable)[None, :], 0.0, cooks)
            res[:, f["max_cooks_zeroed"]] = nb.max_cooks(zeroed, x)
            res[:, f["replace"]] = replace
            res[:, f["new_all_zero"]] = new_zero
            res[refit, f["refitted"]] = 1.0
            now_zero = replace & (res[:, f["base_mean"]] == 0)
            res[now_zero, :4] = [0.0, 0.0, 0.0, 1.0]
            res[:, f["now_zero"]] = now_zero
        sub_out[ok] = res
    return out


def _many_above_outlier(y, cooks) -> np.ndarray:
    """results()' exception to the Cook's filter (design ~ group with two levels): at least 3
    samples have a count above the count of the sample with the largest Cook's distance."""
    finite = np.isfinite(cooks)
    has = finite.any(axis=1)
    where = np.argmax(np.where(finite, cooks, -np.inf), axis=1)
    out_count = y[np.arange(y.shape[0]), where]
    return has & ((y > out_count[:, None]).sum(axis=1) >= 3)


def results_stage(tested, *, alpha: float, cooks_cutoff: bool, cutoff: float,
                  independent: bool, adjust_method: str, replace_outliers: bool,
                  all_replaceable: bool, single_factor: bool):
    """Step 5 on all genes' step-4 fields: ((genes, len(_RESULT_FIELDS)), (threshold, theta))."""
    t = np.asarray(tested, dtype=np.float64)
    f = {name: i for i, name in enumerate(_TEST_FIELDS)}
    tested_rows = ~np.isnan(t[:, f["replace"]])
    replace = t[:, f["replace"]] == 1
    refit_ran = replace_outliers and bool((replace & (t[:, f["new_all_zero"]] != 1)).any())
    if refit_ran:
        max_cooks = (np.full(t.shape[0], np.nan) if all_replaceable
                     else t[:, f["max_cooks_zeroed"]].copy())
    else:
        max_cooks = t[:, f["max_cooks_original"]].copy()
    with np.errstate(invalid="ignore"):
        outlier = (max_cooks > cutoff) if cooks_cutoff else np.zeros(t.shape[0], dtype=bool)
    if single_factor:
        outlier &= t[:, f["dont_filter"]] != 1
    outlier &= t[:, f["now_zero"]] != 1
    p = np.where(outlier, np.nan, t[:, f["p_value"]])
    base_mean = t[:, f["base_mean"]]
    if independent:
        p_adj, threshold, theta = independent_filtering(base_mean, p, alpha=alpha,
                                                        method=adjust_method)
    else:
        p_adj = multitest.METHODS[adjust_method](p)
        threshold = theta = np.nan
    out = np.column_stack([p, p_adj, max_cooks, np.where(tested_rows, outlier, np.nan)])
    return out, np.array([threshold, theta])


# -- independent filtering (pvalueAdjustment / genefilter filtered_p) -----------------------------

def _r_quantile7(x: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """R ``quantile(x, probs)`` (type 7), operation for operation."""
    x = np.sort(x)
    n = x.size
    index = 1 + (n - 1) * probs
    lo = np.floor(index).astype(np.int64)
    hi = np.ceil(index).astype(np.int64)
    qs = x[lo - 1]
    h = index - lo
    interp = (index > lo) & (x[hi - 1] != qs)
    qs = np.where(interp, (1 - h) * qs + h * x[hi - 1], qs)
    return qs


def filtering_curve(filter_stat, p, *, alpha: float = 0.1, method: str = "BH"):
    """genefilter ``filtered_p`` as DESeq2's ``pvalueAdjustment`` calls it: theta on 50 points
    from the fraction of zeros in ``filter_stat`` to 0.95 (R ``seq``), the cutoffs (R
    ``quantile`` type 7), the adjusted p-values of the genes at or above each cutoff
    (genes x 50, NaN below) and the number of them below ``alpha``."""
    filt = np.asarray(filter_stat, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    adjust = multitest.METHODS[method]
    known = ~np.isnan(filt)
    lower = float(np.mean(filt[known] == 0)) if known.any() else 0.0
    upper = 0.95 if lower < 0.95 else 1.0
    theta = nb._r_seq(lower, upper, 50)
    cutoffs = _r_quantile7(filt[known], theta) if known.any() else np.full(50, np.nan)
    adjusted = np.full((p.size, theta.size), np.nan)
    for i, cut in enumerate(cutoffs):
        use = known & (filt >= cut)
        if use.any():
            adjusted[use, i] = adjust(p[use])
    with np.errstate(invalid="ignore"):
        rejections = (adjusted < alpha).sum(axis=0)
    return theta, cutoffs, adjusted, rejections


def independent_filtering(filter_stat, p, *, alpha: float = 0.1, method: str = "BH"):
    """DESeq2 ``pvalueAdjustment`` (``filtering_curve``): the theta chosen is the first whose
    rejections at ``alpha`` exceed the maximum of their lowess fit (R ``lowess(f = 1/5)``;
    statsmodels' port agrees with R's to 1e-8 on the fixtures' curves) less the fit's residual
    RMS over thetas with rejections; the first theta when there are at most 10 rejections.
    Returns (adjusted p-values, threshold, theta); genes below the threshold get NaN."""
    from statsmodels.nonparametric.smoothers_lowess import lowess

    theta, cutoffs, adjusted, rejections = filtering_curve(filter_stat, p, alpha=alpha,
                                                           method=method)
    if rejections.max() <= 10:
        j = 0
    else:
        fit = lowess(rejections.astype(np.float64), theta, frac=1 / 5, it=3,
                     delta=0.01 * (theta.max() - theta.min()), return_sorted=False)
        positive = rejections > 0
        residual = rejections[positive] - fit[positive]
        thresh = fit.max() - np.sqrt(np.mean(residual ** 2))
        above = np.flatnonzero(rejections > thresh)
        j = int(above[0]) if above.size else 0
    return adjusted[:, j], float(cutoffs[j]), float(theta[j])


# -- the lazy graph -------------------------------------------------------------------------------

def _given_size_factors(value, ds: xr.Dataset, model: Model):
    """Size factors passed in: one positive number per sample of the cohort (or of the model);
    those of the model's samples, as numpy or (lazy) as a one-chunk Dask array."""
    n_all, used = ds.sizes["sample"], model.samples
    data = value.data if isinstance(value, xr.DataArray) else value
    if isinstance(value, xr.DataArray) and value.dims != ("sample",):
        raise InputError(f"size_factors must be a DataArray along 'sample', got dims "
                         f"{value.dims}")
    if isinstance(data, da.Array):
        if data.shape not in ((n_all,), (used.size,)):
            raise InputError(f"size_factors has {data.shape[0]} values; give one per sample "
                             f"({n_all})")
        data = data.astype(np.float64).rechunk(-1)
        return data[used] if data.shape[0] == n_all and n_all != used.size else data
    try:
        arr = np.asarray(data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError("size_factors must be numbers, one per sample") from None
    if arr.size not in (n_all, used.size):
        raise InputError(f"size_factors has {arr.size} values; give one per sample ({n_all})")
    if arr.size == n_all and n_all != used.size:
        arr = arr[used]
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        ids = np.asarray(ds["sample"].values)[used]
        raise InputError(f"size_factors must be finite and > 0; not so for samples "
                         f"{preview(list(ids[bad]))}")
    return arr


def _gene_task(block, sf, *, x):
    return gene_stage(block, sf, x=x)


def _test_task(block, genes, sf, trend, **kwargs):
    return test_stage(block, genes, sf, trend, **kwargs)


def deseq2(ds: xr.Dataset, *, variable: str = "counts", group: str, case, control,
           design: str | None = None, alpha: float = 0.1, cooks_cutoff: bool = True,
           independent_filtering: bool = True, fit_type: str = "parametric",
           adjust_method: str = "BH", size_factors=None) -> xr.Dataset:
    """DESeq2 Wald test of ``case`` vs ``control`` for every gene of the count ``variable``;
    lazy (building the result reads and computes nothing).

    ``design``: a formula over sample annotations containing ``group`` (default ``~ group``);
    ``size_factors``: "ratio" (default) or "poscounts" (DESeq2 ``sfType``), or one factor per
    sample (a DataArray along ``sample`` or an array); ``fit_type``: "parametric" or "mean";
    ``alpha``, ``cooks_cutoff``, ``independent_filtering``, ``adjust_method``: as DESeq2
    ``results()`` (``pAdjustMethod``, any of ``engine.stats.multitest.METHODS``).

    Returns a Dataset along ``gene`` with the COLUMNS (attribute ``columns``), and, listed in
    the attribute ``zarr_only`` (not table columns): ``size_factor`` along ``sample`` (the
    samples of the model) and the scalars ``trend_asymptotic_dispersion``,
    ``trend_extra_poisson`` (the trend a + b / mean; "mean": a is the mean, b 0),
    ``log_dispersion_variance``, ``dispersion_prior_variance``, ``filter_threshold`` and
    ``filter_theta`` (NaN without independent filtering).
    """
    if fit_type not in FIT_TYPES:
        raise InputError(f"fit_type {fit_type!r} is not one of {', '.join(FIT_TYPES)} (DESeq2's "
                         "'local' fit needs locfit and is not implemented)")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise InputError(f"alpha must be between 0 and 1 (exclusive), got {alpha!r}")
    if adjust_method not in multitest.METHODS:
        raise InputError(f"adjust_method {adjust_method!r} is not one of "
                         f"{', '.join(multitest.METHODS)}")
    counts = count_variable(ds, variable, "deseq2")
    model = deseq2_model(ds, group=group, case=case, control=control, design=design)
    x, (m, p) = model.matrix, model.matrix.shape
    used = counts.isel(sample=model.samples)
    data = as_matrix(used, "counts")
    if size_factors is None or isinstance(size_factors, str):
        method = size_factors or "ratio"
        if method not in SIZE_FACTOR_METHODS:
            raise InputError(f"size_factors {method!r} is not one of "
                             f"{', '.join(SIZE_FACTOR_METHODS)} (or one factor per sample)")
        sf = lazy_size_factors(used, method).data
    else:
        method = "given"
        sf = _given_size_factors(size_factors, ds, model)
    sf_d = as_delayed(sf) if isinstance(sf, da.Array) else sf
    token = tokenize(data, sf, x, model.coef, fit_type, alpha, cooks_cutoff,
                     independent_filtering, adjust_method)
    chunks = data.chunks[0]
    # pass 1 (after the size factors): gene-wise dispersions
    genes = second_pass(data, sf_d).map_blocks(
        _gene_task, sf_d, x=x, dtype=np.float64, meta=np.empty((0, 0), np.float64),
        chunks=(chunks, (len(_GENE_FIELDS),)), name=f"deseq2-gene-wise-{token}")
    trend = dask.delayed(trend_stage, pure=True)(
        as_delayed(genes), fit_type=fit_type, m=m, p=p, dask_key_name=f"deseq2-trend-{token}")
    # pass 2 (after the trend): MAP dispersions, Wald test, Cook's distances, refit
    replaceable = model.replaceable
    tested = second_pass(data, trend).map_blocks(
        _test_task, genes, sf_d, trend, x=x, coef=model.coef, cutoff=model.cooks_cutoff,
        replace_outliers=bool(replaceable.any()), replaceable=replaceable, dtype=np.float64,
        meta=np.empty((0, 0), np.float64), chunks=(chunks, (len(_TEST_FIELDS),)),
        name=f"deseq2-wald-{token}")
    final = dask.delayed(results_stage, pure=True, nout=2)(
        as_delayed(tested), alpha=float(alpha), cooks_cutoff=bool(cooks_cutoff),
        cutoff=model.cooks_cutoff, independent=bool(independent_filtering),
        adjust_method=adjust_method, replace_outliers=bool(replaceable.any()),
        all_replaceable=bool(replaceable.all()), single_factor=model.single_factor,
        dask_key_name=f"deseq2-results-{token}")
    per_gene = da.from_delayed(final[0], (data.shape[0], len(_RESULT_FIELDS)),
                               dtype=np.float64).rechunk((chunks, -1))
    scalars = da.from_delayed(final[1], (2,), dtype=np.float64)
    trend_values = da.from_delayed(trend, (len(_TREND_FIELDS),), dtype=np.float64)
    labels = np.asarray(ds["gene"].values).astype(object)
    attrs = {"test": "deseq2", **model.attrs, "coef": model.columns[model.coef],
             "design_columns": model.columns, "size_factors": method, "fit_type": fit_type,
             "alpha": float(alpha), "cooks_cutoff": int(bool(cooks_cutoff)),
             "cooks_cutoff_value": model.cooks_cutoff,
             "independent_filtering": int(bool(independent_filtering)),
             "adjust": adjust_method, "n_samples": int(m),
             "min_replicates_for_replace": MIN_REPLICATES_FOR_REPLACE,
             "replaceable_samples": int(replaceable.sum()),
             "reference": "DESeq2 1.38 DESeq() + results(contrast = c(group, case, control))"}
    result = result_dataset(_columns(tested, per_gene), Features(data, "gene", labels),
                            descriptions=DESCRIPTIONS, attrs=attrs)
    sample_ids = np.asarray(ds["sample"].values).astype(object)[model.samples]
    extra = {"size_factor": xr.DataArray(
        sf, dims=("sample",), coords={"sample": sample_ids},
        attrs={"description": f"size factor of each sample of the model ({method})"})}
    for i, name in enumerate(_TREND_FIELDS):
        extra[_SCALAR_NAMES[name]] = xr.DataArray(
            trend_values[i], attrs={"description": _SCALAR_DESCRIPTIONS[name]})
    for i, name in enumerate(("filter_threshold", "filter_theta")):
        extra[name] = xr.DataArray(scalars[i], attrs={"description": _SCALAR_DESCRIPTIONS[name]})
    result = result.assign(extra)
    result.attrs["zarr_only"] = list(extra)
    return result


_SCALAR_NAMES = {"asymptotic_dispersion": "trend_asymptotic_dispersion",
                 "extra_poisson": "trend_extra_poisson",
                 "log_dispersion_variance": "log_dispersion_variance",
                 "dispersion_prior_variance": "dispersion_prior_variance"}
_SCALAR_DESCRIPTIONS = {
    "asymptotic_dispersion": "dispersion trend a + b / mean: a (DESeq2 asymptDisp; fit_type "
                             "mean: the mean dispersion)",
    "extra_poisson": "dispersion trend a + b / mean: b (DESeq2 extraPois; 0 for fit_type mean)",
    "log_dispersion_variance": "squared MAD of log gene-wise dispersions around the trend "
                               "(DESeq2 varLogDispEsts)",
    "dispersion_prior_variance": "variance of the normal prior on log dispersions (DESeq2 "
                                 "dispPriorVar)",
    "filter_threshold": "independent filtering: genes with base_mean below this have no p_adj "
                        "(DESeq2 filterThreshold)",
    "filter_theta": "independent filtering: the quantile of base_mean used (DESeq2 filterTheta)",
}


# -- in memory: the stages in order ---------------------------------------------------------------

def deseq2_arrays(counts, x, *, coef: int | None = None, sf=None, size_factor_method="ratio",
                  fit_type: str = "parametric", alpha: float = 0.1, cooks_cutoff: bool = True,
                  independent: bool = True, adjust_method: str = "BH",
                  single_factor: bool | None = None,
                  dispersion_prior_variance: float | None = None) -> dict[str, np.ndarray]:
    """DESeq2 on an in-memory (genes x samples) count matrix and design ``x`` (the stages of
    the lazy graph called in order; for tests and small data). ``coef``: the tested column
    (default the last); ``single_factor``: the design is ~ group (default: x has 2 columns);
    ``dispersion_prior_variance``: instead of the estimate (DESeq2 ``estimateDispersionsMAP``'s
    ``dispPriorVar``). Returns the COLUMNS and the global values by name."""
    y = np.asarray(counts, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    m, p = x.shape
    coef = p - 1 if coef is None else coef
    sf = size_factors_matrix(y, size_factor_method) if sf is None else np.asarray(sf, float)
    model = Model(x, np.arange(m), coef, [str(i) for i in range(p)], {},
                  p == 2 if single_factor is None else single_factor)
    replaceable = model.replaceable
    genes = gene_stage(y, sf, x=x)
    trend = trend_stage(genes, fit_type=fit_type, m=m, p=p)
    if dispersion_prior_variance is not None:
        trend[3] = dispersion_prior_variance
    tested = test_stage(y, genes, sf, trend, x=x, coef=coef, cutoff=model.cooks_cutoff,
                        replace_outliers=bool(replaceable.any()), replaceable=replaceable)
    final, (threshold, theta) = results_stage(
        tested, alpha=alpha, cooks_cutoff=cooks_cutoff, cutoff=model.cooks_cutoff,
        independent=independent, adjust_method=adjust_method,
        replace_outliers=bool(replaceable.any()), all_replaceable=bool(replaceable.all()),
        single_factor=model.single_factor)
    return _columns(tested, final) | {
        "size_factors": sf, **dict(zip(_TREND_FIELDS, trend)),
        "filter_threshold": threshold, "filter_theta": theta}


def _columns(tested, final) -> dict:
    t = {name: tested[:, i] for i, name in enumerate(_TEST_FIELDS)}
    r = {name: final[:, i] for i, name in enumerate(_RESULT_FIELDS)}
    return {"effect": t["effect"], "lfc_se": t["lfc_se"], "statistic": t["statistic"],
            "p_value": r["p_value"], "p_adj": r["p_adj"], "base_mean": t["base_mean"],
            "disp_gene_est": t["disp_gene_est"], "disp_fit": t["disp_fit"],
            "dispersion": t["dispersion"], "max_cooks": r["max_cooks"],
            "cooks_outlier": r["cooks_outlier"], "refitted": t["refitted"],
            "converged": t["converged"]}
