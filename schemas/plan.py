"""A row planned for sending: what it will charge and may cost, or why it will not be sent.

The run's engine and the estimate plan rows with the same rules, so that what the estimate
says will not be sent is what the run refuses. Planning is pure: the prompt is counted by
the caller (with the model's tokenizer), and the quota charge comes in as a function of
the counted prompt (a deployment whose tokenizer is not known scales it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from schemas.models import Price
from schemas.rows import BadRowError, PromptRow

#: The prefix of a refused row's ``error`` column.
BAD_INPUT = "bad input: "


class RefusalKind(StrEnum):
    """Why a row is not sent."""

    #: The row could not be read or built (a missing field, a wrong type, an untokenizable prompt).
    BAD_INPUT = "bad_input"
    #: Its prompt and ``max_tokens`` do not fit the model's context.
    OVER_CONTEXT = "over_context"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A row that will not be sent, and what to tell the user (naming the row and the field)."""

    kind: RefusalKind
    #: What is wrong, without the row's place.
    reason: str
    #: The row and the field (``"a.jsonl line 3: field `messages`"``); empty when ``reason`` names them.
    where: str = ""

    @property
    def detail(self) -> str:
        """The row, the field and what is wrong with it."""
        return f"{self.where}: {self.reason}" if self.where else self.reason

    @property
    def error(self) -> str:
        """The output's ``error`` column for the row."""
        return BAD_INPUT + self.detail


@dataclass(frozen=True, slots=True)
class Planned:
    """A row ready for admission: its counted prompt, its quota charge, its worst-case price."""

    row: PromptRow
    #: The prompt's tokens as counted here (``charge`` may scale them).
    prompt_tokens: int
    #: What the quota is charged at admission: the prompt as the endpoint will count it plus ``max_tokens``.
    charge: int
    #: The row's cost if it writes every token it may (what the budget holds while it is in flight).
    worst_usd: float


def over_context(where: str, prompt_tokens: int, max_tokens: int, context_tokens: int, model: str) -> Refusal | None:
    """The refusal of a request too long for the model's context, or ``None`` when it fits."""
    if prompt_tokens + max_tokens <= context_tokens:
        return None
    return Refusal(RefusalKind.OVER_CONTEXT, f"prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} "
                                             f"exceeds the {context_tokens}-token context of {model}", where)


def unreadable(row: BadRowError) -> Refusal:
    """The refusal of a row that could not be built from its input."""
    return Refusal(RefusalKind.BAD_INPUT, str(row))


def untokenizable(row: PromptRow, reason: str) -> Refusal:
    """The refusal of a row whose messages the model's chat template does not accept."""
    return Refusal(RefusalKind.BAD_INPUT, reason, f"{row.where}: field `messages`")


def plan_counted(row: PromptRow, prompt_tokens: int, *, context_tokens: int, model: str,
                 charge: Callable[[int], int], price: Price | None) -> Planned | Refusal:
    """Plan a row whose prompt was counted: refused when over the context, else charged and priced."""
    max_tokens = row.params.max_tokens
    refused = over_context(row.where, prompt_tokens, max_tokens, context_tokens, model)
    if refused is not None:
        return refused
    billed = charge(prompt_tokens)
    worst = price.cost(billed, max_tokens) if price is not None else 0.0
    return Planned(row, prompt_tokens, billed + max_tokens, worst)
