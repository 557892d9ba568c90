"""Planners of the gene-set analyses: from a spec to a lazy result Dataset.

Score analyses return a (gene_set, sample) matrix that later analyses of the job can test like
any other variable. Enrichment analyses return one row per set, computed in one task per
analysis from lazy inputs (a ranking or gene list made by an earlier analysis of the job, or
the expression matrix), so the whole job stays one graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from engine.errors import InputError, preview
from engine.genesets import collapse_probes, load_gene_sets, map_gene_sets
from engine.jobs import setspec
from engine.stats import multitest
from engine.stats.features import (as_delayed, feature_matrix, named_task, sample_annotation,
                                   MISSING_LABELS)
from engine.stats.gsea import gsea_preranked
from engine.stats.gsva import gsva_scores
from engine.stats.ora import over_representation, select_genes
from engine.stats.phenotype import gsea_phenotype
from engine.resample.rng import analysis_key
from engine.stats.scores import single_sample_scores

STRING = np.dtypes.StringDType()


@dataclass(frozen=True)
class Context:
    """What a set analysis may read besides the cohort: the job seed and earlier results."""

    seed: int
    planned: dict[str, xr.Dataset]


# -- gene sets -------------------------------------------------------------------------------

def _membership(a: setspec.GeneSetOptions, ds: xr.Dataset):
    """The cohort (collapsed to symbols if asked) and the sets mapped onto its genes."""
    if a.collapse is not None:
        ds = collapse_probes(ds, method=a.collapse, symbol_column=a.symbol_column,
                             variable=a.variable)
    ids = np.asarray(ds["gene"].values).astype(str)
    return ds, _map(a, load_gene_sets(a.gene_sets), ids, _symbols(ds, a))


def _map(a: setspec.GeneSetOptions, sets, ids, symbols):
    """The sets mapped onto rows; ``match: auto`` takes whichever of IDs and symbols finds more."""
    if a.match == "symbol" and symbols is None:
        raise InputError(f"match: symbol needs the gene annotation {a.symbol_column!r}, which "
                         "the cohort does not have; set symbol_column or use match: id")
    return map_gene_sets(sets, ids, symbols=symbols,
                         match="id" if symbols is None and a.match == "auto" else a.match,
                         case_insensitive=a.case_insensitive, min_size=a.min_size,
                         max_size=a.max_size)


def _sizes(membership) -> dict[str, xr.DataArray]:
    """Every set of the library, scored or not, as ``<name>_sizes.tsv`` columns."""
    table = membership.sizes
    coord = {"library_set": np.asarray(table["gene_set"]).astype(object)}
    described = {
        "size_in_library": "members listed in the library (duplicates counted once)",
        "members_found": "distinct members found among the cohort's rows",
        "size_mapped": "rows of the cohort in the set (a symbol may have several probes)",
        "scored": "1 if the set passed min_size/max_size and is in the results",
        "reason": "why a set was left out",
    }
    out = {}
    for column, description in described.items():
        values = np.asarray(table[column])
        values = values.astype(np.int64) if column == "scored" else values
        values = values.astype(STRING) if values.dtype.kind in "OUS" else values
        out[column] = xr.DataArray(values, dims="library_set", coords=coord,
                                   attrs={"description": description})
    return out


def _with_sizes(result: xr.Dataset, membership) -> xr.Dataset:
    sizes = _sizes(membership)
    result = result.assign(sizes)
    result.attrs["columns"] = [*result.attrs.get("columns", []), *sizes]
    return result


def _set_attrs(a: setspec.GeneSetOptions, membership) -> dict:
    return {"gene_sets": a.gene_sets, "match": membership.match, "min_size": a.min_size,
            "max_size": a.max_size if a.max_size is not None else "none",
            "collapse": a.collapse or "none"}


# -- single-sample scores ----------------------------------------------------------------------

def plan_scores(a: setspec.ScoreAnalysis, ds: xr.Dataset, ctx: Context) -> xr.Dataset:
    ds, membership = _membership(a, ds)
    if a.test == "gsva":
        result = gsva_scores(ds, membership, variable=a.variable, kcdf=a.kcdf, tau=a.tau,
                             mx_diff=a.mx_diff, abs_ranking=a.abs_ranking,
                             samples_per_chunk=a.samples_per_chunk)
    else:
        result = single_sample_scores(ds, membership, method=a.test, variable=a.variable,
                                      alpha=a.alpha, normalize=a.normalize,
                                      signature=a.signature,
                                      samples_per_chunk=a.samples_per_chunk)
    if a.delta is not None:
        result["score"] = _delta(result["score"], ds, a.delta)
    result = _with_sizes(result, membership)
    result.attrs.update(_set_attrs(a, membership))
    return result


def _samples_with(ds: xr.Dataset, group: str, label, what: str) -> np.ndarray:
    """Mask of the samples whose annotation ``group`` is ``label``; an error if there are none."""
    values = np.array([str(v) for v in sample_annotation(ds, group, what)])
    mask = values == str(label)
    if not mask.any():
        present = sorted(set(values) - set(MISSING_LABELS))
        raise InputError(f"no sample has {group} = {label!r} (values: {preview(present, 10)})")
    return mask


def _delta(score: xr.DataArray, ds: xr.Dataset, delta: setspec.Delta) -> xr.DataArray:
    control = _samples_with(ds, delta.group, delta.control, "delta group")
    baseline = score.isel(sample=np.flatnonzero(control)).mean("sample")
    out = score - baseline
    out.attrs = {"description": f"{score.attrs['description']}, minus the mean score of the "
                                f"{int(control.sum())} samples with {delta.group} = "
                                f"{delta.control}"}
    return out


# -- enrichment --------------------------------------------------------------------------------

_ENRICHMENT_COLUMNS = {
    "size": (np.int64, "members of the set in the ranked list"),
    "es": (np.float64, "enrichment score: signed maximum deviation of the weighted KS running "
                       "sum"),
    "nes": (np.float64, "normalised ES: ES over the mean null ES of the same sign"),
    "p_value": (np.float64, "permutation p-value (same-sign null, fgsea's +1); fgsea's "
                            "multilevel estimate where it is more precise (preranked)"),
    "p_adj": (np.float64, "p_value adjusted over the sets of the analysis"),
    "fdr_q": (np.float64, "GSEA's FDR q-value from the NES of all sets' nulls"),
    "log2err": (np.float64, "standard error of log2(p_value), as fgsea estimates it (0 for an "
                            "exhaustive enumeration)"),
    "p_floor": (np.float64, "1/(n_same_sign+1), the smallest p the set's same-sign null "
                            "allows, where p_value equals it (else NaN): a bound, not an "
                            "estimate"),
    "n_permutations": (np.int64, "permutations behind p_value"),
    "leading_edge": (STRING, "members up to the running sum's peak (ES >= 0), or from its "
                             "trough to the bottom of the list, most extreme first (ES < 0); "
                             "comma-separated"),
}


def _per_set_result(values, labels, columns: dict, attrs: dict, adjust: str,
                    membership) -> xr.Dataset:
    """Lazy per-set table from one delayed dict of numpy arrays (one task per analysis), or
    from a dict of Dask arrays and plain values (each array taken whole as one input). The
    last task is ``<test>-table`` on the dashboard (``ora-table``)."""
    if isinstance(values, dict):
        values = {k: as_delayed(v) if isinstance(v, da.Array) else v for k, v in values.items()}
    kind = attrs["test"].replace("_", "-")
    finished = named_task(f"{kind}-table", _finish, values, labels, adjust)
    names = membership.names
    n = len(names)
    data = {c: xr.DataArray(da.from_delayed(finished[c], shape=(n,), dtype=dtype),
                            dims="gene_set", attrs={"description": description})
            for c, (dtype, description) in columns.items()}
    result = xr.Dataset(data, coords={"gene_set": np.asarray(names).astype(object)},
                        attrs={**attrs, "columns": list(columns)})
    return _with_sizes(result, membership)


def _finish(values: dict, labels: np.ndarray, adjust: str) -> dict:
    """p_adj over the sets, leading edges as names, and every column as a numpy array."""
    out = dict(values)
    out["p_adj"] = multitest.METHODS[adjust](np.asarray(out["p_value"], np.float64))
    if "leading_edge" in out:
        # names in order, once each (probes of one symbol share a name)
        out["leading_edge"] = np.array(
            [",".join(dict.fromkeys(labels[np.asarray(e, np.int64)]))
             for e in out["leading_edge"]], dtype=STRING)
    return {k: np.asarray(v) for k, v in out.items()}


def _ranking(a: setspec.GseaPrerankedAnalysis, ctx: Context, cohort: xr.Dataset):
    """(lazy statistic per row, row labels, symbols or None) of the ranking."""
    if isinstance(a.ranking, str):
        path = Path(a.ranking)
        if not path.exists():
            raise InputError(f"ranking file {path} does not exist")
        table = pd.read_csv(path, sep="\t", header=None, comment="#", dtype={0: str})
        if table.shape[1] < 2:
            raise InputError(f"ranking file {path} needs two tab-separated columns: gene, value")
        values = pd.to_numeric(table[1], errors="coerce").to_numpy(np.float64)
        if table[0].duplicated().any():
            raise InputError(f"ranking file {path} lists genes more than once, e.g. "
                             f"{preview(list(table[0][table[0].duplicated()]), 5)}")
        return values, table[0].to_numpy(str), None
    ref = a.ranking
    result = ctx.planned[ref.analysis]
    column = _column(result, ref.column, ref.analysis, ref.stratum, "ranking")
    if column.dims != ("gene",):
        raise InputError(f"ranking: {ref.analysis!r} ranks {column.dims[-1]}s, not genes")
    return (as_delayed(column.data), np.asarray(cohort["gene"].values).astype(str),
            _symbols(cohort, a))


def one_row_per_name(statistic, names: np.ndarray) -> np.ndarray:
    """The statistic with NaN (left out of the ranking) on every row but the one with the
    largest |statistic| among the rows sharing a name (ties: the first row); rows without a
    value, and rows without a name, are NaN. GSEA ranks genes, not the probes of one gene."""
    values = np.asarray(statistic, dtype=np.float64).copy()
    size = np.where(np.isnan(values), np.inf, -np.abs(values))  # NaN last
    order = np.lexsort((np.arange(values.size), size, names))  # name, |value| down, row
    first = np.ones(order.size, bool)
    first[1:] = names[order][1:] != names[order][:-1]
    values[order[~first]] = np.nan
    values[np.isin(names, MISSING_LABELS)] = np.nan  # no gene name: in no set, not ranked
    return values


def _symbols(cohort: xr.Dataset, a) -> np.ndarray | None:
    if a.symbol_column in cohort and cohort[a.symbol_column].dims == ("gene",):
        return np.asarray(cohort[a.symbol_column].values).astype(str)
    return None


def _column(result: xr.Dataset, column: str, analysis: str, stratum: str | None,
            what: str) -> xr.DataArray:
    """One column of an earlier analysis's main table, for one stratum/term if it has several."""
    if column not in result:
        names = [n for n in result.attrs.get("columns", result.data_vars)
                 if result[n].dims == result["p_value"].dims]
        raise InputError(f"{what}: analysis {analysis!r} has no column {column!r} (columns: "
                         f"{preview(names, 20)})")
    values = result[column]
    leading = [d for d in values.dims if d not in ("gene", "gene_set", "feature")]
    for dim in leading:
        labels = [str(v) for v in result[dim].values]
        if stratum is None and len(labels) > 1:
            raise InputError(f"{what}: analysis {analysis!r} has several {dim}s "
                             f"({preview(labels, 10)}); choose one with stratum:")
        pick = labels[0] if stratum is None else stratum
        if pick not in labels:
            raise InputError(f"{what}: {dim} {pick!r} is not one of {preview(labels, 10)}")
        values = values.isel({dim: labels.index(pick)})
    return values


def plan_gsea_preranked(a: setspec.GseaPrerankedAnalysis, ds: xr.Dataset,
                        ctx: Context) -> xr.Dataset:
    statistic, ids, symbols = _ranking(a, ctx, ds)
    sets = load_gene_sets(a.gene_sets)
    membership = _map(a, sets, ids, symbols)
    labels = symbols if membership.match == "symbol" else ids
    # the gene labels enter the graph once, as one task every unit of a sweep shares, not
    # once per task that uses them (they are a few hundred KB)
    labels = dask.delayed(np.asarray(labels, dtype=object), pure=True)  # 3x smaller pickled
    if a.duplicates == "max_abs" and membership.match == "symbol":
        statistic = named_task("gsea-preranked-one-per-gene", one_row_per_name, statistic,
                               labels)
    values = named_task(
        "gsea-preranked-enrichment", gsea_preranked,
        statistic, membership.index_lists(), permutations=a.permutations, seed=ctx.seed,
        key=analysis_key(a.name), weight=a.weight, multilevel=a.multilevel, eps=a.eps,
        sample_size=a.sample_size)
    attrs = {"test": a.test, "permutations": a.permutations, "weight": a.weight,
             "multilevel": int(a.multilevel), "seed": ctx.seed, **_set_attrs(a, membership)}
    return _per_set_result(values, labels, _ENRICHMENT_COLUMNS, attrs, a.adjust, membership)


def plan_gsea_phenotype(a: setspec.GseaPhenotypeAnalysis, ds: xr.Dataset,
                        ctx: Context) -> xr.Dataset:
    ds, membership = _membership(a, ds)
    case = _samples_with(ds, a.group, a.case, "group")
    control = _samples_with(ds, a.group, a.control, "group")
    keep = np.flatnonzero(case | control)
    x = feature_matrix(ds.isel(sample=keep), variable=a.variable).data
    result = gsea_phenotype(x, case[keep], membership.index_lists(), metric=a.metric,
                            permutations=a.permutations, seed=ctx.seed,
                            key=analysis_key(a.name), weight=a.weight, exhaustive=a.exhaustive)
    labels = _labels(ds, membership, a)
    # the per-set arrays only: the design's numbers (n_relabellings = C(n, n_case) has
    # thousands of digits above ~14,000 samples, more than tokenize may print) are not inputs
    result = {k: v for k, v in result.items() if isinstance(v, da.Array)}
    columns = dict(_ENRICHMENT_COLUMNS)
    columns["size"] = (np.int64, "members of the set among the cohort's genes without missing "
                                 "values")
    attrs = {"test": a.test, "group": a.group, "case": str(a.case), "control": str(a.control),
             "metric": a.metric, "permutations": a.permutations, "seed": ctx.seed,
             **_set_attrs(a, membership)}
    return _per_set_result(result, labels, columns, attrs, a.adjust, membership)


def _labels(ds: xr.Dataset, membership, a) -> np.ndarray:
    ids = np.asarray(ds["gene"].values).astype(str)
    symbols = _symbols(ds, a)
    return symbols if membership.match == "symbol" and symbols is not None else ids


_ORA_COLUMNS = {
    "size": (np.int64, "members of the set in the universe"),
    "overlap": (np.int64, "selected genes in the set"),
    "expected": (np.float64, "overlap expected by chance: size x selected / universe"),
    "fold_enrichment": (np.float64, "overlap / expected"),
    "odds_ratio": (np.float64, "conditional maximum-likelihood odds ratio (R fisher.test)"),
    "p_value": (np.float64, "hypergeometric P(overlap or more) = one-sided Fisher exact test"),
    "p_adj": (np.float64, "p_value adjusted over the sets of the analysis"),
    "n_selected": (np.int64, "selected genes in the universe"),
    "n_universe": (np.int64, "genes in the universe"),
    "leading_edge": (STRING, "the overlapping genes, comma-separated"),
}


def plan_ora(a: setspec.OraAnalysis, ds: xr.Dataset, ctx: Context) -> xr.Dataset:
    ds, membership = _membership(a, ds)
    labels = _labels(ds, membership, a)
    n = ds.sizes["gene"]
    if a.genes is not None:
        wanted = {g.lower() if a.case_insensitive else g for g in a.genes}
        keys = np.char.lower(labels) if a.case_insensitive else labels
        selected = np.isin(keys, list(wanted))
        if not selected.any():
            raise InputError(f"ora: none of the genes {preview(a.genes, 5)} is in the cohort "
                             f"(genes look like {preview(list(labels[:5]), 5)})")
        universe = np.ones(n, bool)
    else:
        g = a.genes_from
        result = ctx.planned[g.analysis]
        cols = {c: _column(result, c, g.analysis, g.stratum, "genes_from")
                for c in ("p_value", "p_adj", "effect") if c in result}
        if cols["p_value"].dims != ("gene",):
            raise InputError(f"genes_from: {g.analysis!r} tests {cols['p_value'].dims[-1]}s, "
                             "not genes")
        table = named_task("ora-gene-table", pd.DataFrame,
                           {c: as_delayed(v.data) for c, v in cols.items()})
        selected = named_task(
            "ora-select-genes", select_genes,
            table, p_adj_below=g.p_adj_below, p_value_below=g.p_value_below,
            effect_above=g.effect_above, abs_effect_above=g.abs_effect_above,
            direction=g.direction)
        universe = (np.ones(n, bool) if a.universe == "cohort"
                    else named_task("ora-universe", np.isfinite,
                                    as_delayed(cols["p_value"].data)))
    values = named_task("ora-hypergeometric", over_representation,
                        selected, universe, membership.index_lists(), names=membership.names)
    attrs = {"test": "ora", "universe": a.universe, **_set_attrs(a, membership)}
    return _per_set_result(values, labels, _ORA_COLUMNS, attrs, a.adjust, membership)


SET_PLANNERS = {setspec.ScoreAnalysis: plan_scores,
                setspec.GseaPrerankedAnalysis: plan_gsea_preranked,
                setspec.GseaPhenotypeAnalysis: plan_gsea_phenotype,
                setspec.OraAnalysis: plan_ora}
