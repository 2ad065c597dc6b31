"""The models promptbatch knows: tokenizer, context length and list price.

A model's tokenizer decides what the endpoint bills and what the quota is charged, so
a built-in entry exists only where mistral-common (1.13) maps the model to a tokenizer
it ships (``MODEL_NAME_TO_TOKENIZER_CLS``) — the counts are then the model's own. Any
other model is described by the job (``model:``, see ``schemas.endpoint.ModelSpec``): its
tokenizer is one of the shipped ones or a file, and unless the job says the file is
the model's own, its counts are *approximate* (``ModelInfo.exact`` is false).

Prices are USD per million tokens, input and output, with the day each figure was
last checked (``ModelInfo.price_as_of``): the Azure serverless price list for the
models Azure offers, Mistral's own list for those only its API serves. A job
overrides them with its ``prices:`` block; nothing here is fetched at run time.

Left out, because mistral-common neither maps them nor ships their tokenizer:
Ministral 3B (``ministral-3b-2410``), Mistral Small 3 / 3.1 (``mistral-small-2501``,
``-2503``: Tekken v7, not shipped), Codestral 25.01 (``codestral-2501``), Mistral
Medium 3 (``mistral-medium-2505``). Also left out: models mistral-common maps but
that are retired (``mistral-medium-2312``, ``mistral-tiny-*``, ``mistral-small-2312``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

#: The tokenizers mistral-common ships, by the names a job may give them.
TokenizerName = Literal["v1", "v2", "v3", "v7", "v7m1", "tekken", "tekken-240911"]
SHIPPED_TOKENIZERS: dict[str, str] = {
    "v1": "tokenizer.model.v1",
    "v2": "mistral_instruct_tokenizer_240216.model.v2",
    "v3": "mistral_instruct_tokenizer_240323.model.v3",
    "v7": "mistral_instruct_tokenizer_241114.model.v7",
    "v7m1": "mistral_instruct_tokenizer_241114.model.v7m1",
    "tekken": "tekken_240718.json",
    "tekken-240911": "tekken_240911.json",
}

#: The day the five original entries' prices were last checked against Azure's price list.
PRICES_AS_OF = dt.date(2026, 11, 23)
#: The day of Mistral's list the newer entries' prices come from (Large 24.11 and Pixtral Large
#: launched at these figures; Small 24.09, Codestral 24.05, Pixtral 12B as cut on 2024-09-17;
#: Ministral 8B as launched on 2024-10-16).
MISTRAL_LIST_AS_OF = dt.date(2024, 11, 18)

#: How far a tokenizer that is not the model's own may be off, either way: the estimate's
#: interval is widened by it, and admission charges prompts this much more until the
#: endpoint's ``usage`` has told it the real ratio. English prompts counted with another of
#: the v2 / v3 / v7 / Tekken tokenizers land within 3–5 % (tests/unit/test_models.py); v1,
#: whose ``[INST]`` markers are plain text, counts 8–20 % more than Tekken: describe a model
#: with the tokenizer of its own generation.
APPROXIMATE_SPREAD = 0.15


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
    """What promptbatch needs to know of one model.

    ``tokenizer`` is a name from ``SHIPPED_TOKENIZERS`` or a path to a tokenizer file;
    ``exact`` says whether it is the model's own (so counts are what the endpoint bills).
    ``price_as_of`` is ``None`` for a price the job gave.
    """

    name: str
    tokenizer: str
    context_tokens: int
    price: Price
    price_as_of: dt.date | None = PRICES_AS_OF
    exact: bool = True


_M = MISTRAL_LIST_AS_OF
# Mistral Large 2402 launched at $8/$24; the list price has since been cut to $4/$12.
_CATALOG: tuple[ModelInfo, ...] = (
    ModelInfo("mistral-large-2402", "v2", 32_768, Price(4.0, 12.0)),
    ModelInfo("mistral-large-2407", "v3", 131_072, Price(2.0, 6.0)),
    ModelInfo("mistral-large-2411", "v7", 131_072, Price(2.0, 6.0), _M),
    ModelInfo("mistral-small-2402", "v2", 32_768, Price(1.0, 3.0)),
    ModelInfo("mistral-small-2409", "tekken", 32_768, Price(0.2, 0.6), _M),
    ModelInfo("mistral-nemo-2407", "tekken", 131_072, Price(0.15, 0.15)),
    ModelInfo("ministral-8b-2410", "tekken", 131_072, Price(0.1, 0.1), _M),
    ModelInfo("codestral-2405", "v3", 32_768, Price(0.2, 0.6), _M),
    ModelInfo("pixtral-12b-2409", "tekken-240911", 131_072, Price(0.15, 0.15), _M),
    ModelInfo("pixtral-large-2411", "v7m1", 131_072, Price(2.0, 6.0), _M),
    ModelInfo("open-mixtral-8x22b-2404", "v3", 65_536, Price(2.0, 6.0), _M),
    ModelInfo("mistral-7b", "v1", 32_768, Price(0.25, 0.25)),
)

# Names deployments are seen under in the Azure catalog and in Mistral's own API (matched
# case-insensitively, so Azure's `Mistral-Large-2411` is `mistral-large-2411`).
_ALIASES: dict[str, str] = {
    "mistral-large": "mistral-large-2402",
    "mistral-large-2": "mistral-large-2407",
    "mistral-large-latest": "mistral-large-2411",
    "mistral-small": "mistral-small-2402",
    "mistral-small-latest": "mistral-small-2402",
    "mistral-nemo": "mistral-nemo-2407",
    "open-mistral-nemo": "mistral-nemo-2407",
    "open-mistral-nemo-2407": "mistral-nemo-2407",
    "ministral-8b": "ministral-8b-2410",
    "ministral-8b-latest": "ministral-8b-2410",
    "pixtral-12b": "pixtral-12b-2409",
    "pixtral-large-latest": "pixtral-large-2411",
    "open-mixtral-8x22b": "open-mixtral-8x22b-2404",
    "open-mistral-7b": "mistral-7b",
}

_BY_NAME = {m.name: m for m in _CATALOG}


class UnknownModelError(KeyError):
    """A model the catalog does not know; the message lists the known ones and how to add one."""

    def __str__(self) -> str:
        return str(self.args[0])


def known_models() -> list[str]:
    """Every model name the catalog answers to, canonical names first."""
    return [m.name for m in _CATALOG] + sorted(_ALIASES)


def canonical_name(name: str) -> str:
    """The catalog's name for ``name`` (an alias resolved, lower case), or ``name`` lowered."""
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def unknown_model_message(name: str) -> str:
    """Why ``name`` cannot be used, the models that can, and how to describe another one."""
    return (f"unknown model {name!r}; known: {', '.join(known_models())}. For another model, add a `model:` "
            f"block naming it, with its tokenizer (one of {', '.join(SHIPPED_TOKENIZERS)}, or a path to its "
            "tokenizer file), context_tokens and prices (README: Adding a model)")


def model_info(name: str) -> ModelInfo:
    """Look a model up by its canonical name or an alias (case-insensitive).

    Raises ``UnknownModelError`` naming the known models when the name is not in the catalog.
    """
    try:
        return _BY_NAME[canonical_name(name)]
    except KeyError:
        raise UnknownModelError(unknown_model_message(name)) from None
