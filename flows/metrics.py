"""Run metrics: what a run did, in coarse time buckets, kept in the output folder.

A ``Recorder`` holds one ``Bucket`` per (bucket start, deployment, model): requests and
tokens the deployment's quota was charged, 429s and pauses, rows by status, billed
tokens, cost, retries and a latency histogram (percentiles are read from it, and
histograms add up, so buckets merge exactly). Deployment figures come from sampling
each quota's running counters (``sample``); row figures from each finished row (``row``).
Every method takes ``now`` (seconds since the epoch): buckets are aligned to the clock.

Size is bounded: buckets are ``BUCKET_S`` wide until a series would hold more than
``MAX_BUCKETS`` of them; then neighbours merge pairwise and the width doubles (a
20-hour job ends with buckets of 40 s). The recorder is written to
``_metrics/<name>.parquet`` in the output folder — a folder, so that readers globbing
``folder/*.parquet`` for the output's rows never meet it — every minute while the run
goes and when it ends; a resumed run reads its file back and carries on. A scaled-out
job's slices each write their own; ``read_all`` merges them.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field, fields
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flows.storage import Storage
from schemas import STATUSES

BUCKET_S = 10.0
MAX_BUCKETS = 2048
FOLDER = "_metrics"
#: Latency bin edges: 10 ms × √2ⁱ, up to about 8 minutes; a bin below the first edge and one above the last.
LATENCY_EDGES_MS = tuple(round(10 * 2 ** (i / 2), 1) for i in range(32))
LATENCY_BINS = len(LATENCY_EDGES_MS) + 1
_COUNTS = ("requests", "tokens_charged", "responses_429", "pauses", "prompt_tokens", "completion_tokens", "attempts")
_LEVELS = ("quota_tpm", "quota_rpm", "learned_tpm", "learned_rpm")


def latency_bin(ms: float) -> int:
    """The histogram bin of a latency in milliseconds."""
    if ms < LATENCY_EDGES_MS[0]:
        return 0
    return min(LATENCY_BINS - 1, 1 + int(2 * math.log2(ms / 10) + 1e-9))


def percentile(hist: list[int], q: float) -> float | None:
    """The ``q``-quantile (0–1) of a latency histogram, interpolated within its bin; ``None`` when empty."""
    total = sum(hist)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for i, count in enumerate(hist):
        if count and seen + count >= rank:
            low = 0.0 if i == 0 else LATENCY_EDGES_MS[i - 1]
            if i == LATENCY_BINS - 1:
                return low
            high = LATENCY_EDGES_MS[i]
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return LATENCY_EDGES_MS[-1]


@dataclass
class Bucket:
    """One series' figures over one bucket of time."""

    requests: int = 0
    tokens_charged: int = 0
    responses_429: int = 0
    pauses: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    cost_usd: float = 0.0
    #: The quota the job states, and what the deployment was believed to admit, at the bucket's end.
    quota_tpm: int | None = None
    quota_rpm: int | None = None
    learned_tpm: int | None = None
    learned_rpm: int | None = None
    latency: list[int] = field(default_factory=lambda: [0] * LATENCY_BINS)
    #: Rows finished, by status (``schemas.STATUSES``; written as ``rows_<status>`` columns).
    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))

    def merge(self, later: Bucket) -> None:
        """Add a bucket of the same series; ``later`` is the more recent (its levels win)."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(later, name))
        self.cost_usd += later.cost_usd
        for name in _LEVELS:
            if getattr(later, name) is not None:
                setattr(self, name, getattr(later, name))
        self.latency = [a + b for a, b in zip(self.latency, later.latency, strict=True)]
        for status, count in later.by_status.items():
            self.by_status[status] = self.by_status.get(status, 0) + count

    @property
    def rows(self) -> int:
        return sum(self.by_status.values())


Key = tuple[float, str, str]


class Recorder:
    """Bucketed run metrics (see the module docstring). ``deployment`` and ``model`` are ``""``
    for rows that were never sent (bad input)."""

    def __init__(self, bucket_s: float = BUCKET_S, max_buckets: int = MAX_BUCKETS):
        self.width = bucket_s
        self.max_buckets = max_buckets
        self.buckets: dict[Key, Bucket] = {}
        self._starts: set[float] = set()
        self._last: dict[str, tuple[int, int, int, int]] = {}

    def _bucket(self, now: float, deployment: str, model: str) -> Bucket:
        start = math.floor(now / self.width) * self.width
        key = (start, deployment, model)
        found = self.buckets.get(key)
        if found is not None:
            return found
        if start not in self._starts and len(self._starts) >= self.max_buckets:
            self._coarsen()
            return self._bucket(now, deployment, model)
        self._starts.add(start)
        found = self.buckets[key] = Bucket()
        return found

    def _coarsen(self) -> None:
        """Merge neighbouring buckets pairwise: the width doubles, the count halves."""
        self.width *= 2
        merged: dict[Key, Bucket] = {}
        for (start, deployment, model), bucket in sorted(self.buckets.items()):
            key = (math.floor(start / self.width) * self.width, deployment, model)
            if key in merged:
                merged[key].merge(bucket)
            else:
                merged[key] = bucket
        self.buckets = merged
        self._starts = {k[0] for k in merged}

    def sample(self, now: float, deployment: str, model: str, *, requests: int, tokens: int, responses_429: int,
               pauses: int, quota: tuple[int, int], learned: tuple[int, int]) -> int:
        """Enter a deployment's running counters (requests and tokens charged, 429s, pauses) and its
        quota levels, (tokens/min, requests/min) each; returns the 429s since the last sample."""
        counters = (requests, tokens, responses_429, pauses)
        before = self._last.get(deployment, (0, 0, 0, 0))
        if any(now_ < then for now_, then in zip(counters, before, strict=True)):
            before = (0, 0, 0, 0)  # counters of a new process: they start from nothing
        self._last[deployment] = counters
        delta = [now_ - then for now_, then in zip(counters, before, strict=True)]
        bucket = self._bucket(now, deployment, model)
        bucket.requests += delta[0]
        bucket.tokens_charged += delta[1]
        bucket.responses_429 += delta[2]
        bucket.pauses += delta[3]
        bucket.quota_tpm, bucket.quota_rpm = quota
        bucket.learned_tpm, bucket.learned_rpm = learned
        return delta[2]

    def row(self, now: float, deployment: str | None, model: str | None, status: str, *, prompt_tokens: int = 0,
            completion_tokens: int = 0, cost_usd: float = 0.0, latency_ms: float | None = None,
            attempts: int = 0) -> None:
        """Enter one finished row."""
        bucket = self._bucket(now, deployment or "", model or "")
        key = status if status in bucket.by_status else "error"
        bucket.by_status[key] += 1
        bucket.prompt_tokens += prompt_tokens
        bucket.completion_tokens += completion_tokens
        bucket.cost_usd += cost_usd
        bucket.attempts += attempts
        if latency_ms is not None:
            bucket.latency[latency_bin(latency_ms)] += 1

    def absorb(self, other: Recorder) -> None:
        """Add another recorder's buckets (another slice's, or an earlier file's)."""
        while self.width < other.width:
            self._coarsen()
        for (start, deployment, model), bucket in sorted(other.buckets.items()):
            target = self._bucket(start, deployment, model)
            copy = Bucket(**{f.name: getattr(bucket, f.name) for f in fields(Bucket)})
            copy.latency, copy.by_status = list(bucket.latency), dict(bucket.by_status)
            target.merge(copy)

    # --- on disk -------------------------------------------------------------------------

    def to_table(self) -> pa.Table:
        """One row per bucket and series, in time order; percentiles read from the histograms."""
        keys = sorted(self.buckets)
        columns: dict[str, Any] = {
            "start": pa.array([k[0] * 1000 for k in keys], pa.float64()).cast(pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")),
            "width_s": pa.array([self.width] * len(keys), pa.float64()),
            "deployment": pa.array([k[1] or None for k in keys], pa.string()),
            "model": pa.array([k[2] or None for k in keys], pa.string()),
        }
        rows = [self.buckets[k] for k in keys]
        for name in _COUNTS:
            columns[name] = pa.array([getattr(b, name) for b in rows], pa.int64())
        for status in STATUSES:
            columns[f"rows_{status}"] = pa.array([b.by_status.get(status, 0) for b in rows], pa.int64())
        columns["cost_usd"] = pa.array([b.cost_usd for b in rows], pa.float64())
        for name in _LEVELS:
            columns[name] = pa.array([getattr(b, name) for b in rows], pa.int64())
        for q in (50, 90, 99):
            columns[f"latency_p{q}_ms"] = pa.array([percentile(b.latency, q / 100) for b in rows], pa.float64())
        columns["latency_hist"] = pa.array([b.latency for b in rows], pa.list_(pa.int32()))
        return pa.table(columns).replace_schema_metadata(
            {"latency_edges_ms": ",".join(map(str, LATENCY_EDGES_MS))})

    @classmethod
    def from_table(cls, table: pa.Table, max_buckets: int = MAX_BUCKETS) -> Recorder:
        """A recorder holding a table ``to_table`` wrote."""
        widths = table.column("width_s").to_pylist()
        recorder = cls(widths[0] if widths else BUCKET_S, max_buckets)
        starts = table.column("start").cast(pa.int64()).to_pylist()
        data = table.to_pydict()
        for i, start in enumerate(starts):
            bucket = Bucket(**{name: data[name][i] for name in (*_COUNTS, "cost_usd", *_LEVELS)},
                            latency=list(data["latency_hist"][i]),
                            by_status={s: data.get(f"rows_{s}", [0] * len(starts))[i] or 0 for s in STATUSES})
            key = (start / 1000, data["deployment"][i] or "", data["model"][i] or "")
            recorder.buckets[key] = bucket
            recorder._starts.add(key[0])
        return recorder

    def to_bytes(self) -> bytes:
        sink = io.BytesIO()
        pq.write_table(self.to_table(), sink, compression="zstd")
        return sink.getvalue()


def location(storage: Storage, folder: str, name: str = "run") -> str:
    """Where a run (or a slice, ``name``) keeps its metrics in the output folder."""
    return storage.join(folder, f"{FOLDER}/{name}.parquet")


def write_metrics(storage: Storage, folder: str, recorder: Recorder, name: str = "run") -> str:
    """Publish the recorder atomically; return where."""
    where = location(storage, folder, name)
    storage.write_bytes(where, recorder.to_bytes())
    return where


def read_metrics(storage: Storage, folder: str, name: str = "run") -> Recorder | None:
    """The metrics an earlier run left, ``None`` when there are none (or they cannot be read)."""
    where = location(storage, folder, name)
    if not storage.exists(where):
        return None
    try:
        return Recorder.from_table(pq.read_table(io.BytesIO(storage.read_bytes(where))))
    except (pa.ArrowException, KeyError, ValueError, IndexError):
        return None


def clear_metrics(storage: Storage, folder: str) -> None:
    """Remove every metrics file from the output folder (a fresh start, or ``--overwrite``)."""
    for name in storage.list_names(folder):
        if name.startswith(FOLDER + "/"):
            storage.delete(storage.join(folder, name))


def read_all(storage: Storage, folder: str) -> Recorder:
    """Every metrics file of the output folder (a run's, or a scaled-out job's slices'), merged."""
    merged = Recorder()
    for name in sorted(storage.list_names(folder)):
        if name.startswith(FOLDER + "/") and name.endswith(".parquet"):
            found = read_metrics(storage, folder, name[len(FOLDER) + 1:-len(".parquet")])
            if found is not None:
                merged.absorb(found)
    return merged
