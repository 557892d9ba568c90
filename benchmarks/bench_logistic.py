"""Per-feature logistic regression, 10,000 features x 200 samples: engine kernel vs statsmodels.

    python benchmarks/bench_logistic.py [--features 10000] [--samples 200] [--subset 500]
                                        [--repeats 3] [--interaction]

Simulated (seeded) log2-like features, a binary outcome driven by 10% of them, two adjustment
covariates (numeric age, a binary one); the model per feature is y ~ 1 + age + flag + z with z
the feature standardised (odds ratio per 1-SD), with --interaction also + h + z:h (3 levels).
The baseline, measured in the same run, is a Python loop of statsmodels ``Logit(y, X).fit()``
(its defaults: Newton, tol 1e-8) on the first --subset features after one warm-up fit,
extrapolated linearly to all features (statsmodels' time per fit does not depend on which
feature it is); the output says so.
The engine is ``engine.stats.logistic.logistic_regression`` on the whole in-memory block (one
task's work, no Dask), best of --repeats. Agreement: max differences of the coefficient, its
standard error and p-value over the subset.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_welch import best  # noqa: E402


def simulate(features: int, samples: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(8.0, 1.0, (features, samples)).astype(np.float32)  # the store's dtype
    covariates = np.column_stack([rng.normal(60, 10, samples), rng.integers(0, 2, samples)])
    h = rng.integers(0, 3, samples)
    dummies = (h[:, None] == np.arange(1, 3)).astype(np.float64)
    signal = x[: max(features // 10, 1)].mean(axis=0) - 8.0
    eta = 4.0 * signal + 0.02 * (covariates[:, 0] - 60) - 0.5
    y = (rng.random(samples) < 1 / (1 + np.exp(-eta))).astype(np.float64)
    return x, y, covariates, dummies


def statsmodels_loop(x, y, covariates, dummies):
    """(coefficient, se, p) of z per feature from one statsmodels Logit fit each."""
    import statsmodels.api as sm

    out = np.empty((len(x), 3))
    ones = np.ones(len(y))
    for i, row in enumerate(x.astype(np.float64)):
        z = (row - row.mean()) / row.std(ddof=1)
        design = np.column_stack([ones, covariates, dummies, z, z[:, None] * dummies])
        j = 1 + covariates.shape[1] + dummies.shape[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.Logit(y, design).fit(disp=0)
        out[i] = fit.params[j], fit.bse[j], fit.pvalues[j]
    return out


def main() -> None:
    from engine.stats.logistic import FIELDS, logistic_regression

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=10000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--subset", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interaction", action="store_true")
    args = parser.parse_args()

    x, y, covariates, dummies = simulate(args.features, args.samples)
    if not args.interaction:
        dummies = np.empty((args.samples, 0))
    subset = min(args.subset, args.features)

    def engine():
        return logistic_regression(x, y, covariates, predictor_scale="sd",
                                   interaction=dummies if args.interaction else None)

    ours = engine()
    engine_s = best(engine, args.repeats)
    statsmodels_loop(x[:1], y, covariates, dummies)  # warm-up: imports, first-call caches
    t = time.perf_counter()
    ref = statsmodels_loop(x[:subset], y, covariates, dummies)
    loop_s = time.perf_counter() - t
    loop_all = loop_s * args.features / subset

    cols = [FIELDS.index(c) for c in ("effect", "se", "p_value")]
    got = ours[:subset][:, cols]
    diff = np.abs(got - ref)
    rel = diff / np.abs(ref)
    separated = int(np.nansum(ours[:, FIELDS.index("separated")]))

    model = "y ~ 1 + age + flag + z" + (" + h + z:h (h: 3 levels)" if args.interaction else "")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"data: {args.features} features x {args.samples} samples float32 (seeded), "
          f"{int(y.sum())} events; model per feature: {model}, z per 1-SD")
    print(f"engine kernel, all {args.features} features (best of {args.repeats}):"
          f"   {engine_s:8.3f} s  ({1e6 * engine_s / args.features:.0f} us per feature)")
    print(f"statsmodels Logit loop, first {subset} features:      {loop_s:8.3f} s  "
          f"({1e6 * loop_s / subset:.0f} us per fit)")
    print(f"statsmodels extrapolated to {args.features} features (x {args.features / subset:g}):"
          f" {loop_all:8.3f} s  (extrapolated, not measured)")
    print(f"ratio statsmodels / engine: {loop_all / engine_s:.1f}x")
    print(f"agreement on the {subset} features: coefficient max |diff| {diff[:, 0].max():.2e} "
          f"(max rel {rel[:, 0].max():.2e}), se max rel {rel[:, 1].max():.2e}, "
          f"p max rel {rel[:, 2].max():.2e}; separated fits (all features): {separated}")


if __name__ == "__main__":
    main()
