"""The Prefect flow ``run_batch``: a job file in, a folder of Parquet parts and a manifest out.

    list_inputs      which files the job's ``input`` names (task, retried)
    prepare_output   claim the output folder; read what earlier runs finished (task, retried)
    process_rows     stream the rows still to do → worker pool → journal and parts (task)
    publish_manifest totals summed from the parts (task, retried)

The pool runs inside one async task on the flow's event loop: its limiters belong to
that loop. Deployment keys are read from the environment inside the task, never
passed as parameters, and registered for redaction before anything logs.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import structlog
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.inputs import input_format
from flows.logs import guard_stdlib_logs
from flows.manifest import OutputInUseError, build_manifest, claim_output, write_manifest
from flows.parts import PartSummary
from flows.pipeline import Execution, JobError, JobStoppedError, execute
from flows.resume import Progress, read_progress
from flows.storage import redact_location, storage_for
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


@task(name="prepare-output", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def prepare_output(spec: JobSpec, files: list[str], retry_errors: bool, overwrite: bool) -> Progress:
    """Claim the output folder for this job and read what earlier runs finished there."""
    out = storage_for(spec.output)
    try:
        previous = claim_output(out, spec, files, overwrite=overwrite)
    except OutputInUseError as exc:
        raise JobError(str(exc)) from None
    shard_rows = previous.get("shard_rows", spec.shard_rows) if previous else spec.shard_rows
    progress = read_progress(out, spec.output, shard_rows, previous, retry_errors=retry_errors)
    write_manifest(out, spec.output, build_manifest(spec, files, list(progress.kept.values()), status="running",
                                                    shard_rows=shard_rows, wall_time_s=0.0))
    return progress


@task(name="process-rows", cache_policy=NO_CACHE)
async def process_rows(spec: JobSpec, files: list[str], progress: Progress) -> Execution:
    """Send every row not yet done through the deployments' pool and publish one part per shard."""
    out = storage_for(spec.output)
    started = time.monotonic()

    async def checkpoint(parts: list[PartSummary]) -> None:
        manifest = build_manifest(spec, files, parts, status="running", shard_rows=progress.shard_rows,
                                  wall_time_s=time.monotonic() - started)
        await asyncio.to_thread(write_manifest, out, spec.output, manifest)

    return await execute(spec, files, progress=progress, checkpoint=checkpoint)


@task(name="publish-manifest", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def publish_manifest(spec: JobSpec, manifest: dict[str, Any]) -> str:
    """Write ``_manifest.json`` into the output folder."""
    return write_manifest(storage_for(spec.output), spec.output, manifest)


@flow(name="promptbatch-run")
async def run_batch(job: str | dict[str, Any], input: str | None = None, output: str | None = None,
                    endpoint_url: str | None = None, retry_errors: bool = False,
                    overwrite: bool = False) -> dict[str, Any]:
    """Run a job: every input row ends as one output row with a status; returns the manifest's totals.

    Re-running with the same output finishes what an earlier run left undone;
    ``retry_errors`` also sends again the rows that ended in ``error``; ``overwrite``
    discards an earlier job's results. A run stopped by a signal or by the budget
    publishes what finished and raises ``JobStoppedError``.
    """
    started = time.monotonic()
    guard_stdlib_logs()
    spec = load_spec(job, input=input, output=output, endpoint_url=endpoint_url)
    files = list_inputs(spec)
    progress = prepare_output(spec, files, retry_errors, overwrite)
    log.info("job_started", inputs=len(files), output=redact_location(spec.output), job_hash=spec.job_hash(),
             endpoints=[e.url for e in spec.all_endpoints], rows_already_done=progress.rows)
    execution = await process_rows(spec, files, progress)
    status = "stopped" if execution.stopped else "complete"
    manifest = build_manifest(spec, files, execution.parts, status=status, shard_rows=progress.shard_rows,
                              wall_time_s=time.monotonic() - started, total_rows=execution.reading.rows,
                              stopped=execution.stopped, bad_input=execution.bad_input,
                              bad_input_rows=execution.bad_input_rows)
    if execution.reading.empty_files:
        manifest["empty_inputs"] = execution.reading.empty_files
        log.warning("empty_inputs", files=execution.reading.empty_files)
    location = publish_manifest(spec, manifest)
    summary = {"output": redact_location(spec.output), "manifest": redact_location(location),
               **{k: v for k, v in manifest.items() if k != "parts"}}
    if execution.stopped:
        raise JobStoppedError(execution.stopped, summary)
    log.info("job_finished", manifest=redact_location(location), rows=manifest["rows"],
             cost_usd=manifest["cost_usd"]["total"])
    return summary
