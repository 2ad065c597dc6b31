"""The simulated deployment's meters: a sliding log, a token bucket, fixed windows; time passed in."""

from __future__ import annotations

import pytest

from workers.simulator import FixedWindows, SlidingLog, TokenBucket
from workers.simulator.metering import MinuteTally


class TestSlidingLog:
    """Admission over a 10-second window of a 60 requests/min, 600 tokens/min quota."""

    def test_request_limit_and_retry_after(self) -> None:
        window = SlidingLog(requests_per_minute=60, tokens_per_minute=60_000, window_s=10)
        assert window.request_limit == 10
        for i in range(10):
            assert window.try_admit(now=100.0 + i * 0.1, tokens=1).admitted
        refused = window.try_admit(now=101.0, tokens=1)
        assert not refused.admitted
        assert refused.retry_after_s == 9.0  # the first entry (t=100.0) leaves at t=110.0
        assert refused.remaining_requests == 0
        assert window.try_admit(now=110.0, tokens=1).admitted

    def test_token_limit_waits_for_enough_to_expire(self) -> None:
        window = SlidingLog(requests_per_minute=6_000, tokens_per_minute=600, window_s=10)
        assert window.token_limit == 100
        assert window.try_admit(0.0, 40).admitted
        assert window.try_admit(1.0, 40).admitted
        refused = window.try_admit(2.0, 50)
        assert not refused.admitted and refused.remaining_tokens == 20
        assert refused.retry_after_s == 8.0  # 40 tokens free at t=10 → 60 free, enough for 50
        assert not window.try_admit(9.9, 50).admitted
        assert window.try_admit(10.0, 50).admitted

    def test_peaks_never_pass_limits(self) -> None:
        window = SlidingLog(requests_per_minute=120, tokens_per_minute=1_200, window_s=5)
        for i in range(1_000):
            window.try_admit(i * 0.01, 7)
        assert window.peak_requests <= window.request_limit
        assert window.peak_tokens <= window.token_limit
        assert window.peak_requests == window.request_limit  # it was saturated


class TestTokenBucket:
    """A fresh bucket takes a whole window at once, then refills at the rate."""

    def test_a_window_at_once_then_the_rate(self) -> None:
        bucket = TokenBucket(requests_per_minute=6_000, tokens_per_minute=600, window_s=10)  # 100 tokens a window
        assert bucket.try_admit(0.0, 100).admitted
        refused = bucket.try_admit(0.0, 10)
        assert not refused.admitted and refused.retry_after_s == pytest.approx(1.0)  # 10 tokens/s
        assert bucket.try_admit(1.0, 10).admitted and not bucket.try_admit(1.0, 1).admitted

    def test_it_never_holds_more_than_a_window(self) -> None:
        bucket = TokenBucket(requests_per_minute=6_000, tokens_per_minute=600, window_s=10)
        assert bucket.try_admit(1000.0, 100).admitted and not bucket.try_admit(1000.0, 1).admitted


class TestFixedWindows:
    """Clock-aligned windows reset at their start: two windows' worth can straddle a boundary."""

    def test_reset_at_the_boundary(self) -> None:
        fixed = FixedWindows(requests_per_minute=6_000, tokens_per_minute=600, window_s=10)
        assert fixed.try_admit(9.5, 100).admitted
        refused = fixed.try_admit(9.9, 1)
        assert not refused.admitted and refused.retry_after_s == pytest.approx(0.1)
        assert fixed.try_admit(10.0, 100).admitted  # a new window: 200 tokens within half a second


class TestMinuteTally:
    """What headers that count the minute say."""

    def test_remaining_over_the_last_minute(self) -> None:
        tally = MinuteTally(200, 40_000)
        tally.add(0.0, 1, 1_000)
        tally.add(30.0, 1, 500)
        assert tally.remaining(59.0) == (198, 38_500)
        assert tally.remaining(61.0) == (199, 39_500)
