"""Real cohorts bundled with the engine.

``ALL``: acute lymphoblastic leukaemia, 128 samples x 12,625 HG-U95Av2 probes, RMA log2
(Chiaretti et al. 2004; Bioconductor ALL 1.40.0, Artistic-2.0). See ``all/README.md``.
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path

import xarray as xr

ALL_DIR = Path(str(resources.files("engine.datasets") / "all"))


def all_files() -> dict[str, Path]:
    """Paths of the bundled ALL files, as ``cohort ingest`` takes them."""
    return {"matrix": ALL_DIR / "expression.parquet", "samples": ALL_DIR / "samples.tsv",
            "genes": ALL_DIR / "genes.tsv"}


def ingest_all(output: str | Path, *, chunk_genes: int | None = None, overwrite: bool = False) -> Path:
    """Ingest the bundled ALL cohort into a store at ``output`` (the same path as `cohort ingest`)."""
    from engine.store import ingest

    files = all_files()
    return ingest(files["matrix"], files["samples"], output, genes=files["genes"], scale="log2",
                  chunk_genes=chunk_genes, overwrite=overwrite)


def load_all(*, chunk_genes: int | None = None) -> xr.Dataset:
    """The ALL cohort as an in-memory Dataset that follows the cohort-store contract."""
    from engine.store import open_cohort

    with tempfile.TemporaryDirectory() as tmp:
        return open_cohort(ingest_all(Path(tmp) / "all.zarr", chunk_genes=chunk_genes)).load()


def demo_job() -> Path:
    """``jobs/demo.yaml``: packaged in the wheel, read from the source tree in a checkout."""
    packaged = Path(str(resources.files("engine.datasets") / "demo.yaml"))
    return packaged if packaged.exists() else Path(__file__).parents[2] / "jobs" / "demo.yaml"
