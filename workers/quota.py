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

``Ledger`` (``workers.ledger``) combines them as pure functions of ``now``; it also
learns from the server's ``x-ratelimit-remaining-*`` headers (usage it did not send —
another client on the same deployment — is entered as foreign usage) and from 429s (one
shared pause for the whole pool, sized by ``retry-after``). ``Quota``, here, is the async
face used by the pool: one admission at a time, in arrival order, within this process's
share of the quota when other processes send to the deployment too (``workers.shares``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from workers.learning import QuotaMode
from workers.ledger import Ledger
from workers.windows import Budget, Entry, Ticket, WindowLog

log = structlog.get_logger(__name__)
__all__ = ["Budget", "Entry", "Ledger", "Quota", "Ticket", "WindowLog"]

#: Shared, an admission waiting for room asks again this often: a share that grows is used at once.
SHARED_RECHECK_S = 0.1
#: Shared, admissions are remembered this long past the window copy's span (``Ledger.fullness``'s lateness).
RECENT_EXTRA_S = 1.0


class Quota:
    """The pool's admission line for one deployment: one request admitted at a time, in order.

    ``shared``: other processes send to the deployment too, and this one holds a share of
    its quota (``set_share``, from ``workers.shares``' rules); no fresh-deployment slow start
    then (each process's first window would add up). Build it inside the coroutine that runs
    the pool: its lock belongs to that event loop. When the deployment turns out to admit less than
    the job states (or, with ``mode="auto"``, more), one warning says so
    (``quota_learned``), again only if the figure moves by a fifth.
    """

    def __init__(self, requests_per_minute: int, tokens_per_minute: int, *, window_s: float = 10.0,
                 burst_s: float | None = None, clock: Callable[[], float] | None = None,
                 shared: bool = False, mode: QuotaMode = "cap", name: str = "",
                 on_learned: Callable[[float, float], Awaitable[None]] | None = None):
        self._clock = clock or time.monotonic
        self.ledger = Ledger(requests_per_minute, tokens_per_minute, window_s=window_s, burst_s=burst_s,
                             now=self._clock(), mode=mode, first_window=not shared)
        self.shared = shared
        if shared:
            self.ledger.keep_recent(RECENT_EXTRA_S)
        self.name = name
        self._line = asyncio.Lock()
        #: Requests waiting for admission, and when the last one was admitted (``wants``).
        self.waiting = 0
        self._admitted_at: float | None = None
        #: Admissions that went ahead of an older waiting row (look-ahead packing).
        self.overtakes = 0
        self._told: tuple[int, int] = (requests_per_minute, tokens_per_minute)
        #: Told (tokens share, requests share) whenever the estimate moves by a fifth: when ``shared``,
        #: so that every process sending to the deployment admits at the rate this one learned.
        self.on_learned = on_learned
        self._telling: set[asyncio.Task[None]] = set()

    async def admit(self, tokens: int) -> Ticket:
        """Wait for this request's turn and for room in every budget; then charge it."""
        return (await self.admit_first_fit([tokens], self._clock()))[1]

    async def admit_first_fit(self, costs: Sequence[int], oldest_since: float) -> tuple[int, Ticket]:
        """Admit one of several waiting requests, as ``Ledger.choose`` picks; returns its index."""
        self.waiting += 1
        try:
            async with self._line:
                while True:
                    now = self._clock()
                    index, wait = self.ledger.choose(now, costs, now - oldest_since)
                    if index is not None:
                        self.overtakes += index > 0
                        self._admitted_at = now
                        return index, self.ledger.admit(now, costs[index])
                    await asyncio.sleep(min(wait, SHARED_RECHECK_S) if self.shared else wait)
        finally:
            self.waiting -= 1

    def wants(self, idle_s: float) -> bool:
        """Whether the pool has a use for its share: a request waiting, one admitted in the last
        ``idle_s`` seconds, or nothing sent yet (the pool is about to start)."""
        return self.waiting > 0 or self._admitted_at is None or self._clock() - self._admitted_at < idle_s

    def set_share(self, share: float, coming: float | None = None) -> None:
        """Use ``share`` of the deployment's quota from now on (see ``Ledger.set_share``)."""
        self.ledger.set_share(self._clock(), share, coming)

    def fullness(self, late_s: float = 0.0) -> float:
        """What this process's window copy holds now, as a share of the deployment's window
        (``late_s``: see ``Ledger.fullness``)."""
        return self.ledger.fullness(self._clock(), late_s)

    def adopt(self, tokens_share: float, requests_share: float) -> None:
        """What another process learned of the real quota (see ``Ledger.adopt``)."""
        self.ledger.adopt(self._clock(), tokens_share, requests_share)
        self._told = self.ledger.learned_per_minute  # the process that learned it warns; this one does not

    def observe(self, ticket: Ticket, remaining_requests: int | None, remaining_tokens: int | None,
                limit_requests: int | None = None, limit_tokens: int | None = None) -> None:
        """See ``Ledger.observe``.

        When ``shared``, the other users of the deployment are this job's other processes,
        and their shares already account for them: entering their remaining counts as
        another tenant's usage would count them twice (a stated limit is still evidence).
        """
        if self.shared:
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
