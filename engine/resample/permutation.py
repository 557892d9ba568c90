"""Per-gene permutation tests for the two-group and paired tests of ``engine.stats.twogroup``,
with exact enumeration, Westfall-Young maxT adjusted p-values and the p-value floor.

Null distributions (the same permutation applies to every gene: gene-gene correlation is kept,
which maxT needs):

* Unpaired tests (``welch``, ``student``, ``mann_whitney``): label permutations of the n1 + n2
  case and control samples with the group sizes kept; permutation j is column j of
  :func:`engine.stats.phenotype.label_permutations` (blocks of :data:`PERMUTATION_BLOCK` = 256,
  block b drawn from ``block_rng(seed, key, b)``, ``key = analysis_key(name, "permutation")``)
  on the samples in the order case then control.
* Paired tests (``paired_t``, ``wilcoxon_signed_rank``): sign flips of the case - control
  differences (swapping case and control within a pair), one Rademacher sign per pair;
  permutation j is column j of :func:`sign_flips` (same blocks and streams).

Permutation j never depends on ``permutations``, on gene chunks, on the memory budget or on
workers: the last block is drawn whole and cut.

Statistic: each test's own standardised statistic, recomputed for every permutation: Welch and
Student t; for ``mann_whitney`` and ``wilcoxon_signed_rank`` the normal z of U (or V) with the
test's tie and continuity correction, so a permutation is "at least as extreme" exactly when its
normal-approximation p-value is at most the observed one. Missing values move with their samples
(pairs): a gene's group sizes among its present values vary between permutations (counts are
``mask @ L``), which is why the rank tests use z and not U: the ranks of the present values do
not change, only the groups they fall in, so U* = rank sum - n1*(n1* + 1)/2 and
Var(U*) = n1* n2* / (n (n - 1)) * (sum r^2 - n (n + 1)^2 / 4) over the gene's n present values
(tie-corrected: R's and twogroup's formula); the signed-rank variance is sum r^2 / 4 (ranks of
the nonzero |d|), the same as twogroup's m(m+1)(2m+1)/24 - ties/48.

All sums are exact (``engine.resample.exact``): t tests put each gene on its integer grid,
average ranks are half-integers, counts are integers, so every per-(gene, permutation)
statistic has the same bits whatever the gene chunking, tile sizes, permutation batches or BLAS
(test: ``tests/test_permutation.py``). Welch takes four products (sums and the three halves of
the sums of squares), Student one (its within-group sum of squares is the fixed total minus the
between-group part), the rank tests and paired t one. A group's sum of squares below 16 eps of
its raw sum of squares about the gene's grid centre counts as 0 (its rounding bound; the rule
of phenotype GSEA), so a constant group is exactly constant; t is then undefined when R's
"data are essentially constant" rule (stderr < 10 eps max |group mean|) applies. Only genes
whose groups are ~10^7 within-group standard deviations apart are affected. float32 input (the
store's dtype) lies on every gene's grid exactly; float64 input (scores, annotations) is rounded
to it (a step of 2^(1-2h) of the gene's spread: 2^-43 at 200 samples), so labellings whose
statistics are mathematically equal can differ by more than the 100 eps tolerance below when
|t| is small (seen at |t| ~ 0.2 with 8 samples of one-decimal values) and be counted
differently from scipy's float arithmetic.

p-values (two-sided, on |T|), comparing with scipy's relative tolerance for floating noise
(``scipy.stats.permutation_test``: |T*| >= |T_obs| (1 - 100 eps)):

* random permutations (B = ``permutations``): p_perm = (#{b: |T*_b| >= |T_obs|} + 1) / (B + 1),
  as ``scipy.stats.permutation_test`` and GSEA (the observed labelling counts once; a drawn
  permutation may equal it). p_perm_floor = 1 / (B + 1).
* exact enumeration, used when the number of distinct relabellings N (C(n1 + n2, n1) unpaired;
  2^pairs paired) is at most ``permutations`` (and at most 10^6): p_perm = #{labellings l:
  |T_l| >= |T_obs|} / N over all N labellings, the observed one included: the exact
  permutation p-value (scipy with ``n_resamples=np.inf``). The smallest p the design can give is
  m / N: m = 2 when every labelling has a mirror with the negated statistic (sign flips: flipping
  every sign negates the mean difference and keeps the variance, negates V - m(m+1)/4; equal
  group sizes unpaired: swapping the groups negates Welch's and Student's t and U - n1 n2 / 2),
  else 1. 2 vs 5 samples have C(7, 2) = 21 labellings, floor 1/21; 4 vs 4: 70, floor 2/70;
  8 pairs: 256 sign vectors, floor 2/256. (``mann_whitney`` with unequal groups: without ties
  U's null is symmetric, reversing the ranking maps U to n1 n2 - U, so such a gene cannot go
  below 2/N either; 1/N needs ties.) Per gene, labellings that differ only on samples the
  gene's test does not use (missing values; for paired tests pairs whose difference is missing
  or zero) give the same statistic, so p_perm_floor is that gene's own floor: (labellings that
  split its used values as observed + those that split them as the mirror) / N, a lower bound
  of p_perm, reached when the observed split is the most extreme one; without missing values
  (and zero differences) it is the design's m / N.

Undefined statistics: a gene whose observed statistic is undefined (twogroup's rules: too few
values, essentially constant, all tied) gets NaN p_perm, p_perm_floor and p_maxT. A permutation
whose statistic is undefined for a gene (e.g. a permuted group left with < 2 values, or both
groups constant) counts as not extreme, as scipy's NaN comparisons do (scipy would give a NaN
observed statistic p = 1/(B+1), we give NaN).

Westfall-Young single-step maxT (Westfall & Young 1993, algorithm 2.5; multtest ``mt.maxT``
with ``side="abs"``): p_maxT_g = (#{b: max_g' |T*_{g',b}| >= |T_g|} + 1) / (B + 1) (exact:
without the +1, over N), the maximum over the genes with a defined observed statistic (a gene's
undefined permuted statistic is left out of that permutation's maximum). p_maxT >= p_perm.
The maximum is a reduction over genes: each gene-chunk task returns its per-gene fields and the
(B,) per-permutation maximum over its genes; a tree maximum gives the global one; a cheap final
task per chunk counts against it. Memory stays bounded: a task holds its gene chunk, the
prepared rows of a super-tile of genes, one batch of permutations and a (genes x permutations)
tile of temporaries, all sized from ``memory_budget`` (exact unpaired enumeration also holds the
n x N relabelling matrix, N <= min(permutations, 10^6)); never genes x B.
Step-down maxT (multtest's default, Westfall-Young algorithm 2.8) is uniformly more powerful:
gene g's null maximum is over the genes whose observed |T| is at most |T_g| only, which needs,
for every permutation, the successive maxima along the ordering of all genes by observed |T| --
all genes x B statistics at once, or, bounded, a second graph whose tasks are permutation
batches over all genes (genes x batch statistics sorted by observed |T|, a cumulative maximum
down the ordering), which reads the whole matrix once per batch. It is not done here;
single-step maxT already controls the family-wise error rate strongly (under subset
pivotality), at some cost in power when many genes are non-null.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import bottleneck as bn
import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from scipy import special

from engine.errors import InputError
from engine.store.cohort import task_memory
from engine.resample.exact import (exact_sums, grid_powers, half_bits, on_grid,
                                   sum_of_squares)
from engine.resample.rng import analysis_key, block_rng, check_seed
from engine.stats.phenotype import (MAX_RELABELLINGS, PERMUTATION_BLOCK, label_permutations,
                                    relabellings)
from engine.stats.twogroup import PAIRED_TESTS, TESTS

__all__ = [
    "COLUMNS",
    "COLUMN_DESCRIPTIONS",
    "DEFAULT_MEMORY_BUDGET",
    "labellings",
    "PERMUTATION_BLOCK",
    "maxt_p_values",
    "permutation_chunk",
    "permutation_columns",
    "permutation_info",
    "permutation_test",
    "sign_flips",
]

#: Columns of :func:`permutation_columns`, in table order.
COLUMNS = ("p_perm", "p_perm_floor", "p_maxT", "n_permutations")
#: Descriptions of :data:`COLUMNS` for the result's variables.
COLUMN_DESCRIPTIONS = {
    "p_perm": "two-sided permutation p-value of the test's standardised statistic (t; z of U "
              "or V): (#{|T*| >= |T|} + 1) / (B + 1) over B random permutations (label "
              "permutations; sign flips for paired tests), or the exact p over all N "
              "relabellings when N <= permutations",
    "p_perm_floor": "smallest p_perm this gene can get: 1 / (B + 1); exact: (labellings giving "
                    "the observed split of its values + those giving the mirrored split) / N",
    "p_maxT": "Westfall-Young single-step maxT adjusted p-value (max |T*| over all genes with "
              "a statistic, per permutation)",
    "n_permutations": "permutations used: B, or N when every relabelling was enumerated",
}
#: Per-gene fields of :func:`permutation_chunk` (``statistic``: the observed standardised one).
CHUNK_FIELDS = ("p_perm", "p_perm_floor", "n_permutations", "statistic")
#: Memory for one task's temporaries (prepared rows, a permutation batch, a tile).
DEFAULT_MEMORY_BUDGET = 64 * 2**20
_EPS = np.finfo(np.float64).eps
#: scipy.stats.permutation_test's relative tolerance for "as extreme as observed".
_TOLERANCE = 100 * _EPS
_SS_ZERO = 16 * _EPS
#: float64 temporaries per (gene, permutation) of a tile (Welch, the largest: 4 + 4 sums, ...).
_BYTES_PER_ELEMENT = 8 * 20
#: At most this many (gene, permutation) elements per tile: its temporaries stay in cache.
_TILE_ELEMENTS = 2**16
#: At most this many permutations per batch of labels.
_MAX_BATCH = 2048


# --------------------------------------------------------------------------- designs


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class _Design:
    """What the permutations are: labels of n_case + n_control samples, or signs of pairs."""

    test: str
    n_case: int
    n_control: int
    permutations: int

    @property
    def paired(self) -> bool:
        return self.test in PAIRED_TESTS

    @property
    def n_samples(self) -> int:
        """Rows of a labelling: samples (case then control), or pairs."""
        return self.n_case if self.paired else self.n_case + self.n_control

    @property
    def n_relabellings(self) -> int:
        if self.paired:
            return 2**self.n_case
        return math.comb(self.n_case + self.n_control, self.n_case)

    @property
    def exact(self) -> bool:
        return self.n_relabellings <= min(self.permutations, MAX_RELABELLINGS)

    @property
    def used(self) -> int:
        return self.n_relabellings if self.exact else self.permutations

    @property
    def mirrored(self) -> bool:
        """Every labelling has a mirror labelling with the negated statistic."""
        return self.paired or self.n_case == self.n_control

    @property
    def is_case(self) -> np.ndarray:
        return np.r_[np.ones(self.n_case, bool), np.zeros(self.n_control, bool)]

    @property
    def observed(self) -> np.ndarray:
        """The observed labelling as a one-column weight matrix."""
        if self.paired:
            return np.ones((self.n_case, 1))
        return self.is_case.astype(np.float64)[:, None]

    def floor(self) -> float:
        return (2.0 if self.mirrored else 1.0) / self.used if self.exact \
            else 1.0 / (self.used + 1)


def _design(test: str, n_case: int, n_control: int, permutations) -> _Design:
    if test not in TESTS:
        raise InputError(f"unknown test {test!r} (choose from {', '.join(TESTS)})")
    n_case, n_control = int(n_case), int(n_control)
    permutations = _count(permutations, "permutations")
    if test in PAIRED_TESTS:
        if n_case != n_control or n_case < 1:
            raise InputError(f"paired test {test!r} needs aligned case and control samples, "
                             f"got {n_case} and {n_control}")
    elif n_case < 1 or n_control < 1:
        raise InputError(f"both groups need a sample: {n_case} case and {n_control} control "
                         "samples (check case/control labels)")
    return _Design(test, n_case, n_control, permutations)


def _attribute_count(n: int) -> int | str:
    """``n`` as an attribute: exact up to 2^53 (what every JSON reader keeps exactly), else
    text in scientific notation ("1.241e+15049"; C(50000, 25000) has 15,050 digits, more than
    Python converts to text by default)."""
    if n <= 2**53:
        return n
    shift = max(n.bit_length() - 64, 0)  # the top 64 bits carry the precision
    log10 = math.log10(n >> shift) + shift * math.log10(2)
    exponent = math.floor(log10)
    return f"{10 ** (log10 - exponent):.3f}e+{exponent}"


def permutation_info(test: str, n_case: int, n_control: int, permutations: int) -> dict:
    """What the permutation test of a design is, for the result's attributes.

    ``n_case``/``n_control``: samples per group (paired tests: pairs, both). Returns
    ``permutation_type`` ("labels" or "sign_flips"), ``n_relabellings`` (distinct labellings:
    C(n_case + n_control, n_case), or 2^pairs), ``exact`` (all of them are enumerated: when
    ``n_relabellings`` <= ``permutations`` and <= 10^6), ``n_permutations`` (B, or
    ``n_relabellings`` when exact), ``p_perm_floor`` (the smallest p the design can give without
    missing values: 1/(B + 1), or m/N with m = 2 for sign flips and equal group sizes, else 1)
    and ``permutation_block`` (permutations per seeded block, part of the permutations'
    identity).
    """
    d = _design(test, n_case, n_control, permutations)
    return {"permutation_type": "sign_flips" if d.paired else "labels",
            "n_relabellings": _attribute_count(d.n_relabellings), "exact": d.exact,
            "n_permutations": d.used, "p_perm_floor": d.floor(),
            "permutation_block": PERMUTATION_BLOCK}


# --------------------------------------------------------------------------- permutations


def sign_flips(n_pairs: int, n_permutations: int, *, seed: int, key: int,
               block: int) -> np.ndarray:
    """Block ``block`` of the sign flips: an (n_pairs x width) float64 matrix of +1/-1 whose
    column i is permutation ``block * PERMUTATION_BLOCK + i`` (one Rademacher sign per pair).

    Drawn from ``block_rng(seed, key, block)`` for the whole block and cut at
    ``n_permutations``, so permutation j does not depend on ``n_permutations``.
    """
    n_pairs, n_permutations = _count(n_pairs, "n_pairs"), _count(n_permutations,
                                                                  "n_permutations")
    first = int(block) * PERMUTATION_BLOCK
    if block < 0 or first >= n_permutations:
        raise InputError(f"permutation block {block} is outside {n_permutations} permutations")
    bits = block_rng(seed, key, int(block)).integers(0, 2, size=(PERMUTATION_BLOCK, n_pairs),
                                                     dtype=np.int8)
    width = min(PERMUTATION_BLOCK, n_permutations - first)
    return np.ascontiguousarray(1.0 - 2.0 * bits[:width].T)


def _all_signs(n_pairs: int, start: int, stop: int) -> np.ndarray:
    """Sign vectors start..stop-1 of all 2^n_pairs: pair i of vector j is -1 where bit i of j
    is set (vector 0, all +1, is the observed one)."""
    j = np.arange(start, stop, dtype=np.int64)
    bits = (j[None, :] >> np.arange(n_pairs, dtype=np.int64)[:, None]) & 1
    return 1.0 - 2.0 * bits


def _columns(d: _Design, start: int, stop: int, *, seed: int, key: int,
             every: np.ndarray | None, dtype=np.float64) -> np.ndarray:
    """Labellings start..stop-1 (samples or pairs x (stop - start)): 0/1 labels or +1/-1 signs
    (``dtype=bool``: random labels as bool, to save memory; signs and enumerations float64)."""
    if d.exact:
        if d.paired:
            return _all_signs(d.n_case, start, stop)
        return np.ascontiguousarray(every[:, start:stop])
    if d.paired:
        def draw(b):
            return sign_flips(d.n_case, d.used, seed=seed, key=key, block=b)
    else:
        def draw(b):
            return label_permutations(d.is_case, d.used, seed=seed, key=key, block=b,
                                      dtype=dtype)
    first, last = start // PERMUTATION_BLOCK, (stop - 1) // PERMUTATION_BLOCK
    blocks = [draw(b) for b in range(first, last + 1)]
    blocks = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
    offset = start - first * PERMUTATION_BLOCK
    return np.ascontiguousarray(blocks[:, offset:offset + stop - start])


def labellings(test: str, n_case: int, n_control: int, permutations: int, start: int,
               stop: int, *, seed: int, key: int) -> np.ndarray:
    """Labellings ``start..stop-1`` of a design as the engine uses them: (samples x width) 0/1
    labels (case samples first) or (pairs x width) +1/-1 signs; when exact, all relabellings
    in order (:func:`engine.stats.phenotype.relabellings`; sign vector j flips the pairs of the
    set bits of j)."""
    d = _design(test, n_case, n_control, permutations)
    if not 0 <= start < stop <= d.used:
        raise InputError(f"labellings {start}..{stop - 1} are outside the {d.used} used")
    every = relabellings(d.is_case) if d.exact and not d.paired else None
    return _columns(d, int(start), int(stop), seed=seed, key=key, every=every)


# --------------------------------------------------------------------------- per-gene inputs


@dataclass
class _Prepared:
    """A tile's rows to multiply by the labellings and its per-gene constants."""

    rows: np.ndarray  # (k, genes, samples or pairs), exact integers or half-integers
    present: np.ndarray | None  # (genes, samples) 0/1 float64 for the group counts, or None
    gene: dict  # per-gene (genes,) or (k, genes) arrays
    usable: np.ndarray  # (genes,) genes that can have a statistic at all
    #: (genes,) unpaired: present case values; paired: pairs whose sign matters (floors)
    informative: np.ndarray
    h: int = 0  # half bits of the grid (t tests)

    def take(self, rows: slice) -> _Prepared:
        gene = {k: v[..., rows] for k, v in self.gene.items()}
        present = None if self.present is None else self.present[rows]
        return _Prepared(self.rows[:, rows], present, gene, self.usable[rows],
                         self.informative[rows], self.h)


def _on_grid_present(values: np.ndarray, present: np.ndarray, h: int):
    """Rows on their integer grid (centred near the mean of the present values), the
    non-present entries 0: (powers (4, genes, n), offset, totals of the powers)."""
    with np.errstate(invalid="ignore"):
        fill = bn.nanmean(np.where(present, values, np.nan), axis=1)
    fill = np.where(np.isfinite(fill), fill, 0.0)
    grid = on_grid(np.where(present, values, fill[:, None]), h)
    powers = grid_powers(grid)
    powers[:, ~present] = 0.0
    return powers, grid.offset, powers.sum(axis=2)  # integer sums: exact


def _prepare_t(values: np.ndarray, d: _Design) -> _Prepared:
    """Welch/Student: the gene's grid; Welch multiplies all four powers, Student the values."""
    present = ~np.isnan(values)
    usable = ~(present & ~np.isfinite(values)).any(axis=1)  # +-inf: twogroup's t is NaN
    present &= np.isfinite(values)
    h = half_bits(values.shape[1])
    powers, offset, totals = _on_grid_present(values, present, h)
    gene = {"offset": offset, "totals": totals,
            "n_present": present.sum(axis=1).astype(np.float64)}
    if d.test == "student":
        gene["raw_ss"] = sum_of_squares(totals[1:], h)
        powers = powers[:1]
    return _Prepared(powers, present.astype(np.float64), gene, usable,
                     present[:, :d.n_case].sum(axis=1), h)


def _prepare_mann_whitney(values: np.ndarray, d: _Design) -> _Prepared:
    present = ~np.isnan(values)
    ranks = bn.nanrankdata(values, axis=1)  # average ranks of the present values
    ranks[~present] = 0.0
    n = present.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Var(U) / (n1 n2): the rank variance of the gene's present values (ties included)
        spread = ((ranks * ranks).sum(axis=1) - n * (n + 1) ** 2 / 4) / (n * (n - 1))
    gene = {"n_present": n, "spread": spread}
    return _Prepared(ranks[None], present.astype(np.float64), gene, np.ones(n.size, bool),
                     present[:, :d.n_case].sum(axis=1))


def _prepare_paired_t(diff: np.ndarray, d: _Design) -> _Prepared:
    """Differences on their grid: d = (q + offset) step; the sign-flipped sum is
    q @ S + offset * (mask @ S), both exact integer products."""
    present = ~np.isnan(diff)
    usable = ~(present & ~np.isfinite(diff)).any(axis=1)
    present &= np.isfinite(diff)
    h = half_bits(diff.shape[1])
    powers, offset, totals = _on_grid_present(diff, present, h)
    m = present.sum(axis=1).astype(np.float64)
    raw = sum_of_squares(totals[1:], h) + offset * (2.0 * totals[0] + m * offset)
    gene = {"m": m, "offset": offset, "raw_ss": raw}
    return _Prepared(powers[:1], present.astype(np.float64), gene, usable,
                     (present & (diff != 0)).sum(axis=1), h)


def _prepare_signed_rank(diff: np.ndarray, d: _Design) -> _Prepared:
    """Signed ranks w = sign(d) rank(|d|) over the nonzero differences: V* - m(m+1)/4 =
    (w @ S) / 2; Var(V) = sum r^2 / 4."""
    nonzero = np.where(diff != 0, diff, np.nan)
    ranks = bn.nanrankdata(np.abs(nonzero), axis=1)
    used = ~np.isnan(ranks)
    ranks[~used] = 0.0
    gene = {"variance": (ranks * ranks).sum(axis=1) / 4}
    signed = np.where(nonzero > 0, ranks, -ranks)
    signed[~used] = 0.0
    return _Prepared(signed[None], None, gene, used.any(axis=1), used.sum(axis=1))


_PREPARE = {"welch": _prepare_t, "student": _prepare_t, "mann_whitney": _prepare_mann_whitney,
            "paired_t": _prepare_paired_t, "wilcoxon_signed_rank": _prepare_signed_rank}


# --------------------------------------------------------------------------- statistics


def _group(parts: np.ndarray, count, h: int):
    """Centred mean and within-group sum of squares (grid units) from the exact sums."""
    s = parts[0]
    mean = s / count
    raw = sum_of_squares(parts[1:], h)
    ss = raw - s * mean
    ss[~(ss > _SS_ZERO * raw)] = 0.0  # rounding of a constant group's 0 (and empty groups)
    return mean, ss


def _t(diff, stderr, scale, enough):
    """t and where it is defined (R: not when stderr < 10 eps of the largest |mean|)."""
    t = diff / stderr
    return t, enough & ~(stderr < 10.0 * _EPS * scale) & np.isfinite(t)


def _welch(sums, n1, p: _Prepared):
    g = p.gene
    n2 = g["n_present"][:, None] - n1
    mean1, ss1 = _group(sums, n1, p.h)
    mean2, ss2 = _group(g["totals"][:, :, None] - sums, n2, p.h)
    stderr = np.sqrt(ss1 / (n1 - 1) / n1 + ss2 / (n2 - 1) / n2)
    offset = g["offset"][:, None]
    scale = np.maximum(np.abs(mean1 + offset), np.abs(mean2 + offset))
    return _t(mean1 - mean2, stderr, scale, (n1 >= 2) & (n2 >= 2))


def _student(sums, n1, p: _Prepared):
    g = p.gene
    n2 = g["n_present"][:, None] - n1
    s1 = sums[0]
    s2 = g["totals"][0][:, None] - s1
    mean1, mean2 = s1 / n1, s2 / n2
    raw = g["raw_ss"][:, None]
    within = raw - (s1 * mean1 + s2 * mean2)  # symmetric in the groups: mirrors negate t
    within[~(within > _SS_ZERO * raw)] = 0.0
    df = n1 + n2 - 2
    stderr = np.sqrt(within / df * (1.0 / n1 + 1.0 / n2))
    offset = g["offset"][:, None]
    scale = np.maximum(np.abs(mean1 + offset), np.abs(mean2 + offset))
    return _t(mean1 - mean2, stderr, scale, (n1 >= 1) & (n2 >= 1) & (df >= 1))


def _continuity_z(shift, variance):
    """R's normal approximation: (shift - sign(shift) / 2) / sd."""
    return (shift - np.sign(shift) * 0.5) / np.sqrt(variance)


def _mann_whitney(sums, n1, p: _Prepared):
    g = p.gene
    n2 = g["n_present"][:, None] - n1
    u = sums[0] - n1 * (n1 + 1) / 2
    variance = n1 * n2 * g["spread"][:, None]
    z = _continuity_z(u - n1 * n2 / 2, variance)
    return z, (n1 >= 1) & (n2 >= 1) & (variance > 0)


def _paired_t(sums, signed_count, p: _Prepared):
    g = p.gene
    m = g["m"][:, None]
    total = sums[0] + g["offset"][:, None] * signed_count  # sum of the flipped d, grid units
    mean = total / m
    raw = g["raw_ss"][:, None]
    ss = raw - total * mean
    ss[~(ss > _SS_ZERO * raw)] = 0.0
    stderr = np.sqrt(ss / (m - 1) / m)
    return _t(mean, stderr, np.abs(mean), m >= 2)


def _signed_rank(sums, _count, p: _Prepared):
    variance = p.gene["variance"][:, None]
    z = _continuity_z(sums[0] / 2, variance)
    return z, (variance > 0) & np.isfinite(z)


_STATISTIC = {"welch": _welch, "student": _student, "mann_whitney": _mann_whitney,
              "paired_t": _paired_t, "wilcoxon_signed_rank": _signed_rank}


def _statistics(test: str, p: _Prepared, weights: np.ndarray) -> np.ndarray:
    """The standardised statistic of every gene of ``p`` for every labelling (column of
    ``weights``), NaN where undefined: (genes x labellings) float64."""
    sums = exact_sums(p.rows, weights)
    if p.present is None:
        count = None
    elif (p.present == 1.0).all():
        count = weights.sum(axis=0)[None, :]  # labels: n1; signs: sum of the signs (exact)
    else:
        count = p.present @ weights  # 0/1 times 0/1 or +-1: exact integers
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        stat, ok = _STATISTIC[test](sums, count, p)
    ok &= p.usable[:, None]
    stat[~ok] = np.nan
    return stat


# --------------------------------------------------------------------------- the chunk kernel


def _values(block: np.ndarray, d: _Design, case, control) -> np.ndarray:
    """The test's per-gene data: case then control values, or case - control differences."""
    block = np.asarray(block)
    if d.paired:  # in float64, as twogroup's paired kernels
        return np.asarray(block[:, case], np.float64) - np.asarray(block[:, control], np.float64)
    return np.ascontiguousarray(block[:, np.concatenate([case, control])], dtype=np.float64)


def _floors(p: _Prepared, d: _Design) -> np.ndarray:
    """Per gene, the smallest p its test can give (see the module docstring)."""
    if not d.exact:
        return np.full(p.usable.size, 1.0 / (d.used + 1))
    if d.paired:  # the 2^(pairs - used) sign vectors of the ignored pairs, and the mirror
        return np.exp2(1.0 - p.informative)
    n1, n = d.n_case, d.n_samples
    present = p.present.sum(axis=1)
    missing = n - present
    k = p.informative  # present case values
    # labellings inducing the observed split of the present values, and its mirror's
    same = special.comb(missing, n1 - k)
    mirror = special.comb(missing, n1 - (present - k))
    return (same + mirror) / d.used


def _tiles(n_genes: int, d: _Design, k_rows: int, memory_budget: int):
    """(genes per super-tile, permutations per batch, genes per tile) from the budget."""
    budget = max(1, int(memory_budget))
    n = d.n_samples
    per_gene = 8 * n * (k_rows + 4)  # values, prepared rows, mask, temporaries of preparing
    super_genes = max(1, min(n_genes, (budget // 2) // per_gene))
    batch = max(1, min(d.used, _MAX_BATCH, (budget // 4) // (8 * n)))
    tile = max(1, min(super_genes, _TILE_ELEMENTS // batch,
                      (budget // 4) // (_BYTES_PER_ELEMENT * batch)))
    return super_genes, batch, tile


def permutation_chunk(block, *, test: str, case, control, permutations: int, seed: int,
                      key: int, memory_budget: int = DEFAULT_MEMORY_BUDGET):
    """The permutation test of every gene (row) of ``block`` (genes x samples, NaN missing).

    ``case``/``control``: column indices of the two groups (paired tests: aligned, column j of
    ``case`` pairs with column j of ``control``). Returns ``(fields, perm_max)``: ``fields`` a
    (genes, 4) float64 array with columns :data:`CHUNK_FIELDS` (p_perm, p_perm_floor,
    n_permutations, the observed standardised statistic, NaN where undefined) and ``perm_max``
    the (n_permutations,) maximum over the block's genes with a defined observed statistic of
    |T*| for each permutation (-inf where none), for :func:`maxt_p_values`.
    ``memory_budget`` sizes the tiles and never changes the result.
    """
    case, control = np.asarray(case, dtype=np.intp), np.asarray(control, dtype=np.intp)
    d = _design(test, case.size, control.size, permutations)
    values = _values(block, d, case, control)
    n_genes = values.shape[0]
    fields = np.full((n_genes, len(CHUNK_FIELDS)), np.nan)
    fields[:, 2] = d.used
    perm_max = np.full(d.used, -np.inf)
    every = relabellings(d.is_case) if d.exact and not d.paired else None
    k_rows = 4 if test == "welch" else 1
    super_genes, batch, tile = _tiles(n_genes, d, k_rows, memory_budget)
    observed = np.full(n_genes, np.nan)
    extreme = np.zeros(n_genes, np.int64)
    # Labellings are drawn once per block of PERMUTATION_BLOCK (random labels held as bool),
    # the outer loop; the genes' prepared rows are remade for each block (a pass over the
    # values, cheap next to the block's products). Sums are exact: any tiling, same bits.
    for b0 in range(0, d.used, PERMUTATION_BLOCK):
        b1 = min(b0 + PERMUTATION_BLOCK, d.used)
        labels = _columns(d, b0, b1, seed=seed, key=key, every=every, dtype=bool)
        for g0 in range(0, n_genes, super_genes):
            genes = slice(g0, g0 + super_genes)
            prepared = _PREPARE[test](values[genes], d)
            if b0 == 0:
                observed[genes] = _statistics(test, prepared, d.observed)[:, 0]
                fields[genes, 1] = np.where(np.isnan(observed[genes]), np.nan,
                                            _floors(prepared, d))
            obs = observed[genes]
            defined = ~np.isnan(obs)
            threshold = np.abs(obs) * (1.0 - _TOLERANCE)
            for c0 in range(b0, b1, batch):
                c1 = min(c0 + batch, b1)
                weights = np.asarray(labels[:, c0 - b0:c1 - b0], dtype=np.float64)
                for t0 in range(0, obs.size, tile):
                    rows = slice(t0, t0 + tile)
                    stat = np.abs(_statistics(test, prepared.take(rows), weights))
                    extreme[g0 + t0:g0 + t0 + stat.shape[0]] += \
                        (stat >= threshold[rows, None]).sum(axis=1)
                    stat[~defined[rows]] = np.nan
                    stat[np.isnan(stat)] = -np.inf
                    np.maximum(perm_max[c0:c1], stat.max(axis=0, initial=-np.inf),
                               out=perm_max[c0:c1])
    defined = ~np.isnan(observed)
    adjustment = 0 if d.exact else 1
    fields[:, 0] = np.where(defined, (extreme + adjustment) / (d.used + adjustment), np.nan)
    fields[:, 3] = observed
    return fields, perm_max


def maxt_p_values(statistic, perm_max, *, exact: bool) -> np.ndarray:
    """Westfall-Young single-step maxT p-values of the genes with observed standardised
    ``statistic`` against the global per-permutation maximum ``perm_max`` (B,):
    (#{b: perm_max_b >= |T_g| (1 - 100 eps)} + 1) / (B + 1), exact: without the +1s."""
    statistic = np.asarray(statistic, dtype=np.float64)
    ordered = np.sort(np.asarray(perm_max, dtype=np.float64))
    b = ordered.size
    threshold = np.abs(statistic) * (1.0 - _TOLERANCE)
    at_least = b - np.searchsorted(ordered, np.where(np.isnan(threshold), np.inf, threshold),
                                   side="left")
    adjustment = 0 if exact else 1
    return np.where(np.isnan(statistic), np.nan, (at_least + adjustment) / (b + adjustment))


# --------------------------------------------------------------------------- wrappers


def _check(test, case, control, permutations, seed, key):
    case, control = np.asarray(case, dtype=np.intp), np.asarray(control, dtype=np.intp)
    if case.ndim != 1 or control.ndim != 1:
        raise InputError("case and control must be 1-D arrays of sample positions")
    d = _design(test, case.size, control.size, permutations)
    check_seed(seed, key)
    return d, case, control


def permutation_test(x, *, test: str, case, control, permutations: int, seed: int, key: int,
                     memory_budget: int = DEFAULT_MEMORY_BUDGET) -> dict:
    """In-memory permutation test of every gene (row) of the numpy ``x`` (genes x samples).

    Returns (genes,) float64 arrays ``p_perm``, ``p_perm_floor``, ``p_maxT``,
    ``n_permutations`` and ``statistic`` (observed standardised statistic), and ``perm_max``
    (n_permutations,): max over genes of |T*| per permutation. See the module docstring.
    """
    d, case, control = _check(test, case, control, permutations, seed, key)
    fields, perm_max = permutation_chunk(x, test=test, case=case, control=control,
                                         permutations=permutations, seed=seed, key=key,
                                         memory_budget=memory_budget)
    out = {f: fields[:, i] for i, f in enumerate(CHUNK_FIELDS)}
    out["p_maxT"] = maxt_p_values(out["statistic"], perm_max, exact=d.exact)
    out["perm_max"] = perm_max
    return out


def _chunk_task(block, kwargs):
    return permutation_chunk(block, **kwargs)


def _maxt_block(fields, perm_max, *, exact):
    return maxt_p_values(fields[:, 3], perm_max, exact=exact)


def permutation_columns(x, *, test: str, case, control, permutations: int, seed: int,
                        name: str, key: int | None = None, paired: bool | None = None,
                        memory_budget: int | None = None) -> dict[str, da.Array]:
    """Lazy per-gene permutation test of the dask ``x`` (genes x samples, chunked along genes).

    Returns :data:`COLUMNS` as (genes,) dask arrays with ``x``'s gene chunks: ``p_perm``,
    ``p_perm_floor``, ``p_maxT`` (float64) and ``n_permutations`` (int64). ``key`` defaults to
    ``analysis_key(name, "permutation")``. ``paired`` (default: from ``test``) must agree with
    the test. Building computes nothing. The graph: one task per gene chunk returning the
    chunk's fields and its (B,) per-permutation maximum (``permutation-null-chunk`` on the
    dashboard), a tree maximum over the chunks, and one small task per chunk for p_maxT
    (``permutation-maxt``).
    """
    key = analysis_key(name, "permutation") if key is None else key
    if memory_budget is None:  # the default, or less on workers with little memory
        memory_budget = task_memory(DEFAULT_MEMORY_BUDGET)
    d, case, control = _check(test, case, control, permutations, seed, key)
    if paired is not None and bool(paired) != d.paired:
        raise InputError(f"test {test!r} is {'' if d.paired else 'not '}a paired test, but "
                         f"paired={paired!r}")
    if not isinstance(x, da.Array):
        x = da.from_array(np.asarray(x), chunks=(-1, -1))
    if x.ndim != 2:
        raise InputError(f"x must be a 2-D (genes x samples) array, got shape {x.shape}")
    x = x.rechunk({1: -1})
    kwargs = {"test": test, "case": case, "control": control, "permutations": d.permutations,
              "seed": int(seed), "key": int(key), "memory_budget": int(memory_budget)}
    token = tokenize(x, kwargs)
    task = dask.delayed(_chunk_task, pure=True)
    fields, maxima = [], []
    # the blocks keep the array's own keys (no graph optimisation): each chunk is read once,
    # shared with the test's statistic and any other analysis of the graph
    blocks = x.to_delayed(optimize_graph=False)[:, 0]
    for i, (blk, rows) in enumerate(zip(blocks, x.chunks[0])):
        part = task(blk, kwargs, dask_key_name=f"permutation-null-chunk-{token}-{i}")
        fields.append(da.from_delayed(part[0], shape=(rows, len(CHUNK_FIELDS)),
                                      dtype=np.float64))
        maxima.append(da.from_delayed(part[1], shape=(d.used,), dtype=np.float64))
    fields = da.concatenate(fields, axis=0) if len(fields) > 1 else fields[0]
    perm_max = da.stack(maxima).max(axis=0)
    p_maxt = da.blockwise(_maxt_block, "g", fields, "gf", perm_max, "b", dtype=np.float64,
                          concatenate=True, exact=d.exact,
                          meta=np.empty((0,), np.float64), name=f"permutation-maxt-{token}")
    return {"p_perm": fields[:, 0], "p_perm_floor": fields[:, 1], "p_maxT": p_maxt,
            "n_permutations": fields[:, 2].astype(np.int64)}
