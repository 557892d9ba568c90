"""Count normalisation (engine.preprocess.counts) against edgeR 3.40: calcNormFactors (TMM,
TMMwsp, RLE, upperquartile, none, with options), cpm (raw and log) and filterByExpr, on the R
fixtures in tests/data/r_reference/normalize (README there); TMM and TMMwsp also against
plain per-sample transcriptions of edgeR's R code; laziness, chunking independence, edge
cases."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InputError
from engine.preprocess import counts as cnt

from conftest import lazy_matrix as as_counts

REF = Path(__file__).parent / "data" / "r_reference" / "normalize"


def read_ref(name: str) -> pd.DataFrame:
    d = pd.read_csv(REF / name, sep="\t", dtype={0: str}, keep_default_na=False,
                    na_values=["NA"])
    return d.set_index(d.columns[0])


def computed(x: xr.DataArray) -> np.ndarray:
    with dask.config.set(scheduler="sync"):
        return x.values


@pytest.fixture(scope="module")
def fixture_counts():
    table = read_ref("counts.tsv.gz")
    values = table.to_numpy(dtype=np.int64)
    x = as_counts(values.astype(np.float32), chunks=300, genes=table.index.to_numpy(),
                  samples=table.columns.to_numpy())
    samples = read_ref("counts_samples.tsv").loc[table.columns]
    return x, values, samples


# -- edgeR agreement -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["TMM", "TMMwsp", "RLE", "upperquartile"])
def test_norm_factors_match_edger(fixture_counts, method):
    """oracle/edger_tmm.R. Measured agreement <= 8e-16 relative; asserted 1e-12 (the same
    float64 arithmetic; R accumulates sums in long double)."""
    x, values, _ = fixture_counts
    ref = read_ref("counts_normfactors.tsv")
    got = computed(cnt.norm_factors(x, method))
    np.testing.assert_allclose(got, ref[f"norm_factor_{method}"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(cnt.calc_norm_factors(values, method), got, rtol=1e-15, atol=0)


OPTIONS = {
    "TMM_noweight": {"method": "TMM", "do_weighting": False},
    "TMM_trim_02_01": {"method": "TMM", "logratio_trim": 0.2, "sum_trim": 0.1},
    "TMM_acutoff_m18": {"method": "TMM", "a_cutoff": -18},
    "TMM_ref3": {"method": "TMM", "ref_column": 2},
    "TMM_custom_lib": {"method": "TMM", "lib_size": "custom"},
    "TMMwsp_ref3": {"method": "TMMwsp", "ref_column": "S03"},
    "TMMwsp_noweight": {"method": "TMMwsp", "do_weighting": False},
    "RLE_custom_lib": {"method": "RLE", "lib_size": "custom"},
    "upperquartile_p09": {"method": "upperquartile", "p": 0.9},
    "none": {"method": "none"},
}


@pytest.mark.parametrize("column", list(OPTIONS))
def test_norm_factor_options_match_edger(fixture_counts, column):
    """edger_extra.R: calcNormFactors with non-default options (refColumn 3 is position 2 or
    sample S03 here; lib.size given as a lazy DataArray)."""
    x, _, _ = fixture_counts
    ref = read_ref("counts_normfactors_options.tsv")
    kwargs = dict(OPTIONS[column])
    if kwargs.get("lib_size") == "custom":
        kwargs["lib_size"] = xr.DataArray(da.from_array(ref["custom_lib_size"].to_numpy()),
                                          dims=("sample",))
    got = computed(cnt.norm_factors(x, **kwargs))
    np.testing.assert_allclose(got, ref[column], rtol=1e-12, atol=0)  # measured <= 2.3e-15


def test_library_sizes_are_exact_column_sums(fixture_counts, no_compute):
    x, values, _ = fixture_counts
    with no_compute():
        lib = cnt.library_sizes(x)
    assert lib.dims == ("sample",) and (lib["sample"].values == x["sample"].values).all()
    got = computed(lib)
    np.testing.assert_array_equal(got, values.sum(axis=0))
    np.testing.assert_array_equal(got, read_ref("counts_normfactors.tsv")["lib_size"])


@pytest.mark.parametrize("fixture, prior", [("counts_tmm_logcpm_every5.tsv.gz", 2.0),
                                            ("counts_tmm_pc05_logcpm_every5.tsv.gz", 0.5),
                                            ("counts_tmm_cpm_every5.tsv.gz", None)])
def test_cpm_after_tmm_matches_edger(fixture_counts, fixture, prior):
    """cpm(calcNormFactors(DGEList(counts)), log=, prior.count=) (oracle/edger_tmm.R), every
    5th gene committed (a gene's values depend on the others only through the factors).
    float32 output: rtol 1e-6 (float32 rounding, measured <= 6e-8); the float64 kernel: 1e-12."""
    x, values, _ = fixture_counts
    ref = read_ref(fixture)
    rows = x.indexes["gene"].get_indexer(ref.index)
    factors = cnt.norm_factors(x, "TMM")
    lazy = cnt.cpm(x, norm_factors=factors, log=prior is not None,
                   prior_count=prior if prior is not None else 2.0)
    got = computed(lazy)
    assert got.dtype == np.float32 and lazy.data.chunks == x.data.chunks
    np.testing.assert_allclose(got[rows], ref.to_numpy(), rtol=1e-6, atol=0)
    eff = read_ref("counts_normfactors.tsv")["eff_lib_size"].to_numpy()
    exact = cnt.cpm_block(values[rows], eff, log=prior is not None,
                          prior_count=prior if prior is not None else 2.0)
    np.testing.assert_allclose(exact, ref.to_numpy(), rtol=1e-12, atol=0)


def test_log_cpm_with_given_library_sizes_matches_edger(fixture_counts):
    x, _, _ = fixture_counts
    lib = read_ref("counts_normfactors_options.tsv")["custom_lib_size"].to_numpy()
    ref = read_ref("counts_logcpm_customlib_pc1_every5.tsv.gz")
    rows = x.indexes["gene"].get_indexer(ref.index)
    got = computed(cnt.cpm(x, lib_size=lib, log=True, prior_count=1))
    np.testing.assert_allclose(got[rows], ref.to_numpy(), rtol=1e-6, atol=0)


FILTERS = {
    "default": {},
    "group": {"group": True},
    "group_tmm_lib": {"group": True, "lib_size": "tmm"},
    "group_min5_total30": {"group": True, "min_count": 5, "min_total_count": 30},
    "large_n2": {"group": True, "large_n": 2, "min_prop": 0.5},
}


@pytest.mark.parametrize("column", list(FILTERS))
def test_filter_by_expr_matches_edger(fixture_counts, column, no_compute):
    x, _, samples = fixture_counts
    ref = read_ref("counts_filter_by_expr.tsv.gz")[column].to_numpy().astype(bool)
    kwargs = dict(FILTERS[column])
    if kwargs.pop("group", False):
        kwargs["group"] = samples["group"].to_numpy()
    with no_compute():
        if kwargs.get("lib_size") == "tmm":
            kwargs["lib_size"] = cnt.library_sizes(x) * cnt.norm_factors(x)
        keep = cnt.filter_by_expr(x, **kwargs)
    assert keep.dims == ("gene",) and keep.dtype == bool
    got = computed(keep)
    np.testing.assert_array_equal(got, ref)
    assert 0 < got.sum() < got.size


@pytest.mark.parametrize("column, counts_file, kwargs", [
    ("group", "crafted_counts.tsv", {"group": True}),
    ("default", "crafted_counts.tsv", {}),
    ("uneven_group", "crafted_uneven_counts.tsv", {"group": True}),
    ("large_n2", "crafted_counts.tsv", {"group": True, "large_n": 2, "min_prop": 0.5}),
])
def test_filter_by_expr_at_the_cutoffs_matches_edger(column, counts_file, kwargs):
    """Counts exactly at min.count in exactly the smallest group's size, totals of exactly 15
    and 14, libraries of exactly 1e6: the comparisons run in edgeR's order of operations."""
    table = read_ref(counts_file)
    ref = read_ref("crafted_filter_by_expr.tsv")[column].to_numpy().astype(bool)
    kwargs = dict(kwargs)
    if kwargs.pop("group", False):
        kwargs["group"] = read_ref("crafted_samples.tsv")["group"].to_numpy()
    x = as_counts(table.to_numpy(), chunks=4)
    np.testing.assert_array_equal(computed(cnt.filter_by_expr(x, **kwargs)), ref)


# -- plain references ----------------------------------------------------------------------------

def tmm_reference(obs, ref, n_o, n_r, trim=0.3, sum_trim=0.05, weighting=True,
                  a_cutoff=-1e10):
    """edgeR .calcFactorTMM, one sample, written plainly."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_r = np.log2((obs / n_o) / (ref / n_r))
        abs_e = (np.log2(obs / n_o) + np.log2(ref / n_r)) / 2
        v = (n_o - obs) / n_o / obs + (n_r - ref) / n_r / ref
    fin = np.isfinite(log_r) & np.isfinite(abs_e) & (abs_e > a_cutoff)
    log_r, abs_e, v = log_r[fin], abs_e[fin], v[fin]
    if log_r.size == 0 or np.max(np.abs(log_r)) < 1e-6:
        return 1.0
    n = log_r.size
    lo_l = np.floor(n * trim) + 1
    lo_s = np.floor(n * sum_trim) + 1
    rl, ra = scipy.stats.rankdata(log_r), scipy.stats.rankdata(abs_e)
    keep = (rl >= lo_l) & (rl <= n + 1 - lo_l) & (ra >= lo_s) & (ra <= n + 1 - lo_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        if weighting:
            f = np.nansum(log_r[keep] / v[keep]) / np.nansum(1 / v[keep])
        else:
            f = np.mean(log_r[keep]) if keep.any() else np.nan
    return 2.0 ** (0.0 if np.isnan(f) else f)


def tmmwsp_reference(obs, ref, n_o, n_r, trim=0.3, sum_trim=0.05, weighting=True):
    """edgeR .calcFactorTMMwsp, one sample, written plainly."""
    eps = 1e-14
    npos = 2 * (obs > eps) + (ref > eps)
    obs, ref, npos = obs[npos != 0], ref[npos != 0], npos[npos != 0]
    k = (npos == 1) | (npos == 2)
    singles = min(np.sum(npos == 1), np.sum(npos == 2))
    obs_k = np.sort(obs[k])[::-1][:singles]
    ref_k = np.sort(ref[k])[::-1][:singles]
    obs = np.concatenate([obs[~k], obs_k])
    ref = np.concatenate([ref[~k], ref_k])
    n = obs.size
    if n == 0:
        return 1.0
    op, rp = obs / n_o, ref / n_r
    m, a = np.log2(op / rp), 0.5 * np.log2(op * rp)
    if np.max(np.abs(m)) < 1e-6:
        return 1.0
    m_shrunk = np.log2(((obs + 0.5) / (n_o + 0.5)) / ((ref + 0.5) / (n_r + 0.5)))
    order_m = sorted(range(n), key=lambda i: (m[i], m_shrunk[i], i))
    order_a = sorted(range(n), key=lambda i: (a[i], i))
    lo_m, lo_a = int(n * trim) + 1, int(n * sum_trim) + 1
    keep_m, keep_a = np.zeros(n, bool), np.zeros(n, bool)
    keep_m[order_m[lo_m - 1:n + 1 - lo_m]] = True
    keep_a[order_a[lo_a - 1:n + 1 - lo_a]] = True
    keep = keep_m & keep_a
    if weighting:
        v = (1 - op[keep]) / op[keep] / n_o + (1 - rp[keep]) / rp[keep] / n_r
        w = (1 + 1e-6) / (v + 1e-6)
        return 2.0 ** (np.sum(w * m[keep]) / np.sum(w))
    return 2.0 ** np.mean(m[keep])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), genes=st.integers(1, 60), samples=st.integers(2, 7),
       zeros=st.floats(0, 0.7), trim=st.sampled_from([0.3, 0.1, 0.45]),
       weighting=st.booleans())
def test_tmm_kernels_match_plain_references(seed, genes, samples, zeros, trim, weighting):
    """Small counts with many ties and zeros (ties in M and A, zero-in-one genes, singleton
    pairing), every column against a reference column."""
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.gamma(1.0, 8.0, (genes, 1)), (genes, samples)).astype(np.float64)
    x[rng.random(x.shape) < zeros] = 0
    lib = x.sum(axis=0)
    lib[lib == 0] = 1.0
    ref = int(rng.integers(samples))
    got = cnt.calc_factor_tmm(x, x[:, ref], lib, lib[ref], logratio_trim=trim,
                              do_weighting=weighting)
    want = [tmm_reference(x[:, j], x[:, ref], lib[j], lib[ref], trim, weighting=weighting)
            for j in range(samples)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    got = cnt.calc_factor_tmmwsp(x, x[:, ref], lib, lib[ref], logratio_trim=trim,
                                 do_weighting=weighting)
    want = [tmmwsp_reference(x[:, j], x[:, ref], lib[j], lib[ref], trim, weighting=weighting)
            for j in range(samples)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_rle_and_upper_quartile_kernels_match_plain_references():
    rng = np.random.default_rng(8)
    x = rng.negative_binomial(3, 0.05, (200, 6)).astype(np.float64)
    x[rng.random(x.shape) < 0.1] = 0
    lib = x.sum(axis=0)
    gm = np.array([scipy.stats.gmean(r) if (r > 0).all() else 0.0 for r in x])
    rle = [np.median(x[gm > 0, j] / gm[gm > 0]) / lib[j] for j in range(6)]
    np.testing.assert_allclose(cnt.calc_factor_rle(x, cnt.log_geometric_means(x)) / lib, rle,
                               rtol=1e-12)
    use = ~cnt.all_zero_genes(x)
    uq = [np.quantile(x[use, j], 0.75) / lib[j] for j in range(6)]
    np.testing.assert_allclose(cnt.calc_factor_quantile(x, lib, 0.75, use), uq, rtol=1e-12)
    f = np.array(uq)
    np.testing.assert_allclose(cnt.rescale_factors(f), f / scipy.stats.gmean(f), rtol=1e-12)


# -- laziness, chunking, edge cases -------------------------------------------------------------

def test_building_computes_nothing(fixture_counts, no_compute):
    x, _, samples = fixture_counts
    with no_compute():
        for method in cnt.METHODS:
            f = cnt.norm_factors(x, method)
            assert isinstance(f.data, da.Array) and f.dims == ("sample",)
        lib = cnt.library_sizes(x)
        cnt.cpm(x, lib_size=lib, norm_factors=cnt.norm_factors(x, lib_size=lib), log=True)
        cnt.cpm(x)
        cnt.filter_by_expr(x, group=samples["group"].to_numpy())


@pytest.mark.parametrize("method", cnt.METHODS)
def test_results_do_not_depend_on_chunks(fixture_counts, method):
    _, values, samples = fixture_counts
    a = as_counts(values, chunks=2000)
    b = as_counts(values, chunks=77)
    fa, fb = cnt.norm_factors(a, method), cnt.norm_factors(b, method)
    np.testing.assert_array_equal(computed(fa), computed(fb))
    with dask.config.set(scheduler="threads"):
        np.testing.assert_array_equal(cnt.norm_factors(b, method).values, computed(fa))
    np.testing.assert_array_equal(computed(cnt.cpm(a, norm_factors=fa, log=True)),
                                  computed(cnt.cpm(b, norm_factors=fb, log=True)))
    group = samples["group"].to_numpy()
    np.testing.assert_array_equal(computed(cnt.filter_by_expr(a, group=group)),
                                  computed(cnt.filter_by_expr(b, group=group)))


def test_integer_and_float_counts_agree(fixture_counts):
    x, values, _ = fixture_counts
    ints = as_counts(values, chunks=500)
    np.testing.assert_array_equal(computed(cnt.norm_factors(ints)), computed(cnt.norm_factors(x)))
    np.testing.assert_array_equal(computed(cnt.cpm(ints, log=True)), computed(cnt.cpm(x, log=True)))


def test_degenerate_inputs_give_ones_or_nan():
    rng = np.random.default_rng(3)
    x = rng.poisson(20, (50, 4)).astype(np.float32)
    for method in cnt.METHODS:  # one sample, or no gene with a count: edgeR's "none"
        np.testing.assert_array_equal(computed(cnt.norm_factors(as_counts(x[:, :1]), method)),
                                      [1.0])
        np.testing.assert_array_equal(
            computed(cnt.norm_factors(as_counts(np.zeros((5, 3), np.float32)), method)),
            np.ones(3))
    missing = x.copy()
    missing[7, 2] = np.nan  # a NaN count: every factor NaN, that sample's CPM NaN, log CPM all
    # NaN (the prior count is scaled by the mean library size)
    for method in ("TMM", "TMMwsp", "RLE", "upperquartile"):
        assert np.isnan(computed(cnt.norm_factors(as_counts(missing), method))).all()
    lib = computed(cnt.library_sizes(as_counts(missing)))
    assert np.isnan(lib[2]) and not np.isnan(lib[[0, 1, 3]]).any()
    got = computed(cnt.cpm(as_counts(missing)))
    assert np.isnan(got[:, 2]).all() and not np.isnan(got[:, [0, 1, 3]]).any()
    assert np.isnan(computed(cnt.cpm(as_counts(missing), log=True))).all()
    keep = computed(cnt.filter_by_expr(as_counts(missing)))
    assert not keep[7]
    empty = x.copy()
    empty[:, 1] = 0  # an empty library: edgeR's TMM stops (median of NA); here NaN factors
    assert np.isnan(computed(cnt.norm_factors(as_counts(empty), "TMM"))).all()
    assert np.isnan(computed(cnt.cpm(as_counts(empty)))[:, 1]).all()


def test_tmm_skips_all_zero_genes_like_edger():
    """Adding genes that are zero everywhere changes nothing (edgeR drops them), for
    upperquartile too, whose quantile position depends on the number of genes."""
    rng = np.random.default_rng(6)
    x = rng.poisson(rng.gamma(2, 10, (80, 1)), (80, 5)).astype(np.float32)
    padded = np.vstack([x, np.zeros((30, 5), np.float32)])
    for method in ("TMM", "TMMwsp", "RLE", "upperquartile"):
        np.testing.assert_allclose(computed(cnt.norm_factors(as_counts(padded, chunks=9), method)),
                                   cnt.calc_norm_factors(x, method), rtol=1e-15)


def test_bad_inputs_are_named(fixture_counts):
    x, _, _ = fixture_counts
    with pytest.raises(InputError, match="not one of"):
        cnt.norm_factors(x, "tmm")
    with pytest.raises(InputError, match="logratio_trim"):
        cnt.norm_factors(x, logratio_trim=0.5)
    with pytest.raises(InputError, match="ref_column"):
        cnt.norm_factors(x, ref_column="nope")
    with pytest.raises(InputError, match="ref_column"):
        cnt.norm_factors(x, ref_column=12)
    with pytest.raises(InputError, match="TMM option"):
        cnt.norm_factors(x, "RLE", ref_column=1)
    with pytest.raises(InputError, match="12 values"):
        cnt.cpm(x, lib_size=np.ones(3))
    with pytest.raises(InputError, match="finite and > 0.*S02"):
        cnt.cpm(x, lib_size=np.r_[1.0, 0.0, np.ones(10)])
    with pytest.raises(InputError, match="one label per sample"):
        cnt.filter_by_expr(x, group=["a", "b"])
    with pytest.raises(InputError, match="no labels"):
        cnt.filter_by_expr(x, group=[""] * 12)
    with pytest.raises(InputError, match="prior_count"):
        cnt.cpm(x, log=True, prior_count=-1)
    with pytest.raises(InputError, match="dims"):
        cnt.library_sizes(x.transpose())


def test_min_sample_size_follows_edger():
    assert cnt.min_sample_size(None, 12) == 10 + 2 * 0.7
    assert cnt.min_sample_size(["a", "a", "b", None, "b", "b"], 6) == 2
    assert cnt.min_sample_size(["a"] * 30 + ["b"] * 14, 44, large_n=10, min_prop=0.5) == 12
    assert cnt.min_sample_size(np.array(["a", "", "b", "b"], dtype=object), 4) == 1


def test_factors_do_not_depend_on_the_sample_blocks(fixture_counts, monkeypatch):
    """Each sample's statistics use its own whole column, so the per-sample block size (a
    constant of the algorithm) changes nothing either."""
    from engine.preprocess import transforms

    x, _, _ = fixture_counts
    expected = {m: computed(cnt.norm_factors(x, m)) for m in cnt.METHODS}
    monkeypatch.setattr(transforms, "SAMPLES_PER_BLOCK", 5)
    for method, want in expected.items():
        np.testing.assert_array_equal(computed(cnt.norm_factors(x, method)), want)
