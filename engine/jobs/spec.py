"""The job file: a pydantic model, its loader, and its JSON Schema.

``schemas/job.schema.json`` is generated from these models (``python schemas/generate.py``);
a test fails when the committed schema and the models drift apart.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from engine.errors import InputError
from engine.fsutil import read_yaml_mapping, sha256_file
from engine.jobs.base import (NAME_PATTERN, AdjustMethod, Analysis, Bootstrap, Confidence, Label,
                              Strict, Subset)
from engine.jobs.clusterspec import ConsensusAnalysis
from engine.jobs.gene_lists import GeneList, check_gene_lists
from engine.jobs.prepspec import Step, check_steps
from engine.store.fingerprint import store_fingerprint
from engine.jobs.setspec import (SET_ANALYSES, GseaPhenotypeAnalysis, GseaPrerankedAnalysis,
                                 OraAnalysis, ScoreAnalysis, check_references)

TwoGroupTestName = Literal["welch", "student", "paired_t", "mann_whitney", "wilcoxon_signed_rank"]
PAIRED = ("paired_t", "wilcoxon_signed_rank")


class TwoGroupAnalysis(Analysis):
    """A per-gene test of case vs control samples chosen by a sample annotation."""

    test: TwoGroupTestName = Field(description="per-gene test; paired tests need pair_by")
    group: str = Field(description="sample annotation that defines the two groups")
    case: Label
    control: Label
    pair_by: str | None = Field(
        default=None, description="sample annotation matching each case sample to its control "
                                  "(required for paired_t and wilcoxon_signed_rank)")
    fold_change_base: Literal[2, 10, "e"] | None = Field(
        default=None, description="add fold_change = base ** effect (effect on the log scale "
                                  "of that base), with its bootstrap interval when bootstrapped")
    bootstrap: Bootstrap | None = Field(default=None, description="bootstrap interval of effect")
    permutations: int | None = Field(
        default=None, ge=1, le=10**7, description="per-gene permutation p-values (p_perm, "
        "p_maxT): label permutations (paired tests: sign flips); every distinct relabelling "
        "exactly when there are no more of them than this")

    @model_validator(mode="after")
    def _pairing(self):
        if self.test in PAIRED and self.pair_by is None:
            raise ValueError(f"test {self.test!r} needs pair_by (the annotation that matches each "
                             "case sample to its control, e.g. patient)")
        if self.test not in PAIRED and self.pair_by is not None:
            raise ValueError(f"test {self.test!r} is unpaired and takes no pair_by "
                             f"(use paired_t or wilcoxon_signed_rank for paired samples)")
        if self.bootstrap is not None and self.test in PAIRED and self.bootstrap.by is not None:
            raise ValueError("paired tests resample their pairs; bootstrap.by is for unpaired "
                             "tests (clusters such as patients with several samples)")
        return self


class LinearModelAnalysis(Analysis):
    """Per-gene linear model: ordinary t (ols) or limma's moderated t (limma).

    Either the two-group form (group, case, control, optional pair_by) or a formula design
    with the coefficient (coef) or contrast weights to test.
    """

    test: Literal["limma", "ols"]
    group: str | None = Field(default=None, description="two-group form: the group annotation")
    case: Label | None = None
    control: Label | None = None
    pair_by: str | None = Field(default=None, description="two-group form: pairs (design "
                                                          "~ pair + group)")
    design: str | None = Field(default=None, description="formula over sample annotations, "
                                                         "e.g. '~ mol.biol + age'")
    coef: str | None = Field(default=None, description="design column to test, e.g. "
                                                       "'mol.biol[T.BCR/ABL]'")
    contrast: dict[str, float] | None = Field(
        default=None, description="weights by design column, e.g. {'g[T.b]': 1, 'g[T.c]': -1}")
    reference: dict[str, str] = Field(
        default_factory=dict, description="reference level per categorical annotation")
    trend: bool = Field(default=False, description="limma: prior variance trends with "
                                                   "average expression (eBayes trend=TRUE)")
    bootstrap: Bootstrap | None = Field(default=None, description="bootstrap interval of the "
                                        "tested coefficient or contrast (resampling samples)")
    robust: bool = Field(default=False, description="limma: robust prior df (eBayes "
                                                    "robust=TRUE)")

    @model_validator(mode="after")
    def _one_form(self):
        two_group = [self.group, self.case, self.control]
        if self.design is None:
            if any(v is None for v in two_group):
                raise ValueError("give group, case and control (two-group form) or design with "
                                 "coef or contrast")
            if self.coef is not None or self.contrast is not None or self.reference:
                raise ValueError("coef, contrast and reference go with design")
        else:
            if any(v is not None for v in two_group) or self.pair_by is not None:
                raise ValueError("give either design or group/case/control, not both")
            if (self.coef is None) == (self.contrast is None):
                raise ValueError("with design, give exactly one of coef or contrast")
        if self.test == "ols" and (self.trend or self.robust):
            raise ValueError("trend and robust are limma options (test: limma)")
        return self




class AncovaAnalysis(Analysis):
    """ANCOVA of each feature on a formula design: F-tests per term, slopes, marginal means."""

    test: Literal["ancova"]
    design: str = Field(description="formula over sample annotations, e.g. "
                                    "'~ her2 * hr_status + age' (all first-order interactions)")
    reference: dict[str, str] = Field(default_factory=dict,
                                      description="reference level per categorical annotation")
    anova_type: Literal[2, 3] = Field(default=2, description="type II or III sums of squares "
                                                             "(statsmodels anova_lm semantics)")
    slope_of: str | None = Field(default=None, description="continuous covariate whose marginal "
                                                           "effect (slope) is reported")
    slope_by: str | None = Field(default=None, description="factor at whose levels the slope "
                                                           "is also reported")
    means_of: str | None = Field(default=None, description="factor whose marginal means are "
                                                           "reported")
    confidence: Confidence = 0.95

    @model_validator(mode="after")
    def _slope(self):
        if self.slope_by is not None and self.slope_of is None:
            raise ValueError("slope_by needs slope_of (the covariate whose slope is reported)")
        return self


Split = Annotated[Literal["median"] | Annotated[float, Field(gt=0, lt=1)] | None, Field(
    description="dichotomise the feature: 'median' or a quantile q (high = value > quantile)")]


class SurvivalOutcome(Strict):
    time: str = Field(description="numeric sample annotation: follow-up time (>= 0)")
    event: str = Field(description="0/1 sample annotation, or any annotation with event_value")
    event_value: Label | None = Field(default=None, description="the value of event that "
                                                                "marks an event")


class CoxAnalysis(Analysis, SurvivalOutcome):
    """Cox proportional hazards per feature (continuous or split), optionally adjusted."""

    test: Literal["cox"]
    split: Split = None
    covariates: list[str] = Field(default_factory=list,
                                  description="sample annotations to adjust for")
    stratify_by: str | None = Field(default=None, description="separate fits per value")
    ties: Literal["efron", "breslow"] = Field(default="efron", description="R coxph default "
                                              "efron; statsmodels PHReg default breslow")
    confidence: Confidence = 0.95
    bootstrap: Bootstrap | None = Field(default=None, description="bootstrap interval of the "
                                        "hazard ratio (resampling samples with their time, "
                                        "event and covariates)")


class KaplanMeierAnalysis(SurvivalOutcome, Subset):
    """Kaplan-Meier curves by group with the log-rank test."""

    name: str = Field(pattern=NAME_PATTERN, description="analysis name; also the table's name")
    test: Literal["kaplan_meier"]
    group: str | None = Field(default=None, description="a sample annotation or a gene ID "
                                                        "(genes and numeric annotations need "
                                                        "split)")
    split: Split = None
    variable: str = Field(default="expression", description="variable of a gene group")
    confidence: Confidence = 0.95


class CorrelationAnalysis(Analysis):
    """Pearson or Spearman correlation of each feature with a covariate or with one gene."""

    test: Literal["pearson", "spearman"]
    covariate: str | None = Field(default=None, description="numeric sample annotation; "
                                  "samples without a value are dropped")
    gene: str | None = Field(default=None, description="a gene ID: correlate every feature "
                                                       "with this gene (a screen)")
    stratify_by: str | None = Field(default=None, description="one result block per value")
    exact: bool = Field(default=False, description="spearman: R cor.test's exact p (AS 89) "
                                                   "where there are no ties and n <= 1290")
    confidence: Confidence = 0.95
    bootstrap: Bootstrap | None = Field(default=None, description="bootstrap interval of r or "
                                        "rho (resampling samples with their partner value)")

    @model_validator(mode="after")
    def _partner(self):
        if (self.covariate is None) == (self.gene is None):
            raise ValueError("give exactly one of covariate (a sample annotation) or gene")
        if self.exact and self.test != "spearman":
            raise ValueError("exact is a spearman option")
        return self


class LogisticAnalysis(Analysis):
    """Logistic regression of a binary outcome on each feature (odds ratio per 1-SD)."""

    test: Literal["logistic"]
    outcome: str = Field(description="sample annotation of the outcome")
    event: Label = Field(description="the outcome value coded 1")
    reference: Label | None = Field(default=None, description="the outcome value coded 0 "
                                    "(default: every other value)")
    predictor_scale: Literal["sd", "raw", "median"] = Field(
        default="sd", description="sd: odds ratio per 1-SD of the feature; raw: per unit; "
                                  "median: high (x > median) vs low")
    covariates: list[str] = Field(default_factory=list,
                                  description="sample annotations to adjust for")
    interaction: str | None = Field(default=None, description="categorical annotation h: "
                                    "y ~ x + h + x:h, p_interaction tests x:h")
    stratify_by: str | None = Field(default=None, description="separate fits per value")
    confidence: Confidence = 0.95
    bootstrap: Bootstrap | None = Field(default=None, description="bootstrap interval of the "
                                        "odds ratio (resampling samples)")


class Deseq2Analysis(Analysis):
    """DESeq2's negative-binomial GLM per gene on integer counts (Wald test of case vs
    control), with DESeq2's dispersion shrinkage, Cook's outliers and independent filtering."""

    test: Literal["deseq2"]
    variable: str = Field(default="counts", description="the integer count variable")
    group: str = Field(description="sample annotation that defines the two groups")
    case: Label
    control: Label
    design: str | None = Field(default=None, description="full design formula containing "
                               "the group, e.g. '~ patient + condition' (default ~ group)")
    alpha: float = Field(default=0.1, gt=0, lt=1, description="FDR target of independent "
                                                              "filtering (results(alpha=))")
    cooks_cutoff: bool = Field(default=True, description="NA p-values for genes with a Cook's "
                                                         "distance outlier")
    independent_filtering: bool = Field(default=True, description="filter genes of low mean "
                                        "count to maximise discoveries at alpha")
    fit_type: Literal["parametric", "mean"] = Field(default="parametric", description=
                                                    "dispersion trend")
    size_factors: Literal["ratio", "poscounts"] = Field(default="ratio", description="DESeq2 "
                                                        "size factor estimator")

    @model_validator(mode="after")
    def _genes_only(self):
        if self.features is not None:
            raise ValueError("deseq2 models the genes' counts; features (sample annotations) "
                             "are for the other tests")
        return self


ANALYSES = (TwoGroupAnalysis, LinearModelAnalysis, AncovaAnalysis, CorrelationAnalysis,
            LogisticAnalysis, CoxAnalysis, KaplanMeierAnalysis, *SET_ANALYSES, ConsensusAnalysis, Deseq2Analysis)
AnyAnalysis = Annotated[TwoGroupAnalysis | LinearModelAnalysis | AncovaAnalysis
                        | CorrelationAnalysis | LogisticAnalysis | CoxAnalysis
                        | KaplanMeierAnalysis | ScoreAnalysis | GseaPrerankedAnalysis
                        | GseaPhenotypeAnalysis | OraAnalysis | ConsensusAnalysis | Deseq2Analysis,
                        Field(discriminator="test")]


def analysis_model(test: str) -> type[Strict] | None:
    """The spec model of the analyses with this ``test``."""
    for model in ANALYSES:
        if test in model.model_fields["test"].annotation.__args__:
            return model
    return None


class Family(Strict):
    """Analyses whose p-values are adjusted together, as one family of tests."""

    name: str = Field(pattern=NAME_PATTERN)
    analyses: list[str] = Field(min_length=1, description="analysis names")
    method: AdjustMethod = "BH"


class Job(Strict):
    """What to compute on one cohort, and where to write the results."""

    cohort: Path = Field(description="cohort store (.zarr); relative to the job file")
    output: Path = Field(description="results directory; relative to the job file")
    seed: int = Field(default=0, ge=0, description="seed of every random draw in the job")
    preprocess: list[Step] = Field(
        default_factory=list, description="steps applied in order before the analyses; the "
        "result is written once as a derived cohort store and reused (README: Preprocessing)")
    derived: Path | None = Field(
        default=None, description="folder of the derived (preprocessed) stores; default: "
                                  "<cohort>/derived; relative to the job file")
    analyses: list[AnyAnalysis] = Field(min_length=1)
    families: list[Family] = Field(
        default_factory=list,
        description="families of tests across analyses: adds p_adj_family to their main tables")
    gene_lists: list[GeneList] = Field(
        default_factory=list, description="set algebra of result lists (up in A and down in B)")

    @field_validator("preprocess", mode="before")
    @classmethod
    def _steps(cls, raw):
        return check_steps(raw)

    @model_validator(mode="after")
    def _unique_names(self):
        names = [a.name for a in self.analyses]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"analysis names must be unique; repeated: {', '.join(dup)}")
        check_references(self.analyses)
        seen: dict[str, str] = {}
        for family in self.families:
            for a in family.analyses:
                if a not in names:
                    raise ValueError(f"family {family.name!r} names {a!r}, which is not an "
                                     f"analysis (analyses: {', '.join(names)})")
                if a in seen:
                    raise ValueError(f"analysis {a!r} is in two families ({seen[a]!r} and "
                                     f"{family.name!r}); an analysis belongs to one family")
                seen[a] = family.name
        check_gene_lists(self.gene_lists, names)
        return self


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for e in error.errors():
        loc = list(e["loc"])
        model = Job
        if loc and loc[0] == "analyses" and len(loc) > 2 and analysis_model(str(loc[2])) is not None:
            model = analysis_model(str(loc.pop(2)))  # drop the union tag from the location
        elif loc and loc[0] == "families":
            model = Family
        where = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key (allowed here: {', '.join(model.model_fields)})")
        elif e["type"] == "union_tag_invalid":
            tests = [t for m in ANALYSES for t in m.model_fields["test"].annotation.__args__]
            lines.append(f"{where}: unknown test {e['input'].get('test')!r} (choose from "
                         f"{', '.join(tests)})")
        elif e["type"] == "union_tag_not_found":
            lines.append(f"{where}: every analysis needs a test")
        elif e["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return f"invalid job {source}:\n  " + "\n  ".join(lines)


def load_job(path: str | Path) -> Job:
    """Read and validate a job file; relative paths in it become relative to its folder."""
    path = Path(path)
    raw = read_yaml_mapping(path, "job", "cohort, output, analyses")
    return job_from_mapping(raw, path.absolute().parent, str(path))


def job_from_mapping(raw: dict, base: Path, source: str) -> Job:
    """Validate a job given as a mapping; relative paths in it are relative to ``base``;
    ``source`` names it in errors."""
    try:
        job = Job.model_validate(raw)
    except ValidationError as e:
        raise InputError(_format_errors(e, source)) from None
    analyses = [_relative_files(a, base) for a in job.analyses]
    update = {"cohort": base / job.cohort, "output": base / job.output, "analyses": analyses}
    if job.derived is not None:
        update["derived"] = base / job.derived
    return job.model_copy(update=update)


def _relative_files(analysis, base: Path):
    """Gene-set and ranking files named in a job are relative to the job file's folder."""
    update = {}
    for key in ("gene_sets", "ranking"):
        value = getattr(analysis, key, None)
        if isinstance(value, str) and Path(value).suffix.lower() in {".gmt", ".gmx", ".rnk",
                                                                     ".tsv", ".txt"}:
            update[key] = str(base / value)
    return analysis.model_copy(update=update) if update else analysis


def job_json_schema() -> str:
    schema = Job.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cohort-engine job"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


#: analysis options that name files read by the job: fingerprinted by content, not by path
FILE_KEYS = ("gene_sets", "ranking")


def _file_digest(value: str) -> str | dict:
    path = Path(value)
    return {"file": path.name, "sha256": sha256_file(path)} if path.is_file() else value


def job_fingerprint(job: Job) -> str:
    """sha256 of the engine version, the resolved job (where it writes left out) with its
    cohort replaced by the store's content fingerprint and the files it names by their
    content: equal fingerprints compute equal results (a sweep skips a committed unit, an
    interrupted job resumes). Raises InputError if the cohort store cannot be read."""
    from engine import __version__

    if not (job.cohort / "zarr.json").exists():
        raise InputError(f"cohort store {job.cohort} does not exist (ingest it first)")
    spec = job.model_dump(mode="json", exclude={"output", "derived"})
    spec["cohort"] = store_fingerprint(job.cohort)
    for analysis in spec["analyses"]:
        for key in FILE_KEYS:
            if isinstance(analysis.get(key), str):
                analysis[key] = _file_digest(analysis[key])
    text = json.dumps({"engine_version": __version__, "job": spec}, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
