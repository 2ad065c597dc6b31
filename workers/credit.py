"""Credit: a share of a quota that other processes draw on too, leased in chunks and spent locally."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

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
        #: Credit dropped unspent (leased, then too old to spend).
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
        self._leased_at = self._clock()

    async def aclose(self) -> None:
        """Stop leasing (what is held is left unspent)."""
        for task in list(self._refills.values()):
            task.cancel()
        await asyncio.gather(*self._refills.values(), return_exceptions=True)
