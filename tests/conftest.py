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
