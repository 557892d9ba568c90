"""Connect to Dask: an embedded LocalCluster by default, or an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster


def describe(client: Client) -> dict:
    """What the job ran on, for provenance: scheduler address, workers, threads, memory."""
    info = client.scheduler_info(n_workers=-1)
    workers = info.get("workers", {})
    return {
        "scheduler": client.scheduler.address,
        "dashboard": client.dashboard_link,
        "workers": len(workers),
        "threads": sum(w.get("nthreads", 0) for w in workers.values()),
        "memory_limit_bytes": sum(w.get("memory_limit", 0) or 0 for w in workers.values()),
    }


#: distributed's nanny lowers glibc's malloc thresholds in worker processes (to return memory
#: to the OS sooner); the engine's kernels allocate many medium temporaries per block, which
#: then go through mmap/munmap each time: DESeq2 ran 2.8x slower in worker processes (12.1 s
#: vs 4.3 s, benchmarks/bench_deseq2.py). Thresholds of 16 MiB / 256 MiB let them be reused.
MALLOC = {"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 2**24,
          "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 2**28}


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    processes: bool = True,
    quiet: bool = False,
) -> Iterator[Client]:
    """A ``distributed.Client`` for the duration of the block; prints the dashboard link.

    ``scheduler`` (``tcp://HOST:PORT``) joins a running cluster; otherwise a LocalCluster is
    started with ``workers`` workers (default: one per core) whose dashboard listens on
    127.0.0.1 only, and is shut down afterwards.
    """
    if scheduler:
        client, cluster, config = Client(scheduler), None, {}
    else:
        cores = os.cpu_count() or 1
        n = workers or (cores if processes else 1)
        threads = max(1, cores // n) if processes else cores
        # threads use in-process comms; worker processes listen on loopback only
        network = {"host": "127.0.0.1"} if processes else {}
        with dask.config.set(MALLOC):
            cluster = LocalCluster(
                n_workers=n, threads_per_worker=threads, processes=processes,
                dashboard_address="127.0.0.1:8787", worker_dashboard_address="127.0.0.1:0",
                silence_logs=logging.ERROR, **network,
            )
        client = Client(cluster)
        # the default link names the machine's address although the server is on loopback
        config = {"distributed.dashboard.link": "http://127.0.0.1:{port}/status"}
    try:
        with dask.config.set(config):
            if not quiet:
                print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
            yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
