"""Counting by cached words gives the tokenizer's own count, on every tokenizer, seams and all."""

from __future__ import annotations

import random

import pytest

from workers.tokens import tokenizer, words
from workers.wordcache import SentencePieceWords, TekkenWords

# Pieces that sit on the splitting rules: runs of spaces, "▁" typed in the text, other blanks,
# combining marks, full-width letters, digits and punctuation glued to words.
SOUP = ["a", "b", "the", " ", "  ", "\n", "\t", "▁", " ▁", "▁ ", "é", "e\u0301", "ｆ", "\u3000", "\u00a0", "\u2028",
        "\x1c", "1", "23", ".", ",", "'s", " '", "🙂", "日本", "\r\n", "Città"]


def _native(name: str) -> object:
    return tokenizer(name).instruct_tokenizer.tokenizer._model  # type: ignore[attr-defined]


def _whole(name: str, text: str) -> int:
    native = _native(name)
    return len(native.encode_ordinary(text) if name == "tekken" else native.encode(text))  # type: ignore[attr-defined]


class TestWordCounts:
    """Sum of words' counts versus the whole text's encoding."""

    @pytest.mark.parametrize("name", ["v1", "v2", "v3", "tekken"])
    def test_equal_to_whole_encoding(self, name: str) -> None:
        rng = random.Random(name)
        texts = ["".join(rng.choices(SOUP, k=rng.randint(0, 30))) for _ in range(5_000)]
        plain = ["council", "budget", "Rain", "42,000", "naïve", "—"]
        texts += [" ".join(rng.choices(plain, k=40)) for _ in range(200)]
        counts = words(name)  # type: ignore[arg-type]
        wrong = [t for t in texts if counts.length(t) != _whole(name, t)]
        assert not wrong, wrong[:5]

    @pytest.mark.parametrize("name", ["v1", "v2", "v3", "tekken"])
    def test_plain_text_is_split_and_odd_text_encoded_whole(self, name: str) -> None:
        native = _native(name)
        if name == "tekken":
            counts: SentencePieceWords | TekkenWords = TekkenWords(native.encode_ordinary)  # type: ignore[attr-defined]
        else:
            counts = SentencePieceWords(native.encode, [native.id_to_piece(i)  # type: ignore[attr-defined]
                                                        for i in range(native.get_piece_size())])  # type: ignore[attr-defined]
            assert counts.splittable  # these vocabularies never merge across a word's start
        counts.length("council the budget the")
        assert counts.whole == 0 and counts.misses() == (2 if name == "tekken" else 3)  # the second "the" was cached
        counts.length("the  council")
        assert counts.whole == 1


class TestSplittingRules:
    """When splitting would not be exact, the text is encoded whole."""

    def test_a_vocabulary_that_merges_across_words_is_never_split(self) -> None:
        encoded: list[str] = []

        def encode(text: str) -> list[int]:
            encoded.append(text)
            return [0] * len(text)

        counts = SentencePieceWords(encode, ["▁a", "b", "a▁b"])
        assert not counts.splittable
        assert counts.length("a b") == 3 and encoded == ["a b"]

    def test_the_cache_stays_bounded_and_keeps_the_words_in_use(self) -> None:
        counts = SentencePieceWords(lambda text: [0] * len(text), ["▁a"], limit=2)
        assert counts.length("aa bbb aa cccc") == 2 + 3 + 2 + 4
        assert counts.misses() == 3 and counts.size() <= 4
        assert counts.length("aa dd ee ff gg") == 10  # "aa" came back from the old generation, not counted again
        assert counts.misses() == 7 and counts.size() <= 4
        assert counts.length("ff gg") == 4 and counts.misses() == 7
