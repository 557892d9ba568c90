"""What ``cohort simulate`` generates: the ``SimulationSpec`` model and the CLI flags over it.

A spec says how many genes and samples, how the samples are grouped (``groups``, ``patients``
with their time points), which genes carry a planted log2 fold change (``effects``), how the
genes are correlated (blocks sharing a latent factor) and the per-gene baselines, and which
gene sets to plant (``gene_sets``). Study presets fill the same model; the CLI flags are parsed
into it by ``spec_from_flags``. Every spec error is an ``InputError`` naming the field (or
flag) and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.errors import InputError
from engine.fsutil import read_yaml_mapping

#: sample annotations the simulator writes itself (besides the groups)
DESIGN_COLUMNS = ("patient", "timepoint", "library_size")
RESERVED_NAMES = {"gene", "sample", "expression", "counts", *DESIGN_COLUMNS}
NAME = r"^[A-Za-z][A-Za-z0-9_.-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Group(_Strict):
    """A categorical sample annotation with fixed level sizes, assigned in a seeded random order."""

    name: str = Field(pattern=NAME, description="the sample annotation's name, e.g. response")
    levels: dict[str, int] = Field(
        min_length=1, description="label -> number of samples (of patients, with `patients`), in "
                                  "order: the first level is the default control, the second the "
                                  "default case of an effect")

    @model_validator(mode="after")
    def _positive(self):
        bad = [f"{k}:{v}" for k, v in self.levels.items() if v < 1 or not k.strip()]
        if bad:
            raise ValueError(f"group {self.name}: every level needs a label and a size >= 1 "
                             f"(got {', '.join(bad)})")
        return self


class Patients(_Strict):
    """Paired design: each patient gives one sample per time point and has a random effect."""

    count: int = Field(ge=1, description="number of patients")
    timepoints: list[str] = Field(
        default=["pre", "post"], min_length=1,
        description="one sample per entry and patient; a repeated label (pre, pre, post) gives "
                    "several biopsies at that time point")
    correlation: float = Field(
        default=0.5, ge=0, lt=1,
        description="share of each gene's latent variance that is the patient's (the "
                    "within-patient correlation of a null gene's values)")


class Effect(_Strict):
    """Planted differential genes: ``genes`` or ``fraction`` of all genes get a log2 fold change
    ``log2fc`` in the ``case`` samples of group ``group`` relative to every other sample."""

    name: str | None = Field(
        default=None, pattern=NAME,
        description="the effect's gene annotation is planted_log2fc_<name> (planted_log2fc "
                    "for the one unnamed effect)")
    genes: int | None = Field(default=None, ge=1, description="number of planted genes")
    fraction: float | None = Field(default=None, gt=0, le=1,
                                   description="share of all genes planted (0.05 = 5%)")
    log2fc: float = Field(gt=0, description="size of the shift on the log2 scale")
    sign: Literal["random", "up", "down"] = Field(
        default="random", description="direction per gene: random (+ or - with equal "
                                      "probability), up or down")
    group: str | None = Field(
        default=None, description="the group (or timepoint) whose level is shifted; default: "
                                  "the first group, else timepoint")
    case: str | None = Field(default=None, description="shifted level (default: the second)")
    control: str | None = Field(default=None,
                                description="reference level (default: the first); only "
                                            "names the contrast: every non-case sample is "
                                            "unshifted")

    @model_validator(mode="after")
    def _one_amount(self):
        if (self.genes is None) == (self.fraction is None):
            raise ValueError("give exactly one of genes (a number) or fraction (a share)")
        return self

    @property
    def column(self) -> str:
        """The gene annotation holding this effect's planted log2 fold changes."""
        return "planted_log2fc" if self.name is None else f"planted_log2fc_{self.name}"

    def n_genes(self, total: int) -> int:
        """How many of ``total`` genes this effect plants (a fraction is rounded, at least 1)."""
        return self.genes if self.genes is not None else max(1, round(self.fraction * total))


class GeneSets(_Strict):
    """Gene sets written as GMT next to the store: planted sets drawn mostly from one effect's
    planted genes, and null sets drawn from all genes."""

    planted_sets: int | None = Field(
        default=None, ge=0, description="planted sets (default 10 with an effect, else 0)")
    null_sets: int = Field(default=10, ge=0, description="null sets of random genes")
    size: int | None = Field(default=None, ge=2,
                             description="genes per set (default 50, fewer when the cohort "
                                         "has fewer genes, or too few planted genes for it)")
    purity: float = Field(default=0.8, gt=0, le=1,
                          description="share of a planted set's genes drawn from planted genes "
                                      "(the rest from the effect's null genes)")
    effect: str | None = Field(default=None,
                               description="name of the effect whose genes the planted sets "
                                           "use (default: the first effect)")


class SimulationSpec(_Strict):
    """A synthetic cohort: design, planted effects, gene model and gene sets (README:
    Simulated cohorts). The same spec and seed give the same store, whatever the chunking."""

    genes: int = Field(ge=1, description="number of genes")
    samples: int | None = Field(default=None, ge=1,
                                description="number of samples (patients x time points with "
                                            "`patients`)")
    seed: int = Field(default=0, ge=0, description="seed of every random stream")
    scale: Literal["log2", "counts"] = Field(
        default="log2", description="log2: log-normal expression on the log2 scale; counts: "
                                    "negative-binomial read counts")
    groups: list[Group] = Field(default=[], description="categorical sample annotations")
    patients: Patients | None = Field(default=None, description="paired design")
    effects: list[Effect] = Field(default=[], description="planted differential genes")
    gene_sets: GeneSets = Field(default_factory=GeneSets, description="planted and null sets")
    block_size: int = Field(default=50, ge=1,
                            description="genes per correlation block (sharing a latent factor)")
    block_correlation: float = Field(default=0.3, ge=0, lt=1,
                                     description="correlation of two null genes of one block")
    low_fraction: float = Field(default=0.2, ge=0, le=1,
                                description="share of lowly expressed genes in the baseline "
                                            "mixture")
    low_mean_log2: float = Field(default=3.0, description="mean log2 baseline of low genes")
    low_sd_log2: float = Field(default=1.0, ge=0, description="its spread over genes")
    expressed_mean_log2: float = Field(default=8.0,
                                       description="mean log2 baseline of expressed genes")
    expressed_sd_log2: float = Field(default=2.0, ge=0, description="its spread over genes")
    gene_sd_log2: float = Field(default=0.5, gt=0,
                                description="median per-gene standard deviation (log2 scale)")
    gene_sd_spread: float = Field(default=0.4, ge=0,
                                  description="sd over genes of the natural log of that sd")
    dispersion: float = Field(default=0.1, gt=0,
                              description="counts: median negative-binomial dispersion "
                                          "(variance = mean + dispersion x mean^2)")
    dispersion_spread: float = Field(default=0.5, ge=0,
                                     description="counts: sd over genes of log dispersion")
    library_size: float = Field(default=2e7, gt=0, description="counts: median library size")
    library_size_sd_log2: float = Field(default=0.3, ge=0,
                                        description="counts: sd of log2 library sizes")

    @property
    def n_samples(self) -> int:
        return self.patients.count * len(self.patients.timepoints) if self.patients \
            else self.samples

    def levels(self, group: str) -> list[str]:
        """Labels of ``group`` in order (``timepoint``: the distinct time points)."""
        if group == "timepoint" and self.patients:
            return list(dict.fromkeys(self.patients.timepoints))
        return list(next(g for g in self.groups if g.name == group).levels)

    def effect_group(self, effect: Effect) -> str | None:
        """The group an effect shifts (its own, else the first group, else timepoint)."""
        if effect.group is not None:
            return effect.group
        if self.groups:
            return self.groups[0].name
        return "timepoint" if self.patients else None

    def contrast(self, effect: Effect) -> tuple[str, str, str]:
        """(group, case, control) of an effect, defaults filled in."""
        group = self.effect_group(effect)
        levels = self.levels(group)
        return group, effect.case or levels[min(1, len(levels) - 1)], effect.control or levels[0]

    def n_planted_sets(self) -> int:
        planted = self.gene_sets.planted_sets
        return (10 if self.effects else 0) if planted is None else planted

    def set_size(self) -> int:
        """Genes per set: as given, else 50 capped at the number of genes and, with planted
        sets, at the planted genes over the purity (so a set never needs more of them)."""
        if self.gene_sets.size is not None:
            return self.gene_sets.size
        size = min(50, self.genes)
        if self.n_planted_sets() and self.set_effect() is not None:
            size = min(size, int(self.set_effect().n_genes(self.genes) / self.gene_sets.purity))
        return size

    def set_effect(self) -> Effect | None:
        """The effect whose planted genes make up the planted gene sets."""
        if not self.effects:
            return None
        name = self.gene_sets.effect
        return self.effects[0] if name is None else next(e for e in self.effects if e.name == name)

    @model_validator(mode="after")
    def _consistent(self):
        self._check_samples()
        self._check_groups()
        for i, effect in enumerate(self.effects):
            self._check_effect(i, effect)
        self._check_gene_sets()
        return self

    def _check_samples(self):
        if self.patients is None and self.samples is None:
            raise ValueError("give the number of samples (samples), or patients")
        if self.patients and self.samples is not None and self.samples != self.n_samples:
            raise ValueError(f"samples is {self.samples} but {self.patients.count} patients x "
                             f"{len(self.patients.timepoints)} time points make "
                             f"{self.n_samples} (leave samples out with patients)")

    def _check_groups(self):
        unit, units = (("patients", self.patients.count) if self.patients
                       else ("samples", self.n_samples))
        seen = set()
        for g in self.groups:
            if g.name in RESERVED_NAMES or g.name in seen:
                raise ValueError(f"group name {g.name!r} is reserved or used twice (reserved: "
                                 f"{', '.join(sorted(RESERVED_NAMES))})")
            seen.add(g.name)
            total = sum(g.levels.values())
            if total != units:
                sizes = "+".join(str(v) for v in g.levels.values())
                raise ValueError(f"group {g.name}: level sizes {sizes} = {total} do not add up "
                                 f"to the {units} {unit}")

    def _check_effect(self, i: int, effect: Effect):
        where = f"effect {effect.name or i + 1}"
        names = [e.name for e in self.effects]
        if names.count(effect.name) > 1:
            raise ValueError(f"{where}: effect names must be unique (at most one unnamed effect)")
        if effect.n_genes(self.genes) > self.genes:
            raise ValueError(f"{where}: {effect.genes} planted genes, but the cohort has only "
                             f"{self.genes} genes")
        group = self.effect_group(effect)
        known = [g.name for g in self.groups] + (["timepoint"] if self.patients else [])
        if group is None or group not in known:
            raise ValueError(f"{where}: group {group!r} is not a group of the design (groups: "
                             f"{', '.join(known) or 'none; give groups or patients'})")
        levels = self.levels(group)
        _, case, control = self.contrast(effect)
        if len(levels) < 2 or case not in levels or control not in levels or case == control:
            raise ValueError(f"{where}: case {case!r} and control {control!r} must be two "
                             f"different levels of {group} ({', '.join(levels)})")

    def _check_gene_sets(self):
        sets = self.gene_sets
        if sets.effect is not None and sets.effect not in [e.name for e in self.effects]:
            raise ValueError(f"gene_sets.effect {sets.effect!r} is not the name of an effect")
        if self.n_planted_sets() and not self.effects:
            raise ValueError("planted gene sets need an effect (give effects, or gene_sets "
                             "planted_sets: 0)")
        size = self.set_size()
        if size > self.genes:
            raise ValueError(f"gene_sets: sets of {size} genes, but the cohort has only "
                             f"{self.genes} genes")
        if not self.n_planted_sets():
            return
        planted = self.set_effect().n_genes(self.genes)
        from_planted = planted_members(sets.purity, size)
        if size < 2 or from_planted > planted or size - from_planted > self.genes - planted:
            raise ValueError(f"gene_sets: a planted set of {size} genes takes {from_planted} "
                             f"from the {planted} planted genes and the rest from the "
                             f"{self.genes - planted} others; lower the set size or purity, "
                             "plant more genes, or plant no sets")


def planted_members(purity: float, size: int) -> int:
    """Genes of a planted set of ``size`` drawn from the planted genes (at least one)."""
    return max(1, round(purity * size))


# -- validation errors as InputError -----------------------------------------------------------

FLAGS = {"genes": "--genes", "samples": "--samples", "seed": "--seed", "scale": "--scale",
         "groups": "--groups", "effects": "--effects", "patients": "--patients",
         "block_size": "--block-size", "block_correlation": "--block-correlation"}


def parse_spec(mapping: dict, source: str = "simulation spec") -> SimulationSpec:
    """``mapping`` validated as a ``SimulationSpec``; one ``InputError`` listing every problem
    by its path (and CLI flag)."""
    try:
        return SimulationSpec.model_validate(mapping)
    except ValidationError as error:
        lines = []
        for e in error.errors():
            loc = [str(p) for p in e["loc"]]
            where = ".".join(loc)
            if loc and loc[0] in FLAGS:
                where += f" ({FLAGS[loc[0]]})"
            if not loc:  # a rule across fields: its message names them
                lines.append(e["msg"].removeprefix("Value error, "))
            elif e["type"] == "extra_forbidden":
                lines.append(f"{where}: unknown key")
            elif e["type"] == "missing":
                lines.append(f"{where}: required")
            else:
                lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
        raise InputError(f"invalid {source}: " + "; ".join(lines)) from None


def read_spec_file(path: str | Path) -> dict:
    """The mapping in a YAML spec file (``cohort simulate --spec``), not yet validated: flags
    may still override its keys (``spec_from_flags``)."""
    return read_yaml_mapping(Path(path), "simulation spec",
                             "genes, samples, groups, effects, ...")


# -- CLI flags -> spec ------------------------------------------------------------------------

GROUP_FLAG = re.compile(r"^(?P<name>[^=]+)=(?P<levels>.+)$")
EFFECT_FLAG = re.compile(r"^(?:(?P<name>[A-Za-z][A-Za-z0-9_.-]*)=)?(?P<amount>[^:@]+):"
                         r"(?P<fc>[+-]?[0-9.eE+-]+)(?:@(?P<group>[^:]+)(?::(?P<case>[^/]+)/"
                         r"(?P<control>.+))?)?$")


def parse_group_flag(text: str) -> dict:
    """``response=CR:2,PR:1,NR:5`` -> ``{"name": "response", "levels": {"CR": 2, ...}}``."""
    hint = "(write NAME=LEVEL:N,LEVEL:N, e.g. --groups response=CR:10,NR:10)"
    match = GROUP_FLAG.match(text.strip())
    if not match:
        raise InputError(f"--groups {text!r}: no NAME= {hint}")
    levels = {}
    for part in match["levels"].split(","):
        label, sep, size = part.rpartition(":")
        if not sep or not label.strip() or not size.strip().isdigit():
            raise InputError(f"--groups {text!r}: {part!r} is not LEVEL:N {hint}")
        if label.strip() in levels:
            raise InputError(f"--groups {text!r}: level {label.strip()!r} is given twice")
        levels[label.strip()] = int(size)
    return {"name": match["name"].strip(), "levels": levels}


def parse_effect_flag(text: str) -> dict:
    """``[NAME=]AMOUNT:LOG2FC[@GROUP[:CASE/CONTROL]]`` -> an ``Effect`` mapping.

    AMOUNT is a percentage of the genes (``5%``) or a number of genes (``200``); LOG2FC with a
    sign (``+1`` or ``-1``) plants every gene up or down, without one each gene's sign is random.
    """
    hint = ("(write [NAME=]AMOUNT:LOG2FC[@GROUP[:CASE/CONTROL]], e.g. 5%:1.0, 200:-0.8 or "
            "treated=5%:1@timepoint:post/pre)")
    match = EFFECT_FLAG.match(text.strip())
    if not match:
        raise InputError(f"--effects {text!r}: not understood {hint}")
    amount, fc = match["amount"].strip(), match["fc"]
    out: dict = {}
    try:
        value = float(fc)
    except ValueError:
        raise InputError(f"--effects {text!r}: log2 fold change {fc!r} is not a number") from None
    if value == 0:
        raise InputError(f"--effects {text!r}: a log2 fold change of 0 plants nothing")
    out["log2fc"] = abs(value)
    out["sign"] = "random" if fc[0] not in "+-" else ("up" if value > 0 else "down")
    if amount.endswith("%"):
        try:
            share = float(amount[:-1]) / 100
        except ValueError:
            raise InputError(f"--effects {text!r}: {amount!r} is not a percentage {hint}") from None
        if not 0 < share <= 1:
            raise InputError(f"--effects {text!r}: {amount} of the genes: the share must be "
                             "more than 0% and at most 100%")
        out["fraction"] = share
    elif amount.isdigit():
        out["genes"] = int(amount)
    else:
        raise InputError(f"--effects {text!r}: {amount!r} is neither a percentage (5%) nor a "
                         f"number of genes {hint}")
    for key in ("name", "group", "case", "control"):
        if match[key]:
            out[key] = match[key].strip()
    return out


def spec_from_flags(base: dict | None = None, *, groups: list[str] | None = None,
                    effects: list[str] | None = None, patients: int | None = None,
                    timepoints: str | None = None, patient_correlation: float | None = None,
                    planted_sets: int | None = None, null_sets: int | None = None,
                    set_size: int | None = None, **fields) -> SimulationSpec:
    """The ``SimulationSpec`` of ``cohort simulate``'s flags, over ``base`` (a spec mapping, e.g.
    read from ``--spec``). Flags left None keep the base's value; ``fields`` are top-level spec
    fields (genes, samples, seed, scale, block_size, block_correlation, ...)."""
    spec = dict(base or {})
    spec.update({k: v for k, v in fields.items() if v is not None})
    if groups:
        spec["groups"] = [parse_group_flag(g) for g in groups]
    if effects:
        spec["effects"] = [parse_effect_flag(e) for e in effects]
    if patients is not None or timepoints is not None or patient_correlation is not None:
        design = dict(spec.get("patients") or {})
        if patients is not None:
            design["count"] = patients
        if timepoints is not None:
            design["timepoints"] = [t.strip() for t in timepoints.split(",")]
        if patient_correlation is not None:
            design["correlation"] = patient_correlation
        if "count" not in design:
            raise InputError("--timepoints and --patient-correlation need --patients")
        spec["patients"] = design
    sets = {k: v for k, v in (("planted_sets", planted_sets), ("null_sets", null_sets),
                                    ("size", set_size))
            if v is not None}
    if sets:
        spec["gene_sets"] = {**(spec.get("gene_sets") or {}), **sets}
    return parse_spec(spec, "cohort simulate options")
