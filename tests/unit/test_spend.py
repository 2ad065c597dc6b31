"""The budget's bookkeeping."""

from __future__ import annotations

import asyncio

import pytest

from workers.spend import BudgetExhaustedError, Spend


def test_float_residue_of_settled_rows_is_not_a_reservation() -> None:
    spend = Spend(0.35)
    for worst in (0.1, 0.2):
        spend.reserve(worst)
    spend.settle(0.1, 0.1)
    spend.settle(0.2, 0.2)  # 0.1 + 0.2 - 0.1 - 0.2 leaves 2.8e-17 in float arithmetic
    assert spend.reserved_usd == 0.0
    assert not spend.fits(0.1)

    async def wait() -> None:
        await asyncio.wait_for(spend.wait_for_room(), 2)

    # Nothing is in flight: the run must stop at once, not wait for a settle that never comes.
    with pytest.raises(BudgetExhaustedError):
        asyncio.run(wait())
