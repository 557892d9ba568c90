"""Scaling of a permutation-heavy job from 1 to N worker processes (strong scaling).

    python benchmarks/bench_scaling.py [--workers 1,2] [--permutations 20000]
        [--replicates 5000] [--repeats 2] [--store PATH]

Issue 8, "Benchmark (not a timed test)": the same job on LocalClusters of 1, 2, ... worker
processes of one thread each (``--workers``; on a larger machine e.g. ``--workers
1,2,4,8,16``), each started fresh and warmed up by one untimed run of the job. The job
(``run_job``, as ``cohort run`` runs it) on the bundled ALL cohort (12,625 probes x 128
samples, ingested into a temporary folder in chunks of 1,000 probes, or ``--store``):

- Welch t of BCR/ABL vs NEG (37 vs 42 samples) with ``--permutations`` label permutations
  (p_perm and Westfall-Young maxT), and
- the same test with a ``--replicates``-replicate BCa bootstrap interval of the difference of
  means, and
- a phenotype-permutation GSEA of the Hallmark sets (``--permutations`` / 10 permutations).

Printed for each worker count: the best wall time of ``--repeats`` runs, the speed-up over one
worker measured in the same run (the baseline), the parallel efficiency (speed-up / workers),
and the seconds the workers spent computing tasks (from the scheduler's task stream). Every
run's tables must be identical to the one-worker run's (same seed): checked and printed.
Dask's worker processes run one BLAS thread each (distributed's default
``OMP_NUM_THREADS=1``), so N workers use N cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from distributed import Client

sys.path.insert(0, str(Path(__file__).parent))
from _bench import closing_lines  # noqa: E402

JOB = """cohort: {store}
output: {output}
seed: 11
analyses:
  - name: welch_permutations
    test: welch
    group: mol.biol
    case: BCR/ABL
    control: NEG
    permutations: {permutations}
  - name: welch_bootstrap
    test: student
    group: mol.biol
    case: BCR/ABL
    control: NEG
    bootstrap: {{replicates: {replicates}, method: bca}}
  - name: hallmark_phenotype
    test: gsea_phenotype
    gene_sets: hallmark
    collapse: max_mean
    group: mol.biol
    case: BCR/ABL
    control: NEG
    permutations: {set_permutations}
"""


def run_once(job_file: Path, client: Client) -> tuple[float, float, Path]:
    """Wall seconds of one run of the job, the workers' compute seconds, and the output."""
    from engine.jobs import load_job, run_job

    job = load_job(job_file)
    since = time.time()
    t = time.perf_counter()
    out = run_job(job, client)
    wall = time.perf_counter() - t
    busy = sum(s["stop"] - s["start"] for task in client.get_task_stream(start=since)
               for s in task["startstops"] if s["action"] == "compute")
    return wall, busy, out


def tables(out: Path) -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_parquet(p) for p in sorted(out.glob("*.parquet"))}


def measure(n_workers: int, job_file: Path, repeats: int) -> dict:
    from engine.cluster.deploy import local_cluster

    # as `cohort run --profile` starts it (malloc thresholds, loopback)
    cluster = local_cluster(workers=n_workers, threads_per_worker=1,
                            dashboard_address="127.0.0.1:0")
    with cluster, Client(cluster) as client:
        run_once(job_file, client)  # warm-up: imports and first reads on the workers
        runs = [run_once(job_file, client) for _ in range(repeats)]
    wall, busy, out = min(runs, key=lambda r: r[0])
    return {"workers": n_workers, "wall": wall, "busy": busy, "tables": tables(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2",
                        help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--permutations", type=int, default=20000)
    parser.add_argument("--replicates", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--store", type=Path, help="an ingested ALL store to reuse")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]

    started, load_start = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        work = Path(tmp)
        store = args.store
        if store is None:
            from engine.datasets import ingest_all
            store = ingest_all(work / "all.zarr", chunk_genes=1000)
        job_file = work / "job.yaml"
        job_file.write_text(JOB.format(store=store, output=work / "out",
                                       permutations=args.permutations,
                                       replicates=args.replicates,
                                       set_permutations=args.permutations // 10))
        results = []
        for n in counts:
            r = measure(n, job_file, args.repeats)
            results.append(r)
            print(f"{n} worker(s): {r['wall']:.1f} s", flush=True)

    base = results[0]
    print(f"\nStrong scaling, best of {args.repeats}; baseline: {base['workers']} worker(s), "
          f"measured in this run")
    print(f"{'workers':>8} {'wall s':>8} {'speed-up':>9} {'efficiency':>11} "
          f"{'worker s':>9} {'same tables':>12}")
    for r in results:
        speedup = base["wall"] / r["wall"]
        efficiency = speedup * base["workers"] / r["workers"]
        same = all(r["tables"][k].equals(base["tables"][k]) for k in base["tables"]) \
            and r["tables"].keys() == base["tables"].keys()
        print(f"{r['workers']:>8} {r['wall']:>8.1f} {speedup:>8.2f}x {efficiency:>10.0%} "
              f"{r['busy']:>9.1f} {'yes' if same else 'NO':>12}")
    for line in closing_lines(load_start, started):
        print(line)


if __name__ == "__main__":
    main()
