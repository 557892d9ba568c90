"""Consensus clustering (Monti et al. 2003, Machine Learning 52:91) with the semantics of R's
ConsensusClusterPlus 1.62 (Wilkerson & Hayes 2010, Bioinformatics 26:1572), and the labelling of
the consensus classes by a signature's mean z-score (ICR High / Medium / Low).

Items are the samples (columns), features the genes (rows). Each resample (CCP ``ccRun``):

* draws ``floor(n * p_item)`` samples and, when ``p_feature < 1``, ``floor(n_features *
  p_feature)`` genes, without replacement, uniformly (CCP ``sampleCols``: ``sample(n, floor(n *
  pItem))``; item/feature weights are not supported);
* ``algorithm="hc"``: clusters the drawn samples hierarchically (``linkage``) on the distance
  between their columns over the drawn genes and cuts the tree at every k = 2..k_max (R
  ``cutree``: the first n - k merges); ``algorithm="km"``: k-means of the drawn samples for
  each k (below);
* counts, for every pair of samples, whether both were drawn (``I``, CCP's ``mCount``) and, per
  k, whether they fell in one cluster (``M_k``, CCP's ``ml[[k]]``). A sample drawn counts once
  with itself in both, so the diagonal of ``M_k`` equals that of ``I``.

Distances (CCP's ``distance``): ``pearson`` and ``spearman`` are 1 - cor of the columns (R
``cor``; Spearman correlates the columns' ranks, average ranks for ties, over the drawn genes),
``euclidean``, ``manhattan`` and ``maximum`` are R ``dist`` (scipy ``pdist`` euclidean,
cityblock, chebyshev). As in CCP, with ``p_feature == 1`` the distance matrix of all samples is
computed once and each resample takes its rows and columns (the same numbers).

Inner clustering: scipy's ``linkage`` (C) on the resample's condensed distances; the partitions
for all k come from one call (the merge index joining each pair, ``cophenet`` of a tree whose
heights are the merge numbers). ``average``, ``complete``, ``single`` and ``mcquitty`` (scipy
``weighted``) are R's Lance-Williams updates; ``ward.D2`` is scipy ``ward`` (both square the
dissimilarities, apply Ward's update and report square roots, whether or not the input is
Euclidean); ``ward.D`` (R's Ward update on unsquared dissimilarities) is scipy ``ward`` on their
square roots, which applies the same update to the dissimilarities themselves. Merge orders
agree with R's ``hclust`` except between merges at exactly equal heights, which continuous
distances do not have. Non-monotone linkages (``centroid``, ``median``) are refused.

k-means (``algorithm="km"``, Euclidean only, as CCP forces): CCP calls R's ``kmeans(x, k,
iter.max = 10, nstart = 1)``, i.e. Hartigan-Wong (AS 136) from k distinct random rows. Here
each resample and k runs the same algorithm, a transcription of R's ``kmns.f`` vectorised over
all runs of a block (:func:`engine.resample.rclust.hartigan_wong`), from k random drawn
samples (distinct rows, as R redraws from ``unique(x)`` when two coincide): from the same start it gives R's partition
(checked on 420 runs), so only the random starts differ from R's. Lloyd's algorithm from the
same starts gave another partition in 69% of the runs of the test data: it is not a substitute.
Like R, a run stops at ``iter.max`` = 10 iterations or 50 m quick-transfer steps and keeps its
clusters (R warns); k_max must be below the resample's m samples (R refuses k >= m).

Randomness: resamples are drawn in blocks of :data:`RESAMPLE_BLOCK`; block b's generator is
``engine.resample.rng.block_rng(seed, key, b)`` (``key = analysis_key(name, "consensus")``). A
block draws one row of uniforms per resample, all :data:`RESAMPLE_BLOCK` rows always, and the
last block is cut at ``resamples``: [n sample keys | n_features gene keys when p_feature < 1 |
(k_max - 1) x m start keys for k-means]; the drawn samples are those with the m smallest keys
(genes likewise), k-means of k starts from the drawn samples with the k smallest keys of its
slot. Resample j is therefore the same whatever ``resamples``, the tasks and the workers.
Counts are integers and summed exactly, so the result is bit-identical for any grouping of
blocks into tasks, any number of workers, threads or processes. (The one matrix product, the
correlations of all samples when p_feature == 1, is computed once, in one task; k-means and the
CDF add in a fixed order without BLAS.)

Final step (CCP ``ConsensusClusterPlus``, ``CDF``, ``calcICL``):

* consensus ``C_k = M_k / I``, 0 where a pair was never drawn together (CCP sets those to 0);
* classes: ``hclust(as.dist(1 - C_k), final_linkage)`` cut at k, numbered as ``cutree`` numbers
  them (by the first sample of each class). The agglomeration is a transcription of R's
  ``hclust.f`` (Murtagh's nearest-neighbour list, including its choice between equal
  dissimilarities), so ties, frequent in consensus matrices, are broken as R breaks them;
* CDF: ``hist`` of the lower-triangle consensus values on breaks ``seq(0, 1, by = 1/100)``
  (right-closed bins, ``hist``'s 1e-7 fuzz), cumulated and divided by the count: ``cdf[k, j]``
  is the fraction of pairs with consensus <= (j + 1)/100. ``area`` is CCP's sum over bins of
  cdf times bin width, added in bin order; ``delta`` is CCP's: ``area`` for k = 2, else
  (area_k - area_{k-1}) / area_{k-1};
* cluster consensus: mean consensus over the pairs within a class (NaN for a class of one);
  item consensus of sample i with class c: the sum of its consensus with the members of c other
  than itself, over |c| - 1 when i is in c and |c| otherwise (NaN for i alone in its class).
  Classes above k are NaN.

Not supported: distance matrices as input, item/feature weights, ``pam`` and user clustering
functions, ``corUse`` other than ``"everything"`` (missing values are refused).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import dask.array as da
import numpy as np
import xarray as xr
from scipy.cluster import hierarchy
from scipy.spatial.distance import pdist, squareform
from scipy.stats import rankdata

from engine.errors import InputError, preview
from engine.resample.rclust import HCLUST_METHODS, cutree, hartigan_wong, hclust, kmeans_starts
from engine.resample.rng import block_rng, check_seed
from engine.stats.features import as_delayed, named_task

try:  # scipy's C kernel behind hierarchy.cophenet, without its per-call validation (7x faster)
    from scipy.cluster._hierarchy import cophenetic_distances as _cophenetic_c
except ImportError:  # pragma: no cover - a scipy without it: the public function
    _cophenetic_c = None

__all__ = [
    "ALGORITHMS",
    "CDF_BINS",
    "CENTERING",
    "DISTANCES",
    "LINKAGES",
    "RESAMPLE_BLOCK",
    "cdf_area",
    "consensus_cluster",
    "consensus_counts",
    "consensus_result",
    "item_consensus",
    "label_by_score",
    "label_consensus",
    "resample_draws",
    "signature_score",
]

#: Resamples per random block: resample j is row j % RESAMPLE_BLOCK of block
#: j // RESAMPLE_BLOCK. Part of the results' contract (changing it changes every draw).
RESAMPLE_BLOCK = 100
#: R hclust method -> scipy linkage method for the inner clustering.
LINKAGES = {"average": "average", "complete": "complete", "single": "single",
            "mcquitty": "weighted", "ward.D2": "ward", "ward.D": "ward"}
DISTANCES = ("pearson", "spearman", "euclidean", "manhattan", "maximum")
ALGORITHMS = ("hc", "km")
CENTERING = ("none", "median", "mean")
#: CCP's CDF breaks: seq(0, 1, by = 1/CDF_BINS).
CDF_BINS = 100
#: Most runs x samples x genes elements of one k-means batch.
_KMEANS_TILE = 2**22
_MAX_RESAMPLES = 10**8  # counts are int32
_PAIR_BATCH = 10  # resamples per pass of the pair bookkeeping (cache-sized temporaries)
_PDIST = {"euclidean": "euclidean", "manhattan": "cityblock", "maximum": "chebyshev"}


# --------------------------------------------------------------------------- options


def _options(n_samples: int, n_features: int, *, resamples, k_max, p_item, p_feature, distance,
             linkage, algorithm) -> dict:
    """Validated options (``distance`` resolved: pearson for hc, euclidean for km)."""
    if algorithm not in ALGORITHMS:
        raise InputError(f"unknown clustering algorithm {algorithm!r} (choose one of "
                         f"{', '.join(ALGORITHMS)})")
    if distance is None:
        distance = "euclidean" if algorithm == "km" else "pearson"
    if distance not in DISTANCES:
        raise InputError(f"unknown distance {distance!r} (choose one of {', '.join(DISTANCES)})")
    if algorithm == "km" and distance != "euclidean":
        raise InputError(f"k-means clusters on Euclidean distance, got distance {distance!r} "
                         "(use distance: euclidean, or algorithm: hc)")
    if linkage not in LINKAGES:
        raise InputError(f"unknown linkage {linkage!r} (choose one of {', '.join(LINKAGES)}; "
                         "centroid and median are not monotone and not supported)")
    for name, value in (("resamples", resamples), ("k_max", k_max)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(f"{name} must be an integer, got {value!r}")
    if not 1 <= resamples <= _MAX_RESAMPLES:
        raise InputError(f"resamples must be between 1 and {_MAX_RESAMPLES}, got {resamples}")
    for name, value in (("p_item", p_item), ("p_feature", p_feature)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
                or not 0 < value <= 1:
            raise InputError(f"{name} must be a proportion in (0, 1], got {value!r}")
    if n_samples < 2:
        raise InputError(f"consensus clustering needs at least 2 samples, got {n_samples}")
    m = math.floor(n_samples * p_item)
    if not 2 <= k_max <= m:
        raise InputError(f"k_max must be between 2 and the {m} samples of a resample "
                         f"(floor({n_samples} x p_item {p_item})), got {k_max}")
    if algorithm == "km" and k_max == m:
        raise InputError(f"k-means needs fewer clusters than the {m} samples of a resample "
                         f"(R kmeans refuses k >= m), got k_max {k_max}")
    n_genes = n_features if p_feature == 1 else math.floor(n_features * p_feature)
    if n_genes < 1:
        raise InputError(f"a resample draws floor({n_features} x p_feature {p_feature}) = 0 "
                         "genes; raise p_feature or use more genes")
    return {"resamples": int(resamples), "k_max": int(k_max), "p_item": float(p_item),
            "p_feature": float(p_feature), "distance": distance, "linkage": linkage,
            "algorithm": algorithm, "m": m, "n_genes": n_genes}


# --------------------------------------------------------------------------- draws


def _smallest(keys: np.ndarray, count: int) -> np.ndarray:
    """Per row, the positions of the ``count`` smallest keys, sorted (keys are distinct)."""
    if count == keys.shape[1]:
        return np.broadcast_to(np.arange(count), keys.shape).copy()
    return np.sort(np.argpartition(keys, count - 1, axis=1)[:, :count], axis=1)


def resample_draws(n_samples: int, n_features: int, *, block: int, seed: int, key: int,
                   resamples: int, k_max: int, p_item: float = 0.8, p_feature: float = 1.0,
                   algorithm: str = "hc") -> dict:
    """The draws of block ``block``: ``samples`` (B, m) sorted sample positions of each resample,
    ``genes`` (B, m_genes) sorted gene positions or None (p_feature == 1), and for k-means
    ``starts`` (B, k_max - 1, m) ranks of the start keys (the start of k is ``argsort`` of its
    row, first k). B = min(RESAMPLE_BLOCK, resamples - block * RESAMPLE_BLOCK)."""
    seed, key = check_seed(seed, key)
    opts = _options(n_samples, n_features, resamples=resamples, k_max=k_max, p_item=p_item,
                    p_feature=p_feature, distance=None, linkage="average", algorithm=algorithm)
    first = int(block) * RESAMPLE_BLOCK
    if block < 0 or first >= resamples:
        raise InputError(f"resample block {block} is outside {resamples} resamples")
    m, k_max = opts["m"], opts["k_max"]
    sample_genes = opts["p_feature"] < 1
    width = n_samples + (n_features if sample_genes else 0) \
        + ((k_max - 1) * m if algorithm == "km" else 0)
    keys = block_rng(seed, key, int(block)).random((RESAMPLE_BLOCK, width))
    keys = keys[:min(RESAMPLE_BLOCK, resamples - first)]
    out = {"samples": _smallest(keys[:, :n_samples], m), "genes": None, "starts": None}
    at = n_samples
    if sample_genes:
        out["genes"] = _smallest(keys[:, at:at + n_features], opts["n_genes"])
        at += n_features
    if algorithm == "km":
        out["starts"] = keys[:, at:].reshape(len(keys), k_max - 1, m)
    return out


# --------------------------------------------------------------------------- distances


def _finite(x: np.ndarray, genes=None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"consensus clustering needs a (genes x samples) matrix, got shape "
                         f"{x.shape}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        named = (f"genes {preview([str(genes[i]) for i in bad])}" if genes is not None
                 else f"rows {preview(bad.tolist())}")
        raise InputError(f"consensus clustering needs complete data: {bad.size} gene row(s) "
                         f"have missing or infinite values ({named}); drop them from the genes "
                         "clustered on or impute them")
    return x


def _distances(x: np.ndarray, distance: str) -> np.ndarray:
    """Condensed distances between the columns of ``x`` (genes x samples), as R computes them
    (``1 - cor(x, method)`` or ``dist(t(x), method)``)."""
    if distance in ("pearson", "spearman"):
        if distance == "spearman":
            x = rankdata(x, axis=0)
        centred = x - x.mean(axis=0)
        norm = np.sqrt((centred * centred).sum(axis=0))
        if (norm == 0).any():
            raise InputError(f"{distance} distance is undefined for a sample that is constant "
                             f"over the genes of a resample ({int((norm == 0).sum())} such "
                             "samples); use a Euclidean distance, more genes or p_feature: 1")
        z = centred / norm
        cor = z.T @ z
        iu = np.triu_indices(x.shape[1], 1)
        return 1.0 - cor[iu]
    return pdist(x.T, _PDIST[distance])


def _prepare(x, *, center: str, distance: str, algorithm: str, p_feature: float,
             genes=None) -> dict:
    """The data every block uses: the (centred) float64 matrix and, when every resample uses all
    genes and hierarchical clustering, the square distance matrix of all samples."""
    if center not in CENTERING:
        raise InputError(f"unknown centering {center!r} (choose one of {', '.join(CENTERING)})")
    x = _finite(x, genes)
    if center == "median":
        x = x - np.median(x, axis=1, keepdims=True)
    elif center == "mean":
        x = x - x.mean(axis=1, keepdims=True)
    full = None
    if algorithm == "hc" and p_feature == 1:
        full = squareform(_distances(x, distance), checks=False)
    return {"x": x, "distances": full}


# --------------------------------------------------------------------------- clustering


def _together_levels(dist: np.ndarray, m: int, linkage: str) -> np.ndarray:
    """For one resample's condensed distances, the largest k (1..m-1) at which each pair is in
    one cluster of R's ``cutree(hclust(d, linkage), k)``: m - 1 - (the 0-based merge joining
    it)."""
    if linkage == "ward.D":
        dist = np.sqrt(np.maximum(dist, 0.0))
    tree = hierarchy.linkage(dist, LINKAGES[linkage])
    tree[:, 2] = np.arange(m - 1)  # merge numbers as heights: cophenet gives the joining merge
    if _cophenetic_c is None:
        merge = hierarchy.cophenet(tree)
    else:
        merge = np.zeros(m * (m - 1) // 2)
        _cophenetic_c(np.ascontiguousarray(tree), merge, m)
    return (m - 1) - merge.astype(np.intp)


def _pair_table(n: int) -> np.ndarray:
    """(n, n) table: entry (i, j), i < j, is the pair's position in the condensed (row-major
    upper triangle) order."""
    table = np.zeros((n, n), dtype=np.intp)
    iu = np.triu_indices(n, 1)
    table[iu] = np.arange(iu[0].size)
    return table


def _block_counts(prepared: dict, block: int, *, seed: int, key: int, opts: dict):
    """(M (k_max - 1, pairs) int64, I_pairs (pairs,) int64, drawn (n,) int64) of one block, on
    the condensed pairs of all samples."""
    x, full = prepared["x"], prepared["distances"]
    n_features, n = x.shape
    k_max, m, linkage = opts["k_max"], opts["m"], opts["linkage"]
    draws = resample_draws(n, n_features, block=block, seed=seed, key=key,
                           resamples=opts["resamples"], k_max=k_max, p_item=opts["p_item"],
                           p_feature=opts["p_feature"], algorithm=opts["algorithm"])
    samples, genes = draws["samples"], draws["genes"]
    b = samples.shape[0]
    ai, bi = np.triu_indices(m, 1)
    table = _pair_table(n)
    n_pairs = n * (n - 1) // 2
    drawn = np.bincount(samples.ravel(), minlength=n)
    sampled = np.zeros(n_pairs, dtype=np.intp)
    if opts["algorithm"] == "hc":
        hist = np.zeros(n_pairs * (k_max + 1), dtype=np.intp)
        # a few resamples at a time keeps the (resamples x pairs) temporaries in cache
        for s in range(0, b, _PAIR_BATCH):
            first, second = samples[s:s + _PAIR_BATCH, ai], samples[s:s + _PAIR_BATCH, bi]
            pairs = table[first, second]
            sampled += np.bincount(pairs.ravel(), minlength=n_pairs)
            if full is not None:
                dists = full[first, second]
            else:
                dists = [_distances(x[np.ix_(genes[r], samples[r])], opts["distance"])
                         for r in range(s, min(s + _PAIR_BATCH, b))]
            code = pairs * (k_max + 1)
            for r in range(code.shape[0]):
                code[r] += np.minimum(_together_levels(dists[r], m, linkage), k_max)
            hist += np.bincount(code.ravel(), minlength=hist.size)
        # histogram of (pair, level capped at k_max); M_k = pairs with level >= k
        hist = hist.reshape(n_pairs, k_max + 1)
        together = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 2:].T
    else:
        if genes is None:
            data = np.ascontiguousarray(x.T[samples])  # (B, m, genes)
        else:
            data = np.stack([x[np.ix_(genes[r], samples[r])].T for r in range(b)])
        ks = np.arange(2, k_max + 1)
        starts = np.zeros((b, k_max - 1, k_max), dtype=np.int64)
        for k in ks:
            starts[:, k - 2, :k] = kmeans_starts(data, draws["starts"][:, k - 2], k)
        # all (resample, k) runs together, in tiles of bounded memory
        run_data = np.repeat(data, k_max - 1, axis=0)
        run_k = np.tile(ks, b)
        run_starts = starts.reshape(b * (k_max - 1), k_max)
        tile = max(1, _KMEANS_TILE // max(1, m * data.shape[2]))
        labels = np.concatenate([
            hartigan_wong(run_data[s:s + tile], run_starts[s:s + tile], run_k[s:s + tile])
            for s in range(0, run_k.size, tile)]).reshape(b, k_max - 1, m)
        together = np.zeros((k_max - 1, n_pairs), dtype=np.intp)
        for s in range(0, b, _PAIR_BATCH):
            pairs = table[samples[s:s + _PAIR_BATCH, ai], samples[s:s + _PAIR_BATCH, bi]]
            sampled += np.bincount(pairs.ravel(), minlength=n_pairs)
            for k in ks:
                chunk = labels[s:s + _PAIR_BATCH, k - 2]
                same = chunk[:, ai] == chunk[:, bi]
                together[k - 2] += np.bincount(pairs[same], minlength=n_pairs)
    return together.astype(np.int64), sampled.astype(np.int64), drawn.astype(np.int64)


def _square(together: np.ndarray, sampled: np.ndarray, drawn: np.ndarray):
    """Condensed counts -> (M (K, n, n), I (n, n)) int32, diagonals = times drawn."""
    n = drawn.size
    iu = np.triu_indices(n, 1)
    pairs_sampled = np.zeros((n, n), dtype=np.int32)
    pairs_sampled[iu] = sampled
    pairs_sampled += pairs_sampled.T
    pairs_sampled[np.diag_indices(n)] = drawn
    clustered = np.zeros((together.shape[0], n, n), dtype=np.int32)
    clustered[:, iu[0], iu[1]] = together
    clustered += clustered.transpose(0, 2, 1)
    clustered[:, np.arange(n), np.arange(n)] = drawn
    return clustered, pairs_sampled


def _counts_task(prepared: dict, blocks: Sequence[int], *, seed: int, key: int, opts: dict):
    """Summed condensed counts of several blocks (one task of the lazy graph)."""
    total = None
    for block in blocks:
        part = _block_counts(prepared, block, seed=seed, key=key, opts=opts)
        total = part if total is None else tuple(a + p for a, p in zip(total, part))
    return total


def _sum_counts(*parts):
    return tuple(np.sum(np.stack(field), axis=0) for field in zip(*parts))


def consensus_counts(x, *, block: int, seed: int, key: int, resamples: int, k_max: int,
                     p_item: float = 0.8, p_feature: float = 1.0, distance: str | None = None,
                     linkage: str = "average", algorithm: str = "hc", center: str = "none"):
    """Co-clustering and co-sampling counts of one resample block (CCP ``ccRun``).

    ``x``: (genes x samples) finite float matrix. Returns ``(M, I)``: ``M`` (k_max - 1, n, n)
    int32, ``M[k - 2, i, j]`` = resamples of the block in which samples i and j were both drawn
    and fell in one cluster at k; ``I`` (n, n) int32, resamples in which both were drawn; the
    diagonals count the resamples that drew the sample. Sums over blocks are the run's counts.
    """
    seed, key = check_seed(seed, key)
    x = np.asarray(x)
    opts = _options(x.shape[1], x.shape[0], resamples=resamples, k_max=k_max, p_item=p_item,
                    p_feature=p_feature, distance=distance, linkage=linkage, algorithm=algorithm)
    prepared = _prepare(x, center=center, distance=opts["distance"],
                        algorithm=opts["algorithm"], p_feature=opts["p_feature"])
    return _square(*_block_counts(prepared, block, seed=seed, key=key, opts=opts))


# --------------------------------------------------------------------------- summaries


def _cdf_breaks() -> np.ndarray:
    """R ``seq(0, 1, by = 1/100)``: from + (0:n) * by, capped at 1."""
    return np.minimum(np.arange(CDF_BINS + 1) * (1.0 / CDF_BINS), 1.0)


def cdf_area(consensus: np.ndarray):
    """CCP ``CDF``: per k, the empirical CDF of the lower-triangle consensus values on R
    ``hist``'s bins (breaks seq(0, 1, by = 0.01), right-closed, lowest included, fuzz 1e-7 x the
    median bin width), its area and CCP's delta area. ``consensus``: (K, n, n) for k = 2..K+1.
    Returns (cdf (K, 100), area (K,), delta (K,))."""
    consensus = np.asarray(consensus, dtype=np.float64)
    n = consensus.shape[-1]
    breaks = _cdf_breaks()
    widths = np.diff(breaks)
    diddle = 1e-7 * np.median(widths)
    fuzzy = breaks + np.concatenate([[-diddle], np.full(CDF_BINS, diddle)])
    lower = np.tril_indices(n, -1)
    cdf = np.empty((consensus.shape[0], CDF_BINS))
    for row, c in enumerate(consensus):
        values = c[lower]
        # bin j holds fuzzy[j] < v <= fuzzy[j + 1]; all values lie in [0, 1]
        counts = np.bincount(np.searchsorted(fuzzy[1:-1], values, side="left"),
                             minlength=CDF_BINS)
        cdf[row] = np.cumsum(counts) / values.size if values.size else np.nan
    area = np.cumsum(cdf * widths, axis=1)[:, -1]  # R adds bin by bin
    delta = area.copy()
    delta[1:] = (area[1:] - area[:-1]) / area[:-1]
    return cdf, area, delta


def item_consensus(consensus: np.ndarray, classes: np.ndarray, k_max: int | None = None):
    """CCP ``calcICL`` from consensus matrices (K, n, n) and classes (K, n) (1..k): item
    consensus (K, n, k_max) and cluster consensus (K, k_max), NaN beyond k and where CCP divides
    0 by 0 (classes of one sample)."""
    consensus = np.asarray(consensus, dtype=np.float64)
    classes = np.asarray(classes)
    n_k, n = classes.shape
    k_max = n_k + 1 if k_max is None else int(k_max)
    items = np.full((n_k, n, k_max), np.nan)
    clusters = np.full((n_k, k_max), np.nan)
    lower = np.tri(n, k=-1, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        for row in range(n_k):
            c = consensus[row].copy()
            np.fill_diagonal(c, 0.0)
            for cls in np.unique(classes[row]):
                members = classes[row] == cls
                size = int(members.sum())
                sums = c[:, members].sum(axis=1)
                items[row, :, cls - 1] = sums / (size - members)
                block = c[np.ix_(members, members)][lower[:size, :size]]
                clusters[row, cls - 1] = block.sum() / (size * (size - 1) / 2)
    return items, clusters


def consensus_result(M, I, *, final_linkage: str = "average") -> dict:
    """Everything CCP reports from the counts ``M`` (K, n, n) and ``I`` (n, n): ``consensus``
    (K, n, n), ``class`` (K, n) 1..k, ``item_consensus`` (K, n, k_max), ``cluster_consensus``
    (K, k_max), ``cdf`` (K, 100), ``area`` (K,), ``delta`` (K,), ``k`` (K,) = 2..k_max."""
    if final_linkage not in HCLUST_METHODS:
        raise InputError(f"unknown final linkage {final_linkage!r} (choose one of "
                         f"{', '.join(HCLUST_METHODS)})")
    M = np.asarray(M)
    I = np.asarray(I)
    n_k, n = M.shape[0], I.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        consensus = np.where(I > 0, M / np.where(I > 0, I, 1).astype(np.float64), 0.0)
    ks = np.arange(2, n_k + 2)
    classes = np.empty((n_k, n), dtype=np.int64)
    for row, k in enumerate(ks):
        first, second, _ = hclust(1.0 - consensus[row], final_linkage)
        classes[row] = cutree(first, second, [k])[0]
    items, clusters = item_consensus(consensus, classes, n_k + 1)
    cdf, area, delta = cdf_area(consensus)
    return {"consensus": consensus, "class": classes, "item_consensus": items,
            "cluster_consensus": clusters, "cdf": cdf, "area": area, "delta": delta, "k": ks}


# --------------------------------------------------------------------------- lazy wrapper

#: Rough seconds per resample of m samples (linkage + cophenet + bookkeeping), to size tasks.
_SECONDS_PER_RESAMPLE = (2e-4, 1e-8)
_TASK_SECONDS = 0.25
_SUM_FAN_IN = 8

_DESCRIPTIONS = {
    "consensus": "consensus index: fraction of the resamples drawing both samples in which "
                 "they fell in one cluster (0 if never drawn together)",
    "consensus_class": "consensus class 1..k (hclust of 1 - consensus, final linkage, cut at "
                       "k; numbered by first sample as R cutree)",
    "item_consensus": "mean consensus of the sample with the class's other members (CCP "
                      "calcICL)",
    "cluster_consensus": "mean consensus of the pairs within the class (CCP calcICL)",
    "consensus_cdf": "fraction of sample pairs with consensus <= the bin's upper break "
                     "(CCP CDF)",
    "consensus_area": "area under the consensus CDF (CCP CDF)",
    "consensus_delta": "relative change in CDF area from k - 1 (the area itself at k = 2; CCP)",
    "pairs_clustered": "resamples drawing both samples with both in one cluster at k",
    "pairs_sampled": "resamples drawing both samples (diagonal: drawing the sample)",
}


def _task_blocks(n_blocks: int, m: int, blocks_per_task: int | None) -> int:
    if blocks_per_task is None:
        per_resample = _SECONDS_PER_RESAMPLE[0] + _SECONDS_PER_RESAMPLE[1] * m * m
        blocks_per_task = math.ceil(_TASK_SECONDS / (RESAMPLE_BLOCK * per_resample))
    elif isinstance(blocks_per_task, bool) or not isinstance(blocks_per_task, int) \
            or blocks_per_task < 1:
        raise InputError(f"blocks_per_task must be a positive integer, got {blocks_per_task!r}")
    return max(1, min(int(blocks_per_task), n_blocks))


def _finish(counts, final_linkage: str) -> dict:
    clustered, sampled = _square(*counts)
    out = consensus_result(clustered, sampled, final_linkage=final_linkage)
    out["pairs_clustered"], out["pairs_sampled"] = clustered, sampled
    return out


def consensus_cluster(x, *, seed: int, key: int, resamples: int = 1000, k_max: int = 6,
                      p_item: float = 0.8, p_feature: float = 1.0, distance: str | None = None,
                      linkage: str = "average", final_linkage: str = "average",
                      algorithm: str = "hc", center: str = "none",
                      samples: Sequence[str] | None = None,
                      blocks_per_task: int | None = None) -> xr.Dataset:
    """Consensus clustering of the samples (columns) of ``x`` (genes x samples: numpy, Dask or
    an xarray DataArray with dims (gene, sample)), ConsensusClusterPlus's semantics (module
    docstring). Lazy: building computes nothing; the resample blocks are Dask tasks of
    ``blocks_per_task`` blocks each (default: ~0.25 s of work), summed in a tree.

    ``center``: subtract each gene's median or mean over the samples first (CCP's vignette
    median-centres; CCP itself does not). Defaults are CCP's (pItem 0.8, pFeature 1, average
    inner and final linkage, Pearson) except ``resamples`` and ``k_max``.

    Returns a Dataset with dims ``k`` (2..k_max), ``sample``, ``sample_b`` (the same samples),
    ``cluster`` (1..k_max) and ``bin`` (upper breaks 0.01..1): ``consensus`` (k, sample,
    sample_b), ``consensus_class`` (k, sample), ``item_consensus`` (k, sample, cluster),
    ``cluster_consensus`` (k, cluster), ``consensus_cdf`` (k, bin), ``consensus_area`` and
    ``consensus_delta`` (k), ``pairs_clustered`` (k, sample, sample_b) and ``pairs_sampled``
    (sample, sample_b) counts. Attributes record the options, seed, key and block size.
    """
    seed, key = check_seed(seed, key)
    if isinstance(x, xr.DataArray):
        if x.ndim != 2 or x.dims[1] != "sample":
            raise InputError(f"consensus clustering needs a (gene, sample) array, got dims "
                             f"{x.dims}")
        if samples is None and "sample" in x.coords:
            samples = np.asarray(x["sample"].values).astype(str).astype(object)
        row_dim = x.dims[0]
        genes = np.asarray(x[row_dim].values).astype(str) if row_dim in x.coords else None
        x = x.data
    else:
        genes = None
    if not isinstance(x, da.Array):
        x = da.from_array(np.asarray(x), chunks=-1)
    n_features, n = x.shape
    opts = _options(n, n_features, resamples=resamples, k_max=k_max, p_item=p_item,
                    p_feature=p_feature, distance=distance, linkage=linkage, algorithm=algorithm)
    if center not in CENTERING:
        raise InputError(f"unknown centering {center!r} (choose one of {', '.join(CENTERING)})")
    if final_linkage not in HCLUST_METHODS:
        raise InputError(f"unknown final linkage {final_linkage!r} (choose one of "
                         f"{', '.join(HCLUST_METHODS)})")
    if samples is None:
        samples = np.array([f"S{i}" for i in range(n)], dtype=object)
    samples = np.asarray(samples, dtype=object)
    if samples.shape != (n,):
        raise InputError(f"samples must name the {n} columns, got {samples.shape[0]} names")

    # dashboard names: consensus-prepare, consensus-resample-block (the resampled clusterings),
    # consensus-sum-counts (a tree sum), consensus-final (consensus matrices, CDF, classes)
    block = x.rechunk((-1, -1)).to_delayed().ravel()[0]
    prepared = named_task(
        "consensus-prepare", _prepare, block, center=center, distance=opts["distance"],
        algorithm=opts["algorithm"], p_feature=opts["p_feature"], genes=genes)
    n_blocks = math.ceil(opts["resamples"] / RESAMPLE_BLOCK)
    per_task = _task_blocks(n_blocks, opts["m"], blocks_per_task)
    parts = [named_task("consensus-resample-block", _counts_task, prepared,
                        tuple(range(s, min(s + per_task, n_blocks))), seed=seed, key=key,
                        opts=opts) for s in range(0, n_blocks, per_task)]
    while len(parts) > 1:
        parts = [named_task("consensus-sum-counts", _sum_counts, *parts[i:i + _SUM_FAN_IN])
                 for i in range(0, len(parts), _SUM_FAN_IN)]
    result = named_task("consensus-final", _finish, parts[0], final_linkage)

    n_k, k_max = opts["k_max"] - 1, opts["k_max"]
    shapes = {"consensus": ((n_k, n, n), np.float64, ("k", "sample", "sample_b")),
              "class": ((n_k, n), np.int64, ("k", "sample")),
              "item_consensus": ((n_k, n, k_max), np.float64, ("k", "sample", "cluster")),
              "cluster_consensus": ((n_k, k_max), np.float64, ("k", "cluster")),
              "cdf": ((n_k, CDF_BINS), np.float64, ("k", "bin")),
              "area": ((n_k,), np.float64, ("k",)),
              "delta": ((n_k,), np.float64, ("k",)),
              "pairs_clustered": ((n_k, n, n), np.int32, ("k", "sample", "sample_b")),
              "pairs_sampled": ((n, n), np.int32, ("sample", "sample_b"))}
    names = {"class": "consensus_class", "cdf": "consensus_cdf", "area": "consensus_area",
             "delta": "consensus_delta"}
    data_vars = {}
    for field, (shape, dtype, dims) in shapes.items():
        name = names.get(field, field)
        data_vars[name] = xr.Variable(dims, da.from_delayed(result[field], shape=shape,
                                                            dtype=dtype),
                                      attrs={"description": _DESCRIPTIONS[name]})
    coords = {"k": np.arange(2, k_max + 1), "cluster": np.arange(1, k_max + 1),
              "bin": _cdf_breaks()[1:], "sample": samples, "sample_b": samples.copy()}
    attrs = {"method": "consensus clustering (ConsensusClusterPlus 1.62 semantics)",
             "resamples": opts["resamples"], "k_max": k_max, "p_item": opts["p_item"],
             "p_feature": opts["p_feature"], "distance": opts["distance"],
             "linkage": opts["linkage"], "final_linkage": final_linkage,
             "algorithm": opts["algorithm"], "center": center, "seed": seed, "key": key,
             "resample_block": RESAMPLE_BLOCK}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


# --------------------------------------------------------------------------- labelling


def signature_score(signature) -> np.ndarray:
    """Each sample's mean over the signature's genes of the gene's z-score across the samples
    (z = (x - mean) / sd, sd with n - 1, both over the samples with a value). Genes constant
    across the samples and missing values are left out of the mean; a sample without any value
    scores NaN. ``signature``: (genes x samples) or one gene's (samples,) values."""
    x = np.asarray(signature, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise InputError(f"a signature is a (genes x samples) matrix, got shape {x.shape}")
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-missing rows / columns: NaN
        mean = np.nanmean(x, axis=1, keepdims=True)
        sd = np.nanstd(x, axis=1, ddof=1, keepdims=True)
        z = (x - mean) / np.where(sd > 0, sd, np.nan)
        return np.nanmean(z, axis=0)


def _rank_classes(classes, score, names, prefix) -> dict:
    classes = np.asarray(classes)
    score = np.asarray(score, dtype=np.float64)
    if classes.ndim != 1 or classes.shape != score.shape:
        raise InputError(f"labelling needs one class and one score per sample, got classes "
                         f"{classes.shape} and scores {score.shape}")
    levels, at = np.unique(classes, return_inverse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a class without scores: NaN
        class_score = np.array([np.nanmean(score[at == i]) for i in range(levels.size)])
    # highest mean score first; equal (or NaN, last) scores keep the class order
    order = np.argsort(-np.where(np.isnan(class_score), -np.inf, class_score), kind="stable")
    rank = np.empty(levels.size, dtype=np.int64)
    rank[order] = np.arange(1, levels.size + 1)
    if names is not None and len(names) == levels.size:
        text = [f"{prefix}{names[r - 1]}" for r in rank]
    else:
        last = levels.size
        text = [f"{prefix}{r}" + (" (highest)" if r == 1 and last > 1 else
                                  " (lowest)" if r == last and last > 1 else "") for r in rank]
    return {"label": np.array(text, dtype=object)[at], "rank": rank[at],
            "class_score": class_score, "classes": levels}


def label_by_score(classes, signature, *, names: Sequence[str] | None = ("High", "Medium", "Low"),
                   prefix: str = "") -> dict:
    """Label classes by a signature (the ICR classes High / Medium / Low of Hendrickx et al.
    2017, Bertucci et al. 2018): each sample scores :func:`signature_score` (mean z-score of the
    signature's genes across the samples); a class scores the mean of its samples' scores, and
    the classes are ranked by it, highest first.

    ``classes``: (samples,) class of each sample; ``signature``: (genes x samples) values. With
    as many ``names`` as classes, the class of rank r is ``prefix + names[r - 1]`` (``prefix=
    "ICR "``: "ICR High"); otherwise ``prefix + "1 (highest)"``, ``"2"``, ..., ``"k (lowest)"``.
    Returns ``score`` (samples,), ``label`` (samples,), ``rank`` (samples,: 1 = the highest
    class), ``class_score`` and ``classes`` (per distinct class, in sorted order).
    """
    score = signature_score(signature)
    return {"score": score, **_rank_classes(classes, score, names, prefix)}


def _labels_per_k(classes, signature, names, prefix) -> dict:
    score = signature_score(signature)
    classes = np.asarray(classes)
    n_k, n = classes.shape
    label = np.empty((n_k, n), dtype=object)
    rank = np.empty((n_k, n), dtype=np.int64)
    class_score = np.full((n_k, n_k + 1), np.nan)
    for row in range(n_k):
        out = _rank_classes(classes[row], score, names, prefix)
        label[row], rank[row] = out["label"], out["rank"]
        class_score[row, out["classes"] - 1] = out["class_score"]
    return {"score": score, "label": label, "rank": rank, "class_score": class_score}


def label_consensus(result: xr.Dataset, signature, *,
                    names: Sequence[str] | None = ("High", "Medium", "Low"),
                    prefix: str = "") -> xr.Dataset:
    """:func:`label_by_score` of the consensus classes of every k of ``result`` (from
    :func:`consensus_cluster`); lazy when either input is. ``signature``: (genes x samples)
    numpy, Dask or DataArray over the same samples. Returns ``signature_score`` (sample),
    ``consensus_label`` and ``consensus_rank`` (k, sample), ``class_score`` (k, cluster)."""
    if isinstance(signature, xr.DataArray):
        signature = signature.data
    classes = result["consensus_class"].data
    n_k, n = classes.shape
    if signature.shape[-1] != n:
        raise InputError(f"the signature has {signature.shape[-1]} samples, the consensus "
                         f"classes {n}")
    classes, signature = (as_delayed(v) if isinstance(v, da.Array) else v
                          for v in (classes, signature))
    out = named_task("consensus-labels", _labels_per_k, classes, signature, names, prefix)
    fields = {"signature_score": ((n,), np.float64, ("sample",),
                                  "mean z-score of the signature's genes across the samples"),
              "consensus_label": ((n_k, n), object, ("k", "sample"),
                                  "class label by the mean signature score of the class"),
              "consensus_rank": ((n_k, n), np.int64, ("k", "sample"),
                                 "rank of the sample's class by mean signature score "
                                 "(1 = highest)"),
              "class_score": ((n_k, n_k + 1), np.float64, ("k", "cluster"),
                              "mean signature score of the class")}
    keys = {"signature_score": "score", "consensus_label": "label", "consensus_rank": "rank",
            "class_score": "class_score"}
    data = {name: xr.Variable(dims, da.from_delayed(out[keys[name]], shape=shape, dtype=dtype),
                              attrs={"description": text})
            for name, (shape, dtype, dims, text) in fields.items()}
    return xr.Dataset(data, coords={c: result[c] for c in ("k", "sample", "cluster")},
                      attrs={"names": list(names) if names is not None else [],
                             "prefix": prefix})
