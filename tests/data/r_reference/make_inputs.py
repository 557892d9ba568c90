#!/usr/bin/env python3
"""Inputs for the R reference fixtures in this folder (see README.md).

Subcommands
-----------
all-f32 SRC.tsv.gz OUT.tsv.gz
    Round every value of an expression matrix to float32 and write it back as
    TSV.gz, each value as ``repr(float(np.float32(v)))`` (the shortest decimal
    that reads back to the identical double), so that R computes on exactly the
    numbers the engine's float32 store holds. IDs stay strings.

synthetic OUTDIR
    Write ``paired_expression.tsv``, ``paired_samples.tsv`` and
    ``paired_genes.tsv`` (what each gene is meant to exercise) into OUTDIR;
    deterministic (numpy seed 20261121).

check-f32 F32.tsv.gz R17.tsv
    Check that R read the float32 TSV back exactly: R17.tsv is the matrix as R
    sees it, written with ``%.17g``.

Only numpy and pandas are needed.
"""

from __future__ import annotations

import csv
import gzip
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 20261121
N_GENES = 300
N_PATIENTS = 8


def f32_text(a: np.ndarray) -> np.ndarray:
    """float32-rounded values as the decimal that reads back to the same double; NaN -> NA."""
    a32 = np.asarray(a, dtype=np.float64).astype(np.float32)
    flat = [("NA" if np.isnan(x) else repr(float(x))) for x in a32.ravel()]
    return np.array(flat, dtype=object).reshape(a32.shape)


def write_matrix(path: Path, ids, samples, values: np.ndarray, id_name: str) -> None:
    text = f32_text(values)
    lines = ["\t".join([id_name, *samples])]
    lines += ["\t".join([gid, *row]) for gid, row in zip(ids, text)]
    data = ("\n".join(lines) + "\n").encode()
    if str(path).endswith(".gz"):
        # mtime=0 and no file name: byte-identical output on every run
        with open(path, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)


def read_matrix(path) -> pd.DataFrame:
    d = pd.read_csv(path, sep="\t", dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False)
    d = d.set_index(d.columns[0])
    return d.replace("NA", "nan").astype(np.float64)


def cmd_all_f32(src: str, out: str) -> None:
    d = read_matrix(src)
    write_matrix(Path(out), list(d.index), list(d.columns), d.to_numpy(), d.index.name)
    print(f"wrote {out}: {d.shape[0]} x {d.shape[1]} float32 values", file=sys.stderr)


def cmd_check_f32(f32_path: str, r17_path: str) -> None:
    a = read_matrix(f32_path)
    b = read_matrix(r17_path)
    assert list(a.index) == list(b.index) and list(a.columns) == list(b.columns), "IDs differ"
    x, y = a.to_numpy(), b.to_numpy()
    same = (x == y) | (np.isnan(x) & np.isnan(y))
    assert same.all(), f"{(~same).sum()} values differ after R read them"
    x32 = x.astype(np.float32).astype(np.float64)
    assert ((x32 == x) | np.isnan(x)).all(), "values are not float32"
    print(f"ok: R read {x.size} values of {f32_path} exactly, all are float32", file=sys.stderr)


def cmd_synthetic(outdir: str) -> None:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)

    patients = [f"P{i}" for i in range(1, N_PATIENTS + 1)]
    pat = np.repeat(patients, 2)                     # P1 P1 P2 P2 ...
    tp = np.tile(["pre", "post"], N_PATIENTS)        # pre post pre post ...
    n = pat.size
    # sample IDs S01..S16 assigned in shuffled order, so that position says nothing about pairs
    ids = np.array([f"S{i:02d}" for i in range(1, n + 1)])[rng.permutation(n)]
    # arms independent of patient: 7 x A, 9 x B
    arm = np.array(["A"] * 7 + ["B"] * 9)[rng.permutation(n)]

    # --- values: genes x samples in the (patient, timepoint) order above ---
    g = N_GENES
    base = rng.uniform(5.0, 12.0, size=(g, 1))               # gene level (log2-like)
    sd_pat = rng.uniform(0.2, 1.0, size=(g, 1))
    sd_noise = rng.uniform(0.2, 0.8, size=(g, 1))
    pat_eff = rng.normal(0.0, 1.0, size=(g, N_PATIENTS))
    x = base + sd_pat * np.repeat(pat_eff, 2, axis=1) + sd_noise * rng.normal(size=(g, n))
    is_post = tp == "post"
    shift = np.zeros(g)
    shifted = rng.choice(g, size=60, replace=False)           # post-treatment effect on 60 genes
    shift[shifted] = rng.choice([-1.0, 1.0], size=60) * rng.uniform(0.3, 2.0, size=60)
    x[:, is_post] += shift[:, None]
    x[:100] = np.round(x[:100], 1)                            # first 100 genes: many ties

    kind = np.array(["rounded_1dp"] * 100 + ["continuous"] * (g - 100), dtype=object)

    # ~5% NaN scattered over the ordinary genes (special genes below are overwritten)
    x[rng.random(size=x.shape) < 0.05] = np.nan

    # genes 181-190: one or two whole pairs lost (both pre and post missing)
    for i in range(180, 190):
        for p in rng.choice(N_PATIENTS, size=1 + (i % 2), replace=False):
            x[i, 2 * p: 2 * p + 2] = np.nan
        kind[i] = "pair_lost"

    col = {(pp, t): j for j, (pp, t) in enumerate(zip(pat, tp))}
    special = {}

    def put(i, k, row):
        x[i] = row
        kind[i] = k
        special[k] = i

    # special genes at the end (gene_291 .. gene_300)
    r = rng.normal(8.0, 1.0, size=n)
    one = r.copy()
    keep = rng.integers(N_PATIENTS)
    for p in range(N_PATIENTS):                               # only one complete pair left
        if p != keep:
            x_t = rng.choice(["pre", "post"])
            one[col[(patients[p], x_t)]] = np.nan
    put(290, "one_complete_pair", one)
    two = rng.normal(8.0, 1.0, size=n)                         # exactly two complete pairs
    for p in range(N_PATIENTS):
        if p not in (1, 5):
            two[col[(patients[p], "post" if p % 2 else "pre")]] = np.nan
    put(291, "two_complete_pairs", two)
    put(292, "constant", np.full(n, 7.25))
    pre = np.round(rng.normal(9.0, 1.0, size=N_PATIENTS), 1)
    same = np.empty(n)
    same[~is_post] = pre
    same[is_post] = pre                                       # post == pre for every patient
    put(293, "post_equals_pre", same)
    shifted1 = np.empty(n)
    pre8 = np.round(rng.normal(9.0, 1.0, size=N_PATIENTS) * 8) / 8   # multiples of 1/8: exact differences
    shifted1[~is_post] = pre8
    shifted1[is_post] = pre8 + 1.0                            # post - pre == 1 exactly for every patient
    put(294, "post_minus_pre_constant", shifted1)
    put(295, "all_tied_two_levels", np.where(rng.random(n) < 0.5, 6.5, 7.5))   # every value in a tie
    grp = np.where(arm == "A", 6.0, 8.0)
    put(296, "constant_within_arm", grp)                      # zero variance inside each arm
    single = rng.normal(8.0, 1.0, size=n)
    a_idx = np.flatnonzero(arm == "A")
    single[a_idx[1:]] = np.nan                                # arm A has a single observed value
    put(297, "arm_A_single_value", single)
    allna_pre = rng.normal(8.0, 1.0, size=n)
    allna_pre[~is_post] = np.nan                              # no complete pair at all
    put(298, "pre_all_missing", allna_pre)
    mostly = np.round(rng.normal(8.0, 0.3, size=n), 1)
    mostly[rng.choice(n, size=3, replace=False)] = np.nan
    put(299, "rounded_with_nan", mostly)

    # round-trip through float32: the committed numbers are exactly the engine's float32 store
    x = x.astype(np.float32).astype(np.float64)

    gene_ids = [f"gene_{i:03d}" for i in range(1, g + 1)]
    order = np.argsort(ids)                                   # matrix columns in S01..S16 order
    write_matrix(out / "paired_expression.tsv", gene_ids, list(ids[order]), x[:, order], "gene_id")

    samples = pd.DataFrame({"sample_id": ids, "patient": pat, "timepoint": tp, "arm": arm})
    samples.to_csv(out / "paired_samples.tsv", sep="\t", index=False)   # rows in patient order

    genes = pd.DataFrame({"gene_id": gene_ids, "kind": kind,
                          "post_shift": [f"{s:.6g}" for s in shift]})
    genes.loc[list(special.values()), "post_shift"] = "NA"
    genes.loc[294, "post_shift"] = "1.0"
    genes.to_csv(out / "paired_genes.tsv", sep="\t", index=False)
    print(f"wrote {out}/paired_*.tsv: {g} genes x {n} samples, "
          f"{int(np.isnan(x).sum())} NA ({np.isnan(x).mean():.1%})", file=sys.stderr)


def main(argv: list[str]) -> None:
    if len(argv) >= 1 and argv[0] == "all-f32" and len(argv) == 3:
        cmd_all_f32(argv[1], argv[2])
    elif len(argv) >= 1 and argv[0] == "check-f32" and len(argv) == 3:
        cmd_check_f32(argv[1], argv[2])
    elif len(argv) == 2 and argv[0] == "synthetic":
        cmd_synthetic(argv[1])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
