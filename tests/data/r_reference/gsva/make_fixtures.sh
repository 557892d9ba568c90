#!/usr/bin/env bash
# Rebuild the GSVA (method="gsva") R reference fixtures in this folder (see README.md).
#
# Usage: tests/data/r_reference/gsva/make_fixtures.sh [SHARED]
#   SHARED  folder holding oracle/ and data/all/ (default: ../shared relative to the
#           repository root). Relative paths are taken from the repo root.
# Environment:
#   PYTHON  Python with numpy + pandas (default: python3), for ../make_inputs.py and
#           make_edge_inputs.py
#   WORK    scratch folder (default: a fresh mktemp -d, removed at the end unless KEEP=1)
# Needs Rscript with GSVA 1.46 and data.table (Debian: apt-get install r-base-core
# r-bioc-gsva r-cran-data.table). About 3 minutes.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../fixture_env.sh"
EXTRAS="$HERE/gsva_extras.R"
gz() { gzip -n -9 -c "$1" > "$2"; }            # -n: no name or time stamp, reproducible bytes
# every 4th sample column (R scored all samples; each score depends on its own column only)
quarter() { "$PYTHON" - "$1" "$2" <<'PY'
import sys
lines = open(sys.argv[1]).read().splitlines()
keep = lambda p: [p[0]] + p[1::4]
open(sys.argv[2], "w").write("\n".join("\t".join(keep(l.split("\t"))) for l in lines) + "\n")
PY
}

Rscript -e 'suppressPackageStartupMessages({library(data.table); library(GSVA)}); print(sessionInfo()); for (p in c("GSVA", "data.table", "BiocParallel", "DelayedMatrixStats", "matrixStats")) cat(p, format(packageVersion(p)), "\n")' \
  > "$HERE/sessionInfo.txt"

# --- gene sets: copies of the oracle's GMTs (ALL probe IDs) --------------------------------
gz "$ORACLE/out/all/hallmark_v7.0_hgu95_probes.gmt" "$HERE/hallmark_v7.0_hgu95_probes.gmt.gz"
gz "$ORACLE/out/all/random_genesets_seed1.gmt" "$HERE/random_genesets_seed1.gmt.gz"

# --- ALL cohort, float32-rounded values (what the engine's store holds) -------------------
EXPR="$WORK/all_expression_f32.tsv.gz"
"$PYTHON" "$ROOT/tests/data/r_reference/make_inputs.py" all-f32 "$ALL/expression.tsv.gz" "$EXPR"

for sets in hallmark random; do
  case $sets in
    hallmark) GMT="$HERE/hallmark_v7.0_hgu95_probes.gmt.gz" ;;
    random)   GMT="$HERE/random_genesets_seed1.gmt.gz" ;;
  esac
  # all sets of the GMT; GSVA's defaults (min.sz 1, max.sz Inf, tau 1, mx.diff TRUE,
  # abs.ranking FALSE) except for the option named in the file
  for variant in gaussian no_mx_diff abs_ranking tau0.5 kcdf_none; do
    case $variant in
      gaussian)    opts=() ;;
      no_mx_diff)  opts=(--no-mx-diff) ;;
      abs_ranking) opts=(--abs-ranking) ;;
      tau0.5)      opts=(--tau 0.5) ;;
      kcdf_none)   opts=(--kcdf none) ;;
    esac
    out="$WORK/all_f32_${sets}_gsva_${variant}.tsv"
    Rscript "$ORACLE/gsva.R" "$EXPR" "$GMT" gsva "$out" "${opts[@]}"
    quarter "$out" "$WORK/quarter.tsv"
    gz "$WORK/quarter.tsv" "$HERE/all_f32_${sets}_gsva_${variant}.tsv.gz"
  done
  Rscript "$EXTRAS" "$ORACLE" sizes "$EXPR" "$GMT" "$HERE/all_f32_${sets}_sizes_used.tsv"
done

# --- edge cases: missing / constant probes, degenerate sets (make_edge_inputs.py) ----------
EDGE="$WORK/all_expression_f32_edge.tsv.gz"
"$PYTHON" "$HERE/make_edge_inputs.py" "$EXPR" "$EDGE" "$HERE/edge_rows.tsv" "$HERE/edge_sets.gmt"
for variant in gaussian no_mx_diff; do
  opts=(); [[ $variant == no_mx_diff ]] && opts=(--no-mx-diff)
  out="$WORK/all_f32_edge_gsva_${variant}.tsv"
  Rscript "$ORACLE/gsva.R" "$EDGE" "$HERE/edge_sets.gmt" gsva "$out" "${opts[@]}"
  gz "$out" "$HERE/all_f32_edge_gsva_${variant}.tsv.gz"
done
Rscript "$EXTRAS" "$ORACLE" sizes "$EDGE" "$HERE/edge_sets.gmt" "$HERE/edge_sizes_used.tsv"

# --- Poisson kernel on synthetic negative-binomial counts (seed 4) --------------------------
Rscript "$ORACLE/make_nb_counts.R" "$WORK/nb" --genes 2000 --samples 20 --seed 4
cp "$WORK/nb/counts.tsv.gz" "$WORK/nb_counts.tsv.gz"
zcat "$WORK/nb_counts.tsv.gz" > "$WORK/nb_counts.tsv"
gz "$WORK/nb_counts.tsv" "$HERE/nb_counts_seed4.tsv.gz"
Rscript "$ORACLE/make_random_gmt.R" "$WORK/nb_counts.tsv.gz" "$WORK/nb_random.gmt" \
  --n 40 --min 1 --max 120 --seed 4
gz "$WORK/nb_random.gmt" "$HERE/nb_random_seed4.gmt.gz"
for variant in poisson poisson_no_mx_diff; do
  opts=(--kcdf Poisson); [[ $variant == poisson_no_mx_diff ]] && opts+=(--no-mx-diff)
  out="$WORK/nb_gsva_${variant}.tsv"
  Rscript "$ORACLE/gsva.R" "$WORK/nb_counts.tsv.gz" "$WORK/nb_random.gmt" gsva "$out" "${opts[@]}"
  gz "$out" "$HERE/nb_gsva_${variant}.tsv.gz"
done
Rscript "$EXTRAS" "$ORACLE" sizes "$WORK/nb_counts.tsv.gz" "$WORK/nb_random.gmt" \
  "$HERE/nb_sizes_used.tsv"

# --- the density step alone (GSVA:::compute.gene.density) and the kernel's building blocks -
Rscript "$EXTRAS" "$ORACLE" density "$EXPR" Gaussian 600 "$WORK/density_gaussian.tsv"
gz "$WORK/density_gaussian.tsv" "$HERE/all_f32_density_gaussian.tsv.gz"
Rscript "$EXTRAS" "$ORACLE" density "$WORK/nb_counts.tsv.gz" Poisson 50 "$WORK/density_poisson.tsv"
gz "$WORK/density_poisson.tsv" "$HERE/nb_density_poisson.tsv.gz"
Rscript "$EXTRAS" "$ORACLE" pnorm "$HERE/pnorm_table_every100.tsv" "$WORK/pnorm_table.f64"
sha256sum "$WORK/pnorm_table.f64" | cut -d" " -f1 > "$HERE/pnorm_table_f64le.sha256"
Rscript "$EXTRAS" "$ORACLE" ppois "$HERE/ppois_noninteger.tsv"

ls -l "$HERE" >&2
