"""From an analysis spec to its lazy result Dataset: one small function per kind of analysis."""

from __future__ import annotations

import xarray as xr

from engine.jobs import spec
from engine.jobs.cluster_planners import plan_consensus
from engine.jobs.set_planners import SET_PLANNERS, Context
from engine.resample.rng import analysis_key
from engine.resample.statistic_bootstrap import bootstrap_options
from engine.stats.ancova import ancova
from engine.stats.correlation import correlation
from engine.stats.cox import cox
from engine.stats.deseq2 import deseq2
from engine.stats.limma import formula_model, limma, ols, two_group_model
from engine.stats.logistic import logistic
from engine.stats.per_gene import two_group_test
from engine.stats.survival import kaplan_meier


def _bootstrap(a, ctx: Context):
    """The analysis' bootstrap options with the job seed and the analysis' own stream."""
    return bootstrap_options(a.bootstrap, seed=ctx.seed, key=analysis_key(a.name, "bootstrap"))


def _two_group(a: spec.TwoGroupAnalysis, ds: xr.Dataset, ctx: Context) -> xr.Dataset:
    return two_group_test(ds, test=a.test, group=a.group, case=a.case, control=a.control,
                          pair_by=a.pair_by, variable=a.variable, features=a.features,
                          adjust_method=a.adjust, fold_change_base=a.fold_change_base,
                          bootstrap=a.bootstrap, permutations=a.permutations, seed=ctx.seed,
                          name=a.name)


def _linear_model(a: spec.LinearModelAnalysis, ds: xr.Dataset, ctx: Context) -> xr.Dataset:
    if a.design is None:
        model = two_group_model(ds, group=a.group, case=a.case, control=a.control,
                                pair_by=a.pair_by)
    else:
        model = formula_model(ds, design=a.design, coef=a.coef, contrast=a.contrast,
                              reference=a.reference)
    common = {"variable": a.variable, "features": a.features, "adjust_method": a.adjust,
              "bootstrap": _bootstrap(a, ctx)}
    if a.test == "ols":
        return ols(ds, model, **common)
    return limma(ds, model, trend=a.trend, robust=a.robust, **common)


def _ancova(a: spec.AncovaAnalysis, ds: xr.Dataset, ctx: Context) -> xr.Dataset:
    return ancova(ds, design=a.design, reference=a.reference, anova_type=a.anova_type,
                  slope_of=a.slope_of, slope_by=a.slope_by, means_of=a.means_of,
                  variable=a.variable, features=a.features, confidence=a.confidence,
                  adjust=a.adjust)


def _correlation(a: spec.CorrelationAnalysis, ds: xr.Dataset, ctx: Context) -> xr.Dataset:
    return correlation(ds, method=a.test, covariate=a.covariate, gene=a.gene,
                       stratify_by=a.stratify_by, variable=a.variable, features=a.features,
                       exact=a.exact, confidence=a.confidence, adjust=a.adjust,
                       bootstrap=_bootstrap(a, ctx))


def _logistic(a: spec.LogisticAnalysis, ds: xr.Dataset, ctx: Context) -> xr.Dataset:
    return logistic(ds, outcome=a.outcome, event=a.event, reference=a.reference,
                    predictor_scale=a.predictor_scale, covariates=a.covariates,
                    stratify_by=a.stratify_by, interaction=a.interaction, variable=a.variable,
                    features=a.features, confidence=a.confidence, adjust=a.adjust,
                    bootstrap=_bootstrap(a, ctx))


def _cox(a: spec.CoxAnalysis, ds: xr.Dataset, ctx: Context) -> xr.Dataset:
    return cox(ds, time=a.time, event=a.event, event_value=a.event_value, split=a.split,
               covariates=a.covariates, stratify_by=a.stratify_by, ties=a.ties,
               variable=a.variable, features=a.features, confidence=a.confidence,
               adjust=a.adjust, bootstrap=_bootstrap(a, ctx))


def _kaplan_meier(a: spec.KaplanMeierAnalysis, ds: xr.Dataset, ctx: Context) -> xr.Dataset:
    return kaplan_meier(ds, time=a.time, event=a.event, event_value=a.event_value,
                        group=a.group, split=a.split, variable=a.variable,
                        confidence=a.confidence)


def _deseq2(a: spec.Deseq2Analysis, ds: xr.Dataset, ctx: Context) -> xr.Dataset:
    return deseq2(ds, variable=a.variable, group=a.group, case=a.case, control=a.control,
                  design=a.design, alpha=a.alpha, cooks_cutoff=a.cooks_cutoff,
                  independent_filtering=a.independent_filtering, fit_type=a.fit_type,
                  adjust_method=a.adjust, size_factors=a.size_factors)


PLANNERS = {**SET_PLANNERS, spec.TwoGroupAnalysis: _two_group,
            spec.LinearModelAnalysis: _linear_model,
            spec.AncovaAnalysis: _ancova, spec.CorrelationAnalysis: _correlation,
            spec.LogisticAnalysis: _logistic, spec.CoxAnalysis: _cox,
            spec.KaplanMeierAnalysis: _kaplan_meier, spec.ConsensusAnalysis: plan_consensus,
            spec.Deseq2Analysis: _deseq2}


def plan_analysis(analysis: spec.Strict, ds: xr.Dataset, ctx: Context | None = None
                  ) -> xr.Dataset:
    """The lazy result of one analysis; builds the graph, computes nothing. ``ctx`` gives the
    analyses the job seed (random streams) and the earlier results they read."""
    return PLANNERS[type(analysis)](analysis, ds, ctx or Context(0, {}))
