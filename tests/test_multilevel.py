"""fgsea's adaptive multilevel p-values against long plain permutation runs and exact counts."""

from __future__ import annotations

import bisect
import math

import numpy as np
import pytest
from scipy import special

from engine.stats import gsea, multilevel as ml

N_GENES, SIZE = 2000, 20


@pytest.fixture(scope="module")
def unbalanced_weights():
    """A ranked list whose statistics lean positive: about 3/4 of random sets score ES >= 0,
    so the sign-conditional normalisation matters (a p without it is 2 bits off for ES < 0)."""
    rng = np.random.default_rng(0)
    return np.abs(np.sort(rng.normal(0.3, 1.0, N_GENES))[::-1])


def spread_set(m: int, top: int, sign: int) -> np.ndarray:
    """m members evenly spread over the top ``top`` genes (the bottom for sign -1), the rest
    evenly over the remaining genes: more members at the top, smaller p."""
    pos = np.concatenate([np.linspace(0, top - 1, m).round(),
                          np.linspace(top, N_GENES - 1, SIZE - m + 2)[1:-1].round()])
    pos = pos.astype(np.int64)
    return np.sort(pos if sign > 0 else N_GENES - 1 - pos)


def plain_p(weights, es, permutations, seed=5):
    """fgsea's permutation p of one ES, its count and the sign denominator d."""
    null = gsea.permutation_null(weights, [SIZE], permutations=permutations, seed=seed,
                                 key=1)[0]
    same = null >= 0 if es >= 0 else null <= 0
    more = (null >= es) if es >= 0 else (null <= es)
    n_more, n_same = int(more.sum()), int(same.sum())
    return (n_more + 1) / (n_same + 1), n_more, (n_same + 1) / (permutations + 1)


def check_against_plain(weights, cases, permutations, seeds=8):
    for m, top, sign in cases:
        pos = spread_set(m, top, sign)
        es = float(gsea.enrichment_scores(pos, weights[pos], N_GENES)[0])
        assert np.sign(es) == sign
        p_plain, n_more, d = plain_p(weights, es, permutations)
        assert n_more >= 5  # the long run resolves this p
        estimates = [ml.multilevel_pvalues(weights, [SIZE], [es], [d], eps=0.0, seed=s, key=7)
                     for s in range(seeds)]
        log2_p = np.log2([p[0] for p, _ in estimates])
        err = np.array([e[0] for _, e in estimates])
        assert np.isfinite(err).all()
        # log2err is fgsea's standard deviation of one estimate's log2 p; the permutation p has
        # its own (fgsea's trigamma formula). Three standard errors of the difference.
        tolerance = 3 * math.sqrt(np.mean(err ** 2) / seeds
                                  + gsea.simple_log2err(n_more, permutations) ** 2)
        assert abs(log2_p.mean() - math.log2(p_plain)) <= tolerance, (m, top, sign)


def test_multilevel_agrees_with_1e5_permutations_near_1e_3(unbalanced_weights):
    check_against_plain(unbalanced_weights, [(9, 200, 1), (9, 200, -1)], 10 ** 5)


@pytest.mark.slow
def test_multilevel_agrees_with_1e6_permutations_near_1e_5(unbalanced_weights):
    check_against_plain(unbalanced_weights, [(11, 200, 1), (9, 100, -1)], 10 ** 6)


def test_multilevel_agrees_with_exact_count_at_the_largest_es():
    # The top 5 genes of 200 hold the largest ES there is (1): its exact p is one set out of
    # C(200, 5), conditional on ES >= 0. The ruler must stop there (fgsea would loop forever).
    n, k = 200, 5
    weights = np.abs(np.sort(np.random.default_rng(1).normal(size=n))[::-1])
    es = float(gsea.enrichment_scores(np.arange(k), weights[:k], n)[0])
    assert es == 1.0
    null = gsea.permutation_null(weights, [k], permutations=10 ** 5, seed=1, key=1)[0]
    d = ((null >= 0).sum() + 1) / (null.size + 1)
    exact = 1 / math.comb(n, k) / (null >= 0).mean()
    estimates = [ml.multilevel_pvalues(weights, [k], [es], [d], eps=0.0, seed=s, key=1)
                 for s in range(4)]
    log2_p = np.log2([p[0] for p, _ in estimates])
    err = np.array([e[0] for _, e in estimates])
    # At the top the ruler's last level stalls, which fgsea's error formula does not model:
    # allow twice its standard error.
    assert abs(log2_p.mean() - math.log2(exact)) <= 6 * math.sqrt(np.mean(err ** 2) / 4)


def test_eps_bounds_the_p_value(unbalanced_weights):
    pos = spread_set(11, 200, 1)
    es = float(gsea.enrichment_scores(pos, unbalanced_weights[pos], N_GENES)[0])
    p, err = ml.multilevel_pvalues(unbalanced_weights, [SIZE], [es], [0.75], eps=1e-3, seed=1,
                                   key=1)
    assert p[0] == 1e-3 and np.isnan(err[0])


def test_reproducible_and_independent_of_the_other_sets(unbalanced_weights):
    w = unbalanced_weights
    a = spread_set(9, 200, 1)
    es_a = float(gsea.enrichment_scores(a, w[a], N_GENES)[0])
    b = spread_set(10, 100, -1)
    es_b = float(gsea.enrichment_scores(b, w[b], N_GENES)[0])
    more = spread_set(11, 200, 1)  # same size as a, more extreme: a longer ruler
    es_more = float(gsea.enrichment_scores(more, w[more], N_GENES)[0])
    alone = ml.multilevel_pvalues(w, [SIZE], [es_a], [0.75], eps=0.0, seed=3, key=4)
    together = ml.multilevel_pvalues(w, [15, SIZE, SIZE], [es_b, es_more, es_a],
                                     [0.25, 0.75, 0.75], eps=0.0, seed=3, key=4)
    assert alone[0][0] == together[0][2] and alone[1][0] == together[1][2]
    other_seed = ml.multilevel_pvalues(w, [SIZE], [es_a], [0.75], eps=0.0, seed=4, key=4)
    assert other_seed[0][0] != alone[0][0]


def fgsea_get_pvalue(scores, corrector, es, sample_size):
    """fgsea's EsRuler::getPvalue (sign = false), transcribed as a plain lookup."""
    half = (sample_size + 1) // 2
    at = len(scores) - 1 if es >= scores[-1] else bisect.bisect_left(list(scores), es)
    k, remainder = at // half, sample_size - at % half

    def beta_mean_log(a, b):
        return special.digamma(a) - special.digamma(b + 1)

    log_p = k * beta_mean_log(half, sample_size) + beta_mean_log(remainder + 1, sample_size)
    condition = beta_mean_log(corrector[at] + 1, remainder)
    return min(1.0, max(0.0, math.exp(log_p + condition))), math.exp(condition) >= 0.5


def test_ruler_lookup_equals_fgsea_get_pvalue():
    sample_size = 7
    half = 4
    rng = np.random.default_rng(2)
    scores = np.sort(rng.random(3 * half))
    corrector = rng.integers(0, sample_size, scores.size)
    corrector[5] = 0  # a conditional sign probability far below 1/2
    es = np.concatenate([scores, rng.random(20), [scores[-1] + 0.1, 0.0]])
    p, trusted = ml.ruler_pvalues(scores, corrector, es, sample_size)
    for i, e in enumerate(es):
        ref_p, ref_trusted = fgsea_get_pvalue(scores, corrector, e, sample_size)
        assert p[i] == pytest.approx(ref_p, rel=1e-12) and trusted[i] == ref_trusted
    assert not trusted.all()


def test_multilevel_error_is_fgseas():
    # fgsea multilevelError(pval, sampleSize), written out with scipy's polygamma.
    for p, s in [(1e-10, 1001), (0.003, 101), (0.5, 11)]:
        expected = math.sqrt(math.floor(-math.log2(p) + 1) * (
            special.polygamma(1, (s + 1) / 2) - special.polygamma(1, s + 1))) / math.log(2)
        assert ml.multilevel_error(p, s) == pytest.approx(expected, rel=1e-12)


def test_gsea_preranked_switches_to_multilevel_at_the_floor():
    rng = np.random.default_rng(6)
    statistic = rng.normal(size=1000)
    order = np.argsort(-statistic)
    members = [np.concatenate([order[:40:3], order[200::80]]),  # up, p about 1e-10
               np.concatenate([order[-40::3], order[:-200:80]]),  # down, p about 1e-8
               rng.choice(1000, 25, replace=False)]
    result = gsea.gsea_preranked(statistic, members, permutations=500, seed=1, key=1)
    plain = gsea.gsea_preranked(statistic, members, permutations=500, seed=1, key=1,
                                multilevel=False)
    assert result["multilevel"][:2].all() and not result["multilevel"][2]
    floor = 1 / (plain["n_same_sign"][:2] + 1)
    np.testing.assert_array_equal(plain["p_value"][:2], floor)
    assert (result["p_value"][:2] < floor).all() and np.isfinite(result["log2err"][:2]).all()
    assert np.isnan(result["p_floor"][:2]).all()
    assert result["p_value"][2] == plain["p_value"][2]
    for name in ("es", "nes", "fdr_q"):
        np.testing.assert_array_equal(result[name], plain[name])


def test_sample_size_rule():
    assert ml.check_sample_size(100) == 101 and ml.check_sample_size(3) == 3
    with pytest.raises(Exception, match="sample_size"):
        ml.check_sample_size(2)
