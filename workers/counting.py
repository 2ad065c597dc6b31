"""Prompt-token counts on every core: batches of conversations counted by worker processes.

``CountingPool.map`` takes ``(payload, conversations)`` pairs and yields
``(payload, counts)`` in the same order, ``counts`` holding each model's
``TokenCounter.count_many`` of the conversations. Only the conversations cross to
the workers; the payload (the caller's rows) stays here.

A worker is ``python -m workers.counting``: a fresh interpreter that imports
this package alone (not the caller's ``__main__``, which may be a CLI that imports
Prefect — as ``multiprocessing`` would) and reads the models (names, or a job's own
``ModelInfo``), then pickled batches on stdin, writing
pickled counts on stdout. Workers start with the second batch (a prompt set of one
batch never needs them) and take a few seconds to load their tokenizers;
meanwhile, and whenever every worker has its hands full, batches are counted here,
so nothing waits for a worker. By default there is one worker per core but one:
this process counts too. At most ``ahead`` batches are in flight; the workers are
stopped on exit, whatever they were doing.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import IO, Any, TypeVar

from schemas import ModelInfo
from workers.tokens import TokenCounter, TokenizeError

P = TypeVar("P")
#: A model by its catalog name, or as a job describes it; counts are keyed by the name or ``ModelInfo.name``.
Model = str | ModelInfo
Conversation = Sequence[dict[str, str]]
Counts = dict[str, list[int | TokenizeError]]

_READY = "ready"


class CountingError(RuntimeError):
    """A counting worker died."""


class _Worker:
    """One counting process and the thread that reads its answers."""

    def __init__(self, models: Sequence[Model]):
        self.process = subprocess.Popen([sys.executable, "-m", __name__],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.answers: queue.Queue[Any] = queue.Queue()
        self.ready = False
        self.failed = False
        self.sent = 0
        self.answered = 0  # by the reader thread, as answers arrive
        # Writes go through a thread: the worker reads a batch only once it is done with the last
        # one, and a write larger than the pipe's buffer would hold this process up until then.
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        self._outbox.put(pickle.dumps(list(models), protocol=pickle.HIGHEST_PROTOCOL))
        threading.Thread(target=self._read, daemon=True, name="counting-reader").start()
        threading.Thread(target=self._write, daemon=True, name="counting-writer").start()

    def _write(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            while (batch := self._outbox.get()) is not None:
                stdin.write(batch)
                stdin.flush()
            stdin.close()
        except OSError:
            pass  # the process is gone: the reader says so

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while True:
                answer = pickle.load(stdout)
                if answer != _READY:
                    self.answered += 1
                self.answers.put(answer)
        except (EOFError, OSError, pickle.UnpicklingError):
            self.answers.put(None)  # the process is gone

    def poll_ready(self, timeout: float = 0.0) -> bool:
        """Whether the worker has loaded its tokenizers; a worker that died starting never is."""
        if not self.ready and not self.failed:
            try:
                self.ready = self.answers.get(block=timeout > 0, timeout=timeout or None) == _READY
            except queue.Empty:
                pass
            self.failed = not self.ready and self.process.poll() is not None
        return self.ready

    def send(self, conversations: Sequence[Conversation]) -> None:
        self._outbox.put(pickle.dumps(conversations, protocol=pickle.HIGHEST_PROTOCOL))
        self.sent += 1

    def counts(self) -> Counts:
        """The counts of the oldest batch sent and not yet answered (waits for them)."""
        answer: Counts | None = self.answers.get()
        if answer is None:
            raise CountingError(f"a token-counting process exited (code {self.process.wait()})")
        return answer

    def stop(self) -> None:
        """End the process at once: every answer wanted has been read (or is no longer wanted)."""
        self._outbox.put(None)
        self.process.kill()
        self.process.wait()


class CountingPool:
    """Counts batches of conversations with several models' tokenizers, here and in ``processes`` workers."""

    def __init__(self, models: Sequence[Model], processes: int | None = None, ahead: int = 8):
        self.processes = processes if processes is not None else (os.cpu_count() or 1) - 1
        self.ahead = ahead
        self._models = list(models)
        self._local = _counters(models)
        self._workers: list[_Worker] = []
        self.counted_here = 0
        self.counted_by_workers = 0

    def _here(self, conversations: Sequence[Conversation]) -> Counts:
        self.counted_here += 1
        return _count(self._local, conversations)

    def start(self) -> None:
        """Start the workers (``map`` does when a second batch comes: one batch is counted here)."""
        if not self._workers:
            self._workers = [_Worker(self._models) for _ in range(self.processes)]

    def wait_ready(self, timeout: float) -> bool:
        """Start the workers and wait up to ``timeout`` seconds for them to be ready; whether they all are."""
        self.start()
        return all(worker.poll_ready(timeout) for worker in self._workers)

    def _idle(self) -> _Worker | None:
        """A ready worker with less than two batches to do (so that it never waits for the next one)."""
        return min((w for w in self._workers if w.sent - w.answered < 2 and w.poll_ready()),
                   key=lambda w: w.sent - w.answered, default=None)

    def map(self, batches: Iterable[tuple[P, Sequence[Conversation]]]) -> Iterator[tuple[P, Counts]]:
        """Each batch's payload and counts, in the order the batches came.

        A batch goes to a worker that has room, else it is counted here: the work
        balances itself between this process (which also reads the input) and the
        workers, and a worker still starting never holds anything up.
        """
        pending: deque[tuple[P, Counts | _Worker]] = deque()
        for seen, (payload, conversations) in enumerate(batches):
            if seen == 1:
                self.start()
            worker = self._idle()
            if worker is None:
                pending.append((payload, self._here(conversations)))
            else:
                worker.send(conversations)
                pending.append((payload, worker))
                self.counted_by_workers += 1
            while pending and (len(pending) >= self.ahead or _done(pending[0][1])):
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def __enter__(self) -> CountingPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _done(counts: Counts | _Worker) -> bool:
    return not isinstance(counts, _Worker) or not counts.answers.empty()


def _result(entry: tuple[P, Counts | _Worker]) -> tuple[P, Counts]:
    payload, counts = entry
    return payload, counts.counts() if isinstance(counts, _Worker) else counts


def _count(counters: dict[str, TokenCounter], conversations: Sequence[Conversation]) -> Counts:
    return {model: counter.count_many(conversations) for model, counter in counters.items()}


def _counters(models: Sequence[Model]) -> dict[str, TokenCounter]:
    return {model if isinstance(model, str) else model.name: TokenCounter(model) for model in models}


def _serve(source: IO[bytes], sink: IO[bytes]) -> None:
    """A worker's loop: the models in, counters loaded, then a batch in, its counts out, until end of input."""
    counters = _counters(pickle.load(source))
    pickle.dump(_READY, sink)
    sink.flush()
    while True:
        try:
            conversations = pickle.load(source)
        except EOFError:
            return
        pickle.dump(_count(counters, conversations), sink, protocol=pickle.HIGHEST_PROTOCOL)
        sink.flush()


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
