"""The built-in catalog agrees with mistral-common's own model-to-tokenizer mapping."""

from __future__ import annotations

import warnings

import pytest
from mistral_common.tokens.tokenizers.mistral import MODEL_NAME_TO_TOKENIZER_CLS

from schemas import APPROXIMATE_SPREAD, SHIPPED_TOKENIZERS, known_models, model_info
from workers.tokens import TokenCounter, tokenizer

TEXT = ("the council approved the budget after a long debate and heavy rain is expected across the north "
        "while the museum will reopen next month researchers found that regular walks improve sleep")


class TestCatalog:
    """Every built-in model is counted with the tokenizer mistral-common maps it to."""

    @pytest.mark.parametrize("name", [n for n in known_models() if model_info(n).name in MODEL_NAME_TO_TOKENIZER_CLS])
    def test_tokenizer_is_the_mapped_one(self, name: str) -> None:
        info = model_info(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mapped = MODEL_NAME_TO_TOKENIZER_CLS[info.name]()
        ours = tokenizer(info.tokenizer).instruct_tokenizer.tokenizer
        theirs = mapped.instruct_tokenizer.tokenizer
        assert (type(ours), ours.version, ours.n_words) == (type(theirs), theirs.version, theirs.n_words)
        assert ours.encode(TEXT, bos=True, eos=False) == theirs.encode(TEXT, bos=True, eos=False)

    def test_unmapped_builtins_are_the_original_five(self) -> None:
        # mistral-common's mapping lacks these names; their tokenizers are the ones PRODUCT.md gives.
        assert {model_info(n).name for n in known_models()} - set(MODEL_NAME_TO_TOKENIZER_CLS) == {
            "mistral-nemo-2407", "mistral-7b"}

    @pytest.mark.parametrize("name", list(SHIPPED_TOKENIZERS))
    def test_every_shipped_tokenizer_loads(self, name: str) -> None:
        assert tokenizer(name).instruct_tokenizer.tokenizer.n_words > 0


class TestSpread:
    """Another tokenizer of the v2 – Tekken generations counts English prompts within the spread allowed."""

    def test_related_tokenizers_stay_within_the_spread(self) -> None:
        messages = [{"role": "system", "content": "You translate English news into Italian."},
                    {"role": "user", "content": TEXT}]
        counts = {m: TokenCounter(m).prompt_tokens(messages) for m in
                  ("mistral-large-2402", "mistral-large-2407", "mistral-large-2411", "mistral-nemo")}
        assert max(counts.values()) / min(counts.values()) - 1 <= APPROXIMATE_SPREAD, counts
