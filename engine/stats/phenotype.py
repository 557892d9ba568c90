"""Phenotype-permutation GSEA on the expression matrix (Subramanian et al. 2005, PNAS 102:15545;
GSEA desktop, ``permute=phenotype``).

The genes are ranked by a two-group metric of the true labels; every label permutation ranks them
again by the metric of the permuted labels, and each gene set's running-sum enrichment score on
those rankings is its null. The running sum and the GSEA statistics (NES, nominal p, FDR q) are
:func:`engine.stats.gsea.enrichment_scores` and :func:`engine.stats.gsea.enrichment_statistics`.

Ranking metrics (GSEA desktop ``XMath`` / ``Vector``; A = case, B = control, means and standard
deviations of each group, sigma with n - 1 as GSEA's default ``usebiased=false``):

* ``signal_to_noise``: (mu_A - mu_B) / (sigma_A + sigma_B)
* ``t_test``: (mu_A - mu_B) / sqrt(sigma_A^2 / n_A + sigma_B^2 / n_B)
* ``diff_of_classes``: mu_A - mu_B
* ``ratio_of_classes``: mu_A / mu_B
* ``log2_ratio_of_classes``: log2(mu_A / mu_B)

For the first two, sigma is GSEA's "fix low" sigma (``Vector.stddevUnBiasedFixLow``, on by
default): sigma = max(sd, 0.2 |mu|), and max(sd, 0.2) when mu is exactly 0; a group of one sample
has sd 0, as in GSEA. GSEA applies the rule in its t test too (its variance is the fixed sigma
squared). GSEApy applies it to signal-to-noise only.

All permutations at once: with a (samples x permutations) 0/1 label matrix L, group sums are
``X @ L`` and sums of squares ``X**2 @ L``; the control group's are the totals minus the case's.
To make every sum exact, whatever the order BLAS adds in (so a gene's metric is bit-identical for
any gene chunking, permutation batch, thread count or BLAS), each gene is put on a grid: shifted
by its mean rounded to the grid and scaled by a power of two so that the values are integers of
at most 2h bits, h = floor((53 - ceil(log2 n)) / 2) (22 for 200 samples: a grid step of at most
2^-42 of the gene's largest deviation from its mean, far below float32 resolution). Integer sums
of up to n such values are exact in float64; squares are summed exactly as three products of the
h-bit halves (four matrix products in all instead of two: the price of exactness). Float32
values are on the grid unless they are below about 2^-19 of that deviation; smaller ones are
rounded to it, so a group of values ~1e-13 times smaller than the gene's spread counts as a
group of zeros (mean exactly 0). A within-group sum of squares below 16 eps of its raw sum of
squares (its rounding bound) counts as 0, so a constant group has sd exactly 0 as in GSEA.

Missing values: a gene with a missing (NaN) value gets a NaN metric for every labelling and is
left out of the ranked list, as are genes with a value <= 0 for the two ratio metrics (they are
for positive, natural-scale data, where the ratio of means is always defined). Left-out genes do
not count in a set's size.

Ranking: decreasing metric; ties are ordered by the gene's row (the earlier row first), for the
observed and every permuted ranking, whatever sort is used.

Permutations: the labels of permutation j are drawn with group sizes preserved, in blocks of
:data:`PERMUTATION_BLOCK` permutations (preranked GSEA's block, 256), block b from
``np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, b)))``. The block size is a
constant of the algorithm: the compute batch (``block_size``, from the memory budget) only groups
permutations for computing and never changes which permutation j is. The same permutation is
applied to every gene. When the C(n, n_A) - 1 relabellings other than the observed one are at
most ``permutations``, all of them are enumerated instead (``exhaustive``): with the observed
labelling counted once by the +1 of the p-value (``enrichment_statistics``), p is then the exact
permutation p-value, #(relabellings with an ES at least as extreme) / #(relabellings with an ES
of that sign), counting the observed one.

Statistics (NES, p = (n_more_extreme + 1) / (n_same_sign + 1), GSEA's FDR q over all sets with an
ES) are :func:`engine.stats.gsea.enrichment_statistics` on each set's own null, as GSEA does for
phenotype permutations (no sharing between sets of equal size: the null ranking is the same but
each set's members differ).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import dask
import dask.array as da
from dask.base import tokenize
import numpy as np

from engine.errors import InputError
from engine.resample.exact import exact_sums, grid_powers, half_bits, on_grid, sum_of_squares
from engine.resample.rng import block_rng, check_seed
from engine.stats import gsea, multitest
from engine.stats.features import named_task

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "METRICS",
    "PERMUTATION_BLOCK",
    "gsea_phenotype",
    "label_permutations",
    "ranking_metrics",
    "relabellings",
]

#: Permutations per random block (shared with preranked GSEA): permutation j is column
#: j % PERMUTATION_BLOCK of block j // PERMUTATION_BLOCK. Part of the results' contract.
PERMUTATION_BLOCK = gsea.PERMUTATION_BLOCK
METRICS = ("signal_to_noise", "t_test", "diff_of_classes", "ratio_of_classes",
           "log2_ratio_of_classes")
_RATIO_METRICS = ("ratio_of_classes", "log2_ratio_of_classes")
#: Memory for one batch of permutations, all genes (the metrics, their ranking and its inverse).
DEFAULT_MEMORY_BUDGET = 256 * 2**20
_BYTES_PER_GENE_PERMUTATION = 48
#: Exhaustive enumeration of relabellings is refused above this count.
MAX_RELABELLINGS = 10**6
#: Most (sets x permutations x members) positions handled in one call of the running sum.
_POSITIONS_PER_CALL = 2**22
_SS_ZERO = 16 * np.finfo(np.float64).eps
#: Genes x labellings per tile of the metric computation (temporaries of ~2 MB each).
_TILE_ELEMENTS = 2**18


# --------------------------------------------------------------------------- labels


def _groups(is_case) -> np.ndarray:
    is_case = np.asarray(is_case)
    if is_case.ndim != 1 or is_case.dtype.kind not in "bui":
        raise InputError(f"is_case must be a 1-D boolean vector of the samples, got dtype "
                         f"{is_case.dtype} and shape {is_case.shape}")
    if is_case.dtype.kind != "b":
        if not np.isin(is_case, (0, 1)).all():
            raise InputError("is_case must hold only True/False (or 1/0)")
        is_case = is_case.astype(bool)
    n_case = int(is_case.sum())
    if n_case == 0 or n_case == is_case.size:
        raise InputError(f"both groups need a sample: {n_case} case and "
                         f"{is_case.size - n_case} control samples (check case/control labels)")
    return is_case


def label_permutations(is_case, n_permutations: int, *, seed: int, key: int, block: int,
                       block_size: int = PERMUTATION_BLOCK, dtype=np.float64) -> np.ndarray:
    """Block ``block`` of the label permutations: a (samples x width) 0/1 matrix (``dtype``,
    float64 for the products; bool holds a block in an eighth of the memory) whose
    column i is permutation ``block * block_size + i`` of ``is_case`` (group sizes preserved).

    The block's generator is ``default_rng(SeedSequence(seed, spawn_key=(key, block)))``; all
    ``block_size`` permutations of the block are drawn and the last block is cut at
    ``n_permutations`` (width = min(block_size, n_permutations - block * block_size)), so
    permutation j does not depend on ``n_permutations``, on how genes are chunked nor on which
    worker draws it. ``block_size`` is part of the permutations' identity: GSEA here always uses
    :data:`PERMUTATION_BLOCK`.
    """
    is_case = _groups(is_case)
    seed, key = check_seed(seed, key)
    first = int(block) * int(block_size)
    if block_size < 1 or block < 0 or first >= n_permutations:
        raise InputError(f"permutation block {block} of size {block_size} is outside "
                         f"{n_permutations} permutations")
    rng = block_rng(seed, key, int(block))
    width = min(int(block_size), n_permutations - first)
    # Row by row, the same draws as ``rng.permuted(np.tile(arange, (block_size, 1)), axis=1)``
    # (each row is shuffled in turn from one stream; tested): the rows past ``width`` are never
    # used, so they are not drawn, and no (block_size x samples) index matrix is held (it was
    # 200 MB per task at 50,000 samples).
    labels = np.empty((is_case.size, width), dtype=dtype)
    order = np.empty(is_case.size, dtype=np.int64)
    for i in range(width):
        order[:] = np.arange(is_case.size)
        rng.shuffle(order)
        labels[:, i] = is_case[order]
    return labels


def relabellings(is_case) -> np.ndarray:
    """Every distinct relabelling with the group sizes of ``is_case``: a (samples x C(n, n_A))
    0/1 matrix, the case samples of column j the j-th n_A-combination in lexicographic order."""
    is_case = _groups(is_case)
    n, k = is_case.size, int(is_case.sum())
    count = math.comb(n, k)
    if count > MAX_RELABELLINGS:
        raise InputError(f"{count} relabellings of {k} case and {n - k} control samples are too "
                         f"many to enumerate (at most {MAX_RELABELLINGS}); use random "
                         "permutations (exhaustive: false)")
    cases = np.fromiter(itertools.combinations(range(n), k), dtype=np.dtype((np.intp, k)),
                        count=count)
    labels = np.zeros((n, count))
    labels[cases, np.arange(count)[:, None]] = 1.0
    return labels


def _labels(is_case, start: int, stop: int, *, seed, key, exhaustive: bool) -> np.ndarray:
    """Permutations ``start..stop-1`` as a (samples x (stop - start)) 0/1 matrix; exhaustive:
    the relabellings other than the observed one, in lexicographic order."""
    if exhaustive:
        every = relabellings(is_case)
        others = (every != is_case[:, None]).any(axis=0)
        return np.ascontiguousarray(every[:, others][:, start:stop])
    first, last = start // PERMUTATION_BLOCK, (stop - 1) // PERMUTATION_BLOCK
    blocks = [label_permutations(is_case, stop, seed=seed, key=key, block=b)
              for b in range(first, last + 1)]
    offset = start - first * PERMUTATION_BLOCK
    return np.ascontiguousarray(np.concatenate(blocks, axis=1)[:, offset:offset + stop - start])


# --------------------------------------------------------------------------- metrics


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise InputError(f"unknown ranking metric {metric!r} (choose one of {', '.join(METRICS)})")


def _usable(x: np.ndarray, metric: str) -> np.ndarray:
    """Genes that get a metric: no missing value (and all values > 0 for the ratio metrics)."""
    usable = np.isfinite(x).all(axis=1)
    if metric in _RATIO_METRICS:
        with np.errstate(invalid="ignore"):
            usable &= (x > 0).all(axis=1)
    return usable


def _moments(parts, count, h):
    """Centred mean and sd (n - 1; 0 for a single sample) of one group, in grid units, from its
    exact sums (sum, and the three products of halves of the sum of squares)."""
    s = parts[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        centred = s / count
        raw = sum_of_squares(parts[1:], h)
        ss = raw - s * centred
        ss[ss <= _SS_ZERO * raw] = 0.0  # rounding of a constant group's 0
        ss *= 1.0 / np.maximum(count - 1, 1)
        return centred, np.sqrt(ss, out=ss)


def _fixed_sigma(sd, centred, offset, step):
    """GSEA's minimum sigma in grid units: max(sd, 0.2 |mu|), and max(sd, 0.2) where mu is
    exactly 0 (mu = (centred + offset) * step, exactly 0 for a group of zeros)."""
    floor = centred + offset[:, None]
    np.abs(floor, out=floor)
    floor *= 0.2
    zero = floor == 0
    if zero.any():
        floor[zero] = np.broadcast_to((0.2 / step)[:, None], floor.shape)[zero]
    return np.maximum(sd, floor, out=floor)


def _metric_tile(x, labels, n_case, n_control, h, metric):
    grid = on_grid(x, h)
    offset, step = grid.offset, grid.step
    products = grid_powers(grid)
    # exact integer sums, whatever order BLAS adds in; one product for the four
    case = exact_sums(products, labels)
    control = products.sum(axis=2)[:, :, None] - case
    centred_a, sd_a = _moments(case, n_case, h)
    centred_b, sd_b = _moments(control, n_control, h)
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric in _RATIO_METRICS:
            ratio = (centred_a + offset[:, None]) / (centred_b + offset[:, None])
            return ratio if metric == "ratio_of_classes" else np.log2(ratio, out=ratio)
        diff = centred_a - centred_b
        if metric == "diff_of_classes":
            diff *= step[:, None]
            return diff
        sigma_a = _fixed_sigma(sd_a, centred_a, offset, step)
        sigma_b = _fixed_sigma(sd_b, centred_b, offset, step)
        if metric == "signal_to_noise":
            sigma_a += sigma_b
        else:
            sigma_a *= sigma_a
            sigma_a *= 1.0 / n_case
            sigma_b *= sigma_b
            sigma_b *= 1.0 / n_control
            sigma_a += sigma_b
            np.sqrt(sigma_a, out=sigma_a)
        diff /= sigma_a
        return diff


def _metrics(x: np.ndarray, labels: np.ndarray, metric: str, out: np.ndarray) -> None:
    """The metric of every gene (row of ``x``) for every labelling (column) into ``out``
    (genes x labellings, possibly a transposed view), a tile of genes at a time so that the
    temporaries stay in cache. Genes without a metric (``_usable``) get NaN."""
    usable = _usable(x, metric)
    out[~usable] = np.nan
    if not usable.any():
        return
    rows_of = np.flatnonzero(usable)
    n = x.shape[1]
    h = half_bits(n)
    n_case = labels.sum(axis=0)
    n_control = n - n_case
    rows = max(1, _TILE_ELEMENTS // max(1, labels.shape[1], n))
    for start in range(0, rows_of.size, rows):
        tile = rows_of[start:start + rows]
        if tile[-1] - tile[0] + 1 == tile.size:
            tile = slice(tile[0], tile[-1] + 1)
        block = np.ascontiguousarray(x[tile], dtype=np.float64)
        out[tile] = _metric_tile(block, labels, n_case, n_control, h, metric)


def ranking_metrics(x, labels, metric: str = "signal_to_noise") -> np.ndarray:
    """GSEA's ranking metric of every gene for every labelling: a (genes x labellings) float64.

    ``x``: (genes x samples), float32 or float64, NaN meaning missing. ``labels``: (samples x
    labellings) 0/1, 1 = case (group A). Definitions, the minimum-sigma rule and the exact-sum
    scheme: see the module docstring. NaN for genes with a missing value (and genes with a value
    <= 0 for the ratio metrics), and for labellings with an empty group.
    """
    _check_metric(metric)
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        x = x.astype(np.float64)
    labels = np.ascontiguousarray(labels, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"x must be a 2-D (genes x samples) array, got shape {x.shape}")
    if labels.ndim != 2 or labels.shape[0] != x.shape[1]:
        raise InputError(f"labels must be a (samples x labellings) matrix of the {x.shape[1]} "
                         f"samples, got shape {labels.shape}")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise InputError("labels must hold only 0 (control) and 1 (case)")
    out = np.empty((x.shape[0], labels.shape[1]))
    _metrics(x, labels, metric, out)
    return out


# --------------------------------------------------------------------------- ranking and ES


def _prepare_sets(members: Sequence, n_genes: int):
    """Members as (flat row positions, lengths): sorted, duplicates dropped, range checked."""
    cleaned = gsea.member_rows(members, n_genes)
    lengths = np.array([m.size for m in cleaned], dtype=np.int64)
    flat = np.concatenate(cleaned) if cleaned else np.zeros(0, np.int64)
    return flat, lengths


def _usable_sets(sets, usable: np.ndarray):
    """Set sizes among the usable genes, and sets grouped by size as matrices of their members'
    positions among the usable genes (sets with no member or every gene are left out)."""
    flat, lengths = sets
    n_sets = lengths.size
    set_of = np.repeat(np.arange(n_sets), lengths)
    keep = usable[flat]
    upos = (np.cumsum(usable) - 1)[flat[keep]]
    sizes = np.bincount(set_of[keep], minlength=n_sets)
    starts = np.cumsum(sizes) - sizes
    n_usable = int(usable.sum())
    groups = []
    for k in np.unique(sizes):
        if 0 < k < n_usable:
            ids = np.flatnonzero(sizes == k)
            groups.append((ids, upos[starts[ids][:, None] + np.arange(k)]))
    return sizes, groups


def _ranked_order(keys: np.ndarray):
    """Ascending order of each row of ``keys`` (-metric), ties by column: (order, sorted keys).

    Any sort gives the same result: rows with ties are re-sorted on (run of equal keys, column),
    which is unique.
    """
    n = keys.shape[1]
    order = np.argsort(keys, axis=1)
    sorted_keys = np.take_along_axis(keys, order, axis=1)
    tied = sorted_keys[:, 1:] == sorted_keys[:, :-1]
    rows = np.flatnonzero(tied.any(axis=1))
    if rows.size:
        run = np.zeros((rows.size, n), np.int64)
        np.cumsum(~tied[rows], axis=1, out=run[:, 1:])
        order[rows] = np.sort(run * n + order[rows], axis=1) % n
    return order, sorted_keys


def _enrichment(keys: np.ndarray, groups, n_sets: int, weight: float, *, observed=False):
    """Enrichment score of every set (rows of the result) for every labelling (row of ``keys``,
    the negated metric of the usable genes); with ``observed``, also each set's member
    positions in the ranking of labelling 0 and the index of the peak."""
    width, n_genes = keys.shape
    order, sorted_keys = _ranked_order(keys)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(n_genes), order.shape), axis=1)
    es = np.full((n_sets, width), np.nan)
    peaks = {}
    rows = np.arange(width)[None, :, None]
    for ids, mat in groups:
        step = max(1, _POSITIONS_PER_CALL // (width * mat.shape[1]))
        for lo in range(0, ids.size, step):
            part, members = ids[lo:lo + step], mat[lo:lo + step]
            positions = np.sort(ranks[:, members].transpose(1, 0, 2), axis=-1)
            weights = np.abs(sorted_keys[rows, positions])
            if weight != 1:
                weights = weights**weight
            score, peak = gsea.enrichment_scores(positions, weights, n_genes)
            es[part] = score
            if observed:
                for s, pos, pk in zip(part, positions[:, 0], peak[:, 0]):
                    peaks[int(s)] = (order[0, pos], int(pk))
    return (es, peaks) if observed else es


def _genes(blocks):
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)


def _metric_block(x_block, labels, *, metric):
    """(labellings x genes of the block): the metric, transposed for ranking."""
    x_block = np.asarray(x_block)
    out = np.empty((labels.shape[1], x_block.shape[0]))
    _metrics(x_block, labels, metric, out.T)
    return out


def _observed(metric_blocks, sets, weight):
    """Observed ES, set sizes, leading edges (gene rows) and the number of ranked genes."""
    metric = _genes(metric_blocks)[0]
    usable = np.isfinite(metric)
    sizes, groups = _usable_sets(sets, usable)
    es, peaks = _enrichment(-metric[None, usable], groups, sizes.size, weight, observed=True)
    es = es[:, 0]
    rows = np.flatnonzero(usable)
    leading = np.empty(sizes.size, dtype=object)
    for s in range(sizes.size):
        if s in peaks and np.isfinite(es[s]):
            genes, peak = peaks[s]
            leading[s] = rows[genes[:peak + 1] if es[s] >= 0 else genes[peak:][::-1]]
        else:
            leading[s] = np.zeros(0, np.int64)
    return {"es": es, "size": sizes, "leading_edge": leading, "n_genes": int(usable.sum())}


def _null(metric_blocks, observed_blocks, sets, weight):
    """(sets x batch) null enrichment scores of one batch of permutations (all genes)."""
    usable = np.isfinite(_genes(observed_blocks)[0])
    metric = _genes(metric_blocks)
    keys = np.negative(metric if usable.all() else metric[:, usable])
    sizes, groups = _usable_sets(sets, usable)
    return _enrichment(keys, groups, sizes.size, weight)


def _finish(observed, null_blocks, exhaustive: bool):
    es = observed["es"]
    null = np.concatenate(null_blocks, axis=1)
    stats = gsea.enrichment_statistics(es, null)
    p, n_more, n_same = stats["p_value"], stats["n_more_extreme"], stats["n_same_sign"]
    p_floor = np.where((n_more == 0) & ~np.isnan(p), 1.0 / (n_same + 1), np.nan)
    # an enumerated null has no Monte Carlo error
    log2err = np.where(np.isnan(p), np.nan, 0.0 if exhaustive
                       else gsea.simple_log2err(n_more, null.shape[1]))
    return {"size": observed["size"], "es": es, "nes": stats["nes"], "p_value": p,
            "p_adj": multitest.benjamini_hochberg(p), "fdr_q": stats["fdr_q"],
            "log2err": log2err, "p_floor": p_floor, "n_more_extreme": n_more,
            "n_same_sign": n_same,
            "n_permutations": np.full(es.size, null.shape[1], dtype=np.int64),
            "leading_edge": observed["leading_edge"], "n_genes": observed["n_genes"],
            "null": null}


# --------------------------------------------------------------------------- the analysis

_SET_FIELDS = {"size": np.int64, "es": np.float64, "nes": np.float64, "p_value": np.float64,
               "p_adj": np.float64, "fdr_q": np.float64, "log2err": np.float64,
               "p_floor": np.float64, "n_more_extreme": np.int64, "n_same_sign": np.int64,
               "n_permutations": np.int64, "leading_edge": object}


def gsea_phenotype(x, is_case, members: Sequence, *, metric: str = "signal_to_noise",
                   permutations: int = 1000, seed: int, key: int, weight: float = 1.0,
                   block_size: int | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                   exhaustive: bool | None = None, return_null: bool = False) -> dict:
    """Phenotype-permutation GSEA of gene sets on a (genes x samples) matrix (see module doc).

    ``x``: numpy or dask (genes x samples); ``is_case``: (samples,) bool, True = group A (the
    numerator of every metric); ``members``: one array of gene row positions of ``x`` per set.
    ``weight``: the running sum's exponent p (1 = GSEA's weighted score, 0 = classic).
    ``block_size``: permutations computed together (default: as many as ``memory_budget`` bytes
    allow at 48 bytes per gene and permutation); it never changes the result.
    ``exhaustive``: enumerate the C(n, n_A) - 1 relabellings other than the observed one instead
    of drawing ``permutations`` random ones; default: exactly when they are <= ``permutations``.

    Returns a dict; per set (arrays in the order of ``members``): ``size`` (members with a
    metric), ``es``, ``nes``, ``p_value``, ``p_adj`` (Benjamini-Hochberg over the sets with a
    p), ``fdr_q``, ``n_more_extreme``, ``n_same_sign`` (as :func:`gsea.enrichment_statistics`),
    ``log2err`` (fgsea's standard deviation of log2 p, :func:`gsea.simple_log2err`; 0 when
    exhaustive: the p is exact), ``p_floor`` (1 / (n_same_sign + 1), the smallest p the set can
    get, where its p equals it; else NaN), ``n_permutations`` (the null's size),
    ``leading_edge`` (object array of int arrays of gene rows of ``x``: for ES >= 0 the members
    from the top of the ranking down to the peak, for ES < 0 those from the bottom up to the
    trough, most extreme first, as preranked GSEA); and ``permutations`` (used: the count
    drawn, or C(n, n_A) - 1 when exhaustive), ``n_relabellings`` (distinct relabellings
    C(n, n_A), the observed one included), ``exhaustive``, ``n_genes`` (genes ranked), ``null``
    (sets x permutations null ES, with ``return_null``). Sets without a member, or holding every
    ranked gene, get NaN. With a dask ``x`` every array is lazy and building computes nothing: a
    task holds one gene chunk and one batch of permutations, or all genes for one batch.
    """
    _check_metric(metric)
    is_case = _groups(is_case)
    seed, key = check_seed(seed, key)
    if not isinstance(x, da.Array):
        x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != is_case.size:
        raise InputError(f"x must be (genes x samples) with the {is_case.size} samples of "
                         f"is_case, got shape {x.shape}")
    if isinstance(permutations, bool) or int(permutations) != permutations or permutations < 1:
        raise InputError(f"permutations must be a positive integer, got {permutations!r}")
    if not np.isfinite(weight) or weight < 0:
        raise InputError(f"weight must be a non-negative number, got {weight!r}")
    n_genes = x.shape[0]
    sets = _prepare_sets(members, n_genes)
    n_relabellings = math.comb(is_case.size, int(is_case.sum()))
    if exhaustive is None:
        exhaustive = n_relabellings - 1 <= permutations
    used = n_relabellings - 1 if exhaustive else int(permutations)
    if exhaustive and n_relabellings > MAX_RELABELLINGS:
        relabellings(is_case)  # raises the error that says so
    if block_size is None:
        block_size = max(1, int(memory_budget) // (_BYTES_PER_GENE_PERMUTATION * max(1, n_genes)))
    elif int(block_size) < 1:
        raise InputError(f"block_size must be a positive integer, got {block_size!r}")
    batches = [(s, min(s + int(block_size), used)) for s in range(0, used, int(block_size))]
    observed_labels = is_case.astype(np.float64)[:, None]
    info = {"permutations": used, "n_relabellings": n_relabellings, "exhaustive": bool(exhaustive)}
    label_kw = {"seed": seed, "key": key, "exhaustive": bool(exhaustive)}

    if not isinstance(x, da.Array):
        observed_metric = [_metric_block(x, observed_labels, metric=metric)]
        observed = _observed(observed_metric, sets, weight)
        nulls = [_null([_metric_block(x, _labels(is_case, s, e, **label_kw), metric=metric)],
                       observed_metric, sets, weight) for s, e in batches]
        result = _finish(observed, nulls, exhaustive)
        if not return_null:
            del result["null"]
        return {**result, **info}

    # task names on the dashboard: gsea-phenotype-metric (per gene chunk and batch of
    # permutations), -labels, -observed, -null (per batch), -statistics (the one last step)
    chunks = x.rechunk({1: -1}).to_delayed()[:, 0].tolist()
    sets_d = dask.delayed(sets, pure=True, traverse=False,
                          name=f"gene-set-members-{tokenize(sets)}")

    def metric_block(chunk, labels):
        return named_task("gsea-phenotype-metric", _metric_block, chunk, labels, metric=metric)

    observed_metric = [metric_block(c, observed_labels) for c in chunks]
    observed = named_task("gsea-phenotype-observed", _observed, observed_metric, sets_d, weight)
    nulls = []
    for s, e in batches:
        labels = named_task("gsea-phenotype-labels", _labels, is_case, s, e, **label_kw)
        nulls.append(named_task("gsea-phenotype-null", _null,
                                [metric_block(c, labels) for c in chunks], observed_metric,
                                sets_d, weight))
    result = named_task("gsea-phenotype-statistics", _finish, observed, nulls, bool(exhaustive))
    n_sets = sets[1].size
    out = {name: da.from_delayed(result[name], shape=(n_sets,), dtype=dtype)
           for name, dtype in _SET_FIELDS.items()}
    out["n_genes"] = da.from_delayed(result["n_genes"], shape=(), dtype=np.int64)
    if return_null:
        out["null"] = da.from_delayed(result["null"], shape=(n_sets, used), dtype=np.float64)
    return {**out, **info}
