"""Multiple-testing adjustment of per-gene p-values.

Every function takes a 1-D array of p-values and returns adjusted values of the same shape in
float64. NaN entries are untested genes: they stay NaN and do not count towards the number of
tests m, as R does when it drops NAs. The p.adjust methods follow R ``stats::p.adjust`` operation
for operation (same sort direction, same cumulative min/max, same products), so they agree with R
to the last bit or so; statsmodels ``multipletests`` is the second reference.
"""

import math

import numpy as np

from engine.errors import InputError

__all__ = ["METHODS", "benjamini_hochberg", "benjamini_yekutieli", "bonferroni", "hochberg",
           "holm", "storey_pi0", "storey_qvalue", "QVALUE_LAMBDAS"]

#: qvalue's default lambda grid, ``seq(0.05, 0.95, 0.05)`` computed as R's ``seq`` does.
QVALUE_LAMBDAS = np.minimum(0.05 + np.arange(19) * 0.05, 0.95)


def _as_pvalues(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise InputError(f"p-values must be a 1-D array, got shape {p.shape} "
                         "(adjust each stratum or contrast separately)")
    return p


def _step(p, scale, *, step_up: bool) -> np.ndarray:
    """The p.adjust pattern shared by every method here.

    Sort the tested p-values (descending for step-up, ascending for step-down), multiply each by
    ``scale(p_sorted, i, m)`` where ``i`` is the rank that R's code uses (``m:1`` for step-up,
    ``1:m`` for step-down), make the result monotone in p with a running minimum (step-up) or
    maximum (step-down), cap at 1 and put the values back in place.
    """
    p = _as_pvalues(p)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = tested.size
    if m == 0:
        return adjusted
    # Tied p-values get the same adjusted value whatever their order, so the sort kind is free.
    order = tested[np.argsort(p[tested], kind="stable")]
    if step_up:
        order, i, running = order[::-1], np.arange(m, 0, -1), np.minimum.accumulate
    else:
        i, running = np.arange(1, m + 1), np.maximum.accumulate
    adjusted[order] = np.minimum(running(scale(p[order], i, m)), 1.0)
    return adjusted


def benjamini_hochberg(p):
    """Benjamini-Hochberg adjusted p-values (false discovery rate) of a 1-D array.

    Reference: R ``p.adjust(p, "BH")`` (``cummin(m / i * p)`` from the largest p down, capped at
    1); statsmodels ``multipletests(p, method='fdr_bh')``.
    """
    return _step(p, lambda p, i, m: m / i * p, step_up=True)


def benjamini_yekutieli(p):
    """Benjamini-Yekutieli adjusted p-values (FDR under arbitrary dependence) of a 1-D array.

    BH multiplied by the harmonic number ``sum(1 / (1:m))``. Reference: R ``p.adjust(p, "BY")``;
    statsmodels ``multipletests(p, method='fdr_by')``.
    """
    def scale(p, i, m):
        harmonic = math.fsum(1.0 / np.arange(1, m + 1))
        return harmonic * m / i * p
    return _step(p, scale, step_up=True)


def bonferroni(p):
    """Bonferroni adjusted p-values ``min(1, m * p)`` (family-wise error rate) of a 1-D array.

    Reference: R ``p.adjust(p, "bonferroni")``; statsmodels ``multipletests(p, 'bonferroni')``.
    """
    return _step(p, lambda p, i, m: m * p, step_up=False)  # already monotone: the max is a no-op


def holm(p):
    """Holm step-down adjusted p-values (family-wise error rate) of a 1-D array.

    ``cummax((m + 1 - i) * p)`` from the smallest p up, capped at 1. Reference: R
    ``p.adjust(p, "holm")``; statsmodels ``multipletests(p, method='holm')``.
    """
    return _step(p, lambda p, i, m: (m + 1 - i) * p, step_up=False)


def hochberg(p):
    """Hochberg step-up adjusted p-values (family-wise error rate, Simes) of a 1-D array.

    ``cummin((m + 1 - i) * p)`` from the largest p down, capped at 1. Reference: R
    ``p.adjust(p, "hochberg")``; statsmodels ``multipletests(p, method='simes-hochberg')``.
    """
    return _step(p, lambda p, i, m: (m + 1 - i) * p, step_up=True)


def storey_pi0(p, lambda_=QVALUE_LAMBDAS, pi0_method: str = "bootstrap") -> float:
    """Storey's estimate of the proportion of true null hypotheses, pi0, of a 1-D array.

    Reference: Bioconductor ``qvalue::pi0est`` (Storey & Tibshirani 2003; the bootstrap choice of
    lambda is Storey, Taylor & Siegmund 2004 in David Robinson's closed form). At each lambda,
    ``pi0(lambda) = #{p >= lambda} / (m * (1 - lambda))``. A scalar ``lambda_`` gives
    ``min(1, pi0(lambda_))`` (``pi0est(p, lambda = 0.5)``); a grid of >= 4 values picks the
    pi0(lambda) of least estimated mean squared error (``pi0est(p, pi0.method = "bootstrap")``).
    qvalue's default ``pi0.method = "smoother"`` (a ``smooth.spline`` with df = 3 over the grid)
    is not offered, as R's spline fit cannot be reproduced exactly; ``pi0_method`` must be
    ``"bootstrap"`` (it is ignored for a scalar lambda, as in qvalue). NaN p-values are dropped.
    pi0 is NaN where qvalue stops with an error: no p-values, or none >= the largest lambda.
    """
    p = _as_pvalues(p)
    p = p[~np.isnan(p)]
    lam = np.sort(np.asarray(lambda_, dtype=np.float64).ravel())
    if lam.size in (0, 2, 3) or not (lam[0] >= 0 and lam[-1] < 1):
        raise InputError(f"lambda_ must be one value or at least 4 values in [0, 1), got {lambda_}")
    if pi0_method != "bootstrap":
        raise InputError(f"pi0_method must be 'bootstrap', got {pi0_method!r} (qvalue's default "
                         "'smoother', a smooth.spline, is not reproduced; one lambda_, e.g. 0.5, "
                         "gives the fixed-lambda estimate)")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise InputError(f"p-values must lie in [0, 1], got values from {p.min()} to {p.max()}")
    m = p.size
    if m == 0 or p.max() < lam[-1]:
        return math.nan
    at_least = np.count_nonzero(p[:, None] >= lam, axis=0)  # W in qvalue's code
    pi0 = at_least / (m * (1 - lam))
    if lam.size > 1:
        # qvalue's expression, operation for operation; quantile(pi0, 0.1) as R's type 7 does it.
        ranked = np.sort(pi0)
        index = 1 + (lam.size - 1) * 0.1
        lo = math.floor(index)  # 1-based, as in R
        min_pi0 = ranked[lo - 1]
        if index > lo and ranked[lo] != min_pi0:
            h = index - lo
            min_pi0 = (1 - h) * min_pi0 + h * ranked[lo]
        mse = (at_least / (m ** 2 * (1 - lam) ** 2)) * (1 - at_least / m) + (pi0 - min_pi0) ** 2
        pi0 = pi0[mse == mse.min()]
    return min(float(pi0.min()), 1.0)


def storey_qvalue(p, lambda_=QVALUE_LAMBDAS, pi0_method: str = "bootstrap"):
    """Storey's q-values of a 1-D array and the pi0 they use: ``(q, pi0)``.

    ``q = pi0 * min(1, cummin(p * m / i))`` from the largest p down, i.e. pi0 times BH (pFDR
    correction off). Reference: Bioconductor ``qvalue::qvalue(p, lambda = ..., pi0.method = ...)``
    (Storey & Tibshirani 2003); pi0 as in :func:`storey_pi0`, whose defaults are qvalue's lambda
    grid with the bootstrap choice. NaN p-values stay NaN; q is all NaN where pi0 is NaN.
    """
    pi0 = storey_pi0(p, lambda_, pi0_method)
    return pi0 * _step(p, lambda p, i, m: p * m / i, step_up=True), pi0


def _qvalue(p):
    return storey_qvalue(p)[0]


#: Adjustment methods by the name a job uses (``adjust: BH``); ``qvalue`` is Storey's q-value with
#: pi0 from qvalue's lambda grid and bootstrap choice (``qvalue(p, pi0.method = "bootstrap")``).
METHODS = {"BH": benjamini_hochberg, "BY": benjamini_yekutieli, "bonferroni": bonferroni,
           "holm": holm, "hochberg": hochberg, "qvalue": _qvalue}
