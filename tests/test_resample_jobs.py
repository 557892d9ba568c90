"""Resampling in jobs: the job keys, the columns they add, and the errors. The statistics are
checked against scipy, plain loops and R in test_bootstrap, test_statistic_bootstrap,
test_permutation and test_consensus; here each job output is compared with the same kernel
called by hand on the same data, seed and stream."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from distributed import Client

from engine.errors import InputError
from engine.jobs import load_job, plan_job, run_job
from engine.resample.bootstrap import mean_difference_bootstrap, resample_units
from engine.resample.permutation import permutation_test
from engine.resample.rng import analysis_key
from conftest import read_table, write_job
from engine.store import ingest, open_cohort


@pytest.fixture(scope="module")
def client():
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """60 genes x 30 samples in three groups of 10; genes 0-11 separate the groups (a high, a
    middle and a low class), the rest are noise (G59 has a missing value); patients P0..P14 with two samples each."""
    tmp = tmp_path_factory.mktemp("resample")
    rng = np.random.default_rng(5)
    x = rng.normal(8.0, 1.0, (60, 30))
    x[:12, :10] += 3.0
    x[:12, 10:20] += 1.5
    x[59, 0] = np.nan
    genes = [f"G{i:02d}" for i in range(60)]
    samples = [f"S{i:02d}" for i in range(30)]
    pd.DataFrame(x, index=pd.Index(genes, name="gene"), columns=samples).to_csv(
        tmp / "m.tsv", sep="\t")
    pd.DataFrame({"sample": samples, "group": np.repeat(["high", "mid", "low"], 10),
                  "patient": [f"P{i // 2}" for i in range(30)],
                  "score": rng.normal(size=30), "months": rng.exponential(20.0, 30).round(1),
                  "died": rng.integers(0, 2, 30)}).to_csv(tmp / "s.tsv", sep="\t", index=False)
    (tmp / "sets.gmt").write_text("MARKERS\tthe 12 separating genes\t" + "\t".join(genes[:12])
                                  + "\nOTHER\tnoise\t" + "\t".join(genes[30:40]) + "\n")
    return ingest(tmp / "m.tsv", tmp / "s.tsv", tmp / "c.zarr", chunk_genes=16)


JOB = """
  - name: boot
    test: welch
    group: group
    case: high
    control: low
    fold_change_base: 2
    bootstrap: {replicates: 500, method: bca, by: patient}
    permutations: 3000
  - name: classes
    test: consensus_cluster
    gene_sets: SETS
    gene_set: MARKERS
    k_max: 4
    resamples: 200
    linkage: ward.D2
    distance: euclidean
"""


@pytest.fixture(scope="module")
def run(store, client, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("job")
    job = load_job(write_job(tmp, store, JOB.replace("SETS", str(store.parent / "sets.gmt")),
                             seed=5))
    return run_job(job, client)


def test_two_group_columns_equal_the_kernels_on_the_same_stream(run, store):
    table = read_table(run, "boot").set_index("gene").sort_index()
    assert list(table.columns[:8]) == ["effect", "fold_change", "ci_low", "ci_high", "fc_ci_low",
                                       "fc_ci_high", "n_boot", "statistic"]
    x = np.asarray(open_cohort(store)["expression"].values)
    case, control = np.arange(10), np.arange(20, 30)
    patients = np.array([f"P{i // 2}" for i in range(30)])[np.r_[case, control]]
    units = resample_units(20, clusters=patients,
                           strata=np.repeat(["case", "control"], 10))
    ref = mean_difference_bootstrap(x, case, control, units, replicates=500, method="bca",
                                    seed=5, key=analysis_key("boot", "bootstrap"),
                                    fold_change_base=2)
    np.testing.assert_array_equal(table[["ci_low", "ci_high", "n_boot", "fc_ci_low",
                                         "fc_ci_high"]].to_numpy(), ref[:, [1, 2, 3, 5, 6]])
    np.testing.assert_allclose(table["fold_change"], 2.0 ** table["effect"], rtol=1e-15)
    ref = permutation_test(x, test="welch", case=case, control=control, permutations=3000,
                           seed=5, key=analysis_key("boot", "permutation"))
    for column in ("p_perm", "p_perm_floor", "p_maxT"):
        np.testing.assert_array_equal(table[column], ref[column])
    assert (table["n_permutations"] == 3000).all()
    assert (table["p_perm_floor"] == 1 / 3001).all() and (table["p_maxT"] >= table["p_perm"]).all()
    stored = xr.open_zarr(run / "results.zarr", group="boot")
    assert stored.attrs["bootstrap"]["by"] == "patient"
    assert stored.attrs["permutation"]["n_relabellings"] == 184756  # C(20, 10)
    assert "BCa" in stored["ci_low"].attrs["description"] or "bca" in \
        stored["ci_low"].attrs["description"]


def test_consensus_tables_and_labels(run):
    main = read_table(run, "classes")
    assert list(main.columns) == ["sample", "consensus_class", "label", "signature_score",
                                  "item_consensus"]
    # the three simulated groups are the three classes, labelled by their mean marker z-score
    labels = main.set_index("sample")["label"]
    assert (labels.iloc[:10] == "MARKERS High").all()
    assert (labels.iloc[10:20] == "MARKERS Medium").all()
    assert (labels.iloc[20:] == "MARKERS Low").all()
    areas = read_table(run, "classes.k")
    assert list(areas["k"]) == [2, 3, 4] and np.isclose(areas["consensus_area"].iloc[0],
                                                         areas["consensus_delta"].iloc[0])
    per_k = read_table(run, "classes.k_sample")
    assert len(per_k) == 3 * 30
    assert not (run / "classes.consensus.tsv").exists()  # the matrices: results.zarr only
    stored = xr.open_zarr(run / "results.zarr", group="classes")
    assert stored["consensus"].shape == (3, 30, 30)
    np.testing.assert_array_equal(stored["consensus"].sel(k=3).values[:10, :10], 1.0)


def test_planning_computes_nothing(store, tmp_path, no_compute):
    rho = """
  - name: rho
    test: spearman
    covariate: score
    bootstrap: {replicates: 200}
  - {name: hr, test: cox, time: months, event: died, bootstrap: {replicates: 200}}
  - {name: coef, test: limma, group: group, case: high, control: low, bootstrap: {}}
  - {name: odds, test: logistic, outcome: group, event: high, reference: low, features: [score],
     bootstrap: {method: percentile}}
"""
    analyses = JOB.replace("SETS", str(store.parent / "sets.gmt")) + rho
    job = load_job(write_job(tmp_path, store, analyses, seed=5))
    with no_compute():
        planned = plan_job(job)
    assert {"ci_low", "ci_high", "n_boot", "ci_low_fisher"} <= set(planned["rho"].data_vars)
    assert {"ci_low", "ci_high", "n_boot", "ci_low_wald"} <= set(planned["hr"].data_vars)
    assert {"ci_low", "ci_high", "n_boot", "ci_low_t"} <= set(planned["coef"].data_vars)
    assert {"ci_low", "ci_high", "n_boot", "ci_low_wald"} <= set(planned["odds"].data_vars)


@pytest.mark.parametrize("analysis, message", [
    ("{name: a, test: paired_t, group: group, case: high, control: low, pair_by: patient, "
     "bootstrap: {by: patient}}", "paired tests resample their pairs"),
    ("{name: a, test: welch, group: group, case: high, control: low, bootstrap: {level: 95}}",
     "analyses.0.bootstrap.level"),
    ("{name: a, test: welch, group: group, case: high, control: low, bootstrap: {reps: 5}}",
     "unknown key"),
    ("{name: a, test: welch, group: group, case: high, control: low, permutations: 0}",
     "analyses.0.permutations"),
    ("{name: a, test: consensus_cluster, genes: [G00, G01], gene_sets: icr}",
     "exactly one of gene_sets"),
    ("{name: a, test: consensus_cluster, genes: [G00, G01], k_max: 3, k: 4}", "above k_max"),
    ("{name: a, test: consensus_cluster, genes: [G00, G01], algorithm: km}", "euclidean"),
])
def test_spec_errors(store, tmp_path, analysis, message):
    with pytest.raises(InputError, match=message):
        load_job(write_job(tmp_path, store, f"  - {analysis}\n", seed=5))


@pytest.mark.parametrize("analysis, message", [
    ("{name: a, test: spearman, covariate: score, bootstrap: {weights: poisson}}", "poisson"),
    ("{name: a, test: welch, group: group, case: high, control: low, "
     "bootstrap: {by: group, strata: true}}", "single resampling unit"),
    ("{name: a, test: consensus_cluster, gene_sets: icr}", "no gene set has at least"),
    ("{name: a, test: consensus_cluster, gene_sets: icr, gene_set: NOPE}", "not in icr"),
])
def test_planning_errors_name_the_analysis(store, tmp_path, analysis, message):
    with pytest.raises(InputError, match=message) as err:
        plan_job(load_job(write_job(tmp_path, store, f"  - {analysis}\n", seed=5)))
    assert "analysis 'a'" in str(err.value)


def test_consensus_on_a_gene_with_missing_values_is_one_clear_error(store, client, tmp_path):
    job = load_job(write_job(tmp_path, store, """
  - {name: c, test: consensus_cluster, genes: [G00, G01, G59], k_max: 3, resamples: 20}
"""))
    with pytest.raises(InputError, match=r"complete data.*genes G59.*drop them"):
        run_job(job, client)
    assert not (tmp_path / "out").exists()  # nothing half-written
