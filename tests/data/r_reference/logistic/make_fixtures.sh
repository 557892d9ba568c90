#!/usr/bin/env bash
# Rebuild the logistic-regression R reference fixtures in this folder (see README.md).
#
# Usage: tests/data/r_reference/logistic/make_fixtures.sh [SHARED]
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

# ALL cohort, float32-rounded values (what the engine's store holds)
EXPR="$WORK/all_expression_f32.tsv.gz"
"$PYTHON" "$HERE/../make_inputs.py" all-f32 "$ALL/expression.tsv.gz" "$EXPR"
R="Rscript $HERE/logistic.R $ORACLE $EXPR $ALL/samples.tsv"
# 1. sex F vs M adjusted for age, odds ratio per 1-SD; BH over all 12,625 probes
$R sex F M "$WORK/all_f32_sex_age.tsv" --covariates age --every 25 --bh
# 2. BCR/ABL vs NEG, median split, interaction with sex
$R mol.biol BCR/ABL NEG "$WORK/all_f32_bcr_median_x_sex.tsv" --interaction sex --scale median --every 25
# 3. BCR/ABL vs NEG per unit (raw log2), adjusted for age, stratified by sex; BH per stratum
$R mol.biol BCR/ABL NEG "$WORK/all_f32_bcr_raw_by_sex.tsv" --covariates age --stratify sex \
  --scale raw --every 25 --bh
for f in all_f32_sex_age all_f32_bcr_median_x_sex all_f32_bcr_raw_by_sex; do
  gzip -n -9 -c "$WORK/$f.tsv" > "$HERE/$f.tsv.gz"   # -n: no name/time stamp, reproducible bytes
done
ls -l "$HERE" >&2
