"""Bootstrap confidence intervals of general per-feature statistics by index resampling.

Statistics that are not linear in the data (Spearman/Pearson correlation, the odds ratio of a
logistic fit, a linear-model coefficient, which needs the resampled design) cannot be written as
``X @ W`` products (``engine.resample.bootstrap`` does that for means). Here every replicate is
a set of sample positions ``idx``, and the statistic is evaluated on those samples of a
(features x samples) block, every feature at once: one vectorised call per replicate, the
loop runs over replicates only (issue 5: "general statistics by vectorised index resampling").
A statistic is a callable of the block, ``statistic(x)``, that returns the function of one
replicate, ``f(idx) -> (rows,)`` (or ``(rows, 2)``: estimate and standard error, for studentized
intervals). ``f`` indexes the block and any per-sample partner itself (the partner of a
correlation, the outcome and covariates of a fit), so pairs move together; the outer call does
per-block work once (e.g. each row's sort order, from which every replicate's ranks follow).
The simplest statistic is ``lambda x: lambda idx: stat(x[:, idx], y[idx])``.

Draws. Resampling units are samples, or clusters (``by``: e.g. patients, whose pre/post
samples move together), drawn with replacement within strata (the number of units of each
stratum is kept: the outcome classes of a logistic fit, the groups of a two-group model).
Replicate j is row ``j % REPLICATE_BLOCK`` of block ``j // REPLICATE_BLOCK`` of
``engine.resample.bootstrap.replicate_indices`` (generator ``block_rng(seed, key, block)``,
``key = analysis_key(name, "bootstrap")``): the same replicate for every feature, whichever
chunk, worker or memory pass computes it. The statistics used here are row-wise (a feature's
value depends on its own row only: row reductions, no BLAS product across features), so the
intervals are bit-identical for any gene chunking.

Intervals (``engine.resample.bootstrap.confidence_interval``): percentile, basic and BCa as
``scipy.stats.bootstrap`` defines them; BCa's acceleration from the leave-one-unit-out jackknife
of each stratum (scipy's multi-sample formula; Efron & Tibshirani 1993, 14.3 and 15.4);
studentized (bootstrap-t, Efron & Tibshirani 12.5) from replicate estimates and standard errors.

Undefined replicates: a replicate where a feature's statistic is undefined (NaN: a resample in
which the feature or the partner is constant, a separated or non-converged logistic fit, a
coefficient the resampled design cannot estimate) is left out of that feature's interval, as R
``boot.ci`` drops non-finite replicates and ``rms::bootcov`` drops fits that fail; ``n_boot``
counts the replicates used. (``scipy.stats.bootstrap`` returns a NaN interval as soon as one
replicate is NaN.) The interval is conditional on the statistic being defined, so a feature
with ``n_boot`` well below the number of replicates deserves a look: for a logistic fit the
dropped replicates are typically separated ones, whose odds ratio is infinite. Fewer than 2
defined replicates, an undefined observed statistic, or (BCa) no defined jackknife value give
a NaN interval. Leave-one-unit-out values that are undefined are left out of the acceleration
the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

import numpy as np

from engine.errors import InputError
from engine.store.cohort import task_memory
from engine.resample.bootstrap import (
    DEFAULT_MEMORY_BUDGET,
    REPLICATE_BLOCK,
    WEIGHT_KINDS,
    ResampleUnits,
    check_bootstrap_options,
    replicate_blocks,
    replicate_indices,
    resample_units,
    sample_indices,
)
from engine.resample.intervals import BOOT_FIELDS, replicate_interval
from engine.resample.rng import analysis_key
from engine.stats.features import MISSING_LABELS

__all__ = [
    "BOOT_FIELDS",
    "BootstrapOptions",
    "DEFAULT_MEMORY_BUDGET",
    "Resampling",
    "bootstrap_attrs",
    "bootstrap_options",
    "bootstrap_statistic",
    "empty_interval",
    "group_codes",
    "interval_descriptions",
    "jackknife_statistics",
    "kernel_options",
    "key_for",
    "replicate_interval",
    "replicate_samples",
    "replicate_statistics",
    "resampling",
    "soft_strata",
    "stratum_key",
    "units_of",
    "units_or_none",
]

#: Columns of ``bootstrap_statistic``'s output, in order.


@dataclass(frozen=True)
class BootstrapOptions:
    """The ``bootstrap:`` options of an analysis (the job's pydantic model converts to this).

    ``replicates``: number of bootstrap replicates. ``method``: percentile, basic, bca or
    studentized (``engine.resample.bootstrap.CI_METHODS``).
    ``level``: confidence level of the interval. ``by``: sample annotation whose values are the
    resampling units (clusters that move together), None for samples. ``strata``: True for the
    analysis' default strata (logistic: outcome classes; linear models: the levels of the
    tested factor; correlation: none), False for none, or a sample annotation. ``weights``:
    index resampling is multinomial; ``poisson`` is for the linear statistics of
    ``engine.resample.bootstrap`` and refused here. ``seed``: the job seed; ``key``: the
    analysis' stream, ``analysis_key(name, "bootstrap")``.
    """

    replicates: int = 2000
    method: str = "bca"
    level: float = 0.95
    by: str | None = None
    strata: bool | str = True
    weights: str = "multinomial"
    seed: int = 0
    key: int = 0

    def __post_init__(self):
        check_bootstrap_options(method=self.method, level=self.level,
                                replicates=self.replicates)
        if self.weights not in WEIGHT_KINDS:
            raise InputError(f"bootstrap weights {self.weights!r} is not one of "
                             f"{', '.join(WEIGHT_KINDS)}")
        if self.weights != "multinomial":
            raise InputError("bootstrap weights 'poisson' applies to linear statistics "
                             "(differences of means); correlations, odds ratios and model "
                             "coefficients resample samples (weights: multinomial)")
        if not isinstance(self.strata, (bool, str)):
            raise InputError(f"bootstrap strata must be true, false or a sample annotation, "
                             f"got {self.strata!r}")
        for name in ("seed", "key"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise InputError(f"bootstrap {name} must be a non-negative integer, got "
                                 f"{value!r}")


def bootstrap_options(value, **overrides) -> BootstrapOptions | None:
    """``value`` (None, a ``BootstrapOptions``, a mapping, or any object with those attributes,
    e.g. the job's pydantic model) as ``BootstrapOptions``; ``overrides`` (e.g. ``seed``,
    ``key``) replace fields. None stays None."""
    if value is None:
        return None
    names = [f.name for f in fields(BootstrapOptions)]
    if isinstance(value, BootstrapOptions):
        given = {n: getattr(value, n) for n in names}
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise InputError(f"unknown bootstrap option(s) {', '.join(unknown)} (allowed: "
                             f"{', '.join(names)})")
        given = dict(value)
    else:
        given = {n: getattr(value, n) for n in names if hasattr(value, n)}
    given.update(overrides)
    return BootstrapOptions(**given)


def stratum_key(key: int, label: str) -> int:
    """The bootstrap stream of one stratum of a ``stratify_by`` analysis: strata are separate
    analyses on disjoint samples and get independent streams."""
    return analysis_key(f"{int(key)}\x1f{label}", "bootstrap")


# --------------------------------------------------------------------------- draws


def replicate_samples(units: ResampleUnits, replicates: int, *, seed: int, key: int):
    """Yield ``(j, idx)`` for replicates j = 0 .. replicates - 1: the sample positions of
    replicate j (a unit drawn k times contributes its samples k times)."""
    for block in replicate_blocks(replicates):
        draws = replicate_indices(units, replicates, seed=seed, key=key, block=block)
        for i, idx in enumerate(sample_indices(units, draws)):
            yield block * REPLICATE_BLOCK + i, idx


def _rows(out, rows: int, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A statistic's output as (estimate, standard error or None), each (rows,)."""
    out = np.asarray(out, dtype=np.float64)
    if out.shape == (rows,):
        return out, None
    if out.shape == (rows, 2):
        return out[:, 0], out[:, 1]
    raise ValueError(f"the statistic must return ({rows},) or ({rows}, 2) values for {what}, "
                     f"got shape {out.shape}")


def replicate_statistics(x, statistic: Callable, units: ResampleUnits, *, replicates: int,
                         seed: int, key: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The statistic of every row of ``x`` on every replicate: ((rows, B), (rows, B) standard
    errors or None). One call of ``statistic(x)(idx)`` per replicate."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    replicate = statistic(x)
    theta = np.empty((x.shape[0], replicates))
    se = None
    for j, idx in replicate_samples(units, replicates, seed=seed, key=key):
        value, error = _rows(replicate(idx), x.shape[0], "a replicate")
        theta[:, j] = value
        if error is not None:
            if se is None:
                se = np.empty_like(theta)
            se[:, j] = error
    return theta, se


def jackknife_statistics(x, statistic: Callable, units: ResampleUnits) -> list[np.ndarray]:
    """Leave-one-unit-out values, one (rows, units of the stratum) array per stratum (strata in
    increasing order, units in increasing order within each)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    replicate = statistic(x)
    unit = np.asarray(units.unit)
    stratum = np.asarray(units.stratum)
    out = []
    for s in np.unique(stratum):
        members = np.flatnonzero(stratum == s)
        values = np.empty((x.shape[0], members.size))
        for i, u in enumerate(members):
            idx = np.flatnonzero(unit != u)
            values[:, i] = _rows(replicate(idx), x.shape[0], "a jackknife set")[0]
        out.append(values)
    return out


# --------------------------------------------------------------------------- intervals


# --------------------------------------------------------------------------- the kernel


def bootstrap_statistic(x, statistic: Callable, units: ResampleUnits, *, replicates: int,
                        method: str, level: float, seed: int, key: int,
                        memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
    """Bootstrap interval of ``statistic`` for every row of the block ``x`` (features x
    samples): a float64 (rows, 3) array of ``BOOT_FIELDS`` (ci_low, ci_high, n_boot).

    ``statistic(x)(idx)`` returns (rows,) estimates on the samples ``idx`` of ``x``, or (rows, 2)
    estimates and standard errors (required for ``method="studentized"``); it must be row-wise
    (see the module docstring) and NaN where undefined. ``units``: ``resample_units`` of the block's
    samples. Replicates j < ``replicates`` come from ``replicate_indices(units, ...,
    seed=seed, key=key, block=j // REPLICATE_BLOCK)``; BCa adds one call per resampling unit
    (the jackknife). At most ``memory_budget`` bytes of replicate statistics are held: more
    rows are done in passes over the same replicates. Computed in float64 from any input.
    """
    check_bootstrap_options(method=method, level=level, replicates=replicates)
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D (features x samples) array, got shape {x.shape}")
    n_samples = x.shape[1]
    if np.asarray(units.unit).shape != (n_samples,):
        raise ValueError(f"units describe {np.asarray(units.unit).size} samples, the block has "
                         f"{n_samples}")
    studentized = method == "studentized"
    if studentized and not units.singletons:
        raise InputError("the studentized interval needs one sample per resampling unit (its "
                         "standard error ignores clusters); use bca or percentile with clusters")
    # replicate values (and se), jackknife values, and ~8 row-length temporaries of the statistic
    per_row = 8 * (replicates * (2 if studentized else 1) + units.n_units + 8 * n_samples)
    step = max(1, int(memory_budget) // per_row)
    out = np.empty((x.shape[0], len(BOOT_FIELDS)))
    everything = np.arange(n_samples)
    for start in range(0, x.shape[0], step):
        part = x[start:start + step]
        observed, observed_se = _rows(statistic(part)(everything), part.shape[0],
                                      "the observed samples")
        if studentized and observed_se is None:
            raise InputError("studentized intervals need a standard error of the statistic "
                             "for every replicate; choose percentile, basic or bca")
        theta, theta_se = replicate_statistics(part, statistic, units, replicates=replicates,
                                               seed=seed, key=key)
        jackknife = jackknife_statistics(part, statistic, units) if method == "bca" else None
        out[start:start + step] = replicate_interval(
            theta, observed, method=method, level=level, jackknife=jackknife,
            theta_se=theta_se, observed_se=observed_se)
    return out


# --------------------------------------------------------------------------- wiring helpers


def group_codes(values, what: str, name: str) -> np.ndarray:
    """Integer codes (0, 1, ... in sorted order of the labels) of per-sample labels; a missing
    label is an error that names the annotation."""
    labels = np.array([str(v) for v in np.asarray(values)], dtype=object)
    missing = np.isin(labels, (*MISSING_LABELS, "None", "<NA>"))
    if missing.any():
        raise InputError(f"bootstrap {what} {name!r} has no value for {int(missing.sum())} "
                         "sample(s) of the analysis; fill them in or leave those samples out")
    return np.unique(labels, return_inverse=True)[1].ravel().astype(np.int64)


def _crossing(clusters: np.ndarray | None, strata: np.ndarray | None) -> int:
    """How many clusters have samples in more than one stratum."""
    if clusters is None or strata is None:
        return 0
    pairs = np.unique(np.column_stack([clusters, strata]), axis=0)
    return int((np.unique(pairs[:, 0], return_counts=True)[1] > 1).sum())


def soft_strata(clusters: np.ndarray | None, strata: np.ndarray) -> np.ndarray | None:
    """Default strata made usable for ``resample_units``: the units of levels with a single
    unit are pooled into one stratum (a stratum of one unit never varies); None (not
    stratified) when there is one such level only or a cluster spans two levels."""
    if _crossing(clusters, strata):
        return None
    unit = np.arange(strata.size) if clusters is None else clusters
    pairs = np.unique(np.column_stack([unit, strata]), axis=0)
    levels, count = np.unique(pairs[:, 1], return_counts=True)
    single = levels[count < 2]
    if single.size == 0:
        return strata
    if single.size == 1:
        return None
    pooled = np.where(np.isin(strata, single), -2, strata)  # -2: the pool, not a level code
    return np.unique(pooled, return_inverse=True)[1].ravel()


@dataclass(frozen=True)
class Resampling:
    """How an analysis resamples: the cohort positions of its samples (sorted), the integer
    codes of their clusters and strata (None: not used), words for the result's attributes,
    and whether the strata are the analysis' default (``soft``: adapted by ``soft_strata`` to
    the samples of each stratum of ``stratify_by``) or named by the user (used as they are)."""

    positions: np.ndarray
    clusters: np.ndarray | None
    strata: np.ndarray | None
    by: str
    strata_used: str
    soft: bool = False

    def codes(self, at) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Cluster and stratum codes of the cohort positions ``at``; -1 for a position that is
        not a sample of the analysis."""
        at = np.asarray(at, dtype=np.int64)
        where = np.minimum(np.searchsorted(self.positions, at), max(self.positions.size - 1, 0))
        inside = (self.positions[where] == at) if self.positions.size else np.zeros(at.size, bool)
        return tuple(None if c is None else np.where(inside, c[where], -1)
                     for c in (self.clusters, self.strata))

    def units(self, at) -> ResampleUnits:
        """The resampling units of the samples at cohort positions ``at``, in that order;
        ``InputError`` (from ``resample_units``) when they cannot be resampled."""
        clusters, strata = self.codes(at)
        return units_of(len(at), clusters, strata, self.soft)


def units_of(n: int, clusters: np.ndarray | None, strata: np.ndarray | None,
             soft: bool = False) -> ResampleUnits:
    """``resample_units`` of ``n`` samples with these codes (None: each sample its own unit;
    not stratified; -1: not a sample of the analysis, refused); ``soft`` strata are left out
    when they cannot stratify these samples."""
    if any(c is not None and (c < 0).any() for c in (clusters, strata)):
        raise ValueError("units of samples that are not part of the analysis")
    if soft and strata is not None:
        strata = soft_strata(clusters, strata)
    return resample_units(n, clusters=clusters, strata=strata)


def units_or_none(resample: Resampling, at, *, stratified: bool) -> ResampleUnits | None:
    """The units of one stratum of an analysis. A ``stratify_by`` stratum that cannot be
    resampled (fewer than 2 samples, a named bootstrap stratum with one unit) gets None: its
    interval is NaN, as the statistic of a stratum without enough samples is; without
    ``stratify_by`` the reason is an error."""
    try:
        if len(at) < 2:
            return resample_units(len(at))  # raises the error that says so
        return resample.units(at)
    except InputError:
        if stratified:
            return None
        raise


def empty_interval(rows: int) -> np.ndarray:
    """BOOT_FIELDS of rows that cannot be bootstrapped: NaN interval, n_boot 0."""
    out = np.full((rows, len(BOOT_FIELDS)), np.nan)
    out[:, 2] = 0
    return out


def resampling(annotation: Callable[[str], np.ndarray], positions, options: BootstrapOptions,
               *, default_strata=None, default_strata_name: str = "none",
               default_clusters=None, default_clusters_name: str = "samples") -> Resampling:
    """Resolve ``options.by`` and ``options.strata`` for the samples at cohort ``positions``.

    ``annotation(name)`` returns a sample annotation's values over the whole cohort.
    ``default_strata`` (labels at ``positions``, in that order) are used for ``strata: true``
    (None: the analysis has none); ``default_clusters`` (labels at ``positions``) when ``by`` is
    not given (e.g. the pairs of a paired design). Default strata are adapted where they
    cannot stratify the samples as they are (``soft_strata``: levels of a single unit pooled;
    none when a cluster is in two levels, e.g. a pair holding one case and one control sample,
    which keeps the groups balanced by itself); a named strata annotation must stratify them
    (an error otherwise). Studentized intervals need one
    sample per unit (the standard errors of the statistics ignore clusters).
    """
    positions = np.asarray(positions, dtype=np.int64)
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    if options.by is not None:
        clusters = group_codes(np.asarray(annotation(options.by))[positions], "by", options.by)
        by = options.by
    elif default_clusters is not None:
        clusters = group_codes(np.asarray(default_clusters)[order], "by", default_clusters_name)
        by = default_clusters_name
    else:
        clusters, by = None, "samples"
    if clusters is not None and options.method == "studentized" \
            and np.unique(clusters).size < clusters.size:
        raise InputError(f"the studentized interval needs one sample per resampling unit (its "
                         f"standard error ignores clusters, here {by!r}); use bca or "
                         "percentile with clusters")
    if isinstance(options.strata, str):
        strata = group_codes(np.asarray(annotation(options.strata))[positions], "strata",
                             options.strata)
        crossing = _crossing(clusters, strata)
        if crossing:
            raise InputError(f"bootstrap strata {options.strata!r}: {crossing} cluster(s) of "
                             f"{by!r} have samples in more than one stratum; clusters must lie "
                             "within one stratum (drop strata or by)")
        return Resampling(positions, clusters, strata, by, options.strata)
    if options.strata and default_strata is not None:
        strata = group_codes(np.asarray(default_strata)[order], "strata", default_strata_name)
        if _crossing(clusters, strata):
            return Resampling(positions, clusters, None, by,
                              f"none ({by} span {default_strata_name})")
        usable = soft_strata(clusters, strata)
        if usable is None:
            return Resampling(positions, clusters, None, by,
                              f"none (one level of {default_strata_name} has a single unit)")
        used = default_strata_name if usable is strata else \
            f"{default_strata_name}, its levels of a single unit pooled"
        return Resampling(positions, clusters, strata, by, used, soft=True)
    return Resampling(positions, clusters, None, by, "none")


def bootstrap_attrs(options: BootstrapOptions, resample: Resampling) -> dict:
    """Result attributes that say how the intervals were made (flat, JSON-friendly)."""
    return {"bootstrap_replicates": int(options.replicates),
            "bootstrap_method": options.method, "bootstrap_level": float(options.level),
            "bootstrap_by": resample.by, "bootstrap_strata": resample.strata_used,
            "bootstrap_seed": int(options.seed), "bootstrap_key": int(options.key),
            "bootstrap_block": REPLICATE_BLOCK}


_METHOD_WORDS = {"percentile": "percentile", "basic": "basic", "bca": "BCa",
                 "studentized": "studentized (bootstrap-t)"}


def interval_descriptions(options: BootstrapOptions, effect: str,
                          resample: Resampling) -> dict[str, str]:
    """Descriptions of the ci_low, ci_high and n_boot columns."""
    units = "samples" if resample.by == "samples" else f"units of {resample.by!r}"
    strata = ("" if resample.strata_used.startswith("none")
              else f" within each level of {resample.strata_used}")
    what = (f"{options.level * 100:g}% {_METHOD_WORDS[options.method]} bootstrap confidence "
            f"interval of {effect} ({options.replicates} replicates resampling {units}{strata}; "
            "replicates where it is undefined are left out, see n_boot)")
    return {"ci_low": f"lower bound of the {what}", "ci_high": f"upper bound of the {what}",
            "n_boot": "bootstrap replicates in which the statistic is defined, which the interval "
                      "uses (undefined ones, e.g. a constant resample or a separated fit, are "
                      "left out as R boot.ci does)"}


def key_for(options: BootstrapOptions, label: str, stratified: bool) -> int:
    """The analysis' bootstrap stream, or with ``stratify_by`` one stream per stratum."""
    return stratum_key(options.key, label) if stratified else int(options.key)


def kernel_options(options: BootstrapOptions, key: int,
                   memory_budget: int | None = None) -> dict:
    """The keyword arguments of ``bootstrap_statistic`` besides x, statistic and units
    (``memory_budget``: the default, or less on workers with little memory)."""
    if memory_budget is None:
        memory_budget = task_memory(DEFAULT_MEMORY_BUDGET)
    return {"replicates": int(options.replicates), "method": options.method,
            "level": float(options.level), "seed": int(options.seed), "key": int(key),
            "memory_budget": int(memory_budget)}
