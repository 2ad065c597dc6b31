"""The pool's runs as Prefect tasks: the job alone (``process_rows``), or one slice of it.

Scale-out (``workers`` = n > 1): the job's shards are dealt into n slices (shard i to
slice i mod n). ``run_batch`` works slice 0 itself and starts n-1 runs of the
``promptbatch-shard`` deployment (``run_shard``) for the others; whichever Prefect
workers pick them up, every slice draws on the same deployment quotas through the
Prefect server's global concurrency limits (``flows.shared_quota``). Each leaves a note
of what it did (``SliceNote``) in ``_shards/`` of the output folder; a job run alone
hands its note over directly, and ``run_batch`` sums the notes either way.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from typing import Any

import structlog
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.errors import JobError
from flows.execution import Execution, SliceNote
from flows.inputs import count_rows
from flows.logs import guard_stdlib_logs
from flows.manifest import SHARD_NOTES, build_manifest, input_changes, read_manifest, write_manifest
from flows.metrics import Recorder, read_metrics, write_metrics
from flows.parts import PartSummary
from flows.pipeline import Listener, execute
from flows.prepare import Prepared, decide_columns, fingerprints, list_inputs, load_spec
from flows.progress import PROGRESS_KEY, ArtifactProgress
from flows.progress import listeners as progress_listeners
from flows.resume import Earlier, read_earlier
from flows.settings import Settings
from flows.storage import redact_location, storage_for
from schemas import InputSchema, JobSpec

log = structlog.get_logger(__name__)


def worker_name() -> str:
    """The Prefect worker running this process (its name, or host and pid)."""
    return Settings.read().worker_name or f"{socket.gethostname()}:{os.getpid()}"


@task(name="process-rows", cache_policy=NO_CACHE)
async def process_rows(spec: JobSpec, files: list[str], prepared: Prepared, day: str | None = None) -> Execution:
    """Send every row not yet done through the deployments' pool and publish one part per shard."""
    out = storage_for(spec.output)
    started = time.monotonic()
    earlier = prepared.earlier

    async def checkpoint(parts: list[PartSummary]) -> None:
        manifest = build_manifest(spec, files, parts, status="running", shard_rows=earlier.shard_rows,
                                  wall_time_s=time.monotonic() - started, fingerprints=prepared.fingerprints,
                                  run_date=day, columns=prepared.columns)
        await asyncio.to_thread(write_manifest, out, spec.output, manifest)

    rows_total = await asyncio.to_thread(count_rows, storage_for(spec.input), files)
    watchers: list[Listener] = [ArtifactProgress(rows_before=earlier.rows), *progress_listeners]
    metrics, save = await _metrics_of(spec, "run")
    return await execute(spec, files, earlier=earlier, checkpoint=checkpoint, listeners=watchers,
                         rows_total=rows_total, columns=prepared.columns, metrics=metrics, save_metrics=save)


async def _metrics_of(spec: JobSpec, name: str) -> tuple[Recorder, Any]:
    """The run's metrics as an earlier run left them (a resume carries on), and how to save them."""
    out = storage_for(spec.output)
    recorder = await asyncio.to_thread(read_metrics, out, spec.output, name) or Recorder()

    async def save(current: Recorder) -> None:
        await asyncio.to_thread(write_metrics, out, spec.output, current, name)

    return recorder, save


@flow(name="promptbatch-shard")
async def run_shard(job: str | dict[str, Any], index: int, count: int, input: str | None = None,
                    output: str | None = None, endpoint_url: str | None = None,
                    retry_errors: bool = False) -> dict[str, Any]:
    """One slice of a scaled-out job: the shards numbered ``index`` modulo ``count``.

    Started by ``run_batch`` (``workers`` > 1) on whichever Prefect worker is free; sends
    within the deployments' shared quotas and writes a note of what it did into the
    output folder (``_shards/``) for ``run_batch`` to read.
    """
    guard_stdlib_logs()
    spec = load_spec(job, input=input, output=output, endpoint_url=endpoint_url)
    files = list_inputs(spec)
    out = storage_for(spec.output)
    previous = read_manifest(out, spec.output)
    if previous is None or previous.get("job_hash") != spec.job_hash():
        raise JobError(f"{redact_location(spec.output)}: not prepared for this job (run it through run_batch)")
    changes = input_changes(previous, fingerprints(spec, files))
    progress = read_earlier(out, spec.output, previous.get("shard_rows", spec.shard_rows), previous, files=files,
                            inputs_unchanged=not changes, job_hash=spec.job_hash(), retry_errors=retry_errors)
    columns = decide_columns(spec, files, previous, inputs_unchanged=True)
    return (await process_slice(spec, files, progress, index, count, columns)).to_json()


@task(name="process-slice", cache_policy=NO_CACHE)
async def process_slice(spec: JobSpec, files: list[str], progress: Earlier, index: int,
                        count: int, columns: InputSchema | None = None) -> SliceNote:
    """``process_rows`` for one slice, holding a share of each deployment's quota; returns its note."""
    from prefect.client.orchestration import get_client

    from flows.shared_quota import Holder, shared_names

    worker = worker_name()
    log.info("slice_started", index=index, count=count, worker=worker)
    metrics, save = await _metrics_of(spec, f"slice-{index}-of-{count}")
    async with get_client() as client:
        holders = [Holder(client, shared_names(e)) for e in spec.all_endpoints]
        layout = progress.layout.slice(index, count)
        execution = await execute(spec, files, earlier=progress, layout=layout,
                                  metrics=metrics, save_metrics=save,
                                  shares=holders,
                                  listeners=[ArtifactProgress(key=f"{PROGRESS_KEY}-{index}-of-{count}")],
                                  columns=columns)
    note = SliceNote.of(execution, worker, units_handed_over=sum(x.released for x in holders))
    out = storage_for(spec.output)
    await asyncio.to_thread(out.write_bytes, out.join(spec.output, f"{SHARD_NOTES}/{index}-of-{count}.json"),
                            json.dumps(note.to_json()).encode())
    log.info("slice_finished", index=index, worker=worker, rows_sent=note.rows_sent, stopped=note.stopped)
    return note


async def scale_out(spec: JobSpec, files: list[str], progress: Earlier, workers: int, shard_deployment: str, *,
                     retry_errors: bool) -> list[SliceNote]:
    """Slice 0 here, slices 1…n-1 as flow runs of ``shard_deployment``; every slice's note.

    This run works a slice itself rather than wait idle: on a pool of n workers of one
    flow run each, the n slices then take one worker each.
    """
    from prefect.deployments import arun_deployment

    from flows.shared_quota import ensure_shared_limits

    await ensure_shared_limits(spec.all_endpoints)
    job = spec.model_dump(mode="json", exclude_none=True)
    children = asyncio.gather(*(
        arun_deployment(shard_deployment, parameters={"job": job, "index": i, "count": workers,
                                                      "retry_errors": retry_errors},
                        timeout=None, poll_interval=2, as_subflow=True)
        for i in range(1, workers)))
    previous = read_manifest(storage_for(spec.output), spec.output)
    columns = decide_columns(spec, files, previous, inputs_unchanged=True)
    own, runs = await asyncio.gather(process_slice(spec, files, progress, 0, workers, columns), children)
    failed = [r for r in runs if r.state is None or not r.state.is_completed()]
    if failed:
        names = ", ".join(f"{r.name} ({r.state.name if r.state else 'unknown'})" for r in failed)
        raise JobError(f"shard runs did not complete: {names}; what they finished is kept: run the job again")
    out = storage_for(spec.output)
    return [own] + [SliceNote.from_json(json.loads(out.read_bytes(
        out.join(spec.output, f"{SHARD_NOTES}/{i}-of-{workers}.json")))) for i in range(1, workers)]
