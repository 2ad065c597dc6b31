"""The job file's deployments: where requests go, with which key and quota, to which model.

An endpoint names a model of the built-in catalog, or describes one the catalog does not
know (``ModelSpec``), with its tokenizer, context and prices (``PriceOverride``).
``normalized_url`` is the one spelling of a deployment's URL, by which two endpoints are
told to be the same deployment.
"""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from schemas.frozen import Frozen
from schemas.models import SHIPPED_TOKENIZERS, ModelInfo, Price

AZURE_INFERENCE_API_VERSION = "2024-05-01-preview"


class PriceOverride(Frozen):
    """USD per million tokens for one model, replacing the built-in price."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class ModelSpec(Frozen):
    """A model the built-in catalog does not know, described by the job.

    ``tokenizer`` is a tokenizer mistral-common ships (``v7``, ``tekken``, …) or a path to
    a tokenizer file (``tekken.json``, ``tokenizer.model.v3``…). Counts are taken to be
    approximate — the estimate widens its interval, admission learns the real ratio from
    the endpoint's ``usage`` — unless ``exact`` says the tokenizer is the model's own.
    """

    name: str = Field(min_length=1)
    tokenizer: str = Field(min_length=1)
    context_tokens: int = Field(gt=0)
    prices: PriceOverride
    exact: bool = False

    @field_validator("tokenizer")
    @classmethod
    def _shipped_or_file(cls, value: str) -> str:
        if value in SHIPPED_TOKENIZERS or os.path.isfile(value):
            return value
        raise ValueError(f"{value!r} is neither a tokenizer mistral-common ships "
                         f"({', '.join(SHIPPED_TOKENIZERS)}) nor a tokenizer file")

    def info(self) -> ModelInfo:
        """The model as the rest of promptbatch sees it."""
        price = Price(self.prices.input_per_mtok, self.prices.output_per_mtok)
        return ModelInfo(self.name.strip().lower(), self.tokenizer, self.context_tokens, price, price_as_of=None,
                         exact=self.exact)


class EndpointSpec(Frozen):
    """One serverless deployment: one model, one key, one quota.

    ``model`` is a model's name; in the job file it may also be a ``ModelSpec`` mapping
    (a model only this endpoint serves), which lands in ``model_spec``.
    """

    url: str
    api: Literal["mistral", "azure-inference"] = "mistral"
    model: str
    model_spec: ModelSpec | None = None
    api_key_env: str = "AZURE_MISTRAL_KEY"
    #: A Prefect Secret block holding the key, read at run time; when set, ``api_key_env`` is not used.
    api_key_secret: str | None = Field(None, min_length=1)
    tokens_per_minute: int = Field(200_000, gt=0)
    requests_per_minute: int = Field(1_000, gt=0)
    #: ``cap``: the quota above is the most ever sent (less when the deployment admits less);
    #: ``auto``: it is where learning starts, and the pool probes above it too.
    quota: Literal["cap", "auto"] = "cap"
    api_version: str = AZURE_INFERENCE_API_VERSION
    quota_window_s: float = Field(10.0, gt=0, le=60)
    #: Bounds the whole request, body included (not each read).
    timeout_s: float = Field(120.0, gt=0)
    #: The longest pause a ``retry-after`` is honoured for; a longer one is cut to this (and logged).
    max_retry_after_s: float = Field(300.0, ge=0)
    max_concurrency: int = Field(256, gt=0, le=4096)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="before")
    @classmethod
    def _model_mapping(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            block = data["model"]
            data = {**data, "model": block.get("name", ""), "model_spec": block}
        return data


def normalized_url(url: str) -> str:
    """A deployment's URL as one spelling: scheme and host lower-cased, default port and trailing ``/`` gone."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"
