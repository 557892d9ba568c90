"""Same inputs give bit-identical results whatever the chunking, worker count or worker kind."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from engine.cluster import dask_client
from engine.jobs import load_job, run_job
from engine.stats.per_gene import two_group_test
from engine.store import ingest, open_cohort

TESTS = [("welch", None), ("student", None), ("mann_whitney", None),
         ("paired_t", "patient"), ("wilcoxon_signed_rank", "patient")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from conftest import write_cohort_files

    return write_cohort_files(tmp_path_factory.mktemp("det"), n_genes=203, n_per_group=6, seed=3)


def _all_tests(store) -> xr.Dataset:
    ds = open_cohort(store)
    results = [two_group_test(ds, test=t, group="group", case="case", control="control",
                              pair_by=p) for t, p in TESTS]
    return xr.concat(results, dim=pd.Index([t for t, _ in TESTS], name="test"),
                     combine_attrs="drop_conflicts")


def test_identical_across_chunkings(tmp_path, files):
    computed = []
    for chunk in (203, 64, 17, 1):
        store = ingest(files["matrix"], files["samples"], tmp_path / f"c{chunk}.zarr",
                       chunk_genes=chunk)
        lazy = _all_tests(store)
        assert lazy["p_value"].data.chunks[1][0] == chunk  # (test, gene)
        with dask.config.set(scheduler="threads"):
            computed.append(lazy.compute())
    for other in computed[1:]:
        xr.testing.assert_identical(computed[0], other)  # bit for bit, NaN where NaN
    assert np.isfinite(computed[0]["p_value"]).sum() > 150


def test_dask_backed_equals_numpy_backed(tmp_path, files):
    store = ingest(files["matrix"], files["samples"], tmp_path / "c.zarr", chunk_genes=50)
    lazy = open_cohort(store)
    eager = lazy.load()
    eager["expression"] = eager["expression"].copy(data=np.asarray(eager["expression"].values))
    assert not isinstance(eager["expression"].data, da.Array)
    for test, pair in TESTS:
        a = two_group_test(lazy, test=test, group="group", case="case", control="control",
                           pair_by=pair)
        b = two_group_test(eager, test=test, group="group", case="case", control="control",
                           pair_by=pair)
        xr.testing.assert_identical(a.compute(), b.compute())


@pytest.mark.slow
def test_identical_on_one_or_two_workers_threads_or_processes(tmp_path, files):
    """The whole job, through the runner, on four cluster shapes: result tables are identical."""
    ingest(files["matrix"], files["samples"], tmp_path / "c.zarr", chunk_genes=25)
    analyses = "".join(
        f"  - {{name: {t}, test: {t}, group: group, case: case, control: control"
        + (f", pair_by: {p}}}\n" if p else "}\n") for t, p in TESTS)
    tables = {}
    for label, kwargs in {"1 process": dict(workers=1), "2 processes": dict(workers=2),
                          "threads": dict(workers=1, processes=False)}.items():
        job_file = tmp_path / f"{label}.yaml"
        job_file.write_text(f"cohort: c.zarr\noutput: out-{label.replace(' ', '')}\n"
                            f"analyses:\n{analyses}")
        with dask_client(quiet=True, **kwargs) as client:
            out = run_job(load_job(job_file), client)
        tables[label] = {t: (out / f"{t}.tsv").read_bytes() for t, _ in TESTS}
        stored = xr.open_zarr(out / "results.zarr", group="welch").load()
        tables[label]["zarr"] = stored["p_value"].values.tobytes()
    first = tables.pop("1 process")
    for label, other in tables.items():
        assert other == first, f"results on {label} differ from 1 process"
