"""Declarative jobs: the YAML spec, planning it into one Dask graph, running it."""

from engine.jobs.spec import Job, load_job
from engine.jobs.runner import plan_job, run_job

__all__ = ["Job", "load_job", "plan_job", "run_job"]
