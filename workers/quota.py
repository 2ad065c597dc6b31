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

import structlog

from workers.credit import Credit, Lease
from workers.learning import QuotaEstimate, QuotaMode, read_hints

log = structlog.get_logger(__name__)
__all__ = ["Budget", "Credit", "Lease", "Ledger", "Quota", "Ticket", "WindowLog"]


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

    def _refill(self, now: float) -> None:
        if self.level < self.capacity:
            self.level = min(self.capacity, self.level + (now - self._stamp) * self.per_second)
        self._stamp = now

    def wait(self, now: float, cost: float) -> float:
        """Seconds until ``cost`` (or a full bucket, for a larger one) is available."""
        self._refill(now)
        need = min(cost, max(self.capacity, self.level)) - self.level
        return max(0.0, need / self.per_second)

    def take(self, now: float, cost: float) -> None:
        """Spend ``cost``; the level may go below zero."""
        self._refill(now)
        self.level -= cost

    def credit(self, now: float, amount: float) -> None:
        """Add ``amount`` beyond the capacity (spent before the refill resumes)."""
        self._refill(now)
        self.level += amount

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

    def tokens_between(self, start: float, end: float) -> int:
        """Tokens of the entries stamped in ``(start, end]`` (what is still kept)."""
        return sum(e.tokens for e in self._entries if start < e.stamp <= end)

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
    #: Tokens the client's bucket still held after this admission (how far from its edge it was).
    bucket_room: float = 0.0
    #: The copy's request limit then (the remaining counts are against it; it may move before the answer).
    request_limit: int = 0


class Ledger:
    """Admission decisions for one deployment's quota; every method takes ``now``.

    The limits in force are the stated quota times what ``estimate`` believes the
    deployment admits (``workers.learning``). A fresh deployment takes a whole window at
    once, so the window's allowance beyond the steady burst is released in ``BONUS_STEPS``
    steps over ``BONUS_WINDOWS`` windows while no 429 says otherwise (slow start): a bucket
    keeps what is not taken at once, so it is all credited to the job, at no more than a
    quarter above the steady rate (answers never pile up in the client, and a job that
    overstates its quota learns it at about its own level). The first 429 in that phase ends it.
    """

    BONUS_STEPS = 8
    BONUS_WINDOWS = 4

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, *, window_s: float = 10.0,
                 burst_s: float | None = None, guard_s: float = 0.05, bypass_windows: float = 2.0,
                 now: float = 0.0, mode: QuotaMode = "cap", first_window: bool = True):
        self.stated_rpm, self.stated_tpm = requests_per_minute, tokens_per_minute
        self.window_s = window_s
        self.stated_window = (max(1, int(requests_per_minute / 60 * window_s)),
                              max(1, int(tokens_per_minute / 60 * window_s)))
        self.burst_s = min(1.0 if burst_s is None else burst_s, window_s)
        self.estimate = QuotaEstimate(window_s, mode=mode, now=now)
        self.window = WindowLog(*self.stated_window, window_s, guard_s)
        self.requests = Budget(1.0, 1.0, now)
        self.tokens = Budget(1.0, 1.0, now)
        self._burst_share = 1.0
        #: ``bucket``: the server is taken to be a bucket of one window, refilled at the rate (a
        #: fresh deployment's whole window, then the steady rate, no window copy consulted);
        #: ``sliding``: the strictest meter, the window copy consulted. The first 429 past the
        #: slow start proves a bucket wrong.
        self.model = "bucket" if first_window else "sliding"
        #: When the last 429 taught something: the 429s of requests sent before it teach nothing new.
        self._learned_at = -1e18
        self._started = now
        self._apply(now)
        self.requests.level = max(1.0, self.stated_rpm / 60 * self.burst_s)
        self.tokens.level = max(1.0, self.stated_tpm / 60 * self.burst_s)
        self.bypass_windows = bypass_windows
        self.paused_until = now
        self.foreign_tokens = 0
        self.pauses = 0
        self.total_requests = 0
        self.total_tokens = 0
        #: 429s, and the admissions they refused (``total_*`` minus these: what the quota was charged).
        self.rate_limited_responses = 0
        self.refused_tokens = 0
        #: The first window's allowance still to be released beyond the steady burst (slow start).
        self.bonus_left = (self.window.request_limit - self.requests.level,
                           self.window.token_limit - self.tokens.level) if first_window else (0.0, 0.0)
        self._bonus_step = tuple(max(0.0, b) / self.BONUS_STEPS for b in self.bonus_left)
        self._next_bonus = now

    # --- what is in force ---------------------------------------------------------------

    @property
    def charged_tokens(self) -> int:
        """Tokens the deployment's quota was charged (prompt + ``max_tokens`` of every request it took)."""
        return self.total_tokens - self.refused_tokens

    @property
    def charged_requests(self) -> int:
        """Requests the deployment's quota took (admitted, less those it refused with 429)."""
        return self.total_requests - self.rate_limited_responses

    @property
    def learned_per_minute(self) -> tuple[int, int]:
        """The requests/min and tokens/min the deployment is believed to admit."""
        return round(self.stated_rpm * self.estimate.requests), round(self.stated_tpm * self.estimate.tokens)

    def _apply(self, now: float) -> None:
        """Put the estimate into the window copy and the budgets."""
        # Rates from the whole-number window limits, as a server computes them, a hair under: a
        # bucket refilled a fraction of a token faster than the server's refuses at its edge.
        rps = self.stated_window[0] / self.window_s * self.estimate.requests * 0.998
        tps = self.stated_window[1] / self.window_s * self.estimate.tokens * 0.998
        self.window.request_limit = max(1, int(self.stated_window[0] * self.estimate.requests))
        self.window.token_limit = max(1, int(self.stated_window[1] * self.estimate.tokens))
        for budget, rate in ((self.requests, rps), (self.tokens, tps)):
            budget._refill(now)
            budget.per_second = rate
            span = self.window_s if self.model == "bucket" else self.burst_s * self._burst_share
            budget.capacity = max(1.0, rate * span)

    def _tick(self, now: float) -> None:
        if self.bonus_left != (0.0, 0.0):
            # A bucket holds a window at most: refills saved up while nothing was sent (the key
            # probe, the first answers) come out of what is still to be released.
            self.requests._refill(now)
            self.tokens._refill(now)
            self.bonus_left = (max(0.0, min(self.bonus_left[0], self.window.request_limit - self.requests.level)),
                               max(0.0, min(self.bonus_left[1], self.window.token_limit - self.tokens.level)))
        if self.bonus_left != (0.0, 0.0) and now >= self._next_bonus:
            self._next_bonus = now + self.window_s * self.BONUS_WINDOWS / self.BONUS_STEPS
            steps = [min(left, step) for left, step in zip(self.bonus_left, self._bonus_step, strict=True)]
            self.requests.credit(now, steps[0])
            self.tokens.credit(now, steps[1])
            self.bonus_left = (max(0.0, self.bonus_left[0] - steps[0]), max(0.0, self.bonus_left[1] - steps[1]))
            if min(self._bonus_step) <= 0 or max(self.bonus_left) <= 1e-9:
                self.bonus_left = (0.0, 0.0)
        if self.estimate.probe(now):
            self._apply(now)

    # --- admission ----------------------------------------------------------------------

    def delay(self, now: float, tokens: int) -> float:
        """Seconds to wait before a request of ``tokens`` may go (0: now)."""
        self._tick(now)
        return self._wait(now, tokens)

    def _wait(self, now: float, tokens: int) -> float:
        """``delay`` once ``_tick`` has run for ``now``."""
        wait = max(
            self.paused_until - now,
            self.requests.wait(now, 1),
            self.tokens.wait(now, tokens),
            self.window.wait(now, tokens) if self.model == "sliding" else 0.0,
        )
        return wait if wait > 1e-6 else 0.0  # float residue of a refill is not a wait

    def choose(self, now: float, costs: Sequence[int], oldest_waited_s: float) -> tuple[int | None, float]:
        """Which of the waiting requests (oldest first) may go now.

        The oldest goes as soon as it fits. Until it has waited ``bypass_windows``
        windows, a younger one that fits the room left at the window's edge may go
        first (the oldest cannot use that room yet anyway); after that, nobody overtakes
        it. Returns the index and 0, or ``None`` and how long to wait before asking again.
        """
        self._tick(now)  # once: the candidates are weighed against the same state
        first = self._wait(now, costs[0])
        if first == 0.0 and (self.model != "sliding" or len(costs) == 1):
            return 0, 0.0
        # While the first window is being released, ask again at its next step.
        step = self._next_bonus - now if self.bonus_left != (0.0, 0.0) and self._next_bonus > now else first
        bypass_left = self.window.window_s * self.bypass_windows - oldest_waited_s
        if bypass_left <= 1e-6:
            return (0, 0.0) if first == 0.0 else (None, min(first, step))
        soonest, best = first, 0 if first == 0.0 else None
        for index in range(1, len(costs)):
            if best is not None and costs[index] <= costs[best]:
                continue
            wait = self._wait(now, costs[index])
            if wait == 0.0:
                if self.model != "sliding":
                    return index, 0.0
                best = index
            soonest = min(soonest, wait)
        if best is not None:
            return best, 0.0
        return None, min(soonest, bypass_left, step)

    def admit(self, now: float, tokens: int) -> Ticket:
        """Charge one request of ``tokens``; call when ``delay`` says 0."""
        self.requests.take(now, 1)
        self.tokens.take(now, tokens)
        entry = self.window.add(now, 1, tokens)
        self.total_requests += 1
        self.total_tokens += tokens
        return Ticket(entry, *self.window.remaining, self.total_requests, self.total_tokens, self.tokens.level,
                      self.window.request_limit)

    # --- what the server says -----------------------------------------------------------

    def observe(self, ticket: Ticket, remaining_requests: int | None, remaining_tokens: int | None,
                limit_requests: int | None = None, limit_tokens: int | None = None, now: float | None = None) -> None:
        """Reconcile with the server's own count of what its window has left after this request.

        The values are hints (``workers.learning.read_hints``): implausible ones are dropped,
        a stated limit is evidence of the real quota, and per-minute figures say nothing
        about the window's usage. The server may have seen any of the requests admitted
        since this one (they race in flight), so only a shortfall beyond all of those is
        certain to be someone else's usage of the deployment; it is entered at the
        request's admission time, at most a quarter of the window per reading.
        """
        hints, scale = read_hints(remaining_requests, remaining_tokens, limit_requests, limit_tokens,
                                  window_requests=self.stated_window[0], window_tokens=self.stated_window[1],
                                  window_s=self.window_s)
        at = ticket.entry.stamp if now is None else now
        limits = (None if hints.limit_tokens is None else hints.limit_tokens / self.stated_window[1],
                  None if hints.limit_requests is None else hints.limit_requests / self.stated_window[0])
        if scale == "window" and min((x for x in limits if x is not None), default=1.0) < 0.5:
            fits = hints.limit_tokens is not None and hints.remaining_tokens is not None and \
                self._fits_the_window(ticket, hints.limit_tokens - hints.remaining_tokens)
            if not fits:
                limits = (None, None)
        if self.estimate.on_limit(at, *limits):
            self._apply(at)
        if scale != "window" or self.model != "sliding":
            return  # usage of another tenant shows only in figures of a window like the copy's
        since_requests = self.total_requests - ticket.total_requests
        since_tokens = self.total_tokens - ticket.total_tokens
        # A request limit moved while this request was out (a stated limit can move it five-fold at
        # once): its remaining count compares with nothing. Tokens are compared as admitted: after
        # a cut the difference is booked as others' usage for one window, a cautious reading that
        # spares the deployment a 429 when the cut came from another tenant's burst.
        gap_requests = (ticket.remaining_requests - hints.remaining_requests - since_requests
                        if hints.remaining_requests is not None and ticket.request_limit == self.window.request_limit
                        else 0)
        gap_tokens = (ticket.remaining_tokens - hints.remaining_tokens - since_tokens
                      if hints.remaining_tokens is not None else 0)
        gap_requests = min(gap_requests, self.window.request_limit // 4)
        gap_tokens = min(gap_tokens, self.window.token_limit // 4)
        if gap_requests > 0 or gap_tokens > 0:
            self.foreign_tokens += max(0, gap_tokens)
            self.window.add(ticket.entry.stamp, max(0, gap_requests), max(0, gap_tokens))

    def _fits_the_window(self, ticket: Ticket, server_used: int) -> bool:
        """Whether the server's usage figure is what this client sent over the job's window.

        A stated limit far below the job's means a lower quota, or the same quota over a
        shorter window (a 1 s window's limit is a tenth of a 10 s one's): only when the
        server's count of what it holds matches what this client sent over the job's
        window is it the first.
        """
        end = ticket.entry.stamp
        ours = self.window.tokens_between(end - self.window_s, end)
        return server_used > 0 and abs(ours - server_used) <= 0.25 * server_used

    def rate_limited(self, now: float, ticket: Ticket, retry_after_s: float | None) -> bool:
        """A 429: refund the request, learn from it, pause everyone until the server has room.

        In the slow start, the first 429 only ends it (this deployment does not take a
        whole window at once). Otherwise what the window copy held is evidence of the
        real quota (``QuotaEstimate.on_429``), the copy's guard doubles (up to 1 s), bursts
        are halved (down to a quarter second's worth), and the pool resumes at the steady
        rate. Without ``retry-after`` the pause lasts until the copy, with the new
        limits, has room for the request. Returns whether the estimate went down.
        """
        stamp, refused = ticket.entry.stamp, ticket.entry.tokens
        self.window._expire(now)
        held = self.window.tokens  # what the last window held, the refused request included
        self.window.refund(ticket.entry)
        self.rate_limited_responses += 1
        self.refused_tokens += refused
        learned, probing = False, False
        if stamp < self._learned_at:
            pass  # sent before the last lesson was drawn: the same evidence again
        elif self.model == "bucket" or self.bonus_left != (0.0, 0.0):
            probing = True  # the slow start's answer: says nothing of late stamps or bursts
            self.bonus_left = (0.0, 0.0)
            self._learned_at = now
            # A bucket like the server's refuses once a window plus the refill since the start
            # is spent; a log (or fixed windows) once a window is. Refused nearer the second:
            # not such a bucket after all (or not at this level), the strict model from now on.
            refill = self.tokens.per_second * min(self.window_s, now - self._started)
            if held < self.window.token_limit + refill / 2 or ticket.bucket_room >= 0.05 * self.window.token_limit:
                self.model = "sliding"
        else:
            # The server held at least what the copy holds, and less than that plus the refused
            # request: take the middle.
            used_tokens = (self.window.tokens + refused / 2) / self.stated_window[1]
            used_requests = (self.window.requests + 0.5) / self.stated_window[0]
            learned = self.estimate.on_429(now, used_tokens, used_requests)
            self._learned_at = now
        if now >= self.paused_until:
            self._burst_share = max(0.25, self._burst_share / 2)
            if not probing:  # the slow start's 429 says nothing of late stamps
                self.window.widen_guard()
        self._apply(now)
        pause = retry_after_s
        if pause is None:
            pause = min(self.window.window_s, max(0.25, self.window.wait(now, ticket.entry.tokens or 1)))
        if now + pause > self.paused_until:
            self.pauses += 1
            self.paused_until = now + pause
        self.requests.drain(now)
        self.tokens.drain(now)
        return learned


class Quota:
    """The pool's admission line for one deployment: one request admitted at a time, in order.

    With ``credit``, every admission is also paid for from a quota shared with other
    processes (see ``Credit``). Build it inside the coroutine that runs the pool: its
    lock belongs to that event loop. When the deployment turns out to admit less than
    the job states (or, with ``mode="auto"``, more), one warning says so
    (``quota_learned``), again only if the figure moves by a fifth.
    """

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, *, window_s: float = 10.0,
                 burst_s: float | None = None, clock: Callable[[], float] | None = None,
                 credit: Credit | None = None, mode: QuotaMode = "cap", name: str = "",
                 on_learned: Callable[[float, float], Awaitable[None]] | None = None):
        self._clock = clock or time.monotonic
        self.ledger = Ledger(requests_per_minute, tokens_per_minute, window_s=window_s, burst_s=burst_s,
                             now=self._clock(), mode=mode)
        self.credit = credit
        self.name = name
        self._line = asyncio.Lock()
        #: Admissions that went ahead of an older waiting row (look-ahead packing).
        self.overtakes = 0
        self._told: tuple[int, int] = (requests_per_minute, tokens_per_minute)
        #: Told (tokens share, requests share) whenever the estimate moves by a fifth: with ``credit``,
        #: so that every process sharing the quota leases at the rate this one learned.
        self.on_learned = on_learned
        self._telling: set[asyncio.Task[None]] = set()

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

    def observe(self, ticket: Ticket, remaining_requests: int | None, remaining_tokens: int | None,
                limit_requests: int | None = None, limit_tokens: int | None = None) -> None:
        """See ``Ledger.observe``.

        With ``credit``, the other users of the deployment are this job's other processes,
        and the shared limit already accounts for them: entering their remaining counts
        here too would count them twice (a stated limit is still evidence).
        """
        if self.credit is not None:
            remaining_requests = remaining_tokens = None
        self.ledger.observe(ticket, remaining_requests, remaining_tokens, limit_requests, limit_tokens,
                            now=self._clock())
        self._tell()

    def rate_limited(self, ticket: Ticket, retry_after_s: float | None) -> None:
        """See ``Ledger.rate_limited``."""
        self.ledger.rate_limited(self._clock(), ticket, retry_after_s)
        self._tell()

    def _tell(self) -> None:
        requests, tokens = self.ledger.learned_per_minute
        told_requests, told_tokens = self._told
        if abs(tokens - told_tokens) <= 0.2 * told_tokens and abs(requests - told_requests) <= 0.2 * told_requests:
            return
        self._told = (requests, tokens)
        if self.on_learned is not None:
            task = asyncio.ensure_future(self.on_learned(self.ledger.estimate.tokens, self.ledger.estimate.requests))
            self._telling.add(task)
            task.add_done_callback(self._telling.discard)
        stated = (self.ledger.stated_rpm, self.ledger.stated_tpm)
        log.warning("quota_learned", endpoint=self.name, tokens_per_minute=tokens, requests_per_minute=requests,
                    job_says_tokens_per_minute=stated[1], job_says_requests_per_minute=stated[0],
                    message=f"the deployment admits ≈ {tokens:,} tokens/min and {requests:,} requests/min, "
                            f"the job says {stated[1]:,} and {stated[0]:,}")
