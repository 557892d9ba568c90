"""Run a sweep: skip the units whose fingerprint has a committed result, submit the rest as
one Dask graph, commit each unit when its writes finish.

The output folder (README: Sweeps)::

    OUTPUT/ledger.sqlite        runs and units: fingerprints, status, timings, errors, workers
    OUTPUT/units/<unit>/        each unit's job results (tables, results.zarr, provenance,
                                report) and unit.json, its commit record
    OUTPUT/dataset/analysis=<table>/cohort=<cohort>/part-<unit>.parquet

A unit is committed when its folder is renamed into ``units/``, after its dataset files were
written: a unit without a folder whose ``unit.json`` matches its fingerprint (and lists dataset
files that exist) is computed again, so a killed run, re-run, completes what it had not
committed. Shared work across units (reading a cohort, a test feeding several gene-set
analyses, permutation label blocks) has the same Dask keys in every unit, so the scheduler runs
it once; preprocessing (derived stores) is made once per cohort and steps and then reused.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import shutil
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from distributed import Client

from engine.cluster import describe
from engine.errors import InputError
from engine.fsutil import (commit_directory, remove_stale_temporaries, sha256_file,
                           temporary_sibling, write_text_atomic)
from engine.jobs.monitor import blocks_for, monitored
from engine.jobs.runner import (PlannedJob, computer, computing, plan_job, plan_results,
                                write_results, zarr_writes)
from engine.sweep.dataset import dataset_root, remove_unit_tables, write_unit_tables
from engine.sweep.ledger import Ledger
from engine.sweep.lock import output_lock
from engine.store import open_cohort
from engine.jobs.spec import job_fingerprint
from engine.sweep.spec import Sweep, Unit, expand

#: test seam: seconds to sleep after each unit is committed (lets a test kill a run between
#: commits); never set in normal use
PAUSE_AFTER_COMMIT = "COHORT_ENGINE_TEST_PAUSE_AFTER_COMMIT"


@dataclass
class SweepResult:
    """What a run did, unit by unit."""

    run_id: int
    output: Path
    status: dict[str, str] = field(default_factory=dict)  # unit -> computed/skipped/failed/...
    errors: dict[str, str] = field(default_factory=dict)
    tasks: int = 0  # distinct Dask tasks submitted (0: nothing to compute)

    @property
    def ok(self) -> bool:
        return not self.errors

    def count(self, status: str) -> int:
        return sum(s == status for s in self.status.values())


def committed_fingerprint(output: Path, unit_id: str) -> str | None:
    """The fingerprint of the unit's committed result, or None (none, or incomplete)."""
    record = output / "units" / unit_id / "unit.json"
    if not record.exists():
        return None
    info = json.loads(record.read_text())
    if not all((output / f).exists() for f in info["dataset_files"]):
        return None
    return info["fingerprint"]


def _claim(output: Path, sweep: Sweep) -> None:
    """An output folder belongs to one sweep (by name): another sweep would retire its units."""
    marker = output / "sweep.json"
    if marker.exists():
        owner = json.loads(marker.read_text())["name"]
        if owner != sweep.name:
            raise InputError(f"output {output} holds the results of sweep {owner!r}, not "
                             f"{sweep.name!r}; choose another output")
    elif output.exists() and any(p.name != ".sweep.lock" and not p.name.startswith("ledger.sqlite")
                                 for p in output.iterdir()):
        raise InputError(f"output {output} exists and is not a sweep output (no sweep.json); "
                         "choose another output")
    else:
        output.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"name": sweep.name}) + "\n")


def _remove_leftovers(output: Path) -> None:
    """Temporary folders and files of a run that was killed (the caller holds the lock)."""
    remove_stale_temporaries(output / "units")
    for folder in dataset_root(output).glob("analysis=*/cohort=*"):
        remove_stale_temporaries(folder)


def _problem_report(units: list[Unit]) -> str:
    bad = [u for u in units if u.error]
    lines = [f"{len(bad)} of {len(units)} units are invalid:"]
    for u in bad:
        lines.append(f"- {u.id}:\n    " + u.error.replace("\n", "\n    "))
    return "\n".join(lines)


def survey(sweep: Sweep, sweep_file: Path | None = None) -> list[Unit]:
    """The grid's units with their fingerprints, marked ``skip`` where the output already has
    their committed result, or carrying their error. Computes nothing."""
    units = expand(sweep, Path(sweep_file).absolute().parent if sweep_file else Path.cwd())
    for u in units:
        if u.error is None:
            try:
                u.fingerprint = job_fingerprint(u.job)
            except InputError as e:
                u.error = str(e)
        if u.error is None:
            u.skip = committed_fingerprint(sweep.output, u.id) == u.fingerprint
    return units


def check_sweep(sweep: Sweep, sweep_file: Path | None = None) -> list[Unit]:
    """``survey`` plus the validation of every unit to run that planning does without
    computing (labels, annotations, gene sets): all but units with preprocess steps, whose
    derived store must be made first."""
    units = survey(sweep, sweep_file)
    opened = functools.cache(open_cohort)  # each cohort is opened once
    for u in units:
        if u.error is None and not u.skip and not u.job.preprocess:
            try:
                plan_job(u.job, opened(u.job.cohort))
            except InputError as e:
                u.error = str(e)
    return units


def _plan(units: list[Unit], compute) -> dict[str, PlannedJob]:
    """Plan every unit to compute (making or reusing derived stores); errors go to the unit."""
    planned = {}
    opened = functools.cache(open_cohort)  # each cohort is opened once
    for u in units:
        try:
            planned[u.id] = plan_results(u.job, compute, opened(u.job.cohort))
        except InputError as e:
            u.error = str(e)
    return planned


def _axes_of(unit_id: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in unit_id.split(","))


def _retire(output: Path, grid: set[str]) -> list[str]:
    """Remove the results of units no longer in the grid."""
    retired = []
    for folder in sorted((output / "units").glob("*")):
        if folder.is_dir() and not folder.name.startswith(".") and folder.name not in grid:
            remove_unit_tables(output, folder.name)
            shutil.rmtree(folder)
            retired.append(folder.name)
    return retired


def run_sweep(sweep: Sweep, client: Client, *, sweep_file: Path | None = None,
              show_progress: bool = False, strict: bool = False) -> SweepResult:
    """Run ``sweep`` on ``client`` (README: Sweeps). All units are validated first and every
    problem is reported at once; invalid units are recorded and the others run (``strict``:
    nothing runs). Raises InputError if the output is locked by another run."""
    from engine import __version__

    output = sweep.output
    with output_lock(output, sweep=sweep.name), Ledger(output) as ledger, blocks_for(client):
        ledger.mark_interrupted()
        _claim(output, sweep)
        _remove_leftovers(output)
        units = survey(sweep, sweep_file)
        if strict and any(u.error for u in units):
            raise InputError(_problem_report(units))
        cluster = describe(client)
        run_id = ledger.begin_run(
            sweep=sweep.name, sweep_file=str(sweep_file) if sweep_file else None,
            sweep_sha256=sha256_file(sweep_file) if sweep_file else None,
            engine_version=__version__, command=sys.argv, cluster=cluster,
            units_total=len(units))
        result = SweepResult(run_id, output)
        try:
            todo = [u for u in units if u.error is None and not u.skip]
            # units without preprocessing are validated (planned) before any derived store
            # is made, so that most problems are reported before anything computes
            todo.sort(key=lambda u: bool(u.job.preprocess))
            planned = _plan(todo, computer(client, show_progress))
            if any(u.error for u in units):
                print(_problem_report(units), file=sys.stderr)
            if strict and any(u.error for u in units):
                raise InputError(_problem_report(units))
            result.status = {u.id: "invalid" if u.error else "skipped" if u.skip else "pending"
                             for u in units}
            result.errors = {u.id: u.error for u in units if u.error}
            ledger.set_units(run_id, [(u.id, u.axes, u.fingerprint, result.status[u.id], u.error)
                                      for u in units])
            retired = _retire(output, {u.id for u in units})
            ledger.set_units(run_id, [(unit_id, _axes_of(unit_id), None, "retired", None)
                                      for unit_id in retired])
            result.status.update(dict.fromkeys(retired, "retired"))
            runnable = [u for u in todo if u.id in planned]
            if runnable:  # a run that computes nothing has nothing to report
                folder = output / "runs" / str(run_id)
                folder.mkdir(parents=True, exist_ok=True)
                with monitored(client, folder / REPORT) as usage:
                    result.tasks = _execute(runnable, planned, client, ledger, result,
                                            cluster, sweep_file, show_progress)
                write_text_atomic(folder / "memory.json",
                                  json.dumps(usage.get("memory"), indent=2) + "\n")
        except BaseException as e:
            ledger.end_run(run_id, "interrupted" if isinstance(e, KeyboardInterrupt) else "failed")
            raise
        ledger.end_run(run_id, "succeeded" if result.ok else "failed", tasks=result.tasks)
        return result


#: Dask's performance report of each run: ``OUTPUT/runs/<run id>/performance-report.html``,
#: beside ``memory.json`` (peak resident memory of every worker during the run)
REPORT = "performance-report.html"


def _execute(units: list[Unit], planned: dict[str, PlannedJob], client: Client,
             ledger: Ledger, result: SweepResult, cluster: dict, sweep_file: Path | None,
             show_progress: bool) -> int:
    """Submit every unit's writes in one ``client.compute``; commit each unit as its writes
    finish. Returns the number of distinct tasks submitted."""
    if not units:
        return 0
    output = result.output
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.perf_counter()
    tmp = {u.id: temporary_sibling(output / "units" / u.id) for u in units}
    writes, owner = [], []
    for u in units:
        for w in zarr_writes(planned[u.id], tmp[u.id] / "results.zarr"):
            writes.append(w)
            owner.append(u)
    tasks = len(set().union(*(w.__dask_graph__().keys() for w in writes)))
    remaining = Counter(u.id for u in owner)  # writes of each unit not yet finished
    for u in units:
        ledger.unit_status(result.run_id, u.id, "running")
    pause = float(os.environ.get(PAUSE_AFTER_COMMIT, "0"))
    try:
        with computing(client, writes, show_progress) as finished:
            for i, future in finished:
                u = owner[i]
                if result.status[u.id] == "failed":
                    continue
                if future.status != "finished":
                    _fail(u, future.exception(), ledger, result)
                    continue
                remaining[u.id] -= 1
                if remaining[u.id]:
                    continue
                try:
                    _commit(u, planned[u.id], tmp[u.id], output, cluster, started, t0,
                            sweep_file)
                except Exception as e:  # one unit's bad result must not stop the others
                    # some of its dataset files may be new: drop its result rather than mix
                    remove_unit_tables(output, u.id)
                    shutil.rmtree(output / "units" / u.id, ignore_errors=True)
                    _fail(u, e, ledger, result)
                    continue
                result.status[u.id] = "computed"
                ledger.unit_status(result.run_id, u.id, "computed",
                                   wall_s=round(time.perf_counter() - t0, 3))
                if pause:
                    time.sleep(pause)
    finally:
        for path in tmp.values():  # committed units' folders were renamed away
            shutil.rmtree(path, ignore_errors=True)
    return tasks


def _fail(u: Unit, error: BaseException, ledger: Ledger, result: SweepResult) -> None:
    """Record the unit's failure; its temporary folder is removed when the run's writes end."""
    text = f"{type(error).__name__}: {error}"
    if not isinstance(error, InputError):
        text += "\n" + "".join(traceback.format_exception(error)[-3:])
    result.status[u.id] = "failed"
    result.errors[u.id] = text
    ledger.unit_status(result.run_id, u.id, "failed", error=text)


def _commit(u: Unit, planned: PlannedJob, tmp: Path, output: Path, cluster: dict,
            started, t0: float, sweep_file: Path | None) -> None:
    """Tables, provenance and report into the unit's temporary folder, its dataset files,
    then the rename that commits it."""
    record = {"unit": u.id, "axes": u.axes, "fingerprint": u.fingerprint}
    tables = write_results(planned, tmp, cluster=cluster, started=started, t0=t0,
                           job_file=sweep_file, extra={"sweep": record})
    files = write_unit_tables(output, u.id, u.cohort_name, u.axes, u.fingerprint, tables)
    committed_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    (tmp / "unit.json").write_text(json.dumps(
        {**record, "cohort": u.cohort_name, "dataset_files": files,
         "committed_at": committed_at}, indent=2) + "\n")
    commit_directory(tmp, output / "units" / u.id)


__all__ = ["SweepResult", "check_sweep", "committed_fingerprint", "run_sweep", "survey"]
