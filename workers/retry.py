"""When to try a failed call again, and after how long: pure decisions, no sleeping.

Only ``RetryableError`` is retried (429, 408, 409, 5xx, transport failures). A 429 is
retried at once: its ``retry-after`` is the deployment's pause, which the lane's quota
applies to every request (``workers.quota``), so the row simply queues for admission
again. Any other pause is the server's ``retry-after`` when it gave one, else
exponential backoff with full jitter, capped; randomness comes in as an argument so
tests choose it. The engine asks ``pause`` for every failed attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.errors import EndpointError, RateLimitedError, RetryableError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many attempts a row gets and how the pause between them grows."""

    max_attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0

    def pause(self, attempt: int, error: EndpointError, jitter: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up.

        ``attempt`` counts the attempts made so far (1 after the first); ``jitter`` is
        uniform in [0, 1).
        """
        if not isinstance(error, RetryableError) or attempt >= self.max_attempts:
            return None
        if isinstance(error, RateLimitedError):
            return 0.0  # the quota holds the row back for the deployment's pause
        if error.retry_after_s is not None:
            # A little spread so the requests the server turned away do not return together.
            return error.retry_after_s + jitter * self.base_s
        return jitter * min(self.cap_s, self.base_s * 2 ** (attempt - 1))
