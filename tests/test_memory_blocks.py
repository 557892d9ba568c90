"""Blocks sized from the workers' memory: the same results from smaller blocks."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from engine.jobs import load_job, plan_job
from engine.jobs.monitor import BLOCK_SHARE, block_budget, blocks_for
from engine.store import open_cohort
from engine.store.cohort import MAX_BLOCK_BYTES, gene_chunks


@pytest.mark.parametrize("stored, n, max_bytes, expected", [
    ((100, 100, 37), 10, None, (100, 100, 37)),            # no budget: the store's chunks
    ((100, 100, 37), 10, 8 * 10 * 100, (100, 100, 37)),    # a stored chunk fits
    ((100, 100, 37), 10, 8 * 10 * 40, (34, 33, 33, 34, 33, 33, 37)),
    ((5,), 1000, 1, (1, 1, 1, 1, 1)),                      # at least one gene a block
])
def test_gene_chunks_split_stored_chunks_evenly(stored, n, max_bytes, expected):
    chunks = gene_chunks(stored, n, max_bytes)
    assert chunks == expected
    # each stored chunk is split into whole parts: no block spans two stored chunks
    bounds = set(np.cumsum(chunks))
    assert set(np.cumsum(stored)) <= bounds
    if max_bytes:
        assert all(c * n * 8 <= max_bytes for c in chunks) or max(chunks) == 1 \
            or chunks == stored


def test_open_cohort_splits_blocks_under_the_budget(all_store):
    whole = open_cohort(all_store)
    with dask.config.set({MAX_BLOCK_BYTES: 8 * whole.sizes["sample"] * 2000}):
        split = open_cohort(all_store)
    assert whole["expression"].chunks[0] == (5000, 5000, 2625)
    assert split["expression"].chunks[0] == (1667, 1667, 1666) * 2 + (1313, 1312)
    # other keys than the store's own chunks: a sweep never mixes the two
    assert not set(dict(whole["expression"].data.dask)) & set(dict(split["expression"].data.dask))
    xr.testing.assert_identical(whole.compute(), split.compute())


def test_results_do_not_depend_on_the_block_size(all_store, tmp_path):
    """Per-gene tests, seeded permutations and a sample-wise score: equal with 3 or 15 blocks."""
    job = tmp_path / "job.yaml"
    job.write_text(f"""cohort: {all_store}
output: out
seed: 3
analyses:
  - {{name: welch, test: welch, group: mol.biol, case: BCR/ABL, control: NEG, permutations: 200}}
  - {{name: spearman, test: spearman, covariate: age}}
""")
    plain = plan_job(load_job(job))
    with dask.config.set({MAX_BLOCK_BYTES: 8 * 128 * 1000}):
        small = plan_job(load_job(job))
    assert small["welch"]["p_value"].data.numblocks[0] > plain["welch"]["p_value"].data.numblocks[0]
    for name in plain:
        a, b = dask.compute(plain[name], small[name], scheduler="synchronous")
        xr.testing.assert_equal(a, b)


def test_block_budget_is_a_share_of_the_smallest_worker_memory_per_thread():
    with LocalCluster(n_workers=1, threads_per_worker=2, memory_limit="800MiB", processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        assert block_budget(client) == int(800 * 2**20 / 2 * BLOCK_SHARE)
        with blocks_for(client) as budget:
            assert dask.config.get(MAX_BLOCK_BYTES) == budget
    with LocalCluster(n_workers=1, memory_limit=0, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        assert block_budget(client) is None


def test_blocks_split_unevenly_are_written_to_zarr(all_store, tmp_path):
    """Zarr needs uniform chunks; split blocks differ by a row: the writes merge them."""
    from engine.jobs.runner import plan_results, zarr_writes

    job = tmp_path / "job.yaml"
    job.write_text(f"cohort: {all_store}\noutput: out\nanalyses:\n"
                   "  - {name: welch, test: welch, group: mol.biol, case: BCR/ABL, control: NEG}\n")
    with dask.config.set({MAX_BLOCK_BYTES: 8 * 128 * 1700}):
        planned = plan_results(load_job(job), compute=None)
    assert len(set(planned.results["welch"]["p_value"].data.chunks[0])) > 1
    dask.compute(*zarr_writes(planned, tmp_path / "r.zarr"), scheduler="synchronous")
    written = xr.open_zarr(tmp_path / "r.zarr", group="welch", consolidated=False)
    assert written["p_value"].encoding["chunks"] == (12625,)
    reference = plan_job(load_job(job))["welch"].compute(scheduler="synchronous")
    xr.testing.assert_equal(written.compute().reset_coords(drop=True),
                            reference.reset_coords(drop=True))


def test_permutation_temporaries_follow_the_memory_budget():
    """At 50,000 samples a 256-permutation label block was 200 MB of indices per task; now the
    labels are drawn row by row as bool and a task holds its block (in float64) plus about
    its budget, whatever the budget."""
    import tracemalloc

    from engine.resample.permutation import permutation_chunk

    x = np.random.default_rng(0).normal(size=(8, 50_000)).astype(np.float32)
    case, control = np.arange(25_000), np.arange(25_000, 50_000)
    block = x.size * 8
    peaks = {}
    for budget in (4 * 2**20, 16 * 2**20):
        tracemalloc.start()
        permutation_chunk(x, test="welch", case=case, control=control, permutations=40,
                          seed=1, key=1, memory_budget=budget)
        peaks[budget] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # the float64 values, one bool label block (samples x 256) and the budget
        assert peaks[budget] < block + 50_000 * 256 + 1.5 * budget, (budget, peaks[budget])
