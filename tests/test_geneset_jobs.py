"""Gene-set analyses in jobs: table layout, score matrices as variables, rankings and gene
lists from earlier analyses, and the errors. The statistics themselves are checked against
R and reference implementations in test_scores, test_gsva, test_gsea, test_phenotype and
test_ora; here each job output is compared with the same computation done by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from distributed import Client

from engine.errors import InputError
from engine.genesets import load_gene_sets, map_gene_sets
from engine.jobs import load_job, plan_job, run_job
from engine.stats.gsea import gsea_preranked
from engine.jobs.set_planners import analysis_key
from engine.stats.scores import single_sample_scores
from conftest import read_table, write_job
from engine.store import open_cohort

WELCH = """
  - name: welch
    test: welch
    group: mol.biol
    case: BCR/ABL
    control: NEG
"""


@pytest.fixture(scope="module")
def client():
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def run(all_store, client, tmp_path_factory):
    """One job with every kind of gene-set analysis on the ALL cohort."""
    tmp = tmp_path_factory.mktemp("setjob")
    (tmp / "sets.gmt").write_text("".join(
        f"{s.name}\tdesc\t" + "\t".join(s.genes) + "\n" for s in load_gene_sets("hallmark")[:12]))
    job = load_job(write_job(tmp, all_store, WELCH + """
  - name: ss
    test: ssgsea
    gene_sets: sets.gmt
    match: symbol
  - name: ss_delta
    test: ssgsea
    gene_sets: sets.gmt
    match: symbol
    delta: {group: mol.biol, control: NEG}
  - name: ss_welch
    test: welch
    variable: ss
    group: mol.biol
    case: BCR/ABL
    control: NEG
  - name: pre
    test: gsea_preranked
    ranking: {analysis: welch}
    gene_sets: sets.gmt
    match: symbol
    permutations: 500
    multilevel: false
  - name: ora
    test: ora
    genes_from: {analysis: welch, p_adj_below: 0.05, direction: up}
    gene_sets: sets.gmt
    match: symbol
"""))
    return job, run_job(job, client)


def test_score_tables_are_sets_by_samples(run, all_store):
    job, out = run
    cohort = open_cohort(all_store)
    table = read_table(out, "ss")
    assert list(table.columns) == ["gene_set", *cohort["sample"].values.astype(str)]
    sizes = read_table(out, "ss_sizes")
    assert list(sizes["gene_set"]) == [s.name for s in load_gene_sets(job.analyses[1].gene_sets)]
    assert not (out / "ss.gene_set.tsv").exists()
    membership = map_gene_sets(load_gene_sets(job.analyses[1].gene_sets),
                               cohort["gene"].values.astype(str),
                               symbols=cohort["symbol"].values.astype(str), match="symbol")
    expected = single_sample_scores(cohort, membership, method="ssgsea")["score"].values
    np.testing.assert_array_equal(table.iloc[:, 1:].to_numpy(), expected)
    np.testing.assert_array_equal(sizes["size_mapped"], membership.sizes["size_mapped"])


def test_delta_scores_subtract_the_control_mean(run, all_store):
    _, out = run
    neg = open_cohort(all_store)["mol.biol"].values.astype(str) == "NEG"
    scores = read_table(out, "ss").iloc[:, 1:].to_numpy()
    delta = read_table(out, "ss_delta").iloc[:, 1:]
    expected = scores - scores[:, neg].mean(axis=1, keepdims=True)
    np.testing.assert_allclose(delta.to_numpy(), expected, rtol=0, atol=1e-15)


def test_score_matrix_is_a_variable_for_later_tests(run, all_store):
    _, out = run
    groups = open_cohort(all_store)["mol.biol"].values.astype(str)
    scores = read_table(out, "ss").set_index("gene_set")
    result = read_table(out, "ss_welch").set_index("gene_set").loc[scores.index]
    case, control = scores.loc[:, groups == "BCR/ABL"], scores.loc[:, groups == "NEG"]
    t, p = scipy.stats.ttest_ind(case, control, axis=1, equal_var=False)
    np.testing.assert_allclose(result["statistic"], t, rtol=1e-9)
    np.testing.assert_allclose(result["p_value"], p, rtol=1e-9)


def test_preranked_uses_the_earlier_analysis_statistic(run, all_store):
    job, out = run
    cohort = open_cohort(all_store)
    welch = read_table(out, "welch").set_index("gene").loc[cohort["gene"].values.astype(str)]
    membership = map_gene_sets(load_gene_sets(job.analyses[4].gene_sets),
                               cohort["gene"].values.astype(str),
                               symbols=cohort["symbol"].values.astype(str), match="symbol")
    # duplicates: max_abs (the default) keeps each symbol's probe of largest |t|
    statistic = welch["statistic"].to_numpy().copy()
    frame = pd.DataFrame({"symbol": cohort["symbol"].values.astype(str),
                          "size": np.abs(statistic)}).dropna()
    frame = frame[~frame["symbol"].isin(["", "nan", "NA"])]
    keep = frame.groupby("symbol", sort=False)["size"].idxmax().to_numpy()
    statistic[np.setdiff1d(np.arange(statistic.size), keep)] = np.nan
    direct = gsea_preranked(statistic, membership.index_lists(),
                            permutations=500, seed=7, key=analysis_key("pre"), multilevel=False)
    table = read_table(out, "pre").set_index("gene_set").loc[membership.names]
    assert (table["size"] < membership.matrix.sum(axis=1).A1).any()  # duplicates were dropped
    for column in ("size", "es", "nes", "p_value"):
        np.testing.assert_array_equal(table[column], direct[column])


def test_ora_selects_genes_from_the_earlier_analysis(run, all_store):
    job, out = run
    cohort = open_cohort(all_store)
    welch = read_table(out, "welch").set_index("gene").loc[cohort["gene"].values.astype(str)]
    selected = ((welch["p_adj"] < 0.05) & (welch["effect"] > 0)).to_numpy()
    universe = np.isfinite(welch["p_value"]).to_numpy()
    membership = map_gene_sets(load_gene_sets(job.analyses[5].gene_sets),
                               cohort["gene"].values.astype(str),
                               symbols=cohort["symbol"].values.astype(str), match="symbol")
    table = read_table(out, "ora").set_index("gene_set")
    for i, name in enumerate(membership.names):
        members = np.zeros(len(selected), bool)
        members[membership.members(i)] = True
        k, n_sel, n_all = (members & universe).sum(), (selected & universe).sum(), universe.sum()
        x = (members & selected & universe).sum()
        assert table.loc[name, "overlap"] == x
        p = scipy.stats.hypergeom.sf(x - 1, n_all, k, n_sel)
        assert table.loc[name, "p_value"] == pytest.approx(p, rel=1e-9)


def test_planning_set_analyses_computes_nothing(all_store, tmp_path, no_compute):
    job = load_job(write_job(tmp_path, all_store, WELCH + """
  - name: gs
    test: gsva
    gene_sets: hallmark
  - name: pre
    test: gsea_preranked
    ranking: {analysis: welch}
    gene_sets: hallmark
  - name: ph
    test: gsea_phenotype
    group: mol.biol
    case: BCR/ABL
    control: NEG
    gene_sets: icr
  - name: ora
    test: ora
    genes_from: {analysis: welch, p_value_below: 0.01}
    gene_sets: hallmark
  - name: gs_t
    test: welch
    variable: gs
    group: mol.biol
    case: BCR/ABL
    control: NEG
"""))
    cohort = open_cohort(all_store)
    with no_compute():
        planned = plan_job(job, cohort)
    assert planned["gs_t"]["p_value"].dims == ("gene_set",)


@pytest.mark.parametrize("analyses, message", [
    ("""
  - name: pre
    test: gsea_preranked
    ranking: {analysis: welch}
    gene_sets: hallmark
""" + WELCH, "reads analysis 'welch', which is not listed before it"),
    ("""
  - name: s
    test: ssgsea
    gene_sets: hallmark
    kcdf: poisson
""", "kcdf is a gsva option, not a ssgsea option"),
    ("""
  - name: o
    test: ora
    gene_sets: hallmark
""", "give exactly one of genes_from or genes"),
    ("""
  - name: s
    test: zscore
    gene_sets: hallmark
  - name: o
    test: ora
    genes_from: {analysis: s, p_value_below: 0.05}
    gene_sets: hallmark
""", "a score matrix without per-gene results"),
])
def test_spec_errors(tmp_path, all_store, analyses, message):
    with pytest.raises(InputError, match=message):
        load_job(write_job(tmp_path, all_store, analyses))


def test_plan_errors_name_the_fix(tmp_path, all_store):
    cases = [
        ("""
  - name: s
    test: ssgsea
    gene_sets: no_such_library
""", "bundled"),
        ("""
  - name: s
    test: ssgsea
    gene_sets: hallmark
    match: id
""", "match"),
        (WELCH + """
  - name: pre
    test: gsea_preranked
    ranking: {analysis: welch, column: nes}
    gene_sets: hallmark
""", "has no column 'nes'"),
        ("""
  - name: t
    test: welch
    variable: nothing
    group: mol.biol
    case: BCR/ABL
    control: NEG
""", "not a \\(gene, sample\\) variable"),
    ]
    cohort = open_cohort(all_store)
    for analyses, message in cases:
        with pytest.raises(InputError, match=message):
            plan_job(load_job(write_job(tmp_path, all_store, analyses)), cohort)


@pytest.mark.slow
def test_set_analyses_identical_across_chunkings_workers_and_processes(tmp_path):
    """Scores and permutation results, through the runner: the same bytes for two gene
    chunkings and for 1 threaded worker vs 2 worker processes (same seed)."""
    from engine.cluster import dask_client
    from engine.datasets import ingest_all

    analyses = WELCH + """
  - {name: ss, test: ssgsea, gene_sets: sets.gmt, match: symbol, samples_per_chunk: 50}
  - {name: gs, test: gsva, gene_sets: sets.gmt, match: symbol, samples_per_chunk: 50}
  - name: pre
    test: gsea_preranked
    ranking: {analysis: welch}
    gene_sets: sets.gmt
    match: symbol
    permutations: 1000
  - name: ph
    test: gsea_phenotype
    group: mol.biol
    case: BCR/ABL
    control: NEG
    gene_sets: sets.gmt
    match: symbol
    permutations: 300
"""
    (tmp_path / "sets.gmt").write_text("".join(
        f"{s.name}\td\t" + "\t".join(s.genes) + "\n" for s in load_gene_sets("hallmark")[:6]))
    runs = {}
    for label, chunk, kwargs in (("threads", 5000, dict(workers=1, processes=False)),
                                 ("2 processes", 977, dict(workers=2))):
        store = ingest_all(tmp_path / f"all{chunk}.zarr", chunk_genes=chunk)
        job_file = write_job(tmp_path, store, analyses)
        job_file.write_text(job_file.read_text().replace("output: out", f"output: out{chunk}"))
        with dask_client(quiet=True, **kwargs) as client:
            out = run_job(load_job(job_file), client)
        runs[label] = {n: (out / f"{n}.tsv").read_bytes() for n in ("ss", "gs", "pre", "ph")}
    assert runs["threads"] == runs["2 processes"]
