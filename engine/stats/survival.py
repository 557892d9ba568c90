"""Survival curves: Kaplan-Meier estimates, median survival and the log-rank test.

Kernels are numpy functions of the per-sample ``time`` (float, >= 0) and ``event`` (1 = the
event was observed, 0 = censored) arrays and integer group codes; computed in float64.
Right-censored data only; a censored time ties after an event time at the same time (the
subject is at risk at that time), as in R ``survival``.

Conventions (R ``survival`` 3.5, the reference of the tests):

* Kaplan-Meier: one row per distinct time of the group, events or censorings (R ``survfit``
  rows): ``n_risk`` (samples with time >= t), ``n_event``, ``n_censor``, ``survival`` =
  prod(1 - d / n). ``std_err`` is the standard error of the survival estimate by Greenwood's
  formula, S(t) sqrt(sum d / (n (n - d))) (R ``summary(survfit(...))$std.err``, statsmodels
  ``SurvfuncRight.surv_std_err``); NaN once S(t) = 0. ``ci_low``, ``ci_high``: R's default
  ``conf.type = "log"`` interval S exp(-+z sqrt(sum d / (n (n - d)))), the upper end capped at
  1, NaN where S = 0.
* Median survival and its interval as R ``print(survfit)`` (``survival:::survmean``): the
  first time where the curve (for the interval: the lower and the upper confidence curve) is
  <= 0.5; where the curve is exactly 0.5 (within sqrt(machine eps)) the midpoint between that
  time and the next time the curve drops. NaN where the curve never reaches 0.5.
* Log-rank test: R ``survdiff(rho = 0)``. observed and expected events per group, the
  hypergeometric variance, chi-square on (groups with expected > 0) - 1 degrees of freedom;
  NaN where fewer than two groups have an expected event.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr
from scipy import special

from engine.errors import InputError, preview
from engine.stats.features import MISSING_LABELS, as_delayed, named_task, sample_annotation

__all__ = [
    "CURVE_FIELDS",
    "GROUP_FIELDS",
    "check_confidence",
    "check_split",
    "kaplan_meier",
    "kaplan_meier_curve",
    "kaplan_meier_groups",
    "logrank_test",
    "median_survival",
    "quantile_split",
    "survival_outcome",
]

CURVE_FIELDS = ("time", "n_risk", "n_event", "n_censor", "survival", "std_err", "ci_low",
                "ci_high")
GROUP_FIELDS = ("n", "n_events", "expected", "median", "median_ci_low", "median_ci_high",
                "statistic", "df", "p_value", "threshold")

_MEDIAN_TOLERANCE = np.sqrt(np.finfo(np.float64).eps)  # R survmean's all.equal tolerance


def _z(confidence: float) -> float:
    return float(special.ndtri(0.5 + confidence / 2.0))


def check_confidence(confidence: float) -> None:
    """Refuse a confidence level outside (0, 1) with an InputError."""
    if not 0.0 < float(confidence) < 1.0:
        raise InputError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}")


def check_split(split) -> float | None:
    """``None``, ``"median"`` or a quantile in (0, 1) -> the quantile as a float (or None)."""
    if split is None:
        return None
    if split == "median":
        return 0.5
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0.0 < split < 1.0:
        raise InputError(f"split must be 'median' or a quantile between 0 and 1 (e.g. 0.25), "
                         f"got {split!r}")
    return float(split)


def quantile_split(x: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` dichotomised at their own ``q`` quantile: (x > quantile) as 1.0, NaN kept.

    The quantile is R's default ``quantile(type = 7)`` (numpy's ``linear``) of each row's
    non-missing values; returns the 0/1 block and the thresholds (NaN for an all-missing row).
    """
    x = np.asarray(x, dtype=np.float64)
    present = ~np.isnan(x)
    threshold = np.full(x.shape[0], np.nan)
    rows = present.any(axis=1)
    if rows.any():
        threshold[rows] = np.nanquantile(x[rows], q, axis=1)
    with np.errstate(invalid="ignore"):
        high = (x > threshold[:, None]).astype(np.float64)
    return np.where(present, high, np.nan), threshold


def survival_outcome(ds: xr.Dataset, *, time: str, event: str,
                     event_value=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample (time, event) from two sample annotations; NaN where either is missing.

    ``time`` is a numeric annotation (>= 0). ``event`` is a numeric 0/1 annotation, or, with
    ``event_value``, any annotation whose value ``event_value`` marks an event (every other
    present value is a censoring).
    """
    t_raw = sample_annotation(ds, time, "time")
    if t_raw.dtype.kind not in "fiu":
        text = sorted({str(v) for v in t_raw if str(v) not in MISSING_LABELS})
        raise InputError(f"time {time!r} is not numeric (values: {preview(text, 8)}); give a "
                         "numeric annotation of follow-up times (e.g. days from diagnosis)")
    t = t_raw.astype(np.float64)
    if np.isinf(t).any() or (t < 0).any():
        bad = np.asarray(ds["sample"].values)[np.isinf(t) | (t < 0)]
        raise InputError(f"time {time!r} has negative or infinite values (samples "
                         f"{preview(bad)}); follow-up times must be >= 0")
    e_raw = sample_annotation(ds, event, "event")
    if event_value is None:
        if e_raw.dtype.kind == "b":
            e = e_raw.astype(np.float64)
        elif e_raw.dtype.kind in "fiu":
            e = e_raw.astype(np.float64)
            odd = sorted({float(v) for v in e[~np.isnan(e)]} - {0.0, 1.0})
            if odd:
                raise InputError(f"event {event!r} must be 0 (censored) or 1 (event), found "
                                 f"{preview([f'{v:g}' for v in odd])}; or give event_value, "
                                 "the value that marks an event")
        else:
            text = sorted({str(v) for v in e_raw if str(v) not in MISSING_LABELS})
            raise InputError(f"event {event!r} is not a 0/1 annotation (values: "
                             f"{preview(text, 8)}); give event_value, the value that marks an "
                             "event (e.g. event_value: TRUE)")
    else:
        if e_raw.dtype.kind in "fiu":
            values = e_raw.astype(np.float64)
            missing = np.isnan(values)
            try:
                hit = values == float(event_value)
            except (TypeError, ValueError):
                hit = np.zeros(values.shape, bool)
        else:
            labels = np.array([str(v) for v in e_raw], dtype=object)
            missing = np.isin(labels, MISSING_LABELS)
            hit = labels == str(event_value)
        if not hit.any():
            present = sorted({str(v) for v, m in zip(e_raw, missing) if not m})
            raise InputError(f"no sample has {event} == {event_value!r} (values present: "
                             f"{preview(present, 20)}); event_value is the value that marks "
                             "an event")
        e = np.where(missing, np.nan, hit.astype(np.float64))
    return t, e


def kaplan_meier_curve(time, event, confidence: float = 0.95) -> dict[str, np.ndarray]:
    """Kaplan-Meier estimate of one group: a dict of ``CURVE_FIELDS`` arrays, one row per time.

    Reference: R ``survfit(Surv(time, event) ~ 1)`` (``conf.type = "log"``) with
    ``summary()``'s standard error of the survival; statsmodels ``SurvfuncRight``. See the
    module docstring for the conventions. ``time`` and ``event`` must be complete.
    """
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=np.float64)
    order = np.argsort(time, kind="stable")
    t, e = time[order], event[order]
    times, first, counts = np.unique(t, return_index=True, return_counts=True)
    n_event = np.add.reduceat(e, first) if t.size else np.zeros(0)
    n_risk = (t.size - first).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        survival = np.cumprod(1.0 - n_event / n_risk)
        greenwood = np.cumsum(n_event / (n_risk * (n_risk - n_event)))
        sigma = np.sqrt(greenwood)
        z = _z(confidence)
        dead = survival == 0.0
        std_err = np.where(dead, np.nan, survival * sigma)
        ci_low = np.where(dead, np.nan, np.exp(np.log(survival) - z * sigma))
        ci_high = np.where(dead, np.nan, np.minimum(np.exp(np.log(survival) + z * sigma), 1.0))
    return {"time": times, "n_risk": n_risk, "n_event": n_event,
            "n_censor": counts - n_event, "survival": survival, "std_err": std_err,
            "ci_low": ci_low, "ci_high": ci_high}


def _first_below_half(curve: np.ndarray, times: np.ndarray) -> float:
    """R survmean's ``minmin``: the first time the curve is <= 0.5 (midpoint rule at 0.5)."""
    keep = ~np.isnan(curve) & (curve < 0.5 + _MEDIAN_TOLERANCE)
    if not keep.any():
        return np.nan
    y, x = curve[keep], times[keep]
    if abs(y[0] - 0.5) < _MEDIAN_TOLERANCE and (y < y[0]).any():
        return float((x[0] + x[np.flatnonzero(y < y[0])[0]]) / 2.0)
    return float(x[0])


def median_survival(curve: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """(median, lower, upper) of a ``kaplan_meier_curve``, as R ``print(survfit)``."""
    t = curve["time"]
    return (_first_below_half(curve["survival"], t), _first_below_half(curve["ci_low"], t),
            _first_below_half(curve["ci_high"], t))


def logrank_test(time, event, codes, n_groups: int) -> dict[str, np.ndarray | float]:
    """The log-rank test of ``n_groups`` groups (codes 0..n_groups-1), as R ``survdiff(rho=0)``.

    Returns ``observed`` and ``expected`` per group, ``statistic`` (chi-square), ``df`` and
    ``p_value`` (NaN where fewer than two groups have an expected event or the variance is
    singular). ``time``, ``event`` and ``codes`` must be complete.
    """
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=np.float64)
    codes = np.asarray(codes, dtype=np.intp)
    times, tid = np.unique(time, return_inverse=True)
    k = times.size
    # per (distinct time, group): subjects leaving the risk set at that time and deaths there
    leaving = np.zeros((k, n_groups))
    deaths = np.zeros((k, n_groups))
    np.add.at(leaving, (tid, codes), 1.0)
    np.add.at(deaths, (tid, codes), event)
    at_risk = np.cumsum(leaving[::-1], axis=0)[::-1]
    n = at_risk.sum(axis=1)
    d = deaths.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = at_risk / n[:, None]
        expected = (d[:, None] * share).sum(axis=0)
        kt = np.where(n > 1, d * (n - d) / (n - 1), 0.0)
    variance = np.einsum("t,tj,jk->jk", kt, share, np.eye(n_groups)) - np.einsum(
        "t,tj,tk->jk", kt, share, share)
    observed = deaths.sum(axis=0)
    used = np.flatnonzero(expected > 0)
    statistic = df = p = np.nan
    if used.size >= 2:
        keep = used[1:]
        diff = (observed - expected)[keep]
        v = variance[np.ix_(keep, keep)]
        try:
            solved = np.linalg.solve(v, diff)
        except np.linalg.LinAlgError:
            solved = np.full(diff.shape, np.nan)
        statistic = float(diff @ solved)
        df = float(used.size - 1)
        p = float(special.chdtrc(df, statistic)) if np.isfinite(statistic) else np.nan
    return {"observed": observed, "expected": expected, "statistic": statistic, "df": df,
            "p_value": p}


def kaplan_meier_groups(time, event, codes, n_groups: int, n_steps: int,
                        confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Curves and per-group summary of samples with complete (time, event, code >= 0).

    Returns ``curves`` (n_groups, n_steps, len(CURVE_FIELDS)), each group's rows first and NaN
    padding after, and ``summary`` (n_groups, len(GROUP_FIELDS)) with the log-rank test across
    the groups repeated in every row (``threshold`` left NaN for the caller).
    """
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event, dtype=np.float64)
    codes = np.asarray(codes, dtype=np.float64)
    ok = ~np.isnan(time) & ~np.isnan(event) & ~np.isnan(codes) & (codes >= 0)
    time, event, codes = time[ok], event[ok], codes[ok].astype(np.intp)
    curves = np.full((n_groups, n_steps, len(CURVE_FIELDS)), np.nan)
    summary = np.full((n_groups, len(GROUP_FIELDS)), np.nan)
    test = logrank_test(time, event, codes, n_groups) if n_groups > 1 else None
    for g in range(n_groups):  # a handful of groups
        mine = codes == g
        summary[g, GROUP_FIELDS.index("n")] = mine.sum()
        summary[g, GROUP_FIELDS.index("n_events")] = event[mine].sum()
        if not mine.any():
            continue
        curve = kaplan_meier_curve(time[mine], event[mine], confidence)
        rows = curve["time"].size
        curves[g, :rows] = np.stack([curve[f] for f in CURVE_FIELDS], axis=1)
        for field, value in zip(("median", "median_ci_low", "median_ci_high"),
                                median_survival(curve)):
            summary[g, GROUP_FIELDS.index(field)] = value
    if test is not None:
        for field in ("expected", "statistic", "df", "p_value"):
            summary[:, GROUP_FIELDS.index(field)] = test[field]
    return curves, summary


def _packed_km(values, *, time, event, codes, split, threshold, n_groups, n_steps, confidence):
    """One task: group codes (from a gene row when ``values`` is given), curves and summary."""
    if values is not None:
        high, cut = quantile_split(np.asarray(values, dtype=np.float64)[None, :], split)
        codes = high[0]
        threshold = cut[0]
    curves, summary = kaplan_meier_groups(time, event, codes, n_groups, n_steps, confidence)
    summary[:, GROUP_FIELDS.index("threshold")] = threshold
    return np.concatenate([curves.reshape(n_groups, -1), summary], axis=1)


def _annotation_groups(values: np.ndarray, usable: np.ndarray, q: float | None, name: str):
    """(labels, codes per sample with NaN = left out, threshold) of a group annotation."""
    if q is not None:
        if values.dtype.kind not in "fiu":
            raise InputError(f"split needs a numeric group; {name!r} is text (drop split to "
                             "use its values as the groups)")
        high, cut = quantile_split(np.where(usable, values.astype(np.float64), np.nan)[None, :],
                                   q)
        return ["low", "high"], high[0], float(cut[0])
    if values.dtype.kind in "fiu":  # groups: the values of samples with an outcome
        values = np.where(usable, values.astype(np.float64), np.nan)
        levels = np.unique(values[~np.isnan(values)])
        codes = np.where(np.isnan(values), np.nan, np.searchsorted(levels, values))
        return [f"{v:g}" for v in levels], codes, np.nan
    text = np.array([str(v) for v in values], dtype=object)
    missing = np.isin(text, MISSING_LABELS) | ~usable
    labels = sorted(set(text[~missing]))
    lookup = {label: i for i, label in enumerate(labels)}
    return labels, np.array([np.nan if m else lookup[v] for v, m in zip(text, missing)]), np.nan


def _lazy_gene_row(ds: xr.Dataset, gene: str, variable: str):
    if variable not in ds or ds[variable].dims != ("gene", "sample"):
        raise InputError(f"variable {variable!r} is not a (gene, sample) variable of the cohort")
    ids = np.asarray(ds["gene"].values).astype(str)
    hit = np.flatnonzero(ids == str(gene))
    if hit.size == 0:
        return None
    row = ds[variable].data[hit[0]]
    return row if isinstance(row, da.Array) else da.from_array(np.asarray(row))


_CURVE_DESCRIPTIONS = {
    "time": "a distinct follow-up time of the group (an event or a censoring; NaN pads the "
            "group's rows to a common length)",
    "n_risk": "samples of the group at risk at the time (time >= t)",
    "n_event": "events of the group at the time",
    "n_censor": "censored samples of the group at the time",
    "survival": "Kaplan-Meier estimate of the survival probability just after the time",
    "std_err": "standard error of the survival estimate (Greenwood), NaN once survival is 0",
    "ci_low": "lower bound of the {level} confidence interval of survival (R survfit "
              "conf.type='log')",
    "ci_high": "upper bound of the {level} confidence interval of survival (R survfit "
               "conf.type='log', capped at 1)",
}

_GROUP_DESCRIPTIONS = {
    "n": "samples of the group with a follow-up time and an event status",
    "n_events": "observed events in the group",
    "expected": "expected events in the group under the log-rank null hypothesis",
    "median": "median survival time of the group (R print(survfit)); NaN where the curve "
              "stays above 0.5",
    "median_ci_low": "lower bound of the {level} confidence interval of the median survival",
    "median_ci_high": "upper bound of the {level} confidence interval of the median survival",
    "statistic": "log-rank chi-square across all groups (R survdiff, rho = 0; the same in "
                 "every row)",
    "df": "degrees of freedom of the log-rank chi-square (groups with expected events - 1)",
    "p_value": "p-value of the log-rank test across all groups (the same in every row)",
    "threshold": "the feature's split value: group high is value > threshold, low <= threshold",
}


def kaplan_meier(ds: xr.Dataset, *, time: str, event: str, event_value=None,
                 group: str | None = None, split=None, variable: str = "expression",
                 confidence: float = 0.95) -> xr.Dataset:
    """Kaplan-Meier curves per group, median survival and the log-rank test, lazily.

    Groups: all samples (``group=None``, group label ``all``); the values of a text sample
    annotation ``group``; a numeric annotation split at its ``split`` quantile (without
    ``split``, its distinct values); or a gene of ``variable`` split at its ``split`` quantile
    (default the median) into ``low`` (<= threshold) and ``high`` (> threshold). Samples
    without time, event or group are left out. See the module docstring for conventions.

    Returns a Dataset with two tables: variables of dims (``group``, ``step``) are the curves
    (``CURVE_FIELDS``; each group's rows in time order, NaN-padded to the number of distinct
    times), variables of dims (``group``,) the per-group summary (``GROUP_FIELDS``; the
    log-rank test repeated in every row; ``threshold`` only for a split). Building it
    computes nothing on the expression matrix.
    """
    check_confidence(confidence)
    q = check_split(split)
    t, e = survival_outcome(ds, time=time, event=event, event_value=event_value)
    usable = ~np.isnan(t) & ~np.isnan(e)
    row, threshold = None, np.nan
    attrs = {"test": "kaplan_meier", "time": time, "event": event,
             "confidence": float(confidence)}
    if event_value is not None:
        attrs["event_value"] = str(event_value)
    if group is None:
        if q is not None:
            raise InputError("split needs a group: a gene or a numeric sample annotation")
        labels, codes = ["all"], np.where(usable, 0.0, np.nan)
    elif group in ds and ds[group].dims == ("sample",):
        labels, codes, threshold = _annotation_groups(sample_annotation(ds, group, "group"),
                                                      usable, q, group)
        if not labels:
            raise InputError(f"group {group!r} has no values among the samples with a "
                             f"{time!r} time and an {event!r} status")
        attrs["group"] = group
        if q is not None:
            attrs["split"] = str(split)
    else:
        row = _lazy_gene_row(ds, group, variable)
        if row is None:
            names = sorted(n for n, v in ds.data_vars.items() if v.dims == ("sample",))
            raise InputError(f"group {group!r} is neither a sample annotation (available: "
                             f"{preview(names, 20)}) nor a gene of {variable!r}")
        q = 0.5 if q is None else q
        labels, codes = ["low", "high"], None
        attrs |= {"group": str(group), "variable": variable, "split": str(split or "median")}
    idx = np.flatnonzero(usable)
    if idx.size == 0 or np.nansum(e[idx]) == 0:
        raise InputError(f"no sample has both a {time!r} time and an {event!r} event status "
                         "with at least one event")
    n_steps = np.unique(t[idx]).size
    n_groups = len(labels)
    width = n_steps * len(CURVE_FIELDS) + len(GROUP_FIELDS)
    kwargs = {"time": t[idx], "event": e[idx],
              "codes": None if codes is None else codes[idx], "split": q, "threshold": threshold,
              "n_groups": n_groups, "n_steps": n_steps, "confidence": float(confidence)}
    values = None if row is None else as_delayed(row[idx])
    packed = named_task("kaplan-meier-curves", _packed_km, values, **kwargs)
    packed = da.from_delayed(packed, shape=(n_groups, width), dtype=np.float64)
    curves = packed[:, :n_steps * len(CURVE_FIELDS)].reshape(n_groups, n_steps,
                                                              len(CURVE_FIELDS))
    level = f"{confidence * 100:g}%"
    out = {f: xr.DataArray(curves[:, :, i], dims=("group", "step"),
                           attrs={"description": _CURVE_DESCRIPTIONS[f].format(level=level)})
           for i, f in enumerate(CURVE_FIELDS)}
    for f in GROUP_FIELDS if q is not None else GROUP_FIELDS[:-1]:
        out[f] = xr.DataArray(packed[:, n_steps * len(CURVE_FIELDS) + GROUP_FIELDS.index(f)],
                              dims=("group",),
                              attrs={"description": _GROUP_DESCRIPTIONS[f].format(level=level)})
    coords = {"group": np.array(labels, dtype=object), "step": np.arange(n_steps)}
    # ``columns`` keeps the column order (a Zarr store lists variables by name)
    return xr.Dataset(out, coords=coords, attrs={**attrs, "columns": list(out)})

