#!/usr/bin/env bash
# Rebuild the normalisation fixtures in this folder (see README.md).
#
# Usage: tests/data/r_reference/normalize/make_fixtures.sh [SHARED]
#   SHARED  folder holding oracle/ and data/all/ (default: ../shared relative to the repo root)
# Environment: PYTHON (numpy + pandas, default python3); WORK (scratch, default mktemp -d,
# removed unless KEEP=1). Needs Rscript with edgeR 3.40, preprocessCore 1.60, data.table and
# R.utils (Debian: r-bioc-edger r-bioc-preprocesscore r-cran-data.table r-cran-r.utils).
# About 30 seconds. Every file is rewritten byte for byte (gzip -n: no name or time stamp).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../fixture_env.sh"
COMMON="$ORACLE/common.R"

Rscript -e 'suppressPackageStartupMessages({library(data.table); library(edgeR); library(preprocessCore)}); print(sessionInfo()); for (p in c("edgeR", "limma", "preprocessCore", "data.table", "R.utils")) cat(p, format(packageVersion(p)), "\n")' \
  > "$HERE/sessionInfo.txt"

gz() { gzip -n -9 -c "$1" > "$2"; }
# header + every 5th gene (GENE00005, GENE00010, ...: includes the all-zero genes, GENE00200..215
# (zero in S01) and GENE00300 (one sample)); the values of a gene do not depend on the others
every5() { awk 'NR == 1 || (NR - 1) % 5 == 0' "$1" | gzip -n -9 > "$2"; }

# --- 1. counts: make_nb_counts.R (seed 2006) + edge cases (edit_counts.R) ----------------------
Rscript "$ORACLE/make_nb_counts.R" "$WORK/nb" --genes 2000 --samples 12 --seed 2006
Rscript "$HERE/edit_counts.R" "$COMMON" "$WORK/nb/counts.tsv.gz" "$WORK/counts.tsv"
gz "$WORK/counts.tsv" "$HERE/counts.tsv.gz"
cp "$WORK/nb/samples.tsv" "$HERE/counts_samples.tsv"

Rscript "$ORACLE/edger_tmm.R" "$HERE/counts.tsv.gz" "$WORK/tmm"
Rscript "$ORACLE/edger_tmm.R" "$HERE/counts.tsv.gz" "$WORK/tmm_pc05" --prior-count 0.5
cp "$WORK/tmm_normfactors.tsv" "$HERE/counts_normfactors.tsv"
for f in tmm_logcpm tmm_cpm tmm_pc05_logcpm; do
  gunzip -c "$WORK/$f.tsv.gz" > "$WORK/$f.tsv"
  every5 "$WORK/$f.tsv" "$HERE/counts_${f}_every5.tsv.gz"
done

Rscript "$HERE/edger_extra.R" "$COMMON" "$HERE/counts.tsv.gz" "$HERE/counts_samples.tsv" "$WORK"
cp "$WORK/counts_normfactors_options.tsv" "$WORK"/crafted_*.tsv "$HERE/"
gz "$WORK/counts_filter_by_expr.tsv" "$HERE/counts_filter_by_expr.tsv.gz"
every5 "$WORK/counts_logcpm_customlib_pc1.tsv" "$HERE/counts_logcpm_customlib_pc1_every5.tsv.gz"

# --- 2. quantile normalisation of ALL, float32 values as the engine stores them ---------------
EXPR="$WORK/all_f32.tsv.gz"
"$PYTHON" "$HERE/../make_inputs.py" all-f32 "$ALL/expression.tsv.gz" "$EXPR"
Rscript "$ORACLE/quantile_normalize.R" "$EXPR" "$WORK/all_quantile.tsv.gz"
# every 100th probe of the output (all 12,625 probes were normalised) and the whole target
gunzip -c "$WORK/all_quantile.tsv.gz" | awk 'NR == 1 || (NR - 2) % 100 == 0' > "$WORK/all_quantile_every100.tsv"
gz "$WORK/all_quantile_every100.tsv" "$HERE/all_f32_quantile_every100.tsv.gz"
Rscript "$HERE/quantile_extra.R" "$COMMON" target "$EXPR" "$WORK/all_target.tsv"
gz "$WORK/all_target.tsv" "$HERE/all_f32_quantile_target.tsv.gz"

# --- 3. quantile normalisation with ties and NAs (small, made in R) ---------------------------
Rscript "$HERE/quantile_extra.R" "$COMMON" ties "$HERE"

ls -l "$HERE" >&2
