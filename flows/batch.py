"""The Prefect flow ``run_batch``: a job file in, a folder of Parquet parts and a manifest out.

    list_inputs      which files the job's ``input`` names, and their fingerprints (task, retried)
    prepare_output   claim the output folder; read what earlier runs finished (task, retried)
    process_rows     stream the rows still to do → worker pool → journal and parts (task)
    publish_manifest totals summed from the parts (task, retried); then ``latest.json``

A job whose locations name the date (``{date}``) is resolved first, for the run's date
(``flows.schedule``). The run holds the output folder's lease (``flows.lease``) from
before it reads the folder until it is done: a second run of the same output exits at
once naming the holder. A run over an output that is complete for exactly these
inputs sends nothing and says it is already complete.

The pool runs inside one async task on the flow's event loop: its limiters belong to
that loop. Deployment keys are read from the environment inside the task, never
passed as parameters, and registered for redaction before anything logs.

Scale-out (``workers`` = n > 1): the job's shards are dealt into n slices (shard i to
slice i mod n). The flow works slice 0 itself and starts n-1 runs of the
``promptbatch-shard`` deployment (``run_shard``) for the others; whichever Prefect
workers pick them up, every slice draws on the same deployment quotas through the
Prefect server's global concurrency limits (``flows.shared_quota``). Each leaves a note
of what it did in ``_shards/`` of the output folder; the flow then sums the parts.

Every run leaves a progress artifact (``promptbatch-progress``, updated as rows
finish) and, at the end, a markdown summary (``promptbatch-summary``) on its flow run.
It records its metrics as it goes (``flows.watch``, ``_metrics/`` in the output folder)
and ends by writing ``_report.html`` there (``flows.report``), which the summary links.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from prefect import flow, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.inputs import count_rows, input_format, scan_columns
from flows.lease import OutputLease, holder_info
from flows.locations import output_problem, resolved, without_output
from flows.logs import guard_stdlib_logs
from flows.manifest import (
    JOURNAL_FOLDER,
    SHARD_NOTES,
    OutputInUseError,
    build_manifest,
    claim_output,
    input_changes,
    read_manifest,
    write_manifest,
)
from flows.metrics import Recorder, clear_metrics, read_metrics, write_metrics
from flows.parts import PartSummary, conform_parts, drop_parts_beyond
from flows.pipeline import BAD_INPUT_LISTED, Execution, JobError, JobStoppedError, Listener, execute, part_columns
from flows.progress import PROGRESS_KEY, SUMMARY_KEY, ArtifactProgress, summary_markdown
from flows.progress import listeners as progress_listeners
from flows.report import write_report
from flows.resume import RETRIED, Earlier, read_earlier
from flows.schedule import RunDateError, publish_pointer, run_date
from flows.storage import Storage, StorageError, redact_location, storage_for
from schemas import InputSchema, JobSpec, PassthroughError, job_from_dict, parse_job

log = structlog.get_logger(__name__)

#: The deployment ``run_batch`` starts a scaled-out job's slices on (``prefect.yaml``).
SHARD_DEPLOYMENT = "promptbatch-shard/shard"


def load_spec(job: str | dict[str, Any], *, input: str | None = None, output: str | None = None,
              endpoint_url: str | None = None) -> JobSpec:
    """A job from a YAML file's path or an inline mapping, with the CLI's overrides applied."""
    if isinstance(job, dict):
        spec = job_from_dict(job)
    else:
        path = Path(job).expanduser()
        if not path.is_file():
            raise JobError(f"{job}: no such job file")
        spec = parse_job(path.read_text(), source=str(job))
    return resolved(spec.with_overrides(input=input, output=output, endpoint_url=endpoint_url))


def _transient(_task: Any, _run: Any, state: Any) -> bool:
    """Retry a task for storage trouble only: a wrong job or a refused folder fails at once."""
    return isinstance(state.data, StorageError | OSError)


@task(name="list-inputs", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
def list_inputs(spec: JobSpec) -> list[str]:
    """The prompt files the job's ``input`` names, in order."""
    files = without_output(storage_for(spec.input).expand(spec.input), spec.output)
    if not files:
        raise JobError(f"{redact_location(spec.input)}: no prompt files there")
    for location in files:
        input_format(location)
    return files


def fingerprints(spec: JobSpec, files: list[str]) -> list[dict[str, Any]]:
    """What identifies each input file's content now (see ``Storage.fingerprint``)."""
    store = storage_for(spec.input)
    return [{"location": redact_location(f), **store.fingerprint(f)} for f in files]


@dataclass
class Prepared:
    """The output folder claimed: what earlier runs left, and what the manifest is to record."""

    earlier: Earlier
    #: The input fingerprints the manifest records while the job is unfinished (see ``prepare_output``).
    fingerprints: list[dict[str, Any]] | None
    #: The current fingerprints, recorded once the job is complete.
    current: list[dict[str, Any]] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    #: The earlier manifest, when it is complete for exactly these inputs: nothing to do.
    complete: dict[str, Any] | None = None
    #: The output's passthrough columns, the same in every part (``schemas.passthrough``).
    columns: InputSchema = field(default_factory=InputSchema)


def decide_columns(spec: JobSpec, files: list[str], previous: dict[str, Any] | None,
                   inputs_unchanged: bool) -> InputSchema:
    """The passthrough columns: the manifest's while the input is unchanged, else read from the input."""
    recorded = (previous or {}).get("passthrough")
    if recorded and inputs_unchanged:
        return InputSchema.from_json(recorded)
    try:
        return scan_columns(storage_for(spec.input), files)
    except PassthroughError as exc:
        raise JobError(f"{redact_location(spec.input)}: {exc}") from None


@task(name="prepare-output", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=_transient)
def prepare_output(spec: JobSpec, files: list[str], retry_errors: bool, overwrite: bool,
                   day: str | None = None) -> Prepared:
    """Claim the output folder for this job and read what earlier runs finished there.

    While a reconciliation is unfinished the manifest keeps the *earlier* fingerprints:
    the parts it has not rebuilt yet answer the earlier input, so the next run must look
    at the input again rather than trust them.
    """
    out = storage_for(spec.output)
    try:
        previous = claim_output(out, spec, files, overwrite=overwrite)
    except OutputInUseError as exc:
        raise JobError(str(exc)) from None
    current = fingerprints(spec, files)
    changes = input_changes(previous, current)
    shard_rows = previous.get("shard_rows", spec.shard_rows) if previous else spec.shard_rows
    if previous is None:
        clear_metrics(out, spec.output)  # another job's, or a deleted output's: not this run's story
    if previous is not None and not changes and previous.get("status") == "complete" and not (
            retry_errors and any(previous["rows"].get(status, 0) for status in RETRIED)):
        return Prepared(Earlier(shard_rows), current, current, complete=previous)
    if changes:
        log.warning("inputs_changed", changes=changes, action="rows are matched by id and content")
    columns = decide_columns(spec, files, previous, inputs_unchanged=not changes)
    part_columns(spec, columns)  # an input column named like a label column stops the job here
    earlier = read_earlier(out, spec.output, shard_rows, previous, files=files, inputs_unchanged=not changes,
                           job_hash=spec.job_hash(), retry_errors=retry_errors)
    if earlier.kept and (previous or {}).get("passthrough") != columns.to_json():
        conform_parts(out, spec.output, list(earlier.kept), part_columns(spec, columns))
    trusted = current if previous is None or not earlier.rebuilt else (previous or {}).get("input_fingerprints")
    write_manifest(out, spec.output, build_manifest(spec, files, list(earlier.kept.values()), status="running",
                                                    shard_rows=shard_rows, wall_time_s=0.0, fingerprints=trusted,
                                                    run_date=day, columns=columns))
    return Prepared(earlier, trusted, current, changes, columns=columns)


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
    return await execute(spec, files, progress=earlier, checkpoint=checkpoint, listeners=watchers,
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
    return await process_slice(spec, files, progress, index, count, columns)


@task(name="process-slice", cache_policy=NO_CACHE)
async def process_slice(spec: JobSpec, files: list[str], progress: Earlier, index: int,
                        count: int, columns: InputSchema | None = None) -> dict[str, Any]:
    """``process_rows`` for one slice, its quota leased from the Prefect server; returns its note."""
    from prefect.client.orchestration import get_client

    from flows.shared_quota import Leaser, shared_limits

    worker = os.environ.get("PREFECT__WORKER_NAME") or f"{socket.gethostname()}:{os.getpid()}"
    log.info("slice_started", index=index, count=count, worker=worker)
    metrics, save = await _metrics_of(spec, f"slice-{index}-of-{count}")
    async with get_client() as client:
        leasers = [Leaser(client, shared_limits(e)) for e in spec.all_endpoints]
        layout = progress.layout.slice(index, count)
        execution = await execute(spec, files, progress=progress, layout=layout,
                                  metrics=metrics, save_metrics=save,
                                  credits=[leaser.credit() for leaser in leasers],
                                  learners=[leaser.learned for leaser in leasers],
                                  listeners=[ArtifactProgress(key=f"{PROGRESS_KEY}-{index}-of-{count}")],
                                  columns=columns)
    note = {
        "index": index, "count": count, "worker": worker, "input_rows": execution.reading.rows,
        "shards": sorted(p.shard for p in execution.parts if layout.owns(p.shard)),
        "rows_sent": execution.tally.rows, "stopped": execution.stopped, "reused_rows": execution.reused_rows,
        "quota_learned": execution.quota_learned(),
        "bad_input": execution.bad_input, "bad_input_rows": execution.bad_input_rows,
        "empty_inputs": execution.reading.empty_files, "lease_refusals": sum(x.refused for x in leasers),
    }
    out = storage_for(spec.output)
    await asyncio.to_thread(out.write_bytes, out.join(spec.output, f"{SHARD_NOTES}/{index}-of-{count}.json"),
                            json.dumps(note).encode())
    log.info("slice_finished", **{k: note[k] for k in ("index", "worker", "rows_sent", "stopped")})
    return note


async def _scale_out(spec: JobSpec, files: list[str], progress: Earlier, workers: int, shard_deployment: str, *,
                     retry_errors: bool) -> list[dict[str, Any]]:
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
    return [own] + [json.loads(out.read_bytes(out.join(spec.output, f"{SHARD_NOTES}/{i}-of-{workers}.json")))
                    for i in range(1, workers)]


@task(name="publish-manifest", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=_transient)
def publish_manifest(spec: JobSpec, manifest: dict[str, Any]) -> str:
    """Write ``_manifest.json`` into the output folder."""
    return write_manifest(storage_for(spec.output), spec.output, manifest)


@flow(name="promptbatch-run")
async def run_batch(job: str | dict[str, Any], input: str | None = None, output: str | None = None,
                    endpoint_url: str | None = None, retry_errors: bool = False,
                    overwrite: bool = False, workers: int = 1,
                    shard_deployment: str = SHARD_DEPLOYMENT, date: str | None = None) -> dict[str, Any]:
    """Run a job: every input row ends as one output row with a status; returns the manifest's totals.

    Re-running with the same output finishes what an earlier run left undone (rows are
    matched by identity, so an edited input is reconciled); ``retry_errors`` also sends
    again the rows that ended in ``error``; ``overwrite`` discards an earlier job's
    results. ``date`` (``YYYY-MM-DD``) is the day ``{date}`` placeholders name (default:
    the scheduled day, see ``flows.schedule``). A run stopped by a signal or by the budget
    publishes what finished and raises ``JobStoppedError``. ``workers`` > 1 spreads the
    job's shards over that many runs of ``shard_deployment`` (see the module docstring).
    """
    started = time.monotonic()
    guard_stdlib_logs()
    if workers < 1:
        raise JobError("workers must be 1 or more")
    template = load_spec(job, input=input, output=output, endpoint_url=endpoint_url)
    try:
        day = await run_date(date)
    except RunDateError as exc:
        raise JobError(str(exc)) from None
    spec = template.on_date(day)
    problem = output_problem(spec.output)
    if problem is not None:
        raise JobError(problem)
    files = list_inputs(spec)
    with _lease(spec):
        prepared = prepare_output(spec, files, retry_errors, overwrite, day.isoformat())
        if prepared.complete is not None:
            return _already_complete(template, spec, day, prepared.complete)
        summary = await _run(spec, files, prepared, day.isoformat(), workers, shard_deployment, started,
                             retry_errors=retry_errors)
        if template.dated:
            await asyncio.to_thread(publish_pointer, template.output, spec.output, day, summary)
    return summary


def _lease(spec: JobSpec) -> OutputLease:
    """The output folder's lease for this flow run (a Prefect retry of the run takes its own lease back)."""
    from prefect.runtime import flow_run

    run_id = str(flow_run.id) if flow_run.id else None
    lease_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"promptbatch:{run_id}")) if run_id else None
    return OutputLease(storage_for(spec.output), spec.output, holder_info(run_id), lease_id=lease_id)


def _already_complete(template: JobSpec, spec: JobSpec, day: Any, manifest: dict[str, Any]) -> dict[str, Any]:
    """Nothing to send: the output is complete for exactly these inputs."""
    location = storage_for(spec.output).join(spec.output, "_manifest.json")
    log.info("already_complete", output=redact_location(spec.output), rows=manifest["rows"])
    if template.dated:
        publish_pointer(template.output, spec.output, day, manifest)
    return {"output": redact_location(spec.output), "manifest": redact_location(location), "already_complete": True,
            **{k: v for k, v in manifest.items() if k not in ("parts", "reconciled")}}


async def _run(spec: JobSpec, files: list[str], prepared: Prepared, day: str, workers: int, shard_deployment: str,
               started: float, *, retry_errors: bool) -> dict[str, Any]:
    """Process what is left, publish the manifest and the summary artifact; the manifest's totals."""
    progress = prepared.earlier
    log.info("job_started", inputs=len(files), output=redact_location(spec.output), job_hash=spec.job_hash(),
             endpoints=[e.url for e in spec.all_endpoints], rows_already_done=progress.rows, workers=workers,
             date=day, inputs_changed=prepared.changes or None)
    out = storage_for(spec.output)
    by_worker: dict[str, list[int]] = {}
    learned: dict[str, Any] = {}
    pending = None
    reused = dropped = 0
    if workers == 1:
        execution = await process_rows(spec, files, prepared, day)
        parts, stopped, total_rows = execution.parts, execution.stopped, execution.reading.rows
        bad_input, bad_input_rows = execution.bad_input, execution.bad_input_rows
        empty_inputs, pending = execution.reading.empty_files, execution.pending
        reused, dropped = execution.reused_rows, execution.dropped_rows
        learned = execution.quota_learned()
    else:
        notes = await _scale_out(spec, files, progress, workers, shard_deployment, retry_errors=retry_errors)
        previous = read_manifest(out, spec.output)
        after = read_earlier(out, spec.output, progress.shard_rows, previous, files=files, inputs_unchanged=True,
                             job_hash=spec.job_hash(), retry_errors=False)
        parts = sorted(after.kept.values(), key=lambda p: p.shard)
        stopped = next((n["stopped"] for n in notes if n["stopped"]), None)
        total_rows = notes[0]["input_rows"]
        bad_input = [line for n in notes for line in n["bad_input"]][:BAD_INPUT_LISTED]
        bad_input_rows = sum(n["bad_input_rows"] for n in notes)
        empty_inputs = notes[0]["empty_inputs"]
        reused = sum(n.get("reused_rows", 0) for n in notes)
        for n in notes:
            learned.update(n.get("quota_learned") or {})
        for n in notes:
            by_worker.setdefault(n["worker"], []).extend(n["shards"])
        if stopped is None:
            await asyncio.to_thread(_clear_scratch, out, spec.output)
    if stopped is None and total_rows is not None:
        await asyncio.to_thread(drop_parts_beyond, out, spec.output, total_rows, progress.layout)
    status = "stopped" if stopped else "complete"
    manifest = build_manifest(spec, files, parts, status=status, shard_rows=progress.shard_rows,
                              wall_time_s=time.monotonic() - started, total_rows=total_rows,
                              stopped=stopped, bad_input=bad_input, bad_input_rows=bad_input_rows,
                              fingerprints=prepared.current if status == "complete" else prepared.fingerprints,
                              pending=pending, run_date=day, columns=prepared.columns)
    if empty_inputs:
        manifest["empty_inputs"] = empty_inputs
        log.warning("empty_inputs", files=empty_inputs)
    if by_worker:
        manifest["workers"] = {name: sorted(shards) for name, shards in sorted(by_worker.items())}
    if learned:
        manifest["quota_learned"] = learned
    if prepared.changes:
        manifest["reconciled"] = {"changes": prepared.changes, "answers_reused": reused,
                                  "answers_dropped": dropped, "parts_rebuilt": len(progress.rebuilt)}
    location = publish_manifest(spec, manifest)
    report = await asyncio.to_thread(_report, out, spec.output, manifest)
    await acreate_markdown_artifact(markdown=summary_markdown(manifest, report), key=SUMMARY_KEY,
                                    description="promptbatch run: outcomes, cost and its report")
    summary = {"output": redact_location(spec.output), "manifest": redact_location(location),
               **{k: v for k, v in manifest.items() if k != "parts"}}
    if report is not None:
        summary["report"] = report[0]
    if stopped:
        raise JobStoppedError(stopped, summary)
    log.info("job_finished", manifest=redact_location(location), rows=manifest["rows"],
             cost_usd=manifest["cost_usd"]["total"])
    return summary


def _report(out: Storage, output: str, manifest: dict[str, Any]) -> tuple[str, str] | None:
    """Write the run's ``_report.html``; its location and compact text (``None`` if it could not be written)."""
    try:
        where, text = write_report(out, output, manifest)
    except Exception as exc:  # the report must never fail a run whose rows are all in
        log.warning("report_not_written", error=repr(exc))
        return None
    log.info("report_written", report=where)
    return where, text


def _clear_scratch(out: Storage, output: str) -> None:
    """After a complete scaled-out run: the slices' notes and any journal segment left behind."""
    for name in out.list_names(output):
        if name.startswith((SHARD_NOTES + "/", JOURNAL_FOLDER + "/")):
            out.delete(out.join(output, name))
