"""Multiple-testing adjustment of per-gene p-values."""

import numpy as np

__all__ = ["benjamini_hochberg"]


def benjamini_hochberg(p):
    """Benjamini-Hochberg adjusted p-values (false discovery rate) of a 1-D array.

    Reference: R ``p.adjust(p, "BH")``; statsmodels ``multipletests(p, method='fdr_bh')``.
    NaN entries are untested genes: they stay NaN and do not count towards the number of tests m,
    as R does when it drops NAs. Returns float64 of the input's shape.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p must be a 1-D array of p-values, got shape {p.shape}")
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = tested.size
    if m == 0:
        return adjusted
    descending = tested[np.argsort(p[tested])[::-1]]
    rank = np.arange(m, 0, -1, dtype=np.float64)
    # The running minimum from the largest p down makes the adjustment monotone in p.
    scaled = np.minimum.accumulate(m / rank * p[descending])
    adjusted[descending] = np.minimum(scaled, 1.0)
    return adjusted
