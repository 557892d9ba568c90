"""Sample and probe designs on a whole cohort Dataset: repeated samples averaged per patient,
per-patient deltas, probes collapsed to genes, and sample selection.

Every function takes the cohort Dataset and returns a new one; the (gene, sample) variables
stay lazy (building the result computes nothing on them; ``collapse`` is lazy too) and every
one of them is carried along: float variables (``expression``) are averaged or differenced in
float64 and stored in their own dtype, integer count variables (``counts``) are summed, which
is how DESeq2 ``collapseReplicates`` pools technical replicates. Variables of other dtypes,
and other variables along ``sample`` that are not 1-D annotations, are dropped and listed.

Annotations: a 1-D annotation along the dimension that is grouped is kept when it is constant
within every group (its value is then the group's value; missing values count as equal to each
other) and otherwise dropped and listed in the step's attribute record; annotations along the
other dimension are kept as they are. Values are compared as labels: text stripped, "" / "nan"
/ "NA" missing, numbers written without a trailing ".0" (12.0 -> "12").

Each function records what it did under its own name in ``attrs`` (``aggregate``, ``delta``,
``collapse``, ``select_samples``): options, sizes before and after, what was dropped.
"""

from __future__ import annotations

import keyword
import re
import warnings
from collections.abc import Sequence

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize

from engine.errors import InputError, preview
from engine.preprocess.transforms import as_matrix
from engine.stats.features import MISSING_LABELS, sample_annotation, sample_frame

__all__ = ["AGGREGATE_HOW", "COLLAPSE_METHODS", "aggregate", "collapse", "delta",
           "select_samples"]

AGGREGATE_HOW = ("mean", "median")
COLLAPSE_METHODS = ("max_mean", "max_variance", "mean", "median", "sum")


# -- labels and variables ----------------------------------------------------------------------

def _label(value) -> str:
    """One annotation value as a label: "" when missing, 12.0 -> "12", text stripped."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return ""
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    if isinstance(value, (bool, np.bool_)):
        return "TRUE" if value else "FALSE"  # as the store writes booleans
    text = str(value).strip()
    return "" if text in MISSING_LABELS else text


def _labels(values) -> np.ndarray:
    return np.array([_label(v) for v in np.asarray(values, dtype=object)], dtype=object)


def _values(var: xr.DataArray) -> np.ndarray:
    """A 1-D annotation in memory (annotations are small; open_cohort loads them)."""
    return np.asarray(var.values)


def _split_variables(ds: xr.Dataset, dim: str):
    """(gene, sample) variables by kind, the 1-D annotations along ``dim``, and the other
    variables along ``dim`` that cannot be carried along."""
    floats, integers, dropped, annotations = [], [], [], []
    for name, var in ds.data_vars.items():
        if var.dims == ("gene", "sample"):
            kind = var.dtype.kind
            (floats if kind == "f" else integers if kind in "iu" else dropped).append(name)
        elif var.dims == (dim,):
            annotations.append(name)
        elif dim in var.dims:
            dropped.append(name)
    return floats, integers, dropped, annotations


def _constant_within(values: np.ndarray, codes: np.ndarray) -> bool:
    """Whether ``values`` take one value in every group of ``codes`` (missing == missing)."""
    frame = pd.DataFrame({"code": codes, "value": _labels(values)})
    return bool((frame.groupby("code")["value"].nunique(dropna=False) <= 1).all())


def _group_annotations(ds: xr.Dataset, names: list[str], codes: np.ndarray,
                       first: np.ndarray, dim: str) -> tuple[dict, list[str]]:
    """Annotations constant within every group (taken at each group's first member) and the
    names of those dropped."""
    kept, dropped = {}, []
    for name in names:
        values = _values(ds[name])
        if _constant_within(values, codes):
            kept[name] = xr.DataArray(values[first], dims=dim, attrs=dict(ds[name].attrs))
        else:
            dropped.append(name)
    return kept, dropped


def _check_annotation_names(ds: xr.Dataset, names: Sequence[str], what: str) -> list[str]:
    names = list(names)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"{what} names {preview(repeated)} more than once; name each "
                         "annotation once")
    for name in names:
        sample_annotation(ds, name, what)
    return names


def _missing_error(what: str, name: str, ids) -> InputError:
    return InputError(f"{len(ids)} samples have no value of {what} {name!r}: {preview(ids)} "
                      "(fill them in, or leave those samples out first with select_samples)")


# -- aggregate ---------------------------------------------------------------------------------

def _runs(codes: np.ndarray, n_groups: int):
    """The positions grouped (``perm``: group by group, store order inside) and where each
    group's run begins in ``perm``."""
    perm = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    return perm, starts, sizes


def _mean_runs(y: np.ndarray, starts: np.ndarray, axis: int) -> np.ndarray:
    """NaN-aware mean of each run of ``y`` along ``axis`` (NaN when a run has no value)."""
    y = np.asarray(y, dtype=np.float64)
    present = ~np.isnan(y)
    # reduceat adds each row's run in order: the same additions whatever the chunk
    sums = np.add.reduceat(np.where(present, y, 0.0), starts, axis=axis)
    count = np.add.reduceat(present.astype(np.int64), starts, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, sums / count, np.nan)


def _sum_runs(y: np.ndarray, starts: np.ndarray, axis: int) -> np.ndarray:
    """Sum of each run: integers exactly (int64); floats NaN-aware, NaN when a run has no
    value."""
    if y.dtype.kind in "iub":
        return np.add.reduceat(y.astype(np.int64), starts, axis=axis)
    y = np.asarray(y, dtype=np.float64)
    present = ~np.isnan(y)
    sums = np.add.reduceat(np.where(present, y, 0.0), starts, axis=axis)
    count = np.add.reduceat(present.astype(np.int64), starts, axis=axis)
    return np.where(count > 0, sums, np.nan)


def _median_runs(y: np.ndarray, starts: np.ndarray, axis: int) -> np.ndarray:
    """NaN-aware median of each run along ``axis``: one vectorised median per distinct run
    length (a handful), NaN when a run has no value."""
    y = np.moveaxis(np.asarray(y, dtype=np.float64), axis, -1)
    sizes = np.diff(np.append(starts, y.shape[-1]))
    out = np.empty((*y.shape[:-1], starts.size))
    for size in np.unique(sizes):
        runs = np.flatnonzero(sizes == size)
        columns = starts[runs][:, None] + np.arange(size)
        block = y[..., columns]  # (..., runs, size)
        with warnings.catch_warnings():  # an all-NaN run warns; NaN is the answer
            warnings.filterwarnings("ignore", message="All-NaN slice", category=RuntimeWarning)
            out[..., runs] = np.nanmedian(block, axis=-1)
    return np.moveaxis(out, -1, axis)


_RUN_KERNELS = {"mean": _mean_runs, "median": _median_runs, "sum": _sum_runs}


def _columns_kernel(block, *, perm, starts, how, out_dtype):
    y = np.asarray(block)[:, perm]
    return _RUN_KERNELS[how](y, starts, axis=1).astype(out_dtype)


def _aggregate_columns(var: xr.DataArray, perm, starts, how, out_dtype, label) -> da.Array:
    x = as_matrix(var)
    n_groups = starts.size
    return x.map_blocks(_columns_kernel, perm=perm, starts=starts, how=how, out_dtype=out_dtype,
                        dtype=out_dtype, chunks=(x.chunks[0], (n_groups,)),
                        meta=np.empty((0, 0), out_dtype),
                        name=f"{label}-{tokenize(x, perm, starts, how)}")


def aggregate(ds: xr.Dataset, by: str, within: Sequence[str] = (), how: str = "mean",
              sep: str = "_") -> xr.Dataset:
    """One sample per group of the sample annotations (``by``, *``within``): e.g. the mean of
    two biopsies per patient (``by="patient"``), per patient and time point with
    ``within=["timepoint"]``.

    Float variables: the NaN-aware mean over the group's samples (``how="median"``: the
    median; a gene with no value in the group gets NaN), as limma ``avereps`` averages
    replicate arrays. Integer count variables: the sum (DESeq2 ``collapseReplicates``).

    New sample IDs are the group's labels joined by ``sep`` ("P1", or "P1_pre" with
    ``within``); groups come in the order of their first sample in the store. A sample with a
    missing value of ``by`` or ``within``, or two groups with the same ID, is an InputError.
    Sample annotations constant within every group are kept, the others dropped and listed in
    ``attrs["aggregate"]["dropped_annotations"]``; ``n_aggregated`` (float64) counts the
    samples of each group. Lazy: each gene chunk is averaged on its own (a reordering of its
    columns and a segmented sum, O(genes x samples)).
    """
    if how not in AGGREGATE_HOW:
        raise InputError(f"aggregate how={how!r} is not one of {', '.join(AGGREGATE_HOW)} "
                         "(integer counts are always summed)")
    names = _check_annotation_names(ds, [by, *within], "aggregate")
    samples = np.asarray(ds["sample"].values).astype(str)
    labels = np.stack([_labels(_values(ds[n])) for n in names], axis=1)
    for name, column in zip(names, labels.T):
        if (column == "").any():
            raise _missing_error("aggregate annotation", name, samples[column == ""])
    keys = pd.MultiIndex.from_arrays(labels.T, names=names)
    codes, groups = pd.factorize(keys)  # groups in order of first appearance
    ids = np.array([sep.join(g) if isinstance(g, tuple) else str(g) for g in groups],
                   dtype=object)
    clash = pd.Series(ids)[pd.Series(ids).duplicated()].unique()
    if len(clash):
        raise InputError(f"aggregate gives two groups the same sample ID {preview(clash)} "
                         f"(their {', '.join(names)} labels joined by {sep!r}); choose another "
                         "sep")
    perm, starts, sizes = _runs(codes, len(groups))
    floats, integers, dropped_vars, annotations = _split_variables(ds, "sample")

    out = ds.drop_dims("sample").assign_coords(sample=ids)
    for name in floats + integers:
        var = ds[name]
        kind, dtype = ("sum", np.dtype(np.int64)) if name in integers else (how, var.dtype)
        values = _aggregate_columns(var, perm, starts, kind, dtype, "aggregate-samples")
        out[name] = xr.DataArray(values, dims=("gene", "sample"), attrs=dict(var.attrs))
    kept, dropped = _group_annotations(ds, annotations, codes, perm[starts], "sample")
    out = out.assign(kept)
    out["n_aggregated"] = xr.DataArray(sizes.astype(np.float64), dims="sample", attrs={
        "description": "samples averaged (or summed) into this one"})
    out.attrs = {**ds.attrs, "aggregate": {
        "by": by, "within": list(within), "how": how, "sep": sep,
        "sample_ids": f"the {', '.join(names)} labels joined by {sep!r}",
        "samples_before": int(samples.size), "samples_after": int(ids.size),
        "dropped_annotations": dropped, "dropped_variables": dropped_vars,
        "integer_variables_summed": integers}}
    return out


# -- delta -------------------------------------------------------------------------------------

def _difference_kernel(block, *, after, before, out_dtype):
    x = np.asarray(block, dtype=np.float64)
    return (x[:, after] - x[:, before]).astype(out_dtype)


def delta(ds: xr.Dataset, by: str, time: str, before, after) -> xr.Dataset:
    """Per patient (``by``), the difference ``after - before`` of every float (gene, sample)
    variable between its sample at ``time == after`` and at ``time == before``.

    The samples of the result are the patients with both (ID: the patient's label, in the
    order of their first sample in the store); patients with only one of the two are listed in
    ``attrs["delta"]["patients_unpaired"]``. Several samples of one patient at one time is an
    InputError (average them first with ``aggregate(by=..., within=[time])``). Integer count
    variables are dropped (a difference of counts is not a count). Sample annotations equal at
    both times are kept, the others dropped and listed; ``sample_before`` and ``sample_after``
    name the two samples. Lazy (a column difference per gene chunk).
    """
    _check_annotation_names(ds, [by, time], "delta")
    before_label, after_label = _label(before), _label(after)
    if before_label == after_label:
        raise InputError(f"delta before and after are both {before_label!r}; give two "
                         f"different values of {time!r}")
    times = _labels(_values(ds[time]))
    present = sorted(set(times) - {""})
    for label in (before_label, after_label):
        if label not in present:
            raise InputError(f"delta: {time!r} has no sample with value {label!r} (values: "
                             f"{preview(present, 20)})")
    samples = np.asarray(ds["sample"].values).astype(str)
    patients = _labels(_values(ds[by]))
    at = {label: np.flatnonzero(times == label) for label in (before_label, after_label)}
    involved = np.sort(np.concatenate(list(at.values())))
    if (patients[involved] == "").any():
        raise _missing_error("delta annotation", by, samples[involved][patients[involved] == ""])
    for label, positions in at.items():
        counts = pd.Series(patients[positions]).value_counts()
        repeated = sorted(counts.index[counts > 1])
        if repeated:
            raise InputError(f"delta: patients {preview(repeated)} have several samples with "
                             f"{time} = {label!r}; average them first (aggregate: by {by}, "
                             f"within [{time}])")
    position_of = {label: dict(zip(patients[pos], pos)) for label, pos in at.items()}
    order = list(dict.fromkeys(patients[involved]))
    paired = [p for p in order if all(p in position_of[lab] for lab in position_of)]
    unpaired = [p for p in order if p not in paired]
    if not paired:
        raise InputError(f"delta: no patient ({by}) has samples at both {time} = "
                         f"{before_label!r} and {after_label!r}")
    i_before = np.array([position_of[before_label][p] for p in paired], dtype=np.intp)
    i_after = np.array([position_of[after_label][p] for p in paired], dtype=np.intp)
    floats, integers, dropped_vars, annotations = _split_variables(ds, "sample")

    ids = np.array(paired, dtype=object)
    out = ds.drop_dims("sample").assign_coords(sample=ids)
    for name in floats:
        var = ds[name]
        x = as_matrix(var)
        values = x.map_blocks(_difference_kernel, after=i_after, before=i_before,
                              out_dtype=var.dtype, dtype=var.dtype,
                              chunks=(x.chunks[0], (ids.size,)), meta=np.empty((0, 0), var.dtype),
                              name=f"delta-pairs-{tokenize(x, i_after, i_before)}")
        out[name] = xr.DataArray(values, dims=("gene", "sample"), attrs=dict(var.attrs))
    kept, dropped = {}, []
    for name in annotations:
        values = _values(ds[name])
        labels = _labels(values)
        if (labels[i_before] == labels[i_after]).all():
            kept[name] = xr.DataArray(values[i_before], dims="sample", attrs=dict(ds[name].attrs))
        else:
            dropped.append(name)
    out = out.assign(kept)
    out["sample_before"] = xr.DataArray(samples[i_before].astype(object), dims="sample",
                                        attrs={"description": f"the sample at {time} = "
                                                              f"{before_label}"})
    out["sample_after"] = xr.DataArray(samples[i_after].astype(object), dims="sample",
                                       attrs={"description": f"the sample at {time} = "
                                                             f"{after_label}"})
    out.attrs = {**ds.attrs, "delta": {
        "by": by, "time": time, "before": before_label, "after": after_label,
        "difference": "after - before", "patients": len(paired),
        "patients_unpaired": unpaired, "dropped_annotations": dropped,
        "dropped_variables": dropped_vars + integers}}
    return out


# -- collapse ----------------------------------------------------------------------------------

def _group_chunks(sizes: np.ndarray, target: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Chunks of about ``target`` rows that never split a group: (rows per chunk, groups per
    chunk)."""
    ends = np.cumsum(sizes)
    cuts = [0]
    while cuts[-1] < sizes.size:
        row_start = ends[cuts[-1] - 1] if cuts[-1] else 0
        g = int(np.searchsorted(ends, row_start + target, side="left"))
        cuts.append(min(max(g + 1, cuts[-1] + 1), sizes.size))
    cuts = np.array(cuts)
    rows = np.diff(np.concatenate([[0], ends[cuts[1:] - 1]]))
    return tuple(int(r) for r in rows), tuple(int(c) for c in np.diff(cuts))


def _rows_kernel(block, is_start, *, how, out_dtype):
    starts = np.flatnonzero(is_start)
    return _RUN_KERNELS[how](np.asarray(block), starts, axis=0).astype(out_dtype)


def _pick_kernel(block, chooser, is_start, *, method, out_dtype):
    """The row chosen in each run by ``chooser`` (the deciding variable's block), taken from
    ``block``: float NaN where no row can be chosen, integers then the run's first row."""
    starts = np.flatnonzero(is_start)
    chosen = _select(np.asarray(chooser, dtype=np.float64), starts, method)
    rows = np.asarray(block)[np.where(chosen >= 0, chosen, starts)].astype(out_dtype)
    if out_dtype.kind == "f":
        rows[chosen < 0] = np.nan
    return rows


def collapse(ds: xr.Dataset, by: str = "symbol", method: str = "max_mean", *,
             variable: str = "expression") -> xr.Dataset:
    """Probes to genes: one row per value of the gene annotation ``by`` (e.g. ``symbol``).

    ``max_mean`` / ``max_variance``: the probe with the largest mean (variance, ddof 1) of
    ``variable`` over the samples represents the gene, as WGCNA ``collapseRows`` (methods
    "MaxMean", "maxRowVariance") does; the same probe is then taken from every (gene, sample)
    variable. Ties go to the first probe in store order (WGCNA sorts probe IDs first).
    Missing values: the statistic is over the values present (WGCNA ``na.rm=TRUE``); a probe
    whose statistic is undefined ranks below every defined one and an all-missing probe is
    never chosen (the gene is then NaN, integer variables take its first probe). WGCNA's
    ``selectFewestMissing`` (prefer the probes with fewest missing values) is not applied: it
    changes nothing without missing values. The same rules as
    ``engine.genesets.collapse_probes``, whose selection kernel this reuses.
    ``mean`` / ``median`` / ``sum``: NaN-aware, sample by sample over the gene's probes (limma
    ``avereps`` for the mean; NaN when no probe has a value). Integer count variables are
    summed for these three.

    Probes with an empty annotation are dropped. Genes are the annotation values in order of
    first appearance; gene annotations constant within every gene are kept (``by`` too),
    others dropped and listed; ``n_probes`` (float64) and, for max_*, ``probe`` (the probe
    kept) are added. Lazy, with no pass over the data when it is built: the probes are put in
    gene order (a take along genes: a shuffle of the rows), rechunked so that no gene straddles
    two chunks, and collapsed chunk by chunk; the max_* choice is made inside each chunk from
    ``variable``'s rows.
    """
    if method not in COLLAPSE_METHODS:
        raise InputError(f"collapse method {method!r} is not one of "
                         f"{', '.join(COLLAPSE_METHODS)}")
    if by not in ds or ds[by].dims != ("gene",):
        names = sorted(n for n, v in ds.data_vars.items() if v.dims == ("gene",))
        raise InputError(f"collapse by {by!r} is not a gene annotation of the cohort (gene "
                         f"annotations: {preview(names) or 'none'})")
    floats, integers, dropped_vars, annotations = _split_variables(ds, "gene")
    selecting = method.startswith("max_")
    if selecting and variable not in floats + integers:
        raise InputError(f"collapse variable {variable!r} is not a numeric (gene, sample) "
                         f"variable of the cohort (available: {preview(floats + integers)})")
    labels = _labels(_values(ds[by]))
    with_label = np.flatnonzero(labels != "")
    if with_label.size == 0:
        raise InputError(f"gene annotation {by!r} is empty for every probe; nothing to collapse")
    codes, genes = pd.factorize(labels[with_label])
    perm = with_label[np.argsort(codes, kind="stable")]  # gene by gene, store order inside
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    any_matrix = ds[(floats + integers)[0]] if floats + integers else None
    target = max(as_matrix(any_matrix).chunks[0]) if any_matrix is not None else 1
    row_chunks, group_chunks = _group_chunks(sizes, max(int(target), 1))
    is_start = np.zeros(perm.size, dtype=bool)
    is_start[starts] = True
    is_start = da.from_array(is_start, chunks=(row_chunks,))

    def ordered(name):
        return as_matrix(ds[name])[perm].rechunk({0: row_chunks, 1: -1})

    chooser = ordered(variable) if selecting else None
    token = tokenize(chooser if selecting else None, perm, method, by)
    genes = np.asarray(genes, dtype=object)
    out = ds.drop_dims("gene").assign_coords(gene=genes)
    for name in floats + integers:
        var = ds[name]
        rows = ordered(name)
        integer = name in integers
        dtype = np.dtype(np.int64) if integer and not selecting else var.dtype
        if selecting:
            values = da.blockwise(_pick_kernel, "ij", rows, "ij", chooser, "ij", is_start, "i",
                                  method=method, out_dtype=dtype, adjust_chunks={"i": group_chunks},
                                  dtype=dtype, meta=np.empty((0, 0), dtype),
                                  name=f"collapse-probes-{tokenize(rows, token)}")
        else:
            how = "sum" if integer else method
            values = da.blockwise(_rows_kernel, "ij", rows, "ij", is_start, "i", how=how,
                                  out_dtype=dtype, adjust_chunks={"i": group_chunks},
                                  dtype=dtype, meta=np.empty((0, 0), dtype),
                                  name=f"collapse-probes-{tokenize(rows, token)}")
        out[name] = xr.DataArray(values, dims=("gene", "sample"), attrs=dict(var.attrs))
    group_of_probe = np.full(ds.sizes["gene"], -1)
    group_of_probe[with_label] = codes
    member = np.flatnonzero(group_of_probe >= 0)
    kept, dropped = {}, []
    for name in annotations:
        values = _values(ds[name])
        if _constant_within(values[member], group_of_probe[member]):
            kept[name] = xr.DataArray(values[perm[starts]], dims="gene",
                                      attrs=dict(ds[name].attrs))
        else:
            dropped.append(name)
    out = out.assign(kept)
    out["n_probes"] = xr.DataArray(sizes.astype(np.float64), dims="gene",
                                   attrs={"description": f"probes with this {by}"})
    if selecting:
        names = da.from_array(np.asarray(ds["gene"].values).astype(str).astype(object)[perm],
                              chunks=(row_chunks,))
        probe = da.blockwise(_probe_chunk, "i", chooser, "ij", is_start, "i", names, "i",
                             method=method, concatenate=True,
                             adjust_chunks={"i": group_chunks}, dtype=object,
                             meta=np.empty((0,), object), name=f"collapse-probes-kept-{token}")
        out["probe"] = xr.DataArray(probe, dims="gene", attrs={
            "description": f"the probe kept ({method} of {variable}); '' when all its probes "
                           "are missing"})
    out.attrs = {**ds.attrs, "collapse": {
        "by": by, "method": method, "variable": variable if selecting else None,
        "probes": int(ds.sizes["gene"]), "probes_without_annotation":
            int(ds.sizes["gene"] - with_label.size), "genes": int(genes.size),
        "dropped_annotations": dropped, "dropped_variables": dropped_vars,
        "integer_variables_summed": integers if not selecting else []}}
    return out


# -- select_samples ----------------------------------------------------------------------------

#: Words of the query language that are never annotation names to quote.
_QUERY_WORDS = {"and", "or", "not", "in", "is", "True", "False", "None"}


def _quote_names(where: str, names: Sequence[str]) -> str:
    """``where`` with every bare annotation name that is not a Python identifier (``mol.biol``,
    ``t(9;22)``, ``age at dx``) or is a keyword put in backticks, outside quoted text and
    existing backticks, so users can write names as the sample sheet spells them."""
    awkward = sorted((n for n in names if (not n.isidentifier() or keyword.iskeyword(n))
                      and n not in _QUERY_WORDS), key=len, reverse=True)
    if not awkward:
        return where
    pattern = re.compile(r"(?<![\w.`])(?:" + "|".join(map(re.escape, awkward)) + r")(?![\w`])")
    pieces = re.split(r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`[^`]*`)""", where)
    return "".join(piece if i % 2 else pattern.sub(lambda m: f"`{m.group(0)}`", piece)
                   for i, piece in enumerate(pieces))


def _where_mask(ds: xr.Dataset, where: str) -> np.ndarray:
    names = [n for n, v in ds.data_vars.items() if v.dims == ("sample",)]
    frame = sample_frame(ds, names)
    if "sample" not in frame:
        frame["sample"] = np.asarray(ds["sample"].values).astype(str).astype(object)
    available = preview(sorted(names), 30)
    expression = _quote_names(where, list(frame.columns))
    try:
        result = frame.eval(expression, engine="python", local_dict={}, global_dict={})
    except pd.errors.UndefinedVariableError as e:
        match = re.search(r"(?:name|variable) '([^']+)' is not defined", str(e))
        name = match.group(1) if match else str(e)
        raise InputError(f"sample filter {where!r}: {name!r} is not a sample annotation "
                         f"(annotations: {available})") from None
    except Exception as e:  # noqa: BLE001 - any failure of the user's expression
        raise InputError(f"sample filter {where!r} is not a valid condition over the sample "
                         f"annotations ({type(e).__name__}: {e}); write it in pandas query "
                         f"syntax, e.g. \"response in ['CR', 'NR'] and age > 30\" "
                         f"(annotations: {available})") from None
    values = np.asarray(getattr(result, "values", result))
    if values.shape != (ds.sizes["sample"],) or not all(
            isinstance(v, (bool, np.bool_)) for v in values.tolist()):
        raise InputError(f"sample filter {where!r} does not give True or False for each "
                         "sample; write a condition such as \"age > 30\"")
    return values.astype(bool)


def select_samples(ds: xr.Dataset, where: str | None = None, *,
                   ids: Sequence[str] | None = None) -> xr.Dataset:
    """The samples matching ``where`` and/or listed in ``ids`` (both must hold when both are
    given), in store order; every variable along ``sample`` is subset, lazily.

    ``where`` is a pandas query over the sample annotations (and ``sample``, the IDs):
    ``"response in ['CR', 'NR']"``, ``"mol.biol == 'BCR/ABL' and age > 30"``. Names that are
    not identifiers may be written plainly (they are put in backticks, pandas' quoting, which
    also works). Missing values compare as in pandas (missing text is None, a missing number
    NaN): ``==``, ``<``, ``in`` never match them, ``!=`` does; ``response.notna()`` selects
    the samples with a value.
    A name that is not an annotation, an expression that is not a condition, an unknown ID or
    a selection of no sample is an InputError naming it.
    """
    if where is None and ids is None:
        raise InputError("select_samples needs where (a condition over sample annotations) "
                         "or ids")
    samples = np.asarray(ds["sample"].values).astype(str)
    keep = np.ones(samples.size, dtype=bool)
    if ids is not None:
        wanted = [str(i) for i in ids]
        repeated = sorted({i for i in wanted if wanted.count(i) > 1})
        if repeated:
            raise InputError(f"select_samples ids list {preview(repeated)} more than once")
        unknown = sorted(set(wanted) - set(samples))
        if unknown:
            raise InputError(f"select_samples ids {preview(unknown)} are not samples of the "
                             f"cohort (sample IDs look like {preview(samples[:5])})")
        keep &= np.isin(samples, wanted)
    if where is not None:
        if not isinstance(where, str) or not where.strip():
            raise InputError("select_samples where must be a condition, e.g. \"age > 30\"")
        keep &= _where_mask(ds, where)
    if not keep.any():
        what = " and ".join(x for x in (f"where {where!r}" if where is not None else "",
                                        f"{len(ids)} ids" if ids is not None else "") if x)
        raise InputError(f"select_samples ({what}) keeps no sample of {samples.size}")
    out = ds.isel(sample=np.flatnonzero(keep))
    out.attrs = {**ds.attrs, "select_samples": {
        "where": where, "ids": None if ids is None else len(ids),
        "samples_before": int(samples.size), "samples_after": int(keep.sum()),
        "samples_dropped": samples[~keep].tolist()}}
    return out


# -- the probe choice of collapse (max_mean, max_variance) ------------------------------

def _probe_chunk(block, is_start, names, *, method):
    chosen = _select(np.asarray(block), np.flatnonzero(is_start), method)
    return _probe_names(chosen, np.arange(names.size), np.asarray(names, dtype=object))


def _probe_names(chosen, perm, probe_ids) -> np.ndarray:
    names = probe_ids[perm[np.maximum(chosen, 0)]].astype(object)
    names[chosen < 0] = ""
    return names


def _select(y: np.ndarray, starts: np.ndarray, method: str) -> np.ndarray:
    """Per run, the row with the largest mean (or variance, ddof 1) of its non-missing values;
    undefined statistics rank last, all-NaN rows never win (-1 when a run has only those);
    ties go to the first row."""
    y64 = y.astype(np.float64)
    present = ~np.isnan(y64)
    n = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(present, y64, 0.0).sum(axis=1) / n
        if method == "max_variance":
            dev = np.where(present, y64 - mean[:, None], 0.0)
            stat = (dev * dev).sum(axis=1) / (n - 1)
            stat[n < 2] = np.nan
        else:
            stat = mean
    rank_class = np.where(n == 0, 2, np.where(np.isnan(stat), 1, 0))
    group = np.repeat(np.arange(starts.size), np.diff(np.append(starts, y.shape[0])))
    position = np.arange(y.shape[0])
    order = np.lexsort((position, -np.where(rank_class == 0, stat, 0.0), rank_class, group))
    chosen = order[starts]
    return np.where(rank_class[chosen] == 2, -1, chosen)
