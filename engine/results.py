"""Tidy result tables: one row per feature (and stratum, term, ...), written as TSV and Parquet.

An analysis result is a Dataset whose variables are table columns. Variables that share the
dimensions of ``p_value`` form the analysis's main table (``<name>.tsv``); each other set of
dimensions forms an extra table named after its leading dimension (``<name>.slope_at.tsv``).
Leading dimensions (stratum, term, contrast, ...) become the first columns, then the feature
(``gene`` with the cohort's gene annotations, or ``feature``), then the variables in order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

#: Count columns, written as integers (missing stays NA).
INTEGER_COLUMNS = {"n", "n_case", "n_control", "n_events", "df_residual", "converged",
                   "separated", "df_num", "n_risk", "n_event", "n_censor", "size",
                   "size_in_library", "size_mapped", "overlap", "n_permutations",
                   "n_selected", "n_universe", "consensus_class", "class_at_k", "n_boot",
                   "cooks_outlier", "refitted"}
FEATURE_DIMS = ("gene", "gene_set", "feature")
SCORE_DIMS = ("gene_set", "sample")  # single-sample scores: written wide, as GSVA returns them


def gene_annotations(cohort: xr.Dataset) -> pd.DataFrame:
    """The string gene annotations of a cohort (symbol, chromosome, ...), indexed by gene."""
    columns = {name: np.asarray(var.values).astype(object) for name, var in cohort.data_vars.items()
               if var.dims == ("gene",) and var.dtype.kind not in "fiub"}
    return pd.DataFrame(columns, index=pd.Index(cohort["gene"].values.astype(object), name="gene"))


def _groups(result: xr.Dataset) -> dict[tuple, list[str]]:
    """Variables by their dimensions, in the order of the ``columns`` attribute; variables
    listed in the ``zarr_only`` attribute (e.g. sample x sample consensus matrices) are left
    out of the tables."""
    groups: dict[tuple, list[str]] = {}
    order = list(result.attrs.get("columns", []))
    names = [n for n in order if n in result.data_vars]
    names += sorted(set(result.data_vars) - set(names))
    skip = set(result.attrs.get("zarr_only", []))
    for name in (n for n in names if n not in skip):
        groups.setdefault(result[name].dims, []).append(name)
    return groups


def _table(result: xr.Dataset, dims: tuple, names: list[str],
           annotations: pd.DataFrame) -> pd.DataFrame:
    index = pd.MultiIndex.from_product(
        [np.asarray(result[d].values).astype(object) for d in dims], names=list(dims))
    table = pd.DataFrame({n: _column(result[n]) for n in names}, index=index).reset_index()
    if "gene" in dims and len(annotations.columns):
        extra = annotations.reindex(table["gene"]).reset_index(drop=True)
        at = table.columns.get_loc("gene") + 1
        table = pd.concat([table.iloc[:, :at], extra, table.iloc[:, at:]], axis=1)
    for column in INTEGER_COLUMNS & set(names):
        values = table[column]
        if values.notna().all():
            table[column] = values.astype("int64")
        else:
            table[column] = values.astype("Int64")
    return table


def _column(values: xr.DataArray) -> np.ndarray:
    out = np.asarray(values.values).reshape(-1)
    return out.astype(object) if out.dtype.kind in "TUSO" else out  # text, e.g. leading_edge


def _sorted(table: pd.DataFrame, dims: tuple) -> pd.DataFrame:
    """By p-value within each leading group (stratum, term, ...), NaN last; ties keep order."""
    leading = [d for d in dims if d not in FEATURE_DIMS]
    ordered = table.sort_values("p_value", kind="stable", na_position="last")
    if leading:
        position = {d: {v: i for i, v in enumerate(pd.unique(table[d]))} for d in leading}
        keys = [ordered[d].map(position[d]) for d in leading]
        ordered = ordered.iloc[np.lexsort([k.to_numpy() for k in reversed(keys)])]
    return ordered.reset_index(drop=True)


def result_tables(result: xr.Dataset, annotations: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The computed result as tables: ``""`` for the main table, the dimension for the rest
    (``<name>.<dim>.tsv``); ``"_sizes"`` for the gene-set sizes (``<name>_sizes.tsv``)."""
    groups = _groups(result)
    main = (result["p_value"].dims if "p_value" in result
            else SCORE_DIMS if SCORE_DIMS in groups else next(iter(groups)))
    tables = {}
    for dims, names in groups.items():
        if dims == SCORE_DIMS:  # one row per set, one column per sample
            wide = result[names[0]].to_pandas()
            tables[""] = wide.rename_axis(index="gene_set", columns=None).reset_index()
            continue
        if dims == ("gene_set",) and SCORE_DIMS in groups:
            continue  # the scored sets' sizes are in the sizes table
        table = _table(result, dims, names, annotations)
        if dims == ("library_set",):  # every set of the library: found, scored or not
            tables["_sizes"] = table.rename(columns={"library_set": "gene_set"})
            continue
        if dims == main:
            tables[""] = _sorted(table, dims) if "p_value" in names else table
        elif dims == ("group", "step"):  # Kaplan-Meier curves, padded to a common length
            curve = table[table["time"].notna()].drop(columns="step")
            tables["curve"] = curve.reset_index(drop=True)
        else:
            shared = sum(d[0] == dims[0] for d in groups) > 1  # e.g. ("k",) and ("k", "sample")
            use_all = dims[0] in FEATURE_DIMS or (shared and len(dims) > 1)
            tables["_".join(dims) if use_all else dims[0]] = table
    return tables


def result_table(result: xr.Dataset, annotations: pd.DataFrame) -> pd.DataFrame:
    """The main table of a computed result, sorted by p-value (NaN last, then gene order)."""
    return result_tables(result, annotations)[""]


def write_table(table: pd.DataFrame, directory: Path, name: str) -> list[Path]:
    """``<name>.tsv`` (full precision, NA for missing) and ``<name>.parquet``."""
    directory.mkdir(parents=True, exist_ok=True)
    tsv, parquet = directory / f"{name}.tsv", directory / f"{name}.parquet"
    table.to_csv(tsv, sep="\t", index=False, na_rep="NA", float_format="%.17g")
    table.to_parquet(parquet, index=False)
    return [tsv, parquet]
