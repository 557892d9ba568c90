"""limma's empirical-Bayes moderation (``eBayes``), on per-gene summaries.

Input is what a linear-model fit leaves per gene: the coefficient (or contrast) estimate, its
unscaled standard deviation, the residual standard deviation and residual df, and the average
expression. Everything here works on 1-D arrays over genes: the hyper-parameters (prior df and
prior variance) are a reduction over all genes, and the moderation of each gene is vectorised.

Reference: limma 3.54 (Smyth 2004; Phipson et al. 2016 for ``robust=True``): ``eBayes``,
``squeezeVar``, ``fitFDist``, ``fitFDistRobustly``, ``trigammaInverse``, ``tmixture.vector``.
Each function below follows the R function of the same name step by step, including its guards
for zero variances and missing values; R's tests in ``tests/test_limma_reference.py``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats


# --- distributions with an infinite denominator df (scipy's F gives NaN there) -----------------

def _f_logsf(f, df1, df2):
    if np.isinf(df2):
        return stats.chi2.logsf(f * df1, df1)
    return stats.f.logsf(f, df1, df2)


def _f_logcdf(f, df1, df2):
    if np.isinf(df2):
        return stats.chi2.logcdf(f * df1, df1)
    return stats.f.logcdf(f, df1, df2)


def _f_ppf(q, df1, df2):
    if np.isinf(df2):
        return stats.chi2.ppf(q, df1) / df1
    return stats.f.ppf(q, df1, df2)


def _f_isf_log(logp, df1, df2):
    """Upper-tail quantile for log probabilities, as R's ``qf(lp, lower.tail=FALSE, log.p=TRUE)``."""
    p = np.exp(logp)
    if np.isinf(df2):
        return stats.chi2.isf(p, df1) / df1
    return stats.f.isf(p, df1, df2)


def _f_pdf(f, df1, df2):
    if np.isinf(df2):
        return stats.chi2.pdf(f * df1, df1) * df1
    return stats.f.pdf(f, df1, df2)


# --- helpers that mirror R ---------------------------------------------------------------------

def trigamma_inverse(x):
    """y with trigamma(y) = x, by limma's Newton iteration (``trigammaInverse``)."""
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.full(x.shape, np.nan)
    big, small = x > 1e7, (x < 1e-6) & (x >= 0)
    y[big] = 1 / np.sqrt(x[big])
    y[small] = 1 / x[small]
    mid = (x >= 1e-6) & (x <= 1e7)
    if mid.any():
        xm = x[mid]
        ym = 0.5 + 1 / xm
        for _ in range(51):
            tri = special.polygamma(1, ym)
            dif = tri * (1 - tri / xm) / special.polygamma(2, ym)
            ym = ym + dif
            if np.max(-dif / ym) < 1e-8:
                break
        y[mid] = ym
    return y


def _natural_spline_basis(x: np.ndarray, df: int, at: np.ndarray | None = None) -> np.ndarray:
    """A basis of the space of R's ``splines::ns(x, df=df, intercept=TRUE)``.

    Same knots as R (interior knots at the quantiles of ``x``, boundary knots at its range), so
    least-squares fits and predictions equal R's; the basis itself is the truncated-power form
    of Hastie, Tibshirani & Friedman (ESL eq. 5.4-5.5), on ``x`` rescaled to [0, 1].
    """
    lo, hi = x.min(), x.max()
    interior = np.quantile(x, np.linspace(0, 1, df)[1:-1])  # R quantile type 7 = numpy linear
    knots = (np.concatenate([[lo], interior, [hi]]) - lo) / (hi - lo)
    u = ((x if at is None else at) - lo) / (hi - lo)

    def d(k):
        return (np.maximum(u - knots[k], 0) ** 3 - np.maximum(u - knots[-1], 0) ** 3) \
            / (knots[-1] - knots[k])

    columns = [np.ones_like(u), u] + [d(k) - d(len(knots) - 2) for k in range(len(knots) - 2)]
    return np.column_stack(columns)


def _r_trimmed_mean(z, trim):
    """R's ``mean(z, trim=trim)``."""
    z = np.sort(z)
    n = z.size
    lo = int(np.floor(n * trim))
    return z[lo:n - lo].mean() if trim > 0 else z.mean()


def _r_rank(x):
    return stats.rankdata(x, method="average")


# --- fitFDist / fitFDistRobustly / squeezeVar --------------------------------------------------

def fit_f_dist(x, df1, covariate=None):
    """Moment estimates of a scaled F distribution: (scale, df2). limma ``fitFDist``.

    ``scale`` is a scalar, or per gene when a ``covariate`` (e.g. average expression) gives the
    prior variance a trend (a natural cubic spline of ``covariate``).
    """
    x = np.asarray(x, dtype=np.float64)
    df1 = np.broadcast_to(np.asarray(df1, dtype=np.float64), x.shape)
    n = x.size
    if n == 0:
        return np.nan, np.nan
    if n == 1:
        return x[0], 0.0
    ok = np.isfinite(df1) & (df1 > 1e-15) & np.isfinite(x) & (x > -1e-15)
    nok = int(ok.sum())
    if nok == 1:
        return x[ok][0], 0.0
    cov_ok = None
    if covariate is not None:
        covariate = np.asarray(covariate, dtype=np.float64)
        splinedf = 1 + (nok >= 3) + (nok >= 6) + (nok >= 30)
        splinedf = min(splinedf, np.unique(covariate[ok]).size)
        if splinedf < 2:
            scale, df2 = fit_f_dist(x[ok], df1[ok])
            return np.full(n, scale), df2
        cov_ok = covariate[ok]
    xo, d1 = np.maximum(x[ok], 0), df1[ok]
    m = np.median(xo)
    if m == 0:
        warnings.warn("More than half of residual variances are exactly zero: eBayes unreliable",
                      RuntimeWarning, stacklevel=2)
        m = 1.0
    xo = np.maximum(xo, 1e-5 * m)
    e = np.log(xo) - special.digamma(d1 / 2) + np.log(d1 / 2)
    if covariate is None:
        emean = e.mean()
        evar = np.sum((e - emean) ** 2) / (nok - 1)
    else:
        basis = _natural_spline_basis(cov_ok, splinedf)
        coef, _, rank, _ = np.linalg.lstsq(basis, e, rcond=None)
        fitted = basis @ coef
        evar = np.sum((e - fitted) ** 2) / (nok - rank)
        emean = np.empty(n)
        emean[ok] = fitted
        if nok < n:
            emean[~ok] = _natural_spline_basis(cov_ok, splinedf, at=covariate[~ok]) @ coef
    evar = evar - np.mean(special.polygamma(1, d1 / 2))
    if evar > 0:
        df2 = 2 * trigamma_inverse(evar)[0]
        scale = np.exp(emean + special.digamma(df2 / 2) - np.log(df2 / 2))
    else:
        df2 = np.inf
        scale = xo.mean() if covariate is None else np.exp(emean)
    return scale, df2


def _gauss_uniform(n=128):
    """Gauss-Legendre nodes and weights on [0, 1] (statmod ``gauss.quad.prob(n, "uniform")``)."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1) / 2, weights / 2


def _winsorized_moments(df1, df2, tail_p):
    """Mean and variance of log F(df1, df2) winsorized at the two tail probabilities."""
    nodes_u, weights = _gauss_uniform()
    fq = np.array([_f_ppf(tail_p[0], df1, df2), _f_ppf(1 - tail_p[1], df1, df2)])
    zq = np.log(fq)
    q = fq / (1 + fq)
    nodes = q[0] + (q[1] - q[0]) * nodes_u
    fnodes = nodes / (1 - nodes)
    znodes = np.log(fnodes)
    f = _f_pdf(fnodes, df1, df2) / (1 - nodes) ** 2
    q21 = q[1] - q[0]
    mean = q21 * np.sum(weights * f * znodes) + np.sum(zq * tail_p)
    var = q21 * np.sum(weights * f * (znodes - mean) ** 2) + np.sum((zq - mean) ** 2 * tail_p)
    return mean, var


def _lowess(y, x, span, iterations=4):
    """limma ``loessFit`` without weights: R's ``lowess(x, y, f=span, iter=iterations - 1)``."""
    from statsmodels.nonparametric.smoothers_lowess import lowess
    delta = 0.01 * (x.max() - x.min())
    fitted = lowess(y, x, frac=span, it=iterations - 1, delta=delta, return_sorted=False)
    return fitted, y - fitted


def fit_f_dist_robustly(x, df1, covariate=None, winsor_tail_p=(0.05, 0.1)):
    """Robust (scale, df2, df2_shrunk): limma ``fitFDistRobustly`` (Phipson et al. 2016)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    df1 = np.broadcast_to(np.asarray(df1, dtype=np.float64), x.shape).copy()
    if n < 2:
        return np.nan, np.nan, np.nan
    if n == 2:
        scale, df2 = fit_f_dist(x, df1, covariate)
        return scale, df2, np.full(n, df2)
    ok = ~np.isnan(x) & np.isfinite(df1) & (df1 > 1e-6)
    if not ok.all():
        cov_ok = None if covariate is None else np.asarray(covariate)[ok]
        scale_ok, df2, shrunk_ok = fit_f_dist_robustly(x[ok], df1[ok], cov_ok, winsor_tail_p)
        shrunk = np.array(x)
        shrunk[ok], shrunk[~ok] = shrunk_ok, df2
        if covariate is None:
            return scale_ok, df2, shrunk
        covariate = np.asarray(covariate, dtype=np.float64)
        # R: approx(covariate, log(scale), xout, rule=2, ties=mean)
        ux, inv = np.unique(cov_ok, return_inverse=True)
        mean_log = np.bincount(inv, np.log(scale_ok)) / np.bincount(inv)
        scale = np.array(x)
        scale[ok] = scale_ok
        scale[~ok] = np.exp(np.interp(covariate[~ok], ux, mean_log))
        return scale, df2, shrunk

    m = np.median(x)
    if m <= 0:
        raise ValueError("variances are mostly <= 0")
    tiny = x < m * 1e-12
    if tiny.any():
        x = x.copy()
        x[tiny] = m * 1e-12
    scale_nr, df2_nr = fit_f_dist(x, df1, covariate)
    tail_p = np.broadcast_to(np.asarray(winsor_tail_p, dtype=np.float64), (2,))
    prob = np.array([tail_p[0], 1 - tail_p[1]])
    if np.all(tail_p < 1 / n):
        return scale_nr, df2_nr, np.full(n, df2_nr)

    df1max = df1.max()
    lower = df1 < df1max - 1e-14
    if lower.any():
        s = scale_nr if np.ndim(scale_nr) == 0 else scale_nr[lower]
        f = x[lower] / s
        pupper = _f_logsf(f, df1[lower], df2_nr)
        plower = _f_logcdf(f, df1[lower], df2_nr)
        up = pupper < plower
        f = np.where(up, _f_isf_log(pupper, df1max, df2_nr),
                     _f_ppf(np.exp(plower), df1max, df2_nr))
        x = x.copy()
        x[lower] = f * s
    d1 = df1max

    z = np.log(x)
    if covariate is None:
        ztrend = _r_trimmed_mean(z, tail_p[1])
        zresid = z - ztrend
    else:
        ztrend, zresid = _lowess(z, np.asarray(covariate, dtype=np.float64), span=0.4)
    zrq = np.quantile(zresid, prob)
    zwins = np.clip(zresid, zrq[0], zrq[1])
    zwmean = zwins.mean()
    zwvar = np.mean((zwins - zwmean) ** 2) * n / (n - 1)

    mom_inf = _winsorized_moments(d1, np.inf, tail_p)
    fun_inf = np.log(zwvar / mom_inf[1])
    if fun_inf <= 0:
        ztc = ztrend + zwmean - mom_inf[0]
        scale = np.exp(ztc)
        fstat = np.exp(z - ztc)
        tail = stats.chi2.sf(fstat * d1, d1)
        emp = (n - _r_rank(fstat) + 0.5) / n
        not_outlier = np.minimum(tail / emp, 1)
        shrunk = np.full(n, np.inf)
        out = not_outlier < 1
        if out.any():
            shrunk[out] = not_outlier[out] * n * d1
            o = np.argsort(tail, kind="stable")
            shrunk[o] = np.maximum.accumulate(shrunk[o])
        return scale, np.inf, shrunk

    def link_inv(u):
        return u / (1 - u)

    def fun(u):
        return np.log(zwvar / _winsorized_moments(d1, link_inv(u), tail_p)[1])

    if np.isinf(df2_nr):
        return scale_nr, df2_nr, np.full(n, df2_nr)
    rbx = df2_nr / (1 + df2_nr)
    fun_low = fun(rbx)
    if fun_low >= 0:
        df2 = df2_nr
    else:
        df2 = link_inv(optimize.brentq(fun, rbx, 1 - 1e-15, xtol=1e-14, rtol=1e-14))
    mom = _winsorized_moments(d1, df2, tail_p)
    ztc = ztrend + zwmean - mom[0]
    scale = np.exp(ztc)
    fstat = np.exp(z - ztc)
    log_tail = _f_logsf(fstat, d1, df2)
    log_emp = np.log(n - _r_rank(fstat) + 0.5) - np.log(n)
    log_not_outlier = np.minimum(log_tail - log_emp, 0)
    not_outlier = np.exp(log_not_outlier)
    outlier = -np.expm1(log_not_outlier)
    if not (log_not_outlier < 0).any():
        return scale, df2, np.full(n, df2)
    min_log_tail = log_tail.min()
    if min_log_tail == -np.inf:
        shrunk = not_outlier * df2
    else:
        df2_outlier = np.log(0.5) / min_log_tail * df2
        new_log_tail = _f_logsf(fstat.max(), d1, df2_outlier)
        df2_outlier = np.log(0.5) / new_log_tail * df2_outlier
        shrunk = not_outlier * df2 + outlier * df2_outlier
    o = np.argsort(log_tail, kind="stable")
    ordered = shrunk[o]
    running = np.cumsum(ordered) / np.arange(1, n + 1)
    imin = int(np.argmin(running))
    ordered[: imin + 1] = running[imin]
    shrunk[o] = np.maximum.accumulate(ordered)
    return scale, df2, shrunk


@dataclass(frozen=True)
class Squeezed:
    df_prior: np.ndarray  # per gene (constant unless robust)
    var_prior: np.ndarray  # per gene (constant unless trend)
    var_post: np.ndarray


def squeeze_var(var, df, covariate=None, robust=False, winsor_tail_p=(0.05, 0.1)) -> Squeezed:
    """Posterior variances shrunk towards a (trended) prior: limma ``squeezeVar``."""
    var = np.asarray(var, dtype=np.float64).copy()
    df = np.broadcast_to(np.asarray(df, dtype=np.float64), var.shape)
    n = var.size
    if n == 1:
        return Squeezed(np.zeros(1), var, var)
    var[df == 0] = 0
    if robust:
        scale, _, df_prior = fit_f_dist_robustly(var, df, covariate, winsor_tail_p)
    else:
        scale, df_prior = fit_f_dist(var, df, covariate)
    df_prior = np.broadcast_to(np.asarray(df_prior, dtype=np.float64), var.shape)
    var_prior = np.broadcast_to(np.asarray(scale, dtype=np.float64), var.shape)
    if np.isnan(df_prior).any():
        raise ValueError("could not estimate the prior df")
    finite = np.isfinite(df_prior)
    with np.errstate(invalid="ignore"):
        shrunk = (df * var + df_prior * var_prior) / (df + df_prior)
    var_post = np.where(finite, shrunk, var_prior)
    return Squeezed(np.array(df_prior), np.array(var_prior), var_post)


def _tmixture(t, stdev_unscaled, df, proportion, v0_lim):
    """Prior variance of the non-null coefficients (limma ``tmixture.vector``)."""
    keep = ~np.isnan(t)
    t, su, df = np.abs(t[keep]), stdev_unscaled[keep], df[keep]
    ngenes = t.size
    ntarget = int(np.ceil(proportion / 2 * ngenes))
    if ntarget < 1:
        return np.nan
    p = max(ntarget / ngenes, proportion)
    max_df = df.max()
    lower = df < max_df
    if lower.any():
        t = t.copy()
        tail = stats.t.logsf(t[lower], df[lower])
        t[lower] = stats.t.isf(np.exp(tail), max_df)
    o = np.argsort(-t, kind="stable")[:ntarget]
    t, v1 = t[o], su[o] ** 2
    r = np.arange(1, ntarget + 1)
    p0 = 2 * stats.t.sf(t, max_df)
    ptarget = ((r - 0.5) / ngenes - (1 - p) * p0) / p
    v0 = np.zeros(ntarget)
    pos = ptarget > p0
    if pos.any():
        qtarget = stats.t.isf(ptarget[pos] / 2, max_df)
        v0[pos] = v1[pos] * ((t[pos] / qtarget) ** 2 - 1)
    v0 = np.clip(v0, v0_lim[0], v0_lim[1])
    return v0.mean()


def ebayes(coefficient, stdev_unscaled, sigma, df_residual, ave_expr=None, *, trend=False,
           robust=False, proportion=0.01, stdev_coef_lim=(0.1, 4.0),
           winsor_tail_p=(0.05, 0.1)) -> dict[str, np.ndarray]:
    """Moderated t, p, log-odds B and the priors for one coefficient (limma ``eBayes``).

    All inputs are 1-D over genes. Returns per-gene arrays ``t``, ``p_value``, ``b``,
    ``df_total``, ``s2_post``, ``s2_prior``, ``df_prior`` and the scalar ``var_prior``.
    """
    coefficient, stdev_unscaled, sigma, df_residual = (
        np.asarray(a, dtype=np.float64) for a in (coefficient, stdev_unscaled, sigma, df_residual))
    if np.nanmax(df_residual, initial=0) == 0:
        raise ValueError("no residual degrees of freedom in the linear model fits")
    if not np.isfinite(sigma).any():
        raise ValueError("no finite residual standard deviations")
    covariate = np.asarray(ave_expr, dtype=np.float64) if trend else None
    sq = squeeze_var(sigma ** 2, df_residual, covariate=covariate, robust=robust,
                     winsor_tail_p=winsor_tail_p)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = coefficient / stdev_unscaled / np.sqrt(sq.var_post)
    df_total = np.minimum(df_residual + sq.df_prior, np.nansum(df_residual))
    p = 2 * stats.t.sf(np.abs(t), df_total)

    lim = np.asarray(stdev_coef_lim) ** 2 / np.median(sq.var_prior)
    var_prior = _tmixture(t, stdev_unscaled, df_total, proportion, lim)
    if np.isnan(var_prior):
        warnings.warn("estimation of var.prior failed; set to the default value", RuntimeWarning,
                      stacklevel=2)
        var_prior = 1 / sq.var_prior  # as limma: per gene when the prior variance has a trend
    r = (stdev_unscaled ** 2 + var_prior) / stdev_unscaled ** 2
    t2 = t ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(sq.df_prior > 1e6, t2 * (1 - 1 / r) / 2,
                          (1 + df_total) / 2 * np.log((t2 + df_total) / (t2 / r + df_total)))
    b = np.log(proportion / (1 - proportion)) - np.log(r) / 2 + kernel
    return {"t": t, "p_value": p, "b": b, "df_total": df_total, "s2_post": sq.var_post,
            "s2_prior": sq.var_prior, "df_prior": sq.df_prior, "var_prior": var_prior}
