"""``cohort ingest``: a matrix plus a sample sheet (and optional gene table) into a cohort store.

The matrix is read in row blocks of one chunk each and appended to the store chunk by chunk,
so memory stays at about one chunk whatever the file size. Everything is written to a temporary
directory that is renamed into place only when ingest succeeds.
"""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from engine.errors import InputError, preview
from engine.fsutil import atomic_directory, describe_file
from engine.store.contract import COHORT_STORE, SCALES
from engine.store.formats import MatrixReader, read_table

CHUNK_BYTES = 96 * 2**20  # DESIGN.md: 64-128 MB chunks, genes only
COMPRESSOR = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
RESERVED = set(COHORT_STORE["variables"]) | {"counts"}


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


def _check_names(names, what: str, taken: set[str]) -> None:
    for name in names:
        if name in taken:
            raise InputError(f"{what} column {name!r} clashes with a store variable of the same name "
                             "(rename the column)")
        if "/" in name or name.startswith("__") or not name.strip():
            raise InputError(f"{what} column {name!r} is not a valid variable name "
                             "(no '/', no leading '__', not blank)")


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


def ingest(
    matrix: str | Path,
    samples: str | Path,
    output: str | Path,
    *,
    genes: str | Path | None = None,
    scale: str = "log2",
    chunk_genes: int | None = None,
    drop_unmatched: bool = False,
    overwrite: bool = False,
) -> Path:
    """Validate and write a cohort store; return its path. See ``schemas/cohort-store.md``."""
    if scale not in SCALES:
        raise InputError(f"scale {scale!r} is not one of {', '.join(SCALES)}")
    reader = MatrixReader(matrix)
    sheet = read_table(samples, "sample sheet")
    gene_table = read_table(genes, "gene table") if genes is not None else None
    keep, dropped_matrix, dropped_sheet = _match_samples(reader.sample_ids, sheet, drop_unmatched)
    sample_ids = [reader.sample_ids[i] for i in keep]
    _check_names(sheet.columns, "sample sheet", RESERVED)
    _check_names(gene_table.columns if gene_table is not None else [], "gene table",
                 RESERVED | set(sheet.columns))
    if chunk_genes is not None and chunk_genes < 1:
        raise InputError(f"--chunk-genes must be a positive number of genes, not {chunk_genes}")
    chunk = chunk_genes or default_chunk_genes(len(sample_ids))
    all_columns = len(keep) == len(reader.sample_ids)

    sample_vars = {name: ("sample", annotation_values(sheet.loc[sample_ids, name]))
                   for name in sheet.columns}
    output = Path(output)
    with atomic_directory(output, overwrite=overwrite) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        seen: set[str] = set()
        gene_ids: list[np.ndarray] = []
        extra: dict[str, list[np.ndarray]] = {}
        for block in reader.blocks(chunk):
            values = block.values if all_columns else block.values[:, keep]
            _check_block(block, values, seen, scale, reader.path)
            gene_ids.append(block.gene_ids)
            for name, column in block.gene_annotations.items():
                extra.setdefault(name, []).append(column)
            data = xr.Dataset(
                {"expression": (("gene", "sample"), values.astype(np.float32))},
                coords={"gene": block.gene_ids},
            )
            if len(gene_ids) == 1:
                data = data.assign_coords(sample=np.array(sample_ids, dtype=object))
                data = data.assign(sample_vars)
                encoding = {"expression": {"chunks": (chunk, len(sample_ids)),
                                           "compressors": COMPRESSOR},
                            "gene": {"chunks": (chunk,)}}
                data.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
            else:
                data.to_zarr(tmp, append_dim="gene", zarr_format=3, consolidated=False)
        if not gene_ids:
            raise InputError(f"matrix {reader.path} has no data rows")
        all_genes = np.concatenate(gene_ids)
        gene_vars = {name: ("gene", np.concatenate(parts)) for name, parts in extra.items()}
        if gene_table is not None:
            gene_vars.update(_gene_annotations(gene_table, all_genes))
        if gene_vars:
            xr.Dataset(gene_vars).to_zarr(tmp, mode="a", zarr_format=3, consolidated=False)
        sources = [describe_file(reader.path, "matrix"), describe_file(samples, "samples")]
        if genes is not None:
            sources.append(describe_file(genes, "genes"))
        root = zarr.open_group(tmp, mode="r+", zarr_format=3)
        root["expression"].attrs["scale"] = scale
        from engine import __version__

        root.attrs.update({
            "engine_version": __version__,
            "ingested_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "sources": sources,
            "ingest_options": {"scale": scale, "chunk_genes": chunk,
                               "drop_unmatched": drop_unmatched,
                               "dropped_matrix_samples": dropped_matrix,
                               "dropped_sheet_samples": dropped_sheet},
        })
        zarr.consolidate_metadata(tmp)
    return output


def _check_block(block, values: np.ndarray, seen: set[str], scale: str, path: Path) -> None:
    ids = block.gene_ids
    dup_here = pd.Index(ids)[pd.Index(ids).duplicated()]
    dup = list(dup_here) + [g for g in ids if g in seen]
    if dup:
        raise InputError(f"matrix {path} has duplicate gene IDs: {preview(sorted(set(dup)))} "
                         "(gene IDs must be unique; collapse or rename the rows)")
    seen.update(ids)
    if np.isinf(values.astype(np.float32)).any() and not np.isinf(values).any():
        r, c = np.argwhere(np.isinf(values.astype(np.float32)))[0]
        raise InputError(f"matrix {path}: value {values[r, c]} on line {block.first_line + r} is "
                         "too large for float32")
    if scale == "counts" and (values < 0).any():
        r, c = np.argwhere(values < 0)[0]
        raise InputError(f"matrix {path}: negative count {values[r, c]} on line "
                         f"{block.first_line + r}, sample column {c + 1} (counts must be >= 0; "
                         "use --scale log2 or linear for transformed values)")


def _gene_annotations(table: pd.DataFrame, gene_ids: np.ndarray) -> dict:
    """Gene-table columns aligned to the matrix rows; rows of the table not in the matrix are ignored."""
    aligned = table.reindex(pd.Index(gene_ids, dtype=object))
    return {name: ("gene", annotation_values(aligned[name])) for name in table.columns}


