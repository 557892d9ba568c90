"""Rebuild the bundled ALL cohort files from the shared export (run once, by a maintainer).

    python -m engine.datasets.build_all ../shared/data/all

Writes ``engine/datasets/all/``: ``expression.parquet`` (the RMA log2 matrix rounded to
float32, zstd level 19 with byte-stream-split: 5.2 MB instead of 13.7 MB of text),
``genes.tsv`` copied byte for byte, and ``samples.tsv``: the original sample sheet plus one
derived column, ``matched_pair`` (see ``matched_pairs``), so the demo can show paired tests.
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent / "all"


def build(source: Path, dest: Path = HERE) -> None:
    matrix = pd.read_csv(source / "expression.tsv.gz", sep="\t", index_col=0, dtype={0: str})
    samples = list(matrix.columns)
    columns = {"probe_id": pa.array(matrix.index.astype(str), pa.string())}
    columns.update({s: pa.array(matrix[s].to_numpy(np.float32)) for s in samples})
    pq.write_table(
        pa.table(columns),
        dest / "expression.parquet",
        compression="zstd",
        compression_level=19,
        use_byte_stream_split=samples,
        use_dictionary=False,
        row_group_size=4096,
    )
    shutil.copyfile(source / "genes.tsv", dest / "genes.tsv")
    sheet = pd.read_csv(source / "samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    sheet["matched_pair"] = matched_pairs(sheet)
    sheet.to_csv(dest / "samples.tsv", sep="\t", index=False)


def matched_pairs(sheet: pd.DataFrame, case="BCR/ABL", control="NEG", max_years=10.0) -> list[str]:
    """Sex-matched case-control pairs of nearest age (optimal assignment), within ``max_years``.

    Each BCR/ABL patient is paired with a distinct NEG patient of the same sex so that the total
    age difference is smallest (``scipy.optimize.linear_sum_assignment``); pairs further apart than
    ``max_years`` and patients with unknown sex or age are left unpaired (""). Pairs are named
    M01, M02, ... in the order of the case sample IDs.
    """
    from scipy.optimize import linear_sum_assignment

    age = pd.to_numeric(sheet["age"].replace("NA", ""), errors="coerce")
    label = [""] * len(sheet)
    pairs = []
    for sex in ("F", "M"):
        known = (sheet["sex"] == sex) & age.notna()
        cases = np.flatnonzero(known & (sheet["mol.biol"] == case))
        controls = np.flatnonzero(known & (sheet["mol.biol"] == control))
        cost = np.abs(age.to_numpy()[cases, None] - age.to_numpy()[None, controls])
        rows, cols = linear_sum_assignment(cost)
        pairs += [(cases[r], controls[c]) for r, c in zip(rows, cols) if cost[r, c] <= max_years]
    for k, (i, j) in enumerate(sorted(pairs, key=lambda p: sheet["sample_id"].iloc[p[0]]), 1):
        label[i] = label[j] = f"M{k:02d}"
    return label


if __name__ == "__main__":
    build(Path(sys.argv[1]))
