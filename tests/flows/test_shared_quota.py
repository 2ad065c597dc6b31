"""Shares of one deployment's quota on Prefect's server: handed over as windows empty, never over the quota."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from flows.shared_quota import Holder, ensure_shared_limits, shared_names
from schemas import EndpointSpec
from workers.quota import Quota
from workers.shares import UNITS

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _endpoint(name: str) -> EndpointSpec:
    return EndpointSpec(url=f"https://{name}.example", model="mistral-large-2407",
                        tokens_per_minute=60_000, requests_per_minute=600)


async def _until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


async def test_a_second_process_gets_units_only_as_the_first_ones_window_empties() -> None:
    from prefect.client.orchestration import get_client

    endpoint = _endpoint("shared-handover")
    await ensure_shared_limits((endpoint,))
    names = shared_names(endpoint)
    first_clock, second_clock = Clock(), Clock()
    # 60,000 tokens/min over 10 s windows: 10,000 tokens a window.
    first = Quota(600, 60_000, window_s=10, clock=first_clock, shared=True)
    second = Quota(600, 60_000, window_s=10, clock=second_clock, shared=True)
    async with get_client() as client_a, get_client() as client_b:
        a, b = Holder(client_a, names), Holder(client_b, names)
        async with a.holding(first):
            assert a.held.units == UNITS and first.ledger.share == 1.0  # alone: the whole quota
            for step in range(9):  # 1.1 s apart (the pool's bursts hold a second's worth)
                first_clock.now = step * 1.1
                await first.admit(1_000)  # the copy holds 9,000 of 10,000
            async with _joining(b, second) as joined:
                # The first process now aims at half, but its window still holds 0.9 of the deployment's:
                # it keeps the units that covers (29 of 32) and the second gets only the rest.
                await _until(lambda: b.held.units > 0)
                await asyncio.sleep(1.0)
                assert first.ledger.share == 0.5
                assert a.held.units == 29 and b.held.units == 3
                assert first.ledger.share + second.ledger.share <= 1.0
                # The first one's admissions leave the window (one more goes: it still has rows to send).
                first_clock.now = second_clock.now = 18.5
                await first.admit(1_000)
                await _until(lambda: b.held.units == UNITS // 2)
                assert a.held.units == UNITS // 2
                assert first.ledger.share == second.ledger.share == 0.5
                # The first one has nothing to send for longer than a second: it steps aside, and what its
                # window copy no longer holds goes to the second.
                first_clock.now = 30.0
                await _until(lambda: b.held.units == UNITS)
                assert a.held.units == 0 and a.aim == 0 and second.ledger.share == 1.0
                members = await client_a.read_global_concurrency_limit_by_name(names.members)
                assert members.active_slots == 1
                joined.cancel()
            # The second one left (its window empty: it had sent nothing, so its units went at once); a row to
            # send brings the first one back, and it takes the whole quota.
            await first.admit(1_000)
            assert a.held.units == UNITS and first.ledger.share == 1.0 and b.held.units == 0
        members = await client_a.read_global_concurrency_limit_by_name(names.members)
        units = await client_a.read_global_concurrency_limit_by_name(names.units)
    assert members.active_slots == 0 and units.active_slots == 0  # nothing left held on the server


class _joining:
    """``b.holding(quota)`` entered in a task of its own (it returns only once a unit is free)."""

    def __init__(self, holder: Holder, quota: Quota):
        self.holder, self.quota = holder, quota
        self.task: asyncio.Task[None] | None = None
        self.release = asyncio.Event()

    async def _hold(self) -> None:
        async with self.holder.holding(self.quota):
            await self.release.wait()

    def cancel(self) -> None:
        self.release.set()

    async def __aenter__(self) -> _joining:
        self.task = asyncio.ensure_future(self._hold())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self.task is not None
        await self.task


async def test_what_one_process_learns_the_others_adopt() -> None:
    from prefect.client.orchestration import get_client

    endpoint = _endpoint("shared-learned")
    await ensure_shared_limits((endpoint,))
    names = shared_names(endpoint)
    teller, hearer = Quota(600, 60_000, shared=True), Quota(600, 60_000, shared=True)
    async with get_client() as client_a, get_client() as client_b:
        a, b = Holder(client_a, names), Holder(client_b, names)
        async with a.holding(teller), b.holding(hearer):
            await a.learned(0.2, 0.25)
            await _until(lambda: hearer.ledger.estimate.tokens < 1.0)
            assert hearer.ledger.estimate.tokens == pytest.approx(0.2)
            assert hearer.ledger.estimate.requests == pytest.approx(0.25)
            assert hearer.ledger.learned_per_minute == (150, 12_000)


async def test_a_dead_process_units_are_taken_only_once_its_leases_are_gone() -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client

    endpoint = _endpoint("shared-dead")
    await ensure_shared_limits((endpoint,))
    names = shared_names(endpoint)
    async with get_client() as client:
        # What a killed process leaves on the server: its member slot and all the units, never given back.
        left = [UUID((await client.increment_concurrency_slots_with_lease(
            names=[name], slots=slots, mode="concurrency", lease_duration=60)).json()["lease_id"])
            for name, slots in ((names.members, 1), (names.units, UNITS))]
        quota = Quota(600, 60_000, window_s=10, shared=True)
        survivor = Holder(client, names)
        joining = asyncio.ensure_future(_hold_until_cancelled(survivor, quota))
        await asyncio.sleep(2.0)
        assert not joining.done() and survivor.held.units == 0  # nothing to send on: the units are the dead one's
        for lease in left:  # the leases expire (the server's repossessor releases them)
            await client.release_concurrency_slots_with_lease(lease)
        await _until(lambda: survivor.held.units == UNITS)
        assert quota.ledger.share == 1.0
        joining.cancel()
        await asyncio.gather(joining, return_exceptions=True)


async def _hold_until_cancelled(holder: Holder, quota: Quota) -> None:
    async with holder.holding(quota):
        await asyncio.Event().wait()
