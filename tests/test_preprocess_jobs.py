"""The `preprocess:` job key, per-analysis `samples:` filters and gene lists, end to end.

The numerical steps are checked against R/numpy in their own test files; these tests check
the plumbing: steps run in order, the derived store is a valid cohort store written next to
(never over) the raw data, it is reused, records say what was dropped, and analyses see
exactly the samples and genes they should.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from distributed import Client

from conftest import DATA, read_table, write_job
from engine.errors import InputError
from engine.jobs import load_job, run_job
from engine.preprocess import counts as cnt
from engine.preprocess import transforms
from engine.store import ingest, open_cohort

WELCH = """
  - name: welch
    test: welch
    group: group
    case: case
    control: control
"""


@pytest.fixture(scope="module")
def client():
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        yield c


def count_cohort(directory, n_genes=60, n_per_group=5, outlier=False, seed=3):
    """Negative-binomial-like counts: two groups, patients with two samples each, some
    all-zero and low genes; optionally one sample shifted far away (a PCA outlier)."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per_group
    mean = rng.gamma(1.0, 200.0, n_genes)[:, None] * rng.uniform(0.5, 2, n)[None, :]
    counts = rng.poisson(mean * rng.gamma(5.0, 0.2, mean.shape)).astype(np.int64)  # NB, disp 0.2
    counts[:3] = 0
    counts[3:6] = rng.integers(0, 3, (3, n))
    if outlier:
        counts[:, -1] = rng.poisson(mean[::-1, -1] * 3)
    samples = [f"S{i:02d}" for i in range(n)]
    pd.DataFrame(counts, index=pd.Index([f"G{i}" for i in range(n_genes)], name="gene"),
                 columns=samples).to_csv(directory / "counts.tsv", sep="\t")
    sheet = pd.DataFrame({"sample": samples,
                          "group": ["case"] * n_per_group + ["control"] * n_per_group,
                          "patient": [f"P{i // 2}" for i in range(n)],
                          "response": (["CR", "NR", "PR"] * n)[:n]})
    sheet.to_csv(directory / "samples.tsv", sep="\t", index=False)
    store = ingest(directory / "counts.tsv", directory / "samples.tsv", directory / "c.zarr",
                   scale="counts", chunk_genes=16)
    return store, counts, sheet


def run(tmp_path, client, store, analyses, extra):
    job = load_job(write_job(tmp_path, store, analyses, extra=extra))
    return run_job(job, client), job


def test_steps_write_a_derived_store_and_leave_the_raw_one_alone(tmp_path, client, cohort_files):
    store = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr",
                   genes=cohort_files["genes"], chunk_genes=16)
    before = open_cohort(store)["expression"].values.copy()
    out, job = run(tmp_path, client, store, WELCH,
                   "preprocess:\n  - quantile: {}\n  - log2: {offset: 1}\n")
    provenance = json.loads((out / "provenance.json").read_text())
    record = provenance["preprocess"]["main"]
    assert [s["step"] for s in record["steps"]] == ["quantile", "log2"]
    derived = open_cohort(record["derived_store"])  # a valid cohort store (contract checked)
    raw = open_cohort(store)
    np.testing.assert_array_equal(raw["expression"].values, before)
    expected = transforms.log2(transforms.quantile_normalize(raw["expression"]), 1.0).values
    np.testing.assert_array_equal(derived["expression"].values, expected.astype(np.float32))
    assert derived["expression"].attrs["scale"] == "log2"
    assert derived.attrs["derived_from"] == str(store.absolute())
    # the welch test ran on the derived values
    table = read_table(out, "welch").set_index("gene")
    x = derived["expression"].sel(gene="G000").values
    case = derived["group"].values == "case"
    ref = scipy.stats.ttest_ind(x[case], x[~case], equal_var=False, nan_policy="omit")
    assert table.loc["G000", "p_value"] == pytest.approx(ref.pvalue, rel=1e-6)
    # a second run reuses the derived store
    out2, _ = run(tmp_path, client, store, WELCH,
                  "preprocess:\n  - quantile: {}\n  - log2: {offset: 1}\n")
    again = json.loads((out2 / "provenance.json").read_text())["preprocess"]["main"]
    assert again["reused"] and again["derived_store"] == record["derived_store"]
    pd.testing.assert_frame_equal(read_table(out2, "welch"), read_table(out, "welch"))


def test_count_steps_filter_then_log_cpm(tmp_path, client):
    store, counts, sheet = count_cohort(tmp_path)
    out, _ = run(tmp_path, client, store, WELCH,
                 "preprocess:\n  - filter_by_expr: {group: group}\n"
                 "  - tmm_log_cpm: {prior_count: 2}\n")
    record = json.loads((out / "provenance.json").read_text())["preprocess"]["main"]
    derived = open_cohort(record["derived_store"])
    raw = open_cohort(store)
    keep = cnt.filter_by_expr(raw["counts"], group=sheet["group"].to_numpy()).values
    assert record["steps"][0]["genes_after"] == keep.sum() < len(keep)
    assert list(derived["gene"].values) == list(raw["gene"].values[keep])
    kept = raw["counts"].isel(gene=np.flatnonzero(keep))
    lib = cnt.library_sizes(kept)
    factors = cnt.norm_factors(kept, "TMM", lib_size=lib)
    expected = cnt.cpm(kept, lib_size=lib, norm_factors=factors, log=True, prior_count=2).values
    np.testing.assert_array_equal(derived["expression"].values, expected.astype(np.float32))
    np.testing.assert_array_equal(derived["norm_factor"].values, factors.values)
    np.testing.assert_array_equal(derived["counts"].values, counts[keep])  # counts kept, filtered


def test_pca_outliers_are_dropped_recorded_and_rerun_kept(tmp_path, client):
    store, counts, sheet = count_cohort(tmp_path, n_genes=80, n_per_group=6, outlier=True)
    out, _ = run(tmp_path, client, store, WELCH,
                 "preprocess:\n  - tmm_log_cpm: {}\n"
                 "  - pca_outliers: {component: 1, sd: 2, method: exact}\n")
    record = json.loads((out / "provenance.json").read_text())["preprocess"]
    step = record["main"]["steps"][1]
    assert step["outliers"] == ["S11"] and step["dropped"]
    assert record["main"]["samples"] == 11 and record["outliers_kept"]["samples"] == 12
    assert not record["outliers_kept"]["steps"][1]["dropped"]
    scores = read_table(out, "preprocess.2.pca_outliers")
    pc1 = scores["PC1"].to_numpy()
    far = np.abs(pc1 - pc1.mean()) > 2 * pc1.std(ddof=1)
    assert list(scores.loc[far, "sample"]) == ["S11"] and list(scores["outlier"]) == list(far)
    main, kept = read_table(out, "welch"), read_table(out, "welch.outliers_kept")
    assert (main["n_control"] == 5).all() and (kept["n_control"] == 6).all()


def test_analysis_samples_filter_equals_a_cohort_of_those_samples(tmp_path, client, cohort_files):
    store = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr",
                   chunk_genes=16)
    analyses = WELCH + '    samples: {where: "age >= 40 and patient != \'P0\'"}\n'
    out, _ = run(tmp_path, client, store, analyses, "")
    sheet = pd.read_csv(cohort_files["samples"], sep="\t", dtype={"sample_id": str})
    kept = sheet[(sheet["age"] >= 40) & (sheet["patient"] != "P0")]
    matrix = pd.read_csv(cohort_files["matrix"], sep="\t", index_col=0)[kept["sample_id"]]
    case = (kept["group"] == "case").to_numpy()
    table = read_table(out, "welch").set_index("gene")
    compared = 0
    for gene, x in matrix.iterrows():
        x = x.to_numpy().astype(np.float32).astype(np.float64)  # the store holds float32
        ref = scipy.stats.ttest_ind(x[case], x[~case], equal_var=False, nan_policy="omit")
        assert table.loc[gene, "statistic"] == pytest.approx(ref.statistic, rel=1e-6, nan_ok=True)
        compared += np.isfinite(ref.statistic)
    assert compared >= 30
    assert table["n_case"].max() <= case.sum()


def test_bad_sample_filter_names_the_annotations(tmp_path, client, cohort_files):
    store = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr")
    job = load_job(write_job(tmp_path, store, WELCH + "    samples: {where: \"colour == 'red'\"}\n"))
    with pytest.raises(InputError, match="analysis 'welch'.*colour"):
        run_job(job, client)


def test_aggregate_biopsies_to_patients_then_test(tmp_path, client):
    store, counts, sheet = count_cohort(tmp_path)
    out, _ = run(tmp_path, client, store, WELCH,
                 "preprocess:\n  - tmm_log_cpm: {}\n  - aggregate: {by: patient, within: [group]}\n")
    record = json.loads((out / "provenance.json").read_text())["preprocess"]["main"]
    derived = open_cohort(record["derived_store"])
    assert record["steps"][1]["samples_after"] == derived.sizes["sample"] == 6  # P2 spans groups
    assert set(derived["n_aggregated"].values) == {1.0, 2.0}


def test_a_count_step_on_a_log_cohort_says_how_to_fix_it(tmp_path, client, cohort_files):
    store = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr")
    job = load_job(write_job(tmp_path, store, WELCH, extra="preprocess:\n  - tmm_log_cpm: {}\n"))
    with pytest.raises(InputError, match=r"step 1 \(tmm_log_cpm\).*needs counts.*--scale counts"):
        run_job(job, client)


def test_unknown_step_is_refused_when_the_job_loads(tmp_path, cohort_files):
    path = write_job(tmp_path, "c.zarr", WELCH, extra="preprocess:\n  - quantiles: {}\n")
    with pytest.raises(InputError, match="unknown preprocess step 'quantiles'"):
        load_job(path)


def test_gene_lists_are_set_algebra_of_result_tables(tmp_path, client, cohort_files):
    store = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr",
                   chunk_genes=16)
    analyses = WELCH + """
  - name: paired
    test: paired_t
    group: group
    case: case
    control: control
    pair_by: patient
"""
    lists = """gene_lists:
  - name: up_both_not_small
    all:
      - {analysis: welch, where: "p_value < 0.2 and effect > 0"}
      - {analysis: paired, where: "effect > 0"}
    none:
      - {analysis: welch, where: "effect < 0.5"}
  - name: either
    any:
      - {analysis: welch, where: "p_value < 0.05"}
      - {analysis: paired, where: "p_value < 0.05"}
"""
    job = load_job(write_job(tmp_path, store, analyses, extra=lists))
    out = run_job(job, client)
    welch, paired = read_table(out, "welch"), read_table(out, "paired")
    a = set(welch.query("p_value < 0.2 and effect > 0")["gene"])
    b = set(paired.query("effect > 0")["gene"])
    c = set(welch.query("effect < 0.5")["gene"])
    got = pd.read_csv(out / "gene_lists" / "up_both_not_small.tsv", sep="\t")
    assert set(got["gene"]) == (a & b) - c and len(got) > 0
    row = got.iloc[0]
    assert row["welch.effect"] == pytest.approx(welch.set_index("gene").loc[row["gene"], "effect"])
    either = pd.read_csv(out / "gene_lists" / "either.tsv", sep="\t")
    assert set(either["gene"]) == (set(welch.query("p_value < 0.05")["gene"])
                                   | set(paired.query("p_value < 0.05")["gene"]))
    assert json.loads((out / "provenance.json").read_text())["gene_lists"]["either"] == len(either)


def test_gene_list_of_an_unknown_analysis_is_refused(tmp_path):
    lists = "gene_lists:\n  - name: l\n    all: [{analysis: nope, where: 'p_adj < 0.1'}]\n"
    with pytest.raises(InputError, match="reads 'nope', which is not an analysis"):
        load_job(write_job(tmp_path, "c.zarr", WELCH, extra=lists))


def test_nanostring_rcc_folder_to_log2_through_the_pipeline(tmp_path, client):
    from engine.preprocess import nanostring

    store = ingest(DATA / "rcc", None, tmp_path / "n.zarr")
    out, _ = run(tmp_path, client, store, """
  - name: corr
    test: spearman
    covariate: binding_density
""", "preprocess:\n  - nanostring: {background: max}\n  - log2: {offset: 1}\n")
    record = json.loads((out / "provenance.json").read_text())["preprocess"]["main"]
    derived = open_cohort(record["derived_store"])
    raw = open_cohort(store)
    code_class = raw["code_class"].values.astype(str)
    expected = nanostring.normalize_nanostring(raw["counts"], code_class, background="max")
    keep = ~np.isin(code_class, ["Positive", "Negative"])
    np.testing.assert_array_equal(
        derived["expression"].values,
        transforms.log2(expected["normalized"], 1.0).values[keep])
    np.testing.assert_array_equal(derived["housekeeping_factor"].values,
                                  expected["housekeeping_factor"].values)
    qc = read_table(out, "preprocess.1.nanostring")
    assert list(qc["sample"]) == list(raw["sample"].values)
    assert {"imaging_flag", "binding_density_flag", "positive_linearity_flag",
            "limit_of_detection_flag"} <= set(qc.columns)
    assert record["steps"][0]["flagged"] == list(qc.loc[qc.filter(like="_flag").any(axis=1),
                                                        "sample"])


def test_select_delta_and_collapse_steps(tmp_path, client, cohort_files):
    store = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr",
                   genes=cohort_files["genes"], chunk_genes=16)
    out, _ = run(tmp_path, client, store, """
  - name: one_sample
    test: limma
    design: "~ 1"
    coef: Intercept
""", "preprocess:\n  - select_samples: {where: \"patient != 'P3'\"}\n"
         "  - delta: {by: patient, time: group, before: control, after: case}\n"
         "  - collapse: {by: symbol, method: mean}\n")
    record = json.loads((out / "provenance.json").read_text())["preprocess"]["main"]
    assert record["steps"][0]["samples_dropped"] == ["004", "008"]
    derived = open_cohort(record["derived_store"])
    raw = open_cohort(store)
    assert list(derived["sample"].values) == ["P0", "P1", "P2"]
    x = raw["expression"]
    for patient in ("P0", "P1", "P2"):
        mine = raw["patient"].values == patient
        case = x[:, mine & (raw["group"].values == "case")].values[:, 0]
        control = x[:, mine & (raw["group"].values == "control")].values[:, 0]
        got = derived["expression"].sel(sample=patient).values  # one probe per symbol here
        np.testing.assert_array_equal(got, (case - control).astype(np.float32))


def test_cli_preprocess_makes_then_reuses_the_derived_store(tmp_path, cohort_files):
    store = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr")
    job = write_job(tmp_path, store, WELCH, extra="derived: derived\npreprocess:\n  - zscore: {}\n")
    command = [sys.executable, "-m", "engine.cli", "preprocess", str(job), "--threads"]
    # a process of its own, as users run it (this module's in-process client stays out of it)
    first = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    second = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    path = first.split("main: ")[1].split(" (")[0]
    assert "(written)" in first and f"main: {path} (reused)" in second
    assert path.startswith(str(tmp_path / "derived"))
    derived = open_cohort(path)
    assert derived["expression"].attrs["scale"] == "zscore"
    x = open_cohort(store)["expression"].values.astype(np.float64)
    mean = np.nanmean(x, axis=1, keepdims=True)
    expected = (x - mean) / np.nanstd(x, axis=1, ddof=1, keepdims=True)
    # stored as float32: a z-score near 0 has absolute, not relative, precision (~1e-7)
    np.testing.assert_allclose(derived["expression"].values, expected, rtol=1e-6, atol=1e-6)


def test_deseq2_job_equals_the_direct_call_and_reads_the_counts(tmp_path, client):
    from engine.stats.deseq2 import deseq2

    store, counts, sheet = count_cohort(tmp_path, n_genes=120)
    out, _ = run(tmp_path, client, store, """
  - name: de
    test: deseq2
    group: group
    case: case
    control: control
""", "")
    table = read_table(out, "de").set_index("gene")
    direct = deseq2(open_cohort(store), group="group", case="case", control="control").compute()
    expected = direct[["effect", "lfc_se", "statistic", "p_value", "p_adj", "base_mean"]]
    expected = expected.to_dataframe().loc[table.index]
    pd.testing.assert_frame_equal(table[expected.columns], expected, check_names=False,
                                  check_index_type=False)  # str vs object dtype of the IDs
    assert {"effect", "statistic", "p_value", "p_adj", "base_mean", "lfc_se"} <= set(table.columns)
