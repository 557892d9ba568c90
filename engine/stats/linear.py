"""Per-gene ordinary least squares for a shared design: the kernel of ``test: ols`` and ``limma``.

``fit_contrast(y, X, c)`` fits ``y_g ~ X`` for every row ``g`` of a (genes x samples) block and
returns, per gene, the estimate of the contrast ``c'beta``, its unscaled standard deviation
``sqrt(c'(X'X)^-1 c)``, the residual standard deviation, the residual df, the average value and
the number of samples used. Genes without missing values share one least-squares solve (a QR of
``X`` and two matrix products, as limma's ``lm.series``); genes with missing values are fitted
per missing-value pattern on the samples they have, and a coefficient that is not estimable
from those samples (R's ``lm.fit`` aliases it) makes a contrast that uses it NaN.
"""

from __future__ import annotations

import numpy as np

FIELDS = ("effect", "stdev_unscaled", "sigma", "df_residual", "ave_expr", "n")


def independent_columns(x: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    """Columns of ``x`` kept by R's ``lm.fit`` (each one not a combination of those before it)."""
    scale = np.linalg.norm(x, axis=0)
    kept: list[int] = []
    for j in range(x.shape[1]):
        if scale[j] == 0:
            continue
        trial = x[:, kept + [j]] / scale[kept + [j]]
        if np.linalg.matrix_rank(trial, tol=tol) > len(kept):
            kept.append(j)
    return np.array(kept, dtype=np.int64)


def _fit_complete(y: np.ndarray, x: np.ndarray, c: np.ndarray, out: np.ndarray) -> None:
    """Fit rows of ``y`` (no NaN) on ``x``; write the FIELDS columns of ``out``."""
    n_obs = x.shape[0]
    kept = independent_columns(x)
    if np.any(c[np.setdiff1d(np.arange(x.shape[1]), kept)] != 0):
        out[:, :2] = np.nan  # the contrast uses a coefficient these samples cannot estimate
        c_kept = None
    else:
        c_kept = c[kept]
    q, r = np.linalg.qr(x[:, kept])
    qty = y @ q  # (genes, rank)
    df = n_obs - kept.size
    if c_kept is not None:
        beta = np.linalg.solve(r, qty.T).T  # (genes, rank)
        out[:, 0] = beta @ c_kept
        out[:, 1] = np.linalg.norm(np.linalg.solve(r.T, c_kept))
    if df > 0:
        residual = y - qty @ q.T
        out[:, 2] = np.sqrt(np.einsum("ij,ij->i", residual, residual) / df)
    else:
        out[:, 2] = np.nan
    out[:, 3] = df
    out[:, 4] = y.mean(axis=1)
    out[:, 5] = n_obs


def fit_contrast(y: np.ndarray, design: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """Per-gene OLS of ``y`` (genes x samples, NaN = missing) on ``design`` (samples x p).

    Returns (genes, 6) float64: FIELDS, for the contrast weights ``contrast`` (p,). Computed in
    float64 from any float input.
    """
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(design, dtype=np.float64)
    c = np.asarray(contrast, dtype=np.float64)
    out = np.full((y.shape[0], len(FIELDS)), np.nan)
    missing = np.isnan(y)
    complete = ~missing.any(axis=1)
    if complete.any():
        block = np.empty((int(complete.sum()), len(FIELDS)))
        _fit_complete(y[complete], x, c, block)
        out[complete] = block
    if not complete.all():
        rows = np.flatnonzero(~complete)
        patterns, which = np.unique(missing[rows], axis=0, return_inverse=True)
        for k, pattern in enumerate(patterns):
            genes = rows[which.ravel() == k]
            obs = ~pattern
            block = np.full((genes.size, len(FIELDS)), np.nan)
            if obs.any():
                _fit_complete(y[np.ix_(genes, obs)], x[obs], c, block)
            else:
                block[:, 3] = block[:, 5] = 0
            out[genes] = block
    return out
