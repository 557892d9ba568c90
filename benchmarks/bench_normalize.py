"""Quantile normalisation and TMM + log CPM over a simulated 20,000 x 10,000 count store:
engine vs a bare read of the store vs R (preprocessCore, edgeR) on the same matrix.

    python benchmarks/bench_normalize.py [--genes 20000] [--samples 10000] [--repeats 1]
                                         [--r-samples N] [--no-r]

The matrix: negative-binomial counts (gene means 2^N(6, 2.5), dispersion 0.05 + 1/mean, size
factors U(0.5, 2)), written to Parquet in row groups and ingested with ``--scale counts``
(float32, the default gene chunks). Each measurement runs in a fresh process, and its peak
memory is that process's maximum resident set (VmHWM, read by the process itself at the end),
imports and the interpreter included:

* (a) a bare read of the store: the Dask sum of ``expression`` (threaded scheduler);
* the engine's ``quantile_normalize`` and ``norm_factors("TMM")`` + ``cpm(log=True)``, each
  computed in full on the threaded scheduler (every output chunk is computed and summed
  away, so nothing is written and the output is never held: the time is the work, as R's);
* (b) R ``normalize.quantiles(m)`` and ``calcNormFactors(DGEList(m), "TMM")`` +
  ``cpm(y, log=TRUE, prior.count=2)``, the calls of ``<shared>/oracle/quantile_normalize.R``
  and ``edger_tmm.R``, timed around the calls only (``ORACLE_TIMING`` lines). The oracle
  scripts themselves read and write TSV, which for 2e8 values takes far longer than the
  computation, so R reads the same counts from a raw int32 file instead (not timed).
  ``--r-samples`` runs R on the first N samples only (a separate store of those samples is
  then timed for the engine too); by default R gets the whole matrix.

Best of ``--repeats``. Agreement is checked in the same run: the TMM factors (relative
1e-9) and the first 100 genes of the quantile-normalised matrix (relative 1e-6, the engine
writes float32). Prints the ratios engine / bare read and engine / R.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP = 1000
ROOT = Path(__file__).resolve().parents[1]


def simulate(directory: Path, genes: int, samples: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """NB counts as Parquet (row groups of ROW_GROUP genes), a sample sheet, and the same
    counts as a raw little-endian int32 file, gene after gene (for R)."""
    rng = np.random.default_rng(seed)
    ids = [f"S{i:05d}" for i in range(samples)]
    size_factor = rng.uniform(0.5, 2.0, samples)
    matrix = directory / "counts.parquet"
    raw = directory / "counts.int32"
    schema = pa.schema([("gene", pa.string())] + [(s, pa.float32()) for s in ids])
    with pq.ParquetWriter(matrix, schema, compression="zstd") as writer, open(raw, "wb") as fh:
        for start in range(0, genes, ROW_GROUP):
            n = min(ROW_GROUP, genes - start)
            mean = 2.0 ** rng.normal(6, 2.5, n)
            dispersion = 0.05 + 1.0 / mean
            mu = mean[:, None] * size_factor[None, :]
            size = 1.0 / dispersion[:, None]
            counts = rng.negative_binomial(size, size / (size + mu)).astype(np.int32)
            counts.astype("<i4").tofile(fh)
            cols = [pa.array([f"G{g:06d}" for g in range(start, start + n)])]
            values = counts.astype(np.float32)
            writer.write_table(pa.table(cols + [pa.array(values[:, j]) for j in range(samples)],
                                        schema=schema))
    sheet = directory / "samples.tsv"
    pd.DataFrame({"sample_id": ids}).to_csv(sheet, sep="\t", index=False)
    return matrix, sheet, raw


# -- engine measurements, each in its own process ----------------------------------------------

def engine_job(what: str, store: str, out: str, samples: int | None) -> dict:
    """Run inside the child process: one measurement; returns seconds (and check values)."""
    import dask

    from engine.preprocess import counts as cnt
    from engine.preprocess import transforms as tr
    from engine.store import open_cohort

    x = open_cohort(store)["expression"]
    if samples is not None:
        x = x.isel(sample=slice(0, samples))
    dask.config.set(scheduler="threads")
    result: dict = {}
    t = time.perf_counter()
    if what == "read":
        x.data.sum(dtype=np.float64).compute()
    elif what == "quantile":
        q = tr.quantile_normalize(x)
        total, head = dask.compute(q.data.sum(dtype=np.float64), q.data[:100])
        result["head"] = str(Path(out) / "engine_quantile_head.npy")
        np.save(result["head"], head)
    elif what == "tmm_log_cpm":
        factors = cnt.norm_factors(x, "TMM")
        logcpm = cnt.cpm(x, norm_factors=factors, log=True)
        total, f = dask.compute(logcpm.data.sum(dtype=np.float64), factors.data)
        result["factors"] = [float(v) for v in f]
    result["seconds"] = time.perf_counter() - t
    result["peak_bytes"] = peak_rss()
    return result


def peak_rss() -> int:
    """This process's peak resident set (VmHWM). Not ``wait4``'s ru_maxrss: Linux carries the
    forking parent's peak over into the child's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return -1


def in_child(what: str, store: Path, out: Path, samples: int | None) -> tuple[dict, int]:
    """(result, peak RSS bytes) of ``engine_job`` in a fresh Python process."""
    args = [sys.executable, __file__, "--child", what, str(store), str(out),
            str(samples if samples is not None else -1)]
    done = subprocess.run(args, stdout=subprocess.PIPE, cwd=ROOT, check=True)
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result, result["peak_bytes"]


R_SCRIPT = r"""
suppressPackageStartupMessages({library(edgeR); library(preprocessCore)})
a <- commandArgs(TRUE); G <- as.integer(a[2]); N <- as.integer(a[3]); n <- as.integer(a[4])
what <- a[5]; out <- a[6]
m <- t(matrix(readBin(a[1], "integer", size = 4, n = G * N, endian = "little"), nrow = N))
if (n < N) m <- m[, seq_len(n), drop = FALSE]
timed <- function(step, expr) {
  t <- system.time(val <- force(expr))[["elapsed"]]
  message(sprintf("ORACLE_TIMING\t%s\t%.3f", step, t)); val
}
if (what == "quantile") {
  d <- m; storage.mode(d) <- "double"; rm(m); invisible(gc())
  q <- timed("quantile_normalize", normalize.quantiles(d, copy = TRUE))
  writeBin(as.vector(t(q[seq_len(min(100, G)), , drop = FALSE])), file.path(out, "r_quantile_head.f64"))
} else {
  r <- timed("tmm_log_cpm", {
    y <- calcNormFactors(DGEList(counts = m), method = "TMM")
    list(y = y, logcpm = cpm(y, log = TRUE, prior.count = 2))
  })
  writeLines(sprintf("%.17g", r$y$samples$norm.factors), file.path(out, "r_tmm_factors.txt"))
}
hwm <- grep("^VmHWM:", readLines("/proc/self/status"), value = TRUE)
message(sprintf("PEAK_KB\t%s", gsub("[^0-9]", "", hwm)))
"""


def r_job(what: str, raw: Path, genes: int, samples: int, n: int, out: Path):
    """(seconds from ORACLE_TIMING, peak RSS bytes of the R process)."""
    script = out / "bench_normalize.R"
    script.write_text(R_SCRIPT)
    done = subprocess.run(["Rscript", str(script), str(raw), str(genes), str(samples), str(n),
                           what, str(out)], stderr=subprocess.PIPE)
    stderr = done.stderr.decode()
    if done.returncode:
        raise RuntimeError(f"R {what} failed:\n{stderr}")
    lines = [line.split("\t") for line in stderr.splitlines()]
    seconds = next(float(p[2]) for p in lines if p[0] == "ORACLE_TIMING")
    peak = next(int(p[1]) * 1024 for p in lines if p[0] == "PEAK_KB")
    return seconds, peak


def best(runs):
    return min(runs, key=lambda r: r[0]["seconds"] if isinstance(r[0], dict) else r[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--r-samples", type=int, default=None,
                        help="run R (and a matching engine run) on the first N samples only")
    parser.add_argument("--no-r", action="store_true", help="skip R even when Rscript exists")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, store, out, n = args.child
        print(json.dumps(engine_job(what, store, out, None if int(n) < 0 else int(n))))
        return

    from engine.store import ingest

    with_r = shutil.which("Rscript") is not None and not args.no_r
    gb = args.genes * args.samples * 4 / 1e9
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        matrix, sheet, raw = simulate(tmp, args.genes, args.samples)
        simulate_s = time.perf_counter() - t
        t = time.perf_counter()
        store = ingest(matrix, sheet, tmp / "sim.zarr", scale="counts")
        ingest_s = time.perf_counter() - t
        matrix.unlink()

        def engine(what, n=None):
            runs = [in_child(what, store, tmp, n) for _ in range(args.repeats)]
            return best(runs)

        rows = {what: engine(what) for what in ("read", "quantile", "tmm_log_cpm")}
        r_rows, r_n = {}, args.r_samples or args.samples
        if with_r:
            for what in ("quantile", "tmm_log_cpm"):
                runs = [r_job(what, raw, args.genes, args.samples, r_n, tmp)
                        for _ in range(args.repeats)]
                r_rows[what] = min(runs)
            engine_r = rows if r_n == args.samples else \
                {what: engine(what, r_n) for what in ("quantile", "tmm_log_cpm")}
            # agreement, on exactly the matrix R saw
            r_factors = np.loadtxt(tmp / "r_tmm_factors.txt")
            ours = np.array(engine_r["tmm_log_cpm"][0]["factors"])
            factor_diff = float(np.max(np.abs(ours / r_factors - 1)))
            assert factor_diff < 1e-9, factor_diff
            r_head = np.fromfile(tmp / "r_quantile_head.f64").reshape(-1, r_n)
            head = np.load(engine_r["quantile"][0]["head"]).astype(np.float64)
            quantile_diff = float(np.max(np.abs(head - r_head) / np.abs(r_head).clip(1e-300)))
            assert quantile_diff < 1e-6, quantile_diff

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; Dask threaded scheduler")
    print(f"matrix: {args.genes} genes x {args.samples} samples of counts, float32 store "
          f"({gb:.2f} GB); simulate {simulate_s:.1f} s, ingest {ingest_s:.1f} s; "
          f"best of {args.repeats}; peak = max RSS of the measuring process")
    read_s, read_rss = rows["read"][0]["seconds"], rows["read"][1]
    print(f"(a) bare read of the store (Dask sum):   {read_s:8.2f} s  peak {read_rss / 1e9:5.2f} GB")
    labels = {"quantile": "quantile_normalize", "tmm_log_cpm": "TMM factors + log CPM"}
    for what, label in labels.items():
        (res, rss) = rows[what]
        print(f"engine {label:24s}        {res['seconds']:8.2f} s  peak {rss / 1e9:5.2f} GB"
              f"  ratio to (a) {res['seconds'] / read_s:6.1f}")
    if with_r:
        print(f"(b) R on {args.genes} x {r_n} (computation only, ORACLE_TIMING):")
        for what, label in labels.items():
            r_s, r_rss = r_rows[what]
            ours_s = engine_r[what][0]["seconds"]
            print(f"    R {label:24s}     {r_s:8.2f} s  peak {r_rss / 1e9:5.2f} GB"
                  f"  engine/R = {ours_s / r_s:5.2f}"
                  + ("" if r_n == args.samples else f" (engine {ours_s:.2f} s on the same samples)"))
        print(f"agreement with R: TMM factors max rel diff {factor_diff:.1e}; quantile-normalised "
              f"first 100 genes max rel diff {quantile_diff:.1e} (float32 output)")
    else:
        print("(b) R: skipped (no Rscript or --no-r)")


if __name__ == "__main__":
    main()
