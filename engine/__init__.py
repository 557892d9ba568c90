"""cohort-engine: re-analyse gene-expression cohorts stored as chunked Zarr, on Dask."""

__version__ = "0.1.0"

from engine.store import open_cohort  # noqa: E402

__all__ = ["__version__", "open_cohort"]
