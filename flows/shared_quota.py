"""One deployment's quota shared by every process that sends to it, through Prefect's server.

When a job is scaled out, its shards run in several processes (Prefect workers, on one
machine or many) that all send to the same deployments. Each deployment gets two global
concurrency limits used as rate limits — tokens and requests — whose slots decay at
``SHARE`` of the quota's per-minute rate; a process admits a request only against
credit it leased from them (``workers.quota.Credit``), so together the processes stay
within the quota. The limits are named after the deployment's URL, so two jobs on one
deployment share its quota too.

Leasing goes through the API directly rather than ``prefect.concurrency.rate_limit``:
the server drops the decay accrued since its last update whenever it refuses an
acquisition, so a client that retries on refusals gets a fraction of the configured
rate. Here a lease first reads the limit (its decayed occupancy; reading changes
nothing), sleeps until the decay has made room, and only then asks — refused only
when another process took the room first.

Requests are counted in hundredths (``REQUEST_UNITS``): the server decays whole slots
per update, and a rate of ~17 requests/s would lose a good part of it to rounding.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import dataclass

import httpx
import structlog
from prefect.client.orchestration import PrefectClient, get_client

from schemas import EndpointSpec
from workers.quota import Credit

log = structlog.get_logger(__name__)

#: Fraction of the quota the shared limits hand out: the rest covers credit in flight
#: between processes (leased, not yet spent) so no window of the deployment's overflows.
#: The token limit holds two chunks (1/32 of a window), so a window sees ``SHARE`` of its
#: allowance plus that, plus credit held: measured with two processes, 0.96 gave a peak
#: window of 0.994 of the allowance (too near its edge), 0.93 with chunks of 1/32 gave 0.976;
#: one chunk of room made the processes wait on each other's leases, 0.79 of the quota.
SHARE = 0.95
#: Credit is leased in chunks of these fractions of one window's quota: tokens finer (they
#: bind, and the room they leave over ``SHARE`` is what overfills a window), requests coarser
#: (a fraction of a window's few requests would round to nothing).
TOKEN_CHUNK = 1 / 64
REQUEST_CHUNK = 1 / 32
REQUEST_UNITS = 100
#: A lease the server has not answered in this long is stuck behind a lock: it is asked again.
STALLED_S = 0.3


@dataclass(frozen=True)
class SharedLimits:
    """The names and sizes of one deployment's shared limits."""

    tokens_name: str
    requests_name: str
    token_capacity: int
    request_capacity: int
    tokens_per_s: float
    requests_per_s: float
    token_chunk: int
    request_chunk: int


def shared_limits(endpoint: EndpointSpec) -> SharedLimits:
    """The shared limits of ``endpoint``'s quota (requests in hundredths)."""
    digest = hashlib.sha256(endpoint.url.encode()).hexdigest()[:12]
    window_tokens = endpoint.tokens_per_minute * endpoint.quota_window_s / 60
    window_requests = endpoint.requests_per_minute * endpoint.quota_window_s / 60
    token_chunk = max(1, int(window_tokens * TOKEN_CHUNK))
    request_chunk = max(1, int(window_requests * REQUEST_CHUNK))
    return SharedLimits(
        tokens_name=f"promptbatch-quota-{digest}-tokens",
        requests_name=f"promptbatch-quota-{digest}-requests",
        token_capacity=2 * token_chunk,
        request_capacity=2 * request_chunk * REQUEST_UNITS,
        tokens_per_s=SHARE * endpoint.tokens_per_minute / 60,
        requests_per_s=SHARE * endpoint.requests_per_minute / 60 * REQUEST_UNITS,
        token_chunk=token_chunk,
        request_chunk=request_chunk,
    )


async def ensure_shared_limits(endpoints: tuple[EndpointSpec, ...]) -> None:
    """Create (or resize) the shared limits of every endpoint on the Prefect server."""
    async with get_client() as client:
        for endpoint in endpoints:
            limits = shared_limits(endpoint)
            await client.upsert_global_concurrency_limit_by_name(
                limits.tokens_name, limits.token_capacity, limits.tokens_per_s)
            await client.upsert_global_concurrency_limit_by_name(
                limits.requests_name, limits.request_capacity, limits.requests_per_s)


class Leaser:
    """Leases from one endpoint's shared limits for one process; see the module docstring."""

    def __init__(self, client: PrefectClient, limits: SharedLimits, writes: asyncio.Lock | None = None):
        self.client = client
        self.limits = limits
        # One write to the server at a time from this process: on SQLite, a second write
        # waits for the first one's lock, and SQLite's busy handler may sleep whole seconds.
        self.writes = writes or asyncio.Lock()
        self.refused = 0
        self.stalled = 0

    async def learned(self, tokens_share: float, requests_share: float) -> None:
        """A process found the deployment admits this share of the stated quota: every process leases at it."""
        async with self.writes:
            await self.client.upsert_global_concurrency_limit_by_name(
                self.limits.tokens_name, self.limits.token_capacity, self.limits.tokens_per_s * tokens_share)
            await self.client.upsert_global_concurrency_limit_by_name(
                self.limits.requests_name, self.limits.request_capacity, self.limits.requests_per_s * requests_share)
        log.info("shared_quota_learned", limits=self.limits.tokens_name, tokens_share=round(tokens_share, 3),
                 requests_share=round(requests_share, 3))

    def credit(self) -> Credit:
        """A ``Credit`` for this endpoint's ``Quota``."""
        return Credit(self.lease, token_chunk=self.limits.token_chunk, request_chunk=self.limits.request_chunk,
                      most_tokens=self.limits.token_capacity,
                      most_requests=self.limits.request_capacity // REQUEST_UNITS)

    async def lease(self, tokens: int, requests: int) -> None:
        if tokens:
            await self._take(self.limits.tokens_name, tokens)
        if requests:
            await self._take(self.limits.requests_name, requests * REQUEST_UNITS)

    async def _take(self, name: str, slots: int) -> None:
        while True:
            limit = await self.client.read_global_concurrency_limit_by_name(name)
            short = limit.active_slots + slots - limit.limit
            if short > 0:
                # Processes that read the same state would ask at the same instant and one be
                # refused: spread them over a third of a chunk (the room keeps decaying meanwhile).
                spread = self.limits.token_capacity / 6 if name == self.limits.tokens_name else \
                    self.limits.request_capacity / 6
                await asyncio.sleep((short + random.uniform(0, spread)) / limit.slot_decay_per_second)
                continue
            try:
                async with self.writes:
                    await asyncio.wait_for(
                        self.client.increment_concurrency_slots(names=[name], slots=slots, mode="rate_limit"),
                        STALLED_S)
                return
            except TimeoutError:
                # Stuck behind another write's lock (SQLite's busy handler can sleep a whole
                # second or two): ask again. The stuck one may still go through; its slots are
                # then never used, which costs a little rate but never overfills a window.
                self.stalled += 1
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:
                    raise
                self.refused += 1  # another process took the room first
                await asyncio.sleep(random.uniform(0.01, 0.05))
