"""ANCOVA per feature: F-tests of every term of one linear model, slopes and marginal means.

Every feature (a gene of ``variable``, or a numeric sample annotation in ``features``) is the
response of the same model ``feature ~ design`` (e.g. ``"~ her2_score * hr_status + age"``).
Three groups of results, each on its own dimension so the runner writes three tables:

- ``term``: per term of the formula (not the intercept), an F-test of the term with statsmodels
  ``anova_lm(fit, typ=2)`` or ``typ=3`` semantics, exactly (see ``term_hypotheses``).
- ``slope_at``: with ``slope_of``, the marginal effect of that continuous covariate, averaged over
  the samples ("all") and, with ``slope_by``, at each level of that factor.
- ``mean_at``: with ``means_of``, the predictive margin of each level of that factor.

Slopes and means are linear combinations ``c'beta`` of the coefficients whose ``c`` is the average
of per-sample rows (see ``ancova``); their tests are statsmodels ``OLS(...).fit().t_test(c)``.

The kernel ``ancova_kernel`` fits every row of a (features x samples) block with one QR of the
design and matrix products; features with missing values are fitted per missing-value pattern on
the samples they have (a pattern on which the design loses rank, or leaves no residual df, gives
NaN for its features). Computed in float64 from any float input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dask.array as da
import numpy as np
import pandas as pd
import scipy.linalg
import xarray as xr
from dask.base import tokenize
from scipy import special

from engine.errors import InputError
from engine.stats import multitest
from engine.stats.design import Design, design_matrix
from engine.stats.features import adjust as adjust_p_values
from engine.stats.features import feature_matrix, map_features, result_dataset
from engine.stats.linear import independent_columns

__all__ = ["TERM_FIELDS", "CONTRAST_FIELDS", "AncovaPlan", "ancova", "ancova_kernel",
           "ancova_plan", "term_hypotheses"]

TERM_FIELDS = ("ss", "df_num", "df_den", "statistic", "p_value")
CONTRAST_FIELDS = ("estimate", "se", "df", "statistic", "p_value", "ci_low", "ci_high")

#: A residual variance below this times the mean square of the fitted values is an exact fit
#: (a constant feature, or one the design reproduces): its tests are undefined, not huge. QR
#: leaves residuals of ~1e-15 relative (variance ratio ~1e-30, whatever the conditioning; R's
#: summary.lm warns below 1e-30, too tight for that), while one float32 rounding step is 6e-8.
_PERFECT_FIT = 1e-20

TERM_DESCRIPTIONS = {
    "ss": "sum of squares of the term (statsmodels anova_lm sum_sq: F * df_num * residual "
          "variance)",
    "df_num": "numerator degrees of freedom of the F-test (the term's number of coefficients)",
    "df_den": "denominator degrees of freedom (residual df: samples used - design columns)",
    "statistic": "F statistic of the term (statsmodels anova_lm, typ in the attribute "
                 "anova_type)",
    "p_value": "p-value of the F-test",
    "p_adj": "adjusted p-value of the term over the features (method in the attribute adjust)",
}
SLOPE_DESCRIPTIONS = {
    "slope": "marginal effect d E[y] / d slope_of averaged over the samples used ('all'), or "
             "with slope_by set to the level for every sample",
    "slope_se": "standard error of the slope",
    "slope_df": "degrees of freedom of the slope's t (residual df)",
    "slope_statistic": "t statistic of the slope (slope / slope_se)",
    "slope_p_value": "two-sided p-value of the slope's t",
    "slope_ci_low": "lower confidence limit of the slope (t, level in the attribute confidence)",
    "slope_ci_high": "upper confidence limit of the slope (t, level in the attribute confidence)",
}
MEAN_DESCRIPTIONS = {
    "mean": "marginal mean (predictive margin): the model's prediction with means_of set to the "
            "level for every sample used, averaged over those samples",
    "mean_se": "standard error of the marginal mean",
    "mean_ci_low": "lower confidence limit of the marginal mean (t with the residual df, level "
                   "in the attribute confidence)",
    "mean_ci_high": "upper confidence limit of the marginal mean (t with the residual df, level "
                    "in the attribute confidence)",
}
_SLOPE_COLUMNS = {"slope": "estimate", "slope_se": "se", "slope_df": "df",
                  "slope_statistic": "statistic", "slope_p_value": "p_value",
                  "slope_ci_low": "ci_low", "slope_ci_high": "ci_high"}
_MEAN_COLUMNS = {"mean": "estimate", "mean_se": "se", "mean_ci_low": "ci_low",
                 "mean_ci_high": "ci_high"}


# --- the numpy kernel ---------------------------------------------------------------------------

def _hypothesis_basis(r_factor: np.ndarray, l1: np.ndarray, l2: np.ndarray) -> np.ndarray:
    """Orthonormal ``(p, r)`` basis ``Qh`` with hypothesis SS ``= ||Qh' Q'y||^2``.

    The hypothesis is statsmodels' ``L12 beta = 0``: ``L1`` selects the columns ``l1``; with
    higher-order columns ``l2`` (type II) ``L12`` is the part of ``L1`` orthogonal to
    ``L1 (X'X)^-1 L2'`` (``anova2_lm_single``: the last ``r`` columns of the full QR of that
    matrix); without (type III) ``L12 = L1``. With ``X = QR`` and ``beta = R^-1 Q'y``,
    ``L12 beta = G Q'y`` for ``G = L12 R^-1``, and the Wald SS ``(G Q'y)'(G G')^-1 (G Q'y)`` is the
    squared norm of the projection of ``Q'y`` onto the columns of ``G'``.
    """
    p = r_factor.shape[0]
    eye = np.eye(p)
    if l2.size:
        r_inv = scipy.linalg.solve_triangular(r_factor, eye)
        xtx_inv = r_inv @ r_inv.T
        orth, _ = scipy.linalg.qr(xtx_inv[np.ix_(l1, l2)])
        rank = l1.size - l2.size
        hypothesis = orth[:, -rank:].T @ eye[l1]
    else:
        hypothesis = eye[l1]
    g_t = scipy.linalg.solve_triangular(r_factor, hypothesis.T, trans="T")
    basis, _ = np.linalg.qr(g_t)
    return basis


def _fit_pattern(y: np.ndarray, x: np.ndarray, tests, rows: np.ndarray, confidence: float,
                 out: np.ndarray) -> None:
    """Fit the rows of ``y`` (features x n, complete) on ``x`` (n x p); fill ``out``."""
    n, p = x.shape
    df = n - p
    if df < 1 or independent_columns(x).size < p:
        return  # ``out`` stays NaN: the design is not estimable on these samples
    q, r_factor = np.linalg.qr(x)
    u = y @ q  # (features, p): Q'y per feature
    residual = y - u @ q.T
    rss = np.einsum("ij,ij->i", residual, residual)
    s2 = rss / df
    fitted = y - residual
    perfect = s2 <= _PERFECT_FIT * np.mean(fitted * fitted, axis=1)
    s2 = np.where(perfect, np.nan, s2)
    n_terms = len(tests)
    for i, (l1, l2) in enumerate(tests):
        basis = _hypothesis_basis(r_factor, l1, l2)
        rank = basis.shape[1]
        ss = np.sum((u @ basis) ** 2, axis=1)
        f = ss / rank / s2
        block = out[:, len(TERM_FIELDS) * i: len(TERM_FIELDS) * (i + 1)]
        block[:, 0] = np.where(perfect, np.nan, ss)
        block[:, 1] = rank
        block[:, 2] = df
        block[:, 3] = f
        block[:, 4] = special.fdtrc(rank, df, f)
    if rows.shape[0]:
        c = rows.mean(axis=1)  # (k, p): each contrast's per-sample rows averaged
        w = scipy.linalg.solve_triangular(r_factor, c.T, trans="T")  # (p, k) = R^-T c'
        estimate = u @ w  # (features, k) = c' R^-1 Q'y = c'beta
        se = np.sqrt(np.sum(w * w, axis=0)[None, :] * s2[:, None])
        t = estimate / se
        half = special.stdtrit(df, 0.5 + confidence / 2) * se
        start = len(TERM_FIELDS) * n_terms
        for j, values in enumerate((estimate, se, np.full_like(se, df), t,
                                    2 * special.stdtr(df, -np.abs(t)),
                                    estimate - half, estimate + half)):
            out[:, start + j: start + len(CONTRAST_FIELDS) * rows.shape[0]:
                len(CONTRAST_FIELDS)] = values


def ancova_kernel(y: np.ndarray, design: np.ndarray, *, tests: Sequence[tuple[np.ndarray,
                  np.ndarray]], rows: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """Per-feature linear model ``y_g ~ design``: F-tests of hypotheses and linear combinations.

    ``y`` (features x n samples, NaN = missing), ``design`` (n x p). ``tests``: per term the
    column positions ``(l1, l2)`` of ``term_hypotheses``. ``rows`` (k, n, p): per linear
    combination, one row per sample; the combination is their average over the samples a
    feature has, ``c = mean_i rows[k, i]`` (average marginal effects, predictive margins).

    Returns (features, 5 * len(tests) + 7 * k) float64: per test ``TERM_FIELDS`` (the F-test of
    statsmodels ``anova_lm`` and its ``sum_sq``), then per combination ``CONTRAST_FIELDS`` (as
    statsmodels ``OLS.fit().t_test(c)``, two-sided, CI at ``confidence``). Features fitted
    exactly (residual variance < 1e-20 * mean square of the fitted values, e.g. constant) get
    NaN tests, sums of squares and standard errors but keep their estimates.
    """
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(design, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, *x.shape)
    n_fields = len(TERM_FIELDS) * len(tests) + len(CONTRAST_FIELDS) * rows.shape[0]
    out = np.full((y.shape[0], n_fields), np.nan)
    missing = np.isnan(y)
    complete = ~missing.any(axis=1)
    if complete.all():
        _fit_pattern(y, x, tests, rows, confidence, out)
        return out
    patterns, which = np.unique(missing, axis=0, return_inverse=True)
    for k, pattern in enumerate(patterns):
        features = np.flatnonzero(which.ravel() == k)
        obs = ~pattern
        block = np.full((features.size, n_fields), np.nan)
        _fit_pattern(y[np.ix_(features, obs)], x[obs], tests, rows[:, obs], confidence, block)
        out[features] = block
    return out


# --- the hypotheses and linear combinations of a design -----------------------------------------

def term_hypotheses(terms: Mapping[str, Sequence[int]], factors: Mapping[str, frozenset],
                    anova_type: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per term (intercept left out): the columns ``(l1, l2)`` statsmodels ``anova_lm`` tests.

    Type III: ``l1`` the term's columns, ``l2`` empty (Wald test of the term's coefficients under
    the design's coding). Type II (``anova2_lm_single``): ``l1`` also holds the columns of every
    higher-order term containing the term (whose factors are a strict superset of its factors),
    and ``l2`` those higher-order columns: the term is tested after all terms except those.
    """
    tested = {name: cols for name, cols in terms.items() if factors[name]}
    out = {}
    for name, cols in tested.items():
        higher = [c for other, ocols in tested.items()
                  if factors[name] < factors[other] for c in ocols] if anova_type == 2 else []
        out[name] = (np.array(list(cols) + higher, dtype=np.int64),
                     np.array(higher, dtype=np.int64))
    return out


@dataclass(frozen=True)
class AncovaPlan:
    """Everything the kernel needs besides the data, and the labels of its outputs."""

    design: Design
    tests: dict[str, tuple[np.ndarray, np.ndarray]]
    slope_at: list[str]
    mean_at: list[str]
    rows: np.ndarray  # (len(slope_at) + len(mean_at), samples used, columns)


def _matrix(spec, frame: pd.DataFrame, shape) -> np.ndarray:
    matrix = np.asarray(spec.get_model_matrix(frame).to_numpy(), dtype=np.float64)
    if matrix.shape != shape:  # cannot happen: the formula's variables are complete here
        raise RuntimeError(f"model matrix of shape {matrix.shape}, expected {shape}")
    return matrix


def _factor_levels(frame: pd.DataFrame, name: str, variables, what: str) -> list:
    if name not in variables:
        raise InputError(f"{what} {name!r} is not a variable of the design (variables: "
                         f"{', '.join(sorted(variables))})")
    column = frame[name]
    if isinstance(column.dtype, pd.CategoricalDtype):
        present = set(column.dropna())
        return [level for level in column.cat.categories if level in present]
    if column.dtype.kind in "fiu":
        raise InputError(f"{what} {name!r} is a continuous (numeric) annotation; {what} needs a "
                         "factor (a text annotation)")
    return sorted(set(column.dropna()))


def _set_level(frame: pd.DataFrame, name: str, level) -> pd.DataFrame:
    out = frame.copy()
    column = frame[name]
    if isinstance(column.dtype, pd.CategoricalDtype):
        out[name] = pd.Categorical([level] * len(frame), categories=column.cat.categories)
    else:
        out[name] = pd.array([level] * len(frame), dtype=object)
    return out


def _derivative_rows(spec, frame: pd.DataFrame, name: str, shape) -> np.ndarray:
    """d X_i / d ``name`` per sample: central differences with one Richardson step.

    Exact (to rounding, ~1e-12 relative) for columns linear or quadratic in the covariate, and
    O(h^4) for smooth transforms (``np.log(age)``, ``poly``); h = 1e-3 * sd of the covariate.
    """
    x = frame[name].to_numpy(dtype=np.float64)
    h = 1e-3 * (np.std(x) or np.mean(np.abs(x)) or 1.0)

    def at(step):
        shifted = frame.copy()
        shifted[name] = x + step
        return _matrix(spec, shifted, shape)

    wide = (at(h) - at(-h)) / (2 * h)
    narrow = (at(h / 2) - at(-h / 2)) / h
    if not (np.isfinite(wide).all() and np.isfinite(narrow).all()):
        raise InputError(f"slope_of {name!r} enters the design through a transform that is "
                         "undefined near its values; slope_of needs a continuous covariate")
    return (4 * narrow - wide) / 3


def ancova_plan(ds: xr.Dataset, *, design: str, reference: Mapping[str, str] | None = None,
                anova_type: int = 2, slope_of: str | None = None, slope_by: str | None = None,
                means_of: str | None = None) -> AncovaPlan:
    """The design, the term hypotheses and the per-sample rows of slopes and means."""
    if anova_type not in (2, 3):
        raise InputError(f"anova_type {anova_type!r} is not 2 or 3 (statsmodels anova_lm typ)")
    if slope_by is not None and slope_of is None:
        raise InputError("slope_by needs slope_of: the continuous covariate whose slope is "
                         "reported at each level of slope_by")
    d = design_matrix(ds, design, reference=reference)
    spec, frame = d.spec, d.data
    factors = {str(t): frozenset(str(f) for f in t.factors if str(f) != "1") for t in spec.terms}
    tests = term_hypotheses(d.terms, factors, anova_type)
    if not tests:
        raise InputError(f"design {design!r} has no term to test besides the intercept; add "
                         "the variables of the model, e.g. '~ group + age'")
    variables = {str(v) for v in spec.variables}
    shape = d.matrix.shape
    slope_at, mean_at, rows = [], [], []
    if slope_of is not None:
        if slope_of not in variables:
            raise InputError(f"slope_of {slope_of!r} is not a variable of the design (variables:"
                             f" {', '.join(sorted(variables))})")
        if frame[slope_of].dtype.kind not in "fiu":
            raise InputError(f"slope_of {slope_of!r} is not numeric; slope_of needs a "
                             "continuous covariate of the design")
        as_factor = [str(f) for f, names in spec.factor_variables.items()
                     if slope_of in names
                     and getattr(spec.encoder_state.get(str(f), (None,))[0], "value", None)
                     == "categorical"]
        if as_factor:
            raise InputError(f"slope_of {slope_of!r} enters the design as a factor "
                             f"({', '.join(as_factor)}); slope_of needs a continuous covariate")
        slope_at.append("all")
        rows.append(_derivative_rows(spec, frame, slope_of, shape))
        if slope_by is not None:
            if slope_by == slope_of:
                raise InputError("slope_by must be a factor other than slope_of")
            levels = _factor_levels(frame, slope_by, variables, "slope_by")
            if "all" in map(str, levels):
                slope_at[0] = "all samples"
            for level in levels:
                slope_at.append(str(level))
                rows.append(_derivative_rows(spec, _set_level(frame, slope_by, level), slope_of,
                                             shape))
    if means_of is not None:
        for level in _factor_levels(frame, means_of, variables, "means_of"):
            mean_at.append(str(level))
            rows.append(_matrix(spec, _set_level(frame, means_of, level), shape))
    rows_array = np.stack(rows) if rows else np.empty((0, *shape))
    return AncovaPlan(d, tests, slope_at, mean_at, rows_array)


# --- the labelled, lazy wrapper -----------------------------------------------------------------

def ancova(ds: xr.Dataset, *, design: str, reference: Mapping[str, str] | None = None,
           anova_type: int = 2, slope_of: str | None = None, slope_by: str | None = None,
           means_of: str | None = None, variable: str = "expression",
           features: Sequence[str] | None = None, confidence: float = 0.95,
           adjust: str = "BH") -> xr.Dataset:
    """ANCOVA of every feature on ``design`` (a formula over sample annotations); lazy.

    Each feature (gene of ``variable``, or numeric annotation of ``features``) is fitted by OLS
    on the design of ``engine.stats.design.design_matrix`` (treatment coding, ``reference``
    levels; samples missing a formula variable left out; samples missing the feature left out
    for that feature). Returns a Dataset with three groups of variables, the feature axis last:

    - dims ``(term, <feature>)``: ``ss``, ``df_num``, ``df_den``, ``statistic`` (F), ``p_value``,
      ``p_adj`` (``adjust`` over the features, per term). Reference: statsmodels
      ``anova_lm(ols(...).fit(), typ=anova_type)``. Type II tests each term after all terms
      except the higher-order terms that contain it; type III tests the term's coefficients
      given all others (meaningful for main effects in interactions only under sum-to-zero
      coding; the design here is treatment-coded, as statsmodels' default).
    - dims ``(slope_at, <feature>)`` with ``slope_of``: ``slope``, ``slope_se``, ``slope_df``,
      ``slope_statistic``, ``slope_p_value``, ``slope_ci_low``, ``slope_ci_high``. The slope at
      ``"all"`` is the average marginal effect ``mean_i d E[y_i] / d slope_of`` over the samples
      used; at a level L of ``slope_by`` it is the same average with ``slope_by`` set to L for
      every sample (Stata ``margins slope_by, dydx(slope_of)``).
    - dims ``(mean_at, <feature>)`` with ``means_of``: ``mean``, ``mean_se``, ``mean_ci_low``,
      ``mean_ci_high``. The marginal mean of level L is the predictive margin
      ``mean_i x_i(L)' beta``: the prediction with ``means_of`` set to L for every sample used
      (other variables as observed), averaged over those samples (Stata ``margins means_of``;
      with a balanced design and no covariates these are the cell means).

    Slopes and means are ``c'beta`` with ``c`` the average of per-sample rows, tested with the
    residual t (statsmodels ``OLS.fit().t_test(c)``); CIs at ``confidence``. Features missing
    values are fitted on the samples they have (their averages too); a feature whose samples
    leave the design rank-deficient or without residual df gets NaN; an exactly fitted
    (e.g. constant) feature gets NaN tests and standard errors.
    """
    if not 0 < confidence < 1:
        raise InputError(f"confidence {confidence!r} must be between 0 and 1 (e.g. 0.95)")
    if adjust not in multitest.METHODS:
        raise InputError(f"adjust {adjust!r} is not one of {', '.join(multitest.METHODS)}")
    plan = ancova_plan(ds, design=design, reference=reference, anova_type=anova_type,
                       slope_of=slope_of, slope_by=slope_by, means_of=means_of)
    feats = feature_matrix(ds, variable=variable, features=features)
    y = feats.data[:, plan.design.samples]
    tests = list(plan.tests.values())
    n_fields = len(TERM_FIELDS) * len(tests) + len(CONTRAST_FIELDS) * plan.rows.shape[0]
    fields = map_features(
        y, ancova_kernel, n_fields,
        name="ancova-fit-" + tokenize(y.name, plan.design.matrix, tests, plan.rows, confidence),
        design=plan.design.matrix, tests=tests, rows=plan.rows, confidence=confidence)

    def stacked(start: int, stride: int, count: int) -> da.Array:
        return da.stack([fields[:, start + stride * i] for i in range(count)], axis=0)

    n_terms = len(tests)
    main = {f: stacked(i, len(TERM_FIELDS), n_terms) for i, f in enumerate(TERM_FIELDS)}
    main["p_adj"] = da.stack([adjust_p_values(main["p_value"][i], adjust) for i in range(n_terms)])
    order = ["ss", "df_num", "df_den", "statistic", "p_value", "p_adj"]
    attrs = {"test": "ancova", "design": design, "anova_type": int(anova_type),
             "confidence": float(confidence), "adjust": adjust, "columns": plan.design.columns}
    for key, value in (("slope_of", slope_of), ("slope_by", slope_by), ("means_of", means_of)):
        if value is not None:
            attrs[key] = value
    if reference:
        attrs["reference"] = {str(k): str(v) for k, v in reference.items()}
    parts = [result_dataset({c: main[c] for c in order}, feats, descriptions=TERM_DESCRIPTIONS,
                            attrs=attrs, extra_dims={"term": list(plan.tests)})]
    start = len(TERM_FIELDS) * n_terms
    width = len(CONTRAST_FIELDS)
    for labels, dim, columns, descriptions in (
            (plan.slope_at, "slope_at", _SLOPE_COLUMNS, SLOPE_DESCRIPTIONS),
            (plan.mean_at, "mean_at", _MEAN_COLUMNS, MEAN_DESCRIPTIONS)):
        if not labels:
            continue
        arrays = {col: stacked(start + CONTRAST_FIELDS.index(field), width, len(labels))
                  for col, field in columns.items()}
        parts.append(result_dataset(arrays, feats, descriptions=descriptions, attrs=attrs,
                                    extra_dims={dim: labels}))
        start += width * len(labels)
    return xr.merge(parts, join="exact", combine_attrs="override")

