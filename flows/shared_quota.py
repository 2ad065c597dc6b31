"""One deployment's quota shared by every process that sends to it, through Prefect's server.

When a job is scaled out, its slices run in several processes (Prefect workers, on one
machine or many) that all send to the same deployments. Each process holds a share of
every deployment's quota and meters it with its own window copy (``workers.shares``):
nothing is asked of the server per request, and the deployment's window holds at most
the sum of the shares, so no margin is spent on credit in flight.

Per deployment (named after its URL, so two jobs on one deployment share it too), the
server keeps two global concurrency limits, used with leases:

- ``…-members``: one slot per process with a use for its share (rows waiting for room, or
  admitted in the last ``IDLE_S``); how many are held is how many ways the quota is split.
  A process whose rows are done, or that waits on answers rather than room, steps aside
  until it has a use again: what it holds goes to the others as its window empties.
- ``…-units``: ``UNITS`` slots, the quota's units. A process leases each unit it holds on
  its own and gives it back once its window copy no longer needs it (``releasable``);
  whoever is below its aim takes free units.

Leases last ``LEASE_S`` (Prefect's shortest) and are renewed while the process runs, so
a process that dies gives its units back when its leases expire (a minute, plus up to the
server's repossessor interval); until then the others run on their own shares. A process
whose leases may expire before a renewal gets through admits nothing (a timer, not the
poll). A process leaving (its slice done) gives up its member slot first, then its units
as its window empties (a window at most).

What a process learns of the real quota (``Quota.on_learned``) is kept in a Prefect
Variable beside the limits; the others adopt it (``Quota.adopt``) within ``LEARNED_POLL_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from uuid import UUID

import httpx
import structlog
from prefect.client.orchestration import PrefectClient, get_client

from schemas import EndpointSpec
from workers.quota import Quota
from workers.shares import UNITS, in_force, releasable, target

log = structlog.get_logger(__name__)

#: Seconds a lease lasts unless renewed (the shortest Prefect's server grants).
LEASE_S = 60.0
#: Leases are renewed this often.
RENEW_S = 15.0
#: How often a process looks at the members and the free units (a unit given back is taken this late).
POLL_S = 0.2
#: A unit goes back only once the window copy would no longer need it had the server stamped every
#: request this much later than the copy did: the process that takes it sends at once.
LATE_S = 0.25
#: A process whose pool has admitted nothing for this long, and has nothing waiting, steps aside.
IDLE_S = 1.0
#: How often a process looks for what another one learned of the real quota.
LEARNED_POLL_S = 2.0
#: What another process learned is adopted only this fresh (a variable outlives the run that wrote it).
LEARNED_FRESH_S = 900.0
#: Members a deployment's quota can be split between (the members limit's size).
MOST_MEMBERS = 1000


@dataclass(frozen=True)
class SharedNames:
    """The names of one deployment's shared limits and learned-quota variable."""

    members: str
    units: str
    learned: str


def shared_names(endpoint: EndpointSpec) -> SharedNames:
    """The names under which ``endpoint``'s quota is shared on the Prefect server."""
    digest = hashlib.sha256(endpoint.url.encode()).hexdigest()[:12]
    return SharedNames(members=f"promptbatch-quota-{digest}-members", units=f"promptbatch-quota-{digest}-units",
                       learned=f"promptbatch_quota_{digest}_learned")


async def ensure_shared_limits(endpoints: tuple[EndpointSpec, ...]) -> None:
    """Create the shared limits of every endpoint on the Prefect server (plain limits, no decay)."""
    async with get_client() as client:
        for endpoint in endpoints:
            names = shared_names(endpoint)
            await client.upsert_global_concurrency_limit_by_name(names.members, MOST_MEMBERS, 0.0)
            await client.upsert_global_concurrency_limit_by_name(names.units, UNITS, 0.0)


@dataclass
class _Held:
    member: UUID | None = None
    #: Lease id → units it holds.
    leases: dict[UUID, int] = field(default_factory=dict)
    renewed_at: float = 0.0

    @property
    def units(self) -> int:
        return sum(self.leases.values())


class Holder:
    """This process's share of one deployment's quota, held while its pool runs."""

    def __init__(self, client: PrefectClient, names: SharedNames):
        self.client = client
        self.names = names
        self.held = _Held(renewed_at=time.monotonic())  # no lease older than this
        self.quota: Quota | None = None
        self.aim = UNITS
        #: Units given back, for the slice's note.
        self.released = 0
        self._learned_seen: float = 0.0
        self._learned_polled = 0.0
        self._leaving = False
        self._expiry: asyncio.TimerHandle | None = None
        #: Units this process expects to hold soon (its aim, as far as free units were seen).
        self._coming = 0
        # One write to the server at a time from this process (SQLite takes one writer at a time anyway).
        self._writes = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def holding(self, quota: Quota) -> AsyncIterator[Holder]:
        """Join the deployment's members, hold a share for ``quota`` until the block ends, then leave."""
        self.quota = quota
        quota.on_learned = self.learned
        self._arm()
        loop: asyncio.Future[None] | None = None
        try:
            await self._join()  # before the pool starts: nothing is sent until a unit is held
            loop = asyncio.ensure_future(self._run())
            yield self
        finally:
            if loop is not None:
                loop.cancel()
                await asyncio.gather(loop, return_exceptions=True)
            await asyncio.shield(self._leave())
            if self._expiry is not None:
                self._expiry.cancel()

    async def _join(self) -> None:
        while self.held.units == 0:  # nothing may be sent before a unit is ours
            await self.step()
            if self.held.units == 0:
                await asyncio.sleep(POLL_S)
        log.info("shared_quota_joined", limits=self.names.units, units=self.held.units, aim=self.aim)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.step()
            except Exception as exc:  # the server unreachable, or an answer not understood: try again
                log.warning("shared_quota_unreachable", limits=self.names.units, error=type(exc).__name__)

    def _stale(self) -> bool:
        """Whether the leases may expire before they are renewed (then the units may be someone else's)."""
        return time.monotonic() - self.held.renewed_at > LEASE_S * 0.75

    def _arm(self) -> None:
        """Drop the share when the leases may expire, whatever the holder is waiting on then (a
        renewal stuck behind the server's lock must not leave units in use that others may take)."""
        if self._expiry is not None:
            self._expiry.cancel()
        due = self.held.renewed_at + LEASE_S * 0.75 - time.monotonic()
        self._expiry = asyncio.get_running_loop().call_later(max(0.0, due), self._apply_share)

    async def step(self) -> None:
        """Look at the members and the free units once: join or step aside, give back, take, renew, adopt.

        A process is a member only while its pool has a use for its share (``Quota.wants``):
        one whose rows are done, or that waits on answers rather than on room, steps aside,
        and what its window copy no longer holds goes to the others.
        """
        assert self.quota is not None
        wanting = self.quota.wants(IDLE_S)
        if wanting and self.held.member is None:
            self.held.member = await self._lease(self.names.members, 1)
        elif not wanting and self.held.member is not None:
            await self._release(self.held.member)
            self.held.member = None
        member = self.held.member is not None
        count = 0
        if member:
            count = (await self.client.read_global_concurrency_limit_by_name(self.names.members)).active_slots
            self.aim = target(max(1, count))
        else:
            self.aim = 0
        self._apply_share()  # a lower aim holds from now, before anything is given back
        await self._give_back(self.aim)
        self._coming = self.held.units
        if member and self.held.units < self.aim:
            units = await self.client.read_global_concurrency_limit_by_name(self.names.units)
            free = min(units.limit - units.active_slots, self.aim - self.held.units)
            # Units still held by a shrinking process come too; with none free and the others at their
            # aims (the last unit of an uneven split went elsewhere), nothing more is coming.
            others_over = units.active_slots - self.held.units > (count - 1) * self.aim
            self._coming = self.aim if free > 0 or others_over else self.held.units
            for _ in range(max(0, free)):
                lease = await self._lease(self.names.units, 1)
                if lease is None:
                    break  # another process took them first
                self.held.leases[lease] = 1
        self._apply_share()
        if time.monotonic() - self.held.renewed_at > RENEW_S:
            await self._renew()
            self._apply_share()
        if time.monotonic() - self._learned_polled > LEARNED_POLL_S:
            await self._adopt()

    def _apply_share(self) -> None:
        """Put what is held now into the quota (none while leaving or when the leases may have expired)."""
        assert self.quota is not None
        if self._leaving or self._stale():
            self.quota.set_share(0.0)
        elif self.held.member is not None:
            self.quota.set_share(in_force(self.held.units, self.aim), coming=max(self._coming, 0) / UNITS)
        else:  # stepped aside: what is still held may be used if rows come back before it goes
            self.quota.set_share(self.held.units / UNITS)

    async def _give_back(self, aim: int) -> None:
        """Give back the units the window copy no longer needs: dropped from the share first, then
        released (a release that fails leaves the unit to expire, unused)."""
        assert self.quota is not None
        ids = list(self.held.leases)
        going = [ids[i] for i in releasable([self.held.leases[i] for i in ids], aim, self.quota.fullness(LATE_S))]
        if not going:
            return
        for lease in going:
            self.released += self.held.leases.pop(lease)
        self._apply_share()
        for lease in going:
            await self._release(lease)

    async def _leave(self) -> None:
        """Give up the member slot, then the units as the window copy empties (at once if nobody else is here)."""
        assert self.quota is not None
        self._leaving = True
        self._apply_share()
        if self.held.member is not None:
            with contextlib.suppress(httpx.HTTPError, OSError):
                await self._release(self.held.member)
            self.held.member = None
        # Not at once even when no other process is a member: one that stepped aside may join again
        # any moment and take a unit while this one's requests are still in the deployment's window.
        deadline = time.monotonic() + self.quota.ledger.window.window_s + 1.0
        while self.held.leases and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, OSError):
                await self._give_back(0)
            if self.held.leases:
                await asyncio.sleep(POLL_S)
        for lease in list(self.held.leases):
            self.released += self.held.leases.pop(lease)
            with contextlib.suppress(httpx.HTTPError, OSError):
                await self._release(lease)
        log.info("shared_quota_left", limits=self.names.units, units_handed_over=self.released)

    async def learned(self, tokens_share: float, requests_share: float) -> None:
        """This process found the deployment admits these shares of the stated quota: tell the others."""
        from prefect.variables import Variable

        self._learned_seen = time.time()
        try:
            async with self._writes:
                await Variable.aset(self.names.learned, {"tokens": tokens_share, "requests": requests_share,
                                                         "at": self._learned_seen}, overwrite=True)
        except Exception as exc:  # the others learn it from their own 429s instead
            log.warning("shared_quota_not_told", limits=self.names.units, error=type(exc).__name__)
            return
        log.info("shared_quota_learned", limits=self.names.units, tokens_share=round(tokens_share, 3),
                 requests_share=round(requests_share, 3))

    async def _adopt(self) -> None:
        from prefect.variables import Variable

        assert self.quota is not None
        self._learned_polled = time.monotonic()
        value = await Variable.aget(self.names.learned)
        if not isinstance(value, dict):
            return
        try:
            at, tokens, requests = (float(value[k]) for k in ("at", "tokens", "requests"))
        except (KeyError, TypeError, ValueError):
            return  # not ours, or garbled: nothing learned
        if at > self._learned_seen and time.time() - at < LEARNED_FRESH_S and tokens > 0 and requests > 0:
            self._learned_seen = at
            self.quota.adopt(tokens, requests)
            log.info("shared_quota_adopted", limits=self.names.units, tokens_share=round(tokens, 3),
                     requests_share=round(requests, 3))

    async def _lease(self, name: str, slots: int) -> UUID | None:
        """A lease of ``slots`` of limit ``name``, or ``None`` when it has no room."""
        try:
            async with self._writes:
                response = await self.client.increment_concurrency_slots_with_lease(
                    names=[name], slots=slots, mode="concurrency", lease_duration=LEASE_S)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 423:
                return None
            raise
        return UUID(response.json()["lease_id"])

    async def _release(self, lease: UUID) -> None:
        async with self._writes:
            await self.client.release_concurrency_slots_with_lease(lease)

    async def _renew(self) -> None:
        started = time.monotonic()  # each lease lasts from its own renewal: the first one renewed is the oldest
        leases = ([self.held.member] if self.held.member is not None else []) + list(self.held.leases)
        for lease in leases:
            try:
                async with self._writes:
                    await self.client.renew_concurrency_lease(lease, lease_duration=LEASE_S)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code not in (404, 410):
                    raise
                # Expired before it was renewed (the server unreachable too long): its units are gone.
                log.warning("shared_quota_lease_lost", limits=self.names.units, units=self.held.leases.get(lease, 0))
                self.held.leases.pop(lease, None)
                if lease == self.held.member:
                    self.held.member = None  # joined again at the next step
        self.held.renewed_at = started
        self._arm()
