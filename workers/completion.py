"""A successful answer, as the rest of the engine sees it: what the output row and the quota ledger need.

The client reads it from a 200 (``workers.answers.parse_completion``); the pool, the usage
checks and a labeling job's answer reading (``workers.labels``) take it from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_FILTERED = frozenset({"content_filter", "content_filter_error"})


@dataclass(frozen=True, slots=True)
class Completion:
    """A successful answer, reduced to what the output and the quota ledger need."""

    response_id: str | None
    model: str | None
    content: str | None
    finish_reason: str | None
    #: As the endpoint reported them; ``None`` where its answer had no usage (``workers.usage`` counts them).
    prompt_tokens: int | None
    completion_tokens: int | None
    logprobs: list[dict[str, Any]] | None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None
    #: The arguments of the first tool call, as JSON text (a labeling job's ``tool`` mode answers there).
    tool_arguments: str | None = None

    @property
    def filtered(self) -> bool:
        """The content filter cut the answer."""
        return self.finish_reason in _FILTERED
