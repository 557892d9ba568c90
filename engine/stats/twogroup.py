"""Per-gene two-group tests as vectorised numpy kernels.

Every kernel takes ``case`` (genes x n1) and ``control`` (genes x n2) blocks, NaN meaning
missing, and returns a float64 ``(genes, 6)`` array whose columns are ``RESULT_FIELDS``.
Paired kernels take aligned blocks: column j of ``case`` pairs with column j of ``control``.

Inputs may be float32 (the cohort store's dtype) but everything is computed in float64:
scipy keeps float32 in float32 and flushes p-values below ~1e-45 to 0.

Genes where R's test would stop with an error (too few observations, data essentially constant,
all values tied) get NaN instead of raising or warning, so one bad gene never fails a block.
"""

import bottleneck as bn
import numpy as np
from scipy import special

__all__ = [
    "PAIRED_TESTS",
    "RESULT_FIELDS",
    "TESTS",
    "mann_whitney_u",
    "paired_t",
    "student_t",
    "welch_t",
    "wilcoxon_signed_rank",
]

RESULT_FIELDS = ("effect", "statistic", "df", "p_value", "n_case", "n_control")

_EPS = np.finfo(np.float64).eps


def _as_block(x, name):
    block = np.asarray(x, dtype=np.float64)
    if block.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (genes x samples) array, got shape {block.shape}"
        )
    return block


def _unpaired_blocks(case, control):
    case = _as_block(case, "case")
    control = _as_block(control, "control")
    if case.shape[0] != control.shape[0]:
        raise ValueError(
            f"case has {case.shape[0]} genes but control has {control.shape[0]}; "
            "pass blocks of the same genes"
        )
    return case, control


def _paired_differences(case, control):
    """case - control per aligned pair; NaN where either side is missing."""
    case = _as_block(case, "case")
    control = _as_block(control, "control")
    if case.shape != control.shape:
        raise ValueError(
            f"paired tests need aligned blocks of the same shape, got case {case.shape} "
            f"and control {control.shape}"
        )
    return case - control


def _count_mean(x):
    """Per-row count and mean of the non-NaN values."""
    n = (x.shape[1] - np.isnan(x).sum(axis=1)).astype(np.float64)
    return n, bn.nanmean(x, axis=1)


def _moments(x):
    """Per-row count, mean and centred sum of squares over the non-NaN values.

    Two passes (mean, then squared deviations; bottleneck's nanvar does the same in C without
    numpy's temporaries) instead of sum-of-squares minus squared sum, which cancels
    catastrophically for log-scale expression with small variance.
    """
    n, mean = _count_mean(x)
    return n, mean, bn.nanvar(x, axis=1, ddof=0) * n


def _tie_term(x):
    """Per-row sum of t**3 - t over the tie groups (runs of equal values) of the non-NaN values."""
    genes, width = x.shape
    ordered = np.sort(x, axis=1)  # NaN sorts last, so present values form a prefix
    present = ~np.isnan(ordered)
    starts = present.copy()
    starts[:, 1:] &= ordered[:, 1:] != ordered[:, :-1]
    run = np.cumsum(starts, axis=1) - 1
    # One bincount over (row, run) pairs counts every run of every gene at once.
    flat_run = (np.arange(genes)[:, None] * width + run)[present]
    sizes = np.bincount(flat_run, minlength=genes * width).reshape(genes, width)
    sizes = sizes.astype(np.float64)
    return (sizes**3 - sizes).sum(axis=1)


def _normal_two_sided(z):
    """R's 2 * min(pnorm(z), pnorm(z, lower.tail=FALSE)); ndtr of -|z| keeps tiny p exact."""
    with np.errstate(invalid="ignore"):
        return np.minimum(2.0 * special.ndtr(-np.abs(z)), 1.0)


def _result(effect, statistic, df, p_value, n_case, n_control, defined):
    """Stack the result columns, blanking statistic/df/p_value where the test is undefined."""
    out = np.stack(
        np.broadcast_arrays(effect, statistic, df, p_value, n_case, n_control), axis=1
    ).astype(np.float64)
    out[~defined, 1:4] = np.nan  # the effect stays: a mean difference needs no test
    return out


def _t_result(effect, stderr, df, scale, enough, n_case, n_control):
    """Finish a t test: t = effect / stderr, two-sided p from the t distribution with df.

    ``enough`` is R's sample-size rule; R also stops when the data are "essentially constant",
    stderr < 10 * eps * scale, where scale is the largest absolute mean involved.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        statistic = effect / stderr
        p_value = 2.0 * special.stdtr(df, -np.abs(statistic))
    constant = stderr < 10.0 * _EPS * scale
    defined = enough & ~constant & np.isfinite(statistic) & np.isfinite(df)
    return _result(effect, statistic, df, p_value, n_case, n_control, defined)


def welch_t(case, control):
    """Welch's unequal-variance t test per gene (row).

    Reference: R ``t.test(case, control, var.equal=FALSE)``; scipy
    ``ttest_ind(case, control, equal_var=False, nan_policy='omit')``. Missing values are dropped
    per gene and group; df is the Welch-Satterthwaite approximation. NaN where a group has fewer
    than 2 values or the data are essentially constant (R stops there).
    """
    case, control = _unpaired_blocks(case, control)
    n1, mean1, ss1 = _moments(case)
    n2, mean2, ss2 = _moments(control)
    with np.errstate(invalid="ignore", divide="ignore"):
        se1 = ss1 / (n1 - 1) / n1
        se2 = ss2 / (n2 - 1) / n2
        stderr = np.sqrt(se1 + se2)
        df = (se1 + se2) ** 2 / (se1**2 / (n1 - 1) + se2**2 / (n2 - 1))
    scale = np.maximum(np.abs(mean1), np.abs(mean2))
    enough = (n1 >= 2) & (n2 >= 2)
    return _t_result(mean1 - mean2, stderr, df, scale, enough, n1, n2)


def student_t(case, control):
    """Student's pooled-variance t test per gene (row), df = n1 + n2 - 2.

    Reference: R ``t.test(case, control, var.equal=TRUE)``; scipy ``ttest_ind(case, control,
    nan_policy='omit')``. A group with a single value contributes no variance, as in R. NaN where
    a group is empty, n1 + n2 < 3, or the data are essentially constant.
    """
    case, control = _unpaired_blocks(case, control)
    n1, mean1, ss1 = _moments(case)
    n2, mean2, ss2 = _moments(control)
    df = n1 + n2 - 2
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = (ss1 + ss2) / df
        stderr = np.sqrt(pooled * (1.0 / n1 + 1.0 / n2))
    scale = np.maximum(np.abs(mean1), np.abs(mean2))
    enough = (n1 >= 1) & (n2 >= 1) & (n1 + n2 >= 3)
    return _t_result(mean1 - mean2, stderr, df, scale, enough, n1, n2)


def paired_t(case, control):
    """Paired t test per gene (row) on the differences case - control, df = n - 1.

    Reference: R ``t.test(case, control, paired=TRUE)``; scipy ``ttest_rel``. Pairs with a
    missing side are dropped per gene; n_case = n_control = complete pairs. NaN where fewer than
    2 pairs remain or the differences are essentially constant.
    """
    diff = _paired_differences(case, control)
    n, mean, ss = _moments(diff)
    with np.errstate(invalid="ignore", divide="ignore"):
        stderr = np.sqrt(ss / (n - 1) / n)
    return _t_result(mean, stderr, n - 1, np.abs(mean), n >= 2, n, n)


def mann_whitney_u(case, control):
    """Mann-Whitney U (Wilcoxon rank-sum) test per gene (row), normal approximation.

    Reference: R ``wilcox.test(case, control, exact=FALSE, correct=TRUE)``; scipy
    ``mannwhitneyu(case, control, method='asymptotic', use_continuity=True)``. statistic is U of
    the case group from average ranks over both groups' non-missing values, with the tie-corrected
    variance; effect is the difference of means. NaN where a group is empty or all values tie.
    """
    case, control = _unpaired_blocks(case, control)
    n1, mean1 = _count_mean(case)
    n2, mean2 = _count_mean(control)
    values = np.concatenate([case, control], axis=1)
    ranks = bn.nanrankdata(values, axis=1)
    rank_sum = np.nansum(ranks[:, : case.shape[1]], axis=1)
    u = rank_sum - n1 * (n1 + 1) / 2
    n = n1 + n2
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = n1 * n2 / 12 * ((n + 1) - _tie_term(values) / (n * (n - 1)))
        shift = u - n1 * n2 / 2
        z = (shift - np.sign(shift) * 0.5) / np.sqrt(variance)
    defined = (n1 >= 1) & (n2 >= 1) & (variance > 0)
    return _result(mean1 - mean2, u, np.nan, _normal_two_sided(z), n1, n2, defined)


def wilcoxon_signed_rank(case, control):
    """Wilcoxon signed-rank test per gene (row) on paired differences, normal approximation.

    Reference: R ``wilcox.test(case, control, paired=TRUE, exact=FALSE, correct=TRUE)``; scipy
    ``wilcoxon(case, control, zero_method='wilcox', correction=True, method='approx')``.
    Incomplete pairs are dropped, zero differences are dropped before ranking |d| (R); statistic
    is V, the rank sum of positive differences. effect is the mean difference over complete pairs
    (zeros included), as are n_case = n_control. statistic and p_value are NaN where no nonzero
    difference remains.
    """
    diff = _paired_differences(case, control)
    n_pairs, mean_diff = _count_mean(diff)
    nonzero = np.where(diff != 0, diff, np.nan)
    magnitude = np.abs(nonzero)
    ranks = bn.nanrankdata(magnitude, axis=1)
    v = np.where(nonzero > 0, ranks, 0.0).sum(axis=1)
    m = (~np.isnan(nonzero)).sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = m * (m + 1) * (2 * m + 1) / 24 - _tie_term(magnitude) / 48
        shift = v - m * (m + 1) / 4
        z = (shift - np.sign(shift) * 0.5) / np.sqrt(variance)
    defined = (m >= 1) & (variance > 0)
    return _result(mean_diff, v, np.nan, _normal_two_sided(z), n_pairs, n_pairs, defined)


TESTS = {
    "welch": welch_t,
    "student": student_t,
    "paired_t": paired_t,
    "mann_whitney": mann_whitney_u,
    "wilcoxon_signed_rank": wilcoxon_signed_rank,
}

PAIRED_TESTS = frozenset({"paired_t", "wilcoxon_signed_rank"})
