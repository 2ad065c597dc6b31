"""How a deployment might meter its quota: three guesses, since Azure does not publish which.

Each is charged one request and prompt + max_tokens tokens at admission, and holds at
most ``per-minute × window_s / 60`` of each "per window":

- ``SlidingLog``: over any ``window_s`` seconds (the strictest; what the simulator has
  always done);
- ``TokenBucket``: buckets holding one window's worth, refilled continuously at the
  per-minute rate (a fresh deployment takes a whole window at once, then the rate);
- ``FixedWindows``: clock-aligned windows (``floor(now / window_s)``), each with the
  window's allowance, reset at its start.

Time is passed in, never read, so tests drive it. ``MinuteTally`` counts what was
admitted over the last minute, for servers whose headers speak per minute.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

Metering = Literal["sliding", "bucket", "fixed"]
METERINGS: tuple[Metering, ...] = ("sliding", "bucket", "fixed")


@dataclass(frozen=True, slots=True)
class Admission:
    """The meter's answer to one request."""

    admitted: bool
    retry_after_s: float
    remaining_requests: int
    remaining_tokens: int


class Meter(Protocol):
    """A deployment's quota as the server applies it."""

    window_s: float
    request_limit: int
    token_limit: int
    peak_requests: int
    peak_tokens: int

    def try_admit(self, now: float, tokens: int, requests: int = 1) -> Admission:
        """Admit a request of ``tokens`` at ``now`` if it fits, else say how long to wait."""
        ...


def _limits(requests_per_minute: int, tokens_per_minute: int, window_s: float) -> tuple[int, int]:
    return max(1, int(requests_per_minute * window_s / 60)), max(1, int(tokens_per_minute * window_s / 60))


class SlidingLog:
    """Requests and tokens admitted in the last ``window_s`` seconds."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, window_s: float):
        self.window_s = window_s
        self.request_limit, self.token_limit = _limits(requests_per_minute, tokens_per_minute, window_s)
        self._entries: deque[tuple[float, int, int]] = deque()
        self._requests = 0
        self._tokens = 0
        #: The most requests and tokens ever inside one window: tests check these against the limits.
        self.peak_requests = 0
        self.peak_tokens = 0

    def try_admit(self, now: float, tokens: int, requests: int = 1) -> Admission:
        self._expire(now)
        tokens = min(tokens, self.token_limit)  # a request larger than the window still gets in alone
        if self._requests + requests <= self.request_limit and self._tokens + tokens <= self.token_limit:
            self._entries.append((now, requests, tokens))
            self._requests += requests
            self._tokens += tokens
            self.peak_requests = max(self.peak_requests, self._requests)
            self.peak_tokens = max(self.peak_tokens, self._tokens)
            return Admission(True, 0.0, *self._remaining())
        return Admission(False, self._wait(now, tokens, requests), *self._remaining())

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._entries and self._entries[0][0] <= horizon:
            _, requests, tokens = self._entries.popleft()
            self._requests -= requests
            self._tokens -= tokens

    def _remaining(self) -> tuple[int, int]:
        return self.request_limit - self._requests, self.token_limit - self._tokens

    def _wait(self, now: float, tokens: int, requests: int) -> float:
        """Seconds until the oldest entries have expired enough for this request."""
        count, used, wait_until = self._requests, self._tokens, now
        for stamp, charged_requests, charged in self._entries:
            if count + requests <= self.request_limit and used + tokens <= self.token_limit:
                break
            count -= charged_requests
            used -= charged
            wait_until = stamp + self.window_s
        return max(0.001, wait_until - now)


class TokenBucket:
    """Two buckets of one window's worth each, refilled continuously at the per-minute rates."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, window_s: float, now: float = 0.0):
        self.window_s = window_s
        self.request_limit, self.token_limit = _limits(requests_per_minute, tokens_per_minute, window_s)
        self._rates = (self.request_limit / window_s, self.token_limit / window_s)
        self._levels = [float(self.request_limit), float(self.token_limit)]
        self._stamp: float | None = None
        self.peak_requests = 0
        self.peak_tokens = 0

    def try_admit(self, now: float, tokens: int, requests: int = 1) -> Admission:
        self._refill(now)
        tokens = min(tokens, self.token_limit)
        need = (requests, tokens)
        if all(level >= n for level, n in zip(self._levels, need, strict=True)):
            self._levels = [level - n for level, n in zip(self._levels, need, strict=True)]
            self.peak_requests = max(self.peak_requests, self.request_limit - math.floor(self._levels[0]))
            self.peak_tokens = max(self.peak_tokens, self.token_limit - math.floor(self._levels[1]))
            return Admission(True, 0.0, *self._remaining())
        wait = max((n - level) / rate for level, n, rate in zip(self._levels, need, self._rates, strict=True))
        return Admission(False, max(0.001, wait), *self._remaining())

    def _refill(self, now: float) -> None:
        if self._stamp is not None:
            elapsed = max(0.0, now - self._stamp)
            limits = (self.request_limit, self.token_limit)
            self._levels = [min(limit, level + elapsed * rate)
                            for level, limit, rate in zip(self._levels, limits, self._rates, strict=True)]
        self._stamp = now

    def _remaining(self) -> tuple[int, int]:
        return math.floor(self._levels[0]), math.floor(self._levels[1])


class FixedWindows:
    """Clock-aligned windows, each allowed one window's worth, reset when the next begins."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, window_s: float):
        self.window_s = window_s
        self.request_limit, self.token_limit = _limits(requests_per_minute, tokens_per_minute, window_s)
        self._current = -1
        self._requests = 0
        self._tokens = 0
        self.peak_requests = 0
        self.peak_tokens = 0

    def try_admit(self, now: float, tokens: int, requests: int = 1) -> Admission:
        index = math.floor(now / self.window_s)
        if index != self._current:
            self._current, self._requests, self._tokens = index, 0, 0
        tokens = min(tokens, self.token_limit)
        if self._requests + requests <= self.request_limit and self._tokens + tokens <= self.token_limit:
            self._requests += requests
            self._tokens += tokens
            self.peak_requests = max(self.peak_requests, self._requests)
            self.peak_tokens = max(self.peak_tokens, self._tokens)
            return Admission(True, 0.0, *self._remaining())
        return Admission(False, max(0.001, (index + 1) * self.window_s - now), *self._remaining())

    def _remaining(self) -> tuple[int, int]:
        return self.request_limit - self._requests, self.token_limit - self._tokens


def meter(metering: Metering, requests_per_minute: int, tokens_per_minute: int, window_s: float,
          now: float = 0.0) -> Meter:
    """The meter of that kind."""
    if metering == "bucket":
        return TokenBucket(requests_per_minute, tokens_per_minute, window_s, now)
    if metering == "fixed":
        return FixedWindows(requests_per_minute, tokens_per_minute, window_s)
    return SlidingLog(requests_per_minute, tokens_per_minute, window_s)


class MinuteTally(SlidingLog):
    """What was admitted over the last 60 s, for headers that count per minute (a sliding log of a
    minute that counts what the deployment's own meter admitted, never refusing)."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int):
        super().__init__(requests_per_minute, tokens_per_minute, 60.0)

    def add(self, now: float, requests: int, tokens: int) -> None:
        self._expire(now)
        self._entries.append((now, requests, tokens))
        self._requests += requests
        self._tokens += tokens

    def remaining(self, now: float) -> tuple[int, int]:
        self._expire(now)
        return max(0, self.request_limit - self._requests), max(0, self.token_limit - self._tokens)
