"""Job files: validation, lazy planning, and a full run with its outputs."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from distributed import Client

from engine.errors import InputError
from engine.jobs import load_job, plan_job, run_job
from engine.store import ingest

ANALYSES = """
analyses:
  - name: welch
    test: welch
    group: group
    case: case
    control: control
  - name: paired
    test: paired_t
    group: group
    case: case
    control: control
    pair_by: patient
"""


@pytest.fixture
def job_dir(tmp_path, cohort_files):
    ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr",
           genes=cohort_files["genes"], chunk_genes=16)
    return tmp_path


def write_job(directory, body: str, name="job.yaml"):
    path = directory / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture(scope="module")
def client():
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        yield c


def test_relative_paths_are_relative_to_the_job_file(job_dir):
    job = load_job(write_job(job_dir, "cohort: c.zarr\noutput: out\n" + ANALYSES))
    assert job.cohort == job_dir / "c.zarr" and job.output == job_dir / "out"
    assert job.seed == 0


@pytest.mark.parametrize("body, message", [
    ("cohort: c.zarr\noutput: o\ncolour: red\n" + ANALYSES, r"colour: unknown key \(allowed here: cohort, output, seed, preprocess, derived, analyses, families, gene_lists\)"),
    ("cohort: c.zarr\noutput: o\n" + ANALYSES.replace("pair_by: patient", "pair: patient"),
     r"analyses.1.pair: unknown key \(allowed here: .*name, .*test, group, case, control, pair_by"),
    ("cohort: c.zarr\noutput: o\n" + ANALYSES.replace("test: welch", "test: welsh"),
     r"analyses.0: unknown test 'welsh' \(choose from welch, .*limma, ols"),
    ("output: o\n" + ANALYSES, r"cohort: required key is missing"),
    ("cohort: c.zarr\noutput: o\n" + ANALYSES.replace("case: case", "case: TRUE"),
     r"analyses.0.case: YAML read this label as the boolean True; quote it"),
    ("cohort: c.zarr\noutput: o\n" + ANALYSES.replace("name: paired", "name: welch"),
     r"analysis names must be unique; repeated: welch"),
    ("cohort: c.zarr\noutput: o\nanalyses:\n  - name: w\n    test: welch\n    group: g\n"
     "    case: a\n    control: b\n    pair_by: p\n", r"unpaired and takes no pair_by"),
    ("- just a list\n", r"must be a mapping"),
])
def test_invalid_jobs_name_the_problem(job_dir, body, message):
    with pytest.raises(InputError, match=message):
        load_job(write_job(job_dir, body))


@pytest.mark.parametrize("change, message", [
    (("group: group", "group: arm"), r"analysis 'welch': group 'arm' is not a sample annotation"),
    (("case: case", "case: treated"), r"no sample has group == 'treated' \(values present: case, control\)"),
    (("pair_by: patient", "pair_by: age"), r"only 0 complete age pairs"),
])
def test_labels_are_checked_at_planning(job_dir, change, message):
    job = load_job(write_job(job_dir, "cohort: c.zarr\noutput: o\n" + ANALYSES.replace(*change)))
    with pytest.raises(InputError, match=message):
        plan_job(job)


def test_planning_computes_nothing(job_dir, no_compute):
    job = load_job(write_job(job_dir, "cohort: c.zarr\noutput: out\n" + ANALYSES))
    with no_compute():
        planned = plan_job(job)
    import dask.array as da

    assert all(isinstance(v.data, da.Array) for r in planned.values() for v in r.data_vars.values())
    with pytest.raises(RuntimeError, match="computed 1 times"), no_compute():
        planned["welch"]["p_value"].values


def test_run_writes_tables_zarr_provenance_report(job_dir, client, cohort_files):
    job_file = write_job(job_dir, "cohort: c.zarr\noutput: out\nseed: 7\n" + ANALYSES)
    out = run_job(load_job(job_file), client, job_file=job_file)
    names = {p.name for p in out.iterdir()}
    assert {"welch.tsv", "welch.parquet", "paired.tsv", "paired.parquet", "results.zarr",
            "provenance.json", "report.html"} <= names
    table = pd.read_csv(out / "welch.tsv", sep="\t", keep_default_na=False, na_values=["NA"])
    assert list(table.columns) == ["gene", "symbol", "effect", "statistic", "df", "p_value",
                                   "p_adj", "n_case", "n_control"]
    assert table["p_value"].is_monotonic_increasing
    pd.testing.assert_frame_equal(pd.read_parquet(out / "welch.parquet"), table,
                                  check_dtype=False)
    # one row against scipy, straight from the input file
    matrix = pd.read_csv(cohort_files["matrix"], sep="\t", index_col=0)
    row = table.set_index("gene").loc["G005"]
    x, y = matrix.loc["G005"].iloc[:4].dropna(), matrix.loc["G005"].iloc[4:].dropna()
    ref = scipy.stats.ttest_ind(x.astype(np.float32).astype(float),
                                y.astype(np.float32).astype(float), equal_var=False)
    assert row["statistic"] == pytest.approx(ref.statistic, rel=1e-9)
    assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (row["n_case"], row["n_control"]) == (len(x), len(y))
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["seed"] == 7 and prov["job"]["analyses"][1]["pair_by"] == "patient"
    assert len(prov["inputs"]["job_file_sha256"]) == 64
    assert [s["role"] for s in prov["inputs"]["cohort_sources"]] == ["matrix", "samples", "genes"]
    assert prov["versions"]["dask"] and prov["cluster"]["workers"] == 1
    assert prov["wall_time_s"] > 0
    assert "G0" in (out / "report.html").read_text()
    # Dask's performance report (task stream, worker profile) is saved with the results
    assert "Dask Performance Report" in (out / "performance-report.html").read_text()
    # the peak resident memory of the worker (this process: the client is in-process)
    memory = prov["memory"]
    worker, = memory["workers"].values()
    assert worker["pid"] == os.getpid() and worker["peak_since"] in ("run", "process start")
    assert 0 < worker["peak_rss_bytes"] <= memory["max_worker_peak_rss_bytes"]
    assert memory["client_peak_rss_bytes"] > 0


def test_rerun_replaces_results_but_never_a_foreign_directory(job_dir, client):
    job_file = write_job(job_dir, "cohort: c.zarr\noutput: out\n" + ANALYSES)
    out = run_job(load_job(job_file), client)
    (out / "stale.tsv").write_text("old")
    run_job(load_job(job_file), client)
    assert not (out / "stale.tsv").exists()
    (job_dir / "mine").mkdir()
    (job_dir / "mine" / "thesis.txt").write_text("precious")
    job_file = write_job(job_dir, "cohort: c.zarr\noutput: mine\n" + ANALYSES)
    with pytest.raises(InputError, match="not a results directory"):
        run_job(load_job(job_file), client)
    assert (job_dir / "mine" / "thesis.txt").read_text() == "precious"


_CALLS: list[int] = []
_LOCK = __import__("threading").Lock()


def _fail_first_then_slow(case, control):
    """Module level, so Dask pickles it by reference and the in-process workers share _CALLS."""
    import time

    from engine.stats.twogroup import welch_t

    with _LOCK:
        _CALLS.append(1)
        first = len(_CALLS) == 1
    if first:
        raise MemoryError("simulated worker failure")
    time.sleep(0.5)
    return welch_t(case, control)


def _run_with_a_failing_chunk(job_file, client, monkeypatch) -> None:
    """Run the job while its Welch test fails on the first chunk (the paired test succeeds)."""
    from engine.stats import twogroup

    _CALLS.clear()
    with monkeypatch.context() as m:
        m.setitem(twogroup.TESTS, "welch", _fail_first_then_slow)
        with pytest.raises(MemoryError):
            run_job(load_job(job_file), client)


def test_failure_during_compute_leaves_no_output(job_dir, client, monkeypatch):
    """One chunk fails at once while another is still computing: that one's write lands after
    the failure is seen, and must not leave a half-written output or temporary directory."""
    import time

    job_file = write_job(job_dir, "cohort: c.zarr\noutput: out\n" + ANALYSES)
    _run_with_a_failing_chunk(job_file, client, monkeypatch)
    time.sleep(1.0)  # anything still running would have written by now
    assert len(_CALLS) > 1
    assert not (job_dir / "out").exists()
    assert not [p for p in job_dir.iterdir() if p.name.startswith(".out.tmp")]
    # the analysis that succeeded is committed in the staging folder; nothing else is there
    stage, = job_dir.glob(".out.partial-*")
    assert sorted(p.name for p in (stage / "results.zarr").iterdir()) == ["paired", "zarr.json"]
    assert not (stage / "pending").exists()


def test_an_interrupted_job_resumes_where_it_stopped(job_dir, client, monkeypatch):
    """A run that fails after some analyses were committed: the next run of the same job
    computes only the others, and its results equal those of one clean run."""
    job_file = write_job(job_dir, "cohort: c.zarr\noutput: out\n" + ANALYSES)
    _run_with_a_failing_chunk(job_file, client, monkeypatch)
    out = run_job(load_job(job_file), client)
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["resumed_analyses"] == ["paired"]
    assert not list(job_dir.glob(".out.partial-*"))
    clean = run_job(load_job(write_job(job_dir, "cohort: c.zarr\noutput: clean\n" + ANALYSES,
                                       "clean.yaml")), client)
    assert json.loads((clean / "provenance.json").read_text())["resumed_analyses"] == []
    for name in ("welch", "paired"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"),
                                      pd.read_parquet(clean / f"{name}.parquet"))


def test_a_changed_job_does_not_resume_an_older_one(job_dir, client, monkeypatch):
    """The staging folder is named by the job's fingerprint: another seed, options or data
    start afresh, and the older partial results are removed."""
    job_file = write_job(job_dir, "cohort: c.zarr\noutput: out\n" + ANALYSES)
    _run_with_a_failing_chunk(job_file, client, monkeypatch)
    old, = job_dir.glob(".out.partial-*")
    job_file = write_job(job_dir, "cohort: c.zarr\noutput: out\nseed: 5\n" + ANALYSES)
    out = run_job(load_job(job_file), client)
    assert json.loads((out / "provenance.json").read_text())["resumed_analyses"] == []
    assert not old.exists()


def test_a_job_refused_at_planning_leaves_nothing(job_dir, client):
    job_file = write_job(job_dir, "cohort: c.zarr\noutput: out\n" + ANALYSES.replace(
        "case: case\n    control: control\n    pair_by", "case: nobody\n    control: control\n    pair_by"))
    with pytest.raises(InputError, match="nobody"):
        run_job(load_job(job_file), client)
    assert [p.name for p in job_dir.iterdir() if p.name.startswith(".")] == []


MODELS = """
analyses:
  - name: limma_two_group
    test: limma
    group: group
    case: case
    control: control
  - name: limma_design
    test: limma
    design: "~ group + age"
    coef: "group[T.control]"
    reference: {group: case}
    trend: true
  - name: ols_design
    test: ols
    design: "~ group + age"
    contrast: {"group[T.control]": -1}
    adjust: bonferroni
families:
  - name: models
    analyses: [limma_two_group, ols_design]
    method: holm
"""


def test_linear_models_and_families_through_the_runner(job_dir, client):
    from engine.stats.multitest import METHODS

    job_file = write_job(job_dir, "cohort: c.zarr\noutput: out\n" + MODELS)
    out = run_job(load_job(job_file), client, job_file=job_file)
    two = pd.read_csv(out / "limma_two_group.tsv", sep="\t", na_values=["NA"])
    design = pd.read_csv(out / "limma_design.tsv", sep="\t", na_values=["NA"])
    ols_ = pd.read_csv(out / "ols_design.tsv", sep="\t", na_values=["NA"])
    assert list(two.columns[:6]) == ["gene", "symbol", "effect", "ave_expr", "statistic",
                                     "p_value"]
    assert {"b", "df_prior", "s2_prior", "df_total"} <= set(design.columns)
    np.testing.assert_allclose(ols_["p_adj"], METHODS["bonferroni"](ols_["p_value"].to_numpy()))
    # the family: holm over the p-values of both tables together
    p = np.concatenate([two["p_value"], ols_["p_value"]])
    np.testing.assert_allclose(np.concatenate([two["p_adj_family"], ols_["p_adj_family"]]),
                               METHODS["holm"](p))
    assert "p_adj_family" not in design.columns
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["multiple_testing"]["families"] == [
        {"name": "models", "method": "holm", "analyses": ["limma_two_group", "ols_design"],
         "tests": int(np.isfinite(p).sum())}]
    assert prov["multiple_testing"]["analyses"]["ols_design"]["method"] == "bonferroni"


def test_limma_two_group_equals_the_design_form(job_dir):
    job = load_job(write_job(job_dir, "cohort: c.zarr\noutput: out\n" + MODELS))
    planned = plan_job(job)
    two = planned["limma_two_group"].compute()
    again = plan_job(job.model_copy(update={"analyses": [job.analyses[0].model_copy(update={
        "design": "~ group", "coef": "group[T.control]", "reference": {"group": "case"},
        "group": None, "case": None, "control": None})]}))["limma_two_group"].compute()
    np.testing.assert_allclose(two["statistic"], -again["statistic"], rtol=1e-10)
    np.testing.assert_allclose(two["p_value"], again["p_value"], rtol=1e-10)


def test_two_analyses_of_one_kind_keep_their_own_results(job_dir):
    """Task keys carry a token of the inputs: swapped groups must not share a graph key."""
    import dask

    body = ANALYSES.replace("name: paired", "name: swapped").replace(
        "test: paired_t", "test: welch").replace("    pair_by: patient\n", "")
    body = body.replace("name: swapped\n    test: welch\n    group: group\n    case: case\n"
                        "    control: control", "name: swapped\n    test: welch\n    group: group\n"
                        "    case: control\n    control: case")
    job = load_job(write_job(job_dir, "cohort: c.zarr\noutput: out\n" + body))
    planned = plan_job(job)
    welch, swapped = dask.compute(planned["welch"], planned["swapped"])
    np.testing.assert_array_equal(welch["statistic"].values, -swapped["statistic"].values)


def test_ancova_job_writes_term_slope_and_mean_tables(job_dir, client):
    body = """
analyses:
  - name: anc
    test: ancova
    design: "~ group * age"
    slope_of: age
    slope_by: group
    means_of: group
    anova_type: 3
"""
    out = run_job(load_job(write_job(job_dir, "cohort: c.zarr\noutput: out\n" + body)), client)
    terms = pd.read_csv(out / "anc.tsv", sep="\t", na_values=["NA"])
    assert list(terms.columns[:3]) == ["term", "gene", "symbol"]
    assert list(pd.unique(terms["term"])) == ["group", "age", "group:age"]
    assert terms.groupby("term", sort=False)["p_value"].apply(
        lambda p: p.dropna().is_monotonic_increasing).all()
    slopes = pd.read_csv(out / "anc.slope_at.tsv", sep="\t", na_values=["NA"])
    assert set(slopes["slope_at"]) == {"all", "case", "control"}
    means = pd.read_csv(out / "anc.mean_at.tsv", sep="\t", na_values=["NA"])
    assert set(means["mean_at"]) == {"case", "control"} and "mean_ci_low" in means


def test_cox_and_kaplan_meier_jobs(tmp_path, client):
    from conftest import write_cohort_files

    files = write_cohort_files(tmp_path, n_genes=30, n_per_group=15, seed=4)
    sheet = pd.read_csv(files["samples"], sep="\t", dtype=str)
    rng = np.random.default_rng(1)
    sheet["months"] = np.round(rng.exponential(20, len(sheet)), 1)
    sheet["status"] = np.where(rng.random(len(sheet)) < 0.7, "dead", "alive")
    sheet.to_csv(files["samples"], sep="\t", index=False)
    ingest(files["matrix"], files["samples"], tmp_path / "c.zarr", genes=files["genes"])
    body = """
analyses:
  - name: cox_split
    test: cox
    time: months
    event: status
    event_value: dead
    split: median
    stratify_by: group
  - name: km
    test: kaplan_meier
    time: months
    event: status
    event_value: dead
    group: G003
    split: median
"""
    out = run_job(load_job(write_job(tmp_path, "cohort: c.zarr\noutput: out\n" + body)), client)
    cox = pd.read_csv(out / "cox_split.tsv", sep="\t", na_values=["NA"])
    assert list(cox.columns[:3]) == ["stratum", "gene", "symbol"]
    assert {"hazard_ratio", "ci_low", "ci_high", "p_logrank", "n_events"} <= set(cox.columns)
    assert set(cox["stratum"]) == {"case", "control"}
    km = pd.read_csv(out / "km.tsv", sep="\t", na_values=["NA"])
    assert set(km["group"]) == {"low", "high"} and km["p_value"].nunique() == 1
    curve = pd.read_csv(out / "km.curve.tsv", sep="\t", na_values=["NA"])
    assert curve["time"].notna().all() and set(curve["group"]) == {"low", "high"}
    assert (curve.groupby("group")["survival"].apply(lambda s: s.is_monotonic_decreasing)).all()


def test_correlation_job_with_strata_and_a_gene_screen(job_dir, client):
    body = """
analyses:
  - name: age_rho
    test: spearman
    covariate: age
    stratify_by: group
  - name: screen
    test: pearson
    gene: G003
"""
    out = run_job(load_job(write_job(job_dir, "cohort: c.zarr\noutput: out\n" + body)), client)
    rho = pd.read_csv(out / "age_rho.tsv", sep="\t", na_values=["NA"])
    assert list(rho.columns) == ["stratum", "gene", "symbol", "statistic", "p_value", "p_adj",
                                 "ci_low", "ci_high", "n"]
    screen = pd.read_csv(out / "screen.tsv", sep="\t", na_values=["NA"])
    assert screen.loc[0, "gene"] == "G003" and screen.loc[0, "statistic"] == 1.0


def test_logistic_job_with_interaction(job_dir, client):
    body = """
analyses:
  - name: or_per_sd
    test: logistic
    outcome: group
    event: case
    covariates: [age]
"""
    out = run_job(load_job(write_job(job_dir, "cohort: c.zarr\noutput: out\n" + body)), client)
    table = pd.read_csv(out / "or_per_sd.tsv", sep="\t", na_values=["NA"])
    assert {"odds_ratio", "ci_low", "ci_high", "separated", "converged"} <= set(table.columns)
    assert table["n"].dtype.kind in "iu" or str(table["n"].dtype) == "Int64"
