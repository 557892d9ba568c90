"""GEO series matrix files (``GSExxx_series_matrix.txt[.gz]``, downloaded beforehand: no network).

The format (NCBI GEO, "Series Matrix File"): tab-separated, quoted text lines ``!Series_<field>``
(one value) and ``!Sample_<field>`` (one value per sample), then the data table between
``!series_matrix_table_begin`` and ``!series_matrix_table_end`` whose header is ``"ID_REF"``
and the sample accessions, rows a quoted probe ID and one value per sample.

What the store gets:

- sample IDs: ``!Sample_geo_accession`` (the table's header must list the same accessions);
- sample annotations: every other ``!Sample_<field>`` line as a column ``<field>`` (``title``,
  ``source_name_ch1``, ``organism_ch1``, ...; a field on several lines, e.g. ``data_processing``,
  is joined with ``"; "``); ``!Sample_characteristics_ch1`` cells ``key: value`` as a column per
  key (``characteristics_ch2``: ``<key>_ch2``; a key equal to another field's name gets the prefix
  ``characteristics_``; a cell without ``: `` goes to a column ``characteristics_ch1``);
- ``!Series_<field>`` lines as the store attribute ``geo_series``: ``{field: value}``, a list of
  values for a field on several lines (``summary``, ``contributor``, ...);
- the table, read in row blocks like a TSV matrix (``null`` or an empty cell = missing).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import InputError, preview
from engine.store.formats import Block, MatrixReader, MatrixSource, open_text

TABLE_BEGIN = "!series_matrix_table_begin"
TABLE_END = "!series_matrix_table_end"


def _cells(line: str) -> list[str]:
    return next(csv.reader([line.rstrip("\r\n")], delimiter="\t"), [])


class GeoSeriesReader(MatrixReader):
    kind = "geo"
    _quoting = csv.QUOTE_MINIMAL
    empty_hint = (" (GEO series without a table, such as most RNA-seq series, keep their data in "
                  "supplementary files)")

    def __init__(self, path: str | Path):
        MatrixSource.__init__(self, path)
        if not self.path.exists():
            raise InputError(f"matrix {self.path} does not exist")
        self._annotations = []
        series: dict[str, list[str]] = {}
        sample_lines: list[tuple[int, str, list[str]]] = []
        number = 0
        with open_text(self.path) as f:
            while True:
                line = f.readline()
                if not line:
                    raise InputError(f"{self.path}: no {TABLE_BEGIN} line, so this is not a GEO "
                                     "series matrix file")
                number += 1
                if line.startswith(TABLE_BEGIN):
                    header = _cells(f.readline())
                    break
                cells = _cells(line)
                if not cells:
                    continue
                if cells[0].startswith("!Series_"):
                    series.setdefault(cells[0][len("!Series_"):], []).append("\t".join(cells[1:]))
                elif cells[0].startswith("!Sample_"):
                    sample_lines.append((number, cells[0][len("!Sample_"):], cells[1:]))
        if len(header) < 2:
            raise InputError(f"{self.path}: line {number + 1} after {TABLE_BEGIN} must be the "
                             "table header (\"ID_REF\" and the sample accessions)")
        self._skip = number
        self.id_name, self.sample_ids = header[0], header[1:]
        self._check_sample_ids("in its table header")
        self.attributes = {"geo_series": {k: v[0] if len(v) == 1 else v for k, v in series.items()}}
        self.sample_annotations = self._samples(sample_lines)

    def _samples(self, lines: list[tuple[int, str, list[str]]]) -> pd.DataFrame:
        accessions = next((cells for _, field, cells in lines if field == "geo_accession"), None)
        if accessions is None:
            raise InputError(f"{self.path} has no !Sample_geo_accession line (the sample IDs)")
        n = len(accessions)
        fields = {field for _, field, _ in lines if not field.startswith("characteristics_")}
        columns: dict[str, list[str | None]] = {}

        def add(name: str, j: int, value: str) -> None:
            column = columns.setdefault(name, [None] * n)
            column[j] = value if column[j] is None else f"{column[j]}; {value}"

        for number, field, cells in lines:
            if field == "geo_accession":
                continue
            if len(cells) != n:
                raise InputError(f"{self.path}, line {number}: !Sample_{field} has {len(cells)} "
                                 f"values for {n} samples (one per !Sample_geo_accession)")
            channel = (field[len("characteristics_"):] if field.startswith("characteristics_")
                       else None)
            for j, cell in enumerate(cells):
                if cell == "":
                    continue
                if channel is None:
                    add(field, j, cell)
                    continue
                key, sep, value = cell.partition(": ")
                if not sep or not key.strip():
                    add(field, j, cell)
                    continue
                key = key.strip() + ("" if channel == "ch1" else f"_{channel}")
                add(f"characteristics_{key}" if key in fields else key, j, value.strip())
        frame = pd.DataFrame(columns, index=pd.Index(accessions, dtype=object), dtype=object)
        if frame.index.has_duplicates:
            raise InputError(f"{self.path}: !Sample_geo_accession lists duplicate accessions: "
                             + preview(frame.index[frame.index.duplicated()].unique()))
        if set(frame.index) != set(self.sample_ids):
            only_table = [s for s in self.sample_ids if s not in set(frame.index)]
            only_lines = [s for s in frame.index if s not in set(self.sample_ids)]
            raise InputError(f"{self.path}: the table header and !Sample_geo_accession disagree "
                             f"(only in the table: {preview(only_table) or '-'}; only in "
                             f"!Sample_geo_accession: {preview(only_lines) or '-'})")
        return frame.reindex(pd.Index(self.sample_ids, dtype=object))

    def blocks(self, rows: int) -> Iterator[Block]:
        self._ended = False
        yield from super().blocks(rows)
        if not self._ended:
            raise InputError(f"{self.path} ends without {TABLE_END} (a truncated download?)")

    def _rows(self, frame: pd.DataFrame, line: int) -> pd.DataFrame | None:
        if self._ended:
            return None
        end = np.flatnonzero(frame.iloc[:, 0].to_numpy(object) == TABLE_END)
        if len(end):
            self._ended = True
            frame = frame.iloc[: end[0]]
        return frame if len(frame) else None
