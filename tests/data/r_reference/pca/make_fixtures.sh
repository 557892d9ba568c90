#!/usr/bin/env bash
# Rebuild the PCA R reference fixtures in this folder (see README.md).
#
# Usage: tests/data/r_reference/pca/make_fixtures.sh [SHARED]
#   SHARED  folder holding oracle/ and data/all/ (default: ../shared relative to the
#           repository root). Relative paths are taken from the repo root.
# Environment:
#   PYTHON  Python with numpy + pandas (default: python3), for ../make_inputs.py
#   WORK    scratch folder (default: a fresh mktemp -d, removed at the end unless KEEP=1)
# Needs Rscript with data.table (Debian: r-base-core r-cran-data.table).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../fixture_env.sh"

Rscript -e 'suppressPackageStartupMessages(library(data.table)); print(sessionInfo()); cat("\ndata.table", format(packageVersion("data.table")), "\n"); print(La_library()); print(extSoftVersion()["BLAS"])' \
  > "$HERE/sessionInfo.txt"

# --- ALL cohort, float32-rounded values (what the engine's store holds) -------------------
EXPR="$WORK/all_expression_f32.tsv.gz"
"$PYTHON" "$HERE/../make_inputs.py" all-f32 "$ALL/expression.tsv.gz" "$EXPR"
Rscript "$HERE/prcomp.R" "$ORACLE" "$EXPR" "$WORK/all_f32_prcomp" --k 5 --every 25
for f in scores loadings variance; do
  gzip -n -9 -c "$WORK/all_f32_prcomp_$f.tsv" > "$HERE/all_f32_prcomp_$f.tsv.gz"  # -n: reproducible bytes
done

ls -l "$HERE" >&2
