"""A small misbehaving endpoint for the tests: an aiohttp app on 127.0.0.1, in a thread of its own.

The project's simulator behaves like Azure; this one behaves however a test says, one
answer at a time: echo the request's headers, drop usage, bill a trillion tokens, trickle
a body, ask for a pause of eleven days. ``answer`` builds a chat completion body.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Self

from aiohttp import web

Handler = Callable[[web.Request, dict[str, Any], int], Awaitable[web.StreamResponse]]


def answer(content: str = "Ciao", usage: dict[str, Any] | None = None, *, omit_usage: bool = False,
           finish_reason: str = "stop") -> dict[str, Any]:
    """A chat completion body in Mistral's shape."""
    body: dict[str, Any] = {"id": "cmpl-1", "object": "chat.completion", "model": "mistral-large-2407",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                         "finish_reason": finish_reason}]}
    if not omit_usage:
        body["usage"] = usage if usage is not None else {"prompt_tokens": 12, "completion_tokens": 3,
                                                         "total_tokens": 15}
    return body


class Endpoint:
    """Serves ``POST /v1/chat/completions`` with ``handler(request, body, n)`` (n counts requests from 1).

    ``GET /info`` answers 404, so the client confirms the key with its first completion.
    """

    def __init__(self, handler: Handler):
        self.handler = handler
        self.requests = 0
        self.keys: set[str] = set()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="test-endpoint")
        self._runner: web.AppRunner | None = None

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.keys.add(request.headers.get("Authorization", ""))
        return await self.handler(request, await request.json(), self.requests)

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def echo_headers(request: web.Request) -> str:
    """The request's headers the way a careless gateway prints them back."""
    return "; ".join(f"{k}: {v}" for k, v in request.headers.items())
