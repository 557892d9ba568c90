"""Labelled per-gene two-group tests: sample selection, the Dask graph, BH adjustment.

The numpy kernels live in ``engine.stats.twogroup``; this module only picks the case and
control columns from the sample annotations and maps a kernel over gene chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
import xarray as xr

from engine.errors import InputError, preview
from engine.stats.multitest import benjamini_hochberg
from engine.stats.twogroup import PAIRED_TESTS, RESULT_FIELDS, TESTS

#: Variable-name prefix of each test's outputs (``welch_t_p_value``, ...).
PREFIX = {"welch": "welch_t", "student": "student_t", "paired_t": "paired_t",
          "mann_whitney": "mann_whitney_u", "wilcoxon_signed_rank": "wilcoxon_signed_rank"}

DESCRIPTIONS = {
    "effect": "mean(case) - mean(control); paired tests: mean of case - control differences",
    "statistic": "test statistic of case vs control (t; Mann-Whitney U of the case group; "
                 "signed-rank V of the positive differences)",
    "df": "degrees of freedom of the t statistic (NaN for rank tests)",
    "p_value": "two-sided p-value",
    "p_adj": "Benjamini-Hochberg adjusted p-value over the genes with a p-value",
    "n_case": "case samples (paired: complete pairs) with a value for the gene",
    "n_control": "control samples (paired: complete pairs) with a value for the gene",
}


@dataclass(frozen=True)
class TwoGroupDesign:
    """Column indices of the case and control samples; for paired designs aligned by pair."""

    case: np.ndarray
    control: np.ndarray
    pairs: np.ndarray | None = None


def _labels(ds: xr.Dataset, column: str, what: str) -> np.ndarray:
    if column not in ds or ds[column].dims != ("sample",):
        names = sorted(n for n, v in ds.data_vars.items() if v.dims == ("sample",))
        raise InputError(f"{what} {column!r} is not a sample annotation of the cohort "
                         f"(available: {preview(names, 30)})")
    return np.asarray(ds[column].values)


def _select(labels: np.ndarray, value, column: str) -> np.ndarray:
    if labels.dtype.kind == "f":
        try:
            hit = labels == float(value)
        except (TypeError, ValueError):
            hit = np.zeros(len(labels), bool)
    else:
        hit = labels.astype(str) == str(value)
    if not hit.any():
        present = {str(v) for v in labels if str(v) not in ("", "nan")}
        raise InputError(f"no sample has {column} == {value!r} "
                         f"(values present: {preview(sorted(present), 20)})")
    return np.flatnonzero(hit)


def two_group_design(ds: xr.Dataset, *, group: str, case, control, pair_by: str | None = None
                     ) -> TwoGroupDesign:
    """Case and control samples by the annotation ``group``; with ``pair_by``, matched pairs."""
    if str(case) == str(control):
        raise InputError(f"case and control are both {case!r}; choose two different groups")
    labels = _labels(ds, group, "group")
    case_idx, control_idx = _select(labels, case, group), _select(labels, control, group)
    if pair_by is None:
        return TwoGroupDesign(case_idx, control_idx)
    pair_ids = _labels(ds, pair_by, "pair_by").astype(str)
    for idx, name in ((case_idx, case), (control_idx, control)):
        ids = pair_ids[idx]
        ids = ids[(ids != "") & (ids != "nan")]
        dup = sorted({i for i in ids if (ids == i).sum() > 1})
        if dup:
            raise InputError(f"{pair_by} values occur more than once within {group} == {name!r}: "
                             f"{preview(dup)} (each pair needs one case and one control sample)")
    case_of = {pair_ids[i]: i for i in case_idx}
    control_of = {pair_ids[i]: i for i in control_idx}
    common = sorted((set(case_of) & set(control_of)) - {"", "nan"})
    if len(common) < 2:
        raise InputError(f"only {len(common)} complete {pair_by} pairs of {group} {case!r} and "
                         f"{control!r} (paired tests need at least 2)")
    return TwoGroupDesign(np.array([case_of[p] for p in common]),
                          np.array([control_of[p] for p in common]), np.array(common, dtype=object))


def _block_kernel(block: np.ndarray, *, kernel, case: np.ndarray, control: np.ndarray) -> np.ndarray:
    return kernel(block[:, case], block[:, control])


def two_group_test(ds: xr.Dataset, *, test: str, group: str, case, control,
                   pair_by: str | None = None, variable: str = "expression") -> xr.Dataset:
    """Per-gene two-group test of ``variable``, lazily; returns ``<prefix>_<field>`` variables.

    ``test`` is one of welch, student, paired_t, mann_whitney, wilcoxon_signed_rank (see
    ``engine.stats.twogroup`` for the conventions and references). Building the result
    computes nothing; ``p_adj`` is the one global step (BH over all genes with a p-value).
    """
    if test not in TESTS:
        raise InputError(f"unknown test {test!r} (choose from {', '.join(TESTS)})")
    if (test in PAIRED_TESTS) != (pair_by is not None):
        raise InputError(f"test {test!r} " + ("needs pair_by: the annotation that matches each case "
                         "sample to its control" if test in PAIRED_TESTS else "takes no pair_by"))
    design = two_group_design(ds, group=group, case=case, control=control, pair_by=pair_by)
    x = ds[variable].data
    if not isinstance(x, da.Array):
        x = da.from_array(x, chunks=(x.shape[0], x.shape[1]))
    x = x.rechunk({1: -1})  # a no-op for stores that follow the contract (genes-only chunks)
    stacked = x.map_blocks(
        _block_kernel, kernel=TESTS[test], case=design.case, control=design.control,
        dtype=np.float64, meta=np.empty((0, 0), np.float64),  # no kernel call to infer meta
        chunks=(x.chunks[0], (len(RESULT_FIELDS),)),
        name=f"{PREFIX[test]}-{variable}",
    )
    prefix = PREFIX[test]
    out = {f: stacked[:, i] for i, f in enumerate(RESULT_FIELDS)}
    p = out["p_value"]
    out["p_adj"] = p.rechunk(-1).map_blocks(benjamini_hochberg, dtype=np.float64,
                                            meta=np.empty((0,), np.float64)).rechunk(p.chunks)
    order = ["effect", "statistic", "df", "p_value", "p_adj", "n_case", "n_control"]
    attrs = {"test": test, "group": group, "case": str(case), "control": str(control)}
    if pair_by is not None:
        attrs["pair_by"] = pair_by
    result = xr.Dataset(
        {f"{prefix}_{f}": xr.DataArray(out[f], dims=("gene",),
                                       attrs={"description": DESCRIPTIONS[f]}) for f in order},
        coords={"gene": ds["gene"].values},
        attrs=attrs,
    )
    return result
