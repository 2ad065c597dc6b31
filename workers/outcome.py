"""What became of one input row: the engine's result, and the output record made from it.

An ``Outcome`` is final and frozen: its status, the answer, the tokens the endpoint billed
and their cost (priced once, where the row was sent). ``Draft`` is the same row while the
engine still works on it (attempts, re-asks); ``Draft.finish`` prices it and freezes it.
``Outcome.columns`` is the one place a result becomes the output's columns: the journal,
the parts and a later run's resume all read those.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas import STATUSES, Price, Status
from schemas.plan import Refusal
from workers.completion import Completion


@dataclass(frozen=True, slots=True)
class Outcome:
    """The final result of one input row."""

    seq: int
    row_id: str | None
    status: Status
    passthrough: dict[str, Any] = field(default_factory=dict)
    completion: Completion | None = None
    model: str | None = None
    attempts: int = 0
    latency_ms: float | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: The request's digest (``PromptRow.digest``); ``None`` for a row that could not be built.
    digest: str | None = None
    #: The endpoint sent no usage: the tokens were counted with the model's tokenizer.
    usage_estimated: bool = False
    #: The deployment (its URL) the row was sent to; ``None`` for a row never sent.
    endpoint: str | None = None
    #: What the row's requests cost, in USD (every attempt and re-ask the endpoint billed).
    cost_usd: float = 0.0
    #: Why the row was not sent, when it was refused before sending.
    refusal: Refusal | None = None

    @classmethod
    def refused(cls, seq: int, row_id: str | None, refusal: Refusal, digest: str | None = None,
                passthrough: Mapping[str, Any] | None = None, model: str | None = None) -> Outcome:
        """A row that is not sent: an ``error`` row naming why."""
        return cls(seq, row_id, Status.ERROR, dict(passthrough or {}), model=model, error=refusal.error,
                   digest=digest, refusal=refusal)

    def columns(self) -> dict[str, Any]:
        """The row's output columns (``OUTPUT_SCHEMA``, in its order); passthrough columns are not among them."""
        c = self.completion
        return {
            "id": self.row_id,
            "status": self.status,
            "completion": c.content if c else None,
            "finish_reason": c.finish_reason if c else None,
            "logprobs": c.logprobs if c else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cost_usd": self.cost_usd,
            "model": self.model,
            "response_id": c.response_id if c else None,
            "latency_ms": self.latency_ms,
            "attempts": self.attempts,
            "error": self.error,
            "request_digest": self.digest,
            "usage_estimated": self.usage_estimated,
            "duplicate_of": None,
        }

    def record(self) -> dict[str, Any]:
        """The output row: our columns, then the passed-through ones."""
        return {**self.columns(), **self.passthrough}



@dataclass(slots=True)
class Draft:
    """A row the engine is working on: what its requests have come to so far."""

    seq: int
    row_id: str | None
    passthrough: dict[str, Any]
    model: str
    digest: str
    endpoint: str
    status: Status = Status.ERROR
    completion: Completion | None = None
    attempts: int = 0
    latency_ms: float | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False
    #: Tokens billed by requests before the current one (an invalid answer asked again).
    earlier_prompt_tokens: int = 0
    earlier_completion_tokens: int = 0

    def finish(self, price: Price | None) -> Outcome:
        """The row's final result, its tokens priced once."""
        prompt = self.earlier_prompt_tokens + self.prompt_tokens
        completion = self.earlier_completion_tokens + self.completion_tokens
        return Outcome(self.seq, self.row_id, self.status, self.passthrough, self.completion, self.model,
                       self.attempts, self.latency_ms, self.error, prompt, completion, self.digest,
                       self.usage_estimated, self.endpoint,
                       price.cost(prompt, completion) if price is not None else 0.0)


@dataclass
class Tally:
    """Running totals, for progress lines."""

    rows: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, outcome: Outcome) -> None:
        """Count one finished row."""
        self.rows += 1
        self.by_status[outcome.status] += 1
        self.prompt_tokens += outcome.prompt_tokens
        self.completion_tokens += outcome.completion_tokens
