"""Counting on several processes: the same counts as here, in order, and a dead worker is an error."""

from __future__ import annotations

import random

import pytest

from workers.counting import CountingError, CountingPool
from workers.tokens import TokenCounter, TokenizeError

pytestmark = pytest.mark.integration

MODELS = ["mistral-nemo-2407", "mistral-large-2407"]
WORDS = "the council approved budget after debate rain Città naïve 42,000 — 🙂".split()


def _batches(count: int, size: int) -> list[tuple[int, list[list[dict[str, str]]]]]:
    rng = random.Random(3)
    batches = []
    for b in range(count):
        conversations = [[{"role": "system", "content": "Translate."},
                          {"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 60)))}]
                         for _ in range(size)]
        conversations.append([{"role": "assistant", "content": "I speak first"}])  # refused by the template
        batches.append((b, conversations))
    return batches


class TestCountingPool:
    """Batches counted by worker processes."""

    def test_workers_count_what_this_process_counts_in_order(self) -> None:
        batches = _batches(12, 200)
        with CountingPool(MODELS, processes=1) as pool:
            assert pool.wait_ready(60)
            results = list(pool.map(batches))
        assert pool.counted_by_workers > 0  # the worker took part
        assert [payload for payload, _ in results] == list(range(12))
        for model in MODELS:
            counter = TokenCounter(model)
            for (_, conversations), (_, counts) in zip(batches, results, strict=True):
                expected = counter.count_many(conversations)
                assert counts[model][:-1] == expected[:-1]
                assert isinstance(counts[model][-1], TokenizeError) and isinstance(expected[-1], TokenizeError)

    def test_without_workers_everything_is_counted_here(self) -> None:
        with CountingPool(MODELS[:1], processes=0) as pool:
            results = list(pool.map(_batches(3, 10)))
        assert len(results) == 3 and pool.counted_here == 3 and pool.counted_by_workers == 0

    def test_one_batch_starts_no_worker(self) -> None:
        with CountingPool(MODELS[:1], processes=1) as pool:
            assert len(list(pool.map(_batches(1, 10)))) == 1
            assert not pool._workers and pool.counted_here == 1

    def test_a_worker_that_dies_with_batches_in_hand_is_an_error(self) -> None:
        with CountingPool(MODELS[:1], processes=1) as pool:
            assert pool.wait_ready(60)
            results = pool.map(_batches(40, 200))
            next(results)
            pool._workers[0].process.kill()
            with pytest.raises(CountingError, match="token-counting process exited"):
                list(results)
