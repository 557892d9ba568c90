#!/usr/bin/env bash
# Rebuild the multiple-testing R fixtures in this folder (see README.md). Byte-for-byte
# reproducible. Needs Rscript with data.table (oracle common.R) and Bioconductor qvalue
# (Debian: apt-get install r-base-core r-cran-data.table r-bioc-qvalue).
#
# Usage: tests/data/r_reference/multitest/make_fixtures.sh [SHARED]
#   SHARED  folder holding oracle/ (default: ../shared relative to the repository root)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../../.." && pwd)"
cd "$ROOT"
export ORACLE="$(cd "${1:-../shared}/oracle" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

Rscript -e 'suppressPackageStartupMessages({library(data.table); library(qvalue)}); print(sessionInfo());
  cat("\nqvalue", format(packageVersion("qvalue")), "\ndata.table", format(packageVersion("data.table")), "\n")' \
  > "$HERE/sessionInfo.txt"

# 1. ALL, float32: R's Welch p-values of BCR/ABL vs NEG (the parent folder's fixture), whole cohort.
Rscript "$ORACLE/padjust.R" "$HERE/../all_f32_ttest.tsv.gz" welch_p "$WORK/padjust.tsv" \
  --methods BH,BY,bonferroni,holm,hochberg
Rscript "$HERE/qvalue.R" "$WORK/padjust.tsv" welch_p "$WORK/all_f32_welch_p_adjusted.tsv"
# drop the copied welch_p column (2nd): the input stays in ../all_f32_ttest.tsv.gz, same row order
[[ "$(head -1 "$WORK/all_f32_welch_p_adjusted.tsv" | cut -f2)" == welch_p ]]
cut -f1,3- "$WORK/all_f32_welch_p_adjusted.tsv" | gzip -n -9 > "$HERE/all_f32_welch_p_adjusted.tsv.gz"
cp "$WORK/all_f32_welch_p_adjusted_pi0.tsv" "$HERE/"

# 2. Synthetic p-values with ties, exact 0 and 1, tiny values, NA and NaN (R's default RNG).
Rscript -e 'set.seed(20261122)
  p <- c(round(runif(150), 2), rbeta(100, 0.2, 4), rep(0, 5), rep(1, 6), rep(0.05, 10),
         rep(1e-300, 3), 5e-324, rep(NA, 8), rep(NaN, 2))
  d <- data.frame(id = sprintf("p%03d", seq_along(p)), p = sample(p))
  source(file.path(Sys.getenv("ORACLE"), "common.R")); write_tsv(d, commandArgs(TRUE)[1])' \
  "$HERE/synthetic_p.tsv"
Rscript "$ORACLE/padjust.R" "$HERE/synthetic_p.tsv" p "$WORK/synthetic_padjust.tsv" \
  --methods BH,BY,bonferroni,holm,hochberg
Rscript "$HERE/qvalue.R" "$WORK/synthetic_padjust.tsv" p "$HERE/synthetic_p_adjusted.tsv"

# 3. 60 small p-value sets and qvalue's pi0 of each (where the bootstrap's lambda choice varies).
Rscript "$HERE/pi0_cases.R" "$WORK/pi0_cases"
gzip -n -9 -c "$WORK/pi0_cases_p.tsv" > "$HERE/pi0_cases_p.tsv.gz"
cp "$WORK/pi0_cases_pi0.tsv" "$HERE/"

ls -l "$HERE" >&2
