"""Principal components of the samples on the (possibly larger than memory) matrix, and the
PCA outlier rule.

Samples are the observations and genes the variables, as R ``prcomp(t(x), center=, scale.=)``
computes them: each gene is centred (``center``) and divided by its SD (``scale``; ddof 1, or
without centring by its root mean square sqrt(sum x^2 / (n - 1)), as R ``scale`` does). With
A the resulting (genes x samples) matrix and A = U S V' its SVD:

* ``scores`` (sample, component) = V S (prcomp ``$x``), ``loadings`` (gene, component) = U
  (prcomp ``$rotation``), ``variance`` = S^2 / (n - 1) (prcomp ``$sdev^2``) and
  ``variance_ratio`` = variance / the total variance of A (sum over genes of their variances),
  prcomp's "Proportion of Variance".
* Sign: each component is oriented so that the sample with the largest |score| (the first such
  sample on a tie) has a positive score. LAPACK leaves the sign to chance; this rule makes it a
  property of the data, so every method, chunking and machine gives the same orientation.
* Genes with any missing (or infinite) value are left out, and with ``scale=True`` so are
  constant genes (R refuses to scale them): their loadings are NaN, ``gene_used`` says which
  genes entered and ``n_genes_nan`` / ``n_genes_constant`` count the left-out ones.
* Components beyond the rank of A (variance below ``_RANK_TOL`` times the first, e.g. the
  n-th component of a centred matrix) have no direction: variance 0, scores and loadings NaN.

Methods (Halko, Martinsson & Tropp 2011, SIAM Review 53: 217-288):

* ``randomized``: a randomised range finder in sample space. With Omega an (n x l) standard
  normal matrix, l = n_components + oversampling, the basis Q_0 = orth(Omega) is refined by
  subspace iteration Q_{j+1} = orth(A'A Q_j), power_iterations + 1 times (the row space that
  Halko's Algorithm 4.4 with q power iterations finds), then Rayleigh-Ritz: with B = AQ, the
  eigenvectors W and eigenvalues S^2 of the small Gram matrix B'B give V = QW and U = BW / S.
  Each A'A Q_j is one pass over the gene chunks whose per-chunk (n x l) products are summed
  by a tree reduction; B (genes x l, 8 (l + 1) bytes per gene) is computed in one more pass
  and kept for the loadings. Memory per task: one chunk plus n x l. The error of component i
  shrinks as (s_{l+1} / s_i)^(2 (power_iterations + 1)) for the scores and its square for the
  variance: components well above the rest of the spectrum come out exact to rounding, the
  last of a slowly decaying spectrum less so (on ALL with the defaults: PC1 scores ~1e-5
  relative, variances ~1e-10; ``exact`` when it matters). When l >= n the range is the whole
  sample space and the exact method is used (``attrs["method"]`` says which ran).
* ``exact``: the same Rayleigh-Ritz step with Q the identity, i.e. the eigen-decomposition of
  the (n x n) Gram matrix A'A (one pass), then the loadings (a second pass): exact up to
  rounding, but it holds n x n float64 per task (800 MB at 10,000 samples); use it for up to
  a few thousand samples.

Omega comes from ``block_rng(seed, analysis_key(name, "pca"), 0)``: it depends on the seed,
the name and (n, l) only, never on the gene chunking, the workers or the scheduler.

Out of core: each pass re-reads the input (``reread=True``, the default): the pass's copy of
the input graph is bound to the previous pass's small result (``transforms.second_pass``,
i.e. ``dask.graph_manipulation.bind``), so the scheduler never holds the matrix between
passes and memory stays at a few chunks per worker. The price is power_iterations + 2 reads
of the input (2 for ``exact``), each recomputing what the input's graph does: materialise
expensive preprocessing first, as the preprocess pipeline does. ``reread=False`` shares one
read between the passes, which keeps the whole matrix in (or spilled from) worker memory.

Per-gene results do not depend on the chunking beyond rounding (partial products are summed
in another order); kernels run BLAS on one thread, so threads and processes give the same
bits.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from threadpoolctl import threadpool_limits

from engine.errors import InputError
from engine.preprocess.transforms import as_matrix, named_task, second_pass
from engine.resample.rng import analysis_key, block_rng, check_seed

__all__ = ["METHODS", "pca", "pca_outliers"]

METHODS = ("randomized", "exact")
#: Components whose eigenvalue is at most this times the largest are beyond the rank.
_RANK_TOL = 1e-12

_DESCRIPTIONS = {
    "scores": "principal component scores of the samples (prcomp $x): V S",
    "loadings": "gene loadings (prcomp $rotation): U; NaN for genes left out",
    "variance": "variance of the scores of each component (prcomp $sdev^2): S^2 / (n - 1)",
    "variance_ratio": "proportion of the total variance of the genes used",
    "gene_used": "the gene entered the PCA (no missing value; not constant when scaled)",
    "n_genes_used": "genes that entered the PCA",
    "n_genes_nan": "genes left out for a missing or infinite value",
    "n_genes_constant": "genes left out as constant (scale=True only)",
}


# -- kernels on one (genes x samples) chunk ----------------------------------------------------

def _standardized(block: np.ndarray, center: bool, scale: bool):
    """A's rows of the chunk in float64 (rows of left-out genes are zero, so they add nothing
    to any product), whether each gene is used, and whether it was left out as constant."""
    x = np.asarray(block, dtype=np.float64)
    finite = np.isfinite(x).all(axis=1)
    a = np.where(finite[:, None], x, 0.0)
    if center:
        # a constant float32 row has an exact float64 mean, so its centred row is exactly 0
        a -= a.mean(axis=1, keepdims=True)
    constant = np.zeros(a.shape[0], dtype=bool)
    if scale:
        divisor = np.sqrt(np.einsum("ij,ij->i", a, a) / max(a.shape[1] - 1, 1))
        constant = finite & (divisor == 0)
        a /= np.where(divisor > 0, divisor, 1.0)[:, None]
    used = finite & ~constant
    a[~used] = 0.0
    return a, used, constant


def _normal_product(block, q, *, center, scale):
    """This chunk's share of A'A Q: (1, n, l)."""
    a, _, _ = _standardized(block, center, scale)
    with threadpool_limits(limits=1, user_api="blas"):
        return (a.T @ (a @ q))[None]


def _gram(block, *, center, scale):
    """This chunk's share of A'A: (1, n, n)."""
    a, _, _ = _standardized(block, center, scale)
    with threadpool_limits(limits=1, user_api="blas"):
        return (a.T @ a)[None]


def _projection(block, q, *, center, scale):
    """B = A Q for this chunk's genes and a last column 1.0 for the genes used: (genes, l + 1).
    B is small (genes x l): it is kept, so the loadings need no further pass over A."""
    a, used, _ = _standardized(block, center, scale)
    with threadpool_limits(limits=1, user_api="blas"):
        b = a @ q
    return np.concatenate([b, used[:, None].astype(np.float64)], axis=1)


def _gram_of_rows(block):
    """This chunk's share of B'B from the rows of B (its last column, the flag, left out)."""
    b = np.asarray(block)[:, :-1]
    with threadpool_limits(limits=1, user_api="blas"):
        return (b.T @ b)[None]


def _summary(block, *, center, scale):
    """This chunk's [sum of squares of A, genes used, genes with NaN, constant genes]."""
    a, used, constant = _standardized(block, center, scale)
    finite = np.isfinite(np.asarray(block)).all(axis=1)
    return np.array([[np.einsum("ij,ij->", a, a), used.sum(), (~finite).sum(),
                      constant.sum()]], dtype=np.float64)


def _loadings(block, coef, *, center, scale):
    """Loadings A coef of this chunk's genes (NaN for left-out genes) and a last column 1.0
    for the genes used: (genes, k + 1)."""
    a, used, _ = _standardized(block, center, scale)
    with threadpool_limits(limits=1, user_api="blas"):
        out = a @ coef
    out[~used] = np.nan
    return np.concatenate([out, used[:, None].astype(np.float64)], axis=1)


def _loadings_from_projection(block, coef):
    """Loadings B coef from the kept rows of B (NaN for left-out genes) and the flag."""
    b = np.asarray(block)
    used = b[:, -1] == 1.0
    with threadpool_limits(limits=1, user_api="blas"):
        out = b[:, :-1] @ coef
    out[~used] = np.nan
    return np.concatenate([out, b[:, -1:]], axis=1)


# -- the small sample-space steps --------------------------------------------------------------

def _start_basis(seed: int, key: int, n: int, width: int) -> np.ndarray:
    """orth(Omega), Omega (n x width) standard normal from the analysis's block 0."""
    omega = block_rng(seed, key, 0).standard_normal((n, width))
    return _orthonormal(omega)


def _orthonormal(z: np.ndarray) -> np.ndarray:
    with threadpool_limits(limits=1, user_api="blas"):
        q, r = np.linalg.qr(z)
    # QR's sign convention is LAPACK's; fix it (positive diagonal of R) so Q is a function of z
    d = np.sign(np.diag(r))
    return q * np.where(d == 0, 1.0, d)


def _ritz(gram: np.ndarray, q: np.ndarray | None, k: int, n_samples: int) -> np.ndarray:
    """Rayleigh-Ritz on the orthonormal basis ``q`` (n x m; None: the identity, m = n) from
    the Gram matrix (AQ)'(AQ) (m x m). Returns one (n + m, k + 1) array: the scores (rows
    :n, columns :k), the coefficients C with loadings = (AQ) C (rows n:, columns :k) and the
    variances (column k, rows :k)."""
    m = gram.shape[0]
    g = (gram + gram.T) / 2  # BLAS need not return an exactly symmetric product
    with threadpool_limits(limits=1, user_api="blas"):
        eigval, w = np.linalg.eigh(g)
    eigval, w = eigval[::-1][:k], w[:, ::-1][:, :k]
    lam = np.maximum(eigval, 0.0)
    degenerate = ~(lam > _RANK_TOL * lam[0]) if lam[0] > 0 else np.ones(k, bool)
    s = np.sqrt(lam)
    with threadpool_limits(limits=1, user_api="blas"):
        scores = (w if q is None else q @ w) * s
    first = np.abs(scores).argmax(axis=0)
    sign = np.sign(scores[first, np.arange(k)])
    sign = np.where(sign == 0, 1.0, sign)
    out = np.zeros((n_samples + m, k + 1))
    out[:n_samples, :k] = scores * sign
    with np.errstate(divide="ignore", invalid="ignore"):
        out[n_samples:, :k] = w * sign / s
    out[:, :k][:, degenerate] = np.nan
    out[:k, k] = np.where(degenerate, 0.0, lam / max(n_samples - 1, 1))
    return out


# -- the lazy PCA ------------------------------------------------------------------------------

def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def pca(x: xr.DataArray, *, n_components: int = 10, center: bool = True, scale: bool = False,
        method: str = "randomized", seed: int = 0, oversampling: int = 10,
        power_iterations: int = 4, name: str = "pca", reread: bool = True) -> xr.Dataset:
    """Lazy principal components of the samples of ``x`` (gene, sample); see the module
    docstring for the conventions (prcomp(t(x))) and the methods.

    Returns a Dataset with ``scores`` (sample, component), ``loadings`` (gene, component),
    ``variance`` and ``variance_ratio`` (component), ``gene_used`` (gene) and the 0-d counts
    ``n_genes_used``, ``n_genes_nan``, ``n_genes_constant``; components are numbered 1, 2, ...
    (PC1, PC2, ...). Building it computes nothing. ``seed`` and ``name`` pick the random
    stream (``analysis_key(name, "pca")``).
    """
    if method not in METHODS:
        raise InputError(f"pca method {method!r} is not one of {', '.join(METHODS)}")
    data = as_matrix(x, "the pca input")
    n_genes, n = data.shape
    if n < 2:
        raise InputError(f"pca needs at least 2 samples, got {n}")
    k = _check_int("n_components", n_components, 1)
    if k > n:
        raise InputError(f"n_components ({k}) is larger than the number of samples ({n}); "
                         f"ask for at most {n}")
    oversampling = _check_int("oversampling", oversampling, 0)
    power_iterations = _check_int("power_iterations", power_iterations, 0)
    key = analysis_key(name, "pca")
    seed, key = check_seed(seed, key)
    width = min(k + oversampling, n)
    used_method = "exact" if method == "exact" or width >= n else "randomized"
    opts = {"center": bool(center), "scale": bool(scale)}
    token = tokenize(data, k, opts, used_method, seed, key, oversampling, power_iterations)

    def read(after):
        """The input for a pass: a fresh copy that runs after ``after`` (see the module
        docstring) or the shared one."""
        return second_pass(data, after) if reread and after is not None else data

    def summed(fn, x_pass, small, shape, label):
        """Sum over the chunks of ``x_pass`` of fn(chunk[, small]) -> one ``shape`` array."""
        chunks = ((1,) * len(x_pass.chunks[0]), (shape[0],), (shape[1],))
        if small is None:
            parts = da.map_blocks(fn, x_pass, **opts, dtype=np.float64, chunks=chunks,
                                  new_axis=2, meta=np.empty((0, 0, 0)),
                                  name=f"pca-{label}-{token}")
        else:
            parts = da.blockwise(fn, "gij", x_pass, "gi", small, "ij", **opts,
                                 adjust_chunks={"g": 1}, dtype=np.float64,
                                 meta=np.empty((0, 0, 0)), name=f"pca-{label}-{token}")
        return parts.sum(axis=0)

    first = read(None)
    summary = da.map_blocks(_summary, first, **opts, dtype=np.float64,
                            chunks=((1,) * len(first.chunks[0]), (4,)),
                            meta=np.empty((0, 0)), name=f"pca-summary-{token}").sum(axis=0)
    if used_method == "exact":
        gram = summed(_gram, first, None, (n, n), "gram")
        ritz = gram.map_blocks(_ritz, None, k, n, dtype=np.float64,
                               chunks=((2 * n,), (k + 1,)), meta=np.empty((0, 0)),
                               name=f"pca-ritz-{token}")
        coef = ritz[n:, :k]
        loaded = da.blockwise(_loadings, "gc", read(ritz), "gi", coef, "ic", **opts,
                              concatenate=True, adjust_chunks={"c": k + 1}, dtype=np.float64,
                              meta=np.empty((0, 0)), name=f"pca-loadings-{token}")
    else:
        q = da.from_delayed(named_task("pca-start-basis", _start_basis, seed, key, n, width),
                            shape=(n, width), dtype=np.float64, meta=np.empty((0, 0)))
        x_pass = first
        for j in range(power_iterations + 1):
            z = summed(_normal_product, x_pass, q, (n, width), f"power-iteration-{j}")
            q = z.map_blocks(_orthonormal, dtype=np.float64, meta=np.empty((0, 0)),
                             name=f"pca-orthonormalize-{j}-{token}")
            x_pass = read(q)
        b = da.blockwise(_projection, "gc", x_pass, "gi", q, "ic", **opts, concatenate=True,
                         adjust_chunks={"c": width + 1}, dtype=np.float64,
                         meta=np.empty((0, 0)), name=f"pca-projection-{token}")
        gram = da.map_blocks(_gram_of_rows, b, dtype=np.float64,
                             chunks=((1,) * len(b.chunks[0]), (width,), (width,)),
                             new_axis=2, meta=np.empty((0, 0, 0)),
                             name=f"pca-gram-{token}").sum(axis=0)
        ritz = da.blockwise(_ritz, "rc", gram, "ab", q, "ib", k=k, n_samples=n,
                            concatenate=True, new_axes={"r": n + width, "c": k + 1},
                            dtype=np.float64, meta=np.empty((0, 0)), name=f"pca-ritz-{token}")
        coef = ritz[n:, :k]
        loaded = da.blockwise(_loadings_from_projection, "gc", b, "gj", coef, "ic",
                              concatenate=True, adjust_chunks={"c": k + 1}, dtype=np.float64,
                              meta=np.empty((0, 0)), name=f"pca-loadings-{token}")
    scores = ritz[:n, :k]
    variance = ritz[:k, k]
    total = summary[0] / max(n - 1, 1)
    ratio = da.where(total > 0, variance / da.where(total > 0, total, 1.0), np.nan)

    component = np.arange(1, k + 1)
    coords = {"sample": x["sample"].values, "gene": x["gene"].values, "component": component}
    variables = {
        "scores": (("sample", "component"), scores),
        "loadings": (("gene", "component"), loaded[:, :k]),
        "variance": (("component",), variance),
        "variance_ratio": (("component",), ratio),
        "gene_used": (("gene",), loaded[:, k] == 1.0),
        "n_genes_used": ((), summary[1].astype(np.int64)),
        "n_genes_nan": ((), summary[2].astype(np.int64)),
        "n_genes_constant": ((), summary[3].astype(np.int64)),
    }
    return xr.Dataset(
        {v: xr.DataArray(arr, dims=dims, attrs={"description": _DESCRIPTIONS[v]})
         for v, (dims, arr) in variables.items()},
        coords=coords,
        attrs={"analysis": "pca", "reference": "R prcomp(t(x)); Halko et al. 2011",
               "method": used_method, "method_requested": method, "n_components": k,
               "center": bool(center), "scale": bool(scale), "seed": seed, "name": name,
               "random_stream": f"block_rng(seed, analysis_key({name!r}, 'pca'), 0)",
               "oversampling": oversampling, "power_iterations": power_iterations,
               "sign": "the sample with the largest |score| scores positive",
               "missing": "genes with any missing or infinite value are left out (gene_used, "
                          "n_genes_nan)" + ("; constant genes too (n_genes_constant)"
                                            if scale else ""),
               "n_genes": n_genes, "n_samples": n})


# -- the outlier rule --------------------------------------------------------------------------

def pca_outliers(scores: xr.DataArray | xr.Dataset, *, component: int | list[int] = 1,
                 sd: float = 3.0) -> xr.DataArray:
    """The rule "PC k beyond mean +/- sd SD": True for a sample whose score on component k
    (1-based: 1 is PC1) lies strictly outside mean +/- ``sd`` * SD of that component's scores
    over the samples (SD with ddof 1; samples with a missing score are left out of the mean and
    SD and are never outliers). A list of components flags a sample outlying on any of them.
    ``scores``: (sample, component) as ``pca`` returns it (or its Dataset). Lazy if the scores
    are; returns a bool DataArray along ``sample`` named ``pca_outlier``.
    """
    if isinstance(scores, xr.Dataset):
        scores = scores["scores"]
    if set(scores.dims) != {"sample", "component"}:
        raise InputError(f"pca_outliers needs (sample, component) scores, got dims {scores.dims}")
    chosen = list(component) if isinstance(component, (list, tuple)) else [component]
    n_comp = scores.sizes["component"]
    bad = [c for c in chosen if isinstance(c, bool) or not isinstance(c, (int, np.integer))
           or not 1 <= c <= n_comp]
    if not chosen or bad:
        raise InputError(f"component must be 1..{n_comp} (1 is PC1) or a list of those, "
                         f"got {component!r}")
    if isinstance(sd, bool) or not isinstance(sd, (int, float, np.number)) or not sd > 0:
        raise InputError(f"sd must be a positive number, got {sd!r}")
    s = scores.isel(component=[int(c) - 1 for c in chosen]).astype(np.float64)
    centre = s.mean("sample", skipna=True)
    spread = s.std("sample", ddof=1, skipna=True)
    outlier = (np.abs(s - centre) > sd * spread).any("component")
    outlier.name = "pca_outlier"
    outlier.attrs = {"description": "outside mean +/- sd * SD (ddof 1) of the scores on any of "
                                    "the components", "component": [int(c) for c in chosen],
                     "sd": float(sd)}
    return outlier.drop_vars([c for c in outlier.coords if c != "sample"])
