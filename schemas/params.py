"""What a request carries besides the row: the conversation template and the sampling parameters.

Rows without ``messages`` become a conversation through ``PromptSpec``; ``Params`` are the
job's sampling parameters, which a row's own ``params`` may override.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from schemas.frozen import Frozen

DEFAULT_MAX_TOKENS = 1024


class PromptSpec(Frozen):
    """How rows without ``messages`` become a conversation."""

    system: str | None = None
    template: str | None = None


class Params(Frozen):
    """Sampling parameters, sent on whichever route the endpoint speaks.

    ``logprobs`` asks for token log-probabilities where the endpoint accepts them;
    ``seed`` is sent as ``random_seed`` on the Mistral route and ``seed`` on the Azure one.
    """

    max_tokens: int = Field(DEFAULT_MAX_TOKENS, gt=0)
    temperature: float | None = Field(None, ge=0, le=1.5)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: list[str] | None = None
    seed: int | None = Field(None, ge=0)
    response_format: dict[str, Any] | None = None
    safe_prompt: bool | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value
