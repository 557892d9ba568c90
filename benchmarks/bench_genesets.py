"""Gene-set benchmark: ssGSEA, GSVA, preranked and phenotype-permutation GSEA vs R GSVA and GSEApy.

    python benchmarks/bench_genesets.py [--genes 20000] [--samples 1000] [--gsva-samples N]
        [--sets 50] [--repeats 3] [--gsva-repeats N] [--baseline-repeats 1]
        [--phenotype-samples 200] [--malloc-variant] [--skip-r] [--skip-gseapy]
        [--only ssgsea|gsva|prerank|phenotype]

Issue 4, "Benchmark (not a timed test)". Every baseline is measured in the same run on the same
numbers; every side runs in its own subprocess, so its peak memory is its own.

Data (numpy ``default_rng``, fixed seeds): a (genes x samples) float32 standard normal matrix,
ingested into a cohort store of 2,000 genes per chunk (every chunk holds all samples, as the
engine's stores do), and ``--sets`` random gene sets of 15..200 genes drawn from the gene IDs,
written as a GMT that both sides read.

1. ssGSEA (alpha 0.25, range-normalised) and GSVA (Gaussian kcdf): the engine's lazy wrappers
   (``single_sample_scores``, ``gsva_scores``) from the opened store to computed scores, on a
   2-process distributed LocalCluster (1 thread each) and on Dask's threaded scheduler, each
   after one untimed warm-up on the first 20 samples; best of ``--repeats`` (GSVA:
   ``--gsva-repeats``). Cluster start-up is not included. Baseline: R GSVA 1.46 through
   ``<shared>/oracle/gsva.R`` on the same float32 values written as TSV (``%.17g`` of the
   float64 copy), its own timing of the ``gsva()`` call alone (no R start-up, no file reading).
   Targets: ssGSEA >= 20x, GSVA >= 10x faster than R; max |score difference| vs R (expected
   ~1e-10 or better). GSVA's kernel CDF is O(genes x samples^2) on both sides (minutes per run
   at 1,000 samples): ``--gsva-samples N`` runs GSVA, both sides, on the first N samples.
   ``--malloc-variant`` adds a LocalCluster run whose workers start with glibc's
   ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` raised (16 MiB, 256 MiB).
   distributed's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker, which also fixes
   glibc's mmap threshold at 128 KiB: every temporary array above that size is mapped and
   faulted in afresh (GSVA's density kernel ran ~3x slower in a worker than in-process).
2. Preranked GSEA, 2,000 gene-set permutations: a float64 standard normal ranking of all genes
   in which the members of the first 5 sets are shifted by +0.5 (so that some p-values fall far
   below 1/2,000 and the multilevel scheme has work); engine ``gsea_preranked`` with multilevel
   on and off vs ``gseapy.prerank(permutation_num=2000, threads=1, outdir=None, no_plot=True)``
   and ``blitzgsea.gsea(signature, library, permutations=2000, processes=1)``, each when
   importable. blitzgsea runs with ``center=False`` (its ES is then the plain running-sum ES)
   and ``signature_cache=False`` (a repeat must not reuse the first run's fitted null); its
   1.3.54 ``processes=1`` path misses an argument, which the benchmark supplies. ES are equal
   up to tie order (the ranking has no ties).
3. Phenotype-permutation GSEA, 1,000 permutations, signal-to-noise, on a separate (genes x
   ``--phenotype-samples``) float32 standard normal matrix (alternating case/control): engine
   ``gsea_phenotype`` on the in-memory matrix (BLAS on all cores, and on 1 thread as gseapy's
   ``threads=1``) vs ``gseapy.gsea(permutation_type="phenotype", permutation_num=1000,
   method="signal_to_noise", threads=1, outdir=None, no_plot=True)``. Target >= 20x.

Baselines (R, gseapy, blitzgsea) run ``--baseline-repeats`` times (default once: they take
minutes) and their best is reported. Peak memory: the maximum resident set size of each
subprocess (``/usr/bin/time``'s ``%M``), which includes the interpreter, its imports, the warm-up
and, for R, reading the TSV; for the LocalCluster runs, the largest sum of the resident sizes of
the subprocess and all its descendants (client and scheduler, nannies, workers), sampled every
50 ms during the timed runs. Prints a summary table (ratio = baseline s / engine s, i.e. "x
faster"; ``max |diff|`` = engine vs that row's baseline), the machine, its load average (the
machine may be shared: load slows both sides, not necessarily equally), the command and the
whole run's time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared"
SEED = 20240604
CHUNK_GENES = 2000
MIN_SIZE, MAX_SIZE = 15, 200
ENRICHED_SETS, SHIFT = 5, 0.5
PRERANK_PERMUTATIONS = 2000
PHENOTYPE_PERMUTATIONS = 1000
TASKS = ("ssgsea", "gsva", "prerank", "phenotype")
#: ssGSEA/GSVA runs start with one untimed run on this many samples (imports, first reads).
WARM_UP_SAMPLES = 20


def stable_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


# --------------------------------------------------------------------------- data (parent)

def make_data(work: Path, args) -> dict:
    """Write the store, the GMT, the ranking and the phenotype matrix; return their paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.genesets import GeneSet, write_gmt
    from engine.store import ingest

    seq = np.random.SeedSequence(SEED)
    rng_x, rng_sets, rng_rank, rng_pheno = (np.random.default_rng(s) for s in seq.spawn(4))
    genes = np.array([f"G{g:05d}" for g in range(args.genes)], dtype=object)
    n_columns = max(args.samples, args.gsva_samples)
    samples = [f"S{s:04d}" for s in range(n_columns)]

    sizes = rng_sets.integers(MIN_SIZE, MAX_SIZE + 1, size=args.sets)
    members = [np.sort(rng_sets.choice(args.genes, size=k, replace=False)) for k in sizes]
    gmt = write_gmt([GeneSet(f"set{i + 1:03d}", tuple(genes[m]), description="random")
                     for i, m in enumerate(members)], work / "sets.gmt")

    paths = {"gmt": str(gmt), "work": str(work)}
    counts = sorted({args.samples if "ssgsea" in args.tasks else None,
                     args.gsva_samples if "gsva" in args.tasks else None} - {None})
    if counts:
        # GSVA's samples are the first --gsva-samples columns of the same matrix
        x = rng_x.standard_normal((args.genes, n_columns), dtype=np.float32)
    for n in counts:
        matrix = work / "matrix.parquet"
        schema = pa.schema([("gene", pa.string())] + [(s, pa.float32()) for s in samples[:n]])
        with pq.ParquetWriter(matrix, schema) as writer:
            for start in range(0, args.genes, CHUNK_GENES):
                block = x[start:start + CHUNK_GENES]
                cols = [pa.array(genes[start:start + CHUNK_GENES].tolist())]
                writer.write_table(pa.table(cols + [pa.array(block[:, j]) for j in range(n)],
                                            schema=schema))
        sheet = work / "samples.tsv"
        pd.DataFrame({"sample_id": samples[:n]}).to_csv(sheet, sep="\t", index=False)
        paths[f"store_{n}"] = str(ingest(matrix, sheet, work / f"sim_{n}.zarr",
                                         chunk_genes=CHUNK_GENES))
        matrix.unlink()
        if not args.skip_r:
            tsv = work / f"expression_{n}.tsv"
            # %.17g of the float64 copy: R reads back exactly the float32 values the engine uses
            pd.DataFrame(x[:, :n].astype(np.float64), index=pd.Index(genes, name="gene"),
                         columns=samples[:n]).to_csv(tsv, sep="\t", float_format="%.17g")
            paths[f"tsv_{n}"] = str(tsv)
    if counts:
        del x
    if "prerank" in args.tasks:
        stat = rng_rank.standard_normal(args.genes)
        for m in members[:ENRICHED_SETS]:
            stat[m] += SHIFT
        np.save(work / "ranking.npy", stat)
        paths["ranking"] = str(work / "ranking.npy")
    if "phenotype" in args.tasks:
        np.save(work / "phenotype.npy",
                rng_pheno.standard_normal((args.genes, args.phenotype_samples), dtype=np.float32))
        paths["phenotype"] = str(work / "phenotype.npy")
    return paths


# --------------------------------------------------------------------------- subprocesses

TIME = "/usr/bin/time"


def run_child(cmd: list[str], work: Path, label: str) -> dict:
    """Run ``cmd`` to completion; its stdout/stderr, exit code and peak RSS (MB).

    The peak comes from ``/usr/bin/time``'s ``%M`` (its wait4 of the command). Not from this
    process's own ``os.wait4``: Linux starts an exec'd child's peak at the high-water mark of
    the memory it was spawned from (vfork shares the parent's), so a child of this process,
    which holds the data, would report at least this process's peak. Without /usr/bin/time
    that (inflated) number is used and flagged."""
    out, err = work / f"{label}.out", work / f"{label}.err"
    wrapped = Path(TIME).exists()
    if wrapped:
        cmd = [TIME, "-f", "BENCH_MAXRSS_KB %M", *cmd]
    t = time.perf_counter()
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    stderr = err.read_text()
    peak = usage.ru_maxrss / 1024
    found = re.findall(r"^BENCH_MAXRSS_KB (\d+)$", stderr, flags=re.M)
    if wrapped and found:
        peak = int(found[-1]) / 1024
    else:
        print(f"  note: {label}: peak RSS from os.wait4, an upper bound (no {TIME})")
    result = {"rc": proc.returncode, "stdout": out.read_text(), "stderr": stderr,
              "max_rss_mb": peak, "wall_s": wall}
    if proc.returncode != 0:
        print(f"  !! {label} failed (exit {proc.returncode}):\n{result['stderr'][-3000:]}",
              flush=True)
    return result


def python_child(task: str, work: Path, args, **options) -> dict | None:
    options.setdefault("repeats", args.repeats)
    label = "_".join([task] + [f"{k}-{v}" for k, v in options.items()])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", task, "--work", str(work)]
    for k, v in options.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    run = run_child(cmd, work, label)
    if run["rc"] != 0:
        return None
    line = [ln for ln in run["stdout"].splitlines() if ln.startswith("CHILD_RESULT ")][-1]
    result = json.loads(line[len("CHILD_RESULT "):])
    result["max_rss_mb"] = run["max_rss_mb"]
    result["label"] = label
    return result


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--scheduler", default="threads")
    parser.add_argument("--samples", type=int, default=0)
    parser.add_argument("--multilevel", type=int, default=1)
    parser.add_argument("--blas-threads", type=int, default=0)
    a = parser.parse_args(argv)
    result = CHILDREN[a.child](a)
    print("CHILD_RESULT " + json.dumps(result), flush=True)


class TreeRSS:
    """Samples the summed RSS of this process and all its descendants (LocalCluster workers)."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self.psutil, self.interval = psutil, interval
        self.peak, self.worker_peak = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = self.psutil.Process(os.getpid())
        while not self._stop.is_set():
            total, largest_child = 0, 0
            try:
                procs = [me] + me.children(recursive=True)
            except self.psutil.Error:
                procs = [me]
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except self.psutil.Error:
                    continue
                total += rss
                if p.pid != me.pid:
                    largest_child = max(largest_child, rss)
            self.peak = max(self.peak, total)
            self.worker_peak = max(self.worker_peak, largest_child)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _timed(fn, repeats: int):
    times, value = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return times, value


def child_scores(a, method: str) -> dict:
    """Engine ssGSEA or GSVA from the opened store to computed scores, on one scheduler."""
    import dask

    from engine.genesets import map_gene_sets, read_gmt
    from engine.store import open_cohort

    paths = json.loads((a.work / "paths.json").read_text())
    cohort = open_cohort(paths[f"store_{a.samples}"])
    membership = map_gene_sets(read_gmt(paths["gmt"]), cohort["gene"].values)

    def compute(ds=cohort):
        if method == "ssgsea":
            from engine.stats.scores import single_sample_scores
            result = single_sample_scores(ds, membership, method="ssgsea", normalize=True)
        else:
            from engine.stats.gsva import gsva_scores
            result = gsva_scores(ds, membership, kcdf="gaussian")
        return result["score"].values

    def warm_up():  # imports and first reads on the workers, on a few samples; not timed
        compute(cohort.isel(sample=slice(0, WARM_UP_SAMPLES)))

    out = {"chunk_genes": int(cohort["expression"].data.chunks[0][0])}
    if a.scheduler in ("processes", "processes-malloc"):
        from engine.cluster import dask_client

        config = {}
        if a.scheduler == "processes-malloc":
            config = {"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 2**24,
                      "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 2**28}
        t = time.perf_counter()
        with dask.config.set(config), \
                dask_client(workers=2, processes=True, quiet=True) as client:
            out["startup_s"] = time.perf_counter() - t
            out["workers"] = len(client.scheduler_info(n_workers=-1)["workers"])
            warm_up()
            with TreeRSS() as rss:
                times, scores = _timed(compute, a.repeats)
        out.update(tree_peak_mb=rss.peak / 2**20, worker_peak_mb=rss.worker_peak / 2**20)
    else:
        with dask.config.set(scheduler="threads"):
            warm_up()
            times, scores = _timed(compute, a.repeats)
    np.save(a.work / f"engine_{method}_{a.scheduler}.npy", scores)
    (a.work / "set_names.json").write_text(json.dumps([str(n) for n in membership.names]))
    out.update(times=times)
    return out


def _gene_sets(paths) -> tuple[np.ndarray, dict[str, list[str]], list[np.ndarray]]:
    from engine.genesets import map_gene_sets, read_gmt

    sets = read_gmt(paths["gmt"])
    n = len(np.load(paths["ranking"], mmap_mode="r")) if "ranking" in paths else \
        np.load(paths["phenotype"], mmap_mode="r").shape[0]
    genes = np.array([f"G{g:05d}" for g in range(n)], dtype=object)
    membership = map_gene_sets(sets, genes)
    return genes, {s.name: list(s.genes) for s in sets}, membership.index_lists()


def child_prerank_engine(a) -> dict:
    from engine.stats.gsea import gsea_preranked

    paths = json.loads((a.work / "paths.json").read_text())
    stat = np.load(paths["ranking"])
    _, library, members = _gene_sets(paths)
    times, res = _timed(lambda: gsea_preranked(
        stat, members, permutations=PRERANK_PERMUTATIONS, seed=1, key=stable_key("prerank"),
        weight=1.0, multilevel=bool(a.multilevel), eps=1e-50), a.repeats)
    return {"times": times, "names": list(library), "es": res["es"].tolist(),
            "p_value": res["p_value"].tolist(), "multilevel_sets": int(res["multilevel"].sum()),
            "min_p": float(np.nanmin(res["p_value"]))}


def child_prerank_gseapy(a) -> dict:
    import gseapy

    paths = json.loads((a.work / "paths.json").read_text())
    stat = np.load(paths["ranking"])
    genes, library, _ = _gene_sets(paths)
    rnk = pd.Series(stat, index=pd.Index(genes, name="gene"), name="score")

    def run():
        return gseapy.prerank(rnk=rnk, gene_sets=library, permutation_num=PRERANK_PERMUTATIONS,
                              threads=1, outdir=None, no_plot=True, seed=1, min_size=MIN_SIZE,
                              max_size=MAX_SIZE, verbose=False).res2d

    times, table = _timed(run, a.repeats)
    es = table.set_index("Term")["ES"].astype(float)
    return {"times": times, "names": es.index.tolist(), "es": es.tolist(),
            "version": gseapy.__version__}


def child_prerank_blitzgsea(a) -> dict:
    import blitzgsea

    paths = json.loads((a.work / "paths.json").read_text())
    stat = np.load(paths["ranking"])
    genes, library, _ = _gene_sets(paths)
    signature = pd.DataFrame({0: genes, 1: stat})

    _patch_blitzgsea_single_process(blitzgsea)

    def run():
        return blitzgsea.gsea(signature, library, permutations=PRERANK_PERMUTATIONS, processes=1,
                              center=False, signature_cache=False, seed=1)

    times, table = _timed(run, a.repeats)
    from importlib.metadata import version
    return {"times": times, "names": table.index.tolist(), "es": table["es"].astype(float).tolist(),
            "version": version("blitzgsea")}


def _patch_blitzgsea_single_process(blitzgsea) -> None:
    """blitzgsea 1.3.54's ``processes=1`` path calls ``estimate_anchor`` without its last
    argument ``ks_disable`` (TypeError; the pool path passes it). Supply its default, False,
    there only; nothing else changes."""
    import inspect

    original = blitzgsea.estimate_anchor
    parameter = inspect.signature(original).parameters.get("ks_disable")
    if parameter is None or parameter.default is not inspect.Parameter.empty:
        return

    def estimate_anchor(*args):
        return original(*args) if len(args) == 8 else original(*args, False)

    blitzgsea.estimate_anchor = estimate_anchor


def _phenotype_inputs(paths):
    x = np.load(paths["phenotype"])
    is_case = np.arange(x.shape[1]) % 2 == 0
    return x, is_case


def child_phenotype_engine(a) -> dict:
    from threadpoolctl import threadpool_limits

    from engine.stats.phenotype import gsea_phenotype

    paths = json.loads((a.work / "paths.json").read_text())
    x, is_case = _phenotype_inputs(paths)
    _, library, members = _gene_sets(paths)

    def run():
        return gsea_phenotype(x, is_case, members, metric="signal_to_noise",
                              permutations=PHENOTYPE_PERMUTATIONS, seed=1,
                              key=stable_key("phenotype"))

    if a.blas_threads:
        with threadpool_limits(a.blas_threads):
            times, res = _timed(run, a.repeats)
    else:
        times, res = _timed(run, a.repeats)
    return {"times": times, "names": list(library), "es": res["es"].tolist()}


def child_phenotype_gseapy(a) -> dict:
    import gseapy

    paths = json.loads((a.work / "paths.json").read_text())
    x, is_case = _phenotype_inputs(paths)
    genes, library, _ = _gene_sets(paths)
    data = pd.DataFrame(x.astype(np.float64), index=pd.Index(genes, name="gene"),
                        columns=[f"S{j:04d}" for j in range(x.shape[1])])
    cls = np.where(is_case, "case", "control").tolist()  # first label seen = positive class

    def run():
        return gseapy.gsea(data=data, gene_sets=library, cls=cls, permutation_type="phenotype",
                           permutation_num=PHENOTYPE_PERMUTATIONS, method="signal_to_noise",
                           threads=1, outdir=None, no_plot=True, seed=1, min_size=MIN_SIZE,
                           max_size=MAX_SIZE, verbose=False).res2d

    times, table = _timed(run, a.repeats)
    es = table.set_index("Term")["ES"].astype(float)
    return {"times": times, "names": es.index.tolist(), "es": es.tolist(),
            "version": gseapy.__version__}


CHILDREN = {
    "ssgsea": lambda a: child_scores(a, "ssgsea"),
    "gsva": lambda a: child_scores(a, "gsva"),
    "prerank_engine": child_prerank_engine,
    "prerank_gseapy": child_prerank_gseapy,
    "prerank_blitzgsea": child_prerank_blitzgsea,
    "phenotype_engine": child_phenotype_engine,
    "phenotype_gseapy": child_phenotype_gseapy,
}


# --------------------------------------------------------------------------- R

def r_gsva_available() -> str | None:
    """GSVA's version when Rscript, GSVA and the oracle script are there; else None."""
    if shutil.which("Rscript") is None or not (SHARED / "oracle" / "gsva.R").exists():
        return None
    probe = subprocess.run(["Rscript", "-e", 'cat(as.character(packageVersion("GSVA")))'],
                           capture_output=True, text=True)
    return probe.stdout.strip() if probe.returncode == 0 else None


def r_scores(method: str, tsv: str, paths: dict, work: Path, repeats: int) -> dict | None:
    """R GSVA through oracle/gsva.R, ``repeats`` times: the best ``gsva()`` time, the largest
    peak RSS of the Rscript processes, the scores."""
    out = work / f"r_{method}.tsv"
    cmd = ["Rscript", str(SHARED / "oracle" / "gsva.R"), tsv, paths["gmt"], method,
           str(out), "--kcdf", "Gaussian"]
    times, rss, walls = [], [], []
    for _ in range(repeats):
        run = run_child(cmd, work, f"r_{method}")
        if run["rc"] != 0:
            return None
        times.append(float(re.search(rf"ORACLE_TIMING\tgsva_{method}\t([0-9.eE+-]+)",
                                     run["stderr"]).group(1)))
        rss.append(run["max_rss_mb"])
        walls.append(run["wall_s"])
    scores = pd.read_csv(out, sep="\t", index_col=0)
    return {"times": times, "seconds": min(times), "scores": scores, "max_rss_mb": max(rss),
            "wall_s": min(walls)}


# --------------------------------------------------------------------------- report

def es_difference(ours: dict, theirs: dict) -> float:
    a = pd.Series(ours["es"], index=ours["names"], dtype=float)
    b = pd.Series(theirs["es"], index=theirs["names"], dtype=float)
    common = a.index.intersection(b.index)
    if len(common) < len(a):
        print(f"  note: {len(a) - len(common)} set(s) missing from the baseline's output")
    return float(np.max(np.abs(a[common] - b[common])))


def machine_lines(r_version: str | None) -> list[str]:
    import dask
    import distributed
    import psutil
    import scipy

    versions = [f"Python {platform.python_version()}", f"numpy {np.__version__}",
                f"scipy {scipy.__version__}", f"pandas {pd.__version__}",
                f"dask {dask.__version__}", f"distributed {distributed.__version__}"]
    from importlib.metadata import PackageNotFoundError, version
    for name in ("gseapy", "blitzgsea"):
        try:
            versions.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            versions.append(f"{name} not installed")
    if r_version:
        rv = subprocess.run(["Rscript", "-e", "cat(R.version.string)"], capture_output=True,
                            text=True).stdout.strip()
        versions.append(f"{rv}, GSVA {r_version}")
    cpu = platform.processor() or platform.machine()
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in
                     Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
        cpu = f"{model} ({cpu})"
    except (OSError, StopIteration):
        pass
    return [f"machine: {platform.platform()}; {cpu}; {os.cpu_count()} CPUs; "
            f"{psutil.virtual_memory().total / 2**30:.1f} GiB memory",
            "versions: " + ", ".join(versions)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=1000,
                        help="samples for ssGSEA and GSVA (both sides)")
    parser.add_argument("--gsva-samples", type=int, default=None,
                        help="samples for GSVA (both sides; default: --samples)")
    parser.add_argument("--phenotype-samples", type=int, default=200)
    parser.add_argument("--sets", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="engine runs (best is reported)")
    parser.add_argument("--gsva-repeats", type=int, default=None,
                        help="engine GSVA runs (default: --repeats)")
    parser.add_argument("--baseline-repeats", type=int, default=1,
                        help="R / gseapy / blitzgsea runs (best is reported)")
    parser.add_argument("--malloc-variant", action="store_true",
                        help="also run the LocalCluster with glibc malloc thresholds raised")
    parser.add_argument("--skip-r", action="store_true")
    parser.add_argument("--skip-gseapy", action="store_true",
                        help="skip the gseapy and blitzgsea baselines")
    parser.add_argument("--only", choices=TASKS)
    args = parser.parse_args()
    args.tasks = (args.only,) if args.only else TASKS
    if args.gsva_samples is None:
        args.gsva_samples = args.samples
    if args.gsva_repeats is None:
        args.gsva_repeats = args.repeats
    if args.genes < MAX_SIZE + 1:
        parser.error(f"--genes must be above the largest set size {MAX_SIZE}")

    started = time.perf_counter()
    load_start = os.getloadavg()
    r_version = None if args.skip_r else r_gsva_available()
    if not args.skip_r and r_version is None and {"ssgsea", "gsva"} & set(args.tasks):
        print("R GSVA not available (Rscript, GSVA or oracle/gsva.R missing): R baselines skipped")
    if r_version is None:
        args.skip_r = True
    rows = []  # (comparison, engine s, baseline s, engine MB, baseline MB, max |diff|, target)
    notes = []

    with tempfile.TemporaryDirectory(prefix="bench_genesets_") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        paths = make_data(work, args)
        (work / "paths.json").write_text(json.dumps(paths))
        print(f"data written in {time.perf_counter() - t:.1f} s "
              f"({args.genes} genes; {args.samples} samples for ssGSEA, {args.gsva_samples} "
              f"(the first ones) for GSVA; "
              f"{args.phenotype_samples} for phenotype GSEA; {args.sets} sets of "
              f"{MIN_SIZE}..{MAX_SIZE})", flush=True)

        for method in ("ssgsea", "gsva"):
            if method not in args.tasks:
                continue
            label = {"ssgsea": "ssGSEA", "gsva": "GSVA (Gaussian kcdf)"}[method]
            target = {"ssgsea": 20, "gsva": 10}[method]
            n = args.samples if method == "ssgsea" else args.gsva_samples
            repeats = args.repeats if method == "ssgsea" else args.gsva_repeats
            names = None
            r = None
            if not args.skip_r:
                print(f"[{label}] R GSVA gsva(method={method!r}) on {args.genes} x {n}, "
                      f"{args.baseline_repeats} run(s) ...", flush=True)
                r = r_scores(method, paths[f"tsv_{n}"], paths, work, args.baseline_repeats)
                if r is not None:
                    print(f"  R: {', '.join(f'{s:.2f}' for s in r['times'])} s (gsva() call), "
                          f"whole Rscript {r['wall_s']:.1f} s, peak {r['max_rss_mb']:.0f} MB",
                          flush=True)
            schedulers = ["processes", "threads"]
            if args.malloc_variant:
                schedulers.insert(1, "processes-malloc")
            for scheduler in schedulers:
                what = {"processes": "LocalCluster 2 processes",
                        "processes-malloc": "LocalCluster 2 processes, malloc tuned",
                        "threads": "threaded scheduler"}[scheduler]
                cluster = scheduler.startswith("processes")
                print(f"[{label}] engine, {what}, {repeats} repeat(s) ...", flush=True)
                res = python_child(method, work, args, scheduler=scheduler, samples=n,
                                   repeats=repeats)
                if res is None:
                    continue
                names = json.loads((work / "set_names.json").read_text())
                engine_s = min(res["times"])
                peak = res["tree_peak_mb"] if cluster else res["max_rss_mb"]
                extra = (f", cluster start-up {res['startup_s']:.1f} s not included, "
                         f"largest worker {res['worker_peak_mb']:.0f} MB" if cluster else "")
                print(f"  engine: {_timing(res, peak)}{extra}", flush=True)
                diff = np.nan
                if r is not None:
                    ours = pd.DataFrame(np.load(work / f"engine_{method}_{scheduler}.npy"),
                                        index=names)
                    theirs = r["scores"].reindex(index=names)
                    theirs.columns = ours.columns
                    diff = float(np.nanmax(np.abs(ours.to_numpy() - theirs.to_numpy())))
                    if theirs.isna().to_numpy().any() or ours.isna().to_numpy().any():
                        notes.append(f"{label}: NaN scores present")
                rows.append((f"{label} {n} samples, engine {what} vs R GSVA",
                             engine_s, r["seconds"] if r else np.nan, peak,
                             r["max_rss_mb"] if r else np.nan, diff, f">= {target}x"))

        if "prerank" in args.tasks:
            print(f"[preranked GSEA] {PRERANK_PERMUTATIONS} permutations, {args.sets} sets, "
                  f"{args.genes} genes", flush=True)
            engine = {}
            for ml in (1, 0):
                res = python_child("prerank_engine", work, args, multilevel=ml)
                if res is not None:
                    engine[ml] = res
                    print(f"  engine multilevel={'on' if ml else 'off'}: {_timing(res)}, "
                          f"{res['multilevel_sets']} set(s) multilevel, smallest p "
                          f"{res['min_p']:.3g}", flush=True)
            baselines = {}
            if not args.skip_gseapy:
                for name, task in (("gseapy.prerank", "prerank_gseapy"),
                                   ("blitzgsea.gsea", "prerank_blitzgsea")):
                    module = name.split(".")[0]
                    if not _importable(module):
                        print(f"  {module} is not importable: {name} baseline skipped")
                        continue
                    res = python_child(task, work, args, repeats=args.baseline_repeats)
                    if res is not None:
                        baselines[name] = res
                        print(f"  {name} {res['version']}: {_timing(res)}", flush=True)
            reference = baselines.get("gseapy.prerank")
            for name, base in baselines.items():
                for ml, res in engine.items():
                    diff = es_difference(res, base)
                    rows.append((f"preranked GSEA, engine multilevel {'on' if ml else 'off'} "
                                 f"vs {name}", min(res["times"]), min(base["times"]),
                                 res["max_rss_mb"], base["max_rss_mb"], diff, ""))
            if "blitzgsea.gsea" in baselines and reference:
                notes.append("max |ES blitzgsea - gseapy| = "
                             f"{es_difference(baselines['blitzgsea.gsea'], reference):.2e}")
            if not baselines:
                for ml, res in engine.items():
                    rows.append((f"preranked GSEA, engine multilevel {'on' if ml else 'off'} "
                                 "(no baseline)", min(res["times"]), np.nan,
                                 res["max_rss_mb"], np.nan, np.nan, ""))

        if "phenotype" in args.tasks:
            print(f"[phenotype GSEA] {PHENOTYPE_PERMUTATIONS} permutations, signal-to-noise, "
                  f"{args.genes} x {args.phenotype_samples}, {args.sets} sets", flush=True)
            engine = {}
            for threads in (0, 1):
                res = python_child("phenotype_engine", work, args, blas_threads=threads)
                if res is not None:
                    engine[threads] = res
                    print(f"  engine BLAS threads={'all' if threads == 0 else threads}: "
                          f"{_timing(res)}", flush=True)
            base = None
            if not args.skip_gseapy:
                if _importable("gseapy"):
                    base = python_child("phenotype_gseapy", work, args,
                                        repeats=args.baseline_repeats)
                    if base is not None:
                        print(f"  gseapy.gsea {base['version']}: {_timing(base)}", flush=True)
                else:
                    print("  gseapy is not importable: gseapy.gsea baseline skipped")
            for threads, res in engine.items():
                rows.append((f"phenotype GSEA {args.phenotype_samples} samples, engine "
                             f"({'all cores' if threads == 0 else '1 BLAS thread'}) vs "
                             "gseapy.gsea threads=1", min(res["times"]),
                             min(base["times"]) if base else np.nan, res["max_rss_mb"],
                             base["max_rss_mb"] if base else np.nan,
                             es_difference(res, base) if base else np.nan, ">= 20x"))

    load_end = os.getloadavg()
    total = time.perf_counter() - started
    print()
    gsva_note = "" if args.gsva_repeats == args.repeats else f" (GSVA: {args.gsva_repeats})"
    print(f"summary (engine: best of {args.repeats}{gsva_note}; baselines: best of "
          f"{args.baseline_repeats}; ratio = baseline s / engine s; peak = max RSS of the "
          "subprocess, LocalCluster: summed over its processes; max |diff| = engine vs the "
          "row's baseline)")
    width = max([len("comparison")] + [len(row[0]) for row in rows])
    header = (f"{'comparison':<{width}} {'engine s':>9} {'base s':>9} {'ratio':>7} "
              f"{'eng MB':>7} {'base MB':>8} {'max|diff|':>10}  target")
    print(header)
    print("-" * len(header))
    for name, eng, base, eng_mb, base_mb, diff, target in rows:
        ratio = base / eng if np.isfinite(base) and eng > 0 else np.nan
        print(f"{name:<{width}} {eng:9.2f} {base:9.2f} {ratio:6.1f}x {eng_mb:7.0f} {base_mb:8.0f} "
              f"{diff:10.2e}  {target}")
    for note in notes:
        print(f"note: {note}")
    for line in machine_lines(r_version):
        print(line)
    print(f"load average (1, 5, 15 min): start {load_start[0]:.2f} {load_start[1]:.2f} "
          f"{load_start[2]:.2f}; end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"whole run: {total:.0f} s")


def _timing(res: dict, peak: float | None = None) -> str:
    """A child's repeat times and peak memory, as every progress line prints them."""
    peak = res["max_rss_mb"] if peak is None else peak
    return f"times {', '.join(f'{s:.2f}' for s in res['times'])} s, peak {peak:.0f} MB"


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    if "--child" in sys.argv:
        child_main(sys.argv[1:])
    else:
        main()
