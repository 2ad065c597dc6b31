"""Results out: Parquet parts, one per shard of ``shard_rows`` input rows, and the manifest.

Rows finish out of order; each is held with its shard until every row of that shard
is in and the shard's input has been read to its end, then the shard is written as
``part-NNNNNN.parquet`` (sorted by input order) and published atomically.
``flows.manifest`` sums the parts' summaries into the manifest.

Each part carries, in its Parquet metadata, the job's hash and the digest of the
input rows it answers (``flows.inputs.ShardDigest``): a re-run keeps a part only while
its shard's input is byte for byte the same, and a lost manifest can be rebuilt.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import structlog

from flows.storage import Storage
from schemas import STATUSES, ShardLayout, conform, output_table

log = structlog.get_logger(__name__)


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
    #: The digest of the shard's input rows when it was published (``None``: unknown, not kept).
    input_digest: str | None = None
    #: A labeling job's rows by value, per enum label column (``label_sentiment: {positive: 3, …}``).
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Rows that carry another row's answer (``duplicate_of``): not sent, not paid.
    duplicates: int = 0


#: Keys of a part's Parquet metadata.
META_JOB_HASH, META_INPUT_DIGEST, META_SHARD_ROWS = b"promptbatch.job_hash", b"promptbatch.input_digest", \
    b"promptbatch.shard_rows"


class PartWriter:
    """Holds finished rows by shard and publishes each shard once it is complete.

    Publishing runs beside the caller (one part at a time, in a worker thread), so
    handing a row over never waits on storage; ``on_published`` hears of each part.
    """

    def __init__(self, storage: Storage, folder: str, layout: ShardLayout,
                 on_published: Callable[[PartSummary], Awaitable[None]] | None = None, *, job_hash: str = "",
                 passthrough: pa.Schema | None = None,
                 derive: Callable[[dict[str, Any]], dict[str, Any]] | None = None, enums: Sequence[str] = ()):
        self._storage = storage
        self._folder = folder
        self._layout = layout
        self._on_published = on_published
        self._job_hash = job_hash
        self._passthrough = passthrough
        #: A labeling job's label columns, from each record's answer (``workers.labels.label_columns``).
        self._derive = derive
        self._enums = tuple(enums)
        # (seq, record): the row's position is kept beside it, never in it (an input may have any column).
        self._open: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        self._digests: dict[int, str] = {}
        self._total_rows: int | None = None
        self._one_at_a_time = asyncio.Lock()
        self._publishing: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self.parts: list[PartSummary] = []

    def add(self, seq: int, record: dict[str, Any]) -> None:
        """Take one finished row; start publishing its shard if it was the last one missing."""
        if self._failure is not None:
            raise self._failure
        shard = self._layout.shard_of(seq)
        records = self._open.setdefault(shard, [])
        records.append((seq, record))
        if len(records) == self._shard_size(shard) and shard in self._digests:
            self._start_publish(shard)

    def shard_read(self, shard: int, digest: str, rows: int) -> None:
        """The input of ``shard`` has been read to its end (``rows`` rows): publish it once whole."""
        self._digests[shard] = digest
        if rows < self._layout.shard_rows:  # only the input's last shard is short
            self._total_rows = self._layout.first_row(shard) + rows
        if len(self._open.get(shard, ())) == self._shard_size(shard):
            self._start_publish(shard)

    def open_records(self) -> list[dict[str, Any]]:
        """Finished rows held for shards not published yet (they are in the journal)."""
        return [r for records in self._open.values() for _, r in records]

    async def finish(self, total_rows: int | None, *, complete: bool = True) -> list[PartSummary]:
        """Publish every shard that is whole, once the input's length is known; wait for all.

        ``complete``: every row was to finish, so a shard still missing rows is a bug.
        A stopped run leaves its unfinished shards open (their rows are in the journal).
        """
        if total_rows is not None:
            self._total_rows = total_rows
            for shard in sorted(self._open):
                whole = len(self._open[shard]) == self._shard_size(shard) and shard in self._digests
                if whole:
                    self._start_publish(shard)
                elif complete:
                    raise RuntimeError(f"shard {shard} has {len(self._open[shard])} rows, "
                                       f"expected {self._shard_size(shard)}")
        while self._publishing:
            await asyncio.gather(*self._publishing)
        if self._failure is not None:
            raise self._failure
        return sorted(self.parts, key=lambda p: p.shard)

    def _shard_size(self, shard: int) -> int:
        if self._total_rows is None:
            return self._layout.shard_rows
        return self._layout.rows_of(shard, self._total_rows)

    def _start_publish(self, shard: int) -> None:
        records = self._open.pop(shard)
        task = asyncio.create_task(self._publish(shard, records), name=f"publish-{shard}")
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, shard: int, numbered: list[tuple[int, dict[str, Any]]]) -> None:
        numbered.sort(key=lambda pair: pair[0])
        records = [record for _, record in numbered]
        if self._derive is not None:
            records = [{**record, **self._derive(record)} for record in records]
        name = part_name(shard)
        try:
            async with self._one_at_a_time:  # one at a time, so checkpoints follow publishing order
                digest = self._digests.get(shard)
                await asyncio.to_thread(self._write, records, name, digest)
                summary = summarize(name, shard, records, digest, enums=self._enums)
                self.parts.append(summary)
                log.info("part_published", part=name, rows=summary.rows, **summary.by_status)
                if self._on_published is not None:
                    await self._on_published(summary)
        except BaseException as exc:
            self._failure = self._failure or exc
            raise

    def _write(self, records: list[dict[str, Any]], name: str, digest: str | None) -> None:
        fd, tmp = tempfile.mkstemp(suffix=".parquet")
        os.close(fd)
        table = output_table(records, self._passthrough)
        meta = {META_JOB_HASH: self._job_hash.encode(), META_SHARD_ROWS: str(self._layout.shard_rows).encode()}
        if digest is not None:
            meta[META_INPUT_DIGEST] = digest.encode()
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        try:
            pq.write_table(table, tmp, compression="zstd")
            self._storage.publish(tmp, self._storage.join(self._folder, name))
        finally:
            os.unlink(tmp)


def part_name(shard: int) -> str:
    """The file name of a shard's part."""
    return f"part-{shard:06d}.parquet"


def part_shard(name: str) -> int | None:
    """The shard a part's file name stands for; ``None`` for any other file."""
    match = _PART.fullmatch(name)
    return int(match.group(1)) if match else None


_PART = re.compile(r"part-(\d{6,})\.parquet")


def summarize(name: str, shard: int, records: list[dict[str, Any]], input_digest: str | None = None, *,
              enums: Sequence[str] = ()) -> PartSummary:
    """Totals of one part's records; ``enums``: label columns whose rows are counted by value."""
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
        input_digest=input_digest,
        labels={column: dict(Counter(r[column] for r in records if r.get(column) is not None)) for column in enums},
        duplicates=sum(1 for r in records if r.get("duplicate_of") is not None),
    )


def conform_parts(storage: Storage, folder: str, shards: list[int], passthrough: pa.Schema) -> list[str]:
    """Rewrite the given parts in today's schema (see ``schemas.passthrough``), metadata kept; their names.

    A part already in that schema is left alone, so a run cut short and run again does only the rest.
    """
    rewritten = []
    for shard in sorted(shards):
        location = storage.join(folder, part_name(shard))
        table = conform(pq.read_table(io.BytesIO(storage.read_bytes(location))), passthrough)
        if table is None:
            continue
        fd, tmp = tempfile.mkstemp(suffix=".parquet")
        os.close(fd)
        try:
            pq.write_table(table, tmp, compression="zstd")
            storage.publish(tmp, location)
        finally:
            os.unlink(tmp)
        rewritten.append(part_name(shard))
    if rewritten:
        log.info("parts_conformed", parts=len(rewritten), reason="the output's passthrough columns changed")
    return rewritten


def drop_parts_beyond(storage: Storage, folder: str, total_rows: int, layout: ShardLayout) -> list[str]:
    """Delete the parts of shards past the input's end (it got shorter); their names."""
    shards = layout.shards(total_rows)
    gone = [name for name in storage.list_names(folder) if (part_shard(name) or 0) >= shards
            and part_shard(name) is not None]
    for name in gone:
        storage.delete(storage.join(folder, name))
    if gone:
        log.info("parts_dropped", parts=gone, reason="the input has fewer rows than before")
    return gone
