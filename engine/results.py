"""Tidy result tables: one row per gene, written as TSV and Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

#: Table columns, in order, after ``gene`` and the gene annotations.
STAT_COLUMNS = ["effect", "statistic", "df", "p_value", "p_adj", "n_case", "n_control"]


def gene_annotations(cohort: xr.Dataset) -> pd.DataFrame:
    """The string gene annotations of a cohort (symbol, chromosome, ...), indexed by gene."""
    columns = {name: np.asarray(var.values).astype(object) for name, var in cohort.data_vars.items()
               if var.dims == ("gene",) and var.dtype.kind not in "fiub"}
    return pd.DataFrame(columns, index=pd.Index(cohort["gene"].values.astype(object), name="gene"))


def result_table(result: xr.Dataset, annotations: pd.DataFrame) -> pd.DataFrame:
    """A computed per-gene result as a table sorted by p-value (NaN last, then gene order)."""
    prefix = next(n for n in result.data_vars if n.endswith("_p_value")).removesuffix("_p_value")
    table = annotations.copy()
    for column in STAT_COLUMNS:
        table[column] = np.asarray(result[f"{prefix}_{column}"].values)
    for column in ("n_case", "n_control"):
        table[column] = table[column].astype("int64")
    table = table.reset_index()
    return table.sort_values("p_value", kind="stable", na_position="last").reset_index(drop=True)


def write_table(table: pd.DataFrame, directory: Path, name: str) -> list[Path]:
    """``<name>.tsv`` (full precision, NA for missing) and ``<name>.parquet``."""
    tsv, parquet = directory / f"{name}.tsv", directory / f"{name}.parquet"
    table.to_csv(tsv, sep="\t", index=False, na_rep="NA", float_format="%.17g")
    table.to_parquet(parquet, index=False)
    return [tsv, parquet]
