"""The simulated deployment (``workers.simulator.deployment``) served over real HTTP.

``serve`` starts it on the running event loop (the ``simulate`` command, which the tests and
benchmarks start as a process of its own); ``BackgroundSimulator`` runs it on a thread and loop
of its own, so a synchronous caller (the demo) can send to it.
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from workers.simulator.config import SimConfig
from workers.simulator.deployment import Simulator
from workers.simulator.refusals import INFERENCE_EXTRA_FIELDS, INFERENCE_FIELDS, LOGPROB_FIELDS, NATIVE_FIELDS, ROLES

__all__ = [
    "INFERENCE_EXTRA_FIELDS",
    "INFERENCE_FIELDS",
    "LOGPROB_FIELDS",
    "NATIVE_FIELDS",
    "ROLES",
    "BackgroundSimulator",
    "Simulator",
    "serve",
]


async def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Start serving; returns the runner (``await runner.cleanup()`` to stop) and the base URL."""
    runner = web.AppRunner(Simulator(config).app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, f"http://{host}:{bound}"


class BackgroundSimulator:
    """The simulator on its own thread and event loop, for the demo: ``with BackgroundSimulator(cfg) as url``."""

    def __init__(self, config: SimConfig, host: str = "127.0.0.1", port: int = 0):
        self._config, self._host, self._port = config, host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="simulator", daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> str:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(serve(self._config, self._host, self._port), self._loop)
        self._runner, url = future.result(timeout=30)
        return url

    def __exit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
