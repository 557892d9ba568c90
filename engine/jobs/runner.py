"""Plan a job into one lazy Dask graph, compute it once into ``results.zarr``, write tables.

``plan_job`` builds lazy result Datasets and computes nothing. ``run_job`` computes every
analysis in one ``client.compute`` call (shared reads are read once), writes the arrays
straight to Zarr, then derives the tables, report and provenance from what was written.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import glob
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from distributed import Client, as_completed, progress

from engine.cluster import describe
from engine.errors import InputError
from engine.fsutil import commit_directory, sha256_file
from engine.jobs.monitor import blocks_for, monitored
from engine.jobs.spec import Job, job_fingerprint
from engine.report import render_report
from engine.jobs.gene_lists import gene_list_table
from engine.jobs.planners import plan_analysis
from engine.preprocess.designs import select_samples
from engine.preprocess.pipeline import Prepared, prepare
from engine.jobs.set_planners import Context
from engine.results import gene_annotations, result_tables, write_table
from engine.stats import multitest
from engine.store import open_cohort

DEPENDENCIES = ["dask", "distributed", "xarray", "zarr", "numpy", "scipy", "statsmodels",
                "pandas", "pyarrow", "pydantic", "bottleneck", "formulaic", "bokeh", "PyYAML"]


def plan_job(job: Job, cohort: xr.Dataset | None = None) -> dict[str, xr.Dataset]:
    """Lazy result Dataset of every analysis, by name. Validates labels; computes nothing
    on the cohort given (without one, a job with ``preprocess`` steps first makes or reuses
    its derived store, which computes).

    Analyses are planned in order: a score analysis's (gene_set, sample) matrix becomes a
    variable, under the analysis's name, that later analyses can test like any other. An
    analysis with ``samples:`` sees only the samples it selects.
    """
    if cohort is None:
        cohort = prepare_job(job)[""].cohort if job.preprocess else open_cohort(job.cohort)
    planned: dict[str, xr.Dataset] = {}
    ctx = Context(job.seed, planned)
    for a in job.analyses:
        ds = cohort
        if a.variable in planned:  # the score matrix of an earlier analysis
            if "score" not in planned[a.variable]:
                raise InputError(f"analysis {a.name!r}: variable {a.variable!r} is an analysis "
                                 "without a score matrix; name a score analysis or a variable")
            if a.variable in cohort:
                raise InputError(f"analysis {a.variable!r} has the name of a variable of the "
                                 "cohort; rename the analysis")
            ds = cohort.assign({a.variable: planned[a.variable]["score"].reset_coords(drop=True)})
        try:
            if a.samples is not None:
                ds = select_samples(ds, where=a.samples.where, ids=a.samples.ids)
            planned[a.name] = plan_analysis(a, ds, ctx)
        except InputError as e:
            raise InputError(f"analysis {a.name!r}: {e}") from None
    return planned


def adjust_families(job: Job, tables: dict[str, pd.DataFrame]) -> dict:
    """Adds ``p_adj_family`` to the main tables of each declared family; returns the record of
    every adjustment made (per analysis and per family) for provenance."""
    record = {"analyses": {a.name: {"method": a.adjust, "family": "each stratum/term/contrast "
                                    "of the analysis, over its features"}
                           for a in job.analyses if hasattr(a, "adjust")},
              "families": []}
    for family in job.families:
        p = np.concatenate([tables[a]["p_value"].to_numpy(np.float64) for a in family.analyses])
        adjusted = multitest.METHODS[family.method](p)
        start = 0
        for a in family.analyses:
            n = len(tables[a])
            tables[a]["p_adj_family"] = adjusted[start:start + n]
            start += n
        record["families"].append({"name": family.name, "method": family.method,
                                   "analyses": family.analyses,
                                   "tests": int(np.isfinite(p).sum())})
    return record


def _check_output(output: Path) -> None:
    """Re-running a job replaces its own earlier results, never an unrelated directory."""
    if output.exists() and any(output.iterdir()) and not (output / "provenance.json").exists():
        raise InputError(f"output {output} exists and is not a results directory of an earlier "
                         "run (no provenance.json); choose another output path")


def wait_until_idle(client: Client, timeout: float = 60.0) -> None:
    """After a failure, let tasks already running finish, so none writes into the temporary
    output after it is removed (cancelling a future does not stop a running task)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = client.run(lambda dask_worker: dask_worker.state.executing_count)
        if not any(busy.values()):
            return
        time.sleep(0.05)


@functools.cache  # 14 package metadata lookups: once per process, not once per sweep unit
def _versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in DEPENDENCIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _inputs(job: Job, job_file: Path | None, cohort: xr.Dataset) -> dict:
    """Fingerprints: the job file, the store's metadata, and the files the store was made from."""
    inputs = {"cohort": str(job.cohort),
              "cohort_metadata_sha256": sha256_file(job.cohort / "zarr.json"),
              "cohort_sources": cohort.attrs.get("sources", [])}
    if job_file is not None:
        inputs["job_file"] = str(Path(job_file).absolute())
        inputs["job_file_sha256"] = sha256_file(job_file)
    return inputs


def prepare_job(job: Job, compute=None) -> dict[str, Prepared]:
    """The job's preprocessed cohort(s), made or reused (README: Preprocessing)."""
    kwargs = {} if compute is None else {"compute": compute}
    return prepare(job.cohort, job.preprocess, seed=job.seed, derived=job.derived, **kwargs)


def computer(client: Client, show_progress: bool):
    """Compute lazy objects on ``client`` (progress bar on the CLI); on failure, cancel and
    wait for running tasks so none writes into a temporary directory after it is removed."""
    def compute(*objects):
        futures = [None] * len(objects)
        with computing(client, objects, show_progress) as finished:
            for i, future in finished:
                if future.status != "finished":
                    future.result()  # raises the task's error
                futures[i] = future
            return client.gather(futures)
    return compute


def _record_tables(prepared: dict[str, Prepared]) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Provenance of the preprocessing, and the tables some steps made (PCA scores, QC)."""
    record, tables = {}, {}
    for variant, p in prepared.items():
        steps = []
        for i, r in enumerate(p.records, 1):
            if "table" in r:
                suffix = f".{variant}" if variant else ""
                tables[f"preprocess.{i}.{r['step']}{suffix}"] = pd.DataFrame(r["table"])
            steps.append({k: v for k, v in r.items() if k != "table"})
        record[variant or "main"] = {"derived_store": str(p.path), "reused": p.reused,
                                     "genes": p.cohort.sizes["gene"],
                                     "samples": p.cohort.sizes["sample"], "steps": steps}
    return record, tables


@dataclass
class PlannedJob:
    """A job planned into lazy results, after its preprocessing was made or reused."""

    job: Job
    raw: xr.Dataset
    prepared: dict[str, Prepared]
    results: dict[str, xr.Dataset]  # by result name: the analysis, or "<analysis>.<variant>"

    @property
    def cohort(self) -> xr.Dataset:
        """The cohort the main analyses ran on (the derived store if preprocessed)."""
        return self.prepared[""].cohort if self.prepared else self.raw


def plan_results(job: Job, compute, raw: xr.Dataset | None = None) -> PlannedJob:
    """Make or reuse the job's derived store(s) (this computes, with ``compute``), then plan
    every analysis on every variant (this does not). ``raw``: the job's cohort, already
    opened (a sweep opens each cohort once)."""
    raw = open_cohort(job.cohort) if raw is None else raw
    if job.preprocess:
        prepared = prepare_job(job, compute)
        variants = {v: p.cohort for v, p in prepared.items()}
    else:
        prepared, variants = {}, {"": raw}
    results = {}
    for variant, ds in variants.items():
        for name, result in plan_job(job, ds).items():
            results[f"{name}.{variant}" if variant else name] = result
    return PlannedJob(job, raw, prepared, results)


@contextlib.contextmanager
def _quiet_zarr():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        yield


def _zarr_chunks(result: xr.Dataset) -> xr.Dataset:
    """``result`` with chunks Zarr can store: blocks split to fit the workers' memory
    (``engine.store.cohort.gene_chunks``) can differ by a row, which Zarr refuses; results
    hold a few numbers per gene, so such a dimension becomes one chunk (one task per variable
    joins the blocks; evening them out would take several tasks per block)."""
    uneven = {dim: -1 for var in result.variables.values()
              for dim, sizes in zip(var.dims, var.chunks or ())
              if len(set(sizes[:-1])) > 1 or (len(sizes) > 1 and sizes[-1] > sizes[0])}
    return result.chunk(uneven) if uneven else result


def _zarr_write(result: xr.Dataset, store: Path, group: str | None = None):
    """The lazy write of one result into ``store`` (``group`` of it, or its root)."""
    return _zarr_chunks(result).to_zarr(store, group=group, mode="w", zarr_format=3,
                                        compute=False, consolidated=False)


def _create_results_store(planned: PlannedJob, store: Path) -> None:
    with _quiet_zarr():
        zarr.open_group(store, mode="w", zarr_format=3).attrs["job"] = \
            planned.job.model_dump(mode="json")


def zarr_writes(planned: PlannedJob, store: Path) -> list:
    """Create ``store`` (results.zarr) and return the lazy writes of every result into it."""
    _create_results_store(planned, store)
    with _quiet_zarr():
        return [_zarr_write(result, store, name) for name, result in planned.results.items()]


def write_results(planned: PlannedJob, directory: Path, *, cluster: dict, started, t0: float,
                  job_file: Path | None = None, extra: dict | None = None
                  ) -> dict[str, pd.DataFrame]:
    """After the writes of ``zarr_writes`` ran: consolidate results.zarr and write the tables,
    gene lists, provenance.json and report.html into ``directory``. Returns every table
    written, by file name (``gene_lists/<name>``); a sets x samples score matrix, written wide,
    has ``attrs["wide"]``."""
    from engine import __version__

    job, cohort = planned.job, planned.cohort
    store = directory / "results.zarr"
    with _quiet_zarr():
        zarr.consolidate_metadata(store)
        annotations = gene_annotations(cohort)
        tables, extra_tables = {}, {}
        for name in planned.results:
            # read back in this process: small, and no round trip through the cluster
            written = xr.open_zarr(store, group=name, consolidated=False).load(
                scheduler="synchronous")
            for suffix, table in result_tables(written, annotations).items():
                if suffix:
                    sep = "" if suffix.startswith("_") else "."
                    extra_tables[f"{name}{sep}{suffix}"] = table
                else:
                    tables[name] = table
                    table.attrs["wide"] = "p_value" not in written and "score" in written
    multiple_testing = adjust_families(job, tables)
    preprocessing, step_tables = _record_tables(planned.prepared)
    written_tables = {**tables, **extra_tables, **step_tables}
    for name, table in written_tables.items():
        write_table(table, directory, name)
    lists = {}
    for g in job.gene_lists:
        table = gene_list_table(g, tables)
        write_table(table, directory / "gene_lists", g.name)
        written_tables[f"gene_lists/{g.name}"] = table
        lists[g.name] = len(table)
    provenance = {
        "engine_version": __version__,
        "versions": dict(_versions()),
        "job": job.model_dump(mode="json"),
        "seed": job.seed,
        "preprocess": preprocessing,
        "multiple_testing": multiple_testing,
        "gene_lists": lists,
        "inputs": _inputs(job, job_file, planned.raw),
        **(extra or {}),
        "started_at": started.isoformat(timespec="seconds"),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "cluster": cluster,
        "command": sys.argv,
    }
    (directory / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    cohort_info = {"path": str(job.cohort), "genes": cohort.sizes["gene"],
                   "samples": cohort.sizes["sample"],
                   "scale": cohort["expression"].attrs.get("scale", "?")}
    (directory / "report.html").write_text(render_report(provenance["job"], cohort_info, tables,
                                                         provenance))
    return written_tables


@contextlib.contextmanager
def computing(client: Client, objects: list, show_progress: bool):
    """Compute ``objects`` in one graph; yields an iterator of ``(index, future)`` in the
    order they finish, failed ones included. On leaving the block, whatever is left is
    cancelled and the tasks still running are waited for (so none writes into a temporary
    folder after it is removed)."""
    futures = client.compute(list(objects))
    index = {f.key: i for i, f in enumerate(futures)}
    bar = None
    if show_progress:
        bar = threading.Thread(target=progress, args=(futures,), daemon=True)
        bar.start()
    try:
        yield ((index[f.key], f) for f in as_completed(futures))
    finally:
        client.cancel(futures)
        if any(f.status != "finished" for f in futures):
            wait_until_idle(client)
        if bar is not None:
            bar.join(timeout=5)
            print(file=sys.stderr)


def staging_directory(job: Job, fingerprint: str) -> Path:
    """Where a run of ``job`` collects its results before the rename that commits them:
    ``.<output>.partial-<fingerprint>`` beside the output, the same for every run of the same
    job on the same data, so a run that was interrupted is resumed there. Staging folders of
    other versions of the job are removed."""
    output = job.output.absolute()
    stage = output.with_name(f".{output.name}.partial-{fingerprint.removeprefix('sha256:')[:16]}")
    for old in output.parent.glob(f".{glob.escape(output.name)}.partial-*"):
        if old != stage:
            shutil.rmtree(old, ignore_errors=True)
    stage.mkdir(parents=True, exist_ok=True)
    return stage


def write_analyses(planned: PlannedJob, stage: Path, client: Client,
                   show_progress: bool = False) -> list[str]:
    """Compute every result not yet in ``stage/results.zarr`` in one graph; each is written
    to ``stage/pending/<name>`` and renamed into ``results.zarr/<name>`` as soon as its tasks
    finish (the commit point of an analysis). Returns the names found already committed by an
    earlier, interrupted run. If some analyses fail, the others still commit; then the first
    error is raised."""
    store, pending = stage / "results.zarr", stage / "pending"
    shutil.rmtree(pending, ignore_errors=True)  # writes of an interrupted run
    if not (store / "zarr.json").exists():
        _create_results_store(planned, store)
    done = [name for name in planned.results if (store / name / "zarr.json").exists()]
    todo = [name for name in planned.results if name not in done]
    with _quiet_zarr():
        writes = [_zarr_write(planned.results[name], pending / name) for name in todo]
    errors = []
    with computing(client, writes, show_progress) as finished:
        for i, future in finished:
            if future.status == "finished":
                os.rename(pending / todo[i], store / todo[i])
            else:
                errors.append(future.exception())
    shutil.rmtree(pending, ignore_errors=True)
    if errors:
        raise errors[0]
    return done


def run_job(job: Job, client: Client, *, job_file: Path | None = None,
            show_progress: bool = False) -> Path:
    """Run ``job`` on ``client``; return the results directory. See README: Results.

    Each analysis's arrays are committed as soon as they are computed; a run that is
    interrupted (killed, a worker lost beyond Dask's retries) is resumed by running the same
    job again: it computes only the analyses not yet committed. The results directory itself
    appears, complete, by one rename at the end."""
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.perf_counter()
    compute = computer(client, show_progress)
    _check_output(job.output)
    stage = staging_directory(job, job_fingerprint(job))
    try:
        with monitored(client, stage / "performance-report.html") as usage, \
                blocks_for(client) as budget:
            planned = plan_results(job, compute)
            resumed = write_analyses(planned, stage, client, show_progress)
    except BaseException:
        if not any((stage / "results.zarr").glob("*/zarr.json")):
            shutil.rmtree(stage, ignore_errors=True)  # nothing committed: nothing to resume
        raise
    write_results(planned, stage, cluster=describe(client), started=started, t0=t0,
                  job_file=job_file, extra={"memory": {**(usage.get("memory") or {}),
                                                       "block_budget_bytes": budget},
                                            "resumed_analyses": resumed})
    commit_directory(stage, job.output)
    return job.output
