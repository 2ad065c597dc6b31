"""Watching a run: its events in the Prefect run's logs, its metrics and report in the output folder."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from aiohttp import web
from click.testing import CliRunner

from flows.batch import run_batch
from flows.cli import main
from tests.endpoint import Endpoint, answer
from tests.report_page import Page

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

KEY = "sk-watch-5f3a9c1e77"


async def sometimes_429(request: web.Request, body: dict[str, Any], n: int) -> web.StreamResponse:
    """Every fifth request is refused, the refusal echoing the caller's credentials."""
    if n % 5 == 0:
        auth = request.headers.get("Authorization", "")
        return web.json_response({"error": {"code": "429", "message": f"too many requests for {auth}"}},
                                 status=429, headers={"retry-after-ms": "30"})
    return web.json_response(answer("Ciao", {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}))


async def run_logs(flow_run_id: UUID, wanted: set[str]) -> list[str]:
    """The run's log messages as the Prefect API holds them (they arrive in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()
    deadline = time.monotonic() + 20
    async with get_client() as client:
        while True:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            messages = [log.message for log in logs]
            if all(any(m.startswith(w + " ") for m in messages) for w in wanted) or time.monotonic() > deadline:
                return messages
            await asyncio.sleep(0.5)


def test_a_runs_story_is_in_its_logs_and_its_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WATCH_KEY", KEY)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"r{i}", "text": f"line {i}"}) + "\n" for i in range(60)))
    out = tmp_path / "out"
    with Endpoint(sometimes_429) as endpoint:
        job = {"input": str(prompts), "output": str(out), "shard_rows": 40, "params": {"max_tokens": 16},
               "prompt": {"template": "Say: {text}"},
               "endpoint": {"url": endpoint.url, "model": "mistral-large-2407", "api_key_env": "TEST_WATCH_KEY",
                            "tokens_per_minute": 2_000_000, "requests_per_minute": 60_000}}
        state: Any = asyncio.run(run_batch(job, return_state=True))  # type: ignore[arg-type]
        assert state.is_completed()
        messages = asyncio.run(run_logs(state.state_details.flow_run_id, {"job_started", "progress",
                                                                          "job_finished"}))

        manifest = json.loads((out / "_manifest.json").read_text())
        text = "\n".join(messages)
        assert KEY not in text
        started = next(m for m in messages if m.startswith("job_started "))
        assert f"output={out}" in started and "rows_already_done=0" in started
        progress = [m for m in messages if m.startswith("progress ")][-1]
        assert "rows=60 " in progress and "ok=60 " in progress
        finished = next(m for m in messages if m.startswith("job_finished "))
        assert '"total":60' in finished and f"cost_usd={manifest['cost_usd']['total']:.6g}" in finished
        assert any(m.startswith("rate_limited ") for m in messages)  # the warning that matters

        # The report (written at the run's end, and again by `promptbatch report`) plots what the metrics
        # hold, and its totals are the manifest's.
        (out / "_report.html").unlink()
        written = CliRunner().invoke(main, ["report", str(out)])
        assert written.exit_code == 0 and "429s" in written.output, written.output
        page = Page()
        page.feed((out / "_report.html").read_text())
        metrics = pq.read_table(out / "_metrics" / "run.parquet").to_pylist()
        (url, plotted), = page.data["deployments"].items()
        assert url == endpoint.url
        assert page.series[f"tokens_per_min:{url}"] == len(plotted["t"]) == len(metrics)
        assert plotted["tokens_per_min"] == [m["tokens_charged"] * 60 / m["width_s"] for m in metrics]
        assert sum(plotted["responses_429"]) == sum(m["responses_429"] for m in metrics) > 0
        totals = page.data["totals"]
        assert totals["rows"] == manifest["rows"]
        assert (totals["prompt_tokens"], totals["completion_tokens"]) == (manifest["tokens"]["prompt"],
                                                                          manifest["tokens"]["completion"])
        assert totals["cost_usd"] == pytest.approx(manifest["cost_usd"]["total"])
        assert KEY not in (out / "_report.html").read_text()

        # Resumed with rows appended: the metrics carry on from the first run's.
        with prompts.open("a") as f:
            f.write("".join(json.dumps({"id": f"r{i}", "text": f"line {i}"}) + "\n" for i in range(60, 75)))
        again: Any = asyncio.run(run_batch(job, return_state=True))  # type: ignore[arg-type]
        assert again.is_completed()
    metrics = pq.read_table(out / "_metrics" / "run.parquet").to_pylist()
    assert sum(m["rows_ok"] for m in metrics) == json.loads((out / "_manifest.json").read_text())["rows"]["ok"] == 75
    assert ds.dataset(str(out)).to_table().num_rows == 75  # metrics and report stay out of the rows' dataset
