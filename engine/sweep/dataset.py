"""The results of every unit of a sweep as one Parquet dataset, partitioned by analysis and
cohort (Hive layout): ``OUTPUT/dataset/analysis=<table>/cohort=<cohort>/part-<unit>.parquet``.

Each file holds one table of one unit, with the unit's axis values (other than the cohort) as
leading columns, then ``unit`` and ``fingerprint``. Score matrices (sets x samples, written wide
in a unit's folder) are long here: ``gene_set``, ``sample``, ``score``. A unit's files are
replaced by rename when it is recomputed, and removed when it leaves the grid.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from engine.errors import InputError

PARTITIONS = ("analysis", "cohort")


def dataset_root(output: Path) -> Path:
    return Path(output) / "dataset"


def part_name(unit_id: str) -> str:
    """The file name of a unit's table in every partition (stable, so a re-run replaces it)."""
    return f"part-{hashlib.sha256(unit_id.encode()).hexdigest()[:16]}.parquet"


def unit_files(output: Path, unit_id: str) -> list[Path]:
    return sorted(dataset_root(output).glob(f"analysis=*/cohort=*/{part_name(unit_id)}"))


def _long(table: pd.DataFrame) -> pd.DataFrame:
    return table.melt(id_vars=["gene_set"], var_name="sample", value_name="score")


def unit_frame(table: pd.DataFrame, axes: dict[str, str], unit_id: str,
               fingerprint: str) -> pd.DataFrame:
    """A unit's table as stored in the dataset: axis columns, unit, fingerprint, then the
    table (long if it is a wide score matrix)."""
    frame = _long(table) if table.attrs.get("wide") else table
    leading = {a: v for a, v in axes.items() if a != "cohort"}
    leading.update(unit=unit_id, fingerprint=fingerprint)
    clash = sorted(set(frame.columns) & (set(leading) | set(PARTITIONS)))
    if clash:
        raise InputError(f"unit {unit_id}: axis or partition name(s) {clash} are also columns "
                         "of its results; rename the axis")
    front = pd.DataFrame({k: pd.Series([v] * len(frame), dtype=object) for k, v in
                          leading.items()}, index=frame.index)
    return pd.concat([front, frame], axis=1)


def write_unit_tables(output: Path, unit_id: str, cohort: str, axes: dict[str, str],
                      fingerprint: str, tables: dict[str, pd.DataFrame]) -> list[str]:
    """Write (each by rename) one file per table of the unit; remove its files of tables it no
    longer has. Returns the files' paths relative to ``output``."""
    root, name = dataset_root(output), part_name(unit_id)
    written = []
    for table_name, table in tables.items():
        folder = root / f"analysis={table_name.replace('/', '.')}" / f"cohort={cohort}"
        folder.mkdir(parents=True, exist_ok=True)
        frame = unit_frame(table, axes, unit_id, fingerprint)
        tmp = folder / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
        os.replace(tmp, folder / name)
        written.append(folder / name)
    for old in set(unit_files(output, unit_id)) - set(written):
        old.unlink()
    return [str(p.relative_to(output)) for p in written]


def remove_unit_tables(output: Path, unit_id: str) -> None:
    for path in unit_files(output, unit_id):
        path.unlink()


def analyses(output: Path) -> list[str]:
    """The tables (analyses) present in the dataset."""
    return sorted(p.name.removeprefix("analysis=")
                  for p in dataset_root(output).glob("analysis=*") if any(p.glob("*/*.parquet")))


def open_dataset(output: Path, analysis: str | None = None) -> ds.Dataset:
    """The dataset (one analysis, or all) as a pyarrow Dataset whose schema is the union of
    its files' schemas (units of one analysis may differ in columns, e.g. Welch vs
    Mann-Whitney tables; missing columns read as null)."""
    root = dataset_root(output)
    if analysis is not None and analysis not in analyses(output):
        raise InputError(f"no table {analysis!r} in {root}; tables: "
                         f"{', '.join(analyses(output)) or 'none'}")
    pattern = f"analysis={analysis}/cohort=*/*.parquet" if analysis else "analysis=*/cohort=*/*.parquet"
    files = sorted(str(p) for p in root.glob(pattern))
    if not files:
        raise InputError(f"{root} holds no results yet (run `cohort sweep SWEEP.yaml`)")
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
    partitioning = ds.partitioning(pa.schema([(p, pa.string()) for p in PARTITIONS]),
                                   flavor="hive")
    for p in PARTITIONS:
        schema = schema.append(pa.field(p, pa.string()))
    return ds.dataset(files, schema=schema, format="parquet", partitioning=partitioning,
                      partition_base_dir=str(root))


def read_results(output: Path, analysis: str | None = None, *, genes: list[str] | None = None,
                 gene_sets: list[str] | None = None, max_p_adj: float | None = None,
                 where: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """Rows of the dataset: one analysis (or all), optionally only the given genes (ID or
    symbol) or gene sets, with ``p_adj <= max_p_adj``, and a pandas ``where`` query over any
    column (axes, cohort, ...). Columns all null in the selection are dropped."""
    dataset = open_dataset(output, analysis)
    names = set(dataset.schema.names)
    condition = None

    def both(c, new):
        return new if c is None else c & new

    if genes:
        gene_columns = [c for c in ("gene", "symbol") if c in names]
        if not gene_columns:
            raise InputError("--gene: these tables have no gene or symbol column")
        match = None
        for c in gene_columns:
            test = ds.field(c).isin(genes)
            match = test if match is None else match | test
        condition = both(condition, match)
    if gene_sets:
        if "gene_set" not in names:
            raise InputError("--gene-set: these tables have no gene_set column")
        condition = both(condition, ds.field("gene_set").isin(gene_sets))
    if max_p_adj is not None:
        if "p_adj" not in names:
            raise InputError("--max-p-adj: these tables have no p_adj column")
        condition = both(condition, ds.field("p_adj") <= max_p_adj)
    frame = dataset.to_table(filter=condition).to_pandas()
    frame = frame.dropna(axis=1, how="all") if len(frame) else frame
    leading = [c for c in ("analysis", "cohort") if c in frame]
    frame = frame[leading + [c for c in frame.columns if c not in leading]]
    if where:
        try:
            frame = frame.query(where, engine="python")
        except Exception as e:  # pandas raises many kinds for a bad expression
            raise InputError(f"--where {where!r}: {e}; columns: {', '.join(frame.columns)}") from None
    if columns:
        missing = [c for c in columns if c not in frame]
        if missing:
            raise InputError(f"columns {missing} are not in the results; columns: "
                             f"{', '.join(frame.columns)}")
        frame = frame[columns]
    return frame.reset_index(drop=True)
