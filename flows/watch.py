"""A run watched while it goes: its metrics recorded, the warnings that matter raised.

``Watch`` sits beside the pool (``flows.pipeline.execute``): every finished row is
entered into the run's ``Recorder`` (``flows.metrics``); every ``SAMPLE_S`` seconds each
deployment's quota counters are sampled, and every ``SAVE_S`` the metrics are saved to
the output folder. What a user must not miss is said as a warning, once or at most
once a minute: 429s and pauses (``rate_limited``), the budget 80 % spent
(``budget_near``), the first rows of bad input (``bad_input``). The deployment admitting
less than the job says is ``quota_learned`` (``workers.quota``).

``check`` is pure (it takes ``now``) and returns the warnings; ``run`` is the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from flows.metrics import Recorder
from workers import Lane, Outcome, Spend

log = structlog.get_logger(__name__)

SAMPLE_S = 1.0
SAVE_S = 60.0
#: Least time between two ``rate_limited`` warnings for one deployment.
RATE_LIMITED_EVERY_S = 60.0
BUDGET_NEAR = 0.8
#: Bad-input rows named one by one in warnings (the summary counts them all).
BAD_INPUT_WARNED = 5
Save = Callable[[Recorder], Awaitable[None]]
Alert = tuple[str, dict[str, Any]]


class Watch:
    """The run's metrics and warnings; see the module docstring."""

    def __init__(self, recorder: Recorder, lanes: Sequence[Lane], spend: Spend, save: Save | None = None,
                 clock: Callable[[], float] = time.time):
        self.recorder = recorder
        self.lanes = list(lanes)
        self.spend = spend
        self.save = save
        self.clock = clock
        self._since_warned: dict[str, int] = {}
        self._warned_at: dict[str, float] = {}
        self._budget_warned = False
        self.bad_input_rows = 0
        self._by_url = {lane.client.spec.url: lane for lane in self.lanes}

    def _sample(self, now: float, lane: Lane) -> int:
        ledger, url = lane.quota.ledger, lane.client.spec.url
        new_429s = self.recorder.sample(
            now, url, lane.model, requests=ledger.charged_requests, tokens=ledger.charged_tokens,
            responses_429=ledger.rate_limited_responses, pauses=ledger.pauses,
            quota=(ledger.stated_tpm, ledger.stated_rpm), learned=ledger.learned_per_minute[::-1])
        self._since_warned[url] = self._since_warned.get(url, 0) + new_429s
        return new_429s

    def copy(self, record: dict[str, Any], now: float | None = None) -> None:
        """Enter a row that carries another row's answer (sent once, paid once: no tokens, cost or attempts)."""
        self.recorder.row(self.clock() if now is None else now, None, record.get("model"), record["status"])

    def row(self, outcome: Outcome, now: float | None = None) -> None:
        """Enter one finished row (and its deployment's counters, so that what was charged lands in the
        bucket it happened in even when the loop is too busy to sample); the first few of bad input are said."""
        now = self.clock() if now is None else now
        lane = self._by_url.get(outcome.endpoint or "")
        if lane is not None:
            self._sample(now, lane)
        self.recorder.row(now, outcome.endpoint, outcome.model, outcome.status,
                          prompt_tokens=outcome.prompt_tokens, completion_tokens=outcome.completion_tokens,
                          cost_usd=outcome.cost_usd, latency_ms=outcome.latency_ms,
                          attempts=outcome.attempts)
        if outcome.refusal is not None:
            self.bad_input_rows += 1
            if self.bad_input_rows <= BAD_INPUT_WARNED:
                log.warning("bad_input", row=outcome.row_id, error=outcome.refusal.detail,
                            note="the row is not sent; it is an error row in the output" +
                                 ("; further bad rows are counted in the summary"
                                  if self.bad_input_rows == BAD_INPUT_WARNED else ""))

    def check(self, now: float) -> list[Alert]:
        """Sample every deployment's counters into the metrics; the warnings due now."""
        warnings: list[Alert] = []
        for lane in self.lanes:
            ledger, url = lane.quota.ledger, lane.client.spec.url
            self._sample(now, lane)
            due = now - self._warned_at.get(url, -1e18) >= RATE_LIMITED_EVERY_S
            if self._since_warned[url] and due:
                requests, tokens = ledger.learned_per_minute
                warnings.append(("rate_limited", {
                    "endpoint": url, "responses_429": self._since_warned[url], "pauses_total": ledger.pauses,
                    "admits_tokens_per_minute": tokens, "admits_requests_per_minute": requests,
                    "note": "the deployment refused requests (429); they are sent again after its pause"}))
                self._since_warned[url] = 0
                self._warned_at[url] = now
        limit = self.spend.limit_usd
        if limit and not self._budget_warned and self.spend.spent_usd >= BUDGET_NEAR * limit:
            self._budget_warned = True
            warnings.append(("budget_near", {"spent_usd": round(self.spend.spent_usd, 6), "budget_usd": limit,
                                             "note": "the job stops admitting rows when the budget is reached"}))
        return warnings

    def tick(self) -> None:
        """``check`` now, and say its warnings."""
        for event, fields in self.check(self.clock()):
            log.warning(event, **fields)

    async def run(self) -> None:
        """Sample every ``SAMPLE_S`` seconds and save every ``SAVE_S``, until cancelled."""
        saved = time.monotonic()
        while True:
            await asyncio.sleep(SAMPLE_S)
            self.tick()
            if self.save is not None and time.monotonic() - saved >= SAVE_S:
                saved = time.monotonic()
                await self._save()

    async def close(self, save: bool = True) -> None:
        """A last sample, and the metrics saved (unless ``save`` is false)."""
        self.tick()
        if save:
            await self._save()

    async def _save(self) -> None:
        if self.save is None:
            return
        try:
            await self.save(self.recorder)
        except Exception as exc:  # metrics must never stop the job
            log.warning("metrics_not_saved", error=repr(exc))
