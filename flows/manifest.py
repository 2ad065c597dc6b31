"""``_manifest.json``: what an output folder holds, and which job it belongs to.

It is written when a run starts (``status: running``), again after every part is
published, and at the end (``complete``, or ``stopped`` with the reason). Its
``job_hash`` ties the folder to one job: a run whose prompt, params or model differ
is refused instead of mixing two jobs' rows (``--overwrite`` discards the old ones).
``input_fingerprints`` say what the inputs were (size and mtime on disk; size, ETag and
last-modified in Blob): a run over a complete output whose inputs are still exactly
those sends nothing. Totals are always summed from the parts' summaries (and, while
the job is unfinished, from the journal's rows), never counted separately.

The parts are the truth: a manifest that is missing or unreadable is rebuilt from the
parts' own metadata and the journal's segment names (with a warning), never a reason
to pay for the rows again.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import structlog

from flows.journal import FOLDER as JOURNAL_FOLDER
from flows.journal import journal_segments, segment_job_hash
from flows.parts import META_JOB_HASH, META_SHARD_ROWS, PartSummary, part_shard
from flows.storage import Storage, read_json_object, redact_location
from schemas import STATUSES, InputSchema, JobSpec

if TYPE_CHECKING:
    from flows.execution import Ran

MANIFEST = "_manifest.json"
#: Where the slices of a scaled-out run leave their notes, in the output folder.
SHARD_NOTES = "_shards"


log = structlog.get_logger(__name__)


class OutputInUseError(ValueError):
    """The output folder holds another job's results."""


def build_manifest(spec: JobSpec, inputs: list[str], parts: list[PartSummary], *, status: str, shard_rows: int,
                   wall_time_s: float, fingerprints: list[dict[str, Any]] | None = None, run_date: str | None = None,
                   columns: InputSchema | None = None, ran: Ran | None = None,
                   reconciled: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job's totals, summed from its parts — the one place a manifest is made.

    While a run goes, from its published parts; at its end, from what its slices did
    (``ran``: the input's length, why it stopped, bad input, finished rows still in the
    journal, what was learned of the quotas, which worker did which shards).
    ``columns``: the passthrough columns every part has (``passthrough``), reused by later
    runs. ``reconciled``: what matching an edited input's rows by identity did.
    """
    pending = ran.pending if ran is not None else None
    parts = sorted(parts, key=lambda p: p.shard)
    counted = parts + ([pending] if pending is not None else [])
    by_status = {s: sum(p.by_status.get(s, 0) for p in counted) for s in STATUSES}
    if spec.response is None and not by_status["invalid"]:  # only labeling jobs' answers can be invalid
        del by_status["invalid"]
    by_model: Counter[str] = Counter()
    for p in counted:
        by_model.update(p.cost_by_model)
    prompt = sum(p.prompt_tokens for p in counted)
    completion = sum(p.completion_tokens for p in counted)
    done = sum(by_status.values())
    labels: dict[str, Counter[str]] = {}
    for p in counted:
        for column, values in (p.labels or {}).items():
            labels.setdefault(column, Counter()).update(values)
    manifest: dict[str, Any] = {
        "status": status,
        "job_hash": spec.job_hash(),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "output": redact_location(spec.output),
        "inputs": [redact_location(i) for i in inputs],
        "shard_rows": shard_rows,
        "models": sorted({e.model for e in spec.all_endpoints}),
        "prices_as_of": spec.prices_as_of(),
        "rows": {"total": done, **by_status},
        "tokens": {"prompt": prompt, "completion": completion, "total": prompt + completion},
        "cost_usd": {"total": round(sum(p.cost_usd for p in counted), 6),
                     "by_model": {m: round(c, 6) for m, c in sorted(by_model.items())}},
        "wall_time_s": round(wall_time_s, 3),
        "parts": [asdict(p) for p in parts],
    }
    duplicates = sum(p.duplicates for p in counted)
    if duplicates:
        manifest["duplicates"] = duplicates
    if labels:
        manifest["labels"] = {column: dict(sorted(values.items())) for column, values in labels.items()}
    if run_date is not None:
        manifest["date"] = run_date
    if columns is not None:
        manifest["passthrough"] = columns.to_json()
    if fingerprints is not None:
        manifest["input_fingerprints"] = fingerprints
    if ran is not None:
        manifest.update(_ran(ran))
    if reconciled:
        manifest["reconciled"] = reconciled
    return manifest


def _ran(ran: Ran) -> dict[str, Any]:
    """The manifest's entries of what the run's slices did."""
    entries: dict[str, Any] = {}
    if ran.pending is not None:
        entries["journaled_rows"] = ran.pending.rows
    if ran.input_rows is not None:
        entries["input_rows"] = ran.input_rows
    if ran.stopped is not None:
        entries["stopped"] = ran.stopped
    if ran.bad_input_rows:
        entries["bad_input"] = {"rows": ran.bad_input_rows, "first": ran.bad_input}
    if ran.empty_inputs:
        entries["empty_inputs"] = ran.empty_inputs
    if ran.by_worker:
        entries["workers"] = ran.by_worker
    if ran.quota_learned:
        entries["quota_learned"] = ran.quota_learned
    return entries


def write_manifest(storage: Storage, folder: str, manifest: dict[str, Any]) -> str:
    """Publish ``_manifest.json`` atomically; return its location."""
    location = storage.join(folder, MANIFEST)
    storage.write_bytes(location, json.dumps(manifest, indent=2).encode())
    return location


def read_manifest(storage: Storage, folder: str) -> dict[str, Any] | None:
    """The folder's manifest; ``None`` when there is none or it cannot be read (torn, not JSON)."""
    location = storage.join(folder, MANIFEST)

    def unreadable() -> None:
        log.warning("manifest_unreadable", manifest=redact_location(location),
                    action="rebuilt from the parts and the journal")

    manifest = read_json_object(storage, location, unreadable=unreadable)
    if manifest is not None and "job_hash" not in manifest:
        unreadable()
        return None
    return manifest


def ours(name: str) -> bool:
    """Whether a file in an output folder is one promptbatch writes (its lease aside)."""
    return (name == MANIFEST or part_shard(name) is not None
            or name.startswith((JOURNAL_FOLDER + "/", SHARD_NOTES + "/")))


def rebuild_manifest(storage: Storage, folder: str, names: list[str]) -> dict[str, Any] | None:
    """What the parts and the journal say of the job that wrote them, when the manifest is gone.

    The job hash and shard size come from the parts' Parquet metadata or the journal
    segments' names; ``None`` when nothing there says (files of an older promptbatch).
    """
    hashes: set[str] = set()
    shard_rows: set[int] = set()
    parts = [n for n in names if part_shard(n) is not None]
    for name in parts:
        meta = pq.read_schema(io.BytesIO(storage.read_bytes(storage.join(folder, name)))).metadata or {}
        if META_JOB_HASH in meta:
            hashes.add(meta[META_JOB_HASH].decode())
        if META_SHARD_ROWS in meta:
            shard_rows.add(int(meta[META_SHARD_ROWS]))
    for name in journal_segments(storage, folder):
        found = segment_job_hash(name)
        if found:
            hashes.add(found)
    if len(hashes) != 1 or len(shard_rows) > 1:
        return None
    rebuilt: dict[str, Any] = {"status": "running", "job_hash": hashes.pop(), "rebuilt": True, "parts": []}
    if shard_rows:
        rebuilt["shard_rows"] = shard_rows.pop()
    log.warning("manifest_rebuilt", output=redact_location(folder), parts=len(parts),
                journal_segments=len(journal_segments(storage, folder)))
    return rebuilt


def claim_output(storage: Storage, spec: JobSpec, inputs: list[str], *, overwrite: bool) -> dict[str, Any] | None:
    """Check that the output folder is free for this job or holds this job's results.

    Returns the existing manifest (or one rebuilt from the parts) when the folder holds
    an earlier run of the same job (the run resumes it), ``None`` when it starts fresh.
    Raises ``OutputInUseError`` naming what differs; ``overwrite`` deletes our files
    from the folder first. A changed input set is reconciled row by row as long as it
    shares a file with the earlier one; a wholly different one is refused.
    """
    where = redact_location(spec.output)
    names = [n for n in storage.list_names(spec.output) if ours(n)]
    if overwrite:
        for name in names:
            storage.delete(storage.join(spec.output, name))
        return None
    if not names:
        return None
    manifest = read_manifest(storage, spec.output) or rebuild_manifest(storage, spec.output, names)
    advice = "choose another --output, or pass --overwrite to discard them"
    if manifest is None:
        raise OutputInUseError(f"{where} holds parts but no {MANIFEST}, and they do not say which job wrote "
                               f"them; {advice}")
    if manifest.get("job_hash") != spec.job_hash():
        raise OutputInUseError(
            f"{where} holds results of a different job (job hash {manifest.get('job_hash')}, this job "
            f"{spec.job_hash()}: its prompt, params or model changed); {advice}")
    before = manifest.get("inputs")
    now = [redact_location(i) for i in inputs]
    if before and not set(before) & set(now):
        raise OutputInUseError(f"{where} holds results for other input files ({', '.join(before)}; "
                               f"this run reads {', '.join(now)}); {advice}")
    return manifest


def input_changes(manifest: dict[str, Any] | None, fingerprints: list[dict[str, Any]]) -> list[str]:
    """What changed in the inputs since the manifest was written, one phrase per file; ``[]``: nothing."""
    if manifest is None:
        return []
    before = {f["location"]: f for f in manifest.get("input_fingerprints", [])}
    if not before:
        return ["the earlier run recorded no fingerprints"]
    changes = []
    now = {f["location"]: f for f in fingerprints}
    for location, print_now in now.items():
        old = before.get(location)
        if old is None:
            changes.append(f"{location} is new")
        elif old != print_now:
            what = ", ".join(f"{k} {old.get(k)} -> {print_now.get(k)}" for k in sorted(set(old) | set(print_now))
                             if k != "location" and old.get(k) != print_now.get(k))
            changes.append(f"{location} changed ({what})")
    changes += [f"{location} is gone" for location in before if location not in now]
    return changes
