"""The repo's ``prefect.yaml`` on a real ``prefect server`` with two process workers sharing one quota."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, SimulatorProcess, free_port

pytestmark = pytest.mark.integration

PREFECT = [sys.executable, "-m", "prefect"]
ROWS = 900
WORDS = "the council approved budget after debate heavy rain expected across north museum reopen month".split()


def _prefect(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    done = subprocess.run([*PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """``prefect server start`` on 127.0.0.1 with its own home; yields the environment that points at it."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_WORKER_QUERY_SECONDS": "2",
           "PROMPTBATCH_HOME": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 150
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                if r.read() == b"true":
                    break
        except OSError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
        time.sleep(0.5)
    try:
        yield env
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_two_workers_share_one_quota(prefect_server: dict[str, str], simulator: Callable[..., SimulatorProcess],
                                     tmp_path: Path) -> None:
    env = {**prefect_server, "TEST_SIM_KEY": "k"}
    sim = simulator("--tokens-per-minute", "200000", "--requests-per-minute", "1000", "--window", "10",
                    "--latency", "0.2", "--api-key", "k")
    rng = random.Random(5)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"r{i}", "text": " ".join(rng.choices(WORDS, k=rng.randint(5, 25)))})
                               + "\n" for i in range(ROWS)))
    job = {"input": str(prompts), "output": str(tmp_path / "out"), "shard_rows": 50,
           "endpoint": {"url": sim.url, "model": "mistral-small-2402", "api_key_env": "TEST_SIM_KEY",
                        "tokens_per_minute": 200_000, "requests_per_minute": 1_000},
           "prompt": {"template": "Translate to Italian: {text}"}, "params": {"max_tokens": 250}}

    _prefect(env, "work-pool", "create", "promptbatch", "--type", "process")
    _prefect(env, "--no-prompt", "deploy", "--all")
    workers = []
    for name in ("w1", "w2"):
        log = (tmp_path / f"{name}.log").open("wb")
        workers.append(subprocess.Popen([*PREFECT, "worker", "start", "--pool", "promptbatch", "--name", name,
                                         "--limit", "1"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True))
    try:
        out = _prefect(env, "deployment", "run", "promptbatch-run/labeling", "--params",
                       json.dumps({"job": job, "workers": 2}), "--watch", "--watch-timeout", "400", timeout=420)
    finally:
        for worker in workers:
            worker.send_signal(2)  # a Prefect worker stops on SIGINT
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
    assert "Completed" in out, out[-2000:] + (tmp_path / "w1.log").read_text(errors="replace")[-3000:]

    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(ROWS))  # complete, each row once
    assert all(r["status"] == "ok" for r in rows)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["rows"]["ok"] == ROWS
    assert set(manifest["workers"]) == {"w1", "w2"}  # both workers processed shards
    assert sorted(s for shards in manifest["workers"].values() for s in shards) == list(range(ROWS // 50))
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith("_shards") or "_journal" in str(p)]

    stats = sim.stats()
    assert stats.get("rate_limited", 0) == 0
    assert stats["peak_window_tokens"] <= stats["window_token_limit"]
    assert stats["peak_window_requests"] <= stats["window_request_limit"]
    span = stats["last_admission"] - stats["first_admission"]
    utilization = stats["admitted_tokens"] / (200_000 / 60 * span)
    print(f"two workers, one quota: {stats['admitted_tokens']:,} tokens admitted in {span:.1f} s = "
          f"{utilization:.1%} of 200,000 tokens/min; peak 10 s window {stats['peak_window_tokens']:,} of "
          f"{stats['window_token_limit']:,}")
    assert utilization >= 0.85  # the note gives the measured figure; this guards against a collapse

    artifacts = asyncio.run(_artifacts(env["PREFECT_API_URL"]))
    by_key = {a["key"]: a for a in artifacts}
    assert by_key["promptbatch-summary"]["type"] == "markdown"
    assert f"| ok | {ROWS:,} |" in by_key["promptbatch-summary"]["data"]
    for index in (0, 1):
        progress = by_key[f"promptbatch-progress-{index}-of-2"]
        assert progress["type"] == "progress" and progress["data"] == 100.0
    parent = by_key["promptbatch-summary"]["flow_run_id"]
    assert by_key["promptbatch-progress-0-of-2"]["flow_run_id"] == parent  # slice 0 ran in the job's own run
    assert by_key["promptbatch-progress-1-of-2"]["flow_run_id"] != parent  # slice 1 in a promptbatch-shard run


async def _artifacts(api_url: str) -> list[dict[str, Any]]:
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api=api_url) as client:
        found = await client.read_artifacts()
    return [a.model_dump(mode="json") for a in found]
