"""Per-gene two-group tests against R (stats::t.test, wilcox.test, p.adjust).

The fixtures in tests/data/r_reference were made by R 4.2.2 on exactly the float32 values the
engine stores (see that folder's README and make_fixtures.sh). R's NA (test refused) and NaN
(0/0) both read as NaN here; the engine must give NaN for the same genes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.store import ingest, open_cohort
from engine.stats.per_gene import two_group_test

REF = __import__("pathlib").Path(__file__).parent / "data" / "r_reference"
RTOL = 1e-9  # tighter than the 1e-6 the project asks for: R and the engine agree to ~1e-14


def read_ref(name: str) -> pd.DataFrame:
    table = pd.read_csv(REF / name, sep="\t", dtype={0: str}, keep_default_na=False,
                        na_values=["NA", "NaN"])
    return table.set_index(table.columns[0])


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
    return ingest(REF / "paired_expression.tsv", REF / "paired_samples.tsv",
                  tmp_path_factory.mktemp("syn") / "paired.zarr", chunk_genes=64)


ALL = {"group": "mol.biol", "case": "BCR/ABL", "control": "NEG"}
ARM = {"group": "arm", "case": "A", "control": "B"}
PAIRED = {"group": "timepoint", "case": "post", "control": "pre", "pair_by": "patient"}

# engine field -> R column, per oracle output
WELCH = {"statistic": "welch_t", "df": "welch_df", "p_value": "welch_p", "p_adj": "welch_p_bh"}
STUDENT = {"statistic": "student_t", "df": "student_df", "p_value": "student_p",
           "p_adj": "student_p_bh"}
RANK_SUM = {"statistic": "W", "p_value": "p", "p_adj": "p_bh"}
PAIRED_T = {"statistic": "paired_t", "df": "paired_df", "p_value": "paired_p",
            "p_adj": "paired_p_bh"}
SIGNED_RANK = {"statistic": "V", "p_value": "p", "p_adj": "p_bh"}

# (cohort, test, design, fixture, columns); effect is checked separately.
CASES = [
    ("all", "welch", ALL, "all_f32_ttest.tsv.gz", WELCH),
    ("all", "student", ALL, "all_f32_ttest.tsv.gz", STUDENT),
    ("all", "mann_whitney", ALL, "all_f32_wilcoxon.tsv.gz", RANK_SUM),
    ("synthetic", "welch", ARM, "synthetic_arm_ttest.tsv", WELCH),
    ("synthetic", "student", ARM, "synthetic_arm_ttest.tsv", STUDENT),
    ("synthetic", "mann_whitney", ARM, "synthetic_arm_wilcoxon.tsv", RANK_SUM),
    ("synthetic", "paired_t", PAIRED, "paired_ttest.tsv", PAIRED_T),
    ("synthetic", "wilcoxon_signed_rank", PAIRED, "paired_wilcoxon.tsv", SIGNED_RANK),
]


def _engine(store, test, design) -> pd.DataFrame:
    result = two_group_test(open_cohort(store), test=test, **design).compute()
    return pd.DataFrame({f: result[f].values
                         for f in ("effect", "statistic", "df", "p_value", "p_adj",
                                   "n_case", "n_control")}, index=result["gene"].values)


@pytest.mark.parametrize("cohort, test, design, fixture, columns", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_matches_r(all_store, synthetic_store, cohort, test, design, fixture, columns):
    store = all_store if cohort == "all" else synthetic_store
    ours = _engine(store, test, design)
    ref = read_ref(fixture).loc[ours.index]
    # R's p is NaN exactly where ours is (refused tests, all-tied ranks, constant genes)
    np.testing.assert_array_equal(np.isnan(ours["p_value"]), ref[columns["p_value"]].isna())
    tested = ref[columns["p_value"]].notna()
    assert tested.sum() > 0.9 * len(ref)
    for field, column in columns.items():
        np.testing.assert_allclose(ours.loc[tested, field], ref.loc[tested, column], rtol=RTOL,
                                   atol=0, err_msg=f"{test} {field} vs R {column}")


@pytest.mark.parametrize("cohort, design, fixture, test", [
    ("all", ALL, "all_f32_ttest.tsv.gz", "welch"),
    ("synthetic", ARM, "synthetic_arm_ttest.tsv", "welch"),
    ("synthetic", PAIRED, "paired_ttest.tsv", "paired_t"),
])
def test_effect_matches_r_means(all_store, synthetic_store, cohort, design, fixture, test):
    """effect = mean(case) - mean(control), or the mean paired difference. R's means are
    taken without na.rm, so only genes without missing values are comparable."""
    ours = _engine(all_store if cohort == "all" else synthetic_store, test, design)
    ref = read_ref(fixture).loc[ours.index]
    r_effect = ref["mean_diff"] if "mean_diff" in ref else ref["mean_test"] - ref["mean_ref"]
    ok = r_effect.notna()
    assert ok.sum() > 100
    # 1e-9 relative would fail where means cancel (effect ~1e-4 of the means); the absolute
    # bound is 100 ulps of the means (~7), far below any reported digit.
    np.testing.assert_allclose(ours.loc[ok, "effect"], r_effect[ok], rtol=1e-9, atol=1e-13)


def test_bh_matches_r_padjust(all_store):
    ours = _engine(all_store, "welch", ALL)
    ref = read_ref("all_f32_padjust_welch_p.tsv.gz").loc[ours.index]
    np.testing.assert_allclose(ours["p_adj"], ref["welch_p_BH"], rtol=RTOL)


def test_group_sizes(all_store, synthetic_store):
    ours = _engine(all_store, "welch", ALL)
    assert (ours["n_case"] == 37).all() and (ours["n_control"] == 74).all()
    paired = _engine(synthetic_store, "paired_t", PAIRED)
    assert paired.loc["gene_001", "n_case"] == paired.loc["gene_001", "n_control"]
    assert paired.loc["gene_299", "n_case"] == 0  # every pre value missing: no complete pair
    assert paired.loc["gene_291", "n_case"] == 1
