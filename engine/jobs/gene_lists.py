"""Set algebra of result lists: "up in A and down in B, not changed in C" (README: Gene lists).

A condition selects the features of one analysis' main table whose row satisfies ``where``
(pandas query syntax over the table's columns; a feature is selected if any of its rows is,
so stratified tables should name the stratum in ``where``). A list is the intersection of its
``all`` conditions, intersected with the union of its ``any`` conditions, minus the union of
its ``none`` conditions. Computed from the written tables after the analyses have run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from engine.errors import InputError, preview
from engine.jobs.base import NAME_PATTERN, Strict

FEATURE_COLUMNS = ("gene", "gene_set", "feature")
SHOWN = ("effect", "statistic", "p_value", "p_adj")


class Condition(Strict):
    analysis: str = Field(description="an analysis of the job")
    where: str = Field(description="condition over its table's columns, e.g. "
                                   "'p_adj < 0.05 and effect > 0'")


class GeneList(Strict):
    """A named list of features built from analyses' results."""

    name: str = Field(pattern=NAME_PATTERN, description="list name; table gene_lists/<name>")
    all: list[Condition] = Field(default_factory=list, description="selected by every one")
    any: list[Condition] = Field(default_factory=list, description="selected by at least one")
    none: list[Condition] = Field(default_factory=list, description="selected by none of these")

    @model_validator(mode="after")
    def _something(self):
        if not self.all and not self.any:
            raise ValueError(f"gene list {self.name!r} needs conditions under all or any")
        return self

    def conditions(self) -> list[Condition]:
        return [*self.all, *self.any, *self.none]


def check_gene_lists(lists: list[GeneList], analyses: list[str]) -> None:
    names = [g.name for g in lists]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"gene list names must be unique; repeated: {', '.join(dup)}")
    for g in lists:
        for c in g.conditions():
            if c.analysis not in analyses:
                raise ValueError(f"gene list {g.name!r} reads {c.analysis!r}, which is not an "
                                 f"analysis (analyses: {', '.join(analyses)})")


def _feature_column(table: pd.DataFrame, analysis: str) -> str:
    for column in FEATURE_COLUMNS:
        if column in table.columns:
            return column
    raise InputError(f"analysis {analysis!r} has no per-feature table to select from")


def selected(table: pd.DataFrame, condition: Condition) -> pd.Index:
    """The features of ``table`` with at least one row satisfying the condition."""
    feature = _feature_column(table, condition.analysis)
    try:
        rows = table.query(condition.where, engine="python")
    except Exception as e:  # pandas raises many kinds for a bad expression
        raise InputError(f"gene list condition on {condition.analysis!r}: cannot evaluate "
                         f"{condition.where!r} ({type(e).__name__}: {e}); columns are "
                         f"{preview(list(table.columns), 30)}") from None
    return pd.Index(pd.unique(rows[feature].astype(str)))


def gene_list_table(g: GeneList, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per feature of the list, with each named analysis' effect and p-values."""
    def union(conditions):
        out = pd.Index([])
        for c in conditions:
            out = out.union(selected(tables[c.analysis], c), sort=False)
        return out

    chosen = None
    for c in g.all:
        found = selected(tables[c.analysis], c)
        chosen = found if chosen is None else chosen.intersection(found, sort=False)
    if g.any:
        found = union(g.any)
        chosen = found if chosen is None else chosen.intersection(found, sort=False)
    chosen = chosen.difference(union(g.none), sort=False)
    first = g.conditions()[0].analysis
    key = _feature_column(tables[first], first)
    out = pd.DataFrame({key: np.asarray(chosen, dtype=object)})
    for name in dict.fromkeys(c.analysis for c in g.conditions()):
        table = tables[name]
        feature = _feature_column(table, name)
        keyed = table.assign(**{feature: table[feature].astype(str)})
        keyed = keyed.drop_duplicates(feature).set_index(feature)
        for column in (c for c in SHOWN if c in keyed.columns):
            out[f"{name}.{column}"] = keyed[column].reindex(out[key]).to_numpy()
    return out
