"""What a job will cost and how long it will take, before anything is paid.

``Counts`` gathers, row by row, what the estimate needs from one model's tokenizer:
exact prompt tokens of the rows that will be sent, the ``max_tokens`` they ask for,
the rows that will not be sent (over the model's context, refused by its template).
``Reservoir`` keeps a uniform random sample of the rows while they stream by.
``fit_completions`` turns the sampled rows' real completions into a prediction
with a 95% interval, and ``build_estimate`` puts prices and quotas on it all.

Completion tokens are the uncertain part; they come from one of three bases:

- ``sample``: completion ≈ a + b × prompt tokens, least squares over the sampled
  rows' real answers (``b`` near 0 for fixed-length answers such as labels, ``a``
  near 0 for translations), applied to each model's exact prompt total; the
  interval is the regression estimator's, with the finite-population correction.
- ``ratio``: completion = min(max_tokens, ratio × prompt tokens), row by row.
- ``none``: no expected figure; only the floor (0) and the ceiling (max_tokens).

The ceiling (every row writes max_tokens) is always given: it is what a budget must
cover and what the quota is charged at admission, so it also sets the duration.

A model counted with a tokenizer that is not its own (``Counts.exact`` false) has
approximate prompt counts: the report says so (``tokens.prompt_exact``), gives the
prompt figure an interval of ± ``APPROXIMATE_SPREAD``, and its cost low / high /
ceiling take the prompt at the low / high end of it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from schemas import APPROXIMATE_SPREAD, over_context

#: Rows named one by one in an estimate's lists; the rest are counted.
LISTED = 20

T = TypeVar("T")


@dataclass
class Listed:
    """A count of rows and the first few of them, named."""

    rows: int = 0
    first: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.rows += 1
        if len(self.first) < LISTED:
            self.first.append(line)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "first": list(self.first)}


@dataclass
class Counts:
    """One model's view of a prompt set: what it will be sent and billed for prompts."""

    model: str
    context_tokens: int
    completion_ratio: float | None = None
    #: Whether the prompt counts are the model's own tokenizer's (else approximate).
    exact: bool = True
    rows: int = 0
    prompt_tokens: int = 0
    max_tokens: int = 0
    ratio_completion: int = 0
    over_context: Listed = field(default_factory=Listed)
    refused: Listed = field(default_factory=Listed)

    def add(self, where: str, prompt_tokens: int, max_tokens: int) -> bool:
        """Count one row; ``False`` when it will not be sent (it does not fit the context)."""
        refused = over_context(where, prompt_tokens, max_tokens, self.context_tokens, self.model)
        if refused is not None:
            self.over_context.add(refused.detail)
            return False
        self.rows += 1
        self.prompt_tokens += prompt_tokens
        self.max_tokens += max_tokens
        if self.completion_ratio is not None:
            self.ratio_completion += min(max_tokens, round(self.completion_ratio * prompt_tokens))
        return True

    def refuse(self, where: str, reason: str) -> None:
        """Count a row the model's chat template does not accept."""
        self.refused.add(f"{where}: {reason}")


class Reservoir(Generic[T]):
    """A uniform random sample of ``size`` items from a stream of unknown length (Algorithm R)."""

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.items: list[T] = []
        self.seen = 0
        self._rng = random.Random(seed)

    def offer(self, item: T) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return
        slot = self._rng.randrange(self.seen)
        if slot < self.size:
            self.items[slot] = item


@dataclass(frozen=True)
class Fit:
    """Completion tokens ≈ ``per_row`` + ``per_prompt_token`` × prompt tokens, from ``n`` sampled rows."""

    n: int
    per_row: float
    per_prompt_token: float
    residual_var: float
    mean_prompt: float

    def total(self, rows: int, prompt_tokens: int, ceiling: int) -> tuple[float, float, float]:
        """Expected completion tokens over ``rows`` rows of ``prompt_tokens`` in all, with a 95% interval."""
        if rows == 0:
            return 0.0, 0.0, 0.0
        expected = self.per_row * rows + self.per_prompt_token * prompt_tokens
        finite = max(0.0, 1 - self.n / rows)
        half = rows * t95(self.n - 2) * math.sqrt(self.residual_var / self.n * finite)
        return (_clamp(expected, ceiling), _clamp(expected - half, ceiling), _clamp(expected + half, ceiling))


def _clamp(value: float, ceiling: int) -> float:
    return min(float(ceiling), max(0.0, value))


def fit_completions(pairs: Sequence[tuple[int, int]]) -> Fit:
    """Least squares of completion on prompt tokens over ``(prompt, completion)`` pairs.

    With fewer than three pairs, or prompts all of one length, the slope is 0 and the
    fit is the mean completion.
    """
    n = len(pairs)
    if n == 0:
        raise ValueError("no sampled rows to fit")
    xs = [float(p) for p, _ in pairs]
    ys = [float(c) for _, c in pairs]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if n >= 3 and sxx > 0 else 0.0
    intercept = my - slope * mx
    dof = n - 2 if slope else n - 1
    residuals = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return Fit(n, intercept, slope, residuals / dof if dof > 0 else 0.0, mx)


def t95(dof: int) -> float:
    """Two-sided 95% quantile of Student's t (Cornish–Fisher expansion; within 1% of tables from 3 dof up)."""
    if dof <= 2:
        return 4.303 if dof == 2 else 12.706
    z = 1.959964
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3


@dataclass(frozen=True)
class Deployment:
    """What the estimate needs of one endpoint: its model, price and quotas."""

    model: str
    input_per_mtok: float
    output_per_mtok: float
    tokens_per_minute: int
    requests_per_minute: int


def build_estimate(counts: dict[str, Counts], deployments: Sequence[Deployment], *, total_rows: int,
                   bad_input: Listed, fit: Fit | None, basis: str) -> dict[str, Any]:
    """The estimate's figures: rows, tokens, cost low/expected/high/ceiling, duration at the quotas.

    With deployments of different models, rows are taken to split in proportion to each
    deployment's tokens-per-minute quota (the pool keeps every deployment busy).
    """
    tpm = sum(d.tokens_per_minute for d in deployments)
    rpm = sum(d.requests_per_minute for d in deployments)
    shares: dict[str, float] = {}
    prices: dict[str, tuple[float, float]] = {}
    for d in deployments:
        shares[d.model] = shares.get(d.model, 0.0) + d.tokens_per_minute / tpm
        prices[d.model] = (d.input_per_mtok / 1e6, d.output_per_mtok / 1e6)
    sums = _Sums()
    by_model: dict[str, dict[str, Any]] = {}
    for model, c in counts.items():
        expected, low, high = _completion_range(c, fit, basis)
        by_model[model] = {"share": round(shares[model], 4), "rows": c.rows, "prompt_tokens": c.prompt_tokens,
                           "prompt_exact": c.exact,
                           "completion_tokens": _completion_dict(expected, low, high, c.max_tokens)}
        sums.add(c, shares[model], prices[model], (expected, low, high))
    token_minutes = sums.totals["charge"] / tpm
    request_minutes = sums.totals["rows"] / rpm
    first = next(iter(counts.values()))
    totals, completion = sums.totals, sums.completion
    report: dict[str, Any] = {
        "rows": {"total": total_rows, "to_send": round(totals["rows"]), "bad_input": bad_input.rows,
                 "over_context": first.over_context.rows, "refused_by_template": first.refused.rows},
        "tokens": {"prompt": round(totals["prompt"]), "prompt_exact": all(c.exact for c in counts.values()),
                   "prompt_low": round(totals["prompt_low"]), "prompt_high": round(totals["prompt_high"]),
                   "approximate_models": [m for m, c in counts.items() if not c.exact],
                   "completion": {**_completion_dict(completion["expected"], completion["low"], completion["high"],
                                                     round(totals["ceiling"])), "basis": basis}},
        "cost_usd": {name: (None if math.isnan(value) else round(value, 6)) for name, value in sums.cost.items()},
        "duration_s": {"at_quota": round(60 * max(token_minutes, request_minutes), 1),
                       "binding": "tokens" if token_minutes >= request_minutes else "requests",
                       "tokens_per_minute": tpm, "requests_per_minute": rpm,
                       "quota_tokens": round(totals["charge"])},
        "bad_input": bad_input.as_dict(),
        "over_context": first.over_context.as_dict(),
        "refused_by_template": first.refused.as_dict(),
    }
    if len(counts) > 1:
        report["by_model"] = by_model
    return report


def _completion_range(c: Counts, fit: Fit | None, basis: str) -> tuple[float, float, float]:
    """One model's completion tokens: expected (NaN when there is no basis), low and high."""
    if fit is not None:
        return fit.total(c.rows, c.prompt_tokens, c.max_tokens)
    if basis == "ratio":  # the user's figure, no interval: the bounds are the floor and the ceiling
        return float(c.ratio_completion), 0.0, float(c.max_tokens)
    return math.nan, 0.0, float(c.max_tokens)


@dataclass
class _Sums:
    """The models' figures, each weighed by its share of the rows."""

    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("rows", "prompt", "prompt_low", "prompt_high", "ceiling", "charge"), 0.0))
    completion: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("expected", "low", "high"), 0.0))
    cost: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("prompt", "expected", "low", "high", "ceiling"), 0.0))

    def add(self, c: Counts, share: float, prices: tuple[float, float],
            completion: tuple[float, float, float]) -> None:
        price_in, price_out = prices
        expected, low, high = completion
        spread = 0.0 if c.exact else APPROXIMATE_SPREAD
        prompt_low, prompt_high = c.prompt_tokens * (1 - spread), c.prompt_tokens * (1 + spread)
        for name, value in (("rows", c.rows), ("prompt", c.prompt_tokens), ("prompt_low", prompt_low),
                            ("prompt_high", prompt_high), ("ceiling", c.max_tokens),
                            ("charge", c.prompt_tokens + c.max_tokens)):
            self.totals[name] += share * value
        for name, value in (("expected", expected), ("low", low), ("high", high)):
            self.completion[name] += share * value
        prompt_cost = share * c.prompt_tokens * price_in
        prompt_low_cost, prompt_high_cost = share * prompt_low * price_in, share * prompt_high * price_in
        self.cost["prompt"] += prompt_cost
        self.cost["expected"] += prompt_cost + share * expected * price_out
        self.cost["low"] += prompt_low_cost + share * low * price_out
        self.cost["high"] += prompt_high_cost + share * high * price_out
        self.cost["ceiling"] += prompt_high_cost + share * c.max_tokens * price_out


def _completion_dict(expected: float, low: float, high: float, ceiling: int) -> dict[str, Any]:
    return {"expected": None if math.isnan(expected) else round(expected), "low": round(low), "high": round(high),
            "ceiling": ceiling}
