"""The slow start's release of a fresh deployment's first window, with time passed in."""

from __future__ import annotations

import pytest

from workers.slowstart import SlowStart
from workers.windows import Budget

WINDOW = 10.0
LIMITS = (33, 6_666)  # the window copy's requests and tokens (40,000 tokens/min, 200 requests/min)


def budgets(now: float = 0.0) -> tuple[Budget, Budget]:
    # The steady burst: one second's worth, refilled at the per-minute rate.
    return Budget(200 / 60, 200 / 60, now), Budget(40_000 / 60, 40_000 / 60, now)


def test_the_window_beyond_the_burst_comes_in_steps_over_four_windows() -> None:
    requests, tokens = budgets()
    slow = SlowStart(WINDOW, LIMITS[0] - requests.level, LIMITS[1] - tokens.level, 0.0)
    steps, now = [], 0.0
    while slow.releasing and now < 100:
        left = slow.left[1]
        slow.release(now, requests, tokens, LIMITS)
        if slow.left[1] < left:
            steps.append((now, left - slow.left[1]))
        tokens.take(now, tokens.level)  # everything spent at once: nothing saved up
        requests.take(now, requests.level)
        now += 0.25
    assert len(steps) == SlowStart.STEPS
    assert [at for at, _ in steps] == [i * WINDOW * SlowStart.WINDOWS / SlowStart.STEPS for i in range(SlowStart.STEPS)]
    assert sum(amount for _, amount in steps) == pytest.approx(LIMITS[1] - 40_000 / 60, rel=0.01)
    assert slow.next_step_in(now) is None


def test_refills_saved_up_while_idle_come_out_of_what_is_left() -> None:
    # Taken for a bucket of one window, the budgets hold a window: idle, they fill up by themselves,
    # and what they saved is not released again on top.
    requests, tokens = Budget(200 / 60, LIMITS[0], 0.0), Budget(40_000 / 60, LIMITS[1], 0.0)
    requests.level, tokens.level = 200 / 60, 40_000 / 60
    slow = SlowStart(WINDOW, LIMITS[0] - requests.level, LIMITS[1] - tokens.level, 0.0)
    slow.release(0.0, requests, tokens, LIMITS)
    slow.release(3.0, requests, tokens, LIMITS)  # no step due; 3 s of refill saved
    assert tokens.level + slow.left[1] == pytest.approx(LIMITS[1])
    slow.release(12.0, requests, tokens, LIMITS)  # the budget full: nothing left to release
    assert tokens.level == pytest.approx(LIMITS[1]) and slow.left[1] == 0.0


RATE = 40_000 / 60  # tokens per second


def test_the_first_request_starts_the_clock() -> None:
    slow = SlowStart(WINDOW, 30.0, 6_000.0, 0.0)
    slow.wait(8.0)  # the key probe and the first reads took 8 s
    # A bucket of one window refuses once the window and the refill since the first request are spent.
    assert slow.fits_a_bucket(9.0, 6_666 + 400, 300, 6_666, RATE, bucket_room=0.0, retry_after_s=0.3)
    assert not slow.fits_a_bucket(9.0, 6_666, 300, 6_666, RATE, bucket_room=0.0, retry_after_s=0.3)  # a log's
    # Counted from the ledger's creation instead, 9 s of refill would make the same refusal a log's.
    assert not SlowStart(WINDOW, 30.0, 6_000.0, 0.0).fits_a_bucket(9.0, 6_666 + 400, 300, 6_666, RATE, 0.0, 0.3)


def test_room_left_in_the_clients_bucket_copy_means_not_a_bucket() -> None:
    slow = SlowStart(WINDOW, 30.0, 6_000.0, 0.0)
    assert not slow.fits_a_bucket(1.0, 7_500, 300, 6_666, RATE, bucket_room=0.1 * 6_666, retry_after_s=0.001)


class TestNearMiss:
    """One-second windows: a 429 past the first window, the copy holding one window."""

    LIMIT = 666  # one second at 40,000 tokens/min: the steady burst is the whole window

    def test_a_wait_of_a_millisecond_is_a_bucket_a_hair_behind_taken_once(self) -> None:
        slow = SlowStart(1.0, 0.0, 0.0, 0.0)
        # 291 tokens refill in 0.44 s; a bucket a hair behind the client's copy asks for 1 ms.
        assert slow.fits_a_bucket(1.7, 872, 291, self.LIMIT, RATE, bucket_room=0.0, retry_after_s=0.001)
        assert not slow.fits_a_bucket(2.5, 872, 291, self.LIMIT, RATE, bucket_room=0.0, retry_after_s=0.001)

    @pytest.mark.parametrize("retry_after_s", [0.2, None])
    def test_a_log_waits_for_its_oldest_entries(self, retry_after_s: float | None) -> None:
        slow = SlowStart(1.0, 0.0, 0.0, 0.0)
        assert not slow.fits_a_bucket(1.7, 872, 291, self.LIMIT, RATE, bucket_room=0.0, retry_after_s=retry_after_s)

    def test_a_quota_the_job_overstates_is_no_near_miss(self) -> None:
        # The copy far from its window when refused: a lower quota, whatever the wait.
        slow = SlowStart(1.0, 0.0, 0.0, 0.0)
        assert not slow.fits_a_bucket(1.7, 400, 291, 5 * self.LIMIT, RATE, bucket_room=0.0, retry_after_s=0.001)


def test_ended_releases_nothing() -> None:
    requests, tokens = budgets()
    slow = SlowStart(WINDOW, 30.0, 6_000.0, 0.0)
    slow.end()
    level = tokens.level
    slow.release(5.0, requests, tokens, LIMITS)
    assert not slow.releasing and tokens.level == level
