"""Job keys of consensus clustering (ConsensusClusterPlus semantics). See README: Resampling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engine.jobs.setspec import GeneSetOptions


class ConsensusAnalysis(GeneSetOptions):
    """Consensus clustering of the samples on a gene set's members (or listed genes), with
    classes labelled by the members' mean z-score (e.g. ICR High / Medium / Low)."""

    test: Literal["consensus_cluster"]
    gene_sets: str | None = Field(default=None, description="a .gmt/.gmx file or bundled "
                                  "library whose set gene_set gives the genes to cluster on")
    gene_set: str | None = Field(default=None, description="the set of gene_sets to use "
                                 "(default: the library's first set; icr: ICR, the 20 genes)")
    genes: list[str] | None = Field(default=None, min_length=2, description="gene IDs or "
                                    "symbols to cluster on, instead of gene_sets")
    k_max: int = Field(default=7, ge=2, le=30, description="largest number of clusters "
                                                          "(ConsensusClusterPlus maxK)")
    k: int | None = Field(default=None, ge=2, description="the K whose classes label the "
                          "samples in the main table (default: 3 when k_max >= 3)")
    resamples: int = Field(default=1000, ge=1, le=10**6, description="resamplings (reps)")
    p_item: float = Field(default=0.8, gt=0, le=1, description="fraction of samples drawn "
                                                               "per resampling (pItem)")
    p_feature: float = Field(default=1.0, gt=0, le=1, description="fraction of genes drawn "
                                                                  "per resampling (pFeature)")
    algorithm: Literal["hc", "km"] = Field(default="hc", description="hierarchical "
                                           "clustering or k-means (clusterAlg)")
    distance: Literal["pearson", "spearman", "euclidean"] = Field(
        default="pearson", description="between samples: 1 - correlation, or Euclidean")
    linkage: Literal["average", "complete", "single", "ward.D2"] = Field(
        default="average", description="linkage of each resampling's clustering "
                                       "(innerLinkage)")
    final_linkage: Literal["average", "complete", "single", "ward.D2"] = Field(
        default="average", description="linkage of the final clustering of 1 - consensus "
                                       "(finalLinkage)")
    center: Literal["none", "median", "mean"] = Field(
        default="none", description="centre each gene across samples first")
    label_prefix: str | None = Field(default=None, description="class labels "
                                     "'<prefix> High/Medium/Low' (default: the set's name)")

    @model_validator(mode="after")
    def _genes(self):
        if (self.gene_sets is None) == (self.genes is None):
            raise ValueError("give exactly one of gene_sets (with gene_set) or genes")
        if self.gene_set is not None and self.gene_sets is None:
            raise ValueError("gene_set names a set of gene_sets; give gene_sets too")
        if self.k is not None and self.k > self.k_max:
            raise ValueError(f"k {self.k} is above k_max {self.k_max}")
        if self.algorithm == "km" and self.distance != "euclidean":
            raise ValueError("k-means clusters in Euclidean space: set distance: euclidean")
        return self
