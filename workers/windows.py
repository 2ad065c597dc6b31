"""The two meters a deployment's ledger keeps: a refilled allowance and a copy of the server's window.

- ``Budget``: requests or tokens refilled continuously at the per-minute rate, holding at
  most a burst's worth; a large request may overdraw it, and the debt is paid back before
  the next one goes, so a long prompt is never starved by short ones.
- ``WindowLog``: what was admitted over the last window, and what is left: the same test
  the server applies, so the boundary of a window does not turn into 429s.

``Ticket`` is an admission as the ledger remembers it, to reconcile with the answer.
Pure: every method takes ``now``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


class Budget:
    """A continuously refilled allowance that may be overdrawn by one request.

    ``credit`` may lift the level above ``capacity`` (a fresh deployment's first window);
    refills never do.
    """

    def __init__(self, per_second: float, capacity: float, now: float):
        self.per_second = per_second
        self.capacity = capacity
        self.level = capacity
        self._stamp = now

    def hold(self, now: float) -> None:
        """Accrue nothing up to ``now`` (the allowance starts filling from here)."""
        self._stamp = now

    def refill(self, now: float) -> None:
        """Bring the level up to ``now``."""
        if self.level < self.capacity:
            self.level = min(self.capacity, self.level + (now - self._stamp) * self.per_second)
        self._stamp = now

    def wait(self, now: float, cost: float) -> float:
        """Seconds until ``cost`` (or a full bucket, for a larger one) is available."""
        self.refill(now)
        need = min(cost, max(self.capacity, self.level)) - self.level
        return max(0.0, need / self.per_second)

    def take(self, now: float, cost: float) -> None:
        """Spend ``cost``; the level may go below zero."""
        self.refill(now)
        self.level -= cost

    def credit(self, now: float, amount: float) -> None:
        """Add ``amount`` beyond the capacity (spent before the refill resumes)."""
        self.refill(now)
        self.level += amount

    def drain(self, now: float) -> None:
        """Forget any saved-up burst (after a pause, resume at the steady rate)."""
        self.refill(now)
        self.level = min(self.level, 0.0)


@dataclass(slots=True)
class Entry:
    """One admission in the window: when, how many requests and tokens."""

    stamp: float
    requests: int
    tokens: int
    #: Another client's usage, booked from the server's headers (not a request of this one).
    foreign: bool = False


class WindowLog:
    """What was admitted over the last ``window_s`` seconds, and what is left."""

    def __init__(self, request_limit: int, token_limit: int, window_s: float, guard_s: float = 0.0):
        self.request_limit = request_limit
        self.token_limit = token_limit
        #: A request larger than the whole window goes alone once the window is empty, but one no
        #: larger than this waits for the limit to grow to it (a share of a quota still growing;
        #: ``None``: the token limit, no waiting).
        self.largest: int | None = None
        self.server_window_s = window_s
        # Entries are kept a little past the window: the server stamps a request when it
        # arrives, and a request that overtakes an older one in flight must still fit.
        self.guard_s = guard_s
        self.window_s = window_s + guard_s
        self._entries: deque[Entry] = deque()
        self.requests = 0
        self.tokens = 0

    def widen_guard(self, most_s: float = 1.0) -> None:
        """Keep entries longer: the server stamps requests later than this copy thought."""
        self.guard_s = min(most_s, max(0.01, self.guard_s * 2))
        self.window_s = self.server_window_s + self.guard_s

    def expire(self, now: float) -> None:
        """Forget what has left the window by ``now``."""
        while self._entries and self._entries[0].stamp <= now - self.window_s:
            gone = self._entries.popleft()
            self.requests -= gone.requests
            self.tokens -= gone.tokens

    def wait(self, now: float, tokens: int) -> float:
        """Seconds until one more request of ``tokens`` fits the window."""
        self.expire(now)
        tokens = min(tokens, max(self.token_limit, self.largest or 0))
        requests, used = self.requests, self.tokens
        if requests + 1 <= self.request_limit and used + tokens <= self.token_limit:
            return 0.0
        for entry in self._entries:
            requests -= entry.requests
            used -= entry.tokens
            if requests + 1 <= self.request_limit and used + tokens <= self.token_limit:
                return max(1e-3, entry.stamp + self.window_s - now)
        return self.window_s

    def entries_since(self, start: float) -> list[Entry]:
        """The entries stamped after ``start`` (what is still kept)."""
        return [e for e in self._entries if e.stamp > start]

    def own_tokens_through(self, entry: Entry, span_s: float) -> int:
        """This client's tokens admitted over ``span_s`` seconds up to ``entry``, ``entry`` included
        (what the server had seen of this client when it admitted that request, if in order)."""
        total = 0
        for kept in self._entries:
            if kept.foreign:
                continue
            if kept.stamp > entry.stamp:
                break  # past it (``entry`` itself expired): what follows came later
            if kept.stamp > entry.stamp - span_s:
                total += kept.tokens
            if kept is entry:
                break
        return total

    def own_after(self, entry: Entry, span_s: float) -> tuple[int, int]:
        """This client's requests and tokens admitted after ``entry``, up to ``span_s`` seconds later.

        From the newest back, so the cost is what was admitted since ``entry`` (a request's
        answer comes back within a latency, not a window).
        """
        requests = tokens = 0
        for kept in reversed(self._entries):
            if kept is entry or (not kept.foreign and kept.stamp < entry.stamp):
                break  # reached it (or passed it: ``entry`` expired)
            if not kept.foreign and kept.stamp <= entry.stamp + span_s:
                requests += kept.requests
                tokens += kept.tokens
        return requests, tokens

    def add(self, now: float, requests: int, tokens: int, *, foreign: bool = False) -> Entry:
        """Record an admission (or foreign usage); returns the entry for a later refund."""
        self.expire(now)
        entry = Entry(now, requests, tokens, foreign)
        self._entries.append(entry)
        self.requests += requests
        self.tokens += tokens
        return entry

    def refund(self, entry: Entry) -> None:
        """The server did not admit this request after all (it answered 429)."""
        if any(kept is entry for kept in self._entries):
            self.requests -= entry.requests
            self.tokens -= entry.tokens
            entry.requests = entry.tokens = 0

    @property
    def remaining(self) -> tuple[int, int]:
        """Requests and tokens the window still allows (as of the last call)."""
        return self.request_limit - self.requests, self.token_limit - self.tokens


@dataclass(slots=True)
class Ticket:
    """An admitted request: its window entry, what the client thought was left after it,
    and how much the client had admitted in all by then."""

    entry: Entry
    remaining_requests: int
    remaining_tokens: int
    total_requests: int
    total_tokens: int
    #: Tokens the client's bucket still held after this admission (how far from its edge it was).
    bucket_room: float = 0.0
    #: The copy's request limit then (the remaining counts are against it; it may move before the answer).
    request_limit: int = 0
    #: Its entry in the short window's copy, when one is kept (``Ledger.short``).
    short: Entry | None = None
    #: Other tenants' requests and tokens the client had booked by then, in all.
    foreign_requests: int = 0
    foreign_tokens: int = 0
    #: The copy's token limit then (``remaining_tokens`` is against it).
    token_limit: int = 0
