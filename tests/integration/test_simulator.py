"""The simulator over real HTTP: routes, schemas, auth, quotas, logprobs, faults, billing."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.conftest import SimulatorProcess
from workers import TokenCounter

pytestmark = pytest.mark.integration

KEY = {"Authorization": "Bearer k"}
MESSAGES = [{"role": "system", "content": "Translate."}, {"role": "user", "content": "The cat sleeps on the mat."}]


def post(sim: SimulatorProcess, path: str, body: dict[str, object],
         headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(sim.url + path, json=body, headers={**KEY, **(headers or {})}, timeout=30)


class TestRoutes:
    """Both routes and /info, with the schemas the real deployments enforce."""

    def test_native_route_bills_with_the_tokenizer(self, simulator: Callable[..., SimulatorProcess]) -> None:
        sim = simulator("--model", "mistral-nemo", "--latency", "0")
        answer = post(sim, "/v1/chat/completions", {"model": "mistral-nemo", "messages": MESSAGES,
                                                      "max_tokens": 50, "random_seed": 1, "safe_prompt": False})
        assert answer.status_code == 200
        usage = answer.json()["usage"]
        assert usage["prompt_tokens"] == TokenCounter("mistral-nemo").prompt_tokens(MESSAGES)
        assert 0 < usage["completion_tokens"] <= 50
        assert int(answer.headers["x-ratelimit-remaining-requests"]) >= 0
        stats = sim.stats()
        assert stats["billed_prompt_tokens"] == usage["prompt_tokens"]
        assert stats["billed_completion_tokens"] == usage["completion_tokens"]

    def test_max_tokens_cuts_with_length(self, simulator: Callable[..., SimulatorProcess]) -> None:
        sim = simulator("--latency", "0")
        answer = post(sim, "/v1/chat/completions", {"model": "m", "messages": MESSAGES, "max_tokens": 3}).json()
        assert answer["choices"][0]["finish_reason"] == "length"
        assert answer["usage"]["completion_tokens"] == 3

    def test_native_route_rejects_unknown_fields(self, simulator: Callable[..., SimulatorProcess]) -> None:
        sim = simulator("--logprobs", "reject")
        answer = post(sim, "/v1/chat/completions", {"model": "m", "messages": MESSAGES, "seed": 1, "logprobs": True})
        assert answer.status_code == 422
        locs = [d["loc"][-1] for d in answer.json()["message"]["detail"]]
        assert locs == ["logprobs", "seed"]

    def test_inference_route_needs_pass_through_for_extras(self, simulator: Callable[..., SimulatorProcess]) -> None:
        sim = simulator("--latency", "0")
        path = "/chat/completions?api-version=2024-05-01-preview"
        body = {"messages": MESSAGES, "max_tokens": 5, "safe_prompt": True, "seed": 3, "stop": ["\n"]}
        assert post(sim, path, body).status_code == 400
        assert post(sim, path, body, {"extra-parameters": "pass-through"}).status_code == 200
        assert post(sim, path, {**body, "stop": "\n"}, {"extra-parameters": "pass-through"}).status_code == 422
        assert post(sim, "/chat/completions", {"messages": MESSAGES}).status_code == 400

    def test_info_and_auth(self, simulator: Callable[..., SimulatorProcess]) -> None:
        sim = simulator("--api-key", "right", "--model", "mistral-small")
        auth = {"Authorization": "Bearer right"}
        assert httpx.get(sim.url + "/info?api-version=2024-05-01-preview", headers=auth).json()["model_name"] == \
            "mistral-small"
        assert httpx.get(sim.url + "/info", headers=auth).status_code == 400  # its api-version is required
        denied = post(sim, "/v1/chat/completions", {"model": "m", "messages": MESSAGES})
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "Unauthorized"

    @pytest.mark.parametrize(("mode", "key"), [("openai", "content"), ("legacy", "token_logprobs")])
    def test_logprobs_shapes(self, simulator: Callable[..., SimulatorProcess], mode: str, key: str) -> None:
        sim = simulator("--logprobs", mode, "--latency", "0")
        body = {"model": "m", "messages": MESSAGES, "max_tokens": 8, "logprobs": True, "top_logprobs": 2}
        choice = post(sim, "/v1/chat/completions", body).json()["choices"][0]
        assert key in choice["logprobs"]


class TestQuotaAndFaults:
    """429s with the headers clients rely on; faults at the configured rates."""

    def test_window_full_gives_429_with_retry_after(self, simulator: Callable[..., SimulatorProcess]) -> None:
        sim = simulator("--requests-per-minute", "12", "--window", "10", "--latency", "0")  # 2 per window
        body = {"model": "m", "messages": MESSAGES, "max_tokens": 5}
        codes = [post(sim, "/v1/chat/completions", body) for _ in range(3)]
        assert [c.status_code for c in codes] == [200, 200, 429]
        limited = codes[2]
        assert 0 < int(limited.headers["retry-after-ms"]) <= 10_000
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["x-ratelimit-remaining-requests"] == "0"
        assert sim.stats()["peak_window_requests"] == 2

    def test_faults_and_filter_marker(self, simulator: Callable[..., SimulatorProcess]) -> None:
        sim = simulator("--faults", "server_error=1.0", "--latency", "0")
        assert post(sim, "/v1/chat/completions", {"model": "m", "messages": MESSAGES}).status_code in (500, 502, 503)
        clean = simulator("--latency", "0")
        flagged = [{"role": "user", "content": "[[filter]] something"}]
        answer = post(clean, "/v1/chat/completions", {"model": "m", "messages": flagged})
        assert answer.status_code == 400
        body = answer.json()
        assert (body.get("error") or body)["code"] == "content_filter"

    def test_reset_drops_the_connection(self, simulator: Callable[..., SimulatorProcess]) -> None:
        sim = simulator("--faults", "reset=1.0", "--latency", "0")
        with pytest.raises(httpx.HTTPError):
            post(sim, "/v1/chat/completions", {"model": "m", "messages": MESSAGES})
        assert sim.stats()["resets"] == 1


class TestModels:
    """The simulator serves every catalog model with its own tokenizer, and any other name with one given."""

    def test_large_2411_bills_with_v7(self, simulator: Callable[..., SimulatorProcess]) -> None:
        sim = simulator("--model", "Mistral-Large-2411", "--latency", "0")
        usage = post(sim, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 5}).json()["usage"]
        assert TokenCounter("mistral-large-2411").model.tokenizer == "v7"
        assert usage["prompt_tokens"] == TokenCounter("mistral-large-2411").prompt_tokens(MESSAGES)

    def test_any_model_with_a_tokenizer(self, simulator: Callable[..., SimulatorProcess]) -> None:
        sim = simulator("--model", "mistral-small-2503", "--tokenizer", "v1", "--latency", "0")
        usage = post(sim, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 5}).json()["usage"]
        assert usage["prompt_tokens"] == TokenCounter("mistral-7b").prompt_tokens(MESSAGES)
        assert httpx.get(sim.url + "/info?api-version=2024-05-01-preview", headers=KEY).json()["model_name"] == \
        "mistral-small-2503"

    def test_an_unknown_model_without_a_tokenizer_does_not_start(self,
                                                                 simulator: Callable[..., SimulatorProcess]) -> None:
        with pytest.raises(RuntimeError, match=r"unknown model 'mistral-small-2503'.*mistral-large-2411"):
            simulator("--model", "mistral-small-2503")
