#!/usr/bin/env Rscript
# Spearman p-values of stats::cor.test with exact = TRUE (R's default: Algorithm AS 89, exact
# enumeration for n <= 9, Edgeworth series for 9 < n <= 1290; t approximation above 1290 or
# with ties) and exact = FALSE (t approximation), on synthetic untied data.
# Usage: Rscript exact_spearman.R ORACLE_DIR INPUTS.tsv OUT.tsv
#   INPUTS.tsv (written here): case, i, x, y   one row per observation
#   OUT.tsv: case, n, ties, rho, S, p_exact, p_asymptotic
args <- commandArgs(trailingOnly = TRUE)
source(file.path(args[1], "common.R"))
set.seed(20261122)
cases <- list()
add <- function(x, y) cases[[length(cases) + 1]] <<- list(x = x, y = y)
for (n in c(3:12, 30, 100)) {
  x <- rnorm(n)
  add(x, x)                         # rho = 1
  add(x, -x)                        # rho = -1
  add(x, rnorm(n))                  # independent
  add(x, x + rnorm(n, sd = 0.5))    # strong
  add(x, -x + rnorm(n, sd = 2))     # weak negative
  add(x, sample(n))                 # integer ranks, still untied
}
# around R's limits: n = 1290 (last n with AS 89) and 1291 (t approximation); weak correlation
for (n in c(1290, 1291)) { x <- sample(n); add(x, rank(x + rnorm(n, sd = 5 * n))) }
# ties: exact = TRUE falls back to the t approximation (R warns)
add(c(1, 2, 2, 3, 4, 5, 6, 7), c(2, 1, 4, 3, 6, 5, 8, 7))
add(c(1, 2, 3, 4, 5, 6, 7, 8), c(1, 1, 2, 3, 5, 4, 8, 6))
inputs <- do.call(rbind, lapply(seq_along(cases), function(k)
  data.frame(case = k, i = seq_along(cases[[k]]$x), x = cases[[k]]$x, y = cases[[k]]$y)))
res <- do.call(rbind, lapply(seq_along(cases), function(k) {
  x <- cases[[k]]$x; y <- cases[[k]]$y; n <- length(x)
  e <- suppressWarnings(cor.test(x, y, method = "spearman", exact = TRUE))
  t <- cor.test(x, y, method = "spearman", exact = FALSE)
  data.frame(case = k, n = n, ties = min(length(unique(x)), length(unique(y))) < n,
             rho = unname(e$estimate), S = unname(e$statistic), p_exact = e$p.value,
             p_asymptotic = t$p.value)
}))
write_tsv(inputs, args[2])
write_tsv(res, args[3])
