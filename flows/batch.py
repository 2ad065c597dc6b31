"""The Prefect flow ``run_batch``: a job file in, a folder of Parquet parts and a manifest out.

    list_inputs      which files the job's ``input`` names (task, retried)
    process_rows     stream rows → worker pool → parts, one per shard (task)
    publish_manifest totals summed from the parts (task)

The pool runs inside one async task on the flow's event loop: its limiters belong to
that loop. Deployment keys are read from the environment inside the task, never
passed as parameters, and registered for redaction before anything logs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import structlog
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.inputs import input_format
from flows.parts import PartSummary, build_manifest, write_manifest
from flows.pipeline import JobError, execute
from flows.storage import storage_for
from schemas import JobSpec, job_from_dict, parse_job

log = structlog.get_logger(__name__)


def load_spec(job: str | dict[str, Any], *, input: str | None = None, output: str | None = None,
              endpoint_url: str | None = None) -> JobSpec:
    """A job from a YAML file's path or an inline mapping, with the CLI's overrides applied."""
    if isinstance(job, dict):
        spec = job_from_dict(job)
    else:
        path = Path(job)
        if not path.is_file():
            raise JobError(f"{job}: no such job file")
        spec = parse_job(path.read_text(), source=str(job))
    return spec.with_overrides(input=input, output=output, endpoint_url=endpoint_url)


@task(name="list-inputs", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def list_inputs(spec: JobSpec) -> list[str]:
    """The prompt files the job's ``input`` names, in order."""
    files = storage_for(spec.input).expand(spec.input)
    if not files:
        raise JobError(f"{spec.input}: no prompt files there")
    for location in files:
        input_format(location)
    return files


@task(name="process-rows", cache_policy=NO_CACHE)
async def process_rows(spec: JobSpec, files: list[str]) -> list[PartSummary]:
    """Send every row through the deployments' pool and publish one part per shard."""
    return (await execute(spec, files)).parts


@task(name="publish-manifest", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def publish_manifest(spec: JobSpec, manifest: dict[str, Any]) -> str:
    """Write ``_manifest.json`` into the output folder."""
    return write_manifest(storage_for(spec.output), spec.output, manifest)


@flow(name="promptbatch-run")
async def run_batch(job: str | dict[str, Any], input: str | None = None, output: str | None = None,
                    endpoint_url: str | None = None) -> dict[str, Any]:
    """Run a job: every input row ends as one output row with a status; returns the manifest's totals."""
    started = time.monotonic()
    spec = load_spec(job, input=input, output=output, endpoint_url=endpoint_url)
    files = list_inputs(spec)
    log.info("job_started", inputs=len(files), output=spec.output, job_hash=spec.job_hash(),
             endpoints=[e.url for e in spec.all_endpoints])
    parts = await process_rows(spec, files)
    manifest = build_manifest(spec, files, parts, time.monotonic() - started)
    location = publish_manifest(spec, manifest)
    log.info("job_finished", manifest=location, rows=manifest["rows"], cost_usd=manifest["cost_usd"]["total"])
    return {"output": spec.output, "manifest": location, **{k: v for k, v in manifest.items() if k != "parts"}}
