"""ssGSEA on a cohort larger than the workers' memory: peak RSS stays flat (issue 4).

    python benchmarks/bench_ssgsea_memory.py [--genes 20000] [--samples 50000] [--store PATH]
        [--workers 2] [--memory-limit 1.5GB] [--sets 50] [--samples-per-chunk 256]

Writes a simulated 20,000 x 50,000 float32 cohort store (4 GB; block by block, never whole in
memory) unless ``--store`` names an existing one (a missing ``--store`` path is written there and
kept for the next run). Then runs ssGSEA (``--sets`` random sets of 15..200 genes, range
normalised) through ``engine.stats.scores.single_sample_scores`` on a ``LocalCluster`` of
``--workers`` single-threaded worker processes with ``--memory-limit`` each (by default 3 GB in
all, below the matrix size) and writes the scores to Zarr. The matrix passes through
``engine.stats.features.by_sample``: the one rechunk from gene chunks to (all genes x sample
blocks), done on disk above ``P2P_RECHUNK_BYTES``.

Every 0.5 s the RSS of the client process (which also runs the LocalCluster's scheduler) and of
every worker process is sampled (psutil). Printed: peak RSS per process, RSS at every 10% of the
run, wall time, spilled bytes, and the warnings of scheduler, nannies and workers (pauses,
restarts, kills). Baseline measured in the same run: a bare read of every chunk of the store with
zarr (no Dask, one chunk in memory at a time), and the ssGSEA kernel on one in-memory block
times the number of blocks; ratios engine / read and engine / (read + kernel). The peak is in
the rechunk's transfer phase and does not grow with the matrix: under 1.1 GB per worker at
20,000 x 20,000 and at 20,000 x 50,000 (one run each on 2 shared cores).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import dask
import numpy as np
import psutil
import scipy.sparse as sp
import xarray as xr
import zarr

MB = 2**20
#: What the warnings of scheduler, nannies and workers say when memory is not flat.
PROBLEMS = {"paused": ("Pausing worker",),
            "restarted/killed": ("Restarting worker", "exceeded 95% memory", "KilledWorker",
                                 "was killed", "Worker process died"),
            "spilling": ("spill",),
            "unmanaged-memory warnings": ("Unmanaged memory use is high",)}


def write_store(path: Path, genes: int, samples: int, seed: int = 0) -> Path:
    """A simulated log2-like cohort store in contract form, written chunk by chunk as
    ``engine.store.ingest`` writes it (same chunking, codec and attributes; ingest from a
    50,000-column Parquet file takes ~10 minutes here, most of it in pandas)."""
    from engine import __version__
    from engine.store.ingest import COMPRESSOR, default_chunk_genes

    rng = np.random.default_rng(seed)
    chunk = default_chunk_genes(samples)
    sample_ids = np.array([f"S{i:06d}" for i in range(samples)], dtype=object)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for start in range(0, genes, chunk):
        n = min(chunk, genes - start)
        x = rng.standard_normal((n, samples), dtype=np.float32)
        x += np.float32(8.0)
        data = xr.Dataset({"expression": (("gene", "sample"), x)},
                          coords={"gene": np.array([f"G{g:06d}" for g in range(start, start + n)],
                                                   dtype=object)})
        if start == 0:
            data = data.assign_coords(sample=sample_ids)
            data = data.assign(group=("sample", np.where(np.arange(samples) % 2, "a", "b")
                                      .astype(object)))
            encoding = {"expression": {"chunks": (chunk, samples), "compressors": COMPRESSOR},
                        "gene": {"chunks": (chunk,)}}
            data.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
        else:
            data.to_zarr(tmp, append_dim="gene", zarr_format=3, consolidated=False)
    root = zarr.open_group(tmp, mode="r+", zarr_format=3)
    root["expression"].attrs["scale"] = "log2"
    root.attrs.update({
        "engine_version": __version__,
        "ingested_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "sources": [{"role": "simulated", "path": f"bench_ssgsea_memory seed={seed}",
                     "bytes": genes * samples * 4, "sha256": ""}],
        "ingest_options": {"scale": "log2", "chunk_genes": chunk, "drop_unmatched": False,
                           "dropped_matrix_samples": [], "dropped_sheet_samples": []},
    })
    zarr.consolidate_metadata(tmp)
    tmp.rename(path)
    return path


def random_sets(n_genes: int, n_sets: int, seed: int = 1) -> SimpleNamespace:
    """``n_sets`` random sets of 15..200 genes as a membership (names, sets x genes CSR)."""
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for s in range(n_sets):
        members = rng.choice(n_genes, size=int(rng.integers(15, 201)), replace=False)
        rows.append(np.full(members.size, s))
        cols.append(np.sort(members))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    matrix = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_sets, n_genes))
    return SimpleNamespace(names=[f"set{s:03d}" for s in range(n_sets)], matrix=matrix)


def kernel_time(store: Path, sets, samples_per_chunk: int) -> tuple[float, int]:
    """Seconds of ``ssgsea_block`` on one in-memory (all genes x ``samples_per_chunk``) block
    of the store (best of 3), and the number of such blocks in the cohort."""
    from engine.stats.scores import ssgsea_block

    array = zarr.open_array(store / "expression", mode="r")
    block = array[:, :samples_per_chunk]
    seconds = []
    for _ in range(3):
        t = time.perf_counter()
        ssgsea_block(block, sets.matrix)
        seconds.append(time.perf_counter() - t)
    return min(seconds), -(-array.shape[1] // samples_per_chunk)


def bare_read(store: Path) -> float:
    """Seconds to read (decompress) every chunk of ``expression`` once, one at a time."""
    array = zarr.open_array(store / "expression", mode="r")
    step = array.chunks[0]
    t = time.perf_counter()
    for start in range(0, array.shape[0], step):
        array[start:start + step]
    return time.perf_counter() - t


class RssSampler(threading.Thread):
    """RSS of this process and of every descendant process, every ``interval`` seconds."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, dict[int, int]]] = []  # (seconds, {pid: rss})
        self._stop_event = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        me = psutil.Process()
        while not self._stop_event.is_set():
            rss = {}
            for p in [me, *me.children(recursive=True)]:
                try:
                    rss[p.pid] = p.memory_info().rss
                except psutil.Error:
                    pass
            self.samples.append((time.perf_counter() - self.t0, rss))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class Records(logging.Handler):
    """Warnings logged in this process (scheduler and nannies of the LocalCluster)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.name}: {record.getMessage()}")


def run_ssgsea(store: Path, out: Path, args, local_directory: Path) -> dict:
    """ssGSEA of ``store`` written to ``out`` on a fresh LocalCluster; timings, RSS, logs."""
    from distributed import Client, LocalCluster, wait

    import engine
    from engine.stats import features
    from engine.stats.scores import single_sample_scores

    if args.p2p_bytes is not None:
        features.P2P_RECHUNK_BYTES = args.p2p_bytes
    records = Records()
    logging.getLogger("distributed").addHandler(records)
    sampler = RssSampler()
    sampler.start()
    # the workers as `cohort run` starts them (distributed's defaults), but for the memory
    # limit and, optionally, p2p's per-worker comm buffer (distributed.p2p.comm.buffer)
    config = {"distributed.p2p.comm.buffer": args.p2p_buffer} if args.p2p_buffer else {}
    with dask.config.set(config), \
            LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                         memory_limit=args.memory_limit, host="127.0.0.1",
                         dashboard_address="127.0.0.1:0", local_directory=str(local_directory),
                         silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
        workers = client.run(os.getpid)  # {address: pid}
        names = {pid: f"worker {i}" for i, pid in enumerate(workers.values())}
        limit = next(iter(client.scheduler_info(n_workers=-1)["workers"].values()))["memory_limit"]
        ds = engine.open_cohort(store)
        sets = random_sets(ds.sizes["gene"], args.sets)
        t_start = time.perf_counter() - sampler.t0
        t = time.perf_counter()
        result = single_sample_scores(ds, sets, method="ssgsea", normalize=True,
                                      samples_per_chunk=args.samples_per_chunk)
        write = result.to_zarr(out, mode="w", zarr_format=3, compute=False, consolidated=True)
        future = client.compute(write)
        wait(future)
        failure = None if future.status == "finished" else repr(future.exception())
        wall = time.perf_counter() - t
        t_end = time.perf_counter() - sampler.t0
        spilled = client.run(lambda dask_worker: getattr(dask_worker.data, "cumulative_metrics",
                                                         {}).get(("disk-write", "bytes"), 0.0))
        worker_logs = client.get_worker_logs()
        p2p = any("rechunk-p2p" in name for name in result["score"].data.dask.layers)
        method = "peer-to-peer, on disk" if p2p else "in-memory tasks"
    sampler.stop()
    logging.getLogger("distributed").removeHandler(records)
    logged = list(records.lines)
    for address, lines in worker_logs.items():
        logged += [f"{address}: {msg.strip()}" for level, msg in lines
                     if level in ("WARNING", "ERROR", "CRITICAL")]
    return {"wall": wall, "t_start": t_start, "t_end": t_end, "names": names, "limit": limit,
            "samples": sampler.samples, "spilled": sum(spilled.values()), "warnings": logged,
            "method": method, "failure": failure,
            "result": None if failure else xr.open_zarr(out)}


def report_rss(run: dict) -> None:
    me = os.getpid()
    names = {me: "client + scheduler", **run["names"]}
    peaks: dict[int, int] = {}
    for _, rss in run["samples"]:
        for pid, value in rss.items():
            peaks[pid] = max(peaks.get(pid, 0), value)
    print(f"peak RSS over the whole run (memory_limit per worker {run['limit'] / MB:.0f} MiB):")
    for pid, peak in sorted(peaks.items(), key=lambda kv: -kv[1]):
        if peak > 40 * MB or pid in names:
            print(f"  {names.get(pid, f'other child pid {pid}'):24s} {peak / MB:8.0f} MiB")
    workers = [pid for pid in names if pid != me]
    print("RSS (MiB) over the computation, sampled every 0.5 s:")
    print(f"  {'% of run':>8s} {'seconds':>8s} {'client+sched':>12s} "
          + " ".join(f"{names[p]:>9s}" for p in workers))
    t0, t1 = run["t_start"], run["t_end"]
    inside = [(t, rss) for t, rss in run["samples"] if t0 <= t <= t1]
    for tenth in range(11):
        target = t0 + (t1 - t0) * tenth / 10
        t, rss = min(inside, key=lambda s: abs(s[0] - target))
        print(f"  {tenth * 10:7d}% {t - t0:8.1f} {rss.get(me, 0) / MB:12.0f} "
              + " ".join(f"{rss.get(p, 0) / MB:9.0f}" for p in workers))


def main() -> None:
    warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=50000)
    parser.add_argument("--store", type=Path, default=None,
                        help="reuse this store; written there (and kept) when it does not exist")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="1.5GB", help="per worker")
    parser.add_argument("--sets", type=int, default=50)
    parser.add_argument("--samples-per-chunk", type=int, default=256)
    parser.add_argument("--p2p-bytes", type=int, default=None,
                        help="override engine.stats.features.P2P_RECHUNK_BYTES (testing)")
    parser.add_argument("--p2p-buffer", default=None,
                        help="distributed.p2p.comm.buffer of the workers (Dask's default: 1 GiB)")
    parser.add_argument("--tmp", type=Path, default=None, help="directory for temporary data")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="bench_ssgsea_memory-") as tmp:
        tmp = Path(tmp)
        store = args.store or tmp / "cohort.zarr"
        write_s = None
        if not store.exists():
            t = time.perf_counter()
            write_store(store, args.genes, args.samples)
            write_s = time.perf_counter() - t
        array = zarr.open_array(store / "expression", mode="r")
        read_s = bare_read(store)
        block_s, n_blocks = kernel_time(store, random_sets(array.shape[0], args.sets),
                                        args.samples_per_chunk)
        (tmp / "workers").mkdir()
        run = run_ssgsea(store, tmp / "scores.zarr", args, tmp / "workers")
        if run["failure"] is None:
            score = run["result"]["score"].values
            scores = (f"scores: {score.shape}, {int(np.isfinite(score).sum())} finite, range "
                      f"after normalisation {float(np.nanmax(score) - np.nanmin(score)):.6f}")
        else:
            scores = f"FAILED: {run['failure']}"

    gb = array.nbytes / 1e9
    ram = psutil.virtual_memory().total / 2**30
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{ram:.0f} GiB RAM, Python {platform.python_version()}")
    print(f"matrix: {array.shape[0]} genes x {array.shape[1]} samples float32 ({gb:.2f} GB), "
          f"chunks {array.chunks}; {args.sets} sets of 15..200 genes; "
          f"{args.workers} workers x 1 thread x {args.memory_limit} "
          f"({run['limit'] * args.workers / 1e9:.2f} GB in all)")
    if write_s is not None:
        print(f"store written in {write_s:.1f} s")
    buffer = args.p2p_buffer or dask.config.get("distributed.p2p.comm.buffer")
    print(f"rechunk (engine.stats.features.by_sample): {run['method']}, "
          f"{args.samples_per_chunk} samples per block; p2p comm buffer {buffer} per worker")
    kernel_s = block_s * n_blocks
    print(f"(a) bare read of every chunk (zarr): {read_s:8.1f} s")
    print(f"(b) ssgsea_block in memory, {n_blocks} blocks x {block_s:.2f} s: {kernel_s:8.1f} s "
          f"(one process)")
    print(f"engine ssGSEA + normalise + to_zarr: {run['wall']:8.1f} s   "
          f"ratio engine / (a) = {run['wall'] / read_s:.1f}, "
          f"engine / ((a) + (b)) = {run['wall'] / (read_s + kernel_s):.2f}")
    print(scores)
    print(f"spilled to disk by workers: {run['spilled'] / MB:.0f} MiB")
    report_rss(run)
    counts = {kind: sum(any(w in line for w in words) for line in run["warnings"])
              for kind, words in PROBLEMS.items()}
    print("worker events: " + ", ".join(f"{kind} {n}" for kind, n in counts.items())
          + f"; all {len(run['warnings'])} warnings:")
    for line in run["warnings"][:20]:
        print(f"  {line[:200]}")


if __name__ == "__main__":
    main()
