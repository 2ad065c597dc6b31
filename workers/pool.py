"""The request engine: a fixed set of worker coroutines draining one stream of rows.

Rows come from an async iterable (the caller streams them from storage); each worker
is bound to one deployment (a ``Lane``) and pulls the next row whenever it is free, so
rows flow to whichever deployment has capacity. A row is planned on the lane that takes
it (``Lane.plan``: counted, charged, priced, or refused), admitted by the lane's quota
and the run's budget, and sent (``workers.exchange``). Every row ends as exactly one
``Outcome`` handed to the caller's ``sink`` from a single drain task, in completion
order. A ``JobAbortedError`` (a rejected key) stops every worker at once and is
raised from ``run``.

``Engine.stop`` (a signal, or the budget running out) ends a run gracefully: nothing
more is admitted, rows not yet sent are dropped (they stay pending, for the next run),
requests in flight get ``grace_s`` seconds to finish and are then cancelled.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence

import structlog

from schemas import BadRowError, PromptRow, RowRead
from schemas.plan import Refusal, unreadable
from workers.errors import JobAbortedError
from workers.exchange import Sender
from workers.lane import Lane, Waiting
from workers.outcome import Outcome, Tally
from workers.quota import Ticket
from workers.retry import RetryPolicy
from workers.spend import BudgetExhaustedError, Spend
from workers.stopping import StopReason

log = structlog.get_logger(__name__)

#: Rows a deployment's head keeps counted and ready, to fill the room at a window's edge.
DEFAULT_LOOKAHEAD = 12
Sink = Callable[[Outcome], Awaitable[None]]
#: The inbox's end-of-input mark, and what a head pulls when nothing is queued yet.
_END, _EMPTY = object(), object()


class Engine:
    """Runs rows through a set of lanes with retries; see the module docstring.

    Per lane, one worker at a time is the *head*: it tops up the lane's small waiting
    room (``lookahead`` rows, planned) from the shared queue, waits for the quota to
    admit one of them — the oldest, or while the oldest has waited less than two
    windows, a younger one that fits the room left at the window's edge — and sends it
    while the next worker becomes head. Rows wait for admission only on the lane that
    will send them, a few per lane at most; the rest stay in the shared queue for
    whichever lane is ready first. How many requests are in flight follows from the
    admitted rate and the latency (Little's law), up to ``Lane.workers``.
    """

    def __init__(self, lanes: Sequence[Lane], policy: RetryPolicy, *, rng: random.Random | None = None,
                 progress_every_s: float = 10.0, lookahead: int = DEFAULT_LOOKAHEAD, spend: Spend | None = None,
                 grace_s: float = 20.0, clock: Callable[[], float] = time.monotonic):
        self.lanes = list(lanes)
        self.lookahead = lookahead
        self.tally = Tally()
        self.spend = spend or Spend(None)
        self.grace_s = grace_s
        self.clock = clock
        self._progress_every_s = progress_every_s
        #: Why the run stopped early, or ``None``.
        self.stopped: StopReason | None = None
        self.sender = Sender(policy, self.spend, rng=rng or random.Random(), clock=clock,
                             stopping=lambda: self.stopped is not None, stop=self.stop)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def in_flight(self) -> int:
        return self.sender.in_flight

    @property
    def peak_in_flight(self) -> int:
        return self.sender.peak_in_flight

    @property
    def abandoned(self) -> int:
        return self.sender.abandoned

    def stop(self, reason: StopReason) -> None:
        """Admit nothing more; let requests in flight finish for ``grace_s`` seconds, then cancel them."""
        if self.stopped is not None or not self._tasks:
            self.stopped = self.stopped or reason
            return
        self.stopped = reason
        log.warning("stopping", reason=reason, in_flight=self.in_flight, grace_s=self.grace_s)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current and task not in self.sender.sending:
                task.cancel()
        asyncio.get_running_loop().call_later(self.grace_s, self.stop_now)

    def stop_now(self) -> None:
        """Cancel everything still running, requests in flight included (their rows stay pending)."""
        late = [t for t in self._tasks if not t.done()]
        if late:
            log.warning("grace_over", cancelled_in_flight=len(late))
        for task in late:
            task.cancel()

    async def run(self, rows: AsyncIterable[RowRead], sink: Sink) -> Tally:
        """Process every row; return the totals. Raises ``JobAbortedError`` on a fatal answer."""
        inbox: asyncio.Queue[object] = asyncio.Queue(maxsize=256)
        # Unbounded, so a finished row is never held up (each worker hands over one at a time).
        outbox: asyncio.Queue[Outcome | None] = asyncio.Queue()

        async def feed() -> None:
            async for item in rows:
                await inbox.put(item)
            await inbox.put(_END)

        async def work(lane: Lane) -> None:
            try:
                while self.stopped is None and (outcome := await self._next(lane, inbox)) is not None:
                    outbox.put_nowait(outcome)
            except asyncio.CancelledError:
                if self.stopped is None:  # not ours: the task group is unwinding
                    raise
            finally:
                outbox.put_nowait(None)

        started = self.clock()
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
                group.create_task(self._drain(outbox, sink, started))
        except BaseExceptionGroup as failed:
            # One failure stopped the run (a rejected key first of all): raise it as itself.
            first = next((e for e in failed.exceptions if isinstance(e, JobAbortedError)), failed.exceptions[0])
            raise first from None
        self._report(self.clock() - started)
        return self.tally

    async def _drain(self, outbox: asyncio.Queue[Outcome | None], sink: Sink, started: float) -> None:
        """Hand every outcome to the sink, in completion order, until every worker has finished."""
        finished, last_report = 0, started
        workers = sum(lane.workers for lane in self.lanes)
        while finished < workers:
            outcome = await outbox.get()
            if outcome is None:
                finished += 1
                continue
            self.tally.add(outcome)
            await sink(outcome)
            now = self.clock()
            if now - last_report >= self._progress_every_s:
                last_report = now
                self._report(now - started)

    def _report(self, elapsed: float) -> None:
        t = self.tally
        log.info("progress", rows=t.rows, **t.by_status, prompt_tokens=t.prompt_tokens,
                 completion_tokens=t.completion_tokens, elapsed_s=round(elapsed, 1),
                 rows_per_min=round(60 * t.rows / elapsed) if elapsed > 0 else None,
                 in_flight=self.in_flight, peak_in_flight=self.peak_in_flight,
                 pauses_429=sum(lane.quota.ledger.pauses for lane in self.lanes))

    @staticmethod
    async def _pull(inbox: asyncio.Queue[object], block: bool) -> object:
        """The next queued item (``_EMPTY`` if none is queued and ``block`` is false); the end stays queued."""
        if block:
            item = await inbox.get()
        else:
            try:
                item = inbox.get_nowait()
            except asyncio.QueueEmpty:
                return _EMPTY
        if item is _END:  # leave it there for every other lane's head too
            inbox.put_nowait(_END)
        return item

    async def _next(self, lane: Lane, inbox: asyncio.Queue[object]) -> Outcome | None:
        """Become head, pick a waiting row and see it to its outcome; ``None`` when the input is done."""
        async with lane.head:
            refused = await self._top_up(lane, inbox)
            if refused is not None:
                return refused
            if not lane.room:
                return None
            if not lane.key_confirmed:
                await lane.probe_finished()
            waiting_and_ticket = await self._admit(lane)
            if waiting_and_ticket is None:
                return None
            waiting, ticket = waiting_and_ticket
        outcome: Outcome | None = None
        try:
            outcome = await self.sender.send(lane, waiting, ticket)
            return outcome
        finally:
            self.spend.settle(waiting.held_usd, outcome.cost_usd if outcome is not None else 0.0)

    async def _top_up(self, lane: Lane, inbox: asyncio.Queue[object]) -> Outcome | None:
        """Fill the lane's room to ``lookahead`` planned rows; a row refused on the way is returned at once."""
        while len(lane.room) < self.lookahead:
            pulled = await self._pull(inbox, not lane.room)  # block only when nothing is waiting
            if pulled is _END or pulled is _EMPTY:
                return None
            if isinstance(pulled, BadRowError):
                return Outcome.refused(pulled.seq, pulled.row_id, unreadable(pulled))
            assert isinstance(pulled, PromptRow)
            planned = lane.plan(pulled)
            if isinstance(planned, Refusal):
                return Outcome.refused(pulled.seq, pulled.id, planned, pulled.digest, pulled.passthrough, lane.model)
            lane.room.append(Waiting(planned, lane.draft(pulled), self.clock(), planned.worst_usd))
        return None

    async def _admit(self, lane: Lane) -> tuple[Waiting, Ticket] | None:
        """Hold the budget for the room's affordable rows, wait for the quota to admit one; take it from the room."""
        try:
            candidates = await self._affordable(lane.room)
        except BudgetExhaustedError as exc:
            log.warning("budget_exhausted", reason=str(exc))
            self.stop(StopReason.BUDGET)
            return None
        held = max(lane.room[i].held_usd for i in candidates)
        self.spend.reserve(held)
        try:
            index, ticket = await lane.quota.admit_first_fit([lane.room[i].planned.charge for i in candidates],
                                                             lane.room[candidates[0]].since)
        except BaseException:
            self.spend.settle(held, 0.0)
            raise
        waiting = lane.room.pop(candidates[index])
        self.spend.settle(held - waiting.held_usd, 0.0)  # keep only the chosen row's worst case
        return waiting, ticket

    async def _affordable(self, room: list[Waiting]) -> list[int]:
        """The waiting rows the budget can take now, oldest first; waits while rows in flight settle."""
        while True:
            fitting = [i for i, w in enumerate(room) if self.spend.fits(w.held_usd)]
            if fitting:
                return fitting
            await self.spend.wait_for_room()
