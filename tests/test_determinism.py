"""Same inputs give bit-identical results whatever the chunking, worker count or worker kind."""

from __future__ import annotations

import io

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


def _resampling_job(files) -> str:
    """Every resampling path of the engine, in one job: label permutations and sign flips
    (random, not enumerated), the weight-matrix bootstrap (BCa, studentized, fold change), the
    index-resampling bootstrap (Spearman) and consensus clustering."""
    matrix = pd.read_csv(files["matrix"], sep="\t", index_col=0)
    complete = list(matrix.index[matrix.notna().all(axis=1)][:12])
    return (
        "analyses:\n"
        "  - {name: welch, test: welch, group: group, case: case, control: control,\n"
        "     fold_change_base: 2, bootstrap: {replicates: 300}, permutations: 500}\n"
        "  - {name: paired, test: paired_t, group: group, case: case, control: control,\n"
        "     pair_by: patient, bootstrap: {replicates: 300, method: studentized},\n"
        "     permutations: 40}\n"
        "  - {name: rho, test: spearman, covariate: age, bootstrap: {replicates: 200}}\n"
        f"  - {{name: classes, test: consensus_cluster, genes: [{', '.join(complete)}],\n"
        "     k_max: 4, resamples: 250, linkage: ward.D2}\n")


def _run_tables(tmp_path, job: str, store: str, label: str, **cluster) -> dict[str, bytes]:
    job_file = tmp_path / f"{label}.yaml"
    job_file.write_text(f"cohort: {store}\noutput: out-{label}\nseed: 11\n{job}")
    with dask_client(quiet=True, **cluster) as client:
        out = run_job(load_job(job_file), client)
    tables = {p.name: p.read_bytes() for p in sorted(out.glob("*.tsv"))}
    consensus = xr.open_zarr(out / "results.zarr", group="classes").load()
    tables["consensus.zarr"] = consensus["consensus"].values.tobytes()
    return tables


@pytest.mark.slow
def test_resampling_identical_across_workers_kinds_and_chunkings(tmp_path, files):
    """Bootstrap intervals, permutation p-values (maxT included: a reduction across gene
    chunks) and consensus matrices: the same bytes on 1 or 2 worker processes, on threads,
    and for two gene chunkings."""
    for chunk in (25, 64):
        ingest(files["matrix"], files["samples"], tmp_path / f"c{chunk}.zarr", chunk_genes=chunk)
    job = _resampling_job(files)
    runs = {"1 process": ("c25.zarr", dict(workers=1)),
            "2 processes": ("c25.zarr", dict(workers=2)),
            "threads": ("c25.zarr", dict(workers=1, processes=False)),
            "chunks of 64": ("c64.zarr", dict(workers=2))}
    tables = {label: _run_tables(tmp_path, job, store, label.replace(" ", ""), **cluster)
              for label, (store, cluster) in runs.items()}
    first = tables.pop("1 process")
    assert {"welch.tsv", "paired.tsv", "rho.tsv", "classes.tsv"} <= set(first)
    welch = pd.read_csv(io.BytesIO(first["welch.tsv"]), sep="\t")
    assert welch["ci_low"].notna().sum() > 150 and welch["p_maxT"].notna().sum() > 150
    for label, other in tables.items():
        assert other.keys() == first.keys()
        for name in first:
            assert other[name] == first[name], f"{name} on {label} differs from 1 process"
