"""RCC parsing: hand-written files in the documented nCounter format (tests/data/rcc) and
malformed variants built from them; every problem is one InputError naming file and line."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.errors import InputError
from engine.store.rcc import RccCohort, read_rcc, read_rcc_folder, snake_case

RCC = Path(__file__).parent / "data" / "rcc"
PROBES = ["CD8A", "PDCD1", "IFNG", "GZMB", "GAPDH", "ACTB", "TBP", "NEG_A", "NEG_B", "NEG_C",
          "NEG_D", "POS_A(128)", "POS_B(32)", "POS_C(8)", "POS_D(2)", "POS_E(0.5)",
          "POS_F(0.125)"]
# The Count column of each file, in the probe order above (S03 lists them in another order).
COUNTS = {
    "S01": [1520, 96, 0, 431, 8800, 15400, 210, 7, 15, 11, 12, 12800, 3200, 800, 200, 50, 12],
    "S02": [640, 31, 18, 205, 4100, 7900, 95, 10, 12, 9, 14, 10000, 2900, 700, 150, 30, 9],
    "S03": [2900, 250, 44, 870, 12000, 21000, 330, 15, 25, 10, 30, 5000, 4000, 3000, 2500, 20,
            5],
}


def text(name: str) -> str:
    return (RCC / name).read_text()


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(content)
    return folder


def three(tmp_path, **replace) -> Path:
    """The three files, with ``replace={name: (old, new)}`` edits."""
    files = {n: text(n) for n in ("S01.RCC", "S02.RCC", "S03.RCC")}
    for name, (old, new) in replace.items():
        assert old in files[name]
        files[name] = files[name].replace(old, new, 1)
    return write(tmp_path / "rcc", files)


def test_folder_counts_genes_samples():
    cohort = read_rcc_folder(RCC)
    assert isinstance(cohort, RccCohort)
    assert list(cohort.counts.columns) == ["S01", "S02", "S03"]
    assert list(cohort.counts.index) == PROBES
    assert cohort.counts.dtypes.unique().tolist() == [np.dtype(np.int64)]
    for sample, values in COUNTS.items():
        assert cohort.counts[sample].tolist() == values

    genes = cohort.genes
    assert list(genes.index) == PROBES
    assert genes.loc["CD8A"].tolist() == ["Endogenous", "NM_001768.5", "CD8A"]
    assert genes.loc["TBP", "code_class"] == "Housekeeping"
    assert genes.loc["POS_E(0.5)", "accession"] == "ERCC_00035.1"
    assert (genes["code_class"].value_counts().to_dict()
            == {"Endogenous": 4, "Housekeeping": 3, "Negative": 4, "Positive": 6})


def test_samples_table():
    samples = read_rcc_folder(RCC).samples
    assert list(samples.index) == ["S01", "S02", "S03"]
    s1, s2, s3 = (samples.loc[s] for s in samples.index)
    assert s1["id"] == "S01" and s1["owner"] == "lab" and s1["date"] == "20240115"
    assert s1["gene_rlf"] == "NS_TestPanel_C1" and s1["system_apf"] == "n6_vDV1"
    assert s1["file_version"] == "1.7" and s3["file_version"] == "2.0"
    assert s2["comments"] == "re-run, low input"  # the value is everything after the first comma
    assert s3["system_type"] == "Gen2" and s3["assay_type"] == "Gene Expression"
    assert s1["system_type"] == ""  # 1.7 files lack the 2.0 fields
    assert samples["lane_id"].tolist() == [1, 2, 3]
    assert samples["fov_count"].tolist() == [280, 280, 555]
    assert samples["fov_counted"].tolist() == [280, 200, 550]
    assert samples["stage_position"].tolist() == [1, 1, 2]
    assert samples["binding_density"].tolist() == [1.11, 0.05, 2.30]
    assert samples["binding_density"].dtype == np.float64
    assert str(samples["fov_count"].dtype) == "Int64"
    assert samples["scanner_id"].tolist() == ["1202C0037"] * 3
    assert samples["cartridge_id"].tolist() == ["CART01", "CART01", "CART02"]
    assert samples["cartridge_barcode"].tolist() == ["", "", "CB0002"]
    assert samples["file"].tolist() == ["S01.RCC", "S02.RCC", "S03.RCC"]


def test_read_rcc_single_file():
    sample, lane, summary = read_rcc(RCC / "S03.RCC")
    assert sample["ID"] == "S03" and sample["FileVersion"] == "2.0"
    assert sample["AssayType"] == "Gene Expression" and sample["SystemType"] == "Gen2"
    assert lane == {"ID": "3", "FovCount": "555", "FovCounted": "550", "ScannerID": "1202C0037",
                    "StagePosition": "2", "BindingDensity": "2.30", "CartridgeID": "CART02",
                    "CartridgeBarcode": "CB0002"}
    assert list(summary.columns) == ["code_class", "name", "accession", "count", "line"]
    assert summary["name"].iloc[0] == "POS_A(128)" and summary["count"].iloc[0] == 5000
    assert summary["line"].iloc[0] == 30  # the line of the first probe in the file
    assert summary["count"].dtype == np.int64


def test_snake_case():
    assert [snake_case(n) for n in ("GeneRLF", "SystemAPF", "FovCounted", "ScannerID",
                                    "BindingDensity", "CartridgeBarcode", "ID")] == \
        ["gene_rlf", "system_apf", "fov_counted", "scanner_id", "binding_density",
         "cartridge_barcode", "id"]


def test_crlf_bom_and_lowercase_extension(tmp_path):
    folder = tmp_path / "rcc"
    folder.mkdir()
    for name in ("S01.RCC", "S02.RCC"):
        data = ("\ufeff" + text(name)).replace("\n", "\r\n").encode("utf-8")
        (folder / name.replace(".RCC", ".rcc")).write_bytes(data)
    (folder / "notes.txt").write_text("not an RCC file")
    cohort = read_rcc_folder(folder)
    assert list(cohort.counts.columns) == ["S01", "S02"]
    assert cohort.counts["S02"].tolist() == COUNTS["S02"]


def test_ids_fall_back_to_file_stems(tmp_path):
    # Two files with the same Sample_Attributes ID: every sample is named by its file stem.
    folder = three(tmp_path, **{"S02.RCC": ("ID,S02", "ID,S01")})
    cohort = read_rcc_folder(folder)
    assert list(cohort.counts.columns) == ["S01", "S02", "S03"]
    assert cohort.samples["id"].tolist() == ["S01", "S01", "S03"]
    shutil.move(folder / "S01.RCC", folder / "lane_01.RCC")
    cohort = read_rcc_folder(folder)
    assert list(cohort.counts.columns) == ["S02", "S03", "lane_01"]
    assert cohort.counts["lane_01"].tolist() == COUNTS["S01"]
    # An empty ID also falls back to stems.
    folder = three(tmp_path / "b", **{"S03.RCC": ("ID,S03", "ID,")})
    assert list(read_rcc_folder(folder).counts.columns) == ["S01", "S02", "S03"]


def test_duplicate_sample_ids_error(tmp_path):
    folder = three(tmp_path, **{"S02.RCC": ("ID,S02", "ID,S01")})
    shutil.copy(folder / "S01.RCC", folder / "S01.rcc")
    with pytest.raises(InputError, match=r"duplicate sample IDs: .*S01.RCC and .*S01.rcc"):
        read_rcc_folder(folder)


def test_zip_archives(tmp_path):
    archive = tmp_path / "run.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("S01.RCC", "S02.RCC", "S03.RCC"):
            z.writestr(f"run/{name}", text(name))
        z.writestr("__MACOSX/run/._S01.RCC", "resource fork")
    cohort = read_rcc_folder(archive)
    assert list(cohort.counts.columns) == ["S01", "S02", "S03"]
    assert cohort.counts["S03"].tolist() == COUNTS["S03"]
    assert cohort.samples["file"].tolist() == [f"run.zip:run/S0{i}.RCC" for i in (1, 2, 3)]
    # A zip inside the folder is read along with loose files.
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "S01.RCC").write_text(text("S01.RCC"))
    with zipfile.ZipFile(folder / "more.zip", "w") as z:
        z.writestr("S02.RCC", text("S02.RCC"))
    assert list(read_rcc_folder(folder).counts.columns) == ["S01", "S02"]


def test_repeated_name_made_unique_with_code_class(tmp_path):
    extra = "Endogenous,GAPDH,NM_002046.3,77\n</Code_Summary>"
    folder = three(tmp_path, **{n: ("</Code_Summary>", extra)
                                for n in ("S01.RCC", "S02.RCC", "S03.RCC")})
    cohort = read_rcc_folder(folder)
    assert "GAPDH" not in cohort.counts.index
    assert cohort.counts.loc["GAPDH_Housekeeping", "S01"] == 8800
    assert cohort.counts.loc["GAPDH_Endogenous", "S01"] == 77
    assert cohort.genes.loc["GAPDH_Endogenous"].tolist() == ["Endogenous", "NM_002046.3", "GAPDH"]
    assert cohort.counts.index.is_unique


def test_continuation_line_joins_the_previous_value(tmp_path):
    folder = three(tmp_path, **{"S01.RCC": ("Comments,\n", "Comments,first line\nsecond line\n")})
    assert read_rcc_folder(folder).samples.loc["S01", "comments"] == "first line second line"


# -------------------------------------------------------------------------- malformed input

@pytest.mark.parametrize("old,new,message", [
    ("Endogenous,PDCD1,NM_005018.2,96", "Endogenous,PDCD1,NM_005018.2,96.5",
     r"S01.RCC: line 29: count '96.5' of probe 'PDCD1' is not a non-negative integer"),
    ("Endogenous,PDCD1,NM_005018.2,96", "Endogenous,PDCD1,NM_005018.2,-3",
     r"line 29: count '-3'"),
    ("Endogenous,PDCD1,NM_005018.2,96", "Endogenous,PDCD1,NM_005018.2,",
     r"line 29: count ''"),
    ("Endogenous,PDCD1,NM_005018.2,96", "Endogenous,PDCD1,NM_005018.2,96,3",
     r"line 29 has 5 fields, expected 4"),
    ("CodeClass,Name,Accession,Count", "CodeClass,Name,Count",
     r"line 27 should be the <Code_Summary> header CodeClass,Name,Accession,Count"),
    ("</Lane_Attributes>", "", r"line 26 opens <Code_Summary> before <Lane_Attributes> "
                               r"\(line 15\) is closed"),
    ("</Messages>", "", r"section <Messages> opened on line 47 is never closed"),
    ("FovCount,280", "FovCount,many", r"S01.RCC: line 17: lane attribute FovCount is 'many', "
                                      r"not a whole number"),
    ("BindingDensity,1.11", "BindingDensity,1,11", r"line 21: lane attribute BindingDensity "
                                                   r"is '1,11', not a number"),
    ("Negative,NEG_B,ERCC_00041.1,15", "Negative,NEG_A,ERCC_00041.1,15",
     r"probe 'NEG_A' of class 'Negative' appears more than once \(lines \[35, 36\]\)"),
    ("<Header>", "stray text\n<Header>", r"line 1 is outside any section: 'stray text'"),
    ("Owner,lab", "Owner,lab\nOwner,other", r"line 9 repeats <Sample_Attributes> field 'Owner'"),
])
def test_malformed_file(tmp_path, old, new, message):
    folder = three(tmp_path, **{"S01.RCC": (old, new)})
    with pytest.raises(InputError, match=message):
        read_rcc_folder(folder)


def test_missing_sections(tmp_path):
    lines = text("S01.RCC").split("\n")
    start, end = lines.index("<Lane_Attributes>"), lines.index("</Lane_Attributes>")
    folder = three(tmp_path, **{"S01.RCC": ("\n".join(lines[start:end + 1]), "")})
    with pytest.raises(InputError, match=r"RCC file .*S01.RCC has no <Lane_Attributes> section"):
        read_rcc_folder(folder)
    with pytest.raises(InputError, match=r"has no <Header>, <Sample_Attributes>, "
                                         r"<Lane_Attributes>, <Code_Summary> section"):
        read_rcc_folder(write(tmp_path / "empty", {"x.RCC": ""}))


def test_empty_code_summary(tmp_path):
    body = text("S01.RCC").split("<Code_Summary>")[1].split("</Code_Summary>")[0]
    folder = three(tmp_path, **{"S01.RCC": (body, "\nCodeClass,Name,Accession,Count\n")})
    with pytest.raises(InputError, match=r"<Code_Summary> \(line 26\) has no probes"):
        read_rcc_folder(folder)


def test_different_code_sets_name_the_files(tmp_path):
    folder = three(tmp_path, **{"S03.RCC": ("Endogenous,IFNG,NM_000619.2,44",
                                            "Endogenous,IL2,NM_000586.3,44")})
    with pytest.raises(InputError, match=r"RCC files .*S01.RCC and .*S03.RCC have different code "
                                         r"sets \(probes only in .*S03.RCC: Endogenous/IL2; only "
                                         r"in .*S01.RCC: Endogenous/IFNG\)"):
        read_rcc_folder(folder)
    folder = three(tmp_path / "b", **{"S03.RCC": ("Endogenous,IFNG,NM_000619.2,44\n", "")})
    with pytest.raises(InputError, match=r"different code sets \(probes only in .*S03.RCC: none"):
        read_rcc_folder(folder)


def test_different_rlf_names_the_files(tmp_path):
    folder = three(tmp_path, **{"S02.RCC": ("GeneRLF,NS_TestPanel_C1", "GeneRLF,NS_Other_C2")})
    with pytest.raises(InputError, match=r"different code sets \(GeneRLF 'NS_TestPanel_C1': "
                                         r".*S01.RCC, .*S03.RCC; GeneRLF 'NS_Other_C2': "
                                         r".*S02.RCC\)"):
        read_rcc_folder(folder)


def test_no_files(tmp_path):
    with pytest.raises(InputError, match="no RCC files"):
        read_rcc_folder(write(tmp_path / "none", {"a.txt": "x"}))
    with pytest.raises(InputError, match="does not exist"):
        read_rcc_folder(tmp_path / "missing")
    with pytest.raises(InputError, match="does not exist"):
        read_rcc(tmp_path / "missing.RCC")
    (tmp_path / "bad.zip").write_text("not a zip")
    with pytest.raises(InputError, match="not a readable zip"):
        read_rcc_folder(tmp_path / "bad.zip")


def test_counts_frame_matches_read_rcc():
    """The folder reader and the single-file reader agree on every count (S03's probes are in
    another order in its file, so this checks the alignment by probe)."""
    cohort = read_rcc_folder(RCC)
    for sample in ("S01", "S02", "S03"):
        _, _, summary = read_rcc(RCC / f"{sample}.RCC")
        by_name = pd.Series(summary["count"].to_numpy(), index=summary["name"])
        assert cohort.counts[sample].equals(by_name.reindex(cohort.counts.index)
                                            .rename(sample).rename_axis("probe"))
