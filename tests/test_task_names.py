"""Task names say what they compute, so the Dask dashboard's task stream reads as the job.

The dashboard groups, colours and counts tasks by their key prefix (``dask.utils.key_split``:
the words of a key before its token). Every prefix of every planned result must be

- Dask's own plumbing (``PLUMBING``): store reads, indexing, rechunking, stacking, reductions,
  a delayed result taken as an array, elementwise arithmetic of whole result columns;
- a constant put into the graph as data (``DATA``): small arrays, a ranking's gene labels;
- or an engine step named in kebab case: for an analysis, a name that starts with the kind of
  one of the job's analyses (``welch-t-chunk``, ``gsva-density``) or one of the steps analyses
  share (``SHARED``: ``by-sample``, ``p-adjust-bh``, ``permutation-null-chunk``, ...); for
  preprocessing, one of ``PREPROCESSING``.

A ``map_blocks`` or ``dask.delayed`` call without a name shows its function's name
(``usable_task``, ``lambda``, ``counts_task``) and fails here. Every analysis type of
``test_graph_keys.CASES`` is planned (its stores and jobs are reused), every lazy preprocessing
step, and the preprocessing functions that decide on the data.

Graph size: the main analyses planned on a lazy 20,000 genes x 50,000 samples cohort (zeros in
store-sized chunks; nothing is computed) stay at or below 100,000 tasks each, so the dashboard
stays responsive (issue 8: 10^4-10^5 tasks per step or fewer).
"""

from __future__ import annotations

import re
from collections import Counter

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import yaml
from dask.utils import key_split
from test_graph_keys import CASES, LAZY_STEPS, _job, _plan, _preprocessed, stores  # noqa: F401
from test_nanostring import CLASSES, RAW, as_array, rcc_cohort

from engine.jobs import load_job, plan_job
from engine.preprocess.counts import filter_by_expr, norm_factors
from engine.preprocess.nanostring import nanostring_qc, normalize_nanostring
from engine.preprocess.pca import pca
from engine.stats import multitest
from engine.stats.features import named_task
from engine.store import open_cohort
from engine.store.ingest import default_chunk_genes

KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)+$")

#: Dask's own operations: how data moves, not what the job computes.
PLUMBING = {
    "getitem", "stack", "concatenate", "reshape", "transpose", "astype",
    "shuffle-taker", "shuffle-split", "shuffle-sorter",  # indexing by a list of positions
    "rechunk-merge", "rechunk-split",
    "from-value",  # the result of a delayed task as an array
    "sum", "sum-partial", "sum-aggregate", "chunk_max", "max-aggregate",
    "nanmin_skip", "nanmin_skip-partial", "nanmin_skip-aggregate",
    "nanmax_skip", "nanmax_skip-partial", "nanmax_skip-aggregate",
    "mean_chunk", "mean_agg-aggregate",
    # elementwise arithmetic of whole result columns (fold change, t interval, set deltas,
    # NanoString factors and flags, PCA's explained variance)
    "add", "sub", "mul", "truediv", "exp2", "maximum", "where", "eq", "gt", "ge", "le",
    "and_", "invert",
}

#: Constants put into the graph as data (set sizes, group starts; a ranking's gene labels,
#: one key that every unit of a sweep shares).
DATA = {"array", "ndarray"}

#: Engine steps that analyses of several kinds share.
SHARED = {
    "by-sample",  # the one deliberate rechunk: all genes x blocks of samples
    "collapse-probes", "gene-set-matrix", "gene-set-members", "gene-row",
    "permutation-null-chunk", "permutation-maxt",
    "bootstrap-percentile-chunk", "bootstrap-basic-chunk", "bootstrap-bca-chunk",
    "bootstrap-studentized-chunk",
    *(f"p-adjust-{method.lower()}" for method in multitest.METHODS),
}

#: The task names of the preprocessing steps.
PREPROCESSING = {
    "log2-transform", "zscore-genes", "aggregate-samples", "delta-pairs",
    "collapse-probes", "collapse-probes-kept", "by-sample",
    "quantile-target-partial", "quantile-target", "quantile-distribute",
    "upper-quartile-quantile", "upper-quartile-scale",
    "cpm-transform", "filter-by-expr", "norm-factors", "norm-factors-all-zero-genes",
    "tmm-reference-stats", "tmm-choose-reference", "tmm-reference-column", "tmm-factor",
    "tmmwsp-reference-stats", "tmmwsp-choose-reference", "tmmwsp-reference-column",
    "tmmwsp-factor", "rle-log-geometric-means", "rle-factor", "upper-quartile-factor",
    "deseq2-log-geometric-means", "deseq2-median-ratios", "deseq2-size-factors",
    "vst-gene-wise", "vst-trend", "vst-transform",
    "pca-summary", "pca-gram", "pca-ritz", "pca-loadings", "pca-start-basis",
    "pca-power-iteration", "pca-orthonormalize", "pca-projection",
    "nanostring-background", "nanostring-positive-summary", "nanostring-positive-factors",
    "nanostring-housekeeping-summary", "nanostring-housekeeping-factors",
    "nanostring-qc-imaging", "nanostring-qc-linearity", "nanostring-qc-detection-limit",
}

#: The prefix of an analysis kind's own tasks, where it is not the test name in kebab case.
KIND = {"consensus_cluster": "consensus"}


def prefixes(*results) -> Counter:
    """Tasks per key prefix of the lazy results' graphs."""
    out = Counter()
    for result in results:
        graph = result.__dask_graph__()
        out.update(key_split(k) for k in dict(graph or {}))
    return out


def plumbing(prefix: str) -> bool:
    """Dask's plumbing, a store read (``xarray-...``), or data."""
    return (prefix in PLUMBING or prefix in DATA or prefix == "xarray"
            or prefix.startswith(("xarray-", "original-xarray")))


def kind(test: str) -> str:
    return KIND.get(test, test.replace("_", "-"))


def unnamed(found, kinds, vocabulary=SHARED) -> set[str]:
    """The prefixes that neither are plumbing nor name an engine step of ``kinds``. A task
    that Dask fused with the indexing after it (``to_delayed`` names it after both:
    ``collapse-probes-getitem``) counts as the task it indexes."""
    def named(prefix):
        return KEBAB.match(prefix) and (prefix in vocabulary
                                        or any(prefix.startswith(f"{k}-") for k in kinds))

    return {p for p in found
            if not any(plumbing(q) or named(q) for q in (p, p.removesuffix("-getitem")))}


@pytest.mark.parametrize("case", CASES)
def test_every_task_of_an_analysis_says_what_it_computes(stores, case, no_compute):  # noqa: F811
    job = _job(stores, case)
    found = prefixes(_plan(job, no_compute)[case])
    kinds = {kind(a.test) for a in job.analyses}
    assert not unnamed(found, kinds), f"unnamed tasks: {dict(found)}"
    # and the analysis's own computation is there under its name
    own = kind(job.analyses[-1].test)
    assert any(p.startswith(f"{own}-") for p in found), dict(found)


@pytest.mark.parametrize("store, steps", LAZY_STEPS,
                         ids=[next(iter(steps[0])) for _, steps in LAZY_STEPS])
def test_every_task_of_a_preprocessing_step_says_what_it_computes(stores, store,  # noqa: F811
                                                                  steps):
    found = prefixes(_preprocessed(stores, store, steps))
    assert not unnamed(found, (), PREPROCESSING), dict(found)


def test_preprocessing_that_decides_on_the_data_names_its_tasks(stores):  # noqa: F811
    """What filter_by_expr, the normalisation factors, PCA and NanoString compute before the
    derived store is written (the decisions) is named too."""
    expression = open_cohort(stores["expression"])["expression"]
    counts = open_cohort(stores["counts"])["counts"]
    group = open_cohort(stores["counts"])["condition"].values
    cohort, rcc = rcc_cohort()
    lazy = [filter_by_expr(counts, group=group),
            *(norm_factors(counts, method) for method in ("TMM", "TMMwsp", "RLE",
                                                          "upperquartile")),
            pca(expression, n_components=2, method="randomized", power_iterations=2),
            pca(expression, n_components=2, method="exact"),
            normalize_nanostring(as_array(RAW), CLASSES),
            nanostring_qc(rcc, cohort.genes["code_class"].tolist(), cohort.samples)]
    for result in lazy:
        found = prefixes(result)
        assert not unnamed(found, (), PREPROCESSING), dict(found)


def test_an_unnamed_map_blocks_or_delayed_call_is_caught(stores, no_compute):  # noqa: F811
    """The check itself: a kernel mapped without a name shows its function's name."""
    planned = _plan(_job(stores, "welch"), no_compute)["welch"]
    p = planned["p_value"].data
    kinds = {"welch"}
    assert not unnamed(prefixes(p), kinds)
    assert unnamed(prefixes(p.map_blocks(lambda b: b * 2)), kinds) == {"lambda"}
    assert unnamed(prefixes(p.map_blocks(np.negative)), kinds) == {"negative"}
    assert not unnamed(prefixes(p.map_blocks(np.negative, token="welch-t-negated")), kinds)
    delayed = named_task("welch-t-total", np.sum, 1)
    assert not unnamed(prefixes(delayed), kinds)
    assert unnamed(prefixes(named_task("welch_t_total", np.sum, 1)), kinds) == {"welch_t_total"}


def test_named_task_keys_are_deterministic_and_follow_the_inputs():
    a = named_task("gsea-phenotype-null", np.add, np.arange(3), 1, dtype=np.float64)
    same = named_task("gsea-phenotype-null", np.add, np.arange(3), 1, dtype=np.float64)
    assert a.key == same.key and key_split(a.key) == "gsea-phenotype-null"
    for other in (named_task("gsea-phenotype-null", np.add, np.arange(4), 1, dtype=np.float64),
                  named_task("gsea-phenotype-null", np.add, np.arange(3), 2, dtype=np.float64),
                  named_task("gsea-phenotype-null", np.add, np.arange(3), 1, dtype=np.float32),
                  named_task("gsea-phenotype-null", np.subtract, np.arange(3), 1,
                             dtype=np.float64)):
        assert other.key != a.key
    assert np.array_equal(a.compute(scheduler="sync"), np.arange(3) + 1.0)
    # a task on another task's result
    b = named_task("gsea-phenotype-statistics", np.sum, a)
    assert b.key != named_task("gsea-phenotype-statistics", np.sum, same * 2).key
    assert b.compute(scheduler="sync") == 6.0


# -- graph size --------------------------------------------------------------------------------

BIG_GENES, BIG_SAMPLES = 20_000, 50_000
MAX_TASKS = 100_000


def big_cohort(n_genes: int, n_samples: int) -> xr.Dataset:
    """A lazy cohort of zeros chunked as ingest chunks a store (genes only, ~96 MB chunks of
    all samples), with the annotations the analyses read: two groups in pairs, an age."""
    x = da.zeros((n_genes, n_samples), dtype=np.float32,
                 chunks=(default_chunk_genes(n_samples), n_samples))
    j = np.arange(n_samples)
    return xr.Dataset(
        {"expression": (("gene", "sample"), x, {"scale": "log2"}),
         "group": ("sample", np.where(j % 2 == 0, "case", "control").astype(object)),
         "patient": ("sample", np.array([f"P{i}" for i in j // 2], dtype=object)),
         "age": ("sample", 30.0 + j % 50)},
        coords={"gene": np.array([f"G{i:05d}" for i in range(n_genes)], dtype=object),
                "sample": np.array([f"S{i:05d}" for i in j], dtype=object)})


TWO_GROUP = {"group": "group", "case": "case", "control": "control"}
MAIN_ANALYSES = [
    {"name": "welch", "test": "welch", **TWO_GROUP},
    {"name": "limma", "test": "limma", **TWO_GROUP},
    {"name": "spearman", "test": "spearman", "covariate": "age"},
    {"name": "ssgsea", "test": "ssgsea", "gene_sets": "sets.gmt"},
    {"name": "gsva", "test": "gsva", "gene_sets": "sets.gmt"},
    {"name": "permutations", "test": "welch", **TWO_GROUP, "permutations": 10_000},
    {"name": "bootstrap", "test": "welch", **TWO_GROUP,
     "bootstrap": {"replicates": 2_000, "method": "bca"}},
    {"name": "gsea_phenotype", "test": "gsea_phenotype", "gene_sets": "sets.gmt",
     **TWO_GROUP, "permutations": 1_000},
    {"name": "consensus", "test": "consensus_cluster", "gene_sets": "sets.gmt",
     "gene_set": "SET00"},
]


def planned_task_counts(tmp_path, cohort: xr.Dataset, no_compute,
                        analyses=MAIN_ANALYSES) -> dict[str, int]:
    """Tasks of each of ``analyses`` planned on ``cohort`` (50 sets of 150 genes)."""
    genes = np.asarray(cohort["gene"].values)
    rng = np.random.default_rng(0)
    (tmp_path / "sets.gmt").write_text("".join(
        f"SET{s:02d}\tna\t" + "\t".join(genes[rng.choice(genes.size, 150, replace=False)])
        + "\n" for s in range(50)))
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({
        "cohort": "lazy.zarr", "output": "out", "seed": 1, "analyses": analyses}))
    with no_compute():
        planned = plan_job(load_job(tmp_path / "job.yaml"), cohort)
    return {name: len(dict(result.__dask_graph__())) for name, result in planned.items()}


@pytest.mark.slow
def test_graphs_stay_small_at_20000_genes_x_50000_samples(tmp_path, no_compute):
    counts = planned_task_counts(tmp_path, big_cohort(BIG_GENES, BIG_SAMPLES), no_compute)
    assert set(counts) == {a["name"] for a in MAIN_ANALYSES}
    too_many = {name: n for name, n in counts.items() if n > MAX_TASKS}
    assert not too_many, f"graphs over {MAX_TASKS:,} tasks: {too_many} (all: {counts})"


def test_task_counts_do_not_grow_with_permutations_or_replicates(tmp_path, no_compute):
    """Per-gene permutations and bootstrap replicates are loops inside one task per gene
    chunk, so ten times the permutations or replicates is not ten times the tasks. (Phenotype
    GSEA's batches of permutations follow a memory budget, consensus clustering's blocks of
    resamples about a quarter second of work: those grow, by design, far below the limit.)"""
    cohort = big_cohort(2_000, 500)
    cohort["expression"] = cohort["expression"].chunk({"gene": 200})
    analyses = [a for a in MAIN_ANALYSES if a["name"] in ("permutations", "bootstrap")]
    few = planned_task_counts(tmp_path, cohort, no_compute, [
        {**a, "permutations": 1_000} if "permutations" in a else
        {**a, "bootstrap": {**a["bootstrap"], "replicates": 200}} for a in analyses])
    many = planned_task_counts(tmp_path, cohort, no_compute, analyses)
    assert few == many and few["permutations"] > 10  # ten gene chunks: several tasks each
