#!/usr/bin/env Rscript
# DESeq2 1.38 reference outputs beyond oracle/deseq2.R, for tests/test_deseq2.py and
# tests/test_vst.py. Sourced helpers: the oracle's common.R (first argument).
#
#   Rscript deseq2_extras.R COMMON edit COUNTS_IN KIND OUT [--samples SHEET]
#       deterministic edge cases written into a count matrix (below; with the sample sheet of
#       make_nb_counts.R, whose true size factors gene 11 uses)
#   Rscript deseq2_extras.R COMMON deseq COUNTS SAMPLES DESIGN GROUP TEST REF OUT_PREFIX
#           [--sf ratio|poscounts] [--fit parametric|mean]
#       DESeq(DESeqDataSetFromMatrix(counts, samples, DESIGN), sfType, fitType), then
#       results(contrast = c(GROUP, TEST, REF)) with the defaults (independent filtering,
#       alpha 0.1, Cook's cutoff). Writes OUT_PREFIX.tsv (per gene) and OUT_PREFIX_meta.tsv
#       (size factors, trend, prior variance, filtering, lowess) and OUT_PREFIX_numrej.tsv.
#   Rscript deseq2_extras.R COMMON vst COUNTS OUT_PREFIX [--sf ratio|poscounts]
#           [--fit parametric|mean]
#       varianceStabilizingTransformation(blind = TRUE) of a DESeqDataSet with design ~ 1
#       whose size factors are estimateSizeFactors(type = sf): OUT_PREFIX.tsv (genes x
#       samples) and OUT_PREFIX_meta.tsv (size factors and trend coefficients).
#   Rscript deseq2_extras.R COMMON simulate OUT_PREFIX --genes G --patients P --seed S --sd SD
#       counts of P patients x groups A, B (sample i of A pairs with sample i of B), drawn as
#       make_nb_counts.R does but with log dispersions spread by N(0, SD^2) around the trend
#       (a prior variance above DESeq2's floor of 0.25) and a patient effect 2^N(0, 0.5^2):
#       OUT_PREFIX_counts.tsv.gz, OUT_PREFIX_samples.tsv.
#   Rscript deseq2_extras.R COMMON sizefactors COUNTS OUT
#       estimateSizeFactors(type = "ratio") and (type = "poscounts") of a design ~ 1 dataset.
args <- commandArgs(trailingOnly = TRUE)
source(args[1])
suppressPackageStartupMessages(library(DESeq2))
mode <- args[2]
rest <- args[-(1:2)]
cli <- parse_cli(rest, n_pos = switch(mode, edit = 3, deseq = 7, vst = 2, sizefactors = 2, simulate = 1),
                 usage = "see the header of deseq2_extras.R")
a <- cli$pos
sf_type <- opt(cli, "sf", "ratio")
fit_type <- opt(cli, "fit", "parametric")

read_counts <- function(path) {
  m <- read_matrix(path)
  cnt <- round(m); storage.mode(cnt) <- "integer"; cnt
}
meta_tsv <- function(values, path) write_tsv(data.frame(name = names(values), value = unname(values)), path)

if (mode == "edit") {
  # Edge cases, in place of the first genes of the matrix (their original values are dropped):
  # all-zero genes, a single non-zero count, zeros in one group, one huge count (a Cook's
  # outlier), a constant gene, two non-zero counts, an outlier of a low group below the counts of the other group (whose
  # p-value results() keeps); KIND "outliers" also multiplies one count of
  # every 40th gene from the 41st by 25 (outliers that DESeq2 replaces with >= 7 replicates).
  m <- read_counts(a[1]); n <- ncol(m); half <- n %/% 2
  m[1:3, ] <- 0L
  m[4, ] <- 0L; m[4, 2] <- 40L
  m[5, ] <- 0L; m[5, n] <- 3L
  m[6, 1:half] <- 0L
  m[7, (half + 1):n] <- 0L
  m[8, ] <- m[8, ] + 5L; m[8, 3] <- m[8, 3] + 2000L
  m[9, ] <- 17L
  m[10, ] <- 0L; m[10, c(1, n)] <- c(6L, 9L)
  if (!is.null(opt(cli, "samples"))) {  # 10 x and 1000 x the true size factors, one 300
    sf <- read_samples(opt(cli, "samples"))[colnames(m), "true_size_factor"]
    m[11, ] <- as.integer(round(c(rep(10, half), rep(1000, n - half)) * as.numeric(sf)))
    m[11, 2] <- 300L
  }
  if (a[2] == "outliers") {
    rows <- seq(41, nrow(m), by = 40)
    cols <- ((rows %/% 40) %% n) + 1
    m[cbind(rows, cols)] <- m[cbind(rows, cols)] * 25L + 30L
  } else if (a[2] == "zeros") {  # every gene has a zero: ratio size factors fail, poscounts not
    m[cbind(seq_len(nrow(m)), ((seq_len(nrow(m)) - 1) %% n) + 1)] <- 0L
  }
  write_matrix(m, a[3], id = "gene_id")
  quit(status = 0)
}

if (mode == "simulate") {
  G <- as.integer(opt(cli, "genes", 1000)); P <- as.integer(opt(cli, "patients", 4))
  sdlog <- as.numeric(opt(cli, "sd", 1))
  RNGkind("Mersenne-Twister", "Inversion", "Rejection"); set.seed(as.integer(opt(cli, "seed", 1)))
  n <- 2 * P; group <- rep(c("A", "B"), each = P); patient <- rep(sprintf("P%d", seq_len(P)), 2)
  base_mean <- 2^rnorm(G, 6, 2.5)
  disp <- (0.04 + 2 / base_mean) * exp(rnorm(G, 0, sdlog))
  sf <- exp(runif(n, log(0.5), log(2)))
  lfc <- numeric(G); de <- sort(sample(G, round(0.1 * G)))
  lfc[de] <- sample(c(-1, 1), length(de), replace = TRUE) * runif(length(de), 0.5, 2.5)
  pe <- 2^rnorm(P, 0, 0.5)[rep(seq_len(P), 2)]
  mu <- outer(base_mean, sf * pe) * 2^outer(lfc, as.numeric(group == "B"))
  counts <- matrix(rnbinom(G * n, mu = as.vector(mu), size = rep(1 / disp, n)), G, n)
  smp <- sprintf("S%02d", seq_len(n))
  dimnames(counts) <- list(sprintf("GENE%05d", seq_len(G)), smp)
  write_matrix(counts, paste0(a[1], "_counts.tsv.gz"), id = "gene_id")
  write_tsv(data.frame(sample_id = smp, group = group, patient = patient),
            paste0(a[1], "_samples.tsv"))
  quit(status = 0)
}

if (mode == "sizefactors") {
  cnt <- read_counts(a[1])
  dds <- DESeqDataSetFromMatrix(cnt, data.frame(row.names = colnames(cnt)), ~ 1)
  ratio <- tryCatch(sizeFactors(estimateSizeFactors(dds, type = "ratio")),
                    error = function(e) rep(NA_real_, ncol(cnt)))
  pos <- sizeFactors(estimateSizeFactors(dds, type = "poscounts"))
  write_tsv(data.frame(sample_id = colnames(cnt), ratio = unname(ratio), poscounts = unname(pos)), a[2])
  quit(status = 0)
}

if (mode == "vst") {
  cnt <- read_counts(a[1])
  dds <- DESeqDataSetFromMatrix(cnt, data.frame(row.names = colnames(cnt)), ~ 1)
  dds <- estimateSizeFactors(dds, type = sf_type)
  v <- timed("vst", varianceStabilizingTransformation(dds, blind = TRUE, fitType = fit_type))
  write_matrix(assay(v), paste0(a[2], ".tsv.gz"), id = "gene_id")
  # the trend vst() fitted inside (the same calls on the same dataset)
  fn <- dispersionFunction(estimateDispersionsFit(estimateDispersionsGeneEst(dds, quiet = TRUE),
                                                  fitType = fit_type, quiet = TRUE))
  coefs <- if (fit_type == "parametric") attr(fn, "coefficients") else c(mean = attr(fn, "mean"))
  meta_tsv(c(setNames(sizeFactors(dds), paste0("size_factor_", colnames(cnt))), coefs),
           paste0(a[2], "_meta.tsv"))
  quit(status = 0)
}

# mode == "deseq"
cnt <- read_counts(a[1])
s <- read_samples(a[2])[colnames(cnt), , drop = FALSE]
form <- as.formula(a[3]); group <- a[4]; test <- a[5]; ref <- a[6]; prefix <- a[7]
cd <- as.data.frame(lapply(s[, all.vars(form), drop = FALSE], factor), row.names = rownames(s))
cd[[group]] <- relevel(cd[[group]], ref)
dds <- DESeqDataSetFromMatrix(cnt, cd, design = form)
dds <- timed("deseq2", DESeq(dds, sfType = sf_type, fitType = fit_type, quiet = TRUE))
res <- results(dds, contrast = c(group, test, ref))
rd <- mcols(dds)
fn <- dispersionFunction(dds)
p <- ncol(attr(dds, "dispModelMatrix")); m <- ncol(dds)
cutoff <- qf(0.99, p, m - p)
has <- function(col) if (col %in% names(rd)) rd[[col]] else rep(NA, nrow(dds))
out <- cbind(id_col(cnt, "gene_id"),
             as.data.frame(res)[, c("baseMean", "log2FoldChange", "lfcSE", "stat", "pvalue", "padj")],
             dispGeneEst = rd$dispGeneEst, dispGeneIter = rd$dispGeneIter, dispFit = rd$dispFit,
             dispMAP = rd$dispMAP, dispersion = rd$dispersion, dispIter = rd$dispIter,
             dispOutlier = rd$dispOutlier, betaConv = rd$betaConv, betaIter = rd$betaIter,
             maxCooks = rd$maxCooks, replace = has("replace"), allZero = rd$allZero)
write_tsv(out, paste0(prefix, ".tsv"))
coefs <- if (fit_type == "parametric") attr(fn, "coefficients") else c(mean = attr(fn, "mean"))
md <- metadata(res)
meta_tsv(c(setNames(sizeFactors(dds), paste0("size_factor_", colnames(cnt))), coefs,
           varLogDispEsts = attr(fn, "varLogDispEsts"), dispPriorVar = attr(fn, "dispPriorVar"),
           cooksCutoff = cutoff, filterThreshold = unname(md$filterThreshold),
           filterTheta = md$filterTheta, nCells7 = sum(DESeq2:::nOrMoreInCell(attr(dds, "modelMatrix"), 7))),
         paste0(prefix, "_meta.tsv"))
write_tsv(data.frame(theta = md$filterNumRej$theta, numRej = md$filterNumRej$numRej,
                     lowess_x = md$lo.fit$x, lowess_y = md$lo.fit$y), paste0(prefix, "_numrej.tsv"))
