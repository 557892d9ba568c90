"""Transforms (engine.preprocess.transforms): log2, quantile normalisation against
preprocessCore (R fixtures in tests/data/r_reference/normalize, README there), upper-quartile
scaling and z-scores against plain numpy/scipy references; laziness, chunking independence,
two-pass reads, edge cases."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import xarray as xr

from engine.errors import InputError
from engine.preprocess import transforms as tr
from engine.store import open_cohort

from conftest import lazy_matrix as matrix

REF = Path(__file__).parent / "data" / "r_reference" / "normalize"


def read_ref(name: str) -> pd.DataFrame:
    d = pd.read_csv(REF / name, sep="\t", dtype={0: str}, keep_default_na=False,
                    na_values=["NA"])
    return d.set_index(d.columns[0])


def read_target(name: str) -> np.ndarray:
    return pd.read_csv(REF / name, sep="\t")["target"].to_numpy(dtype=np.float64)


def computed(x: xr.DataArray) -> np.ndarray:
    with dask.config.set(scheduler="sync"):
        return x.values


class CountingReads:
    """An array whose reads are counted (thread-safe): how often each pass reads the input."""

    def __init__(self, values):
        self.values = values
        self.shape, self.dtype, self.ndim = values.shape, values.dtype, values.ndim
        self.reads = 0
        self.lock = threading.Lock()

    def __getitem__(self, key):
        with self.lock:
            self.reads += 1
        return self.values[key]


# -- quantile normalisation ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def all_quantile(all_store):
    x = open_cohort(all_store)["expression"]
    return x, tr.quantile_normalize(x)


def test_quantile_all_matches_preprocesscore(all_quantile):
    """ALL (12,625 x 128, float32 values): R normalize.quantiles on the same float32 values.
    The engine's float32 output: within float32 rounding (measured 5.9e-8 relative); the float64
    kernel on the whole matrix: 2.5e-16 measured, asserted 1e-12 (only summation order
    differs: R sums in long double)."""
    x, q = all_quantile
    ref = read_ref("all_f32_quantile_every100.tsv.gz")
    genes = pd.Index(np.asarray(x["gene"].values).astype(str))
    samples = pd.Index(np.asarray(x["sample"].values).astype(str))
    rows, cols = genes.get_indexer(ref.index), samples.get_indexer(ref.columns)
    assert (rows >= 0).all() and (cols >= 0).all() and len(rows) == 127
    r = ref.to_numpy()
    got = computed(q)
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(got[np.ix_(rows, cols)], r, rtol=1e-6, atol=0)
    values = computed(x).astype(np.float64)
    np.testing.assert_allclose(tr.normalize_quantiles(values)[np.ix_(rows, cols)], r,
                               rtol=1e-12, atol=0)
    target = read_target("all_f32_quantile_target.tsv.gz")
    partials = [tr.quantile_target_partial(values[:, j:j + 50]) for j in range(0, 128, 50)]
    np.testing.assert_allclose(tr.quantile_target(partials), np.sort(target), rtol=1e-12,
                               atol=0)


def test_quantile_keeps_chunks_coords_and_is_float32(all_quantile):
    x, q = all_quantile
    assert q.dims == ("gene", "sample") and q.data.chunks == x.data.chunks
    assert q.dtype == np.float32 and isinstance(q.data, da.Array)
    assert (q["gene"].values == x["gene"].values).all()
    assert (q["sample"].values == x["sample"].values).all()


def test_quantile_ties_and_missing_match_preprocesscore():
    """A matrix made in R with runs of ties of every length, tied pairs (half ranks), columns
    with 3, 20 and 30 NAs (heavy ties among the present values) and a column with 2 values."""
    x = read_ref("ties_na_input.tsv")
    ref = read_ref("ties_na_quantile.tsv").to_numpy()
    values = x.to_numpy()
    assert np.isnan(values).sum(axis=0).tolist() == [0, 0, 0, 3, 20, 30, 58]
    got64 = tr.normalize_quantiles(values)
    assert np.array_equal(np.isnan(got64), np.isnan(ref))
    np.testing.assert_allclose(got64, ref, rtol=1e-12, atol=0)  # measured 2e-16
    got = computed(tr.quantile_normalize(matrix(values.astype(np.float32), chunks=7)))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0)
    target = read_target("ties_na_target.tsv")
    np.testing.assert_allclose(tr.quantile_target([tr.quantile_target_partial(values)]),
                               np.sort(target), rtol=1e-12, atol=0)
    complete = read_ref("ties_complete_quantile.tsv").to_numpy()
    np.testing.assert_allclose(tr.normalize_quantiles(values[:, :3]), complete, rtol=1e-12,
                               atol=0)


def test_quantile_tie_rule_by_hand():
    """preprocessCore's ties rule worked out by hand: target = mean of sorted columns; a tie
    at ranks 1-2 (half rank 1.5) takes the mean of target[1] and target[2]; a tie of three at
    ranks 2-4 (rank 3) takes target[3]."""
    x = np.array([[1.0, 10.0], [1.0, 20.0], [5.0, 30.0], [5.0, 40.0], [5.0, 50.0]])
    target = (np.sort(x[:, 0]) + np.sort(x[:, 1])) / 2  # 5.5, 10.5, 17.5, 22.5, 27.5
    got = tr.normalize_quantiles(x)
    np.testing.assert_array_equal(got[:, 1], target)
    np.testing.assert_array_equal(got[:, 0], [8.0, 8.0, 22.5, 22.5, 22.5])


def test_quantile_single_value_and_empty_columns():
    """A column with one value: preprocessCore's position is 0/0 (undefined in C); its Debian
    x86-64 build gives the largest target value (checked in R when this was written), and so
    does the engine. A column without values stays NaN and is left out of the target (R reads
    undefined memory there), so the other columns come out as without it."""
    base = np.array([[5.0, 1.0], [2.0, 1.0], [3.0, 2.0], [4.0, 2.0], [1.0, 3.0]])
    single = np.column_stack([base, [np.nan, np.nan, 7.0, np.nan, np.nan]])
    got = tr.normalize_quantiles(single)
    target = tr.quantile_target([tr.quantile_target_partial(single)])
    assert got[2, 2] == target[-1] and np.isnan(got[[0, 1, 3, 4], 2]).all()
    empty = np.column_stack([base, np.full(5, np.nan)])
    got = tr.normalize_quantiles(empty)
    assert np.isnan(got[:, 2]).all()
    np.testing.assert_array_equal(got[:, :2], tr.normalize_quantiles(base))
    assert np.isnan(tr.normalize_quantiles(np.full((4, 3), np.nan))).all()


def test_quantile_is_independent_of_chunks_and_scheduler():
    rng = np.random.default_rng(5)
    x = np.round(rng.normal(8, 2, (257, 300)), 1).astype(np.float32)  # ties
    x[rng.random(x.shape) < 0.02] = np.nan
    a = computed(tr.quantile_normalize(matrix(x, chunks=257)))
    b = computed(tr.quantile_normalize(matrix(x, chunks=19)))
    with dask.config.set(scheduler="threads"):
        c = tr.quantile_normalize(matrix(x, chunks=64)).values
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    # and the lazy result is the in-memory kernel rounded to float32
    np.testing.assert_array_equal(a, tr.normalize_quantiles(x).astype(np.float32))


def test_quantile_reads_the_input_twice_and_computes_nothing_when_built(no_compute):
    """Two passes: the target from the first, then a re-read (the first pass's chunks are not
    held until the target is known); building the result computes nothing."""
    values = np.random.default_rng(1).normal(size=(40, 10)).astype(np.float32)
    source = CountingReads(values)
    x = xr.DataArray(da.from_array(source, chunks=(10, -1)), dims=("gene", "sample"))
    source.reads = 0  # from_array takes an empty slice for its meta
    with no_compute():
        q = tr.quantile_normalize(x)
    assert source.reads == 0
    computed(q)
    assert source.reads == 2 * 4


def test_empty_matrices():
    for shape in ((0, 4), (3, 0)):
        x = matrix(np.zeros(shape, np.float32))
        for fn in (tr.quantile_normalize, tr.upper_quartile, tr.zscore, tr.log2):
            assert computed(fn(x)).shape == shape


# -- upper quartile ------------------------------------------------------------------------------

def upper_quartile_reference(x: np.ndarray, p: float) -> np.ndarray:
    """Written plainly: per sample, numpy's default (R type 7) quantile of the values > 0."""
    q = np.array([np.quantile(col[col > 0], p) if (col > 0).any() else np.nan for col in x.T])
    return x / q * np.nanmean(q)


@pytest.mark.parametrize("p", [0.75, 0.5, 0.9])
def test_upper_quartile_matches_reference(p):
    rng = np.random.default_rng(2)
    x = rng.negative_binomial(2, 0.02, (301, 9)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = 0  # many zeros, excluded from the quantiles
    x[5, 3] = np.nan
    ref = upper_quartile_reference(x.astype(np.float64), p)
    got = computed(tr.upper_quartile(matrix(x, chunks=50), p=p))
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=0)
    np.testing.assert_allclose(tr.column_quantiles(x, p, x > 0),
                               [np.quantile(c[c > 0], p) for c in x.T.astype(np.float64)],
                               rtol=1e-12)


def test_upper_quartile_edge_cases(no_compute):
    x = np.array([[0, 2, 4], [0, 4, 8], [0, 6, 12], [0, 8, np.nan]], dtype=np.float32)
    with no_compute():
        lazy = tr.upper_quartile(matrix(x, chunks=3))
    got = computed(lazy)
    assert np.isnan(got[:, 0]).all()  # no value above 0
    q1, q2 = np.quantile([2, 4, 6, 8], 0.75), np.quantile([4, 8, 12], 0.75)
    np.testing.assert_allclose(got[:, 1], x[:, 1] / q1 * (q1 + q2) / 2, rtol=1e-6)
    assert np.isnan(got[3, 2])
    a = computed(tr.upper_quartile(matrix(x, chunks=1)))
    np.testing.assert_array_equal(got, a)
    with pytest.raises(InputError, match="between 0 and 1"):
        tr.upper_quartile(matrix(x), p=1.0)


# -- log2 and z-scores ---------------------------------------------------------------------------

def test_log2_offsets_and_invalid_values(no_compute):
    x = np.array([[0.0, 1.0, -1.0, np.nan], [3.0, -0.5, 7.0, 1e-30]], dtype=np.float32)
    with no_compute():
        one = tr.log2(matrix(x))
        zero = tr.log2(matrix(x), offset=0)
    got = computed(one)
    assert got.dtype == np.float32
    expected = np.array([[0.0, 1.0, np.nan, np.nan], [2.0, -1.0, 3.0, 0.0]])
    np.testing.assert_allclose(got, expected, rtol=1e-7)
    got0 = computed(zero)
    assert np.isnan(got0[0, [0, 2, 3]]).all() and not np.isinf(got0).any()
    np.testing.assert_allclose(got0[1, [0, 2, 3]],
                               np.log2(x[1, [0, 2, 3]].astype(np.float64)), rtol=1e-7)
    with pytest.raises(InputError, match="finite number"):
        tr.log2(matrix(x), offset=np.inf)


@pytest.mark.parametrize("ddof", [0, 1])
def test_zscore_matches_scipy(ddof, no_compute):
    rng = np.random.default_rng(4)
    x = rng.normal(5, 2, (60, 12)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[3] = 2.7  # constant: NaN (its float mean need not equal 2.7)
    x[4, 1:] = np.nan  # one value
    x[5, 2:] = np.nan  # two values: defined for both ddof
    with no_compute():
        lazy = tr.zscore(matrix(x, chunks=13), ddof=ddof)
    got = computed(lazy)
    with warnings.catch_warnings():  # scipy on the constant row, replaced below
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = scipy.stats.zscore(x.astype(np.float64), axis=1, ddof=ddof, nan_policy="omit")
    ref[3] = np.nan
    ref[4] = np.nan
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got, computed(tr.zscore(matrix(x, chunks=60), ddof=ddof)))


def test_bad_inputs():
    x = matrix(np.ones((3, 2), np.float32))
    with pytest.raises(InputError, match="xarray DataArray"):
        tr.quantile_normalize(np.ones((3, 2)))
    with pytest.raises(InputError, match="dims"):
        tr.log2(x.transpose())
    with pytest.raises(InputError, match="numeric"):
        tr.zscore(x.astype(bool))
    with pytest.raises(InputError, match="ddof"):
        tr.zscore(x, ddof=2)


@pytest.mark.slow
def test_on_disk_rechunks_give_the_same_results(monkeypatch):
    """On a distributed cluster large matrices take the peer-to-peer rechunk both ways
    (by_sample and back to gene chunks), with the second pass's re-read: same bits."""
    distributed = pytest.importorskip("distributed")
    from engine.preprocess import counts as cnt
    from engine.stats import features

    rng = np.random.default_rng(9)
    values = rng.poisson(rng.gamma(2, 20, (400, 1)), (400, 300)).astype(np.float32)

    def results():
        x = matrix(values, chunks=100)
        out = [tr.quantile_normalize(x), tr.upper_quartile(x)]
        for method in cnt.METHODS:
            factors = cnt.norm_factors(x, method)
            out += [factors, cnt.cpm(x, norm_factors=factors, log=True)]
        return out + [cnt.filter_by_expr(x)]

    expected = [computed(r) for r in results()]
    monkeypatch.setattr(features, "P2P_RECHUNK_BYTES", 0)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster):
        lazy = results()
        assert sum("rechunk-p2p" in name for name in lazy[0].data.dask.layers) >= 2
        got = dask.compute(*[r.data for r in lazy])
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
