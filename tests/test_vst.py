"""DESeq2's variance-stabilising transformation (engine.preprocess.vst) against R DESeq2 1.38
``varianceStabilizingTransformation(blind = TRUE)`` (fixtures in
tests/data/r_reference/deseq2, made by make_fixtures.sh there) and its closed forms."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from engine.errors import InputError
from engine.preprocess.size_factors import size_factors, size_factors_matrix
from engine.preprocess.vst import vst, vst_block
from engine.stats.deseq2 import gene_stage, trend_stage

REF = Path(__file__).parent / "data" / "r_reference" / "deseq2"
CASES = {  # R output -> counts and options
    "two_group_vst": ("two_group", {}),
    "two_group_vst_mean": ("two_group", {"fit_type": "mean"}),
    "zeros_vst_poscounts": ("zeros", {"size_factors": "poscounts"}),
}


def read_counts(name: str) -> pd.DataFrame:
    return pd.read_csv(REF / f"{name}_counts.tsv.gz", sep="\t", index_col=0)


def as_array(counts: pd.DataFrame, chunk: int = 128) -> xr.DataArray:
    return xr.DataArray(da.from_array(counts.to_numpy(np.float32), chunks=(chunk, -1)),
                        dims=("gene", "sample"),
                        coords={"gene": counts.index.to_numpy(object),
                                "sample": counts.columns.to_numpy(object)},
                        attrs={"scale": "counts"})


def read_meta(file: str) -> pd.Series:
    return pd.read_csv(REF / file, sep="\t", index_col=0, float_precision="round_trip")["value"]


@pytest.mark.parametrize("case", list(CASES))
def test_vst_matches_r(case):
    name, options = CASES[case]
    counts = read_counts(name)
    r = pd.read_csv(REF / f"{case}_every5.tsv.gz", sep="\t", index_col=0,
                    float_precision="round_trip")
    meta = read_meta(f"{case}_meta.tsv")
    with dask.config.set(scheduler="sync"):
        out = vst(as_array(counts), **options).compute()
    assert out.dtype == np.float32
    got = out.to_pandas().loc[r.index, r.columns].to_numpy()
    # float32 output of float64 values: within one float32 step of R's (measured 4.8e-7
    # absolute, 5.9e-8 relative: the rounding)
    ulp = np.spacing(np.abs(r.to_numpy(np.float32)))
    assert (np.abs(got - r.to_numpy()) <= ulp).all()
    # in float64, with the engine's size factors and trend (which agree with R's to 1e-12 and
    # 1e-9: the trend is a fit of gene-wise dispersions that agree to ~1e-9)
    method = options.get("size_factors", "ratio")
    sf = size_factors_matrix(counts.to_numpy(), method)
    np.testing.assert_allclose(sf, meta[[f"size_factor_{s}" for s in counts.columns]],
                               rtol=1e-12)
    fit_type = options.get("fit_type", "parametric")
    trend = trend_stage(gene_stage(counts.to_numpy(), sf, x=np.ones((counts.shape[1], 1))),
                        fit_type=fit_type, m=counts.shape[1], p=1, prior=False)
    coefs = [meta["mean"]] if fit_type == "mean" else [meta["asymptDisp"], meta["extraPois"]]
    np.testing.assert_allclose(trend[:len(coefs)], coefs, rtol=1e-8)
    exact = vst_block(counts.loc[r.index].to_numpy(), sf, trend, fit_type)
    np.testing.assert_allclose(exact, r.to_numpy(), rtol=1e-8)  # measured 2.6e-9


def test_closed_forms():
    """Both forms are sqrt(a) / log(2) times the integral of 1 / sqrt(v(t)) from 0, with the
    variance v(t) = t + alpha(t) t^2 (Anders & Huber 2010): alpha = a + b / t (parametric) or
    alpha = a (mean); the factor makes them log2(q) plus a vanishing term at large q."""
    from scipy.integrate import quad

    a, b = 0.05, 2.0
    q = np.array([0.0, 0.5, 3.0, 40.0, 5000.0])
    for fit_type, trend, variance in [
            ("parametric", np.array([a, b]), lambda t: t * (1 + b) + a * t * t),
            ("mean", np.array([a, 0.0]), lambda t: t + a * t * t)]:
        got = vst_block(q[:, None], np.ones(1), trend, fit_type)[:, 0]
        integral = np.array([quad(lambda t: 1 / np.sqrt(variance(t)), 0, v, limit=200)[0]
                             for v in q])
        np.testing.assert_allclose(got, got[0] + np.sqrt(a) / np.log(2) * integral,
                                   rtol=1e-9)
    np.testing.assert_allclose(vst_block(np.zeros((1, 1)), np.ones(1), np.array([a, b]))[0, 0],
                               np.log2((1 + b) / (4 * a)), rtol=1e-14)
    big = vst_block(np.array([[1e9]]), np.ones(1), np.array([a, b]))[0, 0]
    np.testing.assert_allclose(big, np.log2(1e9), atol=1e-6)


def test_lazy_chunks_coords_and_given_size_factors(no_compute):
    counts = read_counts("two_group")
    with no_compute():
        a = vst(as_array(counts, chunk=1000))
        sf = size_factors(as_array(counts, chunk=77))
        b = vst(as_array(counts, chunk=77), size_factors=sf)
        assert isinstance(a.data, da.Array) and isinstance(b.data, da.Array)
    assert a.dims == ("gene", "sample") and a.chunks == ((1000,), (12,))
    assert b.chunks[0] == as_array(counts, chunk=77).chunks[0]
    assert list(a["sample"].values) == list(counts.columns)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(
        a.values, vst(as_array(counts), size_factors=sf.values).values)


def test_missing_counts_and_all_zero_genes():
    counts = read_counts("two_group").astype(float)
    counts.iloc[40, 2] = np.nan
    out = vst(as_array(counts)).values
    assert np.isnan(out[40, 2]) and np.isfinite(np.delete(out[40], 2)).all()
    # the gene with a missing count is left out of the dispersions, like a dropped gene
    dropped = vst(as_array(counts.drop(index=counts.index[40]))).values
    np.testing.assert_array_equal(np.delete(out, 40, axis=0), dropped)
    zero = (counts.fillna(1).to_numpy() == 0).all(axis=1)
    assert zero.any()
    assert np.isfinite(out[zero]).all() and (out[zero] == out[zero][0, 0]).all()


def test_blind_false_design():
    counts = read_counts("two_group")
    ones = vst(as_array(counts), blind=False, design=np.ones((12, 1))).values
    np.testing.assert_array_equal(ones, vst(as_array(counts)).values)
    group = np.column_stack([np.ones(12), np.repeat([0.0, 1.0], 6)])
    by_group = vst(as_array(counts), blind=False, design=group).values
    assert not np.array_equal(by_group, ones)  # dispersions within groups: another trend
    with pytest.raises(InputError, match="needs the design"):
        vst(as_array(counts), blind=False)
    with pytest.raises(InputError, match="design must be"):
        vst(as_array(counts), blind=False, design=np.ones((5, 1)))


@pytest.mark.parametrize("kwargs, match", [
    ({"fit_type": "local"}, "not implemented"),
    ({"size_factors": np.ones(3)}, "one per sample"),
    ({"size_factors": "median"}, "not one of"),
])
def test_input_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        vst(as_array(read_counts("two_group")), **kwargs)
    with pytest.raises(InputError, match="dims"):
        vst(as_array(read_counts("two_group")).T)
