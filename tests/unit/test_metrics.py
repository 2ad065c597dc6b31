"""Run metrics: bucketed by the clock, bounded for long jobs, read back to carry on."""

from __future__ import annotations

import io
import random

import pyarrow.parquet as pq
import pytest

from flows.metrics import BUCKET_S, MAX_BUCKETS, Recorder, latency_bin, percentile

A, B = "https://a.eastus2.inference.ai.azure.com", "https://b.swedencentral.inference.ai.azure.com"
MODEL = "mistral-large-2407"
T0 = 1_800_000_000.0  # a multiple of 10 s


def counters(recorder: Recorder, now: float, url: str, requests: int, tokens: int, e429: int = 0) -> int:
    return recorder.sample(now, url, MODEL, requests=requests, tokens=tokens, responses_429=e429, pauses=e429,
                           quota=(200_000, 1_000), learned=(150_000, 1_000))


class TestRecorder:
    """Samples of running counters become per-bucket amounts; rows land in the bucket they finished in."""

    def test_counters_become_amounts_per_bucket(self) -> None:
        r = Recorder()
        assert counters(r, T0 + 1, A, 3, 900) == 0
        assert counters(r, T0 + 9, A, 5, 1500, e429=2) == 2
        counters(r, T0 + 12, A, 6, 1800, e429=2)
        counters(r, T0 + 13, A, 1, 100)  # a new process's counters start again from nothing
        first, second = r.buckets[(T0, A, MODEL)], r.buckets[(T0 + 10, A, MODEL)]
        assert (first.requests, first.tokens_charged, first.responses_429) == (5, 1500, 2)
        assert (second.requests, second.tokens_charged, second.learned_tpm) == (2, 400, 150_000)

    def test_rows_by_status_tokens_cost_latency(self) -> None:
        r = Recorder()
        for status, ms in (("ok", 80.0), ("ok", 95.0), ("filtered", 40.0), ("error", None)):
            r.row(T0 + 3, A, MODEL, status, prompt_tokens=10, completion_tokens=5, cost_usd=0.01, latency_ms=ms,
                  attempts=1)
        r.row(T0 + 4, None, None, "error")  # bad input: never sent
        b = r.buckets[(T0, A, MODEL)]
        assert (b.by_status, b.prompt_tokens) == ({"ok": 2, "filtered": 1, "error": 1, "invalid": 0}, 40)
        assert b.cost_usd == pytest.approx(0.04) and sum(b.latency) == 3
        assert r.buckets[(T0, "", "")].by_status["error"] == 1
        assert 40 <= (percentile(b.latency, 0.5) or 0) <= 113

    def test_latency_bins_and_percentiles(self) -> None:
        assert latency_bin(5) == 0 and latency_bin(10) == 1 and latency_bin(14.2) == 2 and latency_bin(1e9) == 32
        hist = [0] * 33
        for ms in range(100, 1100):
            hist[latency_bin(ms)] += 1
        assert percentile(hist, 0.5) == pytest.approx(600, rel=0.2)
        assert percentile([0] * 33, 0.5) is None


class TestBounded:
    """A 100,000-row job of 20 hours on two deployments stays small, and resumes where it was."""

    def test_size_and_resume(self) -> None:
        rng = random.Random(7)
        r = Recorder()
        hours, rows = 20, 100_000
        done = {A: [0, 0, 0], B: [0, 0, 0]}
        for i in range(rows):
            now = T0 + i * hours * 3600 / rows
            url = (A, B)[i % 2]
            done[url][0] += 1
            done[url][1] += 800
            done[url][2] += rng.random() < 0.02
            r.row(now, url, MODEL, "ok" if rng.random() > 0.01 else "error", prompt_tokens=300,
                  completion_tokens=rng.randint(50, 500), cost_usd=0.001, latency_ms=rng.lognormvariate(7, 0.6))
            if i % 10 == 0:
                counters(r, now, url, done[url][0], done[url][1], done[url][2])
        data = r.to_bytes()
        assert len(data) < 1_000_000
        assert len({k[0] for k in r.buckets}) <= MAX_BUCKETS and r.width == BUCKET_S * 4  # 20 h: 40 s buckets
        table = pq.read_table(io.BytesIO(data))
        assert sum(table.column("rows_ok").to_pylist()) + sum(table.column("rows_error").to_pylist()) == rows

        resumed = Recorder.from_table(table)
        resumed.row(T0 + hours * 3600 + 5, A, MODEL, "ok", latency_ms=70.0)
        again = pq.read_table(io.BytesIO(resumed.to_bytes()))
        assert again.num_rows == table.num_rows + 1 and set(again.column("width_s").to_pylist()) == {40.0}
        assert sum(again.column("latency_hist").to_pylist()[-1]) == 1

    def test_slices_merge(self) -> None:
        one, two = Recorder(), Recorder(max_buckets=4)
        one.row(T0 + 1, A, MODEL, "ok")
        for minute in range(8):
            two.row(T0 + minute * 10, B, MODEL, "ok")  # coarsened to 20 s
        one.absorb(two)
        assert one.width == 20 and sum(b.rows for b in one.buckets.values()) == 9
