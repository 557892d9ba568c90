"""Per-gene permutation tests (engine.resample.permutation): exact enumeration against
scipy.stats.permutation_test and a plain itertools enumeration, random permutations against a
plain loop over the same permutations, Westfall-Young maxT against a brute-force maximum over
the full (genes x permutations) matrix, the p-value floor, bit-identity across gene chunkings,
memory budgets and numbers of permutations, laziness, and null calibration."""

from __future__ import annotations

import itertools
import math

import dask.array as da
import numpy as np
import pytest
from scipy import stats

from engine.errors import InputError
from engine.resample import permutation as pm
from engine.resample.rng import analysis_key
from engine.stats import twogroup as tg
from engine.stats.phenotype import label_permutations

UNPAIRED = ("welch", "student", "mann_whitney")
PAIRED = ("paired_t", "wilcoxon_signed_rank")
EPS = np.finfo(np.float64).eps
SEED, KEY = 7, analysis_key("bcr_vs_neg", "permutation")


# --------------------------------------------------------------------------- plain references

def ref_mann_whitney_z(a: np.ndarray, b: np.ndarray) -> float:
    """R wilcox.test(exact=FALSE, correct=TRUE)'s z, written out: U of a, tie-corrected
    variance n1 n2 / 12 ((n + 1) - sum(t^3 - t) / (n (n - 1))), continuity correction."""
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    n1, n2 = a.size, b.size
    if n1 == 0 or n2 == 0:
        return np.nan
    n = n1 + n2
    ranks = stats.rankdata(np.concatenate([a, b]))
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    ties = np.unique(np.concatenate([a, b]), return_counts=True)[1].astype(float)
    variance = n1 * n2 / 12 * ((n + 1) - (ties**3 - ties).sum() / (n * (n - 1)))
    if variance <= 0:
        return np.nan
    shift = u - n1 * n2 / 2
    return (shift - np.sign(shift) * 0.5) / math.sqrt(variance)


def ref_signed_rank_z(d: np.ndarray) -> float:
    """R wilcox.test(paired=TRUE, exact=FALSE)'s z: zeros dropped, V of the positive
    differences, variance m(m+1)(2m+1)/24 - sum(t^3 - t)/48, continuity correction."""
    d = d[~np.isnan(d)]
    d = d[d != 0]
    m = d.size
    if m == 0:
        return np.nan
    ranks = stats.rankdata(np.abs(d))
    v = ranks[d > 0].sum()
    ties = np.unique(np.abs(d), return_counts=True)[1].astype(float)
    variance = m * (m + 1) * (2 * m + 1) / 24 - (ties**3 - ties).sum() / 48
    if variance <= 0:
        return np.nan
    shift = v - m * (m + 1) / 4
    return (shift - np.sign(shift) * 0.5) / math.sqrt(variance)


def ref_statistic(test: str, case: np.ndarray, control: np.ndarray) -> np.ndarray:
    """The test's standardised statistic for each row of (rows x n1) case and (rows x n2)
    control values: t from the twogroup kernels, z of the rank tests from the plain functions."""
    case, control = np.atleast_2d(case), np.atleast_2d(control)
    if test == "mann_whitney":
        return np.array([ref_mann_whitney_z(a, b) for a, b in zip(case, control)])
    if test == "wilcoxon_signed_rank":
        return np.array([ref_signed_rank_z(a - b) for a, b in zip(case, control)])
    return tg.TESTS[test](case, control)[:, 1]


def count_extreme(null: np.ndarray, observed: float) -> int:
    """#{|T*| >= |T_obs|} with scipy.stats.permutation_test's relative tolerance."""
    return int((np.abs(null) >= abs(observed) - 100 * EPS * abs(observed)).sum())


def brute_force_exact(test: str, row: np.ndarray, n_case: int) -> float:
    """Exact permutation p of one gene by itertools: every relabelling (unpaired: every choice
    of n_case of the samples; paired: every sign vector, i.e. swap within chosen pairs)."""
    if test in PAIRED:
        case, control = row[:n_case], row[n_case:]
        observed = ref_statistic(test, case, control)[0]
        null = []
        for signs in itertools.product((1, -1), repeat=n_case):
            flip = np.array(signs) < 0
            null.append(ref_statistic(test, np.where(flip, control, case),
                                      np.where(flip, case, control))[0])
    else:
        observed = ref_statistic(test, row[:n_case], row[n_case:])[0]
        null = []
        for chosen in itertools.combinations(range(row.size), n_case):
            mask = np.zeros(row.size, bool)
            mask[list(chosen)] = True
            null.append(ref_statistic(test, row[mask], row[~mask])[0])
    if np.isnan(observed):
        return np.nan
    return count_extreme(np.array(null), observed) / len(null)


def scipy_exact(test: str, row: np.ndarray, n_case: int) -> float:
    """scipy.stats.permutation_test, exact (n_resamples=inf), statistic |T|, alternative
    'greater': #{|T_l| >= |T_obs|} / N over all N labellings."""
    def statistic(a, b, axis):
        a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
        shape = a.shape[:-1]
        out = ref_statistic(test, a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]))
        return np.abs(out).reshape(shape)

    kind = "samples" if test in PAIRED else "independent"
    res = stats.permutation_test((row[:n_case], row[n_case:]), statistic, vectorized=True,
                                 permutation_type=kind, n_resamples=np.inf,
                                 alternative="greater")
    return np.nan if np.isnan(res.statistic) else float(res.pvalue)


# --------------------------------------------------------------------------- data


def small_data(n: int, seed: int = 3) -> np.ndarray:
    """Genes x n samples (unpaired: case first; paired: the case columns then their controls):
    ties (one decimal), a NaN, a strongly separated gene, a constant gene, an all-tied-but-one
    gene, and a gene with a zero difference for the paired tests."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(8, 1, (9, n)), 1)
    x[1, n - 2] = np.nan  # a control value
    x[2, 0] = np.nan  # a case value (2 vs 5: Welch undefined)
    x[3] = 5.0  # constant: every test undefined
    x[4] = 2.0
    x[4, 0] = 3.0  # one distinct value
    x[5, : n // 2] += 6  # strongly separated
    x[6, 0] = x[6, n // 2]  # a zero paired difference / a tie across groups
    # two levels: some labellings leave both groups (all flipped differences) constant, and
    # the t tests undefined there (R: "data are essentially constant")
    if n == 16:
        x[7, 8:] = 0.0
        x[7, :8] = 1.1 * np.array([1, -1, 1, 1, -1, 1, 1, 1])
    else:
        x[7] = 5.3
        x[7, [0, *range(n - n // 2 + 1, n)]] = 1.1
    return as_stored(x)


def as_stored(x: np.ndarray) -> np.ndarray:
    """float32 values, as the cohort store holds them: on every gene's integer grid exactly,
    so that labellings with mathematically equal statistics get equal statistics up to the
    rounding of a few final operations (float64 input is rounded to the grid, 2^-49 of the
    gene's spread at 8 samples, which small |t| can amplify past scipy's 100 eps)."""
    return x.astype(np.float32).astype(np.float64)


def sizes(test):
    return [(8, 8)] if test in PAIRED else [(2, 5), (4, 4)]


CASES = [(t, s) for t in UNPAIRED + PAIRED for s in sizes(t)]


def run(x, test, n_case, n_control, permutations, **kw):
    case = np.arange(n_case)
    control = np.arange(n_case, n_case + n_control)
    return pm.permutation_test(x, test=test, case=case, control=control,
                               permutations=permutations, seed=kw.pop("seed", SEED),
                               key=kw.pop("key", KEY), **kw)


# --------------------------------------------------------------------------- exact


@pytest.mark.parametrize("test,design", CASES)
def test_exact_equals_scipy_and_brute_force(test, design):
    n_case, n_control = design
    x = small_data(n_case + n_control)
    res = run(x, test, n_case, n_control, permutations=1000)
    n_labellings = 2**n_case if test in PAIRED else math.comb(n_case + n_control, n_case)
    assert (res["n_permutations"] == n_labellings).all()
    scipy_p = np.array([scipy_exact(test, row, n_case) for row in x])
    brute_p = np.array([brute_force_exact(test, row, n_case) for row in x])
    np.testing.assert_array_equal(np.isnan(scipy_p), np.isnan(brute_p))
    # counts of labellings: the p-values are the same ratios of integers
    np.testing.assert_allclose(res["p_perm"], scipy_p, rtol=1e-12, atol=0)
    np.testing.assert_allclose(res["p_perm"], brute_p, rtol=1e-12, atol=0)
    assert np.isnan(res["p_perm"][3])  # the constant gene
    assert np.isfinite(res["p_perm"][[0, 1, 5, 6]]).all()
    # the exact p is a whole number of labellings
    defined = ~np.isnan(res["p_perm"])
    counts = res["p_perm"][defined] * n_labellings
    np.testing.assert_allclose(counts, np.round(counts), rtol=0, atol=1e-9)


@pytest.mark.parametrize("test,design", CASES)
def test_observed_statistic_is_the_tests(test, design):
    n_case, n_control = design
    x = small_data(n_case + n_control)
    res = run(x, test, n_case, n_control, permutations=10)
    case, control = x[:, :n_case], x[:, n_case:]
    reference = tg.TESTS[test](case, control)
    np.testing.assert_array_equal(np.isnan(res["statistic"]), np.isnan(reference[:, 3]))
    if test in ("mann_whitney", "wilcoxon_signed_rank"):
        # z is not a column of the kernel: its normal p must be the kernel's p-value
        p = 2 * stats.norm.sf(np.abs(res["statistic"]))
        np.testing.assert_allclose(p, reference[:, 3], rtol=1e-9)
        np.testing.assert_allclose(res["statistic"], ref_statistic(test, case, control),
                                   rtol=1e-12)
    else:
        # grid sums vs two-pass moments: rounding only
        np.testing.assert_allclose(res["statistic"], reference[:, 1], rtol=1e-10)


def floor_by_enumeration(test: str, row: np.ndarray, n_case: int) -> float:
    """(labellings that split the values the test uses as observed + those that split them
    as the mirror: groups swapped, or every sign flipped) / N, by itertools."""
    if test in PAIRED:
        d = row[:n_case] - row[n_case:]
        used = ~np.isnan(d) & (d != 0)
        vectors = np.array(list(itertools.product((1, -1), repeat=n_case)))
        same = (vectors[:, used] == 1).all(axis=1) | (vectors[:, used] == -1).all(axis=1)
        return same.sum() / len(vectors)
    used = ~np.isnan(row)
    observed = np.arange(row.size) < n_case
    hits = 0
    combos = list(itertools.combinations(range(row.size), n_case))
    for chosen in combos:
        labels = np.zeros(row.size, bool)
        labels[list(chosen)] = True
        hits += (labels[used] == observed[used]).all() or (labels[used] == ~observed[used]).all()
    return hits / len(combos)


@pytest.mark.parametrize("test,design", CASES)
def test_exact_floor(test, design):
    """The design floor m/N (m = 2 with mirrors) is reached by a separated gene; per gene,
    missing values (and zero paired differences) raise it to what enumeration gives."""
    n_case, n_control = design
    info = pm.permutation_info(test, n_case, n_control, 1000)
    n_labellings = info["n_relabellings"]
    mirrored = test in PAIRED or n_case == n_control
    assert info["exact"] and info["p_perm_floor"] == (2 if mirrored else 1) / n_labellings
    if test in PAIRED:
        control = np.arange(n_case, dtype=float)
        separated = np.r_[control + 100 + np.arange(n_case) ** 2, control]
        with_gaps = separated.copy()
        with_gaps[0] = np.nan  # one missing pair
        with_gaps[1] = with_gaps[n_case + 1]  # one zero difference
    else:
        separated = np.r_[100 + np.arange(n_case) ** 1.5, np.arange(n_control) ** 1.5]
        with_gaps = separated.copy()
        with_gaps[[0, -1]] = np.nan  # a case and a control value missing
    x = np.stack([separated, with_gaps])
    res = run(x, test, n_case, n_control, permutations=1000)
    if test == "mann_whitney" and not mirrored:
        # U's null is symmetric: without ties the reversed ranking is a second extreme
        # labelling, so a separated gene gets 2/N; the floor 1/N needs ties (see below)
        assert res["p_perm"][0] == 2 / n_labellings
    else:
        assert res["p_perm"][0] == res["p_perm_floor"][0] == info["p_perm_floor"]
    if np.isnan(res["statistic"][1]):  # Welch 2 vs 5 with one case value left
        assert test == "welch" and n_case == 2 and np.isnan(res["p_perm_floor"][1])
        return
    assert res["p_perm"][1] == pytest.approx(scipy_exact(test, with_gaps, n_case), rel=1e-12)
    expected = floor_by_enumeration(test, with_gaps, n_case)
    assert expected > info["p_perm_floor"]
    assert res["p_perm_floor"][1] == pytest.approx(expected, rel=1e-14)
    if test != "mann_whitney":
        assert res["p_perm"][1] == pytest.approx(expected, rel=1e-12)
    assert res["p_perm"][1] >= res["p_perm_floor"][1]


@pytest.mark.parametrize("test,row", [
    ("welch", [8.2, 8.1, 6.8, 7.3, 7.9, 7.1, 7.9, 8.1]),
    ("student", [8.6, 7.2, 8.7, 8.8, 7.9, 7.7, 7.8]),
    ("paired_t", [8.1, 8.3, 7.0, 6.9, 8.2, 7.5, 8.2, 8.8, 6.4, 8.3, 9.2, 7.7, 7.2, 8.8, 8.3, 8.9]),
])
def test_tied_labellings_counted_with_scipys_tolerance(test, row):
    """float64 decimals are rounded to each gene's grid: labellings with mathematically equal
    statistics then differ in the last bits, and only the relative tolerance (100 eps, as
    scipy) counts them as equal. (Rows found by a search where tolerance 0 changes p.)"""
    row = np.array(row)
    n_case = 8 if test in PAIRED else (4 if row.size == 8 else 2)
    p = run(row[None], test, n_case, row.size - n_case, 1000)["p_perm"][0]
    assert p == pytest.approx(scipy_exact(test, row, n_case), rel=1e-12)
    assert p == pytest.approx(brute_force_exact(test, row, n_case), rel=1e-12)


@pytest.mark.parametrize("test", ["welch", "student", "paired_t"])
def test_constant_groups_are_undefined_not_extreme(test):
    """Two float64 levels (found by a search): the labellings that leave both groups constant
    (every flipped difference equal) have an undefined t, which counts as not extreme; their
    within-group sums of squares come out as rounding noise unless snapped to 0."""
    if test == "paired_t":
        row = np.r_[3.7231901098189697 * np.array([1, -1, 1, 1, -1, 1, 1, 1.0]), np.zeros(8)]
        n_case = 8
    else:
        a, b = {"welch": (10.710410544955426, 8.282036893282624),
                "student": (4.134915608751337, 9.185366180546024)}[test]
        row, n_case = np.array([a, b, b, b, a, a, a, b]), 4
    p = run(row[None], test, n_case, row.size - n_case, 1000)["p_perm"][0]
    assert p == pytest.approx(scipy_exact(test, row, n_case), rel=1e-12)
    assert p == pytest.approx(brute_force_exact(test, row, n_case), rel=1e-12)


def test_mann_whitney_floor_reached_with_ties():
    """2 vs 5: the floor 1/21 is reached when ties make the two rank extremes unequal."""
    x = np.array([[4.0, 5.0, 1.0, 1.0, 1.0, 2.0, 3.0]])
    res = run(x, "mann_whitney", 2, 5, permutations=1000)
    assert res["p_perm"][0] == res["p_perm_floor"][0] == 1 / 21
    assert res["p_perm"][0] == pytest.approx(scipy_exact("mann_whitney", x[0], 2), rel=1e-12)


# --------------------------------------------------------------------------- random


def permutation_matrix(test, n_case, n_control, permutations):
    """The permutations the engine uses, rebuilt from the public draws block by block."""
    blocks = range(math.ceil(permutations / pm.PERMUTATION_BLOCK))
    if test in PAIRED:
        return np.concatenate([pm.sign_flips(n_case, permutations, seed=SEED, key=KEY, block=b)
                               for b in blocks], axis=1)
    is_case = np.r_[np.ones(n_case, bool), np.zeros(n_control, bool)]
    return np.concatenate([label_permutations(is_case, permutations, seed=SEED, key=KEY,
                                              block=b) for b in blocks], axis=1)


def reference_null(test, x, n_case, labels):
    """(genes x permutations) statistics by a plain loop over the permutations."""
    null = np.empty((x.shape[0], labels.shape[1]))
    for j in range(labels.shape[1]):
        if test in PAIRED:
            flip = labels[:, j] < 0
            case, control = x[:, :n_case], x[:, n_case:]
            null[:, j] = ref_statistic(test, np.where(flip, control, case),
                                       np.where(flip, case, control))
        else:
            chosen = labels[:, j] == 1
            null[:, j] = ref_statistic(test, x[:, chosen], x[:, ~chosen])
    return null


@pytest.mark.parametrize("test", UNPAIRED + PAIRED)
def test_random_permutations_equal_plain_loop(test):
    n_case, n_control = (12, 12) if test in PAIRED else (6, 9)
    n = n_case + n_control
    rng = np.random.default_rng(11)
    x = np.round(rng.normal(0, 1, (25, n)), 1)
    x[:5, :n_case] += 3
    x = as_stored(x)
    x[7, [0, 3, n - 1]] = np.nan
    x[8] = 1.0  # constant
    x[9, :3] = x[9, n_case:n_case + 3]  # paired zeros
    b = 300  # not a multiple of the block: the last block is cut
    info = pm.permutation_info(test, n_case, n_control, b)
    assert not info["exact"] and info["n_permutations"] == b
    res = run(x, test, n_case, n_control, permutations=b)
    labels = permutation_matrix(test, n_case, n_control, b)
    assert labels.shape == (n_case if test in PAIRED else n, b)
    np.testing.assert_array_equal(
        pm.labellings(test, n_case, n_control, b, 0, b, seed=SEED, key=KEY), labels)
    np.testing.assert_array_equal(
        pm.labellings(test, n_case, n_control, b, 250, 290, seed=SEED, key=KEY),
        labels[:, 250:290])
    null = reference_null(test, x, n_case, labels)
    observed = ref_statistic(test, x[:, :n_case], x[:, n_case:])
    defined = ~np.isnan(observed)
    np.testing.assert_array_equal(defined, ~np.isnan(res["p_perm"]))
    counts = np.array([count_extreme(null[g], observed[g]) if defined[g] else -1
                       for g in range(x.shape[0])])
    np.testing.assert_allclose(res["p_perm"][defined], (counts[defined] + 1) / (b + 1),
                               rtol=1e-15)
    assert ((res["p_perm"][defined] > 0) & (res["p_perm"][defined] <= 1)).all()
    np.testing.assert_array_equal(res["p_perm_floor"][defined], 1 / (b + 1))
    assert (res["n_permutations"] == b).all()
    # Westfall-Young single-step maxT by brute force over the full matrix
    null_max = np.nanmax(np.where(np.isnan(null[defined]), -np.inf, np.abs(null[defined])),
                         axis=0)
    maxt = np.array([count_extreme(null_max, observed[g]) for g in np.flatnonzero(defined)])
    np.testing.assert_allclose(res["p_maxT"][defined], (maxt + 1) / (b + 1), rtol=1e-15)
    np.testing.assert_allclose(res["perm_max"], null_max, rtol=1e-10)
    assert (res["p_maxT"][defined] >= res["p_perm"][defined]).all()
    assert np.isnan(res["p_maxT"][~defined]).all()
    assert res["p_perm"][:5].max() < 0.05  # the shifted genes


@pytest.mark.parametrize("test,design", CASES)
def test_exact_maxt_brute_force(test, design):
    n_case, n_control = design
    x = small_data(n_case + n_control)
    res = run(x, test, n_case, n_control, permutations=1000)
    if test in PAIRED:
        labels = np.array(list(itertools.product((1.0, -1.0), repeat=n_case))).T
    else:
        labels = np.zeros((n_case + n_control, math.comb(n_case + n_control, n_case)))
        for j, chosen in enumerate(itertools.combinations(range(n_case + n_control), n_case)):
            labels[list(chosen), j] = 1
    used = pm.labellings(test, n_case, n_control, 1000, 0, labels.shape[1], seed=0, key=0)
    assert sorted(map(tuple, used.T)) == sorted(map(tuple, labels.T))  # all, once each
    null = reference_null(test, x, n_case, labels)
    observed = ref_statistic(test, x[:, :n_case], x[:, n_case:])
    defined = ~np.isnan(observed)
    null_max = np.max(np.where(np.isnan(null[defined]), -np.inf, np.abs(null[defined])), axis=0)
    expected = [count_extreme(null_max, observed[g]) / labels.shape[1]
                for g in np.flatnonzero(defined)]
    np.testing.assert_allclose(res["p_maxT"][defined], expected, rtol=1e-12)
    assert (res["p_maxT"][defined] >= res["p_perm"][defined]).all()


# --------------------------------------------------------------------------- reproducibility


def cohort_like(genes=40, n=20, seed=5):
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(8, 1, (genes, n)), 2).astype(np.float32)
    x[: genes // 4, : n // 2] += 1
    x[rng.random(x.shape) < 0.03] = np.nan
    x[3] = 4.0
    return x


@pytest.mark.parametrize("test", UNPAIRED + PAIRED)
def test_bit_identical_across_chunks_budgets_and_batches(test):
    x = cohort_like()
    case, control = np.arange(0, 20, 2), np.arange(1, 20, 2)
    kw = {"test": test, "case": case, "control": control, "permutations": 600, "seed": SEED,
          "name": "bcr_vs_neg"}
    results = []
    for chunks, budget in ((40, pm.DEFAULT_MEMORY_BUDGET), (7, 20_000), (13, 60_000),
                           (40, 200_000)):
        cols = pm.permutation_columns(da.from_array(x, chunks=(chunks, -1)),
                                      memory_budget=budget, **kw)
        results.append({k: v.compute(scheduler="sync") for k, v in cols.items()})
    for other in results[1:]:
        for k in pm.COLUMNS:
            np.testing.assert_array_equal(other[k], results[0][k])
    # the numpy path, with the key the wrapper derives from the name
    ref = pm.permutation_test(x, test=test, case=case, control=control, permutations=600,
                              seed=SEED, key=analysis_key("bcr_vs_neg", "permutation"))
    for k in pm.COLUMNS:
        np.testing.assert_array_equal(results[0][k], ref[k])
    assert results[0]["n_permutations"].dtype == np.int64


@pytest.mark.parametrize("test", UNPAIRED + PAIRED)
def test_permutation_j_does_not_depend_on_count(test):
    """The per-permutation maxima of the first 300 permutations are the same bits whether 300
    or 600 are drawn, and whatever the budget; the draws themselves too."""
    x = cohort_like().astype(np.float64)
    case, control = np.arange(10), np.arange(10, 20)
    short = pm.permutation_chunk(x, test=test, case=case, control=control, permutations=300,
                                 seed=SEED, key=KEY, memory_budget=5000)[1]
    long = pm.permutation_chunk(x, test=test, case=case, control=control, permutations=600,
                                seed=SEED, key=KEY)[1]
    np.testing.assert_array_equal(short, long[:300])
    if test in PAIRED:
        a = pm.sign_flips(10, 300, seed=SEED, key=KEY, block=1)
        b = pm.sign_flips(10, 600, seed=SEED, key=KEY, block=1)
        np.testing.assert_array_equal(a, b[:, :a.shape[1]])
        assert set(np.unique(b)) == {-1.0, 1.0}
        other = pm.sign_flips(10, 600, seed=SEED + 1, key=KEY, block=1)
        assert not np.array_equal(b, other)


def test_gene_alone_or_with_others_same_bits():
    x = cohort_like().astype(np.float64)
    for test in UNPAIRED + PAIRED:
        full = run(x, test, 10, 10, permutations=300)
        part = run(x[11:17], test, 10, 10, permutations=300, memory_budget=2000)
        np.testing.assert_array_equal(part["statistic"], full["statistic"][11:17])
        np.testing.assert_array_equal(part["p_perm"], full["p_perm"][11:17])


def test_lazy_build_computes_nothing(no_compute):
    x = da.from_array(cohort_like(), chunks=(10, -1))
    with no_compute():
        cols = pm.permutation_columns(x, test="welch", case=np.arange(10),
                                      control=np.arange(10, 20), permutations=100, seed=1,
                                      name="a")
    assert set(cols) == set(pm.COLUMNS)
    for v in cols.values():
        assert isinstance(v, da.Array) and v.shape == (40,) and v.chunks == x.chunks[:1]
    assert cols["p_maxT"].compute().shape == (40,)


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("test,design", [("welch", (10, 14)), ("student", (8, 8)),
                                          ("mann_whitney", (40, 40)), ("paired_t", (14, 14)),
                                          ("wilcoxon_signed_rank", (40, 40))])
def test_null_p_values_are_uniform(test, design):
    """Under the null (independent normal genes) P(p_perm <= k/(B+1)) ~ k/(B+1): the
    Kolmogorov-Smirnov distance to the uniform stays below its 0.1% critical value
    1.95/sqrt(genes), plus the 1/(B+1) grid of the p-values, plus for the rank tests the
    largest atom of |U - n1 n2/2| (|V - m(m+1)/4|) under the null, 2/(sqrt(2 pi) sd), which
    makes their p-values discrete (valid, not exactly uniform)."""
    n_case, n_control = design
    genes, b = 3000, 499
    x = np.random.default_rng(2024).normal(size=(genes, n_case + n_control))
    p = run(x, test, n_case, n_control, permutations=b)["p_perm"]
    assert np.isfinite(p).all()
    grid = np.arange(1, b + 2) / (b + 1)
    ecdf = np.searchsorted(np.sort(p), grid * (1 + 1e-12), side="right") / genes
    distance = np.abs(ecdf - grid).max()
    tolerance = 1.95 / math.sqrt(genes) + 1 / (b + 1)
    if test == "mann_whitney":
        tolerance += 2 / math.sqrt(2 * math.pi * n_case * n_control * (n_case + n_control + 1)
                                   / 12)
    elif test == "wilcoxon_signed_rank":
        tolerance += 2 / math.sqrt(2 * math.pi * n_case * (n_case + 1) * (2 * n_case + 1) / 24)
    assert distance < tolerance, distance


# --------------------------------------------------------------------------- info and errors


def test_permutation_info():
    assert pm.permutation_info("welch", 2, 5, 10_000) == {
        "permutation_type": "labels", "n_relabellings": math.comb(7, 2), "exact": True,
        "n_permutations": math.comb(7, 2), "p_perm_floor": 1 / math.comb(7, 2),
        "permutation_block": 256}
    info = pm.permutation_info("paired_t", 8, 8, 10_000)
    assert info["permutation_type"] == "sign_flips" and info["n_relabellings"] == 2**8
    assert info["exact"] and info["p_perm_floor"] == 2 / 2**8
    info = pm.permutation_info("mann_whitney", 100, 100, 10_000)
    assert not info["exact"] and info["n_permutations"] == 10_000
    assert info["p_perm_floor"] == 1 / 10_001
    # more relabellings than permutations asked for, or than can be enumerated: random
    assert not pm.permutation_info("welch", 4, 4, 69)["exact"]
    assert pm.permutation_info("welch", 4, 4, 70)["exact"]
    assert not pm.permutation_info("welch", 12, 12, 3_000_000)["exact"]


def test_bad_input():
    x = np.zeros((2, 6))
    with pytest.raises(InputError, match="unknown test"):
        run(x, "t", 3, 3, 10)
    with pytest.raises(InputError, match="permutations must be a positive integer"):
        run(x, "welch", 3, 3, 0)
    with pytest.raises(InputError, match="seed"):
        run(x, "welch", 3, 3, 10, seed=-1)
    with pytest.raises(InputError, match="aligned"):
        pm.permutation_info("paired_t", 3, 2, 10)
    with pytest.raises(InputError, match="not a paired test"):
        pm.permutation_columns(da.zeros((2, 6)), test="welch", case=[0, 1, 2],
                               control=[3, 4, 5], permutations=10, seed=0, name="a",
                               paired=True)


def test_counts_of_huge_designs_stay_writable_attributes():
    """C(50000, 25000) has 15,050 digits: more than JSON text conversion allows by default.
    Counts up to 2^53 stay exact ints; larger ones become scientific-notation text."""
    import json

    big = pm.permutation_info("welch", 25_000, 25_000, 1000)
    assert big["n_relabellings"] == "1.128e+15049" and not big["exact"]
    json.dumps(big)
    assert pm.permutation_info("welch", 30, 30, 1000)["n_relabellings"] == "1.183e+17"
    assert pm.permutation_info("welch", 20, 20, 1000)["n_relabellings"] == math.comb(40, 20)
    assert pm.permutation_info("paired_t", 53, 53, 1000)["n_relabellings"] == 2**53
