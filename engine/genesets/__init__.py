"""Gene sets: libraries (GMT/GMX files and bundled ones), mapping to a cohort's genes, and
probe-to-gene collapsing. See ``library`` and ``mapping``."""

from engine.genesets.library import (GeneSet, bundled_libraries, load_gene_sets, read_gmt,
                                     read_gmx, write_gmt)
from engine.genesets.mapping import Membership, collapse_probes, map_gene_sets

__all__ = ["GeneSet", "Membership", "bundled_libraries", "collapse_probes", "load_gene_sets",
           "map_gene_sets", "read_gmt", "read_gmx", "write_gmt"]
