#!/usr/bin/env Rscript
# Bioconductor qvalue on one column of a TSV: copies every input column unchanged, appends
# <P_COL>_qvalue_<variant> columns, and writes each variant's pi0 to <OUT without .tsv>_pi0.tsv.
# Variants: lambda0.5 = qvalue(p, lambda = 0.5); bootstrap = qvalue(p, pi0.method = "bootstrap");
# smoother = qvalue(p) (the package default). lfdr is not computed (lfdr.out = FALSE).
# Usage: ORACLE=/path/to/shared/oracle Rscript qvalue.R IN.tsv P_COL OUT.tsv
if (!nzchar(Sys.getenv("ORACLE"))) stop("set ORACLE to the oracle folder (it has common.R)")
source(file.path(Sys.getenv("ORACLE"), "common.R"))
suppressPackageStartupMessages(library(qvalue))
cli <- parse_cli(n_pos = 3, usage = "qvalue.R IN.tsv P_COL OUT.tsv")
a <- cli$pos
d <- read.delim(a[1], quote = "", check.names = FALSE, colClasses = "character", na.strings = "NA")
p <- as.numeric(d[[a[2]]])
variants <- list(lambda0.5 = list(lambda = 0.5), bootstrap = list(pi0.method = "bootstrap"),
                 smoother = list())
pi0 <- data.frame(variant = names(variants), pi0 = NA_real_)
for (k in seq_along(variants)) {
  fit <- timed(names(variants)[k], do.call(qvalue, c(list(p = p, lfdr.out = FALSE), variants[[k]])))
  d[[paste0(a[2], "_qvalue_", names(variants)[k])]] <- fit$qvalues
  pi0$pi0[k] <- fit$pi0
}
write_tsv(d, a[3])
write_tsv(pi0, sub("\\.tsv$", "_pi0.tsv", a[3]))
