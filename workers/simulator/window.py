"""A deployment's quota as Azure enforces it: over a short sliding window.

Each admitted request is charged one request and prompt + max_tokens tokens at
admission. Over any ``window_s`` seconds at most ``per-minute × window_s / 60`` of
each may be admitted; past that the answer is 429 with the time until enough of the
window has expired. Time is passed in, never read, so tests drive it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Admission:
    """The window's answer to one request."""

    admitted: bool
    retry_after_s: float
    remaining_requests: int
    remaining_tokens: int


class SlidingWindow:
    """Requests and tokens admitted in the last ``window_s`` seconds."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, window_s: float):
        self.window_s = window_s
        self.request_limit = max(1, int(requests_per_minute * window_s / 60))
        self.token_limit = max(1, int(tokens_per_minute * window_s / 60))
        self._entries: deque[tuple[float, int]] = deque()
        self._tokens = 0
        #: The most requests and tokens ever inside one window: tests check these against the limits.
        self.peak_requests = 0
        self.peak_tokens = 0

    def try_admit(self, now: float, tokens: int) -> Admission:
        """Admit a request of ``tokens`` at ``now`` if it fits, else say how long to wait."""
        self._expire(now)
        tokens = min(tokens, self.token_limit)  # a request larger than the window still gets in alone
        if len(self._entries) + 1 <= self.request_limit and self._tokens + tokens <= self.token_limit:
            self._entries.append((now, tokens))
            self._tokens += tokens
            self.peak_requests = max(self.peak_requests, len(self._entries))
            self.peak_tokens = max(self.peak_tokens, self._tokens)
            return Admission(True, 0.0, *self._remaining())
        return Admission(False, self._wait(now, tokens), *self._remaining())

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._entries and self._entries[0][0] <= horizon:
            self._tokens -= self._entries.popleft()[1]

    def _remaining(self) -> tuple[int, int]:
        return self.request_limit - len(self._entries), self.token_limit - self._tokens

    def _wait(self, now: float, tokens: int) -> float:
        """Seconds until the oldest entries have expired enough for this request."""
        count, used, wait_until = len(self._entries), self._tokens, now
        for stamp, charged in self._entries:
            if count + 1 <= self.request_limit and used + tokens <= self.token_limit:
                break
            count -= 1
            used -= charged
            wait_until = stamp + self.window_s
        return max(0.001, wait_until - now)
