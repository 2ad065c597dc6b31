"""Prompt sets in, row by row: JSONL and Parquet, streamed from any storage.

Nothing reads a whole file into memory: JSONL is split into lines as chunks arrive,
Parquet is read a record batch at a time. Every row is numbered across the job's
whole input (``seq``) and named for people (``news/a.jsonl line 12``); a row that
cannot be sent becomes a ``BadRowError`` in the stream instead of stopping it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flows.storage import LocalStorage, Storage, redact_location
from schemas import BadRowError, InputColumns, InputSchema, JobSpec, RowRead, ShardLayout, build_row

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")


def input_format(location: str) -> str:
    """``jsonl`` or ``parquet``, from the file's name."""
    name = redact_location(location).lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise ValueError(f"{redact_location(location)}: not a prompt set (expected .jsonl or .parquet)")


def iter_records(storage: Storage, location: str,
                 batch_rows: int = 1024) -> Iterator[tuple[str, dict[str, Any] | BadRowError, bytes]]:
    """``(where, record, raw)`` for each row of one file; a malformed row comes as a ``BadRowError``.

    ``raw`` is the row as stored (a JSONL line; a Parquet record as canonical JSON): what
    a shard's input digest is made of, so a re-run can tell which shards changed.
    """
    name = redact_location(location)
    if input_format(location) == "parquet":
        with storage.local_copy(location) as path:
            try:
                parquet = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as exc:
                # Its rows cannot be told apart: the file stands as one bad row.
                bad = BadRowError(name, "", f"not a readable Parquet file: {exc}")
                yield name, bad, b"\0unreadable:" + name.encode()
                return
            number = 0
            for batch in parquet.iter_batches(batch_size=batch_rows):
                for record in batch.to_pylist():
                    number += 1
                    raw = json.dumps(record, sort_keys=True, default=str, separators=(",", ":")).encode()
                    yield f"{name} row {number}", record, raw
        return
    for number, line in enumerate(split_lines(storage.iter_bytes(location)), start=1):
        where = f"{name} line {number}"
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            yield where, BadRowError(where, "", f"not valid JSON: {exc}"), line
            continue
        if not isinstance(record, dict):
            yield where, BadRowError(where, "", f"expected a JSON object, got {type(record).__name__}"), line
            continue
        yield where, record, line


def scan_columns(storage: Storage, files: list[str]) -> InputSchema:
    """The output's passthrough columns and their types, decided from every input row before any is sent.

    Parquet files are read by their schemas (the footer); JSONL files row by row (one more
    pass over them). ``PassthroughError`` if two input columns would be passed through as one.
    """
    columns = InputColumns()
    for location in files:
        if input_format(location) == "parquet":
            with storage.local_copy(location) as path:
                try:
                    schema = pq.read_schema(path)
                except (pa.ArrowException, OSError):
                    continue  # it stands as one bad row
            columns.observe_schema(schema)
            continue
        for _, record, _ in iter_records(storage, location):
            if not isinstance(record, BadRowError):
                columns.observe(record)
    return columns.decide()


class ShardDigest:
    """The digest of one shard's input rows, in order: equal digests, the same rows."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.rows = 0

    def add(self, raw: bytes) -> None:
        self._hash.update(len(raw).to_bytes(8, "little"))
        self._hash.update(raw)
        self.rows += 1

    def hexdigest(self) -> str:
        return self._hash.hexdigest()[:32]


def shard_digests(storage: Storage, files: list[str], shard_rows: int) -> list[str]:
    """Every shard's input digest, reading the input once (rows are hashed, not parsed twice)."""
    digests: list[str] = []
    current = ShardDigest()
    for location in files:
        for _, _, raw in iter_records(storage, location):
            current.add(raw)
            if current.rows == shard_rows:
                digests.append(current.hexdigest())
                current = ShardDigest()
    if current.rows:
        digests.append(current.hexdigest())
    return digests


def count_rows(storage: Storage, files: list[str]) -> int | None:
    """How many rows the files hold, when that is cheap to know (local files); else ``None``.

    Counts what ``iter_records`` yields: non-blank JSONL lines, Parquet rows from the
    footer, one row for a Parquet file that cannot be read.
    """
    if not isinstance(storage, LocalStorage):
        return None
    total = 0
    for location in files:
        if input_format(location) == "parquet":
            try:
                total += pq.ParquetFile(location).metadata.num_rows
            except (pa.ArrowException, OSError):
                total += 1
            continue
        total += sum(1 for line in split_lines(storage.iter_bytes(location)) if line.strip())
    return total


def split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Lines (without their newline) from chunks of bytes that may cut lines anywhere."""
    tail = b""
    for chunk in chunks:
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        yield from lines
    if tail:
        yield tail


@dataclass
class Reading:
    """What reading the input found beyond its rows: its length once read, and empty files."""

    rows: int | None = None
    empty_files: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ShardRead:
    """Every input row of a shard has been read: its digest (it goes into the shard's part)."""

    shard: int
    digest: str
    rows: int


def iter_items(spec: JobSpec, storage: Storage, files: list[str], batch: int = 512, *,
               skip: Callable[[int], bool] | None = None, reading: Reading | None = None,
               layout: ShardLayout | None = None, mixed_ids: bool = False) -> Iterator[list[RowRead | ShardRead]]:
    """Every row of every file, numbered in order and built into requests, in batches.

    Rows for which ``skip(seq)`` holds are counted but neither built nor yielded (they
    are done already). ``reading`` learns the input's length at the end. With
    ``layout``, a ``ShardRead`` follows the last row of each shard that was not skipped.
    ``mixed_ids``: the input's ids are integers and strings both (``InputSchema.mixed_ids``).
    """
    seq = 0
    instruction = spec.response.instruction() if spec.response is not None else None
    chunk: list[RowRead | ShardRead] = []
    digest = ShardDigest()
    for location in files:
        first = seq
        for where, record, raw in iter_records(storage, location):
            if skip is not None and skip(seq):
                seq += 1
                continue
            if layout is not None:
                if layout.offset(seq) == 0:
                    digest = ShardDigest()
                digest.add(raw)
            if isinstance(record, BadRowError):
                record.seq = seq
                chunk.append(record)
            else:
                try:
                    chunk.append(build_row(record, seq, where, spec.prompt, spec.params, mixed_ids=mixed_ids,
                                           instruction=instruction))
                except BadRowError as exc:
                    chunk.append(exc)
            seq += 1
            if layout is not None and layout.offset(seq) == 0:
                chunk.append(ShardRead(layout.shard_of(seq) - 1, digest.hexdigest(), digest.rows))
            if len(chunk) >= batch:
                yield chunk
                chunk = []
        if seq == first and reading is not None:
            reading.empty_files.append(redact_location(location))
    if layout is not None and layout.offset(seq) and digest.rows == layout.offset(seq):
        chunk.append(ShardRead(layout.shard_of(seq), digest.hexdigest(), digest.rows))
    if chunk:
        yield chunk
    if reading is not None:
        reading.rows = seq


async def stream(batches: Iterator[list[Any]]) -> AsyncIterator[Any]:
    """Items from a blocking batch iterator, read in a worker thread so the event loop keeps sending."""
    while (chunk := await asyncio.to_thread(next, batches, None)) is not None:
        for item in chunk:
            yield item
