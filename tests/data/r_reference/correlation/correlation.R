#!/usr/bin/env Rscript
# Per-probe Pearson and Spearman correlation with a numeric sample covariate (stats::cor.test),
# overall or within each stratum of a sample annotation.
# Usage: Rscript correlation.R ORACLE_DIR EXPR SAMPLES COVARIATE OUT.tsv [--stratify COL] [--every K]
#   ORACLE_DIR  folder with common.R (the shared oracle helpers: read_matrix, safe, write_tsv)
#   --stratify  one block of rows per non-NA value of COL (sorted); without it one stratum "all"
#   --every K   write only probes 1, 1+K, 1+2K, ... (BH is computed over ALL probes first)
# Samples whose covariate (or stratum) is NA are dropped. Per probe, cor.test drops samples
# where the probe is NA (complete.cases). Columns:
#   stratum, n (complete samples), pearson_r, pearson_t, pearson_p, pearson_p_bh,
#   pearson_ci_low, pearson_ci_high (cor.test(method = "pearson"), 95% Fisher z interval),
#   spearman_rho, spearman_S, spearman_p, spearman_p_bh (cor.test(method = "spearman",
#   exact = FALSE): t approximation); *_bh = p.adjust(p, "BH") over all probes of the stratum.
args <- commandArgs(trailingOnly = TRUE)
source(file.path(args[1], "common.R"))
cli <- parse_cli(args[-1], n_pos = 4,
                 usage = "correlation.R ORACLE_DIR EXPR SAMPLES COVARIATE OUT.tsv [--stratify COL] [--every K]")
a <- cli$pos
m <- read_matrix(a[1]); s <- read_samples(a[2])
cv <- as.numeric(s[colnames(m), a[3]])
strat_col <- opt(cli, "stratify")
every <- as.integer(opt(cli, "every", 1))
strat <- if (is.null(strat_col)) rep("all", ncol(m)) else s[colnames(m), strat_col]
levels <- sort(unique(strat[!is.na(strat)]))
one <- function(v, w, method) {
  ok <- complete.cases(v, w)
  if (method == "pearson") {
    safe({ z <- cor.test(v, w, method = "pearson")
           ci <- if (is.null(z$conf.int)) c(NA, NA) else z$conf.int[1:2]
           c(sum(ok), z$estimate, z$statistic, z$p.value, ci) }, 5)
  } else {
    safe({ z <- suppressWarnings(cor.test(v, w, method = "spearman", exact = FALSE))
           c(z$estimate, z$statistic, z$p.value) }, 3)
  }
}
out <- timed("correlation", do.call(rbind, lapply(levels, function(level) {
  keep <- !is.na(cv) & !is.na(strat) & strat == level
  w <- cv[keep]; mm <- m[, keep, drop = FALSE]
  p <- t(apply(mm, 1, one, w = w, method = "pearson"))
  r <- t(apply(mm, 1, one, w = w, method = "spearman"))
  d <- data.frame(probe_id = rownames(m), stratum = level, n = p[, 1],
                  pearson_r = p[, 2], pearson_t = p[, 3], pearson_p = p[, 4],
                  pearson_p_bh = p.adjust(p[, 4], "BH"),
                  pearson_ci_low = p[, 5], pearson_ci_high = p[, 6],
                  spearman_rho = r[, 1], spearman_S = r[, 2], spearman_p = r[, 3],
                  spearman_p_bh = p.adjust(r[, 3], "BH"), stringsAsFactors = FALSE)
  d[seq(1, nrow(d), by = every), ]
})))
write_tsv(out, a[4])
