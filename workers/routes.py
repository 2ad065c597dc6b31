"""What each route of a serverless Mistral deployment accepts, and the request built for it.

Two routes reach a deployment and they differ in what they accept:

- ``mistral``: ``POST /v1/chat/completions``, Mistral's own schema. Unknown fields are
  rejected with 422, so only its known fields are ever sent; the seed is ``random_seed``.
- ``azure-inference``: ``POST /chat/completions?api-version=...``, the Azure AI Model
  Inference schema. The seed is ``seed``, ``stop`` is a list, and non-standard fields
  (``safe_prompt``, ``logprobs``) need the header ``extra-parameters: pass-through``.

A labeling job's structured-output mode adds its own fields (``workers.labels.Modes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas import EndpointSpec, Params
from workers.errors import RowFailedError
from workers.labels import Modes


def chat_path(spec: EndpointSpec) -> str:
    """The path, and query, that the route's chat completions are posted to."""
    if spec.api == "azure-inference":
        return f"/chat/completions?api-version={spec.api_version}"
    return "/v1/chat/completions"


def request_body(spec: EndpointSpec, messages: Sequence[dict[str, str]], params: Params, *, logprobs: bool,
                 modes: Modes | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON body and extra headers for this route: only fields the route knows.

    ``logprobs``: whether the endpoint still takes them; ``modes``: a labeling job's modes still open to it.
    """
    body: dict[str, Any] = {"model": spec.model, "messages": list(messages), "max_tokens": params.max_tokens}
    for name in ("temperature", "top_p", "stop", "response_format", "presence_penalty", "frequency_penalty"):
        value = getattr(params, name)
        if value is None:
            continue
        if spec.api == "mistral" and name.endswith("_penalty"):
            # Mistral's published contract (2024-08) declares no penalties and refuses unknown fields.
            raise RowFailedError(f"`params.{name}` is not a field of the mistral route (use api: azure-inference)")
        body[name] = value
    headers: dict[str, str] = {}
    if params.seed is not None:
        body["random_seed" if spec.api == "mistral" else "seed"] = params.seed
    if params.safe_prompt is not None:
        body["safe_prompt"] = params.safe_prompt
        if spec.api == "azure-inference":
            headers["extra-parameters"] = "pass-through"
    if params.logprobs and logprobs:
        body["logprobs"] = True
        if params.top_logprobs is not None:
            body["top_logprobs"] = params.top_logprobs
        if spec.api == "azure-inference":  # not declared by the inference API: an extra parameter
            headers["extra-parameters"] = "pass-through"
    if modes is not None:
        body.update(modes.body_fields())
    return body, headers
