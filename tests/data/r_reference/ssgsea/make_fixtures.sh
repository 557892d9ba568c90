#!/usr/bin/env bash
# Rebuild the ssGSEA / z-score / PLAGE R reference fixtures in this folder (see README.md).
#
# Usage: tests/data/r_reference/ssgsea/make_fixtures.sh [SHARED]
#   SHARED  folder holding oracle/ and data/all/ (default: ../shared relative to the
#           repository root). Relative paths are taken from the repo root.
# Environment:
#   PYTHON  Python with numpy + pandas (default: python3), for ../make_inputs.py
#   WORK    scratch folder (default: a fresh mktemp -d, removed at the end unless KEEP=1)
# Needs Rscript with GSVA 1.46, data.table and R.utils
# (Debian: apt-get install r-base-core r-bioc-gsva r-cran-data.table r-cran-r.utils).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../fixture_env.sh"

Rscript -e 'suppressPackageStartupMessages({library(data.table); library(R.utils); library(GSVA)}); print(sessionInfo()); for (p in c("GSVA", "data.table", "R.utils", "sparseMatrixStats", "BiocParallel")) cat(p, format(packageVersion(p)), "\n"); cat("La_library", La_library(), "\nLa_version", La_version(), "\n")' \
  > "$HERE/sessionInfo.txt"

# --- gene sets: copies of the oracle's GMTs (ALL probe IDs), committed gzipped -------------
gzip -n -9 -c "$ORACLE/out/all/hallmark_v7.0_hgu95_probes.gmt" > "$HERE/hallmark_v7.0_hgu95_probes.gmt.gz"
gzip -n -9 -c "$ORACLE/out/all/random_genesets_seed1.gmt" > "$HERE/random_genesets_seed1.gmt.gz"

# --- ALL cohort, float32-rounded values (what the engine's store holds) -------------------
EXPR="$WORK/all_expression_f32.tsv.gz"
"$PYTHON" "$HERE/../make_inputs.py" all-f32 "$ALL/expression.tsv.gz" "$EXPR"

for sets in hallmark random; do
  case $sets in
    hallmark) GMT="$HERE/hallmark_v7.0_hgu95_probes.gmt.gz" ;;
    random)   GMT="$HERE/random_genesets_seed1.gmt.gz" ;;
  esac
  # all sets of the GMT, GSVA's defaults (min.sz 1, max.sz Inf, tau 0.25, kcdf Gaussian)
  Rscript "$ORACLE/gsva.R" "$EXPR" "$GMT" ssgsea "$WORK/all_f32_${sets}_ssgsea.tsv"
  Rscript "$ORACLE/gsva.R" "$EXPR" "$GMT" ssgsea "$WORK/all_f32_${sets}_ssgsea_nonorm.tsv" --no-norm
  Rscript "$ORACLE/gsva.R" "$EXPR" "$GMT" zscore "$WORK/all_f32_${sets}_zscore.tsv"
  Rscript "$ORACLE/gsva.R" "$EXPR" "$GMT" plage  "$WORK/all_f32_${sets}_plage.tsv"
  for m in ssgsea ssgsea_nonorm zscore plage; do
    # R scored all 128 samples (the range normalisation, z-scores and PLAGE use every sample);
    # keep the gene_set column and every other sample (1st, 3rd, ...: fields 2, 4, ..., 128)
    # to keep the committed files small. -n: no name/time stamp, reproducible bytes.
    cut -f "1,$(seq -s, 2 2 128)" "$WORK/all_f32_${sets}_${m}.tsv" \
      | gzip -n -9 -c > "$HERE/all_f32_${sets}_${m}.tsv.gz"
  done
  # the four sidecars are identical (sizes after mapping): keep one
  cp "$WORK/all_f32_${sets}_ssgsea_sizes.tsv" "$HERE/all_f32_${sets}_sizes.tsv"
done

ls -l "$HERE" >&2
