"""Token counts of texts as sums of their words' counts, each word encoded once.

Prompt sets repeat their words endlessly, and both tokenizer families used by the
Mistral models can be cut at spaces without changing a single token — under
conditions checked here per text (and per vocabulary for SentencePiece). A text
that does not meet them is encoded whole, so every count is the tokenizer's own.

**SentencePiece (v1, v2, v3).** The text is escaped (each space becomes ``▁``) and
given a leading ``▁``; Mistral's models ship with identity normalization (no
NFKC, no collapsing of spaces — the tests compare with whole encodings on texts
that would show either). BPE merges only into
pieces of the vocabulary, and these vocabularies have no piece in which a ``▁``
follows another character (only runs of ``▁`` alone): so no merge ever spans a
``▁`` that follows a non-``▁`` character, and the encoding is the concatenation
of the encodings of the stretches between such places. For a text with single
spaces between non-blank words, no leading or trailing space, and no ``▁`` before
a space, those stretches are ``▁word`` for each space-separated word — and the
tokens of ``▁word`` are exactly what encoding ``word`` alone gives (the leading
``▁`` is the dummy prefix). So ``len(encode(text)) == sum(len(encode(w)) for w in
text.split(" "))``.

**Tekken (tiktoken).** BPE runs inside each piece that the pre-tokenizing pattern
cuts. In that pattern a space is either a piece's first character or part of a
piece made only of whitespace; so wherever a space follows a non-whitespace
character, a piece starts at that space, and matching from there depends on
nothing before it (the pattern has no look-behind; its look-ahead ``(?!\\S)`` sees
a space or the end either way). For a text in which no space follows whitespace,
``len(encode(text)) == len(encode(first)) + sum(len(encode(" " + w)) for w in rest)``.
Python's ``\\s`` (``str.isspace``) covers every character of Unicode's
``White_Space``, which the pattern's ``\\s`` means, so the check errs only towards
encoding whole.

Each cache holds at most twice ``limit`` words (two generations, see ``_Lengths``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import islice

#: Words per generation of a cache (~100 bytes each; two generations).
DEFAULT_LIMIT = 1 << 18

_SPACE_AFTER_BLANK = re.compile(r"\s ")


class _Lengths(dict[str, int]):
    """word → token count, filled on first sight.

    Two generations keep it bounded and keep what is in use: when this one holds
    ``limit`` words it becomes the old one and a new one starts; a word found only
    in the old one is moved back in, so frequent words stay and rare ones age out.
    """

    def __init__(self, count: Callable[[str], int], limit: int):
        super().__init__()
        self._count = count
        self._limit = limit
        self._old: dict[str, int] = {}
        self.misses = 0

    def __missing__(self, word: str) -> int:
        length = self._old.get(word)
        if length is None:
            self.misses += 1
            length = self._count(word)
        if len(self) >= self._limit:
            self._old = {}  # the oldest generation goes before this one is copied: two at most
            self._old = dict(self)
            self.clear()
        self[word] = length
        return length

    def size(self) -> int:
        return len(self) + len(self._old)


class _WordCounts:
    """What both kinds share: the tokenizer's own encoding, the word cache and its figures."""

    def __init__(self, encode: Callable[[str], list[int]], word: Callable[[str], int], limit: int):
        self._encode = encode
        self._words = _Lengths(word, limit)
        #: Texts encoded whole (they could not be split).
        self.whole = 0

    def size(self) -> int:
        """Words cached."""
        return self._words.size()

    def misses(self) -> int:
        """Words encoded (not found in the cache)."""
        return self._words.misses

    def _encoded_whole(self, text: str) -> int:
        self.whole += 1
        return len(self._encode(text))


class SentencePieceWords(_WordCounts):
    """Token counts with a SentencePiece processor, by words where that is exact."""

    def __init__(self, encode: Callable[[str], list[int]], pieces: list[str], limit: int = DEFAULT_LIMIT):
        super().__init__(encode, lambda word: len(encode(word)), limit)
        # A piece with "▁" after another character would merge across a word's start: then never split.
        self.splittable = not any(_joins_words(piece) for piece in pieces)

    def length(self, text: str) -> int:
        if (self.splittable and "  " not in text and "▁ " not in text
                and not text.startswith(" ") and not text.endswith(" ")):
            return sum(map(self._words.__getitem__, text.split(" ")))
        return self._encoded_whole(text)


def _joins_words(piece: str) -> bool:
    return any(c == "▁" and piece[i - 1] != "▁" for i, c in enumerate(piece) if i)


class TekkenWords(_WordCounts):
    """Token counts with a tiktoken encoding, by words where that is exact."""

    def __init__(self, encode: Callable[[str], list[int]], limit: int = DEFAULT_LIMIT):
        # Cached: each word with the space before it, as the pattern cuts it.
        super().__init__(encode, lambda word: len(encode(" " + word)), limit)

    def length(self, text: str) -> int:
        if _SPACE_AFTER_BLANK.search(text):
            return self._encoded_whole(text)
        words = text.split(" ")
        # The first word has no space before it: encoded as it is, one per text, not cached.
        return len(self._encode(words[0])) + sum(map(self._words.__getitem__, islice(words, 1, None)))
