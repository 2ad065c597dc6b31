"""What one run of the pool produced: its parts, its counts, why it stopped."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from flows.inputs import Reading
from flows.parts import PartSummary
from schemas import ShardLayout
from workers import Engine, StopReason, Tally

#: Bad rows named one by one in the manifest and the summary; the rest are counted.
BAD_INPUT_LISTED = 20


@dataclass
class Execution:
    """What one run of the pool produced (one slice of the job's shards: all of them, run alone)."""

    parts: list[PartSummary]
    tally: Tally
    engine: Engine
    reading: Reading
    layout: ShardLayout
    resumed_rows: int = 0
    #: Rows that took an earlier answer from the pool (counted in ``resumed_rows`` too).
    reused_rows: int = 0
    #: Rows not sent because an identical request was (``duplicate_of``), placed in this run.
    duplicate_rows: int = 0
    #: Earlier answers no input row claimed (their rows left the input): dropped when complete.
    dropped_rows: int = 0
    #: Earlier answers not placed yet (a run stopped before its reading got to their rows).
    unplaced_rows: int = 0
    #: Rows finished but not yet in a published part (they are in the journal).
    pending: PartSummary | None = None
    bad_input: list[str] = field(default_factory=list)
    bad_input_rows: int = 0

    def bad_row(self, detail: str) -> None:
        """Count a row refused before sending; the first few are named."""
        self.bad_input_rows += 1
        if len(self.bad_input) < BAD_INPUT_LISTED:
            self.bad_input.append(detail)

    @property
    def stopped(self) -> StopReason | None:
        """Why the run ended before every row was done, or ``None``."""
        return self.engine.stopped

    @property
    def done_rows(self) -> int:
        """Rows the output holds, from every run."""
        return self.resumed_rows + self.tally.rows + self.unplaced_rows + self.duplicate_rows

    def quota_learned(self) -> dict[str, dict[str, Any]]:
        """Per deployment whose real quota differs from the job's: what it was found to admit."""
        found = {}
        for lane in self.engine.lanes:
            ledger = lane.quota.ledger
            requests, tokens = ledger.learned_per_minute
            if (requests, tokens) != (ledger.stated_rpm, ledger.stated_tpm):
                found[lane.client.spec.url] = {
                    "tokens_per_minute": tokens, "requests_per_minute": requests,
                    "job_says": {"tokens_per_minute": ledger.stated_tpm, "requests_per_minute": ledger.stated_rpm},
                    "rate_limited_pauses": ledger.pauses}
        return found


@dataclass
class SliceNote:
    """What one slice of a job did, as the job's last step reads it: kept as JSON in ``_shards/``
    when the slice ran in a process of its own, handed over directly when the job ran alone."""

    index: int
    count: int
    worker: str
    input_rows: int | None
    #: The shards of this slice that have a published part.
    shards: list[int]
    rows_sent: int
    stopped: StopReason | None
    reused_rows: int = 0
    dropped_rows: int = 0
    quota_learned: dict[str, Any] = field(default_factory=dict)
    bad_input: list[str] = field(default_factory=list)
    bad_input_rows: int = 0
    empty_inputs: list[str] = field(default_factory=list)
    #: Units of the deployments' shared quotas this slice gave back for other processes to take.
    units_handed_over: int = 0

    @classmethod
    def of(cls, execution: Execution, worker: str, units_handed_over: int = 0) -> SliceNote:
        layout = execution.layout
        return cls(layout.index, layout.count, worker, execution.reading.rows,
                   sorted(p.shard for p in execution.parts if layout.owns(p.shard)), execution.tally.rows,
                   execution.stopped, execution.reused_rows,
                   # A slice's pool holds other slices' answers too: only a run alone knows what no row claimed.
                   execution.dropped_rows if layout.whole else 0, execution.quota_learned(),
                   list(execution.bad_input), execution.bad_input_rows, list(execution.reading.empty_files),
                   units_handed_over)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SliceNote:
        known = {f.name for f in fields(cls)}
        note = cls(**{k: v for k, v in data.items() if k in known})
        note.stopped = StopReason(note.stopped) if note.stopped else None
        return note


@dataclass
class Ran:
    """What every slice of a run did, summed for the manifest."""

    notes: list[SliceNote]
    #: Every published part of the output, in shard order.
    parts: list[PartSummary]
    #: Finished rows not yet in a published part (a run alone that stopped).
    pending: PartSummary | None = None

    @property
    def stopped(self) -> StopReason | None:
        return next((n.stopped for n in self.notes if n.stopped), None)

    @property
    def input_rows(self) -> int | None:
        return self.notes[0].input_rows

    @property
    def bad_input(self) -> list[str]:
        return [line for n in self.notes for line in n.bad_input][:BAD_INPUT_LISTED]

    @property
    def bad_input_rows(self) -> int:
        return sum(n.bad_input_rows for n in self.notes)

    @property
    def empty_inputs(self) -> list[str]:
        return self.notes[0].empty_inputs

    @property
    def reused_rows(self) -> int:
        return sum(n.reused_rows for n in self.notes)

    @property
    def dropped_rows(self) -> int:
        return sum(n.dropped_rows for n in self.notes)

    @property
    def quota_learned(self) -> dict[str, Any]:
        learned: dict[str, Any] = {}
        for n in self.notes:
            learned.update(n.quota_learned)
        return learned

    @property
    def by_worker(self) -> dict[str, list[int]]:
        """Which worker did which shards, when the run was scaled out."""
        if len(self.notes) < 2:
            return {}
        found: dict[str, list[int]] = {}
        for n in self.notes:
            found.setdefault(n.worker, []).extend(n.shards)
        return {name: sorted(shards) for name, shards in sorted(found.items())}
