"""Plan a consensus clustering analysis: the genes, the lazy clustering, the class labels."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from engine.errors import InputError, preview
from engine.genesets import GeneSet, collapse_probes, load_gene_sets
from engine.jobs import set_planners
from engine.jobs.set_planners import STRING
from engine.jobs.clusterspec import ConsensusAnalysis
from engine.resample.consensus import consensus_cluster, label_consensus
from engine.resample.rng import analysis_key
from engine.stats.features import as_delayed, named_task

#: Class names by decreasing mean signature score when there are three classes (ICR classes).
THREE_CLASSES = ("High", "Medium", "Low")

DESCRIPTIONS = {
    "consensus_class": "consensus class at k (1..k, numbered as R cutree does)",
    "label": "class label by the class's mean signature score (High / Medium / Low for "
             "three classes; else 1 (highest) .. k (lowest))",
    "signature_score": "mean z-score across the samples of the clustered genes",
    "item_consensus": "mean consensus of the sample with the other members of its class",
}


def _genes(a: ConsensusAnalysis, ds: xr.Dataset):
    """The cohort (collapsed if asked), the rows to cluster on, and the name of their set."""
    if a.collapse is not None:
        ds = collapse_probes(ds, method=a.collapse, symbol_column=a.symbol_column,
                             variable=a.variable)
    if a.genes is not None:
        sets, wanted = [GeneSet(a.name, tuple(a.genes))], a.name
    else:
        sets = load_gene_sets(a.gene_sets)
        names = [s.name for s in sets]
        wanted = a.gene_set or names[0]
        if wanted not in names:
            raise InputError(f"gene_set {wanted!r} is not in {a.gene_sets} (sets: "
                             f"{preview(names)})")
        sets = [s for s in sets if s.name == wanted]
    ids = np.asarray(ds["gene"].values).astype(str)
    membership = set_planners._map(a, sets, ids, set_planners._symbols(ds, a))
    if wanted not in set(membership.names):
        raise InputError(f"fewer than min_size ({a.min_size}) genes of {wanted!r} are in the "
                         "cohort; check match/symbol_column or the gene names")
    rows = np.sort(membership.members(wanted))
    if rows.size < 2:
        raise InputError(f"consensus clustering needs at least 2 genes; {rows.size} of "
                         f"{wanted!r} are in the cohort")
    return ds, rows, wanted, membership


def _as_text(labels: xr.DataArray) -> xr.DataArray:
    """Text labels as a fixed string dtype, so writing them needs no early compute."""
    data = labels.data.map_blocks(lambda b: np.asarray(b).astype(STRING), dtype=STRING,
                                  token="consensus-label-text")
    return labels.copy(data=data)


def _own_class(item: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return item[np.arange(classes.size), classes - 1]


def plan_consensus(a: ConsensusAnalysis, ds: xr.Dataset, ctx) -> xr.Dataset:
    """The consensus result (README: Resampling): per-sample classes and labels at ``k`` in
    the main table; every k's classes, item and cluster consensus, the CDF and its areas as
    extra tables; the consensus matrices in results.zarr only."""
    ds, rows, set_name, membership = _genes(a, ds)
    x = ds[a.variable].isel(gene=rows)
    result = consensus_cluster(
        x, seed=ctx.seed, key=analysis_key(a.name, "consensus"), resamples=a.resamples,
        k_max=a.k_max, p_item=a.p_item, p_feature=a.p_feature, distance=a.distance,
        linkage=a.linkage, final_linkage=a.final_linkage, algorithm=a.algorithm,
        center=a.center)
    prefix = (a.label_prefix if a.label_prefix is not None else set_name) + " "
    labels = label_consensus(result, x, names=THREE_CLASSES, prefix=prefix)
    labels["consensus_label"] = _as_text(labels["consensus_label"])
    k = a.k or min(3, a.k_max)
    at = {"k": k}
    classes = result["consensus_class"].sel(at).data
    item = result["item_consensus"].sel(at).data
    own = da.from_delayed(named_task("consensus-item-consensus", _own_class,
                                     as_delayed(item), as_delayed(classes)),
                          shape=classes.shape, dtype=np.float64)
    main = {"consensus_class": classes, "label": labels["consensus_label"].sel(at).data,
            "signature_score": labels["signature_score"].data, "item_consensus": own}
    out = xr.Dataset({f"{c}": xr.Variable(("sample",), v, {"description": DESCRIPTIONS[c]})
                      for c, v in main.items()}, coords={"sample": result["sample"]})
    per_k = result.rename({"consensus_class": "class_at_k", "item_consensus": "item_consensus_k"})
    per_k = per_k.assign(label_at_k=labels["consensus_label"], class_score=labels["class_score"])
    out = xr.merge([out, per_k], combine_attrs="override")
    out.attrs = {**result.attrs, "k": k, "gene_set": set_name, "genes": len(rows),
                 "match": membership.match, "collapse": a.collapse or "none",
                 "columns": [*main, "class_at_k", "label_at_k", "item_consensus_k",
                             "class_score", "cluster_consensus", "consensus_cdf",
                             "consensus_area", "consensus_delta"],
                 "zarr_only": ["consensus", "pairs_clustered", "pairs_sampled"]}
    return out
