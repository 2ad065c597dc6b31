"""The endpoint client: route-specific bodies, every error and logprobs shape, via MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from schemas import EndpointSpec, Params
from workers import (
    AuthRejectedError,
    ContentFilteredError,
    EndpointClient,
    RateLimitedError,
    RowFailedError,
    ServerError,
    TransportError,
    normalize_logprobs,
    parse_error_body,
    retry_after_seconds,
)
from workers.client import error_from_response, parse_completion

OK_BODY = {
    "id": "cmpl-1", "model": "mistral-large-2407",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Ciao"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13},
}
MESSAGES = ({"role": "user", "content": "Hello"},)


def spec(api: str = "mistral") -> EndpointSpec:
    return EndpointSpec(url="http://sim.test", model="mistral-large-2407", api=api)  # type: ignore[arg-type]


def client_with(handler: Callable[[httpx.Request], httpx.Response], api: str = "mistral") -> EndpointClient:
    return EndpointClient(spec(api), "secret-key", transport=httpx.MockTransport(handler))


class TestRequestBody:
    """Only fields the route accepts are sent, under the route's names."""

    def test_mistral_route(self) -> None:
        body, headers = client_with(lambda r: httpx.Response(200)).request_body(
            MESSAGES, Params(max_tokens=5, seed=7, stop=["\n"], safe_prompt=True, temperature=0.1))
        assert body == {"model": "mistral-large-2407", "messages": list(MESSAGES), "max_tokens": 5,
                        "temperature": 0.1, "stop": ["\n"], "random_seed": 7, "safe_prompt": True}
        assert headers == {}

    def test_azure_inference_route(self) -> None:
        body, headers = client_with(lambda r: httpx.Response(200), "azure-inference").request_body(
            MESSAGES, Params(max_tokens=5, seed=7, safe_prompt=True, logprobs=True, top_logprobs=2))
        assert body["seed"] == 7 and "random_seed" not in body
        assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
        assert headers == {"extra-parameters": "pass-through"}

    def test_logprobs_not_sent_unless_asked(self) -> None:
        body, _ = client_with(lambda r: httpx.Response(200)).request_body(MESSAGES, Params())
        assert "logprobs" not in body and "top_logprobs" not in body


class TestComplete:
    """complete() parses answers and raises by remedy."""

    async def test_ok_and_path_and_auth_header(self) -> None:
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json=OK_BODY, headers={"x-ratelimit-remaining-tokens": "900"})

        async with client_with(handler, "azure-inference") as client:
            completion = await client.complete(MESSAGES, Params())
        assert (completion.content, completion.prompt_tokens, completion.completion_tokens) == ("Ciao", 11, 2)
        assert completion.remaining_tokens == 900
        assert seen[0].url.path == "/chat/completions"
        assert seen[0].url.params["api-version"] == "2024-05-01-preview"
        assert seen[0].headers["authorization"] == "Bearer secret-key"

    async def test_logprobs_refused_once_then_dropped(self) -> None:
        bodies: list[dict[str, object]] = []

        def handler(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content)
            bodies.append(body)
            if "logprobs" in body:
                return httpx.Response(422, json={"object": "error", "type": "invalid_request_error", "message": {
                    "detail": [{"type": "extra_forbidden", "loc": ["body", "logprobs"]}]}})
            return httpx.Response(200, json=OK_BODY)

        async with client_with(handler) as client:
            first = await client.complete(MESSAGES, Params(logprobs=True))
            second = await client.complete(MESSAGES, Params(logprobs=True))
        assert first.content == second.content == "Ciao"
        assert ["logprobs" in b for b in bodies] == [True, False, False]

    @pytest.mark.parametrize(("status", "expected"), [(200, True), (404, False), (503, False)])
    async def test_check_key_on_info(self, status: int, expected: bool) -> None:
        async with client_with(lambda r: httpx.Response(status, json={"model_name": "m"})) as client:
            assert await client.check_key() is expected

    async def test_check_key_rejected(self) -> None:
        async with client_with(lambda r: httpx.Response(401, json={"error": {"code": "Unauthorized"}})) as client:
            with pytest.raises(AuthRejectedError):
                await client.check_key()

    async def test_truncated_body_is_retryable(self) -> None:
        raw = json.dumps(OK_BODY).encode()
        async with client_with(lambda r: httpx.Response(200, content=raw[: len(raw) // 2])) as client:
            with pytest.raises(TransportError, match="unreadable 200 body"):
                await client.complete(MESSAGES, Params())

    async def test_connection_error_is_retryable(self) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            raise httpx.RemoteProtocolError("peer closed connection", request=request)

        async with client_with(handler) as client:
            with pytest.raises(TransportError, match="RemoteProtocolError"):
                await client.complete(MESSAGES, Params())


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "code", "message"),
    [
        (429, {"error": {"code": "429", "message": "Rate limit is exceeded."}}, {"retry-after": "3"},
         RateLimitedError, "429", "Rate limit is exceeded."),
        (401, {"error": {"code": "Unauthorized", "message": "Access denied"}}, {}, AuthRejectedError,
         "Unauthorized", "Access denied"),
        (403, {"message": "Forbidden"}, {}, AuthRejectedError, None, "Forbidden"),
        (400, {"error": {"code": "content_filter", "message": "filtered"}}, {}, ContentFilteredError,
         "content_filter", "filtered"),
        (400, {"code": "content_filter", "message": "filtered flat", "status": 400}, {}, ContentFilteredError,
         "content_filter", "filtered flat"),
        (422, {"object": "error", "message": "bad max_tokens", "type": "invalid_request_error", "code": None}, {},
         RowFailedError, "invalid_request_error", "bad max_tokens"),
        (500, {"detail": "Internal Server Error"}, {}, ServerError, None, "Internal Server Error"),
        (503, b"<html>Service Unavailable</html>", {}, ServerError, None, "<html>Service Unavailable</html>"),
        (408, {"error": "timeout", "code": "Timeout"}, {}, ServerError, "Timeout", "timeout"),
    ],
)
def test_error_classification(status: int, body: object, headers: dict[str, str], kind: type, code: str | None,
                              message: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    error = error_from_response(status, content, headers)
    assert type(error) is kind
    assert (error.status, error.code, error.message) == (status, code, message)


def test_error_body_with_structured_message() -> None:
    code, message = parse_error_body(b'{"object":"error","message":{"detail":[{"loc":["body","foo"]}]},"type":"t"}')
    assert code == "t" and '"foo"' in message


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"Retry-After": "4"}, 4.0),
        ({"retry-after": "Wed, 25 Nov 2026 00:00:10 GMT"}, 10.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    now = 1795564800.0  # 2026-11-25T00:00:00Z
    assert retry_after_seconds(headers, now=now) == expected


class TestLogprobs:
    """Both logprobs shapes normalize to one."""

    def test_openai_shape(self) -> None:
        raw = {"content": [{"token": "Ci", "logprob": -0.1, "bytes": [67, 105],
                            "top_logprobs": [{"token": "Ci", "logprob": -0.1}, {"token": "Bu", "logprob": -2.5}]}]}
        assert normalize_logprobs(raw) == [{"token": "Ci", "logprob": -0.1, "top_logprobs": [
            {"token": "Ci", "logprob": -0.1}, {"token": "Bu", "logprob": -2.5}]}]

    def test_legacy_shape(self) -> None:
        raw = {"text_offsets": [0, 2], "token_logprobs": [-0.1, -0.3], "tokens": ["Ci", "ao"],
               "top_logprobs": [{"Ci": -0.1, "Bu": -2.0}, None]}
        assert normalize_logprobs(raw) == [
            {"token": "Ci", "logprob": -0.1, "top_logprobs": [{"token": "Ci", "logprob": -0.1},
                                                               {"token": "Bu", "logprob": -2.0}]},
            {"token": "ao", "logprob": -0.3, "top_logprobs": []},
        ]

    def test_none(self) -> None:
        assert normalize_logprobs(None) is None
        assert normalize_logprobs({}) is None


class TestRateLimitHeaders:
    """Rate-limit headers are counts or nothing: -1, garbage and absurd values are dropped."""

    @pytest.mark.parametrize(("value", "expected"), [("120", 120), ("-1", None), ("abc", None), ("nan", None),
                                                     ("1e30", None), ("12.0", 12)])
    def test_values(self, value: str, expected: int | None) -> None:
        completion = parse_completion(json.dumps(OK_BODY).encode(), {"x-ratelimit-remaining-tokens": value,
                                                                     "x-ratelimit-limit-tokens": value})
        assert completion.remaining_tokens == expected and completion.limit_tokens == expected

    async def test_info_carries_the_api_version(self) -> None:
        seen: list[str] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(str(request.url))
            return httpx.Response(200, json={"model_name": "m"})

        async with client_with(handler) as client:
            assert await client.check_key()
        assert seen[0].endswith("/info?api-version=2024-05-01-preview")
