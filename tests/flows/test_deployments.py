"""The repo's ``prefect.yaml`` on a real ``prefect server`` with two process workers sharing one quota."""

from __future__ import annotations

import asyncio
import io
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

from tests.conftest import ROOT, Azurite, SimulatorProcess, free_port, start_azurite
from workers.simulator import prompt_digest

pytestmark = pytest.mark.integration

PREFECT = [sys.executable, "-m", "prefect"]
ROWS = 600
WORDS = "the council approved budget after debate heavy rain expected across north museum reopen month".split()


def _prefect(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    done = subprocess.run([*PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def own_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """An Azurite of this module's own: the nightly job's containers are named in the repo's job file."""
    port = free_port()
    instance = Azurite(port, start_azurite(port, str(tmp_path_factory.mktemp("azurite"))))
    try:
        yield instance
    finally:
        instance.process.terminate()
        instance.process.wait(10)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory, own_azurite: Azurite) -> Iterator[dict[str, str]]:
    """``prefect server start`` on 127.0.0.1 with its own home; yields the environment that points at it.

    Blob locations (``az://``) in that environment are Azurite's.
    """
    azurite = own_azurite
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home / "prefect-home"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_WORKER_QUERY_SECONDS": "2",
           "PROMPTBATCH_HOME": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string, "TEST_SIM_KEY": "k"}
    env.pop("AZURE_STORAGE_ACCOUNT_URL", None)
    log = (home / "server.log").open("wb")
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
        assert server.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
        time.sleep(0.5)
    try:
        yield env
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def deployed(prefect_server: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The repo's ``prefect.yaml`` deployed, and two process workers (w1, w2) of one flow run each."""
    env = prefect_server
    logs = tmp_path_factory.mktemp("workers")
    _prefect(env, "work-pool", "create", "promptbatch", "--type", "process")
    _prefect(env, "--no-prompt", "deploy", "--all")
    workers = []
    for name in ("w1", "w2"):
        log = (logs / f"{name}.log").open("wb")
        workers.append(subprocess.Popen([*PREFECT, "worker", "start", "--pool", "promptbatch", "--name", name,
                                         "--limit", "1"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True))
    try:
        yield {**env, "WORKER_LOGS": str(logs)}
    finally:
        for worker in workers:
            worker.send_signal(2)  # a Prefect worker stops on SIGINT
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()


def test_two_workers_share_one_quota(deployed: dict[str, str], simulator: Callable[..., SimulatorProcess],
                                     tmp_path: Path) -> None:
    env = deployed
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

    out = _prefect(env, "deployment", "run", "promptbatch-run/labeling", "--params",
                   json.dumps({"job": job, "workers": 2}), "--watch", "--watch-timeout", "400", timeout=420)
    assert "Completed" in out, out[-2000:] + _worker_logs(env)

    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(ROWS))  # complete, each row once
    assert all(r["status"] == "ok" for r in rows)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["rows"]["ok"] == ROWS
    assert set(manifest["workers"]) == {"w1", "w2"}  # both workers processed shards
    assert sorted(s for shards in manifest["workers"].values() for s in shards) == list(range(ROWS // 50))
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith("_shards") or "_journal" in str(p)]

    stats = sim.stats()
    # No 429 in eight runs alone; beside the suite on two cores 2 of 602 were refused once (before a race
    # in handing units over was mended; each one refunded and sent again): no storm, ≤ 1 %.
    assert stats.get("rate_limited", 0) <= ROWS // 100
    assert stats["peak_window_tokens"] <= stats["window_token_limit"]
    assert stats["peak_window_requests"] <= stats["window_request_limit"]
    span = stats["last_admission"] - stats["first_admission"]
    utilization = stats["admitted_tokens"] / (200_000 / 60 * span)
    print(f"two workers, one quota: {stats['admitted_tokens']:,} tokens admitted in {span:.1f} s = "
          f"{utilization:.1%} of 200,000 tokens/min; peak 10 s window {stats['peak_window_tokens']:,} of "
          f"{stats['window_token_limit']:,}; {stats.get('rate_limited', 0)} × 429")
    # The README gives the figure measured alone (0.94-1.00); this guards against a collapse (≈ 0.1). Beside
    # the other worker's tests on two cores it has been seen at 0.70 (a 70 s span for 53 s of quota), so the
    # floor sits well under that: a real-time share is the benchmark's to measure, not a test's.
    assert utilization >= 0.5

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


def _worker_logs(env: dict[str, str]) -> str:
    return "".join(p.read_text(errors="replace")[-3000:] for p in sorted(Path(env["WORKER_LOGS"]).glob("*.log")))


def test_nightly_deployment_on_two_scheduled_dates(deployed: dict[str, str],
                                                   simulator: Callable[..., SimulatorProcess]) -> None:
    """The nightly deployment, scheduled for two nights: each night's prompts in its own dated output."""
    from azure.storage.blob import BlobServiceClient

    env = deployed
    sim = simulator("--latency", "0.01", "--api-key", "nightly-key-77")
    service = BlobServiceClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
    for name in ("prompts", "completions"):
        service.create_container(name)
    nights = {"2026-11-23": [f"Night one: story {i} about the harbour" for i in range(12)],
              "2026-11-24": [f"Night two: story {i} about the council" for i in range(17)]}
    for day, texts in nights.items():
        body = "".join(json.dumps({"id": f"n{i}", "text": t}) + "\n" for i, t in enumerate(texts))
        service.get_blob_client("prompts", f"news/{day}/a.jsonl").upload_blob(body.encode())

    # The job reads its key from the Prefect Secret block `mistral-large-key`, stored once on the server.
    subprocess.run([sys.executable, "-c", "from prefect.blocks.system import Secret; "
                    "Secret(value='nightly-key-77').save('mistral-large-key', overwrite=True)"],
                   env=env, check=True, timeout=120)
    states = asyncio.run(_run_nights(env["PREFECT_API_URL"], sim.url))
    assert all(s == "COMPLETED" for s in states), f"{states} {_worker_logs(env)}"

    completions = service.get_container_client("completions")
    for day, texts in nights.items():
        manifest = json.loads(completions.download_blob(f"news/{day}/_manifest.json").readall())
        assert manifest["status"] == "complete" and manifest["date"] == day
        rows = [r for blob in completions.list_blobs(name_starts_with=f"news/{day}/part-")
                for r in pq.read_table(io.BytesIO(completions.download_blob(blob.name).readall())).to_pylist()]
        assert sorted(r["id"] for r in rows) == sorted(f"n{i}" for i in range(len(texts)))
        system = "You are a helpful assistant that translates English to Italian."
        for r in rows:  # each night's answers are that night's prompts'
            text = texts[int(r["id"][1:])]
            messages = [{"role": "system", "content": system},
                        {"role": "user", "content": f"Translate to Italian: {text}"}]
            assert r["completion"].startswith(f"[{prompt_digest(messages)}]"), (day, r["id"])
    pointer = json.loads(completions.download_blob("news/latest.json").readall())
    assert pointer["date"] == "2026-11-24" and pointer["output"] == "az://completions/news/2026-11-24/"
    assert pointer["rows"]["ok"] == 17
    assert sim.stats()["billed_requests"] == 29


async def _run_nights(api_url: str, endpoint_url: str) -> list[str]:
    """Two flow runs of the nightly deployment, scheduled for 00:30 in Rome (23:30 UTC the day before)."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import PrefectClient
    from prefect.states import Scheduled

    async with PrefectClient(api=api_url) as client:
        deployment = await client.read_deployment_by_name("promptbatch-run/nightly-translation")
        ids = []
        for when in (datetime(2026, 11, 22, 23, 30, tzinfo=UTC), datetime(2026, 11, 23, 23, 30, tzinfo=UTC)):
            run = await client.create_flow_run_from_deployment(
                deployment.id, parameters={"endpoint_url": endpoint_url}, state=Scheduled(scheduled_time=when))
            ids.append(run.id)
        deadline = time.monotonic() + 300
        while True:
            runs = [await client.read_flow_run(i) for i in ids]
            if all(r.state is not None and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                return [r.state.type.value if r.state is not None else "NONE" for r in runs]
            await asyncio.sleep(0.5)
