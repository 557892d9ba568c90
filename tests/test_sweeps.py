"""Sweeps: grid expansion, one graph with shared work computed once, incremental re-runs,
per-unit commits, the results dataset and the ledger (README: Sweeps)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from dask.utils import key_split
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from conftest import read_table, write_sweep_inputs
from engine.errors import InputError
from engine.jobs import run_job
from engine.sweep.dataset import read_results
from engine.sweep.ledger import Ledger
from engine.sweep.run import PAUSE_AFTER_COMMIT, check_sweep, run_sweep
from engine.sweep.spec import expand, load_sweep

N_UNITS = 3 * 2 * 2 * 2


class TaskCounter(SchedulerPlugin):
    """Records every task that reached memory on the scheduler (a counting scheduler)."""

    name = "task-counter"

    def __init__(self):
        self.keys = []
        self.graphs = 0

    def update_graph(self, scheduler, *args, **kwargs):
        self.graphs += 1

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "memory":
            self.keys.append(key)

    def by_name(self) -> Counter:
        return Counter(key_split(k) for k in self.keys)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as c, Client(c) as client:
        counter = TaskCounter()
        c.scheduler.add_plugin(counter)
        yield client, counter


@pytest.fixture(scope="module")
def swept(tmp_path_factory, cluster):
    """The 24-unit sweep, run once (module-wide: several tests read its results)."""
    client, counter = cluster
    root = tmp_path_factory.mktemp("sweep")
    path = write_sweep_inputs(root)
    sweep, _ = load_sweep(path)
    counter.keys.clear()
    counter.graphs = 0
    result = run_sweep(sweep, client, sweep_file=path)
    assert counter.graphs == 1  # every unit in one graph (and nothing else sent)
    return path, sweep, result, counter.by_name()


def test_expansion_substitutes_every_axis(tmp_path):
    path = write_sweep_inputs(tmp_path)
    sweep, base = load_sweep(path)
    units = expand(sweep, base)
    assert len(units) == N_UNITS and len({u.id for u in units}) == N_UNITS
    u = next(u for u in units if u.id == "cohort=c1,contrast=sex,library=b,test=student")
    de, sets = u.job.analyses
    assert (de.test, de.group, de.case, de.control) == ("student", "sex", "F", "M")
    assert sets.gene_sets == str(tmp_path / "lib_b.gmt")
    assert u.job.cohort == tmp_path / "c1.zarr" and u.job.seed == 3
    assert u.job.output == tmp_path / "out" / "units" / u.id and u.cohort_name == "c1"


def test_exclude_and_typed_values(tmp_path):
    path = write_sweep_inputs(tmp_path)
    text = path.read_text().replace("template:", "exclude:\n  - {cohort: c0, test: student}\n"
                                    "  - {contrast: sex, library: b}\ntemplate:")
    text = text.replace("permutations: 200", "permutations: ${test_perm.n}").replace(
        "  test: [welch, student]", "  test: [welch, student]\n  test_perm: {few: {n: 50}}")
    path.write_text(text)
    sweep, base = load_sweep(path)
    units = expand(sweep, base)
    kept = {u.id for u in units}
    assert not any("cohort=c0" in k and "test=student" in k for k in kept)
    assert not any("contrast=sex,library=b" in k for k in kept)
    # 24 - 4 (c0 x 2 contrasts x 2 libraries, student) - 6 (sex, b: 3 cohorts x 2 tests)
    # + 1 (c0, sex, b, student was counted in both)
    assert len(units) == 15
    assert all(u.job.analyses[1].permutations == 50 for u in units)  # an int, not "50"


@pytest.mark.parametrize("edit, message", [
    (("${library}", "${libary}"), "unknown axes ['libary']"),
    (("${library}", "lib_a.gmt"), "axes ['library'] are not used"),
    (("seed: 3", "seed: 3\nexclude: [{cohort: c9}]"), "exclude: cohort=c9"),
    (("template:\n", "template:\n  output: x\n"), "'output' is a key of the sweep"),
    (("test: [welch, student]", "test: [welch, 'bad name']"), "value name 'bad name'"),
])
def test_bad_sweep_files(tmp_path, edit, message):
    path = write_sweep_inputs(tmp_path)
    path.write_text(path.read_text().replace(*edit))
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_sweep(path)


def test_invalid_units_are_reported_together(tmp_path):
    path = write_sweep_inputs(tmp_path)
    path.write_text(path.read_text().replace(
        "    sex: {group: sex, case: F, control: M}",
        "    sex: {group: sex, case: F, control: M}\n    bad: {group: group, case: nope, "
        "control: control}").replace("control: ${contrast.control}",
                                     "control: ${contrast.control}\n      pair_by: ${contrast.x}"))
    sweep, base = load_sweep(path)
    units = expand(sweep, base)
    assert all(u.error and "has no key 'x'" in u.error for u in units)
    path = write_sweep_inputs(tmp_path / "b")
    path.write_text(path.read_text().replace(
        "    sex: {group: sex, case: F, control: M}",
        "    sex: {group: sex, case: F, control: M}\n    bad: {group: group, case: nope, "
        "control: control}"))
    sweep, _ = load_sweep(path)
    units = check_sweep(sweep, path)
    bad = [u for u in units if u.error]
    assert len(units) == 36 and len(bad) == 12
    assert all("contrast=bad" in u.id and "nope" in u.error for u in bad)


def test_one_graph_computes_shared_work_once(swept):
    path, sweep, result, executed = swept
    assert result.ok and result.count("computed") == N_UNITS
    # the two-group test of a cohort x contrast x test runs once for both libraries: 3 gene
    # chunks x 3 cohorts x 2 contrasts (each test name counted separately)
    for kernel in ("welch-t-chunk", "student-t-chunk"):
        assert executed[kernel] == 3 * 3 * 2
    # units one by one would run it once per unit: twice as often
    units = expand(sweep, path.parent)
    per_unit, union = Counter(), set()
    from engine.jobs.runner import plan_job
    from engine.store import open_cohort
    for u in units:
        keys = set()
        for ds in plan_job(u.job, open_cohort(u.job.cohort)).values():
            keys |= set(dict(ds.__dask_graph__()))
        per_unit.update(key_split(k) for k in keys)
        union |= keys
    assert per_unit["welch-t-chunk"] == 2 * executed["welch-t-chunk"]
    # each of the 24 gene-set analyses ran once
    assert executed["gsea-preranked-enrichment"] == N_UNITS
    # in all, the one graph has a third fewer analysis tasks than the units one by one
    assert len(union) < 0.7 * sum(per_unit.values())


def test_units_match_their_job_run_alone(swept, cluster, tmp_path):
    path, sweep, result, _ = swept
    unit = next(u for u in expand(sweep, path.parent)
                if u.id == "cohort=c2,contrast=sex,library=a,test=welch")
    alone = run_job(unit.job.model_copy(update={"output": tmp_path / "alone"}), cluster[0])
    for name in ("de", "sets"):
        pd.testing.assert_frame_equal(read_table(alone, name),
                                      read_table(sweep.output / "units" / unit.id, name))


def test_dataset_is_readable_by_pandas_dask_duckdb(swept):
    path, sweep, result, _ = swept
    root = sweep.output / "dataset"
    de = pd.read_parquet(root / "analysis=de")
    assert len(de) == N_UNITS * 120
    assert set(de["cohort"].astype(str)) == {"c0", "c1", "c2"}
    assert list(de.columns[:5]) == ["contrast", "library", "test", "unit", "fingerprint"]
    one = read_table(sweep.output / "units" / "cohort=c0,contrast=group,library=b,test=student",
                     "de")
    mine = de[de["unit"] == "cohort=c0,contrast=group,library=b,test=student"]
    pd.testing.assert_frame_equal(mine[one.columns].reset_index(drop=True), one,
                                  check_dtype=False)  # TSV reads gene IDs as str, Parquet as str/object
    import dask.dataframe as dd
    assert len(dd.read_parquet(root / "analysis=sets").compute()) == len(
        pd.read_parquet(root / "analysis=sets"))
    duckdb = pytest.importorskip("duckdb")
    counts = duckdb.sql(f"""
        select cohort, count(*) as n from read_parquet('{root}/*/*/*.parquet',
            hive_partitioning = true, union_by_name = true)
        where analysis = 'de' and p_adj < 0.05 group by cohort order by cohort""").df()
    expected = de[de["p_adj"] < 0.05].groupby(de["cohort"].astype(str)).size()
    assert counts.set_index("cohort")["n"].to_dict() == expected.to_dict()


def test_read_results_filters(swept):
    _, sweep, _, _ = swept
    rows = read_results(sweep.output, "de", genes=["G001", "G100"], max_p_adj=0.05,
                        where="cohort == 'c1' and contrast == 'group'")
    de = pd.read_parquet(sweep.output / "dataset" / "analysis=de")
    de["cohort"] = de["cohort"].astype(str)
    expected = de[de["gene"].isin(["G001", "G100"]) & (de["p_adj"] <= 0.05)
                  & (de["cohort"] == "c1") & (de["contrast"] == "group")]
    assert len(rows) == len(expected) > 0
    assert set(rows["gene"]) == {"G001"}  # G100 is not differentially expressed
    sets = read_results(sweep.output, "sets", gene_sets=["lib_a_set0"])
    assert len(sets) == 3 * 2 * 2 and set(sets["library"]) == {"a"}
    with pytest.raises(InputError, match="no table 'nope'"):
        read_results(sweep.output, "nope")


def test_rerun_computes_nothing(swept, cluster):
    path, sweep, _, _ = swept
    client, counter = cluster
    counter.keys.clear()
    counter.graphs = 0
    again = run_sweep(sweep, client, sweep_file=path)
    assert again.count("skipped") == N_UNITS and again.tasks == 0
    assert counter.keys == [] and counter.graphs == 0  # not one task ran, no graph was sent
    with Ledger(sweep.output) as ledger:
        runs = ledger.runs()
        units = ledger.units()
    last = runs.iloc[-1]
    assert last["status"] == "succeeded" and last["skipped"] == N_UNITS
    assert (units["status"] == "skipped").all()
    # the first run saved Dask's performance report and its workers' peak memory; the no-op
    # re-run, which computed nothing, saved neither
    first = sweep.output / "runs" / str(runs.iloc[0]["run_id"])
    assert "Dask Performance Report" in (first / "performance-report.html").read_text()
    memory = json.loads((first / "memory.json").read_text())
    assert memory["max_worker_peak_rss_bytes"] > 0 and memory["workers"]
    assert not (sweep.output / "runs" / str(again.run_id)).exists()


def test_cohort_change_recomputes_only_its_units(tmp_path, cluster):
    client, counter = cluster
    path = write_sweep_inputs(tmp_path)
    sweep, _ = load_sweep(path)
    run_sweep(sweep, client, sweep_file=path)
    before = {p: p.stat().st_mtime_ns for p in (sweep.output / "dataset").rglob("*.parquet")}
    # the cohort grew: 4 samples appended to c1
    from conftest import sweep_cohort_files
    from engine.store import append_samples
    append_samples(tmp_path / "c1.zarr", *sweep_cohort_files(tmp_path / "src1", 1, n=4, first=12))
    counter.keys.clear()
    result = run_sweep(sweep, client, sweep_file=path)
    computed = {u for u, s in result.status.items() if s == "computed"}
    assert computed == {u for u in result.status if u.startswith("cohort=c1,")}
    assert result.count("skipped") == N_UNITS - 8
    assert counter.by_name()["welch-t-chunk"] == 3 * 2  # c1 only: 3 chunks x 2 contrasts
    after = {p: p.stat().st_mtime_ns for p in (sweep.output / "dataset").rglob("*.parquet")}
    changed = {p.parent.name for p in after if after[p] != before.get(p)}
    assert changed == {"cohort=c1"}
    de = read_results(sweep.output, "de", where="cohort == 'c1'")
    assert set(de["n_case"] + de["n_control"]) == {16}  # the grown cohort, both contrasts


def test_failed_unit_is_recorded_and_others_finish(tmp_path, cluster):
    client, _ = cluster
    path = write_sweep_inputs(tmp_path)
    path.write_text(path.read_text().replace(
        "    sex: {group: sex, case: F, control: M}",
        "    bad: {group: group, case: nope, control: control}"))
    # one cohort's chunk is corrupt: its units fail while computing (not when validated)
    chunk = next(p for p in sorted((tmp_path / "c2.zarr" / "expression").rglob("*"))
                 if p.is_file() and p.name != "zarr.json")
    good = chunk.read_bytes()
    chunk.write_bytes(b"not a zstd frame" * 4)
    sweep, _ = load_sweep(path)
    result = run_sweep(sweep, client, sweep_file=path)
    status = result.status
    assert {u for u, s in status.items() if s == "invalid"} == {
        u for u in status if "contrast=bad" in u}
    assert {u for u, s in status.items() if s == "failed"} == {
        u for u in status if u.startswith("cohort=c2,contrast=group")}
    assert result.count("computed") == 8
    with Ledger(sweep.output) as ledger:
        run = ledger.runs().iloc[-1]
        units = ledger.units().set_index("unit")
    assert run["status"] == "failed"
    assert (run["computed"], run["failed"], run["invalid"]) == (8, 4, 12)
    assert units.loc["cohort=c0,contrast=bad,library=a,test=welch", "error"].count("nope") >= 1
    failed = units.loc["cohort=c2,contrast=group,library=a,test=welch"]
    assert failed["status"] == "failed" and failed["error"]
    assert not (sweep.output / "units" / "cohort=c2,contrast=group,library=a,test=welch").exists()
    # fixed: the re-run computes the failed units only
    chunk.write_bytes(good)
    again = run_sweep(sweep, client, sweep_file=path)
    assert {u for u, s in again.status.items() if s == "computed"} == {
        u for u in status if u.startswith("cohort=c2,contrast=group")}
    assert again.count("skipped") == 8 and again.count("invalid") == 12


def test_retired_units_leave_the_dataset(tmp_path, cluster):
    client, _ = cluster
    path = write_sweep_inputs(tmp_path)
    sweep, _ = load_sweep(path)
    run_sweep(sweep, client, sweep_file=path)
    path.write_text(path.read_text().replace("test: [welch, student]", "test: [welch]"))
    sweep, _ = load_sweep(path)
    result = run_sweep(sweep, client, sweep_file=path)
    assert result.count("retired") == N_UNITS // 2 and result.count("skipped") == N_UNITS // 2
    de = pd.read_parquet(sweep.output / "dataset" / "analysis=de")
    assert set(de["test"]) == {"welch"}
    assert len(list((sweep.output / "units").iterdir())) == N_UNITS // 2


def test_output_of_another_sweep_or_locked_is_refused(tmp_path, cluster):
    from engine.sweep.lock import output_lock

    client, _ = cluster
    path = write_sweep_inputs(tmp_path)
    sweep, _ = load_sweep(path)
    with output_lock(sweep.output, sweep="someone-else"):
        with pytest.raises(InputError, match="in use"):
            run_sweep(sweep, client, sweep_file=path)
    other = sweep.model_copy(update={"name": "other"})
    (sweep.output / "sweep.json").write_text(json.dumps({"name": "nightly"}))
    with pytest.raises(InputError, match="holds the results of sweep 'nightly'"):
        run_sweep(other, client, sweep_file=path)


def _dataset_frames(output: Path) -> dict[str, pd.DataFrame]:
    root = output / "dataset"
    return {str(p.relative_to(root)): pd.read_parquet(p) for p in sorted(root.rglob("*.parquet"))}


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_results(tmp_path, cluster):
    """A real `cohort sweep` process is SIGKILLed (with its worker processes) after its first
    unit is committed; the re-run commits the rest, and the results equal an uninterrupted
    run's."""
    client, _ = cluster
    path = write_sweep_inputs(tmp_path)
    env = {**os.environ, PAUSE_AFTER_COMMIT: "5"}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "sweep", str(path),
                             "--workers", "1"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    units = tmp_path / "out" / "units"
    deadline = time.monotonic() + 240
    try:
        while not list(units.glob("*/unit.json")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no unit committed in time"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    committed = len(list(units.glob("*/unit.json")))
    assert 1 <= committed < N_UNITS
    sweep, _ = load_sweep(path)
    resumed = run_sweep(sweep, client, sweep_file=path)
    assert resumed.count("skipped") == committed
    assert resumed.count("computed") == N_UNITS - committed
    with Ledger(sweep.output) as ledger:
        runs = ledger.runs()
    assert list(runs["status"]) == ["interrupted", "succeeded"]
    assert not list(units.glob(".*"))  # the killed run's temporary folders are gone
    fresh = sweep.model_copy(update={"output": tmp_path / "fresh"})
    run_sweep(fresh, client, sweep_file=path)
    got, expected = _dataset_frames(sweep.output), _dataset_frames(fresh.output)
    assert got.keys() == expected.keys() and len(got) == 3 * N_UNITS
    for name in expected:
        pd.testing.assert_frame_equal(got[name], expected[name])


def test_cli_sweep_check_status_query(tmp_path):
    path = write_sweep_inputs(tmp_path)
    path.write_text(path.read_text().replace("c2: c2.zarr", "c2: c2.zarr, c9: missing.zarr"))
    cli = [sys.executable, "-m", "engine.cli"]
    check = subprocess.run(cli + ["sweep", str(path), "--check"], capture_output=True,
                           text=True)
    assert check.returncode == 1
    assert "32 units: 24 to compute, 0 committed, 8 invalid" in check.stdout
    run = subprocess.run(cli + ["sweep", str(path), "--workers", "1"], capture_output=True,
                         text=True)
    assert run.returncode == 1, run.stderr
    assert "24 computed, 0 skipped, 0 failed, 8 invalid" in run.stdout
    assert "does not exist" in run.stderr and "Dask dashboard" in run.stderr
    status = subprocess.run(cli + ["status", str(tmp_path / "out"), "--json"],
                            capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert Counter(u["status"] for u in report["units"]) == {"computed": 24, "invalid": 8}
    query = subprocess.run(cli + ["query", str(tmp_path / "out"), "--analysis", "de",
                                  "--gene", "G002", "--max-p-adj", "0.05", "-o",
                                  str(tmp_path / "q.tsv")], capture_output=True, text=True)
    assert query.returncode == 0, query.stderr
    rows = pd.read_csv(tmp_path / "q.tsv", sep="\t")
    expected = read_results(tmp_path / "out", "de", genes=["G002"], max_p_adj=0.05)
    assert len(rows) == len(expected) > 0


def test_example_sweeps_validate():
    jobs = Path(__file__).parents[1] / "jobs"
    examples = sorted(jobs.glob("sweep*.yaml"))
    assert examples
    for path in examples:
        sweep, base = load_sweep(path)
        assert len(expand(sweep, base)) > 1


@pytest.mark.slow
def test_schedule_runs_the_sweep_without_overlap(tmp_path):
    """`cohort schedule` on an every-second cron: two runs, the second starting after the
    first ended (fire times during a run are skipped), the second computing nothing."""
    path = write_sweep_inputs(tmp_path)
    path.write_text(path.read_text().replace("test: [welch, student]", "test: [welch]")
                    .replace("c2: c2.zarr", "").replace("library: {a: lib_a.gmt, b: lib_b.gmt}",
                                                         "library: {a: lib_a.gmt}"))
    run = subprocess.run([sys.executable, "-m", "engine.cli", "schedule", str(path), "--cron",
                          "* * * * * *", "--max-runs", "2", "--workers", "1"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "skipped" in run.stdout + run.stderr  # fire times came while the first run went on
    with Ledger(tmp_path / "out") as ledger:
        runs = ledger.runs()
    assert list(runs["status"]) == ["succeeded", "succeeded"]
    assert list(runs["computed"]) == [4, 0] and list(runs["skipped"]) == [0, 4]
    first, second = runs.iloc[0], runs.iloc[1]
    assert pd.Timestamp(second["started_at"]) >= pd.Timestamp(first["finished_at"])
