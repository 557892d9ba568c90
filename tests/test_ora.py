"""Over-representation analysis: p-values against an exact rational sum of hypergeometric
probabilities, scipy ``fisher_exact(alternative="greater")`` and ``hypergeom``; the conditional
odds ratio against scipy ``contingency.odds_ratio(kind="conditional")`` (R ``fisher.test``'s
estimate); universe handling; gene selection from a result table."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.stats.contingency import odds_ratio

from engine.errors import InputError
from engine.stats import ora


def exact_upper_tail(x: int, big_n: int, k: int, n: int) -> float:
    """P(X >= x) for X ~ Hypergeometric(N, K, n), summed exactly in rationals."""
    total = comb(big_n, n)
    return float(sum(Fraction(comb(k, i) * comb(big_n - k, n - i), total)
                     for i in range(x, min(k, n) + 1)))


def random_case(seed=0, n_genes=600, n_sets=40):
    rng = np.random.default_rng(seed)
    universe = rng.random(n_genes) < 0.8
    selected = rng.random(n_genes) < 0.15
    members = [rng.choice(n_genes, int(rng.integers(1, 80)), replace=False)
               for _ in range(n_sets)]
    members[0] = np.flatnonzero(selected & universe)[:25]  # strongly enriched: tiny p
    members[1] = np.flatnonzero(~selected & universe)[:30]  # no overlap: OR 0
    return selected, universe, members


def test_p_values_and_counts_match_the_references():
    selected, universe, members = random_case()
    result = ora.over_representation(selected, universe, members)
    big_n, n = int(universe.sum()), int((selected & universe).sum())
    assert (result["n_universe"] == big_n).all() and (result["n_selected"] == n).all()
    assert result["selected_outside_universe"] == int((selected & ~universe).sum())
    for s, m in enumerate(members):
        inside = np.unique(m[universe[m]])
        hits = inside[selected[inside]]
        k, x = inside.size, hits.size
        assert result["size"][s] == k and result["overlap"][s] == x
        assert np.array_equal(result["leading_edge"][s], hits)
        assert result["expected"][s] == pytest.approx(n * k / big_n, rel=1e-15)
        table = [[x, n - x], [k - x, big_n - k - n + x]]
        p = result["p_value"][s]
        assert p == pytest.approx(exact_upper_tail(x, big_n, k, n), rel=1e-12)
        assert p == pytest.approx(stats.fisher_exact(table, alternative="greater").pvalue,
                                  rel=1e-12)
        assert p == pytest.approx(stats.hypergeom.sf(x - 1, big_n, k, n), rel=1e-12)
        want = odds_ratio(table, kind="conditional").statistic
        if np.isfinite(want) and want > 0:
            # scipy's root finder stops at ~1e-12; ours at ~1e-13 in log OR
            assert result["odds_ratio"][s] == pytest.approx(want, rel=1e-9)
        else:
            assert result["odds_ratio"][s] == want or (np.isnan(want)
                                                       and np.isnan(result["odds_ratio"][s]))
        if x:
            assert result["fold_enrichment"][s] == pytest.approx(x / (n * k / big_n))
    assert result["p_value"][0] < 1e-20 and result["odds_ratio"][1] == 0
    np.testing.assert_allclose(result["p_adj"], stats.false_discovery_control(result["p_value"]),
                               rtol=1e-12)


def test_conditional_odds_ratio_edges_and_large_tables():
    # x at the bottom/top of its support: 0 and inf; an empty margin: NaN (scipy and R agree)
    got = ora.conditional_odds_ratio([0, 5, 0, 3, 2], [100, 100, 100, 100, 100],
                                     [10, 5, 0, 100, 10], [20, 20, 20, 20, 0])
    assert got[0] == 0 and got[1] == np.inf and np.isnan(got[2:]).all()
    rng = np.random.default_rng(4)
    big_n = 20000
    k = rng.integers(50, 2000, 30)
    n = rng.integers(100, 3000, 30)
    x = np.array([int(stats.hypergeom.rvs(big_n, kk, nn, random_state=rng)) + 2
                  for kk, nn in zip(k, n)])
    ours = ora.conditional_odds_ratio(x, big_n, k, n)
    for i in range(30):
        table = [[x[i], n[i] - x[i]], [k[i] - x[i], big_n - k[i] - n[i] + x[i]]]
        assert ours[i] == pytest.approx(odds_ratio(table, kind="conditional").statistic,
                                        rel=1e-9)


def test_universe_restricts_selection_and_sets():
    """Result on an explicit universe = result on the matrix cut down to the universe."""
    selected, universe, members = random_case(seed=3)
    full = ora.over_representation(selected, universe, members, names=[f"s{i}" for i in
                                                                      range(len(members))])
    keep = np.flatnonzero(universe)
    new_row = np.full(universe.size, -1)
    new_row[keep] = np.arange(keep.size)
    cut = ora.over_representation(selected[keep], np.ones(keep.size, bool),
                                  [new_row[m][new_row[m] >= 0] for m in members])
    for field in ("size", "overlap", "expected", "p_value", "odds_ratio", "fold_enrichment"):
        assert np.array_equal(full[field], cut[field], equal_nan=True), field
    assert cut["selected_outside_universe"] == 0 < full["selected_outside_universe"]
    assert list(full["gene_set"][:2]) == ["s0", "s1"]


def test_degenerate_sets_and_bad_input():
    selected = np.array([True, True, False, False, False, True])
    universe = np.array([True, True, True, True, False, False])
    result = ora.over_representation(selected, universe, [np.array([4, 5]), np.array([0, 0, 1]),
                                                          np.array([], dtype=np.int64)])
    assert list(result["size"]) == [0, 2, 0]
    assert np.isnan(result["p_value"][[0, 2]]).all() and np.isnan(result["p_adj"][[0, 2]]).all()
    assert result["p_value"][1] == pytest.approx(exact_upper_tail(2, 4, 2, 2), rel=1e-12)
    assert result["selected_outside_universe"] == 1
    with pytest.raises(InputError, match="boolean"):
        ora.over_representation(selected.astype(int), universe, [])
    with pytest.raises(InputError, match="same genes"):
        ora.over_representation(selected, universe[:4], [])
    with pytest.raises(InputError, match="0..5"):
        ora.over_representation(selected, universe, [np.array([6])])
    with pytest.raises(InputError, match="names"):
        ora.over_representation(selected, universe, [np.array([1])], names=["a", "b"])


def test_select_genes():
    table = pd.DataFrame({"effect": [2.0, -3.0, 0.5, np.nan, 1.5, -0.2],
                          "p_value": [0.001, 0.002, 0.01, 0.001, np.nan, 0.03],
                          "p_adj": [0.01, 0.04, 0.06, 0.01, 0.01, np.nan]})
    assert ora.select_genes(table, p_adj_below=0.05).tolist() == \
        [True, True, False, True, True, False]
    assert ora.select_genes(table, p_adj_below=0.05, direction="up").tolist() == \
        [True, False, False, False, True, False]
    assert ora.select_genes(table, p_value_below=0.05, abs_effect_above=1,
                            direction="down").tolist() == [False, True] + [False] * 4
    assert ora.select_genes(table, effect_above=1).tolist() == \
        [True, False, False, False, True, False]
    assert ora.select_genes(table, direction="down").tolist() == \
        [False, True, False, False, False, True]
    with pytest.raises(InputError, match="at least one"):
        ora.select_genes(table)
    with pytest.raises(InputError, match="no column p_adj"):
        ora.select_genes(table[["effect", "p_value"]], p_adj_below=0.05)
    with pytest.raises(InputError, match="selects nothing"):
        ora.select_genes(table, effect_above=1, direction="down")
    with pytest.raises(InputError, match=r"\(0, 1\]"):
        ora.select_genes(table, p_adj_below=5)
