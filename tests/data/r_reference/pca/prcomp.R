#!/usr/bin/env Rscript
# Principal components of the samples (stats::prcomp on the transposed matrix: samples are the
# observations, genes the variables), for several centre/scale settings.
# Usage: Rscript prcomp.R ORACLE_DIR EXPR OUT_PREFIX [--k 5] [--every 25]
#   ORACLE_DIR  folder with common.R (read_matrix, write_tsv: shortest round-trip decimals)
#   --k K       components written (scores and loadings)
#   --every E   loadings written for genes 1, 1+E, 1+2E, ... (the PCA uses every gene)
# Writes, for each run (center_scale: TRUE_FALSE, TRUE_TRUE, FALSE_TRUE):
#   OUT_PREFIX_scores.tsv    run, sample, PC1..PCk            (prcomp $x; signs as LAPACK left them)
#   OUT_PREFIX_loadings.tsv  run, gene, PC1..PCk              (prcomp $rotation, every E-th gene)
#   OUT_PREFIX_variance.tsv  run, component, variance, variance_ratio   (all components:
#                            $sdev^2 and $sdev^2 / sum($sdev^2), summary()'s "Proportion of Variance")
args <- commandArgs(trailingOnly = TRUE)
source(file.path(args[1], "common.R"))
cli <- parse_cli(args[-1], n_pos = 2, usage = "prcomp.R ORACLE_DIR EXPR OUT_PREFIX [--k 5] [--every 25]")
m <- read_matrix(cli$pos[1])
prefix <- cli$pos[2]
k <- as.integer(opt(cli, "k", 5))
every <- as.integer(opt(cli, "every", 25))
stopifnot(!anyNA(m))
runs <- list(c(TRUE, FALSE), c(TRUE, TRUE), c(FALSE, TRUE))
scores <- list(); loadings <- list(); variance <- list()
for (r in runs) {
  name <- paste(r[1], r[2], sep = "_")
  p <- timed(paste("prcomp", name), prcomp(t(m), center = r[1], scale. = r[2]))
  pcs <- paste0("PC", seq_len(k))
  s <- data.frame(run = name, sample = rownames(p$x), p$x[, 1:k], check.names = FALSE,
                  stringsAsFactors = FALSE)
  keep <- seq(1, nrow(p$rotation), by = every)
  l <- data.frame(run = name, gene = rownames(p$rotation)[keep], p$rotation[keep, 1:k],
                  check.names = FALSE, stringsAsFactors = FALSE)
  names(s)[3:(2 + k)] <- pcs; names(l)[3:(2 + k)] <- pcs
  v <- data.frame(run = name, component = seq_along(p$sdev), variance = p$sdev^2,
                  variance_ratio = p$sdev^2 / sum(p$sdev^2), stringsAsFactors = FALSE)
  scores[[name]] <- s; loadings[[name]] <- l; variance[[name]] <- v
}
write_tsv(do.call(rbind, scores), paste0(prefix, "_scores.tsv"))
write_tsv(do.call(rbind, loadings), paste0(prefix, "_loadings.tsv"))
write_tsv(do.call(rbind, variance), paste0(prefix, "_variance.tsv"))
