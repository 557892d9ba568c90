"""``cohort ingest --append``: add samples to an existing cohort store ("the cohort grew").

The new batch is read by ``ingest`` itself (same readers, same validation) into a hidden
temporary store next to the target; it is then checked against the store (new sample IDs, the
same genes, the same sample annotation columns and types, the same scale) and the two are
merged into a new store, written with ingest's own writer and renamed over the old one. The
result is the store a single ingest of the combined matrix and sample sheet would have written.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from engine.errors import InputError, preview
from engine.fsutil import atomic_directory
from engine.store.cohort import open_cohort
from engine.store.formats import open_matrix, read_table
from engine.store.ingest import (FORMAT_NAMES, GeneBlockWriter, default_chunk_genes,
                                 finish_store, ingest, now_utc)

# attributes of the batch's own ingest that describe the whole store, not the batch
STORE_ATTRIBUTES = ("engine_version", "ingested_at", "sources", "ingest_options",
                    "content_sha256", "appended")


def append_samples(store: str | Path, matrix, samples: str | Path | None = None, *,
                   layer: str | None = None, strand: str | None = None,
                   drop_unmatched: bool = False) -> dict:
    """Append the samples of ``matrix`` (and their ``samples`` sheet) to the cohort ``store``.

    Returns a report: ``store`` (path), ``samples_added``, ``samples`` (the new total),
    ``genes``, ``chunk_genes``, ``derived_dropped`` (derived stores removed) and
    ``content_sha256`` (the new fingerprint).

    The batch is read exactly as ``ingest`` reads a matrix (any format, ``layer``, ``strand``,
    ``drop_unmatched``, every validation), at the store's scale: a counts store takes only
    non-negative integer counts (int32 counts widen to int64 when a new count needs it).
    It is refused, with one InputError saying what differs and the fix, when: a sample ID is
    already in the store; its genes are not exactly the store's (a different order is fine: rows
    are realigned to the store's order); a format implies counts and the store is not a counts
    store; its sample annotation columns are not the store's, or a column is numeric on one side
    and text on the other (a column that is empty on one side takes the other side's type, and
    numbers in the new sheet's column of a text annotation are kept as their text, as a single
    ingest would); a gene annotation it carries (featureCounts Length, GCT Description, ...)
    disagrees with the store's; the store is a derived (preprocessed) store.

    The result equals a single ingest of the combined matrix and sheet: old samples first, then
    the new ones in the batch's order; gene annotations, attributes and compressors kept;
    ``sources`` extended with the batch's files and an ``appended`` entry recorded
    (``at``, ``samples_added``, ``samples``, ``sources``, ``ingest_options``);
    ``content_sha256`` updated. A store with ingest's default chunking gets the default chunking
    for its new sample count (chunks stay ~96 MB); a chunking chosen with ``--chunk-genes`` is
    kept. A chunk holds all samples, so appending rewrites every chunk of the store: time grows
    with the whole store, memory stays at a few chunks. A batch in the store's gene order is
    read once; in a shuffled order, every store chunk reads the batch chunks holding its genes. The new store is written next to the old
    one and renamed over it only when complete, so a refused or failed append leaves the store as
    it was. Derived stores under ``STORE/derived/`` are deleted: they were made from the old
    samples (jobs re-make them on their next run). Two appends to one store at once: the second
    is refused (a lock on the sibling file ``.STORE.lock``).
    """
    store = Path(store)
    if not store.exists():
        raise InputError(f"{store} does not exist: create it with `cohort ingest` (without "
                         "--append), then append further samples to it")
    with _append_lock(store):
        return _append(store, matrix, samples, layer, strand, drop_unmatched)


@contextlib.contextmanager
def _append_lock(store: Path) -> Iterator[None]:
    """One append at a time per store: an exclusive ``flock`` on the sibling file
    ``.STORE.lock``, refused at once when held (two appends would each rename their own
    merge over the store, and one batch would be lost). The OS releases it when its holder
    exits, however it exits; the file is never deleted (see ``engine.sweep.lock``)."""
    path = store.absolute().with_name(f".{store.name}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another append to {store} is running (wait for it to finish, then "
                             "append again)") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _append(store: Path, matrix, samples, layer, strand, drop_unmatched: bool) -> dict:
    """``append_samples`` once the store is locked: read the batch, check it, merge, rename."""
    cohort = open_cohort(store)
    if "derived_from" in cohort.attrs:
        raise InputError(f"{store} is a derived store (preprocessed from "
                         f"{cohort.attrs['derived_from']}): append the samples to that raw store")
    scale = cohort["expression"].attrs["scale"]
    sheet = read_table(samples, "sample sheet") if samples is not None else None
    incoming = _incoming_samples(store, cohort, matrix, sheet, scale, layer, strand,
                                 drop_unmatched)
    # the batch is read in chunks of the merged store's, so that a batch in the store's gene
    # order is read chunk for chunk
    chunk = combined_chunk(cohort, cohort.sizes["sample"] + len(incoming))
    with tempfile.TemporaryDirectory(prefix=f".{store.name}.tmp-batch-", dir=store.parent) as tmp:
        try:
            batch_path = ingest(matrix, samples, Path(tmp) / "batch.zarr", scale=scale,
                                layer=layer, strand=strand, chunk_genes=chunk,
                                drop_unmatched=drop_unmatched)
        except InputError as e:
            raise InputError(f"cannot append to {store} (a {scale} store): {e}") from None
        batch = open_cohort(batch_path)
        sample_vars = _check_batch(store, cohort, batch, sheet)
        chunk = combined_chunk(cohort, cohort.sizes["sample"] + batch.sizes["sample"])
        derived = sorted((store / "derived").glob("*.zarr")) if (store / "derived").is_dir() else []
        with atomic_directory(store, overwrite=True) as out, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            _write_combined(out, store, batch_path, cohort, batch, sample_vars, chunk)
            finish_store(out, _gene_annotations(cohort), scale,
                         _combined_attributes(cohort, batch, chunk))
    merged = open_cohort(store)
    return {"store": str(store), "samples_added": batch.sizes["sample"],
            "samples": merged.sizes["sample"], "genes": merged.sizes["gene"],
            "chunk_genes": chunk, "derived_dropped": len(derived),
            "content_sha256": merged.attrs["content_sha256"]}


def combined_chunk(cohort: xr.Dataset, n_samples: int) -> int:
    """Genes per chunk of the store after the append, with ``n_samples`` samples in all.

    A store chunked as ingest chunks by default (``default_chunk_genes`` of its samples, at most
    all genes) is re-chunked to the default for ``n_samples``, so chunks stay ~96 MB however
    much the cohort grows; any other chunking was chosen with ``--chunk-genes`` and is kept.
    """
    n_genes = cohort.sizes["gene"]
    stored = cohort["expression"].data.chunks[0][0]
    if stored == min(default_chunk_genes(cohort.sizes["sample"]), n_genes):
        return min(default_chunk_genes(n_samples), n_genes)
    return stored


def _incoming_samples(store: Path, cohort: xr.Dataset, matrix, sheet: pd.DataFrame | None,
                      scale: str, layer, strand, drop_unmatched: bool) -> list[str]:
    """The batch's sample IDs, read from the matrix's header before any data row, so that a
    batch refused for its scale or its sample IDs is refused at once."""
    reader = open_matrix(matrix, layer=layer, strand=strand)
    if reader.scale == "counts" and scale != "counts":
        name = FORMAT_NAMES.get(reader.kind, reader.kind)
        raise InputError(f"cannot append to {store}: {name} files hold read counts and the store "
                         f"holds {scale} values (append counts to a store ingested with --scale "
                         "counts, or give a matrix on the store's scale)")
    ids = reader.sample_ids
    if sheet is not None and drop_unmatched:
        in_sheet = set(sheet.index)
        ids = [s for s in ids if s in in_sheet]
    _check_new_ids(store, cohort, ids)
    return ids


def _check_new_ids(store: Path, cohort: xr.Dataset, ids) -> None:
    taken = set(cohort["sample"].values)
    again = [s for s in ids if s in taken]
    if again:
        raise InputError(f"cannot append to {store}: {len(again)} sample IDs are already in the "
                         f"store: {preview(again, 5)} (remove those samples from the new matrix, "
                         "or rename them if they are different samples)")


def _check_batch(store: Path, cohort: xr.Dataset, batch: xr.Dataset,
                 sheet: pd.DataFrame | None) -> dict:
    """The combined sample annotations, after refusing, in one InputError listing every problem,
    a batch whose IDs, genes or annotations do not fit the store."""
    _check_new_ids(store, cohort, batch["sample"].values)
    gene_set = _gene_set_problem(cohort, batch)
    problems = [gene_set] if gene_set else _gene_annotation_conflicts(cohort, batch)
    sample_vars, annotation_problems = _combined_sample_annotations(cohort, batch, sheet)
    problems += annotation_problems
    if problems:
        raise InputError(f"cannot append to {store}: " + "; ".join(problems))
    return sample_vars


def _gene_set_problem(cohort: xr.Dataset, batch: xr.Dataset) -> str | None:
    """What is missing from and extra in the batch's genes, or None when they are the store's."""
    old_genes = pd.Index(cohort["gene"].values)
    new_genes = pd.Index(batch["gene"].values)
    missing = old_genes.difference(new_genes, sort=False)
    extra = new_genes.difference(old_genes, sort=False)
    if not len(missing) and not len(extra):
        return None
    parts = []
    if len(missing):
        parts.append(f"{len(missing)} of the store's genes are missing ({preview(missing, 5)})")
    if len(extra):
        parts.append(f"{len(extra)} genes are not in the store ({preview(extra, 5)})")
    return (f"the new matrix must hold exactly the store's {len(old_genes)} genes (in any "
            f"order): {', '.join(parts)}; give it the store's gene rows, or re-ingest the whole "
            "cohort to change the gene set")


def _annotations(ds: xr.Dataset, dim: str) -> list[str]:
    return [n for n, v in ds.data_vars.items() if v.dims == (dim,)]


def _present(values: np.ndarray) -> np.ndarray:
    """Which values are not missing (NaN for numbers, '' for text)."""
    return ~np.isnan(values) if values.dtype.kind == "f" else values != ""


def _combined_sample_annotations(cohort: xr.Dataset, batch: xr.Dataset,
                                 sheet: pd.DataFrame | None) -> tuple[dict, list[str]]:
    """Each sample annotation of the store followed by the batch's values, typed as a single
    ingest of the combined sheet would type it, and the problems that prevent it."""
    old_names, new_names = _annotations(cohort, "sample"), _annotations(batch, "sample")
    missing = [n for n in old_names if n not in new_names]
    extra = [n for n in new_names if n not in old_names]
    problems = []
    if missing:
        problems.append(f"the new samples lack the store's sample annotations {preview(missing)} "
                        "(add these columns to the new sample sheet, empty where unknown)")
    if extra:
        problems.append(f"the new samples have sample annotations the store lacks "
                        f"{preview(extra)} (remove them from the new sample sheet, or re-ingest "
                        "the whole cohort to add a column)")
    combined = {}
    for name in old_names:
        if name in missing:
            continue
        old, new = cohort[name].values, batch[name].values
        old, new = _same_type(name, old, new, batch["sample"].values, sheet, problems)
        combined[name] = ("sample", np.concatenate([old, new]), cohort[name].attrs)
    return combined, problems


def _same_type(name: str, old: np.ndarray, new: np.ndarray, new_ids, sheet, problems: list):
    """``old`` and ``new`` as one type: numbers (float64) or text, as a single ingest of both
    would choose; a type conflict that ingest would resolve differently is added to
    ``problems``."""
    old_numeric, new_numeric = old.dtype.kind == "f", new.dtype.kind == "f"
    if old_numeric == new_numeric:
        return old, new
    if not _present(new).any():
        return old, np.full(len(new), np.nan) if old_numeric else np.full(len(new), "", object)
    if not _present(old).any():
        return (np.full(len(old), np.nan) if new_numeric else np.full(len(old), "", object)), new
    if new_numeric and sheet is not None and name in sheet.columns:
        # text in the store: the new numbers join as the text of the sheet, as ingest keeps it
        return old, sheet.loc[list(new_ids), name].fillna("").astype(str).to_numpy(object)
    text = pd.Series(new if old_numeric else old)
    text = text[text != ""]
    # the values that are not numbers, else those that are text for a leading zero ("007")
    words = text[pd.to_numeric(text, errors="coerce").isna()]
    shown = preview((words if len(words) else text).unique(), 3)
    side = "the store" if old_numeric else "the new samples"
    other = "the new samples" if old_numeric else "the store"
    problems.append(f"sample annotation {name!r} is numeric in {side} but text in {other} "
                    f"({shown}): make those values numbers (or empty), or re-ingest the whole "
                    "cohort in one go")
    return old, new


def _gene_annotation_conflicts(cohort: xr.Dataset, batch: xr.Dataset) -> list[str]:
    """Gene annotations the new matrix carries (featureCounts Chr..Length, GCT Description, ...)
    that disagree with the store's: counts from another gene model must not be mixed. Columns
    the store's gene table replaced are the table's, not the matrix's, and are not compared."""
    replaced = cohort.attrs["ingest_options"].get("replaced_annotations", {}).get("gene", [])
    order = pd.Index(batch["gene"].values).get_indexer(cohort["gene"].values)
    problems = []
    for name in _annotations(batch, "gene"):
        if name not in cohort or cohort[name].dims != ("gene",) or name in replaced:
            continue
        old, new = cohort[name].values, batch[name].values[order]
        if old.dtype.kind != new.dtype.kind:
            differ = np.ones(len(old), bool)
        else:
            differ = (old != new) & (_present(old) | _present(new))
        if differ.any():
            genes = cohort["gene"].values[differ]
            problems.append(f"gene annotation {name!r} of the new matrix differs from the store's "
                            f"for {differ.sum()} genes ({preview(genes, 5)}): make every batch "
                            "with the same gene annotation (e.g. the same GTF), or re-ingest the "
                            "whole cohort")
    return problems


def _rows(array: zarr.Array, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (all columns) of a 2-D Zarr array: a slice when they run in order."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all():
        return array[rows[0]:rows[-1] + 1]
    return array.oindex[rows, :]


def _write_combined(out: Path, store: Path, batch_path: Path, cohort: xr.Dataset,
                    batch: xr.Dataset, sample_vars: dict, chunk: int) -> None:
    """Write the store's samples then the batch's into ``out``, ``chunk`` genes at a time in
    the store's gene order (batch rows realigned)."""
    old = zarr.open_group(store, mode="r", zarr_format=3)
    new = zarr.open_group(batch_path, mode="r", zarr_format=3)
    genes = cohort["gene"].values
    order = pd.Index(batch["gene"].values).get_indexer(genes)
    ids = list(cohort["sample"].values) + list(batch["sample"].values)
    writer = GeneBlockWriter(out, ids, sample_vars, chunk)
    has_counts = "counts" in cohort
    for start in range(0, len(genes), chunk):
        stop = min(start + chunk, len(genes))

        def joined(name: str) -> np.ndarray:
            return np.concatenate([old[name][start:stop], _rows(new[name], order[start:stop])],
                                  axis=1)

        writer.write(genes[start:stop], joined("expression"),
                     joined("counts") if has_counts else None)


def _gene_annotations(cohort: xr.Dataset) -> dict:
    return {name: ("gene", cohort[name].values, cohort[name].attrs)
            for name in _annotations(cohort, "gene")}


def _combined_attributes(cohort: xr.Dataset, batch: xr.Dataset, chunk: int) -> dict:
    """The store's attributes with the batch's source files added to ``sources`` and an
    ``appended`` entry describing the batch."""
    from engine import __version__

    attrs = dict(cohort.attrs)
    options = dict(batch.attrs["ingest_options"])
    attrs["ingest_options"] = {**attrs["ingest_options"], "chunk_genes": chunk}
    attrs["sources"] = list(attrs["sources"]) + list(batch.attrs["sources"])
    entry = {
        "at": now_utc(),
        "engine_version": __version__,
        "samples_added": batch.sizes["sample"],
        "samples": [str(s) for s in batch["sample"].values],
        "sources": list(batch.attrs["sources"]),
        "ingest_options": {k: v for k, v in options.items() if k not in ("scale", "chunk_genes")},
        **{k: v for k, v in batch.attrs.items() if k not in STORE_ATTRIBUTES},
    }
    attrs["appended"] = list(attrs.get("appended", [])) + [entry]
    return attrs
