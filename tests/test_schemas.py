"""The committed schemas are exactly what the engine's models generate."""

import importlib.util
from pathlib import Path

import pytest

SCHEMAS = Path(__file__).parents[1] / "schemas"
spec = importlib.util.spec_from_file_location("generate", SCHEMAS / "generate.py")
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)


@pytest.mark.parametrize("name", sorted(generate.GENERATED))
def test_committed_schema_matches_models(name):
    committed = (SCHEMAS / name).read_text()
    assert committed == generate.GENERATED[name](), (
        f"schemas/{name} is out of date: run `python schemas/generate.py` and commit it")


def test_job_schema_forbids_unknown_keys():
    import json

    schema = json.loads((SCHEMAS / "job.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["TwoGroupAnalysis"]["additionalProperties"] is False
