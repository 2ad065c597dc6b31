"""The estimate's paid calibration: a few sampled rows sent for real, to learn completion lengths.

Only an estimate asked for a ``sample`` sends anything. The rows go through the job's
own deployments, with its retries, and their usage comes back for
``workers.estimate.fit_completions``; ``sample_ceiling_usd`` says beforehand the most
they can cost.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.pipeline import api_key, lane_for
from schemas import JobSpec, PromptRow
from workers import Engine, Outcome, RetryPolicy, TokenCounter


@dataclass
class Sampled:
    """The sampled rows' real outcomes."""

    pairs: list[tuple[int, int]]
    errors: list[str]
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int


@task(name="sample-completions", cache_policy=NO_CACHE)
async def sample_completions(spec: JobSpec, rows: list[PromptRow]) -> Sampled:
    """Send ``rows`` for real (paid) through the job's deployments and collect their usage."""
    keys = [await api_key(e) for e in spec.all_endpoints]
    lanes = [lane_for(e, key, spec.price(e.model), model=spec.model_for(e), response=spec.response)
             for e, key in zip(spec.all_endpoints, keys, strict=True)]
    engine = Engine(lanes, RetryPolicy(max_attempts=spec.max_attempts), grace_s=spec.stop_grace_s)
    outcomes: list[Outcome] = []

    async def items() -> AsyncIterator[PromptRow]:
        for row in rows:
            yield row

    async def sink(outcome: Outcome) -> None:
        outcomes.append(outcome)

    try:
        await engine.run(items(), sink)
    finally:
        for lane in lanes:
            await lane.client.aclose()
    answered = [o for o in outcomes if o.status != "error"]
    cost = sum(spec.price(o.model).cost(o.prompt_tokens, o.completion_tokens) for o in outcomes if o.model)
    return Sampled(
        pairs=[(o.prompt_tokens, o.completion_tokens) for o in answered],
        errors=[o.error or "error" for o in outcomes if o.status == "error"],
        cost_usd=cost,
        prompt_tokens=sum(o.prompt_tokens for o in outcomes),
        completion_tokens=sum(o.completion_tokens for o in outcomes),
    )


def sample_ceiling_usd(spec: JobSpec, rows: list[PromptRow]) -> float:
    """The most the sampled rows can cost: each at its prompt plus max_tokens, at the priciest model."""
    worst = max((spec.price(e.model) for e in spec.all_endpoints), key=lambda p: p.input_per_mtok + p.output_per_mtok)
    counter = TokenCounter(spec.model_for(spec.all_endpoints[0]))
    prompts = counter.count_many([row.messages for row in rows])
    return sum(worst.cost(p if isinstance(p, int) else 0, row.params.max_tokens)
               for row, p in zip(rows, prompts, strict=True))
