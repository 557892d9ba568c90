"""Two-group kernels and BH adjustment against scipy / statsmodels, gene by gene.

The per-gene oracles below call scipy on the gene's non-missing values (complete pairs for the
paired tests) and apply R's rules for when a test is undefined, which scipy does not have
(R stops with an error, the kernels return NaN).
"""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from scipy import stats
from statsmodels.stats.multitest import multipletests

from engine.stats.multitest import benjamini_hochberg
from engine.stats.twogroup import (
    PAIRED_TESTS,
    RESULT_FIELDS,
    TESTS,
    mann_whitney_u,
    paired_t,
    student_t,
    welch_t,
    wilcoxon_signed_rank,
)

EPS = np.finfo(np.float64).eps
T_TESTS = ("welch", "student", "paired_t")


# ---------------------------------------------------------------------------------------------
# Per-gene oracles: scipy on the gene's values, NaN where R's test would stop.


def _present(values):
    return values[~np.isnan(values)]


def _complete_pairs(x, y):
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def _essentially_constant(stderr, *means):
    # R's t.test: stop("data are essentially constant"). When every mean is 0 that rule cannot
    # fire, but then stderr == 0 and R's t is 0/0 = NaN: the test is undefined either way.
    return stderr < 10 * EPS * max(abs(m) for m in means) or stderr == 0


def _mean_difference(x, y):
    """The effect is reported whenever both sides have a value, even if the test is undefined."""
    return x.mean() - y.mean() if len(x) and len(y) else np.nan


def _untested(x, y, n1, n2):
    return (_mean_difference(x, y), np.nan, np.nan, np.nan, n1, n2)


def _ref_welch(x, y):
    x, y = _present(x), _present(y)
    if len(x) < 2 or len(y) < 2:
        return _untested(x, y, len(x), len(y))
    stderr = np.hypot(stats.sem(x), stats.sem(y))
    if _essentially_constant(stderr, x.mean(), y.mean()):
        return _untested(x, y, len(x), len(y))
    res = stats.ttest_ind(x, y, equal_var=False)
    return (x.mean() - y.mean(), res.statistic, res.df, res.pvalue, len(x), len(y))


def _ref_student(x, y):
    x, y = _present(x), _present(y)
    n1, n2 = len(x), len(y)
    if n1 < 1 or n2 < 1 or n1 + n2 < 3:
        return _untested(x, y, n1, n2)
    pooled = (((x - x.mean()) ** 2).sum() + ((y - y.mean()) ** 2).sum()) / (n1 + n2 - 2)
    if _essentially_constant(np.sqrt(pooled * (1 / n1 + 1 / n2)), x.mean(), y.mean()):
        return _untested(x, y, n1, n2)
    res = stats.ttest_ind(x, y, equal_var=True)
    return (x.mean() - y.mean(), res.statistic, res.df, res.pvalue, n1, n2)


def _ref_paired_t(x, y):
    x, y = _complete_pairs(x, y)
    n = len(x)
    if n < 2 or _essentially_constant(stats.sem(x - y), (x - y).mean()):
        return _untested(x, y, n, n)
    res = stats.ttest_rel(x, y)
    return ((x - y).mean(), res.statistic, res.df, res.pvalue, n, n)


def _ref_mann_whitney(x, y):
    x, y = _present(x), _present(y)
    n1, n2 = len(x), len(y)
    if n1 < 1 or n2 < 1 or np.ptp(np.concatenate([x, y])) == 0:
        return _untested(x, y, n1, n2)
    res = stats.mannwhitneyu(
        x, y, method="asymptotic", use_continuity=True, alternative="two-sided"
    )
    return (x.mean() - y.mean(), res.statistic, np.nan, res.pvalue, n1, n2)


def _ref_wilcoxon(x, y):
    x, y = _complete_pairs(x, y)
    n = len(x)
    effect = _mean_difference(x, y)
    if not np.any(x - y != 0):
        return _untested(x, y, n, n)
    options = dict(method="approx", correction=True, zero_method="wilcox")
    # scipy's two-sided statistic is min(r+, r-); r+ (R's V) is the 'greater' statistic.
    v = stats.wilcoxon(x, y, alternative="greater", **options).statistic
    p = stats.wilcoxon(x, y, alternative="two-sided", **options).pvalue
    return (effect, v, np.nan, p, n, n)


ORACLES = {
    "welch": _ref_welch,
    "student": _ref_student,
    "paired_t": _ref_paired_t,
    "mann_whitney": _ref_mann_whitney,
    "wilcoxon_signed_rank": _ref_wilcoxon,
}


def _expected(name, case, control):
    oracle = ORACLES[name]
    with warnings.catch_warnings():
        # scipy warns on nearly constant data; the kernels' own warnings are tested separately.
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = [oracle(x, y) for x, y in zip(case, control)]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(RESULT_FIELDS))


def _assert_matches_scipy(name, case, control, rtol=1e-9):
    got = TESTS[name](case, control)
    want = _expected(name, case, control)
    assert got.dtype == np.float64
    assert got.shape == (case.shape[0], len(RESULT_FIELDS))
    for column, field in enumerate(RESULT_FIELDS):
        np.testing.assert_allclose(
            got[:, column],
            want[:, column],
            rtol=rtol,
            # Means that cancel (equal group means, zero mean difference) leave a rounding
            # residue near 1e-16 whose size depends on summation order; relative error is
            # meaningless there, so tiny absolute differences are allowed.
            atol=1e-12,
            equal_nan=True,
            err_msg=f"{name}: column {field}",
        )
    return got


# ---------------------------------------------------------------------------------------------
# Random blocks with ties and missing values.


def _random_block(seed, genes, n_case, n_control, ties, nan_fraction):
    """Case and control blocks; ties 0: continuous, 1: one decimal, 2: small integer set."""
    rng = np.random.default_rng(seed)
    shift = rng.choice([0.0, 0.5, 2.0], size=(genes, 1))
    case = rng.normal(shift, 1.0, size=(genes, n_case))
    control = rng.normal(0.0, 1.0, size=(genes, n_control))
    if ties == 1:
        case, control = np.round(case, 1), np.round(control, 1)
    elif ties == 2:
        case = rng.integers(0, 3, size=case.shape) + (shift > 1)
        control = rng.integers(0, 3, size=control.shape).astype(np.float64)
        case = case.astype(np.float64)
    case[rng.random(case.shape) < nan_fraction] = np.nan
    control[rng.random(control.shape) < nan_fraction] = np.nan
    return case, control


block_params = dict(
    n_case=hst.integers(2, 5),
    n_control=hst.integers(2, 5),
    seed=hst.integers(0, 2**32 - 1),
    ties=hst.sampled_from([0, 1, 2]),
    nan_fraction=hst.sampled_from([0.0, 0.15, 0.4]),
)


@pytest.mark.parametrize("name", sorted(TESTS))
@settings(max_examples=30, deadline=None)
@given(**block_params)
def test_kernels_match_scipy_gene_by_gene(name, n_case, n_control, seed, ties, nan_fraction):
    if name in PAIRED_TESTS:
        n_control = n_case
    case, control = _random_block(seed, 25, n_case, n_control, ties, nan_fraction)
    _assert_matches_scipy(name, case, control)


@pytest.mark.parametrize("name", sorted(TESTS))
@pytest.mark.parametrize(
    ("n_case", "n_control", "ties", "nan_fraction", "seed"),
    [(5, 4, 1, 0.1, 11), (12, 7, 2, 0.1, 12), (40, 25, 0, 0.05, 13)],
)
def test_kernels_match_scipy_fixed_cases(name, n_case, n_control, ties, nan_fraction, seed):
    if name in PAIRED_TESTS:
        n_control = n_case
    case, control = _random_block(seed, 60, n_case, n_control, ties, nan_fraction)
    got = _assert_matches_scipy(name, case, control)
    # The fixed cases are large enough that most genes must actually be tested.
    assert np.mean(np.isfinite(got[:, 3])) > 0.7


def test_registry_names_every_kernel():
    assert TESTS == {
        "welch": welch_t,
        "student": student_t,
        "paired_t": paired_t,
        "mann_whitney": mann_whitney_u,
        "wilcoxon_signed_rank": wilcoxon_signed_rank,
    }
    assert PAIRED_TESTS == {"paired_t", "wilcoxon_signed_rank"}


# ---------------------------------------------------------------------------------------------
# Degenerate genes: NaN, never a warning or an exception.


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.usefixtures("no_warnings")
@pytest.mark.parametrize("name", sorted(TESTS))
def test_constant_gene_is_nan(name):
    got = TESTS[name](np.full((1, 4), 3.0), np.full((1, 4), 3.0))
    assert np.isnan(got[0, 1:4]).all()
    assert got[0, 4:].tolist() == [4.0, 4.0]
    assert got[0, 0] == 0.0  # the mean difference is reported although the test is undefined


@pytest.mark.usefixtures("no_warnings")
@pytest.mark.parametrize("name", T_TESTS)
def test_groups_constant_at_different_levels_are_essentially_constant(name):
    got = TESTS[name](np.full((1, 3), 1.0), np.full((1, 3), 2.0))
    assert np.isnan(got[0, 1:4]).all()
    assert got[0, 0] == -1.0


@pytest.mark.usefixtures("no_warnings")
@pytest.mark.parametrize(
    ("name", "level", "control_level"),
    [("welch", 2.0**33, 2.0**33), ("student", 2.0**33, 2.0**33), ("paired_t", 1.0, 0.0)],
)
@pytest.mark.parametrize(("spread_ulps", "defined"), [(1, False), (2**13, True)])
def test_r_essentially_constant_threshold(name, level, control_level, spread_ulps, defined):
    # R stops when stderr < 10 * eps * (largest |group mean|, or |mean difference| if paired):
    # a spread of one ulp of that scale is below the threshold, 2**13 ulps are above it.
    # scipy has no such rule and returns a finite t either way.
    step = spread_ulps * np.spacing(level)
    case = level + step * np.array([[0.0, 1.0, 0.0]])
    control = control_level + step * np.array([[1.0, 0.0, 2.0]])
    reference = stats.ttest_rel if name == "paired_t" else stats.ttest_ind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's own precision-loss warning
        assert np.isfinite(reference(case[0], control[0]).statistic)
    got = _assert_matches_scipy(name, case, control)
    assert np.isfinite(got[0, 1:4]).all() == defined
    assert np.isnan(got[0, 1:4]).all() != defined
    assert np.isfinite(got[0, 0])  # the mean difference is reported either way


@pytest.mark.usefixtures("no_warnings")
@pytest.mark.parametrize(
    ("name", "case", "control", "n_case", "n_control"),
    [
        ("welch", [1.0, np.nan, np.nan], [1.0, 2.0, 4.0], 1, 3),
        ("welch", [1.0, 2.0, 3.0], [np.nan, np.nan, np.nan], 3, 0),
        ("student", [1.0, np.nan, np.nan], [2.0, np.nan, np.nan], 1, 1),
        ("student", [np.nan, np.nan, np.nan], [1.0, 2.0, 5.0], 0, 3),
        ("paired_t", [1.0, np.nan, 3.0], [2.0, 5.0, np.nan], 1, 1),
        ("mann_whitney", [np.nan, np.nan, np.nan], [1.0, 2.0, 5.0], 0, 3),
        ("wilcoxon_signed_rank", [np.nan, 2.0, 3.0], [1.0, np.nan, np.nan], 0, 0),
    ],
)
def test_too_few_values_is_nan(name, case, control, n_case, n_control):
    got = TESTS[name](np.array([case]), np.array([control]))
    assert np.isnan(got[0, 1:4]).all()
    assert got[0, 4:].tolist() == [n_case, n_control]
    # the effect needs only one value (one complete pair) on each side
    assert np.isnan(got[0, 0]) == (n_case == 0 or n_control == 0)


@pytest.mark.usefixtures("no_warnings")
def test_student_with_a_single_value_group_is_defined():
    # R pools only the larger group's variance when the other has one value; so does scipy.
    got = _assert_matches_scipy("student", np.array([[1.0]]), np.array([[2.0, 3.5]]))
    assert np.isfinite(got[0, 3])


@pytest.mark.usefixtures("no_warnings")
def test_mann_whitney_all_tied_is_nan_but_constant_groups_are_not():
    case = np.array([[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
    control = np.array([[2.0, 2.0, np.nan], [2.0, 2.0, 2.0]])
    got = mann_whitney_u(case, control)
    assert np.isnan(got[0, 1:4]).all() and got[0, 0] == 0.0
    assert got[0, 4:].tolist() == [3.0, 2.0]
    assert got[1, 1] == 0.0
    _assert_matches_scipy("mann_whitney", case[1:], control[1:])


@pytest.mark.usefixtures("no_warnings")
def test_wilcoxon_all_zero_differences_is_nan():
    case = np.array([[1.0, 2.0, 3.0, np.nan], [1.0, 2.0, 3.0, 4.0]])
    control = np.array([[1.0, 2.0, 3.0, 0.0], [0.0, 2.0, 3.0, 4.0]])
    got = wilcoxon_signed_rank(case, control)
    np.testing.assert_array_equal(got[0], [0.0, np.nan, np.nan, np.nan, 3.0, 3.0])
    # One nonzero difference among zeros is a (weak) test, as in R.
    assert got[1, 1] == 1.0 and np.isfinite(got[1, 3])
    _assert_matches_scipy("wilcoxon_signed_rank", case[1:], control[1:])


@pytest.mark.usefixtures("no_warnings")
@pytest.mark.parametrize("name", sorted(TESTS))
@pytest.mark.parametrize("samples", [0, 3])
def test_empty_blocks(name, samples):
    got = TESTS[name](np.empty((0, samples)), np.empty((0, samples)))
    assert got.shape == (0, len(RESULT_FIELDS)) and got.dtype == np.float64
    no_samples = TESTS[name](np.empty((2, 0), np.float32), np.empty((2, 0), np.float32))
    np.testing.assert_array_equal(no_samples[:, 4:], 0.0)
    effect_or_test = no_samples[:, :4]
    assert np.isnan(effect_or_test).all()


def test_paired_kernels_reject_unaligned_blocks():
    with pytest.raises(ValueError, match="aligned"):
        paired_t(np.zeros((2, 3)), np.zeros((2, 4)))


# ---------------------------------------------------------------------------------------------
# float32 input: p-values computed in float64, not flushed to zero.


@pytest.mark.parametrize("name", T_TESTS + ("mann_whitney", "wilcoxon_signed_rank"))
def test_float32_strong_effect_keeps_tiny_p_values(name):
    rng = np.random.default_rng(7)
    case = rng.normal(100.0, 1.0, size=(4, 50)).astype(np.float32)
    control = rng.normal(0.0, 1.0, size=(4, 50)).astype(np.float32)
    got = TESTS[name](case, control)
    assert got.dtype == np.float64
    assert (got[:, 3] > 0).all()
    if name in T_TESTS:
        # These p are ~1e-100 or smaller: far below float32's smallest subnormal.
        assert (got[:, 3] < 1e-60).all()
    want = _expected(name, case.astype(np.float64), control.astype(np.float64))
    np.testing.assert_allclose(got[:, 1:4], want[:, 1:4], rtol=1e-9, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# Benjamini-Hochberg.


def _assert_bh_matches_statsmodels(p):
    got = benjamini_hochberg(p)
    tested = ~np.isnan(p)
    assert got.shape == p.shape
    np.testing.assert_array_equal(np.isnan(got), ~tested)
    if tested.any():
        want = multipletests(p[tested], method="fdr_bh")[1]
        np.testing.assert_allclose(got[tested], want, rtol=1e-12)


def test_bh_excludes_nan_from_the_number_of_tests():
    p = np.array([0.01, np.nan, 0.04, 0.03, 0.04, np.nan])
    # R: p.adjust(c(0.01, NA, 0.04, 0.03, 0.04, NA), "BH") -> 0.04 NA 0.04 0.04 0.04 NA
    # (counting the NAs, m = 6, would give 0.06).
    np.testing.assert_allclose(
        benjamini_hochberg(p), [0.04, np.nan, 0.04, 0.04, 0.04, np.nan], rtol=1e-12
    )
    _assert_bh_matches_statsmodels(p)


@pytest.mark.parametrize("p", [np.array([]), np.array([np.nan, np.nan]), np.array([0.2])])
def test_bh_edge_inputs(p):
    _assert_bh_matches_statsmodels(p)


@settings(max_examples=60, deadline=None)
@given(
    size=hst.integers(1, 300),
    seed=hst.integers(0, 2**32 - 1),
    decimals=hst.sampled_from([1, 2, 6]),
    nan_fraction=hst.sampled_from([0.0, 0.2, 0.6]),
)
def test_bh_matches_statsmodels_with_ties_and_nan(size, seed, decimals, nan_fraction):
    rng = np.random.default_rng(seed)
    # Mix of signal and null p-values, rounded so that ties are common.
    p = np.where(rng.random(size) < 0.3, rng.random(size) ** 4, rng.random(size))
    p = np.round(p, decimals)
    p[rng.random(size) < nan_fraction] = np.nan
    _assert_bh_matches_statsmodels(p)
