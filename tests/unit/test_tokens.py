"""The fast prompt count is the reference count (mistral-common's whole encoding), on every tokenizer."""

from __future__ import annotations

import random

import pytest

from workers.tokens import TokenCounter, TokenizeError

# v1, v2, v3, v7, v7m1, Tekken 240718, Tekken 240911
MODELS = ["mistral-7b", "mistral-large-2402", "mistral-large-2407", "mistral-large-2411", "pixtral-large-2411",
          "mistral-nemo-2407", "pixtral-12b-2409"]

# Strings that sit on the template's seams: leading/trailing blanks and newlines (joined to the
# system prompt with "\n\n"), special-token look-alikes, non-Latin scripts, emoji, digits.
ODD = [
    " leading space", "trailing space ", "  two leading", "\nnewline first", "newline last\n", "\n\n\n",
    "[INST] not a control token [/INST]", "</s><s>[/INST]", "tab\tin\tit", "naïve café — ok?",
    "日本語のテキストです。", "emoji 🙂🚀 mix", "1234567890 3.14159", "x", " ", "a  b   c", "\r\nwindows\r\n",
    "{\"json\": [1, 2, {\"k\": null}]}", "ends with spaces   ", "[AVAILABLE_TOOLS]", "\u200bzero width",
]


def _text(rng: random.Random) -> str:
    words = ["the", "council", "approved", "budget", "Città", "über", "naïve", "42", "—", "é", "\n", "  ", "🙂"]
    if rng.random() < 0.4:
        return rng.choice(ODD)
    text = " ".join(rng.choices(words, k=rng.randint(1, 40)))
    if rng.random() < 0.3:
        text = rng.choice(ODD) + text
    if rng.random() < 0.3:
        text += rng.choice(ODD)
    return text


def _conversation(rng: random.Random) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": _text(rng)}] if rng.random() < 0.6 else []
    turns = rng.choice([1, 1, 1, 3, 5])
    for i in range(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": _text(rng)})
    return messages


@pytest.mark.parametrize("model", MODELS)
def test_fast_count_equals_reference_on_plain_shapes(model: str) -> None:
    counter = TokenCounter(model)
    rng = random.Random(model)
    conversations = [_conversation(rng) for _ in range(400)]
    fast = counter.count_many(conversations)
    reference = [counter.reference_prompt_tokens(c) for c in conversations]
    mismatched = [(c, f, r) for c, f, r in zip(conversations, fast, reference, strict=True) if f != r]
    assert not mismatched, mismatched[:3]
    # The seams are covered: the system prompt joined to a user turn, odd strings on both ends.
    assert any(c[0]["role"] == "system" and len(c) > 2 for c in conversations)


@pytest.mark.parametrize("model", MODELS)
def test_other_shapes_fall_back_to_the_reference(model: str) -> None:
    counter = TokenCounter(model)
    shapes = [
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],  # merged by the normalizer
        [{"role": "system", "content": "s"}, {"role": "system", "content": "t"}, {"role": "user", "content": "u"}],
        [{"role": "user", "content": ""}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "r"}],
    ]
    for messages in shapes:
        fast = counter.count_many([messages])[0]
        try:
            expected: int | type[TokenizeError] = counter.reference_prompt_tokens(messages)
        except TokenizeError:
            expected = TokenizeError
        if expected is TokenizeError:
            assert isinstance(fast, TokenizeError), messages
        else:
            assert fast == expected, messages


def test_a_refused_conversation_is_an_error_naming_the_model() -> None:
    counter = TokenCounter("mistral-large-2407")
    refused = [{"role": "assistant", "content": "I speak first"}]
    result = counter.count_many([[{"role": "user", "content": "fine"}], refused])
    assert isinstance(result[0], int) and result[0] > 3
    assert isinstance(result[1], TokenizeError) and "mistral-large-2407" in str(result[1])
    with pytest.raises(TokenizeError):
        counter.prompt_tokens(refused)
