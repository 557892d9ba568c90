"""cohort ingest --append: appending samples gives the store a single ingest of everything gives.

The oracle is ``ingest`` of the combined matrix and sheet (the same cells as text): every
variable, dtype and chunk must match, and the data files must be byte-identical (equal
``content_digest``). Refusals must leave the store's files exactly as they were.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import warnings

import numpy as np
import pandas as pd
import pytest
import zarr

from conftest import write_cohort_files
from engine.errors import InputError
from engine.store import append_samples, content_digest, ingest, open_cohort
from engine.store import append as append_module

# the module, not the package's `ingest` function of the same name
ingest_module = importlib.import_module("engine.store.ingest")


def _read_text(path) -> pd.DataFrame:
    """A TSV with every cell as the text it holds (first column as index)."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return frame.set_index(frame.columns[0])


def _write(frame: pd.DataFrame, path):
    frame.to_csv(path, sep="\t")
    return path


def _split(tmp_path, first: int, n_per_group: int = 4, **kwargs) -> dict:
    """The cohort of ``write_cohort_files`` whole, and split after its ``first`` samples."""
    paths = write_cohort_files(tmp_path, n_per_group=n_per_group, **kwargs)
    matrix, sheet = _read_text(paths["matrix"]), _read_text(paths["samples"])
    old, new = matrix.columns[:first], matrix.columns[first:]
    return {"all": paths, "genes": paths["genes"], "matrix": matrix, "sheet": sheet,
            "old_matrix": _write(matrix[old], tmp_path / "old.tsv"),
            "old_samples": _write(sheet.loc[old], tmp_path / "old_samples.tsv"),
            "new_matrix": _write(matrix[new], tmp_path / "new.tsv"),
            "new_samples": _write(sheet.loc[new], tmp_path / "new_samples.tsv")}


def assert_same_store(appended, one_shot) -> None:
    """Same IDs, variables, dtypes, values, chunks and scale, and byte-identical data files."""
    a, b = open_cohort(appended), open_cohort(one_shot)
    assert list(a["sample"].values) == list(b["sample"].values)
    assert list(a["gene"].values) == list(b["gene"].values)
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for name in b.data_vars:
        assert a[name].dims == b[name].dims, name
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert a["expression"].chunks == b["expression"].chunks
    assert a["expression"].attrs == b["expression"].attrs
    assert a.attrs["content_sha256"] == content_digest(appended)
    assert content_digest(appended) == content_digest(one_shot)


def _files(store) -> dict:
    """Every file of the store (root metadata and derived stores included) and its sha256."""
    return {p.relative_to(store).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(store.rglob("*")) if p.is_file()}


def _assert_refused(store, match, matrix, samples=None, **kwargs):
    before = _files(store)
    with pytest.raises(InputError, match=match):
        append_samples(store, matrix, samples, **kwargs)
    assert _files(store) == before
    assert not _temporaries(store.parent)


def _temporaries(folder) -> list[str]:
    """What write-then-rename leaves when it fails to clean up (the lock file is meant to stay)."""
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_append_equals_one_shot_ingest(tmp_path):
    c = _split(tmp_path, first=5)
    store = ingest(c["old_matrix"], c["old_samples"], tmp_path / "c.zarr", genes=c["genes"],
                   chunk_genes=7)
    ingested_at = open_cohort(store).attrs["ingested_at"]
    report = append_samples(store, c["new_matrix"], c["new_samples"])
    one_shot = ingest(c["all"]["matrix"], c["all"]["samples"], tmp_path / "one.zarr",
                      genes=c["genes"], chunk_genes=7)
    assert_same_store(store, one_shot)
    assert report["samples_added"] == 3 and report["samples"] == 8 and report["chunk_genes"] == 7
    ds = open_cohort(store)
    assert ds["symbol"].values[3] == "SYM3"  # gene annotations of the gene table kept
    assert [s["role"] for s in ds.attrs["sources"]] == ["matrix", "samples", "genes",
                                                        "matrix", "samples"]
    (entry,) = ds.attrs["appended"]
    assert entry["samples_added"] == 3 and entry["samples"] == list(c["matrix"].columns[5:])
    assert [s["path"] for s in entry["sources"]] == [str(c["new_matrix"].absolute()),
                                                     str(c["new_samples"].absolute())]
    assert ds.attrs["ingested_at"] == ingested_at
    assert ds.attrs["content_sha256"] == report["content_sha256"]


def test_appending_twice_equals_one_shot_and_records_both(tmp_path):
    c = _split(tmp_path, first=2)
    matrix, sheet = c["matrix"], c["sheet"]
    store = ingest(c["old_matrix"], c["old_samples"], tmp_path / "c.zarr", chunk_genes=16)
    for part, cols in enumerate((matrix.columns[2:5], matrix.columns[5:])):
        append_samples(store, _write(matrix[cols], tmp_path / f"b{part}.tsv"),
                       _write(sheet.loc[cols], tmp_path / f"s{part}.tsv"))
    assert_same_store(store, ingest(c["all"]["matrix"], c["all"]["samples"],
                                    tmp_path / "one.zarr", chunk_genes=16))
    assert [e["samples_added"] for e in open_cohort(store).attrs["appended"]] == [3, 3]


def test_default_chunking_follows_the_new_sample_count(tmp_path, monkeypatch):
    # ~96 MB chunks scaled down: 320 bytes = 10 genes of 8 samples, 6 genes of 12
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", 4 * 8 * 10)
    c = _split(tmp_path, first=8, n_per_group=6)
    store = ingest(c["old_matrix"], c["old_samples"], tmp_path / "c.zarr")
    assert open_cohort(store)["expression"].chunks[0][0] == 10
    report = append_samples(store, c["new_matrix"], c["new_samples"])
    one_shot = ingest(c["all"]["matrix"], c["all"]["samples"], tmp_path / "one.zarr")
    assert report["chunk_genes"] == open_cohort(one_shot)["expression"].chunks[0][0] == 6
    assert_same_store(store, one_shot)


def test_explicit_chunking_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", 4 * 8 * 10)
    c = _split(tmp_path, first=8, n_per_group=6)
    store = ingest(c["old_matrix"], c["old_samples"], tmp_path / "c.zarr", chunk_genes=9)
    append_samples(store, c["new_matrix"], c["new_samples"])
    assert_same_store(store, ingest(c["all"]["matrix"], c["all"]["samples"],
                                    tmp_path / "one.zarr", chunk_genes=9))


def test_new_gene_order_is_realigned_to_the_store(tmp_path):
    c = _split(tmp_path, first=5)
    shuffled = c["matrix"].iloc[np.random.default_rng(3).permutation(len(c["matrix"]))]
    new_matrix = _write(shuffled[c["matrix"].columns[5:]], tmp_path / "shuffled.tsv")
    store = ingest(c["old_matrix"], c["old_samples"], tmp_path / "c.zarr", chunk_genes=7)
    append_samples(store, new_matrix, c["new_samples"])
    assert_same_store(store, ingest(c["all"]["matrix"], c["all"]["samples"],
                                    tmp_path / "one.zarr", chunk_genes=7))


def _featurecounts(path, counts: pd.DataFrame, lengths: pd.Series):
    """A featureCounts table of ``counts`` (genes x samples; sample S is /bam/S.bam)."""
    lines = ['# Program:featureCounts v2.0.3; Command:"featureCounts" "-a" "genes.gtf"',
             "Geneid\tChr\tStart\tEnd\tStrand\tLength\t"
             + "\t".join(f"/bam/{s}.bam" for s in counts.columns)]
    for gene, row in counts.iterrows():
        i = lengths.index.get_loc(gene)  # coordinates belong to the gene, not to the row
        lines.append(f"{gene}\tchr1\t{100 * i + 1}\t{100 * i + 50}\t+\t{lengths[gene]}\t"
                     + "\t".join(str(v) for v in row))
    path.write_text("\n".join(lines) + "\n")
    return path


def _counts_cohort(n_genes=12, n_samples=6):
    rng = np.random.default_rng(5)
    genes = [f"ENSG{i:05d}" for i in range(n_genes)]
    samples = [f"S{j + 1}" for j in range(n_samples)]
    counts = pd.DataFrame(rng.integers(0, 500, (n_genes, n_samples)), index=genes,
                          columns=samples)
    lengths = pd.Series(rng.integers(100, 5000, n_genes), index=genes)
    sheet = pd.DataFrame({"group": ["a", "b"] * (n_samples // 2)},
                         index=pd.Index(samples, name="id"))
    return counts, lengths, sheet


def test_append_to_a_counts_store_equals_one_shot_and_widens_to_int64(tmp_path):
    counts, lengths, sheet = _counts_cohort()
    counts.iloc[9, 4] = 3_000_000_000  # a new sample's count past int32, in the second chunk
    old, new = counts.columns[:3], counts.columns[3:]
    store = ingest(_featurecounts(tmp_path / "old.txt", counts[old], lengths),
                   _write(sheet.loc[old], tmp_path / "old_s.tsv"), tmp_path / "c.zarr",
                   chunk_genes=5)
    assert open_cohort(store)["counts"].dtype == np.int32
    reversed_rows = counts[new].iloc[::-1]  # another gene order: counts and Length realigned
    append_samples(store, _featurecounts(tmp_path / "new.txt", reversed_rows, lengths),
                   _write(sheet.loc[new], tmp_path / "new_s.tsv"))
    one_shot = ingest(_featurecounts(tmp_path / "all.txt", counts, lengths),
                      _write(sheet, tmp_path / "all_s.tsv"), tmp_path / "one.zarr", chunk_genes=5)
    assert_same_store(store, one_shot)
    ds = open_cohort(store)
    assert ds["counts"].dtype == np.int64
    np.testing.assert_array_equal(ds["counts"].values, counts.to_numpy())
    assert list(ds["length"].values) == lengths.tolist()


def test_integer_tsv_appended_to_a_counts_store(tmp_path):
    counts, _, sheet = _counts_cohort()
    old, new = counts.columns[:4], counts.columns[4:]
    store = ingest(_write(counts[old], tmp_path / "old.tsv"),
                   _write(sheet.loc[old], tmp_path / "old_s.tsv"), tmp_path / "c.zarr",
                   scale="counts", chunk_genes=4)
    append_samples(store, _write(counts[new], tmp_path / "new.tsv"),
                   _write(sheet.loc[new], tmp_path / "new_s.tsv"))  # the store's scale: counts
    assert_same_store(store, ingest(_write(counts, tmp_path / "all.tsv"),
                                    _write(sheet, tmp_path / "all_s.tsv"), tmp_path / "one.zarr",
                                    scale="counts", chunk_genes=4))


def test_annotation_types_as_one_ingest_would_choose(tmp_path):
    c = _split(tmp_path, first=5)
    sheet = c["sheet"].copy()
    sheet["patient"] = ["P1", "P2", "P3", "P4", "P5", "12", "13", "7.50"]  # text; new: numbers
    sheet["age"] = ["41", "52", "63", "", "45", "", "", ""]  # numeric; new ones all missing
    sheet["dose"] = ["", "", "", "", "", "1.5", "2", ""]  # missing in the store; new ones numbers
    old, new = sheet.index[:5], sheet.index[5:]
    store = ingest(c["old_matrix"], _write(sheet.loc[old], tmp_path / "o.tsv"),
                   tmp_path / "c.zarr", chunk_genes=7)
    assert open_cohort(store)["dose"].dtype == object
    append_samples(store, c["new_matrix"], _write(sheet.loc[new], tmp_path / "n.tsv"))
    one_shot = ingest(c["all"]["matrix"], _write(sheet, tmp_path / "a.tsv"), tmp_path / "one.zarr",
                      chunk_genes=7)
    assert_same_store(store, one_shot)
    ds = open_cohort(store)
    assert list(ds["patient"].values[5:]) == ["12", "13", "7.50"]  # as written
    assert ds["age"].dtype == np.float64 and ds["dose"].dtype == np.float64


# --- refusals: one message naming what differs, the store untouched -------------------------

@pytest.fixture
def split_store(tmp_path):
    c = _split(tmp_path, first=5)
    c["store"] = ingest(c["old_matrix"], c["old_samples"], tmp_path / "c.zarr", chunk_genes=7)
    (c["store"] / "derived" / "abc.zarr").mkdir(parents=True)
    (c["store"] / "derived" / "abc.zarr" / "zarr.json").write_text("{}")
    return c


def test_refuses_sample_ids_already_in_the_store(tmp_path, split_store):
    c = split_store
    cols = c["matrix"].columns[3:]  # 004, 005 are in the store
    _assert_refused(c["store"], r"2 sample IDs are already in the store: 004, 005 \(remove",
                    _write(c["matrix"][cols], tmp_path / "m.tsv"),
                    _write(c["sheet"].loc[cols], tmp_path / "s.tsv"))


def test_refuses_another_gene_set(tmp_path, split_store):
    c = split_store
    batch = c["matrix"][c["matrix"].columns[5:]].drop(index=["G001", "G007"])
    batch.loc["GX"] = "1.0"
    _assert_refused(c["store"], r"exactly the store's 40 genes \(in any order\): 2 of the store's "
                    r"genes are missing \(G001, G007\), 1 genes are not in the store \(GX\)",
                    _write(batch, tmp_path / "m.tsv"), c["new_samples"])


def test_refuses_counts_into_a_log2_store(tmp_path, split_store):
    counts, lengths, _ = _counts_cohort()
    _assert_refused(split_store["store"], r"featureCounts files hold read counts and the store "
                    r"holds log2 values", _featurecounts(tmp_path / "fc.txt", counts, lengths),
                    split_store["new_samples"])


def test_refuses_non_counts_into_a_counts_store(tmp_path):
    counts, _, sheet = _counts_cohort()
    store = ingest(_write(counts[counts.columns[:4]], tmp_path / "o.tsv"),
                   _write(sheet.iloc[:4], tmp_path / "os.tsv"), tmp_path / "c.zarr",
                   scale="counts")
    new = counts[counts.columns[4:]].astype(float) + 0.5
    _assert_refused(store, r"cannot append to .*c.zarr \(a counts store\): matrix .* non-integer "
                    r"count 0?\.?\d*\.5", _write(new, tmp_path / "n.tsv"),
                    _write(sheet.iloc[4:], tmp_path / "ns.tsv"))


def test_refuses_other_annotation_columns(tmp_path, split_store):
    c = split_store
    sheet = c["sheet"].loc[c["matrix"].columns[5:]].drop(columns=["age"]).assign(site="x")
    _assert_refused(c["store"], r"lack the store's sample annotations age \(add these columns.*"
                    r"have sample annotations the store lacks site \(remove",
                    c["new_matrix"], _write(sheet, tmp_path / "s.tsv"))


def test_refuses_text_where_the_store_has_numbers(tmp_path, split_store):
    c = split_store
    sheet = c["sheet"].loc[c["matrix"].columns[5:]].assign(age=["50", "unknown", "n/a"])
    _assert_refused(c["store"], r"sample annotation 'age' is numeric in the store but text in the "
                    r"new samples \(unknown, n/a\)", c["new_matrix"],
                    _write(sheet, tmp_path / "s.tsv"))


def test_refuses_other_gene_annotations_of_the_matrix(tmp_path):
    counts, lengths, sheet = _counts_cohort()
    old, new = counts.columns[:3], counts.columns[3:]
    store = ingest(_featurecounts(tmp_path / "old.txt", counts[old], lengths),
                   _write(sheet.loc[old], tmp_path / "os.tsv"), tmp_path / "c.zarr")
    other = lengths.copy()
    other.iloc[7] += 1
    _assert_refused(store, rf"gene annotation 'length' of the new matrix differs from the store's "
                    rf"for 1 genes \({lengths.index[7]}\)",
                    _featurecounts(tmp_path / "new.txt", counts[new].iloc[::-1], other),
                    _write(sheet.loc[new], tmp_path / "ns.tsv"))


def test_refuses_a_derived_store(tmp_path, split_store):
    c = split_store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata; the fake derived/ folder
        root = zarr.open_group(c["store"], mode="r+", zarr_format=3)
        root.attrs["derived_from"] = "/data/raw.zarr"
        zarr.consolidate_metadata(c["store"])
    _assert_refused(c["store"], r"is a derived store \(preprocessed from /data/raw.zarr\): "
                    r"append the samples to that raw store", c["new_matrix"], c["new_samples"])


def test_ingest_errors_of_the_batch_are_reported(tmp_path, split_store):
    c = split_store
    _assert_refused(c["store"], r"cannot append .*sample sheet has 1 IDs not in the matrix: 001",
                    c["new_matrix"], _write(c["sheet"].loc[["001", *c["matrix"].columns[5:]]],
                                            tmp_path / "s.tsv"))


def test_failed_write_leaves_the_store_as_it_was(tmp_path, split_store, monkeypatch):
    c = split_store

    class FailingWriter(append_module.GeneBlockWriter):
        def write(self, *args, **kwargs):
            if self.gene_ids:  # the second block: a half-written store exists in the temp dir
                raise OSError("disk full")
            super().write(*args, **kwargs)

    monkeypatch.setattr(append_module, "GeneBlockWriter", FailingWriter)
    before = _files(c["store"])
    with pytest.raises(OSError, match="disk full"):
        append_samples(c["store"], c["new_matrix"], c["new_samples"])
    assert _files(c["store"]) == before
    assert not _temporaries(tmp_path)
    monkeypatch.undo()
    report = append_samples(c["store"], c["new_matrix"], c["new_samples"])
    assert report["derived_dropped"] == 1
    assert not (c["store"] / "derived").exists()  # made from the old samples: dropped
    assert_same_store(c["store"], ingest(c["all"]["matrix"], c["all"]["samples"],
                                         tmp_path / "one.zarr", chunk_genes=7))


def test_refuses_a_second_append_while_one_runs(tmp_path, split_store):
    c = split_store
    with open(tmp_path / ".c.zarr.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running append holds
        _assert_refused(c["store"], r"another append to .*c.zarr is running", c["new_matrix"],
                        c["new_samples"])
    assert append_samples(c["store"], c["new_matrix"], c["new_samples"])["samples"] == 8


def test_refuses_a_store_that_does_not_exist(tmp_path, split_store):
    with pytest.raises(InputError, match=r"new.zarr does not exist: create it with `cohort "
                                         r"ingest` \(without --append\)"):
        append_samples(tmp_path / "new.zarr", split_store["new_matrix"],
                       split_store["new_samples"])
    assert not (tmp_path / "new.zarr").exists()
