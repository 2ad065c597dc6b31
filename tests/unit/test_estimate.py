"""The estimate's arithmetic: sampling, the completion fit and its interval, cost and duration."""

from __future__ import annotations

import random

import pytest

from schemas import APPROXIMATE_SPREAD
from workers.estimate import Counts, Deployment, Listed, Reservoir, build_estimate, fit_completions, t95


def test_reservoir_draws_every_row_with_the_same_chance() -> None:
    hits = [0] * 20
    for seed in range(3000):
        reservoir: Reservoir[int] = Reservoir(5, seed)
        for i in range(20):
            reservoir.offer(i)
        assert len(reservoir.items) == 5 and len(set(reservoir.items)) == 5
        for i in reservoir.items:
            hits[i] += 1
    # Each row is drawn with probability 5/20: 750 of 3000 draws, give or take sampling noise.
    assert all(650 < h < 850 for h in hits), hits


def test_reservoir_keeps_everything_when_the_stream_is_short() -> None:
    reservoir: Reservoir[str] = Reservoir(50)
    for name in "abc":
        reservoir.offer(name)
    assert sorted(reservoir.items) == ["a", "b", "c"] and reservoir.seen == 3


def test_fit_recovers_a_linear_relation() -> None:
    rng = random.Random(3)
    pairs = [(p, round(12 + 0.7 * p + rng.gauss(0, 4))) for p in (rng.randint(20, 400) for _ in range(200))]
    fit = fit_completions(pairs)
    assert fit.per_prompt_token == pytest.approx(0.7, abs=0.02)
    assert fit.per_row == pytest.approx(12, abs=3)


def test_fit_of_prompts_all_one_length_is_the_mean() -> None:
    fit = fit_completions([(50, 10), (50, 20), (50, 30)])
    assert fit.per_prompt_token == 0 and fit.per_row == 20
    assert fit_completions([(80, 9)]).total(10, 800, 1000)[0] == 90  # one row: the mean, no slope


def test_interval_covers_the_true_total_about_95_percent_of_the_time() -> None:
    rng = random.Random(7)
    population = []
    for _ in range(5000):
        p = rng.randint(15, 300)
        population.append((p, max(0, round(5 + 0.8 * p * rng.uniform(0.7, 1.4)))))
    rows, prompt_total = len(population), sum(p for p, _ in population)
    true_total = sum(c for _, c in population)
    covered = 0
    for draw in range(300):
        sample = random.Random(draw).sample(population, 50)
        _, low, high = fit_completions(sample).total(rows, prompt_total, ceiling=10**9)
        covered += low <= true_total <= high
    assert 0.88 <= covered / 300 <= 0.99


def test_totals_stay_between_zero_and_the_ceiling() -> None:
    fit = fit_completions([(10, 0), (20, 0), (30, 500), (40, 900)])
    expected, low, high = fit.total(rows=100, prompt_tokens=2500, ceiling=1000)
    assert 0 <= low <= expected <= high <= 1000


def test_t_quantiles_match_the_tables() -> None:
    for dof, table in [(3, 3.182), (5, 2.571), (10, 2.228), (48, 2.011), (200, 1.972)]:
        assert t95(dof) == pytest.approx(table, rel=0.01)


def test_counts_leave_out_rows_over_the_context_and_name_them() -> None:
    counts = Counts("mistral-large-2402", context_tokens=1000, completion_ratio=0.5)
    assert counts.add("a.jsonl line 1", 300, 200)
    assert counts.add("a.jsonl line 2", 900, 100)
    assert not counts.add("a.jsonl line 3", 901, 100)
    assert (counts.rows, counts.prompt_tokens, counts.max_tokens) == (2, 1200, 300)
    assert counts.ratio_completion == 150 + 100  # 0.5 × 300, then 0.5 × 900 capped at max_tokens 100
    assert counts.over_context.rows == 1 and counts.over_context.first[0].startswith("a.jsonl line 3: prompt of 901")


def _deployment(tpm: int, rpm: int, model: str = "mistral-large-2407") -> Deployment:
    return Deployment(model, 2.0, 6.0, tpm, rpm)


def test_cost_and_duration_follow_prices_and_quotas() -> None:
    counts = Counts("mistral-large-2407", 131_072, completion_ratio=1.0)
    for i in range(600):
        counts.add(f"row {i}", 100 + i, 300)
    report = build_estimate({"mistral-large-2407": counts}, [_deployment(200_000, 1_000)], total_rows=600,
                            bad_input=Listed(), fit=None, basis="ratio")
    prompt = counts.prompt_tokens
    assert report["tokens"]["prompt"] == prompt
    assert report["cost_usd"]["prompt"] == pytest.approx(prompt * 2 / 1e6)
    assert report["cost_usd"]["ceiling"] == pytest.approx((prompt * 2 + 600 * 300 * 6) / 1e6)
    assert report["cost_usd"]["expected"] == pytest.approx((prompt * 2 + counts.ratio_completion * 6) / 1e6)
    assert report["cost_usd"]["low"] <= report["cost_usd"]["expected"] <= report["cost_usd"]["high"]
    # The quota is charged prompt + max_tokens at admission: that, not the answers, sets the pace.
    charged = prompt + 600 * 300
    assert report["duration_s"]["quota_tokens"] == charged
    assert report["duration_s"]["binding"] == "tokens"
    assert report["duration_s"]["at_quota"] == pytest.approx(60 * charged / 200_000, abs=0.1)


def test_short_rows_are_bound_by_requests_and_endpoints_add_up() -> None:
    counts = Counts("mistral-large-2407", 131_072)
    for i in range(3000):
        counts.add(f"row {i}", 20, 10)
    report = build_estimate({"mistral-large-2407": counts}, [_deployment(200_000, 1_000), _deployment(200_000, 500)],
                            total_rows=3000, bad_input=Listed(), fit=None, basis="none")
    assert report["duration_s"]["binding"] == "requests"
    assert report["duration_s"]["requests_per_minute"] == 1_500
    assert report["duration_s"]["at_quota"] == pytest.approx(60 * 3000 / 1_500)
    assert report["cost_usd"]["expected"] is None and report["tokens"]["completion"]["expected"] is None
    assert report["cost_usd"]["low"] == report["cost_usd"]["prompt"]


def test_approximate_counts_are_marked_and_widen_the_interval() -> None:
    exact, approximate = Counts("m", 131_072, completion_ratio=1.0), Counts("m", 131_072, 1.0, exact=False)
    for counts in (exact, approximate):
        for i in range(100):
            counts.add(f"row {i}", 200, 100)
    reports = [build_estimate({"m": c}, [_deployment(200_000, 1_000, "m")], total_rows=100, bad_input=Listed(),
                              fit=None, basis="ratio") for c in (exact, approximate)]
    sure, rough = reports
    assert sure["tokens"]["prompt_exact"] and not rough["tokens"]["prompt_exact"]
    assert rough["tokens"]["approximate_models"] == ["m"]
    assert (rough["tokens"]["prompt_low"], rough["tokens"]["prompt"], rough["tokens"]["prompt_high"]) == (
        round(20_000 * (1 - APPROXIMATE_SPREAD)), 20_000, round(20_000 * (1 + APPROXIMATE_SPREAD)))
    assert rough["cost_usd"]["expected"] == sure["cost_usd"]["expected"]
    assert rough["cost_usd"]["low"] < sure["cost_usd"]["low"]
    assert rough["cost_usd"]["high"] > sure["cost_usd"]["high"]
    assert rough["cost_usd"]["ceiling"] == pytest.approx(sure["cost_usd"]["ceiling"] + 20_000 * 0.15 * 2 / 1e6)
