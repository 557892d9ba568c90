"""Count differential expression: engine DESeq2 vs PyDESeq2 and R DESeq2, in one run.

    python benchmarks/bench_deseq2.py [--genes 20000] [--samples 200] [--repeats 1]
        [--skip-r] [--skip-pydeseq2]

Issue 6, "Benchmark (not a timed test)". Data (numpy ``default_rng(SEED)``), the model of
``<shared>/oracle/make_nb_counts.R``: base means 2^N(6, 2.5), dispersions (0.04 + 2 / mean)
exp(N(0, 0.5^2)), size factors exp(U(log 0.5, log 2)), 10% of genes with log2 fold changes
+-U(0.5, 2.5) in the second half of the samples; negative-binomial counts. They are written
as TSV (for R and PyDESeq2) and ingested into a count store (``--scale counts``, 2,000 genes
per chunk).

Sides, each in its own subprocess (so its peak memory is its own):

* engine: ``deseq2(cohort, group="group", case="B", control="A")`` from the opened store to
  every computed column, on the engine's LocalCluster of 2 worker processes (1 thread each;
  it raises glibc's ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` in the workers,
  ``engine.cluster.MALLOC``: distributed's nanny sets the trim threshold to 64 KiB, which
  also pins the mmap threshold at 128 KiB, so every temporary array of the kernels above that
  is mapped and faulted in afresh: 2.8x slower), and on Dask's threaded scheduler, after one untimed
  warm-up on 500 genes; best of ``--repeats``. Cluster start-up not included.
* PyDESeq2 (when importable): ``DeseqDataSet(design="~group", refit_cooks=True)`` with
  ``DefaultInference(n_cpus=2)``, ``deseq2()``, ``DeseqStats(contrast=["group", "B",
  "A"]).summary()``, timed from the in-memory counts (reading the TSV is not timed).
* R DESeq2 1.38 (when ``Rscript`` with DESeq2 is installed): ``<shared>/oracle/deseq2.R``, its
  own ``ORACLE_TIMING`` of ``DESeq()`` + ``results()`` (no R start-up, no file reading). R uses
  one core.

Peak memory: ``/usr/bin/time``'s maximum RSS of each subprocess (the interpreter, imports and
the data included); for the LocalCluster run, the largest sum of the resident sizes of the
subprocess and its descendants (scheduler, nannies, workers), sampled every 50 ms. Prints a
table (ratio = baseline seconds / engine seconds, "x faster"), the agreement of the Wald
statistics with R's and PyDESeq2's, the machine and its load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from bench_genesets import TreeRSS, _timed, run_child  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
SEED = 20261121
CHUNK_GENES = 2000
WARM_UP_GENES = 500


def simulate(work: Path, genes: int, samples: int) -> dict:
    rng = np.random.default_rng(SEED)
    base = 2 ** rng.normal(6, 2.5, genes)
    disp = (0.04 + 2 / base) * np.exp(rng.normal(0, 0.5, genes))
    sf = np.exp(rng.uniform(np.log(0.5), np.log(2), samples))
    group = np.where(np.arange(samples) < samples // 2, "A", "B")
    lfc = np.zeros(genes)
    de = rng.choice(genes, genes // 10, replace=False)
    lfc[de] = rng.choice([-1, 1], de.size) * rng.uniform(0.5, 2.5, de.size)
    mu = base[:, None] * sf[None, :] * 2 ** (lfc[:, None] * (group == "B")[None, :])
    size = 1 / disp[:, None]
    counts = rng.negative_binomial(size, size / (size + mu))
    ids = [f"GENE{i:05d}" for i in range(1, genes + 1)]
    names = [f"S{j:04d}" for j in range(1, samples + 1)]
    matrix, sheet = work / "counts.tsv", work / "samples.tsv"
    pd.DataFrame(counts, index=pd.Index(ids, name="gene_id"), columns=names).to_csv(
        matrix, sep="\t")
    pd.DataFrame({"sample_id": names, "group": group}).to_csv(sheet, sep="\t", index=False)
    from engine.store import ingest

    store = ingest(matrix, sheet, work / "counts.zarr", scale="counts", chunk_genes=CHUNK_GENES)
    paths = {"matrix": str(matrix), "sheet": str(sheet), "store": str(store)}
    (work / "paths.json").write_text(json.dumps(paths))
    return paths


# -- children -----------------------------------------------------------------------------------

def child_engine(a) -> dict:
    import dask

    from engine.stats.deseq2 import deseq2
    from engine.store import open_cohort

    paths = json.loads((a.work / "paths.json").read_text())
    cohort = open_cohort(paths["store"])

    def compute(ds=cohort):
        result = deseq2(ds, group="group", case="B", control="A")
        return dask.compute({k: result[k].data for k in result.attrs["columns"]})[0]

    def warm_up():
        compute(cohort.isel(gene=slice(0, WARM_UP_GENES)))

    out = {}
    if a.scheduler == "processes":
        from engine.cluster import dask_client

        t = time.perf_counter()
        with dask_client(workers=2, processes=True, quiet=True) as client:
            out["startup_s"] = time.perf_counter() - t
            out["workers"] = len(client.scheduler_info(n_workers=-1)["workers"])
            warm_up()
            with TreeRSS() as rss:
                times, columns = _timed(compute, a.repeats)
        out.update(tree_peak_mb=rss.peak / 2**20, worker_peak_mb=rss.worker_peak / 2**20)
    else:
        with dask.config.set(scheduler="threads"):
            warm_up()
            times, columns = _timed(compute, a.repeats)
    genes = cohort["gene"].values.astype(str)
    pd.DataFrame(columns, index=genes).to_csv(a.work / f"engine_{a.scheduler}.tsv", sep="\t")
    out.update(times=times)
    return out


def child_pydeseq2(a) -> dict:
    import warnings

    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    paths = json.loads((a.work / "paths.json").read_text())
    counts = pd.read_csv(paths["matrix"], sep="\t", index_col=0).T
    samples = pd.read_csv(paths["sheet"], sep="\t", index_col=0)

    def run():
        inference = DefaultInference(n_cpus=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dds = DeseqDataSet(counts=counts, metadata=samples, design="~group",
                               refit_cooks=True, inference=inference, quiet=True)
            dds.deseq2()
            stats = DeseqStats(dds, contrast=["group", "B", "A"], inference=inference,
                               quiet=True)
            stats.summary()
        return stats.results_df

    times, table = _timed(run, a.repeats)
    table.to_csv(a.work / "pydeseq2.tsv", sep="\t")
    import pydeseq2

    return {"times": times, "version": pydeseq2.__version__}


CHILDREN = {"engine": child_engine, "pydeseq2": child_pydeseq2}


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--scheduler", default="threads")
    a = parser.parse_args(argv)
    print("CHILD_RESULT " + json.dumps(CHILDREN[a.child](a)), flush=True)


def python_child(task: str, work: Path, **options) -> dict | None:
    label = "_".join([task] + [f"{k}-{v}" for k, v in options.items()])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", task, "--work", str(work)]
    for k, v in options.items():
        cmd += [f"--{k}", str(v)]
    run = run_child(cmd, work, label)
    if run["rc"] != 0:
        return None
    line = [ln for ln in run["stdout"].splitlines() if ln.startswith("CHILD_RESULT ")][-1]
    return json.loads(line[len("CHILD_RESULT "):]) | {"max_rss_mb": run["max_rss_mb"]}


def r_deseq2(work: Path, paths: dict) -> dict | None:
    script = SHARED / "oracle" / "deseq2.R"
    if shutil.which("Rscript") is None or not script.exists():
        return None
    if subprocess.run(["Rscript", "-e", "library(DESeq2)"], capture_output=True).returncode:
        return None
    out = work / "r_deseq2.tsv"
    run = run_child(["Rscript", str(script), paths["matrix"], paths["sheet"], "group", "B", "A",
                     str(out)], work, "r_deseq2")
    if run["rc"] != 0:
        return None
    seconds = float(re.search(r"ORACLE_TIMING\tdeseq2\t([0-9.eE+-]+)", run["stderr"]).group(1))
    return {"times": [seconds], "max_rss_mb": run["max_rss_mb"], "table": out}


def agreement(ours: pd.Series, theirs: pd.Series) -> str:
    both = ours.notna() & theirs.notna()
    rel = ((ours[both] - theirs[both]).abs() / theirs[both].abs()).replace(np.inf, np.nan)
    same_na = int((ours.isna() != theirs.isna()).sum())
    return (f"max rel {rel.max():.1e}, median {rel.median():.1e}, "
            f"{same_na} genes NA on one side only")


def main() -> None:
    if "--child" in sys.argv:
        child_main(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-r", action="store_true")
    parser.add_argument("--skip-pydeseq2", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"simulating {args.genes} genes x {args.samples} samples ...", flush=True)
        paths = simulate(work, args.genes, args.samples)
        rows = {}
        for scheduler in ("processes", "threads"):
            print(f"engine ({scheduler}) ...", flush=True)
            rows[f"engine, {scheduler}"] = python_child("engine", work, repeats=args.repeats,
                                                        scheduler=scheduler)
        have_pydeseq2 = not args.skip_pydeseq2 and subprocess.run(
            [sys.executable, "-c", "import pydeseq2"], capture_output=True).returncode == 0
        if have_pydeseq2:
            print("PyDESeq2 ...", flush=True)
            rows["PyDESeq2 (n_cpus=2)"] = python_child("pydeseq2", work, repeats=args.repeats)
        if not args.skip_r:
            print("R DESeq2 ...", flush=True)
            rows["R DESeq2 (1 core)"] = r_deseq2(work, paths)
        ours = pd.read_csv(work / "engine_processes.tsv", sep="\t", index_col=0)
        identical = all(np.array_equal(ours.to_numpy(), pd.read_csv(
            work / f"engine_{other}.tsv", sep="\t", index_col=0).to_numpy(), equal_nan=True)
            for other in ("threads",))
        checks = [f"engine on both schedulers: {'identical' if identical else 'DIFFERENT'}"]
        if rows.get("R DESeq2 (1 core)"):
            r = pd.read_csv(rows["R DESeq2 (1 core)"]["table"], sep="\t", index_col=0)
            checks.append("Wald statistic vs R: " + agreement(ours["statistic"], r["stat"]))
            checks.append("p_adj vs R: " + agreement(ours["p_adj"], r["padj"]))
        if rows.get("PyDESeq2 (n_cpus=2)"):
            py = pd.read_csv(work / "pydeseq2.tsv", sep="\t", index_col=0).reindex(ours.index)
            checks.append("Wald statistic vs PyDESeq2: " + agreement(ours["statistic"],
                                                                     py["stat"]))
            if rows.get("R DESeq2 (1 core)"):
                checks.append("(PyDESeq2 vs R: " + agreement(py["stat"], r["stat"]) + ")")

    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, load average {os.getloadavg()}")
    print(f"counts: {args.genes} genes x {args.samples} samples ({args.samples // 2} vs "
          f"{args.samples - args.samples // 2}), best of {args.repeats}")
    engine_s = min(rows["engine, processes"]["times"])
    print(f"{'side':32s} {'seconds':>9s} {'ratio':>7s} {'peak MB':>9s}")
    for label, row in rows.items():
        if not row:
            print(f"{label:32s} {'failed or unavailable':>27s}")
            continue
        seconds = min(row["times"])
        peak = row.get("tree_peak_mb", row["max_rss_mb"])
        ratio = "" if label.startswith("engine") else f"{seconds / engine_s:6.1f}x"
        extra = (f"  (start-up {row['startup_s']:.1f} s not included; largest worker "
                 f"{row['worker_peak_mb']:.0f} MB)" if "startup_s" in row else "")
        print(f"{label:32s} {seconds:9.2f} {ratio:>7s} {peak:9.0f}{extra}")
    print("ratio: baseline seconds / engine (2 worker processes) seconds")
    for label in ("engine, threads",):
        if rows.get(label):
            ratios = ", ".join(f"{base} {min(row['times']) / min(rows[label]['times']):.1f}x"
                               for base, row in rows.items()
                               if row and not base.startswith("engine"))
            print(f"  vs {label}: {ratios}")
    for line in checks:
        print(line)
    print(f"command: {' '.join(sys.argv)}; whole run {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
