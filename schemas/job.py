"""The job file: what to read, where to write, which deployment to call and how.

Every model of the file is frozen and forbids unknown keys (``schemas.frozen``), so a typo
in a job file is an error that names the key instead of a setting silently ignored. The
deployments are described in ``schemas.endpoint``, the prompt template and sampling
parameters in ``schemas.params``, the reading of the YAML in ``schemas.job_file``; this
module is the whole job, ``JobSpec``. ``parse_job`` turns YAML text into a ``JobSpec`` and
pydantic's errors into one ``JobFileError`` whose lines each name the offending key by its
dotted path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import date
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from schemas.dates import placeholders, resolve
from schemas.endpoint import AZURE_INFERENCE_API_VERSION, EndpointSpec, ModelSpec, PriceOverride, normalized_url
from schemas.frozen import Frozen
from schemas.job_file import MAX_JOB_NODES, JobFileError, load_job_mapping
from schemas.models import ModelInfo, Price, canonical_name, model_info, unknown_model_message
from schemas.params import DEFAULT_MAX_TOKENS, Params, PromptSpec
from schemas.response import ResponseSpec

__all__ = [
    "AZURE_INFERENCE_API_VERSION",
    "DEFAULT_MAX_TOKENS",
    "MAX_JOB_NODES",
    "EndpointSpec",
    "JobFileError",
    "JobSpec",
    "ModelSpec",
    "Params",
    "PriceOverride",
    "PromptSpec",
    "job_from_dict",
    "normalized_url",
    "parse_job",
]


class JobSpec(Frozen):
    """A validated job file."""

    input: str
    output: str
    endpoint: EndpointSpec | None = None
    endpoints: tuple[EndpointSpec, ...] | None = None
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    params: Params = Field(default_factory=Params)
    budget_usd: float | None = Field(None, gt=0)
    prices: dict[str, PriceOverride] = {}
    #: A model the catalog does not know, for the endpoints that name it.
    model: ModelSpec | None = None
    #: A labeling job's expected answer: schema, mode, re-asks (``schemas.response``).
    response: ResponseSpec | None = None
    #: Identical requests (same messages and parameters) are sent once, the answer fanned out
    #: (``duplicate_of``); unset: on for labeling jobs (``response``), off otherwise.
    dedupe: bool | None = None
    shard_rows: int = Field(5_000, gt=0)
    max_attempts: int = Field(6, ge=1, le=20)
    stop_grace_s: float = Field(20.0, ge=0, le=600)

    @field_validator("input", "output")
    @classmethod
    def _known_placeholders(cls, value: str) -> str:
        placeholders(value)  # raises, naming the one it does not know
        return value

    @field_validator("endpoints")
    @classmethod
    def _distinct_deployments(cls, value: tuple[EndpointSpec, ...] | None) -> tuple[EndpointSpec, ...] | None:
        # The same deployment listed twice would have its quota counted twice: 429s, and an estimate
        # twice too fast.
        seen: dict[str, int] = {}
        for i, endpoint in enumerate(value or ()):
            key = normalized_url(endpoint.url)
            if key in seen:
                raise ValueError(f"`endpoints[{seen[key]}]` and `endpoints[{i}]` are the same deployment "
                                 f"({key}): list each deployment once")
            seen[key] = i
        return value

    @model_validator(mode="after")
    def _one_endpoint_form(self) -> JobSpec:
        if (self.endpoint is None) == (self.endpoints is None):
            raise ValueError("give exactly one of `endpoint` or `endpoints`")
        if self.endpoints is not None and not self.endpoints:
            raise ValueError("`endpoints` is empty")
        return self

    @model_validator(mode="after")
    def _params_fit_each_route(self) -> JobSpec:
        """The Azure AI Model Inference contract caps temperature and top_p at 1 and wants a non-empty ``stop``."""
        if any(e.api == "azure-inference" for e in self.all_endpoints):
            p = self.params
            if p.temperature is not None and p.temperature > 1:
                raise ValueError(f"`params.temperature` {p.temperature:g} is above 1, the most the azure-inference "
                                 "route accepts (the mistral route takes up to 1.5)")
            if p.stop is not None and not p.stop:
                raise ValueError("`params.stop` is empty: the azure-inference route wants at least one stop string")
        if any(e.api == "mistral" for e in self.all_endpoints):
            for name in ("presence_penalty", "frequency_penalty"):
                if getattr(self.params, name) is not None:
                    raise ValueError(f"`params.{name}` is not a field of the mistral route in Mistral's published "
                                     "contract (it refuses unknown fields): use api: azure-inference, or drop it")
        return self

    @model_validator(mode="after")
    def _response_fits_each_route(self) -> JobSpec:
        if self.response is None:
            return self
        if self.params.response_format is not None:
            raise ValueError("`params.response_format` and `response` both say how to answer: keep `response` "
                             "(its `mode` sets response_format)")
        if self.response.mode == "json_schema" and any(e.api == "mistral" for e in self.all_endpoints):
            raise ValueError("`response.mode` json_schema is not in the mistral route's published contract "
                             "(response_format types text and json_object only): use tool, json_object or auto, "
                             "or api: azure-inference")
        return self

    @model_validator(mode="after")
    def _models_known(self) -> JobSpec:
        # Checked here, not per endpoint: the job's own `model:` block may be what names it.
        for i, endpoint in enumerate(self.all_endpoints):
            try:
                self._info(endpoint.model, endpoint)
            except KeyError:
                where = "endpoint.model" if self.endpoint is not None else f"endpoints.{i}.model"
                raise ValueError(f"`{where}`: {unknown_model_message(endpoint.model)}") from None
        named = {canonical_name(e.model) for e in self.all_endpoints}
        for name in self.prices:
            try:
                self._info(name)
            except KeyError:
                if canonical_name(name) not in named:  # a model only an endpoint's own block describes
                    raise ValueError(f"`prices.{name}`: {unknown_model_message(name)}") from None
        return self

    def _info(self, name: str, endpoint: EndpointSpec | None = None) -> ModelInfo:
        """A model by name: the endpoint's own block, the job's `model:` block, else the catalog."""
        for block in (endpoint.model_spec if endpoint is not None else None, self.model):
            if block is not None and canonical_name(block.name) == canonical_name(name):
                return block.info()
        return model_info(name)

    def _names(self, name: str, info: ModelInfo, endpoint: EndpointSpec | None = None) -> bool:
        """Whether ``name`` (a key of ``prices:``) is ``info``'s model under another of its names."""
        try:
            return self._info(name, endpoint).name == info.name
        except KeyError:
            return False

    def model_for(self, endpoint: EndpointSpec) -> ModelInfo:
        """The model ``endpoint`` serves, with the job's price override applied."""
        info = self._info(endpoint.model, endpoint)
        for name, override in self.prices.items():
            if canonical_name(name) == canonical_name(endpoint.model) or self._names(name, info, endpoint):
                return dataclasses.replace(info, price=Price(override.input_per_mtok, override.output_per_mtok),
                                           price_as_of=None)
        return info

    def prices_as_of(self) -> str:
        """The oldest built-in price the job uses (ISO date), or ``"job"`` when the job gives every one."""
        dates = [d for d in (self.model_for(e).price_as_of for e in self.all_endpoints) if d is not None]
        return min(dates).isoformat() if dates else "job"

    @property
    def dedupes(self) -> bool:
        """Whether identical requests are sent once (``dedupe``, by default on for labeling jobs)."""
        return self.dedupe if self.dedupe is not None else self.response is not None

    @property
    def all_endpoints(self) -> tuple[EndpointSpec, ...]:
        """The job's deployments, whichever form the file used."""
        return (self.endpoint,) if self.endpoint is not None else tuple(self.endpoints or ())

    def price(self, model: str) -> Price:
        """The price of ``model``: the job's override, else its `model:` block's, else the built-in table."""
        endpoint = next((e for e in self.all_endpoints if canonical_name(e.model) == canonical_name(model)), None)
        if endpoint is not None:
            return self.model_for(endpoint).price
        info = self._info(model)
        for name, override in self.prices.items():
            if self._names(name, info):
                return Price(override.input_per_mtok, override.output_per_mtok)
        return info.price

    def with_overrides(
        self, *, input: str | None = None, output: str | None = None, endpoint_url: str | None = None
    ) -> JobSpec:
        """A copy with the CLI's ``--input``, ``--output`` and ``--endpoint-url`` applied."""
        update: dict[str, Any] = {}
        for flag, value in (("--input", input), ("--output", output)):
            if value:
                try:
                    placeholders(value)
                except ValueError as exc:
                    raise JobFileError(f"{flag}: {exc}") from None
                update[flag.removeprefix("--")] = value
        if endpoint_url:
            if self.endpoint is None:
                raise JobFileError("--endpoint-url needs a job with a single `endpoint`")
            update["endpoint"] = self.endpoint.model_copy(update={"url": endpoint_url.rstrip("/")})
        return self.model_copy(update=update)

    @property
    def dated(self) -> bool:
        """Whether ``input`` or ``output`` names the run's date (``{date}``)."""
        return bool(placeholders(self.input) or placeholders(self.output))

    def on_date(self, day: date) -> JobSpec:
        """A copy with the placeholders of ``input`` and ``output`` filled in from ``day``."""
        return self.model_copy(update={"input": resolve(self.input, day), "output": resolve(self.output, day)})

    def job_hash(self) -> str:
        """A digest of everything that changes what a row's completion is.

        Input and output locations, budget and quotas are left out: moving a job or
        raising its budget does not change its results.
        """
        material: dict[str, Any] = {
            "prompt": self.prompt.model_dump(),
            "params": self.params.model_dump(),
            "models": sorted({self.model_for(e).name for e in self.all_endpoints}),
        }
        if self.response is not None:  # only when set: the hashes of jobs without one stay as they were
            material["response"] = self.response.model_dump(by_alias=True)
        blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def parse_job(text: str, source: str = "job file") -> JobSpec:
    """Parse and validate YAML job text; raise ``JobFileError`` naming every bad key.

    A key given twice in a mapping is an error, and so is a file whose aliases expand past
    ``MAX_JOB_NODES`` nodes.
    """
    return job_from_dict(load_job_mapping(text, source), source)


def job_from_dict(data: dict[str, Any], source: str = "job") -> JobSpec:
    """Validate an already-parsed job mapping."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobFileError(f"{source}: " + "; ".join(_describe(e) for e in exc.errors())) from None


def _describe(error: Any) -> str:
    # An endpoint's `model:` mapping is kept as `model_spec`: name the key the file has.
    path = ".".join("model" if p == "model_spec" else str(p) for p in error["loc"]) or "(top level)"
    if not error["loc"] and error["msg"].startswith("Value error, `"):  # the message names its key
        return error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"unknown key `{path}`"
    if error["type"] == "missing":
        return f"missing key `{path}`"
    message = error["msg"].removeprefix("Value error, ")
    return f"`{path}`: {message}"
