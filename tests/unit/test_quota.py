"""Admission decisions, with time passed in: bursts, windows, fairness, 429s, foreign usage."""

from __future__ import annotations

import asyncio

import pytest

from workers.quota import Budget, Ledger, Quota, WindowLog
from workers.shortwindow import ShortWindow
from workers.simulator import SlidingLog
from workers.slowstart import SlowStart

TPM, RPM, WINDOW = 40_000, 200, 10.0  # per window: 6,666 tokens, 33 requests


def drive(ledger: Ledger, costs: list[int], start: float = 0.0) -> list[float]:
    """Admit each cost as soon as the ledger allows; return the admission times."""
    now, times = start, []
    for cost in costs:
        now += ledger.delay(now, cost)
        ledger.admit(now, cost)
        times.append(now)
    return times


def drive_with_look_ahead(ledger: Ledger, costs: list[int], look_ahead: int) -> list[tuple[float, int]]:
    """Admit from a room of ``look_ahead`` waiting costs as ``choose`` picks; (time, cost) in admission order."""
    room: list[tuple[int, float]] = []
    admitted: list[tuple[float, int]] = []
    now, pending = 0.0, list(costs)
    for _ in range(100 * len(costs)):  # bounded: a decision that never advances time fails the test
        while len(room) < look_ahead and pending:
            room.append((pending.pop(0), now))
        if not room:
            return admitted
        index, wait = ledger.choose(now, [c for c, _ in room], now - room[0][1])
        if index is None:
            now += wait
            continue
        cost, _ = room.pop(index)
        ledger.admit(now, cost)
        admitted.append((now, cost))
    raise AssertionError("admission made no progress")


class TestLedger:
    """The client's admission against a server that meters over a sliding window."""

    def test_never_exceeds_a_sliding_window_and_fills_it(self) -> None:
        ledger = Ledger(RPM, TPM, window_s=WINDOW, guard_s=0.01, first_window=False)
        server = SlidingLog(RPM, TPM, WINDOW)
        costs = [280 + (i * 37) % 90 for i in range(600)]
        times = drive(ledger, costs)
        assert all(server.try_admit(t + 0.005, c).admitted for t, c in zip(times, costs, strict=True))
        utilization = sum(costs) / (TPM * times[-1] / 60)
        assert utilization > 0.97

    def test_look_ahead_fills_window_edges_without_passing_the_window(self) -> None:
        costs = [290 + 19 * ((i * 7919) % 4) for i in range(1_000)]  # like translation charges: 1–4 sentences

        def utilization(look_ahead: int) -> float:
            server = SlidingLog(RPM, TPM, WINDOW)
            admitted = drive_with_look_ahead(Ledger(RPM, TPM, window_s=WINDOW, first_window=False), costs, look_ahead)
            assert all(server.try_admit(t + 0.005, c).admitted for t, c in admitted)
            return sum(costs) / (TPM * admitted[-1][0] / 60)

        fifo, packed = utilization(1), utilization(16)
        assert packed > fifo + 0.01
        assert packed > 0.96

    def test_a_second_goes_at_once_then_the_steady_rate(self) -> None:
        times = drive(Ledger(RPM, TPM, window_s=WINDOW, first_window=False), [300] * 40)
        assert times[1] == 0.0 < times[2]  # one second's worth: 666 tokens
        spacing = (times[39] - times[2]) / 37
        assert spacing == pytest.approx(300 / (TPM / 60), rel=0.01)

    def test_a_burst_may_be_as_large_as_the_window(self) -> None:
        times = drive(Ledger(RPM, TPM, window_s=WINDOW, burst_s=WINDOW, first_window=False), [300] * 60)
        assert times[21] == 0.0 and times[22] > WINDOW  # 22 × 300 ≤ 6,666 < 23 × 300

    def test_a_large_request_is_not_starved(self) -> None:
        ledger = Ledger(60_000, 6_000, window_s=1.0, burst_s=1.0, first_window=False)  # 100 tokens per 1 s window
        drive(ledger, [10] * 10)  # the window is full
        now = 0.5
        wait = ledger.delay(now, 90)
        assert 0 < wait <= 1.0 - now + 0.05  # until the full window expires (plus the guard), no longer
        # (that small requests cannot overtake it meanwhile is the admission line's job: see below)

    def test_younger_rows_fill_the_window_edge_for_a_while_at_most(self) -> None:
        # 100 tokens per second
        ledger = Ledger(60_000, 6_000, window_s=1.0, burst_s=1.0, guard_s=0.0, first_window=False)
        ledger.admit(0.0, 70)
        assert ledger.choose(0.0, [40, 50, 30], oldest_waited_s=0.0) == (2, 0.0)  # 30 fits, 40 does not
        ledger.admit(0.0, 30)
        index, wait = ledger.choose(0.5, [40, 50], oldest_waited_s=0.5)
        assert index is None and 0 < wait <= 0.5
        # Once the oldest has waited two windows (20 s at least), nobody overtakes it, even if they would fit.
        ledger2 = Ledger(60_000, 6_000, window_s=1.0, burst_s=1.0, guard_s=0.0, first_window=False)
        ledger2.admit(0.0, 70)
        assert ledger2.choose(0.0, [40, 30], oldest_waited_s=19.9)[0] == 1
        assert ledger2.choose(0.0, [40, 30], oldest_waited_s=20.0)[0] is None
        ledger3 = Ledger(6_000, 60_000, window_s=10.0, burst_s=10.0, guard_s=0.0, first_window=False)
        ledger3.admit(0.0, 9_930)
        assert ledger3.choose(0.0, [400, 30], oldest_waited_s=19.9)[0] == 1
        assert ledger3.choose(0.0, [400, 30], oldest_waited_s=20.0)[0] is None

    def test_request_quota_binds_too(self) -> None:
        ledger = Ledger(60, 10**9, window_s=WINDOW, burst_s=WINDOW, first_window=False)  # 10 requests per window
        times = drive(ledger, [1] * 11)
        assert times[9] == 0.0 and times[10] >= WINDOW
        times = drive(Ledger(60, 10**9, window_s=WINDOW, first_window=False), [1] * 11)  # one a second
        assert times[:3] == pytest.approx([0.0, 1.0, 2.0], rel=0.005)  # a hair under the rate (see Ledger._apply)

    def test_429_pauses_everyone_refunds_halves_the_burst_and_widens_the_guard(self) -> None:
        ledger = Ledger(RPM, TPM, window_s=WINDOW, burst_s=WINDOW, first_window=False)
        ticket = ledger.admit(0.0, 300)
        guard = ledger.window.guard_s
        ledger.rate_limited(0.1, ticket, retry_after_s=2.0)
        assert ledger.window.guard_s == 2 * guard  # entries are kept longer from now on
        assert ledger.window.window_s == WINDOW + 2 * guard
        assert ledger.window.remaining == (ledger.window.request_limit, ledger.window.token_limit)
        assert ledger.delay(0.1, 1) >= 2.0  # everyone waits out retry-after (and the copy's lowered limit)
        assert ledger._burst_share == 0.5 and ledger.tokens.level <= 0  # no saved-up burst after the pause
        assert ledger.tokens.capacity == pytest.approx(ledger.tokens.per_second * WINDOW / 2)

    def test_the_quota_is_charged_only_for_what_it_took(self) -> None:
        ledger = Ledger(RPM, TPM, window_s=WINDOW, first_window=False)
        refused = ledger.admit(0.0, 300)
        ledger.admit(0.0, 200)
        ledger.rate_limited(0.1, refused, retry_after_s=1.0)
        assert (ledger.total_tokens, ledger.charged_tokens, ledger.charged_requests) == (500, 200, 1)
        assert ledger.rate_limited_responses == 1

    def test_the_slow_starts_429_ends_it_and_keeps_the_guard(self) -> None:
        # Expected of any deployment but a bucket: it says nothing of late stamps (bursts are still
        # halved: with a quota the job overstates, the next ones would be refused too).
        ledger = Ledger(RPM, TPM, window_s=WINDOW)
        ticket = ledger.admit(0.0, 300)
        guard, share = ledger.window.guard_s, ledger._burst_share
        ledger.rate_limited(0.1, ticket, retry_after_s=2.0)
        assert ledger.slow_start is not None and not ledger.slow_start.releasing and ledger.model == "sliding"
        assert (ledger.window.guard_s, ledger._burst_share) == (guard, share / 2)
        assert ledger.delay(0.1, 1) == pytest.approx(2.0)

    def test_the_slow_start_begins_with_the_first_request(self) -> None:
        # The key probe and the first reads took 8 s: the first instant still sends only the steady
        # burst and the first step of the window, not eight seconds of refills on top.
        ledger = Ledger(RPM, TPM, window_s=WINDOW)
        sent = 0
        while ledger.delay(8.0, 300) == 0.0:
            ledger.admit(8.0, 300)
            sent += 300
        step = (6_666 - 666) / SlowStart.STEPS
        assert 666 <= sent <= 666 + step + 300

    def test_a_short_window_is_dropped_when_its_429_says_to_wait_longer_than_one(self) -> None:
        ledger = Ledger(5 * RPM, 5 * TPM, window_s=WINDOW, first_window=False)
        first = ledger.admit(0.0, 300)
        ledger.rate_limited(0.1, first, retry_after_s=0.2)  # quick, the copy nearly empty: a 1 s window?
        assert ledger.short is not None and ledger.learned_per_minute[1] == 5 * TPM
        tickets = [ledger.admit(1.0 + 0.01 * i, 300) for i in range(11)]  # the short copy full
        ledger.rate_limited(1.2, tickets[-1], retry_after_s=7.0)  # but no 1 s window says wait 7 s
        assert ledger.short is None and ledger.learned_per_minute[1] < 5 * TPM

    def test_the_slow_starts_429_with_the_whole_window_held_keeps_the_bursts(self) -> None:
        # A log or fixed windows at the stated quota refuse once the window is spent: the copy
        # foresees that from now on, so the pace it sets needs no smaller bursts.
        ledger = Ledger(RPM, TPM, window_s=WINDOW)
        tickets = [ledger.admit(0.1 * i, 300) for i in range(23)]  # 6,900 tokens: the window and more
        ledger.rate_limited(3.0, tickets[-1], retry_after_s=7.0)
        assert ledger.model == "sliding" and ledger._burst_share == 1.0

    def test_a_reading_across_a_moved_request_limit_books_nothing(self) -> None:
        ledger = Ledger(RPM, TPM, window_s=WINDOW, first_window=False)
        ticket = ledger.admit(0.0, 300)
        ledger.estimate.on_limit(0.1, None, 0.2)  # the server states a fifth of the job's request limit
        ledger._apply(0.1)
        # Its remaining count is against its own (lower) limit: no other tenant in that.
        ledger.observe(ticket, int(ticket.remaining_requests * 0.2), ticket.remaining_tokens, now=0.2)
        assert ledger.window.requests == 1 and ledger.foreign_tokens == 0

    def test_a_stated_limit_is_checked_against_this_clients_requests_up_to_the_answered_one(self) -> None:
        # Requests admitted in one instant share a stamp; the server, answering the first, had seen
        # only the first of them. A limit a fifth of the job's whose usage matches what the job sent
        # over the window up to that request (and not over a fifth of it) is a lower quota, believed.
        ledger = Ledger(5 * RPM, 5 * TPM, window_s=WINDOW, first_window=False)
        for second in range(6):
            ledger.admit(float(second), 300)
        tickets = [ledger.admit(6.0, 300) for _ in range(10)]
        ledger.observe(tickets[0], 26, 6_666 - 2_100, 33, 6_666, now=6.5)
        assert ledger.learned_per_minute[1] == pytest.approx(TPM, rel=0.01)

    def test_a_stated_limit_that_may_be_a_shorter_windows_waits_for_evidence(self) -> None:
        # Everything sent so far is a second old: the figures fit a fifth of the quota over 10 s
        # and the whole quota over 2 s alike. Nothing is believed yet.
        ledger = Ledger(5 * RPM, 5 * TPM, window_s=WINDOW, first_window=False)
        tickets = [ledger.admit(0.0, 300) for _ in range(10)]
        ledger.observe(tickets[0], 32, 6_666 - 300, 33, 6_666, now=0.5)
        assert ledger.learned_per_minute[1] == 5 * TPM and ledger.foreign_tokens == 0

    def test_a_stated_limit_not_believed_books_no_other_tenant(self) -> None:
        # A limit a fifth of the job's whose usage does not match this client's (a shorter window's
        # figures): its remaining count is on another scale, not another tenant's usage.
        ledger = Ledger(5 * RPM, 5 * TPM, window_s=WINDOW, first_window=False)
        tickets = [ledger.admit(0.1 * i, 300) for i in range(10)]
        ledger.observe(tickets[-1], 32, 6_000, 33, 6_666, now=1.5)
        assert ledger.learned_per_minute[1] == 5 * TPM and ledger.foreign_tokens == 0
        assert ledger.window.tokens == 3_000

    def test_another_tenants_usage_is_booked_once_across_requests_in_flight(self) -> None:
        # Both requests were admitted before either answer; both answers count the same 1,500 tokens
        # of another tenant. The second must not book them again.
        ledger = Ledger(RPM, TPM, window_s=WINDOW, first_window=False)
        first = ledger.admit(0.0, 300)
        second = ledger.admit(0.5, 300)
        ledger.observe(first, first.remaining_requests - 1, first.remaining_tokens - 1_500, now=1.0)
        ledger.observe(second, second.remaining_requests - 1, second.remaining_tokens - 1_500, now=1.5)
        assert ledger.foreign_tokens == 1_500 and ledger.window.remaining[1] == 6_666 - 600 - 1_500

    def test_foreign_usage_in_headers_slows_admission(self) -> None:
        ledger = Ledger(RPM, TPM, window_s=WINDOW, first_window=False)
        ticket = ledger.admit(0.0, 300)
        later = ledger.admit(0.0, 300)  # in flight when the first answer comes back
        # The server says 1,500 tokens less are left than the two requests explain.
        ledger.observe(ticket, ticket.remaining_requests - 1, ticket.remaining_tokens - 300 - 1_500)
        assert ledger.foreign_tokens == 1_500
        assert ledger.window.remaining[1] == 6_666 - 600 - 1_500
        ledger.observe(later, later.remaining_requests, later.remaining_tokens)  # agrees: nothing added
        assert ledger.foreign_tokens == 1_500


class TestParts:
    """The budget and the window copy on their own."""

    def test_what_the_client_sent_around_one_request(self) -> None:
        log = WindowLog(request_limit=100, token_limit=10_000, window_s=10)
        log.add(0.0, 1, 100)
        answered = log.add(1.0, 1, 200)
        log.add(1.0, 1, 300)  # same instant, after it
        log.add(1.0, 2, 900, foreign=True)  # another tenant's, booked at its stamp
        log.add(1.03, 1, 400)
        log.add(2.0, 1, 500)
        assert log.own_tokens_through(answered, 10.0) == 300  # itself and what came before, none of theirs
        assert log.own_tokens_through(answered, 0.5) == 200
        assert log.own_after(answered, 0.05) == (2, 700)  # those the server may have seen first
        log.expire(11.02)  # the answered request (and the one beside it) have left the copy
        assert log.own_tokens_through(answered, 10.0) == 0 and log.own_after(answered, 0.05) == (1, 400)

    def test_a_short_window_is_not_confirmed_by_a_429_with_nothing_else_in_it(self) -> None:
        short = ShortWindow((33, 6_666), 10.0, 0.05, [])
        short.apply(0.3, 1.0)  # a request limit of 1 after a cut
        assert short.log.request_limit == 1
        assert short.used(300, retry_after_s=0.5) is None  # the copy was empty: not a full window
        short.log.add(0.0, 1, 300)
        assert short.used(300, retry_after_s=0.5) is not None
        assert short.used(300, retry_after_s=5.0) is None  # no 1 s window says wait 5 s

    def test_budget_overdraft_is_paid_back(self) -> None:
        budget = Budget(per_second=100, capacity=100, now=0.0)
        assert budget.wait(0.0, 500) == 0.0  # a request larger than the bucket waits for a full bucket only
        budget.take(0.0, 500)
        assert budget.wait(0.0, 10) == pytest.approx(4.1)

    def test_window_wait_is_until_enough_expires(self) -> None:
        log = WindowLog(request_limit=100, token_limit=100, window_s=10)
        log.add(0.0, 1, 60)
        log.add(2.0, 1, 30)
        assert log.wait(3.0, 10) == 0.0
        assert log.wait(3.0, 50) == pytest.approx(7.0)  # the 60 leaves at t=10
        assert log.wait(3.0, 80) == pytest.approx(9.0)  # both must leave


async def test_quota_admits_in_arrival_order() -> None:
    # 100 tokens per 10 ms window: the waits below are milliseconds; only the order is asserted.
    quota = Quota(60_000_000, 600_000, window_s=0.01)
    order: list[int] = []

    async def ask(i: int, cost: int) -> None:
        await quota.admit(cost)
        order.append(i)

    async with asyncio.TaskGroup() as group:
        for i, cost in enumerate([100, 90, 10, 10, 10, 95, 5]):
            group.create_task(ask(i, cost))
    assert order == [0, 1, 2, 3, 4, 5, 6]
    assert quota.ledger.total_tokens == 320
