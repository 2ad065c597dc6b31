"""The requests our client builds, checked against the routes' published OpenAPI contracts.

Prism (``@stoplight/prism-cli``, npm) serves each contract in ``/work/shared/contracts/`` as a mock,
offline, and validates every request against it: a request the contract allows gets the mock's 2xx,
one it does not gets 422 with the violations in the ``sl-violations`` header. Prism is run in its
default mode, not with ``--errors``: that flag also validates Prism's own mock answers, and turns a
valid chat request on the Mistral contract into a 500 ("Response body must have required property
'data'") and an invalid one on the Azure contract into a 500 (the contract's 422 example misses
``error.details.0.code``), so valid and invalid could no longer be told apart.

Prism cannot check one rule of the Azure AI Model Inference contract: a body field
``ChatCompletionsOptions`` does not declare is refused by the service unless the request carries
``extra-parameters: pass-through`` (``error`` is the service default). The test checks that rule itself,
from the contract's declared properties.

Install Prism with the command in ``PRISM_INSTALL`` (from the repo root).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import httpx
import pytest

from schemas import EndpointSpec, Params, ResponseSpec
from schemas.response import with_instruction
from tests.conftest import ROOT, free_port, wait_for_port
from workers.client import EndpointClient
from workers.labels import reask_messages

pytestmark = pytest.mark.integration

PRISM = ROOT / ".prism" / "node_modules" / ".bin" / "prism"
PRISM_INSTALL = "npm install --no-save --no-audit --no-fund --prefix .prism @stoplight/prism-cli@5.14.2"
# The contracts live in the shared folder beside the repository (laid there for developers and CI).
CONTRACTS = ROOT.parent / "shared" / "contracts"
CONTRACT = {
    "mistral": CONTRACTS / "mistral-openapi-2024-08.yaml",
    "azure-inference": CONTRACTS / "azure-ai-inference-2024-05-01-preview.json",
}
MODEL = "mistral-large-2407"
KEY = "k"
MESSAGES = [{"role": "system", "content": "Translate to French."}, {"role": "user", "content": "The cat sleeps."}]
CONVERSATION = [*MESSAGES, {"role": "assistant", "content": "Le chat dort."}, {"role": "user", "content": "And?"}]


def azure_declared_fields() -> frozenset[str]:
    """The body fields ``ChatCompletionsOptions`` declares; any other needs ``extra-parameters: pass-through``."""
    contract = json.loads(CONTRACT["azure-inference"].read_text())
    return frozenset(contract["definitions"]["ChatCompletionsOptions"]["properties"])


AZURE_DECLARED = azure_declared_fields()


@pytest.fixture(scope="module")
def prism() -> Iterator[dict[str, str]]:
    """Prism mocking both contracts, started together; yields each route's base URL by ``api``."""
    if not PRISM.exists():
        pytest.fail(f"Prism is not installed at {PRISM}: run `{PRISM_INSTALL}` from the repo root (see README)")
    started: list[tuple[subprocess.Popen[bytes], IO[bytes], int]] = []
    urls: dict[str, str] = {}
    try:
        for api, contract in CONTRACT.items():
            port = free_port()
            output: IO[bytes] = tempfile.TemporaryFile()
            proc = subprocess.Popen([str(PRISM), "mock", str(contract), "--host", "127.0.0.1", "--port", str(port)],
                                    stdout=output, stderr=subprocess.STDOUT, cwd=ROOT)
            started.append((proc, output, port))
            urls[api] = f"http://127.0.0.1:{port}"
        for proc, log, port in started:
            try:
                wait_for_port(port, 60, proc)
            except RuntimeError as exc:
                log.seek(0)
                pytest.fail(f"Prism did not start: {exc}\n{log.read()[-2000:].decode(errors='replace')}")
        yield urls
    finally:
        for proc, log, _ in started:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def spec(api: str, url: str = "http://127.0.0.1:1", **kwargs: Any) -> EndpointSpec:
    return EndpointSpec(url=url, model=MODEL, api=api, **kwargs)  # type: ignore[arg-type]


def build(api: str, params: Params, messages: list[dict[str, str]] = MESSAGES,
          *, logprobs_accepted: bool = True) -> tuple[dict[str, Any], dict[str, str]]:
    """The body and extra headers the project's own client builds for this route."""
    client = EndpointClient(spec(api), KEY, transport=httpx.MockTransport(lambda request: httpx.Response(500)))
    client.logprobs_accepted = logprobs_accepted
    return client.request_body(messages, params)


def path(api: str) -> str:
    """The chat route as the client addresses it (``EndpointClient`` builds the same)."""
    return "/v1/chat/completions" if api == "mistral" else f"/chat/completions?api-version={spec(api).api_version}"


def send(base: str, api: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    return httpx.post(base + path(api), json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}", "Accept": "application/json", **headers})


def request_violations(response: httpx.Response) -> list[str]:
    """Prism's complaints about the request (its complaints about its own mock answer are left out)."""
    raw = response.headers.get("sl-violations")
    found: list[dict[str, Any]] = json.loads(raw) if raw else []
    return [v["message"] for v in found if v.get("location", [None])[0] == "request" and v.get("severity") == "Error"]


def missing_pass_through(api: str, body: dict[str, Any], headers: dict[str, str]) -> list[str]:
    """Undeclared Azure body fields sent without ``extra-parameters: pass-through`` (the service refuses them)."""
    if api != "azure-inference" or headers.get("extra-parameters") == "pass-through":
        return []
    return sorted(set(body) - AZURE_DECLARED)


# Params combinations a job may set; each must yield a body the route's contract accepts.
COMMON: list[tuple[str, Params, list[dict[str, str]]]] = [
    ("defaults", Params(), MESSAGES),
    ("conversation", Params(max_tokens=32), CONVERSATION),
    ("sampling", Params(max_tokens=64, temperature=0.3, top_p=0.9, seed=7, stop=["\n\n", "END"]), MESSAGES),
    ("stop-string", Params(stop="\n"), MESSAGES),  # Params turns it into a one-item list
    ("json-mode", Params(response_format={"type": "json_object"}), MESSAGES),
    ("safe-prompt", Params(safe_prompt=True), MESSAGES),
    ("safe-prompt-off", Params(safe_prompt=False, seed=0), MESSAGES),
]
VALID: list[tuple[str, str, Params, list[dict[str, str]]]] = [
    *[("mistral", name, params, messages) for name, params, messages in COMMON],
    ("mistral", "temperature-1.5", Params(temperature=1.5), MESSAGES),  # the Mistral route's ceiling
    *[("azure-inference", name, params, messages) for name, params, messages in COMMON],
    # Mistral's 2024-08 contract does not declare presence_penalty / frequency_penalty (its
    # ChatCompletionRequest has additionalProperties: false; Prism: "Request body must NOT have
    # additional properties; found 'presence_penalty'"): the client sends them on the Azure route only,
    # which declares both (-2..2); see test_penalties_are_refused_before_the_mistral_route.
    ("azure-inference", "penalties", Params(presence_penalty=0.5, frequency_penalty=-0.5), MESSAGES),
    # logprobs/top_logprobs are not declared by the Azure contract: Prism lets them through
    # (additionalProperties: {}), but the service wants `extra-parameters: pass-through` for them. Left out
    # for the mistral route: its contract refuses them (test_mistral_contract_refuses_logprobs).
    ("azure-inference", "logprobs", Params(logprobs=True, top_logprobs=3), MESSAGES),
    ("azure-inference", "logprobs-safe-prompt", Params(logprobs=True, top_logprobs=3, safe_prompt=True), MESSAGES),
]


@pytest.mark.parametrize(("api", "params", "messages"), [pytest.param(a, p, m, id=f"{a}-{n}") for a, n, p, m in VALID])
def test_client_bodies_are_valid(prism: dict[str, str], api: str, params: Params,
                                 messages: list[dict[str, str]]) -> None:
    body, headers = build(api, params, messages)
    response = send(prism[api], api, body, headers)
    assert response.is_success and not request_violations(response), (
        f"{api} contract refuses {body} (headers {headers}): {response.status_code} {request_violations(response)}")
    undeclared = missing_pass_through(api, body, headers)
    assert not undeclared, (f"azure-inference: {undeclared} are not declared by ChatCompletionsOptions and are sent "
                            f"without `extra-parameters: pass-through` (headers {headers}): the service refuses them")


@pytest.mark.parametrize("api", list(CONTRACT))
def test_contract_rejects_a_body_without_messages(prism: dict[str, str], api: str) -> None:
    """Prism does reject: the checks above can fail."""
    body, headers = build(api, Params())
    del body["messages"]
    response = send(prism[api], api, body, headers)
    assert response.status_code == 422
    assert any("'messages'" in v for v in request_violations(response)), request_violations(response)


def test_azure_contract_rejects_a_missing_api_version(prism: dict[str, str]) -> None:
    body, headers = build("azure-inference", Params())
    response = httpx.post(prism["azure-inference"] + "/chat/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {KEY}", **headers})
    assert response.status_code == 422
    assert any("api-version" in v for v in request_violations(response)), request_violations(response)


def test_mistral_contract_refuses_logprobs(prism: dict[str, str]) -> None:
    """The client's first try with logprobs is refused; the body it sends again without them passes.

    Prism: 422, "Request body must NOT have additional properties; found 'logprobs'" (and 'top_logprobs'), in
    ``sl-violations`` only: its 422 body is the contract's placeholder example (``{"detail": [{"loc":
    ["string"], "msg": "string", ...}]}``), which does not name the field, so against Prism the client's fallback
    (a 422 whose message names ``logprobs``) would not trigger; the real API names the field in ``detail``.
    """
    params = Params(logprobs=True, top_logprobs=3)
    body, headers = build("mistral", params)
    assert body["logprobs"] is True
    refused = send(prism["mistral"], "mistral", body, headers)
    assert refused.status_code == 422
    assert sorted(v.rsplit("found ", 1)[-1] for v in request_violations(refused)) == ["'logprobs'", "'top_logprobs'"]

    body, headers = build("mistral", params, logprobs_accepted=False)  # what complete() sends after the 422
    assert "logprobs" not in body and "top_logprobs" not in body
    again = send(prism["mistral"], "mistral", body, headers)
    assert again.is_success and not request_violations(again), request_violations(again)


async def probe(client: EndpointClient) -> bool:
    async with client:
        return await client.check_key()


def test_key_probe_is_valid_on_the_azure_contract(prism: dict[str, str]) -> None:
    """``check_key`` sends ``GET /info?api-version=…`` as the contract wants; without a version it is refused."""
    assert asyncio.run(probe(EndpointClient(spec("azure-inference", prism["azure-inference"]), KEY))) is True
    # An empty api-version breaks the contract (minLength 1): Prism answers 422, which the probe reads as False.
    assert asyncio.run(probe(EndpointClient(spec("azure-inference", prism["azure-inference"], api_version=""),
                                            KEY))) is False


def test_penalties_are_refused_before_the_mistral_route() -> None:
    """What the Mistral contract would refuse fails before it is sent: the job names the key, a row its row."""
    from schemas import JobFileError, job_from_dict
    from workers.errors import RowFailedError

    with pytest.raises(JobFileError, match="params.presence_penalty"):
        job_from_dict({"input": "p.jsonl", "output": "o", "params": {"presence_penalty": 0.5},
                       "endpoint": {"url": "http://x", "model": "mistral-large-2407"}})
    with pytest.raises(RowFailedError, match="frequency_penalty"):
        build("mistral", Params(frequency_penalty=0.1))


# A labeling job's structured-output modes (``workers.labels``): every body shape each route may get.
LABELS = ResponseSpec.model_validate({"schema": {
    "type": "object", "required": ["sentiment"], "additionalProperties": False,
    "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]},
                   "aspects": {"type": "array", "items": {"type": "string"}}}}})
LABEL_MESSAGES = list(with_instruction(tuple(MESSAGES), LABELS.instruction()))
REASKED = list(reask_messages(tuple(LABEL_MESSAGES), '{"sentiment": "meh"}', "sentiment: 'meh' is not one of"))
MODES = [("mistral", "tool"), ("mistral", "json_object"),
         ("azure-inference", "json_schema"), ("azure-inference", "tool"), ("azure-inference", "json_object")]


@pytest.mark.parametrize("reask", [False, True], ids=["first", "reask"])
@pytest.mark.parametrize(("api", "mode"), MODES, ids=[f"{a}-{m}" for a, m in MODES])
def test_structured_output_bodies_are_valid(prism: dict[str, str], api: str, mode: str, reask: bool) -> None:
    client = EndpointClient(spec(api), KEY, transport=httpx.MockTransport(lambda request: httpx.Response(500)),
                            response=LABELS.model_copy(update={"mode": mode}))
    body, headers = client.request_body(REASKED if reask else LABEL_MESSAGES, Params(max_tokens=32, temperature=0))
    assert ("tools" in body) == (mode == "tool") and ("response_format" in body) == (mode != "tool")
    response = send(prism[api], api, body, headers)
    assert response.is_success and not request_violations(response), (
        f"{api} contract refuses {mode}: {response.status_code} {request_violations(response)}")
    assert not missing_pass_through(api, body, headers)


def test_mistral_contract_refuses_json_schema(prism: dict[str, str]) -> None:
    """Why the mistral route never gets ``json_schema`` (a job asking for it there is refused, and ``auto``
    starts at ``tool``): its 2024-08 ``ResponseFormat`` knows ``text`` and ``json_object`` only."""
    client = EndpointClient(spec("mistral"), KEY, transport=httpx.MockTransport(lambda request: httpx.Response(500)),
                            response=LABELS.model_copy(update={"mode": "json_schema"}))
    body, headers = client.request_body(LABEL_MESSAGES, Params(max_tokens=32))
    refused = send(prism["mistral"], "mistral", body, headers)
    assert refused.status_code == 422 and request_violations(refused)
