"""A run's first steps: the job file read, its inputs listed, the output folder claimed.

``prepare_output`` reads what earlier runs left in the output folder (``flows.resume``),
decides the output's passthrough columns, and writes a ``running`` manifest before any
row is sent. Storage trouble is retried by Prefect; a wrong job or a refused folder
fails at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.errors import JobError
from flows.inputs import input_format, scan_columns
from flows.locations import resolved, without_output
from flows.manifest import OutputInUseError, build_manifest, claim_output, input_changes, write_manifest
from flows.metrics import clear_metrics
from flows.parts import conform_parts
from flows.pipeline import part_columns
from flows.resume import RETRIED, Earlier, read_earlier
from flows.storage import StorageError, redact_location, storage_for
from schemas import InputSchema, JobSpec, PassthroughError, job_from_dict, parse_job

log = structlog.get_logger(__name__)


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


def storage_trouble(_task: Any, _run: Any, state: Any) -> bool:
    """Retry a task for storage trouble only: a wrong job or a refused folder fails at once."""
    return isinstance(state.data, StorageError | OSError)


@task(name="list-inputs", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=storage_trouble)
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


@task(name="prepare-output", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=storage_trouble)
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
