"""The shared quota's limits on Prefect's server follow what a process learned of the real quota."""

from __future__ import annotations

import pytest

from flows.shared_quota import Leaser, ensure_shared_limits, shared_limits
from schemas import EndpointSpec

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]


async def test_a_learned_quota_slows_every_process_lease() -> None:
    from prefect.client.orchestration import get_client

    endpoint = EndpointSpec(url="https://shared-learned.example", model="mistral-large-2407",
                            tokens_per_minute=200_000, requests_per_minute=1_000)
    await ensure_shared_limits((endpoint,))
    limits = shared_limits(endpoint)
    async with get_client() as client:
        await Leaser(client, limits).learned(0.2, 0.25)
        tokens = await client.read_global_concurrency_limit_by_name(limits.tokens_name)
        requests = await client.read_global_concurrency_limit_by_name(limits.requests_name)
    assert tokens.slot_decay_per_second == pytest.approx(limits.tokens_per_s * 0.2, rel=0.01)
    assert requests.slot_decay_per_second == pytest.approx(limits.requests_per_s * 0.25, rel=0.01)
