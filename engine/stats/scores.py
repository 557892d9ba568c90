"""Single-sample gene-set scores other than GSVA proper: ssGSEA, z-score, PLAGE, signature score.

Every score is a (gene sets x samples) float64 matrix. Gene sets come as a membership matrix:
a ``scipy.sparse.csr_matrix`` (sets x genes), 1.0 where the gene (a row of the expression
block, in the same order) is a member. Kernels are numpy functions of in-memory blocks;
:func:`single_sample_scores` is the thin lazy wrapper over a cohort.

References and conventions:

* ``ssgsea_block``: R GSVA 1.46 ``ssgsea`` (``gsva(method="ssgsea")``; Barbie et al. 2009).
  Per sample, average ranks of all genes, truncated to integers (``mode(R) <- "integer"``);
  genes ordered by decreasing truncated rank, ties in gene order (R's stable ``order``); the
  walk steps up by rank^alpha at members and down by 1/(n - k) elsewhere; the score is the
  sum of the walk. The sum has a closed form in each member's position q (1 = lowest) and
  weight w = rank^alpha (GSVA's ``.fastRndWalk``)::

      ES = sum_m w_m q_m / sum_m w_m - (n (n + 1) / 2 - sum_m q_m) / (n - k)

  so, after one sort per sample, all sets of all samples are four sums over each set's members
  (the sparse products membership @ [w q, w, q, observed], as segment sums over the CSR rows;
  no loop over samples or sets). Float32 values are sorted as packed 64-bit keys (value bits,
  then gene), which gives R's tie order in one unstable sort.
  ``normalize`` (``ssgsea.norm``) divides every score by max - min of the whole score matrix,
  a global step (:func:`ssgsea_range_normalize`, or one lazy reduction in the wrapper).
* ``zscore_scores``: GSVA ``zscore`` (Lee et al. 2008): genes standardised across samples
  (``t(scale(t(X)))``), score = sum of the members' z / sqrt(k).
* ``plage_scores``: GSVA ``plage`` (Tomfohr et al. 2005): genes standardised across samples,
  score = first right singular vector of the set's (members x samples) z matrix.
  The sign of a singular vector is arbitrary; GSVA does not fix it (it returns whatever
  LAPACK ``dgesdd`` via R ``svd`` gives). Here the sign is fixed so that the score correlates
  positively with the set's mean z across samples (sum_j v_j mean_i z_ij >= 0); when that is
  0, the largest |v_j| (first one on ties) is made positive. Compare with GSVA up to sign.
* ``signature_score``: the mean of the members' values per sample (``kind="mean"``: the
  mean-log2 score used for the ICR score, Hendrickx et al. 2017) or of their z-scores
  (``kind="mean_z"``), optionally weighted by coefficients.

Missing values (NaN) and degenerate genes, as in GSVA where GSVA defines them:

* GSVA drops genes whose standard deviation across samples is < 1e-10 or NA before zscore and
  PLAGE (``.filterFeatures``), so such members are left out of their sets (``size`` counts the
  members actually used). The same holds for ``mean_z``. ssGSEA and ``mean`` keep every gene.
* ssGSEA: a sample's missing genes are left out of that sample: ranks and n are over the
  genes observed in the sample and k over the members observed in it (GSVA defines no rule
  for NA). With no missing value this is exactly GSVA.
* zscore and mean_z: a gene is standardised over its observed samples (mean, sd with n - 1);
  a set's score in a sample uses the members observed there (k per sample). GSVA drops a gene
  with any NA; with no missing value the two agree.
* PLAGE needs complete rows: members with any missing value are left out, as GSVA does.
* mean: the mean over the members observed in the sample.
* A set with no usable member (in a sample) scores NaN; so does ssGSEA when every observed
  gene is a member (k = n), and a range normalisation over a matrix whose range is 0 or NaN.
"""

from __future__ import annotations

from collections import Counter

import dask
import dask.array as da
from dask.base import tokenize
import numpy as np
from threadpoolctl import threadpool_limits
import scipy.sparse as sp
import xarray as xr

from engine.errors import InputError, preview
from engine.stats.features import by_sample, feature_matrix

__all__ = [
    "METHODS",
    "SIGNATURE_KINDS",
    "plage_scores",
    "signature_score",
    "single_sample_scores",
    "ssgsea_block",
    "ssgsea_range_normalize",
    "standardize_rows",
    "zscore_scores",
]

METHODS = ("ssgsea", "zscore", "plage", "signature_score")
SIGNATURE_KINDS = ("mean", "mean_z")

#: GSVA's ``.filterFeatures``: genes whose sd across samples is below this are constant.
CONSTANT_SD = 1e-10
#: Memory for one batch of padded (members x samples) PLAGE matrices.
PLAGE_BATCH_BYTES = 128 * 2**20
#: Sets whose sizes lie within this factor share one padded PLAGE batch.
PLAGE_SIZE_RATIO = 1.25


# -- helpers -------------------------------------------------------------------------------------

def _block(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D (genes x samples) array, got shape {x.shape}")
    return x


def as_membership(membership, n_genes: int) -> sp.csr_matrix:
    """A canonical (sorted indices, no duplicates) float64 CSR matrix of ``n_genes`` columns."""
    m = sp.csr_matrix(membership, dtype=np.float64)
    if m.shape[1] != n_genes:
        raise ValueError(f"membership has {m.shape[1]} gene columns but x has {n_genes} genes; "
                         "map the sets onto the rows of x")
    m = m.copy()
    m.sum_duplicates()
    m.sort_indices()
    return m


def _members_only(membership: sp.csr_matrix) -> sp.csr_matrix:
    """The 0/1 pattern of a membership (or weight) matrix."""
    m = membership.copy()
    m.eliminate_zeros()
    m.data = np.ones_like(m.data)
    return m


def _product(m: sp.csr_matrix, x: np.ndarray) -> np.ndarray:
    """``m @ x`` for a C-contiguous float64 ``x``: each output value sums its set's members in
    gene order, whatever the number of columns, so results do not depend on sample chunking."""
    return np.asarray(m @ np.ascontiguousarray(x, dtype=np.float64))


# -- ssGSEA --------------------------------------------------------------------------------------

def _float32_keys(x32: np.ndarray) -> np.ndarray:
    """Sort keys (samples x genes, uint64) of float32 values: value order in the high 32 bits
    (NaN last, -0 == 0), and n - 1 - gene in the low bits, so that ties sort by gene descending."""
    x32 = x32 + np.float32(0)  # -0.0 -> +0.0: R ranks them as ties
    bits = x32.view(np.uint32)
    flip = (bits.view(np.int32) >> 31).view(np.uint32)
    flip |= np.uint32(0x80000000)  # negative: flip every bit; positive: the sign bit
    flip ^= bits
    flip[np.isnan(x32)] = np.uint32(0xFFFFFFFF)
    keys = flip.astype(np.uint64)
    keys <<= np.uint64(32)
    keys |= np.arange(x32.shape[1] - 1, -1, -1, dtype=np.uint64)
    return keys


def _ssgsea_positions(x: np.ndarray, genes_wanted: np.ndarray):
    """Per sample: truncated average ranks and walk positions of the genes ``genes_wanted``.

    ``x`` is (samples x genes). Returns ``rank`` (GSVA's ``R``: average ranks of all genes
    truncated to integers, 1 = lowest), ``position`` (q = n + 1 - p where p is the gene's place
    in R's ``order(R[, j], decreasing=TRUE)``, ties in gene order), both (samples x wanted)
    int64 and 0 where the value is missing, and ``n`` the number of observed genes per sample.
    """
    n_samples, n_genes = x.shape
    if x.dtype == np.float32:
        keys = np.sort(_float32_keys(x), axis=1)  # unique keys: any sort algorithm is exact
        halves = keys.view(np.uint32).reshape(n_samples, n_genes, 2)  # little-endian: low, high
        genes = (n_genes - 1) - halves[..., 0].astype(np.int32)
        values = halves[..., 1]
        n = (values != np.uint32(0xFFFFFFFF)).sum(axis=1)
    else:
        reverse = np.ascontiguousarray(np.asarray(x, dtype=np.float64)[:, ::-1])
        order = np.argsort(reverse, axis=1, kind="stable")
        genes = (n_genes - 1 - order).astype(np.int32)
        values = np.take_along_axis(reverse, order, axis=1)
        n = (~np.isnan(values)).sum(axis=1)
    rank_sorted = _truncated_average_ranks(values)
    # where each gene landed: the inverse of the sort
    landed = np.empty((n_samples, n_genes), dtype=np.int32)
    landed[np.arange(n_samples)[:, None], genes] = np.arange(n_genes, dtype=np.int32)
    place = landed[:, genes_wanted].astype(np.int64)
    rank = np.take_along_axis(rank_sorted, place, axis=1).astype(np.int64)
    observed = place < n[:, None]  # missing values sort last
    return np.where(observed, rank, 0), np.where(observed, place + 1, 0), n


def _truncated_average_ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks of row-sorted values, truncated to integers (R ``rank`` with ties
    "average", then ``mode(R) <- "integer"``): (first + last place of a run of ties) // 2.
    Works on the tied pairs only, so its cost grows with the number of ties."""
    n_samples, n_genes = values.shape
    rank = np.broadcast_to(np.arange(1, n_genes + 1, dtype=np.int32), values.shape).copy()
    if n_genes < 2:
        return rank
    tied = np.flatnonzero(values[:, 1:] == values[:, :-1])  # pair (c, c + 1) of row r
    if tied.size == 0:
        return rank
    row, col = np.divmod(tied, n_genes - 1)
    new_run = np.ones(tied.size, dtype=bool)
    new_run[1:] = (np.diff(tied) != 1) | (row[1:] != row[:-1])
    run = np.cumsum(new_run) - 1
    start = col[new_run]
    stop = np.append(col[np.flatnonzero(new_run)[1:] - 1], col[-1]) + 1  # last place of the run
    average = (start + 1 + stop + 1) // 2
    rank[row, col] = average[run]
    rank[row[new_run], stop] = average
    return rank


def _sum_members(values: np.ndarray, membership: sp.csr_matrix) -> np.ndarray:
    """(sets x samples) sums of ``values`` (samples x members, one column per stored member of
    ``membership``, set after set). Each sum runs over the set's members in gene order, the
    same operations whatever the number of samples."""
    out = np.zeros((membership.shape[0], values.shape[0]))
    filled = np.flatnonzero(np.diff(membership.indptr) > 0)
    if filled.size:
        out[filled] = np.add.reduceat(values, membership.indptr[filled], axis=1).T
    return out


def ssgsea_block(x, membership, *, alpha: float = 0.25) -> np.ndarray:
    """Unnormalised ssGSEA scores (sets x samples) of a block of samples: R GSVA 1.46 ``ssgsea``.

    ``x`` is (all genes x some samples); every gene of the cohort takes part in the ranking, so
    a block must hold all genes. ``membership`` is a (sets x genes) sparse 0/1 matrix. Float32
    input is ranked as is (its values are exact in float64); all sums are float64. A sample's
    missing genes are left out of its ranking (see the module docstring); undefined scores are
    NaN. Normalise the whole matrix afterwards with :func:`ssgsea_range_normalize`.
    """
    x = _block(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    n_genes, n_samples = x.shape
    m = _members_only(as_membership(membership, n_genes))
    if n_samples == 0 or m.shape[0] == 0:
        return np.full((m.shape[0], n_samples), np.nan)
    rank, position, n = _ssgsea_positions(np.ascontiguousarray(x.T), m.indices)
    # rank^alpha through a table of every integer rank (R: abs(R)^alpha, one pow per value);
    # rank 0 marks a missing value: weight 0
    table = np.arange(n_genes + 1, dtype=np.float64) ** float(alpha)
    table[0] = 0.0
    weight = table[rank]
    wq = _sum_members(weight * position, m)
    w = _sum_members(weight, m)
    q = _sum_members(position.astype(np.float64), m)
    k = _sum_members((rank > 0).astype(np.float64), m)
    n = n.astype(np.float64)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        es = wq / w - (n * (n + 1) / 2 - q) / (n - k)
    es[(k == 0) | (k >= n)] = np.nan
    return es


def ssgsea_range_normalize(scores) -> np.ndarray:
    """GSVA's ``ssgsea.norm``: every score divided by max - min of the whole score matrix.

    NaN scores are left out of the range (R's ``range`` would make everything NA); a range of
    0 or NaN gives NaN.
    """
    scores = np.asarray(scores, dtype=np.float64)
    return scores / _valid_range(scores)


def _valid_range(scores) -> float:
    finite = scores[~np.isnan(scores)]
    if finite.size == 0:
        return np.nan
    r = float(finite.max() - finite.min())
    return r if r > 0 and np.isfinite(r) else np.nan


# -- standardised genes: zscore, PLAGE, mean_z ---------------------------------------------------

def standardize_rows(x, *, complete: bool = False) -> np.ndarray:
    """Genes standardised across samples as R ``t(scale(t(X)))``: (x - mean) / sd, sd with
    n - 1, over each gene's observed samples.

    Genes with sd < 1e-10 (GSVA's constant genes) or fewer than 2 observed values become NaN
    rows (GSVA drops them); with ``complete`` (PLAGE), so do genes with any missing value.
    Row-local: a gene's z does not depend on which other genes are in the block.
    """
    x = np.ascontiguousarray(_block(x), dtype=np.float64)
    observed = ~np.isnan(x)
    count = observed.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.nansum(x, axis=1) / count
        centred = x - mean[:, None]
        sd = np.sqrt(np.nansum(centred * centred, axis=1) / (count - 1))
        z = centred / sd[:, None]
    bad = ~(sd >= CONSTANT_SD) | (count < 2)
    if complete:
        bad |= count < x.shape[1]
    z[bad] = np.nan
    return z


def _usable(z: np.ndarray) -> np.ndarray:
    """1.0 for genes with a defined z in at least one sample."""
    return (~np.isnan(z)).any(axis=1).astype(np.float64)


def _sum_over_members(m: sp.csr_matrix, values: np.ndarray, *, weighted_count: sp.csr_matrix):
    """(sum of members' values, count of observed members) per set and sample."""
    observed = ~np.isnan(values)
    total = _product(m, np.where(observed, values, 0.0))
    count = _product(weighted_count, observed.astype(np.float64))
    return total, count


def _zscore_from_z(z: np.ndarray, membership: sp.csr_matrix) -> np.ndarray:
    m = _members_only(membership)
    total, count = _sum_over_members(m, z, weighted_count=m)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.sqrt(count), np.nan)


def zscore_scores(x, membership) -> np.ndarray:
    """GSVA ``zscore`` (combined z-score, Lee et al. 2008): sum over members of the gene's z in
    the sample / sqrt(k). ``x`` holds every member gene (rows matching ``membership``'s
    columns) across all samples. Missing values and constant genes: see the module docstring.
    """
    x = _block(x)
    m = as_membership(membership, x.shape[0])
    return _zscore_from_z(standardize_rows(x), m)


def _plage_batches(sizes: np.ndarray, n_samples: int) -> list[np.ndarray]:
    """Sets (positions) grouped by similar size for padded batched SVDs: a handful of groups
    (sizes within ``PLAGE_SIZE_RATIO`` of the group's smallest), each within the memory budget.
    Depends on the set sizes only, never on chunking."""
    order = np.argsort(sizes, kind="stable")
    groups, current = [], []
    for s in order:
        k = max(int(sizes[s]), 1)
        if current:
            smallest = max(int(sizes[current[0]]), 1)
            too_big = (len(current) + 1) * k * n_samples * 8 > PLAGE_BATCH_BYTES
            if k > PLAGE_SIZE_RATIO * smallest or too_big:
                groups.append(np.array(current))
                current = []
        current.append(s)
    if current:
        groups.append(np.array(current))
    return groups


def _plage_group(z: np.ndarray, membership: sp.csr_matrix) -> np.ndarray:
    """PLAGE of sets whose members are rows of ``z`` (NaN rows = left-out genes): one batched
    SVD of the sets' zero-padded (k_max x samples) matrices. Zero rows (padding and left-out
    genes) change neither the right singular vectors nor the singular values."""
    n_sets, n_samples = membership.shape[0], z.shape[1]
    zz = np.where(np.isnan(z), 0.0, z)
    k_max = max(int(np.diff(membership.indptr).max(initial=0)), 1)
    batch = np.zeros((n_sets, k_max, n_samples))
    for_set = np.repeat(np.arange(n_sets), np.diff(membership.indptr))
    slot = np.arange(membership.nnz) - membership.indptr[for_set]
    batch[for_set, slot] = zz[membership.indices]
    if n_samples == 0:
        return np.zeros((n_sets, 0))
    # one BLAS thread: the same bits on threads and processes, and no oversubscription when
    # several Dask threads run an SVD each
    with threadpool_limits(limits=1, user_api="blas"):
        _, s, vt = np.linalg.svd(batch, full_matrices=False)
    v = vt[:, 0, :]
    direction = np.einsum("sj,sj->s", v, batch.sum(axis=1))
    largest = np.take_along_axis(v, np.abs(v).argmax(axis=1)[:, None], axis=1)[:, 0]
    sign = np.where(direction != 0, np.sign(direction), np.sign(largest))
    v = v * np.where(sign == 0, 1.0, sign)[:, None]
    v[~(s[:, 0] > 0)] = np.nan  # no usable member: no direction
    return v


def _plage_from_z(z: np.ndarray, membership: sp.csr_matrix) -> np.ndarray:
    m = _members_only(membership)
    out = np.full((m.shape[0], z.shape[1]), np.nan)
    for group in _plage_batches(np.diff(m.indptr), z.shape[1]):
        out[group] = _plage_group(z, m[group])
    return out


def plage_scores(x, membership) -> np.ndarray:
    """GSVA ``plage`` (Tomfohr et al. 2005): the first right singular vector of each set's
    standardised (members x samples) matrix, R ``svd(Z[set, ])$v[, 1]``, with the sign fixed
    as in the module docstring (GSVA leaves it to LAPACK). ``x`` holds every member gene
    across all samples. Members with any missing value or constant are left out.
    """
    x = _block(x)
    m = as_membership(membership, x.shape[0])
    return _plage_from_z(standardize_rows(x, complete=True), m)


# -- signature scores ----------------------------------------------------------------------------

def signature_score(x, membership, *, kind: str = "mean", weights=None) -> np.ndarray:
    """Per set and sample, the mean of the members' values (``kind="mean"``: the mean-log2
    score, e.g. the ICR score of Hendrickx et al. 2017, on log2 data) or of their z-scores
    across samples (``kind="mean_z"``; constant genes left out), over the members observed in
    that sample.

    ``weights``: optional (sets x genes) sparse or dense matrix of coefficients (nonzero only on
    members): the score is then sum_g w_g v_g / sum_g |w_g| over the observed members, the
    weighted mean for positive weights and, for signed coefficients, the linear score scaled by
    the total absolute weight of the members observed.
    """
    x = _block(x)
    if kind not in SIGNATURE_KINDS:
        raise InputError(f"signature kind {kind!r} is not one of {', '.join(SIGNATURE_KINDS)}")
    m = as_membership(membership, x.shape[0])
    values = standardize_rows(x) if kind == "mean_z" else np.asarray(x, dtype=np.float64)
    return _signature_from_values(values, _signature_weights(m, weights))


def _signature_weights(m: sp.csr_matrix, weights) -> sp.csr_matrix:
    if weights is None:
        return _members_only(m)
    w = as_membership(weights, m.shape[1])
    if w.shape != m.shape:
        raise ValueError(f"weights have shape {w.shape}, membership {m.shape}")
    w = w.multiply(_members_only(m)).tocsr()  # coefficients of members only
    w.sort_indices()
    return w


def _signature_from_values(values: np.ndarray, w: sp.csr_matrix) -> np.ndarray:
    absolute = abs(w).tocsr()
    total, count = _sum_over_members(w, values, weighted_count=absolute)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / count, np.nan)


# -- the lazy wrapper ----------------------------------------------------------------------------

DESCRIPTIONS = {
    "ssgsea": "ssGSEA enrichment score (R GSVA 1.46 ssgsea, alpha {alpha}){norm}",
    "zscore": "combined z-score: sum of members' z / sqrt(k) (R GSVA 1.46 zscore)",
    "plage": "PLAGE: first right singular vector of the members' z matrix (R GSVA 1.46 plage; "
             "sign: positively correlated with the members' mean z)",
    "signature_score": "{weighted}mean of the members' {what} per sample (over the members "
                       "observed in the sample)",
}
SIZE_DESCRIPTIONS = {
    "ssgsea": "members in the cohort (all ranked)",
    "zscore": "members used: not constant, at least 2 observed values",
    "plage": "members used: not constant, no missing value",
    "mean": "members in the cohort",
    "mean_z": "members used: not constant, at least 2 observed values",
}


def single_sample_scores(ds: xr.Dataset, membership, *, method: str,
                         variable: str = "expression", alpha: float = 0.25,
                         normalize: bool = True, signature: str = "mean",
                         samples_per_chunk: int = 256, weights=None) -> xr.Dataset:
    """Lazy single-sample gene-set scores of a cohort: ``score`` (gene_set, sample) and
    ``size`` (gene_set,).

    ``membership``: an object with ``.names`` (one per set) and ``.matrix`` (sets x genes sparse
    0/1, columns = the rows of ``variable``). ``method``: ``ssgsea`` (all genes x blocks of
    ``samples_per_chunk`` samples, then one global range reduction when ``normalize``),
    ``zscore``, ``plage`` or ``signature_score`` (``signature``: ``mean`` | ``mean_z``; optional
    ``weights`` as in :func:`signature_score`), which read only the member genes. Building the
    result computes nothing. Scores are bit-identical for any chunking of genes or samples and
    any number of workers: each value is made by the same operations in every case (sums over a
    set's members in gene order, never across chunks). The one exception is PLAGE's SVD, which
    runs in LAPACK/BLAS: its last bits can depend on the BLAS thread count (1e-14 seen at 1,000
    samples), which is 1 in Dask's worker processes and the machine's cores in-process.
    """
    if method not in METHODS:
        raise InputError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if signature not in SIGNATURE_KINDS:
        raise InputError(f"signature {signature!r} is not one of {', '.join(SIGNATURE_KINDS)}")
    if weights is not None and method != "signature_score":
        raise InputError("weights apply to method signature_score only")
    features = feature_matrix(ds, variable=variable)
    x = features.data
    names, m = membership_of(membership, x.shape[0], features.dim)
    if weights is not None:
        if getattr(weights, "shape", None) != m.shape:
            raise InputError(f"weights have shape {getattr(weights, 'shape', None)}, expected "
                             f"the membership's {m.shape} (sets x {features.dim}s)")
        weights = sp.csr_matrix(weights, dtype=np.float64)
    token = tokenize(x, m, method, alpha, normalize, signature, samples_per_chunk, weights)
    n_sets = m.shape[0]
    if method == "ssgsea":
        xb = by_sample(x, samples_per_chunk)
        score = xb.map_blocks(_ssgsea_task, membership=_shared(m), alpha=float(alpha),
                              dtype=np.float64,
                              meta=np.empty((0, 0), np.float64), chunks=((n_sets,), xb.chunks[1]),
                              name=f"ssgsea-rank-walk-{token}")
        if normalize:
            score = _normalize_lazy(score, token)
        size = da.from_array(np.diff(m.indptr).astype(np.int64), chunks=-1)
    else:
        score, size = _member_scores(x, m, method, signature, samples_per_chunk, weights, token)
    key = signature if method == "signature_score" else method
    description = DESCRIPTIONS[method].format(
        alpha=alpha, norm=", divided by the range of the whole score matrix" if normalize else "",
        what="z-scores across samples" if signature == "mean_z" else "values",
        weighted="" if weights is None else "coefficient-weighted (sum w v / sum |w|) ")
    sample = ds["sample"].values
    attrs = {"test": method}
    if method == "ssgsea":
        attrs.update(alpha=float(alpha), normalize=int(bool(normalize)))
    if method == "signature_score":
        attrs.update(signature=signature, weighted=int(weights is not None))
    return xr.Dataset(
        {"score": xr.DataArray(score, dims=("gene_set", "sample"),
                               attrs={"description": description}),
         "size": xr.DataArray(size, dims=("gene_set",),
                              attrs={"description": SIZE_DESCRIPTIONS[key]})},
        coords={"gene_set": names, "sample": sample}, attrs=attrs)


def membership_of(membership, n_rows: int, row_dim: str):
    names = getattr(membership, "names", None)
    matrix = getattr(membership, "matrix", None)
    if names is None or matrix is None:
        raise InputError("gene sets must come as a membership with .names and .matrix "
                         "(map the GMT onto the cohort first)")
    names = np.asarray([str(n) for n in names], dtype=object)
    if not sp.issparse(matrix) and not isinstance(matrix, np.ndarray):
        raise InputError("membership.matrix must be a (sets x genes) scipy.sparse matrix")
    if matrix.shape != (names.size, n_rows):
        raise InputError(f"membership.matrix has shape {matrix.shape}, expected ({names.size} "
                         f"sets x {n_rows} {row_dim}s of the cohort); map the sets onto this "
                         "cohort's rows")
    duplicated = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicated:
        raise InputError(f"gene set names must be unique: {preview(duplicated)} repeated")
    return names, as_membership(matrix, n_rows)


def _ssgsea_task(block, *, membership, alpha):
    return ssgsea_block(np.asarray(block), membership, alpha=alpha)


def _normalize_lazy(score: da.Array, token: str) -> da.Array:
    """The global step of ssGSEA: one range reduction over the whole (sets x samples) matrix."""
    low = da.nanmin(score) if score.size else da.from_array(np.float64(np.nan))
    high = da.nanmax(score) if score.size else low
    return da.map_blocks(_divide_by_range, score, low, high, dtype=np.float64,
                         meta=np.empty((0, 0), np.float64), name=f"ssgsea-normalize-{token}")


def _divide_by_range(block, low, high):
    r = float(high) - float(low)
    r = r if r > 0 and np.isfinite(r) else np.nan
    return np.asarray(block, dtype=np.float64) / r


def _member_scores(x: da.Array, m: sp.csr_matrix, method: str, signature: str,
                   samples_per_chunk: int, weights, token: str):
    """Scores that need each member gene across all samples: the union of the members is
    gathered (lazily, gene chunks as stored), standardised per gene chunk where the method
    needs z, then combined per block of samples (zscore, signature) or per group of sets
    (PLAGE, whose SVD needs all samples)."""
    n_sets, n_samples = m.shape[0], x.shape[1]
    kind = method.replace("_", "-")  # the tasks' names on the dashboard: zscore-standardize
    rows = np.unique(m.indices)
    sub = m[:, rows]
    sub.sort_indices()
    xm = x[rows] if rows.size else da.zeros((0, n_samples), chunks=(0, n_samples))
    if method == "signature_score" and signature == "mean":
        values, usable = xm, None  # float32 until the kernel: summed in float64
    else:
        values = xm.map_blocks(_standardize_task, complete=method == "plage", dtype=np.float64,
                               meta=np.empty((0, 0)), name=f"{kind}-standardize-{token}")
        usable = values.map_blocks(_usable, drop_axis=1, dtype=np.float64,
                                   meta=np.empty((0,)), token=f"{kind}-usable-genes")
    if usable is None:
        size = da.from_array(np.diff(sub.indptr).astype(np.int64), chunks=-1)
    else:
        size = usable.rechunk(-1).map_blocks(
            _members_used, membership=_members_only(sub), chunks=((n_sets,),), dtype=np.int64,
            meta=np.empty((0,), np.int64), name=f"{kind}-set-size-{token}")
    if method == "plage":
        return _plage_lazy(values, sub, token), size
    if rows.size == 0:
        return da.full((n_sets, n_samples), np.nan, chunks=(n_sets, samples_per_chunk)), size
    vb = by_sample(values, samples_per_chunk)
    if method == "zscore":
        fn, matrix = _zscore_from_z, sub
    else:
        fn, matrix = _signature_from_values, _signature_weights(
            sub, None if weights is None else weights[:, rows])
    score = vb.map_blocks(_call_with_matrix, fn=fn, matrix=_shared(matrix), dtype=np.float64,
                          meta=np.empty((0, 0), np.float64), chunks=((n_sets,), vb.chunks[1]),
                          name=f"{kind}-set-score-{token}")
    return score, size


def _plage_lazy(z: da.Array, sub: sp.csr_matrix, token: str) -> da.Array:
    n_sets, n_samples = sub.shape[0], z.shape[1]
    sub01 = _members_only(sub)
    parts, placed = [], []
    for group in _plage_batches(np.diff(sub01.indptr), n_samples):
        msub = sub01[group]
        rows = np.unique(msub.indices)
        if rows.size == 0:
            part = da.full((group.size, n_samples), np.nan, chunks=(group.size, n_samples))
        else:
            zg = z[rows].rechunk((rows.size, n_samples))
            local = msub[:, rows]
            local.sort_indices()
            part = zg.map_blocks(_call_numpy, fn=_plage_group, kwargs={"membership": local},
                                 dtype=np.float64, meta=np.empty((0, 0), np.float64),
                                 chunks=((group.size,), (n_samples,)),
                                 name=f"plage-svd-{tokenize(token, group)}")
        parts.append(part)
        placed.append(group)
    if not parts:
        return da.zeros((0, n_samples), chunks=(0, n_samples))
    stacked = da.concatenate(parts, axis=0)
    inverse = np.empty(n_sets, dtype=np.intp)
    inverse[np.concatenate(placed)] = np.arange(n_sets)
    return stacked[inverse]


def _members_used(usable, *, membership):
    return _product(membership, usable[:, None])[:, 0].astype(np.int64)


def _standardize_task(block, *, complete):
    return standardize_rows(np.asarray(block), complete=complete)


def _call_numpy(block, *, fn, kwargs):
    return fn(np.asarray(block), **kwargs)


def _call_with_matrix(block, *, fn, matrix):
    return fn(np.asarray(block), matrix)


def _shared(matrix: sp.csr_matrix):
    """The membership as one graph key that every block task reads, instead of a copy inside
    each task (a large library times thousands of sample blocks); ``gene-set-matrix`` on the
    dashboard."""
    return dask.delayed(matrix, pure=True, name=f"gene-set-matrix-{tokenize(matrix)}")

