#!/usr/bin/env bash
# Rebuild the survival R reference fixtures in this folder (see README.md).
#
# Usage: tests/data/r_reference/survival/make_fixtures.sh [SHARED]
#   SHARED  folder holding oracle/ (common.R) and data/all/ (default: ../shared relative to
#           the repository root). Relative paths are taken from the repo root.
# Environment:
#   PYTHON  Python with numpy + pandas (default: python3)
#   WORK    scratch folder for the float32 ALL matrix (default: a fresh mktemp -d, removed at
#           the end unless KEEP=1)
# Needs Rscript with survival, data.table and R.utils.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../fixture_env.sh"
OUT="$HERE"
R="$HERE/survival.R"

Rscript -e 'suppressPackageStartupMessages({library(survival); library(data.table); library(R.utils)});
  print(sessionInfo()); cat("\nsurvival", format(packageVersion("survival")), "\n")' \
  > "$OUT/sessionInfo.txt"

gz() { gzip -n -9 -c "$1" > "$2"; rm "$1"; }   # -n: no name/time stamp, reproducible bytes

# --- 1. ALL cohort: float32 expression, relapse after diagnosis ------------------------
EXPR="$WORK/all_expression_f32.tsv.gz"
"$PYTHON" "$HERE/../make_inputs.py" all-f32 "$ALL/expression.tsv.gz" "$EXPR"
"$PYTHON" "$HERE/make_inputs.py" all-survival "$ALL/samples.tsv" "$OUT/all_survival.tsv"
S="$OUT/all_survival.tsv"
Rscript "$R" cox "$ORACLE" "$EXPR" "$S" time_days relapse "$WORK/all_cox.tsv" --every 50
Rscript "$R" cox "$ORACLE" "$EXPR" "$S" time_days relapse "$WORK/all_cox_age_sex.tsv" \
  --every 50 --covariates age,sex
gz "$WORK/all_cox.tsv" "$OUT/all_cox.tsv.gz"
gz "$WORK/all_cox_age_sex.tsv" "$OUT/all_cox_age_sex.tsv.gz"
Rscript "$R" km "$ORACLE" "$S" time_days relapse "$OUT/all_km"
Rscript "$R" km "$ORACLE" "$S" time_days relapse "$OUT/all_km_mol_biol" --group mol.biol
Rscript "$R" km "$ORACLE" "$S" time_days relapse "$OUT/all_km_40452_at" --expr "$EXPR" \
  --gene 40452_at

# --- 2. synthetic cohort (seed 20261122): ties, censoring, NA, special features ----------
"$PYTHON" "$HERE/make_inputs.py" synthetic "$OUT"
SE="$OUT/synthetic_expression.tsv"; SS="$OUT/synthetic_samples.tsv"
Rscript "$R" cox "$ORACLE" "$SE" "$SS" time status "$WORK/synthetic_cox.tsv" --q25
Rscript "$R" cox "$ORACLE" "$SE" "$SS" time status "$WORK/synthetic_cox_age_arm.tsv" \
  --covariates age,arm
for site in S1 S2; do
  Rscript "$R" cox "$ORACLE" "$SE" "$SS" time status "$WORK/synthetic_cox_site_$site.tsv" \
    --subset "site=$site"
done
for f in synthetic_cox synthetic_cox_age_arm synthetic_cox_site_S1 synthetic_cox_site_S2; do
  gz "$WORK/$f.tsv" "$OUT/$f.tsv.gz"
done
Rscript "$R" km "$ORACLE" "$SS" time status "$OUT/synthetic_km"
Rscript "$R" km "$ORACLE" "$SS" time status "$OUT/synthetic_km_arm" --group arm

ls -l "$OUT" >&2
