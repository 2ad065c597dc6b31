"""What an earlier run of the same job left in the output folder, and what is still to do.

A row is known by its identity — its ``id`` and the digest of its request (messages
and parameters, ``schemas.request_digest``) — never by its line number. A re-run keeps:

- every published part whose shard's input is unchanged (the digest of its input rows,
  kept in the part, equals the shard's digest now): its rows are neither read again
  nor sent. When the input files' fingerprints (size and mtime, or ETag) are those the
  manifest recorded, every part is unchanged without reading the input; otherwise the
  input is read once, hashed, to find the shards that changed;
- every other earlier answer, in an ``AnswerPool``: the journal's rows, and the rows of
  parts that cannot stay as they are (first copied into the journal, ``retire``, so
  they stay durable while the new layout overwrites their part). An input row whose
  identity is in the pool takes its answer from there (with the row's passthrough
  columns as they are now); any other row is sent.

So an appended, inserted, deleted or edited row is sent (or its old answer dropped),
and every kept answer belongs to its own prompt. ``--retry-errors`` leaves the answers
that ended in ``error`` or ``invalid`` out of the pool (their rows are sent again); a part holding
errors is rebuilt whenever the journal holds rows (they may be retries of them).

Reading the pool costs memory in proportion to the rows being reconciled (their
answers), not to the input: an unchanged input reads only the journal.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq
import structlog

from flows.inputs import shard_digests
from flows.journal import journal_segments, read_journal, retire
from flows.parts import META_INPUT_DIGEST, PartSummary, part_name, part_shard, summarize
from flows.storage import Storage
from schemas import OUTPUT_SCHEMA, STATUSES, ShardLayout

log = structlog.get_logger(__name__)

Key = tuple[str, str]
#: What ``--retry-errors`` sends again: rows that ended in ``error``, and labeling rows that never validated.
RETRIED = ("error", "invalid")


class AnswerPool:
    """Earlier answers by row identity; identical rows (same id, same request) share a key."""

    def __init__(self, *, retry_errors: bool = False):
        self._retry_errors = retry_errors
        self._by_key: dict[Key, list[dict[str, Any]]] = {}
        self.size = 0

    def add(self, record: dict[str, Any]) -> None:
        """Keep one earlier answer (our columns only); rows without an identity are never reused."""
        row_id, digest = record.get("id"), record.get("request_digest")
        if row_id is None or digest is None:
            return
        if self._retry_errors and record.get("status") in RETRIED:
            return
        answers = self._by_key.setdefault((row_id, digest), [])
        answers.append({name: record.get(name) for name in OUTPUT_SCHEMA.names})
        self.size += 1

    def take(self, row_id: str, digest: str) -> dict[str, Any] | None:
        """An answer for this identity, a final one (``ok``/``filtered``) before an ``error``; ``None``."""
        answers = self._by_key.get((row_id, digest))
        if not answers:
            return None
        best = next((i for i, a in enumerate(answers) if a["status"] != "error"), 0)
        answer = answers.pop(best)
        self.size -= 1
        if not answers:
            del self._by_key[(row_id, digest)]
        return answer

    def records(self) -> list[dict[str, Any]]:
        """The answers still in the pool."""
        return [a for answers in self._by_key.values() for a in answers]

    @property
    def cost_usd(self) -> float:
        """What the answers in the pool cost (paid already)."""
        return sum(a.get("cost_usd") or 0.0 for answers in self._by_key.values() for a in answers)

    def by_status(self) -> dict[str, int]:
        counts = Counter(a["status"] for answers in self._by_key.values() for a in answers)
        return {s: counts.get(s, 0) for s in STATUSES}


@dataclass
class Earlier:
    """What an output folder already holds for this job."""

    shard_rows: int
    #: Parts that stay as they are: their rows are not read again.
    kept: dict[int, PartSummary] = field(default_factory=dict)
    #: Earlier answers for the rows of every other shard.
    pool: AnswerPool = field(default_factory=AnswerPool)
    #: Journal segments found (deleted once the job is complete).
    segments: list[str] = field(default_factory=list)
    #: Parts found that are not kept: rebuilt by this run, or deleted when the input got shorter.
    rebuilt: list[int] = field(default_factory=list)

    @property
    def layout(self) -> ShardLayout:
        """The output's shards, the whole job's slice."""
        return ShardLayout(self.shard_rows)

    def done_shard(self, seq: int) -> bool:
        """Whether row ``seq`` sits in a part that is kept (nothing to read or send)."""
        return self.layout.shard_of(seq) in self.kept

    def kept_rows(self, layout: ShardLayout) -> int:
        """Rows of ``layout``'s slice that sit in kept parts."""
        return sum(p.rows for shard, p in self.kept.items() if layout.owns(shard))

    @property
    def spent_usd(self) -> float:
        """What the rows already done cost (every earlier answer, whether still needed or not)."""
        return sum(p.cost_usd for p in self.kept.values()) + self.pool.cost_usd

    @property
    def rows(self) -> int:
        """How many rows are already done (kept parts, and answers waiting to be placed)."""
        return sum(p.rows for p in self.kept.values()) + self.pool.size


def read_earlier(storage: Storage, output: str, shard_rows: int, manifest: dict[str, Any] | None, *,
                 files: list[str], inputs_unchanged: bool, job_hash: str, retry_errors: bool) -> Earlier:
    """Read the parts' summaries and the journal; decide what is kept (see the module docstring)."""
    earlier = Earlier(shard_rows, pool=AnswerPool(retry_errors=retry_errors))
    published = published_parts(storage, output, manifest)
    earlier.segments = journal_segments(storage, output)
    now: list[str] | None = None
    if published and not inputs_unchanged:
        now = shard_digests(storage, files, shard_rows)
    for shard, summary in sorted(published.items()):
        current = summary.input_digest if now is None else (now[shard] if shard < len(now) else None)
        same_input = summary.input_digest is not None and summary.input_digest == current
        errors = any(summary.by_status.get(status, 0) for status in RETRIED)
        if same_input and not (errors and (retry_errors or earlier.segments)):
            earlier.kept[shard] = summary
            continue
        earlier.rebuilt.append(shard)
        records = part_records(storage, output, shard)
        ours = [{name: r.get(name) for name in OUTPUT_SCHEMA.names} for r in records]
        name = retire(storage, output, job_hash, shard, summary.input_digest or "unknown", ours)
        if name not in earlier.segments:
            earlier.segments.append(name)
    for name in earlier.segments:
        for record in read_journal(storage, output, name):
            record.pop("seq", None)
            earlier.pool.add(record)
    if published or earlier.segments:
        log.info("resuming", parts_kept=len(earlier.kept), parts_rebuilt=len(earlier.rebuilt),
                 answers_to_place=earlier.pool.size, journal_segments=len(earlier.segments),
                 retry_errors=retry_errors, input_read_for_changes=now is not None)
    return earlier


class KeptAnswers:
    """Answers of kept parts by request digest, for copies of their requests (``workers.dedupe``).

    Built on the first lookup from the parts' ``request_digest``/``id``/``status`` columns (each part is
    read once); a hit reads its part's row, the last part read being kept at hand.
    """

    def __init__(self, storage: Storage, output: str, shards: list[int]):
        self._storage, self._output, self._shards = storage, output, shards
        self._index: dict[str, tuple[int, int]] | None = None
        self._part: tuple[int, Any] | None = None

    def __call__(self, digest: str) -> dict[str, Any] | None:
        if self._index is None:
            self._index = {}
            for shard in self._shards:
                table = _part_table(self._storage, self._output, shard, columns=["request_digest", "status"])
                for i, (key, status) in enumerate(zip(table.column("request_digest").to_pylist(),
                                                      table.column("status").to_pylist(), strict=True)):
                    if key is not None and status != "error":
                        self._index.setdefault(key, (shard, i))
        hit = self._index.get(digest)
        if hit is None:
            return None
        shard, row = hit
        if self._part is None or self._part[0] != shard:
            self._part = (shard, _part_table(self._storage, self._output, shard))
        names = [n for n in OUTPUT_SCHEMA.names if n in self._part[1].column_names]
        record: dict[str, Any] = self._part[1].select(names).slice(row, 1).to_pylist()[0]
        return {name: record.get(name) for name in OUTPUT_SCHEMA.names}


def published_parts(storage: Storage, output: str, manifest: dict[str, Any] | None) -> dict[int, PartSummary]:
    """Every part in the folder by shard, summarized from the manifest or, failing that, the part."""
    listed = {p["name"]: p for p in (manifest or {}).get("parts", [])}
    published: dict[int, PartSummary] = {}
    for name in storage.list_names(output):
        shard = part_shard(name)
        if shard is None:
            continue
        if name in listed:
            published[shard] = PartSummary(**listed[name])
        else:  # published after the manifest was last written: count it from the part itself
            table = _part_table(storage, output, shard)
            digest = (table.schema.metadata or {}).get(META_INPUT_DIGEST)
            published[shard] = summarize(name, shard, table.to_pylist(), digest.decode() if digest else None)
    return published


def part_records(storage: Storage, output: str, shard: int) -> list[dict[str, Any]]:
    """A published part's rows."""
    records: list[dict[str, Any]] = _part_table(storage, output, shard).to_pylist()
    return records


def _part_table(storage: Storage, output: str, shard: int, columns: list[str] | None = None) -> Any:
    return pq.read_table(io.BytesIO(storage.read_bytes(storage.join(output, part_name(shard)))), columns=columns)
