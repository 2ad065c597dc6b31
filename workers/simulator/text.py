"""Made-up completions that can be traced back to their prompt.

Every completion starts with ``[<digest>]``, the digest of the conversation that asked
for it, so a test can check that each output row carries its own prompt's answer. Its
length follows the prompt's (a translation is about as long as its source), and is
cut at ``max_tokens`` with ``finish_reason: length`` like a real model.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workers.tokens import TokenCounter

_WORDS = (
    "il la di che e un una per non con sono come più anche questo tempo anno giorno mondo casa "
    "città lavoro parte storia notizia governo paese vita modo gruppo nuovo grande primo ultimo "
    "oggi domani sempre ancora dopo prima mentre secondo durante contro verso senza"
).split()


def prompt_digest(messages: Sequence[dict[str, Any]]) -> str:
    """Twelve hex digits identifying a conversation."""
    blob = json.dumps(list(messages), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class Fabricated:
    """A made-up answer and its exact token count."""

    text: str
    tokens: list[int]
    finish_reason: str


def fabricate(messages: Sequence[dict[str, Any]], max_tokens: int, counter: TokenCounter, seed: int = 0) -> Fabricated:
    """The deterministic answer to ``messages``, at most ``max_tokens`` tokens long."""
    digest = prompt_digest(messages)
    rng = random.Random(f"{seed}:{digest}")
    source_words = len(str(messages[-1].get("content", "")).split())
    n_words = max(4, int(source_words * rng.uniform(0.9, 1.3)))
    text = f"[{digest}] " + " ".join(rng.choices(_WORDS, k=n_words))
    tokens = counter.text_tokens(text)
    if len(tokens) <= max_tokens:
        return Fabricated(text, tokens, "stop")
    tokens = tokens[:max_tokens]
    return Fabricated(counter.decode(tokens), tokens, "length")


def fabricate_logprobs(fab: Fabricated, counter: TokenCounter, shape: str, top: int, seed: int = 0) -> dict[str, Any]:
    """Log-probabilities for each token of ``fab``, in the OpenAI chat or the legacy shape."""
    rng = random.Random(f"{seed}:{fab.text}")
    pieces = [counter.decode([t]) for t in fab.tokens]
    chosen = [-rng.random() * 2 for _ in pieces]
    alternatives = [
        [(word, lp - rng.random() * 3) for word in rng.sample(_WORDS, top)] for lp in chosen
    ]
    if shape == "legacy":
        offsets, at = [], 0
        for piece in pieces:
            offsets.append(at)
            at += len(piece)
        return {
            "text_offsets": offsets,
            "token_logprobs": chosen,
            "tokens": pieces,
            "top_logprobs": [dict(alts) for alts in alternatives],
        }
    return {
        "content": [
            {
                "token": piece,
                "logprob": lp,
                "bytes": list(piece.encode()),
                "top_logprobs": [{"token": t, "logprob": alp, "bytes": list(t.encode())} for t, alp in alts],
            }
            for piece, lp, alts in zip(pieces, chosen, alternatives, strict=True)
        ]
    }
