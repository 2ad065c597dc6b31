"""Retry decisions: what is retried, for how long, and when to give up."""

from __future__ import annotations

import pytest

from workers import AuthRejectedError, RateLimitedError, RetryPolicy, RowFailedError, ServerError, TransportError

POLICY = RetryPolicy(max_attempts=4, base_s=0.5, cap_s=3.0)


@pytest.mark.parametrize(
    ("error", "attempt", "jitter", "expected"),
    [
        (ServerError("x", status=503), 1, 0.5, 0.25),
        (ServerError("x", status=503), 2, 0.5, 0.5),
        (TransportError("reset"), 3, 1.0, 2.0),
        (TransportError("reset"), 3, 0.0, 0.0),
        # A 429 goes straight back to the quota, which pauses admission for the retry-after.
        (RateLimitedError("x", status=429, retry_after_s=2.0), 1, 0.0, 0.0),
        (RateLimitedError("x", status=429, retry_after_s=2.0), 3, 1.0, 0.0),
        (RateLimitedError("x", status=429), 1, 0.5, 0.0),
        (RateLimitedError("x", status=429, retry_after_s=2.0), 4, 0.5, None),
        (ServerError("x", status=503, retry_after_s=2.0), 1, 1.0, 2.5),
        (ServerError("x", status=500), 4, 0.5, None),
        (RowFailedError("x", status=422), 1, 0.5, None),
        (AuthRejectedError("x", status=401), 1, 0.5, None),
    ],
)
def test_pause(error: Exception, attempt: int, jitter: float, expected: float | None) -> None:
    assert POLICY.pause(attempt, error, jitter) == expected  # type: ignore[arg-type]


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(max_attempts=20, base_s=1.0, cap_s=5.0)
    assert policy.pause(15, ServerError("x"), 0.999) == pytest.approx(4.995)
