"""The request engine: a fixed set of worker coroutines draining one stream of rows.

Rows come from an async iterable (the caller streams them from storage); each worker
is bound to one deployment (a ``Lane``) and pulls the next row whenever it is free, so
rows flow to whichever deployment has capacity. Every row ends as exactly one
``Outcome`` handed to the caller's ``sink`` from a single drain task, in completion
order. A ``JobAbortedError`` (a rejected key) stops every worker at once and is
raised from ``run``.

A labeling job's answers are validated as they come (``schemas.response``); an invalid one
is asked again (``workers.labels``) through the quota and the budget like any request, and
a row that never validates ends ``invalid``.

``Engine.stop`` (a signal, or the budget running out) ends a run gracefully: nothing
more is admitted, rows not yet sent are dropped (they stay pending, for the next run),
requests in flight get ``grace_s`` seconds to finish and are then cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from schemas import STATUSES, BadRowError, Params, Price, PromptRow, Status
from schemas.response import ResponseSpec
from workers import labels
from workers.calibration import PromptScale
from workers.client import Completion, EndpointClient
from workers.errors import ContentFilteredError, EndpointError, JobAbortedError, RateLimitedError, RowFailedError
from workers.quota import Quota
from workers.retry import RetryPolicy
from workers.spend import BudgetExhaustedError, Spend
from workers.tokens import TokenCounter, TokenizeError
from workers.usage import checked_usage

log = structlog.get_logger(__name__)

Item = PromptRow | BadRowError
#: Rows a deployment's head keeps counted and ready, to fill the room at a window's edge.
DEFAULT_LOOKAHEAD = 12
Sink = Callable[["Outcome"], Awaitable[None]]


@dataclass(slots=True)
class Outcome:
    """The final result of one input row."""

    seq: int
    row_id: str | None
    status: Status
    passthrough: dict[str, Any] = field(default_factory=dict)
    completion: Completion | None = None
    model: str | None = None
    attempts: int = 0
    latency_ms: float | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: The request's digest (``PromptRow.digest``); ``None`` for a row that could not be built.
    digest: str | None = None
    #: The endpoint sent no usage: the tokens were counted with the model's tokenizer.
    usage_estimated: bool = False
    #: The deployment (its URL) the row was sent to; ``None`` for a row never sent.
    endpoint: str | None = None

    def record(self, price: Price | None) -> dict[str, Any]:
        """The output row: our columns, then the passed-through ones."""
        c = self.completion
        cost = price.cost(self.prompt_tokens, self.completion_tokens) if price else 0.0
        return {
            "id": self.row_id,
            "status": self.status,
            "completion": c.content if c else None,
            "finish_reason": c.finish_reason if c else None,
            "logprobs": c.logprobs if c else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cost_usd": cost,
            "model": self.model,
            "response_id": c.response_id if c else None,
            "latency_ms": self.latency_ms,
            "attempts": self.attempts,
            "error": self.error,
            "request_digest": self.digest,
            "usage_estimated": self.usage_estimated,
            "duplicate_of": None,
            **self.passthrough,
        }


@dataclass
class Lane:
    """One deployment as the pool sees it: its client, its quota, its tokenizer.

    The key is tried on ``GET /info`` first; where that says nothing (no such route),
    calls go one at a time until the deployment has answered once with anything but
    401/403: a wrong key costs at most one request, not one per worker.

    When the counter's tokenizer is not the model's own, ``scale`` learns from each
    answer's ``usage`` what a counted prompt token really costs, and ``charge`` sizes
    the quota charge by it (``workers.calibration``).
    """

    client: EndpointClient
    quota: Quota
    counter: TokenCounter
    workers: int
    price: Price | None = None
    key_confirmed: bool = False
    head: asyncio.Lock = field(default_factory=asyncio.Lock)
    room: list[Waiting] = field(default_factory=list)
    _probe: asyncio.Lock = field(default_factory=asyncio.Lock)
    _rejected: JobAbortedError | None = None
    scale: PromptScale | None = None

    def __post_init__(self) -> None:
        if self.scale is None and not self.counter.exact:
            self.scale = PromptScale()

    def charge(self, prompt_tokens: int, max_tokens: int) -> int:
        """The quota charge of a request: its prompt as the endpoint will count it, plus ``max_tokens``."""
        billed = self.scale.charge(prompt_tokens) if self.scale is not None else prompt_tokens
        return billed + max_tokens

    @property
    def model(self) -> str:
        """The deployment's model name as the job file gives it."""
        return self.client.spec.model

    @property
    def context_tokens(self) -> int:
        """The model's context length."""
        return self.counter.model.context_tokens

    async def confirm_key(self) -> None:
        """Try the key on ``GET /info`` before any completion is sent."""
        try:
            self.key_confirmed = await self.client.check_key()
        except JobAbortedError as exc:
            self._rejected = exc
            raise

    async def probe_finished(self) -> None:
        """Wait while the first call is trying the key: admitting more now would only pile them up."""
        async with self._probe:
            pass

    @property
    def response(self) -> ResponseSpec | None:
        """A labeling job's expected answer, when the job has one."""
        return self.client.modes.response if self.client.modes is not None else None

    async def call(self, messages: tuple[dict[str, str], ...], params: Params) -> Completion:
        """Send one request, serialized behind the first call until the key is known to work."""
        while not self.key_confirmed:
            async with self._probe:
                if self._rejected is not None:  # the job is stopping; send nothing more
                    raise self._rejected
                if self.key_confirmed:  # confirmed while this call waited its turn
                    break
                try:
                    completion = await self.client.complete(messages, params)
                except JobAbortedError as exc:
                    self._rejected = exc
                    raise
                except EndpointError as exc:
                    # Any HTTP answer past authentication shows the key works.
                    self.key_confirmed = exc.status is not None
                    raise
                self.key_confirmed = True
                return completion
        return await self.client.complete(messages, params)


class _Empty:
    """Nothing in the queue right now (the input is not over)."""


EMPTY = _Empty()


@dataclass(slots=True)
class Waiting:
    """A row counted and ready, waiting on its lane for the quota to admit it."""

    row: PromptRow
    outcome: Outcome
    cost: int
    worst_usd: float
    since: float
    #: The prompt tokens as counted here (``cost`` may be scaled from it).
    counted: int = 0


@dataclass
class Tally:
    """Running totals, for progress lines."""

    rows: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, outcome: Outcome) -> None:
        """Count one finished row."""
        self.rows += 1
        self.by_status[outcome.status] += 1
        self.prompt_tokens += outcome.prompt_tokens
        self.completion_tokens += outcome.completion_tokens


class Engine:
    """Runs rows through a set of lanes with retries; see the module docstring.

    Per lane, one worker at a time is the *head*: it tops up the lane's small waiting
    room (``lookahead`` rows, counted and costed) from the shared queue, waits for the
    quota to admit one of them — the oldest, or while the oldest has waited less than
    two windows, a younger one that fits the room left at the window's edge — and sends
    it while the next worker becomes head. Rows wait for admission only on the lane
    that will send them, a few per lane at most; the rest stay in the shared queue for
    whichever lane is ready first. How many requests are in flight follows from the
    admitted rate and the latency (Little's law), up to ``Lane.workers``.
    """

    def __init__(self, lanes: Sequence[Lane], policy: RetryPolicy, *, rng: random.Random | None = None,
                 progress_every_s: float = 10.0, lookahead: int = DEFAULT_LOOKAHEAD, spend: Spend | None = None,
                 grace_s: float = 20.0):
        self.lanes = list(lanes)
        self.lookahead = lookahead
        self.policy = policy
        self.tally = Tally()
        self.spend = spend or Spend(None)
        self.grace_s = grace_s
        self._rng = rng or random.Random()
        self._progress_every_s = progress_every_s
        self.in_flight = 0
        self.peak_in_flight = 0
        #: Why the run stopped early (``"budget"``, a signal's name), or ``None``.
        self.stopped: str | None = None
        self.abandoned = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._sending: set[asyncio.Task[Any]] = set()

    def stop(self, reason: str) -> None:
        """Admit nothing more; let requests in flight finish for ``grace_s`` seconds, then cancel them."""
        if self.stopped is not None or not self._tasks:
            self.stopped = self.stopped or reason
            return
        self.stopped = reason
        log.warning("stopping", reason=reason, in_flight=self.in_flight, grace_s=self.grace_s)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current and task not in self._sending:
                task.cancel()
        asyncio.get_running_loop().call_later(self.grace_s, self.stop_now)

    def stop_now(self) -> None:
        """Cancel everything still running, requests in flight included (their rows stay pending)."""
        late = [t for t in self._tasks if not t.done()]
        if late:
            log.warning("grace_over", cancelled_in_flight=len(late))
        for task in late:
            task.cancel()

    async def run(self, rows: AsyncIterable[Item], sink: Sink) -> Tally:
        """Process every row; return the totals. Raises ``JobAbortedError`` on a fatal answer."""
        n_workers = sum(lane.workers for lane in self.lanes)
        inbox: asyncio.Queue[Item | None] = asyncio.Queue(maxsize=256)
        # Unbounded, so a finished row is never held up (each worker hands over one at a time).
        outbox: asyncio.Queue[Outcome | None] = asyncio.Queue()
        started = time.monotonic()

        async def feed() -> None:
            async for item in rows:
                await inbox.put(item)
            await inbox.put(None)

        async def next_item(block: bool) -> Item | None | _Empty:
            if block:
                item = await inbox.get()
            else:
                try:
                    item = inbox.get_nowait()
                except asyncio.QueueEmpty:
                    return EMPTY
            if item is None:  # the end: leave it there for every other lane's head too
                inbox.put_nowait(None)
            return item

        async def work(lane: Lane) -> None:
            try:
                while self.stopped is None and (outcome := await self._next(lane, next_item)) is not None:
                    outbox.put_nowait(outcome)
            except asyncio.CancelledError:
                if self.stopped is None:  # not ours: the task group is unwinding
                    raise
            finally:
                outbox.put_nowait(None)

        async def drain() -> None:
            finished, last_report = 0, started
            while finished < n_workers:
                outcome = await outbox.get()
                if outcome is None:
                    finished += 1
                    continue
                self.tally.add(outcome)
                await sink(outcome)
                now = time.monotonic()
                if now - last_report >= self._progress_every_s:
                    last_report = now
                    self._report(now - started)

        try:
            async with asyncio.TaskGroup() as group:
                for lane in self.lanes:
                    await lane.confirm_key()
                self._tasks.append(group.create_task(feed()))
                for lane in self.lanes:
                    for _ in range(lane.workers):
                        self._tasks.append(group.create_task(work(lane)))
                if self.stopped is not None:  # stopped before the workers were there to stop
                    reason, self.stopped = self.stopped, None
                    self.stop(reason)
                group.create_task(drain())
        except BaseExceptionGroup as failed:
            # One failure stopped the run (a rejected key first of all): raise it as itself.
            first = next((e for e in failed.exceptions if isinstance(e, JobAbortedError)), failed.exceptions[0])
            raise first from None
        self._report(time.monotonic() - started)
        return self.tally

    def _report(self, elapsed: float) -> None:
        t = self.tally
        log.info("progress", rows=t.rows, **t.by_status, prompt_tokens=t.prompt_tokens,
                 completion_tokens=t.completion_tokens, elapsed_s=round(elapsed, 1),
                 rows_per_min=round(60 * t.rows / elapsed) if elapsed > 0 else None,
                 in_flight=self.in_flight, peak_in_flight=self.peak_in_flight,
                 pauses_429=sum(lane.quota.ledger.pauses for lane in self.lanes))

    async def _next(self, lane: Lane, next_item: Callable[[bool], Awaitable[Item | None | _Empty]]) -> Outcome | None:
        """Become head, pick a waiting row and see it to its outcome; ``None`` when the input is done."""
        async with lane.head:
            while len(lane.room) < self.lookahead:
                pulled = await next_item(not lane.room)  # block only when nothing is waiting
                if pulled is None or pulled is EMPTY:
                    break
                assert not isinstance(pulled, _Empty)
                outcome, counted = self._prepare(lane, pulled)
                if counted is None:
                    return outcome
                assert isinstance(pulled, PromptRow)  # only rows that can be sent have a count
                max_tokens = pulled.params.max_tokens
                cost = lane.charge(counted, max_tokens)
                worst = lane.price.cost(cost - max_tokens, max_tokens) if lane.price else 0.0
                lane.room.append(Waiting(pulled, outcome, cost, worst, time.monotonic(), counted))
            if not lane.room:
                return None
            if not lane.key_confirmed:
                await lane.probe_finished()
            try:
                candidates = await self._affordable(lane.room)
            except BudgetExhaustedError as exc:
                log.warning("budget_exhausted", reason=str(exc))
                self.stop("budget")
                return None
            held = max(lane.room[i].worst_usd for i in candidates)
            self.spend.reserve(held)
            try:
                index, ticket = await lane.quota.admit_first_fit([lane.room[i].cost for i in candidates],
                                                                 lane.room[candidates[0]].since)
            except BaseException:
                self.spend.settle(held, 0.0)
                raise
            waiting = lane.room.pop(candidates[index])
            self.spend.settle(held - waiting.worst_usd, 0.0)  # keep only the chosen row's worst case
        actual = 0.0
        try:
            finished = await self._send(lane, waiting, ticket)
            if finished is not None and lane.price is not None:
                actual = lane.price.cost(finished.prompt_tokens, finished.completion_tokens)
            return finished
        finally:
            self.spend.settle(waiting.worst_usd, actual)

    async def _affordable(self, room: list[Waiting]) -> list[int]:
        """The waiting rows the budget can take now, oldest first; waits while rows in flight settle."""
        while True:
            fitting = [i for i, w in enumerate(room) if self.spend.fits(w.worst_usd)]
            if fitting:
                return fitting
            await self.spend.wait_for_room()

    async def _send(self, lane: Lane, waiting: Waiting, ticket: Any) -> Outcome | None:
        """Send an admitted row, and ask again while a labeling job's answer does not validate.

        Each re-ask is admitted by the quota and reserved in the budget like any request (its
        reservation joins the row's, ``Waiting.worst_usd``, settled when the row is done); the
        row's tokens, cost and attempts add up every request it made.
        """
        outcome = await self._exchange(lane, waiting, waiting.row.messages, ticket)
        response = lane.response
        if response is None or outcome is None or outcome.status != "ok":
            return outcome
        messages, asked = waiting.row.messages, 0
        while True:
            assert outcome.completion is not None
            text = labels.answer_text(outcome.completion)
            outcome.completion = dataclasses.replace(outcome.completion, content=text)
            _, error = response.check(text)
            if error is None:
                return outcome
            if asked >= response.reask:
                return _invalid(outcome, error, asked)
            asked += 1
            messages = labels.reask_messages(messages, text, error)
            max_tokens = waiting.row.params.max_tokens
            try:
                counted = lane.counter.prompt_tokens(messages)
            except TokenizeError as exc:
                return _invalid(outcome, f"{error}; not asked again: {exc}", asked - 1)
            if counted + max_tokens > lane.context_tokens:
                return _invalid(outcome, f"{error}; not asked again: the conversation would exceed the context",
                                asked - 1)
            cost = lane.charge(counted, max_tokens)
            worst = lane.price.cost(cost - max_tokens, max_tokens) if lane.price else 0.0
            if not self.spend.fits(worst):
                self.stop("budget")
                return _invalid(outcome, f"{error}; not asked again: budget_usd reached", asked - 1)
            self.spend.reserve(worst)
            waiting.worst_usd += worst
            before = (outcome.prompt_tokens, outcome.completion_tokens, outcome.usage_estimated)
            # As for a fresh row: an error unless the exchange succeeds, its own tokens counted from 0.
            outcome.status, outcome.prompt_tokens, outcome.completion_tokens = "error", 0, 0
            ticket = await lane.quota.admit(cost)
            again = await self._exchange(lane, Waiting(waiting.row, outcome, cost, worst, time.monotonic(), counted),
                                         messages, ticket)
            if again is None:
                return None
            outcome.prompt_tokens += before[0]
            outcome.completion_tokens += before[1]
            outcome.usage_estimated = outcome.usage_estimated or before[2]
            if outcome.status != "ok":
                return outcome

    async def _exchange(self, lane: Lane, waiting: Waiting, messages: tuple[dict[str, str], ...],
                        ticket: Any) -> Outcome | None:
        """One admitted request, retried as the policy says; ``None`` if the run stopped before it finished."""
        item, outcome, cost = waiting.row, waiting.outcome, waiting.cost
        me = asyncio.current_task()
        assert me is not None
        while True:
            outcome.attempts += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            sent = time.monotonic()
            self._sending.add(me)
            try:
                completion = await lane.call(messages, item.params)
                usage = checked_usage(completion, cost - item.params.max_tokens, item.params.max_tokens,
                                      lane.counter)
            except JobAbortedError:
                raise
            except EndpointError as exc:
                if isinstance(exc, RateLimitedError):
                    lane.quota.rate_limited(ticket, exc.retry_after_s)
                    pause: float | None = 0.0 if outcome.attempts < self.policy.max_attempts else None
                else:
                    pause = self.policy.pause(outcome.attempts, exc, self._rng.random())
                if pause is None:
                    return _failed(outcome, exc)
                if self.stopped is not None:  # no retries once stopping: the row stays pending
                    self.abandoned += 1
                    return None
                self._sending.discard(me)
                await asyncio.sleep(pause)
                # Not behind the lane's head: the head may be waiting for budget that only this row's
                # settling can free (the quota's own line still orders admissions).
                ticket = await lane.quota.admit(cost)
                continue
            finally:
                self._sending.discard(me)
                self.in_flight -= 1
            lane.quota.observe(ticket, completion.remaining_requests, completion.remaining_tokens,
                               completion.limit_requests, completion.limit_tokens)
            if lane.scale is not None and not completion.filtered and completion.prompt_tokens is not None:
                lane.scale.learn(waiting.counted, completion.prompt_tokens)
            outcome.latency_ms = round((time.monotonic() - sent) * 1000, 1)
            outcome.completion = completion
            outcome.status = "filtered" if completion.filtered else "ok"
            outcome.prompt_tokens = usage.prompt_tokens
            outcome.completion_tokens = usage.completion_tokens
            outcome.usage_estimated = usage.estimated
            return outcome

    @staticmethod
    def _prepare(lane: Lane, item: Item) -> tuple[Outcome, int | None]:
        """The row's outcome-to-be and its counted prompt tokens, or a final outcome and ``None``."""
        if isinstance(item, BadRowError):
            return Outcome(item.seq, item.row_id, "error", error=f"bad input: {item}"), None
        outcome = Outcome(item.seq, item.id, "error", passthrough=dict(item.passthrough), model=lane.model,
                          digest=item.digest, endpoint=lane.client.spec.url)
        try:
            prompt_tokens = lane.counter.prompt_tokens(item.messages)
        except TokenizeError as exc:
            outcome.error = f"bad input: {item.where}: field `messages`: {exc}"
            outcome.endpoint = None
            return outcome, None
        context = lane.context_tokens
        if prompt_tokens + item.params.max_tokens > context:
            outcome.error = (f"bad input: {item.where}: prompt of {prompt_tokens} tokens plus max_tokens "
                             f"{item.params.max_tokens} exceeds the {context}-token context of {lane.model}")
            outcome.endpoint = None
            return outcome, None
        return outcome, prompt_tokens


def _invalid(outcome: Outcome, error: str, asked: int) -> Outcome:
    """Record a row whose answer never validated: the last answer stays in ``completion``."""
    outcome.status = "invalid"
    outcome.error = f"invalid answer after {asked} re-ask{'s' if asked != 1 else ''}: {error}"
    return outcome


def _failed(outcome: Outcome, exc: EndpointError) -> Outcome:
    """Record a row whose last attempt failed for good."""
    if isinstance(exc, ContentFilteredError):
        outcome.status = "filtered"
        outcome.completion = Completion(None, None, None, "content_filter", 0, 0, None)
    elif isinstance(exc, RowFailedError):
        outcome.error = exc.describe()
    else:
        outcome.error = f"{exc.describe()} (gave up after {outcome.attempts} attempts)"
    return outcome
