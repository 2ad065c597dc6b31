"""The simulated deployment's quota as its clients see it: the headers telling of it, another tenant using it.

``x-ratelimit-remaining-*`` and ``-limit-*`` count the meter's window, or the last minute
(``MinuteTally``), or say ``-1`` everywhere, or are absent (``SimConfig.headers``). Another job
on the same deployment (``SimConfig.foreign_share``) draws on the same meter, so what the
client is told it may send is what is left after it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

from workers.simulator.config import SimConfig
from workers.simulator.metering import Admission, Meter, MinuteTally


def limit_headers(config: SimConfig, window: Meter, minute: MinuteTally, now: float,
                  admission: Admission) -> dict[str, str]:
    """``x-ratelimit-*`` as the deployment's ``headers`` mode has them."""
    mode = config.headers
    if mode == "none":
        return {}
    if mode == "sentinel":
        return {f"x-ratelimit-{kind}-{what}": value for what in ("tokens", "requests") for kind, value in
                (("limit", "-1"), ("remaining", "-1"), ("reset", "0"))}
    if mode == "minute":
        requests, tokens = minute.remaining(now)
        limit_requests, limit_tokens = config.requests_per_minute, config.tokens_per_minute
    else:
        requests, tokens = admission.remaining_requests, admission.remaining_tokens
        limit_requests, limit_tokens = window.request_limit, window.token_limit
    return {"x-ratelimit-remaining-requests": str(requests), "x-ratelimit-remaining-tokens": str(tokens),
            "x-ratelimit-limit-requests": str(limit_requests), "x-ratelimit-limit-tokens": str(limit_tokens)}


async def foreign_tenant(config: SimConfig, window: Meter, minute: MinuteTally,
                         stats: Counter[str]) -> AsyncIterator[None]:
    """Another job on the same deployment, sending at ``foreign_share`` of the quota, retrying its 429s.

    An aiohttp cleanup context: it sends from the application's start to its cleanup.
    """
    share = config.foreign_share
    rps, tps = config.requests_per_minute / 60, config.tokens_per_minute / 60
    size = max(1, int(tps / rps))  # one request of theirs uses both quotas at the same share
    owed, tick = 0.0, 0.05

    async def send() -> None:
        nonlocal owed
        while True:
            await asyncio.sleep(tick)
            owed = min(owed + share * rps * tick, 5.0)
            while owed >= 1:
                now = time.monotonic()
                if not window.try_admit(now, size).admitted:
                    stats["foreign_rate_limited"] += 1
                    break
                minute.add(now, 1, size)
                stats["foreign_admitted_tokens"] += size
                owed -= 1

    task = asyncio.create_task(send())
    yield
    task.cancel()
