"""Shares of one quota held by several processes: the pure rules, and two ledgers handing units over."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from workers.ledger import Ledger
from workers.quota import Quota
from workers.shares import UNITS, in_force, needed, releasable, target


def test_the_quota_is_split_evenly_rounding_up() -> None:
    assert [target(n) for n in (0, 1, 2, 3, 5)] == [32, 32, 16, 11, 7]
    assert in_force(32, 16) == 0.5 and in_force(3, 16) == 3 / UNITS and in_force(0, 16) == 0.0


def test_units_go_back_only_as_the_window_empties() -> None:
    held = [1] * UNITS
    assert needed(0.9) == 29 and needed(0.0) == 0 and needed(1.2) == 32
    assert len(releasable(held, aim=16, fullness=0.9)) == 3  # 32 - 29: what the copy no longer needs
    assert len(releasable(held, aim=16, fullness=0.3)) == 16  # down to the aim, not below
    assert releasable(held, aim=32, fullness=0.0) == []
    assert len(releasable(held, aim=0, fullness=0.0)) == 32
    assert releasable([16], aim=0, fullness=0.1) == []  # a lease goes whole or not at all
    assert releasable([4, 1, 1], aim=0, fullness=0.1) == [1, 2]  # 4 units still needed: the small ones go


def _ledger(now: float = 0.0) -> Ledger:
    # 60,000 tokens/min and 600 requests/min over 10 s windows: 10,000 tokens and 100 requests a window.
    ledger = Ledger(600, 60_000, window_s=10, now=now, first_window=False)
    ledger.keep_recent(1.0)  # as a shared Quota's
    return ledger


def test_fullness_counts_what_the_server_may_still_hold_if_it_stamped_late() -> None:
    ledger = _ledger()
    ledger.admit(0.0, 1_000)
    ledger.admit(5.0, 2_000)
    assert ledger.fullness(9.0) == pytest.approx(0.3)
    assert ledger.fullness(10.2) == pytest.approx(0.2)  # the first left the copy's window (10 s + 50 ms)
    assert ledger.fullness(10.2, late_s=0.25) == pytest.approx(0.3)  # stamped 0.25 s later, it would not have
    assert ledger.fullness(10.4, late_s=0.25) == pytest.approx(0.2)
    assert ledger.delay(10.2, 8_000) == 0.0  # admission itself goes by the copy's own window


def test_a_share_scales_the_window_copy() -> None:
    ledger = _ledger()
    ledger.set_share(0.0, 0.5)
    assert ledger.window.token_limit == 5_000 and ledger.window.request_limit == 50
    # Paced at the deployment's rate: only the window copy bounds the share (room another process
    # gives back frees at that rate).
    assert ledger.tokens.per_second == pytest.approx(1_000, rel=0.01)
    ledger.set_share(0.0, 1.0)
    assert ledger.window.token_limit == 10_000


def test_a_429_holding_a_full_share_is_not_taken_for_a_smaller_quota() -> None:
    ledger = _ledger()
    ledger.set_share(0.0, 0.5)
    now, tickets = 0.0, []
    while ledger.delay(now, 500) == 0.0 or now < 10:
        if ledger.delay(now, 500) == 0.0:
            tickets.append(ledger.admit(now, 500))
        now += 0.05
    assert ledger.fullness(now) == pytest.approx(0.5, abs=0.06)
    ledger.rate_limited(now, tickets[-1], retry_after_s=1.0)
    # The others hold their shares too: the deployment was full, its quota is the stated one (within the margin).
    assert ledger.estimate.tokens >= 0.9


def test_what_another_process_learned_is_adopted() -> None:
    ledger = _ledger()
    ledger.set_share(0.0, 0.5)
    ledger.adopt(1.0, 0.2, 0.25)
    assert ledger.learned_per_minute == (150, 12_000)
    assert ledger.window.token_limit == 1_000  # a half share of what the deployment admits


def test_a_shared_quota_books_no_other_tenant_from_the_headers() -> None:
    quota = Quota(600, 60_000, window_s=10, clock=lambda: 0.0, shared=True)
    ticket = quota.ledger.admit(0.0, 1_000)
    # The deployment's own count shows the other processes' usage: theirs is in their shares already.
    quota.observe(ticket, 50, 2_000, 100, 10_000)
    assert quota.ledger.foreign_tokens == 0


async def test_what_one_process_learns_is_told_to_the_others() -> None:
    told: list[tuple[float, float]] = []

    async def learned(tokens_share: float, requests_share: float) -> None:
        told.append((tokens_share, requests_share))

    now = [0.0]
    quota = Quota(1_000, 200_000, window_s=10, clock=lambda: now[0], on_learned=learned, shared=True)
    tickets = [quota.ledger.admit(0.0, 350) for _ in range(19)]  # what the window copy holds
    now[0] = 1.0
    # Refused at a fifth of the stated window, told to wait half of it (not a shorter window's refusal).
    quota.rate_limited(tickets[-1], retry_after_s=5.0)
    await asyncio.sleep(0)
    assert told and told[0][0] == pytest.approx(0.2, abs=0.02)


class Deployment:
    """What the processes' admissions add up to, metered as a sliding log of one 10 s window, as
    clock-aligned 10 s windows, or as a bucket of one window refilled continuously."""

    def __init__(self, metering: str, limit: int):
        self.metering, self.limit, self.refused = metering, limit, 0
        self.entries, self.used, self.peak = deque[tuple[float, int]](), 0, 0
        self.level, self.stamp = float(limit), 0.0

    def admit(self, now: float, tokens: int) -> None:
        if self.metering == "bucket":
            self.level = min(self.limit, self.level + (now - self.stamp) * self.limit / 10.0)
            self.stamp = now
            self.refused += self.level < tokens
            self.level -= tokens
            return
        start = now - 10.0 if self.metering == "sliding" else now // 10.0 * 10.0 - 1e-9
        while self.entries and self.entries[0][0] <= start:
            self.used -= self.entries.popleft()[1]
        self.entries.append((now, tokens))
        self.used += tokens
        self.peak = max(self.peak, self.used)
        self.refused += self.used > self.limit


@pytest.mark.parametrize("metering", ["sliding", "fixed", "bucket"])
def test_two_processes_handing_units_over_never_overfill_the_window_and_keep_it_full(metering: str) -> None:
    """The second process joins at 12 s and leaves at 40 s; units change hands every 0.2 s by the rules."""
    deployment = Deployment(metering, 10_000)
    ledgers = [_ledger(), _ledger()]
    held: list[list[int]] = [[1] * UNITS, []]
    free = 0
    admitted, now = 0, 0.0
    while now < 60.0:
        present = [0] + ([1] if 12.0 <= now < 40.0 else [])
        if round(now / 0.2, 6).is_integer():  # the holders' poll
            for index in (0, 1):
                aim = target(len(present)) if index in present else 0
                gone = releasable(held[index], aim, ledgers[index].fullness(now, late_s=0.25))
                free += sum(held[index][i] for i in gone)
                held[index] = [u for i, u in enumerate(held[index]) if i not in gone]
                if index in present and sum(held[index]) < aim and free:
                    taken = min(free, aim - sum(held[index]))
                    held[index] += [1] * taken
                    free -= taken
                ledgers[index].set_share(now, max(1e-3, in_force(sum(held[index]), aim)), coming=aim / UNITS)
        assert sum(map(sum, held)) + free == UNITS
        for index in present:
            if ledgers[index].delay(now, 400) == 0.0:
                ledgers[index].admit(now, 400)
                deployment.admit(now, 400)
                admitted += 400
        now = round(now + 0.01, 6)
    assert deployment.refused == 0
    assert admitted / (1_000 * 60.0) >= 0.95  # what the quota allowed over the minute


def test_no_share_admits_nothing_not_even_alone_in_an_empty_window() -> None:
    ledger = _ledger()
    ledger.set_share(0.0, 0.0)
    assert ledger.delay(5.0, 10) > 0 and ledger.delay(5.0, 5_000) > 0


def test_a_row_larger_than_the_share_waits_for_the_share_still_coming() -> None:
    ledger = _ledger()
    ledger.set_share(0.0, 2 / UNITS, coming=0.5)  # 625 tokens of the window now, 5,000 soon
    assert ledger.delay(0.0, 400) == 0.0
    assert ledger.delay(0.0, 2_000) > 0  # would overfill the deployment's window by its excess
    ledger.set_share(0.0, 2 / UNITS)  # no more coming: it goes alone in an empty window, as with one process
    assert ledger.delay(0.0, 2_000) == 0.0
