"""What a run records of the cluster it ran on: Dask's performance report and peak memory.

``monitored(client, report)`` wraps the computation of a job or a sweep: it saves
``distributed.performance_report`` (task stream, worker profiles, bandwidth: the dashboard's
plots as one HTML file) and measures the peak resident memory of every worker process and of
the client during the block.

Peak memory is the kernel's high-water mark of each process (``VmHWM`` in
``/proc/self/status``), reset when the block starts (writing ``5`` to
``/proc/self/clear_refs``), so a long-lived worker of an existing cluster reports this run's
peak, not its lifetime's. Where the reset is not possible (not Linux, or not permitted) the
high-water mark since the process started is reported and ``peak_since`` says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import dask
import psutil
from distributed import Client, performance_report

from engine.store.cohort import MAX_BLOCK_BYTES

log = logging.getLogger(__name__)


def reset_peak_rss() -> str:
    """Reset this process's high-water mark of resident memory; returns from when the next
    ``peak_rss`` counts ("run" after a reset, "process start" where one is impossible)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "run"
    except OSError:
        return "process start"


def peak_rss() -> int:
    """The high-water mark of this process's resident memory in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _worker_peak(dask_worker) -> dict:
    return {"peak_rss_bytes": peak_rss(), "memory_limit_bytes": dask_worker.memory_manager.memory_limit,
            "pid": os.getpid()}


def peak_memory(client: Client, since: dict[str, str]) -> dict:
    """Peak resident memory of every worker process (and this client process) since
    ``reset_peaks``; a worker that joined later (e.g. restarted after a loss) counts from its
    start. ``max_worker_peak_rss_bytes`` and the smallest worker limit summarise it."""
    workers = client.run(_worker_peak)
    for address, w in workers.items():
        w["peak_since"] = since.get(address, "worker start")
    peaks = [w["peak_rss_bytes"] for w in workers.values()]
    limits = [w["memory_limit_bytes"] for w in workers.values() if w["memory_limit_bytes"]]
    return {"max_worker_peak_rss_bytes": max(peaks, default=None),
            "worker_memory_limit_bytes": min(limits, default=None),
            "client_peak_rss_bytes": peak_rss(),
            "workers": workers}


def reset_peaks(client: Client) -> dict[str, str]:
    """Reset the high-water marks of every worker and of this process; returns, by worker
    address, from when each will count."""
    reset_peak_rss()
    return client.run(reset_peak_rss)


@contextlib.contextmanager
def monitored(client: Client, report: Path | None) -> Iterator[dict]:
    """Measure the block: yields a dict that holds ``{"memory": peak_memory(...)}`` after the
    block (also when it fails), and saves Dask's performance report to ``report`` (HTML)."""
    record: dict = {}
    since = reset_peaks(client)
    with contextlib.ExitStack() as stack:
        if report is not None:
            stack.enter_context(client.as_current())
            # inline: the report opens from disk with no network (bokeh from a CDN would not)
            stack.enter_context(performance_report(filename=str(report), mode="inline"))
        try:
            yield record
        finally:
            try:
                record["memory"] = peak_memory(client, since)
            except Exception as e:  # a lost cluster must not hide the block's own error
                log.warning("peak memory not measured: %s", e)


#: A task's block of the cohort, in float64, gets at most this share of its worker's memory
#: per thread: the kernels hold a few float64 temporaries of the block (squares, ranks,
#: masks, one permutation or replicate block of products), and Dask needs room to spill.
BLOCK_SHARE = 1 / 16


def block_budget(client: Client) -> int | None:
    """Bytes of the largest cohort block a task should hold on ``client``'s workers: the
    smallest worker memory limit per thread times ``BLOCK_SHARE``; None where no worker has
    a memory limit."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    per_thread = [w["memory_limit"] / max(w.get("nthreads", 1), 1)
                  for w in workers if w.get("memory_limit")]
    return int(min(per_thread) * BLOCK_SHARE) if per_thread else None


@contextlib.contextmanager
def blocks_for(client: Client) -> Iterator[int | None]:
    """Within the block, cohorts open (``engine.store.open_cohort``) with blocks that fit
    ``client``'s workers' memory (``block_budget``); yields the budget in bytes."""
    budget = block_budget(client)
    with dask.config.set({MAX_BLOCK_BYTES: budget}):
        yield budget


class RssSampler(threading.Thread):
    """The largest resident set size of each of ``pids``, read from outside every
    ``interval`` seconds until ``done`` is set (a check of ``peak_memory``'s own record, for
    tests and benchmarks; a process that has exited keeps its last reading)."""

    def __init__(self, pids, interval: float = 0.05):
        super().__init__(daemon=True)
        self.processes = {pid: psutil.Process(pid) for pid in pids}
        self.peak = dict.fromkeys(pids, 0)
        self.interval = interval
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(self.interval):
            for pid, p in self.processes.items():
                try:
                    self.peak[pid] = max(self.peak[pid], p.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
