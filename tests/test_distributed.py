"""Jobs on a real multi-process Dask cluster: ``dask scheduler`` and ``dask worker`` processes on
loopback, started by the test (tests/loopback.py), joined with ``cohort run --scheduler`` or a
profile, give the same results as the local run, also when a worker process is killed mid-job,
and over TLS; a client without the cluster's certificates is refused."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from distributed import Client, Security
from distributed.comm.core import CommClosedError, FatalCommClosedError

from conftest import read_table, write_job
from engine.cli import main
from engine.genesets import load_gene_sets
from loopback import loopback_cluster
from tls_certs import make_certificates

#: every randomness path a job has (label permutations with maxT, sign flips, the BCa weight
#: bootstrap, the fold-change bootstrap of scores, index resampling of Spearman), limma and ssGSEA
MIXED = """
  - name: welch
    test: welch
    group: mol.biol
    case: BCR/ABL
    control: NEG
    bootstrap: {{replicates: 200, method: bca}}
    permutations: 500
  - name: paired
    test: paired_t
    group: mol.biol
    case: BCR/ABL
    control: NEG
    pair_by: matched_pair
    permutations: 200
  - name: limma
    test: limma
    group: mol.biol
    case: BCR/ABL
    control: NEG
  - name: scores
    test: ssgsea
    gene_sets: {gmt}
    match: symbol
  - name: scores_welch
    test: welch
    variable: scores
    group: mol.biol
    case: BCR/ABL
    control: NEG
    fold_change_base: e
    bootstrap: {{replicates: 300}}
  - name: scores_age
    test: spearman
    variable: scores
    covariate: age
    bootstrap: {{replicates: 200}}
"""

#: a permutation- and bootstrap-heavy job: 5-10 s of tasks on two workers here (about a
#: hundred tasks), long enough to kill one worker while it computes
HEAVY = """
  - name: welch
    test: welch
    group: mol.biol
    case: BCR/ABL
    control: NEG
    bootstrap: {replicates: 2000}
    permutations: 1000
"""


@pytest.fixture(scope="module")
def gmt(tmp_path_factory) -> Path:
    """Six Hallmark sets as a GMT file of gene symbols."""
    path = tmp_path_factory.mktemp("sets") / "sets.gmt"
    path.write_text("".join(f"{s.name}\tdesc\t" + "\t".join(s.genes) + "\n"
                            for s in load_gene_sets("hallmark")[:6]))
    return path


def run_cli(directory: Path, store: Path, analyses: str, *options: str) -> Path:
    """``cohort run`` of a job of ``analyses`` on ``store`` (seed 7) written in
    ``directory``, with the CLI ``options``; returns its results directory."""
    directory.mkdir(parents=True, exist_ok=True)
    job = write_job(directory, store, analyses)
    status = main(["run", str(job), *options])
    assert status == 0, f"cohort run {' '.join(options)} exited with {status}"
    return directory / "out"


@pytest.fixture(scope="module")
def local_mixed(all_store, gmt, tmp_path_factory) -> Path:
    """The mixed job run locally (one in-process worker, threads): the reference."""
    return run_cli(tmp_path_factory.mktemp("local"), all_store, MIXED.format(gmt=gmt),
                   "--threads")


def zarr_arrays(store: Path) -> dict[str, zarr.Array]:
    """Every array of a results.zarr by its path (``analysis/variable``)."""
    group = zarr.open_group(store, mode="r")
    return {name: member for name, member in group.members(max_depth=None)
            if isinstance(member, zarr.Array)}


def assert_same_results(expected: Path, actual: Path) -> None:
    """The same tables (TSV and Parquet, values exact) and the same results.zarr arrays
    (dtype and every element; NaN where NaN)."""
    tables = sorted(p.stem for p in expected.glob("*.tsv"))
    assert tables == sorted(p.stem for p in actual.glob("*.tsv"))
    for name in tables:
        pd.testing.assert_frame_equal(read_table(actual, name), read_table(expected, name),
                                      check_exact=True, obj=f"{name}.tsv")
        pd.testing.assert_frame_equal(pd.read_parquet(actual / f"{name}.parquet"),
                                      pd.read_parquet(expected / f"{name}.parquet"),
                                      check_exact=True, obj=f"{name}.parquet")
    arrays, others = zarr_arrays(expected / "results.zarr"), zarr_arrays(actual / "results.zarr")
    assert sorted(arrays) == sorted(others)
    for name, array in arrays.items():
        assert others[name].dtype == array.dtype, name
        np.testing.assert_array_equal(others[name][...], array[...], err_msg=name)


def test_mixed_job_covers_resampling(local_mixed):
    """The reference run is not vacuous: seeded permutation p-values and bootstrap intervals
    are there for most genes and vary between genes (a comparison of empty or constant
    columns would prove nothing)."""
    welch = read_table(local_mixed, "welch")
    for column in ("p_perm", "p_maxT", "ci_low", "ci_high"):
        assert welch[column].notna().sum() > 10_000, column
        assert welch[column].nunique() > 100, column
    assert read_table(local_mixed, "paired")["p_perm"].nunique() > 50
    assert read_table(local_mixed, "scores_age")["ci_low"].notna().all()
    assert len(zarr_arrays(local_mixed / "results.zarr")) > 50


@pytest.mark.slow
def test_scheduler_and_two_worker_processes_give_the_local_results(tmp_path, all_store, gmt,
                                                                   local_mixed):
    with loopback_cluster(n_workers=2) as cluster:
        out = run_cli(tmp_path, all_store, MIXED.format(gmt=gmt), "--scheduler", cluster.address)
        # both worker processes computed part of the job
        ran = cluster.client.run(lambda dask_worker: dask_worker.state.transition_counter)
        assert len(ran) == 2 and all(count > 0 for count in ran.values()), ran
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["cluster"]["workers"] == 2
    assert provenance["cluster"]["scheduler"] == cluster.address
    assert_same_results(local_mixed, out)


def _run_in_thread(outcome: dict, *args) -> None:
    try:
        outcome["results"] = run_cli(*args)
    except BaseException as e:  # reported by the test, not lost in the thread
        outcome["error"] = e
    finally:
        outcome["finished"] = time.monotonic()


def _wait_until_busy(cluster, victim: int, job: threading.Thread, timeout: float = 120) -> str:
    """Wait until every worker has tasks and worker ``victim`` is executing one; returns its
    address. Fails if the job ends first (it must then be made heavier)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.is_alive():
        address = cluster.worker_address(victim)
        processing = cluster.client.processing()
        if len(processing) == len(cluster.workers) and all(processing.values()):
            executing = cluster.client.run(lambda dask_worker: dask_worker.state.executing_count,
                                           workers=[address])
            if executing[address]:
                return address
        time.sleep(0.05)
    pytest.fail("the job finished (or never started) before both workers were busy")


def _removal(cluster, address: str, timeout: float = 60) -> tuple[float, dict]:
    """When (monotonic clock of this process) and how the scheduler removed ``address``:
    its ``remove-worker`` event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, event in cluster.client.get_events(address):
            if event.get("action") == "remove-worker":
                return time.monotonic(), event
        time.sleep(0.02)
    pytest.fail(f"the scheduler did not remove the killed worker {address}")


@pytest.mark.slow
def test_worker_killed_mid_job_changes_nothing(tmp_path, all_store):
    """SIGKILL of a worker process while it computes: the scheduler loses the tasks it was
    running (and the results it held), recomputes them on the other worker (and on the
    worker the nanny restarts), and the job's results are the local run's, bit for bit."""
    expected = run_cli(tmp_path / "local", all_store, HEAVY, "--threads")
    with loopback_cluster(n_workers=2) as cluster:
        outcome: dict = {}
        job = threading.Thread(target=_run_in_thread, daemon=True, args=(
            outcome, tmp_path / "cluster", all_store, HEAVY, "--scheduler", cluster.address))
        job.start()
        try:
            address = _wait_until_busy(cluster, victim=0, job=job)
            killed = cluster.kill_worker(0)
            removed_at, removal = _removal(cluster, killed)
        finally:
            job.join(timeout=600)
        assert not job.is_alive(), "the job did not finish"
        restarted = cluster.worker_address(0)
    if "error" in outcome:
        raise outcome["error"]
    assert killed == address and restarted != killed
    # the kill happened mid-job: the worker was lost while it had tasks, not at a clean exit,
    # and the job was still running when the scheduler noticed
    assert removal["expected"] is False and removal["processing-tasks"], removal
    assert removed_at < outcome["finished"]
    assert_same_results(expected, outcome["results"])


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, str]:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def _registered_clients(cluster) -> set[str]:
    return set(cluster.client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients)))


def _tls_handshake_without_certificate(address: str, ca_file: str) -> None:
    """Open a TLS connection that trusts the cluster's CA but presents no certificate, and
    read from it (TLS 1.3 reports a refused client certificate after the handshake)."""
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with context.wrap_socket(raw) as conn:
            conn.recv(1)


@pytest.mark.slow
def test_tls_cluster_runs_a_profile_job_and_refuses_clients_without_certificates(
        tmp_path, all_store, gmt, certificates, local_mixed):
    with loopback_cluster(n_workers=2, security=certificates) as cluster:
        assert cluster.address.startswith("tls://")
        profile = tmp_path / "tls.yaml"
        profile.write_text(
            f"kind: scheduler\naddress: {cluster.address}\nsecurity:\n"
            f"  ca_file: {certificates['ca_file']}\n  cert: {certificates['cert']}\n"
            f"  key: {certificates['key']}\n  require_encryption: true\n")
        out = run_cli(tmp_path / "job", all_store, MIXED.format(gmt=gmt), "--profile",
                      str(profile))

        before = _registered_clients(cluster)
        # plain TCP to the TLS port: the scheduler drops the connection
        with pytest.raises(CommClosedError):
            Client(cluster.address.replace("tls://", "tcp://"), timeout=10)
        # TLS with a certificate from another authority: the handshake fails
        other = make_certificates(tmp_path / "other")
        with pytest.raises(FatalCommClosedError, match="certificate"):
            Client(cluster.address, timeout=10, security=Security(
                tls_ca_file=other["ca_file"], tls_client_cert=other["cert"],
                tls_client_key=other["key"], require_encryption=True))
        # TLS trusting the cluster's CA, but without a client certificate: refused too
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED|HANDSHAKE_FAILURE"):
            _tls_handshake_without_certificate(cluster.address, certificates["ca_file"])
        # and the distributed client will not even try TLS without certificates
        with pytest.raises(TypeError, match="ssl_context"):
            Client(cluster.address, timeout=10)
        assert _registered_clients(cluster) == before
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["cluster"]["scheduler"] == cluster.address
    assert provenance["cluster"]["workers"] == 2
    assert_same_results(local_mixed, out)
