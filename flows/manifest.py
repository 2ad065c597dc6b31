"""``_manifest.json``: what an output folder holds, and which job it belongs to.

It is written when a run starts (``status: running``), again after every part is
published, and at the end (``complete``, or ``stopped`` with the reason). Its
``job_hash`` ties the folder to one job: a run whose prompt, params or model differ
is refused instead of mixing two jobs' rows (``--overwrite`` discards the old ones).
Totals are always summed from the parts' summaries, never counted separately.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

from flows.journal import FOLDER as JOURNAL_FOLDER
from flows.parts import PartSummary, part_shard
from flows.storage import Storage, redact_location
from schemas import PRICES_AS_OF, STATUSES, JobSpec

MANIFEST = "_manifest.json"
#: Where the slices of a scaled-out run leave their notes, in the output folder.
SHARD_NOTES = "_shards"


class OutputInUseError(ValueError):
    """The output folder holds another job's results."""


def build_manifest(spec: JobSpec, inputs: list[str], parts: list[PartSummary], *, status: str, shard_rows: int,
                   wall_time_s: float, total_rows: int | None = None, stopped: str | None = None,
                   bad_input: list[str] | None = None, bad_input_rows: int = 0) -> dict[str, Any]:
    """The job's totals, summed from its parts, with what produced them."""
    parts = sorted(parts, key=lambda p: p.shard)
    by_status = {s: sum(p.by_status.get(s, 0) for p in parts) for s in STATUSES}
    by_model: Counter[str] = Counter()
    for p in parts:
        by_model.update(p.cost_by_model)
    prompt = sum(p.prompt_tokens for p in parts)
    completion = sum(p.completion_tokens for p in parts)
    done = sum(by_status.values())
    manifest: dict[str, Any] = {
        "status": status,
        "job_hash": spec.job_hash(),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": [redact_location(i) for i in inputs],
        "shard_rows": shard_rows,
        "models": sorted({e.model for e in spec.all_endpoints}),
        "prices_as_of": PRICES_AS_OF.isoformat(),
        "rows": {"total": done, **by_status},
        "tokens": {"prompt": prompt, "completion": completion, "total": prompt + completion},
        "cost_usd": {"total": round(sum(p.cost_usd for p in parts), 6),
                     "by_model": {m: round(c, 6) for m, c in sorted(by_model.items())}},
        "wall_time_s": round(wall_time_s, 3),
        "parts": [asdict(p) for p in parts],
    }
    if total_rows is not None:
        manifest["input_rows"] = total_rows
    if stopped is not None:
        manifest["stopped"] = stopped
    if bad_input_rows:
        manifest["bad_input"] = {"rows": bad_input_rows, "first": bad_input or []}
    return manifest


def write_manifest(storage: Storage, folder: str, manifest: dict[str, Any]) -> str:
    """Publish ``_manifest.json`` atomically; return its location."""
    location = storage.join(folder, MANIFEST)
    storage.write_bytes(location, json.dumps(manifest, indent=2).encode())
    return location


def read_manifest(storage: Storage, folder: str) -> dict[str, Any] | None:
    """The folder's manifest, or ``None`` when there is none."""
    location = storage.join(folder, MANIFEST)
    if not storage.exists(location):
        return None
    manifest: dict[str, Any] = json.loads(storage.read_bytes(location))
    return manifest


def ours(name: str) -> bool:
    """Whether a file in an output folder is one promptbatch writes."""
    return (name == MANIFEST or part_shard(name) is not None
            or name.startswith((JOURNAL_FOLDER + "/", SHARD_NOTES + "/")))


def claim_output(storage: Storage, spec: JobSpec, inputs: list[str], *, overwrite: bool) -> dict[str, Any] | None:
    """Check that the output folder is free for this job or holds this job's results.

    Returns the existing manifest when the folder holds an earlier run of the same job
    (the run resumes it), ``None`` when it starts fresh. Raises ``OutputInUseError``
    naming what differs; ``overwrite`` deletes our files from the folder first.
    """
    where = redact_location(spec.output)
    names = [n for n in storage.list_names(spec.output) if ours(n)]
    if overwrite:
        for name in names:
            storage.delete(storage.join(spec.output, name))
        return None
    if not names:
        return None
    manifest = read_manifest(storage, spec.output)
    advice = "choose another --output, or pass --overwrite to discard them"
    if manifest is None:
        raise OutputInUseError(f"{where} holds parts but no {MANIFEST}: they are not this job's; {advice}")
    if manifest.get("job_hash") != spec.job_hash():
        raise OutputInUseError(
            f"{where} holds results of a different job (job hash {manifest.get('job_hash')}, this job "
            f"{spec.job_hash()}: its prompt, params or model changed); {advice}")
    if manifest.get("inputs") != [redact_location(i) for i in inputs]:
        others = ", ".join(manifest.get("inputs", []))
        raise OutputInUseError(f"{where} holds results for other input files ({others}); {advice}")
    return manifest
