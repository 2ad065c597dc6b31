"""How far a run has got, told to its listeners (the progress bar, the progress artifact).

While rows are sent, every ``PROGRESS_EVERY_S`` seconds each listener gets a ``Snapshot``:
rows done of the rows the run is to do, tokens/min admitted over the last interval
against the quota the job states (and what the deployments were found to admit), and
the cost so far. A listener that fails is logged and never stops the job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from workers import Lane, Spend

if TYPE_CHECKING:
    from flows.execution import Execution

log = structlog.get_logger(__name__)

PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class Snapshot:
    """How far a run has got: for progress bars and progress artifacts."""

    rows_done: int
    rows_total: int | None
    tokens_per_minute: float
    quota_tokens_per_minute: int
    cost_usd: float
    elapsed_s: float
    #: What the deployments are believed to admit, when that is not what the job states.
    learned_tokens_per_minute: int | None = None

    @property
    def fraction(self) -> float | None:
        if not self.rows_total:
            return None
        return min(1.0, self.rows_done / self.rows_total)


Listener = Callable[[Snapshot], Awaitable[None]]


class Reporter:
    """Tells ``listeners`` how far ``execution`` has got, now and then and once at the end."""

    def __init__(self, execution: Execution, spend: Spend, lanes: Sequence[Lane], listeners: Sequence[Listener],
                 *, stated_tpm: int, rows_total: int | None, clock: Callable[[], float]):
        self.execution = execution
        self.spend = spend
        self.lanes = list(lanes)
        self.listeners = list(listeners)
        self.stated_tpm = stated_tpm
        self.rows_total = rows_total
        self.clock = clock
        self.started = clock()

    def _admitted(self) -> int:
        return sum(lane.quota.ledger.charged_tokens for lane in self.lanes)

    def snapshot(self, tokens_per_minute: float) -> Snapshot:
        """The run as it stands, with the rate given."""
        reading = self.execution.reading
        total = reading.rows if reading.rows is not None else self.rows_total
        if total is not None:
            total = self.execution.layout.rows_in_slice(total)
        learned = sum(lane.quota.ledger.learned_per_minute[1] for lane in self.lanes)
        return Snapshot(self.execution.done_rows, total, tokens_per_minute, self.stated_tpm, self.spend.spent_usd,
                        self.clock() - self.started, learned if learned != self.stated_tpm else None)

    async def tell(self, snapshot: Snapshot) -> None:
        for listener in self.listeners:
            try:
                await listener(snapshot)
            except Exception as exc:  # a progress display must never stop the job
                log.warning("progress_listener_failed", error=repr(exc))

    async def run(self) -> None:
        """Every ``PROGRESS_EVERY_S`` seconds, the rate over the last interval; until cancelled."""
        last, admitted = self.clock(), self._admitted()
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            now, total = self.clock(), self._admitted()
            rate = (total - admitted) * 60 / (now - last)
            admitted, last = total, now
            await self.tell(self.snapshot(rate))

    async def final(self) -> None:
        """The last word: the average rate over the whole run."""
        elapsed = self.clock() - self.started
        await self.tell(self.snapshot(self._admitted() * 60 / elapsed if elapsed > 0 else 0.0))
