"""Cohort Zarr stores: ingest, append, the store contract, lazy opening, content fingerprints."""

from engine.store.append import append_samples
from engine.store.cohort import open_cohort
from engine.store.contract import check_cohort
from engine.store.fingerprint import content_digest, store_fingerprint
from engine.store.ingest import ingest

__all__ = ["append_samples", "check_cohort", "content_digest", "ingest", "open_cohort",
           "store_fingerprint"]
