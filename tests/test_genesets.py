"""Gene-set library: GMT/GMX files, bundled libraries, mapping to a cohort, probe collapsing.

References: the bundled lists against the literal lists of ../shared/STUDIES.md (parsed here)
and the issue text; Hallmark against its source file byte for byte; membership against a
direct per-set reference and against the R translation of Hallmark to HG-U95 probes
(../shared/oracle/gmt_symbols_to_ids.R); probe collapsing against pandas.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import engine
from engine.datasets import all_files
from engine.errors import InputError
from engine.genesets import (GeneSet, Membership, bundled_libraries, collapse_probes,
                             load_gene_sets, map_gene_sets, read_gmt, read_gmx, write_gmt)
from engine.store.contract import check_cohort

SHARED = Path(__file__).resolve().parents[2] / "shared"
STUDIES = SHARED / "STUDIES.md"
HALLMARK_SOURCE = SHARED / "data" / "genesets" / "h.all.v7.0.symbols.gmt"
ORACLE_HALLMARK_PROBES = SHARED / "oracle" / "out" / "all" / "hallmark_v7.0_hgu95_probes.gmt"
CHIP = SHARED / "data" / "leukemia_gsea" / "Human_AFFY_HG_U95_MSigDB_7_0_final.chip"


def write(path: Path, text: str, newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode())
    return path


# ---------------------------------------------------------------------------------------------
# GMT / GMX


def test_read_gmt_ragged_crlf_blank_lines_and_empty_fields(tmp_path):
    path = write(tmp_path / "x.gmt",
                 "A\tfirst set\tG1\tG2\tG3\n"
                 "\n"
                 "B\t\tG2\t\tG4\t\n"        # empty description, empty member fields
                 "   \n"
                 "C\tdup member\tG5\tG6\tG5\tG7\n"
                 "D\tonly a description\n", newline="\r\n")
    sets = read_gmt(path)
    assert [s.name for s in sets] == ["A", "B", "C", "D"]
    assert sets[0].genes == ("G1", "G2", "G3") and sets[0].description == "first set"
    assert sets[1].genes == ("G2", "G4") and sets[1].description == ""
    assert sets[2].genes == ("G5", "G6", "G7")  # order kept, the repeat dropped
    assert sets[3].genes == () and len(sets[3]) == 0
    assert {s.source for s in sets} == {"x.gmt"} and {s.version for s in sets} == {""}
    tagged = read_gmt(path, source="my lab", version="v2")
    assert tagged[0].source == "my lab" and tagged[0].version == "v2"


def test_read_gmt_without_final_newline_and_with_bom(tmp_path):
    path = tmp_path / "x.gmt"
    path.write_bytes("\ufeffA\td\tG1\tG2".encode("utf-8"))
    assert read_gmt(path) == [GeneSet("A", ("G1", "G2"), "d", "x.gmt", "")]


def test_read_gmt_refuses_duplicate_names_naming_the_lines(tmp_path):
    path = write(tmp_path / "x.gmt", "A\td\tG1\n\nB\td\tG2\nA\td\tG3\n")
    with pytest.raises(InputError, match=r"line 4: gene set 'A' is already defined on line 1"):
        read_gmt(path)


@pytest.mark.parametrize("text, message", [
    ("A G1 G2\n", r"line 1: no TAB"),
    ("A\td\tG1\n\td\tG2\n", r"line 2: the set name \(first field\) is empty"),
])
def test_read_gmt_refuses_malformed_lines(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        read_gmt(write(tmp_path / "x.gmt", text))


def test_read_gmt_refuses_non_utf8_and_missing_files(tmp_path):
    path = tmp_path / "x.gmt"
    path.write_bytes(b"A\td\tG1\nB\td\t\xff\n")
    with pytest.raises(InputError, match=r"line 2: not UTF-8"):
        read_gmt(path)
    with pytest.raises(InputError, match="does not exist"):
        read_gmt(tmp_path / "missing.gmt")


def test_write_gmt_round_trips_byte_for_byte(tmp_path):
    original = (Path(bundled_libraries()["hallmark"]["file"])).read_bytes()
    out = write_gmt(load_gene_sets("hallmark"), tmp_path / "sub" / "h.gmt")
    assert out.read_bytes() == original
    small = write(tmp_path / "small.gmt", "A\tfirst\tG1\tG2\nB\t\tG3\nC\tnone\n")
    write_gmt(read_gmt(small), tmp_path / "small2.gmt")
    assert (tmp_path / "small2.gmt").read_bytes() == small.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.gmt", "small2.gmt", "sub"]


def test_write_gmt_is_atomic(tmp_path):
    target = write(tmp_path / "x.gmt", "OLD\td\tG1\n")
    bad = [GeneSet("A", ("G1",)), GeneSet("B", ("G\t2",))]
    with pytest.raises(InputError, match="TAB or line break"):
        write_gmt(bad, target)
    with pytest.raises(InputError, match="appears twice"):
        write_gmt([GeneSet("A", ("G1",)), GeneSet("A", ("G2",))], target)
    assert target.read_text() == "OLD\td\tG1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.gmt"]  # no temporary file left


def test_read_gmx_one_set_per_column(tmp_path):
    path = write(tmp_path / "x.gmx",
                 "A\tB\tC\n"
                 "desc a\tdesc b\t\n"
                 "G1\tG4\tG6\n"
                 "G2\t\tG7\n"        # B ends early (empty cell)
                 "G3\n"              # ragged: B and C end here
                 "G2\n", newline="\r\n")
    sets = read_gmx(path)
    assert [(s.name, s.genes, s.description) for s in sets] == [
        ("A", ("G1", "G2", "G3"), "desc a"), ("B", ("G4",), "desc b"), ("C", ("G6", "G7"), "")]
    gmt = write_gmt(sets, tmp_path / "x.gmt")
    assert read_gmt(gmt, source="x.gmx") == sets


def test_read_gmx_refuses_duplicate_names_and_members_without_a_name(tmp_path):
    with pytest.raises(InputError, match=r"column 3: gene set 'A' is already defined in column 1"):
        read_gmx(write(tmp_path / "d.gmx", "A\tB\tA\nd\td\td\nG1\tG2\tG3\n"))
    with pytest.raises(InputError, match=r"column 2: members \(row 3\) but no set name"):
        read_gmx(write(tmp_path / "n.gmx", "A\t\nd\t\nG1\tG2\n"))


def test_load_gene_sets_from_files_and_bundled_names(tmp_path):
    gmt = write(tmp_path / "x.gmt", "A\td\tG1\n")
    gz = tmp_path / "x.gmt.gz"
    gz.write_bytes(gzip.compress(gmt.read_bytes()))
    gmx = write(tmp_path / "x.gmx", "A\nd\nG1\n")
    assert load_gene_sets(gmt)[0].genes == load_gene_sets(str(gz))[0].genes == ("G1",)
    assert load_gene_sets(str(gmx))[0].genes == ("G1",)
    for bad in ("kegg", tmp_path / "missing.gmt", str(tmp_path / "x.txt")):
        with pytest.raises(InputError, match="hallmark, icr, seed_signatures"):
            load_gene_sets(bad)


def test_gene_set_object():
    s = GeneSet(" A ", [" G1", "G2", "G1", ""], None)
    assert s.name == "A" and s.genes == ("G1", "G2") and s.description == ""
    assert "2 genes" in repr(s)
    with pytest.raises(InputError, match="empty name"):
        GeneSet("  ", ("G1",))
    with pytest.raises(InputError, match="not one string"):
        GeneSet("A", "CD8A")


# ---------------------------------------------------------------------------------------------
# Bundled libraries


ISSUE_ICR = {  # issue 4, "Gene-set library", verbatim
    "ICR_CXCR3_CCR5_CHEMOKINES": ["CXCL9", "CXCL10", "CCL5"],
    "ICR_TH1_SIGNALING": ["IFNG", "IL12B", "TBX21", "CD8A", "STAT1", "IRF1", "CD8B"],
    "ICR_EFFECTOR": ["GNLY", "PRF1", "GZMA", "GZMB", "GZMH"],
    "ICR_IMMUNE_REGULATORY": ["CD274", "CTLA4", "FOXP3", "IDO1", "PDCD1"],
}


def test_bundled_library_index():
    libraries = bundled_libraries()
    assert sorted(libraries) == ["hallmark", "icr", "seed_signatures"]
    for name, meta in libraries.items():
        path = Path(meta["file"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"], name
        sets = load_gene_sets(name)
        assert len(sets) == meta["n_sets"]
        for key in ("title", "source", "version", "licence", "citation"):
            assert meta[key], (name, key)
        assert all(s.source and s.version and s.description and s.genes for s in sets)
    assert "CC BY 4.0" in libraries["hallmark"]["licence"]
    assert "Liberzon" in libraries["hallmark"]["citation"]
    assert "Subramanian" in libraries["hallmark"]["citation"]
    readme = (Path(libraries["icr"]["file"]).parent / "README.md").read_text()
    assert "CC BY 4.0" in readme and "Liberzon" in readme and "Subramanian" in readme


def test_icr_library_is_the_20_genes_in_4_categories():
    sets = {s.name: s for s in load_gene_sets("icr")}
    assert list(sets) == ["ICR", *ISSUE_ICR]
    assert {n: list(sets[n].genes) for n in ISSUE_ICR} == ISSUE_ICR
    categories = [g for n in ISSUE_ICR for g in sets[n].genes]
    assert len(categories) == len(set(categories)) == 20
    assert list(sets["ICR"].genes) == categories


def test_hallmark_is_the_shared_file_byte_for_byte():
    bundled = Path(bundled_libraries()["hallmark"]["file"])
    if not HALLMARK_SOURCE.exists():
        pytest.skip(f"{HALLMARK_SOURCE} not present")
    assert bundled.read_bytes() == HALLMARK_SOURCE.read_bytes()
    sets = load_gene_sets("hallmark")
    assert len(sets) == 50 and sum(len(s) for s in sets) == 7322
    assert {s.version for s in sets} == {"MSigDB v7.0 (2019)"}


def studies_text() -> str:
    if not STUDIES.exists():
        pytest.skip(f"{STUDIES} not present")
    return STUDIES.read_text(encoding="utf-8")


def test_icr_against_studies_table():
    text = studies_text()
    section = text[text.index("### 3.1 P0"):text.index("### 3.2 P0")]
    rows = re.findall(r"^\| ([^|]+?) \| ([A-Z0-9, ]+) \|$", section, flags=re.M)
    names = {"CXCR3/CCR5 chemokines": "ICR_CXCR3_CCR5_CHEMOKINES",
             "Th1 signaling": "ICR_TH1_SIGNALING", "Effector": "ICR_EFFECTOR",
             "Immune regulatory functions": "ICR_IMMUNE_REGULATORY"}
    table = {names[category]: genes.split(", ") for category, genes in rows}
    sets = {s.name: list(s.genes) for s in load_gene_sets("icr")}
    assert table == {n: sets[n] for n in names.values()}
    assert sets["ICR"] == [g for genes in table.values() for g in genes]


# Each seed set: the fragments of STUDIES.md section 3 it was copied from, the spelling changes
# (printed -> used; [sic] ones must be STUDIES.md's own reading) and tokens that are not genes.
SEED_SPECS = {
    "AYERS_PD1_RESPONSE_16": (["STAT1, HLA-E", "HLA-DQA1, HLA-DRB1, PSMB10, CMKLR1",
                               "CCL5, CXCL9, CXCR6", "CD8A, NKG7",
                               "TIGIT, LAG3, CD274 (PDLI [sic]), CD276, PDCD1LG2 (PDL2)"],
                              {}, {"PDLI", "PDL2"}),
    "MELANOMA_IMIQUIMOD_REGRESSION": (
        ["CCL5, CXCL9, CXCL10; dendritic-cell markers CD80, CD86; T-cell activation CD69"],
        {}, set()),
    "P0_POST_VS_PRE_HIGHLIGHTED": (
        ["lymphocyte activation SH2D1A, SLAMF1", "adhesion SELL", "cytolysis PRF1",
         "NK activation KLRC1", 'T cell CD3G, "CD347" [sic; Table 2 has CD247]',
         "cytotoxic T cell CD8A", "antigen presentation HLA-C"], {"CD347": "CD247"}, set()),
    "P0_POST_VS_PRE_DOWN_MAPK": (["MAP2K4, MAPK1, MAPK11, MAP3K5"], {}, set()),
    "P0_PRE_CR_VS_NR_HIGHLIGHTED": (
        ['ITGAX, ITGAM, ITGB2, "FUY7" [sic; FUT7]; CX3CR1; CD8A, GZMK; HLA-DMA, "HLA-DBP1" '
         '[sic; HLA-DPB1], HLA-DPA1'], {"FUY7": "FUT7", "HLA-DBP1": "HLA-DPB1"}, set()),
    "P0_PRE_CR_VS_NR_DOWN": (['IFNL1, IL34, "IL23" (Table 3: IL23A)'], {"IL23": "IL23A"}, set()),
    "P0_POST_CR_VS_NR_HIGHLIGHTED": (
        ["chemokines CXCL13, CXCL9, CCL5, CCR5, CXCR3, CCR7, CXCR4", "activation LAG3, TXK",
         "NK KLRC2, KLRD1, NCR1", "neutrophils LCN2", "effector GNLY, GZMB, GZMK, GZMA",
         "innate TNFRSF1B, IL7R\n  - S100A7"], {}, set()),
    "P0_PRE_CR_VS_NR_FDR25": (["Pre-treatment: MPPED1, ITGAM, HLA-DPB1, HLA-DPA1, GZMK."],
                              {}, set()),
    "P0_POST_CR_VS_NR_FDR25_UP_IN_CR": (
        ["ICAM2, GZMA, CD48, ITK, STAT4, HLA-A, KLRK1, RUNX3, CXCR4, KLRC2, LCN2, IL7R, CCL5, "
         "CXCL9, CCR5 (up in CR)"], {}, set()),
    "P0_POST_CR_VS_NR_FDR25_UP_IN_NR": (["CD1A, USP9Y, IRAK1 (up in NR)"], {}, set()),
    "P0_SHARED_CYTOTOXIC_UP": (["(CD8A, GZMK, KLRK1)"], {}, set()),
    "P2_ERBB2_AMPLICON": (["ERBB2, GRB7, HOXB3"], {}, set()),
    "P2_MESENCHYMAL_SUBTYPE": (["Mesenchymal-subtype genes:** FN1, TNC."], {}, set()),
    "P2_BASAL_CYTOKERATINS": (["KRT5, KRT14, KRT17"], {}, set()),
    "P2_BASAL_PAM50_OTHER": (["NDC80, SLC39A6"], {}, set()),
    "P2_PYROPTOSIS": (["GSDMA, GSDMB"], {}, set()),
    "P2_IMMUNOGLOBULIN": (['IGLC3, "IGMG1" [sic; not a standard HGNC symbol, possibly IGHG1 INF]'],
                          {"IGMG1": "IGHG1"}, {"HGNC", "INF"}),
    "P2_PI3K_ERBB_COMPONENTS": (
        ["MYC, NRAS, EIF4EBP1 (higher only in HET/no pCR); ERBB4; ERBB3; PTEN; PIK3CA "
         "(mutation); YES1 (amplification)"], {}, {"HET"}),
    "P2_RECEPTOR_STATUS": (["Receptor-status genes:** ERBB2, ESR1, PGR"], {}, set()),
    "P2_CHECKPOINT_RECEPTOR_LIGAND": (["CD274 (PD-L1), CD160, CD226–PVR"], {}, {"PD-L1"}),
    "P2_POST_TREATMENT_HIGHER_CHECKPOINT": (["post-treatment higher: TNFRSF14, CD47"], {}, set()),
    "P3_IFN_I_11_MOUSE": (["So the 11 = IFIT3, IFIT1, ISG15, OAS3, GBP2, GBP2B, CXCL10, TRIM30d, "
                           "IRF7, GBP3, CCL5"], {}, set()),
    "P3_METABRIC_IFIT3_CORRELATES": (
        ["IFI44, CXCL10, STAT1, IFIT1, IFI44L, ISG15, IRF9; T-cell markers CD8A, CD8B, CD28"],
        {}, set()),
    "P3_CCLE_IFIT3_IFI44": (["CCLE genes:** IFIT3, IFI44."], {}, {"CCLE"}),
    "P3_CGAS_STING_PATHWAY": (['cGAS, STING ("Sting" mRNA), TBK1, IRF3, IFNAR1, Irf7, CXCL10, '
                               "CCL5, IRF7"],
                              {"cGAS": "CGAS", "STING": "STING1", "Irf7": "IRF7"}, set()),
}
# Protein names given their HGNC gene symbols (not a reading of STUDIES.md's): see data/README.
HGNC_NAMING = {"cGAS", "STING", "Irf7"}


def gene_tokens(fragment: str, corrections: dict, drop: set) -> list[str]:
    """Gene-shaped words of a fragment (3+ characters and all upper case, or with a digit),
    after the listed spelling changes, without the listed non-genes."""
    words = re.findall(r"[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]", fragment)
    words = [corrections.get(w, w) for w in words]
    return [w for w in words if w not in drop and re.fullmatch(r"[A-Z][A-Za-z0-9-]*", w)
            and (re.search(r"\d", w) or (len(w) >= 3 and w.upper() == w))]


def test_seed_signatures_against_studies_lists():
    text = studies_text()
    section = text[text.index("## 3. Gene signatures"):text.index("## 5. Synthesis")]
    sets = {s.name: s for s in load_gene_sets("seed_signatures")}
    assert sorted(sets) == sorted(SEED_SPECS)
    for name, (fragments, corrections, drop) in SEED_SPECS.items():
        expected = []
        for fragment in fragments:
            assert fragment in section, (name, fragment)
            expected += gene_tokens(fragment, corrections, drop)
        for printed, used in corrections.items():
            assert printed in "".join(fragments)
            # a correction is STUDIES.md's own reading, or a protein name given its gene symbol
            assert used in "".join(fragments) or printed in HGNC_NAMING, (name, printed)
            assert printed in sets[name].description, (name, printed)  # and says so
        assert list(sets[name].genes) == list(dict.fromkeys(expected)), name


def test_seed_signature_metadata():
    meta = bundled_libraries()["seed_signatures"]
    sets = load_gene_sets("seed_signatures")
    for s in sets:
        study = s.name.split("_")[0] if s.name.startswith("P") and s.name[1].isdigit() else "P0"
        assert s.source.startswith(study + " "), s.name
        assert s.version == meta["version"]
    by_name = {s.name: s for s in sets}
    ayers = by_name["AYERS_PD1_RESPONSE_16"]
    assert "18-gene signature but names only these 16" in ayers.description and len(ayers) == 16
    assert "MOUSE" in by_name["P3_IFN_I_11_MOUSE"].description
    assert len(by_name["P3_IFN_I_11_MOUSE"]) == 11


# ---------------------------------------------------------------------------------------------
# Mapping


def direct_membership(sets, keys, case_insensitive=False):
    """Reference: per set, the rows whose key is one of the set's members (a plain loop)."""
    fold = str.casefold if case_insensitive else (lambda v: v)
    out = []
    for s in sets:
        wanted = {fold(g) for g in s.genes}
        out.append(np.array([i for i, k in enumerate(keys) if k and fold(k) in wanted], int))
    return out


SETS = [GeneSet("S1", ("g1", "G2", "G3")), GeneSet("S2", ("SYMA", "symb", "NOPE")),
        GeneSet("S3", ("G1", "G9")), GeneSet("S4", ("SYMA", "SYMC", "SYMB", "SYMD"))]
IDS = np.array(["G1", "G2", "G3", "G4", "G5", "G6"], dtype=object)
SYMBOLS = np.array(["SYMA", "SYMB", "", "SYMA", "SYMC", "syma"], dtype=object)


def dense(m: Membership) -> np.ndarray:
    return m.matrix.toarray()


def test_map_by_id_with_sizes_table():
    m = map_gene_sets(SETS, IDS)
    assert m.match == "id" and isinstance(m.matrix, sp.csr_matrix)
    assert m.matrix.dtype == np.float64 and m.matrix.shape == (2, 6)
    assert list(m.names) == ["S1", "S3"]
    assert [list(r) for r in m.index_lists()] == [[1, 2], [0]]
    assert list(m.members("S3")) == [0]
    sizes = m.sizes
    assert list(sizes.columns) == ["gene_set", "size_in_library", "members_found",
                                   "size_mapped", "scored", "reason"]
    assert sizes.to_dict("list") == {
        "gene_set": ["S1", "S2", "S3", "S4"], "size_in_library": [3, 3, 2, 4],
        "members_found": [2, 0, 1, 0], "size_mapped": [2, 0, 1, 0],
        "scored": [True, False, True, False],
        "reason": ["", "fewer than min_size members found", "",
                   "fewer than min_size members found"]}


def test_map_by_symbol_maps_every_row_of_a_symbol():
    m = map_gene_sets(SETS, IDS, symbols=SYMBOLS, match="symbol")
    assert list(m.names) == ["S2", "S4"]
    assert [list(r) for r in m.index_lists()] == [[0, 3], [0, 1, 3, 4]]
    assert m.sizes.set_index("gene_set").loc["S4", ["members_found", "size_mapped"]].tolist() \
        == [3, 4]
    ci = map_gene_sets(SETS, IDS, symbols=SYMBOLS, match="symbol", case_insensitive=True)
    assert [list(r) for r in ci.index_lists()] == [[0, 1, 3, 5], [0, 1, 3, 4, 5]]
    for mm, flag in ((m, False), (ci, True)):
        expected = direct_membership(SETS, list(SYMBOLS), flag)
        for i, name in enumerate(mm.names):
            assert list(mm.members(i)) == list(expected[[s.name for s in SETS].index(name)])
    ids_ci = map_gene_sets(SETS, IDS, case_insensitive=True)
    assert [list(r) for r in ids_ci.index_lists()] == [[0, 1, 2], [0]]


def test_member_listed_twice_counts_once():
    sets = [GeneSet("A", ("cd8a", "CD8A", "CD8B"))]
    m = map_gene_sets(sets, np.array(["CD8A", "CD8B", "X"]), case_insensitive=True)
    assert list(m.members(0)) == [0, 1]
    assert m.sizes.loc[0, ["size_in_library", "members_found", "size_mapped"]].tolist() == [3, 2, 2]
    assert dense(m).tolist() == [[1.0, 1.0, 0.0]]


def test_size_filters():
    m = map_gene_sets(SETS, IDS, symbols=SYMBOLS, match="symbol", min_size=2, max_size=3)
    assert list(m.names) == ["S2"]
    assert m.sizes["reason"].tolist() == ["fewer than min_size members found", "",
                                          "fewer than min_size members found",
                                          "more than max_size members found"]
    assert m.sizes["scored"].tolist() == [False, True, False, False]


def test_auto_match_takes_the_larger_mapping():
    assert map_gene_sets(SETS, IDS, symbols=SYMBOLS, match="auto").match == "symbol"
    assert map_gene_sets(SETS[:1], IDS, symbols=SYMBOLS, match="auto").match == "id"
    assert map_gene_sets(SETS, IDS, match="auto").match == "id"


def test_nothing_scored_says_why():
    with pytest.raises(InputError) as err:
        map_gene_sets(SETS, IDS, min_size=3)
    message = str(err.value)
    for part in ("min_size 3", "max_size None", "the most found is 2 ('S1'", "`match:`",
                 "gene IDs", "G1, G2, G3", "g1, G2, G3, SYMA, symb"):
        assert part in message, part
    with pytest.raises(InputError, match="symbols look like SYMA, SYMB, SYMA"):
        map_gene_sets([GeneSet("X", ("G1",))], IDS, symbols=SYMBOLS, match="symbol")


@pytest.mark.parametrize("kwargs, message", [
    ({"match": "name"}, "match 'name' is not one of"),
    ({"match": "symbol"}, "needs the cohort's symbols"),
    ({"min_size": 0}, "min_size must be"),
    ({"min_size": 5, "max_size": 2}, "max_size 2 is below min_size 5"),
    ({"symbols": SYMBOLS[:3]}, "3 symbols for 6 genes"),
])
def test_mapping_argument_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        map_gene_sets(SETS, IDS, **kwargs)


def test_mapping_refuses_empty_library_and_duplicate_names():
    with pytest.raises(InputError, match="no sets"):
        map_gene_sets([], IDS)
    with pytest.raises(InputError, match="used more than once: S1"):
        map_gene_sets([SETS[0], SETS[0]], IDS)


@settings(max_examples=40)
@given(st.data())
def test_mapping_matches_direct_reference(data):
    alphabet = ["A", "a", "B", "C", "c", "D", "E", ""]
    n = data.draw(st.integers(1, 12))
    keys = data.draw(st.lists(st.sampled_from(alphabet), min_size=n, max_size=n))
    n_sets = data.draw(st.integers(1, 5))
    sets = [GeneSet(f"S{i}", tuple(data.draw(st.lists(st.sampled_from(alphabet[:-1]),
                                                      max_size=6))))
            for i in range(n_sets)]
    ci = data.draw(st.booleans())
    expected = direct_membership(sets, keys, ci)
    if not any(len(e) for e in expected):
        with pytest.raises(InputError):
            map_gene_sets(sets, [f"id{i}" for i in range(n)], symbols=keys, match="symbol",
                          case_insensitive=ci)
        return
    m = map_gene_sets(sets, [f"id{i}" for i in range(n)], symbols=keys, match="symbol",
                      case_insensitive=ci)
    assert m.sizes["size_mapped"].tolist() == [len(e) for e in expected]
    assert list(m.names) == [s.name for s, e in zip(sets, expected) if len(e)]
    reference = np.zeros((len(m.names), n))
    for row, e in enumerate(e for e in expected if len(e)):
        reference[row, e] = 1.0
    np.testing.assert_array_equal(dense(m), reference)


@pytest.fixture(scope="module")
def all_genes() -> pd.DataFrame:
    return pd.read_csv(all_files()["genes"], sep="\t", dtype=str, keep_default_na=False)


def test_hallmark_on_all_by_symbol(all_genes):
    sets = load_gene_sets("hallmark")
    m = map_gene_sets(sets, all_genes["probe_id"], symbols=all_genes["symbol"], match="symbol")
    assert len(m) == 50
    ids = all_genes["probe_id"].to_numpy()
    for i, s in enumerate(sets):  # reference: the probes whose own symbol is a member
        expected = np.flatnonzero(all_genes["symbol"].isin(s.genes).to_numpy())
        np.testing.assert_array_equal(m.members(i), expected)
        assert m.sizes.loc[i, "size_mapped"] == expected.size
        assert m.sizes.loc[i, "members_found"] == len(set(all_genes["symbol"]) & set(s.genes))
    assert len(ids) == m.matrix.shape[1]


@pytest.mark.parametrize("gmt, sizes", [
    ("hallmark_v7.0_hgu95_probes.gmt", "ssgsea_hallmark_sizes.tsv"),
    ("random_genesets_seed1.gmt", "gsva_sizes.tsv")])
def test_sizes_by_id_agree_with_r_gsva(all_genes, gmt, sizes):
    """The sizes table R's gsva.R wrote for probe-ID GMTs on ALL (GSVA 1.46 mapping)."""
    folder = ORACLE_HALLMARK_PROBES.parent
    if not (folder / gmt).exists():
        pytest.skip(f"{folder / gmt} not present")
    r = pd.read_csv(folder / sizes, sep="\t")
    m = map_gene_sets(read_gmt(folder / gmt), all_genes["probe_id"])
    ours = m.sizes.set_index("gene_set").loc[r["gene_set"]]
    assert ours["size_in_library"].tolist() == r["size_in_gmt"].tolist()
    assert ours["size_mapped"].tolist() == r["size_mapped"].tolist()
    assert ours["scored"].tolist() == r["scored"].astype(bool).tolist()


def test_hallmark_probes_agree_with_r_where_the_annotations_agree(all_genes):
    """The R file translated Hallmark through the MSigDB .chip file, whose symbols differ from
    the ALL annotation (newer names, several symbols per probe). Where a probe has exactly one
    .chip symbol and it equals ALL's symbol, membership must agree exactly. Measured on all 50
    sets: 7,172 memberships here, 8,791 in the R file, 6,696 shared; on the 6,688 probes whose
    annotations agree, no difference."""
    if not (ORACLE_HALLMARK_PROBES.exists() and CHIP.exists()):
        pytest.skip("shared oracle output or .chip file not present")
    r_sets = {s.name: set(s.genes) for s in read_gmt(ORACLE_HALLMARK_PROBES)}
    chip = pd.read_csv(CHIP, sep="\t", dtype=str, keep_default_na=False)
    n_symbols = chip.groupby("Probe Set ID")["Gene Symbol"].nunique()
    single = chip[chip["Probe Set ID"].isin(n_symbols.index[n_symbols == 1])] \
        .drop_duplicates("Probe Set ID").set_index("Probe Set ID")["Gene Symbol"]
    own = all_genes.set_index("probe_id")["symbol"]
    common = single.index.intersection(own.index)
    agreed = set(common[(single[common] == own[common]).to_numpy()])
    assert len(agreed) > 6000
    m = map_gene_sets(load_gene_sets("hallmark"), all_genes["probe_id"],
                      symbols=all_genes["symbol"], match="symbol")
    ids = all_genes["probe_id"].to_numpy()
    assert set(m.names) == set(r_sets)
    for i, name in enumerate(m.names):
        assert set(ids[m.members(i)]) & agreed == r_sets[name] & agreed, name


# ---------------------------------------------------------------------------------------------
# Probe collapsing


def toy_cohort(chunks: int | None = None) -> xr.Dataset:
    """Probes with ties, NaN, an all-NaN probe, a symbol whose probes are all NaN, a probe with
    one value, probes without a symbol, and a symbol (G) whose choice depends on ddof."""
    rng = np.random.default_rng(3)
    x = rng.normal(8, 1, (16, 6)).astype(np.float32)
    symbols = ["B", "A", "", "B", "C", "A", "D", "C", "E", "NA", "D", "F", "F", "E", "G", "G"]
    x[3] = x[0]                   # B: identical probes -> tie, the first wins
    x[5] = x[1]; x[5, 2] = np.nan  # A: a NaN changes mean and variance of the second
    x[4, :] = np.nan              # C: an all-NaN probe is never kept
    x[6, :] = np.nan; x[10, :] = np.nan  # D: every probe all-NaN
    x[8, 1:] = np.nan             # E: a probe with one value (undefined variance)
    x[11, [0, 3]] = np.nan
    x[14] = [8, 8, 8, 10, 10, 10]  # variance 1.2 (ddof 1), 1.0 (ddof 0)
    x[15] = [np.nan, 8 - 1.35 ** 0.5, np.nan, 8, np.nan, 8 + 1.35 ** 0.5]  # 1.35, 0.9
    ds = xr.Dataset(
        {"expression": (("gene", "sample"), x, {"scale": "log2"}),
         "symbol": ("gene", np.array(symbols, dtype=object)),
         "chromosome": ("gene", np.array([f"c{i}" for i in range(16)], dtype=object)),
         "age": ("sample", np.arange(6, dtype=np.float64)),
         "other": (("gene", "sample"), x)},
        coords={"gene": np.array([f"p{i:02d}" for i in range(16)], dtype=object),
                "sample": np.array([f"s{i}" for i in range(6)], dtype=object)},
        attrs={"engine_version": "x", "ingested_at": "t", "sources": [], "ingest_options": {}})
    if chunks:
        ds = ds.chunk({"gene": chunks})
    return ds


def pandas_collapse(ds: xr.Dataset, method: str, symbol_column: str = "symbol"):
    """Reference: pandas statistics and groupby in first-appearance order, a plain loop for the
    probe choice (largest statistic; undefined ones after defined; all-NaN never; first wins)."""
    frame = pd.DataFrame(np.asarray(ds["expression"].values, dtype=np.float64),
                         index=np.asarray(ds["gene"].values).astype(str))
    symbols = pd.Series(np.asarray(ds[symbol_column].values).astype(str), index=frame.index)
    keep = ~symbols.isin(["", "nan", "NA"])
    frame, symbols = frame[keep], symbols[keep]
    if method == "mean":
        return frame.groupby(symbols.to_numpy(), sort=False).mean(), None
    stat = (frame.mean(axis=1) if method == "max_mean" else frame.var(axis=1, ddof=1)).to_dict()
    n = frame.notna().sum(axis=1).to_dict()
    rows, kept, genes = [], [], []
    for symbol, probes in frame.groupby(symbols.to_numpy(), sort=False).groups.items():
        genes.append(symbol)
        defined = [p for p in probes if not np.isnan(stat[p])]
        with_values = [p for p in probes if n[p] > 0]
        if defined:
            best = max(stat[p] for p in defined)
            choice = next(p for p in defined if stat[p] == best)
        else:
            choice = with_values[0] if with_values else None
        kept.append(choice or "")
        rows.append(frame.loc[choice] if choice else pd.Series(np.nan, index=frame.columns))
    return pd.DataFrame(rows, index=genes), kept


@pytest.mark.parametrize("chunks", [None, 1, 3, 5, 100])
@pytest.mark.parametrize("method", ["max_mean", "max_variance", "mean"])
def test_collapse_matches_pandas(method, chunks):
    ds = toy_cohort(chunks)
    out = collapse_probes(ds, method=method)
    expected, kept = pandas_collapse(toy_cohort(), method)
    assert list(out["gene"].values) == list(expected.index) == ["B", "A", "C", "D", "E", "F", "G"]
    assert isinstance(out["expression"].data, da.Array)  # lazy whatever the input
    values = out["expression"].values
    assert values.dtype == np.float32
    if method == "mean":  # the mean is computed in float64 and stored as float32
        np.testing.assert_allclose(values, expected.to_numpy(), rtol=1e-6, equal_nan=True)
        assert "probe" not in out
    else:                 # a kept probe's values are copied exactly
        np.testing.assert_array_equal(values, expected.to_numpy().astype(np.float32))
        assert list(out["probe"].values) == kept
    assert out["n_probes"].values.tolist() == [2, 2, 2, 2, 2, 2, 2]
    assert list(out["symbol"].values) == list(out["gene"].values)
    assert "chromosome" not in out  # differs between a symbol's probes: dropped (designs.collapse)
    assert "other" not in out and out["age"].values.tolist() == list(range(6))
    assert out.attrs["collapsed"]["probes_without_symbol"] == 2
    check_cohort(out)


def test_collapse_ties_and_nan_rules():
    out = collapse_probes(toy_cohort(), method="max_mean")
    kept = dict(zip(out["gene"].values, out["probe"].values))
    assert kept["B"] == "p00"                     # tie: first probe in store order
    assert kept["C"] == "p07"                     # the all-NaN p04 is never kept
    assert kept["D"] == "" and np.isnan(out["expression"].sel(gene="D").values).all()
    var = collapse_probes(toy_cohort(), method="max_variance")
    kept_var = dict(zip(var["gene"].values, var["probe"].values))
    assert kept_var["B"] == "p00"
    assert kept_var["E"] == "p13"                 # p08 has one value: undefined variance
    assert kept_var["G"] == "p15" and kept["G"] == "p14"  # sample variance (ddof 1)
    single = toy_cohort().isel(gene=[8, 9])        # E's one-value probe alone is still kept
    assert list(collapse_probes(single, method="max_variance")["probe"].values) == ["p08"]


def test_collapse_dask_equals_numpy_bit_for_bit():
    for method in ("max_mean", "max_variance", "mean"):
        eager = collapse_probes(toy_cohort(), method=method)
        for chunks in (1, 2, 4, 7):
            lazy = collapse_probes(toy_cohort(chunks), method=method).compute()
            xr.testing.assert_identical(lazy, eager)


def test_collapse_all_cohort_matches_pandas_and_is_lazy(all_store, no_compute):
    ds = engine.open_cohort(all_store)
    with no_compute():
        outs = {m: collapse_probes(ds, method=m) for m in ("max_mean", "max_variance", "mean")}
    for method, out in outs.items():
        assert isinstance(out["expression"].data, da.Array)
        assert out["expression"].data.chunks[1] == (ds.sizes["sample"],)
        if method != "mean":
            assert isinstance(out["probe"].data, da.Array)
        computed = out.compute()
        expected, kept = pandas_collapse(ds, method)
        assert computed.sizes["gene"] == 8732
        assert list(computed["gene"].values) == list(expected.index)
        if method == "mean":
            np.testing.assert_allclose(computed["expression"].values, expected.to_numpy(),
                                       rtol=1e-6)  # float64 mean stored as float32
        else:
            np.testing.assert_array_equal(computed["expression"].values,
                                          expected.to_numpy().astype(np.float32))
            assert list(computed["probe"].values) == kept
        check_cohort(computed)


def test_collapse_then_map_by_symbol(all_store):
    ds = engine.open_cohort(all_store)
    genes = collapse_probes(ds, method="max_mean")
    m = map_gene_sets(load_gene_sets("icr"), genes["gene"].values)
    icr = set(load_gene_sets("icr")[0].genes)
    assert m.sizes.loc[0, "size_mapped"] == len(icr & set(ds["symbol"].values))


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "median"}, "collapse method 'median' is not one of"),
    ({"symbol_column": "chrom"}, r"symbol_column 'chrom' is not a gene annotation .*chromosome"),
    ({"variable": "counts"}, "variable 'counts' is not a .*expression"),
])
def test_collapse_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        collapse_probes(toy_cohort(), **kwargs)
    empty = toy_cohort().assign(symbol=("gene", np.array([""] * 16, dtype=object)))
    with pytest.raises(InputError, match="is empty for every probe"):
        collapse_probes(empty)
