"""Gene sets on a cohort: members mapped to the cohort's rows, and probes collapsed to genes.

``map_gene_sets`` turns a library into a sparse (sets x cohort genes) membership matrix with a
table of how many members each set found. The size filters act on the number of cohort rows
found, as GSVA 1.46 does (``filterGeneSets(min.sz, max.sz)`` after
``.mapGeneSetsToFeatures``); note that ``gsva()`` first drops constant genes
(``.filterFeatures``), which a scoring method that follows it must do before mapping.
``collapse_probes`` makes a symbol-level cohort from a probe-level one, the way GSEA's
"Collapse dataset" does (``Max_probe``, or the mean).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import xarray as xr

from engine.errors import InputError, preview
from engine.genesets.library import GeneSet, check_unique
from engine.preprocess.designs import collapse

MATCHES = ("id", "symbol", "auto")
COLLAPSE_METHODS = ("max_mean", "max_variance", "mean")
#: Gene-annotation values that mean "no symbol" (as the engine's MISSING_LABELS).
MISSING_SYMBOLS = ("", "nan", "NA")
REASON_TOO_FEW = "fewer than min_size members found"
REASON_TOO_MANY = "more than max_size members found"


def as_labels(values) -> np.ndarray:
    """``values`` as an object array of stripped strings; None, NaN, "nan" and "NA" become ""."""
    series = pd.Series(np.asarray(values, dtype=object).ravel(), dtype=object)
    text = series.where(series.notna(), "").astype(str).str.strip()
    return text.where(~text.isin(MISSING_SYMBOLS), "").to_numpy(dtype=object)


@dataclass(frozen=True, eq=False)
class Membership:
    """Which cohort rows belong to which scored set.

    ``names``, ``descriptions``: the scored sets in library order (object arrays);
    ``matrix``: ``scipy.sparse.csr_matrix`` (scored sets x cohort genes), 1.0 where member;
    ``sizes``: one row per set of the library: ``gene_set``, ``size_in_library`` (distinct
    members listed), ``members_found`` (distinct members with at least one cohort row),
    ``size_mapped`` (cohort rows, the size the scores use), ``scored``, ``reason``;
    ``sets``: the scored ``GeneSet`` objects (source, version); ``match``: "id" or "symbol".
    """

    names: np.ndarray
    descriptions: np.ndarray
    matrix: sp.csr_matrix
    sizes: pd.DataFrame
    sets: tuple[GeneSet, ...]
    match: str

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def members(self, i: int | str) -> np.ndarray:
        """Row positions (ascending) of the members of scored set ``i`` (position or name)."""
        if isinstance(i, str):
            hit = np.flatnonzero(self.names == i)
            if hit.size == 0:
                raise InputError(f"gene set {i!r} is not among the scored sets "
                                 f"({preview(list(self.names))})")
            i = int(hit[0])
        start, stop = self.matrix.indptr[i], self.matrix.indptr[i + 1]
        return self.matrix.indices[start:stop].astype(np.intp)

    def index_lists(self) -> list[np.ndarray]:
        """``members(i)`` of every scored set, in order."""
        return [self.members(i) for i in range(len(self))]


def map_gene_sets(sets: Iterable[GeneSet], gene_ids: Sequence[str] | np.ndarray, *,
                  symbols: Sequence[str] | np.ndarray | None = None, match: str = "id",
                  case_insensitive: bool = False, min_size: int = 1,
                  max_size: int | None = None) -> Membership:
    """The members of each set among the cohort's genes, and which sets are scored.

    ``gene_ids``: the cohort's gene IDs (``ds.gene``); ``symbols``: its gene-symbol annotation
    (``""`` = missing), used with ``match="symbol"``. A symbol maps to *every* row that carries
    it, so on a probe-level cohort a set member counts once per probe: collapse probes first
    (``collapse_probes``) to score genes. ``match="auto"`` takes whichever of ID and symbol
    finds more members (ID on a tie). ``case_insensitive`` compares case-folded names. A
    member listed twice counts once. A set is scored when ``min_size <= size_mapped <=
    max_size`` (GSVA's ``min.sz``/``max.sz``, counted in cohort rows); no set scored is an
    error that shows what the cohort's IDs and the members look like.
    """
    sets = check_unique(sets)
    if not sets:
        raise InputError("the gene-set library has no sets")
    if match not in MATCHES:
        raise InputError(f"match {match!r} is not one of {', '.join(MATCHES)}")
    if int(min_size) != min_size or min_size < 1:
        raise InputError(f"min_size must be a whole number >= 1, got {min_size!r}")
    if max_size is not None and max_size < min_size:
        raise InputError(f"max_size {max_size} is below min_size {min_size}")
    ids = as_labels(gene_ids)
    labels = {"id": ids}
    if symbols is not None:
        labels["symbol"] = as_labels(symbols)
        if labels["symbol"].shape != ids.shape:
            raise InputError(f"{labels['symbol'].size} symbols for {ids.size} genes "
                             "(give one symbol per gene, '' where missing)")
    if match == "symbol" and symbols is None:
        raise InputError("match 'symbol' needs the cohort's symbols (a gene annotation such as "
                         "'symbol'); use match 'id' to match gene IDs")
    candidates = [m for m in (("id", "symbol") if match == "auto" else (match,)) if m in labels]
    hits = {m: _hits(sets, labels[m], case_insensitive) for m in candidates}
    chosen = max(candidates, key=lambda m: (len(hits[m]), m == "id"))
    pairs = hits[chosen]

    n_sets = len(sets)
    size_mapped = np.bincount(pairs["set"].to_numpy(), minlength=n_sets)
    found = np.bincount(pairs.drop_duplicates(["set", "key"])["set"].to_numpy(),
                        minlength=n_sets)
    too_few = size_mapped < min_size
    too_many = np.zeros(n_sets, bool) if max_size is None else size_mapped > max_size
    scored = ~too_few & ~too_many
    sizes = pd.DataFrame({
        "gene_set": pd.array([s.name for s in sets], dtype=object),
        "size_in_library": np.array([len(s.genes) for s in sets], dtype=np.int64),
        "members_found": found.astype(np.int64),
        "size_mapped": size_mapped.astype(np.int64),
        "scored": scored,
        "reason": pd.array(np.where(too_few, REASON_TOO_FEW,
                                    np.where(too_many, REASON_TOO_MANY, "")), dtype=object),
    })
    if not scored.any():
        raise InputError(_nothing_scored(sets, size_mapped, labels[chosen], chosen,
                                         case_insensitive, min_size, max_size))

    keep = np.flatnonzero(scored)
    new_index = np.full(n_sets, -1)
    new_index[keep] = np.arange(keep.size)
    pairs = pairs.drop_duplicates(["set", "row"])
    pairs = pairs[scored[pairs["set"].to_numpy()]]
    rows = new_index[pairs["set"].to_numpy()]
    matrix = sp.csr_matrix((np.ones(len(pairs)), (rows, pairs["row"].to_numpy())),
                           shape=(keep.size, ids.size), dtype=np.float64)
    matrix.sort_indices()
    scored_sets = tuple(sets[i] for i in keep)
    return Membership(
        names=np.array([s.name for s in scored_sets], dtype=object),
        descriptions=np.array([s.description for s in scored_sets], dtype=object),
        matrix=matrix, sizes=sizes, sets=scored_sets, match=chosen)


def _hits(sets: list[GeneSet], labels: np.ndarray, case_insensitive: bool) -> pd.DataFrame:
    """(set, key, row) for every member found among ``labels`` (one row per cohort row)."""
    fold = (lambda a: pd.Series(a, dtype=object).str.casefold().to_numpy(dtype=object)) \
        if case_insensitive else (lambda a: a)
    lengths = np.array([len(s.genes) for s in sets])
    members = pd.DataFrame({
        "set": np.repeat(np.arange(len(sets)), lengths),
        "key": fold(np.array([g for s in sets for g in s.genes], dtype=object))})
    members = members.drop_duplicates()
    present = np.flatnonzero(labels != "")
    table = pd.DataFrame({"key": fold(labels[present]), "row": present})
    return members.merge(table, on="key", how="inner", sort=False)


def _nothing_scored(sets, size_mapped, labels, match, case_insensitive, min_size,
                    max_size) -> str:
    best = int(np.argmax(size_mapped))
    bounds = f"at least {min_size}" + ("" if max_size is None else f" and at most {max_size}")
    what = "IDs" if match == "id" else "symbols"
    cohort = [v for v in labels[:5] if v]
    members = list(itertools.islice((g for s in sets for g in s.genes), 5))
    return (f"no gene set has {bounds} members among the cohort's genes (min_size {min_size}, "
            f"max_size {max_size}); the most found is {size_mapped[best]} "
            f"({sets[best].name!r}, {len(sets[best].genes)} listed). Check `match:` (members "
            f"were matched to the cohort's gene {what}"
            f"{', ignoring case' if case_insensitive else ''}): cohort {what} look like "
            f"{preview(cohort, 5)}; set members look like {preview(members, 5)}")


# ---------------------------------------------------------------------------------------------
# Probe collapsing

def collapse_probes(ds: xr.Dataset, *, method: str = "max_mean", symbol_column: str = "symbol",
                    variable: str = "expression") -> xr.Dataset:
    """A cohort with one row per gene symbol, from a probe-level cohort, for gene-set scoring.

    ``method``: ``max_mean`` keeps, per symbol, the probe with the largest mean (GSEA's
    ``Max_probe``), ``max_variance`` the probe with the largest variance (ddof = 1), ``mean``
    averages the symbol's probes sample by sample. This is
    ``engine.preprocess.designs.collapse`` (its docstring gives the rules for ties, missing
    values and annotations) of ``variable`` alone: other (gene, sample) variables are
    dropped. ``attrs["collapsed"]`` records what was done.
    """
    if method not in COLLAPSE_METHODS:
        raise InputError(f"collapse method {method!r} is not one of {', '.join(COLLAPSE_METHODS)}")
    if variable not in ds or ds[variable].dims != ("gene", "sample"):
        names = sorted(n for n, v in ds.data_vars.items() if v.dims == ("gene", "sample"))
        raise InputError(f"variable {variable!r} is not a (gene, sample) variable of the cohort "
                         f"(available: {preview(names)})")
    if symbol_column not in ds or ds[symbol_column].dims != ("gene",):
        names = sorted(n for n, v in ds.data_vars.items() if v.dims == ("gene",))
        raise InputError(f"symbol_column {symbol_column!r} is not a gene annotation of the "
                         f"cohort (gene annotations: {preview(names) or 'none'})")
    others = [n for n, v in ds.data_vars.items() if v.dims == ("gene", "sample") and n != variable]
    out = collapse(ds.drop_vars(others), symbol_column, method, variable=variable)
    record = out.attrs.pop("collapse")
    out.attrs["collapsed"] = {"method": method, "variable": variable,
                              "symbol_column": symbol_column, "probes": record["probes"],
                              "probes_without_symbol": record["probes_without_annotation"],
                              "genes": record["genes"]}
    return out
