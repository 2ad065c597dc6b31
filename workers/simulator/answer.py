"""The body of the simulated deployment's 200 answer: the message, its finish reason, logprobs and usage.

The message is the fabricated text (``workers.simulator.text``), or the structured answer the
request asked for (``workers.simulator.structured``), cut at ``max_tokens`` like any other; a
tool call carries it as the call's arguments. An answer the content filter cut has no content,
no logprobs and no completion tokens.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from workers.simulator import structured
from workers.simulator.text import Fabricated, fabricate_logprobs
from workers.tokens import TokenCounter

FILTERED = "content_filter"


def fitted(text: str, max_tokens: int, counter: TokenCounter) -> Fabricated:
    """``text`` as an answer, cut at ``max_tokens`` with ``finish_reason: length``."""
    tokens = counter.text_tokens(text)
    if len(tokens) <= max_tokens:
        return Fabricated(text, tokens, "stop")
    return Fabricated(counter.decode(tokens[:max_tokens]), tokens[:max_tokens], "length")


def message_and_finish(fab: Fabricated, want: structured.Wanted | None, finish: str) -> tuple[dict[str, Any], str]:
    """The assistant's message and the finish reason it is sent with (``tool_calls`` for a whole call)."""
    content = fab.text if finish != FILTERED else ""
    if want is None or want.mode != "tool" or finish == FILTERED:
        return {"role": "assistant", "content": content}, finish
    message = {"role": "assistant", "content": "", "tool_calls": [{
        "id": uuid.uuid4().hex[:9], "type": "function",
        "function": {"name": want.name, "arguments": fab.text}}]}
    return message, "tool_calls" if finish == "stop" else finish


def logprobs_for(fab: Fabricated, counter: TokenCounter, body: dict[str, Any], mode: str) -> dict[str, Any] | None:
    """The answer's logprobs in the deployment's shape, when the request asked for them."""
    if not body.get("logprobs"):
        return None
    shape = "legacy" if mode == "legacy" else "openai"
    return fabricate_logprobs(fab, counter, shape, int(body.get("top_logprobs") or 0))


def chat_completion(model: str, choice: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """A ``chat.completion`` object with one choice and its usage."""
    return {
        "id": uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def completion_payload(fab: Fabricated, want: structured.Wanted | None, finish: str, body: dict[str, Any],
                       counter: TokenCounter, model: str, logprobs_mode: str,
                       prompt_tokens: int) -> tuple[dict[str, Any], int]:
    """The answer's JSON object and the completion tokens it bills."""
    message, finish = message_and_finish(fab, want, finish)
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
    if finish != FILTERED and (logprobs := logprobs_for(fab, counter, body, logprobs_mode)) is not None:
        choice["logprobs"] = logprobs
    completion_tokens = len(fab.tokens) if finish != FILTERED else 0
    return chat_completion(model, choice, prompt_tokens, completion_tokens), completion_tokens
