"""SIGINT and SIGTERM as a graceful stop of the engine; a second one ends the grace period at once."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from workers import Engine, StopReason

log = structlog.get_logger(__name__)


@contextmanager
def stop_on_signals(engine: Engine) -> Iterator[None]:
    """While inside: the first SIGINT/SIGTERM stops ``engine`` gracefully, the second stops it now.

    Only the main thread receives signals: elsewhere this does nothing (the caller stops
    the run some other way).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    caught = 0

    def handle(signum: int) -> None:
        nonlocal caught
        caught += 1
        name = signal.Signals(signum).name
        if caught == 1:
            engine.stop(StopReason(name))
        else:
            log.warning("stopping_now", signal=name)
            engine.stop_now()

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, handle, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
