#!/usr/bin/env Rscript
# edgeR calls beyond oracle/edger_tmm.R: calcNormFactors options, cpm with given library
# sizes, filterByExpr (on the counts and on a crafted matrix with counts at the cut-offs).
# Usage: Rscript edger_extra.R COMMON_R COUNTS.tsv.gz SAMPLES.tsv OUTDIR
args <- commandArgs(TRUE)
source(args[1])
suppressPackageStartupMessages(library(edgeR))
m <- read_matrix(args[2]); s <- read_samples(args[3])[colnames(m), , drop = FALSE]
out <- args[4]
lib <- colSums(m)
custom_lib <- lib * 1.1^(seq_len(ncol(m)) - 6)   # lib.size given by the caller

nf <- function(...) calcNormFactors(m, ...)
factors <- data.frame(
  sample_id = colnames(m), lib_size = lib, custom_lib_size = custom_lib,
  TMM_noweight = nf(method = "TMM", doWeighting = FALSE),
  TMM_trim_02_01 = nf(method = "TMM", logratioTrim = 0.2, sumTrim = 0.1),
  TMM_acutoff_m18 = nf(method = "TMM", Acutoff = -18),
  TMM_ref3 = nf(method = "TMM", refColumn = 3),
  TMM_custom_lib = nf(method = "TMM", lib.size = custom_lib),
  TMMwsp_ref3 = nf(method = "TMMwsp", refColumn = 3),
  TMMwsp_noweight = nf(method = "TMMwsp", doWeighting = FALSE),
  RLE_custom_lib = nf(method = "RLE", lib.size = custom_lib),
  upperquartile_p09 = nf(method = "upperquartile", p = 0.9),
  none = nf(method = "none"),
  check.names = FALSE)
write_tsv(factors, file.path(out, "counts_normfactors_options.tsv"))

# cpm with caller-given library sizes (no factors), log with prior.count 1 and raw
write_matrix(cpm(m, lib.size = custom_lib, log = TRUE, prior.count = 1),
             file.path(out, "counts_logcpm_customlib_pc1.tsv"), id = "gene_id")

# filterByExpr on the counts
tmm <- calcNormFactors(m, method = "TMM")
keep <- data.frame(
  gene_id = rownames(m),
  default = filterByExpr(m, group = NULL),
  group = filterByExpr(m, group = s$group),
  group_tmm_lib = filterByExpr(m, group = s$group, lib.size = lib * tmm),
  group_min5_total30 = filterByExpr(m, group = s$group, min.count = 5, min.total.count = 30),
  large_n2 = filterByExpr(m, group = s$group, large.n = 2, min.prop = 0.5),
  check.names = FALSE)
write_tsv(keep, file.path(out, "counts_filter_by_expr.tsv"))

# crafted: counts exactly at the cut-offs; libraries of exactly 1e6 (a filler gene)
crafted <- rbind(
  at_cutoff_3 = c(10, 10, 10, 0, 0, 0, 0),
  at_cutoff_2 = c(10, 10, 9, 0, 0, 0, 0),
  total_15_low_cpm = c(5, 5, 5, 0, 0, 0, 0),
  all_10 = rep(10, 7),
  total_exactly_15 = c(15, 0, 0, 0, 0, 0, 0),
  total_14 = c(7, 7, 0, 0, 0, 0, 0),
  b_group_10 = c(0, 0, 0, 10, 10, 10, 0),
  zero = rep(0, 7),
  large = c(500, 400, 300, 200, 100, 50, 0))
crafted <- rbind(crafted, filler = 1e6 - colSums(crafted))
colnames(crafted) <- sprintf("C%d", 1:7)
crafted_group <- c("A", "A", "A", "B", "B", "B", "B")
uneven <- crafted; uneven["filler", ] <- uneven["filler", ] * c(1, 0.5, 2, 1, 1.5, 0.8, 1)
crafted_keep <- data.frame(
  gene_id = rownames(crafted),
  group = filterByExpr(crafted, group = crafted_group),
  default = filterByExpr(crafted, group = NULL),
  uneven_group = filterByExpr(uneven, group = crafted_group),
  large_n2 = filterByExpr(crafted, group = crafted_group, large.n = 2, min.prop = 0.5),
  check.names = FALSE)
write_matrix(crafted, file.path(out, "crafted_counts.tsv"), id = "gene_id")
write_matrix(uneven, file.path(out, "crafted_uneven_counts.tsv"), id = "gene_id")
write_tsv(data.frame(sample_id = colnames(crafted), group = crafted_group),
          file.path(out, "crafted_samples.tsv"))
write_tsv(crafted_keep, file.path(out, "crafted_filter_by_expr.tsv"))
