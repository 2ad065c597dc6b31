"""The simulator's sliding window: limits over any window, honest retry-after."""

from __future__ import annotations

from workers.simulator import SlidingWindow


class TestSlidingWindow:
    """Admission over a 10-second window of a 60 requests/min, 600 tokens/min quota."""

    def test_request_limit_and_retry_after(self) -> None:
        window = SlidingWindow(requests_per_minute=60, tokens_per_minute=60_000, window_s=10)
        assert window.request_limit == 10
        for i in range(10):
            assert window.try_admit(now=100.0 + i * 0.1, tokens=1).admitted
        refused = window.try_admit(now=101.0, tokens=1)
        assert not refused.admitted
        assert refused.retry_after_s == 9.0  # the first entry (t=100.0) leaves at t=110.0
        assert refused.remaining_requests == 0
        assert window.try_admit(now=110.0, tokens=1).admitted

    def test_token_limit_waits_for_enough_to_expire(self) -> None:
        window = SlidingWindow(requests_per_minute=6_000, tokens_per_minute=600, window_s=10)
        assert window.token_limit == 100
        assert window.try_admit(0.0, 40).admitted
        assert window.try_admit(1.0, 40).admitted
        refused = window.try_admit(2.0, 50)
        assert not refused.admitted and refused.remaining_tokens == 20
        assert refused.retry_after_s == 8.0  # 40 tokens free at t=10 → 60 free, enough for 50
        assert not window.try_admit(9.9, 50).admitted
        assert window.try_admit(10.0, 50).admitted

    def test_peaks_never_pass_limits(self) -> None:
        window = SlidingWindow(requests_per_minute=120, tokens_per_minute=1_200, window_s=5)
        for i in range(1_000):
            window.try_admit(i * 0.01, 7)
        assert window.peak_requests <= window.request_limit
        assert window.peak_tokens <= window.token_limit
        assert window.peak_requests == window.request_limit  # it was saturated
