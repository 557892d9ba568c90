"""Design matrices from formulas over sample annotations, and contrasts of their coefficients.

``design_matrix(ds, "~ mol.biol + age")`` evaluates the formula with formulaic on the sample
annotations: text annotations are categorical (treatment coding, first level alphabetical unless
``reference`` names it), numeric ones continuous; samples with a missing value in any variable of
the formula are left out. Column names are formulaic's (``mol.biol[T.BCR/ABL]``, ``age``,
``mol.biol[T.BCR/ABL]:age``), and they are what ``coef`` / ``contrast`` refer to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import formulaic
import numpy as np
import pandas as pd
import xarray as xr

from engine.errors import InputError, preview
from engine.stats.features import MISSING_LABELS, sample_frame
from engine.stats.linear import independent_columns


@dataclass(frozen=True)
class Design:
    """A full-rank design: ``matrix`` (samples used x columns), and where it came from."""

    formula: str
    matrix: np.ndarray
    columns: list[str]
    terms: dict[str, list[int]]  # term name -> column positions
    samples: np.ndarray  # positions along the cohort's ``sample`` dimension
    spec: formulaic.ModelSpec | None = field(default=None, compare=False, repr=False)
    data: pd.DataFrame | None = field(default=None, compare=False, repr=False)  # of ``samples``

    @property
    def df_residual(self) -> int:
        return self.matrix.shape[0] - self.matrix.shape[1]


def _annotations(ds: xr.Dataset, reference: Mapping[str, str]) -> pd.DataFrame:
    names = [n for n, v in ds.data_vars.items() if v.dims == ("sample",)]
    frame = sample_frame(ds, names)
    for column, level in reference.items():
        if column not in frame:
            raise InputError(f"reference names {column!r}, which is not a sample annotation "
                             f"(available: {preview(sorted(frame.columns), 30)})")
        values = frame[column].map(lambda v: None if pd.isna(v) or str(v) in MISSING_LABELS
                                   else str(v))
        levels = sorted(set(values.dropna()))
        if str(level) not in levels:
            raise InputError(f"reference level {level!r} does not occur in {column!r} "
                             f"(levels: {preview(levels, 20)})")
        ordered = [str(level)] + [v for v in levels if v != str(level)]
        frame[column] = pd.Categorical(values, categories=ordered)
    return frame


def design_matrix(ds: xr.Dataset, formula: str, *,
                  reference: Mapping[str, str] | None = None) -> Design:
    """Evaluate ``formula`` (e.g. ``"~ mol.biol + age"``) on the cohort's sample annotations.

    Raises ``InputError`` for unknown annotations, syntax errors, collinear columns (named), and
    designs with no residual degrees of freedom.
    """
    if not formula.strip().startswith("~"):
        raise InputError(f"design {formula!r} must be a one-sided formula such as '~ group + age'")
    frame = _annotations(ds, reference or {})
    try:
        mm = formulaic.model_matrix(formula, frame, na_action="drop")
    except formulaic.errors.FormulaicError as e:
        message = str(e).split("\n")[0]
        raise InputError(f"design {formula!r} cannot be evaluated: {message} (sample "
                         f"annotations: {preview(sorted(frame.columns), 30)})") from None
    matrix = np.asarray(mm.to_numpy(), dtype=np.float64)
    columns = [str(c) for c in mm.columns]
    samples = np.asarray(mm.index, dtype=np.int64)
    if matrix.shape[0] == 0:
        raise InputError(f"design {formula!r}: every sample has a missing value in a variable "
                         "of the formula")
    dependent = sorted(set(range(matrix.shape[1])) - set(independent_columns(matrix)))
    if dependent:
        names = [columns[j] for j in dependent]
        empty = [columns[j] for j in dependent if not matrix[:, j].any()]
        hint = (f"; {', '.join(empty)} {'is' if len(empty) == 1 else 'are'} all zero (no sample "
                "left with that level)" if empty else "")
        raise InputError(f"design {formula!r} is collinear: column(s) {', '.join(names)} are "
                         f"linear combinations of the columns before them{hint}; remove or "
                         "merge those terms")
    if matrix.shape[0] <= matrix.shape[1]:
        raise InputError(f"design {formula!r} has {matrix.shape[1]} columns but only "
                         f"{matrix.shape[0]} samples with complete values: no residual degrees "
                         "of freedom")
    terms = {str(t): list(ix) for t, ix in mm.model_spec.term_indices.items()}
    return Design(formula, matrix, columns, terms, samples, mm.model_spec,
                  frame.loc[samples].reset_index(drop=True))


def contrast_vector(design: Design, contrast: str | Mapping[str, float]) -> np.ndarray:
    """Weights over the design's columns: a column name, or a mapping {column: weight}."""
    weights = {contrast: 1.0} if isinstance(contrast, str) else dict(contrast)
    unknown = [c for c in weights if c not in design.columns]
    if unknown:
        raise InputError(f"contrast names {', '.join(map(repr, unknown))}, not a column of the "
                         f"design {design.formula!r} (columns: {', '.join(design.columns)})")
    vector = np.zeros(len(design.columns))
    for name, w in weights.items():
        vector[design.columns.index(name)] = float(w)
    if not vector.any():
        raise InputError("contrast has all weights zero")
    return vector
