#!/usr/bin/env Rscript
# Many small p-value sets (R's default RNG, seed 20261123) and qvalue's pi0 for each, to pin down
# pi0est's lambda choice where it is sensitive (the bootstrap's quantile and MSE minimum).
# p-values are rounded to 3 decimals (short fixture, many ties). Writes OUT_PREFIX_p.tsv
# (case, p) and OUT_PREFIX_pi0.tsv (case, m, pi0 for lambda = 0.5, bootstrap, smoother;
# NA where qvalue stops with an error, e.g. no p-value >= 0.95).
# Usage: ORACLE=/path/to/shared/oracle Rscript pi0_cases.R OUT_PREFIX
if (!nzchar(Sys.getenv("ORACLE"))) stop("set ORACLE to the oracle folder (it has common.R)")
source(file.path(Sys.getenv("ORACLE"), "common.R"))
suppressPackageStartupMessages(library(qvalue))
out <- commandArgs(trailingOnly = TRUE)[1]
set.seed(20261123)
n_cases <- 60
pvals <- list(); pi0 <- data.frame(case = seq_len(n_cases), m = NA_integer_, lambda0.5 = NA_real_,
                                   bootstrap = NA_real_, smoother = NA_real_)
pi0_or_na <- function(...) tryCatch(qvalue(..., lfdr.out = FALSE)$pi0, error = function(e) NA_real_)
for (k in seq_len(n_cases)) {
  m <- sample(10:300, 1); null <- runif(1, 0.1, 1); n0 <- rbinom(1, m, null)
  p <- round(c(runif(n0), rbeta(m - n0, runif(1, 0.05, 0.8), 1)), 3)
  pvals[[k]] <- data.frame(case = k, p = p)
  pi0[k, -1] <- c(m, pi0_or_na(p, lambda = 0.5), pi0_or_na(p, pi0.method = "bootstrap"), pi0_or_na(p))
}
write_tsv(do.call(rbind, pvals), paste0(out, "_p.tsv"))
write_tsv(pi0, paste0(out, "_pi0.tsv"))
