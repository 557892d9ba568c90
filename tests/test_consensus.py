"""Consensus clustering against R ConsensusClusterPlus 1.62 (fixtures in
tests/data/r_reference/consensus/, made by its make_fixtures.sh), R's hclust/cutree/kmeans, and
known clusters; seeding and bit-identity; the ICR-style labelling."""

from __future__ import annotations

import math
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

from engine.errors import InputError
from engine.resample import consensus as cc
from engine.resample import rclust
from engine.resample.rng import analysis_key

FIXTURES = Path(__file__).parent / "data" / "r_reference" / "consensus"
K_MAX = 5  # the fixtures' maxK
KEY = analysis_key("r_fixture", "consensus")
SEED = 20261201
HCLUST_METHODS = ("average", "complete", "single", "mcquitty", "ward.D2", "ward.D")
MONTE_CARLO_RUNS = ("ward_pearson", "average_pearson", "complete_euclidean_pfeature",
                    "km_euclidean")
# k at which the final classes are compared with R's for the Monte-Carlo runs: those whose
# final cut was R's for 20 of 20 other seeds of ours (checked while writing the test; the
# other cuts matched R for 55-95% of the seeds). There the final tree joins an in-between
# sample, or splits a class, at heights that differ from the next candidate's by less than the
# Monte-Carlo error, so the cut is a coin flip for R as for us.
STABLE_K = {"ward_pearson": (2, 3, 4, 5), "average_pearson": (2, 3, 4, 5),
            "complete_euclidean_pfeature": (2,), "km_euclidean": (2, 3)}


# --------------------------------------------------------------------------- fixture readers


@pytest.fixture(scope="module")
def expression() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "expression.tsv", sep="\t", index_col=0)


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "runs.tsv", sep="\t", index_col=0)


def _stack(path: Path, ks) -> np.ndarray:
    """A long (k, sample, <samples>) table as a (len(ks), n, n) array."""
    table = pd.read_csv(path, sep="\t", float_precision="round_trip")  # exact on pandas 2 too
    return np.stack([table[table["k"] == k].iloc[:, 2:].to_numpy() for k in ks])


def _r_run(name: str) -> dict:
    ks = range(2, K_MAX + 1)
    counts = _stack(FIXTURES / f"{name}_counts.tsv.gz", [0, *ks])
    items = pd.read_csv(FIXTURES / f"{name}_item_consensus.tsv.gz", sep="\t",
                        float_precision="round_trip")
    return {"consensus": _stack(FIXTURES / f"{name}_consensus.tsv.gz", ks),
            "sampled": counts[0], "clustered": counts[1:],
            "class": pd.read_csv(FIXTURES / f"{name}_classes.tsv", sep="\t").iloc[:, 1:]
            .to_numpy().T,
            "cdf": pd.read_csv(FIXTURES / f"{name}_cdf.tsv", sep="\t"),
            "items": items,
            "clusters": pd.read_csv(FIXTURES / f"{name}_cluster_consensus.tsv", sep="\t")}


def _options(run: pd.Series) -> dict:
    return {"resamples": int(run["reps"]), "k_max": K_MAX, "p_item": float(run["pItem"]),
            "p_feature": float(run["pFeature"]), "distance": run["distance"],
            "linkage": run["innerLinkage"], "algorithm": run["clusterAlg"]}


def _comembership(classes: np.ndarray) -> np.ndarray:
    return classes[:, None] == classes[None, :]


# --------------------------------------------------------------------------- building blocks


@pytest.fixture(scope="module")
def hclust_cases() -> dict:
    inputs = pd.read_csv(FIXTURES / "hclust_inputs.tsv.gz", sep="\t")
    merges = pd.read_csv(FIXTURES / "hclust_merges.tsv.gz", sep="\t")
    cuts = pd.read_csv(FIXTURES / "hclust_cutree.tsv.gz", sep="\t")
    out = {}
    for case in ("tied", "continuous"):
        d = inputs[inputs["case"] == case].iloc[:, 2:].to_numpy()
        for method in HCLUST_METHODS:
            sel = (merges["case"] == case) & (merges["method"] == method)
            cut = cuts[(cuts["case"] == case) & (cuts["method"] == method)]
            out[case, method] = (d, merges[sel]["height"].to_numpy(),
                                 cut.iloc[:, 3:].to_numpy())
    return out


@pytest.mark.parametrize("case", ["tied", "continuous"])
@pytest.mark.parametrize("method", HCLUST_METHODS)
def test_hclust_and_cutree_match_r(hclust_cases, case, method):
    """R's merge order, ties included (the tied case has dissimilarities 1..4 only), and
    cutree's numbering at every k."""
    d, r_height, r_cut = hclust_cases[case, method]
    first, second, height = rclust.hclust(d, method)
    # the same Lance-Williams arithmetic in the same order: equal heights (1e-12 for safety)
    np.testing.assert_allclose(height, r_height, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(rclust.cutree(first, second, range(1, d.shape[0] + 1)), r_cut)


@pytest.mark.parametrize("method", HCLUST_METHODS)
def test_inner_clustering_partitions_match_r_cutree(hclust_cases, method, monkeypatch):
    """The resamples' scipy linkage + merge levels give R's cutree partitions at every k
    (continuous dissimilarities: no ties), with scipy's C cophenet and with the public one."""
    d, _, r_cut = hclust_cases["continuous", method]
    n = d.shape[0]
    iu = np.triu_indices(n, 1)
    condensed = d[iu]
    levels = cc._together_levels(condensed, n, method)
    for k in range(1, n):
        np.testing.assert_array_equal(levels >= k, _comembership(r_cut[k - 1])[iu])
    monkeypatch.setattr(cc, "_cophenetic_c", None)
    np.testing.assert_array_equal(cc._together_levels(condensed, n, method), levels)


def test_hartigan_wong_matches_r_kmeans(expression):
    """From the same start rows, the k-means of every run is R's kmeans(algorithm =
    "Hartigan-Wong", iter.max = 10) exactly: 60 subsets x k = 2..8, all runs at once."""
    cases = pd.read_csv(FIXTURES / "kmeans_hartigan_wong.tsv.gz", sep="\t")
    x = expression.to_numpy()
    samples = np.array([[int(v) - 1 for v in s.split()] for s in cases["samples"]])
    starts = np.zeros((len(cases), cases["k"].max()), dtype=np.int64)
    for row, text in enumerate(cases["starts"]):
        start = [int(v) - 1 for v in text.split()]
        starts[row, :len(start)] = start
    labels = rclust.hartigan_wong(np.ascontiguousarray(x.T[samples]), starts,
                               cases["k"].to_numpy()) + 1
    expected = np.array([[int(v) for v in s.split()] for s in cases["cluster"]])
    np.testing.assert_array_equal(labels, expected)


def test_cdf_area_delta_match_r_on_crafted_values():
    """Values exactly on hist's breaks (j/100), 1e-12 above them (inside hist's fuzz: the bin
    below) and 1e-8 above (the bin above), ratios p/q and a 0/1 matrix: CCP's areas and deltas
    to the last bit (the same bins, fuzz and order of additions)."""
    ks = (2, 3, 4)
    matrices = _stack(FIXTURES / "cdf_crafted_matrices.tsv", ks)
    expected = pd.read_csv(FIXTURES / "cdf_crafted.tsv", sep="\t")
    cdf, area, delta = cc.cdf_area(matrices)
    np.testing.assert_allclose(area, expected["area"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(delta, expected["delta"], rtol=1e-12, atol=0)
    # cdf[k, j] = fraction of lower-triangle values <= (j + 1)/100 (values here are 0/1 only)
    values = matrices[2][np.tril_indices(25, -1)]
    np.testing.assert_array_equal(cdf[2, :-1], np.mean(values == 0))
    assert cdf[2, -1] == 1.0


# ------------------------------------------------------------------------- summaries of R's counts


@pytest.mark.parametrize("name", [*MONTE_CARLO_RUNS, "full_average", "full_ward"])
def test_summaries_of_r_counts_match_ccp(runs, name):
    """From R's own counts: the consensus matrices (bit for bit), the classes of the final
    hclust (exactly, R's numbering), CDF areas and deltas (1e-12) and calcICL's item and cluster
    consensus (1e-12: R sums in long double) incl. its NaN for items alone in their class."""
    r = _r_run(name)
    out = cc.consensus_result(r["clustered"], r["sampled"],
                              final_linkage=runs.loc[name, "finalLinkage"])
    np.testing.assert_array_equal(out["consensus"], r["consensus"])
    np.testing.assert_array_equal(out["class"], r["class"])
    np.testing.assert_allclose(out["area"], r["cdf"]["area"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(out["delta"], r["cdf"]["delta"], rtol=1e-12, atol=0)
    items = r["items"]
    position = items["item"].str[1:].astype(int).to_numpy() - 1  # S01 -> 0
    ours = out["item_consensus"][items["k"] - 2, position, items["cluster"] - 1]
    np.testing.assert_allclose(ours, items["itemConsensus"], rtol=1e-12, atol=1e-15)
    clusters = r["clusters"]
    np.testing.assert_allclose(
        out["cluster_consensus"][clusters["k"] - 2, clusters["cluster"] - 1],
        clusters["clusterConsensus"], rtol=1e-12, atol=1e-15)
    # classes beyond k have no consensus
    for row, k in enumerate(out["k"]):
        assert np.isnan(out["item_consensus"][row, :, k:]).all()
        assert np.isnan(out["cluster_consensus"][row, k:]).all()


def test_item_consensus_singleton_is_nan():
    """calcICL divides by |c| - 1 for the class's own members: 0/0 for a class of one."""
    consensus = np.array([[[1.0, 0.8, 0.1], [0.8, 1.0, 0.3], [0.1, 0.3, 1.0]]])
    items, clusters = cc.item_consensus(consensus, np.array([[1, 1, 2]]), 2)
    np.testing.assert_allclose(items[0], [[0.8, 0.1], [0.8, 0.3], [0.2, np.nan]])
    np.testing.assert_allclose(clusters[0], [0.8, np.nan])


# --------------------------------------------------------------------------- the whole run vs R


@pytest.mark.parametrize("name", ["full_average", "full_ward"])
def test_whole_data_resamples_are_exact(expression, runs, name):
    """pItem = pFeature = 1: every resample is the data, so the consensus is the 0/1 matrix of
    one hclust and the classes are cutree's: both equal R's exactly."""
    options = _options(runs.loc[name])
    result = cc.consensus_cluster(expression.to_numpy(), seed=SEED, key=KEY,
                                  samples=list(expression.columns), **options).compute(
        scheduler="sync")
    r = _r_run(name)
    np.testing.assert_array_equal(result["consensus"].values, r["consensus"])
    np.testing.assert_array_equal(result["consensus_class"].values, r["class"])
    direct = pd.read_csv(FIXTURES / "full_hclust_cutree.tsv", sep="\t")
    inner = runs.loc[name, "innerLinkage"]
    for row, k in enumerate(range(2, K_MAX + 1)):
        np.testing.assert_array_equal(result["consensus_class"].values[row],
                                      direct[f"{inner}_k{k}"])
    np.testing.assert_array_equal(result["pairs_sampled"].values, options["resamples"])


@pytest.fixture(scope="module")
def monte_carlo(expression, runs) -> dict:
    out = {}
    for name in MONTE_CARLO_RUNS:
        lazy = cc.consensus_cluster(expression.to_numpy(), seed=SEED, key=KEY,
                                    final_linkage=runs.loc[name, "finalLinkage"],
                                    samples=list(expression.columns), **_options(runs.loc[name]))
        out[name] = lazy.compute(scheduler="sync")
    return out


@pytest.mark.parametrize("name", MONTE_CARLO_RUNS)
def test_consensus_matches_r_within_monte_carlo_error(monte_carlo, name):
    """Our 2,000 resamples against R's 2,000 (different random streams).

    Given that a pair is drawn, each resample clusters it together independently with a fixed
    probability p, so a consensus entry is a binomial proportion over I draws. Under "both
    estimate the same p", ours - R's has sd sqrt(p (1 - p) (1/I_ours + 1/I_R)), p estimated by
    pooling both runs' counts. Every entry must lie within 5 sd (over the 4 x 435 pairs of a
    run, a 5-sd excursion has probability ~1e-3 if the semantics agree; a wrong linkage, cut,
    resampling proportion or k-means algorithm moves whole blocks by 10-40 sd). Pairs that both
    runs always (or never) cluster together have p in {0, 1}: they must agree exactly.
    """
    ours, r = monte_carlo[name], _r_run(name)
    m_o, i_o = ours["pairs_clustered"].values, ours["pairs_sampled"].values
    m_r, i_r = r["clustered"], r["sampled"]
    np.testing.assert_array_equal(ours["consensus"].values, m_o / i_o)
    p = (m_o + m_r) / (i_o + i_r)
    sd = np.sqrt(p * (1 - p) * (1 / i_o + 1 / i_r))
    diff = np.abs(ours["consensus"].values - r["consensus"])
    assert (diff <= 5 * sd + 1e-12).all(), f"max z {np.max(diff / np.maximum(sd, 1e-300)):.1f}"
    # the mean |difference| over pairs: E|N(0, sd)| = sd sqrt(2/pi) per pair; pairs of one
    # cluster move together (correlated), so the mean of 435 is allowed 3x its expectation
    lower = np.tril_indices(30, -1)
    for row in range(K_MAX - 1):
        expected = np.mean(np.sqrt(2 / np.pi) * sd[row][lower])
        assert diff[row][lower].mean() <= 3 * expected + 1e-4
    # CDF area = 1 - mean over pairs of the consensus rounded up to its bin: its Monte-Carlo sd
    # is at most the mean of the pairs' sds (perfectly correlated pairs), and rounding to
    # bins adds noise of the same order; allowed 5 x that mean
    bound_area = 5 * np.array([sd[row][lower].mean() for row in range(K_MAX - 1)]) + 1e-12
    area_r = r["cdf"]["area"].to_numpy()
    assert (np.abs(ours["consensus_area"].values - area_r) <= bound_area).all()
    # delta = area_k / area_{k-1} - 1: first-order propagation of the two areas' bounds
    bound_delta = np.concatenate([[bound_area[0]], (bound_area[1:] + area_r[1:] / area_r[:-1]
                                                    * bound_area[:-1]) / area_r[:-1]])
    assert (np.abs(ours["consensus_delta"].values - r["cdf"]["delta"]) <= bound_delta).all()


@pytest.mark.parametrize("name", MONTE_CARLO_RUNS)
def test_classes_match_r(monte_carlo, name):
    """The final classes, numbered as R numbers them, at the k whose cut is not a Monte-Carlo
    coin flip (STABLE_K)."""
    ours, r = monte_carlo[name], _r_run(name)
    for k in STABLE_K[name]:
        np.testing.assert_array_equal(ours["consensus_class"].sel(k=k).values, r["class"][k - 2])


# --------------------------------------------------------------------------- known clusters


def _three_clusters(seed: int = 5, sizes=(8, 7, 9), genes: int = 15):
    rng = np.random.default_rng(seed)
    truth = rng.permutation(np.repeat(np.arange(3), sizes))
    profiles = rng.normal(0, 2, (genes, 3))
    x = profiles[:, truth] + rng.normal(0, 0.5, (genes, truth.size))
    return x.astype(np.float32), truth


@pytest.mark.parametrize("linkage, algorithm, distance", [
    ("ward.D2", "hc", "pearson"), ("average", "hc", "spearman"), ("complete", "hc", "euclidean"),
    ("average", "km", "euclidean")])
def test_known_clusters_are_recovered(linkage, algorithm, distance):
    """Three well-separated simulated clusters: the classes at k = 3 are the simulated
    partition (numbered by first appearance, as cutree), and CCP's delta area after k = 2 is
    largest at k = 3. Hierarchical clustering finds the clusters in every resample, so the
    consensus at k = 3 is exactly their co-membership; k-means from one random start
    (nstart = 1, as CCP) sometimes stops in a local optimum that splits a cluster, so there
    pairs within a cluster only score above every pair across clusters."""
    x, truth = _three_clusters()
    result = cc.consensus_cluster(x, seed=1, key=KEY, resamples=300, k_max=5, p_item=0.8,
                                  p_feature=0.9, linkage=linkage, algorithm=algorithm,
                                  distance=distance).compute(scheduler="sync")
    at3 = result.sel(k=3)
    same = _comembership(truth)
    consensus = at3["consensus"].values
    if algorithm == "hc":
        np.testing.assert_array_equal(consensus, same.astype(float))
        np.testing.assert_array_equal(at3["cluster_consensus"].values[:3], 1.0)
    else:
        assert consensus[same].min() > 0.5 > consensus[~same].max()
    classes = at3["consensus_class"].values
    np.testing.assert_array_equal(_comembership(classes), same)
    assert list(pd.unique(classes)) == [1, 2, 3]
    assert int(np.argmax(result["consensus_delta"].values[1:])) == 0  # k = 3


# ------------------------------------------------------------------------- seeding, bits, laziness


def test_bit_identical_for_any_task_grouping_scheduler_and_chunking():
    x, _ = _three_clusters(seed=9)
    x = x + np.random.default_rng(2).normal(0, 2, x.shape).astype(np.float32)  # ambiguous
    options = dict(seed=3, key=KEY, resamples=750, k_max=4, linkage="ward.D2")
    reference = cc.consensus_cluster(x, blocks_per_task=1, **options).compute(scheduler="sync")
    assert 0 < np.mean((reference["consensus"].values > 0) & (reference["consensus"] < 1))
    for per_task, chunks, scheduler in [(2, (15, 24), "threads"), (8, (4, 24), "sync"),
                                        (None, (7, 24), "threads")]:
        data = da.from_array(x, chunks=chunks)
        other = cc.consensus_cluster(data, blocks_per_task=per_task, **options).compute(
            scheduler=scheduler)
        xr.testing.assert_identical(reference, other)
    # the kernel's block counts sum to the same counts
    blocks = [cc.consensus_counts(x, block=b, resamples=750, k_max=4, linkage="ward.D2",
                                  seed=3, key=KEY) for b in range(math.ceil(750 / 100))]
    np.testing.assert_array_equal(sum(m for m, _ in blocks), reference["pairs_clustered"])
    np.testing.assert_array_equal(sum(i for _, i in blocks), reference["pairs_sampled"])
    # another seed draws other resamples
    other_seed = cc.consensus_cluster(x, **{**options, "seed": 4}).compute(scheduler="sync")
    assert not np.array_equal(other_seed["pairs_sampled"], reference["pairs_sampled"])


@pytest.mark.slow
def test_bit_identical_on_two_worker_processes():
    """Two worker processes (BLAS single-threaded there) vs the threaded scheduler in this
    process: the same bits, for hierarchical clustering with gene resampling and k-means."""
    from engine.cluster import dask_client

    x, _ = _three_clusters(seed=9)
    x = x + np.random.default_rng(2).normal(0, 2, x.shape).astype(np.float32)
    lazy = [cc.consensus_cluster(x, seed=3, key=KEY, resamples=400, k_max=4, p_feature=0.8,
                                 linkage="average", blocks_per_task=1),
            cc.consensus_cluster(x, seed=3, key=KEY, resamples=400, k_max=4, algorithm="km",
                                 blocks_per_task=1)]
    local = [result.compute(scheduler="threads") for result in lazy]
    with dask_client(workers=2, quiet=True) as client:
        remote = [client.compute(result).result() for result in lazy]
    for a, b in zip(local, remote):
        xr.testing.assert_identical(a, b)


def test_resample_draws_do_not_depend_on_the_number_of_resamples():
    """Resample j is row j % 100 of block j // 100 whatever ``resamples``; samples and genes are
    floor(n p) distinct sorted positions."""
    kw = dict(block=1, seed=7, key=KEY, k_max=4, p_item=0.8, p_feature=0.5, algorithm="km")
    short = cc.resample_draws(30, 20, resamples=130, **kw)
    full = cc.resample_draws(30, 20, resamples=1000, **kw)
    assert short["samples"].shape == (30, 24) and full["samples"].shape == (100, 24)
    for field in ("samples", "genes", "starts"):
        np.testing.assert_array_equal(short[field], full[field][:30])
    assert short["genes"].shape == (30, 10)
    assert (np.diff(full["samples"], axis=1) > 0).all()
    assert (np.diff(full["genes"], axis=1) > 0).all()
    # every sample is drawn with probability p_item: 24/30 of 100 draws, within 5 sd
    counts = np.bincount(full["samples"].ravel(), minlength=30)
    assert np.abs(counts - 80).max() <= 5 * math.sqrt(100 * 0.8 * 0.2)


def test_building_computes_nothing(no_compute):
    x, _ = _three_clusters()
    data = da.from_array(x, chunks=(5, 24))
    with no_compute():
        result = cc.consensus_cluster(data, seed=1, key=KEY, resamples=500, k_max=4)
        labels = cc.label_consensus(result, data)
    assert isinstance(result["consensus"].data, da.Array)
    assert isinstance(labels["consensus_label"].data, da.Array)
    assert result.sizes == {"k": 3, "sample": 24, "sample_b": 24, "cluster": 4, "bin": 100}


def test_median_centring_changes_pearson_input_as_ccp_vignette():
    """center='median' subtracts each gene's median first (CCP's vignette); with Euclidean
    distance a per-gene shift cannot change any distance, so the counts are identical."""
    x, _ = _three_clusters()
    shifted = x + np.arange(x.shape[0], dtype=np.float32)[:, None] * 3
    kw = dict(seed=2, key=KEY, resamples=200, k_max=4, distance="euclidean")
    a = cc.consensus_cluster(x, center="median", **kw).compute(scheduler="sync")
    b = cc.consensus_cluster(shifted, center="median", **kw).compute(scheduler="sync")
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    prepared = cc._prepare(shifted, center="median", distance="pearson", algorithm="hc",
                           p_feature=1.0)
    np.testing.assert_allclose(np.median(prepared["x"], axis=1), 0, atol=1e-12)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, match", [
    (dict(k_max=20), "k_max must be between 2 and the 19 samples"),
    (dict(k_max=1), "k_max must be between 2"),
    (dict(k_max=19, algorithm="km"), "k-means needs fewer clusters than the 19 samples"),
    (dict(p_item=0), "p_item must be a proportion"),
    (dict(p_feature=1.5), "p_feature must be a proportion"),
    (dict(linkage="centroid"), "centroid and median are not monotone"),
    (dict(final_linkage="ward"), "unknown final linkage"),
    (dict(algorithm="km", distance="pearson"), "k-means clusters on Euclidean distance"),
    (dict(distance="canberra"), "unknown distance"),
    (dict(center="z"), "unknown centering"),
    (dict(resamples=0), "resamples must be between"),
])
def test_bad_options_are_refused_before_computing(kwargs, match):
    x, _ = _three_clusters()
    with pytest.raises(InputError, match=match):
        cc.consensus_cluster(x, seed=1, key=KEY, **{"resamples": 100, **kwargs})


def test_missing_values_and_constant_samples_are_refused():
    x, _ = _three_clusters()
    x = x.copy()
    x[3, 5] = np.nan
    with pytest.raises(InputError, match="1 gene row.*missing.*rows 3"):
        cc.consensus_counts(x, block=0, seed=1, key=KEY, resamples=100, k_max=3)
    x[3, 5] = 0
    x[:, 7] = 2.0
    with pytest.raises(InputError, match="pearson distance is undefined.*constant"):
        cc.consensus_counts(x, block=0, seed=1, key=KEY, resamples=100, k_max=3)
    # Euclidean distance is defined for a constant sample
    m, _ = cc.consensus_counts(x, block=0, seed=1, key=KEY, resamples=100, k_max=3,
                               distance="euclidean")
    assert m.shape == (2, 24, 24)


# --------------------------------------------------------------------------- labelling


def test_labels_rank_classes_by_mean_signature_z_score():
    """The class with the highest mean z-score is "ICR High"; scores against scipy's zscore
    (ddof=1) averaged over genes."""
    rng = np.random.default_rng(4)
    classes = rng.permutation(np.repeat([1, 2, 3], [6, 7, 5]))
    signature = rng.normal(5, 1, (20, classes.size))
    signature[:, classes == 3] += 2.0  # class 3 high, class 1 low
    signature[:, classes == 1] -= 1.0
    out = cc.label_by_score(classes, signature, prefix="ICR ")
    expected = stats.zscore(signature, axis=1, ddof=1).mean(axis=0)
    np.testing.assert_allclose(out["score"], expected, rtol=1e-12)
    class_means = [expected[classes == c].mean() for c in (1, 2, 3)]
    np.testing.assert_allclose(out["class_score"], class_means, rtol=1e-12)
    assert set(out["label"][classes == 3]) == {"ICR High"}
    assert set(out["label"][classes == 2]) == {"ICR Medium"}
    assert set(out["label"][classes == 1]) == {"ICR Low"}
    high = out["label"] == "ICR High"
    assert out["score"][high].mean() > max(out["score"][~high & (classes == c)].mean()
                                           for c in (1, 2))
    np.testing.assert_array_equal(out["rank"], np.select([classes == 3, classes == 2], [1, 2], 3))
    # k != number of names: ranks; missing values and constant genes are left out of scores
    signature[0, 0] = np.nan
    signature[1] = 3.0
    two = cc.label_by_score(np.where(classes == 3, 1, 2), signature)
    assert set(two["label"]) == {"1 (highest)", "2 (lowest)"}
    z = stats.zscore(signature[2:], axis=1, ddof=1)
    z0 = stats.zscore(signature[0], ddof=1, nan_policy="omit")
    np.testing.assert_allclose(two["score"], np.nanmean(np.vstack([z0, z]), axis=0), rtol=1e-12)


def test_label_consensus_labels_every_k(monte_carlo, expression):
    result = monte_carlo["ward_pearson"]
    labels = cc.label_consensus(result, expression.to_numpy(), prefix="ICR ").compute(
        scheduler="sync")
    at3 = labels.sel(k=3)
    assert set(at3["consensus_label"].values) == {"ICR High", "ICR Medium", "ICR Low"}
    direct = cc.label_by_score(result["consensus_class"].sel(k=3).values, expression.to_numpy(),
                               prefix="ICR ")
    np.testing.assert_array_equal(at3["consensus_label"].values, direct["label"])
    np.testing.assert_array_equal(labels["signature_score"].values, direct["score"])
    assert set(labels.sel(k=5)["consensus_label"].values) == {"ICR 1 (highest)", "ICR 2",
                                                               "ICR 3", "ICR 4", "ICR 5 (lowest)"}
