"""The estimate's counting pass: every row of the prompt set, exact prompt tokens for each model.

One pass, streamed: rows are read in batches, tokenized here and by worker processes
(``workers.counting``), tallied per model (``workers.estimate.Counts``) and forgotten,
so memory does not grow with the prompt set. The pass also keeps a uniform sample of
rows that will be sent, for ``flows.estimate_sampling`` to send when asked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import structlog
from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.inputs import Reading, ShardRead, iter_items
from flows.storage import storage_for
from schemas import BadRowError, JobSpec, ModelInfo, PromptRow, RowRead
from workers import TokenizeError
from workers.counting import CountingPool
from workers.counting import Counts as Tokenized
from workers.estimate import Counts, Listed, Reservoir

log = structlog.get_logger(__name__)


@dataclass
class Counting:
    """What one pass over the prompt set found."""

    counts: dict[str, Counts]
    bad_input: Listed
    total_rows: int
    sample: list[PromptRow]
    seconds: float
    empty_files: list[str] = field(default_factory=list)
    #: Rows whose request is identical to an earlier row's: not sent when the job dedupes (not counted above).
    duplicates: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.total_rows / self.seconds if self.seconds > 0 else 0.0


def _models(spec: JobSpec) -> list[ModelInfo]:
    """The job's distinct models, as the job resolves them, in endpoint order."""
    models: dict[str, ModelInfo] = {}
    for endpoint in spec.all_endpoints:
        model = spec.model_for(endpoint)
        models.setdefault(model.name, model)
    return list(models.values())


class _Rows:
    """The prompt set in batches of rows to count: bad rows listed, and, for a job that dedupes,
    a copy of an earlier row's request left out (neither counted nor sent)."""

    def __init__(self, spec: JobSpec, files: list[str]):
        self.spec, self.files = spec, files
        self.bad_input = Listed()
        self.reading = Reading()
        # 64 bits of each request digest seen: for a job that dedupes, a copy is neither counted nor sent.
        self.seen: set[int] | None = set() if spec.dedupes else None
        self.duplicates = 0

    def batches(self) -> Iterator[tuple[list[PromptRow], list[tuple[dict[str, str], ...]]]]:
        """Each batch's rows and their conversations, as the counting pool takes them."""
        for batch in iter_items(self.spec, storage_for(self.spec.input), self.files, batch=2048,
                                reading=self.reading):
            rows = self._kept(batch)
            yield rows, [row.messages for row in rows]

    def _kept(self, batch: list[RowRead | ShardRead]) -> list[PromptRow]:
        rows: list[PromptRow] = []
        for item in batch:
            if isinstance(item, BadRowError):
                self.bad_input.add(str(item))
            elif isinstance(item, PromptRow) and not self._repeats(item):
                rows.append(item)
        return rows

    def _repeats(self, row: PromptRow) -> bool:
        if self.seen is None:
            return False
        key = int(row.digest[:16], 16)
        if key in self.seen:
            self.duplicates += 1
            return True
        self.seen.add(key)
        return False


def _tally(models: list[ModelInfo], counts: dict[str, Counts], rows: list[PromptRow],
           results: Tokenized) -> list[bool]:
    """Count one batch for every model; whether each row will be sent (it fits the first model)."""
    sendable = [True] * len(rows)
    for first, model in enumerate(models):
        tally = counts[model.name]
        for i, (row, result) in enumerate(zip(rows, results[model.name], strict=True)):
            if isinstance(result, TokenizeError):
                tally.refuse(row.where, str(result))
                fits = False
            else:
                fits = tally.add(row.where, result, row.params.max_tokens)
            if first == 0:
                sendable[i] = fits
    return sendable


class _Pace:
    """When the pass started, and a log line at most every ``every_s`` seconds while it runs."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self.started = self.last = time.monotonic()

    def tick(self, rows: list[PromptRow]) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s and rows:
            self.last = now
            done = rows[-1].seq + 1
            log.info("counting", rows=done, rows_per_s=round(done / (now - self.started)))

    def done(self, total: int) -> float:
        """The pass's seconds, logged with its rows."""
        seconds = time.monotonic() - self.started
        log.info("counted", rows=total, seconds=round(seconds, 2),
                 rows_per_s=round(total / seconds) if seconds else None)
        return seconds


@task(name="count-prompts", cache_policy=NO_CACHE)
def count_prompts(spec: JobSpec, files: list[str], sample: int = 0, seed: int = 0,
                  completion_ratio: float | None = None, progress_every_s: float = 10.0,
                  processes: int | None = None) -> Counting:
    """Count every row's prompt tokens exactly, with the tokenizer of each of the job's models.

    Batches are counted here and by ``processes`` worker processes (default: one per
    core but one; see ``workers.counting``), so every core counts. Also
    keeps a uniform sample of ``sample`` rows that will be sent (they fit the first
    model's context and template), for ``sample_completions``.
    """
    models = _models(spec)
    counts = {m.name: Counts(m.name, m.context_tokens, completion_ratio, exact=m.exact) for m in models}
    reservoir: Reservoir[PromptRow] = Reservoir(sample, seed)
    source = _Rows(spec, files)
    pace = _Pace(progress_every_s)
    with CountingPool(models, processes) as pool:
        for rows, results in pool.map(source.batches()):
            sendable = _tally(models, counts, rows, results)
            if sample:
                for row, fits in zip(rows, sendable, strict=True):
                    if fits:
                        reservoir.offer(row)
            pace.tick(rows)
    total = source.reading.rows or 0
    seconds = pace.done(total)
    return Counting(counts, source.bad_input, total, reservoir.items, seconds, source.reading.empty_files,
                    source.duplicates)
