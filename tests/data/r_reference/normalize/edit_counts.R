#!/usr/bin/env Rscript
# Edge cases added to a make_nb_counts.R cohort (deterministic: set.seed(20260601)).
# Usage: Rscript edit_counts.R COMMON_R IN_COUNTS.tsv.gz OUT_COUNTS.tsv
#   * S12 becomes a low-count library: its counts thinned to 3% (rbinom(n, count, 0.03));
#   * GENE00100, GENE00500, GENE01000, GENE01500 and GENE02000 are set to 0 in every sample
#     (edgeR drops all-zero genes before the factors);
#   * GENE00200..GENE00219 are 0 in S01 (TMM's reference candidates get zero-in-one genes);
#   * GENE00300 has counts in S05 only (a singleton for TMMwsp's pairing).
args <- commandArgs(TRUE)
source(args[1])
m <- read_matrix(args[2])
set.seed(20260601)
m[, "S12"] <- rbinom(nrow(m), m[, "S12"], 0.03)
m[c("GENE00100", "GENE00500", "GENE01000", "GENE01500", "GENE02000"), ] <- 0
m[sprintf("GENE%05d", 200:219), "S01"] <- 0
m["GENE00300", ] <- 0
m["GENE00300", "S05"] <- 250
storage.mode(m) <- "integer"
write_matrix(m, args[3], id = "gene_id")
cat("counts:", nrow(m), "x", ncol(m), "; library sizes:", colSums(m), "\n")
