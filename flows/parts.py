"""Results out: Parquet parts, one per shard of ``shard_rows`` input rows, and the manifest.

Rows finish out of order; each is held with its shard until every row of that shard
is in, then the shard is written as ``part-NNNNNN.parquet`` (sorted by input order)
and published atomically. ``_manifest.json`` holds the totals, summed from the parts.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.parquet as pq
import structlog

from flows.storage import Storage
from schemas import PRICES_AS_OF, STATUSES, JobSpec, Price, output_table
from workers import Outcome

log = structlog.get_logger(__name__)

MANIFEST = "_manifest.json"


@dataclass
class PartSummary:
    """What one published part holds."""

    name: str
    shard: int
    rows: int
    by_status: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cost_by_model: dict[str, float] = field(default_factory=dict)


class PartWriter:
    """Buffers outcomes by shard and publishes each shard once it is complete."""

    def __init__(self, storage: Storage, folder: str, shard_rows: int, price_of: Callable[[str], Price]):
        self._storage = storage
        self._folder = folder
        self._shard_rows = shard_rows
        self._price_of = price_of
        self._open: dict[int, list[dict[str, Any]]] = {}
        self._total_rows: int | None = None
        self.parts: list[PartSummary] = []

    async def add(self, outcome: Outcome) -> None:
        """Take one finished row; publish its shard if it was the last one missing."""
        shard = outcome.seq // self._shard_rows
        price = self._price_of(outcome.model) if outcome.model else None
        record = outcome.record(price)
        record["_seq"] = outcome.seq
        records = self._open.setdefault(shard, [])
        records.append(record)
        if len(records) == self._shard_size(shard):
            await self._publish(shard)

    async def finish(self, total_rows: int) -> list[PartSummary]:
        """Publish the last, shorter shard once the input's length is known."""
        self._total_rows = total_rows
        for shard in sorted(self._open):
            if len(self._open[shard]) != self._shard_size(shard):
                raise RuntimeError(f"shard {shard} has {len(self._open[shard])} rows, expected {self._shard_size(shard)}")
            await self._publish(shard)
        return sorted(self.parts, key=lambda p: p.shard)

    def _shard_size(self, shard: int) -> int:
        if self._total_rows is None:
            return self._shard_rows
        return min(self._shard_rows, self._total_rows - shard * self._shard_rows)

    async def _publish(self, shard: int) -> None:
        records = sorted(self._open.pop(shard), key=lambda r: r["_seq"])
        for record in records:
            del record["_seq"]
        name = f"part-{shard:06d}.parquet"
        await asyncio.to_thread(self._write, records, name)
        summary = summarize(name, shard, records)
        self.parts.append(summary)
        log.info("part_published", part=name, rows=summary.rows, **summary.by_status)

    def _write(self, records: list[dict[str, Any]], name: str) -> None:
        fd, tmp = tempfile.mkstemp(suffix=".parquet")
        os.close(fd)
        try:
            pq.write_table(output_table(records), tmp, compression="zstd")
            self._storage.publish(tmp, self._storage.join(self._folder, name))
        finally:
            os.unlink(tmp)


def summarize(name: str, shard: int, records: list[dict[str, Any]]) -> PartSummary:
    """Totals of one part's records."""
    statuses = Counter(r["status"] for r in records)
    by_model: dict[str, float] = {}
    for r in records:
        if r["model"]:
            by_model[r["model"]] = by_model.get(r["model"], 0.0) + (r["cost_usd"] or 0.0)
    return PartSummary(
        name=name,
        shard=shard,
        rows=len(records),
        by_status={s: statuses.get(s, 0) for s in STATUSES},
        prompt_tokens=sum(r["prompt_tokens"] or 0 for r in records),
        completion_tokens=sum(r["completion_tokens"] or 0 for r in records),
        cost_usd=sum(r["cost_usd"] or 0.0 for r in records),
        cost_by_model=dict(by_model),
    )


def build_manifest(spec: JobSpec, inputs: list[str], parts: list[PartSummary], wall_time_s: float) -> dict[str, Any]:
    """The job's totals, summed from its parts, with what produced them."""
    by_status = {s: sum(p.by_status.get(s, 0) for p in parts) for s in STATUSES}
    by_model: Counter[str] = Counter()
    for p in parts:
        by_model.update(p.cost_by_model)
    prompt = sum(p.prompt_tokens for p in parts)
    completion = sum(p.completion_tokens for p in parts)
    return {
        "job_hash": spec.job_hash(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": inputs,
        "models": sorted({e.model for e in spec.all_endpoints}),
        "prices_as_of": PRICES_AS_OF.isoformat(),
        "rows": {"total": sum(by_status.values()), **by_status},
        "tokens": {"prompt": prompt, "completion": completion, "total": prompt + completion},
        "cost_usd": {"total": round(sum(p.cost_usd for p in parts), 6),
                     "by_model": {m: round(c, 6) for m, c in sorted(by_model.items())}},
        "wall_time_s": round(wall_time_s, 3),
        "parts": [asdict(p) for p in parts],
    }


def write_manifest(storage: Storage, folder: str, manifest: dict[str, Any]) -> str:
    """Publish ``_manifest.json`` atomically; return its location."""
    location = storage.join(folder, MANIFEST)
    storage.write_bytes(location, json.dumps(manifest, indent=2).encode())
    return location
