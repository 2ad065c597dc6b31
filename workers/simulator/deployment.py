"""An Azure serverless Mistral deployment, served over real HTTP for tests, demos and benchmarks.

Routes, as the real deployments have them:

- ``POST /v1/chat/completions`` — Mistral's native schema; an unknown field is a 422.
- ``POST /chat/completions?api-version=...`` — Azure AI Model Inference; ``seed`` not
  ``random_seed``, ``stop`` a list, non-standard fields only with
  ``extra-parameters: pass-through``.
- ``GET /info`` — the model's name and provider.

Quotas are enforced over short windows, metered as a sliding log, a token bucket or
clock-aligned fixed windows (``workers.simulator.metering``): 429 with ``retry-after``
and ``retry-after-ms`` (or without), ``x-ratelimit-remaining-*`` and ``-limit-*`` headers
counting the window, the minute, ``-1`` or absent; another tenant may use a share of
the quota. Usage is counted with the model's own tokenizer, error bodies come in the
shapes the real service uses (``workers.simulator.refusals``), and faults are injected at
the configured rates (``workers.simulator.faults``).
Asked for JSON mode, a ``json_schema`` or a tool call, it answers with an instance of the
schema (``workers.simulator.structured``, sent as ``workers.simulator.answer`` builds it), a
set share of them invalid; it can refuse ``json_schema`` with 400 the way Azure did.
``GET /_sim/stats`` reports what was billed.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from workers.simulator import faults, refusals, structured
from workers.simulator.answer import FILTERED, completion_payload, fitted
from workers.simulator.config import SimConfig
from workers.simulator.limits import foreign_tenant, limit_headers
from workers.simulator.metering import Admission, MinuteTally, meter
from workers.simulator.refusals import INFERENCE_FIELDS, NATIVE_FIELDS, Refusal
from workers.simulator.text import Fabricated, fabricate, prompt_digest
from workers.tokens import TokenCounter, TokenizeError


class Simulator:
    """The deployment's state: its window, its tokenizer, its faults and its bill."""

    def __init__(self, config: SimConfig):
        self.config = config
        self.counter = TokenCounter(config.model_info())
        self.window = meter(config.metering, config.requests_per_minute, config.tokens_per_minute, config.window_s,
                            time.monotonic())
        self.minute = MinuteTally(config.requests_per_minute, config.tokens_per_minute)
        self.rng = random.Random(config.seed)
        self.stats: Counter[str] = Counter()
        self.billed_prompts: Counter[str] = Counter()
        self.first_admission: float | None = None
        self.last_admission: float | None = None
        #: Admitted requests not answered yet.
        self.generating = 0

    def app(self) -> web.Application:
        """The aiohttp application serving this deployment."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.native)
        app.router.add_post("/chat/completions", self.inference)
        app.router.add_get("/info", self.info)
        app.router.add_get("/_sim/stats", self.report)
        if self.config.foreign_share > 0:
            app.cleanup_ctx.append(self._foreign_tenant)
        return app

    def _foreign_tenant(self, _app: web.Application) -> AsyncIterator[None]:
        return foreign_tenant(self.config, self.window, self.minute, self.stats)

    # --- routes -------------------------------------------------------------------------

    async def info(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._authorize(request)) is not None:
            return denied
        if not request.query.get("api-version"):
            return self._error(*refusals.API_VERSION_REQUIRED)
        return web.json_response(
            {"model_name": self.config.model, "model_type": "chat-completion", "model_provider_name": "Mistral"}
        )

    async def report(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({
            **self.stats,
            "peak_window_requests": self.window.peak_requests,
            "peak_window_tokens": self.window.peak_tokens,
            "window_request_limit": self.window.request_limit,
            "window_token_limit": self.window.token_limit,
            "prompts_billed_more_than_once": sum(1 for n in self.billed_prompts.values() if n > 1),
            "generating": self.generating,
            "first_admission": self.first_admission,
            "last_admission": self.last_admission,
        })

    async def native(self, request: web.Request) -> web.StreamResponse:
        self.stats["requests"] += 1
        if (denied := self._authorize(request)) is not None:
            return denied
        body, problem = await refusals.json_body(request)
        if problem is not None:
            return problem
        allowed = refusals.accepted_fields(NATIVE_FIELDS, self.config.logprobs)
        if (refusal := refusals.native_unknown(body, allowed)) is not None:
            return self._error(*refusal)
        return await self._complete(request, body, seed_field="random_seed")

    async def inference(self, request: web.Request) -> web.StreamResponse:
        self.stats["requests"] += 1
        if (denied := self._authorize(request)) is not None:
            return denied
        if not request.query.get("api-version"):
            return self._error(*refusals.API_VERSION_REQUIRED)
        body, problem = await refusals.json_body(request)
        if problem is not None:
            return problem
        allowed = refusals.accepted_fields(INFERENCE_FIELDS, self.config.logprobs)
        if (refusal := refusals.inference_unknown(body, allowed, request.headers)) is not None:
            return self._error(*refusal)
        return await self._complete(request, body, seed_field="seed")

    # --- the shared path ----------------------------------------------------------------

    async def _complete(self, request: web.Request, body: dict[str, Any], seed_field: str) -> web.StreamResponse:
        checked = self._checked(body)
        if isinstance(checked, web.StreamResponse):
            return checked
        messages, max_tokens, prompt_tokens = checked
        now = time.monotonic()
        admission = self.window.try_admit(now, prompt_tokens + max_tokens)
        if admission.admitted:
            self.minute.add(now, 1, prompt_tokens + max_tokens)
        limits = limit_headers(self.config, self.window, self.minute, now, admission)
        if not admission.admitted:
            return self._rate_limited(admission, limits)
        self._count_admission(prompt_tokens + max_tokens)
        self.generating += 1
        try:
            return await self._answer(request, body, messages, max_tokens, prompt_tokens, limits)
        finally:
            self.generating -= 1

    def _checked(self, body: dict[str, Any]) -> tuple[list[Any], int, int] | web.StreamResponse:
        """The request's messages, ``max_tokens`` and prompt tokens; or the refusal it gets before admission."""
        messages = body.get("messages")
        if not refusals.valid_messages(messages):
            return self._error(*refusals.BAD_MESSAGES)
        assert isinstance(messages, list)
        max_tokens = body.get("max_tokens") or self.config.default_max_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return self._error(*refusals.BAD_MAX_TOKENS)
        try:
            prompt_tokens = self.counter.reference_prompt_tokens(messages)
        except TokenizeError as exc:
            return self._error(*refusals.untokenizable(exc))
        if self.config.refuse_json_schema and refusals.asks_json_schema(body):
            self.stats["refused_json_schema"] += 1
            return self._error(*refusals.JSON_SCHEMA_REFUSED)
        if prompt_tokens + max_tokens > self.counter.model.context_tokens:
            return self._error(*refusals.too_long(prompt_tokens, max_tokens, self.counter.model.context_tokens))
        return messages, max_tokens, prompt_tokens

    def _rate_limited(self, admission: Admission, limits: dict[str, str]) -> web.StreamResponse:
        """The 429, with how long to wait when the deployment says so."""
        self.stats["rate_limited"] += 1
        wait = {"retry-after": str(max(1, round(admission.retry_after_s))),
                "retry-after-ms": str(int(admission.retry_after_s * 1000))} if self.config.retry_after else {}
        return self._error(*refusals.RATE_LIMITED, headers={**limits, **wait})

    def _count_admission(self, tokens: int) -> None:
        self.stats["admitted"] += 1
        self.stats["admitted_tokens"] += tokens
        self.first_admission = self.first_admission or time.time()
        self.last_admission = time.time()

    async def _answer(self, request: web.Request, body: dict[str, Any], messages: list[Any], max_tokens: int,
                      prompt_tokens: int, limits: dict[str, str]) -> web.StreamResponse:
        if "[[filter]]" in json.dumps(messages):
            return self._error(*self._filtered())
        fault = self._draw_fault()
        if fault == "server_error":
            return self._error(*refusals.server_error(self.rng))
        if fault == "filter_400":
            return self._error(*self._filtered())
        if fault == "hang":
            self.stats["hangs"] += 1
            await asyncio.sleep(self.config.hang_s)
        want = structured.wanted(body, messages)
        fab = fabricate(messages, max_tokens, self.counter, self.config.seed) if want is None \
            else self._structured(want, messages, max_tokens)
        finish = FILTERED if fault == "filter" else fab.finish_reason
        payload, completion_tokens = completion_payload(fab, want, finish, body, self.counter, self.config.model,
                                                        self.config.logprobs, prompt_tokens)
        await asyncio.sleep(self.config.latency_s + self.config.per_token_s * completion_tokens)
        self._bill(request, messages, prompt_tokens, completion_tokens)
        return await self._deliver(request, json.dumps(payload).encode(), fault, limits)

    def _structured(self, want: structured.Wanted, messages: list[Any], max_tokens: int) -> Fabricated:
        """A JSON answer for ``want``, invalid at the configured share (always for ``[[invalid]]``)."""
        bad = "[[invalid]]" in json.dumps(messages) or (
            self.config.invalid_answers > 0 and self.rng.random() < self.config.invalid_answers)
        if bad:
            self.stats["invalid_answers"] += 1
        text = structured.answer(want, prompt_digest(messages), self.config.seed, bad, self.rng)
        return fitted(text, max_tokens, self.counter)

    def _bill(self, request: web.Request, messages: list[Any], prompt_tokens: int, completion_tokens: int) -> None:
        """Count the answer's tokens, delivered or not."""
        if request.transport is None or request.transport.is_closing():
            # The client went away mid-generation: the tokens are spent (and billed) all the same.
            self.stats["undelivered"] += 1
        self.stats["billed_requests"] += 1
        self.stats["billed_prompt_tokens"] += prompt_tokens
        self.stats["billed_completion_tokens"] += completion_tokens
        self.billed_prompts[prompt_digest(messages)] += 1

    async def _deliver(self, request: web.Request, raw: bytes, fault: str | None,
                       limits: dict[str, str]) -> web.StreamResponse:
        """Send the answer: whole, or broken the way ``fault`` breaks it."""
        if fault == "reset":
            self.stats["resets"] += 1
            faults.abort(request)
            return web.Response(status=200)
        if fault == "truncate":
            self.stats["truncated"] += 1
            return await faults.truncated(request, raw, limits)
        self.stats["ok"] += 1
        return web.Response(body=raw, content_type="application/json", headers=limits)

    def _authorize(self, request: web.Request) -> web.StreamResponse | None:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        revoked = self.config.revoke_after is not None and self.stats["requests"] > self.config.revoke_after
        if scheme.lower() == "bearer" and key and (self.config.api_key is None or key == self.config.api_key) \
                and not revoked:
            return None
        self.stats["unauthorized"] += 1
        return self._error(*refusals.UNAUTHORIZED)

    def _draw_fault(self) -> str | None:
        kind = faults.draw(self.rng, self.config.faults)
        if kind is not None:
            self.stats[f"fault_{kind}"] += 1
        return kind

    def _filtered(self) -> Refusal:
        self.stats["filtered"] += 1
        return refusals.filtered(self.rng)

    def _error(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.StreamResponse:
        self.stats[f"status_{status}"] += 1
        return web.json_response(body, status=status, headers=headers)
