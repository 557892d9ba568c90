"""limma moderated t on a simulated 20,000 x 1,000 float32 store: engine vs R limma.

    python benchmarks/bench_limma.py [--genes 20000] [--samples 1000] [--repeats 3] [--trend]

Baselines measured in the same run on the same float32 values: (a) R limma ``lmFit`` + ``eBayes``
+ ``topTable`` through ``<shared>/oracle/limma.R`` (its own timing of the computation only: no R
start-up, no file reading), when ``Rscript`` with limma is installed; otherwise (a') a loop of
statsmodels OLS fits on 500 genes, extrapolated to all genes (plain OLS t, not moderated);
(b) a bare read of the store's expression array (zarr, no Dask). The engine is timed from the
opened store to every computed result column (fit + eBayes + BH), on the default LocalCluster
(one worker process per core) and on threads; best of --repeats. Prints the ratios engine / R
(target in issue 3: <= 1) and the largest relative difference of the moderated t against R.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from bench_welch import best, simulate, time_on_clusters  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def r_limma(cohort, store: Path, tmp: Path, trend: bool):
    """Run oracle/limma.R on the store's values; returns (seconds, moderated t) or None."""
    script = SHARED / "oracle" / "limma.R"
    if shutil.which("Rscript") is None or not script.exists():
        return None
    probe = subprocess.run(["Rscript", "-e", "library(limma)"], capture_output=True)
    if probe.returncode != 0:
        return None
    genes = np.asarray(cohort["gene"].values).astype(object)
    samples = np.asarray(cohort["sample"].values).astype(object)
    matrix = tmp / "expression.tsv"
    # %.17g of the float64 copy: R reads back exactly the float32 values the engine uses
    values = zarr.open_array(store / "expression", mode="r")[:].astype(np.float64)
    pd.DataFrame(values, index=pd.Index(genes, name="gene"),
                 columns=samples).to_csv(matrix, sep="\t", float_format="%.17g")
    sheet = tmp / "samples.tsv"
    pd.DataFrame({"sample_id": samples, "group": np.asarray(cohort["group"].values)}
                 ).to_csv(sheet, sep="\t", index=False)
    out = tmp / "r_limma.tsv"
    cmd = ["Rscript", str(script), str(matrix), str(sheet), "group", "case", "control", str(out)]
    run = subprocess.run(cmd + (["--trend"] if trend else []), capture_output=True, text=True,
                         check=True)
    seconds = float(re.search(r"ORACLE_TIMING\tlimma\t([0-9.eE+-]+)", run.stderr).group(1))
    table = pd.read_csv(out, sep="\t", index_col=0)
    return seconds, table["t"]


def statsmodels_loop(x: np.ndarray, group: np.ndarray, n: int = 500) -> float:
    import statsmodels.api as sm
    design = sm.add_constant((group == "case").astype(float))
    t = time.perf_counter()
    for g in range(n):
        sm.OLS(x[g].astype(np.float64), design).fit().tvalues
    return (time.perf_counter() - t) * x.shape[0] / n


def main() -> None:
    from engine.stats.limma import limma, two_group_model
    from engine.store import ingest, open_cohort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trend", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        matrix, sheet = simulate(tmp, args.genes, args.samples)
        store = ingest(matrix, sheet, tmp / "sim.zarr")
        cohort = open_cohort(store)
        model = two_group_model(cohort, group="group", case="case", control="control")

        def engine():
            return limma(cohort, model, trend=args.trend).compute()

        read_s = best(lambda: zarr.open_array(store / "expression", mode="r")[:], args.repeats)
        r = r_limma(cohort, store, tmp, args.trend)
        if r is None:
            x = zarr.open_array(store / "expression", mode="r")[:]
            baseline = ("statsmodels OLS loop (500 genes, extrapolated)",
                        statsmodels_loop(x, np.asarray(cohort["group"].values)))
        else:
            baseline = ("R limma lmFit+eBayes+topTable (computation only)", r[0])

        result = engine()
        rows = [(f"engine limma ({label})", seconds, startup)
                for label, seconds, startup in time_on_clusters(engine, args.repeats)]

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"matrix: {args.genes} genes x {args.samples} samples float32, two groups, "
          f"trend={args.trend}, best of {args.repeats}")
    print(f"(b) bare read of the store (zarr):  {read_s:8.3f} s")
    print(f"(a) {baseline[0]}: {baseline[1]:.3f} s")
    for label, seconds, startup in rows:
        print(f"{label}: {seconds:.3f} s  ratio engine/baseline(a) = {seconds / baseline[1]:.2f}"
              f"  (cluster start-up {startup:.1f} s, not included)")
    if r is not None:
        ours = result["statistic"].to_series()
        theirs = r[1].reindex(ours.index)
        rel = np.max(np.abs(ours - theirs) / np.abs(theirs))
        print(f"max relative difference of the moderated t vs R: {rel:.1e}")


if __name__ == "__main__":
    main()
