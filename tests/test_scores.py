"""Single-sample gene-set scores: ssGSEA, z-score, PLAGE, signature scores.

References: R GSVA 1.46 on the float32-rounded ALL cohort with the Hallmark (probe IDs) and
random gene sets (tests/data/r_reference/ssgsea, see its README), plain loop implementations of
the R code written here (the ssGSEA random walk of GSVA's ``.rndWalk``, ``t(scale(t(X)))``,
``svd``), and the in-memory kernels for the lazy wrapper across chunkings and schedulers.
"""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path
from types import SimpleNamespace

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from engine.errors import InputError
from engine.stats.scores import (
    plage_scores,
    signature_score,
    single_sample_scores,
    ssgsea_block,
    ssgsea_range_normalize,
    standardize_rows,
    zscore_scores,
)
from engine.store import open_cohort

REF = Path(__file__).parent / "data" / "r_reference" / "ssgsea"
GMTS = {"hallmark": "hallmark_v7.0_hgu95_probes.gmt.gz", "random": "random_genesets_seed1.gmt.gz"}
RTOL = 1e-6


# -- helpers -------------------------------------------------------------------------------------

def membership_from_lists(names, member_lists, n_genes) -> SimpleNamespace:
    rows = [np.unique(np.asarray(m, dtype=np.int64)) for m in member_lists]
    indptr = np.r_[0, np.cumsum([r.size for r in rows])]
    indices = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    matrix = sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=(len(rows), n_genes))
    return SimpleNamespace(names=list(names), matrix=matrix)


def read_gmt(name: str, gene_ids) -> SimpleNamespace:
    """A GMT (``name<TAB>description<TAB>genes...``) mapped onto ``gene_ids`` by ID."""
    where = {g: i for i, g in enumerate(gene_ids)}
    names, members = [], []
    with gzip.open(REF / name, "rt") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            names.append(parts[0])
            members.append([where[g] for g in parts[2:] if g in where])
    return membership_from_lists(names, members, len(gene_ids))


def read_scores(sets: str, method: str, ds: xr.Dataset, names):
    """R's scores of the committed samples (every other one; R scored all 128) and their
    positions in ``ds``."""
    table = pd.read_csv(REF / f"all_f32_{sets}_{method}.tsv.gz", sep="\t", index_col=0)
    samples = [str(s) for s in ds["sample"].values]
    assert len(table.columns) == 64 and set(table.columns) <= set(samples)
    return table.loc[list(names)].to_numpy(), [samples.index(c) for c in table.columns]


@pytest.fixture(scope="module")
def all_ds(all_store) -> xr.Dataset:
    return open_cohort(all_store)


@pytest.fixture(scope="module")
def all_sets(all_ds):
    ids = np.asarray(all_ds["gene"].values).astype(str)
    return {k: read_gmt(v, ids) for k, v in GMTS.items()}


def assert_close_to_r(ours, r, what):
    """1e-6 relative; near 0 an absolute 1e-9 x the largest |score| of the matrix: a score is a
    difference of terms of the matrix's scale (ssGSEA: two walk sums of order n; zscore: sums of
    z), so its rounding error is relative to that scale, not to itself."""
    assert np.isfinite(r).all() and np.isfinite(ours).all(), what
    np.testing.assert_allclose(ours, r, rtol=RTOL, atol=1e-9 * np.abs(r).max(), err_msg=what)


# -- plain references written from the R code ---------------------------------------------------

def rnd_walk_reference(x, member_lists, alpha=0.25):
    """GSVA 1.46 ``ssgsea`` with ``.rndWalk``, one sample and one set at a time: average ranks
    truncated to integers, genes in R's ``order(R, decreasing=TRUE)`` (stable), the walk over
    all genes and its sum. A sample's missing genes are dropped from it first (the engine's
    documented rule)."""
    n_genes, n_samples = x.shape
    out = np.full((len(member_lists), n_samples), np.nan)
    for j in range(n_samples):
        keep = np.flatnonzero(~np.isnan(x[:, j]))
        r = np.trunc(stats.rankdata(x[keep, j], method="average")).astype(np.int64)
        order = np.argsort(-r, kind="stable")  # stable: ties keep gene order, as R's order
        for i, members in enumerate(member_lists):
            inside = np.isin(keep[order], members).astype(float)
            if inside.sum() == 0 or inside.sum() == keep.size:
                continue
            w = np.abs(r[order]).astype(float) ** alpha * inside
            walk = np.cumsum(w) / w.sum() - np.cumsum(1 - inside) / (1 - inside).sum()
            out[i, j] = walk.sum()
    return out


def r_scale_rows(x):
    """R ``t(scale(t(X)))`` of complete rows (sd with n - 1)."""
    with np.errstate(invalid="ignore", divide="ignore"):  # constant rows: NaN, as R
        return (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, ddof=1, keepdims=True)


# -- R GSVA 1.46 on ALL --------------------------------------------------------------------------

@pytest.mark.parametrize("sets", ["hallmark", "random"])
@pytest.mark.parametrize("normalize", [True, False])
def test_ssgsea_matches_r_gsva(all_ds, all_sets, sets, normalize):
    m = all_sets[sets]
    res = single_sample_scores(all_ds, m, method="ssgsea", normalize=normalize,
                               samples_per_chunk=17)
    r, cols = read_scores(sets, "ssgsea" if normalize else "ssgsea_nonorm", all_ds, m.names)
    assert_close_to_r(res["score"].values[:, cols], r, f"ssgsea {sets} normalize={normalize}")
    sizes = pd.read_csv(REF / f"all_f32_{sets}_sizes.tsv", sep="\t", index_col=0)
    np.testing.assert_array_equal(res["size"].values, sizes.loc[m.names, "size_mapped"])
    assert res.attrs["test"] == "ssgsea" and res["score"].dims == ("gene_set", "sample")


@pytest.mark.parametrize("sets", ["hallmark", "random"])
def test_zscore_matches_r_gsva(all_ds, all_sets, sets):
    m = all_sets[sets]
    res = single_sample_scores(all_ds, m, method="zscore")
    r, cols = read_scores(sets, "zscore", all_ds, m.names)
    assert_close_to_r(res["score"].values[:, cols], r, f"zscore {sets}")
    # no ALL probe is constant, so every mapped member is used
    np.testing.assert_array_equal(res["size"].values, np.diff(m.matrix.indptr))


@pytest.mark.parametrize("sets", ["hallmark", "random"])
def test_plage_matches_r_gsva_up_to_sign(all_ds, all_sets, sets):
    m = all_sets[sets]
    r, cols = read_scores(sets, "plage", all_ds, m.names)
    ours = single_sample_scores(all_ds, m, method="plage")["score"].values[:, cols]
    # Up to sign: R returns LAPACK's sign, which flips with the order of the members in the GMT
    # line (numpy's gesdd on the GMT-ordered rows reproduces R's sign; on the same rows sorted,
    # about half flip), so it is not a property of the set. The engine fixes the sign by the
    # set's mean z; compare each set after aligning R's sign to ours.
    sign = np.sign(np.sum(ours * r, axis=1))
    assert (sign != 0).all()
    # PLAGE scores are unit vectors (entries ~1/sqrt(128)); near 0 the same absolute rule
    assert_close_to_r(ours, r * sign[:, None], f"plage {sets}")


# -- ssGSEA closed form against the plain walk ---------------------------------------------------

@st.composite
def ssgsea_cases(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    n_genes = draw(st.integers(2, 40))
    n_samples = draw(st.integers(1, 5))
    levels = draw(st.sampled_from([3, 8, 1000]))  # few levels: many ties
    rng = np.random.default_rng(seed)
    x = rng.integers(0, levels, (n_genes, n_samples)) / 4.0 - 1.0
    if draw(st.booleans()):
        x[rng.random(x.shape) < 0.15] = np.nan
    n_sets = draw(st.integers(1, 6))
    sets = [rng.choice(n_genes, size=rng.integers(0, n_genes + 1), replace=False)
            for _ in range(n_sets)]
    alpha = draw(st.sampled_from([0.0, 0.25, 1.0, 1.7]))
    return x, sets, alpha


@settings(max_examples=150)
@given(ssgsea_cases())
def test_ssgsea_closed_form_equals_the_walk(case):
    x, sets, alpha = case
    m = membership_from_lists(range(len(sets)), sets, x.shape[0]).matrix
    ref = rnd_walk_reference(x, sets, alpha)
    ours = ssgsea_block(x, m, alpha=alpha)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    # the walk accumulates n terms of size <= 1 each; 1e-12 x n absolute
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12 * x.shape[0])
    # float32 input takes the packed-key sort: exactly the same numbers
    np.testing.assert_array_equal(ssgsea_block(x.astype(np.float32), m, alpha=alpha), ours)


def test_ssgsea_edge_cases():
    x = np.array([[1.0, 2.0], [3.0, np.nan], [3.0, 1.0], [-0.0, 0.0], [0.0, np.nan]])
    sets = [[], [1], [0, 1, 2, 3, 4], [3, 4], [1, 4]]
    ours = ssgsea_block(x, membership_from_lists(range(5), sets, 5).matrix)
    np.testing.assert_allclose(ours, rnd_walk_reference(x, sets), atol=1e-12)
    assert np.isnan(ours[0]).all()                   # empty set
    assert np.isnan(ours[2]).all()                   # every gene is a member (n - k = 0)
    assert np.isnan(ours[4, 1]) and np.isnan(ours[1, 1])  # no observed member in sample 2
    assert ours[3, 0] == ours[3, 0]                  # -0 and 0 tie (as in R) without error
    # a sample with every value missing, and a block with no sample: NaN, no error
    assert np.isnan(ssgsea_block(np.full((4, 1), np.nan), sp.csr_matrix(np.eye(4)[:2]))).all()
    assert ssgsea_block(np.zeros((4, 0)), sp.csr_matrix(np.eye(4)[:2])).shape == (2, 0)


def test_ssgsea_missing_values_rank_among_observed_genes():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan
    sets = [rng.choice(60, 12, replace=False) for _ in range(4)]
    m = membership_from_lists(range(4), sets, 60).matrix
    ours = ssgsea_block(x, m)
    for j in range(6):  # each sample alone, its missing genes removed first
        keep = ~np.isnan(x[:, j])
        alone = ssgsea_block(x[keep, j:j + 1], m[:, keep])
        np.testing.assert_allclose(ours[:, j:j + 1], alone, rtol=1e-12)


def test_range_normalize():
    s = np.array([[1.0, -3.0], [np.nan, 5.0]])
    np.testing.assert_array_equal(ssgsea_range_normalize(s), s / 8.0)
    assert np.isnan(ssgsea_range_normalize(np.array([[2.0, 2.0]]))).all()
    assert np.isnan(ssgsea_range_normalize(np.full((2, 2), np.nan))).all()


# -- z-score, PLAGE, signature scores against plain references -----------------------------------

def test_zscore_and_plage_plain_references():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(30, 9))
    x[5] = 2.0                                       # a constant gene: left out (GSVA)
    sets = [[0, 1, 2], [5, 6, 7, 8], [9], [5], list(range(10, 30)), []]
    m = membership_from_lists(range(len(sets)), sets, 30).matrix
    z = r_scale_rows(x)
    zs, pl = zscore_scores(x, m), plage_scores(x, m)
    for i, members in enumerate(sets):
        used = [g for g in members if g != 5]
        if not used:
            assert np.isnan(zs[i]).all() and np.isnan(pl[i]).all()
            continue
        np.testing.assert_allclose(zs[i], z[used].sum(axis=0) / np.sqrt(len(used)), rtol=1e-12)
        v = np.linalg.svd(z[used], full_matrices=False)[2][0]
        v = v * np.sign(v @ z[used].mean(axis=0))    # the engine's sign: along the mean z
        np.testing.assert_allclose(pl[i], v, rtol=1e-9, atol=1e-12)
        assert pl[i] @ z[used].mean(axis=0) > 0
    np.testing.assert_allclose(pl[2], z[9] / np.linalg.norm(z[9]), rtol=1e-12)  # size 1


def test_zscore_missing_values_and_plage_complete_rows():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(12, 8))
    x[0, 3] = x[4, 0] = np.nan
    x[7, :7] = np.nan                                # one observed value: no sd
    sets = [[0, 1, 2, 3], [4, 5, 7]]
    m = membership_from_lists(range(2), sets, 12).matrix
    zs = zscore_scores(x, m)
    frame = pd.DataFrame(x.T)
    z = ((frame - frame.mean()) / frame.std(ddof=1)).to_numpy().T  # pandas: NaN-aware
    for i, members in enumerate(sets):
        used = [g for g in members if g != 7]
        present = ~np.isnan(z[used])
        expected = np.nansum(z[used], axis=0) / np.sqrt(present.sum(axis=0))
        np.testing.assert_allclose(zs[i], expected, rtol=1e-12)
    pl = plage_scores(x, m)
    for i, used in enumerate([[1, 2, 3], [5]]):     # rows with a missing value are left out
        v = np.linalg.svd(r_scale_rows(x[used]), full_matrices=False)[2][0]
        np.testing.assert_allclose(np.abs(pl[i]), np.abs(v), rtol=1e-9, atol=1e-12)


def test_standardize_rows_matches_r_scale():
    x = np.random.default_rng(5).normal(3, 2, size=(7, 11))
    np.testing.assert_allclose(standardize_rows(x), r_scale_rows(x), rtol=1e-13)
    assert np.isnan(standardize_rows(np.ones((1, 5)) * 7.3)).all()


def test_signature_scores_plain_references():
    rng = np.random.default_rng(13)
    x = rng.normal(8, 2, size=(20, 10))
    x[rng.random(x.shape) < 0.1] = np.nan
    sets = [[0, 1, 2, 3, 4], [5], [6, 7, 8, 9, 10, 11, 12], []]
    m = membership_from_lists(range(4), sets, 20).matrix
    frame = pd.DataFrame(x.T)
    z = ((frame - frame.mean()) / frame.std(ddof=1)).to_numpy().T
    mean, mean_z = signature_score(x, m), signature_score(x, m, kind="mean_z")
    for i, members in enumerate(sets):
        if not members:
            assert np.isnan(mean[i]).all() and np.isnan(mean_z[i]).all()
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN column
            np.testing.assert_allclose(mean[i], np.nanmean(x[members], axis=0), rtol=1e-12)
            np.testing.assert_allclose(mean_z[i], np.nanmean(z[members], axis=0), rtol=1e-12,
                                       atol=1e-14)
    coef = np.zeros((4, 20))
    coef[0, :5] = [0.5, -1.0, 2.0, 0.25, 1.0]
    coef[2, 6:13] = 1.0
    weighted = signature_score(x, m, weights=sp.csr_matrix(coef))
    for i in (0, 2):
        cols = np.flatnonzero(coef[i])
        ok = ~np.isnan(x[cols])
        expected = np.nansum(coef[i, cols, None] * x[cols], axis=0) / (
            np.abs(coef[i, cols, None]) * ok).sum(axis=0)
        np.testing.assert_allclose(weighted[i], expected, rtol=1e-12)
    np.testing.assert_allclose(weighted[2], mean[2], rtol=1e-12)  # equal weights = plain mean
    assert np.isnan(weighted[1]).all()               # no coefficient: no score


# -- the lazy wrapper ----------------------------------------------------------------------------

def small_cohort(n_genes=300, n_samples=40, gene_chunk=70, seed=21, missing=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(6, 1.5, size=(n_genes, n_samples)).astype(np.float32)
    x[:20] = np.round(x[:20])                        # ties
    x[25] = 4.0                                      # a constant gene
    if missing:
        x[rng.random(x.shape) < missing] = np.nan
    ds = xr.Dataset({"expression": (("gene", "sample"), da.from_array(x, chunks=(gene_chunk, -1)))},
                    coords={"gene": [f"g{i}" for i in range(n_genes)],
                            "sample": [f"s{j:02d}" for j in range(n_samples)]})
    sizes = [1, 5, 17, 60, 140, 25, 33, 2]
    sets = [rng.choice(n_genes, k, replace=False) for k in sizes]
    sets[1] = np.array([25, 3, 4, 5, 6])             # holds the constant gene
    return ds, x, membership_from_lists([f"set{i}" for i in range(len(sets))], sets, n_genes)


METHOD_CASES = [("ssgsea", {"normalize": True}), ("ssgsea", {"normalize": False}),
                ("zscore", {}), ("plage", {}), ("signature_score", {"signature": "mean"}),
                ("signature_score", {"signature": "mean_z"})]


def kernel_scores(x, m, method, options):
    if method == "ssgsea":
        raw = ssgsea_block(x, m.matrix)
        return ssgsea_range_normalize(raw) if options["normalize"] else raw
    if method == "zscore":
        return zscore_scores(x, m.matrix)
    if method == "plage":
        return plage_scores(x, m.matrix)
    return signature_score(x, m.matrix, kind=options["signature"])


@pytest.mark.parametrize("method,options", METHOD_CASES)
@pytest.mark.parametrize("missing", [0.0, 0.05])
def test_wrapper_is_bit_identical_across_chunkings(method, options, missing):
    ds, x, m = small_cohort(missing=missing)
    expected = kernel_scores(x, m, method, options)
    for gene_chunk in (300, 70, 13):
        ds_chunked = ds.chunk({"gene": gene_chunk})
        for samples in (128, 17, 1):
            got = single_sample_scores(ds_chunked, m, method=method, samples_per_chunk=samples,
                                       **options)
            # bit-identical: every value is made by the same operations in every chunking
            np.testing.assert_array_equal(got["score"].values, expected,
                                          err_msg=f"{gene_chunk} genes x {samples} samples")
    assert got["score"].dims == ("gene_set", "sample")
    assert list(got["gene_set"].values) == m.names
    assert got["score"].attrs["description"] and got["size"].attrs["description"]


def test_wrapper_weighted_signature():
    ds, x, m = small_cohort(missing=0.05)
    coef = m.matrix.multiply(np.random.default_rng(4).normal(size=m.matrix.shape)).tocsr()
    expected = signature_score(x, m.matrix, weights=coef)
    for gene_chunk, samples in ((300, 128), (13, 7)):
        got = single_sample_scores(ds.chunk({"gene": gene_chunk}), m, method="signature_score",
                                   weights=coef, samples_per_chunk=samples)
        np.testing.assert_array_equal(got["score"].values, expected)
    assert got.attrs["weighted"] == 1
    with pytest.raises(InputError, match="weights have shape"):
        single_sample_scores(ds, m, method="signature_score", weights=coef[:, :5])
    with pytest.raises(InputError, match="signature_score only"):
        single_sample_scores(ds, m, method="zscore", weights=coef)


def test_wrapper_sizes():
    ds, x, m = small_cohort()
    n_members = np.diff(m.matrix.indptr)
    for method, options in METHOD_CASES:
        size = single_sample_scores(ds, m, method=method, **options)["size"].values
        expected = n_members.copy()
        if method in ("zscore", "plage") or options.get("signature") == "mean_z":
            expected[1] -= 1                         # the constant gene is left out
        np.testing.assert_array_equal(size, expected, err_msg=f"{method} {options}")


@pytest.mark.parametrize("method,options", METHOD_CASES)
def test_building_computes_nothing(no_compute, method, options):
    ds, _, m = small_cohort()
    with no_compute():
        res = single_sample_scores(ds, m, method=method, samples_per_chunk=7, **options)
    assert isinstance(res["score"].data, da.Array) and isinstance(res["size"].data, da.Array)


@pytest.mark.slow
def test_two_worker_processes_match_threads(all_ds, all_sets):
    distributed = pytest.importorskip("distributed")
    m = all_sets["random"]
    lazy = {f"{meth}_{i}": single_sample_scores(all_ds, m, method=meth, samples_per_chunk=40, **o)
            for i, (meth, o) in enumerate(METHOD_CASES)}
    with dask.config.set(scheduler="threads"):
        local = {k: v["score"].values for k, v in lazy.items()}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        remote = dask.compute({k: v["score"].data for k, v in lazy.items()})[0]
    for key in lazy:  # PLAGE's SVD runs on one BLAS thread, so it too is bit-identical
        np.testing.assert_array_equal(remote[key], local[key], err_msg=key)


def test_wrapper_input_errors():
    ds, _, m = small_cohort()
    with pytest.raises(InputError, match="method 'gsea'"):
        single_sample_scores(ds, m, method="gsea")
    with pytest.raises(InputError, match="signature 'median'"):
        single_sample_scores(ds, m, method="signature_score", signature="median")
    bad = SimpleNamespace(names=m.names, matrix=m.matrix[:, :10])
    with pytest.raises(InputError, match="expected .8 sets x 300 genes"):
        single_sample_scores(ds, bad, method="zscore")
    with pytest.raises(InputError, match=".names and .matrix"):
        single_sample_scores(ds, m.matrix, method="zscore")
    with pytest.raises(InputError, match="not a .gene, sample. variable"):
        single_sample_scores(ds, m, method="zscore", variable="counts")
