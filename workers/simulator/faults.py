"""Injected faults: which one an admitted request draws, and how a broken answer goes out.

``SimConfig.faults`` gives each kind of ``FAULT_KINDS`` its share of admitted requests. A
``server_error`` or ``filter_400`` answers in place of the completion; a ``hang`` holds it back
for ``hang_s``; ``filter`` cuts it as the content filter does; a ``reset`` and a ``truncate``
are billed like any answer, then the connection is dropped before it, or half-way through it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from aiohttp import web


def draw(rng: random.Random, faults: Mapping[str, float]) -> str | None:
    """The fault this request gets, if any: one roll of ``rng`` against the shares in turn."""
    roll = rng.random()
    for kind, rate in faults.items():
        if roll < rate:
            return kind
        roll -= rate
    return None


def abort(request: web.Request) -> None:
    """Drop the connection without a proper answer, like a reset mid-flight."""
    if request.transport is not None:
        request.transport.abort()


async def truncated(request: web.Request, raw: bytes, headers: Mapping[str, str]) -> web.StreamResponse:
    """Announce the whole of ``raw``, send half of it, and drop the connection."""
    response = web.StreamResponse(status=200, headers={**headers, "Content-Type": "application/json"})
    response.content_length = len(raw)
    await response.prepare(request)
    await response.write(raw[: len(raw) // 2])
    abort(request)
    return response
