"""What one run of the pool produced: its parts, its counts, why it stopped."""

from __future__ import annotations

from dataclasses import dataclass, field
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
