#!/usr/bin/env Rscript
# Extra GSVA 1.46 reference outputs for the tests (see README.md). Sources the oracle's
# common.R (read_matrix, read_gmt, write_tsv, write_matrix: full-precision numbers).
# Usage:
#   Rscript gsva_extras.R ORACLE_DIR sizes EXPR GMT OUT.tsv
#       members of each set left after GSVA's own gene filter (.filterFeatures drops genes
#       with NA or sd < 1e-10): the set sizes GSVA scores with.
#   Rscript gsva_extras.R ORACLE_DIR density EXPR Gaussian|Poisson|none EVERY OUT.tsv
#       GSVA:::compute.gene.density (the C kernel matrix_density_R, or the ecdf) for every
#       EVERY-th gene of EXPR (1, 1 + EVERY, ...), all samples as density and test samples.
#   Rscript gsva_extras.R ORACLE_DIR pnorm OUT_EVERY100.tsv OUT.f64
#       pnorm(10 * t / 10000), t = 0..10000: the table initCdfs() fills in kernel_estimation.c;
#       every 100th value as text, all 10,001 as little-endian float64 bytes (for a checksum).
#   Rscript gsva_extras.R ORACLE_DIR ppois OUT.tsv
#       ppois at non-integer and negative quantiles (what the Poisson kernel does with them).
args <- commandArgs(trailingOnly = TRUE)
source(file.path(args[1], "common.R"))
suppressPackageStartupMessages(library(GSVA))
what <- args[2]
if (what == "sizes") {
  m <- read_matrix(args[3]); gs <- read_gmt(args[4])
  kept <- rownames(suppressWarnings(GSVA:::.filterFeatures(m, "gsva")))
  write_tsv(data.frame(gene_set = names(gs),
                       size_used = vapply(gs, function(s) sum(unique(s) %in% kept), 0)),
            args[5])
} else if (what == "density") {
  m <- read_matrix(args[3]); kcdf <- args[4]; every <- as.integer(args[5])
  x <- m[seq(1, nrow(m), by = every), , drop = FALSE]
  d <- GSVA:::compute.gene.density(x, seq_len(ncol(x)), rnaseq = kcdf == "Poisson",
                                   kernel = kcdf != "none")
  dimnames(d) <- dimnames(x)
  write_matrix(d, args[6], id = "gene_id")
} else if (what == "pnorm") {
  t <- 0:10000
  p <- pnorm(10 * t / 10000)
  keep <- t %% 100 == 0
  write_tsv(data.frame(t = t[keep], pnorm = p[keep]), args[3])
  con <- file(args[4], "wb"); writeBin(p, con, size = 8, endian = "little"); close(con)
} else if (what == "ppois") {
  q <- c(0, 0.5, 2.9999999, 2.99999999, 3, 3.5, -0.2, -1e-9, 7.25, 100.9999999)
  lambda <- c(0.5, 1.5, 1.5, 1.5, 1.5, 2.5, 1.5, 0.5, 3.75, 101.5)
  write_tsv(data.frame(q = q, lambda = lambda, ppois = ppois(q, lambda)), args[3])
} else stop("unknown subcommand ", what)
