#!/usr/bin/env Rscript
# preprocessCore beyond oracle/quantile_normalize.R.
# Usage: Rscript quantile_extra.R COMMON_R target EXPR OUT.tsv
#          the quantile target of EXPR (normalize.quantiles.determine.target, all rows)
#        Rscript quantile_extra.R COMMON_R ties OUTDIR
#          a small matrix with ties and NAs (set.seed(20260602)) and normalize.quantiles of it
args <- commandArgs(TRUE)
source(args[1])
suppressPackageStartupMessages(library(preprocessCore))
if (args[2] == "target") {
  m <- read_matrix(args[3])
  write_tsv(data.frame(target = normalize.quantiles.determine.target(m)), args[4])
} else if (args[2] == "ties") {
  set.seed(20260602)
  n <- 60
  m <- cbind(
    continuous = round(rnorm(n, 8, 2), 3),           # complete, (almost) no ties
    ties_small = sample(1:6, n, replace = TRUE),      # complete, runs of ties of every length
    ties_pairs = rep(round(rnorm(n / 2, 5, 1), 2), each = 2),  # complete, ties of 2 (half ranks)
    na_few = round(rnorm(n, 7, 1), 2),               # 3 NAs
    na_many_ties = sample(c(0, 0, 0, 1, 2, 3), n, replace = TRUE),  # 20 NAs, heavy ties
    na_half = round(rexp(n, 0.2), 1),                 # 30 NAs
    two_values = rep(NA_real_, n))                    # only 2 values present
  m[sample(n, 3), "na_few"] <- NA
  m[sample(n, 20), "na_many_ties"] <- NA
  m[sample(n, 30), "na_half"] <- NA
  m[c(7, 41), "two_values"] <- c(3, 1)
  rownames(m) <- sprintf("g%02d", seq_len(n))
  out <- args[3]
  write_matrix(m, file.path(out, "ties_na_input.tsv"), id = "gene_id")
  q <- normalize.quantiles(m); dimnames(q) <- dimnames(m)
  write_matrix(q, file.path(out, "ties_na_quantile.tsv"), id = "gene_id")
  write_tsv(data.frame(target = normalize.quantiles.determine.target(m)),
            file.path(out, "ties_na_target.tsv"))
  # the same without the NA columns: the complete-column path alone
  k <- m[, 1:3]
  qk <- normalize.quantiles(k); dimnames(qk) <- dimnames(k)
  write_matrix(qk, file.path(out, "ties_complete_quantile.tsv"), id = "gene_id")
}
