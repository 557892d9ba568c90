"""Survival: Kaplan-Meier, log-rank and per-feature Cox models against R survival and statsmodels.

R fixtures: tests/data/r_reference/survival (README there says how they were made).
"""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.duration.survfunc import SurvfuncRight, survdiff

from engine import open_cohort
from engine.errors import InputError
from engine.stats.cox import FIELDS, cox, cox_ph
from engine.stats.multitest import benjamini_hochberg
from engine.stats.survival import (
    kaplan_meier,
    kaplan_meier_curve,
    logrank_test,
    median_survival,
)

REF = Path(__file__).parent / "data" / "r_reference" / "survival"
RTOL = 1e-6
COX_COLUMNS = ["effect", "se", "statistic", "p_value", "p_adj", "hazard_ratio", "ci_low",
               "ci_high", "p_logrank", "n", "n_events", "converged"]
CURVE_COLUMNS = ["time", "n_risk", "n_event", "n_censor", "survival", "std_err", "ci_low",
                 "ci_high"]


def read_ref(name: str) -> pd.DataFrame:
    return pd.read_csv(REF / name, sep="\t", keep_default_na=False, na_values=["NA"],
                       dtype={0: str, "sample_id": str, "group": str})


def assert_close(actual, desired, rtol=RTOL, **kwargs):
    np.testing.assert_allclose(np.asarray(actual, float), np.asarray(desired, float), rtol=rtol,
                               **kwargs)


def synthetic_dataset(chunk: int = 15) -> xr.Dataset:
    """The synthetic R fixture cohort as a lazy cohort-like Dataset (genes = its features)."""
    expr = read_ref("synthetic_expression.tsv").set_index("feature_id")
    s = read_ref("synthetic_samples.tsv").set_index("sample_id")
    annotations = {"time": ("sample", s["time"].to_numpy(float)),
                   "status": ("sample", s["status"].to_numpy(float)),
                   "age": ("sample", s["age"].to_numpy(float)),
                   "arm": ("sample", s["arm"].to_numpy(object)),
                   "site": ("sample", s["site"].to_numpy(object)),
                   "status_text": ("sample", np.where(s["status"] == 1, "dead", "alive")
                                   .astype(object))}
    x = da.from_array(expr[s.index].to_numpy(np.float32), chunks=(chunk, -1))
    return xr.Dataset({"expression": (("gene", "sample"), x), **annotations},
                      coords={"gene": expr.index.to_numpy(object),
                              "sample": s.index.to_numpy(object)})


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_dataset()


@pytest.fixture(scope="module")
def all_cohort(all_store):
    """ALL (lazy, as stored) with the fixtures' follow-up time: days from diagnosis to the
    date last seen (all_survival.tsv, made by make_inputs.py from the sample sheet)."""
    ds = open_cohort(all_store)
    s = read_ref("all_survival.tsv").set_index("sample_id").loc[ds["sample"].values]
    return ds.assign(time_days=("sample", s["time_days"].to_numpy(float)),
                     relapse01=("sample", s["relapse"].to_numpy(float)))


def every_50th(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(gene=slice(0, None, 50))


def r_flagged(r: pd.DataFrame, prefix: str) -> pd.Series:
    """Fits R could not give a finite estimate for: failed, infinite warning, no convergence."""
    return (r[f"{prefix}_err"] == 1) | (r[f"{prefix}_inf"] == 1) | (r[f"{prefix}_nonconv"] == 1)


def check_against_r(res: pd.DataFrame, r: pd.DataFrame, prefix: str, *, score: str | None,
                    extra_flagged=()):
    """One configuration of a fixture (e.g. ``med_efron``) against our result table."""
    res = res.loc[r["feature_id"]]
    r = r.set_index("feature_id")
    flagged = r_flagged(r, prefix)
    flagged[list(extra_flagged)] = True
    assert (res["converged"] == 0).to_numpy().tolist() == flagged.tolist()
    ok = ~flagged
    ours, ref = res[ok], r[ok]
    assert ok.sum() >= 0.8 * len(r)
    assert_close(ours["effect"], ref[f"{prefix}_coef"])
    assert_close(ours["se"], ref[f"{prefix}_se"])
    assert_close(ours["statistic"], ref[f"{prefix}_z"])
    assert_close(ours["p_value"], ref[f"{prefix}_p"])
    assert_close(ours["hazard_ratio"], np.exp(ref[f"{prefix}_coef"]))
    z = stats.norm.ppf(0.975)
    assert_close(ours["ci_low"], np.exp(ref[f"{prefix}_coef"] - z * ref[f"{prefix}_se"]))
    assert_close(ours["ci_high"], np.exp(ref[f"{prefix}_coef"] + z * ref[f"{prefix}_se"]))
    assert (ours["n"] == ref[f"{prefix}_n"]).all()
    assert (ours["n_events"] == ref[f"{prefix}_nevent"]).all()
    assert res.loc[flagged, ["effect", "se", "p_value", "hazard_ratio"]].isna().all().all()
    if score is not None:
        chi = r[score]
        expected = stats.chi2.sf(chi, 1)
        # a feature collinear with the covariates has a singular information matrix: no score
        # test (R's generalised inverse gives chi-square ~ 1e-29 there)
        has = chi.notna() & (res["n_events"] > 0) & (res["n"] >= 2) & ~r.index.isin(extra_flagged)
        assert_close(res.loc[has, "p_logrank"], expected[has])
        assert res.loc[~has, "p_logrank"].isna().all()


def table(result: xr.Dataset) -> pd.DataFrame:
    return result.compute().to_dataframe()


# ---- Cox kernel vs statsmodels PHReg --------------------------------------------------------

def random_survival(seed, n=70, features=12, missing=0.1):
    rng = np.random.default_rng(seed)
    x = rng.normal(5.0, 2.0, size=(features, n))
    t = rng.integers(1, 15, n).astype(float)  # many tied times
    e = (rng.random(n) < 0.65).astype(float)
    covariates = np.column_stack([rng.normal(size=n), rng.integers(0, 2, n)])
    x[rng.random(x.shape) < missing] = np.nan
    return x, t, e, covariates


@pytest.mark.parametrize("ties", ["breslow", "efron"])
@pytest.mark.parametrize("adjusted", [False, True])
@pytest.mark.parametrize("split", [None, 0.5])
def test_cox_matches_statsmodels_phreg(ties, adjusted, split):
    x, t, e, c = random_survival(3)
    out = pd.DataFrame(cox_ph(x, t, e, covariates=c if adjusted else None, split=split,
                              ties=ties), columns=FIELDS)
    assert (out["converged"] == 1).all()
    for i in range(x.shape[0]):
        ok = ~np.isnan(x[i])
        xi = x[i, ok]
        if split is not None:
            xi = (xi > np.quantile(xi, split)).astype(float)
        exog = xi[:, None] if not adjusted else np.column_stack([xi, c[ok]])
        ref = PHReg(t[ok], exog, status=e[ok], ties=ties).fit()
        assert_close(out.loc[i, "effect"], ref.params[0])
        assert_close(out.loc[i, "se"], ref.bse[0])
        assert_close(out.loc[i, "p_value"], ref.pvalues[0])
        assert out.loc[i, "n"] == ok.sum() and out.loc[i, "n_events"] == e[ok].sum()


def test_logrank_score_matches_statsmodels_survdiff():
    x, t, e, _ = random_survival(5, missing=0.0)
    out = pd.DataFrame(cox_ph(x, t, e, split=0.5), columns=FIELDS)
    for i in range(x.shape[0]):
        high = (x[i] > np.median(x[i])).astype(int)
        chi, p = survdiff(t, e, high)
        assert_close(out.loc[i, "p_logrank"], p)


def test_cox_without_ties_efron_equals_breslow():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(5, 40))
    t = rng.permutation(40).astype(float) + 1.0
    e = (rng.random(40) < 0.7).astype(float)
    efron, breslow = cox_ph(x, t, e, ties="efron"), cox_ph(x, t, e, ties="breslow")
    assert_close(efron, breslow, rtol=1e-10)


def test_cox_is_invariant_to_sample_order_and_feature_scale():
    x, t, e, c = random_survival(8, missing=0.05)
    base = pd.DataFrame(cox_ph(x, t, e, covariates=c), columns=FIELDS)
    perm = np.random.default_rng(1).permutation(t.size)
    shuffled = pd.DataFrame(cox_ph(x[:, perm], t[perm], e[perm], covariates=c[perm]),
                            columns=FIELDS)
    # the same sums in another order: equal to rounding (reason for rtol 1e-9, atol 1e-12)
    assert_close(shuffled, base, rtol=1e-9, atol=1e-12)
    scaled = pd.DataFrame(cox_ph(10.0 * x + 3.0, t, e, covariates=c), columns=FIELDS)
    assert_close(scaled["effect"] * 10.0, base["effect"])
    assert_close(scaled["p_value"], base["p_value"])


# ---- Cox vs R coxph on the synthetic cohort (ties, NA, special features) -------------------

@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("split", [None, "median", 0.25])
def test_cox_matches_r_synthetic(synthetic, ties, split):
    r = read_ref("synthetic_cox.tsv.gz")
    res = table(cox(synthetic, time="time", event="status", split=split, ties=ties))
    tag = {None: "cont", "median": "med", 0.25: "q25"}[split]
    score = {"cont": "cont_exact_score", "med": "med_logrank_chisq", "q25": None}[tag]
    check_against_r(res, r, f"{tag}_{ties}", score=score)
    if split is not None:
        assert_close(res.loc[r["feature_id"], "threshold"], r[f"threshold_{tag}"])
    else:
        assert "threshold" not in res


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("split", [None, "median"])
def test_cox_with_covariates_matches_r_synthetic(synthetic, ties, split):
    r = read_ref("synthetic_cox_age_arm.tsv.gz")
    res = table(cox(synthetic, time="time", event="status", split=split, ties=ties,
                    covariates=("age", "arm")))
    tag = "cont" if split is None else "med"
    # feat_34 = 2 age + 1: R drops the aliased age and fits the feature; we give NaN
    collinear = ["feat_34"] if split is None else []
    check_against_r(res, r, f"{tag}_{ties}", score=f"{tag}_{ties}_score",
                    extra_flagged=collinear)


def test_cox_stratified_matches_r_per_site(synthetic):
    res = cox(synthetic, time="time", event="status", split="median", stratify_by="site")
    assert res["effect"].dims == ("stratum", "gene")
    assert list(res["stratum"].values) == ["S1", "S2"]
    computed = res.compute()
    for site in ("S1", "S2"):
        r = read_ref(f"synthetic_cox_site_{site}.tsv.gz")
        one = computed.sel(stratum=site).drop_vars("stratum").to_dataframe()
        check_against_r(one, r, "med_efron", score="med_logrank_chisq")
        assert_close(one["p_adj"], benjamini_hochberg(one["p_value"].to_numpy()))
    assert computed.sel(stratum="S2", gene="feat_37")["n"] == 0
    assert np.isnan(computed.sel(stratum="S2", gene="feat_37")["p_logrank"])


# ---- Cox and survdiff vs R on ALL (float32 expression; relapse after diagnosis) ------------

@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_matches_r_all(all_cohort, ties):
    r = read_ref("all_cox.tsv.gz")
    ds = every_50th(all_cohort)
    assert list(ds["gene"].values) == list(r["feature_id"])
    for split, tag, score in ((None, "cont", "cont_exact_score"),
                              ("median", "med", "med_logrank_chisq")):
        # relapse is a text annotation (TRUE/FALSE): the event_value path
        res = table(cox(ds, time="time_days", event="relapse", event_value="TRUE", split=split,
                        ties=ties))
        check_against_r(res, r, f"{tag}_{ties}", score=score)


def test_cox_with_covariates_matches_r_all(all_cohort):
    r = read_ref("all_cox_age_sex.tsv.gz")
    res = table(cox(every_50th(all_cohort), time="time_days", event="relapse01",
                    covariates=["age", "sex"], split="median"))
    check_against_r(res, r, "med_efron", score="med_efron_score")


def test_cox_builds_lazily_and_agrees_across_chunkings(all_cohort, no_compute):
    with no_compute():
        res = cox(all_cohort, time="time_days", event="relapse01", split="median",
                  covariates=["sex"], stratify_by="BT")
    assert all(isinstance(v.data, da.Array) for v in res.data_vars.values())
    assert list(res.data_vars) == COX_COLUMNS + ["threshold"]
    assert all(v.attrs["description"] for v in res.data_vars.values())
    small = every_50th(all_cohort)
    a = cox(small, time="time_days", event="relapse01", covariates=["age"]).compute()
    b = cox(small.chunk({"gene": 7}), time="time_days", event="relapse01",
            covariates=["age"]).compute()
    xr.testing.assert_identical(a, b)


def test_cox_on_numeric_annotations_as_features(synthetic):
    ds = synthetic.assign(score_a=synthetic["expression"][0].compute(),
                          score_b=("sample", np.full(synthetic.sizes["sample"], 2.0)))
    res = cox(ds, time="time", event="status_text", event_value="dead",
              features=["score_a", "score_b"]).compute()
    genes = cox(synthetic, time="time", event="status").compute()
    assert res["effect"].dims == ("feature",)
    assert_close(res["effect"].sel(feature="score_a"), genes["effect"].sel(gene="feat_01"))
    assert np.isnan(res["effect"].sel(feature="score_b"))  # constant
    assert res["converged"].sel(feature="score_b") == 0
    # a numeric code with event_value: here 2 = event, 1 = censored
    coded = ds.assign(code=ds["status"] + 1)
    again = cox(coded, time="time", event="code", event_value=2, features=["score_a"]).compute()
    assert_close(again["effect"], res["effect"].sel(feature=["score_a"]), rtol=0)


# ---- Cox edge cases ------------------------------------------------------------------------

def test_cox_edge_cases_give_nan_not_errors():
    rng = np.random.default_rng(2)
    n = 30
    t = np.arange(1.0, n + 1)
    e = np.tile([1.0, 0.0, 1.0], n // 3)
    x = rng.normal(size=(7, n))
    x[0] = 4.0                                          # constant
    x[1] = np.nan                                       # all missing
    x[2, 2:] = np.nan                                   # two values
    x[3] = np.where(e == 0, 1.0, 0.0)                   # split high = only censored samples
    x[4] = -t                                           # longest survivors lowest: monotone
    x[5, e == 1] = np.nan                               # no events among its samples
    out = pd.DataFrame(cox_ph(x, t, e, split=None), columns=FIELDS)
    assert out.loc[[0, 1, 3, 4, 5], "effect"].isna().all()
    assert (out.loc[[0, 1, 3, 4, 5], "converged"] == 0).all()
    assert out.loc[6, "converged"] == 1
    assert out.loc[1, "n"] == 0 and out.loc[5, "n_events"] == 0
    assert out.loc[[0, 1, 5], "p_logrank"].isna().all()
    # a monotone likelihood still has a perfectly good log-rank test
    assert np.isfinite(out.loc[[3, 4], "p_logrank"]).all()
    split = pd.DataFrame(cox_ph(x[3:4], t, e, split=0.5), columns=FIELDS)
    assert split.loc[0, "converged"] == 0 and np.isnan(split.loc[0, "hazard_ratio"])
    group = (x[3] > 0).astype(int)
    assert_close(split.loc[0, "p_logrank"], survdiff(t, e, group)[1])
    # tiny n
    tiny = pd.DataFrame(cox_ph(np.array([[1.0, 2.0]]), np.array([1.0, 2.0]),
                               np.array([1.0, 0.0])), columns=FIELDS)
    assert tiny.loc[0, "converged"] == 0 and tiny.loc[0, "n"] == 2
    # no samples at all
    assert cox_ph(np.zeros((2, 0)), np.zeros(0), np.zeros(0)).shape == (2, len(FIELDS))


def test_cox_collinear_covariate_gives_nan():
    x, t, e, c = random_survival(4, missing=0.0)
    x[0] = 3.0 * c[:, 0] + 1.0
    out = pd.DataFrame(cox_ph(x, t, e, covariates=c), columns=FIELDS)
    assert out.loc[0, "converged"] == 0 and np.isnan(out.loc[0, "effect"])
    assert (out.loc[1:, "converged"] == 1).all()


def test_cox_input_errors(synthetic):
    with pytest.raises(InputError, match="ties"):
        cox(synthetic, time="time", event="status", ties="exact")
    with pytest.raises(InputError, match="split"):
        cox(synthetic, time="time", event="status", split=1.5)
    with pytest.raises(InputError, match="event_value"):
        cox(synthetic, time="time", event="status_text")
    with pytest.raises(InputError, match="values present: alive, dead"):
        cox(synthetic, time="time", event="status_text", event_value="died")
    with pytest.raises(InputError, match="not numeric"):
        cox(synthetic, time="arm", event="status")
    with pytest.raises(InputError, match="0 .censored. or 1"):
        cox(synthetic, time="time", event="age")
    with pytest.raises(InputError, match="not a sample annotation"):
        cox(synthetic, time="time", event="status", covariates=["nope"])
    with pytest.raises(InputError, match="both the outcome and a covariate"):
        cox(synthetic, time="time", event="status", covariates=["time"])
    negative = synthetic.assign(time=-synthetic["time"])
    with pytest.raises(InputError, match=">= 0"):
        cox(negative, time="time", event="status")
    no_events = synthetic.assign(status=synthetic["status"] * 0)
    with pytest.raises(InputError, match="no event"):
        cox(no_events, time="time", event="status")


# ---- Kaplan-Meier and log-rank -------------------------------------------------------------

def check_km(result: xr.Dataset, prefix: str, groups: list[str]):
    curve_ref = read_ref(f"{prefix}_curve.tsv")
    summary_ref = read_ref(f"{prefix}_summary.tsv").set_index("group")
    res = result.compute()
    assert list(res["group"].values) == groups
    for g in groups:
        ours = res.sel(group=g)[CURVE_COLUMNS].to_dataframe().dropna(subset=["time"])
        ref = curve_ref[curve_ref["group"] == g]
        assert len(ours) == len(ref)
        for ours_col, ref_col in (("time", "time"), ("n_risk", "n_risk"), ("n_event", "n_event"),
                                  ("n_censor", "n_censor"), ("survival", "surv"),
                                  ("std_err", "std_err_surv"), ("ci_low", "lower"),
                                  ("ci_high", "upper")):
            assert_close(ours[ours_col], ref[ref_col], equal_nan=True)
    summary = res[[v for v in res.data_vars if res[v].dims == ("group",)]].to_dataframe()
    summary = summary.loc[groups]
    ref = summary_ref.loc[groups]
    assert_close(summary["n"], ref["n"])
    assert_close(summary["n_events"], ref["events"])
    assert_close(summary["median"], ref["median"], equal_nan=True)
    assert_close(summary["median_ci_low"], ref["lcl"], equal_nan=True)
    assert_close(summary["median_ci_high"], ref["ucl"], equal_nan=True)
    if "chisq" in ref:
        assert_close(summary["n_events"], ref["observed"])
        assert_close(summary["expected"], ref["expected"])
        assert_close(summary["statistic"], ref["chisq"])
        assert_close(summary["df"], ref["df"])
        assert_close(summary["p_value"], ref["p"])
    else:
        assert summary["p_value"].isna().all()
    return res


def test_kaplan_meier_matches_r_all_cohort(all_cohort):
    check_km(kaplan_meier(all_cohort, time="time_days", event="relapse01"), "all_km", ["all"])
    check_km(kaplan_meier(all_cohort, time="time_days", event="relapse01", group="mol.biol"),
             "all_km_mol_biol", ["ALL1/AF4", "BCR/ABL", "E2A/PBX1", "NEG", "p15/p16"])


def test_kaplan_meier_by_gene_split_matches_r_and_builds_lazily(all_cohort, no_compute):
    with no_compute():
        km = kaplan_meier(all_cohort, time="time_days", event="relapse", event_value="TRUE",
                          group="40452_at")
    assert all(isinstance(v.data, da.Array) for v in km.data_vars.values())
    assert km["survival"].dims == ("group", "step") and km["p_value"].dims == ("group",)
    assert all(v.attrs["description"] for v in km.data_vars.values())
    res = check_km(km, "all_km_40452_at", ["low", "high"])
    # the median split of the same gene through cox: its log-rank p is survdiff's
    one = all_cohort.sel(gene=["40452_at"])
    p = cox(one, time="time_days", event="relapse01", split="median")["p_logrank"].values[0]
    assert_close(p, res["p_value"].values[0])
    assert_close(res["threshold"].values[0],
                 cox(one, time="time_days", event="relapse01",
                     split="median")["threshold"].values[0])


def test_kaplan_meier_matches_r_synthetic(synthetic):
    check_km(kaplan_meier(synthetic, time="time", event="status"), "synthetic_km", ["all"])
    check_km(kaplan_meier(synthetic, time="time", event="status", group="arm"),
             "synthetic_km_arm", ["A", "B", "C"])


def test_kaplan_meier_matches_statsmodels():
    rng = np.random.default_rng(4)
    t = rng.integers(1, 30, 60).astype(float)
    e = (rng.random(60) < 0.6).astype(float)
    curve = kaplan_meier_curve(t, e)
    ref = SurvfuncRight(t, e)
    # statsmodels lists event times only; its survival at those times must be ours
    at = np.isin(curve["time"], ref.surv_times)
    assert_close(curve["survival"][at], ref.surv_prob)
    assert_close(curve["std_err"][at], ref.surv_prob_se)
    codes = rng.integers(0, 3, 60)
    test = logrank_test(t, e, codes, 3)
    chi, p = survdiff(t, e, codes)
    assert_close(test["statistic"], chi)
    assert_close(test["p_value"], p)


def test_median_survival_midpoint_and_unreached():
    # Expected values from R 4.2.2, survival 3.5.3:
    #   summary(survfit(Surv(c(1,2,3,5), c(1,1,0,1)) ~ 1))$table  -> median 3.5, 0.95LCL 1, UCL NA
    #   summary(survfit(Surv(1:10, c(1,rep(0,9))) ~ 1))$table     -> median NA
    #   f <- survfit(Surv(c(1,2), c(0,1)) ~ 1); f$surv, f$std.err * f$surv, f$lower
    #                                                             -> 1 0 1 / 0 NaN NA
    curve = kaplan_meier_curve(np.array([1.0, 2.0, 3.0, 5.0]), np.array([1.0, 1.0, 0.0, 1.0]))
    assert curve["survival"][1] == 0.5  # exactly 0.5 from t = 2 to 5: the midpoint rule
    median, low, high = median_survival(curve)
    assert (median, low) == (3.5, 1.0) and np.isnan(high)
    flat = kaplan_meier_curve(np.arange(1.0, 11.0), np.r_[1.0, np.zeros(9)])
    assert np.isnan(median_survival(flat)).all()
    last = kaplan_meier_curve(np.array([1.0, 2.0]), np.array([0.0, 1.0]))
    assert_close(last["survival"], [1.0, 0.0])
    assert last["std_err"][0] == 0 and np.isnan(last["std_err"][1])
    assert last["ci_low"][0] == 1 and np.isnan(last["ci_low"][1])


def test_kaplan_meier_input_errors(synthetic):
    with pytest.raises(InputError, match="neither a sample annotation"):
        kaplan_meier(synthetic, time="time", event="status", group="nope")
    with pytest.raises(InputError, match="split needs a numeric group"):
        kaplan_meier(synthetic, time="time", event="status", group="arm", split="median")
    with pytest.raises(InputError, match="split needs a group"):
        kaplan_meier(synthetic, time="time", event="status", split="median")
    age = kaplan_meier(synthetic, time="time", event="status", group="age",
                       split="median").compute()
    assert list(age["group"].values) == ["low", "high"]
    assert age["n"].sum() == np.isfinite(synthetic["age"].values).sum()
    high = synthetic["age"].values > age["threshold"].values[0]
    assert age["n"].sel(group="high") == high.sum()
    # a numeric annotation without split: its values are the groups
    by_status = kaplan_meier(synthetic.assign(level=synthetic["status"] + 1), time="time",
                             event="status", group="level").compute()
    assert list(by_status["group"].values) == ["1", "2"]
    assert by_status["n_events"].values.tolist() == [0.0, synthetic["status"].values.sum()]
    assert "threshold" not in by_status
