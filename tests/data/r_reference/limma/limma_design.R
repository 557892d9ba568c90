#!/usr/bin/env Rscript
# limma lmFit + eBayes for a formula design over the sample sheet, one coefficient.
# Usage: Rscript limma_design.R COMMON_R EXPR SAMPLES FORMULA COEF OUT.tsv [--ref COL=LEVEL] [--trend] [--robust] [--every K]
#   COMMON_R  path of <shared>/oracle/common.R (matrix/sample readers, TSV writer)
#   FORMULA   e.g. "~ mol.biol + age"; text columns are factors, age-like columns numeric
#             (a column is numeric when every non-NA value parses as a number)
#   COEF      an R model.matrix column name, e.g. "mol.biolBCR/ABL"
#   --ref     reference level of a factor (relevel), as the engine's `reference:`
#   --every K write every K-th gene only (the fit uses all genes)
# Samples with NA in a formula variable are dropped (model.frame's na.omit), as the engine does.
args <- commandArgs(TRUE)
source(args[1])
suppressPackageStartupMessages(library(limma))
cli <- parse_cli(args[-1], n_pos = 5, usage = "limma_design.R COMMON_R EXPR SAMPLES FORMULA COEF OUT.tsv [--ref COL=LEVEL] [--trend] [--robust] [--every K]")
a <- cli$pos
m <- read_matrix(a[1]); s <- read_samples(a[2])[colnames(m), , drop = FALSE]
f <- as.formula(a[3])
for (v in all.vars(f)) {
  x <- s[[v]]; num <- suppressWarnings(as.numeric(x))
  s[[v]] <- if (all(is.na(x) | !is.na(num))) num else factor(x)
}
ref <- opt(cli, "ref")
if (!is.null(ref)) { kv <- strsplit(ref, "=", fixed = TRUE)[[1]]; s[[kv[1]]] <- relevel(s[[kv[1]]], kv[2]) }
mf <- model.frame(f, s, na.action = na.omit)
design <- model.matrix(f, mf)
m <- m[, rownames(mf), drop = FALSE]
fit <- eBayes(lmFit(m, design), trend = isTRUE(opt(cli, "trend")), robust = isTRUE(opt(cli, "robust")))
tt <- topTable(fit, coef = a[4], number = Inf, sort.by = "none", adjust.method = "BH")
res <- cbind(id_col(m), tt[, c("logFC", "AveExpr", "t", "P.Value", "adj.P.Val", "B")],
             sigma = fit$sigma, s2_post = fit$s2.post, df_total = fit$df.total,
             s2_prior = rep_len(fit$s2.prior, nrow(m)), df_prior = rep_len(fit$df.prior, nrow(m)),
             df_residual = fit$df.residual)
every <- as.integer(opt(cli, "every", "1"))
write_tsv(res[seq(1, nrow(res), by = every), ], a[5])
