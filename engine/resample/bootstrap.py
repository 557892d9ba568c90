"""Bootstrap confidence intervals: resampling units, seeded replicate blocks, the interval methods,
and the fast path for differences of means (weight matrices, exact sums, closed-form jackknife).

Resampling units (:func:`resample_units`): every sample is its own unit unless ``clusters``
groups samples that must move together (a patient's pre/post pair, repeated biopsies); with
``strata`` (e.g. the groups of a two-group test) units are drawn with replacement *within* each
stratum, so every replicate keeps the number of units of every stratum (scipy's multi-sample
bootstrap, where each sample is resampled on its own). A cluster spanning two strata and a
stratum of a single unit (its resample never varies, so the interval would ignore its
variability; scipy refuses such samples too) are input errors.

Replicates (:func:`replicate_indices`, :func:`replicate_weights`): replicate j is row
``j % REPLICATE_BLOCK`` of block ``j // REPLICATE_BLOCK``; block b is drawn from
``engine.resample.rng.block_rng(seed, key, b)``, stratum by stratum in stratum order, each as
``rng.integers(0, n_units_s, (REPLICATE_BLOCK, n_units_s))`` -- exactly how
``scipy.stats.bootstrap`` draws a batch of REPLICATE_BLOCK resamples of its samples, so scipy
given the generator of block 0 draws the same first block. All REPLICATE_BLOCK rows are drawn and
the last block is cut at ``replicates``, so replicate j never depends on ``replicates``, on gene
chunks, tiles, workers or threads; the same replicate applies to every gene. ``kind="poisson"``
weights every unit by an independent Poisson(1) count instead (``rng.poisson(1.0,
(REPLICATE_BLOCK, n_units))``): group sizes then vary between replicates and a replicate can
leave a group empty (its statistic is undefined and the replicate is left out of the interval),
so Poisson weights are for large groups only.

Intervals: :mod:`engine.resample.intervals`.

Differences of means (:func:`mean_difference_bootstrap`, the linear path): with a (samples x B)
integer weight matrix W of the replicates, every replicate's group sums are ``X @ W``; on the
exact grid of ``engine.resample.exact`` those products are exact in any order, so a gene's
interval is the same bits for any gene chunking, row tile, thread count or BLAS. When every
replicate has the same group sizes (stratified multinomial draws of single samples, no missing
value) one product with the integer weights n_control W_case and -n_case W_control gives
n_case n_control (mean_case - mean_control) for every replicate: the arithmetic of the two bare
products and a single scaling pass. Otherwise (clusters, Poisson weights, missing values) each
group's mean is sum(w x) / sum(w) over its present values. BCa's jackknife is closed form:
(S - S_u) / (N - N_u) for each left-out unit, no loop over units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.errors import InputError, preview
from engine.resample import exact
from engine.store.cohort import task_memory
from engine.resample.intervals import (CI_METHODS, check_bootstrap_options, confidence_interval,
                                       order_statistics, replicate_interval)
from engine.resample.rng import block_rng, check_seed

__all__ = [
    "CI_METHODS",
    "DEFAULT_MEMORY_BUDGET",
    "FIELDS",
    "FOLD_CHANGE_FIELDS",
    "REPLICATE_BLOCK",
    "WEIGHT_KINDS",
    "ResampleUnits",
    "bootstrap_mean_difference",
    "check_bootstrap_options",
    "confidence_interval",
    "mean_difference_bootstrap",
    "order_statistics",
    "replicate_blocks",
    "replicate_indices",
    "replicate_weights",
    "resample_units",
    "result_fields",
    "sample_indices",
    "unit_counts",
]

#: Replicates per random block: replicate j is row j % REPLICATE_BLOCK of block
#: j // REPLICATE_BLOCK. A constant of the results' contract (changing it changes every result).
REPLICATE_BLOCK = 256
WEIGHT_KINDS = ("multinomial", "poisson")

_MISSING = ("", "nan", "NA", "None", "<NA>")


# --------------------------------------------------------------------------- units


@dataclass(frozen=True)
class ResampleUnits:
    """What a replicate resamples: ``unit`` (n_samples,) the unit (0..n_units-1) of each sample;
    ``stratum`` (n_units,) the stratum (0..n_strata-1) of each unit (all 0 when not stratified).
    Units and strata are numbered in order of their first sample."""

    unit: np.ndarray
    stratum: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.unit.size)

    @property
    def n_units(self) -> int:
        return int(self.stratum.size)

    @property
    def n_strata(self) -> int:
        return int(self.stratum.max()) + 1 if self.stratum.size else 0

    @property
    def singletons(self) -> bool:
        """Every unit is a single sample."""
        return self.n_units == self.n_samples

    def stratum_units(self) -> list[np.ndarray]:
        """The units of each stratum, in stratum order (increasing unit numbers)."""
        return [np.flatnonzero(self.stratum == s) for s in range(self.n_strata)]


def _codes(labels, n_samples: int, what: str) -> np.ndarray:
    """Per-sample labels as codes 0.. in order of first appearance; missing labels refused."""
    values = np.asarray(labels, dtype=object)
    if values.shape != (n_samples,):
        raise InputError(f"{what} must have one label per sample ({n_samples}), got "
                         f"shape {values.shape}")
    text = np.array(["" if v is None else str(v) for v in values], dtype=object)
    missing = np.flatnonzero(np.isin(text, _MISSING))
    if missing.size:
        raise InputError(f"{what} label missing for {missing.size} sample(s) at positions "
                         f"{preview(missing.tolist())}; give every sample a label or leave "
                         "those samples out")
    _, first, inverse = np.unique(text.astype(str), return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.intp)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.ravel()]


def resample_units(n_samples: int, *, clusters=None, strata=None) -> ResampleUnits:
    """The resampling units of ``n_samples`` samples.

    ``clusters``: per-sample labels of the samples that move together (e.g. patient IDs; None:
    every sample its own unit). ``strata``: per-sample labels (e.g. the group of a two-group
    test; None: one stratum); units are resampled within their stratum. Labels are compared as
    text; units and strata are numbered in order of their first sample.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) \
            or n_samples < 2:
        raise InputError(f"the bootstrap needs at least 2 samples, got {n_samples!r}")
    n_samples = int(n_samples)
    unit = (np.arange(n_samples) if clusters is None
            else _codes(clusters, n_samples, "clusters"))
    n_units = int(unit.max()) + 1
    sample_stratum = (np.zeros(n_samples, dtype=np.intp) if strata is None
                      else _codes(strata, n_samples, "strata"))
    stratum = np.full(n_units, -1, dtype=np.intp)
    stratum[unit] = sample_stratum
    spanning = np.flatnonzero(stratum[unit] != sample_stratum)
    if spanning.size:
        names = sorted({str(np.asarray(clusters, dtype=object)[i]) for i in spanning})
        raise InputError(f"{len(names)} cluster(s) have samples in two strata: "
                         f"{preview(names)}; a cluster must lie within one stratum (do not "
                         "stratify by a label that varies within a cluster, e.g. resample "
                         "patients unstratified, or use a paired design)")
    sizes = np.bincount(stratum, minlength=int(stratum.max()) + 1)
    single = np.flatnonzero(sizes < 2)
    if single.size:
        labels = (["all"] if strata is None else
                  [str(np.asarray(strata, dtype=object)[np.flatnonzero(sample_stratum == s)[0]])
                   for s in single])
        raise InputError(f"stratum {preview(labels)} has a single resampling unit: its "
                         "resamples never vary, so the interval would ignore its variability "
                         "(every stratum needs at least 2 units; add samples or do not "
                         "stratify)")
    return ResampleUnits(unit=unit, stratum=stratum)


def _check_units(units: ResampleUnits) -> ResampleUnits:
    if not isinstance(units, ResampleUnits):
        raise InputError(f"units must come from resample_units(), got {type(units).__name__}")
    return units


# --------------------------------------------------------------------------- replicates


def _count(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def replicate_blocks(replicates: int) -> range:
    """The random blocks that hold replicates 0..replicates-1."""
    replicates = _count("replicates", replicates, 1)
    return range(-(-replicates // REPLICATE_BLOCK))


def _block_width(replicates, block) -> int:
    replicates = _count("replicates", replicates, 1)
    block = _count("block", block)
    first = block * REPLICATE_BLOCK
    if first >= replicates:
        raise InputError(f"replicate block {block} is outside {replicates} replicates "
                         f"(blocks of {REPLICATE_BLOCK})")
    return min(REPLICATE_BLOCK, replicates - first)


def replicate_indices(units: ResampleUnits, replicates: int, *, seed: int, key: int,
                      block: int) -> np.ndarray:
    """Block ``block`` of the replicates as unit draws: (width, n_units) int64, row r the units
    of replicate ``block * REPLICATE_BLOCK + r`` drawn with replacement within each stratum
    (the positions of stratum s hold units of stratum s, so each replicate keeps the number of
    units per stratum). width = min(REPLICATE_BLOCK, replicates - block * REPLICATE_BLOCK)."""
    units = _check_units(units)
    width = _block_width(replicates, block)
    rng = block_rng(seed, key, block)
    out = np.empty((REPLICATE_BLOCK, units.n_units), dtype=np.int64)
    for members in units.stratum_units():  # a handful of strata
        draw = rng.integers(0, members.size, (REPLICATE_BLOCK, members.size), dtype=np.int64)
        out[:, members] = members[draw]
    return out[:width]


def unit_counts(units: ResampleUnits, unit_rows: np.ndarray) -> np.ndarray:
    """How often each unit occurs in each row of ``unit_rows`` (rows, draws): (rows, n_units)."""
    unit_rows = np.asarray(unit_rows)
    rows = unit_rows.shape[0]
    flat = unit_rows + (np.arange(rows, dtype=np.int64) * units.n_units)[:, None]
    counts = np.bincount(flat.ravel(), minlength=rows * units.n_units)
    return counts.reshape(rows, units.n_units)


def replicate_weights(units: ResampleUnits, replicates: int, *, seed: int, key: int, block: int,
                      kind: str = "multinomial") -> np.ndarray:
    """Block ``block`` of the replicates as sample weights: (n_samples, width) float64 integer
    counts, column r the weight of each sample in replicate ``block * REPLICATE_BLOCK + r`` (a
    sample weighs what its unit does). ``multinomial``: the counts of the units of
    :func:`replicate_indices` (the same replicates); ``poisson``: an independent Poisson(1)
    count per unit (group sizes then vary between replicates)."""
    units = _check_units(units)
    if kind not in WEIGHT_KINDS:
        raise InputError(f"unknown bootstrap weights {kind!r} (choose one of "
                         f"{', '.join(WEIGHT_KINDS)})")
    if kind == "multinomial":
        counts = unit_counts(units, replicate_indices(units, replicates, seed=seed, key=key,
                                                      block=block))
    else:
        width = _block_width(replicates, block)
        counts = block_rng(seed, key, block).poisson(1.0, (REPLICATE_BLOCK, units.n_units))
        counts = counts[:width]
    return np.ascontiguousarray(counts[:, units.unit].T, dtype=np.float64)


def sample_indices(units: ResampleUnits, unit_rows: np.ndarray):
    """Replicate unit draws (rows, n_units) as sample positions, for statistics that index the
    data. Each drawn unit contributes its samples in their order. Returns a (rows, n) int64 array
    when all units have the same number of samples (always when each sample is its own unit:
    then it is ``unit_rows`` mapped to samples), else a list of one 1-D array per row (lengths
    vary with the units drawn)."""
    units = _check_units(units)
    unit_rows = np.asarray(unit_rows, dtype=np.int64)
    order = np.argsort(units.unit, kind="stable")  # samples grouped by unit, in sample order
    sizes = np.bincount(units.unit, minlength=units.n_units)
    if (sizes == sizes[0]).all():
        members = order.reshape(units.n_units, sizes[0])
        return members[unit_rows].reshape(unit_rows.shape[0], -1)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    out = []
    for row in unit_rows:  # variable lengths: one array per replicate
        lengths = sizes[row]
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out.append(order[np.repeat(starts[row], lengths) + within])
    return out


# --------------------------------------------------------------------------- intervals
# --------------------------------------------------------------------------- means


#: Result columns of :func:`mean_difference_bootstrap`; with ``fold_change_base`` followed by
#: :data:`FOLD_CHANGE_FIELDS`.
FIELDS = ("effect", "ci_low", "ci_high", "n_boot")
FOLD_CHANGE_FIELDS = ("fold_change", "fc_ci_low", "fc_ci_high")
FOLD_CHANGE_BASES = (2, 10, "e")
#: Memory for one row tile of replicate statistics (and their temporaries) in one task.
DEFAULT_MEMORY_BUDGET = 256 * 2**20
#: Poisson weights: a column's total weight is assumed below (16 units + 64) x the largest unit
#: (exceeding it has probability < 1e-40; checked).
_POISSON_UNITS = (16, 64)
#: Rows x replicates of one tile at most (8 MB per array), whatever the memory budget.
_TILE_ELEMENTS = 2**20


def result_fields(fold_change_base=None) -> tuple[str, ...]:
    """The columns :func:`mean_difference_bootstrap` returns."""
    return FIELDS + (FOLD_CHANGE_FIELDS if fold_change_base is not None else ())


@dataclass(frozen=True)
class _MeanDesign:
    """The observations of a difference of means and how they are resampled."""

    case: np.ndarray      # columns of x
    control: np.ndarray
    paired: bool
    units: ResampleUnits  # over the observations: unpaired case then control; paired: pairs
    groups: tuple         # (slice of the observations, sign) per group
    members: np.ndarray | None  # (observations, n_units) 0/1 unit of each observation;
                                # None when each observation is its own unit (the identity)
    bound: int            # largest possible total weight of a replicate (sets the grid)


def _positions(name, values, n_columns) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 1 or values.dtype.kind not in "iu" or values.size == 0:
        raise InputError(f"{name} must be a non-empty 1-D array of sample positions, got "
                         f"dtype {values.dtype} and shape {values.shape}")
    if n_columns is not None and ((values < 0) | (values >= n_columns)).any():
        raise InputError(f"{name} has sample positions outside 0..{n_columns - 1}")
    return values.astype(np.intp)


def _mean_design(case, control, units, *, paired, method, level, replicates, kind,
                 fold_change_base, n_columns=None) -> _MeanDesign:
    check_bootstrap_options(method=method, level=level, replicates=replicates)
    if kind not in WEIGHT_KINDS:
        raise InputError(f"unknown bootstrap weights {kind!r} (choose one of "
                         f"{', '.join(WEIGHT_KINDS)})")
    if fold_change_base is not None and fold_change_base not in FOLD_CHANGE_BASES:
        raise InputError(f"fold_change_base must be one of 2, 10, 'e' (the log base of the "
                         f"data), got {fold_change_base!r}")
    case = _positions("case", case, n_columns)
    control = _positions("control", control, n_columns)
    if paired:
        if case.size != control.size:
            raise InputError(f"paired bootstrap needs aligned pairs: {case.size} case and "
                             f"{control.size} control positions")
        n_obs = case.size
        groups = ((slice(0, n_obs), 1.0),)
        default_strata = None
    else:
        n_obs = case.size + control.size
        groups = ((slice(0, case.size), 1.0), (slice(case.size, n_obs), -1.0))
        default_strata = np.repeat([0, 1], [case.size, control.size])
    if units is None:
        units = resample_units(n_obs, strata=default_strata)
    units = _check_units(units)
    if units.n_samples != n_obs:
        what = "pairs" if paired else "case + control samples"
        raise InputError(f"units describe {units.n_samples} observations but there are {n_obs} "
                         f"{what}; build them with resample_units({n_obs}, ...) over the "
                         f"{what} in order")
    if method == "studentized" and not units.singletons:
        raise InputError("the studentized interval needs one observation per resampling unit "
                         "(its standard error ignores clusters); use bca or percentile with "
                         "clusters")
    members = None
    if not units.singletons:
        members = np.zeros((n_obs, units.n_units))
        members[np.arange(n_obs), units.unit] = 1.0
    sizes = np.bincount(units.unit, minlength=units.n_units)
    if kind == "multinomial":
        bound = sum(int(u.size * sizes[u].max()) for u in units.stratum_units())
    else:
        bound = (_POISSON_UNITS[0] * units.n_units + _POISSON_UNITS[1]) * int(sizes.max())
    return _MeanDesign(case, control, bool(paired), units, groups, members, bound)


def _weights(design: _MeanDesign, replicates, seed, key, kind) -> list[np.ndarray]:
    """All replicates' observation weights, one contiguous (group observations, B) array per
    group, drawn block by block."""
    blocks = [replicate_weights(design.units, replicates, seed=seed, key=key, block=b,
                                kind=kind) for b in replicate_blocks(replicates)]
    return _group_weights(design, blocks)


def _group_weights(design: _MeanDesign, blocks: list[np.ndarray]) -> list[np.ndarray]:
    totals = np.concatenate([b.sum(axis=0) for b in blocks])
    if totals.max() > design.bound:  # Poisson only; never in practice
        raise RuntimeError("a Poisson bootstrap weight total exceeds the exact-sum bound")
    return [np.concatenate([b[sl] for b in blocks], axis=1) for sl, _ in design.groups]


def mean_difference_bootstrap(x, case, control, units: ResampleUnits | None = None, *,
                              replicates: int, method: str, level: float = 0.95, seed: int,
                              key: int, kind: str = "multinomial", fold_change_base=None,
                              paired: bool = False,
                              memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
    """Bootstrap interval of mean(case) - mean(control) for every row of ``x``: (rows, k) float64,
    columns :func:`result_fields` (``effect, ci_low, ci_high`` [+ ``fold_change, fc_ci_low,
    fc_ci_high``]).

    ``x`` (genes x samples; float32 from the store, computed in float64), ``case``/``control``
    sample positions. Unpaired: the observations are the case then the control samples and
    ``units`` (default: each sample its own unit, stratified by group = scipy's two-sample
    bootstrap) is built over them in that order; a group's replicate mean is
    sum(w x) / sum(w) over its samples (a ratio when clusters put several samples in a unit).
    ``paired``: case[j] pairs with control[j], the statistic is the mean of the differences and
    ``units`` is over the pairs (default: each pair its own unit). ``fold_change_base`` (2, 10,
    "e"): also the fold change base**effect (the ratio of back-transformed means of log-scale
    data) with its own interval on the replicate fold changes (studentized: se of the fold
    change by the delta method, |ln base| fc se).

    Replicate group sums are matrix products on the exact grid of ``engine.resample.exact``
    (one product for all groups when every replicate has the same group sizes; see the module
    docstring), so every value is the same bits for any gene chunking, row tile
    (``memory_budget`` bounds one tile's replicate arrays; tiles are also kept near 8 MB per
    array for the cache) or BLAS; BCa's jackknife is closed form ((S - S_u) / (N - N_u) per
    left-out unit, within each stratum). The replicates' weights (samples x replicates float64)
    are held once per call on top of the budget. Missing values (any
    non-finite value; a pair with either side missing) are left out through a mask: a group's
    replicate mean is over its present values, and a replicate (or jackknife value) with no
    present value in a group is NaN, which makes the gene's interval NaN.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise InputError(f"x must be a 2-D (genes x samples) block, got shape {x.shape}")
    design = _mean_design(case, control, units, paired=paired, method=method, level=level,
                          replicates=replicates, kind=kind, fold_change_base=fold_change_base,
                          n_columns=x.shape[1])
    return _mean_difference(x, design, _weights(design, replicates, seed, key, kind),
                            method=method, level=level, fold_change_base=fold_change_base,
                            memory_budget=memory_budget)


def _observations(x, design: _MeanDesign) -> np.ndarray:
    if design.paired:
        with np.errstate(invalid="ignore"):
            return x[:, design.case].astype(np.float64) - x[:, design.control]
    return x[:, np.concatenate([design.case, design.control])].astype(np.float64)


def _tile_rows(memory_budget, replicates, n_obs, n_groups, studentized, fold_change) -> int:
    arrays = n_groups * (4 if studentized else 1) + 4 + (2 if studentized else 0) \
        + (3 if fold_change else 0)
    per_row = 8 * (arrays * replicates + 8 * n_obs)
    budget = _count("memory_budget", memory_budget, 1)
    # no larger than needed to keep a tile's arrays in cache (faster; results do not change)
    return max(1, min(budget // per_row, max(16, _TILE_ELEMENTS // replicates)))


def _mean_difference(x, design: _MeanDesign, group_weights, *, method, level,
                     fold_change_base, memory_budget) -> np.ndarray:
    """The kernel of :func:`mean_difference_bootstrap` on explicit weights: one (group
    observations, B) integer array per group (``_group_weights``); the list is emptied when
    the one-product path covers every row, so that only one copy of the weights is held."""
    y = _observations(x, design)
    studentized = method == "studentized"
    fields = result_fields(fold_change_base)
    out = np.full((y.shape[0], len(fields)), np.nan)
    if y.shape[0] == 0:
        return out
    complete = np.isfinite(y).all(axis=1)
    replicates = group_weights[0].shape[1]
    step = min(y.shape[0], _tile_rows(memory_budget, replicates, y.shape[1],
                                      len(design.groups), studentized,
                                      fold_change_base is not None))
    h = exact.half_bits(design.bound)
    combined = None if studentized else _combined_weights(design, group_weights)
    if combined is not None and complete.all():
        group_weights.clear()  # not needed: free them (the list is the caller's temporary)
    buffers = _Buffers(step, replicates, len(design.groups), studentized,
                       masked=not complete.all(), combined=combined is not None,
                       fold_change=fold_change_base is not None)
    for rows, whole in ((np.flatnonzero(complete), True), (np.flatnonzero(~complete), False)):
        for start in range(0, rows.size, step):
            tile = rows[start:start + step]
            complete = whole and combined is not None
            if complete:  # every replicate has values in both groups: all defined
                stats = _combined_means(y[tile], design, combined, buffers)
            else:
                stats = _replicate_means(y[tile], design, group_weights, h, studentized,
                                         buffers)
            out[tile] = _intervals(stats, method=method, level=level,
                                   fold_change_base=fold_change_base,
                                   fc_buffer=buffers.fold_change, complete=complete)
    return out


@dataclass(frozen=True)
class _Combined:
    """Integer weights whose one product gives the difference of means of every replicate when
    every replicate has the same group counts n_g (stratified multinomial draws of single
    samples): G = n_t sum_case(w x) - n_c sum_control(w x) = n_c n_t (mean_c - mean_t);
    paired: G = sum(w d) = n mean."""

    weights: np.ndarray      # (observations, B)
    coefficients: np.ndarray  # (observations,): the same for the data (every weight 1)
    divisor: float           # n_c n_t (paired: n)
    h: int


#: The one-product path needs integers of 2h bits with h = half_bits(2 n_case n_control)
#: (19 for 100 vs 100: a grid step of 2^-37 of the gene's largest deviation from its mean,
#: against 2^-43 for the separate sums; float32 values below ~2^-13 of that deviation are
#: rounded to it). Below this h (groups beyond ~1,000 x 1,000) the separate sums are used.
_COMBINED_MIN_BITS = 16


def _combined_weights(design: _MeanDesign, group_weights) -> _Combined | None:
    counts = [w.sum(axis=0) for w in group_weights]
    if any(c.size == 0 or c.min() != c.max() for c in counts):
        return None
    n = [float(c[0]) for c in counts]
    coefficients = [1.0] if len(n) == 1 else [n[1], -n[0]]
    weights = np.concatenate([c * w for c, w in zip(coefficients, group_weights)])
    per_obs = np.concatenate([np.full(w.shape[0], c) for c, w in zip(coefficients, group_weights)])
    total = sum(abs(c) * k for c, k in zip(coefficients, n))  # largest sum of |weights|
    h = exact.half_bits(max(total, design.bound))
    if h < _COMBINED_MIN_BITS:  # groups above ~1,000 x 1,000: keep the finer grid
        return None
    return _Combined(weights, per_obs, float(np.prod(n)), h)


def _combined_means(y, design: _MeanDesign, combined: _Combined, buffers) -> _ReplicateStats:
    """The fast path of :func:`_replicate_means` (complete rows, constant group counts): one
    exact product and one scaling pass per tile, the same arithmetic for the data."""
    rows = y.shape[0]
    grid = exact.on_grid(y, combined.h)
    eff = np.matmul(grid.xq, combined.weights, out=buffers.effect[:rows])
    factor = grid.step / combined.divisor
    eff *= factor[:, None]
    obs = (grid.xq @ combined.coefficients) * factor
    jack = _jackknife(grid.xq, None, design)
    offset = grid.offset * sum(sign for _, sign in design.groups)
    if offset.any():  # a single group (paired) keeps the grid's offset
        shift = offset * grid.step
        eff += shift[:, None]
        obs = obs + shift
        jack += offset[:, None]
    jack *= grid.step[:, None]
    return _ReplicateStats(obs, eff, [jack[:, u] for u in design.units.stratum_units()])


def _unit_sums(values, sl, design: _MeanDesign) -> np.ndarray:
    """(rows, n_units): the sums of ``values`` (rows, observations of the group ``sl``) per
    unit, exact for grid integers and 0/1 masks."""
    if design.members is None:  # each observation its own unit: unit i is observation i
        out = np.zeros((values.shape[0], design.units.n_units))
        out[:, sl] = values
        return out
    return exact.exact_sums(np.ascontiguousarray(values)[None], design.members[sl])[0]


def _jackknife(xq, present, design: _MeanDesign) -> np.ndarray:
    """Leave-one-unit-out differences of means (rows, n_units) in grid units, without the
    grid's offset: sum over groups of sign (S - S_u) / (N - N_u), S_u and N_u the left-out
    unit's sum and count in the group (0 when the unit has no observation there)."""
    jack = 0.0
    for sl, sign in design.groups:
        q = np.ascontiguousarray(xq[:, sl])
        mask = None if present is None else present[:, sl].astype(np.float64)
        unit_sums = _unit_sums(q, sl, design)
        if present is None:
            n_unit = _unit_sums(np.ones((1, q.shape[1])), sl, design)
            n = np.full((xq.shape[0], 1), float(q.shape[1]))
        else:
            n_unit = _unit_sums(mask, sl, design)
            n = mask.sum(axis=1)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = (q.sum(axis=1)[:, None] - unit_sums) / (n - n_unit)
        jack = jack + sign * mean
    return jack


class _Buffers:
    """(rows, B) arrays reused by every tile of a call: allocating ~8 MB per tile and array
    costs page faults that take as long as the arithmetic."""

    def __init__(self, rows, replicates, n_groups, studentized, masked, combined,
                 fold_change=False):
        def new():
            return np.empty((rows, replicates))

        powers = 4 if studentized else 1
        general = masked or not combined
        self.sums = [[new() for _ in range(powers)] for _ in range(n_groups)] if general else None
        self.effect = new()
        self.counts = [new() for _ in range(n_groups)] if masked else None
        self.t = new() if studentized else None
        self.var = new() if studentized else None
        self.fold_change = new() if fold_change else None


@dataclass
class _ReplicateStats:
    observed: np.ndarray            # (rows,)
    replicates: np.ndarray          # (rows, B)
    jackknife: list                 # per stratum (rows, n_units_s)
    se: np.ndarray | None = None    # (rows,) studentized only
    t: np.ndarray | None = None     # (rows, B)
    se_replicates: np.ndarray | None = None


def _replicate_means(y, design: _MeanDesign, group_weights, h, studentized,
                     buffers: _Buffers) -> _ReplicateStats:
    """Observed, replicate and jackknife differences of means of one row tile.

    Each group's sums are products of the tile's grid integers with integer weights (exact in
    any order, as ``exact.exact_sums``, into reused buffers); a group mean is sum / count in grid
    units, the same division for the data, every replicate and every jackknife value (so a
    replicate that is a permutation of the data gives exactly the observed statistic)."""
    rows = y.shape[0]
    present = np.isfinite(y)
    complete = bool(present.all())
    if not complete:
        # missing values sit at the row's mean of present values (they weigh 0), so the grid
        # is the one of the present values
        y = np.where(present, y, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            fill = y.sum(axis=1) / present.sum(axis=1)
        fill[~np.isfinite(fill)] = 0.0
        y = np.where(present, y, fill[:, None])
    grid = exact.on_grid(y, h)
    if not complete:
        grid.xq[~present] = 0.0
    powers = exact.grid_powers(grid, squares=studentized)
    eff = buffers.effect[:rows]
    t_sum = buffers.t[:rows] if studentized else None
    obs = None
    var_obs = 0.0
    for g, ((sl, sign), w) in enumerate(zip(design.groups, group_weights)):
        p = np.ascontiguousarray(powers[:, :, sl])
        sums = [buffers.sums[g][k][:rows] for k in range(p.shape[0])]
        for k, out in enumerate(sums):
            np.matmul(p[k], w, out=out)
        s_obs = p[0].sum(axis=1)
        if complete:
            n = w.sum(axis=0)[None, :]
            n_obs = np.full(rows, float(p.shape[2]))
        else:
            mask = present[:, sl].astype(np.float64)
            n = np.matmul(mask, w, out=buffers.counts[g][:rows])
            n_obs = mask.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            if studentized:
                var = _variance(sums[0], sums[1:], n, h, out=buffers.var[:rows])
                var /= n
                if g == 0:
                    t_sum[...] = var
                else:
                    t_sum += var
                var_obs = var_obs + _variance(s_obs, p[1:].sum(axis=2), n_obs, h) / n_obs
            mean = np.divide(sums[0], n, out=sums[0])
            mean_obs = s_obs / n_obs
        if sign < 0:
            mean_obs = -mean_obs
        if g == 0:
            np.multiply(mean, sign, out=eff)
        elif sign < 0:
            eff -= mean
        else:
            eff += mean
        obs = mean_obs if obs is None else obs + mean_obs
    jack = _jackknife(grid.xq, None if complete else present, design)
    # the grid's offset cancels in a difference of two means; a single group (paired) keeps it
    offset = grid.offset * sum(sign for _, sign in design.groups)
    if offset.any():
        obs = obs + offset
        eff += offset[:, None]
        jack = jack + offset[:, None]
    scale = grid.step
    eff *= scale[:, None]
    stats = _ReplicateStats(obs * scale, eff,
                            [jack[:, u] * scale[:, None] for u in design.units.stratum_units()])
    if studentized:
        with np.errstate(divide="ignore", invalid="ignore"):
            se_rep = np.sqrt(t_sum, out=t_sum)
            se_rep *= scale[:, None]
            stats.se = np.sqrt(var_obs) * scale
            t = np.subtract(eff, stats.observed[:, None], out=buffers.var[:rows])
            t /= se_rep
        stats.t = t
        stats.se_replicates = se_rep
    return stats


def _variance(s, parts, n, h, out=None):
    """Sample variance (n - 1) in grid units^2 from exact sums and sums of square halves."""
    hh, hl, ll = parts
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        raw = np.multiply(hh, 2.0 ** (2 * h), out=out)
        raw += hl * 2.0 ** (h + 1)
        raw += ll
        raw -= s * (s / n)
        np.maximum(raw, 0.0, out=raw)  # rounding of a constant group's 0
        raw /= n - 1
        return raw


#: base ** effect for each fold_change_base (ufuncs: work on numpy and Dask arrays alike).
FOLD_CHANGE = {2: np.exp2, 10: lambda e, out=None: np.power(10.0, e, out=out), "e": np.exp}
_LOG_BASE = {2: math.log(2), 10: math.log(10), "e": 1.0}


def _intervals(stats: _ReplicateStats, *, method, level, fold_change_base,
               fc_buffer=None, complete: bool = False) -> np.ndarray:
    """The result columns from the replicate statistics: undefined replicates (a group left
    empty) are left out per gene and counted (``engine.resample.intervals.replicate_interval``).
    ``complete``: every replicate is known to be defined (the fast path), so the intervals are
    computed directly, without the per-row bookkeeping of undefined replicates."""
    studentized = method == "studentized"
    se = {"theta_se": stats.se_replicates, "observed_se": stats.se} if studentized else {}
    if complete and not studentized:
        low, high = confidence_interval(stats.replicates, stats.observed, method=method,
                                        level=level, jackknife=stats.jackknife)
        ci = np.stack([low, high, np.full(low.shape, stats.replicates.shape[1])], axis=1)
    else:
        ci = replicate_interval(stats.replicates, stats.observed, method=method, level=level,
                                jackknife=stats.jackknife, **se)
    columns = [stats.observed, ci[:, 0], ci[:, 1], ci[:, 2]]
    if fold_change_base is not None:
        power = FOLD_CHANGE[fold_change_base]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            fc = power(stats.observed)
            fc_rep = power(stats.replicates, out=None if fc_buffer is None
                           else fc_buffer[:stats.replicates.shape[0]])
            if studentized:  # the delta method: se(b ** e) = |ln b| b ** e se(e)
                ln = _LOG_BASE[fold_change_base]
                se = {"theta_se": ln * fc_rep * stats.se_replicates,
                      "observed_se": ln * fc * stats.se}
            jackknife = None if stats.jackknife is None else [power(j) for j in stats.jackknife]
            fc_ci = replicate_interval(fc_rep, fc, method=method, level=level,
                                       jackknife=jackknife, **se)
        columns += [fc, fc_ci[:, 0], fc_ci[:, 1]]
    return np.stack(columns, axis=1)


def bootstrap_mean_difference(x, case, control, units: ResampleUnits | None = None, *,
                              replicates: int, method: str, level: float = 0.95, seed: int,
                              key: int, kind: str = "multinomial", fold_change_base=None,
                              paired: bool = False, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                              name: str = "bootstrap-mean-difference"):
    """Lazy :func:`mean_difference_bootstrap` of a Dask (genes x samples) array: a (genes, k)
    float64 Dask array, one task per gene chunk (each draws the same replicate blocks itself:
    cheap, and the same bits whatever the chunking). Options are checked now; nothing is
    computed."""
    from engine.stats.features import map_features

    _mean_design(case, control, units, paired=paired, method=method, level=level,
                 replicates=replicates, kind=kind, fold_change_base=fold_change_base,
                 n_columns=x.shape[1])
    check_seed(seed, key)
    return map_features(x, mean_difference_bootstrap, len(result_fields(fold_change_base)),
                        name=name, case=np.asarray(case), control=np.asarray(control),
                        units=units, replicates=replicates, method=method, level=level,
                        seed=seed, key=key, kind=kind, fold_change_base=fold_change_base,
                        paired=paired, memory_budget=task_memory(DEFAULT_MEMORY_BUDGET)
                        if memory_budget is None else memory_budget)
