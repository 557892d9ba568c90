"""Spec pieces every kind of analysis shares (the analysis models live in spec.py and
setspec.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

AdjustMethod = Literal["BH", "BY", "bonferroni", "holm", "hochberg", "qvalue"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _not_boolean(value):
    if isinstance(value, bool):
        raise ValueError(f"YAML read this label as the boolean {value}; quote it "
                         f"(e.g. case: \"TRUE\") to match the annotation's text")
    return value


#: A value of a sample annotation (case, control, event, ...); YAML's booleans are refused.
Label = Annotated[str | int | float, BeforeValidator(_not_boolean),
                  Field(description="a value of the group annotation")]


class SampleFilter(Strict):
    """Which samples an analysis (or the select_samples step) keeps."""

    where: str | None = Field(
        default=None, description="condition over sample annotations, pandas query syntax: "
        "\"response in ['CR', 'NR']\", \"age >= 18 and sex == 'F'\"")
    ids: list[str] | None = Field(default=None, min_length=1,
                                  description="sample IDs to keep (with where: both must hold)")

    @model_validator(mode="after")
    def _something(self):
        if self.where is None and self.ids is None:
            raise ValueError("give where (a condition over sample annotations) or ids")
        return self


class Subset(Strict):
    samples: SampleFilter | None = Field(
        default=None, description="analyse only these samples, e.g. {where: \"response in "
                                  "['CR', 'NR']\"} (the others are left out of this analysis)")


class Analysis(Subset):
    """Keys every analysis has."""

    name: str = Field(pattern=NAME_PATTERN,
                      description="analysis name; also the result table's file name")
    variable: str = Field(default="expression", description="the (gene, sample) variable to test")
    features: list[str] | None = Field(
        default=None, min_length=1,
        description="numeric sample annotations (signature scores, cell fractions) to analyse "
                    "instead of the genes of `variable`")
    adjust: AdjustMethod = Field(
        default="BH", description="p-value adjustment within the analysis (p_adj): over the "
                                  "features, separately per stratum / term")


Confidence = Annotated[float, Field(gt=0, lt=1, description="level of the confidence intervals")]


class Bootstrap(Strict):
    """Bootstrap confidence interval of an analysis' effect (README: Resampling)."""

    replicates: int = Field(default=2000, ge=100, le=10**6, description="bootstrap replicates")
    method: Literal["percentile", "basic", "bca", "studentized"] = Field(
        default="bca", description="interval: percentile, basic, bca (bias-corrected and "
                                   "accelerated; scipy.stats.bootstrap's default) or "
                                   "studentized (bootstrap-t; not with by)")
    level: Confidence = 0.95
    by: str | None = Field(default=None, description="sample annotation of the resampling "
                           "unit (e.g. patient): its samples are resampled together")
    strata: bool | str = Field(default=True, description="resample within strata so every "
                               "replicate keeps their sizes: true = the analysis' groups "
                               "(logistic: outcome classes; cox: events vs censored), "
                               "false = none, or a sample annotation")
    weights: Literal["multinomial", "poisson"] = Field(
        default="multinomial", description="replicate weights: multinomial counts (the "
                                           "classical bootstrap) or Poisson(1) counts per unit "
                                           "(differences of means only)")
