"""The sweep file: axes, a template job, and the grid of units it expands to.

A unit is one combination of axis values: the template job with every ``${axis}`` /
``${axis.key}`` placeholder replaced by that combination's values. Its fingerprint covers
what its results depend on: the content of its cohort store, the resolved job, the content of
the files it names (gene sets, rankings) and the engine version.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from engine.errors import InputError
from engine.jobs.base import NAME_PATTERN, Strict
from engine.jobs.spec import Job, job_from_mapping, read_yaml_mapping

AXIS_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:\.([A-Za-z0-9_-]+))?\}")
#: keys of the template that belong to the sweep, not to its units
SWEEP_KEYS = ("output", "seed")
#: files a job names whose content its results depend on

Scalar = str | int | float


class Sweep(Strict):
    """A grid of jobs: every combination of the axes' values applied to the template."""

    name: str = Field(pattern=NAME_PATTERN, description="the sweep's name (ledger, lock)")
    output: Path = Field(description="sweep output folder; relative to the sweep file")
    seed: int = Field(default=0, ge=0, description="seed of every unit (shared random draws "
                                                   "are shared work)")
    axes: dict[str, dict[str, Any] | list[Scalar]] = Field(
        description="axis name -> {value name: value} or a list of values named by "
                    "themselves; the 'cohort' axis maps names to cohort stores")
    exclude: list[dict[str, str]] = Field(
        default_factory=list, description="combinations to leave out: {axis: value name, ...} "
                                          "(a unit matching every pair of an entry is left out)")
    template: dict[str, Any] = Field(
        description="a job (preprocess, analyses, families, gene_lists; cohort unless there "
                    "is a cohort axis) with ${axis} / ${axis.key} placeholders")

    @field_validator("axes")
    @classmethod
    def _axes(cls, axes):
        if not axes:
            raise ValueError("give at least one axis")
        out = {}
        for axis, values in axes.items():
            if not re.match(AXIS_PATTERN, axis):
                raise ValueError(f"axis name {axis!r}: letters, digits and _ only (it is "
                                 "used as ${axis} and as a column name)")
            if isinstance(values, list):
                values = {str(v): v for v in values}
            if not values:
                raise ValueError(f"axis {axis!r} has no values")
            for name in values:
                if not re.match(NAME_PATTERN, name):
                    raise ValueError(f"axis {axis!r}: value name {name!r} must match "
                                     f"{NAME_PATTERN} (it names folders and files)")
            out[axis] = values
        return out

    @model_validator(mode="after")
    def _template(self):
        for key in SWEEP_KEYS:
            if key in self.template:
                raise ValueError(f"template: {key!r} is a key of the sweep, not of its units")
        if "cohort" in self.axes and "cohort" in self.template:
            raise ValueError("template: 'cohort' comes from the cohort axis; remove it")
        if "cohort" not in self.axes and "cohort" not in self.template:
            raise ValueError("give a cohort axis or template.cohort")
        for entry in self.exclude:
            for axis, value in entry.items():
                if value not in self.axes.get(axis, {}):
                    raise ValueError(f"exclude: {axis}={value} is not a value of the axes")
        used = {m.group(1) for m in PLACEHOLDER.finditer(json.dumps(self.template))}
        unknown = sorted(used - set(self.axes))
        if unknown:
            raise ValueError(f"template: placeholder(s) of unknown axes {unknown} (axes: "
                             f"{', '.join(self.axes)})")
        unused = sorted(set(self.axes) - used - {"cohort"})
        if unused:
            raise ValueError(f"axes {unused} are not used by the template (each of their values "
                             "would repeat the same units); use them as ${axis} or remove them")
        return self


@dataclass
class Unit:
    """One combination of axis values and the job it resolves to (``error`` if it does not)."""

    id: str
    axes: dict[str, str]
    cohort_name: str
    job: Job | None = None
    error: str | None = None
    fingerprint: str | None = field(default=None, repr=False)
    skip: bool = False  # its fingerprint has a committed result


def load_sweep(path: str | Path) -> tuple[Sweep, Path]:
    """The validated sweep and its folder (relative paths in it are relative to that)."""
    path = Path(path)
    raw = read_yaml_mapping(path, "sweep", "name, output, axes, template")
    try:
        sweep = Sweep.model_validate(raw)
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, x['loc'])) or '(top level)'}: "
                 f"{x['msg'].removeprefix('Value error, ')}" for x in e.errors()]
        raise InputError(f"invalid sweep {path}:\n  " + "\n  ".join(lines)) from None
    base = path.absolute().parent
    return sweep.model_copy(update={"output": Path(os.path.normpath(base / sweep.output))}), base


def _substitute(obj, values: dict[str, Any], where: str):
    """``obj`` with placeholders replaced: a string that is exactly one placeholder takes the
    value itself (a list, a mapping, a number); inside longer strings values are text."""
    if isinstance(obj, dict):
        return {k: _substitute(v, values, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, values, f"{where}.{i}") for i, v in enumerate(obj)]
    if not isinstance(obj, str):
        return obj

    def lookup(m: re.Match):
        axis, key = m.group(1), m.group(2)
        value = values[axis]
        if key is None:
            return value
        if not isinstance(value, dict) or key not in value:
            raise InputError(f"{where}: ${{{axis}.{key}}}: this value of axis {axis!r} has no "
                             f"key {key!r}")
        return value[key]

    whole = PLACEHOLDER.fullmatch(obj)
    if whole:
        return copy.deepcopy(lookup(whole))

    def as_text(m: re.Match) -> str:
        value = lookup(m)
        if isinstance(value, dict | list):
            raise InputError(f"{where}: {m.group(0)} is a mapping or list and cannot be part "
                             "of a longer string")
        return str(value)

    return PLACEHOLDER.sub(as_text, obj)


def expand(sweep: Sweep, base: Path) -> list[Unit]:
    """Every unit of the grid, in axis order; units whose job does not validate carry the
    error instead of a job (so that all problems are reported together)."""
    axes = list(sweep.axes)
    units = []
    for names in itertools.product(*(list(sweep.axes[a]) for a in axes)):
        chosen = dict(zip(axes, names))
        if any(all(chosen[a] == v for a, v in entry.items()) for entry in sweep.exclude):
            continue
        unit_id = ",".join(f"{a}={v}" for a, v in chosen.items())
        values = {a: sweep.axes[a][v] for a, v in chosen.items()}
        template = dict(sweep.template)
        if "cohort" in sweep.axes:
            template["cohort"] = "${cohort}"
        raw = {**template, "output": str(sweep.output / "units" / unit_id), "seed": sweep.seed}
        cohort_name = chosen.get("cohort")
        try:
            resolved = _substitute(raw, values, "template")
            job = job_from_mapping(resolved, base, f"unit {unit_id}")
            cohort_name = cohort_name or job.cohort.name.removesuffix(".zarr")
            units.append(Unit(unit_id, chosen, cohort_name, job=job))
        except InputError as e:
            units.append(Unit(unit_id, chosen, cohort_name or "?", error=str(e)))
    if not units:
        raise InputError("the sweep's exclude entries leave no unit to run")
    return units


def sweep_json_schema() -> str:
    schema = Sweep.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cohort-engine sweep"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
