"""The job's body without orchestration: rows from storage, through the pool, into parts.

The Prefect task ``process_rows`` wraps ``execute``; the benchmarks call it directly so
they measure the same code path users run. A run does one slice of the job's shards
(``schemas.ShardLayout``): the whole job when it runs alone, one of n when scaled out.

Every finished row goes to the journal (durable at once) and to its shard's part
(published when the shard is whole). Rows an earlier run finished are not sent again:
those in kept parts are skipped while reading; any other row whose identity (id and
request digest) has an earlier answer in the pool (``flows.resume``) takes it and goes
straight back to the part writer. A row whose request is identical to an earlier row's
(``workers.dedupe``) is not sent: it takes that row's answer when it comes (or came, in an
earlier run) and records ``duplicate_of``. ``Placement`` does that routing.

The run's helpers — the signal handlers, the metrics watch, the progress reporter, the
deployments' clients and the shares of shared quotas — are entered in one ``AsyncExitStack`` and
leave it in reverse order, whether the run finished, stopped or failed; the journal is
written inside it (``Placement.recording``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import structlog

from flows.errors import JobError, JobStoppedError
from flows.execution import BAD_INPUT_LISTED, Execution
from flows.inputs import Reading, ShardRead, iter_items, scan_columns, stream
from flows.journal import Journal
from flows.lanes import api_key, lane_for
from flows.metrics import Recorder
from flows.parts import PartSummary, PartWriter, summarize
from flows.resume import Earlier, KeptAnswers
from flows.signals import stop_on_signals
from flows.snapshot import Listener, Reporter, Snapshot
from flows.storage import StorageError, storage_for
from flows.watch import Save, Watch
from schemas import BadRowError, InputSchema, JobSpec, PassthroughError, PromptRow, ShardLayout, with_labels
from workers import Engine, Lane, Outcome, RetryPolicy, Spend
from workers.dedupe import Duplicates, copy_record
from workers.labels import label_columns
from workers.pool import DEFAULT_LOOKAHEAD

if TYPE_CHECKING:
    from flows.shared_quota import Holder

__all__ = ["BAD_INPUT_LISTED", "Execution", "JobError", "JobStoppedError", "Listener", "Snapshot", "api_key",
           "execute", "lane_for", "part_columns"]

log = structlog.get_logger(__name__)

Checkpoint = Callable[[list[PartSummary]], Awaitable[None]]


def part_columns(spec: JobSpec, columns: InputSchema) -> pa.Schema:
    """What follows our columns in every part: the job's label columns, then the passthrough columns."""
    try:
        return with_labels(spec.response.columns if spec.response is not None else None, columns.passthrough)
    except PassthroughError as exc:
        raise JobError(str(exc)) from None


async def execute(spec: JobSpec, files: list[str], *, lookahead: int = DEFAULT_LOOKAHEAD,
                  earlier: Earlier | None = None, checkpoint: Checkpoint | None = None,
                  handle_signals: bool = True, layout: ShardLayout | None = None,
                  shares: Sequence[Holder] | None = None, listeners: Sequence[Listener] = (),
                  rows_total: int | None = None, columns: InputSchema | None = None,
                  metrics: Recorder | None = None,
                  save_metrics: Save | None = None, clock: Callable[[], float] = time.monotonic) -> Execution:
    """Send every row of ``files`` not yet done through the job's deployments; publish parts.

    Returns when every row is done, or when the run was stopped (a signal, the budget):
    then ``Execution.stopped`` says why and the journal holds what finished.

    ``layout``: the slice of the job's shards to do (default: all of them; one of n
    processes sharing the job does shards i modulo n: ``shares``, one per endpoint, hold
    this process's share of each deployment's quota (``flows.shared_quota``) and tell the
    others what it learns of the real quotas, and the budget left is split n ways).
    ``listeners`` get a ``Snapshot`` every few seconds; ``rows_total`` is the input's
    length when known beforehand. ``columns``: the output's passthrough
    columns, decided from the whole input (``flows.inputs.scan_columns``). ``metrics``:
    the run's recorder (``flows.watch``), saved now and then and at the end through
    ``save_metrics``. ``clock``: what the engine and the quotas read the time from.
    """
    progress = earlier or Earlier(spec.shard_rows)
    layout = layout or progress.layout
    lanes = await _lanes(spec, shares is not None, clock)
    spend = Spend(_budget(spec.budget_usd, progress.spent_usd, layout), progress.spent_usd)
    engine = Engine(lanes, RetryPolicy(max_attempts=spec.max_attempts), lookahead=lookahead, spend=spend,
                    grace_s=spec.stop_grace_s, clock=clock)
    if columns is None:
        columns = await asyncio.to_thread(scan_columns, storage_for(spec.input), files)
    execution = Execution([], engine.tally, engine, Reading(), layout, resumed_rows=progress.kept_rows(layout))
    placement = Placement(spec, progress, execution, columns, checkpoint,
                          Watch(metrics, lanes, spend, save_metrics) if metrics is not None else None)
    skip = progress.done_shard if layout.whole else (lambda seq: not layout.owns_row(seq) or progress.done_shard(seq))
    batches = iter_items(spec, storage_for(spec.input), files, skip=skip, reading=execution.reading,
                         layout=progress.layout, mixed_ids=columns.mixed_ids)
    reporter = Reporter(execution, spend, lanes, listeners, stated_tpm=sum(e.tokens_per_minute
                                                                           for e in spec.all_endpoints),
                        rows_total=rows_total, clock=clock)
    async with AsyncExitStack() as helpers:
        helpers.push_async_callback(_close, lanes)
        for lane, holder in zip(lanes, shares, strict=True) if shares is not None else ():
            await helpers.enter_async_context(holder.holding(lane.quota))
        if handle_signals:
            helpers.enter_context(stop_on_signals(engine))
        if placement.watch is not None:
            await helpers.enter_async_context(_watching(placement.watch))
        if listeners:
            await helpers.enter_async_context(_background(reporter.run()))
        async with placement.recording():
            await engine.run(placement.remaining(stream(batches)), placement.sink)
            finished = engine.stopped is None
            await placement.writer.finish(execution.reading.rows, complete=finished)
    # One of several processes leaves earlier runs' segments to the job's last step: they may
    # hold rows of other processes' shards.
    await placement.journal.close(finished=finished and layout.whole)
    if listeners:
        await reporter.final()
    placement.settle()
    if engine.stopped is not None:
        log.warning("stopped", reason=engine.stopped, rows_done=execution.done_rows,
                    input_rows=execution.reading.rows, abandoned_in_flight=engine.abandoned)
    return execution


async def _lanes(spec: JobSpec, shared: bool, clock: Callable[[], float]) -> list[Lane]:
    """One lane per deployment, its key read now."""
    endpoints = spec.all_endpoints
    keys = [await api_key(e) for e in endpoints]
    return [lane_for(e, key, spec.price(e.model), shared, spec.model_for(e), spec.response, clock=clock)
            for e, key in zip(endpoints, keys, strict=True)]


def _budget(limit: float | None, spent: float, layout: ShardLayout) -> float | None:
    """The run's budget: the job's, its remainder split between the slices running at once."""
    if limit is None or layout.whole:
        return limit
    return spent + max(0.0, limit - spent) / layout.count


async def _close(lanes: Sequence[Lane]) -> None:
    for lane in lanes:
        await lane.client.aclose()


@asynccontextmanager
async def _background(job: Awaitable[None]) -> AsyncIterator[None]:
    """``job`` runs while inside; cancelled on the way out."""
    task = asyncio.ensure_future(job)
    try:
        yield
    finally:
        task.cancel()


@asynccontextmanager
async def _watching(watch: Watch) -> AsyncIterator[None]:
    """The metrics watch runs while inside; saved on the way out, unless storage just failed."""
    task = asyncio.create_task(watch.run())
    try:
        yield
    finally:
        task.cancel()
        # Storage that just failed would only make the stop wait out its retries once more.
        await watch.close(save=not isinstance(sys.exc_info()[1], StorageError | OSError))


class Placement:
    """Where each row's result goes: the journal and its shard's part, resumed and duplicate rows too."""

    def __init__(self, spec: JobSpec, progress: Earlier, execution: Execution, columns: InputSchema,
                 checkpoint: Checkpoint | None, watch: Watch | None):
        self.spec = spec
        self.progress = progress
        self.execution = execution
        self.watch = watch
        self._checkpoint = checkpoint
        out = storage_for(spec.output)
        self.parts = dict(progress.kept)
        self.journal = Journal(out, spec.output, progress.layout, job_hash=spec.job_hash())
        self.journal.adopt(progress.segments)
        response = spec.response
        self.writer = PartWriter(
            out, spec.output, progress.layout, on_published=self._published, job_hash=spec.job_hash(),
            passthrough=part_columns(spec, columns),
            derive=(lambda r: label_columns(response, r)) if response is not None else None,
            enums=[f"label_{name}" for name in response.enum_fields] if response is not None else ())
        self.dupes: Duplicates[PromptRow] = Duplicates()
        if spec.dedupes and progress.kept:
            self.dupes.lookup = KeptAnswers(out, spec.output, sorted(progress.kept))

    async def _published(self, summary: PartSummary) -> None:
        self.journal.published(summary.shard)
        self.parts[summary.shard] = summary
        if self._checkpoint is not None:
            await self._checkpoint(list(self.parts.values()))

    def _place(self, seq: int, ours: dict[str, Any], passthrough: Mapping[str, Any]) -> None:
        """Journal the row (our columns) and hand it, with its passthrough columns, to its part."""
        self.journal.add(seq, ours)
        self.writer.add(seq, {**ours, **passthrough})

    def _place_copy(self, seq: int, ours: dict[str, Any], passthrough: Mapping[str, Any]) -> None:
        self.execution.duplicate_rows += 1
        if self.watch is not None:
            self.watch.copy(ours)
        self._place(seq, ours, passthrough)

    async def sink(self, outcome: Outcome) -> None:
        """A row the engine finished: recorded, and any row waiting for the same request's answer with it."""
        if self.watch is not None:
            self.watch.row(outcome)
        ours = outcome.columns()
        self._place(outcome.seq, ours, outcome.passthrough)
        if outcome.refusal is not None:
            self.execution.bad_row(outcome.refusal.detail)
        if self.spec.dedupes and outcome.digest is not None:
            for copy in self.dupes.answered(outcome.digest, ours):
                self._place_copy(copy.seq, copy_record(ours, copy.id), copy.passthrough)

    async def remaining(self, items: AsyncIterator[Any]) -> AsyncIterator[PromptRow | BadRowError]:
        """The rows read that still need sending (see the module docstring for the others)."""
        async for item in items:
            if isinstance(item, ShardRead):
                self.writer.shard_read(item.shard, item.digest, item.rows)
            elif not isinstance(item, PromptRow):
                yield item
            elif not self._answered_earlier(item) and not self._duplicate(item):
                yield item

    def _answered_earlier(self, row: PromptRow) -> bool:
        answer = self.progress.pool.take(row.id, row.digest)
        if answer is None:
            return False
        self.execution.reused_rows += 1
        self.execution.resumed_rows += 1
        self.writer.add(row.seq, {**answer, **row.passthrough})
        if self.spec.dedupes:
            self.dupes.known(row.digest, answer)
        return True

    def _duplicate(self, row: PromptRow) -> bool:
        if not self.spec.dedupes:
            return False
        plan, original = self.dupes.plan(row.digest, row.id, row)
        if plan == "wait":
            return True
        if original is not None:
            self._place_copy(row.seq, copy_record(original, row.id), row.passthrough)
            return True
        return False

    @asynccontextmanager
    async def recording(self) -> AsyncIterator[None]:
        """The journal is written while inside; on a failure (a rejected key, a storage failure) what
        finished is kept, journal and open parts closed as they are: the next run resumes from them."""
        self.journal.start()
        try:
            yield
        except BaseException:
            await asyncio.gather(self.journal.close(finished=False), self.writer.finish(None, complete=False),
                                 return_exceptions=True)
            raise

    def settle(self) -> None:
        """After the run: its parts, and what is left for the next run (the pool's answers, open shards)."""
        execution, pool, whole = self.execution, self.progress.pool, self.execution.layout.whole
        execution.parts = sorted(self.parts.values(), key=lambda p: p.shard)
        if execution.stopped is None:
            execution.dropped_rows = pool.size
            return
        execution.unplaced_rows = pool.size if whole else 0
        waiting = self.writer.open_records() + (pool.records() if whole else [])
        execution.pending = summarize("_journal", -1, waiting) if waiting else None

