"""The journal: every finished row, made durable the moment it is known.

Parts are published one shard at a time, so a run that is killed would lose every row
of the shards still open — rows already paid for. The journal closes that gap: each
finished row's output columns (not its passed-through input columns, which the next run
reads again from the input) are appended as one JSON line to
``_journal/<run>-<n>.jsonl`` in the output folder — an append blob in Azure, a file
opened for appending on disk. On disk each row is written as it comes (one system
call); in Blob appends are group commits: while one batch is being written the next
collects, so a busy job makes few calls and a quiet one waits for none.

A segment of this run is deleted once every shard it holds rows of has been published
as a part; when the job finishes, the journal is gone. A run that was stopped or killed
leaves its segments, and the next run reads them back (``read_journal``): it matches
their rows to its input by identity (``id`` and request digest), never by position, so
it keeps earlier segments until the job is complete.

Segment names start with the job's hash (``<job hash>-<run>-<n>.jsonl``), so a folder
whose manifest was lost still says which job its journal belongs to. A part that a
re-run cannot keep as it is (its input changed) is first copied into a segment of its
own (``<job hash>-retired-<shard>-<digest>.jsonl``, ``retire``): its answers stay
durable while the part is overwritten by the new layout.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import structlog

from flows.inputs import split_lines
from flows.storage import MAX_APPEND, Storage
from schemas import ShardLayout

log = structlog.get_logger(__name__)

FOLDER = "_journal"
#: Lines per segment: an append blob takes at most 50,000 appends.
SEGMENT_LINES = 20_000


class Journal:
    """Append-only log of finished rows for one run; see the module docstring."""

    def __init__(self, storage: Storage, output: str, layout: ShardLayout, *, job_hash: str = "job",
                 segment_lines: int = SEGMENT_LINES):
        self._storage = storage
        self._output = output
        self._layout = layout
        self._segment_lines = segment_lines
        self._run = f"{job_hash}-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        self._number = 0
        self._lines_in_segment = 0
        #: Segment name → the shards it holds rows of; the current one is last.
        self._segments: dict[str, set[int]] = {}
        #: Earlier runs' segments: deleted when the job is complete.
        self._adopted: list[str] = []
        self._published: set[int] = set()
        self._pending: list[tuple[int, bytes]] = []
        self._wake = asyncio.Event()
        self._written = asyncio.Condition()
        self._added = 0
        self._durable = 0
        self._closed = False
        self._failure: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._current = self._open_segment()

    def adopt(self, segments: list[str]) -> None:
        """Take over earlier runs' segments, to delete them once the job is complete."""
        self._adopted.extend(n for n in segments if n not in self._adopted)

    def start(self) -> None:
        """Start the writer task on the running event loop."""
        self._task = asyncio.create_task(self._writer(), name="journal")

    def add(self, seq: int, record: dict[str, Any]) -> None:
        """Queue one finished row (our columns only); raises if the journal could not be written."""
        if self._failure is not None:
            raise self._failure
        line = json.dumps({"seq": seq, **record}, separators=(",", ":"), default=str).encode() + b"\n"
        self._added += 1
        if self._storage.cheap_appends and not self._pending:
            # On local disk a row is written as it comes: one write(2), durable against a kill at once.
            try:
                self._write([(self._layout.shard_of(seq), line)])
            except BaseException as exc:
                self._failure = exc
                raise
            self._durable += 1
            return
        self._pending.append((self._layout.shard_of(seq), line))
        self._wake.set()

    def published(self, shard: int) -> None:
        """A shard's part is out: segments holding nothing else can go."""
        self._published.add(shard)
        self._wake.set()

    async def flush(self) -> None:
        """Wait until every row added so far is durable."""
        target = self._added
        async with self._written:
            await self._written.wait_for(lambda: self._durable >= target or self._failure is not None)
        if self._failure is not None:
            raise self._failure

    async def close(self, *, finished: bool) -> None:
        """Flush and stop the writer; when the job ``finished``, delete every segment."""
        try:
            await self.flush()
        finally:
            self._closed = True
            self._wake.set()
            if self._task is not None:
                await asyncio.gather(self._task, return_exceptions=True)
        if finished:
            for name in [*self._segments, *self._adopted]:
                await asyncio.to_thread(self._storage.delete, self._location(name))
            self._segments.clear()
            self._adopted.clear()

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending:
                batch, self._pending = self._pending, []
                try:
                    await asyncio.to_thread(self._write, batch)
                except BaseException as exc:
                    self._failure = exc
                    async with self._written:
                        self._written.notify_all()
                    raise
                self._durable += len(batch)
                async with self._written:
                    self._written.notify_all()
                if self._pending:  # rows that came in while this batch was being written
                    self._wake.set()
            await self._forget_published()
            if self._closed and not self._pending:
                return

    def _write(self, batch: list[tuple[int, bytes]]) -> None:
        """Append a batch in as few calls as the block size and segment length allow (writer thread)."""
        start = 0
        while start < len(batch):
            if self._lines_in_segment >= self._segment_lines:
                self._current = self._open_segment()
            room = self._segment_lines - self._lines_in_segment
            end, size = start, 0
            while end < len(batch) and end - start < room and (end == start or size + len(batch[end][1]) <= MAX_APPEND):
                size += len(batch[end][1])
                end += 1
            chunk = batch[start:end]
            self._segments[self._current].update(shard for shard, _ in chunk)
            self._storage.append(self._location(self._current), b"".join(line for _, line in chunk))
            self._lines_in_segment += len(chunk)
            start = end

    async def _forget_published(self) -> None:
        done = [name for name, shards in self._segments.items()
                if name != self._current and shards <= self._published]
        for name in done:
            await asyncio.to_thread(self._storage.delete, self._location(name))
            del self._segments[name]

    def _open_segment(self) -> str:
        self._number += 1
        self._lines_in_segment = 0
        name = f"{self._run}-{self._number:04d}.jsonl"
        self._segments[name] = set()
        return name

    def _location(self, name: str) -> str:
        return self._storage.join(self._output, f"{FOLDER}/{name}")


def retire(storage: Storage, output: str, job_hash: str, shard: int, digest: str,
           records: list[dict[str, Any]]) -> str:
    """Copy a part's rows into a journal segment of their own (written whole, at once); its name.

    Nothing is written when that segment exists already (an earlier, stopped re-run
    retired the same part): a row's answer is never journaled twice.
    """
    name = f"{job_hash}-retired-{shard:06d}-{digest[:12]}.jsonl"
    location = storage.join(output, f"{FOLDER}/{name}")
    if not storage.exists(location):
        body = b"".join(json.dumps(r, separators=(",", ":"), default=str).encode() + b"\n" for r in records)
        storage.write_bytes(location, body)
    return name


def segment_job_hash(name: str) -> str | None:
    """The job hash a segment's name starts with (``None`` for a name of another form)."""
    head = name.split("-", 1)[0]
    return head if len(head) == 16 and all(c in "0123456789abcdef" for c in head) else None


def journal_segments(storage: Storage, output: str) -> list[str]:
    """The journal segments an output folder holds, oldest first."""
    return [n.split("/", 1)[1] for n in storage.list_names(output)
            if n.startswith(FOLDER + "/") and n.endswith(".jsonl")]


def read_journal(storage: Storage, output: str, name: str) -> Iterator[dict[str, Any]]:
    """The rows of one segment; a torn last line (a crash mid-write) is skipped."""
    location = storage.join(output, f"{FOLDER}/{name}")
    previous: bytes | None = None  # held back one line: only the last may be torn
    for line in split_lines(storage.iter_bytes(location)):
        if not line.strip():
            continue
        if previous is not None:
            try:
                yield json.loads(previous)
            except ValueError:
                log.warning("journal_line_skipped", segment=name, reason="not valid JSON")
        previous = line
    if previous is not None:
        try:
            yield json.loads(previous)
        except ValueError:
            pass  # a write cut short by a crash: that row was never committed
