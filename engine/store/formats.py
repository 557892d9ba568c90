"""Streaming readers for expression matrices: TSV/CSV (optionally compressed), GCT 1.2, Parquet.

Every reader gives the sample IDs from the header and then blocks of rows, so a matrix larger
than memory is read with bounded memory. IDs stay strings (``01005`` keeps its zero).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import InputError

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}


@dataclass
class Block:
    """``values[i, j]`` is gene ``gene_ids[i]`` in sample ``j``; ``first_line`` is 1-based."""

    gene_ids: np.ndarray
    values: np.ndarray
    first_line: int
    gene_annotations: dict[str, np.ndarray] = field(default_factory=dict)


def _suffixes(path: Path) -> tuple[str, str | None]:
    """(format suffix, compression) of ``x.tsv.gz`` -> ('.tsv', 'gzip')."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compression


def open_text(path: Path) -> io.TextIOBase:
    fmt, compression = _suffixes(path)
    if compression is None:
        return open(path, encoding="utf-8", newline="")
    import bz2
    import gzip
    import lzma

    opener = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}[compression]
    return io.TextIOWrapper(opener(path, "rb"), encoding="utf-8", newline="")


def delimiter_of(path: Path) -> str:
    return "," if _suffixes(path)[0] == ".csv" else "\t"


def read_table(path: Path, what: str) -> pd.DataFrame:
    """A small annotation table (sample sheet, gene table) with every cell as a string, NA as NaN.

    The first column is the ID; it must be unique and non-empty.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    with open_text(path) as f:
        header = next(csv.reader(f, delimiter=delimiter_of(path)), None)
    if not header:
        raise InputError(f"{what} {path} is empty")
    table = pd.read_csv(
        path, sep=delimiter_of(path), dtype=str, names=header, header=0, quoting=csv.QUOTE_NONE,
        keep_default_na=False, na_values=["", "NA", "NaN", "nan", "N/A", "#N/A", "null"],
    )
    ids = table.iloc[:, 0]
    if ids.isna().any():
        rows = (np.flatnonzero(ids.isna().to_numpy()) + 2).tolist()
        raise InputError(f"{what} {path} has empty IDs in its first column on lines {rows[:10]}")
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise InputError(f"{what} {path} has duplicate IDs in its first column: "
                         + ", ".join(dup[:10].tolist()) + " (IDs must be unique)")
    return table.set_index(table.columns[0])


class MatrixReader:
    """Header first (``sample_ids``), then ``blocks(rows)``; ``kind`` names the format."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"matrix {self.path} does not exist")
        fmt, _ = _suffixes(self.path)
        self.kind = {".gct": "gct", ".parquet": "parquet", ".pq": "parquet"}.get(fmt, "delimited")
        self.id_name, self.sample_ids, self._skip = self._header()
        dup = pd.Index(self.sample_ids)[pd.Index(self.sample_ids).duplicated()].unique()
        if len(dup):
            raise InputError(f"matrix {self.path} has duplicate sample IDs in its header: "
                             + ", ".join(map(str, dup[:10])) + " (sample IDs must be unique)")

    def _header(self) -> tuple[str, list[str], int]:
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            names = pq.ParquetFile(self.path).schema_arrow.names
            return names[0], names[1:], 0
        with open_text(self.path) as f:
            rows = csv.reader(f, delimiter=delimiter_of(self.path) if self.kind != "gct" else "\t")
            if self.kind == "gct":
                version, _dims, header = next(rows, []), next(rows, []), next(rows, [])
                if not version or version[0].strip() != "#1.2" or len(header) < 3:
                    raise InputError(f"{self.path} is not a GCT 1.2 file (line 1 must be #1.2, "
                                     "line 3 NAME, Description, samples...)")
                return header[0], header[2:], 2
            header = next(rows, None)
        if not header or len(header) < 2:
            raise InputError(f"matrix {self.path} needs a header row: gene ID column, then sample IDs")
        return header[0], header[1:], 0

    def blocks(self, rows: int) -> Iterator[Block]:
        if self.kind == "parquet":
            yield from self._parquet_blocks(rows)
            return
        names = [self.id_name] + (["Description"] if self.kind == "gct" else []) + self.sample_ids
        reader = pd.read_csv(
            self.path, sep=delimiter_of(self.path) if self.kind != "gct" else "\t",
            names=names, header=0, skiprows=self._skip, dtype={self.id_name: str, "Description": str},
            chunksize=rows, quoting=csv.QUOTE_NONE, engine="c",
            keep_default_na=False, na_values=["", "NA", "NaN", "nan", "N/A", "#N/A", "null"],
        )
        line = 2 + self._skip
        for frame in reader:
            extra = {}
            if self.kind == "gct":
                extra["description"] = frame.pop("Description").fillna("").to_numpy(object)
            yield Block(self._ids(frame.iloc[:, 0], line), self._numeric(frame.iloc[:, 1:], line),
                        line, extra)
            line += len(frame)

    def _parquet_blocks(self, rows: int) -> Iterator[Block]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        file = pq.ParquetFile(self.path)
        bad = [f.name for f in file.schema_arrow if f.name != self.id_name
               and not (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
        if bad:
            raise InputError(f"matrix {self.path}: sample columns must be numeric; "
                             f"these are not: {', '.join(bad[:10])}")
        line = 1
        for batch in file.iter_batches(batch_size=rows):
            frame = batch.to_pandas()
            yield Block(self._ids(frame.iloc[:, 0].astype(object), line),
                        self._numeric(frame.iloc[:, 1:], line), line)
            line += len(frame)

    def _ids(self, ids: pd.Series, line: int) -> np.ndarray:
        missing = ids.isna().to_numpy()
        if missing.any():
            raise InputError(f"matrix {self.path}: empty gene ID on line {line + int(np.argmax(missing))}")
        return ids.astype(str).to_numpy(object)

    def _numeric(self, frame: pd.DataFrame, line: int) -> np.ndarray:
        for column in frame.columns:
            if not pd.api.types.is_numeric_dtype(frame[column]):
                parsed = pd.to_numeric(frame[column], errors="coerce")
                bad = int(np.argmax(parsed.isna().to_numpy() & frame[column].notna().to_numpy()))
                raise InputError(
                    f"matrix {self.path}: non-numeric value {frame[column].iloc[bad]!r} on line "
                    f"{line + bad}, column {column!r} (use NA or an empty cell for missing values)")
        values = frame.to_numpy(np.float64)
        infinite = np.isinf(values)
        if infinite.any():
            r, c = np.argwhere(infinite)[0]
            raise InputError(f"matrix {self.path}: infinite value on line {line + r}, column "
                             f"{frame.columns[c]!r} (replace it with NA if it means missing)")
        return values
