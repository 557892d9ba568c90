"""Per-gene linear models as Dask graphs: ``ols`` (ordinary t) and ``limma`` (moderated t).

The model is given either in the two-group form of the foundation (``group``/``case``/
``control``, optionally ``pair_by``: the design is ``~ group`` or ``~ pair + group`` on those
samples, and the coefficient is case minus control, as in ``oracle/limma.R``) or as a formula
over sample annotations with a coefficient name or contrast weights.

The graph: one least-squares fit per gene chunk (``engine.stats.linear.fit_contrast``, the only
step that reads the matrix); for ``limma`` one task then moderates the per-gene summaries
(``engine.stats.ebayes``: the prior df and variance are a reduction over all genes, the rest is
vectorised over the gene vectors), and its columns go back to the gene chunks.

Bootstrap (``ols(..., bootstrap=...)``, ``limma(..., bootstrap=...)``,
``engine.resample.statistic_bootstrap``): ci_low / ci_high become the bootstrap interval of the
tested coefficient or contrast (``effect``; limma's moderation does not change the estimate),
followed by n_boot and the t interval effect -+ t_{(1 + level)/2, df} se as ci_low_t / ci_high_t
(ols: residual df and se; limma: df_total and the moderated se, as ``topTable(confint=TRUE)``).
Each replicate refits the model on the resampled samples and their design rows (cases
bootstrap): ``bootstrap_contrast``. ``strata: true`` resamples within the levels of the tested
factor, i.e. the groups of the two-group form or, for a formula, the categorical annotation
whose columns the coefficient or contrast uses (all of them from one term that is a single
annotation); no strata for a continuous covariate, an interaction or a contrast across terms.
The paired two-group form (``pair_by``) resamples pairs (each pair keeps one case and one
control) unless ``by`` names other clusters. A replicate whose design cannot estimate the
contrast (R ``lm.fit`` would alias a column it uses) is undefined and left out.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import dask.array as da
from dask.base import tokenize
import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from engine.errors import InputError
from engine.resample import statistic_bootstrap as sb
from engine.stats import multitest
from engine.stats.design import contrast_vector, design_matrix
from engine.stats.ebayes import ebayes
from engine.stats.features import (adjust, feature_matrix, map_features, result_dataset,
                                   sample_annotation)
from engine.stats.linear import FIELDS, fit_contrast, independent_columns
from engine.stats.per_gene import two_group_design

COMMON = {
    "effect": "estimate of the coefficient or contrast (two-group form: mean case - mean "
              "control, i.e. log fold change on a log scale)",
    "ave_expr": "mean of the feature over the samples of the model (limma AveExpr)",
    "n": "samples with a value for the feature in the model",
    "sigma": "residual standard deviation of the feature's fit",
    "df_residual": "residual degrees of freedom of the feature's fit",
}
OLS_DESCRIPTIONS = COMMON | {
    "se": "standard error of the effect",
    "statistic": "ordinary t statistic (effect / se)",
    "df": "degrees of freedom of t (residual df)",
    "p_value": "two-sided p-value of t",
    "p_adj": "adjusted p-value over the features (method in the attribute adjust)",
}
LIMMA_DESCRIPTIONS = COMMON | {
    "se": "moderated standard error: stdev.unscaled * sqrt(s2_post)",
    "statistic": "moderated t statistic (limma eBayes t)",
    "df_total": "degrees of freedom of the moderated t (df_residual + df_prior, capped at the "
                "pooled residual df)",
    "p_value": "two-sided p-value of the moderated t",
    "p_adj": "adjusted p-value over the features (method in the attribute adjust)",
    "b": "log-odds that the feature is differentially expressed (limma B)",
    "s2_post": "posterior residual variance",
    "s2_prior": "prior residual variance (constant unless trend)",
    "df_prior": "prior degrees of freedom (constant unless robust)",
}
OLS_COLUMNS = ["effect", "se", "statistic", "df", "p_value", "p_adj", "sigma", "df_residual",
               "ave_expr", "n"]
LIMMA_COLUMNS = ["effect", "ave_expr", "statistic", "p_value", "p_adj", "b", "se", "df_total",
                 "sigma", "df_residual", "s2_post", "s2_prior", "df_prior", "n"]


@dataclass(frozen=True)
class Model:
    """The design restricted to the samples used, and the contrast to test. ``strata``: labels
    (per sample used) of the tested factor, the default bootstrap strata (None: no factor);
    ``clusters``: labels of the default bootstrap units (the pairs of a paired design)."""

    matrix: np.ndarray
    samples: np.ndarray
    contrast: np.ndarray
    attrs: dict
    strata: np.ndarray | None = None
    strata_name: str = "none"
    clusters: np.ndarray | None = None
    clusters_name: str = "samples"


def two_group_model(ds: xr.Dataset, *, group: str, case, control,
                    pair_by: str | None = None) -> Model:
    """``~ group`` (or ``~ pair + group``) on the case and control samples; coefficient case."""
    tg = two_group_design(ds, group=group, case=case, control=control, pair_by=pair_by)
    samples = np.concatenate([tg.case, tg.control])
    is_case = np.r_[np.ones(tg.case.size), np.zeros(tg.control.size)]
    columns = [np.ones(samples.size)]
    if pair_by is not None:  # treatment-coded pairs, the first pair the reference
        pair = np.r_[np.arange(tg.case.size), np.arange(tg.control.size)]
        columns += [(pair == k).astype(float) for k in range(1, tg.case.size)]
    matrix = np.column_stack(columns + [is_case])
    contrast = np.zeros(matrix.shape[1])
    contrast[-1] = 1.0
    attrs = {"group": group, "case": str(case), "control": str(control)}
    strata = np.where(is_case == 1, str(case), str(control)).astype(object)
    if pair_by is not None:
        attrs["pair_by"] = pair_by
        return Model(matrix, samples, contrast, attrs, strata, group,
                     np.r_[np.arange(tg.case.size), np.arange(tg.control.size)],
                     f"pairs of {pair_by}")
    return Model(matrix, samples, contrast, attrs, strata, group)


def formula_model(ds: xr.Dataset, *, design: str, coef: str | None = None,
                  contrast: Mapping[str, float] | None = None,
                  reference: Mapping[str, str] | None = None) -> Model:
    """A formula design over sample annotations and the coefficient or contrast to test."""
    if (coef is None) == (contrast is None):
        raise InputError("give exactly one of coef (a column of the design) or contrast "
                         "(weights by column)")
    d = design_matrix(ds, design, reference=reference)
    weights = contrast_vector(d, coef if coef is not None else contrast)
    attrs = {"design": design, "columns": d.columns}
    attrs["coef" if coef is not None else "contrast"] = coef if coef is not None else \
        {k: float(v) for k, v in contrast.items()}
    factor = _tested_factor(d, weights)
    if factor is None:
        return Model(d.matrix, d.samples, weights, attrs)
    return Model(d.matrix, d.samples, weights, attrs,
                 d.data[factor].astype(str).to_numpy(dtype=object), factor)


def _tested_factor(d, weights) -> str | None:
    """The categorical annotation whose columns the contrast uses, when all of them come from
    one term that is that annotation alone (e.g. ``mol.biol`` for ``mol.biol[T.BCR/ABL]``)."""
    used = set(np.flatnonzero(weights).tolist())
    terms = [t for t, columns in d.terms.items() if used & set(columns)]
    if len(terms) != 1 or d.data is None or terms[0] not in d.data.columns:
        return None
    column = d.data[terms[0]]
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return None
    return terms[0]


# --- bootstrap --------------------------------------------------------------------------------

#: Eigenvalues of a unit-diagonal Gram matrix at or below this are aliased directions: singular
#: values of the unit-norm columns below 1e-7, ``independent_columns``' (R lm.fit's) tolerance.
_ALIASED = 1e-14


def _contrast_complete(y, x, c, studentized):
    """c'beta (and its se) for rows of ``y`` without missing values: one QR of the shared
    resampled design, then row sums only (a row's bits do not depend on the other rows)."""
    rows = y.shape[0]
    effect = np.full(rows, np.nan)
    se = np.full(rows, np.nan)
    kept = independent_columns(x)
    if np.any(np.delete(c, kept) != 0):
        return effect, se  # the contrast uses a column this resample cannot estimate
    q, r = np.linalg.qr(x[:, kept])
    v = np.linalg.solve(r.T, c[kept])  # c'beta = v'Q'y
    effect = (y * (q @ v)).sum(axis=1)
    df = x.shape[0] - kept.size
    if studentized and df > 0:
        residual = y.copy()
        for k in range(kept.size):
            residual -= (y * q[:, k]).sum(axis=1)[:, None] * q[:, k]
        se = np.sqrt((residual * residual).sum(axis=1) / df) * np.linalg.norm(v)
    return effect, se


def _contrast_masked(y, present, x, c, studentized):
    """c'beta (and its se) for rows with missing values: each row's own weighted Gram matrix
    (row sums of the design's column products), solved stacked in unit-diagonal coordinates
    with the aliased directions dropped (a contrast that touches them is NaN)."""
    rows, p = y.shape[0], x.shape[1]
    w = present.astype(np.float64)
    y0 = np.where(present, y, 0.0)
    gram = np.empty((rows, p, p))
    for i in range(p):
        for j in range(i, p):
            gram[:, i, j] = gram[:, j, i] = (w * (x[:, i] * x[:, j])).sum(axis=1)
    xty = np.column_stack([(y0 * x[:, i]).sum(axis=1) for i in range(p)])
    d = np.sqrt(np.diagonal(gram, axis1=1, axis2=2))
    d = np.where(d > 0, d, 1.0)
    lam, vec = np.linalg.eigh(gram / (d[:, :, None] * d[:, None, :]))
    keep = lam > _ALIASED
    inv = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)
    along = np.einsum("rij,ri->rj", vec, c[None, :] / d)  # the contrast in the eigenbasis
    estimable = (np.abs(np.where(keep, 0.0, along)).max(axis=1)
                 <= 1e-8 * np.abs(along).max(axis=1))
    # minimum-norm beta (in the original coordinates) and c'beta
    coef = np.einsum("rij,rj,rkj,rk->ri", vec, inv, vec, xty / d) / d
    effect = np.where(estimable, (coef * c).sum(axis=1), np.nan)
    se = np.full(rows, np.nan)
    if studentized:
        fitted = np.zeros_like(y0)
        for k in range(p):
            fitted += coef[:, k:k + 1] * x[:, k]
        df = w.sum(axis=1) - keep.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rss = (w * (y0 - fitted) ** 2).sum(axis=1)
            var_unscaled = (along * along * inv).sum(axis=1)
            se = np.where(estimable & (df > 0), np.sqrt(rss / df * var_unscaled), np.nan)
    return effect, se


def bootstrap_contrast(y, *, design, contrast, studentized: bool = False):
    """The bootstrap statistic of a block (``statistic_bootstrap`` protocol): a function of a
    replicate's sample positions ``idx`` giving the contrast c'beta of every row of ``y``
    fitted on those samples and their design rows ``design[idx]`` (and with ``studentized``
    its ordinary standard error); NaN where the resampled design cannot estimate it.
    Row-wise: a row's value does not depend on the rows beside it."""
    y = np.ascontiguousarray(y, dtype=np.float64)
    design = np.asarray(design, dtype=np.float64)
    c = np.asarray(contrast, dtype=np.float64)
    missing = np.isnan(y)
    partial = missing.any(axis=1)
    full, partial = np.flatnonzero(~partial), np.flatnonzero(partial)

    def replicate(idx):
        x = design[idx]
        effect = np.empty(y.shape[0])
        se = np.empty(y.shape[0])
        if full.size:
            effect[full], se[full] = _contrast_complete(y[np.ix_(full, idx)], x, c, studentized)
        if partial.size:
            effect[partial], se[partial] = _contrast_masked(
                y[np.ix_(partial, idx)], ~missing[np.ix_(partial, idx)], x, c, studentized)
        return np.column_stack([effect, se]) if studentized else effect

    return replicate


@dataclass(frozen=True)
class _Bootstrap:
    units: sb.ResampleUnits
    options: dict


def _fit(y, *, design, contrast, bootstrap=None):
    """The fit's FIELDS, and with ``bootstrap`` the BOOT_FIELDS after them (one read)."""
    fitted = fit_contrast(y, design, contrast)
    if bootstrap is None:
        return fitted
    statistic = functools.partial(bootstrap_contrast, design=design, contrast=contrast,
                                  studentized=bootstrap.options["method"] == "studentized")
    boot = sb.bootstrap_statistic(y, statistic, bootstrap.units, **bootstrap.options)
    return np.concatenate([fitted, boot], axis=1)


def _resampling(ds, model: Model, options: sb.BootstrapOptions) -> sb.Resampling:
    return sb.resampling(lambda name: sample_annotation(ds, name, "bootstrap annotation"),
                         model.samples, options, default_strata=model.strata,
                         default_strata_name=model.strata_name,
                         default_clusters=model.clusters,
                         default_clusters_name=model.clusters_name)


def _fits(ds: xr.Dataset, model: Model, variable: str, features, name: str, options=None):
    feats = feature_matrix(ds, variable=variable, features=features)
    y = feats.data[:, model.samples]
    kwargs = {"design": model.matrix, "contrast": model.contrast}
    width = len(FIELDS)
    plan = None
    if options is not None:
        plan = _resampling(ds, model, options)
        kwargs["bootstrap"] = _Bootstrap(plan.units(model.samples),
                                         sb.kernel_options(options, options.key))
        width += len(sb.BOOT_FIELDS)
    fitted = map_features(y, _fit, width, name=f"{name}-fit", **kwargs)
    fit = {f: fitted[:, i] for i, f in enumerate(FIELDS)}
    boot = {f: fitted[:, len(FIELDS) + i] for i, f in enumerate(sb.BOOT_FIELDS)} \
        if options is not None else {}
    return feats, fit, boot, plan


def _t_interval(effect, se, df, level, test: str):
    """effect -+ t_{(1 + level)/2, df} se (lazy); the quantiles' tasks are named after
    ``test`` (``limma-t-quantile``)."""
    half = df.map_blocks(lambda d: stats.t.ppf((1 + level) / 2, d), dtype=np.float64,
                         meta=np.empty((0,), np.float64), token=f"{test}-t-quantile") * se
    return effect - half, effect + half


def _with_bootstrap(columns: dict, order: list, descriptions: dict, attrs: dict, boot: dict,
                    plan, options, df_name: str):
    """With ``options``, add ci_low, ci_high, n_boot (bootstrap) and ci_low_t, ci_high_t after
    p_adj; returns the column order, descriptions and attributes."""
    if options is None:
        return order, descriptions, attrs
    low, high = _t_interval(columns["effect"], columns["se"], columns[df_name], options.level,
                            attrs["test"])
    columns.update(boot, ci_low_t=low, ci_high_t=high)
    at = order.index("p_adj") + 1
    order = order[:at] + ["ci_low", "ci_high", "n_boot", "ci_low_t", "ci_high_t"] + order[at:]
    level = f"{options.level * 100:g}%"
    descriptions = descriptions | sb.interval_descriptions(options, "effect", plan) | {
        "ci_low_t": f"lower bound of the {level} t confidence interval of effect (effect - "
                    f"t quantile with {df_name} df x se)",
        "ci_high_t": f"upper bound of the {level} t confidence interval of effect (effect + "
                     f"t quantile with {df_name} df x se)"}
    return order, descriptions, attrs | sb.bootstrap_attrs(options, plan)


def ols(ds: xr.Dataset, model: Model, *, variable: str = "expression", features=None,
        adjust_method: str = "BH", bootstrap=None) -> xr.Dataset:
    """Ordinary per-feature t-test of the model's contrast; lazy. ``bootstrap``
    (``statistic_bootstrap.BootstrapOptions`` or anything ``bootstrap_options`` accepts) adds
    the bootstrap interval of ``effect`` and the t interval (module docstring)."""
    options = sb.bootstrap_options(bootstrap)
    feats, fit, boot, plan = _fits(ds, model, variable, features, "ols", options)
    se = fit["stdev_unscaled"] * fit["sigma"]
    t = fit["effect"] / se
    p = t.map_blocks(lambda tb, db: 2 * stats.t.sf(np.abs(tb), db), fit["df_residual"],
                     dtype=np.float64, meta=np.empty((0,), np.float64), token="ols-p-value")
    columns = dict(fit, se=se, statistic=t, df=fit["df_residual"], p_value=p,
                   p_adj=adjust(p, adjust_method))
    order, descriptions, attrs = _with_bootstrap(
        columns, OLS_COLUMNS, OLS_DESCRIPTIONS,
        {"test": "ols", "adjust": adjust_method, **model.attrs}, boot, plan, options, "df")
    return result_dataset({c: columns[c] for c in order}, feats, descriptions=descriptions,
                          attrs=attrs)


def _moderate(summary: np.ndarray, *, trend: bool, robust: bool, adjust_method: str):
    """All genes' fit summaries (genes x FIELDS) -> the LIMMA columns after ``effect``."""
    f = {name: summary[:, i] for i, name in enumerate(FIELDS)}
    eb = ebayes(f["effect"], f["stdev_unscaled"], f["sigma"], f["df_residual"], f["ave_expr"],
                trend=trend, robust=robust)
    p_adj = multitest.METHODS[adjust_method](eb["p_value"])
    se = f["stdev_unscaled"] * np.sqrt(eb["s2_post"])
    return np.column_stack([eb["t"], eb["p_value"], p_adj, eb["b"], se, eb["df_total"],
                            eb["s2_post"], eb["s2_prior"], eb["df_prior"]])


MODERATED = ["statistic", "p_value", "p_adj", "b", "se", "df_total", "s2_post", "s2_prior",
             "df_prior"]


def limma(ds: xr.Dataset, model: Model, *, trend: bool = False, robust: bool = False,
          variable: str = "expression", features=None, adjust_method: str = "BH",
          bootstrap=None) -> xr.Dataset:
    """limma ``lmFit`` + ``eBayes`` moderated t of the model's contrast; lazy. ``bootstrap``
    (``statistic_bootstrap.BootstrapOptions`` or anything ``bootstrap_options`` accepts) adds
    the bootstrap interval of ``effect`` and the moderated t interval (module docstring)."""
    options = sb.bootstrap_options(bootstrap)
    feats, fit, boot, plan = _fits(ds, model, variable, features, "limma", options)
    summary = da.stack([fit[f] for f in FIELDS], axis=1).rechunk({0: -1, 1: -1})
    moderated = summary.map_blocks(
        _moderate, trend=trend, robust=robust, adjust_method=adjust_method, dtype=np.float64,
        meta=np.empty((0, 0), np.float64), chunks=(summary.chunks[0], (len(MODERATED),)),
        name=f"limma-ebayes-{tokenize(summary, trend, robust, adjust_method)}",
    ).rechunk({0: fit["effect"].chunks[0]})
    columns = dict(fit, **{c: moderated[:, i] for i, c in enumerate(MODERATED)})
    attrs = {"test": "limma", "trend": int(trend), "robust": int(robust), "adjust": adjust_method,
             **model.attrs}
    order, descriptions, attrs = _with_bootstrap(columns, LIMMA_COLUMNS, LIMMA_DESCRIPTIONS,
                                                 attrs, boot, plan, options, "df_total")
    return result_dataset({c: columns[c] for c in order}, feats, descriptions=descriptions,
                          attrs=attrs)
