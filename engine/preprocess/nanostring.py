"""NanoString nCounter normalisation and lane QC flags, as nSolver computes them.

References: NanoString's *nCounter Gene Expression Data Analysis Guidelines*, the nSolver
User Manual and knowledge base (QC thresholds); NanoString's own R code in NanoStringNCTools
(``normalize(type="nSolver")``, ``setQCFlags``); NanoStringNorm (Waggott et al. 2012,
``CodeCount``/``Background``/``SampleContent``) and NanoTube (``processNanostringData``).

``normalize_nanostring`` runs three steps over every probe (controls included, so they stay
inspectable), each step summarising the control rows as the earlier steps left them:

1. positive-control scaling: ``factor_j = mean_k(s_k) / s_j`` where ``s_j`` is sample j's
   geometric mean (or sum) of the positive controls; nSolver flags factors outside 0.3-3;
2. background subtraction: per sample, the mean + k SD (R's ``sd``, n - 1) of the negative
   controls, their max or their mean is subtracted and the result floored (at 0 by default);
3. housekeeping (CodeSet content) normalisation: ``factor_j = mean_k(g_k) / g_j`` with
   ``g_j`` the geometric mean of the housekeeping probes; nSolver flags factors outside 0.1-10.

The order is positive scaling, then background, then housekeeping, as NanoStringNorm applies
the guidelines and NanoTube's "nSolver" pipeline does: the background is then measured on
negative controls that carry the same lane scaling as the counts it is subtracted from, and the
housekeeping genes are summarised after their background is gone. ``background_first=True``
subtracts the background of the raw counts before positive scaling instead (the positive
controls are then summarised after subtraction; leave POS_F out, ``exclude_pos_f``, as it
often falls to 0). The reference of a factor is the mean over the samples whose summary is positive;
a sample whose summary is 0 or missing gets a NaN factor (and NaN normalised values), never an
infinite one; missing counts are left out of a sample's summaries.

``nanostring_qc`` computes nSolver's lane flags from raw counts and lane attributes
(imaging, binding density, positive-control linearity, limit of detection).

Everything is lazy: the control rows are a handful of rows selected from the gene-chunked
matrix, their per-sample summaries are small reductions (``nanostring_factors``), and the
normalised matrix is an elementwise map of each gene chunk with the per-sample factors
(``apply_nanostring``): no task holds more than one chunk. A chunk holding control rows is
needed by both, so with lazy factors it stays in memory until they are known; with computed
factors, peak memory is that of a plain elementwise pass (``apply_nanostring``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from engine.errors import InputError, preview

__all__ = [
    "STANDARD_POSITIVE_CONCENTRATIONS",
    "apply_nanostring",
    "background_level",
    "column_summary",
    "linearity_r2",
    "nanostring_factors",
    "nanostring_qc",
    "normalize_nanostring",
    "relative_factors",
]

#: fM of the nCounter ERCC positive-control spikes, used when a probe name carries none.
STANDARD_POSITIVE_CONCENTRATIONS = {"POS_A": 128.0, "POS_B": 32.0, "POS_C": 8.0,
                                    "POS_D": 2.0, "POS_E": 0.5, "POS_F": 0.125}

POSITIVE_METHODS = ("geomean", "sum")
BACKGROUND_METHODS = ("mean_sd", "max", "mean")
HOUSEKEEPING_METHODS = ("geomean",)


# ---------------------------------------------------------------- numpy kernels (column-wise)

def column_summary(block: np.ndarray, method: str) -> np.ndarray:
    """Per-column geometric mean (``"geomean"``) or sum (``"sum"``) of a (controls x samples)
    block, NaN left out; a column with no value is NaN, one with a 0 has geometric mean 0."""
    x = np.asarray(block, dtype=np.float64)
    present = ~np.isnan(x)
    n = present.sum(axis=0)
    if method == "sum":
        out = np.where(present, x, 0.0).sum(axis=0)
    elif method == "geomean":
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(present, np.log(np.where(present, x, 1.0)), 0.0)
            out = np.exp(logs.sum(axis=0) / n)
    else:
        raise ValueError(f"unknown summary {method!r}")
    return np.where(n > 0, out, np.nan)


def relative_factors(summary: np.ndarray) -> np.ndarray:
    """nSolver's normalisation factor ``mean(summary) / summary_j``.

    The mean runs over the samples whose summary is finite and positive; the others get NaN
    (a factor of 1/0 is undefined, not infinite).
    """
    s = np.asarray(summary, dtype=np.float64)
    valid = np.isfinite(s) & (s > 0)
    if not valid.any():
        return np.full(s.shape, np.nan)
    reference = s[valid].mean()
    return np.where(valid, reference / np.where(valid, s, 1.0), np.nan)


def background_level(block: np.ndarray, method: str, sd: float = 2.0) -> np.ndarray:
    """Per-column background of a (negative controls x samples) block: ``"mean_sd"`` = mean +
    ``sd`` * SD (n - 1 denominator, as R's ``sd`` in NanoStringNorm ``mean.2sd``), ``"max"``,
    ``"mean"``; NaN left out, NaN where a column has too few values (SD needs two)."""
    x = np.asarray(block, dtype=np.float64)
    present = ~np.isnan(x)
    n = present.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(present, x, 0.0).sum(axis=0) / n
        if method == "mean":
            return np.where(n > 0, mean, np.nan)
        if method == "max":
            return np.where(n > 0, np.where(present, x, -np.inf).max(axis=0), np.nan)
        if method == "mean_sd":
            dev = np.where(present, x - mean, 0.0)
            var = (dev * dev).sum(axis=0) / (n - 1)
            return np.where(n > 1, mean + sd * np.sqrt(var), np.nan)
    raise ValueError(f"unknown background {method!r}")


def linearity_r2(block: np.ndarray, log2_concentration: np.ndarray,
                 threshold: float = 0.5) -> np.ndarray:
    """Per-column R^2 of log2(count) on log2(concentration) over the positive controls (rows).

    R^2 is the squared Pearson correlation (``cor(x, y)^2``, NanoStringNCTools ``setQCFlags``),
    counts below ``threshold`` are raised to it before the log (``log2t(y, 0.5)``, so a 0 does not
    give -inf). NaN when a column has fewer than 3 values or no spread.
    """
    y = np.log2(np.maximum(np.asarray(block, dtype=np.float64), threshold))
    x = np.broadcast_to(np.asarray(log2_concentration, dtype=np.float64)[:, None], y.shape)
    present = ~np.isnan(y)
    n = present.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = np.where(present, x, 0.0).sum(axis=0) / n
        my = np.where(present, y, 0.0).sum(axis=0) / n
        dx = np.where(present, x - mx, 0.0)
        dy = np.where(present, y - my, 0.0)
        sxy, sxx, syy = (dx * dy).sum(axis=0), (dx * dx).sum(axis=0), (dy * dy).sum(axis=0)
        r2 = sxy * sxy / (sxx * syy)
    return np.where((n >= 3) & (sxx > 0) & (syy > 0), r2, np.nan)


def _apply_steps(y, steps, floor: float):
    """The normalisation steps on a float64 (rows x samples) array, numpy or dask: the control
    rows and the whole matrix go through this one function, so they get identical values."""
    for kind, value in steps:
        if kind == "background":
            y = np.maximum(y - value, floor)
        else:  # a positive or housekeeping factor
            y = y * value
    return y


# ---------------------------------------------------------------------------- lazy wrappers

def normalize_nanostring(counts: xr.DataArray, code_class, *,
                         positive: str | None = "geomean",
                         background: str | None = "mean_sd",
                         background_sd: float = 2.0,
                         background_floor: float = 0.0,
                         background_first: bool = False,
                         housekeeping: str | None = "geomean",
                         housekeeping_genes: Sequence[str] | None = None,
                         exclude_pos_f: bool = False,
                         positive_factor_range: tuple[float, float] = (0.3, 3.0),
                         housekeeping_factor_range: tuple[float, float] = (0.1, 10.0),
                         ) -> xr.Dataset:
    """nSolver-style normalisation of raw nCounter counts (module docstring: steps and order).

    ``counts``: (gene, sample) DataArray of raw counts (the store's ``counts`` or
    ``expression``), Dask-backed and chunked along genes. ``code_class``: the probes' CodeClass
    (Endogenous, Housekeeping, Positive, Negative, ...; case-insensitive), one per gene.
    ``positive``: ``"geomean"`` | ``"sum"`` | None; ``exclude_pos_f`` leaves POS_F (0.125 fM,
    close to background) out of the positive summary. ``background``: ``"mean_sd"`` (mean +
    ``background_sd`` SD) | ``"max"`` | ``"mean"`` | None, floored at ``background_floor``.
    ``housekeeping``: ``"geomean"`` | None over the Housekeeping probes or the probe IDs in
    ``housekeeping_genes``.

    Returns a lazy Dataset: ``normalized`` (gene, sample) float32 for every probe, and the
    per-sample variables of ``nanostring_factors``. It is ``apply_nanostring(counts,
    nanostring_factors(counts, ...))``; compute the (small) factors first and apply them when
    the control rows are spread over many chunks of a large matrix (``apply_nanostring``).
    """
    factors = nanostring_factors(
        counts, code_class, positive=positive, background=background,
        background_sd=background_sd, background_floor=background_floor,
        background_first=background_first, housekeeping=housekeeping,
        housekeeping_genes=housekeeping_genes, exclude_pos_f=exclude_pos_f,
        positive_factor_range=positive_factor_range,
        housekeeping_factor_range=housekeeping_factor_range)
    normalized = apply_nanostring(counts, factors)
    return factors.assign(normalized=normalized)[["normalized", *factors.data_vars]]


def nanostring_factors(counts: xr.DataArray, code_class, *,
                       positive: str | None = "geomean",
                       background: str | None = "mean_sd",
                       background_sd: float = 2.0,
                       background_floor: float = 0.0,
                       background_first: bool = False,
                       housekeeping: str | None = "geomean",
                       housekeeping_genes: Sequence[str] | None = None,
                       exclude_pos_f: bool = False,
                       positive_factor_range: tuple[float, float] = (0.3, 3.0),
                       housekeeping_factor_range: tuple[float, float] = (0.1, 10.0),
                       ) -> xr.Dataset:
    """The per-sample numbers of ``normalize_nanostring`` (same options), computed from the
    control rows only: ``positive_factor``, ``background`` (the level subtracted, on the scale
    it was subtracted from), ``housekeeping_factor`` (1, 0 and 1 for a step that was not run),
    ``positive_factor_flag`` / ``housekeeping_factor_flag`` (factor outside its range, or NaN).
    Lazy; the attributes record the steps, in order, for ``apply_nanostring``.
    """
    x, classes, probes = _inputs(counts, code_class)
    for name, value, allowed in (("positive", positive, POSITIVE_METHODS),
                                 ("background", background, BACKGROUND_METHODS),
                                 ("housekeeping", housekeeping, HOUSEKEEPING_METHODS)):
        if value is not None and value not in allowed:
            raise InputError(f"{name} normalisation {value!r} is not one of "
                             f"{', '.join(allowed)} (or None to skip it)")
    if not np.isfinite(background_floor) or background_floor < 0:
        raise InputError(f"background_floor must be a number >= 0, got {background_floor!r}")
    if not np.isfinite(background_sd) or background_sd < 0:
        raise InputError(f"background_sd must be a number >= 0, got {background_sd!r}")
    for name, bounds in (("positive_factor_range", positive_factor_range),
                         ("housekeeping_factor_range", housekeeping_factor_range)):
        if len(bounds) != 2 or not bounds[0] < bounds[1]:
            raise InputError(f"{name} must be (low, high) with low < high, got {bounds!r}")
    if housekeeping_genes is not None and housekeeping is None:
        raise InputError("housekeeping_genes is given but housekeeping=None; set "
                         "housekeeping='geomean' to use them")
    if isinstance(housekeeping_genes, str):
        housekeeping_genes = [housekeeping_genes]

    rows = {}
    if positive:
        pos = _rows(classes, "positive", "positive", "positive=None")
        if exclude_pos_f:
            names = _names(probes, "exclude_pos_f")
            pos = pos[[_base(names[i]) != "POS_F" for i in pos]]
            if pos.size == 0:
                raise InputError("no positive controls are left after excluding POS_F "
                                 "(set exclude_pos_f=False)")
        rows["positive"] = pos
    if background:
        rows["background"] = _rows(classes, "negative", "negative", "background=None")
    if housekeeping:
        if housekeeping_genes is None:
            rows["housekeeping"] = _rows(classes, "housekeeping", "housekeeping",
                                         "housekeeping=None, or housekeeping_genes=[...]")
        else:
            rows["housekeeping"] = _probe_rows(probes, housekeeping_genes)

    order = ["background", "positive", "housekeeping"] if background_first \
        else ["positive", "background", "housekeeping"]
    order = [step for step in order if step in rows]
    n = x.shape[1]
    sample_chunks = x.chunks[1]
    per_sample = {"positive": da.ones(n, chunks=sample_chunks),
                  "background": da.zeros(n, chunks=sample_chunks),
                  "housekeeping": da.ones(n, chunks=sample_chunks)}
    if order:
        # The control rows only (a few rows of the gene-chunked matrix), as one small block;
        # each step summarises them as the earlier steps left them.
        used = np.unique(np.concatenate([rows[s] for s in order]))
        controls = x[used].astype(np.float64).rechunk({0: -1})
        for step in order:
            block = controls[np.searchsorted(used, rows[step])]
            if step == "background":
                value = block.map_blocks(background_level, background, background_sd,
                                         drop_axis=0, dtype=np.float64,
                                         meta=np.empty((0,), np.float64),
                                         token="nanostring-background")
            else:
                method = positive if step == "positive" else housekeeping
                summary = block.map_blocks(column_summary, method, drop_axis=0,
                                           dtype=np.float64, meta=np.empty((0,), np.float64),
                                           token=f"nanostring-{step}-summary")
                # The one global step: the reference is the mean over all samples.
                value = summary.rechunk(-1).map_blocks(
                    relative_factors, dtype=np.float64, meta=np.empty((0,), np.float64),
                    token=f"nanostring-{step}-factors").rechunk((sample_chunks,))
            per_sample[step] = value
            controls = _apply_steps(controls, [(step, value[None, :])], background_floor)

    def flag(values, bounds, ran):
        if not ran:
            return da.zeros(n, dtype=bool, chunks=sample_chunks)
        return ~((values >= bounds[0]) & (values <= bounds[1]))

    arrays = {
        "positive_factor": (per_sample["positive"],
                            f"positive-control scaling factor ({positive or 'not applied'})"),
        "background": (per_sample["background"],
                       f"background subtracted per sample ({background or 'not applied'})"),
        "housekeeping_factor": (per_sample["housekeeping"], "housekeeping normalisation factor "
                                f"({housekeeping or 'not applied'})"),
        "positive_factor_flag": (flag(per_sample["positive"], positive_factor_range,
                                      "positive" in rows),
                                 f"positive factor outside {positive_factor_range[0]}-"
                                 f"{positive_factor_range[1]} or undefined"),
        "housekeeping_factor_flag": (flag(per_sample["housekeeping"], housekeeping_factor_range,
                                          "housekeeping" in rows),
                                     "housekeeping factor outside "
                                     f"{housekeeping_factor_range[0]}-"
                                     f"{housekeeping_factor_range[1]} or undefined"),
    }
    coords = {"sample": counts["sample"].values} if "sample" in counts.coords else {}
    return xr.Dataset(
        {name: xr.DataArray(arr, dims=("sample",), coords=coords, attrs={"description": text})
         for name, (arr, text) in arrays.items()},
        attrs={"steps": list(order), "positive": positive or "none",
               "background": background or "none", "background_sd": float(background_sd),
               "background_floor": float(background_floor),
               "housekeeping": housekeeping or "none", "exclude_pos_f": bool(exclude_pos_f)})


def apply_nanostring(counts: xr.DataArray, factors: xr.Dataset) -> xr.DataArray:
    """``counts`` normalised with ``factors`` from ``nanostring_factors``, lazy (gene, sample)
    float32: one elementwise task per gene chunk.

    ``factors`` may be lazy (then every chunk holding a control row stays in memory until the
    factors are known: one chunk for an nCounter panel, whose at most ~800 probes fit in one)
    or computed (``.compute()`` reads only the control chunks), which keeps memory flat
    whatever the matrix and wherever its controls are.
    """
    x = _matrix(counts)
    floor = float(factors.attrs["background_floor"])
    name = {"positive": "positive_factor", "background": "background",
            "housekeeping": "housekeeping_factor"}
    steps = []
    for step in factors.attrs["steps"]:
        value = factors[name[step]].data
        if not isinstance(value, da.Array):
            value = da.from_array(np.asarray(value, dtype=np.float64), chunks=(x.chunks[1],))
        steps.append((step, value.astype(np.float64).rechunk((x.chunks[1],))[None, :]))
    normalized = _apply_steps(x.astype(np.float64), steps, floor).astype(np.float32)
    return xr.DataArray(normalized, dims=("gene", "sample"), coords=counts.coords,
                        attrs={"description": "nSolver-style normalised counts (all probes): "
                                              + ", ".join(factors.attrs["steps"] or ["none"])})


def nanostring_qc(counts: xr.DataArray, code_class, samples, *,
                  fov_ratio_min: float = 0.75,
                  binding_density_range: tuple[float, float] = (0.1, 2.25),
                  linearity_r2_min: float = 0.95,
                  linearity_min_concentration: float = 0.5,
                  lod_sd: float = 2.0,
                  concentrations: dict[str, float] | None = None) -> xr.Dataset:
    """nSolver's lane QC flags from raw counts (True = flagged), with the numbers behind them.

    Defaults are nSolver's (Gene Expression Data Analysis Guidelines; NanoStringNCTools
    ``setQCFlags``): ``imaging_flag`` when ``fov_ratio`` = FovCounted / FovCount < 0.75;
    ``binding_density_flag`` when BindingDensity is outside 0.1-2.25 spots/um^2 (MAX/FLEX; use
    (0.1, 1.8) for SPRINT); ``positive_linearity_flag`` when ``positive_r2``, the R^2 of log2
    counts on log2 concentration over the positive controls of at least
    ``linearity_min_concentration`` fM (0.5: POS_F is left out, as NanoStringNCTools does) is
    below 0.95; ``limit_of_detection_flag`` when the POS_E count (``pos_e``) is below
    ``limit_of_detection`` = mean + 2 SD of the negative controls. An undefined number (no
    FOV count, too few controls) raises its flag: the lane cannot be shown to pass.

    ``samples``: a Dataset (e.g. the cohort) or a DataFrame indexed by sample ID with
    ``fov_count``, ``fov_counted`` and ``binding_density`` (as ``read_rcc_folder`` names them).
    Positive-control concentrations (fM) come from the probe IDs (``POS_A(128)``), else from
    ``concentrations`` ({probe ID: fM}), else from the standard POS_A-POS_F spikes.
    """
    x, classes, probes = _inputs(counts, code_class)
    if len(binding_density_range) != 2 or not binding_density_range[0] < binding_density_range[1]:
        raise InputError("binding_density_range must be (low, high) with low < high, got "
                         f"{binding_density_range!r}")
    pos = _rows(classes, "positive", "positive", "a code set with positive controls")
    neg = _rows(classes, "negative", "negative", "a code set with negative controls")
    names = _names(probes, "nanostring_qc")
    conc = np.array([_concentration(names[i], concentrations) for i in pos])
    linear = pos[conc >= linearity_min_concentration]
    if linear.size < 3:
        raise InputError(f"positive linearity needs at least 3 positive controls of at least "
                         f"{linearity_min_concentration} fM, found {linear.size} (lower "
                         "linearity_min_concentration)")
    pos_e = [i for i in pos if _base(names[i]) == "POS_E"]
    if len(pos_e) != 1:
        raise InputError(f"the limit-of-detection check needs one POS_E positive control, found "
                         f"{len(pos_e)} among {preview([names[i] for i in pos])}")

    used = np.unique(np.concatenate([linear, neg, pos_e]))
    controls = x[used].astype(np.float64).rechunk({0: -1})
    where = {i: k for k, i in enumerate(used)}
    log2_conc = np.log2(conc[conc >= linearity_min_concentration])
    r2 = controls[[where[i] for i in linear]].map_blocks(
        linearity_r2, log2_conc, drop_axis=0, dtype=np.float64, meta=np.empty((0,), np.float64),
        token="nanostring-qc-linearity")
    lod = controls[[where[i] for i in neg]].map_blocks(
        background_level, "mean_sd", lod_sd, drop_axis=0, dtype=np.float64,
        meta=np.empty((0,), np.float64), token="nanostring-qc-detection-limit")
    pos_e_count = controls[where[pos_e[0]]]

    fov_count, fov_counted, density = (
        _sample_values(samples, counts, name)
        for name in ("fov_count", "fov_counted", "binding_density"))
    fov_ratio = da.map_blocks(_ratio, fov_counted, fov_count, dtype=np.float64,
                              meta=np.empty((0,), np.float64), token="nanostring-qc-imaging")
    lo, hi = binding_density_range
    arrays = {
        "fov_ratio": (fov_ratio, "FovCounted / FovCount"),
        "imaging_flag": (~(fov_ratio >= fov_ratio_min), f"fov_ratio below {fov_ratio_min}"),
        "binding_density": (density, "BindingDensity (spots per square micron)"),
        "binding_density_flag": (~((density >= lo) & (density <= hi)),
                                 f"binding density outside {lo}-{hi}"),
        "positive_r2": (r2, "R^2 of log2 positive-control counts on log2 concentration"),
        "positive_linearity_flag": (~(r2 >= linearity_r2_min),
                                    f"positive_r2 below {linearity_r2_min}"),
        "pos_e": (pos_e_count, "POS_E count"),
        "limit_of_detection": (lod, f"mean + {lod_sd} SD of the negative controls"),
        "limit_of_detection_flag": (~(pos_e_count >= lod), "POS_E below the limit of detection"),
    }
    coords = {"sample": counts["sample"].values} if "sample" in counts.coords else {}
    return xr.Dataset({name: xr.DataArray(arr, dims=("sample",), coords=coords,
                                          attrs={"description": text})
                       for name, (arr, text) in arrays.items()},
                      attrs={"fov_ratio_min": fov_ratio_min,
                             "binding_density_range": list(binding_density_range),
                             "linearity_r2_min": linearity_r2_min,
                             "linearity_min_concentration": linearity_min_concentration,
                             "lod_sd": lod_sd})


# ------------------------------------------------------------------------------- helpers

def _matrix(counts) -> da.Array:
    if not isinstance(counts, xr.DataArray) or counts.dims != ("gene", "sample"):
        raise InputError("counts must be a (gene, sample) DataArray, e.g. ds['counts'] of a "
                         "cohort ingested from RCC files")
    x = counts.data
    return x if isinstance(x, da.Array) else da.from_array(np.asarray(x), chunks=(-1, -1))


def _inputs(counts, code_class):
    x = _matrix(counts)
    classes = np.array([str(c).strip().lower() for c in np.asarray(code_class, dtype=object)],
                       dtype=object)
    if classes.shape != (x.shape[0],):
        raise InputError(f"code_class has {classes.size} values for {x.shape[0]} genes; give "
                         "one CodeClass per gene (the cohort's code_class annotation)")
    probes = (np.array([str(p) for p in counts["gene"].values], dtype=object)
              if "gene" in counts.coords else None)
    return x, classes, probes


def _rows(classes, wanted: str, what: str, fix: str) -> np.ndarray:
    rows = np.flatnonzero(classes == wanted)
    if rows.size == 0:
        present = sorted(set(classes))
        raise InputError(f"no {what} control probes (CodeClass {wanted.capitalize()}) among the "
                         f"code classes {preview(present)}; use {fix}")
    return rows


def _names(probes, what: str) -> np.ndarray:
    if probes is None:
        raise InputError(f"{what} needs probe names: give counts a 'gene' coordinate")
    return probes


def _probe_rows(probes, genes: Sequence[str]) -> np.ndarray:
    probes = _names(probes, "housekeeping_genes")
    position = {p: i for i, p in enumerate(probes)}
    missing = [g for g in genes if str(g) not in position]
    if missing:
        raise InputError(f"housekeeping_genes not in the cohort: {preview(missing)} (probe IDs "
                         f"look like {preview(list(probes[:5]))})")
    if not len(genes):
        raise InputError("housekeeping_genes is empty (leave it out to use the Housekeeping "
                         "probes)")
    return np.unique(np.array([position[str(g)] for g in genes], dtype=np.intp))


def _base(name: str) -> str:
    """``POS_A(128)`` -> ``POS_A``."""
    return str(name).split("(")[0].strip().upper()


def _concentration(name: str, given: dict[str, float] | None) -> float:
    if given and name in given:
        return float(given[name])
    found = re.search(r"\(\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*\)", name)
    if found:
        return float(found.group(1))
    if _base(name) in STANDARD_POSITIVE_CONCENTRATIONS:
        return STANDARD_POSITIVE_CONCENTRATIONS[_base(name)]
    raise InputError(f"positive control {name!r} has no concentration in its name (as in "
                     "POS_A(128)); pass concentrations={probe: fM}")


def _sample_values(samples, counts: xr.DataArray, name: str) -> da.Array:
    """One lane attribute as a float64 Dask array in the order of ``counts``' samples."""
    ids = counts["sample"].values if "sample" in counts.coords else None
    n = counts.shape[1]
    if isinstance(samples, pd.DataFrame):
        if name not in samples.columns:
            raise InputError(f"samples has no {name!r} column (columns: "
                             f"{preview(list(samples.columns))})")
        column = samples[name]
        if ids is not None:
            missing = [s for s in ids if s not in samples.index]
            if missing:
                raise InputError(f"samples lacks rows for {preview(missing)}")
            column = column.reindex(pd.Index(ids))
        values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64, na_value=np.nan)
        if values.shape != (n,):
            raise InputError(f"samples has {values.size} rows for {n} samples")
        return da.from_array(values, chunks=((counts.data.chunks[1],)
                                             if isinstance(counts.data, da.Array) else -1))
    if isinstance(samples, xr.Dataset):
        if name not in samples or samples[name].dims != ("sample",):
            raise InputError(f"samples has no {name!r} variable along 'sample'")
        var = samples[name]
        if ids is not None and "sample" in samples.coords and \
                not np.array_equal(samples["sample"].values.astype(str), ids.astype(str)):
            missing = sorted(set(map(str, ids)) - set(map(str, samples["sample"].values)))
            if missing:
                raise InputError(f"samples lacks {preview(missing)}")
            var = var.sel(sample=ids)
        data = var.data
        if not isinstance(data, da.Array):
            data = da.from_array(np.asarray(data), chunks=-1)
        if data.shape != (n,):
            raise InputError(f"samples has {data.shape[0]} values of {name!r} for {n} samples")
        if data.dtype.kind not in "fiu":
            raise InputError(f"sample annotation {name!r} is not numeric")
        return data.astype(np.float64)
    raise InputError("samples must be an xarray Dataset or a pandas DataFrame with fov_count, "
                     "fov_counted and binding_density")


def _ratio(num, den):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
