"""Labeling runs against the simulator over HTTP: typed labels, invalid answers re-asked, duplicates paid once.

The pipeline's own ``execute`` (no Prefect): rows from a local JSONL, the simulator in its own
process answering tool calls and JSON with a share of invalid answers and refusing ``json_schema``
the way Azure did, Parquet parts read back with pyarrow and pandas.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import jsonschema
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from flows.estimate import count_prompts
from flows.pipeline import execute
from flows.resume import read_earlier
from flows.storage import storage_for
from schemas import job_from_dict
from tests.conftest import ROOT, SimulatorProcess

pytestmark = pytest.mark.integration

MODEL = "mistral-small-2402"
KEY_ENV, KEY = "TEST_LABEL_KEY", "label-key-8c2f1e"
FAST = ("--requests-per-minute", "10000000", "--tokens-per-minute", "1000000000", "--per-token", "0",
        "--model", MODEL, "--api-key", KEY)
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["sentiment", "stars"],
          "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
                         "stars": {"type": "integer", "minimum": 1, "maximum": 5}}}


def reviews(path: Path, distinct: int, copies: int, never_valid: int = 0, seed: int = 0) -> None:
    """``distinct`` different reviews (``never_valid`` of them marked ``[[invalid]]``) and ``copies`` exact
    repeats of them, shuffled."""
    rng = random.Random(seed)
    texts = [f"Review {i}: the {rng.choice(['kettle', 'lamp', 'chair'])} was {rng.choice(['fine', 'awful'])}."
             + (" [[invalid]]" if i < never_valid else "") for i in range(distinct)]
    texts += [rng.choice(texts) for _ in range(copies)]
    rng.shuffle(texts)
    path.write_text("".join(json.dumps({"id": f"r{i}", "review": t, "shop": i % 3}) + "\n"
                            for i, t in enumerate(texts)))


def labeling_job(url: str, folder: Path, api: str = "azure-inference", shard_rows: int = 500, logprobs: bool = False,
                 **endpoint: Any) -> dict[str, Any]:
    return {
        "input": str(folder / "reviews.jsonl"), "output": str(folder / "out") + "/",
        "endpoint": {"url": url, "api": api, "model": MODEL, "api_key_env": KEY_ENV,
                     "requests_per_minute": 10_000_000, "tokens_per_minute": 1_000_000_000, **endpoint},
        "prompt": {"system": "Label the review's sentiment and stars.", "template": "Review: {review}"},
        "params": {"max_tokens": 40, "temperature": 0, "logprobs": logprobs},
        "response": {"schema": SCHEMA, "mode": "auto", "reask": 2},
        "shard_rows": shard_rows,
    }


def test_two_thousand_reviews(tmp_path: Path, simulator: Callable[..., SimulatorProcess],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's acceptance run: 25 % exact duplicates, 5 % invalid answers, an endpoint refusing json_schema."""
    monkeypatch.setenv(KEY_ENV, KEY)
    sim = simulator(*FAST, "--latency", "0", "--invalid-answers", "0.05", "--refuse-json-schema")
    reviews(tmp_path / "reviews.jsonl", distinct=1500, copies=500, never_valid=8)
    spec = job_from_dict(labeling_job(sim.url, tmp_path, logprobs=True))
    started = time.monotonic()
    execution = asyncio.run(execute(spec, [spec.input], handle_signals=False))
    wall = time.monotonic() - started
    stats = sim.stats()

    table = ds.dataset(tmp_path / "out", format="parquet").to_table()
    frame = pd.read_parquet(tmp_path / "out")
    assert table.num_rows == len(frame) == 2000
    assert table.schema.field("label_sentiment").type == pa.dictionary(pa.int32(), pa.string())
    assert table.schema.field("label_stars").type == pa.int64()
    assert table.schema.field("label_sentiment_confidence").type == pa.float64()
    assert isinstance(frame["label_sentiment"].dtype, pd.CategoricalDtype)
    assert str(frame["label_stars"].dtype) in ("Int64", "float64", "int64")
    assert pl.read_parquet(str(tmp_path / "out" / "*.parquet")).schema["label_sentiment"] == pl.Categorical
    counted = duckdb.connect().execute(f"select count(label_stars) from read_parquet('{tmp_path}/out/*.parquet')")
    assert counted.fetchall() == [(frame["label_stars"].notna().sum(),)]
    rows = table.to_pylist()

    # Every row valid under the schema, or `invalid` with its raw answer and the error.
    by_id = {r["id"]: r for r in rows}
    invalid = [r for r in rows if r["status"] == "invalid"]
    validator = jsonschema.Draft202012Validator(SCHEMA)
    assert {r["status"] for r in rows} <= {"ok", "invalid"}
    for r in rows:
        if r["status"] == "ok":
            value = json.loads(r["completion"])
            validator.validate(value)
            assert (r["label_sentiment"], r["label_stars"]) == (value["sentiment"], value["stars"])
            assert 0 < r["label_sentiment_confidence"] <= 1  # the simulator returns logprobs on this route
        else:
            assert r["error"].startswith("invalid answer after 2 re-asks: ") and r["completion"] is not None
            assert r["label_sentiment"] is None and r["label_stars"] is None and r["label_sentiment_confidence"] is None
    marked = {r["id"] for r in rows if "[[invalid]]" in r["review"]}
    assert marked and marked <= {r["id"] for r in invalid}

    # Duplicates: sent once, each copy names the row whose answer it carries, and costs nothing.
    first: dict[str, str] = {}
    copies = [r for r in rows if r["duplicate_of"] is not None]
    for r in rows:
        if r["duplicate_of"] is None:
            assert r["request_digest"] not in first, "an identical request was sent twice"
            first[r["request_digest"]] = r["id"]
    assert len(first) == 1500 and len(copies) == 500 == execution.duplicate_rows
    for r in copies:
        original = by_id[r["duplicate_of"]]
        assert original["request_digest"] == r["request_digest"] and original["duplicate_of"] is None
        assert (r["completion"], r["label_sentiment"], r["status"]) == (original["completion"],
                                                                       original["label_sentiment"], original["status"])
        assert (r["cost_usd"], r["prompt_tokens"], r["attempts"]) == (0.0, 0, 0)

    # Billed: the distinct requests and their re-asks, nothing else (one refused json_schema request aside).
    sent = [r for r in rows if r["duplicate_of"] is None]
    reasks = sum(r["attempts"] - 1 for r in sent)
    assert stats["billed_requests"] == 1500 + reasks
    assert stats["billed_prompt_tokens"] == sum(r["prompt_tokens"] for r in rows)
    assert stats["prompts_billed_more_than_once"] == 0
    # auto: one refused json_schema request, then tool calls for the rest of the run.
    assert stats["refused_json_schema"] == 1 and stats.get("status_400") == 1
    assert {r["finish_reason"] for r in sent} == {"tool_calls"}
    share = stats["invalid_answers"] / stats["billed_requests"]
    print(f"\n2,000 reviews in {wall:.1f} s: {len(invalid)} invalid after re-asks, {reasks} re-asks, "
          f"{stats['billed_requests']} billed requests for 1,500 distinct, invalid answers {share:.1%} of billed")


CHILD = """
import asyncio, json, sys
from flows.pipeline import execute
from schemas import job_from_dict
spec = job_from_dict(json.loads(sys.argv[1]))
asyncio.run(execute(spec, [spec.input], handle_signals=False))
"""


def test_kill_9_keeps_labels_and_links_and_the_estimate_matches_the_bill(
        tmp_path: Path, simulator: Callable[..., SimulatorProcess], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    sim = simulator(*FAST, "--latency", "0.03")
    reviews(tmp_path / "reviews.jsonl", distinct=375, copies=125, seed=3)
    job = labeling_job(sim.url, tmp_path, api="mistral", shard_rows=100, max_concurrency=8)
    spec = job_from_dict(job)
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(job)], cwd=ROOT, env={**os.environ},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while sim.stats().get("billed_requests", 0) < 250 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)
    at_kill = sim.stats()["billed_requests"]
    assert at_kill < 375, "the run finished before it was killed"

    out = storage_for(spec.output)
    earlier = read_earlier(out, spec.output, spec.shard_rows, None, files=[spec.input], inputs_unchanged=True,
                           job_hash=spec.job_hash(), retry_errors=False)
    assert earlier.rows > 0
    asyncio.run(execute(spec, [spec.input], earlier=earlier, handle_signals=False))
    stats = sim.stats()

    rows = ds.dataset(tmp_path / "out", format="parquet").to_table().to_pylist()
    assert len(rows) == 500 and {r["status"] for r in rows} == {"ok"}
    by_id = {r["id"]: r for r in rows}
    labels: dict[str, tuple[Any, Any]] = {}
    for r in rows:
        assert r["label_sentiment"] is not None and r["label_stars"] is not None
        assert r["label_sentiment_confidence"] is None  # the mistral route returns no logprobs
        assert labels.setdefault(r["request_digest"], (r["label_sentiment"], r["label_stars"])) == (
            r["label_sentiment"], r["label_stars"]), "identical requests with different labels"
        if r["duplicate_of"] is not None:
            assert by_id[r["duplicate_of"]]["request_digest"] == r["request_digest"]
            assert by_id[r["duplicate_of"]]["duplicate_of"] is None
    assert sum(r["duplicate_of"] is None for r in rows) == 375
    # Only requests in flight at the kill (8 at most) are billed twice.
    assert 375 <= stats["billed_requests"] <= 375 + 8

    counted = count_prompts.fn(spec, [spec.input], processes=0)
    assert counted.duplicates == 125 and counted.counts[MODEL].rows == 375
    assert counted.counts[MODEL].prompt_tokens == sum(r["prompt_tokens"] for r in rows)
