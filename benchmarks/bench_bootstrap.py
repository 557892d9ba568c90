"""10,000 bootstrap replicates of the per-gene mean difference: engine kernel vs bare products.

    python benchmarks/bench_bootstrap.py [--genes 20000] [--samples 200] [--replicates 10000]
                                         [--repeats 1] [--loop-replicates 100]

Random float32 data (genes x samples, the store's dtype), the first half of the samples case,
the rest control; stratified multinomial replicates (scipy's two-sample bootstrap). Timed in the
same run, best of --repeats, each with the BLAS's default threads and with one BLAS thread
(threadpoolctl):

(a) the engine kernel ``mean_difference_bootstrap`` (percentile and BCa) on the whole matrix in
    one call (one task of the Dask graph does exactly this for its gene chunk); it includes
    drawing the replicates, the exact grid, the jackknife and the intervals;
(b) the bare matrix products that carry the same arithmetic: float64 X_case @ W_case and
    X_control @ W_control with the same weight matrices, nothing else, in the engine's row tiles
    with a reused output (the faster of that and one product of the whole matrix is the
    baseline); target engine / bare <= 2;
(c) a plain numpy loop over replicates (fancy indexing, means per group): a subset of
    --loop-replicates replicates timed and extrapolated to all of them, plus np.quantile of
    the replicate matrix timed on a tenth of the genes and extrapolated; the speed-up is (c) / (a).

Peak memory: tracemalloc's peak of the numpy allocations of one engine call (a) and of the
loop's replicate matrix (c), and the process's maximum resident set size at the end. The
machine may be shared: the load average is printed before and after; rerun when it is high.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from engine.resample import bootstrap as bs
from engine.resample.rng import analysis_key

from bench_welch import best, peak_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--replicates", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--loop-replicates", type=int, default=100)
    args = parser.parse_args()
    genes, samples, replicates = args.genes, args.samples, args.replicates

    x = np.random.default_rng(0).normal(8.0, 1.0, (genes, samples)).astype(np.float32)
    case, control = np.arange(samples // 2), np.arange(samples // 2, samples)
    seed, key = 1, analysis_key("bench", "bootstrap")
    load_before = os.getloadavg()

    def engine(method):
        return bs.mean_difference_bootstrap(x, case, control, replicates=replicates,
                                            method=method, seed=seed, key=key)

    design = bs._mean_design(case, control, None, paired=False, method="percentile",
                             level=0.95, replicates=replicates, kind="multinomial",
                             fold_change_base=None)
    w_case, w_control = bs._weights(design, replicates, seed, key, "multinomial")
    x_case = x[:, case].astype(np.float64)
    x_control = x[:, control].astype(np.float64)
    tile = bs._tile_rows(bs.DEFAULT_MEMORY_BUDGET, replicates, samples, 2, False, False)
    out_case, out_control = np.empty((tile, replicates)), np.empty((tile, replicates))

    def bare_tiled():
        for start in range(0, genes, tile):
            stop = min(start + tile, genes)
            np.matmul(x_case[start:stop], w_case, out=out_case[:stop - start])
            np.matmul(x_control[start:stop], w_control, out=out_control[:stop - start])

    def bare_whole():
        return x_case @ w_case, x_control @ w_control

    rows = []
    engine("percentile")  # warm-up (imports, BLAS threads)
    for threads in (None, 1):
        label = "default BLAS threads" if threads is None else "1 BLAS thread"
        with threadpool_limits(threads):
            bare = min(best(bare_tiled, args.repeats), best(bare_whole, args.repeats))
            for method in ("percentile", "bca"):
                seconds = best(lambda: engine(method), args.repeats)
                rows.append((label, method, seconds, bare))

    # (c) plain numpy loop over replicates, on the engine's replicates
    draws = np.concatenate([bs.replicate_indices(design.units, replicates, seed=seed, key=key,
                                                 block=b)
                            for b in bs.replicate_blocks(replicates)])
    obs = np.hstack([x_case, x_control])
    n_case = case.size
    subset = min(args.loop_replicates, replicates)

    def loop(count):
        out = np.empty((genes, count))
        for b in range(count):
            idx = draws[b]
            out[:, b] = obs[:, idx[:n_case]].mean(axis=1) - obs[:, idx[n_case:]].mean(axis=1)
        return out

    loop_s = best(lambda: loop(subset), args.repeats) * replicates / subset
    few = max(1, genes // 10)
    dist = np.random.default_rng(1).normal(size=(few, replicates))
    quantile_s = best(lambda: np.quantile(dist, [0.025, 0.975], axis=1), args.repeats) \
        * genes / few
    loop_total = loop_s + quantile_s

    engine_peak = peak_bytes(lambda: engine("bca"))
    loop_matrix = genes * replicates * 8
    load_after = os.getloadavg()

    blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
                     for i in threadpool_info() if i["user_api"] == "blas")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, numpy {np.__version__}, BLAS {blas}")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
          f"(a shared machine: timings are noisy)")
    print(f"data: {genes} genes x {samples} samples float32, {case.size} vs {control.size}, "
          f"{replicates} replicates, row tiles of {tile} genes, best of {args.repeats}")
    for label, method, seconds, bare in rows:
        print(f"(a) engine {method:10s} [{label}]: {seconds:8.2f} s   (b) bare products: "
              f"{bare:6.2f} s   ratio (a)/(b) = {seconds / bare:.2f}  (target <= 2)")
    default_bca = next(s for label, m, s, _ in rows if m == "bca" and label.startswith("def"))
    print(f"(c) numpy loop over replicates: {loop_total:8.1f} s extrapolated "
          f"({subset} of {replicates} replicates timed: {loop_s:.1f} s; np.quantile timed on "
          f"{few} genes: {quantile_s:.1f} s)  speed-up (c)/(a, bca, default threads) = "
          f"{loop_total / default_bca:.0f}x")
    print(f"peak memory: engine call (bca) {engine_peak / 2**20:.0f} MiB of numpy allocations "
          f"(tracemalloc); the loop's replicate matrix alone {loop_matrix / 2**20:.0f} MiB; "
          f"process max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB "
          f"(includes the inputs and the whole-matrix bare products)")


if __name__ == "__main__":
    main()
