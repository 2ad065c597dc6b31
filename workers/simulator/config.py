"""What the simulated deployment does: model, key, quota, latency, logprobs, faults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from schemas import ModelInfo, Price, UnknownModelError, model_info
from workers.simulator.metering import Metering

LogprobsMode = Literal["openai", "legacy", "reject"]
FAULT_KINDS = ("server_error", "reset", "hang", "truncate", "filter", "filter_400")
#: What ``x-ratelimit-*`` headers say: the window's figures, the minute's, ``-1`` everywhere
#: (as some Foundry deployments answer), or nothing at all.
HeaderMode = Literal["window", "minute", "sentinel", "none"]
HEADER_MODES: tuple[HeaderMode, ...] = ("window", "minute", "sentinel", "none")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulated Azure serverless Mistral deployment.

    ``faults`` maps a kind from ``FAULT_KINDS`` to the share of admitted requests it
    hits (0.05 = 5%). A prompt containing ``[[filter]]`` is always refused by the
    content filter (as a 400), so tests can aim at it.

    ``model`` is any name; usage is billed with ``tokenizer`` (a shipped name or a
    file) when given, else with the catalog model's own — a model the catalog does not
    know needs one. ``context_tokens`` overrides the model's context (default 131,072
    for a model the catalog does not know).
    """

    model: str = "mistral-large-2407"
    tokenizer: str | None = None
    context_tokens: int | None = None
    api_key: str | None = None
    tokens_per_minute: int = 200_000
    requests_per_minute: int = 1_000
    window_s: float = 10.0
    latency_s: float = 0.05
    per_token_s: float = 0.0005
    logprobs: LogprobsMode = "openai"
    faults: dict[str, float] = field(default_factory=dict)
    hang_s: float = 600.0
    default_max_tokens: int = 8192
    seed: int = 0
    #: Accept the key for this many completion requests, then refuse it (a key revoked mid-job).
    revoke_after: int | None = None
    #: How the quota is metered (``workers.simulator.metering``).
    metering: Metering = "sliding"
    headers: HeaderMode = "window"
    #: Whether a 429 says how long to wait (``retry-after``, ``retry-after-ms``).
    retry_after: bool = True
    #: Another tenant of the deployment, using this share of its quota (0.3 = 30 %).
    foreign_share: float = 0.0
    #: The share of structured answers (JSON mode, json_schema, tool calls) that are not valid.
    invalid_answers: float = 0.0
    #: Refuse ``response_format: {type: json_schema}`` with 400, as Azure did for Mistral Large 2411.
    refuse_json_schema: bool = False

    def model_info(self) -> ModelInfo:
        """The model this deployment serves, and the tokenizer it bills with."""
        try:
            info = model_info(self.model)
        except UnknownModelError:
            if self.tokenizer is None:
                raise
            info = ModelInfo(self.model, self.tokenizer, self.context_tokens or 131_072, Price(0.0, 0.0), None)
        return dataclasses.replace(info, tokenizer=self.tokenizer or info.tokenizer,
                                   context_tokens=self.context_tokens or info.context_tokens)

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
        if sum(self.faults.values()) > 1:
            raise ValueError("fault rates add up to more than 1")
        if not 0 <= self.foreign_share < 1:
            raise ValueError("foreign_share must be at least 0 and below 1")
        if not 0 <= self.invalid_answers <= 1:
            raise ValueError("invalid_answers must be between 0 and 1")


def parse_faults(text: str) -> dict[str, float]:
    """``"server_error=0.05,reset=0.02"`` → ``{"server_error": 0.05, "reset": 0.02}``."""
    faults: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, rate = part.partition("=")
        try:
            faults[name.strip()] = float(rate)
        except ValueError:
            raise ValueError(f"fault {part!r}: expected NAME=RATE, e.g. server_error=0.05") from None
    return faults
