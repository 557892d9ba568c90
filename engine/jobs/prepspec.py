"""The ``preprocess:`` steps of a job and the ``samples:`` filter of an analysis.

A step is a one-key mapping, ``- quantile: {}``, ``- log2: {offset: 1}``; the steps run in
order (README: Preprocessing). Each step's options are a small model below; ``STEPS`` maps the
key to it. ``engine.preprocess.pipeline`` runs them.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, ValidationError, create_model, model_validator

from engine.jobs.base import Label, SampleFilter, Strict

NormMethod = Literal["TMM", "TMMwsp", "RLE", "upperquartile", "none"]


class Log2(Strict):
    offset: float = Field(default=1.0, ge=0, description="log2(x + offset); x + offset <= 0 "
                                                         "gives NaN")


class Quantile(Strict):
    """preprocessCore normalize.quantiles (ties averaged)."""


class UpperQuartile(Strict):
    p: float = Field(default=0.75, gt=0, lt=1, description="the quantile each sample is "
                                                            "scaled by")


class ZScore(Strict):
    ddof: Literal[0, 1] = Field(default=1, description="SD denominator n - ddof")


class Cpm(Strict):
    """Counts per million with edgeR normalisation factors (edgeR cpm)."""

    method: NormMethod = Field(default="TMM", description="calcNormFactors method")
    log: bool = Field(default=False, description="log2 CPM with edgeR's prior count")
    prior_count: float = Field(default=2.0, ge=0, description="edgeR prior.count (log only)")


class TmmLogCpm(Strict):
    """Counts to log2 CPM after TMM normalisation (edgeR cpm(y, log=TRUE))."""

    prior_count: float = Field(default=2.0, ge=0, description="edgeR prior.count")
    method: NormMethod = Field(default="TMM", description="calcNormFactors method")


class Vst(Strict):
    """DESeq2 varianceStabilizingTransformation of the counts."""

    fit_type: Literal["parametric", "mean"] = "parametric"
    size_factors: Literal["ratio", "poscounts"] = "ratio"


class FilterByExpr(Strict):
    """Keep genes with enough counts (edgeR filterByExpr)."""

    group: str | None = Field(default=None, description="sample annotation of the groups")
    min_count: float = 10
    min_total_count: float = 15
    large_n: int = 10
    min_prop: float = Field(default=0.7, gt=0, le=1)


class DropZeroGenes(Strict):
    """Drop genes whose values are zero (or missing) in every sample."""


class SelectSamples(SampleFilter):
    """Keep only the samples matching a condition (the rest of the job sees only them)."""


class Aggregate(Strict):
    by: str = Field(description="sample annotation of the unit, e.g. patient")
    within: list[str] = Field(default_factory=list, description="annotations that stay "
                              "separate, e.g. [timepoint]: one sample per patient and time")
    how: Literal["mean", "median"] = Field(default="mean", description="float variables; "
                                           "integer counts are summed")


class Delta(Strict):
    by: str = Field(description="sample annotation of the patient")
    time: str = Field(description="sample annotation of the time point")
    before: Label
    after: Label


class Collapse(Strict):
    by: str = Field(default="symbol", description="gene annotation to collapse probes to")
    method: Literal["max_mean", "max_variance", "mean", "median", "sum"] = Field(
        default="max_mean", description="max_mean / max_variance: the probe with the largest "
        "mean / variance represents the gene (WGCNA collapseRows); mean, median, sum: sample "
        "by sample (integer counts are summed)")


class PcaOutliers(Strict):
    component: int | list[int] = Field(default=1, description="1-based PC (or a list: an "
                                       "outlier on any of them)")
    sd: float = Field(default=3.0, gt=0, description="outside mean +/- sd * SD of the scores")
    n_components: int = Field(default=10, ge=1, le=100)
    scale: bool = Field(default=False, description="scale genes to unit variance first")
    method: Literal["randomized", "exact"] = Field(
        default="randomized", description="randomized SVD (subspace iteration, one pass over "
        "the data per iteration) or exact (eigen-decomposition of the samples x samples "
        "matrix; up to a few thousand samples)")
    power_iterations: int = Field(default=4, ge=0, le=50)
    oversampling: int = Field(default=10, ge=0, le=200)
    sensitivity: bool = Field(default=True, description="also run every analysis with the "
                              "outliers kept (tables named <analysis>.outliers_kept)")

    @model_validator(mode="after")
    def _components(self):
        chosen = self.component if isinstance(self.component, list) else [self.component]
        if not chosen or min(chosen) < 1 or max(chosen) > self.n_components:
            raise ValueError(f"component must be between 1 and n_components "
                             f"({self.n_components})")
        return self


class Nanostring(Strict):
    """nSolver-style normalisation of nCounter counts (code_class gene annotation): positive
    control scaling, background subtraction, housekeeping scaling; lane QC flags."""

    positive: Literal["geomean", "sum"] | None = "geomean"
    exclude_pos_f: bool = Field(default=False, description="leave POS_F out of the positive "
                                                           "control summary")
    background: Literal["mean_sd", "max", "mean"] | None = "mean_sd"
    background_sd: float = Field(default=2.0, ge=0, description="mean_sd: mean + this many "
                                                                "SD of the negatives")
    background_floor: float = Field(default=0.0, ge=0, description="floor after subtraction")
    background_first: bool = Field(default=False, description="subtract background before "
                                                              "positive scaling")
    housekeeping: Literal["geomean"] | None = "geomean"
    housekeeping_genes: list[str] | None = Field(default=None, description="default: the "
                                                 "Housekeeping probes of the panel")
    positive_factor_range: tuple[float, float] = (0.3, 3.0)
    housekeeping_factor_range: tuple[float, float] = (0.1, 10.0)
    fov_ratio_min: float = Field(default=0.75, description="imaging QC: FOV counted / FOV "
                                                           "count below this is flagged")
    binding_density_range: tuple[float, float] = Field(
        default=(0.1, 2.25), description="MAX/FLEX 0.1-2.25; SPRINT (0.1, 1.8)")
    linearity_r2_min: float = Field(default=0.95, description="positive control linearity R^2")
    lod_sd: float = Field(default=2.0, ge=0, description="limit of detection: POS_E above "
                                                         "mean + this many SD of negatives")
    keep_controls: bool = Field(default=False, description="keep the positive and negative "
                                "control probes as genes (housekeeping genes are always kept)")
    drop_flagged: bool = Field(default=False, description="drop samples with any QC flag")


STEPS: dict[str, type[Strict]] = {
    "log2": Log2, "quantile": Quantile, "upper_quartile": UpperQuartile, "zscore": ZScore,
    "cpm": Cpm, "tmm_log_cpm": TmmLogCpm, "vst": Vst, "nanostring": Nanostring,
    "filter_by_expr": FilterByExpr, "drop_zero_genes": DropZeroGenes,
    "select_samples": SelectSamples, "aggregate": Aggregate, "delta": Delta,
    "collapse": Collapse, "pca_outliers": PcaOutliers,
}


def parse_step(raw) -> tuple[str, Strict]:
    """``{'log2': {'offset': 1}}`` -> ``('log2', Log2(offset=1))``; ValueError if unknown."""
    if isinstance(raw, str):
        raw = {raw: {}}
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ValueError(f"a preprocess step is a one-key mapping such as `- log2: {{offset: 1}}`"
                         f", not {raw!r}")
    (key, options), = raw.items()
    if key not in STEPS:
        raise ValueError(f"unknown preprocess step {key!r} (choose from {', '.join(STEPS)})")
    return key, STEPS[key].model_validate(options or {})


def _step_model(key: str, options: type[Strict]) -> type[Strict]:
    """The one-key mapping ``{key: options}`` as a model (for validation and the schema)."""
    return create_model(f"{options.__name__}Step", __base__=Strict,
                        __doc__=options.__doc__ or f"the {key} step",
                        **{key: (options, ...)})


STEP_MODELS = tuple(_step_model(key, options) for key, options in STEPS.items())
Step = Annotated[Union[STEP_MODELS], Field(union_mode="left_to_right")]  # noqa: UP007


def check_steps(raw):
    """Validate ``preprocess:`` before pydantic sees the union, so an error names the step."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError("preprocess is a list of steps, e.g. [{quantile: {}}, {log2: {offset: 1}}]")
    steps = []
    for i, item in enumerate(raw, 1):
        try:
            key, options = parse_step(item)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'options'}: "
                                 f"{err['msg'].removeprefix('Value error, ')}"
                                 for err in e.errors())
            raise ValueError(f"preprocess step {i} ({next(iter(item))}): {problems}") from None
        except ValueError as e:
            raise ValueError(f"preprocess step {i}: {e}") from None
        steps.append({key: options.model_dump()})
    return steps


def step_of(step: Strict) -> tuple[str, Strict]:
    """A validated step model -> (its key, its options)."""
    (key,) = type(step).model_fields
    return key, getattr(step, key)
