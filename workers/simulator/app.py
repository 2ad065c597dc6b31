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
shapes the real service uses, and faults are injected at the configured rates.
Asked for JSON mode, a ``json_schema`` or a tool call, it answers with an instance of the
schema (``workers.simulator.structured``), a set share of them invalid; it can refuse
``json_schema`` with 400 the way Azure did. ``GET /_sim/stats`` reports what was billed.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections import Counter
from typing import Any

from aiohttp import web

from workers.simulator import structured
from workers.simulator.config import SimConfig
from workers.simulator.metering import MinuteTally, meter
from workers.simulator.text import Fabricated, fabricate, fabricate_logprobs, prompt_digest
from workers.tokens import TokenCounter, TokenizeError

NATIVE_FIELDS = frozenset({
    "model", "messages", "temperature", "top_p", "max_tokens", "min_tokens", "stream", "stop", "random_seed",
    "response_format", "tools", "tool_choice", "safe_prompt", "ignore_eos", "n",
})
INFERENCE_FIELDS = frozenset({
    "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop", "seed", "response_format",
    "tools", "tool_choice", "presence_penalty", "frequency_penalty", "n",
})
INFERENCE_EXTRA_FIELDS = frozenset({"safe_prompt", "random_seed", "ignore_eos", "min_tokens"})
LOGPROB_FIELDS = frozenset({"logprobs", "top_logprobs"})
ROLES = frozenset({"system", "user", "assistant", "tool"})


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

    async def _foreign_tenant(self, _app: web.Application) -> Any:
        """Another job on the same deployment, sending at ``foreign_share`` of the quota, retrying its 429s."""
        share = self.config.foreign_share
        rps, tps = self.config.requests_per_minute / 60, self.config.tokens_per_minute / 60
        size = max(1, int(tps / rps))  # one request of theirs uses both quotas at the same share
        owed, tick = 0.0, 0.05

        async def send() -> None:
            nonlocal owed
            while True:
                await asyncio.sleep(tick)
                owed = min(owed + share * rps * tick, 5.0)
                while owed >= 1:
                    now = time.monotonic()
                    if not self.window.try_admit(now, size).admitted:
                        self.stats["foreign_rate_limited"] += 1
                        break
                    self.minute.add(now, 1, size)
                    self.stats["foreign_admitted_tokens"] += size
                    owed -= 1

        task = asyncio.create_task(send())
        yield
        task.cancel()

    # --- routes -------------------------------------------------------------------------

    async def info(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._authorize(request)) is not None:
            return denied
        if not request.query.get("api-version"):
            return self._error(400, {"error": {"code": "BadRequest",
                                               "message": "The api-version query parameter is required."}})
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
        body, problem = await _json_body(request)
        if problem is not None:
            return problem
        allowed = NATIVE_FIELDS | (LOGPROB_FIELDS if self.config.logprobs != "reject" else frozenset())
        unknown = sorted(set(body) - allowed)
        if unknown:
            detail = [{"type": "extra_forbidden", "loc": ["body", name], "msg": "Extra inputs are not permitted",
                       "input": body[name]} for name in unknown]
            return self._error(422, {"object": "error", "message": {"detail": detail},
                                     "type": "invalid_request_error", "param": None, "code": None})
        return await self._complete(request, body, seed_field="random_seed")

    async def inference(self, request: web.Request) -> web.StreamResponse:
        self.stats["requests"] += 1
        if (denied := self._authorize(request)) is not None:
            return denied
        if not request.query.get("api-version"):
            return self._error(400, {"error": {"code": "BadRequest",
                                               "message": "The api-version query parameter is required."}})
        body, problem = await _json_body(request)
        if problem is not None:
            return problem
        allowed = INFERENCE_FIELDS | (LOGPROB_FIELDS if self.config.logprobs != "reject" else frozenset())
        extra = set(body) - allowed
        if request.headers.get("extra-parameters", "").lower() == "pass-through":
            extra -= INFERENCE_EXTRA_FIELDS
        if extra:
            return self._error(400, {"error": {"code": "Invalid input", "message": (
                f"Extra parameters {sorted(extra)} are not allowed when extra-parameters is not set "
                "or set to be 'error'. Set extra-parameters to 'pass-through' to pass to the model.")}})
        if "stop" in body and not isinstance(body["stop"], list):
            return self._error(422, {"error": {"code": "Invalid input", "message": "`stop` must be a list of strings"}})
        return await self._complete(request, body, seed_field="seed")

    # --- the shared path ----------------------------------------------------------------

    async def _complete(self, request: web.Request, body: dict[str, Any], seed_field: str) -> web.StreamResponse:
        messages = body.get("messages")
        if (problem := self._check_messages(messages)) is not None:
            return problem
        assert isinstance(messages, list)
        max_tokens = body.get("max_tokens") or self.config.default_max_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return self._error(422, {"object": "error", "message": "max_tokens must be a positive integer",
                                     "type": "invalid_request_error", "code": None})
        try:
            prompt_tokens = self.counter.reference_prompt_tokens(messages)
        except TokenizeError as exc:
            return self._error(400, {"object": "error", "message": str(exc), "type": "invalid_request_error",
                                     "code": None})
        response_format = body.get("response_format")
        if self.config.refuse_json_schema and isinstance(response_format, dict) \
                and response_format.get("type") == "json_schema":
            # What Azure answered Mistral Large 2411 (litellm#11885): a bare "invalid input error".
            self.stats["refused_json_schema"] += 1
            return self._error(400, {"object": "error", "message": "invalid input error", "type": "BadRequest",
                                     "param": None, "code": 400})
        if prompt_tokens + max_tokens > self.counter.model.context_tokens:
            return self._error(400, {"object": "error", "type": "invalid_request_error", "code": None, "message": (
                f"Prompt contains {prompt_tokens} tokens and {max_tokens} draft tokens, too large for model "
                f"with {self.counter.model.context_tokens} maximum context length")})

        now = time.monotonic()
        admission = self.window.try_admit(now, prompt_tokens + max_tokens)
        if admission.admitted:
            self.minute.add(now, 1, prompt_tokens + max_tokens)
        limits = self._limit_headers(now, admission)
        if not admission.admitted:
            self.stats["rate_limited"] += 1
            wait = {"retry-after": str(max(1, round(admission.retry_after_s))),
                    "retry-after-ms": str(int(admission.retry_after_s * 1000))} if self.config.retry_after else {}
            return self._error(429, {"error": {"code": "429", "message": "Rate limit is exceeded. Try again later."}},
                               headers={**limits, **wait})
        self.stats["admitted"] += 1
        self.stats["admitted_tokens"] += prompt_tokens + max_tokens
        self.first_admission = self.first_admission or time.time()
        self.last_admission = time.time()
        self.generating += 1
        try:
            return await self._answer(request, body, messages, max_tokens, prompt_tokens, limits)
        finally:
            self.generating -= 1

    async def _answer(self, request: web.Request, body: dict[str, Any], messages: list[Any], max_tokens: int,
                      prompt_tokens: int, limits: dict[str, str]) -> web.StreamResponse:

        if "[[filter]]" in json.dumps(messages):
            return self._filtered_400()
        fault = self._draw_fault()
        if fault == "server_error":
            return self._server_error()
        if fault == "filter_400":
            return self._filtered_400()
        if fault == "hang":
            self.stats["hangs"] += 1
            await asyncio.sleep(self.config.hang_s)

        want = structured.wanted(body, messages)
        fab = fabricate(messages, max_tokens, self.counter, self.config.seed) if want is None \
            else self._structured(want, messages, max_tokens)
        finish = "content_filter" if fault == "filter" else fab.finish_reason
        content = fab.text if finish != "content_filter" else ""
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if want is not None and want.mode == "tool" and finish != "content_filter":
            message = {"role": "assistant", "content": "", "tool_calls": [{
                "id": uuid.uuid4().hex[:9], "type": "function",
                "function": {"name": want.name, "arguments": fab.text}}]}
            finish = "tool_calls" if finish == "stop" else finish
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
        if body.get("logprobs") and finish != "content_filter":
            shape = "legacy" if self.config.logprobs == "legacy" else "openai"
            choice["logprobs"] = fabricate_logprobs(fab, self.counter, shape, int(body.get("top_logprobs") or 0))
        completion_tokens = len(fab.tokens) if finish != "content_filter" else 0
        payload = {
            "id": uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()),
            "model": self.config.model,
            "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        await asyncio.sleep(self.config.latency_s + self.config.per_token_s * completion_tokens)
        if request.transport is None or request.transport.is_closing():
            # The client went away mid-generation: the tokens are spent (and billed) all the same.
            self.stats["undelivered"] += 1
        self.stats["billed_requests"] += 1
        self.stats["billed_prompt_tokens"] += prompt_tokens
        self.stats["billed_completion_tokens"] += completion_tokens
        self.billed_prompts[prompt_digest(messages)] += 1
        raw = json.dumps(payload).encode()
        if fault == "reset":
            self.stats["resets"] += 1
            _abort(request)
            return web.Response(status=200)
        if fault == "truncate":
            self.stats["truncated"] += 1
            response = web.StreamResponse(status=200, headers={**limits, "Content-Type": "application/json"})
            response.content_length = len(raw)
            await response.prepare(request)
            await response.write(raw[: len(raw) // 2])
            _abort(request)
            return response
        self.stats["ok"] += 1
        return web.Response(body=raw, content_type="application/json", headers=limits)

    def _structured(self, want: structured.Wanted, messages: list[Any], max_tokens: int) -> Fabricated:
        """A JSON answer for ``want``, invalid at the configured share (always for ``[[invalid]]``)."""
        bad = "[[invalid]]" in json.dumps(messages) or (
            self.config.invalid_answers > 0 and self.rng.random() < self.config.invalid_answers)
        if bad:
            self.stats["invalid_answers"] += 1
        text = structured.answer(want, prompt_digest(messages), self.config.seed, bad, self.rng)
        tokens = self.counter.text_tokens(text)
        if len(tokens) <= max_tokens:
            return Fabricated(text, tokens, "stop")
        return Fabricated(self.counter.decode(tokens[:max_tokens]), tokens[:max_tokens], "length")

    def _limit_headers(self, now: float, admission: Any) -> dict[str, str]:
        """``x-ratelimit-*`` as this deployment's ``headers`` mode has them."""
        mode = self.config.headers
        if mode == "none":
            return {}
        if mode == "sentinel":
            return {f"x-ratelimit-{kind}-{what}": value for what in ("tokens", "requests") for kind, value in
                    (("limit", "-1"), ("remaining", "-1"), ("reset", "0"))}
        if mode == "minute":
            requests, tokens = self.minute.remaining(now)
            limit_requests, limit_tokens = self.config.requests_per_minute, self.config.tokens_per_minute
        else:
            requests, tokens = admission.remaining_requests, admission.remaining_tokens
            limit_requests, limit_tokens = self.window.request_limit, self.window.token_limit
        return {"x-ratelimit-remaining-requests": str(requests), "x-ratelimit-remaining-tokens": str(tokens),
                "x-ratelimit-limit-requests": str(limit_requests), "x-ratelimit-limit-tokens": str(limit_tokens)}

    def _authorize(self, request: web.Request) -> web.StreamResponse | None:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        revoked = self.config.revoke_after is not None and self.stats["requests"] > self.config.revoke_after
        if scheme.lower() == "bearer" and key and (self.config.api_key is None or key == self.config.api_key) \
                and not revoked:
            return None
        self.stats["unauthorized"] += 1
        return self._error(401, {"error": {"code": "Unauthorized", "message": (
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key.")}})

    def _check_messages(self, messages: Any) -> web.StreamResponse | None:
        if isinstance(messages, list) and messages and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages
        ):
            return None
        return self._error(422, {"object": "error", "message": {"detail": [{
            "type": "value_error", "loc": ["body", "messages"],
            "msg": "messages must be a non-empty list of {role, content} with a known role and string content"}]},
            "type": "invalid_request_error", "param": None, "code": None})

    def _draw_fault(self) -> str | None:
        roll = self.rng.random()
        for kind, rate in self.config.faults.items():
            if roll < rate:
                self.stats[f"fault_{kind}"] += 1
                return kind
            roll -= rate
        return None

    def _server_error(self) -> web.StreamResponse:
        status, body = self.rng.choice([
            (500, {"detail": "Internal Server Error"}),
            (502, {"message": "upstream connect error or disconnect/reset before headers"}),
            (503, {"object": "error", "message": "Service temporarily unavailable", "type": "internal_error",
                   "code": "503"}),
        ])
        return self._error(status, body)

    def _filtered_400(self) -> web.StreamResponse:
        self.stats["filtered"] += 1
        inner = {"code": "content_filter", "message": "The response was filtered due to the prompt triggering "
                 "content management policy.", "status": 400}
        return self._error(400, {"error": inner} if self.rng.random() < 0.5 else inner)

    def _error(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.StreamResponse:
        self.stats[f"status_{status}"] += 1
        return web.json_response(body, status=status, headers=headers)


async def _json_body(request: web.Request) -> tuple[dict[str, Any], web.StreamResponse | None]:
    try:
        body = await request.json()
    except ValueError:
        return {}, web.json_response({"detail": "request body is not valid JSON"}, status=400)
    if not isinstance(body, dict):
        return {}, web.json_response({"detail": "request body must be a JSON object"}, status=422)
    return body, None


def _abort(request: web.Request) -> None:
    """Drop the connection without a proper answer, like a reset mid-flight."""
    if request.transport is not None:
        request.transport.abort()


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
