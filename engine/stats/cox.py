"""Cox proportional hazards, one model per feature, fitted for a block of features at once.

Each feature gets its own model: the feature as the covariate of interest (continuous, or
dichotomised at its own quantile: x > quantile -> 1), optionally plus adjustment covariates
shared by every feature. All models of a block are fitted together by Newton-Raphson: the
samples are sorted by time once (longest first, so that every risk set is a prefix), risk-set
sums are cumulative sums along the samples, and each iteration is a few array operations on
(samples x features) planes, one per covariate and covariate product. No Python loop runs over
features (only over Newton iterations, step halvings, the size of the largest tie and, for the
score test with covariates, the distinct missing-value patterns of the block). Sums run in a
fixed order, so a feature's result does not depend on the chunk it is computed in.

Conventions (reference: R ``survival::coxph``; statsmodels ``PHReg``):

* ties: ``efron`` (R ``coxph`` default) or ``breslow`` (statsmodels ``PHReg`` default).
* A feature's missing values drop those samples from that feature's model only (weights 0).
* effect: the feature's log hazard ratio (per unit, or high vs low for a split); se from the
  inverse information at the estimate; statistic = effect / se (Wald z); p_value two-sided
  Wald; hazard_ratio, ci_low, ci_high = exp(effect), exp(effect -+ z se).
* p_logrank, the score test of effect = 0. Without adjustment covariates: the score test of
  the discrete (exact-ties) partial likelihood at 0, whose variance is hypergeometric: for a
  split it is the log-rank test of R ``survdiff``, for a continuous feature R
  ``coxph(ties = "exact")$score``; it equals the Efron/Breslow score test when no event times
  are tied. With covariates: the score test of the feature at the covariates-only fit on the
  same samples, with the ``ties`` approximation (R ``coxph(init = c(0, fit0$coef),
  iter.max = 0)$score``).
* Convergence is judged on the Newton step (< 1e-9 in units of each covariate's standard
  deviation, at most 50 iterations), so a monotone likelihood (infinite estimate, e.g. a split
  where one group has no event) never converges: those features get NaN effect, se,
  statistic, p_value, hazard ratio and interval and ``converged`` = 0, where R returns a huge
  finite coefficient with a warning. A constant feature, a feature without events, or an
  information matrix that is singular (a feature collinear with the covariates: R drops the
  aliased covariate and reports the feature) gives NaN as well, p_logrank included for the
  singular case.
* Bootstrap (``cox(..., bootstrap=...)``, ``engine.resample.statistic_bootstrap``): ci_low /
  ci_high become the bootstrap interval of the hazard ratio, computed on the hazard-ratio scale
  from the replicates' hazard ratios, and the Wald interval moves to ci_low_wald /
  ci_high_wald. The resampling unit is a sample with its (time, event, covariates, feature
  values), or a cluster of ``by``; by default within event status (``strata: true``: events
  and censored samples are resampled separately, so every replicate keeps the number of
  events, as logistic keeps its outcome classes). Each replicate refits every feature with
  the analysis' ties method (``bootstrap_hazard_ratio``); with ``split`` the feature's
  threshold is recomputed on the replicate's samples (the data-dependent cut is part of the
  estimator, as logistic's median split; a threshold fixed on the full data would ignore its
  variability and understate the interval), and a covariate constant in a replicate is left
  out of that replicate's model (as ``cox`` leaves it out of a stratum). Replicates whose fit
  does not converge to a finite estimate (monotone likelihood, e.g. a split group without
  events; a singular information matrix) are undefined and left out (``n_boot`` counts those
  used, as ``rms::bootcov`` counts the fits that converged). The studentized interval uses
  the delta-method standard error of the hazard ratio, hazard_ratio * se.

Inputs may be float32; everything is computed in float64.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import special

from engine.errors import InputError, preview
from engine.resample import statistic_bootstrap as sb
from engine.stats import multitest
from engine.stats.features import (
    MISSING_LABELS,
    feature_matrix,
    map_features,
    sample_annotation,
    strata,
    stratified_result,
)
from engine.stats.features import adjust as adjust_p
from engine.stats.survival import check_confidence, check_split, quantile_split, survival_outcome

__all__ = ["FIELDS", "TIES", "bootstrap_hazard_ratio", "cox", "cox_ph", "covariate_matrix"]

FIELDS = ("effect", "se", "statistic", "p_value", "hazard_ratio", "ci_low", "ci_high",
          "p_logrank", "n", "n_events", "converged", "threshold")
TIES = ("efron", "breslow")

MAX_ITER = 50
STEP_TOLERANCE = 1e-9
_MAX_HALVINGS = 30
_SINGULAR = np.finfo(np.float64).eps ** 0.75  # R coxph.control's toler.chol
_BLOCK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class _RiskSets:
    """Index bookkeeping of samples sorted by time, longest first; computed once per block.

    With that order the risk set of an event at time t (samples with time >= t) is a prefix
    of the samples, so risk-set sums are cumulative sums read at the prefix's end.
    """

    events: np.ndarray        # positions of the event samples
    event_end: np.ndarray     # for each event sample: last position of its risk set
    group_starts: np.ndarray  # offsets into ``events`` where a new event time begins
    group_sizes: np.ndarray   # events at each event time
    group_of: np.ndarray      # for each event sample: its event-time group

    @classmethod
    def build(cls, time_sorted: np.ndarray, event_sorted: np.ndarray) -> _RiskSets:
        n = time_sorted.size
        new = np.ones(n, bool)
        new[1:] = time_sorted[1:] != time_sorted[:-1]
        starts = np.flatnonzero(new)
        last = (np.append(starts[1:], n) - 1)[np.cumsum(new) - 1]
        events = np.flatnonzero(event_sorted > 0)
        t_ev = time_sorted[events]
        first = np.ones(events.size, bool)
        first[1:] = t_ev[1:] != t_ev[:-1]
        starts = np.flatnonzero(first)
        sizes = np.diff(np.append(starts, events.size))
        return cls(events, last[events], starts, sizes, np.cumsum(first) - 1)


def _sum_axis(a: np.ndarray, axis: int) -> np.ndarray:
    """Sum along ``axis`` strictly in order, whatever the other dimensions.

    ``np.sum`` switches to pairwise summation when the other dimensions collapse to size 1
    (e.g. a single feature left in a Newton iteration), which changes the last bits and would
    make results depend on the chunking; an accumulation is always sequential.
    """
    if a.shape[axis] == 0:
        return np.zeros(a.shape[:axis] + a.shape[axis + 1:])
    return np.take(np.add.accumulate(a, axis=axis), -1, axis=axis)


def _event_time_sums(a: np.ndarray, risk: _RiskSets) -> np.ndarray:
    """Sums of ``a`` (..., events, features) over the events of each event time, in order."""
    out = a[..., risk.group_starts, :].copy()
    for offset in range(1, int(risk.group_sizes.max(initial=1))):  # the largest tie
        tied = risk.group_sizes > offset
        out[..., tied, :] += a[..., risk.group_starts[tied] + offset, :]
    return out


def _group_sums(a: np.ndarray, risk: _RiskSets) -> np.ndarray:
    """Sums of ``a`` (..., events, features) over each event time, repeated per event sample."""
    return _event_time_sums(a, risk)[..., risk.group_of, :]


def _partial_likelihood(z, w, beta, risk: _RiskSets, efron: bool):
    """Log partial likelihood, score and information of every feature's model at ``beta``.

    z (p, samples, features) covariates of samples sorted by time (longest first), w (samples,
    features) 0/1 weights, beta (features, p). Every quantity is a contiguous (samples,
    features) plane, so the risk-set cumulative sums run over contiguous rows. Efron's
    correction gives the l-th of the d tied events of a time (l = 0..d-1, counting present
    events only) the denominator S0 - l/d D0, D the sums over the tied events; Breslow uses
    S0 for all of them.
    """
    p, n, f = z.shape
    rows, cols = np.triu_indices(p)
    # plain multiply-adds: einsum's SIMD kernels may fuse them (FMA) in the vector body but not
    # in the tail, which would make results depend on the chunking
    eta = z[0] * beta[:, 0]
    for j in range(1, p):
        eta += z[j] * beta[:, j]
    shift = np.max(np.where(w > 0, eta, -np.inf), axis=0)
    # planes r, r z_j and r z_j z_k (j <= k) in one array -> one cumulative sum
    parts = np.empty((1 + p + rows.size, n, f))
    np.exp(np.minimum(eta - shift, 0.0), out=parts[0])  # relative risk / the largest
    parts[0] *= w
    np.multiply(parts[0], z, out=parts[1:1 + p])
    np.multiply(parts[1 + rows], z[cols], out=parts[1 + p:])
    ev = risk.events
    at_risk = np.cumsum(parts, axis=1)[:, risk.event_end]
    w_ev = w[ev]
    if efron:
        d = _group_sums(w_ev, risk)
        before = np.cumsum(w_ev, axis=0) - w_ev
        tied_before = before - before[risk.group_starts][risk.group_of]
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(d > 0, tied_before / d, 0.0)
        at_risk -= fraction * _group_sums(parts[:, ev], risk)
    used = w_ev > 0
    s0 = np.where(used, at_risk[0], 1.0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = at_risk[1:1 + p] / s0
        loglik = _sum_axis(np.where(used, eta[ev] - shift - np.log(s0), 0.0), 0)
        score = _sum_axis(w_ev * (z[:, ev] - mean), 1).T
        tri = _sum_axis(w_ev * (at_risk[1 + p:] / s0 - mean[rows] * mean[cols]), 1).T
    info = np.empty((f, p, p))
    info[:, rows, cols] = tri
    info[:, cols, rows] = tri
    return loglik, score, info


def _solve(info: np.ndarray, score: np.ndarray):
    """Newton steps info^-1 score where info is finite and positive definite; else NaN."""
    f, p = score.shape
    step = np.full((f, p), np.nan)
    finite = np.isfinite(info).all(axis=(1, 2)) & np.isfinite(score).all(axis=1)
    ok = finite.copy()
    if finite.any():
        eig = np.linalg.eigvalsh(info[finite])
        ok[finite] = (eig[:, 0] > _SINGULAR * eig[:, -1]) & (eig[:, -1] > 0)
    if ok.any():
        step[ok] = np.linalg.solve(info[ok], score[ok][..., None])[..., 0]
    return step, ok


def _newton(z, w, risk: _RiskSets, efron: bool, beta: np.ndarray, active: np.ndarray,
            max_iter: int, tol: float):
    """Maximise every active feature's partial likelihood; returns beta, info, converged.

    z (p, samples, features), w (samples, features), beta (features, p) the start.
    Newton-Raphson with step halving where the log-likelihood would drop (as R coxph);
    converged when the largest step is below ``tol`` (covariates are standardised, so the
    step is in standard deviations). Features that fail stay unconverged.
    """
    beta = beta.copy()
    f, p = beta.shape
    info_out = np.full((f, p, p), np.nan)
    converged = np.zeros(f, bool)
    idx = np.flatnonzero(active)
    if idx.size == 0:
        return beta, info_out, converged
    loglik, score, info = _partial_likelihood(z[..., idx], w[:, idx], beta[idx], risk, efron)
    for _ in range(max_iter):
        step, ok = _solve(info, score)
        idx, step, loglik = idx[ok], step[ok], loglik[ok]
        if idx.size == 0:
            break
        zi, wi, old = z[..., idx], w[:, idx], beta[idx]
        new = old + step
        ll_new, score, info = _partial_likelihood(zi, wi, new, risk, efron)
        for _ in range(_MAX_HALVINGS):
            worse = ~(ll_new >= loglik - 1e-12 * np.abs(loglik))  # NaN counts as worse
            if not worse.any():
                break
            step[worse] /= 2.0
            new[worse] = old[worse] + step[worse]
            ll_new[worse], score[worse], info[worse] = _partial_likelihood(
                zi[..., worse], wi[:, worse], new[worse], risk, efron)
        good = ll_new >= loglik - 1e-12 * np.abs(loglik)
        beta[idx] = new
        done = good & (np.abs(step).max(axis=1) < tol)
        converged[idx[done]] = True
        info_out[idx[done]] = info[done]
        keep = good & ~done
        idx, loglik, score, info = idx[keep], ll_new[keep], score[keep], info[keep]
        if idx.size == 0:
            break
    return beta, info_out, converged


def _logrank_score(x0, w, risk: _RiskSets):
    """Chi-square of the exact-ties score test at 0 for one covariate (log-rank for 0/1).

    x0 (samples, features) centred values (0 where missing), w 0/1 weights, samples sorted
    by time (longest first). U = sum over event times of (sum of x over the events - d * mean
    of x at risk); V = sum d (n - d) / (n - 1) * variance of x at risk (the hypergeometric
    variance of R survdiff).
    """
    wx = w * x0
    at_risk = np.cumsum(np.stack([w, wx, wx * x0], axis=-1), axis=0)
    at_risk = at_risk[risk.event_end[risk.group_starts]]
    n, s1, s2 = at_risk[..., 0], at_risk[..., 1], at_risk[..., 2]
    ev = risk.events
    d = _event_time_sums(w[ev], risk)
    o = _event_time_sums(wx[ev], risk)
    with np.errstate(invalid="ignore", divide="ignore"):
        m1 = np.where(n > 0, s1 / n, 0.0)
        u = _sum_axis(o - d * m1, 0)
        var_at_risk = np.where(n > 0, s2 / n, 0.0) - m1 * m1
        v = _sum_axis(np.where(n > 1, d * (n - d) / (n - 1) * var_at_risk, 0.0), 0)
        return np.where(v > 0, u * u / v, np.nan)


def _missing_patterns(present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct columns of ``present`` (samples, features) and each feature's pattern index."""
    n, f = present.shape
    if present.all():
        return np.ones((n, 1), bool), np.zeros(f, np.intp)
    packed = np.ascontiguousarray(np.packbits(present, axis=0).T)
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return present[:, first], inverse.ravel()


def _cox_rows(x, time, event, covariates, efron, z_crit, max_iter, tol):
    """``cox_ph`` on one memory-sized block: x (samples, features) sorted by time, longest
    first; covariates (samples, k) standardised."""
    n, f = x.shape
    k = covariates.shape[1]
    out = np.full((f, len(FIELDS)), np.nan)
    present = ~np.isnan(x)
    w = present.astype(np.float64)
    n_obs = w.sum(axis=0)  # counts: exact in any order
    n_ev = (w * event[:, None]).sum(axis=0)
    out[:, FIELDS.index("n")] = n_obs
    out[:, FIELDS.index("n_events")] = n_ev
    out[:, FIELDS.index("converged")] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_obs > 0, _sum_axis(np.where(present, x, 0.0), 0) / n_obs, 0.0)
        centred = np.where(present, x - mean, 0.0)
        sd = np.sqrt(_sum_axis(centred * centred, 0) / n_obs)
    # R's coxph gives NA for a feature that is constant on its samples
    defined = (n_ev >= 1) & (n_obs >= 2) & (sd > 1e-12 * np.maximum(np.abs(mean), 1.0))
    if not defined.any():
        return out
    risk = _RiskSets.build(time, event)
    sd = np.where(defined, sd, 1.0)
    x0 = centred / sd
    z = np.empty((1 + k, n, f))
    z[0] = x0
    z[1:] = covariates.T[:, :, None]
    beta0 = np.zeros((f, 1 + k))
    if k == 0:
        chi_score = _logrank_score(x0, w, risk)
    else:
        # the covariates-only fit depends on the samples only: once per missing-value pattern
        patterns, inverse = _missing_patterns(present)
        n_pat = patterns.shape[1]
        zp = np.broadcast_to(covariates.T[:, :, None], (k, n, n_pat))
        gamma, _, null_ok = _newton(zp, patterns.astype(np.float64), risk, efron,
                                    np.zeros((n_pat, k)), np.ones(n_pat, bool), max_iter, tol)
        beta0[:, 1:] = np.where(null_ok[inverse, None], gamma[inverse], 0.0)
        _, score, info = _partial_likelihood(z, w, beta0, risk, efron)
        step, ok = _solve(info, score)
        chi_score = np.where(ok & null_ok[inverse], (score * step).sum(axis=1), np.nan)
    out[:, FIELDS.index("p_logrank")] = np.where(defined, special.chdtrc(1.0, chi_score), np.nan)
    beta, info, converged = _newton(z, w, risk, efron, beta0, defined, max_iter, tol)
    _, ok = _solve(info, np.zeros(beta.shape))
    var = np.full(f, np.nan)
    if ok.any():
        var[ok] = np.linalg.inv(info[ok])[:, 0, 0]
    fit = converged & ok & (var > 0)
    effect = beta[:, 0] / sd
    with np.errstate(invalid="ignore", over="ignore"):
        se = np.sqrt(var) / sd
        statistic = effect / se
        columns = {"effect": effect, "se": se, "statistic": statistic,
                   "p_value": np.minimum(2.0 * special.ndtr(-np.abs(statistic)), 1.0),
                   "hazard_ratio": np.exp(effect), "ci_low": np.exp(effect - z_crit * se),
                   "ci_high": np.exp(effect + z_crit * se)}
    for name, values in columns.items():
        out[:, FIELDS.index(name)] = np.where(fit, values, np.nan)
    out[:, FIELDS.index("converged")] = fit.astype(np.float64)
    return out


def cox_ph(x, time, event, *, covariates=None, split=None, ties: str = "efron",
           confidence: float = 0.95, max_iter: int = MAX_ITER,
           tol: float = STEP_TOLERANCE) -> np.ndarray:
    """One Cox model per row of ``x`` (features x samples, NaN = missing): (features, 12).

    ``time`` (samples,) >= 0 and ``event`` (samples,) 0/1 must be complete; ``covariates``
    (samples, k) complete adjustment covariates shared by every feature (or None); ``split``
    None (continuous feature) or a quantile in (0, 1) (0.5: median split; the row's quantile of
    its non-missing values, R ``quantile(type = 7)``). Columns are ``FIELDS``: effect, se,
    statistic, p_value, hazard_ratio, ci_low, ci_high, p_logrank, n, n_events, converged (1/0)
    and threshold (the split value, NaN without a split). See the module docstring.
    Reference: R ``coxph(Surv(time, event) ~ x + covariates, ties = ties)``; statsmodels
    ``PHReg(time, exog, status, ties=ties)``.
    """
    if ties not in TIES:
        raise InputError(f"unknown ties method {ties!r} (choose from {', '.join(TIES)})")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D (features x samples) array, got shape {x.shape}")
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=np.float64)
    f, n = x.shape
    covariates = (np.zeros((n, 0)) if covariates is None
                  else np.asarray(covariates, dtype=np.float64).reshape(n, -1))
    if time.shape != (n,) or event.shape != (n,):
        raise ValueError(f"time and event must have one value per sample ({n})")
    if np.isnan(time).any() or np.isnan(event).any() or np.isnan(covariates).any():
        raise ValueError("time, event and covariates must be complete (drop those samples)")
    threshold = np.full(f, np.nan)
    if split is not None:
        x, threshold = quantile_split(x, float(split))
    order = np.argsort(-time, kind="stable")  # longest first: risk sets are prefixes
    x, time, event = x[:, order].T, time[order], event[order]
    # standardised covariates: the fit is invariant to it, the step tolerance becomes unitless
    c = covariates[order]
    if c.shape[1]:
        c = c - c.mean(axis=0)
        scale = np.sqrt((c * c).mean(axis=0))
        c = c / np.where(scale > 0, scale, 1.0)
    z_crit = float(special.ndtri(0.5 + confidence / 2.0))
    p = 1 + c.shape[1]
    per_feature = max(n, 1) * (1 + p + p * (p + 1) // 2) * 8 * 4
    rows = max(1, _BLOCK_BYTES // per_feature)
    out = np.concatenate(
        [_cox_rows(np.ascontiguousarray(x[:, s:s + rows]), time, event, c, ties == "efron",
                   z_crit, max_iter, tol) for s in range(0, f, rows)]
        or [np.empty((0, len(FIELDS)))], axis=0)
    out[:, FIELDS.index("threshold")] = threshold
    return out


def covariate_matrix(ds: xr.Dataset, names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Adjustment covariates as a (samples, k) float matrix (NaN = missing) and column names.

    Numeric annotations are used as they are; text annotations are treatment-coded: one 0/1
    column per level but the first (sorted) level, named ``name[level]`` (R's default
    contrasts for a factor).
    """
    columns, labels = [], []
    for name in names:
        values = sample_annotation(ds, name, "covariate")
        if values.dtype.kind in "fiub":
            columns.append(values.astype(np.float64))
            labels.append(name)
            continue
        text = np.array([str(v) for v in values], dtype=object)
        missing = np.isin(text, MISSING_LABELS)
        levels = sorted(set(text[~missing]))
        if len(levels) < 2:
            raise InputError(f"covariate {name!r} has {len(levels)} value(s) "
                             f"({preview(levels)}); a covariate needs at least two")
        for level in levels[1:]:
            columns.append(np.where(missing, np.nan, (text == level).astype(np.float64)))
            labels.append(f"{name}[{level}]")
    n = ds.sizes["sample"]
    return (np.stack(columns, axis=1) if columns else np.zeros((n, 0))), labels


# --- bootstrap --------------------------------------------------------------------------------


def bootstrap_hazard_ratio(x, *, time, event, covariates=None, split=None, ties: str = "efron",
                           studentized: bool = False):
    """The bootstrap statistic of a block (``statistic_bootstrap`` protocol): a function of a
    replicate's sample positions ``idx`` giving every row's hazard ratio refitted by ``cox_ph``
    on those samples of ``x`` with their time, event and covariates (covariates constant on
    the replicate left out; with ``split`` the threshold of the replicate's values), NaN where
    the fit does not converge to a finite estimate; with ``studentized`` also its delta-method
    standard error hazard_ratio * se."""
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=np.float64)
    n = time.size
    covariates = (np.zeros((n, 0)) if covariates is None
                  else np.asarray(covariates, dtype=np.float64).reshape(n, -1))
    hr, se = FIELDS.index("hazard_ratio"), FIELDS.index("se")

    def replicate(idx):
        c = covariates[idx]
        varying = (c != c[:1]).any(axis=0)
        out = cox_ph(x[:, idx], time[idx], event[idx], covariates=c[:, varying], split=split,
                     ties=ties)
        if not studentized:
            return out[:, hr]
        return np.column_stack([out[:, hr], out[:, hr] * out[:, se]])

    return replicate


@dataclass(frozen=True)
class _Bootstrap:
    units: sb.ResampleUnits | None  # None: the stratum cannot be resampled (NaN intervals)
    options: dict


def _fit(x, *, samples, time, event, covariates, split, ties, confidence, bootstrap=None):
    """One stratum of a chunk: the kernel's FIELDS, and with ``bootstrap`` the BOOT_FIELDS."""
    x = x[:, samples]
    fitted = cox_ph(x, time, event, covariates=covariates, split=split, ties=ties,
                    confidence=confidence)
    if bootstrap is None:
        return fitted
    if bootstrap.units is None:
        return np.concatenate([fitted, sb.empty_interval(x.shape[0])], axis=1)
    statistic = functools.partial(bootstrap_hazard_ratio, time=time, event=event,
                                  covariates=covariates, split=split, ties=ties,
                                  studentized=bootstrap.options["method"] == "studentized")
    boot = sb.bootstrap_statistic(x, statistic, bootstrap.units, **bootstrap.options)
    return np.concatenate([fitted, boot], axis=1)


def _stratified(block, *, strata_args, options, bootstrap=None):
    """One read of a chunk: ``cox_ph`` on each stratum's samples, fields side by side (each
    stratum's bootstrap fields after its own)."""
    return np.concatenate([_fit(block, **a, **options,
                                bootstrap=None if bootstrap is None else bootstrap[s])
                           for s, a in enumerate(strata_args)], axis=1)


def _descriptions(split, covariates, ties, confidence, adjust):
    level = f"{confidence * 100:g}%"
    unit = ("high (value > the feature's threshold) vs low" if split is not None
            else "per unit of the feature")
    adjusted = f", adjusted for {', '.join(covariates)}" if covariates else ""
    score = ("score test of effect = 0 at the covariates-only fit (ties " + ties + ")"
             if covariates else
             "score test of effect = 0 with exact-ties variance: the log-rank test "
             + ("of high vs low (R survdiff)" if split is not None
                else "for a continuous feature (R coxph(ties='exact') score test)"))
    return {
        "effect": f"log hazard ratio {unit}{adjusted} (Cox model, ties {ties})",
        "se": "standard error of the log hazard ratio (inverse information)",
        "statistic": "Wald z = effect / se",
        "p_value": "two-sided Wald p-value of the log hazard ratio",
        "p_adj": f"{adjust} adjusted Wald p-value over the features with a p-value"
                 " (separately per stratum)",
        "hazard_ratio": f"hazard ratio exp(effect) {unit}",
        "ci_low": f"lower bound of the {level} Wald confidence interval of the hazard ratio",
        "ci_high": f"upper bound of the {level} Wald confidence interval of the hazard ratio",
        "p_logrank": f"p-value of the {score}",
        "n": "samples in the feature's model (with time, event, covariates and a value)",
        "n_events": "events among those samples",
        "converged": "1 if the fit converged to a finite estimate; 0 for a monotone likelihood "
                     "(infinite hazard ratio), a constant feature, no events or a singular "
                     "information matrix (effect, se, p_value and interval are then NaN)",
        "threshold": "the feature's split value (its quantile over the samples of the model): "
                     "high is value > threshold",
    }


def cox(ds: xr.Dataset, *, time: str, event: str, event_value=None, split=None,
        covariates: Sequence[str] = (), stratify_by: str | None = None, ties: str = "efron",
        variable: str = "expression", features: Sequence[str] | None = None,
        confidence: float = 0.95, adjust: str = "BH", bootstrap=None) -> xr.Dataset:
    """A Cox proportional hazards model per feature, lazily.

    ``time`` is a numeric sample annotation (follow-up, >= 0); ``event`` a numeric 0/1
    annotation, or any annotation with ``event_value`` the value that marks an event. Features
    are the genes of ``variable`` or, with ``features``, numeric sample annotations (dim
    ``feature``). ``split``: None (the feature is continuous), ``"median"`` or a quantile in
    (0, 1) (high = value > the feature's quantile over the model's samples). ``covariates``:
    sample annotations added to every model (text ones treatment-coded; a covariate constant
    within a stratum is left out there). Samples missing time, event or a covariate are left
    out; a feature's missing values leave out those samples for that feature only. With
    ``stratify_by``, a separate fit per stratum and dims (``stratum``, feature).

    Variables: effect, se, statistic, p_value, p_adj (``adjust`` of p_value per stratum),
    hazard_ratio, ci_low, ci_high, p_logrank, n, n_events, converged, and threshold with a
    split. Conventions and references in the module docstring. ``bootstrap``
    (``statistic_bootstrap.BootstrapOptions`` or anything ``bootstrap_options`` accepts):
    ci_low / ci_high are then the bootstrap interval of hazard_ratio, followed by n_boot,
    ci_low_wald, ci_high_wald; ``strata: true`` resamples events and censored samples
    separately (unless clusters of ``by`` span both); each stratum of ``stratify_by`` is
    resampled on its own, with its own stream. Building computes nothing.
    """
    if ties not in TIES:
        raise InputError(f"unknown ties method {ties!r} (choose from {', '.join(TIES)})")
    q = check_split(split)
    check_confidence(confidence)
    if adjust not in multitest.METHODS:
        raise InputError(f"unknown p-value adjustment {adjust!r} (choose from "
                         f"{', '.join(multitest.METHODS)})")
    covariates = list(covariates)
    options = sb.bootstrap_options(bootstrap)
    clash = sorted({time, event} & set(covariates))
    if clash:
        raise InputError(f"{preview(clash)} cannot be both the outcome and a covariate")
    rows = feature_matrix(ds, variable=variable, features=features)
    t, e = survival_outcome(ds, time=time, event=event, event_value=event_value)
    c, c_names = covariate_matrix(ds, covariates)
    usable = ~np.isnan(t) & ~np.isnan(e) & ~np.isnan(c).any(axis=1)
    if not (e[usable] == 1).any():
        raise InputError(f"no event among the samples with {time!r}, {event!r}"
                         + (" and the covariates" if covariates else "")
                         + "; a Cox model needs events")
    groups = strata(ds, stratify_by)
    strata_args = []
    for g in groups:
        idx = g.samples[usable[g.samples]]
        cs = c[idx]
        varying = (cs != cs[:1]).any(axis=0) if idx.size else np.zeros(cs.shape[1], bool)
        strata_args.append({"samples": idx, "time": t[idx], "event": e[idx],
                            "covariates": cs[:, varying]})
    fields = list(FIELDS)
    plans = None
    if options is not None:
        positions = np.unique(np.concatenate([a["samples"] for a in strata_args]))
        plan = sb.resampling(lambda name: sample_annotation(ds, name, "bootstrap annotation"),
                             positions, options, default_strata=e[positions],
                             default_strata_name=f"{event} (events vs censored)")
        stratified = stratify_by is not None
        plans = [_Bootstrap(sb.units_or_none(plan, a["samples"], stratified=stratified),
                            sb.kernel_options(options, sb.key_for(options, g.label, stratified)))
                 for g, a in zip(groups, strata_args)]
        # the kernel's Wald interval keeps its values under new names
        fields = [f"{f}_wald" if f in ("ci_low", "ci_high") else f for f in fields]
        fields += list(sb.BOOT_FIELDS)
    kernel = {"split": q, "ties": ties, "confidence": float(confidence)}
    width = len(fields)
    stacked = map_features(rows.data, _stratified, width * len(groups), name="cox-fit",
                           strata_args=strata_args, options=kernel, bootstrap=plans)
    columns = {f: [stacked[:, s * width + i] for s in range(len(groups))]
               for i, f in enumerate(fields)}
    columns["p_adj"] = [adjust_p(p, adjust) for p in columns["p_value"]]
    order = ["effect", "se", "statistic", "p_value", "p_adj", "hazard_ratio", "ci_low",
             "ci_high", "p_logrank", "n", "n_events", "converged"]
    if q is not None:
        order.append("threshold")
    attrs = {"test": "cox", "time": time, "event": event, "ties": ties,
             "confidence": float(confidence), "adjust": adjust, "variable": variable,
             "covariates": covariates, "covariate_columns": c_names}
    if event_value is not None:
        attrs["event_value"] = str(event_value)
    if split is not None:
        attrs["split"] = str(split)
    descriptions = _descriptions(q, covariates, ties, confidence, adjust)
    if options is not None:
        at = order.index("ci_low")
        order[at:at + 2] = ["ci_low", "ci_high", "n_boot", "ci_low_wald", "ci_high_wald"]
        descriptions |= {f"{bound}_wald": descriptions[bound] for bound in ("ci_low", "ci_high")}
        descriptions |= sb.interval_descriptions(options, "hazard_ratio", plan)
        if q is not None:
            for bound in ("ci_low", "ci_high"):
                descriptions[bound] += ("; each replicate splits the feature at its own "
                                        "quantile of the replicate's samples")
        attrs |= sb.bootstrap_attrs(options, plan)
    return stratified_result({f: columns[f] for f in order}, rows, groups, stratify_by,
                             attrs=attrs, descriptions=descriptions)
