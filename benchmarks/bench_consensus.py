"""Consensus clustering, 5,000 resamplings: engine vs R ConsensusClusterPlus in the same run.

    python benchmarks/bench_consensus.py [--repeats 1] [--resamples 5000] [--quick]

Simulated log-expression (seeded): 20 genes x 16 and 20 genes x 200 samples in 3 groups, values
on a 2^-10 grid (the same numbers in float32, float64 and the TSV R reads). Each case: pItem
0.8, pFeature 1, Pearson distance, k_max 7, final linkage average, inner linkage ward.D2 and
average. Best of --repeats for each of:

(a) ``consensus_cluster(...)`` computed (the whole Dataset) on Dask's threaded scheduler;
(b) the in-process kernels: ``consensus_counts`` of every resample block, summed, then
    ``consensus_result`` (one thread, no Dask);
(c) ``consensus_cluster`` on a LocalCluster of 2 worker processes (start-up not included);
(R) ``ConsensusClusterPlus(...)`` (seed 1, plot NULL on a null pdf device, no tables written,
    a temporary title). Only that call is timed (``system.time`` in R): R's start-up, loading
    the package and reading the TSV are excluded. CCP always draws its heatmaps and CDF plots,
    so its time includes drawing them (to the null device).

A warm-up run of one resample block precedes (a) and (c). Sanity: (a), (b), (c) are
bit-identical, and the k = 3 consensus matrices of the engine and R (off-diagonal pairs,
samples in input order) agree within Monte-Carlo error: max and mean |diff|, and the largest
|diff| / its standard error (binomial, from the engine's co-sampling counts, both runs). The
machine may be shared: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

import dask
import numpy as np
import scipy

from engine.cluster import dask_client
from engine.resample import consensus as cc
from engine.resample.rng import analysis_key

from bench_welch import best

R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
suppressPackageStartupMessages(library(ConsensusClusterPlus))
cat("R", R.version.string, "| ConsensusClusterPlus", format(packageVersion(
    "ConsensusClusterPlus")), "\n")
x <- as.matrix(read.delim(args[1], header = FALSE))
dimnames(x) <- list(paste0("G", seq_len(nrow(x))), paste0("S", seq_len(ncol(x))))
pdf(NULL)  # CCP always draws: to the null device, no Rplots.pdf
times <- sapply(seq_len(as.integer(args[5])), function(i) system.time(
  res <<- ConsensusClusterPlus(x, maxK = as.integer(args[3]), reps = as.integer(args[4]),
      pItem = 0.8, pFeature = 1, clusterAlg = "hc", innerLinkage = args[2],
      finalLinkage = "average", distance = "pearson", title = tempdir(), plot = NULL,
      writeTable = FALSE, seed = 1, verbose = FALSE))[["elapsed"]])
cat("ELAPSED", min(times), "\n")
write.table(res[[3]]$consensusMatrix, args[6], sep = "\t", row.names = FALSE,
            col.names = FALSE)
"""


def simulate(samples: int, genes: int = 20, groups: int = 3, seed: int = 0) -> np.ndarray:
    """log2-like (genes x samples): gene baselines, a group pattern, noise; 2^-10 grid."""
    rng = np.random.default_rng(seed)
    group = np.arange(samples) % groups
    pattern = rng.normal(0.0, 1.0, (genes, groups))
    x = rng.normal(8.0, 1.0, (genes, 1)) + pattern[:, group] \
        + rng.normal(0.0, 0.75, (genes, samples))
    return np.round(x * 1024) / 1024


def run_r(x, linkage, k_max, resamples, repeats, tmp: Path):
    """(R/CCP versions line, best elapsed seconds of the CCP call, k = 3 consensus matrix)."""
    data, out, script = tmp / "x.tsv", tmp / "c3.tsv", tmp / "ccp.R"
    np.savetxt(data, x, delimiter="\t", fmt="%.17g")
    script.write_text(R_SCRIPT)
    proc = subprocess.run(["Rscript", str(script), str(data), linkage, str(k_max),
                           str(resamples), str(repeats), str(out)], cwd=tmp, check=True,
                          capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    elapsed = float(next(s for s in lines if s.startswith("ELAPSED")).split()[1])
    return lines[0].strip(), elapsed, np.loadtxt(out, delimiter="\t")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--resamples", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="smoke run: 500 resamples")
    args = parser.parse_args()
    resamples = 500 if args.quick else args.resamples
    k_max, seed, key = 7, 1, analysis_key("bench", "consensus")
    cases = [(n, linkage) for n in (16, 200) for linkage in ("ward.D2", "average")]
    data = {n: simulate(n) for n in (16, 200)}
    options = dict(seed=seed, key=key, k_max=k_max, p_item=0.8, p_feature=1.0,
                   distance="pearson", final_linkage="average")
    load_before = os.getloadavg()

    def lazy(n, linkage, reps=resamples):
        ds = cc.consensus_cluster(data[n].astype(np.float32), resamples=reps, linkage=linkage,
                                  **options)
        return ds.compute()

    def kernels(n, linkage):
        x = data[n].astype(np.float32)
        kw = {k: v for k, v in options.items() if k != "final_linkage"}
        parts = [cc.consensus_counts(x, block=b, resamples=resamples, linkage=linkage, **kw)
                 for b in range(-(-resamples // cc.RESAMPLE_BLOCK))]
        M = np.sum([p[0] for p in parts], axis=0, dtype=np.int64)
        I = np.sum([p[1] for p in parts], axis=0, dtype=np.int64)
        return cc.consensus_result(M, I, final_linkage="average"), M, I

    results, rows = {}, {}
    with dask.config.set(scheduler="threads"):
        lazy(16, "average", cc.RESAMPLE_BLOCK)  # warm-up
        for case in cases:
            rows[case] = [best(lambda: results.__setitem__(case, lazy(*case)), args.repeats)]
    counts = {}
    for case in cases:
        rows[case].append(best(lambda: counts.__setitem__(case, kernels(*case)), args.repeats))
    warnings.filterwarnings("ignore", message="Port 8787 is already in use")
    with dask_client(workers=2, quiet=True) as client:
        procs = len(client.scheduler_info(n_workers=-1)["workers"])
        lazy(16, "average", cc.RESAMPLE_BLOCK)  # warm-up: imports on the workers
        distributed = {}
        for case in cases:
            rows[case].append(best(lambda: distributed.__setitem__(case, lazy(*case)),
                                   args.repeats))
    for case in cases:  # bit-identical across the three ways of computing
        ds, (kernel, M, I) = results[case], counts[case]
        assert np.array_equal(ds["pairs_clustered"].values, M)
        assert np.array_equal(ds["pairs_sampled"].values, I)
        assert np.array_equal(ds["consensus"].values, kernel["consensus"])
        assert ds.identical(distributed[case])

    checks, versions = {}, ""
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            n, linkage = case
            versions, r_s, r_c3 = run_r(data[n], linkage, k_max, resamples, args.repeats,
                                        Path(tmp))
            rows[case].append(r_s)
            ours = results[case]["consensus"].sel(k=3).values
            pairs = results[case]["pairs_sampled"].values.astype(np.float64)
            off = ~np.eye(n, dtype=bool)
            diff = np.abs(ours - r_c3)[off]
            p = (ours[off] + r_c3[off]) / 2
            se = np.sqrt(p * (1 - p) * 2 / pairs[off])
            z = np.where(diff > 0, diff / np.where(se > 0, se, np.inf), 0.0)
            checks[case] = (diff.max(), diff.mean(), z.max(), diff.size // 2)
    load_after = os.getloadavg()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, numpy {np.__version__}, scipy "
          f"{scipy.__version__}, dask {dask.__version__}")
    print(versions)
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
          f"(a shared machine: timings are noisy)")
    print(f"data: 20 genes x 16 / 200 samples, 3 groups, {resamples} resamples, k_max {k_max},"
          f" pItem 0.8,\n      pFeature 1, pearson, final linkage average, best of {args.repeats}")
    print("(a) threads: consensus_cluster on Dask's threaded scheduler")
    print(f"(b) kernels: consensus_counts x {-(-resamples // cc.RESAMPLE_BLOCK)} blocks + "
          "consensus_result, one thread")
    print(f"(c) LocalCluster: {procs} worker processes (start-up excluded)")
    print("(R) the ConsensusClusterPlus call only (excludes R start-up, library load, reading)")
    print(f"{'samples':>7} {'inner':>8} | {'(a) thr':>8} {'(b) kern':>8} {'(c) 2proc':>9} "
          f"{'(R) CCP':>8} | {'R/(a)':>6} {'R/(b)':>6} {'R/(c)':>6}")
    for case in cases:
        a, b, c, r = rows[case]
        print(f"{case[0]:>7} {case[1]:>8} | {a:8.2f} {b:8.2f} {c:9.2f} {r:8.2f} | "
              f"{r / a:6.1f} {r / b:6.1f} {r / c:6.1f}")
    print("bit-identical (a) = (b) = (c): yes (counts, consensus; asserted)")
    print("k = 3 consensus, engine vs R (pairs i < j; z = |diff| / binomial s.e. of the "
          "difference):")
    for case in cases:
        mx, mean, z, n_pairs = checks[case]
        print(f"  {case[0]:>3} samples, {case[1]:>8}: max |diff| {mx:.4f}, mean |diff| "
              f"{mean:.4f}, max z {z:.2f} over {n_pairs} pairs")


if __name__ == "__main__":
    main()
