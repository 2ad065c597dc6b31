"""Credit leased from a shared quota: chunks, large rows, expiry, failures, and the Quota spending only it."""

from __future__ import annotations

import asyncio

import pytest

from workers.quota import Credit, Quota


class FakeShared:
    """A shared quota that hands out whatever is asked, and remembers what."""

    def __init__(self, fail: bool = False):
        self.leased_tokens = 0
        self.leased_requests = 0
        self.calls: list[tuple[int, int]] = []
        self.fail = fail

    async def lease(self, tokens: int, requests: int) -> None:
        await asyncio.sleep(0)
        if self.fail:
            raise RuntimeError("server gone")
        self.calls.append((tokens, requests))
        self.leased_tokens += tokens
        self.leased_requests += requests


def test_quota_admits_only_what_was_leased_in_chunks() -> None:
    shared = FakeShared()

    async def run() -> Quota:
        credit = Credit(shared.lease, token_chunk=1000, request_chunk=4, most_tokens=2000, most_requests=8)
        quota = Quota(6_000, 6_000_000, window_s=10, credit=credit)
        for _ in range(30):
            await quota.admit(300)
        await credit.aclose()
        return quota

    quota = asyncio.run(run())
    assert quota.ledger.total_tokens == 30 * 300
    assert quota.ledger.total_tokens <= shared.leased_tokens <= quota.ledger.total_tokens + 2 * 1000
    assert 30 <= shared.leased_requests <= 30 + 2 * 4
    assert all(t in (0, 1000) and r in (0, 4) for t, r in shared.calls)  # one chunk per lease
    assert len(shared.calls) < 30  # far fewer round trips than requests


def test_a_row_larger_than_a_chunk_is_leased_in_pieces_no_larger_than_the_limit() -> None:
    shared = FakeShared()

    async def run() -> None:
        credit = Credit(shared.lease, token_chunk=500, request_chunk=1, most_tokens=1200, most_requests=1)
        await credit.top_up(3000)
        assert credit.covers(3000)
        await credit.aclose()

    asyncio.run(run())
    token_pieces = [t for t, _ in shared.calls if t]
    assert sum(token_pieces) >= 3000 and max(token_pieces) <= 1200


def test_credit_left_unspent_too_long_is_dropped() -> None:
    now = [0.0]
    shared = FakeShared()

    async def run() -> Credit:
        credit = Credit(shared.lease, token_chunk=1000, request_chunk=2, most_tokens=2000, most_requests=2,
                        horizon_s=2.0, clock=lambda: now[0])
        await credit.top_up(100)
        assert credit.covers(100)
        now[0] = 5.0  # the process sat on its credit past the horizon
        assert not credit.covers(100)
        await credit.aclose()
        return credit

    credit = asyncio.run(run())
    assert credit.dropped_tokens >= 1000


def test_a_failing_lease_raises_instead_of_waiting_forever() -> None:
    async def run() -> None:
        credit = Credit(FakeShared(fail=True).lease, token_chunk=10, request_chunk=1, most_tokens=10,
                        most_requests=1)
        await credit.top_up(5)

    with pytest.raises(RuntimeError, match="server gone"):
        asyncio.run(asyncio.wait_for(run(), 5))


async def test_what_one_process_learns_is_told_to_share_it() -> None:
    told: list[tuple[float, float]] = []

    async def learned(tokens_share: float, requests_share: float) -> None:
        told.append((tokens_share, requests_share))

    now = [0.0]
    quota = Quota(1_000, 200_000, window_s=10, clock=lambda: now[0], on_learned=learned, name="https://d")
    quota.ledger.model = "sliding"  # past its first window
    assert quota.ledger.slow_start is not None
    quota.ledger.slow_start.end()
    tickets = [quota.ledger.admit(0.0, 350) for _ in range(19)]  # what the window copy holds
    now[0] = 1.0
    # Refused at a fifth of the stated window, told to wait half of it (not a shorter window's refusal).
    quota.rate_limited(tickets[-1], retry_after_s=5.0)
    await asyncio.sleep(0)
    assert told and told[0][0] == pytest.approx(0.2, abs=0.02)
