"""Bootstrap confidence intervals: against scipy.stats.bootstrap on the same resamples, against
plain loops over replicates, determinism, coverage, errors."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, strategies as st
from scipy import special

from engine.errors import InputError
from engine.resample import bootstrap as bs
from engine.resample import intervals
from engine.resample.bootstrap import (
    CI_METHODS,
    REPLICATE_BLOCK,
    bootstrap_mean_difference,
    confidence_interval,
    mean_difference_bootstrap,
    order_statistics,
    replicate_blocks,
    replicate_indices,
    replicate_weights,
    resample_units,
    sample_indices,
    unit_counts,
)
from engine.resample.rng import block_rng

SCIPY_METHODS = ("percentile", "basic", "bca")


def expression(genes, samples, seed=0, loc=8.0):
    """Log-expression-like float32 values (the store's dtype)."""
    return np.random.default_rng(seed).normal(loc, 1.0, (genes, samples)).astype(np.float32)


def difference(a, b, axis=-1):
    return a.mean(axis=axis) - b.mean(axis=axis)


def mean(a, axis=-1):
    return a.mean(axis=axis)


def assert_close(actual, expected, rtol=1e-12, atol=1e-13):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- scipy


@pytest.mark.parametrize("method", SCIPY_METHODS)
def test_two_sample_equals_scipy_on_the_same_resamples(method):
    """replicates = one block: scipy given block 0's generator draws exactly our replicates
    (case indices (256, n1), then control (256, n2): scipy's order for a batch of 256)."""
    x = expression(5, 43, seed=1)
    case, control = np.arange(0, 43, 2), np.arange(1, 43, 2)  # interleaved groups
    ours = mean_difference_bootstrap(x, case, control, replicates=REPLICATE_BLOCK,
                                     method=method, level=0.9, seed=11, key=5)
    data = x.astype(np.float64)
    ref = scipy.stats.bootstrap((data[:, case], data[:, control]), difference,
                                n_resamples=REPLICATE_BLOCK, method=method, axis=-1,
                                confidence_level=0.9, rng=block_rng(11, 5, 0))
    assert_close(ours[:, 0], difference(data[:, case], data[:, control]))
    assert_close(ours[:, 1], ref.confidence_interval.low)
    assert_close(ours[:, 2], ref.confidence_interval.high)


@pytest.mark.parametrize("method", SCIPY_METHODS)
def test_paired_and_one_sample_equal_scipy(method):
    x = expression(4, 40, seed=2)
    data = x.astype(np.float64)
    case, control = np.arange(20), np.arange(20, 40)
    ours = mean_difference_bootstrap(x, case, control, replicates=REPLICATE_BLOCK,
                                     method=method, seed=3, key=8, paired=True)
    ref = scipy.stats.bootstrap((data[:, case], data[:, control]), difference, paired=True,
                                n_resamples=REPLICATE_BLOCK, method=method, axis=-1,
                                rng=block_rng(3, 8, 0))
    assert_close(ours[:, 1], ref.confidence_interval.low)
    assert_close(ours[:, 2], ref.confidence_interval.high)
    # one-sample mean: differences from a column of zeros
    zeros = np.hstack([x, np.zeros((4, 1), np.float32)])
    ours = mean_difference_bootstrap(zeros, case, np.full(20, 40), replicates=REPLICATE_BLOCK,
                                     method=method, seed=3, key=8, paired=True)
    ref = scipy.stats.bootstrap((data[:, case],), mean, n_resamples=REPLICATE_BLOCK,
                                method=method, axis=-1, rng=block_rng(3, 8, 0))
    assert_close(ours[:, 0], data[:, case].mean(axis=1))
    assert_close(ours[:, 1], ref.confidence_interval.low)
    assert_close(ours[:, 2], ref.confidence_interval.high)


def scipy_draws(sizes, n_resamples, seed, batch=None):
    """scipy.stats.bootstrap's resample indices (scipy 1.17 ``_bootstrap_resample``): per batch,
    for each sample in order, ``rng.integers(0, n, (batch, n))`` from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    batch = batch or n_resamples
    draws = [[] for _ in sizes]
    for start in range(0, n_resamples, batch):
        width = min(batch, n_resamples - start)
        for j, n in enumerate(sizes):
            draws[j].append(rng.integers(0, n, (width, n)))
    return [np.concatenate(d) for d in draws]


@pytest.mark.parametrize("method", SCIPY_METHODS)
@pytest.mark.parametrize("batch", [None, 300])
def test_weight_matrix_on_scipys_draws_equals_scipy(method, batch):
    """scipy's own draws (one generator, 1000 resamples, optionally in batches of 300) as our
    replicate weight matrix: the replicate means, jackknife and interval equal scipy's."""
    x = expression(6, 45, seed=4)
    data = x.astype(np.float64)
    case, control = np.arange(20), np.arange(20, 45)
    i_case, i_control = scipy_draws([20, 25], 1000, seed=9, batch=batch)
    design = bs._mean_design(case, control, None, paired=False, method=method, level=0.95,
                             replicates=1000, kind="multinomial", fold_change_base=None)
    rows = np.hstack([i_case, 20 + i_control])  # units: case then control observations
    weights = unit_counts(design.units, rows)[:, design.units.unit].T.astype(np.float64)
    ours = bs._mean_difference(x, design, bs._group_weights(design, [weights]), method=method,
                               level=0.95, fold_change_base=None, memory_budget=2**20)
    ref = scipy.stats.bootstrap((data[:, case], data[:, control]), difference, batch=batch,
                                n_resamples=1000, method=method, axis=-1, rng=9)
    assert_close(ours[:, 1], ref.confidence_interval.low)
    assert_close(ours[:, 2], ref.confidence_interval.high)


@pytest.mark.parametrize("method", SCIPY_METHODS)
def test_confidence_interval_on_scipys_distribution(method):
    """confidence_interval alone, on scipy's bootstrap distribution and a plainly computed
    jackknife (leave one observation of one sample out)."""
    rng = np.random.default_rng(5)
    a, b = rng.gamma(2.0, size=(7, 15)), rng.normal(size=(7, 18))
    ref = scipy.stats.bootstrap((a, b), difference, n_resamples=2999, method=method, axis=-1,
                                confidence_level=0.8, rng=1)
    jack = [np.stack([difference(np.delete(a, i, axis=1), b) for i in range(15)], axis=1),
            np.stack([difference(a, np.delete(b, i, axis=1)) for i in range(18)], axis=1)]
    low, high = confidence_interval(ref.bootstrap_distribution, difference(a, b),
                                    method=method, level=0.8, jackknife=jack)
    assert_close(low, ref.confidence_interval.low)
    assert_close(high, ref.confidence_interval.high)


# --------------------------------------------------------------------------- plain loops


def draws(units, replicates, seed, key):
    return np.concatenate([replicate_indices(units, replicates, seed=seed, key=key, block=b)
                           for b in replicate_blocks(replicates)])


def group_difference(obs, group, positions):
    """mean(case) - mean(control) over the present values at ``positions`` (repeats count);
    with no control group (paired differences) the mean of the case group."""
    value = 0.0
    for g, sign in ((0, 1.0), (1, -1.0)):
        if (group == g).any():
            sel = positions[group[positions] == g]
            value = value + sign * (np.nanmean(obs[:, sel], axis=1) if sel.size else np.nan)
    return value


def loop_statistics(obs, group, units, unit_rows):
    """Observed, replicate and jackknife (leave one unit of a stratum out) statistics by plain
    index resampling: obs (genes, m) with NaN missing, group (m,) 0 case / 1 control."""
    with _quiet():
        replicates = np.stack([group_difference(obs, group, np.asarray(idx)) for idx in
                               _as_list(sample_indices(units, unit_rows))], axis=1)
        observed = group_difference(obs, group, np.arange(obs.shape[1]))
        jackknife = [np.stack([group_difference(obs, group, np.flatnonzero(units.unit != u))
                               for u in members], axis=1)
                     for members in units.stratum_units()]
    return observed, replicates, jackknife


class _quiet:
    """Silences numpy's 'mean of empty slice' warnings of the plain references."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _as_list(indices):
    return list(indices) if isinstance(indices, list) else list(np.asarray(indices))


def plain_interval(observed, replicates, jackknife, method, level):
    """Efron & Tibshirani's percentile / basic / BCa, written out row by row (np.quantile's
    linear interpolation = scipy's)."""
    alpha = (1 - level) / 2
    low, high = np.full(observed.size, np.nan), np.full(observed.size, np.nan)
    for r in range(observed.size):
        theta = replicates[r][np.isfinite(replicates[r])]  # undefined replicates left out
        if theta.size < 2 or np.isnan(observed[r]):
            continue
        levels = [alpha, 1 - alpha]
        if method == "bca":
            below = (np.mean(theta < observed[r]) + np.mean(theta <= observed[r])) / 2
            z0 = special.ndtri(below)
            num = den = 0.0
            for values in jackknife:
                v = values[r][np.isfinite(values[r])]
                if v.size == 0:
                    continue
                u = (v.size - 1) * (v.mean() - v)
                num += (u**3).sum() / v.size**3
                den += (u**2).sum() / v.size**2
            a = num / (6 * den**1.5)
            z = special.ndtri(np.array(levels))
            levels = special.ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
            if np.isnan(levels).any():
                continue
        q = np.quantile(theta, levels)
        low[r], high[r] = (2 * observed[r] - q[1], 2 * observed[r] - q[0]) \
            if method == "basic" else (q[0], q[1])
    return low, high


def unpaired(x, case, control):
    obs = x[:, np.concatenate([case, control])].astype(np.float64)
    return obs, np.repeat([0, 1], [case.size, control.size])


@pytest.mark.parametrize("method", SCIPY_METHODS)
@pytest.mark.parametrize("layout", ["stratified", "clusters", "clusters_unstratified",
                                    "paired", "poisson"])
def test_weight_matrix_equals_loop_over_replicates(method, layout):
    x = expression(8, 30, seed=6)
    x[2, 3] = np.nan                    # one missing value
    x[3, [1, 4, 20]] = np.nan           # several, in both groups
    case, control = np.arange(14), np.arange(14, 30)
    kind = "multinomial"
    paired = layout == "paired"
    if paired:
        case, control = np.arange(15), np.arange(15, 30)
        obs = (x[:, case].astype(np.float64) - x[:, control])
        group = np.zeros(15, dtype=int)
        units = resample_units(15)
    else:
        obs, group = unpaired(x, case, control)
        if layout == "clusters":      # repeated biopsies: patients of 1-3 samples per group
            patient = [f"p{i // 3}" for i in range(14)] + [f"q{i // 2}" for i in range(16)]
            units = resample_units(30, clusters=patient, strata=group)
        elif layout == "clusters_unstratified":  # a patient gives one case and one control
            patient = [f"p{i % 14}" for i in range(14)] + [f"p{i % 14}" for i in range(16)]
            units = resample_units(30, clusters=patient)
        else:
            units = resample_units(30, strata=group)
            kind = "poisson" if layout == "poisson" else kind
    ours = mean_difference_bootstrap(x, case, control, units, replicates=600, method=method,
                                     seed=21, key=4, kind=kind, paired=paired)
    if kind == "poisson":
        weights = np.concatenate([replicate_weights(units, 600, seed=21, key=4, block=b,
                                                    kind="poisson")
                                  for b in replicate_blocks(600)], axis=1)
        # Poisson weights as a list of repeated positions
        rows = [np.repeat(np.arange(30), w.astype(int)) for w in weights.T]
        with _quiet():
            replicates = np.stack([group_difference(obs, group, r) for r in rows], axis=1)
        observed, _, jackknife = loop_statistics(obs, group, units, draws(units, 2, 21, 4))
    else:
        observed, replicates, jackknife = loop_statistics(obs, group, units,
                                                          draws(units, 600, 21, 4))
    low, high = plain_interval(observed, replicates, jackknife, method, 0.95)
    assert_close(ours[:, 0], observed)
    assert_close(ours[:, 1], low)
    assert_close(ours[:, 2], high)
    assert np.isfinite(ours[[0, 1, 2], 1:]).all()


def test_studentized_equals_loop_with_welch_standard_errors():
    x = expression(6, 36, seed=7)
    x[1, 5] = np.nan
    case, control = np.arange(16), np.arange(16, 36)
    ours = mean_difference_bootstrap(x, case, control, replicates=700, method="studentized",
                                     level=0.9, seed=2, key=3, fold_change_base=2)
    obs, group = unpaired(x, case, control)
    units = resample_units(36, strata=group)

    def welch(positions):
        a = obs[:, positions[group[positions] == 0]]
        b = obs[:, positions[group[positions] == 1]]
        na, nb = np.isfinite(a).sum(1), np.isfinite(b).sum(1)
        diff = np.nanmean(a, 1) - np.nanmean(b, 1)
        se = np.sqrt(np.nanvar(a, 1, ddof=1) / na + np.nanvar(b, 1, ddof=1) / nb)
        return diff, se

    theta, se = welch(np.arange(36))
    reps = [welch(np.asarray(idx)) for idx in sample_indices(units, draws(units, 700, 2, 3))]
    t = np.stack([(d - theta) / s for d, s in reps], axis=1)
    q = np.quantile(t, [0.05, 0.95], axis=1)
    assert_close(ours[:, 0], theta)
    assert_close(ours[:, 1], theta - q[1] * se)
    assert_close(ours[:, 2], theta - q[0] * se)
    # fold change: delta-method se |ln 2| fc se, replicate t of the fold changes
    fc = 2.0**theta
    t_fc = np.stack([(2.0**d - fc) / (np.log(2) * 2.0**d * s) for d, s in reps], axis=1)
    q = np.quantile(t_fc, [0.05, 0.95], axis=1)
    assert_close(ours[:, 4], fc)
    assert_close(ours[:, 5], fc - q[1] * np.log(2) * fc * se)
    assert_close(ours[:, 6], fc - q[0] * np.log(2) * fc * se)


@pytest.mark.parametrize("method", SCIPY_METHODS)
@pytest.mark.parametrize("base", [2, 10, "e"])
def test_fold_change_interval_is_computed_on_replicate_fold_changes(method, base):
    x = expression(5, 24, seed=8)
    case, control = np.arange(12), np.arange(12, 24)
    ours = mean_difference_bootstrap(x, case, control, replicates=500, method=method, seed=1,
                                     key=1, fold_change_base=base)
    assert ours.shape == (5, 7)
    power = {2: 2.0, 10: 10.0, "e": np.e}[base]
    obs, group = unpaired(x, case, control)
    units = resample_units(24, strata=group)
    observed, replicates, jackknife = loop_statistics(obs, group, units, draws(units, 500, 1, 1))
    low, high = plain_interval(power**observed, power**replicates,
                               [power**j for j in jackknife], method, 0.95)
    assert_close(ours[:, 4], power**observed)
    assert_close(ours[:, 5], low)
    assert_close(ours[:, 6], high)
    if method == "basic":  # basic is not transformation-respecting: not base**(effect CI)
        assert not np.allclose(ours[:, 5], power ** ours[:, 1], rtol=1e-6)


# --------------------------------------------------------------------------- units and draws


def test_replicate_weights_are_counts_of_replicate_indices():
    units = resample_units(9, clusters=list("aabbccdde"), strata=[0, 0, 0, 0, 1, 1, 1, 1, 1])
    for block in replicate_blocks(600):
        rows = replicate_indices(units, 600, seed=4, key=2, block=block)
        weights = replicate_weights(units, 600, seed=4, key=2, block=block)
        counts = np.stack([np.bincount(r, minlength=units.n_units) for r in rows])
        np.testing.assert_array_equal(weights, counts[:, units.unit].T)
        assert weights.shape == (9, min(REPLICATE_BLOCK, 600 - block * REPLICATE_BLOCK))


def test_stratified_draws_keep_group_sizes_and_clusters_move_together():
    group = np.repeat([0, 1], [7, 6])
    patient = [0, 0, 1, 2, 2, 3, 4, 5, 5, 6, 6, 7, 7]
    units = resample_units(13, clusters=patient, strata=group)
    rows = replicate_indices(units, 256, seed=0, key=0, block=0)
    # position s of a row holds a unit of the stratum of position s
    np.testing.assert_array_equal(units.stratum[rows], np.broadcast_to(units.stratum,
                                                                       rows.shape))
    weights = replicate_weights(units, 256, seed=0, key=0, block=0)
    np.testing.assert_array_equal(weights[units.unit == 0], weights[[0, 0]])  # pair moves
    unit_weights = unit_counts(units, rows)
    np.testing.assert_array_equal(unit_weights[:, units.stratum == 0].sum(1), 5)  # 5 units
    np.testing.assert_array_equal(unit_weights[:, units.stratum == 1].sum(1), 3)
    # sample positions: both samples of a drawn patient, variable length
    positions = sample_indices(units, rows[:3])
    assert isinstance(positions, list)
    for idx, r in zip(positions, rows[:3]):
        np.testing.assert_array_equal(np.sort(idx), np.sort(np.concatenate(
            [np.flatnonzero(units.unit == u) for u in r])))
    # equal-size units give a matrix
    pairs = resample_units(6, clusters=[0, 0, 1, 1, 2, 2])
    rows = replicate_indices(pairs, 5, seed=0, key=0, block=0)
    idx = sample_indices(pairs, rows)
    np.testing.assert_array_equal(idx, np.stack([2 * rows, 2 * rows + 1], axis=2).reshape(5, 6))


def test_units_are_numbered_by_first_sample():
    # 'c' has a single unit: refused
    with pytest.raises(InputError, match="single resampling unit"):
        resample_units(5, clusters=["z", "a", "z", "m", "a"], strata=["t", "t", "t", "c", "t"])
    units = resample_units(6, clusters=["z", "a", "z", "m", "a", "n"],
                           strata=["t", "t", "t", "c", "t", "c"])
    np.testing.assert_array_equal(units.unit, [0, 1, 0, 2, 1, 3])
    np.testing.assert_array_equal(units.stratum, [0, 0, 1, 1])


def test_replicate_j_does_not_depend_on_the_number_of_replicates():
    units = resample_units(12, strata=np.repeat([0, 1], 6))
    short = draws(units, 300, 5, 6)
    long = draws(units, 1000, 5, 6)
    np.testing.assert_array_equal(short, long[:300])
    for kind in bs.WEIGHT_KINDS:
        w300 = replicate_weights(units, 300, seed=5, key=6, block=1, kind=kind)
        w1000 = replicate_weights(units, 1000, seed=5, key=6, block=1, kind=kind)
        np.testing.assert_array_equal(w300, w1000[:, :300 - REPLICATE_BLOCK])
    # and different keys, seeds and blocks give different replicates
    assert not np.array_equal(short, draws(units, 300, 5, 7))
    assert not np.array_equal(short, draws(units, 300, 6, 6))
    assert not np.array_equal(long[:256], long[256:512])


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("method", CI_METHODS)
def test_same_bits_for_any_tile_chunking_and_budget(method):
    x = expression(61, 40, seed=9)
    x[[3, 17, 40], [2, 30, 11]] = np.nan
    case, control = np.arange(0, 40, 2), np.arange(1, 40, 2)
    kwargs = dict(replicates=1100, method=method, seed=8, key=12, fold_change_base=2)
    whole = mean_difference_bootstrap(x, case, control, **kwargs)
    tiny = mean_difference_bootstrap(x, case, control, memory_budget=1, **kwargs)
    parts = np.concatenate([mean_difference_bootstrap(x[a:b], case, control, **kwargs)
                            for a, b in ((0, 5), (5, 6), (6, 33), (33, 61))])
    for other in (tiny, parts):
        np.testing.assert_array_equal(whole, other)
    assert np.isfinite(whole).all()


def test_lazy_wrapper_computes_nothing_and_gives_the_same_bits(no_compute):
    x = expression(50, 24, seed=10)
    case, control = np.arange(12), np.arange(12, 24)
    kwargs = dict(replicates=400, method="bca", seed=1, key=2, fold_change_base=10)
    ref = mean_difference_bootstrap(x, case, control, **kwargs)
    with no_compute():
        lazy7 = bootstrap_mean_difference(da.from_array(x, chunks=(7, -1)), case, control,
                                          name="b", **kwargs)
        lazy50 = bootstrap_mean_difference(da.from_array(x, chunks=(50, -1)), case, control,
                                           name="b", **kwargs)
    assert lazy7.shape == (50, 7) and lazy7.dtype == np.float64
    np.testing.assert_array_equal(lazy7.compute(scheduler="sync"), ref)
    np.testing.assert_array_equal(lazy50.compute(scheduler="threads"), ref)
    with pytest.raises(InputError, match="method"):
        bootstrap_mean_difference(da.from_array(x), case, control, replicates=10,
                                  method="bcA", seed=1, key=2)


# --------------------------------------------------------------------------- NaN and errors


def test_missing_values_give_nan_not_errors():
    x = expression(5, 10, seed=11)
    case, control = np.arange(5), np.arange(5, 10)
    x[0, :5] = np.nan            # a group without values: NaN everything, no replicate used
    x[1, 1:5] = np.nan           # one case value: replicates that miss it are left out
    x[2, :] = np.nan
    out = mean_difference_bootstrap(x, case, control, replicates=300, method="bca", seed=1,
                                    key=1, fold_change_base="e")
    n_boot = out[:, 3]
    assert np.isnan(np.delete(out[[0, 2]], 3, axis=1)).all() and (n_boot[[0, 2]] == 0).all()
    # P(a replicate draws the one present case value) = 1 - (4/5)^5 = 0.67
    assert 150 < n_boot[1] < 250 and np.isfinite(out[1]).all()
    assert np.isfinite(out[3:]).all() and (n_boot[3:] == 300).all()


def test_confidence_interval_nan_rows_and_vectorised_levels():
    rng = np.random.default_rng(12)
    theta = rng.normal(size=(6, 1500))
    theta[1, 7] = np.nan
    observed = theta.mean(axis=1)
    observed[2] = np.nan
    jack = [rng.normal(size=(6, 9))]
    jack[0][3, 0] = np.nan
    for method in SCIPY_METHODS:
        low, high = confidence_interval(theta, observed, method=method, level=0.95,
                                        jackknife=jack)
        bad = [1, 2, 3] if method == "bca" else [1, 2]
        assert np.isnan(low[bad]).all() and np.isnan(high[bad]).all()
        good = np.setdiff1d(np.arange(6), bad)
        assert np.isfinite(low[good]).all()
    # per-row levels (BCa) equal scipy's quantile row by row
    p = rng.uniform(0, 1, (6, 2))
    p[0] = [0, 1]
    q = intervals._quantiles(theta, p)
    for r in (0, 3, 4, 5):
        np.testing.assert_array_equal(q[r], scipy.stats.quantile(theta[r], p[r]))


@given(st.integers(1, 40), st.sampled_from([3, 1023, 1024, 2500, 6000]),
       st.sampled_from(["normal", "ties", "mass", "inf", "nan", "skewed"]),
       st.integers(0, 2**32 - 1))
def test_order_statistics_are_exact(rows, n, kind, seed):
    """Exact for any data: brackets that miss (ties, a mass of equal values: the rows that
    gather too much are sorted whole), infinities, skewed rows of either sign."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(rows, n))
    if kind == "ties":
        a = np.round(a)
    elif kind == "mass":  # e.g. a discrete statistic: most replicates share one low value
        a[rng.random(a.shape) < 0.7] = -1.5
    elif kind == "inf":
        a[rng.random(a.shape) < 0.02] = np.inf
        a[rng.random(a.shape) < 0.02] = -np.inf
    elif kind == "nan":  # sorts last, as in np.sort
        a[rng.random(a.shape) < 0.01] = np.nan
    elif kind == "skewed":
        a = np.exp(4 * a) * rng.choice([-1, 1], (rows, 1))
    ranks = rng.integers(0, n, (rows, 4))
    if rng.random() < 0.5:  # the tails, as for an interval
        ranks[:, :2] = [int(0.025 * n), int(0.975 * n)]
    else:
        ranks[:, :2] = [0, n - 1]
    np.testing.assert_array_equal(order_statistics(a, ranks),
                                  np.take_along_axis(np.sort(a, axis=1), ranks, axis=1))
    if n > 3:  # a row of all-equal values
        a[0] = 1.0
        np.testing.assert_array_equal(order_statistics(a, ranks)[0], 1.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="bca_"), "unknown bootstrap interval method"),
    (dict(level=1.0), "level"),
    (dict(level=0), "level"),
    (dict(level="95%"), "level"),
    (dict(replicates=0), "replicates"),
    (dict(replicates=2.5), "replicates"),
    (dict(replicates=True), "replicates"),
    (dict(kind="bayesian"), "weights"),
    (dict(fold_change_base=3), "fold_change_base"),
    (dict(seed=-1), "seed"),
])
def test_bad_options(kwargs, match):
    x = expression(3, 8)
    args = {**dict(replicates=100, method="percentile", level=0.95, seed=1, key=1), **kwargs}
    with pytest.raises(InputError, match=match):
        mean_difference_bootstrap(x, np.arange(4), np.arange(4, 8), **args)


def test_bad_units():
    x = expression(3, 8)
    case, control = np.arange(4), np.arange(4, 8)
    with pytest.raises(InputError, match="cluster.*two strata"):
        resample_units(8, clusters=[0, 1, 2, 3, 0, 1, 2, 3], strata=[0] * 4 + [1] * 4)
    with pytest.raises(InputError, match="single resampling unit"):
        mean_difference_bootstrap(x, np.arange(1), np.arange(1, 8), replicates=10,
                                  method="percentile", seed=1, key=1)
    with pytest.raises(InputError, match="single resampling unit"):
        resample_units(4, clusters=["a"] * 4)
    with pytest.raises(InputError, match="missing"):
        resample_units(3, clusters=["a", None, "b"])
    with pytest.raises(InputError, match="missing"):
        resample_units(3, strata=["a", "nan", "b"])
    with pytest.raises(InputError, match="one label per sample"):
        resample_units(3, strata=["a", "b"])
    with pytest.raises(InputError, match="units describe 6 observations"):
        mean_difference_bootstrap(x, case, control, resample_units(6), replicates=10,
                                  method="percentile", seed=1, key=1)
    clustered = resample_units(8, clusters=[0, 0, 1, 1, 2, 2, 3, 3], strata=[0] * 4 + [1] * 4)
    with pytest.raises(InputError, match="studentized.*one observation per resampling unit"):
        mean_difference_bootstrap(x, case, control, clustered, replicates=10,
                                  method="studentized", seed=1, key=1)
    with pytest.raises(InputError, match="aligned pairs"):
        mean_difference_bootstrap(x, case, control[:3], replicates=10, method="bca", seed=1,
                                  key=1, paired=True)
    with pytest.raises(InputError, match="outside"):
        replicate_indices(resample_units(4), 300, seed=1, key=1, block=2)


# --------------------------------------------------------------------------- coverage


def coverage(method, *, n, datasets, replicates, draw, truth, paired=False, seed=0):
    x = draw(np.random.default_rng(seed), (datasets, 2 * n)).astype(np.float32)
    case, control = np.arange(n), np.arange(n, 2 * n)
    out = mean_difference_bootstrap(x, case, control, replicates=replicates, method=method,
                                    seed=seed, key=1, paired=paired)
    return float(np.mean((out[:, 1] <= truth) & (truth <= out[:, 2])))


@pytest.mark.slow
def test_coverage_within_one_point_of_nominal(capsys):
    """20,000 simulated datasets (one row each: one call), nominal 95%, 1,000 replicates; the
    Monte-Carlo SE of a coverage near 0.95 is 0.15 points.

    Normal data, two groups of 50 (the upper end of the issue's 30-50): first-order theory puts
    percentile, basic and BCa at P(|t_98| < 1.96 sqrt(49/50)) = 94.5% (the bootstrap variance has
    divisor n; at 30 per group it is 94.1%, outside 1 point, which is why 50) and the studentized
    interval at 95%: all four asserted within 1 point of 95%.
    Skewed data, the mean of 50 paired differences ~ Exp(1) - 1 (skewness 2): percentile and
    basic undercover (first-order); BCa and studentized are second-order accurate but BCa's
    O(1/n) error is still large at this skewness (Hesterberg 2015, Am Stat 69:371), so only the
    studentized interval is asserted there; all are printed.
    """
    normal = dict(n=50, datasets=20000, replicates=1000, truth=0.0,
                  draw=lambda rng, shape: rng.normal(0, 1, shape))

    def exponential_pairs(rng, shape):  # case ~ Exp(1), control = 1: differences Exp(1) - 1
        half = (shape[0], shape[1] // 2)
        return np.hstack([rng.exponential(1, half), np.ones(half)])

    skewed = dict(n=50, datasets=20000, replicates=1000, truth=0.0, paired=True,
                  draw=exponential_pairs)
    table = {}
    for setting, params, asserted in (("normal, 2 x 50", normal, CI_METHODS),
                                      ("Exp(1) paired, 50", skewed, ("studentized",))):
        for method in CI_METHODS:
            table[(setting, method)] = (coverage(method, seed=31, **params), method in asserted)
    with capsys.disabled():
        print("\nbootstrap coverage, nominal 95%, 20,000 datasets, 1,000 replicates:")
        for (setting, method), (value, asserted) in table.items():
            print(f"  {setting:20s} {method:12s} {100 * value:5.2f}%"
                  f"{'  (asserted within 1 point)' if asserted else ''}")
    for (setting, method), (value, asserted) in table.items():
        if asserted:
            assert abs(value - 0.95) < 0.01, (setting, method, value)
