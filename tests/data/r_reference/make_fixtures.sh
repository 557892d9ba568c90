#!/usr/bin/env bash
# Rebuild the R reference fixtures in this folder (see README.md).
#
# Usage: tests/data/r_reference/make_fixtures.sh [SHARED]
#   SHARED  folder holding oracle/ and data/all/ (default: ../shared relative to
#           the repository root). Relative paths are taken from the repo root.
# Environment:
#   PYTHON  Python with numpy + pandas (default: python3)
#   WORK    scratch folder for the big float32 ALL matrix and uncompressed
#           outputs (default: a fresh mktemp -d, removed at the end unless KEEP=1)
# Needs Rscript with data.table and R.utils (fread of .gz)
# (Debian: apt-get install r-base-core r-cran-data.table r-cran-r.utils).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/fixture_env.sh"
OUT="$HERE"

# --- versions --------------------------------------------------------------
Rscript -e 'suppressPackageStartupMessages(library(data.table)); suppressPackageStartupMessages(library(R.utils)); print(sessionInfo()); cat("\ndata.table", format(packageVersion("data.table")), "\nR.utils", format(packageVersion("R.utils")), "\n")' \
  > "$OUT/sessionInfo.txt"

# --- 1. ALL cohort, float32 ------------------------------------------------
EXPR="$WORK/all_expression_f32.tsv.gz"
"$PYTHON" "$HERE/make_inputs.py" all-f32 "$ALL/expression.tsv.gz" "$EXPR"
# check that R reads the float32 decimals back as exactly those doubles
Rscript -e 'source(file.path(commandArgs(TRUE)[1], "common.R")); m <- read_matrix(commandArgs(TRUE)[2]);
  d <- data.frame(probe_id = rownames(m), matrix(sprintf("%.17g", m), nrow(m)), check.names = FALSE);
  names(d)[-1] <- colnames(m); fwrite(d, commandArgs(TRUE)[3], sep = "\t", quote = FALSE)' \
  "$ORACLE" "$EXPR" "$WORK/all_expression_f32_R17.tsv"
"$PYTHON" "$HERE/make_inputs.py" check-f32 "$EXPR" "$WORK/all_expression_f32_R17.tsv"

Rscript "$ORACLE/ttest.R"    "$EXPR" "$ALL/samples.tsv" mol.biol BCR/ABL NEG "$WORK/all_f32_ttest.tsv"
Rscript "$ORACLE/wilcoxon.R" "$EXPR" "$ALL/samples.tsv" mol.biol BCR/ABL NEG "$WORK/all_f32_wilcoxon.tsv"
Rscript "$ORACLE/padjust.R"  "$WORK/all_f32_ttest.tsv" welch_p "$WORK/all_f32_padjust_welch_p.tsv" --methods BH
for f in all_f32_ttest all_f32_wilcoxon all_f32_padjust_welch_p; do
  gzip -n -9 -c "$WORK/$f.tsv" > "$OUT/$f.tsv.gz"     # -n: no name/time stamp, reproducible bytes
done

# --- 2. synthetic paired cohort (seed 20261121) ------------------------------
"$PYTHON" "$HERE/make_inputs.py" synthetic "$OUT"
PE="$OUT/paired_expression.tsv"; PS="$OUT/paired_samples.tsv"
Rscript "$ORACLE/ttest.R"    "$PE" "$PS" timepoint post pre "$OUT/paired_ttest.tsv"    --pair patient
Rscript "$ORACLE/wilcoxon.R" "$PE" "$PS" timepoint post pre "$OUT/paired_wilcoxon.tsv" --pair patient
Rscript "$ORACLE/ttest.R"    "$PE" "$PS" arm A B "$OUT/synthetic_arm_ttest.tsv"
Rscript "$ORACLE/wilcoxon.R" "$PE" "$PS" arm A B "$OUT/synthetic_arm_wilcoxon.tsv"

ls -l "$OUT" >&2
