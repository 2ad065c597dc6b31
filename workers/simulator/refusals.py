"""What the simulated deployment turns away, and the status and body it answers with.

Each route accepts its own fields (``NATIVE_FIELDS``, ``INFERENCE_FIELDS``; logprobs only while
the deployment takes them); the bodies of its refusals come in the shapes the real service uses,
which differ by route and by cause: Mistral's ``{object: error, message, type}``, Azure's
``{error: {code, message}}``, a FastAPI ``detail``, or a gateway's bare ``message``.

A refusal is ``(status, body)``; the deployment counts and sends it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from aiohttp import web

#: An answer's status and JSON body.
Refusal = tuple[int, dict[str, Any]]

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

API_VERSION_REQUIRED: Refusal = (400, {"error": {"code": "BadRequest",
                                                 "message": "The api-version query parameter is required."}})
UNAUTHORIZED: Refusal = (401, {"error": {"code": "Unauthorized", "message": (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key.")}})
BAD_MESSAGES: Refusal = (422, {"object": "error", "message": {"detail": [{
    "type": "value_error", "loc": ["body", "messages"],
    "msg": "messages must be a non-empty list of {role, content} with a known role and string content"}]},
    "type": "invalid_request_error", "param": None, "code": None})
BAD_MAX_TOKENS: Refusal = (422, {"object": "error", "message": "max_tokens must be a positive integer",
                                 "type": "invalid_request_error", "code": None})
#: What Azure answered Mistral Large 2411 (litellm#11885): a bare "invalid input error".
JSON_SCHEMA_REFUSED: Refusal = (400, {"object": "error", "message": "invalid input error", "type": "BadRequest",
                                      "param": None, "code": 400})
RATE_LIMITED: Refusal = (429, {"error": {"code": "429", "message": "Rate limit is exceeded. Try again later."}})
_SERVER_ERRORS: list[Refusal] = [
    (500, {"detail": "Internal Server Error"}),
    (502, {"message": "upstream connect error or disconnect/reset before headers"}),
    (503, {"object": "error", "message": "Service temporarily unavailable", "type": "internal_error",
           "code": "503"}),
]


def accepted_fields(route_fields: frozenset[str], logprobs: str) -> frozenset[str]:
    """The route's fields, with the logprob fields unless the deployment rejects them."""
    return route_fields | (LOGPROB_FIELDS if logprobs != "reject" else frozenset())


def native_unknown(body: dict[str, Any], allowed: frozenset[str]) -> Refusal | None:
    """The Mistral route's 422 naming every field it does not know."""
    unknown = sorted(set(body) - allowed)
    if not unknown:
        return None
    detail = [{"type": "extra_forbidden", "loc": ["body", name], "msg": "Extra inputs are not permitted",
               "input": body[name]} for name in unknown]
    return 422, {"object": "error", "message": {"detail": detail}, "type": "invalid_request_error", "param": None,
                 "code": None}


def inference_unknown(body: dict[str, Any], allowed: frozenset[str], headers: Mapping[str, str]) -> Refusal | None:
    """The inference route's 400 for extra fields (unless passed through) or its 422 for a ``stop`` not a list."""
    extra = set(body) - allowed
    if headers.get("extra-parameters", "").lower() == "pass-through":
        extra -= INFERENCE_EXTRA_FIELDS
    if extra:
        return 400, {"error": {"code": "Invalid input", "message": (
            f"Extra parameters {sorted(extra)} are not allowed when extra-parameters is not set "
            "or set to be 'error'. Set extra-parameters to 'pass-through' to pass to the model.")}}
    if "stop" in body and not isinstance(body["stop"], list):
        return 422, {"error": {"code": "Invalid input", "message": "`stop` must be a list of strings"}}
    return None


def valid_messages(messages: Any) -> bool:
    """A non-empty list of ``{role, content}`` with a known role and string content."""
    return isinstance(messages, list) and bool(messages) and all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages
    )


def asks_json_schema(body: dict[str, Any]) -> bool:
    """The request's ``response_format`` is a ``json_schema``."""
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") == "json_schema"


def untokenizable(exc: Exception) -> Refusal:
    """The 400 for messages the model's tokenizer cannot read."""
    return 400, {"object": "error", "message": str(exc), "type": "invalid_request_error", "code": None}


def too_long(prompt_tokens: int, max_tokens: int, context_tokens: int) -> Refusal:
    """The 400 for a prompt and draft that overflow the model's context."""
    return 400, {"object": "error", "type": "invalid_request_error", "code": None, "message": (
        f"Prompt contains {prompt_tokens} tokens and {max_tokens} draft tokens, too large for model "
        f"with {context_tokens} maximum context length")}


def server_error(rng: random.Random) -> Refusal:
    """A 5xx as the service or its gateway sends one, drawn from ``rng``."""
    return rng.choice(_SERVER_ERRORS)


def filtered(rng: random.Random) -> Refusal:
    """The content filter's 400, its body wrapped in ``error`` or not (drawn from ``rng``)."""
    inner = {"code": "content_filter", "message": "The response was filtered due to the prompt triggering "
             "content management policy.", "status": 400}
    return 400, {"error": inner} if rng.random() < 0.5 else inner


async def json_body(request: web.Request) -> tuple[dict[str, Any], web.StreamResponse | None]:
    """The request's JSON object, or the answer to a body that is not one (sent as is, not counted)."""
    try:
        body = await request.json()
    except ValueError:
        return {}, web.json_response({"detail": "request body is not valid JSON"}, status=400)
    if not isinstance(body, dict):
        return {}, web.json_response({"detail": "request body must be a JSON object"}, status=422)
    return body, None
