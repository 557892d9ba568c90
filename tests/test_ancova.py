"""ANCOVA per feature against statsmodels, feature by feature.

The oracle fits ``ols("y ~ <design>", frame)`` (patsy, statsmodels' default formula engine, so
the design is built independently of the engine's formulaic) on the feature's non-missing
values, and takes ``anova_lm(fit, typ=2|3)`` for the term table. Slopes and marginal means are
``fit.t_test(c)`` where ``c`` is built with patsy from the fit's own design info: the average of
the design rows with the factor set to a level (predictive margins), and for slopes the average
of central differences ``(X(age + 1) - X(age - 1)) / 2`` (exact for designs linear or quadratic
in the covariate, which are the designs used here).
"""

from __future__ import annotations

import dask
import numpy as np
import pandas as pd
import patsy
import pytest
import statsmodels.formula.api as smf
import xarray as xr
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.multitest import multipletests

from engine.errors import InputError
from engine.stats.ancova import ancova, ancova_kernel
from engine.store import open_cohort

RTOL = 1e-6


def _cohort(n=48, n_genes=4, seed=0, levels=("a", "b", "c"), missing=0.0):
    rng = np.random.default_rng(seed)
    group = rng.choice(levels, n)
    sex = rng.choice(["F", "M"], n)
    age = np.round(rng.normal(50, 12, n), 1)
    expr = (rng.normal(8, 1, (n_genes, n)) + rng.normal(0, 0.05, (n_genes, 1)) * age
            + rng.normal(0, 1, (n_genes, 1)) * (group == "b") * age / 40
            + rng.normal(0, 1, (n_genes, 1)) * (sex == "M"))
    expr[rng.random(expr.shape) < missing] = np.nan
    fractions = rng.dirichlet(np.ones(3), n).T
    fractions[0, rng.random(n) < 0.1] = np.nan
    return xr.Dataset(
        {"expression": (("gene", "sample"), expr.astype(np.float32)),
         "group": ("sample", group.astype(object)), "sex": ("sample", sex.astype(object)),
         "age": ("sample", age),
         **{f"cell_{k}": ("sample", fractions[k]) for k in range(3)}},
        coords={"gene": [f"G{i}" for i in range(n_genes)],
                "sample": [f"S{i:02d}" for i in range(n)]})


def _frame(ds, rename=None):
    names = [n for n, v in ds.data_vars.items() if v.dims == ("sample",)]
    frame = pd.DataFrame({n: ds[n].values for n in names})
    for n in names:
        if frame[n].dtype.kind not in "fiu":  # text: missing as the engine reads it
            frame[n] = frame[n].map(lambda v: None if v in ("", "nan", "NA") else str(v))
    return frame.rename(columns=rename or {})


def _contrast_rows(fit, used, slope_of, slope_by, means_of):
    """Per slope / mean label, the row ``c`` of ``t_test(c)``, built by patsy from ``used``."""
    info = fit.model.data.model_spec

    def rows(f):
        return np.asarray(patsy.dmatrix(info, f, return_type="dataframe"))

    def slope(f):
        up = f.assign(**{slope_of: f[slope_of] + 1})
        down = f.assign(**{slope_of: f[slope_of] - 1})
        return (rows(up) - rows(down)).mean(axis=0) / 2

    slopes, means = {}, {}
    if slope_of is not None:
        slopes["all"] = slope(used)
        for level in sorted(used[slope_by].unique()) if slope_by is not None else []:
            slopes[level] = slope(used.assign(**{slope_by: level}))
    for level in sorted(used[means_of].unique()) if means_of is not None else []:
        counterfactual = used.assign(**{means_of: level})
        means[level] = rows(counterfactual).mean(axis=0)
        # the margin is the average of statsmodels' own predictions for those rows
        _close(means[level] @ fit.params.values,
               fit.get_prediction(counterfactual).predicted_mean.mean(), 1e-12)
    return slopes, means


def _reference(frame, y, formula, typ, slope_of=None, slope_by=None, means_of=None,
               confidence=0.95, cache=None):
    """statsmodels on one feature: anova table, and slope / mean tests (estimate, se, t, p, CI).

    ``cache`` keeps the contrast rows per set of samples used (they do not depend on y).
    """
    data = frame.assign(y=y)
    fit = smf.ols("y " + formula, data).fit()
    table = anova_lm(fit, typ=typ)
    labels = tuple(fit.model.data.row_labels)
    cache = {} if cache is None else cache
    if labels not in cache:
        cache[labels] = _contrast_rows(fit, data.loc[list(labels)], slope_of, slope_by, means_of)

    def test(c):
        t = fit.t_test(c)
        ci = t.conf_int(alpha=1 - confidence)[0]
        return dict(estimate=t.effect[0], se=t.sd[0, 0], t=t.tvalue[0, 0], p=t.pvalue,
                    df=t.df_denom, ci_low=ci[0], ci_high=ci[1])

    slopes, means = cache[labels]
    return (table, {k: test(c) for k, c in slopes.items()},
            {k: test(c) for k, c in means.items()})


def _close(actual, expected, rtol=RTOL, what=""):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0, err_msg=what)


def _check(res, ds, formula, typ, *, features=None, rename=None, rtol=RTOL, **margins):
    """Every feature of ``res`` against statsmodels; returns the largest relative difference."""
    frame = _frame(ds, rename)
    dim = "feature" if features else "gene"
    worst, cache = 0.0, {}
    sm_formula = formula
    for old, new in (rename or {}).items():
        sm_formula = sm_formula.replace(old, new)
        margins = {k: new if v == old else v for k, v in margins.items()}
    for i, label in enumerate(res[dim].values):
        y = ds[label].values if features else ds["expression"].values[i].astype(np.float64)
        table, slopes, means = _reference(frame, y, sm_formula, typ, cache=cache, **margins)
        for old, new in (rename or {}).items():
            table.index = [t.replace(new, old) for t in table.index]
        assert sorted(res.term.values) == sorted(t for t in table.index
                                                 if t not in ("Intercept", "Residual"))
        for term in res.term.values:
            got = res.sel(term=term).isel({dim: i})
            for ours, theirs in (("statistic", "F"), ("p_value", "PR(>F)"), ("ss", "sum_sq"),
                                 ("df_num", "df")):
                expected = table.loc[term, theirs]
                _close(float(got[ours]), expected, rtol, f"{label} {term} {ours}")
                worst = max(worst, abs(float(got[ours]) / expected - 1))
            _close(float(got["df_den"]), table.loc["Residual", "df"], 0, f"{label} df_den")
        for at, ref in slopes.items():
            got = res.sel(slope_at=at).isel({dim: i})
            for ours, theirs in (("slope", "estimate"), ("slope_se", "se"), ("slope_df", "df"),
                                 ("slope_statistic", "t"), ("slope_p_value", "p"),
                                 ("slope_ci_low", "ci_low"), ("slope_ci_high", "ci_high")):
                _close(float(got[ours]), ref[theirs], rtol, f"{label} slope {at} {ours}")
                worst = max(worst, abs(float(got[ours]) / ref[theirs] - 1))
        for at, ref in means.items():
            got = res.sel(mean_at=at).isel({dim: i})
            for ours, theirs in (("mean", "estimate"), ("mean_se", "se"),
                                 ("mean_ci_low", "ci_low"), ("mean_ci_high", "ci_high")):
                _close(float(got[ours]), ref[theirs], rtol, f"{label} mean {at} {ours}")
                worst = max(worst, abs(float(got[ours]) / ref[theirs] - 1))
    return worst


# ---------------------------------------------------------------------------------------------
# Against statsmodels

DESIGNS = [
    ("~ group * age + sex", dict(slope_of="age", slope_by="group", means_of="group")),
    ("~ group * sex", dict(means_of="sex")),
    ("~ group * sex + age", dict(slope_of="age", slope_by="sex", means_of="group")),
    ("~ group * age + sex * age", dict(slope_of="age", slope_by="group", means_of="sex")),
    ("~ group * sex * age", dict(slope_of="age", slope_by="sex", means_of="group")),
    ("~ age + I(age ** 2) + group", dict(slope_of="age", means_of="group")),
    ("~ age + group", dict(slope_of="age")),
]


@pytest.mark.parametrize("typ", [2, 3])
@pytest.mark.parametrize("formula, margins", DESIGNS, ids=[d[0] for d in DESIGNS])
def test_matches_statsmodels(formula, margins, typ):
    ds = _cohort()
    res = ancova(ds, design=formula, anova_type=typ, **margins).compute()
    _check(res, ds, formula, typ, **margins)
    assert res.attrs["test"] == "ancova" and res.attrs["anova_type"] == typ
    assert res.attrs["design"] == formula
    for key in ("slope_of", "slope_by", "means_of"):
        assert res.attrs.get(key) == margins.get(key)


def test_p_adj_per_term_over_features():
    ds = _cohort(n_genes=20, seed=3)
    res = ancova(ds, design="~ group * age", adjust="BH").compute()
    for term in res.term.values:
        p = res.p_value.sel(term=term).values
        _close(res.p_adj.sel(term=term).values, multipletests(p, method="fdr_bh")[1])


def test_missing_values_fitted_per_pattern():
    ds = _cohort(n=40, n_genes=8, seed=5, missing=0.04)
    assert 4 <= np.isnan(ds.expression.values).any(axis=1).sum() < 8
    margins = dict(slope_of="age", slope_by="group", means_of="sex")
    res = ancova(ds, design="~ group * age + sex", **margins).compute()
    _check(res, ds, "~ group * age + sex", 2, **margins)
    res = ancova(ds, design="~ group * age + sex", anova_type=3).compute()
    _check(res, ds, "~ group * age + sex", 3)


def test_rank_lost_on_a_pattern_gives_nan():
    ds = _cohort(n=30, n_genes=3, seed=2)
    expr = ds.expression.values.copy()
    expr[0, ds.group.values == "c"] = np.nan  # no sample of level c left: rank lost
    expr[1, 4:] = np.nan  # 4 values for 6 columns: no residual df
    ds["expression"] = (("gene", "sample"), expr)
    res = ancova(ds, design="~ group * age", slope_of="age", means_of="group").compute()
    for name, var in res.data_vars.items():
        assert np.isnan(var.isel(gene=[0, 1]).values).all(), name
        assert np.isfinite(var.isel(gene=2).values).all(), name


def test_features_numeric_annotations():
    ds = _cohort(seed=7)
    features = ["cell_0", "cell_1", "cell_2"]
    margins = dict(slope_of="age", slope_by="sex", means_of="group")
    res = ancova(ds, design="~ group + sex * age", features=features, **margins).compute()
    assert res.statistic.dims == ("term", "feature")
    assert list(res.feature.values) == features
    _check(res, ds, "~ group + sex * age", 2, features=features, **margins)


UNDEFINED = ["ss", "statistic", "p_value", "p_adj", "slope_se", "slope_statistic",
             "slope_p_value", "slope_ci_low", "mean_se", "mean_ci_high"]


def test_zero_variance_and_empty_features():
    ds = _cohort(n=60, n_genes=6, seed=9)
    expr = ds.expression.values.copy()
    constants = [1e-6, 7.25, 13.1, 1e4]
    expr[:4] = np.array(constants, dtype=np.float32)[:, None]  # constant: exactly fitted
    expr[4] = np.nan  # no value at all
    ds["expression"] = (("gene", "sample"), expr)
    res = ancova(ds, design="~ group * age + sex", slope_of="age", slope_by="group",
                 means_of="group").compute()
    for name in UNDEFINED:
        assert np.isnan(res[name].isel(gene=slice(0, 5)).values).all(), name
    # the estimates of a constant feature are still defined: no slope, the constant as mean
    _close(res["mean"].isel(gene=slice(0, 4)).values,
           np.broadcast_to(np.float32(constants)[:, None], (4, 3)).T, 1e-9)
    assert np.all(np.abs(res["slope"].isel(gene=slice(0, 4)).values) < 1e-9)
    assert np.isnan(res["mean"].isel(gene=4).values).all()
    assert np.isfinite(res["p_value"].isel(gene=5).values).all()
    # BH counts only the features with a p-value
    assert (res.p_adj.isel(gene=5) == res.p_value.isel(gene=5)).all()


def test_constant_features_on_all_design(all_store):
    """QR leaves constant features residuals of ~1e-15 relative: still an exact fit (NaN)."""
    ds = open_cohort(all_store)
    keep = np.isin(ds["mol.biol"].values.astype(str), ["BCR/ABL", "NEG"])
    ds = ds.isel(sample=np.flatnonzero(keep), gene=slice(0, 5)).load()
    constants = np.float32([1e-6, 0.3, 7.25, 13.1, 1e4])
    ds["expression"] = (("gene", "sample"),
                        np.broadcast_to(constants[:, None], ds.expression.shape).copy())
    res = ancova(ds, design="~ mol.biol * age + sex", slope_of="age", means_of="sex").compute()
    for name in UNDEFINED:
        assert np.isnan(res[name].values).all(), name
    _close(res["mean"].values, np.broadcast_to(constants, (2, 5)), 1e-9)


def test_exact_fit_of_a_feature():
    ds = _cohort(n=30, seed=19)
    ds["linear"] = ("sample", 2.0 + 0.1 * ds.age.values)  # reproduced by the design
    ds["noisy"] = ("sample", ds["linear"].values + np.random.default_rng(0).normal(0, 1e-6, 30))
    res = ancova(ds, design="~ group + age", features=["linear", "noisy"], slope_of="age",
                 means_of="group").compute()
    for name in UNDEFINED:
        assert np.isnan(res[name].sel(feature="linear").values).all(), name
    _close(res["slope"].sel(feature="linear").values, [0.1], 1e-9)
    _check(res.sel(feature=["noisy"]), ds, "~ group + age", 2, features=["noisy"],
           slope_of="age", means_of="group")


def test_level_with_one_sample():
    ds = _cohort(n=30, n_genes=4, seed=11)
    group = ds.group.values.copy()
    group[group == "c"] = "a"
    group[0] = "c"  # level c: one sample
    ds["group"] = ("sample", group)
    margins = dict(slope_of="age", means_of="group")
    res = ancova(ds, design="~ group + age + sex", **margins).compute()
    _check(res, ds, "~ group + age + sex", 2, **margins)
    # a feature missing that one sample cannot estimate the level's coefficient
    expr = ds.expression.values.copy()
    expr[1, 0] = np.nan
    ds["expression"] = (("gene", "sample"), expr)
    res = ancova(ds, design="~ group + age + sex", **margins).compute()
    assert np.isnan(res.statistic.isel(gene=1).values).all()
    assert np.isfinite(res.statistic.isel(gene=[0, 2, 3]).values).all()
    # with an interaction the one-sample level makes the design itself collinear
    with pytest.raises(InputError, match="collinear"):
        ancova(ds, design="~ group * age")


def test_reference_level():
    ds = _cohort(seed=13)
    frame = _frame(ds)
    res = ancova(ds, design="~ group * age", reference={"group": "b"}, anova_type=3,
                 means_of="group").compute()
    assert list(res.mean_at.values) == ["b", "a", "c"]
    plain = ancova(ds, design="~ group * age", means_of="group").compute()
    # predictive margins do not depend on the coding
    _close(res["mean"].sel(mean_at=["a", "b", "c"]).values,
           plain["mean"].sel(mean_at=["a", "b", "c"]).values, 1e-10)
    for i in range(ds.sizes["gene"]):
        data = frame.assign(y=ds.expression.values[i].astype(np.float64))
        table = anova_lm(smf.ols("y ~ C(group, Treatment('b')) * age", data).fit(), typ=3)
        table.index = [t.replace("C(group, Treatment('b'))", "group") for t in table.index]
        for term in res.term.values:
            _close(float(res.statistic.sel(term=term)[i]), table.loc[term, "F"])


def test_all_cohort(all_store):
    """ALL: mol.biol (four groups with several samples each) x age + sex, every 2500th probe."""
    ds = open_cohort(all_store)
    keep = np.isin(ds["mol.biol"].values.astype(str), ["BCR/ABL", "NEG", "ALL1/AF4", "E2A/PBX1"])
    ds = ds.isel(sample=np.flatnonzero(keep), gene=slice(0, None, 2500))
    margins = dict(slope_of="age", slope_by="mol.biol", means_of="sex")
    rename = {"mol.biol": "molbiol"}
    for typ in (2, 3):
        res = ancova(ds, design="~ mol.biol * age + sex", anova_type=typ, **margins).compute()
        assert list(res.term.values) == ["mol.biol", "age", "sex", "mol.biol:age"]
        assert list(res.slope_at.values) == ["all", "ALL1/AF4", "BCR/ABL", "E2A/PBX1", "NEG"]
        _check(res, ds, "~ mol.biol * age + sex", typ, rename=rename, **margins)


def test_lazy_build_and_chunking(all_store, no_compute):
    ds = open_cohort(all_store)
    keep = np.isin(ds["mol.biol"].values.astype(str), ["BCR/ABL", "NEG"])
    ds = ds.isel(sample=np.flatnonzero(keep), gene=slice(0, 600))
    kwargs = dict(design="~ mol.biol * age + sex", slope_of="age", slope_by="mol.biol",
                  means_of="sex")
    with no_compute():
        res = ancova(ds, **kwargs)
        for name, var in res.data_vars.items():
            assert var.attrs["description"], name
            assert var.dims[-1] == "gene"
    assert res.p_value.dims == ("term", "gene")
    assert res.slope.dims == ("slope_at", "gene") and res["mean"].dims == ("mean_at", "gene")
    one = res.compute()
    other = ancova(ds.chunk({"gene": 70}), **kwargs).compute()
    for name in one.data_vars:
        np.testing.assert_allclose(other[name].values, one[name].values, rtol=1e-12, atol=0)


def test_slope_through_a_smooth_transform():
    """d/d age of ``np.log(age)`` is 1 / age: the slope row is analytic, tested by t_test."""
    ds = _cohort(seed=23)
    res = ancova(ds, design="~ group * np.log(age)", slope_of="age", slope_by="group").compute()
    frame = _frame(ds)
    for i in range(ds.sizes["gene"]):
        fit = smf.ols("y ~ group * np.log(age)", frame.assign(y=ds.expression.values[i].astype(
            np.float64))).fit()
        names = fit.model.exog_names
        for at in ["all", "a", "b", "c"]:
            # per sample (b_log + b_b [g_i = b] + b_c [g_i = c]) / age_i, g_i = at unless "all"
            group = frame.group if at == "all" else pd.Series([at] * len(frame))
            weight = {"np.log(age)": np.mean(1 / frame.age),
                      "group[T.b]:np.log(age)": np.mean((group == "b") / frame.age),
                      "group[T.c]:np.log(age)": np.mean((group == "c") / frame.age)}
            c = np.array([weight.get(n, 0.0) for n in names])
            t = fit.t_test(c)
            got = res.sel(slope_at=at).isel(gene=i)
            _close(float(got["slope"]), t.effect[0], what=at)
            _close(float(got["slope_se"]), t.sd[0, 0], what=at)


def test_two_analyses_in_one_graph_keep_their_own_results():
    ds = _cohort(seed=29).chunk({"gene": 2})
    one = ancova(ds, design="~ group + age")
    two = ancova(ds, design="~ group + age", anova_type=3, means_of="group")
    three = ancova(ds, design="~ group * age")
    together = dask.compute(one.statistic.data, two.statistic.data, three.statistic.data)
    for res, values in zip((one, two, three), together):
        np.testing.assert_array_equal(values, res.statistic.values)
    assert not np.allclose(together[0], together[2][:2])


def test_kernel_without_missing_values_equals_per_pattern_path():
    ds = _cohort(n=30, n_genes=5, seed=17)
    y = ds.expression.values.astype(np.float64)
    x = np.column_stack([np.ones(30), ds.age.values, ds.group.values == "b"]).astype(float)
    tests = [(np.array([1]), np.array([], dtype=np.int64)),
             (np.array([2]), np.array([], dtype=np.int64))]
    rows = x[None]
    whole = ancova_kernel(y, x, tests=tests, rows=rows)
    padded = np.column_stack([y, np.full(5, np.nan)])  # one extra sample every feature lacks
    x_padded = np.vstack([x, x[:1]])
    rows_padded = x_padded[None]
    _close(ancova_kernel(padded, x_padded, tests=tests, rows=rows_padded), whole, 1e-12)


# ---------------------------------------------------------------------------------------------
# Input errors

@pytest.mark.parametrize("kwargs, message", [
    (dict(anova_type=1), "anova_type"),
    (dict(slope_by="group"), "slope_by needs slope_of"),
    (dict(slope_of="group"), "not numeric"),
    (dict(slope_of="age", slope_by="age"), "slope_by must be a factor"),
    (dict(means_of="age"), "continuous"),
    (dict(means_of="sex"), "not a variable of the design"),
    (dict(slope_of="cell_0"), "not a variable of the design"),
    (dict(design="~ C(stage) + group", slope_of="stage"), "enters the design as a factor"),
    (dict(design="~ 1"), "no term to test"),
    (dict(design="~ group + nonsense"), "cannot be evaluated"),
    (dict(confidence=1.5), "confidence"),
    (dict(adjust="holm-ish"), "adjust"),
    (dict(features=["group"]), "not numeric"),
])
def test_input_errors(kwargs, message):
    ds = _cohort(n=20, n_genes=2)
    ds["stage"] = ("sample", np.arange(20) % 3 + 1.0)
    kwargs = {"design": "~ group * age", **kwargs}
    with pytest.raises(InputError, match=message):
        ancova(ds, **kwargs)
