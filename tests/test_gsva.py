"""GSVA proper (method="gsva"): the kernel CDF densities, the random walk and the lazy wrapper.

References: R GSVA 1.46 on the float32-rounded ALL cohort with the Hallmark (probe IDs) and
random gene sets, on edge-case inputs (missing and constant probes, degenerate sets) and on
negative-binomial counts (Poisson kernel), plus GSVA's own density step and its normal-CDF
table (tests/data/r_reference/gsva, see its README); plain loop implementations written here
from GSVA's C code (``row_d``/``precomputedCdf`` of kernel_estimation.c, ``ks_sample`` of
ks_test.c, ``compute_rank_score``), checked on small cases with ties; scipy's normal CDF and
Poisson CDF. The lazy wrapper is compared with the in-memory kernels across chunkings and
schedulers.
"""

from __future__ import annotations

import gzip
import hashlib
import math
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
from scipy import special, stats

from engine.errors import InputError
from engine.stats.gsva import (
    gaussian_cdf_table,
    gene_density_block,
    gsva_scores,
    gsva_walk_block,
)
from engine.store import open_cohort

REF = Path(__file__).parent / "data" / "r_reference" / "gsva"
GMTS = {"hallmark": "hallmark_v7.0_hgu95_probes.gmt.gz", "random": "random_genesets_seed1.gmt.gz"}
RTOL = 1e-6
# Scores are differences of walk heights in [-1, 1]; R accumulates the walk step by step over
# all 12,625 genes while the closed form divides cumulative sums, so the two differ by
# rounding of order 1e-13 absolute (measured max 6e-13). Near-zero scores are compared with
# this absolute tolerance instead of the relative one.
ATOL = 1e-10
VARIANTS = {
    "gaussian": dict(kcdf="gaussian"),
    "no_mx_diff": dict(kcdf="gaussian", mx_diff=False),
    "abs_ranking": dict(kcdf="gaussian", abs_ranking=True),
    "tau0.5": dict(kcdf="gaussian", tau=0.5),
    "kcdf_none": dict(kcdf="none"),
}


# -- helpers -------------------------------------------------------------------------------------

def membership_from_lists(names, member_lists, n_genes) -> SimpleNamespace:
    rows = [np.unique(np.asarray(m, dtype=np.int64)) for m in member_lists]
    indptr = np.r_[0, np.cumsum([r.size for r in rows])]
    indices = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    matrix = sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=(len(rows), n_genes))
    return SimpleNamespace(names=np.array(names, dtype=object), matrix=matrix)


def read_gmt(path: Path, gene_ids) -> SimpleNamespace:
    """A GMT (``name<TAB>description<TAB>genes...``) mapped onto ``gene_ids`` by ID."""
    where = {g: i for i, g in enumerate(gene_ids)}
    names, members = [], []
    with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            names.append(parts[0])
            members.append([where[g] for g in parts[2:] if g in where])
    return membership_from_lists(names, members, len(gene_ids))


def read_table(name: str) -> pd.DataFrame:
    return pd.read_csv(REF / name, sep="\t", index_col=0, dtype={0: str})


def assert_scores_close(got, expected, what):
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, what
    assert np.array_equal(np.isnan(got), np.isnan(expected)), what
    ok = ~np.isnan(expected)
    np.testing.assert_allclose(got[ok], expected[ok], rtol=RTOL, atol=ATOL, err_msg=what)


def compare_with_r(scores: np.ndarray, names, samples, table: pd.DataFrame, what: str):
    """R's table (its sets, its committed samples) against our (sets x samples) scores."""
    got = pd.DataFrame(scores, index=list(names), columns=list(samples))
    assert_scores_close(got.loc[table.index, table.columns].to_numpy(), table.to_numpy(), what)


@pytest.fixture(scope="module")
def all_ds(all_store) -> xr.Dataset:
    return open_cohort(all_store)


@pytest.fixture(scope="module")
def all_x(all_ds) -> np.ndarray:
    return all_ds["expression"].values


@pytest.fixture(scope="module")
def gene_ids(all_ds):
    return [str(g) for g in all_ds["gene"].values]


@pytest.fixture(scope="module")
def samples(all_ds):
    return [str(s) for s in all_ds["sample"].values]


@pytest.fixture(scope="module")
def all_sets(gene_ids):
    return {k: read_gmt(REF / f, gene_ids) for k, f in GMTS.items()}


@pytest.fixture(scope="module")
def all_density(all_x):
    return {"gaussian": gene_density_block(all_x, "gaussian"),
            "none": gene_density_block(all_x, "none")}


# -- plain references written from GSVA's C code -------------------------------------------------

def reference_density(x, kcdf):
    """``compute.gene.density`` by loops: ``row_d`` of kernel_estimation.c (Gaussian: table
    lookup of scipy's normal CDF; Poisson: scipy's Poisson CDF at floor(y + 1e-7)), or the
    ecdf; genes GSVA's ``.filterFeatures`` drops (NA, sd < 1e-10) give NaN rows."""
    x = np.asarray(x, dtype=np.float64)
    g, n = x.shape
    out = np.full((g, n), np.nan)
    table = [float(stats.norm.cdf(10.0 * t / 10000.0)) for t in range(10001)]
    for a in range(g):
        row = [float(v) for v in x[a]]
        if any(math.isnan(v) for v in row) or np.std(row, ddof=1) < 1e-10:
            continue
        if kcdf == "poisson" and min(row) < 0:
            continue
        bw = float(np.std(row, ddof=1)) / 4.0
        for j in range(n):
            if kcdf == "none":
                f = sum(v <= row[j] for v in row) / n
                out[a, j] = math.log(f / (1 - f)) if f < 1 else math.inf
                continue
            left = 0.0
            for i in range(n):
                if kcdf == "gaussian":
                    v = (row[j] - row[i]) / bw
                    if v < -10:
                        term = 0.0
                    elif v > 10:
                        term = 1.0
                    else:
                        term = table[int(abs(v) / 10.0 * 10000.0)]
                        term = 1.0 - term if v < 0 else term
                else:
                    q = math.floor(row[j] + 1e-7)
                    term = float(stats.poisson.cdf(q, row[i] + 0.5)) if q >= 0 else 0.0
                left += term
            left /= n
            out[a, j] = -math.log((1.0 - left) / left) if left < 1 else math.inf
    return out


def reference_walk(d, member_lists, *, tau=1.0, mx_diff=True, abs_ranking=False,
                   with_ties=False):
    """``compute.geneset.es`` + ``ks_sample`` by loops: per sample, genes ordered by decreasing
    density (stable), rank score |n - p + 1 - n/2|, the running sum over every gene.

    ``with_ties``: also say where max(walk) and -min(walk) are equal up to rounding, where
    ``mx_diff=False`` picks its sign by the rounding of the sums (in R as here)."""
    g, n_samples = d.shape
    out = np.full((len(member_lists), n_samples), np.nan)
    ties = np.zeros(out.shape, dtype=bool)
    for j in range(n_samples):
        genes = [a for a in range(g) if not math.isnan(d[a, j])]
        order = sorted(genes, key=lambda a: -d[a, j])          # Python's sort is stable
        n = len(order)
        if n < 2:
            continue
        score = {a: abs((n - p + 1) - n / 2) for p, a in enumerate(order, start=1)}
        for s, members in enumerate(member_lists):
            members = {a for a in members if a in score}
            k = len(members)
            if k == 0:
                continue
            dec = 1.0 / (n - k) if n > k else math.inf
            total = sum(score[a] ** tau for a in members)
            cum = mx_pos = mx_neg = 0.0
            for a in order:
                if a in members:
                    cum += score[a] ** tau / total if total > 0 else math.nan
                else:
                    cum -= dec
                if cum > mx_pos:
                    mx_pos = cum
                if cum < mx_neg:
                    mx_neg = cum
            if mx_diff:
                out[s, j] = mx_pos - mx_neg if abs_ranking else mx_pos + mx_neg
            else:
                out[s, j] = mx_pos if mx_pos > abs(mx_neg) else mx_neg
            ties[s, j] = abs(mx_pos - abs(mx_neg)) < 1e-12
    return (out, ties) if with_ties else out


def small_problem(seed, n_genes=40, n_samples=9, ties=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(8, 2, (n_genes, n_samples)).astype(np.float32)
    if ties:
        x[::5] = np.round(x[::5])                   # ties within genes
        x[3] = x[7]                                  # identical genes: tied densities
    return x


# -- the density step ----------------------------------------------------------------------------

def test_cdf_table_is_gsvas_table():
    """initCdfs(): pnorm(10 t / 10000) as R computes it, bit for bit (every 100th value as
    text, all 10,001 by the checksum of R's little-endian doubles); scipy's ndtr, a different
    algorithm, agrees to 2 ulp."""
    table = gaussian_cdf_table()
    assert table.shape == (10001,) and table[0] == 0.5 and table[10000] == 1.0
    r = pd.read_csv(REF / "pnorm_table_every100.tsv", sep="\t")
    np.testing.assert_array_equal(table[r["t"].to_numpy()], r["pnorm"].to_numpy())
    digest = hashlib.sha256(table.astype("<f8").tobytes()).hexdigest()
    assert digest == (REF / "pnorm_table_f64le.sha256").read_text().strip()
    np.testing.assert_array_max_ulp(table, special.ndtr(10.0 * np.arange(10001) / 10000.0), 2)


def test_gaussian_density_equals_gsvas_kernel(all_x, gene_ids):
    """GSVA:::compute.gene.density on every 600th ALL probe: the same doubles (same table
    index, bandwidth, summation order and log)."""
    r = read_table("all_f32_density_gaussian.tsv.gz")
    rows = [gene_ids.index(g) for g in r.index]
    np.testing.assert_array_equal(gene_density_block(all_x[rows], "gaussian"), r.to_numpy())


def test_poisson_density_matches_gsvas_kernel():
    """Poisson kernel on counts: scipy's pdtr vs R's ppois differ in the last bits only."""
    counts = read_table("nb_counts_seed4.tsv.gz")
    r = read_table("nb_density_poisson.tsv.gz")
    got = gene_density_block(counts.loc[r.index].to_numpy(dtype=np.float64), "poisson")
    constant = counts.loc[r.index].nunique(axis=1).to_numpy() == 1
    assert np.isnan(got[constant]).all()            # GSVA's filter drops them before this step
    # pdtr and R's ppois agree to ~1e-15 relative; densities of magnitude <= ~40
    np.testing.assert_allclose(got[~constant], r.to_numpy()[~constant], rtol=1e-12, atol=1e-12)


def test_ppois_quantiles_as_r():
    """R's ppois floors q + 1e-7 and gives 0 below 0; the kernel's ppois does the same."""
    from engine.stats.gsva import _ppois

    r = pd.read_csv(REF / "ppois_noninteger.tsv", sep="\t")
    got = _ppois(r["q"].to_numpy(), r["lambda"].to_numpy())
    np.testing.assert_allclose(got, r["ppois"].to_numpy(), rtol=1e-13)
    # and through the kernel: one gene whose "count" values are the quantiles
    x = np.array([[2.9999999, 3.0, 0.5, 4.2]])
    expected = reference_density(x, "poisson")
    np.testing.assert_allclose(gene_density_block(x, "poisson"), expected, rtol=1e-12)


@pytest.mark.parametrize("kcdf", ["gaussian", "poisson", "none"])
@pytest.mark.parametrize("seed", [0, 1])
def test_density_matches_loop_reference(kcdf, seed):
    x = small_problem(seed, n_genes=12, n_samples=11)
    if kcdf == "poisson":
        x = np.round(np.abs(x) * 3).astype(np.float32)
        x[4, 2] = 7.5                                # non-integer counts are floored (+1e-7)
        x[5, 0] = -1.0                               # negative: dropped
    x[1, 3] = np.nan                                 # any NaN: dropped
    x[2] = 4.0                                       # constant: dropped
    got = gene_density_block(x, kcdf)
    expected = reference_density(x, kcdf)
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.isnan(got[[1, 2]]).all()
    ok = np.isfinite(expected)
    assert np.array_equal(np.isinf(got), np.isinf(expected))
    # scipy's normal CDF differs from R's table in the last bit; sums of <= 11 terms
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-12, atol=1e-12)


def test_density_does_not_depend_on_the_block():
    """A gene's densities are the same doubles whatever other genes share its block, and with
    the many-samples path (every pair evaluated twice, test samples in blocks)."""
    from engine.stats import gsva

    x = small_problem(3, n_genes=30, n_samples=70)
    whole = gene_density_block(x, "gaussian")
    parts = np.vstack([gene_density_block(x[i:i + 7], "gaussian") for i in range(0, 30, 7)])
    np.testing.assert_array_equal(parts, whole)
    np.testing.assert_array_equal(gene_density_block(x[13:14], "gaussian"), whole[13:14])
    old = gsva.PAIR_MATRIX_MAX_SAMPLES, gsva.DENSITY_BLOCK_ELEMENTS
    try:
        gsva.PAIR_MATRIX_MAX_SAMPLES, gsva.DENSITY_BLOCK_ELEMENTS = 10, 500
        np.testing.assert_array_equal(gene_density_block(x, "gaussian"), whole)
    finally:
        gsva.PAIR_MATRIX_MAX_SAMPLES, gsva.DENSITY_BLOCK_ELEMENTS = old


def test_density_input_errors():
    with pytest.raises(InputError, match="kcdf 'epanechnikov' is not one of"):
        gene_density_block(np.ones((2, 3)), "epanechnikov")
    with pytest.raises(ValueError, match="2-D"):
        gene_density_block(np.ones(3))
    assert gene_density_block(np.array([[1.0, 2.0, 3.0]]), "Gaussian").shape == (1, 3)
    assert np.isnan(gene_density_block(np.array([[1.0], [2.0]]))).all()   # one sample: no sd


# -- the random walk -----------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tau=st.sampled_from([1.0, 0.25, 0.5, 2.0, 0.0]),
       mx_diff=st.booleans(), abs_ranking=st.booleans(), n_genes=st.integers(2, 30),
       n_samples=st.integers(1, 6))
def test_walk_closed_form_equals_the_loop(seed, tau, mx_diff, abs_ranking, n_genes, n_samples):
    """Random densities with many ties (a few distinct integers), NaN genes and NaN entries,
    sets of size 1 to all genes, duplicated sets: closed form == the step-by-step walk."""
    rng = np.random.default_rng(seed)
    d = rng.integers(-3, 4, (n_genes, n_samples)).astype(np.float64)
    d[rng.random(d.shape) < 0.1] = np.nan
    if n_genes > 4:
        d[rng.integers(n_genes)] = np.nan
    sizes = [1, 1, 2, n_genes, max(1, n_genes - 1), *rng.integers(1, n_genes + 1, 5)]
    members = [rng.choice(n_genes, size=k, replace=False) for k in sizes] + [[]]
    m = membership_from_lists([f"s{i}" for i in range(len(members))], members, n_genes)
    got = gsva_walk_block(d, m.matrix, tau=tau, mx_diff=mx_diff, abs_ranking=abs_ranking)
    expected, ties = reference_walk(d, members, tau=tau, mx_diff=mx_diff,
                                    abs_ranking=abs_ranking, with_ties=True)
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    ok = ~np.isnan(expected)
    if not mx_diff:
        # max(walk) == -min(walk) up to rounding: the sign is the rounding's (R's too)
        got, expected = np.where(ties, np.abs(got), got), np.where(ties, np.abs(expected),
                                                                   expected)
    # cumulative sums divided once vs. steps divided and added one by one: rounding only
    np.testing.assert_allclose(got[ok], expected[ok], rtol=0, atol=1e-12)


def test_walk_special_sets():
    """A set of every usable gene scores 1; a set with no usable member is NaN; a single member
    at rank score 0 (position n/2 + 1) stops the walk as GSVA's 0/0 step does."""
    d = np.array([[6.0], [5.0], [4.0], [3.0], [2.0], [1.0], [np.nan]])
    members = [list(range(7)), [6], [3], [0], [5]]
    m = membership_from_lists(list("abcde"), members, 7)
    got = gsva_walk_block(d, m.matrix)[:, 0]
    assert got[0] == 1.0 and np.isnan(got[1])
    # n = 6: position 4 (gene 3) has rank score 0; the walk goes down 3 steps of 1/5, then 0/0
    assert got[2] == pytest.approx(-3 / 5, abs=1e-15)
    expected = reference_walk(d, members)[:, 0]
    np.testing.assert_allclose(got[2:], expected[2:], atol=1e-15)
    assert got[3] == 1.0                             # the top gene alone: up to 1, then down
    assert np.isnan(gsva_walk_block(np.full((3, 2), np.nan), m.matrix[:, :3])).all()


def test_walk_does_not_depend_on_the_sample_block():
    x = small_problem(5, n_genes=60, n_samples=23)
    d = gene_density_block(x)
    rng = np.random.default_rng(1)
    m = membership_from_lists(range(12), [rng.choice(60, k, replace=False)
                                          for k in rng.integers(1, 40, 12)], 60)
    whole = gsva_walk_block(d, m.matrix, tau=0.5)
    for step in (1, 5, 17):
        parts = np.hstack([gsva_walk_block(d[:, j:j + step], m.matrix, tau=0.5)
                           for j in range(0, 23, step)])
        np.testing.assert_array_equal(parts, whole)


def test_walk_input_errors():
    m = membership_from_lists(["a"], [[0]], 3)
    with pytest.raises(InputError, match="tau must be"):
        gsva_walk_block(np.zeros((3, 2)), m.matrix, tau=-1)
    with pytest.raises(ValueError, match="membership has 3 gene columns"):
        gsva_walk_block(np.zeros((4, 2)), m.matrix)


# -- against R GSVA 1.46 -------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("sets", list(GMTS))
def test_scores_match_r_on_all(all_density, all_sets, samples, sets, variant):
    options = dict(VARIANTS[variant])
    kcdf = options.pop("kcdf")
    m = all_sets[sets]
    scores = gsva_walk_block(all_density[kcdf], m.matrix, **options)
    r = read_table(f"all_f32_{sets}_gsva_{variant}.tsv.gz")
    assert len(r.columns) == 32 and len(r) == len(m.names)
    compare_with_r(scores, m.names, samples, r, f"{sets} {variant}")


def test_lazy_wrapper_matches_r_on_the_store(all_ds, all_sets, samples):
    """Through the store's gene chunks (3 chunks) and blocks of 50 samples: R's scores."""
    m = all_sets["hallmark"]
    res = gsva_scores(all_ds, m, samples_per_chunk=50).compute()
    compare_with_r(res["score"].values, m.names, samples,
                   read_table("all_f32_hallmark_gsva_gaussian.tsv.gz"), "lazy hallmark")
    used = read_table("all_f32_hallmark_sizes_used.tsv")["size_used"]
    np.testing.assert_array_equal(res["size"].values, used.loc[list(m.names)].to_numpy())


@pytest.fixture(scope="module")
def edge_case(all_x, gene_ids):
    """ALL with a few probes missing (one value, a whole row), constant (exactly, and with sd
    < 1e-10) or heavily tied, as make_edge_inputs.py wrote them for R."""
    rows = read_table("edge_rows.tsv")
    x = all_x.copy()
    for probe, values in rows.iterrows():
        x[gene_ids.index(probe)] = values.to_numpy(dtype=np.float64).astype(np.float32)
    return x, read_gmt(REF / "edge_sets.gmt", gene_ids)


@pytest.mark.parametrize("variant,options", [("gaussian", {}), ("no_mx_diff", {"mx_diff": False})])
def test_edge_cases_match_r(edge_case, samples, variant, options):
    x, m = edge_case
    scores = gsva_walk_block(gene_density_block(x), m.matrix, **options)
    r = pd.read_csv(REF / f"all_f32_edge_gsva_{variant}.tsv.gz", sep="\t", index_col=0)
    compare_with_r(scores, m.names, samples, r, f"edge {variant}")
    # R leaves out the set whose members GSVA all dropped; it is NaN here
    dropped = sorted(set(m.names) - set(r.index))
    assert dropped == ["EDGE_ONLY_DROPPED"]
    assert np.isnan(scores[list(m.names).index("EDGE_ONLY_DROPPED")]).all()


def test_edge_sizes_match_r(edge_case):
    x, m = edge_case
    coords = {"gene": np.arange(x.shape[0]).astype(str),
              "sample": np.arange(x.shape[1]).astype(str)}
    ds = xr.Dataset({"expression": (("gene", "sample"), da.from_array(x, chunks=(4000, -1)))},
                    coords=coords)
    res = gsva_scores(ds, m, samples_per_chunk=64)
    used = read_table("edge_sizes_used.tsv")["size_used"]
    np.testing.assert_array_equal(res["size"].values, used.loc[list(m.names)].to_numpy())


@pytest.mark.parametrize("variant,options", [("poisson", {}),
                                             ("poisson_no_mx_diff", {"mx_diff": False})])
def test_poisson_scores_match_r_on_counts(variant, options):
    counts = read_table("nb_counts_seed4.tsv.gz")
    m = read_gmt(REF / "nb_random_seed4.gmt.gz", list(counts.index))
    d = gene_density_block(counts.to_numpy(dtype=np.float64), "poisson")
    scores = gsva_walk_block(d, m.matrix, **options)
    r = read_table(f"nb_gsva_{variant}.tsv.gz")
    compare_with_r(scores, m.names, counts.columns, r, variant)
    used = read_table("nb_sizes_used.tsv")["size_used"]
    np.testing.assert_array_equal(m.matrix @ ~np.isnan(d[:, 0]), used.loc[list(m.names)])


# -- the lazy wrapper ----------------------------------------------------------------------------

def small_cohort(n_genes=300, n_samples=40, chunk_genes=77, seed=11):
    x = small_problem(seed, n_genes=n_genes, n_samples=n_samples)
    x[5, 3] = np.nan
    x[6] = 2.5
    ds = xr.Dataset(
        {"expression": (("gene", "sample"), da.from_array(x, chunks=(chunk_genes, -1)))},
        coords={"gene": np.array([f"G{i:03d}" for i in range(n_genes)], dtype=object),
                "sample": np.array([f"S{j:02d}" for j in range(n_samples)], dtype=object)})
    rng = np.random.default_rng(seed)
    members = [rng.choice(n_genes, min(k, n_genes), replace=False)
               for k in (1, 2, 5, 15, 40, 120)]
    members += [[5, 6], [5, 6, 7, 8]]                # only dropped genes; two dropped + two
    m = membership_from_lists([f"set{i}" for i in range(len(members))], members, n_genes)
    return ds, x, m


def test_wrapper_result_layout_and_kernels():
    ds, x, m = small_cohort()
    res = gsva_scores(ds, m, kcdf="Gaussian", tau=0.5, mx_diff=False, samples_per_chunk=9)
    assert res["score"].dims == ("gene_set", "sample") and res["size"].dims == ("gene_set",)
    assert list(res["gene_set"].values) == list(m.names)
    assert res.attrs == {"test": "gsva", "kcdf": "gaussian", "tau": 0.5, "mx_diff": 0,
                         "abs_ranking": 0}
    assert "GSVA" in res["score"].attrs["description"]
    assert "sd >= 1e-10" in res["size"].attrs["description"]
    expected = gsva_walk_block(gene_density_block(x), m.matrix, tau=0.5, mx_diff=False)
    np.testing.assert_array_equal(res["score"].values, expected)
    usable = np.ones(x.shape[0], dtype=bool)
    usable[[5, 6]] = False                           # one NaN, constant
    np.testing.assert_array_equal(res["size"].values, m.matrix @ usable)
    assert list(res["size"].values[-2:]) == [0, 2]
    assert np.isnan(res["score"].values[6]).all() and not np.isnan(res["score"].values[7]).any()


@pytest.mark.parametrize("kcdf", ["gaussian", "none", "poisson"])
def test_chunkings_give_identical_scores(kcdf):
    ds, x, m = small_cohort()
    if kcdf == "poisson":
        x = np.round(np.abs(x) * 10).astype(np.float32)
        ds["expression"] = (("gene", "sample"), da.from_array(x, chunks=(77, -1)))
    reference = gsva_walk_block(gene_density_block(x, kcdf), m.matrix)
    for chunk_genes in (300, 77, 1):
        for per_chunk in (128, 17, 1):
            if chunk_genes == 1 and per_chunk != 17:
                continue                                 # one-gene chunks: slow, once is enough
            ds2 = ds.copy()
            ds2["expression"] = ds["expression"].chunk({"gene": chunk_genes})
            got = gsva_scores(ds2, m, kcdf=kcdf, samples_per_chunk=per_chunk)["score"].values
            np.testing.assert_array_equal(got, reference, err_msg=f"{chunk_genes} {per_chunk}")


def test_building_computes_nothing(no_compute):
    ds, _, m = small_cohort()
    with no_compute():
        res = gsva_scores(ds, m, samples_per_chunk=7)
    assert isinstance(res["score"].data, da.Array) and isinstance(res["size"].data, da.Array)


def test_never_crashes_on_missing_data():
    ds, x, m = small_cohort(n_genes=20, n_samples=6)
    ds["expression"] = (("gene", "sample"), da.from_array(np.full_like(x, np.nan), chunks=(7, -1)))
    res = gsva_scores(ds, m, samples_per_chunk=4).compute()
    assert np.isnan(res["score"].values).all() and (res["size"].values == 0).all()


def test_wrapper_input_errors():
    ds, _, m = small_cohort()
    with pytest.raises(InputError, match="kcdf 'kde'"):
        gsva_scores(ds, m, kcdf="kde")
    with pytest.raises(InputError, match="tau must be"):
        gsva_scores(ds, m, tau=float("nan"))
    bad = SimpleNamespace(names=m.names, matrix=m.matrix[:, :10])
    with pytest.raises(InputError, match="expected .8 sets x 300 genes"):
        gsva_scores(ds, bad)
    with pytest.raises(InputError, match=".names and .matrix"):
        gsva_scores(ds, m.matrix)


@pytest.mark.slow
def test_two_worker_processes_match_threads(all_ds, all_sets):
    distributed = pytest.importorskip("distributed")
    lazy = {f"{k}_{kc}": gsva_scores(all_ds, m, kcdf=kc, samples_per_chunk=40)["score"].data
            for k, m in all_sets.items() for kc in ("gaussian", "none")}
    with dask.config.set(scheduler="threads"):
        local = dask.compute(lazy)[0]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        remote = dask.compute(lazy)[0]
    for key in lazy:
        np.testing.assert_array_equal(remote[key], local[key], err_msg=key)


def test_poisson_table_and_pairwise_paths_agree():
    """Few distinct counts (the kernel tabulated over distinct values) and many (evaluated
    per pair): the same doubles as evaluating every pair directly."""
    from engine.stats import gsva

    rng = np.random.default_rng(2)
    x = rng.poisson(3.0, (30, 25)).astype(np.float64)
    x[0, :3] = [2.5, 2.9999999, 0.25]
    tabulated = gene_density_block(x, "poisson")
    old = gsva.POISSON_TABLE_ELEMENTS
    try:
        gsva.POISSON_TABLE_ELEMENTS = 0
        np.testing.assert_array_equal(gene_density_block(x, "poisson"), tabulated)
    finally:
        gsva.POISSON_TABLE_ELEMENTS = old
    np.testing.assert_allclose(tabulated, reference_density(x, "poisson"), rtol=1e-12)
