"""Over-representation analysis (ORA): hypergeometric / one-sided Fisher test of gene sets in a
list of selected genes, against an explicit universe.

For a universe of N genes of which n are selected, a set with K members in the universe and x of
them selected (the 2 x 2 table [[x, n - x], [K - x, N - K - n + x]]):

* ``p_value`` = P(X >= x), X ~ Hypergeometric(N, K, n): the upper tail, which is R
  ``phyper(x - 1, K, N - K, n, lower.tail=FALSE)``, R ``fisher.test(table, alternative=
  "greater")`` and scipy ``fisher_exact(table, alternative="greater")``.
* ``expected`` = n K / N, ``fold_enrichment`` = x / expected.
* ``odds_ratio``: the conditional maximum-likelihood estimate, as R ``fisher.test`` reports
  (and scipy ``contingency.odds_ratio(table, kind="conditional")``): the odds ratio psi of
  Fisher's noncentral hypergeometric distribution whose mean is x. 0 when x is the smallest
  count the margins allow, inf when it is the largest, NaN when a margin is 0 (no selected gene,
  everything selected, or a set with none or all of the universe). Not the sample odds ratio
  x (N - K - n + x) / ((n - x)(K - x)) of scipy ``fisher_exact``.

Universe: genes outside it are ignored in the selection and in the sets. A selected gene outside
the universe is dropped and counted (``selected_outside_universe``): a selection made on all
genes of a result table stays valid against a narrower universe (e.g. the expressed genes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import special, stats

from engine.errors import InputError
from engine.stats import multitest
from engine.stats.gsea import member_rows

__all__ = ["conditional_odds_ratio", "over_representation", "select_genes"]

#: (sets x support) elements per pass of the vectorised odds-ratio solver.
_SOLVER_ELEMENTS = 2**22
_SOLVER_ITERATIONS = 200


def _mask(values, name: str, n_genes: int | None = None) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or values.dtype.kind != "b":
        raise InputError(f"{name} must be a 1-D boolean vector over the genes, got dtype "
                         f"{values.dtype} and shape {values.shape}")
    if n_genes is not None and values.size != n_genes:
        raise InputError(f"{name} has {values.size} genes but selected has {n_genes}; pass "
                         "vectors over the same genes")
    return values


def _members_in(members: Sequence, universe: np.ndarray) -> list[np.ndarray]:
    return [m[universe[m]] for m in member_rows(members, universe.size)]


def conditional_odds_ratio(x, universe_size, set_size, n_selected) -> np.ndarray:
    """Conditional MLE of the odds ratio of 2 x 2 tables given by hypergeometric parameters
    (overlap x, universe N, set size K, selected n), vectorised: the psi at which Fisher's
    noncentral hypergeometric mean equals x (R ``fisher.test``'s estimate), found by safeguarded
    Newton steps on log psi (the mean is increasing in log psi, its derivative the variance)."""
    x, big_n, k, n = (np.asarray(v, dtype=np.float64) for v in
                      np.broadcast_arrays(x, universe_size, set_size, n_selected))
    x, big_n, k, n = (v.reshape(-1) for v in (x, big_n, k, n))
    out = np.full(x.size, np.nan)
    lo = np.maximum(0.0, n + k - big_n)
    hi = np.minimum(n, k)
    degenerate = (n == 0) | (n == big_n) | (k == 0) | (k == big_n)
    out[~degenerate & (x == lo)] = 0.0
    out[~degenerate & (x == hi)] = np.inf
    todo = np.flatnonzero(~degenerate & (x > lo) & (x < hi))
    if todo.size == 0:
        return out
    width = (hi[todo] - lo[todo]).astype(np.int64) + 1
    rank = np.argsort(width, kind="stable")  # similar supports share a pass
    order, width = todo[rank], width[rank]
    start = 0
    while start < order.size:
        count = max(1, _SOLVER_ELEMENTS // int(width[start]))
        while count > 1 and count * int(width[min(start + count, order.size) - 1]) \
                > _SOLVER_ELEMENTS:
            count //= 2
        part = order[start:start + count]
        out[part] = _solve_odds_ratio(x[part], big_n[part], k[part], n[part], lo[part], hi[part])
        start += part.size
    return out


def _solve_odds_ratio(x, big_n, k, n, lo, hi):
    width = int((hi - lo).max()) + 1
    support = lo[:, None] + np.arange(width)
    inside = support <= hi[:, None]
    s = np.where(inside, support, lo[:, None])
    # log of the central hypergeometric weights C(K, s) C(N - K, n - s)
    log_w = (special.gammaln(k + 1)[:, None] - special.gammaln(s + 1)
             - special.gammaln(k[:, None] - s + 1) + special.gammaln(big_n - k + 1)[:, None]
             - special.gammaln(n[:, None] - s + 1) - special.gammaln(big_n[:, None] - k[:, None]
                                                                      - n[:, None] + s + 1))
    log_w = np.where(inside, log_w, -np.inf)

    def moments(theta):
        z = log_w + theta[:, None] * s
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        mean = (p * s).sum(axis=1)
        return mean, (p * (s - mean[:, None]) ** 2).sum(axis=1)

    # Start from the log sample odds ratio with 0.5 added to every cell, then bracket the root.
    theta = np.log((x + 0.5) * (big_n - k - n + x + 0.5) / ((n - x + 0.5) * (k - x + 0.5)))
    low, high = theta - 1.0, theta + 1.0
    for _ in range(_SOLVER_ITERATIONS):
        m_low, _ = moments(low)
        m_high, _ = moments(high)
        bad_low, bad_high = m_low > x, m_high < x
        if not (bad_low.any() or bad_high.any()):
            break
        span = high - low
        low = np.where(bad_low, low - 2 * span, low)
        high = np.where(bad_high, high + 2 * span, high)
    theta = 0.5 * (low + high)
    for _ in range(_SOLVER_ITERATIONS):
        mean, var = moments(theta)
        low = np.where(mean < x, theta, low)
        high = np.where(mean > x, theta, high)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = theta + (x - mean) / var
        inside_bracket = (newton > low) & (newton < high) & np.isfinite(newton)
        new = np.where(inside_bracket, newton, 0.5 * (low + high))
        done = np.abs(new - theta) <= 1e-13 * np.maximum(1.0, np.abs(theta))
        theta = new
        if done.all():
            break
    return np.exp(theta)


def over_representation(selected, universe, members: Sequence, *,
                        names: Sequence[str] | None = None) -> dict:
    """Over-representation of gene sets among selected genes, against an explicit universe.

    ``selected``, ``universe``: (genes,) bool over the same genes; ``members``: one array of
    gene row positions per set; ``names``: the sets' names (default ``set_0``, ...). Returns a
    dict with, per set (in the order of ``members``): ``gene_set``, ``size`` (members in the
    universe), ``overlap`` (of those, selected), ``expected``, ``fold_enrichment``,
    ``odds_ratio`` (conditional MLE), ``p_value`` (upper hypergeometric tail P(X >= overlap),
    NaN for a set with no member in the universe), ``p_adj`` (Benjamini-Hochberg over the sets
    with a p), ``leading_edge`` (object array of the selected members' rows: ORA's counterpart
    of GSEA's leading edge), ``n_universe`` and ``n_selected`` (genes in the universe, and
    selected ones among them: the same for every set); and ``selected_outside_universe`` (an
    int: selected genes dropped because they are not in the universe).
    Definitions and references: module docstring.
    """
    selected = _mask(selected, "selected")
    universe = _mask(universe, "universe", selected.size)
    if names is None:
        names = [f"set_{i}" for i in range(len(members))]
    names = np.array([str(n) for n in names], dtype=object)
    if names.size != len(members):
        raise InputError(f"{names.size} names for {len(members)} gene sets; give one name per set")
    outside = int((selected & ~universe).sum())
    chosen = selected & universe
    big_n = int(universe.sum())
    n = int(chosen.sum())
    sets = _members_in(members, universe)
    size = np.array([m.size for m in sets], dtype=np.int64)
    overlap_genes = np.empty(len(sets), dtype=object)
    overlap_genes[:] = [m[chosen[m]] for m in sets]
    overlap = np.array([m.size for m in overlap_genes], dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = size * n / big_n if big_n else np.full(size.shape, np.nan)
        fold = overlap / expected
    p_value = np.where(size > 0, stats.hypergeom.sf(overlap - 1, big_n, size, n), np.nan)
    return {
        "gene_set": names, "size": size, "overlap": overlap, "expected": expected,
        "fold_enrichment": fold,
        "odds_ratio": conditional_odds_ratio(overlap, big_n, size, n),
        "p_value": p_value, "p_adj": multitest.benjamini_hochberg(p_value),
        "leading_edge": overlap_genes, "n_universe": np.full(size.size, big_n, dtype=np.int64),
        "n_selected": np.full(size.size, n, dtype=np.int64),
        "selected_outside_universe": outside,
    }


DIRECTIONS = ("both", "up", "down")


def select_genes(table: pd.DataFrame, *, p_adj_below: float | None = None,
                 p_value_below: float | None = None, effect_above: float | None = None,
                 abs_effect_above: float | None = None, direction: str = "both") -> np.ndarray:
    """Genes of a per-gene result table (columns ``effect``, ``p_value``, ``p_adj``) that pass
    every given threshold: p_adj < ``p_adj_below``, p_value < ``p_value_below``, effect >
    ``effect_above``, |effect| > ``abs_effect_above``, and the effect's sign (``direction``: up
    = effect > 0, down = effect < 0, both = either). A gene with NaN in a column that is used is
    never selected. Returns a (genes,) bool array in the table's row order."""
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    criteria = {"p_adj_below": p_adj_below, "p_value_below": p_value_below,
                "effect_above": effect_above, "abs_effect_above": abs_effect_above}
    given = {k: v for k, v in criteria.items() if v is not None}
    if not given and direction == "both":
        raise InputError("select_genes needs at least one threshold (p_adj_below, "
                         "p_value_below, effect_above, abs_effect_above) or a direction")
    if effect_above is not None and direction == "down":
        raise InputError("effect_above with direction 'down' selects nothing; use "
                         "abs_effect_above with direction 'down'")
    for name in ("p_adj_below", "p_value_below"):
        v = given.get(name)
        if v is not None and not 0 < v <= 1:
            raise InputError(f"{name} must be in (0, 1], got {v!r}")
    for name in ("effect_above", "abs_effect_above"):
        v = given.get(name)
        if v is not None and not np.isfinite(v):
            raise InputError(f"{name} must be a finite number, got {v!r}")
    if abs_effect_above is not None and abs_effect_above < 0:
        raise InputError(f"abs_effect_above must be >= 0, got {abs_effect_above!r}")
    needed = {"p_adj_below": "p_adj", "p_value_below": "p_value"}
    columns = {needed[k] for k in given if k in needed}
    if effect_above is not None or abs_effect_above is not None or direction != "both":
        columns.add("effect")
    missing = sorted(columns - set(table.columns))
    if missing:
        raise InputError(f"the result table has no column {', '.join(missing)} (columns: "
                         f"{', '.join(map(str, table.columns))})")

    def col(name):
        return pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=np.float64)

    keep = np.ones(len(table), dtype=bool)
    with np.errstate(invalid="ignore"):
        if p_adj_below is not None:
            keep &= col("p_adj") < p_adj_below
        if p_value_below is not None:
            keep &= col("p_value") < p_value_below
        if "effect" in columns:
            effect = col("effect")
            keep &= ~np.isnan(effect)
            if effect_above is not None:
                keep &= effect > effect_above
            if abs_effect_above is not None:
                keep &= np.abs(effect) > abs_effect_above
            if direction == "up":
                keep &= effect > 0
            elif direction == "down":
                keep &= effect < 0
    return keep
