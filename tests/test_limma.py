"""limma-style moderated statistics and per-gene OLS against R limma 3.54 and statsmodels.

R fixtures: tests/data/r_reference/limma (made by make_fixtures.sh there, on the float32 values
the engine stores; the ALL fixtures keep every 25th probe of fits that used all 12,625).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from engine.errors import InputError
from engine.stats.ebayes import fit_f_dist, squeeze_var, trigamma_inverse
from engine.stats.limma import formula_model, limma, ols, two_group_model
from engine.stats.linear import fit_contrast
from engine.store import ingest, open_cohort

REF = Path(__file__).parent / "data" / "r_reference"
LIMMA_REF = REF / "limma"
COLUMNS = {"effect": "logFC", "ave_expr": "AveExpr", "statistic": "t", "p_value": "P.Value",
           "p_adj": "adj.P.Val", "b": "B", "sigma": "sigma", "s2_post": "s2_post",
           "df_total": "df_total", "s2_prior": "s2_prior", "df_prior": "df_prior"}
RTOL = 1e-9  # the engine and R agree to ~1e-11 on these fixtures (see below for robust fits)
# robust=True: R finds the prior df with uniroot(tol=1e-8), the engine with brentq to 1e-14,
# so prior df (and what depends on it) can differ by ~1e-8 relative.
RTOL_ROBUST = 1e-6
# Quantities that are exactly 0 in exact arithmetic (a constant gene's sigma and effect) come
# out as rounding noise of ~1e-15 in both R and numpy; compare them on an absolute scale.
ATOL = 1e-12


def read_ref(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t", dtype={0: str}, na_values=["NA", "NaN"])
    return table.set_index(table.columns[0])


def assert_matches(result, ref: pd.DataFrame, rtol: float) -> None:
    engine = result.to_dataframe().loc[ref.index]
    for ours, theirs in COLUMNS.items():
        np.testing.assert_allclose(engine[ours].to_numpy(float), ref[theirs].to_numpy(float),
                                   rtol=rtol, atol=ATOL, equal_nan=True, err_msg=ours)


@pytest.fixture(scope="module")
def all_cohort(all_store):
    return open_cohort(all_store)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    store = ingest(REF / "paired_expression.tsv", REF / "paired_samples.tsv",
                   tmp_path_factory.mktemp("syn") / "s.zarr", chunk_genes=64)
    return open_cohort(store)


@pytest.mark.parametrize("variant", ["plain", "trend", "robust", "trend_robust"])
def test_two_group_matches_r_limma_on_all(all_cohort, variant):
    model = two_group_model(all_cohort, group="mol.biol", case="BCR/ABL", control="NEG")
    result = limma(all_cohort, model, trend="trend" in variant,
                   robust="robust" in variant).compute()
    ref = read_ref(LIMMA_REF / f"all_twogroup_{variant}.tsv.gz")
    assert_matches(result, ref, RTOL_ROBUST if "robust" in variant else RTOL)
    meta = pd.read_csv(LIMMA_REF / f"all_twogroup_{variant}_meta.tsv", sep="\t")
    assert (result["df_residual"] == meta["df_residual"][0]).all()
    if not np.isnan(meta["df_prior"][0]):
        np.testing.assert_allclose(result["df_prior"], meta["df_prior"][0], rtol=1e-12)
    if not np.isnan(meta["s2_prior"][0]):
        np.testing.assert_allclose(result["s2_prior"], meta["s2_prior"][0], rtol=1e-12)


@pytest.mark.parametrize("variant", ["plain", "trend_robust"])
def test_design_with_covariate_matches_r_limma(all_cohort, variant):
    model = formula_model(all_cohort, design="~ mol.biol + age", coef="mol.biol[T.BCR/ABL]",
                          reference={"mol.biol": "NEG"})
    assert model.matrix.shape == (123, 7)  # 5 samples have no age
    result = limma(all_cohort, model, trend=variant != "plain",
                   robust=variant != "plain").compute()
    ref = read_ref(LIMMA_REF / f"all_design_age_{variant}.tsv.gz")
    assert_matches(result, ref, RTOL if variant == "plain" else RTOL_ROBUST)
    assert (result["df_residual"] == 116).all()


@pytest.mark.parametrize("fixture, kwargs", [
    ("synthetic_arm", {}), ("synthetic_arm_trend", {"trend": True}),
    ("synthetic_arm_robust", {"robust": True})])
def test_missing_values_zero_variance_match_r(synthetic, fixture, kwargs):
    """The synthetic cohort has NaN (per-pattern fits), constant and group-constant genes."""
    model = two_group_model(synthetic, group="arm", case="A", control="B")
    result = limma(synthetic, model, **kwargs).compute()
    ref = read_ref(LIMMA_REF / f"{fixture}.tsv")
    assert_matches(result, ref, RTOL_ROBUST if "robust" in kwargs else RTOL)
    assert np.isnan(result["statistic"]).sum() == ref["t"].isna().sum()


def test_paired_design_matches_r(synthetic):
    model = two_group_model(synthetic, group="timepoint", case="post", control="pre",
                            pair_by="patient")
    assert_matches(limma(synthetic, model).compute(),
                   read_ref(LIMMA_REF / "synthetic_paired.tsv"), RTOL)


def test_ols_matches_statsmodels_with_missing_values():
    rng = np.random.default_rng(3)
    n = 30
    design = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    y = rng.normal(size=(25, n)) + design[:, 2] * rng.normal(size=(25, 1))
    y[rng.random(y.shape) < 0.1] = np.nan
    y[0, :] = np.nan  # all missing
    design[:3, 2] = [0, 1, 1]
    y[1] = np.nan
    y[1, :3] = [1.0, 2.0, 4.0]  # 3 samples: no residual df after 3 coefficients
    contrast = np.array([0.0, 1.0, -0.5])
    out = fit_contrast(y.astype(np.float32), design, contrast)
    for g in range(2, y.shape[0]):
        obs = ~np.isnan(y[g])
        fit = sm.OLS(y[g, obs].astype(np.float32).astype(float), design[obs]).fit()
        test = fit.t_test(contrast)
        np.testing.assert_allclose(out[g, 0], test.effect[0], rtol=1e-10)
        np.testing.assert_allclose(out[g, 1] * out[g, 2], test.sd[0, 0], rtol=1e-10)
        np.testing.assert_allclose(out[g, 2], np.sqrt(fit.scale), rtol=1e-10)
        assert out[g, 3] == fit.df_resid and out[g, 5] == obs.sum()
    assert np.isnan(out[0, :3]).all() and out[0, 5] == 0
    assert np.isfinite(out[1, 0]) and np.isnan(out[1, 2]) and out[1, 3] == 0


def test_ols_wrapper_p_values_match_statsmodels(all_cohort):
    model = formula_model(all_cohort, design="~ sex + age", coef="sex[T.M]")
    result = ols(all_cohort, model).compute()
    genes = result["gene"].values[:: 1000]
    x = model.matrix
    for gene in genes:
        y = all_cohort["expression"].sel(gene=gene).values[model.samples].astype(float)
        fit = sm.OLS(y, x).fit()
        row = result.sel(gene=gene)
        j = 1  # sex[T.M]
        np.testing.assert_allclose(row["statistic"], fit.tvalues[j], rtol=1e-9)
        np.testing.assert_allclose(row["p_value"], fit.pvalues[j], rtol=1e-9)
        np.testing.assert_allclose(row["se"], fit.bse[j], rtol=1e-9)


def test_unestimable_contrast_in_a_missing_pattern_is_nan():
    design = np.column_stack([np.ones(6), [1, 1, 1, 0, 0, 0.0]])
    y = np.array([[1, 2, 3, np.nan, np.nan, np.nan], [1, 2, 3, 4, 5, 7.0]])
    out = fit_contrast(y, design, np.array([0.0, 1.0]))
    assert np.isnan(out[0, 0]) and np.isfinite(out[0, 2])  # mean estimable, group effect not
    assert np.isfinite(out[1, :4]).all()


def test_trigamma_inverse_inverts_trigamma():
    from scipy.special import polygamma
    x = np.array([1e-8, 1e-3, 0.5, 3.0, 1e3, 1e8])
    np.testing.assert_allclose(polygamma(1, trigamma_inverse(x))[1:-1], x[1:-1], rtol=1e-8)


def test_squeeze_var_limits():
    rng = np.random.default_rng(0)
    s2 = 0.5 * rng.chisquare(4, 5000) / 4  # no extra variation: prior df is infinite
    scale, df2 = fit_f_dist(s2, np.full(5000, 4.0))
    sq = squeeze_var(s2, 4.0)
    if np.isinf(df2):
        np.testing.assert_allclose(sq.var_post, scale)
    assert squeeze_var(np.array([2.0]), 3.0).var_post[0] == 2.0


def test_two_group_model_errors(all_cohort):
    with pytest.raises(InputError, match="no sample has mol.biol"):
        two_group_model(all_cohort, group="mol.biol", case="XYZ", control="NEG")
    with pytest.raises(InputError, match="exactly one of coef"):
        formula_model(all_cohort, design="~ sex")
    with pytest.raises(InputError, match="not a column of the design"):
        formula_model(all_cohort, design="~ sex", coef="sexM")
    with pytest.raises(InputError, match="collinear"):
        formula_model(all_cohort, design="~ age + I(age * 2)", coef="age")


def test_limma_builds_lazily(all_cohort, no_compute):
    model = two_group_model(all_cohort, group="mol.biol", case="BCR/ABL", control="NEG")
    with no_compute():
        result = limma(all_cohort, model, trend=True)
    assert result["statistic"].chunks[0] == all_cohort["expression"].chunks[0]
