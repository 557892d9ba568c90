# Reference outputs of R survival (coxph, survdiff, survfit) for the engine's survival tests.
#
#   Rscript survival.R cox ORACLE EXPR SAMPLES TIME EVENT OUT.tsv [--covariates a,b]
#                         [--subset COL=VALUE] [--every K] [--q25]
#   Rscript survival.R km  ORACLE SAMPLES TIME EVENT OUT_PREFIX [--group COL]
#                         [--expr EXPR --gene ID]
#
# ORACLE is the folder with common.R (read_matrix, read_samples, write_tsv). Samples with a
# missing TIME, EVENT (numeric 0/1) or covariate are dropped first; --subset keeps the samples
# with COL == VALUE; --every K keeps features 1, 1+K, 1+2K, ... of EXPR.
#
# cox: one coxph per feature and configuration, configurations <x>_<ties> with x = cont (the
# feature as it is) or med (x > median(x), the median over the feature's non-missing values
# among the kept samples; R's median = quantile type 7) [or q25: x > quantile(x, 0.25)],
# ties = efron or breslow, each fitted with coxph.control(eps = 1e-11) (see CONTROL). Columns per
# configuration: coef, se, z, p (summary()$coefficients of the feature), loglik (final),
# score (score test of the feature = 0: without covariates coxph's $score, with covariates
# coxph(init = c(0, coef(fit0)), iter.max = 0)$score with fit0 the covariates-only fit on the
# same samples; NA when that fit warned or failed), n, nevent, iter, inf (1 when coxph warned
# that a coefficient may be infinite), nonconv (1 when it warned "Ran out of iterations"), err
# (1 when coxph failed or gave the feature an NA coefficient; then everything is NA).
# Without covariates also:
# cont_exact_score (coxph(ties = "exact", iter.max = 0)$score: the exact-ties score test at 0)
# and med_logrank_chisq (survdiff of the median split, rho = 0). threshold_med (and
# threshold_q25) are the split values.
#
# km: survfit(Surv(time, event) ~ group) rows (one per distinct time of each group):
# OUT_PREFIX_curve.tsv with group, time, n_risk, n_event, n_censor, surv, std_err_cumhaz
# (survfit's $std.err), std_err_surv (summary.survfit's: surv * std.err), lower, upper
# (conf.type = "log", 95%); OUT_PREFIX_summary.tsv with per group n, events, median, lcl, ucl
# (summary(fit)$table) and survdiff's observed, expected, chisq, df, p. With --gene the group
# is the gene's median split: low (<= median) / high (> median), median over the kept samples.

args <- commandArgs(trailingOnly = TRUE)
mode <- args[1]
source(file.path(args[2], "common.R"))
suppressPackageStartupMessages(library(survival))

cli <- parse_cli(args[-(1:2)], if (mode == "cox") 5 else 4, "see the header of survival.R")

load_samples <- function(path, time_col, event_col, covariates, subset) {
  s <- read_samples(path)
  s$.time <- as.numeric(s[[time_col]])
  s$.event <- as.numeric(s[[event_col]])
  keep <- !is.na(s$.time) & !is.na(s$.event)
  for (cv in covariates) keep <- keep & !is.na(s[[cv]])
  if (!is.null(subset)) {
    kv <- strsplit(subset, "=", fixed = TRUE)[[1]]
    keep <- keep & !is.na(s[[kv[1]]]) & s[[kv[1]]] == kv[2]
  }
  s <- s[keep, , drop = FALSE]
  for (cv in covariates) {
    num <- suppressWarnings(as.numeric(s[[cv]]))
    s[[cv]] <- if (all(!is.na(num))) num else factor(s[[cv]])
  }
  s
}

# eps = 1e-11 instead of coxph.control()'s 1e-9: at the default, coxph stops as soon as the
# log-likelihood changes by < 1e-9 relative, up to ~3e-7 relative away from the maximum in coef
# (measured on the synthetic cohort; 2e-5 for a coefficient of -9e-5 after one iteration).
CONTROL <- coxph.control(eps = 1e-11)

one_fit <- function(d, formula, ties, covariates) {
  inf <- 0; nonconv <- 0
  fit <- tryCatch(withCallingHandlers(
    coxph(formula, data = d, ties = ties, control = CONTROL),
    warning = function(w) {
      if (grepl("infinite", conditionMessage(w))) inf <<- 1
      if (grepl("Ran out of iterations", conditionMessage(w))) nonconv <<- 1
      invokeRestart("muffleWarning")
    }), error = function(e) NULL)
  if (is.null(fit) || is.na(coef(fit)[1])) {
    return(c(coef = NA, se = NA, z = NA, p = NA, loglik = NA, score = NA, n = NA, nevent = NA,
             iter = NA, inf = inf, nonconv = nonconv, err = 1))
  }
  cf <- summary(fit)$coefficients
  if (length(covariates) == 0) {
    score <- fit$score
  } else {
    dd <- d[!is.na(d$x), , drop = FALSE]
    f0_warned <- FALSE
    f0 <- withCallingHandlers(
      coxph(as.formula(paste("Surv(.time, .event) ~",
                             paste(sprintf("`%s`", covariates), collapse = " + "))),
            data = dd, ties = ties, control = CONTROL),
      warning = function(w) { f0_warned <<- TRUE; invokeRestart("muffleWarning") })
    s0 <- suppressWarnings(coxph(formula, data = dd, ties = ties, init = c(0, coef(f0)),
                                 control = coxph.control(iter.max = 0)))
    # NA when the covariates-only fit itself did not converge (no defined null estimate)
    score <- if (f0_warned || anyNA(coef(f0))) NA else s0$score
  }
  c(coef = cf[1, "coef"], se = cf[1, "se(coef)"], z = cf[1, "z"], p = cf[1, "Pr(>|z|)"],
    loglik = fit$loglik[2], score = score, n = fit$n, nevent = fit$nevent, iter = fit$iter,
    inf = inf, nonconv = nonconv, err = 0)
}

if (mode == "cox") {
  expr <- cli$pos[1]; samples <- cli$pos[2]; time_col <- cli$pos[3]; event_col <- cli$pos[4]
  out <- cli$pos[5]
  covariates <- if (is.null(cli$opts$covariates)) character(0) else
    strsplit(cli$opts$covariates, ",")[[1]]
  s <- load_samples(samples, time_col, event_col, covariates, cli$opts$subset)
  m <- read_matrix(expr)
  every <- as.integer(opt(cli, "every", "1"))
  m <- m[seq(1, nrow(m), by = every), rownames(s), drop = FALSE]
  splits <- list(cont = NULL, med = 0.5)
  if (isTRUE(cli$opts$q25)) splits$q25 <- 0.25
  rhs <- paste(c("x", sprintf("`%s`", covariates)), collapse = " + ")
  formula <- as.formula(paste("Surv(.time, .event) ~", rhs))
  rows <- timed("coxph", lapply(seq_len(nrow(m)), function(i) {
    res <- list()
    for (sp in names(splits)) {
      x <- m[i, ]
      if (!is.null(splits[[sp]])) {
        th <- unname(quantile(x, splits[[sp]], na.rm = TRUE, type = 7))
        res[[paste0("threshold_", sp)]] <- th
        x <- as.numeric(x > th)
      }
      d <- s; d$x <- x
      for (ties in c("efron", "breslow")) {
        r <- one_fit(d, formula, ties, covariates)
        names(r) <- paste(sp, ties, names(r), sep = "_")
        res <- c(res, as.list(r))
      }
      if (length(covariates) == 0 && sp == "cont") {
        ex <- tryCatch(suppressWarnings(coxph(Surv(.time, .event) ~ x, data = d, ties = "exact",
                                              control = coxph.control(iter.max = 0))$score),
                       error = function(e) NA)
        res$cont_exact_score <- ex
      }
      if (length(covariates) == 0 && sp == "med") {
        res$med_logrank_chisq <- tryCatch(survdiff(Surv(.time, .event) ~ x, data = d)$chisq,
                                          error = function(e) NA)
      }
    }
    res
  }))
  cols <- names(rows[[1]])
  for (r in rows) cols <- union(cols, names(r))
  df <- data.frame(feature_id = rownames(m), check.names = FALSE, stringsAsFactors = FALSE)
  for (cn in cols) {
    df[[cn]] <- vapply(rows, function(r) if (is.null(r[[cn]])) NA_real_ else as.numeric(r[[cn]]), 0)
  }
  write_tsv(df, out)
} else if (mode == "km") {
  samples <- cli$pos[1]; time_col <- cli$pos[2]; event_col <- cli$pos[3]; prefix <- cli$pos[4]
  s <- load_samples(samples, time_col, event_col, character(0), NULL)
  if (!is.null(cli$opts$gene)) {
    m <- read_matrix(cli$opts$expr)
    x <- m[cli$opts$gene, rownames(s)]
    s <- s[!is.na(x), , drop = FALSE]; x <- x[!is.na(x)]
    s$.group <- factor(ifelse(x > median(x), "high", "low"), levels = c("low", "high"))
  } else if (!is.null(cli$opts$group)) {
    s <- s[!is.na(s[[cli$opts$group]]), , drop = FALSE]
    s$.group <- factor(s[[cli$opts$group]])
  } else {
    s$.group <- factor(rep("all", nrow(s)))
  }
  fit <- timed("survfit", survfit(Surv(.time, .event) ~ .group, data = s))
  groups <- if (is.null(fit$strata)) rep("all", length(fit$time)) else
    sub("^\\.group=", "", rep(names(fit$strata), fit$strata))
  write_tsv(data.frame(group = groups, time = fit$time, n_risk = fit$n.risk,
                       n_event = fit$n.event, n_censor = fit$n.censor, surv = fit$surv,
                       std_err_cumhaz = fit$std.err, std_err_surv = fit$std.err * fit$surv,
                       lower = fit$lower, upper = fit$upper, stringsAsFactors = FALSE),
            paste0(prefix, "_curve.tsv"))
  tab <- summary(fit)$table
  if (is.null(dim(tab))) tab <- t(as.matrix(tab))
  summ <- data.frame(group = levels(s$.group)[levels(s$.group) %in% s$.group],
                     n = tab[, "records"], events = tab[, "events"], median = tab[, "median"],
                     lcl = tab[, "0.95LCL"], ucl = tab[, "0.95UCL"], stringsAsFactors = FALSE)
  if (nlevels(droplevels(s$.group)) > 1) {
    sd <- survdiff(Surv(.time, .event) ~ .group, data = s)
    summ$observed <- as.numeric(sd$obs); summ$expected <- as.numeric(sd$exp)
    summ$chisq <- sd$chisq; summ$df <- length(sd$n) - 1
    summ$p <- pchisq(sd$chisq, length(sd$n) - 1, lower.tail = FALSE)
  }
  write_tsv(summ, paste0(prefix, "_summary.tsv"))
} else stop("mode must be cox or km")
