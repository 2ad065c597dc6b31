"""Client-side admission that fills a deployment's quota without tripping it.

Azure meters a serverless deployment's quota over short windows (1–10 s) and charges a
request at admission as prompt + max_tokens. Two things keep a job just under that:

- ``Budget``: requests and tokens refill continuously at the per-minute rate and hold
  at most ``burst_s`` seconds' worth (one by default, never more than the window), so
  a job starts at once without a 429 storm and then runs smooth: bursts as large as the
  window pass the server's test only if the server stamps them as fast as the client
  sent them, and a busy front door does not. A large request may overdraw it; the
  debt is paid back before the next one goes, so a long prompt is never starved by
  short ones. An unforeseen 429 halves the burst, down to a quarter second's worth.
- ``WindowLog``: the client's copy of the server's sliding window. A request goes only
  when it fits what the window still allows, the same test the server applies, so the
  boundary of a window does not turn into 429s.

``Ledger`` combines them as pure functions of ``now``; it also learns from the
server's ``x-ratelimit-remaining-*`` headers (usage it did not send — another client on
the same deployment — is entered as foreign usage) and from 429s (one shared pause for
the whole pool, sized by ``retry-after``). ``Quota`` is the async face used by the
pool: one admission at a time, in arrival order.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass


class Budget:
    """A continuously refilled allowance that may be overdrawn by one request."""

    def __init__(self, per_second: float, capacity: float, now: float):
        self.per_second = per_second
        self.capacity = capacity
        self.level = capacity
        self._stamp = now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.per_second)
        self._stamp = now

    def wait(self, now: float, cost: float) -> float:
        """Seconds until ``cost`` (or a full bucket, for a larger one) is available."""
        self._refill(now)
        need = min(cost, self.capacity) - self.level
        return max(0.0, need / self.per_second)

    def take(self, now: float, cost: float) -> None:
        """Spend ``cost``; the level may go below zero."""
        self._refill(now)
        self.level -= cost

    def drain(self, now: float) -> None:
        """Forget any saved-up burst (after a pause, resume at the steady rate)."""
        self._refill(now)
        self.level = min(self.level, 0.0)


@dataclass(slots=True)
class Entry:
    """One admission in the window: when, how many requests and tokens."""

    stamp: float
    requests: int
    tokens: int


class WindowLog:
    """What was admitted over the last ``window_s`` seconds, and what is left."""

    def __init__(self, request_limit: int, token_limit: int, window_s: float, guard_s: float = 0.0):
        self.request_limit = request_limit
        self.token_limit = token_limit
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

    def _expire(self, now: float) -> None:
        while self._entries and self._entries[0].stamp <= now - self.window_s:
            gone = self._entries.popleft()
            self.requests -= gone.requests
            self.tokens -= gone.tokens

    def wait(self, now: float, tokens: int) -> float:
        """Seconds until one more request of ``tokens`` fits the window."""
        self._expire(now)
        tokens = min(tokens, self.token_limit)
        requests, used = self.requests, self.tokens
        if requests + 1 <= self.request_limit and used + tokens <= self.token_limit:
            return 0.0
        for entry in self._entries:
            requests -= entry.requests
            used -= entry.tokens
            if requests + 1 <= self.request_limit and used + tokens <= self.token_limit:
                return max(1e-3, entry.stamp + self.window_s - now)
        return self.window_s

    def add(self, now: float, requests: int, tokens: int) -> Entry:
        """Record an admission (or foreign usage); returns the entry for a later refund."""
        self._expire(now)
        entry = Entry(now, requests, tokens)
        self._entries.append(entry)
        self.requests += requests
        self.tokens += tokens
        return entry

    def refund(self, entry: Entry) -> None:
        """The server did not admit this request after all (it answered 429)."""
        if entry in self._entries:
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


class Ledger:
    """Admission decisions for one deployment's quota; every method takes ``now``."""

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, *, window_s: float = 10.0,
                 burst_s: float | None = None, guard_s: float = 0.05, bypass_windows: float = 2.0,
                 now: float = 0.0):
        rps, tps = requests_per_minute / 60, tokens_per_minute / 60
        burst_s = min(1.0 if burst_s is None else burst_s, window_s)
        self.window = WindowLog(max(1, int(rps * window_s)), max(1, int(tps * window_s)), window_s, guard_s)
        self.requests = Budget(rps, max(1.0, rps * burst_s), now)
        self.tokens = Budget(tps, max(1.0, tps * burst_s), now)
        self.bypass_windows = bypass_windows
        self.paused_until = now
        self.foreign_tokens = 0
        self.pauses = 0
        self.total_requests = 0
        self.total_tokens = 0

    def delay(self, now: float, tokens: int) -> float:
        """Seconds to wait before a request of ``tokens`` may go (0: now)."""
        wait = max(
            self.paused_until - now,
            self.requests.wait(now, 1),
            self.tokens.wait(now, tokens),
            self.window.wait(now, tokens),
        )
        return wait if wait > 1e-6 else 0.0  # float residue of a refill is not a wait

    def choose(self, now: float, costs: Sequence[int], oldest_waited_s: float) -> tuple[int | None, float]:
        """Which of the waiting requests (oldest first) may go now.

        The oldest goes as soon as it fits. Until it has waited ``bypass_windows``
        windows, a younger one that fits the room left at the window's edge may go
        first (the oldest cannot use that room yet anyway); after that, nobody overtakes
        it. Returns the index and 0, or ``None`` and how long to wait before asking again.
        """
        first = self.delay(now, costs[0])
        if first == 0.0:
            return 0, 0.0
        bypass_left = self.window.window_s * self.bypass_windows - oldest_waited_s
        if bypass_left <= 1e-6:
            return None, first
        soonest = first
        for index in range(1, len(costs)):
            wait = self.delay(now, costs[index])
            if wait == 0.0:
                return index, 0.0
            soonest = min(soonest, wait)
        return None, min(soonest, bypass_left)

    def admit(self, now: float, tokens: int) -> Ticket:
        """Charge one request of ``tokens``; call when ``delay`` says 0."""
        self.requests.take(now, 1)
        self.tokens.take(now, tokens)
        entry = self.window.add(now, 1, tokens)
        self.total_requests += 1
        self.total_tokens += tokens
        return Ticket(entry, *self.window.remaining, self.total_requests, self.total_tokens)

    def observe(self, ticket: Ticket, remaining_requests: int | None, remaining_tokens: int | None) -> None:
        """Reconcile with the server's own count of what its window has left after this request.

        The server may have seen any of the requests admitted since this one (they race
        in flight), so only a shortfall beyond all of those is certain to be someone
        else's usage of the deployment; it is entered at the request's admission time.
        """
        since_requests = self.total_requests - ticket.total_requests
        since_tokens = self.total_tokens - ticket.total_tokens
        gap_requests = (ticket.remaining_requests - remaining_requests - since_requests
                        if remaining_requests is not None else 0)
        gap_tokens = ticket.remaining_tokens - remaining_tokens - since_tokens if remaining_tokens is not None else 0
        if gap_requests > 0 or gap_tokens > 0:
            self.foreign_tokens += max(0, gap_tokens)
            self.window.add(ticket.entry.stamp, max(0, gap_requests), max(0, gap_tokens))

    def rate_limited(self, now: float, ticket: Ticket, retry_after_s: float | None) -> None:
        """A 429: refund the request, pause everyone until the server's window has room.

        A 429 the window copy did not foresee means the server stamps requests later
        than the client sent them, meters over a shorter window than configured, or is
        shared: the window copy's guard doubles (up to 1 s), bursts are halved (down to
        a quarter second's worth), and the pool resumes at the steady rate.
        """
        self.window.refund(ticket.entry)
        pause = retry_after_s if retry_after_s is not None else 1.0
        if now + pause > self.paused_until:
            self.pauses += 1
            self.paused_until = now + pause
            self.window.widen_guard()
            for budget in (self.requests, self.tokens):
                budget.capacity = max(budget.per_second / 4, budget.capacity / 2)
        self.requests.drain(now)
        self.tokens.drain(now)


#: Leases a share of a quota other processes also draw on: ``await lease(tokens, requests)``
#: returns once that many tokens and requests are this process's to admit.
Lease = Callable[[int, int], Awaitable[None]]


class Credit:
    """Tokens and requests leased from a quota shared with other processes, spent locally.

    When several processes (slices of one scaled-out job) send to one deployment, each
    admits a request only against credit it leased from a shared rate limit (``Lease``;
    in flows, Prefect's global concurrency limits). Leasing per request would cost a
    round trip each, so credit is leased in chunks (``token_chunk``, ``request_chunk``;
    a larger row's whole charge in pieces of at most ``most_tokens``), and leased ahead:
    when what is held falls below one chunk, the next is leased in the background, so
    admissions rarely wait on a round trip. Credit left unspent for ``horizon_s``
    seconds is dropped: spending it late would put old quota into a new window.
    """

    def __init__(self, lease: Lease, *, token_chunk: int, request_chunk: int, most_tokens: int,
                 most_requests: int, horizon_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self._lease = lease
        self.token_chunk = max(1, min(token_chunk, most_tokens))
        self.request_chunk = max(1, min(request_chunk, most_requests))
        self.most_tokens = max(1, most_tokens)
        self.horizon_s = horizon_s
        self._clock = clock
        self.tokens = 0
        self.requests = 0
        self._leased_at = clock()
        self._refills: dict[str, asyncio.Task[None]] = {}
        self._need_tokens = 0
        self._failure: BaseException | None = None
        #: Leases taken and credit dropped unspent, for the benchmark and the logs.
        self.leases = 0
        self.dropped_tokens = 0

    def _expire(self) -> None:
        if self._clock() - self._leased_at > self.horizon_s and (self.tokens or self.requests):
            self.dropped_tokens += max(0, self.tokens)
            self.tokens = self.requests = 0

    def covers(self, tokens: int) -> bool:
        """Whether a request of ``tokens`` can be admitted on the credit held."""
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        self._expire()
        return self.tokens >= tokens and self.requests >= 1

    def spend(self, tokens: int) -> None:
        self.tokens -= tokens
        self.requests -= 1
        self._refill()

    async def top_up(self, tokens: int) -> None:
        """Wait until the credit held covers one request of ``tokens``."""
        self._expire()
        self._need_tokens = max(self._need_tokens, tokens)
        while not self.covers(tokens):
            self._refill()
            done, _ = await asyncio.wait(list(self._refills.values()), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        self._need_tokens = 0
        self._refill()

    def _refill(self) -> None:
        """Start leasing in the background whatever has fallen below a chunk (or below a waiting row)."""
        if self.tokens < max(self.token_chunk, self._need_tokens) and "tokens" not in self._refills:
            self._start("tokens", self._lease_tokens())
        if self.requests < self.request_chunk and "requests" not in self._refills:
            self._start("requests", self._lease_requests())

    def _start(self, kind: str, job: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(job)
        self._refills[kind] = task
        task.add_done_callback(lambda done: self._finished(kind, done))

    def _finished(self, kind: str, task: asyncio.Task[None]) -> None:
        self._refills.pop(kind, None)
        if not task.cancelled() and task.exception() is not None:
            # Raised by the ``top_up`` waiting on it; a background refill's failure shows at the next one.
            self._failure = task.exception()

    async def _lease_tokens(self) -> None:
        piece = min(self.most_tokens, max(self.token_chunk, self._need_tokens - self.tokens))
        await self._lease(piece, 0)
        self._credited(piece, 0)

    async def _lease_requests(self) -> None:
        await self._lease(0, self.request_chunk)
        self._credited(0, self.request_chunk)

    def _credited(self, tokens: int, requests: int) -> None:
        self._expire()
        self.tokens += tokens
        self.requests += requests
        self.leases += 1
        self._leased_at = self._clock()

    async def aclose(self) -> None:
        """Stop leasing (what is held is left unspent)."""
        for task in list(self._refills.values()):
            task.cancel()
        await asyncio.gather(*self._refills.values(), return_exceptions=True)


class Quota:
    """The pool's admission line for one deployment: one request admitted at a time, in order.

    With ``credit``, every admission is also paid for from a quota shared with other
    processes (see ``Credit``). Build it inside the coroutine that runs the pool: its
    lock belongs to that event loop.
    """

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, *, window_s: float = 10.0,
                 burst_s: float | None = None, clock: Callable[[], float] | None = None,
                 credit: Credit | None = None):
        self._clock = clock or time.monotonic
        self.ledger = Ledger(requests_per_minute, tokens_per_minute, window_s=window_s, burst_s=burst_s,
                             now=self._clock())
        self.credit = credit
        self._line = asyncio.Lock()
        #: Admissions that went ahead of an older waiting row (look-ahead packing).
        self.overtakes = 0

    async def admit(self, tokens: int) -> Ticket:
        """Wait for this request's turn and for room in every budget; then charge it."""
        return (await self.admit_first_fit([tokens], self._clock()))[1]

    async def admit_first_fit(self, costs: Sequence[int], oldest_since: float) -> tuple[int, Ticket]:
        """Admit one of several waiting requests, as ``Ledger.choose`` picks; returns its index."""
        async with self._line:
            while True:
                now = self._clock()
                index, wait = self.ledger.choose(now, costs, now - oldest_since)
                if index is not None:
                    if self.credit is not None:
                        if not self.credit.covers(costs[index]):
                            await self.credit.top_up(costs[index])
                            continue  # time passed: choose again
                        self.credit.spend(costs[index])
                    self.overtakes += index > 0
                    return index, self.ledger.admit(now, costs[index])
                await asyncio.sleep(wait)

    def observe(self, ticket: Ticket, remaining_requests: int | None, remaining_tokens: int | None) -> None:
        """See ``Ledger.observe``.

        With ``credit``, the other users of the deployment are this job's other processes,
        and the shared limit already accounts for them: entering their usage here too would
        count it twice, and the process that started last would hardly ever send.
        """
        if self.credit is None:
            self.ledger.observe(ticket, remaining_requests, remaining_tokens)

    def rate_limited(self, ticket: Ticket, retry_after_s: float | None) -> None:
        """See ``Ledger.rate_limited``."""
        self.ledger.rate_limited(self._clock(), ticket, retry_after_s)
