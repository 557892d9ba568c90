"""cohort simulate: synthetic cohorts whose planted structure the written data must show.

Oracles are independent of the simulator: scipy's t-tests and KS test on the written store,
correlations computed with numpy, the negative-binomial moment relation, scipy.stats.gamma for
the copula's quantiles, and noncentral-t power for how many planted genes a test must find.
"""

from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pytest
from scipy import special, stats

import engine
from engine.errors import InputError
from engine.genesets.library import read_gmt
from engine.store import content_digest
from engine.store import simulate as simulate_module
from engine.store.simulate import gamma_multiplier, simulate_cohort, simulation_summary
from engine.store.simulate_spec import (SimulationSpec, parse_effect_flag, parse_group_flag,
                                        parse_spec, read_spec_file, spec_from_flags)


def _spec(**fields) -> SimulationSpec:
    fields.setdefault("genes", 300)
    fields.setdefault("samples", 24)
    return parse_spec(fields)


def _values(path, name="expression") -> np.ndarray:
    return engine.open_cohort(path)[name].values


# -- the store ---------------------------------------------------------------------------------

def test_store_passes_the_contract_and_records_the_simulation(tmp_path):
    spec = spec_from_flags(genes=400, samples=30, seed=5, groups=["arm=A:10,B:20"],
                           effects=["10%:1.0"])
    out = simulate_cohort(spec, tmp_path / "sim.zarr", chunk_genes=64)
    ds = engine.open_cohort(out)  # runs check_cohort
    assert ds.sizes == {"gene": 400, "sample": 30}
    assert ds["expression"].dtype == np.float32 and ds["expression"].attrs["scale"] == "log2"
    assert ds["expression"].chunks[0] == (64,) * 6 + (16,)
    assert "counts" not in ds
    assert list(ds["arm"].values).count("A") == 10 and list(ds["arm"].values).count("B") == 20
    assert np.count_nonzero(ds["planted_log2fc"].values) == 40
    assert ds.attrs["content_sha256"] == content_digest(out)
    record = ds.attrs["simulation"]
    assert parse_spec(record["spec"]) == spec and record["seed"] == 5
    assert ds.attrs["ingest_options"] == {"format": "simulated", "scale": "log2", "chunk_genes": 64}
    gmt = tmp_path / "sim.gmt"
    assert record["gene_sets"]["path"] == str(gmt)
    assert record["gene_sets"]["sha256"] == hashlib.sha256(gmt.read_bytes()).hexdigest()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path):
    spec = _spec(groups=[{"name": "g", "levels": {"a": 12, "b": 12}}],
                 effects=[{"fraction": 0.1, "log2fc": 1}], seed=11)
    one = simulate_cohort(spec, tmp_path / "one.zarr", chunk_genes=50)
    two = simulate_cohort(spec, tmp_path / "x" / "two.zarr", chunk_genes=50)
    other = simulate_cohort(spec.model_copy(update={"seed": 12}), tmp_path / "other.zarr",
                            chunk_genes=50)
    assert content_digest(one) == content_digest(two) != content_digest(other)
    assert (tmp_path / "one.gmt").read_bytes() == (tmp_path / "x" / "two.gmt").read_bytes()
    assert (tmp_path / "one.gmt").read_bytes() != (tmp_path / "other.gmt").read_bytes()
    assert not np.array_equal(_values(one), _values(other))


@pytest.mark.parametrize("scale", ["log2", "counts"])
def test_values_do_not_depend_on_the_chunking(tmp_path, scale):
    """Blocks of 13 genes cut by chunks of 7, 100 and the default (all genes)."""
    spec = _spec(genes=250, scale=scale, block_size=13, patients={"count": 12},
                 groups=[{"name": "arm", "levels": {"a": 6, "b": 6}}],
                 effects=[{"genes": 30, "log2fc": 1}])
    stores = [simulate_cohort(spec, tmp_path / f"c{c}.zarr", chunk_genes=c) for c in (7, 100, None)]
    names = ["expression"] + (["counts"] if scale == "counts" else [])
    for name in names:
        first = _values(stores[0], name)
        for other in stores[1:]:
            np.testing.assert_array_equal(first, _values(other, name))
    assert engine.open_cohort(stores[0])["expression"].chunks[0][0] == 7


# -- planted effects and calibration -----------------------------------------------------------

def _expected_power(fc, sd, n_per_group, alpha):
    """Power of a two-sided two-sample t-test with equal groups (the Welch test's power at equal
    sizes and variances): the noncentral t with df 2n - 2."""
    df = 2 * n_per_group - 2
    nc = fc / (sd * np.sqrt(2 / n_per_group))
    crit = stats.t.ppf(1 - alpha / 2, df)
    return stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc)  # (cdf(-crit) can be NaN)


def test_planted_genes_are_found_and_null_genes_are_calibrated(tmp_path):
    spec = spec_from_flags(genes=3000, samples=40, seed=21, block_correlation=0.0,
                           groups=["response=NR:20,CR:20"], effects=["5%:1.0"])
    ds = engine.open_cohort(simulate_cohort(spec, tmp_path / "s.zarr"))
    x = ds["expression"].values.astype(np.float64)
    case = ds["response"].values == "CR"
    t, p = stats.ttest_ind(x[:, case], x[:, ~case], axis=1, equal_var=False)
    fc = ds["planted_log2fc"].values
    planted = fc != 0
    assert planted.sum() == 150 and set(np.abs(fc[planted])) == {1.0}
    assert 0 < (fc > 0).sum() < 150  # random signs
    # how many planted genes reach p < 0.001: the expected count from each gene's true sd
    # (recorded), within 4 binomial standard deviations (genes are independent with rho = 0)
    power = _expected_power(1.0, ds["sd_log2"].values[planted], 20, 1e-3)
    found = (p[planted] < 1e-3).sum()
    assert abs(found - power.sum()) < 4 * np.sqrt((power * (1 - power)).sum()) + 1
    assert np.all(np.sign(t[planted][p[planted] < 1e-3]) == np.sign(fc[planted][p[planted] < 1e-3]))
    # the 2,850 null genes: uniform p-values
    assert stats.kstest(p[~planted], "uniform").pvalue > 0.01


def test_null_genes_are_calibrated_within_correlated_blocks(tmp_path):
    """With rho = 0.5, genes of a block are dependent: one null gene per block is tested."""
    spec = _spec(genes=3000, samples=30, seed=4, block_size=5, block_correlation=0.5,
                 groups=[{"name": "g", "levels": {"a": 15, "b": 15}}],
                 effects=[{"fraction": 0.05, "log2fc": 2}])
    ds = engine.open_cohort(simulate_cohort(spec, tmp_path / "s.zarr"))
    x = ds["expression"].values.astype(np.float64)
    null = ds["planted_log2fc"].values == 0
    block = ds["block"].values
    first_null = np.flatnonzero(null)[np.unique(block[null], return_index=True)[1]]
    assert len(first_null) > 550
    case = ds["g"].values == "b"
    _, p = stats.ttest_ind(x[first_null][:, case], x[first_null][:, ~case], axis=1, equal_var=False)
    assert stats.kstest(p, "uniform").pvalue > 0.01


def test_correlation_within_blocks_and_not_between(tmp_path):
    rho, n = 0.3, 4000
    spec = _spec(genes=200, samples=n, seed=8, block_size=50, block_correlation=rho)
    ds = engine.open_cohort(simulate_cohort(spec, tmp_path / "s.zarr"))
    x = ds["expression"].values.astype(np.float64)
    r = np.corrcoef(x)
    block = ds["block"].values
    same = (block[:, None] == block[None, :]) & ~np.eye(len(block), dtype=bool)
    between = block[:, None] != block[None, :]
    # averages of correlations, each with standard error about (1 - r^2) / sqrt(n): 4 of them
    assert abs(r[same].mean() - rho) < 4 * (1 - rho**2) / np.sqrt(n)
    assert abs(r[between].mean()) < 4 / np.sqrt(n)
    # per-gene parameters: the sample sd and mean of each gene match the recorded ones
    sd = ds["sd_log2"].values
    assert np.median(x.std(axis=1, ddof=1) / sd) == pytest.approx(1, abs=4 / np.sqrt(2 * n))
    assert np.all(np.abs(x.mean(axis=1) - ds["baseline_log2"].values) < 5 * sd / np.sqrt(n) + 0.1)


# -- counts ------------------------------------------------------------------------------------

def test_gamma_multiplier_is_the_gamma_quantile():
    z = np.array([[-9.0, -3.0, -0.5, 0.0, 0.7, 3.0, 9.0]] * 3)
    phi = np.array([[0.05], [0.5], [2.0]])
    expected = np.where(z <= 0, stats.gamma.ppf(special.ndtr(z), a=1 / phi, scale=phi),
                        stats.gamma.isf(special.ndtr(-z), a=1 / phi, scale=phi))
    np.testing.assert_allclose(gamma_multiplier(z.astype(np.float32), phi), expected, rtol=1e-6)


def test_counts_are_negative_binomial_with_the_set_dispersion(tmp_path):
    phi, n = 0.2, 400
    spec = _spec(genes=500, samples=n, seed=2, scale="counts", dispersion=phi,
                 dispersion_spread=0.0, block_size=50, library_size=2e6)
    ds = engine.open_cohort(simulate_cohort(spec, tmp_path / "s.zarr", chunk_genes=128))
    y = ds["counts"].values
    assert y.dtype == np.int32 and ds["expression"].attrs["scale"] == "counts"
    np.testing.assert_array_equal(ds["expression"].values, y.astype(np.float32))
    assert np.all(y >= 0)
    lib = ds["library_size"].values
    assert np.median(lib) == pytest.approx(2e6, rel=0.1)
    mu = np.exp2(ds["baseline_log2"].values)[:, None] * lib[None, :] / 2e6
    y = y.astype(np.float64)
    # the mean is the model's mean: relative error of a gene's total ~ sqrt(phi / n)
    assert np.all(np.abs(y.sum(1) / mu.sum(1) - 1) < 5 * np.sqrt(phi / n + 1 / mu.sum(1)))
    expressed = mu.mean(1) > 20
    assert np.all(y[expressed].var(1) > y[expressed].mean(1))  # overdispersed
    # method-of-moments dispersion with the known means: E[(y - mu)^2 - y] = phi mu^2
    estimate = ((y - mu) ** 2 - y).sum(1) / (mu**2).sum(1)
    per_block = np.array([estimate[i:i + 50].mean() for i in range(0, 500, 50)])
    # blocks are the independent units (genes within a block are correlated): 4 standard errors
    assert abs(per_block.mean() - phi) < 4 * per_block.std(ddof=1) / np.sqrt(len(per_block))
    assert abs(np.median(estimate) / phi - 1) < 0.1


def test_counts_dispersion_varies_by_gene_as_recorded(tmp_path):
    spec = _spec(genes=400, samples=300, seed=9, scale="counts", dispersion_spread=0.8,
                 library_size=5e6)
    ds = engine.open_cohort(simulate_cohort(spec, tmp_path / "s.zarr"))
    y = ds["counts"].values.astype(np.float64)
    mu = np.exp2(ds["baseline_log2"].values)[:, None] * ds["library_size"].values / 5e6
    estimate = ((y - mu) ** 2 - y).sum(1) / (mu**2).sum(1)
    assert stats.spearmanr(estimate, ds["dispersion"].values).statistic > 0.8


# -- paired designs ----------------------------------------------------------------------------

def test_patients_paired_samples_and_a_time_effect(tmp_path):
    c = 0.6
    spec = spec_from_flags(genes=400, patients=40, patient_correlation=c, seed=3,
                           block_correlation=0.0, groups=["response=CR:10,PR:5,NR:25"],
                           effects=["treated=10%:1.0@timepoint:post/pre"])
    ds = engine.open_cohort(simulate_cohort(spec, tmp_path / "s.zarr"))
    assert list(ds["sample"].values[:4]) == ["P01_pre", "P01_post", "P02_pre", "P02_post"]
    patient, time = ds["patient"].values, ds["timepoint"].values
    response = ds["response"].values
    assert all(len(set(response[patient == p])) == 1 for p in set(patient))
    assert [list(response[time == "pre"]).count(k) for k in ("CR", "PR", "NR")] == [10, 5, 25]
    x = ds["expression"].values.astype(np.float64)
    pre, post = x[:, time == "pre"], x[:, time == "post"]  # both in patient order
    fc = ds["planted_log2fc_treated"].values
    null = fc == 0

    def corr(a, b):
        a = a - a.mean(1, keepdims=True)
        b = b - b.mean(1, keepdims=True)
        return (a * b).sum(1) / np.sqrt((a**2).sum(1) * (b**2).sum(1))

    within = corr(pre[null], post[null])
    between = corr(pre[null], np.roll(post[null], 1, axis=1))  # another patient's sample
    # means over ~360 independent genes of correlations over 40 patients (SE ~ 1/sqrt(40 * 360))
    assert abs(within.mean() - c) < 0.05
    assert abs(between.mean()) < 0.05
    t, p = stats.ttest_rel(post, pre, axis=1)
    planted = ~null
    assert np.median(p[planted]) < 1e-4 and np.all(np.sign(t[planted]) == np.sign(fc[planted]))
    assert stats.kstest(p[null], "uniform").pvalue > 0.01


def test_repeated_time_points_are_biopsies_of_one_visit(tmp_path):
    spec = spec_from_flags(genes=20, patients=3, timepoints="pre,pre,post")
    ds = engine.open_cohort(simulate_cohort(spec, tmp_path / "s.zarr"))
    assert list(ds["sample"].values[:3]) == ["P1_pre_1", "P1_pre_2", "P1_post"]
    assert list(ds["timepoint"].values[:3]) == ["pre", "pre", "post"]


# -- gene sets ---------------------------------------------------------------------------------

def test_planted_and_null_gene_sets(tmp_path):
    spec = spec_from_flags(genes=1000, samples=20, groups=["g=a:10,b:10"], effects=["20%:1"],
                           planted_sets=6, null_sets=4, set_size=30, seed=1)
    out = simulate_cohort(spec, tmp_path / "s.zarr", gene_sets=tmp_path / "sets" / "lib.gmt")
    assert not (tmp_path / "s.gmt").exists()
    sets = read_gmt(tmp_path / "sets" / "lib.gmt")
    ds = engine.open_cohort(out)
    planted = dict(zip(ds["gene"].values, ds["planted_log2fc"].values != 0))
    assert [s.description.split(":")[0] for s in sets] == ["planted"] * 6 + ["null"] * 4
    for s in sets:
        assert len(s.genes) == 30 == len(set(s.genes))
        hits = sum(planted[g] for g in s.genes)
        if s.description.startswith("planted"):
            assert hits == round(0.8 * 30)
    # null sets hold planted genes at the cohort's rate (20% of 4 x 30 members): neither tail
    # of the binomial is extreme
    null_hits = sum(planted[g] for s in sets[6:] for g in s.genes)
    assert min(stats.binom.cdf(null_hits, 120, 0.2), stats.binom.sf(null_hits - 1, 120, 0.2)) > 1e-4


def test_no_gene_sets_no_file(tmp_path):
    spec = spec_from_flags(genes=50, samples=6, null_sets=0)
    out = simulate_cohort(spec, tmp_path / "s.zarr")
    assert not (tmp_path / "s.gmt").exists()
    assert "gene_sets" not in engine.open_cohort(out).attrs["simulation"]


# -- flags and refusals ------------------------------------------------------------------------

def test_flags_parse_into_the_spec():
    assert parse_group_flag("response=CR:2, PR:1,NR:5") == {
        "name": "response", "levels": {"CR": 2, "PR": 1, "NR": 5}}
    assert parse_effect_flag("5%:1.0") == {"fraction": 0.05, "log2fc": 1.0, "sign": "random"}
    assert parse_effect_flag("200:-0.5") == {"genes": 200, "log2fc": 0.5, "sign": "down"}
    assert parse_effect_flag("tr=3%:+2@timepoint:post/pre") == {
        "name": "tr", "fraction": 0.03, "log2fc": 2.0, "sign": "up", "group": "timepoint",
        "case": "post", "control": "pre"}
    base = {"genes": 10, "samples": 4, "seed": 3, "block_size": 5}
    spec = spec_from_flags(base, seed=4, scale="counts")
    assert (spec.genes, spec.samples, spec.seed, spec.block_size, spec.scale) == \
        (10, 4, 4, 5, "counts")
    spec = spec_from_flags(genes=10, patients=4, timepoints="a,b,c")
    assert spec.n_samples == 12 and spec.gene_sets.planted_sets is None
    assert spec.n_planted_sets() == 0


def test_a_spec_file_with_flags_over_it(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("genes: 770\npatients: {count: 8, correlation: 0.4}\n"
                    "groups: [{name: response, levels: {CR: 2, PR: 1, NR: 5}}]\n"
                    "effects:\n  - {name: treated, fraction: 0.1, log2fc: 1.5, group: timepoint}\n"
                    "gene_sets: {planted_sets: 3, null_sets: 2, size: 20}\n")
    spec = spec_from_flags(read_spec_file(path), seed=9, patients=10,
                           groups=["response=CR:3,PR:2,NR:5"])
    assert spec.patients.count == 10 and spec.patients.correlation == 0.4
    assert spec.n_samples == 20 and spec.seed == 9
    assert spec.contrast(spec.effects[0]) == ("timepoint", "post", "pre")
    out = simulate_cohort(spec, tmp_path / "p0.zarr")
    lines = simulation_summary(engine.open_cohort(out).attrs)
    assert "planted_log2fc_treated: 77 planted genes" in lines[1]
    assert "3 planted + 2 null sets of 20 genes" in lines[2]
    path.write_text("- genes\n")
    with pytest.raises(InputError, match="must be a mapping"):
        read_spec_file(path)
    path.write_text("genes: 10\nsamples: 4\ncolour: red\n")
    with pytest.raises(InputError, match="colour: unknown key"):
        spec_from_flags(read_spec_file(path))


@pytest.mark.parametrize("flags, message", [
    ({"samples": 10, "groups": ["g=a:4,b:5"]}, "4+5 = 9 do not add up to the 10 samples"),
    ({"patients": 8, "groups": ["r=CR:2,NR:5"]}, "do not add up to the 8 patients"),
    ({"samples": 10, "groups": ["g=a:5,b:5"], "effects": ["150%:1"]}, "at most 100%"),
    ({"samples": 10, "groups": ["g=a:5,b:5"], "effects": ["5%:0"]}, "plants nothing"),
    ({"samples": 10, "groups": ["g=a:5,b:5"], "effects": ["lots:1"]}, "neither a percentage"),
    ({"samples": 10, "groups": ["g=a:5,b:5"], "effects": ["5%:1@h"]}, "group 'h' is not a group"),
    ({"samples": 10, "groups": ["g=a:5,b:5"], "effects": ["5%:1@g:c/a"]}, "two different levels"),
    ({"samples": 10, "effects": ["5%:1"]}, "give groups or patients"),
    ({"samples": 10, "groups": ["g=a:5,b:5"], "effects": ["500:1"]}, "only 100 genes"),
    ({"samples": 10, "groups": ["g=a=5"]}, "is not LEVEL:N"),
    ({"samples": 10, "groups": ["patient=a:5,b:5"]}, "reserved"),
    ({"samples": 10, "scale": "tpm"}, "scale (--scale)"),
    ({}, "give the number of samples"),
    ({"samples": 9, "patients": 5}, "samples is 9 but 5 patients x 2 time points make 10"),
    ({"samples": 10, "timepoints": "a,b"}, "need --patients"),
    ({"samples": 10, "groups": ["g=a:5,b:5"], "effects": ["2:1"], "set_size": 30},
     "a planted set of 30 genes takes 24 from the 2 planted genes"),
    ({"samples": 10, "groups": ["g=a:5,b:5"], "effects": ["1:1"]}, "plant no sets"),
    ({"samples": 10, "planted_sets": 2}, "planted gene sets need an effect"),
    ({"samples": 10, "block_correlation": 1.5}, "block_correlation (--block-correlation)"),
])
def test_bad_flags_are_refused_with_one_clear_error(flags, message):
    with pytest.raises(InputError, match="invalid cohort simulate options|--") as info:
        spec_from_flags(genes=100, **flags)
    assert message in str(info.value)


def test_nothing_is_left_behind_when_writing_fails(tmp_path, monkeypatch):
    spec = _spec(groups=[{"name": "g", "levels": {"a": 12, "b": 12}}],
                 effects=[{"genes": 30, "log2fc": 1}])

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(simulate_module, "finish_store", broken)
    with pytest.raises(OSError, match="disk full"):
        simulate_cohort(spec, tmp_path / "s.zarr")
    assert list(tmp_path.iterdir()) == []


def test_existing_store_or_gene_sets_are_kept_without_overwrite(tmp_path):
    spec = _spec(groups=[{"name": "g", "levels": {"a": 12, "b": 12}}],
                 effects=[{"genes": 30, "log2fc": 1}])
    out = simulate_cohort(spec, tmp_path / "s.zarr")
    digest = content_digest(out)
    with pytest.raises(InputError, match="already exists"):
        simulate_cohort(spec.model_copy(update={"seed": 1}), out)
    (tmp_path / "t.gmt").write_text("mine\tkeep\tG001\n")
    with pytest.raises(InputError, match="t.gmt already exists"):
        simulate_cohort(spec, tmp_path / "t.zarr")
    assert not (tmp_path / "t.zarr").exists()
    assert (tmp_path / "t.gmt").read_text() == "mine\tkeep\tG001\n"
    simulate_cohort(spec.model_copy(update={"seed": 1}), out, overwrite=True)
    assert content_digest(out) != digest


def test_memory_stays_at_a_chunk_whatever_the_number_of_genes(tmp_path):
    """Peak Python-visible allocation (numpy buffers included) with 4x the genes stays flat."""
    simulate_cohort(_spec(genes=60, samples=40), tmp_path / "warm.zarr")  # first-use caches
    peaks = []
    for genes in (500, 2000):
        spec = _spec(genes=genes, samples=4000, gene_sets={"null_sets": 0})
        tracemalloc.start()
        simulate_cohort(spec, tmp_path / f"g{genes}.zarr", chunk_genes=50)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    full = 2000 * 4000 * 4
    assert peaks[1] < 0.25 * full
    assert peaks[1] < 1.5 * peaks[0]


def test_cli_simulate(tmp_path, capsys):
    from engine.cli import main

    out = tmp_path / "s.zarr"
    assert main(["simulate", "--genes", "120", "--patients", "6", "--groups",
                 "response=CR:3,NR:3", "--effects", "t=10%:1@timepoint:post/pre", "--seed", "2",
                 "-o", str(out)]) == 0
    ds = engine.open_cohort(out)
    assert ds.sizes == {"gene": 120, "sample": 12} and (tmp_path / "s.gmt").exists()
    assert "planted_log2fc_t: 12 planted genes" in capsys.readouterr().out
    assert main(["simulate", "--genes", "10", "--samples", "10", "--groups", "g=a:4,b:5",
                 "-o", str(tmp_path / "x.zarr")]) == 2
    assert "do not add up to the 10 samples" in capsys.readouterr().err
