"""Deterministic task keys: planning the same analysis twice gives the same Dask keys.

A sweep submits many units as one graph; units that share a cohort and an analysis must
produce identical keys for that analysis, so Dask computes the shared tasks once. Every
analysis type of the job file is planned twice here, each time on its own ``open_cohort`` of
the same store, and the key sets of every lazy result must be equal; they must differ when
an input that matters differs (seed, labels, gene sets), or units would share wrong results.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from engine.jobs import load_job, plan_job
from engine.jobs.spec import ANALYSES
from engine.preprocess.pipeline import apply_steps
from engine.store import ingest, open_cohort

N_GENES, N_PER_GROUP = 48, 8


def keys(result) -> set:
    """Every key of a lazy result's graph (none for a result held in memory)."""
    graph = result.__dask_graph__()
    return set() if graph is None else set(dict(graph))


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict:
    """An expression store (48 genes in 3 chunks, 16 samples in pairs, two probes per symbol,
    clinical annotations for every kind of model), a counts store, two GMT libraries and a
    .rnk ranking."""
    tmp = tmp_path_factory.mktemp("keys")
    rng = np.random.default_rng(11)
    n = 2 * N_PER_GROUP
    x = rng.normal(8.0, 1.0, (N_GENES, n))
    x[:12, :N_PER_GROUP] += 2.0
    x[-1, 0] = np.nan  # one missing value, in no clustered set
    genes = [f"G{i:02d}" for i in range(N_GENES)]
    samples = [f"S{j:02d}" for j in range(n)]
    pd.DataFrame(x, index=pd.Index(genes, name="gene"), columns=samples).to_csv(
        tmp / "m.tsv", sep="\t")
    pd.DataFrame({"gene": genes, "symbol": [f"SYM{i // 2}" for i in range(N_GENES)]}).to_csv(
        tmp / "g.tsv", sep="\t", index=False)
    pd.DataFrame({"sample": samples,
                  "group": ["case"] * N_PER_GROUP + ["control"] * N_PER_GROUP,
                  "patient": [f"P{j % N_PER_GROUP}" for j in range(n)],
                  "age": rng.integers(30, 80, n), "score": rng.normal(size=n),
                  "score2": rng.normal(size=n), "level": (["a", "b", "c", "a"] * n)[:n],
                  "response": (["yes", "no", "no", "yes", "no"] * n)[:n],
                  "months": rng.exponential(20.0, n).round(1),
                  "status": np.where(np.arange(n) % 3 == 0, "alive", "dead")}).to_csv(
        tmp / "s.tsv", sep="\t", index=False)
    expression = ingest(tmp / "m.tsv", tmp / "s.tsv", tmp / "e.zarr", genes=tmp / "g.tsv",
                        chunk_genes=16)

    rng = np.random.default_rng(3)  # counts as test_preprocess_jobs.count_cohort makes them
    mean = rng.gamma(1.0, 200.0, 120)[:, None] * rng.uniform(0.5, 2.0, 10)[None, :]
    counts = rng.poisson(mean * rng.gamma(5.0, 0.2, mean.shape))  # negative binomial
    counts[:3] = 0
    counts[3:6] = rng.integers(0, 3, (3, 10))
    pd.DataFrame(counts.astype(np.int64), columns=samples[:10],
                 index=pd.Index([f"G{i:02d}" for i in range(120)], name="gene")).to_csv(
        tmp / "c.tsv", sep="\t")
    pd.DataFrame({"sample": samples[:10], "condition": ["A"] * 5 + ["B"] * 5,
                  "patient": [f"P{j % 5}" for j in range(10)]}).to_csv(
        tmp / "cs.tsv", sep="\t", index=False)
    count_store = ingest(tmp / "c.tsv", tmp / "cs.tsv", tmp / "c.zarr", scale="counts",
                         chunk_genes=16)

    def gmt(path, sets):
        path.write_text("".join(f"{name}\tdesc\t" + "\t".join(members) + "\n"
                                for name, members in sets.items()))
        return str(path)

    sets = {"UP": genes[:12], "MIXED": genes[6:20], "NOISE": genes[24:40]}
    other = {"UP_HALF": genes[:6], "LATE": genes[30:46]}
    symbols = {"SYM_UP": [f"SYM{i}" for i in range(6)],
               "SYM_REST": [f"SYM{i}" for i in range(8, 20)]}
    pd.DataFrame({"gene": genes, "value": rng.normal(size=N_GENES)}).to_csv(
        tmp / "r.rnk", sep="\t", header=False, index=False)
    return {"expression": expression, "counts": count_store, "tmp": tmp,
            "sets": gmt(tmp / "sets.gmt", sets), "other": gmt(tmp / "other.gmt", other),
            "symbols": gmt(tmp / "symbols.gmt", symbols), "rnk": str(tmp / "r.rnk")}


TWO_GROUP = {"group": "group", "case": "case", "control": "control"}
PAIRED = {**TWO_GROUP, "pair_by": "patient"}
SURVIVAL = {"time": "months", "event": "status", "event_value": "dead"}
BOOT = {"replicates": 100}

#: Every kind of analysis of the job file, as (store, analyses): the last analysis is the case;
#: earlier ones are what it reads. "SETS", "OTHER", "SYMBOLS" and "RNK" name the files.
CASES = {
    "welch": ("expression", [{"test": "welch", **TWO_GROUP}]),
    "student_features": ("expression", [{"test": "student", **TWO_GROUP,
                                         "features": ["score", "score2"]}]),
    "paired_t": ("expression", [{"test": "paired_t", **PAIRED}]),
    "mann_whitney": ("expression", [{"test": "mann_whitney", **TWO_GROUP}]),
    "wilcoxon_signed_rank": ("expression", [{"test": "wilcoxon_signed_rank", **PAIRED}]),
    "welch_resampled": ("expression", [{
        "test": "welch", **TWO_GROUP, "fold_change_base": 2, "permutations": 300,
        "bootstrap": {**BOOT, "by": "patient", "strata": False, "method": "bca"}}]),
    "paired_resampled": ("expression", [{"test": "paired_t", **PAIRED, "permutations": 100,
                                         "bootstrap": {**BOOT, "method": "studentized"}}]),
    "mann_whitney_permutations": ("expression", [{"test": "mann_whitney", **TWO_GROUP,
                                                  "permutations": 500}]),
    "welch_poisson_bootstrap": ("expression", [{
        "test": "welch", **TWO_GROUP, "bootstrap": {**BOOT, "weights": "poisson",
                                                     "method": "percentile"}}]),
    "welch_samples": ("expression", [{"test": "welch", **TWO_GROUP,
                                      "samples": {"where": "level != 'c'"}}]),
    "welch_sample_ids": ("expression", [{"test": "welch", **TWO_GROUP, "samples": {
        "ids": [f"S{j:02d}" for j in range(1, 2 * N_PER_GROUP)]}}]),
    "limma_two_group": ("expression", [{"test": "limma", **TWO_GROUP}]),
    "limma_paired": ("expression", [{"test": "limma", **PAIRED}]),
    "limma_design": ("expression", [{"test": "limma", "design": "~ group + age",
                                     "coef": "group[T.control]", "reference": {"group": "case"},
                                     "trend": True, "robust": True}]),
    "limma_bootstrap": ("expression", [{"test": "limma", **TWO_GROUP, "bootstrap": BOOT}]),
    "ols_design": ("expression", [{"test": "ols", "design": "~ level + age",
                                   "contrast": {"level[T.b]": 1, "level[T.c]": -1}}]),
    "ols_bootstrap": ("expression", [{"test": "ols", "design": "~ group + age",
                                      "coef": "group[T.control]", "bootstrap": BOOT}]),
    "ancova": ("expression", [{"test": "ancova", "design": "~ group * age", "slope_of": "age",
                               "slope_by": "group", "means_of": "group", "anova_type": 3}]),
    "ancova_features": ("expression", [{"test": "ancova", "design": "~ level + age",
                                        "features": ["score", "score2"]}]),
    "spearman_strata": ("expression", [{"test": "spearman", "covariate": "age",
                                        "stratify_by": "level"}]),
    "spearman_exact": ("expression", [{"test": "spearman", "covariate": "score",
                                       "exact": True}]),
    "pearson_gene": ("expression", [{"test": "pearson", "gene": "G03"}]),
    "spearman_bootstrap": ("expression", [{"test": "spearman", "covariate": "age",
                                           "bootstrap": BOOT}]),
    "logistic": ("expression", [{"test": "logistic", "outcome": "response", "event": "yes",
                                 "covariates": ["age"], "predictor_scale": "median"}]),
    "logistic_interaction": ("expression", [{"test": "logistic", "outcome": "response",
                                             "event": "yes", "interaction": "group",
                                             "features": ["score", "score2"]}]),
    "logistic_bootstrap": ("expression", [{"test": "logistic", "outcome": "group",
                                           "event": "case", "features": ["score"],
                                           "bootstrap": BOOT}]),
    "cox": ("expression", [{"test": "cox", **SURVIVAL, "split": "median",
                            "covariates": ["age"], "stratify_by": "group"}]),
    "cox_bootstrap": ("expression", [{"test": "cox", **SURVIVAL, "ties": "breslow",
                                      "bootstrap": BOOT}]),
    "kaplan_meier_gene": ("expression", [{"test": "kaplan_meier", **SURVIVAL, "group": "G03",
                                          "split": "median"}]),
    "kaplan_meier_group": ("expression", [{"test": "kaplan_meier", **SURVIVAL,
                                           "group": "level"}]),
    "consensus_genes": ("expression", [{"test": "consensus_cluster",
                                        "genes": [f"G{i:02d}" for i in range(12)], "k_max": 4,
                                        "resamples": 150, "linkage": "ward.D2",
                                        "distance": "euclidean"}]),
    "consensus_set": ("expression", [{"test": "consensus_cluster", "gene_sets": "SETS",
                                      "gene_set": "MIXED", "k_max": 3, "resamples": 120,
                                      "p_feature": 0.8, "algorithm": "km",
                                      "distance": "euclidean", "center": "median"}]),
    "deseq2": ("counts", [{"test": "deseq2", "group": "condition", "case": "B",
                           "control": "A"}]),
    "deseq2_design": ("counts", [{"test": "deseq2", "group": "condition", "case": "B",
                                  "control": "A", "design": "~ patient + condition",
                                  "fit_type": "mean", "size_factors": "poscounts"}]),
    "ssgsea": ("expression", [{"test": "ssgsea", "gene_sets": "SETS",
                               "samples_per_chunk": 5}]),
    "ssgsea_delta_collapse": ("expression", [{"test": "ssgsea", "gene_sets": "SYMBOLS",
                                              "collapse": "max_mean", "normalize": False,
                                              "delta": {"group": "group",
                                                        "control": "control"}}]),
    "gsva": ("expression", [{"test": "gsva", "gene_sets": "SETS", "samples_per_chunk": 6}]),
    "gsva_counts": ("counts", [{"test": "gsva", "gene_sets": "SETS", "kcdf": "poisson"}]),
    "zscore": ("expression", [{"test": "zscore", "gene_sets": "SETS"}]),
    "plage": ("expression", [{"test": "plage", "gene_sets": "SETS"}]),
    "signature_score": ("expression", [{"test": "signature_score", "gene_sets": "SETS",
                                        "signature": "mean_z"}]),
    "score_then_welch": ("expression", [
        {"name": "scores", "test": "ssgsea", "gene_sets": "SETS"},
        {"test": "welch", **TWO_GROUP, "variable": "scores", "permutations": 200}]),
    "score_then_limma": ("expression", [
        {"name": "scores", "test": "gsva", "gene_sets": "SETS"},
        {"test": "limma", "design": "~ level", "coef": "level[T.b]", "variable": "scores"}]),
    "ora_from_analysis": ("expression", [
        {"name": "de", "test": "welch", **TWO_GROUP},
        {"test": "ora", "gene_sets": "SETS",
         "genes_from": {"analysis": "de", "p_value_below": 0.5, "direction": "up"}}]),
    "ora_cohort_universe": ("expression", [
        {"name": "de", "test": "limma", **TWO_GROUP},
        {"test": "ora", "gene_sets": "SETS", "universe": "cohort",
         "genes_from": {"analysis": "de", "abs_effect_above": 0.5}}]),
    "ora_genes": ("expression", [{"test": "ora", "gene_sets": "SETS",
                                  "genes": ["G00", "G01", "G02", "G30"]}]),
    "gsea_preranked_analysis": ("expression", [
        {"name": "de", "test": "welch", **TWO_GROUP, "permutations": 200,
         "bootstrap": BOOT},
        {"test": "gsea_preranked", "gene_sets": "SETS", "permutations": 100,
         "ranking": {"analysis": "de", "column": "statistic"}}]),
    "gsea_preranked_symbols": ("expression", [
        {"name": "de", "test": "limma", **TWO_GROUP},
        {"test": "gsea_preranked", "gene_sets": "SYMBOLS", "match": "symbol",
         "permutations": 100, "ranking": {"analysis": "de", "column": "effect"}}]),
    "gsea_preranked_stratum": ("expression", [
        {"name": "rho", "test": "spearman", "covariate": "age", "stratify_by": "group"},
        {"test": "gsea_preranked", "gene_sets": "SETS", "permutations": 100,
         "multilevel": False,
         "ranking": {"analysis": "rho", "column": "statistic", "stratum": "case"}}]),
    "gsea_preranked_file": ("expression", [{"test": "gsea_preranked", "gene_sets": "SETS",
                                            "ranking": "RNK", "permutations": 100}]),
    "gsea_phenotype": ("expression", [{"test": "gsea_phenotype", "gene_sets": "SETS",
                                       **TWO_GROUP, "permutations": 50}]),
    "gsea_phenotype_collapse": ("expression", [{
        "test": "gsea_phenotype", "gene_sets": "SYMBOLS", "collapse": "max_variance",
        **TWO_GROUP, "metric": "t_test", "permutations": 20000, "exhaustive": False}]),
    "gsea_phenotype_exhaustive": ("expression", [{
        "test": "gsea_phenotype", "gene_sets": "SETS", **TWO_GROUP,
        "samples": {"where": "level != 'a'"}, "permutations": 1000}]),
}


def _job(stores, case: str, seed: int = 7, change: dict | None = None, steps=None):
    """The job of ``CASES[case]``, its last analysis named ``case`` and updated with
    ``change``; ``steps`` as its ``preprocess:``."""
    store, analyses = CASES[case]
    files = {"SETS": stores["sets"], "OTHER": stores["other"], "SYMBOLS": stores["symbols"],
             "RNK": stores["rnk"]}
    analyses = [dict(a) for a in analyses]
    analyses[-1] = {"name": case, **analyses[-1], **(change or {})}
    for a in analyses:
        for key in ("gene_sets", "ranking"):
            if isinstance(a.get(key), str):
                a[key] = files.get(a[key], a[key])
    path = stores["tmp"] / f"{case}.yaml"
    path.write_text(yaml.safe_dump({"cohort": str(stores[store]), "output": "out",
                                    "seed": seed, "analyses": analyses,
                                    "preprocess": steps or []}))
    return load_job(path)


def _plan(job, no_compute):
    """Planned results on a fresh ``open_cohort`` of the job's store (computing nothing)."""
    with no_compute():
        return plan_job(job, open_cohort(job.cohort))


def test_every_analysis_type_has_a_case():
    tested = {a["test"] for _, analyses in CASES.values() for a in analyses}
    every = {t for model in ANALYSES for t in model.model_fields["test"].annotation.__args__}
    assert tested == every


@pytest.mark.parametrize("case", CASES)
def test_planning_twice_gives_identical_keys(stores, case, no_compute):
    job = _job(stores, case)
    first, second = _plan(job, no_compute), _plan(job, no_compute)
    assert first.keys() == second.keys()
    for name in first:
        a, b = keys(first[name]), keys(second[name])
        assert a == b, f"{name}: {len(a - b)} keys differ, e.g. {sorted(map(str, a - b))[:3]}"
    # what an analysis reads from an earlier one is the same tasks, not a copy of them
    read = _reads(job.analyses[-1], list(first))
    if read is not None:
        assert keys(first[read[0]][read[1]]) <= keys(first[case])
    else:
        assert len(first) == 1


def _reads(analysis, planned: list[str]) -> tuple[str, str] | None:
    """(earlier analysis, column) that ``analysis`` reads, if any."""
    ranking = getattr(analysis, "ranking", None)
    genes_from = getattr(analysis, "genes_from", None)
    if ranking is not None and not isinstance(ranking, str):
        return ranking.analysis, ranking.column
    if genes_from is not None:
        return genes_from.analysis, "p_value"
    if getattr(analysis, "variable", None) in planned:
        return analysis.variable, "score"
    return None


RANDOM = ["welch_resampled", "paired_resampled", "mann_whitney_permutations",
          "welch_poisson_bootstrap", "limma_bootstrap", "ols_bootstrap", "spearman_bootstrap",
          "logistic_bootstrap", "cox_bootstrap", "consensus_genes", "consensus_set",
          "score_then_welch", "gsea_preranked_analysis", "gsea_preranked_file",
          "gsea_phenotype", "gsea_phenotype_collapse", "gsea_preranked_symbols",
          "gsea_preranked_stratum"]


@pytest.mark.parametrize("case", RANDOM)
def test_another_seed_gives_other_keys(stores, case, no_compute):
    a = _plan(_job(stores, case, seed=7), no_compute)[case]
    b = _plan(_job(stores, case, seed=8), no_compute)[case]
    assert keys(a) != keys(b)


@pytest.mark.parametrize("case", sorted(set(CASES) - set(RANDOM)
                                         - {"gsea_phenotype_exhaustive"}))
def test_the_seed_does_not_change_the_keys_of_deterministic_analyses(stores, case, no_compute):
    """A sweep over seeds still shares every analysis that draws nothing at random."""
    a = _plan(_job(stores, case, seed=7), no_compute)[case]
    b = _plan(_job(stores, case, seed=8), no_compute)[case]
    assert keys(a) == keys(b)


SWAPPED = {"case": "control", "control": "case"}


@pytest.mark.parametrize("case, change", [
    ("welch", SWAPPED), ("paired_t", SWAPPED), ("mann_whitney", SWAPPED),
    ("welch_resampled", SWAPPED), ("welch_resampled", {"permutations": 301}),
    ("welch_resampled", {"bootstrap": {**BOOT, "method": "percentile"}}),
    ("welch_samples", {"samples": {"where": "level != 'b'"}}),
    ("limma_two_group", SWAPPED), ("limma_design", {"robust": False}),
    ("ols_design", {"contrast": {"level[T.b]": 1}}),
    ("ancova", {"anova_type": 2}), ("spearman_strata", {"covariate": "score"}),
    ("pearson_gene", {"gene": "G04"}), ("logistic", {"event": "no"}),
    ("cox", {"split": 0.25}), ("kaplan_meier_gene", {"group": "G04"}),
    ("consensus_genes", {"resamples": 151}), ("deseq2", {"case": "A", "control": "B"}),
    ("ssgsea", {"alpha": 0.5}), ("ssgsea", {"gene_sets": "OTHER"}), ("gsva", {"tau": 0.5}),
    ("zscore", {"gene_sets": "OTHER"}), ("plage", {"gene_sets": "OTHER"}),
    ("score_then_welch", SWAPPED),
    ("ora_from_analysis", {"genes_from": {"analysis": "de", "p_value_below": 0.4}}),
    ("ora_genes", {"genes": ["G00", "G01", "G02"]}),
    ("gsea_preranked_analysis", {"gene_sets": "OTHER"}),
    ("gsea_preranked_analysis", {"ranking": {"analysis": "de", "column": "effect"}}),
    ("gsea_preranked_analysis", {"weight": 0.0}), ("gsea_phenotype", SWAPPED),
    ("gsea_phenotype", {"gene_sets": "OTHER"}), ("gsea_phenotype", {"metric": "t_test"}),
])
def test_a_change_that_matters_gives_other_keys(stores, case, change, no_compute):
    a = _plan(_job(stores, case), no_compute)[case]
    b = _plan(_job(stores, case, change=change), no_compute)[case]
    assert keys(a) != keys(b)


def test_sweep_units_differing_in_a_later_library_share_the_earlier_analysis(stores,
                                                                            no_compute):
    """Two units: the same welch with permutations and bootstrap, then preranked GSEA of its
    statistic on two libraries. The welch tasks are the same keys in both (computed once in
    one graph); only the GSEA tasks differ."""
    first = _plan(_job(stores, "gsea_preranked_analysis"), no_compute)
    second = _plan(_job(stores, "gsea_preranked_analysis", change={"gene_sets": "OTHER"}),
                   no_compute)
    de = keys(first["de"])
    assert de == keys(second["de"])
    gsea_a, gsea_b = keys(first["gsea_preranked_analysis"]), keys(
        second["gsea_preranked_analysis"])
    assert gsea_a != gsea_b
    # the ranking is the welch statistic's own tasks (no copy of the welch graph), and the
    # two units share nothing but those, the statistic gathered into one vector and the gene
    # labels (one task holding the array, so that it enters the graph once)
    statistic = first["de"]["statistic"].data
    shared = gsea_a & gsea_b
    labels = {k for k in shared if isinstance(k, str) and k.startswith("ndarray-")}
    assert len(labels) == 1
    assert keys(statistic) <= shared - labels <= de | keys(statistic.rechunk(-1))


LAZY_STEPS = [
    ("expression", [{"log2": {"offset": 1}}]), ("expression", [{"quantile": {}}]),
    ("expression", [{"upper_quartile": {}}]), ("expression", [{"zscore": {}}]),
    ("expression", [{"aggregate": {"by": "patient"}}]),
    ("expression", [{"delta": {"by": "patient", "time": "group", "before": "control",
                               "after": "case"}}]),
    ("expression", [{"collapse": {"by": "symbol", "method": "max_mean"}}]),
    ("expression", [{"select_samples": {"where": "level != 'c'"}}]),
    ("counts", [{"cpm": {"method": "TMM"}}]), ("counts", [{"tmm_log_cpm": {}}]),
    ("counts", [{"cpm": {"method": "RLE", "log": True}}]), ("counts", [{"vst": {}}]),
]


def _preprocessed(stores, store: str, steps: list):
    """The lazy cohort after ``steps`` (validated as a job's ``preprocess:``)."""
    steps = _job(stores, "welch" if store == "expression" else "deseq2", steps=steps).preprocess
    return apply_steps(open_cohort(stores[store]), steps, seed=3)[0]


@pytest.mark.parametrize("store, steps", LAZY_STEPS,
                         ids=[next(iter(steps[0])) for _, steps in LAZY_STEPS])
def test_lazy_preprocessing_steps_give_identical_keys(stores, store, steps):
    """Preprocessed cohorts planned twice share their keys (a sweep's derived stores). The
    steps that decide on the data (filter_by_expr, drop_zero_genes, pca_outliers,
    nanostring) compute that decision when applied, so they are left out."""
    assert keys(_preprocessed(stores, store, steps)) == keys(_preprocessed(stores, store, steps))


@pytest.mark.parametrize("store, steps, other", [
    ("expression", [{"log2": {"offset": 1}}], [{"log2": {"offset": 2}}]),
    ("counts", [{"cpm": {"method": "TMM"}}], [{"cpm": {"method": "RLE"}}]),
    ("counts", [{"vst": {}}], [{"vst": {"fit_type": "mean"}}]),
])
def test_other_preprocessing_options_give_other_keys(stores, store, steps, other):
    assert keys(_preprocessed(stores, store, steps)) != keys(_preprocessed(stores, store, other))


class _TaskCounter:
    """A dask callback that counts the executed tasks whose key names ``word``."""

    def __init__(self, word: str):
        from dask.callbacks import Callback

        self.count = 0

        def posttask(key, result, dsk, state, worker_id):
            if word in str(key):
                self.count += 1

        self.callback = Callback(posttask=posttask)


def test_two_units_in_one_compute_run_the_shared_welch_once(stores):
    """Computed together, two units that share their welch analysis run its tasks once: as
    many welch tasks as computing one unit alone."""
    import dask

    units = [plan_job(_job(stores, "gsea_preranked_analysis", change=change),
                      open_cohort(stores["expression"]))
             for change in ({}, {"gene_sets": "OTHER"})]
    alone, together = _TaskCounter("welch"), _TaskCounter("welch")
    with alone.callback:
        dask.compute(*units[0].values(), scheduler="sync")
    with together.callback:
        results = dask.compute(*units[0].values(), *units[1].values(), scheduler="sync")
    assert alone.count > 0 and together.count == alone.count
    assert results[0].identical(results[2])


@pytest.mark.parametrize("case", ["welch_resampled", "mann_whitney_permutations",
                                  "paired_resampled", "gsea_phenotype", "consensus_genes"])
def test_a_unit_reads_each_chunk_of_the_store_once(stores, monkeypatch, case):
    """Permutation, bootstrap and clustering tasks read the array's own chunk tasks (its
    keys, not an optimised copy under other names), so one compute reads every store chunk
    once."""
    import dask
    import xarray.backends.zarr as xarray_zarr

    job = _job(stores, case)
    planned = plan_job(job, open_cohort(job.cohort))
    reads = []
    read = xarray_zarr.ZarrArrayWrapper.__getitem__
    monkeypatch.setattr(xarray_zarr.ZarrArrayWrapper, "__getitem__",
                        lambda self, key: reads.append(key) or read(self, key))
    dask.compute(*planned.values(), scheduler="sync")
    read_twice = [k for k in map(str, reads) if list(map(str, reads)).count(k) > 1]
    assert reads and not read_twice


def test_the_all_cohort_job_of_welch_limma_and_gene_sets(all_store, tmp_path, no_compute):
    """The bundled ALL cohort (12,625 probes in 3 chunks) with the Hallmark sets matched by
    symbol (the probe with the largest |statistic| per gene ranks it)."""
    two_group = {"group": "mol.biol", "case": "BCR/ABL", "control": "NEG"}
    analyses = [
        {"name": "de", "test": "welch", **two_group, "permutations": 200,
         "bootstrap": {"replicates": 100}},
        {"name": "lm", "test": "limma", **two_group},
        {"name": "gs", "test": "gsea_preranked", "gene_sets": "hallmark", "match": "symbol",
         "ranking": {"analysis": "de", "column": "statistic"}, "permutations": 100},
        {"name": "ss", "test": "ssgsea", "gene_sets": "hallmark", "match": "symbol"},
        {"name": "ph", "test": "gsea_phenotype", "gene_sets": "hallmark", "match": "symbol",
         **two_group, "permutations": 50},
        {"name": "ora", "test": "ora", "gene_sets": "hallmark", "match": "symbol",
         "genes_from": {"analysis": "lm", "p_adj_below": 0.05}}]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"cohort": str(all_store), "output": "out", "seed": 3,
                                    "analyses": analyses}))
    job = load_job(path)
    first, second = _plan(job, no_compute), _plan(job, no_compute)
    for name in first:
        assert keys(first[name]) == keys(second[name]), name
