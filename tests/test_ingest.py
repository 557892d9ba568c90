"""cohort ingest: formats, IDs, annotations, chunking, and one clear error per bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import write_cohort_files
from engine.errors import InputError
from engine.store import check_cohort, ingest, open_cohort


def _matrix(paths) -> pd.DataFrame:
    return pd.read_csv(paths["matrix"], sep="\t", index_col=0, dtype={0: str})


def test_ingest_roundtrip_keeps_ids_values_and_annotations(tmp_path, cohort_files):
    store = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr",
                   genes=cohort_files["genes"], chunk_genes=7)
    ds = open_cohort(store)
    expected = _matrix(cohort_files)
    assert list(ds["sample"].values) == list(expected.columns)
    assert ds["sample"].values[0] == "001"  # leading zeros kept
    assert list(ds["gene"].values) == list(expected.index)
    np.testing.assert_array_equal(ds["expression"].values, expected.to_numpy(np.float32))
    assert ds["expression"].dtype == np.float32
    assert ds["expression"].attrs["scale"] == "log2"
    assert ds["expression"].data.chunks == ((7,) * 5 + (5,), (8,))
    assert ds["age"].dtype == np.float64  # all-numeric column
    assert list(ds["group"].values[:2]) == ["case", "case"]
    assert ds["symbol"].values[3] == "SYM3"
    assert [s["role"] for s in ds.attrs["sources"]] == ["matrix", "samples", "genes"]
    assert all(len(s["sha256"]) == 64 for s in ds.attrs["sources"])
    check_cohort(ds)


def test_sample_sheet_order_does_not_matter(tmp_path, cohort_files):
    sheet = pd.read_csv(cohort_files["samples"], sep="\t", dtype=str)
    sheet.iloc[::-1].to_csv(tmp_path / "reversed.tsv", sep="\t", index=False)
    ds = open_cohort(ingest(cohort_files["matrix"], tmp_path / "reversed.tsv", tmp_path / "c.zarr"))
    assert list(ds["group"].values) == ["case"] * 4 + ["control"] * 4


@pytest.mark.parametrize("fmt", ["csv", "tsv.gz", "gct", "parquet"])
def test_other_matrix_formats_give_the_same_store(tmp_path, cohort_files, fmt):
    frame = _matrix(cohort_files)
    path = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, na_rep="NA")
    elif fmt == "tsv.gz":
        with gzip.open(path, "wt") as f:
            frame.to_csv(f, sep="\t", na_rep="NA")
    elif fmt == "gct":
        with open(path, "w") as f:
            f.write(f"#1.2\n{frame.shape[0]}\t{frame.shape[1]}\n")
            gct = frame.copy()
            gct.insert(0, "Description", [f"desc {g}" for g in frame.index])
            gct.index.name = "NAME"
            gct.to_csv(f, sep="\t", na_rep="NA")
    else:
        frame.astype(np.float32).reset_index().to_parquet(path, index=False)
    ds = open_cohort(ingest(path, cohort_files["samples"], tmp_path / "c.zarr", chunk_genes=16))
    np.testing.assert_array_equal(ds["expression"].values, frame.to_numpy(np.float32))
    assert list(ds["gene"].values) == list(frame.index)
    if fmt == "gct":
        assert ds["description"].values[1] == "desc G001"


def _assert_fails(tmp_path, match, matrix, samples, **kwargs):
    out = tmp_path / "bad.zarr"
    with pytest.raises(InputError, match=match):
        ingest(matrix, samples, out, **kwargs)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad.zarr")]  # no temp left


def _rewrite(path, old, new):
    path.write_text(path.read_text().replace(old, new, 1))


def test_duplicate_gene_ids(tmp_path, cohort_files):
    _rewrite(cohort_files["matrix"], "G039", "G002")
    _assert_fails(tmp_path, r"duplicate gene IDs: G002", cohort_files["matrix"],
                  cohort_files["samples"], chunk_genes=7)  # the duplicate is in a later chunk


def test_duplicate_sample_ids_in_matrix(tmp_path, cohort_files):
    _rewrite(cohort_files["matrix"], "\t002", "\t001")
    _assert_fails(tmp_path, r"duplicate sample IDs in its header: 001", cohort_files["matrix"],
                  cohort_files["samples"])


def test_duplicate_ids_in_sample_sheet(tmp_path, cohort_files):
    _rewrite(cohort_files["samples"], "002\t", "001\t")
    _assert_fails(tmp_path, r"sample sheet .* duplicate IDs .*: 001", cohort_files["matrix"],
                  cohort_files["samples"])


def test_unmatched_samples_error_and_drop(tmp_path, cohort_files):
    sheet = pd.read_csv(cohort_files["samples"], sep="\t", dtype=str)
    extra = pd.concat([sheet.iloc[1:], sheet.iloc[[0]].assign(sample_id="S99")])
    extra.to_csv(tmp_path / "sheet.tsv", sep="\t", index=False)
    _assert_fails(tmp_path, r"sample sheet has 1 IDs not in the matrix: S99; matrix has 1 sample IDs "
                  r"not in the sample sheet: 001 \(use --drop-unmatched to ignore\)",
                  cohort_files["matrix"], tmp_path / "sheet.tsv")
    ds = open_cohort(ingest(cohort_files["matrix"], tmp_path / "sheet.tsv", tmp_path / "ok.zarr",
                            drop_unmatched=True))
    assert list(ds["sample"].values) == [f"0{i:02d}" for i in range(2, 9)]
    np.testing.assert_array_equal(ds["expression"].values,
                                  _matrix(cohort_files).iloc[:, 1:].to_numpy(np.float32))
    assert ds.attrs["ingest_options"]["dropped_matrix_samples"] == ["001"]
    assert ds.attrs["ingest_options"]["dropped_sheet_samples"] == ["S99"]


def _set_cell(path, line: int, column: int, value: str) -> None:
    """Overwrite one cell of a TSV (1-based line, 0-based column)."""
    lines = path.read_text().splitlines()
    cells = lines[line - 1].split("\t")
    cells[column] = value
    lines[line - 1] = "\t".join(cells)
    path.write_text("\n".join(lines) + "\n")


def test_non_numeric_cell_names_line_and_column(tmp_path, cohort_files):
    _set_cell(cohort_files["matrix"], 31, 3, "high")
    _assert_fails(tmp_path, r"non-numeric value 'high' on line 31, column '003'",
                  cohort_files["matrix"], cohort_files["samples"], chunk_genes=8)


def test_infinite_value(tmp_path, cohort_files):
    _set_cell(cohort_files["matrix"], 6, 2, "inf")
    _assert_fails(tmp_path, r"infinite value on line 6, column '002'", cohort_files["matrix"],
                  cohort_files["samples"])


def test_negative_counts(tmp_path, cohort_files):
    frame = _matrix(cohort_files).fillna(0).abs().round()
    frame.iloc[12, 5] = -3
    frame.to_csv(tmp_path / "counts.tsv", sep="\t")
    _assert_fails(tmp_path, r"negative count -3.0 on line 14", tmp_path / "counts.tsv",
                  cohort_files["samples"], scale="counts")
    # the same values are fine on a log scale
    ingest(tmp_path / "counts.tsv", cohort_files["samples"], tmp_path / "log.zarr", scale="log2")


def test_nan_is_missing_not_an_error(tmp_path, cohort_files):
    ds = open_cohort(ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr"))
    assert np.isnan(ds["expression"].values).any()


def test_existing_store_is_not_overwritten_without_flag(tmp_path, cohort_files):
    out = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr")
    with pytest.raises(InputError, match="already exists"):
        ingest(cohort_files["matrix"], cohort_files["samples"], out)
    ingest(cohort_files["matrix"], cohort_files["samples"], out, overwrite=True)


def test_failed_overwrite_keeps_the_old_store(tmp_path, cohort_files):
    out = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr")
    _rewrite(cohort_files["matrix"], "G039", "G002")
    with pytest.raises(InputError):
        ingest(cohort_files["matrix"], cohort_files["samples"], out, overwrite=True)
    assert open_cohort(out).sizes["gene"] == 40


def test_reserved_annotation_names(tmp_path, cohort_files):
    sheet = pd.read_csv(cohort_files["samples"], sep="\t", dtype=str).rename(columns={"age": "expression"})
    sheet.to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    _assert_fails(tmp_path, r"column 'expression' clashes", cohort_files["matrix"], tmp_path / "s.tsv")


def test_default_chunks_hold_all_samples_and_about_96_mb(tmp_path):
    from engine.store.ingest import default_chunk_genes

    assert default_chunk_genes(2000) * 2000 * 4 == pytest.approx(96 * 2**20, rel=1e-3)
    paths = write_cohort_files(tmp_path, n_genes=30)
    ds = open_cohort(ingest(paths["matrix"], paths["samples"], tmp_path / "c.zarr"))
    assert ds["expression"].data.chunks == ((30,), (8,))


def test_streaming_reads_one_chunk_at_a_time(tmp_path, monkeypatch):
    """Ingest asks the reader for blocks of exactly one chunk and never holds the whole matrix."""
    from engine.store import formats

    paths = write_cohort_files(tmp_path, n_genes=103)
    seen = []
    original = formats.MatrixReader.blocks

    def spy(self, rows):
        for block in original(self, rows):
            seen.append(block.values.shape[0])
            yield block

    monkeypatch.setattr(formats.MatrixReader, "blocks", spy)
    ingest(paths["matrix"], paths["samples"], tmp_path / "c.zarr", chunk_genes=10)
    assert seen == [10] * 10 + [3]


def test_open_cohort_rejects_non_stores(tmp_path):
    with pytest.raises(InputError, match="not a cohort store"):
        open_cohort(tmp_path)
    xr.Dataset({"x": ("a", [1.0])}).to_zarr(tmp_path / "x.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(InputError, match="missing variable 'expression'"):
        open_cohort(tmp_path / "x.zarr")


def test_bundled_all_cohort(all_store):
    ds = open_cohort(all_store)
    assert ds.sizes == {"gene": 12625, "sample": 128}
    assert (ds["mol.biol"].values == "BCR/ABL").sum() == 37
    assert ds["sample"].values[0] == "01005"
    shared = __import__("pathlib").Path(__file__).parents[2] / "shared" / "data" / "all"
    if (shared / "expression.tsv.gz").exists():  # the bundle is the shared export rounded to float32
        original = pd.read_csv(shared / "expression.tsv.gz", sep="\t", index_col=0)
        np.testing.assert_array_equal(ds["expression"].values, original.to_numpy(np.float32))
