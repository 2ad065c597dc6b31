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

Scale-out (``workers`` = n > 1) runs the job's shards as n slices (``flows.slices``); a
job run alone is the one-slice case, and either way the manifest is made from the
slices' notes.

Every run leaves a progress artifact (``promptbatch-progress``, updated as rows
finish) and, at the end, a markdown summary (``promptbatch-summary``) on its flow run.
It records its metrics as it goes (``flows.watch``, ``_metrics/`` in the output folder)
and ends by writing ``_report.html`` there (``flows.report``), which the summary links.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import structlog
from prefect import flow, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.errors import JobError, JobStoppedError
from flows.execution import Ran, SliceNote
from flows.lease import OutputLease, holder_info
from flows.locations import output_problem
from flows.logs import guard_stdlib_logs
from flows.manifest import JOURNAL_FOLDER, SHARD_NOTES, build_manifest, read_manifest, write_manifest
from flows.parts import drop_parts_beyond
from flows.prepare import Prepared, list_inputs, load_spec, prepare_output, storage_trouble
from flows.progress import SUMMARY_KEY, summary_markdown
from flows.report import write_report
from flows.resume import read_earlier
from flows.schedule import RunDateError, publish_pointer, run_date
from flows.slices import process_rows, run_shard, scale_out, worker_name
from flows.storage import Storage, redact_location, storage_for
from schemas import JobSpec

__all__ = ["JobError", "JobStoppedError", "list_inputs", "load_spec", "prepare_output", "process_rows",
           "run_batch", "run_shard"]

log = structlog.get_logger(__name__)

#: The deployment ``run_batch`` starts a scaled-out job's slices on (``prefect.yaml``).
SHARD_DEPLOYMENT = "promptbatch-shard/shard"


@task(name="publish-manifest", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=storage_trouble)
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
    ran = await _slices(spec, files, prepared, day, workers, shard_deployment, retry_errors=retry_errors)
    out = storage_for(spec.output)
    if ran.stopped is None and ran.input_rows is not None:
        await asyncio.to_thread(drop_parts_beyond, out, spec.output, ran.input_rows, progress.layout)
    status = "stopped" if ran.stopped else "complete"
    reconciled = {"changes": prepared.changes, "answers_reused": ran.reused_rows, "answers_dropped": ran.dropped_rows,
                  "parts_rebuilt": len(progress.rebuilt)} if prepared.changes else None
    manifest = build_manifest(spec, files, ran.parts, status=status, shard_rows=progress.shard_rows,
                              wall_time_s=time.monotonic() - started,
                              fingerprints=prepared.current if status == "complete" else prepared.fingerprints,
                              run_date=day, columns=prepared.columns, ran=ran, reconciled=reconciled)
    if ran.empty_inputs:
        log.warning("empty_inputs", files=ran.empty_inputs)
    location = publish_manifest(spec, manifest)
    report = await asyncio.to_thread(_report, out, spec.output, manifest)
    await acreate_markdown_artifact(markdown=summary_markdown(manifest, report), key=SUMMARY_KEY,
                                    description="promptbatch run: outcomes, cost and its report")
    summary = {"output": redact_location(spec.output), "manifest": redact_location(location),
               **{k: v for k, v in manifest.items() if k != "parts"}}
    if report is not None:
        summary["report"] = report[0]
    if ran.stopped:
        raise JobStoppedError(ran.stopped, summary)
    log.info("job_finished", manifest=redact_location(location), rows=manifest["rows"],
             cost_usd=manifest["cost_usd"]["total"])
    return summary


async def _slices(spec: JobSpec, files: list[str], prepared: Prepared, day: str, workers: int,
                  shard_deployment: str, *, retry_errors: bool) -> Ran:
    """The job's rows run: here alone (one slice), or as ``workers`` slices; what every slice did."""
    if workers == 1:
        execution = await process_rows(spec, files, prepared, day)
        return Ran([SliceNote.of(execution, worker_name())], execution.parts, execution.pending)
    progress = prepared.earlier
    notes = await scale_out(spec, files, progress, workers, shard_deployment, retry_errors=retry_errors)
    out = storage_for(spec.output)
    after = read_earlier(out, spec.output, progress.shard_rows, read_manifest(out, spec.output), files=files,
                         inputs_unchanged=True, job_hash=spec.job_hash(), retry_errors=False)
    ran = Ran(notes, sorted(after.kept.values(), key=lambda p: p.shard))
    if ran.stopped is None:
        await asyncio.to_thread(_clear_scratch, out, spec.output)
    return ran


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
