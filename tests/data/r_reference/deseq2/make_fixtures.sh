#!/usr/bin/env bash
# Rebuild the DESeq2 R reference fixtures in this folder (see README.md).
#
# Usage: tests/data/r_reference/deseq2/make_fixtures.sh [SHARED]
#   SHARED  folder holding oracle/ (default: ../shared relative to the repository root)
# Environment: WORK (scratch, default mktemp -d, removed unless KEEP=1). Needs Rscript with
# DESeq2 1.38, data.table and R.utils (Debian: r-bioc-deseq2 r-cran-data.table r-cran-r.utils).
# About 2 minutes. Every file is rewritten byte for byte (gzip -n: no name or time stamp).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../fixture_env.sh"
COMMON="$ORACLE/common.R"
EXTRAS="$HERE/deseq2_extras.R"

Rscript -e 'suppressPackageStartupMessages({library(data.table); library(DESeq2)}); print(sessionInfo()); for (p in c("DESeq2", "S4Vectors", "SummarizedExperiment", "data.table", "R.utils")) cat(p, format(packageVersion(p)), "\n")' \
  > "$HERE/sessionInfo.txt"

gz() { gzip -n -9 -c "$1" > "$2"; }
# header + every k-th gene from the first (each gene's row depends on the others only through
# the global steps, which the tests recompute from the full counts)
every() { awk -v k="$1" 'NR == 1 || (NR - 2) % k == 0' "$2" | gzip -n -9 > "$3"; }
# the sample sheet of make_nb_counts.R with a `patient` column: samples i and i + n/2 pair up
with_patients() { awk -F'\t' -v half="$2" 'BEGIN { OFS = "\t" } NR == 1 { print $0, "patient"; next }
  { print $0, "P" ((NR - 2) % half + 1) }' "$1"; }

# --- 1. two groups of 6: 1000 genes, seed 1606, edge cases in genes 1-10 -----------------------
Rscript "$ORACLE/make_nb_counts.R" "$WORK/nb12" --genes 1000 --samples 12 --seed 1606
Rscript "$EXTRAS" "$COMMON" edit "$WORK/nb12/counts.tsv.gz" two_group "$WORK/two_group_counts.tsv" \
  --samples "$WORK/nb12/samples.tsv"
gz "$WORK/two_group_counts.tsv" "$HERE/two_group_counts.tsv.gz"
with_patients "$WORK/nb12/samples.tsv" 6 > "$HERE/two_group_samples.tsv"
C12="$HERE/two_group_counts.tsv.gz"; S12="$HERE/two_group_samples.tsv"

Rscript "$ORACLE/deseq2.R" "$C12" "$S12" group B A "$WORK/two_group_deseq2.tsv"
gz "$WORK/two_group_deseq2.tsv" "$HERE/two_group_deseq2.tsv.gz"
cp "$WORK/two_group_deseq2_sizefactors.tsv" "$HERE/"
Rscript "$EXTRAS" "$COMMON" deseq "$C12" "$S12" "~ group" group B A "$WORK/two_group_extras"
# the columns deseq2.R does not write (and gene_id)
cut -f1,9,11,13-19 "$WORK/two_group_extras.tsv" | gzip -n -9 > "$HERE/two_group_extras.tsv.gz"
cp "$WORK/two_group_extras_meta.tsv" "$WORK/two_group_extras_numrej.tsv" "$HERE/"

# paired: the same counts, design ~ patient + group (6 patients: 5 residual df)
Rscript "$EXTRAS" "$COMMON" deseq "$C12" "$S12" "~ patient + group" group B A "$WORK/paired"
every 3 "$WORK/paired.tsv" "$HERE/paired_every3.tsv.gz"
cp "$WORK/paired_meta.tsv" "$HERE/"

# vst (blind, design ~ 1): parametric and mean trends; size factors of both types
Rscript "$EXTRAS" "$COMMON" vst "$C12" "$WORK/two_group_vst"
Rscript "$EXTRAS" "$COMMON" vst "$C12" "$WORK/two_group_vst_mean" --fit mean
for f in two_group_vst two_group_vst_mean; do
  gunzip -c "$WORK/$f.tsv.gz" > "$WORK/$f.tsv"
  every 5 "$WORK/$f.tsv" "$HERE/${f}_every5.tsv.gz"
  cp "$WORK/${f}_meta.tsv" "$HERE/"
done
Rscript "$EXTRAS" "$COMMON" sizefactors "$C12" "$HERE/two_group_sizefactors.tsv"

# --- 2. a zero in every gene: ratio size factors fail; poscounts, mean trend -------------------
Rscript "$EXTRAS" "$COMMON" edit "$WORK/nb12/counts.tsv.gz" zeros "$WORK/zeros_counts.tsv"
gz "$WORK/zeros_counts.tsv" "$HERE/zeros_counts.tsv.gz"
CZ="$HERE/zeros_counts.tsv.gz"
Rscript "$EXTRAS" "$COMMON" sizefactors "$CZ" "$HERE/zeros_sizefactors.tsv"
Rscript "$EXTRAS" "$COMMON" deseq "$CZ" "$S12" "~ group" group B A "$WORK/zeros_poscounts_mean" \
  --sf poscounts --fit mean
every 3 "$WORK/zeros_poscounts_mean.tsv" "$HERE/zeros_poscounts_mean_every3.tsv.gz"
cp "$WORK/zeros_poscounts_mean_meta.tsv" "$HERE/"
Rscript "$EXTRAS" "$COMMON" vst "$CZ" "$WORK/zeros_vst_poscounts" --sf poscounts
gunzip -c "$WORK/zeros_vst_poscounts.tsv.gz" > "$WORK/zeros_vst_poscounts.tsv"
every 5 "$WORK/zeros_vst_poscounts.tsv" "$HERE/zeros_vst_poscounts_every5.tsv.gz"
cp "$WORK/zeros_vst_poscounts_meta.tsv" "$HERE/"

# --- 3. two groups of 8 (>= 7 replicates): outliers replaced and refitted ----------------------
Rscript "$ORACLE/make_nb_counts.R" "$WORK/nb16" --genes 600 --samples 16 --seed 1607
Rscript "$EXTRAS" "$COMMON" edit "$WORK/nb16/counts.tsv.gz" outliers "$WORK/outliers_counts.tsv"
gz "$WORK/outliers_counts.tsv" "$HERE/outliers_counts.tsv.gz"
cp "$WORK/nb16/samples.tsv" "$HERE/outliers_samples.tsv"
C16="$HERE/outliers_counts.tsv.gz"; S16="$HERE/outliers_samples.tsv"
Rscript "$ORACLE/deseq2.R" "$C16" "$S16" group B A "$WORK/outliers_deseq2.tsv"
gz "$WORK/outliers_deseq2.tsv" "$HERE/outliers_deseq2.tsv.gz"
cp "$WORK/outliers_deseq2_sizefactors.tsv" "$HERE/"
Rscript "$EXTRAS" "$COMMON" deseq "$C16" "$S16" "~ group" group B A "$WORK/outliers_extras"
cut -f1,9,11,13-19 "$WORK/outliers_extras.tsv" | gzip -n -9 > "$HERE/outliers_extras.tsv.gz"
cp "$WORK/outliers_extras_meta.tsv" "$WORK/outliers_extras_numrej.tsv" "$HERE/"

# --- 4. four patients x two groups, ~ patient + group (3 residual df: DESeq2's simulated prior
# variance), log dispersions spread by sd 1 so that the prior variance is above its floor -----
Rscript "$EXTRAS" "$COMMON" simulate "$WORK/spread" --genes 1500 --patients 4 --seed 1609 --sd 1
gunzip -c "$WORK/spread_counts.tsv.gz" | gzip -n -9 > "$HERE/spread_counts.tsv.gz"
cp "$WORK/spread_samples.tsv" "$HERE/"
Rscript "$EXTRAS" "$COMMON" deseq "$HERE/spread_counts.tsv.gz" "$HERE/spread_samples.tsv" \
  "~ patient + group" group B A "$WORK/spread"
every 5 "$WORK/spread.tsv" "$HERE/spread_every5.tsv.gz"
cp "$WORK/spread_meta.tsv" "$HERE/"
ls -l "$HERE"
