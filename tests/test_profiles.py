"""Cluster profiles: loading and lookup, the batch scripts and Kubernetes resources they render,
and the local and TLS clusters they start."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import psutil
import pytest
import yaml
from dask.utils import parse_bytes
from distributed import LocalCluster
from distributed.security import Security

from engine.cluster import MALLOC, dask_client, describe
from engine.cluster.deploy import (jobqueue_cluster, kubernetes_spec, malloc_environment,
                                   security)
from engine.cluster.profiles import (KINDS, PROFILES_VARIABLE, TLS, load_profile,
                                     pbs_walltime_seconds, profile_from_mapping,
                                     slurm_walltime_seconds)
from engine.errors import InputError

REPOSITORY_PROFILES = Path(__file__).resolve().parents[1] / "cluster"
#: the bundled profiles ask for dashboard port 8787; another cluster on the machine may hold it
BUNDLED_DASHBOARD_PORT = pytest.mark.filterwarnings("ignore:Port 8787 is already in use")


def raw(name: str) -> dict:
    """A bundled profile as plain YAML, independent of the engine's models."""
    return yaml.safe_load((REPOSITORY_PROFILES / f"{name}.yaml").read_text())


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No profile folders but the bundled ones: an empty working directory and home."""
    monkeypatch.delenv(PROFILES_VARIABLE, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- loading and lookup -------------------------------------------------------------------------

def test_every_bundled_profile_loads_by_name(isolated):
    names = sorted(p.stem for p in REPOSITORY_PROFILES.glob("*.yaml"))
    assert {"local", "scheduler", "slurm", "pbs", "kubernetes", "tls"} <= set(names)
    kinds = set()
    for name in names:
        profile = load_profile(name)
        assert profile.kind == raw(name)["kind"] and profile.profile_name == name
        # the repository's file (a copy of it when the package is installed from a wheel)
        assert profile.source.read_text() == (REPOSITORY_PROFILES / f"{name}.yaml").read_text()
        kinds.add(profile.kind)
    assert kinds == set(KINDS)
    tls = load_profile("tls")
    assert tls.security.ca_file == Path(raw("tls")["security"]["ca_file"]).expanduser()


def test_lookup_order_environment_then_working_directory_then_bundled(isolated, monkeypatch):
    first, second = isolated / "first", isolated / "second"
    write(first / "mine.yaml", "kind: local\nworkers: 1\n")
    write(second / "mine.yaml", "kind: local\nworkers: 2\n")
    write(second / "theirs.yml", "kind: local\nworkers: 3\n")
    write(isolated / "cluster" / "mine.yaml", "kind: local\nworkers: 4\n")
    write(isolated / "cluster" / "local.yaml", "kind: local\nworkers: 5\n")
    write(isolated / "cluster" / "only-here.yaml", "kind: local\nworkers: 6\n")
    write(isolated / "home/.config/cohort-engine/cluster/slurm.yaml", "kind: local\nworkers: 7\n")
    monkeypatch.setenv(PROFILES_VARIABLE, os.pathsep.join([str(first), str(second)]))

    assert load_profile("mine").workers == 1          # first folder of the variable wins
    assert load_profile("theirs").workers == 3        # .yml too, from the second folder
    assert load_profile("only-here").workers == 6     # ./cluster
    assert load_profile("local").workers == 5         # ./cluster beats the bundled local
    assert load_profile("slurm").kind == "local"      # ~/.config beats the bundled slurm
    assert load_profile("pbs").kind == "pbs"          # bundled
    assert load_profile(second / "mine.yaml").workers == 2   # a path is read as it is


def test_unknown_name_lists_the_names_found_and_where_it_looked(isolated):
    write(isolated / "cluster" / "mine.yaml", "kind: local\n")
    with pytest.raises(InputError) as error:
        load_profile("nowhere")
    message = str(error.value)
    for name in ["mine", "local", "slurm", "pbs", "kubernetes", "scheduler", "tls"]:
        assert name in message
    assert "'nowhere'" in message and "./cluster" in message and "bundled" in message
    with pytest.raises(InputError, match="does not exist"):
        load_profile(isolated / "missing.yaml")


@pytest.mark.parametrize("text, field", [
    ("kind: slurm\ncores: 4\nmemory: 8GiB\njobs: 1\nqueu: short\n", "queu"),
    ("kind: local\nmemory_limit: four gigabytes\n", "memory_limit"),
    ("kind: local\nsecurity: {ca_file: a.pem, cert: b.pem, key: c.pem, verify: no}\n",
     "security.verify"),
    ("kind: slurm\nmemory: 8GiB\njobs: 1\n", "cores"),
    ("kind: cloud\n", "kind"),
    ("workers: 2\n", "kind"),
])
def test_a_bad_field_is_one_error_naming_the_file_and_the_field(tmp_path, text, field):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(InputError) as error:
        load_profile(path)
    message = str(error.value)
    assert str(path) in message and field in message and "\n" not in message


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(InputError, match="not valid YAML"):
        load_profile(write(tmp_path / "a.yaml", "kind: [local\n"))
    with pytest.raises(InputError, match="must be a mapping"):
        load_profile(write(tmp_path / "b.yaml", "- local\n"))


def test_walltimes_read_as_each_queue_system_reads_them():
    hours = datetime.timedelta(hours=1).total_seconds()
    assert slurm_walltime_seconds("30") == datetime.timedelta(minutes=30).total_seconds()
    assert slurm_walltime_seconds("30:15") == datetime.timedelta(minutes=30, seconds=15
                                                                 ).total_seconds()
    assert slurm_walltime_seconds("01:00:00") == hours
    assert slurm_walltime_seconds("1-12") == datetime.timedelta(days=1, hours=12).total_seconds()
    assert slurm_walltime_seconds("2-03:04:05") == datetime.timedelta(
        days=2, hours=3, minutes=4, seconds=5).total_seconds()
    assert slurm_walltime_seconds("UNLIMITED") is None
    assert pbs_walltime_seconds("30") == 30  # PBS: seconds
    assert pbs_walltime_seconds("04:00:00") == 4 * hours
    with pytest.raises(ValueError):
        slurm_walltime_seconds("an hour")


def jobqueue_mapping(**fields) -> dict:
    return {"kind": "slurm", "cores": 4, "memory": "8GiB", "walltime": "01:00:00", **fields}


@pytest.mark.parametrize("fields, complaint", [
    ({}, "exactly one"),
    ({"jobs": 2, "adaptive": {"maximum_jobs": 3}}, "exactly one"),
    ({"adaptive": {"minimum_jobs": 4, "maximum_jobs": 3}}, "exceeds"),
    ({"jobs": 2, "worker_lifetime": {"lifetime": "50m"}}, "use adaptive"),
    ({"adaptive": {"maximum_jobs": 3}, "worker_lifetime": {"lifetime": "55m", "stagger": "5m"}},
     "reaches the walltime"),
    ({"jobs": 1, "walltime": "soon"}, "not a SLURM time"),
    ({"jobs": 1, "processes": 8}, "exceeds cores"),
])
def test_inconsistent_jobqueue_profiles_are_refused(fields, complaint):
    with pytest.raises(InputError, match=complaint):
        profile_from_mapping(jobqueue_mapping(**fields))


@pytest.mark.parametrize("mapping, complaint", [
    ({"kind": "scheduler", "address": "tls://h:8786"}, "needs a security block"),
    ({"kind": "scheduler", "address": "h:8786"}, "tcp:// or tls://"),
    ({"kind": "scheduler", "address": "tcp://h:8786",
      "security": {"ca_file": "a", "cert": "b", "key": "c"}}, "use tls://"),
    ({"kind": "kubernetes", "image": "x", "security": {"ca_file": "a", "cert": "b", "key": "c"}},
     "does not support TLS"),
    ({"kind": "kubernetes", "image": "x", "name": "Cohort_Engine"}, "not a DaskCluster name"),
])
def test_scheduler_and_kubernetes_profiles_check_their_addresses_and_names(mapping, complaint):
    with pytest.raises(InputError, match=complaint):
        profile_from_mapping(mapping)


# -- batch scripts (dask-jobqueue) --------------------------------------------------------------

def parse_job_script(script: str, prefix: str) -> tuple[list[str], list[str], list[str]]:
    """(directives without their prefix, prologue lines, worker command as argv)."""
    lines = [line for line in script.splitlines()[1:] if line.strip()]
    directives = [line[len(prefix):].strip() for line in lines if line.startswith(prefix + " ")]
    *prologue, command = [line for line in lines if not line.startswith("#")]
    return directives, prologue, shlex.split(command)


def option(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, f"{name} given {argv.count(name)} times in {argv}"
    return argv[argv.index(name) + 1]


def check_worker_command(argv: list[str], profile: dict, cluster) -> None:
    """The worker command runs this python's dask worker against the cluster's scheduler with
    the profile's threads, memory and spill directory."""
    processes = profile["processes"]
    assert argv[:4] == [sys.executable, "-m", "distributed.cli.dask_worker",
                        cluster.scheduler_address]
    assert int(option(argv, "--nworkers")) == processes
    assert int(option(argv, "--nthreads")) == profile["cores"] // processes
    per_process = parse_bytes(option(argv, "--memory-limit"))
    assert abs(per_process - parse_bytes(profile["memory"]) / processes) < 0.01 * 2**30
    assert option(argv, "--local-directory") == profile["local_directory"]


def check_prologue(prologue: list[str], profile: dict) -> None:
    """The engine's malloc line first, then the profile's lines in order."""
    per_process = parse_bytes(profile["memory"]) // profile.get("processes", 1)
    assert prologue == [malloc_environment(per_process), *profile["job_script_prologue"]]


@BUNDLED_DASHBOARD_PORT
def test_slurm_job_script_matches_the_profile():
    pytest.importorskip("dask_jobqueue")
    profile = raw("slurm")
    with jobqueue_cluster(load_profile(REPOSITORY_PROFILES / "slurm.yaml")) as cluster:
        script = cluster.job_script()
        directives, prologue, argv = parse_job_script(script, "#SBATCH")
        assert f"-p {profile['queue']}" in directives
        assert f"-A {profile['account']}" in directives
        assert f"--cpus-per-task={profile['cores']}" in directives
        assert f"-t {profile['walltime']}" in directives
        (memory,) = [d.removeprefix("--mem=") for d in directives if d.startswith("--mem=")]
        assert int(memory[:-1]) * 1024 ** ("KMG".index(memory[-1]) + 1) == parse_bytes(
            profile["memory"])  # SLURM's K/M/G are binary units
        extra = profile["job_extra_directives"]
        assert directives[-len(extra):] == extra
        check_prologue(prologue, profile)
        check_worker_command(argv, profile, cluster)
        life = profile["worker_lifetime"]
        assert option(argv, "--lifetime") == life["lifetime"]
        assert option(argv, "--lifetime-stagger") == life["stagger"]
        assert "--lifetime-restart" not in argv


@BUNDLED_DASHBOARD_PORT
def test_pbs_job_script_matches_the_profile():
    pytest.importorskip("dask_jobqueue")
    profile = raw("pbs")
    with jobqueue_cluster(load_profile(REPOSITORY_PROFILES / "pbs.yaml")) as cluster:
        directives, prologue, argv = parse_job_script(cluster.job_script(), "#PBS")
        assert f"-q {profile['queue']}" in directives
        assert f"-A {profile['account']}" in directives
        assert f"-l walltime={profile['walltime']}" in directives
        (select,) = [d.removeprefix("-l select=") for d in directives if d.startswith("-l select")]
        resources = dict(part.split("=") for part in select.split(":")[1:])
        assert int(resources["ncpus"]) == profile["cores"]
        units = {"B": 1, "kB": 2**10, "MB": 2**20, "GB": 2**30}  # PBS's are binary too
        unit = resources["mem"].lstrip("0123456789")
        assert int(resources["mem"].removesuffix(unit)) * units[unit] == parse_bytes(
            profile["memory"])
        extra = profile["job_extra_directives"]
        assert directives[-len(extra):] == extra
        check_prologue(prologue, profile)
        check_worker_command(argv, profile, cluster)
        assert "--lifetime" not in argv


def test_lifetime_restart_and_tls_reach_the_worker_command(tmp_path):
    pytest.importorskip("dask_jobqueue")
    from tls_certs import make_certificates

    files = make_certificates(tmp_path / "tls")
    profile = profile_from_mapping(jobqueue_mapping(
        jobs=2, worker_lifetime={"lifetime": "20m", "restart": True}, security=files,
        dashboard_address="127.0.0.1:0"))
    with jobqueue_cluster(profile) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        _, _, argv = parse_job_script(cluster.job_script(), "#SBATCH")
        assert option(argv, "--lifetime") == "20m" and "--lifetime-restart" in argv
        assert option(argv, "--protocol") == "tls://"
        assert option(argv, "--tls-ca-file") == files["ca_file"]
        assert option(argv, "--tls-cert") == files["cert"]
        assert option(argv, "--tls-key") == files["key"]


def test_the_malloc_line_gives_batch_workers_the_engines_thresholds():
    """What the job's shell exports is what a worker nanny on the node reads as its config."""
    read = ("import dask, json; print(json.dumps("
            "dask.config.get('distributed.nanny.pre-spawn-environ')))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    out = subprocess.run(["bash", "-c", f"{malloc_environment()}\n"
                          f"{shlex.quote(sys.executable)} -c {shlex.quote(read)}"],
                         env=env, capture_output=True, text=True, check=True).stdout
    environ = json.loads(out)
    for key, value in MALLOC.items():
        assert environ[key.rpartition(".")[2]] == value


def executable(path: Path, text: str) -> Path:
    write(path, text).chmod(0o755)
    return path


@pytest.mark.slow
def test_slurm_profile_submits_and_cancels_jobs_through_the_queue(tmp_path, monkeypatch):
    """A stand-in ``sbatch`` runs the job script on this machine (as SLURM would on a node):
    its worker joins, computes, and ``scancel`` ends the job when the client closes."""
    pytest.importorskip("dask_jobqueue")
    log = tmp_path / "queue.log"
    executable(tmp_path / "bin" / "sbatch", f"""#!/bin/bash
cp "$1" {tmp_path}/job-$$.sh
setsid bash {tmp_path}/job-$$.sh > {tmp_path}/job-$$.out 2>&1 < /dev/null &
echo "sbatch $!" >> {log}
echo "Submitted batch job $!"
""")
    executable(tmp_path / "bin" / "scancel", f"""#!/bin/bash
echo "scancel $1" >> {log}
kill -TERM -- -"$1"
""")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    path = write(tmp_path / "queue.yaml", "kind: slurm\ncores: 1\nprocesses: 1\nmemory: 1GiB\n"
                 "walltime: '00:10:00'\njobs: 1\ninterface: lo\ndashboard_address: 127.0.0.1:0\n"
                 "job_script_prologue: ['echo prologue ran']\n")
    try:
        with dask_client(profile=path, quiet=True) as client:
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
            info = describe(client)
            assert info["profile"] == "queue" and info["workers"] == 1
            assert info["memory_limit_bytes"] == parse_bytes("1GiB")
            (malloc,) = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()
            # scaled to the worker's 1 GiB (engine.cluster.deploy.malloc_config)
            assert int(malloc) == 2**30 // 16
        calls = log.read_text().split()
        assert calls[0] == "sbatch" and calls[2:] == ["scancel", calls[1]]
        job = psutil.Process(int(calls[1]))
        job.wait(timeout=30)
        (output,) = tmp_path.glob("job-*.out")
        assert output.read_text().startswith("prologue ran")
    finally:
        for line in log.read_text().splitlines() if log.exists() else []:
            if line.startswith("sbatch"):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(line.split()[1]), 9)


# -- Kubernetes ---------------------------------------------------------------------------------

def test_kubernetes_spec_renders_the_profile():
    pytest.importorskip("dask_kubernetes")
    profile = raw("kubernetes")
    spec = kubernetes_spec(load_profile(REPOSITORY_PROFILES / "kubernetes.yaml"))
    assert spec["kind"] == "DaskCluster" and spec["apiVersion"].startswith("kubernetes.dask.org/")
    assert spec["metadata"] == {"name": profile["name"], "namespace": profile["namespace"]}
    worker_group = spec["spec"]["worker"]
    assert worker_group["replicas"] == profile["n_workers"]
    (worker,) = worker_group["spec"]["containers"]
    (scheduler,) = spec["spec"]["scheduler"]["spec"]["containers"]
    assert worker["image"] == scheduler["image"] == profile["image"]
    assert worker["resources"] == profile["resources"]
    assert scheduler["resources"] == profile["scheduler_resources"]
    expected_env = [{"name": k, "value": v} for k, v in profile["env"].items()]
    assert worker["env"] == scheduler["env"] == expected_env
    assert spec["spec"]["scheduler"]["service"]["type"] == profile["scheduler_service_type"]
    # the image runs `dask worker` / `dask scheduler`: subcommands distributed registers
    subcommands = {e.name for e in entry_points(group="dask_cli")}
    assert worker["args"][0] == scheduler["args"][0] == "dask"
    assert {worker["args"][1], scheduler["args"][1]} <= subcommands
    json.dumps(spec)  # plain data, as kubectl takes it


def test_kubernetes_spec_without_resources_or_namespace():
    pytest.importorskip("dask_kubernetes")
    spec = kubernetes_spec(profile_from_mapping({"kind": "kubernetes", "image": "img:1",
                                                 "worker_command": "dask worker --nthreads 2"}))
    assert spec["metadata"] == {"name": "cohort-engine"}
    (worker,) = spec["spec"]["worker"]["spec"]["containers"]
    assert worker["args"][:4] == ["dask", "worker", "--nthreads", "2"]
    assert worker["resources"] is None and worker["image"] == "img:1"


def test_kubernetes_profile_creates_and_deletes_its_dask_cluster(monkeypatch):
    """KubeCluster replaced by a LocalCluster that records what it was given: the engine hands
    it the rendered spec, scales it adaptively, and closes (deletes) it at the end."""
    operator = pytest.importorskip("dask_kubernetes.operator")
    made = []

    class RecordingKubeCluster(LocalCluster):
        def __init__(self, **kwargs):
            made.append(kwargs)
            super().__init__(n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1",
                             dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)

        def adapt(self, **kwargs):
            made.append({"adapt": kwargs})
            return super().adapt(**kwargs)

    monkeypatch.setattr(operator, "KubeCluster", RecordingKubeCluster)
    path = REPOSITORY_PROFILES / "kubernetes.yaml"
    profile = raw("kubernetes")
    with dask_client(profile=path, quiet=True) as client:
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3
        assert describe(client)["profile"] == "kubernetes"
        cluster = client.cluster
    created, adapted = made
    assert created["custom_cluster_spec"] == kubernetes_spec(load_profile(path))
    assert created["namespace"] == profile["namespace"] and created["shutdown_on_close"]
    assert adapted == {"adapt": profile["adaptive"]}
    assert cluster.status.name == "closed"


@pytest.mark.parametrize("kind, module, extra", [
    ("slurm", "dask_jobqueue", "jobqueue"), ("pbs", "dask_jobqueue", "jobqueue"),
    ("kubernetes", "dask_kubernetes.operator", "kubernetes")])
def test_a_missing_extra_is_one_clear_error(isolated, monkeypatch, kind, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(InputError) as error:
        with dask_client(profile=kind, quiet=True):
            pass
    assert str(error.value) == (f"profile {kind!r} needs {module.split('.')[0].replace('_', '-')}"
                                f": pip install 'cohort-engine[{extra}]'")


# -- clusters the profiles start ----------------------------------------------------------------

@pytest.mark.parametrize("flags, named", [
    ({"scheduler": "tcp://127.0.0.1:8786"}, "--scheduler"),
    ({"workers": 2}, "--workers"),
    ({"processes": False}, "--threads"),
])
def test_profile_and_cluster_flags_conflict(flags, named):
    with pytest.raises(InputError, match=f"--profile conflicts with {named}"):
        with dask_client(profile="local", quiet=True, **flags):
            pass


def listening_hosts(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process().net_connections("inet")
            if c.laddr.port == port and c.status == psutil.CONN_LISTEN}


def test_local_profile_starts_workers_with_its_memory_limit(tmp_path, capsys, monkeypatch):
    # as an earlier LocalCluster in this process leaves it (distributed's nanny copies its
    # settings into the environment, which then overrides the config of later nannies)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    path = write(tmp_path / "small.yaml", "kind: local\nworkers: 1\nthreads_per_worker: 1\n"
                 "memory_limit: 600MiB\ndashboard_address: 127.0.0.1:0\n")
    with dask_client(profile=path) as client:
        (worker,) = client.scheduler_info(n_workers=-1)["workers"].values()
        assert worker["memory_limit"] == 600 * 2**20 and worker["nthreads"] == 1
        info = describe(client)
        assert info["profile"] == "small" and info["memory_limit_bytes"] == 600 * 2**20
        port = client.scheduler_info()["services"]["dashboard"]
        assert listening_hosts(port) == {"127.0.0.1"}
        assert client.dashboard_link == f"http://127.0.0.1:{port}/status"
        (malloc,) = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()
        assert int(malloc) == 600 * 2**20 // 16  # scaled to the limit (deploy.malloc_config)
        cluster = client.cluster
    assert cluster.status.name == "closed"
    assert f"Dask dashboard: http://127.0.0.1:{port}/status" in capsys.readouterr().err


def refused(address: str, tls) -> bool:
    """Whether the scheduler at ``address`` refuses a connection with these credentials."""
    from distributed.comm import connect

    async def attempt():
        comm = await connect(address, timeout="5s", **tls.get_connection_args("client"))
        await comm.close()

    try:
        asyncio.run(attempt())
    except OSError:
        return True
    return False


def test_tls_local_profile_runs_a_computation_and_refuses_strangers(tmp_path):
    from tls_certs import make_certificates

    files = make_certificates(tmp_path / "tls")
    stranger = make_certificates(tmp_path / "other-ca")
    path = write(tmp_path / "secure.yaml", "kind: local\nworkers: 1\nthreads_per_worker: 1\n"
                 "dashboard_address: 127.0.0.1:0\n"
                 "security: {ca_file: tls/ca.pem, cert: tls/cert.pem, key: tls/key.pem}\n")
    with dask_client(profile=path, quiet=True) as client:
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        (worker,) = client.scheduler_info()["workers"]
        assert worker.startswith("tls://127.0.0.1:")
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert not refused(address, security(TLS(**files)))
        assert refused(address, security(TLS(**stranger)))
        assert refused(address.replace("tls://", "tcp://"), Security())


def test_missing_certificate_file_is_named(tmp_path):
    path = write(tmp_path / "secure.yaml", "kind: local\nworkers: 1\n"
                 "security: {ca_file: ca.pem, cert: cert.pem, key: key.pem}\n")
    with pytest.raises(InputError, match=f"TLS file {tmp_path / 'ca.pem'} "
                                         r"\(security.ca_file\) does not exist"):
        with dask_client(profile=path, quiet=True):
            pass


def test_scheduler_profile_joins_a_running_cluster(tmp_path):
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                      host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      silence_logs=logging.ERROR) as cluster:
        path = write(tmp_path / "there.yaml",
                     f"kind: scheduler\naddress: {cluster.scheduler_address}\ntimeout: 5s\n")
        with dask_client(profile=path, quiet=True) as client:
            assert client.submit(sum, [1, 2]).result() == 3
            info = describe(client)
            assert info["profile"] == "there" and info["scheduler"] == cluster.scheduler_address
        with dask_client(cluster.scheduler_address, quiet=True) as client:
            assert describe(client)["profile"] is None


def test_unreachable_scheduler_is_an_input_error(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write(tmp_path / "gone.yaml",
                 f"kind: scheduler\naddress: tcp://127.0.0.1:{port}\ntimeout: 1s\n")
    with pytest.raises(InputError, match=f"profile 'gone': could not connect to the scheduler "
                                         fr"at tcp://127.0.0.1:{port} \(timeout 1s\)"):
        with dask_client(profile=path, quiet=True):
            pass
