"""A real multi-process Dask cluster on loopback for tests: ``dask scheduler`` and ``dask worker``
started as subprocesses, as a user starts them by hand (README: Running on an existing cluster).

Every process is started in its own session (process group), so that the whole group (a nanny,
its worker process and multiprocessing's resource tracker) is ended when the block exits, also
when a test fails; no process survives the ``with`` block.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from distributed import Client, Security

#: how the CLI entry points are run when the environment has no ``dask`` console script
MODULES = {"scheduler": "distributed.cli.dask_scheduler", "worker": "distributed.cli.dask_worker"}


def dask_command(role: str) -> list[str]:
    """The command that starts a ``role`` (scheduler or worker) with this interpreter's
    environment: its ``dask`` console script, else the module entry point."""
    script = Path(sys.executable).with_name("dask")
    if script.exists():
        return [str(script), role]
    return [sys.executable, "-m", MODULES[role]]


def tls_arguments(security: Mapping[str, str] | None) -> list[str]:
    """CLI flags for a TLS scheduler or worker from a profile-style ``security`` mapping
    (``ca_file``, ``cert``, ``key``); none without one."""
    if not security:
        return []
    return ["--protocol", "tls", "--tls-ca-file", str(security["ca_file"]),
            "--tls-cert", str(security["cert"]), "--tls-key", str(security["key"])]


def client_security(security: Mapping[str, str] | None) -> Security | None:
    """The ``distributed.Security`` a client needs to join a TLS cluster (same mapping)."""
    if not security:
        return None
    return Security(tls_ca_file=str(security["ca_file"]), tls_client_cert=str(security["cert"]),
                    tls_client_key=str(security["key"]), require_encryption=True)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _start(command: list[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=dict(env),
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _end(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process's group, wait up to ``grace`` s for the leader, then SIGKILL
    whatever of the group is left (a worker process whose nanny died first, the tracker)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _scheduler_address(scheduler_file: Path, process: subprocess.Popen, log: Path,
                       timeout: float) -> str:
    """The address the scheduler wrote to its scheduler file, once it is listening."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dask scheduler exited with {process.returncode}:\n"
                               + _log_tail(log))
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            return json.loads(scheduler_file.read_text())["address"]
        time.sleep(0.1)
    raise RuntimeError(f"dask scheduler wrote no {scheduler_file} in {timeout} s:\n"
                       + _log_tail(log))


@dataclass
class LoopbackCluster:
    """A running loopback cluster: its scheduler ``address``, the ``scheduler`` and
    ``workers`` processes (``dask worker`` i is named ``loopback-i``), a ``client`` connected
    to it (with the cluster's certificates), and the ``directory`` with logs and scratch."""

    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]
    client: Client
    directory: Path
    security: Security | None = None
    logs: dict[str, Path] = field(default_factory=dict)

    def worker_address(self, i: int) -> str:
        """The scheduler's address for worker ``i`` now (a nanny restarts it on a new one)."""
        name = f"loopback-{i}"
        for address, info in self.client.scheduler_info(n_workers=-1)["workers"].items():
            if info.get("name") == name:
                return address
        raise LookupError(f"no worker named {name} is registered with {self.address}")

    def worker_pid(self, i: int) -> int:
        """The process id of worker ``i``'s worker process (with a nanny: the nanny's child,
        not ``workers[i].pid``)."""
        address = self.worker_address(i)
        return self.client.run(os.getpid, workers=[address])[address]

    def kill_worker(self, i: int, sig: int = signal.SIGKILL) -> str:
        """Send ``sig`` (SIGKILL: no clean-up, as a machine lost) to worker ``i``'s worker
        process; returns the address the scheduler knew it by."""
        address = self.worker_address(i)
        pid = self.client.run(os.getpid, workers=[address])[address]
        os.kill(pid, sig)
        return address

    def log(self, name: str) -> str:
        """The end of a process's log (``scheduler`` or ``worker-i``), for failure messages."""
        return _log_tail(self.logs[name])


@contextlib.contextmanager
def loopback_cluster(n_workers: int = 2, nthreads: int = 1, memory_limit: str | int | None = None,
                     security: Mapping[str, str] | None = None,
                     env: Mapping[str, str] | None = None, *, nanny: bool = True,
                     directory: Path | None = None,
                     timeout: float = 60.0) -> Iterator[LoopbackCluster]:
    """A ``dask scheduler`` and ``n_workers`` ``dask worker`` processes (one worker process of
    ``nthreads`` threads each, under a nanny unless ``nanny=False``) on 127.0.0.1, dashboards
    on free loopback ports; yielded once every worker has registered.

    ``memory_limit`` is passed as ``--memory-limit`` (default: dask's, a share of the machine's
    memory); ``security`` (``ca_file``, ``cert``, ``key``, as ``tests/tls_certs.make_certificates``
    returns) makes every process speak TLS only; ``env`` is added to the processes' environment
    (e.g. ``DASK_DISTRIBUTED__...`` settings). Logs and worker scratch space are kept in
    ``directory`` (default: a temporary directory removed afterwards).
    """
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="loopback-")))
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        environ = {**os.environ, **(env or {})}
        scheduler_file = directory / "scheduler.json"
        logs = {"scheduler": directory / "scheduler.log"}
        processes: list[subprocess.Popen] = []
        client = None
        try:
            scheduler = _start(
                dask_command("scheduler") + [
                    "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
                    "--scheduler-file", str(scheduler_file), *tls_arguments(security)],
                logs["scheduler"], environ)
            processes.append(scheduler)
            address = _scheduler_address(scheduler_file, scheduler, logs["scheduler"], timeout)
            workers = []
            for i in range(n_workers):
                logs[f"worker-{i}"] = directory / f"worker-{i}.log"
                command = dask_command("worker") + [
                    address, "--host", "127.0.0.1", "--nworkers", "1",
                    "--nthreads", str(nthreads), "--name", f"loopback-{i}",
                    "--dashboard-address", "127.0.0.1:0",
                    "--local-directory", str(directory / f"worker-{i}"),
                    # a worker whose scheduler is gone stops by itself
                    "--death-timeout", str(int(timeout)),
                    "--nanny" if nanny else "--no-nanny", *tls_arguments(security)]
                if memory_limit is not None:
                    command += ["--memory-limit", str(memory_limit)]
                workers.append(_start(command, logs[f"worker-{i}"], environ))
                processes.append(workers[-1])
            client = Client(address, security=client_security(security), timeout=timeout)
            try:
                client.wait_for_workers(n_workers, timeout=timeout)
            except TimeoutError as e:
                tails = "\n".join(f"--- {name}\n{_log_tail(path)}" for name, path in logs.items())
                raise RuntimeError(f"{n_workers} workers did not register with {address} in "
                                   f"{timeout} s:\n{tails}") from e
            yield LoopbackCluster(address=address, scheduler=scheduler, workers=workers,
                                  client=client, directory=directory,
                                  security=client_security(security), logs=logs)
        finally:
            if client is not None:
                client.close()
            for process in reversed(processes):  # workers first, then the scheduler
                _end(process)
