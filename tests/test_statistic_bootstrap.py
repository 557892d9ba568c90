"""Bootstrap intervals of general statistics by index resampling (engine.resample.
statistic_bootstrap) and their wiring into correlation, logistic, ols and limma.

References: plain per-replicate loops over the same draws with scipy ``spearmanr`` /
``pearsonr``, statsmodels ``Logit`` and numpy ``lstsq``; ``scipy.stats.bootstrap(paired=True)``
with its draws reconstructed; numpy percentiles of the defined replicates.
"""

from __future__ import annotations

import warnings
from functools import partial

import dask.array as da
import numpy as np
import pytest
import statsmodels.api as sm
import xarray as xr
from scipy import stats

from engine.errors import InputError
from engine.resample.bootstrap import (
    REPLICATE_BLOCK,
    replicate_indices,
    resample_units,
    sample_indices,
)
from engine.resample.rng import block_rng
from engine.resample.statistic_bootstrap import (
    BOOT_FIELDS,
    BootstrapOptions,
    bootstrap_options,
    bootstrap_statistic,
    jackknife_statistics,
    replicate_interval,
    replicate_statistics,
    stratum_key,
)
from engine.stats.correlation import bootstrap_correlation, correlation
from engine.stats.limma import bootstrap_contrast, formula_model, limma, ols, two_group_model
from engine.stats.logistic import bootstrap_odds_ratio, logistic

RTOL = 1e-10  # closed-form statistics: the engine and the loops differ by rounding only
RTOL_LOGIT = 1e-8  # IRLS (engine) vs statsmodels' Newton: both stop near 1e-10 of the optimum
SEED, KEY = 20261121, 12345


def draws(units, replicates, seed=SEED, key=KEY):
    """The sample positions of every replicate, straight from the draw API."""
    out = []
    for block in range(-(-replicates // REPLICATE_BLOCK)):
        rows = replicate_indices(units, replicates, seed=seed, key=key, block=block)
        out += list(sample_indices(units, rows))
    return out


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def block(seed=0, genes=12, samples=40, missing=0.05):
    """Rounded values (ties), a few NaN, a near-constant row (constant resamples) and a partner."""
    rng = np.random.default_rng(seed)
    y = np.round(rng.normal(0, 1, samples), 1)
    x = np.round(0.5 * y + rng.normal(0, 1, (genes, samples)), 1)
    x[rng.random(x.shape) < missing] = np.nan
    x[0] = 3.0
    x[0, :3] = [4.0, 5.0, 6.0]  # constant in the resamples that miss its first 3 samples
    return x, y


def scipy_correlation(method, a, b):
    ok = ~np.isnan(a)
    fn = stats.spearmanr if method == "spearman" else stats.pearsonr
    return quiet(fn, a[ok], b[ok]).statistic if ok.sum() >= 2 else np.nan


# --------------------------------------------------------------------------- replicate loops


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_correlation_replicates_match_a_scipy_loop(method):
    x, y = block()
    units = resample_units(x.shape[1])
    replicates = 300  # two blocks
    statistic = partial(bootstrap_correlation, y=y, rank=method == "spearman")
    theta, se = replicate_statistics(x, statistic, units, replicates=replicates, seed=SEED,
                                     key=KEY)
    assert se is None
    reference = np.array([[scipy_correlation(method, x[g, idx], y[idx])
                           for idx in draws(units, replicates)] for g in range(x.shape[0])])
    np.testing.assert_allclose(theta, reference, rtol=RTOL, atol=1e-14, equal_nan=True)
    assert 0 < np.isnan(reference[0]).sum() < replicates  # the undefined case is exercised

    # hence the same interval: percentile of each row's defined replicates, by numpy
    out = bootstrap_statistic(x, statistic, units, replicates=replicates, method="percentile",
                              level=0.9, seed=SEED, key=KEY)
    for g in range(x.shape[0]):
        defined = reference[g][np.isfinite(reference[g])]
        assert out[g, 2] == defined.size
        np.testing.assert_allclose(out[g, :2], np.percentile(defined, [5, 95]), rtol=RTOL)


def test_jackknife_matches_a_scipy_loop():
    x, y = block(seed=3)
    strata = np.repeat([0, 1], [15, 25])
    units = resample_units(x.shape[1], strata=strata)
    statistic = partial(bootstrap_correlation, y=y, rank=True)
    jack = jackknife_statistics(x, statistic, units)
    assert [j.shape for j in jack] == [(12, 15), (12, 25)]
    for s, members in enumerate([np.arange(15), np.arange(15, 40)]):
        for i, left_out in enumerate(members):
            keep = np.delete(np.arange(40), left_out)
            expected = [scipy_correlation("spearman", x[g, keep], y[keep]) for g in range(12)]
            np.testing.assert_allclose(jack[s][:, i], expected, rtol=RTOL, equal_nan=True)


def logit_data(seed=5, features=5, samples=120):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (features, samples))
    age = rng.normal(50, 10, samples)
    eta = 0.8 * x[0] + 0.03 * (age - 50)
    y = (rng.random(samples) < 1 / (1 + np.exp(-eta))).astype(float)
    x[2, rng.random(samples) < 0.1] = np.nan
    return x, y, age


def test_odds_ratio_replicates_match_a_statsmodels_loop():
    x, y, age = logit_data()
    units = resample_units(x.shape[1], strata=y)  # outcome classes, as logistic() does
    replicates = 40
    statistic = partial(bootstrap_odds_ratio, y=y, covariates=age[:, None],
                        interaction=np.empty((len(y), 0)), predictor_scale="sd")
    theta, _ = replicate_statistics(x, statistic, units, replicates=replicates, seed=SEED,
                                    key=KEY)
    reference = np.empty_like(theta)
    for j, idx in enumerate(draws(units, replicates)):
        assert y[idx].sum() == y.sum()  # every replicate keeps the events
        for g in range(x.shape[0]):
            ok = ~np.isnan(x[g, idx])
            u = x[g, idx][ok]
            u = (u - u.mean()) / u.std(ddof=1)
            design = np.column_stack([np.ones(ok.sum()), age[idx][ok], u])
            fit = sm.Logit(y[idx][ok], design).fit(disp=0, tol=1e-14, maxiter=100)
            reference[g, j] = np.exp(fit.params[2])
    np.testing.assert_allclose(theta, reference, rtol=RTOL_LOGIT)


def lstsq_contrast(yrow, design, contrast):
    ok = ~np.isnan(yrow)
    xd = design[ok]
    beta, _, rank, _ = np.linalg.lstsq(xd, yrow[ok], rcond=None)
    residual = yrow[ok] - xd @ beta
    df = ok.sum() - rank
    se = np.sqrt(residual @ residual / df * contrast @ np.linalg.pinv(xd.T @ xd) @ contrast)
    return contrast @ beta, se


def test_linear_contrast_replicates_match_a_lstsq_loop():
    rng = np.random.default_rng(9)
    n = 30
    group = np.repeat([0.0, 1.0], 15)
    rare = np.zeros(n)
    rare[[3, 20]] = 1.0  # a covariate level that some resamples miss: an aliased column
    age = rng.normal(50, 10, n)
    design = np.column_stack([np.ones(n), group, age, rare])
    contrast = np.array([0.0, 1.0, 0.0, 0.0])
    y = rng.normal(0, 1, (6, n)) + group + 0.01 * age
    y[1, [2, 17]] = np.nan  # the per-row (masked) path
    y[4, 5] = np.nan
    units = resample_units(n, strata=group)
    replicates = 60
    statistic = partial(bootstrap_contrast, design=design, contrast=contrast, studentized=True)
    theta, se = replicate_statistics(y, statistic, units, replicates=replicates, seed=SEED,
                                     key=KEY)
    aliased = 0
    for j, idx in enumerate(draws(units, replicates)):
        aliased += not rare[idx].any()
        for g in range(y.shape[0]):
            effect, error = lstsq_contrast(y[g, idx], design[idx], contrast)
            np.testing.assert_allclose(theta[g, j], effect, rtol=RTOL)
            np.testing.assert_allclose(se[g, j], error, rtol=RTOL)
    assert aliased > 0


def test_linear_contrast_not_estimable_is_nan():
    design = np.column_stack([np.ones(6), [0, 0, 0, 1, 1, 1.0]])
    y = np.arange(12.0).reshape(2, 6)
    y[1, 4] = np.nan
    idx = np.array([0, 1, 2, 0, 1, 2])  # no sample of group 1
    out = bootstrap_contrast(y, design=design, contrast=np.array([0.0, 1.0]))(idx)
    assert np.isnan(out).all()


# --------------------------------------------------------------------------- scipy.stats.bootstrap


def scipy_statistic(method):
    def pearson(a, b, axis=-1):
        return stats.pearsonr(a, b, axis=axis).statistic

    def spearman(a, b, axis=-1):
        return pearson(stats.rankdata(a, axis=axis), stats.rankdata(b, axis=axis), axis=axis)

    return spearman if method == "spearman" else pearson


@pytest.mark.parametrize("method", ["spearman", "pearson"])
@pytest.mark.parametrize("ci", ["percentile", "basic", "bca"])
def test_correlation_interval_equals_scipy_bootstrap_paired(method, ci):
    rng = np.random.default_rng(1)
    n, replicates = 25, 999
    y = rng.normal(0, 1, n)
    x = 0.6 * y + rng.normal(0, 1, (3, n))
    statistic = partial(bootstrap_correlation, y=y, rank=method == "spearman")
    units = resample_units(n)
    # scipy's draws: one (replicates, n) batch of integers from the generator it is given
    idx_all = np.random.default_rng(7).integers(0, n, (replicates, n))
    replicate = statistic(x)
    theta = np.column_stack([replicate(idx) for idx in idx_all])
    ours = replicate_interval(theta, replicate(np.arange(n)), method=ci, level=0.9,
                              jackknife=jackknife_statistics(x, statistic, units))
    for g in range(3):
        res = stats.bootstrap((x[g], y), scipy_statistic(method), paired=True, vectorized=True,
                              n_resamples=replicates, method=ci, confidence_level=0.9,
                              rng=np.random.default_rng(7))
        np.testing.assert_allclose(theta[g], res.bootstrap_distribution, rtol=RTOL)
        np.testing.assert_allclose(ours[g, :2], res.confidence_interval, rtol=RTOL)
        assert ours[g, 2] == replicates


def test_end_to_end_equals_scipy_with_the_first_block_generator():
    """One block of replicates is exactly scipy's draws from block 0's generator."""
    rng = np.random.default_rng(2)
    n = 30
    y = rng.normal(0, 1, n)
    x = 0.4 * y + rng.normal(0, 1, (2, n))
    statistic = partial(bootstrap_correlation, y=y, rank=True)
    out = bootstrap_statistic(x, statistic, resample_units(n), replicates=REPLICATE_BLOCK,
                              method="bca", level=0.95, seed=SEED, key=KEY)
    for g in range(2):
        res = stats.bootstrap((x[g], y), scipy_statistic("spearman"), paired=True,
                              vectorized=True, n_resamples=REPLICATE_BLOCK, method="bca",
                              rng=block_rng(SEED, KEY, 0))
        np.testing.assert_allclose(out[g, :2], res.confidence_interval, rtol=RTOL)


# --------------------------------------------------------------------------- conventions


def test_undefined_replicates_are_left_out_and_counted():
    x, y = block(seed=4)
    statistic = partial(bootstrap_correlation, y=y, rank=False)
    units = resample_units(x.shape[1])
    theta, _ = replicate_statistics(x, statistic, units, replicates=200, seed=SEED, key=KEY)
    for ci in ("percentile", "basic", "bca"):
        out = bootstrap_statistic(x, statistic, units, replicates=200, method=ci, level=0.95,
                                  seed=SEED, key=KEY)
        np.testing.assert_array_equal(out[:, 2], np.isfinite(theta).sum(axis=1))
        assert np.isfinite(out[:, :2]).all()  # row 0 has undefined replicates, yet an interval
    defined = theta[0][np.isfinite(theta[0])]
    assert defined.size < 200
    observed = statistic(x[:1])(np.arange(x.shape[1]))[0]
    out = bootstrap_statistic(x[:1], statistic, units, replicates=200, method="basic",
                              level=0.95, seed=SEED, key=KEY)
    np.testing.assert_allclose(out[0, :2], 2 * observed - np.percentile(defined, [97.5, 2.5]),
                               rtol=RTOL)


def test_too_few_defined_replicates_or_undefined_observed_give_nan():
    theta = np.array([[1.0, np.nan, np.nan], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    out = replicate_interval(theta, np.array([1.0, np.nan, 2.0]), method="percentile",
                             level=0.9)
    assert np.isnan(out[:2, :2]).all() and np.isfinite(out[2, :2]).all()
    np.testing.assert_array_equal(out[:, 2], [1, 3, 3])


def test_undefined_jackknife_values_are_left_out_of_the_acceleration():
    rng = np.random.default_rng(3)
    theta = rng.normal(0, 1, (2, 50))
    jack = rng.normal(0, 0.1, (2, 10))
    with_nan = jack.copy()
    with_nan[1, 4] = np.nan
    out = replicate_interval(theta, np.zeros(2), method="bca", level=0.9, jackknife=[with_nan])
    row1 = replicate_interval(theta[1:], np.zeros(1), method="bca", level=0.9,
                              jackknife=[np.delete(jack[1:], 4, axis=1)])
    row0 = replicate_interval(theta[:1], np.zeros(1), method="bca", level=0.9,
                              jackknife=[jack[:1]])
    np.testing.assert_array_equal(out, np.vstack([row0, row1]))


def test_studentized_uses_replicate_standard_errors():
    rng = np.random.default_rng(8)
    n = 40
    y = rng.normal(0, 1, n)
    x = 0.5 * y + rng.normal(0, 1, (3, n))
    statistic = partial(bootstrap_correlation, y=y, rank=False, studentized=True)
    units = resample_units(n)
    out = bootstrap_statistic(x, statistic, units, replicates=300, method="studentized",
                              level=0.9, seed=SEED, key=KEY)
    r = np.array([stats.pearsonr(row, y).statistic for row in x])
    se = (1 - r**2) / np.sqrt(n - 3)
    for g in range(3):
        t = []
        for idx in draws(units, 300):
            rb = stats.pearsonr(x[g, idx], y[idx]).statistic
            t.append((rb - r[g]) / ((1 - rb**2) / np.sqrt(n - 3)))
        q = np.percentile(t, [5, 95])
        np.testing.assert_allclose(out[g, :2], [r[g] - q[1] * se[g], r[g] - q[0] * se[g]],
                                   rtol=RTOL)


def test_clusters_move_together():
    rng = np.random.default_rng(11)
    sizes = [1, 2, 3, 2, 1, 2, 2, 3]
    patient = np.repeat(np.arange(len(sizes)), sizes)
    units = resample_units(patient.size, clusters=patient)
    for idx in draws(units, 50):
        counts = np.bincount(idx, minlength=patient.size)
        for p in range(len(sizes)):
            assert np.unique(counts[patient == p]).size == 1  # a patient's samples together
        assert np.bincount(np.unique(patient[idx]), minlength=len(sizes)).sum() <= len(sizes)
    # duplicated samples resampled by patient = the patients resampled one sample each
    y = rng.normal(0, 1, 12)
    x = 0.5 * y + rng.normal(0, 1, (3, 12))
    twice = np.repeat(np.arange(12), 2)
    by_patient = resample_units(24, clusters=twice)
    plain = resample_units(12)
    for rank in (False, True):
        dup = bootstrap_statistic(
            x[:, twice], partial(bootstrap_correlation, y=y[twice], rank=rank),
            by_patient, replicates=300, method="bca", level=0.95, seed=SEED, key=KEY)
        one = bootstrap_statistic(
            x, partial(bootstrap_correlation, y=y, rank=rank),
            plain, replicates=300, method="bca", level=0.95, seed=SEED, key=KEY)
        np.testing.assert_allclose(dup, one, rtol=1e-12)  # r of doubled points: rounding only


def test_bit_identical_for_any_row_split_and_memory_pass():
    x, y = block(seed=6, genes=23)
    units = resample_units(x.shape[1], strata=np.arange(x.shape[1]) % 3)
    statistic = partial(bootstrap_correlation, y=y, rank=True)
    kwargs = dict(replicates=270, method="bca", level=0.95, seed=SEED, key=KEY)
    whole = bootstrap_statistic(x, statistic, units, **kwargs)
    parts = np.vstack([bootstrap_statistic(x[a:b], statistic, units, **kwargs)
                       for a, b in ((0, 5), (5, 6), (6, 23))])
    passes = bootstrap_statistic(x, statistic, units, memory_budget=3 * 8 * 270, **kwargs)
    np.testing.assert_array_equal(whole, parts)
    np.testing.assert_array_equal(whole, passes)


def test_options():
    class Spec:  # a pydantic-like object
        replicates, method, level, by, strata, weights = 99, "basic", 0.9, "patient", False, \
            "multinomial"
    options = bootstrap_options(Spec(), seed=3, key=4)
    assert options == BootstrapOptions(99, "basic", 0.9, "patient", False, "multinomial", 3, 4)
    assert bootstrap_options(None) is None
    for bad, message in [({"weights": "poisson"}, "linear statistics"),
                         ({"method": "abc"}, "method"), ({"replicates": 0}, "replicates"),
                         ({"level": 1.5}, "between 0 and 1"), ({"strata": 3}, "strata"),
                         ({"replicate": 5}, "unknown bootstrap option")]:
        with pytest.raises(InputError, match=message):
            bootstrap_options(bad)


# --------------------------------------------------------------------------- wiring


def cohort(chunks=7, genes=20, samples=36, seed=21):
    rng = np.random.default_rng(seed)
    age = np.round(rng.normal(55, 10, samples))
    group = np.where(np.arange(samples) % 2, "case", "control").astype(object)
    patient = np.array([f"P{i // 2:02d}" for i in range(samples)], dtype=object)
    site = np.where(np.arange(samples) % 3, "north", "south").astype(object)
    x = rng.normal(8, 1, (genes, samples)) + 0.02 * (age - 55) + (group == "case")
    x[3, 4] = np.nan
    eta = 0.9 * (x[0] - 8)
    response = np.where(rng.random(samples) < 1 / (1 + np.exp(-eta)), "yes", "no").astype(object)
    age[5] = np.nan
    return xr.Dataset(
        {"expression": (("gene", "sample"), da.from_array(x.astype(np.float32),
                                                          chunks=(chunks, samples))),
         "age": ("sample", age), "group": ("sample", group), "patient": ("sample", patient),
         "site": ("sample", site), "response": ("sample", response)},
        coords={"gene": np.array([f"G{i:02d}" for i in range(genes)], dtype=object),
                "sample": np.array([f"S{i:02d}" for i in range(samples)], dtype=object)})


OPTIONS = {"replicates": 120, "method": "bca", "level": 0.9, "seed": 1, "key": 77}


def analyses(ds, options=OPTIONS):
    model = formula_model(ds, design="~ group + age", coef="group[T.control]")
    return {
        "correlation": correlation(ds, method="spearman", covariate="age", bootstrap=options),
        "logistic": logistic(ds, outcome="response", event="yes", covariates=["age"],
                             bootstrap=options),
        "ols": ols(ds, model, bootstrap=options),
        "limma": limma(ds, model, bootstrap=options),
    }


ANALYTIC = {"correlation": "fisher", "logistic": "wald", "ols": "t", "limma": "t"}


def test_wiring_is_lazy_adds_the_columns_and_keeps_the_analytic_interval(no_compute):
    ds = cohort()
    with no_compute():
        results = analyses(ds)
        screen = correlation(ds, method="pearson", gene="G01", stratify_by="site",
                             bootstrap=OPTIONS)
    screen = screen.compute()
    assert (screen["n_boot"] == 120).all() and np.isfinite(screen["ci_low"].values[:, 2:]).all()
    plain = {"correlation": correlation(ds, method="spearman", covariate="age"),
             "logistic": logistic(ds, outcome="response", event="yes", covariates=["age"])}
    for name, result in results.items():
        columns = result.attrs["columns"]
        suffix = ANALYTIC[name]
        at = columns.index("ci_low")
        assert columns[at:at + 5] == ["ci_low", "ci_high", "n_boot", f"ci_low_{suffix}",
                                      f"ci_high_{suffix}"]
        assert "90% BCa bootstrap confidence interval" in result["ci_low"].attrs["description"]
        assert "bootstrap replicates" in result["n_boot"].attrs["description"]
        assert result.attrs["bootstrap_replicates"] == 120
        computed = result.compute()
        assert computed["n_boot"].max() == 120
        low, high = computed["ci_low"].values, computed["ci_high"].values
        ok = np.isfinite(low)
        assert ok.sum() >= 15 and (low[ok] <= high[ok]).all()
        if name in plain:
            reference = plain[name].compute()
            for bound in ("ci_low", "ci_high"):
                np.testing.assert_array_equal(computed[f"{bound}_{suffix}"], reference[bound])
                assert computed[f"{bound}_{suffix}"].attrs["description"] == \
                    reference[bound].attrs["description"]
    for name in ("ols", "limma"):
        r = results[name].compute()
        df = r["df"] if name == "ols" else r["df_total"]
        half = stats.t.ppf(0.95, df.values) * r["se"].values
        np.testing.assert_allclose(r["ci_low_t"], r["effect"] - half, rtol=1e-12)
    # the strata each analysis used by default
    assert results["logistic"].attrs["bootstrap_strata"] == "response (outcome classes)"
    assert results["ols"].attrs["bootstrap_strata"] == "group"
    assert results["correlation"].attrs["bootstrap_strata"] == "none"


def test_wiring_is_bit_identical_for_two_chunkings():
    a = {k: v.compute() for k, v in analyses(cohort(chunks=7)).items()}
    b = {k: v.compute() for k, v in analyses(cohort(chunks=13)).items()}
    for name in a:
        # the intervals; correlation and logistic kernels are row-wise throughout, while the
        # analytic least-squares fit (fit_contrast: one GEMM per chunk) differs by ~1e-15
        columns = list(a[name].data_vars) if name in ("correlation", "logistic") else BOOT_FIELDS
        for column in columns:
            np.testing.assert_array_equal(a[name][column].values, b[name][column].values,
                                          err_msg=f"{name} {column}")


def test_wiring_equals_the_kernel_on_the_analysis_samples():
    ds = cohort()
    options = dict(OPTIONS, method="percentile")
    got = correlation(ds, method="pearson", covariate="age", bootstrap=options).compute()
    age = ds["age"].values
    keep = ~np.isnan(age)
    x = ds["expression"].values[:, keep].astype(np.float64)
    statistic = partial(bootstrap_correlation, y=age[keep], rank=False)
    expected = bootstrap_statistic(x, statistic, resample_units(int(keep.sum())),
                                   replicates=120, method="percentile", level=0.9, seed=1,
                                   key=77)
    for i, f in enumerate(BOOT_FIELDS):
        np.testing.assert_array_equal(got[f].values, expected[:, i])

    # logistic: within the outcome classes of the fitted samples
    got = logistic(ds, outcome="response", event="yes", covariates=["age"],
                   bootstrap=options).compute()
    y = (ds["response"].values == "yes").astype(float)
    expected = bootstrap_statistic(
        x, partial(bootstrap_odds_ratio, y=y[keep], covariates=age[keep, None],
                   interaction=np.empty((keep.sum(), 0)), predictor_scale="sd"),
        resample_units(int(keep.sum()), strata=y[keep]), replicates=120, method="percentile",
        level=0.9, seed=1, key=77)
    np.testing.assert_array_equal(got["ci_low"].values, expected[:, 0])


def test_stratify_by_resamples_each_stratum_with_its_own_stream():
    ds = cohort()
    options = dict(OPTIONS, method="percentile")
    got = correlation(ds, method="spearman", covariate="age", stratify_by="site",
                      bootstrap=options).compute()
    for label in ("north", "south"):
        sub = ds.isel(sample=np.flatnonzero(ds["site"].values == label))
        alone = correlation(sub, method="spearman", covariate="age",
                            bootstrap=dict(options, key=stratum_key(77, label))).compute()
        for f in BOOT_FIELDS:
            np.testing.assert_array_equal(got[f].sel(stratum=label).values, alone[f].values)


def test_paired_model_resamples_pairs_and_by_moves_patients():
    ds = cohort()
    samples = ds.sizes["sample"]
    pairs = ds.assign(pair=("sample", np.array([f"Q{i % (samples // 2)}" for i in
                                                range(samples)], dtype=object)),
                      arm=("sample", np.where(np.arange(samples) < samples // 2, "post",
                                              "pre").astype(object)))
    model = two_group_model(pairs, group="arm", case="post", control="pre", pair_by="pair")
    result = ols(pairs, model, bootstrap=OPTIONS)
    assert result.attrs["bootstrap_by"] == "pairs of pair"
    assert result.attrs["bootstrap_strata"].startswith("none")
    # the paired effect is the mean difference: each replicate resamples whole pairs
    r = result.compute()
    assert (r["n_boot"] == 120).all()
    clustered = correlation(ds, method="pearson", covariate="age",
                            bootstrap=dict(OPTIONS, by="patient")).compute()
    assert clustered.attrs["bootstrap_by"] == "patient"
    with pytest.raises(InputError, match="studentized"):
        correlation(ds, method="pearson", covariate="age",
                    bootstrap=dict(OPTIONS, by="patient", method="studentized"))
    with pytest.raises(InputError, match="more than one stratum"):
        correlation(ds, method="pearson", covariate="age",
                    bootstrap=dict(OPTIONS, by="patient", strata="group"))
    with pytest.raises(InputError, match="has no value"):
        correlation(ds.assign(cl=("sample", np.where(np.arange(samples) == 2, "",
                                                      "a").astype(object))),
                    method="pearson", covariate="age", bootstrap=dict(OPTIONS, by="cl"))
