"""fgsea's adaptive multilevel Monte Carlo p-values for preranked GSEA.

Reference: Korotkevich, Sukhov, Budin, Shpak, Artyomov, Sergushichev, "Fast gene set enrichment
analysis", bioRxiv 060012 (2016/2021), and fgsea's ``fgseaMultilevel`` (R/fgseaMultilevel.R,
src/fgseaMultilevelSupplement.cpp, src/esCalculation.cpp, src/util.cpp; read, not copied).

For one set size k and one sign (negative ES are scored as positive ES on the reversed list):

1. Draw ``sample_size`` (S, odd) uniform random k-sets. Sort them by their positive ES (the
   maximum of the running sum). Record the lower (S + 1) / 2 scores as a level of the ruler and,
   for each recorded position j, how many of the sets ranked above j have a positive signed ES
   (the sign correction). Keep the upper (S - 1) / 2 sets twice each and the median set once.
2. While the median is below the target ES: let every set walk by Metropolis moves that swap one
   member for a random gene and are accepted only if the positive ES stays above the median
   (rounds of max(1, k / 10) proposals per set until S * k moves were made, identity proposals
   counting as moves), then repeat step 1's sorting and recording.
3. For an observed |ES|, find its place j in the ruler (the first recorded score >= |ES|, or the
   last one); with l = j // ((S + 1) / 2) full levels below it,
   log p = l * (psi((S + 1) / 2) - psi(S + 1)) + psi(c_j + 1) - psi(S + 1),
   where c_j is the sign-correction count (psi = digamma: E log of the Beta-distributed level
   probabilities). This estimates P(positive ES >= |ES| and the signed ES has the set's sign).
   fgsea flags the estimate (``isCpGeHalf``) when the conditional sign probability
   exp(psi(c_j + 1) - psi(S - j % ((S + 1) / 2) + 1)) is below 1/2; its log2err is then NA.
4. The reported p is conditional on the sign, like the permutation p: p = min(1, p_3 / d) with
   d = (#permutation null ES of the sign + 1) / (permutations + 1) (fgsea's ``denomProb``);
   log2err = sqrt(floor(-log2 p + 1) * (trigamma((S + 1) / 2) - trigamma(S + 1))) / log(2)
   (fgsea ``multilevelError``). With eps > 0 the ruler stops after more than
   -log2(eps * min(d) / 2) levels, and p < eps is reported as eps with NaN log2err.

Vectorised over the S sets of a ruler: each Metropolis step makes one proposal for every set
as one array operation (fgsea walks the sets one after the other; the sets evolve independently
given the level, so the chain is the same in law). Randomness: level L of the ruler for size k
and sign s draws from ``default_rng(SeedSequence(seed, spawn_key=(key, MULTILEVEL_STREAM, k, s,
L)))`` (s = 0 for positive, 1 for negative ES), so results do not depend on which other sets or
sizes are scored, in which order, or where.

Departures from fgsea, both for a case fgsea does not handle: the Metropolis rounds of a level
stop after ``MAX_ROUNDS_FACTOR`` times the rounds S * k moves would take at full acceptance,
and a ruler whose median stops rising ends there (fgsea loops forever when the target ES is
the largest one possible, e.g. a set holding the top of the list).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from engine.errors import InputError
from engine.stats import gsea

__all__ = [
    "MIN_SAME_SIGN",
    "MULTILEVEL_STREAM",
    "check_sample_size",
    "es_ruler",
    "multilevel_error",
    "multilevel_pvalues",
    "ruler_pvalues",
]

#: Second spawn-key word of the multilevel streams (permutation blocks use (key, block)).
MULTILEVEL_STREAM = 0xFFFFFFFF

#: Sets with fewer permutation null ES of their sign keep their permutation p (fgsea reports NA
#: below 10: the denominator d would be too uncertain).
MIN_SAME_SIGN = 10

#: Proposals per set and round, as a fraction of k (fgsea's ``pertPrmtr``).
PERTURBATION_FRACTION = 0.1

#: A level's Metropolis rounds stop after this many times the rounds needed at full acceptance.
MAX_ROUNDS_FACTOR = 200

#: fgsea's tolerance when comparing the ruler's median with the target ES.
_TARGET_TOLERANCE = 1e-10


def check_sample_size(sample_size) -> int:
    """fgsea's rule: at least 3, and odd (an even size is raised by one)."""
    sample_size = int(sample_size)
    if sample_size < 3:
        raise InputError(f"sample_size must be >= 3, got {sample_size}")
    return sample_size + 1 if sample_size % 2 == 0 else sample_size


def multilevel_error(p, sample_size: int) -> np.ndarray:
    """fgsea ``multilevelError``: the expected standard deviation of log2 p of a multilevel
    estimate, sqrt(floor(-log2 p + 1) * (trigamma((S + 1) / 2) - trigamma(S + 1))) / log(2)."""
    p = np.asarray(p, dtype=np.float64)
    level = special.polygamma(1, (sample_size + 1) // 2) - special.polygamma(1, sample_size + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(np.floor(-np.log2(p) + 1) * level) / math.log(2)


def _level_rng(seed: int, key: int, size: int, sign: int, level: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(
        seed, spawn_key=(key, MULTILEVEL_STREAM, int(size), 0 if sign > 0 else 1, int(level))))


def _split(samples: np.ndarray, weights: np.ndarray, scores: list, corrector: list):
    """Record the lower half of the sorted population as a level; return the next population
    (the upper (S - 1) / 2 sets twice each, then the median set)."""
    n_samples = samples.shape[0]
    half = (n_samples + 1) // 2
    signed, top = gsea._scores(samples, weights[samples], weights.size, with_top=True)
    positive_es = np.maximum(top, 0.0)
    order = np.argsort(positive_es, kind="stable")
    above = np.append(np.cumsum((signed[order] > 0)[::-1])[::-1], 0)
    scores.extend(positive_es[order[:half]].tolist())
    corrector.extend(above[1:half + 1].tolist())
    keep = np.repeat(order[::-1][: (n_samples - 1) // 2], 2)
    return samples[np.append(keep, order[n_samples // 2])]


def _witness(sorted_samples: np.ndarray, weights: np.ndarray, bound: float):
    """Full scan of sets (sorted positions): whether their positive ES exceeds ``bound``, and a
    witness for it: the member where the running sum peaks (its position, the members' weight
    up to it, the non-members up to it), and the sets' total weight. Sets without member weight
    (scored with equal weights, as ``gsea.enrichment_scores``) get no witness."""
    n = weights.size
    m, k = sorted_samples.shape
    w = weights[sorted_samples]
    cum = np.cumsum(w, axis=1)
    total = cum[:, -1].copy()
    misses = sorted_samples - np.arange(k, dtype=np.int32)
    if (total > 0).all():
        tops = cum / total[:, None] - misses * (1.0 / (n - k))
    else:
        tops, _ = gsea._running_sum_extremes(sorted_samples, w, n)
    at = tops.argmax(axis=1)
    flat_at = np.arange(m) * k + at
    return (tops.reshape(-1)[flat_at] > bound, sorted_samples.reshape(-1)[flat_at],
            cum.reshape(-1)[flat_at], misses.reshape(-1)[flat_at].astype(np.int64), total,
            total > 0)


def _perturb(samples: np.ndarray, weights: np.ndarray, bound: float,
             rng: np.random.Generator) -> np.ndarray:
    """Metropolis moves conditioned on positive ES > bound until S * k moves were made.

    A proposal replaces a random member by a random gene (a gene already in the set is
    rejected; drawing the member itself counts as a move, as in fgsea). The check is exact but
    cheap in most cases: each set keeps a witness member where the running sum exceeds the
    bound (fgsea's ``candVal``); if the witness stays and its running sum, updated in O(1), is
    still above the bound, the proposal is accepted without a scan of the set.
    """
    n_samples, k = samples.shape
    n = weights.size
    miss = 1.0 / (n - k)
    rows = np.arange(n_samples)
    proposals = max(1, int(k * PERTURBATION_FRACTION))
    needed = n_samples * k
    max_rounds = MAX_ROUNDS_FACTOR * -(-k // proposals)
    # int32 positions: numpy sorts them about four times faster than int64. Flat views make
    # the per-proposal gathers 1-D.
    samples = samples.astype(np.int32)
    flat = samples.reshape(-1)
    member = np.zeros(n_samples * n, dtype=bool)
    member[(rows[:, None] * n + samples).reshape(-1)] = True
    slot_base, gene_base = rows * k, rows * n
    above, gene, y, x, total, has = _witness(np.sort(samples, axis=1), weights, bound)
    has &= above
    moves = 0
    for _ in range(max_rounds):
        slots = rng.integers(0, k, (proposals, n_samples)) + slot_base
        genes = rng.integers(0, n, (proposals, n_samples), dtype=np.int32)
        for at, v in zip(slots, genes):
            old = flat[at]
            present = member[gene_base + v]
            moves += int(np.count_nonzero(old == v))
            w_old, w_new = weights[old], weights[v]
            new_total = total - w_old + w_new
            before_old = old < gene
            before_new = v < gene
            new_y = y - before_old * w_old + before_new * w_new
            new_x = x + before_old - before_new.astype(np.int64)
            fast = has & ~present & (old != gene) & (new_total > 0) \
                & (new_y > new_total * (bound + new_x * miss))
            slow = np.flatnonzero(~(present | fast))
            fast = np.flatnonzero(fast)
            y[fast], x[fast] = new_y[fast], new_x[fast]
            if slow.size:
                candidate = samples[slow]
                candidate.reshape(-1)[np.arange(slow.size) * k + (at[slow] - slot_base[slow])] \
                    = v[slow]
                ok, g, yy, xx, tt, hh = _witness(np.sort(candidate, axis=1), weights, bound)
                slow = slow[ok]
                gene[slow], y[slow], x[slow], has[slow] = g[ok], yy[ok], xx[ok], hh[ok]
                new_total[slow] = tt[ok]
                done = np.concatenate([fast, slow])
            else:
                done = fast
            member[gene_base[done] + old[done]] = False
            member[gene_base[done] + v[done]] = True
            flat[at[done]] = v[done]
            total[done] = new_total[done]
            moves += done.size
        if moves >= needed:
            break
    return np.sort(samples, axis=1).astype(np.int64)


def es_ruler(weights, size: int, target: float, *, sample_size: int = 101, eps: float = 0.0,
             seed: int, key: int, sign: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The multilevel ruler for sets of ``size`` on a list with ``weights`` (in ranked order; pass
    the reversed weights and ``sign=-1`` for negative ES): the recorded positive-ES levels
    (ascending) and the sign-correction counts, grown until the median reaches ``target``.
    """
    weights = np.asarray(weights, dtype=np.float64)
    sample_size = check_sample_size(sample_size)
    half = (sample_size + 1) // 2
    rng = _level_rng(seed, key, size, sign, 0)
    samples = np.sort(gsea._draw_ordered_samples(rng, sample_size, weights.size, size), axis=1)
    scores: list[float] = []
    corrector: list[int] = []
    samples = _split(samples, weights, scores, corrector)
    max_levels = math.inf if eps == 0 else -math.log2(0.5 * eps)
    level = 0
    while scores[-1] <= target - _TARGET_TOLERANCE:
        level += 1
        bound = scores[-1]
        samples = _perturb(samples, weights, bound, _level_rng(seed, key, size, sign, level))
        samples = _split(samples, weights, scores, corrector)
        if len(scores) // half > max_levels or scores[-1] <= bound:
            break
    return np.array(scores), np.array(corrector, dtype=np.int64)


def ruler_pvalues(scores: np.ndarray, corrector: np.ndarray, es, sample_size: int):
    """Step 3: (p, conditional sign probability >= 1/2) of |ES| values against a ruler."""
    es = np.abs(np.asarray(es, dtype=np.float64))
    half = (sample_size + 1) // 2
    at = np.where(es >= scores[-1], scores.size - 1, np.searchsorted(scores, es, side="left"))
    levels = at // half
    log_level = special.digamma(half) - special.digamma(sample_size + 1)
    log_sign = special.digamma(corrector[at] + 1.0)
    log_p = levels * log_level + log_sign - special.digamma(sample_size + 1)
    conditional = log_sign - special.digamma(sample_size - at % half + 1.0)
    return np.clip(np.exp(log_p), 0.0, 1.0), np.exp(conditional) >= 0.5


def multilevel_pvalues(ranked_weights, sizes, es, denominator, *, sample_size: int = 101,
                       eps: float = 1e-50, seed: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    """Multilevel p-values and log2err of sets (steps 1-4 of the module docstring).

    ``ranked_weights``: ``|statistic| ** p`` in ranked order; ``sizes``, ``es``: per set;
    ``denominator``: per set, d = (#permutation null ES of the set's sign + 1) /
    (permutations + 1). One ruler per (size, sign), grown to the most extreme ES it serves.
    """
    weights = np.asarray(ranked_weights, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    es = np.asarray(es, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    sample_size = check_sample_size(sample_size)
    p = np.full(es.size, np.nan)
    trusted = np.zeros(es.size, dtype=bool)
    for k in np.unique(sizes):
        in_size = sizes == k
        eps_k = eps * denominator[in_size].min()
        for sign, w in ((1, weights), (-1, weights[::-1])):
            sets = np.flatnonzero(in_size & ((es >= 0) if sign > 0 else (es < 0)))
            if sets.size == 0:
                continue
            scores, corrector = es_ruler(w, int(k), float(np.abs(es[sets]).max()),
                                         sample_size=sample_size, eps=eps_k, seed=seed,
                                         key=key, sign=sign)
            p[sets], trusted[sets] = ruler_pvalues(scores, corrector, es[sets], sample_size)
    p = np.minimum(p / denominator, 1.0)
    log2err = np.where(trusted, multilevel_error(p, sample_size), np.nan)
    if eps > 0:
        below = p < eps
        p[below], log2err[below] = eps, np.nan
    return p, log2err
