"""``promptbatch simulate``'s serving: the simulator on a port until interrupted.

The command (``flows.cli``) checks its options into a ``workers.simulator.SimConfig``;
this serves it, says where on stdout (one line, flushed: scripts and tests wait for it
to learn the port), and closes it when Ctrl-C ends the command.
"""

from __future__ import annotations

import asyncio
import sys

import click

from workers.simulator import SimConfig, serve


def serve_until_interrupted(config: SimConfig, host: str, port: int) -> None:
    """Serve ``config`` on HOST:PORT (0: a free port) until interrupted."""

    async def forever() -> None:
        runner, url = await serve(config, host, port)
        click.echo(f"simulator listening on {url} (model {config.model}, {config.tokens_per_minute:,} tokens/min, "
                   f"{config.requests_per_minute:,} requests/min over {config.window_s:g}s windows)", err=False)
        sys.stdout.flush()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(forever())
    except KeyboardInterrupt:
        pass
