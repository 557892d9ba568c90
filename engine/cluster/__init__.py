"""Connect to Dask: an embedded LocalCluster by default, an existing scheduler, or the cluster a
profile describes (``engine.cluster.profiles``; started by ``engine.cluster.deploy``)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import dask
from distributed import Client

from engine.cluster.deploy import MALLOC, connect, dashboard_link, local_cluster
from engine.cluster.profiles import as_profile
from engine.errors import InputError

__all__ = ["MALLOC", "dask_client", "describe"]

#: dask config key holding the name of the profile the current client was made from
PROFILE_KEY = "cohort-engine.profile"


def describe(client: Client) -> dict:
    """What the job ran on, for provenance: scheduler address, workers, threads, memory, and
    the cluster profile (None without one)."""
    info = client.scheduler_info(n_workers=-1)
    workers = info.get("workers", {})
    return {
        "scheduler": client.scheduler.address,
        "dashboard": client.dashboard_link,
        "workers": len(workers),
        "threads": sum(w.get("nthreads", 0) for w in workers.values()),
        "memory_limit_bytes": sum(w.get("memory_limit", 0) or 0 for w in workers.values()),
        "profile": dask.config.get(PROFILE_KEY, None),
    }


def refuse_flags_with_profile(*, scheduler, workers, processes) -> None:
    """A profile says where a job runs; --scheduler, --workers and --threads say it too."""
    given = [flag for flag, value in (("--scheduler", scheduler), ("--workers", workers),
                                      ("--threads", not processes)) if value]
    if given:
        raise InputError(f"--profile conflicts with {' and '.join(given)}: a profile says where "
                         "the job runs (give workers and threads in a local profile, an address "
                         "in a scheduler profile), or drop --profile")


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    *,
    workers: int | None = None,
    processes: bool = True,
    quiet: bool = False,
    profile=None,
) -> Iterator[Client]:
    """A ``distributed.Client`` for the duration of the block; prints the dashboard link.

    ``scheduler`` (``tcp://HOST:PORT``) joins a running cluster; ``profile`` (a name, a YAML
    path or a loaded profile) makes the cluster it describes; otherwise a LocalCluster is
    started with ``workers`` workers (default: one per core) whose dashboard listens on
    127.0.0.1 only. A cluster the engine started is shut down afterwards (batch jobs cancelled,
    Kubernetes resources deleted).
    """
    if profile is not None:
        refuse_flags_with_profile(scheduler=scheduler, workers=workers, processes=processes)
        profile = as_profile(profile)
        client, cluster, config = connect(profile, quiet=quiet)
        config[PROFILE_KEY] = profile.profile_name
    elif scheduler:
        client, cluster, config = Client(scheduler), None, {}
    else:
        cluster = local_cluster(workers=workers, processes=processes)
        client = Client(cluster)
        config = dashboard_link("127.0.0.1:8787")
    try:
        with dask.config.set(config):
            if not quiet:
                print(f"Dask dashboard: {client.dashboard_link}", file=sys.stderr, flush=True)
            yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
