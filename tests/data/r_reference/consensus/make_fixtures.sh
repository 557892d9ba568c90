#!/usr/bin/env bash
# Rebuild the ConsensusClusterPlus R reference fixtures in this folder (see README.md).
#
# Usage: tests/data/r_reference/consensus/make_fixtures.sh [SHARED]
#   SHARED  folder holding oracle/ (default: ../shared relative to the repository root).
# Environment:
#   WORK    scratch folder (default: a fresh mktemp -d, removed at the end unless KEEP=1)
# Needs Rscript with ConsensusClusterPlus 1.62 and data.table (Debian: r-base-core
# r-bioc-consensusclusterplus r-cran-data.table). About 10 seconds.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/../fixture_env.sh"

Rscript -e 'suppressPackageStartupMessages({library(data.table); library(ConsensusClusterPlus)}); print(sessionInfo()); for (p in c("ConsensusClusterPlus", "data.table")) cat(p, format(packageVersion(p)), "\n"); cat("RNGkind:", RNGkind(), "\n")' \
  > "$HERE/sessionInfo.txt"

Rscript "$HERE/consensus.R" "$ORACLE" "$WORK"
# small tables as they are; matrices and long tables gzipped (-n: no name or time stamp)
for f in "$WORK"/*.tsv; do
  name="$(basename "$f")"
  case "$name" in
    *_cluster_consensus.tsv) cp "$f" "$HERE/$name" ;;
    *_consensus.tsv|*_counts.tsv|*_item_consensus.tsv|hclust_*.tsv|kmeans_*.tsv)
      gzip -n -9 -c "$f" > "$HERE/$name.gz" ;;
    *) cp "$f" "$HERE/$name" ;;
  esac
done
ls -l "$HERE" >&2
