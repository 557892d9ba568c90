"""Preranked GSEA: ES against a walk over every gene, permutation p against exact enumeration,
NES / p / FDR against a literal transcription of the GSEA and fgsea definitions, determinism,
edge cases, and GSEApy (when installed)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from engine.errors import InputError
from engine.stats import gsea


# --------------------------------------------------------------------------- references

def walk_es(ranked_stat: np.ndarray, member: np.ndarray, p: float) -> tuple[float, int]:
    """ES by the running sum of Subramanian et al. 2005 over every gene of the ranked list.

    P_hit(i) = sum over members j <= i of |r_j|^p / N_R, P_miss(i) = #non-members j <= i /
    (N - N_H); ES is the value of P_hit - P_miss farthest from 0, the first one reached on a
    tie (GSEA desktop keeps the running best with a strict >). N_R = 0 means equal weights
    (fgsea). The hit term is accumulated as cumsum(w) / N_R, the same arithmetic as the closed
    form, so exact ties between the two extremes are decided on identical numbers.
    Returns (ES, list position where it is reached).
    """
    n = ranked_stat.size
    k = int(member.sum())
    w = np.where(member, np.abs(ranked_stat) ** p, 0.0)
    n_r = w.sum()
    if n_r == 0:
        w = member.astype(np.float64)
        n_r = float(k)
    hit = np.cumsum(w)
    miss = np.cumsum(~member)
    best, where = 0.0, -1
    for i in range(n):
        value = hit[i] / n_r - miss[i] / (n - k)
        if abs(value) > abs(best):
            best, where = value, i
    return best, where


def reference_statistics(es: np.ndarray, null: np.ndarray) -> dict[str, np.ndarray]:
    """NES, p and FDR q written out from their definitions, one set and one permutation at a
    time: NES = ES / |mean same-sign null| (GSEA meandiv, fgsea), p = (#null at least as
    extreme + 1) / (#null of the sign + 1) (fgsea), q as GSEA desktop's SkewCorrectedFdrStruc
    (mean over permutations of the per-permutation fraction of null NES beyond NES*, over the
    fraction of observed NES beyond it, capped at 1)."""
    n_sets, n_perm = null.shape
    nes = np.full(n_sets, np.nan)
    p = np.full(n_sets, np.nan)
    null_nes = np.full(null.shape, np.nan)
    for i in range(n_sets):
        pos = [v for v in null[i] if v >= 0]
        neg = [v for v in null[i] if v <= 0]
        mean_pos = sum(pos) / len(pos) if pos else math.nan
        mean_neg = abs(sum(neg) / len(neg)) if neg else math.nan
        for c in range(n_perm):
            v = null[i, c]
            null_nes[i, c] = v / mean_pos if v >= 0 else v / mean_neg
        if math.isnan(es[i]):
            continue
        if es[i] >= 0:
            if not mean_pos > 0:
                continue
            nes[i] = es[i] / mean_pos
            p[i] = (sum(v >= es[i] for v in pos) + 1) / (len(pos) + 1)
        else:
            if not mean_neg > 0:
                continue
            nes[i] = es[i] / mean_neg
            p[i] = (sum(v <= es[i] for v in neg) + 1) / (len(neg) + 1)
    scored = [i for i in range(n_sets) if not math.isnan(p[i])]
    q = np.full(n_sets, np.nan)
    for i in scored:
        positive = es[i] >= 0
        fractions = []
        for c in range(n_perm):
            column = [null_nes[j, c] for j in scored]
            side = [v for v in column if (v >= 0 if positive else v <= 0)]
            if not side:
                continue
            beyond = [v for v in side if (v >= nes[i] if positive else v <= nes[i])]
            fractions.append(len(beyond) / len(side))
        observed = [nes[j] for j in scored if (es[j] >= 0) == positive]
        beyond_obs = [v for v in observed if (v >= nes[i] if positive else v <= nes[i])]
        q[i] = min(1.0, (sum(fractions) / len(fractions)) / (len(beyond_obs) / len(observed)))
    return {"nes": nes, "p_value": p, "fdr_q": q}


def exact_null(ranked_weights: np.ndarray, k: int) -> np.ndarray:
    """ES of every k-subset of the ranked list (the exact gene-set permutation null)."""
    subsets = np.array(list(itertools.combinations(range(ranked_weights.size), k)))
    return gsea.enrichment_scores(subsets, ranked_weights[subsets], ranked_weights.size)[0]


# --------------------------------------------------------------------------- enrichment score

@st.composite
def ranked_case(draw):
    n = draw(st.integers(2, 30))
    # Few distinct values: ties in the statistic and zero weights are common.
    values = draw(st.lists(st.sampled_from([-3.0, -1.5, -1.0, 0.0, 0.5, 1.0, 2.0, 2.5]),
                           min_size=n, max_size=n))
    ranked = np.sort(np.array(values))[::-1]
    member = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    p = draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
    return ranked, member, p


@given(ranked_case())
@settings(max_examples=400)
def test_enrichment_scores_equal_running_sum_walk(case):
    ranked, member, p = case
    k = int(member.sum())
    positions = np.flatnonzero(member)
    es, peak = gsea.enrichment_scores(positions, np.abs(ranked[positions]) ** p, ranked.size)
    if k == 0 or k == ranked.size:
        assert np.isnan(es) and peak == -1
        return
    ref, where = walk_es(ranked, member, p)
    # Same arithmetic on both sides (see walk_es); the tolerance only guards the last bit.
    np.testing.assert_allclose(es, ref, rtol=1e-12, atol=1e-15)
    # The peak member is where the walk reached the extreme: right after it (ES >= 0) or
    # right before it (ES < 0).
    assert positions[peak] - (0 if es >= 0 else 1) == where


def test_tie_between_extremes_goes_to_the_first_reached():
    # Unweighted, 4 genes, members at 0 and 3: the walk is +1/2, 0, -1/2, 0.
    es, peak = gsea.enrichment_scores(np.array([0, 3]), np.ones(2), 4)
    assert es == 0.5 and peak == 0
    # Members at 1 and 2 of 4: -1/2 first, then +1/2.
    es, peak = gsea.enrichment_scores(np.array([1, 2]), np.ones(2), 4)
    assert es == -0.5 and peak == 0


def test_enrichment_scores_vectorised_over_leading_axes():
    rng = np.random.default_rng(3)
    n, k = 200, 12
    weights = np.abs(rng.normal(size=n))
    pos = np.sort(np.stack([rng.choice(n, k, replace=False) for _ in range(24)]), axis=1)
    es, peak = gsea.enrichment_scores(pos.reshape(4, 6, k), weights[pos].reshape(4, 6, k), n)
    one = [gsea.enrichment_scores(row, weights[row], n) for row in pos]
    np.testing.assert_array_equal(es.reshape(-1), [e for e, _ in one])
    np.testing.assert_array_equal(peak.reshape(-1), [j for _, j in one])


def test_zero_weights_score_as_unweighted():
    pos = np.array([1, 4, 5])
    es0, peak0 = gsea.enrichment_scores(pos, np.zeros(3), 9)
    es1, peak1 = gsea.enrichment_scores(pos, np.full(3, 2.0), 9)
    assert es0 == es1 and peak0 == peak1


def test_enrichment_scores_rejects_mismatched_input():
    with pytest.raises(InputError, match="same shape"):
        gsea.enrichment_scores(np.array([1, 2]), np.ones(3), 10)
    with pytest.raises(InputError, match="integers"):
        gsea.enrichment_scores(np.array([1.0, 2.0]), np.ones(2), 10)


# --------------------------------------------------------------------------- random sets

@pytest.mark.parametrize("n,k", [(10, 3), (13, 3)])  # dense and sparse draws
def test_random_samples_are_uniform_with_uniform_prefixes(n, k):
    rng = np.random.default_rng(11)
    draws = gsea._draw_ordered_samples(rng, 40000, n, k)
    assert (np.sort(draws, axis=1)[:, 1:] != np.sort(draws, axis=1)[:, :-1]).all()
    for size in range(1, k + 1):
        subsets = np.sort(draws[:, :size], axis=1)
        codes = (subsets * n ** np.arange(size)).sum(axis=1)
        counts = np.unique(codes, return_counts=True)[1]
        assert counts.size == math.comb(n, size)
        # Fixed seed: the test is deterministic; a biased sampler fails it.
        assert stats.chisquare(counts).pvalue > 1e-3


def test_random_samples_stay_uniform_when_rows_are_redrawn(monkeypatch):
    # Force the sparse sampler to draw too few values, so most rows are redrawn.
    monkeypatch.setattr(gsea, "_sparse_draws", lambda k, n: k)
    draws = gsea._draw_ordered_samples(np.random.default_rng(5), 30000, 13, 3)
    codes = (draws * 13 ** np.arange(3)).sum(axis=1)  # ordered triples
    counts = np.unique(codes, return_counts=True)[1]
    assert counts.size == 13 * 12 * 11
    assert stats.chisquare(counts).pvalue > 1e-3


# --------------------------------------------------------------------------- exact enumeration

@pytest.mark.parametrize("n,sizes", [(10, (2, 3, 4)), (40, (2, 3))])
def test_permutation_p_agrees_with_exact_enumeration(n, sizes):
    rng = np.random.default_rng(n)
    statistic = rng.normal(size=n)
    ranked_weights = np.abs(np.sort(statistic)[::-1])
    order = gsea.ranked_list(statistic)
    perms = 20000
    for k in sizes:
        subsets = np.array(list(itertools.combinations(range(n), k)))
        if subsets.shape[0] > 400:
            subsets = subsets[rng.choice(subsets.shape[0], 400, replace=False)]
        # Every set of the sizes (or a sample of them), given as row positions.
        members = [order[s] for s in subsets]
        members += [order[rng.choice(n, j, replace=False)] for j in sizes if j != k]
        result = gsea.gsea_preranked(statistic, members, permutations=perms, seed=1, key=2,
                                     multilevel=False)
        null = exact_null(ranked_weights, k)
        es = result["es"][: subsets.shape[0]]
        same = np.where(es[:, None] >= 0, null >= 0, null <= 0)
        more = np.where(es[:, None] >= 0, null >= es[:, None], null <= es[:, None])
        p_exact = (more & same).sum(axis=1) / same.sum(axis=1)
        p_mc = result["p_value"][: subsets.shape[0]]
        n_same = result["n_same_sign"][: subsets.shape[0]]
        # Binomial standard error of the Monte-Carlo fraction, plus the +1 of fgsea's formula.
        se = np.sqrt(p_exact * (1 - p_exact) / n_same) + 1.0 / n_same
        assert (np.abs(p_mc - p_exact) <= 5 * se).all()
        # The share of null ES >= 0 is the exact one too.
        frac_pos = (null >= 0).mean()
        n_pos = n_same[es >= 0][0]
        assert abs(n_pos / perms - frac_pos) <= 5 * math.sqrt(frac_pos * (1 - frac_pos) / perms)
        # NES uses the mean of the same-sign null.
        mean_pos = null[null >= 0].mean()
        sd = null[null >= 0].std() / math.sqrt(n_same[es >= 0][0])
        nes_expected = es[es >= 0] / mean_pos
        np.testing.assert_allclose(result["nes"][: subsets.shape[0]][es >= 0], nes_expected,
                                   rtol=5 * sd / mean_pos)


def test_permutation_null_matches_exact_distribution():
    n, k = 12, 4
    weights = np.abs(np.sort(np.random.default_rng(4).normal(size=n))[::-1])
    null = gsea.permutation_null(weights, [k], permutations=20000, seed=3, key=9)[0]
    exact = exact_null(weights, k)
    values, counts = np.unique(exact, return_counts=True)
    observed = np.array([(null == v).sum() for v in values])
    assert observed.sum() == null.size  # every null ES is the ES of some k-subset
    assert stats.chisquare(observed, counts / counts.sum() * null.size).pvalue > 1e-3


# --------------------------------------------------------------------------- NES, p, FDR

def test_enrichment_statistics_equal_the_definitions():
    rng = np.random.default_rng(8)
    n_sets, n_perm = 9, 60
    null = rng.normal(0, 0.3, (n_sets, n_perm))
    null[2] = np.abs(null[2])  # no negative null: a negative ES there has no NES
    es = rng.normal(0, 0.5, n_sets)
    es[2] = -0.4
    es[5] = np.nan
    es[6] = null[6, 3]  # ties with a null value
    got = gsea.enrichment_statistics(es, null)
    ref = reference_statistics(es, null)
    for name in ("nes", "p_value", "fdr_q"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-12, equal_nan=True)
    assert np.isnan(got["nes"][2]) and np.isnan(got["p_value"][5])


def test_shared_null_rows_equal_the_expanded_null():
    rng = np.random.default_rng(9)
    rows = rng.normal(0, 0.3, (3, 80))
    row_of_set = np.array([0, 2, 2, 1, 0, 2])
    es = rng.normal(0, 0.5, 6)
    shared = gsea._statistics(es, rows, row_of_set)
    expanded = gsea.enrichment_statistics(es, rows[row_of_set])
    for name in expanded:
        np.testing.assert_allclose(shared[name], expanded[name], rtol=1e-12, equal_nan=True)


# --------------------------------------------------------------------------- gsea_preranked

def small_case(seed=0, n=300, n_sets=8):
    rng = np.random.default_rng(seed)
    statistic = rng.normal(size=n)
    members = [rng.choice(n, int(s), replace=False) for s in rng.integers(5, 40, n_sets)]
    members[0] = np.argsort(-statistic)[:30:2]  # strongly up
    members[1] = np.argsort(statistic)[:20]  # strongly down
    return statistic, members


def test_gsea_preranked_equals_its_parts():
    statistic, members = small_case()
    result = gsea.gsea_preranked(statistic, members, permutations=1000, seed=4, key=5,
                                 multilevel=False)
    order = gsea.ranked_list(statistic)
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    weights = np.abs(statistic[order])
    sizes = np.unique([len(m) for m in members])
    null = gsea.permutation_null(weights, sizes, permutations=1000, seed=4, key=5)
    for i, m in enumerate(members):
        member = np.zeros(order.size, dtype=bool)
        member[rank[m]] = True
        ref, where = walk_es(statistic[order], member, 1.0)
        np.testing.assert_allclose(result["es"][i], ref, rtol=1e-12)
        lead = order[(np.arange(order.size) <= where) & member] if ref >= 0 else \
            order[(np.arange(order.size) > where) & member][::-1]
        np.testing.assert_array_equal(result["leading_edge"][i], lead)
    expanded = null[np.searchsorted(sizes, [len(m) for m in members])]
    ref = reference_statistics(result["es"], expanded)
    for name in ("nes", "p_value", "fdr_q"):
        np.testing.assert_allclose(result[name], ref[name], rtol=1e-12, equal_nan=True)


def test_same_seed_same_result_for_any_batch_size():
    statistic, members = small_case(1)
    runs = [gsea.gsea_preranked(statistic, members, permutations=1100, seed=7, key=1,
                                block_size=b, multilevel=False) for b in (256, 512, None)]
    for other in runs[1:]:
        for name in ("es", "nes", "p_value", "fdr_q", "n_more_extreme"):
            np.testing.assert_array_equal(runs[0][name], other[name])
    different = gsea.gsea_preranked(statistic, members, permutations=1100, seed=8, key=1,
                                    multilevel=False)
    assert not np.array_equal(different["n_more_extreme"], runs[0]["n_more_extreme"])


def test_null_blocks_are_independent_of_order():
    weights = np.abs(np.random.default_rng(2).normal(size=500))
    sizes = np.array([3, 17, 40])
    whole = gsea.permutation_null(weights, sizes, permutations=1000, seed=1, key=3)
    blocks = [3, 1, 0, 2]  # 256, 256, 256, 232 permutations
    parts = gsea._null_for_blocks(weights, sizes, blocks, permutations=1000, seed=1, key=3)
    starts = np.array([0, 256, 512, 768, 1000])
    expected = np.concatenate([whole[:, starts[b]:starts[b + 1]] for b in blocks], axis=1)
    np.testing.assert_array_equal(parts, expected)


def test_nan_statistics_are_dropped():
    statistic, members = small_case(2)
    with_nan = statistic.copy()
    with_nan[members[0][:3]] = np.nan
    kept = np.flatnonzero(~np.isnan(with_nan))
    new_index = np.full(statistic.size, -1)
    new_index[kept] = np.arange(kept.size)
    result = gsea.gsea_preranked(with_nan, members, permutations=300, seed=1, key=1,
                                 multilevel=False)
    dropped = gsea.gsea_preranked(
        statistic[kept], [new_index[m][new_index[m] >= 0] for m in members],
        permutations=300, seed=1, key=1, multilevel=False)
    assert result["size"][0] == len(members[0]) - 3
    for name in ("size", "es", "nes", "p_value"):
        np.testing.assert_array_equal(result[name], dropped[name])


def test_edge_cases():
    statistic = np.random.default_rng(0).normal(size=20)
    members = [np.array([], dtype=int), np.arange(20), np.array([3]), np.array([4, 4, 5])]
    result = gsea.gsea_preranked(statistic, members, permutations=200, seed=1, key=1)
    assert np.isnan(result["es"][:2]).all() and np.isnan(result["p_value"][:2]).all()
    assert result["leading_edge"][0].size == 0
    assert result["size"].tolist() == [0, 20, 1, 2]
    assert np.isfinite(result["p_value"][2:]).all()
    with pytest.raises(InputError, match="must lie in 0..19, got 25"):
        gsea.gsea_preranked(statistic, [np.array([25])], permutations=10, seed=1, key=1)
    with pytest.raises(InputError, match="infinite"):
        gsea.gsea_preranked(np.append(statistic, np.inf), members, permutations=10, seed=1,
                            key=1)
    with pytest.raises(InputError, match="weight"):
        gsea.gsea_preranked(statistic, members, permutations=10, seed=1, key=1, weight=-1)


def test_p_floor_reported_when_hit():
    statistic, members = small_case(3)
    result = gsea.gsea_preranked(statistic, members, permutations=200, seed=1, key=1,
                                 multilevel=False)
    hit = result["n_more_extreme"] == 0
    assert hit[0] and hit[1]  # the two strong sets beat every permutation
    np.testing.assert_array_equal(result["p_value"][hit], result["p_floor"][hit])
    np.testing.assert_array_equal(result["p_floor"][hit], 1 / (result["n_same_sign"][hit] + 1))
    assert np.isnan(result["p_floor"][~hit]).all()


# --------------------------------------------------------------------------- GSEApy

LEUKEMIA = Path("/work/shared/data/leukemia_gsea/Leukemia_hgu95av2.gct")
HALLMARK_PROBES = Path("/work/shared/oracle/out/all/hallmark_v7.0_hgu95_probes.gmt")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The inplace keyword")  # inside GSEApy
@pytest.mark.skipif(not (LEUKEMIA.exists() and HALLMARK_PROBES.exists()),
                    reason="shared GSEA example data not available")
def test_es_equal_gseapy_prerank(tmp_path):
    gseapy = pytest.importorskip("gseapy")
    import pandas as pd

    expr = pd.read_csv(LEUKEMIA, sep="\t", skiprows=2, index_col=0).drop(columns="Description")
    x = np.log2(np.maximum(expr.to_numpy(dtype=np.float64), 20.0))
    all_, aml = x[:, :24], x[:, 24:]
    s2n = (all_.mean(1) - aml.mean(1)) / (all_.std(1, ddof=1) + aml.std(1, ddof=1))
    keep = np.isfinite(s2n)
    genes = expr.index.to_numpy()[keep]
    s2n = s2n[keep]
    # Ties would be ordered differently by GSEApy: keep one probe per distinct value.
    _, first = np.unique(s2n, return_index=True)
    genes, s2n = genes[np.sort(first)], s2n[np.sort(first)]
    sets = {}
    for line in HALLMARK_PROBES.read_text().splitlines():
        name, _, *probes = line.split("\t")
        sets[name] = probes
    index = {g: i for i, g in enumerate(genes)}
    names = [s for s in sets if sum(p in index for p in sets[s]) >= 15]
    members = [np.array([index[p] for p in sets[s] if p in index]) for s in names]
    ours = gsea.gsea_preranked(s2n, members, permutations=1000, seed=1, key=1,
                               multilevel=False)
    rnk = pd.Series(s2n, index=genes)
    res = gseapy.prerank(rnk=rnk, gene_sets={s: sets[s] for s in names}, permutation_num=1000,
                         min_size=15, max_size=1000, threads=1, seed=1, outdir=None,
                         no_plot=True, verbose=False).res2d.set_index("Term")
    theirs = res.loc[names]
    np.testing.assert_allclose(ours["es"], theirs["ES"].astype(float), rtol=1e-6)
    for lead, theirs_lead in zip(ours["leading_edge"], theirs["Lead_genes"]):
        assert set(genes[lead]) == set(str(theirs_lead).split(";"))
    # NES and p are Monte-Carlo estimates on both sides: report, do not assert equality.
    print("max |NES diff|", np.nanmax(np.abs(ours["nes"] - theirs["NES"].astype(float))))
    print("max |p diff|", np.nanmax(np.abs(ours["p_value"] - theirs["NOM p-val"].astype(float))))
