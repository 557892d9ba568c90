"""The README's main command: `cohort demo` on the bundled ALL cohort."""

import numpy as np
import pandas as pd
import pytest

from engine.cli import main


@pytest.mark.slow
def test_demo_runs_every_test_and_finds_abl1(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--workers", "2"]) == 0
    out = capsys.readouterr()
    assert "Dask dashboard: http://127.0.0.1:" in out.err
    assert f"report:  {tmp_path / 'results' / 'report.html'}" in out.out
    names = {"welch", "student", "mann_whitney", "matched_paired_t", "matched_wilcoxon"}
    for name in names:
        table = pd.read_csv(tmp_path / "results" / f"bcr_abl_vs_neg_{name}.tsv", sep="\t",
                            keep_default_na=False, na_values=["NA"])
        assert len(table) == 12625
    welch = pd.read_csv(tmp_path / "results" / "bcr_abl_vs_neg_welch.tsv", sep="\t",
                        keep_default_na=False, na_values=["NA"])
    # ABL1 probes (the BCR-ABL1 fusion partner) rank among the top genes, as in the literature
    assert "ABL1" in set(welch["symbol"].head(10))
    assert (welch["n_case"] == 37).all() and (welch["n_control"] == 74).all()
    # resampling: the BCa interval holds the estimate; 10,000 permutations, floor 1/10001
    assert (welch["ci_low"] <= welch["effect"]).all()
    assert (welch["effect"] <= welch["ci_high"]).all()
    assert (welch["n_boot"] == 2000).all() and (welch["n_permutations"] == 10000).all()
    assert (welch["p_perm"] >= 1 / 10001).all() and (welch["p_maxT"] >= welch["p_perm"]).all()
    assert welch["p_perm"].iloc[0] == 1 / 10001
    paired = pd.read_csv(tmp_path / "results" / "bcr_abl_vs_neg_matched_paired_t.tsv", sep="\t")
    assert (paired["n_case"] == 31).all()  # 31 age- and sex-matched pairs
    results = tmp_path / "results"
    for name in ("hallmark_ssgsea", "hallmark_gsva"):
        scores = pd.read_csv(results / f"{name}.tsv", sep="\t")
        assert scores.shape == (50, 129) and scores.columns[0] == "gene_set"
    icr = pd.read_csv(results / "icr_score.tsv", sep="\t").set_index("gene_set")
    icr_sizes = pd.read_csv(results / "icr_score_sizes.tsv", sep="\t").set_index("gene_set")
    # ALL's 2004 annotation names CXCL9/CXCL10/CCL5 by their old symbols (MIG, SCYA5, ...)
    assert icr_sizes.loc["ICR_CXCR3_CCR5_CHEMOKINES", "scored"] == 0
    assert list(icr.index) == list(icr_sizes.index[icr_sizes["scored"] == 1])
    assert icr.shape[1] == 128
    scores_welch = pd.read_csv(results / "hallmark_ssgsea_welch.tsv", sep="\t")
    assert np.allclose(scores_welch["fold_change"], np.exp(scores_welch["effect"]), rtol=1e-12)
    assert (scores_welch["fc_ci_low"] <= scores_welch["fold_change"]).all()
    classes = pd.read_csv(results / "icr_classes.tsv", sep="\t", dtype={"sample": str})
    assert len(classes) == 128 and set(classes["label"]) == {"ICR High", "ICR Medium", "ICR Low"}
    by_label = classes.groupby("label")["signature_score"].mean()
    assert by_label["ICR High"] > by_label["ICR Medium"] > by_label["ICR Low"]
    for name in ("hallmark_prerank", "hallmark_phenotype", "hallmark_ora"):
        table = pd.read_csv(results / f"{name}.tsv", sep="\t", keep_default_na=False,
                            na_values=["NA"])
        assert {"gene_set", "size", "p_value", "p_adj", "leading_edge"} <= set(table.columns)
        assert table["p_value"].between(0, 1).all()
        sizes = pd.read_csv(results / f"{name}_sizes.tsv", sep="\t")
        assert len(sizes) == 50
