"""The ``cohort`` command: ingest, simulate, info, preprocess, run, sweep, query, status, schedule,
demo."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import InputError


def _cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run on an existing Dask cluster instead of a local one")
    p.add_argument("--workers", type=int, metavar="N",
                   help="number of local worker processes (default: one per core)")
    p.add_argument("--threads", action="store_true",
                   help="one local worker with a thread per core instead of processes")
    p.add_argument("--profile", metavar="NAME",
                   help="cluster profile (README: Cluster profiles): a name looked up in "
                        "$COHORT_ENGINE_PROFILES, ./cluster, ~/.config/cohort-engine/cluster, "
                        "then the bundled ones (local, scheduler, slurm, pbs, kubernetes, tls), "
                        "or a .yaml path")


def _client(a):
    """The Dask client the cluster options of ``a`` ask for (engine.cluster.dask_client)."""
    from engine.cluster import dask_client

    return dask_client(a.scheduler, workers=a.workers, processes=not a.threads,
                       profile=a.profile)


APPEND_REFUSES = (("--genes", "genes"), ("--scale", "scale"), ("--chunk-genes", "chunk_genes"),
                  ("--overwrite", "overwrite"))


def cmd_ingest(a) -> None:
    from engine.store import append_samples, ingest, open_cohort
    from engine.store.formats import CARRIES_SAMPLES, detect_format

    matrix = a.matrix[0] if len(a.matrix) == 1 else a.matrix
    if a.samples is None and detect_format(matrix) not in CARRIES_SAMPLES:
        a.ingest_parser.error("--samples is required for a TSV/CSV, GCT, Parquet or featureCounts "
                              "matrix (.h5ad, GEO series matrix, RCC and STAR inputs carry their "
                              "own sample annotations)")
    if a.append:
        given = [flag for flag, name in APPEND_REFUSES if getattr(a, name) not in (None, False)]
        if given:
            a.ingest_parser.error(f"{', '.join(given)} cannot be used with --append: the store "
                                  "keeps its gene annotations, scale and chunking")
        report = append_samples(a.output, matrix, a.samples, layer=a.layer, strand=a.strand,
                                drop_unmatched=a.drop_unmatched)
        print(f"appended {report['samples_added']} samples: {report['samples']} samples now")
        if report["derived_dropped"]:
            print(f"  removed {report['derived_dropped']} derived (preprocessed) stores made from "
                  "the old samples; jobs re-make them")
        out = Path(a.output)
    else:
        out = ingest(matrix, a.samples, a.output, genes=a.genes, scale=a.scale, layer=a.layer,
                     strand=a.strand, chunk_genes=a.chunk_genes, drop_unmatched=a.drop_unmatched,
                     overwrite=a.overwrite)
    _print_info(out, brief=True)
    ds = open_cohort(out)
    if "counts" in ds:
        print(f"  counts: integer read counts as {ds['counts'].dtype}, same chunks")


def _value_counts(values: np.ndarray) -> str:
    if values.dtype.kind == "f":
        ok = values[~np.isnan(values)]
        if not len(ok):
            return f"numeric, all {len(values)} missing"
        return (f"numeric: n={len(ok)}, missing={len(values) - len(ok)}, min={ok.min():.4g}, "
                f"median={np.median(ok):.4g}, max={ok.max():.4g}")
    counts = pd.Series(values.astype(str)).replace("", "<missing>").value_counts()
    shown = ", ".join(f"{k} {v}" for k, v in counts.head(8).items())
    return shown + (f", ... ({len(counts)} distinct)" if len(counts) > 8 else "")


def _print_info(path, brief: bool = False) -> None:
    from engine.store import open_cohort

    ds = open_cohort(path)
    expr = ds["expression"]
    chunks = expr.chunks[0]
    print(f"cohort {path}")
    print(f"  expression: {ds.sizes['gene']} genes x {ds.sizes['sample']} samples, {expr.dtype}, "
          f"scale {expr.attrs['scale']}")
    print(f"  chunks: {len(chunks)} along gene of {max(chunks)} genes x all samples "
          f"({max(chunks) * ds.sizes['sample'] * 4 / 2**20:.1f} MiB each)")
    if brief:
        return
    for dim in ("sample", "gene"):
        names = [n for n, v in ds.data_vars.items() if v.dims == (dim,)]
        print(f"  {dim} annotations ({len(names)}):")
        for name in names:
            print(f"    {name}: {_value_counts(np.asarray(ds[name].values))}")
    print(f"  ingested {ds.attrs['ingested_at']} by cohort-engine {ds.attrs['engine_version']}")
    for src in ds.attrs["sources"]:
        print(f"    {src['role']}: {src['path']} ({src['bytes']} bytes, sha256 {src['sha256']})")
    for entry in ds.attrs.get("appended", []):
        print(f"  appended {entry['at']}: {entry['samples_added']} samples")
    opts = ds.attrs["ingest_options"]
    for key in ("dropped_matrix_samples", "dropped_sheet_samples"):
        if opts.get(key):
            print(f"    {key.replace('_', ' ')}: {', '.join(opts[key])}")


def cmd_simulate(a) -> None:
    from engine.store import open_cohort
    from engine.store.simulate import simulate_cohort, simulation_summary
    from engine.store.simulate_spec import read_spec_file, spec_from_flags

    spec = spec_from_flags(
        read_spec_file(a.spec) if a.spec else None, genes=a.genes, samples=a.samples,
        seed=a.seed, scale=a.scale, groups=a.groups, effects=a.effects, patients=a.patients,
        timepoints=a.timepoints, patient_correlation=a.patient_correlation,
        block_size=a.block_size, block_correlation=a.block_correlation,
        planted_sets=a.planted_sets, null_sets=a.null_sets, set_size=a.set_size)
    out = simulate_cohort(spec, a.output, gene_sets=a.gene_sets, chunk_genes=a.chunk_genes,
                          overwrite=a.overwrite)
    _print_info(out, brief=True)
    for line in simulation_summary(open_cohort(out).attrs):
        print(f"  {line}")


def cmd_info(a) -> None:
    _print_info(a.store)


def _run(job_path: Path, a) -> Path:
    from engine.jobs import load_job, run_job

    job = load_job(job_path)
    with _client(a) as client:
        out = run_job(job, client, job_file=job_path, show_progress=True)
    print(f"results: {out}  (tables *.tsv/*.parquet, results.zarr, provenance.json)")
    print(f"report:  {out / 'report.html'}")
    print(f"dask:    {out / 'performance-report.html'}  (task stream, worker profiles)")
    return out


def cmd_run(a) -> None:
    _run(Path(a.job), a)


def cmd_preprocess(a) -> None:
    from engine.jobs import load_job
    from engine.jobs.monitor import blocks_for
    from engine.jobs.runner import computer, prepare_job

    job = load_job(a.job)
    if not job.preprocess:
        raise InputError(f"job {a.job} has no preprocess steps")
    with _client(a) as client, blocks_for(client):
        prepared = prepare_job(job, computer(client, show_progress=True))
    for variant, p in prepared.items():
        print(f"{variant or 'main'}: {p.path} ({'reused' if p.reused else 'written'})")
        for i, r in enumerate(p.records, 1):
            shown = {k: v for k, v in r.items() if k not in ("step", "options", "table")}
            print(f"  {i}. {r['step']} {r['options']}" + (f" -> {shown}" if shown else ""))
    _print_info(prepared[""].path, brief=True)


def cmd_demo(a) -> None:
    from engine.datasets import demo_job, ingest_all

    root = Path(a.output).absolute()
    root.mkdir(parents=True, exist_ok=True)
    print(f"ingesting the bundled ALL cohort into {root / 'all.zarr'}")
    ingest_all(root / "all.zarr", overwrite=True)
    job_path = root / "demo.yaml"
    shutil.copyfile(demo_job(), job_path)
    out = _run(job_path, a)
    for table in sorted(out.glob("*.tsv")):
        if "." in table.stem:  # an analysis's extra table (slopes, curves, ...)
            continue
        if table.stem.endswith("_sizes"):  # which gene sets were found and scored
            continue
        top = pd.read_csv(table, sep="\t", nrows=5, keep_default_na=False, na_values=["NA"],
                          dtype={"gene": str, "sample": str})  # IDs such as 01005 stay text
        shown = [c for c in ("stratum", "gene", "gene_set", "symbol", "size", "effect", "ci_low",
                             "ci_high", "nes", "statistic", "p_value", "p_adj", "p_perm")
                 if c in top]
        if "p_value" not in top:  # a sets x samples score matrix: its first samples
            shown = list(top.columns[:5])
        print(f"\n{table.stem}: top rows")
        print(top[shown].to_string(index=False, float_format=lambda v: f"{v:.3g}"))


def run_sweep_file(path: Path, a, *, strict: bool = False) -> int:
    """Run a sweep file once (``cohort sweep``; each firing of ``cohort schedule``); returns
    the exit status: 0, or 1 when a unit failed or was invalid."""
    from engine.sweep.run import run_sweep
    from engine.sweep.spec import load_sweep

    sweep, _ = load_sweep(path)
    with _client(a) as client:
        result = run_sweep(sweep, client, sweep_file=path, show_progress=True, strict=strict)
    counts = ", ".join(f"{result.count(s)} {s}" for s in
                       ("computed", "skipped", "failed", "invalid", "retired"))
    print(f"sweep {sweep.name} (run {result.run_id}): {counts}; {result.tasks} tasks")
    for unit, error in result.errors.items():
        print(f"  {result.status[unit]}: {unit}: {error.splitlines()[0]}", file=sys.stderr)
    print(f"results: {sweep.output / 'dataset'}  (cohort query {sweep.output} --analysis NAME)")
    print(f"ledger:  cohort status {sweep.output}")
    report = sweep.output / "runs" / str(result.run_id) / "performance-report.html"
    if report.exists():
        print(f"dask:    {report}  (task stream, worker profiles)")
    return 0 if result.ok else 1


def cmd_sweep(a) -> int:
    if not a.check:
        return run_sweep_file(Path(a.sweep), a, strict=a.strict)
    from engine.sweep.run import check_sweep
    from engine.sweep.spec import load_sweep

    sweep, _ = load_sweep(a.sweep)
    units = check_sweep(sweep, Path(a.sweep))
    for u in units:
        state = "invalid" if u.error else "skip (committed)" if u.skip else "compute"
        print(f"{state:17} {u.id}")
        if u.error:
            print("    " + u.error.replace("\n", "\n    "))
    bad = sum(u.error is not None for u in units)
    todo = sum(u.error is None and not u.skip for u in units)
    print(f"{len(units)} units: {todo} to compute, {len(units) - todo - bad} committed, "
          f"{bad} invalid")
    return 1 if bad else 0


def cmd_query(a) -> None:
    from engine.sweep.dataset import analyses, read_results

    if a.analysis is None and not (a.gene or a.gene_set or a.max_p_adj is not None or a.where):
        print("tables: " + ", ".join(analyses(Path(a.output))))
        return
    frame = read_results(Path(a.output), a.analysis, genes=a.gene, gene_sets=a.gene_set,
                         max_p_adj=a.max_p_adj, where=a.where, columns=a.columns)
    if a.sort:
        frame = frame.sort_values(a.sort, kind="stable", na_position="last")
    if a.out:
        sep = "," if a.out.endswith(".csv") else "\t"
        frame.to_csv(a.out, sep=sep, index=False, na_rep="NA")
        print(f"{len(frame)} rows -> {a.out}", file=sys.stderr)
    else:
        frame.head(a.limit).to_csv(sys.stdout, sep="\t", index=False, na_rep="NA")
        sys.stdout.flush()
        if len(frame) > a.limit:
            print(f"... {len(frame) - a.limit} more rows (--limit N, or -o FILE.tsv)",
                  file=sys.stderr)


def cmd_status(a) -> None:
    from engine.sweep.ledger import status_report

    print(status_report(Path(a.output), as_json=a.json, run_id=a.run, all_runs=a.all))


def _cluster_argv(a) -> list[str]:
    """The cluster options of ``a`` as arguments, passed on to each ``cohort sweep``."""
    argv = ["--scheduler", a.scheduler] if a.scheduler else []
    argv += ["--workers", str(a.workers)] if a.workers else []
    argv += ["--profile", a.profile] if a.profile else []
    return argv + (["--threads"] if a.threads else [])


def cmd_schedule(a) -> None:
    import logging

    from engine.sweep.schedule import command_runner, cron_trigger, run_on_schedule
    from engine.sweep.spec import load_sweep

    trigger = cron_trigger(a.cron, a.timezone)
    load_sweep(a.sweep)  # a bad sweep file fails now (exit 2), not at the first firing
    # each firing runs `cohort sweep` as a child process (README: Scheduling)
    sweep = [sys.executable, "-m", "engine.cli", "sweep", str(Path(a.sweep).absolute())]
    # run_on_schedule logs skipped fire times; APScheduler's own warning would repeat them
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    runs = run_on_schedule(command_runner(sweep + _cluster_argv(a)), trigger, name=a.sweep,
                           max_runs=a.max_runs)
    print(f"{a.sweep}: stopped after {runs} run(s)")


def _simulate_parser(sub) -> None:
    p = sub.add_parser("simulate", help="write a synthetic cohort store (planted effects, "
                                        "correlated genes, paired patients) chunk by chunk")
    p.add_argument("--genes", type=int, metavar="G", help="number of genes")
    p.add_argument("--samples", type=int, metavar="N",
                   help="number of samples (with --patients: patients x time points)")
    p.add_argument("--scale", choices=["log2", "counts"],
                   help="log2: log-normal expression (default); counts: negative-binomial "
                        "counts with library sizes")
    p.add_argument("--groups", action="append", metavar="NAME=LEVEL:n,LEVEL:n",
                   help="a sample annotation with level sizes (of patients with --patients), "
                        "e.g. response=CR:2,PR:1,NR:5; repeatable")
    p.add_argument("--effects", action="append",
                   metavar="[NAME=]AMOUNT:LOG2FC[@GROUP[:CASE/CONTROL]]",
                   help="planted genes: 5%% or 200 genes shifted by LOG2FC in the case level "
                        "(default: second level of the first group vs its first); +/-LOG2FC "
                        "plants all up/down, else random signs; repeatable")
    p.add_argument("--patients", type=int, metavar="P",
                   help="paired design: P patients, one sample per time point")
    p.add_argument("--timepoints", metavar="T1,T2", help="time points (default pre,post)")
    p.add_argument("--patient-correlation", type=float, metavar="C",
                   help="within-patient correlation of a null gene (default 0.5)")
    p.add_argument("--block-size", type=int, metavar="N",
                   help="genes per correlation block (default 50)")
    p.add_argument("--block-correlation", type=float, metavar="RHO",
                   help="correlation of null genes within a block (default 0.3)")
    p.add_argument("--planted-sets", type=int, metavar="N",
                   help="gene sets drawn mostly from planted genes (default 10 with an effect)")
    p.add_argument("--null-sets", type=int, metavar="N", help="random gene sets (default 10)")
    p.add_argument("--set-size", type=int, metavar="N", help="genes per set (default 50)")
    p.add_argument("--gene-sets", metavar="PATH",
                   help="GMT file of the sets (default: the store path with suffix .gmt)")
    p.add_argument("--spec", metavar="SPEC.yaml",
                   help="a simulation spec in YAML; the flags given override its keys")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--chunk-genes", type=int, metavar="N", help="genes per chunk (default ~96 MB)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing store and gene-set file")
    p.add_argument("-o", "--output", required=True, help="store path (STORE.zarr)")
    p.set_defaults(func=cmd_simulate)


def build_parser() -> argparse.ArgumentParser:
    from engine import __version__

    parser = argparse.ArgumentParser(prog="cohort", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cohort-engine {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="write a cohort store from a matrix and a sample sheet")
    p.add_argument("matrix", nargs="+",
                   help="genes x samples: TSV/CSV (.gz/.bz2/.xz), GCT 1.2, Parquet, featureCounts "
                        "output, GEO series matrix, AnnData .h5ad; a folder of NanoString RCC or "
                        "STAR ReadsPerGene.out.tab files, or several STAR files")
    p.add_argument("--samples", help="sample sheet TSV/CSV; first column = sample ID (optional "
                                     "for .h5ad, GEO, RCC and STAR inputs)")
    p.add_argument("--genes", help="gene table TSV/CSV; first column = gene ID (e.g. symbol)")
    p.add_argument("--scale", choices=["log2", "linear", "counts"],
                   help="default: counts for featureCounts, STAR and RCC, else log2; counts "
                        "also stores the integer counts")
    p.add_argument("--layer", metavar="NAME", help=".h5ad: read layers/NAME instead of X")
    p.add_argument("--strand", choices=["unstranded", "forward", "reverse"],
                   help="STAR: count column 2 (unstranded), 3 (forward) or 4 (reverse)")
    p.add_argument("--chunk-genes", type=int, metavar="N", help="genes per chunk (default ~96 MB)")
    p.add_argument("--drop-unmatched", action="store_true",
                   help="drop samples found only in the matrix or only in the sheet")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--append", action="store_true",
                   help="add the matrix's samples to the existing store -o: same genes (any "
                        "order), same sample-sheet columns, the store's scale; rewrites the "
                        "store (write, then rename) and drops its derived stores")
    p.add_argument("-o", "--output", required=True,
                   help="store path (STORE.zarr); with --append, the existing store")
    p.set_defaults(func=cmd_ingest, ingest_parser=p)

    _simulate_parser(sub)

    p = sub.add_parser("info", help="describe a cohort store")
    p.add_argument("store")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("run", help="run a job file on Dask")
    p.add_argument("job", help="job YAML (see schemas/job.schema.json)")
    _cluster_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("preprocess", help="make (or reuse) the derived store of a job's "
                                          "preprocess steps without running its analyses")
    p.add_argument("job", help="job YAML with preprocess steps")
    _cluster_options(p)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("sweep", help="run a sweep file: a grid of jobs as one graph, "
                                     "recomputing only what changed")
    p.add_argument("sweep", help="sweep YAML (see schemas/sweep.schema.json)")
    p.add_argument("--check", action="store_true",
                   help="validate every unit and list what would be computed; compute nothing")
    p.add_argument("--strict", action="store_true",
                   help="run nothing if any unit is invalid (default: run the valid ones)")
    _cluster_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("status", help="print the run ledger of a sweep output: its runs and units")
    p.add_argument("output", help="output directory of a sweep (holds ledger.sqlite)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object {runs, units} with every column")
    p.add_argument("--run", type=int, metavar="N", help="the units of run N (default: the latest)")
    p.add_argument("--all", action="store_true", help="every run (default: the latest 10)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("schedule", help="run a sweep on a cron schedule in a long-lived process")
    p.add_argument("sweep", help="sweep YAML (see schemas/sweep.schema.json)")
    p.add_argument("--cron", required=True, metavar="EXPR",
                   help='crontab expression such as "0 2 * * *" (minute hour day-of-month month '
                        'day-of-week; a 6th field placed first gives seconds)')
    p.add_argument("--timezone", metavar="TZ",
                   help="IANA time zone of the expression, e.g. Europe/Berlin (default: local)")
    p.add_argument("--max-runs", type=int, metavar="N", help=argparse.SUPPRESS)  # for tests
    _cluster_options(p)
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("query", help="read rows of a sweep's results dataset")
    p.add_argument("output", help="the sweep's output folder")
    p.add_argument("--analysis", help="the table (analysis) to read; without any option: "
                                      "list the tables")
    p.add_argument("--gene", action="append", help="gene ID or symbol (repeatable)")
    p.add_argument("--gene-set", action="append", help="gene set name (repeatable)")
    p.add_argument("--max-p-adj", type=float, metavar="Q", help="rows with p_adj <= Q")
    p.add_argument("--where", metavar="EXPR",
                   help="pandas query over any column, e.g. \"cohort == 'c1' and effect > 1\"")
    p.add_argument("--columns", nargs="+", metavar="COL", help="columns to keep")
    p.add_argument("--sort", metavar="COL", help="sort by this column (e.g. p_value)")
    p.add_argument("--limit", type=int, default=50, help="rows printed (default 50)")
    p.add_argument("-o", "--out", metavar="FILE", help="write all rows to a TSV/CSV file")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("demo", help="ingest the bundled ALL cohort and run jobs/demo.yaml on it")
    p.add_argument("-o", "--output", default="cohort-demo", help="demo folder (default ./cohort-demo)")
    _cluster_options(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
