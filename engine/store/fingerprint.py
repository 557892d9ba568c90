"""A content fingerprint of a cohort store: equal for equal data, whenever and wherever ingested.

Sweeps skip a unit whose inputs have not changed, so they need a digest of a store's DATA that
ignores when and from where it was written. ``content_digest`` hashes every file of the store
except the root ``zarr.json`` (its attributes hold the ingest time, absolute source paths and
the consolidated copy of the arrays' metadata; the arrays' own ``zarr.json`` files, which are
hashed, hold that metadata), the ``derived/`` folder (derived stores of preprocessing, which
come and go without changing the cohort) and hidden files (temporary directories of
write-then-rename). Ingest and append record it as the root attribute ``content_sha256``;
``store_fingerprint`` reads it back without touching the data.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from engine.errors import InputError
from engine.fsutil import sha256_file

ROOT_METADATA = "zarr.json"
DERIVED = "derived"


def data_files(store: Path) -> list[str]:
    """Relative POSIX paths of the files ``content_digest`` hashes, sorted."""
    store = Path(store)
    found = []
    for folder, dirs, files in os.walk(store):
        here = Path(folder).relative_to(store)
        # hidden: temporary directories and files of write-then-rename, editor and OS debris
        dirs[:] = [d for d in dirs if not d.startswith(".")
                   and not (here == Path(".") and d == DERIVED)]
        for name in files:
            if name.startswith(".") or (here == Path(".") and name == ROOT_METADATA):
                continue
            found.append((here / name).as_posix())
    return sorted(found)


def content_digest(store: str | Path) -> str:
    """``sha256:<hex>`` over the store's data files (see the module docstring).

    Each file contributes its relative path, its size and the sha256 of its bytes (read in
    blocks, so memory stays flat whatever the chunk sizes); the files are taken in sorted path
    order. Same genes, samples, annotations, values and chunking give the same digest; any
    changed value or annotation, or an added sample, changes it.
    """
    store = Path(store)
    digest = hashlib.sha256()
    for relative in data_files(store):
        path = store / relative
        digest.update(f"{relative}\0{path.stat().st_size}\0{sha256_file(path)}\n".encode())
    return "sha256:" + digest.hexdigest()


def store_fingerprint(store: str | Path) -> str:
    """The store's content fingerprint: its ``content_sha256`` attribute (reads only the root
    ``zarr.json``), or ``content_digest`` computed now for a store written before ingest
    recorded it, and for a derived store (``derived_from``), whose attributes are copied from
    its raw store and may hold the raw store's digest."""
    store = Path(store)
    if not (store / ROOT_METADATA).is_file():
        raise InputError(f"{store} is not a cohort store (create one with `cohort ingest`)")
    with open(store / ROOT_METADATA, encoding="utf-8") as f:
        attributes = json.load(f).get("attributes", {})
    return recorded_fingerprint(attributes) or content_digest(store)


def recorded_fingerprint(attributes: dict) -> str | None:
    """The ``content_sha256`` a store's attributes hold, if it can be trusted: not for a
    derived store (``derived_from``), whose attributes may be copies of its raw store's."""
    if "derived_from" in attributes:
        return None
    return attributes.get("content_sha256")
