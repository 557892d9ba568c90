"""Preranked gene set enrichment analysis (GSEA) with gene-set permutation p-values.

Reference: Subramanian et al. 2005, PNAS 102:15545 (the weighted Kolmogorov-Smirnov running sum,
NES, nominal p, FDR q); Broad GSEA desktop 4.x (``KSCore``, ``Norms.MeanDivPosNegSeperate``,
``SkewCorrectedFdrStruc``); fgsea (Korotkevich et al., bioRxiv 060012; R ``fgseaSimple`` and
``fgseaMultilevel``) for the shared gene-set permutation null, the +1 p-value and the error
estimate, and its adaptive multilevel p-values (``engine.stats.multilevel``).

Conventions (each with the tool it follows):

* Ranked list: genes with a NaN statistic are dropped; the rest are sorted by decreasing
  statistic, ties kept in gene (row) order (a stable sort). R's ``sort(decreasing=TRUE)`` in
  fgsea keeps ties in input order too; GSEA desktop and GSEApy sort ties in an order of their
  own (GSEApy's pandas quicksort is not stable), so their ES can differ where set members tie
  with non-members. Weights are ``|statistic| ** weight`` (``weight`` is GSEA's p; 0 gives the
  classic unweighted KS statistic).
* ES: the running sum rises by ``w_j / N_R`` at each member and falls by ``1 / (N - k)`` at each
  non-member; ES is its signed maximum deviation from zero. When the largest positive and the
  largest negative deviation are equal, the one reached first along the list wins, as in GSEA
  desktop's ``KSCore`` and fgsea's C++ ``calcES`` (strict ``>`` while walking; fgsea's R
  ``calcGseaStat`` returns 0 instead, GSEApy the negative one). A set whose members all have
  weight 0 is scored with equal weights (fgsea's convention: ``N_R = 0`` behaves as every
  weight being the same tiny number). Empty sets and sets holding every gene get NaN.
* Null: gene-set permutation. Each permutation draws one uniform random ordered sample of
  ``max(size)`` distinct genes; its first k genes are a uniform random set of size k, so one
  draw gives the null ES of every set size (fgsea's ``calcGseaStatCumulativeBatch``) and sets of
  equal size share their null.
* NES = ES / mean of the null ES of the same sign (null >= 0 for ES >= 0, null <= 0 for ES < 0,
  absolute value), fgsea and GSEA desktop ``meandiv``. Nominal p = (#null at least as extreme
  among the same sign + 1) / (#null of that sign + 1) (fgsea ``fgseaSimpleImpl``). NES and p
  are NaN when there is no null of that sign or its mean is 0.
* FDR q: GSEA desktop's definition (``SkewCorrectedFdrStruc``), for NES* >= 0:
  q = [mean over permutations of (#null NES >= NES*) / (#null NES >= 0), the counts taken over
  all sets' null NES in that permutation, permutations without a null NES of that sign left
  out] / [(#observed NES >= NES*) / (#observed NES >= 0)], capped at 1; mirrored with <= for
  NES* < 0. GSEA applies no monotone step (nor do we); GSEApy pools the null over permutations
  instead of averaging the per-permutation fractions. Sets with NaN NES take no part.
* Randomness: permutation block ``b`` (``PERMUTATION_BLOCK`` permutations, the last one
  shorter) draws from ``default_rng(SeedSequence(seed, spawn_key=(key, b)))``; blocks are
  computed in batches of ``block_size`` permutations (a memory knob only), so the null does not
  depend on the batch size, on the order of the blocks or on where they run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import special, stats

from engine.errors import InputError
from engine.stats import multitest

__all__ = [
    "PERMUTATION_BLOCK",
    "enrichment_scores",
    "enrichment_statistics",
    "gsea_preranked",
    "member_rows",
    "permutation_null",
    "ranked_list",
    "simple_log2err",
]

#: Permutations per random stream: the unit of reproducibility (part of the results' contract:
#: changing it changes every null drawn with a given seed).
PERMUTATION_BLOCK = 256

#: Elements per (permutations x max set size) array that a batch may hold (8 MB of int64; a
#: batch keeps about eight such arrays alive).
BATCH_ELEMENTS = 1 << 20

#: Sets are compared with their null in chunks of at most this many (sets x permutations).
_CHUNK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------- enrichment score

def _running_sum_extremes(pos: np.ndarray, w: np.ndarray, n_genes: int):
    """Tops (running sum right after each member) and bottoms (right before it) in closed form.

    With members at ascending 0-based positions p_j and cumulative weights c_j:
    top_j = c_j / N_R - (p_j - j) / (N - k) and bottom_j = c_{j-1} / N_R - (p_j - j) / (N - k),
    where p_j - j (0-based j) is the number of non-members up to p_j. The running sum only
    rises at members, so its maximum is a top and its minimum a bottom (it starts and ends at
    0). ``c_{j-1}`` is taken from the cumulative sum itself, not as ``c_j - w_j``, so each value
    is bit-identical to a walk over all genes that accumulates the same way.
    """
    k = pos.shape[-1]
    cum = np.cumsum(w, axis=-1)
    total = cum[..., -1:]
    no_weight = total[..., 0] == 0
    if no_weight.any():
        # fgsea: N_R = 0 behaves as equal weights.
        ones = np.broadcast_to(np.arange(1, k + 1, dtype=np.float64), cum.shape)
        cum = np.where(no_weight[..., None], ones, cum)
        total = cum[..., -1:]
    previous = np.empty_like(cum)
    previous[..., 0] = 0.0
    previous[..., 1:] = cum[..., :-1]
    miss = (pos - np.arange(k)) / float(n_genes - k)
    return cum / total - miss, previous / total - miss


def _scores(pos: np.ndarray, w: np.ndarray, n_genes: int, *, peak: bool = False,
            with_top: bool = False):
    """Signed ES of sets given by sorted positions and weights; with ``peak`` also the peak
    member, with ``with_top`` also the maximum of the running sum (fgsea's positive ES)."""
    tops, bottoms = _running_sum_extremes(pos, w, n_genes)
    top = tops.max(axis=-1)
    bottom = bottoms.min(axis=-1)
    positive = top > -bottom
    tie = top == -bottom
    if peak or tie.any():
        j_top = tops.argmax(axis=-1)
        j_bottom = bottoms.argmin(axis=-1)
        # The maximum is reached at member j_top's position, the minimum one gene before
        # member j_bottom: the extreme reached first along the list wins a tie (GSEA KSCore).
        first_top = np.take_along_axis(pos, j_top[..., None], -1)[..., 0] \
            < np.take_along_axis(pos, j_bottom[..., None], -1)[..., 0] - 1
        positive = positive | (tie & first_top)
    es = np.where(positive, top, bottom)
    if with_top:
        return es, top
    if not peak:
        return es
    at = np.where(positive, j_top, j_bottom)
    at = np.where(np.isnan(es), -1, at)
    return es, at


def enrichment_scores(positions: np.ndarray, weights: np.ndarray,
                      n_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """Enrichment scores of gene sets from their members' positions in a ranked list.

    ``positions``: (..., k) int, the 0-based ascending positions of one set's k members in the
    ranked list (position 0 = largest statistic); ``weights``: (..., k) float >= 0, the members'
    ``|statistic| ** p`` in the same order; ``n_genes``: length of the ranked list. Leading axes
    (e.g. permutations) are vectorised; the cost is O(k) per set, never O(n_genes).

    Returns ``(es, peak)``: ``es`` (...) the signed maximum deviation from zero of the weighted
    Kolmogorov-Smirnov running sum (Subramanian et al. 2005; ties between the positive and the
    negative extreme go to the one reached first along the list, as GSEA desktop), and ``peak``
    (...) int, the member index 0..k-1 where the extreme is reached: for ES >= 0 the running sum
    peaks right after member ``peak`` and the leading edge is ``members[:peak + 1]``; for ES < 0
    it bottoms out right before member ``peak`` and the leading edge is ``members[peak:]``.
    All-zero weights score as equal weights (fgsea). k = 0 or k = n_genes: ES NaN, peak -1.
    """
    pos = np.asarray(positions)
    w = np.asarray(weights, dtype=np.float64)
    if pos.shape != w.shape or pos.ndim < 1:
        raise InputError(f"positions {pos.shape} and weights {w.shape} must have the same shape "
                         "(..., k); pass one weight per member")
    if pos.dtype.kind not in "iu":
        raise InputError(f"positions must be integers, got dtype {pos.dtype}")
    k = pos.shape[-1]
    if k == 0 or k >= n_genes:
        return np.full(pos.shape[:-1], np.nan), np.full(pos.shape[:-1], -1, dtype=np.int64)
    es, at = _scores(pos.astype(np.int64, copy=False), w, int(n_genes), peak=True)
    return es, at.astype(np.int64)


# --------------------------------------------------------------------------- null

def _draw_ordered_samples(rng: np.random.Generator, count: int, n: int, k: int) -> np.ndarray:
    """(count, k) int64: each row a uniform random ordered sample of k distinct values of 0..n-1.

    Dense draws (4k >= n) take the first k of a random permutation. Sparse draws take the first
    k distinct values, in order of appearance, of an iid uniform sequence (sequential rejection
    sampling: each new value is uniform over the values not seen yet); a row whose m draws
    held fewer than k distinct values is drawn again with more, which leaves the ordered sample
    uniform because the order of first appearances is independent of the waiting times.
    """
    if 4 * k >= n:
        keys = rng.random((count, n))
        first = np.argpartition(keys, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(keys, first, 1), axis=1)
        return np.take_along_axis(first, order, 1).astype(np.int64)
    m = _sparse_draws(k, n)
    out = np.empty((count, k), dtype=np.int64)
    rows = np.arange(count)
    while rows.size:
        x = rng.integers(0, n, size=(rows.size, m))
        order = np.argsort(x, axis=1, kind="stable")
        xs = np.take_along_axis(x, order, 1)
        new = np.ones(x.shape, dtype=bool)
        new[:, 1:] = xs[:, 1:] != xs[:, :-1]
        first = np.empty_like(new)
        np.put_along_axis(first, order, new, 1)
        ok = first.sum(axis=1) >= k
        keep = first[ok] & (np.cumsum(first[ok], axis=1) <= k)
        out[rows[ok]] = x[ok][keep].reshape(-1, k)
        rows = rows[~ok]
        m *= 2
    return out


def _sparse_draws(k: int, n: int) -> int:
    """Draws per row for k distinct of n (about k^2 / 2n repeats are expected)."""
    return k + 2 * (k * k // n) + 16


def _block_counts(permutations: int) -> list[int]:
    full, rest = divmod(permutations, PERMUTATION_BLOCK)
    return [PERMUTATION_BLOCK] * full + ([rest] if rest else [])


def _null_for_blocks(ranked_weights: np.ndarray, sizes: np.ndarray, blocks: Sequence[int], *,
                     permutations: int, seed: int, key: int) -> np.ndarray:
    """Null ES (len(sizes), permutations in ``blocks``) of the given permutation blocks, in the
    order given: block b's draws come from its own stream, so any order or grouping of blocks
    gives the same values."""
    n = ranked_weights.size
    k_max = int(sizes.max())
    counts = _block_counts(permutations)
    samples = np.concatenate([
        _draw_ordered_samples(np.random.default_rng(np.random.SeedSequence(
            seed, spawn_key=(key, int(b)))), counts[b], n, k_max) for b in blocks])
    # Sorted sample plus each element's draw order: the first k draws are those with order < k.
    order = np.argsort(samples, axis=1)
    sorted_pos = np.take_along_axis(samples, order, 1)
    out = np.empty((sizes.size, samples.shape[0]))
    for i, k in enumerate(sizes):
        pos = sorted_pos if k == k_max else sorted_pos[order < k].reshape(-1, k)
        out[i] = _scores(pos, ranked_weights[pos], n, peak=False)
    return out


def permutation_null(ranked_weights: np.ndarray, sizes, *, permutations: int, seed: int,
                     key: int, block_size: int | None = None) -> np.ndarray:
    """Gene-set permutation null ES, (len(sizes), permutations), one row per set size.

    ``ranked_weights``: the ranked list's weights ``|statistic| ** p`` in ranked order;
    ``sizes``: set sizes 1..n-1. Permutation j of every size uses the same random sample of
    ``max(sizes)`` genes (its first k genes for size k). Block b of ``PERMUTATION_BLOCK``
    permutations draws from ``SeedSequence(seed, spawn_key=(key, b))``; ``block_size``
    permutations (rounded to whole blocks; default from ``BATCH_ELEMENTS``) are computed at a
    time, which bounds memory and leaves the result unchanged.
    """
    w = np.asarray(ranked_weights, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
    if int(permutations) < 1:
        raise InputError(f"permutations must be >= 1, got {permutations}")
    if sizes.size == 0:
        return np.empty((0, permutations))
    if sizes.min() < 1 or sizes.max() >= w.size:
        raise InputError(f"set sizes must be between 1 and {w.size - 1} (the ranked list has "
                         f"{w.size} genes), got {sizes.min()}..{sizes.max()}")
    n_blocks = len(_block_counts(permutations))
    if block_size is None:
        block_size = BATCH_ELEMENTS // int(sizes.max() + 16)
    per_batch = max(1, int(block_size) // PERMUTATION_BLOCK)
    return np.concatenate([
        _null_for_blocks(w, sizes, range(b, min(b + per_batch, n_blocks)),
                         permutations=permutations, seed=seed, key=key)
        for b in range(0, n_blocks, per_batch)], axis=1)


# --------------------------------------------------------------------------- statistics

def _divide(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.true_divide(a, b)


def _null_summaries(null: np.ndarray):
    """Per null row: counts and means of the null ES >= 0 and <= 0 (NaN entries left out)."""
    ge0 = null >= 0
    le0 = null <= 0
    n_ge0 = ge0.sum(axis=1)
    n_le0 = le0.sum(axis=1)
    mean_pos = _divide(np.where(ge0, null, 0.0).sum(axis=1), n_ge0)
    mean_neg = _divide(np.where(le0, null, 0.0).sum(axis=1), n_le0)
    return n_ge0, n_le0, mean_pos, mean_neg


def _more_extreme(es: np.ndarray, null: np.ndarray, row_of_set: np.ndarray) -> np.ndarray:
    """#null >= es (es >= 0) or <= es (es < 0) in each set's null row, in bounded chunks."""
    count = np.zeros(es.size, dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // max(1, null.shape[1]))
    for start in range(0, es.size, step):
        sl = slice(start, start + step)
        rows = null[row_of_set[sl]]
        e = es[sl, None]
        count[sl] = np.where(e >= 0, rows >= e, rows <= e).sum(axis=1)
    return count


def _gsea_fdr(nes: np.ndarray, positive: np.ndarray, null_nes: np.ndarray,
              multiplicity: np.ndarray) -> np.ndarray:
    """GSEA desktop's FDR q (SkewCorrectedFdrStruc) of every set with a finite NES.

    Row r of ``null_nes`` stands for ``multiplicity[r]`` sets (sets of equal size share a null).
    The numerator averages over permutations c the fraction (#null NES beyond NES* / #null NES
    of the sign) in column c; as a weighted tail count over all entries with weight
    multiplicity / (#of the sign in the column), it needs one sort instead of a loop.
    """
    q = np.full(nes.size, np.nan)
    finite = np.isfinite(nes)
    mult = multiplicity[:, None].astype(np.float64)
    for side in (True, False):
        sets = np.flatnonzero(finite & (positive == side))
        if sets.size == 0:
            continue
        inside = (null_nes >= 0) if side else (null_nes <= 0)
        per_column = (inside * mult).sum(axis=0)
        used = per_column > 0
        if not used.any():
            continue
        weight = np.where(inside & used, _divide(mult, per_column), 0.0)
        take = weight > 0
        values, weights = null_nes[take], weight[take]
        order = np.argsort(values, kind="stable")
        values, weights = values[order], weights[order]
        observed = np.sort(nes[sets])
        x = nes[sets]
        if side:
            tail = np.append(np.cumsum(weights[::-1])[::-1], 0.0)
            numerator = tail[np.searchsorted(values, x, side="left")]
            denominator = (observed.size - np.searchsorted(observed, x, side="left")) \
                / observed.size
        else:
            head = np.insert(np.cumsum(weights), 0, 0.0)
            numerator = head[np.searchsorted(values, x, side="right")]
            denominator = np.searchsorted(observed, x, side="right") / observed.size
        q[sets] = np.minimum(numerator / used.sum() / denominator, 1.0)
    return q


def _statistics(es: np.ndarray, null: np.ndarray, row_of_set: np.ndarray) -> dict[str, np.ndarray]:
    """``enrichment_statistics`` where set i's null is row ``row_of_set[i]`` of ``null``."""
    es = np.asarray(es, dtype=np.float64)
    n_sets = es.size
    nes = np.full(n_sets, np.nan)
    p = np.full(n_sets, np.nan)
    n_more = np.zeros(n_sets, dtype=np.int64)
    n_same = np.zeros(n_sets, dtype=np.int64)
    q = np.full(n_sets, np.nan)
    scored = np.flatnonzero(~np.isnan(es) & (row_of_set >= 0))
    out = {"nes": nes, "p_value": p, "fdr_q": q, "n_more_extreme": n_more,
           "n_same_sign": n_same}
    if scored.size == 0 or null.shape[1] == 0:
        return out
    n_ge0, n_le0, mean_pos, mean_neg = _null_summaries(null)
    rows = row_of_set[scored]
    e = es[scored]
    positive = e >= 0
    mean = np.where(positive, mean_pos[rows], np.abs(mean_neg[rows]))
    with np.errstate(divide="ignore", invalid="ignore"):
        nes_s = np.where(mean > 0, e / mean, np.nan)
    n_same[scored] = np.where(positive, n_ge0[rows], n_le0[rows])
    n_more[scored] = _more_extreme(e, null, rows)
    nes[scored] = nes_s
    defined = scored[~np.isnan(nes_s)]
    p[defined] = (n_more[defined] + 1) / (n_same[defined] + 1)

    # Null NES: each null row normalised by its own same-sign means (GSEA meandiv).
    with np.errstate(divide="ignore", invalid="ignore"):
        null_nes = np.where(null >= 0, null / mean_pos[:, None],
                            null / np.abs(mean_neg)[:, None])
    used_rows = np.bincount(row_of_set[defined], minlength=null.shape[0])
    keep = used_rows > 0
    positive_all = es >= 0
    q[:] = _gsea_fdr(np.where(np.isnan(p), np.nan, nes), positive_all,
                     null_nes[keep], used_rows[keep])
    return out


def enrichment_statistics(es: np.ndarray, null: np.ndarray) -> dict[str, np.ndarray]:
    """NES, nominal p and FDR q of sets from their observed ES and null ES.

    ``es`` (sets,) observed ES; ``null`` (sets, permutations) each set's null ES (NaN entries are
    ignored). Returns float arrays ``nes``, ``p_value``, ``fdr_q`` and int arrays
    ``n_more_extreme`` (#null >= ES for ES >= 0, <= ES for ES < 0) and ``n_same_sign`` (#null
    >= 0, resp. <= 0), with the definitions of the module docstring: NES = ES / |mean of the
    same-sign null| (GSEA, fgsea), p = (n_more_extreme + 1) / (n_same_sign + 1) (fgsea), GSEA
    desktop's FDR q over all sets' null NES. NaN where undefined (NaN ES, no null of the sign).
    """
    es = np.asarray(es, dtype=np.float64).reshape(-1)
    null = np.asarray(null, dtype=np.float64)
    if null.ndim != 2 or null.shape[0] != es.size:
        raise InputError(f"null must be (sets, permutations) with one row per ES ({es.size}), "
                         f"got shape {null.shape}")
    return _statistics(es, null, np.arange(es.size))


def simple_log2err(n_more_extreme, permutations) -> np.ndarray:
    """fgsea's standard deviation of log2 p for a permutation p-value (``fgseaMultilevel``):
    sqrt(trigamma(n_more_extreme + 1) - trigamma(permutations + 1)) / log(2)."""
    n_more_extreme = np.asarray(n_more_extreme, dtype=np.float64)
    return np.sqrt(special.polygamma(1, n_more_extreme + 1)
                   - special.polygamma(1, permutations + 1.0)) / math.log(2)


def _simple_error(n_more_extreme: np.ndarray, permutations: int) -> np.ndarray:
    """fgsea's half-width (in log2) of the 95% interval of a permutation p (fgseaMultilevel's
    ``simpleError``), which decides whether the multilevel estimate would be more precise."""
    nme = np.asarray(n_more_extreme, dtype=np.float64)
    crude = np.log2((nme + 1) / (permutations + 1))
    with np.errstate(divide="ignore"):
        left = np.where(nme > 0, np.log2(stats.beta.ppf(0.025, np.maximum(nme, 1),
                                                         permutations - nme + 1)), -np.inf)
        right = np.where(nme < permutations,
                         np.log2(stats.beta.ppf(0.975, nme + 1,
                                                np.maximum(permutations - nme, 1))), 0.0)
    return 0.5 * np.maximum(crude - left, right - crude)


# --------------------------------------------------------------------------- preranked GSEA

def ranked_list(statistic) -> np.ndarray:
    """Row indices of the genes in ranked order: decreasing statistic, NaN dropped, ties in
    row order (stable sort). Infinite statistics are refused (their weight is undefined)."""
    stat = np.asarray(statistic, dtype=np.float64)
    if stat.ndim != 1:
        raise InputError(f"the ranking statistic must be 1-D (one value per gene), got shape "
                         f"{stat.shape}")
    if np.isinf(stat).any():
        raise InputError(f"the ranking statistic has {int(np.isinf(stat).sum())} infinite "
                         "values; cap them or rank by a finite statistic")
    genes = np.flatnonzero(~np.isnan(stat))
    return genes[np.argsort(-stat[genes], kind="stable")]


def member_rows(members: Sequence, n_rows: int) -> list[np.ndarray]:
    """Each set's members as sorted, unique int64 row positions in 0..n_rows-1 (the form every
    enrichment kernel takes); anything else is one clear error naming the set."""
    out = []
    for i, m in enumerate(members):
        m = np.asarray(m)
        if m.ndim != 1 or (m.size and m.dtype.kind not in "iu"):
            raise InputError(f"gene set {i}: members must be a 1-D array of gene row positions, "
                             f"got dtype {m.dtype} and shape {m.shape}")
        m = np.unique(m.astype(np.int64))
        if m.size and (m[0] < 0 or m[-1] >= n_rows):
            raise InputError(f"gene set {i}: member positions must lie in 0..{n_rows - 1}, got "
                             f"{m[0] if m[0] < 0 else m[-1]}; map the set's genes to rows first")
        out.append(m)
    return out


def _member_positions(members, rank_of_gene: np.ndarray, n_rows: int) -> list[np.ndarray]:
    out = []
    for m in member_rows(members, n_rows):
        r = rank_of_gene[m]
        out.append(np.sort(r[r >= 0]))
    return out


def gsea_preranked(statistic, members: Sequence, *, permutations: int = 10000, seed: int,
                   key: int, weight: float = 1.0, multilevel: bool = True, eps: float = 1e-50,
                   sample_size: int = 101, block_size: int | None = None) -> dict:
    """Preranked GSEA of gene sets against one ranking statistic.

    ``statistic`` (genes,): the ranking (e.g. a t statistic; NaN genes are left out);
    ``members``: per set, an int array of row positions of its genes in ``statistic``
    (duplicates and NaN-statistic genes are dropped). Ranking, ES, NES, p and FDR follow the
    module docstring; ``permutations`` gene-set permutations are drawn from
    ``SeedSequence(seed, spawn_key=(key, block))``; ``key`` is a stable integer of the analysis
    (e.g. the first 4 bytes of the sha256 of its name). The null of a size depends on the
    largest size in the call (one sample of that many genes serves every size).

    With ``multilevel`` (fgseaMultilevel with ``nPermSimple = permutations``): a set whose
    permutation p is coarser than a multilevel estimate would be (fgsea's rule: the multilevel
    log2 error at (n_more_extreme + 1) / (permutations + 1) is below half the larger distance,
    in log2, from that p to the ends of its 95% Clopper-Pearson interval) gets fgsea's adaptive
    multilevel p (``engine.stats.multilevel``; ``sample_size`` as in fgsea). Then every p below
    ``eps`` is reported as ``eps`` with NaN log2err (``eps=0``: no bound). Departure from
    fgsea: a set with fewer than ``multilevel.MIN_SAME_SIGN`` permutation null ES of its sign
    keeps its permutation p and NES (fgsea sets p, NES and log2err to NA there). NES and
    ``fdr_q`` always come from the permutation null (GSEA's FDR needs the null NES of every
    set); ``p_adj`` uses the reported p.

    Returns a dict of per-set arrays: ``size`` (members in the ranked list), ``es``, ``nes``,
    ``p_value``, ``p_adj`` (Benjamini-Hochberg over sets with a p), ``log2err`` (fgsea's
    standard deviation of log2 p: the permutation formula for permutation p-values, the
    multilevel one otherwise; NaN where fgsea gives NA), ``p_floor`` (1 / (n_same_sign + 1), the
    smallest permutation p this set can get, where the reported permutation p equals it; else
    NaN), ``fdr_q``, ``n_more_extreme``, ``n_same_sign``, ``multilevel`` (bool: p from the
    multilevel scheme), ``n_permutations``, and ``leading_edge`` (list of int arrays of row
    positions: for ES >= 0 the members up to the peak from the top of the list, for ES < 0 the
    members from the bottom of the list up to the trough, most extreme first, as fgsea).
    Sets with no member in the list or holding every gene get NaN statistics.
    """
    permutations = int(permutations)
    if permutations < 1:
        raise InputError(f"permutations must be >= 1, got {permutations}")
    if int(seed) < 0 or int(key) < 0:
        raise InputError(f"seed and key must be integers >= 0, got seed={seed}, key={key}")
    if not (np.isfinite(weight) and weight >= 0):
        raise InputError(f"weight (GSEA's p) must be a finite number >= 0, got {weight}")
    if not 0 <= eps <= 1:
        raise InputError(f"eps must be between 0 and 1, got {eps}")
    stat = np.asarray(statistic, dtype=np.float64)
    order = ranked_list(stat)
    n = order.size
    rank_of_gene = np.full(stat.size, -1, dtype=np.int64)
    rank_of_gene[order] = np.arange(n)
    ranked_weights = np.abs(stat[order]) ** float(weight)
    positions = _member_positions(members, rank_of_gene, stat.size)
    n_sets = len(positions)
    size = np.array([p.size for p in positions], dtype=np.int64)
    es = np.full(n_sets, np.nan)
    peak = np.full(n_sets, -1, dtype=np.int64)
    valid = (size > 0) & (size < n)
    sizes = np.unique(size[valid])
    for k in sizes:
        sets = np.flatnonzero(size == k)
        pos = np.stack([positions[i] for i in sets])
        es[sets], peak[sets] = enrichment_scores(pos, ranked_weights[pos], n)
    row_of_set = np.where(valid, np.searchsorted(sizes, size), -1)
    null = permutation_null(ranked_weights, sizes, permutations=permutations, seed=seed,
                            key=key, block_size=block_size) if sizes.size else \
        np.empty((0, permutations))
    result = _statistics(es, null, row_of_set)
    p = result["p_value"]
    n_more, n_same = result["n_more_extreme"], result["n_same_sign"]
    log2err = np.where(np.isnan(p), np.nan, simple_log2err(n_more, permutations))
    p_floor = np.where((n_more == 0) & ~np.isnan(p), 1.0 / (n_same + 1), np.nan)
    used_multilevel = np.zeros(n_sets, dtype=bool)
    if multilevel and sizes.size:
        from engine.stats import multilevel as ml  # builds on this module's kernels

        sample_size = ml.check_sample_size(sample_size)
        candidate = ~np.isnan(p) & (n_same >= ml.MIN_SAME_SIGN)
        candidate &= ml.multilevel_error(
            (n_more + 1) / (permutations + 1), sample_size) < _simple_error(n_more, permutations)
        sets = np.flatnonzero(candidate)
        if sets.size:
            denominator = (n_same[sets] + 1) / (permutations + 1)
            ml_p, ml_err = ml.multilevel_pvalues(
                ranked_weights, size[sets], es[sets], denominator, sample_size=sample_size,
                eps=eps, seed=seed, key=key)
            p[sets], log2err[sets], p_floor[sets] = ml_p, ml_err, np.nan
            used_multilevel[sets] = True
        if eps > 0:  # fgseaMultilevel bounds every p, permutation ones included
            below = p < eps
            p[below], log2err[below] = eps, np.nan
    leading_edge = []
    for i in range(n_sets):
        if peak[i] < 0:
            leading_edge.append(np.empty(0, dtype=np.int64))
        elif es[i] >= 0:
            leading_edge.append(order[positions[i][: peak[i] + 1]])
        else:
            leading_edge.append(order[positions[i][peak[i]:]][::-1])
    return {"size": size, "es": es, "nes": result["nes"], "p_value": p,
            "p_adj": multitest.benjamini_hochberg(p), "log2err": log2err, "p_floor": p_floor,
            "fdr_q": result["fdr_q"], "n_more_extreme": n_more, "n_same_sign": n_same,
            "multilevel": used_multilevel,
            "n_permutations": np.full(n_sets, permutations, dtype=np.int64),
            "leading_edge": leading_edge}
