"""A lane whose tokenizer is not the model's own charges prompts as the endpoint bills them."""

from __future__ import annotations

import pytest

from workers.calibration import PromptScale


class TestPromptScale:
    """Billed over counted prompt tokens, with a margin; the prior until enough answers came back."""

    def test_prior_before_any_answer(self) -> None:
        scale = PromptScale(prior=1.15)
        assert scale.ratio is None and scale.charge(100) == 115

    def test_warmup_never_charges_below_the_prior(self) -> None:
        scale = PromptScale(prior=1.15, margin=0.05, warmup=3)
        scale.learn(100, 90)
        assert scale.factor == 1.15
        scale.learn(100, 130)
        assert scale.factor == pytest.approx(1.155)  # ratio 1.10 plus the margin, above the prior

    def test_after_warmup_the_learned_ratio_rules_both_ways(self) -> None:
        scale = PromptScale(prior=1.15, margin=0.05, warmup=2)
        for _ in range(4):
            scale.learn(1000, 900)
        assert scale.ratio == pytest.approx(0.9) and scale.charge(1000) == 945
        for _ in range(4):
            scale.learn(1000, 1500)
        assert scale.charge(1000) == 1260  # ratio 1.2 over all answers, plus 5 %

    def test_answers_without_usage_teach_nothing(self) -> None:
        scale = PromptScale()
        scale.learn(100, 0)
        scale.learn(0, 100)
        assert scale.answers == 0 and scale.ratio is None
