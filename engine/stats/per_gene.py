"""Labelled per-gene two-group tests: sample selection, the Dask graph, BH adjustment.

The numpy kernels live in ``engine.stats.twogroup``; this module only picks the case and
control columns from the sample annotations and maps a kernel over gene chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from engine.errors import InputError, preview
from engine.stats.features import (adjust, feature_matrix, map_features, result_dataset,
                                   sample_annotation)
from engine.stats.twogroup import PAIRED_TESTS, RESULT_FIELDS, TESTS

#: Name of each test's statistic, used in task names (``welch_t-expression``).
PREFIX = {"welch": "welch_t", "student": "student_t", "paired_t": "paired_t",
          "mann_whitney": "mann_whitney_u", "wilcoxon_signed_rank": "wilcoxon_signed_rank"}

DESCRIPTIONS = {
    "effect": "mean(case) - mean(control); paired tests: mean of case - control differences",
    "statistic": "test statistic of case vs control (t; Mann-Whitney U of the case group; "
                 "signed-rank V of the positive differences)",
    "df": "degrees of freedom of the t statistic (NaN for rank tests)",
    "p_value": "two-sided p-value",
    "p_adj": "adjusted p-value over the genes with a p-value (method in the attribute adjust)",
    "n_case": "case samples (paired: complete pairs) with a value for the gene",
    "n_control": "control samples (paired: complete pairs) with a value for the gene",
}


@dataclass(frozen=True)
class TwoGroupDesign:
    """Column indices of the case and control samples; for paired designs aligned by pair."""

    case: np.ndarray
    control: np.ndarray
    pairs: np.ndarray | None = None


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
    labels = sample_annotation(ds, group, "group")
    case_idx, control_idx = _select(labels, case, group), _select(labels, control, group)
    if pair_by is None:
        return TwoGroupDesign(case_idx, control_idx)
    pair_ids = sample_annotation(ds, pair_by, "pair_by").astype(str)
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


def two_group_test(ds: xr.Dataset, *, test: str, group: str, case, control,
                   pair_by: str | None = None, variable: str = "expression",
                   features=None, adjust_method: str = "BH") -> xr.Dataset:
    """Per-gene two-group test of ``variable`` (or of numeric annotations ``features``), lazily.

    The result's variables are named as the table's columns.
    ``test`` is one of welch, student, paired_t, mann_whitney, wilcoxon_signed_rank (see
    ``engine.stats.twogroup`` for the conventions and references). Building the result
    computes nothing; ``p_adj`` is the one global step (over all genes with a p-value).
    """
    if test not in TESTS:
        raise InputError(f"unknown test {test!r} (choose from {', '.join(TESTS)})")
    if (test in PAIRED_TESTS) != (pair_by is not None):
        raise InputError(f"test {test!r} " + ("needs pair_by: the annotation that matches each case "
                         "sample to its control" if test in PAIRED_TESTS else "takes no pair_by"))
    design = two_group_design(ds, group=group, case=case, control=control, pair_by=pair_by)
    feats = feature_matrix(ds, variable=variable, features=features)
    stacked = map_features(feats.data, _two_groups, len(RESULT_FIELDS),
                           name=f"{PREFIX[test]}-{variable}", kernel=TESTS[test],
                           case=design.case, control=design.control)
    out = {f: stacked[:, i] for i, f in enumerate(RESULT_FIELDS)}
    out["p_adj"] = adjust(out["p_value"], adjust_method)
    order = ["effect", "statistic", "df", "p_value", "p_adj", "n_case", "n_control"]
    attrs = {"test": test, "group": group, "case": str(case), "control": str(control),
             "adjust": adjust_method}
    if pair_by is not None:
        attrs["pair_by"] = pair_by
    return result_dataset({f: out[f] for f in order}, feats, descriptions=DESCRIPTIONS,
                          attrs=attrs)


def _two_groups(block: np.ndarray, *, kernel, case: np.ndarray, control: np.ndarray) -> np.ndarray:
    return kernel(block[:, case], block[:, control])
