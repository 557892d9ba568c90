"""nSolver-style normalisation and lane QC: a small example worked out by hand, a plain
per-sample reference implementation (loops and the math/statistics modules), QC flags of the
hand-written RCC files in tests/data/rcc, edge cases and laziness."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from engine.errors import InputError
from engine.preprocess.nanostring import (
    apply_nanostring,
    background_level,
    column_summary,
    linearity_r2,
    nanostring_factors,
    nanostring_qc,
    normalize_nanostring,
)
from engine.store.rcc import read_rcc_folder

RCC = Path(__file__).parent / "data" / "rcc"

# The hand-worked example: 3 samples.
NAMES = ["POS_A(128)", "POS_B(32)", "POS_C(8)", "POS_F(0.125)", "NEG_A", "NEG_B", "NEG_C",
         "HK1", "HK2", "G1", "G2"]
CLASSES = ["Positive"] * 4 + ["Negative"] * 3 + ["Housekeeping"] * 2 + ["Endogenous"] * 2
RAW = np.array([
    [400, 800, 900],     # POS_A
    [100, 200, 300],     # POS_B
    [25, 50, 100],       # POS_C
    [1, 2, 4],           # POS_F
    [5, 10, 15],         # NEG_A
    [10, 20, 30],        # NEG_B
    [15, 30, 45],        # NEG_C
    [70, 240, 135],      # HK1
    [220, 840, 360],     # HK2
    [30, 10, 90],        # G1
    [1000, 500, 3000],   # G2
], dtype=np.int64)


def as_array(matrix, names=NAMES, chunk=4, lazy=True) -> xr.DataArray:
    matrix = np.asarray(matrix)
    data = da.from_array(matrix, chunks=(chunk, -1)) if lazy else matrix
    return xr.DataArray(data, dims=("gene", "sample"),
                        coords={"gene": np.array(names, dtype=object),
                                "sample": [f"s{j + 1}" for j in range(matrix.shape[1])]})


def row(ds, name):
    return ds["normalized"].sel(gene=name).values.astype(np.float64)


def test_hand_worked_example_without_pos_f():
    ds = normalize_nanostring(as_array(RAW), CLASSES, exclude_pos_f=True).compute()
    # Positive geometric means: (400*100*25)^(1/3) = 100, (800*200*50)^(1/3) = 200,
    # (900*300*100)^(1/3) = 300; their mean is 200, so the factors are 200/100, 200/200, 200/300.
    np.testing.assert_allclose(ds["positive_factor"], [2.0, 1.0, 2 / 3], rtol=1e-12)
    # Scaled negatives are [10, 20, 30] in every sample: mean 20, SD 10, background 20 + 2*10.
    np.testing.assert_allclose(ds["background"], [40.0, 40.0, 40.0], rtol=1e-12)
    # Housekeeping after scaling and background: s1 [70*2-40, 220*2-40] = [100, 400], geometric
    # mean 200; s2 [200, 800] -> 400; s3 [135*2/3-40, 360*2/3-40] = [50, 200] -> 100.
    hk_mean = (200 + 400 + 100) / 3
    np.testing.assert_allclose(ds["housekeeping_factor"],
                               [hk_mean / 200, hk_mean / 400, hk_mean / 100], rtol=1e-12)
    hf = [hk_mean / 200, hk_mean / 400, hk_mean / 100]
    # G1: s1 30*2-40 = 20; s2 10-40 < 0 -> 0; s3 90*2/3-40 = 20.  G2: 1960, 460, 1960.
    np.testing.assert_allclose(row(ds, "G1"), [20 * hf[0], 0.0, 20 * hf[2]], rtol=1e-6)
    np.testing.assert_allclose(row(ds, "G2"), [1960 * hf[0], 460 * hf[1], 1960 * hf[2]],
                               rtol=1e-6)
    # Controls stay in the output: HK1 is [100, 200, 50] times the housekeeping factors, the
    # negatives are 0 after subtracting their own mean + 2 SD.
    np.testing.assert_allclose(row(ds, "HK1"), [100 * hf[0], 200 * hf[1], 50 * hf[2]], rtol=1e-6)
    assert row(ds, "NEG_C").tolist() == [0.0, 0.0, 0.0]
    assert ds["normalized"].dtype == np.float32
    assert not ds["positive_factor_flag"].values.any()
    assert not ds["housekeeping_factor_flag"].values.any()
    assert ds.attrs["steps"] == ["positive", "background", "housekeeping"]


def test_positive_geomean_and_sum_with_pos_f():
    ds = normalize_nanostring(as_array(RAW), CLASSES, background=None, housekeeping=None).compute()
    geo = [(400 * 100 * 25 * 1) ** 0.25, (800 * 200 * 50 * 2) ** 0.25,
           (900 * 300 * 100 * 4) ** 0.25]
    ref = sum(geo) / 3
    np.testing.assert_allclose(ds["positive_factor"], [ref / g for g in geo], rtol=1e-12)
    np.testing.assert_allclose(row(ds, "G2"), [1000 * ref / geo[0], 500 * ref / geo[1],
                                               3000 * ref / geo[2]], rtol=1e-6)
    assert ds["background"].values.tolist() == [0.0, 0.0, 0.0]
    assert ds["housekeeping_factor"].values.tolist() == [1.0, 1.0, 1.0]

    ds = normalize_nanostring(as_array(RAW), CLASSES, positive="sum", background=None,
                              housekeeping=None).compute()
    sums = [400 + 100 + 25 + 1, 800 + 200 + 50 + 2, 900 + 300 + 100 + 4]
    ref = sum(sums) / 3
    np.testing.assert_allclose(ds["positive_factor"], [ref / s for s in sums], rtol=1e-12)
    np.testing.assert_allclose(row(ds, "G1"), [30 * ref / sums[0], 10 * ref / sums[1],
                                               90 * ref / sums[2]], rtol=1e-6)


@pytest.mark.parametrize("method,expected", [("max", 30.0), ("mean", 20.0)])
def test_background_max_and_mean(method, expected):
    ds = normalize_nanostring(as_array(RAW), CLASSES, exclude_pos_f=True, background=method,
                              housekeeping=None).compute()
    # Scaled negatives are [10, 20, 30] in every sample.
    np.testing.assert_allclose(ds["background"], [expected] * 3, rtol=1e-12)
    np.testing.assert_allclose(row(ds, "G2"), [2000 - expected, 500 - expected,
                                               2000 - expected], rtol=1e-6)
    np.testing.assert_allclose(row(ds, "G1"), [max(60 - expected, 0), max(10 - expected, 0),
                                               max(60 - expected, 0)], rtol=1e-6)


def test_background_sd_and_floor():
    ds = normalize_nanostring(as_array(RAW), CLASSES, exclude_pos_f=True, background_sd=1.0,
                              background_floor=5.0, housekeeping=None).compute()
    np.testing.assert_allclose(ds["background"], [30.0] * 3, rtol=1e-12)  # 20 + 1 * 10
    # G1: s1 60 - 30 = 30; s2 10 - 30 < 5 -> 5; the negatives floor at 5 too.
    np.testing.assert_allclose(row(ds, "G1"), [30.0, 5.0, 30.0], rtol=1e-6)
    np.testing.assert_allclose(row(ds, "NEG_A"), [5.0, 5.0, 5.0], rtol=1e-6)


def test_background_first():
    ds = normalize_nanostring(as_array(RAW), CLASSES, exclude_pos_f=True, background_first=True,
                              housekeeping=None).compute()
    # Raw negatives: s1 [5, 10, 15] -> 10 + 2*5; s2 [10, 20, 30] -> 20 + 2*10; s3 -> 30 + 2*15.
    np.testing.assert_allclose(ds["background"], [20.0, 40.0, 60.0], rtol=1e-12)
    # Then positives after subtraction: s1 [380, 80, 5], s2 [760, 160, 10], s3 [840, 240, 40].
    geo = [(380 * 80 * 5) ** (1 / 3), (760 * 160 * 10) ** (1 / 3), (840 * 240 * 40) ** (1 / 3)]
    ref = sum(geo) / 3
    np.testing.assert_allclose(ds["positive_factor"], [ref / g for g in geo], rtol=1e-12)
    np.testing.assert_allclose(row(ds, "G2"), [980 * ref / geo[0], 460 * ref / geo[1],
                                               2940 * ref / geo[2]], rtol=1e-6)
    assert ds.attrs["steps"] == ["background", "positive"]


@pytest.mark.parametrize("genes", [["G2"], "G2"])
def test_housekeeping_genes_given(genes):
    ds = normalize_nanostring(as_array(RAW), CLASSES, exclude_pos_f=True,
                              housekeeping_genes=genes).compute()
    # G2 after scaling and background: [1960, 460, 1960]; mean 1460.
    np.testing.assert_allclose(ds["housekeeping_factor"], [1460 / 1960, 1460 / 460, 1460 / 1960],
                               rtol=1e-12)
    np.testing.assert_allclose(row(ds, "G2"), [1460.0, 1460.0, 1460.0], rtol=1e-6)


def test_factor_flags():
    ds = normalize_nanostring(as_array(RAW), CLASSES, exclude_pos_f=True,
                              positive_factor_range=(0.8, 1.5),
                              housekeeping_factor_range=(1.0, 2.0)).compute()
    # positive factors [2, 1, 2/3]; housekeeping factors [7/6, 7/12, 7/3].
    assert ds["positive_factor_flag"].values.tolist() == [True, False, True]
    assert ds["housekeeping_factor_flag"].values.tolist() == [False, True, True]
    ds = normalize_nanostring(as_array(RAW), CLASSES, positive=None, housekeeping=None,
                              positive_factor_range=(5, 6)).compute()
    assert not ds["positive_factor_flag"].values.any()  # a step that did not run flags nothing


def test_nothing_applied_returns_counts():
    ds = normalize_nanostring(as_array(RAW), CLASSES, positive=None, background=None,
                              housekeeping=None).compute()
    np.testing.assert_array_equal(ds["normalized"].values, RAW.astype(np.float32))
    assert ds.attrs["steps"] == []


def test_zero_housekeeping_gives_nan_not_inf():
    raw = RAW.copy()
    raw[NAMES.index("HK1"), 1] = 30  # 30 - 40 floors at 0: geometric mean 0 in sample 2
    ds = normalize_nanostring(as_array(raw), CLASSES, exclude_pos_f=True).compute()
    # The reference leaves sample 2 out: mean of 200 and 100.
    np.testing.assert_allclose(ds["housekeeping_factor"].values[[0, 2]], [150 / 200, 150 / 100],
                               rtol=1e-12)
    assert np.isnan(ds["housekeeping_factor"].values[1])
    assert np.isnan(ds["normalized"].values[:, 1]).all()
    assert ds["housekeeping_factor_flag"].values.tolist() == [False, True, False]


def test_missing_counts_are_left_out_of_summaries():
    raw = RAW.astype(np.float64)
    raw[NAMES.index("NEG_A"), 0] = np.nan
    ds = normalize_nanostring(as_array(raw), CLASSES, exclude_pos_f=True,
                              housekeeping=None).compute()
    # s1 scaled negatives [NaN, 20, 30]: mean 25, SD sqrt(((20-25)^2 + (30-25)^2) / 1).
    np.testing.assert_allclose(ds["background"].values[0], 25 + 2 * math.sqrt(50), rtol=1e-12)
    assert np.isnan(ds["normalized"].values[NAMES.index("NEG_A"), 0])
    np.testing.assert_allclose(ds["background"].values[1:], [40.0, 40.0], rtol=1e-12)


# ------------------------------------------------------ a plain reference implementation

def reference(matrix, classes, names, *, positive="geomean", background="mean_sd", sd=2.0,
              floor=0.0, first=False, housekeeping="geomean", hk_genes=None, exclude_f=False):
    """The documented steps one sample at a time with loops (no NaN handling)."""
    x = [[float(v) for v in r] for r in np.asarray(matrix)]
    n_genes, n = len(x), len(x[0])
    idx = {c: [i for i in range(n_genes) if classes[i] == c]
           for c in ("Positive", "Negative", "Housekeeping")}
    if exclude_f:
        idx["Positive"] = [i for i in idx["Positive"] if not names[i].startswith("POS_F")]
    if hk_genes is not None:
        idx["Housekeeping"] = [names.index(g) for g in hk_genes]

    def summarise(rows, how):
        values = [[x[i][j] for i in rows] for j in range(n)]
        if how == "sum":
            return [sum(v) for v in values]
        return [math.exp(sum(math.log(a) for a in v) / len(v)) if min(v) > 0 else 0.0
                for v in values]

    def scale(rows, how):
        s = summarise(rows, how)
        ok = [v for v in s if v > 0]
        ref = sum(ok) / len(ok)
        f = [ref / v if v > 0 else math.nan for v in s]
        for i in range(n_genes):
            for j in range(n):
                x[i][j] = x[i][j] * f[j]
        return f

    def subtract():
        levels = []
        for j in range(n):
            v = [x[i][j] for i in idx["Negative"]]
            levels.append({"mean_sd": statistics.mean(v) + sd * statistics.stdev(v),
                           "max": max(v), "mean": statistics.mean(v)}[background])
        for i in range(n_genes):
            for j in range(n):
                x[i][j] = max(x[i][j] - levels[j], floor)
        return levels

    out = {}
    order = ["background", "positive"] if first else ["positive", "background"]
    for step in order:
        if step == "positive" and positive:
            out["positive_factor"] = scale(idx["Positive"], positive)
        if step == "background" and background:
            out["background"] = subtract()
    if housekeeping:
        out["housekeeping_factor"] = scale(idx["Housekeeping"], "geomean")
    out["normalized"] = np.array(x)
    return out


def rcc_cohort():
    cohort = read_rcc_folder(RCC)
    counts = xr.DataArray(da.from_array(cohort.counts.to_numpy(), chunks=(5, -1)),
                          dims=("gene", "sample"),
                          coords={"gene": cohort.counts.index.to_numpy(object),
                                  "sample": cohort.counts.columns.to_numpy(object)})
    return cohort, counts


OPTIONS = [
    {},
    {"positive": "sum"},
    {"exclude_pos_f": True, "background": "max"},
    {"background": "mean", "background_floor": 1.0},
    {"background_first": True, "exclude_pos_f": True},
    {"background_sd": 3.0, "housekeeping_genes": ["GAPDH", "ACTB"]},
    {"positive": None, "background": None},
]


@pytest.mark.parametrize("options", OPTIONS)
def test_against_reference_on_rcc_files(options):
    cohort, counts = rcc_cohort()
    classes = cohort.genes["code_class"].tolist()
    names = cohort.genes.index.tolist()
    ds = normalize_nanostring(counts, classes, **options).compute()
    expected = reference(
        cohort.counts.to_numpy(), classes, names,
        positive=options.get("positive", "geomean"),
        background=options.get("background", "mean_sd"), sd=options.get("background_sd", 2.0),
        floor=options.get("background_floor", 0.0), first=options.get("background_first", False),
        hk_genes=options.get("housekeeping_genes"), exclude_f=options.get("exclude_pos_f", False))
    # float32 output: relative rounding 6e-8; zeros exactly.
    np.testing.assert_allclose(ds["normalized"].values, expected["normalized"], rtol=1e-6,
                               atol=0)
    for name in ("positive_factor", "background", "housekeeping_factor"):
        if name in expected:
            np.testing.assert_allclose(ds[name].values, expected[name], rtol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_against_reference_random_panels(seed):
    rng = np.random.default_rng(seed)
    n = 7
    conc = np.array([128, 32, 8, 2, 0.5, 0.125])
    lane = rng.uniform(0.5, 2.0, n)
    raw = np.vstack([
        rng.poisson(conc[:, None] * 90 * lane),                 # positives
        rng.poisson(12 * np.ones((8, n))),                      # negatives
        rng.poisson(rng.uniform(300, 3000, (5, 1)) * lane),     # housekeeping
        rng.poisson(rng.uniform(0, 2000, (30, 1)) * lane),      # endogenous
    ]).astype(np.int64)
    names = ([f"POS_{c}({v:g})" for c, v in zip("ABCDEF", conc)] + [f"NEG_{i}" for i in range(8)]
             + [f"HK{i}" for i in range(5)] + [f"G{i}" for i in range(30)])
    classes = ["Positive"] * 6 + ["Negative"] * 8 + ["Housekeeping"] * 5 + ["Endogenous"] * 30
    ds = normalize_nanostring(as_array(raw, names, chunk=7), classes).compute()
    expected = reference(raw, classes, names)
    np.testing.assert_allclose(ds["normalized"].values, expected["normalized"], rtol=1e-6)
    np.testing.assert_allclose(ds["housekeeping_factor"].values, expected["housekeeping_factor"],
                               rtol=1e-12)


def test_chunking_and_backing_do_not_change_results():
    _, counts = rcc_cohort()
    classes = read_rcc_folder(RCC).genes["code_class"].to_numpy()
    results = []
    for chunks in (1, 4, 17):
        data = counts.copy(data=da.from_array(counts.values, chunks=(chunks, -1)))
        results.append(normalize_nanostring(data, classes).compute())
    results.append(normalize_nanostring(counts.copy(data=counts.values), classes).compute())
    for other in results[1:]:
        for name in results[0].data_vars:
            np.testing.assert_array_equal(results[0][name].values, other[name].values)


def test_building_is_lazy(no_compute):
    cohort, counts = rcc_cohort()
    classes = cohort.genes["code_class"].to_numpy()
    with no_compute():
        ds = normalize_nanostring(counts, classes, exclude_pos_f=True)
        qc = nanostring_qc(counts, classes, cohort.samples)
    for variable in [*ds.data_vars.values(), *qc.data_vars.values()]:
        assert isinstance(variable.data, da.Array)
    assert ds["normalized"].chunks == counts.chunks  # gene chunks x all samples, as given
    assert ds["positive_factor"].dims == ("sample",)


@pytest.mark.parametrize("options", [{}, {"background_first": True, "background_floor": 2.0},
                                     {"positive": None, "housekeeping": None}])
def test_computed_factors_applied_later_give_the_same_matrix(no_compute, options):
    """The flat-memory route: compute the per-sample factors, then apply them lazily."""
    _, counts = rcc_cohort()
    classes = read_rcc_folder(RCC).genes["code_class"].to_numpy()
    factors = nanostring_factors(counts, classes, **options).compute()
    assert all(isinstance(v.data, np.ndarray) for v in factors.data_vars.values())
    with no_compute():
        applied = apply_nanostring(counts, factors)
    assert isinstance(applied.data, da.Array) and applied.chunks == counts.chunks
    whole = normalize_nanostring(counts, classes, **options).compute()
    np.testing.assert_array_equal(applied.values, whole["normalized"].values)
    xr.testing.assert_identical(factors, whole.drop_vars(["normalized", "gene"]))


def test_normalize_input_errors():
    counts = as_array(RAW)
    with pytest.raises(InputError, match="positive normalisation 'median' is not one of "
                                         "geomean, sum"):
        normalize_nanostring(counts, CLASSES, positive="median")
    with pytest.raises(InputError, match="background normalisation 'min'"):
        normalize_nanostring(counts, CLASSES, background="min")
    with pytest.raises(InputError, match="code_class has 3 values for 11 genes"):
        normalize_nanostring(counts, CLASSES[:3])
    no_neg = ["Endogenous" if c == "Negative" else c for c in CLASSES]
    with pytest.raises(InputError, match=r"no negative control probes .* use background=None"):
        normalize_nanostring(counts, no_neg)
    no_hk = ["Endogenous" if c == "Housekeeping" else c for c in CLASSES]
    with pytest.raises(InputError, match=r"no housekeeping control probes .* housekeeping=None"):
        normalize_nanostring(counts, no_hk)
    with pytest.raises(InputError, match=r"housekeeping_genes not in the cohort: ACTB"):
        normalize_nanostring(counts, CLASSES, housekeeping_genes=["HK1", "ACTB"])
    with pytest.raises(InputError, match="background_floor must be a number >= 0"):
        normalize_nanostring(counts, CLASSES, background_floor=-1)
    with pytest.raises(InputError, match="positive_factor_range must be"):
        normalize_nanostring(counts, CLASSES, positive_factor_range=(3, 0.3))
    with pytest.raises(InputError, match="counts must be a \\(gene, sample\\) DataArray"):
        normalize_nanostring(counts.T, CLASSES)
    with pytest.raises(InputError, match="housekeeping_genes is given but housekeeping=None"):
        normalize_nanostring(counts, CLASSES, housekeeping=None, housekeeping_genes=["HK1"])
    only_f = ["Endogenous" if c == "Positive" and not n.startswith("POS_F") else c
              for c, n in zip(CLASSES, NAMES)]
    with pytest.raises(InputError, match="no positive controls are left after excluding POS_F"):
        normalize_nanostring(counts, only_f, exclude_pos_f=True)


# ------------------------------------------------------------------------------------ QC

def log2_r2(counts, conc):
    """R^2 of log2(max(count, 0.5)) on log2(concentration), with the statistics module."""
    r = statistics.correlation([math.log2(c) for c in conc],
                               [math.log2(max(v, 0.5)) for v in counts])
    return r * r


def test_qc_flags_of_rcc_files():
    cohort, counts = rcc_cohort()
    qc = nanostring_qc(counts, cohort.genes["code_class"].to_numpy(), cohort.samples).compute()
    assert list(qc["sample"].values) == ["S01", "S02", "S03"]
    # Imaging: FovCounted / FovCount = 280/280, 200/280, 550/555; flagged below 0.75.
    np.testing.assert_allclose(qc["fov_ratio"], [1.0, 200 / 280, 550 / 555], rtol=1e-12)
    assert qc["imaging_flag"].values.tolist() == [False, True, False]
    # Binding density 1.11, 0.05, 2.30 against 0.1-2.25.
    assert qc["binding_density_flag"].values.tolist() == [False, True, True]
    # Linearity over POS_A-POS_E (0.5 fM and up): S01's counts are 100 x concentration.
    conc = [128, 32, 8, 2, 0.5]
    r2 = [log2_r2([12800, 3200, 800, 200, 50], conc), log2_r2([10000, 2900, 700, 150, 30], conc),
          log2_r2([5000, 4000, 3000, 2500, 20], conc)]
    np.testing.assert_allclose(qc["positive_r2"], r2, rtol=1e-9)
    np.testing.assert_allclose(qc["positive_r2"].values[0], 1.0, rtol=1e-12)
    assert r2[1] >= 0.95 > r2[2]  # the files were written so that only S03 fails
    assert qc["positive_linearity_flag"].values.tolist() == [False, False, True]
    # Limit of detection: mean + 2 SD of the negatives; POS_E 50, 30, 20.
    lod = [11.25 + 2 * math.sqrt(((7 - 11.25) ** 2 + (15 - 11.25) ** 2 + (11 - 11.25) ** 2
                                  + (12 - 11.25) ** 2) / 3),
           11.25 + 2 * math.sqrt((1.25 ** 2 + 0.75 ** 2 + 2.25 ** 2 + 2.75 ** 2) / 3),
           20 + 2 * math.sqrt((5 ** 2 + 5 ** 2 + 10 ** 2 + 10 ** 2) / 3)]
    np.testing.assert_allclose(qc["limit_of_detection"], lod, rtol=1e-12)
    assert qc["pos_e"].values.tolist() == [50, 30, 20]
    assert qc["limit_of_detection_flag"].values.tolist() == [False, False, True]


def test_qc_options():
    cohort, counts = rcc_cohort()
    classes = cohort.genes["code_class"].to_numpy()
    # SPRINT's binding-density range, a stricter imaging threshold, all six positives.
    qc = nanostring_qc(counts, classes, cohort.samples, binding_density_range=(0.1, 1.8),
                       fov_ratio_min=0.995, linearity_min_concentration=0, lod_sd=0).compute()
    assert qc["binding_density_flag"].values.tolist() == [False, True, True]
    assert qc["imaging_flag"].values.tolist() == [False, True, True]  # 550/555 = 0.991
    conc = [128, 32, 8, 2, 0.5, 0.125]
    np.testing.assert_allclose(qc["positive_r2"].values[0],
                               log2_r2([12800, 3200, 800, 200, 50, 12], conc), rtol=1e-9)
    np.testing.assert_allclose(qc["limit_of_detection"], [11.25, 11.25, 20.0], rtol=1e-12)


def test_qc_from_a_dataset_in_another_order():
    cohort, counts = rcc_cohort()
    samples = cohort.samples.iloc[::-1]
    ds = xr.Dataset({name: ("sample", da.from_array(samples[name].to_numpy(np.float64)))
                     for name in ("fov_count", "fov_counted", "binding_density")},
                    coords={"sample": samples.index.to_numpy(object)})
    classes = cohort.genes["code_class"].to_numpy()
    qc = nanostring_qc(counts, classes, ds).compute()
    expected = nanostring_qc(counts, classes, cohort.samples).compute()
    xr.testing.assert_identical(qc, expected)
    with pytest.raises(InputError, match="samples lacks S01"):
        nanostring_qc(counts, classes, ds.isel(sample=[0, 1]))


def test_qc_undefined_numbers_raise_flags():
    cohort, counts = rcc_cohort()
    samples = cohort.samples.copy()
    samples["fov_count"] = pd.array([0, 280, 555], dtype="Int64")
    samples["binding_density"] = [np.nan, 1.0, 1.0]
    qc = nanostring_qc(counts, cohort.genes["code_class"].to_numpy(), samples).compute()
    assert np.isnan(qc["fov_ratio"].values[0]) and bool(qc["imaging_flag"].values[0])
    assert bool(qc["binding_density_flag"].values[0])


def test_qc_concentrations_from_standard_table_or_argument():
    names = ["POS_A", "POS_B", "POS_C", "POS_D", "POS_E", "POS_F", "NEG_A", "NEG_B", "G1"]
    classes = ["Positive"] * 6 + ["Negative"] * 2 + ["Endogenous"]
    raw = np.array([[6400], [1600], [400], [100], [25], [6], [3], [5], [40]])
    samples = pd.DataFrame({"fov_count": [280], "fov_counted": [280], "binding_density": [1.0]},
                           index=["s1"])
    qc = nanostring_qc(as_array(raw, names), classes, samples).compute()
    np.testing.assert_allclose(qc["positive_r2"], [1.0], rtol=1e-12)  # 50 x standard fM
    given = {"POS_A": 1, "POS_B": 2, "POS_C": 3, "POS_D": 4, "POS_E": 5, "POS_F": 6}
    qc = nanostring_qc(as_array(raw, names), classes, samples, concentrations=given).compute()
    # POS_F now has 6 fM, above the 0.5 fM cut, so all six take part.
    np.testing.assert_allclose(qc["positive_r2"],
                               [log2_r2([6400, 1600, 400, 100, 25, 6], [1, 2, 3, 4, 5, 6])],
                               rtol=1e-9)
    with pytest.raises(InputError, match=r"'POS_X' has no concentration .* concentrations="):
        nanostring_qc(as_array(raw, ["POS_X"] + names[1:]), classes, samples)
    with pytest.raises(InputError, match="needs one POS_E positive control, found 0"):
        nanostring_qc(as_array(raw, names[:4] + ["POS_G(0.5)"] + names[5:]), classes, samples)
    with pytest.raises(InputError, match="samples has no 'fov_count' column"):
        nanostring_qc(as_array(raw, names), classes, samples.drop(columns="fov_count"))
    with pytest.raises(InputError, match=r"samples lacks rows for s1"):
        nanostring_qc(as_array(raw, names), classes, samples.rename(index={"s1": "x"}))


# ------------------------------------------------------------------------ kernels directly

def test_kernels_edge_cases():
    block = np.array([[4.0, 0.0, np.nan], [9.0, 5.0, np.nan], [np.nan, 7.0, np.nan]])
    np.testing.assert_allclose(column_summary(block, "geomean")[:2], [6.0, 0.0], rtol=1e-12)
    assert np.isnan(column_summary(block, "geomean")[2])  # no values at all
    np.testing.assert_allclose(column_summary(block, "sum")[:2], [13.0, 12.0], rtol=1e-12)
    level = background_level(block, "mean_sd", 2.0)
    np.testing.assert_allclose(level[:2], [6.5 + 2 * statistics.stdev([4, 9]),
                                           4 + 2 * statistics.stdev([0, 5, 7])], rtol=1e-12)
    assert np.isnan(level[2])
    assert np.isnan(background_level(np.array([[3.0]]), "mean_sd")[0])  # SD needs two values
    np.testing.assert_allclose(background_level(block, "max")[:2], [9.0, 7.0])
    # Linearity: a 0 count is raised to 0.5 before the log; constant counts have no R^2.
    counts = np.array([[800.0, 5.0], [190.0, 5.0], [60.0, 5.0], [0.0, 5.0]])
    conc = np.array([128.0, 32.0, 8.0, 2.0])
    r2 = linearity_r2(counts, np.log2(conc))
    np.testing.assert_allclose(r2[0], log2_r2([800, 190, 60, 0], conc), rtol=1e-12)
    assert np.isnan(r2[1])
