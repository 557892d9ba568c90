#!/usr/bin/env bash
# Rebuild the limma reference fixtures in this folder (see README.md).
# Usage: tests/data/r_reference/limma/make_fixtures.sh [SHARED]   (SHARED: default ../shared)
# Needs Rscript with limma (Debian r-bioc-limma), statmod, data.table, R.utils; PYTHON with numpy+pandas.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../../.." && pwd)"
cd "$ROOT"
SHARED="$(cd "${1:-../shared}" && pwd)"
ORACLE="$SHARED/oracle"; ALL="$SHARED/data/all"; REF="$HERE/.."
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT

Rscript -e 'suppressPackageStartupMessages({library(limma); library(statmod)}); print(sessionInfo()); cat("\nlimma", format(packageVersion("limma")), "statmod", format(packageVersion("statmod")), "\n")' > "$HERE/sessionInfo.txt"

every25() { awk 'NR == 1 || (NR - 2) % 25 == 0' "$1" | gzip -n -9 > "$2"; }

# ALL, float32 values exactly as the engine stores them; BCR/ABL (37) vs NEG (74)
EXPR="$WORK/all_f32.tsv.gz"
"$PYTHON" "$REF/make_inputs.py" all-f32 "$ALL/expression.tsv.gz" "$EXPR"
for v in plain trend robust trend_robust; do
  flags=(); [[ $v == *trend* ]] && flags+=(--trend); [[ $v == *robust* ]] && flags+=(--robust)
  Rscript "$ORACLE/limma.R" "$EXPR" "$ALL/samples.tsv" mol.biol BCR/ABL NEG "$WORK/all_$v.tsv" "${flags[@]}"
  every25 "$WORK/all_$v.tsv" "$HERE/all_twogroup_$v.tsv.gz"
  cp "$WORK/all_${v}_meta.tsv" "$HERE/all_twogroup_${v}_meta.tsv"
done
# a design with a covariate, on all 123 samples with an age (6 mol.biol groups, NEG the reference)
for v in plain trend_robust; do
  flags=(); [[ $v == trend_robust ]] && flags+=(--trend --robust)
  Rscript "$HERE/limma_design.R" "$ORACLE/common.R" "$EXPR" "$ALL/samples.tsv" "~ mol.biol + age" \
    "mol.biolBCR/ABL" "$WORK/design_$v.tsv" --ref mol.biol=NEG "${flags[@]}"
  every25 "$WORK/design_$v.tsv" "$HERE/all_design_age_$v.tsv.gz"
done

# the synthetic cohort with missing values (../paired_expression.tsv): per-pattern fits
PE="$REF/paired_expression.tsv"; PS="$REF/paired_samples.tsv"
Rscript "$ORACLE/limma.R" "$PE" "$PS" arm A B "$HERE/synthetic_arm.tsv"
Rscript "$ORACLE/limma.R" "$PE" "$PS" arm A B "$HERE/synthetic_arm_robust.tsv" --robust
Rscript "$ORACLE/limma.R" "$PE" "$PS" arm A B "$HERE/synthetic_arm_trend.tsv" --trend
Rscript "$ORACLE/limma.R" "$PE" "$PS" timepoint post pre "$HERE/synthetic_paired.tsv" --pair patient
ls -l "$HERE" >&2
