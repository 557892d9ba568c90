"""Welch t over a simulated 20,000 x 2,000 float32 store: engine vs (bare read + scipy).

    python benchmarks/bench_welch.py [--genes 20000] [--samples 2000] [--repeats 3]

Baselines measured in the same run: (a) a bare read of the store's expression array into memory
(zarr, no Dask) and (b) scipy.stats.ttest_ind(equal_var=False) on that in-memory float32 array.
The engine is timed from the opened store to computed p-values and BH-adjusted p-values (the
work of a job, without writing tables), on the default LocalCluster (one worker process per
core) and on threads; cluster start-up is excluded and reported separately. Best of --repeats.
Prints the ratio engine / (read + scipy); the target in issue 2 is <= 1.5.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.stats
import zarr


def simulate(directory: Path, genes: int, samples: int, seed: int = 0) -> tuple[Path, Path]:
    """A log2-like matrix (Parquet, written in row groups) and a two-group sample sheet."""
    rng = np.random.default_rng(seed)
    ids = [f"S{i:05d}" for i in range(samples)]
    matrix = directory / "matrix.parquet"
    schema = pa.schema([("gene", pa.string())] + [(s, pa.float32()) for s in ids])
    with pq.ParquetWriter(matrix, schema, compression="zstd") as writer:
        for start in range(0, genes, 2000):
            n = min(2000, genes - start)
            x = rng.normal(8.0, 1.0, (n, samples)).astype(np.float32)
            x[: n // 10, : samples // 2] += 0.5  # 10% of genes differ
            cols = [pa.array([f"G{g:06d}" for g in range(start, start + n)])]
            writer.write_table(pa.table(cols + [pa.array(x[:, j]) for j in range(samples)],
                                        schema=schema))
    sheet = directory / "samples.tsv"
    pd.DataFrame({"sample_id": ids, "group": np.where(np.arange(samples) % 2, "case", "control")}
                 ).to_csv(sheet, sep="\t", index=False)
    return matrix, sheet


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def peak_bytes(fn) -> int:
    """Peak bytes of the numpy/Python allocations of one call of ``fn`` (tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def time_on_clusters(fn, repeats: int) -> list[tuple[str, float, float]]:
    """Best-of-``repeats`` seconds of ``fn`` on the default LocalCluster (processes) and on
    one threaded worker: rows of (cluster label, seconds, start-up seconds, not included)."""
    from engine.cluster import dask_client

    rows = []
    for label, kwargs in (("LocalCluster, processes", {}),
                          ("LocalCluster, threads", {"processes": False})):
        t = time.perf_counter()
        with dask_client(quiet=True, **kwargs) as client:
            startup = time.perf_counter() - t
            workers = len(client.scheduler_info(n_workers=-1)["workers"])
            fn()  # warm-up: imports and first reads on the workers
            seconds = best(fn, repeats)
        rows.append((f"{label}, {workers} worker(s)", seconds, startup))
    return rows


def main() -> None:
    from engine.stats.per_gene import two_group_test
    from engine.store import ingest, open_cohort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        matrix, sheet = simulate(tmp, args.genes, args.samples)
        t = time.perf_counter()
        store = ingest(matrix, sheet, tmp / "sim.zarr")
        ingest_s = time.perf_counter() - t
        cohort = open_cohort(store)
        case = np.flatnonzero(cohort["group"].values == "case")
        control = np.flatnonzero(cohort["group"].values == "control")

        read_s = best(lambda: zarr.open_array(store / "expression", mode="r")[:], args.repeats)
        x = zarr.open_array(store / "expression", mode="r")[:]
        scipy_s = best(lambda: scipy.stats.ttest_ind(x[:, case], x[:, control], axis=1,
                                                     equal_var=False), args.repeats)
        baseline = read_s + scipy_s

        def engine():
            result = two_group_test(cohort, test="welch", group="group", case="case",
                                    control="control")
            return result[["p_value", "p_adj"]].compute()

        ours = engine()
        ref = scipy.stats.ttest_ind(x[:, case].astype(np.float64), x[:, control].astype(np.float64),
                                    axis=1, equal_var=False).pvalue
        assert np.allclose(ours["p_value"].values, ref, rtol=1e-9, atol=0)

        rows = [(f"engine Welch + BH ({label})", seconds, startup)
                for label, seconds, startup in time_on_clusters(engine, args.repeats)]

    gb = args.genes * args.samples * 4 / 1e9
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"matrix: {args.genes} genes x {args.samples} samples float32 ({gb:.2f} GB), "
          f"{len(case)} vs {len(control)} samples, best of {args.repeats}")
    print(f"ingest from Parquet:                  {ingest_s:8.3f} s")
    print(f"(a) bare read of the store (zarr):    {read_s:8.3f} s")
    print(f"(b) scipy ttest_ind in memory:        {scipy_s:8.3f} s")
    print(f"    baseline (a) + (b):               {baseline:8.3f} s")
    for label, seconds, startup in rows:
        print(f"{label}: {seconds:.3f} s  ratio engine/(read+scipy) = {seconds / baseline:.2f}"
              f"  (cluster start-up {startup:.1f} s, not included)")


if __name__ == "__main__":
    main()
