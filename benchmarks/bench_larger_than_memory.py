"""A cohort larger than the workers' memory: Welch t and ssGSEA on 20,000 x 50,000 (4 GB).

    python benchmarks/bench_larger_than_memory.py [--genes 20000] [--samples 50000]
        [--workers 2] [--memory-limit 1GiB] [--store PATH] [--keep]

Issue 8, "Benchmark (not a timed test)": a simulated cohort (``engine.store.simulate``,
log-normal with correlated gene blocks, 5% of genes planted with log2 fold change 0.5 between
two halves of the samples, 50 gene sets of 50 genes) of --genes x --samples float32 values
(default 20,000 x 50,000 = 4.0 GB; stored in chunks of --chunk-genes genes), written once
into a temporary folder (or reused with --store; --keep leaves it), then, on a LocalCluster of
--workers worker processes of one thread and --memory-limit each (default 2 x 1 GiB: half the
cohort's size in all), each timed once:

1. baseline: a bare read of the store on the same cluster (every chunk read and summed: what
   any analysis must at least do);
2. ``cohort run`` of a Welch t-test (case vs control);
3. ``cohort run`` of ssGSEA of the 50 sets (the one rechunk to whole columns: peer-to-peer,
   on disk, for a cohort this size).

Printed: wall time, the ratio to the bare read, and the peak resident memory of each worker
process (the job's own record, ``provenance.json`` "memory", and a sampler reading the worker
processes' RSS every 0.1 s from outside) against its limit. The simulation's own time is
printed but is not part of any ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import dask
from dask.utils import format_bytes, parse_bytes

sys.path.insert(0, str(Path(__file__).parent))
from _bench import closing_lines  # noqa: E402


def simulate(path: Path, genes: int, samples: int, chunk_genes: int) -> float:
    from engine.store.simulate import simulate_cohort
    from engine.store.simulate_spec import parse_spec

    spec = parse_spec({"genes": genes, "samples": samples, "seed": 8,
                       "groups": [{"name": "group", "levels": {"control": samples // 2,
                                                                "case": samples - samples // 2}}],
                       "effects": [{"fraction": 0.05, "log2fc": 0.5}],
                       "gene_sets": {"planted_sets": 25, "null_sets": 25, "size": 50}})
    t = time.perf_counter()
    simulate_cohort(spec, path, chunk_genes=chunk_genes)
    return time.perf_counter() - t


def bare_read(client, store: Path) -> float:
    from engine.jobs.monitor import blocks_for
    from engine.store import open_cohort

    with blocks_for(client):
        x = open_cohort(store)["expression"].data
    t = time.perf_counter()
    client.compute(x.sum(axis=1)).result()
    return time.perf_counter() - t


def run(client, store: Path, work: Path, name: str, analysis: str) -> dict:
    from engine.jobs import load_job, run_job
    from engine.jobs.monitor import RssSampler

    job = work / f"{name}.yaml"
    job.write_text(f"cohort: {store}\noutput: {work / name}\nseed: 1\nanalyses:\n  - {analysis}\n")
    pids = list(client.run(os.getpid).values())
    sampler = RssSampler(pids, interval=0.1)
    sampler.start()
    t = time.perf_counter()
    try:
        out = run_job(load_job(job), client)
    except Exception as e:  # reported in the table: a failure is a result too
        return {"wall": time.perf_counter() - t, "error": f"{type(e).__name__}: {e}"[:200],
                "sampled": sampler.peak}
    finally:
        sampler.done.set()
        sampler.join()
    wall = time.perf_counter() - t
    memory = json.loads((out / "provenance.json").read_text())["memory"]
    restarted = sorted(client.run(os.getpid).values()) != sorted(pids)
    return {"wall": wall, "memory": memory, "sampled": sampler.peak, "restarted": restarted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=50000)
    parser.add_argument("--chunk-genes", type=int, default=100,
                        help="genes per stored chunk (default 100: 20 MB at 50,000 samples)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="1GiB", help="per worker (default 1GiB)")
    parser.add_argument("--store", type=Path, help="a store made by an earlier run (--keep)")
    parser.add_argument("--keep", action="store_true", help="keep the simulated store")
    args = parser.parse_args()
    limit = parse_bytes(args.memory_limit)

    from engine.cluster import dask_client

    started, load_start = time.perf_counter(), os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench_ltm_"))
    try:
        store, simulate_s = args.store, None
        if store is None:
            store = work / "big.zarr"
            simulate_s = simulate(store, args.genes, args.samples, args.chunk_genes)
            print(f"simulated {store} in {simulate_s:.0f} s", flush=True)
        from engine.store import open_cohort
        cohort = open_cohort(store)
        size = cohort["expression"].nbytes
        profile = work / "bench.yaml"
        profile.write_text(f"kind: local\nworkers: {args.workers}\nthreads_per_worker: 1\n"
                           f"memory_limit: {limit}\n")
        with dask_client(profile=profile, quiet=True) as client:
            bare = bare_read(client, store)
            print(f"bare read: {bare:.1f} s", flush=True)
            results = {}
            for name, analysis in (
                    ("Welch t", "{name: welch, test: welch, group: group, case: case, "
                                "control: control}"),
                    ("ssGSEA (50 sets)", f"{{name: ssgsea, test: ssgsea, gene_sets: "
                                         f"{store.with_suffix('.gmt')}}}")):
                results[name] = r = run(client, store, work, name.split()[0].lower(), analysis)
                print(f"{name}: {r['wall']:.1f} s {r.get('error', '')}", flush=True)
        print(f"\nCohort {cohort.sizes['gene']:,} genes x {cohort.sizes['sample']:,} samples, "
              f"{format_bytes(size)} float32 ({size / (args.workers * limit):.1f}x the workers' "
              f"total limit); {args.workers} worker processes x 1 thread x "
              f"{format_bytes(limit)}; block budget {format_bytes(limit // 16)}")
        print(f"{'step':<18} {'wall s':>7} {'/ bare read':>11} {'peak RSS (job)':>15} "
              f"{'peak RSS (sampled)':>19} {'of limit':>9} {'restarted':>10}")
        print(f"{'bare read':<18} {bare:>7.1f} {1:>10.1f}x")
        for name, r in results.items():
            if "error" in r:
                print(f"{name:<18} {r['wall']:>7.1f} failed: {r['error']} (sampled peak RSS "
                      f"{format_bytes(max(r['sampled'].values()))})")
                continue
            job_peak = r["memory"]["max_worker_peak_rss_bytes"]
            sampled = max(r["sampled"].values())
            print(f"{name:<18} {r['wall']:>7.1f} {r['wall'] / bare:>10.1f}x "
                  f"{format_bytes(job_peak):>15} {format_bytes(sampled):>19} "
                  f"{max(job_peak, sampled) / limit:>8.0%} {'yes' if r['restarted'] else 'no':>10}")
        if simulate_s is not None:
            print(f"(simulating the cohort took {simulate_s:.0f} s, not in any ratio)")
    finally:
        if args.keep and args.store is None:
            print(f"kept {work / 'big.zarr'}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for line in closing_lines(load_start, started):
        print(line)


if __name__ == "__main__":
    with dask.config.set({"distributed.worker.daemon": True}):
        main()
