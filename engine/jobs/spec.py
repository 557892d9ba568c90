"""The job file: a pydantic model, its loader, and its JSON Schema.

``schemas/job.schema.json`` is generated from these models (``python schemas/generate.py``);
a test fails when the committed schema and the models drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.errors import InputError

TwoGroupTestName = Literal["welch", "student", "paired_t", "mann_whitney", "wilcoxon_signed_rank"]
PAIRED = ("paired_t", "wilcoxon_signed_rank")
Label = Annotated[str | int | float, Field(description="a value of the group annotation")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TwoGroupAnalysis(Strict):
    """A per-gene test of case vs control samples chosen by a sample annotation."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="analysis name; also the result table's file name")
    test: TwoGroupTestName = Field(description="per-gene test; paired tests need pair_by")
    group: str = Field(description="sample annotation that defines the two groups")
    case: Label
    control: Label
    pair_by: str | None = Field(
        default=None, description="sample annotation matching each case sample to its control "
                                  "(required for paired_t and wilcoxon_signed_rank)")
    variable: str = Field(default="expression", description="the (gene, sample) variable to test")

    @field_validator("case", "control", mode="before")
    @classmethod
    def _not_boolean(cls, value):
        if isinstance(value, bool):
            raise ValueError(f"YAML read this label as the boolean {value}; quote it "
                             f"(e.g. case: \"TRUE\") to match the annotation's text")
        return value

    @model_validator(mode="after")
    def _pairing(self):
        if self.test in PAIRED and self.pair_by is None:
            raise ValueError(f"test {self.test!r} needs pair_by (the annotation that matches each "
                             "case sample to its control, e.g. patient)")
        if self.test not in PAIRED and self.pair_by is not None:
            raise ValueError(f"test {self.test!r} is unpaired and takes no pair_by "
                             f"(use paired_t or wilcoxon_signed_rank for paired samples)")
        return self


class Job(Strict):
    """What to compute on one cohort, and where to write the results."""

    cohort: Path = Field(description="cohort store (.zarr); relative to the job file")
    output: Path = Field(description="results directory; relative to the job file")
    seed: int = Field(default=0, ge=0, description="seed of every random draw in the job")
    analyses: list[TwoGroupAnalysis] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self):
        names = [a.name for a in self.analyses]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"analysis names must be unique; repeated: {', '.join(dup)}")
        return self


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            model = TwoGroupAnalysis if e["loc"][0] == "analyses" else Job
            lines.append(f"{where}: unknown key (allowed here: {', '.join(model.model_fields)})")
        elif e["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return f"invalid job {source}:\n  " + "\n  ".join(lines)


def load_job(path: str | Path) -> Job:
    """Read and validate a job file; relative paths in it become relative to its folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"job file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"job file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise InputError(f"job file {path} must be a mapping of keys (cohort, output, analyses)")
    try:
        job = Job.model_validate(raw)
    except ValidationError as e:
        raise InputError(_format_errors(e, str(path))) from None
    base = path.absolute().parent
    return job.model_copy(update={"cohort": base / job.cohort, "output": base / job.output})


def job_json_schema() -> str:
    schema = Job.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cohort-engine job"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
