"""Cohort Zarr stores: ingest, the store contract, lazy opening."""

from engine.store.cohort import open_cohort
from engine.store.contract import check_cohort
from engine.store.ingest import ingest

__all__ = ["check_cohort", "ingest", "open_cohort"]
