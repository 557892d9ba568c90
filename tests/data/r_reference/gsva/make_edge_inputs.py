#!/usr/bin/env python3
"""Edge-case inputs for the GSVA fixtures (see README.md): a copy of the float32 ALL matrix
in which a few probes are missing or constant, and a GMT of degenerate sets.

Usage: make_edge_inputs.py ALL_F32.tsv.gz OUT_MATRIX.tsv.gz OUT_ROWS.tsv OUT.gmt

OUT_ROWS.tsv holds only the replaced rows (the tests apply them to the bundled ALL cohort);
OUT_MATRIX.tsv.gz is the whole matrix for R (gzip with mtime 0: reproducible bytes).
Deterministic: no randomness; probes are picked by row position.
"""

from __future__ import annotations

import gzip
import sys

import numpy as np


def main(src: str, out_matrix: str, out_rows: str, out_gmt: str) -> None:
    with gzip.open(src, "rt") as fh:
        header = fh.readline().rstrip("\n")
        lines = [line.rstrip("\n").split("\t") for line in fh]
    ids = [p[0] for p in lines]
    n = len(header.split("\t")) - 1
    replaced = {}
    # one missing value (GSVA drops the whole gene)
    row = list(lines[100]); row[1 + 5] = "NA"; replaced[100] = row
    # a whole row missing
    replaced[2000] = [ids[2000]] + ["NA"] * n
    # exactly constant
    replaced[3000] = [ids[3000]] + ["7.0"] * n
    # not exactly constant but sd < 1e-10 (GSVA's threshold); float32-representable values
    tiny = [repr(float(np.float32(v))) for v in np.where(np.arange(n) % 2 == 0, 1e-12, 2e-12)]
    replaced[4000] = [ids[4000]] + tiny
    # ties: a probe with only three distinct values (not a degenerate gene, many tied samples)
    vals = [repr(float(np.float32(v))) for v in (5.0, 6.5, 8.0)]
    replaced[5000] = [ids[5000]] + [vals[i % 3] for i in range(n)]
    for i, row in replaced.items():
        lines[i] = row
    body = "\n".join([header] + ["\t".join(p) for p in lines]) + "\n"
    with open(out_matrix, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh,
                                                     mtime=0) as gz:
        gz.write(body.encode())
    with open(out_rows, "w") as fh:
        fh.write(header + "\n")
        for i in sorted(replaced):
            fh.write("\t".join(replaced[i]) + "\n")
    bad = [ids[i] for i in (100, 2000, 3000, 4000)]
    sets = [
        ("EDGE_SIZE1_A", [ids[10]]),
        ("EDGE_SIZE1_B", [ids[7000]]),
        ("EDGE_SIZE1_TIES", [ids[5000]]),
        ("EDGE_SIZE2", [ids[11], ids[12000]]),
        ("EDGE_SIZE3_DUPLICATED", [ids[20], ids[21], ids[20], ids[22]]),
        ("EDGE_WITH_DROPPED", [ids[i] for i in range(600, 640)] + bad),
        ("EDGE_ONLY_DROPPED", bad),
        ("EDGE_NOT_IN_COHORT", ["NOT_A_PROBE_1", "NOT_A_PROBE_2", ids[30], ids[31], ids[5000]]),
        ("EDGE_LARGE", [ids[i] for i in range(0, len(ids), 25)]),
    ]
    with open(out_gmt, "w") as fh:
        for name, members in sets:
            fh.write("\t".join([name, "edge case"] + members) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
