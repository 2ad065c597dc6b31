"""The job's budget as a hard ceiling: nothing is sent that could carry the tally past it.

Before a row is admitted its worst case — prompt tokens plus ``max_tokens`` at the
model's prices — is reserved; when it finishes the reservation becomes what it really
cost. A row whose worst case does not fit beside what is spent and reserved waits for
rows in flight to settle (their real cost is usually far below their worst case); when
nothing is in flight and it still does not fit, the budget is exhausted and the job
stops admitting. ``spent + reserved`` never passes the limit, so neither does the tally.
"""

from __future__ import annotations

import asyncio


class BudgetExhaustedError(Exception):
    """The next row could cost more than the budget has left."""


#: Less than this is rounding left over from adding and taking back float costs, not a reservation.
_RESIDUE_USD = 1e-9


class Spend:
    """Money spent and reserved against an optional limit, in USD."""

    def __init__(self, limit_usd: float | None, spent_usd: float = 0.0):
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.reserved_usd = 0.0
        self._settled = asyncio.Event()

    @property
    def left_usd(self) -> float | None:
        """What may still be reserved; ``None`` without a limit."""
        if self.limit_usd is None:
            return None
        return self.limit_usd - self.spent_usd - self.reserved_usd

    def fits(self, worst_usd: float) -> bool:
        """Whether a row of this worst case may be reserved now."""
        left = self.left_usd
        return left is None or worst_usd <= left + 1e-12

    async def wait_for_room(self) -> None:
        """Wait for a reservation to settle; ``BudgetExhaustedError`` if none is outstanding."""
        if self.reserved_usd <= _RESIDUE_USD:
            raise BudgetExhaustedError(
                f"budget_usd {self.limit_usd:g} reached: ${self.spent_usd:.4f} spent, and the next row could cost more "
                "than the rest")
        self._settled.clear()
        await self._settled.wait()

    def reserve(self, worst_usd: float) -> None:
        """Hold a row's worst case (the caller checked ``fits``)."""
        self.reserved_usd += worst_usd

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        """A row finished: release its reservation and count what it really cost."""
        left = self.reserved_usd - reserved_usd
        # Sums of float costs leave residues (0.1 + 0.2 - 0.1 - 0.2 > 0): nothing is held then.
        self.reserved_usd = left if left > _RESIDUE_USD else 0.0
        self.spent_usd += actual_usd
        self._settled.set()
