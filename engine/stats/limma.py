"""Per-gene linear models as Dask graphs: ``ols`` (ordinary t) and ``limma`` (moderated t).

The model is given either in the two-group form of the foundation (``group``/``case``/
``control``, optionally ``pair_by``: the design is ``~ group`` or ``~ pair + group`` on those
samples, and the coefficient is case minus control, as in ``oracle/limma.R``) or as a formula
over sample annotations with a coefficient name or contrast weights.

The graph: one least-squares fit per gene chunk (``engine.stats.linear.fit_contrast``, the only
step that reads the matrix); for ``limma`` one task then moderates the per-gene summaries
(``engine.stats.ebayes``: the prior df and variance are a reduction over all genes, the rest is
vectorised over the gene vectors), and its columns go back to the gene chunks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import dask.array as da
from dask.base import tokenize
import numpy as np
import xarray as xr
from scipy import stats

from engine.errors import InputError
from engine.stats import multitest
from engine.stats.design import contrast_vector, design_matrix
from engine.stats.ebayes import ebayes
from engine.stats.features import adjust, feature_matrix, map_features, result_dataset
from engine.stats.linear import FIELDS, fit_contrast
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
    """The design restricted to the samples used, and the contrast to test."""

    matrix: np.ndarray
    samples: np.ndarray
    contrast: np.ndarray
    attrs: dict


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
    if pair_by is not None:
        attrs["pair_by"] = pair_by
    return Model(matrix, samples, contrast, attrs)


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
    return Model(d.matrix, d.samples, weights, attrs)


def _fits(ds: xr.Dataset, model: Model, variable: str, features, name: str):
    feats = feature_matrix(ds, variable=variable, features=features)
    y = feats.data[:, model.samples]
    fitted = map_features(y, fit_contrast, len(FIELDS), name=f"{name}-fit",
                          design=model.matrix, contrast=model.contrast)
    return feats, {f: fitted[:, i] for i, f in enumerate(FIELDS)}


def ols(ds: xr.Dataset, model: Model, *, variable: str = "expression", features=None,
        adjust_method: str = "BH") -> xr.Dataset:
    """Ordinary per-feature t-test of the model's contrast; lazy."""
    feats, fit = _fits(ds, model, variable, features, "ols")
    se = fit["stdev_unscaled"] * fit["sigma"]
    t = fit["effect"] / se
    p = t.map_blocks(lambda tb, db: 2 * stats.t.sf(np.abs(tb), db), fit["df_residual"],
                     dtype=np.float64, meta=np.empty((0,), np.float64))
    columns = dict(fit, se=se, statistic=t, df=fit["df_residual"], p_value=p,
                   p_adj=adjust(p, adjust_method))
    return result_dataset({c: columns[c] for c in OLS_COLUMNS}, feats,
                          descriptions=OLS_DESCRIPTIONS,
                          attrs={"test": "ols", "adjust": adjust_method, **model.attrs})


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
          variable: str = "expression", features=None, adjust_method: str = "BH") -> xr.Dataset:
    """limma ``lmFit`` + ``eBayes`` moderated t of the model's contrast; lazy."""
    feats, fit = _fits(ds, model, variable, features, "limma")
    summary = da.stack([fit[f] for f in FIELDS], axis=1).rechunk({0: -1, 1: -1})
    moderated = summary.map_blocks(
        _moderate, trend=trend, robust=robust, adjust_method=adjust_method, dtype=np.float64,
        meta=np.empty((0, 0), np.float64), chunks=(summary.chunks[0], (len(MODERATED),)),
        name=f"limma-ebayes-{tokenize(summary, trend, robust, adjust_method)}",
    ).rechunk({0: fit["effect"].chunks[0]})
    columns = dict(fit, **{c: moderated[:, i] for i, c in enumerate(MODERATED)})
    attrs = {"test": "limma", "trend": int(trend), "robust": int(robust), "adjust": adjust_method,
             **model.attrs}
    return result_dataset({c: columns[c] for c in LIMMA_COLUMNS}, feats,
                          descriptions=LIMMA_DESCRIPTIONS, attrs=attrs)
