"""Bootstrap confidence intervals of the Cox hazard ratio (engine.stats.cox.bootstrap_hazard_ratio,
``cox(..., bootstrap=...)``), through the general-statistic bootstrap
(engine.resample.statistic_bootstrap).

References: a plain loop over the same draws (reconstructed with ``replicate_indices`` /
``sample_indices``) fitting statsmodels ``PHReg`` on every replicate, with the split, the
covariates dropped where constant and the monotone-likelihood check written out here; the
intervals of those replicates by ``confidence_interval``.
"""

from __future__ import annotations

import warnings
from functools import partial

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from statsmodels.duration.hazard_regression import PHReg

from engine.errors import InputError
from engine.resample.bootstrap import resample_units
from engine.resample.intervals import confidence_interval
from engine.resample.statistic_bootstrap import (
    BOOT_FIELDS,
    bootstrap_statistic,
    replicate_statistics,
    stratum_key,
)
from engine.stats.cox import bootstrap_hazard_ratio, cox, cox_ph
from test_statistic_bootstrap import draws  # the replicates straight from the draw API

# Newton-Raphson in both (engine: step < 1e-9 SD, then that step taken; statsmodels: tol 1e-12
# on the parameters): both stop within ~1e-12 of the optimum, the rest is rounding (measured
# 5e-15 on the hazard ratios and their se).
RTOL = 1e-10
SEED, KEY = 20261121, 4242


# --------------------------------------------------------------------------- the reference


def monotone(u, t, e) -> bool:
    """No finite estimate for a 0/1 covariate u: the partial likelihood increases for ever
    towards +inf when every event is high or has no high sample at risk (its score is >= 0 for
    every coefficient, whatever the other covariates), towards -inf likewise for low."""
    events = np.flatnonzero(e == 1)
    at_risk = t[None, :] >= t[events, None]
    high_at_risk = (at_risk & (u == 1)).any(axis=1)
    low_at_risk = (at_risk & (u == 0)).any(axis=1)
    return bool(np.all((u[events] == 1) | ~high_at_risk)
                or np.all((u[events] == 0) | ~low_at_risk))


def phreg_hazard_ratio(x, t, e, covariates, split, ties, threshold=None):
    """(hazard ratio, its delta-method se) of one feature by statsmodels, NaN when undefined."""
    ok = ~np.isnan(x)
    u, tt, ee = x[ok], t[ok], e[ok]
    if split is not None:
        cut = np.quantile(u, split) if threshold is None else threshold  # R quantile type 7
        u = (u > cut).astype(float)
    varying = (covariates != covariates[:1]).any(axis=0)  # over the replicate's samples
    c = covariates[ok][:, varying]
    binary = [v for v in (u, *c.T) if np.isin(v, (0.0, 1.0)).all()]
    if np.ptp(u) == 0 or ee.sum() == 0 or any(monotone(v, tt, ee) for v in binary):
        return np.nan, np.nan
    model = PHReg(tt, np.column_stack([u, c]), status=ee, ties=ties)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a convergence warning would fail the test
        try:
            fit = model.fit(tol=1e-12, maxiter=200)
        except RuntimeWarning:
            # plain Newton from 0 overshoots a large coefficient (a rare covariate level) and
            # overflows: BFGS (a line search) to get close, then Newton to the optimum
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = model.fit(method="bfgs", maxiter=1000).params
            fit = model.fit(start_params=start, tol=1e-12, maxiter=200)
    hr = np.exp(fit.params[0])
    return hr, hr * fit.bse[0]


def survival_block(seed=4, n=40):
    """Tied times; rows: noise, an effect, missing values, a 0/1 feature whose high group has
    two events only (replicates that miss both have no finite estimate), noise. Covariates:
    age, and a level of 3 samples (events amid the others) that some replicates miss (then
    constant: left out of that replicate's model)."""
    rng = np.random.default_rng(seed)
    t = rng.integers(1, 13, n).astype(float)
    e = np.zeros(n)
    e[:24] = 1.0
    rare = np.zeros(n)
    rare[-3:] = 1.0
    t[-3:] = [4.0, 6.0, 8.0]
    e[-3:] = 1.0
    e[[30, 31, 32]] = 0.0  # 24 events, 16 censored
    age = rng.normal(0, 1, n)
    x = rng.normal(0, 1, (5, n))
    x[1] += 0.7 * e - 0.05 * t
    x[2, rng.choice(n - 3, 5, replace=False)] = np.nan  # never the rare samples
    high = np.concatenate([[0, 1], np.flatnonzero(e == 0)[:13]])  # 2 events, 13 censored
    x[3] = 0.0
    x[3, high] = 1.0
    return x, t, e, np.column_stack([age, rare])


CONFIGS = {"continuous, adjusted": (None, True), "median split": (0.5, False)}


@pytest.fixture(scope="module", params=[(ties, config) for ties in ("breslow", "efron")
                                        for config in CONFIGS])
def reference(request):
    """Engine and statsmodels replicate hazard ratios (and se) of one configuration."""
    ties, config = request.param
    split, adjusted = CONFIGS[config]
    x, t, e, c = survival_block()
    covariates = c if adjusted else np.zeros((t.size, 0))
    units = resample_units(t.size, strata=e)  # events / censored, as cox() does by default
    replicates = 60
    statistic = partial(bootstrap_hazard_ratio, time=t, event=e, covariates=covariates,
                        split=split, ties=ties, studentized=True)
    theta, theta_se = replicate_statistics(x, statistic, units, replicates=replicates,
                                           seed=SEED, key=KEY)
    ref = np.full((2, x.shape[0], replicates), np.nan)
    fixed = np.full(replicates, np.nan)  # row 0 split at its threshold on all samples
    threshold = np.nanquantile(x, 0.5, axis=1)
    idx_all = draws(units, replicates, seed=SEED, key=KEY)
    for j, idx in enumerate(idx_all):
        assert e[idx].sum() == e.sum()  # every replicate keeps the number of events
        for g in range(x.shape[0]):
            ref[:, g, j] = phreg_hazard_ratio(x[g, idx], t[idx], e[idx], covariates[idx],
                                              split, ties)
            if split is not None and g == 0:
                fixed[j] = phreg_hazard_ratio(x[0, idx], t[idx], e[idx], covariates[idx],
                                              split, ties, threshold=threshold[0])[0]
    observed = np.array([phreg_hazard_ratio(x[g], t, e, covariates, split, ties)
                         for g in range(x.shape[0])]).T
    return dict(ties=ties, split=split, adjusted=adjusted, x=x, t=t, e=e, c=covariates,
                units=units, replicates=replicates, statistic=statistic, theta=theta,
                theta_se=theta_se, ref=ref, fixed=fixed, observed=observed, idx=idx_all)


def test_replicate_hazard_ratios_match_a_phreg_loop(reference):
    r = reference
    np.testing.assert_allclose(r["theta"], r["ref"][0], rtol=RTOL, equal_nan=True)
    np.testing.assert_allclose(r["theta_se"], r["ref"][1], rtol=RTOL, equal_nan=True)
    undefined = np.isnan(r["ref"][0])
    # the monotone-likelihood row has undefined replicates, the others none
    assert 0 < undefined[3].sum() < r["replicates"]
    assert not undefined[[0, 1, 2, 4]].any()
    # the observed statistic is the analysis' hazard ratio
    fitted = cox_ph(r["x"], r["t"], r["e"], covariates=r["c"], split=r["split"],
                    ties=r["ties"])
    np.testing.assert_allclose(fitted[:, 4], r["observed"][0], rtol=RTOL)
    if r["adjusted"]:  # the rare level is missed by some replicates (then left out)
        assert any(not r["c"][idx, 1].any() for idx in r["idx"])
    if r["split"] is not None:
        # the threshold is recomputed per replicate: a fixed one gives other hazard ratios
        defined = ~undefined[0] & np.isfinite(r["fixed"])
        assert np.abs(np.log(r["fixed"][defined] / r["theta"][0][defined])).max() > 1e-2


@pytest.mark.parametrize("method", ["percentile", "basic", "bca", "studentized"])
def test_interval_equals_confidence_interval_of_the_reference_replicates(reference, method):
    r = reference
    rows = [1, 2, 3]  # an effect, missing values, undefined replicates
    x, units, replicates = r["x"][rows], r["units"], r["replicates"]
    out = bootstrap_statistic(x, r["statistic"], units, replicates=replicates, method=method,
                              level=0.9, seed=SEED, key=KEY)
    hr, se = r["ref"][:, rows]
    observed, observed_se = r["observed"][:, rows]
    jackknife = None
    if method == "bca":  # leave-one-unit-out fits per stratum, by statsmodels
        jackknife = []
        for s in range(units.n_strata):
            members = np.flatnonzero(units.stratum == s)
            values = np.empty((x.shape[0], members.size))
            for i, left_out in enumerate(members):
                keep = np.delete(np.arange(units.n_samples), left_out)
                values[:, i] = [phreg_hazard_ratio(x[g, keep], r["t"][keep], r["e"][keep],
                                                   r["c"][keep], r["split"], r["ties"])[0]
                                for g in range(x.shape[0])]
            jackknife.append(values)
    for g in range(x.shape[0]):
        defined = np.isfinite(hr[g])
        assert out[g, 2] == defined.sum()  # n_boot counts the defined replicates
        kwargs = {}
        if method == "bca":
            kwargs["jackknife"] = [j[g:g + 1][:, np.isfinite(j[g])] for j in jackknife]
        if method == "studentized":
            kwargs = {"standard_error": observed_se[g:g + 1],
                      "t_replicates": ((hr[g][defined] - observed[g]) / se[g][defined])[None]}
        low, high = confidence_interval(hr[g][defined][None], observed[g:g + 1],
                                        method=method, level=0.9, **kwargs)
        np.testing.assert_allclose(out[g, :2], [low[0], high[0]], rtol=RTOL)
    assert out[2, 2] < replicates


# --------------------------------------------------------------------------- the wrapper


def cohort(chunks=4, genes=6, patients=24, seed=7):
    """One sample per patient; a little missing (a gene value, an age)."""
    rng = np.random.default_rng(seed)
    t = rng.integers(1, 30, patients).astype(float)
    e = (rng.random(patients) < 0.6).astype(float)
    age = np.round(rng.normal(55, 10, patients))
    arm = np.where(rng.random(patients) < 0.5, "A", "B").astype(object)
    site = np.where(np.arange(patients) % 2, "north", "south").astype(object)
    x = rng.normal(8, 1, (genes, patients))
    x[0] -= 0.6 * t / 30
    x[2, 5] = np.nan
    age[3] = np.nan
    patient = np.array([f"P{i:02d}" for i in range(patients)], dtype=object)
    return xr.Dataset(
        {"expression": (("gene", "sample"), da.from_array(x.astype(np.float32),
                                                          chunks=(chunks, -1))),
         "time": ("sample", t), "status": ("sample", e), "age": ("sample", age),
         "arm": ("sample", arm), "site": ("sample", site), "patient": ("sample", patient)},
        coords={"gene": np.array([f"G{i:02d}" for i in range(genes)], dtype=object),
                "sample": np.array([f"S{i:03d}" for i in range(patients)], dtype=object)})


OPTIONS = {"replicates": 100, "method": "bca", "level": 0.9, "seed": 3, "key": 99}


def test_wiring_is_lazy_adds_the_columns_and_keeps_the_wald_interval(no_compute):
    ds = cohort()
    with no_compute():
        result = cox(ds, time="time", event="status", covariates=["age", "arm"],
                     bootstrap=OPTIONS)
        cox(ds, time="time", event="status", split="median", stratify_by="site",
            bootstrap=OPTIONS)
    columns = result.attrs["columns"]
    at = columns.index("ci_low")
    assert columns[at - 1:at + 6] == ["hazard_ratio", "ci_low", "ci_high", "n_boot",
                                      "ci_low_wald", "ci_high_wald", "p_logrank"]
    assert result.attrs["bootstrap_strata"] == "status (events vs censored)"
    assert result.attrs["bootstrap_replicates"] == 100 and result.attrs["bootstrap_by"] == \
        "samples"
    assert "90% BCa bootstrap confidence interval of hazard_ratio" in \
        result["ci_low"].attrs["description"]
    computed = result.compute()
    plain = cox(ds, time="time", event="status", covariates=["age", "arm"]).compute()
    for bound in ("ci_low", "ci_high"):
        np.testing.assert_array_equal(computed[f"{bound}_wald"], plain[bound])
        assert computed[f"{bound}_wald"].attrs["description"] == \
            plain[bound].attrs["description"]
    for name in plain.data_vars:
        if name not in ("ci_low", "ci_high"):
            np.testing.assert_array_equal(computed[name], plain[name])
    assert (computed["n_boot"] == 100).all()
    low, high, hr = (computed[f].values for f in ("ci_low", "ci_high", "hazard_ratio"))
    assert np.isfinite(low).all() and (low < hr).all() and (hr < high).all()
    assert cox(ds, time="time", event="status", bootstrap=dict(OPTIONS, strata=False)
               ).attrs["bootstrap_strata"] == "none"
    assert cox(ds, time="time", event="status", bootstrap=dict(OPTIONS, strata="arm")
               ).attrs["bootstrap_strata"] == "arm"
    split = cox(ds, time="time", event="status", split="median", bootstrap=OPTIONS)
    assert "each replicate splits the feature" in split["ci_high"].attrs["description"]


def test_wiring_equals_the_kernel_on_the_analysis_samples():
    ds = cohort()
    options = dict(OPTIONS, method="percentile", replicates=60)
    got = cox(ds, time="time", event="status", covariates=["age"], ties="breslow",
              bootstrap=options).compute()
    age = ds["age"].values
    keep = ~np.isnan(age)  # samples without a covariate value are left out
    t, e = ds["time"].values[keep], ds["status"].values[keep]
    x = ds["expression"].values[:, keep].astype(np.float64)
    statistic = partial(bootstrap_hazard_ratio, time=t, event=e, covariates=age[keep, None],
                        ties="breslow")
    units = resample_units(int(keep.sum()), strata=e)
    expected = bootstrap_statistic(x, statistic, units, replicates=60, method="percentile",
                                   level=0.9, seed=3, key=99)
    for i, f in enumerate(BOOT_FIELDS):
        np.testing.assert_array_equal(got[f].values, expected[:, i])
    # undefined replicates are counted: a gene whose high half has one event
    ds2 = cohort()
    x2 = ds2["expression"].values.copy()
    t2, e2 = ds2["time"].values, ds2["status"].values
    events = np.flatnonzero(e2 == 1)
    x2[1] = 0.0
    x2[1, events[np.argmin(t2[events])]] = 1.0  # the earliest event: low samples at risk
    x2[1, e2 == 0] = 1.0
    ds2["expression"] = (("gene", "sample"), da.from_array(x2, chunks=(4, -1)))
    got = cox(ds2.isel(gene=[0, 1]), time="time", event="status", bootstrap=options).compute()
    theta, _ = replicate_statistics(
        x2[1:2].astype(np.float64), partial(bootstrap_hazard_ratio, time=t2, event=e2),
        resample_units(e2.size, strata=e2), replicates=60, seed=3, key=99)
    n_defined = np.isfinite(theta).sum()
    assert 0 < n_defined < 60 and got["n_boot"].values[1] == n_defined


def test_bit_identical_for_two_gene_chunkings():
    options = dict(OPTIONS, replicates=40)
    for kwargs in ({"covariates": ["age", "arm"]},
                   {"split": "median", "stratify_by": "site", "ties": "breslow"}):
        a = cox(cohort(chunks=2), time="time", event="status", bootstrap=options,
                **kwargs).compute()
        b = cox(cohort(chunks=3), time="time", event="status", bootstrap=options,
                **kwargs).compute()
        for name in a.data_vars:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_stratify_by_resamples_each_stratum_with_its_own_stream():
    ds = cohort()
    options = dict(OPTIONS, method="percentile", replicates=40)
    got = cox(ds, time="time", event="status", stratify_by="site", bootstrap=options).compute()
    for label in ("north", "south"):
        sub = ds.isel(sample=np.flatnonzero(ds["site"].values == label))
        alone = cox(sub, time="time", event="status",
                    bootstrap=dict(options, key=stratum_key(99, label))).compute()
        for f in BOOT_FIELDS:
            np.testing.assert_array_equal(got[f].sel(stratum=label).values, alone[f].values)
    # a stratum with fewer than 2 samples cannot be resampled: NaN interval, n_boot 0
    site = ds["site"].values.copy()
    site[0] = "lonely"
    got = cox(ds.assign(site=("sample", site)).isel(gene=[0]), time="time", event="status",
              stratify_by="site", bootstrap=options).compute()
    assert np.isnan(got["ci_low"].sel(stratum="lonely")).all()
    assert (got["n_boot"].sel(stratum="lonely") == 0).all()


def test_clusters_move_together():
    # two identical samples per patient resampled by patient = one sample per patient resampled
    # by sample: same draws (units in order), and a Breslow fit of doubled data is the fit of
    # the data (score and information double); samples resampled one by one would differ
    ds = cohort()
    one = cox(ds, time="time", event="status", ties="breslow", bootstrap=OPTIONS).compute()
    twice = ds.isel(sample=np.repeat(np.arange(ds.sizes["sample"]), 2))
    twice = twice.assign_coords(sample=[f"{s}_{k}" for s in ds["sample"].values
                                        for k in (1, 2)])
    doubled = cox(twice, time="time", event="status", ties="breslow",
                  bootstrap=dict(OPTIONS, by="patient")).compute()
    assert doubled.attrs["bootstrap_by"] == "patient"
    for f in ("hazard_ratio", *BOOT_FIELDS):  # the same sums doubled: rounding only
        np.testing.assert_allclose(doubled[f].values, one[f].values, rtol=1e-9)
    unclustered = cox(twice, time="time", event="status", ties="breslow",
                      bootstrap=OPTIONS).compute()
    assert np.abs(unclustered["ci_low"].values / one["ci_low"].values - 1).max() > 1e-3
    # each replicate holds both samples of every patient it draws, as often as drawn
    patient = twice["patient"].values
    units = resample_units(patient.size, clusters=patient, strata=twice["status"].values)
    for idx in draws(units, 20, seed=SEED, key=KEY):
        counts = np.bincount(idx, minlength=patient.size)
        assert (counts[::2] == counts[1::2]).all()
    with pytest.raises(InputError, match="studentized"):
        cox(twice, time="time", event="status",
            bootstrap=dict(OPTIONS, by="patient", method="studentized"))
