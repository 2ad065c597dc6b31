"""An admitted row seen to its end: sent, retried as the policy says, asked again while invalid.

``Sender`` owns what is in flight (for the engine's stop: requests being sent get their
grace period, rows between attempts do not). A request refused with 429 tells the
lane's quota, which pauses admission for everyone; the row is then admitted again like
any other. A labeling job's answer is validated (``schemas.response``); an invalid one is
asked again (``workers.labels``) through the quota and the budget like any request, and a
row that never validates ends ``invalid``. The row's tokens and attempts add up every
request it made; its cost is priced once, from those tokens, when it is done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable
from typing import Any

from schemas import Status
from schemas.plan import Planned, Refusal, RefusalKind
from workers import labels
from workers.completion import Completion
from workers.errors import ContentFilteredError, EndpointError, JobAbortedError, RateLimitedError, RowFailedError
from workers.lane import Lane, Waiting
from workers.outcome import Draft, Outcome
from workers.quota import Ticket
from workers.retry import RetryPolicy
from workers.spend import Spend
from workers.stopping import StopReason
from workers.usage import checked_usage


class Sender:
    """Sends admitted rows on their lanes; see the module docstring."""

    def __init__(self, policy: RetryPolicy, spend: Spend, *, rng: random.Random, clock: Callable[[], float],
                 stopping: Callable[[], bool], stop: Callable[[StopReason], None]):
        self.policy = policy
        self.spend = spend
        self._rng = rng
        self._clock = clock
        self._stopping = stopping
        self._stop = stop
        self.in_flight = 0
        self.peak_in_flight = 0
        #: Rows dropped between attempts because the run was stopping (they stay pending).
        self.abandoned = 0
        #: The tasks with a request on the wire now.
        self.sending: set[asyncio.Task[Any]] = set()

    async def send(self, lane: Lane, waiting: Waiting, ticket: Ticket) -> Outcome | None:
        """The row's final result, or ``None`` if the run stopped before it was done."""
        draft = await self._exchange(lane, waiting.planned, waiting.draft, waiting.planned.row.messages, ticket)
        if draft is not None and draft.status == Status.OK and lane.response is not None:
            draft = await self._validated(lane, waiting, draft)
        return draft.finish(lane.price) if draft is not None else None

    async def _validated(self, lane: Lane, waiting: Waiting, draft: Draft) -> Draft | None:
        """Ask again while the answer does not validate, up to the job's ``reask``."""
        response = lane.response
        assert response is not None
        row, messages, asked = waiting.planned.row, waiting.planned.row.messages, 0
        while True:
            assert draft.completion is not None
            text = labels.answer_text(draft.completion)
            draft.completion = dataclasses.replace(draft.completion, content=text)
            _, error = response.check(text)
            if error is None:
                return draft
            if asked >= response.reask:
                return _invalid(draft, error, asked)
            messages = labels.reask_messages(messages, text, error)
            planned = lane.plan(row, messages)
            if isinstance(planned, Refusal):
                why = ("the conversation would exceed the context" if planned.kind is RefusalKind.OVER_CONTEXT
                       else planned.reason)
                return _invalid(draft, f"{error}; not asked again: {why}", asked)
            if not self.spend.fits(planned.worst_usd):
                self._stop(StopReason.BUDGET)
                return _invalid(draft, f"{error}; not asked again: budget_usd reached", asked)
            asked += 1
            self.spend.reserve(planned.worst_usd)
            waiting.held_usd += planned.worst_usd
            # As for a fresh row: an error unless the exchange succeeds, its own tokens counted from 0.
            draft.earlier_prompt_tokens += draft.prompt_tokens
            draft.earlier_completion_tokens += draft.completion_tokens
            draft.status, draft.prompt_tokens, draft.completion_tokens = Status.ERROR, 0, 0
            ticket = await lane.quota.admit(planned.charge)
            if await self._exchange(lane, planned, draft, messages, ticket) is None:
                return None
            if draft.status != Status.OK:
                return draft

    async def _exchange(self, lane: Lane, planned: Planned, draft: Draft, messages: tuple[dict[str, str], ...],
                        ticket: Ticket) -> Draft | None:
        """One admitted request, retried as the policy says; ``None`` if the run stopped before it finished."""
        params = planned.row.params
        me = asyncio.current_task()
        assert me is not None
        while True:
            draft.attempts += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            sent = self._clock()
            self.sending.add(me)
            try:
                completion = await lane.call(messages, params)
                usage = checked_usage(completion, planned.charge - params.max_tokens, params.max_tokens,
                                      lane.counter)
            except JobAbortedError:
                raise
            except EndpointError as exc:
                if isinstance(exc, RateLimitedError):
                    lane.quota.rate_limited(ticket, exc.retry_after_s)
                pause = self.policy.pause(draft.attempts, exc, self._rng.random())
                if pause is None:
                    return _failed(draft, exc)
                if self._stopping():  # no retries once stopping: the row stays pending
                    self.abandoned += 1
                    return None
                self.sending.discard(me)
                await asyncio.sleep(pause)
                # Not behind the lane's head: the head may be waiting for budget that only this row's
                # settling can free (the quota's own line still orders admissions).
                ticket = await lane.quota.admit(planned.charge)
                continue
            finally:
                self.sending.discard(me)
                self.in_flight -= 1
            lane.quota.observe(ticket, completion.remaining_requests, completion.remaining_tokens,
                               completion.limit_requests, completion.limit_tokens)
            if lane.scale is not None and not completion.filtered and completion.prompt_tokens is not None:
                lane.scale.learn(planned.prompt_tokens, completion.prompt_tokens)
            draft.latency_ms = round((self._clock() - sent) * 1000, 1)
            draft.completion = completion
            draft.status = Status.FILTERED if completion.filtered else Status.OK
            draft.prompt_tokens = usage.prompt_tokens
            draft.completion_tokens = usage.completion_tokens
            draft.usage_estimated = draft.usage_estimated or usage.estimated
            return draft


def _invalid(draft: Draft, error: str, asked: int) -> Draft:
    """A row whose answer never validated: the last answer stays in ``completion``."""
    draft.status = Status.INVALID
    draft.error = f"invalid answer after {asked} re-ask{'s' if asked != 1 else ''}: {error}"
    return draft


def _failed(draft: Draft, exc: EndpointError) -> Draft:
    """A row whose last attempt failed for good."""
    if isinstance(exc, ContentFilteredError):
        draft.status = Status.FILTERED
        draft.completion = Completion(None, None, None, "content_filter", 0, 0, None)
    elif isinstance(exc, RowFailedError):
        draft.error = exc.describe()
    else:
        draft.error = f"{exc.describe()} (gave up after {draft.attempts} attempts)"
    return draft
