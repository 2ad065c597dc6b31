"""The run's watch: what it records from the quotas and rows, and the warnings it raises."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from flows.metrics import Recorder
from flows.watch import RATE_LIMITED_EVERY_S, Watch
from schemas import Refusal, RefusalKind, Status
from workers import Lane, Outcome, Spend
from workers.quota import Ledger

URL = "https://mistral-large-xyz.eastus2.inference.ai.azure.com"
T0 = 1_800_000_000.0


def lane(ledger: Ledger) -> Lane:
    fake: Any = SimpleNamespace(quota=SimpleNamespace(ledger=ledger), client=SimpleNamespace(spec=SimpleNamespace(
        url=URL)), model="mistral-large-2407")
    return cast(Lane, fake)


class TestWatch:
    """429s are said at most once a minute, the budget once; charges land in the bucket they happened in."""

    def test_rate_limited_and_budget_near(self) -> None:
        ledger = Ledger(1_000, 200_000, first_window=False)
        spend = Spend(10.0, 0.0)
        watch = Watch(Recorder(), [lane(ledger)], spend)
        assert watch.check(T0) == []
        refused = ledger.admit(0.0, 500)
        ledger.rate_limited(0.1, refused, retry_after_s=1.0)
        ledger.admit(1.0, 700)
        spend.spent_usd = 8.5
        (limited, fields), (budget, _) = watch.check(T0 + 1)
        assert (limited, fields["responses_429"], budget) == ("rate_limited", 1, "budget_near")
        ledger.rate_limited(2.0, ledger.admit(1.5, 500), retry_after_s=1.0)
        assert watch.check(T0 + 2) == []  # said a second ago; counted for the next warning
        (limited, fields), = watch.check(T0 + 1 + RATE_LIMITED_EVERY_S)
        assert fields["responses_429"] == 1
        bucket = watch.recorder.buckets[(T0, URL, "mistral-large-2407")]
        assert (bucket.requests, bucket.tokens_charged, bucket.responses_429) == (1, 700, 2)

    def test_rows_carry_their_deployments_charges(self) -> None:
        ledger = Ledger(1_000, 200_000, first_window=False)
        watch = Watch(Recorder(), [lane(ledger)], Spend(None))
        ledger.admit(0.0, 400)
        outcome = Outcome(0, "r1", Status.OK, model="mistral-large-2407", endpoint=URL, prompt_tokens=30,
                          completion_tokens=9, latency_ms=120.0, attempts=1, cost_usd=0.0001)
        watch.row(outcome, now=T0 + 3)
        bad = Outcome.refused(1, "r2", Refusal(RefusalKind.BAD_INPUT, "a.jsonl line 2: field `text`: missing"))
        watch.row(bad, now=T0 + 4)
        sent, unsent = watch.recorder.buckets[(T0, URL, "mistral-large-2407")], watch.recorder.buckets[(T0, "", "")]
        assert (sent.by_status["ok"], sent.tokens_charged, sent.prompt_tokens, sent.cost_usd) == (1, 400, 30, 0.0001)
        assert unsent.by_status["error"] == 1 and watch.bad_input_rows == 1
