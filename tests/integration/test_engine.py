"""The engine against the simulator over HTTP: every row accounted for, faults, a rejected key."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable

import pytest

from schemas import BadRowError, EndpointSpec, Params, PromptRow, PromptSpec, build_row
from tests.conftest import SimulatorProcess
from workers import AuthRejectedError, EndpointClient, Engine, Lane, Outcome, Quota, RetryPolicy, TokenCounter
from workers.simulator import prompt_digest

pytestmark = pytest.mark.integration
UNLIMITED = ("--requests-per-minute", "1000000", "--tokens-per-minute", "1000000000")

PROMPT = PromptSpec(system="Translate to Italian.", template="Translate: {text}")


async def rows(n: int, params: Params, bad_every: int = 0) -> AsyncIterator[PromptRow | BadRowError]:
    for i in range(n):
        record: dict[str, object] = {"id": f"r{i}", "text": f"sentence number {i} " * (1 + i % 7)}
        if bad_every and i % bad_every == 0:
            record = {"id": f"r{i}", "txet": "typo"}
        try:
            yield build_row(record, i, f"mem line {i + 1}", PROMPT, params)
        except BadRowError as exc:  # a bad row flows through the engine like a row
            yield exc


def engine_for(url: str, key: str = "k", *, workers: int = 16, attempts: int = 6, api: str = "mistral",
               timeout_s: float = 30) -> Engine:
    spec = EndpointSpec(url=url, model="mistral-nemo", api=api, timeout_s=timeout_s)  # type: ignore[arg-type]
    lane = Lane(EndpointClient(spec, key), Quota(60_000, 10_000_000), TokenCounter("mistral-nemo"), workers)
    return Engine([lane], RetryPolicy(max_attempts=attempts, base_s=0.01, cap_s=0.05), rng=random.Random(1))


async def run_collecting(engine: Engine, n: int, seen: list[Outcome] | None = None) -> None:
    """Run ``n`` short rows through ``engine``, keeping the outcomes in ``seen``."""
    kept = [] if seen is None else seen

    async def sink(o: Outcome) -> None:
        kept.append(o)

    await engine.run(rows(n, Params(max_tokens=10)), sink)


class TestEngine:
    """Every row ends as exactly one outcome."""

    async def test_rows_bad_rows_and_billing(self, simulator: Callable[..., SimulatorProcess]) -> None:
        sim = simulator(*UNLIMITED, "--model", "mistral-nemo", "--latency", "0.005", "--per-token", "0")
        engine = engine_for(sim.url)
        outcomes: list[Outcome] = []

        async def sink(o: Outcome) -> None:
            outcomes.append(o)

        tally = await engine.run(rows(300, Params(max_tokens=40), bad_every=50), sink)
        assert sorted(o.seq for o in outcomes) == list(range(300))
        bad = [o for o in outcomes if o.status == "error"]
        assert [o.seq for o in sorted(bad, key=lambda o: o.seq)] == list(range(0, 300, 50))
        assert all("mem line" in (o.error or "") and "`text`" in (o.error or "") for o in bad)
        ok = [o for o in outcomes if o.status == "ok"]
        assert len(ok) == 294
        for o in ok:  # each completion answers its own prompt
            text = f"sentence number {o.seq} " * (1 + o.seq % 7)
            messages = build_row({"text": text}, o.seq, "w", PROMPT, Params()).messages
            assert o.completion and o.completion.content
            assert o.completion.content.startswith(f"[{prompt_digest(messages)}]")
        stats = sim.stats()
        assert stats["billed_prompt_tokens"] == tally.prompt_tokens
        assert stats["billed_completion_tokens"] == tally.completion_tokens
        await engine.lanes[0].client.aclose()

    async def test_faults_are_retried_and_accounted(self, simulator: Callable[..., SimulatorProcess]) -> None:
        sim = simulator(*UNLIMITED, "--model", "mistral-nemo", "--latency", "0.002", "--per-token", "0", "--hang", "30",
                        "--faults", "server_error=0.05,reset=0.02,hang=0.01,truncate=0.01,filter=0.01,filter_400=0.01")
        engine = engine_for(sim.url, timeout_s=1.0, attempts=8)
        outcomes: dict[int, Outcome] = {}

        async def sink(o: Outcome) -> None:
            assert o.seq not in outcomes
            outcomes[o.seq] = o

        await engine.run(rows(400, Params(max_tokens=20)), sink)
        assert sorted(outcomes) == list(range(400))
        statuses = {o.status for o in outcomes.values()}
        assert statuses <= {"ok", "filtered", "error"}
        assert sum(o.status == "filtered" for o in outcomes.values()) >= 1
        assert max(o.attempts for o in outcomes.values()) > 1
        for o in outcomes.values():
            if o.status == "error":
                assert "gave up after 8 attempts" in (o.error or "")
            if o.status == "filtered":
                assert o.error is None and o.completion and o.completion.finish_reason == "content_filter"
        await engine.lanes[0].client.aclose()

    async def test_wrong_key_stops_at_once(self, simulator: Callable[..., SimulatorProcess]) -> None:
        sim = simulator("--api-key", "the-right-one", "--latency", "0")
        engine = engine_for(sim.url, key="a-wrong-one", workers=4)
        with pytest.raises(AuthRejectedError):
            await run_collecting(engine, 10_000)
        stats = sim.stats()
        assert stats["unauthorized"] == 1  # GET /info said no: the job stops
        assert stats.get("requests", 0) == 0  # before any completion was sent
        await engine.lanes[0].client.aclose()


    async def test_a_key_revoked_mid_job_stops_it_within_what_was_in_flight(
            self, simulator: Callable[..., SimulatorProcess]) -> None:
        sim = simulator(*UNLIMITED, "--model", "mistral-nemo", "--latency", "0.02", "--per-token", "0",
                        "--revoke-after", "100")
        engine = engine_for(sim.url, workers=8)
        seen: list[Outcome] = []
        with pytest.raises(AuthRejectedError):
            await run_collecting(engine, 10_000, seen)
        stats = sim.stats()
        assert 1 <= stats["unauthorized"] <= 8  # the refusals of requests already in flight, no more
        assert stats["requests"] <= 100 + 8
        assert len(seen) <= 100
        await engine.lanes[0].client.aclose()
