"""Sample and probe designs: aggregate, delta, collapse, select_samples.

References are plain pandas/numpy computations written in this file (groupby means, medians
and sums, per-patient differences, a loop over genes for the probe choice, DataFrame.query);
collapse is also checked against engine.genesets.collapse_probes on the ALL cohort.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from engine.errors import InputError
from engine.genesets import collapse_probes
from engine.preprocess.designs import aggregate, collapse, delta, select_samples
from engine.store import open_cohort

SHEET = pd.DataFrame({
    "sample": [f"S{i:02d}" for i in range(12)],
    "patient": ["P1", "P1", "P1", "P2", "P2", "P2", "P3", "P3", "P4", "P5", "P1", "P6"],
    "time": ["pre", "pre", "post", "pre", "post", "post", "pre", "post", "pre", "post", "post",
             "pre"],
    "week": [0.0, 0.0, 6.0, 0.0, 6.0, 6.0, 0.0, 6.0, 0.0, 6.0, 6.0, 0.0],
    "biopsy": ["a", "b", "a", "a", "a", "b", "a", "a", "a", "a", "b", "a"],
    "age": [50.0, 50.0, 50.0, 61.0, 61.0, 61.0, np.nan, np.nan, 45.0, 38.0, 50.0, 70.0],
    "response": ["CR", "CR", "CR", "NR", "NR", "NR", "PR", "PR", "CR", "", "CR", "NR"],
    "mol.biol": ["BCR/ABL", "NEG", "NEG", "BCR/ABL", "NEG", "NEG", "ALL1/AF4", "NEG", "NEG",
                 "BCR/ABL", "NEG", "NEG"],
})
SYMBOLS = ["A", "B", "A", "", "C", "B", "A", "D", "E", "C", "F", "E", "", "G", "B", "H", "D",
           "I", "J", "A", "K", "L", "J"]


def cohort(chunk=5, seed=0) -> xr.Dataset:
    """12 samples (patients with repeated biopsies, time points), 23 probes of 12 symbols (two
    probes without one), float32 expression with ties and NaN, int64 counts, and gene
    annotations constant or not within symbols."""
    rng = np.random.default_rng(seed)
    n_genes, n = len(SYMBOLS), len(SHEET)
    x = np.round(rng.normal(8, 1, (n_genes, n)), 1).astype(np.float32)
    x[rng.random(x.shape) < 0.08] = np.nan
    x[19] = np.nan  # an all-missing probe of A
    x[21, :4] = np.nan
    x[22] = x[18]  # a tie between the two probes of J (mean and variance)
    counts = rng.poisson(50, (n_genes, n)).astype(np.int64)
    genes = [f"p{i:02d}" for i in range(n_genes)]
    ds = xr.Dataset(
        {"expression": (("gene", "sample"), da.from_array(x, chunks=(chunk, -1)),
                        {"scale": "log2"}),
         "counts": (("gene", "sample"), da.from_array(counts, chunks=(chunk, -1)))},
        coords={"gene": np.array(genes, dtype=object),
                "sample": SHEET["sample"].to_numpy(dtype=object)})
    for name in SHEET.columns[1:]:
        values = SHEET[name].to_numpy()
        ds[name] = ("sample", values if values.dtype.kind == "f" else values.astype(object))
    ds["symbol"] = ("gene", np.array(SYMBOLS, dtype=object))
    ds["chromosome"] = ("gene", np.array([{"A": "1", "B": "2", "C": "3"}.get(s, "X")
                                          for s in SYMBOLS], dtype=object))
    ds["strand"] = ("gene", np.array(["+", "-"] * 11 + ["+"], dtype=object))
    ds["gc"] = ("gene", np.linspace(0.3, 0.6, n_genes))
    ds.attrs = {"engine_version": "test"}
    return ds


def expression(ds) -> np.ndarray:
    return np.asarray(ds["expression"].values, dtype=np.float64)


# -- aggregate ---------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["mean", "median"])
def test_aggregate_matches_pandas_groupby(how):
    ds = cohort()
    got = aggregate(ds, "patient", within=["time"], how=how)
    keys = SHEET["patient"] + "_" + SHEET["time"]
    frame = pd.DataFrame(expression(ds).T, index=keys)
    reference = getattr(frame.groupby(level=0, sort=False), how)()  # NaN skipped
    assert list(got["sample"].values) == list(reference.index)  # first-appearance order
    # float64 means rounded once to float32: agreement to float32 resolution
    np.testing.assert_allclose(got["expression"].values, reference.to_numpy().T.astype(np.float32),
                               rtol=1e-6, equal_nan=True)
    assert got["expression"].dtype == np.float32 and got["expression"].attrs == {"scale": "log2"}
    counts = pd.DataFrame(ds["counts"].values.T, index=keys).groupby(level=0, sort=False).sum()
    np.testing.assert_array_equal(got["counts"].values, counts.to_numpy().T)  # summed, exactly
    assert got["counts"].dtype == np.int64
    np.testing.assert_array_equal(got["n_aggregated"].values,
                                  keys.value_counts(sort=False).to_numpy().astype(float))
    assert got["n_aggregated"].dtype == np.float64


def test_aggregate_keeps_constant_annotations_and_lists_the_rest():
    got = aggregate(cohort(), "patient", within=["time"])
    kept = {n for n, v in got.data_vars.items() if v.dims == ("sample",)}
    # age is NaN for both of P3's samples: missing equals missing, so it is kept
    assert kept == {"patient", "time", "week", "age", "response", "n_aggregated"}
    record = got.attrs["aggregate"]
    assert sorted(record["dropped_annotations"]) == ["biopsy", "mol.biol"]
    assert record["samples_before"] == 12 and record["samples_after"] == got.sizes["sample"] == 9
    assert record["integer_variables_summed"] == ["counts"]
    assert got.attrs["engine_version"] == "test"
    first = SHEET.groupby(SHEET["patient"] + "_" + SHEET["time"], sort=False).first()
    np.testing.assert_array_equal(got["age"].values, first["age"].to_numpy())
    assert list(got["response"].values) == list(first["response"])
    for name in ("symbol", "chromosome", "gc"):  # gene annotations untouched
        np.testing.assert_array_equal(got[name].values, cohort()[name].values)


def test_aggregate_by_patient_alone_and_numeric_labels():
    ds = cohort()
    got = aggregate(ds, "patient")
    assert list(got["sample"].values) == ["P1", "P2", "P3", "P4", "P5", "P6"]
    assert list(got["n_aggregated"].values) == list(SHEET["patient"].value_counts(sort=False))
    by_week = aggregate(ds, "week")  # float labels written without ".0"
    assert list(by_week["sample"].values) == ["0", "6"]


def test_aggregate_is_lazy_and_does_not_depend_on_the_chunking(no_compute):
    with no_compute():
        a = aggregate(cohort(chunk=23), "patient", within=["time"])
        b = aggregate(cohort(chunk=4), "patient", within=["time"], how="median")
        c = aggregate(cohort(chunk=4), "patient", within=["time"])
        assert isinstance(a["expression"].data, da.Array)
        assert isinstance(b["counts"].data, da.Array)
    np.testing.assert_array_equal(a["expression"].values, c["expression"].values)
    np.testing.assert_array_equal(a["counts"].values, c["counts"].values)


def test_aggregate_refuses_bad_input():
    ds = cohort()
    with pytest.raises(InputError, match="1 samples have no value of aggregate annotation "
                                         "'response': S09"):
        aggregate(ds, "response")
    with pytest.raises(InputError, match="'colour' is not a sample annotation"):
        aggregate(ds, "colour")
    with pytest.raises(InputError, match="how='max' is not one of mean, median"):
        aggregate(ds, "patient", how="max")
    with pytest.raises(InputError, match="names patient more than once"):
        aggregate(ds, "patient", within=["patient"])
    patients, times = list(SHEET["patient"]), list(SHEET["time"])
    patients[:2], times[:2] = ["P1_pre", "P1"], ["x", "pre_x"]  # both join to "P1_pre_x"
    clash = ds.assign(patient=("sample", np.array(patients, dtype=object)),
                      time=("sample", np.array(times, dtype=object)))
    with pytest.raises(InputError, match="same sample ID P1_pre_x .their patient, time "
                                         "labels.*choose another sep"):
        aggregate(clash, "patient", within=["time"])
    assert aggregate(clash, "patient", within=["time"], sep="|").sizes["sample"] == 10


# -- delta -------------------------------------------------------------------------------------

def test_delta_after_aggregate_matches_numpy():
    ds = cohort()
    patient_level = aggregate(ds, "patient", within=["time"])
    got = delta(patient_level, "patient", "time", "pre", "post")
    # P1, P2, P3 have both; P4 and P6 only pre, P5 only post
    assert list(got["sample"].values) == ["P1", "P2", "P3"]
    assert got.attrs["delta"]["patients_unpaired"] == ["P4", "P5", "P6"]
    means = expression(patient_level)
    ids = list(patient_level["sample"].values)
    expected = np.stack([means[:, ids.index(f"{p}_post")] - means[:, ids.index(f"{p}_pre")]
                         for p in ("P1", "P2", "P3")], axis=1)
    np.testing.assert_array_equal(got["expression"].values, expected.astype(np.float32))
    assert "counts" not in got and "counts" in got.attrs["delta"]["dropped_variables"]
    assert list(got["sample_before"].values) == ["P1_pre", "P2_pre", "P3_pre"]
    assert list(got["sample_after"].values) == ["P1_post", "P2_post", "P3_post"]
    kept = {n for n, v in got.data_vars.items() if v.dims == ("sample",)}
    assert {"patient", "age", "response"} <= kept and "time" not in kept
    assert {"time", "week", "n_aggregated"} <= set(got.attrs["delta"]["dropped_annotations"])


def test_delta_on_single_biopsies_with_a_numeric_time(no_compute):
    ds = select_samples(cohort(chunk=6), "biopsy == 'a'")
    with no_compute():
        got = delta(ds, "patient", "week", 0, 6)
        assert isinstance(got["expression"].data, da.Array)
    x = expression(ds)
    samples = list(ds["sample"].values)
    pairs = {"P1": ("S00", "S02"), "P2": ("S03", "S04"), "P3": ("S06", "S07")}
    expected = np.stack([x[:, samples.index(b)] - x[:, samples.index(a)]
                         for a, b in pairs.values()], axis=1)
    assert list(got["sample"].values) == list(pairs)
    np.testing.assert_array_equal(got["expression"].values, expected.astype(np.float32))
    assert got.attrs["delta"]["before"] == "0" and got.attrs["delta"]["after"] == "6"


def test_delta_refuses_bad_input():
    ds = cohort()
    with pytest.raises(InputError, match=r"patients P1 have several samples with time = "
                                         r"'pre'.*aggregate: by patient, within \[time\]"):
        delta(ds, "patient", "time", "pre", "post")
    single = select_samples(ds, "biopsy == 'a'")
    with pytest.raises(InputError, match="'time' has no sample with value 'baseline' "
                                         r"\(values: post, pre\)"):
        delta(single, "patient", "time", "baseline", "post")
    with pytest.raises(InputError, match="before and after are both 'pre'"):
        delta(single, "patient", "time", "pre", "pre")
    with pytest.raises(InputError, match="no patient .patient. has samples at both"):
        delta(select_samples(single, "patient == 'P4' or patient == 'P5'"), "patient", "time",
              "pre", "post")
    with pytest.raises(InputError, match="no value of delta annotation 'response': S09"):
        delta(single, "response", "time", "pre", "post")


# -- collapse ----------------------------------------------------------------------------------

def collapse_reference(ds, method):
    """Per symbol in order of first appearance: the chosen probe (max_*) by a loop, or the
    NaN-aware mean / median / sum over its probes (pandas), and the counts summed or picked."""
    x = expression(ds)
    counts = ds["counts"].values
    symbols = pd.Series(SYMBOLS)
    order = list(dict.fromkeys(s for s in SYMBOLS if s))
    values, picked_counts, probes = [], [], []
    for sym in order:
        rows = np.flatnonzero(symbols == sym)
        if method.startswith("max_"):
            best, best_stat = None, None
            for r in rows:  # strict > keeps the first of tied probes
                v = x[r][~np.isnan(x[r])]
                if v.size == 0:
                    continue
                stat = v.mean() if method == "max_mean" else (
                    v.var(ddof=1) if v.size > 1 else -np.inf)
                if best is None or stat > best_stat:
                    best, best_stat = r, stat
            values.append(x[best] if best is not None else np.full(x.shape[1], np.nan))
            picked_counts.append(counts[best if best is not None else rows[0]])
            probes.append(f"p{best:02d}" if best is not None else "")
        else:
            frame = pd.DataFrame(x[rows])
            if method == "sum":
                values.append(frame.sum(min_count=1).to_numpy())
            else:
                values.append(getattr(frame, method)().to_numpy())
            picked_counts.append(counts[rows].sum(axis=0))
    return order, np.array(values), np.array(picked_counts), probes


@pytest.mark.parametrize("method", ["max_mean", "max_variance", "mean", "median", "sum"])
def test_collapse_matches_a_plain_reference(method):
    ds = cohort(chunk=4)
    got = collapse(ds, "symbol", method)
    genes, values, counts, probes = collapse_reference(ds, method)
    assert list(got["gene"].values) == genes
    np.testing.assert_allclose(got["expression"].values, values.astype(np.float32), rtol=1e-6,
                               equal_nan=True)  # float64 result rounded once to float32
    np.testing.assert_array_equal(got["counts"].values, counts)
    assert got["counts"].dtype == np.int64 and got["expression"].dtype == np.float32
    sizes = pd.Series([s for s in SYMBOLS if s]).value_counts()
    np.testing.assert_array_equal(got["n_probes"].values, sizes[genes].to_numpy(float))
    if method.startswith("max_"):
        assert list(got["probe"].values) == probes
        assert probes[genes.index("J")] == "p18"  # tie: the first probe
        assert probes[genes.index("A")] != "p19"  # the all-missing probe is never chosen
    else:
        assert "probe" not in got


def test_collapse_annotations_and_record():
    got = collapse(cohort(), "symbol", "max_mean")
    kept = {n for n, v in got.data_vars.items() if v.dims == ("gene",)}
    # chromosome is constant within every symbol; strand and gc are not
    assert kept == {"symbol", "chromosome", "n_probes", "probe"}
    assert list(got["symbol"].values) == list(got["gene"].values)
    record = got.attrs["collapse"]
    assert sorted(record["dropped_annotations"]) == ["gc", "strand"]
    assert record["probes"] == 23 and record["probes_without_annotation"] == 2
    assert record["genes"] == got.sizes["gene"] == 12
    for name in SHEET.columns[1:]:  # sample annotations untouched
        np.testing.assert_array_equal(got[name].values, cohort()[name].values)


def test_collapse_is_lazy_and_does_not_depend_on_the_chunking(no_compute):
    for method in ("max_variance", "median"):
        with no_compute():
            a = collapse(cohort(chunk=23), "symbol", method)
            b = collapse(cohort(chunk=3), "symbol", method)
            assert all(isinstance(a[v].data, da.Array) for v in ("expression", "counts"))
        np.testing.assert_array_equal(a["expression"].values, b["expression"].values)
        np.testing.assert_array_equal(a["counts"].values, b["counts"].values)


@pytest.mark.parametrize("method", ["max_mean", "max_variance", "mean"])
def test_collapse_equals_collapse_probes_on_all(method, all_store):
    ds = open_cohort(all_store)
    got = collapse(ds, "symbol", method)
    other = collapse_probes(ds, method=method, symbol_column="symbol")
    assert list(got["gene"].values) == list(other["gene"].values)
    np.testing.assert_array_equal(got["expression"].values, other["expression"].values)
    if method != "mean":
        np.testing.assert_array_equal(got["probe"].values, other["probe"].values)


def test_collapse_refuses_bad_input():
    ds = cohort()
    with pytest.raises(InputError, match="method 'first' is not one of max_mean, max_variance"):
        collapse(ds, "symbol", "first")
    with pytest.raises(InputError, match="by 'age' is not a gene annotation .*chromosome"):
        collapse(ds, "age")
    empty = ds.assign(symbol=("gene", np.array([""] * 23, dtype=object)))
    with pytest.raises(InputError, match="'symbol' is empty for every probe"):
        collapse(empty)
    with pytest.raises(InputError, match="variable 'score' is not a numeric"):
        collapse(ds, variable="score")


# -- select_samples ----------------------------------------------------------------------------

def annotation_frame():
    frame = SHEET.set_index("sample").copy()
    frame["response"] = frame["response"].replace("", None)
    return frame


@pytest.mark.parametrize("where,query", [
    ("response in ['CR', 'NR']", "response in ['CR', 'NR']"),
    ("mol.biol == 'BCR/ABL' and age > 40", "`mol.biol` == 'BCR/ABL' and age > 40"),
    ("`mol.biol` != 'NEG'", "`mol.biol` != 'NEG'"),
    ("not (time == 'pre') or patient == 'P4'", "not (time == 'pre') or patient == 'P4'"),
    ("age >= 50 and response != 'CR'", "age >= 50 and response != 'CR'"),
    ("sample in ['S01', 'S07']", "index in ['S01', 'S07']"),
])
def test_select_samples_matches_pandas_query(where, query):
    got = select_samples(cohort(), where)
    expected = annotation_frame().query(query).index
    assert list(got["sample"].values) == list(expected)
    np.testing.assert_array_equal(got["expression"].values,
                                  cohort()["expression"].sel(sample=expected).values)
    assert got.attrs["select_samples"]["samples_after"] == len(expected)


def test_select_samples_missing_values_compare_as_pandas_does():
    """Missing text is None and a missing number NaN: ==, <, in never match them, != does."""
    ds = cohort()
    assert "S09" not in select_samples(ds, "response == 'CR' or response == 'NR'")["sample"]
    assert "S09" not in select_samples(ds, "response in ['CR', 'NR', 'PR']")["sample"]
    assert "S09" in select_samples(ds, "response != 'PR'")["sample"]
    assert "S06" not in select_samples(ds, "age < 100")["sample"].values  # age NaN


def test_select_samples_by_ids_and_both(no_compute):
    ds = cohort()
    with no_compute():
        got = select_samples(ds, ids=["S05", "S01", "S10"])
        assert isinstance(got["expression"].data, da.Array)
        both = select_samples(ds, "time == 'post'", ids=["S05", "S01", "S10"])
    assert list(got["sample"].values) == ["S01", "S05", "S10"]  # store order
    assert list(both["sample"].values) == ["S05", "S10"]
    assert both.attrs["select_samples"]["samples_dropped"] == [
        s for s in SHEET["sample"] if s not in ("S05", "S10")]


def test_select_samples_with_names_written_plainly_on_all(all_store):
    ds = open_cohort(all_store)
    got = select_samples(ds, "t(9;22) == 'TRUE' and mol.biol == 'BCR/ABL' and age > 30")
    frame = pd.DataFrame({n: ds[n].values for n in ("t(9;22)", "mol.biol", "age")},
                         index=ds["sample"].values)
    expected = frame.query("`t(9;22)` == 'TRUE' and `mol.biol` == 'BCR/ABL' and age > 30")
    assert list(got["sample"].values) == list(expected.index) and len(expected) > 5


def test_select_samples_errors_name_the_problem():
    ds = cohort()
    with pytest.raises(InputError, match=r"'colour' is not a sample annotation \(annotations: "
                                         r"age, biopsy, mol.biol, patient"):
        select_samples(ds, "colour == 'red'")
    with pytest.raises(InputError, match="is not a valid condition.*SyntaxError.*pandas query"):
        select_samples(ds, "age >")
    with pytest.raises(InputError, match="does not give True or False for each sample"):
        select_samples(ds, "age + 1")
    with pytest.raises(InputError, match="is not a valid condition.*TypeError"):
        select_samples(ds, "patient > 3")
    with pytest.raises(InputError, match=r"keeps no sample of 12"):
        select_samples(ds, "patient == 'P9'")
    with pytest.raises(InputError, match="ids S99 are not samples of the cohort"):
        select_samples(ds, ids=["S01", "S99"])
    with pytest.raises(InputError, match="ids list S01 more than once"):
        select_samples(ds, ids=["S01", "S01"])
    with pytest.raises(InputError, match="needs where .* or ids"):
        select_samples(ds)
    with pytest.raises(InputError, match="'os' is not a sample annotation"):
        select_samples(ds, "@os.system('true')")  # no access to Python objects
