"""``cohort simulate``: a synthetic cohort store written one chunk of genes at a time.

The model (README: Simulated cohorts). Genes fall into consecutive blocks of ``block_size``.
Each gene's latent value in sample j is a standard normal

    z = sqrt(c) * u[patient(j)] + sqrt(1 - c) * s_j,    s_j = sqrt(rho) * f_j + sqrt(1 - rho) * e_j

where f is the block's factor per sample and e the gene's own noise (so two null genes of a block
correlate by ``block_correlation`` rho), and u the patient's effect (itself sqrt(rho) block part +
own part), with c the patient share of the variance (``patients.correlation``; c = 0 without
patients). The planted effects shift a gene by +-log2fc in the case samples of their group.

- log2 scale: ``expression = baseline + shift + sd * z`` (log-normal in linear space), with a
  per-gene baseline from a two-normal mixture (low / expressed genes) and a log-normal sd.
- counts: negative-binomial counts with mean ``library_size_j * q * 2**shift`` (q the gene's share
  of reads from the same baseline) and per-gene dispersion phi: the gamma multiplier of the
  Poisson-gamma mixture is the Gamma(1/phi, phi) quantile of Phi(z) (a Gaussian copula), so every
  count is exactly NB(mean, phi) while genes of a block, and samples of a patient, are correlated.

Randomness is independent of the write chunking: per-gene parameters, planted genes and gene sets
come from whole-cohort streams of length G, sample-level draws (group assignment, library sizes)
from a sample stream, and the (genes x samples) draws from one generator per correlation block,
``SeedSequence(seed, spawn_key=(BLOCKS, block))``. Chunks are cut from the stream of blocks, so
any ``chunk_genes`` writes the same values. Memory: one chunk plus one block.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import special

from engine.errors import InputError
from engine.fsutil import atomic_directory
from engine.store.ingest import GeneBlockWriter, default_chunk_genes, finish_store, now_utc
from engine.store.simulate_spec import SimulationSpec, planted_members

__all__ = ["SimulationPlan", "plan_simulation", "simulate_cohort", "simulated_blocks",
           "simulation_summary"]

#: bump when the model changes what a (spec, seed) generates; recorded in the store
MODEL_VERSION = 1
# first spawn-key entries of the random streams (fixed: changing one changes every cohort)
GENES, SAMPLES, SETS, BLOCKS = 1, 2, 3, 4


def stream(seed: int, *key: int) -> np.random.Generator:
    """The generator of stream ``key`` (e.g. ``(BLOCKS, 7)``) under ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


@dataclass
class SimulationPlan:
    """Everything about a cohort but its (gene, sample) values: IDs, per-gene parameters,
    planted fold changes, the sample design and the gene sets. Size O(genes + samples)."""

    spec: SimulationSpec
    gene_ids: np.ndarray
    sample_ids: list[str]
    baseline: np.ndarray  # log2 mean (log2 scale) / log2 mean count at the median library size
    sd: np.ndarray  # per-gene sd of log2 expression
    dispersion: np.ndarray  # per-gene NB dispersion (counts)
    planted: dict[str, np.ndarray]  # effect column -> per-gene log2 fold change (0 = null)
    case: dict[str, np.ndarray]  # effect column -> bool per sample: shifted
    sample_vars: dict  # sample annotations for the store
    patient_index: np.ndarray | None  # per sample: its patient's number
    library_factor: np.ndarray | None  # counts: library size / median library size
    gene_sets: list[tuple[str, str, list[str]]]  # (name, description, members)

    def gene_vars(self) -> dict:
        """Gene annotations: the block, the parameters and the planted fold changes."""
        spec = self.spec
        out = {"block": ("gene", (np.arange(spec.genes) // spec.block_size).astype(np.float64)),
               "baseline_log2": ("gene", self.baseline)}
        if spec.scale == "log2":
            out["sd_log2"] = ("gene", self.sd)
        else:
            out["dispersion"] = ("gene", self.dispersion)
        out.update({column: ("gene", fc) for column, fc in self.planted.items()})
        return out


def plan_simulation(spec: SimulationSpec) -> SimulationPlan:
    """The plan of ``spec``: its whole-cohort draws (genes, samples, sets), no matrix."""
    rng = stream(spec.seed, GENES)
    g = spec.genes
    low = rng.random(g) < spec.low_fraction
    baseline = np.where(low, rng.normal(spec.low_mean_log2, spec.low_sd_log2, g),
                        rng.normal(spec.expressed_mean_log2, spec.expressed_sd_log2, g))
    sd = spec.gene_sd_log2 * np.exp(spec.gene_sd_spread * rng.standard_normal(g))
    dispersion = spec.dispersion * np.exp(spec.dispersion_spread * rng.standard_normal(g))
    planted = {}
    for effect in spec.effects:
        fc = np.zeros(g)
        chosen = rng.choice(g, effect.n_genes(g), replace=False)
        signs = {"up": 1.0, "down": -1.0}.get(effect.sign)
        fc[chosen] = effect.log2fc * (signs if signs else rng.choice([-1.0, 1.0], len(chosen)))
        planted[effect.column] = fc
    if spec.scale == "counts":
        # the baseline becomes the gene's share of reads, expressed as the log2 mean count at
        # the median library size (a max-shift keeps 2**x finite)
        share = np.exp2(baseline - baseline.max())
        baseline = np.log2(share / share.sum() * spec.library_size)
    width = len(str(g))
    gene_ids = np.array([f"G{i + 1:0{width}d}" for i in range(g)], dtype=object)
    design = _sample_design(spec)
    return SimulationPlan(spec=spec, gene_ids=gene_ids, baseline=baseline, sd=sd,
                          dispersion=dispersion, planted=planted,
                          gene_sets=_gene_sets(spec, gene_ids, planted), **design)


def _sample_design(spec: SimulationSpec) -> dict:
    """Sample IDs, annotations, patients, which samples each effect shifts, library sizes."""
    rng = stream(spec.seed, SAMPLES)
    n = spec.n_samples
    labels: dict[str, np.ndarray] = {}
    if spec.patients:
        times = spec.patients.timepoints
        width = len(str(spec.patients.count))
        patients = [f"P{p + 1:0{width}d}" for p in range(spec.patients.count)]
        suffix = [f"_{times[:k + 1].count(t)}" if times.count(t) > 1 else ""
                  for k, t in enumerate(times)]
        sample_ids = [f"{p}_{t}{s}" for p in patients for t, s in zip(times, suffix)]
        patient_index = np.repeat(np.arange(len(patients)), len(times))
        labels["patient"] = np.array(patients, dtype=object)[patient_index]
        labels["timepoint"] = np.array(times * len(patients), dtype=object)
    else:
        width = len(str(n))
        sample_ids = [f"S{j + 1:0{width}d}" for j in range(n)]
        patient_index = None
    for group in spec.groups:
        # level sizes count patients in a paired design: a patient's samples share the label
        drawn = rng.permutation(np.repeat(np.array(list(group.levels), dtype=object),
                                          list(group.levels.values())))
        labels[group.name] = drawn if patient_index is None else drawn[patient_index]
    sample_vars = {name: ("sample", values) for name, values in labels.items()}
    library_factor = None
    if spec.scale == "counts":
        library_factor = np.exp2(rng.normal(0.0, spec.library_size_sd_log2, n))
        sample_vars["library_size"] = ("sample", spec.library_size * library_factor)
    case = {}
    for effect in spec.effects:
        group, level, _ = spec.contrast(effect)
        case[effect.column] = labels[group] == level
    return {"sample_ids": sample_ids, "sample_vars": sample_vars, "patient_index": patient_index,
            "library_factor": library_factor, "case": case}


def _gene_sets(spec: SimulationSpec, gene_ids: np.ndarray,
               planted: dict[str, np.ndarray]) -> list[tuple[str, str, list[str]]]:
    """Planted sets (``purity`` of their genes planted in the set effect, the rest its null
    genes) and null sets (random genes), members in gene order."""
    rng = stream(spec.seed, SETS)
    sets, size = spec.gene_sets, spec.set_size()
    out = []
    n_planted = spec.n_planted_sets()
    if n_planted:
        column = spec.set_effect().column
        hit = planted[column] != 0
        on, off = np.flatnonzero(hit), np.flatnonzero(~hit)
        k = planted_members(sets.purity, size)
        width = len(str(n_planted))
        for i in range(n_planted):
            members = np.concatenate([rng.choice(on, k, replace=False),
                                      rng.choice(off, size - k, replace=False)])
            out.append((f"SIM_PLANTED_{i + 1:0{width}d}",
                        f"planted: {k} of {size} genes planted in {column}",
                        list(gene_ids[np.sort(members)])))
    width = len(str(sets.null_sets))
    for i in range(sets.null_sets):
        members = rng.choice(spec.genes, size, replace=False)
        out.append((f"SIM_NULL_{i + 1:0{width}d}", f"null: {size} random genes",
                    list(gene_ids[np.sort(members)])))
    return out


def simulated_blocks(plan: SimulationPlan) -> Iterator[np.ndarray]:
    """The values of each correlation block in gene order: float32 log2 expression, or int64
    counts; each block from its own seeded generator (see the module docstring)."""
    spec = plan.spec
    rho = spec.block_correlation
    c = spec.patients.correlation if spec.patients else 0.0
    n, n_patients = spec.n_samples, spec.patients.count if spec.patients else 0
    shared, own = np.float32(np.sqrt(rho)), np.float32(np.sqrt(1 - rho))
    case = {column: plan.case[column].astype(np.float32) for column in plan.planted}
    for b, start in enumerate(range(0, spec.genes, spec.block_size)):
        rows = slice(start, min(start + spec.block_size, spec.genes))
        size = rows.stop - rows.start
        rng = stream(spec.seed, BLOCKS, b)
        factor = rng.standard_normal(n, dtype=np.float32)
        z = shared * factor + own * rng.standard_normal((size, n), dtype=np.float32)
        if n_patients:
            u = (shared * rng.standard_normal(n_patients, dtype=np.float32)
                 + own * rng.standard_normal((size, n_patients), dtype=np.float32))
            z = (np.float32(np.sqrt(c)) * u[:, plan.patient_index]
                 + np.float32(np.sqrt(1 - c)) * z)
        # the planted log2 shift of each gene in each sample; outer products, not a BLAS
        # product, so the sum of several effects is rounded the same way on every machine
        shift = np.zeros((size, n), dtype=np.float32)
        for column, fc in plan.planted.items():
            shift += np.outer(fc[rows].astype(np.float32), case[column])
        if spec.scale == "log2":
            yield (plan.baseline[rows, None].astype(np.float32) + shift
                   + plan.sd[rows, None].astype(np.float32) * z)
        else:
            mean = np.exp2(plan.baseline[rows, None] + shift) * plan.library_factor
            yield rng.poisson(mean * gamma_multiplier(z, plan.dispersion[rows, None]))


def gamma_multiplier(z: np.ndarray, dispersion: np.ndarray) -> np.ndarray:
    """The Gamma(shape 1/phi, scale phi) quantile (mean 1, variance phi) at Phi(z).

    A Poisson count with mean ``mu`` times this is NB(mu, phi). The upper tail is inverted
    from the complementary probability, so large z keep their precision.
    """
    z = z.astype(np.float64)
    shape = np.broadcast_to(1.0 / dispersion, z.shape)
    out = np.empty_like(z)
    low = z <= 0
    out[low] = special.gammaincinv(shape[low], special.ndtr(z[low]))
    out[~low] = special.gammainccinv(shape[~low], special.ndtr(-z[~low]))
    return out * np.broadcast_to(dispersion, z.shape)


def gene_chunks(blocks: Iterator[np.ndarray], n_genes: int, chunk: int) -> Iterator[np.ndarray]:
    """Rows of ``blocks`` regrouped into chunks of ``chunk`` genes (the last one fewer): one
    chunk buffer plus the current block in memory."""
    buffer, filled, start = None, 0, 0
    for block in blocks:
        pos = 0
        while pos < len(block):
            if buffer is None:
                buffer = np.empty((min(chunk, n_genes - start), block.shape[1]), block.dtype)
                filled = 0
            take = min(len(block) - pos, len(buffer) - filled)
            buffer[filled:filled + take] = block[pos:pos + take]
            filled += take
            pos += take
            if filled == len(buffer):
                yield buffer
                start += len(buffer)
                buffer = None


def gmt_text(sets: list[tuple[str, str, list[str]]]) -> str:
    return "".join("\t".join([name, description, *members]) + "\n"
                   for name, description, members in sets)


def simulate_cohort(spec: SimulationSpec, output: str | Path, *,
                    gene_sets: str | Path | None = None, chunk_genes: int | None = None,
                    overwrite: bool = False) -> Path:
    """Write the cohort of ``spec`` as a cohort store at ``output``; return its path.

    The store passes the cohort-store contract: float32 ``expression`` (scale log2 or counts;
    counts also as integer ``counts``), the design as sample annotations (groups, ``patient``,
    ``timepoint``, ``library_size``), the parameters and ``planted_log2fc*`` as gene annotations,
    ``content_sha256``, and the attribute ``simulation`` (spec, seed, model version, gene sets).
    The gene sets, when the spec has any, are written as GMT to ``gene_sets`` (default: the
    store's path with suffix ``.gmt``). Both are written to temporary paths and renamed when
    complete; an existing store or GMT is replaced only with ``overwrite``.
    """
    output = Path(output).absolute()
    if chunk_genes is not None and chunk_genes < 1:
        raise InputError(f"--chunk-genes must be a positive number of genes, not {chunk_genes}")
    plan = plan_simulation(spec)
    gmt = Path(gene_sets).absolute() if gene_sets else output.with_suffix(".gmt")
    if plan.gene_sets and gmt.exists() and not overwrite:
        raise InputError(f"{gmt} already exists (remove it, choose another --gene-sets path, "
                         "or use --overwrite)")
    if gmt == output:
        raise InputError(f"the gene-set file and the store are both {output}")
    chunk = chunk_genes or default_chunk_genes(spec.n_samples)
    text = gmt_text(plan.gene_sets)
    pending = gmt.with_name(f".{gmt.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with atomic_directory(output, overwrite=overwrite) as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            writer = GeneBlockWriter(tmp, plan.sample_ids, plan.sample_vars, chunk)
            start = 0
            for values in gene_chunks(simulated_blocks(plan), spec.genes, chunk):
                ids = plan.gene_ids[start:start + len(values)]
                writer.write(ids, values, values if spec.scale == "counts" else None)
                start += len(values)
                del values  # else it stays alive while the next chunk is generated
            if plan.gene_sets:
                gmt.parent.mkdir(parents=True, exist_ok=True)
                pending.write_text(text, encoding="utf-8")
            finish_store(tmp, plan.gene_vars(), spec.scale,
                         _attributes(plan, writer.chunk, gmt if plan.gene_sets else None, text))
        if plan.gene_sets:
            os.replace(pending, gmt)
    finally:
        pending.unlink(missing_ok=True)
    return output


def _attributes(plan: SimulationPlan, chunk: int, gmt: Path | None, text: str) -> dict:
    from engine import __version__

    spec = plan.spec
    record = {"model_version": MODEL_VERSION, "seed": spec.seed,
              "spec": spec.model_dump(mode="json"),
              "planted_genes": {k: int(np.count_nonzero(v)) for k, v in plan.planted.items()}}
    if gmt is not None:
        digest = hashlib.sha256(text.encode()).hexdigest()
        record["gene_sets"] = {"path": str(gmt), "sha256": digest,
                               "planted": spec.n_planted_sets(),
                               "null": spec.gene_sets.null_sets,
                               "size": spec.set_size()}
    return {"engine_version": __version__, "ingested_at": now_utc(), "sources": [],
            "ingest_options": {"format": "simulated", "scale": spec.scale, "chunk_genes": chunk},
            "simulation": record}


def simulation_summary(attrs: dict) -> list[str]:
    """Lines saying what a simulated store (its root attributes ``attrs``) has planted."""
    record = attrs["simulation"]
    spec = record["spec"]
    lines = [f"simulated: seed {record['seed']}, scale {spec['scale']}, correlation blocks of "
             f"{spec['block_size']} genes (rho {spec['block_correlation']})"]
    lines += [f"  {column}: {n} planted genes" for column, n in record["planted_genes"].items()]
    sets = record.get("gene_sets")
    if sets:
        lines.append(f"  gene sets: {sets['planted']} planted + {sets['null']} null sets of "
                     f"{sets['size']} genes in {sets['path']}")
    return lines
