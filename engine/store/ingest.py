"""``cohort ingest``: a matrix plus a sample sheet (and optional gene table) into a cohort store.

The matrix is read in row blocks of one chunk each and appended to the store chunk by chunk,
so memory stays at about one chunk whatever the file size. Everything is written to a temporary
directory that is renamed into place only when ingest succeeds. Every input format goes through
one reader interface (``engine.store.formats.MatrixSource``): sample IDs, then row blocks, plus
the sample and gene annotations the matrix carries (h5ad obs/var, GEO characteristics, ...).

With ``scale="counts"`` the values must be non-negative integers; they are stored twice: exactly
as ``counts`` (int32, or int64 when a count exceeds 2**31 - 1) and as float32 ``expression``.
"""

from __future__ import annotations

import datetime
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from engine.errors import InputError, preview
from engine.fsutil import atomic_directory, describe_file
from engine.store.contract import COHORT_STORE, SCALES
from engine.store.fingerprint import content_digest
from engine.store.formats import MatrixSource, open_matrix, read_table

CHUNK_BYTES = 96 * 2**20  # DESIGN.md: 64-128 MB chunks, genes only
COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
RESERVED = set(COHORT_STORE["variables"])  # gene, sample, expression, counts
INT32_MAX = np.iinfo(np.int32).max
INT64_LIMIT = 2.0**63  # the first float64 above int64's range
FORMAT_NAMES = {"table": "TSV/CSV", "gct": "GCT", "parquet": "Parquet",
                "featurecounts": "featureCounts", "star": "STAR ReadsPerGene",
                "geo": "GEO series matrix", "h5ad": "AnnData .h5ad", "rcc": "NanoString RCC"}


def default_chunk_genes(n_samples: int) -> int:
    """Genes per chunk so that one float32 chunk of all samples is about 96 MB."""
    return max(1, CHUNK_BYTES // (4 * max(n_samples, 1)))


def annotation_values(column: pd.Series) -> np.ndarray:
    """float64 when every present value is a number without a leading zero, else strings ('' = NA).

    Leading zeros mark identifiers (``01005``): those stay strings so they are not mangled.
    """
    present = column.dropna()
    numbers = pd.to_numeric(present, errors="coerce")
    if len(present) and numbers.notna().all() and not present.str.match(r"^[+-]?0\d").any():
        return pd.to_numeric(column).to_numpy(np.float64)
    return column.fillna("").astype(str).to_numpy(object)


def annotation_column(column: pd.Series) -> np.ndarray:
    """Store values of an annotation the matrix file carries, by its type there.

    Numbers (incl. nullable integers) -> float64 (NaN = missing); categoricals and booleans ->
    their labels as strings ('' = missing); text -> ``annotation_values`` as for a sample sheet.
    """
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(dtype):
        labels = column.astype(object)
        out = labels.astype(str).to_numpy(object)
        out[labels.isna().to_numpy()] = ""
        return out
    if pd.api.types.is_numeric_dtype(dtype):
        return column.to_numpy(np.float64, na_value=np.nan)
    present = column.notna().to_numpy()
    text = column.astype(object).astype(str).where(present, np.nan)
    return annotation_values(text.astype(object))


def _check_names(names, what: str, taken: set[str]) -> None:
    for name in names:
        if name in taken:
            raise InputError(f"{what} column {name!r} clashes with a store variable of the same name "
                             "(rename the column)")
        if "/" in name or name.startswith("__") or not name.strip():
            raise InputError(f"{what} column {name!r} is not a valid variable name "
                             "(no '/', no leading '__', not blank)")


def _carried_names(names, taken: set[str], prefix: str, renamed: dict) -> dict[str, str]:
    """Store names for annotations the matrix carries (which the user cannot rename easily).

    '/' becomes '_', and a name already taken (``sample``, ``counts``, a sample annotation for a
    gene annotation) gets ``prefix`` (``sample_``/``gene_``) until it is free; renames are
    recorded in ``renamed``.
    """
    out: dict[str, str] = {}
    for name in names:
        final = str(name).replace("/", "_").strip().lstrip("_") or "unnamed"
        while final in taken or final in out.values():
            final = prefix + final
        if final != name:
            renamed[str(name)] = final
        out[name] = final
    return out


def _match_samples(matrix_ids: list[str], sheet: pd.DataFrame, drop_unmatched: bool):
    """Indices of matrix columns to keep, and the names dropped from either side."""
    in_sheet = set(sheet.index)
    in_matrix = set(matrix_ids)
    not_in_sheet = [s for s in matrix_ids if s not in in_sheet]
    not_in_matrix = [s for s in sheet.index if s not in in_matrix]
    if (not_in_sheet or not_in_matrix) and not drop_unmatched:
        parts = []
        if not_in_matrix:
            parts.append(f"sample sheet has {len(not_in_matrix)} IDs not in the matrix: "
                         + preview(not_in_matrix))
        if not_in_sheet:
            parts.append(f"matrix has {len(not_in_sheet)} sample IDs not in the sample sheet: "
                         + preview(not_in_sheet))
        raise InputError("; ".join(parts) + " (use --drop-unmatched to ignore)")
    keep = np.array([i for i, s in enumerate(matrix_ids) if s in in_sheet], dtype=np.int64)
    if len(keep) == 0:
        raise InputError("no sample ID is shared by the matrix and the sample sheet")
    return keep, not_in_sheet, not_in_matrix


def _sample_annotations(reader: MatrixSource, sheet: pd.DataFrame | None, sample_ids: list[str],
                        report: dict) -> dict:
    """Sample variables: the matrix's own annotations, then the sheet's (which win on a name)."""
    out = {}
    carried = reader.sample_annotations
    if carried is not None:
        renamed: dict = {}
        names = _carried_names(carried.columns, RESERVED, "sample_", renamed)
        aligned = carried.reindex(pd.Index(sample_ids, dtype=object))
        out = {names[c]: ("sample", annotation_column(aligned[c])) for c in carried.columns}
        if renamed:
            report.setdefault("renamed_annotations", {})["sample"] = renamed
    if sheet is not None:
        replaced = [name for name in sheet.columns if name in out]
        if replaced:
            report.setdefault("replaced_annotations", {})["sample"] = replaced
        out.update({name: ("sample", annotation_values(sheet.loc[sample_ids, name]))
                    for name in sheet.columns})
    return out


def _gene_annotations(reader: MatrixSource, parts: dict[str, list[np.ndarray]],
                      gene_ids: np.ndarray, table: pd.DataFrame | None, taken: set[str],
                      report: dict) -> dict:
    """Gene variables: columns the matrix carries (per block or as a frame), then the gene
    table's (which win on a name)."""
    carried = {name: pd.Series(np.concatenate(chunks), dtype=object)
               for name, chunks in parts.items()}
    if reader.gene_annotations is not None:
        frame = reader.gene_annotations
        if len(frame) != len(gene_ids):
            raise InputError(f"matrix {reader.path}: {len(frame)} gene annotation rows for "
                             f"{len(gene_ids)} genes")
        carried.update({name: frame[name].reset_index(drop=True) for name in frame.columns})
    renamed: dict = {}
    names = _carried_names(carried, taken, "gene_", renamed)
    if renamed:
        report.setdefault("renamed_annotations", {})["gene"] = renamed
    out = {names[name]: ("gene", annotation_column(column)) for name, column in carried.items()}
    if table is not None:
        replaced = [name for name in table.columns if name in out]
        if replaced:
            report.setdefault("replaced_annotations", {})["gene"] = replaced
        # rows of the table not in the matrix are ignored; genes absent from it get missing values
        aligned = table.reindex(pd.Index(gene_ids, dtype=object))
        out.update({name: ("gene", annotation_values(aligned[name])) for name in table.columns})
    return out


def ingest(
    matrix: str | Path | Sequence[str | Path],
    samples: str | Path | None = None,
    output: str | Path | None = None,
    *,
    genes: str | Path | None = None,
    scale: str | None = None,
    layer: str | None = None,
    strand: str | None = None,
    chunk_genes: int | None = None,
    drop_unmatched: bool = False,
    overwrite: bool = False,
) -> Path:
    """Validate and write a cohort store; return its path. See ``schemas/cohort-store.md``.

    ``matrix``: a file (TSV/CSV, GCT, Parquet, featureCounts, GEO series matrix, .h5ad), a folder
    (RCC or STAR files) or a list of STAR files; the format is recognised by
    ``engine.store.formats.detect_format``. ``samples`` is required unless the matrix carries
    sample annotations (h5ad, GEO, RCC, STAR); a given sheet is matched to the matrix as always
    and its columns replace carried annotations of the same name. ``scale`` defaults to
    ``counts`` for featureCounts, STAR and RCC (which allow nothing else) and to ``log2``
    otherwise. ``layer`` reads an h5ad layer instead of X; ``strand`` picks STAR's count column.
    The store's content fingerprint is recorded as the attribute ``content_sha256``
    (``engine.store.fingerprint``).
    """
    if output is None:
        raise TypeError("ingest() needs an output path")
    if scale is not None and scale not in SCALES:
        raise InputError(f"scale {scale!r} is not one of {', '.join(SCALES)}")
    reader = open_matrix(matrix, layer=layer, strand=strand)
    name = FORMAT_NAMES.get(reader.kind, reader.kind)
    if scale is None:
        scale = reader.scale or "log2"
    elif reader.scale == "counts" and scale != "counts":
        raise InputError(f"{name} files hold read counts: ingest them with --scale counts (their "
                         f"default), not --scale {scale}")
    if samples is None and not reader.carries_samples:
        raise InputError(f"--samples is required for a {name} matrix: a TSV/CSV sample sheet whose "
                         "first column is the sample ID (.h5ad, GEO, RCC and STAR inputs carry "
                         "their own sample annotations)")
    sheet = read_table(samples, "sample sheet") if samples is not None else None
    gene_table = read_table(genes, "gene table") if genes is not None else None
    if sheet is not None:
        keep, dropped_matrix, dropped_sheet = _match_samples(reader.sample_ids, sheet, drop_unmatched)
        _check_names(sheet.columns, "sample sheet", RESERVED)
    else:
        keep, dropped_matrix, dropped_sheet = np.arange(len(reader.sample_ids)), [], []
    sample_ids = [reader.sample_ids[i] for i in keep]
    if chunk_genes is not None and chunk_genes < 1:
        raise InputError(f"--chunk-genes must be a positive number of genes, not {chunk_genes}")
    chunk = chunk_genes or default_chunk_genes(len(sample_ids))
    all_columns = len(keep) == len(reader.sample_ids)

    report: dict = {}
    sample_vars = _sample_annotations(reader, sheet, sample_ids, report)
    if gene_table is not None:
        _check_names(gene_table.columns, "gene table", RESERVED | set(sample_vars))
    output = Path(output)
    with atomic_directory(output, overwrite=overwrite) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        seen: set[str] = set()
        writer = GeneBlockWriter(tmp, sample_ids, sample_vars, chunk)
        extra: dict[str, list[np.ndarray]] = {}
        for block in reader.blocks(chunk):
            values = block.values if all_columns else block.values[:, keep]
            _check_block(reader, block, values, seen, keep)
            if scale == "counts":
                _check_counts(reader, block, values, keep)
            writer.write(block.gene_ids, values, values if scale == "counts" else None)
            for column, part in block.gene_annotations.items():
                extra.setdefault(column, []).append(part)
        if not writer.gene_ids:
            raise InputError(f"matrix {reader.path} has no data rows" + reader.empty_hint)
        gene_vars = _gene_annotations(reader, extra, writer.all_genes(), gene_table,
                                      RESERVED | set(sample_vars), report)
        sources = [describe_file(f, "matrix") for f in reader.source_files]
        if samples is not None:
            sources.append(describe_file(samples, "samples"))
        if genes is not None:
            sources.append(describe_file(genes, "genes"))
        from engine import __version__

        finish_store(tmp, gene_vars, scale, {
            **reader.attributes,
            "engine_version": __version__,
            "ingested_at": now_utc(),
            "sources": sources,
            "ingest_options": {"format": reader.kind, "scale": scale, "chunk_genes": writer.chunk,
                               **reader.options,
                               "drop_unmatched": drop_unmatched,
                               "dropped_matrix_samples": dropped_matrix,
                               "dropped_sheet_samples": dropped_sheet, **report},
        })
    return output


def now_utc() -> str:
    """The current UTC time, ISO 8601 to the second (``ingested_at``, ``appended[].at``)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class GeneBlockWriter:
    """Writes the (gene, sample) arrays of a new cohort store at ``path`` one block of genes
    (all samples) at a time; ingest and append share it, so both write the same bytes.

    Blocks hold ``chunk`` genes, the last one fewer. The first block creates the store with the
    ``sample`` coordinate and the sample annotations ``sample_vars``; later blocks are appended
    along ``gene``. ``counts`` are int32 until a count exceeds 2**31 - 1; then the blocks
    written so far are widened to int64 and int64 is kept.
    """

    def __init__(self, path: Path, sample_ids: list[str], sample_vars: dict, chunk: int):
        self.path = Path(path)
        self.sample_ids = sample_ids
        self.sample_vars = sample_vars
        self.chunk = chunk
        self.counts_dtype = np.int32
        self.gene_ids: list[np.ndarray] = []

    def write(self, gene_ids: np.ndarray, expression: np.ndarray,
              counts: np.ndarray | None = None) -> None:
        """Append one block: ``expression`` is stored as float32, ``counts`` (integer values,
        or None for a store without counts) as int32/int64."""
        if not self.gene_ids and 0 < len(gene_ids) < self.chunk:
            # the whole matrix: Zarr stores an edge chunk at full size, so a default (~96 MB)
            # chunk of a small matrix would be written, and read back, padded
            self.chunk = len(gene_ids)
        variables = {"expression": (("gene", "sample"), expression.astype(np.float32))}
        if counts is not None:
            if self.counts_dtype == np.int32 and counts.size and counts.max() > INT32_MAX:
                self.counts_dtype = np.int64
                if self.gene_ids:
                    _widen_counts(self.path)
            variables["counts"] = (("gene", "sample"), counts.astype(self.counts_dtype))
        self.gene_ids.append(gene_ids)
        data = xr.Dataset(variables, coords={"gene": gene_ids})
        if len(self.gene_ids) == 1:
            data = data.assign_coords(sample=np.array(self.sample_ids, dtype=object))
            data = data.assign(self.sample_vars)
            encoding = {v: {"chunks": (self.chunk, len(self.sample_ids)), "compressors": COMPRESSOR}
                        for v in variables}
            encoding["gene"] = {"chunks": (self.chunk,)}
            data.to_zarr(self.path, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
        else:
            data.to_zarr(self.path, append_dim="gene", zarr_format=3, consolidated=False)

    def all_genes(self) -> np.ndarray:
        return np.concatenate(self.gene_ids)


def finish_store(path: Path, gene_vars: dict, scale: str, attrs: dict) -> None:
    """Complete a store written by ``GeneBlockWriter``: the gene annotations, ``expression``'s
    ``scale``, the root attributes ``attrs`` plus ``content_sha256`` (the digest of the data just
    written, ``engine.store.fingerprint``), then the consolidated metadata."""
    if gene_vars:
        xr.Dataset(gene_vars).to_zarr(path, mode="a", zarr_format=3, consolidated=False)
    root = zarr.open_group(path, mode="r+", zarr_format=3)
    root["expression"].attrs["scale"] = scale
    # the root zarr.json is not part of the digest, so recording it there leaves it valid
    root.attrs.update({**attrs, "content_sha256": content_digest(path)})
    zarr.consolidate_metadata(path)


def _check_block(reader: MatrixSource, block, values: np.ndarray, seen: set[str], keep) -> None:
    ids = block.gene_ids
    dup_here = pd.Index(ids)[pd.Index(ids).duplicated()]
    dup = list(dup_here) + [g for g in ids if g in seen]
    if dup:
        raise InputError(f"matrix {reader.path} has duplicate gene IDs: {preview(sorted(set(dup)))} "
                         "(gene IDs must be unique; collapse or rename the rows)")
    seen.update(ids)
    too_large = np.isinf(values.astype(np.float32)) & ~np.isinf(values)
    if too_large.any():
        r, c = np.argwhere(too_large)[0]
        raise InputError(f"matrix {reader.path}: value {values[r, c]} "
                         f"{reader.locate(block, r, keep[c])} is too large for float32")
    infinite = np.isinf(values)
    if infinite.any():  # the text readers say so already; binary inputs (h5ad) are checked here
        r, c = np.argwhere(infinite)[0]
        raise InputError(f"matrix {reader.path}: infinite value {reader.locate(block, r, keep[c])} "
                         "(replace it with NaN if it means missing)")


def _check_counts(reader: MatrixSource, block, values: np.ndarray, keep) -> None:
    """An InputError naming the first value of ``values`` that is not a count (int64 at most)."""
    def where(mask) -> tuple[float, str]:
        r, c = np.argwhere(mask)[0]
        return values[r, c], reader.locate(block, r, keep[c])

    missing = np.isnan(values)
    if missing.any():
        _, at = where(missing)
        raise InputError(f"matrix {reader.path}: missing count {at} (--scale counts needs every "
                         "count; use --scale linear to keep missing values)")
    negative = values < 0
    if negative.any():
        value, at = where(negative)
        raise InputError(f"matrix {reader.path}: negative count {value} {at} (counts must be >= 0; "
                         "use --scale log2 or linear for transformed values)")
    fractional = values != np.floor(values)
    if fractional.any():
        value, at = where(fractional)
        raise InputError(f"matrix {reader.path}: non-integer count {value} {at} (--scale counts "
                         "stores integer counts: round them first, e.g. RSEM or salmon expected "
                         f"counts, or use --scale linear{reader.count_hint})")
    huge = values >= INT64_LIMIT
    if huge.any():
        value, at = where(huge)
        raise InputError(f"matrix {reader.path}: count {value} {at} does not fit a 64-bit integer")


def _widen_counts(store: Path) -> None:
    """Rewrite the ``counts`` written so far as int64, chunk by chunk (a count exceeded int32)."""
    root = zarr.open_group(store, mode="r+", zarr_format=3)
    old = root["counts"]
    wide = root.create_array("counts_int64", shape=old.shape, chunks=old.chunks, dtype=np.int64,
                             compressors=COMPRESSOR, fill_value=0, attributes=dict(old.attrs),
                             dimension_names=("gene", "sample"))
    step = old.chunks[0]
    for start in range(0, old.shape[0], step):
        wide[start:start + step] = old[start:start + step]
    shutil.rmtree(store / "counts")
    os.rename(store / "counts_int64", store / "counts")
