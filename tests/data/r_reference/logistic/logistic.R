#!/usr/bin/env Rscript
# Per-probe logistic regression of a binary sample outcome on each probe (stats::glm, binomial),
# overall or within each stratum of a sample annotation.
# Usage: Rscript logistic.R ORACLE_DIR EXPR SAMPLES OUTCOME EVENT REF OUT.tsv
#          [--covariates A,B] [--interaction COL] [--stratify COL] [--scale sd|raw|median]
#          [--every K] [--bh]
#   ORACLE_DIR     folder with common.R (the shared oracle helpers: read_matrix, write_tsv, ...)
#   OUTCOME        y = 1 where the column equals EVENT, 0 where it equals REF; other samples dropped
#   --covariates   numeric columns enter as numbers, others as factors (levels sorted, C locale;
#                  first level is the reference: treatment contrasts)
#   --interaction  a factor h: the model is y ~ covariates + z * h; effect = coefficient of z
#                  (z in h's first level), p_interaction = Wald test of the z:h coefficients
#                  (summary z test for one, chi-square with k df on vcov() for k)
#   --scale        z = as.numeric(scale(x)) (sd, the default), x (raw) or
#                  as.numeric(x > median(x)) (median), over the probe's samples in the fit
#   --every K      write (and fit) only probes 1, 1+K, 1+2K, ...
#   --bh           fit every probe and add p_bh = p.adjust(p, "BH") over all probes of the stratum
# Samples with a missing outcome, covariate, interaction or stratum are dropped; per probe, glm
# drops samples where the probe is NA. glm control: epsilon = 1e-14, maxit = 100 (R's default:
# 1e-8, 25), then one more IRLS iteration started at the estimate (maxit = 1): summary.glm's
# standard errors use the weights of the last iteration, i.e. of the previous iterate, which
# this makes the maximum itself (else they differ from the covariance at the maximum by the
# size of the last step, ~1e-7 relative at epsilon 1e-14, ~1e-5 at 1e-10). Columns:
# probe_id, stratum, n, n_events, effect, se, z, p, odds_ratio, ci_low, ci_high (exp of
# confint.default: Wald, 95%), p_interaction, converged (of the first fit), fitted01 (1 if glm
# warned "fitted probabilities numerically 0 or 1 occurred"), [p_bh].
args <- commandArgs(trailingOnly = TRUE)
source(file.path(args[1], "common.R"))
invisible(Sys.setlocale("LC_COLLATE", "C"))
usage <- paste("logistic.R ORACLE_DIR EXPR SAMPLES OUTCOME EVENT REF OUT.tsv [--covariates A,B]",
               "[--interaction COL] [--stratify COL] [--scale sd|raw|median] [--every K] [--bh]")
cli <- parse_cli(args[-1], n_pos = 6, usage = usage)
a <- cli$pos
m <- read_matrix(a[1]); s <- read_samples(a[2])[colnames(m), , drop = FALSE]
outcome <- s[[a[3]]]
covariates <- if (is.null(opt(cli, "covariates"))) character(0) else strsplit(opt(cli, "covariates"), ",")[[1]]
inter_col <- opt(cli, "interaction"); strat_col <- opt(cli, "stratify")
scale_kind <- opt(cli, "scale", "sd"); every <- as.integer(opt(cli, "every", 1))
bh <- isTRUE(opt(cli, "bh", FALSE))

as_term <- function(v) {
  num <- suppressWarnings(as.numeric(v))
  if (all(is.na(num) == is.na(v))) num else factor(v, levels = sort(unique(v[!is.na(v)])))
}
base <- data.frame(y = ifelse(outcome == a[4], 1, ifelse(outcome == a[5], 0, NA)))
for (cv in covariates) base[[cv]] <- as_term(s[[cv]])
if (!is.null(inter_col)) base$h <- factor(s[[inter_col]], levels = sort(unique(na.omit(s[[inter_col]]))))
strat <- if (is.null(strat_col)) rep("all", ncol(m)) else s[[strat_col]]
complete <- complete.cases(base) & !is.na(strat)
rhs <- paste(c(sprintf("`%s`", covariates), if (is.null(inter_col)) "z" else "z * h"), collapse = " + ")
form <- as.formula(paste("y ~", rhs))

predictor <- function(x) switch(scale_kind, sd = as.numeric(scale(x)), raw = x,
                                median = as.numeric(x > median(x)))
one <- function(x, d) {
  ok <- !is.na(x)
  d <- d[ok, , drop = FALSE]; d$z <- predictor(x[ok])
  res <- c(n = nrow(d), n_events = sum(d$y), rep(NA_real_, 10))
  fitted01 <- 0
  quiet <- function(expr) withCallingHandlers(expr, warning = function(w) {
    if (grepl("fitted probabilities numerically 0 or 1", conditionMessage(w))) fitted01 <<- 1
    invokeRestart("muffleWarning")
  })
  fit <- tryCatch(quiet(glm(form, family = binomial, data = d,
                            control = glm.control(epsilon = 1e-14, maxit = 100))),
                  error = function(e) NULL)
  if (is.null(fit) || is.na(coef(fit)[["z"]])) return(res)
  converged <- fit$converged
  # One more IRLS step from the maximum: summary() then uses the weights at the maximum itself.
  fit <- quiet(glm(form, family = binomial, data = d, start = ifelse(is.na(coef(fit)), 0, coef(fit)),
                   control = glm.control(epsilon = 1e-14, maxit = 1)))
  tab <- summary(fit)$coefficients
  b <- tab["z", 1]; se <- tab["z", 2]; q <- qnorm(0.975)
  p_int <- NA_real_
  idx <- grep("^z:", rownames(tab))
  if (length(idx) == 1) p_int <- tab[idx, 4]
  if (length(idx) > 1) {
    v <- vcov(fit)[rownames(tab)[idx], rownames(tab)[idx]]; bb <- tab[idx, 1]
    p_int <- pchisq(drop(t(bb) %*% solve(v, bb)), length(idx), lower.tail = FALSE)
  }
  c(res[1:2], b, se, tab["z", 3], tab["z", 4], exp(b), exp(b - q * se), exp(b + q * se), p_int,
    as.numeric(converged), fitted01)
}
rows <- if (bh) seq_len(nrow(m)) else seq(1, nrow(m), by = every)
keep_rows <- seq(1, nrow(m), by = every)
out <- timed("logistic", do.call(rbind, lapply(sort(unique(strat[complete])), function(level) {
  cols <- complete & strat == level
  d <- base[cols, , drop = FALSE]
  r <- t(vapply(rows, function(i) one(m[i, cols], d), numeric(12)))
  res <- data.frame(probe_id = rownames(m)[rows], stratum = level, n = r[, 1], n_events = r[, 2],
                    effect = r[, 3], se = r[, 4], z = r[, 5], p = r[, 6], odds_ratio = r[, 7],
                    ci_low = r[, 8], ci_high = r[, 9], p_interaction = r[, 10], converged = r[, 11],
                    fitted01 = r[, 12], stringsAsFactors = FALSE)
  if (bh) res$p_bh <- p.adjust(res$p, "BH")
  res[rows %in% keep_rows, ]
})))
write_tsv(out, a[6])
