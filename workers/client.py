"""One deployment's HTTP client: builds the route's request, reads every answer shape.

Two routes reach a serverless Mistral deployment and they differ in what they accept:

- ``mistral``: ``POST /v1/chat/completions``, Mistral's own schema. Unknown fields are
  rejected with 422, so only its known fields are ever sent; the seed is ``random_seed``.
- ``azure-inference``: ``POST /chat/completions?api-version=...``, the Azure AI Model
  Inference schema. The seed is ``seed``, ``stop`` is a list, and non-standard fields
  (``safe_prompt``) need the header ``extra-parameters: pass-through``.

Log-probabilities are asked for only while the endpoint accepts them: the first 422
that names ``logprobs`` turns them off for this endpoint and the row is sent again
without. A labeling job's structured-output mode (``workers.labels.Modes``) falls back the
same way: a 400/422 refusing it moves this endpoint to the next mode for the rest of the run,
and until the endpoint has taken one, requests go one at a time (so one refusal teaches it).
Both answer shapes (OpenAI chat and the legacy one) are normalized to a list
of ``{token, logprob, top_logprobs: [{token, logprob}]}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog
from httpx_aiohttp import AiohttpTransport

from schemas import EndpointSpec, Params
from schemas.response import ResponseSpec
from workers.errors import (
    AuthRejectedError,
    ContentFilteredError,
    EndpointError,
    RateLimitedError,
    RowFailedError,
    ServerError,
    TransportError,
)
from workers.labels import Modes
from workers.redact import mask, mask_bytes

log = structlog.get_logger(__name__)

_FILTERED = frozenset({"content_filter", "content_filter_error"})


@dataclass(frozen=True, slots=True)
class Completion:
    """A successful answer, reduced to what the output and the quota ledger need."""

    response_id: str | None
    model: str | None
    content: str | None
    finish_reason: str | None
    #: As the endpoint reported them; ``None`` where its answer had no usage (``workers.usage`` counts them).
    prompt_tokens: int | None
    completion_tokens: int | None
    logprobs: list[dict[str, Any]] | None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None
    #: The arguments of the first tool call, as JSON text (a labeling job's ``tool`` mode answers there).
    tool_arguments: str | None = None

    @property
    def filtered(self) -> bool:
        """The content filter cut the answer."""
        return self.finish_reason in _FILTERED


class EndpointClient:
    """Sends chat completions to one deployment; raises ``workers.errors`` types only."""

    def __init__(self, spec: EndpointSpec, api_key: str, *, transport: httpx.AsyncBaseTransport | None = None,
                 response: ResponseSpec | None = None):
        self.spec = spec
        self.logprobs_accepted = True
        #: A labeling job's structured-output modes still open to this endpoint.
        self.modes = Modes(response, spec.api) if response is not None else None
        self._mode_settled = self.modes is None or self.modes.final
        self._mode_probe = asyncio.Lock()
        self._secrets = (api_key,)
        headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        if spec.api == "azure-inference":
            self._path = f"/chat/completions?api-version={spec.api_version}"
        else:
            self._path = "/v1/chat/completions"
        self._http = httpx.AsyncClient(
            base_url=spec.url,
            headers=headers,
            timeout=httpx.Timeout(spec.timeout_s, connect=min(10.0, spec.timeout_s)),
            transport=transport or AiohttpTransport(
                limits=httpx.Limits(max_connections=spec.max_concurrency,
                                    max_keepalive_connections=spec.max_concurrency)
            ),
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> EndpointClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def complete(self, messages: tuple[dict[str, str], ...] | list[dict[str, str]], params: Params) -> Completion:
        """One chat completion; one more request each time the endpoint refuses logprobs or the answer's mode."""
        if not self._mode_settled:
            async with self._mode_probe:  # one at a time until a mode is taken: one refusal is enough to learn
                if not self._mode_settled:
                    completion = await self._complete(messages, params)
                    self._mode_settled = True
                    return completion
        return await self._complete(messages, params)

    async def _complete(self, messages: tuple[dict[str, str], ...] | list[dict[str, str]],
                        params: Params) -> Completion:
        while True:
            mode = self.modes.current if self.modes is not None else None
            body, headers = self.request_body(messages, params)
            try:
                return await self._post(body, headers)
            except RowFailedError as exc:
                if isinstance(exc, ContentFilteredError):  # the prompt's fault, never the mode's
                    raise
                if "logprobs" in body and exc.status == 422 and "logprobs" in exc.message:
                    if self.logprobs_accepted:
                        self.logprobs_accepted = False
                        log.warning("logprobs_refused", endpoint=self.spec.url, detail=exc.message[:200])
                    continue
                if self.modes is not None and mode != self.modes.current:
                    continue  # sent in a mode another request found refused: send it in the current one
                if self.modes is not None and self.modes.refused(exc.status, exc.message, settled=self._mode_settled):
                    log.warning("response_mode_refused", endpoint=self.spec.url, refused=mode,
                                now=self.modes.current, detail=exc.message[:200])
                    continue
                raise

    async def check_key(self) -> bool:
        """Ask ``GET /info`` whether the key is accepted, at the cost of no completion.

        True when the deployment answers 200; raises ``AuthRejectedError`` on 401/403;
        False when the answer says nothing about the key (no such route, a 5xx, no answer).
        """
        try:
            # /info belongs to the Azure AI Model Inference API, whose every route wants its api-version.
            response = await self._http.get(f"/info?api-version={self.spec.api_version}")
        except httpx.HTTPError:
            return False
        if response.status_code in (401, 403):
            raise error_from_response(response.status_code, mask_bytes(response.content, self._secrets),
                                      response.headers)
        return response.status_code == 200

    def request_body(
            self, messages: tuple[dict[str, str], ...] | list[dict[str, str]],
            params: Params,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """The JSON body and extra headers for this route: only fields the route knows."""
        body: dict[str, Any] = {"model": self.spec.model, "messages": list(messages), "max_tokens": params.max_tokens}
        for name in ("temperature", "top_p", "stop", "response_format", "presence_penalty", "frequency_penalty"):
            value = getattr(params, name)
            if value is None:
                continue
            if self.spec.api == "mistral" and name.endswith("_penalty"):
                # Mistral's published contract (2024-08) declares no penalties and refuses unknown fields.
                raise RowFailedError(f"`params.{name}` is not a field of the mistral route (use api: azure-inference)")
            body[name] = value
        headers: dict[str, str] = {}
        if params.seed is not None:
            body["random_seed" if self.spec.api == "mistral" else "seed"] = params.seed
        if params.safe_prompt is not None:
            body["safe_prompt"] = params.safe_prompt
            if self.spec.api == "azure-inference":
                headers["extra-parameters"] = "pass-through"
        if params.logprobs and self.logprobs_accepted:
            body["logprobs"] = True
            if params.top_logprobs is not None:
                body["top_logprobs"] = params.top_logprobs
            if self.spec.api == "azure-inference":  # not declared by the inference API: an extra parameter
                headers["extra-parameters"] = "pass-through"
        if self.modes is not None:
            body.update(self.modes.body_fields())
        return body, headers

    async def _post(self, body: dict[str, Any], headers: dict[str, str]) -> Completion:
        # httpx's timeout is per read: a body trickled a byte at a time would never trip it. The
        # whole request, body included, gets `timeout_s`.
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                response = await self._http.post(self._path, json=body, headers=headers)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise TransportError(f"timed out after {self.spec.timeout_s:g}s ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        # The key never gets further than here, whatever the endpoint echoes back.
        content = mask_bytes(response.content, self._secrets)
        if response.status_code != 200:
            raise self._bounded(error_from_response(response.status_code, content, response.headers))
        return parse_completion(content, response.headers)

    def _bounded(self, exc: EndpointError) -> EndpointError:
        """The server's ``retry-after``, capped at ``max_retry_after_s`` and logged when it is long."""
        asked = exc.retry_after_s
        if asked is None:
            return exc
        cap = self.spec.max_retry_after_s
        if asked > cap:
            exc.retry_after_s = cap
            log.warning("retry_after_capped", endpoint=self.spec.url, status=exc.status, asked_s=asked,
                        waiting_s=cap, setting="max_retry_after_s")
        elif asked >= 1.0:
            log.info("retry_after_honoured", endpoint=self.spec.url, status=exc.status, waiting_s=asked)
        return exc


def parse_completion(content: bytes, headers: httpx.Headers | dict[str, str]) -> Completion:
    """Read a 200 answer; a truncated or garbled body is a ``TransportError`` (retry)."""
    try:
        data = json.loads(content)
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        message = choice.get("message") or {}
        return Completion(
            tool_arguments=_tool_arguments(message),
            response_id=data.get("id"),
            model=data.get("model"),
            # A gateway may echo the request's headers into the answer itself: no credential passes.
            content=None if message.get("content") is None else mask(message["content"]),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=_usage_count(usage, "prompt_tokens"),
            completion_tokens=_usage_count(usage, "completion_tokens"),
            logprobs=normalize_logprobs(choice.get("logprobs")),
            remaining_requests=_int_header(headers, "x-ratelimit-remaining-requests"),
            remaining_tokens=_int_header(headers, "x-ratelimit-remaining-tokens"),
            limit_requests=_int_header(headers, "x-ratelimit-limit-requests"),
            limit_tokens=_int_header(headers, "x-ratelimit-limit-tokens"),
        )
    except _UsageError as exc:
        raise TransportError(f"unreadable answer: {exc}") from None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise TransportError(f"unreadable 200 body ({len(content)} bytes): {type(exc).__name__}") from exc


def _tool_arguments(message: dict[str, Any]) -> str | None:
    """The first tool call's arguments as JSON text (Mistral may send them as an object), masked."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or not calls or not isinstance(calls[0], dict):
        return None
    arguments = (calls[0].get("function") or {}).get("arguments")
    if arguments is None:
        return None
    return mask(arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False))


class _UsageError(ValueError):
    """A usage figure no endpoint could have meant (negative, fractional, not a number)."""


def _usage_count(usage: Any, name: str) -> int | None:
    """A usage figure as a count of tokens; ``None`` when absent. Prism's mock sends -2147483648."""
    if not isinstance(usage, dict):
        raise _UsageError(f"`usage` is {type(usage).__name__}, not an object")
    value = usage.get(name)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            or (isinstance(value, float) and not value.is_integer())):
        raise _UsageError(f"usage.{name} is {value!r}, not a count of tokens")
    return int(value)


def normalize_logprobs(raw: Any) -> list[dict[str, Any]] | None:
    """Both logprobs shapes to ``[{token, logprob, top_logprobs: [{token, logprob}]}]``."""
    if not raw:
        return None
    if isinstance(raw.get("content"), list):  # OpenAI chat shape
        return [
            {
                "token": item["token"],
                "logprob": float(item["logprob"]),
                "top_logprobs": [
                    {"token": top["token"], "logprob": float(top["logprob"])} for top in item.get("top_logprobs") or []
                ],
            }
            for item in raw["content"]
        ]
    if isinstance(raw.get("tokens"), list):  # legacy shape: parallel lists
        tops = raw.get("top_logprobs") or []
        return [
            {
                "token": token,
                "logprob": float(logprob),
                "top_logprobs": [
                    {"token": t, "logprob": float(lp)}
                    for t, lp in (tops[i] if i < len(tops) and tops[i] else {}).items()
                ],
            }
            for i, (token, logprob) in enumerate(zip(raw["tokens"], raw.get("token_logprobs") or [], strict=False))
        ]
    return None


def error_from_response(status: int, content: bytes, headers: httpx.Headers | dict[str, str]) -> EndpointError:
    """Classify a non-200 answer by remedy, with the code and message of whichever body shape came."""
    code, message = parse_error_body(content)
    message = mask(message)
    retry_after = retry_after_seconds(headers)
    kwargs: dict[str, Any] = {"status": status, "code": code, "retry_after_s": retry_after}
    if code == "content_filter":
        return ContentFilteredError(message, **kwargs)
    if status == 429:
        return RateLimitedError(message, **kwargs)
    if status in (401, 403):
        return AuthRejectedError(message, **kwargs)
    if status in (408, 409) or status >= 500:
        return ServerError(message, **kwargs)
    return RowFailedError(message, **kwargs)


def parse_error_body(content: bytes) -> tuple[str | None, str]:
    """``(code, message)`` from any of the error shapes these endpoints send."""
    try:
        data = json.loads(content)
    except ValueError:
        text = content.decode("utf-8", "replace").strip()
        return None, text[:500] or "(empty body)"
    if not isinstance(data, dict):
        return None, _text(data)
    inner = data.get("error")
    if isinstance(inner, dict):
        return _code(inner.get("code") or inner.get("type")), _text(inner.get("message") or inner)
    if isinstance(inner, str):
        return _code(data.get("code")), inner
    if "message" in data:
        return _code(data.get("code") or data.get("type")), _text(data["message"])
    if "detail" in data:
        return _code(data.get("code")), _text(data["detail"])
    return None, _text(data)


def retry_after_seconds(headers: httpx.Headers | dict[str, str], now: float | None = None) -> float | None:
    """The pause the server asked for: ``retry-after-ms``, else ``retry-after`` (seconds or a date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        if "retry-after-ms" in lowered:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        value = lowered.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = parsedate_to_datetime(value).timestamp()
            return max(0.0, when - (time.time() if now is None else now))
    except (ValueError, TypeError):
        return None


def _int_header(headers: httpx.Headers | dict[str, str], name: str) -> int | None:
    """A rate-limit header as a count; ``None`` when absent, garbage or a sentinel (``-1``)."""
    value = headers.get(name)
    try:
        number = None if value is None else float(value)
    except ValueError:
        return None
    if number is None or number != number or number < 0 or number > 1e15:
        return None
    return int(number)


def _code(value: Any) -> str | None:
    return None if value is None else str(value)


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:500]
