"""Negative-binomial GLM kernels of DESeq2 1.38, vectorised over the genes of a block.

Every function takes numpy blocks of genes x samples (counts ``y``, fitted means ``mu``), the
design ``x`` (samples x p, full rank) and the size factors ``sf`` (samples,), computes in
float64, and loops only over iterations, design columns or grid points, never over genes. The
row sums are ``(a * b).sum(axis=1)`` on C-ordered rows (and the small systems are solved
stacked, one LAPACK call per gene), so a gene's numbers do not depend on the genes beside it:
results are the same bits for any chunking of the genes.

What is transcribed from DESeq2 (R/core.R, R/methods.R, src/DESeq2.cpp; Love, Huber & Anders
2014, Genome Biology 15:550), with its constants:

* ``fit_glm``: ``fitNbinomGLMs`` / C++ ``fitBeta``: IRLS of log mu = log sf + x beta with a
  ridge of 1e-6 on the log2 scale, start from the least-squares fit of log(normalised + 0.1),
  fitted means bounded below by ``minmu`` = 0.5 in the weights, convergence when the deviance
  changes by less than 1e-8 relatively, at most 100 iterations; a coefficient beyond 30
  (natural log) stops the gene. Genes that did not converge (or have a non-positive variance)
  are refitted by DESeq2 with ``optim(method = "L-BFGS-B")`` on the penalised likelihood with
  coefficients bounded to +-30 on the log2 scale; here by a projected Newton method on the same
  objective (strictly concave, so the same maximum; L-BFGS-B stops at its own tolerance, so
  these rare genes agree with R only to that tolerance). The hat diagonals are the IRLS's.
* ``fit_dispersion``: C++ ``fitDisp``: maximises the Cox-Reid adjusted profile likelihood in
  log(alpha) (optionally with a normal prior) by DESeq2's backtracking line search along the
  first derivative (Armijo rule with epsilon 1e-4, kappa_0 1, step growth 1.1, halving every
  5 accepted steps, log alpha kept within [-30, 10], stop when the log posterior rises by less
  than ``tol``); ``fit_dispersion_grid``: ``fitDispGrid``, 20 points between log(1e-8) and
  log(max(10, n)) and 20 points around the best one. The log-likelihood's
  log Gamma(y + 1/alpha) - log Gamma(1/alpha) is DESeq2's difference of log-gammas, except
  for alpha < 1e-6, where it comes from Stirling's series, without the difference's
  cancellation (there DESeq2's line search wanders in rounding noise: such
  gene-wise estimates, all below 1e-6, differ from R's, and are not used by the trend).
* ``gene_wise_dispersion``: ``estimateDispersionsGeneEst`` (start min(rough, moments),
  ``linearModelMu`` when the design has as many distinct rows as columns, otherwise a GLM fit
  at the start value, ``noIncrease`` rule, grid for unconverged genes); ``map_dispersion``:
  ``estimateDispersionsMAP``; ``parametric_trend`` (``parametricDispersionFit``, R ``glm``'s
  Gamma(identity) IRLS transcribed), ``mean_trend``, ``dispersion_prior_variance``
  (``estimateDispersionsPriorVar``); ``cooks_distance`` and ``robust_moments_dispersion``
  (``calculateCooksDistance``, ``robustMethodOfMomentsDisp``), ``replacement_counts``
  (``replaceOutliers``).

Undefined values are NaN; nothing here raises on data (the lazy wrappers in
``engine.stats.deseq2`` and ``engine.preprocess.vst`` decide what is an input error).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

__all__ = [
    "BETA_TOL", "KAPPA_0", "LARGE", "MAXIT", "MIN_DISP", "MIN_MU", "RIDGE",
    "DispersionFit", "GlmFit", "TrendFitError", "cooks_distance", "dispersion_prior_variance",
    "dispersion_start", "fit_dispersion", "fit_dispersion_grid", "fit_glm",
    "gene_wise_dispersion", "gene_wise_mu", "linear_model_coefficients", "linear_model_mu",
    "linear_mu_design", "log_dispersion_variance", "map_dispersion", "max_cooks",
    "max_dispersion", "mean_trend", "moments_dispersion", "n_or_more_in_cell", "nb_logpmf",
    "parametric_trend", "replacement_counts", "robust_moments_dispersion", "rough_dispersion",
    "trimmed_mean",
]

MIN_DISP = 1e-8  # minDisp
MIN_MU = 0.5  # minmu: fitted means are bounded below by this in the weights
KAPPA_0 = 1.0
DISP_TOL = 1e-6  # dispTol
MAXIT = 100
BETA_TOL = 1e-8  # betaTol
LARGE = 30.0  # |beta| beyond this stops IRLS; optim's bounds (log2 scale)
RIDGE = 1e-6  # lambda on the log2 scale (betaPrior = FALSE)
ARMIJO_EPSILON = 1e-4
LOG_ALPHA_BOUNDS = (-30.0, 10.0)
GRID_POINTS = 20
_LN2 = np.log(2.0)


# -- row-wise linear algebra (a row's bits never depend on the other rows) ------------------------

def _f64(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64)


def _pairs(x: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    return {(i, j): x[:, i] * x[:, j] for i in range(x.shape[1]) for j in range(i, x.shape[1])}


def _gram(w: np.ndarray, x: np.ndarray, pairs=None) -> np.ndarray:
    """X' diag(w_g) X for every row g of ``w``: (genes, p, p)."""
    p = x.shape[1]
    pairs = pairs or _pairs(x)
    out = np.empty((w.shape[0], p, p))
    for (i, j), xij in pairs.items():
        out[:, i, j] = out[:, j, i] = (w * xij).sum(axis=1)
    return out


def _xt(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """X' v_g for every row g of ``v``: (genes, p)."""
    return np.stack([(v * x[:, k]).sum(axis=1) for k in range(x.shape[1])], axis=1)


def _xb(b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """X b_g for every row g of ``b`` (genes, p): (genes, samples)."""
    out = b[:, :1] * x[:, 0]
    for k in range(1, x.shape[1]):
        out = out + b[:, k:k + 1] * x[:, k]
    return out


def _quadratic(m: np.ndarray, x: np.ndarray, pairs=None) -> np.ndarray:
    """x_j' M_g x_j for every row g and sample j (M symmetric (genes, p, p)): (genes, n)."""
    pairs = pairs or _pairs(x)
    out = np.zeros((m.shape[0], x.shape[0]))
    for (i, j), xij in pairs.items():
        out += (m[:, i, j] if i == j else 2.0 * m[:, i, j])[:, None] * xij
    return out


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Stacked solves of (genes, p, p) systems with (genes, p) right-hand sides; NaN for a
    singular or non-finite one."""
    out = _solve_many(a, b[..., None])[..., 0]
    out[~np.isfinite(b).all(axis=1)] = np.nan
    return out


def _inv(a: np.ndarray) -> np.ndarray:
    return _solve_many(a, np.broadcast_to(np.eye(a.shape[1]), a.shape))


def _solve_many(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Stacked A_g^-1 B_g (B: (genes, p, k)); NaN for a singular or non-finite system."""
    out = np.full(b.shape, np.nan)
    ok = np.isfinite(a).all(axis=(1, 2))
    if ok.any():
        try:
            out[ok] = np.linalg.solve(a[ok], b[ok])
        except np.linalg.LinAlgError:
            for g in np.flatnonzero(ok):
                try:
                    out[g] = np.linalg.solve(a[g], b[g])
                except np.linalg.LinAlgError:
                    pass
    return out


def _logdet(a: np.ndarray) -> np.ndarray:
    """log(det(A_g)) as R's ``log(det(b))``: NaN for a negative determinant."""
    sign, logabs = np.linalg.slogdet(a)
    return np.where(sign > 0, logabs, np.where(sign == 0, -np.inf, np.nan))


def _orthonormal(x: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(np.asarray(x, dtype=np.float64))
    return q


def linear_model_mu(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Least-squares fitted values of every row of ``y`` on ``x`` (DESeq2 ``linearModelMu``)."""
    q = _orthonormal(x)
    return _xb(_xt(y, q), q)


def linear_mu_design(x: np.ndarray) -> bool:
    """DESeq2 fits the gene-wise means by least squares when the design has as many distinct
    rows (groups) as columns (``modelMatrixGroups``), by a GLM otherwise."""
    return np.unique(np.asarray(x), axis=0).shape[0] == x.shape[1]


def n_or_more_in_cell(x: np.ndarray, n: int) -> np.ndarray:
    """Per sample: does its design row occur at least ``n`` times (``nOrMoreInCell``)?"""
    _, inverse, counts = np.unique(np.asarray(x), axis=0, return_inverse=True,
                                   return_counts=True)
    return counts[inverse.ravel()] >= n


# -- the negative binomial ------------------------------------------------------------------------

#: Above this 1/alpha the difference of log-gammas cancels badly (log Gamma(1e6) ~ 1.3e7, one
#: ulp ~ 2e-9); there it is computed from Stirling's series instead.
_HUGE_SIZE = 1e6


def _lgamma_ratio(y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """log Gamma(y + r) - log Gamma(r) (0 for y = 0), accurate when r = 1/alpha is huge:
    there (r > 1e6) Stirling's series, (r - 1/2) log1p(y / r) + y log(r + y) - y
    + 1/(12 (r + y)) - 1/(12 r), whose next terms are below 1e-19."""
    out = special.gammaln(y + r) - special.gammaln(r)
    huge = r > _HUGE_SIZE
    if np.any(huge):
        yb, rb = np.broadcast_arrays(y, r)
        mask = np.broadcast_to(huge, out.shape)
        out = np.array(out, dtype=np.float64)
        yh, rh = yb[mask], rb[mask]
        out[mask] = ((rh - 0.5) * np.log1p(yh / rh) + yh * np.log(rh + yh) - yh
                     - yh / (12.0 * rh * (rh + yh)))
    return out


def nb_logpmf(y, mu, alpha) -> np.ndarray:
    """log P(Y = y) for Y ~ NB(mean mu, dispersion alpha) (R ``dnbinom(y, mu = mu, size =
    1/alpha, log = TRUE)``), elementwise with broadcasting."""
    y, mu, alpha = (np.asarray(v, dtype=np.float64) for v in (y, mu, alpha))
    r = 1.0 / alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.where(y > 0, y * (np.log(mu) - np.log(mu + r)), 0.0)
        return _lgamma_ratio(y, r) - special.gammaln(y + 1) + tail - r * np.log1p(alpha * mu)


# -- GLM fit (fitBeta) ----------------------------------------------------------------------------

@dataclass
class GlmFit:
    """Natural-log coefficients and their variances, fitted means (not bounded), hat diagonals
    (for Cook's distances), IRLS iterations and convergence, per gene."""

    beta: np.ndarray  # (genes, p), natural log
    beta_var: np.ndarray  # (genes, p), natural log scale
    mu: np.ndarray  # (genes, n)
    hat: np.ndarray  # (genes, n)
    iterations: np.ndarray
    converged: np.ndarray


def _deviance(y, mu, alpha):
    return -2.0 * nb_logpmf(y, mu, alpha[:, None]).sum(axis=1)


def _covariance(w, x, ridge, pairs):
    """(X'WX + R)^-1 X'WX (X'WX + R)^-1 and (X'WX + R)^-1 per gene."""
    xtwx = _gram(w, x, pairs)
    a_inv = _inv(xtwx + np.diag(ridge))
    return a_inv @ xtwx @ a_inv, a_inv


def fit_glm(y, x, sf, alpha, *, ridge: float = RIDGE, tol: float = BETA_TOL,
            maxit: int = MAXIT, minmu: float = MIN_MU) -> GlmFit:
    """DESeq2's negative-binomial GLM of every row of ``y`` (module docstring).

    ``alpha``: the dispersion of each row; ``ridge``: lambda on the log2 scale (one value for
    every coefficient, DESeq2's 1e-6 without a beta prior).
    """
    y = _f64(y)
    x = np.asarray(x, dtype=np.float64)
    sf = np.asarray(sf, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64).reshape(-1)
    g, n = y.shape
    p = x.shape[1]
    pairs = _pairs(x)
    lam = np.full(p, ridge / _LN2**2)  # natural log scale
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        start = linear_model_coefficients(np.log(y / sf + 0.1), x)
        beta = start.copy()
        mu = np.maximum(sf * np.exp(_xb(beta, x)), minmu)
        dev_old = np.zeros(g)
        iterations = np.zeros(g, dtype=np.int64)
        active = np.arange(g)
        for t in range(maxit):
            if active.size == 0:
                break
            iterations[active] += 1
            ya, mua, aa = y[active], mu[active], alpha[active]
            w = mua / (1.0 + aa[:, None] * mua)
            z = np.log(mua / sf) + (ya - mua) / mua
            b_new = _solve(_gram(w, x, pairs) + np.diag(lam), _xt(w * z, x))
            beta[active] = b_new
            exploded = (np.abs(b_new) > LARGE).any(axis=1)
            mu_new = np.maximum(sf * np.exp(_xb(b_new, x)), minmu)
            mu_new[exploded] = mua[exploded]  # fitBeta stops before updating mu
            mu[active] = mu_new
            dev = _deviance(ya, mu_new, aa)
            test = np.abs(dev - dev_old[active]) / (np.abs(dev) + 0.1)
            failed = exploded | np.isnan(test)
            iterations[active[failed]] = maxit
            done = failed | ((t > 0) & (test < tol))
            dev_old[active] = dev
            active = active[~done]
        converged = iterations < maxit
        w = mu / (1.0 + alpha[:, None] * mu)
        sigma, a_inv = _covariance(w, x, lam, pairs)
        hat = w * _quadratic(a_inv, x, pairs)
        beta_var = np.diagonal(sigma, axis1=1, axis2=2).copy()
        stable = ~np.isnan(beta).any(axis=1)
        positive = (beta_var > 0).all(axis=1)
        fit = GlmFit(beta, beta_var, sf * np.exp(_xb(beta, x)), hat, iterations, converged)
        redo = np.flatnonzero(~converged | ~stable | ~positive)
        if redo.size:
            _newton_refit(fit, redo, y, x, sf, alpha, lam, start, minmu, pairs)
    return fit


def linear_model_coefficients(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Least-squares coefficients of every row of ``y`` on the full-rank ``x``: (genes, p)."""
    q, r = np.linalg.qr(np.asarray(x, dtype=np.float64))
    r_inv = np.linalg.inv(r)
    qty = _xt(y, q)
    return np.stack([sum(qty[:, k] * r_inv[j, k] for k in range(j, r.shape[0]))
                     for j in range(r.shape[0])], axis=1)


def _penalised(y, x, sf, alpha, lam, b):
    """Negative penalised log-likelihood, its gradient and Hessian in natural-log b (DESeq2's
    ``optim`` objective: the means are not bounded there)."""
    mu = sf * np.exp(_xb(b, x))
    a = alpha[:, None]
    value = -nb_logpmf(y, mu, a).sum(axis=1) + 0.5 * (lam * b * b).sum(axis=1)
    grad = -_xt((y - mu) / (1.0 + a * mu), x) + lam * b
    hess = _gram(mu * (1.0 + a * y) / (1.0 + a * mu) ** 2, x) + np.diag(lam)
    return value, grad, hess


def _newton_refit(fit: GlmFit, rows, y, x, sf, alpha, lam, start, minmu, pairs,
                  maxit: int = 200) -> None:
    """DESeq2's ``fitNbinomGLMsOptim`` for ``rows``: the maximum of the penalised likelihood
    with coefficients in [-30, 30] on the log2 scale, by projected Newton steps with
    backtracking (an active-set method: coordinates at a bound whose gradient points outward
    are held). Updates ``fit`` in place (the hat diagonals stay the IRLS's, as in DESeq2)."""
    bound = LARGE * _LN2
    yr, ar = y[rows], alpha[rows]
    b = fit.beta[rows].copy()
    usable = np.isfinite(b).all(axis=1) & (np.abs(b) < bound).all(axis=1)
    b = np.where(usable[:, None], b, np.clip(np.nan_to_num(start[rows]), -bound, bound))
    converged = np.zeros(rows.size, dtype=bool)
    active = np.arange(rows.size)
    p = x.shape[1]
    for _ in range(maxit):
        if active.size == 0:
            break
        ba = b[active]
        value, grad, hess = _penalised(yr[active], x, sf, ar[active], lam, ba)
        held = ((ba <= -bound) & (grad > 0)) | ((ba >= bound) & (grad < 0))
        grad_free = np.where(held, 0.0, grad)
        eye = np.eye(p, dtype=bool)
        hold2 = held[:, :, None] | held[:, None, :]
        h = np.where(hold2, np.where(eye, 1.0, 0.0), hess)
        step = -_solve(h, grad_free)
        step = np.where(np.isfinite(step), step, -grad_free)
        scale = np.ones(active.size)
        accepted = np.zeros(active.size, dtype=bool)
        for _halving in range(40):
            trial = np.clip(ba + scale[:, None] * step, -bound, bound)
            new_value = _penalised(yr[active], x, sf, ar[active], lam, trial)[0]
            good = np.isfinite(new_value) & (new_value <= value) & ~accepted
            ba = np.where(good[:, None], trial, ba)
            accepted |= good
            if accepted.all():
                break
            scale = np.where(accepted, scale, scale / 2.0)
        moved = np.abs(ba - b[active]).max(axis=1)
        b[active] = ba
        small = (moved < 1e-10) | ~accepted
        converged[active[small & accepted]] = True
        converged[active[~accepted]] = np.abs(grad_free[~accepted]).max(axis=1) < 1e-6
        active = active[~small]
    mu = sf * np.exp(_xb(b, x))
    w = np.maximum(mu, minmu)
    w = w / (1.0 + ar[:, None] * w)
    sigma, _ = _covariance(w, x, lam, pairs)
    fit.beta[rows] = b
    fit.beta_var[rows] = np.diagonal(sigma, axis1=1, axis2=2)
    fit.mu[rows] = mu
    fit.converged[rows] = converged | fit.converged[rows]


# -- dispersion: log posterior and the line search (fitDisp) --------------------------------------

def _log_posterior(log_alpha, y, mu, x, prior_mean, prior_var, use_prior, pairs):
    alpha = np.exp(log_alpha)[:, None]
    r = 1.0 / alpha
    w = 1.0 / (1.0 / mu + alpha)
    cr = -0.5 * _logdet(_gram(w, x, pairs))
    ll = (_lgamma_ratio(y, r) - y * np.log(mu + r) - r * np.log1p(mu * alpha)).sum(axis=1)
    prior = -0.5 * (log_alpha - prior_mean) ** 2 / prior_var if use_prior else 0.0
    return ll + prior + cr


def _dlog_posterior(log_alpha, y, mu, x, prior_mean, prior_var, use_prior, pairs):
    """d log posterior / d log alpha (DESeq2's ``dlog_posterior``)."""
    alpha = np.exp(log_alpha)[:, None]
    r = 1.0 / alpha
    w = 1.0 / (1.0 / mu + alpha)
    b_inv = _inv(_gram(w, x, pairs))
    cr = 0.5 * (w * w * _quadratic(b_inv, x, pairs)).sum(axis=1)  # -0.5 tr(B^-1 dB)
    ma = mu * alpha
    ll = (special.digamma(r) + np.log1p(ma) - ma / (1.0 + ma) - special.digamma(y + r)
          + y / (mu + r)).sum(axis=1) / alpha[:, 0] ** 2
    prior = -(log_alpha - prior_mean) / prior_var if use_prior else 0.0
    return (ll + cr) * alpha[:, 0] + prior


@dataclass
class DispersionFit:
    log_alpha: np.ndarray
    iterations: np.ndarray
    initial_lp: np.ndarray
    last_lp: np.ndarray


def fit_dispersion(y, x, mu, log_alpha, *, prior_mean, prior_var: float = 1.0,
                   use_prior: bool = False, min_log_alpha: float = np.log(MIN_DISP / 10),
                   kappa_0: float = KAPPA_0, tol: float = DISP_TOL,
                   maxit: int = MAXIT) -> DispersionFit:
    """DESeq2's line search for the (penalised) Cox-Reid dispersion of every row, from
    ``log_alpha``; ``prior_mean`` per row (log scale), ``prior_var`` one value."""
    y, mu = _f64(y), _f64(mu)
    x = np.asarray(x, dtype=np.float64)
    pairs = _pairs(x)
    g = y.shape[0]
    a = np.array(log_alpha, dtype=np.float64).reshape(-1)
    prior_mean = np.broadcast_to(np.asarray(prior_mean, dtype=np.float64), (g,))
    kw = dict(prior_var=prior_var, use_prior=use_prior, pairs=pairs)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lp = _log_posterior(a, y, mu, x, prior_mean, **kw)
        dlp = _dlog_posterior(a, y, mu, x, prior_mean, **kw)
        initial_lp = lp.copy()
        kappa = np.full(g, float(kappa_0))
        iterations = np.zeros(g, dtype=np.int64)
        accepts = np.zeros(g, dtype=np.int64)
        active = np.arange(g)
        low, high = LOG_ALPHA_BOUNDS
        for _ in range(maxit):
            if active.size == 0:
                break
            iterations[active] += 1
            aa, da_, ka = a[active], dlp[active], kappa[active]
            proposal = aa + ka * da_
            ka = np.where(proposal < low, (low - aa) / da_, ka)
            ka = np.where(proposal > high, (high - aa) / da_, ka)
            trial = aa + ka * da_
            ya, ma, pm = y[active], mu[active], prior_mean[active]
            lp_trial = _log_posterior(trial, ya, ma, x, pm, **kw)
            accept = -lp_trial <= -lp[active] - ka * ARMIJO_EPSILON * da_ ** 2
            kappa[active] = np.where(accept, ka, ka / 2.0)
            acc = active[accept]
            accepts[acc] += 1
            change = lp_trial[accept] - lp[acc]
            a[acc] = trial[accept]
            small = change < tol
            gone = ~small & (a[acc] < min_log_alpha)  # log alpha heading to -infinity
            lp[acc[~gone]] = lp_trial[accept][~gone]
            go_on = acc[~small & ~gone]
            if go_on.size:
                dlp[go_on] = _dlog_posterior(a[go_on], y[go_on], mu[go_on], x,
                                             prior_mean[go_on], **kw)
                k = np.minimum(kappa[go_on] * 1.1, kappa_0)
                kappa[go_on] = np.where(accepts[go_on] % 5 == 0, k / 2.0, k)
            stop = np.zeros(g, dtype=bool)
            stop[acc[small | gone]] = True
            active = active[~stop[active]]
    return DispersionFit(a, iterations, initial_lp, lp)


def fit_dispersion_grid(y, x, mu, *, prior_mean, prior_var: float = 1.0,
                        use_prior: bool = False) -> np.ndarray:
    """DESeq2's grid search for log alpha (``fitDispGridWrapper``): the best of 20 points from
    log(1e-8) to log(max(10, n)), then of 20 points within one grid step of it."""
    y, mu = _f64(y), _f64(mu)
    x = np.asarray(x, dtype=np.float64)
    g, n = y.shape
    prior_mean = np.broadcast_to(np.asarray(prior_mean, dtype=np.float64), (g,))
    kw = dict(prior_var=prior_var, use_prior=use_prior, pairs=_pairs(x))
    grid = _r_seq(np.log(1e-8), np.log(max(10, n)), GRID_POINTS)
    delta = grid[1] - grid[0]

    def best(points):  # points: (genes, k)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            lp = np.stack([_log_posterior(points[:, t], y, mu, x, prior_mean, **kw)
                           for t in range(points.shape[1])], axis=1)
        lp = np.where(np.isnan(lp), -np.inf, lp)
        return points[np.arange(g), np.argmax(lp, axis=1)]

    coarse = best(np.broadcast_to(grid, (g, grid.size)))
    fine = coarse[:, None] + _linspace_offsets(-delta, delta, GRID_POINTS)[None, :]
    fine[:, -1] = coarse + delta
    return best(fine)


def _r_seq(start: float, stop: float, length: int) -> np.ndarray:
    """R ``seq(from, to, length.out = n)``: from + (0:(n-1)) * by, the last point exactly to."""
    by = (stop - start) / (length - 1)
    out = start + np.arange(length) * by
    out[-1] = stop
    return out


def _linspace_offsets(start: float, stop: float, n: int) -> np.ndarray:
    return start + np.arange(n) * ((stop - start) / (n - 1))


# -- gene-wise and MAP dispersions ----------------------------------------------------------------

def rough_dispersion(normalized, x) -> np.ndarray:
    """DESeq2 ``roughDispEstimate``: the method-of-moments dispersion around the least-squares
    fit of the normalised counts (fitted means bounded below by 1), at least 0."""
    mu = np.maximum(1.0, linear_model_mu(normalized, x))
    m, p = x.shape
    est = (((normalized - mu) ** 2 - mu) / mu ** 2).sum(axis=1) / (m - p)
    return np.maximum(est, 0.0)


def moments_dispersion(base_mean, base_var, sf) -> np.ndarray:
    """DESeq2 ``momentsDispEstimate``: (variance - mean(1/sf) mean) / mean^2."""
    xim = np.mean(1.0 / np.asarray(sf, dtype=np.float64))
    return (base_var - xim * base_mean) / base_mean ** 2


def max_dispersion(n_samples: int) -> float:
    return float(max(10, n_samples))


def dispersion_start(y, x, sf) -> np.ndarray:
    """The gene-wise line search's start: min(rough, moments) within [minDisp, max(10, n)]."""
    normalized = y / sf
    with np.errstate(divide="ignore", invalid="ignore"):
        base_mean = normalized.mean(axis=1)
        base_var = normalized.var(axis=1, ddof=1)
        start = np.minimum(rough_dispersion(normalized, x),
                           moments_dispersion(base_mean, base_var, sf))
    return np.clip(start, MIN_DISP, max_dispersion(y.shape[1]))


def gene_wise_mu(y, x, sf, start, *, maxit: int = MAXIT) -> np.ndarray:
    """The fitted means of the gene-wise step, bounded below by ``minmu``: least squares on the
    normalised counts times the size factors when the design has as many distinct rows as
    columns, else the GLM fit at the start dispersions."""
    if linear_mu_design(x):
        mu = linear_model_mu(y / sf, x) * sf
    else:
        mu = fit_glm(y, x, sf, start, maxit=maxit).mu
    return np.maximum(mu, MIN_MU)


def gene_wise_dispersion(y, x, sf, *, maxit: int = MAXIT):
    """DESeq2 ``estimateDispersionsGeneEst`` for rows of ``y`` that are not all zero.

    Returns (dispersion, mu, iterations): the gene-wise estimates, the fitted means bounded
    below by 0.5 (the ``mu`` assay the MAP step uses) and the line-search iterations.
    """
    y = _f64(y)
    x = np.asarray(x, dtype=np.float64)
    sf = np.asarray(sf, dtype=np.float64)
    max_disp = max_dispersion(y.shape[1])
    start = dispersion_start(y, x, sf)
    mu = gene_wise_mu(y, x, sf, start, maxit=maxit)
    fit = fit_dispersion(y, x, mu, np.log(start), prior_mean=np.log(start), maxit=maxit)
    with np.errstate(over="ignore"):
        est = np.minimum(np.exp(fit.log_alpha), max_disp)
    no_increase = fit.last_lp < fit.initial_lp + np.abs(fit.initial_lp) / 1e6
    est = np.where(no_increase, start, est)
    converged = (fit.iterations < maxit) & (fit.iterations != 1)
    refit = ~converged & (est > MIN_DISP * 10)
    if refit.any():
        est[refit] = np.exp(fit_dispersion_grid(y[refit], x, mu[refit], prior_mean=0.0))
    return np.clip(est, MIN_DISP, max_disp), mu, fit.iterations


def map_dispersion(y, x, mu, disp_gene, disp_fit, *, prior_var: float, var_log_disp: float,
                   outlier_sd: float = 2.0, maxit: int = MAXIT):
    """DESeq2 ``estimateDispersionsMAP``: the maximum a posteriori dispersion with a normal
    prior on log alpha centred on the trend, and the final dispersion (the gene-wise estimate
    kept for dispersion outliers, more than ``outlier_sd`` SDs above the trend).

    Returns (final, map, outlier).
    """
    disp_gene = np.asarray(disp_gene, dtype=np.float64)
    disp_fit = np.asarray(disp_fit, dtype=np.float64)
    max_disp = max_dispersion(np.shape(y)[1])
    init = np.where(disp_gene > 0.1 * disp_fit, disp_gene, disp_fit)
    init = np.where(np.isnan(init), disp_fit, init)
    fit = fit_dispersion(y, x, mu, np.log(init), prior_mean=np.log(disp_fit),
                         prior_var=prior_var, use_prior=True, maxit=maxit)
    with np.errstate(over="ignore"):
        disp_map = np.exp(fit.log_alpha)
    refit = ~(fit.iterations < maxit)
    if refit.any():
        disp_map[refit] = np.exp(fit_dispersion_grid(
            np.asarray(y)[refit], x, np.asarray(mu)[refit], prior_mean=np.log(disp_fit[refit]),
            prior_var=prior_var, use_prior=True))
    disp_map = np.clip(disp_map, MIN_DISP, max_disp)
    with np.errstate(invalid="ignore", divide="ignore"):
        outlier = np.log(disp_gene) > np.log(disp_fit) + outlier_sd * np.sqrt(var_log_disp)
    return np.where(outlier, disp_gene, disp_map), disp_map, outlier


# -- the dispersion trend (global: tiny 1-D arrays) -----------------------------------------------

class TrendFitError(ValueError):
    """The parametric trend a + b / mean did not fit (DESeq2 then switches to a local fit)."""


def _gamma_deviance(y, mu):
    with np.errstate(invalid="ignore", divide="ignore"):
        return (-2.0 * (np.log(np.where(y == 0, 1.0, y / mu)) - (y - mu) / mu)).sum()


def _glm_gamma_identity(x, y, start, *, epsilon: float = 1e-8, maxit: int = 25):
    """R ``glm.fit`` for ``family = Gamma(link = "identity")`` from ``start``: IRLS with
    working weights 1/mu^2, step halving when the deviance is not finite or a mean is not
    positive. Returns (coefficients, converged)."""
    coef = coef_old = np.asarray(start, dtype=np.float64)
    mu = x @ coef
    if not (np.isfinite(mu).all() and (mu > 0).all()):
        raise TrendFitError("cannot find valid starting values")
    dev_old = _gamma_deviance(y, mu)
    for _ in range(maxit):
        w = 1.0 / np.abs(mu)
        z = mu + (y - mu)
        coef = np.linalg.lstsq(x * w[:, None], z * w, rcond=None)[0]
        mu = x @ coef
        dev = _gamma_deviance(y, mu)
        halvings = 0
        while not (np.isfinite(dev) and np.isfinite(mu).all() and (mu > 0).all()):
            halvings += 1
            if halvings > maxit:
                raise TrendFitError("no valid set of coefficients")
            coef = (coef + coef_old) / 2.0
            mu = x @ coef
            dev = _gamma_deviance(y, mu)
        if abs(dev - dev_old) / (abs(dev) + 0.1) < epsilon:
            return coef, True
        dev_old, coef_old = dev, coef
    return coef, False


def parametric_trend(means, disps) -> tuple[float, float]:
    """DESeq2 ``parametricDispersionFit``: alpha(mean) = a + b / mean by iterated Gamma GLMs
    on the genes whose dispersion is within (1e-4, 15) times the current fit. Returns (a, b)
    (``asymptDisp``, ``extraPois``); ``TrendFitError`` when DESeq2 would give up."""
    means = np.asarray(means, dtype=np.float64)
    disps = np.asarray(disps, dtype=np.float64)
    coefs = np.array([0.1, 1.0])
    for _ in range(12):
        residuals = disps / (coefs[0] + coefs[1] / means)
        good = (residuals > 1e-4) & (residuals < 15)
        if good.sum() < 2:
            raise TrendFitError("too few genes near the trend")
        x = np.column_stack([np.ones(good.sum()), 1.0 / means[good]])
        old = coefs
        coefs, converged = _glm_gamma_identity(x, disps[good], coefs)
        if not (coefs > 0).all():
            raise TrendFitError("parametric dispersion fit failed")
        if np.sum(np.log(coefs / old) ** 2) < 1e-6 and converged:
            return float(coefs[0]), float(coefs[1])
    raise TrendFitError("dispersion fit did not converge")


def trimmed_mean(x, trim: float, axis: int = -1) -> np.ndarray:
    """R ``mean(x, trim = trim)`` along ``axis``: drop floor(n trim) values at each end."""
    x = np.sort(np.asarray(x, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    if trim >= 0.5:
        return np.median(x, axis=axis)
    lo = int(np.floor(n * trim))
    return np.ascontiguousarray(np.take(x, np.arange(lo, n - lo), axis=axis)).mean(axis=axis)


def mean_trend(disps) -> float:
    """DESeq2 ``fitType = "mean"``: the 0.1%-trimmed mean of the gene-wise dispersions above
    10 x minDisp."""
    disps = np.asarray(disps, dtype=np.float64)
    return float(trimmed_mean(disps[disps > 10 * MIN_DISP], 0.001))


def _mad(x) -> float:
    med = np.median(x)
    return 1.4826 * float(np.median(np.abs(x - med)))


def log_dispersion_variance(disp_gene, disp_fit) -> float:
    """``varLogDispEsts``: the squared MAD of log(gene-wise / trend) over genes with a gene-wise
    estimate of at least 100 x minDisp."""
    above = disp_gene >= MIN_DISP * 100
    return _mad(np.log(disp_gene[above]) - np.log(disp_fit[above])) ** 2


def dispersion_prior_variance(disp_gene, disp_fit, var_log_disp: float, m: int, p: int
                              ) -> float:
    """DESeq2 ``estimateDispersionsPriorVar``: the variance of log dispersions around the trend
    less what their sampling error explains, trigamma((m - p) / 2), at least 0.25.

    With m - p <= 3 residual df DESeq2 matches the histogram of the residuals to simulated
    ``log(chi2_{m-p} / (m - p)) + N(0, s^2)`` (10,000 draws per s^2 on a grid, the
    Kullback-Leibler divergences smoothed by loess); ``_kl_prior_variance`` does the same with
    the histogram those draws give in expectation instead of random ones, so the result is
    deterministic and differs from R's by R's Monte-Carlo error (measured on a fixture: 0.464
    here, 0.456 in R; 20 simulated repetitions of R's procedure spread by sd 0.04 before the
    smoothing).
    """
    if m > p and m - p <= 3:
        above = disp_gene >= MIN_DISP * 100
        residuals = np.log(disp_gene[above]) - np.log(disp_fit[above])
        return max(_kl_prior_variance(residuals, m - p), 0.25)
    if m > p:
        return max(var_log_disp - float(special.polygamma(1, (m - p) / 2)), 0.25)
    return var_log_disp


_KL_BREAKS = np.arange(-20, 21) / 2.0
_KL_DRAWS = 10_000  # DESeq2's draws per grid point


def _kl_prior_variance(residuals, df: int) -> float:
    """DESeq2's prior variance for m - p <= 3: the s^2 in [0, 8] minimising KL(observed
    histogram || histogram of log(chi2_df / df) + N(0, s^2)), bins -10, -9.5, ..., 10. R draws
    10,000 values per s^2 on a grid of 200; here each histogram is the counts 10,000 draws give
    in expectation, rounded to integers (so the empty tail bins that set R's ``small`` are
    there too), from the exact distribution (log chi2 discretised in 0.02 steps over [-20, 6],
    convolved with the normal analytically). Then as R: the divergences smoothed by loess
    (span 0.2, degree 2) and minimised over 1,000 points."""
    width = 0.5
    obs = residuals[(residuals > _KL_BREAKS[0]) & (residuals < _KL_BREAKS[-1])]
    obs_density = np.histogram(obs, bins=_KL_BREAKS)[0] / (obs.size * width)
    edges = np.linspace(-20.0, 6.0, 1301)
    mass = np.diff(stats.chi2.cdf(df * np.exp(edges), df))
    offsets = _KL_BREAKS[:, None] - ((edges[1:] + edges[:-1]) / 2)[None, :]
    grid = _r_seq(0.0, 8.0, 200)
    kl = np.empty(grid.size)
    for i, s2 in enumerate(grid):
        if s2 == 0:
            probs = np.diff(stats.chi2.cdf(df * np.exp(_KL_BREAKS), df))
        else:
            probs = np.diff(special.ndtr(offsets / np.sqrt(s2)) @ mass)
        counts = np.round(probs * _KL_DRAWS)
        rand_density = counts / (counts.sum() * width)
        both = np.r_[obs_density, rand_density]
        small = both[both > 0].min()
        kl[i] = np.sum(obs_density * (np.log(obs_density + small) - np.log(rand_density + small)))
    fine = _r_seq(0.0, 8.0, 1000)
    return float(fine[np.argmin(_loess_quadratic(grid, kl, fine, span=0.2))])


def _loess_quadratic(x, y, at, span: float) -> np.ndarray:
    """Local quadratic regression of ``y`` on ``x`` evaluated at ``at`` (R ``loess(span,
    degree = 2)`` computed directly at each point: the floor(n span) nearest points, tricube
    weights)."""
    q = int(np.floor(x.size * span))
    out = np.empty(at.size)
    for i, x0 in enumerate(at):
        d = np.abs(x - x0)
        h = np.sort(d)[q - 1]
        w = np.sqrt(np.clip(1.0 - (d / h) ** 3, 0.0, None) ** 3)
        design = np.column_stack([np.ones(x.size), x - x0, (x - x0) ** 2]) * w[:, None]
        out[i] = np.linalg.lstsq(design, y * w, rcond=None)[0][0]
    return out


# -- Cook's distances and outlier replacement -----------------------------------------------------

def _trim_for(n: int) -> tuple[float, float]:
    """trimmedCellVariance's trim ratio and scale for a cell of n samples."""
    if n <= 3.5:
        return 1 / 3, 2.04
    if n <= 23.5:
        return 1 / 4, 1.86
    return 1 / 8, 1.51


def robust_moments_dispersion(normalized, x) -> np.ndarray:
    """DESeq2 ``robustMethodOfMomentsDisp``: the largest trimmed within-cell variance (cells:
    identical design rows with >= 3 samples; else one trimmed variance over all samples),
    turned into a dispersion and bounded below by 0.04."""
    normalized = _f64(normalized)
    _, cell, counts = np.unique(np.asarray(x), axis=0, return_inverse=True, return_counts=True)
    cell = cell.ravel()
    big = np.flatnonzero(counts >= 3)
    if big.size:
        variances = []
        for c in big:
            block = normalized[:, cell == c]
            trim, scale = _trim_for(block.shape[1])
            centre = trimmed_mean(block, trim, axis=1)
            variances.append(scale * trimmed_mean((block - centre[:, None]) ** 2, trim, axis=1))
        v = np.max(np.stack(variances, axis=1), axis=1)
    else:
        centre = trimmed_mean(normalized, 1 / 8, axis=1)
        v = 1.51 * trimmed_mean((normalized - centre[:, None]) ** 2, 1 / 8, axis=1)
    m = normalized.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum((v - m) / m ** 2, 0.04)


def cooks_distance(y, mu, hat, robust_disp, p: int) -> np.ndarray:
    """DESeq2 ``calculateCooksDistance``: squared Pearson residuals (variance mu + alpha mu^2
    with the robust dispersion) / p x h / (1 - h)^2."""
    with np.errstate(divide="ignore", invalid="ignore"):
        v = mu + np.asarray(robust_disp)[:, None] * mu ** 2
        return (y - mu) ** 2 / v / p * hat / (1.0 - hat) ** 2


def max_cooks(cooks, x) -> np.ndarray:
    """DESeq2 ``recordMaxCooks``: the largest Cook's distance over samples whose design row
    occurs at least 3 times (NaN when there is none or no residual df)."""
    m, p = x.shape
    use = n_or_more_in_cell(x, 3)
    if m <= p or not use.any():
        return np.full(np.shape(cooks)[0], np.nan)
    return np.asarray(cooks)[:, use].max(axis=1)


def replacement_counts(y, sf, cooks, cutoff: float, replaceable) -> tuple[np.ndarray, np.ndarray]:
    """DESeq2 ``replaceOutliers``: counts with a Cook's distance above ``cutoff`` in a
    replaceable sample become the gene's 20%-trimmed mean of normalised counts times the size
    factor, truncated to an integer. Returns (new counts, genes with any distance above the
    cutoff, in any sample)."""
    y = _f64(y)
    sf = np.asarray(sf, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        above = np.asarray(cooks) > cutoff
    replace = above.any(axis=1)
    trim_base_mean = trimmed_mean(y / sf, 0.2, axis=1)
    replacement = np.trunc(trim_base_mean[:, None] * sf)
    mask = above & np.asarray(replaceable, dtype=bool)[None, :]
    return np.where(mask, replacement, y), replace
