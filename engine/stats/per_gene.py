"""Labelled per-gene two-group tests: sample selection, the Dask graph, BH adjustment.

The numpy kernels live in ``engine.stats.twogroup``; this module only picks the case and
control columns from the sample annotations and maps a kernel over gene chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from engine.errors import InputError, preview
from engine.resample.bootstrap import (FOLD_CHANGE, REPLICATE_BLOCK, bootstrap_mean_difference,
                                       resample_units, result_fields)
from engine.resample.permutation import COLUMN_DESCRIPTIONS as PERMUTATION_DESCRIPTIONS
from engine.resample.permutation import permutation_columns, permutation_info
from engine.resample.rng import analysis_key
from engine.stats.features import (adjust, feature_matrix, map_features, result_dataset,
                                   sample_annotation)
from engine.stats.twogroup import PAIRED_TESTS, RESULT_FIELDS, TESTS

#: Dashboard name of each test's task per feature chunk (``welch-t-chunk``).
TASK_NAMES = {"welch": "welch-t-chunk", "student": "student-t-chunk",
              "paired_t": "paired-t-chunk", "mann_whitney": "mann-whitney-chunk",
              "wilcoxon_signed_rank": "wilcoxon-signed-rank-chunk"}

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
                   features=None, adjust_method: str = "BH", fold_change_base=None,
                   bootstrap=None, permutations: int | None = None, seed: int = 0,
                   name: str = "two_group") -> xr.Dataset:
    """Per-gene two-group test of ``variable`` (or of numeric annotations ``features``), lazily.

    The result's variables are named as the table's columns.
    ``test`` is one of welch, student, paired_t, mann_whitney, wilcoxon_signed_rank (see
    ``engine.stats.twogroup`` for the conventions and references). Building the result
    computes nothing; ``p_adj`` is the one global step (over all genes with a p-value).

    Options (README: Resampling): ``fold_change_base`` adds ``fold_change`` = base ** effect;
    ``bootstrap`` (an object with ``replicates, method, level, by, strata, weights``, e.g. the
    job's ``Bootstrap``) adds the interval ``ci_low``, ``ci_high`` of ``effect`` (and
    ``fc_ci_low``, ``fc_ci_high`` of the fold change), :mod:`engine.resample.bootstrap`;
    ``permutations`` adds ``p_perm``, ``p_perm_floor``, ``p_maxT``, ``n_permutations``,
    :mod:`engine.resample.permutation`. Random draws come from ``seed`` and the analysis
    ``name``.
    """
    if test not in TESTS:
        raise InputError(f"unknown test {test!r} (choose from {', '.join(TESTS)})")
    if (test in PAIRED_TESTS) != (pair_by is not None):
        raise InputError(f"test {test!r} " + ("needs pair_by: the annotation that matches each case "
                         "sample to its control" if test in PAIRED_TESTS else "takes no pair_by"))
    design = two_group_design(ds, group=group, case=case, control=control, pair_by=pair_by)
    feats = feature_matrix(ds, variable=variable, features=features)
    stacked = map_features(feats.data, _two_groups, len(RESULT_FIELDS),
                           name=TASK_NAMES[test], kernel=TESTS[test],
                           case=design.case, control=design.control)
    out = {f: stacked[:, i] for i, f in enumerate(RESULT_FIELDS)}
    out["p_adj"] = adjust(out["p_value"], adjust_method)
    attrs = {"test": test, "group": group, "case": str(case), "control": str(control),
             "adjust": adjust_method}
    if pair_by is not None:
        attrs["pair_by"] = pair_by
    descriptions = dict(DESCRIPTIONS)
    if fold_change_base is not None:
        out["fold_change"] = FOLD_CHANGE[fold_change_base](out["effect"])
        descriptions["fold_change"] = f"{fold_change_base} ** effect (ratio of back-transformed " \
                                      "means when the data are on that log scale)"
        attrs["fold_change_base"] = str(fold_change_base)
    if bootstrap is not None:
        ci, info = _bootstrap(ds, feats, design, test=test, group=group, pair_by=pair_by,
                              bootstrap=bootstrap, fold_change_base=fold_change_base,
                              seed=seed, name=name)
        out.update(ci)
        descriptions.update(bootstrap_descriptions(info))
        attrs["bootstrap"] = info
    if permutations is not None:
        n_case, n_control = len(design.case), len(design.control)
        out.update(permutation_columns(feats.data, test=test, case=design.case,
                                       control=design.control, permutations=permutations,
                                       seed=seed, name=name))
        info = permutation_info(test, n_case, n_control, permutations)
        descriptions.update(PERMUTATION_DESCRIPTIONS)
        attrs["permutation"] = info
    order = [c for c in COLUMN_ORDER if c in out]
    return result_dataset({f: out[f] for f in order}, feats, descriptions=descriptions,
                          attrs=attrs)


COLUMN_ORDER = ("effect", "fold_change", "ci_low", "ci_high", "fc_ci_low", "fc_ci_high", "n_boot",
                "statistic", "df", "p_value", "p_adj", "p_perm", "p_perm_floor", "p_maxT",
                "n_permutations", "n_case", "n_control")

def bootstrap_descriptions(info: dict) -> dict:
    how = f"{info['level']:.0%} {info['method']} bootstrap interval ({info['replicates']} " \
          f"replicates{', resampling ' + info['by'] if info.get('by') else ''})"
    return {"ci_low": f"lower end of the {how} of effect",
            "ci_high": f"upper end of the {how} of effect",
            "fc_ci_low": f"lower end of the {how} of fold_change",
            "fc_ci_high": f"upper end of the {how} of fold_change",
            "n_boot": "replicates the interval is over: those with a value in both groups "
                      "(a replicate that leaves a group without values is left out)"}


def _bootstrap(ds, feats, design: TwoGroupDesign, *, test, group, pair_by, bootstrap,
               fold_change_base, seed, name):
    """The bootstrap interval columns of a two-group test and the record of how they were made.

    Unpaired: the observations are the case then the control samples; units are samples, or
    clusters of samples (``bootstrap.by``), resampled within the two groups (``strata: true``),
    within the values of an annotation, or unstratified. Paired: the units are the pairs.
    """
    paired = pair_by is not None
    rows = design.case if paired else np.concatenate([design.case, design.control])
    strata = bootstrap.strata
    if strata is True:
        strata = None if paired else np.repeat(["case", "control"],
                                               [len(design.case), len(design.control)])
    elif strata is False:
        strata = None
    else:
        strata = sample_annotation(ds, strata, "bootstrap.strata")[rows]
    clusters = None
    if bootstrap.by is not None:
        clusters = sample_annotation(ds, bootstrap.by, "bootstrap.by")[rows]
    units = resample_units(len(rows), clusters=clusters, strata=strata)
    fields = result_fields(fold_change_base)
    stacked = bootstrap_mean_difference(
        feats.data, design.case, design.control, units, replicates=bootstrap.replicates,
        method=bootstrap.method, level=bootstrap.level, seed=seed,
        key=analysis_key(name, "bootstrap"), kind=bootstrap.weights,
        fold_change_base=fold_change_base, paired=paired,
        name=f"bootstrap-{bootstrap.method}-chunk")
    columns = {f: stacked[:, i] for i, f in enumerate(fields)
               if f not in ("effect", "fold_change")}  # the test's own columns are kept
    columns["n_boot"] = columns["n_boot"].astype(np.int64)
    info = {"method": bootstrap.method, "replicates": bootstrap.replicates,
            "level": bootstrap.level, "by": bootstrap.by,
            "strata": bootstrap.strata, "weights": bootstrap.weights,
            "units": int(units.stratum.size), "replicate_block": REPLICATE_BLOCK}
    return columns, info


def _two_groups(block: np.ndarray, *, kernel, case: np.ndarray, control: np.ndarray) -> np.ndarray:
    return kernel(block[:, case], block[:, control])
