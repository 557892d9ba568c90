"""Phenotype-permutation GSEA: ranking metrics against plain per-gene references (GSEA desktop's
definitions written out loop by loop), label permutations, exact enumeration of relabellings
against a plain running-sum reference, bit-identity across chunkings/batches/schedulers, and
GSEApy's ES on the Broad Leukemia example (optional)."""

from __future__ import annotations

import math
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from engine.errors import InputError
from engine.stats import gsea
from engine.stats import phenotype as ph

LEUKEMIA = Path("/work/shared/data/leukemia_gsea")
HALLMARK = Path("/work/shared/data/genesets/h.all.v7.0.symbols.gmt")


# --------------------------------------------------------------------------- plain references

def ref_sigma(values: np.ndarray) -> float:
    """GSEA desktop ``Vector.stddevUnBiasedFixLow``: sd with n - 1 (0 for one value), at least
    0.2 |mean|, and at least 0.2 when the mean is 0."""
    sd = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    floor = 0.2 * abs(float(values.mean()))
    return max(sd, 0.2 if floor == 0 else floor)


def ref_metric(values: np.ndarray, case: np.ndarray, metric: str) -> float:
    a, b = values[case].astype(np.float64), values[~case].astype(np.float64)
    if metric == "diff_of_classes":
        return a.mean() - b.mean()
    if metric == "ratio_of_classes":
        return a.mean() / b.mean()
    if metric == "log2_ratio_of_classes":
        return math.log2(a.mean() / b.mean())
    if metric == "signal_to_noise":
        return (a.mean() - b.mean()) / (ref_sigma(a) + ref_sigma(b))
    return (a.mean() - b.mean()) / math.sqrt(ref_sigma(a) ** 2 / a.size
                                             + ref_sigma(b) ** 2 / b.size)


def ref_metrics(x: np.ndarray, labels: np.ndarray, metric: str) -> np.ndarray:
    out = np.empty((x.shape[0], labels.shape[1]))
    for g in range(x.shape[0]):
        for p in range(labels.shape[1]):
            out[g, p] = ref_metric(x[g], labels[:, p] == 1, metric)
    return out


def ref_es(metric: np.ndarray, members, weight: float = 1.0):
    """Walk the ranked list (decreasing metric, ties by row) one gene at a time: the signed
    maximum deviation of the running sum, and the leading edge (rows)."""
    order = np.argsort(-metric, kind="stable")
    hit = np.isin(order, members)
    w = np.abs(metric[order]) ** weight
    norm, miss = w[hit].sum(), 1.0 / (order.size - hit.sum())
    running, best, at = 0.0, 0.0, -1
    for i in range(order.size):
        running += w[i] / norm if hit[i] else -miss
        if abs(running) > abs(best):
            best, at = running, i
    if best >= 0:
        leading = order[: at + 1][hit[: at + 1]]
    else:
        leading = order[at + 1:][hit[at + 1:]][::-1]
    return best, leading


def gsea_p(es: float, null: np.ndarray) -> float:
    """Exact permutation p over a null that contains the observed labelling."""
    if es >= 0:
        return (null >= es).sum() / (null >= 0).sum()
    return (null <= es).sum() / (null <= 0).sum()


def gsea_nes(es: float, null: np.ndarray) -> float:
    side = null[null >= 0] if es >= 0 else null[null <= 0]
    return es / abs(side.mean())


def special_genes(rng, n_case: int, n: int) -> np.ndarray:
    """Rows that exercise the minimum-sigma rule: a constant gene, a gene of zeros, a case
    group of zeros, a constant case group, a zero-mean case group, a low-CV gene, tiny sd."""
    rows = [np.full(n, 7.25), np.zeros(n)]
    z = rng.normal(3, 1, n)
    z[:n_case] = 0.0
    rows.append(z)
    c = rng.normal(3, 1, n)
    c[:n_case] = 5.5
    rows.append(c)
    m = rng.normal(0, 0.05, n)
    m[:n_case] = np.resize([-0.125, 0.125], n_case) if n_case % 2 == 0 else 0.0
    rows.append(m)
    rows.append(rng.normal(1000, 1, n))
    rows.append(8 + rng.normal(0, 1e-4, n))
    rows.append(np.resize([1e-30, -1e-30], n) * (np.arange(n) < 2 * (n // 2)))  # mean 0, tiny
    return np.array(rows, dtype=np.float32)


# --------------------------------------------------------------------------- metrics

@pytest.mark.parametrize("metric", ph.METRICS)
def test_ranking_metrics_match_the_plain_reference(metric):
    rng = np.random.default_rng(11)
    n, n_case = 9, 4
    x = rng.normal(5, 2, (30, n)).astype(np.float32)
    x = np.vstack([x, special_genes(rng, n_case, n)])
    if metric in ph._RATIO_METRICS:
        x = np.exp(rng.normal(2, 1, (30, n))).astype(np.float32)
        x = np.vstack([x, np.full((1, n), 3.5, np.float32)])
    labels = np.zeros((n, 12))
    labels[:n_case, 0] = 1
    for j in range(1, 12):  # random labellings, group sizes 1..n-1 including n_A = 1 and 2
        labels[rng.choice(n, 1 + j % (n - 1), replace=False), j] = 1
    got = ph.ranking_metrics(x, labels, metric)
    want = ref_metrics(x, labels, metric)
    # exact group sums: only the last roundings differ from the two-pass reference
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_signal_to_noise_minimum_sigma_rule_cases():
    """The rule's branches, by hand: GSEA desktop sigma = max(sd, 0.2 |mu|), 0.2 when mu = 0."""
    x = np.array([[0, 0, 0, 1, 2, 3],           # case zeros: sigma_A = 0.2, sigma_B = 1
                  [5, 5, 5, 1, 2, 3],           # constant case: sigma_A = 0.2 * 5 = 1
                  [10, 10.1, 9.9, 1, 2, 3],     # sd 0.1 < 0.2 * 10 = 2
                  [-1, 1, 0, 1, 2, 3]],         # mean 0, sd 1 > 0.2
                 dtype=np.float32)
    case = np.array([1, 1, 1, 0, 0, 0], float)[:, None]
    got = ph.ranking_metrics(x, case, "signal_to_noise")[:, 0]
    mean_b = 2.0
    want = [(0 - mean_b) / (0.2 + 1), (5 - mean_b) / (1 + 1), (10 - mean_b) / (2 + 1),
            (0 - mean_b) / (1 + 1)]
    np.testing.assert_allclose(got, want, rtol=1e-6)  # row 3 is float32 data: 10.1f, 9.9f


def test_t_test_metric_is_welch_t_where_the_sigma_floor_does_not_bind():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (50, 12))
    case = np.zeros(12, bool)
    case[:5] = True
    got = ph.ranking_metrics(x, case[:, None].astype(float), "t_test")[:, 0]
    welch = stats.ttest_ind(x[:, case], x[:, ~case], axis=1, equal_var=False).statistic
    free = np.array([np.std(r[case], ddof=1) > 0.2 * abs(r[case].mean())
                     and np.std(r[~case], ddof=1) > 0.2 * abs(r[~case].mean()) for r in x])
    assert free.sum() > 20
    np.testing.assert_allclose(got[free], welch[free], rtol=1e-10)


@settings(max_examples=60)
@given(data=st.data(), n=st.integers(4, 9), integer=st.booleans())
def test_ranking_metrics_property(data, n, integer):
    """Count-like integers (ties, constant groups, zero groups) and float32 values. Values
    below the grid (about 1e-13 of the gene's spread) count as 0 by design (see
    test_values_below_the_grid_count_as_zero), so the floats are 0 or at least 1e-3."""
    values = st.integers(0, 6).map(float) if integer else st.one_of(
        st.just(0.0), st.floats(-50, 50, width=32).filter(lambda v: abs(v) >= 1e-3))
    x = np.array(data.draw(st.lists(st.lists(values, min_size=n, max_size=n), min_size=1,
                                    max_size=6)), dtype=np.float32)
    n_case = data.draw(st.integers(1, n - 1))
    labels = np.zeros((n, 3))
    for j in range(3):
        labels[np.random.default_rng(j).choice(n, n_case, replace=False), j] = 1
    for metric in ("signal_to_noise", "t_test", "diff_of_classes"):
        np.testing.assert_allclose(ph.ranking_metrics(x, labels, metric),
                                   ref_metrics(x, labels, metric), rtol=1e-9, atol=1e-9)


def test_values_below_the_grid_count_as_zero():
    """A documented limit of the exact sums: a case group of values ~1e-38 next to values ~1
    is a group of zeros (mean exactly 0, so sigma 0.2), where GSEA's double arithmetic would
    see mean 6e-39 and sigma ~8e-39."""
    x = np.array([[0.0, 1.2e-38, 1.0, 1.5]], dtype=np.float32)
    case = np.array([1, 1, 0, 0], float)[:, None]
    got = ph.ranking_metrics(x, case, "signal_to_noise")[0, 0]
    sd_b = ref_sigma(np.array([1.0, 1.5]))
    assert got == pytest.approx((0 - 1.25) / (0.2 + sd_b), rel=1e-12)


def test_metrics_are_bit_identical_for_any_gene_blocking(monkeypatch):
    rng = np.random.default_rng(5)
    x = np.vstack([rng.normal(8, 2, (57, 20)).astype(np.float32), special_genes(rng, 10, 20)])
    labels = ph._labels(np.arange(20) < 10, 0, 40, seed=1, key=2, exhaustive=False)
    for metric in ph.METRICS:
        xm = np.abs(x) + 1 if metric in ph._RATIO_METRICS else x
        whole = ph.ranking_metrics(xm, labels, metric)
        pieces = np.vstack([ph.ranking_metrics(xm[a:b], labels, metric)
                            for a, b in [(0, 1), (1, 8), (8, 40), (40, xm.shape[0])]])
        columns = np.hstack([ph.ranking_metrics(xm, labels[:, a:b], metric)
                             for a, b in [(0, 1), (1, 13), (13, 40)]])
        assert np.array_equal(whole, pieces, equal_nan=True)
        assert np.array_equal(whole, columns, equal_nan=True)
        assert np.array_equal(whole, ph.ranking_metrics(xm.astype(np.float64), labels, metric),
                              equal_nan=True)
    monkeypatch.setattr(ph, "_TILE_ELEMENTS", 1)  # one gene per tile
    assert np.array_equal(whole, ph.ranking_metrics(xm, labels, metric), equal_nan=True)


def test_missing_and_non_positive_values_give_nan_rows():
    x = np.array([[1, 2, np.nan, 4], [1, 2, 3, 4], [0, 2, 3, 4]], dtype=np.float32)
    labels = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], float).T
    s2n = ph.ranking_metrics(x, labels, "signal_to_noise")
    assert np.isnan(s2n[0]).all() and np.isfinite(s2n[1:, :2]).all()
    assert np.isnan(s2n[:, 2]).all()  # an empty case group
    ratio = ph.ranking_metrics(x, labels, "ratio_of_classes")
    assert np.isnan(ratio[[0, 2]]).all() and np.isfinite(ratio[1, :2]).all()
    with pytest.raises(InputError, match="only 0"):
        ph.ranking_metrics(x, labels * 2, "signal_to_noise")
    with pytest.raises(InputError, match="unknown ranking metric"):
        ph.ranking_metrics(x, labels, "snr")


# --------------------------------------------------------------------------- permutations

def test_label_permutations_preserve_groups_and_do_not_depend_on_blocking():
    is_case = np.arange(15) % 3 == 0
    block = ph.PERMUTATION_BLOCK
    full = np.hstack([ph.label_permutations(is_case, 2 * block + 7, seed=4, key=9, block=b)
                      for b in range(3)])
    assert full.shape == (15, 2 * block + 7)
    assert (full.sum(axis=0) == is_case.sum()).all()
    assert set(np.unique(full)) == {0.0, 1.0}
    # permutation j is the same whatever the total count and however it is batched
    short = ph.label_permutations(is_case, block + 3, seed=4, key=9, block=1)
    assert np.array_equal(short, full[:, block:block + 3])
    for start, stop in [(0, 1), (5, block + 20), (block - 1, 2 * block + 7)]:
        got = ph._labels(is_case, start, stop, seed=4, key=9, exhaustive=False)
        assert np.array_equal(got, full[:, start:stop])
    other = ph.label_permutations(is_case, block, seed=4, key=10, block=0)
    assert not np.array_equal(other, full[:, :block])
    # draws look uniform: each sample is a case in about 1/3 of the permutations
    many = np.hstack([ph.label_permutations(is_case, 20 * block, seed=1, key=1, block=b)
                      for b in range(20)])
    assert np.abs(many.mean(axis=1) - 1 / 3).max() < 0.04
    with pytest.raises(InputError, match="outside"):
        ph.label_permutations(is_case, block, seed=4, key=9, block=1)
    with pytest.raises(InputError, match="non-negative"):
        ph.label_permutations(is_case, 10, seed=-1, key=9, block=0)
    with pytest.raises(InputError, match="both groups"):
        ph.label_permutations(np.ones(5, bool), 10, seed=1, key=9, block=0)


def test_ranked_order_breaks_ties_by_column_whatever_the_sort():
    rng = np.random.default_rng(0)
    keys = rng.integers(-3, 3, (50, 200)).astype(np.float64)
    keys[::7] = rng.normal(size=(8, 200))  # some rows without ties
    keys[1, :5] = -0.0
    order, sorted_keys = ph._ranked_order(keys.copy())
    assert np.array_equal(order, np.argsort(keys, axis=1, kind="stable"))
    assert np.array_equal(sorted_keys, np.sort(keys, axis=1))


def test_relabellings_enumerate_every_split_once():
    is_case = np.array([1, 0, 1, 0, 1, 0, 1, 0], bool)
    every = ph.relabellings(is_case)
    assert every.shape == (8, 70)
    assert (every.sum(axis=0) == 4).all()
    assert len({tuple(c) for c in every.T}) == 70
    others = ph._labels(is_case, 0, 69, seed=0, key=0, exhaustive=True)
    assert others.shape == (8, 69) and not (others == is_case[:, None]).all(axis=0).any()


# --------------------------------------------------------------------------- GSEA

def tiny_case(seed=2, n_genes=40):
    rng = np.random.default_rng(seed)
    is_case = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    x = rng.normal(6, 1, (n_genes, 8)).astype(np.float32)
    x[:8, :4] += 1.5      # set 0 up in the cases
    x[30:36, 4:] += 1.0   # set 1 up in the controls
    members = [np.arange(8), np.arange(28, 38), rng.choice(n_genes, 5, replace=False),
               np.array([17])]
    return x, is_case, members


@pytest.mark.parametrize("metric", ["signal_to_noise", "t_test", "diff_of_classes"])
def test_exact_enumeration_matches_the_plain_reference(metric):
    """4 vs 4 samples: C(8, 4) = 70 relabellings enumerated; ES, NES and the exact
    permutation p from a plain walk over every relabelling."""
    x, is_case, members = tiny_case()
    result = ph.gsea_phenotype(x, is_case, members, metric=metric, permutations=1000, seed=1,
                               key=3, return_null=True)
    assert result["exhaustive"] and result["n_relabellings"] == 70
    assert result["permutations"] == 69
    assert (result["log2err"] == 0).all() and (result["n_permutations"] == 69).all()
    every = ph.relabellings(is_case)
    observed = (every == is_case[:, None]).all(axis=0)
    metrics = ref_metrics(x, every, metric)
    for s, m in enumerate(members):
        scores = np.array([ref_es(metrics[:, j], m)[0] for j in range(70)])
        es, leading = ref_es(metrics[:, observed][:, 0], m)
        null = scores[~observed]
        assert result["es"][s] == pytest.approx(es, abs=1e-12)
        np.testing.assert_allclose(result["null"][s], null, atol=1e-12)
        assert result["p_value"][s] == pytest.approx(gsea_p(es, scores), rel=1e-12)
        assert result["nes"][s] == pytest.approx(gsea_nes(es, null), rel=1e-9)
        assert np.array_equal(result["leading_edge"][s], leading)
        assert result["size"][s] == m.size
    assert result["p_value"][0] < 0.05 and result["es"][1] < 0


def test_random_permutation_null_matches_the_plain_reference():
    """Includes ties in every permutation: a member duplicating a non-member, two constant
    genes (metric 0), so the tie order (row order) matters."""
    x, is_case, members = tiny_case(seed=4, n_genes=60)
    x = np.hstack([x, x[:, :4] + 0.3])
    x[40] = x[30]
    x[45], x[46] = 2.0, 3.0
    members = members + [np.array([46, 50, 55])]
    is_case = np.concatenate([is_case, [True, False, True, False]])
    n_perm = ph.PERMUTATION_BLOCK + 5
    result = ph.gsea_phenotype(x, is_case, members, permutations=n_perm, seed=8, key=1,
                               return_null=True)
    assert not result["exhaustive"] and result["n_relabellings"] == math.comb(12, 6)
    for j in (0, 7, ph.PERMUTATION_BLOCK + 4):
        labels = ph.label_permutations(is_case, n_perm, seed=8, key=1,
                                       block=j // ph.PERMUTATION_BLOCK)
        col = labels[:, j % ph.PERMUTATION_BLOCK]
        metric = np.array([ref_metric(r, col == 1, "signal_to_noise") for r in x])
        want = [ref_es(metric, m)[0] for m in members]
        np.testing.assert_allclose(result["null"][:, j], want, atol=1e-12)


def test_weight_zero_and_weight_two():
    x, is_case, members = tiny_case()
    for weight in (0.0, 2.0):
        result = ph.gsea_phenotype(x, is_case, members, permutations=10, seed=1, key=3,
                                   weight=weight, exhaustive=False)
        metric = np.array([ref_metric(r, is_case, "signal_to_noise") for r in x])
        for s, m in enumerate(members):
            assert result["es"][s] == pytest.approx(ref_es(metric, m, weight)[0], abs=1e-12)


def test_p_floor_and_statistics_fields():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (200, 20)).astype(np.float32)
    is_case = np.arange(20) < 10
    x[:15, :10] += 3
    result = ph.gsea_phenotype(x, is_case, [np.arange(15), np.arange(50, 80)],
                               permutations=50, seed=1, key=1)
    assert result["n_more_extreme"][0] == 0
    assert result["p_floor"][0] == result["p_value"][0] == 1 / (result["n_same_sign"][0] + 1)
    assert np.array_equal(np.isfinite(result["p_floor"]), result["n_more_extreme"] == 0)
    assert result["n_more_extreme"][1] > 0
    assert set(result) >= {"size", "es", "nes", "p_value", "p_adj", "fdr_q", "p_floor",
                           "log2err", "n_permutations", "leading_edge", "permutations",
                           "n_relabellings", "n_genes"}
    assert (result["n_permutations"] == 50).all()
    np.testing.assert_allclose(result["log2err"], gsea.simple_log2err(result["n_more_extreme"],
                                                                      50))
    np.testing.assert_allclose(result["p_adj"],
                               stats.false_discovery_control(result["p_value"]), rtol=1e-12)


def test_genes_without_a_metric_are_left_out_of_the_ranking():
    x, is_case, members = tiny_case(n_genes=40)
    x = np.vstack([x[:20], np.full((1, 8), np.nan, np.float32), x[20:]])
    shifted = [np.where(m >= 20, m + 1, m) for m in members]
    shifted[2] = np.append(shifted[2], 20)  # the NaN gene as a member: not counted
    a = ph.gsea_phenotype(x, is_case, shifted, permutations=30, seed=3, key=5, exhaustive=False,
                          return_null=True)
    b = ph.gsea_phenotype(np.delete(x, 20, axis=0), is_case, members, permutations=30, seed=3,
                          key=5, exhaustive=False, return_null=True)
    assert a["n_genes"] == 40 and a["size"][2] == members[2].size
    for field in ("es", "nes", "p_value", "null", "size"):
        assert np.array_equal(a[field], b[field], equal_nan=True)


def test_degenerate_sets():
    x, is_case, _ = tiny_case(n_genes=12)
    members = [np.array([], dtype=np.int64), np.array([3]), np.arange(12), np.array([5, 5, 6])]
    result = ph.gsea_phenotype(x, is_case, members, permutations=20, seed=1, key=1,
                               exhaustive=False)
    assert list(result["size"]) == [0, 1, 12, 2]
    assert np.isnan(result["es"][[0, 2]]).all() and np.isnan(result["p_value"][[0, 2]]).all()
    assert np.isfinite(result["es"][[1, 3]]).all()
    assert result["leading_edge"][0].size == 0
    with pytest.raises(InputError, match="0..11"):
        ph.gsea_phenotype(x, is_case, [np.array([12])], permutations=5, seed=1, key=1)
    with pytest.raises(InputError, match="both groups"):
        ph.gsea_phenotype(x, np.zeros(8, bool), members, permutations=5, seed=1, key=1)
    with pytest.raises(InputError, match="samples"):
        ph.gsea_phenotype(x[:, :7], is_case, members, permutations=5, seed=1, key=1)


# --------------------------------------------------------------------------- dask, determinism

def medium_case():
    rng = np.random.default_rng(9)
    x = rng.normal(7, 1, (300, 16)).astype(np.float32)
    x[5] = x[6]          # duplicate rows: tied metrics in every permutation
    x[7] = 3.0           # a constant gene
    is_case = np.arange(16) % 2 == 0
    x[:20, is_case] += 0.8
    members = [np.arange(20), rng.choice(300, 40, replace=False), np.array([5, 6, 7, 100])]
    return x, is_case, members


def _computed(result):
    return {k: (v.compute() if isinstance(v, da.Array) else v) for k, v in result.items()}


def _assert_identical(a, b):
    for field in ("size", "es", "nes", "p_value", "fdr_q", "p_floor", "null", "n_genes"):
        assert np.array_equal(a[field], b[field], equal_nan=True), field
    assert all(np.array_equal(u, v) for u, v in zip(a["leading_edge"], b["leading_edge"]))


def test_dask_is_lazy_and_bit_identical_to_numpy_for_any_chunking(no_compute):
    x, is_case, members = medium_case()
    kw = dict(permutations=ph.PERMUTATION_BLOCK + 30, seed=12, key=34, return_null=True)
    reference = ph.gsea_phenotype(x, is_case, members, **kw)
    for chunk, block_size in [(7, 100), (64, None), (300, 1000)]:
        with no_compute():
            lazy = ph.gsea_phenotype(da.from_array(x, chunks=(chunk, 16)), is_case, members,
                                     block_size=block_size, **kw)
        assert isinstance(lazy["es"], da.Array)
        _assert_identical(reference, _computed(lazy))
    small_budget = ph.gsea_phenotype(x, is_case, members, memory_budget=300 * 48 * 9, **kw)
    _assert_identical(reference, small_budget)


@pytest.mark.slow
def test_two_processes_give_the_same_result():
    x, is_case, members = medium_case()
    lazy = ph.gsea_phenotype(da.from_array(x, chunks=(50, 16)), is_case, members,
                             permutations=100, seed=5, key=6, block_size=40, return_null=True)
    names = [k for k, v in lazy.items() if isinstance(v, da.Array)]
    single = dict(zip(names, dask.compute(*[lazy[k] for k in names], scheduler="sync")))
    multi = dict(zip(names, dask.compute(*[lazy[k] for k in names], scheduler="processes",
                                         num_workers=2)))
    _assert_identical(single, multi)


# --------------------------------------------------------------------------- GSEApy

def _leukemia():
    pd = pytest.importorskip("pandas")
    if not LEUKEMIA.exists() or not HALLMARK.exists():
        pytest.skip("Broad Leukemia example or Hallmark GMT not available")
    gct = pd.read_csv(LEUKEMIA / "Leukemia_hgu95av2.gct", sep="\t", skiprows=2, index_col=0)
    gct = gct.drop(columns="Description")
    labels = (LEUKEMIA / "Leukemia.cls").read_text().splitlines()[2].split()
    chip = pd.read_csv(LEUKEMIA / "Human_AFFY_HG_U95_MSigDB_7_0_final.chip", sep="\t")
    probes_of = chip.groupby("Gene Symbol")["Probe Set ID"].apply(set)
    present = set(gct.index)
    sets = {}
    for line in HALLMARK.read_text().splitlines():
        name, _, *genes = line.split("\t")
        sets[name] = sorted(set().union(*[probes_of.get(g, set()) for g in genes]) & present)
    return gct, labels, sets


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["signal_to_noise", "diff_of_classes", "t_test"])
def test_es_equals_gseapy_on_the_leukemia_example(metric):
    """GSEApy 1.x ``gsea(permutation_type="phenotype")`` on ALL vs AML with the Hallmark sets
    mapped to probes through the MSigDB chip file. GSEApy filters and shifts the matrix (+1e-8)
    first; we rank its matrix. Signal-to-noise and difference of means: the metrics and the ES
    agree (the 71 tied differences of means do not touch a set's ES here; GSEApy orders ties
    last row first, we first row first). GSEApy's t test has no minimum-sigma rule (GSEA
    desktop's has): the metrics agree where the rule does not bind, and the ES differ (up to
    0.008), so only the metric is compared. GSEApy's p-values come from its own random labels
    and cannot be compared."""
    gseapy = pytest.importorskip("gseapy")
    gct, labels, sets = _leukemia()
    gs = gseapy.GSEA(data=gct, gene_sets=sets, classes=labels, permutation_num=10,
                     method=metric, min_size=1, max_size=100000, seed=1, threads=1,
                     outdir=None, no_plot=True)
    gs.run()
    data, _ = gs.load_data()
    values = data.to_numpy()
    is_case = np.array([g == gs.pheno_pos for g in gs.groups])
    row = {g: i for i, g in enumerate(data.index)}
    metric_values = ph.ranking_metrics(values, is_case[:, None].astype(float), metric)[:, 0]
    rows = np.array([row[g] for g in gs.ranking.index])
    theirs = gs.ranking.to_numpy()
    if metric == "t_test":
        free = np.ones(values.shape[0], bool)
        for side in (is_case, ~is_case):
            free &= values[:, side].std(axis=1, ddof=1) > 0.2 * np.abs(values[:, side].mean(1))
        assert free.sum() > 5000 and (~free).sum() > 100
        keep = free[rows]
        np.testing.assert_allclose(metric_values[rows[keep]], theirs[keep], rtol=1e-9)
        assert np.abs(metric_values[rows[~keep]] - theirs[~keep]).max() > 0.1
        return
    np.testing.assert_allclose(metric_values[rows], theirs, rtol=1e-9, atol=1e-12)
    names = list(sets)
    members = [np.array([row[p] for p in sets[n]], dtype=np.int64) for n in names]
    ours = ph.gsea_phenotype(values, is_case, members, metric=metric, permutations=10, seed=1,
                             key=1)
    gseapy_es = gs.res2d.set_index("Term").loc[names, "ES"].astype(float).to_numpy()
    np.testing.assert_allclose(ours["es"], gseapy_es, rtol=1e-9, atol=1e-12)


def test_label_permutations_are_the_rows_of_one_permuted_index_matrix():
    """The contract of the draws: block b's permutations are the first rows of
    ``rng.permuted(tile(arange(n), (PERMUTATION_BLOCK, 1)), axis=1)`` of its generator
    (drawn row by row, so the unused rows and the index matrix are never made)."""
    from engine.resample.rng import block_rng

    is_case = np.r_[np.ones(7, bool), np.zeros(12, bool)]
    for n_permutations, block in ((ph.PERMUTATION_BLOCK + 40, 1), (3 * ph.PERMUTATION_BLOCK, 2)):
        rng = block_rng(5, 3, block)
        order = rng.permuted(np.tile(np.arange(19), (ph.PERMUTATION_BLOCK, 1)), axis=1)
        width = min(ph.PERMUTATION_BLOCK, n_permutations - block * ph.PERMUTATION_BLOCK)
        expected = is_case[order[:width]].T.astype(np.float64)
        got = ph.label_permutations(is_case, n_permutations, seed=5, key=3, block=block)
        np.testing.assert_array_equal(got, expected)
