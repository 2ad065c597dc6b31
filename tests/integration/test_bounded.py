"""Waits with an end: `timeout_s` bounds the whole request, and a long retry-after is cut short."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from aiohttp import web

from schemas import EndpointSpec, Params
from tests.endpoint import Endpoint
from workers import EndpointClient, RateLimitedError, TransportError

pytestmark = pytest.mark.integration


class TestWholeRequestTimeout:
    """A body trickled a byte every second (each well inside the read timeout) is cut at timeout_s 2, not after
    its 15 s."""

    async def test_trickle(self) -> None:
        async def trickle(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            for byte in b'{"choices": []}':  # 15 bytes: 15 s in all
                await response.write(bytes([byte]))
                await asyncio.sleep(1)
            return response

        with Endpoint(trickle) as endpoint:
            spec = EndpointSpec(url=endpoint.url, model="mistral-large-2407", timeout_s=2)
            async with EndpointClient(spec, "k-trickle-1234") as client:
                started = time.monotonic()
                with pytest.raises(TransportError, match="timed out after 2s"):
                    await client.complete([{"role": "user", "content": "hi"}], Params())
                elapsed = time.monotonic() - started
        assert 1.5 < elapsed < 5


class TestRetryAfterCap:
    """retry-after 999999 becomes max_retry_after_s (default 300 s)."""

    @pytest.mark.parametrize(("cap", "expected"), [(None, 300.0), (2.0, 2.0)])
    async def test_capped(self, cap: float | None, expected: float) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(429, json={"error": {"message": "slow"}}, headers={"retry-after": "999999"})

        extra = {} if cap is None else {"max_retry_after_s": cap}
        spec = EndpointSpec(url="http://x", model="mistral-large-2407", **extra)
        async with EndpointClient(spec, "k-1234", transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(RateLimitedError) as caught:
                await client.complete([{"role": "user", "content": "hi"}], Params())
        assert caught.value.retry_after_s == expected
