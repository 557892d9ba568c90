"""Job keys of the gene-set analyses: single-sample scores, GSEA (preranked and phenotype
permutation) and over-representation. See README: Gene sets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engine.jobs.base import NAME_PATTERN, AdjustMethod, Label, Strict, Subset

SCORE_TESTS = ("ssgsea", "gsva", "zscore", "plage", "signature_score")
RANKING_METRICS = ("signal_to_noise", "t_test", "diff_of_classes", "ratio_of_classes",
                   "log2_ratio_of_classes")


class GeneSetOptions(Subset):
    """Which gene sets, and how their members are found among the cohort's genes."""

    name: str = Field(pattern=NAME_PATTERN, description="analysis name; also the table's name")
    gene_sets: str = Field(description="a .gmt/.gmx file (relative to the job file) or a bundled "
                                       "library: icr, seed_signatures, hallmark")
    match: Literal["auto", "id", "symbol"] = Field(
        default="auto", description="members are gene IDs or symbols (symbol_column); auto "
                                    "takes whichever finds more members")
    symbol_column: str = Field(default="symbol", description="gene annotation holding symbols")
    case_insensitive: bool = Field(default=False, description="match members ignoring case")
    min_size: int = Field(default=1, ge=1, description="sets with fewer members found are "
                                                       "left out (GSVA min.sz)")
    max_size: int | None = Field(default=None, ge=1, description="sets with more members found "
                                                                 "are left out (GSVA max.sz)")
    collapse: Literal["max_mean", "max_variance", "mean"] | None = Field(
        default=None, description="collapse probes to one row per symbol first (array cohorts)")
    variable: str = Field(default="expression", description="the (gene, sample) variable")

    @model_validator(mode="after")
    def _sizes(self):
        if self.max_size is not None and self.max_size < self.min_size:
            raise ValueError(f"max_size {self.max_size} is below min_size {self.min_size}")
        return self


class Delta(Strict):
    """Scores minus the mean score of a control group, per set (delta-GSVA)."""

    group: str = Field(description="sample annotation that marks the control samples")
    control: Label = Field(description="the value of group that marks them")


class ScoreAnalysis(GeneSetOptions):
    """Single-sample gene-set scores: a sets x samples matrix."""

    test: Literal["ssgsea", "gsva", "zscore", "plage", "signature_score"]
    normalize: bool = Field(default=True, description="ssgsea: divide by the range of the whole "
                                                      "score matrix (GSVA ssgsea.norm)")
    alpha: float = Field(default=0.25, ge=0, description="ssgsea: weight exponent of the ranks")
    kcdf: Literal["gaussian", "poisson", "none"] = Field(
        default="gaussian", description="gsva: kernel of the per-gene CDF (none = empirical)")
    tau: float = Field(default=1.0, ge=0, description="gsva: weight exponent of the walk")
    mx_diff: bool = Field(default=True, description="gsva: max positive + max negative "
                                                    "deviation (else the larger one)")
    abs_ranking: bool = Field(default=False, description="gsva with mx_diff: rank by |score|")
    signature: Literal["mean", "mean_z"] = Field(
        default="mean", description="signature_score: mean of the members' values (mean log2) "
                                    "or of their per-gene z-scores")
    delta: Delta | None = Field(default=None, description="subtract the control group's mean "
                                                          "score per set")
    samples_per_chunk: int = Field(default=256, ge=1, description="samples per task of the "
                                                                  "per-sample ranking")

    @model_validator(mode="after")
    def _method_options(self):
        own = {"ssgsea": {"normalize", "alpha"},
               "gsva": {"kcdf", "tau", "mx_diff", "abs_ranking"},
               "signature_score": {"signature"}}
        for key in ("normalize", "alpha", "kcdf", "tau", "mx_diff", "abs_ranking", "signature"):
            owners = [t for t, keys in own.items() if key in keys]
            if key in self.model_fields_set and self.test not in owners:
                raise ValueError(f"{key} is a {owners[0]} option, not a {self.test} option")
        if self.test == "gsva" and self.abs_ranking and not self.mx_diff:
            raise ValueError("abs_ranking needs mx_diff: true (as in GSVA)")
        return self


class RankingFrom(Strict):
    """A ranking taken from another analysis's result table."""

    analysis: str = Field(description="an earlier analysis of this job")
    column: str = Field(default="statistic", description="the column to rank genes by")
    stratum: str | None = Field(default=None, description="the stratum/term to use, when the "
                                                          "analysis has several")


class Enrichment(GeneSetOptions):
    adjust: AdjustMethod = Field(default="BH", description="p_adj over the sets")


class GseaPrerankedAnalysis(Enrichment):
    """Preranked GSEA: weighted KS enrichment of each set in a ranked gene list."""

    test: Literal["gsea_preranked"]
    ranking: RankingFrom | str = Field(description="{analysis, column} or a .rnk file "
                                                   "(gene<TAB>value, relative to the job file)")
    permutations: int = Field(default=10000, ge=10, description="gene-set permutations")
    weight: float = Field(default=1.0, ge=0, description="GSEA's weight p of |statistic|")
    multilevel: bool = Field(default=True, description="fgsea's multilevel p-values below "
                                                       "1/permutations")
    eps: float = Field(default=1e-50, ge=0, le=1, description="multilevel: smallest p reported")
    sample_size: int = Field(default=101, ge=3, description="multilevel: random sets per level "
                                                             "(fgsea sampleSize)")
    duplicates: Literal["max_abs", "keep"] = Field(
        default="max_abs", description="rows ranked under one gene name (probes of a symbol "
                                       "with match: symbol): keep the row with the largest "
                                       "|statistic| (ties: the first), or keep them all")


class GseaPhenotypeAnalysis(Enrichment):
    """GSEA with sample-label permutations on the expression matrix."""

    test: Literal["gsea_phenotype"]
    group: str = Field(description="sample annotation that defines the two groups")
    case: Label
    control: Label
    metric: Literal["signal_to_noise", "t_test", "diff_of_classes", "ratio_of_classes",
                    "log2_ratio_of_classes"] = Field(
        default="signal_to_noise", description="per-gene ranking statistic (GSEA's)")
    permutations: int = Field(default=1000, ge=10, description="label permutations")
    weight: float = Field(default=1.0, ge=0, description="GSEA's weight p of |statistic|")
    exhaustive: bool | None = Field(
        default=None, description="enumerate every relabelling (exact p); default: when there "
                                  "are no more of them than permutations")


class GenesFrom(Strict):
    """Genes selected from another analysis's result table."""

    analysis: str = Field(description="an earlier analysis of this job")
    p_adj_below: float | None = Field(default=None, gt=0, le=1)
    p_value_below: float | None = Field(default=None, gt=0, le=1)
    effect_above: float | None = Field(default=None, description="effect > this value")
    abs_effect_above: float | None = Field(default=None, ge=0, description="|effect| > this")
    direction: Literal["both", "up", "down"] = Field(default="both", description="sign of "
                                                                                "effect")
    stratum: str | None = Field(default=None, description="the stratum/term to use")

    @model_validator(mode="after")
    def _some_rule(self):
        rules = (self.p_adj_below, self.p_value_below, self.effect_above, self.abs_effect_above)
        if all(r is None for r in rules) and self.direction == "both":
            raise ValueError("give at least one of p_adj_below, p_value_below, effect_above, "
                             "abs_effect_above, direction")
        return self


class OraAnalysis(Enrichment):
    """Over-representation of a gene list in each set (hypergeometric, one-sided Fisher)."""

    test: Literal["ora"]
    genes_from: GenesFrom | None = None
    genes: list[str] | None = Field(default=None, min_length=1, description="gene IDs (or "
                                    "symbols with match: symbol) instead of genes_from")
    universe: Literal["tested", "cohort"] = Field(
        default="tested", description="tested: genes with a p-value in genes_from's analysis; "
                                      "cohort: every gene of the cohort")

    @model_validator(mode="after")
    def _one_list(self):
        if (self.genes_from is None) == (self.genes is None):
            raise ValueError("give exactly one of genes_from or genes")
        if self.genes is not None and self.universe == "tested":
            self.universe = "cohort"
        return self


SET_ANALYSES = (ScoreAnalysis, GseaPrerankedAnalysis, GseaPhenotypeAnalysis, OraAnalysis)


def references(analysis) -> list[str]:
    """Names of the earlier analyses this one reads."""
    out = []
    if isinstance(analysis, GseaPrerankedAnalysis) and isinstance(analysis.ranking, RankingFrom):
        out.append(analysis.ranking.analysis)
    if isinstance(analysis, OraAnalysis) and analysis.genes_from is not None:
        out.append(analysis.genes_from.analysis)
    return out


def check_references(analyses: list) -> None:
    """Rankings, gene lists and score variables must come from analyses listed earlier."""
    seen: dict[str, object] = {}
    for a in analyses:
        for ref in references(a):
            if ref not in seen:
                raise ValueError(f"analysis {a.name!r} reads analysis {ref!r}, which is not "
                                 "listed before it; list it earlier in analyses")
            if isinstance(seen[ref], ScoreAnalysis):
                raise ValueError(f"analysis {a.name!r} reads {ref!r}, a score matrix without "
                                 "per-gene results; use a per-gene analysis")
        seen[a.name] = a
