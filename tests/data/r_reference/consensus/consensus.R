#!/usr/bin/env Rscript
# ConsensusClusterPlus reference outputs for tests/test_consensus.py (see README.md).
# Usage: Rscript consensus.R ORACLE_DIR OUT_DIR   (make_fixtures.sh gzips the large tables)
# Sources the oracle's common.R (write_tsv, write_matrix, fmt_num: full-precision numbers).
args <- commandArgs(trailingOnly = TRUE)
source(file.path(args[1], "common.R"))
out <- args[2]
suppressPackageStartupMessages(library(ConsensusClusterPlus))
pdf(NULL)  # CCP always draws; nothing is kept

# ---- input: 20 genes x 30 samples, 3 clusters (11, 10, 9) and two in-between samples -----
set.seed(20261201)
n_genes <- 20; sizes <- c(11, 10, 9)
truth <- rep(1:3, sizes)
pat <- matrix(rnorm(n_genes * 3), n_genes, 3)
x <- pat[, truth] + matrix(rnorm(n_genes * sum(sizes), sd = 0.75), n_genes)
x[, 1] <- 0.5 * pat[, 1] + 0.5 * pat[, 2] + rnorm(n_genes, sd = 0.6)   # between 1 and 2
x[, 12] <- 0.5 * pat[, 2] + 0.5 * pat[, 3] + rnorm(n_genes, sd = 0.6)  # between 2 and 3
ord <- sample(ncol(x)); x <- x[, ord]; truth <- truth[ord]
# multiples of 2^-10: the same values in float32 and float64
x <- round(x * 1024) / 1024
dimnames(x) <- list(sprintf("G%02d", seq_len(n_genes)), sprintf("S%02d", seq_len(ncol(x))))
attr(x, "id_name") <- "gene_id"
write_matrix(x, file.path(out, "expression.tsv"))
write_tsv(data.frame(sample = colnames(x), simulated = truth), file.path(out, "truth.tsv"))
x <- read_matrix(file.path(out, "expression.tsv"))  # R computes on exactly the committed text
stopifnot(identical(dimnames(x), list(sprintf("G%02d", 1:20), sprintf("S%02d", 1:30))))

# ---- capture CCP's internal counts and CDF areas (its own code computes them) ------------
# ccRun's accumulators at exit: ml[[k]] = times each pair was clustered together,
# mCount = times each pair was drawn together. CDF() only plots; its areaK/deltaK are kept.
trace("ccRun", exit = quote(assign(".ccrun", list(ml = ml, mCount = mCount), envir = .GlobalEnv)),
      where = asNamespace("ConsensusClusterPlus"), print = FALSE)
trace("CDF", exit = quote(assign(".cdf", list(areaK = areaK, deltaK = deltaK), envir = .GlobalEnv)),
      where = asNamespace("ConsensusClusterPlus"), print = FALSE)

samples <- colnames(x)
long_matrices <- function(ms, ks) {
  do.call(rbind, lapply(seq_along(ks), function(i) {
    m <- ms[[i]]; dimnames(m) <- list(samples, samples)
    data.frame(k = ks[i], sample = samples, m, check.names = FALSE)
  }))
}

runs <- list(
  ward_pearson = list(innerLinkage = "ward.D2", finalLinkage = "average", distance = "pearson",
                      pItem = 0.8, pFeature = 1, clusterAlg = "hc", reps = 2000),
  average_pearson = list(innerLinkage = "average", finalLinkage = "average", distance = "pearson",
                         pItem = 0.8, pFeature = 1, clusterAlg = "hc", reps = 2000),
  complete_euclidean_pfeature = list(innerLinkage = "complete", finalLinkage = "ward.D2",
                                     distance = "euclidean", pItem = 0.7, pFeature = 0.75,
                                     clusterAlg = "hc", reps = 2000),
  km_euclidean = list(innerLinkage = "average", finalLinkage = "average", distance = "euclidean",
                      pItem = 0.8, pFeature = 1, clusterAlg = "km", reps = 2000),
  full_average = list(innerLinkage = "average", finalLinkage = "average", distance = "pearson",
                      pItem = 1, pFeature = 1, clusterAlg = "hc", reps = 5),
  full_ward = list(innerLinkage = "ward.D2", finalLinkage = "average", distance = "pearson",
                   pItem = 1, pFeature = 1, clusterAlg = "hc", reps = 5)
)
max_k <- 5; seed <- 1
settings <- list()
for (name in names(runs)) {
  o <- runs[[name]]
  res <- ConsensusClusterPlus(x, maxK = max_k, reps = o$reps, pItem = o$pItem,
                              pFeature = o$pFeature, clusterAlg = o$clusterAlg,
                              innerLinkage = o$innerLinkage, finalLinkage = o$finalLinkage,
                              distance = o$distance, seed = seed)
  icl <- calcICL(res)
  ks <- 2:max_k
  write_tsv(long_matrices(lapply(ks, function(k) res[[k]]$consensusMatrix), ks),
            file.path(out, paste0(name, "_consensus.tsv")))
  # k = 0: pairs drawn together (mCount); k >= 2: pairs clustered together (ml[[k]])
  write_tsv(long_matrices(c(list(.ccrun$mCount), .ccrun$ml[ks]), c(0, ks)),
            file.path(out, paste0(name, "_counts.tsv")))
  classes <- data.frame(sample = samples)
  for (k in ks) classes[[paste0("k", k)]] <- unname(res[[k]]$consensusClass)
  write_tsv(classes, file.path(out, paste0(name, "_classes.tsv")))
  write_tsv(data.frame(k = ks, area = .cdf$areaK, delta = .cdf$deltaK),
            file.path(out, paste0(name, "_cdf.tsv")))
  write_tsv(as.data.frame(icl$clusterConsensus), file.path(out, paste0(name, "_cluster_consensus.tsv")))
  write_tsv(icl$itemConsensus, file.path(out, paste0(name, "_item_consensus.tsv")))
  settings[[name]] <- data.frame(run = name, reps = o$reps, pItem = o$pItem, pFeature = o$pFeature,
                                 clusterAlg = o$clusterAlg, innerLinkage = o$innerLinkage,
                                 finalLinkage = o$finalLinkage, distance = o$distance,
                                 maxK = max_k, seed = seed)
}
write_tsv(do.call(rbind, settings), file.path(out, "runs.tsv"))

# ---- pItem = pFeature = 1: every resample is the data, one hclust cut at each k ----------
d <- as.dist(1 - cor(x))
direct <- data.frame(sample = samples)
for (inner in c("average", "ward.D2")) {
  hc <- hclust(d, method = inner)
  for (k in 2:max_k) direct[[paste0(inner, "_k", k)]] <- unname(cutree(hc, k))
}
write_tsv(direct, file.path(out, "full_hclust_cutree.tsv"))

# ---- stats::hclust + cutree on tied and on continuous dissimilarities --------------------
set.seed(7)
n <- 14
tied <- matrix(0, n, n); tied[lower.tri(tied)] <- sample(1:4, n * (n - 1) / 2, replace = TRUE)
tied <- tied + t(tied)
cont <- as.matrix(dist(matrix(rnorm(n * 3), n)))
items <- sprintf("i%02d", 1:n)
dis <- list(tied = tied, continuous = cont)
inputs <- do.call(rbind, lapply(names(dis), function(case) {
  m <- dis[[case]]; dimnames(m) <- list(items, items)
  data.frame(case = case, item = items, m, check.names = FALSE)
}))
write_tsv(inputs, file.path(out, "hclust_inputs.tsv"))
cuts <- list(); heights <- list()
for (case in names(dis)) for (method in c("average", "complete", "single", "mcquitty",
                                          "ward.D2", "ward.D")) {
  hc <- hclust(as.dist(dis[[case]]), method = method)
  heights[[length(heights) + 1]] <- data.frame(case = case, method = method,
                                               step = seq_len(n - 1), merge1 = hc$merge[, 1],
                                               merge2 = hc$merge[, 2], height = hc$height)
  ct <- cutree(hc, 1:n)
  cuts[[length(cuts) + 1]] <- data.frame(case = case, method = method, k = 1:n,
                                         setNames(as.data.frame(t(ct)), items), check.names = FALSE)
}
write_tsv(do.call(rbind, heights), file.path(out, "hclust_merges.tsv"))
write_tsv(do.call(rbind, cuts), file.path(out, "hclust_cutree.tsv"))

# ---- stats::kmeans (Hartigan-Wong, iter.max = 10, as CCP calls it) from given start rows ---
# on random subsets of 24 of the samples: the partitions the engine's k-means must reproduce
set.seed(11)
km_cases <- list()
for (case in 1:60) {
  s <- sort(sample(ncol(x), 24))
  d <- t(x[, s])
  for (k in 2:8) {
    st <- sample.int(nrow(d), k)
    fit <- suppressWarnings(kmeans(d, d[st, , drop = FALSE], iter.max = 10,
                                   algorithm = "Hartigan-Wong"))
    km_cases[[length(km_cases) + 1]] <- data.frame(
      case = case, k = k, samples = paste(s, collapse = " "), starts = paste(st, collapse = " "),
      cluster = paste(fit$cluster, collapse = " "), iter = fit$iter, ifault = fit$ifault)
  }
}
write_tsv(do.call(rbind, km_cases), file.path(out, "kmeans_hartigan_wong.tsv"))

# ---- CCP's CDF on crafted consensus matrices: values on and next to the bin breaks ----------
# k = 2: j/100 (j = 0..100), j/100 + 1e-12 (inside hist's 1e-9 fuzz: counted in the bin below
# the break) and j/100 + 1e-8 (outside it), 1/3, 2/3, 1/7, 0.995; k = 3: ratios p/q, q <= 20;
# k = 4: only 0 and 1 (a perfect consensus)
set.seed(3)
n <- 25
crafted <- list(c((0:100) / 100, (1:99) / 100 + 1e-12, (1:96) / 100 + 1e-8,
                  1 / 3, 2 / 3, 1 / 7, 0.995),
                { q <- sample(1:20, 300, replace = TRUE); sample(0:20, 300, replace = TRUE) %% (q + 1) / q },
                sample(c(0, 1), 300, replace = TRUE))
ml <- vector("list", 4)
for (i in seq_along(crafted)) {
  m <- diag(n); m[lower.tri(m)] <- crafted[[i]]; m[upper.tri(m)] <- t(m)[upper.tri(m)]
  ml[[i + 1]] <- m
}
ConsensusClusterPlus:::CDF(ml)
items <- sprintf("i%02d", 1:n)
write_tsv(do.call(rbind, lapply(2:4, function(k) {
  m <- ml[[k]]; dimnames(m) <- list(items, items)
  data.frame(k = k, item = items, m, check.names = FALSE)
})), file.path(out, "cdf_crafted_matrices.tsv"))
write_tsv(data.frame(k = 2:4, area = .cdf$areaK, delta = .cdf$deltaK),
          file.path(out, "cdf_crafted.tsv"))
