"""The models promptbatch knows: tokenizer, context length and list price.

Prices are USD per million tokens, input and output, as listed for Azure serverless
(pay-as-you-go) Mistral deployments on the date in ``PRICES_AS_OF``. A job overrides
them with its ``prices:`` block; nothing here is fetched at run time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

TokenizerName = Literal["v1", "v2", "v3", "tekken"]

#: The day the built-in price table below was last checked against the price list.
PRICES_AS_OF = dt.date(2026, 11, 23)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What a call with this usage costs, in USD."""
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What promptbatch needs to know of one model."""

    name: str
    tokenizer: TokenizerName
    context_tokens: int
    price: Price


# Mistral Large 2402 launched at $8/$24; the list price has since been cut to $4/$12.
_CATALOG: tuple[ModelInfo, ...] = (
    ModelInfo("mistral-large-2402", "v2", 32_768, Price(4.0, 12.0)),
    ModelInfo("mistral-large-2407", "v3", 131_072, Price(2.0, 6.0)),
    ModelInfo("mistral-small-2402", "v2", 32_768, Price(1.0, 3.0)),
    ModelInfo("mistral-nemo-2407", "tekken", 131_072, Price(0.15, 0.15)),
    ModelInfo("mistral-7b", "v1", 32_768, Price(0.25, 0.25)),
)

# Names deployments are seen under in the Azure catalog and in Mistral's own API.
_ALIASES: dict[str, str] = {
    "mistral-large": "mistral-large-2402",
    "mistral-large-2": "mistral-large-2407",
    "mistral-large-latest": "mistral-large-2407",
    "mistral-small": "mistral-small-2402",
    "mistral-small-latest": "mistral-small-2402",
    "mistral-nemo": "mistral-nemo-2407",
    "open-mistral-nemo": "mistral-nemo-2407",
    "open-mistral-7b": "mistral-7b",
}

_BY_NAME = {m.name: m for m in _CATALOG}


def known_models() -> list[str]:
    """Every model name the catalog answers to, canonical names first."""
    return [m.name for m in _CATALOG] + sorted(_ALIASES)


def model_info(name: str) -> ModelInfo:
    """Look a model up by its canonical name or an alias (case-insensitive).

    Raises ``KeyError`` naming the known models when the name is not in the catalog.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return _BY_NAME[key]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(known_models())}") from None
