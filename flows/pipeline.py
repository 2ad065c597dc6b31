"""The job's body without orchestration: rows from storage, through the pool, into parts.

The Prefect task ``process_rows`` wraps ``execute``; the benchmarks call it directly so
they measure the same code path users run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from flows.inputs import iter_items, stream
from flows.logs import register_secret
from flows.parts import PartSummary, PartWriter
from flows.storage import storage_for
from schemas import EndpointSpec, JobSpec
from workers import EndpointClient, Engine, Lane, Quota, RetryPolicy, Tally, TokenCounter
from workers.pool import DEFAULT_LOOKAHEAD


class JobError(RuntimeError):
    """The job cannot run as configured; the message says what to change."""


@dataclass
class Execution:
    """What one run of the pool produced."""

    parts: list[PartSummary]
    tally: Tally
    engine: Engine


def api_key(env_name: str) -> str:
    """A deployment's key from the environment, registered for redaction."""
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise JobError(f"environment variable {env_name} is not set: it must hold the deployment's key")
    register_secret(key)
    return key


def lane_for(endpoint: EndpointSpec, key: str) -> Lane:
    """A deployment's client, quota and tokenizer, built on the running event loop."""
    quota = Quota(endpoint.requests_per_minute, endpoint.tokens_per_minute, window_s=endpoint.quota_window_s)
    return Lane(EndpointClient(endpoint, key), quota, TokenCounter(endpoint.model), endpoint.max_concurrency)


async def execute(spec: JobSpec, files: list[str], *, lookahead: int = DEFAULT_LOOKAHEAD) -> Execution:
    """Send every row of ``files`` through the job's deployments; publish one part per shard."""
    keys = [api_key(e.api_key_env) for e in spec.all_endpoints]
    lanes = [lane_for(e, key) for e, key in zip(spec.all_endpoints, keys, strict=True)]
    engine = Engine(lanes, RetryPolicy(max_attempts=spec.max_attempts), lookahead=lookahead)
    writer = PartWriter(storage_for(spec.output), spec.output, spec.shard_rows, spec.price)
    try:
        tally = await engine.run(stream(iter_items(spec, storage_for(spec.input), files)), writer.add)
    finally:
        for lane in lanes:
            await lane.client.aclose()
    return Execution(await writer.finish(tally.rows), tally, engine)
