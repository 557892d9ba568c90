from __future__ import annotations

import os
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest

from hypothesis import settings

from engine.datasets import ingest_all

# Property tests draw the same examples on every run (CI must not depend on luck);
# HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("repeatable", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

DATA = Path(__file__).parent / "data"


def write_job(tmp_path: Path, store, analyses: str, extra: str = "", seed: int = 7) -> Path:
    """A job file in ``tmp_path`` on ``store`` with the (indented YAML) ``analyses``."""
    import textwrap

    path = tmp_path / "job.yaml"
    path.write_text(f"cohort: {store}\noutput: out\nseed: {seed}\n{extra}analyses:\n"
                    + textwrap.dedent(analyses))
    return path


def read_table(out: Path, name: str) -> pd.DataFrame:
    """A result table as written (``NA`` = missing; other text such as "NaN" stays text)."""
    return pd.read_csv(out / f"{name}.tsv", sep="\t", keep_default_na=False, na_values=["NA"],
                       float_precision="round_trip")  # exact on pandas 2 too


def lazy_matrix(values, chunks=None, genes=None, samples=None):
    """``values`` as a (gene, sample) DataArray on Dask, ``chunks`` genes per chunk (default
    one chunk), genes g0.. and samples s0.. unless given."""
    import dask.array as da
    import xarray as xr

    values = np.asarray(values)
    g, n = values.shape
    return xr.DataArray(
        da.from_array(values, chunks=(chunks or max(g, 1), -1)), dims=("gene", "sample"),
        coords={"gene": genes if genes is not None else [f"g{i}" for i in range(g)],
                "sample": samples if samples is not None else [f"s{j}" for j in range(n)]})


def write_cohort_files(directory: Path, n_genes: int = 40, n_per_group: int = 4, seed: int = 0,
                       sep: str = "\t", suffix: str = ".tsv") -> dict[str, Path]:
    """A small two-group cohort with a pairing, ties and a few NaN: matrix, sheet, gene table."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per_group
    values = np.round(rng.normal(8, 1, (n_genes, n)), 1)
    values[: n_genes // 2, :n_per_group] += 1.5
    values[rng.random(values.shape) < 0.03] = np.nan
    genes = [f"G{i:03d}" for i in range(n_genes)]
    samples = [f"0{i + 1:02d}" for i in range(n)]  # leading zeros must survive
    matrix = pd.DataFrame(values, index=pd.Index(genes, name="gene_id"), columns=samples)
    sheet = pd.DataFrame({"sample_id": samples,
                          "group": ["case"] * n_per_group + ["control"] * n_per_group,
                          "patient": [f"P{i % n_per_group}" for i in range(n)],
                          "age": rng.integers(30, 80, n).astype(str)})
    gene_table = pd.DataFrame({"gene_id": genes, "symbol": [f"SYM{i}" for i in range(n_genes)]})
    paths = {"matrix": directory / f"matrix{suffix}", "samples": directory / f"samples{suffix}",
             "genes": directory / f"genes{suffix}"}
    matrix.to_csv(paths["matrix"], sep=sep, na_rep="NA")
    sheet.to_csv(paths["samples"], sep=sep, index=False)
    gene_table.to_csv(paths["genes"], sep=sep, index=False)
    return paths


@pytest.fixture
def cohort_files(tmp_path) -> dict[str, Path]:
    return write_cohort_files(tmp_path)


@pytest.fixture(scope="session")
def all_store(tmp_path_factory) -> Path:
    """The bundled ALL cohort, ingested once per test session (3 chunks of 5,000 genes)."""
    return ingest_all(tmp_path_factory.mktemp("all") / "all.zarr", chunk_genes=5000)


class CountingScheduler:
    """A dask scheduler that counts computes and fails past ``max_computes`` (as in xarray's tests)."""

    def __init__(self, max_computes: int = 0):
        self.total = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total += 1
        if self.total > self.max_computes:
            raise RuntimeError(f"computed {self.total} times, allowed {self.max_computes}")
        return dask.get(dsk, keys, **kwargs)


@pytest.fixture
def no_compute():
    """Within the block, any dask compute raises."""
    return lambda: dask.config.set(scheduler=CountingScheduler(0))


SWEEP_TEMPLATE = """
name: nightly
output: {output}
seed: 3
axes:
  cohort: {{c0: c0.zarr, c1: c1.zarr, c2: c2.zarr}}
  contrast:
    group: {{group: group, case: case, control: control}}
    sex: {{group: sex, case: F, control: M}}
  library: {{a: lib_a.gmt, b: lib_b.gmt}}
  test: [welch, student]
template:
  analyses:
    - name: de
      test: ${{test}}
      group: ${{contrast.group}}
      case: ${{contrast.case}}
      control: ${{contrast.control}}
    - name: sets
      test: gsea_preranked
      ranking: {{analysis: de, column: statistic}}
      gene_sets: ${{library}}
      min_size: 5
      permutations: 200
"""


def sweep_cohort_files(directory: Path, seed: int, n_genes: int = 120, n: int = 12,
                       first: int = 0) -> tuple[Path, Path]:
    """A matrix and sheet of ``n`` samples (``first``.. numbered) for sweep tests: groups
    case/control (first half case, a quarter of the genes up by 2), sex F/M alternating."""
    rng = np.random.default_rng([seed, first])
    values = np.round(rng.normal(8, 1, (n_genes, n)), 3)
    case = np.arange(first, first + n) % 12 < 6
    values[: n_genes // 4, case] += 2.0
    samples = [f"c{seed}s{j:03d}" for j in range(first, first + n)]
    directory.mkdir(parents=True, exist_ok=True)
    matrix = pd.DataFrame(values, columns=samples,
                          index=pd.Index([f"G{i:03d}" for i in range(n_genes)], name="gene_id"))
    sheet = pd.DataFrame({"sample_id": samples, "group": np.where(case, "case", "control"),
                          "sex": ["F" if j % 2 else "M" for j in range(first, first + n)]})
    matrix.to_csv(directory / f"m{first}.tsv", sep="\t")
    sheet.to_csv(directory / f"s{first}.tsv", sep="\t", index=False)
    return directory / f"m{first}.tsv", directory / f"s{first}.tsv"


def write_sweep_inputs(root: Path, output: str = "out", n_cohorts: int = 3) -> Path:
    """Cohorts c0..c2 (120 genes in chunks of 40, 12 samples), two gene-set libraries of six
    random sets, and the 3 x 2 x 2 x 2 sweep file SWEEP_TEMPLATE; returns the sweep path."""
    from engine.store import ingest

    for c in range(n_cohorts):
        matrix, sheet = sweep_cohort_files(root / f"src{c}", c)
        ingest(matrix, sheet, root / f"c{c}.zarr", chunk_genes=40)
    rng = np.random.default_rng(5)
    for lib in ("lib_a", "lib_b"):
        lines = ["\t".join([f"{lib}_set{k}", "na"] +
                           [f"G{i:03d}" for i in rng.choice(120, 15, replace=False)])
                 for k in range(6)]
        (root / f"{lib}.gmt").write_text("\n".join(lines) + "\n")
    path = root / "sweep.yaml"
    path.write_text(SWEEP_TEMPLATE.format(output=output))
    return path
