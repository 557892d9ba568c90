"""Start what a cluster profile describes: a LocalCluster, a dask-jobqueue cluster, a
dask-kubernetes DaskCluster, or a connection to a running scheduler, with TLS when asked.

dask-jobqueue and dask-kubernetes are optional (extras ``jobqueue`` and ``kubernetes``); they are
imported only when a profile of their kind is used, and a missing one is an InputError that
says what to install.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys

import dask
from dask.utils import parse_bytes
from distributed import Client, LocalCluster
from distributed.security import Security

from engine.cluster.profiles import (KubernetesProfile, LocalProfile, PBSProfile,
                                     SchedulerProfile, SlurmProfile, TLS)
from engine.errors import InputError

#: distributed's nanny lowers glibc's malloc thresholds in worker processes (to return memory
#: to the OS sooner); the engine's kernels allocate many medium temporaries per block, which
#: then go through mmap/munmap each time: DESeq2 ran 2.8x slower in worker processes (12.1 s
#: vs 4.3 s, benchmarks/bench_deseq2.py). Thresholds of 16 MiB / 256 MiB let them be reused.
MALLOC = {"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 2**24,
          "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 2**28}



def malloc_config(memory_limit: int | None = None) -> dict:
    """``MALLOC``, with thresholds no larger than a 16th (trim) and a 64th (mmap) of a
    worker's ``memory_limit`` in bytes: memory a small worker frees must go back to the
    operating system, or its resident size (which the nanny watches) stays at its peak."""
    if not memory_limit:
        return dict(MALLOC)
    trim, mmap = (f"distributed.nanny.pre-spawn-environ.MALLOC_{n}_THRESHOLD_"
                  for n in ("TRIM", "MMAP"))
    return {trim: min(MALLOC[trim], int(memory_limit) // 16),
            mmap: min(MALLOC[mmap], int(memory_limit) // 64)}


@contextlib.contextmanager
def pre_spawn_settings(config: dict):
    """``config`` (``distributed.nanny.pre-spawn-environ.*``) for the nannies started in the
    block. distributed lets this process's environment override that config, and a nanny
    started in this process copies its values into the environment: after a first
    LocalCluster, later ones would get its values. So the variables are set here too, and
    restored afterwards."""
    names = {key.rpartition(".")[2]: str(value) for key, value in config.items()}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        with dask.config.set(config):
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
#: the optional package each kind needs: (module, distribution, extra)
OPTIONAL = {"slurm": ("dask_jobqueue", "dask-jobqueue", "jobqueue"),
            "pbs": ("dask_jobqueue", "dask-jobqueue", "jobqueue"),
            "kubernetes": ("dask_kubernetes.operator", "dask-kubernetes", "kubernetes")}


def optional_module(profile):
    """The optional module ``profile``'s kind needs; InputError with the pip line if missing."""
    name, package, extra = OPTIONAL[profile.kind]
    try:
        return importlib.import_module(name)
    except ImportError:
        raise InputError(f"profile {profile.profile_name!r} needs {package}: "
                         f"pip install 'cohort-engine[{extra}]'") from None


def security(tls: TLS | None) -> Security | None:
    """distributed's Security for a profile's TLS block (one certificate for client, scheduler
    and workers), or None without one; InputError naming a certificate file that is missing."""
    if tls is None:
        return None
    for field in ("ca_file", "cert", "key"):
        path = getattr(tls, field)
        if not path.is_file():
            raise InputError(f"TLS file {path} (security.{field}) does not exist")
    ca, cert, key = str(tls.ca_file), str(tls.cert), str(tls.key)
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key,
                    tls_scheduler_cert=cert, tls_scheduler_key=key, tls_worker_cert=cert,
                    tls_worker_key=key, require_encryption=tls.require_encryption)


def dashboard_link(dashboard_address: str) -> dict:
    """dask config that makes the printed link name the dashboard's loopback host: by default
    it names the scheduler's host, where a loopback-bound dashboard does not answer."""
    host = dashboard_address.rpartition(":")[0]
    if host not in LOOPBACK_HOSTS:
        return {}
    return {"distributed.dashboard.link": f"http://{host}:{{port}}/status"}


def local_cluster(*, workers: int | None = None, threads_per_worker: int | None = None,
                  processes: bool = True, memory_limit: str | int = "auto",
                  dashboard_address: str = "127.0.0.1:8787", local_directory=None,
                  tls: Security | None = None) -> LocalCluster:
    """A LocalCluster: ``workers`` processes (default one per core) or one threaded worker,
    listening on loopback only (tls:// with ``tls``), with the engine's malloc thresholds."""
    cores = os.cpu_count() or 1
    n = workers or (cores if processes else 1)
    threads = threads_per_worker or (max(1, cores // n) if processes else cores)
    # threads use in-process comms; worker processes (and TLS) listen on loopback only
    network = {"host": "127.0.0.1"} if processes or tls is not None else {}
    if tls is not None:
        network.update(protocol="tls://", security=tls)
    if local_directory is not None:
        network["local_directory"] = str(local_directory)
    limit = None
    if memory_limit not in ("auto", None):
        limit = parse_bytes(memory_limit) if isinstance(memory_limit, str) else memory_limit
    with pre_spawn_settings(malloc_config(limit)):
        return LocalCluster(
            n_workers=n, threads_per_worker=threads, processes=processes,
            memory_limit=memory_limit, dashboard_address=dashboard_address,
            worker_dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR, **network)


# -- dask-jobqueue ------------------------------------------------------------------------------

def malloc_environment(memory_limit: int | None = None) -> str:
    """A shell line giving batch-job workers the engine's malloc thresholds for workers of
    ``memory_limit`` bytes (``malloc_config``): exported as the variables themselves and as the
    config that dask passes to its own subprocesses, which the nanny on the compute node
    reads."""
    config = malloc_config(memory_limit)
    nested: dict = {}
    for key, value in config.items():
        *path, leaf = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    # the variables themselves too: distributed lets the environment override the config
    plain = " ".join(f"{key.rpartition('.')[2]}={value}" for key, value in config.items())
    return f"export {plain} DASK_INTERNAL_INHERIT_CONFIG={dask.config.serialize(nested)}"


def lifetime_arguments(profile: SlurmProfile | PBSProfile) -> list[str]:
    """``dask worker`` arguments that retire a worker before the walltime ends its job."""
    life = profile.worker_lifetime
    if life is None:
        return []
    args = ["--lifetime", str(life.lifetime), "--lifetime-stagger", str(life.stagger)]
    return args + (["--lifetime-restart"] if life.restart else [])


def worker_memory(profile: SlurmProfile | PBSProfile) -> int:
    """Bytes of memory of each worker process of a batch job: the job's over its processes."""
    return int(parse_bytes(str(profile.memory)) // (profile.processes or 1))


def jobqueue_arguments(profile: SlurmProfile | PBSProfile) -> dict:
    """Keyword arguments of SLURMCluster / PBSCluster for the profile (None: dask's defaults)."""
    kwargs = dict(
        queue=profile.queue, account=profile.account, cores=profile.cores,
        processes=profile.processes, memory=str(profile.memory), walltime=profile.walltime,
        job_script_prologue=[malloc_environment(worker_memory(profile)),
                             *profile.job_script_prologue],
        job_extra_directives=list(profile.job_extra_directives),
        worker_extra_args=[*profile.worker_extra_args, *lifetime_arguments(profile)],
        interface=profile.interface, local_directory=profile.local_directory,
        log_directory=profile.log_directory, python=profile.python,
        scheduler_options={"dashboard_address": profile.dashboard_address},
        security=security(profile.security), silence_logs="error")
    if isinstance(profile, PBSProfile):
        kwargs["resource_spec"] = profile.resource_spec
    return {k: v for k, v in kwargs.items() if v is not None}


def jobqueue_cluster(profile: SlurmProfile | PBSProfile):
    """The SLURMCluster / PBSCluster for the profile: its scheduler starts in this process; no
    job is submitted until it is scaled (``scale_cluster``). ``.job_script()`` shows the batch
    script each job will run."""
    jobqueue = optional_module(profile)
    cls = jobqueue.SLURMCluster if profile.kind == "slurm" else jobqueue.PBSCluster
    return cls(**jobqueue_arguments(profile))


# -- dask-kubernetes ----------------------------------------------------------------------------

def kubernetes_spec(profile: KubernetesProfile) -> dict:
    """The DaskCluster resource (a dict, as ``kubectl apply`` takes it) for the profile, made by
    dask-kubernetes' ``make_cluster_spec``; starts nothing.

    The scheduler and the workers are started with ``dask scheduler`` / ``dask worker`` (the
    ``dask-scheduler`` script that the template names no longer exists in distributed)."""
    operator = optional_module(profile)
    resources = None if profile.resources is None else profile.resources.model_dump(
        exclude_none=True)
    spec = operator.make_cluster_spec(
        name=profile.name, image=profile.image, n_workers=profile.n_workers,
        resources=resources, env=dict(profile.env) or None,
        worker_command=list(profile.worker_command),
        scheduler_service_type=profile.scheduler_service_type)
    if profile.namespace is not None:
        spec["metadata"]["namespace"] = profile.namespace
    (scheduler,) = spec["spec"]["scheduler"]["spec"]["containers"]
    scheduler["args"] = ["dask", "scheduler", "--host", "0.0.0.0"]
    if profile.scheduler_resources is not None:
        scheduler["resources"] = profile.scheduler_resources.model_dump(exclude_none=True)
    return spec


def kubernetes_cluster(profile: KubernetesProfile, *, quiet: bool = False):
    """A KubeCluster created from ``kubernetes_spec(profile)``; deleted when closed."""
    operator = optional_module(profile)
    return operator.KubeCluster(custom_cluster_spec=kubernetes_spec(profile),
                                namespace=profile.namespace, shutdown_on_close=True, quiet=quiet)


# -- any kind -----------------------------------------------------------------------------------

def start_cluster(profile, *, quiet: bool = False):
    """The cluster the engine starts for ``profile`` (None for ``kind: scheduler``), scaled as
    the profile says (fixed jobs / workers, or adaptive)."""
    if isinstance(profile, SchedulerProfile):
        return None
    if isinstance(profile, LocalProfile):
        return local_cluster(
            workers=profile.workers, threads_per_worker=profile.threads_per_worker,
            processes=profile.processes, memory_limit=profile.memory_limit,
            dashboard_address=profile.dashboard_address,
            local_directory=profile.local_directory, tls=security(profile.security))
    if isinstance(profile, KubernetesProfile):
        cluster = kubernetes_cluster(profile, quiet=quiet)
    else:
        cluster = jobqueue_cluster(profile)
    try:
        scale_cluster(cluster, profile, quiet=quiet)
    except BaseException:
        cluster.close()
        raise
    return cluster


def scale_cluster(cluster, profile: SlurmProfile | PBSProfile | KubernetesProfile, *,
                  quiet: bool = False) -> None:
    """Scale a batch-job or Kubernetes cluster as its profile says: adaptive between its
    bounds, or a fixed number of jobs (Kubernetes: the spec's n_workers)."""
    adaptive = profile.adaptive
    if isinstance(profile, KubernetesProfile):
        if adaptive is not None:
            cluster.adapt(minimum=adaptive.minimum, maximum=adaptive.maximum)
        return
    if adaptive is not None:
        cluster.adapt(minimum_jobs=adaptive.minimum_jobs, maximum_jobs=adaptive.maximum_jobs)
        scaling = (f"adaptive, {adaptive.minimum_jobs}-{adaptive.maximum_jobs} jobs as the "
                   "load needs")
    else:
        cluster.scale(jobs=profile.jobs)
        scaling = f"{profile.jobs} job{'s' * (profile.jobs != 1)} submitted"
    if not quiet:
        print(f"{profile.kind.upper()}: {scaling}; workers join as the queue starts them",
              file=sys.stderr, flush=True)


def scheduler_client(profile: SchedulerProfile, tls: Security | None) -> Client:
    """A client of the running scheduler; InputError naming the profile if it cannot connect."""
    try:
        return Client(profile.address, security=tls, timeout=profile.timeout)
    except (OSError, TimeoutError) as e:
        raise InputError(f"profile {profile.profile_name!r}: could not connect to the "
                         f"scheduler at {profile.address} (timeout {profile.timeout}): {e}; is "
                         "it running, and are the address and certificates right?") from None


def connect(profile, *, quiet: bool = False) -> tuple[Client, object | None, dict]:
    """(client, the cluster the engine started or None, dask config for the session)."""
    tls = security(profile.security)
    cluster = start_cluster(profile, quiet=quiet)
    try:
        if cluster is None:
            client = scheduler_client(profile, tls)
        else:
            client = Client(cluster, security=tls)
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    address = getattr(profile, "dashboard_address", None)
    return client, cluster, dashboard_link(address) if address else {}
