"""Per-feature logistic regression: one binary outcome, one model per feature.

Feature i's model is ``logit P(y = 1) = C gamma + u_i (beta + H delta)``: ``C`` holds the columns
every feature shares (intercept, adjustment covariates, the interaction annotation's dummies
``H``), ``u_i`` is the feature's predictor (standardised, raw or median split) and ``u_i * H`` the
interaction columns. ``beta`` (the log odds ratio of the predictor; with an interaction, in the
reference level of the interaction annotation) is what is reported; ``delta`` is tested jointly.

``logistic_regression`` is the numpy kernel: maximum likelihood by IRLS (Newton-Raphson) for a
whole (features x samples) block at once. The design is never materialised per feature: every
cross-product of the information matrix is one matrix product over samples (the feature's
columns are ``u_i`` times fixed columns), and the (features, p, p) systems are solved stacked.
Reference: R ``glm(family = binomial)`` (start, convergence rule, Wald tests) and statsmodels
``Logit`` (``params``, ``bse``, ``pvalues``, ``conf_int``); ``logistic`` is the lazy wrapper.

Conventions:

* Missing predictor values drop that sample from that feature's fit only (a zero weight, which is
  exact for IRLS). Standardisation and the median use the samples of that fit.
* ``predictor_scale``: ``"sd"`` odds ratio per 1-SD, ``u = (x - mean) / sd`` with ``sd``
  ddof = 1 (R ``scale(x)``); ``"raw"`` per unit of ``x``; ``"median"`` high vs low with
  ``u = x > median(x)`` (R ``as.numeric(x > median(x))``; values equal to the median are low).
* Start and convergence as R's ``glm.fit``: ``mustart = (y + 0.5) / 2``; converged when
  ``|dev - dev_old| / (|dev| + 0.1) < tol`` (default 1e-10, R's is 1e-8), at most ``max_iter``
  iterations; converged features are frozen after one more Newton step (below).
* Separation (complete or quasi-complete: the maximum likelihood estimate does not exist): the
  deviance still converges while the coefficients diverge, each Newton step moving the linear
  predictor of the separated samples by about 1. One Newton step after convergence is taken as a
  probe: a fit whose probe step moves any sample's linear predictor by more than
  ``SEPARATION_STEP`` (1e-3; a separated fit moves it by ~1, measured >= 0.39 over 600
  separated fits, a finite maximum by <= 1e-7 over 10,000 fits) is flagged
  ``separated = 1`` and its estimates are NaN. A fit that does not converge in ``max_iter`` gets
  NaN estimates, ``converged = 0``, and ``separated = 1`` if a fitted probability is within 1e-8
  of 0 or 1. A step that increases the deviance is halved (R's ``glm.fit`` halves only
  non-finite ones): the maximum found is the same, the separated fits are caught sooner.
* Aliased columns (a covariate level absent from a feature's samples, a predictor constant within
  an interaction level) are handled like R's ``glm``, which drops them: coefficients that remain
  estimable are reported, others are NaN. Columns are aliased when the unit-diagonal Gram
  matrix of the design has an eigenvalue below ``RANK_TOL`` (1e-10) times its largest.
* Not fitted (every column NaN, ``converged`` and ``separated`` too): a predictor that is
  constant or otherwise not estimable, fewer samples than estimable coefficients + 1, or an
  outcome with one class among the feature's samples.
* Wald inference as ``summary.glm`` and statsmodels: ``statistic = effect / se`` (z), two-sided
  normal p-value, ``ci = exp(effect -/+ z_{(1+confidence)/2} se)``; ``p_interaction`` is the
  Wald test of ``delta`` (the z test for one interaction coefficient, chi-square with k df for
  k), NaN without an interaction or when any interaction coefficient is not estimable.
* Bootstrap (``logistic(..., bootstrap=...)``, ``engine.resample.statistic_bootstrap``):
  ci_low / ci_high become the bootstrap interval of the odds ratio, computed on the odds-ratio
  scale from the replicates' odds ratios, and the Wald interval moves to ci_low_wald /
  ci_high_wald. Each replicate refits every feature on the resampled samples (standardisation
  or median split of that replicate); by default within the outcome classes (``strata: true``:
  every replicate keeps the numbers of events and non-events). Separated or non-converged
  replicate fits are undefined and left out (``n_boot`` counts those used, as
  ``rms::bootcov`` counts the fits that converged). The studentized interval uses the
  delta-method standard error of the odds ratio, odds_ratio * se.
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
from engine.stats import features as feat
from engine.stats import multitest

__all__ = ["FIELDS", "SCALES", "covariates_separate", "logistic", "logistic_regression"]

#: Columns of the kernel's output, in order.
FIELDS = ("effect", "se", "statistic", "p_value", "odds_ratio", "ci_low", "ci_high",
          "p_interaction", "n", "n_events", "converged", "separated")
SCALES = ("sd", "raw", "median")

SEPARATION_STEP = 1e-3
SEPARATION_PROB = 1e-8
_MAX_HALVING = 30
RANK_TOL = 1e-10
_ESTIMABLE_TOL = 1e-8
#: Features per IRLS batch: about 2**17 (features x samples) float64 cells (1 MB) per working
#: array, so that the ~50 elementwise passes of an iteration run in cache (1.6x faster than 16 MB).
_BATCH_CELLS = 2 ** 17


def logistic_regression(x, y, covariates=None, *, interaction=None, predictor_scale: str = "sd",
                        confidence: float = 0.95, max_iter: int = 50, tol: float = 1e-10
                        ) -> np.ndarray:
    """Fit ``y ~ covariates + u_i [+ interaction + u_i:interaction]`` for each row x_i of ``x``.

    ``x``: (features x samples) block, NaN = missing. ``y``: (samples,) outcome, 0 or 1.
    ``covariates``: (samples, c) numeric columns shared by every feature (the intercept is
    added here; text covariates must come as dummy columns). ``interaction``: (samples, k)
    0/1 dummies of the non-reference levels of the interaction annotation. Returns a float64
    (features, len(FIELDS)) array; see the module docstring for conventions.
    """
    # C order: row sums of a Fortran-ordered block would add in another order (other bits).
    block = np.ascontiguousarray(x, dtype=np.float64)
    if block.ndim != 2:
        raise ValueError(f"x must be a 2-D (features x samples) array, got shape {block.shape}")
    n_samples = block.shape[1]
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (n_samples,) or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"y must be {n_samples} values of 0 or 1")
    if predictor_scale not in SCALES:
        raise ValueError(f"predictor_scale must be one of {', '.join(SCALES)}")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    cov = _columns(covariates, n_samples, "covariates")
    inter = _columns(interaction, n_samples, "interaction")
    common = np.column_stack([np.ones(n_samples), cov, inter])
    per_feature = np.column_stack([np.ones(n_samples), inter])
    out = np.full((block.shape[0], len(FIELDS)), np.nan)
    step = max(1, _BATCH_CELLS // max(n_samples, 1))
    for start in range(0, block.shape[0], step):
        rows = slice(start, start + step)
        out[rows] = _fit_block(block[rows], y, common, per_feature, predictor_scale,
                               confidence, max_iter, tol)
    return out


def covariates_separate(y, covariates=None, interaction=None, *, max_iter: int = 50,
                        tol: float = 1e-10) -> bool:
    """Whether the shared columns alone (intercept, covariates, interaction dummies) separate
    ``y``: then every feature's fit is separated, whatever the feature."""
    y = np.asarray(y, dtype=np.float64)
    n_samples = y.shape[0]
    common = np.column_stack([np.ones(n_samples), _columns(covariates, n_samples, "covariates"),
                              _columns(interaction, n_samples, "interaction")])
    design = _Design(common, np.ones((n_samples, 1)), np.zeros((1, n_samples)))
    w = np.ones((1, n_samples))
    d, null, _ = _structure(design.gram(w, slice(None)))
    fit = np.array([0 < y.sum() < n_samples])
    return bool(_irls(design, y, w, d, null, fit, max_iter, tol)[3][0])


def _columns(m, n: int, name: str) -> np.ndarray:
    if m is None:
        return np.empty((n, 0))
    m = np.asarray(m, dtype=np.float64)
    m = m[:, None] if m.ndim == 1 else m
    if m.ndim != 2 or m.shape[0] != n or not np.isfinite(m).all():
        raise ValueError(f"{name} must be a finite (samples, columns) array with {n} rows")
    return m


def _predictor(x: np.ndarray, used: np.ndarray, scale: str):
    """The fitted predictor u (0 where missing) and the factor that turns its coefficient to x's."""
    n = used.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if scale == "median":
            median = np.nanmedian(np.where(used.any(axis=1, keepdims=True), x, 0.0), axis=1)
            return np.where(used & (x > median[:, None]), 1.0, 0.0), np.ones(len(x))
        mean = np.where(used, x, 0.0).sum(axis=1) / n
        centred = np.where(used, x - mean[:, None], 0.0)
        sd = np.sqrt((centred ** 2).sum(axis=1) / (n - 1))
        ok = np.isfinite(sd) & (sd > 0)
        # Centring and scaling change only the intercept and interaction main effects (the
        # design always has both), so "raw" is fitted standardised and scaled back.
        u = np.where(ok[:, None], centred / np.where(ok, sd, 1.0)[:, None], 0.0)
    return u, (sd if scale == "raw" else np.ones(len(x)))


class _Design:
    """X_i = [C, u_i * G] for a block of features: X^T W X, X^T v and X beta as sums over samples.

    Every entry is a row sum of an elementwise product (numpy's pairwise summation along each
    row), never a BLAS product, whose blocking depends on how many features a block holds: a
    feature's result is then bit-identical whatever chunk or batch it is fitted in.
    """

    def __init__(self, common: np.ndarray, per_feature: np.ndarray, u: np.ndarray):
        self.C, self.G, self.u = common, per_feature, u
        self.q, self.m = common.shape[1], per_feature.shape[1]
        q, m = self.q, self.m
        blocks = [  # (power of u in the weight, [(row, col, product column)]), upper triangle
            (0, [(i, j, common[:, i] * common[:, j]) for i in range(q) for j in range(i, q)]),
            (1, [(i, q + j, common[:, i] * per_feature[:, j]) for i in range(q) for j in range(m)]),
            (2, [(q + i, q + j, per_feature[:, i] * per_feature[:, j])
                 for i in range(m) for j in range(i, m)]),
        ]
        # Dummy columns repeat products (h_k h_k = h_k) or cancel them (h_k h_l = 0): each
        # distinct non-zero product is summed once; ``slots`` maps entries to it (None: zero).
        self.blocks = []
        for power, entries in blocks:
            unique, slot = [], {}
            for _, _, column in entries:
                if column.any() and column.tobytes() not in slot:
                    slot[column.tobytes()] = len(unique)
                    unique.append(column)
            slots = [(i, j, slot.get(column.tobytes())) for i, j, column in entries]
            self.blocks.append((power, unique, slots))

    @property
    def p(self) -> int:
        return self.q + self.m

    def gram(self, w: np.ndarray, rows) -> np.ndarray:
        """X^T diag(w) X for the features ``rows``, w (features, samples)."""
        u = self.u[rows]
        a = np.empty((w.shape[0], self.p, self.p))
        weighted = w
        for power, unique, slots in self.blocks:
            if power:
                weighted = weighted * u
            sums = _row_sums(weighted, unique)
            for i, j, k in slots:
                a[:, i, j] = a[:, j, i] = 0.0 if k is None else sums[:, k]
        return a

    def xtv(self, v: np.ndarray, rows) -> np.ndarray:
        return np.concatenate([_row_sums(v, self.C.T), _row_sums(v * self.u[rows], self.G.T)],
                              axis=1)

    def eta(self, beta: np.ndarray, rows) -> np.ndarray:
        return _combine(beta[:, :self.q], self.C) + self.u[rows] * _combine(beta[:, self.q:],
                                                                           self.G)


def _row_sums(v: np.ndarray, columns) -> np.ndarray:
    """(features, k): sum over samples of v * column, for each column (ones: a plain sum)."""
    out = np.empty((v.shape[0], len(columns)))
    plain = None
    for k, column in enumerate(columns):
        if np.all(column == 1.0):
            plain = v.sum(axis=1) if plain is None else plain
            out[:, k] = plain
        else:
            out[:, k] = (v * column).sum(axis=1)
    return out


def _combine(coef: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """coef @ columns.T in a fixed order; the intercept (first column, ones) as a broadcast."""
    out = np.repeat(coef[:, :1], columns.shape[0], axis=1)
    for k in range(1, columns.shape[1]):
        out += coef[:, k:k + 1] * columns[:, k]
    return out


def _structure(gram0: np.ndarray):
    """Column scales, the projector on the aliased directions (unit-diagonal coordinates), rank."""
    d = np.sqrt(np.diagonal(gram0, axis1=1, axis2=2))
    d = np.where(d > 0, d, 1.0)
    scaled = gram0 / (d[:, :, None] * d[:, None, :])
    lam, vec = np.linalg.eigh(scaled)
    aliased = lam <= RANK_TOL * lam[:, -1:]
    null = np.einsum("fik,fk,fjk->fij", vec, aliased.astype(np.float64), vec)
    return d, null, (~aliased).sum(axis=1)


def _solve(a: np.ndarray, b: np.ndarray, matrix: bool = False) -> np.ndarray:
    """Stacked a^-1 b; falls back to the pseudo-inverse when a system is exactly singular."""
    b = b if matrix else b[..., None]
    try:
        out = np.linalg.solve(a, b)
    except np.linalg.LinAlgError:  # weights underflowed to 0 in a diverging fit: rare
        out = np.linalg.pinv(a) @ b
    return out if matrix else out[..., 0]


def _halve(design, rows, old, new, e_new, dev, a_new, dev_old, y, w, tol):
    """Step-halving while the deviance increases or overflows (as R's glm.fit does for a
    non-finite deviance; glm2 for any increase). Needed only far from a maximum or when the
    coefficients diverge (separation), where normal equations lose accuracy; ``failed`` marks
    fits no halving rescued (they keep the last coefficients)."""
    def worse(dev):
        return ~np.isfinite(dev) | (dev > dev_old + tol * (np.abs(dev_old) + 0.1))

    bad = worse(dev)
    for _ in range(_MAX_HALVING):
        if not bad.any():
            break
        new[bad] = (new[bad] + old[bad]) / 2.0
        e_new[bad] = design.eta(new[bad], rows[bad])
        dev[bad], a_new[bad] = _deviance(e_new[bad], y, w[bad])
        bad &= worse(dev)
    if bad.any():
        new[bad] = old[bad]
        e_new[bad] = design.eta(old[bad], rows[bad])
        dev[bad], a_new[bad] = _deviance(e_new[bad], y, w[bad])
    return bad


def _deviance(eta: np.ndarray, y: np.ndarray, w: np.ndarray):
    """The deviance (-2 log-likelihood) per feature, and exp(-|eta|), which IRLS reuses."""
    a = np.exp(-np.abs(eta))
    # 2 (log(1 + e^eta) - y eta), written to be exact for any eta (np.logaddexp is 15x slower).
    return 2.0 * (w * (np.maximum(eta, 0.0) + np.log1p(a) - y * eta)).sum(axis=1), a


def _fit_block(x, y, common, per_feature, scale, confidence, max_iter, tol) -> np.ndarray:
    used = ~np.isnan(x)
    w = used.astype(np.float64)
    u, to_raw = _predictor(x, used, scale)
    design = _Design(common, per_feature, u)
    d, null, rank = _structure(design.gram(w, slice(None)))
    estimable = np.diagonal(null, axis1=1, axis2=2) < _ESTIMABLE_TOL
    n = w.sum(axis=1)
    events = w @ y
    fit = estimable[:, design.q] & (n > rank) & (events > 0) & (events < n)
    beta, eta, converged, separated = _irls(design, y, w, d, null, fit, max_iter, tol)
    return _wald(design, beta, eta, w, d, null, estimable, fit & converged & ~separated,
                 to_raw, confidence, n, events, fit, converged, separated)


def _irls(design, y, w, d, null, fit, max_iter, tol):
    """IRLS of the features ``fit``; returns beta, eta, converged, separated (see module doc).

    Each system is solved in unit-diagonal coordinates with the projector on the aliased
    directions added: that makes it invertible without changing the solution on the rest,
    whose aliased components stay zero (the minimum-norm solution, as R's pivoting drops them).
    """
    n_feat = len(fit)
    beta = np.zeros((n_feat, design.p))
    eta = np.broadcast_to(np.log((y + 0.5) / (1.5 - y)), w.shape).copy()  # R: mustart (y+.5)/2
    dev_old, a = _deviance(eta, y, w)
    phase = np.where(fit, 0, 2)  # 0 iterating, 1 converged (one probe step left), 2 done
    converged = np.zeros(n_feat, bool)
    separated = np.zeros(n_feat, bool)
    for iteration in range(1, max_iter + 2):
        rows = np.flatnonzero(phase < 2)
        if rows.size == 0:
            break
        every = rows.size == n_feat  # then views, not copies, of the (features, samples) arrays
        e, wr, ar = (eta, w, a) if every else (eta[rows], w[rows], a[rows])
        sel, dr = (slice(None) if every else rows), d[rows]
        inv = 1.0 / (1.0 + ar)
        tail = ar * inv  # min(mu, 1 - mu), from a = exp(-|eta|) without cancellation
        weight = wr * tail * inv
        resid = wr * (y - np.where(e >= 0.0, inv, tail))
        rhs = design.xtv(weight * e + resid, sel)
        system = design.gram(weight, sel) / (dr[:, :, None] * dr[:, None, :]) + null[rows]
        new = _solve(system, rhs / dr) / dr
        e_new = design.eta(new, sel)
        dev, a_new = _deviance(e_new, y, wr)
        failed = np.zeros(rows.size, bool)
        if iteration > 1:  # the first step starts from mustart, not from coefficients
            failed = _halve(design, rows, beta[rows], new, e_new, dev, a_new, dev_old[rows],
                            y, wr, tol)

        probing = phase[rows] == 1
        if probing.any():
            step = np.abs(e_new[probing] - e[probing])
            moved = np.max(np.where(wr[probing] > 0, step, 0.0), axis=1)
            separated[rows[probing]] = failed[probing] | (moved > SEPARATION_STEP)
        with np.errstate(invalid="ignore"):
            done = (np.abs(dev - dev_old[rows]) / (np.abs(dev) + 0.1) < tol) & ~probing & ~failed
        dev_old[rows] = dev
        converged[rows[done]] = True
        stuck = ~probing & ~done & (failed | (iteration >= max_iter))
        if stuck.any():
            tail = a_new[stuck] / (1.0 + a_new[stuck])
            nearest = np.min(np.where(wr[stuck] > 0, tail, 1.0), axis=1)
            separated[rows[stuck]] = failed[stuck] | (nearest < SEPARATION_PROB)
        phase[rows] = np.where(probing | stuck, 2, np.where(done, 1, 0))
        if every:
            beta, eta, a = new, e_new, a_new
        else:
            beta[rows], eta[rows], a[rows] = new, e_new, a_new
    return beta, eta, converged, separated


def _wald(design, beta, eta, w, d, null, estimable, ok, to_raw, confidence,
          n, events, fit, converged, separated) -> np.ndarray:
    q, k = design.q, design.m - 1
    out = np.full((beta.shape[0], len(FIELDS)), np.nan)
    rows = np.flatnonzero(ok)
    if rows.size:
        mu = special.expit(eta[rows])
        weight = w[rows] * mu * (1.0 - mu)
        dr = d[rows]
        info = design.gram(weight, rows) / (dr[:, :, None] * dr[:, None, :]) + null[rows]
        # (S + P_null)^-1 = S^+ + P_null, and P_null vanishes on estimable coefficients.
        cov = _solve(info, np.broadcast_to(np.eye(design.p), info.shape[:2] + (design.p,)),
                     matrix=True) / (dr[:, :, None] * dr[:, None, :])
        effect = beta[rows, q] / to_raw[rows]
        se = np.sqrt(cov[:, q, q]) / to_raw[rows]
        z = effect / se
        half = special.ndtri(0.5 + confidence / 2.0) * se
        out[rows, FIELDS.index("effect")] = effect
        out[rows, FIELDS.index("se")] = se
        out[rows, FIELDS.index("statistic")] = z
        out[rows, FIELDS.index("p_value")] = 2.0 * special.ndtr(-np.abs(z))
        with np.errstate(over="ignore"):  # a huge but finite estimate: an infinite bound
            out[rows, FIELDS.index("odds_ratio")] = np.exp(effect)
            out[rows, FIELDS.index("ci_low")] = np.exp(effect - half)
            out[rows, FIELDS.index("ci_high")] = np.exp(effect + half)
        if k:
            inter = slice(q + 1, q + 1 + k)
            testable = estimable[rows, inter].all(axis=1)
            delta = beta[rows, inter]
            v = cov[:, inter, inter]
            v = np.where(testable[:, None, None], v, np.eye(k))
            if k == 1:
                p_inter = 2.0 * special.ndtr(-np.abs(delta[:, 0]) / np.sqrt(v[:, 0, 0]))
            else:
                chi2 = np.einsum("fi,fi->f", delta, _solve(v, delta))
                p_inter = special.chdtrc(k, chi2)
            out[rows, FIELDS.index("p_interaction")] = np.where(testable, p_inter, np.nan)
    out[:, FIELDS.index("n")] = n
    out[:, FIELDS.index("n_events")] = events
    out[:, FIELDS.index("converged")] = np.where(fit, converged, np.nan)
    out[:, FIELDS.index("separated")] = np.where(fit, separated, np.nan)
    return out


# --- bootstrap --------------------------------------------------------------------------------


def bootstrap_odds_ratio(x, *, y, covariates, interaction, predictor_scale: str,
                         studentized: bool = False):
    """The bootstrap statistic of a block (``statistic_bootstrap`` protocol): a function of a
    replicate's sample positions ``idx`` giving every row's odds ratio refitted on those
    samples of ``x`` with their outcome, covariates and interaction dummies (NaN where the fit
    is separated, not converged or not fitted), and with ``studentized`` its delta-method
    standard error odds_ratio * se."""
    def replicate(idx):
        out = logistic_regression(x[:, idx], y[idx], covariates[idx],
                                  interaction=interaction[idx], predictor_scale=predictor_scale)
        odds = out[:, FIELDS.index("odds_ratio")]
        if not studentized:
            return odds
        return np.column_stack([odds, odds * out[:, FIELDS.index("se")]])

    return replicate


@dataclass(frozen=True)
class _Bootstrap:
    units: sb.ResampleUnits | None  # None: the stratum cannot be resampled (NaN intervals)
    options: dict


def _fit(x, *, y, covariates, interaction, predictor_scale, confidence, bootstrap=None):
    """The kernel's FIELDS, and with ``bootstrap`` the BOOT_FIELDS after them (one read)."""
    fitted = logistic_regression(x, y, covariates, interaction=interaction,
                                 predictor_scale=predictor_scale, confidence=confidence)
    if bootstrap is None:
        return fitted
    if bootstrap.units is None:
        return np.concatenate([fitted, sb.empty_interval(x.shape[0])], axis=1)
    statistic = functools.partial(bootstrap_odds_ratio, y=y, covariates=covariates,
                                  interaction=interaction, predictor_scale=predictor_scale,
                                  studentized=bootstrap.options["method"] == "studentized")
    boot = sb.bootstrap_statistic(x, statistic, bootstrap.units, **bootstrap.options)
    return np.concatenate([fitted, boot], axis=1)


# --- the lazy wrapper -------------------------------------------------------------------------

_SCALE_WORDS = {"sd": "per 1-SD increase of the feature (standardised per fit, sd with ddof=1)",
                "raw": "per unit increase of the feature",
                "median": "for feature > its median vs <= median (per fit)"}


def logistic(ds: xr.Dataset, *, outcome: str, event, reference=None, predictor_scale: str = "sd",
             covariates: Sequence[str] = (), stratify_by: str | None = None,
             interaction: str | None = None, variable: str = "expression",
             features: Sequence[str] | None = None, confidence: float = 0.95,
             adjust: str = "BH", bootstrap=None) -> xr.Dataset:
    """Per-feature logistic regression of a binary sample outcome on each feature, lazily.

    The outcome is 1 where the sample annotation ``outcome`` equals ``event`` and 0 where it
    equals ``reference`` (any other value when ``reference`` is None); other samples and those
    with a missing outcome, covariate or interaction value are left out. ``covariates``: sample
    annotations, numeric as is, text as treatment-coded dummies (first level alphabetically is
    the reference). ``interaction``: a categorical annotation h; the model is then
    ``y ~ x + h + x:h + covariates`` and ``effect`` is the predictor's log odds ratio in h's
    reference level (first alphabetically), ``p_interaction`` the Wald test of x:h.
    ``stratify_by``: one fit per stratum, dims (stratum, feature). Features are the genes of
    ``variable``, or with ``features`` numeric sample annotations (dim ``feature``).

    Returns a Dataset with ``effect, se, statistic, p_value, p_adj, odds_ratio, ci_low,
    ci_high, [p_interaction], n, n_events, converged, separated``; ``p_adj`` adjusts
    ``p_value`` across features, per stratum. Kernel and conventions: ``logistic_regression``.
    ``bootstrap`` (``statistic_bootstrap.BootstrapOptions`` or anything ``bootstrap_options``
    accepts): ci_low / ci_high are then the bootstrap interval of odds_ratio, followed by
    n_boot, ci_low_wald, ci_high_wald; ``strata: true`` resamples within the outcome classes
    (unless clusters of ``by`` span both); each stratum of ``stratify_by`` is resampled on its
    own, with its own stream. Building the result computes nothing.
    """
    if predictor_scale not in SCALES:
        raise InputError(f"predictor_scale {predictor_scale!r} is not one of {', '.join(SCALES)}")
    if not 0 < confidence < 1:
        raise InputError(f"confidence {confidence!r} must be between 0 and 1 (e.g. 0.95)")
    if adjust not in multitest.METHODS:
        raise InputError(f"adjust {adjust!r} is not one of {', '.join(multitest.METHODS)}")
    covariates = [covariates] if isinstance(covariates, str) else list(covariates)
    _check_roles(outcome, covariates, interaction, stratify_by)
    rows = feat.feature_matrix(ds, variable=variable, features=features)

    y = _outcome(ds, outcome, event, reference)
    frame = feat.sample_frame(ds, covariates + ([interaction] if interaction else []))
    complete = ~np.isnan(y) & frame.notna().all(axis=1).to_numpy()
    if not complete.any():
        raise InputError(f"no sample has both an outcome in {outcome!r} and a value of every "
                         "covariate and interaction annotation")
    cov_columns = _covariate_columns(frame, covariates, complete)
    inter_columns, inter_levels = (_dummies(frame[interaction], complete)
                                   if interaction else (np.empty((len(y), 0)), []))
    if interaction and len(inter_levels) < 2:
        raise InputError(f"interaction {interaction!r} has one level ({inter_levels[0]}) among "
                         "the samples with an outcome; an interaction needs at least two")

    roles = preview(covariates + ([interaction] if interaction else []))
    strata = feat.strata(ds, stratify_by)
    options = sb.bootstrap_options(bootstrap)
    fields = [f for f in FIELDS if interaction or f != "p_interaction"]
    n_kernel = len(FIELDS)
    if options is not None:
        positions = np.flatnonzero(complete)
        plan = sb.resampling(lambda name: feat.sample_annotation(ds, name, "bootstrap annotation"),
                             positions, options, default_strata=y[positions],
                             default_strata_name=f"{outcome} (outcome classes)")
        n_kernel += len(sb.BOOT_FIELDS)
    stacked = {f: [] for f in (*fields, "p_adj")}
    boot = {f: [] for f in sb.BOOT_FIELDS}
    for stratum in strata:
        idx = stratum.samples[complete[stratum.samples]]
        cov_s, inter_s = (_present(cov_columns[idx]), _present(inter_columns[idx]))
        if (cov_s.shape[1] or inter_s.shape[1]) and covariates_separate(y[idx], cov_s, inter_s):
            where = "" if stratify_by is None else f" where {stratify_by} == {stratum.label!r}"
            raise InputError(f"the covariates/interaction ({roles}) perfectly predict {outcome!r}"
                             f"{where} (separation: no odds ratio exists for any feature); "
                             "drop the covariate or merge its rare levels")
        kwargs = dict(y=y[idx], covariates=cov_s, interaction=inter_s,
                      predictor_scale=predictor_scale, confidence=confidence)
        if options is not None:
            kwargs["bootstrap"] = _Bootstrap(
                sb.units_or_none(plan, idx, stratified=stratify_by is not None),
                sb.kernel_options(options, sb.key_for(options, stratum.label,
                                                      stratify_by is not None)))
        x = rows.data[:, idx]
        fitted = feat.map_features(x, _fit, n_kernel, name="logistic-fit", **kwargs)
        for f in fields:
            stacked[f].append(fitted[:, FIELDS.index(f)])
        stacked["p_adj"].append(feat.adjust(fitted[:, FIELDS.index("p_value")], adjust))
        if options is not None:
            for i, f in enumerate(sb.BOOT_FIELDS):
                boot[f].append(fitted[:, len(FIELDS) + i])

    order = [*fields[:4], "p_adj", *fields[4:]]
    ref_level = inter_levels[0] if interaction else None
    attrs = {"test": "logistic", "outcome": outcome, "event": str(event),
             "reference": "all other values" if reference is None else str(reference),
             "predictor_scale": predictor_scale, "covariates": covariates,
             "confidence": confidence, "adjust": adjust, "variable": variable}
    if interaction:
        attrs.update(interaction=interaction, interaction_reference=ref_level)
    descriptions = _descriptions(outcome, event, reference, predictor_scale, interaction,
                                 ref_level, confidence, adjust, stratify_by is not None)
    if options is not None:  # the Wald interval keeps its values under new names
        for bound in ("ci_low", "ci_high"):
            stacked[f"{bound}_wald"] = stacked.pop(bound)
            descriptions[f"{bound}_wald"] = descriptions[bound]
        stacked |= boot
        at = order.index("ci_low")
        order[at:at + 2] = ["ci_low", "ci_high", "n_boot", "ci_low_wald", "ci_high_wald"]
        descriptions |= sb.interval_descriptions(options, "odds_ratio", plan)
        attrs |= sb.bootstrap_attrs(options, plan)
    return feat.stratified_result({f: stacked[f] for f in order}, rows, strata, stratify_by,
                                  descriptions=descriptions, attrs=attrs)


def _check_roles(outcome, covariates, interaction, stratify_by):
    roles = [("outcome", outcome)] + [("covariate", c) for c in covariates]
    roles += [("interaction", interaction)] if interaction else []
    roles += [("stratify_by", stratify_by)] if stratify_by else []
    seen = {}
    for role, name in roles:
        if name in seen:
            raise InputError(f"annotation {name!r} is used as both {seen[name]} and {role}; "
                             "each annotation can play one role")
        seen[name] = role


def _matches(values: np.ndarray, label, name: str) -> np.ndarray:
    if values.dtype.kind in "fiu":
        try:
            hit = values == float(label)
        except (TypeError, ValueError):
            hit = np.zeros(len(values), bool)
    else:
        hit = np.array([str(v) == str(label) for v in values])
    if not hit.any():
        present = sorted({str(v) for v in values if str(v) not in feat.MISSING_LABELS})
        raise InputError(f"no sample has {name} == {label!r} (values present: "
                         f"{preview(present, 20)})")
    return hit


def _outcome(ds, outcome, event, reference) -> np.ndarray:
    """1 for event, 0 for reference (or any other present value), NaN otherwise."""
    values = feat.sample_annotation(ds, outcome, "outcome")
    if reference is not None and str(reference) == str(event):
        raise InputError(f"event and reference are both {event!r}; choose two different values")
    is_event = _matches(values, event, outcome)
    if reference is not None:
        is_reference = _matches(values, reference, outcome)
    else:
        missing = (np.isnan(values.astype(np.float64)) if values.dtype.kind in "fiu"
                   else np.array([str(v) in feat.MISSING_LABELS for v in values]))
        is_reference = ~is_event & ~missing
        if not is_reference.any():
            raise InputError(f"every sample with a value of {outcome!r} has {event!r}; "
                             "the outcome needs a second class")
    return np.where(is_event, 1.0, np.where(is_reference, 0.0, np.nan))


def _levels(values, complete) -> list[str]:
    return sorted({str(v) for v in np.asarray(values)[complete]})


def _dummies(values, complete) -> tuple[np.ndarray, list[str]]:
    """Treatment-coded 0/1 columns of the non-reference levels (reference: first alphabetically)."""
    labels = np.array([str(v) for v in values], dtype=object)
    levels = _levels(labels, complete)
    columns = [(labels == level).astype(np.float64) for level in levels[1:]]
    return np.column_stack(columns) if columns else np.empty((len(labels), 0)), levels


def _covariate_columns(frame, covariates, complete) -> np.ndarray:
    columns = [np.empty((len(frame), 0))]
    for name in covariates:
        values = frame[name].to_numpy()
        if values.dtype.kind in "fiu":
            columns.append(np.where(complete, values.astype(np.float64), 0.0)[:, None])
        else:
            columns.append(_dummies(values, complete)[0])
    return np.column_stack(columns)


def _present(columns: np.ndarray) -> np.ndarray:
    """Drop dummy columns of levels absent from a stratum (all zero there)."""
    return columns[:, np.any(columns != 0, axis=0)]


def _descriptions(outcome, event, reference, scale, interaction, ref_level, confidence, adjust,
                  stratified):
    versus = "any other value" if reference is None else repr(str(reference))
    where = (f" in samples with {interaction} == {ref_level!r} (the interaction's reference level)"
             if interaction else "")
    per = _SCALE_WORDS[scale]
    level = f"{100 * confidence:g}%"
    return {
        "effect": f"log odds ratio of {outcome} == {str(event)!r} (vs {versus}) {per}{where}",
        "se": "standard error of effect (Wald, from the observed information)",
        "statistic": "Wald z = effect / se",
        "p_value": "two-sided Wald p-value of effect",
        "p_adj": f"{adjust} adjusted p_value over the features with a p-value"
                 + (" of the same stratum" if stratified else ""),
        "odds_ratio": f"exp(effect): odds ratio {per}{where}",
        "ci_low": f"lower bound of the {level} Wald confidence interval of odds_ratio",
        "ci_high": f"upper bound of the {level} Wald confidence interval of odds_ratio",
        "p_interaction": f"Wald test of the feature x {interaction} interaction coefficients "
                         "(z test for one, chi-square with k df for k)",
        "n": "samples in the fit (feature, outcome and covariates present)",
        "n_events": f"samples in the fit with {outcome} == {str(event)!r}",
        "converged": "1 if IRLS met the deviance criterion (R glm.fit's) within 50 iterations; "
                     "NaN if not fitted (constant feature, too few samples, one outcome class)",
        "separated": "1 if the outcome is (quasi-)completely separated: no finite odds ratio, "
                     "estimates NaN; NaN if not fitted",
    }
