"""Content fingerprints of cohort stores: equal data, equal digest; any change changes it."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil

import pandas as pd
import pytest

from conftest import write_cohort_files
from engine.errors import InputError
from engine.store import append_samples, content_digest, ingest, store_fingerprint

ingest_module = importlib.import_module("engine.store.ingest")
fingerprint_module = importlib.import_module("engine.store.fingerprint")


def _root_attributes(store) -> dict:
    return json.loads((store / "zarr.json").read_text())["attributes"]


def _independent_digest(store) -> str:
    """The documented recipe, written out separately: sorted data files, path + size + sha256."""
    lines = []
    for path in sorted(store.rglob("*"), key=lambda p: p.relative_to(store).as_posix()):
        relative = path.relative_to(store).as_posix()
        hidden = any(part.startswith(".") for part in path.relative_to(store).parts)
        if not path.is_file() or hidden or relative == "zarr.json" \
                or relative.startswith("derived/"):
            continue
        data = path.read_bytes()
        lines.append(f"{relative}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}\n")
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


def test_recorded_at_ingest_and_equal_to_the_recipe(tmp_path, cohort_files):
    store = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr",
                   genes=cohort_files["genes"], chunk_genes=7)
    recorded = _root_attributes(store)["content_sha256"]
    assert recorded == content_digest(store) == _independent_digest(store)
    assert recorded.startswith("sha256:") and len(recorded) == 7 + 64


def test_same_data_ingested_at_another_time_from_another_place(tmp_path, cohort_files,
                                                                monkeypatch):
    first = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "a.zarr",
                   genes=cohort_files["genes"], chunk_genes=7)
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    copies = {k: shutil.copy(p, elsewhere / p.name) for k, p in cohort_files.items()}
    monkeypatch.setattr(ingest_module, "now_utc", lambda: "2031-01-02T03:04:05+00:00")
    second = ingest(copies["matrix"], copies["samples"], tmp_path / "b.zarr",
                    genes=copies["genes"], chunk_genes=7)
    a, b = _root_attributes(first), _root_attributes(second)
    assert a["ingested_at"] != b["ingested_at"] and a["sources"] != b["sources"]
    assert a["content_sha256"] == b["content_sha256"] == content_digest(second)


def _reingest(tmp_path, cohort_files, name, matrix=None, samples=None, chunk_genes=7):
    return content_digest(ingest(matrix or cohort_files["matrix"],
                                 samples or cohort_files["samples"], tmp_path / name,
                                 chunk_genes=chunk_genes))


def test_any_change_of_the_data_changes_it(tmp_path, cohort_files):
    base = _reingest(tmp_path, cohort_files, "base.zarr")
    frame = pd.read_csv(cohort_files["matrix"], sep="\t", dtype=str, keep_default_na=False)
    frame.iloc[17, 3] = "9.9" if frame.iloc[17, 3] != "9.9" else "9.8"  # one value
    frame.to_csv(tmp_path / "m1.tsv", sep="\t", index=False)
    sheet = pd.read_csv(cohort_files["samples"], sep="\t", dtype=str, keep_default_na=False)
    sheet.loc[2, "group"] = "control"  # one annotation
    sheet.to_csv(tmp_path / "s1.tsv", sep="\t", index=False)
    digests = [base,
               _reingest(tmp_path, cohort_files, "value.zarr", matrix=tmp_path / "m1.tsv"),
               _reingest(tmp_path, cohort_files, "annotation.zarr", samples=tmp_path / "s1.tsv"),
               _reingest(tmp_path, cohort_files, "chunks.zarr", chunk_genes=8)]
    assert len(set(digests)) == len(digests)


def test_changes_after_append(tmp_path):
    paths = write_cohort_files(tmp_path)
    matrix = pd.read_csv(paths["matrix"], sep="\t", dtype=str, keep_default_na=False)
    sheet = pd.read_csv(paths["samples"], sep="\t", dtype=str, keep_default_na=False)
    old, new = list(matrix.columns[1:6]), list(matrix.columns[6:])
    matrix[["gene_id", *old]].to_csv(tmp_path / "old.tsv", sep="\t", index=False)
    matrix[["gene_id", *new]].to_csv(tmp_path / "new.tsv", sep="\t", index=False)
    sheet[sheet["sample_id"].isin(old)].to_csv(tmp_path / "os.tsv", sep="\t", index=False)
    sheet[sheet["sample_id"].isin(new)].to_csv(tmp_path / "ns.tsv", sep="\t", index=False)
    store = ingest(tmp_path / "old.tsv", tmp_path / "os.tsv", tmp_path / "c.zarr")
    before = store_fingerprint(store)
    report = append_samples(store, tmp_path / "new.tsv", tmp_path / "ns.tsv")
    assert store_fingerprint(store) == report["content_sha256"] == content_digest(store)
    assert store_fingerprint(store) != before


def test_derived_stores_and_hidden_files_are_not_data(tmp_path, cohort_files):
    store = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr")
    before = content_digest(store)
    (store / "derived" / "0123.zarr").mkdir(parents=True)
    (store / "derived" / "0123.zarr" / "zarr.json").write_text("{}")
    (store / ".expression.tmp-1234").mkdir()
    (store / ".expression.tmp-1234" / "x").write_text("partial")
    assert content_digest(store) == before
    chunk = store / "expression" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes() + b"\0")
    assert content_digest(store) != before


def test_store_fingerprint_reads_the_attribute_without_hashing(tmp_path, cohort_files,
                                                              monkeypatch):
    store = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr")
    expected = content_digest(store)

    def no_hashing(_):
        raise AssertionError("content_digest must not run when the attribute is recorded")

    monkeypatch.setattr(fingerprint_module, "content_digest", no_hashing)
    assert store_fingerprint(store) == expected


def test_store_fingerprint_of_an_older_store_hashes_it(tmp_path, cohort_files, monkeypatch):
    store = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "c.zarr")
    metadata = json.loads((store / "zarr.json").read_text())
    expected = metadata["attributes"].pop("content_sha256")
    (store / "zarr.json").write_text(json.dumps(metadata))  # as written before this change
    assert store_fingerprint(store) == expected
    calls = []
    monkeypatch.setattr(fingerprint_module, "content_digest",
                        lambda s: calls.append(s) or "sha256:computed")
    assert store_fingerprint(store) == "sha256:computed" and calls == [store]


def test_store_fingerprint_of_a_derived_store_is_its_own(tmp_path, cohort_files):
    raw = ingest(cohort_files["matrix"], cohort_files["samples"], tmp_path / "raw.zarr")
    derived = shutil.copytree(raw, tmp_path / "derived.zarr")
    metadata = json.loads((derived / "zarr.json").read_text())
    metadata["attributes"]["derived_from"] = str(raw)  # attributes copied from the raw store
    (derived / "zarr.json").write_text(json.dumps(metadata))
    chunk = derived / "expression" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes() + b"\0")  # other data than the raw store's
    assert store_fingerprint(derived) == content_digest(derived) != store_fingerprint(raw)


def test_store_fingerprint_of_a_non_store(tmp_path):
    with pytest.raises(InputError, match="is not a cohort store"):
        store_fingerprint(tmp_path)
