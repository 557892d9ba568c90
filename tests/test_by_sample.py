"""The per-sample rechunk (``by_sample``): disk-staged for large matrices, the same scores."""

from __future__ import annotations

from types import SimpleNamespace

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import xarray as xr

from engine.stats import features
from engine.stats.scores import single_sample_scores


def _cohort(n_genes=1000, n_samples=1200, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(8, 1, (n_genes, n_samples)).astype(np.float32)
    x[:100] = np.round(x[:100])                      # ties
    x[rng.random(x.shape) < 0.01] = np.nan           # missing values
    ds = xr.Dataset({"expression": (("gene", "sample"), da.from_array(x, chunks=(300, -1)))},
                    coords={"gene": [f"g{i}" for i in range(n_genes)],
                            "sample": [f"s{j}" for j in range(n_samples)]})
    sizes = rng.integers(15, 201, size=50)
    rows = np.repeat(np.arange(sizes.size), sizes)
    cols = np.concatenate([np.sort(rng.choice(n_genes, k, replace=False)) for k in sizes])
    m = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(sizes.size, n_genes))
    return ds, SimpleNamespace(names=[f"set{i}" for i in range(sizes.size)], matrix=m)


@pytest.mark.slow
def test_by_sample_on_disk_matches_in_memory(monkeypatch):
    """The large-matrix path (p2p rechunk on the workers' disks) gives bit-identical ssGSEA."""
    distributed = pytest.importorskip("distributed")
    ds, sets = _cohort()
    with dask.config.set(scheduler="threads"):
        expected = single_sample_scores(ds, sets, method="ssgsea", samples_per_chunk=256)
        expected = expected["score"].values
    monkeypatch.setattr(features, "P2P_RECHUNK_BYTES", 0)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        lazy = single_sample_scores(ds, sets, method="ssgsea", samples_per_chunk=256)["score"]
        assert any("rechunk-p2p" in name for name in lazy.data.dask.layers)
        got = lazy.values
    np.testing.assert_array_equal(got, expected)


def test_by_sample_large_without_client_uses_tasks(monkeypatch):
    """Without a distributed client a large matrix takes the in-memory rechunk (p2p would fail
    on the threaded scheduler)."""
    monkeypatch.setattr(features, "P2P_RECHUNK_BYTES", 0)
    x = np.arange(60 * 50, dtype=np.float32).reshape(60, 50)
    out = features.by_sample(da.from_array(x, chunks=(7, -1)), 16)
    assert not any("p2p" in name for name in out.dask.layers)
    assert out.chunks == ((60,), (16, 16, 16, 2))
    with dask.config.set(scheduler="threads"):
        np.testing.assert_array_equal(out.compute(), x)
