"""Reading a deployment's answers: a 200 into a ``Completion``, anything else into an error by remedy.

Both logprobs shapes (OpenAI chat and the legacy parallel lists) are normalized to a list of
``{token, logprob, top_logprobs: [{token, logprob}]}``. Usage figures no endpoint could have
meant (negative, fractional, not numbers) make the answer unreadable; the ``x-ratelimit-*``
headers are read as counts, a sentinel (``-1``) or garbage as none. An error body may come in
any of the shapes these endpoints send (``{error: {code, message}}``, ``{message, type}``,
``{detail}``, plain text); the pause asked for is ``retry-after-ms``, else ``retry-after``
(seconds or a date). Whatever the body echoes, no credential gets through (``workers.redact``).
"""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from workers.completion import Completion
from workers.errors import (
    AuthRejectedError,
    ContentFilteredError,
    EndpointError,
    RateLimitedError,
    RowFailedError,
    ServerError,
    TransportError,
)
from workers.redact import mask


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
