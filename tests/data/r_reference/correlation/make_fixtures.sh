#!/usr/bin/env bash
# Rebuild the correlation R reference fixtures in this folder (see README.md).
#
# Usage: tests/data/r_reference/correlation/make_fixtures.sh [SHARED]
#   SHARED  folder holding oracle/ and data/all/ (default: ../shared relative to the
#           repository root). Relative paths are taken from the repo root.
# Environment:
#   PYTHON  Python with numpy + pandas (default: python3), for ../make_inputs.py
#   WORK    scratch folder (default: a fresh mktemp -d, removed at the end unless KEEP=1)
# Needs Rscript with data.table and R.utils (Debian: r-base-core r-cran-data.table r-cran-r.utils).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../fixture_env.sh"

Rscript -e 'suppressPackageStartupMessages(library(data.table)); suppressPackageStartupMessages(library(R.utils)); print(sessionInfo()); cat("\ndata.table", format(packageVersion("data.table")), "\nR.utils", format(packageVersion("R.utils")), "\n")' \
  > "$HERE/sessionInfo.txt"

# --- ALL cohort, float32-rounded values (what the engine's store holds) -------------------
EXPR="$WORK/all_expression_f32.tsv.gz"
"$PYTHON" "$HERE/../make_inputs.py" all-f32 "$ALL/expression.tsv.gz" "$EXPR"
Rscript "$HERE/correlation.R" "$ORACLE" "$EXPR" "$ALL/samples.tsv" age "$WORK/all_f32_age.tsv" --every 25
Rscript "$HERE/correlation.R" "$ORACLE" "$EXPR" "$ALL/samples.tsv" age "$WORK/all_f32_age_by_sex.tsv" \
  --stratify sex --every 25
for f in all_f32_age all_f32_age_by_sex; do
  gzip -n -9 -c "$WORK/$f.tsv" > "$HERE/$f.tsv.gz"   # -n: no name/time stamp, reproducible bytes
done

# --- exact Spearman p-values (AS 89) on synthetic untied data (R seed 20261122) -----------
Rscript "$HERE/exact_spearman.R" "$ORACLE" "$WORK/exact_inputs.tsv" "$HERE/exact_spearman.tsv"
gzip -n -9 -c "$WORK/exact_inputs.tsv" > "$HERE/exact_inputs.tsv.gz"

ls -l "$HERE" >&2
