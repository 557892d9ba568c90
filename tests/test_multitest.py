"""Multiple-testing adjustments against statsmodels ``multipletests`` and R (p.adjust, qvalue).

R fixtures: tests/data/r_reference/multitest (README there). The engine follows R's arithmetic
operation for operation, so R and the engine agree to about 1 ulp (the only differences seen come
from R's decimal parser reading a few 16-digit inputs 1 ulp away from Python); RTOL is far tighter
than the project's 1e-6 to catch any change of formula.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import fdrcorrection, multipletests

from engine.errors import InputError
from engine.stats.multitest import METHODS, QVALUE_LAMBDAS, storey_pi0, storey_qvalue

REF = Path(__file__).parent / "data" / "r_reference"
RTOL = 1e-12  # measured: <= 1.8e-16 against R, <= 4.5e-16 against statsmodels
P_ADJUST = ["BH", "BY", "bonferroni", "holm", "hochberg"]
STATSMODELS = {"BH": "fdr_bh", "BY": "fdr_by", "bonferroni": "bonferroni", "holm": "holm",
               "hochberg": "simes-hochberg"}

# p-values with ties (a coarse grid), exact 0 and 1, tiny values and NaN (untested genes).
# Subnormals are left out: there the last bit is the whole value, and statsmodels' p / (i / m)
# and R's m / i * p round differently (R's own arithmetic on 5e-324 is checked on the R fixture).
P_VALUE = st.one_of(st.floats(0, 1, allow_subnormal=False),
                    st.integers(0, 20).map(lambda k: k / 20),
                    st.sampled_from([0.0, 1.0, 1e-300, np.nan]))
P_VALUES = st.lists(P_VALUE, max_size=60).map(lambda v: np.array(v, dtype=np.float64))


def read_ref(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={0: str}, keep_default_na=False,
                       na_values=["NA", "NaN"])


def assert_close(actual, expected, rtol=RTOL):
    """Same NaN pattern, and values within rtol."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0)


@given(p=P_VALUES, method=st.sampled_from(P_ADJUST))
@settings(max_examples=150, deadline=None)  # statsmodels' holm takes ~80 ms a call
def test_p_adjust_matches_statsmodels(p, method):
    adjusted = METHODS[method](p)
    assert adjusted.shape == p.shape and adjusted.dtype == np.float64
    tested = ~np.isnan(p)
    assert np.isnan(adjusted[~tested]).all()
    if tested.any():
        expected = multipletests(p[tested], method=STATSMODELS[method])[1]
        assert_close(adjusted[tested], expected)
        # NaN are not tests: dropping them beforehand changes nothing, bit for bit.
        np.testing.assert_array_equal(METHODS[method](p[tested]), adjusted[tested])


@given(p=P_VALUES, method=st.sampled_from([*P_ADJUST, "qvalue"]), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_adjustment_is_monotone_in_p_and_order_free(p, method, seed):
    adjusted = METHODS[method](p)
    perm = np.random.default_rng(seed).permutation(p.size)
    np.testing.assert_array_equal(METHODS[method](p[perm]), adjusted[perm])
    tested = ~np.isnan(p)
    order = np.argsort(p[tested], kind="stable")
    by_p = adjusted[tested][order]
    assert (np.diff(by_p) >= 0).all() or np.isnan(by_p).all()  # qvalue: NaN when pi0 undefined
    ties = np.diff(p[tested][order]) == 0
    np.testing.assert_array_equal(by_p[1:][ties], by_p[:-1][ties])


@given(p=P_VALUES)
@settings(max_examples=200, deadline=None)
def test_storey_fixed_lambda_is_pi0_times_bh(p):
    """Storey's q, lambda = 0.5: pi0 = #{p >= 0.5} / (m / 2), capped at 1, times statsmodels BH."""
    q, pi0 = storey_qvalue(p, lambda_=0.5)
    tested = p[~np.isnan(p)]
    at_least = np.count_nonzero(tested >= 0.5)
    if at_least == 0:  # qvalue stops: "The estimated pi0 <= 0"
        assert np.isnan(pi0) and np.isnan(q).all()
        return
    assert pi0 == pytest.approx(min(1.0, at_least / (tested.size * 0.5)), rel=RTOL)
    assert np.isnan(q[np.isnan(p)]).all()
    assert_close(q[~np.isnan(p)], pi0 * fdrcorrection(tested)[1])


@given(p=P_VALUES)
@settings(max_examples=200, deadline=None)
def test_storey_bootstrap_picks_one_pi0_of_the_grid(p):
    q, pi0 = storey_qvalue(p)
    tested = p[~np.isnan(p)]
    if tested.size == 0 or tested.max() < QVALUE_LAMBDAS[-1]:  # qvalue errors there
        assert np.isnan(pi0) and np.isnan(q).all()
        return
    per_lambda = [min(1.0, np.count_nonzero(tested >= lam) / (tested.size * (1 - lam)))
                  for lam in QVALUE_LAMBDAS]
    assert pi0 in per_lambda  # the same arithmetic, so exactly one of them
    assert_close(q[~np.isnan(p)], pi0 * fdrcorrection(tested)[1])


# --- R: stats::p.adjust and qvalue::qvalue ------------------------------------------------------

@pytest.fixture(scope="module")
def all_welch():
    """R's Welch p-values on ALL (float32) and R's adjustments of the whole cohort."""
    p = read_ref(REF / "all_f32_ttest.tsv.gz")
    adjusted = read_ref(REF / "multitest" / "all_f32_welch_p_adjusted.tsv.gz")
    assert list(adjusted["probe_id"]) == list(p["probe_id"])
    adjusted.insert(1, "welch_p", p["welch_p"])
    return adjusted


@pytest.fixture(scope="module")
def synthetic():
    return read_ref(REF / "multitest" / "synthetic_p_adjusted.tsv")


def _pi0(name: str) -> dict[str, float]:
    table = read_ref(REF / "multitest" / name)
    return dict(zip(table["variant"], table["pi0"]))


@pytest.mark.parametrize("method", P_ADJUST)
def test_p_adjust_matches_r_on_all(all_welch, method):
    assert_close(METHODS[method](all_welch["welch_p"].to_numpy()), all_welch[f"welch_p_{method}"])


@pytest.mark.parametrize("method", P_ADJUST)
def test_p_adjust_matches_r_on_ties_zeros_ones_and_nan(synthetic, method):
    p = synthetic["p"].to_numpy()
    assert np.isnan(p).sum() == 10 and (p == 0).sum() == 5 and (p == 1).sum() == 6
    assert_close(METHODS[method](p), synthetic[f"p_{method}"])


@pytest.mark.parametrize("variant, lambda_", [("lambda0.5", 0.5), ("bootstrap", QVALUE_LAMBDAS)])
@pytest.mark.parametrize("fixture, column, pi0_file", [
    ("all_welch", "welch_p", "all_f32_welch_p_adjusted_pi0.tsv"),
    ("synthetic", "p", "synthetic_p_adjusted_pi0.tsv")])
def test_storey_qvalue_matches_r_qvalue(request, fixture, column, pi0_file, variant, lambda_):
    table = request.getfixturevalue(fixture)
    q, pi0 = storey_qvalue(table[column].to_numpy(), lambda_=lambda_)
    assert pi0 == pytest.approx(_pi0(pi0_file)[variant], rel=RTOL)
    assert_close(q, table[f"{column}_qvalue_{variant}"])


@pytest.mark.parametrize("variant, lambda_", [("lambda0.5", 0.5), ("bootstrap", QVALUE_LAMBDAS)])
def test_storey_pi0_matches_r_on_many_small_sets(variant, lambda_):
    """60 p-value sets (m = 10..300, 3-decimal ties); NA where qvalue stops with an error."""
    p = read_ref(REF / "multitest" / "pi0_cases_p.tsv.gz")
    expected = read_ref(REF / "multitest" / "pi0_cases_pi0.tsv").set_index("case")
    ours = [storey_pi0(p["p"][p["case"] == case].to_numpy(), lambda_) for case in expected.index]
    # the sets give many distinct estimates, and on the grid some R errors (NA)
    assert expected[variant].nunique() >= 40 and expected["bootstrap"].isna().any()
    assert_close(ours, expected[variant])


def test_qvalue_method_is_the_bootstrap_qvalue(synthetic):
    assert_close(METHODS["qvalue"](synthetic["p"].to_numpy()), synthetic["p_qvalue_bootstrap"])


# --- edge cases ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [*P_ADJUST, "qvalue"])
@pytest.mark.parametrize("p", [[], [np.nan], [np.nan, np.nan, np.nan]],
                         ids=["empty", "nan", "all-nan"])
def test_nothing_tested_gives_all_nan(method, p):
    adjusted = METHODS[method](np.array(p, dtype=np.float64))
    assert adjusted.shape == (len(p),) and adjusted.dtype == np.float64
    assert np.isnan(adjusted).all()


@pytest.mark.parametrize("method", P_ADJUST)
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_single_p_value_is_unchanged(method, p):
    """R's p.adjust returns p itself when there is at most one test; statsmodels agrees."""
    expected = multipletests([p], method=STATSMODELS[method])[1]
    assert_close(METHODS[method](np.array([np.nan, p])), [np.nan, *expected])
    assert METHODS[method](np.array([p]))[0] == p


@pytest.mark.parametrize("method", P_ADJUST)
def test_zeros_stay_zero_and_ones_stay_one(method):
    p = np.array([0.0, 0.0, 1.0, 1.0, 0.5, np.nan])
    adjusted = METHODS[method](p)
    assert_close(adjusted, [*multipletests(p[:5], method=STATSMODELS[method])[1], np.nan])
    assert (adjusted[:2] == 0).all() and (adjusted[2:4] == 1).all()


def test_float32_input_is_computed_in_float64():
    p32 = np.array([0.01, 0.02, 0.5, 0.04], dtype=np.float32)
    for fn in METHODS.values():
        np.testing.assert_array_equal(fn(p32), fn(p32.astype(np.float64)))


def test_storey_single_p_value():
    # pi0(0.5) = 1 / (1 * 0.5) = 2, capped at 1: q is p (qvalue(0.7, lambda = 0.5, lfdr.out = F))
    q, pi0 = storey_qvalue(np.array([0.7]), lambda_=0.5)
    assert pi0 == 1.0 and q[0] == 0.7


def test_storey_undefined_pi0_is_nan():
    """Where R's qvalue stops (pi0 <= 0, or no p-value reaches the top of the lambda grid)."""
    p = np.array([0.1, 0.2, 0.3, np.nan])
    for lambda_ in (0.5, QVALUE_LAMBDAS):
        q, pi0 = storey_qvalue(p, lambda_=lambda_)
        assert np.isnan(pi0) and np.isnan(q).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"lambda_": [0.1, 0.5]}, "at least 4 values"),
    ({"lambda_": 1.0}, r"in \[0, 1\)"),
    ({"lambda_": -0.1}, r"in \[0, 1\)"),
    ({"lambda_": np.nan}, r"in \[0, 1\)"),
    ({"pi0_method": "smoother"}, "smooth.spline, is not reproduced"),
])
def test_storey_bad_options(kwargs, match):
    with pytest.raises(InputError, match=match):
        storey_qvalue(np.array([0.1, 0.96]), **kwargs)


@pytest.mark.parametrize("bad", [[-0.1, 0.5], [0.5, 1.5]])
def test_storey_refuses_p_outside_0_1(bad):
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        storey_qvalue(np.array(bad))


@pytest.mark.parametrize("method", [*P_ADJUST, "qvalue"])
def test_refuses_2d_input(method):
    with pytest.raises(InputError, match="1-D array"):
        METHODS[method](np.zeros((2, 3)))
