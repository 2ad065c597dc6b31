"""Modes on the wire, a refused mode's fallback, re-asks through the engine, dedupe planning — with fakes."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from schemas import EndpointSpec, Params, PromptRow, PromptSpec, ResponseSpec, build_row
from workers import ContentFilteredError, EndpointClient, Engine, Lane, Outcome, Quota, RetryPolicy, TokenCounter
from workers.dedupe import Duplicates, copy_record
from workers.labels import Modes

RESPONSE = ResponseSpec.model_validate({"labels": {"sentiment": ["positive", "negative"]}, "reask": 2})
MODEL = "mistral-small-2402"


def answer(content: str | None = None, arguments: str | None = None) -> httpx.Response:
    message: dict[str, Any] = {"role": "assistant", "content": content or ""}
    if arguments is not None:
        message["tool_calls"] = [{"id": "c1", "type": "function", "function": {"name": "labels",
                                                                                "arguments": arguments}}]
    return httpx.Response(200, json={"id": "x", "model": MODEL, "choices": [
        {"index": 0, "message": message, "finish_reason": "tool_calls" if arguments else "stop"}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46}})


class TestModes:
    """Each mode's request fields, and the order ``auto`` tries them in."""

    def test_bodies(self) -> None:
        schema = RESPONSE.schema_dict
        assert Modes(RESPONSE.model_copy(update={"mode": "json_schema"}), "azure-inference").body_fields() == {
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "labels", "schema": schema, "strict": True}}}
        assert Modes(RESPONSE.model_copy(update={"mode": "json_object"}), "mistral").body_fields() == {
            "response_format": {"type": "json_object"}}
        tool = Modes(RESPONSE.model_copy(update={"mode": "tool"}), "mistral").body_fields()
        assert tool["tool_choice"] == "any" and tool["tools"][0]["function"]["parameters"] == schema
        assert Modes(RESPONSE.model_copy(update={"mode": "tool"}), "azure-inference").body_fields()[
            "tool_choice"] == "required"

    @pytest.mark.parametrize(("api", "order"), [("azure-inference", ["json_schema", "tool", "json_object"]),
                                                ("mistral", ["tool", "json_object"])])
    def test_auto_falls_back_one_step_per_refusal(self, api: str, order: list[str]) -> None:
        modes, seen = Modes(RESPONSE, api), []
        while True:
            seen.append(modes.current)
            if not modes.refused(400, "invalid input error", settled=False):
                break
        assert seen == order
        settled = Modes(RESPONSE, api)
        assert not settled.refused(400, "messages: bad role", settled=True)  # a row's own fault, not the mode's
        assert not settled.refused(500, "tool", settled=False)


def client(handler: Callable[[httpx.Request], httpx.Response], api: str = "azure-inference",
           response: ResponseSpec = RESPONSE) -> EndpointClient:
    spec = EndpointSpec(url="http://sim.test", model=MODEL, api=api)  # type: ignore[arg-type]
    return EndpointClient(spec, "secret-key-123", transport=httpx.MockTransport(handler), response=response)


async def test_a_refused_json_schema_costs_one_request_then_tool_for_the_rest() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sent.append(body)
        if body.get("response_format", {}).get("type") == "json_schema":
            return httpx.Response(400, json={"object": "error", "message": "invalid input error", "code": 400})
        return answer(arguments='{"sentiment": "positive"}')

    c = client(handler)
    messages = ({"role": "user", "content": "Great!"},)
    for _ in range(3):
        completion = await c.complete(messages, Params(max_tokens=16))
        assert completion.tool_arguments == '{"sentiment": "positive"}'
    assert [("json_schema" if "response_format" in b else "tool") for b in sent] == ["json_schema", "tool", "tool",
                                                                                   "tool"]
    await c.aclose()


async def test_a_filtered_prompt_does_not_cost_the_mode() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"code": "content_filter", "message": "filtered"}})

    c = client(handler)
    with pytest.raises(ContentFilteredError):
        await c.complete(({"role": "user", "content": "x"},), Params(max_tokens=16))
    assert c.modes is not None and c.modes.current == "json_schema"
    await c.aclose()


async def rows(n: int, texts: list[str]) -> AsyncIterator[PromptRow]:
    for i in range(n):
        yield build_row({"id": f"r{i}", "text": texts[i % len(texts)]}, i, f"line {i + 1}",
                        PromptSpec(template="{text}"), Params(max_tokens=16), instruction=RESPONSE.instruction())


async def run_engine(handler: Callable[[httpx.Request], httpx.Response], n: int = 1) -> tuple[list[Outcome], Lane]:
    lane = Lane(client(handler, "mistral"), Quota(60_000, 10_000_000), TokenCounter(MODEL), 4)
    engine = Engine([lane], RetryPolicy(max_attempts=3, base_s=0.001, cap_s=0.002), rng=random.Random(1))
    outcomes: list[Outcome] = []

    async def sink(o: Outcome) -> None:
        outcomes.append(o)

    await engine.run(rows(n, ["good", "[[bad]]"]), sink)
    await lane.client.aclose()
    return sorted(outcomes, key=lambda o: o.seq), lane


class TestReask:
    """An invalid answer is asked again with the error, each re-ask admitted and billed like a request."""

    async def test_asked_again_until_valid_and_every_request_counted(self) -> None:
        calls: list[list[dict[str, str]]] = []

        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/info":
                return httpx.Response(200, json={})
            messages = json.loads(request.content)["messages"]
            calls.append(messages)
            return answer(arguments='{"sentiment": "positive"}' if len(calls) == 3 else "Sure! positive")

        (outcome,), lane = await run_engine(handler)
        assert outcome.status == "ok" and outcome.attempts == 3
        assert outcome.completion is not None and outcome.completion.content == '{"sentiment": "positive"}'
        assert (outcome.prompt_tokens, outcome.completion_tokens) == (120, 18)  # three requests' usage
        assert [len(m) for m in calls] == [2, 4, 6]  # each re-ask adds the answer and the error
        assert "not JSON" in calls[1][-1]["content"] and calls[1][-2] == {"role": "assistant",
                                                                           "content": "Sure! positive"}
        assert lane.quota.ledger.total_requests == 3

    async def test_never_valid_ends_invalid_with_the_raw_answer_and_the_error(self) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/info":
                return httpx.Response(200, json={})
            return answer(arguments='{"sentiment": "meh"}')

        (outcome,), _ = await run_engine(handler)
        assert outcome.status == "invalid" and outcome.attempts == 3
        assert outcome.error is not None and outcome.error.startswith("invalid answer after 2 re-asks: sentiment:")
        assert outcome.record()["completion"] == '{"sentiment": "meh"}'


class TestDuplicates:
    """The first row with a digest is sent; copies wait for it or take an answer that is in."""

    def test_plan(self) -> None:
        plan: Duplicates[str] = Duplicates(lookup=lambda d: {"id": "old", "status": "ok"} if d == "k" else None)
        assert plan.plan("a", "r1", "row1") == ("send", None)
        assert plan.plan("a", "r2", "row2") == ("wait", None)
        assert plan.plan("a", "r3", "row3") == ("wait", None)
        assert plan.waiting == 2
        assert plan.answered("a", {"id": "r1", "status": "ok"}) == ["row2", "row3"]
        assert plan.plan("a", "r4", "row4") == ("copy", {"id": "r1", "status": "ok"})
        assert plan.plan("k", "r5", "row5") == ("copy", {"id": "old", "status": "ok"})  # an earlier run's answer
        plan.known("b", {"id": "r0", "status": "ok"})
        assert plan.plan("b", "r6", "row6")[0] == "copy"
        assert (plan.copies, plan.waiting) == (5, 0)

    def test_a_copy_carries_the_answer_costs_nothing_and_names_the_first_row(self) -> None:
        original = {"id": "r1", "status": "ok", "completion": "{}", "prompt_tokens": 40, "completion_tokens": 6,
                    "total_tokens": 46, "cost_usd": 0.1, "attempts": 2, "latency_ms": 9.0, "duplicate_of": None}
        copy = copy_record(original, "r9")
        assert copy["id"] == "r9" and copy["duplicate_of"] == "r1" and copy["completion"] == "{}"
        assert (copy["prompt_tokens"], copy["cost_usd"], copy["attempts"]) == (0, 0.0, 0)
        assert copy_record(copy, "r10")["duplicate_of"] == "r1"  # a copy of a copy names the row sent
