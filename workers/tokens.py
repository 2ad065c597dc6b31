"""Exact prompt-token counts with the model's own tokenizer (mistral-common).

The endpoint bills prompt tokens as its tokenizer counts them, chat template included,
and the quota is charged the same way, so admission and estimates use the same count.
Tokenizers ship inside mistral-common: nothing is downloaded.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from mistral_common.protocol.instruct.messages import (
    AssistantMessage,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from schemas import TokenizerName, model_info

_MESSAGE_TYPES = {
    "system": SystemMessage,
    "user": UserMessage,
    "assistant": AssistantMessage,
    "tool": ToolMessage,
}


class TokenizeError(ValueError):
    """The model's chat template does not accept this conversation."""


@functools.cache
def tokenizer(name: TokenizerName) -> MistralTokenizer:
    """The mistral-common tokenizer of that version, loaded once per process."""
    if name == "tekken":
        return MistralTokenizer.v3(is_tekken=True)
    return {"v1": MistralTokenizer.v1, "v2": MistralTokenizer.v2, "v3": MistralTokenizer.v3}[name]()


class TokenCounter:
    """Counts what one model will bill for a conversation and for a completion text."""

    def __init__(self, model: str):
        self.model = model_info(model)
        self._tokenizer = tokenizer(self.model.tokenizer)
        self._raw = self._tokenizer.instruct_tokenizer.tokenizer

    def prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        """Tokens of the encoded chat request, template and special tokens included."""
        try:
            request: ChatCompletionRequest[Any] = ChatCompletionRequest(
                messages=[_MESSAGE_TYPES[m["role"]](content=m["content"]) for m in messages]
            )
            return len(self._tokenizer.encode_chat_completion(request).tokens)
        except Exception as exc:  # mistral-common raises several validation types
            raise TokenizeError(f"the {self.model.name} chat template refuses it: {exc}") from exc

    def text_tokens(self, text: str) -> list[int]:
        """Raw token ids of a text, no template or special tokens."""
        return self._raw.encode(text, bos=False, eos=False)

    def decode(self, tokens: list[int]) -> str:
        """Text of raw token ids."""
        return self._raw.decode(tokens)
