"""Regenerate the JSON files of this folder from the engine's models: python schemas/generate.py

tests/test_schemas.py fails when a committed file differs from what this would write.
"""

from pathlib import Path

from engine.jobs.spec import job_json_schema
from engine.store.contract import contract_json
from engine.sweep.spec import sweep_json_schema

HERE = Path(__file__).parent
GENERATED = {"job.schema.json": job_json_schema, "cohort-store.json": contract_json,
             "sweep.schema.json": sweep_json_schema}

if __name__ == "__main__":
    for name, make in GENERATED.items():
        (HERE / name).write_text(make())
        print(f"wrote {HERE / name}")
