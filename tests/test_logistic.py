"""Per-feature logistic regression: the kernel and the wrapper against statsmodels and R.

References: statsmodels ``Logit`` fitted one feature at a time (``params``, ``bse``,
``tvalues``, ``pvalues``, ``conf_int``, ``wald_test``), on designs built independently here
(the wrapper's through statsmodels formulas); R ``glm(family = binomial)`` on the ALL cohort
(committed fixtures, tests/data/r_reference/logistic, see its README); separation against an
exact linear-programming check (the criterion of R's ``detectseparation``, Konis 2007).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy.optimize import linprog
from statsmodels.stats.multitest import multipletests

from engine.errors import InputError
from engine.stats.logistic import FIELDS, covariates_separate, logistic, logistic_regression
from engine.store import ingest, open_cohort

REF = Path(__file__).parent / "data" / "r_reference" / "logistic"
RTOL = 1e-6
COL = {name: i for i, name in enumerate(FIELDS)}
ESTIMATES = ["effect", "se", "statistic", "p_value", "odds_ratio", "ci_low", "ci_high"]


# --- references ------------------------------------------------------------------------------

def predictor(x: np.ndarray, scale: str) -> np.ndarray:
    """The fitted predictor of one feature's observed values, as the docs define it."""
    if scale == "sd":
        return (x - x.mean()) / x.std(ddof=1)
    if scale == "median":
        return (x > np.median(x)).astype(float)  # R: as.numeric(x > median(x))
    return x


def statsmodels_row(result, j: int, confidence: float = 0.95, inter=()) -> np.ndarray:
    """The kernel's estimate columns (and p_interaction) from a fitted statsmodels Logit."""
    params, bse = np.asarray(result.params), np.asarray(result.bse)
    with np.errstate(over="ignore"):  # separated fits in the ALL checks: compared elsewhere
        ci = np.exp(np.asarray(result.conf_int(alpha=1 - confidence))[j])
        row = [params[j], bse[j], np.asarray(result.tvalues)[j], np.asarray(result.pvalues)[j],
               np.exp(params[j]), ci[0], ci[1]]
    if len(inter):
        r = np.zeros((len(inter), len(params)))
        r[np.arange(len(inter)), list(inter)] = 1.0
        row.append(float(result.wald_test(r, scalar=True).pvalue))
    return np.array(row)


def fit_logit(y, design):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of separated fits
        return sm.Logit(y, design).fit(method="newton", tol=1e-12, maxiter=200, disp=0)


def kernel_reference(x_row, y, covariates, dummies, scale, confidence=0.95):
    """statsmodels on [1, covariates, dummies, u, u * dummies] over the observed samples."""
    ok = ~np.isnan(x_row)
    u = predictor(x_row[ok], scale)
    h = dummies[ok]
    design = np.column_stack([np.ones(ok.sum()), covariates[ok], h, u, u[:, None] * h])
    j = 1 + covariates.shape[1] + h.shape[1]
    result = fit_logit(y[ok], design)
    return statsmodels_row(result, j, confidence, range(j + 1, j + 1 + h.shape[1]))


def lp_separated(design: np.ndarray, y: np.ndarray) -> bool:
    """Exact check: is there b with (2y - 1) * design @ b >= 0 everywhere and > 0 somewhere?"""
    a = (2 * y - 1)[:, None] * design
    res = linprog(-a.sum(axis=0), A_ub=-a, b_ub=np.zeros(len(y)),
                  bounds=[(-1, 1)] * design.shape[1], method="highs")
    return -res.fun > 1e-7


def simulate(seed, features=30, samples=120, levels=3, missing=0.05):
    """Features around 8 (log2-like), a numeric and a binary covariate, an h with ``levels``,
    an outcome driven by feature 0 and the first covariate."""
    rng = np.random.default_rng(seed)
    x = rng.normal(8.0, 1.0, (features, samples))
    covariates = np.column_stack([rng.normal(60, 10, samples), rng.integers(0, 2, samples)])
    h = rng.integers(0, levels, samples)
    dummies = (h[:, None] == np.arange(1, levels)).astype(float)
    eta = 0.8 * (x[0] - 8) + 0.03 * (covariates[:, 0] - 60) - 0.3
    y = (rng.random(samples) < 1 / (1 + np.exp(-eta))).astype(float)
    x[rng.random(x.shape) < missing] = np.nan
    return x, y, covariates, dummies


# --- the kernel against statsmodels ----------------------------------------------------------

@pytest.mark.parametrize("scale", ["sd", "raw", "median"])
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_kernel_matches_statsmodels(scale, levels):
    x, y, cov, dummies = simulate(levels, levels=levels)
    interaction = dummies if levels > 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the kernel itself must not warn
        out = logistic_regression(x, y, cov, interaction=interaction, predictor_scale=scale)
    assert out.shape == (len(x), len(FIELDS)) and out.dtype == np.float64
    assert np.isnan(x).any(axis=1).sum() > 20  # missing values exercised
    expected = np.array([kernel_reference(row, y, cov, dummies, scale) for row in x])
    columns = ESTIMATES + (["p_interaction"] if levels > 1 else [])
    got = out[:, [COL[c] for c in columns]]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=0)
    if levels == 1:
        assert np.isnan(out[:, COL["p_interaction"]]).all()
    ok = ~np.isnan(x)
    np.testing.assert_array_equal(out[:, COL["n"]], ok.sum(axis=1))
    np.testing.assert_array_equal(out[:, COL["n_events"]], ok @ y)
    assert (out[:, COL["converged"]] == 1).all() and (out[:, COL["separated"]] == 0).all()


def test_kernel_confidence_level_and_float32_input():
    x, y, cov, dummies = simulate(7, levels=1)
    x32 = x.astype(np.float32)
    out = logistic_regression(x32, y, cov, confidence=0.8)
    expected = np.array([kernel_reference(r, y, cov, dummies, "sd", confidence=0.8)
                         for r in x32.astype(np.float64)])
    np.testing.assert_allclose(out[:, :7], expected, rtol=RTOL, atol=0)


def test_raw_scale_is_sd_scale_divided_by_sd():
    x, y, cov, _ = simulate(3, levels=1, missing=0.0)
    sd = x.std(axis=1, ddof=1)
    per_sd = logistic_regression(x, y, cov, predictor_scale="sd")
    raw = logistic_regression(x, y, cov, predictor_scale="raw")
    np.testing.assert_allclose(raw[:, COL["effect"]] * sd, per_sd[:, COL["effect"]], rtol=1e-9)
    np.testing.assert_allclose(raw[:, COL["p_value"]], per_sd[:, COL["p_value"]], rtol=1e-9)


@pytest.mark.parametrize("size", [1, 7, 64])
def test_kernel_is_bit_identical_whatever_the_block(size):
    """Row sums instead of BLAS products: a feature's numbers never depend on its neighbours."""
    x, y, cov, dummies = simulate(8, features=70, levels=3)
    x[5] = np.where(y == 1, 2.0, 1.0)  # separated: frozen at another iteration than the rest
    whole = logistic_regression(x, y, cov, interaction=dummies)
    parts = np.concatenate([logistic_regression(x[i:i + size], y, cov, interaction=dummies)
                            for i in range(0, len(x), size)])
    np.testing.assert_array_equal(parts, whole)
    fortran = logistic_regression(np.asfortranarray(x), y, cov, interaction=dummies)
    np.testing.assert_array_equal(fortran, whole)  # memory order does not matter either
    assert whole[5, COL["separated"]] == 1


def test_strong_but_finite_effect_with_extreme_fitted_probabilities_is_not_flagged():
    # An outlier 8 SD out with a slope of ~3 per SD: fitted probability ~1e-12, MLE finite.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 150))
    y = (rng.random(150) < 1 / (1 + np.exp(-3 * x[0]))).astype(float)
    x[0, 0], y[0] = -9.0, 0.0
    out = logistic_regression(x, y)
    ok = np.ones(1, bool)
    assert not lp_separated(np.column_stack([ok.repeat(150), predictor(x[0], "sd")]), y)
    assert out[0, COL["separated"]] == 0
    reference = kernel_reference(x[0], y, np.empty((150, 0)), np.empty((150, 0)), "sd")
    np.testing.assert_allclose(out[0, :7], reference, rtol=RTOL)
    fitted = fit_logit(y, np.column_stack([ok.repeat(150), predictor(x[0], "sd")]))
    assert fitted.predict()[0] < 1e-10  # the extreme probability is real


# --- separation -------------------------------------------------------------------------------

def test_complete_and_quasi_complete_separation_are_flagged():
    rng = np.random.default_rng(0)
    n = 60
    y = (np.arange(n) % 2).astype(float)
    complete = np.where(y == 1, rng.uniform(0.1, 3, n), rng.uniform(-3, -0.1, n))
    quasi = complete.copy()
    quasi[:6] = 0.0  # ties on the boundary, both outcomes
    many_ties = np.where(rng.random(n) < 0.7, 0.0, complete)  # large non-separated deviance
    fine = rng.normal(size=n)
    x = np.array([complete, quasi, many_ties, fine])
    for scale in ("sd", "median"):
        out = logistic_regression(x, y, predictor_scale=scale)
        assert (out[:3, COL["separated"]] == 1).all(), scale
        assert np.isnan(out[:3, [COL[c] for c in ESTIMATES]]).all()
        assert out[3, COL["separated"]] == 0 and np.isfinite(out[3, :7]).all()
    designs = [np.column_stack([np.ones(n), predictor(r, "sd")]) for r in x]
    assert [lp_separated(d, y) for d in designs] == [True, True, True, False]


def test_separation_flag_agrees_with_the_exact_check_on_small_samples():
    """Small samples with covariates and interactions separate often: compare every fit."""
    rng = np.random.default_rng(11)
    agree = separated = 0
    for case in range(12):
        n = int(rng.integers(10, 30))
        scale = ("sd", "median", "raw")[case % 3]
        x = rng.normal(size=(25, n))
        cov = rng.normal(size=(n, case % 3))
        dummies = rng.integers(0, 2, (n, 1)).astype(float) if case % 2 else np.empty((n, 0))
        y = (rng.random(n) < 1 / (1 + np.exp(-2 * x[0]))).astype(float)
        y[:2] = [0.0, 1.0]
        out = logistic_regression(x, y, cov, interaction=dummies if case % 2 else None,
                                  predictor_scale=scale)
        for row, result in zip(x, out):
            if np.isnan(result[COL["separated"]]):
                continue
            u = predictor(row, scale)
            design = np.column_stack([np.ones(n), cov, dummies, u, u[:, None] * dummies])
            expected = lp_separated(design, y)
            assert bool(result[COL["separated"]]) == expected
            agree += 1
            separated += expected
    assert agree > 250 and 30 < separated < agree - 30  # both kinds, many of each


def test_covariates_separate():
    y = np.array([0, 0, 1, 1, 0, 1, 1, 1], float)
    level = np.array([0, 0, 0, 0, 0, 1, 1, 1], float)  # level 1: events only
    assert covariates_separate(y, level[:, None])
    assert not covariates_separate(y, np.array([0, 1, 0, 1, 1, 0, 1, 0], float)[:, None])
    assert not covariates_separate(y)


# --- not fitted -------------------------------------------------------------------------------

def test_degenerate_features_are_nan_without_warnings():
    rng = np.random.default_rng(2)
    n = 30
    y = (np.arange(n) % 3 == 0).astype(float)
    good = rng.normal(size=n)
    constant = np.full(n, 7.0)
    all_missing = np.full(n, np.nan)
    two_values = np.where(np.arange(n) < 2, good, np.nan)  # n <= number of coefficients
    tied_median = np.where(np.arange(n) < 20, 5.0, 4.0)  # 2/3 at the median: none above it
    x = np.array([good, constant, all_missing, two_values, tied_median])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = logistic_regression(x, y)
        median = logistic_regression(np.array([tied_median, np.full(n, 1.0)]), y,
                                     predictor_scale="median")
    assert np.isfinite(out[0, :7]).all()
    assert np.isnan(out[1:4, :8]).all() and np.isnan(out[1:4, -2:]).all()
    np.testing.assert_array_equal(out[:, COL["n"]], [30, 30, 0, 2, 30])
    # tied_median is a fine two-valued predictor on the sd scale, but its median split is
    # constant (x > median holds nowhere), as is a constant feature's
    assert np.isfinite(out[4, :7]).all()
    assert np.isnan(median[:, :8]).all() and np.isnan(median[:, -2:]).all()
    one_class = logistic_regression(x[:1], np.ones(n))
    assert np.isnan(one_class[0, :8]).all() and one_class[0, COL["n_events"]] == n


def test_aliased_covariate_is_dropped_as_r_does():
    """A covariate level whose samples all miss the feature: R's glm drops the aliased column
    and still estimates the predictor; so does the kernel (checked against the reduced fit)."""
    x, y, cov, _ = simulate(5, features=3, levels=1, missing=0.0)
    level = np.zeros(len(y))
    members = np.concatenate([np.flatnonzero(y == 1)[:3], np.flatnonzero(y == 0)[:3]])
    level[members] = 1.0  # both outcomes: the level alone does not separate
    x[1, members] = np.nan  # feature 1 has no sample of that level
    cov3 = np.column_stack([cov, level])
    out = logistic_regression(x, y, cov3)
    expected = kernel_reference(x[1], y, cov, np.empty((len(y), 0)), "sd")
    np.testing.assert_allclose(out[1, :7], expected, rtol=RTOL)
    full = kernel_reference(x[0], y, cov3, np.empty((len(y), 0)), "sd")
    np.testing.assert_allclose(out[0, :7], full, rtol=RTOL)


def test_interaction_not_testable_when_the_predictor_is_constant_in_a_level():
    x, y, cov, dummies = simulate(6, features=2, levels=3, missing=0.0)
    x[1, dummies[:, 1] == 1] = 5.0  # constant within level 2: x:h2 is aliased
    out = logistic_regression(x, y, cov, interaction=dummies)
    assert np.isfinite(out[0, COL["p_interaction"]]) and np.isnan(out[1, COL["p_interaction"]])
    # the predictor in the reference level is still estimable: the fit without x:h2
    ok = np.ones(len(y), bool)
    u = predictor(x[1], "sd")
    design = np.column_stack([ok, cov, dummies, u, u * dummies[:, 0]])
    expected = statsmodels_row(fit_logit(y, design), 5)
    np.testing.assert_allclose(out[1, :7], expected, rtol=RTOL)


def test_kernel_rejects_misshapen_input():
    with pytest.raises(ValueError, match="2-D"):
        logistic_regression(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="0 or 1"):
        logistic_regression(np.zeros((2, 5)), np.full(5, 2.0))
    with pytest.raises(ValueError, match="covariates"):
        logistic_regression(np.zeros((2, 5)), np.zeros(5), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="predictor_scale"):
        logistic_regression(np.zeros((2, 5)), np.zeros(5), predictor_scale="log")


# --- the lazy wrapper -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """60 genes x 90 samples (3 chunks of 25 genes) with an outcome, covariates, strata."""
    rng = np.random.default_rng(20261121)
    d = tmp_path_factory.mktemp("logistic")
    genes, samples = [f"G{i:02d}" for i in range(60)], [f"S{i:03d}" for i in range(90)]
    x = rng.normal(8, 1, (60, 90))
    x[rng.random(x.shape) < 0.03] = np.nan
    x[59] = 7.25  # constant
    grade = rng.choice(["G1", "G2", "G3"], 90)
    hr = rng.choice(["neg", "pos"], 90)
    age = np.round(rng.normal(55, 10, 90))
    eta = 0.9 * (np.nan_to_num(x[0], nan=8.0) - 8) + 0.04 * (age - 55) + 0.5 * (hr == "pos")
    response = np.where(rng.random(90) < 1 / (1 + np.exp(-eta)), "yes", "no").astype(object)
    response[rng.random(90) < 0.1] = "unknown"
    response[[3, 40]] = ""
    age[[5, 50]] = np.nan
    x[58] = np.where(response == "yes", 9.0, 7.0) + rng.uniform(0, 0.5, 90)  # separates
    pd.DataFrame(x, index=pd.Index(genes, name="gene"), columns=samples).to_csv(
        d / "m.tsv", sep="\t", na_rep="NA")
    pd.DataFrame({"sample_id": samples, "response": response, "age": age, "grade": grade,
                  "hr": hr, "subtype": rng.choice(["basal", "her2", "lum"], 90),
                  "site": np.where(np.arange(90) % 3, "north", "south")}).to_csv(
        d / "s.tsv", sep="\t", index=False, na_rep="NA")
    return open_cohort(ingest(d / "m.tsv", d / "s.tsv", d / "c.zarr", chunk_genes=25))


def formula_reference(ds, formula, event, reference, scale, samples=None):
    """statsmodels formulas (their own dummy coding) gene by gene, outcome ``response``;
    rows as the wrapper's estimate columns and p_interaction (NaN without ``u:`` terms)."""
    frame = pd.DataFrame({k: ds[k].values for k in ("response", "age", "grade", "hr", "subtype")})
    frame = frame.replace({"": np.nan})
    values = ds["expression"].values.astype(np.float64)
    keep = frame["response"].eq(event) | (frame["response"].eq(reference) if reference
                                           else frame["response"].notna())
    if samples is not None:
        keep &= np.isin(np.arange(len(frame)), samples)
    rows = []
    for g in range(values.shape[0]):
        f = frame.assign(x=values[g], y=frame["response"].eq(event).astype(float))[keep]
        f = f.dropna(subset=["x", *[c for c in ("age", "grade", "hr", "subtype")
                                    if c in formula]])
        if f["x"].nunique() < 2 or f.empty:
            rows.append(np.full(8, np.nan))
            continue
        f = f.assign(u=predictor(f["x"].to_numpy(), scale))
        result = _smf(formula, f)
        names = list(result.params.index)
        inter = [i for i, nm in enumerate(names) if nm.startswith("u:")]
        row = statsmodels_row(result, names.index("u"), 0.95, inter)
        rows.append(np.append(row, np.nan) if not inter else row)
    return np.array(rows)


def _smf(formula, frame):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return smf.logit(formula, frame).fit(method="newton", tol=1e-12, maxiter=200, disp=0)


def test_wrapper_builds_lazily(cohort, no_compute):
    with no_compute():
        result = logistic(cohort, outcome="response", event="yes", reference="no",
                          covariates=["age", "grade"], interaction="hr", stratify_by="site")
    assert list(result.data_vars) == ["effect", "se", "statistic", "p_value", "p_adj",
                                      "odds_ratio", "ci_low", "ci_high", "p_interaction", "n",
                                      "n_events", "converged", "separated"]
    for name, var in result.data_vars.items():
        assert var.dims == ("stratum", "gene") and var.chunks[1] == (25, 25, 10), name
        assert var.attrs["description"]
    assert "'neg'" in result["effect"].attrs["description"]  # the reference level is named
    assert list(result["stratum"].values) == ["north", "south"]
    assert result.attrs["interaction_reference"] == "neg"


def test_wrapper_matches_statsmodels_formulas(cohort):
    result = logistic(cohort, outcome="response", event="yes", reference="no",
                      covariates=["age", "grade"]).compute()
    expected = formula_reference(cohort, "y ~ u + age + C(grade)", "yes", "no", "sd")
    got = np.column_stack([result[c].values for c in ESTIMATES])
    finite = np.isfinite(got[:, 0])
    np.testing.assert_allclose(got[finite], expected[finite, :7], rtol=RTOL)
    assert np.isnan(expected[59, 0]) and np.isnan(got[59]).all()  # constant gene
    assert result["separated"].values[58] == 1 and np.isnan(got[58]).all()
    assert finite.sum() == 58
    # p_adj is BH over the genes with a p-value
    p = result["p_value"].values
    np.testing.assert_allclose(result["p_adj"].values[finite],
                               multipletests(p[finite], method="fdr_bh")[1], rtol=1e-12)
    assert np.isnan(result["p_adj"].values[~finite]).all()


@pytest.mark.parametrize(("interaction", "scale"), [("hr", "median"), ("subtype", "raw")])
def test_wrapper_interaction_matches_statsmodels(cohort, interaction, scale):
    result = logistic(cohort, outcome="response", event="yes", interaction=interaction,
                      covariates=["age"], predictor_scale=scale).compute()
    expected = formula_reference(cohort, f"y ~ u * C({interaction}) + age", "yes", None, scale)
    got = np.column_stack([result[c].values for c in [*ESTIMATES, "p_interaction"]])
    finite = np.isfinite(got[:, 0])
    assert finite.sum() >= 57
    np.testing.assert_allclose(got[finite], expected[finite], rtol=RTOL)
    # every gene without estimates is separated (58) or not fitted (59, constant)
    flagged = (result["separated"].values == 1) | np.isnan(result["converged"].values)
    assert flagged[~finite].all() and flagged[58] and flagged[59]
    # reference=None: "unknown" counts as a non-event
    assert result["n"].values[0] == np.sum(
        (cohort["response"].values != "") & ~np.isnan(cohort["age"].values)
        & ~np.isnan(cohort["expression"].values[0]))


def test_stratified_equals_per_stratum_fits(cohort):
    kw = dict(outcome="response", event="yes", reference="no", covariates=["age", "grade"])
    strat = logistic(cohort, stratify_by="site", **kw).compute()
    for stratum in ("north", "south"):
        part = cohort.isel(sample=np.flatnonzero(cohort["site"].values == stratum))
        alone = logistic(part, **kw).compute()
        for name in alone.data_vars:  # the same numbers in, bit-identical numbers out
            np.testing.assert_array_equal(strat[name].sel(stratum=stratum).values,
                                          alone[name].values, err_msg=name)
    samples = np.flatnonzero(cohort["site"].values == "south")
    expected = formula_reference(cohort, "y ~ u + age + C(grade)", "yes", "no", "sd",
                                 samples=samples)
    got = np.column_stack([strat[c].sel(stratum="south").values for c in ESTIMATES])
    finite = np.isfinite(got[:, 0])
    assert finite.sum() > 50
    np.testing.assert_allclose(got[finite], expected[finite, :7], rtol=RTOL)


def test_results_are_identical_across_chunkings(cohort):
    kw = dict(outcome="response", event="yes", covariates=["grade"], interaction="subtype")
    base = logistic(cohort, **kw).compute()
    other = logistic(cohort.chunk({"gene": 7}), **kw).compute()
    for name in base.data_vars:
        np.testing.assert_array_equal(other[name].values, base[name].values, err_msg=name)


def test_strata_without_both_outcomes_or_without_samples_are_nan(cohort):
    response = cohort["response"].values
    group = np.full(len(response), "mixed", dtype=object)
    group[np.flatnonzero(response == "no")[::2]] = "only_no"
    group[response == ""] = "unknown_only"  # no sample with an outcome
    ds = cohort.assign(group=("sample", group))
    result = logistic(ds, outcome="response", event="yes", reference="no",
                      stratify_by="group").compute()
    assert list(result["stratum"].values) == ["mixed", "only_no", "unknown_only"]
    for stratum, events in (("only_no", 0), ("unknown_only", 0)):
        part = result.sel(stratum=stratum)
        assert np.isnan(part["effect"].values).all() and np.isnan(part["converged"]).all()
        assert (part["n_events"].values == events).all()
    assert (result["n"].sel(stratum="unknown_only").values == 0).all()
    assert np.isfinite(result["effect"].sel(stratum="mixed").values[:58]).all()


def test_wrapper_numeric_features(cohort):
    result = logistic(cohort, outcome="response", event="yes", reference="no",
                      features=["age"]).compute()
    assert result["effect"].dims == ("feature",) and list(result["feature"].values) == ["age"]
    ok = np.isin(cohort["response"].values, ["yes", "no"]) & ~np.isnan(cohort["age"].values)
    y = (cohort["response"].values[ok] == "yes").astype(float)
    u = predictor(cohort["age"].values[ok], "sd")
    expected = statsmodels_row(fit_logit(y, np.column_stack([np.ones(ok.sum()), u])), 1)
    np.testing.assert_allclose([result[c].values[0] for c in ESTIMATES], expected, rtol=RTOL)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(event="maybe"), "no sample has response == 'maybe'"),
    (dict(event="yes", reference="yes"), "both 'yes'"),
    (dict(event="yes", predictor_scale="log"), "predictor_scale"),
    (dict(event="yes", confidence=95), "confidence"),
    (dict(event="yes", adjust="fdr"), "adjust"),
    (dict(event="yes", covariates=["age"], interaction="age"), "both covariate and interaction"),
    (dict(event="yes", covariates=["nope"]), "not a sample annotation"),
    (dict(event="yes", interaction="site", stratify_by="site"), "both interaction and strat"),
])
def test_wrapper_input_errors(cohort, kwargs, message):
    with pytest.raises(InputError, match=message):
        logistic(cohort, outcome="response", **kwargs)


def test_covariate_that_separates_the_outcome_is_an_input_error(cohort):
    ds = cohort.assign(flag=("sample", np.where(cohort["response"].values == "yes", "a", "b")))
    ds["flag"].values[:5] = "b"  # level "a" is events only (quasi-complete separation)
    with pytest.raises(InputError, match="perfectly predict 'response'"):
        logistic(ds, outcome="response", event="yes", reference="no", covariates=["flag"])


# --- the ALL cohort ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def all_cohort(all_store):
    return open_cohort(all_store)


def all_reference(ds, genes, outcome, event, reference, covariates=(), interaction=None,
                  scale="sd"):
    """statsmodels Logit per probe on the ALL annotations (complete cases), float32 values."""
    names = [outcome, *covariates, *([interaction] if interaction else [])]
    frame = pd.DataFrame({k: ds[k].values for k in names})
    frame = frame.replace({"": np.nan})
    keep = frame[outcome].isin([event, reference]) & frame.notna().all(axis=1)
    y = frame[outcome].eq(event).to_numpy(float)[keep]
    common = [np.ones(keep.sum())] + [frame[c].to_numpy(float)[keep] for c in covariates]
    h = np.empty((keep.sum(), 0))
    if interaction:
        levels = sorted(frame[interaction][keep].unique())
        h = np.column_stack([frame[interaction][keep].eq(lv).to_numpy(float) for lv in levels[1:]])
    values = ds["expression"].sel(gene=genes).values.astype(np.float64)[:, keep.to_numpy()]
    rows, separated = [], []
    for v in values:
        u = predictor(v, scale)
        design = np.column_stack([*common, h, u, u[:, None] * h])
        j = len(common) + h.shape[1]
        separated.append(lp_separated(design, y))
        rows.append(statsmodels_row(fit_logit(y, design), j, 0.95,
                                    range(j + 1, j + 1 + h.shape[1])))
    return np.array(rows), np.array(separated), keep.sum()


def test_all_sex_adjusted_for_age_matches_statsmodels(all_cohort):
    genes = all_cohort["gene"].values[::50]
    result = logistic(all_cohort.sel(gene=genes), outcome="sex", event="F", reference="M",
                      covariates=["age"]).compute()
    expected, separated, n = all_reference(all_cohort, genes, "sex", "F", "M", ("age",))
    assert not separated.any() and (result["separated"].values == 0).all()
    got = np.column_stack([result[c].values for c in ESTIMATES])
    np.testing.assert_allclose(got, expected, rtol=RTOL)
    assert (result["n"].values == n).all()


def test_all_bcr_abl_median_split_by_sex_interaction(all_cohort):
    """BCR/ABL vs NEG, median split, x * sex: the sex-chromosome probes separate within a sex."""
    sex_probes = ["38355_at", "41214_at", "38446_at", "35885_at"]  # DDX3Y, RPS4Y1, XIST, ...
    genes = np.concatenate([all_cohort["gene"].values[::50], sex_probes])
    result = logistic(all_cohort.sel(gene=genes), outcome="mol.biol", event="BCR/ABL",
                      reference="NEG", interaction="sex", predictor_scale="median").compute()
    expected, separated, _ = all_reference(all_cohort, genes, "mol.biol", "BCR/ABL", "NEG",
                                           interaction="sex", scale="median")
    np.testing.assert_array_equal(result["separated"].values == 1, separated)
    assert separated[-4:].all() and separated.sum() == 4
    got = np.column_stack([result[c].values for c in [*ESTIMATES, "p_interaction"]])
    np.testing.assert_allclose(got[~separated], expected[~separated], rtol=RTOL)


R_CASES = {
    "all_f32_sex_age.tsv.gz": dict(outcome="sex", event="F", reference="M", covariates=["age"]),
    "all_f32_bcr_median_x_sex.tsv.gz": dict(outcome="mol.biol", event="BCR/ABL", reference="NEG",
                                            interaction="sex", predictor_scale="median"),
    "all_f32_bcr_raw_by_sex.tsv.gz": dict(outcome="mol.biol", event="BCR/ABL", reference="NEG",
                                          covariates=["age"], stratify_by="sex",
                                          predictor_scale="raw"),
}


@pytest.mark.parametrize("name", list(R_CASES))
def test_all_matches_r_glm(all_cohort, name):
    """The whole cohort (BH needs every probe); R's rows are every 25th probe."""
    ref = pd.read_csv(REF / name, sep="\t", dtype={"probe_id": str, "stratum": str},
                      keep_default_na=False, na_values=["NA", "NaN"])
    kwargs = R_CASES[name]
    result = logistic(all_cohort, **kwargs).compute()
    table = result.to_dataframe().reset_index()
    if "stratum" not in table:
        table["stratum"] = "all"
    merged = ref.merge(table, left_on=["probe_id", "stratum"], right_on=["gene", "stratum"],
                       suffixes=("_r", ""), validate="one_to_one")
    assert len(merged) == len(ref) >= 505
    np.testing.assert_array_equal(merged["n"], merged["n_r"])
    np.testing.assert_array_equal(merged["n_events"], merged["n_events_r"])
    separated = merged["separated"].to_numpy() == 1
    # R "converges" on a separated probe with a diverged coefficient: the Hauck-Donner signature
    assert (merged.loc[separated, "se_r"] > 1e3).all()
    assert (merged.loc[~separated, "se_r"] < 100).all() and merged["effect_r"].notna().all()
    columns = dict(zip(ESTIMATES, ["effect", "se", "z", "p", "odds_ratio", "ci_low", "ci_high"]))
    if "interaction" in kwargs:
        columns["p_interaction"] = "p_interaction"
    for ours, theirs in columns.items():
        theirs = theirs + "_r" if theirs in table else theirs
        np.testing.assert_allclose(merged.loc[~separated, ours], merged.loc[~separated, theirs],
                                   rtol=RTOL, err_msg=ours)
    if "p_bh" in ref:  # R adjusted every probe's p; ours leaves separated ones out (none here)
        assert (result["separated"].values == 0).all()
        np.testing.assert_allclose(merged["p_adj"], merged["p_bh"], rtol=RTOL)
