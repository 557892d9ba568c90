"""Per-feature Pearson / Spearman correlation: kernels against scipy, the wrapper against R.

R fixtures (tests/data/r_reference/correlation, see its README) were made by R 4.2.2
``cor.test`` on exactly the float32 values the engine stores.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.multitest import multipletests

from conftest import write_cohort_files
from engine.errors import InputError
from engine.stats.correlation import (
    RESULT_FIELDS,
    correlation,
    pearson,
    spearman,
    spearman_exact_p,
)
from engine.store import ingest, open_cohort

REF = Path(__file__).parent / "data" / "r_reference" / "correlation"
RTOL = 1e-9  # tighter than the project's 1e-6: R and the engine agree to ~1e-12 on ALL
KERNELS = {"pearson": pearson, "spearman": spearman}
FIELD = {name: i for i, name in enumerate(RESULT_FIELDS)}


def read_ref(name: str) -> pd.DataFrame:
    return pd.read_csv(REF / name, sep="\t", dtype={"probe_id": str, "stratum": str},
                       keep_default_na=False, na_values=["NA", "NaN"])


def scipy_reference(method, x, y, confidence=0.95):
    """(statistic, p, ci_low, ci_high, n) of one feature by scipy on its complete samples.

    Spearman's interval is the Fisher interval of rho: scipy pearsonr's interval on the ranks.
    """
    ok = ~np.isnan(x) & ~np.isnan(y)
    a, b = x[ok], y[ok]
    n = ok.sum()
    if method == "spearman":
        a, b = stats.rankdata(a), stats.rankdata(b)
    res = stats.pearsonr(a, b)
    ci = res.confidence_interval(confidence) if n >= 4 else (np.nan, np.nan)
    return np.array([res.statistic, res.pvalue, *ci, n])


def random_block(seed, features=40, samples=15, decimals=1, missing=0.1):
    """Values rounded to ``decimals`` (ties) with ~``missing`` NaN, and a partner with ties/NaN."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=(features, samples)), decimals)
    x[rng.random(x.shape) < missing] = np.nan
    y = np.round(rng.normal(size=samples) + 0.5 * np.nan_to_num(x[0]), decimals)
    y[rng.random(samples) < missing] = np.nan
    return x, y


# --- kernels vs scipy -------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["pearson", "spearman"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernel_matches_scipy_with_missing_values_and_ties(method, seed):
    x, y = random_block(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the kernel itself must not warn
        out = KERNELS[method](x, y)
    assert out.shape == (x.shape[0], len(RESULT_FIELDS)) and out.dtype == np.float64
    expected = np.array([scipy_reference(method, xi, y) for xi in x])
    assert np.isnan(x).any(axis=1).sum() > 10  # both the complete and the incomplete path
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_kernel_confidence_level(method):
    x, y = random_block(3, missing=0.05)
    out = KERNELS[method](x, y, confidence=0.8)
    expected = np.array([scipy_reference(method, xi, y, confidence=0.8) for xi in x])
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    wider = KERNELS[method](x, y)
    assert (wider[:, FIELD["ci_low"]] < out[:, FIELD["ci_low"]]).all()


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "0.95", None])
def test_kernel_rejects_bad_confidence(bad):
    with pytest.raises(InputError, match="confidence"):
        pearson(np.ones((1, 5)), np.arange(5.0), confidence=bad)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), method=st.sampled_from(["pearson", "spearman"]),
       features=st.integers(1, 5), samples=st.integers(1, 12))
def test_kernel_property_against_scipy(data, method, features, samples):
    # Values rounded to 1e-6: magnitudes like 1e-184 square to 0 in float64, which makes the
    # engine call a feature constant where scipy still divides; no expression value is that small.
    value = st.one_of(st.sampled_from([0.0, 1.0, 2.0, 2.5]), st.just(np.nan),
                      st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: round(v, 6)))
    x = np.array(data.draw(st.lists(st.lists(value, min_size=samples, max_size=samples),
                                    min_size=features, max_size=features)), dtype=np.float64)
    y = np.array(data.draw(st.lists(value, min_size=samples, max_size=samples)), dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = KERNELS[method](x, y)
    for xi, row in zip(x, out):
        ok = ~np.isnan(xi) & ~np.isnan(y)
        n = ok.sum()
        assert row[FIELD["n"]] == n
        if n < 2 or np.ptp(xi[ok]) == 0 or np.ptp(y[ok]) == 0:
            assert np.isnan(row[:4]).all()
            continue
        if n == 2:
            # two points lie on a line: |r| = 1 up to rounding of the centred sums
            assert abs(row[0]) == pytest.approx(1, abs=1e-12) and np.isnan(row[1:4]).all()
            continue
        ref = scipy_reference(method, xi, y)
        # Values up to 1e3 apart by tiny steps: r itself is accurate to ~1e-13 absolute, and
        # the p-value's relative error grows as r approaches +-1 (1 - r^2 cancels).
        np.testing.assert_allclose(row[0], ref[0], rtol=1e-9, atol=1e-12)
        if abs(ref[0]) < 1 - 1e-6:
            np.testing.assert_allclose(row[1:4], ref[1:4], rtol=1e-6, atol=1e-12)


def test_kernel_edge_cases_give_nan_without_warnings():
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0, np.nan])
    x = np.array([
        [1.0, 2.0, np.nan, np.nan, np.nan, 7.0],     # n = 2: r = 1, no p, no interval
        [2.0, 1.0, 4.0, np.nan, np.nan, np.nan],     # n = 3: p, no interval
        [7.0, 7.0, 7.0, 7.0, 7.0, 1.0],              # constant on the complete samples
        [1.0, np.nan, np.nan, np.nan, np.nan, 2.0],  # n = 1
        [np.nan] * 6,                                # n = 0
        [2.0, 4.0, 6.0, 8.0, 10.0, 0.0],             # r = 1 exactly
        [5.0, 4.0, 3.0, 2.0, 1.0, 9.0],              # r = -1 exactly
    ])
    for method, kernel in KERNELS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = kernel(x, y)
        np.testing.assert_array_equal(out[:, FIELD["n"]], [2, 3, 5, 1, 0, 5, 5])
        assert out[0, 0] == 1 and np.isnan(out[0, 1:4]).all()
        assert np.isfinite(out[1, :2]).all() and np.isnan(out[1, 2:4]).all()
        np.testing.assert_allclose(out[1, :2], scipy_reference(method, x[1], y)[:2], rtol=1e-12)
        assert np.isnan(out[2:5, :4]).all()
        np.testing.assert_array_equal(out[5, :4], [1, 0, 1, 1])
        np.testing.assert_array_equal(out[6, :4], [-1, 0, -1, -1])
        # a constant partner leaves every feature undefined
        flat = kernel(x, np.full(6, 3.0))
        assert np.isnan(flat[:, :4]).all()
        # no samples at all
        empty = kernel(np.empty((3, 0)), np.empty(0))
        assert np.isnan(empty[:, :4]).all() and (empty[:, FIELD["n"]] == 0).all()


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_kernel_computes_float32_input_in_float64(method):
    x, y = random_block(4, missing=0.05)
    x32 = x.astype(np.float32)
    np.testing.assert_array_equal(KERNELS[method](x32, y),
                                  KERNELS[method](x32.astype(np.float64), y))


def test_kernel_rejects_misshapen_input():
    with pytest.raises(ValueError, match="2-D"):
        pearson(np.ones(5), np.ones(5))
    with pytest.raises(ValueError, match="samples"):
        spearman(np.ones((2, 5)), np.ones(4))


# --- exact Spearman p (AS 89) -----------------------------------------------------------------

@pytest.fixture(scope="module")
def exact_cases():
    inputs = pd.read_csv(REF / "exact_inputs.tsv.gz", sep="\t")
    expected = pd.read_csv(REF / "exact_spearman.tsv", sep="\t").set_index("case")
    return {case: (g["x"].to_numpy(), g["y"].to_numpy()) for case, g in inputs.groupby("case")}, \
        expected


def test_spearman_exact_matches_r(exact_cases):
    cases, expected = exact_cases
    rows = [spearman(x[None, :], y, exact=True)[0] for x, y in cases.values()]
    got = pd.DataFrame(rows, index=list(cases), columns=RESULT_FIELDS)
    assert set(expected["n"]) >= {3, 5, 9, 10, 12, 30, 100, 1290, 1291}
    np.testing.assert_array_equal(got["n"], expected["n"])
    np.testing.assert_allclose(got["statistic"], expected["rho"], rtol=1e-12)
    # n = 1291 and tied cases use the t approximation in R as here; every other case is AS 89
    np.testing.assert_allclose(got["p_value"], expected["p_exact"], rtol=1e-12)


def test_spearman_asymptotic_matches_r_on_the_exact_cases(exact_cases):
    cases, expected = exact_cases
    got = np.array([spearman(x[None, :], y)[0, FIELD["p_value"]] for x, y in cases.values()])
    # R's rho for a perfect rank correlation is 1 - 2e-16 (cor of ranks), making its
    # t-approximation p rounding noise (~1e-24); the engine's rho is exactly 1 and p exactly 0.
    perfect = np.isclose(np.abs(expected["rho"].to_numpy()), 1, rtol=0, atol=1e-12)
    assert (got[perfect] == 0).all() and perfect.sum() >= 20
    np.testing.assert_allclose(got[~perfect], expected["p_asymptotic"].to_numpy()[~perfect],
                               rtol=1e-12)


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 8])
def test_spearman_exact_matches_permutation_enumeration(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(12, n))
    y = rng.normal(size=n)
    x[:4] = y + rng.normal(scale=0.3, size=(4, n))  # small p-values as well
    out = spearman(x, y, exact=True)
    rb = stats.rankdata(y) - (n + 1) / 2

    def rho(a, axis):  # Spearman rho of each permutation of a with the fixed y
        ra = stats.rankdata(a, axis=axis) - (n + 1) / 2
        return (ra * rb).sum(axis) / np.sqrt((ra**2).sum(axis) * (rb**2).sum())

    for xi, row in zip(x, out):
        # one sample: its n! orderings against y, the exact null of rho
        ref = stats.permutation_test((xi,), rho, vectorized=True, permutation_type="pairings",
                                     n_resamples=np.inf, alternative="two-sided")
        assert ref.null_distribution.size == np.prod(np.arange(1, n + 1))
        np.testing.assert_allclose(row[FIELD["p_value"]], ref.pvalue, rtol=1e-12)


def test_spearman_exact_uses_ties_of_each_features_complete_samples():
    """R falls back to the t approximation with ties; n > 1290 is covered by the R fixture."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 10))
    y = rng.normal(size=10)
    y[1] = y[0]         # y ties on samples 0 and 1
    x[1, 3] = x[1, 4]   # row 1 also ties in the feature
    x[2, 0] = np.nan    # row 2 misses sample 0, so its complete samples have no tie
    exact = spearman(x, y, exact=True)
    approx = spearman(x, y)
    assert exact[0, 1] == approx[0, 1] and exact[1, 1] == approx[1, 1]
    assert exact[2, 1] != approx[2, 1]
    np.testing.assert_allclose(exact[2, 1], spearman_exact_p(exact[2, 0], 9), rtol=1e-15)


# --- wrapper on the ALL cohort vs R ---------------------------------------------------------

@pytest.fixture(scope="module")
def all_cohort(all_store):
    return open_cohort(all_store)


R_COLUMNS = {
    "pearson": {"statistic": "pearson_r", "p_value": "pearson_p", "p_adj": "pearson_p_bh",
                "ci_low": "pearson_ci_low", "ci_high": "pearson_ci_high", "n": "n"},
    "spearman": {"statistic": "spearman_rho", "p_value": "spearman_p", "p_adj": "spearman_p_bh",
                 "n": "n"},
}


def check_against_r(result, ref, method):
    genes = ref["probe_id"].to_numpy()
    assert len(genes) == 505
    for field, column in R_COLUMNS[method].items():
        got = result[field].sel(gene=genes).values
        want = ref[column].to_numpy()
        assert np.isfinite(want).all()
        # p_adj depends on all 12,625 genes (R's BH over the whole cohort, rows subset after)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=0, err_msg=field)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_all_cohort_matches_r(all_cohort, method):
    ref = read_ref("all_f32_age.tsv.gz")
    result = correlation(all_cohort, method=method, covariate="age").compute()
    assert result["statistic"].dims == ("gene",) and result.sizes["gene"] == 12625
    assert result.attrs["test"] == method and result.attrs["covariate"] == "age"
    check_against_r(result, ref, method)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_all_cohort_stratified_matches_r(all_cohort, method):
    ref = read_ref("all_f32_age_by_sex.tsv.gz")
    result = correlation(all_cohort, method=method, covariate="age",
                         stratify_by="sex").compute()
    assert result["p_value"].dims == ("stratum", "gene")
    assert list(result["stratum"].values) == ["F", "M"]
    assert result.attrs["stratify_by"] == "sex"
    for stratum, part in ref.groupby("stratum"):
        check_against_r(result.sel(stratum=stratum), part, method)


def test_all_cohort_p_adj_is_bh_of_all_genes(all_cohort):
    result = correlation(all_cohort, method="spearman", covariate="age",
                         stratify_by="sex").compute()
    for stratum in result["stratum"].values:
        p = result["p_value"].sel(stratum=stratum).values
        np.testing.assert_allclose(result["p_adj"].sel(stratum=stratum).values,
                                   multipletests(p, method="fdr_bh")[1], rtol=1e-12)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_stratified_equals_unstratified_per_stratum(all_cohort, method):
    stratified = correlation(all_cohort, method=method, covariate="age",
                             stratify_by="sex").compute()
    sex = all_cohort["sex"].values.astype(str)
    for stratum in ("F", "M"):
        alone = correlation(all_cohort.isel(sample=np.flatnonzero(sex == stratum)),
                            method=method, covariate="age").compute()
        for field in ("statistic", "p_value", "p_adj", "ci_low", "ci_high", "n"):
            np.testing.assert_array_equal(stratified[field].sel(stratum=stratum).values,
                                          alone[field].values, err_msg=field)


def test_spearman_interval_on_all_is_fisher_interval_on_ranks(all_cohort):
    """Spearman's interval = scipy pearsonr's interval on the ranks, for some ALL probes."""
    result = correlation(all_cohort, method="spearman", covariate="age").compute()
    age = all_cohort["age"].values
    keep = ~np.isnan(age)
    for i in range(0, 12625, 1000):
        x = all_cohort["expression"][i].values.astype(np.float64)
        ref = scipy_reference("spearman", x[keep], age[keep])
        got = [result[f].values[i] for f in ("statistic", "p_value", "ci_low", "ci_high", "n")]
        np.testing.assert_allclose(got, ref, rtol=1e-12)


# --- wrapper: gene screen, laziness, options, errors ----------------------------------------

@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    directory = tmp_path_factory.mktemp("small")
    files = write_cohort_files(directory, n_genes=30, n_per_group=6, seed=3)
    return ingest(files["matrix"], files["samples"], directory / "small.zarr",
                  genes=files["genes"], chunk_genes=7)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_gene_screen_finds_the_gene_itself(all_cohort, method):
    gene = str(all_cohort["gene"].values[4321])
    result = correlation(all_cohort, method=method, gene=gene).compute()
    assert result.attrs["gene"] == gene
    own = result.sel(gene=gene)
    assert own["statistic"].item() == 1.0 and own["p_value"].item() == 0.0
    assert own["ci_low"].item() == own["ci_high"].item() == 1.0
    others = result["statistic"].drop_sel(gene=gene).values
    assert np.nanmax(others) < 1
    # the screen is the kernel with the gene's values as the partner
    x = all_cohort["expression"].values
    np.testing.assert_array_equal(
        np.stack([result[f].values for f in RESULT_FIELDS], axis=1),
        KERNELS[method](x, x[4321].astype(np.float64)))


def test_gene_screen_with_missing_values_and_strata(small_store):
    ds = open_cohort(small_store)
    x = ds["expression"].values.astype(np.float64)
    row = int(np.flatnonzero(np.isnan(x).any(axis=1))[0])  # a gene with missing values
    gene = str(ds["gene"].values[row])
    result = correlation(ds, method="spearman", gene=gene, stratify_by="group").compute()
    for s, stratum in enumerate(result["stratum"].values):
        cols = np.flatnonzero(ds["group"].values.astype(str) == stratum)
        own = result.sel(stratum=stratum, gene=gene)
        assert own["statistic"].item() == 1.0
        assert own["n"].item() == (~np.isnan(x[row, cols])).sum()
        np.testing.assert_array_equal(
            np.stack([result[f].values[s] for f in RESULT_FIELDS], axis=1),
            spearman(x[:, cols], x[row, cols]))


def test_builds_lazily(all_cohort, no_compute):
    gene = str(all_cohort["gene"].values[0])
    with no_compute():
        results = [
            correlation(all_cohort, method="pearson", covariate="age"),
            correlation(all_cohort, method="spearman", covariate="age", stratify_by="sex",
                        exact=True),
            correlation(all_cohort, method="spearman", gene=gene, stratify_by="sex"),
        ]
    for result in results:
        assert list(result.data_vars) == ["statistic", "p_value", "p_adj", "ci_low", "ci_high",
                                          "n"]
        for var in result.data_vars.values():
            assert isinstance(var.data, da.Array)
            assert var.dims[-1] == "gene" and var.attrs["description"]


def test_chunking_does_not_change_results(small_store):
    ds = open_cohort(small_store)
    a = correlation(ds, method="spearman", covariate="age", stratify_by="group").compute()
    b = correlation(ds.chunk({"gene": -1}), method="spearman", covariate="age",
                    stratify_by="group").compute()
    for field in a.data_vars:
        np.testing.assert_array_equal(a[field].values, b[field].values)


def test_matches_kernel_on_small_cohort_with_exact_and_confidence(small_store):
    ds = open_cohort(small_store)
    result = correlation(ds, method="spearman", covariate="age", exact=True,
                         confidence=0.9).compute()
    x = ds["expression"].values
    age = ds["age"].values.astype(np.float64)
    np.testing.assert_array_equal(
        np.stack([result[f].values for f in RESULT_FIELDS], axis=1),
        spearman(x, age, exact=True, confidence=0.9))
    assert result.attrs["confidence"] == 0.9 and result.attrs["exact"] is True
    assert "90%" in result["ci_low"].attrs["description"]
    assert "AS 89" in result["p_value"].attrs["description"]


def test_annotation_features(small_store):
    ds = open_cohort(small_store)
    ds = ds.assign(score=("sample", 2.0 * ds["age"].values + 1), noise=(
        "sample", np.random.default_rng(0).normal(size=ds.sizes["sample"])))
    result = correlation(ds, method="pearson", covariate="age",
                         features=["score", "noise"]).compute()
    assert result["statistic"].dims == ("feature",)
    assert result["statistic"].sel(feature="score").item() == pytest.approx(1, abs=1e-15)
    ref = scipy_reference("pearson", ds["noise"].values, ds["age"].values.astype(np.float64))
    np.testing.assert_allclose(
        [result[f].sel(feature="noise").item() for f in RESULT_FIELDS], ref, rtol=1e-12)


def test_samples_without_covariate_are_dropped(small_store):
    ds = open_cohort(small_store)
    age = ds["age"].values.astype(np.float64)
    age[[0, 5]] = np.nan
    ds = ds.assign(age_missing=("sample", age))
    result = correlation(ds, method="pearson", covariate="age_missing").compute()
    keep = ~np.isnan(age)
    alone = correlation(ds.isel(sample=np.flatnonzero(keep)), method="pearson",
                        covariate="age").compute()
    for field in result.data_vars:
        np.testing.assert_array_equal(result[field].values, alone[field].values)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "kendall", "covariate": "age"}, "unknown correlation method"),
    ({"method": "pearson"}, "exactly one partner"),
    ({"method": "pearson", "covariate": "age", "gene": "G001"}, "exactly one partner"),
    ({"method": "pearson", "covariate": "age", "exact": True}, "'spearman' only"),
    ({"method": "pearson", "covariate": "group"}, "not numeric"),
    ({"method": "pearson", "covariate": "nope"}, "not a sample annotation"),
    ({"method": "pearson", "gene": "nope"}, "not in the cohort"),
    ({"method": "pearson", "covariate": "age", "confidence": 95}, "confidence"),
    ({"method": "pearson", "covariate": "age", "adjust": "nonsense"}, "adjustment"),
    ({"method": "pearson", "covariate": "age", "stratify_by": "nope"}, "stratify_by"),
    ({"method": "pearson", "covariate": "age", "variable": "counts"}, "variable"),
])
def test_input_errors(small_store, kwargs, message):
    with pytest.raises(InputError, match=message):
        correlation(open_cohort(small_store), **kwargs)


def test_covariate_without_values_is_an_error(small_store):
    ds = open_cohort(small_store)
    ds = ds.assign(empty=("sample", np.full(ds.sizes["sample"], np.nan)))
    with pytest.raises(InputError, match="no values"):
        correlation(ds, method="pearson", covariate="empty")
