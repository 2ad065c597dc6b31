"""Exact prompt-token counts with the model's own tokenizer (mistral-common).

The endpoint bills prompt tokens as its tokenizer counts them, chat template included,
and the quota is charged the same way, so admission and estimates use the same count.
Tokenizers ship inside mistral-common, or come from a file the job names: nothing is downloaded.

Two ways to the same number:

- ``reference_prompt_tokens`` builds mistral-common's request and encodes it whole
  (``encode_chat_completion``): validation, normalization, the template, and a decode
  of the result it keeps for debugging. Exact for any conversation, but ~1,000–1,600
  prompts a second on one core. The simulator bills with it, as the endpoint would.
- ``prompt_tokens`` / ``count_many`` handle the shapes prompt sets are made of — an
  optional system message, then user and assistant turns in alternation ending with a
  user turn, every content non-empty — by raw-encoding exactly the strings the
  template encodes (the system prompt joined to the last user turn for v2/v3/Tekken,
  to the first for v1, apart between ``[SYSTEM_PROMPT]`` tokens for v7; ``[INST] … [/INST]``
  as text for v1) and adding the template's special tokens (BOS, ``[INST]``/``[/INST]``
  pairs, EOS after each assistant turn). Templates of other versions (a tokenizer file
  of a newer model) are always counted the reference way.
  Nothing is approximated: the strings are the template's strings, so the counts are
  the reference's counts (``tests/unit/test_tokens.py`` checks them against each
  other on every shipped tokenizer, odd whitespace and special-token look-alikes
  included). Every other shape goes to the reference path, errors and all.
  The strings are counted word by word through a per-process cache of each word's
  tokens (``workers.wordcache``, which says why that is exact and encodes whole
  any text where it would not be).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mistral_common
from mistral_common.protocol.instruct.messages import (
    AssistantMessage,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.validator import ValidationMode
from mistral_common.tokens.tokenizers.base import TokenizerVersion
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

from schemas import SHIPPED_TOKENIZERS, ModelInfo, model_info
from workers.wordcache import SentencePieceWords, TekkenWords

_MESSAGE_TYPES = {
    "system": SystemMessage,
    "user": UserMessage,
    "assistant": AssistantMessage,
    "tool": ToolMessage,
}


class TokenizeError(ValueError):
    """The model's chat template does not accept this conversation."""


class TokenizerFileError(ValueError):
    """A tokenizer named by the job cannot be loaded."""


#: Template versions whose plain shapes ``TokenCounter._plan`` knows; others are counted the reference way.
_PLANNED = {TokenizerVersion.v1, TokenizerVersion.v2, TokenizerVersion.v3, TokenizerVersion.v7}


@functools.cache
def words(name: str) -> SentencePieceWords | TekkenWords:
    """Word-cached token counts of raw texts with that tokenizer, one cache per process."""
    raw = tokenizer(name).instruct_tokenizer.tokenizer
    native: Any = raw._model  # type: ignore[attr-defined]
    if isinstance(raw, Tekkenizer):
        # No special tokens inside the tiktoken encoding: `encode_ordinary` is `encode` minus its checks.
        return TekkenWords(native.encode_ordinary if not native.special_tokens_set else native.encode)
    return SentencePieceWords(native.encode, [native.id_to_piece(i) for i in range(native.get_piece_size())])


@functools.cache
def tokenizer(name: str) -> MistralTokenizer:
    """A tokenizer mistral-common ships (``SHIPPED_TOKENIZERS``) or one from a file, loaded once per process."""
    shipped = SHIPPED_TOKENIZERS.get(name)
    path = Path(mistral_common.__file__).parent / "data" / shipped if shipped else Path(name)
    try:
        return MistralTokenizer.from_file(str(path), mode=ValidationMode.test)
    except Exception as exc:  # mistral-common raises several types for a file it cannot read
        raise TokenizerFileError(f"cannot load tokenizer {name!r}: {exc}") from exc


class TokenCounter:
    """Counts what one model will bill for a conversation and for a completion text."""

    def __init__(self, model: str | ModelInfo):
        self.model = model if isinstance(model, ModelInfo) else model_info(model)
        self._tokenizer = tokenizer(self.model.tokenizer)
        self._raw = self._tokenizer.instruct_tokenizer.tokenizer
        version = self._raw.version
        self._planned = version in _PLANNED
        self._v1 = version == TokenizerVersion.v1
        self._v7 = version == TokenizerVersion.v7
        self._words = words(self.model.tokenizer)

    @property
    def exact(self) -> bool:
        """Whether the counts are the model's own (its tokenizer), not an approximation."""
        return self.model.exact

    def _lengths(self, texts: Sequence[str]) -> list[int]:
        length = self._words.length
        return [length(text) for text in texts]

    def reference_prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        """Tokens of the encoded chat request as mistral-common builds it: any conversation, slowly."""
        try:
            request: ChatCompletionRequest[Any] = ChatCompletionRequest(
                messages=[_MESSAGE_TYPES[m["role"]](content=m["content"]) for m in messages]
            )
            return len(self._tokenizer.encode_chat_completion(request).tokens)
        except Exception as exc:  # mistral-common raises several validation types
            raise TokenizeError(f"the {self.model.name} chat template refuses it: {exc}") from exc

    def prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        """Tokens of the encoded chat request, template and special tokens included."""
        result = self.count_many([messages])[0]
        if isinstance(result, TokenizeError):
            raise result
        return result

    def count_many(self, conversations: Sequence[Sequence[dict[str, str]]]) -> list[int | TokenizeError]:
        """``prompt_tokens`` of each conversation, a batch at a time; a refused one comes as its error."""
        results: list[int | TokenizeError] = [0] * len(conversations)
        texts: list[str] = []
        owners: list[int] = []
        for i, messages in enumerate(conversations):
            plan = self._plan(messages)
            if plan is None:
                try:
                    results[i] = self.reference_prompt_tokens(messages)
                except TokenizeError as exc:
                    results[i] = exc
                continue
            special, strings = plan
            results[i] = special
            texts.extend(strings)
            owners.extend([i] * len(strings))
        for owner, length in zip(owners, self._lengths(texts) if texts else (), strict=True):
            results[owner] += length  # type: ignore[operator]
        return results

    def _plan(self, messages: Sequence[dict[str, str]]) -> tuple[int, list[str]] | None:
        """The template's special-token count and the strings it raw-encodes, for the plain shapes.

        ``None`` for any other shape: the caller counts it the reference way.
        """
        if not self._planned:
            return None
        start = 1 if messages and messages[0].get("role") == "system" else 0
        turns = messages[start:]
        if not turns or len(turns) % 2 == 0:
            return None
        for i, message in enumerate(messages):
            content = message.get("content")
            if not isinstance(content, str) or not content:
                return None
            expected = "system" if i < start else ("user" if (i - start) % 2 == 0 else "assistant")
            if message.get("role") != expected:
                return None
        system = messages[0]["content"] if start else None
        last = len(turns) - 1
        strings: list[str] = []
        special = 1  # BOS
        if self._v7 and system:  # v7 keeps the system prompt apart: [SYSTEM_PROMPT] … [/SYSTEM_PROMPT]
            strings.append(system)
            special += 2
            system = None
        for i, message in enumerate(turns):
            content = message["content"]
            if i % 2:  # assistant turn: its text, then EOS
                strings.append(content if self._v1 else content.rstrip(" "))
                special += 1
                continue
            if self._v1:  # [INST] is plain text; the system prompt joins the first user turn
                if i == 0 and system:
                    content = f"{system}\n\n{content}"
                strings.append(f"[INST] {content} [/INST]")
            else:  # [INST] and [/INST] are control tokens; the system prompt joins the last user turn
                strings.append(f"{system}\n\n{content}" if i == last and system else content)
                special += 2
        return special, strings

    def text_tokens(self, text: str) -> list[int]:
        """Raw token ids of a text, no template or special tokens."""
        return self._raw.encode(text, bos=False, eos=False)

    def decode(self, tokens: list[int]) -> str:
        """Text of raw token ids."""
        return self._raw.decode(tokens)
