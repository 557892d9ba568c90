"""Streaming readers for expression matrices, one interface for every input format.

A reader (``MatrixSource``) gives the sample IDs first, then ``blocks(rows)`` of genes x
samples, so a matrix larger than memory is read with bounded memory; it may also carry sample
annotations (``sample_annotations``: h5ad obs, GEO characteristics, RCC and STAR attributes) and
gene annotations (per block, e.g. a GCT Description or featureCounts' Chr..Length; or a whole
``gene_annotations`` frame, e.g. h5ad var). ``open_matrix`` picks the reader from the path:

- TSV/CSV (optionally .gz/.bz2/.xz), GCT 1.2, Parquet: ``MatrixReader`` (this module);
- featureCounts output and STAR ``ReadsPerGene.out.tab`` files, NanoString RCC folders:
  ``engine.store.count_tables``;
- GEO series matrix files: ``engine.store.geo``; AnnData ``.h5ad``: ``engine.store.h5ad``.

IDs stay strings (``01005`` keeps its zero).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import InputError, preview

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
NA_VALUES = ["", "NA", "NaN", "nan", "N/A", "#N/A", "null"]
FORMATS = ("table", "gct", "parquet", "featurecounts", "star", "geo", "h5ad", "rcc")
# formats that carry sample annotations, so that --samples is optional
CARRIES_SAMPLES = ("star", "geo", "h5ad", "rcc")


@dataclass
class Block:
    """``values[i, j]`` is gene ``gene_ids[i]`` in sample ``j``; ``first_line`` is 1-based.

    ``gene_annotations`` are columns the matrix file itself carries next to the values (GCT
    Description, featureCounts Chr..Length), as text (NaN = missing) or numbers, for these rows.
    """

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
        keep_default_na=False, na_values=NA_VALUES,
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


class MatrixSource:
    """The reader interface: what ``ingest`` asks of every format.

    After construction: ``sample_ids`` (matrix column order), ``sample_annotations`` (a frame
    indexed by sample ID, or None), ``gene_annotations`` (a frame in row order, or None),
    ``scale`` (the scale the format implies, e.g. ``counts``, or None), ``source_files`` (what
    provenance records with sha256), ``options`` (format options to record, e.g. the layer),
    ``attributes`` (extra store attributes, e.g. ``geo_series``) and ``carries_samples`` (True
    when ``--samples`` is optional). ``blocks(rows)`` then yields the rows in order, in blocks of
    exactly ``rows`` rows but the last (so a first block shorter than ``rows`` is the whole matrix).
    """

    kind = "table"
    scale: str | None = None
    count_hint = ""  # added to the non-integer count error (e.g. which h5ad layers exist)
    empty_hint = ""  # added to the no-data-rows error

    def __init__(self, path: Path):
        self.path = Path(path)
        self.sample_ids: list[str] = []
        self.sample_annotations: pd.DataFrame | None = None
        self.gene_annotations: pd.DataFrame | None = None
        self.source_files: list[Path] = [self.path]
        self.options: dict = {}
        self.attributes: dict = {}

    @property
    def carries_samples(self) -> bool:
        return self.kind in CARRIES_SAMPLES

    def blocks(self, rows: int) -> Iterator[Block]:
        raise NotImplementedError

    def locate(self, block: Block, row: int, column: int) -> str:
        """Where value ``[row, column]`` of ``block`` is in the input, for error messages."""
        return f"on line {block.first_line + row}, column {self.sample_ids[column]!r}"

    def _check_sample_ids(self, where: str = "in its header") -> None:
        index = pd.Index(self.sample_ids)
        dup = index[index.duplicated()].unique()
        if len(dup):
            raise InputError(f"matrix {self.path} has duplicate sample IDs {where}: "
                             + preview(dup) + " (sample IDs must be unique)")

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


class MatrixReader(MatrixSource):
    """TSV/CSV (by extension, optionally compressed), GCT 1.2 and Parquet matrices.

    First column the gene ID, header row of sample IDs. Subclasses for other delimited layouts
    (featureCounts, GEO series matrix) set ``_skip`` (lines before the header), ``_annotations``
    (``(column in the file, annotation name)`` between the ID and the samples) and ``_quoting``.
    """

    _quoting = csv.QUOTE_NONE

    def __init__(self, path: str | Path):
        super().__init__(path)
        if not self.path.exists():
            raise InputError(f"matrix {self.path} does not exist")
        fmt, _ = _suffixes(self.path)
        self.kind = {".gct": "gct", ".parquet": "parquet", ".pq": "parquet"}.get(fmt, "table")
        self._annotations: list[tuple[str, str]] = []
        self.id_name, self.sample_ids, self._skip = self._header()
        self._check_sample_ids()

    def _sep(self) -> str:
        return "\t" if self.kind != "table" else delimiter_of(self.path)

    def _header(self) -> tuple[str, list[str], int]:
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            names = pq.ParquetFile(self.path).schema_arrow.names
            return names[0], names[1:], 0
        with open_text(self.path) as f:
            rows = csv.reader(f, delimiter=self._sep())
            if self.kind == "gct":
                version, _dims, header = next(rows, []), next(rows, []), next(rows, [])
                if not version or version[0].strip() != "#1.2" or len(header) < 3:
                    raise InputError(f"{self.path} is not a GCT 1.2 file (line 1 must be #1.2, "
                                     "line 3 NAME, Description, samples...)")
                self._annotations = [("Description", "description")]
                return header[0], header[2:], 2
            header = next(rows, None)
        if not header or len(header) < 2:
            raise InputError(f"matrix {self.path} needs a header row: gene ID column, then sample IDs")
        return header[0], header[1:], 0

    def blocks(self, rows: int) -> Iterator[Block]:
        if self.kind == "parquet":
            yield from self._parquet_blocks(rows)
            return
        columns = [c for c, _ in self._annotations]
        names = [self.id_name] + columns + self.sample_ids
        with open_text(self.path) as f:
            for _ in range(self._skip):  # lines before the header (GCT version, GEO metadata)
                f.readline()
            reader = pd.read_csv(
                f, sep=self._sep(), names=names, header=0,
                dtype=dict.fromkeys(names[:1 + len(columns)], str),
                chunksize=rows, quoting=self._quoting, engine="c",
                keep_default_na=False, na_values=NA_VALUES,
            )
            line = 2 + self._skip
            for frame in reader:
                frame = self._rows(frame, line)
                if frame is None:
                    break
                extra = {name: frame.pop(column).to_numpy(object)
                         for column, name in self._annotations}
                yield Block(self._ids(frame.iloc[:, 0], line),
                            self._numeric(frame.iloc[:, 1:], line), line, extra)
                line += len(frame)

    def _rows(self, frame: pd.DataFrame, line: int) -> pd.DataFrame | None:
        """The data rows of ``frame`` (a subclass drops trailer lines); None ends the matrix."""
        return frame

    def _parquet_blocks(self, rows: int) -> Iterator[Block]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        file = pq.ParquetFile(self.path)
        bad = [f.name for f in file.schema_arrow if f.name != self.id_name
               and not (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
        if bad:
            raise InputError(f"matrix {self.path}: sample columns must be numeric; "
                             f"these are not: {', '.join(bad[:10])}")
        line, pending = 1, None
        for batch in file.iter_batches(batch_size=rows):
            # batches end at row-group boundaries too: regroup them into blocks of exactly `rows`
            pending = pa.concat_tables([pending, pa.Table.from_batches([batch])]) \
                if pending is not None else pa.Table.from_batches([batch])
            while pending.num_rows >= rows:
                yield self._parquet_block(pending.slice(0, rows).to_pandas(), line)
                pending, line = pending.slice(rows), line + rows
        if pending is not None and pending.num_rows:
            yield self._parquet_block(pending.to_pandas(), line)

    def _parquet_block(self, frame: pd.DataFrame, line: int) -> Block:
        return Block(self._ids(frame.iloc[:, 0].astype(object), line),
                     self._numeric(frame.iloc[:, 1:], line), line)


def _first_line(path: Path) -> str:
    try:
        with open_text(path) as f:
            return f.readline(4096)
    except Exception:  # sniffing only: reading the file later names what is wrong with it
        return ""


def detect_format(matrix: str | Path | Sequence[str | Path]) -> str:
    """The format of a matrix argument, one of ``FORMATS``, from its name and first line.

    Several paths are STAR ``ReadsPerGene.out.tab`` files (one per sample); a folder holds RCC
    files (``*.RCC``, or ``.zip`` archives of them) or STAR files; a ``.zip`` is an RCC archive;
    ``.h5ad`` is AnnData; a text file whose first line starts with ``!Series_`` is a GEO series
    matrix and one that starts with ``# Program:featureCounts`` (or whose header is ``Geneid Chr
    Start End Strand Length``) is featureCounts output; anything else is a TSV/CSV matrix.
    A path that does not exist gets the format its name says (reading it names the problem).
    """
    from engine.store.count_tables import is_star_file, rcc_files, star_files

    paths = [Path(p) for p in matrix] if isinstance(matrix, list | tuple) else [Path(matrix)]
    if not paths:
        raise InputError("no matrix given")
    if len(paths) > 1:
        other = [str(p) for p in paths if not is_star_file(p)]
        if other:
            raise InputError("several matrix paths are read only as STAR ReadsPerGene.out.tab "
                             f"files (one per sample); these are not: {preview(other)}")
        return "star"
    path = paths[0]
    if path.is_dir():
        if rcc_files(path, archives=False):
            return "rcc"
        if star_files(path):
            return "star"
        if rcc_files(path):
            return "rcc"  # .zip archives of RCC files
        raise InputError(f"folder {path} holds neither NanoString RCC files (*.RCC) nor STAR "
                         "*ReadsPerGene.out.tab files (give a matrix file, or a folder of those)")
    if is_star_file(path):
        return "star"
    fmt, _ = _suffixes(path)
    if fmt == ".h5ad":
        return "h5ad"
    if fmt == ".rcc":
        raise InputError(f"{path} is one RCC file: RCC files are ingested as a folder of them, one "
                         "per sample (give the folder)")
    if fmt == ".zip":
        return "rcc"  # a .zip of RCC files
    if fmt in (".parquet", ".pq"):
        return "parquet"
    if fmt == ".gct":
        return "gct"
    first = _first_line(path) if path.is_file() else ""
    if first.startswith("!Series_") or first.startswith("!series_matrix"):
        return "geo"
    if first.startswith("# Program:featureCounts") or first.startswith(
            "Geneid\tChr\tStart\tEnd\tStrand\tLength"):
        return "featurecounts"
    return "table"


def open_matrix(matrix: str | Path | Sequence[str | Path], *, layer: str | None = None,
                strand: str | None = None) -> MatrixSource:
    """The reader for ``matrix`` (see ``detect_format``); ``layer`` is for .h5ad, ``strand``
    for STAR."""
    fmt = detect_format(matrix)
    if layer is not None and fmt != "h5ad":
        raise InputError(f"--layer {layer} applies to AnnData .h5ad files only, not to a {fmt} "
                         "matrix")
    if strand is not None and fmt != "star":
        raise InputError(f"--strand {strand} applies to STAR ReadsPerGene.out.tab files only, "
                         f"not to a {fmt} matrix")
    single = matrix[0] if isinstance(matrix, list | tuple) and len(matrix) == 1 else matrix
    if fmt == "star":
        from engine.store.count_tables import StarReader

        return StarReader(matrix if isinstance(matrix, list | tuple) else [matrix], strand=strand)
    if fmt == "featurecounts":
        from engine.store.count_tables import FeatureCountsReader

        return FeatureCountsReader(single)
    if fmt == "rcc":
        from engine.store.count_tables import RccReader

        return RccReader(single)
    if fmt == "geo":
        from engine.store.geo import GeoSeriesReader

        return GeoSeriesReader(single)
    if fmt == "h5ad":
        from engine.store.h5ad import H5adReader

        return H5adReader(single, layer=layer)
    return MatrixReader(single)
