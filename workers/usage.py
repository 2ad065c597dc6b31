"""An answer's token usage, checked before it is believed: it is what the output bills and the budget counts.

Endpoints and mocks send usage that cannot be right: none at all (the row would cost $0 and
slip past ``budget_usd``), negative or fractional figures (refused in ``workers.answers``),
or more tokens than the request could have produced. So:

- a missing figure is counted with the model's own tokenizer — the prompt as admitted,
  the completion from its text — and the row is flagged ``usage_estimated``;
- a figure larger than the request allows (prompt beyond ``PROMPT_MARGIN`` × the counted
  prompt + ``PROMPT_SLACK``, completion beyond ``max_tokens`` + ``COMPLETION_SLACK``) makes
  the answer unreadable: a ``TransportError``, retried like a garbled body, then an error row.

The margins leave room for what an endpoint legitimately adds (``safe_prompt``'s guard
prompt, an end-of-sequence token), not for a bill a thousand times the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.client import Completion
from workers.errors import TransportError
from workers.tokens import TokenCounter

PROMPT_MARGIN = 1.25
PROMPT_SLACK = 256
COMPLETION_SLACK = 16


@dataclass(frozen=True, slots=True)
class Usage:
    """The tokens a row is billed for, and whether we counted them ourselves."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False


def checked_usage(completion: Completion, prompt_tokens: int, max_tokens: int, counter: TokenCounter) -> Usage:
    """The answer's usage, missing figures counted; ``TransportError`` if it is beyond the request."""
    estimated = False
    billed_prompt = completion.prompt_tokens
    if billed_prompt is None:
        billed_prompt, estimated = prompt_tokens, True
    billed_completion = completion.completion_tokens
    if billed_completion is None:
        billed_completion, estimated = len(counter.text_tokens(completion.content or "")), True
    if billed_prompt > prompt_tokens * PROMPT_MARGIN + PROMPT_SLACK:
        raise TransportError(f"unreadable answer: usage.prompt_tokens {billed_prompt:,} for a prompt of "
                             f"{prompt_tokens:,} tokens")
    if billed_completion > max_tokens + COMPLETION_SLACK:
        raise TransportError(f"unreadable answer: usage.completion_tokens {billed_completion:,} with max_tokens "
                             f"{max_tokens:,}")
    return Usage(billed_prompt, billed_completion, estimated)
