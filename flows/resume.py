"""What an earlier run of the same job left in the output folder, and what is still to do.

Row ``seq`` belongs to shard ``seq // shard_rows``. A published part holds its whole
shard, sorted, so its i-th row is row ``shard * shard_rows + i``. The journal holds the
rows finished in shards that were not published yet. Together they say which rows are
done; only the rest are sent again.

``--retry-errors`` also sends again the rows that ended in ``error``: parts holding such
rows are read back and published anew with the new outcomes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq
import structlog

from flows.journal import journal_segments, read_journal
from flows.parts import PartSummary, part_name, part_shard, summarize
from flows.storage import Storage

log = structlog.get_logger(__name__)


@dataclass
class Progress:
    """The rows an output folder already holds."""

    shard_rows: int
    #: Parts that stay as they are: their rows are not read again.
    kept: dict[int, PartSummary] = field(default_factory=dict)
    #: Finished rows to hand to the part writer again: seq → record (our columns, and the
    #: passed-through ones when ``whole``).
    finished: dict[int, tuple[dict[str, Any], bool]] = field(default_factory=dict)
    #: Journal segments found → the shards they hold rows of.
    segments: dict[str, set[int]] = field(default_factory=dict)

    def done_shard(self, seq: int) -> bool:
        """Whether row ``seq`` sits in a part that is kept (nothing to read or send)."""
        return seq // self.shard_rows in self.kept

    @property
    def spent_usd(self) -> float:
        """What the rows already done cost."""
        return (sum(p.cost_usd for p in self.kept.values())
                + sum(r.get("cost_usd") or 0.0 for r, _ in self.finished.values()))

    @property
    def rows(self) -> int:
        """How many rows are already done."""
        return sum(p.rows for p in self.kept.values()) + len(self.finished)


def read_progress(storage: Storage, output: str, shard_rows: int, manifest: dict[str, Any] | None, *,
                  retry_errors: bool) -> Progress:
    """Read the parts' summaries and the journal; see the module docstring."""
    progress = Progress(shard_rows)
    listed = {p["name"]: p for p in (manifest or {}).get("parts", [])}
    published: dict[int, PartSummary] = {}
    for name in storage.list_names(output):
        shard = part_shard(name)
        if shard is None:
            continue
        if name in listed:
            published[shard] = PartSummary(**listed[name])
        else:  # published after the manifest was last written: count it from the part itself
            published[shard] = summarize(name, shard, _part_records(storage, output, shard))

    journaled: dict[int, dict[str, Any]] = {}
    for name in journal_segments(storage, output):
        shards = progress.segments.setdefault(name, set())
        for record in read_journal(storage, output, name):
            seq = record.pop("seq")
            shards.add(seq // shard_rows)
            journaled[seq] = record  # a later line for the same row wins

    journaled_shards = {seq // shard_rows for seq in journaled}
    for shard, summary in sorted(published.items()):
        has_errors = summary.by_status.get("error", 0) > 0
        newer = has_errors and shard in journaled_shards
        if not (has_errors and (retry_errors or newer)):
            progress.kept[shard] = summary
            continue
        # Published again with its retried rows: keep the part's other rows, the journal's newer ones.
        for i, record in enumerate(_part_records(storage, output, shard)):
            seq = shard * shard_rows + i
            if seq not in journaled and not (retry_errors and record["status"] == "error"):
                progress.finished[seq] = (record, True)
    for seq, record in journaled.items():
        if seq // shard_rows in progress.kept:
            continue
        if retry_errors and record["status"] == "error":
            continue
        progress.finished[seq] = (record, False)
    if progress.kept or progress.finished:
        log.info("resuming", parts_kept=len(progress.kept), rows_done=progress.rows,
                 journal_segments=len(progress.segments), retry_errors=retry_errors)
    return progress


def _part_records(storage: Storage, output: str, shard: int) -> list[dict[str, Any]]:
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(output, part_name(shard)))))
    records: list[dict[str, Any]] = table.to_pylist()
    return records
