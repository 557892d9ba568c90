"""Bootstrap confidence intervals from replicate statistics: percentile, basic, BCa, studentized.

Intervals (:func:`confidence_interval`) are those of ``scipy.stats.bootstrap`` (scipy 1.17;
Efron & Tibshirani 1993, An Introduction to the Bootstrap, ch. 13 and 14.3): ``percentile``
and ``basic`` with the quantiles of ``scipy.stats.quantile(method="linear")`` (R type 7);
``bca`` with z0 from the "mean" percentile of the observed statistic among the replicates and
the acceleration from the jackknife in scipy's multi-sample form (one jackknife per stratum,
leaving one unit out); ``studentized`` (bootstrap-t, Efron & Tibshirani ch. 12.5):
[theta - t*(1 - alpha) se, theta - t*(alpha) se] with the same quantiles of
t* = (theta*_b - theta) / se*_b. A NaN
anywhere in a row (observed value, a replicate, a jackknife value, se) gives a NaN interval for
that row, as scipy's quantile propagates NaN; nothing raises. Quantiles are exact order
statistics found without sorting long rows (:func:`_select`): sorting 10,000 replicates per gene
would cost several times the matrix products that make them.

Undefined replicates (:func:`replicate_interval`, used by every bootstrap of the engine): a
replicate whose statistic is undefined (NaN: a resample with an empty group or a constant
vector, a separated logistic fit, an inestimable contrast) is left out of that row's interval,
as R's ``boot.ci`` does, and ``n_boot`` counts the replicates used; the interval is NaN when
fewer than 2 remain, when the observed statistic is undefined or (BCa) when no jackknife value
is defined.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
from scipy import special

from engine.errors import InputError

__all__ = ["BOOT_FIELDS", "CI_METHODS", "check_bootstrap_options", "confidence_interval",
           "order_statistics", "replicate_interval"]

CI_METHODS = ("percentile", "basic", "bca", "studentized")
#: Columns of :func:`replicate_interval`.
BOOT_FIELDS = ("ci_low", "ci_high", "n_boot")
_MIN_DEFINED = 2




def check_bootstrap_options(*, method: str, level: float, replicates: int) -> None:
    """One clear InputError for an unknown method, a level outside (0, 1) or bad replicates."""
    if method not in CI_METHODS:
        raise InputError(f"unknown bootstrap interval method {method!r} (choose one of "
                         f"{', '.join(CI_METHODS)})")
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) \
            or not 0 < float(level) < 1:
        raise InputError(f"bootstrap level must be a number between 0 and 1 (e.g. 0.95), got "
                         f"{level!r}")
    if isinstance(replicates, bool) or not isinstance(replicates, (int, np.integer)) \
            or replicates < 1:
        raise InputError(f"bootstrap replicates must be an integer >= 1, got {replicates!r}")


def _rows(a, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != ndim:
        raise InputError(f"{name} must be a {ndim}-D array, got shape {a.shape}")
    return a


def confidence_interval(replicates, observed, *, method: str, level: float,
                        jackknife: Sequence[np.ndarray] | None = None,
                        standard_error=None, t_replicates=None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap interval of each row: (low, high), each (rows,).

    ``replicates`` (rows, B) the statistic of every replicate, ``observed`` (rows,) the statistic
    of the data. ``bca`` needs ``jackknife``: one (rows, n_j) array per stratum (scipy's
    "sample") of the statistic with one unit of that stratum left out. ``studentized`` needs
    ``standard_error`` (rows,) of the observed statistic and ``t_replicates`` (rows, B) =
    (theta*_b - observed) / se*_b (``replicates`` is then not used). Exactly
    ``scipy.stats.bootstrap``'s intervals for percentile/basic/bca (see the module docstring);
    a row with any NaN input gets NaN.
    """
    check_bootstrap_options(method=method, level=level,
                            replicates=max(1, np.shape(replicates)[-1]) if np.ndim(replicates)
                            else 1)
    observed = _rows(observed, "observed", 1)
    if method == "studentized":
        if standard_error is None or t_replicates is None:
            raise InputError("the studentized interval needs standard_error and t_replicates")
        t_replicates = _rows(t_replicates, "t_replicates", 2)
        standard_error = _rows(standard_error, "standard_error", 1)
        width = t_replicates.shape[1]
    else:
        replicates = _rows(replicates, "replicates", 2)
        if replicates.shape[0] != observed.shape[0]:
            raise InputError(f"replicates has {replicates.shape[0]} rows but observed "
                             f"{observed.size}")
        if method == "bca" and jackknife is None:
            raise InputError("the BCa interval needs the jackknife values (one array per "
                             "stratum)")
        width = replicates.shape[1]
    # rows in slices of ~2 MB: the several passes over a slice then run from cache
    step = max(1, _CI_ELEMENTS // max(width, 1))
    parts = []
    for start in range(0, observed.size, step):
        rows = slice(start, start + step)

        def cut(a):
            return None if a is None else a[rows]

        parts.append(_interval(
            cut(replicates) if method != "studentized" else None, observed[rows], method, level,
            None if jackknife is None or method != "bca" else [cut(np.asarray(j))
                                                               for j in jackknife],
            cut(standard_error), cut(t_replicates)))
    if not parts:
        return np.empty(0), np.empty(0)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


#: Rows x replicates per slice of :func:`confidence_interval` (2 MB of float64).
_CI_ELEMENTS = 2**18


def _interval(theta, observed, method, level, jackknife, se, t):
    alpha = (1 - float(level)) / 2
    if method == "studentized":
        q = _quantiles(t, np.array([alpha, 1 - alpha]))
        with np.errstate(invalid="ignore"):
            low = observed - q[:, 1] * se
            high = observed - q[:, 0] * se
        bad = np.isnan(observed) | np.isnan(se)
        low[bad] = np.nan
        high[bad] = np.nan
        return low, high
    if method == "bca":
        p = np.stack(_bca_levels(theta, observed, jackknife, alpha), axis=-1)
    else:
        p = np.array([alpha, 1 - alpha])
    q = _quantiles(theta, p)
    low, high = q[:, 0], q[:, 1]
    if method == "basic":
        low, high = 2 * observed - high, 2 * observed - low
    bad = np.isnan(observed)
    low[bad] = np.nan
    high[bad] = np.nan
    return low, high


def _percentile_of_score(theta: np.ndarray, score: np.ndarray) -> np.ndarray:
    """scipy's ``_percentile_of_score`` ("mean" kind, a fraction): (#< + #<=) / 2B."""
    mask = np.less(theta, score[:, None], out=_scratch("mask", theta.shape, bool))
    below = _row_counts(mask)
    np.less_equal(theta, score[:, None], out=mask)
    below += _row_counts(mask)
    return below / (2 * theta.shape[1])


_SCRATCH = threading.local()


def _scratch(name: str, shape, dtype) -> np.ndarray:
    """A work array of the calling thread, reused between calls (contents undefined): the
    selection's temporaries are a few MB each, and allocating them afresh every call costs
    page faults that take about as long as the arithmetic."""
    size = math.prod(shape)
    held = getattr(_SCRATCH, name, None)
    if held is None or held.size < size or held.dtype != dtype:
        held = np.empty(size, dtype=dtype)
        setattr(_SCRATCH, name, held)
    return held[:size].reshape(shape)


def _row_counts(mask: np.ndarray) -> np.ndarray:
    """True values per row of a C-contiguous boolean matrix (twice as fast as count_nonzero)."""
    return mask.view(np.uint8).sum(axis=1, dtype=np.int64)


def _acceleration(jackknife: Sequence[np.ndarray]) -> np.ndarray:
    """scipy's multi-sample jackknife acceleration: U_ji = (n_j - 1)(mean_j - theta_ji),
    a = sum_j sum_i U^3 / n_j^3 / (6 (sum_j sum_i U^2 / n_j^2)^(3/2))."""
    nums, dens = [], []
    for values in jackknife:
        # row sums in C order: numpy adds a row pairwise only when the row is contiguous, so
        # the bits would otherwise depend on the array's layout and row count
        values = np.ascontiguousarray(values, dtype=np.float64)
        n = float(values.shape[-1])
        u = (n - 1) * (values.mean(axis=-1, keepdims=True) - values)
        square = u * u
        dens.append(square.sum(axis=-1) / n**2)
        square *= u  # u * u * u: numpy's u**3 calls pow, ~50 ns a value
        nums.append(square.sum(axis=-1) / n**3)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1 / 6 * sum(nums) / sum(dens) ** (3 / 2)


def _bca_levels(theta, observed, jackknife, alpha):
    """scipy's ``_bca_interval``: the per-row quantile levels (alpha_1, alpha_2)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z0 = special.ndtri(_percentile_of_score(theta, observed))
        a = _acceleration(jackknife)
        z_alpha = float(special.ndtri(alpha))
        num1 = z0 + z_alpha
        alpha_1 = special.ndtr(z0 + num1 / (1 - a * num1))
        num2 = z0 - z_alpha
        alpha_2 = special.ndtr(z0 + num2 / (1 - a * num2))
    return alpha_1, alpha_2


def _quantiles(a: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``scipy.stats.quantile(a, p, method="linear", axis=-1)`` of each row: (rows, m), with
    ``p`` (m,) for all rows or (rows, m); NaN where the row has a NaN or p is outside [0, 1].

    Hyndman & Fan type 7 with scipy's arithmetic: jg = p n + (1 - p), j = floor(jg) - 1,
    g = jg mod 1, q = (1 - g) y[j] + g y[j + 1] (indices clipped to the row)."""
    rows, n = a.shape
    n_float = float(n)
    nan_rows = _nan_rows(a)
    p = np.broadcast_to(np.asarray(p, dtype=np.float64), (rows, np.shape(p)[-1]))
    bad_p = (p > 1) | (p < 0) | np.isnan(p)
    p = np.where(bad_p, 0.5, p)
    jg = p * n_float + (1 - p)
    jp1 = jg // 1
    j = jp1 - 1
    g = jg % 1
    g[j < 0] = 0
    j = np.clip(j, 0.0, n_float - 1).astype(np.intp)
    jp1 = np.clip(jp1, 0.0, n_float - 1).astype(np.intp)
    if n == 1:
        values = np.repeat(a[:, :, None], 2, axis=2) * np.ones(j.shape)[:, :, None]
    else:
        # ranks j and j + 1 of each level (j + 1 is jp1 except at the clipped ends)
        first = np.minimum(j, n - 2)
        values = _select(a, first, 2, nan_rows)
        values = np.where((jp1 > first)[:, :, None], values, values[:, :, :1])
        values = np.stack([np.take_along_axis(values[:, :, 0:2], (j - first)[:, :, None],
                                              axis=2)[:, :, 0], values[:, :, 1]], axis=2)
    with np.errstate(invalid="ignore"):
        out = (1 - g) * values[:, :, 0] + g * values[:, :, 1]
    out[bad_p] = np.nan
    out[nan_rows] = np.nan
    return out


def _nan_rows(a: np.ndarray) -> np.ndarray:
    """Rows with a NaN (one cheap pass: only rows whose sum is not finite are searched)."""
    with np.errstate(invalid="ignore"):
        suspect = np.flatnonzero(~np.isfinite(a.sum(axis=1)))
    out = np.zeros(a.shape[0], dtype=bool)
    if suspect.size:
        out[suspect] = np.isnan(a[suspect]).any(axis=1)
    return out


def order_statistics(a: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The ``ranks`` (rows, m; 0-based) order statistics of each row of ``a`` (rows, n): exact
    values (NaN sorts last), found without sorting long rows (see :func:`_select`)."""
    a = np.asarray(a, dtype=np.float64)
    ranks = np.asarray(ranks, dtype=np.intp)
    return _select(a, ranks, 1)[:, :, 0]


#: Rows shorter than this are sorted; longer ones are searched by brackets (``_select``).
_SELECT_MIN = 1024
#: Leading replicates sorted to find the brackets, and the bracket's half-width in binomial
#: standard deviations of a sub-sample rank.
_SUBSAMPLE = 512
_MARGIN = 4.0


def _select(a: np.ndarray, first: np.ndarray, width: int,
            nan_rows: np.ndarray | None = None) -> np.ndarray:
    """Order statistics ``first .. first + width - 1`` (first: (rows, t)) of each row of ``a``:
    (rows, t, width), exact.

    Sorting every row of B = 10,000 replicates costs several times the matrix products that
    make them, so long rows are searched instead. The first ``_SUBSAMPLE`` values of a row
    (replicates are exchangeable, so a random sub-sample) are sorted; for each target, the
    sub-sample's order statistics a few binomial standard deviations either side of the
    target's expected sub-rank bracket it ([lo, hi], open at the row's end for a tail). The
    values in the bracket are gathered (one comparison pass, one extraction; an upper tail
    negated, so that a tail's target sits at the same position in every row) and only those
    are partitioned (when the positions differ between rows, as for BCa, at the extreme ones,
    and what lies between is sorted): a value's rank in the row is #(row < lo) + its rank
    among the gathered values. A row whose bracket misses its
    target (an unlucky sub-sample, heavy ties) is sorted whole: exact either way, as are rows
    with a NaN (``nan_rows``, found here when not given; NaN sorts last).
    """
    rows, n = a.shape
    first = np.asarray(first, dtype=np.intp)
    targets = first.shape[1]
    offsets = np.arange(width)
    if n < _SELECT_MIN or rows == 0:
        ranks = (first[:, :, None] + offsets).reshape(rows, -1)
        return np.take_along_axis(np.sort(a, axis=1), ranks, axis=1).reshape(rows, targets,
                                                                            width)
    a = np.ascontiguousarray(a)
    s = _SUBSAMPLE
    sub = np.sort(a[:, :s], axis=1)
    centre = (first + width / 2) * (s / n)
    margin = _MARGIN * np.sqrt(centre * (1 - centre / s) + 1) + 1
    lo_i = np.floor(centre - margin).astype(np.intp)
    hi_i = np.ceil(centre + margin).astype(np.intp)
    lo = np.where(lo_i >= 0, np.take_along_axis(sub, np.clip(lo_i, 0, s - 1), axis=1), -np.inf)
    hi = np.where(hi_i < s, np.take_along_axis(sub, np.clip(hi_i, 0, s - 1), axis=1), np.inf)
    # a bracket's expected share of the row, from the sub-sample
    share = (np.minimum(hi_i, s) - np.maximum(lo_i, -1)) / s
    out = np.empty((rows, targets, width))
    valid = ~(_nan_rows(a) if nan_rows is None else nan_rows)
    row_starts = np.arange(rows + 1) * n
    mask = _scratch("mask", a.shape, bool)
    for c in range(targets):  # a handful of targets
        lower = bool((lo_i[:, c] < 0).all())
        upper = not lower and bool((hi_i[:, c] >= s).all())
        if lower:
            np.less_equal(a, hi[:, c:c + 1], out=mask)
            below = np.zeros(rows, dtype=np.int64)
        elif upper:
            np.greater_equal(a, lo[:, c:c + 1], out=mask)
        else:
            np.less(a, lo[:, c:c + 1], out=mask)
            below = _row_counts(mask)
            np.greater_equal(a, lo[:, c:c + 1], out=mask)
            mask &= np.less_equal(a, hi[:, c:c + 1], out=_scratch("upper", a.shape, bool))
        flat = np.flatnonzero(mask)  # row by row
        counts = np.diff(np.searchsorted(flat, row_starts))
        # a row gathering far more than the sub-sample predicts (a mass of tied values at the
        # bracket's end, an unrepresentative sub-sample) is sorted whole
        crowded = counts > 4 * share[:, c] * n + 64
        if crowded.any():
            flat = flat[~np.repeat(crowded, counts)]
            counts[crowded] = 0
            valid &= ~crowded
        span = max(int(counts.max()), width)
        gathered = _scratch("gathered", (rows, span), np.float64)
        gathered.fill(np.inf)
        values = np.take(a.ravel(), flat)
        if upper:  # descending: the target's position is n - 1 - rank in every row
            np.negative(values, out=values)
        gathered[np.arange(span) < counts[:, None]] = values
        if upper:
            ranks = n - 1 - (first[:, c:c + 1] + offsets[::-1])
        else:
            ranks = first[:, c:c + 1] + offsets - below[:, None]
        valid &= (ranks[:, 0] >= 0) & (ranks[:, -1] < counts)
        ranks = np.clip(ranks, 0, span - 1)
        first_pos, last_pos = int(ranks.min()), int(ranks.max())
        if (ranks == ranks[0]).all():  # the same positions in every row: partition
            gathered.partition(ranks[0], axis=1)
            picked = gathered[:, ranks[0]]
        else:  # (BCa) partition at the extreme positions, sort what lies between
            gathered.partition([first_pos, last_pos], axis=1)
            between = np.sort(gathered[:, first_pos:last_pos + 1], axis=1)
            picked = np.take_along_axis(between, ranks - first_pos, axis=1)
        out[:, c] = -picked[:, ::-1] if upper else picked
    redo = np.flatnonzero(~valid)
    if redo.size:
        ranks = (first[redo][:, :, None] + offsets).reshape(redo.size, -1)
        out[redo] = np.take_along_axis(np.sort(a[redo], axis=1), ranks,
                                       axis=1).reshape(redo.size, targets, width)
    return out


def replicate_interval(theta: np.ndarray, observed: np.ndarray, *, method: str, level: float,
                       jackknife: list[np.ndarray] | None = None,
                       theta_se: np.ndarray | None = None,
                       observed_se: np.ndarray | None = None) -> np.ndarray:
    """(rows, 3) ``BOOT_FIELDS`` from replicate statistics ``theta`` (rows, B) and the
    ``observed`` statistic (rows,), undefined replicates left out per row (module docstring).

    ``jackknife`` (BCa): leave-one-unit-out values per stratum; ``theta_se``, ``observed_se``
    (studentized): the standard errors of the replicates and of the observed statistic. Rows
    with the same number of defined replicates (and pattern of defined jackknife values) go to
    ``confidence_interval`` together, their defined replicates first, in replicate order.
    """
    theta = np.asarray(theta, dtype=np.float64)
    observed = np.asarray(observed, dtype=np.float64)
    studentized = method == "studentized"
    defined = np.isfinite(theta)
    t = None
    if studentized:
        if theta_se is None or observed_se is None:
            raise ValueError("studentized intervals need theta_se and observed_se")
        with np.errstate(invalid="ignore", divide="ignore"):
            t = (theta - observed[:, None]) / theta_se
        defined &= np.isfinite(t) & (theta_se > 0)
        t = t if defined.all() else _compact(defined, t)
    n_boot = defined.sum(axis=1)
    out = np.full((theta.shape[0], len(BOOT_FIELDS)), np.nan)
    out[:, 2] = n_boot
    ok = (n_boot >= _MIN_DEFINED) & np.isfinite(observed)
    if studentized:
        ok &= np.isfinite(observed_se) & (observed_se > 0)
    if method == "bca":
        jackknife = [np.asarray(v, dtype=np.float64) for v in jackknife]
        ok &= np.any([np.isfinite(v).any(axis=1) for v in jackknife], axis=0)
    if not defined.all():
        theta = _compact(defined, theta)
    for count in np.unique(n_boot[ok]):
        rows = np.flatnonzero(ok & (n_boot == count))
        groups = (_by_jackknife_pattern(rows, [v[rows] for v in jackknife])
                  if method == "bca" else [(rows, None)])
        for group, jk in groups:
            extra = {} if jk is None else {"jackknife": jk}
            if studentized:
                extra |= {"standard_error": observed_se[group], "t_replicates": t[group, :count]}
            low, high = confidence_interval(theta[group, :count], observed[group],
                                            method=method, level=level, **extra)
            out[group, 0] = low
            out[group, 1] = high
    return out


def _compact(defined: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row, the defined values first (in replicate order), the others after them."""
    return np.take_along_axis(values, np.argsort(~defined, axis=1, kind="stable"), axis=1)


def _by_jackknife_pattern(rows: np.ndarray, jackknife: list[np.ndarray]):
    """``rows`` grouped by their pattern of defined jackknife values (``jackknife`` restricted
    to ``rows``): each group with its jackknife arrays cut to the defined values (a stratum
    with none left out)."""
    defined = np.concatenate([np.isfinite(v) for v in jackknife], axis=1)
    if defined.all():
        yield rows, jackknife
        return
    bounds = np.cumsum([0] + [v.shape[1] for v in jackknife])
    patterns, which = np.unique(defined, axis=0, return_inverse=True)
    which = which.ravel()
    for k, pattern in enumerate(patterns):
        at = np.flatnonzero(which == k)
        kept = [v[at][:, pattern[lo:hi]] for v, lo, hi in zip(jackknife, bounds[:-1], bounds[1:])
                if pattern[lo:hi].any()]
        yield rows[at], kept
