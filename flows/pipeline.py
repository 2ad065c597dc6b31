"""The job's body without orchestration: rows from storage, through the pool, into parts.

The Prefect task ``process_rows`` wraps ``execute``; the benchmarks call it directly so
they measure the same code path users run.

Every finished row goes to the journal (durable at once) and to its shard's part
(published when the shard is whole). Rows an earlier run finished are not sent again:
those in kept parts are skipped while reading; any other row whose identity (id and
request digest) has an earlier answer in the pool (``flows.resume``) takes it and goes
straight back to the part writer. A row whose request is identical to an earlier row's
(``workers.dedupe``) is not sent: it takes that row's answer when it comes (or came, in an
earlier run) and records ``duplicate_of``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import structlog

from flows.inputs import Reading, ShardRead, iter_items, scan_columns, stream
from flows.journal import Journal
from flows.logs import register_secret
from flows.metrics import Recorder
from flows.parts import PartSummary, PartWriter, summarize
from flows.resume import Earlier, KeptAnswers
from flows.storage import StorageError, storage_for
from flows.watch import Save, Watch
from schemas import (
    OUTPUT_SCHEMA,
    BadRowError,
    EndpointSpec,
    InputSchema,
    JobSpec,
    ModelInfo,
    PassthroughError,
    Price,
    PromptRow,
    ResponseSpec,
    with_labels,
)
from workers import EndpointClient, Engine, Lane, Outcome, Quota, RetryPolicy, Spend, Tally, TokenCounter
from workers.dedupe import Duplicates, copy_record
from workers.labels import label_columns
from workers.pool import DEFAULT_LOOKAHEAD
from workers.quota import Credit

log = structlog.get_logger(__name__)

#: Bad rows named one by one in the manifest and the summary; the rest are counted.
BAD_INPUT_LISTED = 20
Checkpoint = Callable[[list[PartSummary]], Awaitable[None]]
#: Every ``PROGRESS_EVERY_S`` seconds while rows are sent, each listener gets a ``Snapshot``.
PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class Snapshot:
    """How far a run has got: for progress bars and progress artifacts."""

    rows_done: int
    rows_total: int | None
    tokens_per_minute: float
    quota_tokens_per_minute: int
    cost_usd: float
    elapsed_s: float
    #: What the deployments are believed to admit, when that is not what the job states.
    learned_tokens_per_minute: int | None = None

    @property
    def fraction(self) -> float | None:
        if not self.rows_total:
            return None
        return min(1.0, self.rows_done / self.rows_total)


Listener = Callable[[Snapshot], Awaitable[None]]


class JobError(RuntimeError):
    """The job cannot run as configured; the message says what to change."""


class JobStoppedError(RuntimeError):
    """The run stopped before every row was done (``reason``: a signal's name, or ``budget``).

    What finished is published and the manifest written; running the job again resumes.
    ``summary`` holds the manifest's totals.
    """

    def __init__(self, reason: str, summary: dict[str, Any]):
        self.reason = reason
        self.summary = summary
        rows = summary["rows"]["total"]
        total = summary.get("input_rows")
        of = f" of {total}" if total is not None else ""
        if reason == "budget":
            what = (f"budget_usd reached: ${summary['cost_usd']['total']:.4f} spent, {rows}{of} rows done; "
                    "raise budget_usd and run the job again to finish the rest")
        else:
            what = f"stopped by {reason} with {rows}{of} rows done; run the same command again to resume"
        super().__init__(what)


@dataclass
class Execution:
    """What one run of the pool produced."""

    parts: list[PartSummary]
    tally: Tally
    engine: Engine
    reading: Reading
    resumed_rows: int = 0
    #: Rows that took an earlier answer from the pool (counted in ``resumed_rows`` too).
    reused_rows: int = 0
    #: Rows not sent because an identical request was (``duplicate_of``), placed in this run.
    duplicate_rows: int = 0
    #: Earlier answers no input row claimed (their rows left the input): dropped when complete.
    dropped_rows: int = 0
    #: Rows finished but not yet in a published part (they are in the journal).
    pending: PartSummary | None = None
    bad_input: list[str] = field(default_factory=list)
    bad_input_rows: int = 0
    #: ``(i, n)`` when this run does one slice of the job's shards (rows counted are its own).
    part: tuple[int, int] | None = None
    shard_rows: int = 0

    def rows_in_part(self, total: int | None) -> int | None:
        """Rows of the input this run is to do: all of them, or its slice's shards'."""
        if total is None or self.part is None:
            return total
        index, count = self.part
        shards = -(-total // self.shard_rows)
        return sum(min(self.shard_rows, total - s * self.shard_rows) for s in range(index, shards, count))

    @property
    def stopped(self) -> str | None:
        """Why the run ended before every row was done, or ``None``."""
        return self.engine.stopped

    def quota_learned(self) -> dict[str, dict[str, Any]]:
        """Per deployment whose real quota differs from the job's: what it was found to admit."""
        found = {}
        for lane in self.engine.lanes:
            ledger = lane.quota.ledger
            requests, tokens = ledger.learned_per_minute
            if (requests, tokens) != (ledger.stated_rpm, ledger.stated_tpm):
                found[lane.client.spec.url] = {
                    "tokens_per_minute": tokens, "requests_per_minute": requests,
                    "job_says": {"tokens_per_minute": ledger.stated_tpm, "requests_per_minute": ledger.stated_rpm},
                    "rate_limited_pauses": ledger.pauses}
        return found

    @property
    def done_rows(self) -> int:
        """Rows the output holds, from every run."""
        return self.resumed_rows + self.tally.rows + self.unplaced_rows + self.duplicate_rows

    #: Earlier answers not placed yet (a run stopped before its reading got to their rows).
    unplaced_rows: int = 0


async def api_key(endpoint: EndpointSpec) -> str:
    """A deployment's key, read now — from its Prefect Secret block or its environment variable —
    and registered for redaction before anything can log it."""
    if endpoint.api_key_secret:
        from prefect.blocks.system import Secret

        try:
            block: Any = await Secret.aload(endpoint.api_key_secret)
        except ValueError as exc:  # Prefect's word for a block that does not exist
            raise JobError(f"Prefect Secret block {endpoint.api_key_secret!r} not found: it must hold the "
                           "deployment's key") from exc
        key = str(block.get()).strip()
        where = f"Prefect Secret block {endpoint.api_key_secret!r}"
    else:
        key = os.environ.get(endpoint.api_key_env, "").strip()
        where = f"environment variable {endpoint.api_key_env}"
    if not key:
        raise JobError(f"{where} is not set: it must hold the deployment's key")
    register_secret(key)
    return key


def part_columns(spec: JobSpec, columns: InputSchema) -> pa.Schema:
    """What follows our columns in every part: the job's label columns, then the passthrough columns."""
    try:
        return with_labels(spec.response.columns if spec.response is not None else None, columns.passthrough)
    except PassthroughError as exc:
        raise JobError(str(exc)) from None


def lane_for(endpoint: EndpointSpec, key: str, price: Price | None = None, credit: Credit | None = None,
             on_learned: Callable[[float, float], Awaitable[None]] | None = None,
             model: ModelInfo | None = None, response: ResponseSpec | None = None) -> Lane:
    """A deployment's client, quota and tokenizer, built on the running event loop.

    ``credit``: the deployment's quota is shared with other processes (a scaled-out job);
    ``on_learned`` hears what this process learned of the real quota, to share it.
    ``model``: the model as the job resolves it (``JobSpec.model_for``); by default the catalog's.
    ``response``: a labeling job's expected answer (the client asks for it, the pool validates it).
    """
    quota = Quota(endpoint.requests_per_minute, endpoint.tokens_per_minute, window_s=endpoint.quota_window_s,
                  credit=credit, mode=endpoint.quota, name=endpoint.url, on_learned=on_learned)
    return Lane(EndpointClient(endpoint, key, response=response), quota, TokenCounter(model or endpoint.model),
                endpoint.max_concurrency, price=price)


async def execute(spec: JobSpec, files: list[str], *, lookahead: int = DEFAULT_LOOKAHEAD,
                  progress: Earlier | None = None, checkpoint: Checkpoint | None = None,
                  handle_signals: bool = True, part: tuple[int, int] | None = None,
                  credits: Sequence[Credit] | None = None, listeners: Sequence[Listener] = (),
                  rows_total: int | None = None, columns: InputSchema | None = None,
                  learners: Sequence[Callable[[float, float], Awaitable[None]]] | None = None,
                  metrics: Recorder | None = None, save_metrics: Save | None = None) -> Execution:
    """Send every row of ``files`` not yet done through the job's deployments; publish parts.

    Returns when every row is done, or when the run was stopped (a signal, the budget):
    then ``Execution.stopped`` says why and the journal holds what finished.

    ``part=(i, n)``: only the shards numbered i modulo n (one of n processes sharing the
    job; ``credits``, one per endpoint, share the deployments' quotas between them, and
    the budget left is split n ways). ``listeners`` get a ``Snapshot`` every few seconds;
    ``rows_total`` is the input's length when known beforehand; ``learners``, one per
    endpoint beside ``credits``, hear what this process learns of the real quotas.
    ``columns``: the output's passthrough columns, decided from the whole input
    (``flows.inputs.scan_columns``). ``metrics``: the run's recorder (``flows.watch``),
    saved now and then and at the end through ``save_metrics``.
    """
    progress = progress or Earlier(spec.shard_rows)
    keys = [await api_key(e) for e in spec.all_endpoints]
    shared = list(credits) if credits is not None else [None] * len(spec.all_endpoints)
    told = list(learners) if learners is not None else [None] * len(spec.all_endpoints)
    lanes = [lane_for(e, key, spec.price(e.model), credit, learner, spec.model_for(e), spec.response)
             for e, key, credit, learner in zip(spec.all_endpoints, keys, shared, told, strict=True)]
    limit = spec.budget_usd
    if limit is not None and part is not None:
        limit = progress.spent_usd + max(0.0, limit - progress.spent_usd) / part[1]
    spend = Spend(limit, progress.spent_usd)
    engine = Engine(lanes, RetryPolicy(max_attempts=spec.max_attempts), lookahead=lookahead, spend=spend,
                    grace_s=spec.stop_grace_s)
    out = storage_for(spec.output)
    journal = Journal(out, spec.output, progress.shard_rows, job_hash=spec.job_hash())
    journal.adopt(progress.segments)
    parts = dict(progress.kept)

    async def published(summary: PartSummary) -> None:
        journal.published(summary.shard)
        parts[summary.shard] = summary
        if checkpoint is not None:
            await checkpoint(list(parts.values()))

    if columns is None:
        columns = await asyncio.to_thread(scan_columns, storage_for(spec.input), files)
    response = spec.response
    writer = PartWriter(out, spec.output, progress.shard_rows, on_published=published, job_hash=spec.job_hash(),
                        passthrough=part_columns(spec, columns),
                        derive=(lambda r: label_columns(response, r)) if response is not None else None,
                        enums=[f"label_{name}" for name in response.enum_fields] if response is not None else ())
    resumed = sum(p.rows for shard, p in progress.kept.items() if part is None or shard % part[1] == part[0])
    execution = Execution([], engine.tally, engine, Reading(), resumed_rows=resumed, part=part,
                          shard_rows=progress.shard_rows)

    dupes: Duplicates[PromptRow] = Duplicates()
    if spec.dedupes and progress.kept:
        dupes.lookup = KeptAnswers(out, spec.output, sorted(progress.kept))
    watch = Watch(metrics, lanes, spend, save_metrics) if metrics is not None else None

    def place(seq: int, record: dict[str, Any], passthrough: Any, ours: dict[str, Any] | None = None) -> None:
        """Journal the row (``ours``: its output columns, when the caller has them) and hand it to its part."""
        journal.add(seq, ours if ours is not None else {name: record[name] for name in OUTPUT_SCHEMA.names})
        writer.add(seq, {**record, **passthrough})

    def place_copy(seq: int, record: dict[str, Any], passthrough: Any) -> None:
        execution.duplicate_rows += 1
        if watch is not None:
            watch.copy(record)
        place(seq, record, passthrough)

    async def sink(outcome: Outcome) -> None:
        record = outcome.record(spec.price(outcome.model) if outcome.model else None)
        if watch is not None:
            watch.row(outcome, record)
        ours = {name: record[name] for name in OUTPUT_SCHEMA.names}
        place(outcome.seq, record, {}, ours)
        if outcome.error is not None and outcome.error.startswith("bad input: "):
            execution.bad_input_rows += 1
            if len(execution.bad_input) < BAD_INPUT_LISTED:
                execution.bad_input.append(outcome.error.removeprefix("bad input: "))
        if spec.dedupes and outcome.digest is not None:
            for copy in dupes.answered(outcome.digest, ours):
                place_copy(copy.seq, copy_record(ours, copy.id), copy.passthrough)

    async def remaining(items: AsyncIterator[Any]) -> AsyncIterator[PromptRow | BadRowError]:
        async for item in items:
            if isinstance(item, ShardRead):
                writer.shard_read(item.shard, item.digest, item.rows)
                continue
            answer = progress.pool.take(item.id, item.digest) if isinstance(item, PromptRow) else None
            if answer is not None:
                execution.reused_rows += 1
                execution.resumed_rows += 1
                writer.add(item.seq, {**answer, **item.passthrough})
                if spec.dedupes:
                    dupes.known(item.digest, answer)
                continue
            if spec.dedupes and isinstance(item, PromptRow):
                plan, original = dupes.plan(item.digest, item.id, item)
                if plan == "wait":
                    continue
                if original is not None:
                    place_copy(item.seq, copy_record(original, item.id), item.passthrough)
                    continue
            yield item

    skip = progress.done_shard
    if part is not None:
        index, count = part
        shard_rows = progress.shard_rows
        skip = lambda seq: (seq // shard_rows) % count != index or progress.done_shard(seq)  # noqa: E731
    batches = iter_items(spec, storage_for(spec.input), files, skip=skip, reading=execution.reading,
                         shard_rows=progress.shard_rows, mixed_ids=columns.mixed_ids)
    journal.start()
    restore = _on_signals(engine) if handle_signals else None
    started = time.monotonic()
    reporter = (asyncio.create_task(_report(execution, spend, spec, lanes, listeners, rows_total, started))
                if listeners else None)
    watching = asyncio.create_task(watch.run()) if watch is not None else None
    try:
        await engine.run(remaining(stream(batches)), sink)
        finished = engine.stopped is None
        await writer.finish(execution.reading.rows, complete=finished)
    except BaseException:
        # Keep what finished (a rejected key, a storage failure): the next run resumes from it.
        await asyncio.gather(journal.close(finished=False), writer.finish(None, complete=False),
                             return_exceptions=True)
        raise
    finally:
        if reporter is not None:
            reporter.cancel()
        if watching is not None and watch is not None:
            watching.cancel()
            # Storage that just failed would only make the stop wait out its retries once more.
            await watch.close(save=not isinstance(sys.exc_info()[1], StorageError | OSError))
        if restore is not None:
            restore()
        for lane in lanes:
            await lane.client.aclose()
            if lane.quota.credit is not None:
                await lane.quota.credit.aclose()
    # One of several processes leaves earlier runs' segments to the job's last step: they may
    # hold rows of other processes' shards.
    await journal.close(finished=finished and part is None)
    if listeners:
        elapsed = time.monotonic() - started
        average = sum(lane.quota.ledger.charged_tokens for lane in lanes) * 60 / elapsed if elapsed > 0 else 0.0
        await _tell(listeners, _snapshot(execution, spend, spec, rows_total, elapsed, average))
    execution.parts = sorted(parts.values(), key=lambda p: p.shard)
    if finished:
        execution.dropped_rows = progress.pool.size
    else:
        held = writer.open_records()
        execution.unplaced_rows = progress.pool.size if part is None else 0
        waiting = held + (progress.pool.records() if part is None else [])
        execution.pending = summarize("_journal", -1, waiting) if waiting else None
    if engine.stopped is not None:
        log.warning("stopped", reason=engine.stopped, rows_done=execution.done_rows,
                    input_rows=execution.reading.rows, abandoned_in_flight=engine.abandoned)
    return execution


def _snapshot(execution: Execution, spend: Spend, spec: JobSpec, rows_total: int | None, elapsed: float,
              tokens_per_minute: float) -> Snapshot:
    total = execution.rows_in_part(execution.reading.rows if execution.reading.rows is not None else rows_total)
    stated = sum(e.tokens_per_minute for e in spec.all_endpoints)
    learned = sum(lane.quota.ledger.learned_per_minute[1] for lane in execution.engine.lanes)
    return Snapshot(execution.done_rows, total, tokens_per_minute, stated, spend.spent_usd, elapsed,
                    learned if learned != stated else None)


async def _tell(listeners: Sequence[Listener], snapshot: Snapshot) -> None:
    for listener in listeners:
        try:
            await listener(snapshot)
        except Exception as exc:  # a progress display must never stop the job
            log.warning("progress_listener_failed", error=repr(exc))


async def _report(execution: Execution, spend: Spend, spec: JobSpec, lanes: list[Lane],
                  listeners: Sequence[Listener], rows_total: int | None, started: float) -> None:
    """Tell the listeners how far the run has got, every ``PROGRESS_EVERY_S`` seconds."""
    last = time.monotonic()
    admitted = sum(lane.quota.ledger.charged_tokens for lane in lanes)
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        now = time.monotonic()
        total = sum(lane.quota.ledger.charged_tokens for lane in lanes)
        rate = (total - admitted) * 60 / (now - last)
        admitted, last = total, now
        await _tell(listeners, _snapshot(execution, spend, spec, rows_total, now - started, rate))


def _on_signals(engine: Engine) -> Callable[[], None] | None:
    """SIGINT/SIGTERM stop the engine gracefully; a second one ends the grace period at once."""
    if threading.current_thread() is not threading.main_thread():
        return None  # only the main thread receives signals; the caller stops the run some other way
    loop = asyncio.get_running_loop()
    caught = {"count": 0}

    def handle(signum: int) -> None:
        caught["count"] += 1
        name = signal.Signals(signum).name
        if caught["count"] == 1:
            engine.stop(name)
        else:
            log.warning("stopping_now", signal=name)
            engine.stop_now()

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, handle, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass

    def restore() -> None:
        for signum in installed:
            loop.remove_signal_handler(signum)

    return restore
