"""Run a job's ``preprocess:`` steps and write the result once as a derived cohort store.

The steps are applied in order to the lazy cohort (``expression`` is the working matrix;
count steps read ``counts``, or ``expression`` when its scale is counts). Steps whose output
shape depends on the data (filter_by_expr, drop_zero_genes, pca_outliers, collapse, a
NanoString ``drop_flagged``) compute their small 1-D decision when the step is applied: one
pass over the steps before them. Everything else stays lazy, and the end result is computed
once and written to ``<derived>/<digest>.zarr``: a cohort store like any other (it passes
the cohort-store contract), never touching the raw store's own variables. The digest covers
the raw store's metadata, the steps, the seed and the engine version, so a re-run with the
same steps reuses the store instead of recomputing it.

A ``pca_outliers`` step with ``sensitivity`` (the default) makes a second variant, the same
steps with the outliers kept, so every analysis can be re-run on it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import xarray as xr
import zarr

from engine.errors import InputError, preview
from engine.fsutil import atomic_directory, sha256_file
from engine.store.fingerprint import content_digest
from engine.jobs import prepspec as ps
from engine.preprocess import counts as cnt
from engine.preprocess import designs, nanostring, transforms
from engine.preprocess.pca import pca, pca_outliers
from engine.preprocess.size_factors import size_factors
from engine.preprocess.vst import vst
from engine.stats.features import sample_annotation
from engine.store import open_cohort
from engine.store.ingest import COMPRESSOR, default_chunk_genes

KEPT = "outliers_kept"  # the sensitivity variant


@dataclass
class State:
    """What a step sees: the cohort so far, the job seed, and whether outliers are kept."""

    ds: xr.Dataset
    seed: int
    keep_outliers: bool = False


def _counts(ds: xr.Dataset, step: str) -> xr.DataArray:
    return cnt.count_variable(ds, "counts", f"step {step!r}")


def _expression(ds: xr.Dataset, values: xr.DataArray, scale: str, **sample_vars) -> xr.Dataset:
    values = values.astype(np.float32)
    values.attrs = {"scale": scale}
    return ds.assign(expression=values, **sample_vars)


def _keep_genes(ds: xr.Dataset, keep: np.ndarray, step: str) -> tuple[xr.Dataset, dict]:
    keep = np.asarray(keep, dtype=bool)
    if not keep.any():
        raise InputError(f"step {step!r} keeps no gene (of {keep.size}); relax its options")
    dropped = ds["gene"].values[~keep]
    return ds.isel(gene=np.flatnonzero(keep)), {
        "genes_before": int(keep.size), "genes_after": int(keep.sum()),
        "genes_dropped_preview": preview(list(dropped), 10)}


def _keep_samples(ds: xr.Dataset, keep: np.ndarray, step: str) -> tuple[xr.Dataset, list]:
    keep = np.asarray(keep, dtype=bool)
    if not keep.any():
        raise InputError(f"step {step!r} keeps no sample; relax its options")
    return ds.isel(sample=np.flatnonzero(keep)), [str(s) for s in ds["sample"].values[~keep]]


# -- the steps: (state, options) -> (dataset, record) ----------------------------------------

def _log2(s: State, o: ps.Log2):
    return _expression(s.ds, transforms.log2(s.ds["expression"], o.offset), "log2"), {}


def _quantile(s: State, o: ps.Quantile):
    scale = s.ds["expression"].attrs.get("scale", "linear")
    return _expression(s.ds, transforms.quantile_normalize(s.ds["expression"]), scale), {}


def _upper_quartile(s: State, o: ps.UpperQuartile):
    return _expression(s.ds, transforms.upper_quartile(s.ds["expression"], p=o.p), "linear"), {}


def _zscore(s: State, o: ps.ZScore):
    return _expression(s.ds, transforms.zscore(s.ds["expression"], ddof=o.ddof), "zscore"), {}


def _cpm(s: State, o: ps.Cpm | ps.TmmLogCpm, log: bool, step: str):
    counts = _counts(s.ds, step)
    lib = cnt.library_sizes(counts)
    factors = cnt.norm_factors(counts, o.method, lib_size=lib)
    values = cnt.cpm(counts, lib_size=lib, norm_factors=factors, log=log,
                     prior_count=o.prior_count)
    return _expression(s.ds, values, "log2" if log else "linear", lib_size=lib,
                       norm_factor=factors), {}


def _vst(s: State, o: ps.Vst):
    counts = _counts(s.ds, "vst")
    factors = size_factors(counts, method=o.size_factors)
    values = vst(counts, size_factors=factors, fit_type=o.fit_type)
    return _expression(s.ds, values, "log2", size_factor=factors), {}


def _filter_by_expr(s: State, o: ps.FilterByExpr):
    group = None
    if o.group is not None:
        group = sample_annotation(s.ds, o.group, "filter_by_expr group")
    keep = cnt.filter_by_expr(_counts(s.ds, "filter_by_expr"), group=group,
                              min_count=o.min_count, min_total_count=o.min_total_count,
                              large_n=o.large_n, min_prop=o.min_prop).values
    return _keep_genes(s.ds, keep, "filter_by_expr")


def _drop_zero_genes(s: State, o: ps.DropZeroGenes):
    x = s.ds["counts"] if "counts" in s.ds else s.ds["expression"]
    keep = ((x != 0) & x.notnull()).any("sample").values
    return _keep_genes(s.ds, keep, "drop_zero_genes")


def _select_samples(s: State, o: ps.SelectSamples):
    out = designs.select_samples(s.ds, where=o.where, ids=o.ids)
    dropped = sorted(set(map(str, s.ds["sample"].values)) - set(map(str, out["sample"].values)))
    return out, {"samples_dropped": dropped}


def _aggregate(s: State, o: ps.Aggregate):
    out = designs.aggregate(s.ds, o.by, within=o.within, how=o.how)
    return out, {"samples_before": int(s.ds.sizes["sample"]),
                 "samples_after": int(out.sizes["sample"])}


def _delta(s: State, o: ps.Delta):
    out = designs.delta(s.ds, o.by, o.time, o.before, o.after)
    return out, {"patients": int(out.sizes["sample"])}


def _collapse(s: State, o: ps.Collapse):
    out = designs.collapse(s.ds, o.by, o.method)
    return out, {"probes": int(s.ds.sizes["gene"]), "genes": int(out.sizes["gene"])}


def _pca_outliers(s: State, o: ps.PcaOutliers):
    result = pca(s.ds["expression"], n_components=o.n_components, scale=o.scale,
                 method=o.method, seed=s.seed, oversampling=o.oversampling,
                 power_iterations=o.power_iterations, name="pca_outliers")
    scores, ratio = dask.compute(result["scores"], result["variance_ratio"])
    outlier = pca_outliers(scores, component=o.component, sd=o.sd).values
    chosen = o.component if isinstance(o.component, list) else [o.component]
    table = {"sample": [str(v) for v in scores["sample"].values]}
    for k in chosen:
        table[f"PC{k}"] = scores.isel(component=k - 1).values.tolist()
    table["outlier"] = outlier.tolist()
    record = {"outliers": [str(v) for v in scores["sample"].values[outlier]],
              "dropped": not s.keep_outliers,
              "variance_ratio": np.asarray(ratio.values).tolist(),
              "table": table}
    if s.keep_outliers:
        return s.ds, record
    ds, _ = _keep_samples(s.ds, ~outlier, "pca_outliers")
    return ds, record


def _nanostring(s: State, o: ps.Nanostring):
    if "code_class" not in s.ds or s.ds["code_class"].dims != ("gene",):
        raise InputError("the nanostring step needs the gene annotation `code_class` "
                         "(Endogenous, Housekeeping, Positive, Negative): ingest the RCC files "
                         "with `cohort ingest FOLDER_OF_RCC ...`")
    counts = _counts(s.ds, "nanostring")
    code_class = np.asarray(s.ds["code_class"].values).astype(str)
    qc_options = ("fov_ratio_min", "binding_density_range", "linearity_r2_min", "lod_sd")
    options = o.model_dump(exclude={*qc_options, "keep_controls", "drop_flagged"})
    # the per-sample factors read only the control rows; computing them first keeps memory
    # flat however the controls are spread over the chunks (nanostring.apply_nanostring)
    factors = nanostring.nanostring_factors(counts, code_class, **options).compute()
    normalized = nanostring.apply_nanostring(counts, factors)
    qc = nanostring.nanostring_qc(counts, code_class, s.ds,
                                  **o.model_dump(include=set(qc_options))).compute()
    ds = _expression(s.ds, normalized, "linear",
                     **{n: factors[n].astype(np.float64) for n in factors.data_vars},
                     **{f"qc_{n}": qc[n].astype(np.float64) for n in qc.data_vars})
    lane = xr.merge([factors, qc])
    table = {"sample": [str(v) for v in lane["sample"].values]}
    table.update({n: np.asarray(lane[n].values).tolist() for n in lane.data_vars})
    flagged = np.zeros(ds.sizes["sample"], dtype=bool)
    for n in (n for n in lane.data_vars if n.endswith("_flag")):
        flagged |= np.asarray(lane[n].values, dtype=bool)
    record = {"flagged": [str(v) for v in qc["sample"].values[flagged]], "table": table}
    if not o.keep_controls:
        ds, kept = _keep_genes(ds, ~np.isin(np.char.lower(code_class), ["positive", "negative"]), "nanostring")
        record["genes_after"] = kept["genes_after"]
    if o.drop_flagged:
        ds, record["samples_dropped"] = _keep_samples(ds, ~flagged, "nanostring")
    return ds, record


STEP_FUNCTIONS: dict[str, Callable] = {
    "log2": _log2, "quantile": _quantile, "upper_quartile": _upper_quartile, "zscore": _zscore,
    "cpm": lambda s, o: _cpm(s, o, o.log, "cpm"),
    "tmm_log_cpm": lambda s, o: _cpm(s, o, True, "tmm_log_cpm"), "vst": _vst,
    "nanostring": _nanostring, "filter_by_expr": _filter_by_expr,
    "drop_zero_genes": _drop_zero_genes, "select_samples": _select_samples,
    "aggregate": _aggregate, "delta": _delta, "collapse": _collapse,
    "pca_outliers": _pca_outliers,
}
assert set(STEP_FUNCTIONS) == set(ps.STEPS)


def apply_steps(ds: xr.Dataset, steps: list, *, seed: int = 0,
                keep_outliers: bool = False) -> tuple[xr.Dataset, list[dict]]:
    """The lazy preprocessed cohort and one record per step (what it did, what it dropped)."""
    records = []
    for i, step in enumerate(steps, 1):
        key, options = ps.step_of(step)
        try:
            ds, record = STEP_FUNCTIONS[key](State(ds, seed, keep_outliers), options)
        except InputError as e:
            raise InputError(f"preprocess step {i} ({key}): {e}") from None
        records.append({"step": key, "options": options.model_dump(mode="json"), **record})
    return ds, records


# -- the derived store ------------------------------------------------------------------------

def _digest(raw: Path, steps: list, seed: int, variant: str) -> str:
    from engine import __version__

    spec = {"cohort_metadata_sha256": sha256_file(raw / "zarr.json"), "seed": seed,
            "steps": [s.model_dump(mode="json") for s in steps], "variant": variant,
            "engine_version": __version__}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _for_writing(ds: xr.Dataset) -> tuple[xr.Dataset, dict]:
    """Uniform gene chunks with all samples (the store contract), no inherited encodings."""
    chunk = default_chunk_genes(ds.sizes["sample"])
    ds = ds.copy()
    for var in ds.variables.values():
        var.encoding = {}
    encoding = {}
    for name, var in ds.data_vars.items():
        if var.dims == ("gene", "sample"):
            ds[name] = var.chunk({"gene": chunk, "sample": -1})
            encoding[name] = {"chunks": (chunk, ds.sizes["sample"]), "compressors": COMPRESSOR}
    return ds, encoding


def write_derived(ds: xr.Dataset, path: Path, attrs: dict,
                  compute: Callable = dask.compute) -> Path:
    """Compute ``ds`` once and write it as a cohort store at ``path`` (write, then rename)."""
    ds, encoding = _for_writing(ds)
    ds.attrs = attrs
    with atomic_directory(path, overwrite=True) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        compute(ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, compute=False,
                           encoding=encoding))
        zarr.open_group(tmp, mode="r+", zarr_format=3).attrs["content_sha256"] = \
            content_digest(tmp)
        zarr.consolidate_metadata(tmp)
    return path


@dataclass
class Prepared:
    """A preprocessed cohort: the opened derived store, where it is and what each step did."""

    cohort: xr.Dataset
    path: Path
    records: list[dict]
    reused: bool


def prepare(raw_path: Path, steps: list, *, seed: int = 0, derived: Path | None = None,
            compute: Callable = dask.compute) -> dict[str, Prepared]:
    """Apply ``steps`` to the cohort at ``raw_path``; returns the main variant under ``""``
    and, when a pca_outliers step with sensitivity dropped samples, ``"outliers_kept"``."""
    raw_path = Path(raw_path)
    root = Path(derived) if derived is not None else raw_path / "derived"
    out = {"": _prepare_variant(raw_path, steps, seed, root, "", compute)}
    sensitivity = any(r["step"] == "pca_outliers" and r["outliers"] and r["options"]["sensitivity"]
                      for r in out[""].records)
    if sensitivity:
        out[KEPT] = _prepare_variant(raw_path, steps, seed, root, KEPT, compute)
    return out


def _prepare_variant(raw_path, steps, seed, root, variant, compute) -> Prepared:
    path = root / f"{_digest(raw_path, steps, seed, variant)}.zarr"
    if (path / "zarr.json").exists():
        cohort = open_cohort(path)
        return Prepared(cohort, path, cohort.attrs["preprocess"]["records"], reused=True)
    raw = open_cohort(raw_path)
    ds, records = apply_steps(raw, steps, seed=seed, keep_outliers=variant == KEPT)
    attrs = {**raw.attrs, "derived_from": str(raw_path.absolute()),
             "preprocess": {"variant": variant, "seed": seed, "records": records}}
    try:
        write_derived(ds, path, attrs, compute)
    except PermissionError:
        raise InputError(f"cannot write the preprocessed cohort into {root} (permission denied); "
                         "set `derived:` in the job to a folder you can write") from None
    return Prepared(open_cohort(path), path, records, reused=False)
