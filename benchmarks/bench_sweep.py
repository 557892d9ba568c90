"""Sweep benchmark: a 100-unit sweep on one cohort as one Dask graph vs its units one by one.

    python benchmarks/bench_sweep.py [--quick] [--threads] [--workers N] [--permutations 1000]

Issue 7, "Benchmark (not a timed test)": a 100-unit sweep on one cohort, one-graph execution
vs running the units one by one (time and number of tasks), and the no-op re-run time. All
three are measured in the same run, on the same cluster.

Data: the bundled ALL cohort (Chiaretti et al. 2004; 12,625 probes x 128 samples) ingested into
a temporary folder, and a sweep of 5 contrasts x 2 tests x 10 gene-set libraries = 100 units
(``--quick``: 2 x 2 x 5 = 20). Contrasts, all within B-lineage samples: BCR/ABL, ALL1/AF4 and
E2A/PBX1 vs NEG (mol.biol), refractory vs complete remission, MDR-positive vs negative. Tests:
Welch and Student. Libraries: the bundled hallmark, seed_signatures and icr (symbols) and 7
random libraries of 50 sets of 15..200 members written by the benchmark (numpy
``default_rng``, fixed seed): 4 of symbols, 3 of probe IDs. Each unit is the two-group test
and a preranked GSEA of its t statistic (``--permutations``, default 1,000), the shape of
``jobs/sweep_all.yaml``; the test of a contrast x test feeds the GSEA of every library.

Cluster: a LocalCluster as ``cohort sweep`` starts it (``engine.cluster.dask_client``):
``--workers`` worker processes (default one per core), or one process with threads
(``--threads``). Its start-up is not timed. One untimed warm-up unit (``run_job``) runs first
(imports and first reads on the workers). Then, each timed once:

1. one graph: ``run_sweep`` on a fresh output;
2. no-op re-run: ``run_sweep`` again on the unchanged output (every unit is skipped);
3. one by one: ``run_job`` of every unit's job, sequentially, each into its own folder.

Checks printed with the table: every unit's Parquet tables are equal in both executions (same
seed, same numbers), and the no-op re-run skipped every unit and ran no task.

Tasks are counted two ways, the same way for both sides: "graph" tasks, the distinct keys of
the graphs of the results.zarr writes (for the sweep ``SweepResult.tasks``; one by one, the sum
over units of the same count of each unit's writes, recorded around ``zarr_writes``); and
"run" tasks, every task a worker computed (a scheduler plugin counting transitions from
processing to memory), with the seconds the workers spent computing them ("worker s", also by
task kind). Both executions do the same work on the workers but for the shared steps, so a
larger "worker s" in one of them means its tasks ran slower (cores shared with its own client
thread, or with other users of the machine).

The phases of the one-graph run are timed by wrapping the functions ``run_sweep`` calls
(survey: expansion and fingerprints; planning; building the zarr writes; committing units:
``write_results`` and ``write_unit_tables``); the rest of its execution is waiting for the
cluster. The phases of the one-by-one run: planning, building the writes, ``write_results``.
Prints the table, the machine, its load average (the machine may be shared), the command and
the whole run's time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from functools import wraps
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from distributed.diagnostics.plugin import SchedulerPlugin

sys.path.insert(0, str(Path(__file__).parent))
from _bench import closing_lines  # noqa: E402

SEED = 20240607
#: contrast name -> (group annotation, case, control); all within B-lineage samples
CONTRASTS = {
    "bcr_abl": ("mol.biol", "BCR/ABL", "NEG"),
    "all1_af4": ("mol.biol", "ALL1/AF4", "NEG"),
    "e2a_pbx1": ("mol.biol", "E2A/PBX1", "NEG"),
    "refractory": ("remission", "REF", "CR"),
    "mdr": ("mdr", "POS", "NEG"),
}
B_LINEAGE = "BT.str.startswith('B')"
TESTS = ("welch", "student")
BUNDLED = ("hallmark", "seed_signatures", "icr")
RANDOM_SYMBOL_LIBRARIES, RANDOM_ID_LIBRARIES = 4, 3
RANDOM_SETS, MIN_MEMBERS, MAX_MEMBERS = 50, 15, 200
MIN_SIZE = 5
#: --quick: the first 2 contrasts x 2 tests x the first 5 libraries
QUICK_CONTRASTS, QUICK_LIBRARIES = 2, 5


# --------------------------------------------------------------------------- data

def write_random_libraries(work: Path, ids: np.ndarray, symbols: np.ndarray
                           ) -> dict[str, dict[str, str]]:
    """GMT files of random sets of the cohort's symbols or probe IDs; library name ->
    {gene_sets: file name, match: symbol|id}."""
    from engine.genesets import GeneSet, write_gmt

    kinds = ([("symbols", k + 1) for k in range(RANDOM_SYMBOL_LIBRARIES)] +
             [("ids", k + 1) for k in range(RANDOM_ID_LIBRARIES)])
    seeds = np.random.SeedSequence(SEED).spawn(len(kinds))
    distinct = np.unique(symbols[(symbols != "") & (symbols != "nan")])
    libraries = {}
    for (kind, number), seed in zip(kinds, seeds):
        rng = np.random.default_rng(seed)
        pool = distinct if kind == "symbols" else ids
        name = f"random_{kind}_{number}"
        sizes = rng.integers(MIN_MEMBERS, MAX_MEMBERS + 1, size=RANDOM_SETS)
        sets = [GeneSet(f"{name}_set{k + 1:02d}", tuple(pool[rng.choice(len(pool), n,
                                                                         replace=False)]),
                        description="random") for k, n in enumerate(sizes)]
        write_gmt(sets, work / f"{name}.gmt")
        libraries[name] = {"gene_sets": f"{name}.gmt",
                           "match": "symbol" if kind == "symbols" else "id"}
    return libraries


def write_sweep(work: Path, store: Path, libraries: dict, contrasts: list[str],
                permutations: int) -> Path:
    """The sweep file (cohort x contrast x test x library) in ``work``; returns its path."""
    sweep = {
        "name": "bench_sweep",
        "output": "one_graph",
        "seed": 1,
        "axes": {
            "cohort": {"all": store.name},
            "contrast": {c: dict(zip(("group", "case", "control"), CONTRASTS[c]))
                         for c in contrasts},
            "test": list(TESTS),
            "library": libraries,
        },
        "template": {"analyses": [
            {"name": "de", "test": "${test}", "group": "${contrast.group}",
             "case": "${contrast.case}", "control": "${contrast.control}",
             "samples": {"where": B_LINEAGE}},
            {"name": "sets", "test": "gsea_preranked",
             "ranking": {"analysis": "de", "column": "statistic"},
             "gene_sets": "${library.gene_sets}", "match": "${library.match}",
             "min_size": MIN_SIZE, "permutations": permutations},
        ]},
    }
    path = work / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def make_inputs(work: Path, quick: bool, permutations: int) -> tuple[Path, float]:
    """Ingest the ALL cohort, write the libraries and the sweep; (sweep file, ingest s)."""
    from engine.datasets import ingest_all
    from engine.store import open_cohort

    t = time.perf_counter()
    store = ingest_all(work / "all.zarr")
    ingest_s = time.perf_counter() - t
    cohort = open_cohort(store)
    ids = np.asarray(cohort["gene"].values).astype(str)
    symbols = np.asarray(cohort["symbol"].values).astype(str)
    random = write_random_libraries(work, ids, symbols)
    libraries = {name: {"gene_sets": name, "match": "symbol"} for name in BUNDLED} | random
    contrasts = list(CONTRASTS)
    if quick:
        contrasts = contrasts[:QUICK_CONTRASTS]
        libraries = dict(list(libraries.items())[:QUICK_LIBRARIES])
    return write_sweep(work, store, libraries, contrasts, permutations), ingest_s


# --------------------------------------------------------------------------- measuring

class TaskCounter(SchedulerPlugin):
    """On the scheduler: the tasks workers computed (transitions processing -> memory) and
    the seconds they spent computing them, in total and by task kind (key prefix)."""

    name = "bench-task-counter"

    def __init__(self):
        self.count = 0
        self.seconds = defaultdict(float)

    def transition(self, key, start, finish, *args, **kwargs):
        if start == "processing" and finish == "memory":
            self.count += 1
            self.seconds[task_kind(key)] += sum(s["stop"] - s["start"]
                                                for s in kwargs.get("startstops", ())
                                                if s["action"] == "compute")


def task_kind(key) -> str:
    """A task's name without its token and block index: the functions fused into it, e.g.
    ``gsea-preranked-one-per-gene-gsea-preranked-enrichment`` (dask's ``key_split`` keeps only the first)."""
    name = key[0] if isinstance(key, tuple) else str(key)
    return re.sub(r"-[0-9a-f]{32}$", "", name)


def tasks_run(client) -> tuple[int, dict[str, float]]:
    """(tasks computed, worker compute seconds by task kind) since the last call (resets)."""
    def take(dask_scheduler):
        plugin = dask_scheduler.plugins[TaskCounter.name]
        out = (plugin.count, dict(plugin.seconds))
        plugin.count, plugin.seconds = 0, defaultdict(float)
        return out
    return client.run_on_scheduler(take)


@contextlib.contextmanager
def large_graph_warnings(sizes: list[float]):
    """Collect (MiB) and silence distributed's "Sending large graph of size ..." warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        found = re.search(r"Sending large graph of size ([0-9.]+) (\w+)", str(w.message))
        if found:
            factor = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}.get(found.group(2), 1)
            sizes.append(float(found.group(1)) * factor)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


class Phases:
    """Wall time and calls of named functions, by wrapping them where their callers look
    them up (module globals); restored on exit. Nested phases are timed inside their parent."""

    def __init__(self):
        self.seconds = {}
        self.calls = {}
        self.keys = 0  # distinct graph keys of the zarr writes made under zarr_writes
        self.missing: list[str] = []
        self._saved = []

    def wrap(self, module, name: str, label: str | None = None, count_keys: bool = False):
        label = label or name
        original = getattr(module, name, None)
        if original is None:  # the engine was refactored: say so instead of failing
            self.missing.append(f"{module.__name__}.{name}")
            return
        self.seconds[label], self.calls[label] = 0.0, 0

        @wraps(original)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                out = original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t
                self.calls[label] += 1
            if count_keys:
                self.keys += len(set().union(*(w.__dask_graph__().keys() for w in out)))
            return out

        self._saved.append((module, name, original))
        setattr(module, name, timed)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for module, name, original in reversed(self._saved):
            setattr(module, name, original)


def sweep_phases() -> Phases:
    """Phases of ``run_sweep`` (engine.sweep.run looks these names up in its globals)."""
    import engine.sweep.run as run

    p = Phases()
    for name, label in (("survey", "survey (expand + fingerprints)"),
                        ("job_fingerprint", "  unit fingerprints"),
                        ("_plan", "plan units"),
                        ("_execute", "execute (writes + compute + commits)"),
                        ("zarr_writes", "  build zarr writes"),
                        ("_commit", "  commit units"),
                        ("write_results", "    write_results (tables, report)"),
                        ("write_unit_tables", "    write_unit_tables (Parquet)")):
        p.wrap(run, name, label)
    return p


def job_phases() -> Phases:
    """Phases of ``run_job`` (engine.jobs.runner looks these names up in its globals)."""
    import engine.jobs.runner as runner

    p = Phases()
    p.wrap(runner, "plan_results", "plan units")
    p.wrap(runner, "zarr_writes", "build zarr writes", count_keys=True)
    p.wrap(runner, "write_results", "write_results (tables, report)")
    return p


def one_graph(sweep_file: Path, client) -> dict:
    """``run_sweep`` of the sweep file: wall seconds, tasks, worker seconds, unit counts."""
    from engine.sweep.run import run_sweep
    from engine.sweep.spec import load_sweep

    sweep, _ = load_sweep(sweep_file)
    tasks_run(client)
    graphs_mib: list[float] = []
    with sweep_phases() as phases, large_graph_warnings(graphs_mib):
        t = time.perf_counter()
        result = run_sweep(sweep, client, sweep_file=sweep_file)
        seconds = time.perf_counter() - t
    if not result.ok:
        raise SystemExit(f"the sweep failed: {result.errors}")
    run, worker = tasks_run(client)
    return {"seconds": seconds, "graph": result.tasks, "run": run, "worker": worker,
            "computed": result.count("computed"), "skipped": result.count("skipped"),
            "units": len(result.status), "phases": phases, "graphs_mib": graphs_mib}


def one_by_one(sweep_file: Path, client, output: Path) -> dict:
    """``run_job`` of every unit's job in grid order, each into ``output/<unit>``."""
    from engine.jobs.runner import run_job
    from engine.sweep.spec import expand, load_sweep

    sweep, base = load_sweep(sweep_file)
    units = expand(sweep, base)
    tasks_run(client)
    graphs_mib: list[float] = []
    with job_phases() as phases, large_graph_warnings(graphs_mib):
        t = time.perf_counter()
        for u in units:
            run_job(u.job.model_copy(update={"output": output / u.id}), client)
        seconds = time.perf_counter() - t
    run, worker = tasks_run(client)
    return {"seconds": seconds, "graph": phases.keys, "run": run, "worker": worker,
            "units": len(units), "phases": phases, "graphs_mib": graphs_mib}


def warm_up(sweep_file: Path, client, output: Path) -> None:
    """One unit's job, untimed: imports and first reads on the workers."""
    from engine.jobs.runner import run_job
    from engine.sweep.spec import expand, load_sweep

    sweep, base = load_sweep(sweep_file)
    job = expand(sweep, base)[0].job
    run_job(job.model_copy(update={"output": output}), client)


def same_tables(sweep_output: Path, single_output: Path) -> tuple[int, int]:
    """(units whose Parquet tables are equal in both runs, units): same seed, same numbers."""
    units = sorted(p for p in (sweep_output / "units").iterdir() if p.is_dir())
    equal = 0
    for unit in units:
        names = sorted(p.name for p in unit.glob("*.parquet"))
        other = sorted(p.name for p in (single_output / unit.name).glob("*.parquet"))
        equal += names == other and all(
            pd.read_parquet(unit / n).equals(pd.read_parquet(single_output / unit.name / n))
            for n in names)
    return equal, len(units)


# --------------------------------------------------------------------------- report

def phase_lines(title: str, r: dict) -> list[str]:
    """The client-side phases of one execution, then its workers' compute by task kind."""
    lines = [f"{title} ({r['seconds']:.2f} s wall; indented: inside the line above):"]
    for label, seconds in r["phases"].seconds.items():
        lines.append(f"  {label:<40} {seconds:8.2f} s {100 * seconds / r['seconds']:5.1f}%  "
                     f"({r['phases'].calls[label]} call(s))")
    if r["phases"].missing:
        lines.append(f"  not timed (no such function): {', '.join(r['phases'].missing)}")
    worker = sum(r["worker"].values())
    top = sorted(r["worker"].items(), key=lambda kv: -kv[1])[:4]
    lines.append(f"  workers computed {worker:.2f} s; by task kind: " +
                 ", ".join(f"{k} {v:.2f} s" for k, v in top))
    if r["graphs_mib"]:
        lines.append(f"  distributed warned of {len(r['graphs_mib'])} large graph(s), the "
                     f"largest {max(r['graphs_mib']):.1f} MiB")
    return lines


def summary(args, cluster: dict, graph: dict, single: dict, noop: dict,
            agreement: tuple[int, int]) -> list[str]:
    kind = (f"1 process, {cluster['threads']} threads" if args.threads else
            f"{cluster['workers']} worker processes x {cluster['threads'] // cluster['workers']}"
            " thread(s)")
    lines = [f"summary: a {graph['units']}-unit sweep on the ALL cohort (12,625 probes x 128 "
             f"samples; two-group test + preranked GSEA, {args.permutations} permutations), "
             f"LocalCluster with {kind}; each timed once"]
    header = (f"{'execution':<22} {'wall s':>8} {'graph tasks':>12} {'run tasks':>10} "
              f"{'worker s':>9}")
    lines += [header, "-" * len(header)]
    for name, r in (("one graph (run_sweep)", graph), ("one by one (run_job)", single),
                    ("no-op re-run", noop)):
        lines.append(f"{name:<22} {r['seconds']:8.2f} {r['graph']:12d} {r['run']:10d} "
                     f"{sum(r['worker'].values()):9.2f}")
    lines.append(f"ratios: one by one / one graph: time {single['seconds'] / graph['seconds']:.2f}"
                 f"x, graph tasks {single['graph'] / graph['graph']:.2f}x, run tasks "
                 f"{single['run'] / graph['run']:.2f}x; no-op re-run / one graph time "
                 f"{noop['seconds'] / graph['seconds']:.4f}")
    lines.append(f"results: Parquet tables equal in both executions for {agreement[0]} of "
                 f"{agreement[1]} units; no-op re-run skipped {noop['skipped']} of "
                 f"{noop['units']} units")
    lines.append("graph tasks: distinct keys of the graphs of the results.zarr writes (one by "
                 "one: summed over units); run tasks: tasks the workers computed (scheduler "
                 "transitions processing -> memory); worker s: their compute time, summed over "
                 "workers")
    return lines


def main() -> None:
    from engine.cluster import dask_client, describe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_CONTRASTS} contrasts x 2 tests x "
                             f"{QUICK_LIBRARIES} libraries = 20 units")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: one per core, as cohort sweep)")
    parser.add_argument("--threads", action="store_true",
                        help="one worker process with threads instead of worker processes")
    parser.add_argument("--permutations", type=int, default=1000,
                        help="gene-set permutations of each unit's GSEA (default 1000)")
    args = parser.parse_args()

    started = time.perf_counter()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        work = Path(tmp)
        sweep_file, ingest_s = make_inputs(work, args.quick, args.permutations)
        t = time.perf_counter()
        with dask_client(workers=args.workers, processes=not args.threads,
                         quiet=True) as client:
            startup = time.perf_counter() - t
            cluster = describe(client)
            client.register_plugin(TaskCounter())
            warm_up(sweep_file, client, work / "warm_up")
            print(f"cluster: {cluster['workers']} worker(s), {cluster['threads']} thread(s), "
                  f"start-up {startup:.1f} s (not timed); ingest {ingest_s:.1f} s", flush=True)
            graph = one_graph(sweep_file, client)
            print(f"one graph: {graph['seconds']:.1f} s, {graph['computed']} units computed",
                  flush=True)
            noop = one_graph(sweep_file, client)
            print(f"no-op re-run: {noop['seconds']:.2f} s, {noop['skipped']} units skipped",
                  flush=True)
            single = one_by_one(sweep_file, client, work / "one_by_one")
            print(f"one by one: {single['seconds']:.1f} s", flush=True)
        agreement = same_tables(work / "one_graph", work / "one_by_one")

    if noop["skipped"] != noop["units"] or noop["graph"] or noop["run"]:
        print(f"!! the no-op re-run was not a no-op: {noop['skipped']} of {noop['units']} "
              f"units skipped, {noop['graph']} graph / {noop['run']} run tasks")
    print()
    for line in summary(args, cluster, graph, single, noop, agreement):
        print(line)
    for title, r in (("phases of the one-graph run", graph),
                     ("phases of the one-by-one run", single),
                     ("phases of the no-op re-run", noop)):
        for line in phase_lines(title, r):
            print(line)
    for line in closing_lines(load_start, started):
        print(line)


if __name__ == "__main__":
    main()
