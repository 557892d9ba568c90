"""10,000 label permutations of Welch t on 20,000 genes x 200 samples: engine vs parametric
Welch, the bare products and a numpy loop over permutations.

    python benchmarks/bench_permutation.py [--genes 20000] [--samples 200]
        [--permutations 10000] [--repeats 1] [--loop-permutations 20] [--chunk-genes 2000]

Random float32 data (the store's dtype), the first half of the samples case, the rest control
(100 vs 100). Timed in the same run, best of --repeats:

(a) the engine's permutation test (``engine.resample.permutation``), p_perm, p_perm_floor and
    Westfall-Young p_maxT of every gene: in memory (``permutation_test``, one call on the whole
    matrix: what one Dask task does for its gene chunk) with the BLAS's default threads and
    with one BLAS thread (threadpoolctl); and lazily (``permutation_columns`` on a Dask array
    of --chunk-genes genes per chunk, computed on Dask's threaded scheduler, as a job runs it).
    It includes drawing the permutations, the exact grid, the statistics, the counts and maxT;
(b) the bare float64 products that carry its arithmetic: the four grid powers of every gene
    (values and the three halves of their squares) times every label column, in batches of
    2,048 permutations and --chunk-genes genes, nothing else, with the same BLAS threads;
(c) the engine's parametric Welch test (``engine.stats.twogroup.welch_t``) on the same
    in-memory matrix, once;
(d) a plain numpy loop over permutations: for each permutation, the same Welch kernel on the
    permuted columns (fancy indexing) and the comparison with the observed |t|. Only
    --loop-permutations permutations are timed, and the time is extrapolated linearly to
    --permutations (said so in the output). The loop's p-values on those permutations are
    checked against the engine's run with the same number of permutations (the same
    permutations: ``permutation.labellings``).

Peak memory: tracemalloc's peak of the numpy allocations during one call of (a) in memory and of
one iteration of (d) (run separately from the timings: tracing slows Python), and the
process's maximum resident set size (``resource.getrusage``) after the engine's runs (a), before
(b), which includes the interpreter, its imports and the data. The machine may be shared: the
load average is printed before and after; rerun when it is high.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import dask
import dask.array as da
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from engine.resample import permutation as pm
from engine.resample.exact import exact_sums, grid_powers, half_bits, on_grid
from engine.resample.rng import analysis_key
from engine.stats.twogroup import welch_t

from bench_welch import best, peak_bytes

BATCH = 2048


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--permutations", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--loop-permutations", type=int, default=20)
    parser.add_argument("--chunk-genes", type=int, default=2000)
    args = parser.parse_args()
    genes, samples, permutations = args.genes, args.samples, args.permutations
    started = time.perf_counter()

    x = np.random.default_rng(0).normal(8.0, 1.0, (genes, samples)).astype(np.float32)
    x[: genes // 10, : samples // 2] += 0.5  # 10% of genes differ
    case, control = np.arange(samples // 2), np.arange(samples // 2, samples)
    seed, name = 1, "bench"
    key = analysis_key(name, "permutation")
    load_before = os.getloadavg()

    def engine(count=permutations):
        return pm.permutation_test(x, test="welch", case=case, control=control,
                                   permutations=count, seed=seed, key=key)

    def engine_lazy():
        cols = pm.permutation_columns(da.from_array(x, chunks=(args.chunk_genes, -1)),
                                      test="welch", case=case, control=control,
                                      permutations=permutations, seed=seed, name=name)
        return dask.compute(cols, scheduler="threads")[0]

    engine(256)  # warm-up (imports, BLAS threads)
    timings = {}
    for threads in (None, 1):
        with threadpool_limits(threads):
            timings[threads] = best(engine, args.repeats)
    lazy_s = best(engine_lazy, args.repeats)
    result = engine()
    lazy = engine_lazy()
    for k in pm.COLUMNS:
        assert np.array_equal(lazy[k], result[k], equal_nan=True), k
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # (b) the bare products on the same grid and label columns
    values = np.concatenate([x[:, case], x[:, control]], axis=1).astype(np.float64)
    powers = grid_powers(on_grid(values, half_bits(samples)))
    batches = [(s, min(s + BATCH, permutations)) for s in range(0, permutations, BATCH)]
    label_batches = [pm.labellings("welch", case.size, control.size, permutations, s, e,
                                   seed=seed, key=key) for s, e in batches]

    def bare():
        for labels in label_batches:
            for g in range(0, genes, args.chunk_genes):
                exact_sums(powers[:, g:g + args.chunk_genes], labels)

    rows = []
    for threads in (None, 1):
        label = "default BLAS threads" if threads is None else "1 BLAS thread"
        with threadpool_limits(threads):
            rows.append((f"in memory, {label}", timings[threads], best(bare, args.repeats)))
    welch_s = best(lambda: welch_t(x[:, case], x[:, control]), max(3, args.repeats))

    # (d) the plain loop, on the engine's permutations
    subset = min(args.loop_permutations, permutations)
    loop_labels = pm.labellings("welch", case.size, control.size, permutations, 0, subset,
                                seed=seed, key=key).astype(bool)
    both = np.concatenate([x[:, case], x[:, control]], axis=1)
    observed = np.abs(welch_t(x[:, case], x[:, control])[:, 1])

    def loop(count):
        extreme = np.zeros(genes, np.int64)
        for j in range(count):
            chosen = loop_labels[:, j]
            t = np.abs(welch_t(both[:, chosen], both[:, ~chosen])[:, 1])
            extreme += t >= observed * (1 - 100 * np.finfo(np.float64).eps)
        return extreme

    loop_subset_s = best(lambda: loop(subset), args.repeats)
    loop_s = loop_subset_s * permutations / subset
    loop_p = (loop(subset) + 1) / (subset + 1)
    check = engine(subset)["p_perm"]
    agree = np.nanmax(np.abs(check - loop_p))

    engine_peak = peak_bytes(engine)
    loop_peak = peak_bytes(lambda: loop(1))
    load_after = os.getloadavg()

    blas = ", ".join(f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads)"
                     for i in threadpool_info() if i["user_api"] == "blas")
    info = pm.permutation_info("welch", case.size, control.size, permutations)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, numpy {np.__version__}, BLAS {blas}")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
          f"(a shared machine: timings are noisy)")
    print(f"data: {genes} genes x {samples} samples float32, {case.size} vs {control.size}, "
          f"{permutations} label permutations (exact: {info['exact']}, floor "
          f"{info['p_perm_floor']:.3g}), best of {args.repeats}")
    for label, seconds, bare_s in rows:
        print(f"(a) engine permutation test [{label}]: {seconds:8.2f} s   (b) bare products: "
              f"{bare_s:6.2f} s   ratio (a)/(b) = {seconds / bare_s:.2f}")
    print(f"(a) engine permutation test [lazy, {args.chunk_genes} genes per chunk, Dask "
          f"threads]: {lazy_s:8.2f} s (same bits as in memory)")
    default_s = rows[0][1]
    print(f"(c) engine parametric Welch (one call):      {welch_s:8.3f} s   ratio (a)/(c) = "
          f"{default_s / welch_s:.0f} (= {default_s / welch_s / permutations:.2f} Welch calls "
          f"per permutation)")
    print(f"(d) numpy loop over permutations: {loop_s:8.1f} s EXTRAPOLATED from {subset} of "
          f"{permutations} permutations ({loop_subset_s:.2f} s)   speed-up (d)/(a) = "
          f"{loop_s / default_s:.0f}x;  loop vs engine p_perm on those {subset}: max |diff| "
          f"{agree:.1e}")
    print(f"peak memory (tracemalloc, numpy allocations): engine call (a) "
          f"{engine_peak / 2**20:.0f} MiB (the data itself: {x.nbytes / 2**20:.0f} MiB float32; "
          f"genes x permutations float64 would be {genes * permutations * 8 / 2**30:.1f} GiB); "
          f"one loop iteration (d) {loop_peak / 2**20:.0f} MiB")
    print(f"peak resident set size of this process after (a) (getrusage): {rss:.0f} MiB")
    print(f"command: python benchmarks/bench_permutation.py --genes {genes} --samples {samples} "
          f"--permutations {permutations} --repeats {args.repeats} --loop-permutations "
          f"{subset} --chunk-genes {args.chunk_genes};  whole run "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
